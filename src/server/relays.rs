//! Relays known to the control server: registered (and refreshed) by the relays themselves
//! with a MAC under the secret they share with the server, listed to members. In memory
//! only: relays re-register every heartbeat, so a restarted server relearns them at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::relay::ticket::{Issued, RelaySecret, TICKET_LIFETIME_S};
use crate::wire::relay::MemberId;

/// A relay that has not refreshed its registration for this long is no longer listed.
pub const RELAY_TTL_S: u64 = 90;
/// Registrations must be this fresh (and not from further in the future).
pub const MAX_CLOCK_SKEW_S: u64 = 60;
/// Most relays listed.
pub const MAX_RELAYS: usize = 256;
/// Shortest accepted shared secret.
pub const MIN_SECRET_LEN: usize = 32;

/// `POST /v1/relays`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// Where members reach the relay (UDP).
    pub address: SocketAddr,
    /// Free-form region label, e.g. `eu-west`.
    pub region: String,
    /// Most clients the relay accepts.
    pub capacity: u32,
    /// Clients bound right now.
    pub clients: u32,
    /// Unix seconds when the relay signed this.
    pub timestamp: u64,
    /// base64 HMAC-SHA256 of [`Registration::message`] under the shared relay secret.
    pub mac: String,
}

/// One listed relay (`GET /v1/relays`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayInfo {
    /// UDP address.
    pub address: SocketAddr,
    /// Region label.
    pub region: String,
    /// Most clients.
    pub capacity: u32,
    /// Clients bound at the last registration.
    pub clients: u32,
    /// Unix seconds of the last registration.
    pub last_seen: u64,
}

/// The body of `GET /v1/relays`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayList {
    /// Relays seen recently, in the server's order.
    pub relays: Vec<RelayInfo>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayError {
    /// The server has no relay secret.
    Disabled,
    /// The MAC does not verify.
    BadMac,
    /// The timestamp is too old or too far ahead.
    Stale,
    /// A field is out of range.
    Invalid,
    /// Too many relays.
    Full,
}

impl Registration {
    /// The signed text.
    pub fn message(&self) -> String {
        format!(
            "lanparty-lite relay v1\n{}\n{}\n{}\n{}\n{}",
            self.address, self.region, self.capacity, self.clients, self.timestamp
        )
    }

    /// Signs a registration (the relay side).
    pub fn sign(mut self, secret: &[u8]) -> Registration {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        self.mac = STANDARD.encode(hmac::sign(&key, self.message().as_bytes()).as_ref());
        self
    }
}

/// The relay table.
#[derive(Default)]
pub struct Relays {
    secret: Option<Vec<u8>>,
    tickets: Option<RelaySecret>,
    known: BTreeMap<SocketAddr, RelayInfo>,
}

impl Relays {
    /// Accepts registrations signed with `secret` (`None`: registration disabled).
    pub fn new(secret: Option<Vec<u8>>) -> Relays {
        Relays {
            tickets: secret.as_deref().map(RelaySecret::new),
            secret,
            known: BTreeMap::new(),
        }
    }

    /// A relay ticket for a member (its id and base64 public key as the registry holds
    /// them), valid for [`TICKET_LIFETIME_S`] from `now`.
    pub fn issue_ticket(
        &self,
        party_id: &str,
        member_id: &str,
        public_key: &str,
        now: u64,
    ) -> Result<(Issued, u64), RelayError> {
        let tickets = self.tickets.as_ref().ok_or(RelayError::Disabled)?;
        let member = MemberId::from_hex(member_id).ok_or(RelayError::Invalid)?;
        let key = crate::identity::Key::parse(public_key).ok_or(RelayError::Invalid)?;
        let expires_at = now + TICKET_LIFETIME_S;
        let issued = tickets
            .issue(party_id, member, key.0, expires_at)
            .map_err(|_| RelayError::Invalid)?;
        Ok((issued, expires_at))
    }

    /// Records or refreshes a relay.
    pub fn register(&mut self, reg: Registration, now: u64) -> Result<(), RelayError> {
        let secret = self.secret.as_ref().ok_or(RelayError::Disabled)?;
        let tag = STANDARD.decode(&reg.mac).map_err(|_| RelayError::BadMac)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        hmac::verify(&key, reg.message().as_bytes(), &tag).map_err(|_| RelayError::BadMac)?;
        if reg.timestamp.abs_diff(now) > MAX_CLOCK_SKEW_S {
            return Err(RelayError::Stale);
        }
        let region_ok = !reg.region.is_empty()
            && reg.region.len() <= 32
            && reg
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !region_ok
            || reg.capacity == 0
            || reg.address.port() == 0
            || reg.address.ip().is_unspecified()
        {
            return Err(RelayError::Invalid);
        }
        self.known
            .retain(|_, r| now.saturating_sub(r.last_seen) < RELAY_TTL_S);
        if !self.known.contains_key(&reg.address) && self.known.len() >= MAX_RELAYS {
            return Err(RelayError::Full);
        }
        let info = RelayInfo {
            address: reg.address,
            region: reg.region,
            capacity: reg.capacity,
            clients: reg.clients.min(reg.capacity),
            last_seen: now,
        };
        self.known.insert(info.address, info);
        Ok(())
    }

    /// Relays heard from within [`RELAY_TTL_S`].
    pub fn list(&self, now: u64) -> Vec<RelayInfo> {
        self.known
            .values()
            .filter(|r| now.saturating_sub(r.last_seen) < RELAY_TTL_S)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn reg(ts: u64) -> Registration {
        Registration {
            address: "192.0.2.9:3478".parse().unwrap(),
            region: "eu-west".into(),
            capacity: 100,
            clients: 3,
            timestamp: ts,
            mac: String::new(),
        }
        .sign(SECRET)
    }

    #[test]
    fn signed_registrations_are_listed_until_they_go_stale() {
        let mut relays = Relays::new(Some(SECRET.to_vec()));
        relays.register(reg(1000), 1000).unwrap();
        assert_eq!(relays.list(1000).len(), 1);
        assert_eq!(relays.list(1000 + RELAY_TTL_S - 1)[0].clients, 3);
        assert!(relays.list(1000 + RELAY_TTL_S).is_empty());
    }

    #[test]
    fn forged_stale_and_disabled_registrations_are_refused() {
        let mut relays = Relays::new(Some(SECRET.to_vec()));
        let forged = reg(1000).sign(b"another secret of thirty-two byt");
        assert_eq!(relays.register(forged, 1000), Err(RelayError::BadMac));
        let mut altered = reg(1000);
        altered.capacity = 1_000_000;
        assert_eq!(relays.register(altered, 1000), Err(RelayError::BadMac));
        assert_eq!(
            relays.register(reg(1000), 1000 + MAX_CLOCK_SKEW_S + 1),
            Err(RelayError::Stale)
        );
        assert_eq!(
            Relays::new(None).register(reg(1000), 1000),
            Err(RelayError::Disabled)
        );
        assert!(relays.list(1000).is_empty());
    }
}
