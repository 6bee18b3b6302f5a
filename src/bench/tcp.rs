//! What every TCP scenario shares: the states around a connection, and the TCP moves a client
//! makes (a non-blocking connect and how to tell it finished, reads and writes that end at
//! `WouldBlock`, interest changes, closing).
//!
//! ```text
//!   IDLE → CONNECTING → CONNECTED ──┐   the scenario's own states (EXCHANGING; REQUESTING, ...)
//!    │↑         ↓            ↓      │
//!    ↓│     BACKING-OFF ←────┘      │   an error: count it, wait, connect again
//!  SCHEDULED ←──────────────────────┘   the connection's work is done: close, connect again
//!   any state → FINISHED                load stopped, no ticket left, or nothing more to do
//! ```
//!
//! SCHEDULED is an open loop's: where a connection is the operation (connect, download), a
//! client whose next one is not due yet waits there for its due instant, socketless.
//!
//! A TCP client is a [`Connection`]: the states every one of them passes through ([`State`]) and
//! the one `transition` that changes them live here once, and a [`Protocol`] (`echo.rs`,
//! `connect.rs`, `download.rs`) adds only what is its own: whether it may connect, what it does
//! once connected, and when that waits too long. The rules are the server's (see
//! `event_loop.rs`): edge-triggered readiness means a drain runs until `WouldBlock`,
//! `Interrupted` is retried, and writable interest is registered only while output waits.

use std::fmt;
use std::io::{self, Read, Write};
use std::mem;
use std::time::Instant;

use log::trace;
use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;

use super::driver::{BACK_OFF, Client, Ctx, OPERATION_TIMEOUT};
use super::pace::{Pace, Start};
use super::report::{TIMEOUT, classify};
use crate::sys::{interrupted, would_block};

/// Why a connection is given up.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The socket failed; the kind comes from the error.
    Io(io::Error),
    /// The peer broke the protocol or closed early; the kind is named.
    Protocol(&'static str),
}

impl Failure {
    /// The error kind to count.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Io(err) => classify(err),
            Failure::Protocol(kind) => kind,
        }
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Failure::Io(err)
    }
}

