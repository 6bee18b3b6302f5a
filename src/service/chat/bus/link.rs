//! One connection to Redis, as an endpoint of the table: the command link or the subscriber link.
//!
//! ```text
//!               deadline              writable, connected        every opening reply
//!   BACKING-OFF ────────► CONNECTING ──────────────────► HANDSHAKE ──────────────────► READY
//!        ▲                    │                              │                           │
//!        └────────────────────┴──────────────────────────────┴───────────────────────────┘
//!          refused, reset or closed (gone); no answer in time (slow); not RESP, a reply too
//!          large, an opening command refused (protocol): counted, and the next wait is longer
//! ```
//!
//! A link never closes for good: a failure costs a counted close and a wait ([`Backoff`]: 100 ms
//! doubling to 5 s, with jitter), then it connects again. While it waits it holds no socket, so
//! it wants no readiness at all, like a listener backing off; its deadline brings it back. Every
//! wait has a deadline: the connect, the opening commands, each reply. A link with nothing to
//! say sends `PING` now and then, so a Redis that vanished without a word is noticed too.
//!
//! Opening a connection, each link names itself (`CLIENT SETNAME readyloop-<node>-commands`,
//! shown by `CLIENT LIST`); the command link also selects the database of `--chat-bus`. Once
//! READY, the command link sends what the relay left in the [`Exchange`] and hands each reply
//! back with its [`Expect`] (Redis answers in order, so the head of the input answers the head of
//! the queue of commands in flight); the subscriber link subscribes to its node's channel and the
//! rooms the relay asked for, and hands every message to the relay. Both buffers are bounded:
//! the output by a high-water mark past which no command is taken from the exchange, the input
//! by [`MAX_INPUT`], past which a reply is refused as too large.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::Interest;
use mio::net::TcpStream;

use super::backoff::Backoff;
use super::resp::{self, Frame};
use super::{Command, Exchange, Expect, Inbound, Settings};
use crate::buffer::Buffer;
use crate::config::ChatBus;
use crate::service::{Context, Handler, KEEP, Next};
use crate::stats::Metric;
use crate::sys::{interrupted, would_block};
use crate::token::Id;

/// How long a connect may take: far above any LAN round trip, short enough that a Redis that
/// silently drops packets is given up on quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long Redis may take to answer a command. Redis answers in microseconds; one that takes
/// seconds is stalled (a slow disk under `appendfsync always`, a fork on a huge dataset), and
/// the chat is better served by its own answers meanwhile.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Silence after which a link asks Redis `PING`: a Redis that vanished without closing the
/// connection (its host gone) is noticed within this plus [`REPLY_TIMEOUT`].
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// Bytes of replies not yet decoded, at most: a whole `/who` of a thousand names, or a few
/// hundred messages; a reply that does not fit is refused as too large.
pub const MAX_INPUT: usize = 512 * 1024;

/// Bytes of commands waiting for the socket past which the command link takes no more from the
/// exchange, where the queue's drop-oldest bound applies instead.
const OUTPUT_HIGH: usize = 256 * 1024;

/// Which of a node's two connections this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sends the chat's commands and hands their replies back.
    Commands,
    /// Subscribed to the node's channel and its rooms'; hands every message to the relay.
    Subscriber,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Commands => "commands",
            Kind::Subscriber => "subscriber",
        })
    }
}

/// Where a link is.
#[derive(Debug)]
enum State {
    /// A non-blocking connect is under way; writable readiness says it ended.
    Connecting {
        stream: TcpStream,
        /// When the attempt is given up.
        until: Instant,
    },
    /// Connected; the opening commands are being answered.
    Handshake {
        wire: Wire,
        /// When the answers are given up on.
        until: Instant,
    },
    /// Carrying the chat's commands, or its messages.
    Ready { wire: Wire },
    /// No connection; the next attempt at `until`.
    BackingOff { until: Instant },
}

