//! The relay's bounded send queue: datagrams the socket would not take yet.
//!
//! UDP is lossy by contract, but readyloop never loses a datagram silently. When `send_to` says
//! `WouldBlock`, the datagram waits here (and the relay asks for writable readiness); when the
//! queue is full, the *oldest* datagram is dropped and counted, because in a chat the newest
//! messages are the ones worth delivering.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// One datagram to send. The payload is shared: a message relayed to a room of a hundred members
/// is built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Where it goes.
    pub to: SocketAddr,
    /// What it says.
    pub payload: Arc<[u8]>,
}

/// Datagrams waiting for the socket, oldest first, at most `limit` of them.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Datagram>,
    limit: usize,
}

impl Outbox {
    /// An empty queue that holds at most `limit` datagrams (at least one).
    pub fn new(limit: usize) -> Self {
        Outbox {
            queue: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Queues a datagram behind the others; returns the oldest one if it had to make room.
    pub fn push(&mut self, datagram: Datagram) -> Option<Datagram> {
        let dropped = if self.queue.len() >= self.limit {
            self.queue.pop_front()
        } else {
            None
        };
        self.queue.push_back(datagram);
        dropped
    }

    /// The oldest waiting datagrams, in order: all of them, or as many as lie in one piece of
    /// the ring (the rest come once these are forgotten).
    pub fn oldest(&self) -> &[Datagram] {
        self.queue.as_slices().0
    }

    /// Forgets the `n` oldest waiting datagrams (sent, or failed for good).
    pub fn forget(&mut self, n: usize) {
        self.queue.drain(..n.min(self.queue.len()));
        if self.queue.is_empty() {
            // A burst's worth of capacity is not kept for the quiet hours.
            self.queue.shrink_to(0);
        }
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(n: u8) -> Datagram {
        Datagram {
            to: "127.0.0.1:9".parse().unwrap(),
            payload: Arc::from(&[n][..]),
        }
    }

    #[test]
    fn keeps_order_below_the_limit() {
        let mut outbox = Outbox::new(3);
        assert_eq!(outbox.push(datagram(1)), None);
        assert_eq!(outbox.push(datagram(2)), None);
        assert_eq!(outbox.oldest(), [datagram(1), datagram(2)]);
        outbox.forget(1);
        assert_eq!(outbox.oldest(), [datagram(2)]);
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_keeps_the_newest() {
        let mut outbox = Outbox::new(2);
        outbox.push(datagram(1));
        outbox.push(datagram(2));
        assert_eq!(outbox.push(datagram(3)), Some(datagram(1)));
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.oldest(), [datagram(2), datagram(3)]);
        outbox.forget(2);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_zero_limit_still_holds_one() {
        let mut outbox = Outbox::new(0);
        assert_eq!(outbox.push(datagram(1)), None);
        assert_eq!(outbox.push(datagram(2)), Some(datagram(1)));
    }
}
