//! The control thread: follows the roster, heartbeats (with what the NAT thread found and the
//! home relay), keeps the data plane's relay bindings and tickets, and turns every change into
//! one `SyncPeers` for the data plane. On shutdown it leaves the party.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::nat_thread::NatCommand;
use super::relay_choice::{meeting_relay, RelayBook};
use crate::control::{ControlError, ControlPlane, JoinRequest, Reach, Roster};
use crate::dataplane::peers::PeerConfig;
use crate::dataplane::{self, Command, DataplaneEvent};
use crate::identity::Key;
use crate::nat::classify::NatReport;
use crate::nat::{direct_possible, NatType};

/// Heartbeat period (LANrage's 30 s; members are stale after 300 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Messages to the control thread.
pub enum ControlCommand {
    /// Leave the party and stop.
    Shutdown,
}

/// Who we are, for working out how to reach each peer.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// Our member id.
    pub id: &'a str,
    /// Our NAT.
    pub nat_type: NatType,
    /// Our home relay.
    pub relay: Option<SocketAddr>,
}

/// Turns a roster into the data plane's peer list (invalid keys are skipped and logged):
/// each peer's candidates, the relay we meet it at, and whether punching can work.
pub fn peer_configs(roster: &Roster, me: Me) -> Vec<PeerConfig> {
    roster
        .members
        .iter()
        .filter_map(|m| match Key::parse(&m.public_key) {
            Some(public_key) => Some(PeerConfig {
                id: m.id.clone(),
                name: m.name.clone(),
                public_key,
                virtual_ip: m.virtual_ip,
                endpoints: m.endpoints.clone(),
                public_endpoint: m.reach.public_endpoint,
                relay: meeting_relay((me.id, me.relay), (&m.id, m.reach.relay)),
                prediction: direct_possible(me.nat_type, m.reach.nat_type),
            }),
            None => {
                log::warn!("roster member {} has an invalid public key; ignored", m.id);
                None
            }
        })
        .collect()
}

/// Longest wait between roster retries: a refused connection costs the server nothing, and a
/// member that waits longer sees newcomers late once the server is back.
pub const ROSTER_RETRY_MAX: Duration = Duration::from_secs(5);

/// Delay before retry number `attempt` (0-based) of a failed control-plane call:
/// exponential from 1 s up to `cap`, scaled by `jitter` in [0.5, 1.0] so members that lost
/// the server together do not return together.
pub fn backoff(attempt: u32, jitter: f64, cap: Duration) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.min(6));
    base.min(cap).mul_f64(jitter.clamp(0.5, 1.0))
}

fn jitter() -> f64 {
    let mut b = [0u8; 1];
    let _ = crate::random::fill(&mut b);
    0.5 + f64::from(b[0]) / 510.0
}

/// The control thread's state.
pub struct ControlLoop {
    /// Backend.
    pub control: Box<dyn ControlPlane>,
    /// Party we are in.
    pub party_id: String,
    /// Our member id.
    pub member_id: String,
    /// Our virtual IP (the interface has it; a rejoin must give it back).
    pub virtual_ip: std::net::Ipv4Addr,
    /// What we joined with (re-sent if the control plane forgot us).
    pub join: JoinRequest,
    /// Recomputes our endpoints before each heartbeat.
    pub endpoints: Box<dyn Fn() -> Vec<SocketAddr> + Send>,
    /// The data plane.
    pub dataplane: dataplane::Handle,
    /// What the NAT thread finds.
    pub nat_reports: Receiver<NatReport>,
    /// Requests to the NAT thread.
    pub nat: Sender<NatCommand>,
    /// Relay news from the data plane.
    pub dataplane_events: Receiver<DataplaneEvent>,
    /// Relays, measurements and our home relay.
    pub relays: RelayBook,
}

