//! NAT discovery: what a member's NAT does ([`classify`], a pure state machine over STUN that
//! does not own a socket: its packets leave through the data plane's socket, so the mapping it
//! learns is the one WireGuard uses) and which pairs of members can punch through to each
//! other ([`compat`]). `daemon::nat_thread` drives the classifier; the hole punching itself is
//! `dataplane::peer` (WireGuard messages are the probes).

pub mod classify;
pub mod compat;

pub use compat::{direct_possible, Prediction};

use serde::{Deserialize, Serialize};

/// A member's NAT, in the classic (RFC 3489) names members and the status document use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatType {
    /// No NAT: the server saw the member's own address.
    Open,
    /// Endpoint-independent mapping and filtering (RFC 4787): anyone may send to the mapping.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Endpoint-dependent mapping: a new public port per destination.
    Symmetric,
    /// Not enough answers to tell.
    #[default]
    Unknown,
}

impl NatType {
    /// Every type, in the order of the table in docs/PROTOCOL.md.
    pub const ALL: [NatType; 6] = [
        NatType::Open,
        NatType::FullCone,
        NatType::RestrictedCone,
        NatType::PortRestrictedCone,
        NatType::Symmetric,
        NatType::Unknown,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_documented_ones() {
        let names: Vec<String> = NatType::ALL
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "\"open\"",
                "\"full_cone\"",
                "\"restricted_cone\"",
                "\"port_restricted_cone\"",
                "\"symmetric\"",
                "\"unknown\""
            ]
        );
        for t in NatType::ALL {
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<NatType>(&text).unwrap(), t);
        }
    }
}
