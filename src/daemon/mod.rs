//! A running member: wires identity, control plane, tun, data plane, control thread, local API
//! and signals together, and takes them down in order.

pub mod background;
pub mod control_loop;
pub mod host;
pub mod local_api;
pub mod metrics;
mod metrics_server;
pub mod nat_thread;
pub mod relay_choice;
pub mod running;
pub mod signals;
mod status_view;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::control::{self, JoinCode, JoinRequest, Reach};
use crate::dataplane::health::Thresholds;
use crate::dataplane::{self, peers::PeerTable, socket, tun_device, Command, Uplinks};
use crate::failure::Failure;
use crate::identity::{self, Identity};
use crate::nat::NatType;
use crate::status::{PartyStatus, SelfBroadcast, SelfStatus};
use control_loop::{ControlCommand, ControlLoop};
use relay_choice::RelayBook;

/// How long stopping waits for the control plane to confirm that we left; with tearing
/// down the interface, a member stops within 2 s of SIGTERM.
const LEAVE_GRACE: Duration = Duration::from_millis(1500);

/// How long a status or metrics request waits for the data plane's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolved options of `join`.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// Parsed join code.
    pub code: JoinCode,
    /// Display name.
    pub name: String,
    /// Interface name.
    pub interface: String,
    /// UDP port (0 picks one).
    pub listen_port: u16,
    /// Interface MTU.
    pub mtu: u16,
    /// State directory.
    pub state_dir: PathBuf,
    /// Broadcast packets per second we send and accept from each peer (0: none).
    pub broadcast_rate: u32,
    /// Route 255.255.255.255 and 224.0.0.0/4 through the party interface.
    pub broadcast_route: bool,
    /// Make a member of another party running with this state directory leave first.
    pub replace: bool,
    /// The relay to use when the control plane lists none (`--relay`).
    pub relay: Option<std::net::SocketAddr>,
    /// Where to serve Prometheus metrics (`--metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// When peers count as degraded, failed and gone.
    pub thresholds: Thresholds,
}

/// Removes the local API socket when the member stops, however it stops.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why the member stopped.
enum Event {
    Signal(i32),
    LeaveRequested,
    DataplaneStopped,
}

fn system(what: &str) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::System(format!("{what}: {e}"))
}

/// A party membership that is left again if start-up fails before the control thread takes
/// it over, so a failed `join` never leaves a ghost member behind.
struct Membership {
    control: Option<Box<dyn control::ControlPlane>>,
    party_id: String,
    member_id: String,
}

impl Membership {
    /// Hands the control plane over; the membership is no longer left on drop.
    fn take_control(mut self) -> Option<Box<dyn control::ControlPlane>> {
        self.control.take()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(control) = self.control.as_mut() {
            let _ = control.leave(&self.party_id, &self.member_id);
        }
    }
}

