//! The endpoint table: every socket the loop polls, in one slab, each behind a mio `Token`.
//!
//! This module is the only place that registers, reregisters or deregisters a source, so the
//! kernel's view (what each token is registered for) and the table's view can never drift apart.
//!
//! # Tokens and stale events
//!
//! A token is the endpoint's slab key plus a generation number (see [`token`](crate::token)).
//! Slab reuses the key of a removed entry for the next insert, and `poll` hands over a whole batch
//! of events at once. So an event can outlive its endpoint: a handler early in the batch closes
//! connection #5 (a shutdown request does this to every idle connection; on kqueue, where reads and
//! writes are separate events, #5's own first event can), a later event accepts a client into the
//! free slot #5, and then comes the event queued for the *old* #5. Looked up by key alone it would
//! be handed to the new client. With the generation its token no longer matches slot #5, and it is
//! dropped as stale. The check is one comparison per event.

use std::io;
use std::time::Instant;

use log::{debug, trace};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::service::{Endpoint, Next};
use crate::stats::{CloseReason, Metric, Stats};
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
    endpoint: Endpoint,
}

/// Every endpoint, its registration and its armed deadline.
#[derive(Debug)]
pub struct EndpointTable {
    slab: Slab<Slot>,
    timers: Timers,
    /// Generation given to the next insert, counted over the whole table. Wraps; a token could
    /// only be confused after 2^32 inserts within one batch of events.
    next_generation: usize,
    /// Client connections in the table (listeners, signals and the waker excluded).
    clients: usize,
    /// Connections accepted past `--max-conns` only to be told so.
    turned_away: usize,
}

impl EndpointTable {
    /// An empty table with room for `capacity` endpoints before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        EndpointTable {
            slab: Slab::with_capacity(capacity),
            timers: Timers::default(),
            next_generation: 0,
            clients: 0,
            turned_away: 0,
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
    ) -> io::Result<Token> {
        let entry = self.slab.vacant_entry();
        if entry.key() > KEY_MASK {
            return Err(io::Error::other("endpoint table is full"));
        }
        let token = token::compose(entry.key(), self.next_generation);
        let generation = token::generation(token);
        self.next_generation = self.next_generation.wrapping_add(1);

        let registered = endpoint.interest();
        if let (Some(source), Some(interest)) = (endpoint.source(), registered) {
            registry.register(source, token, interest)?;
        }
        let armed = endpoint.deadline();
        if let Some(at) = armed {
            self.timers.insert(at, token);
        }
        if endpoint.is_client() {
            self.clients += 1;
            stats.add(Metric::Open, 1);
        }
        if endpoint.is_turned_away() {
            self.turned_away += 1;
        }
        trace!("{} {} inserted, {registered:?}", Id(token), endpoint.kind());
        entry.insert(Slot {
            generation,
            registered,
            armed,
            endpoint,
        });
        Ok(token)
    }

    /// The live endpoint behind `token`, or `None` if the token is stale (its endpoint closed,
    /// perhaps with the slot already reused).
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Endpoint> {
        self.slot_mut(token).map(|slot| &mut slot.endpoint)
    }

    /// Applies a handler's verdict: keep the endpoint and bring its registration and deadline up to
    /// date with its state, or close it.
    pub fn settle(&mut self, registry: &Registry, token: Token, next: Next, stats: &Stats) {
        if let Next::Break(reason) = next {
            self.close(registry, token, reason, stats);
            return;
        }
        let Some(slot) = live(&mut self.slab, token) else {
            return;
        };
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
        if let (Some(source), Some(_)) = (slot.endpoint.source(), slot.registered) {
            // Deregistering a socket we are about to close cannot fail in a way worth reporting:
            // closing the descriptor removes it from the poll set anyway.
            let _ = registry.deregister(source);
        }
        if slot.endpoint.is_client() {
            self.clients -= 1;
            stats.count_close(reason);
            stats.sub(Metric::Open, 1);
        }
        if slot.endpoint.is_turned_away() {
            self.turned_away -= 1;
            stats.count_close(reason);
        }
        debug!("{} {} closed: {reason:?}", Id(token), slot.endpoint.kind());
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
        self.clients
    }

    /// Connections accepted past `--max-conns` and open now, only to be told so.
    pub fn turned_away(&self) -> usize {
        self.turned_away
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
        return Ok(());
    };
    match (slot.registered, wanted) {
        (None, Some(interest)) => registry.register(source, token, interest)?,
        (Some(_), Some(interest)) => registry.reregister(source, token, interest)?,
        (Some(_), None) => registry.deregister(source)?,
        (None, None) => {}
    }
    trace!("{} interest {:?} -> {wanted:?}", Id(token), slot.registered);
    slot.registered = wanted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Listener;
    use crate::service::Service;
    use crate::sys::tcp_listener;
    use mio::Poll;

    fn listener_endpoint() -> Endpoint {
        let socket = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
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
            .insert(poll.registry(), listener_endpoint(), &stats)
            .unwrap();
        table.close(poll.registry(), old, CloseReason::Shutdown, &stats);
        let new = table
            .insert(poll.registry(), listener_endpoint(), &stats)
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
            .insert(poll.registry(), listener_endpoint(), &stats)
            .unwrap();
        let b = table
            .insert(poll.registry(), Endpoint::Waker, &stats)
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
