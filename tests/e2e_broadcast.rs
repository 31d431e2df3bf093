//! End-to-end: LAN broadcast and multicast across a party of three real members in network
//! namespaces (issue 7). UDP listeners and senders are `tests/programs/lan_udp.py`; the game
//! scenario is `scripts/lan-lobby.py`. Needs root (see `tests/lab/mod.rs`).

mod lab;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use lab::{python, wait_until, Lab, Proc};
use serde_json::Value;

/// Tunnels up and rosters settled; generous for a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(15);
/// Time for a datagram (and any duplicate it might have) to arrive.
const ARRIVAL: Duration = Duration::from_secs(10);

fn udp_tool() -> String {
    format!("{}/tests/programs/lan_udp.py", env!("CARGO_MANIFEST_DIR"))
}

/// Three members, joined with `extra`, with every tunnel up.
fn party(tag: &str, extra: &[&str]) -> (Lab, Vec<Ipv4Addr>) {
    let lab = Lab::new(tag, 3);
    let code = lab.create_party(&[]);
    let mut ips = Vec::new();
    for i in 0..3 {
        let p = lab.spawn_join(i, &code, extra);
        ips.push(lab.wait_joined(p).ip);
    }
    for i in 0..3 {
        let others: Vec<Ipv4Addr> = (0..3).filter(|j| *j != i).map(|j| ips[j]).collect();
        lab.wait_connected_peers(i, &others, SETTLE);
    }
    (lab, ips)
}

/// Starts a UDP listener on member `i` (`listen PORT EXTRA…`) and waits until it is bound.
fn listen(lab: &Lab, i: usize, port: u16, extra: &[&str]) -> Proc {
    let tool = udp_tool();
    let port = port.to_string();
    let mut argv = vec![python(), tool.as_str(), "listen", port.as_str()];
    argv.extend_from_slice(extra);
    let p = lab.spawn(i, &format!("listen-m{i}"), &argv);
    lab.wait_line(p, "ready", ARRIVAL);
    p
}

/// Sends from member `i`: `send DST PORT PAYLOAD EXTRA…`.
fn send(lab: &Lab, i: usize, dst: &str, port: u16, payload: &str, extra: &[&str]) {
    let tool = udp_tool();
    let port = port.to_string();
    let mut argv = vec![python(), tool.as_str(), "send", dst, port.as_str(), payload];
    argv.extend_from_slice(extra);
    lab.exec(i, &argv).expect_success();
}

