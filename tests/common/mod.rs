//! Test support: a server running in-process on `127.0.0.1:0`, and I/O helpers that never wait
//! forever.
//!
//! Every helper here has a bound. A test that goes wrong fails with a message naming what it was
//! waiting for; it never hangs the suite. Nothing sleeps to synchronise: waits poll a condition
//! (a stats figure, a socket) until a deadline. Each test starts its own server on a free port,
//! so tests running in parallel threads share no state.
//!
//! Not every test file uses every helper, hence the `allow` below (the usual pattern for
//! `tests/common`).

#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod chat_peer;
pub mod http;
pub mod prometheus;
pub mod redis;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use readyloop::{Config, Handle, Metric, Server, Snapshot};

/// Read and write timeout of every client socket: far longer than any healthy wait on loopback,
/// short enough that a broken test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound for waiting on a stats figure or on the server to stop.
pub const WAIT: Duration = Duration::from_secs(5);

/// Slack for "at once" on a machine shared with other builds, where a step that takes
/// microseconds alone can wait for a CPU for a good part of a second. A test that asserts
/// something happened at once allows this much, and makes sure the alternative it rules out (a
/// grace period, an idle timeout, a run's full duration, for ever) takes far longer.
pub const AT_ONCE: Duration = Duration::from_secs(3);

/// How often [`wait_until`] looks at its condition.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// A server running on its own thread, stopped (twice asked, bounded join) on drop.
pub struct TestServer {
    /// The address the echo service actually bound.
    pub echo: SocketAddr,
    /// The address the file download service actually bound.
    pub files: SocketAddr,
    /// The address the UDP chat relay actually bound.
    pub chat: SocketAddr,
    /// The address the admin HTTP service actually bound.
    pub admin: SocketAddr,
    /// The configuration the server was started with.
    pub config: Config,
    handle: Handle,
    /// `run()`'s result, sent when it returns; `None` once received.
    done: Option<Receiver<io::Result<Snapshot>>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Binds a server on `127.0.0.1`, every port 0, lets `configure` adjust the configuration,
    /// and runs it on a new thread. Every service must stay on: tests of a service turned off
    /// bind a [`Server`] themselves.
    pub fn start(configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            bind: "127.0.0.1".parse().unwrap(),
            echo_port: Some(0),
            files_port: Some(0),
            chat_port: Some(0),
            admin_port: Some(0),
            ..Config::default()
        };
        configure(&mut config);
        let server = Server::bind(config.clone()).expect("the test server binds");
        let addresses = server.addresses();
        let on = |addr: Option<SocketAddr>| addr.expect("every service is on in a TestServer");
        let echo = on(addresses.echo);
        let handle = server.handle();
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("readyloop {echo}"))
            .spawn(move || {
                // The receiver may be gone if the test already gave up waiting; nothing to do then.
                let _ = tx.send(server.run());
            })
            .expect("spawn the server thread");
        TestServer {
            echo,
            files: on(addresses.files),
            chat: on(addresses.chat),
            admin: on(addresses.admin),
            config,
            handle,
            done: Some(rx),
            thread: Some(thread),
        }
    }

    /// The server's figures now.
    pub fn stats(&self) -> Snapshot {
        self.handle.stats()
    }

    /// One figure now.
    pub fn get(&self, metric: Metric) -> u64 {
        self.stats().get(metric)
    }

    /// Asks for shutdown once: graceful the first time, immediate the second.
    pub fn shutdown(&self) {
        self.handle
            .shutdown()
            .expect("wake the server to ask for shutdown");
    }

    /// Waits until the stats satisfy `condition`, polling every few milliseconds.
    ///
    /// # Panics
    /// After `timeout`, naming `what` and showing the last figures.
    #[track_caller]
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Snapshot) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.stats();
            if condition(&snapshot) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; stats: {snapshot}");
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Waits until no client connection is open.
    #[track_caller]
    pub fn wait_for_no_open_connections(&self) {
        self.wait_for(WAIT, "Open == 0", |s| s.get(Metric::Open) == 0);
    }

    /// A client that sends without ever reading, returned once the server is throttled by it: its
    /// output buffer holds the high-water mark, so output stays owed until the client reads.
    ///
    /// The socket is left non-blocking; the caller only holds it (or reads from it).
    #[track_caller]
    pub fn hog(&self) -> TcpStream {
        let mut hog = connect(self.echo);
        hog.set_nonblocking(true).unwrap();
        let chunk = payload(u64::MAX, 64 * 1024);
        let high = self.config.high_water as u64;
        let deadline = Instant::now() + WAIT;
        while self.get(Metric::BufferedPeak) < high {
            assert!(
                Instant::now() < deadline,
                "the server was not throttled within {WAIT:?}; stats: {}",
                self.stats()
            );
            match hog.write(&chunk) {
                Ok(_) => {}
                // The kernel's buffers are full; the server may not have caught up yet.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL_EVERY),
                Err(e) => panic!("hog write failed: {e}"),
            }
        }
        hog
    }

    /// `run()` has returned (its result not yet collected).
    pub fn has_stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for `run()` to return and gives its final figures.
    ///
    /// # Panics
    /// If it does not return within `timeout`, or returns an error.
    #[track_caller]
    pub fn wait_stopped(&mut self, timeout: Duration) -> Snapshot {
        let done = self.done.take().expect("wait_stopped is called once");
        let result = match done.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "server still running {timeout:?} after the wait began; stats: {}",
                    self.stats()
                )
            }
            Err(RecvTimeoutError::Disconnected) => panic!("the server thread panicked"),
        };
        // `run()` has returned, so the thread is ending: this join is immediate.
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the server thread ends cleanly");
        }
        result.expect("run() ends without an error")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return; // already stopped and joined
        };
        // Two requests: the first drains, the second stops at once whatever clients still hold.
        let _ = self.handle.shutdown();
        let _ = self.handle.shutdown();
        match done.recv_timeout(WAIT) {
            Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            // Leave the thread detached rather than hang the suite. Panicking again while a test
            // is already panicking would abort the whole process, hiding the first failure.
            Err(RecvTimeoutError::Timeout) if thread::panicking() => {
                eprintln!("test server {} did not stop within {WAIT:?}", self.echo)
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "test server {} did not stop within {WAIT:?} of two shutdown requests",
                    self.echo
                )
            }
        }
    }
}

