//! Every endpoint and error path of [`Api`], in memory: requests go through the same HTTP
//! parser the server uses, the clock is virtual (Unix seconds and an `Instant` the tests
//! advance), and every 4xx must carry a readable JSON `{"error": "…"}`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use x25519_dalek::{PublicKey, StaticSecret};

use super::api::{error_body, Api, Limits, Outcome, NONCE_TTL_S, SECRET_LEN};
use super::rate::RateLimiter;
use super::tokens::{REFRESH_WHEN_LEFT_S, TOKEN_LIFETIME_S};
use crate::control::http_api::*;
use crate::control::proof;
use crate::control::registry::{Registry, STALE_AFTER_S};
use crate::control::Roster;
use crate::identity::Key;
use crate::wire::http::{self, HttpError, MAX_BODY_BYTES, MAX_HEAD_BYTES};

/// A plausible Unix time to start the virtual clock at.
const T0: u64 = 1_800_000_000;
/// Comfortably inside the stale limit, like the client's 30 s heartbeats but fewer of them.
const KEEPALIVE_EVERY_S: u64 = 240;

fn server_secret() -> StaticSecret {
    StaticSecret::from([7; 32])
}

fn member_secret(n: u8) -> StaticSecret {
    StaticSecret::from([n; 32])
}

fn public_of(secret: &StaticSecret) -> Key {
    Key(PublicKey::from(secret).to_bytes())
}

/// One server, a virtual clock and a default source address.
struct Harness {
    api: Api,
    now: u64,
    at: Instant,
    src: IpAddr,
}

/// A member as the tests know it: its key, record and token.
struct Joined {
    secret: StaticSecret,
    id: String,
    token: String,
    token_expires_at: u64,
}

/// A created party.
struct Party {
    id: String,
    secret: String,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(
            Limits {
                max_parties: 4,
                max_peers: 8,
            },
            RateLimiter::new(0, 0),
        )
    }

    fn with(limits: Limits, rate: RateLimiter) -> Harness {
        Harness {
            api: Api::new(Registry::default(), server_secret(), limits, rate),
            now: T0,
            at: Instant::now(),
            src: "192.0.2.10".parse().unwrap(),
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += secs;
        self.at += Duration::from_secs(secs);
    }

    /// Sends one request as raw HTTP through `wire::http`, as the server loop does.
    fn call(&mut self, method: &str, target: &str, bearer: Option<&str>, body: &str) -> Outcome {
        let src = self.src;
        self.call_from(src, method, target, bearer, body)
    }

    fn call_from(
        &mut self,
        src: IpAddr,
        method: &str,
        target: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> Outcome {
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        if let Some(token) = bearer {
            raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let (req, used) = http::parse_request(raw.as_bytes())
            .expect("test request parses")
            .expect("test request is complete");
        assert_eq!(used, raw.len());
        self.api.handle(&req, src, self.now, self.at)
    }

    fn create_party(&mut self, name: &str) -> Party {
        let body = serde_json::json!({ "name": name }).to_string();
        let reply: CreatePartyReply = ok(self.call("POST", "/v1/parties", None, &body), 201);
        Party {
            id: reply.id,
            secret: reply.join_secret,
        }
    }

    fn challenge(&mut self, party: &Party) -> String {
        let body = serde_json::json!({ "join_secret": party.secret }).to_string();
        let path = format!("/v1/parties/{}/challenge", party.id);
        let reply: ChallengeReply = ok(self.call("POST", &path, None, &body), 200);
        reply.nonce
    }

    /// The join body a correct client sends for `nonce`.
    fn join_body(&self, party: &Party, secret: &StaticSecret, nonce: &str) -> JoinBody {
        let server = public_of(&server_secret());
        JoinBody {
            join_secret: party.secret.clone(),
            name: "member".into(),
            public_key: public_of(secret).to_string(),
            endpoints: vec!["198.51.100.7:51820".parse().unwrap()],
            nonce: nonce.into(),
            proof: proof::sign(secret, &server, &party.id, nonce).expect("usable server key"),
        }
    }

    fn post_join(&mut self, party: &Party, body: &JoinBody) -> Outcome {
        let path = format!("/v1/parties/{}/members", party.id);
        let json = serde_json::to_string(body).unwrap();
        self.call("POST", &path, None, &json)
    }

    fn join(&mut self, party: &Party, n: u8) -> Joined {
        let secret = member_secret(n);
        let nonce = self.challenge(party);
        let body = self.join_body(party, &secret, &nonce);
        let reply: JoinReply = ok(self.post_join(party, &body), 200);
        assert_eq!(reply.member.public_key, public_of(&secret).to_string());
        Joined {
            secret,
            id: reply.member.id,
            token: reply.token,
            token_expires_at: reply.token_expires_at,
        }
    }

    fn heartbeat(&mut self, party: &Party, member: &str, token: Option<&str>) -> Outcome {
        let path = format!("/v1/parties/{}/members/{member}/heartbeat", party.id);
        self.call(
            "POST",
            &path,
            token,
            r#"{"endpoints":["198.51.100.7:51820"]}"#,
        )
    }

    fn roster(&mut self, party: &Party, token: Option<&str>, query: &str) -> Outcome {
        let path = format!("/v1/parties/{}/roster{query}", party.id);
        self.call("GET", &path, token, "")
    }

    fn roster_of(&mut self, party: &Party, token: &str) -> Roster {
        ok(self.roster(party, Some(token), ""), 200)
    }

    fn member_ids(&mut self, party: &Party, token: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .roster_of(party, token)
            .members
            .into_iter()
            .map(|m| m.id)
            .collect();
        ids.sort();
        ids
    }

    /// Advances the clock to `until`, heartbeating `member` with `token` often enough to keep
    /// it in the party.
    fn keep_alive_until(&mut self, party: &Party, member: &Joined, token: &str, until: u64) {
        while self.now + KEEPALIVE_EVERY_S < until {
            self.advance(KEEPALIVE_EVERY_S);
            let _: TokenReply = ok(self.heartbeat(party, &member.id, Some(token)), 200);
        }
        self.advance(until - self.now);
    }
}

/// The JSON body of a reply with `status`.
#[track_caller]
fn ok<T: DeserializeOwned>(outcome: Outcome, status: u16) -> T {
    match outcome {
        Outcome::Reply(got, body) => {
            let text = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(got, status, "reply body: {text}");
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("reply is not the expected JSON ({e}): {text}"))
        }
        Outcome::Park { .. } => panic!("expected {status}, got {outcome:?}"),
    }
}

/// Asserts an error reply with `status` whose body is exactly `{"error": "<non-empty>"}` (plus
/// `max_peers` on a full party's 409), and returns the message.
#[track_caller]
fn error(outcome: Outcome, status: u16) -> String {
    let value: serde_json::Value = ok(outcome, status);
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {value}"));
    let extra = object
        .keys()
        .filter(|k| *k != "error" && *k != "max_peers")
        .count();
    assert_eq!(extra, 0, "error body has other fields: {value}");
    if object.contains_key("max_peers") {
        assert_eq!(status, 409, "max_peers only on a full party: {value}");
    }
    let message = object
        .get("error")
        .and_then(|m| m.as_str())
        .unwrap_or_else(|| panic!("error body has no \"error\" string: {value}"));
    assert!(!message.trim().is_empty(), "empty error message");
    message.to_string()
}

/// A token with its `index`th dot-separated field replaced.
fn with_field(token: &str, index: usize, value: &str) -> String {
    let mut fields: Vec<&str> = token.split('.').collect();
    fields[index] = value;
    fields.join(".")
}

// --- GET /v1/info -------------------------------------------------------------------------

#[test]
fn info_names_the_service_its_public_key_and_clock() {
    let mut h = Harness::new();
    let info: Info = ok(h.call("GET", "/v1/info", None, ""), 200);
    assert_eq!(info.service, "lanparty-lite");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.public_key, public_of(&server_secret()).to_string());
    assert_eq!(info.time, T0);
}