/// How often each `(source address, payload)` pair reached listener `p` so far.
fn heard(lab: &Lab, p: Proc) -> BTreeMap<(Ipv4Addr, String), usize> {
    let mut counts = BTreeMap::new();
    for line in lab.stdout(p).lines() {
        let mut words = line.split(' ');
        if let (Some("from"), Some(addr), Some(payload)) =
            (words.next(), words.next(), words.next())
        {
            let ip: Ipv4Addr = addr
                .split(':')
                .next()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or_else(|| panic!("bad listener line {line:?}"));
            *counts.entry((ip, payload.to_string())).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits until listener `p` has heard `payload` from `src`, then a little longer so a
/// duplicate would show, and returns how often it heard it.
fn heard_from(lab: &Lab, p: Proc, src: Ipv4Addr, payload: &str) -> usize {
    let key = (src, payload.to_string());
    wait_until(&format!("{payload:?} from {src}"), ARRIVAL, || {
        heard(lab, p)
            .get(&key)
            .copied()
            .ok_or_else(|| format!("heard {:?}", heard(lab, p)))
    });
    std::thread::sleep(Duration::from_millis(500));
    heard(lab, p).get(&key).copied().unwrap_or(0)
}

fn broadcast_of(status: &Value) -> &Value {
    &status["self"]["broadcast"]
}

fn counter(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn limited_broadcast_with_the_route_reaches_each_other_member_once_and_never_returns() {
    let (lab, ips) = party("bcast", &["--broadcast-route"]);
    let port = 40_001;
    let listeners: Vec<Proc> = (0..3).map(|i| listen(&lab, i, port, &[])).collect();
    send(&lab, 0, "255.255.255.255", port, "limited", &[]);
    for i in [1, 2] {
        assert_eq!(
            heard_from(&lab, listeners[i], ips[0], "limited-0"),
            1,
            "m{i} hears m0's broadcast exactly once, from m0's virtual IP"
        );
    }
    // The kernel hands the sender's own listener one local copy; none may come through a tunnel.
    let own = heard(&lab, listeners[0]);
    assert!(
        own.values().all(|n| *n <= 1),
        "m0 heard its own broadcast again: {own:?}"
    );
    let status = lab.status(0).unwrap();
    assert_eq!(counter(broadcast_of(&status), "received"), 0, "{status}");
    assert_eq!(counter(broadcast_of(&status), "sent"), 1, "{status}");
    assert_eq!(broadcast_of(&status)["route"], true);
    for i in [1, 2] {
        let status = lab.status(i).unwrap();
        assert_eq!(
            counter(broadcast_of(&status), "received"),
            1,
            "m{i}: {status}"
        );
        assert_eq!(
            counter(broadcast_of(&status), "sent"),
            0,
            "m{i} forwarded: {status}"
        );
    }

    // With the route, multicast needs no interface choice by the application either.
    let group = "239.77.0.1";
    let members: Vec<Proc> = [1, 2]
        .iter()
        .map(|i| listen(&lab, *i, 40_002, &["--group", group]))
        .collect();
    send(&lab, 0, group, 40_002, "group", &[]);
    for p in members {
        assert_eq!(heard_from(&lab, p, ips[0], "group-0"), 1);
    }
}

#[test]
fn subnet_broadcast_and_joined_multicast_work_without_the_route() {
    let (lab, ips) = party("subnet", &[]);
    let port = 40_003;
    let group = "239.77.0.2";
    let listeners: Vec<Proc> = (1..3)
        .map(|i| {
            let own = ips[i].to_string();
            listen(&lab, i, port, &["--group", group, "--iface-ip", &own])
        })
        .collect();
    send(&lab, 0, "10.66.255.255", port, "subnet", &[]);
    let a = ips[0].to_string();
    send(&lab, 0, group, port, "group", &["--iface-ip", &a]);
    for p in &listeners {
        assert_eq!(heard_from(&lab, *p, ips[0], "subnet-0"), 1);
        assert_eq!(heard_from(&lab, *p, ips[0], "group-0"), 1);
    }
    let status = lab.status(0).unwrap();
    assert_eq!(broadcast_of(&status)["route"], false);
    assert_eq!(counter(broadcast_of(&status), "sent"), 2, "{status}");
}

#[test]
fn a_broadcast_flood_is_capped_by_the_rate_limit_while_other_traffic_flows() {
    let (lab, ips) = party("flood", &["--broadcast-rate", "50"]);
    let port = 40_004;
    let listener = listen(&lab, 1, port, &[]);
    let offered = 2000;
    let tool = udp_tool();
    let count = offered.to_string();
    let flood = lab.spawn(
        0,
        "flood",
        &[
            python(),
            &tool,
            "send",
            "10.66.255.255",
            &port.to_string(),
            "flood",
            "--count",
            &count,
            "--rate",
            "1000",
        ],
    );
    // Unicast between the other members, and from the flooder itself, keeps working.
    for _ in 0..5 {
        lab.ping_once_waiting(2, ips[1], 2).unwrap();
        lab.ping_once_waiting(0, ips[2], 2).unwrap();
    }
    lab.wait_line(flood, "sent 2000", SETTLE);
    let a = lab.status(0).unwrap();
    let (sent, dropped) = (
        counter(broadcast_of(&a), "sent"),
        counter(broadcast_of(&a), "dropped"),
    );
    assert_eq!(
        sent + dropped,
        offered,
        "every flood packet is sent or counted: {a}"
    );
    assert!(
        dropped >= 1000,
        "the limit of 50/s let {sent} of {offered} through"
    );
    let b = lab.status(1).unwrap();
    let from_a = b["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["virtual_ip"] == ips[0].to_string())
        .unwrap_or_else(|| panic!("m0 missing in {b}"))["broadcast"]
        .clone();
    let received = counter(&from_a, "received");
    assert_eq!(
        received + counter(&from_a, "dropped"),
        sent,
        "m1 accounts for every copy m0 sent: {b}"
    );
    wait_until("m1's listener to hear what m1 accepted", ARRIVAL, || {
        let n: usize = heard(&lab, listener).values().sum();
        if n as u64 == received {
            Ok(())
        } else {
            Err(format!("listener heard {n}, status says {received}"))
        }
    });
}

#[test]
fn a_lan_game_lobby_announced_by_broadcast_is_found_and_joined_through_the_tunnel() {
    let (lab, ips) = party("lobby", &["--broadcast-route"]);
    let game = format!("{}/scripts/lan-lobby.py", env!("CARGO_MANIFEST_DIR"));
    let host = lab.spawn(0, "lobby-host", &[python(), &game, "host", "friday-ctf"]);
    lab.wait_line(host, "hosting lobby", ARRIVAL);
    let client = lab
        .exec(
            1,
            &[python(), &game, "client", "--wait", "10", "--player", "m1"],
        )
        .expect_success();
    assert!(
        client
            .stdout
            .contains(&format!("lobby 'friday-ctf' hosted by {}:27015", ips[0])),
        "{}",
        client.stdout
    );
    assert!(
        client.stdout.contains("joined 'friday-ctf': WELCOME m1"),
        "{}",
        client.stdout
    );
    lab.wait_line(host, &format!("m1 joined from {}", ips[1]), ARRIVAL);
}

/// The route `ip route get DST` picks in member `i`'s namespace, e.g. `broadcast 255.255.255.255 dev lp0 …`.
fn route_to(lab: &Lab, i: usize, dst: &str) -> String {
    lab.exec(i, &["ip", "route", "get", dst])
        .expect_success()
        .stdout
}

#[test]
fn the_broadcast_route_wins_while_the_member_runs_and_leaves_with_it() {
    let lab = Lab::new("bcrt", 1);
    let code = lab.create_party(&[]);
    // Another interface already has a multicast route, as some hosts do.
    lab.exec(0, &["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])
        .expect_success();
    let member = lab.spawn_join(0, &code, &["--broadcast-route"]);
    lab.wait_joined(member);
    for dst in ["255.255.255.255", "239.1.2.3"] {
        let route = route_to(&lab, 0, dst);
        assert!(route.contains("dev lp0"), "{dst}: {route}");
    }
    lab.signal(member, libc::SIGTERM);
    assert!(lab.wait_exit(member, ARRIVAL).is_some_and(|s| s.success()));
    assert!(
        route_to(&lab, 0, "239.1.2.3").contains("dev eth0"),
        "the old route is back"
    );
    let gone = lab.exec(0, &["ip", "route", "get", "255.255.255.255"]);
    assert!(!gone.stdout.contains("lp0"), "{}", gone.stdout);
}
