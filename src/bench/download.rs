//! The `download` scenario: each client fetches `NAME` with `GET NAME\n` (see
//! `docs/PROTOCOL.md`), over and over, one connection per download.
//!
//! ```text
//!   IDLE → CONNECTING → REQUESTING → HEADER → BODY ─┐   EOF after exactly <size> bytes: one
//!     ↑         ↓            ↓          ↓       ↓    │   download; connect again
//!     │     BACKING-OFF ←────┴──────────┴───────┘    │   an error: count it, wait, connect again
//!     └──────────────────────────────────────────────┘
//! ```
//!
//! Each download is verified against the `OK <size>` header: fewer bytes before EOF is a
//! "short read", more is a "protocol" error, an `ERR` line is counted by its code. The body is
//! read into the thread's scratch buffer and thrown away; only its length matters. Bytes count
//! towards MB/s as they arrive, so a download cut off by the end of the run still counts its
//! bytes but not as a download.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::event::Event;
use mio::net::TcpStream;

use super::driver::{Client, Ctx, OPERATION_TIMEOUT};
use super::report::{BUSY, NOT_FOUND, PROTOCOL, REJECTED, SHORT_READ, TIMEOUT};
use super::tcp::{self, Failure, Machine};

/// Longest header line accepted, in bytes: `OK ` and 20 digits, or an `ERR` line with a reason.
const MAX_HEADER: usize = 256;

/// Where a downloading client is.
#[derive(Debug)]
pub(crate) enum State {
    /// Between two downloads (or not started).
    Idle,
    /// Waiting for the connect to finish.
    Connecting {
        stream: TcpStream,
        /// When this download started: the operation's start.
        since: Instant,
        /// When the current step began; the step times out [`OPERATION_TIMEOUT`] later.
        progress: Instant,
    },
    /// Connected: sending the request line.
    Requesting {
        stream: TcpStream,
        since: Instant,
        progress: Instant,
        /// Request bytes written so far.
        written: usize,
    },
    /// Reading the header line.
    Header {
        stream: TcpStream,
        since: Instant,
        progress: Instant,
        /// The header bytes so far, without the newline.
        line: Vec<u8>,
    },
    /// Reading the body until EOF.
    Body {
        stream: TcpStream,
        since: Instant,
        progress: Instant,
        /// Body bytes the header announced and not yet received.
        remaining: u64,
    },
    /// After an error: connect again at `until`.
    BackingOff { until: Instant },
    /// Done for this run.
    Finished,
}

impl Machine for State {
    const SERVICE: &'static str = "download";