/// Follows the roster on its own thread (long-polls block), sending each new roster on.
/// Retries with backoff while the control plane is unreachable; the data plane keeps the
/// last known peers meanwhile. Ends when the receiver is gone.
fn spawn_watcher(
    mut control: Box<dyn ControlPlane>,
    party_id: String,
    mut version: u64,
) -> Receiver<Roster> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("roster".into())
        .spawn(move || {
            let mut failures = 0;
            loop {
                match control.roster_since(&party_id, version) {
                    Ok(roster) => {
                        failures = 0;
                        if roster.version == version {
                            continue;
                        }
                        version = roster.version;
                        if tx.send(roster).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let delay = backoff(failures, jitter(), ROSTER_RETRY_MAX);
                        log::warn!(
                            "roster: {e}; keeping the last known peers, retrying in {delay:.1?}"
                        );
                        failures += 1;
                        std::thread::sleep(delay);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the roster thread: {e}");
    }
    rx
}

impl ControlLoop {
    /// Runs until `Shutdown` (or the sender is dropped), then leaves the party.
    pub fn run(mut self, commands: Receiver<ControlCommand>, first: Roster) {
        let rosters = spawn_watcher(
            self.control.try_clone(),
            self.party_id.clone(),
            first.version,
        );
        let mut roster = first;
        self.refresh_relays(&roster);
        let mut heartbeat_at = Instant::now() + HEARTBEAT_INTERVAL;
        loop {
            let wait = heartbeat_at.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(commands) -> _ => break,
                recv(rosters) -> next => {
                    let Ok(next) = next else { break };
                    log::debug!("roster version {}: {} members", next.version, next.members.len());
                    roster = next;
                    if !self.sync(&roster) {
                        break;
                    }
                }
                recv(self.nat_reports) -> report => {
                    // The NAT thread ends only with the data plane.
                    let Ok(report) = report else { continue };
                    self.join.reach.nat_type = report.nat_type;
                    let before = self.join.reach.public_endpoint;
                    if before.is_some() && report.public.is_some() && before != report.public {
                        // Our NAT moved us: the relays know us at the old address.
                        log::info!(
                            "public endpoint moved: {} -> {}",
                            before.map_or_else(|| "-".into(), |e| e.to_string()),
                            report.public.map_or_else(|| "-".into(), |e| e.to_string())
                        );
                        let _ = self.dataplane.send(Command::RefreshRelays);
                    }
                    self.join.reach.public_endpoint = report.public;
                    self.heartbeat();
                    heartbeat_at = Instant::now() + HEARTBEAT_INTERVAL;
                    self.sync(&roster);
                }
                recv(self.dataplane_events) -> event => match event {
                    Ok(DataplaneEvent::NeedTicket) => self.fetch_ticket(),
                    // Our NAT may have moved us; a new public endpoint comes back as a NAT
                    // report, heartbeated at once.
                    Ok(DataplaneEvent::DirectPathLost) => {
                        log::debug!("a direct path went down; checking our public mapping");
                        let _ = self.nat.send(NatCommand::CheckMapping);
                    }
                    Ok(DataplaneEvent::Relay(state)) => {
                        self.relays.handle_state(state);
                        let home = self.relays.choose_home();
                        if home != self.join.reach.relay {
                            log::info!("home relay: {}", home.map_or_else(|| "none".into(), |h| h.to_string()));
                            self.join.reach.relay = home;
                            self.heartbeat();
                            heartbeat_at = Instant::now() + HEARTBEAT_INTERVAL;
                            self.sync(&roster);
                        }
                    }
                    Err(_) => break,
                },
                default(wait) => {
                    self.heartbeat();
                    self.refresh_relays(&roster);
                    heartbeat_at = Instant::now() + HEARTBEAT_INTERVAL;
                }
            }
        }
        let _ = self.nat.send(NatCommand::Shutdown);
        match self.control.leave(&self.party_id, &self.member_id) {
            Ok(()) => log::info!("left the party"),
            Err(e) => log::warn!("leave: {e}"),
        }
    }

    fn me(&self) -> Me<'_> {
        Me {
            id: &self.member_id,
            nat_type: self.join.reach.nat_type,
            relay: self.join.reach.relay,
        }
    }

    /// Sends the data plane the peers of `roster` (and what we publish); false if it is gone.
    fn sync(&self, roster: &Roster) -> bool {
        let peers = peer_configs(roster, self.me());
        let _ = self.dataplane.send(Command::SetReach(self.join.reach));
        self.dataplane.send(Command::SyncPeers(peers)).is_ok()
    }

    /// Reads the relay list and keeps bindings with the listed relays and the peers' meeting
    /// relays.
    fn refresh_relays(&mut self, roster: &Roster) {
        match self.control.list_relays() {
            Ok(list) => self.relays.set_listed(list),
            Err(e) => log::debug!("relay list: {e}"),
        }
        let meeting = peer_configs(roster, self.me())
            .into_iter()
            .filter_map(|p| p.relay);
        let wanted = self.relays.wanted(meeting);
        let _ = self.dataplane.send(Command::SetRelays(wanted));
    }

    fn fetch_ticket(&mut self) {
        match self.control.ticket(&self.party_id) {
            Ok(grant) => {
                let _ = self.dataplane.send(Command::RelayGrant(grant));
            }
            Err(e) => log::debug!("relay ticket: {e}"),
        }
    }

    fn heartbeat(&mut self) {
        let endpoints = (self.endpoints)();
        let reach: Reach = self.join.reach;
        match self
            .control
            .heartbeat(&self.party_id, &self.member_id, &endpoints, &reach)
        {
            Ok(()) => {}
            Err(ControlError::UnknownMember(_)) => {
                log::warn!("the control plane forgot this member; joining again");
                self.join.endpoints = endpoints;
                match self.control.join(&self.party_id, self.join.clone()) {
                    Ok(member) if member.virtual_ip != self.virtual_ip => log::error!(
                        "rejoined with virtual IP {} instead of {}; restart the member to use it",
                        member.virtual_ip,
                        self.virtual_ip
                    ),
                    Ok(_) => {}
                    Err(e) => log::error!("rejoin: {e}"),
                }
            }
            Err(e) => log::warn!("heartbeat: {e}; retrying in {HEARTBEAT_INTERVAL:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let minute = Duration::from_secs(60);
        assert_eq!(backoff(0, 1.0, minute), Duration::from_secs(1));
        assert_eq!(backoff(3, 1.0, minute), Duration::from_secs(8));
        assert_eq!(backoff(6, 1.0, minute), minute);
        assert_eq!(backoff(40, 1.0, minute), minute);
        assert_eq!(backoff(3, 0.5, minute), Duration::from_secs(4));
        assert_eq!(
            backoff(3, 0.0, minute),
            Duration::from_secs(4),
            "jitter is clamped"
        );
        assert_eq!(backoff(9, 1.0, ROSTER_RETRY_MAX), ROSTER_RETRY_MAX);
    }
}
