//! The `download` scenario: each client fetches `NAME` with `GET NAME\n` (see
//! `docs/PROTOCOL.md`), over and over (in an open loop: whenever its next download is due), one
//! connection per download.
//!
//! ```text
//!   IDLE → CONNECTING → REQUESTING → HEADER → BODY ─┐   EOF after exactly <size> bytes: one
//!    │↑         ↓            ↓          ↓       ↓    │   download; connect again
//!    ↓│     BACKING-OFF ←────┴──────────┴───────┘    │   an error: count it, wait, connect again
//!  SCHEDULED ←───────────────────────────────────────┘   (open loop: wait until the next is due)
//! ```
//!
//! The states around REQUESTING, HEADER and BODY are every TCP client's and live in `tcp.rs`;
//! this file holds `Fetch` and its connected states, `Transfer`.
//!
//! Each download is verified against the `OK <size>` header: fewer bytes before EOF is a
//! "short read", more is a "protocol" error, an `ERR` line is counted by its code. The body is
//! read into the thread's scratch buffer and thrown away; only its length matters. Bytes count
//! towards MB/s as they arrive, so a download cut off by the end of the run still counts its
//! bytes but not as a download.

use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use super::driver::{Ctx, OPERATION_TIMEOUT};
use super::pace::Pace;
use super::report::{BUSY, NOT_FOUND, PROTOCOL, REJECTED, SHORT_READ};
use super::tcp::{self, Failure, Go, Outcome, Protocol, Session};

/// Longest header line accepted, in bytes: `OK ` and 20 digits, or an `ERR` line with a reason.
const MAX_HEADER: usize = 256;

/// What makes a TCP client a downloading one: the request it sends, and when.
#[derive(Debug)]
pub(crate) struct Fetch {
    /// `GET NAME\n`, shared by every client of the run.
    request: Arc<[u8]>,
    /// One download at a time, at once (closed loop) or when due (open loop).
    pace: Pace,
    /// When the download being made counts from: its connect, or when it was due.
    started: Instant,
}

impl Fetch {
    pub fn new(request: Arc<[u8]>, pace: Pace) -> Fetch {
        Fetch {
            request,
            pace,
            started: Instant::now(),
        }
    }
}

impl Protocol for Fetch {
    const SERVICE: &'static str = "download";

    type Session = Transfer;

    /// A download is the operation, one per connection: each connection takes a ticket, and
    /// its place in the timetable.
    fn may_connect(&mut self, ctx: &mut Ctx<'_>) -> Go {
        match tcp::next_operation(&mut self.pace, ctx) {
            Ok(started) => {
                self.started = started;
                Go::Now
            }
            Err(wait) => wait,
        }
    }

    /// CONNECTING → REQUESTING; the request goes out at once.
    fn open(&mut self, _since: Instant, ctx: &Ctx<'_>) -> Transfer {
        Transfer::Requesting {
            since: self.started,
            progress: ctx.now,
            written: 0,
        }
    }

    fn stopped(&mut self, ctx: &mut Ctx<'_>) {
        self.pace.stopped(ctx);
    }

    /// The I/O of the current state, until it must wait or moves on.
    fn advance(
        &mut self,
        stream: &mut TcpStream,
        transfer: &mut Transfer,
        ctx: &mut Ctx<'_>,
    ) -> Result<Outcome<Transfer>, Failure> {
        match transfer {
            Transfer::Requesting {
                since,
                progress,
                written,
            } => {
                let n = tcp::write(stream, &self.request[*written..])?;
                if n > 0 {
                    *progress = ctx.now;
                }
                *written += n;
                if *written < self.request.len() {
                    // Registered for both directions while connecting: the rest of a request
                    // the socket did not take goes out on the next writable event.
                    return Ok(Outcome::Wait);
                }
                // REQUESTING → HEADER.
                Ok(Outcome::Next(Transfer::Header {
                    since: *since,
                    progress: ctx.now,
                    line: Vec::new(),
                }))
            }
            Transfer::Header {
                since,
                progress,
                line,
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
                    // HEADER → BODY, counting the body bytes that came with the header.
                    let early = (n - end - 1) as u64;
                    ctx.tally.bytes += early;
                    let remaining = size.checked_sub(early).ok_or(Failure::Protocol(PROTOCOL))?;
                    return Ok(Outcome::Next(Transfer::Body {
                        since: *since,
                        progress: ctx.now,
                        remaining,
                    }));
                }
                Ok(Outcome::Wait)
            }
            Transfer::Body {
                since,
                progress,
                remaining,
            } => {
                while let Some(n) = tcp::read(stream, ctx.scratch)? {
                    if n == 0 {
                        if *remaining > 0 {
                            return Err(Failure::Protocol(SHORT_READ));
                        }
                        // One verified download; its bytes were counted as they arrived.
                        ctx.complete(*since, 0);
                        return Ok(Outcome::Done);
                    }
                    *progress = ctx.now;
                    ctx.tally.bytes += n as u64;
                    *remaining = remaining
                        .checked_sub(n as u64)
                        .ok_or(Failure::Protocol(PROTOCOL))?;
                }
                Ok(Outcome::Wait)
            }
        }
    }
}