// --- POST /v1/parties ---------------------------------------------------------------------

#[test]
fn creating_a_party_returns_its_id_defaults_and_a_128_bit_secret() {
    let mut h = Harness::new();
    let reply: CreatePartyReply = ok(
        h.call("POST", "/v1/parties", None, r#"{"name":"friday"}"#),
        201,
    );
    assert_eq!(reply.name, "friday");
    assert_eq!(reply.subnet.to_string(), "10.66.0.0/16");
    assert_eq!(
        reply.max_peers, 8,
        "the default is capped at the server's limit"
    );
    assert_eq!(reply.join_secret.len(), SECRET_LEN);
    assert!(SECRET_LEN as f64 * 31f64.log2() >= 128.0);
    assert!(h.api.dirty, "a new party must reach the store");
    let other: CreatePartyReply = ok(
        h.call(
            "POST",
            "/v1/parties",
            None,
            r#"{"name":"sat","subnet":"10.77.0.0/24","max_peers":3}"#,
        ),
        201,
    );
    assert_eq!(
        (other.subnet.to_string().as_str(), other.max_peers),
        ("10.77.0.0/24", 3)
    );
    assert_ne!(other.id, reply.id);
    assert_ne!(other.join_secret, reply.join_secret);
}

#[test]
fn create_party_refuses_malformed_json_with_400() {
    let mut h = Harness::new();
    for body in [
        "",
        "{",
        "not json",
        "[]",
        r#"{"name":7}"#,
        r#"{"nom":"friday"}"#,
        r#"{"name":"x","max_peers":-1}"#,
        r#"{"name":"x","subnet":"10.0.0.0/33"}"#,
        r#"{"name":"x","subnet":"2001:db8::/32"}"#,
    ] {
        let message = error(h.call("POST", "/v1/parties", None, body), 400);
        assert!(message.contains("JSON"), "{body:?}: {message}");
    }
    assert!(h.api.registry.parties.is_empty());
    assert!(!h.api.dirty, "nothing changed");
}

#[test]
fn create_party_refuses_empty_overlong_and_control_character_names() {
    let mut h = Harness::new();
    let longest = "n".repeat(64);
    for name in ["", &"n".repeat(65), "evil\nname"] {
        let body = serde_json::json!({ "name": name }).to_string();
        let message = error(h.call("POST", "/v1/parties", None, &body), 400);
        assert!(message.contains("name"), "{name:?}: {message}");
    }
    let body = serde_json::json!({ "name": longest }).to_string();
    let _: CreatePartyReply = ok(h.call("POST", "/v1/parties", None, &body), 201);
}

#[test]
fn create_party_refuses_max_peers_above_the_server_limit_or_zero_and_tiny_subnets() {
    let mut h = Harness::new();
    let message = error(
        h.call("POST", "/v1/parties", None, r#"{"name":"x","max_peers":9}"#),
        400,
    );
    assert!(message.contains("at most 8"), "{message}");
    error(
        h.call("POST", "/v1/parties", None, r#"{"name":"x","max_peers":0}"#),
        400,
    );
    error(
        h.call(
            "POST",
            "/v1/parties",
            None,
            r#"{"name":"x","subnet":"10.0.0.0/31"}"#,
        ),
        400,
    );
    let _: CreatePartyReply = ok(
        h.call("POST", "/v1/parties", None, r#"{"name":"x","max_peers":8}"#),
        201,
    );
}

#[test]
fn a_server_at_its_party_limit_answers_409_until_empty_parties_expire() {
    let mut h = Harness::new();
    for n in 0..4 {
        h.create_party(&format!("p{n}"));
    }
    let message = error(
        h.call("POST", "/v1/parties", None, r#"{"name":"fifth"}"#),
        409,
    );
    assert!(message.contains("maximum of 4 parties"), "{message}");
    h.advance(299);
    error(
        h.call("POST", "/v1/parties", None, r#"{"name":"fifth"}"#),
        409,
    );
    h.advance(1);
    h.create_party("fifth");
    assert_eq!(h.api.registry.parties.len(), 1, "the empty ones expired");
}

// --- POST /v1/parties/{id}/challenge ------------------------------------------------------

#[test]
fn a_challenge_with_the_join_secret_returns_a_fresh_nonce() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let body = serde_json::json!({ "join_secret": party.secret }).to_string();
    let path = format!("/v1/parties/{}/challenge", party.id);
    let first: ChallengeReply = ok(h.call("POST", &path, None, &body), 200);
    let second: ChallengeReply = ok(h.call("POST", &path, None, &body), 200);
    assert_eq!(first.expires_in_s, NONCE_TTL_S);
    assert_eq!(first.nonce.len(), 32);
    assert_ne!(first.nonce, second.nonce);
}

#[test]
fn a_challenge_with_a_wrong_secret_is_forbidden() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let other = h.create_party("other");
    let path = format!("/v1/parties/{}/challenge", party.id);
    let last = if party.secret.ends_with('x') {
        'y'
    } else {
        'x'
    };
    let wrong_last_char = format!("{}{last}", &party.secret[..SECRET_LEN - 1]);
    for secret in [
        "",
        "wrong",
        wrong_last_char.as_str(),
        other.secret.as_str(),
        &format!("{}x", party.secret),
    ] {
        let body = serde_json::json!({ "join_secret": secret }).to_string();
        let message = error(h.call("POST", &path, None, &body), 403);
        assert!(message.contains("secret"), "{message}");
    }
    error(h.call("POST", &path, None, "{}"), 400);
}

#[test]
fn a_challenge_for_an_unknown_party_is_not_found() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let body = serde_json::json!({ "join_secret": party.secret }).to_string();
    let message = error(
        h.call("POST", "/v1/parties/nosuchparty/challenge", None, &body),
        404,
    );
    assert!(message.contains("nosuchparty"), "{message}");
}

#[test]
fn outstanding_challenges_per_party_are_capped_until_they_expire() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    for _ in 0..256 {
        h.challenge(&party);
    }
    let body = serde_json::json!({ "join_secret": party.secret }).to_string();
    let path = format!("/v1/parties/{}/challenge", party.id);
    error(h.call("POST", &path, None, &body), 429);
    let other = h.create_party("other");
    h.challenge(&other);
    h.advance(NONCE_TTL_S);
    h.challenge(&party);
}

// --- POST /v1/parties/{id}/members --------------------------------------------------------

#[test]
fn joining_with_secret_and_proof_returns_the_member_and_a_24_hour_token() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let secret = member_secret(1);
    let nonce = h.challenge(&party);
    let body = h.join_body(&party, &secret, &nonce);
    h.api.dirty = false;
    let reply: JoinReply = ok(h.post_join(&party, &body), 200);
    assert!(h.api.dirty, "a join must reach the store");
    assert_eq!(reply.member.id, public_of(&secret).short_id());
    assert_eq!(reply.member.virtual_ip.to_string(), "10.66.0.1");
    assert_eq!(
        reply.member.endpoints,
        vec!["198.51.100.7:51820".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(reply.token_expires_at, T0 + TOKEN_LIFETIME_S);
    assert!(reply
        .token
        .starts_with(&format!("v1.{}.{}.", party.id, reply.member.id)));
    let roster = h.roster_of(&party, &reply.token);
    assert_eq!(roster.members.len(), 1);
    assert_eq!(roster.members[0].public_key, body.public_key);
}

#[test]
fn joining_with_a_wrong_secret_is_forbidden_and_leaves_the_nonce_usable() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let secret = member_secret(1);
    let nonce = h.challenge(&party);
    let mut body = h.join_body(&party, &secret, &nonce);
    body.join_secret = "wrong".into();
    let message = error(h.post_join(&party, &body), 403);
    assert!(message.contains("secret"), "{message}");
    body.join_secret = party.secret.clone();
    let _: JoinReply = ok(h.post_join(&party, &body), 200);
}

#[test]
fn joining_with_an_unknown_or_missing_nonce_is_refused() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let secret = member_secret(1);
    let made_up = "abcdefghjkmnpqrstuvwxyz234567892";
    let body = h.join_body(&party, &secret, made_up);
    let message = error(h.post_join(&party, &body), 403);
    assert!(message.contains("nonce"), "{message}");
    // A nonce that is not even well-formed, or absent, is a malformed request.
    let body = h.join_body(&party, &secret, "");
    error(h.post_join(&party, &body), 400);
    let body = h.join_body(&party, &secret, "has space");
    error(h.post_join(&party, &body), 400);
    let mut value = serde_json::to_value(h.join_body(&party, &secret, made_up)).unwrap();
    value.as_object_mut().unwrap().remove("nonce");
    let path = format!("/v1/parties/{}/members", party.id);
    error(h.call("POST", &path, None, &value.to_string()), 400);
    assert!(h.api.registry.parties[&party.id].members.is_empty());
}

#[test]
fn a_replayed_join_is_forbidden() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let secret = member_secret(1);
    let nonce = h.challenge(&party);
    let body = h.join_body(&party, &secret, &nonce);
    let _: JoinReply = ok(h.post_join(&party, &body), 200);
    let version = h.api.registry.parties[&party.id].version;
    h.api.dirty = false;
    let message = error(h.post_join(&party, &body), 403);
    assert!(message.contains("already used"), "{message}");
    assert_eq!(h.api.registry.parties[&party.id].version, version);
    assert!(!h.api.dirty);
}

