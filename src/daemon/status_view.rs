//! The local API's view of a running member: turns a data plane snapshot into the status
//! document (`status`, `status --json`).

use std::time::Duration;

use super::local_api;
use crate::dataplane::{self, health::PathStats, peers::PeerStats, DataplaneStatus};
use crate::status::{
    PartyStatus, PathStatus, PeerBroadcastStatus, PeerStatus, RelayStatus, SelfStatus, Status,
};

/// Answers the local API.
pub struct ApiHandler {
    /// Asked for every `status`.
    pub dataplane: dataplane::Handle,
    /// Starts leaving.
    pub leave: Box<dyn Fn() + Send>,
    /// The party (fixed for the member's life).
    pub party: PartyStatus,
    /// This member's fixed fields; the rest are filled from each snapshot.
    pub self_: SelfStatus,
}

/// A name a serde enum serializes to (`snake_case`), for the status document.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .ok()
        .and_then(|json| serde_json::from_str::<String>(&json).ok())
        .unwrap_or_else(|| "unknown".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn path_status(kind: &str, address: String, stats: PathStats, in_use: bool) -> PathStatus {
    PathStatus {
        kind: kind.into(),
        address,
        state: stats.state.name().into(),
        in_use,
        rtt_ms: stats.rtt.map(ms),
        jitter_ms: stats.jitter.map(ms),
        loss_percent: stats.loss.map(|l| l * 100.0),
        probes_sent: stats.probes_sent,
        replies: stats.replies,
    }
}

fn peer_status(p: PeerStats) -> PeerStatus {
    let in_use = p.path_in_use;
    let mut paths = Vec::new();
    if let (Some(endpoint), Some(stats)) = (p.endpoint, p.direct_path) {
        let used = p.connection_type == "direct";
        paths.push(path_status("direct", endpoint.to_string(), stats, used));
    }
    if let (Some(relay), Some(stats)) = (p.relay, p.relayed_path) {
        let used = p.connection_type == "relayed";
        paths.push(path_status("relayed", relay.to_string(), stats, used));
    }
    PeerStatus {
        id: p.config.id.clone(),
        name: p.config.name.clone(),
        public_key: p.config.public_key.to_string(),
        virtual_ip: p.config.virtual_ip,
        endpoint: p.endpoint.map(|e| e.to_string()),
        state: p.state.name().into(),
        connection_type: p.connection_type.into(),
        latency_ms: in_use
            .and_then(|s| s.rtt)
            .map(ms)
            .or(p.handshake_rtt_ms.map(f64::from)),
        rx_bytes: p.rx_bytes,
        tx_bytes: p.tx_bytes,
        last_handshake_s: p.since_handshake.map(|d| d.as_secs()),
        broadcast: PeerBroadcastStatus {
            sent: p.broadcast.sent,
            received: p.broadcast.received,
            dropped: p.broadcast.dropped,
        },
        relay: p.relay.map(|r| r.to_string()),
        prediction: serde_name(&p.config.prediction),
        time_to_direct_s: p.time_to_direct.map(|d| d.as_secs_f64()),
        state_for_s: p.state_for.as_secs_f64(),
        rtt_ms: in_use.and_then(|s| s.rtt).map(ms),
        jitter_ms: in_use.and_then(|s| s.jitter).map(ms),
        loss_percent: in_use.and_then(|s| s.loss).map(|l| l * 100.0),
        path_switches: p.path_switches,
        relayed_rx_bytes: p.relayed_rx_bytes,
        relayed_tx_bytes: p.relayed_tx_bytes,
        paths,
    }
}

impl ApiHandler {
    fn view(&self, snapshot: DataplaneStatus) -> Status {
        let peers: Vec<PeerStatus> = snapshot.peers.into_iter().map(peer_status).collect();
        let mut self_ = self.self_.clone();
        self_.broadcast.sent = snapshot.broadcast.sent;
        self_.broadcast.dropped = snapshot.broadcast.dropped;
        self_.broadcast.received = peers.iter().map(|p| p.broadcast.received).sum();
        self_.broadcast.dropped_from_peers = peers.iter().map(|p| p.broadcast.dropped).sum();
        self_.nat_type = serde_name(&snapshot.reach.nat_type);
        self_.public_endpoint = snapshot.reach.public_endpoint.map(|e| e.to_string());
        self_.relay = snapshot.reach.relay.map(|r| r.to_string());
        self_.relays = snapshot
            .relays
            .iter()
            .map(|r| RelayStatus {
                address: r.relay.to_string(),
                bound: r.bound,
                rtt_ms: r.rtt.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        Status {
            party: self.party.clone(),
            self_,
            peers,
        }
    }
}

impl local_api::Handler for ApiHandler {
    fn status(&self) -> Result<Status, String> {
        let snapshot = self
            .dataplane
            .status(super::SNAPSHOT_TIMEOUT)
            .map_err(|_| "data plane is not responding".to_string())?;
        Ok(self.view(snapshot))
    }

    fn leave(&self) {
        (self.leave)();
    }
}
