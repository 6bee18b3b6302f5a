//! TCP echo, RFC 862: every byte a client sends comes back, unchanged and in order.
//!
//! One [`Connection`] per client, an explicit state machine:
//!
//! ```text
//!   OPEN ⇄ THROTTLED              reading and echoing; paused while the client is slow to read
//!   OPEN → HALF-CLOSED            the client sent FIN: deliver what is owed, then close
//!   OPEN → DRAINING → LINGERING   the server is shutting down: echo until the client is quiet,
//!                                 send FIN, then discard input until the client's FIN
//! ```
//!
//! Input is read into the loop's shared scratch buffer and written straight back; only what the
//! socket refuses is copied into the connection's own [`Buffer`]. When that reaches the high-water
//! mark the connection stops reading (THROTTLED), so a client that sends without reading is held
//! to one bounded buffer while TCP flow control pushes back on it.
//!
//! An echo stream has no request boundary, so at shutdown "finish what you started" means: keep
//! reading and echoing (DRAINING) until the connection is quiet, then send FIN. Quiet is nothing
//! owed, nothing waiting to be read, and nothing received for `--request-grace`: the pause is what
//! tells a client that has finished from one whose next bytes are simply not here yet (the same
//! rule ends a download request that lacks its newline). A client that half-closes is served as in
//! OPEN, and one that never goes quiet is closed by the loop when the shutdown grace ends.
//! `docs/DESIGN.md` draws the full state diagram.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Instant;

use log::trace;
use mio::Interest;

use super::{Context, Handler, KEEP, Next, Settings, Stream, discard_input, io_failure};
use crate::buffer::{Buffer, Watermarks, write_ready};
use crate::stats::{CloseReason, Metric, ServiceId, ServiceMetric};
use crate::sys::counted::TcpStream;
use crate::sys::{interrupted, would_block};
use crate::token::Id;

/// Where an echo connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading input and echoing it; less than the high-water mark is owed.
    Open,
    /// The high-water mark is owed: reading is paused until output drains below the low mark.
    Throttled,
    /// The client sent FIN (a zero-length read): deliver what is owed, then close.
    HalfClosed,
    /// The server is shutting down: keep reading and echoing, but read only while nothing is
    /// owed; once quiet (nothing owed, nothing waiting, nothing received for `--request-grace`),
    /// send FIN.
    Draining,
    /// FIN sent: discard input until the client's FIN or the deadline, so that closing with
    /// unread input does not make the kernel send RST over output the client has not read.
    Lingering {
        /// When to stop waiting for the client's FIN.
        until: Instant,
    },
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Open => "OPEN",
            State::Throttled => "THROTTLED",
            State::HalfClosed => "HALF-CLOSED",
            State::Draining => "DRAINING",
            State::Lingering { .. } => "LINGERING",
        })
    }
}

/// One echo client.
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    stream: S,
    state: State,
    /// Echoed bytes the socket has not taken yet. Empty (and unallocated) in
    /// [`State::Open`] and [`State::Draining`] most of the time; never empty in THROTTLED and
    /// HALF-CLOSED.
    owed: Buffer,
    /// When the connection counts as idle: pushed forward whenever a byte moves.
    idle_deadline: Instant,
    /// When the client counts as having paused: `--request-grace` after its last input (or after
    /// the accept). Only DRAINING asks, to tell a finished stream from one still under way.
    pause_deadline: Instant,
}

impl Connection<TcpStream> {
    /// The socket, for registration.
    pub fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The client's address, asked of the socket: storing it would cost every idle connection
    /// 32 bytes for the sake of the rare listing.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }
}

