//! Deadlines without threads: an ordered set of (instant, token) that the loop turns into its
//! `poll` timeout.
//!
//! Each endpoint has at most one deadline armed here (its idle timeout, its lingering-close limit,
//! a listener's accept back-off). The set is ordered, so the nearest deadline is the first entry and
//! closing an endpoint removes its entry at once: the set never holds more than one entry per live
//! endpoint, however fast connections come and go.
//!
//! What a deadline *means* is not stored here. When one falls due the loop asks the endpoint for
//! its deadline now; activity since arming may have pushed it later, in which case it is simply
//! armed again. That keeps the per-read cost of idle tracking to one stored `Instant`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mio::Token;

/// Armed deadlines, nearest first.
#[derive(Debug, Default)]
pub struct Timers {
    queue: BTreeSet<(Instant, Token)>,
}

impl Timers {
    /// Arms a deadline for `token`.
    pub fn insert(&mut self, at: Instant, token: Token) {
        self.queue.insert((at, token));
    }

    /// Disarms the deadline armed at `at` for `token`, if it is still there.
    pub fn remove(&mut self, at: Instant, token: Token) {
        self.queue.remove(&(at, token));
    }

    /// The nearest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Takes the nearest deadline if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Token)> {
        if self.next_deadline()? <= now {
            self.queue.pop_first()
        } else {
            None
        }
    }

    /// Number of armed deadlines.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// No deadline is armed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The `poll` timeout: the time until the nearest of `deadlines`, or `None` (wait for I/O only)
/// when none is set.
pub fn poll_timeout(
    now: Instant,
    deadlines: impl IntoIterator<Item = Option<Instant>>,
) -> Option<Duration> {
    let nearest = deadlines.into_iter().flatten().min()?;
    Some(nearest.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_due_deadlines_nearest_first() {
        let now = Instant::now();
        let mut timers = Timers::default();
        timers.insert(now + Duration::from_secs(2), Token(2));
        timers.insert(now + Duration::from_secs(1), Token(1));
        timers.insert(now + Duration::from_secs(9), Token(9));
        let later = now + Duration::from_secs(5);
        assert_eq!(timers.pop_due(later).map(|(_, t)| t), Some(Token(1)));
        assert_eq!(timers.pop_due(later).map(|(_, t)| t), Some(Token(2)));
        assert_eq!(timers.pop_due(later), None);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn removing_a_deadline_forgets_it() {
        let at = Instant::now();
        let mut timers = Timers::default();
        timers.insert(at, Token(7));
        timers.remove(at, Token(7));
        assert!(timers.is_empty());
        assert_eq!(timers.pop_due(at), None);
    }

    #[test]
    fn poll_timeout_is_time_to_nearest_deadline_or_none() {
        let now = Instant::now();
        let soon = now + Duration::from_millis(30);
        let late = now + Duration::from_secs(30);
        assert_eq!(
            poll_timeout(now, [None, Some(late), Some(soon)]),
            Some(Duration::from_millis(30))
        );
        assert_eq!(poll_timeout(now, [None, None]), None);
        let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        assert_eq!(poll_timeout(now, [Some(past)]), Some(Duration::ZERO));
    }
}
