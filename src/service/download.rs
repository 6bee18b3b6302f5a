//! TCP file download: a client names a file, the server streams it from the served root.
//!
//! The protocol is in `docs/PROTOCOL.md`; [`request`] parses it. One [`Connection`] per client, an
//! explicit state machine:
//!
//! ```text
//!   REQUEST → REPLYING → LINGERING → closed
//!      │          (header, then body)      ▲
//!      └── refused, bare form ─────────────┘
//! ```
//!
//! A request ends at `\n`, at the client's FIN, or when the client has sent something and then
//! stays silent for `--request-grace`: that is how the tutorial's bare file name, sent with no
//! newline, is recognised without guessing from packet boundaries.
//!
//! The body goes out with `sendfile(2)` where there is one (see [`files::Transfer`]): the
//! connection owns no buffer for it, so a 256 MiB download costs the server a file descriptor and a
//! few counters. Every exchange ends with a lingering close, so a client that sent more than its
//! request still reads the whole reply instead of an RST.
//!
//! With `--access-log`, the request and the verdict on it go into the connection's access notes
//! (through [`Context::access`]), and the endpoint table writes the line when the connection closes.

pub mod files;
pub mod listing;
pub mod request;

use std::fmt;
use std::mem;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::Interest;

use self::files::{Files, Progress, Transfer};
use self::request::{MAX_LINE, Refusal, Request};
use super::{Context, Handler, KEEP, Next, Settings, Stream, discard_input, io_failure};
use crate::access::{self, Notes};
use crate::buffer::{Buffer, write_ready};
use crate::stats::{CloseReason, Metric, ServiceId, ServiceMetric};
use crate::sys::counted::TcpStream;
use crate::sys::{interrupted, peer_gone, would_block};
use crate::token::Id;

/// How long a client accepted past `--max-conns` has for its whole exchange: time enough for a
/// request and a one-line reply on any working network, short enough that a flood of them costs
/// the server little.
pub const TURN_AWAY_DEADLINE: Duration = Duration::from_secs(1);

/// Most bytes of a reply a download socket holds unsent, in bytes (see
/// [`crate::sys::limit_unsent`]).
///
/// Without a limit, `sendfile` fills the whole send buffer (up to 4 MiB); to BBR the sender then
/// looks bound by the network, and on loopback its pacing holds segments back with a timer a
/// dozen times per megabyte. Within the limit `sendfile` stops where the client stops, and pacing
/// stays out of the way: against a 256 MiB download, 64 KiB (one loopback segment, 45 Ethernet
/// ones) doubled the throughput of one download and tripled that of 16; 128 KiB lost most of it
/// for one (`docs/DESIGN.md`, "What the kernel leaves room for"). The price is a wake-up each time
/// half of it has gone out.
pub const UNSENT_LIMIT: u32 = 64 * 1024;

/// What answers a connection's request.
#[derive(Debug)]
pub enum Answer {
    /// The served root: files and listings.
    Files(Arc<Files>),
    /// Nothing: the connection was accepted past `--max-conns` only to say so. A `GET` or `LIST`
    /// gets `ERR 503`, a bare name a silent close, and the whole exchange ends by `until`.
    TurnedAway {
        /// When the connection is closed, whatever it is doing.
        until: Instant,
    },
}

/// What follows the status line of a reply.
#[derive(Debug)]
pub enum Body {
    /// Nothing: an `ERR` line.
    Empty,
    /// A file, from the requested offset.
    File(Transfer),
    /// The listing (its `OK <n>` header included), shared with other `LIST` replies.
    Listing {
        /// The whole reply.
        bytes: Arc<[u8]>,
        /// Next byte to send.
        pos: usize,
    },
}

