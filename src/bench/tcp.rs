//! The TCP moves every TCP scenario makes: a non-blocking connect and how to tell it finished,
//! reads and writes that end at `WouldBlock`, interest changes, and closing.
//!
//! They live here once so that `echo.rs`, `connect.rs` and `download.rs` hold only their
//! protocol; so do the state changes those three clients share ([`Machine`]: every transition,
//! failing, backing off, finishing). The rules are the server's (see `event_loop.rs`): edge-triggered readiness means a
//! drain runs until `WouldBlock`, `Interrupted` is retried, and writable interest is registered
//! only while output waits.

use std::io::{self, Read, Write};
use std::mem;
use std::time::Instant;

use log::trace;
use mio::Interest;
use mio::net::TcpStream;

use super::driver::{BACK_OFF, Ctx};
use super::report::classify;
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

/// The `State` of a TCP client (`echo::State`, `connect::State`, `download::State`): what the
/// shared moves below need to know of it. Each client keeps its own explicit enum; this trait
/// gives them one `transition` and the failure path they all take.
pub(crate) trait Machine: Sized {
    /// The service word in trace lines: `echo`, `connect`, `download`.
    const SERVICE: &'static str;

    /// The state's name, as the module's diagram spells it.
    fn name(&self) -> &'static str;

    /// The socket this state holds, if any.
    fn into_socket(self) -> Option<TcpStream>;

    /// Whether the connect is still pending, so that an I/O error is a failed connect.
    fn is_connecting(&self) -> bool;

    /// BACKING-OFF, connecting again at `until`.
    fn backing_off(until: Instant) -> Self;

    /// FINISHED: done for this run.
    fn finished() -> Self;

    /// The one place the state changes. `next` builds the new state and may take the old
    /// state's socket; a socket it leaves behind is closed here, so no transition leaks one.
    fn transition(&mut self, ctx: &Ctx<'_>, next: impl FnOnce(&mut Option<TcpStream>) -> Self) {
        let old = mem::replace(self, Self::finished());
        let from = old.name();
        let mut socket = old.into_socket();
        *self = next(&mut socket);
        if let Some(stream) = socket {
            close(stream, ctx);
        }
        trace!(
            "bench {}/{} {} {from} -> {}",
            ctx.thread,
            ctx.token.0,
            Self::SERVICE,
            self.name()
        );
    }

    /// Any state → BACKING-OFF, counting the failure (as a failed connect while connecting);
    /// the socket is closed.
    fn fail(&mut self, failure: Failure, ctx: &mut Ctx<'_>) {
        match failure {
            Failure::Io(err) if self.is_connecting() => ctx.connect_failed(err),
            failure => ctx.error(failure.kind()),
        }
        self.back_off(ctx);
    }

    /// → BACKING-OFF.
    fn back_off(&mut self, ctx: &Ctx<'_>) {
        let until = ctx.now + BACK_OFF;
        self.transition(ctx, |_| Self::backing_off(until));
    }

    /// → FINISHED.
    fn finish(&mut self, ctx: &Ctx<'_>) {
        self.transition(ctx, |_| Self::finished());
    }
}