#[test]
fn a_nonce_expires_60_seconds_after_the_challenge() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let (early, late) = (member_secret(1), member_secret(2));
    let early_nonce = h.challenge(&party);
    let late_nonce = h.challenge(&party);
    h.advance(NONCE_TTL_S - 1);
    let body = h.join_body(&party, &early, &early_nonce);
    let _: JoinReply = ok(h.post_join(&party, &body), 200);
    h.advance(1);
    let body = h.join_body(&party, &late, &late_nonce);
    let message = error(h.post_join(&party, &body), 403);
    assert!(message.contains("expired"), "{message}");
}

#[test]
fn a_proof_made_with_another_key_is_forbidden_and_burns_the_nonce() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let (victim, thief) = (member_secret(1), member_secret(2));
    let nonce = h.challenge(&party);
    let honest = h.join_body(&party, &victim, &nonce);
    let mut forged = h.join_body(&party, &thief, &nonce);
    forged.public_key = honest.public_key.clone();
    let message = error(h.post_join(&party, &forged), 403);
    assert!(message.contains("proof"), "{message}");
    let mut garbage = honest.clone();
    garbage.proof = "not base64!".into();
    // The nonce is gone: neither garbage nor even the honest proof may use it now.
    error(h.post_join(&party, &garbage), 403);
    error(h.post_join(&party, &honest), 403);
    assert!(h.api.registry.parties[&party.id].members.is_empty());
}

