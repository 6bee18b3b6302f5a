//! The `connect` scenario: connection churn. Each client connects, makes one echo round trip,
//! closes, and starts over; an operation is one whole connection, timed from `connect` to the
//! last echoed byte.
//!
//! ```text
//!   IDLE → CONNECTING → EXCHANGING ─┐        one connection per cycle
//!     ↑         ↓            ↓      │
//!     │     BACKING-OFF ←────┘      │        an error: count it, wait, connect again
//!     └─────────────────────────────┘        done: close, connect again (FINISHED when stopped)
//! ```
//!
//! It measures what the echo scenario hides: accepting, registering and closing, the server's
//! per-connection work. The client closes first, so its side keeps the `TIME_WAIT` sockets;
//! against a remote server at a high rate that exhausts local ports, counted as "local limit"
//! (on loopback Linux reuses them).

use std::fmt;
use std::io;
use std::time::Instant;

use mio::event::Event;
use mio::net::TcpStream;

use super::driver::{Client, Ctx, OPERATION_TIMEOUT};
use super::echo::{message_matches, write_message};
use super::report::{CLOSED, MISMATCH, TIMEOUT};
use super::tcp::{self, Failure, Machine};

/// Bytes of the one message each connection echoes: small, so connection handling dominates.
pub const MESSAGE_BYTES: usize = 32;

/// Where a churning client is.
#[derive(Debug)]
pub(crate) enum State {
    /// Between two connections (or not started).
    Idle,
    /// Waiting for the connect to finish.
    Connecting {
        stream: TcpStream,
        /// When this connection's cycle started: the operation's start.
        since: Instant,
    },
    /// Connected: the message goes out and its echo comes back.
    Exchanging {
        stream: TcpStream,
        since: Instant,
        /// Message bytes written so far.
        written: usize,
        /// Echoed bytes checked so far.
        received: usize,
    },
    /// After an error: connect again at `until`.
    BackingOff { until: Instant },
    /// Done for this run.
    Finished,
}

impl Machine for State {
    const SERVICE: &'static str = "connect";