/// Polls `condition` every few milliseconds until it holds.
///
/// # Panics
/// After `timeout`, naming `what`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_EVERY);
    }
}

/// A client connected to `addr`, with read and write timeouts of [`IO_TIMEOUT`] and Nagle off
/// (small round trips should not wait for delayed ACKs).
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `n` bytes within `timeout`.
///
/// # Panics
/// On timeout, on EOF before `n` bytes, or on an I/O error, saying how many bytes had arrived.
#[track_caller]
pub fn read_exact_within(stream: &mut TcpStream, n: usize, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0; n];
    let mut filled = 0;
    while filled < n {
        set_remaining_read_timeout(stream, deadline, || {
            format!("timed out after {timeout:?} with {filled} of {n} bytes read")
        });
        match stream.read(&mut buf[filled..]) {
            Ok(0) => panic!("EOF after {filled} of {n} bytes"),
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                panic!("timed out after {timeout:?} with {filled} of {n} bytes read")
            }
            Err(e) => panic!("read failed after {filled} of {n} bytes: {e}"),
        }
    }
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    buf
}

/// Reads until EOF within `timeout`; gives every byte read, or the error that ended the reading
/// (a reset, say) with the bytes read before it.
///
/// # Panics
/// If neither EOF nor an error comes within `timeout`.
#[track_caller]
pub fn read_to_eof_within(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Vec<u8>, (io::Error, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        set_remaining_read_timeout(stream, deadline, || {
            format!("no EOF within {timeout:?} ({} bytes read)", data.len())
        });
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                panic!("no EOF within {timeout:?} ({} bytes read)", data.len())
            }
            Err(e) => return Err((e, data)),
        }
    }
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    Ok(data)
}

/// Sends `payload` and checks that exactly the same bytes come back.
#[track_caller]
pub fn round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).expect("send the payload");
    let echoed = read_exact_within(stream, payload.len(), IO_TIMEOUT);
    assert!(
        echoed == payload,
        "echo differs from the {} bytes sent",
        payload.len()
    );
}

/// The slowest of `trips` small round trips on `stream`: how fast this machine answers right now,
/// measured before a test adds the load it is about.
#[track_caller]
pub fn slowest_round_trip(stream: &mut TcpStream, trips: u64) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..trips {
        let started = Instant::now();
        round_trip(stream, &payload(u64::MAX - i, 64));
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// How long a round trip may take beside a client that loads the server (a hog, a flood, a
/// stalled reader), given the `baseline` from [`slowest_round_trip`] without it: ten times the
/// baseline, and never less than [`AT_ONCE`]. A machine busy with other builds slows the
/// baseline too; a loop stuck on the other client never answers at all.
pub fn prompt_bound(baseline: Duration) -> Duration {
    (baseline * 10).max(AT_ONCE)
}

/// `len` pseudo-random bytes determined by `seed`: distinct seeds give distinct payloads, so a
/// byte delivered to the wrong client or out of order shows up.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64*: cheap, and good enough to make every payload unique.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Joins a thread, waiting at most `timeout`.
///
/// # Panics
/// If the thread is still running after `timeout` (it is left detached), or if it panicked.
#[track_caller]
pub fn join_within<T>(thread: JoinHandle<T>, timeout: Duration, what: &str) -> T {
    wait_until(timeout, what, || thread.is_finished());
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Waits until connecting to `addr` is refused: its listener is closed.
#[track_caller]
pub fn wait_until_refused(addr: SocketAddr, timeout: Duration) {
    wait_until(
        timeout,
        &format!("connections to {addr} to be refused"),
        || {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
                // Still listening: this probe is dropped at once and the server closes it.
                Ok(_) => false,
            }
        },
    );
}

/// The stream's read timeout becomes the time left until `deadline`.
fn set_remaining_read_timeout(
    stream: &TcpStream,
    deadline: Instant,
    message: impl FnOnce() -> String,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        panic!("{}", message());
    }
    stream.set_read_timeout(Some(left)).unwrap();
}

/// A socket timeout: `WouldBlock` or `TimedOut`, depending on the platform.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