impl State {
    /// The state's name, as `docs/DESIGN.md`'s diagram spells it.
    fn name(&self) -> &'static str {
        match self {
            State::Connecting { .. } => "CONNECTING",
            State::Handshake { .. } => "HANDSHAKE",
            State::Ready { .. } => "READY",
            State::BackingOff { .. } => "BACKING-OFF",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a reply in flight answers.
#[derive(Debug)]
enum Pending {
    /// One of the opening commands, named for the log.
    Hello(String),
    /// `PING`: Redis is still there.
    Ping,
    /// `SUBSCRIBE`, answered by a `subscribe` push.
    Subscribe,
    /// `UNSUBSCRIBE`, answered by an `unsubscribe` push.
    Unsubscribe,
    /// A command of the chat's.
    Chat(Expect),
}

/// A connected socket and its buffers: there in HANDSHAKE and READY only.
#[derive(Debug)]
struct Wire {
    stream: TcpStream,
    /// Bytes read and not yet decoded start at `start`; at most [`MAX_INPUT`] of them.
    input: Vec<u8>,
    start: usize,
    output: Buffer,
    /// What each reply still to come answers, with when its command was sent, oldest first.
    in_flight: VecDeque<(Instant, Pending)>,
    /// When Redis last sent anything.
    heard: Instant,
}

impl Wire {
    fn new(stream: TcpStream, now: Instant) -> Wire {
        Wire {
            stream,
            input: Vec::new(),
            start: 0,
            output: Buffer::new(),
            in_flight: VecDeque::new(),
            heard: now,
        }
    }

    /// Queues one command and remembers what its reply answers.
    fn send(&mut self, args: &[&[u8]], pending: Pending, now: Instant) {
        let mut bytes = Vec::new();
        resp::encode(args, &mut bytes);
        self.output.extend(&bytes);
        self.in_flight.push_back((now, pending));
    }

    /// The next whole frame in the input, if one has arrived.
    fn next_frame(&mut self) -> Result<Option<Frame>, Fault> {
        match resp::decode(&self.input[self.start..]) {
            Ok(Some((frame, used))) => {
                self.start += used;
                Ok(Some(frame))
            }
            Ok(None) => {
                // Keep only the partial frame, at the front, for the bytes still to come.
                self.input.drain(..self.start);
                self.start = 0;
                Ok(None)
            }
            Err(garbage) => Err(Fault::Protocol(garbage.to_string())),
        }
    }

    /// When the oldest reply in flight is overdue, or, with none in flight, a `PING` is due.
    fn deadline(&self) -> Instant {
        match self.in_flight.front() {
            Some((sent, _)) => *sent + REPLY_TIMEOUT,
            None => self.heard + PING_EVERY,
        }
    }
}

/// Why a connection to Redis ended, for the count and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// Refused, reset, closed by Redis.
    Gone(String),
    /// An answer did not come in time.
    Slow(String),
    /// Redis (or whatever answered) sent something that is not the answer: not RESP, too
    /// large, out of turn, or a refusal of an opening command.
    Protocol(String),
}

impl Fault {
    fn metric(&self) -> Metric {
        match self {
            Fault::Gone(_) => Metric::ChatBusClosedGone,
            Fault::Slow(_) => Metric::ChatBusClosedSlow,
            Fault::Protocol(_) => Metric::ChatBusClosedProtocol,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Gone(why) | Fault::Slow(why) | Fault::Protocol(why) => f.write_str(why),
        }
    }
}

/// One connection to Redis.
#[derive(Debug)]
pub struct Link {
    kind: Kind,
    redis: ChatBus,
    /// Names the connection in Redis (`CLIENT SETNAME`).
    name: String,
    /// The subscriber's channels: its node's, and one per room with members here. Kept across
    /// reconnects, so a new connection subscribes to them all again.
    channels: BTreeSet<String>,
    /// Most commands sent and not yet answered.
    in_flight_limit: usize,
    backoff: Backoff,
    state: State,
}

impl Link {
    /// A link of `kind` to the Redis of `settings`. It first connects when its deadline, `now`,
    /// comes, so that the one path that connects is the one that retries.
    pub fn new(kind: Kind, settings: &Settings, now: Instant) -> Link {
        let channels = match kind {
            Kind::Commands => BTreeSet::new(),
            Kind::Subscriber => BTreeSet::from([settings.node_channel(&settings.node)]),
        };
        Link {
            kind,
            redis: settings.redis,
            name: format!("readyloop-{}-{kind}", settings.node),
            channels,
            in_flight_limit: settings.queue,
            backoff: Backoff::new(),
            state: State::BackingOff { until: now },
        }
    }

