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
//! The exception is an open loop's timetable, where a microsecond late is a microsecond of
//! latency: a client waiting for its next due instant asks for a wake-up at it
//! ([`Ctx::wake_at`]), and `wakeup.rs` delivers it on time ([`Client::on_timer`]).
//!
//! A thread warms up (`--warmup`: load that is not counted), then measures, then drains. When
//! measuring starts it forgets what the warm-up counted and notes its own CPU time, so the
//! report can say what the generator cost per operation and whether a thread was saturated.
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
use super::wakeup::{TIMER, Wakeups};
use crate::sys::{interrupted, thread_cpu_time};

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
    /// The instant the client asked for with [`Ctx::wake_at`] has come: an open loop's next
    /// operation is due. A client that asked for none is never called.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>);
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
    /// When the run started: the common clock chat timestamps and an open loop's timetable
    /// count from.
    pub epoch: Instant,
    /// When the warm-up ends and measuring starts: the epoch when there is none.
    pub measure_from: Instant,
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
        warmup: Duration,
        duration: Duration,
        requests: Option<u64>,
        threads: usize,
    ) -> Shared {
        let epoch = Instant::now();
        Shared {
            target,
            epoch,
            measure_from: epoch + warmup,
            deadline: epoch + warmup + duration,
            stop: AtomicBool::new(false),
            tickets: Tickets::new(requests),
            reached: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            progress: (0..threads).map(|_| Progress::default()).collect(),
        }
    }

    /// Whether an operation that started (or was due) at `started` is counted: it belongs to
    /// the interval it started in, so one begun during the warm-up is not.
    pub fn counts(&self, started: Instant) -> bool {
        started >= self.measure_from
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
    /// The wake-up the client asked for in this call ([`Ctx::wake_at`]).
    pub wake: Option<Instant>,
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

    /// Counts one completed operation that started at `started` (an open loop: was due then)
    /// and brought `bytes` bytes, unless it started during the warm-up ([`Shared::counts`]).
    pub fn complete(&mut self, started: Instant, bytes: u64) {
        if self.shared.counts(started) {
            self.tally
                .complete(self.now.saturating_duration_since(started), bytes, self.now);
        }
    }

    /// Asks for [`Client::on_timer`] at `at`: an open loop's next operation is due then. The
    /// earliest request of a call counts, and one already pending that is earlier stands.
    pub fn wake_at(&mut self, at: Instant) {
        self.wake = Some(self.wake.map_or(at, |earlier| earlier.min(at)));
    }

    /// Nanoseconds from the run's start to `at`: the chat timestamp.
    pub fn clock_ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.shared.epoch).as_nanos())
            .unwrap_or(u64::MAX)
    }
}

/// Where the thread is in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Generating load that is not counted, until `Shared::measure_from`.
    WarmingUp,
    /// Generating and measuring load, since `since`, when the thread had used `cpu` of CPU
    /// time.
    Running {
        since: Instant,
        cpu: Option<Duration>,
    },
    /// Load has stopped; clients finish what is in flight until `until`.
    Draining { until: Instant },
    /// Done: the clients are closed and the tally handed over.
    Stopped,
}

/// One thread's clients and its `Poll`.
struct Driver<C> {
    clients: Vec<C>,
    events: Events,
    tools: Tools,
    phase: Phase,
}

/// What the driver lends each call of a client: everything in a [`Ctx`] but the shared plan.
struct Tools {
    poll: Poll,
    tally: Tally,
    scratch: Box<[u8]>,
    wakeups: Wakeups,
    thread: usize,
}

