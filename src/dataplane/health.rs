//! Path and peer health, from probe replies (`wire::probe`). Pure: every method takes `now`.
//!
//! - A [`PathHealth`] is one way to reach a peer (its direct endpoint, or one relay). It sends
//!   probes on a schedule, matches replies, and keeps a smoothed RTT, jitter and the loss of
//!   the last [`LOSS_WINDOW`] probes. It is *down* once [`DOWN_PROBES`] probes in a row went
//!   unanswered for [`DOWN_AFTER`]; a path that was down is *usable* again only after it has
//!   answered for [`RETURN_AFTER`] (hysteresis: a flaky path does not take traffic back and
//!   forth).
//! - A [`PeerHealth`] (`peer_health.rs`) is the peer's state: connecting → connected ⇄ degraded → failed, from
//!   the replies on all its paths and the measurements of the path in use.
//!
//! Probe intervals: [`PROBE_FAST`] for the path carrying traffic and for any path with an
//! unanswered probe, [`PROBE_DOWN`] for a down path (to notice it come back),
//! [`PROBE_STANDBY`] for the other path while traffic flows, and [`PROBE_IDLE`] /
//! [`PROBE_IDLE_STANDBY`] when no traffic flows, so an idle member wakes up rarely.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use super::peer_health::{PeerHealth, PeerState, Transition};

/// Probe interval of the path in use while traffic flows, and of a suspect path.
pub const PROBE_FAST: Duration = Duration::from_millis(400);
/// Probe interval of a path that is down.
pub const PROBE_DOWN: Duration = Duration::from_secs(1);
/// Probe interval of the path not in use, while traffic flows.
pub const PROBE_STANDBY: Duration = Duration::from_secs(5);
/// Probe interval of the path in use when no traffic flows.
pub const PROBE_IDLE: Duration = Duration::from_secs(15);
/// Probe interval of the path not in use when no traffic flows.
pub const PROBE_IDLE_STANDBY: Duration = Duration::from_secs(60);
/// A path whose probes went unanswered this long (and at least [`DOWN_PROBES`] of them) is
/// down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1200);
/// Unanswered probes in a row before a path can be down.
pub const DOWN_PROBES: u32 = 4;
/// A probe unanswered this long counts as lost (a later reply is still an RTT sample).
pub const LOST_AFTER: Duration = Duration::from_secs(2);
/// A path that was down takes traffic again after answering for this long.
pub const RETURN_AFTER: Duration = Duration::from_secs(5);
/// Probes the loss figure is computed over.
pub const LOSS_WINDOW: u32 = 16;
/// Resolved probes needed before loss can make a peer degraded.
pub const LOSS_MIN_SAMPLES: u32 = 8;
/// A probe unanswered this long makes its path suspect: the next probe goes out then.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(1);
/// Unanswered probes remembered per path (older ones are counted lost).
const MAX_OUTSTANDING: usize = 8;

/// When a peer counts as degraded, failed and gone. Flags of `join` and `host`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Smoothed RTT of the path in use above this: degraded.
    pub degraded_rtt: Duration,
    /// Loss (a fraction of the last [`LOSS_WINDOW`] probes) at or above this: degraded.
    pub degraded_loss: f64,
    /// Every path down and no reply on any for this long: failed.
    pub failed_after: Duration,
    /// Failed for this long: removed from the data plane.
    pub cleanup_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            degraded_rtt: Duration::from_millis(200),
            degraded_loss: 0.25,
            failed_after: Duration::from_secs(10),
            cleanup_after: Duration::from_secs(300),
        }
    }
}

/// What a path is known to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// No probe answered yet.
    Unknown,
    /// Answering.
    Up,
    /// Stopped answering.
    Down,
}

impl PathState {
    /// `unknown`, `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            PathState::Unknown => "unknown",
            PathState::Up => "up",
            PathState::Down => "down",
        }
    }
}

/// Whether a path carries traffic, for its probe interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The path in use, with traffic flowing.
    Busy,
    /// The path in use, no traffic.
    Idle,
    /// Not in use, traffic flowing on the other.
    Standby,
    /// Not in use, no traffic.
    IdleStandby,
}

/// Measurements of one path, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathStats {
    /// Up, down or unknown.
    pub state: PathState,
    /// Smoothed round trip.
    pub rtt: Option<Duration>,
    /// Smoothed variation between consecutive round trips (RFC 3550 §6.4.1).
    pub jitter: Option<Duration>,
    /// Lost fraction of the last resolved probes, once there are any.
    pub loss: Option<f64>,
    /// Probes sent.
    pub probes_sent: u64,
    /// Replies matched.
    pub replies: u64,
}