    /// Which link this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its state, as the admin service's `/connections` shows it.
    pub fn state(&self) -> &dyn fmt::Display {
        &self.state
    }

    /// Whether the link carries the chat's traffic now.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// The Redis it connects to.
    pub fn peer(&self) -> SocketAddr {
        self.redis.addr
    }

    /// Bytes of commands waiting for the socket.
    pub fn buffered(&self) -> usize {
        self.wire().map_or(0, |wire| wire.output.len())
    }

    /// The socket, for registration; `None` while backing off.
    pub fn source(&mut self) -> Option<&mut TcpStream> {
        match &mut self.state {
            State::Connecting { stream, .. } => Some(stream),
            State::Handshake { wire, .. } | State::Ready { wire } => Some(&mut wire.stream),
            State::BackingOff { .. } => None,
        }
    }

    /// Writable while connecting (that is how a connect reports its end); then readable, and
    /// writable while commands wait; nothing while backing off.
    pub fn interest(&self) -> Option<Interest> {
        match &self.state {
            State::Connecting { .. } => Some(Interest::WRITABLE),
            State::Handshake { wire, .. } | State::Ready { wire } if !wire.output.is_empty() => {
                Some(Interest::READABLE | Interest::WRITABLE)
            }
            State::Handshake { .. } | State::Ready { .. } => Some(Interest::READABLE),
            State::BackingOff { .. } => None,
        }
    }

    /// The end of the current wait: the connect's, the handshake's, the oldest reply's, the next
    /// `PING`, or the back-off's.
    pub fn deadline(&self) -> Option<Instant> {
        Some(match &self.state {
            State::Connecting { until, .. }
            | State::Handshake { until, .. }
            | State::BackingOff { until } => *until,
            State::Ready { wire } => wire.deadline(),
        })
    }

    /// A wait ended: try again after backing off; give up on a connect or an answer that is
    /// late; send `PING` after a silence.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_>) -> Next {
        let now = ctx.now;
        match &mut self.state {
            // The back-off is over.
            State::BackingOff { .. } => self.start_connecting(ctx),
            State::Connecting { .. } => {
                let why = format!("no connection within {CONNECT_TIMEOUT:?}");
                self.fail(Fault::Slow(why), ctx);
            }
            State::Handshake { .. } => {
                let why = format!("no answer to the opening commands within {REPLY_TIMEOUT:?}");
                self.fail(Fault::Slow(why), ctx);
            }
            State::Ready { wire } if wire.in_flight.is_empty() => {
                wire.send(&[b"PING"], Pending::Ping, now);
                self.flush(ctx);
            }
            State::Ready { .. } => {
                let why = format!("no reply within {REPLY_TIMEOUT:?}");
                self.fail(Fault::Slow(why), ctx);
            }
        }
        KEEP
    }

    /// The relay left work in the exchange, or this link gave its turn back: take the work, then
    /// carry on reading and writing.
    pub fn on_resume(&mut self, ctx: &mut Context<'_>) -> Next {
        self.take_work(ctx);
        match self.state {
            State::Handshake { .. } | State::Ready { .. } => {
                self.read(ctx);
                self.take_work(ctx);
                self.flush(ctx);
            }
            // Nothing to read or write: a connect reports by writable readiness, and a link
            // backing off has no socket.
            State::Connecting { .. } | State::BackingOff { .. } => {}
        }
        KEEP
    }

