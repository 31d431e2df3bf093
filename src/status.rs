//! The `status` document: a stable JSON shape (extend, never rename) and its table rendering.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Everything `lanparty-lite status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The party.
    pub party: PartyStatus,
    /// This member.
    #[serde(rename = "self")]
    pub self_: SelfStatus,
    /// Every other member.
    pub peers: Vec<PeerStatus>,
}

/// The party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyStatus {
    /// Party id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The code others can join with.
    pub join_code: String,
}

/// This member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfStatus {
    /// Member id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// WireGuard public key.
    pub public_key: String,
    /// Virtual IP.
    pub virtual_ip: Ipv4Addr,
    /// Party interface name.
    pub interface: String,
    /// UDP port of the data plane socket.
    pub listen_port: u16,
    /// LAN broadcast and multicast of this member.
    #[serde(default)]
    pub broadcast: SelfBroadcast,
    /// `open`, `full_cone`, `restricted_cone`, `port_restricted_cone`, `symmetric` or
    /// `unknown`.
    #[serde(default = "unknown")]
    pub nat_type: String,
    /// The UDP socket's address as the control server's STUN responder sees it.
    #[serde(default)]
    pub public_endpoint: Option<String>,
    /// The home relay (where peers with a larger member id meet us).
    #[serde(default)]
    pub relay: Option<String>,
    /// Every relay this member keeps a binding with.
    #[serde(default)]
    pub relays: Vec<RelayStatus>,
}

fn unknown() -> String {
    "unknown".into()
}

/// One relay a member keeps a binding with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Its UDP address.
    pub address: String,
    /// Whether the binding is up.
    pub bound: bool,
    /// Smoothed round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// This member's LAN broadcast and multicast.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfBroadcast {
    /// Whether 255.255.255.255 and 224.0.0.0/4 are routed through the party interface.
    pub route: bool,
    /// Packets per second sent, and accepted from each peer.
    pub rate_limit: u32,
    /// Broadcast packets this member sent to the party (each to every peer).
    pub sent: u64,
    /// Broadcast packets from peers written to the interface.
    pub received: u64,
    /// Our own broadcast packets dropped over the rate limit.
    pub dropped: u64,
    /// Broadcast packets from peers dropped (over the rate limit or duplicates).
    pub dropped_from_peers: u64,
}

/// LAN broadcast and multicast exchanged with one peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerBroadcastStatus {
    /// Copies of our broadcasts sent to this peer.
    pub sent: u64,
    /// Broadcasts from this peer written to the interface.
    pub received: u64,
    /// Broadcasts from this peer dropped (over the rate limit or duplicates).
    pub dropped: u64,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Member id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// WireGuard public key.
    pub public_key: String,
    /// Virtual IP.
    pub virtual_ip: Ipv4Addr,
    /// Endpoint in use (learned from authenticated traffic), if any.
    pub endpoint: Option<String>,
    /// `connecting`, `connected`, `degraded` or `failed`.
    pub state: String,
    /// `direct`, `relayed` or `connecting`.
    pub connection_type: String,
    /// Latest round-trip measurement, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Bytes received from the peer through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent to the peer through the tunnel.
    pub tx_bytes: u64,
    /// Seconds since the last completed handshake.
    pub last_handshake_s: Option<u64>,
    /// LAN broadcast and multicast with this peer.
    #[serde(default)]
    pub broadcast: PeerBroadcastStatus,
    /// The relay we meet this peer at (used when no direct path works).
    #[serde(default)]
    pub relay: Option<String>,
    /// What our two NATs allow: `direct`, `relay` or `try_relay_first` (a NAT is unknown).
    #[serde(default = "unknown")]
    pub prediction: String,
    /// Seconds from adding the peer to the first direct packet.
    #[serde(default)]
    pub time_to_direct_s: Option<f64>,
    /// Seconds in the current `state`.
    #[serde(default)]
    pub state_for_s: f64,
    /// Smoothed round trip of the path in use (probes), in milliseconds.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Smoothed round-trip variation of the path in use, in milliseconds.
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// Probes lost on the path in use, of the last 16, in percent.
    #[serde(default)]
    pub loss_percent: Option<f64>,
    /// Times traffic to this peer moved from one path to another.
    #[serde(default)]
    pub path_switches: u64,
    /// Bytes of WireGuard datagrams received through relays.
    #[serde(default)]
    pub relayed_rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent through relays.
    #[serde(default)]
    pub relayed_tx_bytes: u64,
    /// Every path we probe to this peer.
    #[serde(default)]
    pub paths: Vec<PathStatus>,
}

/// One path to a peer, as its probes measure it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// `direct` or `relayed`.
    pub kind: String,
    /// The peer's endpoint (direct) or the relay's address (relayed).
    pub address: String,
    /// `unknown` (no probe answered yet), `up` or `down`.
    pub state: String,
    /// Whether traffic takes this path now.
    pub in_use: bool,
    /// Smoothed round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Smoothed round-trip variation, in milliseconds.
    pub jitter_ms: Option<f64>,
    /// Probes lost, of the last 16, in percent.
    pub loss_percent: Option<f64>,
    /// Probes sent.
    pub probes_sent: u64,
    /// Replies received.
    pub replies: u64,
}

