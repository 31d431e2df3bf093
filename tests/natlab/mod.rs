//! The NAT lab: an "internet", hosts on it, and sites behind Linux routers that reproduce the
//! NAT behaviours of RFC 4787 with nftables (design.md section 6, issue 4).
//!
//! Use it with `mod natlab;` alone: it brings its own copy of `tests/lab/mod.rs` as
//! [`natlab::lab`](lab) (`BIN`, `Finished`, `wait_until`, …; a second `mod lab;` in the same
//! test would be a second, incompatible copy). A [`NatLab`] derefs to the [`lab::Lab`] guard
//! underneath, so `exec`, `spawn`, `stdout`, `wait_line`, `lp`, `status`, `spawn_join`
//! (member name `m<node index>`)… work on every node: internet hosts, routers, site hosts.
//! [`NAT_PROBE`] (`tests/programs/nat_probe.py`) is a UDP reflector and client for tests that
//! need plain UDP: mappings, filtering, simultaneous open.
//!
//! # Topology and address plan
//!
//! ```text
//!   <base>-inet: bridge br0 = "the internet", 203.0.113.0/24 (RFC 5737, only inside the lab)
//!    │ port <tag>            │ port r<i>                          │ port s<i>
//!   <base>-<tag>            <base>-r<i> (router of site i)       <base>-h<i> (site i, no NAT)
//!   internet host           wan 203.0.113.(101+i)/24             eth0 203.0.113.(101+i)/24
//!   eth0 203.0.113.N/24     lan 192.168.(i+1).1/24
//!   (+ a second address)     │ veth
//!                           <base>-h<i> (the host of site i)
//!                           eth0 192.168.(i+1).2/24, default via 192.168.(i+1).1
//! ```
//!
//! - Internet hosts ([`NatLab::add_internet_host`]) take 203.0.113.1, .2, … in order; a host
//!   with two addresses (a STUN responder that tests filtering) takes two in a row.
//! - Site `i` ([`NatLab::add_site`]) owns 203.0.113.(101+i): its router's WAN address, or the
//!   host's own address for [`NatKind::Open`]. Its LAN is 192.168.(i+1).0/24 (router .1,
//!   host .2), a direct veth between router and host.
//! - The bridge lives in a namespace of its own: a bridge in the root namespace of these
//!   machines passed broadcasts but dropped unicast between namespaces (design.md).
//!
//! Namespaces are named `<base>-…` with the `lpt-<pid>-<n>-<tag>` base of [`lab::Lab`], so they
//! are unique per test and swept like every other lab's when a test binary dies; dropping the
//! lab (also on panic) stops every process it started by PID and deletes every namespace.
//!
//! # The routers: one nftables table `ip natlab` per site
//!
//! Every router forwards (`net.ipv4.ip_forward=1`) and has the WAN firewall of a home router:
//! `forward` and `input` drop everything from the WAN that is not part of a flow the LAN
//! started (`ct state established,related`), except, for the cone kinds, flows the cone map
//! DNATed (`ct status dnat`). Without that firewall an inbound packet that arrives first would
//! leave a conntrack entry that changes the mapping the host gets later. What differs per kind:
//!
//! | kind | mapping | filtering | rules |
//! |---|---|---|---|
//! | [`NatKind::Open`] | none | none | no router: the host is on the internet |
//! | [`NatKind::FullCone`] | endpoint-independent | endpoint-independent | `masquerade`; map `cone` *public port → host port*, filled by every UDP packet leaving the WAN; prerouting `dnat to HOST : udp dport map @cone` |
//! | [`NatKind::RestrictedCone`] | endpoint-independent | address-dependent | `masquerade`; map `cone` *remote address . public port → host port*; prerouting `dnat to HOST : ip saddr . udp dport map @cone` |
//! | [`NatKind::PortRestrictedCone`] | endpoint-independent | address-and-port-dependent | `masquerade` alone (conntrack lets in replies from exactly the address:port the host sent to) |
//! | [`NatKind::Symmetric`] | address-and-port-dependent | address-and-port-dependent | `masquerade fully-random` (a new random public port per destination) |
//!
//! The cone map is filled in a `postrouting` filter chain at priority `srcnat + 10`, after
//! masquerade has rewritten the source, so `udp sport` is the public port; the host port is
//! `ct original proto-src` for flows the host started and `ct reply proto-src` for replies on
//! flows the map DNATed. Elements live 2 minutes after the host last used them (Linux's
//! assured-UDP conntrack timeout). Masquerade keeps the host's port when it is free, so the
//! public port normally equals the host's; the map does not depend on that. [`nft_rules`] is
//! the exact text loaded. After loading, the router's conntrack table is flushed
//! (`conntrack -F`), or old flows would keep their mappings; [`NatLab::set_rules`] replaces a
//! router's rules and flushes too, [`NatLab::flush_conntrack`] only flushes.
//!
//! Measured with this lab (tests/e2e_natlab.rs): simultaneous UDP hole punching works for every
//! pair of kinds except port-restricted↔symmetric and symmetric↔symmetric
//! ([`NatKind::punchable_with`]).
//!
//! # Using it
//!
//! ```ignore
//! let mut nat = NatLab::new("mytest");
//! let stun = nat.add_internet_host("stun", 2);        // two addresses
//! let a = nat.add_site(NatKind::FullCone);
//! let b = nat.add_site(NatKind::Symmetric);
//! let p = nat.spawn(stun.node, "server", &[BIN, "server", …]);   // stopped on drop
//! nat.run(&a, &["ping", "-c1", &stun.ips[0].to_string()]).expect_success();
//! let flows = nat.conntrack(&a);                       // the router's UDP mappings
//! ```

