//! End-to-end: headless operation (issue 6) with the real binary in network namespaces:
//! `join --background` from nothing, running it again from "cron", another party, `--replace`,
//! SIGTERM, and SIGKILL followed by a fresh `join`. Needs root (see `tests/lab/mod.rs`).

mod lab;

use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lab::{assert_fails, running, wait_until, Finished, Lab};

/// Tunnels up and rosters settled; generous for a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(15);

/// `join CODE --background --name m<i> --state-dir <node dir> EXTRA…` in member `i`'s
/// namespace; the member it detaches (if any) is stopped when the lab is dropped.
fn join_background(lab: &Lab, i: usize, code: &str, extra: &[&str]) -> Finished {
    let name = format!("m{i}");
    let state = lab.node(i).state_dir.display().to_string();
    let mut args = vec![
        "join",
        code,
        "--background",
        "--name",
        &name,
        "--state-dir",
        &state,
    ];
    args.extend_from_slice(extra);
    let out = lab.lp(i, &args);
    if let Some(pid) = pidfile(lab, i) {
        lab.adopt(pid);
    }
    out
}

fn pidfile(lab: &Lab, i: usize) -> Option<u32> {
    fs::read_to_string(lab.node(i).state_dir.join("member.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

fn virtual_ip(lab: &Lab, i: usize) -> Ipv4Addr {
    let status = lab.status(i).unwrap();
    status["self"]["virtual_ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no virtual IP in {status}"))
}

fn party_id(lab: &Lab, i: usize) -> String {
    lab.status(i).unwrap()["party"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits for member `i`'s process `pid` to end and its interface to go; returns how long.
fn wait_gone(lab: &Lab, i: usize, pid: u32) -> Duration {
    let start = Instant::now();
    wait_until(&format!("m{i} (pid {pid}) to stop"), SETTLE, || {
        if running(pid) || lab.link_exists(i, "lp0") {
            Err(format!("running: {}", running(pid)))
        } else {
            Ok(())
        }
    });
    start.elapsed()
}

#[test]
fn background_join_from_nothing_is_up_and_running_it_again_changes_nothing() {
    let lab = Lab::new("bg", 2);
    let code = lab.create_party(&[]);
    assert!(!lab.node(0).state_dir.exists(), "a fresh machine");

    let out = join_background(&lab, 0, &code, &[]).expect_success();
    let pid = pidfile(&lab, 0).expect("a pidfile");
    assert!(
        out.stdout
            .starts_with("joined as m0 (10.66.0.1); running in the background: pid"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&pid.to_string()), "{}", out.stdout);
    assert!(lab.node(0).state_dir.join("private.key").exists());
    assert!(lab.node(0).state_dir.join("member.log").exists());
    assert!(lab.link_exists(0, "lp0"));

    // Cron runs the same line again, in the background and in the foreground.
    for extra in [&["--background"][..], &[]] {
        let state = lab.node(0).state_dir.display().to_string();
        let mut args = vec!["join", &code, "--name", "m0", "--state-dir", &state];
        args.extend_from_slice(extra);
        let again = lab.lp(0, &args).expect_success();
        assert!(
            again.stdout.contains(&format!(
                "already running: party \"lan-night\" ({}) as m0 (10.66.0.1), pid {pid}",
                party_id(&lab, 0)
            )),
            "{extra:?}: {}",
            again.stdout
        );
        assert_eq!(
            pidfile(&lab, 0),
            Some(pid),
            "the running member is untouched"
        );
    }

    // It is a working member: a second one reaches it.
    let (_, b) = lab.join(1, &code);
    lab.wait_ping(1, Ipv4Addr::new(10, 66, 0, 1), SETTLE);
    lab.wait_ping(0, b.ip, SETTLE);

    lab.lp(
        0,
        &[
            "leave",
            "--state-dir",
            &lab.node(0).state_dir.display().to_string(),
        ],
    )
    .expect_success();
    wait_gone(&lab, 0, pid);
    assert!(pidfile(&lab, 0).is_none(), "the pidfile is removed on exit");
}

#[test]
fn another_party_is_refused_unless_replace_and_replace_switches() {
    let lab = Lab::new("repl", 1);
    let first = lab.create_party(&[]);
    let second = lab.create_party(&[]);
    join_background(&lab, 0, &first, &[]).expect_success();
    let first_id = party_id(&lab, 0);
    let pid = pidfile(&lab, 0).unwrap();

    let refused = join_background(&lab, 0, &second, &[]);
    assert_fails(&refused, 8, &["already running", "--replace"]);
    assert_eq!(party_id(&lab, 0), first_id, "still in the first party");
    assert_eq!(pidfile(&lab, 0), Some(pid));

    join_background(&lab, 0, &second, &["--replace"]).expect_success();
    assert_ne!(party_id(&lab, 0), first_id, "now in the second party");
    assert!(!running(pid), "the first member stopped");
}

#[test]
fn a_background_join_that_fails_reports_the_reason_and_exit_code() {
    let lab = Lab::new("bgfail", 1);
    let code = lab.create_party(&[]);
    let unknown = format!("{}#nosuchparty", lab.control_url());
    assert_ne!(unknown, code);
    let out = join_background(&lab, 0, &unknown, &[]);
    assert_fails(&out, 4, &["unknown party", "member.log"]);
    assert!(!lab.link_exists(0, "lp0"));
    assert!(pidfile(&lab, 0).is_none());
}

#[test]
fn sigterm_stops_within_two_seconds_and_sigkill_then_join_keeps_the_address() {
    let lab = Lab::new("life", 2);
    let code = lab.create_party(&[]);
    join_background(&lab, 0, &code, &[]).expect_success();
    let (_, b) = lab.join(1, &code);
    let a = virtual_ip(&lab, 0);
    lab.wait_ping(1, a, SETTLE);

    // SIGKILL: nothing is cleaned up by the member itself.
    let pid = pidfile(&lab, 0).unwrap();
    lab::kill(pid, libc::SIGKILL);
    wait_gone(&lab, 0, pid);
    assert_eq!(
        pidfile(&lab, 0),
        Some(pid),
        "a stale pidfile is left behind"
    );
    join_background(&lab, 0, &code, &[]).expect_success();
    let new_pid = pidfile(&lab, 0).unwrap();
    assert_ne!(new_pid, pid, "the stale pidfile was replaced");
    assert_eq!(virtual_ip(&lab, 0), a, "same identity, same virtual IP");
    lab.wait_ping(1, a, SETTLE);
    lab.wait_ping(0, b.ip, SETTLE);

    lab::kill(new_pid, libc::SIGTERM);
    let took = wait_gone(&lab, 0, new_pid);
    println!("SIGTERM to interface gone: {took:?}");
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert!(pidfile(&lab, 0).is_none());
}

#[test]
fn a_config_file_can_ask_for_the_background_and_the_member_still_runs_once() {
    let lab = Lab::new("bgconf", 1);
    let code = lab.create_party(&[]);
    let conf = lab.dir().join("lanparty-lite.conf");
    let state = lab.node(0).state_dir.display().to_string();
    fs::write(
        &conf,
        format!("[join]\nbackground = true\nname = router\nstate-dir = {state}\n"),
    )
    .unwrap();
    let out = lab.lp(0, &["join", &code, "--config", &conf.display().to_string()]);
    if let Some(pid) = pidfile(&lab, 0) {
        lab.adopt(pid);
    }
    let out = out.expect_success();
    assert!(
        out.stdout
            .starts_with("joined as router (10.66.0.1); running in the background"),
        "{}",
        out.stdout
    );
    let pid = pidfile(&lab, 0).unwrap();
    assert!(running(pid));
    let members = fs::read_to_string(lab.registry())
        .unwrap()
        .matches("\"router\"")
        .count();
    assert_eq!(members, 1, "one member, not a chain of background starts");
}
