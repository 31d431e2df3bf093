//! Scenarios with the real member data plane ([`MemberNode`]: peer table, relay clients) and
//! the real relay core ([`RelayNode`]) over the simulated network: two members behind every
//! pair of NAT models, who know each other's local and public endpoints and meet at a relay
//! on the internet. What is checked is what a user sees: packets on the other tun, and the
//! peer's `connection_type` and endpoint in `status`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use x25519_dalek::{PublicKey, StaticSecret};

use super::members::Via;
use super::two_members::{peer_of, pings_got, relay, Lab, ATTACKER, KNOWN};
use super::{Datagram, Node, DEFAULT_LATENCY};
use crate::dataplane::health::PROBE_STANDBY;
use crate::dataplane::peer::{PUNCH_FAST, PUNCH_HOPELESS};
use crate::nat::{NatType, Prediction};

#[test]
fn every_pair_of_nat_models_connects_directly_where_punching_can_work_and_relayed_elsewhere() {
    for (i, &a) in KNOWN.iter().enumerate() {
        for &b in &KNOWN[i..] {
            let mut lab = Lab::new(a, b);
            let expected = match lab.prediction() {
                Prediction::Direct => "direct",
                _ => "relayed",
            };
            lab.bind();
            lab.introduce(None);
            lab.ping_both();
            lab.run_for(Duration::from_secs(30));
            let relayed_before = lab.relayed_packets();
            // Minutes of a game night: the path holds.
            lab.run_for(Duration::from_secs(150));
            let now = lab.sim.now();
            let relayed = lab.relayed_packets() - relayed_before;
            for (name, m, other) in [("A", &lab.a.1, &lab.b.1), ("B", &lab.b.1, &lab.a.1)] {
                let peer = peer_of(m, now);
                assert!(peer.is_connected(), "{a:?}-{b:?}: {name}'s session is up");
                assert_eq!(
                    peer.connection_type, expected,
                    "{a:?}-{b:?}: {name} sees the peer {}",
                    peer.connection_type
                );
                let got = pings_got(m);
                let sent = other.pings_sent();
                // Every ping arrived, once and in order (the last may still be in flight).
                let seqs: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
                assert!(
                    seqs.len() as u16 >= sent - 1 && seqs.iter().copied().eq(1..=seqs.len() as u16),
                    "{a:?}-{b:?}: {name} got {} of {sent} pings",
                    seqs.len()
                );
                // The last two and a half minutes of them took the path status shows.
                let path = if expected == "direct" {
                    Via::Direct
                } else {
                    Via::Relay
                };
                assert!(
                    got[30..].iter().all(|(_, via)| *via == path),
                    "{a:?}-{b:?}: {name}'s pings came {:?}",
                    got.iter().map(|(_, v)| *v).collect::<Vec<_>>()
                );
            }
            if expected == "direct" {
                // Only the standby probes of the relayed path: a request and a reply each
                // way every PROBE_STANDBY.
                let probes = 4 * (150 / PROBE_STANDBY.as_secs() + 1);
                assert!(
                    relayed <= probes,
                    "{a:?}-{b:?}: the relay carried {relayed} (probes: {probes})"
                );
            } else {
                // At least every ping both ways went through the relay.
                assert!(
                    relayed >= 2 * 149,
                    "{a:?}-{b:?}: the relay carried {relayed}"
                );
            }
        }
    }
}

