//! What lives in the endpoint table, and the contract between the loop and every handler.
//!
//! The loop knows nothing about echo or downloads. It finds an [`Endpoint`] by token, hands it the
//! event through the `match` in [`Endpoint::on_event`], and applies the [`Next`] it gets back:
//! keep the endpoint (registered for whatever [`Endpoint::interest`] now says), or close it for a
//! named [`CloseReason`]. Handlers never touch the slab or the `Registry`; that is
//! [`endpoint`](crate::endpoint)'s job alone.
//!
//! Nor does the loop build connections: when a listener accepts a socket, the loop hands it to the
//! listener's [`Service`], which makes the right kind of connection of it.

pub mod admin;
pub mod chat;
pub mod download;
pub mod echo;
#[cfg(test)]
pub(crate) mod fake;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::{Event, Source};
use mio::{Interest, Token};
use signal_hook_mio::v1_0::Signals;

use log::debug;

use self::download::files::Files;
use crate::access::{self, Notes};
use crate::buffer::Watermarks;
use crate::config::Config;
use crate::listener::Listener;
use crate::stats::{CloseReason, ServiceId, Stats};
use crate::sys::counted::TcpStream;
use crate::sys::{self, interrupted, peer_gone, would_block};
use crate::token::Id;

/// What a handler tells the loop: `Continue(())` keeps the endpoint, `Break(reason)` closes it.
///
/// `ControlFlow` lets a handler leave early with `?` from any helper that decided to close.
pub type Next = ControlFlow<CloseReason>;

/// Keep the endpoint open.
pub const KEEP: Next = ControlFlow::Continue(());

/// What connections need of the configuration: the few values read while handling events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Close a connection after this long without traffic (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// How long a closing connection drains input after its FIN (`--linger`).
    pub linger: Duration,
    /// Stop reading from a client owed this much; read again below the low mark.
    pub marks: Watermarks,
    /// A client that pauses this long has finished sending (`--request-grace`): a download
    /// request without its newline ends, and an echo stream ends once the server is shutting down.
    pub request_grace: Duration,
    /// An admin request head must arrive within this long; an idle admin connection closes
    /// after it (`--admin-timeout`).
    pub admin_timeout: Duration,
    /// Whether the access log is written (`--access-log`, and its log target enabled): the loop
    /// then keeps [`Notes`] on every client.
    pub access_log: bool,
}

impl Settings {
    /// The connection settings of a configuration.
    pub fn from_config(config: &Config) -> Self {
        Settings {
            idle_timeout: config.idle_timeout,
            linger: config.linger,
            marks: Watermarks {
                high: config.high_water,
                low: config.low_water,
            },
            request_grace: config.request_grace,
            admin_timeout: config.admin_timeout,
            access_log: access::enabled(config.access_log),
        }
    }
}

/// The TCP services a listener can hand its connections to, with what their connections share.
#[derive(Debug, Clone)]
pub enum Service {
    /// TCP echo (RFC 862).
    Echo,
    /// TCP file download from the served root.
    Download(Arc<Files>),
    /// The admin HTTP service.
    Admin,
}