/// Where a download connection is in its life.
#[derive(Debug)]
pub enum State {
    /// Reading the request line.
    Request {
        /// The bytes so far, without the `\n`; never longer than [`MAX_LINE`] + 1 (for a `\r`).
        line: Vec<u8>,
        /// When the request counts as complete if nothing more arrives (`--request-grace` after
        /// the latest byte); `None` until a byte has arrived.
        grace: Option<Instant>,
    },
    /// Sending the reply: `head` (the status line) first, then `body`.
    Replying {
        /// Bytes of the status line not yet written.
        head: Buffer,
        /// The rest of the reply.
        body: Body,
    },
    /// FIN sent: discarding input until the client's FIN or the deadline, then closing.
    Lingering {
        /// When to stop waiting for the client's FIN.
        until: Instant,
        /// What the close will be counted as.
        reason: CloseReason,
    },
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Request { .. } => "REQUEST",
            State::Replying { .. } => "REPLYING",
            State::Lingering { .. } => "LINGERING",
        })
    }
}

/// One download client.
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    stream: S,
    answer: Answer,
    state: State,
    /// When the connection counts as idle: pushed forward whenever the client makes progress.
    idle_deadline: Instant,
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
    /// A new client, waiting for its request, which `answer` will answer.
    pub fn new(stream: S, now: Instant, settings: &Settings, answer: Answer) -> Self {
        Connection {
            stream,
            answer,
            state: State::Request {
                line: Vec::new(),
                grace: None,
            },
            idle_deadline: now + settings.idle_timeout,
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Bytes of the status line not yet written (the body is never buffered).
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Replying { head, .. } => head.len(),
            State::Request { .. } | State::Lingering { .. } => 0,
        }
    }

    /// Accepted past `--max-conns`, only to be told so.
    pub fn is_turned_away(&self) -> bool {
        match self.answer {
            Answer::TurnedAway { .. } => true,
            Answer::Files(_) => false,
        }
    }

    /// Readable while reading the request or lingering; writable while replying.
    pub fn interest(&self) -> Interest {
        match self.state {
            State::Request { .. } | State::Lingering { .. } => Interest::READABLE,
            State::Replying { .. } => Interest::WRITABLE,
        }
    }

    /// The request grace, the idle deadline, or the end of lingering; for a client turned away,
    /// its hard deadline if that comes first.
    pub fn deadline(&self) -> Instant {
        let deadline = match self.state {
            State::Request { grace, .. } => {
                grace.map_or(self.idle_deadline, |at| at.min(self.idle_deadline))
            }
            State::Replying { .. } => self.idle_deadline,
            State::Lingering { until, .. } => until,
        };
        match self.answer {
            Answer::Files(_) => deadline,
            Answer::TurnedAway { until } => deadline.min(until),
        }
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_>) -> Next {
        if let Answer::TurnedAway { until } = self.answer {
            if until <= ctx.now {
                // Whatever it was doing, a client turned away has had its time.
                return ControlFlow::Break(CloseReason::Limit);
            }
        }
        match self.state {
            // The client sent something and then paused: that was its whole request.
            State::Request {
                grace: Some(at), ..
            } if at <= ctx.now => self.respond(ctx),
            // Nothing moved for the idle timeout: no request, or a reader that stopped reading.
            State::Request { .. } | State::Replying { .. } => ControlFlow::Break(CloseReason::Idle),
            State::Lingering { reason, .. } => ControlFlow::Break(reason),
        }
    }

    /// The server is shutting down.
    pub fn on_shutdown(&mut self, ctx: &mut Context<'_>) -> Next {
        match &self.state {
            // No request under way: nothing to finish.
            State::Request { line, .. } if line.is_empty() => {
                self.start_lingering(CloseReason::Shutdown, ctx)
            }
            // A request is arriving or being answered: let it finish within the grace period.
            State::Request { .. } | State::Replying { .. } | State::Lingering { .. } => KEEP,
        }
    }

    /// The loop stops now (the shutdown grace ran out, or a second signal came): a file still being
    /// sent is abandoned with a reset; anything else just closes.
    pub fn on_stop(&mut self, ctx: &mut Context<'_>) {
        match &self.state {
            State::Replying {
                body: Body::File(_),
                ..
            } => {
                let _ = self.abandon("the server stopped", CloseReason::Shutdown, ctx);
            }
            // No body under way, or nothing a client waits for: an ordinary close.
            State::Request { .. } | State::Replying { .. } | State::Lingering { .. } => {}
        }
    }

    /// REQUEST: reads until `WouldBlock`, the end of the line, the client's FIN, or the limit.
    fn read_request(&mut self, ctx: &mut Context<'_>) -> Next {
        loop {
            let State::Request { line, grace } = &mut self.state else {
                return KEEP;
            };
            let n = match self.stream.read(ctx.scratch) {
                // FIN: whatever arrived is the whole request; nothing at all means goodbye.
                Ok(0) if line.is_empty() => return ControlFlow::Break(CloseReason::PeerClosed),
                Ok(0) => return self.respond(ctx),
                Ok(n) => n,
                Err(e) if would_block(&e) => return KEEP,
                Err(e) if interrupted(&e) => continue,
                Err(e) => return io_failure("download", &self.state, e, ctx),
            };
            ctx.stats.add(Metric::BytesIn, n as u64);
            self.idle_deadline = ctx.now + ctx.settings.idle_timeout;
            let input = &ctx.scratch[..n];
            let newline = input.iter().position(|&b| b == b'\n');
            let part = &input[..newline.unwrap_or(n)];
            // Room for a `\r` beyond the limit; past that, read no further.
            if line.len() + part.len() > MAX_LINE + 1 {
                line.extend_from_slice(&part[..MAX_LINE + 1 - line.len()]);
                return self.respond(ctx);
            }
            line.extend_from_slice(part);
            if newline.is_some() {
                return self.respond(ctx);
            }
            *grace = Some(ctx.now + ctx.settings.request_grace);
            trace!(
                "{} download request: {} bytes so far",
                Id(ctx.token),
                line.len()
            );
            if n < ctx.scratch.len() && ctx.short_read_drains {
                return KEEP;
            }
        }
    }

    /// The request is complete: REQUEST → REPLYING, or straight to LINGERING for a refused bare
    /// name, which gets no reply at all.
    fn respond(&mut self, ctx: &mut Context<'_>) -> Next {
        let State::Request { line, .. } = &mut self.state else {
            return KEEP;
        };
        let line = mem::take(line);
        let bare = request::is_bare(&line);
        ctx.stats
            .service_add(ServiceId::Files, ServiceMetric::Requests, 1);
        let (request, reply) = match &self.answer {
            Answer::Files(files) => {
                let request = request::parse(&line, files.serve_hidden());
                let reply = request
                    .as_ref()
                    .map_err(|refusal| *refusal)
                    .and_then(|request| prepare(files, request, ctx));
                (request.ok(), reply)
            }
            Answer::TurnedAway { .. } => (None, Err(Refusal::Full)),
        };
        if let Some(notes) = ctx.access.as_deref_mut() {
            note_exchange(notes, &line, request.as_ref(), &reply);
        }
        match reply {
            Ok((head, body)) => {
                self.transition(State::Replying { head, body }, ctx);
                self.send(ctx)
            }
            Err(refusal) if bare => {
                ctx.stats.add(Metric::DownloadsRefused, 1);
                info!(
                    "{} download of {:?} refused, closing without a reply: {refusal}",
                    Id(ctx.token),
                    printable(&line)
                );
                self.start_lingering(self.close_reason(), ctx)
            }
            Err(refusal) => {
                ctx.stats.add(Metric::DownloadsRefused, 1);
                debug!(
                    "{} download of {:?}: {refusal}",
                    Id(ctx.token),
                    printable(&line)
                );
                let mut head = Buffer::new();
                head.extend(format!("{refusal}\n").as_bytes());
                self.transition(
                    State::Replying {
                        head,
                        body: Body::Empty,
                    },
                    ctx,
                );
                self.send(ctx)
            }
        }
    }

    /// REPLYING: writes the status line, then the body, until done or the socket is full.
    fn send(&mut self, ctx: &mut Context<'_>) -> Next {
        let State::Replying { head, body } = &mut self.state else {
            return KEEP;
        };
        // Writable means the client is reading: that is progress, not idleness.
        self.idle_deadline = ctx.now + ctx.settings.idle_timeout;
        let progress = head.write_to(&mut self.stream).and_then(|written| {
            ctx.stats.add(Metric::BytesOut, written as u64);
            if !head.is_empty() {
                return Ok(Progress::Blocked);
            }
            match body {
                Body::Empty => Ok(Progress::Done),
                Body::File(transfer) => {
                    transfer.send(&mut self.stream, ctx.scratch, &mut ctx.budget)
                }
                Body::Listing { bytes, pos } => {
                    let written = write_ready(&mut self.stream, &bytes[*pos..])?;
                    ctx.stats.add(Metric::BytesOut, written as u64);
                    *pos += written;
                    Ok(if *pos == bytes.len() {
                        Progress::Done
                    } else {
                        Progress::Blocked
                    })
                }
            }
        });
        match progress {
            Ok(Progress::Blocked | Progress::Yielded) => KEEP,
            Ok(Progress::Done) => {
                if let Body::File(_) = body {
                    ctx.stats.add(Metric::DownloadsCompleted, 1);
                }
                self.start_lingering(self.close_reason(), ctx)
            }
            Ok(Progress::Truncated) => {
                ctx.stats.add(Metric::DownloadsTruncated, 1);
                self.abandon("the file shrank while being sent", CloseReason::Error, ctx)
            }
            // The client went away: its business, and no one is left to tell.
            Err(e) if peer_gone(&e) => io_failure("download", &self.state, e, ctx),
            Err(e) if matches!(body, Body::File(_)) => {
                let why = format!("I/O error: {e}");
                self.abandon(&why, CloseReason::Error, ctx)
            }
            Err(e) => io_failure("download", &self.state, e, ctx),
        }
    }

    /// The server gives up on a download it started (the file shrank or failed, or the shutdown
    /// grace ran out): the connection closes with a reset, so the client's next read fails
    /// instead of ending as if the file were shorter. With the bare form, which announces no
    /// size, that failed read is the only sign the client gets.
    fn abandon(&mut self, why: &str, reason: CloseReason, ctx: &mut Context<'_>) -> Next {
        if let State::Replying {
            body: Body::File(transfer),
            ..
        } = &self.state
        {
            let (sent, promised) = transfer.progress();
            info!(
                "{} download abandoned after {sent} of {promised} bytes ({why}): closing with a reset",
                Id(ctx.token)
            );
        }
        ctx.stats.add(Metric::DownloadsReset, 1);
        if let Err(e) = self.stream.reset_on_close() {
            // Then the close is a FIN: the client of a GET can still compare against `OK <size>`.
            warn!("{} download: cannot arrange a reset: {e}", Id(ctx.token));
        }
        ControlFlow::Break(reason)
    }

    /// → LINGERING: sends FIN, then drains input for at most `--linger`.
    fn start_lingering(&mut self, reason: CloseReason, ctx: &mut Context<'_>) -> Next {
        if let Err(e) = self.stream.shutdown_write() {
            return io_failure("download", &self.state, e, ctx);
        }
        let until = ctx.now + ctx.settings.linger;
        // Leaving REPLYING drops the body, and with it the open file.
        self.transition(State::Lingering { until, reason }, ctx);
        self.linger(ctx)
    }

    /// LINGERING: discards input; the client's FIN ends the connection.
    fn linger(&mut self, ctx: &mut Context<'_>) -> Next {
        let State::Lingering { reason, .. } = self.state else {
            return KEEP;
        };
        match discard_input(&mut self.stream, ctx.scratch) {
            Ok(true) => ControlFlow::Break(reason),
            Ok(false) => KEEP,
            Err(e) => io_failure("download", &self.state, e, ctx),
        }
    }

    /// What an exchange that ran its course counts as.
    fn close_reason(&self) -> CloseReason {
        match self.answer {
            Answer::Files(_) => CloseReason::Finished,
            Answer::TurnedAway { .. } => CloseReason::Limit,
        }
    }

    /// The one place the state changes.
    fn transition(&mut self, next: State, ctx: &Context<'_>) {
        trace!("{} download {} -> {next}", Id(ctx.token), self.state);
        self.state = next;
    }
}