    fn name(&self) -> &'static str {
        match self {
            State::Idle => "IDLE",
            State::Connecting { .. } => "CONNECTING",
            State::Requesting { .. } => "REQUESTING",
            State::Header { .. } => "HEADER",
            State::Body { .. } => "BODY",
            State::BackingOff { .. } => "BACKING-OFF",
            State::Finished => "FINISHED",
        }
    }

    fn into_socket(self) -> Option<TcpStream> {
        match self {
            State::Connecting { stream, .. }
            | State::Requesting { stream, .. }
            | State::Header { stream, .. }
            | State::Body { stream, .. } => Some(stream),
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

impl State {
    /// When the current step times out, for the states that wait on the server.
    fn deadline(&self) -> Option<Instant> {
        match self {
            State::Connecting { progress, .. }
            | State::Requesting { progress, .. }
            | State::Header { progress, .. }
            | State::Body { progress, .. } => Some(*progress + OPERATION_TIMEOUT),
            State::Idle | State::BackingOff { .. } | State::Finished => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a step of the download decided.
enum Step {
    /// Wait for the next event.
    Wait,
    /// The request is out: read the header.
    Requested,
    /// The header announced `size` bytes; `early` of them came with it.
    Announced { size: u64, early: usize },
    /// EOF after exactly the announced size.
    Done,
}

/// One downloading client.
#[derive(Debug)]
pub(crate) struct Connection {
    /// `GET NAME\n`, shared by every client of the run.
    request: Arc<[u8]>,
    state: State,
}

impl Connection {
    pub fn new(request: Arc<[u8]>) -> Connection {
        Connection {
            request,
            state: State::Idle,
        }
    }

    /// IDLE/BACKING-OFF → CONNECTING (a new download takes a ticket), or FINISHED.
    fn start_connecting(&mut self, ctx: &mut Ctx<'_>) {
        if !ctx.take_ticket() {
            return self.state.finish(ctx);
        }
        match tcp::connect(ctx) {
            Ok(stream) => {
                let now = ctx.now;
                self.state.transition(ctx, |_| State::Connecting {
                    stream,
                    since: now,
                    progress: now,
                });
            }
            Err(err) => {
                ctx.connect_failed(err);
                self.state.back_off(ctx);
            }
        }
    }

    /// CONNECTING → REQUESTING.
    fn start_request(&mut self, ctx: &mut Ctx<'_>) {
        ctx.reached();
        let since = self.since().unwrap_or(ctx.now);
        let now = ctx.now;
        self.state.transition(ctx, |socket| match socket.take() {
            Some(stream) => State::Requesting {
                stream,
                since,
                progress: now,
                written: 0,
            },
            None => State::Finished, // only called from CONNECTING, which has a socket
        });
        self.advance(ctx);
    }

    /// Does the I/O of the current state, and moves on as far as it can.
    fn advance(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let step = match self.step(ctx) {
                Ok(step) => step,
                Err(failure) => return self.state.fail(failure, ctx),
            };
            match step {
                Step::Wait => return,
                Step::Requested => self.start_header(ctx),
                Step::Announced { size, early } => self.start_body(size, early, ctx),
                Step::Done => return self.finish_download(ctx),
            }
        }
    }

    /// The I/O of one state, until it must wait or has something to report.
    fn step(&mut self, ctx: &mut Ctx<'_>) -> Result<Step, Failure> {
        match &mut self.state {
            State::Requesting {
                stream,
                progress,
                written,
                ..
            } => {
                let n = tcp::write(stream, &self.request[*written..])?;
                if n > 0 {
                    *progress = ctx.now;
                }
                *written += n;
                // Registered for both directions while connecting: the rest of a request the
                // socket did not take goes out on the next writable event.
                Ok(if *written == self.request.len() {
                    Step::Requested
                } else {
                    Step::Wait
                })
            }
            State::Header {
                stream,
                progress,
                line,
                ..
            } => {
                while let Some(n) = tcp::read(stream, ctx.scratch)? {
                    if n == 0 {
                        return Err(Failure::Protocol(SHORT_READ));
                    }
                    *progress = ctx.now;
                    let data = &ctx.scratch[..n];
                    let Some(end) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > MAX_HEADER {
                            return Err(Failure::Protocol(PROTOCOL));
                        }
                        continue;
                    };
                    line.extend_from_slice(&data[..end]);
                    let size = parse_header(line).map_err(Failure::Protocol)?;
                    // Body bytes that came with the header are moved to the front of scratch.
                    let early = n - end - 1;
                    ctx.scratch.copy_within(end + 1..n, 0);
                    return Ok(Step::Announced { size, early });
                }
                Ok(Step::Wait)
            }
            State::Body {
                stream,
                progress,
                remaining,
                ..
            } => {
                while let Some(n) = tcp::read(stream, ctx.scratch)? {
                    if n == 0 {
                        return if *remaining == 0 {
                            Ok(Step::Done)
                        } else {
                            Err(Failure::Protocol(SHORT_READ))
                        };
                    }
                    *progress = ctx.now;
                    ctx.tally.bytes += n as u64;
                    *remaining = remaining
                        .checked_sub(n as u64)
                        .ok_or(Failure::Protocol(PROTOCOL))?;
                }
                Ok(Step::Wait)
            }
            State::Idle | State::Connecting { .. } | State::BackingOff { .. } | State::Finished => {
                Ok(Step::Wait)
            }
        }
    }

    /// REQUESTING → HEADER.
    fn start_header(&mut self, ctx: &mut Ctx<'_>) {
        let since = self.since().unwrap_or(ctx.now);
        let now = ctx.now;
        self.state.transition(ctx, |socket| match socket.take() {
            Some(stream) => State::Header {
                stream,
                since,
                progress: now,
                line: Vec::new(),
            },
            None => State::Finished,
        });
    }

    /// HEADER → BODY, counting the body bytes that arrived with the header (at the front of
    /// scratch). If they are already too many, the next step reads EOF or more and fails.
    fn start_body(&mut self, size: u64, early: usize, ctx: &mut Ctx<'_>) {
        let since = self.since().unwrap_or(ctx.now);
        let now = ctx.now;
        ctx.tally.bytes += early as u64;
        let remaining = size.checked_sub(early as u64);
        self.state
            .transition(ctx, |socket| match (socket.take(), remaining) {
                (Some(stream), Some(remaining)) => State::Body {
                    stream,
                    since,
                    progress: now,
                    remaining,
                },
                // More bytes than announced: nothing to read on; the socket is closed.
                (_, None) | (None, _) => State::Finished,
            });
        if remaining.is_none() {
            self.state.fail(Failure::Protocol(PROTOCOL), ctx);
        }
    }

    /// BODY → IDLE: one verified download; then the next one.
    fn finish_download(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(since) = self.since() {
            ctx.complete(since, 0); // its bytes were counted as they arrived
        }
        self.state.transition(ctx, |_| State::Idle);
        self.start_connecting(ctx);
    }

    /// When the current download started.
    fn since(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting { since, .. }
            | State::Requesting { since, .. }
            | State::Header { since, .. }
            | State::Body { since, .. } => Some(*since),
            State::Idle | State::BackingOff { .. } | State::Finished => None,
        }
    }
}

impl Client for Connection {
    fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.start_connecting(ctx);
    }

    fn on_event(&mut self, _event: &Event, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Connecting { stream, .. } => match tcp::connect_finished(stream) {
                Ok(true) => self.start_request(ctx),
                // Spurious, or left over from this token's previous socket.
                Ok(false) => {}
                Err(err) => self.state.fail(Failure::Io(err), ctx),
            },
            State::Requesting { .. } | State::Header { .. } | State::Body { .. } => {
                self.advance(ctx)
            }
            // No socket: an event left over from a socket closed earlier in this batch.
            State::Idle | State::BackingOff { .. } | State::Finished => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Connecting { .. } if self.state.deadline().is_some_and(|d| ctx.now >= d) => {
                let err = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {OPERATION_TIMEOUT:?}"),
                );
                self.state.fail(Failure::Io(err), ctx);
            }
            // The server sent nothing (or took nothing) for a whole operation timeout.
            State::Requesting { .. } | State::Header { .. } | State::Body { .. }
                if self.state.deadline().is_some_and(|d| ctx.now >= d) =>
            {
                self.state.fail(Failure::Protocol(TIMEOUT), ctx)
            }
            State::BackingOff { until } if ctx.now >= *until => self.start_connecting(ctx),
            // Not due yet, or nothing to time.
            State::Idle
            | State::Connecting { .. }
            | State::Requesting { .. }
            | State::Header { .. }
            | State::Body { .. }
            | State::BackingOff { .. }
            | State::Finished => {}
        }
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            State::Finished => {}
            // A download in progress is abandoned; its bytes so far are counted already.
            State::Idle
            | State::Connecting { .. }
            | State::Requesting { .. }
            | State::Header { .. }
            | State::Body { .. }
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

/// The size an `OK <size>` header line (without its newline) announces, or the error kind of
/// an `ERR` line or anything else.
pub(crate) fn parse_header(line: &[u8]) -> Result<u64, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| PROTOCOL)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some(size) = line.strip_prefix("OK ") {
        return size.parse().map_err(|_| PROTOCOL);
    }
    let Some(error) = line.strip_prefix("ERR ") else {
        return Err(PROTOCOL);
    };
    Err(match error.split(' ').next() {
        Some("404") => NOT_FOUND,
        Some("503") => BUSY,
        Some("400" | "403" | "414" | "416") => REJECTED,
        _ => PROTOCOL,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::bench::driver::harness::{Harness, serve_one};
    use crate::bench::report::Tally;

    /// Reads the request line of one connection, checks it, and answers `reply`, in pieces.
    fn server(reply: &'static [&'static [u8]]) -> SocketAddr {
        serve_one(move |mut stream| {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            assert_eq!(line, "GET f\n");
            for piece in reply {
                let _ = stream.write_all(piece);
                let _ = stream.flush();
            }
            let _ = stream.read_to_end(&mut Vec::new());
        })
    }

    /// A client that has started its only download (one ticket) against `reply`.
    fn download(reply: &'static [&'static [u8]]) -> (Harness, Connection) {
        let mut h = Harness::new(server(reply), Some(1));
        let mut client = Connection::new(b"GET f\n"[..].into());
        client.start(&mut h.ctx(Instant::now()));
        assert_eq!(client.state.name(), "CONNECTING");
        (h, client)
    }

    fn is(state: &'static str) -> impl Fn(&Connection, &Tally) -> bool {
        move |c, _| c.state.name() == state
    }

    fn any_of(states: &'static [&'static str]) -> impl Fn(&Connection, &Tally) -> bool {
        move |c, _| states.contains(&c.state.name())
    }

    // ---- CONNECTING → REQUESTING → HEADER → BODY → (EOF) ----

    #[test]
    fn a_download_of_the_announced_size_counts_once_eof_comes() {
        let (mut h, mut client) = download(&[b"OK 1", b"0\n01234", b"56789"]);
        // The server keeps the connection open after the body: no EOF, so not yet a download.
        h.run_until(&mut client, "the body", |_, t| t.bytes == 10);
        assert_eq!(client.state.name(), "BODY");
        assert_eq!(h.tally.operations, 0);
    }

    #[test]
    fn eof_after_the_body_completes_the_download() {
        let addr = serve_one(|mut stream| {
            let _ = BufReader::new(&stream).read_line(&mut String::new());
            let _ = stream.write_all(b"OK 5\nhello");
        });
        let mut h = Harness::new(addr, Some(1));
        let mut client = Connection::new(b"GET f\n"[..].into());
        client.start(&mut h.ctx(Instant::now()));
        h.run_until(&mut client, "FINISHED", is("FINISHED"));
        assert_eq!((h.tally.operations, h.tally.bytes), (1, 5));
        assert!(h.tally.errors.is_empty(), "{:?}", h.tally.errors);
    }

    #[test]
    fn more_bytes_than_announced_is_a_protocol_error() {
        let (mut h, mut client) = download(&[b"OK 2\nhello"]);
        h.run_until(
            &mut client,
            "an error",
            any_of(&["BACKING-OFF", "FINISHED"]),
        );
        assert_eq!(h.tally.errors.get(PROTOCOL), Some(&1));
    }

    #[test]
    fn an_err_line_is_counted_by_its_code() {
        let (mut h, mut client) = download(&[b"ERR 404 no such file\n"]);
        h.run_until(&mut client, "BACKING-OFF", is("BACKING-OFF"));
        assert_eq!(h.tally.errors.get(NOT_FOUND), Some(&1));
    }

    #[test]
    fn a_silent_step_times_out() {
        let (mut h, mut client) = download(&[b"OK 100\nab"]);
        h.run_until(&mut client, "BODY", |_, t| t.bytes == 2);
        client.on_tick(&mut h.ctx(Instant::now() + Duration::from_secs(1)));
        assert_eq!(client.state.name(), "BODY", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state.name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
    }

    #[test]
    fn stop_abandons_a_download_but_keeps_its_bytes() {
        let (mut h, mut client) = download(&[b"OK 100\nab"]);
        h.run_until(&mut client, "BODY", |_, t| t.bytes == 2);
        client.on_stop(&mut h.ctx(Instant::now()));
        assert!(client.is_finished());
        assert_eq!((h.tally.operations, h.tally.bytes), (0, 2));
        assert!(h.tally.errors.is_empty());
    }

    #[test]
    fn ok_headers_give_the_size() {
        assert_eq!(parse_header(b"OK 0"), Ok(0));
        assert_eq!(parse_header(b"OK 1048576"), Ok(1_048_576));
        assert_eq!(parse_header(b"OK 12\r"), Ok(12));
    }

    #[test]
    fn err_headers_are_counted_by_code() {
        assert_eq!(parse_header(b"ERR 404 no such file"), Err(NOT_FOUND));
        assert_eq!(parse_header(b"ERR 503 busy"), Err(BUSY));
        assert_eq!(parse_header(b"ERR 403 '..' in name"), Err(REJECTED));
        assert_eq!(parse_header(b"ERR 500 what"), Err(PROTOCOL));
    }

    #[test]
    fn anything_else_is_a_protocol_error() {
        for line in [&b"OK"[..], b"OK -1", b"OK 12 extra", b"hello", b"", b"\xff"] {
            assert_eq!(parse_header(line), Err(PROTOCOL), "{line:?}");
        }
    }
}
