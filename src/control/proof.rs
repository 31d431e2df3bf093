//! Proof of key possession for joining through a control server, shared by client and server.
//!
//! The server hands out a single-use nonce; the member answers with
//! `HMAC-SHA256(key = X25519(member_private, server_public), PROOF_CONTEXT ‖ party ‖ nonce ‖
//! member_public)`. Only the holder of the member's private key (or the server's) can compute
//! it, so nobody can register a public key they do not hold.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::identity::Key;

/// Domain separation for join proofs.
const PROOF_CONTEXT: &[u8] = b"lanparty-lite join proof v1\n";

/// The X25519 shared secret, or `None` for a low-order public key (all-zero output).
pub fn shared_key(own: &StaticSecret, other: &Key) -> Option<[u8; 32]> {
    let shared = own.diffie_hellman(&PublicKey::from(other.0));
    shared.was_contributory().then(|| shared.to_bytes())
}

fn message(party_id: &str, nonce: &str, member: &Key) -> Vec<u8> {
    let mut m = PROOF_CONTEXT.to_vec();
    for part in [
        party_id.as_bytes(),
        b"\n",
        nonce.as_bytes(),
        b"\n",
        &member.0,
    ] {
        m.extend_from_slice(part);
    }
    m
}

/// The member's proof (base64) for `nonce`.
pub fn sign(member: &StaticSecret, server: &Key, party_id: &str, nonce: &str) -> Option<String> {
    let public = Key(PublicKey::from(member).to_bytes());
    let key = hmac::Key::new(hmac::HMAC_SHA256, &shared_key(member, server)?);
    let tag = hmac::sign(&key, &message(party_id, nonce, &public));
    Some(STANDARD.encode(tag.as_ref()))
}

/// Checks a member's proof on the server side.
pub fn verify(
    server: &StaticSecret,
    member: &Key,
    party_id: &str,
    nonce: &str,
    proof: &str,
) -> bool {
    let (Some(shared), Ok(tag)) = (shared_key(server, member), STANDARD.decode(proof)) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &shared);
    hmac::verify(&key, &message(party_id, nonce, member), &tag).is_ok()
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(n: u8) -> (StaticSecret, Key) {
        let s = StaticSecret::from([n; 32]);
        let k = Key(PublicKey::from(&s).to_bytes());
        (s, k)
    }

    #[test]
    fn server_accepts_the_holders_proof_only() {
        let (server, server_pub) = pair(1);
        let (member, member_pub) = pair(2);
        let (thief, _) = pair(3);
        let proof = sign(&member, &server_pub, "party", "nonce").unwrap();
        assert!(verify(&server, &member_pub, "party", "nonce", &proof));
        assert!(
            !verify(&server, &member_pub, "party", "other-nonce", &proof),
            "bound to the nonce"
        );
        assert!(
            !verify(&server, &member_pub, "other", "nonce", &proof),
            "bound to the party"
        );
        let forged = sign(&thief, &server_pub, "party", "nonce").unwrap();
        assert!(
            !verify(&server, &member_pub, "party", "nonce", &forged),
            "a different key cannot prove"
        );
        assert!(!verify(
            &server,
            &member_pub,
            "party",
            "nonce",
            "not base64!"
        ));
    }

    #[test]
    fn low_order_keys_are_refused() {
        let (server, _) = pair(1);
        assert!(shared_key(&server, &Key([0; 32])).is_none());
        assert!(!verify(&server, &Key([0; 32]), "p", "n", "AAAA"));
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
