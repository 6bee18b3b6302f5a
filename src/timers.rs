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

/// Properties of random insert, remove and pop sequences checked against a model, a sorted
/// `Vec`: deadlines fire nearest first and only once due, nothing removed fires, and nothing
/// armed is lost.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// One thing the loop does to its deadlines. Times are milliseconds after the start.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Insert {
            at: u64,
            token: usize,
        },
        /// Removes the armed entry at this index (modulo the count), as closing an endpoint does.
        RemoveArmed(usize),
        /// Removes an entry that may never have been armed: must change nothing.
        RemoveAny {
            at: u64,
            token: usize,
        },
        /// Moves the clock on by this much, then pops every due deadline.
        Advance(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Few tokens and a narrow time range, so equal deadlines and repeated entries happen.
        let op = prop_oneof![
            3 => (0..50u64, 0..6usize).prop_map(|(at, token)| Op::Insert { at, token }),
            1 => any::<usize>().prop_map(Op::RemoveArmed),
            1 => (0..50u64, 0..6usize).prop_map(|(at, token)| Op::RemoveAny { at, token }),
            2 => (0..15u64).prop_map(Op::Advance),
        ];
        prop::collection::vec(op, 0..80)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn deadlines_fire_in_order_once_due_and_none_is_lost(ops in ops()) {
            let start = Instant::now();
            let ms = |n: u64| start + Duration::from_millis(n);
            let mut timers = Timers::default();
            let mut model: Vec<(Instant, Token)> = Vec::new();
            let mut now = start;
            for op in ops {
                match op {
                    Op::Insert { at, token } => {
                        let entry = (ms(at), Token(token));
                        timers.insert(entry.0, entry.1);
                        if let Err(i) = model.binary_search(&entry) {
                            model.insert(i, entry);
                        }
                    }
                    Op::RemoveArmed(_) if model.is_empty() => {}
                    Op::RemoveArmed(i) => {
                        let (at, token) = model.remove(i % model.len());
                        timers.remove(at, token);
                    }
                    Op::RemoveAny { at, token } => {
                        let entry = (ms(at), Token(token));
                        timers.remove(entry.0, entry.1);
                        model.retain(|armed| *armed != entry);
                    }
                    Op::Advance(by) => {
                        now += Duration::from_millis(by);
                        while let Some(fired) = timers.pop_due(now) {
                            // The nearest armed deadline, and only once it is due.
                            prop_assert_eq!(Some(&fired), model.first());
                            prop_assert!(fired.0 <= now);
                            model.remove(0);
                        }
                        prop_assert!(model.first().is_none_or(|(at, _)| *at > now));
                    }
                }
                prop_assert_eq!(timers.len(), model.len());
                prop_assert_eq!(timers.next_deadline(), model.first().map(|(at, _)| *at));
            }
            // Everything still armed fires once the clock passes it, in order.
            let mut rest = Vec::new();
            while let Some(fired) = timers.pop_due(ms(1_000)) {
                rest.push(fired);
            }
            prop_assert_eq!(rest, model);
            prop_assert!(timers.is_empty());
        }
    }
}