#[test]
fn a_proof_or_nonce_for_another_party_is_forbidden() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let other = h.create_party("other");
    let secret = member_secret(1);
    let server = public_of(&server_secret());
    // The right party's nonce, with a proof computed for the other party.
    let nonce = h.challenge(&party);
    let mut body = h.join_body(&party, &secret, &nonce);
    body.proof = proof::sign(&secret, &server, &other.id, &nonce).unwrap();
    error(h.post_join(&party, &body), 403);
    // A nonce from one party's challenge, presented with a valid proof to the other party.
    let nonce = h.challenge(&party);
    let body = h.join_body(&other, &secret, &nonce);
    let message = error(h.post_join(&other, &body), 403);
    assert!(message.contains("nonce"), "{message}");
    assert!(h
        .api
        .registry
        .parties
        .values()
        .all(|p| p.members.is_empty()));
}

#[test]
fn a_malformed_public_key_is_a_bad_request_and_a_low_order_key_is_forbidden() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let secret = member_secret(1);
    for key in [
        "",
        "short",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
        "ABPJJQtwxuez6U4V4ht7v6GmsxOnPs80SrW5l+rj1xo",
        "ABPJJQtwxuez6U4V4ht7v6GmsxOnPs80SrW5l+rj1xo==",
    ] {
        let nonce = h.challenge(&party);
        let mut body = h.join_body(&party, &secret, &nonce);
        body.public_key = key.into();
        let message = error(h.post_join(&party, &body), 400);
        assert!(message.contains("public_key"), "{key:?}: {message}");
    }
    let nonce = h.challenge(&party);
    let mut body = h.join_body(&party, &secret, &nonce);
    body.public_key = Key([0; 32]).to_string();
    error(h.post_join(&party, &body), 403);
}

#[test]
fn joining_with_bad_member_fields_is_a_bad_request() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let secret = member_secret(1);
    let nonce = h.challenge(&party);
    let mut body = h.join_body(&party, &secret, &nonce);
    body.name = "x".repeat(65);
    error(h.post_join(&party, &body), 400);
    let nonce = h.challenge(&party);
    let mut body = h.join_body(&party, &secret, &nonce);
    body.endpoints = (0..17)
        .map(|p| SocketAddr::from(([192, 0, 2, 1], 1000 + p)))
        .collect();
    let message = error(h.post_join(&party, &body), 400);
    assert!(message.contains("endpoints"), "{message}");
    let path = format!("/v1/parties/{}/members", party.id);
    error(h.call("POST", &path, None, r#"{"join_secret":"#), 400);
}

#[test]
fn joining_a_full_party_is_a_conflict_but_members_may_rejoin() {
    let mut h = Harness::new();
    let body = r#"{"name":"duo","max_peers":2}"#;
    let reply: CreatePartyReply = ok(h.call("POST", "/v1/parties", None, body), 201);
    let party = Party {
        id: reply.id,
        secret: reply.join_secret,
    };
    let first = h.join(&party, 1);
    h.join(&party, 2);
    let nonce = h.challenge(&party);
    let body = h.join_body(&party, &member_secret(3), &nonce);
    let message = error(h.post_join(&party, &body), 409);
    assert!(message.contains("full"), "{message}");
    let again = h.join(&party, 1);
    assert_eq!(again.id, first.id);
    assert_eq!(h.member_ids(&party, &again.token).len(), 2);
}

// --- POST …/members/{member}/heartbeat ----------------------------------------------------

#[test]
fn a_heartbeat_with_the_members_token_succeeds_without_a_new_token_early_on() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    h.advance(30);
    h.api.dirty = false;
    let reply: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&alice.token)), 200);
    assert_eq!(
        reply,
        TokenReply {
            token: None,
            token_expires_at: None
        }
    );
    assert!(
        !h.api.dirty,
        "a liveness-only heartbeat does not force a write before replying"
    );
    assert!(h.api.liveness_dirty, "last_seen must reach the store");
    let roster = h.roster_of(&party, &alice.token);
    assert_eq!(roster.members[0].last_seen, T0 + 30);
}

