//! The loop's shutdown phase: from the first stop request, through the grace period, to the end.
//!
//! Stopping is a phase, not a flag, so each phase's rules are in one `match`, and every change of
//! phase goes through [`EventLoop::transition`], which logs it. A stop request (SIGINT, SIGTERM or
//! a [`Handle`](crate::Handle)) moves `RUNNING` to `DRAINING`: listeners close, so new clients are
//! refused, and each connection is told through `on_shutdown` to finish what it started. The loop
//! stops once no client is left, when the grace period ends, or at a second request.

use std::fmt;
use std::time::Instant;

use log::{info, trace, warn};

use super::EventLoop;
use crate::service::Endpoint;
use crate::stats::CloseReason;
use crate::text::counted;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepting and serving.
    Running,
    /// Listeners are closed; open connections finish until they are done or the grace period ends.
    Draining {
        /// The end of the grace period.
        until: Instant,
    },
    /// Everything is closed; `run` returns.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Running => "RUNNING",
            Phase::Draining { .. } => "DRAINING",
            Phase::Stopped => "STOPPED",
        })
    }
}

impl Phase {
    /// The end of the grace period while draining: the loop must wake up then.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Draining { until } => Some(*until),
            Phase::Running | Phase::Stopped => None,
        }
    }
}

impl EventLoop {
    /// A signal or a handle asked to stop: the first request drains, the second stops at once.
    pub(super) fn request_stop(&mut self, now: Instant) {
        match self.phase {
            Phase::Running => self.start_draining(now),
            Phase::Draining { .. } => {
                warn!("second stop request: closing every connection now");
                self.transition(Phase::Stopped);
            }
            // Nothing is left to stop.
            Phase::Stopped => {}
        }
    }

    /// Ends draining when every client is done or the grace is over, and closes whatever is left
    /// once stopped.
    pub(super) fn advance_phase(&mut self, now: Instant) {
        match self.phase {
            // Serving: nothing to advance.
            Phase::Running => return,
            Phase::Draining { .. } if self.table.clients() == 0 => self.transition(Phase::Stopped),
            Phase::Draining { until } if now >= until => {
                warn!(
                    "shutdown grace over: closing {} still open",
                    counted(self.table.clients(), "connection", "connections")
                );
                self.transition(Phase::Stopped);
            }
            // Clients are still finishing, within the grace.
            Phase::Draining { .. } => return,
            // A second request stopped the loop: close what is left.
            Phase::Stopped => {}
        }
        for token in self.table.tokens() {
            if let Some((endpoint, notes)) = self.table.get_mut_active(token) {
                endpoint.on_stop(&mut self.shared.context(now, token, notes));
            }
            let registry = self.poll.registry();
            (self.table).close(registry, token, CloseReason::Shutdown, &self.shared.stats);
        }
    }

    /// RUNNING → DRAINING: every endpoint hears of the shutdown and settles accordingly.
    fn start_draining(&mut self, now: Instant) {
        let grace = self.config.shutdown_grace;
        info!(
            "shutting down: no new connections; {} open, {grace:?} to finish",
            counted(self.table.clients(), "connection", "connections")
        );
        self.transition(Phase::Draining { until: now + grace });
        for token in self.table.tokens() {
            // A connection may go on echoing here, and spend its budget like any handler.
            self.call(token, now, Endpoint::on_shutdown);
        }
    }

    /// The one place the phase changes.
    fn transition(&mut self, next: Phase) {
        trace!("loop {} -> {next}", self.phase);
        self.phase = next;
    }
}