impl<S: Stream> Connection<S> {
    /// A new client, open and owing nothing.
    pub fn new(stream: S, now: Instant, settings: &Settings) -> Self {
        Connection {
            stream,
            state: State::Open,
            owed: Buffer::new(),
            idle_deadline: now + settings.idle_timeout,
            pause_deadline: now + settings.request_grace,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes echoed but not yet taken by the socket.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Readable in OPEN (to echo), in DRAINING while nothing is owed (to echo, or to find it quiet)
    /// and in LINGERING (to discard); writable only while bytes are owed.
    pub fn interest(&self) -> Interest {
        match self.state {
            State::Open if self.owed.is_empty() => Interest::READABLE,
            State::Open => Interest::READABLE | Interest::WRITABLE,
            State::Draining if self.owed.is_empty() => Interest::READABLE,
            State::Throttled | State::HalfClosed | State::Draining => Interest::WRITABLE,
            State::Lingering { .. } => Interest::READABLE,
        }
    }

    /// The idle deadline; in DRAINING with nothing owed, the end of the client's pause; in
    /// LINGERING, the end of lingering.
    pub fn deadline(&self) -> Instant {
        match self.state {
            State::Draining if self.owed.is_empty() => self.pause_deadline,
            State::Open | State::Throttled | State::HalfClosed | State::Draining => {
                self.idle_deadline
            }
            State::Lingering { until } => until,
        }
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            // No byte moved for the idle timeout, in either direction.
            State::Open | State::Throttled | State::HalfClosed => {
                ControlFlow::Break(CloseReason::Idle)
            }
            // The client paused: one last read proves it quiet, or finds more to echo.
            State::Draining if self.owed.is_empty() => self.read_again(ctx),
            // The client left its echo unread for the idle timeout.
            State::Draining => ControlFlow::Break(CloseReason::Idle),
            // The client never sent FIN; its unread input no longer matters.
            State::Lingering { .. } => ControlFlow::Break(CloseReason::Shutdown),
        }
    }

    /// The server is shutting down.
    pub fn on_shutdown(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            // Busy or idle alike: echo until quiet; a client already silent is quiet at once.
            State::Open | State::Throttled => self.start_draining(ctx),
            // Already finishing: the client's FIN or the server's ends the stream.
            State::HalfClosed | State::Draining | State::Lingering { .. } => KEEP,
        }
    }

    /// OPEN: reads and echoes; the high-water mark pauses reading, the client's FIN ends it.
    fn read_and_echo(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.echo_input(ctx) {
            // The next byte to arrive raises a new edge.
            Ok(Stop::Drained) => KEEP,
            // Input may still wait; the loop resumes this connection after the rest of the batch.
            Ok(Stop::BudgetSpent) => KEEP,
            Ok(Stop::Full) => self.start_throttling(ctx),
            Ok(Stop::Fin) => self.finish_input(ctx),
            Err(e) => self.fail(e, ctx),
        }
    }

    /// DRAINING: reads and echoes, only while nothing is owed, until the connection is quiet.
    fn read_until_quiet(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.echo_input(ctx) {
            // Nothing waits to be read, nothing is owed, and the client has paused: finished.
            Ok(Stop::Drained) if self.is_quiet(ctx.now) => self.start_lingering(ctx),
            // Part of the last echo is owed: the flush that delivers it reads again.
            Ok(Stop::Drained) if !self.owed.is_empty() => KEEP,
            // The client's pause is too short yet to call: its deadline reads again.
            Ok(Stop::Drained) => KEEP,
            // An echo is owed, so reading waits: the flush that delivers it reads again.
            Ok(Stop::Full) => KEEP,
            // Input may still wait; the loop resumes this connection after the rest of the batch.
            Ok(Stop::BudgetSpent) => KEEP,
            Ok(Stop::Fin) => self.finish_input(ctx),
            Err(e) => self.fail(e, ctx),
        }
    }

    /// DRAINING with nothing owed: reads at once, to `WouldBlock`. Input that waited while reading
    /// was off (the client's FIN perhaps among it) raises no new edge, and nor does a client's
    /// silence: this read finds more to echo, or nothing, which with the pause proves it quiet.
    fn read_again(&mut self, ctx: &mut Context<'_>) -> Next {
        ctx.short_read_drains = false;
        self.read_until_quiet(ctx)
    }

