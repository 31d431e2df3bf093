//! The NAT lab models what it claims (tests/natlab/mod.rs), observed with plain UDP
//! (tests/programs/nat_probe.py) from hosts on the lab's internet. Needs root.
//!
//! - every router kind maps and filters as its name says: the mapping a host gets towards
//!   two internet hosts, the router's conntrack table, and which of three sources (the address
//!   and port the host talked to, the same address from another port, another address) get a
//!   packet in afterwards;
//! - simultaneous hole punching through a reflector works for exactly the pairs of kinds that
//!   design.md says, and fails for port-restricted↔symmetric and symmetric↔symmetric.

mod natlab;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use natlab::lab::Finished;
use natlab::{InternetHost, NatKind, NatLab, Site};

/// The reflectors' port; the filtering reflector also listens on the next one.
const REFLECT_PORT: u16 = 3478;
/// Local port the classification probes use.
const PROBE_PORT: u16 = 40000;
/// Port an internet host sends an unsolicited packet from (plus the site's index).
const UNSOLICITED_PORT: u16 = 40100;
/// First local port of the punching pairs (pair `p` uses `PUNCH_PORT + p` on both hosts).
const PUNCH_PORT: u16 = 41000;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// `nat_probe.py map` from `site` on `port`: the mapping each server saw.
fn mappings(nat: &NatLab, site: &Site, port: u16, servers: &[SocketAddrV4]) -> Vec<SocketAddrV4> {
    let port = port.to_string();
    let servers_text: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    let mut args = vec!["map", "--port", &port];
    args.extend(servers_text.iter().map(String::as_str));
    let out = nat.probe(site.host, &args).expect_success();
    servers
        .iter()
        .map(|server| {
            let prefix = format!("mapped {server} ");
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|m| m.trim().parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{} host got no mapping from {server}: {}",
                        site.kind, out.stdout
                    )
                })
        })
        .collect()
}

/// `nat_probe.py filter` from `site` on `port` towards `server`: the sources that got in.
fn admitted(nat: &NatLab, site: &Site, port: u16, server: SocketAddrV4) -> BTreeSet<SocketAddrV4> {
    let port = port.to_string();
    let server = server.to_string();
    let out = nat
        .probe(site.host, &["filter", "--port", &port, &server])
        .expect_success();
    assert!(out.stdout.contains("done"), "filter probe: {}", out.stdout);
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
        .collect()
}

/// What one site showed the classification test.
struct Observed {
    towards_a: SocketAddrV4,
    towards_b: SocketAddrV4,
    again_after_flush: SocketAddrV4,
    conntrack_a: Option<SocketAddrV4>,
    conntrack_b: Option<SocketAddrV4>,
    admitted: BTreeSet<SocketAddrV4>,
}

fn observe(nat: &NatLab, site: &Site, a: &InternetHost, b: &InternetHost) -> Observed {
    let to_a = at(a.ips[0], REFLECT_PORT);
    let to_b = at(b.ips[0], REFLECT_PORT);
    // An unsolicited packet to the port the host is about to use: the WAN firewall drops it
    // without a trace, so it cannot change the mapping the host gets next.
    let target = at(site.public_ip, PROBE_PORT).to_string();
    // Sites are observed in parallel: each sends from a port of its own.
    let from = at(b.ips[0], UNSOLICITED_PORT + site.index as u16);
    let from_port = from.port().to_string();
    nat.probe(
        b.node,
        &["send", "--port", &from_port, &target, "unsolicited"],
    )
    .expect_success();
    let traces: Vec<_> = nat
        .conntrack(site)
        .into_iter()
        .filter(|f| f.orig_src == from)
        .collect();
    assert!(
        traces.is_empty(),
        "{}: an unsolicited packet left conntrack entries {traces:?}",
        site.kind
    );
    let m = mappings(nat, site, PROBE_PORT, &[to_a, to_b]);
    let flows = nat.conntrack(site);
    let public_of = |dst: SocketAddrV4| {
        flows
            .iter()
            .find(|f| f.orig_src == at(site.host_ip, PROBE_PORT) && f.orig_dst == dst)
            .map(|f| f.reply_dst)
    };
    let (conntrack_a, conntrack_b) = (public_of(to_a), public_of(to_b));
    // The same source port again, with the router's memory wiped: an EIM router gives the
    // same public port back.
    nat.flush_conntrack(site);
    let again_after_flush = mappings(nat, site, PROBE_PORT, &[to_a])[0];
    Observed {
        towards_a: m[0],
        towards_b: m[1],
        again_after_flush,
        conntrack_a,
        conntrack_b,
        admitted: admitted(nat, site, PROBE_PORT + 1, to_a),
    }
}

