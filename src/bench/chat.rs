//! The `chat` scenario: senders and members share one fresh room on the UDP relay (see
//! `docs/PROTOCOL.md`); every message a sender sends should reach every socket in the room, its
//! own included.
//!
//! ```text
//!   IDLE → JOINING → WAITING → TALKING ─┐       a sender: talks once the whole room has joined
//!             │   └──→ LISTENING ───────┤       a member: listens
//!             ↓                         ↓
//!          FINISHED ←───────────── DRAINING      load stopped: collect what is in flight
//! ```
//!
//! Each message carries its sender's number, a sequence number and its send time in nanoseconds
//! since the run's start (`3:1234:56789012:....`); every thread reads the same process clock, so
//! the receiver's clock minus that time is the one-way latency through the relay. In a closed
//! loop a sender keeps [`WINDOW`] messages in flight, paced by its own copies coming back (as
//! `benches/chat.rs` does), so no kernel buffer overflows. In an open loop (`--rate`, messages
//! sent per second by all senders together) a sender sends each message when its timetable says,
//! up to `--max-inflight` whose copies are not back, and the time a message carries is when it
//! was due, so a sender held back counts its wait in the latency. The delivery ratio,
//! deliveries over `sent × room size`, shows anything lost; the relay's own refusals (`* slow
//! down`, `* server full`) are counted as errors. Start the server with `--chat-rate 0` to
//! measure the relay rather than its rate limit.
//!
//! Across relays that share a chat bus (`--members-at`), each socket has a `Seat`: members join
//! the other relays; a sender talks to the target but hears the room at the first other relay,
//! its own copy at the target turned off (`/echo off`). Every delivery, the sender's own
//! included, has then crossed Redis, and the window is paced by the bus, not by the local relay.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::trace;
use mio::Interest;
use mio::event::Event;
use mio::net::UdpSocket;

use super::driver::{Client, Ctx, OPERATION_TIMEOUT};
use super::pace::{Pace, Start};
use super::report::{CHAT_REFUSED, PROTOCOL, RATE_LIMITED};
use crate::sys::{interrupted, would_block};

/// Messages each sender keeps in flight (sent, its own copy not yet back).
pub const WINDOW: usize = 8;

/// A message whose own copy has not come back after this long is taken as lost, and its slot in
/// the window freed; the delivery ratio shows the loss.
const LOST_AFTER: Duration = Duration::from_secs(1);

/// Pause before `/join` is sent again when no answer came: UDP may lose either datagram.
const JOIN_RETRY: Duration = Duration::from_millis(250);

/// After the load stops, a socket that received nothing for this long has received everything.
const QUIET: Duration = Duration::from_millis(50);

/// The smallest `--size`: the header of a message (`sender:seq:nanoseconds:`) must fit.
pub const MIN_SIZE: usize = 32;

/// The room every socket of the run joins, and how many have joined: senders start when all
/// have joined or given up, so every member receives every message.
#[derive(Debug)]
pub(crate) struct Roster {
    /// A fresh name per run: a room of its own, whatever else the relay serves.
    pub room: String,
    /// Sockets in the run: senders and members.
    pub sockets: usize,
    joined: AtomicUsize,
    gave_up: AtomicUsize,
}

impl Roster {
    pub fn new(room: String, sockets: usize) -> Roster {
        Roster {
            room,
            sockets,
            joined: AtomicUsize::new(0),
            gave_up: AtomicUsize::new(0),
        }
    }

    /// Every socket has joined, or given up trying.
    fn complete(&self) -> bool {
        self.joined.load(Ordering::Relaxed) + self.gave_up.load(Ordering::Relaxed) >= self.sockets
    }
}

/// Where a socket sits in the run: the relay it talks to, and the relay it hears the room at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seat {
    /// The relay it joins and sends to; `None`: the run's target.
    pub talk: Option<SocketAddr>,
    /// Another relay where it joins the room too and hears it, its copies at `talk` turned off;
    /// `None`: it hears the room where it talks.
    pub hear: Option<SocketAddr>,
}

/// What a socket does in the room.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Role {
    /// Sends messages numbered by this sender's index, when `pace` allows.
    Sender { index: u64, pace: Pace },
    /// Only receives.
    Member,
}

