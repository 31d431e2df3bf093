//! End-to-end: real members (the built binary) in network namespaces on one bridged LAN,
//! sharing a `file:` registry, with real tun devices. Needs root (see `tests/lab/mod.rs`).

mod lab;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lab::{peers, sha256, wait_until, Joined, Lab};

/// Peers appear within ~1 s of joining and vanish within ~1-2 s of leaving; allow slack for
/// a loaded 2-core machine running tests in parallel.
const ROSTER_SLACK: Duration = Duration::from_secs(5);
/// First packets start the WireGuard handshake; the reply may take a few pings.
const PING_SLACK: Duration = Duration::from_secs(10);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 0, last)
}

/// Joins members `0..n` one after another (each waits for `joined as`), so addresses are
/// handed out in order.
fn join_in_order(lab: &Lab, code: &str, n: usize) -> Vec<(lab::Proc, Joined)> {
    (0..n).map(|i| lab.join(i, code)).collect()
}

/// m2 (at `ip`) has stopped: its interface is gone and m0 and m1 no longer list it.
fn assert_m2_gone(lab: &Lab, ip: Ipv4Addr) {
    assert!(!lab.link_exists(2, "lp0"), "m2's lp0 is still there");
    wait_peer_gone(lab, 0, ip);
    wait_peer_gone(lab, 1, ip);
}

/// Waits until member `i`'s status no longer lists `gone` (whatever its state).
fn wait_peer_gone(lab: &Lab, i: usize, gone: Ipv4Addr) {
    wait_until(
        &format!("{gone} to disappear from m{i}'s status"),
        ROSTER_SLACK,
        || {
            let got = peers(&lab.status(i)?);
            if got.iter().any(|(ip, _)| *ip == gone) {
                Err(format!("peers are {got:?}"))
            } else {
                Ok(())
            }
        },
    );
}

#[test]
fn three_members_on_one_lan_all_reach_each_other_and_see_each_other_connected() {
    let lab = Lab::new("mesh", 3);
    let code = lab.create_party(&[]);
    let members = join_in_order(&lab, &code, 3);
    let ips: Vec<Ipv4Addr> = members.iter().map(|(_, j)| j.ip).collect();
    assert_eq!(ips, vec![ip(1), ip(2), ip(3)], "addresses in join order");
    for (i, (_, joined)) in members.iter().enumerate() {
        assert_eq!(joined.name, format!("m{i}"));
        assert!(lab.link_exists(i, "lp0"), "m{i} has no lp0");
    }

    for from in 0..3 {
        for (to, target) in ips.iter().enumerate() {
            if from != to {
                lab.wait_ping(from, *target, PING_SLACK);
            }
        }
    }

    for i in 0..3 {
        let others: Vec<Ipv4Addr> = (0..3).filter(|j| *j != i).map(|j| ips[j]).collect();
        lab.wait_connected_peers(i, &others, ROSTER_SLACK);
        let status = lab.status(i).unwrap();
        assert_eq!(status["self"]["virtual_ip"], ips[i].to_string());
        assert_eq!(status["self"]["name"], format!("m{i}"));
        assert_eq!(status["self"]["interface"], "lp0");
        assert_eq!(status["party"]["join_code"], code.as_str());
        for peer in status["peers"].as_array().unwrap() {
            let j = ips
                .iter()
                .position(|ip| peer["virtual_ip"] == ip.to_string())
                .unwrap();
            assert_eq!(peer["name"], format!("m{j}"), "m{i} names its peer {peer}");
            // Same LAN, no NAT: the tunnel runs straight to the peer's LAN address.
            let endpoint = peer["endpoint"].as_str().unwrap_or_default();
            assert!(
                endpoint.starts_with(&format!("{}:", lab.node(j).underlay_ip)),
                "m{i} reaches m{j} at {endpoint:?}, not its LAN address"
            );
        }
    }
}

