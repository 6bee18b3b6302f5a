//! The endpoint table: every socket the loop polls, in one slab, each behind a mio `Token`.
//!
//! This module is the only place that registers, reregisters or deregisters a source, so the
//! kernel's view (what each token is registered for) and the table's view can never drift apart.
//!
//! # Tokens and stale events
//!
//! A token is the endpoint's slab key plus a generation number (see [`crate::token`]).
//! Slab reuses the key of a removed entry for the next insert, and `poll` hands over a whole batch
//! of events at once. So an event can outlive its endpoint: a handler early in the batch closes
//! connection #5 (a shutdown request does this to every idle connection; on kqueue, where reads and
//! writes are separate events, #5's own first event can), a later event accepts a client into the
//! free slot #5, and then comes the event queued for the *old* #5. Looked up by key alone it would
//! be handed to the new client. With the generation its token no longer matches slot #5, and it is
//! dropped as stale. The check is one comparison per event.
//!
//! # The access log's notes
//!
//! With `--access-log`, the table also keeps [`Notes`] on each client (its address, what it asked,
//! the answer) in a vector beside the slab, indexed by slab key, and writes a client's access line
//! when it closes it: only here are the close reason, the bytes moved and the open time all known,
//! whichever way the close came about. Beside the slab, not in a `Slot`, because every slot is
//! paid for by every idle connection; without the flag the vector stays empty. See
//! [`access`].

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::access::{self, Close, Notes};
use crate::service::{Endpoint, Next, Role};
use crate::stats::{CloseReason, Metric, Moved, ServiceMetric, Stats};
use crate::sys::counted::{self, Call};
use crate::sys::{self, process};
use crate::timers::Timers;
use crate::token::{self, Id, KEY_MASK};

/// One occupied slot of the table.
#[derive(Debug)]
struct Slot {
    /// Must match the token's generation, or the token is stale.
    generation: usize,
    /// What the source is registered for with the kernel now; `None` when deregistered.
    registered: Option<Interest>,
    /// The deadline armed in `timers` for this slot. It may be earlier than the endpoint's own
    /// deadline (activity pushed that later); it is never later.
    armed: Option<Instant>,
    /// When the endpoint was inserted, and when the loop last called one of its handlers, in
    /// milliseconds since the table was made: 8 bytes each where an `Instant` takes 16, and idle
    /// connections are what the table holds most of.
    opened_ms: u64,
    active_ms: u64,
    /// Bytes this endpoint's handlers have read and written, for the admin service's list.
    moved: Moved,
    endpoint: Endpoint,
}

/// One endpoint as the admin service lists it: the endpoint and what the table knows of it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Its token.
    pub token: Token,
    /// The endpoint itself.
    pub endpoint: &'a Endpoint,
    /// Bytes its handlers have moved.
    pub moved: Moved,
    /// What it is registered for with the kernel; `None` while deregistered.
    pub registered: Option<Interest>,
    /// How long ago it was inserted.
    pub age: Duration,
    /// How long ago the loop last had something to do for it.
    pub idle: Duration,
}

/// Every endpoint, its registration and its armed deadline.
#[derive(Debug)]
pub struct EndpointTable {
    slab: Slab<Slot>,
    /// The origin of every slot's `opened_ms` and `active_ms`.
    epoch: Instant,
    /// The time of the current pass, in milliseconds since `epoch` ([`EndpointTable::start_pass`]).
    pass_ms: u64,
    /// Descriptors the process holds beside the endpoints' and the files being sent (standard
    /// streams, the poll, the served root, ...), as last measured ([`EndpointTable::open_fds`]).
    other_fds: Cell<Option<u64>>,
    timers: Timers,
    /// Generation given to the next insert, counted over the whole table. Wraps; a token could
    /// only be confused after 2^32 inserts within one batch of events.
    next_generation: usize,
    /// Endpoints in the table by role, in the order of [`Role::COUNTED`]; the server's own
    /// endpoints are not counted.
    counts: [usize; Role::COUNTED.len()],
    /// The access log's notes by slab key: empty unless `--access-log` is on, and then only
    /// clients have any.
    notes: Vec<Option<Notes>>,
}

