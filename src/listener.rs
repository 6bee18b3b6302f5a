//! A TCP listener for one service: accepting until `WouldBlock`, refusing past `--max-conns`, and
//! backing off when the process runs out of file descriptors.
//!
//! Running out of descriptors (`EMFILE`) is the classic way to spin a readiness loop at 100% CPU:
//! the pending connection stays in the kernel's queue, so the listener stays readable, `accept`
//! fails again, and again. Instead the listener disarms itself (it deregisters, wanting no events)
//! for [`ACCEPT_BACKOFF`], logs one warning for the whole burst, and retries when the deadline
//! passes. It never sleeps: the rest of the loop keeps serving, and may free the descriptors.
//!
//! A listener knows nothing of the service its clients get: it accepts sockets and hands them to
//! the loop, which asks the service layer ([`crate::service::Service`]) to build the connection.
//! Nor does it need a real socket: it runs on anything that can [`Accept`], so the unit tests in
//! `listener/tests.rs` drive every state with a scripted fake, `EMFILE` included.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::Interest;
use mio::net::TcpListener;

use crate::stats::{Metric, Stats};
use crate::sys::counted::{self, Call, TcpStream};
use crate::sys::{interrupted, network_hiccup, out_of_resources, peer_gone, would_block};

/// How long a listener stays disarmed after `accept` ran out of resources: short enough that
/// clients barely notice once descriptors free up, long enough to cost nothing while they don't.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where a listener is in handling accept failures and the connection limit.
///
/// ```text
///   ACCEPTING ⇄ FULL                         at --max-conns, and below it again
///   ACCEPTING/FULL → BACKING-OFF → RETRYING   accept ran out of resources; the back-off ended
///   RETRYING → ACCEPTING                      a connection was accepted again
///   RETRYING → BACKING-OFF                    still failing: back off again, quietly
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepting normally.
    Accepting,
    /// At `--max-conns`: accepted connections are closed at once (warned once on entry).
    Full,
    /// `accept` ran out of resources: disarmed until the instant given.
    BackingOff {
        /// When to try again.
        until: Instant,
    },
    /// The back-off ended; the next failure backs off again without a new warning, the next
    /// success ends the burst.
    Retrying,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Accepting => "ACCEPTING",
            State::Full => "FULL",
            State::BackingOff { .. } => "BACKING-OFF",
            State::Retrying => "RETRYING",
        })
    }
}

/// A socket a [`Listener`] can accept from: a TCP listener in the server, a scripted fake in the
/// state-machine tests. The listener is generic over it rather than holding a `dyn Accept`, so the
/// server's listener compiles to direct calls on mio's `TcpListener`.
pub trait Accept {
    /// What an accepted connection is.
    type Stream;

    /// Takes the next queued connection.
    ///
    /// # Errors
    /// As `accept(2)`: `WouldBlock` when the queue is empty, and the kernel's reasons otherwise.
    fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)>;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        counted::count(Call::Accept4);
        // The inherent method: mio's own accept, which sets the new socket non-blocking.
        let (stream, peer) = TcpListener::accept(self)?;
        Ok((TcpStream::new(stream), peer))
    }
}

/// A listening socket.
#[derive(Debug)]
pub struct Listener<L = TcpListener> {
    socket: L,
    /// The service's name, for log lines.
    name: &'static str,
    state: State,
}

impl Listener<TcpListener> {
    /// The socket, for registration.
    pub fn source(&mut self) -> &mut TcpListener {
        &mut self.socket
    }
}

impl<L: Accept> Listener<L> {
    /// Wraps a bound, non-blocking listening socket for the service called `name`.
    pub fn new(socket: L, name: &'static str) -> Self {
        Listener {
            socket,
            name,
            state: State::Accepting,
        }
    }

    /// Where the listener is in its accept cycle.
    pub fn state(&self) -> State {
        self.state
    }

    /// Readable while accepting; nothing at all while backing off.
    pub fn interest(&self) -> Option<Interest> {
        match self.state {
            State::Accepting | State::Full | State::Retrying => Some(Interest::READABLE),
            State::BackingOff { .. } => None,
        }
    }

    /// The end of the back-off, while backing off.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::BackingOff { until } => Some(until),
            State::Accepting | State::Full | State::Retrying => None,
        }
    }

    /// Accepts the next queued connection.
    ///
    /// Returns `None` when the queue is drained (`WouldBlock`) or the listener has just started to
    /// back off; the caller calls again until then, as edge-triggered readiness requires.
    pub fn accept(&mut self, now: Instant, stats: &Stats) -> Option<(L::Stream, SocketAddr)> {
        loop {
            if let State::BackingOff { .. } = self.state {
                return None;
            }
            match self.socket.accept() {
                Ok(accepted) => return Some(accepted),
                Err(e) if would_block(&e) => return None,
                Err(e) if interrupted(&e) => continue,
                // The client gave up while queued: its problem, not the listener's.
                Err(e) if peer_gone(&e) => debug!("{} accept: {e}", self.name),
                // A network error of that one connection: the rest of the queue may be fine.
                Err(e) if network_hiccup(&e) => debug!("{} accept: {e}", self.name),
                Err(e) => {
                    self.back_off(&e, now, stats);
                    return None;
                }
            }
        }
    }

    /// A connection was accepted and kept.
    pub fn on_admitted(&mut self) {
        match self.state {
            State::Accepting => {}
            State::Full => {
                info!("{}: below --max-conns again, accepting", self.name);
                self.transition(State::Accepting);
            }
            State::Retrying => {
                info!(
                    "{}: accepting again after running out of resources",
                    self.name
                );
                self.transition(State::Accepting);
            }
            State::BackingOff { .. } => unreachable!("accept returns nothing while backing off"),
        }
    }

    /// A connection was accepted past `--max-conns` and is being closed at once.
    pub fn on_refused(&mut self, limit: usize) {
        match self.state {
            State::Accepting | State::Retrying => {
                warn!(
                    "{}: {limit} connections open, the limit: refusing new connections until some end",
                    self.name
                );
                self.transition(State::Full);
            }
            State::Full => {}
            State::BackingOff { .. } => unreachable!("accept returns nothing while backing off"),
        }
    }

    /// The back-off is over: arm again, and let the loop accept at once.
    pub fn on_timeout(&mut self) {
        match self.state {
            State::BackingOff { .. } => self.transition(State::Retrying),
            // Only a back-off sets a deadline; a stale one finds nothing to do.
            State::Accepting | State::Full | State::Retrying => {}
        }
    }

    fn back_off(&mut self, err: &io::Error, now: Instant, stats: &Stats) {
        stats.add(Metric::AcceptBackoffs, 1);
        let resources = if out_of_resources(err) {
            "out of resources"
        } else {
            "unexpected error"
        };
        match self.state {
            State::Accepting | State::Full => warn!(
                "{}: accept failed ({resources}: {err}); pausing accepts, retrying every {} ms",
                self.name,
                ACCEPT_BACKOFF.as_millis()
            ),
            State::Retrying | State::BackingOff { .. } => {
                debug!("{}: accept still failing: {err}", self.name)
            }
        }
        self.transition(State::BackingOff {
            until: now + ACCEPT_BACKOFF,
        });
    }

    /// The one place the state changes.
    fn transition(&mut self, next: State) {
        trace!("{} listener {} -> {next}", self.name, self.state);
        self.state = next;
    }
}

#[cfg(test)]
mod tests;
