//! End-to-end NAT rebinding with real members in the NAT lab (tests/natlab/mod.rs): two
//! members behind port-restricted cone routers with a direct path, a ping running over it,
//! and then A's router starts mapping A's socket to a new public port. B's router filters A's
//! packets from the new port (B only ever sent to the old one), so the direct path breaks and
//! traffic moves to the relay. The members must follow: A notices its direct path go down,
//! checks its mapping with one STUN request, heartbeats the new public endpoint, B gets it
//! in the roster and punches it, and the direct path comes back at A's new port.
//!
//! Without the check, B learns A's new endpoint only from A's next classification (every
//! 5 min) or heartbeat-driven luck: tens of seconds. Prints `REBIND …` times. Needs root.
//! (The party set-up is `tests/e2e_failover.rs`'s.)

mod natlab;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natlab::lab::{wait_until, Proc, BIN};
use natlab::{nft_rules, NatKind, NatLab, Site};
use serde_json::Value;

/// NAT classification, relay binding, roster propagation and punching.
const CONVERGE: Duration = Duration::from_secs(90);
const SECRET: &str = "a relay secret of at least thirty-two characters";
/// The new public port of A's router. One port, not a range: Linux's masquerade picks a
/// random port of a range for every new flow, which turns the router into a symmetric NAT
/// (a STUN server then sees another port than a peer does); one port keeps it a cone that
/// merely moved, which is what a rebooted home router does.
const NEW_PORT: u16 = 20000;
/// Both members must show each other direct, at the new endpoint, within this (the target
/// is 5 s for B to follow; A's side adds the 5 s a path that was down answers before it takes
/// traffic back).
const BOUND_S: f64 = 10.0;

struct Party {
    nat: NatLab,
    sites: Vec<Site>,
    vips: Vec<Ipv4Addr>,
    _members: Vec<Proc>,
}