#[test]
fn traffic_starts_on_the_relay_and_moves_to_direct_as_soon_as_a_punch_answers() {
    // Both port-restricted: punching works, but only once each side has sent to the other's
    // public endpoint. A learns B's public endpoint 10 s late (B's NAT detection was still
    // running when the roster reached A); B knows A's from the start but gets the roster
    // half a second after A, so their punch schedules are out of step.
    let mut lab = Lab::new(NatType::PortRestrictedCone, NatType::PortRestrictedCone);
    lab.bind();
    let introduced = lab.sim.now();
    let prediction = lab.prediction();
    let (a_public, b_public) = (lab.found[0].1, lab.found[1].1);
    let of_a = lab.a.1.config(a_public, Some(relay()), prediction);
    let of_b_early = lab.b.1.config(None, Some(relay()), prediction);
    lab.a.1.sync(vec![of_b_early], introduced);
    // Only A sends (a client streaming to a game host), so B sends no data that could reach
    // A straight: A learns of the direct path only if B answers its punch.
    let vb = lab.b.1.vip;
    lab.a.1.ping_every(vb, Duration::from_secs(1), introduced);
    lab.run_for(Duration::from_millis(500));
    let now = lab.sim.now();
    lab.b.1.sync(vec![of_a], now);
    lab.run_for(Duration::from_millis(9500));
    let now = lab.sim.now();
    let first = &lab.b.1.delivered()[0];
    assert_eq!(
        first.via,
        Via::Relay,
        "the first packet went through the relay"
    );
    assert_eq!(
        first.at,
        introduced + Duration::from_secs(1) + 2 * DEFAULT_LATENCY
    );
    // Ten sent; the tenth is still on its way.
    assert_eq!(pings_got(&lab.b.1).len(), 9, "none lost meanwhile");
    for m in [&lab.a.1, &lab.b.1] {
        let peer = peer_of(m, now);
        assert_eq!(peer.connection_type, "relayed");
        assert_eq!(peer.endpoint, None, "nothing got through straight yet");
    }
    // The roster catches up.
    let learned = lab.sim.now();
    let of_b = lab.b.1.config(b_public, Some(relay()), prediction);
    lab.a.1.sync(vec![of_b], learned);
    // Step in milliseconds and note when each side sees `direct`.
    let mut direct_at = [None, None];
    while lab.sim.now() < learned + Duration::from_secs(5) {
        lab.run_for(Duration::from_millis(1));
        let now = lab.sim.now();
        for (i, m) in [&lab.a.1, &lab.b.1].into_iter().enumerate() {
            if direct_at[i].is_none() && peer_of(m, now).connection_type == "direct" {
                direct_at[i] = Some(now - learned);
            }
        }
    }
    // A's next punch (every PUNCH_FAST, on a timer tick) reaches B, whose NAT it passes
    // because B has punched A's public endpoint: B goes direct, and answers straight away.
    // A goes direct one round trip after its punch.
    let [Some(a_direct), Some(b_direct)] = direct_at else {
        panic!("direct after {direct_at:?}");
    };
    // B's probe (sent when the punch arrives) comes back one round trip later; A's (sent
    // when B's probe arrives) one one-way latency after that.
    assert!(
        b_direct <= PUNCH_FAST + 3 * DEFAULT_LATENCY,
        "B: {b_direct:?}"
    );
    assert_eq!(a_direct, b_direct + DEFAULT_LATENCY, "A: {a_direct:?}");
    assert_eq!(
        peer_of(&lab.a.1, lab.sim.now()).time_to_direct,
        Some(learned - introduced + a_direct)
    );
    // The pings moved with it, none lost or doubled on the switch.
    let got = pings_got(&lab.b.1);
    let moved_at = learned + a_direct;
    for (d, (seq, via)) in lab.b.1.delivered().iter().zip(&got) {
        let expected = if d.at > moved_at + DEFAULT_LATENCY {
            Via::Direct
        } else {
            Via::Relay
        };
        assert_eq!(*via, expected, "ping {seq} at {:?}", d.at - introduced);
    }
    let seqs: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert!(seqs.iter().copied().eq(1..=seqs.len() as u16), "{seqs:?}");
    assert_eq!(seqs.len(), 14);
}

/// Records what reaches it and sends what a test queues, at once.
struct Attacker {
    outbox: Vec<Datagram>,
    got: Vec<Datagram>,
}