#![allow(dead_code)]

#[path = "../lab/mod.rs"]
pub mod lab;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Deref;

use lab::{ip, Finished, Lab, Proc};

/// The internet's prefix length (203.0.113.0/24).
pub const INTERNET_PREFIX: u8 = 24;
/// How long a cone-map element lives after the host last used it.
pub const CONE_TIMEOUT: &str = "2m";
/// The probe tool (see its docstring).
pub const NAT_PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/programs/nat_probe.py");

/// First internet host address (203.0.113.N).
const FIRST_HOST: u8 = 1;
/// Site `i` owns 203.0.113.(FIRST_SITE + i).
const FIRST_SITE: u8 = 101;

/// The NAT behaviour of a site's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatKind {
    /// No NAT: the host sits directly on the internet, no firewall.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (`masquerade`).
    PortRestrictedCone,
    /// Address-and-port-dependent mapping and filtering (`masquerade fully-random`).
    Symmetric,
}

impl NatKind {
    /// Every kind, from the most to the least permissive.
    pub const ALL: [NatKind; 5] = [
        NatKind::Open,
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ];

    /// The name `status` uses for this NAT type (`self.nat_type`, issue 4).
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::FullCone => "full_cone",
            NatKind::RestrictedCone => "restricted_cone",
            NatKind::PortRestrictedCone => "port_restricted_cone",
            NatKind::Symmetric => "symmetric",
        }
    }

    /// Whether the mapping is the same whatever the destination (RFC 4787 section 4.1).
    pub fn endpoint_independent_mapping(self) -> bool {
        self != NatKind::Symmetric
    }

    /// Whether simultaneous UDP punching gets through between hosts behind `self` and
    /// `other`, as measured in this lab (design.md section 6): every pair except
    /// port-restricted↔symmetric and symmetric↔symmetric.
    pub fn punchable_with(self, other: NatKind) -> bool {
        use NatKind::{PortRestrictedCone, Symmetric};
        !matches!(
            (self, other),
            (PortRestrictedCone, Symmetric)
                | (Symmetric, PortRestrictedCone)
                | (Symmetric, Symmetric)
        )
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A host on the internet.
#[derive(Debug, Clone)]
pub struct InternetHost {
    /// Node index in the lab (for `exec`, `spawn`, …).
    pub node: usize,
    /// Its addresses on `eth0`, the first one primary.
    pub ips: Vec<Ipv4Addr>,
}

/// A site: a host, behind a router unless the kind is [`NatKind::Open`].
#[derive(Debug, Clone)]
pub struct Site {
    /// Site number `i` (addresses, names).
    pub index: usize,
    /// Its NAT behaviour.
    pub kind: NatKind,
    /// Node index of the host.
    pub host: usize,
    /// Node index of the router (`None` for [`NatKind::Open`]).
    pub router: Option<usize>,
    /// The host's own address (192.168.(i+1).2, or the public address when open).
    pub host_ip: Ipv4Addr,
    /// The site's address on the internet: the router's WAN address, or the host's when open.
    pub public_ip: Ipv4Addr,
}

/// One UDP conntrack entry of a router: original and reply direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Source of the original direction (the host, for flows it started).
    pub orig_src: SocketAddrV4,
    /// Destination of the original direction.
    pub orig_dst: SocketAddrV4,
    /// Source of the reply direction.
    pub reply_src: SocketAddrV4,
    /// Destination of the reply direction: the public mapping of a flow the host started.
    pub reply_dst: SocketAddrV4,
}

