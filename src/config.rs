//! The server's configuration: plain typed settings, with every default named in one place.
//!
//! `readyloop` with no arguments runs with the defaults below, so the first run needs no reading.
//! Nothing here knows about flags: [`crate::cli`] turns the command line into a [`Config`], and
//! tests and benchmarks build one directly. Each service then takes the few values it needs into
//! a struct of its own (`service::Settings`, `chat::members::Limits`, `download::files::Files`),
//! so no handler depends on the whole configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Address every service binds: all IPv4 interfaces, as the tutorial's servers do.
pub const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// TCP echo port (RFC 862 uses 7; 7788 is the tutorial's TCP server and needs no privilege).
pub const DEFAULT_ECHO_PORT: u16 = 7788;
/// TCP file download port: the tutorial's downloader is started as `server.py 7890`.
pub const DEFAULT_FILES_PORT: u16 = 7890;
/// UDP chat relay port: the tutorial's UDP programs send to port 8080.
pub const DEFAULT_CHAT_PORT: u16 = 8080;
/// Admin HTTP port (metrics, connection list, health, live page): 7700 sits beside the other
/// services' ports and clear of the usual monitoring ones (Prometheus 9090, Grafana 3000,
/// node_exporter 9100, and the 9xxx exporter range).
pub const DEFAULT_ADMIN_PORT: u16 = 7700;
/// Address the admin service binds whatever `--bind` says: its connection list shows client
/// addresses, so it is reachable from this machine only unless asked otherwise.
pub const DEFAULT_ADMIN_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Admin connections at once: a few browsers and scrapers need a handful; 64 leaves room for a
/// dashboard wall while keeping a flood of them to a few hundred KiB of head buffers.
pub const DEFAULT_ADMIN_MAX_CONNS: usize = 64;
/// Seconds an admin client has to send a whole request head, however it paces its bytes (so a
/// slowloris client is cut off), and that an idle keep-alive admin connection stays open: 10 s is
/// far beyond any browser or scraper, and frees a slot held by one that went quiet.
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds without any byte moving before a connection is closed: 300 s outlasts any
/// interactive pause yet frees slots that dead peers would hold forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Open client connections: 10 000 fits in a default `ulimit -n` raised to 16 Ki with room for
/// files and listeners, and costs well under 10 MiB of server memory when idle.
pub const DEFAULT_MAX_CONNS: usize = 10_000;
/// Connections accepted past `--max-conns` and kept for a moment to be told `ERR 503` (download
/// port): enough to answer a burst politely, few enough that a flood costs a few pages of memory.
pub const DEFAULT_MAX_TURNED_AWAY: usize = 64;
/// Bytes owed to one client at which the server stops reading from it: 64 KiB is one default
/// socket send buffer, enough to keep a fast reader busy.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// Bytes owed below which a paused client is read again: a quarter of the high mark.
pub const DEFAULT_LOW_WATER: usize = 16 * 1024;
/// Seconds that open connections get to finish after SIGINT/SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a download client may pause after sending part of a request before that part counts
/// as the whole request: the tutorial's downloader sends a bare name with no newline, in one
/// packet; 50 ms is far above loopback and LAN jitter, yet unnoticeable to a person. At shutdown
/// the same pause tells an echo client that has finished from one still streaming.
pub const DEFAULT_REQUEST_GRACE: Duration = Duration::from_millis(50);
/// Files open for downloads at once: 1 024 leaves most of a 16 Ki descriptor limit to sockets.
pub const DEFAULT_MAX_OPEN_FILES: usize = 1024;
/// Entries in a `LIST` reply: bounds the directory walk and the reply's memory.
pub const DEFAULT_LIST_MAX: usize = 10_000;
/// Silence after which a chat member expires: as long as a TCP connection may idle.
pub const DEFAULT_CHAT_IDLE: Duration = Duration::from_secs(300);
/// Longest chat datagram accepted, in bytes: a few lines of text, well under one MTU.
pub const DEFAULT_CHAT_MAX_MSG: usize = 1024;
/// Chat members at once: bounds the member table (a few hundred bytes each).
pub const DEFAULT_CHAT_MAX_MEMBERS: usize = 4096;
/// Chat rooms at once.
pub const DEFAULT_CHAT_MAX_ROOMS: usize = 256;
/// Messages per second per chat member: far above typing speed, far below a flood.
pub const DEFAULT_CHAT_RATE: u32 = 20;
/// Messages a chat member may send at once before the rate applies: a pasted paragraph.
pub const DEFAULT_CHAT_BURST: u32 = 40;
/// Datagrams waiting for the UDP socket before the oldest are dropped: about a megabyte at the
/// largest message size, a full room's worth of one burst.
pub const DEFAULT_CHAT_QUEUE: usize = 1024;
/// Redis's own port, taken when `--chat-bus` names none.
pub const DEFAULT_REDIS_PORT: u16 = 6379;
/// Put before every Redis key and channel of the chat bus, so that one Redis can serve other
/// applications, or several separate federations (`readyloop-staging:`), side by side.
pub const DEFAULT_CHAT_BUS_PREFIX: &str = "readyloop:";
/// Commands waiting for Redis before the oldest are dropped: one per member and a few more, so
/// that claiming every nickname again after a reconnect (one command each, up to
/// `--chat-max-members`) fits.
pub const DEFAULT_CHAT_BUS_QUEUE: usize = 4096;
/// Seconds a closing connection keeps draining input after its FIN, so unread input does not
/// make the kernel answer with RST and destroy output the peer has not read yet.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// Everything the server needs to run: typed values, already checked by their parsers.
///
/// The command line ([`crate::cli`]) builds one; tests and benchmarks build one directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address the services listen on.
    pub bind: IpAddr,
    /// Bind every listener and the chat socket with `SO_REUSEPORT`, so that several processes
    /// share the ports and the kernel spreads clients across them.
    pub reuse_port: bool,
    /// TCP echo port (0: any free port; `None`: the service is off).
    pub echo_port: Option<u16>,
    /// TCP file download port (0: any free port; `None`: off).
    pub files_port: Option<u16>,
    /// UDP chat relay port (0: any free port; `None`: off).
    pub chat_port: Option<u16>,
    /// Admin HTTP port (0: any free port; `None`: off).
    pub admin_port: Option<u16>,
    /// Address the admin service listens on.
    pub admin_bind: IpAddr,
    /// Most admin connections open at once; more are closed at once.
    pub admin_max_conns: usize,
    /// Time an admin client has to send a request head; an idle admin connection closes after it.
    pub admin_timeout: Duration,
    /// Directory served by the download service.
    pub root: PathBuf,
    /// Close a connection after this long without traffic.
    pub idle_timeout: Duration,
    /// Most client connections open at once; more are accepted and closed at once.
    pub max_conns: usize,
    /// Most connections over `--max-conns` kept at once to be told why (`ERR 503`); more are
    /// closed at once.
    pub max_turned_away: usize,
    /// Bytes owed to one client at which the server stops reading from it.
    pub high_water: usize,
    /// Bytes owed below which a paused client is read again.
    pub low_water: usize,
    /// Time open connections get to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Time a closing connection keeps draining input after sending FIN.
    pub linger: Duration,
    /// A client that pauses this long has finished sending: a download request without its
    /// newline ends, and at shutdown an echo connection that owes nothing sends FIN.
    pub request_grace: Duration,
    /// Most files open for downloads at once; past it, requests get `ERR 503`.
    pub max_open_files: usize,
    /// Most entries in a `LIST` reply.
    pub list_max: usize,
    /// Serve and list names with a component starting with `.`.
    pub serve_hidden: bool,
    /// Send file bodies with read/write instead of zero-copy sendfile(2).
    pub no_sendfile: bool,
    /// A chat member silent this long expires.
    pub chat_idle: Duration,
    /// Longest chat datagram accepted, in bytes.
    pub chat_max_msg: usize,
    /// Most chat members at once; more get `* server full`.
    pub chat_max_members: usize,
    /// Most chat rooms at once.
    pub chat_max_rooms: usize,
    /// Messages per second per chat member (0: no limit).
    pub chat_rate: u32,
    /// Messages a chat member may send at once before the rate applies.
    pub chat_burst: u32,
    /// Datagrams waiting for the UDP socket before the oldest are dropped.
    pub chat_queue: usize,
    /// New chat addresses must echo a cookie (`/verify`) before they join.
    pub chat_verify: bool,
    /// The Redis that carries chat rooms between processes (`--chat-bus`); `None`: this process
    /// is the whole chat.
    pub chat_bus: Option<ChatBus>,
    /// Put before every key and channel of the chat bus.
    pub chat_bus_prefix: String,
    /// Commands waiting for Redis before the oldest are dropped.
    pub chat_bus_queue: usize,
    /// Pin the loop's thread to this CPU core (for benchmarks: keep it apart from the load).
    pub pin: Option<usize>,
    /// Log a line of statistics this often (0: never).
    pub stats_interval: Duration,
    /// Write the access log: a line per finished connection or request, and per chat join,
    /// nick change, leave and expiry, on the log target `readyloop::access`.
    pub access_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: DEFAULT_BIND,
            reuse_port: false,
            echo_port: Some(DEFAULT_ECHO_PORT),
            files_port: Some(DEFAULT_FILES_PORT),
            chat_port: Some(DEFAULT_CHAT_PORT),
            admin_port: Some(DEFAULT_ADMIN_PORT),
            admin_bind: DEFAULT_ADMIN_BIND,
            admin_max_conns: DEFAULT_ADMIN_MAX_CONNS,
            admin_timeout: DEFAULT_ADMIN_TIMEOUT,
            root: PathBuf::from("."),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_conns: DEFAULT_MAX_CONNS,
            max_turned_away: DEFAULT_MAX_TURNED_AWAY,
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_LOW_WATER,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            linger: DEFAULT_LINGER,
            request_grace: DEFAULT_REQUEST_GRACE,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            list_max: DEFAULT_LIST_MAX,
            serve_hidden: false,
            no_sendfile: false,
            chat_idle: DEFAULT_CHAT_IDLE,
            chat_max_msg: DEFAULT_CHAT_MAX_MSG,
            chat_max_members: DEFAULT_CHAT_MAX_MEMBERS,
            chat_max_rooms: DEFAULT_CHAT_MAX_ROOMS,
            chat_rate: DEFAULT_CHAT_RATE,
            chat_burst: DEFAULT_CHAT_BURST,
            chat_queue: DEFAULT_CHAT_QUEUE,
            chat_verify: false,
            chat_bus: None,
            chat_bus_prefix: DEFAULT_CHAT_BUS_PREFIX.to_string(),
            chat_bus_queue: DEFAULT_CHAT_BUS_QUEUE,
            pin: None,
            stats_interval: Duration::ZERO,
            access_log: false,
        }
    }
}