#[test]
fn each_router_kind_maps_and_filters_as_its_name_says() {
    let mut nat = NatLab::new("ncls");
    // A: the filtering reflector, on two addresses and two ports. B: a second destination.
    let a = nat.add_internet_host("a", 2);
    let b = nat.add_internet_host("b", 1);
    let same = at(a.ips[0], REFLECT_PORT);
    let other_port = at(a.ips[0], REFLECT_PORT + 1);
    let other_address = at(a.ips[1], REFLECT_PORT);
    nat.spawn_reflector(&a, &[same, other_port, other_address]);
    nat.spawn_reflector(&b, &[at(b.ips[0], REFLECT_PORT)]);
    let sites: Vec<Site> = NatKind::ALL.iter().map(|k| nat.add_site(*k)).collect();

    let observed: Vec<Observed> = std::thread::scope(|s| {
        let handles: Vec<_> = sites
            .iter()
            .map(|site| s.spawn(|| observe(&nat, site, &a, &b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (site, o) in sites.iter().zip(&observed) {
        let kind = site.kind;
        let ruleset = || nat.ruleset(site);
        println!(
            "{kind:<22} towards A {} towards B {} (conntrack {:?} / {:?}), again {}, admitted {:?}",
            o.towards_a, o.towards_b, o.conntrack_a, o.conntrack_b, o.again_after_flush, o.admitted
        );
        assert_eq!(o.towards_a.ip(), &site.public_ip, "{kind}: public address");
        assert_eq!(o.towards_b.ip(), &site.public_ip, "{kind}: public address");
        if kind.endpoint_independent_mapping() {
            assert_eq!(
                o.towards_a, o.towards_b,
                "{kind}: the same source port must map to the same public port towards A and B"
            );
            assert_eq!(
                o.again_after_flush, o.towards_a,
                "{kind}: the mapping must be stable for the same source port"
            );
        } else {
            assert_ne!(
                o.towards_a.port(),
                o.towards_b.port(),
                "{kind}: a symmetric NAT maps each destination to its own public port"
            );
        }
        if kind == NatKind::Open {
            assert_eq!(
                o.towards_a,
                at(site.host_ip, PROBE_PORT),
                "no NAT: no translation"
            );
        } else {
            assert_eq!(
                o.conntrack_a,
                Some(o.towards_a),
                "{kind}: conntrack towards A\n{}",
                ruleset()
            );
            assert_eq!(
                o.conntrack_b,
                Some(o.towards_b),
                "{kind}: conntrack towards B\n{}",
                ruleset()
            );
        }
        let expected: BTreeSet<SocketAddrV4> = match kind {
            NatKind::Open | NatKind::FullCone => [same, other_port, other_address].into(),
            NatKind::RestrictedCone => [same, other_port].into(),
            NatKind::PortRestrictedCone | NatKind::Symmetric => [same].into(),
        };
        assert_eq!(
            o.admitted,
            expected,
            "{kind}: after sending to {same}, these sources should get a packet in\n{}",
            ruleset()
        );
    }
}

#[test]
fn a_full_cone_lets_anyone_in_even_when_masquerade_changes_the_port() {
    let mut nat = NatLab::new("nmap");
    let a = nat.add_internet_host("a", 2);
    let same = at(a.ips[0], REFLECT_PORT);
    let other_address = at(a.ips[1], REFLECT_PORT);
    nat.spawn_reflector(&a, &[same, other_address]);
    let site = nat.add_site(NatKind::FullCone);
    // The cone map must send inbound packets to the host's port, not the public one.
    let standard = natlab::nft_rules(NatKind::FullCone, site.host_ip);
    let ports_changed = standard.replace(
        "oifname \"wan\" masquerade\n",
        "oifname \"wan\" meta l4proto udp masquerade to :50000-50009\n",
    );
    assert_ne!(standard, ports_changed, "the masquerade rule moved");
    nat.set_rules(&site, &ports_changed);

    let mapped = mappings(&nat, &site, PROBE_PORT, &[same])[0];
    assert_eq!(mapped.ip(), &site.public_ip);
    assert!(
        (50000..=50009).contains(&mapped.port()),
        "masquerade should have picked a port in 50000-50009, not {mapped}"
    );
    let got_in = admitted(&nat, &site, PROBE_PORT, same);
    assert_eq!(
        got_in,
        [same, other_address].into(),
        "after sending to {same} from port {PROBE_PORT} (public {mapped}), any address gets in\n{}",
        nat.ruleset(&site)
    );
}

/// Runs one simultaneous-open attempt between `x` and `y` (local port `port` on both) through
/// the reflector; returns whether x heard y and whether y heard x.
fn punch(nat: &NatLab, x: &Site, y: &Site, port: u16, reflector: SocketAddrV4) -> (bool, bool) {
    let port_text = port.to_string();
    let refl = reflector.to_string();
    let (xid, yid) = (format!("p{port}x"), format!("p{port}y"));
    let run = |site: &Site, me: &str, peer: &str| {
        nat.probe(
            site.host,
            &[
                "punch",
                "--port",
                &port_text,
                "--reflector",
                &refl,
                "--me",
                me,
                "--peer",
                peer,
                "--tries",
                "12",
                "--interval",
                "0.25",
            ],
        )
        .expect_success()
    };
    let (ox, oy) = std::thread::scope(|s| {
        let hx = s.spawn(|| run(x, &xid, &yid));
        let hy = s.spawn(|| run(y, &yid, &xid));
        (hx.join().unwrap(), hy.join().unwrap())
    });
    let heard = |out: &Finished| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("received "))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("punch printed no count: {}", out.stdout))
            > 0
    };
    (heard(&ox), heard(&oy))
}

#[test]
fn simultaneous_punching_gets_through_except_port_restricted_or_symmetric_to_symmetric() {
    let mut nat = NatLab::new("npun");
    let r = nat.add_internet_host("refl", 1);
    let reflector = at(r.ips[0], REFLECT_PORT);
    nat.spawn_reflector(&r, &[reflector]);
    // Two sites of every kind, so that a kind can meet itself.
    let mut by_kind: BTreeMap<NatKind, [Site; 2]> = BTreeMap::new();
    for kind in NatKind::ALL {
        by_kind.insert(kind, [nat.add_site(kind), nat.add_site(kind)]);
    }
    let mut pairs = Vec::new();
    for (i, kx) in NatKind::ALL.iter().enumerate() {
        for ky in &NatKind::ALL[i..] {
            pairs.push((*kx, *ky));
        }
    }

    let measured: BTreeMap<(NatKind, NatKind), (bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(p, &(kx, ky))| {
                let (x, y) = (&by_kind[&kx][0], &by_kind[&ky][1]);
                let port = PUNCH_PORT + p as u16;
                let nat = &nat;
                s.spawn(move || ((kx, ky), punch(nat, x, y, port, reflector)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut table = format!("{:<32}", "(row heard column / column heard row)");
    for k in NatKind::ALL {
        table += &format!(" {:>21}", k.name());
    }
    let mut wrong = Vec::new();
    for kx in NatKind::ALL {
        table += &format!("\n{:<32}", kx.name());
        for ky in NatKind::ALL {
            // (row heard column, column heard row)
            let (a, b) = if kx <= ky {
                measured[&(kx, ky)]
            } else {
                let (a, b) = measured[&(ky, kx)];
                (b, a)
            };
            let through = a && b;
            let cell = format!(
                "{}{} ({}/{})",
                if through { "direct" } else { "no" },
                if through == kx.punchable_with(ky) {
                    ""
                } else {
                    " !!"
                },
                a as u8,
                b as u8
            );
            table += &format!(" {cell:>21}");
            if kx <= ky && through != kx.punchable_with(ky) {
                wrong.push(format!(
                    "{kx}↔{ky}: measured {}, design.md says {}",
                    if through { "through" } else { "blocked" },
                    if kx.punchable_with(ky) {
                        "through"
                    } else {
                        "blocked"
                    }
                ));
            }
        }
    }
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "the punching matrix differs from design.md:\n{}\n{table}",
        wrong.join("\n")
    );
}
