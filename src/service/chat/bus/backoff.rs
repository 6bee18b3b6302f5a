//! How long a bus link waits before it tries Redis again: exponential back-off with jitter.
//!
//! The first retry comes after about [`FIRST`], each failure doubles the wait, up to [`LAST`]; a
//! link that reaches Redis starts again from the first. The jitter ("equal jitter": half the wait
//! fixed, half random) keeps the processes of a host that all lost Redis at once from all coming
//! back in the same millisecond, while no wait ever exceeds [`LAST`], so a Redis that is back is
//! found within that long.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The wait after the first failure: long enough not to hammer a Redis that is restarting,
/// short enough that a blip goes unnoticed.
pub const FIRST: Duration = Duration::from_millis(100);

/// The longest wait: how stale the bus may be after Redis comes back.
pub const LAST: Duration = Duration::from_secs(5);

/// The failures since the link was last up, and the random numbers for the jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    /// xorshift64 state: never zero.
    random: u64,
}

impl Backoff {
    /// No failure yet; the jitter seeded at random.
    pub fn new() -> Self {
        Backoff::seeded(RandomState::new().build_hasher().finish())
    }

    /// No failure yet; the jitter seeded with `seed`, so tests see the same waits every run.
    pub fn seeded(seed: u64) -> Self {
        Backoff {
            failures: 0,
            random: seed | 1,
        }
    }

    /// Failures since the link was last up.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// One more failure: how long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let doubled = FIRST.saturating_mul(1 << self.failures.min(16));
        let wait = doubled.min(LAST);
        self.failures = self.failures.saturating_add(1);
        let half = wait / 2;
        // A fraction of the half in thousandths is plenty of jitter.
        let thousandths = (self.next_random() % 1001) as u32;
        half + half * thousandths / 1000
    }

    /// The link is up: the next failure waits [`FIRST`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_first_to_the_last_each_within_its_jitter() {
        let mut backoff = Backoff::seeded(7);
        let mut ceiling = FIRST;
        for failure in 0..12 {
            let wait = backoff.next_wait();
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "failure {failure}: {wait:?} outside {:?}..={ceiling:?}",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(LAST);
        }
        assert_eq!(backoff.failures(), 12);
    }

    #[test]
    fn no_wait_exceeds_the_last_however_long_redis_stays_away() {
        let mut backoff = Backoff::seeded(99);
        for _ in 0..1000 {
            assert!(backoff.next_wait() <= LAST);
        }
    }

    #[test]
    fn being_up_starts_the_waits_again_from_the_first() {
        let mut backoff = Backoff::seeded(3);
        for _ in 0..5 {
            backoff.next_wait();
        }
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.next_wait() <= FIRST);
    }

    #[test]
    fn jitter_spreads_the_waits_of_links_that_failed_together() {
        let waits: Vec<Duration> = (1..=8)
            .map(|seed| Backoff::seeded(seed * 7919).next_wait())
            .collect();
        let first = waits[0];
        assert!(waits.iter().any(|w| *w != first), "{waits:?}");
    }
}