/// The NAT lab guard. See the module documentation.
pub struct NatLab {
    lab: Lab,
    next_host: u8,
    sites: Vec<Site>,
}

impl Deref for NatLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl NatLab {
    /// An empty internet. `tag` (a few letters) names the test in namespace names.
    pub fn new(tag: &str) -> NatLab {
        let lab = Lab::with_bridge(tag, 0, "inet");
        NatLab {
            lab,
            next_host: FIRST_HOST,
            sites: Vec::new(),
        }
    }

    /// Adds internet host `<base>-<tag>` with `addresses` (1 or 2) consecutive addresses on
    /// `eth0`. `tag` is also its bridge port: at most 15 bytes, not `br0`, `r<i>` or `s<i>`.
    pub fn add_internet_host(&mut self, tag: &str, addresses: usize) -> InternetHost {
        assert!(
            (1..=2).contains(&addresses),
            "1 or 2 addresses, not {addresses}"
        );
        assert!(
            tag.len() <= 15
                && tag != "br0"
                && !(tag.len() > 1
                    && (tag.starts_with('r') || tag.starts_with('s'))
                    && tag[1..].bytes().all(|b| b.is_ascii_digit())),
            "host tag {tag:?} must be at most 15 bytes and not clash with site ports"
        );
        let ips: Vec<Ipv4Addr> = (0..addresses)
            .map(|k| Ipv4Addr::new(203, 0, 113, self.next_host + k as u8))
            .collect();
        assert!(
            ips.iter().all(|a| a.octets()[3] < FIRST_SITE),
            "too many internet hosts"
        );
        self.next_host += addresses as u8;
        let node = self.lab.add_bare(tag, ips[0]);
        let ns = self.lab.node(node).ns.clone();
        self.plug_into_internet(tag, &ns);
        for a in &ips {
            let cidr = format!("{a}/{INTERNET_PREFIX}");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        }
        InternetHost { node, ips }
    }