impl<S: Stream> Handler for Connection<S> {
    /// The socket has input (or an error, or the client's FIN).
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Request { .. } => self.read_request(ctx),
            // One request per connection: anything more waits for the lingering drain.
            State::Replying { .. } => KEEP,
            State::Lingering { .. } => self.linger(ctx),
        }
    }

    /// The socket can take output (or has an error).
    fn on_writable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            // Nothing to write before the request is known.
            State::Request { .. } => KEEP,
            State::Replying { .. } => self.send(ctx),
            // FIN is sent: nothing is ever written again.
            State::Lingering { .. } => KEEP,
        }
    }
}

/// Opens what the request names and builds the reply's status line and body.
fn prepare(files: &Files, request: &Request, ctx: &Context<'_>) -> Result<(Buffer, Body), Refusal> {
    let mut head = Buffer::new();
    let body = match *request {
        Request::Get { ref name, offset } => {
            let transfer = files.open_file(name, offset)?;
            head.extend(format!("OK {}\n", transfer.remaining()).as_bytes());
            debug!(
                "{} GET {name:?} from {offset}: {} bytes",
                Id(ctx.token),
                transfer.remaining()
            );
            Body::File(transfer)
        }
        Request::Bare { ref name } => {
            let transfer = files.open_file(name, 0)?;
            debug!(
                "{} bare {name:?}: {} bytes",
                Id(ctx.token),
                transfer.remaining()
            );
            Body::File(transfer)
        }
        Request::List => {
            ctx.stats.add(Metric::Listings, 1);
            Body::Listing {
                bytes: files.listing(ctx.now),
                pos: 0,
            }
        }
    };
    if let Body::File(_) = body {
        ctx.stats.add(Metric::DownloadsStarted, 1);
    }
    Ok((head, body))
}