impl Tools {
    /// Calls `f` on `client` (token `index`) with a context at `now`, and keeps the wake-up
    /// it asked for.
    fn call<C>(
        &mut self,
        client: &mut C,
        index: usize,
        now: Instant,
        shared: &Shared,
        stopping: bool,
        f: impl FnOnce(&mut C, &mut Ctx<'_>),
    ) {
        let mut ctx = Ctx {
            now,
            token: Token(index),
            thread: self.thread,
            registry: self.poll.registry(),
            shared,
            tally: &mut self.tally,
            scratch: &mut self.scratch,
            stopping,
            wake: None,
        };
        f(client, &mut ctx);
        if let Some(at) = ctx.wake {
            self.wakeups.arm(index, at);
        }
    }
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
        events: Events::with_capacity(EVENTS_PER_POLL),
        tools: Tools {
            poll,
            tally: Tally::new(),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            wakeups: Wakeups::new(clients.len()),
            thread,
        },
        clients,
        phase: Phase::WarmingUp,
    };
    driver.run(shared)?;
    Ok(driver.tools.tally)
}

impl<C: Client> Driver<C> {
    fn run(&mut self, shared: &Shared) -> Result<(), BenchError> {
        let now = Instant::now();
        if now >= shared.measure_from {
            self.start_measuring(now);
        }
        self.each_client(shared, now, Client::start);
        let mut next_tick = now + TICK;
        while self.phase != Phase::Stopped {
            let wake = match self.phase {
                Phase::WarmingUp => next_tick.min(shared.measure_from),
                Phase::Running { .. } => next_tick.min(shared.deadline),
                Phase::Draining { until } => next_tick.min(until),
                Phase::Stopped => now,
            };
            let wake = self.tools.wakeups.next().map_or(wake, |at| at.min(wake));
            self.wait(wake)?;
            self.dispatch(shared);
            let now = Instant::now();
            self.wake_due(shared, now);
            let ticked = now >= next_tick;
            if ticked {
                self.each_client(shared, now, Client::on_tick);
                self.publish(shared);
                next_tick = now + TICK;
            }
            self.advance_phase(shared, now, ticked);
            self.tools
                .wakeups
                .set_timer(self.tools.poll.registry(), Instant::now());
        }
        self.each_client(shared, Instant::now(), Client::close);
        self.publish(shared);
        Ok(())
    }

