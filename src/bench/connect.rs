//! The `connect` scenario: connection churn. Each client connects, makes one echo round trip,
//! closes, and starts over (in an open loop: when its next connection is due); an operation is
//! one whole connection, timed from `connect` (or from when it was due) to the last echoed byte.
//!
//! ```text
//!   IDLE → CONNECTING → EXCHANGING ─┐        one connection per cycle
//!    │↑         ↓            ↓      │
//!    ↓│     BACKING-OFF ←────┘      │        an error: count it, wait, connect again
//!  SCHEDULED ←──────────────────────┘        done: close, connect again (FINISHED when stopped;
//!                                            open loop: SCHEDULED until the next is due)
//! ```
//!
//! The states around EXCHANGING are every TCP client's and live in `tcp.rs`; this file holds
//! `Churn` and its one connected state, `Exchange`.
//!
//! It measures what the echo scenario hides: accepting, registering and closing, the server's
//! per-connection work. The client closes first, so its side keeps the `TIME_WAIT` sockets;
//! against a remote server at a high rate that exhausts local ports, counted as "local limit"
//! (on loopback Linux reuses them).

use std::time::Instant;

use mio::net::TcpStream;

use super::driver::{Ctx, OPERATION_TIMEOUT};
use super::echo::{message_matches, write_message};
use super::pace::Pace;
use super::report::{CLOSED, MISMATCH};
use super::tcp::{self, Failure, Go, Outcome, Protocol, Session};

/// Bytes of the one message each connection echoes: small, so connection handling dominates.
pub const MESSAGE_BYTES: usize = 32;

/// What makes a TCP client a churning one: its payload's owner, how many connections it has
/// made, and when it makes the next.
#[derive(Debug)]
pub(crate) struct Churn {
    id: u64,
    /// How many connections this client has made: the message number of the payload.
    cycles: u64,
    /// One connection at a time, at once (closed loop) or when due (open loop).
    pace: Pace,
    /// When the connection being made counts from: its connect, or when it was due.
    started: Instant,
}

impl Churn {
    pub fn new(id: u64, pace: Pace) -> Churn {
        Churn {
            id,
            cycles: 0,
            pace,
            started: Instant::now(),
        }
    }
}

impl Protocol for Churn {
    const SERVICE: &'static str = "connect";

    type Session = Exchange;

    /// A connection is the operation: each takes a ticket, and its place in the timetable.
    fn may_connect(&mut self, ctx: &mut Ctx<'_>) -> Go {
        match tcp::next_operation(&mut self.pace, ctx) {
            Ok(started) => {
                self.started = started;
                Go::Now
            }
            Err(wait) => wait,
        }
    }

    /// CONNECTING → EXCHANGING; the message goes out at once.
    fn open(&mut self, since: Instant, _ctx: &Ctx<'_>) -> Exchange {
        Exchange {
            started: self.started,
            since,
            written: 0,
            received: 0,
        }
    }

    /// EXCHANGING: write what is left of the message, check what came back; a complete echo
    /// is the operation, and the connection's end.
    fn advance(
        &mut self,
        stream: &mut TcpStream,
        exchange: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Exchange>, Failure> {
        let (id, seq) = (self.id, self.cycles);
        if exchange.written < MESSAGE_BYTES {
            let mut message = Vec::with_capacity(MESSAGE_BYTES);
            write_message(id, seq, MESSAGE_BYTES, &mut message);
            exchange.written += tcp::write(stream, &message[exchange.written..])?;
            // The socket was registered for both directions while connecting, so a message
            // the socket did not take in full is resumed on the next writable.
        }
        while let Some(n) = tcp::read(stream, ctx.scratch)? {
            let data = &ctx.scratch[..n];
            if n == 0 {
                return Err(Failure::Protocol(CLOSED));
            }
            if exchange.received + n > MESSAGE_BYTES
                || !message_matches(id, seq, MESSAGE_BYTES, exchange.received, data)
            {
                return Err(Failure::Protocol(MISMATCH));
            }
            exchange.received += n;
        }
        if exchange.received < MESSAGE_BYTES {
            return Ok(Outcome::Wait);
        }
        ctx.complete(exchange.started, MESSAGE_BYTES as u64);
        self.cycles += 1;
        Ok(Outcome::Done)
    }

    fn stopped(&mut self, ctx: &mut Ctx<'_>) {
        self.pace.stopped(ctx);
    }
}

/// EXCHANGING, the churning client's one connected state: the message goes out and its echo
/// comes back.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// When the operation counts from: the connect, or in an open loop when it was due.
    started: Instant,
    /// When this connection's connect started: the timeout counts from it.
    since: Instant,
    /// Message bytes written so far.
    written: usize,
    /// Echoed bytes checked so far.
    received: usize,
}

