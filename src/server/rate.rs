//! Per-source-IP request rate limit: a token bucket per address, time passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most addresses tracked; beyond it, buckets that are full again are forgotten.
const MAX_TRACKED: usize = 100_000;

/// Token buckets by source address.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` requests on average, bursts of `burst`. `per_second == 0` disables it.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip`; `false` means the request must be refused.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        if self.buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
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
    fn bursts_then_refills_at_the_rate() {
        let mut r = RateLimiter::new(10, 5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..7).filter(|_| r.allow(ip, t0)).count(), 5);
        assert!(r.allow(other, t0), "addresses are limited separately");
        assert!(!r.allow(ip, t0 + Duration::from_millis(50)));
        assert!(r.allow(ip, t0 + Duration::from_millis(110)));
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let mut r = RateLimiter::new(0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..1000).all(|_| r.allow(ip, Instant::now())));
    }
}