    fn name(&self) -> &'static str {
        match self {
            State::Idle => "IDLE",
            State::Connecting { .. } => "CONNECTING",
            State::Exchanging { .. } => "EXCHANGING",
            State::BackingOff { .. } => "BACKING-OFF",
            State::Finished => "FINISHED",
        }
    }

    fn into_socket(self) -> Option<TcpStream> {
        match self {
            State::Connecting { stream, .. } | State::Exchanging { stream, .. } => Some(stream),
            State::Idle | State::BackingOff { .. } | State::Finished => None,
        }
    }

    fn is_connecting(&self) -> bool {
        matches!(self, State::Connecting { .. })
    }

    fn backing_off(until: Instant) -> State {
        State::BackingOff { until }
    }

    fn finished() -> State {
        State::Finished
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One churning client.
#[derive(Debug)]
pub(crate) struct Connection {
    id: u64,
    /// How many connections this client has made: the message number of the payload.
    cycles: u64,
    state: State,
}

impl Connection {
    pub fn new(id: u64) -> Connection {
        Connection {
            id,
            cycles: 0,
            state: State::Idle,
        }
    }

    /// IDLE/BACKING-OFF → CONNECTING (a new cycle takes a ticket), or FINISHED.
    fn start_connecting(&mut self, ctx: &mut Ctx<'_>) {
        if !ctx.take_ticket() {
            return self.state.finish(ctx);
        }
        match tcp::connect(ctx) {
            Ok(stream) => {
                let since = ctx.now;
                self.state
                    .transition(ctx, |_| State::Connecting { stream, since });
            }
            Err(err) => {
                ctx.connect_failed(err);
                self.state.back_off(ctx);
            }
        }
    }

    /// CONNECTING → EXCHANGING, sending the message at once.
    fn start_exchange(&mut self, ctx: &mut Ctx<'_>) {
        ctx.reached();
        let since = match self.state {
            State::Connecting { since, .. } => since,
            _ => ctx.now,
        };
        self.state.transition(ctx, |socket| match socket.take() {
            Some(stream) => State::Exchanging {
                stream,
                since,
                written: 0,
                received: 0,
            },
            None => State::Finished, // only called from CONNECTING, which has a socket
        });
        self.exchange(ctx);
    }

    /// EXCHANGING: write what is left of the message, check what came back; a complete echo
    /// ends the cycle.
    fn exchange(&mut self, ctx: &mut Ctx<'_>) {
        let (id, seq) = (self.id, self.cycles);
        let State::Exchanging {
            stream,
            since,
            written,
            received,
        } = &mut self.state
        else {
            return;
        };
        let result = (|| -> Result<bool, Failure> {
            if *written < MESSAGE_BYTES {
                let mut message = Vec::with_capacity(MESSAGE_BYTES);
                write_message(id, seq, MESSAGE_BYTES, &mut message);
                *written += tcp::write(stream, &message[*written..])?;
                // The socket was registered for both directions while connecting, so a
                // message the socket did not take in full is resumed on the next writable.
            }
            while let Some(n) = tcp::read(stream, ctx.scratch)? {
                let data = &ctx.scratch[..n];
                if n == 0 {
                    return Err(Failure::Protocol(CLOSED));
                }
                if *received + n > MESSAGE_BYTES
                    || !message_matches(id, seq, MESSAGE_BYTES, *received, data)
                {
                    return Err(Failure::Protocol(MISMATCH));
                }
                *received += n;
            }
            Ok(*received == MESSAGE_BYTES)
        })();
        match result {
            Ok(true) => {
                let since = *since;
                ctx.complete(since, MESSAGE_BYTES as u64);
                self.cycles += 1;
                self.state.transition(ctx, |_| State::Idle);
                self.start_connecting(ctx);
            }
            Ok(false) => {}
            Err(failure) => self.state.fail(failure, ctx),
        }
    }
}

impl Client for Connection {
    fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.start_connecting(ctx);
    }

    fn on_event(&mut self, _event: &Event, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Connecting { stream, .. } => match tcp::connect_finished(stream) {
                Ok(true) => self.start_exchange(ctx),
                // Spurious, or left over from this token's previous socket.
                Ok(false) => {}
                Err(err) => self.state.fail(Failure::Io(err), ctx),
            },
            State::Exchanging { .. } => self.exchange(ctx),
            // No socket: an event left over from a socket closed earlier in this batch.
            State::Idle | State::BackingOff { .. } | State::Finished => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Connecting { since, .. } if ctx.now >= *since + OPERATION_TIMEOUT => {
                let err = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {OPERATION_TIMEOUT:?}"),
                );
                self.state.fail(Failure::Io(err), ctx);
            }
            State::Exchanging { since, .. } if ctx.now >= *since + OPERATION_TIMEOUT => {
                self.state.fail(Failure::Protocol(TIMEOUT), ctx)
            }
            State::BackingOff { until } if ctx.now >= *until => self.start_connecting(ctx),
            // Not due yet, or nothing to time.
            State::Idle
            | State::Connecting { .. }
            | State::Exchanging { .. }
            | State::BackingOff { .. }
            | State::Finished => {}
        }
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            State::Finished => {}
            // A connection in progress is abandoned: it belongs to no measured interval.
            State::Idle
            | State::Connecting { .. }
            | State::Exchanging { .. }
            | State::BackingOff { .. } => self.state.finish(ctx),
        }
    }

    fn close(&mut self, ctx: &mut Ctx<'_>) {
        if !self.is_finished() {
            self.state.finish(ctx);
        }
    }

    fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use super::*;
    use crate::bench::driver::harness::{Harness, serve_one};
    use crate::bench::report::Tally;

    /// Echoes one connection until EOF.
    fn echo_server() -> SocketAddr {
        serve_one(|mut stream| {
            let mut buf = [0; 256];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    }

    /// Accepts one connection and says nothing.
    fn silent_server() -> SocketAddr {
        serve_one(|mut stream| {
            let _ = stream.read_to_end(&mut Vec::new());
        })
    }

    fn is(state: &'static str) -> impl Fn(&Connection, &Tally) -> bool {
        move |c, _| c.state.name() == state
    }

    fn started(h: &mut Harness) -> Connection {
        let mut client = Connection::new(3);
        client.start(&mut h.ctx(Instant::now()));
        client
    }

    // ---- IDLE → CONNECTING → EXCHANGING → IDLE ----

    #[test]
    fn a_cycle_is_one_timed_connection_and_the_next_starts_at_once() {
        let mut h = Harness::new(echo_server(), None);
        let mut client = started(&mut h);
        assert_eq!(client.state.name(), "CONNECTING");
        h.run_until(&mut client, "one connection", |_, t| t.operations == 1);
        assert_eq!(h.tally.bytes, MESSAGE_BYTES as u64);
        assert_eq!(h.tally.latency.len(), 1);
        assert_eq!(client.cycles, 1);
        // The next cycle began (the fake server took only one connection, so it may already
        // have been refused and be backing off).
        assert!(matches!(client.state.name(), "CONNECTING" | "BACKING-OFF"));
    }

    #[test]
    fn the_last_ticket_ends_in_finished() {
        let mut h = Harness::new(echo_server(), Some(1));
        let mut client = started(&mut h);
        h.run_until(&mut client, "FINISHED", is("FINISHED"));
        assert_eq!(h.tally.operations, 1);
    }

    // ---- timeouts ----

    #[test]
    fn connecting_and_exchanging_time_out() {
        let mut h = Harness::new(silent_server(), None);
        let mut client = started(&mut h);
        h.run_until(&mut client, "EXCHANGING", is("EXCHANGING"));
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));

        let mut h = Harness::new(silent_server(), None);
        let mut client = started(&mut h);
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
    }

    // ---- stopping ----

    #[test]
    fn stop_finishes_every_state() {
        let mut h = Harness::new(silent_server(), None);
        let mut exchanging = started(&mut h);
        h.run_until(&mut exchanging, "EXCHANGING", is("EXCHANGING"));
        let mut connecting = started(&mut h);
        let mut backing_off = started(&mut h);
        backing_off.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        let mut idle = Connection::new(0);
        for client in [
            &mut exchanging,
            &mut connecting,
            &mut backing_off,
            &mut idle,
        ] {
            client.on_stop(&mut h.ctx(Instant::now()));
            assert!(client.is_finished());
        }
    }
}