/// Tells the access log what was asked (the request as parsed, with a `GET`'s offset always
/// written; the line as it came when it could not be parsed) and answered (the status line's
/// verdict, which the bare form decides but does not send).
fn note_exchange(
    notes: &mut Notes,
    line: &[u8],
    request: Option<&Request>,
    reply: &Result<(Buffer, Body), Refusal>,
) {
    let asked = match request {
        Some(Request::Get { name, offset }) => format!("GET {name} {offset}"),
        Some(request) => request.to_string(),
        None => String::from_utf8_lossy(line).into_owned(),
    };
    notes.asked = Some(access::clip(&asked).into());
    notes.answer = match reply {
        Ok((_, Body::File(transfer))) => Some(access::Answer::Ok(transfer.remaining())),
        Ok((_, Body::Listing { bytes, .. })) => listed(bytes).map(access::Answer::Ok),
        // `prepare` never answers with an empty body; only a refusal has one.
        Ok((_, Body::Empty)) => None,
        Err(refusal) => Some(access::Answer::Err(refusal.code())),
    };
}

/// The entry count of a listing, from its `OK <n>` header.
fn listed(listing: &[u8]) -> Option<u64> {
    let header = listing.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(header)
        .ok()?
        .strip_prefix("OK ")?
        .parse()
        .ok()
}

/// A request line as it may appear in a log: lossy UTF-8, cut to 100 characters.
fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).chars().take(100).collect()
}

#[cfg(test)]
mod tests;