impl EndpointTable {
    /// An empty table with room for `capacity` endpoints before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        EndpointTable {
            slab: Slab::with_capacity(capacity),
            epoch: Instant::now(),
            pass_ms: 0,
            other_fds: Cell::new(None),
            timers: Timers::default(),
            next_generation: 0,
            counts: [0; Role::COUNTED.len()],
            notes: Vec::new(),
        }
    }

    /// Adds an endpoint, registers it for the interest it wants and arms its deadline.
    ///
    /// # Errors
    /// Registration failed (the endpoint is dropped, which closes its socket), or the table is full.
    pub fn insert(
        &mut self,
        registry: &Registry,
        mut endpoint: Endpoint,
        stats: &Stats,
        now: Instant,
    ) -> io::Result<Token> {
        let opened_ms = self.millis(now);
        let entry = self.slab.vacant_entry();
        if entry.key() > KEY_MASK {
            return Err(io::Error::other("endpoint table is full"));
        }
        let token = token::compose(entry.key(), self.next_generation);
        let generation = token::generation(token);
        self.next_generation = self.next_generation.wrapping_add(1);

        let registered = endpoint.interest();
        if let (Some(source), Some(interest)) = (endpoint.source(), registered) {
            epoll_ctl(|| registry.register(source, token, interest))?;
        }
        let armed = endpoint.deadline();
        if let Some(at) = armed {
            self.timers.insert(at, token);
        }
        let role = endpoint.role();
        if let Some(i) = counted(role) {
            self.counts[i] += 1;
        }
        if role == Role::Client {
            stats.add(Metric::Open, 1);
        }
        if let (Role::Client | Role::Admin, Some(service)) = (role, endpoint.service_id()) {
            stats.service_add(service, ServiceMetric::Accepted, 1);
            stats.service_add(service, ServiceMetric::Open, 1);
        }
        trace!("{} {} inserted, {registered:?}", Id(token), endpoint.kind());
        if let Some(notes) = self.notes.get_mut(entry.key()) {
            *notes = None; // whatever an endpoint before noted, this one starts afresh
        }
        entry.insert(Slot {
            generation,
            registered,
            armed,
            opened_ms,
            active_ms: opened_ms,
            moved: Moved::default(),
            endpoint,
        });
        Ok(token)
    }

    /// The live endpoint behind `token`, or `None` if the token is stale (its endpoint closed,
    /// perhaps with the slot already reused).
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Endpoint> {
        self.slot_mut(token).map(|slot| &mut slot.endpoint)
    }

    /// The descriptors the process holds, `files` of them open for downloads.
    ///
    /// Listing `/proc/self/fd` costs the kernel about a microsecond per descriptor, so it is done
    /// only while the table is small (`LIST_FDS_BELOW` endpoints), or the first time. A large
    /// table is counted instead: each endpoint holds exactly one descriptor (see
    /// [`sys::CLOSING_DEREGISTERS`]), files are counted apart, and the rest were measured at the
    /// last listing and do not change while the server runs.
    pub fn open_fds(&self, files: u64) -> Option<u64> {
        let ours = self.slab.len() as u64 + files;
        match self.other_fds.get() {
            Some(other) if self.slab.len() >= LIST_FDS_BELOW => Some(other + ours),
            _ => {
                let listed = process::count_open_fds()?;
                self.other_fds.set(Some(listed.saturating_sub(ours)));
                Some(listed)
            }
        }
    }

    /// Takes the time of the pass that begins, for [`EndpointTable::get_mut_active`]: one clock
    /// subtraction per pass rather than one per event.
    pub fn start_pass(&mut self, now: Instant) {
        self.pass_ms = self.millis(now);
    }

    /// As [`EndpointTable::get_mut`], noting that the loop has something to do for the endpoint
    /// in this pass (its idle time in the admin service's list starts again); with the endpoint
    /// come its access-log notes, if it has any.
    pub fn get_mut_active(&mut self, token: Token) -> Option<(&mut Endpoint, Option<&mut Notes>)> {
        let active_ms = self.pass_ms;
        let slot = live(&mut self.slab, token)?;
        slot.active_ms = active_ms;
        let notes = self
            .notes
            .get_mut(token::key(token))
            .and_then(Option::as_mut);
        Some((&mut slot.endpoint, notes))
    }

    /// Starts the access log's notes on a live endpoint (with `--access-log` only).
    pub fn note(&mut self, token: Token, notes: Notes) {
        if live(&mut self.slab, token).is_none() {
            return;
        }
        let key = token::key(token);
        if self.notes.len() <= key {
            self.notes.resize_with(key + 1, || None);
        }
        self.notes[key] = Some(notes);
    }

    /// The endpoints from slab key `key` on, in key order, as the admin service lists them.
    pub fn entries_from(&self, key: usize, now: Instant) -> impl Iterator<Item = Entry<'_>> {
        let now_ms = self.millis(now);
        let since = move |ms: u64| Duration::from_millis(now_ms.saturating_sub(ms));
        (key..self.slab.capacity()).filter_map(move |key| {
            let slot = self.slab.get(key)?;
            Some(Entry {
                token: token::compose(key, slot.generation),
                endpoint: &slot.endpoint,
                moved: slot.moved,
                registered: slot.registered,
                age: since(slot.opened_ms),
                idle: since(slot.active_ms),
            })
        })
    }

    /// Applies a handler's verdict: adds what it `moved` to the endpoint's counts, then keeps the
    /// endpoint and brings its registration and deadline up to date with its state, or closes it.
    pub fn settle(
        &mut self,
        registry: &Registry,
        token: Token,
        next: Next,
        moved: Moved,
        stats: &Stats,
    ) {
        let Some(slot) = live(&mut self.slab, token) else {
            return;
        };
        if moved != Moved::default() {
            slot.moved.bytes_in += moved.bytes_in;
            slot.moved.bytes_out += moved.bytes_out;
            if let Some(service) = slot.endpoint.service_id() {
                stats.service_add(service, ServiceMetric::BytesIn, moved.bytes_in);
                stats.service_add(service, ServiceMetric::BytesOut, moved.bytes_out);
            }
        }
        if let Next::Break(reason) = next {
            self.close(registry, token, reason, stats);
            return;
        }
        let wanted = slot.endpoint.interest();
        if wanted != slot.registered {
            if let Err(e) = reregister(registry, token, slot, wanted) {
                debug!("{} reregister failed: {e}", Id(token));
                self.close(registry, token, CloseReason::Error, stats);
                return;
            }
        }
        // Arm eagerly only when the deadline moved earlier; a later one is found when the armed
        // one falls due. So a busy connection does not touch the timer set on every read.
        let deadline = slot.endpoint.deadline();
        if deadline.is_some() && (slot.armed.is_none() || deadline < slot.armed) {
            if let Some(old) = slot.armed {
                self.timers.remove(old, token);
            }
            slot.armed = deadline;
            if let Some(at) = deadline {
                self.timers.insert(at, token);
            }
        }
    }

    /// Deregisters and drops an endpoint (dropping closes its socket) and disarms its deadline.
    /// Client closes are counted under `reason`.
    pub fn close(&mut self, registry: &Registry, token: Token, reason: CloseReason, stats: &Stats) {
        if self.slot_mut(token).is_none() {
            return;
        }
        let mut slot = self.slab.remove(token::key(token));
        if let Some(at) = slot.armed {
            self.timers.remove(at, token);
        }
        if let (Some(source), Some(_), false) = (
            slot.endpoint.source(),
            slot.registered,
            sys::CLOSING_DEREGISTERS,
        ) {
            // Deregistering a socket we are about to close cannot fail in a way worth reporting:
            // closing the descriptor removes it from the poll set anyway.
            let _ = epoll_ctl(|| registry.deregister(source));
        }
        let role = slot.endpoint.role();
        if let Some(i) = counted(role) {
            self.counts[i] -= 1;
        }
        if let (Role::Client | Role::Admin, Some(service)) = (role, slot.endpoint.service_id()) {
            stats.service_sub(service, ServiceMetric::Open, 1);
            let lived = self
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(slot.opened_ms));
            stats.observe_lifetime(service, lived);
        }
        // The figures are the clients': admin traffic would blur them.
        match role {
            Role::Client => {
                stats.count_close(reason);
                stats.sub(Metric::Open, 1);
            }
            Role::TurnedAway => stats.count_close(reason),
            Role::Admin | Role::Own => {}
        }
        debug!("{} {} closed: {reason:?}", Id(token), slot.endpoint.kind());
        let notes = self.notes.get_mut(token::key(token)).and_then(Option::take);
        // An admin connection writes a line per request itself; its notes only lend the address.
        if let Some(notes) = notes.filter(|_| role != Role::Admin) {
            let opened = Duration::from_millis(slot.opened_ms);
            let lived = self.epoch.elapsed().saturating_sub(opened);
            access::write(&notes.line(slot.moved, lived, Close::Reason(reason)));
        }
    }

    /// Takes the next endpoint whose armed deadline is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Token> {
        while let Some((_, token)) = self.timers.pop_due(now) {
            if let Some(slot) = self.slot_mut(token) {
                slot.armed = None;
                return Some(token);
            }
        }
        None
    }

    /// The nearest armed deadline of any endpoint.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Client connections open now.
    pub fn clients(&self) -> usize {
        self.count(Role::Client)
    }

    /// Endpoints of one role open now (0 for the server's own, which are not counted).
    pub fn count(&self, role: Role) -> usize {
        counted(role).map_or(0, |i| self.counts[i])
    }

    /// Tokens of every endpoint, for the rare passes over all of them (shutdown).
    pub fn tokens(&self) -> Vec<Token> {
        self.slab
            .iter()
            .map(|(key, slot)| token::compose(key, slot.generation))
            .collect()
    }

    fn slot_mut(&mut self, token: Token) -> Option<&mut Slot> {
        live(&mut self.slab, token)
    }
}

