//! The readiness loop: one thread, one `Poll`, every socket of every service.
//!
//! One pass of [`EventLoop::run`]:
//!
//! 1. `poll` sleeps until a source is ready or the nearest deadline falls due (idle timeout,
//!    accept back-off, lingering close, stats line, admin sample, shutdown grace);
//! 2. each event's token finds its endpoint in the [`EndpointTable`]; the endpoint's handler does
//!    the I/O and returns a [`Next`]; the table applies it (re-registration, deadline, close);
//!    then the connections that gave their turn back are resumed, admin connections first given
//!    the content they asked for (see `view.rs`), and so are the endpoints another one left work
//!    for: the chat relay and its Redis links (see `links.rs`);
//! 3. due deadlines fire;
//! 4. the periodic chores run (stats line, admin sample), and the shutdown phase advances.
//!
//! Each batch's size and each pass's time go into [`Stats`]' histograms; the clock read that ends
//! a pass also dates the next `poll` timeout, so measuring adds no clock read to a pass.
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

use log::{info, trace};
use mio::event::Event;
use mio::{Events, Poll, Token};

use crate::access::Notes;
use crate::config::Config;
use crate::endpoint::EndpointTable;
use crate::service::admin::history::History;
use crate::service::chat::bus::Exchange;
use crate::service::{Context, Endpoint, FAIR_SHARE, KEEP, Next, Settings};
use crate::stats::{Metric, Moved, Snapshot, Stats, StatsLine};
use crate::sys::counted::{self, Call};
use crate::sys::interrupted;
use crate::timers::poll_timeout;
use crate::token::Id;
use shutdown::Phase;

/// Readiness events taken from the kernel per `poll`: enough to amortise the system call over a
/// busy batch; more events simply wait for the next pass.
const EVENTS_PER_POLL: usize = 1024;

/// Size of the one read buffer all connections share: one default socket receive window.
const SCRATCH_BYTES: usize = 64 * 1024;

/// What every handler borrows for one event, apart from its own endpoint.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    stats: Arc<Stats>,
    scratch: Box<[u8]>,
    /// What the chat relay and its Redis links leave one another; `None` without `--chat-bus`.
    bus: Option<Exchange>,
}

impl Shared {
    fn context<'a>(
        &'a mut self,
        now: Instant,
        token: Token,
        access: Option<&'a mut Notes>,
    ) -> Context<'a> {
        Context {
            now,
            token,
            settings: &self.settings,
            stats: &self.stats,
            scratch: &mut self.scratch,
            budget: FAIR_SHARE,
            // Resumptions and timers have no fresh event to vouch for a short read.
            short_read_drains: false,
            access,
            bus: self.bus.as_mut(),
        }
    }
}

