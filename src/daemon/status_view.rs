//! The local API's view of a running member: turns a data plane snapshot into the status
//! document (`status`, `status --json`).

use std::time::Duration;

use super::local_api;
use crate::dataplane::{self, peers::PeerStats, DataplaneStatus};
use crate::status::{
    PartyStatus, PeerBroadcastStatus, PeerStatus, RelayStatus, SelfStatus, Status,
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

fn peer_status(p: PeerStats) -> PeerStatus {
    let connected = p.is_connected();
    PeerStatus {
        id: p.config.id.clone(),
        name: p.config.name.clone(),
        public_key: p.config.public_key.to_string(),
        virtual_ip: p.config.virtual_ip,
        endpoint: p.endpoint.map(|e| e.to_string()),
        state: if connected { "connected" } else { "connecting" }.into(),
        connection_type: p.connection_type.into(),
        latency_ms: p.handshake_rtt_ms.map(f64::from),
        rx_bytes: p.rx_bytes,
        tx_bytes: p.tx_bytes,
        last_handshake_s: p.since_handshake.map(|d| d.as_secs()),
        broadcast: PeerBroadcastStatus {
            sent: p.broadcast.sent,
            received: p.broadcast.received,
            dropped: p.broadcast.dropped,
        },
        relay: p
            .config
            .relay
            .filter(|_| p.relay_bound)
            .map(|r| r.to_string()),
        prediction: serde_name(&p.config.prediction),
        time_to_direct_s: p.time_to_direct.map(|d| d.as_secs_f64()),
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
            .status(Duration::from_secs(2))
            .map_err(|_| "data plane is not responding".to_string())?;
        Ok(self.view(snapshot))
    }

    fn leave(&self) {
        (self.leave)();
    }
}
