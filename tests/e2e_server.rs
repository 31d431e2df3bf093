//! End-to-end through the control server: the real binary, a `lanparty-lite server` in a
//! namespace of its own on the lab bridge (playing "the internet"), members in their own
//! namespaces joining by code. Needs root (see `tests/lab/mod.rs`).
//!
//! - three members join by code and every ordered pair pings over virtual IPs;
//! - the server is SIGKILLed for 60 s: the existing tunnels keep carrying traffic;
//! - the server restarts on the same state directory and a new member joins and is seen by
//!   every existing member within a few seconds;
//! - bad codes fail with exit 4 and one readable line: wrong secret, unknown party, no server.

mod lab;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lab::{assert_fails, peers, Joined, Lab, Proc, BIN};

/// The server's port inside its own namespace.
const PORT: u16 = 7777;
/// Host part of the server's LAN address (members are .1, .2, …).
const SERVER_HOST: u8 = 200;
/// Peers appear within ~1 s of joining; slack for a loaded 2-core machine.
const ROSTER_SLACK: Duration = Duration::from_secs(5);
/// First packets start the WireGuard handshake; the reply may take a few pings.
const PING_SLACK: Duration = Duration::from_secs(10);
/// How long the server stays dead.
const OUTAGE: Duration = Duration::from_secs(60);
/// How often every pair pings during the outage.
const OUTAGE_PING_EVERY: Duration = Duration::from_secs(5);
/// "Within a few seconds": a member joining after the restart must be in every existing
/// member's status by then, and connected with pings answered.
const NEW_MEMBER_SEEN: Duration = Duration::from_secs(5);
/// How long we keep watching past that limit, to report how late it was.
const NEW_MEMBER_WATCH: Duration = Duration::from_secs(120);

/// A lab with `members` member namespaces and the server namespace `inet` on the same
/// bridge; returns the lab, the server's node index and its control URL.
fn server_lab(tag: &str, members: usize) -> (Lab, usize, String) {
    let mut lab = Lab::new(tag, members);
    let srv = lab.add_host("inet", SERVER_HOST);
    let url = format!("http://{}:{PORT}", lab.node(srv).underlay_ip);
    (lab, srv, url)
}

/// Starts the server in node `srv` on its state directory and waits for `listening on`.
fn start_server(lab: &Lab, srv: usize) -> Proc {
    let listen = format!("{}:{PORT}", lab.node(srv).underlay_ip);
    let state = lab.node(srv).state_dir.display().to_string();
    let p = lab.spawn(
        srv,
        "server",
        &[BIN, "server", "--listen", &listen, "--state-dir", &state],
    );
    let line = lab.wait_line(p, "listening on ", Duration::from_secs(10));
    assert_eq!(line.trim(), format!("listening on {listen}"));
    p
}

/// Splits a server join code `URL#PARTY.SECRET`.
fn split_code(code: &str) -> (&str, &str, &str) {
    let (url, rest) = code.split_once('#').expect("code has '#'");
    let (party, secret) = rest.split_once('.').expect("server code carries a secret");
    (url, party, secret)
}

fn ordered_pairs(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect()
}