/// Where a chat socket is.
#[derive(Debug)]
pub(crate) enum State {
    /// Not started yet.
    Idle,
    /// `/join` sent; waiting for `* you joined`.
    Joining {
        /// When the first `/join` went out: joining times out [`OPERATION_TIMEOUT`] later.
        first: Instant,
        /// When the last `/join` went out: it is repeated [`JOIN_RETRY`] later.
        last: Instant,
    },
    /// A sender in the room, waiting for the others to join.
    Waiting,
    /// A sender sending.
    Talking {
        /// Sequence numbers and send times of messages whose own copy has not come back.
        in_flight: VecDeque<(u64, Instant)>,
    },
    /// A member receiving.
    Listening,
    /// The load stopped: receiving until quiet.
    Draining {
        /// When the last datagram arrived (or draining began).
        last_heard: Instant,
    },
    /// Done; the socket has left the room and is closed.
    Finished,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "IDLE",
            State::Joining { .. } => "JOINING",
            State::Waiting => "WAITING",
            State::Talking { .. } => "TALKING",
            State::Listening => "LISTENING",
            State::Draining { .. } => "DRAINING",
            State::Finished => "FINISHED",
        })
    }
}

/// One socket in the room.
#[derive(Debug)]
pub(crate) struct Member {
    role: Role,
    /// Where it talks and hears (`--members-at`).
    seat: Seat,
    /// The relays whose `* you joined` is still awaited: bit 0 the one it talks to, bit 1 the
    /// one it hears at.
    awaiting: u8,
    size: usize,
    roster: std::sync::Arc<Roster>,
    /// The socket: there from IDLE's end until FINISHED (a UDP socket is the same throughout,
    /// unlike a TCP client's, so it lives beside the state rather than in its variants).
    socket: Option<UdpSocket>,
    state: State,
    /// Sequence number of a sender's next message.
    next_seq: u64,
    /// The message being built; kept to reuse its allocation.
    message: Vec<u8>,
}

impl Member {
    pub fn new(role: Role, size: usize, roster: std::sync::Arc<Roster>, seat: Seat) -> Member {
        Member {
            role,
            seat,
            awaiting: 0,
            size,
            roster,
            socket: None,
            state: State::Idle,
            next_seq: 0,
            message: Vec::with_capacity(size),
        }
    }

    /// IDLE → JOINING: bind, connect to the relay, send `/join`.
    fn start_joining(&mut self, ctx: &mut Ctx<'_>) {
        match self.open(ctx) {
            Ok(()) => {
                let now = ctx.now;
                self.awaiting = if self.seat.hear.is_some() { 0b11 } else { 0b01 };
                self.transition(
                    State::Joining {
                        first: now,
                        last: now,
                    },
                    ctx,
                );
                self.send_join(ctx);
            }
            Err(err) => self.give_up(Some(err), ctx),
        }
    }

    /// The relay this socket talks to.
    fn talk_to(&self, ctx: &Ctx<'_>) -> SocketAddr {
        self.seat.talk.unwrap_or(ctx.shared.target)
    }

    /// Binds an ephemeral port of the relay's family, connects (so ICMP errors are reported
    /// and other senders' datagrams are filtered out) unless it hears another relay too, and
    /// registers.
    fn open(&mut self, ctx: &Ctx<'_>) -> io::Result<()> {
        let target = self.talk_to(ctx);
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut socket = UdpSocket::bind(local)?;
        if self.seat.hear.is_none() {
            socket.connect(target)?;
        }
        // A sender also waits for writable space; with edge triggering that costs nothing while
        // the socket never fills.
        let interest = match self.role {
            Role::Sender { .. } => Interest::READABLE | Interest::WRITABLE,
            Role::Member => Interest::READABLE,
        };
        ctx.registry.register(&mut socket, ctx.token, interest)?;
        self.socket = Some(socket);
        Ok(())
    }

