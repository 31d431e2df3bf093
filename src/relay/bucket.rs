//! A token bucket with the time passed in: `rate` tokens per second, at most `burst` saved.

use std::time::Instant;

/// One token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket refilling at `rate` per second up to `burst`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        let burst = burst.max(1) as f64;
        Bucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Whether `n` tokens are there at `now` (refilling first), without taking them.
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Takes `n` tokens (call after [`Bucket::has`]; may go below zero otherwise).
    pub fn spend(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// Takes `n` tokens if they are there.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        let ok = self.has(n, now);
        if ok {
            self.spend(n);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| b.take(1, t0)).count(), 5);
        let later = t0 + Duration::from_millis(300);
        assert_eq!((0..20).filter(|_| b.take(1, later)).count(), 3);
        let much_later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..20).filter(|_| b.take(1, much_later)).count(),
            5,
            "capped at the burst"
        );
        assert!(
            !b.take(6, much_later + Duration::from_secs(60)),
            "more than the burst never passes"
        );
    }
}
