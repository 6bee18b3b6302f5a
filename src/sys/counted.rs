//! System calls, counted by kind: the figures behind `readyloop_syscalls_total{call=...}`.
//!
//! Echo sits at the floor of a readiness loop: one `recvfrom` and one `sendto` per request, with
//! `epoll_wait` shared by every event of a batch. CPU time per request is too noisy on a shared
//! machine to show a call added to that floor (a read that only says `WouldBlock`, a re-register
//! per write); a count shows it as one more call per request, exactly. So the loop counts its
//! system calls by kind, and the benchmark divides them by the requests, connections or megabytes
//! it made.
//!
//! # Where each call is counted
//!
//! Each count sits where the call is made, once per attempt (one that fails with `WouldBlock` or
//! `EINTR` included, as `strace -c` counts it), and each [`Call`] is one system call of that name
//! on x86-64 Linux (arm64 has `epoll_pwait` only), so the figures can be checked against
//! `strace -c -f -p PID`:
//!
//! - `epoll_wait`: each `poll` of the loop ([`crate::event_loop`]);
//! - `epoll_ctl`: each register, reregister and deregister, all in [`crate::endpoint`];
//! - `accept4`: each accept on a listener, the one that finds the queue empty included
//!   ([`crate::listener`]);
//! - `recvfrom`, `sendto`, `sendfile`, `shutdown`, `setsockopt`, `getpeername`, `close`: every
//!   call on a client's TCP socket, all made through [`TcpStream`] below, and the chat relay's
//!   datagrams ([`crate::service::chat`]), which go out with `sendmmsg` on Linux;
//! - `pread64`: the download body's reads on the copy path (`--no-sendfile`).
//!
//! Not counted: the calls that open, examine and close a requested file and walk the root for
//! `LIST` (a few per download request, none per byte), the admin service's reads of `/proc`, log
//! output, calls on other threads (a [`Handle`](crate::Handle)'s wake-up), the chat bus's two
//! connections to Redis (`--chat-bus`), which serve the relay rather than a client, and whatever
//! happens before the loop runs (binding, the first registrations). Off Linux, mio may make more than one
//! call where Linux makes one, and the names are still Linux's.
//!
//! # Why thread-local cells
//!
//! The hot path is one read and one write per echo request, and counting must not slow it: no
//! locked instruction, no allocation. The natural home, [`Stats`](crate::stats::Stats), is out of
//! reach where the calls happen: inside `Read::read` on a connection's stream, which has no
//! [`Context`](crate::service::Context), and holding an `Arc<Stats>` in every connection would
//! cost each idle connection 8 bytes and every accept and close a locked reference count. A
//! process-wide static would be shared by every server of a test process. So each thread counts
//! into its own cells, a plain add on memory no other thread touches, and the loop, which owns
//! its thread while it runs, folds them into its `Stats` once per pass ([`take`]). Several servers
//! in one process (the tests) each run on a thread of their own and so count apart. A call made
//! on any other thread (a unit test driving a state machine) lands in that thread's cells and is
//! never folded into a server's figures.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::service::Stream;
use crate::stats::Metric;

/// A kind of system call the loop counts, named as on Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Waiting for readiness: one per pass of the loop.
    EpollWait,
    /// Registering, re-registering or deregistering a source.
    EpollCtl,
    /// Accepting a connection, or finding the listen queue empty.
    Accept4,
    /// Reading from a TCP client, or receiving a chat datagram.
    Recvfrom,
    /// Writing to a TCP client, or sending a chat datagram (off Linux).
    Sendto,
    /// Sending chat datagrams, up to [`SEND_BATCH`](crate::sys::SEND_BATCH) in one call.
    Sendmmsg,
    /// Sending download body bytes straight from the page cache.
    Sendfile,
    /// Reading download body bytes on the copy path.
    Pread64,
    /// Sending FIN: the end of a lingering close.
    Shutdown,
    /// Setting a socket option: `TCP_NODELAY` on admin connections, `SO_LINGER` 0 for a reset.
    Setsockopt,
    /// Asking a connection for its peer's address (the admin service's connection list).
    Getpeername,
    /// Closing a client's socket.
    Close,
}

impl Call {
    /// Every kind, in the order of their metrics.
    pub const ALL: [Call; 12] = [
        Call::EpollWait,
        Call::EpollCtl,
        Call::Accept4,
        Call::Recvfrom,
        Call::Sendto,
        Call::Sendmmsg,
        Call::Sendfile,
        Call::Pread64,
        Call::Shutdown,
        Call::Setsockopt,
        Call::Getpeername,
        Call::Close,
    ];

    /// The call's name as `strace` prints it, and as the metric label (`call="recvfrom"`).
    pub fn name(self) -> &'static str {
        match self {
            Call::EpollWait => "epoll_wait",
            Call::EpollCtl => "epoll_ctl",
            Call::Accept4 => "accept4",
            Call::Recvfrom => "recvfrom",
            Call::Sendto => "sendto",
            Call::Sendmmsg => "sendmmsg",
            Call::Sendfile => "sendfile",
            Call::Pread64 => "pread64",
            Call::Shutdown => "shutdown",
            Call::Setsockopt => "setsockopt",
            Call::Getpeername => "getpeername",
            Call::Close => "close",
        }
    }

    /// The counter the loop folds this kind into.
    pub fn metric(self) -> Metric {
        match self {
            Call::EpollWait => Metric::SyscallsEpollWait,
            Call::EpollCtl => Metric::SyscallsEpollCtl,
            Call::Accept4 => Metric::SyscallsAccept4,
            Call::Recvfrom => Metric::SyscallsRecvfrom,
            Call::Sendto => Metric::SyscallsSendto,
            Call::Sendmmsg => Metric::SyscallsSendmmsg,
            Call::Sendfile => Metric::SyscallsSendfile,
            Call::Pread64 => Metric::SyscallsPread64,
            Call::Shutdown => Metric::SyscallsShutdown,
            Call::Setsockopt => Metric::SyscallsSetsockopt,
            Call::Getpeername => Metric::SyscallsGetpeername,
            Call::Close => Metric::SyscallsClose,
        }
    }
}