/// Runs a member in the foreground until SIGINT/SIGTERM or `leave`; then leaves the party and
/// removes the interface.
pub fn run(opts: MemberOptions) -> Result<(), Failure> {
    signals::block().map_err(system("cannot block signals"))?;
    identity::ensure_private_dir(&opts.state_dir).map_err(|e| {
        Failure::System(format!("state directory {}: {e}", opts.state_dir.display()))
    })?;
    // The socket first: a second `join` on this state dir must change nothing.
    let Some((listener, socket_path, _member_lock)) = claim_state_dir(&opts)? else {
        return Ok(());
    };
    let _remove_socket = RemoveOnDrop(socket_path);
    // Before anything touches the party: a taken metrics port changes nothing.
    let metrics_listener = opts.metrics.map(metrics_server::bind).transpose()?;
    let pid_path = opts.state_dir.join(running::PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(|e| Failure::System(format!("{}: {e}", pid_path.display())))?;
    let _remove_pid = RemoveOnDrop(pid_path);
    let (identity, created) = Identity::load_or_create(&opts.state_dir)
        .map_err(|e| Failure::System(format!("state directory: {e}")))?;
    if created {
        log::info!("created identity {}", identity.public);
    }
    let udp = socket::bind(opts.listen_port)
        .map_err(|e| Failure::Network(format!("cannot open UDP port {}: {e}", opts.listen_port)))?;
    let port = udp.local_addr().map_err(system("udp socket"))?.port();
    let local_endpoints = {
        let if_name = opts.interface.clone();
        move || socket::local_endpoints(port, &if_name)
    };
    let endpoints = local_endpoints.clone();

    let mut control = control::open(
        &opts.code.control,
        opts.code.secret.clone(),
        Some(identity.secret.clone()),
    )?;
    let party_id = opts.code.party_id.clone();
    let join = JoinRequest {
        name: opts.name.clone(),
        public_key: identity.public,
        endpoints: endpoints(),
        reach: Reach::default(),
    };
    let member = control.join(&party_id, join.clone())?;
    let stun_servers = control.stun_servers();
    let mut membership = Membership {
        control: Some(control),
        party_id: party_id.clone(),
        member_id: member.id.clone(),
    };
    let roster = match membership.control.as_mut() {
        Some(control) => control.roster(&party_id)?,
        None => return Err(Failure::System("control plane lost during start-up".into())),
    };
    log::info!(
        "joined party {} as {} with {}/{}",
        roster.party_name,
        member.name,
        member.virtual_ip,
        roster.subnet.prefix_len()
    );
    let tun = tun_device::create(&opts.interface, member.virtual_ip, roster.subnet, opts.mtu)
        .map_err(|e| Failure::System(e.0))?;
    if opts.broadcast_route {
        tun_device::add_broadcast_routes(&opts.interface).map_err(|e| Failure::System(e.0))?;
    }
    let table = PeerTable::new(
        identity.secret.clone(),
        member.virtual_ip,
        roster.subnet,
        opts.broadcast_rate,
    )
    .with_thresholds(opts.thresholds);
    let (stun_tx, stun_rx) = crossbeam_channel::bounded(64);
    let (dp_events_tx, dp_events) = crossbeam_channel::unbounded();
    let uplinks = Uplinks {
        stun: Some(stun_tx),
        control: Some(dp_events_tx),
    };
    let (dp, dp_thread) =
        dataplane::spawn(tun, udp, table, uplinks).map_err(system("data plane"))?;
    let me = control_loop::Me {
        id: &member.id,
        nat_type: NatType::Unknown,
        relay: None,
    };
    let _ = dp.send(Command::SyncPeers(control_loop::peer_configs(&roster, me)));
    let (nat_tx, nat_reports) = crossbeam_channel::unbounded();
    let (nat_commands_tx, nat_commands) = crossbeam_channel::unbounded();
    nat_thread::spawn(
        stun_servers,
        local_endpoints,
        dp.clone(),
        stun_rx,
        nat_commands,
        nat_tx,
    )
    .map_err(system("nat thread"))?;

    let (events_tx, events) = crossbeam_channel::unbounded();
    let handler = status_view::ApiHandler {
        dataplane: dp.clone(),
        leave: Box::new({
            let events = events_tx.clone();
            move || {
                let _ = events.send(Event::LeaveRequested);
            }
        }),
        party: PartyStatus {
            id: roster.party_id.clone(),
            name: roster.party_name.clone(),
            join_code: opts.code.to_string(),
        },
        self_: SelfStatus {
            id: member.id.clone(),
            name: member.name.clone(),
            public_key: identity.public.to_string(),
            virtual_ip: member.virtual_ip,
            interface: opts.interface.clone(),
            listen_port: port,
            broadcast: SelfBroadcast {
                route: opts.broadcast_route,
                rate_limit: opts.broadcast_rate,
                ..SelfBroadcast::default()
            },
            nat_type: "unknown".into(),
            public_endpoint: None,
            relay: None,
            relays: Vec::new(),
        },
    };
    local_api::serve(listener, handler).map_err(system("local api thread"))?;
    if let Some(metrics_listener) = metrics_listener {
        let dp = dp.clone();
        metrics_server::serve(metrics_listener, move || {
            let snapshot = dp.status(SNAPSHOT_TIMEOUT).ok()?;
            Some(metrics::render(&snapshot))
        })
        .map_err(system("metrics thread"))?;
    }
    let signal_tx = events_tx.clone();
    signals::spawn_waiter(move |sig| {
        let _ = signal_tx.send(Event::Signal(sig));
    })
    .map_err(system("signal thread"))?;
    let dp_watch = std::thread::Builder::new()
        .name("dataplane-watch".into())
        .spawn(move || {
            let _ = dp_thread.join();
            let _ = events_tx.send(Event::DataplaneStopped);
        })
        .map_err(system("watch thread"))?;

    let (control_tx, control_rx) = crossbeam_channel::bounded(1);
    let control_loop = ControlLoop {
        control: membership
            .take_control()
            .ok_or_else(|| Failure::System("control plane lost during start-up".into()))?,
        party_id,
        member_id: member.id.clone(),
        virtual_ip: member.virtual_ip,
        join,
        endpoints: Box::new(endpoints),
        dataplane: dp.clone(),
        nat_reports,
        nat: nat_commands_tx,
        dataplane_events: dp_events,
        relays: RelayBook::new(opts.relay),
    };
    let (left_tx, left) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            control_loop.run(control_rx, roster);
            let _ = left_tx.send(());
        })
        .map_err(system("control thread"))?;

    println!("joined as {} ({})", member.name, member.virtual_ip);
    let result = wait_for_stop(&events);
    let _ = control_tx.send(ControlCommand::Shutdown);
    let _ = dp.send(Command::Shutdown);
    // Leaving is best effort: an unreachable control plane must not keep the member (and its
    // interface) around; the control plane expires a member that stopped heartbeating.
    if left.recv_timeout(LEAVE_GRACE).is_err() {
        log::warn!(
            "could not leave the party within {LEAVE_GRACE:?}; the control plane will expire this member"
        );
    }
    let _ = dp_watch.join();
    result
}

