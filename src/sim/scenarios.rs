//! Scenarios over the simulated network: NAT classification against the real responder for
//! every NAT model, under loss, and plain simultaneous UDP punching between NATed hosts
//! checked against [`direct_possible`] (which cross-checks the NAT models against the matrix
//! measured in the lab).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stun_host::StunHost;
use super::{
    random_loss, Datagram, FilteringBehaviour, HostId, MappingBehaviour, NatModel, Node, Sim,
};
use crate::nat::classify::{Classifier, NatReport, TRANSACTION_TIMEOUT};
use crate::nat::compat::{direct_possible, Prediction};
use crate::nat::NatType;

/// The server's STUN sockets: two IPs, two ports each (`server --stun` four times).
pub(super) fn stun_addrs() -> Vec<SocketAddr> {
    [
        "198.51.100.1:3478",
        "198.51.100.1:3479",
        "198.51.100.2:3478",
        "198.51.100.2:3479",
    ]
    .map(|s| s.parse().unwrap())
    .to_vec()
}

/// The classifier on a host's socket, as the NAT thread will drive it through the data
/// plane's socket.
pub(super) struct Classify {
    local: SocketAddr,
    pub(super) classifier: Classifier,
    done_at: Option<Instant>,
}

impl Classify {
    pub(super) fn new(local: SocketAddr, now: Instant) -> Classify {
        let seed = [local.port() as u8; 12];
        Classify {
            local,
            classifier: Classifier::new(&stun_addrs(), &[local], seed, now),
            done_at: None,
        }
    }

    fn note_done(&mut self, now: Instant) {
        if self.done_at.is_none() && self.classifier.result().is_some() {
            self.done_at = Some(now);
        }
    }
}

