//! The access log (`--access-log`): one line per finished connection or request, and one per
//! change of chat membership, on the log target `readyloop::access`.
//!
//! # The lines
//!
//! Every line is `key=value` pairs separated by single spaces, always the same keys in the same
//! order for one kind of line. A value is written bare when it is a plain word, in double quotes
//! when it holds a space, `"`, `\`, `=` or a control character (`\"`, `\\`, `\n`, `\r`, `\t` and
//! `\u{..}` inside the quotes), and as `-` when there is none (a real `-` is quoted: `"-"`).
//!
//! ```text
//! peer=127.0.0.1:40312 service=files asked="GET a.txt 0" answer="OK 1234" in=12 out=1242 duration=0.004s close=finished
//! peer=127.0.0.1:40313 service=echo asked=echo answer=- in=6 out=6 duration=1.250s close=peer
//! peer=127.0.0.1:40314 service=admin asked="GET /healthz" answer=200 in=58 out=102 duration=0.000s close=keep-alive
//! peer=127.0.0.1:40315 service=chat event=join nick=- room=lobby from=-
//! ```
//!
//! - A connection line ([`Line`]): `peer service asked answer in out duration close`. `asked` is
//!   what the client asked for: `echo`, a download's request (`GET <name> <offset>` with the
//!   offset always written, `LIST`, a bare name; a line that could not be parsed as it arrived,
//!   cut to [`MAX_ASKED`] characters), or an admin request (`GET /path?query`). `answer` is the
//!   server's verdict: `OK <n>` or `ERR <code>` for a download (also for the bare form, which
//!   sends no status line), the HTTP status for an admin request. `in` and `out` are bytes,
//!   `duration` is seconds with millisecond resolution, and `close` is why the connection closed
//!   (`peer`, `finished`, `reset`, `idle`, `limit`, `error`, `shutdown`, the spelling of the
//!   metrics' `reason` label), or `keep-alive` for an admin request after which the connection
//!   stayed open.
//! - A chat line ([`ChatLine`]): `peer service=chat event nick room`, where `event` is `join`
//!   (with `from=` the room left, `-` for a new member), `nick` (with `was=` the old nickname),
//!   `leave` or `expire`; `nick=-` is the default nickname, the address itself. The text of a
//!   message is never logged.
//!
//! # Where each line is written
//!
//! - Echo and download connections: by the endpoint table when it closes them
//!   ([`EndpointTable::close`](crate::endpoint::EndpointTable::close)), the one place that knows
//!   the close reason, the bytes moved and the open time, whichever path led there (a handler's
//!   verdict, a timeout, shutdown). What was asked and answered reaches it through the
//!   connection's [`Notes`]. A client closed at once past `--max-conns` gets its line where it is
//!   turned down, in the loop's accept.
//! - Admin requests: by the admin connection itself, when a response has gone out (or is cut
//!   short, by an error, a timeout or the loop's stop), since one connection carries many
//!   requests.
//! - Chat: by the chat (`service::chat::members`) at the change itself.
//!
//! # What it costs
//!
//! Off (the default), nothing is formatted or stored: the loop keeps no [`Notes`], so a handler's
//! [`Context::access`](crate::service::Context::access) is `None` and that one check is all it
//! pays; the chat checks one `bool`. On, the notes live beside the endpoint table, not in it
//! (about 90 bytes per open connection), so a connection's own slot is the same size either way.
//! Whether the log is on is decided once at start-up: the flag, and the log filter letting
//! `readyloop::access` through at info level, since a line nobody sees should cost nothing either.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use log::{Level, info, log_enabled};

use crate::stats::CloseReason;
use crate::stats::Moved;

/// The log target of every access line: `RUST_LOG=readyloop::access=off` silences them alone.
pub const TARGET: &str = "readyloop::access";

/// Longest `asked` value kept, in characters: a request line that could not be parsed, or an admin
/// path, may be kilobytes long; a log line should stay one screen line or two.
pub const MAX_ASKED: usize = 200;

/// Whether access lines are to be written: `--access-log` was given and the logger lets the target
/// through at info level. Asked once, when the server is built: the logger is set up before.
pub fn enabled(flag: bool) -> bool {
    flag && log_enabled!(target: TARGET, Level::Info)
}

/// Writes one line on the access target.
pub fn write(line: &dyn fmt::Display) {
    info!(target: TARGET, "{line}");
}

