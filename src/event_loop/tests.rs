//! Loop behaviour that needs to stand between `poll` and dispatch, where integration tests cannot.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use mio::Token;

use super::{EventLoop, SCRATCH_BYTES};
use crate::config::Config;
use crate::listener::Listener;
use crate::service::{Endpoint, FAIR_SHARE, Service, echo};
use crate::stats::{CloseReason, Metric, Stats};
use crate::sys::counted::TcpStream;
use crate::sys::tcp_listener;
use crate::token;

/// Every wait in these tests ends by this bound.
const BOUND: Duration = Duration::from_secs(5);

fn test_loop() -> (EventLoop, Arc<Stats>, SocketAddr) {
    let stats = Arc::new(Stats::default());
    let mut event_loop = EventLoop::new(
        Config::default(),
        Arc::clone(&stats),
        Arc::new(AtomicUsize::new(0)),
    )
    .unwrap();
    let socket = tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let addr = socket.local_addr().unwrap();
    event_loop
        .insert(Endpoint::Listener {
            listener: Listener::new(socket, "echo"),
            service: Service::Echo,
        })
        .unwrap();
    (event_loop, stats, addr)
}

/// Runs passes of the loop until `done` holds, failing after [`BOUND`].
fn turn_until(event_loop: &mut EventLoop, mut done: impl FnMut(&mut EventLoop) -> bool) {
    let start = Instant::now();
    while !done(event_loop) {
        assert!(
            start.elapsed() < BOUND,
            "the loop did not get there in time"
        );
        event_loop.wait(Some(Duration::from_millis(10))).unwrap();
        event_loop.handle_events(Instant::now());
    }
}

fn echo_tokens(event_loop: &mut EventLoop) -> Vec<Token> {
    event_loop
        .table
        .tokens()
        .into_iter()
        .filter(|t| matches!(event_loop.table.get_mut(*t), Some(Endpoint::Echo(_))))
        .collect()
}

/// A server-side echo connection made outside the loop, to insert by hand.
fn accepted_pair() -> (StdStream, TcpStream) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (
        client,
        TcpStream::new(mio::net::TcpStream::from_std(server)),
    )
}

/// The scenario the generation in each token exists for: within one batch, connection A's
/// event is queued, then an earlier event closes A and a new connection B takes A's slab slot.
/// A's event must be dropped, not handed to B.
#[test]
fn an_event_for_a_closed_connection_never_reaches_the_one_reusing_its_slot() {
    let (mut event_loop, stats, addr) = test_loop();
    let mut a = StdStream::connect(addr).unwrap();
    turn_until(&mut event_loop, |l| !echo_tokens(l).is_empty());
    let a_token = echo_tokens(&mut event_loop)[0];

    // A's input makes the kernel queue a readable event for A's token; take that batch.
    a.write_all(b"for A").unwrap();
    event_loop.wait(Some(BOUND)).unwrap();
    assert!(event_loop.events.iter().any(|e| e.token() == a_token));

    // Before the batch is dispatched, A closes and B lands in the same slot.
    let registry = event_loop.poll.registry();
    event_loop
        .table
        .close(registry, a_token, CloseReason::Reset, &stats);
    let (mut b, b_stream) = accepted_pair();
    let b_endpoint = Endpoint::Echo(echo::Connection::new(
        b_stream,
        Instant::now(),
        &event_loop.shared.settings,
    ));
    let b_token = event_loop.insert(b_endpoint).unwrap();
    assert_eq!(
        token::key(b_token),
        token::key(a_token),
        "B reuses A's slab key"
    );
    assert_ne!(b_token, a_token);

    event_loop.handle_events(Instant::now());
    assert_eq!(stats.get(Metric::StaleEvents), 1, "A's event was dropped");

    // B was not disturbed and echoes its own bytes only.
    b.set_read_timeout(Some(BOUND)).unwrap();
    b.write_all(b"for B").unwrap();
    turn_until(&mut event_loop, |_| stats.get(Metric::BytesOut) >= 5);
    let mut reply = [0; 5];
    b.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"for B");
}