/// One path's probes and measurements.
#[derive(Debug, Clone)]
pub struct PathHealth {
    state: PathState,
    outstanding: VecDeque<(u32, Instant)>,
    next_probe_at: Instant,
    unanswered: u32,
    first_unanswered_at: Option<Instant>,
    last_reply_at: Option<Instant>,
    last_sent_at: Option<Instant>,
    up_since: Option<Instant>,
    was_down: bool,
    srtt_us: Option<f64>,
    jitter_us: Option<f64>,
    last_rtt_us: Option<f64>,
    /// Bit i: the i-th most recent resolved probe was lost.
    history: u32,
    resolved: u32,
    probes_sent: u64,
    replies: u64,
}

impl PathHealth {
    /// A path nothing is known of; its first probe is due at once.
    pub fn new(now: Instant) -> PathHealth {
        PathHealth {
            state: PathState::Unknown,
            outstanding: VecDeque::new(),
            next_probe_at: now,
            unanswered: 0,
            first_unanswered_at: None,
            last_reply_at: None,
            last_sent_at: None,
            up_since: None,
            was_down: false,
            srtt_us: None,
            jitter_us: None,
            last_rtt_us: None,
            history: 0,
            resolved: 0,
            probes_sent: 0,
            replies: 0,
        }
    }

    /// The same path to a new address (a peer's endpoint changed): measurements start over,
    /// but the probe totals and the rate limit carry on, so a peer that keeps changing
    /// address cannot make us probe faster than [`PROBE_FAST`].
    pub fn renew(&self, now: Instant) -> PathHealth {
        let mut fresh = PathHealth::new(now);
        fresh.last_sent_at = self.last_sent_at;
        fresh.probes_sent = self.probes_sent;
        fresh.replies = self.replies;
        fresh.last_reply_at = self.last_reply_at;
        fresh.next_probe_at = fresh.earliest_probe(now);
        fresh
    }

    /// Up, down or unknown.
    pub fn state(&self) -> PathState {
        self.state
    }

    /// Whether traffic may take this path: up, and (if it was ever down) up for
    /// [`RETURN_AFTER`].
    pub fn usable(&self, now: Instant) -> bool {
        self.state == PathState::Up
            && (!self.was_down
                || self
                    .up_since
                    .is_some_and(|s| now.saturating_duration_since(s) >= RETURN_AFTER))
    }

    /// When the oldest probe unanswered since the last reply went out.
    pub fn first_unanswered_at(&self) -> Option<Instant> {
        self.first_unanswered_at
    }

    /// When a probe is due.
    pub fn next_probe_at(&self) -> Instant {
        self.next_probe_at
    }

    /// When a probe is due, if the path is suspect (a probe of it is unanswered): the data
    /// plane wakes up for it instead of waiting for an idle timer tick.
    pub fn urgent_probe_at(&self) -> Option<Instant> {
        (self.unanswered > 0).then_some(self.next_probe_at)
    }

    /// Makes a probe due now (the path just showed signs of life or of change), but never
    /// sooner than [`PROBE_FAST`] after the last one: a path is probed at most that often,
    /// whatever arrives on it.
    pub fn hurry(&mut self, now: Instant) {
        self.next_probe_at = self.next_probe_at.min(self.earliest_probe(now));
    }

    /// Now, or [`PROBE_FAST`] after the last probe if that is later.
    fn earliest_probe(&self, now: Instant) -> Instant {
        self.last_sent_at.map_or(now, |at| now.max(at + PROBE_FAST))
    }

    /// Makes the next probe due no later than `at` (traffic just started on the path).
    pub fn due_by(&mut self, at: Instant) {
        self.next_probe_at = self.next_probe_at.min(at);
    }