#[test]
fn twenty_megabytes_over_tcp_arrive_intact() {
    const SIZE: usize = 20 * 1024 * 1024;
    const PORT: &str = "5001";
    let lab = Lab::new("tcp", 2);
    let code = lab.create_party(&[]);
    let members = join_in_order(&lab, &code, 2);
    let server_ip = members[1].1.ip.to_string();

    let sent = lab.dir().join("sent.bin");
    let received = lab.dir().join("received.bin");
    let mut data = vec![0u8; SIZE];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("read random bytes");
    std::fs::write(&sent, &data).unwrap();
    drop(data);

    // The server binds the virtual IP, so the bytes can only come through the tunnel.
    let server_py = "import socket,sys\n\
        s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print('ready', flush=True)\n\
        c,_=s.accept(); c.settimeout(60)\n\
        with open(sys.argv[3], 'wb') as f:\n\
        \x20   while True:\n\
        \x20       b=c.recv(65536)\n\
        \x20       if not b: break\n\
        \x20       f.write(b)\n\
        c.close(); print('done', flush=True)\n";
    let server = lab.spawn(
        1,
        "tcp-server",
        &[
            lab::python(),
            "-c",
            server_py,
            &server_ip,
            PORT,
            received.to_str().unwrap(),
        ],
    );
    lab.wait_line(server, "ready", Duration::from_secs(10));

    let client_py = "import socket,sys,time\n\
        deadline=time.time()+15\n\
        while True:\n\
        \x20   try:\n\
        \x20       s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); break\n\
        \x20   except OSError:\n\
        \x20       if time.time()>deadline: raise\n\
        \x20       time.sleep(0.2)\n\
        s.settimeout(60)\n\
        with open(sys.argv[3], 'rb') as f: s.sendfile(f)\n\
        s.shutdown(socket.SHUT_WR); s.recv(1); s.close()\n";
    let started = Instant::now();
    lab.exec_timeout(
        0,
        &[
            lab::python(),
            "-c",
            client_py,
            &server_ip,
            PORT,
            sent.to_str().unwrap(),
        ],
        Duration::from_secs(180),
    )
    .expect_success();
    let server_exit = lab.wait_exit(server, Duration::from_secs(30));
    let elapsed = started.elapsed();
    assert!(
        server_exit.is_some_and(|s| s.success()),
        "server did not finish cleanly ({server_exit:?}): {}",
        lab.stderr(server)
    );
    eprintln!(
        "20 MiB through the tunnel in {elapsed:?} ({:.1} MB/s)",
        SIZE as f64 / elapsed.as_secs_f64() / 1e6
    );

    assert_eq!(
        std::fs::metadata(&received).unwrap().len(),
        SIZE as u64,
        "received size"
    );
    assert_eq!(sha256(&received), sha256(&sent), "SHA-256 of received file");

    // The receiver's status accounts for the traffic it got from the sender.
    let status = lab.status(1).unwrap();
    let rx = status["peers"][0]["rx_bytes"].as_u64().unwrap_or(0);
    assert!(
        rx >= SIZE as u64,
        "m1 reports {rx} bytes received from m0 after a {SIZE} byte transfer"
    );
}

#[test]
fn a_member_that_leaves_disappears_and_its_interface_goes() {
    let lab = Lab::new("leave", 3);
    let code = lab.create_party(&[]);
    let members = join_in_order(&lab, &code, 3);
    let ips: Vec<Ipv4Addr> = members.iter().map(|(_, j)| j.ip).collect();
    for (from, to) in [(0, 1), (0, 2), (1, 2)] {
        lab.wait_ping(from, ips[to], PING_SLACK);
    }
    lab.wait_connected_peers(0, &[ips[1], ips[2]], ROSTER_SLACK);
    lab.wait_connected_peers(1, &[ips[0], ips[2]], ROSTER_SLACK);

    let state = lab.node(2).state_dir.display().to_string();
    let out = lab
        .lp(2, &["leave", "--state-dir", &state])
        .expect_success();
    assert!(out.stdout.contains("left the party"), "{}", out.stdout);

    let (leaver, _) = members[2];
    let exit = lab.wait_exit(leaver, ROSTER_SLACK);
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "m2 should exit 0 after `leave`; stderr: {}",
        lab.stderr(leaver)
    );
    assert_m2_gone(&lab, ips[2]);
    assert!(
        lab.ping_once(0, ips[2]).is_err(),
        "m0 can still ping {} after m2 left",
        ips[2]
    );
    // The ones who stayed are unaffected.
    lab.ping_once(0, ips[1]).unwrap();
    lab.ping_once(1, ips[0]).unwrap();
    // A second `leave` finds nobody.
    let again = lab.lp(2, &["leave", "--state-dir", &state]);
    lab::assert_fails(&again, 7, &["no member is running"]);
}

