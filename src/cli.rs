//! The command line: clap's types for `readyloop [serve]` and `readyloop bench`, and the step from
//! flags to a [`Config`].
//!
//! Everything that knows about flags, environment variables and their spelling lives here, so the
//! rest of the crate works with plain typed settings ([`Config`]) that tests and benchmarks build
//! directly. Every flag also reads a `READYLOOP_*` environment variable (the flag wins), which
//! suits service managers and containers.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use log::info;

use crate::config::*;

/// `readyloop [serve] [FLAGS]` or a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "readyloop",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run; without one, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's flags, accepted without the word `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// More log output: -v debug, -vv trace (RUST_LOG, when set, wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output: -q warnings only, -qq errors only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Generate load against a running server and report throughput and latency.
    // Boxed like `Serve`: a scenario's flags are a few hundred bytes.
    Bench(Box<crate::bench::BenchArgs>),
}

impl Cli {
    /// The log filter the flags ask for, used when `RUST_LOG` is not set.
    pub fn log_level(&self) -> log::LevelFilter {
        use log::LevelFilter::*;
        match (self.verbose, self.quiet) {
            (0, 0) => Info,
            (1, _) => Debug,
            (_, 0) => Trace,
            (_, 1) => Warn,
            _ => Error,
        }
    }

    /// The log filter used when `RUST_LOG` is not set: other crates' warnings, readyloop at the
    /// level of `-v`/`-q`, and with `--access-log` the access lines at info level, which `-q`
    /// would otherwise hide although the flag asked for them.
    pub fn log_filter(&self) -> String {
        let serve = match &self.command {
            Some(Command::Serve(args)) => args,
            Some(Command::Bench(_)) | None => &self.serve,
        };
        let mut filter = format!("warn,readyloop={}", self.log_level());
        if serve.access_log {
            filter.push_str(&format!(",{}=info", crate::access::TARGET));
        }
        filter
    }
}