impl Service {
    /// The service's name in log lines and on the start-up line.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Download(_) => "files",
            Service::Admin => "admin",
        }
    }

    /// Sets the options every socket this service's listener accepts inherits: a download holds
    /// at most [`download::UNSENT_LIMIT`] unsent. Echo answers what it reads, and admin replies
    /// are small: they keep the kernel's defaults.
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    pub fn tune_listener(&self, listener: &impl AsFd) -> io::Result<()> {
        match self {
            Service::Download(_) => sys::limit_unsent(listener, download::UNSENT_LIMIT),
            Service::Echo | Service::Admin => Ok(()),
        }
    }

    /// The connection an accepted socket becomes.
    pub fn connect(&self, stream: TcpStream, now: Instant, settings: &Settings) -> Endpoint {
        match self {
            Service::Echo => Endpoint::Echo(echo::Connection::new(stream, now, settings)),
            Service::Download(files) => {
                let answer = download::Answer::Files(Arc::clone(files));
                Endpoint::Download(download::Connection::new(stream, now, settings, answer))
            }
            Service::Admin => {
                // A streamed reply goes out as a head and then pieces, each a small write: with
                // Nagle's algorithm on, a piece would wait for the client's delayed ACK (40 ms)
                // on every kept-alive request. If the option cannot be set, replies are slower.
                let _ = stream.set_nodelay(true);
                Endpoint::Admin(Box::new(admin::Connection::new(stream, now, settings)))
            }
        }
    }

    /// The access log's notes on a new client from `peer`. An echo client asks for nothing in
    /// words: what it asks is the echo itself.
    pub fn notes(&self, peer: SocketAddr) -> Notes {
        let mut notes = Notes::new(self.name(), peer);
        if let Service::Echo = self {
            notes.asked = Some("echo".into());
        }
        notes
    }

    /// What an accepted connection counts as, and so which limit it is held to.
    pub fn role(&self) -> Role {
        match self {
            Service::Echo | Service::Download(_) => Role::Client,
            Service::Admin => Role::Admin,
        }
    }

    /// The connection an accepted socket becomes when the server is at `--max-conns`: one that
    /// only says so, if the protocol has a way to say it; `None` closes the socket at once.
    pub fn turn_away(
        &self,
        stream: TcpStream,
        now: Instant,
        settings: &Settings,
    ) -> Option<Endpoint> {
        match self {
            // Echo has no words of its own: whatever it sent would look like an echo. The admin
            // service is past its own limit: its clients are scripts and browsers that retry.
            Service::Echo | Service::Admin => None,
            Service::Download(_) => {
                let until = now + download::TURN_AWAY_DEADLINE;
                let answer = download::Answer::TurnedAway { until };
                let connection = download::Connection::new(stream, now, settings, answer);
                Some(Endpoint::Download(connection))
            }
        }
    }
}

/// Everything a handler may use besides its own endpoint, for one event.
#[derive(Debug)]
pub struct Context<'a> {
    /// The time the loop woke up; one clock read serves the whole batch of events.
    pub now: Instant,
    /// The endpoint's token, for log lines.
    pub token: Token,
    /// Timeouts and water marks.
    pub settings: &'a Settings,
    /// Counters to add to.
    pub stats: &'a Stats,
    /// One read buffer shared by every connection: input is read here and written straight back,
    /// so a connection owns heap memory only while the peer is slow to take its output.
    pub scratch: &'a mut [u8],
    /// Bytes this call may still move. A handler that uses it up stops before `WouldBlock`, and
    /// the loop calls it again once the other events of the batch have been handled, since no new
    /// edge need come for what is left. So one fast client cannot hold the loop while others wait.
    /// The read or write that spends it may cross it, by less than one `scratch`'s worth.
    pub budget: usize,
    /// Whether a read that returns fewer bytes than asked proves the socket drained, saving the
    /// read that would only say `WouldBlock`. epoll(7) allows it for stream sockets: the next
    /// byte to arrive raises a new edge. It is true only for a readiness event that reported no
    /// hang-up or error; otherwise the peer's FIN may wait behind the data with its edge already
    /// spent, and only `WouldBlock` (or a zero-length read) ends the drain.
    pub short_read_drains: bool,
    /// The access log's notes on this connection, for what it asked and was answered. `None`
    /// while `--access-log` is off: a handler checks this one field before it formats anything.
    pub access: Option<&'a mut Notes>,
    /// What the chat relay and its Redis links leave one another (`--chat-bus`); `None` while
    /// the bus is off. Only those three endpoints look at it.
    pub bus: Option<&'a mut chat::bus::Exchange>,
}

/// A handler's [`Context::budget`] per call: 256 KiB is a few socket buffers' worth, enough to
/// amortise a pass of the loop, small enough that a pass stays well under a millisecond.
pub const FAIR_SHARE: usize = 256 * 1024;

/// A byte stream a connection can run on: a TCP stream in the server (mio's, each of its system
/// calls counted: [`TcpStream`]), a scripted fake in the state-machine tests.
pub trait Stream: Read + Write {
    /// Sends FIN: no more output, while input may still be read.
    ///
    /// # Errors
    /// As `shutdown(2)`; `ENOTCONN` when the peer is already gone.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Makes the coming close a reset (`SO_LINGER` 0): the peer's next read fails instead of
    /// ending cleanly, which is how a client learns that what it received is not all there was.
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    fn reset_on_close(&mut self) -> io::Result<()>;