    /// Sends `/join ROOM` (again), and with a seat across relays, `/echo off` where it talks
    /// and `/join ROOM` where it hears.
    fn send_join(&mut self, ctx: &mut Ctx<'_>) {
        let join = format!("/join {}", self.roster.room);
        let target = self.talk_to(ctx);
        let mut sends = vec![(join.as_bytes(), target)];
        if let Some(far) = self.seat.hear {
            sends.push((b"/echo off".as_slice(), target));
            sends.push((join.as_bytes(), far));
        }
        for (payload, to) in sends {
            if let Err(err) = self.send(payload, to) {
                ctx.connect_failed(err);
            }
        }
    }

    /// JOINING → WAITING (a sender) or LISTENING (a member).
    fn joined(&mut self, ctx: &mut Ctx<'_>) {
        ctx.reached();
        self.roster.joined.fetch_add(1, Ordering::Relaxed);
        match self.role {
            Role::Sender { .. } => {
                self.transition(State::Waiting, ctx);
                self.start_talking(ctx);
            }
            Role::Member => self.transition(State::Listening, ctx),
        }
    }

    /// WAITING → TALKING once the whole room has joined.
    fn start_talking(&mut self, ctx: &mut Ctx<'_>) {
        if self.roster.complete() {
            self.transition(
                State::Talking {
                    in_flight: VecDeque::with_capacity(WINDOW),
                },
                ctx,
            );
            self.talk(ctx);
        }
    }

    /// TALKING: sends what the pace allows (fills the window, or catches up with the
    /// timetable); → DRAINING once `--requests` is spent and the window is empty.
    fn talk(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Sender { index, pace } = &mut self.role else {
            return;
        };
        let State::Talking { in_flight } = &mut self.state else {
            return;
        };
        loop {
            let due = match pace.next(in_flight.len(), ctx) {
                Start::Now(due) => due,
                Start::At(at) => {
                    ctx.wake_at(at);
                    break;
                }
                // Own copies coming back open the window.
                Start::Full => break,
            };
            if !ctx.take_ticket() {
                break;
            }
            // The message carries when it was due: its latency counts from there.
            build_message(
                &mut self.message,
                *index,
                self.next_seq,
                ctx.clock_ns(due),
                self.size,
            );
            let Some(socket) = &self.socket else { return };
            let to = self.seat.talk.unwrap_or(ctx.shared.target);
            match send(socket, &self.message, self.seat.hear.map(|_| to)) {
                Ok(()) => {
                    pace.started(ctx);
                    in_flight.push_back((self.next_seq, ctx.now));
                    self.next_seq += 1;
                    ctx.tally.sent += 1;
                }
                Err(err) => {
                    ctx.shared.tickets.give_back();
                    if !would_block(&err) {
                        ctx.io_error(&err);
                    }
                    // Full: the next writable event resumes. Failed: the next tick retries.
                    break;
                }
            }
        }
        if in_flight.is_empty() && ctx.shared.tickets.exhausted() {
            self.start_draining(ctx);
        }
    }

    /// → DRAINING.
    fn start_draining(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        self.transition(State::Draining { last_heard: now }, ctx);
    }

    /// JOINING → FINISHED: this socket is not in the room; the senders stop waiting for it.
    fn give_up(&mut self, failure: Option<io::Error>, ctx: &mut Ctx<'_>) {
        if let Some(err) = failure {
            ctx.connect_failed(err);
        }
        self.roster.gave_up.fetch_add(1, Ordering::Relaxed);
        self.finish(ctx);
    }

    /// → FINISHED: leaves the room (so repeated runs do not fill the relay with members that
    /// only expire after `--chat-idle`) and closes the socket.
    fn finish(&mut self, ctx: &mut Ctx<'_>) {
        let target = self.talk_to(ctx);
        if let Some(mut socket) = self.socket.take() {
            // Best effort: a lost `/leave` only leaves a member to expire.
            let far = self.seat.hear;
            let _ = send(&socket, b"/leave", far.map(|_| target));
            if let Some(far) = far {
                let _ = send(&socket, b"/leave", Some(far));
            }
            let _ = ctx.registry.deregister(&mut socket);
        }
        self.transition(State::Finished, ctx);
    }