impl Node for Attacker {
    fn handle_datagram(&mut self, d: Datagram, _now: Instant) {
        self.got.push(d);
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Datagram> {
        self.outbox.pop()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// Bytes from a xorshift64 stream.
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn forged_and_replayed_probes_change_nothing() {
    // Full cone: anyone on the internet reaches A's public mapping, the attacker too.
    let mut lab = Lab::new(NatType::FullCone, NatType::FullCone);
    let a_public = lab.found[0].1.unwrap();
    let b_public = lab.found[1].1.unwrap();
    // Capture everything B sends A on the internet.
    let captured: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let tap = captured.clone();
    lab.sim.set_loss(move |d| {
        if d.src == b_public && d.dst == a_public {
            tap.borrow_mut().push(d.payload.clone());
        }
        false
    });
    lab.bind();
    lab.introduce(None);
    lab.ping_both();
    lab.run_for(Duration::from_secs(20));
    let now = lab.sim.now();
    let before = peer_of(&lab.a.1, now);
    assert_eq!(before.connection_type, "direct");
    assert_eq!(before.endpoint, Some(b_public));
    let drops_before = lab.a.1.table.drops;
    let captured = captured.borrow().clone();
    // The tap saw B's handshake message and its pings (and punches).
    assert!(captured.iter().any(|p| p[0] == 1 || p[0] == 2));
    assert!(captured.iter().filter(|p| p[0] == 4).count() >= 19);

    let attacker: SocketAddr = ATTACKER.parse().unwrap();
    let attacker_host = lab.sim.add_public_host(&["192.0.2.66"]);
    let mut forged = Vec::new();
    let mut seed = 0x5eed;
    // Transport messages with A's real receiver index for B and random contents …
    let index = captured.iter().find(|p| p[0] == 4).unwrap()[4..8].to_vec();
    for len in [32, 60, 100, 148, 1400] {
        let mut p = noise(&mut seed, len);
        p[..4].copy_from_slice(&[4, 0, 0, 0]);
        p[4..8].copy_from_slice(&index);
        forged.push(p);
    }
    // … random handshake messages of every type …
    for (kind, len) in [(1u8, 148), (2, 92), (3, 64)] {
        let mut p = noise(&mut seed, len);
        p[..4].copy_from_slice(&[kind, 0, 0, 0]);
        forged.push(p);
    }
    // … every real datagram B sent A, replayed from the attacker's address …
    forged.extend(captured.iter().cloned());
    // … and a well-formed handshake initiation under a key A does not know.
    let mut stranger = Tunn::new(
        StaticSecret::from([66; 32]),
        PublicKey::from(lab.a.1.key.0),
        None,
        None,
        7,
        None,
    );
    let mut buf = vec![0u8; 256];
    let TunnResult::WriteToNetwork(init) = stranger.format_handshake_initiation(&mut buf, false)
    else {
        panic!("an initiation");
    };
    forged.push(init.to_vec());
    let count = forged.len() as u64;
    let mut node = Attacker {
        outbox: forged
            .into_iter()
            .map(|payload| Datagram {
                src: attacker,
                dst: a_public,
                payload,
            })
            .collect(),
        got: Vec::new(),
    };
    let pings_before = lab.a.1.delivered().len();
    lab.run_with(&mut node, attacker_host, Duration::from_secs(10));
    let now = lab.sim.now();

    assert!(node.outbox.is_empty(), "all sent");
    assert!(
        node.got.is_empty(),
        "the attacker got no answer: {:?}",
        node.got
    );
    let after = peer_of(&lab.a.1, now);
    assert_eq!(after.endpoint, Some(b_public), "the endpoint did not move");
    assert_eq!(after.connection_type, "direct");
    let drops = lab.a.1.table.drops;
    assert_eq!(drops.bad_datagram - drops_before.bad_datagram, count);
    assert_eq!(drops.bad_source, drops_before.bad_source);
    // A's tun got B's pings, each once, and nothing else.
    let seqs: Vec<u16> = pings_got(&lab.a.1).iter().map(|(s, _)| *s).collect();
    assert!(seqs.iter().copied().eq(1..=seqs.len() as u16), "{seqs:?}");
    assert_eq!(seqs.len(), pings_before + 10);
    // B never noticed.
    assert_eq!(peer_of(&lab.b.1, now).endpoint, Some(a_public));
}

#[test]
fn hopeless_pairs_stay_relayed_and_still_punch_every_thirty_seconds() {
    let mut lab = Lab::new(NatType::PortRestrictedCone, NatType::Symmetric);
    assert_eq!(lab.prediction(), Prediction::Relay);
    lab.bind();
    let introduced = lab.sim.now();
    lab.introduce(None);
    lab.ping_both();
    lab.run_for(Duration::from_secs(300));
    let now = lab.sim.now();
    for (name, m, public) in [
        ("A", &lab.a.1, lab.found[1].1.unwrap()),
        ("B", &lab.b.1, lab.found[0].1.unwrap()),
    ] {
        let peer = peer_of(m, now);
        assert_eq!(peer.connection_type, "relayed", "{name}");
        assert_eq!(peer.endpoint, None, "{name}: no punch got through");
        let punches = m.keepalives_to(public);
        let offsets: Vec<Duration> = punches.iter().map(|t| *t - introduced).collect();
        // The first once the session is up (on the relay), then every PUNCH_HOPELESS: ten
        // in five minutes, where a pair expected to punch through would send FAST_PUNCHES in
        // its first 15 s and one every PUNCH_SLOW after.
        let expected: Vec<Duration> = (0..10u32)
            .map(|k| PUNCH_FAST + k * PUNCH_HOPELESS)
            .collect();
        assert_eq!(offsets, expected, "{name}'s punches");
        let got = pings_got(m);
        assert!(
            got.len() >= 298 && got.iter().all(|(_, v)| *v == Via::Relay),
            "{name}"
        );
    }
}
