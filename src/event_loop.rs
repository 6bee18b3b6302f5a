//! The readiness loop: one thread, one `Poll`, every socket of every service.
//!
//! One pass of [`EventLoop::run`]:
//!
//! 1. `poll` sleeps until a source is ready or the nearest deadline (idle timeout, accept back-off,
//!    lingering close, stats line, shutdown grace) falls due;
//! 2. each event's token finds its endpoint in the [`EndpointTable`]; the endpoint's handler does
//!    the I/O and returns a [`Next`]; the table applies it (re-registration, deadline, close);
//! 3. due deadlines fire;
//! 4. the shutdown phase advances.
//!
//! # Edge-triggered readiness
//!
//! mio registers sockets edge-triggered (`EPOLLET` on Linux): an event means "something changed",
//! and no further event comes until the handler has consumed everything, i.e. seen `WouldBlock`.
//! So every handler drains: accept until `WouldBlock`, read until `WouldBlock` (or until its
//! buffer bound says stop, and then it must resume by itself later), write until `WouldBlock` or
//! done. A handler that stops early waits forever. Compare Redis's `ae_epoll.c`, level-triggered,
//! where reading once per wake-up is enough because the kernel keeps reporting leftover input.

use std::io;
use std::mem;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{info, trace, warn};
use mio::event::Event;
use mio::{Events, Poll, Registry, Token};

use crate::config::Config;
use crate::endpoint::{EndpointTable, Id};
use crate::listener::Service;
use crate::service::{Context, Endpoint, FAIR_SHARE, KEEP, Next, download, echo};
use crate::stats::{CloseReason, Metric, Snapshot, Stats};
use crate::sys::interrupted;
use crate::timers::poll_timeout;

/// Readiness events taken from the kernel per `poll`: enough to amortise the system call over a
/// busy batch; more events simply wait for the next pass.
const EVENTS_PER_POLL: usize = 1024;

/// Size of the one read buffer all connections share: one default socket receive window.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Where the server is in its life. Stopping is a phase, not a flag, so each phase's rules are in
/// one `match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting and serving.
    Running,
    /// Listeners are closed; open connections finish until they are done or the grace period ends.
    Draining { until: Instant },
    /// Everything is closed; `run` returns.
    Stopped,
}

/// What every handler borrows for one event, apart from its own endpoint.
#[derive(Debug)]
struct Shared {
    config: Config,
    stats: Arc<Stats>,
    scratch: Box<[u8]>,
}

impl Shared {
    fn context(&mut self, now: Instant, token: Token) -> Context<'_> {
        Context {
            now,
            token,
            config: &self.config,
            stats: &self.stats,
            scratch: &mut self.scratch,
            budget: FAIR_SHARE,
            // Resumptions and timers have no fresh event to vouch for a short read.
            short_read_drains: false,
        }
    }
}

/// The loop and everything it owns.
#[derive(Debug)]
pub struct EventLoop {
    poll: Poll,
    events: Events,
    table: EndpointTable,
    shared: Shared,
    phase: Phase,
    /// When to log the next periodic stats line; `None` when `--stats-interval` is 0.
    next_stats_line: Option<Instant>,
    /// Connections that spent their budget and must be called again without an event.
    yielded: Vec<Token>,
    /// Stop requests from [`Handle`](crate::Handle)s, counted so two quick requests still mean
    /// "stop now" even when the waker coalesces them into one event.
    stop_requests: Arc<AtomicUsize>,
}

