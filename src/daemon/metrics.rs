//! A data plane snapshot as Prometheus metrics (text exposition format 0.0.4). Pure: the
//! caller takes the snapshot and serves the text (`metrics_server`).
//!
//! Every per-peer series has the labels `peer` (display name) and `vip` (virtual IP); path
//! measurements add `path` (`direct` or `relayed`). States and paths are one series per
//! possible value, 1 for the current one and 0 for the others, so a query can select
//! `lanparty_peer_state{state="failed"} == 1`.

use std::fmt::Write as _;

use crate::dataplane::health::{PathStats, PeerState};
use crate::dataplane::peers::PeerStats;
use crate::dataplane::DataplaneStatus;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Every peer state, in the order series are written.
const STATES: [PeerState; 4] = [
    PeerState::Connecting,
    PeerState::Connected,
    PeerState::Degraded,
    PeerState::Failed,
];

/// Every value of a peer's `connection_type`.
const PATHS: [&str; 3] = ["direct", "relayed", "connecting"];

/// Escapes a label value: backslash, double quote and line feed (exposition format 0.0.4).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    /// One sample; `labels` is already rendered (`peer="a",vip="10.66.0.2"`) or empty.
    fn sample(&mut self, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{} {value}", self.name);
        } else {
            let _ = writeln!(self.out, "{}{{{labels}}} {value}", self.name);
        }
    }
}

fn peer_labels(p: &PeerStats) -> String {
    format!(
        "peer=\"{}\",vip=\"{}\"",
        escape_label(&p.config.name),
        p.config.virtual_ip
    )
}

/// The probed paths of a peer, with their `path` label value.
fn paths(p: &PeerStats) -> impl Iterator<Item = (&'static str, PathStats)> {
    [("direct", p.direct_path), ("relayed", p.relayed_path)]
        .into_iter()
        .filter_map(|(name, stats)| stats.map(|s| (name, s)))
}

/// A per-path measurement family: one sample per path that has a value.
fn path_family(
    out: &mut String,
    peers: &[(String, &PeerStats)],
    name: &'static str,
    help: &str,
    value: impl Fn(&PathStats) -> Option<f64>,
) {
    let mut family = Family::new(out, name, "gauge", help);
    for (labels, p) in peers {
        for (path, stats) in paths(p) {
            if let Some(v) = value(&stats) {
                family.sample(&format!("{labels},path=\"{path}\""), v);
            }
        }
    }
}

/// A per-peer counter family.
fn peer_counter(
    out: &mut String,
    peers: &[(String, &PeerStats)],
    name: &'static str,
    help: &str,
    value: impl Fn(&PeerStats) -> u64,
) {
    let mut family = Family::new(out, name, "counter", help);
    for (labels, p) in peers {
        family.sample(labels, value(p));
    }
}

