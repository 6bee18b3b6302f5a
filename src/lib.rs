//! readyloop: one thread, one hand-written mio readiness loop, several protocols at once.
//! It grew out of a classic Python socket tutorial (a UDP chat, a TCP server on port 7788 that
//! answers, a file downloader started as `server.py 7890`): that is what "the tutorial" means in
//! the code and docs, and its Python clients work against readyloop unchanged.
//!
//! A tour of the modules, in the order a reader should go:
//!
//! - [`event_loop`]: the loop itself: `poll`, dispatch by token, deadlines, the shutdown phase.
//!   Start here; it fits on a few screens.
//! - [`endpoint`]: the table of every socket (a slab), the stale-event guard, and the only code
//!   that talks to the `Registry`; [`token`]: how a token names a slot and its generation.
//! - [`service`]: what lives in the table, the contract between the loop and a handler, and
//!   building the connection an accepted socket becomes; one module per protocol beneath it
//!   ([`service::echo`], [`service::download`], [`service::chat`], and [`service::admin`], the
//!   HTTP view of the running server: metrics, the connection list, health, a live page). With
//!   `--chat-bus`, [`service::chat::bus`] makes the chat relays of several processes one chat,
//!   through Redis pub/sub, with two more endpoints in the same loop.
//! - [`listener`]: accepting connections and backing off when out of file descriptors.
//! - [`buffer`]: the bounded output buffer and its water marks: why memory stays bounded.
//! - [`timers`]: deadlines without threads, turned into the `poll` timeout.
//! - [`stats`]: what is counted (per service too), the histograms, and why connections close;
//!   [`access`]: the access log, a line per finished connection, request or chat membership
//!   change (`--access-log`).
//! - [`config`]: the server's settings and their defaults; [`cli`]: the command line and
//!   environment variables that make a [`Config`].
//! - [`server`]: binding the services, the start-up line, and the [`Handle`] for other threads.
//! - [`sys`]: socket options and the OS error kinds the loop tells apart; [`text`]: wording
//!   shared by log lines and chat lines.
//! - [`bench`](mod@bench): `readyloop bench`, the load generator: the same design pointed the other way,
//!   one mio loop per thread driving client state machines, with latency percentiles.
//!
//! ```no_run
//! let server = readyloop::Server::bind(readyloop::Config::default())?;
//! println!("readyloop listening {}", server.addresses());
//! server.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod access;
pub mod bench;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod endpoint;
pub mod event_loop;
pub mod listener;
pub mod server;
pub mod service;
pub mod stats;
pub mod sys;
pub mod text;
pub mod timers;
pub mod token;

pub use config::Config;
pub use server::{Addresses, Handle, Server, StartError};
pub use stats::{CloseReason, Metric, Snapshot};
