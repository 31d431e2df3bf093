//! The control server's request handling: routes, authentication, authorization, limits and
//! the mapping of every error to a status code (in [`ApiError::status`], the one place).
//! Pure: requests and the time go in, replies (or "park this long-poll") come out; the
//! server loop owns sockets, the clock and the store.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::Serialize;
use x25519_dalek::StaticSecret;

use super::rate::RateLimiter;
use super::relays::{RelayList, Relays};
use super::tokens::{TokenKey, REFRESH_WHEN_LEFT_S};
use crate::control::http_api::*;
use crate::control::registry::{self, JoinRequest, NewParty, Registry};
use crate::control::{proof, ControlError};
use crate::identity::Key;
use crate::random;
use crate::wire::http::{query_param, Method, Request};

/// How long a challenge nonce stays valid.
pub const NONCE_TTL_S: u64 = 60;
/// Most outstanding nonces per party and in all.
const MAX_NONCES_PER_PARTY: usize = 256;
const MAX_NONCES: usize = 65_536;
/// Join secret length: 26 characters of a 31-symbol alphabet, about 128.8 bits.
pub const SECRET_LEN: usize = 26;

/// Server-wide limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most parties at once.
    pub max_parties: usize,
    /// Most members a party may be created with.
    pub max_peers: u32,
}

/// A failed request; each variant is one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request body or a field is malformed.
    BadRequest(String),
    /// 401: no token, or a token that is malformed, altered or expired.
    Unauthenticated(String),
    /// 403: a wrong join secret, a bad proof, or a token for someone else.
    Forbidden(String),
    /// 404: no such route, party or member.
    NotFound(String),
    /// 409: the server is full.
    Full(String),
    /// 409: the party is at its member limit (the limit goes into the body as `max_peers`).
    PartyFull(u32, String),
    /// 429: too many requests from this address.
    TooManyRequests,
    /// 503: the server could not do it now (store failure).
    Unavailable(String),
}

