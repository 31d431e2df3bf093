//! `lanparty-lite host NAME`: a whole party in one process, with no other infrastructure.
//! The control server (with its STUN responder) and a relay run on threads of their own, the
//! party is created on that server, and this machine joins it as a member; the join code it
//! prints points at this host. State lives under `<state-dir>/host/`: the server's registry
//! and key, the relay secret, and the party's join code, so a restarted host serves the same
//! party (and its members get the same addresses back).
//!
//! Ports (with `--listen ADDR:P`): the HTTP API on TCP P, STUN on UDP P and P+1, the relay on
//! UDP P+2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::{signals, MemberOptions};
use crate::atomic_file;
use crate::control::{self, registry, JoinCode, NewParty};
use crate::dataplane::socket;
use crate::failure::Failure;
use crate::relay::core::Config;
use crate::relay::run::RelayOptions;
use crate::server::{self, ServerOptions};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7777";

/// Resolved options of `host`.
pub struct HostOptions {
    /// Party name.
    pub party_name: String,
    /// TCP address of the control API; STUN and the relay use the next ports.
    pub listen: SocketAddr,
    /// Address members reach this host at (default: the listen address, or this machine's
    /// first IPv4 address when listening on all).
    pub advertise: Option<SocketAddr>,
    /// The state directory (the member's; the host's state is under `host/`).
    pub state_dir: PathBuf,
    /// The interface the member creates (not advertised).
    pub interface: String,
    /// The member that runs here, given the party's join code.
    pub member: Box<dyn Fn(JoinCode) -> MemberOptions>,
}

/// Everything `host` keeps under the state directory.
struct HostDir(PathBuf);

impl HostDir {
    fn server(&self) -> PathBuf {
        self.0.join("server")
    }

    /// The relay secret, created (32 random bytes, base64, mode 0600) on first use.
    fn relay_secret(&self) -> Result<Vec<u8>, Failure> {
        let path = self.0.join("relay.secret");
        let mut raw = [0u8; 32];
        crate::random::fill(&mut raw).map_err(|e| Failure::System(format!("randomness: {e}")))?;
        let fresh = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
        atomic_file::create_new(&path, fresh.as_bytes(), 0o600)
            .map_err(|e| Failure::System(format!("{}: {e}", path.display())))?;
        let secret = std::fs::read_to_string(&path)
            .map_err(|e| Failure::System(format!("{}: {e}", path.display())))?;
        let secret = secret.trim();
        if secret.len() < crate::server::relays::MIN_SECRET_LEN {
            return Err(Failure::System(format!(
                "{}: shorter than {} characters; remove it to make a new one",
                path.display(),
                crate::server::relays::MIN_SECRET_LEN
            )));
        }
        Ok(secret.as_bytes().to_vec())
    }

    fn code_path(&self) -> PathBuf {
        self.0.join("party.code")
    }
}

/// The address members reach us at.
fn advertised(opts: &HostOptions) -> SocketAddr {
    if let Some(a) = opts.advertise {
        return a;
    }
    if !opts.listen.ip().is_unspecified() {
        return opts.listen;
    }
    let ip = socket::local_endpoints(0, &opts.interface)
        .first()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), SocketAddr::ip);
    SocketAddr::new(ip, opts.listen.port())
}

/// A local address to bind STUN on: STUN replies must leave from a known address.
fn stun_ip(opts: &HostOptions, advertise: SocketAddr) -> IpAddr {
    if !opts.listen.ip().is_unspecified() {
        opts.listen.ip()
    } else {
        advertise.ip()
    }
}

/// Where this process reaches a socket bound to `local` (loopback for a wildcard bind).
fn reachable(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
    } else {
        local
    }
}

fn port_after(port: u16, n: u16) -> Result<u16, Failure> {
    port.checked_add(n).ok_or_else(|| {
        Failure::Input(format!(
            "--listen port {port}: the next {n} ports are needed too (STUN, relay)"
        ))
    })
}

/// Runs the host until SIGINT/SIGTERM or `leave`; then the member leaves and the relay and
/// the server stop.
pub fn run(opts: HostOptions) -> Result<(), Failure> {
    // Before any thread starts, so every thread has them blocked and `sigwait` gets them.
    signals::block().map_err(|e| Failure::System(format!("cannot block signals: {e}")))?;
    if let Some(status) = super::running::find(&opts.state_dir)? {
        println!(
            "already running: party {:?} ({}) as {} ({})",
            status.party.name, status.party.id, status.self_.name, status.self_.virtual_ip
        );
        return Ok(());
    }
    crate::identity::ensure_private_dir(&opts.state_dir).map_err(|e| {
        Failure::System(format!("state directory {}: {e}", opts.state_dir.display()))
    })?;
    let dir = HostDir(opts.state_dir.join("host"));
    crate::identity::ensure_private_dir(&dir.0)
        .map_err(|e| Failure::System(format!("{}: {e}", dir.0.display())))?;
    let advertise = advertised(&opts);
    let port = opts.listen.port();
    let stun_at = stun_ip(&opts, advertise);
    let secret = dir.relay_secret()?;
    let server = server::start(ServerOptions {
        listen: opts.listen,
        state_dir: dir.server(),
        max_parties: 16,
        max_peers: registry::DEFAULT_MAX_PEERS,
        rate_per_s: 20,
        relay_secret: Some(secret.clone()),
        stun: vec![
            SocketAddr::new(stun_at, port),
            SocketAddr::new(stun_at, port_after(port, 1)?),
        ],
    })?;
    let url = format!("http://{advertise}");
    let relay_port = port_after(port, 2)?;
    let relay = crate::relay::run::start(RelayOptions {
        listen: SocketAddr::new(opts.listen.ip(), relay_port),
        advertise: Some(SocketAddr::new(advertise.ip(), relay_port)),
        secret,
        control: format!("http://{}", reachable(server.local)),
        region: "host".into(),
        config: Config::default(),
        stun: Vec::new(),
    });
    let relay = match relay {
        Ok(relay) => relay,
        Err(e) => {
            let _ = server.stop();
            return Err(e);
        }
    };
    let result = party_code(&dir, &url, &opts.party_name).and_then(|code| {
        println!("join code: {code}");
        super::run((opts.member)(code))
    });
    let _ = relay.stop();
    let _ = server.stop();
    result
}

/// The code of the party this host serves: the one of an earlier run if the server still
/// has it, else a new party's.
fn party_code(dir: &HostDir, url: &str, name: &str) -> Result<JoinCode, Failure> {
    if let Some(code) = std::fs::read_to_string(dir.code_path())
        .ok()
        .and_then(|text| JoinCode::parse(text.trim()).ok())
        .filter(|code| same_server(code, url))
    {
        let mut control = control::open(url, code.secret.clone(), None)?;
        if control.party_exists(&code.party_id)? {
            return Ok(code);
        }
    }
    let new = NewParty {
        name: name.to_string(),
        subnet: registry::DEFAULT_SUBNET
            .parse()
            .expect("valid default subnet"),
        max_peers: registry::DEFAULT_MAX_PEERS,
        secret: None,
    };
    let party = control::open(url, None, None)?.create_party(new)?;
    atomic_file::write(&dir.code_path(), party.join_code.as_bytes(), 0o600)
        .map_err(|e| Failure::System(format!("{}: {e}", dir.code_path().display())))?;
    JoinCode::parse(&party.join_code).map_err(|e| Failure::System(e.to_string()))
}

fn same_server(code: &JoinCode, url: &str) -> bool {
    code.control.trim_end_matches('/') == url.trim_end_matches('/')
}
