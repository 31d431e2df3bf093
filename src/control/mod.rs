//! The control plane: one trait, backends behind it. It creates parties, admits members,
//! assigns virtual IPs (never the client), follows liveness and serves the roster.

pub mod code;
pub mod file;
pub mod http;
pub mod http_api;
pub mod http_client;
#[cfg(feature = "tls")]
mod https;
pub mod ipam;
pub mod proof;
pub mod registry;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use code::JoinCode;
pub use registry::{JoinRequest, Member, NewParty};

use crate::nat::NatType;
use crate::relay::client::Grant;
use crate::server::relays::RelayInfo;

/// How a member can be reached beyond its local endpoints, published when it joins and with
/// every heartbeat: what its NAT does, its public (server-reflexive) address, and the relay
/// it chose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Its NAT, as STUN classification found it.
    #[serde(default)]
    pub nat_type: NatType,
    /// Its UDP socket's address as the control server's STUN responder saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<SocketAddr>,
    /// The relay it chose (where peers with a smaller member id meet it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<SocketAddr>,
}

/// Why a control-plane operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No party with this id (never existed, or expired).
    UnknownParty(String),
    /// No member with this id in the party.
    UnknownMember(String),
    /// The party is at its member limit or its subnet is exhausted.
    PartyFull(u32),
    /// A request field is out of range.
    Invalid(String),
    /// The backing store is corrupt or not ours; it was left untouched.
    Corrupt(String),
    /// The backing store could not be reached, read or written.
    Unavailable(String),
    /// The control server refused: wrong join secret, bad proof, or a token not ours.
    Denied(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::UnknownParty(id) => {
                write!(f, "unknown party {id:?} (ended, or wrong join code)")
            }
            ControlError::UnknownMember(id) => write!(f, "unknown member {id:?}"),
            ControlError::PartyFull(max) => write!(
                f,
                "party is full (at most {max} members, or its subnet is exhausted)"
            ),
            ControlError::Invalid(why) => write!(f, "invalid request: {why}"),
            ControlError::Corrupt(why) => write!(f, "control plane store is unusable: {why}"),
            ControlError::Unavailable(why) => write!(f, "control plane unavailable: {why}"),
            ControlError::Denied(why) => write!(f, "control server refused: {why}"),
        }
    }
}

/// A party's membership as members see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roster {
    /// Registry version this roster was read at.
    pub version: u64,
    /// Party id.
    pub party_id: String,
    /// Party display name.
    pub party_name: String,
    /// Party subnet.
    pub subnet: Ipv4Net,
    /// Live members, including the reader.
    pub members: Vec<RosterMember>,
}

/// One member in a roster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RosterMember {
    /// Member id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// Virtual IP.
    pub virtual_ip: Ipv4Addr,
    /// Registered endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Unix seconds of the last heartbeat.
    pub last_seen: u64,
    /// NAT, public address and relay.
    #[serde(default, flatten)]
    pub reach: Reach,
}

/// A created party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedParty {
    /// Party id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Member limit.
    pub max_peers: u32,
    /// The code members pass to `join`.
    pub join_code: String,
}

/// Operations every control-plane backend provides, with the same semantics.
pub trait ControlPlane: Send {
    /// Creates a party and returns it with its join code.
    fn create_party(&mut self, new: NewParty) -> Result<CreatedParty, ControlError>;
    /// Admits a member (or refreshes it when its key is already in) and returns its record.
    fn join(&mut self, party_id: &str, req: JoinRequest) -> Result<Member, ControlError>;
    /// Marks a member alive and updates its endpoints.
    fn heartbeat(
        &mut self,
        party_id: &str,
        member_id: &str,
        endpoints: &[SocketAddr],
        reach: &Reach,
    ) -> Result<(), ControlError>;
    /// Removes a member.
    fn leave(&mut self, party_id: &str, member_id: &str) -> Result<(), ControlError>;
    /// Reads the roster.
    fn roster(&mut self, party_id: &str) -> Result<Roster, ControlError>;
    /// Reads the roster once its version differs from `since`, or after about
    /// [`LONG_POLL`] with the roster unchanged. The default polls [`ControlPlane::roster`]
    /// every second.
    fn roster_since(&mut self, party_id: &str, since: u64) -> Result<Roster, ControlError> {
        let give_up = std::time::Instant::now() + LONG_POLL;
        loop {
            let roster = self.roster(party_id)?;
            if roster.version != since || std::time::Instant::now() >= give_up {
                return Ok(roster);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    /// Another handle on the same control plane and credentials (for the roster watcher).
    fn try_clone(&self) -> Box<dyn ControlPlane>;
    /// The control server's STUN addresses (known after `join`; none for a registry file).
    fn stun_servers(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
    /// Whether the party exists (and, on a server, the join secret is right).
    fn party_exists(&mut self, party_id: &str) -> Result<bool, ControlError> {
        match self.roster(party_id) {
            Ok(_) => Ok(true),
            Err(ControlError::UnknownParty(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// The relays the control plane lists (none for a registry file).
    fn list_relays(&mut self) -> Result<Vec<RelayInfo>, ControlError> {
        Ok(Vec::new())
    }
    /// A relay ticket for the member this client acts for.
    fn ticket(&mut self, _party_id: &str) -> Result<Grant, ControlError> {
        Err(ControlError::Unavailable(
            "this control plane issues no relay tickets".into(),
        ))
    }
}

/// How long a roster read may wait for a change.
pub const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(25);

/// Opens the backend a control URL names (`file:/path/registry.json` or
/// `http(s)://host:port`), for a party with `join_secret`, as the member holding `identity`.
pub fn open(
    url: &str,
    join_secret: Option<String>,
    identity: Option<x25519_dalek::StaticSecret>,
) -> Result<Box<dyn ControlPlane>, ControlError> {
    if let Some(path) = url.strip_prefix("file:").filter(|p| !p.is_empty()) {
        return Ok(Box::new(file::FileControl::new(path.into())));
    }
    if code::is_http_url(url) {
        if url.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(ControlError::Invalid(
                "this build has no TLS; use an http:// control URL".into(),
            ));
        }
        return Ok(Box::new(http::HttpControl::new(
            url,
            join_secret,
            identity,
        )?));
    }
    Err(ControlError::Invalid(format!(
        "unsupported control URL {url:?} (expected file:/path/registry.json or http://host:port)"
    )))
}

/// Seconds since the Unix epoch, read once at the edge and passed into the registry.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