    /// Reads, echoing each read, until `WouldBlock`, the client's FIN, the end of the room the
    /// state allows ([`Connection::read_room`]) or the end of the budget, and says which it was.
    ///
    /// # Errors
    /// A read or write error other than `WouldBlock` and `Interrupted`.
    fn echo_input(&mut self, ctx: &mut Context<'_>) -> io::Result<Stop> {
        loop {
            if ctx.budget == 0 {
                return Ok(Stop::BudgetSpent);
            }
            // Never read more than the buffer may still hold: this is the memory bound.
            let room = self.read_room(ctx.settings.marks).min(ctx.scratch.len());
            if room == 0 {
                return Ok(Stop::Full);
            }
            let n = match self.stream.read(&mut ctx.scratch[..room]) {
                // A zero-length read is the client's FIN: it will send no more.
                Ok(0) => return Ok(Stop::Fin),
                Ok(n) => n,
                // Edge-triggered: `WouldBlock` (or a short read, see `Context`) ends the drain.
                Err(e) if would_block(&e) => return Ok(Stop::Drained),
                Err(e) if interrupted(&e) => continue,
                Err(e) => return Err(e),
            };
            ctx.stats.add(Metric::BytesIn, n as u64);
            ctx.stats
                .service_add(ServiceId::Echo, ServiceMetric::Requests, 1);
            ctx.budget = ctx.budget.saturating_sub(n);
            self.idle_deadline = ctx.now + ctx.settings.idle_timeout;
            self.pause_deadline = ctx.now + ctx.settings.request_grace;
            trace!("{} echo read {n} bytes", Id(ctx.token));
            self.echo(n, ctx)?;
            if n < room && ctx.short_read_drains {
                return Ok(Stop::Drained);
            }
        }
    }

    /// How many bytes may be read now. In OPEN, what is left below the high-water mark. In
    /// DRAINING as much, but only while nothing is owed: the connection then owes at most one
    /// read's worth, and when a read finds nothing waiting, only the client's pause is left to
    /// judge. No other state echoes.
    fn read_room(&self, marks: Watermarks) -> usize {
        match self.state {
            State::Open => marks.room(&self.owed),
            State::Draining if self.owed.is_empty() => marks.room(&self.owed),
            State::Draining | State::Throttled | State::HalfClosed | State::Lingering { .. } => 0,
        }
    }

    /// Quiet: nothing owed, and nothing received for `--request-grace`, so the client's stream
    /// counts as finished once a read also finds nothing waiting. Asked in DRAINING only.
    fn is_quiet(&self, now: Instant) -> bool {
        self.owed.is_empty() && now >= self.pause_deadline
    }

    /// Sends back the `n` bytes just read into scratch: straight to the socket when nothing is
    /// owed ahead of them, and whatever the socket refuses into the buffer.
    ///
    /// # Errors
    /// The write failed with an error other than `WouldBlock` and `Interrupted`.
    fn echo(&mut self, n: usize, ctx: &mut Context<'_>) -> io::Result<()> {
        let input = &ctx.scratch[..n];
        let written = if self.owed.is_empty() {
            write_ready(&mut self.stream, input)?
        } else {
            0
        };
        if written > 0 {
            ctx.stats.add(Metric::BytesOut, written as u64);
            trace!("{} echo wrote {written} bytes", Id(ctx.token));
        }
        if written < n {
            self.owed.extend(&input[written..]);
            ctx.stats
                .raise(Metric::BufferedPeak, self.owed.len() as u64);
        }
        Ok(())
    }

    /// Writes owed bytes until the socket would block.
    fn flush(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.owed.write_to(&mut self.stream) {
            Ok(0) => KEEP,
            Ok(written) => {
                ctx.stats.add(Metric::BytesOut, written as u64);
                self.idle_deadline = ctx.now + ctx.settings.idle_timeout;
                trace!("{} echo wrote {written} owed bytes", Id(ctx.token));
                KEEP
            }
            Err(e) => self.fail(e, ctx),
        }
    }

    /// LINGERING: discards input; the client's FIN ends the connection.
    fn linger(&mut self, ctx: &mut Context<'_>) -> Next {
        match discard_input(&mut self.stream, ctx.scratch) {
            Ok(true) => ControlFlow::Break(CloseReason::Shutdown),
            Ok(false) => KEEP,
            Err(e) => self.fail(e, ctx),
        }
    }

    /// OPEN → THROTTLED: the high-water mark is owed, so reading stops and TCP holds the client
    /// back until it has taken enough of its echo.
    fn start_throttling(&mut self, ctx: &mut Context<'_>) -> Next {
        self.transition(State::Throttled, ctx);
        KEEP
    }