/// The flags of `serve`, as text turned into values by clap; [`ServeArgs::into_config`] makes
/// the [`Config`] the server runs with.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServeArgs {
    /// Address the services listen on: an IP address or a host name (`localhost`).
    #[arg(long, env = "READYLOOP_BIND", default_value_t = DEFAULT_BIND.to_string())]
    pub bind: String,
    /// Bind every port with SO_REUSEPORT, so several readyloop processes can share them (one per
    /// core); the kernel spreads TCP connections and UDP source addresses across them.
    #[arg(long, env = "READYLOOP_REUSE_PORT", value_parser = BoolishValueParser::new())]
    pub reuse_port: bool,
    /// TCP echo port (0: any free port; off: no echo service).
    #[arg(long, env = "READYLOOP_ECHO_PORT", default_value_t = Port::On(DEFAULT_ECHO_PORT))]
    pub echo_port: Port,
    /// TCP file download port (0: any free port; off: no download service).
    #[arg(long, env = "READYLOOP_FILES_PORT", default_value_t = Port::On(DEFAULT_FILES_PORT))]
    pub files_port: Port,
    /// UDP chat relay port (0: any free port; off: no chat relay).
    #[arg(long, env = "READYLOOP_CHAT_PORT", default_value_t = Port::On(DEFAULT_CHAT_PORT))]
    pub chat_port: Port,
    /// Admin HTTP port: metrics, connection list, health, live page (0: any free port; off: none).
    #[arg(long, env = "READYLOOP_ADMIN_PORT", default_value_t = Port::On(DEFAULT_ADMIN_PORT))]
    pub admin_port: Port,
    /// Address the admin service listens on, whatever --bind says (an IP address or host name).
    #[arg(long, env = "READYLOOP_ADMIN_BIND", default_value_t = DEFAULT_ADMIN_BIND.to_string())]
    pub admin_bind: String,
    /// Most admin connections open at once; more are closed at once.
    #[arg(long, env = "READYLOOP_ADMIN_MAX_CONNS", default_value_t = DEFAULT_ADMIN_MAX_CONNS)]
    pub admin_max_conns: usize,
    /// Time an admin client has to send a request head; an idle admin connection closes after it.
    #[arg(long, env = "READYLOOP_ADMIN_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub admin_timeout: Duration,
    /// Directory served by the download service.
    #[arg(long, env = "READYLOOP_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// Close a connection after this long without traffic.
    #[arg(long, env = "READYLOOP_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "300s")]
    pub idle_timeout: Duration,
    /// Most client connections open at once; more are accepted and closed at once.
    #[arg(long, env = "READYLOOP_MAX_CONNS", default_value_t = DEFAULT_MAX_CONNS)]
    pub max_conns: usize,
    /// Most connections over --max-conns kept at once to be told `ERR 503` (download port).
    #[arg(long, env = "READYLOOP_MAX_TURNED_AWAY", default_value_t = DEFAULT_MAX_TURNED_AWAY)]
    pub max_turned_away: usize,
    /// Bytes owed to one client at which the server stops reading from it.
    #[arg(long, env = "READYLOOP_HIGH_WATER", default_value_t = DEFAULT_HIGH_WATER)]
    pub high_water: usize,
    /// Bytes owed below which a paused client is read again.
    #[arg(long, env = "READYLOOP_LOW_WATER", default_value_t = DEFAULT_LOW_WATER)]
    pub low_water: usize,
    /// Time open connections get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "READYLOOP_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,
    /// Time a closing connection keeps draining input after sending FIN.
    #[arg(long, env = "READYLOOP_LINGER", value_parser = parse_duration, default_value = "2s")]
    pub linger: Duration,
    /// A client that pauses this long has finished sending: a download request without its
    /// newline ends; at shutdown, an echo connection owing nothing sends FIN.
    #[arg(long, env = "READYLOOP_REQUEST_GRACE", value_parser = parse_duration, default_value = "50ms")]
    pub request_grace: Duration,
    /// Most files open for downloads at once; past it, requests get `ERR 503`.
    #[arg(long, env = "READYLOOP_MAX_OPEN_FILES", default_value_t = DEFAULT_MAX_OPEN_FILES)]
    pub max_open_files: usize,
    /// Most entries in a `LIST` reply.
    #[arg(long, env = "READYLOOP_LIST_MAX", default_value_t = DEFAULT_LIST_MAX)]
    pub list_max: usize,
    /// Serve and list names with a component starting with `.`.
    #[arg(long, env = "READYLOOP_SERVE_HIDDEN", value_parser = BoolishValueParser::new())]
    pub serve_hidden: bool,
    /// Send file bodies with read/write instead of zero-copy sendfile(2).
    #[arg(long, env = "READYLOOP_NO_SENDFILE", value_parser = BoolishValueParser::new())]
    pub no_sendfile: bool,
    /// A chat member silent this long expires.
    #[arg(long, env = "READYLOOP_CHAT_IDLE", value_parser = parse_duration, default_value = "300s")]
    pub chat_idle: Duration,
    /// Longest chat datagram accepted, in bytes.
    #[arg(long, env = "READYLOOP_CHAT_MAX_MSG", default_value_t = DEFAULT_CHAT_MAX_MSG)]
    pub chat_max_msg: usize,
    /// Most chat members at once; more get `* server full`.
    #[arg(long, env = "READYLOOP_CHAT_MAX_MEMBERS", default_value_t = DEFAULT_CHAT_MAX_MEMBERS)]
    pub chat_max_members: usize,
    /// Most chat rooms at once.
    #[arg(long, env = "READYLOOP_CHAT_MAX_ROOMS", default_value_t = DEFAULT_CHAT_MAX_ROOMS)]
    pub chat_max_rooms: usize,
    /// Messages per second per chat member (0: no limit).
    #[arg(long, env = "READYLOOP_CHAT_RATE", default_value_t = DEFAULT_CHAT_RATE)]
    pub chat_rate: u32,
    /// Messages a chat member may send at once before the rate applies.
    #[arg(long, env = "READYLOOP_CHAT_BURST", default_value_t = DEFAULT_CHAT_BURST)]
    pub chat_burst: u32,
    /// Datagrams waiting for the UDP socket before the oldest are dropped.
    #[arg(long, env = "READYLOOP_CHAT_QUEUE", default_value_t = DEFAULT_CHAT_QUEUE)]
    pub chat_queue: usize,
    /// New chat addresses must echo a cookie (`/verify`) before they join.
    #[arg(long, env = "READYLOOP_CHAT_VERIFY", value_parser = BoolishValueParser::new())]
    pub chat_verify: bool,
    /// Share chat rooms with other readyloop processes through this Redis:
    /// `redis://HOST[:PORT][/DB]` (off by default: this process is the whole chat).
    #[arg(long, env = "READYLOOP_CHAT_BUS", value_name = "URL")]
    pub chat_bus: Option<String>,
    /// Put before every Redis key and channel of the chat bus.
    #[arg(long, env = "READYLOOP_CHAT_BUS_PREFIX", default_value = DEFAULT_CHAT_BUS_PREFIX)]
    pub chat_bus_prefix: String,
    /// Commands waiting for Redis before the oldest are dropped.
    #[arg(long, env = "READYLOOP_CHAT_BUS_QUEUE", default_value_t = DEFAULT_CHAT_BUS_QUEUE)]
    pub chat_bus_queue: usize,
    /// Pin the loop's thread to this CPU core (for benchmarks: keep it apart from the load).
    #[arg(long, env = "READYLOOP_PIN")]
    pub pin: Option<usize>,
    /// Log a line of statistics this often (0: never).
    #[arg(long, env = "READYLOOP_STATS_INTERVAL", value_parser = parse_duration, default_value = "0")]
    pub stats_interval: Duration,
    /// Log a line per finished connection or request, and per chat join, nick change, leave and
    /// expiry, on the log target `readyloop::access`.
    #[arg(long, env = "READYLOOP_ACCESS_LOG", value_parser = BoolishValueParser::new())]
    pub access_log: bool,
}

