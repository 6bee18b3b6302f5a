//! The smallest correct mio echo server: the lesson to read before readyloop's own echo service.
//! Run it from the repository root with `cargo run --example minimal_echo` (add `-- PORT` for a
//! port other than 7000), then talk to it with `nc 127.0.0.1 7000`.
//!
//! It applies each of mio's rules once, with a comment where it does. It deliberately leaves out
//! what the full server adds: bounded buffers and backpressure (`src/buffer.rs`, the THROTTLED
//! state in `src/service/echo.rs`), idle timeouts (`src/timers.rs`), graceful shutdown
//! (`src/event_loop.rs`) and lingering close (`src/service/echo.rs`). Here a client that sends
//! without reading makes `pending` grow without limit, and Ctrl-C simply kills the process.

use std::io::{self, ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

/// The listener's token. A connection's token is its slab key; keys count up from 0 and never
/// get near `usize::MAX`, so the two cannot collide.
const LISTENER: Token = Token(usize::MAX);

/// One client.
struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet taken by the socket, oldest first. No "peer closed" flag is needed
    /// beside it: once the client has sent FIN, every read returns 0 again.
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let port = std::env::args().nth(1).map_or(Ok(7000), |arg| arg.parse());
    let port = port.map_err(|e| io::Error::other(format!("bad port: {e}")))?;
    // Rule: one `Poll` watches every socket; `Events` is the batch it fills on each wake-up.
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut listener = TcpListener::bind(([127, 0, 0, 1], port).into())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut buf = vec![0; 64 * 1024]; // one read buffer, shared by all connections
    println!("echoing on {}", listener.local_addr()?);

    loop {
        // A signal can interrupt the wait itself; that is no failure, so wait again.
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, poll.registry(), &mut conns);
                continue;
            }
            // Stale event: an earlier event of this batch closed the connection, so skip it. If an
            // accept since reused the key, the event reaches the newcomer as a harmless spurious
            // wake-up here; readyloop's endpoints carry deadlines and state it must not touch, so
            // `src/endpoint.rs` puts a generation in each token and drops mismatched events.
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            match serve(conn, poll.registry(), event.token(), &mut buf) {
                Ok(false) => continue,
                // Done (the client closed and has every byte back) or broken (ECONNRESET, EPIPE):
                // either way, close this connection and no other.
                Ok(true) => {}
                Err(e) => eprintln!("connection {key}: {e}"),
            }
            let mut conn = conns.remove(key);
            let _ = poll.registry().deregister(&mut conn.stream); // closing would do it too
        }
    }
}

/// Rule: edge-triggered readiness. mio reports a *change*; no new event comes until we have seen
/// `WouldBlock`. So accept until `WouldBlock`, or queued clients wait for the next connection.
fn accept_all(listener: &TcpListener, registry: &Registry, conns: &mut Slab<Conn>) {
    loop {
        let mut stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // A signal, or one client that gave up while queued: the others are still there.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
            // Out of file descriptors, say: stop rather than spin. The full server disarms the
            // listener and retries after a back-off deadline (`src/timers.rs`).
            Err(e) => return eprintln!("accept: {e}"),
        };
        // Rule: READABLE only. Asking for WRITABLE now would wake us with nothing to write.
        let token = Token(conns.vacant_key());
        if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
            eprintln!("register: {e}"); // dropping `stream` closes it
            continue;
        }
        let pending = Vec::new();
        conns.insert(Conn { stream, pending });
    }
}

/// Does all the I/O one event allows. `Ok(true)`: finished, close it. `Err`: close it too.
fn serve(conn: &mut Conn, registry: &Registry, token: Token, buf: &mut [u8]) -> io::Result<bool> {
    // Rule: an event's flags are hints and may be spurious (an error can arrive flagged as neither
    // readable nor writable), so try both directions; only `WouldBlock` says "nothing to do".
    let was_empty = conn.pending.is_empty();
    let peer_closed = loop {
        match conn.stream.read(buf) {
            Ok(0) => break true, // zero bytes: the client closed its sending side (sent FIN)
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false, // drained, as edges demand
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,   // a signal: retry
            Err(e) => return Err(e),
        }
    };
    let mut written = 0;
    while written < conn.pending.len() {
        match conn.stream.write(&conn.pending[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()), // would otherwise loop forever
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break, // send buffer full: keep the rest
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    conn.pending.drain(..written);
    // A half-closed client still gets every byte back; close only once nothing is owed.
    if peer_closed && conn.pending.is_empty() {
        return Ok(true);
    }
    // Rule: WRITABLE only while bytes wait, or every ACK that frees send space would wake us. So
    // reregister (a system call) only when `pending` starts or stops being empty.
    let both = Interest::READABLE | Interest::WRITABLE;
    match (was_empty, conn.pending.is_empty()) {
        (true, false) => registry.reregister(&mut conn.stream, token, both)?,
        (false, true) => registry.reregister(&mut conn.stream, token, Interest::READABLE)?,
        _ => {} // unchanged: the registration already matches
    }
    Ok(false)
}