#[test]
fn a_heartbeat_with_new_endpoints_moves_the_roster_version() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let before = h.roster_of(&party, &alice.token).version;
    let path = format!("/v1/parties/{}/members/{}/heartbeat", party.id, alice.id);
    let body = r#"{"endpoints":["203.0.113.9:4000"]}"#;
    let _: TokenReply = ok(h.call("POST", &path, Some(&alice.token), body), 200);
    let roster = h.roster_of(&party, &alice.token);
    assert!(roster.version > before);
    assert_eq!(
        roster.members[0].endpoints,
        vec!["203.0.113.9:4000".parse::<SocketAddr>().unwrap()]
    );
    error(
        h.call("POST", &path, Some(&alice.token), "{\"endpoints\":"),
        400,
    );
    let many: Vec<String> = (0..17).map(|p| format!("192.0.2.1:{}", 1000 + p)).collect();
    let body = serde_json::json!({ "endpoints": many }).to_string();
    error(h.call("POST", &path, Some(&alice.token), &body), 400);
}

#[test]
fn a_heartbeat_without_a_token_is_unauthenticated() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let message = error(h.heartbeat(&party, &alice.id, None), 401);
    assert!(message.contains("token"), "{message}");
}

#[test]
fn a_heartbeat_with_a_malformed_or_altered_token_is_unauthenticated() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let far_future = (alice.token_expires_at + 365 * 24 * 3600).to_string();
    let other_server = TokenKeyFor::other().issue(&party.id, &alice.id, &alice.secret);
    let mac = alice.token.rsplit('.').next().unwrap();
    let flipped_mac = if mac.starts_with('A') {
        mac.replacen('A', "B", 1)
    } else {
        format!("A{}", &mac[1..])
    };
    for token in [
        "garbage".to_string(),
        format!("v1.{}.{}", party.id, alice.id),
        format!("v2{}", &alice.token[2..]),
        with_field(&alice.token, 3, "soon"),
        with_field(&alice.token, 3, &far_future),
        with_field(&alice.token, 4, &flipped_mac),
        with_field(&alice.token, 4, "!!"),
        format!("{}.extra", alice.token),
        other_server,
    ] {
        let message = error(h.heartbeat(&party, &alice.id, Some(&token)), 401);
        assert!(message.contains("token"), "{token}: {message}");
    }
}

/// Tokens as another server (another static key) would issue them.
struct TokenKeyFor(super::tokens::TokenKey);

impl TokenKeyFor {
    fn other() -> TokenKeyFor {
        TokenKeyFor(super::tokens::TokenKey::derive(&[8; 32]))
    }

    fn issue(&self, party: &str, member: &str, secret: &StaticSecret) -> String {
        let key = public_of(secret).to_string();
        self.0.issue(party, member, &key, T0).0
    }
}

#[test]
fn a_token_expires_24_hours_after_it_was_issued() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let expiry = alice.token_expires_at;
    h.keep_alive_until(&party, &alice, &alice.token, expiry - 1);
    let _: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&alice.token)), 200);
    h.advance(1);
    let message = error(h.heartbeat(&party, &alice.id, Some(&alice.token)), 401);
    assert!(message.contains("expired"), "{message}");
    error(h.roster(&party, Some(&alice.token), ""), 401);
    let path = format!("/v1/parties/{}/members/{}/token", party.id, alice.id);
    error(h.call("POST", &path, Some(&alice.token), "{}"), 401);
}

#[test]
fn a_heartbeat_hands_out_a_fresh_token_once_less_than_12_hours_are_left() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let half_life = alice.token_expires_at - REFRESH_WHEN_LEFT_S;
    h.keep_alive_until(&party, &alice, &alice.token, half_life);
    let reply: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&alice.token)), 200);
    assert_eq!(reply.token, None, "exactly 12 h left is not yet less");
    h.advance(1);
    let reply: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&alice.token)), 200);
    let fresh = reply.token.expect("a fresh token");
    assert_eq!(reply.token_expires_at, Some(h.now + TOKEN_LIFETIME_S));
    assert_ne!(fresh, alice.token);
    h.keep_alive_until(&party, &alice, &fresh, alice.token_expires_at);
    error(h.heartbeat(&party, &alice.id, Some(&alice.token)), 401);
    let reply: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&fresh)), 200);
    assert_eq!(reply.token, None, "the fresh token has more than 12 h left");
}

#[test]
fn another_members_token_is_forbidden() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let bob = h.join(&party, 2);
    let message = error(h.heartbeat(&party, &alice.id, Some(&bob.token)), 403);
    assert!(message.contains("another member"), "{message}");
    let path = format!("/v1/parties/{}/members/{}/token", party.id, alice.id);
    error(h.call("POST", &path, Some(&bob.token), "{}"), 403);
    // Bob's token with Alice's id written in is no longer Bob's, and not Alice's either.
    let relabelled = with_field(&bob.token, 2, &alice.id);
    error(h.heartbeat(&party, &alice.id, Some(&relabelled)), 401);
    assert_eq!(h.member_ids(&party, &alice.token).len(), 2);
}