impl Config {
    /// Checks the values that their types alone cannot (limits of 0, inverted water marks).
    ///
    /// # Errors
    /// A sentence naming the flag and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if self.high_water == 0 {
            return Err("--high-water must be at least 1 byte".into());
        }
        if self.low_water == 0 {
            // Reading resumes once fewer than --low-water bytes are owed: never, with 0.
            return Err("--low-water must be at least 1 byte".into());
        }
        if self.low_water > self.high_water {
            return Err(format!(
                "--low-water ({}) must not exceed --high-water ({})",
                self.low_water, self.high_water
            ));
        }
        if [self.echo_port, self.files_port, self.chat_port]
            .iter()
            .all(Option::is_none)
        {
            return Err(
                "every service is off: turn on at least one of echo, files and chat".into(),
            );
        }
        if self.max_conns == 0 {
            return Err("--max-conns must be at least 1".into());
        }
        if self.chat_rate > 0 && self.chat_burst == 0 {
            return Err("--chat-burst must be at least 1 while --chat-rate is set".into());
        }
        if self.chat_idle.is_zero() {
            return Err("--chat-idle must be longer than 0".into());
        }
        if self.admin_timeout.is_zero() {
            return Err("--admin-timeout must be longer than 0".into());
        }
        if self.idle_timeout.is_zero() {
            return Err("--idle-timeout must be longer than 0".into());
        }
        if self.chat_bus.is_some() && self.chat_port.is_none() {
            return Err("--chat-bus carries chat rooms, but --chat-port is off".into());
        }
        if self.chat_bus_queue == 0 {
            return Err("--chat-bus-queue must be at least 1".into());
        }
        Ok(())
    }
}