impl ServeArgs {
    /// The configuration these flags describe, with `--bind` resolved to one address.
    ///
    /// # Errors
    /// A sentence naming `--bind` when its host name does not resolve, or `--chat-bus` when its
    /// URL is not one or its host does not resolve.
    pub fn into_config(self) -> Result<Config, String> {
        Ok(Config {
            bind: resolve_bind("--bind", &self.bind)?,
            reuse_port: self.reuse_port,
            echo_port: self.echo_port.into(),
            files_port: self.files_port.into(),
            chat_port: self.chat_port.into(),
            admin_port: self.admin_port.into(),
            admin_bind: resolve_bind("--admin-bind", &self.admin_bind)?,
            admin_max_conns: self.admin_max_conns,
            admin_timeout: self.admin_timeout,
            root: self.root,
            idle_timeout: self.idle_timeout,
            max_conns: self.max_conns,
            max_turned_away: self.max_turned_away,
            high_water: self.high_water,
            low_water: self.low_water,
            shutdown_grace: self.shutdown_grace,
            linger: self.linger,
            request_grace: self.request_grace,
            max_open_files: self.max_open_files,
            list_max: self.list_max,
            serve_hidden: self.serve_hidden,
            no_sendfile: self.no_sendfile,
            chat_idle: self.chat_idle,
            chat_max_msg: self.chat_max_msg,
            chat_max_members: self.chat_max_members,
            chat_max_rooms: self.chat_max_rooms,
            chat_rate: self.chat_rate,
            chat_burst: self.chat_burst,
            chat_queue: self.chat_queue,
            chat_verify: self.chat_verify,
            chat_bus: self.chat_bus.as_deref().map(parse_chat_bus).transpose()?,
            chat_bus_prefix: self.chat_bus_prefix,
            chat_bus_queue: self.chat_bus_queue,
            pin: self.pin,
            stats_interval: self.stats_interval,
            access_log: self.access_log,
        })
    }
}

