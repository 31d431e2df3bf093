//! End-to-end: `lanparty-lite host` (issue 6): one process on one machine is the whole party's
//! infrastructure (control server, STUN, relay) and a member; two other machines join with
//! the code it prints, and nothing else runs. Needs root (see `tests/lab/mod.rs`).

mod lab;

use std::net::Ipv4Addr;
use std::time::Duration;

use lab::{wait_until, Lab, Proc};

const SETTLE: Duration = Duration::from_secs(20);

/// Starts `host friday` on member 0 and returns it with the join code it printed.
fn start_host(lab: &Lab) -> (Proc, String) {
    let state = lab.node(0).state_dir.display().to_string();
    let listen = format!("{}:7777", lab.node(0).underlay_ip);
    let host = lab.spawn(
        0,
        "host",
        &[
            lab::BIN,
            "host",
            "friday",
            "--listen",
            &listen,
            "--name",
            "m0",
            "--state-dir",
            &state,
        ],
    );
    let line = lab.wait_line(host, "join code: ", SETTLE);
    let code = line.trim_start_matches("join code: ").trim().to_string();
    lab.wait_line(host, "joined as m0", SETTLE);
    (host, code)
}

fn vip(lab: &Lab, i: usize) -> Ipv4Addr {
    lab.status(i).unwrap()["self"]["virtual_ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("a virtual IP")
}

#[test]
fn a_host_and_two_joins_form_a_party_with_no_other_process() {
    let lab = Lab::new("host", 3);
    let (host, code) = start_host(&lab);
    assert!(
        code.starts_with(&format!("http://{}:7777#", lab.node(0).underlay_ip)),
        "the code points at the host: {code}"
    );
    for i in [1, 2] {
        lab.join(i, &code);
    }
    let ips: Vec<Ipv4Addr> = (0..3).map(|i| vip(&lab, i)).collect();
    for from in 0..3 {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                lab.wait_ping(from, *ip, SETTLE);
            }
        }
    }
    for i in 0..3 {
        let status = lab.status(i).unwrap();
        assert_eq!(
            status["party"]["join_code"],
            code.as_str(),
            "m{i} shares the code"
        );
        assert_eq!(status["party"]["name"], "friday");
    }
    // The host's relay serves the party: every member binds to it.
    let relay = format!("{}:7779", lab.node(0).underlay_ip);
    wait_until("every member bound to the host's relay", SETTLE, || {
        for i in 0..3 {
            let status = lab.status(i)?;
            let bound = status["self"]["relays"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["address"] == relay.as_str() && r["bound"] == true)
            });
            if !bound {
                return Err(format!("m{i}: {}", status["self"]));
            }
        }
        Ok(())
    });

    // Restarted, the host serves the same party under the same code.
    lab.signal(host, libc::SIGTERM);
    assert!(lab.wait_exit(host, SETTLE).is_some_and(|s| s.success()));
    let (_, again) = start_host(&lab);
    assert_eq!(again, code, "the same party after a restart");
    assert_eq!(
        vip(&lab, 0),
        ips[0],
        "and the same address for the host's member"
    );
    lab.wait_ping(1, ips[0], SETTLE);
}
