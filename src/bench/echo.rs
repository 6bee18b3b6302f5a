//! The `echo` scenario: each client keeps `--pipeline` messages of `--size` bytes in flight on one
//! connection, checks every echoed byte, and times each message from queueing to its last byte.
//!
//! ```text
//!   IDLE → CONNECTING → EXCHANGING → FINISHED        load stopped, or --requests spent
//!               ↓            ↓
//!           BACKING-OFF ←────┘                       an error: count it, wait, connect again
//! ```
//!
//! Messages are lowercase letters from a shift that depends on the connection and the message
//! number, ending in `\n`: readable in a packet capture, and a byte delivered to the wrong
//! connection or out of order shows up as a "mismatch". The payload is computed, never stored,
//! so checking costs no memory whatever the size.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use mio::event::Event;
use mio::net::TcpStream;

use super::driver::{Client, Ctx, OPERATION_TIMEOUT};
use super::report::{CLOSED, MISMATCH, PROTOCOL, TIMEOUT};
use super::tcp::{self, Failure, Machine};

/// The alphabet twice, so that any run of up to 26 letters from any shift is one slice.
const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";

/// Where an echo client is.
#[derive(Debug)]
pub(crate) enum State {
    /// Not started yet.
    Idle,
    /// Waiting for the connect to finish.
    Connecting {
        stream: TcpStream,
        /// When the connect started: it times out [`OPERATION_TIMEOUT`] later.
        since: Instant,
    },
    /// Connected: sending messages and checking their echoes.
    Exchanging(Exchange),
    /// After an error: reconnect at `until`.
    BackingOff { until: Instant },
    /// Done for this run; the socket is closed.
    Finished,
}

impl Machine for State {
    const SERVICE: &'static str = "echo";