    /// Receives until `WouldBlock`, handling each datagram.
    fn receive(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let Some(socket) = &self.socket else { return };
            let (n, from) = match socket.recv_from(ctx.scratch) {
                Ok(received) => received,
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                Err(e) => {
                    // An ICMP error (the relay's port is closed) reported on this socket.
                    match self.state {
                        State::Joining { .. } => ctx.connect_failed(e),
                        _ => ctx.io_error(&e),
                    }
                    continue;
                }
            };
            if let State::Draining { last_heard } = &mut self.state {
                *last_heard = ctx.now;
            }
            let heard = Heard::parse(&ctx.scratch[..n], &self.roster.room);
            self.on_heard(heard, from, n, ctx);
        }
    }

    /// Acts on one datagram, from the relay at `from`.
    fn on_heard(&mut self, heard: Heard, from: SocketAddr, bytes: usize, ctx: &mut Ctx<'_>) {
        match heard {
            Heard::Message {
                sender,
                seq,
                sent_ns,
            } => {
                // A time too large for the clock is no message of this run: counted as sent now.
                let sent = ctx
                    .shared
                    .epoch
                    .checked_add(Duration::from_nanos(sent_ns))
                    .unwrap_or(ctx.now);
                ctx.complete(sent, bytes as u64);
                if matches!(self.role, Role::Sender { index, .. } if index == sender) {
                    if let State::Talking { in_flight } = &mut self.state {
                        // Copies come back in order: anything older than `seq` was lost.
                        while in_flight.front().is_some_and(|(s, _)| *s <= seq) {
                            in_flight.pop_front();
                        }
                        self.talk(ctx);
                    }
                }
            }
            Heard::Joined => {
                let relay = if Some(from) == self.seat.hear {
                    0b10
                } else {
                    0b01
                };
                self.awaiting &= !relay;
                if matches!(self.state, State::Joining { .. }) && self.awaiting == 0 {
                    self.joined(ctx);
                }
            }
            Heard::Refused => {
                ctx.error(CHAT_REFUSED);
                if matches!(self.state, State::Joining { .. }) {
                    self.give_up(None, ctx);
                }
            }
            Heard::SlowDown => ctx.error(RATE_LIMITED),
            Heard::Notice => {}
            Heard::Garbage => ctx.error(PROTOCOL),
        }
    }

    /// Sends on the socket, if there is one, to `to` (the socket is connected only when it has
    /// one relay).
    fn send(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        match &self.socket {
            Some(socket) => send(socket, payload, self.seat.hear.map(|_| to)),
            None => Ok(()),
        }
    }

    /// The one place the state changes.
    fn transition(&mut self, next: State, ctx: &Ctx<'_>) {
        trace!(
            "bench {}/{} chat {} -> {next}",
            ctx.thread, ctx.token.0, self.state
        );
        self.state = next;
    }
}

impl Client for Member {
    fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.start_joining(ctx);
    }

    fn on_event(&mut self, _event: &Event, ctx: &mut Ctx<'_>) {
        match self.state {
            // Reads first: own copies coming back open the window for the sends.
            State::Joining { .. } | State::Waiting | State::Listening | State::Draining { .. } => {
                self.receive(ctx)
            }
            State::Talking { .. } => {
                self.receive(ctx);
                self.talk(ctx);
            }
            // No socket.
            State::Idle | State::Finished => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        match &mut self.state {
            State::Joining { first, .. } if ctx.now >= *first + OPERATION_TIMEOUT => {
                let err = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to /join within {OPERATION_TIMEOUT:?}"),
                );
                self.give_up(Some(err), ctx);
            }
            State::Joining { last, .. } if ctx.now >= *last + JOIN_RETRY => {
                *last = ctx.now;
                self.send_join(ctx);
            }
            State::Waiting => self.start_talking(ctx),
            State::Talking { in_flight } => {
                while in_flight
                    .front()
                    .is_some_and(|(_, sent)| ctx.now >= *sent + LOST_AFTER)
                {
                    in_flight.pop_front();
                }
                self.talk(ctx);
            }
            // A member's work ends with the senders' `--requests`.
            State::Listening if ctx.shared.tickets.exhausted() => self.start_draining(ctx),
            State::Draining { last_heard } if ctx.now >= *last_heard + QUIET => self.finish(ctx),
            State::Idle
            | State::Joining { .. }
            | State::Listening
            | State::Draining { .. }
            | State::Finished => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            // The timetable's next message is due.
            State::Talking { .. } => self.talk(ctx),
            // Asked for while talking, which has since ended.
            State::Idle
            | State::Joining { .. }
            | State::Waiting
            | State::Listening
            | State::Draining { .. }
            | State::Finished => {}
        }
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        if let Role::Sender { pace, .. } = &self.role {
            if !matches!(self.state, State::Draining { .. } | State::Finished) {
                // What the timetable had due and this sender never sent.
                pace.stopped(ctx);
            }
        }
        match self.state {
            // Not in the room: nothing in flight to collect.
            State::Idle | State::Joining { .. } => self.finish(ctx),
            State::Waiting | State::Talking { .. } | State::Listening => self.start_draining(ctx),
            State::Draining { .. } | State::Finished => {}
        }
    }

    fn close(&mut self, ctx: &mut Ctx<'_>) {
        if !self.is_finished() {
            self.finish(ctx);
        }
    }

    fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}