    /// Adds site `i` (the next number) of `kind`: see the module documentation.
    pub fn add_site(&mut self, kind: NatKind) -> Site {
        let index = self.sites.len();
        let i = u8::try_from(index).expect("at most 154 sites");
        let public_ip = Ipv4Addr::new(
            203,
            0,
            113,
            FIRST_SITE.checked_add(i).expect("too many sites"),
        );
        let public = format!("{public_ip}/{INTERNET_PREFIX}");
        let site = if kind == NatKind::Open {
            let host = self.lab.add_bare(&format!("h{index}"), public_ip);
            let ns = self.lab.node(host).ns.clone();
            self.plug_into_internet(&format!("s{index}"), &ns);
            ip(&["-n", &ns, "addr", "add", &public, "dev", "eth0"]);
            Site {
                index,
                kind,
                host,
                router: None,
                host_ip: public_ip,
                public_ip,
            }
        } else {
            let lan_gw = Ipv4Addr::new(192, 168, i + 1, 1);
            let host_ip = Ipv4Addr::new(192, 168, i + 1, 2);
            let router = self.lab.add_bare(&format!("r{index}"), public_ip);
            let host = self.lab.add_bare(&format!("h{index}"), host_ip);
            let r_ns = self.lab.node(router).ns.clone();
            let h_ns = self.lab.node(host).ns.clone();
            let inet = self.lab.bridge_ns().to_string();
            let port = format!("r{index}");
            ip(&[
                "-n", &inet, "link", "add", "name", &port, "type", "veth", "peer", "name", "wan",
                "netns", &r_ns,
            ]);
            ip(&[
                "-n", &inet, "link", "set", "dev", &port, "master", "br0", "up",
            ]);
            ip(&["-n", &r_ns, "addr", "add", &public, "dev", "wan"]);
            ip(&["-n", &r_ns, "link", "set", "wan", "up"]);
            ip(&[
                "-n", &r_ns, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns",
                &h_ns,
            ]);
            let gw = format!("{lan_gw}/24");
            ip(&["-n", &r_ns, "addr", "add", &gw, "dev", "lan"]);
            ip(&["-n", &r_ns, "link", "set", "lan", "up"]);
            let own = format!("{host_ip}/24");
            ip(&["-n", &h_ns, "addr", "add", &own, "dev", "eth0"]);
            ip(&["-n", &h_ns, "link", "set", "eth0", "up"]);
            let via = lan_gw.to_string();
            ip(&["-n", &h_ns, "route", "add", "default", "via", &via]);
            self.lab
                .exec(router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
                .expect_success();
            let rules = self.lab.dir().join(format!("r{index}.nft"));
            std::fs::write(&rules, nft_rules(kind, host_ip)).expect("write nft rules");
            let rules = rules.display().to_string();
            self.lab
                .exec(router, &["nft", "-f", &rules])
                .expect_success();
            let site = Site {
                index,
                kind,
                host,
                router: Some(router),
                host_ip,
                public_ip,
            };
            self.sites.push(site.clone());
            self.flush_conntrack(&site);
            return site;
        };
        self.sites.push(site.clone());
        site
    }

    /// Every site added so far.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Runs `argv` in the site's host.
    pub fn run(&self, site: &Site, argv: &[&str]) -> Finished {
        self.lab.exec(site.host, argv)
    }

    /// Starts `argv` in the background in the site's host (stopped when the lab drops).
    pub fn spawn_in(&self, site: &Site, label: &str, argv: &[&str]) -> Proc {
        self.lab.spawn(site.host, label, argv)
    }

    /// Runs the probe tool in node `node`: `python3 nat_probe.py ARGS…`.
    pub fn probe(&self, node: usize, args: &[&str]) -> Finished {
        let mut argv = vec![lab::python(), NAT_PROBE];
        argv.extend_from_slice(args);
        self.lab.exec(node, &argv)
    }

    /// Starts the probe tool's reflector in internet host `host` on every `ADDR:PORT` given,
    /// and waits until it is ready.
    pub fn spawn_reflector(&self, host: &InternetHost, binds: &[SocketAddrV4]) -> Proc {
        let binds: Vec<String> = binds.iter().map(|b| b.to_string()).collect();
        let mut argv = vec![lab::python(), NAT_PROBE, "reflect"];
        argv.extend(binds.iter().map(String::as_str));
        let p = self.lab.spawn(host.node, "reflector", &argv);
        self.lab
            .wait_line(p, "ready", std::time::Duration::from_secs(10));
        p
    }

    /// Replaces the site's router rules with `rules` (nftables syntax, like [`nft_rules`])
    /// and flushes its conntrack table, so no old flow keeps its old mapping. `site.kind`
    /// still names the kind the site was made as.
    pub fn set_rules(&self, site: &Site, rules: &str) {
        let r = site.router.expect("an open site has no router");
        let path = self.lab.dir().join(format!("r{}-custom.nft", site.index));
        std::fs::write(&path, format!("flush ruleset\n{rules}")).expect("write nft rules");
        let path = path.display().to_string();
        self.lab.exec(r, &["nft", "-f", &path]).expect_success();
        self.flush_conntrack(site);
    }

    /// `conntrack -F` on the site's router (nothing for an open site).
    pub fn flush_conntrack(&self, site: &Site) {
        if let Some(r) = site.router {
            self.lab.exec(r, &["conntrack", "-F"]).expect_success();
        }
    }

    /// The UDP conntrack entries of the site's router (`conntrack -L -p udp`).
    pub fn conntrack(&self, site: &Site) -> Vec<Flow> {
        let Some(r) = site.router else {
            return Vec::new();
        };
        let out = self
            .lab
            .exec(r, &["conntrack", "-L", "-p", "udp"])
            .expect_success();
        out.stdout.lines().filter_map(parse_flow).collect()
    }

    /// The router's current ruleset with set elements (`nft list ruleset`), for messages.
    pub fn ruleset(&self, site: &Site) -> String {
        match site.router {
            Some(r) => self.lab.exec(r, &["nft", "list", "ruleset"]).stdout,
            None => String::new(),
        }
    }

    /// Drops UDP between the site and `remote` (an address on the internet) in the site's
    /// router, both ways, in a table `ip faults` of its own (priority before the NAT
    /// firewall); everything else, relays and the control server included, still passes.
    /// Undo with [`NatLab::unblock_udp`].
    pub fn block_udp(&self, site: &Site, remote: Ipv4Addr) {
        let r = site.router.expect("an open site has no router");
        let rules = format!(
            "table ip faults {{\n    chain forward {{\n        \
             type filter hook forward priority filter - 10; policy accept;\n        \
             ip saddr {remote} meta l4proto udp drop\n        \
             ip daddr {remote} meta l4proto udp drop\n    }}\n}}\n"
        );
        let path = self.lab.dir().join(format!("r{}-faults.nft", site.index));
        std::fs::write(&path, rules).expect("write nft rules");
        let path = path.display().to_string();
        self.lab.exec(r, &["nft", "-f", &path]).expect_success();
    }

    /// Removes what [`NatLab::block_udp`] added.
    pub fn unblock_udp(&self, site: &Site) {
        let r = site.router.expect("an open site has no router");
        self.lab
            .exec(r, &["nft", "delete", "table", "ip", "faults"])
            .expect_success();
    }

    /// Delays every packet the site's host sends to the internet by `ms` milliseconds (its
    /// replies come back undelayed), until the returned process is stopped. For kernels
    /// without `sch_netem` (`tc qdisc … netem` fails with "Specified qdisc kind is unknown"):
    /// a small Python loop owns a tun device `dly` in the host, policy routing sends the
    /// host's own packets for 203.0.113.0/24 into it (`ip rule iif lo lookup 100`), and the
    /// loop writes them back after the delay, from where the host forwards them to its
    /// router as usual. The delay sits before the router, so its NAT sees ordinary packets.
    /// Stopping the process removes the device and its route, and with them the delay.
    pub fn delay_egress(&self, site: &Site, ms: u32) -> Proc {
        let ms = ms.to_string();
        let p = self.lab.spawn(
            site.host,
            "delay",
            &[lab::python(), "-c", DELAY_TUN, "dly", &ms],
        );
        self.lab
            .wait_line(p, "ready", std::time::Duration::from_secs(10));
        let h = site.host;
        for argv in [
            &["ip", "link", "set", "dly", "up"][..],
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.dly.rp_filter=0",
                "net.ipv4.conf.dly.accept_local=1",
            ],
            &[
                "ip",
                "route",
                "replace",
                "203.0.113.0/24",
                "dev",
                "dly",
                "table",
                "100",
            ],
        ] {
            self.lab.exec(h, argv).expect_success();
        }
        let rules = self.lab.exec(h, &["ip", "rule", "show", "pref", "100"]);
        if !rules.stdout.contains("lookup 100") {
            self.lab
                .exec(
                    h,
                    &[
                        "ip", "rule", "add", "iif", "lo", "lookup", "100", "pref", "100",
                    ],
                )
                .expect_success();
        }
        p
    }

