//! `join` and `host`: the commands that run a member, validated into [`MemberOptions`] (and
//! [`HostOptions`]) in one place.

use std::net::SocketAddr;
use std::time::Duration;

use super::args::{Args, Spec};
use super::{default_name, state_dir, COMMANDS, JOIN};
use crate::control::{registry, JoinCode};
use crate::daemon::host::{self, HostOptions};
use crate::daemon::{self, MemberOptions};
use crate::dataplane::health::Thresholds;
use crate::dataplane::{broadcast, tun_device};
use crate::failure::Failure;

pub(super) const HELP_HOST: &str = "\
Usage: lanparty-lite host NAME [--listen ADDR:PORT] [--advertise IP:PORT] [--name NAME]
                          [--interface IF] [--listen-port PORT] [--mtu N] [--broadcast-route]
                          [--broadcast-rate N] [--metrics ADDR:PORT] [--degraded-rtt MS]
                          [--degraded-loss PERCENT] [--failed-after S] [--cleanup-after S]
                          [--state-dir DIR] [--syslog]

Runs a whole party in this process, no other infrastructure needed: the control server (HTTP
on TCP PORT), its STUN responder (UDP PORT and PORT+1), a relay (UDP PORT+2), the party NAME,
and a member of it on this machine. Prints the join code others use (`status` shows it too,
as party.join_code). State (registry, keys, relay secret, the party's code) stays in
<state-dir>/host, so a restarted host serves the same party. Stops on SIGINT/SIGTERM or `leave`.
  --listen ADDR:PORT  where to serve (default 0.0.0.0:7777)
  --advertise IP:PORT the address members reach this host at (default: --listen, or this
                      machine's first IPv4 address when listening on all)
  Member options as for `join`: --name, --interface, --listen-port, --mtu, --broadcast-route,
  --broadcast-rate, --metrics, --degraded-rtt, --degraded-loss, --failed-after,
  --cleanup-after, --state-dir, --syslog.";

/// Help for the flags `join` and `host` share, appended to `join --help`.
pub(super) const HELP_HEALTH: &str = "\
Health and metrics (for `host` too):
  --metrics ADDR:PORT serve Prometheus metrics at http://ADDR:PORT/metrics (default: off;
                      e.g. 127.0.0.1:9588)
  --degraded-rtt MS   a peer whose path in use has a smoothed RTT above this is degraded
                      (default 200, 1 to 10000)
  --degraded-loss PERCENT
                      ... or loses at least this share of its probes (default 25, 1 to 100)
  --failed-after S    a peer that answers no probe on any path for this long is failed
                      (default 10, 2 to 3600)
  --cleanup-after S   a peer failed for this long is removed until it handshakes again
                      (default 300, 1 to 86400)";

/// `host`'s flags.
pub(super) const HOST: Spec = Spec {
    valued: &[
        "listen",
        "advertise",
        "name",
        "interface",
        "listen-port",
        "mtu",
        "broadcast-rate",
        "state-dir",
        "metrics",
        "degraded-rtt",
        "degraded-loss",
        "failed-after",
        "cleanup-after",
    ],
    repeatable: &[],
    switches: &["broadcast-route", "syslog"],
    positionals: 1,
    positional_names: &["NAME"],
};

/// A member's options from `args` (shared by `join` and `host`), for the party of `code`.
fn member_options(args: &Args, code: JoinCode) -> Result<MemberOptions, Failure> {
    let name = args.value("name").map_or_else(default_name, String::from);
    registry::validate_name(&name).map_err(|e| Failure::Input(format!("--name: {e}")))?;
    let interface = args
        .value("interface")
        .unwrap_or(tun_device::DEFAULT_INTERFACE)
        .to_string();
    tun_device::validate_name(&interface).map_err(Failure::Input)?;
    let mtu: u16 = args.parsed("mtu")?.unwrap_or(tun_device::DEFAULT_MTU);
    if !(tun_device::MIN_MTU..=9000).contains(&mtu) {
        return Err(Failure::Input(format!(
            "--mtu {mtu}: must be between {} and 9000",
            tun_device::MIN_MTU
        )));
    }
    let broadcast_rate: u32 = args
        .parsed("broadcast-rate")?
        .unwrap_or(broadcast::DEFAULT_RATE_PER_S);
    if broadcast_rate > broadcast::MAX_RATE_PER_S {
        return Err(Failure::Input(format!(
            "--broadcast-rate {broadcast_rate}: must be at most {} packets per second",
            broadcast::MAX_RATE_PER_S
        )));
    }
    let metrics: Option<SocketAddr> = args.parsed("metrics")?;
    if metrics.is_some_and(|m| m.port() == 0) {
        return Err(Failure::Input(
            "--metrics: give the port to serve on, e.g. 127.0.0.1:9588".into(),
        ));
    }
    Ok(MemberOptions {
        code,
        name,
        interface,
        listen_port: args.parsed("listen-port")?.unwrap_or(0),
        mtu,
        state_dir: state_dir(args)?,
        broadcast_rate,
        broadcast_route: args.switch("broadcast-route"),
        replace: args.switch("replace"),
        relay: args.parsed("relay")?,
        metrics,
        thresholds: thresholds(args)?,
    })
}

/// A whole-number flag in `min..=max`, or `default` when absent.
fn bounded(
    args: &Args,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u64, Failure> {
    let value = args.parsed(name)?.unwrap_or(default);
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Failure::Input(format!(
            "--{name} {value}: must be between {min} and {max} {unit}"
        )))
    }
}

