//! Health and failover on the simulated network, with the virtual clock: two members ping
//! each other every 100 ms while faults are injected (a blackholed direct path, a dead relay,
//! a NAT that forgets its mappings, 300 ms of extra delay, a member that vanishes). What is
//! checked is what a user sees: when pings arrive again and by which path, and the peer's
//! state and path in `status`, at the times the thresholds say.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::members::{MemberNode, RelayNode, Via, TICK};
use super::two_members::{peer_of, relay, Lab};
use super::{random_loss, Datagram, HostId};
use crate::dataplane::health::{
    PeerState, Thresholds, DOWN_AFTER, PROBE_DOWN, PROBE_FAST, RETURN_AFTER,
};
use crate::nat::NatType;

const A_PUBLIC: &str = "203.0.113.1";
const B_PUBLIC: &str = "203.0.113.2";
const PING_EVERY: Duration = Duration::from_millis(100);
const STEP: Duration = Duration::from_millis(10);

/// Faults the loss and delay models read.
#[derive(Default)]
struct Faults {
    /// Drop everything between the two members' public addresses.
    block_direct: Cell<bool>,
    /// Drop everything to or from these addresses (dead hosts).
    dead: RefCell<Vec<IpAddr>>,
    /// Extra one-way delay between the two members' public addresses.
    direct_delay: Cell<Duration>,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn is_direct(d: &Datagram) -> bool {
    let pair = [ip(A_PUBLIC), ip(B_PUBLIC)];
    pair.contains(&d.src.ip()) && pair.contains(&d.dst.ip())
}

/// Installs `faults` as the lab's loss and delay models, with `random` loss on top.
fn install(lab: &mut Lab, faults: &Rc<Faults>, random_percent: u64) {
    let f = faults.clone();
    let mut random = random_loss(random_percent, 7);
    lab.sim.set_loss(move |d| {
        let dead = f.dead.borrow();
        (f.block_direct.get() && is_direct(d))
            || dead.contains(&d.src.ip())
            || dead.contains(&d.dst.ip())
            || (random_percent > 0 && random(d))
    });
    let f = faults.clone();
    lab.sim.set_delay(move |d| {
        if is_direct(d) {
            f.direct_delay.get()
        } else {
            Duration::ZERO
        }
    });
}

/// Two members behind NATs of types `a` and `b`, bound at the relay, introduced, pinging
/// each other every 100 ms, run until both see the peer connected on `expected`.
fn connected(a: NatType, b: NatType, expected: &str) -> (Lab, Rc<Faults>) {
    let mut lab = Lab::new(a, b);
    let faults = Rc::new(Faults::default());
    install(&mut lab, &faults, 0);
    lab.bind();
    lab.introduce(None);
    let now = lab.sim.now();
    let (va, vb) = (lab.a.1.vip, lab.b.1.vip);
    lab.a.1.ping_every(vb, PING_EVERY, now);
    lab.b.1.ping_every(va, PING_EVERY, now);
    lab.run_for(Duration::from_secs(20));
    for m in [&lab.a.1, &lab.b.1] {
        let peer = peer_of(m, lab.sim.now());
        assert_eq!(peer.state, PeerState::Connected);
        assert_eq!(peer.connection_type, expected);
    }
    (lab, faults)
}

/// Steps until `done` holds for the lab or `limit` passes; the time it took.
fn until(lab: &mut Lab, limit: Duration, mut done: impl FnMut(&Lab) -> bool) -> Option<Duration> {
    let start = lab.sim.now();
    while lab.sim.now() < start + limit {
        lab.run_for(STEP);
        if done(lab) {
            return Some(lab.sim.now() - start);
        }
    }
    None
}

/// Peers `m` lists in status.
fn listed(m: &MemberNode, lab: &Lab) -> usize {
    m.table.stats(lab.sim.now()).len()
}

/// Pings `m` got after `t`, by path.
fn got_since(m: &MemberNode, t: Instant) -> Vec<(Instant, Via)> {
    m.delivered()
        .iter()
        .filter(|d| d.at > t)
        .map(|d| (d.at, d.via))
        .collect()
}

/// How long after `t` pings reached `m` again over `via`.
fn resumed_via(m: &MemberNode, t: Instant, via: Via) -> Option<Duration> {
    got_since(m, t)
        .into_iter()
        .find(|(_, v)| *v == via)
        .map(|(at, _)| at - t)
}

#[test]
fn direct_path_blackholed_fails_over_to_the_relay_and_comes_back() {
    let (mut lab, faults) = connected(NatType::FullCone, NatType::FullCone, "direct");
    let blocked = lab.sim.now();
    faults.block_direct.set(true);
    lab.run_for(Duration::from_secs(10));
    for (name, m) in [("A", &lab.a.1), ("B", &lab.b.1)] {
        let after = resumed_via(m, blocked, Via::Relay).expect("pings came through the relay");
        println!(
            "{name}: pings via the relay {:.2} s after the block",
            after.as_secs_f64()
        );
        // The first unanswered probe goes out within PROBE_FAST; the path is down
        // DOWN_AFTER later (on a tick), and the next ping takes the relay.
        assert!(
            after <= PROBE_FAST + DOWN_AFTER + TICK + PING_EVERY + Duration::from_millis(100),
            "{name}: {after:?}"
        );
        assert!(after <= Duration::from_secs(3), "target: {after:?}");
        let peer = peer_of(m, lab.sim.now());
        assert_eq!(peer.connection_type, "relayed");
        assert_eq!(peer.state, PeerState::Connected, "the relay answers");
        assert_eq!(peer.relay, Some(relay()));
    }
    // Unblocked: the down path answers its next probe (every PROBE_DOWN) and takes the
    // traffic back RETURN_AFTER later.
    let unblocked = lab.sim.now();
    faults.block_direct.set(false);
    let back = until(&mut lab, Duration::from_secs(30), |lab| {
        [&lab.a.1, &lab.b.1]
            .iter()
            .all(|m| peer_of(m, lab.sim.now()).connection_type == "direct")
    })
    .expect("back to direct");
    println!(
        "both direct again {:.2} s after the unblock",
        back.as_secs_f64()
    );
    assert!(back >= RETURN_AFTER, "hysteresis: {back:?}");
    assert!(
        back <= RETURN_AFTER + PROBE_DOWN + TICK + Duration::from_millis(100),
        "{back:?}"
    );
    lab.run_for(Duration::from_secs(2));
    for m in [&lab.a.1, &lab.b.1] {
        let pings = got_since(m, lab.sim.now() - Duration::from_secs(1));
        assert!(pings.len() >= 9 && pings.iter().all(|(_, v)| *v == Via::Direct));
        assert_eq!(peer_of(m, lab.sim.now()).path_switches, 2);
    }
    let _ = unblocked;
}

#[test]
fn a_dead_relay_is_replaced_by_the_other_relay() {
    // Symmetric NATs: relayed only. Both are bound at two relays and meet at the first.
    let (mut lab, faults, mut backup, host) = relayed_pair_with_two_relays(Thresholds::default());
    let second: SocketAddr = SECOND_RELAY.parse().unwrap();
    let killed = lab.sim.now();
    faults.dead.borrow_mut().push(relay().ip());
    lab.run_with(&mut backup, host, Duration::from_secs(10));
    for (name, m) in [("A", &lab.a.1), ("B", &lab.b.1)] {
        // From the kill (pings in flight may still land), the end of the first gap.
        let times: Vec<Instant> = std::iter::once(killed)
            .chain(got_since(m, killed).into_iter().map(|(at, _)| at))
            .collect();
        let gap_end = times
            .windows(2)
            .find(|w| w[1] - w[0] > Duration::from_millis(300))
            .map(|w| w[1] - killed)
            .expect("pings stopped, then came back");
        println!(
            "{name}: pings again {:.2} s after the relay died",
            gap_end.as_secs_f64()
        );
        assert!(gap_end <= Duration::from_secs(5), "{name}: {gap_end:?}");
        let peer = peer_of(m, lab.sim.now());
        assert_eq!(
            (peer.connection_type, peer.relay),
            ("relayed", Some(second))
        );
        assert_eq!(peer.state, PeerState::Connected);
    }
}

#[test]
fn peers_follow_a_nat_that_forgets_its_mappings() {
    let (mut lab, faults) = connected(NatType::FullCone, NatType::FullCone, "direct");
    let _ = faults;
    let old = peer_of(&lab.b.1, lab.sim.now()).endpoint.unwrap();
    let flushed = lab.sim.now();
    lab.sim.flush_nat_of(lab.a.0);
    let followed = until(&mut lab, Duration::from_secs(10), |lab| {
        let peer = peer_of(&lab.b.1, lab.sim.now());
        peer.endpoint != Some(old) && peer.connection_type == "direct"
    })
    .expect("B follows A's new mapping");
    println!(
        "B uses A's new mapping {:.2} s after the flush",
        followed.as_secs_f64()
    );
    assert!(followed <= Duration::from_secs(5), "{followed:?}");
    lab.run_for(Duration::from_secs(2));
    let pings = got_since(&lab.b.1, flushed);
    assert!(pings
        .windows(2)
        .all(|w| w[1].0 - w[0].0 <= Duration::from_millis(300)));
}

#[test]
fn delay_degrades_and_recovers_and_a_vanished_member_fails_then_goes() {
    let (mut lab, faults) = connected(NatType::FullCone, NatType::FullCone, "direct");
    let t = Thresholds::default();
    let state = |lab: &Lab| peer_of(&lab.a.1, lab.sim.now()).state;
    // 300 ms more each way on the direct path: the smoothed RTT passes 200 ms at the second
    // slow reply (40 → 190 → 302 ms); probes go every PROBE_FAST, replies take 640 ms.
    faults.direct_delay.set(Duration::from_millis(300));
    let degraded = until(&mut lab, Duration::from_secs(10), |l| {
        state(l) == PeerState::Degraded
    })
    .expect("degraded");
    println!("degraded {:.2} s after +300 ms", degraded.as_secs_f64());
    let rtt = Duration::from_millis(640);
    assert!(degraded >= PROBE_FAST + rtt, "{degraded:?}");
    assert!(degraded <= 2 * PROBE_FAST + rtt + TICK, "{degraded:?}");
    let peer = peer_of(&lab.a.1, lab.sim.now());
    assert_eq!(
        peer.connection_type, "direct",
        "slow is not dead: no failover"
    );
    faults.direct_delay.set(Duration::ZERO);
    let recovered = until(&mut lab, Duration::from_secs(10), |l| {
        state(l) == PeerState::Connected
    })
    .expect("connected again");
    println!(
        "connected {:.2} s after the delay went",
        recovered.as_secs_f64()
    );
    // The smoothed RTT (about 300 ms at the switch) falls a quarter of the way to 40 ms per
    // fast reply, below 180 ms after a few; replies of slow probes still in flight slow it.
    assert!(recovered >= PROBE_FAST, "{recovered:?}");
    assert!(recovered <= 6 * PROBE_FAST + rtt + TICK, "{recovered:?}");

    // B vanishes (its host and NAT stop answering): failed failed_after after the last
    // reply, removed cleanup_after after that.
    lab.run_for(Duration::from_secs(5));
    let gone = lab.sim.now();
    faults.dead.borrow_mut().push(ip(B_PUBLIC));
    let failed = until(&mut lab, Duration::from_secs(20), |l| {
        state(l) == PeerState::Failed
    })
    .expect("failed");
    println!("failed {:.2} s after B vanished", failed.as_secs_f64());
    assert!(failed >= t.failed_after - PROBE_FAST, "{failed:?}");
    assert!(failed <= t.failed_after + TICK, "{failed:?}");
    let failed_at = lab.sim.now();
    assert_eq!(peer_of(&lab.a.1, failed_at).connection_type, "relayed");
    lab.run_for(t.cleanup_after - TICK);
    assert_eq!(
        lab.a.1.table.len(),
        1,
        "still there just before cleanup_after"
    );
    lab.run_for(2 * TICK);
    assert_eq!(lab.a.1.table.len(), 0, "removed after cleanup_after");
    let _ = gone;
}

#[test]
fn two_similar_paths_do_not_flap_over_an_hour() {
    // Direct and relayed paths of about the same RTT, 1 % random loss on every datagram:
    // traffic stays on the direct path, and the peer stays connected.
    let (mut lab, faults) = connected(NatType::FullCone, NatType::FullCone, "direct");
    install(&mut lab, &faults, 1);
    let start_switches = peer_of(&lab.a.1, lab.sim.now()).path_switches;
    let mut states = Vec::new();
    for _ in 0..720 {
        lab.run_for(Duration::from_secs(5));
        let peer = peer_of(&lab.a.1, lab.sim.now());
        states.push(peer.state);
        assert_eq!(peer.connection_type, "direct");
    }
    let peer = peer_of(&lab.a.1, lab.sim.now());
    assert_eq!(
        peer.path_switches, start_switches,
        "no path switch in an hour"
    );
    assert!(
        states.iter().all(|s| *s == PeerState::Connected),
        "{:?}",
        states
            .iter()
            .filter(|s| **s != PeerState::Connected)
            .count()
    );
    let loss = peer.path_in_use.and_then(|p| p.loss).unwrap();
    assert!(loss < 0.25, "{loss}");
}

/// Lab with two relays both members are bound at (they meet at the first), relayed only
/// (symmetric NATs), pinging; `thresholds` on both.
fn relayed_pair_with_two_relays(thresholds: Thresholds) -> (Lab, Rc<Faults>, RelayNode, HostId) {
    let mut lab = Lab::new(NatType::Symmetric, NatType::Symmetric);
    lab.a.1.table.set_thresholds(thresholds);
    lab.b.1.table.set_thresholds(thresholds);
    let faults = Rc::new(Faults::default());
    install(&mut lab, &faults, 0);
    let second: SocketAddr = SECOND_RELAY.parse().unwrap();
    let host = lab.sim.add_public_host(&[&second.ip().to_string()]);
    let mut backup = RelayNode::new(second, lab.desk, lab.sim.now());
    let now = lab.sim.now();
    lab.a.1.set_relays(&[relay(), second], now);
    lab.b.1.set_relays(&[relay(), second], now);
    lab.run_with(&mut backup, host, Duration::from_secs(1));
    assert!(lab.a.1.is_bound_at(second) && lab.b.1.is_bound_at(second));
    lab.introduce(None);
    let now = lab.sim.now();
    let (va, vb) = (lab.a.1.vip, lab.b.1.vip);
    lab.a.1.ping_every(vb, PING_EVERY, now);
    lab.b.1.ping_every(va, PING_EVERY, now);
    lab.run_with(&mut backup, host, Duration::from_secs(20));
    for m in [&lab.a.1, &lab.b.1] {
        let peer = peer_of(m, lab.sim.now());
        assert_eq!(
            (peer.connection_type, peer.relay),
            ("relayed", Some(relay()))
        );
    }
    (lab, faults, backup, host)
}

const SECOND_RELAY: &str = "192.0.2.9:3478";

#[test]
fn a_vanished_relayed_peer_fails_after_trying_every_relay_and_is_removed() {
    let t = Thresholds {
        cleanup_after: Duration::from_secs(30),
        ..Thresholds::default()
    };
    let (mut lab, faults, mut backup, host) = relayed_pair_with_two_relays(t);
    faults.dead.borrow_mut().push(ip(B_PUBLIC));
    let mut failed_after = None;
    let start = lab.sim.now();
    while lab.sim.now() < start + Duration::from_secs(20) && failed_after.is_none() {
        lab.run_with(&mut backup, host, STEP);
        let peer = peer_of(&lab.a.1, lab.sim.now());
        assert_ne!(
            peer.state,
            PeerState::Connecting,
            "a relay switch is not a new peer"
        );
        if peer.state == PeerState::Failed {
            failed_after = Some(lab.sim.now() - start);
        }
    }
    let failed_after = failed_after.expect("failed");
    println!(
        "relayed peer failed {:.2} s after it vanished",
        failed_after.as_secs_f64()
    );
    assert!(failed_after <= t.failed_after + TICK, "{failed_after:?}");
    let peer = peer_of(&lab.a.1, lab.sim.now());
    let second: SocketAddr = SECOND_RELAY.parse().unwrap();
    assert_eq!(peer.relay, Some(second), "the other relay was tried");
    lab.run_with(&mut backup, host, t.cleanup_after + TICK);
    assert_eq!(
        lab.a.1.table.len(),
        0,
        "removed cleanup_after after failing"
    );
}

#[test]
fn two_members_that_cleaned_each_other_up_reconnect_when_the_network_heals() {
    let t = Thresholds {
        cleanup_after: Duration::from_secs(30),
        ..Thresholds::default()
    };
    let (mut lab, faults, mut backup, host) = relayed_pair_with_two_relays(t);
    // Both relays die: each side fails the other, then removes it.
    let second: SocketAddr = SECOND_RELAY.parse().unwrap();
    faults.dead.borrow_mut().extend([relay().ip(), second.ip()]);
    lab.run_with(&mut backup, host, Duration::from_secs(200));
    let both = (listed(&lab.a.1, &lab), listed(&lab.b.1, &lab));
    assert_eq!(both, (0, 0), "both cleaned up");
    // The relays come back (bindings are kept alive by the members' relay clients).
    faults.dead.borrow_mut().clear();
    let healed = lab.sim.now();
    let mut back_after = None;
    while lab.sim.now() < healed + Duration::from_secs(120) && back_after.is_none() {
        lab.run_with(&mut backup, host, Duration::from_millis(100));
        let now = lab.sim.now();
        let both = [&lab.a.1, &lab.b.1].iter().all(|m| {
            m.table
                .stats(now)
                .first()
                .is_some_and(|p| p.state == PeerState::Connected)
        });
        if both {
            back_after = Some(now - healed);
        }
    }
    let back_after = back_after.expect("reconnected");
    println!(
        "reconnected {:.1} s after the network healed",
        back_after.as_secs_f64()
    );
    assert!(
        back_after <= crate::dataplane::peers::REVIVE_CLEANED_EVERY + Duration::from_secs(20),
        "{back_after:?}"
    );
}
