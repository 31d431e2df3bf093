//! Relays: the path every pair of members falls back to when punching cannot work.
//!
//! - `ticket`: tickets and bind proofs (HMAC-SHA256 under the secret the control server
//!   shares with relays), used by the server, the relay and members;
//! - `core`: the relay's pure forwarding state machine; `bucket`: its token buckets;
//! - `client`: a member's pure state machine for one relay (the data plane feeds it);
//! - `run`: `lanparty-lite relay`, the thin mio loop around `core`; `register`: the thread
//!   that registers the relay with the control server and heartbeats its load.
//!
//! Frames are in `wire::relay`; formats in docs/PROTOCOL.md.

pub mod bucket;
pub mod client;
pub mod core;
pub mod register;
pub mod run;
#[cfg(test)]
mod sim;
pub mod ticket;

use std::net::SocketAddr;

/// One datagram to send: `payload` to `dst`.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Destination address.
    pub dst: SocketAddr,
    /// The bytes.
    pub payload: &'a [u8],
}
