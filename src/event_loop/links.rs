//! The loop's side of endpoints that hand one another work: the chat relay and its two Redis
//! links (`--chat-bus`).
//!
//! Each is an endpoint of its own, with its own socket and token, and a handler may borrow no
//! endpoint but its own. So what passes between them waits in an [`Exchange`] that the loop keeps
//! and lends to every handler, and each side names the endpoint it left work for. After every
//! handler the loop takes those names and calls the endpoints as it resumes those that spent
//! their budget: after this batch of events, before it polls again. A reply from Redis reaches
//! its member in the pass that read it.

use super::EventLoop;
#[cfg(doc)]
use crate::service::chat::bus::Exchange;

impl EventLoop {
    /// Queues every endpoint that another left work for, to be called before the next poll.
    pub(super) fn wake_linked(&mut self) {
        if let Some(bus) = &mut self.shared.bus {
            self.yielded.extend(bus.take_due());
        }
    }
}