/// Sends one datagram on a connected socket, or to `to` on one that is not, retrying
/// `Interrupted`.
fn send(socket: &UdpSocket, payload: &[u8], to: Option<SocketAddr>) -> io::Result<()> {
    loop {
        let sent = match to {
            Some(to) => socket.send_to(payload, to),
            None => socket.send(payload),
        };
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes message `seq` of sender `sender`, sent at `sent_ns`, padded with `.` to `size` bytes
/// (never shorter than its header).
pub(crate) fn build_message(out: &mut Vec<u8>, sender: u64, seq: u64, sent_ns: u64, size: usize) {
    out.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{sender}:{seq}:{sent_ns}:");
    if out.len() < size {
        out.resize(size, b'.');
    }
}

/// What a datagram from the relay says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// A relayed benchmark message.
    Message { sender: u64, seq: u64, sent_ns: u64 },
    /// `* you joined ROOM (N others here)`, `(1 other here)` for one, or `* you are already in
    /// ROOM` when an earlier answer was lost. Only the room is read, not the count.
    Joined,
    /// The relay refused a member, a room or a message.
    Refused,
    /// The relay's rate limit dropped messages.
    SlowDown,
    /// Any other notice (others joining or leaving): ignored.
    Notice,
    /// Not something the relay sends.
    Garbage,
}

impl Heard {
    /// Reads one datagram of the relay, for a socket that joins `room`.
    pub fn parse(datagram: &[u8], room: &str) -> Heard {
        let Ok(line) = std::str::from_utf8(datagram) else {
            return Heard::Garbage;
        };
        let line = line.strip_suffix('\n').unwrap_or(line);
        if let Some(notice) = line.strip_prefix("* ") {
            return if notice
                .strip_prefix("you joined ")
                .or_else(|| notice.strip_prefix("you are already in "))
                .is_some_and(|rest| rest.split(' ').next() == Some(room))
            {
                Heard::Joined
            } else if notice.starts_with("slow down") {
                Heard::SlowDown
            } else if ["server full", "too many rooms", "message too long"]
                .iter()
                .any(|refusal| notice.starts_with(refusal))
            {
                Heard::Refused
            } else {
                Heard::Notice
            };
        }
        // `<nick>: <text>`; a nick (`ip:port`, `[v6]:port` or a chosen name) holds no ": ".
        let Some((_, text)) = line.split_once(": ") else {
            return Heard::Garbage;
        };
        let mut fields = text.splitn(4, ':').map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(sender)), Some(Ok(seq)), Some(Ok(sent_ns))) => Heard::Message {
                sender,
                seq,
                sent_ns,
            },
            _ => Heard::Garbage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_to_the_size_but_keep_their_header() {
        let mut out = Vec::new();
        build_message(&mut out, 3, 1234, 56_789, 64);
        assert_eq!(out.len(), 64);
        assert!(out.starts_with(b"3:1234:56789:...."));
        build_message(&mut out, 12_345, u64::MAX, u64::MAX, MIN_SIZE);
        assert!(out.len() > MIN_SIZE, "the header is never cut");
    }

    #[test]
    fn a_relayed_message_gives_sender_sequence_and_send_time() {
        let mut out = b"127.0.0.1:40000: ".to_vec();
        let mut message = Vec::new();
        build_message(&mut message, 2, 17, 99_000, 48);
        out.extend_from_slice(&message);
        out.push(b'\n');
        assert_eq!(
            Heard::parse(&out, "r"),
            Heard::Message {
                sender: 2,
                seq: 17,
                sent_ns: 99_000
            }
        );
        let v6 = b"[::1]:40000: 0:1:2:....\n";
        assert_eq!(
            Heard::parse(v6, "r"),
            Heard::Message {
                sender: 0,
                seq: 1,
                sent_ns: 2
            }
        );
    }

    #[test]
    fn the_relays_notices_are_told_apart() {
        let room = "bench-1";
        assert_eq!(
            Heard::parse(b"* you joined bench-1 (3 others here)\n", room),
            Heard::Joined
        );
        assert_eq!(
            Heard::parse(b"* you joined bench-1 (1 other here)\n", room),
            Heard::Joined
        );
        assert_eq!(
            Heard::parse(b"* you are already in bench-1\n", room),
            Heard::Joined
        );
        assert_eq!(
            Heard::parse(b"* you joined bench-2 (0 others here)\n", room),
            Heard::Notice
        );
        assert_eq!(
            Heard::parse(b"* slow down: at most 20 messages a second\n", room),
            Heard::SlowDown
        );
        assert_eq!(
            Heard::parse(b"* slow down: at most 1 message a second\n", room),
            Heard::SlowDown
        );
        assert_eq!(Heard::parse(b"* server full\n", room), Heard::Refused);
        assert_eq!(
            Heard::parse(b"* 127.0.0.1:5 joined bench-1\n", room),
            Heard::Notice
        );
    }

    #[test]
    fn anything_else_is_garbage() {
        for datagram in [&b"hello"[..], b"x: hello", b"x: 1:2", b"\xff\xfe"] {
            assert_eq!(Heard::parse(datagram, "r"), Heard::Garbage, "{datagram:?}");
        }
    }

    // ---- state machine: fixtures ----

    use std::net::UdpSocket as StdUdpSocket;
    use std::sync::Arc;

    use crate::bench::driver::harness::Harness;
    use crate::bench::report::{TIMEOUT, Tally};

    const ROOM: &str = "bench-test";

    /// A relay played by the test: it reads what the client sends and answers by hand.
    struct Relay {
        socket: StdUdpSocket,
    }

    impl Relay {
        fn new() -> Relay {
            let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            Relay { socket }
        }

        fn addr(&self) -> SocketAddr {
            self.socket.local_addr().unwrap()
        }

        /// The next datagram a client sent, and from where.
        #[track_caller]
        fn recv(&self) -> (String, SocketAddr) {
            let mut buf = [0; 2048];
            let (n, from) = self
                .socket
                .recv_from(&mut buf)
                .expect("a datagram from the client");
            (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
        }

        fn send(&self, text: &str, to: SocketAddr) {
            self.socket.send_to(text.as_bytes(), to).unwrap();
        }
    }

    fn is(state: &'static str) -> impl Fn(&Member, &Tally) -> bool {
        move |m, _| m.state.to_string() == state
    }

    /// A socket that has sent `/join` to `relay`, and its address.
    fn joining(
        h: &mut Harness,
        relay: &Relay,
        role: Role,
        roster: &Arc<Roster>,
    ) -> (Member, SocketAddr) {
        let mut member = Member::new(role, 64, Arc::clone(roster), Seat::default());
        member.start(&mut h.ctx(Instant::now()));
        assert_eq!(member.state.to_string(), "JOINING");
        let (text, from) = relay.recv();
        assert_eq!(text, format!("/join {ROOM}"));
        (member, from)
    }

    /// A socket in the room: LISTENING (a member) or, with the room complete, TALKING.
    fn joined(
        h: &mut Harness,
        relay: &Relay,
        role: Role,
        roster: &Arc<Roster>,
    ) -> (Member, SocketAddr) {
        let (mut member, from) = joining(h, relay, role, roster);
        relay.send(&format!("* you joined {ROOM} (0 others here)\n"), from);
        h.run_until(&mut member, "joined", |m, _| {
            !matches!(m.state, State::Joining { .. })
        });
        (member, from)
    }

    /// Sender 0 of 1, closed loop.
    fn sender() -> Role {
        Role::Sender {
            index: 0,
            pace: Pace::new(crate::bench::pace::Mode::Closed, WINDOW, 0, 1),
        }
    }

    fn roster(sockets: usize) -> Arc<Roster> {
        Arc::new(Roster::new(ROOM.into(), sockets))
    }

    // ---- JOINING ----

    #[test]
    fn joining_a_member_then_listening() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let roster = roster(1);
        let (member, _) = joined(&mut h, &relay, Role::Member, &roster);
        assert_eq!(member.state.to_string(), "LISTENING");
        assert!(h.tally.reached);
        assert!(roster.complete());
    }

    #[test]
    fn joining_a_room_with_one_other_there_then_listening() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let roster = roster(2);
        let (mut member, from) = joining(&mut h, &relay, Role::Member, &roster);
        relay.send(&format!("* you joined {ROOM} (1 other here)\n"), from);
        h.run_until(&mut member, "LISTENING", is("LISTENING"));
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    #[test]
    fn joining_repeats_the_join_when_no_answer_comes() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut member, _) = joining(&mut h, &relay, Role::Member, &roster(1));
        member.on_tick(&mut h.ctx(Instant::now() + JOIN_RETRY));
        assert_eq!(relay.recv().0, format!("/join {ROOM}"));
        assert_eq!(member.state.to_string(), "JOINING");
    }

    #[test]
    fn joining_gives_up_after_the_operation_timeout_and_leaves() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let roster = roster(2);
        let (mut member, _) = joining(&mut h, &relay, Role::Member, &roster);
        member.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert!(member.is_finished());
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
        assert_eq!(roster.gave_up.load(Ordering::Relaxed), 1);
        assert_eq!(relay.recv().0, "/leave");
    }

    #[test]
    fn joining_a_full_relay_is_refused_and_gives_up() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut member, from) = joining(&mut h, &relay, Role::Member, &roster(1));
        relay.send("* server full\n", from);
        h.run_until(&mut member, "FINISHED", is("FINISHED"));
        assert_eq!(h.tally.errors.get(CHAT_REFUSED), Some(&1));
    }

    // ---- WAITING ----

    #[test]
    fn a_sender_waits_for_the_whole_room_then_fills_its_window() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let roster = roster(2);
        let (mut sender, _) = joined(&mut h, &relay, sender(), &roster);
        assert_eq!(sender.state.to_string(), "WAITING");
        sender.on_tick(&mut h.ctx(Instant::now()));
        assert_eq!(
            sender.state.to_string(),
            "WAITING",
            "one socket has not joined"
        );
        roster.joined.fetch_add(1, Ordering::Relaxed);
        sender.on_tick(&mut h.ctx(Instant::now()));
        assert_eq!(sender.state.to_string(), "TALKING");
        for seq in 0..WINDOW {
            let (text, _) = relay.recv();
            assert!(text.starts_with(&format!("0:{seq}:")), "{text}");
            assert_eq!(text.len(), 64);
        }
        assert_eq!(h.tally.sent, WINDOW as u64);
    }

    // ---- TALKING ----

    /// A sender in TALKING with a full window, its messages read by the relay.
    fn talking(h: &mut Harness, relay: &Relay) -> (Member, SocketAddr, Vec<String>) {
        let (sender, from) = joined(h, relay, sender(), &roster(1));
        assert_eq!(sender.state.to_string(), "TALKING");
        let sent = (0..WINDOW).map(|_| relay.recv().0).collect();
        (sender, from, sent)
    }

    #[test]
    fn an_own_copy_is_a_timed_delivery_and_opens_the_window() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut sender, from, sent) = talking(&mut h, &relay);
        relay.send(&format!("{from}: {}\n", sent[0]), from);
        h.run_until(&mut sender, "a delivery", |_, t| t.operations == 1);
        assert!(
            relay.recv().0.starts_with(&format!("0:{WINDOW}:")),
            "the next message"
        );
        assert_eq!(h.tally.latency.len(), 1);
        assert!(h.tally.bytes > 64);
    }

    #[test]
    fn a_copy_that_never_comes_back_frees_its_slot_after_a_while() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut sender, _, _) = talking(&mut h, &relay);
        sender.on_tick(&mut h.ctx(Instant::now() + LOST_AFTER));
        for _ in 0..WINDOW {
            relay.recv();
        }
        assert_eq!(h.tally.sent, 2 * WINDOW as u64);
        assert!(
            h.tally.errors.is_empty(),
            "a loss shows in the delivery ratio, not as an error"
        );
    }

    /// 100 a second, alone: the first message goes when the room is complete, the next is
    /// asked for 10 ms later, and each carries the instant it was due, not when it went.
    #[test]
    fn an_open_loop_sender_sends_when_due_and_stamps_each_message_with_its_due_instant() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let role = Role::Sender {
            index: 0,
            pace: Pace::new(
                crate::bench::pace::Mode::Open {
                    rate: 100.0,
                    max_inflight: 4,
                },
                WINDOW,
                0,
                1,
            ),
        };
        let (mut sender, _) = joined(&mut h, &relay, role, &roster(1));
        assert_eq!(sender.state.to_string(), "TALKING");
        assert!(relay.recv().0.starts_with("0:0:"), "the first, at once");
        assert_eq!(h.tally.sent, 1, "only the first was due");
        let due = h.wake.expect("a wake-up for the second");
        // Woken 5 ms late: the message still says when it was due.
        sender.on_timer(&mut h.ctx(due + Duration::from_millis(5)));
        let (second, _) = relay.recv();
        let stamp = h.ctx(due).clock_ns(due);
        assert!(
            second.starts_with(&format!("0:1:{stamp}:")),
            "{second} should carry {stamp}"
        );
        assert_eq!(h.tally.behind.late, 1);
    }

    #[test]
    fn a_sender_drains_once_its_requests_are_spent_and_answered() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), Some(2));
        let (mut sender, from) = joined(&mut h, &relay, sender(), &roster(1));
        for _ in 0..2 {
            let (text, _) = relay.recv();
            relay.send(&format!("{from}: {text}\n"), from);
        }
        h.run_until(&mut sender, "DRAINING", is("DRAINING"));
        assert_eq!((h.tally.sent, h.tally.operations), (2, 2));
    }

    // ---- LISTENING ----

    #[test]
    fn listening_counts_the_relays_refusals_and_garbage_by_kind() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut member, from) = joined(&mut h, &relay, Role::Member, &roster(1));
        relay.send("* slow down: 20 messages/s\n", from);
        relay.send("not a relayed line\n", from);
        relay.send("* 127.0.0.1:9 joined bench-test\n", from);
        h.run_until(&mut member, "two errors", |_, t| t.error_count() == 2);
        assert_eq!(h.tally.errors.get(RATE_LIMITED), Some(&1));
        assert_eq!(h.tally.errors.get(PROTOCOL), Some(&1));
        assert_eq!(h.tally.operations, 0);
    }

    // ---- DRAINING ----

    #[test]
    fn stop_drains_until_quiet_then_leaves() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut member, _) = joined(&mut h, &relay, Role::Member, &roster(1));
        let stopped = Instant::now();
        member.on_stop(&mut h.ctx(stopped));
        assert_eq!(member.state.to_string(), "DRAINING");
        member.on_tick(&mut h.ctx(stopped + QUIET / 2));
        assert_eq!(member.state.to_string(), "DRAINING");
        member.on_tick(&mut h.ctx(stopped + QUIET));
        assert!(member.is_finished());
        assert_eq!(relay.recv().0, "/leave");
    }

    #[test]
    fn stop_while_joining_finishes_at_once() {
        let relay = Relay::new();
        let mut h = Harness::new(relay.addr(), None);
        let (mut member, _) = joining(&mut h, &relay, Role::Member, &roster(1));
        member.on_stop(&mut h.ctx(Instant::now()));
        assert!(member.is_finished());
    }
}