    /// The name `docs/DESIGN.md`-style diagrams use.
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "IDLE",
            State::Connecting { .. } => "CONNECTING",
            State::Exchanging(_) => "EXCHANGING",
            State::BackingOff { .. } => "BACKING-OFF",
            State::Finished => "FINISHED",
        }
    }

    /// The socket this state holds, if any.
    fn into_socket(self) -> Option<TcpStream> {
        match self {
            State::Connecting { stream, .. } => Some(stream),
            State::Exchanging(exchange) => Some(exchange.stream),
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

/// What [`State::Exchanging`] holds.
#[derive(Debug)]
pub(crate) struct Exchange {
    stream: TcpStream,
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

/// One echo client.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Which client this is in the run: part of every payload.
    id: u64,
    size: usize,
    pipeline: usize,
    state: State,
}

impl Connection {
    pub fn new(id: u64, size: usize, pipeline: usize) -> Connection {
        Connection {
            id,
            size,
            pipeline,
            state: State::Idle,
        }
    }

    /// IDLE/BACKING-OFF → CONNECTING, or → BACKING-OFF if the connect fails at once.
    fn start_connecting(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.stopping || ctx.shared.tickets.exhausted() {
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

    /// CONNECTING → EXCHANGING: queue the first messages and send them.
    fn start_exchange(&mut self, ctx: &mut Ctx<'_>) {
        ctx.reached();
        self.state.transition(ctx, |socket| match socket.take() {
            Some(stream) => State::Exchanging(Exchange {
                stream,
                in_flight: VecDeque::new(),
                output: Vec::new(),
                written: 0,
                next_seq: 0,
                echo_seq: 0,
                echo_pos: 0,
                // Registered for both directions while connecting.
                writable: true,
            }),
            None => State::Finished, // only called from CONNECTING, which has a socket
        });
        self.exchange(ctx);
    }

    /// EXCHANGING: read echoes, queue more, send; finish when nothing is left in flight.
    fn exchange(&mut self, ctx: &mut Ctx<'_>) {
        let State::Exchanging(exchange) = &mut self.state else {
            return;
        };
        let result = exchange.receive(self.id, self.size, ctx).and_then(|()| {
            exchange.queue(self.id, self.size, self.pipeline, ctx);
            exchange.send(ctx)
        });
        match result {
            // Queueing got no ticket and every echo is in: nothing more to do.
            Ok(()) if exchange.in_flight.is_empty() => self.state.finish(ctx),
            Ok(()) => {}
            Err(failure) => self.state.fail(failure, ctx),
        }
    }
}

impl Exchange {
    /// Reads until `WouldBlock`, checking each byte and completing each message whose last byte
    /// arrived.
    fn receive(&mut self, id: u64, size: usize, ctx: &mut Ctx<'_>) -> Result<(), Failure> {
        loop {
            let n = match tcp::read(&mut self.stream, ctx.scratch)? {
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

    /// Queues messages until `pipeline` are in flight or no ticket is left.
    fn queue(&mut self, id: u64, size: usize, pipeline: usize, ctx: &mut Ctx<'_>) {
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        while self.in_flight.len() < pipeline && ctx.take_ticket() {
            write_message(id, self.next_seq, size, &mut self.output);
            self.next_seq += 1;
            self.in_flight.push_back(ctx.now);
        }
    }

    /// Writes queued output until done or `WouldBlock`; writable interest follows what is left.
    fn send(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Failure> {
        self.written += tcp::write(&mut self.stream, &self.output[self.written..])?;
        let waiting = self.written < self.output.len();
        if waiting != self.writable {
            tcp::set_writable(&mut self.stream, ctx, waiting)?;
            self.writable = waiting;
        }
        Ok(())
    }

    /// When the oldest message in flight times out.
    fn deadline(&self) -> Option<Instant> {
        self.in_flight
            .front()
            .map(|queued| *queued + OPERATION_TIMEOUT)
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
            State::Exchanging(_) => self.exchange(ctx),
            // No socket: an event left over from a socket closed earlier in this batch.
            State::Idle | State::BackingOff { .. } | State::Finished => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Connecting { since, .. } if ctx.now >= *since + OPERATION_TIMEOUT => {
                let err = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {OPERATION_TIMEOUT:?}"),
                );
                self.state.fail(Failure::Io(err), ctx);
            }
            State::Exchanging(exchange) if exchange.deadline().is_some_and(|d| ctx.now >= d) => {
                self.state.fail(Failure::Protocol(TIMEOUT), ctx)
            }
            State::BackingOff { until } if ctx.now >= *until => self.start_connecting(ctx),
            // Not due yet, or nothing to time.
            State::Idle
            | State::Connecting { .. }
            | State::Exchanging(_)
            | State::BackingOff { .. }
            | State::Finished => {}
        }
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            State::Finished => {}
            // Echoes still in flight are abandoned: they belong to no measured interval.
            State::Idle
            | State::Connecting { .. }
            | State::Exchanging(_)
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

    // ---- state machine: fixtures ----

    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::bench::driver::harness::{Harness, closed_port, leftover_event, serve_one};
    use crate::bench::report::{REFUSED, TIMEOUT};

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

    fn is(state: &'static str) -> impl Fn(&Connection, &crate::bench::report::Tally) -> bool {
        move |c, _| c.state.name() == state
    }

    /// A client in CONNECTING (its connect may already have finished, unseen).
    fn connecting(h: &mut Harness) -> Connection {
        let mut client = Connection::new(1, 8, 2);
        client.start(&mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "CONNECTING");
        client
    }

    /// A client in EXCHANGING, with its first messages sent.
    fn exchanging(h: &mut Harness) -> Connection {
        let mut client = connecting(h);
        h.run_until(&mut client, "EXCHANGING", is("EXCHANGING"));
        client
    }

    /// A client in BACKING-OFF after a timed-out connect.
    fn backing_off(h: &mut Harness) -> (Connection, Instant) {
        let mut client = connecting(h);
        let later = Instant::now() + OPERATION_TIMEOUT;
        client.on_tick(&mut h.ctx(later));
        let State::BackingOff { until } = client.state else {
            panic!("expected BACKING-OFF, got {}", client.state);
        };
        (client, until)
    }

    // ---- IDLE ----

    #[test]
    fn idle_starts_by_connecting() {
        let mut h = Harness::new(silent_server(), None);
        connecting(&mut h);
    }

    #[test]
    fn idle_with_no_ticket_left_finishes_at_once() {
        let mut h = Harness::new(silent_server(), Some(0));
        let mut client = Connection::new(0, 8, 1);
        client.start(&mut h.ctx(Instant::now()));
        assert!(client.is_finished());
    }

    // ---- CONNECTING ----

    #[test]
    fn connecting_to_a_listener_starts_the_exchange_with_a_full_pipeline() {
        let mut h = Harness::new(silent_server(), None);
        let client = exchanging(&mut h);
        assert!(h.tally.reached);
        let State::Exchanging(exchange) = &client.state else {
            unreachable!()
        };
        assert_eq!(exchange.in_flight.len(), 2);
        assert_eq!(exchange.output.len(), 16, "two 8-byte messages queued");
    }

    #[test]
    fn a_refused_connect_is_counted_and_backs_off() {
        let mut h = Harness::new(closed_port(), None);
        let mut client = Connection::new(0, 8, 1);
        client.start(&mut h.ctx(Instant::now()));
        h.run_until(&mut client, "BACKING-OFF", is("BACKING-OFF"));
        assert_eq!(h.tally.errors.get(REFUSED), Some(&1));
        assert!(!h.tally.reached);
        assert!(h.tally.first_failure.is_some());
    }

    #[test]
    fn connecting_times_out_after_the_operation_timeout() {
        let mut h = Harness::new(silent_server(), None);
        let mut client = connecting(&mut h);
        client.on_tick(&mut h.ctx(Instant::now() + Duration::from_secs(1)));
        assert_eq!(client.state.name(), "CONNECTING", "not due yet");
        let (_, _) = backing_off(&mut h);
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
    }

    // ---- EXCHANGING ----

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
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state.name(), "BACKING-OFF");
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

    // ---- BACKING-OFF ----

    #[test]
    fn backing_off_reconnects_once_due_and_not_before() {
        let mut h = Harness::new(silent_server(), None);
        let (mut client, until) = backing_off(&mut h);
        client.on_tick(&mut h.ctx(until - Duration::from_millis(1)));
        assert_eq!(client.state.name(), "BACKING-OFF");
        client.on_tick(&mut h.ctx(until));
        assert_eq!(client.state.name(), "CONNECTING");
    }

    /// IDLE, BACKING-OFF and FINISHED hold no socket, so an event for their token can only be a
    /// leftover of the previous socket.
    #[test]
    fn a_leftover_event_without_a_socket_changes_nothing() {
        let mut h = Harness::new(silent_server(), None);
        let (mut client, _) = backing_off(&mut h);
        let mut finished = Connection::new(0, 8, 1);
        finished.on_stop(&mut h.ctx(Instant::now()));
        let event = leftover_event();
        client.on_event(&event, &mut h.ctx(Instant::now()));
        finished.on_event(&event, &mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert!(finished.is_finished());
        assert!(h.tally.errors.get(TIMEOUT) == Some(&1) && h.tally.errors.len() == 1);
    }

    // ---- stopping, from every state ----

    #[test]
    fn stop_finishes_every_state() {
        let mut h = Harness::new(silent_server(), None);
        let mut idle = Connection::new(0, 8, 1);
        let mut connecting = connecting(&mut h);
        let (mut backing_off, _) = backing_off(&mut h);
        let mut h2 = Harness::new(silent_server(), None);
        let mut exchanging = exchanging(&mut h2);
        for client in [&mut idle, &mut connecting, &mut backing_off] {
            client.on_stop(&mut h.ctx(Instant::now()));
            assert!(client.is_finished());
        }
        exchanging.on_stop(&mut h2.ctx(Instant::now()));
        assert!(exchanging.is_finished());
        exchanging.on_stop(&mut h2.ctx(Instant::now()));
        assert!(exchanging.is_finished(), "FINISHED stays FINISHED");
    }
}