/// A port flag's value: a number, or `off` for a service that is not to run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Listen on this port (0: any free port).
    On(u16),
    /// Do not run the service.
    Off,
}

impl FromStr for Port {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Port::Off);
        }
        text.parse()
            .map(Port::On)
            .map_err(|_| format!("`{text}` is not a port (0-65535) or `off`"))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::On(port) => write!(f, "{port}"),
            Port::Off => f.write_str("off"),
        }
    }
}

impl From<Port> for Option<u16> {
    fn from(port: Port) -> Self {
        match port {
            Port::On(port) => Some(port),
            Port::Off => None,
        }
    }
}

/// Turns an address flag (`--bind`, `--admin-bind`) into one address to listen on.
///
/// An IP address is taken as it is. A host name is looked up, and the first IPv4 address wins
/// when there is one: `localhost` often resolves to `::1` first, and the tutorial's clients speak
/// IPv4 only. The choice is logged, since a name may stand for several addresses.
fn resolve_bind(flag: &str, host: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let unresolved = |why: String| format!("{flag} {host}: cannot resolve the name: {why}");
    let found: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| unresolved(e.to_string()))?
        .map(|addr| addr.ip())
        .collect();
    let chosen = found
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| unresolved("no address".into()))?;
    let all: Vec<String> = found.iter().map(IpAddr::to_string).collect();
    info!("{flag} {host} resolved to {chosen} (of {})", all.join(", "));
    Ok(chosen)
}

