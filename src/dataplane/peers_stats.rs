//! What `status` and the metrics see of each peer: a snapshot taken by the data plane
//! thread. A child of `peers.rs`, so it reads the table's fields.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::broadcast::PeerBroadcast;
use super::super::health::{PathStats, PeerState};
use super::super::peer::session_is_up;
use super::{PeerConfig, PeerTable};

/// A snapshot of one peer for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The peer's configuration.
    pub config: PeerConfig,
    /// Endpoint learned from authenticated traffic, if any.
    pub endpoint: Option<SocketAddr>,
    /// `direct`, `relayed` or `connecting`.
    pub connection_type: &'static str,
    /// The relay we reach it through (one we are bound at), if any.
    pub relay: Option<SocketAddr>,
    /// Connecting, connected, degraded or failed.
    pub state: PeerState,
    /// How long it has been in that state.
    pub state_for: Duration,
    /// The direct path (to `endpoint`), once there is an endpoint.
    pub direct_path: Option<PathStats>,
    /// The relayed path (through `relay`), once there is a relay.
    pub relayed_path: Option<PathStats>,
    /// The path traffic takes: `direct_path` or `relayed_path`, if it has answered.
    pub path_in_use: Option<PathStats>,
    /// Times traffic moved from one path to another.
    pub path_switches: u64,
    /// Bytes of WireGuard datagrams sent through relays.
    pub relayed_tx_bytes: u64,
    /// Bytes of WireGuard datagrams received through relays.
    pub relayed_rx_bytes: u64,
    /// How long after it was added the direct path first worked.
    pub time_to_direct: Option<Duration>,
    /// Time since the last completed handshake.
    pub since_handshake: Option<Duration>,
    /// Bytes received through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent through the tunnel.
    pub tx_bytes: u64,
    /// Round-trip time of the last handshake, in milliseconds.
    pub handshake_rtt_ms: Option<u32>,
    /// Broadcast and multicast packets exchanged with this peer.
    pub broadcast: PeerBroadcast,
}

impl PeerStats {
    /// Whether a session is up (a handshake completed recently).
    pub fn is_connected(&self) -> bool {
        session_is_up(self.since_handshake)
    }
}

impl PeerTable {
    /// Snapshots every peer at `now`, ordered by virtual IP. A cleaned-up peer added back to
    /// try a handshake is not listed until it answers.
    pub fn stats(&self, now: Instant) -> Vec<PeerStats> {
        let mut out: Vec<PeerStats> = self
            .peers
            .values()
            .filter(|p| p.revived_at.is_none() || p.health().state() != PeerState::Connecting)
            .map(|p| {
                let (since, tx, rx, _loss, rtt) = p.tunn.stats();
                let connected = session_is_up(since);
                PeerStats {
                    config: p.config.clone(),
                    endpoint: p.direct,
                    connection_type: p.connection_type(connected, now),
                    relay: p.relay,
                    state: p.health().state(),
                    state_for: now.saturating_duration_since(p.health().since()),
                    direct_path: p.direct_health().map(|h| h.stats()),
                    relayed_path: p.relayed_health().map(|h| h.stats()),
                    path_in_use: p
                        .path_in_use(now)
                        .map(|h| h.stats())
                        .filter(|s| s.replies > 0),
                    path_switches: p.path_switches,
                    relayed_tx_bytes: p.relayed_tx_bytes,
                    relayed_rx_bytes: p.relayed_rx_bytes,
                    time_to_direct: p.time_to_direct,
                    since_handshake: since,
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                    handshake_rtt_ms: rtt,
                    broadcast: p.broadcast,
                }
            })
            .collect();
        out.sort_by_key(|s| s.config.virtual_ip);
        out
    }
}
