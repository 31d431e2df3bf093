//! `join` and `host`: the commands that run a member, validated into [`MemberOptions`] (and
//! [`HostOptions`]) in one place.

use std::net::SocketAddr;

use super::args::{Args, Spec};
use super::{default_name, state_dir, COMMANDS, JOIN};
use crate::control::{registry, JoinCode};
use crate::daemon::host::{self, HostOptions};
use crate::daemon::{self, MemberOptions};
use crate::dataplane::{broadcast, tun_device};
use crate::failure::Failure;

pub(super) const HELP_HOST: &str = "\
Usage: lanparty-lite host NAME [--listen ADDR:PORT] [--advertise IP:PORT] [--name NAME]
                          [--interface IF] [--listen-port PORT] [--mtu N] [--broadcast-route]
                          [--broadcast-rate N] [--state-dir DIR] [--syslog]

Runs a whole party in this process, no other infrastructure needed: the control server (HTTP
on TCP PORT), its STUN responder (UDP PORT and PORT+1), a relay (UDP PORT+2), the party NAME,
and a member of it on this machine. Prints the join code others use (`status` shows it too,
as party.join_code). State (registry, keys, relay secret, the party's code) stays in
<state-dir>/host, so a restarted host serves the same party. Stops on SIGINT/SIGTERM or `leave`.
  --listen ADDR:PORT  where to serve (default 0.0.0.0:7777)
  --advertise IP:PORT the address members reach this host at (default: --listen, or this
                      machine's first IPv4 address when listening on all)
  Member options as for `join`: --name, --interface, --listen-port, --mtu, --broadcast-route,
  --broadcast-rate, --state-dir, --syslog.";

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