fn or_dash<T: ToString>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "-".into(), ToString::to_string)
}

/// Renders the status as a table for people.
pub fn render_table(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "party   {} ({})", status.party.name, status.party.id);
    let _ = writeln!(out, "code    {}", status.party.join_code);
    let _ = writeln!(
        out,
        "self    {} {} on {} port {}",
        status.self_.name,
        status.self_.virtual_ip,
        status.self_.interface,
        status.self_.listen_port
    );
    let _ = writeln!(out, "key     {}", status.self_.public_key);
    let me = &status.self_;
    let relays: Vec<String> = me
        .relays
        .iter()
        .map(|r| match (r.bound, r.rtt_ms) {
            (true, Some(ms)) => format!("{} {ms:.1}ms", r.address),
            (true, None) => format!("{} bound", r.address),
            (false, _) => format!("{} binding", r.address),
        })
        .collect();
    let _ = writeln!(
        out,
        "nat     {}, public {}; home relay {}; relays: {}",
        me.nat_type,
        or_dash(&me.public_endpoint),
        or_dash(&me.relay),
        if relays.is_empty() {
            "-".into()
        } else {
            relays.join(", ")
        }
    );
    let b = &status.self_.broadcast;
    let _ = writeln!(
        out,
        "lan     broadcast sent {}, received {}, dropped {} ours + {} from peers; \
         limit {}/s, route {}",
        b.sent,
        b.received,
        b.dropped,
        b.dropped_from_peers,
        b.rate_limit,
        if b.route { "on" } else { "off" }
    );
    if status.peers.is_empty() {
        let _ = writeln!(out, "\nno peers yet");
        return out;
    }
    let rows: Vec<[String; 12]> = status
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.virtual_ip.to_string(),
                format!("{} {}", p.state, human_duration(p.state_for_s)),
                path_cell(p),
                or_dash(&p.endpoint),
                p.rtt_ms
                    .or(p.latency_ms)
                    .map_or_else(dash, |ms| format!("{ms:.1}ms")),
                p.jitter_ms.map_or_else(dash, |ms| format!("{ms:.1}ms")),
                p.loss_percent.map_or_else(dash, |l| format!("{l:.0}%")),
                p.last_handshake_s
                    .map_or_else(dash, |s| format!("{s}s ago")),
                format!("{}/{}", human_bytes(p.rx_bytes), human_bytes(p.tx_bytes)),
                p.time_to_direct_s.map_or_else(dash, |s| format!("{s:.1}s")),
                format!("{}/{}", p.broadcast.received, p.broadcast.sent),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "VIRTUAL IP",
        "STATE",
        "PATH",
        "ENDPOINT",
        "RTT",
        "JITTER",
        "LOSS",
        "HANDSHAKE",
        "RX/TX",
        "TO DIRECT",
        "BCAST RX/TX",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    out.push('\n');
    for row in std::iter::once(header.map(String::from)).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn dash() -> String {
    "-".into()
}

/// `direct`, `relayed via RELAY` or `connecting`.
fn path_cell(p: &PeerStatus) -> String {
    match (p.connection_type.as_str(), &p.relay) {
        ("relayed", Some(relay)) => format!("relayed via {relay}"),
        (other, _) => other.to_string(),
    }
}