/// Renders `snapshot` in the text exposition format.
pub fn render(snapshot: &DataplaneStatus) -> String {
    let mut out = String::new();
    let peers: Vec<(String, &PeerStats)> =
        snapshot.peers.iter().map(|p| (peer_labels(p), p)).collect();

    Family::new(
        &mut out,
        "lanparty_peers",
        "gauge",
        "Peers in the data plane.",
    )
    .sample("", peers.len());

    let mut state = Family::new(
        &mut out,
        "lanparty_peer_state",
        "gauge",
        "Peer state: 1 for the current one (connecting, connected, degraded, failed).",
    );
    for (labels, p) in &peers {
        for s in STATES {
            let labels = format!("{labels},state=\"{}\"", s.name());
            state.sample(&labels, u8::from(p.state == s));
        }
    }

    let mut path = Family::new(
        &mut out,
        "lanparty_peer_path",
        "gauge",
        "Path traffic takes to the peer: 1 for the current one (direct, relayed, connecting).",
    );
    for (labels, p) in &peers {
        for name in PATHS {
            let labels = format!("{labels},path=\"{name}\"");
            path.sample(&labels, u8::from(p.connection_type == name));
        }
    }

    path_family(
        &mut out,
        &peers,
        "lanparty_peer_rtt_seconds",
        "Smoothed probe round trip of each path.",
        |s| s.rtt.map(|d| d.as_secs_f64()),
    );
    path_family(
        &mut out,
        &peers,
        "lanparty_peer_jitter_seconds",
        "Smoothed probe round-trip variation of each path (RFC 3550 6.4.1).",
        |s| s.jitter.map(|d| d.as_secs_f64()),
    );
    path_family(
        &mut out,
        &peers,
        "lanparty_peer_loss_ratio",
        "Probes lost on each path, of the last 16 (0 to 1).",
        |s| s.loss,
    );
    peer_counter(
        &mut out,
        &peers,
        "lanparty_peer_rx_bytes_total",
        "Bytes received from the peer through the tunnel.",
        |p| p.rx_bytes,
    );
    peer_counter(
        &mut out,
        &peers,
        "lanparty_peer_tx_bytes_total",
        "Bytes sent to the peer through the tunnel.",
        |p| p.tx_bytes,
    );
    peer_counter(
        &mut out,
        &peers,
        "lanparty_peer_path_switches_total",
        "Times traffic to the peer moved from one path to another.",
        |p| p.path_switches,
    );

    Family::new(
        &mut out,
        "lanparty_relay_rx_bytes_total",
        "counter",
        "Bytes of WireGuard datagrams received through relays, all peers.",
    )
    .sample(
        "",
        peers.iter().map(|(_, p)| p.relayed_rx_bytes).sum::<u64>(),
    );
    Family::new(
        &mut out,
        "lanparty_relay_tx_bytes_total",
        "counter",
        "Bytes of WireGuard datagrams sent through relays, all peers.",
    )
    .sample(
        "",
        peers.iter().map(|(_, p)| p.relayed_tx_bytes).sum::<u64>(),
    );

    let d = snapshot.drops;
    let mut drops = Family::new(
        &mut out,
        "lanparty_dropped_packets_total",
        "counter",
        "Packets the data plane dropped, by reason.",
    );
    for (reason, n) in [
        ("no_route", d.no_route),
        ("bad_source", d.bad_source),
        ("bad_destination", d.bad_destination),
        ("bad_datagram", d.bad_datagram),
    ] {
        drops.sample(&format!("reason=\"{reason}\""), n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Reach;
    use crate::dataplane::broadcast::{OwnBroadcast, PeerBroadcast};
    use crate::dataplane::health::PathState;
    use crate::dataplane::peers::{DropCounters, PeerConfig};
    use crate::identity::Key;
    use crate::nat::compat::Prediction;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn path(rtt_ms: u64, jitter_ms: u64, loss: f64) -> PathStats {
        PathStats {
            state: PathState::Up,
            rtt: Some(Duration::from_millis(rtt_ms)),
            jitter: Some(Duration::from_millis(jitter_ms)),
            loss: Some(loss),
            probes_sent: 16,
            replies: 12,
        }
    }

    fn peer(name: &str, last_octet: u8) -> PeerStats {
        PeerStats {
            config: PeerConfig {
                id: format!("id-{name}"),
                name: name.into(),
                public_key: Key([last_octet; 32]),
                virtual_ip: Ipv4Addr::new(10, 66, 0, last_octet),
                endpoints: Vec::new(),
                public_endpoint: None,
                relay: None,
                prediction: Prediction::Direct,
            },
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            connection_type: "direct",
            relay: None,
            state: PeerState::Connected,
            state_for: Duration::from_secs(3),
            direct_path: Some(path(40, 5, 0.0)),
            relayed_path: None,
            path_in_use: Some(path(40, 5, 0.0)),
            path_switches: 0,
            relayed_tx_bytes: 0,
            relayed_rx_bytes: 0,
            time_to_direct: Some(Duration::from_millis(500)),
            since_handshake: Some(Duration::from_secs(1)),
            rx_bytes: 1000,
            tx_bytes: 2000,
            handshake_rtt_ms: Some(1),
            broadcast: PeerBroadcast::default(),
        }
    }

    fn snapshot() -> DataplaneStatus {
        let bob = peer("bob", 2);
        let mut carol = peer("carol", 3);
        carol.state = PeerState::Degraded;
        carol.connection_type = "relayed";
        carol.relay = Some("192.0.2.1:3478".parse().unwrap());
        carol.direct_path = Some(PathStats {
            state: PathState::Down,
            rtt: None,
            jitter: None,
            loss: Some(1.0),
            probes_sent: 9,
            replies: 0,
        });
        carol.relayed_path = Some(path(250, 30, 0.25));
        carol.path_switches = 2;
        carol.relayed_rx_bytes = 300;
        carol.relayed_tx_bytes = 400;
        DataplaneStatus {
            peers: vec![bob, carol],
            drops: DropCounters {
                no_route: 1,
                bad_source: 2,
                bad_destination: 3,
                bad_datagram: 4,
            },
            broadcast: OwnBroadcast::default(),
            relays: Vec::new(),
            reach: Reach::default(),
        }
    }

    fn sample_lines(text: &str, metric: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
            .map(String::from)
            .collect()
    }

    #[test]
    fn each_peer_has_one_current_state_and_path() {
        let text = render(&snapshot());
        assert_eq!(
            sample_lines(&text, "lanparty_peer_state")
                .iter()
                .filter(|l| l.contains("peer=\"carol\""))
                .cloned()
                .collect::<Vec<_>>(),
            [
                r#"lanparty_peer_state{peer="carol",vip="10.66.0.3",state="connecting"} 0"#,
                r#"lanparty_peer_state{peer="carol",vip="10.66.0.3",state="connected"} 0"#,
                r#"lanparty_peer_state{peer="carol",vip="10.66.0.3",state="degraded"} 1"#,
                r#"lanparty_peer_state{peer="carol",vip="10.66.0.3",state="failed"} 0"#,
            ]
        );
        assert_eq!(
            sample_lines(&text, "lanparty_peer_path"),
            [
                r#"lanparty_peer_path{peer="bob",vip="10.66.0.2",path="direct"} 1"#,
                r#"lanparty_peer_path{peer="bob",vip="10.66.0.2",path="relayed"} 0"#,
                r#"lanparty_peer_path{peer="bob",vip="10.66.0.2",path="connecting"} 0"#,
                r#"lanparty_peer_path{peer="carol",vip="10.66.0.3",path="direct"} 0"#,
                r#"lanparty_peer_path{peer="carol",vip="10.66.0.3",path="relayed"} 1"#,
                r#"lanparty_peer_path{peer="carol",vip="10.66.0.3",path="connecting"} 0"#,
            ]
        );
        assert_eq!(sample_lines(&text, "lanparty_peers"), ["lanparty_peers 2"]);
    }

    #[test]
    fn path_measurements_are_in_seconds_and_ratios_per_path_that_has_them() {
        let text = render(&snapshot());
        assert_eq!(
            sample_lines(&text, "lanparty_peer_rtt_seconds"),
            [
                r#"lanparty_peer_rtt_seconds{peer="bob",vip="10.66.0.2",path="direct"} 0.04"#,
                r#"lanparty_peer_rtt_seconds{peer="carol",vip="10.66.0.3",path="relayed"} 0.25"#,
            ],
            "carol's direct path never answered: no RTT sample"
        );
        assert_eq!(
            sample_lines(&text, "lanparty_peer_jitter_seconds")[1],
            r#"lanparty_peer_jitter_seconds{peer="carol",vip="10.66.0.3",path="relayed"} 0.03"#
        );
        assert_eq!(
            sample_lines(&text, "lanparty_peer_loss_ratio"),
            [
                r#"lanparty_peer_loss_ratio{peer="bob",vip="10.66.0.2",path="direct"} 0"#,
                r#"lanparty_peer_loss_ratio{peer="carol",vip="10.66.0.3",path="direct"} 1"#,
                r#"lanparty_peer_loss_ratio{peer="carol",vip="10.66.0.3",path="relayed"} 0.25"#,
            ]
        );
    }

    #[test]
    fn counters_cover_bytes_switches_relays_and_drops() {
        let text = render(&snapshot());
        assert_eq!(
            sample_lines(&text, "lanparty_peer_rx_bytes_total")[0],
            r#"lanparty_peer_rx_bytes_total{peer="bob",vip="10.66.0.2"} 1000"#
        );
        assert_eq!(
            sample_lines(&text, "lanparty_peer_tx_bytes_total")[1],
            r#"lanparty_peer_tx_bytes_total{peer="carol",vip="10.66.0.3"} 2000"#
        );
        assert_eq!(
            sample_lines(&text, "lanparty_peer_path_switches_total")[1],
            r#"lanparty_peer_path_switches_total{peer="carol",vip="10.66.0.3"} 2"#
        );
        assert_eq!(
            sample_lines(&text, "lanparty_relay_rx_bytes_total"),
            ["lanparty_relay_rx_bytes_total 300"]
        );
        assert_eq!(
            sample_lines(&text, "lanparty_relay_tx_bytes_total"),
            ["lanparty_relay_tx_bytes_total 400"]
        );
        assert_eq!(
            sample_lines(&text, "lanparty_dropped_packets_total"),
            [
                r#"lanparty_dropped_packets_total{reason="no_route"} 1"#,
                r#"lanparty_dropped_packets_total{reason="bad_source"} 2"#,
                r#"lanparty_dropped_packets_total{reason="bad_destination"} 3"#,
                r#"lanparty_dropped_packets_total{reason="bad_datagram"} 4"#,
            ]
        );
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&snapshot());
        let families = [
            ("lanparty_peers", "gauge"),
            ("lanparty_peer_state", "gauge"),
            ("lanparty_peer_path", "gauge"),
            ("lanparty_peer_rtt_seconds", "gauge"),
            ("lanparty_peer_jitter_seconds", "gauge"),
            ("lanparty_peer_loss_ratio", "gauge"),
            ("lanparty_peer_rx_bytes_total", "counter"),
            ("lanparty_peer_tx_bytes_total", "counter"),
            ("lanparty_peer_path_switches_total", "counter"),
            ("lanparty_relay_rx_bytes_total", "counter"),
            ("lanparty_relay_tx_bytes_total", "counter"),
            ("lanparty_dropped_packets_total", "counter"),
        ];
        let lines: Vec<&str> = text.lines().collect();
        for (name, kind) in families {
            let help = lines
                .iter()
                .position(|l| l.starts_with(&format!("# HELP {name} ")))
                .unwrap_or_else(|| panic!("no HELP for {name}"));
            assert_eq!(lines[help + 1], format!("# TYPE {name} {kind}"));
            let first = sample_lines(&text, name);
            let first = lines
                .iter()
                .position(|l| Some(*l) == first.first().map(|s| s.as_str()));
            assert!(
                first.is_some_and(|i| i > help + 1),
                "{name}: samples after TYPE"
            );
        }
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE")).count(),
            families.len(),
            "{text}"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped_and_no_peers_still_gives_totals() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut snap = snapshot();
        snap.peers.truncate(1);
        snap.peers[0].config.name = "say \"hi\"".into();
        let text = render(&snap);
        assert!(
            text.contains(
                r#"lanparty_peer_rx_bytes_total{peer="say \"hi\"",vip="10.66.0.2"} 1000"#
            ),
            "{text}"
        );
        snap.peers.clear();
        let empty = render(&snap);
        assert_eq!(sample_lines(&empty, "lanparty_peers"), ["lanparty_peers 0"]);
        assert!(sample_lines(&empty, "lanparty_peer_state").is_empty());
        assert_eq!(
            sample_lines(&empty, "lanparty_dropped_packets_total").len(),
            4
        );
    }
}
