//! End-to-end: `join --metrics` serves what `status` shows, as Prometheus text, on the
//! member's own loopback (inside its lab namespace). Needs root (see `tests/lab/mod.rs`).

mod lab;

use std::net::Ipv4Addr;
use std::time::Duration;

use lab::{wait_until, Lab};

/// Peers connect within a few seconds of joining on a loaded 2-core machine.
const CONNECT_SLACK: Duration = Duration::from_secs(10);
const METRICS: &str = "127.0.0.1:9588";

/// `curl` inside member `i`'s namespace: (HTTP status, Content-Type, body).
fn fetch(lab: &Lab, i: usize, path: &str, extra: &[&str]) -> (String, String, String) {
    let url = format!("http://{METRICS}{path}");
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
    ];
    argv.extend_from_slice(extra);
    argv.push(&url);
    let out = lab.exec(i, &argv).expect_success();
    let (body, trailer) = out.stdout.rsplit_once('\n').unwrap_or_default();
    let (code, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    (code.into(), content_type.into(), body.into())
}

#[test]
fn metrics_and_the_status_table_show_a_connected_direct_peer() {
    let lab = Lab::new("metrics", 2);
    let code = lab.create_party(&[]);
    let p0 = lab.spawn_join(
        0,
        &code,
        &[
            "--metrics",
            METRICS,
            "--degraded-rtt",
            "150",
            "--failed-after",
            "5",
        ],
    );
    let first = lab.wait_joined(p0);
    let (_p1, second) = lab.join(1, &code);
    assert_eq!(first.ip, Ipv4Addr::new(10, 66, 0, 1));
    let peer = format!("peer=\"m1\",vip=\"{}\"", second.ip);
    let body = wait_until("m0's metrics to show m1 connected", CONNECT_SLACK, || {
        let (status, _, body) = fetch(&lab, 0, "/metrics", &[]);
        let want = format!("lanparty_peer_state{{{peer},state=\"connected\"}} 1");
        if status == "200" && body.lines().any(|l| l == want) {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    });
    for line in [
        "lanparty_peers 1".to_string(),
        format!("lanparty_peer_path{{{peer},path=\"direct\"}} 1"),
        format!("lanparty_peer_state{{{peer},state=\"failed\"}} 0"),
    ] {
        assert!(body.lines().any(|l| l == line), "{line:?} in:\n{body}");
    }
    assert!(
        body.lines().any(|l| l.starts_with(&format!(
            "lanparty_peer_rtt_seconds{{{peer},path=\"direct\"}} "
        ))),
        "{body}"
    );
    let (_, content_type, _) = fetch(&lab, 0, "/metrics", &[]);
    assert_eq!(content_type, "text/plain; version=0.0.4");
    assert_eq!(fetch(&lab, 0, "/", &[]).0, "404");
    assert_eq!(fetch(&lab, 0, "/metrics", &["-X", "POST"]).0, "405");

    let state = lab.node(0).state_dir.display().to_string();
    let table = lab
        .lp(0, &["status", "--state-dir", &state])
        .expect_success();
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("m1 "))
        .unwrap_or_else(|| panic!("no row for m1:\n{}", table.stdout));
    assert!(
        row.contains("connected ") && row.contains(" direct "),
        "{row}"
    );
}
