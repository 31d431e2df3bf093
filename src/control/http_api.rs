//! JSON bodies of the control server's HTTP API (`/v1/…`), shared by server and client.
//! Documented in docs/PROTOCOL.md.

use std::net::SocketAddr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::registry::Member;

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Info {
    /// Always `lanparty-lite`.
    pub service: String,
    /// Server version.
    pub version: String,
    /// The server's static X25519 public key (base64), for join proofs.
    pub public_key: String,
    /// Server clock, Unix seconds.
    pub time: u64,
}

/// `POST /v1/parties`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatePartyRequest {
    /// Display name.
    pub name: String,
    /// Subnet (default 10.66.0.0/16).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// Member limit (default 64, at most the server's `--max-peers`).
    #[serde(default)]
    pub max_peers: Option<u32>,
}

/// Reply to `POST /v1/parties`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatePartyReply {
    /// Party id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Member limit.
    pub max_peers: u32,
    /// The join secret (≥ 128 bits); part of the join code.
    pub join_secret: String,
}

/// `POST /v1/parties/{id}/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChallengeRequest {
    /// The party's join secret.
    pub join_secret: String,
}

/// Reply to a challenge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChallengeReply {
    /// Single-use nonce for the join proof.
    pub nonce: String,
    /// Seconds the nonce stays valid.
    pub expires_in_s: u64,
}

/// `POST /v1/parties/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinBody {
    /// The party's join secret.
    pub join_secret: String,
    /// Display name.
    pub name: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Where the member's UDP socket can be reached.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// Nonce from the challenge.
    pub nonce: String,
    /// Proof of key possession (see `control::proof`).
    pub proof: String,
}

/// Reply to a join, and to token refreshes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinReply {
    /// The member record.
    pub member: Member,
    /// Bearer token for this member's later requests.
    pub token: String,
    /// Unix seconds the token expires.
    pub token_expires_at: u64,
}

/// `POST /v1/parties/{id}/members/{member}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatBody {
    /// Current endpoints.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

/// Reply to a heartbeat or token refresh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenReply {
    /// A fresh token when the old one is past half its life (heartbeat) or always (refresh).
    #[serde(default)]
    pub token: Option<String>,
    /// Its expiry, Unix seconds.
    #[serde(default)]
    pub token_expires_at: Option<u64>,
}

/// Any 4xx/5xx reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorReply {
    /// What went wrong, for people.
    pub error: String,
    /// On a 409 for a full party: the party's member limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_peers: Option<u32>,
}

/// Reply to `POST /v1/parties/{id}/relay-ticket`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayTicketReply {
    /// The ticket, base64url without padding (put into binds unchanged).
    pub ticket: String,
    /// The ticket's bind key, base64 (32 bytes; never sent to a relay).
    pub bind_key: String,
    /// Unix seconds the ticket expires.
    pub expires_at: u64,
    /// The server's clock when it issued the ticket, Unix seconds.
    pub time: u64,
    /// The member the ticket is for.
    pub member_id: String,
}