/// Takes the state directory for this member: `None` (after saying so) when the same party
/// already runs here, so a repeated `join` from cron is a no-op. Another party is refused,
/// or asked to leave first with `--replace`.
pub fn settle_running(opts: &MemberOptions) -> Result<Option<()>, Failure> {
    let status = running::find(&opts.state_dir)?;
    match running::decide(status.as_ref(), &opts.code, opts.replace) {
        running::Decision::Start => Ok(Some(())),
        running::Decision::AlreadyUp(message) => {
            match running::pid(&opts.state_dir) {
                Some(pid) => println!("{message}, pid {pid}"),
                None => println!("{message}"),
            }
            Ok(None)
        }
        running::Decision::Replace => {
            log::info!("--replace: asking the running member to leave");
            running::stop(&opts.state_dir)?;
            Ok(Some(()))
        }
        running::Decision::Refuse(message) => Err(Failure::AlreadyRunning(message)),
    }
}

type Claimed = (std::os::unix::net::UnixListener, PathBuf, std::fs::File);

fn claim_state_dir(opts: &MemberOptions) -> Result<Option<Claimed>, Failure> {
    // Twice: a member that started between our check and our bind (two cron runs at once)
    // gets the same treatment as one that was already running.
    for _ in 0..2 {
        if settle_running(opts)?.is_none() {
            return Ok(None);
        }
        if let Some(claimed) = local_api::bind(&opts.state_dir)? {
            return Ok(Some(claimed));
        }
    }
    Err(Failure::System(format!(
        "another member keeps starting with state directory {}",
        opts.state_dir.display()
    )))
}

fn wait_for_stop(events: &crossbeam_channel::Receiver<Event>) -> Result<(), Failure> {
    match events.recv() {
        Ok(Event::Signal(sig)) => {
            log::info!("signal {sig}: leaving");
            Ok(())
        }
        Ok(Event::LeaveRequested) => {
            log::info!("leave requested");
            Ok(())
        }
        Ok(Event::DataplaneStopped) | Err(_) => Err(Failure::System(
            "the data plane stopped; see the log".into(),
        )),
    }
}
