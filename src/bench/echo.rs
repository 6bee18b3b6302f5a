//! The `echo` scenario: each client keeps `--pipeline` messages of `--size` bytes in flight on one
//! connection (or, in an open loop, sends one whenever its timetable says, up to
//! `--max-inflight`), checks every echoed byte, and times each message to its last byte from
//! when it was queued (in an open loop: from when it was due).
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
use super::pace::{Pace, Start};
use super::report::{CLOSED, MISMATCH, PROTOCOL};
use super::tcp::{self, Failure, Go, Outcome, Protocol, Session};

/// The alphabet twice, so that any run of up to 26 letters from any shift is one slice.
const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";

/// What makes a TCP client an echo client: whose messages it sends, how big, and when.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// Which client this is in the run: part of every payload.
    id: u64,
    size: usize,
    /// When the next message may go: `--pipeline` kept in flight, or an open loop's timetable.
    /// It outlives each connection, so a timetable keeps running through a reconnect.
    pace: Pace,
}

impl Pipeline {
    pub fn new(id: u64, size: usize, pace: Pace) -> Pipeline {
        Pipeline { id, size, pace }
    }
}

impl Protocol for Pipeline {
    const SERVICE: &'static str = "echo";

    type Session = Exchange;

    /// A message is the operation, not a connection, so connecting takes no ticket; it is
    /// pointless once the load stopped or every ticket is taken.
    fn may_connect(&mut self, ctx: &mut Ctx<'_>) -> Go {
        if ctx.stopping || ctx.shared.tickets.exhausted() {
            Go::Never
        } else {
            Go::Now
        }
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
        self.queue_and_send(stream, exchange, ctx)
    }

