//! The command line: parses each command's flags, validates them into resolved options once,
//! and runs the command.

pub mod args;
pub mod config;
mod member;
mod relay;

use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::control::{self, registry, CreatedParty, NewParty};
use crate::daemon::local_api;
use crate::failure::Failure;
use crate::identity::Identity;
use crate::server::ServerOptions;
use crate::state_dir;
use crate::status::{self, Status};
use args::{Args, Spec};

const USAGE: &str = "\
lanparty-lite: friends across the internet on one LAN

Usage: lanparty-lite COMMAND [OPTIONS]

Commands:
  server --listen ADDR:PORT   run the control server members join through
  relay --listen ADDR:PORT    run a relay for members whose NATs cannot meet directly
  create NAME --control URL   create a party and print its join code
  host NAME                   run a whole party here: server, STUN, relay and a member
  join CODE                   join a party and run the member in the foreground
  status                      show the running member and its peers
  leave                       make the running member leave the party
  keygen                      create this machine's key pair if absent; print the public key
  pubkey                      print this machine's public key

Run `lanparty-lite COMMAND --help` for a command's options.
Logging: RUST_LOG=info (or debug, trace).";

const HELP_CREATE: &str = "\
Usage: lanparty-lite create NAME --control URL [--subnet CIDR] [--max-peers N] [--json]

Creates a party and prints its join code as the last line of output.
  --control URL     control plane: http(s)://HOST:PORT of a `lanparty-lite server`,
                    or file:/path/registry.json shared by every member
  --subnet CIDR     virtual IP subnet (default 10.66.0.0/16)
  --max-peers N     most members at once (default 64)
  --json            print the party as a JSON object";

const HELP_JOIN: &str = "\
Usage: lanparty-lite join CODE [--name NAME] [--interface IF] [--listen-port PORT] [--mtu N]
                          [--broadcast-route] [--broadcast-rate N] [--relay IP:PORT]
                          [--metrics ADDR:PORT] [--degraded-rtt MS] [--degraded-loss PERCENT]
                          [--failed-after S] [--cleanup-after S] [--state-dir DIR]
                          [--background] [--replace] [--syslog]

