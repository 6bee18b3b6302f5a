//! Wake-ups at exact instants, for open-loop clients whose next operation is due at a given
//! microsecond: a heap of (instant, client) and a precise timer that wakes `poll` for the
//! earliest.
//!
//! The driver's [`TICK`](super::driver::TICK) is fine for timeouts, which need no better than
//! 10 ms, but an open loop at 100 000 operations per second has one due every 10 µs, and an
//! operation started late carries its lateness in its latency. So a client that must wait for its
//! next operation asks for a wake-up at that instant (`Ctx::wake_at`); the driver keeps the
//! requests here and fires each when due. `poll`'s own timeout is in whole milliseconds, so the
//! earliest request also arms a [`Timer`] (a Linux `timerfd`, registered like a socket) that
//! ends the wait within the kernel's timer slack. Where there is no such timer the poll timeout
//! alone wakes the loop, up to a millisecond late.
//!
//! A closed loop never asks for a wake-up: the heap stays empty and no timer is made.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use log::debug;
use mio::{Interest, Registry, Token};

use crate::sys::Timer;

/// The timer's token: past any client's, which count from 0.
pub(crate) const TIMER: Token = Token(usize::MAX);

/// The wake-ups one thread's clients asked for.
#[derive(Debug)]
pub(crate) struct Wakeups {
    /// Requested instants, earliest first. An entry whose instant is no longer its client's
    /// `armed` one is stale and skipped when it comes up.
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Each client's one live request, if any.
    armed: Vec<Option<Instant>>,
    timer: Alarm,
}

/// Where the precise timer is.
#[derive(Debug)]
enum Alarm {
    /// Not made yet: no wake-up was ever asked for (a closed loop stays here).
    Unused,
    /// Registered; `at` is the instant it is set for, `None` once it expired or was never set.
    Ready { timer: Timer, at: Option<Instant> },
    /// The system has none, or it failed: the poll timeout wakes the loop instead.
    Unavailable,
}

impl Wakeups {
    /// No wake-ups yet, for `clients` clients.
    pub fn new(clients: usize) -> Wakeups {
        Wakeups {
            heap: BinaryHeap::new(),
            armed: vec![None; clients],
            timer: Alarm::Unused,
        }
    }

    /// Client `client` wants a wake-up at `at`. An earlier request it already has stands: the
    /// client asks again when woken, so each client has one live request and the heap stays
    /// within a few entries per client.
    pub fn arm(&mut self, client: usize, at: Instant) {
        let Some(armed) = self.armed.get_mut(client) else {
            return; // no such client: nothing asked
        };
        if armed.is_some_and(|earlier| earlier <= at) {
            return;
        }
        *armed = Some(at);
        self.heap.push(Reverse((at, client)));
        // Stale entries come only from a request moved earlier, which a timetable never does;
        // should they pile up all the same, drop them so the heap stays bounded.
        if self.heap.len() > 2 * self.armed.len() + 16 {
            self.heap = self
                .armed
                .iter()
                .enumerate()
                .filter_map(|(client, at)| at.map(|at| Reverse((at, client))))
                .collect();
        }
    }

    /// The earliest live request.
    pub fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, client))) = self.heap.peek().copied() {
            if self.armed.get(client).copied().flatten() == Some(at) {
                return Some(at);
            }
            self.heap.pop(); // stale
        }
        None
    }

    /// Takes the earliest request due at `now`: the client to wake.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let at = self.next()?;
        if at > now {
            return None;
        }
        let Reverse((_, client)) = self.heap.pop()?;
        if let Some(armed) = self.armed.get_mut(client) {
            *armed = None;
        }
        Some(client)
    }

    /// The timer's event arrived: it expired, and reading it lets the next expiry be an edge.
    pub fn timer_fired(&mut self) {
        if let Alarm::Ready { timer, at } = &mut self.timer {
            timer.clear();
            *at = None;
        }
    }

    /// Sets the timer for the earliest request, making it on first need. A failure leaves the
    /// poll timeout to do the waking.
    pub fn set_timer(&mut self, registry: &Registry, now: Instant) {
        let Some(next) = self.next() else {
            return; // nothing to wake for; a timer still set only wakes the loop once more
        };
        if matches!(self.timer, Alarm::Unused) {
            self.timer = match Timer::new().and_then(|mut timer| {
                registry.register(&mut timer, TIMER, Interest::READABLE)?;
                Ok(timer)
            }) {
                Ok(timer) => Alarm::Ready { timer, at: None },
                Err(e) => {
                    debug!("no precise timer ({e}): open-loop sends wake to the millisecond");
                    Alarm::Unavailable
                }
            };
        }
        if let Alarm::Ready { timer, at } = &mut self.timer {
            if *at == Some(next) {
                return;
            }
            match timer.set(next.saturating_duration_since(now)) {
                Ok(()) => *at = Some(next),
                Err(e) => {
                    debug!(
                        "the precise timer failed ({e}): open-loop sends wake to the millisecond"
                    );
                    self.timer = Alarm::Unavailable;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn wake_ups_come_due_in_order_of_their_instants() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Wakeups::new(3);
        w.arm(2, t0 + ms(3));
        w.arm(0, t0 + ms(1));
        w.arm(1, t0 + ms(2));
        assert_eq!(w.next(), Some(t0 + ms(1)));
        assert_eq!(w.pop_due(t0), None, "none is due yet");
        let due: Vec<usize> = std::iter::from_fn(|| w.pop_due(t0 + ms(5))).collect();
        assert_eq!(due, [0, 1, 2]);
        assert_eq!(w.next(), None);
    }

    #[test]
    fn a_client_keeps_its_earliest_request_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Wakeups::new(1);
        w.arm(0, t0 + ms(5));
        w.arm(0, t0 + ms(9)); // later: the earlier one stands
        w.arm(0, t0 + ms(2)); // earlier: replaces it
        assert_eq!(w.pop_due(t0 + ms(10)), Some(0));
        assert_eq!(
            w.pop_due(t0 + ms(10)),
            None,
            "the replaced request is stale"
        );
    }

    #[test]
    fn stale_requests_cannot_pile_up() {
        let t0 = Instant::now();
        let mut w = Wakeups::new(1);
        for i in (0..1000).rev() {
            w.arm(0, t0 + Duration::from_micros(i));
        }
        assert!(w.heap.len() <= 18, "{} entries", w.heap.len());
        assert_eq!(w.next(), Some(t0));
    }

    #[test]
    fn an_unknown_client_is_ignored() {
        let mut w = Wakeups::new(1);
        w.arm(7, Instant::now());
        assert_eq!(w.next(), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_timer_wakes_poll_for_the_earliest_request() {
        let mut poll = mio::Poll::new().expect("a poll instance");
        let mut events = mio::Events::with_capacity(4);
        let mut w = Wakeups::new(1);
        let now = Instant::now();
        w.arm(0, now + Duration::from_millis(2));
        w.set_timer(poll.registry(), now);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .expect("poll");
        assert!(events.iter().any(|e| e.token() == TIMER), "the timer fired");
        assert!(now.elapsed() >= Duration::from_millis(2));
        w.timer_fired();
        assert!(matches!(w.timer, Alarm::Ready { at: None, .. }));
    }
}