#[test]
fn a_token_for_the_same_key_in_another_party_is_forbidden() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let other = h.create_party("other");
    let alice_here = h.join(&party, 1);
    let alice_there = h.join(&other, 1);
    assert_eq!(alice_here.id, alice_there.id, "same key, same member id");
    let message = error(
        h.heartbeat(&party, &alice_here.id, Some(&alice_there.token)),
        403,
    );
    assert!(message.contains("another party"), "{message}");
    let relabelled = with_field(&alice_there.token, 1, &party.id);
    error(h.heartbeat(&party, &alice_here.id, Some(&relabelled)), 401);
}

// --- POST …/members/{member}/token --------------------------------------------------------

#[test]
fn the_token_endpoint_issues_a_fresh_24_hour_token() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    h.advance(100);
    let path = format!("/v1/parties/{}/members/{}/token", party.id, alice.id);
    let reply: TokenReply = ok(h.call("POST", &path, Some(&alice.token), "{}"), 200);
    let fresh = reply.token.expect("a token");
    assert_eq!(reply.token_expires_at, Some(T0 + 100 + TOKEN_LIFETIME_S));
    // The old token stays valid until its own expiry; the fresh one outlives it.
    let _: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&alice.token)), 200);
    h.keep_alive_until(&party, &alice, &fresh, alice.token_expires_at);
    error(h.heartbeat(&party, &alice.id, Some(&alice.token)), 401);
    let _: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&fresh)), 200);
    error(h.call("POST", &path, None, "{}"), 401);
}

// --- DELETE …/members/{member} ------------------------------------------------------------

#[test]
fn a_member_leaves_with_its_own_token_and_that_token_stops_working() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let bob = h.join(&party, 2);
    let before = h.roster_of(&party, &alice.token).version;
    let path = format!("/v1/parties/{}/members/{}", party.id, bob.id);
    h.api.dirty = false;
    let reply: serde_json::Value = ok(h.call("DELETE", &path, Some(&bob.token), ""), 200);
    assert_eq!(reply, serde_json::json!({ "ok": true }));
    assert!(h.api.dirty, "a leave must reach the store");
    let roster = h.roster_of(&party, &alice.token);
    assert!(roster.version > before);
    assert_eq!(h.member_ids(&party, &alice.token), vec![alice.id.clone()]);
    let message = error(h.heartbeat(&party, &bob.id, Some(&bob.token)), 404);
    assert!(message.contains("join again"), "{message}");
    error(h.roster(&party, Some(&bob.token), ""), 404);
    error(h.call("DELETE", &path, Some(&bob.token), ""), 404);
}

#[test]
fn a_member_cannot_be_removed_with_someone_elses_token() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let other = h.create_party("other");
    let alice = h.join(&party, 1);
    let bob = h.join(&party, 2);
    let carol = h.join(&other, 3);
    let path = format!("/v1/parties/{}/members/{}", party.id, alice.id);
    error(h.call("DELETE", &path, Some(&bob.token), ""), 403);
    error(h.call("DELETE", &path, Some(&carol.token), ""), 403);
    error(h.call("DELETE", &path, None, ""), 401);
    assert_eq!(h.member_ids(&party, &alice.token).len(), 2);
}

// --- GET …/roster -------------------------------------------------------------------------

#[test]
fn members_read_the_roster_and_others_may_not() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let other = h.create_party("other");
    let alice = h.join(&party, 1);
    let bob = h.join(&party, 2);
    let carol = h.join(&other, 3);
    let roster = h.roster_of(&party, &bob.token);
    assert_eq!(roster.party_id, party.id);
    assert_eq!(roster.party_name, "friday");
    let mut ids = vec![alice.id.clone(), bob.id.clone()];
    ids.sort();
    assert_eq!(h.member_ids(&party, &alice.token), ids);
    error(h.roster(&party, None, ""), 401);
    error(h.roster(&party, Some("garbage"), ""), 401);
    let message = error(h.roster(&party, Some(&carol.token), ""), 403);
    assert!(message.contains("another party"), "{message}");
    h.api.dirty = false;
    h.roster_of(&party, &alice.token);
    assert!(!h.api.dirty, "reads change nothing");
}

#[test]
fn a_roster_read_since_the_current_version_parks_until_the_party_changes() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let current = h.roster_of(&party, &alice.token).version;
    let outcome = h.roster(&party, Some(&alice.token), &format!("?since={current}"));
    assert_eq!(
        outcome,
        Outcome::Park {
            party_id: party.id.clone(),
            since: current
        }
    );
    assert_eq!(h.api.roster_version(&party.id, h.now), Some(current));
    let bob = h.join(&party, 2);
    assert!(h.api.roster_version(&party.id, h.now) > Some(current));
    let roster: Roster = ok(h.api.roster_reply(&party.id, h.now), 200);
    assert!(roster.members.iter().any(|m| m.id == bob.id));
}

#[test]
fn a_roster_read_since_an_older_version_answers_at_once() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let seen = h.roster_of(&party, &alice.token).version;
    h.join(&party, 2);
    let roster: Roster = ok(
        h.roster(&party, Some(&alice.token), &format!("?since={seen}")),
        200,
    );
    assert!(roster.version > seen);
    assert_eq!(roster.members.len(), 2);
    let _: Roster = ok(h.roster(&party, Some(&alice.token), "?since=0"), 200);
}