/// Where the chat bus's Redis listens (`--chat-bus redis://HOST:PORT[/DB]`), its host already
/// resolved: the loop never waits for a name lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatBus {
    /// Redis's address.
    pub addr: SocketAddr,
    /// The database that holds the nickname and presence keys (`SELECT`); pub/sub channels
    /// are the same in every database.
    pub db: u32,
}

impl fmt::Display for ChatBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", self.addr, self.db)
    }
}

/// Parses `300`, `300s`, `50ms` or `2m` into a duration; a bare number is seconds. Shared by the
/// server's and the load generator's command lines.
///
/// # Errors
/// A message for clap to print when the text is not a number with one of those units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 300s, 50ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s or m"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn validate_rejects_inverted_watermarks_and_zero_limits() {
        let mut config = Config {
            low_water: 10,
            high_water: 5,
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("--low-water"));
        config.low_water = 0;
        assert!(config.validate().unwrap_err().contains("--low-water"));
        config.low_water = 1;
        config.max_conns = 0;
        assert!(config.validate().unwrap_err().contains("--max-conns"));
    }

    #[test]
    fn validate_rejects_a_chat_bus_without_a_chat_or_a_queue() {
        let bus = ChatBus {
            addr: "127.0.0.1:6379".parse().unwrap(),
            db: 0,
        };
        let mut config = Config {
            chat_bus: Some(bus),
            chat_port: None,
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("--chat-port is off")
        );
        config.chat_port = Some(0);
        assert_eq!(config.validate(), Ok(()));
        config.chat_bus_queue = 0;
        assert!(config.validate().unwrap_err().contains("--chat-bus-queue"));
        assert_eq!(bus.to_string(), "redis://127.0.0.1:6379/0");
    }
}
