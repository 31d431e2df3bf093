//! The commands that need no network or root: keygen, pubkey, create, help, version, usage
//! errors. Each runs the real binary and checks what a user sees.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lanparty-lite"));
    c.env_remove("LANPARTY_STATE_DIR").env("RUST_LOG", "off");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lp-cli-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn keygen_is_idempotent_and_pubkey_agrees() {
    let dir = temp_dir("keygen");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let first = run(&["keygen", "--state-dir", s]);
    assert!(first.status.success(), "{}", stderr(&first));
    let key = stdout(&first).trim().to_string();
    assert_eq!(key.len(), 44);
    let private = fs::read(state.join("private.key")).unwrap();
    let second = run(&["keygen", "--state-dir", s]);
    assert_eq!(stdout(&second).trim(), key);
    assert_eq!(
        fs::read(state.join("private.key")).unwrap(),
        private,
        "key not rewritten"
    );
    let pubkey = bin()
        .arg("pubkey")
        .env("LANPARTY_STATE_DIR", s)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&pubkey).trim(),
        key,
        "LANPARTY_STATE_DIR is honoured"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pubkey_without_a_key_fails_with_a_reason() {
    let dir = temp_dir("nokey");
    let out = run(&["pubkey", "--state-dir", dir.join("none").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("private.key"), "{}", stderr(&out));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_prints_the_join_code_last_and_json_on_request() {
    let dir = temp_dir("create");
    let reg = format!("file:{}", dir.join("registry.json").display());
    let out = run(&[
        "create",
        "friday",
        "--control",
        &reg,
        "--subnet",
        "10.77.0.0/24",
        "--max-peers",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let code = text.lines().last().unwrap();
    assert!(code.starts_with(&format!("{reg}#")), "{code}");
    let json = run(&["create", "saturday", "--control", &reg, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["name"], "saturday");
    assert_eq!(v["subnet"], "10.66.0.0/16");
    assert_eq!(v["max_peers"], 64);
    assert!(v["join_code"].as_str().unwrap().starts_with(&reg));
    let registry: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("registry.json")).unwrap()).unwrap();
    assert_eq!(registry["parties"].as_object().unwrap().len(), 2);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_rejects_bad_values_without_touching_the_registry() {
    let dir = temp_dir("badcreate");
    let path = dir.join("registry.json");
    let reg = format!("file:{}", path.display());
    assert!(run(&["create", "first", "--control", &reg])
        .status
        .success());
    let before = fs::read(&path).unwrap();
    for (args, code) in [
        (
            vec!["create", "x", "--control", &reg, "--subnet", "10.66.0.0/33"],
            3,
        ),
        (
            vec!["create", "x", "--control", &reg, "--subnet", "10.66.0.0/31"],
            3,
        ),
        (
            vec!["create", "x", "--control", &reg, "--max-peers", "0"],
            3,
        ),
        (
            vec!["create", "x", "--control", &reg, "--max-peers", "-1"],
            3,
        ),
        (vec!["create", "", "--control", &reg], 3),
        (vec!["create", "x", "--control", "http-nope"], 3),
        (vec!["create", "x"], 2),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("lanparty-lite: "), "{args:?}");
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "one-line error for {args:?}"
        );
    }
    assert_eq!(fs::read(&path).unwrap(), before);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_on_a_corrupt_registry_is_refused_and_the_file_kept() {
    let dir = temp_dir("corrupt");
    let path = dir.join("registry.json");
    fs::write(&path, b"not json at all").unwrap();
    let out = run(&[
        "create",
        "x",
        "--control",
        &format!("file:{}", path.display()),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("left untouched"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), b"not json at all");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_command_has_help_and_unknown_ones_are_usage_errors() {
    for cmd in [
        "server", "relay", "host", "create", "join", "status", "leave", "keygen", "pubkey",
    ] {
        let out = run(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        assert!(
            stdout(&out).starts_with(&format!("Usage: lanparty-lite {cmd}")),
            "{cmd}"
        );
    }
    assert!(stdout(&run(&["--help"])).contains("Commands:"));
    assert!(stdout(&run(&["--version"])).starts_with("lanparty-lite "));
    assert_eq!(run(&["dance"]).status.code(), Some(2));
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["keygen", "--bogus"]).status.code(), Some(2));
}

#[test]
fn server_refuses_bad_options_before_listening() {
    let dir = temp_dir("server-opts");
    let short = dir.join("short.secret");
    fs::write(&short, "too short\n").unwrap();
    let state = dir.join("state");
    let out = run(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
        "--relay-secret-file",
        short.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("at least 32"), "{}", stderr(&out));
    assert_eq!(
        run(&["server"]).status.code(),
        Some(2),
        "--listen is required"
    );
    let out = run(&["server", "--listen", "nowhere"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!state.exists(), "nothing was created");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_refuses_registry_paths_a_join_code_cannot_carry_and_accepts_relative_ones() {
    let dir = temp_dir("paths");
    let spaced = dir.join("a b");
    fs::create_dir_all(&spaced).unwrap();
    let out = run(&[
        "create",
        "x",
        "--control",
        &format!("file:{}/registry.json", spaced.display()),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("join code"), "{}", stderr(&out));
    assert!(
        !spaced.join("registry.json").exists(),
        "nothing was created"
    );

    let relative = bin()
        .args(["create", "x", "--control", "file:registry.json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(relative.status.success(), "{}", stderr(&relative));
    let code = stdout(&relative).lines().last().unwrap().to_string();
    assert!(
        code.starts_with(&format!("file:{}/registry.json#", dir.display())),
        "{code}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn settings_come_from_flags_then_environment_then_config_file() {
    let dir = temp_dir("config");
    let conf = dir.join("lanparty-lite.conf");
    let registry = dir.join("registry.json");
    fs::write(
        &conf,
        format!(
            "# test\n[create]\ncontrol = file:{}\nmax-peers = 5\njson = yes\n",
            registry.display()
        ),
    )
    .unwrap();
    let max_peers = |out: &Output| -> u64 {
        assert!(out.status.success(), "{}", stderr(out));
        let v: serde_json::Value = serde_json::from_str(stdout(out).trim()).unwrap();
        v["max_peers"].as_u64().unwrap()
    };
    let conf_arg = conf.to_str().unwrap();
    assert_eq!(max_peers(&run(&["create", "a", "--config", conf_arg])), 5);
    let env = bin()
        .args(["create", "b"])
        .env("LANPARTY_CONFIG", conf_arg)
        .env("LANPARTY_MAX_PEERS", "7")
        .output()
        .unwrap();
    assert_eq!(max_peers(&env), 7, "the environment beats the file");
    let flag = bin()
        .args(["create", "c", "--config", conf_arg, "--max-peers", "9"])
        .env("LANPARTY_MAX_PEERS", "7")
        .output()
        .unwrap();
    assert_eq!(max_peers(&flag), 9, "the flag beats both");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_config_file_is_named_with_its_line_and_changes_nothing() {
    let dir = temp_dir("badconf");
    let registry = dir.join("registry.json");
    let control = format!("file:{}", registry.display());
    for (text, needle) in [
        (
            "[create]\nmax-peers = lots\n",
            "--max-peers (from CONF line 2): invalid value",
        ),
        (
            "[create]\nmaxpeers = 3\n",
            "CONF line 2: [create] has no setting \"maxpeers\"",
        ),
        (
            "max-peers = 3\n",
            "CONF line 1: \"max-peers\" is outside a section",
        ),
    ] {
        let conf = dir.join("bad.conf");
        fs::write(&conf, text).unwrap();
        let out = run(&[
            "create",
            "x",
            "--control",
            &control,
            "--config",
            conf.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(3), "{text:?}: {}", stderr(&out));
        let needle = needle.replace("CONF", conf.to_str().unwrap());
        assert!(stderr(&out).contains(&needle), "{text:?}: {}", stderr(&out));
        assert!(!registry.exists(), "{text:?} created the registry");
    }
    let missing = run(&[
        "create",
        "x",
        "--control",
        &control,
        "--config",
        "/nonexistent.conf",
    ]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        stderr(&missing).contains("config file /nonexistent.conf"),
        "{}",
        stderr(&missing)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_health_thresholds_and_metrics_addresses_exit_3_naming_the_flag() {
    let dir = temp_dir("health");
    let state = dir.join("state");
    let registry = dir.join("registry.json");
    let code = format!("file:{}#abcdef", registry.display());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--degraded-rtt", "0"],
            "--degraded-rtt 0: must be between 1 and 10000 ms",
        ),
        (
            &["--degraded-rtt", "10001"],
            "--degraded-rtt 10001: must be between 1 and 10000 ms",
        ),
        (
            &["--degraded-rtt", "fast"],
            "--degraded-rtt: invalid value \"fast\"",
        ),
        (
            &["--degraded-loss", "0"],
            "--degraded-loss 0: must be between 1 and 100 percent",
        ),
        (
            &["--degraded-loss", "101"],
            "--degraded-loss 101: must be between 1 and 100 percent",
        ),
        (
            &["--degraded-loss", "-5"],
            "--degraded-loss: invalid value \"-5\"",
        ),
        (
            &["--failed-after", "1"],
            "--failed-after 1: must be between 2 and 3600 seconds",
        ),
        (
            &["--cleanup-after", "0"],
            "--cleanup-after 0: must be between 1 and 86400 seconds",
        ),
        (
            &["--cleanup-after", "99999"],
            "--cleanup-after 99999: must be between 1 and 86400 seconds",
        ),
        (&["--metrics", "9588"], "--metrics: invalid value \"9588\""),
        (
            &["--metrics", "localhost:9588"],
            "--metrics: invalid value \"localhost:9588\"",
        ),
        (
            &["--metrics", "127.0.0.1:0"],
            "--metrics: give the port to serve on",
        ),
    ];
    for (flags, needle) in cases {
        for command in ["join", "host"] {
            let first = if command == "join" {
                code.as_str()
            } else {
                "friday"
            };
            let mut argv = vec![command, first, "--state-dir", state.to_str().unwrap()];
            argv.extend_from_slice(flags);
            let out = run(&argv);
            assert_eq!(out.status.code(), Some(3), "{argv:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(needle), "{argv:?}: {}", stderr(&out));
        }
    }
    let env = bin()
        .args(["join", &code, "--state-dir", state.to_str().unwrap()])
        .env("LANPARTY_DEGRADED_LOSS", "200")
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(3), "{}", stderr(&env));
    assert!(
        stderr(&env).contains("--degraded-loss 200"),
        "{}",
        stderr(&env)
    );
    assert!(!registry.exists(), "nothing joined");
    assert!(!state.join("host").exists(), "host started nothing");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_metrics_port_in_use_exits_3_before_joining() {
    let dir = temp_dir("metrics-busy");
    let registry = dir.join("registry.json");
    let created = run(&[
        "create",
        "friday",
        "--control",
        &format!("file:{}", registry.display()),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let code = stdout(&created).lines().last().unwrap().to_string();
    let before = fs::read(&registry).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&[
        "join",
        &code,
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--metrics",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("--metrics {addr}: cannot listen: ")),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&registry).unwrap(), before, "no member joined");
    fs::remove_dir_all(&dir).unwrap();
}
