//! The loop's side of accepting: draining a listener, the connection limit, and turning away.
//!
//! The listener ([`crate::listener`]) accepts sockets and backs off when the process runs out of
//! descriptors; the service ([`crate::service::Service`]) builds the connection a socket becomes.
//! What lies between is the loop's: counting clients against `--max-conns`, and deciding whether a
//! connection past the limit is closed at once or kept a moment to be told why. With
//! `--access-log`, `accept`'s address starts each client's notes (see [`crate::access`]).

use std::time::{Duration, Instant};

use log::{trace, warn};
use mio::Token;

use super::EventLoop;
use crate::access::{self, Close};
use crate::service::{Endpoint, KEEP, Role};
use crate::stats::Moved;
use crate::stats::{CloseReason, Metric};
use crate::token::Id;

impl EventLoop {
    /// Accepts every queued connection on one listener and has its service build each one.
    ///
    /// Past its limit (`--max-conns` for clients, `--admin-max-conns` for the admin service) a
    /// connection is closed at once, unless its service can say why and fewer than
    /// `--max-turned-away` others are being told: then it gets a short-lived one that only says so.
    pub(super) fn accept_all(&mut self, token: Token, now: Instant) {
        let (registry, stats) = (self.poll.registry(), &self.shared.stats);
        let settings = &self.shared.settings;
        loop {
            let pool_free = self.table.count(Role::TurnedAway) < self.config.max_turned_away;
            let Some(Endpoint::Listener { service, .. }) = self.table.get_mut(token) else {
                return;
            };
            let role = service.role();
            let limit = match role {
                Role::Admin => self.config.admin_max_conns,
                Role::Client | Role::TurnedAway | Role::Own => self.config.max_conns,
            };
            let full = self.table.count(role) >= limit;
            let Some(Endpoint::Listener { listener, service }) = self.table.get_mut(token) else {
                return;
            };
            let Some((stream, peer)) = listener.accept(now, stats) else {
                break;
            };
            let notes = settings.access_log.then(|| service.notes(peer));
            let endpoint = if full {
                listener.on_refused(limit);
                let turned_away = pool_free.then(|| service.turn_away(stream, now, settings));
                let Some(endpoint) = turned_away.flatten() else {
                    if role == Role::Client {
                        stats.count_close(CloseReason::Limit);
                        if let Some(notes) = &notes {
                            let close = Close::Reason(CloseReason::Limit);
                            access::write(&notes.line(Moved::default(), Duration::ZERO, close));
                        }
                    }
                    continue; // the stream is dropped, which closes it
                };
                endpoint
            } else {
                listener.on_admitted();
                service.connect(stream, now, settings)
            };
            match self.table.insert(registry, endpoint, stats, now) {
                Ok(client) => {
                    if role == Role::Client {
                        stats.add(Metric::Accepted, 1);
                    }
                    if let Some(notes) = notes {
                        self.table.note(client, notes);
                    }
                    trace!("{} accepted {peer} as {}", Id(token), Id(client));
                }
                Err(e) => warn!("cannot register a connection from {peer}: {e}"),
            }
        }
        // A listener that started backing off wants no events and a deadline: apply that.
        self.table
            .settle(registry, token, KEEP, Moved::default(), stats);
    }
}
