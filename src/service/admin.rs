//! The admin service: HTTP/1.1 on the same loop, for watching the server while it runs.
//!
//! One [`Connection`] per client, an explicit state machine like every other connection:
//!
//! ```text
//!   READING → WRITING → READING …     a request head, its response, the next request (keep-alive)
//!   READING → WRITING → LINGERING     HTTP/1.0 or `Connection: close`, a request refused, or a
//!                                     head cut short by the timeout (408)
//! ```
//!
//! A connection closes from READING when the client sends FIN or starts no request in time, from
//! WRITING when the client takes nothing for [`WRITE_TIMEOUT`], and from LINGERING at the client's
//! FIN or `--linger` after ours. Requests pipelined behind one another are answered in turn, each
//! once the response before it has gone to the socket, and a budget's worth at a time.
//!
//! Most responses need something only the loop has: the figures (`/metrics`, `/stats.json`), the
//! shutdown phase (`/healthz`) or the endpoint table itself (`/connections`). A handler cannot
//! borrow those (the connection lives inside the table), so the connection names the [`Content`]
//! it needs, gives its turn back, and the loop supplies that content before calling it again
//! ([`Connection::supply`]). The endpoint table is supplied in pieces of about [`CHUNK_BYTES`], each
//! asked for only once the previous one has gone to the socket: listing 10 000 connections never
//! builds more than one piece, and never holds the loop for longer than one piece takes.
//!
//! Limits: `--admin-max-conns` connections, a request head of [`http::MAX_HEAD`] bytes and
//! [`http::MAX_HEADERS`] headers that must arrive within `--admin-timeout` (a client trickling a
//! byte at a time is cut off, not waited for), `GET` and `HEAD` only.
//!
//! With `--access-log`, each request gets its line when its response has gone out, or is cut
//! short: one connection carries many requests, so unlike echo and downloads the line is not
//! left to the close. What the line needs is kept in the WRITING state ([`Logged`]).

pub mod history;
pub mod http;
pub mod metrics;

use std::fmt;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::Interest;

use self::http::{Framing, Method, Parsed, Request, Status};
use super::{Context, Handler, KEEP, Next, Settings, Stream, discard_input, io_failure};
use crate::access::{self, Answer, Close, Line};
use crate::buffer::Buffer;
use crate::stats::Moved;
use crate::stats::{CloseReason, Metric, ServiceId, ServiceMetric};
use crate::sys::counted::TcpStream;
use crate::sys::{interrupted, would_block};
use crate::token::Id;

/// Time a response may wait for the client to take a byte before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of `/connections` rows the loop renders at a time: a few socket buffers' worth, enough to
/// amortise the call, small enough to cost the loop well under a millisecond.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// Most rows one `/connections` reply lists unless `limit` says fewer.
pub const DEFAULT_ROW_LIMIT: usize = usize::MAX;

/// What a response needs from the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// `/healthz`: the shutdown phase.
    Health,
    /// `/metrics`: the figures, in Prometheus's text format.
    Metrics,
    /// `/stats.json`: the figures, their rates and their recent history.
    Stats,
    /// `/connections`: rows of the endpoint table, from slab key `next` on.
    Connections {
        /// The slab key to continue from.
        next: usize,
        /// How many more rows may be listed (`limit`).
        left: usize,
        /// List only endpoints of this service (`service`).
        service: Option<String>,
    },
}

/// What the loop hands a connection for the [`Content`] it asked for.
#[derive(Debug)]
pub enum Supply {
    /// A whole body, with the status and type of its response.
    Whole {
        /// The response's status.
        status: Status,
        /// Its `Content-Type`.
        content_type: &'static str,
        /// The body.
        body: Vec<u8>,
    },
    /// The next piece of a streamed body, and where to go on (`None`: it was the last).
    Piece {
        /// Rows, ready to send.
        bytes: Vec<u8>,
        /// What to ask for next.
        next: Option<Content>,
    },
}

