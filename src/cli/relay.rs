//! `lanparty-lite relay`: validates every flag into [`RelayOptions`] and runs the relay.

use std::net::SocketAddr;

use super::args::{Args, Spec};
use crate::control::code::is_http_url;
use crate::failure::Failure;
use crate::relay::core::Config;
use crate::relay::run::{self, RelayOptions};

pub(super) const HELP: &str = "\
Usage: lanparty-lite relay --listen ADDR:PORT --secret-file FILE --control URL [--region NAME] [--max-clients N] [--client-pps N] [--client-bytes-per-s N] [--advertise ADDR:PORT] [--stun IP:PORT]...

Runs a relay in the foreground until SIGINT/SIGTERM: forwards WireGuard datagrams between
members of the same party that bound with a ticket from the control server. SIGUSR1 logs its
counters (they are also logged every 60 s while they change).
  --listen ADDR:PORT        UDP address to serve on, e.g. 0.0.0.0:3478
  --secret-file FILE        the secret the control server has in --relay-secret-file (>= 32 characters)
  --control URL             http(s)://HOST:PORT of the control server to register with
  --region NAME             region label members see (1-32 of [A-Za-z0-9_-], default: default)
  --max-clients N           most members bound at once (default 512)
  --client-pps N            datagrams per second per member, bursts of as many (default 10000)
  --client-bytes-per-s N    bytes per second per member, bursts of as many (default 12500000 = 100 Mbit/s, >= 1500)
  --advertise ADDR:PORT     address members reach this relay at (default: --listen; needed
                            when --listen is 0.0.0.0)
  --stun IP:PORT            also answer STUN (UDP) here, like `server --stun` (repeatable)";

/// `relay`'s flags.
pub(super) const SPEC: Spec = Spec {
    valued: &[
        "listen",
        "secret-file",
        "control",
        "region",
        "max-clients",
        "client-pps",
        "client-bytes-per-s",
        "advertise",
    ],
    repeatable: &["stun"],
    switches: &[],
    positionals: 0,
    positional_names: &[],
};

/// Whether a region label is acceptable to the control server.
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses and validates `relay`'s flags.
pub(super) fn options(argv: &[String]) -> Result<RelayOptions, Failure> {
    let args = Args::load("relay", argv, &SPEC, super::COMMANDS)?;
    let required = |name: &str, example: &str| {
        Failure::Usage(format!("relay: --{name} is required (e.g. {example})"))
    };
    let listen: SocketAddr = args
        .parsed("listen")?
        .ok_or_else(|| required("listen", "--listen 0.0.0.0:3478"))?;
    let secret_file = args
        .value("secret-file")
        .ok_or_else(|| required("secret-file", "--secret-file /etc/lanparty/relay.secret"))?;
    let control = args
        .value("control")
        .ok_or_else(|| required("control", "--control http://203.0.113.7:7777"))?;
    if !is_http_url(control) {
        return Err(Failure::Input(format!(
            "--control {control:?}: expected http://HOST:PORT or https://HOST:PORT of a control server"
        )));
    }
    let advertise: Option<SocketAddr> = args.parsed("advertise")?;
    if let Some(a) = advertise {
        if a.ip().is_unspecified() || a.port() == 0 {
            return Err(Failure::Input(format!(
                "--advertise {a}: needs an address and port members can reach"
            )));
        }
    } else if listen.ip().is_unspecified() {
        return Err(Failure::Input(format!(
            "--listen {listen} listens on every address: give --advertise ADDR:PORT, the address members reach"
        )));
    }
    let region = args.value("region").unwrap_or("default").to_string();
    if !valid_region(&region) {
        return Err(Failure::Input(format!(
            "--region {region:?}: 1-32 characters of [A-Za-z0-9_-]"
        )));
    }
    let defaults = Config::default();
    let max_clients: usize = args.parsed("max-clients")?.unwrap_or(defaults.max_clients);
    if !(1..=1_000_000).contains(&max_clients) {
        return Err(Failure::Input(
            "--max-clients must be between 1 and 1000000".into(),
        ));
    }
    let client_pps: u64 = args.parsed("client-pps")?.unwrap_or(defaults.client_pps);
    if client_pps == 0 {
        return Err(Failure::Input("--client-pps must be at least 1".into()));
    }
    let client_bytes_per_s: u64 = args
        .parsed("client-bytes-per-s")?
        .unwrap_or(defaults.client_bytes_per_s);
    if client_bytes_per_s < 1500 {
        return Err(Failure::Input(
            "--client-bytes-per-s must be at least 1500 (one full-size datagram)".into(),
        ));
    }
    let secret = super::read_relay_secret(secret_file).map_err(|e| {
        Failure::Input(
            e.to_string()
                .replace("--relay-secret-file", "--secret-file"),
        )
    })?;
    let stun = args.parsed_all("stun")?;
    crate::stun_server::validate(&stun).map_err(|e| Failure::Input(format!("--stun {e}")))?;
    Ok(RelayOptions {
        stun,
        listen,
        advertise,
        secret,
        control: control.trim_end_matches('/').to_string(),
        region,
        config: Config {
            max_clients,
            client_pps,
            client_bytes_per_s,
        },
    })
}

/// Runs `relay`.
pub(super) fn relay(argv: &[String]) -> Result<(), Failure> {
    run::run(options(argv)?)
}