    /// The state's wire, if it has one.
    fn wire(&self) -> Option<&Wire> {
        match &self.state {
            State::Handshake { wire, .. } | State::Ready { wire } => Some(wire),
            State::Connecting { .. } | State::BackingOff { .. } => None,
        }
    }

    fn wire_mut(&mut self) -> Option<&mut Wire> {
        match &mut self.state {
            State::Handshake { wire, .. } | State::Ready { wire } => Some(wire),
            State::Connecting { .. } | State::BackingOff { .. } => None,
        }
    }

    /// BACKING-OFF → CONNECTING: a non-blocking connect, whose end writable readiness reports.
    fn start_connecting(&mut self, ctx: &mut Context<'_>) {
        match TcpStream::connect(self.redis.addr) {
            Ok(stream) => {
                let until = ctx.now + CONNECT_TIMEOUT;
                self.transition(ctx, |_| State::Connecting { stream, until });
            }
            Err(e) => self.fail(Fault::Gone(format!("connect: {e}")), ctx),
        }
    }

    /// CONNECTING → HANDSHAKE: the connection is up; the opening commands go out.
    fn start_handshake(&mut self, ctx: &mut Context<'_>) {
        let (now, until) = (ctx.now, ctx.now + REPLY_TIMEOUT);
        let mut hello: Vec<(Vec<&[u8]>, Pending)> = Vec::new();
        let setname = Pending::Hello(format!("CLIENT SETNAME {}", self.name));
        hello.push((vec![b"CLIENT", b"SETNAME", self.name.as_bytes()], setname));
        let db = self.redis.db.to_string();
        if self.kind == Kind::Commands {
            let select = Pending::Hello(format!("SELECT {db}"));
            hello.push((vec![b"SELECT", db.as_bytes()], select));
        }
        let (token, kind) = (ctx.token, self.kind);
        let opening = |old| match old {
            State::Connecting { stream, .. } => {
                // Nagle would hold each small command back until the last one is acknowledged.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!("{} chat bus {kind}: TCP_NODELAY: {e}", Id(token));
                }
                let mut wire = Wire::new(stream, now);
                for (args, pending) in hello {
                    wire.send(&args, pending, now);
                }
                State::Handshake { wire, until }
            }
            // Only a connect ends in a handshake.
            other => other,
        };
        transition(&mut self.state, self.kind, ctx, opening);
        self.flush(ctx);
    }

    /// HANDSHAKE → READY: the chat's traffic may flow.
    fn become_ready(&mut self, ctx: &mut Context<'_>) {
        self.transition(ctx, |old| match old {
            State::Handshake { wire, .. } => State::Ready { wire },
            // Only a handshake ends in READY.
            other => other,
        });
        self.backoff.reset();
        ctx.stats.add(Metric::ChatBusLinksUp, 1);
        ctx.stats.add(Metric::ChatBusConnects, 1);
        info!("chat bus: {} link to {} is up", self.kind, self.redis);
        match self.kind {
            Kind::Commands => {
                if let Some(bus) = ctx.bus.as_deref_mut() {
                    bus.deliver(Inbound::Up);
                }
            }
            Kind::Subscriber => {
                let now = ctx.now;
                if let State::Ready { wire } = &mut self.state {
                    for channel in &self.channels {
                        wire.send(&[b"SUBSCRIBE", channel.as_bytes()], Pending::Subscribe, now);
                    }
                }
            }
        }
    }

    /// Any state → BACKING-OFF: the connection (if any) is closed and counted, whatever was in
    /// flight is lost, and the next attempt waits one back-off longer.
    fn fail(&mut self, fault: Fault, ctx: &mut Context<'_>) {
        ctx.stats.add(fault.metric(), 1);
        let was_ready = self.is_ready();
        if was_ready {
            ctx.stats.sub(Metric::ChatBusLinksUp, 1);
        }
        // Logged once per outage: when the link goes down, or first fails to come up.
        if self.backoff.failures() == 0 {
            warn!(
                "chat bus: {} link to {} is down: {fault}; chat goes on locally, retrying",
                self.kind, self.redis
            );
        } else {
            debug!(
                "{} chat bus {} in {}: {fault}",
                Id(ctx.token),
                self.kind,
                self.state
            );
        }
        let until = ctx.now + self.backoff.next_wait();
        let mut lost = VecDeque::new();
        // Dropping the old state closes its socket, which takes it out of the poll set.
        self.transition(ctx, |old| {
            if let State::Handshake { wire, .. } | State::Ready { wire } = old {
                lost = wire.in_flight;
            }
            State::BackingOff { until }
        });
        for (_, pending) in lost {
            if let Pending::Chat(expect) = pending {
                abandon(expect, ctx);
            }
        }
        if self.kind == Kind::Commands && was_ready {
            if let Some(bus) = ctx.bus.as_deref_mut() {
                bus.deliver(Inbound::Down);
            }
        }
        self.take_work(ctx);
    }

    /// The one place the state changes: `next` makes the new state of the old one, whose socket
    /// it may take over, and the change is traced.
    fn transition(&mut self, ctx: &Context<'_>, next: impl FnOnce(State) -> State) {
        transition(&mut self.state, self.kind, ctx, next);
    }

    /// Takes what the relay left: commands (sent when READY, given up otherwise) or
    /// subscription changes (remembered always, sent when READY).
    fn take_work(&mut self, ctx: &mut Context<'_>) {
        let now = ctx.now;
        let Some(bus) = ctx.bus.as_deref_mut() else {
            return;
        };
        match (self.kind, &mut self.state) {
            (Kind::Commands, State::Ready { wire }) => {
                while wire.output.len() < OUTPUT_HIGH && wire.in_flight.len() < self.in_flight_limit
                {
                    let Some(Command { bytes, expect }) = bus.next_command() else {
                        break;
                    };
                    wire.output.extend(&bytes);
                    wire.in_flight.push_back((now, Pending::Chat(expect)));
                }
            }
            // The relay sent these believing the bus up; it hears otherwise with `Down`.
            (Kind::Commands, _) => {
                while let Some(command) = bus.next_command() {
                    match command.expect {
                        Expect::Nothing => {}
                        Expect::Published => ctx.stats.add(Metric::ChatBusDroppedDown, 1),
                        expect => bus.deliver(Inbound::Unanswered(expect)),
                    }
                }
            }
            (Kind::Subscriber, state) => {
                for (channel, on) in bus.take_subscriptions() {
                    let (changed, command, pending) = if on {
                        (
                            !self.channels.contains(&channel),
                            "SUBSCRIBE",
                            Pending::Subscribe,
                        )
                    } else {
                        let changed = self.channels.contains(&channel);
                        (changed, "UNSUBSCRIBE", Pending::Unsubscribe)
                    };
                    if !changed {
                        continue;
                    }
                    if let State::Ready { wire } = state {
                        wire.send(&[command.as_bytes(), channel.as_bytes()], pending, now);
                    }
                    if on {
                        self.channels.insert(channel);
                    } else {
                        self.channels.remove(&channel);
                    }
                }
            }
        }
    }

    /// Writes what waits, until the socket would block.
    fn flush(&mut self, ctx: &mut Context<'_>) {
        let Some(wire) = self.wire_mut() else {
            return;
        };
        if let Err(e) = wire.output.write_to(&mut wire.stream) {
            self.fail(Fault::Gone(format!("write: {e}")), ctx);
        }
    }

    /// Reads and handles every whole reply, until `WouldBlock`, the budget, or (the subscriber)
    /// a full inbox at the relay, which then gets its turn before this link reads again.
    fn read(&mut self, ctx: &mut Context<'_>) {
        if let Err(fault) = self.try_read(ctx) {
            self.fail(fault, ctx);
        }
    }

    fn try_read(&mut self, ctx: &mut Context<'_>) -> Result<(), Fault> {
        loop {
            self.take_frames(ctx)?;
            if self.paused(ctx) {
                // Given back: the loop calls this link again once the relay has had its turn.
                ctx.budget = 0;
                return Ok(());
            }
            if ctx.budget == 0 {
                return Ok(());
            }
            let Some(wire) = self.wire_mut() else {
                return Ok(());
            };
            let room = MAX_INPUT - (wire.input.len() - wire.start);
            if room == 0 {
                let limit = MAX_INPUT / 1024;
                return Err(Fault::Protocol(format!("a reply larger than {limit} KiB")));
            }
            let want = room.min(ctx.scratch.len());
            match wire.stream.read(&mut ctx.scratch[..want]) {
                Ok(0) => return Err(Fault::Gone("redis closed the connection".into())),
                Ok(n) => {
                    wire.input.extend_from_slice(&ctx.scratch[..n]);
                    wire.heard = ctx.now;
                    ctx.budget = ctx.budget.saturating_sub(n);
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if interrupted(&e) => {}
                Err(e) => return Err(Fault::Gone(format!("read: {e}"))),
            }
        }
    }

    /// Whether the subscriber must stop handing messages over until the relay catches up.
    fn paused(&self, ctx: &mut Context<'_>) -> bool {
        self.kind == Kind::Subscriber && ctx.bus.as_deref_mut().is_some_and(Exchange::inbox_full)
    }

    /// Handles every whole frame that has arrived.
    fn take_frames(&mut self, ctx: &mut Context<'_>) -> Result<(), Fault> {
        while !self.paused(ctx) {
            let Some(wire) = self.wire_mut() else {
                return Ok(());
            };
            let Some(frame) = wire.next_frame()? else {
                return Ok(());
            };
            self.on_frame(frame, ctx)?;
        }
        Ok(())
    }

    /// One frame from Redis: a message for the relay, or the reply to the oldest command.
    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<'_>) -> Result<(), Fault> {
        let frame = match self.kind {
            Kind::Subscriber => match into_message(frame) {
                Ok((channel, payload)) => {
                    if let Some(bus) = ctx.bus.as_deref_mut() {
                        bus.deliver(Inbound::Message { channel, payload });
                    }
                    return Ok(());
                }
                Err(frame) => frame,
            },
            Kind::Commands => frame,
        };
        let Some(wire) = self.wire_mut() else {
            return Ok(());
        };
        let Some((_, pending)) = wire.in_flight.pop_front() else {
            return Err(Fault::Protocol(format!("a reply to no command: {frame:?}")));
        };
        match pending {
            Pending::Hello(command) => {
                if let Frame::Error(refusal) = frame {
                    return Err(Fault::Protocol(format!(
                        "redis refused {command}: {refusal}"
                    )));
                }
                let answered = !wire
                    .in_flight
                    .iter()
                    .any(|(_, p)| matches!(p, Pending::Hello(_)));
                if answered && matches!(self.state, State::Handshake { .. }) {
                    self.become_ready(ctx);
                }
            }
            Pending::Ping if is_push(&frame, "pong") || resp::text(&frame) == Some("PONG") => {}
            Pending::Subscribe if is_push(&frame, "subscribe") => {}
            Pending::Unsubscribe if is_push(&frame, "unsubscribe") => {}
            Pending::Ping | Pending::Subscribe | Pending::Unsubscribe => {
                return Err(Fault::Protocol(format!("unexpected reply {frame:?}")));
            }
            Pending::Chat(expect) => answer(expect, frame, ctx),
        }
        Ok(())
    }
}