/// Where an admin connection is in its life.
#[derive(Debug)]
pub enum State {
    /// Waiting for a request head.
    Reading {
        /// When the head must be complete (or, with nothing received, when an idle connection
        /// closes).
        deadline: Instant,
    },
    /// Sending a response.
    Writing {
        /// Bytes the socket has not taken yet.
        out: Buffer,
        /// Content the loop is to supply once `out` is empty.
        pending: Option<Content>,
        /// `HEAD` gets the head of the response only.
        method: Method,
        /// Read the next request afterwards, or close.
        keep_alive: bool,
        /// When to give up on a client that takes nothing.
        deadline: Instant,
        /// The request as the access log will show it; `None` while the log is off.
        logged: Option<Box<Logged>>,
    },
    /// FIN sent: draining input until the client's FIN or the deadline.
    Lingering {
        /// When to stop waiting for the client's FIN.
        until: Instant,
    },
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Reading { .. } => "READING",
            State::Writing { .. } => "WRITING",
            State::Lingering { .. } => "LINGERING",
        })
    }
}

/// An admin request as its access line will show it, completed as its response goes out.
#[derive(Debug)]
pub struct Logged {
    /// `GET /path?query`; `None` for a head that was refused unread.
    asked: Option<String>,
    /// The response's status, once decided (a `/healthz` status comes with its content).
    status: Option<Status>,
    /// The head's bytes, and the response's bytes written so far.
    moved: Moved,
    /// When the head was complete.
    started: Instant,
}

impl Logged {
    /// What the access log will show of a request (`None` for a head refused unread) whose head
    /// took `length` bytes; `None` while the log is off, and then nothing is formatted.
    fn start(request: Option<&Request>, length: usize, ctx: &Context<'_>) -> Option<Box<Logged>> {
        ctx.access.as_ref()?;
        let asked = request.map(|request| {
            let method = match request.method {
                Method::Get => "GET",
                Method::Head => "HEAD",
            };
            let query = if request.query.is_empty() { "" } else { "?" };
            access::clip(&format!(
                "{method} {}{query}{}",
                request.path, request.query
            ))
        });
        Some(Box::new(Logged {
            asked,
            status: None,
            moved: Moved {
                bytes_in: length as u64,
                bytes_out: 0,
            },
            started: ctx.now,
        }))
    }
}

