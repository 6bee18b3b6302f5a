//! Start-up and control: binding every service, the addresses actually bound, and the [`Handle`]
//! other threads use to read the figures and ask for shutdown.
//!
//! Binding is separate from running so that a caller learns the real ports (port 0 means "any
//! free port") and every start-up failure before a single event is served. Tests run the server
//! in-process this way; `main` does the same and prints the addresses.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use log::{info, warn};
use mio::Waker;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::event_loop::EventLoop;
use crate::listener::Listener;
use crate::service::chat::bus::link::{self, Link};
use crate::service::chat::bus::{self, Exchange, Tokens};
use crate::service::download::files::Files;
use crate::service::{Endpoint, Service, chat};
use crate::stats::{Snapshot, Stats};
use crate::sys;

/// Why the server could not start. Each message names what to fix.
#[derive(Debug)]
pub enum StartError {
    /// A flag has a value that makes no sense (the message names the flag).
    Config(String),
    /// A service's port could not be bound.
    Bind {
        /// The service that wanted the port.
        service: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The directory to serve cannot be opened.
    Root {
        /// The `--root` given.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The poll instance, the waker or the signal handlers could not be set up.
    Setup {
        /// What was being set up.
        what: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(message) => write!(f, "invalid configuration: {message}"),
            StartError::Bind {
                service,
                addr,
                source,
            } => write!(
                f,
                "cannot listen for {service} on port {} ({addr}): {source}",
                addr.port()
            ),
            StartError::Root { path, source } => {
                write!(f, "cannot serve --root {}: {source}", path.display())
            }
            StartError::Setup { what, source } => write!(f, "cannot set up {what}: {source}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(_) => None,
            StartError::Bind { source, .. }
            | StartError::Root { source, .. }
            | StartError::Setup { source, .. } => Some(source),
        }
    }
}

/// The addresses the services actually bound; `None` for a service that is off.
///
/// Its `Display` is the start-up line's payload, `echo=ADDR files=ADDR chat=ADDR admin=ADDR`:
/// space-separated `service=address` pairs, one per service that runs, which scripts and tests
/// parse. Keep it stable; new services add pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// TCP echo.
    pub echo: Option<SocketAddr>,
    /// TCP file download.
    pub files: Option<SocketAddr>,
    /// UDP chat relay.
    pub chat: Option<SocketAddr>,
    /// Admin HTTP.
    pub admin: Option<SocketAddr>,
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = [
            ("echo", self.echo),
            ("files", self.files),
            ("chat", self.chat),
            ("admin", self.admin),
        ];
        let mut first = true;
        for (name, addr) in pairs {
            if let Some(addr) = addr {
                let space = if first { "" } else { " " };
                write!(f, "{space}{name}={addr}")?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Reads the figures of a running server and asks it to stop; cheap to clone, usable from any
/// thread.
#[derive(Debug, Clone)]
pub struct Handle {
    waker: Arc<Waker>,
    stop_requests: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl Handle {
    /// Asks the server to shut down, as SIGTERM does: the first request lets open connections
    /// finish within the grace period, a second one stops at once.
    ///
    /// # Errors
    /// The loop could not be woken (its poll instance is gone).
    pub fn shutdown(&self) -> io::Result<()> {
        self.stop_requests.fetch_add(1, Ordering::AcqRel);
        self.waker.wake()
    }

    /// The server's figures now.
    pub fn stats(&self) -> Snapshot {
        self.stats.snapshot()
    }
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    event_loop: EventLoop,
    addresses: Addresses,
    handle: Handle,
}

impl Server {
    /// Checks the configuration and binds every service.
    ///
    /// # Errors
    /// An invalid flag, a port that cannot be bound, or a failed poll/waker set-up.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let on = |bind, port: Option<u16>| port.map(|port| SocketAddr::new(bind, port));
        let echo_addr = on(config.bind, config.echo_port);
        let files_addr = on(config.bind, config.files_port);
        let chat_addr = on(config.bind, config.chat_port);
        let admin_addr = on(config.admin_bind, config.admin_port);

        let stats = Arc::new(Stats::default());
        // The served root is opened only for a download service that runs.
        let files = files_addr
            .map(|_| Files::open(&config, Arc::clone(&stats)))
            .transpose()
            .map_err(|source| StartError::Root {
                path: config.root.clone(),
                source,
            })?;
        let stop_requests = Arc::new(AtomicUsize::new(0));
        let mut event_loop = EventLoop::new(config, Arc::clone(&stats), Arc::clone(&stop_requests))
            .map_err(|source| StartError::Setup {
                what: "the poll instance",
                source,
            })?;

        let addresses = Addresses {
            echo: bind_listener(&mut event_loop, Service::Echo, echo_addr)?,
            files: match files {
                Some(files) => {
                    let service = Service::Download(Arc::new(files));
                    bind_listener(&mut event_loop, service, files_addr)?
                }
                None => None,
            },
            chat: chat_addr
                .map(|addr| bind_chat(&mut event_loop, addr))
                .transpose()?,
            admin: bind_listener(&mut event_loop, Service::Admin, admin_addr)?,
        };

        let waker = event_loop
            .insert(Endpoint::Waker)
            .and_then(|token| Waker::new(event_loop.registry(), token))
            .map_err(|source| StartError::Setup {
                what: "the shutdown waker",
                source,
            })?;
        Ok(Server {
            event_loop,
            addresses,
            handle: Handle {
                waker: Arc::new(waker),
                stop_requests,
                stats,
            },
        })
    }

    /// The addresses actually bound.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Makes SIGINT and SIGTERM shut the server down: the first gracefully, the second at once.
    ///
    /// Signal handlers belong to the whole process, so this is for the binary; tests running
    /// several servers in one process use [`Handle::shutdown`] instead.
    ///
    /// # Errors
    /// The handlers could not be installed or registered.
    pub fn watch_signals(&mut self) -> Result<(), StartError> {
        let setup = |source| StartError::Setup {
            what: "signal handling",
            source,
        };
        let signals = Signals::new([SIGINT, SIGTERM]).map_err(setup)?;
        self.event_loop
            .insert(Endpoint::Signals(signals))
            .map_err(setup)?;
        Ok(())
    }

    /// Serves until shut down; returns the final figures.
    ///
    /// # Errors
    /// `poll` failed: the server cannot go on.
    pub fn run(mut self) -> io::Result<Snapshot> {
        if let Some(core) = self.event_loop.config().pin {
            match sys::pin_to_core(core) {
                Ok(()) => info!("the loop runs on core {core}"),
                Err(e) => warn!("cannot pin the loop to core {core}: {e}"),
            }
        }
        self.event_loop.run()
    }
}

/// Binds one service's listener, if the service is on, and puts it in the loop; returns the
/// address actually bound.
fn bind_listener(
    event_loop: &mut EventLoop,
    service: Service,
    addr: Option<SocketAddr>,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let name = service.name();
    let bind_error = |source| StartError::Bind {
        service: name,
        addr,
        source,
    };
    let reuse_port = event_loop.config().reuse_port;
    let socket = sys::tcp_listener(addr, reuse_port).map_err(bind_error)?;
    if let Err(e) = service.tune_listener(&socket) {
        // Only speed depends on it: the service works with the kernel's defaults.
        warn!("{name}: cannot set the listener's socket options: {e}");
    }
    let bound = socket.local_addr().map_err(bind_error)?;
    let listener = Listener::new(socket, name);
    event_loop
        .insert(Endpoint::Listener { listener, service })
        .map_err(bind_error)?;
    Ok(Some(bound))
}

/// Binds the chat relay's UDP socket and puts it in the loop, with its two Redis links if
/// `--chat-bus` is set; returns the address actually bound.
fn bind_chat(event_loop: &mut EventLoop, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    let bind_error = |source| StartError::Bind {
        service: "chat",
        addr,
        source,
    };
    let config = event_loop.config();
    let socket = sys::udp_socket(addr, config.reuse_port).map_err(bind_error)?;
    let bound = socket.local_addr().map_err(bind_error)?;
    let now = Instant::now();
    let mut relay = chat::Relay::new(socket, config, now);
    let settings = config
        .chat_bus
        .map(|redis| bus::Settings::from_config(config, redis, bus::node_id()));
    if let Some(settings) = &settings {
        relay.join_bus(settings.clone());
    }
    let relay = event_loop
        .insert(Endpoint::Chat(Box::new(relay)))
        .map_err(bind_error)?;
    if let Some(settings) = settings {
        let setup = |source| StartError::Setup {
            what: "the chat bus",
            source,
        };
        let mut link = |kind| {
            let link = Link::new(kind, &settings, now);
            event_loop.insert(Endpoint::Bus(Box::new(link)))
        };
        let commands = link(link::Kind::Commands).map_err(setup)?;
        let subscriber = link(link::Kind::Subscriber).map_err(setup)?;
        let tokens = Tokens {
            relay,
            commands,
            subscriber,
        };
        event_loop.attach_bus(Exchange::new(tokens, settings.queue));
        info!(
            "chat bus {}: this process is node {}, keys and channels under {:?}",
            settings.redis, settings.node, settings.prefix
        );
    }
    Ok(bound)
}
