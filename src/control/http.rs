//! The `http(s)://` backend: the control server's API with explicit timeouts, over our own
//! HTTP/1.1 client for `http://` (`http_client`) and ureq with rustls for `https://` (only
//! with the `tls` feature). Holds the member's bearer token after `join` (shared by clones, so
//! the roster watcher and the control thread use the same, refreshed token).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use x25519_dalek::StaticSecret;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::http_api::*;
use super::http_client::{self, ClientError, Method, Origin, Reply};
use super::registry::{JoinRequest, Member, NewParty};
use super::{proof, ControlError, ControlPlane, CreatedParty, JoinCode, Reach, Roster};
use crate::identity::Key;
use crate::relay::client::Grant;
use crate::server::relays::{Registration, RelayInfo, RelayList};
use crate::wire::relay::TicketView;

/// Timeout for ordinary calls (connecting included).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Leaving happens while the member stops, which must take at most 2 s.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(1200);
/// Timeout for a roster long-poll (the server holds it up to 25 s).
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(35);

/// A control server client.
#[derive(Clone)]
pub struct HttpControl {
    base: String,
    join_secret: Option<String>,
    identity: Option<StaticSecret>,
    token: Arc<Mutex<Option<String>>>,
    transport: Transport,
    /// The server's STUN addresses, from `GET /v1/info` when joining.
    stun: Vec<SocketAddr>,
}

/// How requests reach the server.
#[derive(Clone)]
enum Transport {
    /// `http://`: our own client, one connection per request.
    Plain(Origin),
    /// `https://`: ureq with rustls.
    #[cfg(feature = "tls")]
    Tls(ureq::Agent),
}

/// Environment variable naming a PEM file of root certificates to trust for `https://`
/// servers instead of the system's (for a server with a private CA).
pub const CA_FILE_ENV: &str = "LANPARTY_CA_FILE";

fn transport(base: &str) -> Result<Transport, ControlError> {
    if base.starts_with("https://") {
        #[cfg(feature = "tls")]
        return Ok(Transport::Tls(super::https::agent()?));
        #[cfg(not(feature = "tls"))]
        return Err(ControlError::Invalid(
            "this build has no TLS; use an http:// control URL".into(),
        ));
    }
    Origin::parse(base)
        .map(Transport::Plain)
        .map_err(|e| ControlError::Invalid(format!("control URL {base:?}: {e}")))
}

impl HttpControl {
    /// A client for the server at `base` (`http://host:port`), for a party with `join_secret`,
    /// acting as the member holding `identity` (needed to join).
    pub fn new(
        base: &str,
        join_secret: Option<String>,
        identity: Option<StaticSecret>,
    ) -> Result<HttpControl, ControlError> {
        Ok(HttpControl {
            base: base.trim_end_matches('/').to_string(),
            join_secret,
            identity,
            token: Arc::new(Mutex::new(None)),
            transport: transport(base)?,
            stun: Vec::new(),
        })
    }

    fn bearer(&self) -> Option<String> {
        self.token.lock().ok().and_then(|t| t.clone())
    }