#[test]
fn a_roster_read_with_a_malformed_since_is_a_bad_request() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    for query in [
        "?since=",
        "?since=abc",
        "?since=-1",
        "?since=1.5",
        "?since=99999999999999999999",
    ] {
        let message = error(h.roster(&party, Some(&alice.token), query), 400);
        assert!(message.contains("since"), "{query}: {message}");
    }
}

#[test]
fn a_roster_reply_for_a_party_that_is_gone_is_not_found() {
    let h = Harness::new();
    error(h.api.roster_reply("gone", h.now), 404);
    assert_eq!(h.api.roster_version("gone", h.now), None);
}

// --- Liveness -----------------------------------------------------------------------------

#[test]
fn a_member_without_heartbeats_for_5_minutes_leaves_the_roster() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let bob = h.join(&party, 2);
    h.advance(200);
    let _: TokenReply = ok(h.heartbeat(&party, &alice.id, Some(&alice.token)), 200);
    h.advance(STALE_AFTER_S - 200 - 1);
    assert_eq!(h.member_ids(&party, &alice.token).len(), 2);
    let version = h.api.roster_version(&party.id, h.now);
    h.advance(1);
    assert_eq!(h.member_ids(&party, &alice.token), vec![alice.id.clone()]);
    assert!(
        h.api.registry.expire(h.now),
        "the server loop's sweep removes it"
    );
    assert!(
        h.api.roster_version(&party.id, h.now) > version,
        "parked readers are woken"
    );
    let message = error(h.heartbeat(&party, &bob.id, Some(&bob.token)), 404);
    assert!(message.contains("join again"), "{message}");
}

#[test]
fn a_stale_member_that_was_not_swept_yet_cannot_heartbeat_back_in() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let alice = h.join(&party, 1);
    let bob = h.join(&party, 2);
    h.keep_alive_until(&party, &alice, &alice.token, T0 + STALE_AFTER_S);
    error(h.heartbeat(&party, &bob.id, Some(&bob.token)), 404);
    assert_eq!(h.member_ids(&party, &alice.token), vec![alice.id.clone()]);
}

// --- Routing, HTTP errors, rate limit ------------------------------------------------------

#[test]
fn unknown_routes_are_not_found_with_a_json_error() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    for (method, target) in [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/v2/info"),
        ("POST", "/v1/info"),
        ("GET", "/v1/parties"),
        ("DELETE", "/v1/parties"),
        ("GET", &format!("/v1/parties/{}", party.id)),
        ("GET", &format!("/v1/parties/{}/members", party.id)),
        ("POST", &format!("/v1/parties/{}/roster", party.id)),
        ("POST", &format!("/v1/parties/{}/members/a/b/c", party.id)),
    ] {
        let message = error(h.call(method, target, None, ""), 404);
        assert!(
            message.contains("no such endpoint"),
            "{method} {target}: {message}"
        );
    }
}

#[test]
fn http_errors_become_their_status_codes_with_json_bodies() {
    let cases: [(Vec<u8>, HttpError, u16); 7] = [
        (
            format!(
                "POST /v1/parties HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES + 1
            )
            .into_bytes(),
            HttpError::BodyTooLarge,
            413,
        ),
        (
            format!(
                "GET /v1/info HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(MAX_HEAD_BYTES)
            )
            .into_bytes(),
            HttpError::HeadTooLarge,
            431,
        ),
        (vec![b'a'; MAX_HEAD_BYTES + 1], HttpError::HeadTooLarge, 431),
        (b"GET /v1/info\r\n\r\n".to_vec(), HttpError::Malformed, 400),
        (
            b"PUT /v1/parties HTTP/1.1\r\n\r\n".to_vec(),
            HttpError::MethodNotAllowed,
            405,
        ),
        (
            b"GET /v1/info HTTP/3\r\n\r\n".to_vec(),
            HttpError::Version,
            505,
        ),
        (
            b"POST /v1/parties HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            HttpError::LengthRequired,
            411,
        ),
    ];
    for (raw, expected, status) in cases {
        let e = http::parse_request(&raw).expect_err("refused");
        assert_eq!(e, expected);
        // What the server loop answers: `e.status()` and `api::error_body`.
        let (got, message) = e.status();
        assert_eq!(got, status);
        error(Outcome::Reply(got, error_body(message)), status);
    }
}