    /// Sends up to `count` bytes of `file` from `offset` without copying them through user space,
    /// and moves `offset` past what was sent; `Ok(0)` means the file ended.
    ///
    /// A stream with no such path keeps this default, and the download body is copied through
    /// the scratch buffer instead (see `files::Transfer::send`).
    ///
    /// # Errors
    /// `WouldBlock` when the stream is full; `Unsupported` when there is no zero-copy path.
    fn send_file(&mut self, file: &File, offset: &mut u64, count: usize) -> io::Result<usize> {
        let _ = (file, offset, count);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Reads and discards input until `WouldBlock`; `Ok(true)` once the peer's FIN has arrived.
///
/// This is the draining half of a lingering close: after our FIN, input the peer still sends is
/// read and dropped, so that closing does not find unread input and answer with RST.
///
/// # Errors
/// A read error other than `WouldBlock` and `Interrupted`.
pub fn discard_input(stream: &mut impl Read, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        match stream.read(scratch) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// An I/O error closes this connection alone: as a reset when the peer went away, as an error
/// otherwise. Either way it is the peer's or the network's business, logged at debug level.
pub fn io_failure(
    service: &str,
    state: &dyn fmt::Display,
    err: io::Error,
    ctx: &Context<'_>,
) -> Next {
    debug!("{} {service} in {state}: {err}", Id(ctx.token));
    if peer_gone(&err) {
        ControlFlow::Break(CloseReason::Reset)
    } else {
        ControlFlow::Break(CloseReason::Error)
    }
}

/// The two halves of readiness that every client connection handles.
pub trait Handler {
    /// The socket has input, the peer's FIN, or an error.
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next;
    /// The socket can take output, or has an error.
    fn on_writable(&mut self, ctx: &mut Context<'_>) -> Next;
}

/// Hands one readiness event to a connection.
///
/// Errors and hang-ups are passed on as readiness too: the next read or write reports them, and
/// the handler closes with the right reason. Reads go first, so input that arrived with a
/// hang-up is still handled.
fn deliver(connection: &mut impl Handler, event: &Event, ctx: &mut Context<'_>) -> Next {
    ctx.short_read_drains = !(event.is_read_closed() || event.is_error());
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        connection.on_readable(ctx)?;
    }
    if event.is_writable() || event.is_write_closed() || event.is_error() {
        connection.on_writable(ctx)?;
    }
    KEEP
}

/// Lets a connection that used up its budget continue. Each half does nothing in a state that
/// has nothing to do, so calling both is always safe.
fn resume(connection: &mut impl Handler, ctx: &mut Context<'_>) -> Next {
    connection.on_readable(ctx)?;
    connection.on_writable(ctx)
}

/// What the admin service's `/connections` shows of an endpoint, beside what the table knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The service it belongs to (`echo`, `files`, `chat`, `admin`); empty for signals and waker.
    pub service: &'static str,
    /// `listener`, `connection`, `turned-away`, `relay`, `redis-commands`, `redis-subscriber`,
    /// `signals` or `waker`.
    pub kind: &'static str,
    /// Its state machine's state, spelled as in `docs/DESIGN.md`.
    pub state: String,
    /// The client's address, for a connection; Redis's, for a chat bus link.
    pub peer: Option<SocketAddr>,
    /// Output waiting for the socket: bytes for a connection, datagrams for the chat relay.
    pub buffered: usize,
}

/// What an endpoint counts as in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An echo or download client: counts against `--max-conns` and in `open`, and graceful
    /// shutdown waits for it.
    Client,
    /// Accepted past `--max-conns` only to be told so: counts against `--max-turned-away`.
    TurnedAway,
    /// An admin HTTP client: counts against `--admin-max-conns`, and is served until the loop
    /// stops, draining included.
    Admin,
    /// The server's own sources: listeners, the chat relay and its Redis links, signals, the
    /// waker.
    Own,
}

impl Role {
    /// The roles the table keeps a count of.
    pub const COUNTED: [Role; 3] = [Role::Client, Role::TurnedAway, Role::Admin];
}

/// One entry of the endpoint table: every source the loop polls.
pub enum Endpoint {
    /// A TCP listener, and the service its clients get.
    Listener {
        /// The listening socket and its accept state.
        listener: Listener,
        /// What an accepted socket becomes.
        service: Service,
    },
    /// A TCP echo client (RFC 862).
    Echo(echo::Connection),
    /// A TCP file download client.
    Download(download::Connection),
    /// An admin HTTP client. Boxed: there are a few at most, and every slot of the table is as
    /// large as the largest variant.
    Admin(Box<admin::Connection>),
    /// The UDP chat relay: one socket for every member. Boxed: there is one relay, and every
    /// slot of the table is as large as the largest variant.
    Chat(Box<chat::Relay>),
    /// One of the chat relay's two connections to Redis (`--chat-bus`). Boxed, as the relay is.
    Bus(Box<chat::bus::link::Link>),
    /// SIGINT and SIGTERM, delivered as readiness.
    Signals(Signals),
    /// The `mio::Waker` that a [`Handle`](crate::Handle) uses to ask for shutdown; the waker
    /// itself is owned by the handles, so this entry only reserves its token.
    Waker,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Listener { listener, .. } => listener.fmt(f),
            Endpoint::Echo(connection) => connection.fmt(f),
            Endpoint::Download(connection) => connection.fmt(f),
            Endpoint::Admin(connection) => connection.fmt(f),
            Endpoint::Chat(relay) => relay.fmt(f),
            Endpoint::Bus(link) => link.fmt(f),
            Endpoint::Signals(_) | Endpoint::Waker => f.write_str(self.kind()),
        }
    }
}