#[test]
fn a_late_joiner_reaches_and_is_reached_by_the_members_already_there() {
    let lab = Lab::new("late", 3);
    let code = lab.create_party(&[]);
    let first = join_in_order(&lab, &code, 2);
    let (a, b) = (first[0].1.ip, first[1].1.ip);
    lab.wait_ping(0, b, PING_SLACK);
    lab.wait_ping(1, a, PING_SLACK);
    lab.wait_connected_peers(0, &[b], ROSTER_SLACK);
    lab.wait_connected_peers(1, &[a], ROSTER_SLACK);

    let (_, late) = lab.join(2, &code);
    assert_eq!(late.ip, ip(3));
    // The late joiner's own view lists both members from the start.
    let listed = peers(&lab.status(2).unwrap());
    let listed_ips: Vec<Ipv4Addr> = listed.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(
        listed_ips,
        vec![a, b],
        "late joiner's peers right after joining"
    );

    // Existing members reach it first (they must have learned about it from the registry).
    lab.wait_ping(0, late.ip, PING_SLACK);
    lab.wait_ping(1, late.ip, PING_SLACK);
    lab.wait_ping(2, a, PING_SLACK);
    lab.wait_ping(2, b, PING_SLACK);
    lab.wait_connected_peers(2, &[a, b], ROSTER_SLACK);
    lab.wait_connected_peers(0, &[b, late.ip], ROSTER_SLACK);
    lab.wait_connected_peers(1, &[a, late.ip], ROSTER_SLACK);
}

fn stopping_on_a_signal_leaves_cleanly(tag: &str, signal: libc::c_int) {
    let lab = Lab::new(tag, 3);
    let code = lab.create_party(&[]);
    let members = join_in_order(&lab, &code, 3);
    let ips: Vec<Ipv4Addr> = members.iter().map(|(_, j)| j.ip).collect();
    for (from, to) in [(0, 1), (0, 2), (1, 2)] {
        lab.wait_ping(from, ips[to], PING_SLACK);
    }
    lab.wait_connected_peers(0, &[ips[1], ips[2]], ROSTER_SLACK);
    lab.wait_connected_peers(1, &[ips[0], ips[2]], ROSTER_SLACK);

    let (victim, _) = members[2];
    let sent = Instant::now();
    lab.signal(victim, signal);
    let exit = lab.wait_exit(victim, Duration::from_secs(2));
    assert!(exit.is_some(), "m2 still running 2 s after signal {signal}");
    eprintln!("m2 exited {:?} after {:?}", exit, sent.elapsed());
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "m2 should exit 0 on signal {signal}; stderr: {}",
        lab.stderr(victim)
    );
    assert_m2_gone(&lab, ips[2]);
    let state = lab.node(2).state_dir.display().to_string();
    lab::assert_fails(
        &lab.lp(2, &["status", "--state-dir", &state]),
        7,
        &["no member is running"],
    );
}

#[test]
fn sigterm_makes_a_member_leave_exit_zero_and_remove_its_interface() {
    stopping_on_a_signal_leaves_cleanly("term", libc::SIGTERM);
}

#[test]
fn sigint_makes_a_member_leave_exit_zero_and_remove_its_interface() {
    stopping_on_a_signal_leaves_cleanly("int", libc::SIGINT);
}

#[test]
fn members_connect_without_any_traffic() {
    let lab = Lab::new("idle", 2);
    let code = lab.create_party(&[]);
    let _members = join_in_order(&lab, &code, 2);
    // No ping: tunnels come up from the handshake started when a peer appears in the roster.
    lab.wait_connected_peers(0, &[ip(2)], ROSTER_SLACK);
    lab.wait_connected_peers(1, &[ip(1)], ROSTER_SLACK);
}