#[test]
fn one_address_over_its_burst_gets_429_while_another_is_served() {
    let limits = Limits {
        max_parties: 4,
        max_peers: 8,
    };
    let mut h = Harness::with(limits, RateLimiter::new(2, 4));
    let (noisy, quiet): (IpAddr, IpAddr) =
        ("192.0.2.1".parse().unwrap(), "2001:db8::2".parse().unwrap());
    for _ in 0..4 {
        let _: Info = ok(h.call_from(noisy, "GET", "/v1/info", None, ""), 200);
    }
    let message = error(h.call_from(noisy, "GET", "/v1/info", None, ""), 429);
    assert!(message.contains("too many requests"), "{message}");
    error(
        h.call_from(noisy, "POST", "/v1/parties", None, r#"{"name":"x"}"#),
        429,
    );
    assert!(h.api.registry.parties.is_empty(), "refused before handling");
    let _: Info = ok(h.call_from(quiet, "GET", "/v1/info", None, ""), 200);
    h.at += Duration::from_millis(500);
    let _: Info = ok(h.call_from(noisy, "GET", "/v1/info", None, ""), 200);
    error(h.call_from(noisy, "GET", "/v1/info", None, ""), 429);
}

#[test]
fn relays_register_with_the_shared_secret_and_are_listed() {
    use crate::server::relays::{Registration, Relays};
    let secret = b"relay secret of at least 32 bytes!".to_vec();
    let mut h = Harness::new();
    let registration = |ts: u64, key: &[u8]| {
        let r = Registration {
            address: "192.0.2.50:3478".parse().unwrap(),
            region: "eu-west".into(),
            capacity: 50,
            clients: 2,
            timestamp: ts,
            mac: String::new(),
        };
        serde_json::to_string(&r.sign(key)).unwrap()
    };
    let disabled = error(
        h.call("POST", "/v1/relays", None, &registration(h.now, &secret)),
        403,
    );
    assert!(disabled.contains("disabled"), "{disabled}");
    h.api.relays = Relays::new(Some(secret.clone()));
    let forged = error(
        h.call(
            "POST",
            "/v1/relays",
            None,
            &registration(h.now, b"wrong secret, also 32 bytes long!!"),
        ),
        403,
    );
    assert!(forged.contains("secret"), "{forged}");
    let stale = error(
        h.call(
            "POST",
            "/v1/relays",
            None,
            &registration(h.now - 600, &secret),
        ),
        403,
    );
    assert!(stale.contains("clock"), "{stale}");
    error(h.call("POST", "/v1/relays", None, "{\"address\": 5}"), 400);
    let listed: serde_json::Value = ok(h.call("GET", "/v1/relays", None, ""), 200);
    assert_eq!(listed["relays"].as_array().unwrap().len(), 0);
    let _: serde_json::Value = ok(
        h.call("POST", "/v1/relays", None, &registration(h.now, &secret)),
        200,
    );
    let listed: serde_json::Value = ok(h.call("GET", "/v1/relays", None, ""), 200);
    assert_eq!(listed["relays"][0]["address"], "192.0.2.50:3478");
    assert_eq!(listed["relays"][0]["region"], "eu-west");
    assert_eq!(listed["relays"][0]["clients"], 2);
    h.advance(crate::server::relays::RELAY_TTL_S);
    let listed: serde_json::Value = ok(h.call("GET", "/v1/relays", None, ""), 200);
    assert_eq!(
        listed["relays"].as_array().unwrap().len(),
        0,
        "a silent relay is dropped"
    );
}

// --- POST /v1/parties/{id}/relay-ticket ---------------------------------------------------

const RELAY_SECRET: &[u8] = b"relay secret of at least 32 bytes!";

fn relay_ticket(h: &mut Harness, party: &Party, token: Option<&str>) -> Outcome {
    let path = format!("/v1/parties/{}/relay-ticket", party.id);
    h.call("POST", &path, token, "{}")
}

#[test]
fn a_member_gets_a_ten_minute_relay_ticket_that_a_relay_with_the_secret_accepts() {
    use crate::relay::ticket::{BindKey, RelaySecret, TICKET_LIFETIME_S};
    use crate::wire::relay::TicketView;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let mut h = Harness::new();
    h.api.relays = crate::server::relays::Relays::new(Some(RELAY_SECRET.to_vec()));
    let party = h.create_party("friday");
    let member = h.join(&party, 1);
    let reply: RelayTicketReply = ok(relay_ticket(&mut h, &party, Some(&member.token)), 200);
    assert_eq!(reply.expires_at, h.now + TICKET_LIFETIME_S);
    assert_eq!(reply.time, h.now);
    assert_eq!(reply.member_id, member.id);
    let bytes = URL_SAFE_NO_PAD.decode(&reply.ticket).unwrap();
    let ticket = TicketView::parse(&bytes).unwrap();
    assert_eq!(ticket.party, party.id);
    assert_eq!(ticket.member.to_string(), member.id);
    assert_eq!(ticket.public_key, public_of(&member.secret).0);
    assert_eq!(ticket.expires_at, reply.expires_at);
    let relay = RelaySecret::new(RELAY_SECRET);
    assert!(relay.verify(&ticket));
    let bind_key: [u8; 32] = STANDARD
        .decode(&reply.bind_key)
        .unwrap()
        .try_into()
        .unwrap();
    assert!(relay
        .bind_key(&bytes)
        .verify(b"bind", &BindKey::new(bind_key).tag(b"bind")));
    let other = RelaySecret::new(b"another relay secret of 32 bytes!!");
    assert!(
        !other.verify(&ticket),
        "only relays with the secret accept it"
    );
}

#[test]
fn a_relay_ticket_needs_a_valid_token_of_the_party() {
    let mut h = Harness::new();
    h.api.relays = crate::server::relays::Relays::new(Some(RELAY_SECRET.to_vec()));
    let party = h.create_party("friday");
    let other_party = h.create_party("saturday");
    let member = h.join(&party, 1);
    let outsider = h.join(&other_party, 2);
    error(relay_ticket(&mut h, &party, None), 401);
    error(relay_ticket(&mut h, &party, Some("garbage")), 401);
    let forged = with_field(&member.token, 4, "AAAA");
    error(relay_ticket(&mut h, &party, Some(&forged)), 401);
    let wrong = error(relay_ticket(&mut h, &party, Some(&outsider.token)), 403);
    assert!(wrong.contains("another party"), "{wrong}");
    let path = format!("/v1/parties/{}/members/{}", party.id, member.id);
    let _: serde_json::Value = ok(h.call("DELETE", &path, Some(&member.token), ""), 200);
    error(relay_ticket(&mut h, &party, Some(&member.token)), 404);
}

#[test]
fn a_server_without_a_relay_secret_issues_no_relay_tickets() {
    let mut h = Harness::new();
    let party = h.create_party("friday");
    let member = h.join(&party, 1);
    let message = error(relay_ticket(&mut h, &party, Some(&member.token)), 403);
    assert!(message.contains("--relay-secret-file"), "{message}");
}
