//! The `echo` scenario: each client keeps `--pipeline` messages of `--size` bytes in flight on one
//! connection, checks every echoed byte, and times each message from queueing to its last byte.
//!
//! ```text
//!   IDLE → CONNECTING → EXCHANGING → FINISHED        load stopped, or --requests spent
//!               ↓            ↓
//!           BACKING-OFF ←────┘                       an error: count it, wait, connect again
//! ```
//!
//! The states around EXCHANGING are every TCP client's and live in `tcp.rs`; this file holds what
//! is the echo client's own: `Pipeline` and its one connected state, `Exchange`.
//!
//! Messages are lowercase letters from a shift that depends on the connection and the message
//! number, ending in `\n`: readable in a packet capture, and a byte delivered to the wrong
//! connection or out of order shows up as a "mismatch". The payload is computed, never stored,
//! so checking costs no memory whatever the size.

use std::collections::VecDeque;
use std::time::Instant;

use mio::net::TcpStream;

use super::driver::{Ctx, OPERATION_TIMEOUT};
use super::report::{CLOSED, MISMATCH, PROTOCOL};
use super::tcp::{self, Failure, Outcome, Protocol, Session};

/// The alphabet twice, so that any run of up to 26 letters from any shift is one slice.
const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";

/// What makes a TCP client an echo client: whose messages it sends, how big, and how many at
/// once.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// Which client this is in the run: part of every payload.
    id: u64,
    size: usize,
    /// Messages kept in flight (`--pipeline`).
    depth: usize,
}

impl Pipeline {
    pub fn new(id: u64, size: usize, depth: usize) -> Pipeline {
        Pipeline { id, size, depth }
    }
}

impl Protocol for Pipeline {
    const SERVICE: &'static str = "echo";

    type Session = Exchange;

    /// A message is the operation, not a connection, so connecting takes no ticket; it is
    /// pointless once the load stopped or every ticket is taken.
    fn may_connect(&self, ctx: &Ctx<'_>) -> bool {
        !ctx.stopping && !ctx.shared.tickets.exhausted()
    }

    /// CONNECTING → EXCHANGING, with nothing queued yet: the first messages go out at once.
    fn open(&mut self, _since: Instant, _ctx: &Ctx<'_>) -> Exchange {
        Exchange {
            in_flight: VecDeque::new(),
            output: Vec::new(),
            written: 0,
            next_seq: 0,
            echo_seq: 0,
            echo_pos: 0,
            // Registered for both directions while connecting.
            writable: true,
        }
    }

    /// EXCHANGING: read echoes, queue more, send; finished when nothing is left in flight.
    fn advance(
        &mut self,
        stream: &mut TcpStream,
        exchange: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Exchange>, Failure> {
        exchange.receive(stream, self.id, self.size, ctx)?;
        exchange.queue(self.id, self.size, self.depth, ctx);
        exchange.send(stream, ctx)?;
        Ok(if exchange.in_flight.is_empty() {
            // Queueing got no ticket and every echo is in.
            Outcome::Finished
        } else {
            Outcome::Wait
        })
    }
}

/// EXCHANGING, the echo client's one connected state: the messages in flight and the output
/// not yet sent.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// When each message whose echo is not complete was queued, oldest first; never longer than
    /// the pipeline.
    in_flight: VecDeque<Instant>,
    /// Queued bytes the socket has not taken yet, from `written` on.
    output: Vec<u8>,
    written: usize,
    /// Number of the next message to queue.
    next_seq: u64,
    /// Number of the message being echoed now (the oldest in flight) and how much of it came back.
    echo_seq: u64,
    echo_pos: usize,
    /// Whether writable interest is registered: changed only when output starts or stops waiting.
    writable: bool,
}

impl Session for Exchange {
    fn name(&self) -> &'static str {
        "EXCHANGING"
    }

    /// The oldest message in flight times out.
    fn deadline(&self) -> Option<Instant> {
        self.in_flight
            .front()
            .map(|queued| *queued + OPERATION_TIMEOUT)
    }
}