/// `12s`, `3m04s`, `2h05m`: how long a peer has been in its state.
fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            party: PartyStatus {
                id: "abc".into(),
                name: "friday".into(),
                join_code: "file:/r#abc".into(),
            },
            self_: SelfStatus {
                id: "0011".into(),
                name: "alice".into(),
                public_key: "K".into(),
                virtual_ip: Ipv4Addr::new(10, 66, 0, 1),
                interface: "lp0".into(),
                listen_port: 51820,
                broadcast: SelfBroadcast {
                    route: true,
                    rate_limit: 200,
                    sent: 4,
                    received: 7,
                    dropped: 1,
                    dropped_from_peers: 2,
                },
                nat_type: "full_cone".into(),
                public_endpoint: Some("203.0.113.1:40000".into()),
                relay: Some("203.0.113.3:3479".into()),
                relays: vec![RelayStatus {
                    address: "203.0.113.3:3479".into(),
                    bound: true,
                    rtt_ms: Some(1.25),
                }],
            },
            peers: vec![PeerStatus {
                id: "2233".into(),
                name: "bob".into(),
                public_key: "P".into(),
                virtual_ip: Ipv4Addr::new(10, 66, 0, 2),
                endpoint: Some("192.0.2.2:51820".into()),
                state: "connected".into(),
                connection_type: "direct".into(),
                latency_ms: Some(0.4),
                rx_bytes: 2048,
                tx_bytes: 10,
                last_handshake_s: Some(3),
                broadcast: PeerBroadcastStatus {
                    sent: 4,
                    received: 7,
                    dropped: 2,
                },
                relay: None,
                prediction: "direct".into(),
                time_to_direct_s: Some(0.5),
                state_for_s: 12.0,
                rtt_ms: Some(0.4),
                jitter_ms: Some(0.1),
                loss_percent: Some(0.0),
                path_switches: 1,
                relayed_rx_bytes: 0,
                relayed_tx_bytes: 0,
                paths: vec![PathStatus {
                    kind: "direct".into(),
                    address: "192.0.2.2:51820".into(),
                    state: "up".into(),
                    in_use: true,
                    rtt_ms: Some(0.4),
                    jitter_ms: Some(0.1),
                    loss_percent: Some(0.0),
                    probes_sent: 20,
                    replies: 20,
                }],
            }],
        }
    }

    #[test]
    fn json_keeps_the_stable_field_names() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in ["id", "name", "public_key", "virtual_ip"] {
            assert!(v["self"].get(key).is_some(), "self.{key}");
        }
        for key in [
            "id",
            "name",
            "public_key",
            "virtual_ip",
            "endpoint",
            "state",
            "connection_type",
            "latency_ms",
            "rx_bytes",
            "tx_bytes",
            "last_handshake_s",
        ] {
            assert!(v["peers"][0].get(key).is_some(), "peers[].{key}");
        }
        assert_eq!(v["party"]["name"], "friday");
    }

    /// A second peer: relayed, degraded, never direct.
    fn relayed_peer() -> PeerStatus {
        let mut p = sample().peers[0].clone();
        p.name = "carol".into();
        p.virtual_ip = Ipv4Addr::new(10, 66, 0, 3);
        p.endpoint = None;
        p.state = "degraded".into();
        p.state_for_s = 75.4;
        p.connection_type = "relayed".into();
        p.relay = Some("192.0.2.1:3478".into());
        p.latency_ms = Some(250.0);
        p.rtt_ms = Some(250.0);
        p.jitter_ms = Some(30.46);
        p.loss_percent = Some(25.0);
        p.last_handshake_s = None;
        p.time_to_direct_s = None;
        p.rx_bytes = 0;
        p.tx_bytes = 3 * 1024 * 1024;
        p.broadcast = PeerBroadcastStatus::default();
        p
    }

    /// The cells of the table row that starts with `name` (cells are two or more spaces
    /// apart; a cell has single spaces at most).
    fn cells(table: &str, name: &str) -> Vec<String> {
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        row.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn table_shows_state_path_and_probe_measurements_of_each_peer() {
        let mut status = sample();
        status.peers.push(relayed_peer());
        let table = render_table(&status);
        assert_eq!(
            cells(&table, "NAME"),
            [
                "NAME",
                "VIRTUAL IP",
                "STATE",
                "PATH",
                "ENDPOINT",
                "RTT",
                "JITTER",
                "LOSS",
                "HANDSHAKE",
                "RX/TX",
                "TO DIRECT",
                "BCAST RX/TX"
            ]
        );
        assert_eq!(
            cells(&table, "bob"),
            [
                "bob",
                "10.66.0.2",
                "connected 12s",
                "direct",
                "192.0.2.2:51820",
                "0.4ms",
                "0.1ms",
                "0%",
                "3s ago",
                "2.0KiB/10B",
                "0.5s",
                "7/4"
            ]
        );
        assert_eq!(
            cells(&table, "carol"),
            [
                "carol",
                "10.66.0.3",
                "degraded 1m15s",
                "relayed via 192.0.2.1:3478",
                "-",
                "250.0ms",
                "30.5ms",
                "25%",
                "-",
                "0B/3.0MiB",
                "-",
                "0/0"
            ]
        );
        let header = table.lines().find(|l| l.starts_with("NAME")).unwrap();
        let carol = table.lines().find(|l| l.starts_with("carol")).unwrap();
        assert_eq!(
            header.find("PATH"),
            carol.find("relayed"),
            "columns line up: {table}"
        );
    }

    #[test]
    fn state_durations_read_as_seconds_minutes_or_hours() {
        assert_eq!(human_duration(0.2), "0s");
        assert_eq!(human_duration(59.9), "59s");
        assert_eq!(human_duration(60.0), "1m00s");
        assert_eq!(human_duration(3599.0), "59m59s");
        assert_eq!(human_duration(7500.0), "2h05m");
    }

    #[test]
    fn table_keeps_the_nat_and_lan_lines_and_says_when_there_are_no_peers() {
        let table = render_table(&sample());
        let nat = table.lines().find(|l| l.starts_with("nat")).unwrap();
        assert_eq!(
            nat,
            "nat     full_cone, public 203.0.113.1:40000; home relay 203.0.113.3:3479; relays: 203.0.113.3:3479 1.2ms"
        );
        let lan = table.lines().find(|l| l.starts_with("lan")).unwrap();
        assert_eq!(
            lan,
            "lan     broadcast sent 4, received 7, dropped 1 ours + 2 from peers; limit 200/s, route on"
        );
        let mut alone = sample();
        alone.peers.clear();
        let table = render_table(&alone);
        assert!(table.ends_with("\nno peers yet\n"), "{table}");
        assert!(!table.contains("NAME"), "{table}");
    }
}