/// `text`, cut to [`MAX_ASKED`] characters with `…` at the end if it was longer.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_ASKED) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// What the access log knows of one open connection. Kept by the endpoint table beside the slot,
/// only while the log is on; the connection's handlers fill in `asked` and `answer` through their
/// context when they learn them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notes {
    /// The service's name (`echo`, `files`, `admin`).
    pub service: &'static str,
    /// The client's address, as `accept` gave it: asked of the socket at close it would be gone
    /// after a reset or a completed close handshake.
    pub peer: SocketAddr,
    /// What the client asked for, as the line shows it; `None` until it is known.
    pub asked: Option<Cow<'static, str>>,
    /// The server's answer; `None` until there is one.
    pub answer: Option<Answer>,
}

impl Notes {
    /// Notes on a client of `service` at `peer` that has asked nothing yet.
    pub fn new(service: &'static str, peer: SocketAddr) -> Self {
        Notes {
            service,
            peer,
            asked: None,
            answer: None,
        }
    }

    /// The connection line these notes make, given what the table knows.
    pub fn line(&self, moved: Moved, duration: Duration, close: Close) -> Line<'_> {
        Line {
            peer: Some(self.peer),
            service: self.service,
            asked: self.asked.as_deref(),
            answer: self.answer,
            moved,
            duration,
            close,
        }
    }
}

/// The server's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A download's `OK <n>`: the bytes that follow, or the entries of a listing.
    Ok(u64),
    /// A download's `ERR <code>`.
    Err(u16),
    /// An admin request's HTTP status.
    Status(u16),
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Ok(n) => write!(f, "OK {n}"),
            Answer::Err(code) => write!(f, "ERR {code}"),
            Answer::Status(code) => write!(f, "{code}"),
        }
    }
}

/// How a connection ended, or that it went on (`close=` in a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Closed, for this reason.
    Reason(CloseReason),
    /// An admin request was answered and the connection stays open for the next one.
    KeepAlive,
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A reason is spelled as the metrics' `reason` label spells it.
        f.write_str(match self {
            Close::Reason(reason) => reason.name(),
            Close::KeepAlive => "keep-alive",
        })
    }
}

/// One finished connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The service's name.
    pub service: &'a str,
    /// What was asked.
    pub asked: Option<&'a str>,
    /// What was answered.
    pub answer: Option<Answer>,
    /// Bytes read from and written to the client.
    pub moved: Moved,
    /// From accept (or, for an admin request, from its head) to now.
    pub duration: Duration,
    /// Why it closed.
    pub close: Close,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answer = self.answer.map(|answer| answer.to_string());
        write!(
            f,
            "peer={} service={} asked={} answer={} in={} out={} duration={:.3}s close={}",
            Peer(self.peer),
            Value(Some(self.service)),
            Value(self.asked),
            Value(answer.as_deref()),
            self.moved.bytes_in,
            self.moved.bytes_out,
            self.duration.as_secs_f64(),
            self.close,
        )
    }
}

/// A change of chat membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatEvent<'a> {
    /// Became a member (`from: None`) or moved rooms (`from`: the room left).
    Join {
        /// The room left, for a move.
        from: Option<&'a str>,
    },
    /// Chose a nickname.
    Nick {
        /// The nickname before, `None` for the default.
        was: Option<&'a str>,
    },
    /// Left with `/leave`.
    Leave,
    /// Was silent for `--chat-idle` and expired.
    Expire,
}

/// One change of chat membership: never a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine<'a> {
    /// The member's address.
    pub peer: SocketAddr,
    /// What happened.
    pub event: ChatEvent<'a>,
    /// The member's nickname after the event; `None` for the default (the address).
    pub nick: Option<&'a str>,
    /// The member's room after the event (for a leave or expiry, the room it was in).
    pub room: &'a str,
}

impl fmt::Display for ChatLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let event = match self.event {
            ChatEvent::Join { .. } => "join",
            ChatEvent::Nick { .. } => "nick",
            ChatEvent::Leave => "leave",
            ChatEvent::Expire => "expire",
        };
        write!(
            f,
            "peer={} service=chat event={event} nick={} room={}",
            self.peer,
            Value(self.nick),
            Value(Some(self.room)),
        )?;
        match self.event {
            ChatEvent::Join { from } => write!(f, " from={}", Value(from)),
            ChatEvent::Nick { was } => write!(f, " was={}", Value(was)),
            ChatEvent::Leave | ChatEvent::Expire => Ok(()),
        }
    }
}

/// An address, or `-`.
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A value as a line writes it: bare, quoted, or `-` for none.
struct Value<'a>(Option<&'a str>);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(text) = self.0 else {
            return f.write_str("-");
        };
        let plain =
            |c: char| !(c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '='));
        if !text.is_empty() && text != "-" && text.chars().all(plain) {
            return f.write_str(text);
        }
        f.write_str("\"")?;
        for c in text.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "{}", c.escape_unicode())?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests;
