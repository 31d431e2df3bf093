//! The service files in `scripts/service/` start the member with options it accepts: the
//! OpenWrt init script is run against stand-ins for OpenWrt's UCI and procd shell functions,
//! and every flag the systemd unit, the init script and the cron example pass must be one
//! `lanparty-lite join --help` documents.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lanparty-lite");

fn service_file(name: &str) -> String {
    let path = format!("{}/scripts/service/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn join_help() -> String {
    let out = Command::new(BIN).args(["join", "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Panics unless `argv` is `… join CODE …` and every `--flag` in it is a documented option.
fn assert_valid_join(argv: &[&str], origin: &str) {
    let help = join_help();
    let at = argv
        .iter()
        .position(|a| *a == "join")
        .unwrap_or_else(|| panic!("{origin}: no `join` in {argv:?}"));
    for flag in argv[at + 1..].iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{origin}: {flag} is not a join option"
        );
    }
}

/// Runs `start_service` of the init script with UCI options `options` (`name=value`) and
/// returns the command line procd would run.
fn openwrt_command(options: &[(&str, &str)]) -> Vec<String> {
    let mut harness = String::from(
        r#"
uci() { eval "printf '%s' \"\${UCI_$1:-$2}\""; }
config_load() { :; }
config_get() { eval "$1=\$(uci $3 \"$4\")"; }
config_get_bool() {
    local v; v=$(uci "$3" "$4")
    case "$v" in 1|on|true|yes|enabled) v=1 ;; *) v=0 ;; esac
    eval "$1=$v"
}
procd_open_instance() { CMD=""; }
procd_set_param() { [ "$1" = command ] && { shift; for a in "$@"; do CMD="$CMD$a
"; done; }; return 0; }
procd_append_param() { procd_set_param "$@"; }
procd_close_instance() { printf '%s' "$CMD"; }
procd_add_reload_trigger() { :; }
"#,
    );
    for (key, value) in options {
        harness.push_str(&format!("UCI_{key}='{value}'\n"));
    }
    let script = format!(
        "{}/scripts/service/lanparty-lite.init",
        env!("CARGO_MANIFEST_DIR")
    );
    harness.push_str(&format!(". {script}\nstart_service\n"));
    let out = Command::new("sh").args(["-c", &harness]).output().unwrap();
    assert!(
        out.status.success(),
        "init script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_openwrt_init_script_turns_uci_options_into_join_flags() {
    let code = "http://203.0.113.7:7777#abcdefghij.0123456789abcdefghijklmnop";
    let argv = openwrt_command(&[
        ("enabled", "1"),
        ("code", code),
        ("name", "attic"),
        ("broadcast_route", "1"),
        ("broadcast_rate", "100"),
    ]);
    assert_eq!(
        argv,
        [
            "/usr/bin/lanparty-lite",
            "join",
            code,
            "--syslog",
            "--state-dir",
            "/etc/lanparty-lite",
            "--name",
            "attic",
            "--broadcast-rate",
            "100",
            "--broadcast-route"
        ]
    );
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    assert_valid_join(&refs, "lanparty-lite.init");
    assert!(
        openwrt_command(&[("enabled", "0"), ("code", code)]).is_empty(),
        "disabled: nothing starts"
    );
}

#[test]
fn the_systemd_unit_and_the_cron_example_pass_only_join_options() {
    let unit = service_file("lanparty-lite.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_valid_join(&argv, "lanparty-lite.service");
    assert!(unit.contains("KillSignal=SIGTERM"));

    let cron = service_file("lanparty-lite.cron");
    let lines: Vec<&str> = cron
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "@reboot and every 5 minutes");
    for line in lines {
        let argv: Vec<&str> = line.split_whitespace().collect();
        assert_valid_join(&argv, "lanparty-lite.cron");
        assert!(line.contains("--background"), "{line}");
    }
}
