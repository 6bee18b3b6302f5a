//! One generator thread: its own `Poll`, its share of the clients, and the loop that drives them.
//!
//! This is the server's design pointed the other way. Each client (an echo connection, a download,
//! a chat member) is an explicit state machine behind the [`Client`] trait; the loop polls,
//! hands each event to the client its token names, and every [`TICK`] gives each client a look
//! at the clock (per-operation timeouts, back-off ends, chat join retries) and publishes the
//! thread's figures for the progress line. Nothing is shared between threads but a few atomics
//! in [`Shared`], so the generator scales with `--threads` instead of becoming the bottleneck.
//!
//! Deadlines are checked on the tick rather than turned into an exact `poll` timeout, as the
//! server does: a generator has thousands of deadlines that move with every operation, the
//! shortest of which (the 5 s operation timeout, the 50 ms back-off) need no better precision
//! than 10 ms, and one pass over the clients every 10 ms costs less than keeping them sorted.
//!
//! Like the server's handlers, clients never trust an event's flags: a token is reused when a
//! client reconnects, so a late event for its previous socket may arrive, and it is harmless only
//! because every decision comes from a system call's result (`WouldBlock`, `take_error`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::event::Event;
use mio::{Events, Poll, Registry, Token};

use super::BenchError;
use super::report::{RESET, Tally, classify};
use crate::sys::interrupted;

/// How often every client's deadlines are checked and the thread's figures published.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// How long one operation may go without completing before it counts as a timeout: far above
/// any healthy loopback or LAN round trip, short enough that a stuck server shows within a run.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause before a client reconnects after an error: without it a refusing or resetting server
/// would turn the generator into a busy loop and the error counts into noise.
pub(crate) const BACK_OFF: Duration = Duration::from_millis(50);

/// Longest time clients may spend finishing after the load stops (chat members collecting the
/// datagrams still in flight). TCP clients finish at once.
pub(crate) const DRAIN: Duration = Duration::from_millis(500);

/// Readiness events taken per `poll`.
const EVENTS_PER_POLL: usize = 1024;

/// Size of the thread's read buffer, shared by its clients: one default socket receive window.
const SCRATCH_BYTES: usize = 64 * 1024;