/// The health thresholds from `--degraded-rtt`, `--degraded-loss`, `--failed-after` and
/// `--cleanup-after`.
fn thresholds(args: &Args) -> Result<Thresholds, Failure> {
    let d = Thresholds::default();
    let rtt_ms = d.degraded_rtt.as_millis() as u64;
    let loss = (d.degraded_loss * 100.0).round() as u64;
    Ok(Thresholds {
        degraded_rtt: Duration::from_millis(bounded(
            args,
            "degraded-rtt",
            rtt_ms,
            1,
            10_000,
            "ms",
        )?),
        degraded_loss: bounded(args, "degraded-loss", loss, 1, 100, "percent")? as f64 / 100.0,
        // A probe counts as lost only after 2 s (health::LOST_AFTER).
        failed_after: Duration::from_secs(bounded(
            args,
            "failed-after",
            d.failed_after.as_secs(),
            2,
            3600,
            "seconds",
        )?),
        cleanup_after: Duration::from_secs(bounded(
            args,
            "cleanup-after",
            d.cleanup_after.as_secs(),
            1,
            86_400,
            "seconds",
        )?),
    })
}

/// `join CODE …`.
pub(super) fn join(argv: &[String]) -> Result<(), Failure> {
    let args = Args::load("join", argv, &JOIN, COMMANDS)?;
    crate::logging::init(args.switch("syslog"));
    let code = JoinCode::parse(&args.positionals[0]).map_err(|e| Failure::Input(e.to_string()))?;
    let opts = member_options(&args, code)?;
    if args.switch("background") {
        let mut member_argv = vec!["join".to_string()];
        member_argv.extend(argv.iter().filter(|a| *a != "--background").cloned());
        return daemon::background::start(&opts, &member_argv);
    }
    daemon::run(opts)
}

/// `host NAME …`.
pub(super) fn host(argv: &[String]) -> Result<(), Failure> {
    let args = Args::load("host", argv, &HOST, COMMANDS)?;
    crate::logging::init(args.switch("syslog"));
    let party_name = args.positionals[0].clone();
    registry::validate_name(&party_name).map_err(|e| Failure::Input(format!("NAME: {e}")))?;
    let listen: SocketAddr = match args.parsed("listen")? {
        Some(listen) => listen,
        None => host::DEFAULT_LISTEN
            .parse()
            .expect("valid default listen address"),
    };
    if listen.port() == 0 || listen.port() > u16::MAX - 2 {
        return Err(Failure::Input(format!(
            "--listen {listen}: give a port from 1 to {} (the next two serve STUN and the relay)",
            u16::MAX - 2
        )));
    }
    let advertise: Option<SocketAddr> = args.parsed("advertise")?;
    if advertise.is_some_and(|a| a.ip().is_unspecified() || a.port() == 0) {
        return Err(Failure::Input(
            "--advertise: give the IP address and port members reach this host at".into(),
        ));
    }
    // Validates every member option now, before anything starts.
    let placeholder = JoinCode::parse("file:/dev/null#check").expect("valid code");
    member_options(&args, placeholder)?;
    let state_dir = state_dir(&args)?;
    let interface = args
        .value("interface")
        .unwrap_or(tun_device::DEFAULT_INTERFACE)
        .to_string();
    host::run(HostOptions {
        party_name,
        listen,
        advertise,
        state_dir,
        interface,
        member: Box::new(move |code| {
            member_options(&args, code).expect("member options were validated above")
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        Args::parse("join", &argv, &crate::cli::JOIN).unwrap()
    }

    #[test]
    fn threshold_flags_reach_the_data_plane_in_its_units() {
        assert_eq!(
            thresholds(&args(&["c"])).unwrap(),
            Thresholds::default(),
            "defaults: 200 ms, 25 %, 10 s, 300 s"
        );
        let t = thresholds(&args(&[
            "c",
            "--degraded-rtt",
            "150",
            "--degraded-loss",
            "10",
            "--failed-after",
            "4",
            "--cleanup-after",
            "60",
        ]))
        .unwrap();
        assert_eq!(
            t,
            Thresholds {
                degraded_rtt: Duration::from_millis(150),
                degraded_loss: 0.1,
                failed_after: Duration::from_secs(4),
                cleanup_after: Duration::from_secs(60),
            }
        );
    }
}
