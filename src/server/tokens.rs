//! Member tokens: `v1.<party>.<member>.<expires>.<mac>`, stateless and bound to the member's
//! public key: the MAC (HMAC-SHA256 under a key derived from the server's static key) covers
//! party, member id, the member's public key and the expiry. A token is refused once the
//! member is gone, for any other party or member, after its expiry, or if altered.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// How long a token is valid (24 h).
pub const TOKEN_LIFETIME_S: u64 = 24 * 3600;
/// Tokens with less than this left are replaced on the next heartbeat.
pub const REFRESH_WHEN_LEFT_S: u64 = TOKEN_LIFETIME_S / 2;

/// Issues and checks tokens.
pub struct TokenKey(hmac::Key);

/// A token's claims after its MAC checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Party id.
    pub party_id: String,
    /// Member id.
    pub member_id: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not in the token format.
    Malformed,
    /// The MAC does not match (altered, or for another key).
    BadSignature,
    /// Past its expiry.
    Expired,
}

impl TokenKey {
    /// Derives the token key from the server's static private key bytes.
    pub fn derive(server_secret: &[u8; 32]) -> TokenKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, server_secret);
        let derived = hmac::sign(&root, b"lanparty-lite token key v1");
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn message(party_id: &str, member_id: &str, public_key: &str, expires_at: u64) -> String {
        format!("{party_id}\n{member_id}\n{public_key}\n{expires_at}")
    }

    /// A token for a member, valid until `now + TOKEN_LIFETIME_S`.
    pub fn issue(
        &self,
        party_id: &str,
        member_id: &str,
        public_key: &str,
        now: u64,
    ) -> (String, u64) {
        let expires_at = now + TOKEN_LIFETIME_S;
        let tag = hmac::sign(
            &self.0,
            Self::message(party_id, member_id, public_key, expires_at).as_bytes(),
        );
        let token = format!(
            "v1.{party_id}.{member_id}.{expires_at}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        (token, expires_at)
    }

    /// Reads a token's claims without checking the MAC (the caller needs the member's key
    /// first) — pair with [`TokenKey::verify`].
    pub fn claims(token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(party), Some(member), Some(expires), Some(_mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let expires_at = expires.parse().map_err(|_| TokenError::Malformed)?;
        Ok(Claims {
            party_id: party.into(),
            member_id: member.into(),
            expires_at,
        })
    }

    /// Checks the MAC against the member's public key and the expiry.
    pub fn verify(&self, token: &str, public_key: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = Self::claims(token)?;
        let mac = token.rsplit('.').next().unwrap_or_default();
        let tag = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        let message = Self::message(
            &claims.party_id,
            &claims.member_id,
            public_key,
            claims.expires_at,
        );
        hmac::verify(&self.0, message.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_for_their_member_only() {
        let key = TokenKey::derive(&[9; 32]);
        let (token, expires) = key.issue("p", "m", "KEY", 1000);
        assert_eq!(expires, 1000 + TOKEN_LIFETIME_S);
        let claims = key.verify(&token, "KEY", 1001).unwrap();
        assert_eq!(
            (claims.party_id.as_str(), claims.member_id.as_str()),
            ("p", "m")
        );
        assert_eq!(
            key.verify(&token, "OTHER", 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(key.verify(&token, "KEY", expires), Err(TokenError::Expired));
        let altered = token.replacen(".p.", ".q.", 1);
        assert_eq!(
            key.verify(&altered, "KEY", 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            TokenKey::derive(&[8; 32]).verify(&token, "KEY", 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(key.verify("v1.p.m", "KEY", 0), Err(TokenError::Malformed));
    }
}