impl Handler for Link {
    /// Replies and messages have arrived, or the connection ended.
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Handshake { .. } | State::Ready { .. } => {
                self.read(ctx);
                // Replies make room in flight for more commands.
                self.take_work(ctx);
                self.flush(ctx);
            }
            // A connect reports by writable readiness (an error raises both, and is found there).
            State::Connecting { .. } => {}
            // No socket; a stale event of the one just closed.
            State::BackingOff { .. } => {}
        }
        KEEP
    }

    /// The connect ended, or the socket takes output again.
    fn on_writable(&mut self, ctx: &mut Context<'_>) -> Next {
        match &mut self.state {
            State::Connecting { stream, .. } => {
                // As mio's `TcpStream::connect` asks: a pending error means the connect failed;
                // a peer address means it succeeded; neither, that the event was spurious.
                match (stream.take_error(), stream.peer_addr()) {
                    (Ok(Some(e)) | Err(e), _) => {
                        self.fail(Fault::Gone(format!("connect: {e}")), ctx)
                    }
                    (Ok(None), Ok(_)) => self.start_handshake(ctx),
                    (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => {}
                    (Ok(None), Err(e)) => self.fail(Fault::Gone(format!("connect: {e}")), ctx),
                }
            }
            State::Handshake { .. } | State::Ready { .. } => {
                self.take_work(ctx);
                self.flush(ctx);
            }
            // No socket; a stale event of the one just closed.
            State::BackingOff { .. } => {}
        }
        KEEP
    }
}