/// Two members behind port-restricted cone NATs, a server with STUN on two addresses × two
/// ports, and one relay.
fn party(tag: &str) -> Party {
    let mut nat = NatLab::new(tag);
    let srv = nat.add_internet_host("srv", 2);
    let rly = nat.add_internet_host("rly0", 1);
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
    argv.extend(["--relay-secret-file", &secret, "--rate-limit", "0"]);
    for s in &stun {
        argv.extend(["--stun", s]);
    }
    let server = nat.spawn(srv.node, "server", &argv);
    nat.wait_line(server, "listening", Duration::from_secs(10));
    let control = format!("http://{listen}");
    let at = format!("{}:3479", rly.ips[0]);
    let relay = nat.spawn(
        rly.node,
        "relay",
        &[
            BIN,
            "relay",
            "--listen",
            &at,
            "--secret-file",
            &secret,
            "--control",
            &control,
        ],
    );
    nat.wait_line(relay, "relay listening", Duration::from_secs(10));
    wait_until("the server to list the relay", CONVERGE, || {
        let out = nat.exec(srv.node, &["curl", "-fsS", &format!("{control}/v1/relays")]);
        if out.stdout.contains(at.as_str()) {
            Ok(())
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    });
    let sites: Vec<Site> = (0..2)
        .map(|_| nat.add_site(NatKind::PortRestrictedCone))
        .collect();
    let code = nat.create_party_in(srv.node, &control, &[]);
    let members: Vec<Proc> = sites
        .iter()
        .map(|site| nat.spawn_join(site.host, &code, &[]))
        .collect();
    let vips = members.iter().map(|p| nat.wait_joined(*p).ip).collect();
    Party {
        nat,
        sites,
        vips,
        _members: members,
    }
}

impl Party {
    /// The peer with virtual IP `vip` in the status of the member in site `i`.
    fn peer(&self, i: usize, vip: Ipv4Addr) -> Result<Value, String> {
        let status = self.nat.status(self.sites[i].host)?;
        status["peers"]
            .as_array()
            .and_then(|peers| {
                peers
                    .iter()
                    .find(|p| p["virtual_ip"] == vip.to_string())
                    .cloned()
            })
            .ok_or_else(|| format!("{vip} not among the peers: {status}"))
    }

    /// Site `i`'s view of site `j`'s member: connected, direct, at `endpoint`'s port.
    fn direct_at(&self, i: usize, j: usize, port: u16) -> Result<Value, String> {
        let p = self.peer(i, self.vips[j])?;
        let at = p["endpoint"]
            .as_str()
            .and_then(|e| e.parse::<SocketAddr>().ok())
            .map(|e| e.port());
        if p["state"] == "connected" && p["connection_type"] == "direct" && at == Some(port) {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    }

    /// Probes sent so far on the path site `i` uses to reach site `j`.
    fn probes_in_use(&self, i: usize, j: usize) -> Result<u64, String> {
        let p = self.peer(i, self.vips[j])?;
        p["paths"]
            .as_array()
            .and_then(|paths| paths.iter().find(|x| x["in_use"] == true))
            .and_then(|x| x["probes_sent"].as_u64())
            .ok_or_else(|| format!("no path in use: {p}"))
    }

    /// Waits until the path from site `i` to site `j` has sent two probes since traffic
    /// started, so it is on the busy schedule (`tests/e2e_failover.rs` explains why).
    fn warm_up(&self, i: usize, j: usize) {
        let start = self.probes_in_use(i, j).unwrap();
        wait_until(
            "the path in use to be probed on the busy schedule",
            Duration::from_secs(40),
            || {
                let n = self.probes_in_use(i, j)?;
                if n >= start + 2 {
                    Ok(())
                } else {
                    Err(format!("{} probes since traffic started", n - start))
                }
            },
        );
    }

    /// The public endpoint the member in site `i` publishes.
    fn public_endpoint(&self, i: usize) -> Option<SocketAddr> {
        let status = self.nat.status(self.sites[i].host).ok()?;
        status["self"]["public_endpoint"].as_str()?.parse().ok()
    }
}

/// Unix time in seconds, the clock of `ping -D`.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Seconds since `t0` once `probe` succeeds (polled every 100 ms, at most `timeout`).
fn seconds_until<T>(
    what: &str,
    t0: f64,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> f64 {
    wait_until(what, timeout, || {
        probe()
            .map(|_| unix_now() - t0)
            .map_err(|e| format!("after {:.1} s: {e}", unix_now() - t0))
    })
}

#[test]
fn peers_follow_a_nat_rebinding_back_to_the_direct_path() {
    let p = party("rbnd");
    let a_view = wait_until("A to show B direct", CONVERGE, || {
        let b = p.peer(0, p.vips[1])?;
        if b["state"] == "connected" && b["connection_type"] == "direct" {
            Ok(b)
        } else {
            Err(b.to_string())
        }
    });
    let b_port = a_view["endpoint"]
        .as_str()
        .and_then(|e| e.parse::<SocketAddr>().ok())
        .map(|e| e.port())
        .expect("A knows B's endpoint");
    let old = p.public_endpoint(0).expect("A knows its public endpoint");
    wait_until(
        "B to show A direct at its public endpoint",
        CONVERGE,
        || p.direct_at(1, 0, old.port()),
    );
    assert_ne!(old.port(), NEW_PORT, "the port must move");
    // Traffic both ways keeps both direct paths on the fast probe schedule.
    let target = p.vips[1].to_string();
    let _ping = p.nat.spawn_in(
        &p.sites[0],
        "ping",
        &["ping", "-n", "-i", "0.2", "-W", "1", &target],
    );
    p.nat
        .wait_ping(p.sites[1].host, p.vips[0], Duration::from_secs(10));
    p.warm_up(0, 1);
    p.warm_up(1, 0);

    // A's router maps A's socket to a new public port from now on.
    let remapped = nft_rules(NatKind::PortRestrictedCone, p.sites[0].host_ip).replace(
        "oifname \"wan\" masquerade\n",
        &format!(
            "oifname \"wan\" meta l4proto udp masquerade to :{NEW_PORT}\n        \
             oifname \"wan\" masquerade\n"
        ),
    );
    assert!(remapped.contains(&format!(":{NEW_PORT}")), "{remapped}");
    let t0 = unix_now();
    p.nat.set_rules(&p.sites[0], &remapped);

    let published = seconds_until(
        "A to publish its new public endpoint",
        t0,
        Duration::from_secs(60),
        || match p.public_endpoint(0) {
            Some(e) if e.port() == NEW_PORT => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    println!("REBIND port moved -> A publishes the new endpoint: {published:.2} s");
    let b_follows = seconds_until(
        "B to show A direct at its new port",
        t0,
        Duration::from_secs(60),
        || p.direct_at(1, 0, NEW_PORT),
    );
    println!(
        "REBIND port moved -> B shows A direct at the new port: {b_follows:.2} s (target <= 5 s)"
    );
    let a_back = seconds_until(
        "A to show B direct again",
        t0,
        Duration::from_secs(60),
        || p.direct_at(0, 1, b_port),
    );
    println!("REBIND port moved -> A shows B direct again: {a_back:.2} s");
    let both = b_follows.max(a_back);
    println!("REBIND port moved -> both direct: {both:.2} s (bound {BOUND_S} s)");
    let flows = p.nat.conntrack(&p.sites[0]);
    assert!(
        flows.iter().any(|f| f.reply_dst.port() == NEW_PORT),
        "A's router maps to the new port: {flows:?}"
    );
    assert!(
        both <= BOUND_S,
        "both direct at the new endpoint only after {both:.2} s"
    );
    // Still direct both ways afterwards (not a passing flap).
    let b = p.direct_at(1, 0, NEW_PORT).unwrap();
    assert_eq!(b["connection_type"], "direct", "{b}");
    p.direct_at(0, 1, b_port).unwrap();
}
