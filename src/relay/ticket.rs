//! Relay tickets and bind proofs (docs/PROTOCOL.md, "Relay tickets"): the control server signs
//! a ticket under the secret it shares with relays and hands the member a bind key derived
//! from the same secret and the ticket; the relay checks the ticket's MAC, derives the same
//! bind key, and checks the bind's proof under it. A sniffed bind therefore cannot be turned
//! into a new bind (the timestamp it carries must grow), and answers to a bind are tagged so
//! the member can trust them.

use ring::hmac;

use crate::control::proof::constant_time_eq;
use crate::wire::relay::{FrameError, MemberId, TicketFields, TicketView, TAG_LEN};

/// How long a ticket is valid.
pub const TICKET_LIFETIME_S: u64 = 600;

const TICKET_KEY_LABEL: &[u8] = b"lanparty-lite relay ticket key v1";
const BIND_KEY_LABEL: &[u8] = b"lanparty-lite relay bind key v1";

/// Keys derived from the relay secret shared by control server and relays.
pub struct RelaySecret {
    ticket: hmac::Key,
    bind_root: hmac::Key,
}

/// A freshly issued ticket and its bind key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The ticket bytes (the member puts them in its binds unchanged).
    pub ticket: Vec<u8>,
    /// The bind key (kept by the member, never sent to the relay).
    pub bind_key: [u8; 32],
}

fn derive(secret: &[u8], label: &[u8]) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref())
}

impl RelaySecret {
    /// Derives the ticket and bind-key keys from the shared secret.
    pub fn new(secret: &[u8]) -> RelaySecret {
        RelaySecret {
            ticket: derive(secret, TICKET_KEY_LABEL),
            bind_root: derive(secret, BIND_KEY_LABEL),
        }
    }

    /// Issues a ticket for a member, valid until `expires_at` (Unix seconds).
    pub fn issue(
        &self,
        party: &str,
        member: MemberId,
        public_key: [u8; 32],
        expires_at: u64,
    ) -> Result<Issued, FrameError> {
        let mut ticket = TicketFields {
            party,
            member,
            public_key,
            expires_at,
        }
        .signed_bytes()?;
        let mac = hmac::sign(&self.ticket, &ticket);
        ticket.extend_from_slice(mac.as_ref());
        let bind_key = self.bind_key_bytes(&ticket);
        Ok(Issued { ticket, bind_key })
    }

    /// Whether the ticket's MAC is ours (expiry is the caller's business).
    pub fn verify(&self, ticket: &TicketView<'_>) -> bool {
        hmac::verify(&self.ticket, ticket.signed(), ticket.mac).is_ok()
    }

    /// The bind key of a ticket.
    pub fn bind_key(&self, ticket: &[u8]) -> BindKey {
        BindKey::new(self.bind_key_bytes(ticket))
    }

    fn bind_key_bytes(&self, ticket: &[u8]) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(hmac::sign(&self.bind_root, ticket).as_ref());
        key
    }
}

/// The per-ticket key that binds and their answers are tagged with.
#[derive(Clone)]
pub struct BindKey(hmac::Key);

impl BindKey {
    /// A bind key from its bytes.
    pub fn new(bytes: [u8; 32]) -> BindKey {
        BindKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    /// The truncated HMAC-SHA256 of `signed`.
    pub fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hmac::sign(&self.0, signed).as_ref()[..TAG_LEN]);
        tag
    }

    /// Whether `tag` is the tag of `signed` (constant time).
    pub fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        constant_time_eq(&self.tag(signed), tag)
    }
}

impl std::fmt::Debug for BindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_relay_with_the_secret_accepts_the_ticket_and_derives_the_members_bind_key() {
        let server = RelaySecret::new(SECRET);
        let issued = server
            .issue("party1", MemberId([1; 6]), [2; 32], 1000)
            .unwrap();
        let relay = RelaySecret::new(SECRET);
        let view = TicketView::parse(&issued.ticket).unwrap();
        assert!(relay.verify(&view));
        let member_key = BindKey::new(issued.bind_key);
        let relay_key = relay.bind_key(&issued.ticket);
        assert!(relay_key.verify(b"bind", &member_key.tag(b"bind")));
        assert!(!relay_key.verify(b"bind!", &member_key.tag(b"bind")));
    }

    #[test]
    fn a_ticket_from_another_secret_or_altered_does_not_verify() {
        let other = RelaySecret::new(b"another secret of thirty-two byt");
        let issued = other
            .issue("party1", MemberId([1; 6]), [2; 32], 1000)
            .unwrap();
        let relay = RelaySecret::new(SECRET);
        assert!(!relay.verify(&TicketView::parse(&issued.ticket).unwrap()));
        let mine = relay
            .issue("party1", MemberId([1; 6]), [2; 32], 1000)
            .unwrap();
        let mut altered = mine.ticket.clone();
        altered[2] = b'q';
        assert!(!relay.verify(&TicketView::parse(&altered).unwrap()));
        assert_ne!(
            relay.bind_key(&mine.ticket).tag(b"x"),
            relay.bind_key(&altered).tag(b"x"),
            "the bind key depends on the ticket"
        );
    }
}