impl Session for Exchange {
    fn name(&self) -> &'static str {
        "EXCHANGING"
    }

    /// The whole connection, connect included, times out.
    fn deadline(&self) -> Option<Instant> {
        Some(self.since + OPERATION_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::bench::driver::Client;
    use crate::bench::driver::harness::{Harness, serve_one};
    use crate::bench::pace::Mode;
    use crate::bench::report::{TIMEOUT, Tally};
    use crate::bench::tcp::Connection;

    // IDLE, CONNECTING, BACKING-OFF and FINISHED, and stopping from every state, are the shared
    // states of `tcp.rs`, tested there. Here: that a connection takes a ticket, and EXCHANGING
    // with each of its inputs (an event, a tick).

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

    fn is(state: &'static str) -> impl Fn(&Connection<Churn>, &Tally) -> bool {
        move |c, _| c.state().name() == state
    }

    fn started(h: &mut Harness) -> Connection<Churn> {
        let mut client = Connection::new(Churn::new(3, Pace::single(Mode::Closed, 0, 1)));
        client.start(&mut h.ctx(Instant::now()));
        client
    }

    // ---- IDLE → CONNECTING → EXCHANGING → IDLE ----

    #[test]
    fn a_cycle_is_one_timed_connection_and_the_next_starts_at_once() {
        let mut h = Harness::new(echo_server(), None);
        let mut client = started(&mut h);
        assert_eq!(client.state().name(), "CONNECTING");
        h.run_until(&mut client, "one connection", |_, t| t.operations == 1);
        assert_eq!(h.tally.bytes, MESSAGE_BYTES as u64);
        assert_eq!(h.tally.latency.len(), 1);
        assert_eq!(client.protocol().cycles, 1);
        // The next cycle began (the fake server took only one connection, so it may already
        // have been refused and be backing off).
        assert!(matches!(
            client.state().name(),
            "CONNECTING" | "BACKING-OFF"
        ));
    }

    #[test]
    fn each_connection_takes_a_ticket_and_the_last_ends_in_finished() {
        let mut h = Harness::new(echo_server(), Some(1));
        let mut client = started(&mut h);
        assert!(
            h.shared.tickets.exhausted(),
            "the connection took the ticket"
        );
        h.run_until(&mut client, "FINISHED", is("FINISHED"));
        assert_eq!(h.tally.operations, 1);
    }

    #[test]
    fn in_an_open_loop_the_next_connection_waits_for_its_due_instant() {
        let mut h = Harness::new(echo_server(), None);
        // One a second: the first is due when the timetable starts, the next a second later.
        let mode = Mode::Open {
            rate: 1.0,
            max_inflight: 1,
        };
        let mut client = Connection::new(Churn::new(3, Pace::single(mode, 0, 1)));
        let start = Instant::now();
        h.call(&mut client, start, Connection::start);
        h.run_until(&mut client, "SCHEDULED", is("SCHEDULED"));
        assert_eq!(h.tally.operations, 1);
        assert_eq!(h.wake, Some(start + Duration::from_secs(1)));
    }

    // ---- EXCHANGING ----

    #[test]
    fn exchanging_counts_changed_bytes_as_a_mismatch() {
        let addr = serve_one(|mut stream| {
            let mut buf = [0; MESSAGE_BYTES];
            if stream.read_exact(&mut buf).is_ok() {
                let _ = stream.write_all(&[b'X'; MESSAGE_BYTES]);
                let _ = stream.read_to_end(&mut Vec::new());
            }
        });
        let mut h = Harness::new(addr, None);
        let mut client = started(&mut h);
        h.run_until(&mut client, "BACKING-OFF", is("BACKING-OFF"));
        assert_eq!(
            h.tally.errors.get(MISMATCH),
            Some(&1),
            "{:?}",
            h.tally.errors
        );
    }

    #[test]
    fn exchanging_times_out_a_whole_operation_after_the_connect_began() {
        let mut h = Harness::new(silent_server(), None);
        let mut client = started(&mut h);
        let began = Instant::now();
        h.run_until(&mut client, "EXCHANGING", is("EXCHANGING"));
        client.on_tick(&mut h.ctx(began + OPERATION_TIMEOUT / 2));
        assert_eq!(client.state().name(), "EXCHANGING", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state().name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
    }
}