#[test]
fn members_join_by_code_survive_a_minute_without_server_and_see_a_newcomer_after_restart() {
    let (lab, srv, url) = server_lab("srv", 4);
    let server = start_server(&lab, srv);

    // The code is made in a member namespace, against the server across "the internet".
    let code = lab.create_party_in(0, &url, &[]);
    let (code_url, party, secret) = split_code(&code);
    assert_eq!(code_url, url);
    assert!(!party.is_empty());
    assert!(
        secret.len() >= 26,
        "join secret {secret:?} is shorter than 128 bits of a 31-letter alphabet"
    );

    let members: Vec<(Proc, Joined)> = (0..3).map(|i| lab.join(i, &code)).collect();
    let ips: Vec<Ipv4Addr> = members.iter().map(|(_, j)| j.ip).collect();
    for (i, (_, joined)) in members.iter().enumerate() {
        assert_eq!(joined.name, format!("m{i}"));
        assert!(lab.link_exists(i, "lp0"), "m{i} has no lp0");
    }
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "virtual IPs must differ: {ips:?}");
    for (from, to) in ordered_pairs(3) {
        lab.wait_ping(from, ips[to], PING_SLACK);
    }
    for i in 0..3 {
        let others: Vec<Ipv4Addr> = (0..3).filter(|j| *j != i).map(|j| ips[j]).collect();
        lab.wait_connected_peers(i, &others, ROSTER_SLACK);
        let status = lab.status(i).unwrap();
        assert_eq!(status["self"]["virtual_ip"], ips[i].to_string());
        assert_eq!(status["party"]["join_code"], code.as_str());
    }

    // The server dies hard and stays dead for a minute; every pair keeps pinging.
    lab.signal(server, libc::SIGKILL);
    let status = lab
        .wait_exit(server, Duration::from_secs(5))
        .expect("the server did not die on SIGKILL");
    assert!(!status.success(), "server exit after SIGKILL: {status}");
    let outage_start = Instant::now();
    let mut failures = Vec::new();
    let mut rounds = 0;
    loop {
        let round_start = Instant::now();
        for (from, to) in ordered_pairs(3) {
            if let Err(e) = lab.ping_once_waiting(from, ips[to], 2) {
                failures.push(format!(
                    "at {:.1?} into the outage: {e}",
                    outage_start.elapsed()
                ));
            }
        }
        rounds += 1;
        if outage_start.elapsed() + OUTAGE_PING_EVERY > OUTAGE {
            break;
        }
        std::thread::sleep(OUTAGE_PING_EVERY.saturating_sub(round_start.elapsed()));
    }
    std::thread::sleep(OUTAGE.saturating_sub(outage_start.elapsed()));
    assert!(
        failures.is_empty(),
        "existing tunnels must keep carrying traffic while the server is down; \
         {} of {} pings failed:\n{}",
        failures.len(),
        rounds * 6,
        failures.join("\n")
    );
    assert!(rounds >= 12, "only {rounds} ping rounds during the outage");
    for i in 0..3 {
        let others: Vec<Ipv4Addr> = (0..3).filter(|j| *j != i).map(|j| ips[j]).collect();
        lab.wait_connected_peers(i, &others, ROSTER_SLACK);
    }
    for (i, (p, _)) in members.iter().enumerate() {
        assert!(
            lab.try_exit(*p).is_none(),
            "m{i} exited during the outage:\n{}",
            lab.stderr(*p)
        );
    }

    // Back on the same state directory: the party, its secret and the members survived.
    let _server = start_server(&lab, srv);
    let (_, newcomer) = lab.join(3, &code);
    let joined_at = Instant::now();
    assert!(
        !ips.contains(&newcomer.ip),
        "the newcomer got {} which an existing member holds ({ips:?})",
        newcomer.ip
    );
    // Watch every existing member until it lists the newcomer (status only, so the times
    // are precise), then until they are connected with pings answered both ways; record
    // when, to report how late it was.
    let mut seen: [Option<Duration>; 3] = [None; 3];
    let mut last = vec![String::new(); 3];
    while joined_at.elapsed() < NEW_MEMBER_WATCH && seen.iter().any(Option::is_none) {
        for i in 0..3 {
            if seen[i].is_some() {
                continue;
            }
            match lab.status(i) {
                Ok(status) if peers(&status).iter().any(|(ip, _)| *ip == newcomer.ip) => {
                    seen[i] = Some(joined_at.elapsed());
                }
                Ok(status) => last[i] = format!("peers are {:?}", peers(&status)),
                Err(e) => last[i] = e,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut working: [Option<Duration>; 3] = [None; 3];
    for i in (0..3).filter(|i| seen[*i].is_some()) {
        while working[i].is_none() && joined_at.elapsed() < NEW_MEMBER_WATCH {
            let connected = lab
                .status(i)
                .is_ok_and(|s| peers(&s).contains(&(newcomer.ip, "connected".to_string())));
            let pings = lab
                .ping_once(i, newcomer.ip)
                .and_then(|()| lab.ping_once(3, ips[i]));
            match (connected, pings) {
                (true, Ok(())) => working[i] = Some(joined_at.elapsed()),
                (connected, pings) => last[i] = format!("connected: {connected}, pings: {pings:?}"),
            }
        }
    }
    eprintln!(
        "after the restart, newcomer {} listed by m0..m2 after {seen:?}; connected with pings \
         answered after {working:?} (checked once all listed it)",
        newcomer.ip
    );
    for i in 0..3 {
        let seen_after = seen[i].unwrap_or_else(|| {
            panic!(
                "m{i} never listed the newcomer {} within {NEW_MEMBER_WATCH:?} of its join \
                 after the server came back; last: {}",
                newcomer.ip, last[i]
            )
        });
        let working_after = working[i].unwrap_or_else(|| {
            panic!(
                "m{i} and the newcomer never reached each other within {NEW_MEMBER_WATCH:?}; \
                 last: {}",
                last[i]
            )
        });
        assert!(
            seen_after <= NEW_MEMBER_SEEN && working_after <= NEW_MEMBER_SEEN + PING_SLACK,
            "after a {OUTAGE:?} outage, m{i} saw the newcomer only after {seen_after:.1?} \
             (connected with pings after {working_after:.1?}); expected within \
             {NEW_MEMBER_SEEN:?}: members must resynchronise promptly when the server returns"
        );
    }
    let mut all = ips.clone();
    all.push(newcomer.ip);
    for i in 0..4 {
        let others: Vec<Ipv4Addr> = all.iter().copied().filter(|ip| *ip != all[i]).collect();
        lab.wait_connected_peers(i, &others, ROSTER_SLACK);
    }
}

/// Runs `join CODE` in member `i` (expected to fail) and checks it left no interface.
fn join_fails(lab: &Lab, i: usize, code: &str) -> lab::Finished {
    let state = lab.node(i).state_dir.display().to_string();
    let out = lab.lp(i, &["join", code, "--name", "m0", "--state-dir", &state]);
    assert!(
        !lab.link_exists(i, "lp0"),
        "a refused join left the interface lp0 behind"
    );
    out
}

/// Another character of the join-secret alphabet than `c`.
fn other_char(c: char) -> char {
    if c == 'a' {
        'b'
    } else {
        'a'
    }
}

#[test]
fn a_wrong_join_secret_is_refused_with_exit_4() {
    let (lab, srv, url) = server_lab("sec", 1);
    let _server = start_server(&lab, srv);
    let code = lab.create_party_in(0, &url, &[]);
    let (_, party, secret) = split_code(&code);
    let mut wrong: String = secret.to_string();
    let last = wrong.pop().unwrap();
    wrong.push(other_char(last));
    let bad = format!("{url}#{party}.{wrong}");
    let out = join_fails(&lab, 0, &bad);
    assert_fails(&out, 4, &["refused", "secret"]);
    assert!(
        !out.stderr.contains(&wrong) && !out.stderr.contains(secret),
        "the error must not echo join secrets: {}",
        out.stderr
    );
    // The real code still works afterwards.
    let (_, joined) = lab.join(0, &code);
    assert_eq!(joined.name, "m0");
}

#[test]
fn an_unknown_party_fails_with_exit_4_and_one_clear_message() {
    let (lab, srv, url) = server_lab("unk", 1);
    let _server = start_server(&lab, srv);
    let code = lab.create_party_in(0, &url, &[]);
    let (_, party, secret) = split_code(&code);
    let unknown = "zzzzzzzzzz";
    assert_ne!(party, unknown);
    let out = join_fails(&lab, 0, &format!("{url}#{unknown}.{secret}"));
    assert_fails(&out, 4, &["unknown party", unknown]);
    let line = out.stderr.lines().last().unwrap_or_default().to_lowercase();
    assert_eq!(
        line.matches("unknown party").count(),
        1,
        "the error repeats itself: {line:?}"
    );
}

#[test]
fn a_code_for_a_port_without_server_fails_with_exit_4_naming_the_server() {
    let (lab, srv, _url) = server_lab("nos", 1);
    let _server = start_server(&lab, srv);
    let url = format!("http://{}:{PORT}", lab.node(srv).underlay_ip);
    let code = lab.create_party_in(0, &url, &[]);
    let (_, party, secret) = split_code(&code);
    // The server's host is up, but nothing listens on the next port.
    let nowhere = format!("http://{}:{}", lab.node(srv).underlay_ip, PORT + 1);
    let started = Instant::now();
    let out = join_fails(&lab, 0, &format!("{nowhere}#{party}.{secret}"));
    assert_fails(&out, 4, &[&nowhere, "unavailable", "refused"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection should fail fast, took {:?}",
        started.elapsed()
    );

    // No machine at all at the address (nothing answers ARP): slower, same shape.
    let silent = format!(
        "http://{}:{PORT}",
        Ipv4Addr::new(192, 168, lab_subnet(&lab), 201)
    );
    let started = Instant::now();
    let out = join_fails(&lab, 0, &format!("{silent}#{party}.{secret}"));
    let took = started.elapsed();
    eprintln!(
        "join against a silent host took {took:.1?}: {}",
        out.stderr.trim()
    );
    assert_fails(&out, 4, &[&silent, "unavailable"]);
    assert!(
        took < Duration::from_secs(25),
        "a silent host should fail within the client's connect timeout, took {took:?}"
    );
}

/// Third octet of the lab LAN (from member 0's address).
fn lab_subnet(lab: &Lab) -> u8 {
    lab.node(0).underlay_ip.octets()[2]
}
