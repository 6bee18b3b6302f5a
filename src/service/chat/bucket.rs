//! A token bucket: each member may send `rate` messages a second, in bursts of up to `burst`.
//!
//! The bucket holds up to `burst` tokens and refills continuously at `rate` per second; a message
//! costs one token. It needs one float and one instant per member, and no timer: the refill is
//! computed from the time elapsed whenever a message arrives.

use std::time::Instant;

/// One member's allowance.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket: a new member may burst at once.
    pub fn full(burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            updated: now,
        }
    }

    /// Takes one token if there is one. `rate` is in tokens per second.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(3, start);
        assert!((0..3).all(|_| bucket.take(10, 3, start)));
        assert!(!bucket.take(10, 3, start), "the burst is spent");
        let later = start + Duration::from_millis(100);
        assert!(bucket.take(10, 3, later), "one token refilled after 1/10 s");
        assert!(!bucket.take(10, 3, later));
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(2, start);
        let much_later = start + Duration::from_secs(3600);
        assert!(bucket.take(10, 2, much_later));
        assert!(bucket.take(10, 2, much_later));
        assert!(!bucket.take(10, 2, much_later));
    }
}
