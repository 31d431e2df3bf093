//! End-to-end: what a user sees when the input or the environment is wrong. Each case checks
//! the documented exit code, a single `lanparty-lite: …` error line that names the problem,
//! and that nothing was damaged (registry byte-identical, key file unchanged, no interface
//! left, no member left behind). Runs the built binary in lab namespaces; needs root.

mod lab;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use lab::{assert_fails, wait_until, Lab, BIN};

/// `nobody`: for what root would bypass (file modes, CAP_NET_ADMIN).
const NOBODY: u32 = 65534;

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `keygen` for member `i`'s state directory and returns the key file's bytes.
fn make_key(lab: &Lab, i: usize) -> Vec<u8> {
    let state = lab.node(i).state_dir.display().to_string();
    lab.lp(i, &["keygen", "--state-dir", &state])
        .expect_success();
    read(&lab.node(i).state_dir.join("private.key"))
}

fn state_arg(lab: &Lab, i: usize) -> String {
    lab.node(i).state_dir.display().to_string()
}

/// The public keys of the members the registry holds for the party in `code`.
fn registry_members(lab: &Lab, code: &str) -> Vec<String> {
    let party = code.rsplit_once('#').unwrap().1;
    let doc: serde_json::Value = serde_json::from_slice(&read(&lab.registry())).unwrap();
    doc["parties"][party]["members"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|v| v["public_key"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn malformed_join_codes_exit_3_and_create_nothing() {
    let lab = Lab::new("code", 1);
    let state = state_arg(&lab, 0);
    for code in [
        "",
        "hello",
        "file:/tmp/registry.json",
        "ftp://example.com/r.json#abcdef",
        "file:relative.json#abcdef",
        "file:/tmp/r.json#",
        "file:/tmp/r.json#a/b",
        "file:/tmp/a b.json#abcdef",
    ] {
        let out = lab.lp(0, &["join", code, "--state-dir", &state]);
        assert_fails(&out, 3, &["malformed join code"]);
        assert!(
            !lab.node(0).state_dir.exists(),
            "join {code:?} created the state directory"
        );
        assert!(!lab.link_exists(0, "lp0"), "join {code:?} left lp0");
    }
}

#[test]
fn invalid_join_options_exit_3_before_anything_changes() {
    let lab = Lab::new("opts", 1);
    let code = lab.create_party(&[]);
    let registry = read(&lab.registry());
    let state = state_arg(&lab, 0);
    for (args, needle) in [
        (&["--mtu", "100"][..], "--mtu"),
        (&["--mtu", "big"], "--mtu"),
        (&["--name", ""], "--name"),
        (&["--interface", "much-too-long-name0"], "interface name"),
        (&["--interface", "bad/name"], "interface name"),
        (&["--listen-port", "70000"], "--listen-port"),
        (&["--broadcast-rate", "-1"], "--broadcast-rate"),
        (&["--broadcast-rate", "1000000"], "--broadcast-rate"),
    ] {
        let mut argv = vec!["join", &code, "--state-dir", &state];
        argv.extend_from_slice(args);
        let out = lab.lp(0, &argv);
        assert_fails(&out, 3, &[needle]);
        assert!(
            !lab.node(0).state_dir.exists(),
            "{args:?} created the state dir"
        );
        assert_eq!(
            read(&lab.registry()),
            registry,
            "{args:?} changed the registry"
        );
        assert!(!lab.link_exists(0, "lp0"));
    }
}

#[test]
fn unknown_party_exits_4_and_leaves_registry_and_key_untouched() {
    let lab = Lab::new("unkn", 1);
    let code = lab.create_party(&[]);
    let key = make_key(&lab, 0);
    let registry = read(&lab.registry());
    let state = state_arg(&lab, 0);

    let wrong = format!("{}#nosuchparty", lab.control_url());
    assert_ne!(wrong, code);
    let out = lab.lp(0, &["join", &wrong, "--state-dir", &state]);
    assert_fails(&out, 4, &["unknown party", "nosuchparty"]);
    assert_eq!(read(&lab.registry()), registry, "registry changed");
    assert_eq!(read(&lab.node(0).state_dir.join("private.key")), key);
    assert!(!lab.link_exists(0, "lp0"));

    // A registry file that does not exist yet holds no parties; it is not created.
    let absent = lab.dir().join("absent.json");
    let code = format!("file:{}#abcdef", absent.display());
    let out = lab.lp(0, &["join", &code, "--state-dir", &state]);
    assert_fails(&out, 4, &["unknown party", "abcdef"]);
    assert!(!absent.exists(), "join created {}", absent.display());
    assert!(!lab.link_exists(0, "lp0"));
}

#[test]
fn full_party_refuses_the_next_member_with_exit_4_while_the_first_runs_on() {
    let lab = Lab::new("full", 2);
    let code = lab.create_party(&["--max-peers", "1"]);
    let (first, _) = lab.join(0, &code);
    let key = make_key(&lab, 1);
    let registry = read(&lab.registry());

    let state = state_arg(&lab, 1);
    let out = lab.lp(1, &["join", &code, "--state-dir", &state]);
    assert_fails(&out, 4, &["party is full", "1"]);
    assert_eq!(read(&lab.registry()), registry, "registry changed");
    assert_eq!(read(&lab.node(1).state_dir.join("private.key")), key);
    assert!(!lab.link_exists(1, "lp0"), "refused member left lp0");
    assert!(lab.try_exit(first).is_none(), "the first member stopped");
    let status = lab.status(0).unwrap();
    assert_eq!(status["peers"].as_array().map(Vec::len), Some(0));
}

#[test]
fn registry_path_that_cannot_be_read_exits_4_and_is_left_alone() {
    // Root ignores file modes, so "unreadable" is (a) a directory where the file should be,
    // as root, and (b) a chmod 000 file read by `nobody`.
    let lab = Lab::new("unrd", 1);
    let as_dir = lab.dir().join("registry-dir");
    fs::create_dir(&as_dir).unwrap();
    let state = state_arg(&lab, 0);
    let code = format!("file:{}#abcdef", as_dir.display());
    let out = lab.lp(0, &["join", &code, "--state-dir", &state]);
    assert_fails(&out, 4, &[as_dir.to_str().unwrap()]);
    assert!(as_dir.is_dir());
    assert_eq!(fs::read_dir(&as_dir).unwrap().count(), 0, "wrote into it");
    assert!(!lab.link_exists(0, "lp0"));

    // (b): the registry directory is open to all, the file is mode 000.
    let shared = lab.dir().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(lab.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let registry = shared.join("registry.json");
    let url = format!("file:{}", registry.display());
    let created = lab.run_host(&[BIN, "create", "locked", "--control", &url]);
    let code = lab::join_code_of(&created.expect_success(), &url);
    fs::set_permissions(&registry, fs::Permissions::from_mode(0o000)).unwrap();
    // `create` ran as root and left a 0600 lock file; open it up so the failure is the read.
    let lock = shared.join("registry.json.lock");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
    let before = read(&registry);
    let out = join_as_nobody(&lab, &code);
    assert_fails(&out, 4, &[registry.to_str().unwrap(), "permission denied"]);
    assert_eq!(read(&registry), before);
    assert_eq!(
        fs::metadata(&registry).unwrap().permissions().mode() & 0o777,
        0
    );
    assert!(!lab.link_exists(0, "lp0"));
}

#[test]
fn corrupt_registry_exits_4_and_stays_byte_identical() {
    let lab = Lab::new("corr", 1);
    let state = state_arg(&lab, 0);
    let mut garbage = vec![0u8, 1, 2, 0xff, 0xfe];
    garbage.extend_from_slice(b"garbage{\"parties\":");
    let foreign = br#"{"hello": 1}"#.to_vec();
    let wrong_format =
        br#"{"format":"something-else","schema":1,"version":3,"parties":{}}"#.to_vec();
    for content in [garbage, foreign, wrong_format] {
        fs::write(lab.registry(), &content).unwrap();
        let code = format!("{}#abcdef", lab.control_url());
        let out = lab.lp(0, &["join", &code, "--state-dir", &state]);
        assert_fails(&out, 4, &[lab.registry().to_str().unwrap(), "untouched"]);
        assert_eq!(read(&lab.registry()), content, "join changed the registry");
        assert!(!lab.link_exists(0, "lp0"));

        let url = lab.control_url();
        let out = lab.run_host(&[BIN, "create", "x", "--control", &url]);
        assert_fails(&out, 4, &[lab.registry().to_str().unwrap(), "untouched"]);
        assert_eq!(
            read(&lab.registry()),
            content,
            "create changed the registry"
        );
    }
}

#[test]
fn state_dir_that_cannot_be_written_exits_5_and_registers_nobody() {
    let lab = Lab::new("stdr", 1);
    let code = lab.create_party(&[]);
    let registry = read(&lab.registry());

    // Root ignores modes: (a) a path under a regular file cannot become a directory.
    let file = lab.dir().join("a-file");
    fs::write(&file, b"not a directory\n").unwrap();
    let under_file = file.join("sub");
    let out = lab.lp(
        0,
        &["join", &code, "--state-dir", under_file.to_str().unwrap()],
    );
    assert_fails(&out, 5, &["state directory", under_file.to_str().unwrap()]);
    assert_eq!(read(&file), b"not a directory\n");
    assert_eq!(read(&lab.registry()), registry, "registry changed");
    assert!(!lab.link_exists(0, "lp0"));

    // (b) a read-only bind mount over an existing, empty state directory.
    let ro = lab.dir().join("ro-state");
    fs::create_dir(&ro).unwrap();
    let ro_arg = ro.to_str().unwrap();
    let out = lab.exec(
        0,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "d=\"$1\"; shift; mount --bind \"$d\" \"$d\" && mount -o remount,bind,ro \"$d\" \"$d\" && exec \"$@\"",
            "sh",
            ro_arg,
            BIN,
            "join",
            &code,
            "--state-dir",
            ro_arg,
        ],
    );
    assert_fails(&out, 5, &["state directory", ro_arg]);
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
    assert_eq!(read(&lab.registry()), registry, "registry changed");
    assert!(!lab.link_exists(0, "lp0"));
}

#[test]
fn missing_tun_permission_exits_5_and_leaves_no_member_behind() {
    // One seat: a member that failed but stayed registered would make the next join fail.
    let lab = Lab::new("tunp", 2);
    let shared = lab.dir().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let registry = shared.join("registry.json");
    let url = format!("file:{}", registry.display());
    let created = lab.run_host(&[
        BIN,
        "create",
        "one-seat",
        "--control",
        &url,
        "--max-peers",
        "1",
    ]);
    let code = lab::join_code_of(&created.expect_success(), &url);
    fs::set_permissions(&registry, fs::Permissions::from_mode(0o666)).unwrap();
    let lock = shared.join("registry.json.lock");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
    // `nobody` has no CAP_NET_ADMIN: opening /dev/net/tun works, creating lp0 does not.
    let out = join_as_nobody(&lab, &code);
    assert_fails(&out, 5, &["lp0", "CAP_NET_ADMIN"]);
    assert!(!lab.link_exists(0, "lp0"));
    // Nobody holds the only seat: a privileged member can take it.
    let (member, _) = lab.join(1, &code);
    lab.signal(member, libc::SIGTERM);
    assert!(lab.wait_exit(member, Duration::from_secs(5)).is_some());

    // /dev/net/tun hidden (a device that is not a tun), as root.
    let out = lab.exec(
        0,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind /dev/null /dev/net/tun && exec \"$@\"",
            "sh",
            BIN,
            "join",
            &code,
            "--state-dir",
            &state_arg(&lab, 0),
        ],
    );
    assert_fails(&out, 5, &["lp0"]);
    assert!(!lab.link_exists(0, "lp0"));
    lab.join(1, &code);
}

#[test]
fn missing_tun_device_exits_5_and_names_dev_net_tun() {
    // A container without /dev/net/tun: an empty /dev/net.
    let lab = Lab::new("notun", 1);
    let code = lab.create_party(&[]);
    let out = lab.exec(
        0,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /dev/net && exec \"$@\"",
            "sh",
            BIN,
            "join",
            &code,
            "--state-dir",
            &state_arg(&lab, 0),
        ],
    );
    assert_fails(&out, 5, &["lp0", "/dev/net/tun"]);
    assert!(!lab.link_exists(0, "lp0"));
    assert!(
        registry_members(&lab, &code).is_empty(),
        "member left behind"
    );
}

#[test]
fn udp_port_in_use_exits_6_and_changes_nothing() {
    let lab = Lab::new("port", 1);
    let code = lab.create_party(&[]);
    let key = make_key(&lab, 0);
    let registry = read(&lab.registry());
    // Hold a UDP port in the member's namespace; the kernel picks a free one.
    let holder = lab.spawn(
        0,
        "udp-holder",
        &[
            lab::python(),
            "-c",
            "import socket,time\n\
             s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0))\n\
             print('port', s.getsockname()[1], flush=True)\n\
             time.sleep(600)\n",
        ],
    );
    let line = lab.wait_line(holder, "port ", Duration::from_secs(10));
    let port = line.trim().strip_prefix("port ").unwrap().to_string();

    let state = state_arg(&lab, 0);
    let out = lab.lp(
        0,
        &["join", &code, "--state-dir", &state, "--listen-port", &port],
    );
    assert_fails(&out, 6, &[&format!("udp port {port}"), "in use"]);
    assert_eq!(read(&lab.registry()), registry, "registry changed");
    assert_eq!(read(&lab.node(0).state_dir.join("private.key")), key);
    assert!(!lab.link_exists(0, "lp0"));
    assert!(lab.try_exit(holder).is_none(), "the port holder died");
}

#[test]
fn unknown_flags_exit_2_and_touch_nothing() {
    let lab = Lab::new("flag", 1);
    let code = lab.create_party(&[]);
    let registry = read(&lab.registry());
    let state = state_arg(&lab, 0);
    let fresh = lab.dir().join("fresh.json");
    let fresh_url = format!("file:{}", fresh.display());
    for (argv, flag) in [
        (vec!["join", &code, "--bogus"], "--bogus"),
        (vec!["join", &code, "--state-dir", &state, "--mtu"], "--mtu"),
        (
            vec!["status", "--state-dir", &state, "--verbose"],
            "--verbose",
        ),
        (vec!["leave", "--state-dir", &state, "--force"], "--force"),
        (
            vec!["create", "x", "--control", &fresh_url, "--frobnicate"],
            "--frobnicate",
        ),
        (vec!["join", &code, "-x"], "-x"),
    ] {
        let out = lab.lp(0, &argv);
        assert_fails(&out, 2, &[flag]);
        assert!(
            !lab.node(0).state_dir.exists(),
            "{argv:?} made the state dir"
        );
        assert!(!fresh.exists(), "{argv:?} created a registry");
        assert_eq!(read(&lab.registry()), registry);
        assert!(!lab.link_exists(0, "lp0"));
    }
    // An unknown command is a usage error too; it names the command on the first line.
    let out = lab.lp(0, &["frobnicate"]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("lanparty-lite: unknown command \"frobnicate\""),
        "{}",
        out.stderr
    );
}

#[test]
fn status_and_leave_without_a_running_member_exit_7() {
    let lab = Lab::new("nmem", 1);
    let empty = lab.dir().join("empty-state");
    fs::create_dir(&empty).unwrap();
    let missing = lab.dir().join("missing-state");
    for dir in [&empty, &missing] {
        let d = dir.to_str().unwrap();
        for argv in [
            vec!["status", "--state-dir", d],
            vec!["status", "--json", "--state-dir", d],
            vec!["leave", "--state-dir", d],
        ] {
            let out = lab.lp(0, &argv);
            assert_fails(&out, 7, &["no member is running", d]);
            assert!(out.stdout.is_empty(), "{argv:?} printed {:?}", out.stdout);
        }
    }
    assert!(
        !missing.exists(),
        "status/leave created the state directory"
    );
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn second_join_with_the_same_state_dir_changes_nothing_and_the_running_member_stays() {
    let lab = Lab::new("twice", 2);
    let code = lab.create_party(&[]);
    let (first, a) = lab.join(0, &code);
    let (_, b) = lab.join(1, &code);
    lab.wait_ping(1, a.ip, Duration::from_secs(10));
    let before = lab.status(0).unwrap();
    let key = before["self"]["public_key"].as_str().unwrap().to_string();
    let endpoint = lab.status(1).unwrap()["peers"][0]["endpoint"].clone();

    // The user runs `join` again in the same place (same state directory, same namespace).
    let state = state_arg(&lab, 0);
    let out = lab.lp(0, &["join", &code, "--name", "m0", "--state-dir", &state]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("already running: party \"lan-night\""),
        "{}",
        out.stdout
    );

    assert!(lab.try_exit(first).is_none(), "the running member stopped");
    assert!(
        registry_members(&lab, &code).contains(&key),
        "the refused second join removed the running member from the registry"
    );
    // For the next few seconds (several roster polls), m1 keeps m0 and can reach it.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let listed = lab::peers(&lab.status(1).unwrap());
        assert_eq!(listed.len(), 1, "m1 lost m0: {listed:?}");
        assert_eq!(listed[0].0, a.ip);
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.ping_once(1, a.ip).unwrap();
    lab.ping_once(0, b.ip).unwrap();
    assert_eq!(lab.status(1).unwrap()["peers"][0]["endpoint"], endpoint);
    wait_until("m0 to still answer status", Duration::from_secs(2), || {
        lab.status(0).map(|_| ())
    });
}

/// Runs `join CODE` in member 0's namespace as user `nobody`, with a state dir it owns.
fn join_as_nobody(lab: &Lab, code: &str) -> lab::Finished {
    let state = lab.dir().join("nobody-state");
    fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let state = state.to_str().unwrap();
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let join = [BIN, "join", code, "--state-dir", state];
    lab.exec(0, &[&setpriv[..], &join[..]].concat())
}
