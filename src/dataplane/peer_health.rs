//! A peer's state machine: connecting → connected ⇄ degraded → failed, from the replies on
//! all its paths ([`PathHealth`]) and the measurements of the path in use. Pure: every
//! method takes `now`.

use std::time::Instant;

use super::health::{PathHealth, PathState, Thresholds};

/// A peer's state, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No probe answered yet.
    Connecting,
    /// Answering, within the thresholds.
    Connected,
    /// Answering, but slow or lossy on the path in use.
    Degraded,
    /// Every path down, and no reply on any for [`Thresholds::failed_after`].
    Failed,
}

impl PeerState {
    /// `connecting`, `connected`, `degraded` or `failed`.
    pub fn name(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
            PeerState::Degraded => "degraded",
            PeerState::Failed => "failed",
        }
    }
}

/// One change of a peer's state, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Before.
    pub from: PeerState,
    /// After.
    pub to: PeerState,
    /// Why, as a person reads it.
    pub reason: String,
}

/// A peer's state machine.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    state: PeerState,
    since: Instant,
    /// The latest reply on any path, kept when a path is replaced (another relay).
    last_reply_at: Option<Instant>,
}

impl PeerHealth {
    /// A peer added at `now`.
    pub fn new(now: Instant) -> PeerHealth {
        PeerHealth {
            state: PeerState::Connecting,
            since: now,
            last_reply_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Whether the peer has been failed for `t.cleanup_after` and should be removed.
    pub fn due_for_cleanup(&self, t: &Thresholds, now: Instant) -> bool {
        self.state == PeerState::Failed
            && now.saturating_duration_since(self.since) >= t.cleanup_after
    }

    /// Moves the state on from the peer's paths: `paths` are all of them, `in_use` the one
    /// traffic takes (if any has answered). Returns the transition, if one happened.
    pub fn update(
        &mut self,
        paths: &[&PathHealth],
        in_use: Option<&PathHealth>,
        t: &Thresholds,
        now: Instant,
    ) -> Option<Transition> {
        for p in paths {
            self.last_reply_at = self.last_reply_at.max(p.last_reply_at());
        }
        let answered = self.last_reply_at.is_some();
        let silent_for = all_down(paths)
            .then_some(self.last_reply_at)
            .flatten()
            .map(|at| now.saturating_duration_since(at));
        let (next, reason) = if !answered {
            (PeerState::Connecting, String::new())
        } else if let Some(d) = silent_for.filter(|d| *d >= t.failed_after) {
            (
                PeerState::Failed,
                format!("no reply on any path for {:.1} s", d.as_secs_f64()),
            )
        } else if let Some(why) = in_use.and_then(|p| self.degraded_because(p, t)) {
            (PeerState::Degraded, why)
        } else {
            let why = match self.state {
                PeerState::Failed => "replies again".to_string(),
                PeerState::Degraded => in_use
                    .map(|p| recovered_because(p, t))
                    .unwrap_or_else(|| "replies again".into()),
                _ => "probe answered".to_string(),
            };
            (PeerState::Connected, why)
        };
        if next == self.state {
            return None;
        }
        let from = self.state;
        self.state = next;
        self.since = now;
        Some(Transition {
            from,
            to: next,
            reason,
        })
    }

    /// Why the path in use makes the peer degraded, if it does. A degraded peer recovers
    /// only below 90 % of the RTT threshold and half the loss threshold (hysteresis).
    fn degraded_because(&self, path: &PathHealth, t: &Thresholds) -> Option<String> {
        let stats = path.stats();
        let (rtt_limit, loss_limit) = if self.state == PeerState::Degraded {
            (t.degraded_rtt.mul_f64(0.9), t.degraded_loss / 2.0)
        } else {
            (t.degraded_rtt, t.degraded_loss)
        };
        if let Some(rtt) = stats.rtt.filter(|r| *r > rtt_limit) {
            return Some(format!(
                "RTT {:.0} ms > {:.0} ms",
                rtt.as_secs_f64() * 1e3,
                rtt_limit.as_secs_f64() * 1e3
            ));
        }
        if path.lossy(loss_limit) {
            return Some(format!(
                "loss {:.0} % >= {:.0} %",
                stats.loss.unwrap_or(0.0) * 100.0,
                loss_limit * 100.0
            ));
        }
        None
    }
}

/// Whether every path is down (a path not probed yet may answer: not down). No path at all
/// (no endpoint, no relay bound any more) counts as down.
fn all_down(paths: &[&PathHealth]) -> bool {
    paths.iter().all(|p| p.state() == PathState::Down)
}

fn recovered_because(path: &PathHealth, t: &Thresholds) -> String {
    let s = path.stats();
    format!(
        "RTT {:.0} ms, loss {:.0} % (limits {:.0} ms, {:.0} %)",
        s.rtt.unwrap_or_default().as_secs_f64() * 1e3,
        s.loss.unwrap_or(0.0) * 100.0,
        t.degraded_rtt.as_secs_f64() * 1e3,
        t.degraded_loss * 100.0
    )
}
