//! End-to-end NAT traversal (issue 4) with real members in the NAT lab (tests/natlab/mod.rs):
//! a control server with STUN on two addresses and a relay on the lab's internet, and one
//! member behind each kind of NAT (and one with none). Every pair connects; pairs whose NATs
//! allow punching end `direct`, the others `relayed`; every member reports its router's NAT
//! type; and a member outside the party gets nothing through the relay. Needs root.

mod natlab;

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use natlab::lab::{wait_until, BIN};
use natlab::{NatKind, NatLab, Site};
use serde_json::Value;

/// NAT classification (at most 9 s), relay binding, roster propagation and punching.
const CONVERGE: Duration = Duration::from_secs(90);
const SECRET: &str = "a relay secret of at least thirty-two characters";

struct Party {
    nat: NatLab,
    sites: Vec<Site>,
    relay: Ipv4Addr,
    started: Instant,
}

fn party(tag: &str, kinds: &[NatKind]) -> Party {
    let mut nat = NatLab::new(tag);
    let srv = nat.add_internet_host("srv", 2);
    let rly = nat.add_internet_host("rly", 1);
    let secret = nat.dir().join("relay.secret");
    fs::write(&secret, SECRET).unwrap();
    let secret = secret.display().to_string();
    let (a, b) = (srv.ips[0], srv.ips[1]);
    let listen = format!("{a}:7777");
    let state = nat.dir().join("server-state").display().to_string();
    let stun: Vec<String> = [(a, 3478), (a, 3479), (b, 3478), (b, 3479)]
        .iter()
        .map(|(ip, port)| format!("{ip}:{port}"))
        .collect();
    let mut argv = vec![BIN, "server", "--listen", &listen, "--state-dir", &state];
    argv.extend(["--relay-secret-file", &secret]);
    for s in &stun {
        argv.extend(["--stun", s]);
    }
    let server = nat.spawn(srv.node, "server", &argv);
    nat.wait_line(server, "listening", Duration::from_secs(10));
    let control = format!("http://{listen}");
    let relay_listen = format!("{}:3479", rly.ips[0]);
    let relay = nat.spawn(
        rly.node,
        "relay",
        &[
            BIN,
            "relay",
            "--listen",
            &relay_listen,
            "--secret-file",
            &secret,
            "--control",
            &control,
        ],
    );
    nat.wait_line(relay, "relay listening", Duration::from_secs(10));
    let sites: Vec<Site> = kinds.iter().map(|k| nat.add_site(*k)).collect();
    let code = nat.create_party_in(srv.node, &control, &[]);
    let started = Instant::now();
    for site in &sites {
        let p = nat.spawn_join(site.host, &code, &[]);
        nat.wait_joined(p);
    }
    Party {
        nat,
        sites,
        relay: rly.ips[0],
        started,
    }
}

/// `virtual IP → (state, connection_type)` of every peer in `site`'s status.
fn paths(status: &Value) -> BTreeMap<String, (String, String)> {
    status["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .map(|p| {
                    let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (text("virtual_ip"), (text("state"), text("connection_type")))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn expected(a: NatKind, b: NatKind) -> &'static str {
    if a.punchable_with(b) {
        "direct"
    } else {
        "relayed"
    }
}

#[test]
fn every_nat_pair_connects_direct_where_punching_works_and_relayed_where_not() {
    // One member behind each kind of NAT and one with none, plus a second symmetric one so
    // that symmetric↔symmetric is in the matrix too.
    let mut kinds = NatKind::ALL.to_vec();
    kinds.push(NatKind::Symmetric);
    let p = party("natmx", &kinds);
    let nat = &p.nat;
    let vip = |s: &Site| -> String {
        nat.status(s.host).unwrap()["self"]["virtual_ip"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let vips: Vec<String> = p.sites.iter().map(vip).collect();

    for site in &p.sites {
        let status = wait_until(
            &format!("{} to classify its NAT", site.kind.name()),
            CONVERGE,
            || {
                let s = nat.status(site.host)?;
                if s["self"]["nat_type"] == "unknown" {
                    Err(format!("still unknown: {}", s["self"]))
                } else {
                    Ok(s)
                }
            },
        );
        assert_eq!(
            status["self"]["nat_type"],
            site.kind.name(),
            "the member behind a {} router: {}",
            site.kind.name(),
            status["self"]
        );
        let public = status["self"]["public_endpoint"]
            .as_str()
            .unwrap_or_default();
        assert!(
            public.starts_with(&format!("{}:", site.public_ip)),
            "{}: public endpoint {public} is not on {}",
            site.kind.name(),
            site.public_ip
        );
    }

    let mut report = String::new();
    for (i, a) in p.sites.iter().enumerate() {
        let want: BTreeMap<String, (String, String)> = p
            .sites
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, b)| {
                let path = expected(a.kind, b.kind).to_string();
                (vips[j].clone(), ("connected".to_string(), path))
            })
            .collect();
        let took = wait_until(
            &format!("{}'s paths to settle", a.kind.name()),
            CONVERGE,
            || {
                let got = paths(&nat.status(a.host)?);
                if got == want {
                    Ok(p.started.elapsed())
                } else {
                    Err(format!("want {want:?}\n got {got:?}"))
                }
            },
        );
        report.push_str(&format!("{:<22} settled after {took:.1?}\n", a.kind.name()));
    }
    println!("{report}");

    // Every pair carries traffic, both ways, on the path status shows.
    for (i, a) in p.sites.iter().enumerate() {
        for (j, _) in p.sites.iter().enumerate().filter(|(j, _)| *j != i) {
            let target: Ipv4Addr = vips[j].parse().unwrap();
            nat.wait_ping(a.host, target, Duration::from_secs(20));
        }
    }
    let relayed_peers: usize = p
        .sites
        .iter()
        .map(|s| {
            nat.status(s.host).unwrap()["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|peer| peer["connection_type"] == "relayed")
                .inspect(|peer| {
                    assert_eq!(
                        peer["relay"],
                        format!("{}:3479", p.relay),
                        "relayed through the relay"
                    )
                })
                .count()
        })
        .sum();
    let want_relayed = p
        .sites
        .iter()
        .flat_map(|a| p.sites.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.index != b.index && !a.kind.punchable_with(b.kind))
        .count();
    assert!(want_relayed > 0, "the matrix has relayed pairs");
    assert_eq!(
        relayed_peers, want_relayed,
        "relayed pairs, seen from both ends"
    );
}
