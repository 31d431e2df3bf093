//! Cleaning up failed peers: removed `cleanup_after` after failing, and tried again every
//! [`REVIVE_CLEANED_EVERY`] (unlisted, for [`REVIVE_WINDOW`]), so two members that removed
//! each other during an outage find each other again. A child of `peers.rs`, so it shares
//! the table's fields.

use std::time::{Duration, Instant};

use super::super::health::PeerState;
use super::{Io, Key, PeerTable};

/// A cleaned-up peer is added back this often to try a handshake (the two sides of an
/// outage clean each other up, and neither would start one otherwise) …
pub const REVIVE_CLEANED_EVERY: Duration = Duration::from_secs(60);
/// … and goes again if no probe is answered within this long.
pub const REVIVE_WINDOW: Duration = Duration::from_secs(15);
impl PeerTable {
    /// Adds a cleaned-up peer back for [`REVIVE_WINDOW`] and starts a handshake with it.
    pub(super) fn revive(&mut self, key: Key, now: Instant, io: &mut impl Io) {
        let Some((config, _)) = self.cleaned.remove(&key) else {
            return;
        };
        log::debug!("peer {}: trying again", config.name);
        self.add(config, now, io);
        if let Some(peer) = self.by_key.get(&key).and_then(|i| self.peers.get_mut(i)) {
            peer.revived_at = Some(now);
        }
    }

    /// Adds back the cleaned-up peers whose retry is due.
    pub(super) fn retry_cleaned(&mut self, now: Instant, io: &mut impl Io) {
        let retry: Vec<Key> = self
            .cleaned
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in retry {
            self.revive(key, now, io);
        }
    }

    /// Removes peers failed for `cleanup_after`, and peers added back that did not answer
    /// within [`REVIVE_WINDOW`].
    pub(super) fn clean_up(&mut self, now: Instant) {
        let due: Vec<(u32, bool)> = self
            .peers
            .iter()
            .filter_map(|(i, p)| {
                let unanswered_revival = p.revived_at.is_some_and(|at| {
                    p.health().state() == PeerState::Connecting
                        && now.saturating_duration_since(at) >= REVIVE_WINDOW
                });
                let failed = p.health().due_for_cleanup(&self.thresholds, now);
                (failed || unanswered_revival).then_some((*i, failed))
            })
            .collect();
        for (index, failed) in due {
            let Some(peer) = self.peers.remove(&index) else {
                continue;
            };
            self.by_ip.remove(&peer.config.virtual_ip);
            self.by_key.remove(&peer.config.public_key);
            if failed {
                log::info!(
                    "peer {} ({}) removed: failed for {} s",
                    peer.config.name,
                    peer.config.virtual_ip,
                    self.thresholds.cleanup_after.as_secs()
                );
            }
            self.cleaned.insert(
                peer.config.public_key,
                (peer.config, now + REVIVE_CLEANED_EVERY),
            );
        }
    }
}