impl Endpoint {
    /// A short name for log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Listener { .. } => "listener",
            Endpoint::Echo(_) => "echo",
            Endpoint::Download(_) => "download",
            Endpoint::Admin(_) => "admin",
            Endpoint::Chat(_) => "chat",
            Endpoint::Bus(_) => "bus",
            Endpoint::Signals(_) => "signals",
            Endpoint::Waker => "waker",
        }
    }

    /// What this endpoint counts as, and so which limit holds it and whether shutdown waits
    /// for it.
    pub fn role(&self) -> Role {
        match self {
            Endpoint::Echo(_) => Role::Client,
            Endpoint::Download(connection) if connection.is_turned_away() => Role::TurnedAway,
            Endpoint::Download(_) => Role::Client,
            Endpoint::Admin(_) => Role::Admin,
            Endpoint::Listener { .. }
            | Endpoint::Chat(_)
            | Endpoint::Bus(_)
            | Endpoint::Signals(_)
            | Endpoint::Waker => Role::Own,
        }
    }

    /// The service whose figures this endpoint's traffic counts in; `None` for a listener (its
    /// accepting moves no bytes), a chat bus link (Redis is no client), signals and the waker.
    pub fn service_id(&self) -> Option<ServiceId> {
        match self {
            Endpoint::Echo(_) => Some(ServiceId::Echo),
            Endpoint::Download(_) => Some(ServiceId::Files),
            Endpoint::Admin(_) => Some(ServiceId::Admin),
            Endpoint::Chat(_) => Some(ServiceId::Chat),
            Endpoint::Listener { .. }
            | Endpoint::Bus(_)
            | Endpoint::Signals(_)
            | Endpoint::Waker => None,
        }
    }

    /// The name of the service this endpoint belongs to (`echo`, `files`, `chat`, `admin`), as
    /// `/connections?service=` names it; empty for signals and the waker.
    pub fn service_name(&self) -> &'static str {
        match self {
            Endpoint::Listener { service, .. } => service.name(),
            Endpoint::Signals(_) | Endpoint::Waker => "",
            // Redis is no client of the chat's, but its links are the chat's all the same.
            Endpoint::Bus(_) => ServiceId::Chat.name(),
            Endpoint::Echo(_) | Endpoint::Download(_) | Endpoint::Admin(_) | Endpoint::Chat(_) => {
                self.service_id().map_or("", ServiceId::name)
            }
        }
    }

    /// What the admin service lists of this endpoint. Asks the kernel for a connection's peer
    /// address: a system call per row, paid only while someone reads the list.
    pub fn describe(&self) -> Description {
        let describe = |kind, state: &dyn fmt::Display, peer, buffered| Description {
            service: self.service_name(),
            kind,
            state: state.to_string(),
            peer,
            buffered,
        };
        match self {
            Endpoint::Listener { listener, .. } => describe("listener", &listener.state(), None, 0),
            Endpoint::Echo(c) => describe("connection", &c.state(), c.peer(), c.owed()),
            Endpoint::Download(c) if c.is_turned_away() => {
                describe("turned-away", c.state(), c.peer(), c.buffered())
            }
            Endpoint::Download(c) => describe("connection", c.state(), c.peer(), c.buffered()),
            Endpoint::Admin(c) => describe("connection", c.state(), c.peer(), c.buffered()),
            Endpoint::Chat(relay) => {
                let state = if relay.queued() == 0 {
                    "READY"
                } else {
                    "QUEUEING"
                };
                describe("relay", &state, None, relay.queued())
            }
            Endpoint::Bus(link) => {
                let kind = match link.kind() {
                    chat::bus::link::Kind::Commands => "redis-commands",
                    chat::bus::link::Kind::Subscriber => "redis-subscriber",
                };
                describe(kind, link.state(), Some(link.peer()), link.buffered())
            }
            Endpoint::Signals(_) => describe("signals", &"WAITING", None, 0),
            Endpoint::Waker => describe("waker", &"WAITING", None, 0),
        }
    }

    /// The I/O source to register, or `None` for the waker, which registers itself, and for a
    /// chat bus link backing off, which has no socket then.
    pub fn source(&mut self) -> Option<&mut dyn Source> {
        match self {
            Endpoint::Listener { listener, .. } => Some(listener.source()),
            Endpoint::Echo(connection) => Some(connection.source()),
            Endpoint::Download(connection) => Some(connection.source()),
            Endpoint::Admin(connection) => Some(connection.source()),
            Endpoint::Chat(relay) => Some(relay.source()),
            Endpoint::Bus(link) => link.source().map(|stream| stream as &mut dyn Source),
            Endpoint::Signals(signals) => Some(signals),
            Endpoint::Waker => None,
        }
    }

    /// The readiness this endpoint wants now, derived from its state; `None` wants no events at all
    /// (a listener backing off), and the endpoint is then deregistered until it wants some again.
    pub fn interest(&self) -> Option<Interest> {
        match self {
            Endpoint::Listener { listener, .. } => listener.interest(),
            Endpoint::Echo(connection) => Some(connection.interest()),
            Endpoint::Download(connection) => Some(connection.interest()),
            Endpoint::Admin(connection) => Some(connection.interest()),
            Endpoint::Chat(relay) => Some(relay.interest()),
            Endpoint::Bus(link) => link.interest(),
            Endpoint::Signals(_) | Endpoint::Waker => Some(Interest::READABLE),
        }
    }

    /// When this endpoint next needs [`Endpoint::on_timeout`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Endpoint::Listener { listener, .. } => listener.deadline(),
            Endpoint::Echo(connection) => Some(connection.deadline()),
            Endpoint::Download(connection) => Some(connection.deadline()),
            Endpoint::Admin(connection) => Some(connection.deadline()),
            Endpoint::Chat(relay) => relay.deadline(),
            Endpoint::Bus(link) => link.deadline(),
            Endpoint::Signals(_) | Endpoint::Waker => None,
        }
    }

    /// Hands a readiness event to a client connection. Listeners, signals and the waker are the
    /// loop's own business and are not handled here.
    pub fn on_event(&mut self, event: &Event, ctx: &mut Context<'_>) -> Next {
        match self {
            Endpoint::Echo(connection) => deliver(connection, event, ctx),
            Endpoint::Download(connection) => deliver(connection, event, ctx),
            Endpoint::Admin(connection) => deliver(connection.as_mut(), event, ctx),
            Endpoint::Chat(relay) => deliver(relay.as_mut(), event, ctx),
            Endpoint::Bus(link) => deliver(link.as_mut(), event, ctx),
            Endpoint::Listener { .. } | Endpoint::Signals(_) | Endpoint::Waker => KEEP,
        }
    }

    /// The endpoint's deadline has passed.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_>) -> Next {
        match self {
            Endpoint::Listener { listener, .. } => {
                listener.on_timeout();
                KEEP
            }
            Endpoint::Echo(connection) => connection.on_timeout(ctx),
            Endpoint::Download(connection) => connection.on_timeout(ctx),
            Endpoint::Admin(connection) => connection.on_timeout(ctx),
            Endpoint::Chat(relay) => relay.on_timeout(ctx),
            Endpoint::Bus(link) => link.on_timeout(ctx),
            Endpoint::Signals(_) | Endpoint::Waker => KEEP,
        }
    }

    /// The endpoint used up its budget last time, or another endpoint left it work (the chat
    /// relay and its Redis links, through the exchange): carry on as if it were readable and
    /// writable, after taking that work.
    pub fn on_resume(&mut self, ctx: &mut Context<'_>) -> Next {
        match self {
            Endpoint::Echo(connection) => resume(connection, ctx),
            Endpoint::Download(connection) => resume(connection, ctx),
            Endpoint::Admin(connection) => resume(connection.as_mut(), ctx),
            Endpoint::Chat(relay) => {
                relay.on_mail(ctx);
                resume(relay.as_mut(), ctx)
            }
            Endpoint::Bus(link) => link.on_resume(ctx),
            Endpoint::Listener { .. } | Endpoint::Signals(_) | Endpoint::Waker => KEEP,
        }
    }

    /// The loop stops: every endpoint is closed right after this. A download still sending a
    /// file makes its close a reset, so its client knows it got less than was promised; an admin
    /// response under way writes its request's access line.
    pub fn on_stop(&mut self, ctx: &mut Context<'_>) {
        match self {
            Endpoint::Download(connection) => connection.on_stop(ctx),
            Endpoint::Admin(connection) => connection.on_stop(ctx),
            // Nothing promised that a plain close would misrepresent.
            Endpoint::Listener { .. }
            | Endpoint::Echo(_)
            | Endpoint::Chat(_)
            | Endpoint::Bus(_)
            | Endpoint::Signals(_)
            | Endpoint::Waker => {}
        }
    }

    /// The server is shutting down: listeners close at once, so new clients are refused;
    /// connections finish what they owe, then close; signals stay, to hear a second signal.
    pub fn on_shutdown(&mut self, ctx: &mut Context<'_>) -> Next {
        match self {
            // The admin listener stays: health checks must hear that the server is draining.
            Endpoint::Listener {
                service: Service::Admin,
                ..
            } => KEEP,
            Endpoint::Listener { .. } => ControlFlow::Break(CloseReason::Shutdown),
            Endpoint::Echo(connection) => connection.on_shutdown(ctx),
            Endpoint::Download(connection) => connection.on_shutdown(ctx),
            Endpoint::Admin(connection) => connection.on_shutdown(ctx),
            // Datagrams need no goodbye; the relay and its links serve until the loop stops.
            Endpoint::Chat(_) | Endpoint::Bus(_) => KEEP,
            Endpoint::Signals(_) | Endpoint::Waker => KEEP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of the endpoint table is as large as the largest variant, and an idle
    /// connection costs one slot: keep them small (issue 6 budgets 512 bytes per idle connection).
    #[test]
    fn an_endpoint_fits_in_a_few_cache_lines() {
        let size = std::mem::size_of::<Endpoint>();
        assert!(size <= 128, "Endpoint is {size} bytes");
    }

    /// The download listener carries the unsent limit its connections inherit (see
    /// `sys::tests`); the echo listener keeps the kernel's default.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_download_listener_limits_unsent_bytes() {
        let root = tempfile::tempdir().unwrap();
        let config = Config {
            root: root.path().to_path_buf(),
            ..Config::default()
        };
        let files = Files::open(&config, Arc::new(Stats::default())).unwrap();
        let lowat = |service: Service| {
            let listener = sys::tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
            service.tune_listener(&listener).unwrap();
            socket2::SockRef::from(&listener)
                .tcp_notsent_lowat()
                .unwrap()
        };
        assert_eq!(
            lowat(Service::Download(Arc::new(files))),
            download::UNSENT_LIMIT
        );
        // 0: not set on the socket, so `net.ipv4.tcp_notsent_lowat` (by default no limit) holds.
        assert_eq!(lowat(Service::Echo), 0);
    }
}