/// The loop and everything it owns.
#[derive(Debug)]
pub struct EventLoop {
    /// The loop's own settings: `--max-conns`, `--shutdown-grace`, `--stats-interval`, `--pin`.
    config: Config,
    poll: Poll,
    events: Events,
    table: EndpointTable,
    shared: Shared,
    phase: Phase,
    /// The periodic stats line of `--stats-interval`.
    stats_line: StatsLine,
    /// One-second samples for the admin service's `/stats.json`; `None` while it is off.
    history: Option<History>,
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
                settings: Settings::from_config(&config),
                stats,
                scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
                bus: None,
            },
            phase: Phase::Running,
            stats_line: StatsLine::new(config.stats_interval),
            history: config.admin_port.map(|_| History::default()),
            yielded: Vec::new(),
            stop_requests,
            config,
        })
    }

    /// Runs until shutdown completes, then returns the final figures.
    ///
    /// # Errors
    /// `poll` itself failed (other than `EINTR`): the server cannot go on.
    pub fn run(&mut self) -> io::Result<Snapshot> {
        let mut now = Instant::now();
        self.start_periodic(now);
        while self.phase != Phase::Stopped {
            self.wait(self.poll_timeout(now))?;
            let woke = Instant::now();
            self.handle_events(woke);
            self.fire_due_deadlines(woke);
            self.periodic(woke);
            self.advance_phase(woke);
            now = self.end_pass(woke);
        }
        let summary = self.shared.stats.snapshot();
        info!("stopped: {summary}");
        Ok(summary)
    }

    /// How long `poll` may sleep from `now`: until the nearest deadline, and not at all while
    /// connections that spent their budget wait to be resumed.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.yielded.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.table.next_deadline(),
            self.stats_line.deadline(),
            self.history.as_ref().and_then(History::deadline),
            self.phase.deadline(),
        ];
        poll_timeout(now, deadlines)
    }

    /// Waits for readiness or the timeout, and takes the batch of events.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.shared.stats.add(Metric::LoopIterations, 1);
        counted::count(Call::EpollWait);
        let polled = match self.poll.poll(&mut self.events, timeout) {
            // A signal interrupted the wait: an empty batch. The signal itself comes as an event.
            Err(e) if interrupted(&e) => Ok(()),
            result => result,
        };
        // mio's iterator knows the batch's length: `count` does not walk it.
        self.shared.stats.observe_events(self.events.iter().count());
        polled
    }

    /// Dispatches every event of the batch `wait` took.
    fn handle_events(&mut self, now: Instant) {
        self.table.start_pass(now);
        // Handlers need `&mut self`; lend them the events by moving the batch out meanwhile.
        let events = mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            self.dispatch(event, now);
        }
        self.events = events;
        let mut yielded = mem::take(&mut self.yielded);
        // A token may be queued twice: its budget spent in two calls since the last pass (an
        // event and a deadline), or work left for it by another endpoint besides. It is resumed
        // once, as if the two were one readiness event; order among tokens does not matter.
        yielded.sort_unstable();
        yielded.dedup();
        for token in yielded {
            // An admin connection that needs content from the loop yields to ask for it.
            self.supply_admin(token, now);
            self.call(token, now, Endpoint::on_resume);
        }
    }

    /// Calls one handler of the endpoint behind `token` and applies its verdict: the table
    /// settles it, and an endpoint that spent its budget is remembered for resumption.
    fn call(
        &mut self,
        token: Token,
        now: Instant,
        handler: impl FnOnce(&mut Endpoint, &mut Context<'_>) -> Next,
    ) {
        let Some((endpoint, notes)) = self.table.get_mut_active(token) else {
            return;
        };
        let before = Moved::counted(&self.shared.stats);
        let mut ctx = self.shared.context(now, token, notes);
        let next = handler(endpoint, &mut ctx);
        if next.is_continue() && ctx.budget == 0 {
            self.yielded.push(token);
        }
        let moved = Moved::counted(&self.shared.stats).since(before);
        let (registry, stats) = (self.poll.registry(), &self.shared.stats);
        self.table.settle(registry, token, next, moved, stats);
        self.wake_linked();
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
            Endpoint::Listener { .. } => self.accept_all(token, now),
            Endpoint::Signals(signals) => {
                let received = signals.pending().count();
                (0..received).for_each(|_| self.request_stop(now));
            }
            Endpoint::Waker => {
                let requests = self.stop_requests.swap(0, Ordering::AcqRel);
                (0..requests).for_each(|_| self.request_stop(now));
            }
            Endpoint::Echo(_)
            | Endpoint::Download(_)
            | Endpoint::Admin(_)
            | Endpoint::Chat(_)
            | Endpoint::Bus(_) => {
                self.call(token, now, |endpoint, ctx| endpoint.on_event(event, ctx));
            }
        }
    }

    /// Gives every endpoint whose deadline passed its `on_timeout`.
    fn fire_due_deadlines(&mut self, now: Instant) {
        while let Some(token) = self.table.pop_due(now) {
            let backed_off = matches!(self.table.get_mut(token), Some(Endpoint::Listener { .. }));
            self.call(token, now, |endpoint, ctx| match endpoint.deadline() {
                // A timeout may start work (a download answering its request), budget and all.
                Some(deadline) if deadline <= now => endpoint.on_timeout(ctx),
                // Activity moved the deadline later since it was armed; settling re-arms it.
                _ => KEEP,
            });
            if backed_off {
                // Connections queued during the back-off raise no new edge: accept them now.
                self.accept_all(token, now);
            }
        }
    }
}

mod accept;
mod links;
mod setup;
mod shutdown;
#[cfg(test)]
mod tests;
mod view;