    /// Plugs namespace `ns` into the internet bridge: bridge port `port`, `eth0` in `ns`, up.
    fn plug_into_internet(&self, port: &str, ns: &str) {
        let inet = self.lab.bridge_ns().to_string();
        ip(&[
            "-n", &inet, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ]);
        ip(&[
            "-n", &inet, "link", "set", "dev", port, "master", "br0", "up",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }
}

/// The nftables ruleset a router of `kind` loads, for a host at `host` on its `lan`.
/// Panics for [`NatKind::Open`] (no router).
pub fn nft_rules(kind: NatKind, host: Ipv4Addr) -> String {
    let masquerade = match kind {
        NatKind::Open => panic!("an open site has no router"),
        NatKind::Symmetric => "masquerade fully-random",
        _ => "masquerade",
    };
    // The cone map: its key type, the key a packet leaving the WAN writes (after SNAT: the
    // public source port) and the key an inbound packet looks up.
    let cone = match kind {
        NatKind::FullCone => Some(("inet_service", "udp sport", "udp dport")),
        NatKind::RestrictedCone => Some((
            "ipv4_addr . inet_service",
            "ip daddr . udp sport",
            "ip saddr . udp dport",
        )),
        _ => None,
    };
    let mut out = String::from("table ip natlab {\n");
    if let Some((key_type, _, _)) = cone {
        out += &format!(
            "    map cone {{\n        type {key_type} : inet_service\n        \
             flags timeout\n        timeout {CONE_TIMEOUT}\n    }}\n"
        );
    }
    out += "    chain prerouting {\n        type nat hook prerouting priority dstnat; policy accept;\n";
    if let Some((_, _, lookup)) = cone {
        out += &format!(
            "        iifname \"wan\" meta l4proto udp dnat to {host} : {lookup} map @cone\n"
        );
    }
    out += "    }\n";
    out += &format!(
        "    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n        \
         oifname \"wan\" {masquerade}\n    }}\n"
    );
    if let Some((_, learn, _)) = cone {
        out += &format!(
            "    chain learn {{\n        type filter hook postrouting priority srcnat + 10; policy accept;\n        \
             oifname \"wan\" meta l4proto udp ct direction original update @cone {{ {learn} : ct original proto-src }}\n        \
             oifname \"wan\" meta l4proto udp ct direction reply update @cone {{ {learn} : ct reply proto-src }}\n    }}\n"
        );
    }
    out += "    chain forward {\n        type filter hook forward priority filter; policy drop;\n        \
            ct state established,related accept\n        \
            iifname \"lan\" oifname \"wan\" accept\n";
    if cone.is_some() {
        out += "        iifname \"wan\" oifname \"lan\" ct status dnat accept\n";
    }
    out += "    }\n";
    out +=
        "    chain input {\n        type filter hook input priority filter; policy drop;\n        \
            iifname \"lo\" accept\n        ct state established,related accept\n        \
            iifname \"lan\" accept\n    }\n";
    out += "}\n";
    out
}

/// Parses one line of `conntrack -L -p udp`:
/// `udp 17 29 src=A dst=B sport=P dport=Q [UNREPLIED] src=B dst=C sport=Q dport=R …`.
pub fn parse_flow(line: &str) -> Option<Flow> {
    if !line.starts_with("udp") {
        return None;
    }
    let field = |name: &str| -> Vec<&str> {
        line.split_whitespace()
            .filter_map(|w| w.strip_prefix(name))
            .collect()
    };
    let (src, dst, sport, dport) = (
        field("src="),
        field("dst="),
        field("sport="),
        field("dport="),
    );
    if src.len() < 2 || dst.len() < 2 || sport.len() < 2 || dport.len() < 2 {
        return None;
    }
    let at = |a: &str, p: &str| -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(a.parse().ok()?, p.parse().ok()?))
    };
    Some(Flow {
        orig_src: at(src[0], sport[0])?,
        orig_dst: at(dst[0], dport[0])?,
        reply_src: at(src[1], sport[1])?,
        reply_dst: at(dst[1], dport[1])?,
    })
}

/// The delay loop of [`NatLab::delay_egress`]: `python3 -c DELAY_TUN IFNAME MS` opens tun
/// device IFNAME (no packet info), prints `ready`, and writes every packet it reads back
/// into the device MS milliseconds later, in order.
pub const DELAY_TUN: &str = r#"
import fcntl, os, select, struct, sys, time
from collections import deque
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))
delay = float(sys.argv[2]) / 1000.0
queue = deque()
print("ready", flush=True)
while True:
    timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
    if select.select([fd], [], [], timeout)[0]:
        queue.append((time.monotonic() + delay, os.read(fd, 65535)))
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        os.write(fd, queue.popleft()[1])
"#;
