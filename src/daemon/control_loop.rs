//! The control thread: follows the roster, heartbeats, and turns roster changes into
//! `SyncPeers` commands for the data plane. On shutdown it leaves the party.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::control::{ControlError, ControlPlane, JoinRequest, Roster};
use crate::dataplane::peers::PeerConfig;
use crate::dataplane::{self, Command};
use crate::identity::Key;

/// Heartbeat period (LANrage's 30 s; members are stale after 300 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// How often the roster is re-read from the file backend.
pub const ROSTER_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Messages to the control thread.
pub enum ControlCommand {
    /// Leave the party and stop.
    Shutdown,
}

/// When the control thread next has work. Pure: time is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Next roster read.
    pub poll_at: Instant,
    /// Next heartbeat.
    pub heartbeat_at: Instant,
}

/// Work due at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// Read the roster.
    pub poll: bool,
    /// Send a heartbeat.
    pub heartbeat: bool,
}

impl Schedule {
    /// Starts with a roster read now and the first heartbeat one interval after joining.
    pub fn new(now: Instant) -> Schedule {
        Schedule {
            poll_at: now,
            heartbeat_at: now + HEARTBEAT_INTERVAL,
        }
    }

    /// What is due at `now`; reschedules it.
    pub fn handle_tick(&mut self, now: Instant) -> Due {
        let due = Due {
            poll: now >= self.poll_at,
            heartbeat: now >= self.heartbeat_at,
        };
        if due.poll {
            self.poll_at = now + ROSTER_POLL_INTERVAL;
        }
        if due.heartbeat {
            self.heartbeat_at = now + HEARTBEAT_INTERVAL;
        }
        due
    }

    /// The next instant anything is due.
    pub fn poll_timeout(&self) -> Instant {
        self.poll_at.min(self.heartbeat_at)
    }
}

/// Turns a roster into the data plane's peer list (invalid keys are skipped and logged).
pub fn peer_configs(roster: &Roster) -> Vec<PeerConfig> {
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
            }),
            None => {
                log::warn!("roster member {} has an invalid public key; ignored", m.id);
                None
            }
        })
        .collect()
}

/// The control thread's state.
pub struct ControlLoop {
    /// Backend.
    pub control: Box<dyn ControlPlane>,
    /// Party we are in.
    pub party_id: String,
    /// Our member id.
    pub member_id: String,
    /// What we joined with (re-sent if the control plane forgot us).
    pub join: JoinRequest,
    /// Recomputes our endpoints before each heartbeat.
    pub endpoints: Box<dyn Fn() -> Vec<SocketAddr> + Send>,
    /// The data plane.
    pub dataplane: dataplane::Handle,
}

impl ControlLoop {
    /// Runs until `Shutdown` (or the sender is dropped), then leaves the party.
    pub fn run(mut self, commands: Receiver<ControlCommand>, first: Roster) {
        let mut version = first.version;
        let mut schedule = Schedule::new(Instant::now());
        schedule.handle_tick(Instant::now());
        loop {
            let wait = schedule
                .poll_timeout()
                .saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait) {
                Ok(ControlCommand::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let due = schedule.handle_tick(Instant::now());
            if due.heartbeat {
                self.heartbeat();
            }
            if due.poll {
                match self.control.roster(&self.party_id) {
                    Ok(roster) if roster.version != version => {
                        version = roster.version;
                        log::debug!("roster version {version}: {} members", roster.members.len());
                        if self
                            .dataplane
                            .send(Command::SyncPeers(peer_configs(&roster)))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("roster: {e}; keeping the last known peers"),
                }
            }
        }
        match self.control.leave(&self.party_id, &self.member_id) {
            Ok(()) => log::info!("left the party"),
            Err(e) => log::warn!("leave: {e}"),
        }
    }

    fn heartbeat(&mut self) {
        let endpoints = (self.endpoints)();
        match self
            .control
            .heartbeat(&self.party_id, &self.member_id, &endpoints)
        {
            Ok(()) => {}
            Err(ControlError::UnknownMember(_)) => {
                log::warn!("the control plane forgot this member; joining again");
                self.join.endpoints = endpoints;
                if let Err(e) = self.control.join(&self.party_id, self.join.clone()) {
                    log::error!("rejoin: {e}");
                }
            }
            Err(e) => log::warn!("heartbeat: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_every_second_and_heartbeats_every_thirty() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert_eq!(
            s.handle_tick(t0),
            Due {
                poll: true,
                heartbeat: false
            }
        );
        assert_eq!(s.poll_timeout(), t0 + ROSTER_POLL_INTERVAL);
        assert_eq!(
            s.handle_tick(t0 + Duration::from_millis(999)),
            Due::default()
        );
        let t30 = t0 + HEARTBEAT_INTERVAL;
        assert_eq!(
            s.handle_tick(t30),
            Due {
                poll: true,
                heartbeat: true
            }
        );
        assert_eq!(s.heartbeat_at, t30 + HEARTBEAT_INTERVAL);
    }
}
