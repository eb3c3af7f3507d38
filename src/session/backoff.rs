//! Slowing down repeated failed logins from one address.
//!
//! After `listen.login_failures_before_backoff` failures within a minute,
//! each further failed login from that address is answered only after a
//! delay that doubles per failure, up to `listen.login_backoff_max_seconds`.
//! Successful logins are never delayed and do not clear the count: in the
//! sidecar pattern every client shares 127.0.0.1, and one well-behaved
//! client must not reset the penalty of a misbehaving neighbour.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(60);
/// The first delay once backoff starts; each further failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Addresses tracked before stale entries are swept.
const SWEEP_AT: usize = 10_000;

/// Per-address failed-login counts.
#[derive(Debug, Default)]
pub struct LoginBackoff {
    failures: DashMap<IpAddr, Failures>,
}

/// When delays start and how long they may get (from the configuration,
/// which a reload may change).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures within the window before answers slow down.
    pub threshold: u32,
    /// The longest delay.
    pub max_delay: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl LoginBackoff {
    /// Records a failed login from `ip` at `now`; returns how long to wait
    /// before answering it.
    pub fn failed(&self, ip: IpAddr, now: Instant, policy: Policy) -> Duration {
        if self.failures.len() >= SWEEP_AT {
            self.failures.retain(|_, f| now.duration_since(f.last) < WINDOW);
        }
        let mut entry = self.failures.entry(ip).or_insert(Failures { count: 0, last: now });
        if now.duration_since(entry.last) >= WINDOW {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        policy.delay(entry.count)
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }
}

impl Policy {
    fn delay(self, count: u32) -> Duration {
        let Some(over) = self.threshold.checked_add(1).and_then(|first| count.checked_sub(first)) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(over.min(16)).unwrap_or(u32::MAX);
        FIRST_DELAY.saturating_mul(factor).min(self.max_delay)
    }
}

/// Normalises an address for counting: IPv4-mapped IPv6 counts as IPv4, and
/// IPv6 counts per /64, since one host usually owns a whole /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(threshold: u32, max_secs: u64) -> Policy {
        Policy { threshold, max_delay: Duration::from_secs(max_secs) }
    }

    #[test]
    fn delays_start_after_the_threshold_and_double_up_to_the_cap() {
        let (b, p) = (LoginBackoff::default(), policy(3, 2));
        let now = Instant::now();
        let delays: Vec<u128> = (0..8).map(|_| b.failed(ip("10.0.0.1"), now, p).as_millis()).collect();
        assert_eq!(delays, [0, 0, 0, 250, 500, 1000, 2000, 2000]);
        // Another address is not affected.
        assert_eq!(b.failed(ip("10.0.0.2"), now, p), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let (b, p) = (LoginBackoff::default(), policy(1, 5));
        let start = Instant::now();
        assert_eq!(b.failed(ip("10.0.0.1"), start, p), Duration::ZERO);
        assert!(b.failed(ip("10.0.0.1"), start, p) > Duration::ZERO);
        let later = start + WINDOW + Duration::from_secs(1);
        assert_eq!(b.failed(ip("10.0.0.1"), later, p), Duration::ZERO);
    }

    #[test]
    fn a_zero_cap_turns_delays_off() {
        let (b, p) = (LoginBackoff::default(), policy(1, 0));
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(b.failed(ip("10.0.0.1"), now, p), Duration::ZERO);
        }
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert_eq!(policy(1, 60).delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(policy(u32::MAX, 60).delay(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn stale_addresses_are_swept() {
        let (b, p) = (LoginBackoff::default(), policy(5, 1));
        let start = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            b.failed(IpAddr::V4(i.into()), start, p);
        }
        b.failed(ip("10.0.0.1"), start + WINDOW, p);
        assert_eq!(b.tracked(), 1);
    }

    #[test]
    fn addresses_are_grouped_sensibly() {
        assert_eq!(key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(key(ip("2001:db8::1")), key(ip("2001:db8::ffff:1")));
        assert_ne!(key(ip("2001:db8::1")), key(ip("2001:db8:0:1::1")));
    }
}