/// [`Link::transition`], for a caller that must borrow other fields of the link meanwhile.
fn transition(state: &mut State, kind: Kind, ctx: &Context<'_>, next: impl FnOnce(State) -> State) {
    let before = state.name();
    // The placeholder is never seen: `next` replaces it before anything else runs.
    let old = mem::replace(state, State::BackingOff { until: ctx.now });
    *state = next(old);
    trace!("{} chat bus {kind} {before} -> {state}", Id(ctx.token));
}

/// A command is lost with its connection or its queue: a publish is counted as dropped, a
/// member waiting on an answer gets one from the relay.
fn abandon(expect: Expect, ctx: &mut Context<'_>) {
    match expect {
        Expect::Nothing => {}
        Expect::Published => ctx.stats.add(Metric::ChatBusDroppedDown, 1),
        expect => {
            if let Some(bus) = ctx.bus.as_deref_mut() {
                bus.deliver(Inbound::Unanswered(expect));
            }
        }
    }
}

/// Hands a reply to whoever waits on it: the link itself for publishes and the like, the relay
/// for the rest.
fn answer(expect: Expect, reply: Frame, ctx: &mut Context<'_>) {
    match (expect, reply) {
        (Expect::Nothing | Expect::Published, Frame::Error(refusal)) => {
            debug!(
                "{} chat bus: redis refused a command: {refusal}",
                Id(ctx.token)
            );
        }
        (Expect::Nothing, _) => {}
        (Expect::Published, _) => ctx.stats.add(Metric::ChatBusPublished, 1),
        (expect, reply) => {
            if let Some(bus) = ctx.bus.as_deref_mut() {
                bus.deliver(Inbound::Reply { expect, reply });
            }
        }
    }
}

/// A pub/sub message (`message`, channel, payload) taken apart, or the frame given back.
fn into_message(frame: Frame) -> Result<(Vec<u8>, Vec<u8>), Frame> {
    match frame {
        Frame::Array(parts) if parts.first().and_then(resp::text) == Some("message") => {
            match <[Frame; 3]>::try_from(parts) {
                Ok([_, Frame::BulkString(channel), Frame::BulkString(payload)]) => {
                    Ok((channel, payload))
                }
                Ok(parts) => Err(Frame::Array(parts.into())),
                Err(parts) => Err(Frame::Array(parts)),
            }
        }
        other => Err(other),
    }
}

/// Whether `frame` is a subscribe-mode push of `kind` (`subscribe`, `unsubscribe`, `pong`).
fn is_push(frame: &Frame, kind: &str) -> bool {
    matches!(frame, Frame::Array(parts) if parts.first().and_then(resp::text) == Some(kind))
}

#[cfg(test)]
mod tests;