impl Exchange {
    /// Reads until `WouldBlock`, checking each byte and completing each message whose last byte
    /// arrived.
    fn receive(
        &mut self,
        stream: &mut TcpStream,
        id: u64,
        size: usize,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Failure> {
        loop {
            let n = match tcp::read(stream, ctx.scratch)? {
                None => return Ok(()),
                // The server closed while echoes were owed (or before any message).
                Some(0) => return Err(Failure::Protocol(CLOSED)),
                Some(n) => n,
            };
            let mut data = &ctx.scratch[..n];
            while !data.is_empty() {
                let Some(&queued) = self.in_flight.front() else {
                    return Err(Failure::Protocol(PROTOCOL)); // bytes that were never sent
                };
                let take = data.len().min(size - self.echo_pos);
                if !message_matches(id, self.echo_seq, size, self.echo_pos, &data[..take]) {
                    return Err(Failure::Protocol(MISMATCH));
                }
                data = &data[take..];
                self.echo_pos += take;
                if self.echo_pos == size {
                    self.in_flight.pop_front();
                    self.echo_seq += 1;
                    self.echo_pos = 0;
                    ctx.tally.complete(
                        ctx.now.saturating_duration_since(queued),
                        size as u64,
                        ctx.now,
                    );
                }
            }
        }
    }

    /// Queues messages until `depth` are in flight or no ticket is left.
    fn queue(&mut self, id: u64, size: usize, depth: usize, ctx: &mut Ctx<'_>) {
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        while self.in_flight.len() < depth && ctx.take_ticket() {
            write_message(id, self.next_seq, size, &mut self.output);
            self.next_seq += 1;
            self.in_flight.push_back(ctx.now);
        }
    }

    /// Writes queued output until done or `WouldBlock`; writable interest follows what is left.
    fn send(&mut self, stream: &mut TcpStream, ctx: &mut Ctx<'_>) -> Result<(), Failure> {
        self.written += tcp::write(stream, &self.output[self.written..])?;
        let waiting = self.written < self.output.len();
        if waiting != self.writable {
            tcp::set_writable(stream, ctx, waiting)?;
            self.writable = waiting;
        }
        Ok(())
    }
}

/// Where the letters of message `seq` of client `id` start in the alphabet.
fn shift(id: u64, seq: u64) -> usize {
    (id.wrapping_mul(7).wrapping_add(seq.wrapping_mul(3)) % 26) as usize
}

/// Letters in a message of `size` bytes: all but the final `\n` (a 1-byte message is one letter).
fn letters(size: usize) -> usize {
    if size > 1 { size - 1 } else { 1 }
}

/// Appends message `seq` of client `id`, `size` bytes, to `out`.
pub(crate) fn write_message(id: u64, seq: u64, size: usize, out: &mut Vec<u8>) {
    let shift = shift(id, seq);
    let mut pos = 0;
    while pos < letters(size) {
        let offset = (shift + pos) % 26;
        let take = (letters(size) - pos).min(26);
        out.extend_from_slice(&LETTERS[offset..offset + take]);
        pos += take;
    }
    if size > 1 {
        out.push(b'\n');
    }
}

/// Whether `data` is what message `seq` of client `id` holds from byte `pos` on.
pub(crate) fn message_matches(
    id: u64,
    seq: u64,
    size: usize,
    mut pos: usize,
    mut data: &[u8],
) -> bool {
    let shift = shift(id, seq);
    while !data.is_empty() {
        if pos >= letters(size) {
            // The final newline; nothing may follow it within the message.
            return pos == size - 1 && data == b"\n";
        }
        let offset = (shift + pos) % 26;
        let take = data.len().min(letters(size) - pos).min(26);
        if data[..take] != LETTERS[offset..offset + take] {
            return false;
        }
        data = &data[take..];
        pos += take;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, seq: u64, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(id, seq, size, &mut out);
        out
    }

    #[test]
    fn messages_are_letters_ending_in_a_newline() {
        let m = message(0, 0, 64);
        assert_eq!(m.len(), 64);
        assert!(m[..63].iter().all(u8::is_ascii_lowercase));
        assert_eq!(m[63], b'\n');
        assert_eq!(&m[..3], b"abc");
        assert_eq!(message(0, 0, 1), b"a");
        assert_eq!(message(0, 1, 2), b"d\n");
    }

    #[test]
    fn a_message_matches_itself_in_any_split() {
        for size in [1, 2, 27, 64, 1000] {
            let m = message(5, 9, size);
            for split in 0..=size {
                assert!(
                    message_matches(5, 9, size, 0, &m[..split]),
                    "size {size} split {split}"
                );
                assert!(
                    message_matches(5, 9, size, split, &m[split..]),
                    "size {size} split {split}"
                );
            }
        }
    }

    #[test]
    fn another_connection_or_message_does_not_match() {
        let m = message(1, 0, 64);
        assert!(!message_matches(2, 0, 64, 0, &m));
        assert!(!message_matches(1, 1, 64, 0, &m));
        let mut corrupt = m.clone();
        corrupt[40] ^= 0x20;
        assert!(!message_matches(1, 0, 64, 0, &corrupt));
        assert!(!message_matches(1, 0, 64, 63, b"x"));
    }

    // ---- state machine ----
    //
    // IDLE, CONNECTING, BACKING-OFF and FINISHED, and stopping from every state, are the shared
    // states of `tcp.rs`, tested there. Here: when an echo client may connect, and EXCHANGING
    // with each of its inputs (an event, a tick).

    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use crate::bench::driver::Client;
    use crate::bench::driver::harness::{Harness, serve_one};
    use crate::bench::report::{TIMEOUT, Tally};
    use crate::bench::tcp::{Connection, State};

    /// Echoes everything on one connection until EOF.
    fn echo_server() -> SocketAddr {
        serve_one(|mut stream| {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    }

    /// Accepts one connection and says nothing until the client closes (or a few seconds pass).
    fn silent_server() -> SocketAddr {
        serve_one(|mut stream| {
            let _ = stream.read_to_end(&mut Vec::new());
        })
    }

    fn is(state: &'static str) -> impl Fn(&Connection<Pipeline>, &Tally) -> bool {
        move |c, _| c.state().name() == state
    }

    /// A client in EXCHANGING, with its first messages sent.
    fn exchanging(h: &mut Harness) -> Connection<Pipeline> {
        let mut client = Connection::new(Pipeline::new(1, 8, 2));
        client.start(&mut h.ctx(Instant::now()));
        h.run_until(&mut client, "EXCHANGING", is("EXCHANGING"));
        client
    }

    // ---- connecting ----

    #[test]
    fn connecting_takes_no_ticket_but_needs_one_left() {
        let mut h = Harness::new(silent_server(), Some(1));
        let mut client = Connection::new(Pipeline::new(0, 8, 1));
        client.start(&mut h.ctx(Instant::now()));
        assert_eq!(client.state().name(), "CONNECTING");
        assert!(!h.shared.tickets.exhausted(), "the ticket is the message's");

        let mut h = Harness::new(silent_server(), Some(0));
        let mut client = Connection::new(Pipeline::new(0, 8, 1));
        client.start(&mut h.ctx(Instant::now()));
        assert!(client.is_finished());
    }

    #[test]
    fn once_the_load_stops_an_echo_client_does_not_connect() {
        let mut h = Harness::new(silent_server(), None);
        h.stopping = true;
        let mut client = Connection::new(Pipeline::new(0, 8, 1));
        client.start(&mut h.ctx(Instant::now()));
        assert!(client.is_finished());
    }

    // ---- EXCHANGING ----

    #[test]
    fn exchanging_starts_with_a_full_pipeline() {
        let mut h = Harness::new(silent_server(), None);
        let client = exchanging(&mut h);
        assert!(h.tally.reached);
        let State::Connected {
            session: exchange, ..
        } = client.state()
        else {
            panic!("expected EXCHANGING, got {}", client.state());
        };
        assert_eq!(exchange.in_flight.len(), 2);
        assert_eq!(exchange.output.len(), 16, "two 8-byte messages queued");
    }

    #[test]
    fn exchanging_completes_messages_and_times_each() {
        let mut h = Harness::new(echo_server(), None);
        let mut client = exchanging(&mut h);
        h.run_until(&mut client, "10 round trips", |_, t| t.operations >= 10);
        assert_eq!(h.tally.bytes, h.tally.operations * 8);
        assert_eq!(h.tally.latency.len(), h.tally.operations);
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    #[test]
    fn exchanging_finishes_when_the_requests_are_spent() {
        let mut h = Harness::new(echo_server(), Some(5));
        let mut client = exchanging(&mut h);
        h.run_until(&mut client, "FINISHED", is("FINISHED"));
        assert_eq!(h.tally.operations, 5);
    }

    #[test]
    fn exchanging_times_out_when_no_echo_comes() {
        let mut h = Harness::new(silent_server(), None);
        let mut client = exchanging(&mut h);
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT / 2));
        assert_eq!(client.state().name(), "EXCHANGING", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state().name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
    }

    #[test]
    fn exchanging_counts_an_early_close_as_closed() {
        // Reads both queued messages (so closing sends FIN, not RST), then closes.
        let addr = serve_one(|mut stream| {
            let _ = stream.read_exact(&mut [0; 16]);
        });
        let mut h = Harness::new(addr, None);
        let mut client = exchanging(&mut h);
        h.run_until(&mut client, "BACKING-OFF", is("BACKING-OFF"));
        assert_eq!(h.tally.errors.get(CLOSED), Some(&1), "{:?}", h.tally.errors);
    }

    #[test]
    fn exchanging_counts_changed_bytes_as_a_mismatch() {
        let addr = serve_one(|mut stream| {
            let mut buf = [0; 8];
            if stream.read_exact(&mut buf).is_ok() {
                let _ = stream.write_all(b"XXXXXXXX");
                let _ = stream.read_to_end(&mut Vec::new());
            }
        });
        let mut h = Harness::new(addr, None);
        let mut client = exchanging(&mut h);
        h.run_until(&mut client, "BACKING-OFF", is("BACKING-OFF"));
        assert_eq!(h.tally.errors.get(MISMATCH), Some(&1));
    }

    #[test]
    fn exchanging_counts_bytes_never_sent_as_a_protocol_error() {
        // Takes the first message, echoes it, then sends a second the client never asked for.
        let addr = serve_one(|mut stream| {
            let mut buf = [0; 8];
            if stream.read_exact(&mut buf).is_ok() {
                // One write, so both copies arrive in one read.
                let _ = stream.write_all(&[buf, buf].concat());
                let _ = stream.read_to_end(&mut Vec::new());
            }
        });
        let mut h = Harness::new(addr, Some(1));
        let mut client = Connection::new(Pipeline::new(1, 8, 1));
        client.start(&mut h.ctx(Instant::now()));
        h.run_until(&mut client, "an error", |_, t| !t.errors.is_empty());
        assert_eq!(
            h.tally.errors.get(PROTOCOL),
            Some(&1),
            "{:?}",
            h.tally.errors
        );
    }
}