impl ApiError {
    /// Status code and message.
    pub fn status(&self) -> (u16, String) {
        match self {
            ApiError::BadRequest(m) => (400, m.clone()),
            ApiError::Unauthenticated(m) => (401, m.clone()),
            ApiError::Forbidden(m) => (403, m.clone()),
            ApiError::NotFound(m) => (404, m.clone()),
            ApiError::Full(m) | ApiError::PartyFull(_, m) => (409, m.clone()),
            ApiError::TooManyRequests => {
                (429, "too many requests from this address; slow down".into())
            }
            ApiError::Unavailable(m) => (503, m.clone()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match &e {
            ControlError::UnknownParty(_) | ControlError::UnknownMember(_) => {
                ApiError::NotFound(e.to_string())
            }
            ControlError::PartyFull(max) => ApiError::PartyFull(*max, e.to_string()),
            ControlError::Invalid(why) => ApiError::BadRequest(why.clone()),
            ControlError::Denied(why) => ApiError::Forbidden(why.clone()),
            ControlError::Corrupt(_) | ControlError::Unavailable(_) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer now with this status and JSON body.
    Reply(u16, Vec<u8>),
    /// Hold the roster read until the party's version passes `since` (or the poll times out),
    /// then answer with [`Api::roster_reply`].
    Park {
        /// Party to watch.
        party_id: String,
        /// Version the client already has.
        since: u64,
    },
}

/// Server state and request handling.
pub struct Api {
    /// Parties and members; persisted by the caller whenever [`Api::dirty`] is set.
    pub registry: Registry,
    /// Set by every change that must reach the store before replies go out.
    pub dirty: bool,
    /// Set by heartbeats that only refreshed `last_seen`; stored within a few seconds.
    pub liveness_dirty: bool,
    secret: StaticSecret,
    public: Key,
    tokens: TokenKey,
    nonces: HashMap<String, (String, u64)>,
    limits: Limits,
    rate: RateLimiter,
    /// Registered relays.
    pub relays: Relays,
    /// Addresses the server answers STUN on, for `GET /v1/info`.
    pub stun: Vec<SocketAddr>,
}

pub(super) fn json<T: Serialize>(status: u16, value: &T) -> Outcome {
    Outcome::Reply(status, serde_json::to_vec(value).unwrap_or_default())
}

/// The JSON error body for a status and message.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorReply {
        error: message.to_string(),
        max_peers: None,
    })
    .unwrap_or_default()
}

fn parse_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Api {
    /// A server with static key `secret`.
    pub fn new(registry: Registry, secret: StaticSecret, limits: Limits, rate: RateLimiter) -> Api {
        let public = Key(x25519_dalek::PublicKey::from(&secret).to_bytes());
        let tokens = TokenKey::derive(&secret.to_bytes());
        Api {
            registry,
            dirty: false,
            liveness_dirty: false,
            secret,
            public,
            tokens,
            nonces: HashMap::new(),
            limits,
            rate,
            relays: Relays::default(),
            stun: Vec::new(),
        }
    }

    /// Handles one request from `src` at `now` (Unix seconds) / `at` (monotonic).
    pub fn handle(&mut self, req: &Request, src: IpAddr, now: u64, at: Instant) -> Outcome {
        if !self.rate.allow(src, at) {
            return self.error(ApiError::TooManyRequests);
        }
        match self.route(req, now) {
            Ok(outcome) => outcome,
            Err(e) => self.error(e),
        }
    }

    fn error(&self, e: ApiError) -> Outcome {
        let (status, message) = e.status();
        let max_peers = match e {
            ApiError::PartyFull(max, _) => Some(max),
            _ => None,
        };
        let body = ErrorReply {
            error: message,
            max_peers,
        };
        Outcome::Reply(status, serde_json::to_vec(&body).unwrap_or_default())
    }

    fn route(&mut self, req: &Request, now: u64) -> Result<Outcome, ApiError> {
        let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
        match (req.method, segments.as_slice()) {
            (Method::Get, ["v1", "info"]) => Ok(json(
                200,
                &Info {
                    service: "lanparty-lite".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    public_key: self.public.to_string(),
                    time: now,
                    stun: self.stun.clone(),
                },
            )),
            (Method::Get, ["v1", "relays"]) => Ok(json(
                200,
                &RelayList {
                    relays: self.relays.list(now),
                },
            )),
            (Method::Post, ["v1", "relays"]) => self.register_relay(parse_body(req)?, now),
            (Method::Post, ["v1", "parties"]) => self.create_party(parse_body(req)?, now),
            (Method::Post, ["v1", "parties", party, "relay-ticket"]) => {
                self.relay_ticket(req, party, now)
            }
            (Method::Post, ["v1", "parties", party, "challenge"]) => {
                self.challenge(party, parse_body(req)?, now)
            }
            (Method::Post, ["v1", "parties", party, "members"]) => {
                self.join(party, parse_body(req)?, now)
            }
            (Method::Post, ["v1", "parties", party, "members", member, "heartbeat"]) => {
                let public_key = self.authorize(req, party, member, now)?;
                let body: HeartbeatBody = parse_body(req)?;
                let before = self.registry.version;
                self.registry
                    .heartbeat(party, member, body.endpoints, body.reach, now)?;
                // Only liveness changed: it may reach the store a little later (a crash loses
                // seconds of `last_seen`, far below the 300 s staleness limit).
                if self.registry.version == before {
                    self.liveness_dirty = true;
                } else {
                    self.dirty = true;
                }
                let remaining = self.token_remaining(req, now);
                let reply = if remaining < REFRESH_WHEN_LEFT_S {
                    let (token, expires) = self.tokens.issue(party, member, &public_key, now);
                    TokenReply {
                        token: Some(token),
                        token_expires_at: Some(expires),
                    }
                } else {
                    TokenReply {
                        token: None,
                        token_expires_at: None,
                    }
                };
                Ok(json(200, &reply))
            }
            (Method::Post, ["v1", "parties", party, "members", member, "token"]) => {
                let public_key = self.authorize(req, party, member, now)?;
                let (token, expires) = self.tokens.issue(party, member, &public_key, now);
                Ok(json(
                    200,
                    &TokenReply {
                        token: Some(token),
                        token_expires_at: Some(expires),
                    },
                ))
            }
            (Method::Delete, ["v1", "parties", party, "members", member]) => {
                self.authorize(req, party, member, now)?;
                self.registry.leave(party, member, now)?;
                self.dirty = true;
                Ok(Outcome::Reply(200, b"{\"ok\":true}".to_vec()))
            }
            (Method::Get, ["v1", "parties", party, "roster"]) => {
                let member = self.member_of_token(req, party, now)?;
                let since = match query_param(&req.query, "since") {
                    None => None,
                    Some(v) => Some(
                        v.parse::<u64>()
                            .map_err(|_| ApiError::BadRequest("since must be a number".into()))?,
                    ),
                };
                let current = self.registry.roster(party, now)?.version;
                log::trace!("roster read by {member} since {since:?} at {current}");
                match since {
                    Some(since) if since >= current => Ok(Outcome::Park {
                        party_id: party.to_string(),
                        since,
                    }),
                    _ => Ok(self.roster_reply(party, now)),
                }
            }
            _ => Err(ApiError::NotFound(format!(
                "no such endpoint: {} {}",
                method_name(req.method),
                req.path
            ))),
        }
    }

    /// The current roster of `party_id` as a reply (404 if the party is gone).
    pub fn roster_reply(&self, party_id: &str, now: u64) -> Outcome {
        match self.registry.roster(party_id, now) {
            Ok(roster) => json(200, &roster),
            Err(e) => self.error(e.into()),
        }
    }

    /// The party's current roster version, if it still exists.
    pub fn roster_version(&self, party_id: &str, now: u64) -> Option<u64> {
        self.registry.party_version(party_id, now)
    }

    fn create_party(&mut self, body: CreatePartyRequest, now: u64) -> Result<Outcome, ApiError> {
        self.registry.expire(now);
        if self.registry.parties.len() >= self.limits.max_parties {
            return Err(ApiError::Full(format!(
                "this server holds its maximum of {} parties",
                self.limits.max_parties
            )));
        }
        let max_peers = body
            .max_peers
            .unwrap_or(registry::DEFAULT_MAX_PEERS.min(self.limits.max_peers));
        if max_peers > self.limits.max_peers {
            return Err(ApiError::BadRequest(format!(
                "max_peers may be at most {}",
                self.limits.max_peers
            )));
        }
        let subnet: Ipv4Net = body
            .subnet
            .unwrap_or_else(|| registry::DEFAULT_SUBNET.parse().expect("valid default"));
        let unavailable = |e: std::io::Error| ApiError::Unavailable(format!("randomness: {e}"));
        let id = random::id(10).map_err(unavailable)?;
        let secret = random::id(SECRET_LEN).map_err(unavailable)?;
        let new = NewParty {
            name: body.name,
            subnet,
            max_peers,
            secret: Some(secret.clone()),
        };
        let party = self.registry.create_party(id, new, now)?.clone();
        self.dirty = true;
        Ok(json(
            201,
            &CreatePartyReply {
                id: party.id,
                name: party.name,
                subnet: party.subnet,
                max_peers: party.max_peers,
                join_secret: secret,
            },
        ))
    }

    fn check_secret(&self, party_id: &str, given: &str) -> Result<(), ApiError> {
        let party = self
            .registry
            .parties
            .get(party_id)
            .ok_or_else(|| ApiError::from(ControlError::UnknownParty(party_id.into())))?;
        let ok = party
            .secret
            .as_deref()
            .is_some_and(|s| proof::constant_time_eq(s.as_bytes(), given.as_bytes()));
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "wrong join secret for this party".into(),
            ))
        }
    }

    fn challenge(
        &mut self,
        party_id: &str,
        body: ChallengeRequest,
        now: u64,
    ) -> Result<Outcome, ApiError> {
        self.check_secret(party_id, &body.join_secret)?;
        self.nonces.retain(|_, (_, expires)| *expires > now);
        let outstanding = self.nonces.values().filter(|(p, _)| p == party_id).count();
        if outstanding >= MAX_NONCES_PER_PARTY || self.nonces.len() >= MAX_NONCES {
            return Err(ApiError::TooManyRequests);
        }
        let nonce =
            random::id(32).map_err(|e| ApiError::Unavailable(format!("randomness: {e}")))?;
        self.nonces
            .insert(nonce.clone(), (party_id.to_string(), now + NONCE_TTL_S));
        Ok(json(
            200,
            &ChallengeReply {
                nonce,
                expires_in_s: NONCE_TTL_S,
            },
        ))
    }

    fn join(&mut self, party_id: &str, body: JoinBody, now: u64) -> Result<Outcome, ApiError> {
        self.check_secret(party_id, &body.join_secret)?;
        let key = Key::parse(&body.public_key).ok_or_else(|| {
            ApiError::BadRequest("public_key must be 44 characters of base64".into())
        })?;
        if !is_token(&body.nonce) {
            return Err(ApiError::BadRequest("malformed nonce".into()));
        }
        // Single use: the nonce is consumed whether or not the proof holds.
        match self.nonces.remove(&body.nonce) {
            Some((p, expires)) if p == party_id && expires > now => {}
            _ => {
                return Err(ApiError::Forbidden(
                    "unknown, expired or already used nonce; ask for a new challenge".into(),
                ))
            }
        }
        if !proof::verify(&self.secret, &key, party_id, &body.nonce, &body.proof) {
            return Err(ApiError::Forbidden(
                "proof of key possession does not verify".into(),
            ));
        }
        let member = self.registry.join(
            party_id,
            JoinRequest {
                name: body.name,
                public_key: key,
                endpoints: body.endpoints,
                reach: body.reach,
            },
            now,
        )?;
        self.dirty = true;
        let (token, token_expires_at) =
            self.tokens
                .issue(party_id, &member.id, &member.public_key, now);
        Ok(json(
            200,
            &JoinReply {
                member,
                token,
                token_expires_at,
            },
        ))
    }

    /// Checks the bearer token names this party and member, and returns the member's key.
    fn authorize(
        &self,
        req: &Request,
        party_id: &str,
        member_id: &str,
        now: u64,
    ) -> Result<String, ApiError> {
        let (claims_member, public_key) = self.verified(req, party_id, now)?;
        if claims_member != member_id {
            return Err(ApiError::Forbidden(
                "this token belongs to another member".into(),
            ));
        }
        Ok(public_key)
    }

    /// The member id of a valid token for `party_id` (any member may read the roster).
    fn member_of_token(&self, req: &Request, party_id: &str, now: u64) -> Result<String, ApiError> {
        self.verified(req, party_id, now).map(|(member, _)| member)
    }

    pub(super) fn verified(
        &self,
        req: &Request,
        party_id: &str,
        now: u64,
    ) -> Result<(String, String), ApiError> {
        let token = req.bearer.as_deref().ok_or_else(|| {
            ApiError::Unauthenticated("missing Authorization: Bearer token".into())
        })?;
        let claims = TokenKey::claims(token)
            .map_err(|_| ApiError::Unauthenticated("malformed token".into()))?;
        if claims.party_id != party_id {
            return Err(ApiError::Forbidden(
                "this token belongs to another party".into(),
            ));
        }
        let party = self
            .registry
            .parties
            .get(party_id)
            .ok_or_else(|| ApiError::from(ControlError::UnknownParty(party_id.into())))?;
        let member = party.members.get(&claims.member_id).ok_or_else(|| {
            ApiError::NotFound(format!(
                "member {} is not in this party (left or expired); join again",
                claims.member_id
            ))
        })?;
        self.tokens
            .verify(token, &member.public_key, now)
            .map_err(|e| {
                ApiError::Unauthenticated(match e {
                    super::tokens::TokenError::Expired => "token expired; join again".into(),
                    _ => "invalid token".into(),
                })
            })?;
        Ok((claims.member_id, member.public_key.clone()))
    }

    fn token_remaining(&self, req: &Request, now: u64) -> u64 {
        req.bearer
            .as_deref()
            .and_then(|t| TokenKey::claims(t).ok())
            .map_or(0, |c| c.expires_at.saturating_sub(now))
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Delete => "DELETE",
    }
}