impl Node for Classify {
    fn handle_datagram(&mut self, d: Datagram, now: Instant) {
        if d.dst == self.local {
            self.classifier.handle_datagram(d.src, &d.payload, now);
            self.note_done(now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.classifier.handle_timeout(now);
        self.note_done(now);
    }

    fn poll_transmit(&mut self) -> Option<Datagram> {
        let t = self.classifier.poll_transmit()?;
        Some(Datagram {
            src: self.local,
            dst: t.dst,
            payload: t.payload,
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.classifier.poll_timeout()
    }
}

/// Where a member sits.
#[derive(Debug, Clone, Copy)]
pub(super) enum Place {
    /// On the internet with this address.
    Public(&'static str),
    /// Behind a NAT with this public IP, at a private address.
    Behind(NatModel, &'static str, &'static str),
}

/// A world with the STUN server; returns it, the server's host and its node.
pub(super) fn world() -> (Sim, HostId, StunHost) {
    let mut sim = Sim::default();
    let server = sim.add_public_host(&["198.51.100.1", "198.51.100.2"]);
    (sim, server, StunHost::new(&stun_addrs()))
}

/// Puts a member at `place`; returns its host and its socket's local address (port 5000).
pub(super) fn member(sim: &mut Sim, place: Place) -> (HostId, SocketAddr) {
    let (host, ip) = match place {
        Place::Public(ip) => (sim.add_public_host(&[ip]), ip),
        Place::Behind(model, public, private) => {
            let nat = sim.add_nat(public, model);
            (sim.add_host_behind(nat, private), private)
        }
    };
    (host, SocketAddr::new(ip.parse().unwrap(), 5000))
}

/// Classifies one member at `place` and returns the report and how long it took.
fn classify_at(place: Place, loss: Option<(u64, u64)>) -> (NatReport, Duration) {
    let (mut sim, server, mut stun) = world();
    let (host, local) = member(&mut sim, place);
    if let Some((percent, seed)) = loss {
        sim.set_loss(random_loss(percent, seed));
    }
    let start = sim.now();
    let mut node = Classify::new(local, start);
    sim.run(
        &mut [(server, &mut stun), (host, &mut node)],
        start + 4 * TRANSACTION_TIMEOUT,
    );
    let report = node
        .classifier
        .result()
        .expect("classification ends in time");
    (report, node.done_at.unwrap() - start)
}

const CONE_EIM_ADM: NatModel = NatModel::new(
    MappingBehaviour::AddressDependent,
    FilteringBehaviour::AddressAndPortDependent,
);

#[test]
fn classification_is_right_for_every_nat_model() {
    let public_mapping: SocketAddr = "203.0.113.1:40000".parse().unwrap();
    for (model, expected) in [
        (NatModel::FULL_CONE, NatType::FullCone),
        (NatModel::RESTRICTED, NatType::RestrictedCone),
        (NatModel::PORT_RESTRICTED, NatType::PortRestrictedCone),
        (NatModel::SYMMETRIC, NatType::Symmetric),
        (CONE_EIM_ADM, NatType::Symmetric),
    ] {
        let (report, took) = classify_at(Place::Behind(model, "203.0.113.1", "10.0.0.2"), None);
        assert_eq!(report.nat_type, expected, "{model:?}: {report:?}");
        assert_eq!(report.public, Some(public_mapping), "{model:?}");
        // Three round trips, plus one filtering test timing out unless filtering is
        // endpoint-independent.
        assert!(
            took <= TRANSACTION_TIMEOUT + 3 * 2 * super::DEFAULT_LATENCY,
            "{took:?}"
        );
    }
    let (report, took) = classify_at(Place::Public("203.0.113.50"), None);
    assert_eq!(report.nat_type, NatType::Open);
    assert_eq!(report.public, Some("203.0.113.50:5000".parse().unwrap()));
    assert_eq!(took, 2 * super::DEFAULT_LATENCY, "one round trip");
}

#[test]
fn an_unreachable_server_is_unknown_after_the_transaction_timeout() {
    let (mut sim, _server, _stun) = world();
    let (host, local) = member(
        &mut sim,
        Place::Behind(NatModel::PORT_RESTRICTED, "203.0.113.1", "10.0.0.2"),
    );
    let start = sim.now();
    let mut node = Classify::new(local, start);
    // No node on the server host: every request goes unanswered.
    sim.run(&mut [(host, &mut node)], start + Duration::from_secs(60));
    let report = node.classifier.result().unwrap();
    assert_eq!((report.nat_type, report.public), (NatType::Unknown, None));
    assert_eq!(node.done_at, Some(start + TRANSACTION_TIMEOUT));
    assert_eq!(
        sim.counters.delivered, 3,
        "three sends of the first request"
    );
}

#[test]
fn a_server_that_stops_answering_midway_leaves_the_type_unknown() {
    let (mut sim, server, mut stun) = world();
    let (host, local) = member(
        &mut sim,
        Place::Behind(NatModel::FULL_CONE, "203.0.113.1", "10.0.0.2"),
    );
    let mut replies = 0;
    sim.set_loss(move |d| {
        let from_server = d.src.ip().to_string().starts_with("198.51.100.");
        replies += u32::from(from_server);
        from_server && replies > 1
    });
    let start = sim.now();
    let mut node = Classify::new(local, start);
    sim.run(
        &mut [(server, &mut stun), (host, &mut node)],
        start + Duration::from_secs(60),
    );
    let report = node.classifier.result().unwrap();
    assert_eq!(report.nat_type, NatType::Unknown);
    assert_eq!(report.public, Some("203.0.113.1:40000".parse().unwrap()));
    assert_eq!(report.mapping, None);
    assert!(node.done_at.unwrap() - start <= 3 * TRANSACTION_TIMEOUT);
}

#[test]
fn loss_never_makes_a_strict_nat_look_looser() {
    // Loss can only hide replies, so it can make filtering look stricter or a test silent,
    // never the other way: the strictest types come out right or unknown, never another.
    for (model, expected) in [
        (NatModel::PORT_RESTRICTED, NatType::PortRestrictedCone),
        (NatModel::SYMMETRIC, NatType::Symmetric),
    ] {
        let mut seen = Vec::new();
        for seed in 1..=60 {
            let place = Place::Behind(model, "203.0.113.1", "10.0.0.2");
            let (report, took) = classify_at(place, Some((40, seed)));
            assert!(
                [expected, NatType::Unknown].contains(&report.nat_type),
                "{model:?}, seed {seed}: {report:?}"
            );
            assert!(took <= 3 * TRANSACTION_TIMEOUT, "seed {seed}: {took:?}");
            seen.push(report.nat_type);
        }
        assert!(
            seen.contains(&expected) && seen.contains(&NatType::Unknown),
            "{seen:?}"
        );
    }
}

/// Plain simultaneous UDP punching: every `PUNCH_INTERVAL` a datagram to each endpoint known
/// for the peer (first its server-reflexive address, then wherever the peer was heard from).
struct Puncher {
    local: SocketAddr,
    me: u8,
    endpoints: Vec<SocketAddr>,
    next_at: Option<Instant>,
    stop_at: Instant,
    heard_from: Option<SocketAddr>,
    outbox: VecDeque<Datagram>,
}

const PUNCH_INTERVAL: Duration = Duration::from_millis(100);
const PUNCH_FOR: Duration = Duration::from_secs(2);

impl Puncher {
    fn new(local: SocketAddr, me: u8, peer: SocketAddr, now: Instant) -> Puncher {
        Puncher {
            local,
            me,
            endpoints: vec![peer],
            next_at: Some(now),
            stop_at: now + PUNCH_FOR,
            heard_from: None,
            outbox: VecDeque::new(),
        }
    }

    fn punch(&mut self, to: SocketAddr) {
        self.outbox.push_back(Datagram {
            src: self.local,
            dst: to,
            payload: vec![b'P', self.me],
        });
    }
}

impl Node for Puncher {
    fn handle_datagram(&mut self, d: Datagram, _now: Instant) {
        if d.dst != self.local
            || d.payload.len() != 2
            || d.payload[0] != b'P'
            || d.payload[1] == self.me
        {
            return;
        }
        self.heard_from = Some(d.src);
        if !self.endpoints.contains(&d.src) {
            self.endpoints.push(d.src);
            self.punch(d.src);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.stop_at {
            self.next_at = None;
            return;
        }
        for to in self.endpoints.clone() {
            self.punch(to);
        }
        self.next_at = Some(now + PUNCH_INTERVAL);
    }

    fn poll_transmit(&mut self) -> Option<Datagram> {
        self.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_at
    }
}

pub(super) fn place_of(nat_type: NatType, side: u8) -> Place {
    let (public, private) = match side {
        0 => ("203.0.113.1", "10.0.1.2"),
        _ => ("203.0.113.2", "10.0.2.2"),
    };
    let model = match nat_type {
        NatType::Open => return Place::Public(public),
        NatType::FullCone => NatModel::FULL_CONE,
        NatType::RestrictedCone => NatModel::RESTRICTED,
        NatType::PortRestrictedCone => NatModel::PORT_RESTRICTED,
        NatType::Symmetric | NatType::Unknown => NatModel::SYMMETRIC,
    };
    Place::Behind(model, public, private)
}

#[test]
fn simultaneous_punching_gets_through_exactly_where_direct_possible_says() {
    let known = &NatType::ALL[..5];
    for (i, &a) in known.iter().enumerate() {
        for &b in &known[i..] {
            let (mut sim, server, mut stun) = world();
            let (host_a, local_a) = member(&mut sim, place_of(a, 0));
            let (host_b, local_b) = member(&mut sim, place_of(b, 1));
            // Both classify themselves first, through the sockets they then punch from.
            let start = sim.now();
            let mut ca = Classify::new(local_a, start);
            let mut cb = Classify::new(local_b, start);
            sim.run(
                &mut [(server, &mut stun), (host_a, &mut ca), (host_b, &mut cb)],
                start + 4 * TRANSACTION_TIMEOUT,
            );
            let (ra, rb) = (
                ca.classifier.result().unwrap(),
                cb.classifier.result().unwrap(),
            );
            assert_eq!((ra.nat_type, rb.nat_type), (a, b), "classification");
            // Then they learn each other's server-reflexive address (from the roster, later)
            // and punch at the same moment.
            let now = sim.now();
            let mut pa = Puncher::new(local_a, 0, rb.public.unwrap(), now);
            let mut pb = Puncher::new(local_b, 1, ra.public.unwrap(), now);
            sim.run(&mut [(host_a, &mut pa), (host_b, &mut pb)], now + PUNCH_FOR);
            let through = pa.heard_from.is_some() && pb.heard_from.is_some();
            let predicted = direct_possible(a, b) == Prediction::Direct;
            assert_eq!(
                through,
                predicted,
                "{a:?} with {b:?}: punching {} but direct_possible says {:?}",
                if through { "got through" } else { "failed" },
                direct_possible(a, b)
            );
        }
    }
}