    /// EXCHANGING, woken: the next message of the timetable is due. Nothing to read.
    fn on_timer(
        &mut self,
        stream: &mut TcpStream,
        exchange: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Exchange>, Failure> {
        self.queue_and_send(stream, exchange, ctx)
    }

    fn stopped(&mut self, ctx: &mut Ctx<'_>) {
        self.pace.stopped(ctx);
    }
}

impl Pipeline {
    /// Queues what the pace allows and sends; finished when nothing is left in flight and
    /// nothing more may start.
    fn queue_and_send(
        &mut self,
        stream: &mut TcpStream,
        exchange: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Exchange>, Failure> {
        let more = exchange.queue(self.id, self.size, &mut self.pace, ctx);
        exchange.send(stream, ctx)?;
        Ok(if exchange.in_flight.is_empty() && !more {
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
    /// For each message whose echo is not complete, oldest first: when its latency counts from
    /// (when it was queued, or in an open loop when it was due) and when it was queued. Never
    /// longer than the pipeline or `--max-inflight`.
    in_flight: VecDeque<(Instant, Instant)>,
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

    /// The oldest message in flight times out, counted from when it was queued: the timeout
    /// is the server's, whereas an open loop that fell seconds behind its timetable owes the
    /// wait to its own backlog (and counts it in the latency).
    fn deadline(&self) -> Option<Instant> {
        self.in_flight
            .front()
            .map(|(_, queued)| *queued + OPERATION_TIMEOUT)
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
                let Some(&(started, _)) = self.in_flight.front() else {
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
                    // Not `ctx.complete`: `data` still borrows the context's scratch buffer.
                    if ctx.shared.counts(started) {
                        let latency = ctx.now.saturating_duration_since(started);
                        ctx.tally.complete(latency, size as u64, ctx.now);
                    }
                }
            }
        }
    }

    /// Queues messages while the pace allows: until the pipeline (or `--max-inflight`) is full,
    /// the next message of the timetable is not due yet (a wake-up is asked for it), or no
    /// ticket is left. Returns whether more may start later.
    fn queue(&mut self, id: u64, size: usize, pace: &mut Pace, ctx: &mut Ctx<'_>) -> bool {
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        loop {
            match pace.next(self.in_flight.len(), ctx) {
                Start::Now(started) => {
                    if !ctx.take_ticket() {
                        return false;
                    }
                    pace.started(ctx);
                    write_message(id, self.next_seq, size, &mut self.output);
                    self.next_seq += 1;
                    self.in_flight.push_back((started, ctx.now));
                }
                Start::At(due) => {
                    ctx.wake_at(due);
                    return !ctx.stopping && !ctx.shared.tickets.exhausted();
                }
                // An echo coming back frees a place.
                Start::Full => return true,
            }
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

    use std::time::Duration;

    use crate::bench::driver::Client;
    use crate::bench::driver::harness::{Harness, serve_one};
    use crate::bench::pace::Mode;
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

    /// A closed loop keeping `depth` messages in flight.
    fn closed(depth: usize) -> Pace {
        Pace::new(Mode::Closed, depth, 0, 1)
    }

    /// One client alone on an open loop's timetable.
    fn open(rate: f64, max_inflight: usize) -> Pace {
        Pace::new(Mode::Open { rate, max_inflight }, 1, 0, 1)
    }

    fn in_flight(client: &Connection<Pipeline>) -> usize {
        match client.state() {
            State::Connected { session, .. } => session.in_flight.len(),
            other => panic!("expected EXCHANGING, got {other}"),
        }
    }

    /// A client in EXCHANGING, with its first messages sent.
    fn exchanging(h: &mut Harness) -> Connection<Pipeline> {
        let mut client = Connection::new(Pipeline::new(1, 8, closed(2)));
        client.start(&mut h.ctx(Instant::now()));
        h.run_until(&mut client, "EXCHANGING", is("EXCHANGING"));
        client
    }

    // ---- connecting ----

    #[test]
    fn connecting_takes_no_ticket_but_needs_one_left() {
        let mut h = Harness::new(silent_server(), Some(1));
        let mut client = Connection::new(Pipeline::new(0, 8, closed(1)));
        client.start(&mut h.ctx(Instant::now()));
        assert_eq!(client.state().name(), "CONNECTING");
        assert!(!h.shared.tickets.exhausted(), "the ticket is the message's");

        let mut h = Harness::new(silent_server(), Some(0));
        let mut client = Connection::new(Pipeline::new(0, 8, closed(1)));
        client.start(&mut h.ctx(Instant::now()));
        assert!(client.is_finished());
    }

    #[test]
    fn once_the_load_stops_an_echo_client_does_not_connect() {
        let mut h = Harness::new(silent_server(), None);
        h.stopping = true;
        let mut client = Connection::new(Pipeline::new(0, 8, closed(1)));
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
        let mut client = Connection::new(Pipeline::new(1, 8, closed(1)));
        client.start(&mut h.ctx(Instant::now()));
        h.run_until(&mut client, "an error", |_, t| !t.errors.is_empty());
        assert_eq!(
            h.tally.errors.get(PROTOCOL),
            Some(&1),
            "{:?}",
            h.tally.errors
        );
    }

    // ---- EXCHANGING in an open loop ----

    #[test]
    fn an_open_loop_sends_on_its_timetable_and_waits_for_the_next_due_instant() {
        let mut h = Harness::new(echo_server(), None);
        // 50 a second: due at 0, 20 ms, 40 ms, ...
        let mut client = Connection::new(Pipeline::new(1, 8, open(50.0, 4)));
        h.call(&mut client, Instant::now(), Connection::start);
        h.run_until(&mut client, "3 round trips", |_, t| t.operations >= 3);
        assert!(
            h.shared.epoch.elapsed() >= Duration::from_millis(40),
            "the third was not due before 40 ms"
        );
        assert!(h.wake.is_some(), "a wake-up for the next one is asked for");
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    #[test]
    fn an_open_loop_at_its_bound_waits_and_counts_what_it_could_not_send() {
        let mut h = Harness::new(silent_server(), None);
        // 1000 a second, at most 2 in flight, and no echo ever comes back.
        let mut client = Connection::new(Pipeline::new(1, 8, open(1000.0, 2)));
        let start = Instant::now();
        h.call(&mut client, start, Connection::start);
        h.run_until(&mut client, "EXCHANGING", is("EXCHANGING"));
        // The timetable started once connected, between `start` and now.
        let later = Instant::now() + Duration::from_millis(10);
        client.on_timer(&mut h.ctx(later));
        assert_eq!(in_flight(&client), 2, "the bound holds");
        h.stopping = true;
        client.on_stop(&mut h.ctx(later));
        // Due at 0, 1, ..., 10 ms at least from the timetable's start: 11 or more, 2 went out.
        let most = (later - start).as_millis() as u64 + 1 - 2;
        let unstarted = h.tally.behind.unstarted;
        assert!(
            (9..=most).contains(&unstarted),
            "{unstarted} of at most {most}"
        );
    }

    /// An open loop minutes behind its timetable still gives the server the whole timeout from
    /// when a message was queued: the backlog is the generator's, not a server timeout.
    #[test]
    fn the_timeout_counts_from_when_a_message_was_queued_not_when_it_was_due() {
        let due = Instant::now();
        let queued = due + Duration::from_secs(120);
        let exchange = Exchange {
            in_flight: VecDeque::from([(due, queued)]),
            output: Vec::new(),
            written: 0,
            next_seq: 1,
            echo_seq: 0,
            echo_pos: 0,
            writable: false,
        };
        assert_eq!(exchange.deadline(), Some(queued + OPERATION_TIMEOUT));
    }

    /// The server takes 30 ms per echo; one message in flight at most, one due every 10 ms. The
    /// second message, due at 10 ms, can only go at 30 ms and comes back at 60 ms: 50 ms from
    /// when it was due, not the 30 ms from when it was sent.
    #[test]
    fn an_open_loop_message_held_back_counts_its_latency_from_when_it_was_due() {
        let addr = serve_one(|mut stream| {
            let mut buf = [0; 8];
            while stream.read_exact(&mut buf).is_ok() {
                // The slowness is the server's behaviour under test, not synchronisation.
                std::thread::sleep(Duration::from_millis(30));
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let mut h = Harness::new(addr, None);
        let mut client = Connection::new(Pipeline::new(1, 8, open(100.0, 1)));
        h.call(&mut client, Instant::now(), Connection::start);
        h.run_until(&mut client, "2 round trips", |_, t| t.operations == 2);
        assert!(
            h.tally.latency.max() >= 45_000_000,
            "{} ns",
            h.tally.latency.max()
        );
        assert!(h.tally.behind.late >= 1);
    }
}
