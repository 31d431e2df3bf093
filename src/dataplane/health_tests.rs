use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A path probed on its schedule from `t0`, each probe answered after `rtt` (or lost when
/// `answer` says so), until `until`; returns the time it first went down, if it did.
struct Driver {
    path: PathHealth,
    seq: u32,
    now: Instant,
    in_flight: Vec<(u32, Instant)>,
}

impl Driver {
    fn new(t0: Instant) -> Driver {
        Driver {
            path: PathHealth::new(t0),
            seq: 0,
            now: t0,
            in_flight: Vec::new(),
        }
    }

    /// Runs in 10 ms steps until `until`; each probe is answered `rtt(sent)` later (None:
    /// lost). Returns when the path went down, if it did.
    fn run(
        &mut self,
        until: Instant,
        role: Role,
        rtt: impl Fn(Instant) -> Option<Duration>,
    ) -> Option<Instant> {
        let mut down_at = None;
        while self.now < until {
            self.now += ms(10);
            let now = self.now;
            let due: Vec<(u32, Instant)> = self
                .in_flight
                .iter()
                .copied()
                .filter(|&(_, at)| at <= now)
                .collect();
            self.in_flight.retain(|&(_, at)| at > now);
            for (seq, _) in due {
                self.path.on_reply(seq, now);
            }
            if self.path.poll(now) && down_at.is_none() {
                down_at = Some(now);
            }
            if self.path.due(now) {
                self.seq += 1;
                self.path.sent(self.seq, role, now);
                if let Some(r) = rtt(now) {
                    self.in_flight.push((self.seq, now + r));
                }
            }
        }
        down_at
    }
}

#[test]
fn measures_rtt_jitter_and_no_loss_on_a_good_path() {
    let t0 = Instant::now();
    let mut d = Driver::new(t0);
    d.run(t0 + Duration::from_secs(10), Role::Busy, |_| Some(ms(20)));
    let s = d.path.stats();
    assert_eq!(s.state, PathState::Up);
    let rtt = s.rtt.unwrap();
    assert!(rtt >= ms(19) && rtt <= ms(21), "{rtt:?}");
    assert!(s.jitter.unwrap() < ms(1), "{:?}", s.jitter);
    assert_eq!(s.loss, Some(0.0));
    // Busy: one probe every PROBE_FAST.
    let expected = (10_000 / PROBE_FAST.as_millis()) as u64;
    assert!(
        (expected - 1..=expected + 1).contains(&s.probes_sent),
        "{}",
        s.probes_sent
    );
    assert!(d.path.usable(d.now));
}

#[test]
fn idle_paths_are_probed_rarely() {
    let t0 = Instant::now();
    let mut d = Driver::new(t0);
    d.run(t0 + Duration::from_secs(300), Role::Idle, |_| Some(ms(5)));
    // One at once, then every PROBE_IDLE.
    assert_eq!(d.path.stats().probes_sent, 1 + 300 / PROBE_IDLE.as_secs());
    let mut s = Driver::new(t0);
    s.run(t0 + Duration::from_secs(300), Role::IdleStandby, |_| {
        Some(ms(5))
    });
    assert_eq!(
        s.path.stats().probes_sent,
        1 + 300 / PROBE_IDLE_STANDBY.as_secs()
    );
}

#[test]
fn a_busy_path_goes_down_within_two_seconds_of_its_last_answer() {
    let t0 = Instant::now();
    let cut = t0 + Duration::from_secs(10);
    let mut d = Driver::new(t0);
    let down = d
        .run(t0 + Duration::from_secs(20), Role::Busy, |sent| {
            (sent < cut).then_some(ms(20))
        })
        .expect("went down");
    // The first unanswered probe went out within PROBE_FAST of the cut; down DOWN_AFTER later.
    let after = down - cut;
    assert!(
        after >= DOWN_AFTER && after <= DOWN_AFTER + PROBE_FAST + ms(20),
        "{after:?}"
    );
    assert_eq!(d.path.state(), PathState::Down);
    assert!(!d.path.usable(d.now));
    // Down: probed every PROBE_DOWN to notice it come back.
    let sent = d.path.stats().probes_sent;
    d.run(d.now + Duration::from_secs(10), Role::Busy, |_| None);
    assert_eq!(d.path.stats().probes_sent - sent, 10);
}

#[test]
fn an_idle_path_that_stops_answering_is_suspected_and_goes_down_quickly() {
    let t0 = Instant::now();
    let cut = t0 + Duration::from_secs(31);
    let mut d = Driver::new(t0);
    let down = d
        .run(t0 + Duration::from_secs(80), Role::Idle, |sent| {
            (sent < cut).then_some(ms(5))
        })
        .expect("went down");
    // The probe at 45 s is the first unanswered; SUSPECT_AFTER later the fast probes start.
    let first_unanswered = t0 + PROBE_IDLE * 3;
    let after = down - first_unanswered;
    assert!(
        after >= DOWN_AFTER && after <= DOWN_AFTER + SUSPECT_AFTER + ms(50),
        "{after:?}"
    );
}

#[test]
fn a_path_that_was_down_takes_traffic_again_only_after_return_after() {
    let t0 = Instant::now();
    let cut = t0 + Duration::from_secs(5);
    let back = t0 + Duration::from_secs(10);
    let mut d = Driver::new(t0);
    d.run(back, Role::Busy, |sent| (sent < cut).then_some(ms(20)));
    assert_eq!(d.path.state(), PathState::Down);
    let mut up_at = None;
    let mut usable_at = None;
    while d.now < back + Duration::from_secs(20) {
        d.run(d.now + ms(10), Role::Busy, |_| Some(ms(20)));
        if up_at.is_none() && d.path.state() == PathState::Up {
            up_at = Some(d.now);
        }
        if usable_at.is_none() && d.path.usable(d.now) {
            usable_at = Some(d.now);
        }
    }
    let (up, usable) = (up_at.unwrap(), usable_at.unwrap());
    assert!(up - back <= PROBE_DOWN + ms(40), "{:?}", up - back);
    assert_eq!(usable - up, RETURN_AFTER);
}

#[test]
fn loss_counts_unanswered_probes_of_the_window() {
    let t0 = Instant::now();
    let mut d = Driver::new(t0);
    // Every fourth probe lost.
    let n = std::cell::Cell::new(0u32);
    d.run(t0 + Duration::from_secs(30), Role::Busy, |_| {
        n.set(n.get() + 1);
        (!n.get().is_multiple_of(4)).then_some(ms(10))
    });
    let loss = d.path.stats().loss.unwrap();
    assert!((loss - 0.25).abs() < 0.07, "{loss}");
    assert_eq!(
        d.path.state(),
        PathState::Up,
        "scattered loss is not an outage"
    );
}

#[test]
fn stray_and_duplicate_replies_change_nothing() {
    let t0 = Instant::now();
    let mut p = PathHealth::new(t0);
    p.sent(7, Role::Busy, t0);
    assert!(!p.on_reply(8, t0 + ms(5)), "never sent");
    assert_eq!(p.state(), PathState::Unknown);
    assert!(p.on_reply(7, t0 + ms(5)));
    assert!(!p.on_reply(7, t0 + ms(6)), "duplicate");
    assert_eq!(p.stats().replies, 1);
    assert_eq!(p.stats().rtt, Some(ms(5)));
}

fn answered_path(t0: Instant, rtt: Duration) -> PathHealth {
    let mut p = PathHealth::new(t0);
    p.sent(1, Role::Busy, t0);
    p.on_reply(1, t0 + rtt);
    p
}

#[test]
fn peer_goes_connected_degraded_failed_and_back() {
    let t = Thresholds::default();
    let t0 = Instant::now();
    let mut h = PeerHealth::new(t0);
    let mut path = PathHealth::new(t0);
    assert_eq!(h.update(&[&path], None, &t, t0), None);
    assert_eq!(h.state(), PeerState::Connecting);

    path.sent(1, Role::Busy, t0);
    path.on_reply(1, t0 + ms(10));
    let tr = h.update(&[&path], Some(&path), &t, t0 + ms(10)).unwrap();
    assert_eq!(
        (tr.from, tr.to),
        (PeerState::Connecting, PeerState::Connected)
    );

    // RTT jumps to 400 ms: the smoothed RTT (a quarter per sample) passes 200 ms at the
    // third sample: 10 → 107.5 → 180.6 → 235.5 ms.
    let mut now = t0 + ms(500);
    let mut degraded_after = None;
    let mut seq = 1;
    for n in 2..10 {
        seq = n;
        path.sent(seq, Role::Busy, now);
        now += ms(400);
        path.on_reply(seq, now);
        if let Some(tr) = h.update(&[&path], Some(&path), &t, now) {
            assert_eq!(tr.to, PeerState::Degraded);
            assert!(
                tr.reason.starts_with("RTT 235 ms > 200 ms"),
                "{}",
                tr.reason
            );
            degraded_after = Some(n - 1);
            break;
        }
        now += ms(100);
    }
    assert_eq!(degraded_after, Some(3));

    // Silence: the path goes down, and the peer is failed exactly failed_after after the
    // last reply.
    let last_reply = now;
    let mut at = now;
    let mut failed_at = None;
    while failed_at.is_none() && at < last_reply + Duration::from_secs(20) {
        at += ms(50);
        if path.due(at) {
            seq += 1;
            path.sent(seq, Role::Busy, at);
        }
        path.poll(at);
        if let Some(tr) = h.update(&[&path], Some(&path), &t, at) {
            assert_eq!(tr.to, PeerState::Failed, "{tr:?}");
            assert_eq!(tr.reason, "no reply on any path for 10.0 s");
            failed_at = Some(at);
        }
    }
    assert_eq!(path.state(), PathState::Down);
    assert_eq!(failed_at, Some(last_reply + t.failed_after));
    assert_eq!(h.state(), PeerState::Failed);
    let failed_at = h.since();
    assert!(!h.due_for_cleanup(&t, failed_at + t.cleanup_after - ms(1)));
    assert!(h.due_for_cleanup(&t, failed_at + t.cleanup_after));

    // A fast reply: connected again (not degraded: the smoothed RTT is fed a fresh sample).
    let fresh = answered_path(failed_at, ms(10));
    let tr = h
        .update(&[&fresh], Some(&fresh), &t, failed_at + ms(10))
        .unwrap();
    assert_eq!((tr.from, tr.to), (PeerState::Failed, PeerState::Connected));
    assert_eq!(tr.reason, "replies again");
}

#[test]
fn one_answering_path_keeps_a_peer_from_failing() {
    let t = Thresholds::default();
    let t0 = Instant::now();
    let mut h = PeerHealth::new(t0);
    let mut direct = answered_path(t0, ms(5));
    let relayed = answered_path(t0, ms(30));
    h.update(&[&direct, &relayed], Some(&direct), &t, t0 + ms(30));
    direct.sent(2, Role::Busy, t0 + ms(100));
    let later = t0 + Duration::from_secs(60);
    direct.poll(later);
    assert_eq!(
        h.update(&[&direct, &relayed], Some(&relayed), &t, later),
        None
    );
    assert_eq!(h.state(), PeerState::Connected);
}

#[test]
fn sustained_loss_degrades_and_recovery_needs_half_of_it() {
    let t = Thresholds::default();
    let t0 = Instant::now();
    let mut h = PeerHealth::new(t0);
    let mut p = PathHealth::new(t0);
    let mut now = t0;
    let mut seq = 0;
    // Every other probe lost: 50 % loss, degraded once LOSS_MIN_SAMPLES are resolved.
    let mut states = Vec::new();
    for i in 0..40 {
        seq += 1;
        p.sent(seq, Role::Busy, now);
        if i % 2 == 0 {
            p.on_reply(seq, now + ms(10));
        }
        now += ms(500);
        p.poll(now);
        if let Some(tr) = h.update(&[&p], Some(&p), &t, now) {
            states.push(tr.to);
        }
    }
    assert_eq!(states, vec![PeerState::Connected, PeerState::Degraded]);
    // No loss from here: recovers when the window's loss drops below 12.5 %.
    let mut recovered = None;
    for i in 0..40 {
        seq += 1;
        p.sent(seq, Role::Busy, now);
        p.on_reply(seq, now + ms(10));
        now += ms(500);
        if let Some(tr) = h.update(&[&p], Some(&p), &t, now) {
            assert_eq!(tr.to, PeerState::Connected);
            recovered = Some(i + 1);
            break;
        }
    }
    // The 16-probe window held 8 lost; the last of them is resolved (lost) by the first
    // clean reply, so the window is down to 1 lost (below 12.5 %) after 15 clean probes.
    assert_eq!(recovered, Some(15));
}
