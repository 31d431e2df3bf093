//! Which relays a member keeps bindings with, which one is its home (published in the
//! roster), and where two members meet. Pure: the control thread feeds it the control
//! plane's relay list and the data plane's measurements.
//!
//! - A member binds to every listed relay (at most [`MAX_RELAYS`]; the `--relay` fallback
//!   when the list is empty), which measures the RTT to each from bind and keepalive answers.
//! - Home: the bound relay with the best score, RTT weighted by the load the relay reports
//!   (`rtt × (1 + 2 × clients / capacity)`); a relay that refused us for being full does not
//!   count. The home changes only when it is lost or another scores 30 % better (hysteresis:
//!   two similar relays do not take turns).
//! - Meeting point: two members meet at the home relay of the one with the smaller member id
//!   (at the other's when that one has none). Both compute the same from the roster.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::dataplane::relays::{RelayState, MAX_RELAYS};
use crate::server::relays::RelayInfo;

/// Another relay must score this much better (a fraction of the home's score) to replace it.
const SWITCH_FACTOR: f64 = 0.7;

/// The relays a member knows of, their measurements, and its home.
#[derive(Debug, Default)]
pub struct RelayBook {
    listed: Vec<RelayInfo>,
    fallback: Option<SocketAddr>,
    measured: BTreeMap<SocketAddr, RelayState>,
    home: Option<SocketAddr>,
}

impl RelayBook {
    /// A book with `--relay` as the fallback for a control plane that lists no relay.
    pub fn new(fallback: Option<SocketAddr>) -> RelayBook {
        RelayBook {
            fallback,
            ..RelayBook::default()
        }
    }

    /// The control plane's current list.
    pub fn set_listed(&mut self, listed: Vec<RelayInfo>) {
        self.listed = listed;
    }

    /// The relays to keep bindings with: the listed ones (else the fallback), then the
    /// peers' meeting relays we do not know yet.
    pub fn wanted(&self, meeting: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        let mut wanted: Vec<SocketAddr> = self.listed.iter().map(|r| r.address).collect();
        if wanted.is_empty() {
            wanted.extend(self.fallback);
        }
        for relay in meeting {
            if !wanted.contains(&relay) {
                wanted.push(relay);
            }
        }
        wanted.truncate(MAX_RELAYS);
        wanted
    }

    /// A measurement from the data plane.
    pub fn handle_state(&mut self, state: RelayState) {
        self.measured.insert(state.relay, state);
    }

    fn score(&self, relay: SocketAddr) -> Option<f64> {
        let state = self.measured.get(&relay)?;
        if !state.bound || state.full {
            return None;
        }
        let rtt_ms = state.rtt?.as_secs_f64() * 1000.0;
        let load = self
            .listed
            .iter()
            .find(|r| r.address == relay)
            .filter(|r| r.capacity > 0)
            .map_or(0.0, |r| {
                (f64::from(r.clients) / f64::from(r.capacity)).min(1.0)
            });
        Some(rtt_ms.max(0.01) * (1.0 + 2.0 * load))
    }

    /// Reconsiders the home relay and returns it.
    pub fn choose_home(&mut self) -> Option<SocketAddr> {
        let best = self
            .measured
            .keys()
            .filter_map(|r| self.score(*r).map(|s| (*r, s)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let current = self.home.and_then(|h| self.score(h).map(|s| (h, s)));
        self.home = match (current, best) {
            (Some((home, score)), Some((other, better))) if better < score * SWITCH_FACTOR => {
                log::info!("home relay {home} -> {other} (score {score:.1} -> {better:.1})");
                Some(other)
            }
            (Some((home, _)), _) => Some(home),
            (None, best) => best.map(|(relay, _)| relay),
        };
        self.home
    }
}

/// Where members `a` and `b` (member ids, with their home relays) meet.
pub fn meeting_relay(
    a: (&str, Option<SocketAddr>),
    b: (&str, Option<SocketAddr>),
) -> Option<SocketAddr> {
    let (first, second) = if a.0 <= b.0 { (a.1, b.1) } else { (b.1, a.1) };
    first.or(second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, n], 3479))
    }

    fn info(n: u8, clients: u32, capacity: u32) -> RelayInfo {
        RelayInfo {
            address: addr(n),
            region: "r".into(),
            capacity,
            clients,
            last_seen: 0,
        }
    }

    fn measured(n: u8, rtt_ms: u64) -> RelayState {
        RelayState {
            relay: addr(n),
            bound: true,
            rtt: Some(Duration::from_millis(rtt_ms)),
            full: false,
        }
    }

    #[test]
    fn the_fastest_bound_relay_becomes_home_weighted_by_load() {
        let mut book = RelayBook::new(None);
        book.set_listed(vec![info(1, 0, 100), info(2, 90, 100)]);
        book.handle_state(measured(1, 30));
        book.handle_state(measured(2, 20));
        // 20 ms at 90 % load scores 56; 30 ms idle scores 30.
        assert_eq!(book.choose_home(), Some(addr(1)));
    }

    #[test]
    fn a_similar_relay_does_not_take_over_but_a_much_better_one_does() {
        let mut book = RelayBook::new(None);
        book.set_listed(vec![info(1, 0, 10), info(2, 0, 10)]);
        book.handle_state(measured(1, 40));
        assert_eq!(book.choose_home(), Some(addr(1)));
        book.handle_state(measured(2, 35));
        assert_eq!(book.choose_home(), Some(addr(1)), "35 vs 40 ms: stay");
        book.handle_state(measured(2, 20));
        assert_eq!(book.choose_home(), Some(addr(2)), "20 vs 40 ms: switch");
    }

    #[test]
    fn a_lost_or_full_home_is_replaced() {
        let mut book = RelayBook::new(None);
        book.set_listed(vec![info(1, 0, 10), info(2, 0, 10)]);
        book.handle_state(measured(1, 10));
        book.handle_state(measured(2, 50));
        assert_eq!(book.choose_home(), Some(addr(1)));
        book.handle_state(RelayState {
            bound: false,
            ..measured(1, 10)
        });
        assert_eq!(book.choose_home(), Some(addr(2)));
        book.handle_state(RelayState {
            full: true,
            ..measured(2, 50)
        });
        assert_eq!(book.choose_home(), None);
    }

    #[test]
    fn the_fallback_relay_is_used_only_when_none_is_listed() {
        let mut book = RelayBook::new(Some(addr(9)));
        assert_eq!(book.wanted([]), vec![addr(9)]);
        book.set_listed(vec![info(1, 0, 10)]);
        assert_eq!(book.wanted([addr(5), addr(1)]), vec![addr(1), addr(5)]);
    }

    #[test]
    fn both_members_of_a_pair_name_the_same_meeting_relay() {
        let a = ("0011aa", Some(addr(1)));
        let b = ("22ff00", Some(addr(2)));
        assert_eq!(meeting_relay(a, b), Some(addr(1)));
        assert_eq!(meeting_relay(b, a), Some(addr(1)));
        assert_eq!(meeting_relay(("0011aa", None), b), Some(addr(2)));
        assert_eq!(meeting_relay(b, ("0011aa", None)), Some(addr(2)));
    }
}