/// One admin HTTP client.
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    stream: S,
    state: State,
    /// Request bytes received and not yet answered: the head being read, and anything a client
    /// sent behind it (the next request). Never more than [`http::MAX_HEAD`] + 1 bytes.
    input: Vec<u8>,
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
    /// A new client, waiting for its first request.
    pub fn new(stream: S, now: Instant, settings: &Settings) -> Self {
        Connection {
            stream,
            state: State::Reading {
                deadline: now + settings.admin_timeout,
            },
            input: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Readable while waiting for a request or lingering; writable while responding.
    pub fn interest(&self) -> Interest {
        match self.state {
            State::Reading { .. } | State::Lingering { .. } => Interest::READABLE,
            State::Writing { .. } => Interest::WRITABLE,
        }
    }

    /// The deadline of the current state.
    pub fn deadline(&self) -> Instant {
        match self.state {
            State::Reading { deadline } | State::Writing { deadline, .. } => deadline,
            State::Lingering { until } => until,
        }
    }

    /// Bytes waiting to be sent.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Writing { out, .. } => out.len(),
            State::Reading { .. } | State::Lingering { .. } => 0,
        }
    }

    /// The content the loop is to supply before the next call, if any: only once everything
    /// before it has gone to the socket, so a streamed reply holds one piece at a time.
    pub fn wants(&self) -> Option<&Content> {
        match &self.state {
            State::Writing {
                out,
                pending: Some(content),
                ..
            } if out.is_empty() => Some(content),
            State::Reading { .. } | State::Writing { .. } | State::Lingering { .. } => None,
        }
    }

    /// Takes what the loop supplied for [`Connection::wants`].
    pub fn supply(&mut self, supply: Supply) {
        let State::Writing {
            out,
            pending,
            method,
            keep_alive,
            logged,
            ..
        } = &mut self.state
        else {
            debug_assert!(false, "content supplied outside WRITING");
            return;
        };
        match supply {
            Supply::Whole {
                status,
                content_type,
                body,
            } => {
                *pending = None;
                if let Some(logged) = logged {
                    logged.status = Some(status);
                }
                let framing = Framing::Length(body.len());
                out.extend(http::head(status, content_type, framing, *keep_alive).as_bytes());
                if *method == Method::Get {
                    out.extend(&body);
                }
            }
            // Chunked on a kept connection (see `respond`), raw when the close ends the body.
            Supply::Piece { bytes, next } if !*keep_alive => {
                out.extend(&bytes);
                *pending = next;
            }
            Supply::Piece { bytes, next } => {
                let mut framed = Vec::with_capacity(bytes.len() + 16);
                if !bytes.is_empty() {
                    http::chunk(&bytes, &mut framed);
                }
                if next.is_none() {
                    http::chunk(b"", &mut framed);
                }
                out.extend(&framed);
                *pending = next;
            }
        }
    }

    /// The loop stops, and the connection is closed right after: a response under way is cut
    /// short by the stop, and its request still gets its access line.
    pub fn on_stop(&mut self, ctx: &mut Context<'_>) {
        self.log_request(Close::Reason(CloseReason::Shutdown), ctx);
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            // Nothing of a next request arrived: an idle keep-alive connection ends quietly.
            State::Reading { .. } if self.input.is_empty() => ControlFlow::Break(CloseReason::Idle),
            // Part of a head, and no more in time: say so, then close.
            State::Reading { .. } => {
                let logged = Logged::start(None, self.input.len(), ctx);
                let method = http::method_of(&self.input);
                self.refuse(Status::RequestTimeout, method, logged, ctx)
            }
            // The client stopped taking the response.
            State::Writing { .. } => self.abandon(CloseReason::Idle, ctx),
            State::Lingering { .. } => ControlFlow::Break(CloseReason::Finished),
        }
    }

    /// The server is shutting down: the admin service keeps answering while connections drain,
    /// so a load balancer polling `/healthz` sees the 503 that tells it to stop sending clients.
    pub fn on_shutdown(&mut self, _ctx: &mut Context<'_>) -> Next {
        KEEP
    }

    /// READING: reads and answers requests until `WouldBlock`, the client's FIN, the head limit,
    /// a response that waits for the socket or the loop, or the end of the budget.
    ///
    /// Pipelined requests are answered here one after another, in a loop rather than by each
    /// response calling back into reading: a client that keeps its pipe full while it reads as
    /// fast as it can then costs neither stack nor more than its share of the loop.
    fn read_request(&mut self, ctx: &mut Context<'_>) -> Next {
        loop {
            if ctx.budget == 0 {
                return KEEP; // the loop calls again, readable, once the others had their turn
            }
            // What is already here may hold a whole request (pipelined behind the last one).
            match http::parse(&self.input) {
                Parsed::Complete(request, length) => {
                    self.input.drain(..length);
                    if self.input.is_empty() {
                        // An idle keep-alive connection holds no head buffer.
                        self.input = Vec::new();
                    }
                    let logged = Logged::start(Some(&request), length, ctx);
                    self.respond(&request, logged, ctx)?;
                    if !matches!(self.state, State::Reading { .. }) {
                        return KEEP; // the response waits for the socket or for content
                    }
                    continue;
                }
                Parsed::Refused(status) => {
                    let logged = Logged::start(None, self.input.len(), ctx);
                    return self.refuse(status, http::method_of(&self.input), logged, ctx);
                }
                Parsed::Partial => {}
            }
            // Never hold more than one byte past the limit: enough to know it was passed.
            let room = (http::MAX_HEAD + 1 - self.input.len()).min(ctx.scratch.len());
            let n = match self.stream.read(&mut ctx.scratch[..room]) {
                // The client is done; a head it did not finish gets no answer.
                Ok(0) => return ControlFlow::Break(CloseReason::PeerClosed),
                Ok(n) => n,
                Err(e) if would_block(&e) => return KEEP,
                Err(e) if interrupted(&e) => continue,
                Err(e) => return io_failure("admin", &self.state, e, ctx),
            };
            ctx.stats.add(Metric::BytesIn, n as u64);
            ctx.budget = ctx.budget.saturating_sub(n);
            self.input.extend_from_slice(&ctx.scratch[..n]);
        }
    }

    /// A complete request: READING → WRITING.
    fn respond(
        &mut self,
        request: &Request,
        mut logged: Option<Box<Logged>>,
        ctx: &mut Context<'_>,
    ) -> Next {
        ctx.stats
            .service_add(ServiceId::Admin, ServiceMetric::Requests, 1);
        debug!(
            "{} admin {:?} {}?{}",
            Id(ctx.token),
            request.method,
            request.path,
            request.query
        );
        let content = match request.path.as_str() {
            "/healthz" => Content::Health,
            "/metrics" => Content::Metrics,
            "/stats.json" => Content::Stats,
            "/connections" => {
                let Ok(left) = http::query_value(&request.query, "limit")
                    .map_or(Ok(DEFAULT_ROW_LIMIT), str::parse)
                else {
                    return self.refuse(Status::BadRequest, request.method, logged, ctx);
                };
                let service = http::query_value(&request.query, "service").map(str::to_string);
                // Chunks on a connection that stays open; otherwise the close ends the body,
                // which is also all an HTTP/1.0 client understands.
                let request = &Request {
                    keep_alive: request.keep_alive && request.http11,
                    ..request.clone()
                };
                let framing = if request.keep_alive {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                };
                let mut out = Buffer::new();
                out.extend(http::head(Status::Ok, JSON, framing, request.keep_alive).as_bytes());
                let rows = Content::Connections {
                    next: 0,
                    left,
                    service,
                };
                let pending = (request.method == Method::Get).then_some(rows);
                if let Some(logged) = &mut logged {
                    logged.status = Some(Status::Ok);
                }
                return self.start_writing(out, pending, request, logged, ctx);
            }
            "/" => {
                let page = PAGE.as_bytes();
                return self.answer(Status::Ok, HTML, page, request, logged, ctx);
            }
            _ => {
                let body = b"not found\n";
                return self.answer(Status::NotFound, TEXT, body, request, logged, ctx);
            }
        };
        self.start_writing(Buffer::new(), Some(content), request, logged, ctx)
    }

    /// Answers with a body the connection has itself.
    fn answer(
        &mut self,
        status: Status,
        content_type: &str,
        body: &[u8],
        request: &Request,
        mut logged: Option<Box<Logged>>,
        ctx: &mut Context<'_>,
    ) -> Next {
        if let Some(logged) = &mut logged {
            logged.status = Some(status);
        }
        let mut out = Buffer::new();
        let framing = Framing::Length(body.len());
        out.extend(http::head(status, content_type, framing, request.keep_alive).as_bytes());
        if request.method == Method::Get {
            out.extend(body);
        }
        self.start_writing(out, None, request, logged, ctx)
    }

    /// A request the service will not answer: its status (with a body saying why, unless the
    /// request was a `HEAD`), then close.
    fn refuse(
        &mut self,
        status: Status,
        method: Method,
        mut logged: Option<Box<Logged>>,
        ctx: &mut Context<'_>,
    ) -> Next {
        if let Some(logged) = &mut logged {
            logged.status = Some(status);
        }
        ctx.stats
            .service_add(ServiceId::Admin, ServiceMetric::Requests, 1);
        debug!(
            "{} admin: {} {}",
            Id(ctx.token),
            status.code(),
            status.reason()
        );
        let body = format!("{}\n", status.reason());
        let mut out = Buffer::new();
        let framing = Framing::Length(body.len());
        out.extend(http::head(status, TEXT, framing, false).as_bytes());
        if method == Method::Get {
            out.extend(body.as_bytes());
        }
        let deadline = ctx.now + WRITE_TIMEOUT;
        self.transition(
            State::Writing {
                out,
                pending: None,
                method,
                keep_alive: false,
                deadline,
                logged,
            },
            ctx,
        );
        self.write_response(ctx)
    }

    /// READING → WRITING, and write at once: the socket is most likely writable.
    fn start_writing(
        &mut self,
        out: Buffer,
        pending: Option<Content>,
        request: &Request,
        logged: Option<Box<Logged>>,
        ctx: &mut Context<'_>,
    ) -> Next {
        let deadline = ctx.now + WRITE_TIMEOUT;
        let writing = State::Writing {
            out,
            pending,
            method: request.method,
            keep_alive: request.keep_alive,
            deadline,
            logged,
        };
        self.transition(writing, ctx);
        self.write_response(ctx)
    }

    /// WRITING, on a writable socket: writes what is buffered, and once the response is out and
    /// the connection kept, reads on: the next request may already be here.
    fn send(&mut self, ctx: &mut Context<'_>) -> Next {
        self.write_response(ctx)?;
        match self.state {
            State::Reading { .. } => self.read_request(ctx),
            State::Writing { .. } | State::Lingering { .. } => KEEP,
        }
    }

    /// WRITING: writes what is buffered; then asks for content, ends the response (→ READING,
    /// reading nothing yet: the caller reads on), or closes.
    fn write_response(&mut self, ctx: &mut Context<'_>) -> Next {
        let State::Writing {
            out,
            pending,
            keep_alive,
            deadline,
            logged,
            ..
        } = &mut self.state
        else {
            return KEEP;
        };
        match out.write_to(&mut self.stream) {
            Ok(0) => {}
            Ok(written) => {
                ctx.stats.add(Metric::BytesOut, written as u64);
                ctx.budget = ctx.budget.saturating_sub(written);
                *deadline = ctx.now + WRITE_TIMEOUT;
                if let Some(logged) = logged {
                    logged.moved.bytes_out += written as u64;
                }
            }
            Err(e) => {
                let next = io_failure("admin", &self.state, e, ctx);
                return match next {
                    ControlFlow::Break(reason) => self.abandon(reason, ctx),
                    ControlFlow::Continue(()) => next,
                };
            }
        }
        if !out.is_empty() {
            return KEEP; // the socket is full: wait for writable
        }
        if pending.is_some() {
            // Give the turn back: the loop supplies the content, then calls again at once.
            ctx.budget = 0;
            return KEEP;
        }
        if *keep_alive {
            self.log_request(Close::KeepAlive, ctx);
            self.start_reading(ctx)
        } else {
            self.log_request(Close::Reason(CloseReason::Finished), ctx);
            self.start_lingering(ctx)
        }
    }

    /// WRITING, cut short: the request gets its line, then the connection closes for `reason`.
    fn abandon(&mut self, reason: CloseReason, ctx: &Context<'_>) -> Next {
        self.log_request(Close::Reason(reason), ctx);
        ControlFlow::Break(reason)
    }

    /// Writes the access line of the request being answered, if the log is on.
    fn log_request(&mut self, close: Close, ctx: &Context<'_>) {
        let State::Writing { logged, .. } = &mut self.state else {
            return;
        };
        let (Some(logged), Some(notes)) = (logged.take(), ctx.access.as_deref()) else {
            return;
        };
        access::write(&Line {
            peer: Some(notes.peer),
            service: notes.service,
            asked: logged.asked.as_deref(),
            answer: logged.status.map(|status| Answer::Status(status.code())),
            moved: logged.moved,
            duration: ctx.now.saturating_duration_since(logged.started),
            close,
        });
    }

    /// WRITING → READING: the next head gets a whole `--admin-timeout` of its own.
    fn start_reading(&mut self, ctx: &Context<'_>) -> Next {
        let deadline = ctx.now + ctx.settings.admin_timeout;
        self.transition(State::Reading { deadline }, ctx);
        KEEP
    }

    /// → LINGERING: sends FIN and drains input for a short while.
    fn start_lingering(&mut self, ctx: &mut Context<'_>) -> Next {
        if let Err(e) = self.stream.shutdown_write() {
            return io_failure("admin", &self.state, e, ctx);
        }
        self.input = Vec::new();
        let until = ctx.now + ctx.settings.linger;
        self.transition(State::Lingering { until }, ctx);
        self.linger(ctx)
    }

    /// LINGERING: discards input; the client's FIN ends the connection.
    fn linger(&mut self, ctx: &mut Context<'_>) -> Next {
        match discard_input(&mut self.stream, ctx.scratch) {
            Ok(true) => ControlFlow::Break(CloseReason::Finished),
            Ok(false) => KEEP,
            Err(e) => io_failure("admin", &self.state, e, ctx),
        }
    }

    /// The one place the state changes.
    fn transition(&mut self, next: State, ctx: &Context<'_>) {
        trace!("{} admin {} -> {next}", Id(ctx.token), self.state);
        self.state = next;
    }
}

/// The live page: one self-contained file (styles and scripts inline, no fonts or libraries from
/// elsewhere), so it works on a machine with no internet, compiled into the binary.
const PAGE: &str = include_str!("admin/page.html");

/// `Content-Type` of the page.
const HTML: &str = "text/html; charset=utf-8";

/// `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";

/// `Content-Type` of plain-text bodies.
pub const TEXT: &str = "text/plain; charset=utf-8";

impl<S: Stream> Handler for Connection<S> {
    /// The socket has input (or an error, or the client's FIN).
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            State::Reading { .. } => self.read_request(ctx),
            // A pipelined request waits, in `input` or in the kernel, until this response is out.
            State::Writing { .. } => KEEP,
            State::Lingering { .. } => self.linger(ctx),
        }
    }

    /// The socket can take output (or has an error).
    fn on_writable(&mut self, ctx: &mut Context<'_>) -> Next {
        match self.state {
            // Nothing to send before a request is complete.
            State::Reading { .. } => KEEP,
            State::Writing { .. } => self.send(ctx),
            // FIN is sent: nothing is ever written again.
            State::Lingering { .. } => KEEP,
        }
    }
}

#[cfg(test)]
mod tests;
