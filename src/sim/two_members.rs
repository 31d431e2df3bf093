//! Two members behind NATs of given types, a STUN server and a relay on the internet, over
//! the simulated network: the world of the member and health scenarios.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::members::{ping_seq, MemberNode, RelayNode, TicketDesk, Via};
use super::scenarios::{member, place_of, world, Classify};
use super::stun_host::StunHost;
use super::{HostId, Node, Sim};
use crate::dataplane::peers::PeerStats;
use crate::nat::classify::TRANSACTION_TIMEOUT;
use crate::nat::{direct_possible, NatType, Prediction};

pub(super) const RELAY: &str = "192.0.2.1:3478";
pub(super) const ATTACKER: &str = "192.0.2.66:4444";
/// NAT types the models produce (unknown is a classification result, not a NAT).
pub(super) const KNOWN: [NatType; 5] = [
    NatType::Open,
    NatType::FullCone,
    NatType::RestrictedCone,
    NatType::PortRestrictedCone,
    NatType::Symmetric,
];

/// Two members behind NATs of types `a` and `b`, a STUN server and a relay on the internet.
pub(super) struct Lab {
    pub(super) sim: Sim,
    pub(super) stun: (HostId, StunHost),
    pub(super) relay: (HostId, RelayNode),
    pub(super) a: (HostId, MemberNode),
    pub(super) b: (HostId, MemberNode),
    /// What each member's classification found: type and public endpoint.
    pub(super) found: [(NatType, Option<SocketAddr>); 2],
    /// Tickets for relays (every relay of the lab shares it).
    pub(super) desk: TicketDesk,
}

impl Lab {
    /// Builds the world and classifies both members on the sockets they then use.
    pub(super) fn new(a: NatType, b: NatType) -> Lab {
        let (mut sim, stun_host, mut stun) = world();
        let (host_a, local_a) = member(&mut sim, place_of(a, 0));
        let (host_b, local_b) = member(&mut sim, place_of(b, 1));
        let relay_host = sim.add_public_host(&["192.0.2.1"]);
        let start = sim.now();
        let mut ca = Classify::new(local_a, start);
        let mut cb = Classify::new(local_b, start);
        sim.run(
            &mut [(stun_host, &mut stun), (host_a, &mut ca), (host_b, &mut cb)],
            start + 4 * TRANSACTION_TIMEOUT,
        );
        let (ra, rb) = (
            ca.classifier.result().expect("classified"),
            cb.classifier.result().expect("classified"),
        );
        assert_eq!((ra.nat_type, rb.nat_type), (a, b), "classification");
        let now = sim.now();
        let desk = TicketDesk { start };
        Lab {
            relay: (relay_host, RelayNode::new(relay(), desk, now)),
            a: (host_a, MemberNode::new(1, local_a, desk, now)),
            b: (host_b, MemberNode::new(2, local_b, desk, now)),
            found: [(ra.nat_type, ra.public), (rb.nat_type, rb.public)],
            desk,
            stun: (stun_host, stun),
            sim,
        }
    }

    /// Runs every node for `d` of virtual time.
    pub(super) fn run_for(&mut self, d: Duration) {
        let until = self.sim.now() + d;
        self.sim.run(
            &mut [
                (self.stun.0, &mut self.stun.1),
                (self.relay.0, &mut self.relay.1),
                (self.a.0, &mut self.a.1),
                (self.b.0, &mut self.b.1),
            ],
            until,
        );
    }

    /// Like [`Lab::run_for`], with `extra` nodes on their hosts too.
    pub(super) fn run_with(&mut self, extra: &mut dyn Node, host: HostId, d: Duration) {
        let until = self.sim.now() + d;
        self.sim.run(
            &mut [
                (self.relay.0, &mut self.relay.1),
                (self.a.0, &mut self.a.1),
                (self.b.0, &mut self.b.1),
                (host, extra),
            ],
            until,
        );
    }

    /// The prediction both members compute from the types they publish.
    pub(super) fn prediction(&self) -> Prediction {
        direct_possible(self.found[0].0, self.found[1].0)
    }

    /// Both bind at the relay (the control thread's first `SetRelays` and ticket).
    pub(super) fn bind(&mut self) {
        let now = self.sim.now();
        self.a.1.set_relays(&[relay()], now);
        self.b.1.set_relays(&[relay()], now);
        self.run_for(Duration::from_secs(1));
        assert!(self.a.1.is_bound_at(relay()) && self.b.1.is_bound_at(relay()));
    }

    /// Both get the roster at the same moment: each knows the other's local endpoint and
    /// the public one its classification found (`public_of_b` overrides what A learns of
    /// B's), and that they meet at the relay.
    pub(super) fn introduce(&mut self, public_of_b: Option<Option<SocketAddr>>) {
        let now = self.sim.now();
        let prediction = self.prediction();
        let of_a = self.a.1.config(self.found[0].1, Some(relay()), prediction);
        let b_public = public_of_b.unwrap_or(self.found[1].1);
        let of_b = self.b.1.config(b_public, Some(relay()), prediction);
        self.a.1.sync(vec![of_b], now);
        self.b.1.sync(vec![of_a], now);
    }

    /// Both ping each other every second from now.
    pub(super) fn ping_both(&mut self) {
        let now = self.sim.now();
        let (va, vb) = (self.a.1.vip, self.b.1.vip);
        self.a.1.ping_every(vb, Duration::from_secs(1), now);
        self.b.1.ping_every(va, Duration::from_secs(1), now);
    }

    pub(super) fn relayed_packets(&self) -> u64 {
        self.relay.1.relay.counters().forwarded_packets
    }
}

pub(super) fn relay() -> SocketAddr {
    RELAY.parse().unwrap()
}

/// The one peer a member has.
pub(super) fn peer_of(m: &MemberNode, now: Instant) -> PeerStats {
    let stats = m.table.stats(now);
    assert_eq!(stats.len(), 1);
    stats.into_iter().next().unwrap()
}

/// The ping sequence numbers a member's tun got, in order, with their path.
pub(super) fn pings_got(m: &MemberNode) -> Vec<(u16, Via)> {
    m.delivered()
        .iter()
        .map(|d| (ping_seq(&d.packet).expect("only pings"), d.via))
        .collect()
}
