//! LAN broadcast and multicast across the party: which tun packets are for everyone, the
//! per-member rate limit, and the receiver's duplicate guard.
//!
//! Pure: the caller passes `now` and does the sending. A sender replicates only packets it
//! originated (source = its own virtual IP) and a receiver never forwards what it received,
//! so a packet can neither loop nor come back to its origin; see `PeerTable`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

/// Broadcast packets per second each member may send (and we accept from each peer).
pub const DEFAULT_RATE_PER_S: u32 = 200;
/// Highest `--broadcast-rate`.
pub const MAX_RATE_PER_S: u32 = 100_000;
/// The same packet again within this window is a duplicate (an IP packet carries a fresh
/// IP ID per datagram, so a game's repeated announcements are never equal byte for byte).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(1);
/// Recently seen broadcast packets remembered for the duplicate check.
const DEDUP_SLOTS: usize = 256;

/// Whether a packet to `dst` goes to every member: limited broadcast, the party subnet's
/// broadcast address, or IPv4 multicast (224.0.0.0/4).
pub fn is_for_everyone(dst: Ipv4Addr, subnet: Ipv4Net) -> bool {
    dst.is_broadcast() || dst == subnet.broadcast() || dst.is_multicast()
}

/// A rate limit of `rate` packets per second with bursts of up to `rate` packets (GCRA: the
/// theoretical arrival time moves one interval per accepted packet). Rate 0 accepts nothing.
#[derive(Debug, Clone)]
pub struct RateLimit {
    interval: Duration,
    burst: Duration,
    tat: Option<Instant>,
}

impl RateLimit {
    /// `rate` packets per second.
    pub fn new(rate: u32) -> RateLimit {
        let interval = match rate {
            0 => Duration::MAX,
            r => Duration::from_secs(1) / r,
        };
        RateLimit {
            interval,
            burst: interval.saturating_mul(rate.saturating_sub(1)),
            tat: None,
        }
    }

    /// Takes one packet's allowance at `now`; false when over the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.interval == Duration::MAX {
            return false;
        }
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat.saturating_duration_since(now) > self.burst {
            return false;
        }
        self.tat = Some(tat + self.interval);
        true
    }
}

/// Remembers recent broadcast packets so a second copy within [`DEDUP_WINDOW`] is dropped.
pub struct Dedup {
    hasher: RandomState,
    seen: Vec<(u64, Instant)>,
    next: usize,
}

impl Default for Dedup {
    fn default() -> Dedup {
        Dedup {
            hasher: RandomState::new(),
            seen: Vec::with_capacity(DEDUP_SLOTS),
            next: 0,
        }
    }
}

impl Dedup {
    /// Records `packet` at `now`; false if the same bytes were seen within the window.
    pub fn first_time(&mut self, packet: &[u8], now: Instant) -> bool {
        let hash = self.hasher.hash_one(packet);
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < DEDUP_WINDOW;
        if self.seen.iter().any(|(h, at)| *h == hash && fresh(at)) {
            return false;
        }
        if self.seen.len() < DEDUP_SLOTS {
            self.seen.push((hash, now));
        } else {
            self.seen[self.next] = (hash, now);
            self.next = (self.next + 1) % DEDUP_SLOTS;
        }
        true
    }
}

/// Broadcast counters of one peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerBroadcast {
    /// Copies of our broadcasts sent to this peer.
    pub sent: u64,
    /// Broadcasts from this peer written to our tun.
    pub received: u64,
    /// Broadcasts from this peer dropped: over the rate limit or duplicates.
    pub dropped: u64,
}

/// This member's own broadcast counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OwnBroadcast {
    /// Broadcast packets read from our tun and replicated to the party.
    pub sent: u64,
    /// Our broadcast packets dropped over the rate limit.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_means_limited_broadcast_subnet_broadcast_and_multicast() {
        let subnet: Ipv4Net = "10.66.0.0/16".parse().unwrap();
        for dst in [
            "255.255.255.255",
            "10.66.255.255",
            "224.0.0.251",
            "239.255.255.250",
        ] {
            assert!(is_for_everyone(dst.parse().unwrap(), subnet), "{dst}");
        }
        for dst in ["10.66.0.2", "10.67.255.255", "192.168.1.255", "240.0.0.1"] {
            assert!(!is_for_everyone(dst.parse().unwrap(), subnet), "{dst}");
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_one_packet_per_interval() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10);
        let burst = (0..20).filter(|_| limit.allow(t0)).count();
        assert_eq!(burst, 10, "a full second's allowance at once");
        assert!(!limit.allow(t0 + Duration::from_millis(99)));
        assert!(limit.allow(t0 + Duration::from_millis(100)));
        assert!(!limit.allow(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limit.allow(later)).count(), 10);
    }

    #[test]
    fn rate_limit_of_zero_allows_nothing() {
        let mut limit = RateLimit::new(0);
        assert!(!limit.allow(Instant::now()));
    }

    #[test]
    fn dedup_drops_the_same_packet_within_the_window_only() {
        let t0 = Instant::now();
        let mut dedup = Dedup::default();
        assert!(dedup.first_time(b"lobby 1", t0));
        assert!(
            dedup.first_time(b"lobby 2", t0),
            "other bytes are not duplicates"
        );
        assert!(!dedup.first_time(b"lobby 1", t0 + Duration::from_millis(999)));
        assert!(dedup.first_time(b"lobby 1", t0 + DEDUP_WINDOW));
    }

    #[test]
    fn dedup_forgets_the_oldest_when_full() {
        let t0 = Instant::now();
        let mut dedup = Dedup::default();
        for i in 0..=DEDUP_SLOTS as u32 {
            assert!(dedup.first_time(&i.to_be_bytes(), t0));
        }
        assert!(
            dedup.first_time(&0u32.to_be_bytes(), t0),
            "slot 0 was reused"
        );
        assert!(!dedup.first_time(&(DEDUP_SLOTS as u32).to_be_bytes(), t0));
    }
}