    fn set_token(&self, token: String) {
        if let Ok(mut t) = self.token.lock() {
            *t = Some(token);
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        let bytes = match (method, body) {
            (Method::Post, Some(b)) => {
                serde_json::to_vec(b).map_err(|e| ControlError::Invalid(e.to_string()))?
            }
            (Method::Post, None) => b"{}".to_vec(),
            _ => Vec::new(),
        };
        let bearer = self.bearer();
        let sent: Result<Reply, String> = match &self.transport {
            Transport::Plain(origin) => {
                match http_client::request(origin, method, path, bearer.as_deref(), &bytes, timeout)
                {
                    Err(ClientError::BadRequest(why)) => {
                        return Err(ControlError::Invalid(format!("{}{path}: {why}", self.base)))
                    }
                    sent => sent.map_err(|e| e.to_string()),
                }
            }
            #[cfg(feature = "tls")]
            Transport::Tls(agent) => super::https::request(
                agent,
                &format!("{}{path}", self.base),
                method,
                bearer.as_deref(),
                &bytes,
                timeout,
            ),
        };
        let Reply { status, body } = sent.map_err(|cause| {
            ControlError::Unavailable(format!("cannot reach {}: {cause}", self.base))
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| {
                ControlError::Unavailable(format!("{}: unexpected reply ({e})", self.base))
            });
        }
        let (message, max_peers) = serde_json::from_slice::<ErrorReply>(&body)
            .map(|e| (e.error, e.max_peers))
            .unwrap_or_else(|_| (format!("HTTP {status}"), None));
        Err(match status {
            404 if message.contains("member") => {
                ControlError::UnknownMember(segment_after(path, "members"))
            }
            404 if message.contains("party") => {
                ControlError::UnknownParty(segment_after(path, "parties"))
            }
            409 => match max_peers {
                Some(max) => ControlError::PartyFull(max),
                None => ControlError::Unavailable(message),
            },
            400 => ControlError::Invalid(message),
            401 | 403 => ControlError::Denied(message),
            _ => ControlError::Unavailable(format!("{}: {message}", self.base)),
        })
    }

    /// A relay ticket for the joined member (`POST /v1/parties/{id}/relay-ticket`), checked
    /// to be well formed, ready for `relay::client::RelayClient::handle_ticket`.
    pub fn relay_ticket(&self, party_id: &str) -> Result<Grant, ControlError> {
        let reply: RelayTicketReply = self.call(
            Method::Post,
            &format!("/v1/parties/{party_id}/relay-ticket"),
            None::<&()>,
            CALL_TIMEOUT,
        )?;
        let unexpected =
            || ControlError::Unavailable(format!("{}: unexpected relay ticket", self.base));
        let ticket = URL_SAFE_NO_PAD
            .decode(&reply.ticket)
            .map_err(|_| unexpected())?;
        if ticket.len() > 255 || TicketView::parse(&ticket).is_err() {
            return Err(unexpected());
        }
        let bind_key: [u8; 32] = STANDARD
            .decode(&reply.bind_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(unexpected)?;
        Ok(Grant {
            ticket,
            bind_key,
            expires_at: reply.expires_at,
            server_time: reply.time,
        })
    }

    /// Relays the server lists (`GET /v1/relays`).
    pub fn relays(&self) -> Result<Vec<RelayInfo>, ControlError> {
        let list: RelayList = self.call(Method::Get, "/v1/relays", None::<&()>, CALL_TIMEOUT)?;
        Ok(list.relays)
    }

    /// Registers (or refreshes) a relay (`POST /v1/relays`); `reg` must be signed.
    pub fn register_relay(&self, reg: &Registration) -> Result<(), ControlError> {
        self.call::<serde::de::IgnoredAny>(Method::Post, "/v1/relays", Some(reg), CALL_TIMEOUT)
            .map(|_| ())
    }

    /// Reads the roster, held by the server until its version passes `since` (or ~25 s).
    fn read_roster(&self, party_id: &str, since: Option<u64>) -> Result<Roster, ControlError> {
        let query = since.map(|v| format!("?since={v}")).unwrap_or_default();
        self.call::<Roster>(
            Method::Get,
            &format!("/v1/parties/{party_id}/roster{query}"),
            None::<&()>,
            LONG_POLL_TIMEOUT,
        )
    }
}

/// The path segment after `name` (`/v1/parties/ID/…` → `ID`), for error messages.
fn segment_after(path: &str, name: &str) -> String {
    let mut parts = path.split(['/', '?']);
    parts.by_ref().find(|p| *p == name);
    parts.next().unwrap_or_default().to_string()
}

impl ControlPlane for HttpControl {
    fn create_party(&mut self, new: NewParty) -> Result<CreatedParty, ControlError> {
        let body = CreatePartyRequest {
            name: new.name,
            subnet: Some(new.subnet),
            max_peers: Some(new.max_peers),
        };
        let reply: CreatePartyReply =
            self.call(Method::Post, "/v1/parties", Some(&body), CALL_TIMEOUT)?;
        let code = JoinCode {
            control: self.base.clone(),
            party_id: reply.id.clone(),
            secret: Some(reply.join_secret),
        };
        Ok(CreatedParty {
            id: reply.id,
            name: reply.name,
            subnet: reply.subnet,
            max_peers: reply.max_peers,
            join_code: code.to_string(),
        })
    }

    fn join(&mut self, party_id: &str, req: JoinRequest) -> Result<Member, ControlError> {
        let secret = self
            .join_secret
            .clone()
            .ok_or_else(|| ControlError::Invalid("the join code carries no join secret".into()))?;
        let identity = self
            .identity
            .clone()
            .ok_or_else(|| ControlError::Invalid("joining needs the member's key".into()))?;
        let info: Info = self.call(Method::Get, "/v1/info", None::<&()>, CALL_TIMEOUT)?;
        let server_key = Key::parse(&info.public_key).ok_or_else(|| {
            ControlError::Unavailable(format!("{}: not a lanparty-lite server", self.base))
        })?;
        self.stun = info.stun;
        let challenge: ChallengeReply = self.call(
            Method::Post,
            &format!("/v1/parties/{party_id}/challenge"),
            Some(&ChallengeRequest {
                join_secret: secret.clone(),
            }),
            CALL_TIMEOUT,
        )?;
        let proof = proof::sign(&identity, &server_key, party_id, &challenge.nonce)
            .ok_or_else(|| ControlError::Unavailable("the server's key is unusable".into()))?;
        let body = JoinBody {
            join_secret: secret,
            name: req.name,
            public_key: req.public_key.to_string(),
            endpoints: req.endpoints,
            reach: req.reach,
            nonce: challenge.nonce,
            proof,
        };
        let reply: JoinReply = self.call(
            Method::Post,
            &format!("/v1/parties/{party_id}/members"),
            Some(&body),
            CALL_TIMEOUT,
        )?;
        self.set_token(reply.token);
        Ok(reply.member)
    }

    fn heartbeat(
        &mut self,
        party_id: &str,
        member_id: &str,
        endpoints: &[SocketAddr],
        reach: &Reach,
    ) -> Result<(), ControlError> {
        let body = HeartbeatBody {
            endpoints: endpoints.to_vec(),
            reach: *reach,
        };
        let reply: TokenReply = self.call(
            Method::Post,
            &format!("/v1/parties/{party_id}/members/{member_id}/heartbeat"),
            Some(&body),
            CALL_TIMEOUT,
        )?;
        if let Some(token) = reply.token {
            self.set_token(token);
        }
        Ok(())
    }

    fn leave(&mut self, party_id: &str, member_id: &str) -> Result<(), ControlError> {
        self.call::<serde::de::IgnoredAny>(
            Method::Delete,
            &format!("/v1/parties/{party_id}/members/{member_id}"),
            None::<&()>,
            LEAVE_TIMEOUT,
        )
        .map(|_| ())
    }

    fn roster(&mut self, party_id: &str) -> Result<Roster, ControlError> {
        self.read_roster(party_id, None)
    }

    fn roster_since(&mut self, party_id: &str, since: u64) -> Result<Roster, ControlError> {
        self.read_roster(party_id, Some(since))
    }

    fn try_clone(&self) -> Box<dyn ControlPlane> {
        Box::new(self.clone())
    }

    fn stun_servers(&self) -> Vec<SocketAddr> {
        self.stun.clone()
    }

    /// Asks for a join challenge: it exists only for a party the join secret opens.
    fn party_exists(&mut self, party_id: &str) -> Result<bool, ControlError> {
        let secret = self.join_secret.clone().unwrap_or_default();
        let asked: Result<ChallengeReply, ControlError> = self.call(
            Method::Post,
            &format!("/v1/parties/{party_id}/challenge"),
            Some(&ChallengeRequest {
                join_secret: secret,
            }),
            CALL_TIMEOUT,
        );
        match asked {
            Ok(_) => Ok(true),
            Err(ControlError::UnknownParty(_) | ControlError::Denied(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list_relays(&mut self) -> Result<Vec<RelayInfo>, ControlError> {
        self.relays()
    }

    fn ticket(&mut self, party_id: &str) -> Result<Grant, ControlError> {
        self.relay_ticket(party_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_urls_choose_their_transport_or_are_refused() {
        assert!(matches!(
            transport("http://127.0.0.1:7777/"),
            Ok(Transport::Plain(_))
        ));
        assert!(matches!(
            transport("http://a b"),
            Err(ControlError::Invalid(_))
        ));
        #[cfg(not(feature = "tls"))]
        match HttpControl::new("https://localhost:7443", None, None) {
            Err(ControlError::Invalid(why)) => assert!(why.contains("no TLS"), "{why}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a build without TLS accepted https://"),
        }
    }

    #[test]
    fn an_unreachable_server_is_named_with_the_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let mut control = HttpControl::new(&base, None, None).unwrap();
        match control.list_relays() {
            Err(ControlError::Unavailable(why)) => assert_eq!(
                why,
                format!("cannot reach {base}: Connection refused (os error 111)")
            ),
            other => panic!("{:?}", other.map(|r| r.len())),
        }
    }
}