/// Where a download is once connected.
#[derive(Debug)]
pub(crate) enum Transfer {
    /// Sending the request line.
    Requesting {
        /// When the download counts from: its connect, or in an open loop when it was due.
        since: Instant,
        /// When this state last moved a byte; the state times out [`OPERATION_TIMEOUT`] later.
        progress: Instant,
        /// Request bytes written so far.
        written: usize,
    },
    /// Reading the header line.
    Header {
        since: Instant,
        progress: Instant,
        /// The header bytes so far, without the newline.
        line: Vec<u8>,
    },
    /// Reading the body until EOF.
    Body {
        since: Instant,
        progress: Instant,
        /// Body bytes the header announced and not yet received.
        remaining: u64,
    },
}

impl Session for Transfer {
    fn name(&self) -> &'static str {
        match self {
            Transfer::Requesting { .. } => "REQUESTING",
            Transfer::Header { .. } => "HEADER",
            Transfer::Body { .. } => "BODY",
        }
    }

    /// Every step waits on the server: it times out when the server takes or sends nothing for
    /// a whole operation timeout.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Transfer::Requesting { progress, .. }
            | Transfer::Header { progress, .. }
            | Transfer::Body { progress, .. } => Some(*progress + OPERATION_TIMEOUT),
        }
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
    use crate::bench::driver::Client;
    use crate::bench::driver::harness::{Harness, serve_one};
    use crate::bench::pace::Mode;
    use crate::bench::report::{TIMEOUT, Tally};
    use crate::bench::tcp::Connection;

    // IDLE, CONNECTING, BACKING-OFF and FINISHED, and stopping from every state, are the shared
    // states of `tcp.rs`, tested there. Here: REQUESTING, HEADER and BODY with each of their
    // inputs. REQUESTING is passed by every test below (their server checks the request line);
    // its timeout is not tested, since a socket's send buffer always takes a request line at
    // once, so no server can make it wait.

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

    fn fetch() -> Fetch {
        Fetch::new(b"GET f\n"[..].into(), Pace::single(Mode::Closed, 0, 1))
    }

    /// A client that has started its only download (one ticket) against `reply`.
    fn download(reply: &'static [&'static [u8]]) -> (Harness, Connection<Fetch>) {
        let mut h = Harness::new(server(reply), Some(1));
        let mut client = Connection::new(fetch());
        client.start(&mut h.ctx(Instant::now()));
        assert_eq!(client.state().name(), "CONNECTING");
        (h, client)
    }

    fn is(state: &'static str) -> impl Fn(&Connection<Fetch>, &Tally) -> bool {
        move |c, _| c.state().name() == state
    }

    fn any_of(states: &'static [&'static str]) -> impl Fn(&Connection<Fetch>, &Tally) -> bool {
        move |c, _| states.contains(&c.state().name())
    }

    // ---- CONNECTING → REQUESTING → HEADER → BODY → (EOF) ----

    #[test]
    fn a_download_of_the_announced_size_counts_once_eof_comes() {
        let (mut h, mut client) = download(&[b"OK 1", b"0\n01234", b"56789"]);
        // The server keeps the connection open after the body: no EOF, so not yet a download.
        h.run_until(&mut client, "the body", |_, t| t.bytes == 10);
        assert_eq!(client.state().name(), "BODY");
        assert_eq!(h.tally.operations, 0);
    }

    #[test]
    fn eof_after_the_body_completes_the_download() {
        let addr = serve_one(|mut stream| {
            let _ = BufReader::new(&stream).read_line(&mut String::new());
            let _ = stream.write_all(b"OK 5\nhello");
        });
        let mut h = Harness::new(addr, Some(1));
        let mut client = Connection::new(fetch());
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
    fn a_silent_header_times_out() {
        let (mut h, mut client) = download(&[]);
        h.run_until(&mut client, "HEADER", is("HEADER"));
        client.on_tick(&mut h.ctx(Instant::now() + Duration::from_secs(1)));
        assert_eq!(client.state().name(), "HEADER", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state().name(), "BACKING-OFF");
        assert_eq!(h.tally.errors.get(TIMEOUT), Some(&1));
    }

    #[test]
    fn a_silent_body_times_out() {
        let (mut h, mut client) = download(&[b"OK 100\nab"]);
        h.run_until(&mut client, "BODY", |_, t| t.bytes == 2);
        client.on_tick(&mut h.ctx(Instant::now() + Duration::from_secs(1)));
        assert_eq!(client.state().name(), "BODY", "not due yet");
        client.on_tick(&mut h.ctx(Instant::now() + OPERATION_TIMEOUT));
        assert_eq!(client.state().name(), "BACKING-OFF");
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
