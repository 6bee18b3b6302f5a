//! TCP echo, RFC 862: every byte a client sends comes back, unchanged and in order.
//!
//! One [`Connection`] per client, an explicit state machine:
//!
//! ```text
//!   OPEN ⇄ THROTTLED           reading and echoing; paused while the client is slow to read
//!   OPEN → HALF-CLOSED         the client sent FIN: deliver what is owed, then close
//!   OPEN → FLUSHING → LINGERING   the server is shutting down: deliver, send FIN, drain input
//! ```
//!
//! Input is read into the loop's shared scratch buffer and written straight back; only what the
//! socket refuses is copied into the connection's own [`Buffer`]. When that reaches the high-water
//! mark the connection stops reading (THROTTLED), so a client that sends without reading is held
//! to one bounded buffer while TCP flow control pushes back on it. `docs/DESIGN.md` draws the
//! full state diagram.

use std::fmt;
use std::io;
use std::ops::ControlFlow;
use std::time::Instant;

use log::trace;
use mio::Interest;
use mio::net::TcpStream;

use super::{Context, Handler, KEEP, Next, Settings, Stream, discard_input, io_failure};
use crate::buffer::{Buffer, write_ready};
use crate::stats::{CloseReason, Metric};
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
    /// The server is shutting down: deliver what is owed, then send FIN.
    Flushing,
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
            State::Flushing => "FLUSHING",
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
    /// [`State::Open`] most of the time; never empty in THROTTLED, HALF-CLOSED and FLUSHING.
    owed: Buffer,
    /// When the connection counts as idle: pushed forward whenever a byte moves.
    idle_deadline: Instant,
}

impl Connection<TcpStream> {
    /// The socket, for registration.
    pub fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
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

    /// Readable in OPEN (to echo) and LINGERING (to drain); writable only while bytes are owed.
    pub fn interest(&self) -> Interest {
        match self.state {
            State::Open if self.owed.is_empty() => Interest::READABLE,
            State::Open => Interest::READABLE | Interest::WRITABLE,
            State::Throttled | State::HalfClosed | State::Flushing => Interest::WRITABLE,
            State::Lingering { .. } => Interest::READABLE,
        }
    }

    /// The idle deadline, or the end of lingering.
    pub fn deadline(&self) -> Instant {
        match self.state {
            State::Open | State::Throttled | State::HalfClosed | State::Flushing => {
                self.idle_deadline
            }
            State::Lingering { until } => until,
        }
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, _ctx: &mut Context<'_>) -> Next {
        match self.state {
            // No byte moved for the idle timeout, in either direction.
            State::Open | State::Throttled | State::HalfClosed | State::Flushing => {
                ControlFlow::Break(CloseReason::Idle)
            }
            // The client never sent FIN; its unread input no longer matters.
            State::Lingering { .. } => ControlFlow::Break(CloseReason::Shutdown),
        }
    }

    /// The server is shutting down.
    pub fn on_shutdown(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Open => {
                // One last read pass (one fair share at most): input that had already arrived is
                // still echoed. What comes later is discarded while lingering.
                self.echo_input(ctx)?;
                match self.state {
                    State::Open | State::Throttled => self.start_flushing(ctx),
                    State::HalfClosed | State::Flushing | State::Lingering { .. } => KEEP,
                }
            }
            State::Throttled => self.start_flushing(ctx),
            // Already on the way out.
            State::HalfClosed | State::Flushing | State::Lingering { .. } => KEEP,
        }
    }

    /// OPEN: reads until `WouldBlock`, the client's FIN, or the high-water mark, echoing each read.
    fn echo_input(&mut self, ctx: &mut Context<'_>) -> Next {
        let marks = ctx.settings.marks;
        loop {
            if ctx.budget == 0 {
                return KEEP; // the loop resumes this connection after the rest of the batch
            }
            // Never read more than the buffer may still hold: this is the memory bound.
            let room = marks.room(&self.owed).min(ctx.scratch.len());
            if room == 0 {
                self.transition(State::Throttled, ctx);
                return KEEP;
            }
            let n = match self.stream.read(&mut ctx.scratch[..room]) {
                // A zero-length read is the client's FIN: it will send no more.
                Ok(0) => return self.finish_input(ctx),
                Ok(n) => n,
                // Edge-triggered: `WouldBlock` (or a short read, see `Context`) ends the drain.
                Err(e) if would_block(&e) => return KEEP,
                Err(e) if interrupted(&e) => continue,
                Err(e) => return self.fail(e, ctx),
            };
            ctx.stats.add(Metric::BytesIn, n as u64);
            ctx.budget = ctx.budget.saturating_sub(n);
            self.idle_deadline = ctx.now + ctx.settings.idle_timeout;
            trace!("{} echo read {n} bytes", Id(ctx.token));
            self.echo(n, ctx)?;
            if n < room && ctx.short_read_drains {
                return KEEP;
            }
        }
    }

    /// Sends back the `n` bytes just read into scratch: straight to the socket when nothing is
    /// owed ahead of them, and whatever the socket refuses into the buffer.
    fn echo(&mut self, n: usize, ctx: &mut Context<'_>) -> Next {
        let input = &ctx.scratch[..n];
        let written = if self.owed.is_empty() {
            match write_ready(&mut self.stream, input) {
                Ok(written) => written,
                Err(e) => return self.fail(e, ctx),
            }
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
        KEEP
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

    /// OPEN → HALF-CLOSED, or closed at once when nothing is owed.
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
        self.echo_input(ctx)
    }

    /// OPEN/THROTTLED → FLUSHING, or straight to LINGERING when nothing is owed.
    fn start_flushing(&mut self, ctx: &mut Context<'_>) -> Next {
        if self.owed.is_empty() {
            return self.start_lingering(ctx);
        }
        self.transition(State::Flushing, ctx);
        KEEP
    }

    /// → LINGERING: sends FIN and starts draining input for at most `--linger`.
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

impl<S: Stream> Handler for Connection<S> {
    /// The socket has input (or an error, or the client's FIN).
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Open => self.echo_input(ctx),
            // Paused on purpose: the kernel holds the input and TCP slows the client down.
            State::Throttled => KEEP,
            // The client's FIN was read; nothing more can arrive, and errors surface on write.
            State::HalfClosed => KEEP,
            // Shutting down: input after the final read pass is discarded once FIN is sent.
            State::Flushing => KEEP,
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
            State::Flushing => {
                self.flush(ctx)?;
                if self.owed.is_empty() {
                    self.start_lingering(ctx)
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