/// Calls counted on one thread since its last [`take`], by kind.
pub type Counts = [u64; Call::ALL.len()];

thread_local! {
    /// This thread's counts. `Cell<u64>` needs no destructor and starts as a constant, so a
    /// count compiles to an add at a fixed offset from the thread pointer: no lazy set-up.
    static COUNTS: [Cell<u64>; Call::ALL.len()] =
        const { [const { Cell::new(0) }; Call::ALL.len()] };
}

/// Counts one call of `call` on this thread.
pub fn count(call: Call) {
    COUNTS.with(|counts| {
        let cell = &counts[call as usize];
        cell.set(cell.get().wrapping_add(1));
    });
}

/// The calls counted on this thread since the last `take`, which start again from zero.
pub fn take() -> Counts {
    COUNTS.with(|counts| counts.each_ref().map(Cell::take))
}

/// A client's TCP stream: mio's, with every system call made on it counted.
///
/// Connections hold this instead of mio's stream, and it offers no way around itself, so no call
/// on a client socket goes uncounted. Registration goes through its [`Source`] impl, which counts
/// nothing: `epoll_ctl` is counted in [`crate::endpoint`], for every source alike.
#[derive(Debug)]
pub struct TcpStream(mio::net::TcpStream);

impl TcpStream {
    /// Takes over an accepted, non-blocking stream.
    pub fn new(stream: mio::net::TcpStream) -> Self {
        TcpStream(stream)
    }

    /// The peer's address, asked of the kernel.
    ///
    /// # Errors
    /// As `getpeername(2)`: `ENOTCONN` once the peer is gone.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        count(Call::Getpeername);
        self.0.peer_addr()
    }

    /// Turns Nagle's algorithm off (`TCP_NODELAY`).
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        count(Call::Setsockopt);
        self.0.set_nodelay(nodelay)
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        count(Call::Recvfrom);
        self.0.read(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        count(Call::Sendto);
        self.0.write(buf)
    }

    /// A socket has nothing to flush: no call.
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Stream for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        count(Call::Shutdown);
        self.0.shutdown(Shutdown::Write)
    }

    fn reset_on_close(&mut self) -> io::Result<()> {
        count(Call::Setsockopt);
        super::reset_on_close(&self.0)
    }

    fn send_file(&mut self, file: &File, offset: &mut u64, count: usize) -> io::Result<usize> {
        self::count(Call::Sendfile);
        super::sendfile(&self.0, file, offset, count)
    }
}

impl Source for TcpStream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.0.register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.0.reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.0.deregister(registry)
    }
}

impl Drop for TcpStream {
    /// Dropping mio's stream, right after this, closes the socket.
    fn drop(&mut self) {
        count(Call::Close);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream as StdStream};

    use super::*;

    /// A connected pair: a plain client, and the server's end wrapped for counting.
    fn pair() -> (StdStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            client,
            TcpStream::new(mio::net::TcpStream::from_std(server)),
        )
    }

    fn counted(counts: &Counts, call: Call) -> u64 {
        counts[call as usize]
    }

    #[test]
    fn each_call_on_a_stream_counts_once_under_its_name() {
        let (mut client, mut server) = pair();
        take();
        client.write_all(b"ping").unwrap();
        // The stream is blocking here (a std socket), so the read waits for the bytes.
        let mut buf = [0; 4];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"pong").unwrap();
        server.flush().unwrap();
        server.set_nodelay(true).unwrap();
        server.peer_addr().unwrap();
        server.shutdown_write().unwrap();
        server.reset_on_close().unwrap();
        drop(server);
        let counts = take();
        assert_eq!(counted(&counts, Call::Recvfrom), 1);
        assert_eq!(counted(&counts, Call::Sendto), 1, "flush makes no call");
        assert_eq!(counted(&counts, Call::Setsockopt), 2);
        assert_eq!(counted(&counts, Call::Getpeername), 1);
        assert_eq!(counted(&counts, Call::Shutdown), 1);
        assert_eq!(counted(&counts, Call::Close), 1);
        assert_eq!(counts.iter().sum::<u64>(), 7, "nothing else: {counts:?}");
    }

    #[test]
    fn take_starts_the_counts_again_and_other_threads_count_apart() {
        take();
        count(Call::EpollWait);
        count(Call::EpollWait);
        let elsewhere = std::thread::spawn(|| {
            count(Call::EpollCtl);
            take()
        })
        .join()
        .unwrap();
        assert_eq!(counted(&elsewhere, Call::EpollCtl), 1);
        assert_eq!(counted(&elsewhere, Call::EpollWait), 0);
        let here = take();
        assert_eq!(counted(&here, Call::EpollWait), 2);
        assert_eq!(counted(&here, Call::EpollCtl), 0);
        assert_eq!(take(), [0; Call::ALL.len()]);
    }

    #[test]
    fn every_call_has_its_own_metric_named_after_it() {
        for (i, call) in Call::ALL.iter().enumerate() {
            assert_eq!(*call as usize, i);
            assert_eq!(call.metric().name(), format!("syscalls_{}", call.name()));
        }
    }
}