    /// OPEN → HALF-CLOSED, or closed at once when nothing is owed (always so in DRAINING, which
    /// reads only while nothing is owed).
    fn finish_input(&mut self, ctx: &mut Context<'_>) -> Next {
        if self.owed.is_empty() {
            return ControlFlow::Break(CloseReason::PeerClosed);
        }
        self.transition(State::HalfClosed, ctx);
        KEEP
    }

    /// THROTTLED → OPEN, and read at once: input that waited in the kernel raises no new edge.
    fn resume_reading(&mut self, ctx: &mut Context<'_>) -> Next {
        self.transition(State::Open, ctx);
        // The input waited from before this (writable) event, the client's FIN perhaps among it,
        // its edge spent while reading was paused: only `WouldBlock` or EOF ends this drain.
        ctx.short_read_drains = false;
        self.read_and_echo(ctx)
    }

    /// OPEN/THROTTLED → DRAINING: echo until quiet. With bytes owed, the flush that delivers them
    /// reads next; with nothing owed, read now, since no event may come to ask.
    fn start_draining(&mut self, ctx: &mut Context<'_>) -> Next {
        self.transition(State::Draining, ctx);
        if self.owed.is_empty() {
            self.read_again(ctx)
        } else {
            KEEP
        }
    }

    /// DRAINING → LINGERING: sends FIN and starts draining input for at most `--linger`.
    fn start_lingering(&mut self, ctx: &mut Context<'_>) -> Next {
        if let Err(e) = self.stream.shutdown_write() {
            return self.fail(e, ctx);
        }
        let until = ctx.now + ctx.settings.linger;
        self.transition(State::Lingering { until }, ctx);
        // Input may already be waiting; it raises no new edge.
        self.linger(ctx)
    }

    /// An I/O error closes this connection alone.
    fn fail(&self, err: io::Error, ctx: &Context<'_>) -> Next {
        io_failure("echo", &self.state, err, ctx)
    }

    /// The one place the state changes.
    fn transition(&mut self, next: State, ctx: &Context<'_>) {
        trace!("{} echo {} -> {next}", Id(ctx.token), self.state);
        self.state = next;
    }
}

/// Why [`Connection::echo_input`] stopped reading: OPEN and DRAINING each decide what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `WouldBlock`, or a short read that proves it: nothing waits to be read, and the next byte
    /// to arrive raises a new edge.
    Drained,
    /// The state allows no more bytes owed ([`Connection::read_room`]); input may still wait.
    Full,
    /// This call's budget is spent; input may still wait, and the loop calls again.
    BudgetSpent,
    /// A zero-length read: the client's FIN.
    Fin,
}

impl<S: Stream> Handler for Connection<S> {
    /// The socket has input (or an error, or the client's FIN).
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Open => self.read_and_echo(ctx),
            // Paused on purpose: the kernel holds the input and TCP slows the client down.
            State::Throttled => KEEP,
            // The client's FIN was read; nothing more can arrive, and errors surface on write.
            State::HalfClosed => KEEP,
            // Reads only while nothing is owed (`read_room`); otherwise the flush reads later.
            State::Draining => self.read_until_quiet(ctx),
            State::Lingering { .. } => self.linger(ctx),
        }
    }

    /// The socket can take output (or has an error).
    fn on_writable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Open => self.flush(ctx),
            State::Throttled => {
                self.flush(ctx)?;
                if ctx.settings.marks.has_drained(&self.owed) {
                    self.resume_reading(ctx)
                } else {
                    KEEP
                }
            }
            State::HalfClosed => {
                self.flush(ctx)?;
                if self.owed.is_empty() {
                    ControlFlow::Break(CloseReason::PeerClosed)
                } else {
                    KEEP
                }
            }
            State::Draining => {
                self.flush(ctx)?;
                if self.owed.is_empty() {
                    self.read_again(ctx)
                } else {
                    KEEP
                }
            }
            // FIN is sent: nothing is ever written again.
            State::Lingering { .. } => KEEP,
        }
    }
}

#[cfg(test)]
mod tests;
