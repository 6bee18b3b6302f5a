//! Setting the loop up before it runs: the server puts the endpoints it bound in the table, the
//! waker registers itself, and the chat relay and its Redis links are connected.
//!
//! Nothing here runs once the loop does; the loop's own work starts at [`EventLoop::run`].

use std::io;
use std::time::Instant;

use mio::{Registry, Token};

use super::EventLoop;
use crate::config::Config;
use crate::service::Endpoint;
use crate::service::chat::bus::Exchange;

impl EventLoop {
    /// The configuration the loop runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry, for sources that register themselves (the waker).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Adds an endpoint (a listener, the chat relay and its links, the signal source, the waker)
    /// before the loop runs.
    ///
    /// # Errors
    /// Registration failed.
    pub fn insert(&mut self, endpoint: Endpoint) -> io::Result<Token> {
        self.table.insert(
            self.poll.registry(),
            endpoint,
            &self.shared.stats,
            Instant::now(),
        )
    }

    /// Connects the chat relay and its links, already in the table, through `exchange` (see
    /// `links.rs`).
    pub fn attach_bus(&mut self, exchange: Exchange) {
        self.shared.bus = Some(exchange);
    }
}