impl EndpointTable {
    /// `at` in milliseconds since the table was made.
    fn millis(&self, at: Instant) -> u64 {
        // Milliseconds since start-up fit a u64 for 584 million years.
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// Endpoints below which `open_fds` lists `/proc/self/fd` (a millisecond at most) rather than
/// counting from the table.
const LIST_FDS_BELOW: usize = 1000;

/// Where `role` is counted in [`EndpointTable::counts`], if it is.
fn counted(role: Role) -> Option<usize> {
    Role::COUNTED.iter().position(|counted| *counted == role)
}

/// The stale-event guard: the slot behind `token`, only if its generation still matches.
fn live(slab: &mut Slab<Slot>, token: Token) -> Option<&mut Slot> {
    let slot = slab.get_mut(token::key(token))?;
    (slot.generation == token::generation(token)).then_some(slot)
}

/// Brings one source's registration to `wanted`: register, reregister or deregister.
fn reregister(
    registry: &Registry,
    token: Token,
    slot: &mut Slot,
    wanted: Option<Interest>,
) -> io::Result<()> {
    let Some(source) = slot.endpoint.source() else {
        // The endpoint has no socket now: a chat bus link backing off dropped it, and closing a
        // descriptor takes it out of the poll set. Its next socket is registered afresh.
        slot.registered = None;
        return Ok(());
    };
    match (slot.registered, wanted) {
        (None, Some(interest)) => epoll_ctl(|| registry.register(source, token, interest))?,
        (Some(_), Some(interest)) => epoll_ctl(|| registry.reregister(source, token, interest))?,
        (Some(_), None) => epoll_ctl(|| registry.deregister(source))?,
        (None, None) => {}
    }
    trace!("{} interest {:?} -> {wanted:?}", Id(token), slot.registered);
    slot.registered = wanted;
    Ok(())
}

/// Makes one change to the poll set, which is one `epoll_ctl` on Linux, and counts it: every
/// change goes through here, this module being the only one that talks to the `Registry`.
fn epoll_ctl(change: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    counted::count(Call::EpollCtl);
    change()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Listener;
    use crate::service::Service;
    use crate::sys::tcp_listener;
    use mio::Poll;

    fn listener_endpoint() -> Endpoint {
        let socket = tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        Endpoint::Listener {
            listener: Listener::new(socket, "echo"),
            service: Service::Echo,
        }
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_token() {
        let poll = Poll::new().unwrap();
        let stats = Stats::default();
        let mut table = EndpointTable::with_capacity(4);
        let old = table
            .insert(poll.registry(), listener_endpoint(), &stats, Instant::now())
            .unwrap();
        table.close(poll.registry(), old, CloseReason::Shutdown, &stats);
        let new = table
            .insert(poll.registry(), listener_endpoint(), &stats, Instant::now())
            .unwrap();

        assert_eq!(token::key(old), token::key(new), "slab reuses the key");
        assert!(table.get_mut(old).is_none(), "the old token is stale");
        assert!(table.get_mut(new).is_some());
        // Closing through a stale token must not close the new endpoint.
        table.close(poll.registry(), old, CloseReason::Shutdown, &stats);
        assert!(table.get_mut(new).is_some());
    }

    #[test]
    fn tokens_list_every_live_endpoint() {
        let poll = Poll::new().unwrap();
        let stats = Stats::default();
        let mut table = EndpointTable::with_capacity(4);
        let a = table
            .insert(poll.registry(), listener_endpoint(), &stats, Instant::now())
            .unwrap();
        let b = table
            .insert(poll.registry(), Endpoint::Waker, &stats, Instant::now())
            .unwrap();
        assert_eq!(table.tokens(), vec![a, b]);
        assert_eq!(
            table.clients(),
            0,
            "listeners and the waker are not clients"
        );
        assert_eq!(Id(b).to_string(), "#1.1");
    }
}
