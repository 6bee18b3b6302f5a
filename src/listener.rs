//! A TCP listener for one service: accepting until `WouldBlock`, refusing past `--max-conns`, and
//! backing off when the process runs out of file descriptors.
//!
//! Running out of descriptors (`EMFILE`) is the classic way to spin a readiness loop at 100% CPU:
//! the pending connection stays in the kernel's queue, so the listener stays readable, `accept`
//! fails again, and again. Instead the listener disarms itself (it deregisters, wanting no events)
//! for [`ACCEPT_BACKOFF`], logs one warning for the whole burst, and retries when the deadline
//! passes. It never sleeps: the rest of the loop keeps serving, and may free the descriptors.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::Interest;
use mio::net::{TcpListener, TcpStream};

use crate::service::Context;
use crate::service::download::files::Files;
use crate::stats::Metric;
use crate::sys::{interrupted, out_of_resources, peer_gone, would_block};

/// How long a listener stays disarmed after `accept` ran out of resources: short enough that
/// clients barely notice once descriptors free up, long enough to cost nothing while they don't.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The TCP services a listener can hand its connections to, with what they share.
#[derive(Debug, Clone)]
pub enum Service {
    /// TCP echo (RFC 862).
    Echo,
    /// TCP file download from the served root.
    Download(Arc<Files>),
}

impl Service {
    /// The service's name in log lines and on the start-up line.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Download(_) => "files",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a listener is in handling accept failures and the connection limit.
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

/// A listening socket and the service its clients get.
#[derive(Debug)]
pub struct Listener {
    socket: TcpListener,
    service: Service,
    state: State,
}

impl Listener {
    /// Wraps a bound, non-blocking listening socket.
    pub fn new(socket: TcpListener, service: Service) -> Self {
        Listener {
            socket,
            service,
            state: State::Accepting,
        }
    }

    /// The service accepted clients get.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Where the listener is in its accept cycle.
    pub fn state(&self) -> State {
        self.state
    }

    /// The socket, for registration.
    pub fn source(&mut self) -> &mut TcpListener {
        &mut self.socket
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
    pub fn accept(&mut self, ctx: &mut Context<'_>) -> Option<(TcpStream, SocketAddr)> {
        loop {
            if let State::BackingOff { .. } = self.state {
                return None;
            }
            match self.socket.accept() {
                Ok(accepted) => return Some(accepted),
                Err(e) if would_block(&e) => return None,
                Err(e) if interrupted(&e) => continue,
                // The client gave up while queued: its problem, not the listener's.
                Err(e) if peer_gone(&e) => debug!("{} accept: {e}", self.service),
                Err(e) => {
                    self.back_off(&e, ctx);
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
                info!("{}: below --max-conns again, accepting", self.service);
                self.state = State::Accepting;
            }
            State::Retrying => {
                info!(
                    "{}: accepting again after running out of resources",
                    self.service
                );
                self.state = State::Accepting;
            }
            State::BackingOff { .. } => unreachable!("accept returns nothing while backing off"),
        }
    }

    /// A connection was accepted past `--max-conns` and is being closed at once.
    pub fn on_refused(&mut self, ctx: &mut Context<'_>) {
        if self.state != State::Full {
            warn!(
                "{}: {} connections open (--max-conns): closing new connections until some end",
                self.service, ctx.config.max_conns
            );
            self.state = State::Full;
        }
    }

    /// The back-off is over: arm again, and let the loop accept at once.
    pub fn on_timeout(&mut self, _ctx: &mut Context<'_>) {
        if let State::BackingOff { .. } = self.state {
            self.state = State::Retrying;
        }
    }

    fn back_off(&mut self, err: &io::Error, ctx: &mut Context<'_>) {
        ctx.stats.add(Metric::AcceptBackoffs, 1);
        let resources = if out_of_resources(err) {
            "out of resources"
        } else {
            "unexpected error"
        };
        match self.state {
            State::Accepting | State::Full => warn!(
                "{}: accept failed ({resources}: {err}); pausing accepts, retrying every {} ms",
                self.service,
                ACCEPT_BACKOFF.as_millis()
            ),
            State::Retrying | State::BackingOff { .. } => {
                debug!("{}: accept still failing: {err}", self.service)
            }
        }
        self.state = State::BackingOff {
            until: ctx.now + ACCEPT_BACKOFF,
        };
    }
}