/// Connections refused at `--max-conns` are closed without entering the table.
#[test]
fn connections_past_max_conns_are_closed_at_once_and_counted() {
    let (mut event_loop, stats, addr) = test_loop();
    event_loop.config.max_conns = 1;
    let _kept = StdStream::connect(addr).unwrap();
    turn_until(&mut event_loop, |l| l.table.clients() == 1);
    let mut refused = StdStream::connect(addr).unwrap();
    turn_until(&mut event_loop, |_| stats.get(Metric::ClosedLimit) == 1);
    assert_eq!(event_loop.table.clients(), 1);
    refused.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0; 1];
    // EOF, or a reset if the close raced with the client's handshake bookkeeping.
    assert!(matches!(refused.read(&mut buf), Ok(0) | Err(_)));
}

/// An echo client of `event_loop` that has sent up to `shares` fair shares while no pass of the
/// loop ran to read them, and more than `shares - 1` (the kernel's buffers permitting): the
/// client (which never reads), its connection's token, and the bytes sent.
fn flood_unread(
    event_loop: &mut EventLoop,
    addr: SocketAddr,
    shares: usize,
) -> (StdStream, Token, usize) {
    let mut client = StdStream::connect(addr).unwrap();
    turn_until(event_loop, |l| !echo_tokens(l).is_empty());
    let token = echo_tokens(event_loop)[0];
    client.set_nonblocking(true).unwrap();
    let chunk = vec![7; 64 * 1024];
    let mut sent = 0;
    while sent < shares * FAIR_SHARE {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("send failed: {e}"),
        }
    }
    assert!(
        sent > (shares - 1) * FAIR_SHARE,
        "only {sent} bytes fit in the kernel's buffers"
    );
    (client, token, sent)
}

/// At shutdown a busy echo connection goes on reading, and may spend its budget there as in any
/// handler: the loop must then resume it, since no new edge comes for the input left behind.
#[test]
fn a_connection_that_spends_its_budget_at_shutdown_is_resumed() {
    let (mut event_loop, stats, addr) = test_loop();
    let (_client, token, sent) = flood_unread(&mut event_loop, addr, 2);

    event_loop.request_stop(Instant::now());
    let read = stats.get(Metric::BytesIn);
    assert!(
        read >= FAIR_SHARE as u64 && read < sent as u64,
        "read {read} of {sent} bytes at shutdown: not one fair share"
    );
    assert_eq!(
        event_loop.yielded,
        [token],
        "the connection waits to be resumed"
    );
    turn_until(&mut event_loop, |_| {
        stats.get(Metric::BytesIn) == sent as u64
    });
}

/// Queued twice for resumption before a pass (say by an event and a deadline), a connection is
/// resumed once in it: one budget's worth of work, not two. Shown on a draining connection, the
/// state in which a budget is surely spent before the input is.
#[test]
fn a_connection_queued_twice_is_resumed_once_in_a_pass() {
    let (mut event_loop, stats, addr) = test_loop();
    let (_client, token, _) = flood_unread(&mut event_loop, addr, 5);
    // Stopping reads a budget's worth (draining, short reads do not end the drain) and queues
    // the connection for resumption.
    event_loop.request_stop(Instant::now());
    assert_eq!(event_loop.yielded, [token]);
    // The batch is handled: forget it, and queue the connection again, as a deadline would.
    event_loop.events.clear();
    event_loop.yielded.push(token);
    let before = stats.get(Metric::BytesIn);
    event_loop.handle_events(Instant::now());
    let read = stats.get(Metric::BytesIn) - before;
    // The read that spends a budget may cross it, by less than one scratch buffer; a second
    // budget would read at least one more fair share.
    let one_budget = (FAIR_SHARE + SCRATCH_BYTES) as u64;
    assert!(
        read > 0 && read < one_budget,
        "read {read} bytes in one pass: more than one budget"
    );
}

/// Each `poll` records its batch: the histogram's count is the number of polls and its sum the
/// number of events, on the loop's own thread exactly.
#[test]
fn every_poll_records_the_size_of_its_batch() {
    let (mut event_loop, stats, addr) = test_loop();
    let mut client = StdStream::connect(addr).unwrap();
    client.write_all(b"ping").unwrap();
    turn_until(&mut event_loop, |_| stats.get(Metric::BytesOut) >= 4);
    let snapshot = stats.snapshot();
    let batches = snapshot.events_per_poll();
    assert_eq!(batches.count(), snapshot.get(Metric::LoopIterations));
    assert_eq!(batches.sum(), snapshot.get(Metric::Events) as f64);
    assert!(
        batches.sum() >= 2.0,
        "the accept and the read came as events"
    );
}
