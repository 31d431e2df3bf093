//! Join codes: one copy-pasteable string that carries the control URL and the party id
//! (and, for servers that need one, a join secret).
//!
//! Format: `<control-url>#<party-id>[.<secret>]`, for example
//! `file:/var/lib/lanparty/registry.json#k3f9a2xm7q` or
//! `http://203.0.113.7:7777#k3f9a2xm7q.d8s7f6g5h4j3k2m9n8p7q6r5s4`. Codes for a control
//! server must carry the secret.

use std::fmt;

/// Longest join code accepted.
pub const MAX_CODE_LEN: usize = 1024;

/// A parsed join code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCode {
    /// Control URL (`file:…`).
    pub control: String,
    /// Party id.
    pub party_id: String,
    /// Join secret, when the control plane uses one.
    pub secret: Option<String>,
}

/// Why a join code was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    /// Empty, too long, or contains whitespace or control characters.
    BadCharacters,
    /// No `#` between the control URL and the party id.
    MissingParty,
    /// The control URL part is not one we know.
    BadControl,
    /// A control-server code without its join secret.
    MissingSecret,
    /// The party id or secret is empty or has characters outside `[a-z0-9-_]`.
    BadParty,
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodeError::BadCharacters => "malformed join code: empty, too long, or contains spaces",
            CodeError::MissingParty => "malformed join code: expected CONTROL#PARTY, e.g. file:/tmp/registry.json#k3f9a2xm7q",
            CodeError::BadControl => "malformed join code: the part before '#' must be file:/path or http(s)://host:port",
            CodeError::MissingSecret => "malformed join code: a control-server code needs its join secret (CONTROL#PARTY.SECRET)",
            CodeError::BadParty => "malformed join code: the party id after '#' must be letters, digits, '-' or '_'",
        })
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `url` is `http://` or `https://` followed by a host, an optional port, and at
/// most a trailing slash.
pub fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

impl JoinCode {
    /// Parses and validates a code as typed by a user.
    pub fn parse(text: &str) -> Result<JoinCode, CodeError> {
        let text = text.trim();
        if text.is_empty()
            || text.len() > MAX_CODE_LEN
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(CodeError::BadCharacters);
        }
        let (control, party) = text.rsplit_once('#').ok_or(CodeError::MissingParty)?;
        let is_file = match control.strip_prefix("file:") {
            Some(path) if path.starts_with('/') && path.len() > 1 => true,
            _ if is_http_url(control) => false,
            _ => return Err(CodeError::BadControl),
        };
        let (party_id, secret) = match party.split_once('.') {
            Some((p, s)) => (p, Some(s)),
            None => (party, None),
        };
        if !is_token(party_id) || secret.is_some_and(|s| !is_token(s)) {
            return Err(CodeError::BadParty);
        }
        if !is_file && secret.is_none() {
            return Err(CodeError::MissingSecret);
        }
        Ok(JoinCode {
            control: control.into(),
            party_id: party_id.into(),
            secret: secret.map(String::from),
        })
    }
}

impl fmt::Display for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.control, self.party_id)?;
        if let Some(s) = &self.secret {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let code = JoinCode {
            control: "file:/tmp/reg.json".into(),
            party_id: "k3f9a2xm7q".into(),
            secret: None,
        };
        assert_eq!(JoinCode::parse(&code.to_string()), Ok(code));
    }

    #[test]
    fn server_codes_carry_address_party_and_secret() {
        let code = JoinCode::parse("http://192.0.2.7:7777#k3f9a2xm7q.s3cr3t").unwrap();
        assert_eq!(code.control, "http://192.0.2.7:7777");
        assert_eq!(code.party_id, "k3f9a2xm7q");
        assert_eq!(code.secret.as_deref(), Some("s3cr3t"));
        assert!(JoinCode::parse("https://party.example.net#p.s").is_ok());
        assert!(JoinCode::parse("http://[2001:db8::1]:7777#p.s").is_ok());
    }

    #[test]
    fn surrounding_whitespace_is_forgiven() {
        assert!(JoinCode::parse("  file:/r.json#abc\n").is_ok());
    }

    #[test]
    fn malformed_codes_are_named() {
        assert_eq!(JoinCode::parse(""), Err(CodeError::BadCharacters));
        assert_eq!(
            JoinCode::parse("file:/a b#x"),
            Err(CodeError::BadCharacters)
        );
        assert_eq!(
            JoinCode::parse("file:/r.json"),
            Err(CodeError::MissingParty)
        );
        assert_eq!(JoinCode::parse("ftp://x#abc"), Err(CodeError::BadControl));
        assert_eq!(
            JoinCode::parse("file:relative#abc"),
            Err(CodeError::BadControl)
        );
        assert_eq!(JoinCode::parse("file:/r.json#"), Err(CodeError::BadParty));
        assert_eq!(
            JoinCode::parse("file:/r.json#a/b"),
            Err(CodeError::BadParty)
        );
        assert_eq!(
            JoinCode::parse("file:/r.json#abc."),
            Err(CodeError::BadParty)
        );
    }
}
