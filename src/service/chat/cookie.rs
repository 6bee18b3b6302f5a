//! Stateless cookies for `--chat-verify`: proof that a source address can receive what is sent to
//! it, before it may join.
//!
//! A UDP source address is only a claim. Without a check, a forger could subscribe a victim's
//! address to a busy room, and the server would flood the victim. With `--chat-verify`, a new
//! address gets one short reply carrying a cookie and becomes a member only when it sends the
//! cookie back, which only the real owner of the address can, having received it.
//!
//! The cookie is a keyed hash (SipHash, with keys drawn at random when the server starts) of the
//! address and the current ten-minute epoch, so the server keeps no state at all for addresses
//! that never answer: forged traffic cannot fill a table.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a cookie stays valid: it is accepted in its own epoch and the next.
const EPOCH: Duration = Duration::from_secs(600);

/// Issues and checks cookies.
#[derive(Debug)]
pub struct Cookies {
    key: RandomState,
    started: Instant,
}

impl Cookies {
    /// A fresh random key.
    pub fn new(now: Instant) -> Self {
        Cookies {
            key: RandomState::new(),
            started: now,
        }
    }

    /// The cookie for `addr` now: 16 hexadecimal digits.
    pub fn issue(&self, addr: SocketAddr, now: Instant) -> String {
        format!("{:016x}", self.mac(addr, self.epoch(now)))
    }

    /// Whether `text` is a cookie issued to `addr` in this epoch or the previous one.
    pub fn check(&self, addr: SocketAddr, text: &str, now: Instant) -> bool {
        let Ok(value) = u64::from_str_radix(text.trim(), 16) else {
            return false;
        };
        let epoch = self.epoch(now);
        value == self.mac(addr, epoch) || (epoch > 0 && value == self.mac(addr, epoch - 1))
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.started).as_secs()) / EPOCH.as_secs()
    }

    fn mac(&self, addr: SocketAddr, epoch: u64) -> u64 {
        let mut hasher = self.key.build_hasher();
        addr.hash(&mut hasher);
        epoch.hash(&mut hasher);
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_checks_only_for_its_address_and_for_two_epochs() {
        let start = Instant::now();
        let cookies = Cookies::new(start);
        let alice: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mallory: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let cookie = cookies.issue(alice, start);
        assert_eq!(cookie.len(), 16);
        assert!(cookies.check(alice, &cookie, start));
        assert!(!cookies.check(mallory, &cookie, start));
        assert!(!cookies.check(alice, "not hex", start));
        assert!(
            cookies.check(alice, &cookie, start + EPOCH),
            "still valid in the next epoch"
        );
        assert!(
            !cookies.check(alice, &cookie, start + EPOCH * 2),
            "expired after that"
        );
    }

    #[test]
    fn another_server_issues_other_cookies() {
        let now = Instant::now();
        let alice: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_ne!(
            Cookies::new(now).issue(alice, now),
            Cookies::new(now).issue(alice, now)
        );
    }
}