    /// Whether a probe is due.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_probe_at
    }

    /// Notes probe `seq` sent at `now` and schedules the next for a path in `role`.
    pub fn sent(&mut self, seq: u32, role: Role, now: Instant) {
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
            self.record(true);
        }
        self.outstanding.push_back((seq, now));
        self.last_sent_at = Some(now);
        self.probes_sent += 1;
        self.unanswered += 1;
        self.first_unanswered_at.get_or_insert(now);
        let interval = if self.unanswered > 1 || self.state == PathState::Unknown {
            // Suspect (or new): find out fast.
            match self.state {
                PathState::Down => PROBE_DOWN,
                _ => PROBE_FAST,
            }
        } else {
            match (self.state, role) {
                (PathState::Down, _) => PROBE_DOWN,
                (_, Role::Busy) => PROBE_FAST,
                (_, Role::Standby) => PROBE_STANDBY,
                (_, Role::Idle) => PROBE_IDLE,
                (_, Role::IdleStandby) => PROBE_IDLE_STANDBY,
            }
        };
        self.next_probe_at = now + interval;
    }

    /// A reply to probe `seq` arrived at `now` on this path. False when no probe of this
    /// path has that number (a stray or duplicate reply changes nothing).
    pub fn on_reply(&mut self, seq: u32, now: Instant) -> bool {
        let Some(i) = self.outstanding.iter().position(|&(s, _)| s == seq) else {
            return false;
        };
        let (_, sent_at) = self.outstanding.remove(i).unwrap_or((seq, now));
        if self.state == PathState::Down {
            // The outage is over: its lost probes say nothing about the path from now on.
            self.history = 0;
            self.resolved = 0;
            self.outstanding.clear();
        }
        let rtt = now.saturating_duration_since(sent_at);
        // A reply later than LOST_AFTER still measures the path, but the game lost that packet.
        self.record(rtt >= LOST_AFTER);
        self.sample(rtt);
        self.replies += 1;
        self.last_reply_at = Some(now);
        self.unanswered = 0;
        self.first_unanswered_at = None;
        // Probes older than this one will not be answered any more: lost.
        while self
            .outstanding
            .front()
            .is_some_and(|&(_, at)| at < sent_at)
        {
            self.outstanding.pop_front();
            self.record(true);
        }
        if self.state != PathState::Up {
            self.state = PathState::Up;
            self.up_since = Some(now);
        }
        // The next probe keeps its schedule, but a path that was suspect relaxes.
        true
    }

    fn sample(&mut self, rtt: Duration) {
        let us = rtt.as_secs_f64() * 1e6;
        self.srtt_us = Some(match self.srtt_us {
            None => us,
            Some(s) => s + (us - s) / 4.0,
        });
        if let Some(last) = self.last_rtt_us {
            let d = (us - last).abs();
            self.jitter_us = Some(match self.jitter_us {
                None => d,
                Some(j) => j + (d - j) / 16.0,
            });
        }
        self.last_rtt_us = Some(us);
    }

    fn record(&mut self, lost: bool) {
        self.history = (self.history << 1) | u32::from(lost);
        self.resolved = (self.resolved + 1).min(LOSS_WINDOW);
    }

    /// Counts probes unanswered for [`LOST_AFTER`] as lost and marks the path down when it
    /// stopped answering (or never answered). True when it just went down.
    pub fn poll(&mut self, now: Instant) -> bool {
        // A probe unanswered for SUSPECT_AFTER makes the path suspect: probe again soon,
        // however slow its schedule.
        if let Some(&(_, at)) = self.outstanding.back() {
            self.next_probe_at = self.next_probe_at.min(at + SUSPECT_AFTER);
        }
        while let Some(&(_, at)) = self.outstanding.front() {
            if now.saturating_duration_since(at) < LOST_AFTER {
                break;
            }
            self.outstanding.pop_front();
            self.record(true);
        }
        let silent = self.unanswered >= DOWN_PROBES
            && self
                .first_unanswered_at
                .is_some_and(|at| now.saturating_duration_since(at) >= DOWN_AFTER);
        if silent && self.state == PathState::Up {
            self.state = PathState::Down;
            self.was_down = true;
            self.up_since = None;
            return true;
        }
        if silent && self.state == PathState::Unknown {
            // Never answered: down as well, so it is probed at the slower down rate.
            self.state = PathState::Down;
            return true;
        }
        false
    }

    /// Lost fraction of the last resolved probes.
    pub fn loss(&self) -> Option<f64> {
        (self.resolved > 0).then(|| {
            let mask = if self.resolved >= 32 {
                u32::MAX
            } else {
                (1u32 << self.resolved) - 1
            };
            f64::from((self.history & mask).count_ones()) / f64::from(self.resolved)
        })
    }

    /// Measurements for status.
    pub fn stats(&self) -> PathStats {
        let us = |v: Option<f64>| v.map(|us| Duration::from_micros(us.round() as u64));
        PathStats {
            state: self.state,
            rtt: us(self.srtt_us),
            jitter: us(self.jitter_us),
            loss: self.loss(),
            probes_sent: self.probes_sent,
            replies: self.replies,
        }
    }

    /// When the last reply arrived.
    pub fn last_reply_at(&self) -> Option<Instant> {
        self.last_reply_at
    }

    /// Whether enough probes were resolved and at least `threshold` of them were lost.
    pub fn lossy(&self, threshold: f64) -> bool {
        self.resolved >= LOSS_MIN_SAMPLES && self.loss().is_some_and(|l| l >= threshold)
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