impl EventLoop {
    /// A loop with an empty table.
    ///
    /// # Errors
    /// The poll instance could not be created.
    pub fn new(
        config: Config,
        stats: Arc<Stats>,
        stop_requests: Arc<AtomicUsize>,
    ) -> io::Result<Self> {
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_PER_POLL),
            table: EndpointTable::with_capacity(config.max_conns.min(4096) + 8),
            shared: Shared {
                config,
                stats,
                scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            },
            phase: Phase::Running,
            next_stats_line: None,
            yielded: Vec::new(),
            stop_requests,
        })
    }

    /// The configuration the loop runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The registry, for sources that register themselves (the waker).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Adds an endpoint (a listener, the signal source, the waker) before the loop runs.
    ///
    /// # Errors
    /// Registration failed.
    pub fn insert(&mut self, endpoint: Endpoint) -> io::Result<Token> {
        self.table
            .insert(self.poll.registry(), endpoint, &self.shared.stats)
    }

    /// Runs until shutdown completes, then returns the final figures.
    ///
    /// # Errors
    /// `poll` itself failed (other than `EINTR`): the server cannot go on.
    pub fn run(&mut self) -> io::Result<Snapshot> {
        let interval = self.shared.config.stats_interval;
        self.next_stats_line = (!interval.is_zero()).then(|| Instant::now() + interval);
        while self.phase != Phase::Stopped {
            self.wait(self.poll_timeout())?;
            let now = Instant::now();
            self.handle_events(now);
            self.fire_due_deadlines(now);
            self.advance_phase(now);
        }
        let summary = self.shared.stats.snapshot();
        info!("stopped: {summary}");
        Ok(summary)
    }

    /// How long `poll` may sleep: until the nearest deadline, and not at all while connections
    /// that spent their budget wait to be resumed.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.yielded.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.table.next_deadline(),
            self.next_stats_line,
            self.drain_deadline(),
        ];
        poll_timeout(Instant::now(), deadlines)
    }

    /// Waits for readiness or the timeout, and takes the batch of events.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.shared.stats.add(Metric::LoopIterations, 1);
        match self.poll.poll(&mut self.events, timeout) {
            // A signal interrupted the wait: an empty batch. The signal itself comes as an event.
            Err(e) if interrupted(&e) => Ok(()),
            result => result,
        }
    }

    /// Dispatches every event of the batch `wait` took.
    fn handle_events(&mut self, now: Instant) {
        // Handlers need `&mut self`; lend them the events by moving the batch out meanwhile.
        let events = mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            self.dispatch(event, now);
        }
        self.events = events;
        for token in mem::take(&mut self.yielded) {
            if let Some(endpoint) = self.table.get_mut(token) {
                let mut ctx = self.shared.context(now, token);
                let next = endpoint.on_resume(&mut ctx);
                let budget_left = ctx.budget;
                self.apply(token, next, budget_left);
            }
        }
    }

    /// Applies a handler's verdict, and remembers an endpoint that spent its budget.
    fn apply(&mut self, token: Token, next: Next, budget_left: usize) {
        if next.is_continue() && budget_left == 0 {
            self.yielded.push(token);
        }
        self.table
            .settle(self.poll.registry(), token, next, &self.shared.stats);
    }

    /// Hands one event to the endpoint its token names.
    fn dispatch(&mut self, event: &Event, now: Instant) {
        let token = event.token();
        self.shared.stats.add(Metric::Events, 1);
        let Some(endpoint) = self.table.get_mut(token) else {
            // Its endpoint was closed earlier in this batch; the slot may already hold another.
            trace!("{} stale event dropped", Id(token));
            self.shared.stats.add(Metric::StaleEvents, 1);
            return;
        };
        trace!(
            "{} {} event: readable={} writable={} closed={}",
            Id(token),
            endpoint.kind(),
            event.is_readable(),
            event.is_writable(),
            event.is_read_closed() || event.is_write_closed(),
        );
        match endpoint {
            Endpoint::Listener(_) => self.accept_all(token, now),
            Endpoint::Signals(signals) => {
                let received = signals.pending().count();
                (0..received).for_each(|_| self.request_stop(now));
            }
            Endpoint::Waker => {
                let requests = self.stop_requests.swap(0, Ordering::AcqRel);
                (0..requests).for_each(|_| self.request_stop(now));
            }
            Endpoint::Echo(_) | Endpoint::Download(_) | Endpoint::Chat(_) => {
                let mut ctx = self.shared.context(now, token);
                let next = endpoint.on_event(event, &mut ctx);
                let budget_left = ctx.budget;
                self.apply(token, next, budget_left);
            }
        }
    }

    /// Accepts every queued connection on one listener and gives each to its service.
    fn accept_all(&mut self, token: Token, now: Instant) {
        let registry = self.poll.registry();
        loop {
            let full = self.table.clients() >= self.shared.config.max_conns;
            let mut ctx = self.shared.context(now, token);
            let Some(Endpoint::Listener(listener)) = self.table.get_mut(token) else {
                return;
            };
            let Some((stream, peer)) = listener.accept(&mut ctx) else {
                break;
            };
            if full {
                listener.on_refused(&mut ctx);
                ctx.stats.count_close(CloseReason::Limit);
                continue; // dropping `stream` closes it
            }
            listener.on_admitted();
            let endpoint = match listener.service() {
                Service::Echo => Endpoint::Echo(echo::Connection::new(stream, now, ctx.config)),
                Service::Download(files) => Endpoint::Download(download::Connection::new(
                    stream,
                    now,
                    ctx.config,
                    Arc::clone(files),
                )),
            };
            match self.table.insert(registry, endpoint, ctx.stats) {
                Ok(client) => {
                    ctx.stats.add(Metric::Accepted, 1);
                    trace!("{} accepted {peer} as {}", Id(token), Id(client));
                }
                Err(e) => warn!("cannot register a connection from {peer}: {e}"),
            }
        }
        // A listener that started backing off wants no events and a deadline: apply that.
        self.table.settle(registry, token, KEEP, &self.shared.stats);
    }

    /// Gives every endpoint whose deadline passed its `on_timeout`.
    fn fire_due_deadlines(&mut self, now: Instant) {
        while let Some(token) = self.table.pop_due(now) {
            let Some(endpoint) = self.table.get_mut(token) else {
                continue;
            };
            let mut ctx = self.shared.context(now, token);
            let next = match endpoint.deadline() {
                // A timeout may start work (a download answering its request), budget and all.
                Some(deadline) if deadline <= now => endpoint.on_timeout(&mut ctx),
                // Activity moved the deadline later since it was armed; settling re-arms it.
                _ => KEEP,
            };
            let budget_left = ctx.budget;
            let backed_off = matches!(endpoint, Endpoint::Listener(_));
            self.apply(token, next, budget_left);
            if backed_off {
                // Connections queued during the back-off raise no new edge: accept them now.
                self.accept_all(token, now);
            }
        }
    }

    /// A signal or a handle asked to stop: the first request drains, the second stops at once.
    fn request_stop(&mut self, now: Instant) {
        match self.phase {
            Phase::Running => {
                let grace = self.shared.config.shutdown_grace;
                info!(
                    "shutting down: no new connections; {} open connections get {grace:?} to finish",
                    self.table.clients()
                );
                self.phase = Phase::Draining { until: now + grace };
                for token in self.table.tokens() {
                    if let Some(endpoint) = self.table.get_mut(token) {
                        let next = endpoint.on_shutdown(&mut self.shared.context(now, token));
                        self.table
                            .settle(self.poll.registry(), token, next, &self.shared.stats);
                    }
                }
            }
            Phase::Draining { .. } => {
                warn!("second stop request: closing every connection now");
                self.phase = Phase::Stopped;
            }
            Phase::Stopped => {}
        }
    }

    /// Logs the periodic stats line, ends draining when it is done or out of time, and closes
    /// whatever is left once stopped.
    fn advance_phase(&mut self, now: Instant) {
        if let Some(at) = self.next_stats_line.filter(|at| *at <= now) {
            info!("stats: {}", self.shared.stats.snapshot());
            self.next_stats_line = Some(at.max(now) + self.shared.config.stats_interval);
        }
        match self.phase {
            Phase::Running | Phase::Stopped => {}
            Phase::Draining { .. } if self.table.clients() == 0 => self.phase = Phase::Stopped,
            Phase::Draining { until } if now >= until => {
                warn!(
                    "shutdown grace over: closing {} connections still open",
                    self.table.clients()
                );
                self.phase = Phase::Stopped;
            }
            Phase::Draining { .. } => {}
        }
        if self.phase == Phase::Stopped {
            for token in self.table.tokens() {
                self.table.close(
                    self.poll.registry(),
                    token,
                    CloseReason::Shutdown,
                    &self.shared.stats,
                );
            }
        }
    }

    fn drain_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Draining { until } => Some(until),
            Phase::Running | Phase::Stopped => None,
        }
    }
}

#[cfg(test)]
mod tests;