/// One client of a scenario: a state machine around one socket at a time.
pub(crate) trait Client {
    /// The run began: open the socket (connect, or bind and join).
    fn start(&mut self, ctx: &mut Ctx<'_>);
    /// The client's socket is (or may be) ready.
    fn on_event(&mut self, event: &Event, ctx: &mut Ctx<'_>);
    /// Called every [`TICK`]: check deadlines.
    fn on_tick(&mut self, ctx: &mut Ctx<'_>);
    /// The load stopped: start no new operation. Operations in flight are abandoned (TCP) or
    /// given until [`DRAIN`] to arrive (chat).
    fn on_stop(&mut self, ctx: &mut Ctx<'_>);
    /// The thread ends: release the socket, saying goodbye where the protocol has a way.
    fn close(&mut self, ctx: &mut Ctx<'_>);
    /// The client has nothing more to do.
    fn is_finished(&self) -> bool;
}

/// What every thread of a run shares: the plan, a stop request, and figures the supervisor reads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The server under load.
    pub target: SocketAddr,
    /// When the run started: the common clock chat timestamps count from.
    pub epoch: Instant,
    /// When load stops.
    pub deadline: Instant,
    /// Set by the supervisor to end the run early (the target is unreachable).
    pub stop: AtomicBool,
    /// The `--requests` budget.
    pub tickets: Tickets,
    /// Connections (or chat joins) that ever succeeded, counted once per thread.
    pub reached: AtomicU64,
    /// Connection failures counted while nothing had been reached yet.
    pub failures: AtomicU64,
    /// Each thread's figures so far, for the progress line.
    pub progress: Vec<Progress>,
}

impl Shared {
    pub fn new(
        target: SocketAddr,
        duration: Duration,
        requests: Option<u64>,
        threads: usize,
    ) -> Shared {
        let epoch = Instant::now();
        Shared {
            target,
            epoch,
            deadline: epoch + duration,
            stop: AtomicBool::new(false),
            tickets: Tickets::new(requests),
            reached: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            progress: (0..threads).map(|_| Progress::default()).collect(),
        }
    }

    /// Operations and errors of every thread so far.
    pub fn totals(&self) -> (u64, u64) {
        self.progress.iter().fold((0, 0), |(ops, errors), p| {
            (
                ops + p.operations.load(Ordering::Relaxed),
                errors + p.errors.load(Ordering::Relaxed),
            )
        })
    }
}

/// One thread's figures, published every tick.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub operations: AtomicU64,
    pub errors: AtomicU64,
}

/// The `--requests` budget: each operation takes a ticket before it starts.
#[derive(Debug)]
pub(crate) struct Tickets {
    limit: Option<u64>,
    taken: AtomicU64,
}

impl Tickets {
    pub fn new(limit: Option<u64>) -> Tickets {
        Tickets {
            limit,
            taken: AtomicU64::new(0),
        }
    }

    /// Takes a ticket; `false` once the budget is spent. Always `true` without a budget.
    pub fn take(&self) -> bool {
        match self.limit {
            None => true,
            // Never counts past the limit, so a ticket given back is one more operation.
            Some(limit) => self
                .taken
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| {
                    (taken < limit).then_some(taken + 1)
                })
                .is_ok(),
        }
    }

    /// Returns a ticket taken for an operation that could not start after all.
    pub fn give_back(&self) {
        if self.limit.is_some() {
            self.taken.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The budget is spent (never, without one).
    pub fn exhausted(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.taken.load(Ordering::Relaxed) >= limit)
    }
}

/// Everything a client may use for one call, besides itself.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    /// The time of this call.
    pub now: Instant,
    /// The client's token in this thread's `Poll`.
    pub token: Token,
    /// The generator thread's number, for log lines.
    pub thread: usize,
    pub registry: &'a Registry,
    pub shared: &'a Shared,
    pub tally: &'a mut Tally,
    /// The thread's read buffer.
    pub scratch: &'a mut [u8],
    /// The load has stopped: no new operation may start.
    pub stopping: bool,
}

impl Ctx<'_> {
    /// May a new operation start? Takes a `--requests` ticket if so.
    pub fn take_ticket(&self) -> bool {
        !self.stopping && self.shared.tickets.take()
    }

    /// Counts an error of `kind`.
    pub fn error(&mut self, kind: &'static str) {
        self.tally.error(kind);
    }

    /// Counts an I/O error by its kind.
    pub fn io_error(&mut self, err: &io::Error) {
        self.tally.error(classify(err));
    }

    /// A connection (or chat join) succeeded: the target is reachable.
    pub fn reached(&mut self) {
        if !self.tally.reached {
            self.tally.reached = true;
            self.shared.reached.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection (or chat join) failed: counted by kind, and remembered as the reason if
    /// nothing is ever reached.
    pub fn connect_failed(&mut self, err: io::Error) {
        let kind = classify(&err);
        self.tally.error(kind);
        if kind == RESET {
            // A reset needs a peer that answered: the server is there, and hung up at once.
            return self.reached();
        }
        if self.shared.reached.load(Ordering::Relaxed) == 0 {
            self.shared.failures.fetch_add(1, Ordering::Relaxed);
            self.tally.first_failure.get_or_insert(err);
        }
    }

    /// Counts one completed operation that started at `started` and brought `bytes` bytes.
    pub fn complete(&mut self, started: Instant, bytes: u64) {
        self.tally
            .complete(self.now.saturating_duration_since(started), bytes, self.now);
    }

    /// Nanoseconds since the run's start: the chat timestamp.
    pub fn clock_ns(&self) -> u64 {
        u64::try_from(self.now.duration_since(self.shared.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Where the thread is in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Generating load.
    Running,
    /// Load has stopped; clients finish what is in flight until `until`.
    Draining { until: Instant },
    /// Done: the clients are closed and the tally handed over.
    Stopped,
}

/// One thread's clients and its `Poll`.
struct Driver<C> {
    poll: Poll,
    events: Events,
    clients: Vec<C>,
    tally: Tally,
    scratch: Box<[u8]>,
    phase: Phase,
    thread: usize,
}

/// Runs `clients` on the calling thread until the run ends, and gives back what they counted.
///
/// # Errors
/// The `Poll` could not be created, or `poll` itself failed (other than `EINTR`).
pub(crate) fn drive<C: Client>(
    clients: Vec<C>,
    shared: &Shared,
    thread: usize,
) -> Result<Tally, BenchError> {
    let poll = Poll::new().map_err(|source| BenchError::Io {
        what: "create a poll instance",
        source,
    })?;
    let mut driver = Driver {
        poll,
        events: Events::with_capacity(EVENTS_PER_POLL),
        clients,
        tally: Tally::new(),
        scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
        phase: Phase::Running,
        thread,
    };
    driver.run(shared)?;
    Ok(driver.tally)
}

impl<C: Client> Driver<C> {
    fn run(&mut self, shared: &Shared) -> Result<(), BenchError> {
        let now = Instant::now();
        self.each_client(shared, now, Client::start);
        let mut next_tick = now + TICK;
        while self.phase != Phase::Stopped {
            let wake = match self.phase {
                Phase::Running => next_tick.min(shared.deadline),
                Phase::Draining { until } => next_tick.min(until),
                Phase::Stopped => now,
            };
            self.wait(wake)?;
            self.dispatch(shared);
            let now = Instant::now();
            let ticked = now >= next_tick;
            if ticked {
                self.each_client(shared, now, Client::on_tick);
                self.publish(shared);
                next_tick = now + TICK;
            }
            self.advance_phase(shared, now, ticked);
        }
        self.each_client(shared, Instant::now(), Client::close);
        self.publish(shared);
        Ok(())
    }

    /// Polls until readiness or `wake`.
    fn wait(&mut self, wake: Instant) -> Result<(), BenchError> {
        let timeout = wake.saturating_duration_since(Instant::now());
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => Ok(()),
            // A signal interrupted the wait: an empty batch.
            Err(e) if interrupted(&e) => Ok(()),
            Err(source) => Err(BenchError::Io {
                what: "poll for readiness",
                source,
            }),
        }
    }

    /// Hands each event of the batch to the client its token names.
    fn dispatch(&mut self, shared: &Shared) {
        let stopping = self.phase != Phase::Running;
        for event in self.events.iter() {
            let Some(client) = self.clients.get_mut(event.token().0) else {
                continue; // no client has this token: nothing registered it
            };
            trace!(
                "bench {}/{} event: readable={} writable={} error={}",
                self.thread,
                event.token().0,
                event.is_readable(),
                event.is_writable(),
                event.is_error()
            );
            let mut ctx = Ctx {
                now: Instant::now(),
                token: event.token(),
                thread: self.thread,
                registry: self.poll.registry(),
                shared,
                tally: &mut self.tally,
                scratch: &mut self.scratch,
                stopping,
            };
            client.on_event(event, &mut ctx);
        }
    }

    /// Calls `f` on every client.
    fn each_client(&mut self, shared: &Shared, now: Instant, f: fn(&mut C, &mut Ctx<'_>)) {
        let stopping = self.phase != Phase::Running;
        for (i, client) in self.clients.iter_mut().enumerate() {
            let mut ctx = Ctx {
                now,
                token: Token(i),
                thread: self.thread,
                registry: self.poll.registry(),
                shared,
                tally: &mut self.tally,
                scratch: &mut self.scratch,
                stopping,
            };
            f(client, &mut ctx);
        }
    }

    /// Makes this thread's figures visible to the progress line.
    fn publish(&self, shared: &Shared) {
        if let Some(progress) = shared.progress.get(self.thread) {
            progress
                .operations
                .store(self.tally.operations, Ordering::Relaxed);
            progress
                .errors
                .store(self.tally.error_count(), Ordering::Relaxed);
        }
    }

    /// Stops the load at the deadline or on request, and ends the thread once its clients are
    /// done or the drain is over. Whether all clients are done is asked on a tick only: it is a
    /// pass over every client.
    fn advance_phase(&mut self, shared: &Shared, now: Instant, ticked: bool) {
        match self.phase {
            Phase::Running if now >= shared.deadline || shared.stop.load(Ordering::Relaxed) => {
                self.tally.load_ended = Some(now.min(shared.deadline));
                self.phase = Phase::Draining { until: now + DRAIN };
                self.each_client(shared, now, Client::on_stop);
            }
            Phase::Running if ticked && self.all_finished() => {
                // Every client ran out of `--requests` tickets: the load ended with the last
                // operation, not with this check.
                self.tally.load_ended = Some(self.tally.last_operation.unwrap_or(now));
                self.phase = Phase::Stopped;
            }
            Phase::Running => {}
            Phase::Draining { until } if now >= until => {
                let left = self.clients.iter().filter(|c| !c.is_finished()).count();
                if left > 0 {
                    debug!(
                        "bench thread {}: {left} clients still busy after the drain",
                        self.thread
                    );
                }
                self.phase = Phase::Stopped;
            }
            Phase::Draining { .. } if ticked && self.all_finished() => self.phase = Phase::Stopped,
            Phase::Draining { .. } | Phase::Stopped => {}
        }
    }

    fn all_finished(&self) -> bool {
        self.clients.iter().all(C::is_finished)
    }
}

/// A driver taken apart for state-machine tests: a real `Poll` and tally, and contexts at any
/// instant, so a test can put a client in a state and then show it the future (a timeout) without
/// waiting for it.
#[cfg(test)]
pub(crate) mod harness {
    use super::*;

    /// Bound on waiting for a client to reach a state.
    const WAIT: Duration = Duration::from_secs(5);

    pub(crate) struct Harness {
        poll: Poll,
        events: Events,
        pub shared: Shared,
        pub tally: Tally,
        scratch: Box<[u8]>,
        pub stopping: bool,
    }

    impl Harness {
        pub fn new(target: SocketAddr, requests: Option<u64>) -> Harness {
            Harness {
                poll: Poll::new().expect("a poll instance"),
                events: Events::with_capacity(64),
                shared: Shared::new(target, Duration::from_secs(60), requests, 1),
                tally: Tally::new(),
                scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
                stopping: false,
            }
        }

        /// A context for token 0 at `now`.
        pub fn ctx(&mut self, now: Instant) -> Ctx<'_> {
            Ctx {
                now,
                token: Token(0),
                thread: 0,
                registry: self.poll.registry(),
                shared: &self.shared,
                tally: &mut self.tally,
                scratch: &mut self.scratch,
                stopping: self.stopping,
            }
        }

        /// Delivers events (and ticks) to `client` until `done` holds.
        ///
        /// # Panics
        /// After [`WAIT`], naming `what`.
        #[track_caller]
        pub fn run_until<C: Client>(
            &mut self,
            client: &mut C,
            what: &str,
            done: impl Fn(&C, &Tally) -> bool,
        ) {
            let deadline = Instant::now() + WAIT;
            while !done(client, &self.tally) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                self.poll.poll(&mut self.events, Some(TICK)).expect("poll");
                let events: Vec<Event> = self.events.iter().cloned().collect();
                for event in &events {
                    client.on_event(event, &mut self.ctx(Instant::now()));
                }
                client.on_tick(&mut self.ctx(Instant::now()));
            }
        }
    }

    /// A TCP listener on loopback whose first connection (accepted within [`WAIT`]) goes to
    /// `handle` on a thread of its own, with reads bounded by [`WAIT`].
    pub fn serve_one(handle: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        listener.set_nonblocking(true).expect("non-blocking");
        std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking");
                        stream.set_read_timeout(Some(WAIT)).expect("timeout");
                        return handle(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        addr
    }

    /// A readable-and-writable event for token 0, as a socket closed earlier in the batch
    /// would leave behind.
    pub fn leftover_event() -> Event {
        let mut poll = Poll::new().expect("a poll instance");
        let mut socket =
            mio::net::UdpSocket::bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        poll.registry()
            .register(&mut socket, Token(0), mio::Interest::WRITABLE)
            .expect("register");
        let mut events = Events::with_capacity(1);
        poll.poll(&mut events, Some(WAIT)).expect("poll");
        events
            .iter()
            .next()
            .cloned()
            .expect("a new UDP socket is writable")
    }

    /// A loopback port where nothing listens.
    pub fn closed_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_run_out_at_the_limit_and_never_without_one() {
        let tickets = Tickets::new(Some(3));
        assert!(!tickets.exhausted());
        assert_eq!((0..5).filter(|_| tickets.take()).count(), 3);
        assert!(tickets.exhausted());
        tickets.give_back();
        assert!(!tickets.exhausted());
        assert!(tickets.take());
        assert!(!tickets.take());
        let unlimited = Tickets::new(None);
        assert!((0..1000).all(|_| unlimited.take()));
        assert!(!unlimited.exhausted());
    }
}