/// Turns `--chat-bus redis://HOST[:PORT][/DB]` into the address and database to use. The host is
/// resolved here, once, like `--bind`'s: the loop must never wait for a name lookup.
fn parse_chat_bus(url: &str) -> Result<ChatBus, String> {
    let wrong = |why: &str| format!("--chat-bus {url}: {why}; expected redis://HOST[:PORT][/DB]");
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| wrong("not a redis:// URL"))?;
    if rest.contains('@') {
        return Err(wrong(
            "passwords are not supported (keep Redis on loopback or a private network)",
        ));
    }
    let (authority, db) = match rest.split_once('/') {
        Some((authority, "")) => (authority, 0),
        Some((authority, db)) => (authority, db.parse().map_err(|_| wrong("DB is a number"))?),
        None => (rest, 0),
    };
    // `[::1]:6380`, `[::1]`, `host:6380`, `host`: the port is what follows the last `:` outside
    // brackets.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse().map_err(|_| wrong("PORT is a number"))?)
        }
        _ => (authority, DEFAULT_REDIS_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(wrong("no HOST"));
    }
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| wrong(&format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| wrong(&format!("{host} has no address")))?;
    Ok(ChatBus { addr, db })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_means_serve_with_the_named_defaults() {
        let cli = Cli::try_parse_from(["readyloop"]).unwrap();
        assert!(cli.command.is_none());
        // Environment fallbacks would change the parsed values; none are set under `cargo test`.
        assert_eq!(cli.log_level(), log::LevelFilter::Info);
        assert_eq!(cli.serve.into_config(), Ok(Config::default()));
    }

    #[test]
    fn the_access_log_flag_lets_its_target_through_whatever_the_level() {
        let cli = Cli::try_parse_from(["readyloop", "-q"]).unwrap();
        assert_eq!(cli.log_filter(), "warn,readyloop=WARN");
        let cli = Cli::try_parse_from(["readyloop", "-q", "--access-log"]).unwrap();
        assert!(cli.serve.access_log);
        assert_eq!(
            cli.log_filter(),
            "warn,readyloop=WARN,readyloop::access=info"
        );
        let cli = Cli::try_parse_from(["readyloop", "serve", "--access-log"]).unwrap();
        assert_eq!(
            cli.log_filter(),
            "warn,readyloop=INFO,readyloop::access=info"
        );
    }

    #[test]
    fn serve_subcommand_takes_the_same_flags() {
        let cli = Cli::try_parse_from(["readyloop", "serve", "--echo-port", "0", "-vv"]).unwrap();
        assert_eq!(cli.log_level(), log::LevelFilter::Trace);
        let Some(Command::Serve(args)) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.into_config().unwrap().echo_port, Some(0));
    }

    #[test]
    fn every_port_flag_takes_off() {
        let cli = ["readyloop", "--echo-port", "off", "--files-port", "OFF"];
        let cli = Cli::try_parse_from(cli.into_iter().chain(["--chat-port", "off"])).unwrap();
        let config = cli.serve.into_config().unwrap();
        assert_eq!(
            (config.echo_port, config.files_port, config.chat_port),
            (None, None, None)
        );
        assert_eq!(config.admin_port, Some(DEFAULT_ADMIN_PORT));
        let error = Cli::try_parse_from(["readyloop", "--admin-port", "of"]).unwrap_err();
        assert!(error.to_string().contains("not a port"), "{error}");
    }

    #[test]
    fn the_chat_bus_is_a_redis_url_with_optional_port_and_database() {
        let bus = |url: &str| parse_chat_bus(url).map(|bus| bus.to_string());
        assert_eq!(
            bus("redis://127.0.0.1:6380/2"),
            Ok("redis://127.0.0.1:6380/2".into())
        );
        assert_eq!(
            bus("redis://127.0.0.1"),
            Ok("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            bus("redis://127.0.0.1:7000/"),
            Ok("redis://127.0.0.1:7000/0".into())
        );
        assert_eq!(
            bus("redis://[::1]:7000/1"),
            Ok("redis://[::1]:7000/1".into())
        );
        assert_eq!(bus("redis://[::1]"), Ok("redis://[::1]:6379/0".into()));
        assert!(bus("redis://localhost/3").is_ok_and(|b| b.ends_with(":6379/3")));
        for (url, why) in [
            ("127.0.0.1:6379", "not a redis:// URL"),
            ("redis://:secret@127.0.0.1", "passwords"),
            ("redis://127.0.0.1:http", "PORT is a number"),
            ("redis://127.0.0.1/zero", "DB is a number"),
            ("redis://:6379", "no HOST"),
            ("redis://no-such-host.invalid", "cannot resolve"),
        ] {
            let error = bus(url).unwrap_err();
            assert!(error.starts_with(&format!("--chat-bus {url}: ")), "{error}");
            assert!(error.contains(why), "{url}: {error}");
        }
        let cli = Cli::try_parse_from(["readyloop", "--chat-bus", "redis://127.0.0.1:1/4"]);
        let config = cli.unwrap().serve.into_config().unwrap();
        assert_eq!(config.chat_bus.map(|bus| bus.db), Some(4));
        assert_eq!(config.chat_bus_prefix, DEFAULT_CHAT_BUS_PREFIX);
    }

    #[test]
    fn bind_takes_addresses_and_host_names() {
        assert_eq!(resolve_bind("--bind", "::1"), Ok("::1".parse().unwrap()));
        let ip = "127.0.0.2".parse().unwrap();
        assert_eq!(resolve_bind("--bind", "127.0.0.2"), Ok(ip));
        let ip = "127.0.0.1".parse().unwrap();
        assert_eq!(resolve_bind("--admin-bind", "localhost"), Ok(ip));
        let error = resolve_bind("--bind", "no-such-host.invalid").unwrap_err();
        assert!(
            error.starts_with("--bind no-such-host.invalid: cannot resolve"),
            "{error}"
        );
    }
}