    /// Polls until readiness or `wake`.
    fn wait(&mut self, wake: Instant) -> Result<(), BenchError> {
        let timeout = wake.saturating_duration_since(Instant::now());
        match self.tools.poll.poll(&mut self.events, Some(timeout)) {
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
        let stopping = self.stopping();
        for event in self.events.iter() {
            if event.token() == TIMER {
                // The wake-ups it was set for are fired after the batch, with the others due.
                self.tools.wakeups.timer_fired();
                continue;
            }
            let index = event.token().0;
            let Some(client) = self.clients.get_mut(index) else {
                continue; // no client has this token: nothing registered it
            };
            trace!(
                "bench {}/{index} event: readable={} writable={} error={}",
                self.tools.thread,
                event.is_readable(),
                event.is_writable(),
                event.is_error()
            );
            self.tools
                .call(client, index, Instant::now(), shared, stopping, |c, ctx| {
                    c.on_event(event, ctx)
                });
        }
    }

    /// Wakes every client whose requested instant has come. A client woken asks again for a
    /// later instant, so each is woken at most once per pass.
    fn wake_due(&mut self, shared: &Shared, now: Instant) {
        let stopping = self.stopping();
        for _ in 0..self.clients.len() {
            let Some(index) = self.tools.wakeups.pop_due(now) else {
                return;
            };
            if let Some(client) = self.clients.get_mut(index) {
                self.tools
                    .call(client, index, now, shared, stopping, Client::on_timer);
            }
        }
    }

    /// Calls `f` on every client.
    fn each_client(&mut self, shared: &Shared, now: Instant, f: fn(&mut C, &mut Ctx<'_>)) {
        let stopping = self.stopping();
        for (index, client) in self.clients.iter_mut().enumerate() {
            self.tools.call(client, index, now, shared, stopping, f);
        }
    }

    /// The load has stopped: no new operation may start.
    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. } | Phase::Stopped)
    }

    /// Makes this thread's figures visible to the progress line.
    fn publish(&self, shared: &Shared) {
        if let Some(progress) = shared.progress.get(self.tools.thread) {
            let tally = &self.tools.tally;
            progress
                .operations
                .store(tally.operations, Ordering::Relaxed);
            progress
                .errors
                .store(tally.error_count(), Ordering::Relaxed);
        }
    }

    /// WARMING-UP → RUNNING: what the warm-up counted is forgotten, and the thread's CPU time
    /// noted.
    fn start_measuring(&mut self, now: Instant) {
        self.tools.tally.restart();
        self.phase = Phase::Running {
            since: now,
            cpu: thread_cpu_time(),
        };
    }

    /// The load stopped at `now` (the last operation, for a `--requests` run that ran out):
    /// notes when, and what the thread's CPU cost while measuring.
    fn stop_measuring(&mut self, ended: Instant) {
        let tally = &mut self.tools.tally;
        tally.load_ended = Some(ended);
        if let Phase::Running { since, cpu } = self.phase {
            let used = cpu
                .zip(thread_cpu_time())
                .map_or(Duration::ZERO, |(before, after)| {
                    after.saturating_sub(before)
                });
            let wall = Instant::now().saturating_duration_since(since);
            tally.cpu = used;
            tally.busy = if wall.is_zero() {
                0.0
            } else {
                used.as_secs_f64() / wall.as_secs_f64()
            };
        }
    }

    /// Starts measuring at the end of the warm-up, stops the load at the deadline or on
    /// request, and ends the thread once its clients are done or the drain is over. Whether all
    /// clients are done is asked on a tick only: it is a pass over every client.
    fn advance_phase(&mut self, shared: &Shared, now: Instant, ticked: bool) {
        match self.phase {
            Phase::WarmingUp | Phase::Running { .. }
                if now >= shared.deadline || shared.stop.load(Ordering::Relaxed) =>
            {
                self.stop_measuring(now.min(shared.deadline));
                self.phase = Phase::Draining { until: now + DRAIN };
                self.each_client(shared, now, Client::on_stop);
            }
            Phase::WarmingUp if now >= shared.measure_from => self.start_measuring(now),
            Phase::WarmingUp => {}
            Phase::Running { .. } if ticked && self.all_finished() => {
                // Every client ran out of `--requests` tickets: the load ended with the last
                // operation, not with this check.
                self.stop_measuring(self.tools.tally.last_operation.unwrap_or(now));
                self.phase = Phase::Stopped;
            }
            Phase::Running { .. } => {}
            Phase::Draining { until } if now >= until => {
                let left = self.clients.iter().filter(|c| !c.is_finished()).count();
                if left > 0 {
                    debug!(
                        "bench thread {}: {left} clients still busy after the drain",
                        self.tools.thread
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
/// instant, so a test can put a client in a state and then show it the future (a timeout, a
/// due instant) without waiting for it.
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
        /// The wake-up the client last asked for through [`Harness::call`].
        pub wake: Option<Instant>,
    }

    impl Harness {
        pub fn new(target: SocketAddr, requests: Option<u64>) -> Harness {
            Harness {
                poll: Poll::new().expect("a poll instance"),
                events: Events::with_capacity(64),
                shared: Shared::new(target, Duration::ZERO, Duration::from_secs(60), requests, 1),
                tally: Tally::new(),
                scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
                stopping: false,
                wake: None,
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
                wake: None,
            }
        }

        /// Calls `f` on `client` at `now` and keeps the wake-up it asks for, if any.
        pub fn call<C>(
            &mut self,
            client: &mut C,
            now: Instant,
            f: impl FnOnce(&mut C, &mut Ctx<'_>),
        ) {
            let mut ctx = self.ctx(now);
            f(client, &mut ctx);
            if let Some(at) = ctx.wake {
                self.wake = Some(at);
            }
        }

        /// Delivers events, ticks and due wake-ups to `client` until `done` holds.
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
                    self.call(client, Instant::now(), |c, ctx| c.on_event(event, ctx));
                }
                self.call(client, Instant::now(), C::on_tick);
                if self.wake.is_some_and(|at| at <= Instant::now()) {
                    self.wake = None;
                    self.call(client, Instant::now(), C::on_timer);
                }
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