Joins the party and runs in the foreground until SIGINT/SIGTERM or `lanparty-lite leave`.
Creates the key pair on first use. Safe to run again (from cron): if this party already runs
with the state directory, it says so and exits 0.
  --name NAME         display name (default: the host name)
  --interface IF      party interface name (default lp0)
  --listen-port PORT  UDP port for tunnels (default: any free port)
  --mtu N             interface MTU (default 1420)
  --broadcast-route   route 255.255.255.255 and multicast (224.0.0.0/4) through the party
                      interface, for games that broadcast without picking an interface
                      (this host's other LAN broadcasts then go to the party instead)
  --broadcast-rate N  broadcast/multicast packets per second sent to the party, and accepted
                      from each member (default 200; 0 turns LAN discovery off)
  --relay IP:PORT     relay to use when the control server lists none
  --state-dir DIR     key and socket directory (env LANPARTY_STATE_DIR)
  --background        detach (own session; output to member.log in the state directory) and
                      return once the member is up, or failed with its reason and exit code
  --replace           if a member of another party runs with the state directory, make it
                      leave first (without: exit 8)
  --syslog            log to the system log (/dev/log) instead of standard error";

const HELP_SERVER: &str = "\
Usage: lanparty-lite server --listen ADDR:PORT [--stun IP:PORT]... [--state-dir DIR] [--max-parties N] [--max-peers N] [--rate-limit N]

Runs the control server (HTTP/1.1 JSON API under /v1/) in the foreground until SIGINT/SIGTERM.
  --listen ADDR:PORT  address to serve on, e.g. 0.0.0.0:7777
  --stun IP:PORT      also answer STUN (UDP) here; repeat it: two IPs and two ports (four
                      sockets) let members learn their NAT type. A specific IP, not 0.0.0.0
  --state-dir DIR     registry and server key (default: <member state dir>/server)
  --max-parties N     most parties at once (default 1000)
  --max-peers N       most members per party (default 64)
  --rate-limit N      requests per second per source address, bursts of 2N (default 20; 0: off)
  --relay-secret-file FILE  secret shared with relays (>= 32 characters); enables relay
                            registration and relay tickets";

const HELP_STATUS: &str = "\
Usage: lanparty-lite status [--json] [--state-dir DIR]

Shows the running member, its party and every peer.
  --json            print the status document as JSON";

const HELP_LEAVE: &str = "\
Usage: lanparty-lite leave [--state-dir DIR]

Makes the running member leave the party, remove its interface and exit.";

const HELP_KEYGEN: &str = "\
Usage: lanparty-lite keygen [--state-dir DIR]

Creates the key pair in the state directory if there is none, and prints the public key.";

const HELP_PUBKEY: &str = "\
Usage: lanparty-lite pubkey [--state-dir DIR]

Prints the public key (fails if `keygen` or `join` has not run yet).";

const STATE_ONLY: Spec = Spec {
    valued: &["state-dir"],
    repeatable: &[],
    switches: &[],
    positionals: 0,
    positional_names: &[],
};

const CREATE: Spec = Spec {
    valued: &["control", "subnet", "max-peers"],
    repeatable: &[],
    switches: &["json"],
    positionals: 1,
    positional_names: &["NAME"],
};

pub(super) const JOIN: Spec = Spec {
    valued: &[
        "name",
        "interface",
        "listen-port",
        "mtu",
        "broadcast-rate",
        "relay",
        "state-dir",
        "metrics",
        "degraded-rtt",
        "degraded-loss",
        "failed-after",
        "cleanup-after",
    ],
    repeatable: &[],
    switches: &["broadcast-route", "background", "replace", "syslog"],
    positionals: 1,
    positional_names: &["CODE"],
};

const SERVER: Spec = Spec {
    valued: &[
        "listen",
        "state-dir",
        "max-parties",
        "max-peers",
        "rate-limit",
        "relay-secret-file",
    ],
    repeatable: &["stun"],
    switches: &[],
    positionals: 0,
    positional_names: &[],
};

const STATUS: Spec = Spec {
    valued: &["state-dir"],
    repeatable: &[],
    switches: &["json"],
    positionals: 0,
    positional_names: &[],
};

/// Every command's flags: what a configuration file section may set.
const COMMANDS: &[(&str, &Spec)] = &[
    ("server", &SERVER),
    ("relay", &relay::SPEC),
    ("create", &CREATE),
    ("join", &JOIN),
    ("host", &member::HOST),
    ("status", &STATUS),
    ("leave", &STATE_ONLY),
    ("keygen", &STATE_ONLY),
    ("pubkey", &STATE_ONLY),
];

/// Runs the command line `argv` (without the program name).
pub fn run(argv: &[String]) -> Result<(), Failure> {
    let Some((command, rest)) = argv.split_first() else {
        return Err(Failure::Usage(USAGE.into()));
    };
    if command != "join" && command != "host" {
        crate::logging::init(false);
    }
    let wants_help = rest.iter().any(|a| a == "--help" || a == "-h");
    let help = match command.as_str() {
        "-h" | "--help" | "help" => Some(USAGE),
        "-V" | "--version" | "version" => {
            println!("lanparty-lite {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        "server" => Some(HELP_SERVER),
        "relay" => Some(relay::HELP),
        "create" => Some(HELP_CREATE),
        "join" => Some(HELP_JOIN),
        "host" => Some(member::HELP_HOST),
        "status" => Some(HELP_STATUS),
        "leave" => Some(HELP_LEAVE),
        "keygen" => Some(HELP_KEYGEN),
        "pubkey" => Some(HELP_PUBKEY),
        other => {
            return Err(Failure::Usage(format!(
                "unknown command {other:?}\n\n{USAGE}"
            )))
        }
    };
    if wants_help || matches!(command.as_str(), "-h" | "--help" | "help") {
        println!("{}", help.unwrap_or(USAGE));
        if command == "join" {
            println!("{}", member::HELP_HEALTH);
        }
        return Ok(());
    }
    match command.as_str() {
        "server" => server(rest),
        "relay" => relay::relay(rest),
        "create" => create(rest),
        "join" => member::join(rest),
        "host" => member::host(rest),
        "status" => show_status(rest),
        "leave" => leave(rest),
        "keygen" => keygen(rest, true),
        _ => keygen(rest, false),
    }
}

pub(super) fn state_dir(args: &Args) -> Result<PathBuf, Failure> {
    state_dir::resolve(args.value("state-dir")).map_err(Failure::Input)
}

fn keygen(argv: &[String], create: bool) -> Result<(), Failure> {
    let command = if create { "keygen" } else { "pubkey" };
    let args = Args::load(command, argv, &STATE_ONLY, COMMANDS)?;
    let dir = state_dir(&args)?;
    let identity = if create {
        Identity::load_or_create(&dir).map(|(id, _)| id)
    } else {
        Identity::load(&dir)
    }
    .map_err(|e| Failure::System(e.to_string()))?;
    println!("{}", identity.public);
    Ok(())
}

fn create(argv: &[String]) -> Result<(), Failure> {
    let args = Args::load("create", argv, &CREATE, COMMANDS)?;
    let control_url = args.value("control").ok_or_else(|| {
        Failure::Usage("create: --control URL is required (e.g. file:/tmp/registry.json)".into())
    })?;
    let subnet: Ipv4Net = args.parsed("subnet")?.unwrap_or_else(|| {
        registry::DEFAULT_SUBNET
            .parse()
            .expect("valid default subnet")
    });
    let max_peers: u32 = args
        .parsed("max-peers")?
        .unwrap_or(registry::DEFAULT_MAX_PEERS);
    let new = NewParty {
        name: args.positionals[0].clone(),
        subnet,
        max_peers,
        secret: None,
    };
    let party: CreatedParty = control::open(control_url, None, None)?.create_party(new)?;
    if args.switch("json") {
        println!("{}", serde_json::to_string(&party).unwrap_or_default());
    } else {
        println!(
            "party {:?} created ({} members at most, subnet {})",
            party.name, party.max_peers, party.subnet
        );
        println!(
            "join with: lanparty-lite join {} (a party without members ends after {} minutes)",
            party.join_code,
            registry::EMPTY_PARTY_TTL_S / 60
        );
        println!("{}", party.join_code);
    }
    Ok(())
}

pub(super) fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| registry::validate_name(h).is_ok())
        .unwrap_or_else(|| "member".into())
}

fn server(argv: &[String]) -> Result<(), Failure> {
    let args = Args::load("server", argv, &SERVER, COMMANDS)?;
    let listen = args.parsed("listen")?.ok_or_else(|| {
        Failure::Usage("server: --listen ADDR:PORT is required (e.g. 0.0.0.0:7777)".into())
    })?;
    let state_dir = match args.value("state-dir") {
        Some(dir) => PathBuf::from(dir),
        None => state_dir(&args)?.join("server"),
    };
    let max_parties: usize = args.parsed("max-parties")?.unwrap_or(1000);
    let max_peers: u32 = args
        .parsed("max-peers")?
        .unwrap_or(registry::DEFAULT_MAX_PEERS);
    if max_parties == 0 || max_peers == 0 {
        return Err(Failure::Input(
            "--max-parties and --max-peers must be at least 1".into(),
        ));
    }
    let rate_per_s = args.parsed("rate-limit")?.unwrap_or(20);
    let relay_secret = args
        .value("relay-secret-file")
        .map(read_relay_secret)
        .transpose()?;
    let stun = args.parsed_all("stun")?;
    crate::stun_server::validate(&stun).map_err(|e| Failure::Input(format!("--stun {e}")))?;
    crate::server::run(ServerOptions {
        listen,
        state_dir,
        max_parties,
        max_peers,
        rate_per_s,
        relay_secret,
        stun,
    })
}

/// Reads the secret shared by server and relays (surrounding whitespace ignored).
fn read_relay_secret(path: &str) -> Result<Vec<u8>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("--relay-secret-file {path}: {e}")))?;
    let secret = text.trim();
    if secret.len() < crate::server::relays::MIN_SECRET_LEN {
        return Err(Failure::Input(format!(
            "--relay-secret-file {path}: the secret must be at least {} characters",
            crate::server::relays::MIN_SECRET_LEN
        )));
    }
    Ok(secret.as_bytes().to_vec())
}

fn show_status(argv: &[String]) -> Result<(), Failure> {
    let args = Args::load("status", argv, &STATUS, COMMANDS)?;
    let line = local_api::call(&state_dir(&args)?, local_api::Request::Status)?;
    let status: Status = serde_json::from_str(&line)
        .map_err(|e| Failure::System(format!("unexpected status from the member: {e}")))?;
    if args.switch("json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", status::render_table(&status));
    }
    Ok(())
}

fn leave(argv: &[String]) -> Result<(), Failure> {
    let args = Args::load("leave", argv, &STATE_ONLY, COMMANDS)?;
    let dir = state_dir(&args)?;
    local_api::call(&dir, local_api::Request::Leave)?;
    // Return once the member is gone, so `leave && join` works.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(local_api::socket_path(&dir)).is_ok() {
        if std::time::Instant::now() >= give_up {
            return Err(Failure::System(
                "the member did not stop within 10 s".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("left the party");
    Ok(())
}