/// Starts connecting to the target, registered for both directions: the connect's completion
/// is reported as writable, its failure as an error event.
///
/// # Errors
/// The connect failed at once (no local port, no descriptor), or registration failed.
pub(crate) fn connect(ctx: &Ctx<'_>) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(ctx.shared.target)?;
    ctx.registry.register(
        &mut stream,
        ctx.token,
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(stream)
}

/// Has the connect finished? `Ok(false)`: not yet (the event was spurious, or stale).
///
/// mio's `TcpStream::connect` documents the test: a pending socket error means failure, and a
/// peer address means success.
///
/// # Errors
/// The connect failed (refused, unreachable, reset).
pub(crate) fn connect_finished(stream: &TcpStream) -> io::Result<bool> {
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    match stream.peer_addr() {
        Ok(_) => {
            // Small request/response exchanges must not wait for delayed ACKs (Nagle).
            stream.set_nodelay(true)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotConnected || would_block(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads once, retrying `Interrupted`: `Ok(None)` when drained (`WouldBlock`), `Ok(Some(0))` at
/// the peer's FIN.
///
/// # Errors
/// Any other error of `read`.
pub(crate) fn read(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `buf` as the socket takes now; 0 when it takes nothing (`WouldBlock`).
///
/// # Errors
/// Any other error of `write` (`EPIPE`, `ECONNRESET`).
pub(crate) fn write(stream: &mut TcpStream, mut buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                buf = &buf[n..];
            }
            Err(e) if would_block(&e) => break,
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Registers for readable, plus writable when `writable`.
///
/// # Errors
/// The reregistration failed.
pub(crate) fn set_writable(
    stream: &mut TcpStream,
    ctx: &Ctx<'_>,
    writable: bool,
) -> io::Result<()> {
    let interest = if writable {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    ctx.registry.reregister(stream, ctx.token, interest)
}

/// Deregisters and closes.
pub(crate) fn close(mut stream: TcpStream, ctx: &Ctx<'_>) {
    // Closing removes the socket from epoll anyway; deregistering first keeps the registry
    // consistent on every platform. Its failure changes nothing for a socket being closed.
    let _ = ctx.registry.deregister(&mut stream);
}

/// What a TCP scenario adds to the states every TCP client shares.
pub(crate) trait Protocol {
    /// The service word in trace lines: `echo`, `connect`, `download`.
    const SERVICE: &'static str;

    /// The scenario's own states while connected; [`State::Connected`] keeps the socket beside
    /// them.
    type Session: Session;

    /// May a new connection start, and when? Where a connection is the operation, this takes
    /// its `--requests` ticket and its place in an open loop's timetable.
    fn may_connect(&mut self, ctx: &mut Ctx<'_>) -> Go;

    /// The connect that began at `since` finished: the session's first state.
    fn open(&mut self, since: Instant, ctx: &Ctx<'_>) -> Self::Session;

    /// Does the I/O `session` calls for, until it must wait for readiness or has moved on.
    ///
    /// # Errors
    /// The connection failed: the client counts the failure and backs off.
    fn advance(
        &mut self,
        stream: &mut TcpStream,
        session: &mut Self::Session,
        ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Self::Session>, Failure>;

    /// The wake-up the session asked for has come (an open loop's next message is due): does
    /// what is due. By default a session asks for none, and this does nothing.
    ///
    /// # Errors
    /// The connection failed: the client counts the failure and backs off.
    fn on_timer(
        &mut self,
        _stream: &mut TcpStream,
        _session: &mut Self::Session,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Self::Session>, Failure> {
        Ok(Outcome::Wait)
    }

    /// The load stopped: an open loop counts what was due and never started.
    fn stopped(&mut self, ctx: &mut Ctx<'_>);
}

/// Whether a client may start a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Go {
    /// Connect now.
    Now,
    /// Not yet: an open loop's next connection is due at this instant.
    At(Instant),
    /// No: the load stopped, or the `--requests` are spent.
    Never,
}

/// For a protocol whose connection is the operation (connect, download): may the next start?
/// If so it takes its `--requests` ticket and its place in the timetable, and comes with the
/// instant its latency counts from (now, or in an open loop when it was due); if not, it is
/// the [`Go`] to answer.
pub(crate) fn next_operation(pace: &mut Pace, ctx: &mut Ctx<'_>) -> Result<Instant, Go> {
    match pace.next(0, ctx) {
        Start::Now(due) if ctx.take_ticket() => {
            pace.started(ctx);
            Ok(due)
        }
        Start::At(at) if !ctx.stopping && !ctx.shared.tickets.exhausted() => Err(Go::At(at)),
        // The load stopped or the tickets are spent; and with nothing in flight, never full.
        Start::Now(_) | Start::At(_) | Start::Full => Err(Go::Never),
    }
}

/// A scenario's state while connected.
pub(crate) trait Session {
    /// The state's name, as the scenario's diagram spells it.
    fn name(&self) -> &'static str;

    /// When waiting in this state times out: the server sent (or took) nothing for too long.
    /// `None` while nothing is owed.
    fn deadline(&self) -> Option<Instant>;
}

/// Where a step of a session leads.
#[derive(Debug)]
pub(crate) enum Outcome<S> {
    /// Wait for the next readiness event.
    Wait,
    /// On to state `S` on the same connection, whose I/O starts at once.
    Next(S),
    /// The connection's work is done: close it and connect again.
    Done,
    /// Nothing more to do in this run: no new operation may start (the load stopped, or the
    /// `--requests` are spent) and nothing is owed.
    Finished,
}

/// Where a TCP client is.
#[derive(Debug)]
pub(crate) enum State<S> {
    /// Not started, or between two connections. IDLE never outlasts the call that enters it:
    /// the driver starts every client before its first poll, and a connection whose work is
    /// done goes on to connect again in the same call. No event, tick, stop or close finds it.
    Idle,
    /// Waiting for the connect to finish.
    Connecting {
        stream: TcpStream,
        /// When the connect started, where a connection's operation starts; the connect times
        /// out [`OPERATION_TIMEOUT`] later.
        since: Instant,
    },
    /// Connected: in one of the scenario's states, which names this one.
    Connected { stream: TcpStream, session: S },
    /// An open loop's next connection is due at `at`; no socket until then.
    Scheduled { at: Instant },
    /// After an error: connect again at `until`.
    BackingOff { until: Instant },
    /// Done for this run; the socket is closed.
    Finished,
}

impl<S: Session> State<S> {
    /// The name the diagrams use; a connected client goes by its scenario's state.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "IDLE",
            State::Connecting { .. } => "CONNECTING",
            State::Connected { session, .. } => session.name(),
            State::Scheduled { .. } => "SCHEDULED",
            State::BackingOff { .. } => "BACKING-OFF",
            State::Finished => "FINISHED",
        }
    }

    /// The socket this state holds: CONNECTING's and CONNECTED's.
    fn into_socket(self) -> Option<TcpStream> {
        match self {
            State::Connecting { stream, .. } | State::Connected { stream, .. } => Some(stream),
            State::Idle | State::Scheduled { .. } | State::BackingOff { .. } | State::Finished => {
                None
            }
        }
    }
}

impl<S: Session> fmt::Display for State<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One TCP client: the shared states, around what protocol `P` does once connected.
#[derive(Debug)]
pub(crate) struct Connection<P: Protocol> {
    protocol: P,
    state: State<P::Session>,
}

impl<P: Protocol> Connection<P> {
    pub fn new(protocol: P) -> Connection<P> {
        Connection {
            protocol,
            state: State::Idle,
        }
    }

    /// The one place the state changes. `next` builds the new state and may take the old
    /// state's socket; a socket it leaves behind is closed here, so no transition leaks one.
    fn transition(
        &mut self,
        ctx: &Ctx<'_>,
        next: impl FnOnce(&mut Option<TcpStream>) -> State<P::Session>,
    ) {
        let old = mem::replace(&mut self.state, State::Finished);
        let from = old.name();
        let mut socket = old.into_socket();
        self.state = next(&mut socket);
        if let Some(stream) = socket {
            close(stream, ctx);
        }
        trace!(
            "bench {}/{} {} {from} -> {}",
            ctx.thread,
            ctx.token.0,
            P::SERVICE,
            self.state
        );
    }

    /// IDLE, SCHEDULED or BACKING-OFF → CONNECTING; → BACKING-OFF if the connect fails at
    /// once, SCHEDULED if the next connection is not due yet, or FINISHED if the protocol may
    /// not connect again.
    fn start_connecting(&mut self, ctx: &mut Ctx<'_>) {
        match self.protocol.may_connect(ctx) {
            Go::Now => match connect(ctx) {
                Ok(stream) => {
                    let since = ctx.now;
                    self.transition(ctx, |_| State::Connecting { stream, since });
                }
                Err(err) => self.connect_failed(err, ctx),
            },
            Go::At(at) => {
                self.transition(ctx, |_| State::Scheduled { at });
                ctx.wake_at(at);
            }
            Go::Never => self.finish(ctx),
        }
    }

    /// CONNECTING → CONNECTED, in the session's first state. Its I/O starts at once: the socket
    /// is registered for both directions, so a first write needs no further event.
    fn open(&mut self, since: Instant, ctx: &mut Ctx<'_>) {
        ctx.reached();
        let session = self.protocol.open(since, ctx);
        self.enter(session, ctx);
        self.advance(ctx);
    }

    /// CONNECTING or CONNECTED → CONNECTED in `session`, on the same socket.
    fn enter(&mut self, session: P::Session, ctx: &Ctx<'_>) {
        self.transition(ctx, |socket| match socket.take() {
            Some(stream) => State::Connected { stream, session },
            None => {
                // `open` (from CONNECTING) and `advance` (in CONNECTED) are the only callers,
                // and both states hold the socket.
                debug_assert!(false, "{}: {} without a socket", P::SERVICE, session.name());
                State::Finished
            }
        });
    }

    /// CONNECTED: the session's I/O, and wherever it leads.
    fn advance(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let State::Connected { stream, session } = &mut self.state else {
                // Called on an event in CONNECTED and from `open`, which has just entered it;
                // `Next` stays there.
                debug_assert!(false, "{}: advance in {}", P::SERVICE, self.state);
                return;
            };
            let outcome = self.protocol.advance(stream, session, ctx);
            if !self.follow(outcome, ctx) {
                return;
            }
        }
    }

    /// Goes where a step of the session leads; `true` when that is a new state of the session,
    /// whose I/O starts at once.
    fn follow(&mut self, outcome: Result<Outcome<P::Session>, Failure>, ctx: &mut Ctx<'_>) -> bool {
        match outcome {
            Ok(Outcome::Wait) => return false,
            Ok(Outcome::Next(next)) => {
                self.enter(next, ctx);
                return true;
            }
            Ok(Outcome::Done) => self.reconnect(ctx),
            Ok(Outcome::Finished) => self.finish(ctx),
            Err(failure) => self.fail(failure, ctx),
        }
        false
    }

    /// CONNECTED → IDLE → CONNECTING (or SCHEDULED): the connection's work is done; the next
    /// one starts, or waits for its due instant.
    fn reconnect(&mut self, ctx: &mut Ctx<'_>) {
        self.transition(ctx, |_| State::Idle);
        self.start_connecting(ctx);
    }

    /// → BACKING-OFF after a connect that failed (or timed out): counted as a failed connect,
    /// which tells an unreachable target from a busy one.
    fn connect_failed(&mut self, err: io::Error, ctx: &mut Ctx<'_>) {
        ctx.connect_failed(err);
        self.back_off(ctx);
    }

    /// CONNECTED → BACKING-OFF, counting the failure by its kind.
    fn fail(&mut self, failure: Failure, ctx: &mut Ctx<'_>) {
        ctx.error(failure.kind());
        self.back_off(ctx);
    }

    /// → BACKING-OFF; the socket is closed.
    fn back_off(&mut self, ctx: &Ctx<'_>) {
        let until = ctx.now + BACK_OFF;
        self.transition(ctx, |_| State::BackingOff { until });
    }

    /// → FINISHED; the socket is closed.
    fn finish(&mut self, ctx: &Ctx<'_>) {
        self.transition(ctx, |_| State::Finished);
    }
}

/// What a state-machine test looks at.
#[cfg(test)]
impl<P: Protocol> Connection<P> {
    pub fn state(&self) -> &State<P::Session> {
        &self.state
    }

    pub fn protocol(&self) -> &P {
        &self.protocol
    }
}

impl<P: Protocol> Client for Connection<P> {
    fn start(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            State::Idle => self.start_connecting(ctx),
            // The driver starts each client once, before anything else.
            State::Connecting { .. }
            | State::Connected { .. }
            | State::Scheduled { .. }
            | State::BackingOff { .. }
            | State::Finished => {
                debug_assert!(false, "{}: started again in {}", P::SERVICE, self.state)
            }
        }
    }

    fn on_event(&mut self, _event: &Event, ctx: &mut Ctx<'_>) {
        match &mut self.state {
            State::Connecting { stream, since } => match connect_finished(stream) {
                Ok(true) => {
                    let since = *since;
                    self.open(since, ctx);
                }
                // Spurious, or left over from this token's previous socket.
                Ok(false) => {}
                Err(err) => self.connect_failed(err, ctx),
            },
            State::Connected { .. } => self.advance(ctx),
            // No socket: an event left over from a socket closed earlier in this batch.
            State::Scheduled { .. } | State::BackingOff { .. } | State::Finished => {}
            // See `State::Idle`.
            State::Idle => debug_assert!(false, "{}: an event found IDLE", P::SERVICE),
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Connecting { since, .. } if ctx.now >= *since + OPERATION_TIMEOUT => {
                let err = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {OPERATION_TIMEOUT:?}"),
                );
                self.connect_failed(err, ctx);
            }
            State::Connected { session, .. }
                if session.deadline().is_some_and(|d| ctx.now >= d) =>
            {
                self.fail(Failure::Protocol(TIMEOUT), ctx)
            }
            State::BackingOff { until } if ctx.now >= *until => self.start_connecting(ctx),
            // Not due yet, or nothing to time; SCHEDULED is woken by its timer, on the dot.
            State::Connecting { .. }
            | State::Connected { .. }
            | State::Scheduled { .. }
            | State::BackingOff { .. }
            | State::Finished => {}
            // See `State::Idle`.
            State::Idle => debug_assert!(false, "{}: a tick found IDLE", P::SERVICE),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        match &mut self.state {
            State::Scheduled { at } if ctx.now >= *at => self.start_connecting(ctx),
            State::Connected { stream, session } => {
                let outcome = self.protocol.on_timer(stream, session, ctx);
                if self.follow(outcome, ctx) {
                    self.advance(ctx);
                }
            }
            // Early, or asked for by a state since left (the wake-up is then stale).
            State::Scheduled { .. }
            | State::Connecting { .. }
            | State::BackingOff { .. }
            | State::Finished => {}
            // See `State::Idle`.
            State::Idle => debug_assert!(false, "{}: a wake-up found IDLE", P::SERVICE),
        }
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            // A connection in progress is abandoned: it belongs to no measured interval (the
            // bytes a download received so far are counted already).
            State::Connecting { .. }
            | State::Connected { .. }
            | State::Scheduled { .. }
            | State::BackingOff { .. } => {
                self.protocol.stopped(ctx);
                self.finish(ctx)
            }
            // Finished before the load stopped: nothing was left due.
            State::Finished => {}
            // See `State::Idle`. Finishing is still right: nothing is in progress.
            State::Idle => {
                debug_assert!(false, "{}: the stop found IDLE", P::SERVICE);
                self.finish(ctx);
            }
        }
    }

    /// Stopping closes the socket, and a TCP client has no goodbye to say: the same move.
    /// Usually finished already, as the driver stops the load before it ends the thread.
    fn close(&mut self, ctx: &mut Ctx<'_>) {
        self.on_stop(ctx);
    }

    fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::bench::driver::harness::{Harness, closed_port, leftover_event, serve_one};
    use crate::bench::report::{CLOSED, MISMATCH, REFUSED, Tally};

    /// A protocol to drive the shared states with. Once connected it reads one byte per step,
    /// and each byte is a command: `n` moves on to the next state, `d` completes an operation
    /// (the connection's work is done), `f` finishes, anything else is a mismatch. A connection
    /// takes a ticket; with `due` set, none is made before that instant (an open loop's
    /// timetable, reduced to one entry).
    #[derive(Debug)]
    struct Script {
        due: Option<Instant>,
        /// Times the load's stop reached the protocol.
        stops: usize,
    }

    const SCRIPT: Script = Script {
        due: None,
        stops: 0,
    };

    /// The script's connected states: FIRST, and SECOND after an `n`.
    #[derive(Debug)]
    enum Step {
        First { since: Instant },
        Second { since: Instant },
    }

    impl Session for Step {
        fn name(&self) -> &'static str {
            match self {
                Step::First { .. } => "FIRST",
                Step::Second { .. } => "SECOND",
            }
        }

        fn deadline(&self) -> Option<Instant> {
            match self {
                Step::First { since } | Step::Second { since } => Some(*since + OPERATION_TIMEOUT),
            }
        }
    }

    impl Protocol for Script {
        const SERVICE: &'static str = "script";

        type Session = Step;

        fn may_connect(&mut self, ctx: &mut Ctx<'_>) -> Go {
            match self.due {
                Some(at) if ctx.now < at && !ctx.stopping => Go::At(at),
                _ if ctx.take_ticket() => Go::Now,
                _ => Go::Never,
            }
        }

        fn open(&mut self, since: Instant, _ctx: &Ctx<'_>) -> Step {
            Step::First { since }
        }

        fn stopped(&mut self, _ctx: &mut Ctx<'_>) {
            self.stops += 1;
        }

        fn advance(
            &mut self,
            stream: &mut TcpStream,
            step: &mut Step,
            ctx: &mut Ctx<'_>,
        ) -> Result<Outcome<Step>, Failure> {
            let (Step::First { since } | Step::Second { since }) = *step;
            let Some(n) = read(stream, &mut ctx.scratch[..1])? else {
                return Ok(Outcome::Wait);
            };
            match (n, ctx.scratch[0]) {
                (0, _) => Err(Failure::Protocol(CLOSED)),
                (_, b'n') => Ok(Outcome::Next(Step::Second { since })),
                (_, b'd') => {
                    ctx.complete(since, 0);
                    Ok(Outcome::Done)
                }
                (_, b'f') => Ok(Outcome::Finished),
                _ => Err(Failure::Protocol(MISMATCH)),
            }
        }
    }

    /// Accepts one connection, sends `script` in one write, and then reads until the client
    /// closes (or a few seconds pass).
    fn server(script: &'static [u8]) -> SocketAddr {
        serve_one(move |mut stream| {
            let _ = stream.write_all(script);
            let _ = stream.read_to_end(&mut Vec::new());
        })
    }

    fn is(state: &'static str) -> impl Fn(&Connection<Script>, &Tally) -> bool {
        move |c, _| c.state.name() == state
    }

    /// A client in CONNECTING (its connect may already have finished, unseen).
    fn connecting(h: &mut Harness) -> Connection<Script> {
        let mut client = Connection::new(SCRIPT);
        client.start(&mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "CONNECTING");
        client
    }

    /// A client connected to a server that sent `script`, once it reaches `state`.
    fn connected(script: &'static [u8], state: &'static str) -> (Harness, Connection<Script>) {
        let mut h = Harness::new(server(script), None);
        let mut client = connecting(&mut h);
        h.run_until(&mut client, state, is(state));
        (h, client)
    }

    /// A client in BACKING-OFF after a timed-out connect, and when it may connect again.
    fn backing_off(h: &mut Harness) -> (Connection<Script>, Instant) {
        let mut client = connecting(h);
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        let State::BackingOff { until } = client.state else {
            panic!("expected BACKING-OFF, got {}", client.state);
        };
        (client, until)
    }

    /// A client that started once the load had stopped, so it found no ticket.
    fn finished(h: &mut Harness) -> Connection<Script> {
        let mut client = Connection::new(SCRIPT);
        h.stopping = true;
        client.start(&mut h.ctx(Instant::now()));
        h.stopping = false;
        assert!(client.is_finished());
        client
    }

    // ---- IDLE ----
    //
    // IDLE never outlasts the call that enters it (see `State::Idle`), so an event, a tick, a
    // stop or a close that finds it is a bug, asserted in debug builds; the first is shown.

    #[test]
    fn idle_starts_by_connecting() {
        let mut h = Harness::new(server(b""), None);
        connecting(&mut h);
    }

    #[test]
    fn idle_with_no_ticket_left_finishes_at_once() {
        let mut h = Harness::new(server(b""), Some(1));
        finished(&mut h);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "an event found IDLE")]
    fn an_event_that_finds_idle_is_a_bug() {
        let mut h = Harness::new(closed_port(), None);
        Connection::new(SCRIPT).on_event(&leftover_event(), &mut h.ctx(Instant::now()));
    }

    // ---- CONNECTING ----
    //
    // An event while the connect is pending (spurious, or left over from the previous socket)
    // has no test: on loopback the connect finishes before a test could deliver one. The arm
    // asks the socket and changes nothing.

    #[test]
    fn connecting_to_a_listener_enters_the_first_state_and_counts_the_target_reached() {
        let (h, _) = connected(b"", "FIRST");
        assert!(h.tally.reached);
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    #[test]
    fn a_refused_connect_is_counted_as_a_failed_connect_and_backs_off() {
        let mut h = Harness::new(closed_port(), None);
        let mut client = connecting(&mut h);
        h.run_until(&mut client, "BACKING-OFF", is("BACKING-OFF"));
        assert_eq!(h.tally.errors.get(REFUSED), Some(&1));
        assert!(!h.tally.reached);
        assert!(h.tally.first_failure.is_some());
    }

    #[test]
    fn connecting_times_out_after_the_operation_timeout() {
        let mut h = Harness::new(server(b""), None);
        let mut client = connecting(&mut h);
        client.on_tick(&mut h.ctx(Instant::now() + Duration::from_secs(1)));
        assert_eq!(client.state.name(), "CONNECTING", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
        assert!(h.tally.first_failure.is_some(), "a failed connect");
    }

    // ---- CONNECTED ----

    #[test]
    fn connected_waits_while_the_server_is_silent() {
        let (mut h, mut client) = connected(b"", "FIRST");
        client.on_event(&leftover_event(), &mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "FIRST");
    }

    #[test]
    fn next_moves_on_within_the_connection_and_goes_on_at_once() {
        // One event carries both bytes: SECOND reads the `f` without waiting for another.
        let (h, client) = connected(b"nf", "FINISHED");
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
        assert_eq!(client.state.name(), "FINISHED");
    }

    #[test]
    fn next_keeps_the_connection() {
        let (mut h, mut client) = connected(b"n", "SECOND");
        client.on_event(&leftover_event(), &mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "SECOND", "still connected, waiting");
    }

    #[test]
    fn done_closes_the_connection_and_connects_again_at_once() {
        let mut h = Harness::new(server(b"d"), None);
        let mut client = connecting(&mut h);
        h.run_until(&mut client, "one operation", |_, t| t.operations == 1);
        assert_eq!(client.state.name(), "CONNECTING");
        assert_eq!(h.tally.latency.len(), 1);
    }

    #[test]
    fn done_with_no_ticket_left_finishes() {
        let mut h = Harness::new(server(b"d"), Some(1));
        let mut client = connecting(&mut h);
        h.run_until(&mut client, "FINISHED", is("FINISHED"));
        assert_eq!(h.tally.operations, 1);
    }

    #[test]
    fn finished_by_the_protocol_closes_the_connection() {
        let (h, client) = connected(b"f", "FINISHED");
        assert!(client.is_finished());
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    #[test]
    fn a_failure_is_counted_by_kind_and_backs_off() {
        let (h, _) = connected(b"x", "BACKING-OFF");
        assert_eq!(h.tally.errors.get(MISMATCH), Some(&1));
        assert!(h.tally.first_failure.is_none(), "not a failed connect");
    }

    #[test]
    fn connected_times_out_at_the_sessions_deadline() {
        let (mut h, mut client) = connected(b"", "FIRST");
        client.on_tick(&mut h.ctx(Instant::now() + Duration::from_secs(1)));
        assert_eq!(client.state.name(), "FIRST", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
        assert!(h.tally.first_failure.is_none(), "not a failed connect");
    }

    // ---- BACKING-OFF ----

    #[test]
    fn backing_off_reconnects_once_due_and_not_before() {
        let mut h = Harness::new(server(b""), None);
        let (mut client, until) = backing_off(&mut h);
        client.on_tick(&mut h.ctx(until - Duration::from_millis(1)));
        assert_eq!(client.state.name(), "BACKING-OFF");
        client.on_tick(&mut h.ctx(until));
        assert_eq!(client.state.name(), "CONNECTING");
    }

    #[test]
    fn backing_off_with_no_ticket_left_finishes_once_due() {
        let mut h = Harness::new(server(b""), Some(1));
        let (mut client, until) = backing_off(&mut h);
        client.on_tick(&mut h.ctx(until));
        assert!(client.is_finished());
    }

    /// BACKING-OFF and FINISHED hold no socket, so an event for their token can only be a
    /// leftover of the previous socket.
    #[test]
    fn a_leftover_event_without_a_socket_changes_nothing() {
        let mut h = Harness::new(server(b""), None);
        let (mut client, _) = backing_off(&mut h);
        let mut finished = finished(&mut h);
        let event = leftover_event();
        client.on_event(&event, &mut h.ctx(Instant::now()));
        finished.on_event(&event, &mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert!(finished.is_finished());
        assert!(h.tally.errors.get(TIMEOUT) == Some(&1) && h.tally.errors.len() == 1);
    }

    // ---- SCHEDULED ----

    /// A client whose next connection is due 50 ms from now, and that instant.
    fn scheduled(h: &mut Harness) -> (Connection<Script>, Instant) {
        let at = Instant::now() + Duration::from_millis(50);
        let mut client = Connection::new(Script {
            due: Some(at),
            stops: 0,
        });
        h.call(&mut client, Instant::now(), Connection::start);
        assert_eq!(client.state.name(), "SCHEDULED");
        (client, at)
    }

    #[test]
    fn a_connection_not_due_yet_waits_socketless_and_asks_for_a_wake_up() {
        let mut h = Harness::new(server(b""), None);
        let (client, at) = scheduled(&mut h);
        assert_eq!(h.wake, Some(at));
        assert!(client.state.into_socket().is_none());
    }

    #[test]
    fn scheduled_connects_when_woken_once_due_and_not_before() {
        let mut h = Harness::new(server(b""), None);
        let (mut client, at) = scheduled(&mut h);
        client.on_timer(&mut h.ctx(at - Duration::from_millis(1)));
        assert_eq!(
            client.state.name(),
            "SCHEDULED",
            "a wake-up that came early"
        );
        client.on_timer(&mut h.ctx(at));
        assert_eq!(client.state.name(), "CONNECTING");
    }

    /// Ticks and leftover events find no socket and no deadline: only the wake-up moves it.
    #[test]
    fn scheduled_ignores_ticks_and_leftover_events() {
        let mut h = Harness::new(server(b""), None);
        let (mut client, at) = scheduled(&mut h);
        client.on_tick(&mut h.ctx(at + OPERATION_TIMEOUT));
        client.on_event(&leftover_event(), &mut h.ctx(at));
        assert_eq!(client.state.name(), "SCHEDULED");
    }

    #[test]
    fn the_next_connection_of_an_open_loop_is_scheduled_when_one_is_done() {
        let mut h = Harness::new(server(b"d"), None);
        let at = Instant::now() + Duration::from_secs(30);
        let mut client = Connection::new(SCRIPT);
        h.call(&mut client, Instant::now(), Connection::start);
        client.protocol.due = Some(at);
        h.run_until(&mut client, "SCHEDULED", is("SCHEDULED"));
        assert_eq!(h.tally.operations, 1);
        assert_eq!(h.wake, Some(at));
    }

    #[test]
    fn a_wake_up_in_a_state_since_left_changes_nothing() {
        let mut h = Harness::new(server(b""), None);
        let (mut backing_off, until) = backing_off(&mut h);
        backing_off.on_timer(&mut h.ctx(until));
        assert_eq!(backing_off.state.name(), "BACKING-OFF");
        let mut connecting = connecting(&mut h);
        connecting.on_timer(&mut h.ctx(Instant::now()));
        assert_eq!(connecting.state.name(), "CONNECTING");
    }

    #[test]
    fn a_wake_up_while_connected_goes_to_the_session() {
        // The script's session asks for no wake-up, so by default the timer changes nothing.
        let (mut h, mut client) = connected(b"", "FIRST");
        client.on_timer(&mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "FIRST");
    }

    // ---- FINISHED ----

    #[test]
    fn finished_stays_finished_whatever_comes() {
        let mut h = Harness::new(server(b""), None);
        let mut client = finished(&mut h);
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        client.on_timer(&mut h.ctx(Instant::now()));
        client.on_stop(&mut h.ctx(Instant::now()));
        client.close(&mut h.ctx(Instant::now()));
        assert!(client.is_finished());
        assert_eq!(client.protocol.stops, 0, "nothing was in progress");
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    // ---- stopping and closing, from every state ----

    /// Stopping also tells the protocol once, so an open loop can count what it never started.
    #[test]
    fn stop_and_close_finish_every_state() {
        let mut h = Harness::new(server(b""), None);
        let mut connecting = connecting(&mut h);
        let (mut backing_off, _) = backing_off(&mut h);
        let (mut scheduled, _) = scheduled(&mut h);
        let (mut h2, mut connected) = connected(b"", "FIRST");
        for client in [&mut connecting, &mut backing_off, &mut scheduled] {
            client.on_stop(&mut h.ctx(Instant::now()));
            client.close(&mut h.ctx(Instant::now()));
            assert!(client.is_finished());
            assert_eq!(client.protocol.stops, 1);
        }
        connected.close(&mut h2.ctx(Instant::now()));
        assert!(connected.is_finished());
        assert_eq!(connected.protocol.stops, 1);
    }
}
