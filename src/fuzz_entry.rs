//! Bodies of the fuzz targets in `fuzz/fuzz_targets/`, one function per parser. They live in
//! the library so that `cargo fuzz` and the seed-corpus replay test (`tests/fuzz_corpus.rs`)
//! run the very same code. Every function accepts any bytes, returns whether the parser
//! accepted them, and checks what an accepted input must satisfy; a panic is a bug.
//!
//! Not an API: the caller (libFuzzer or the replay test) provides the inputs and treats a
//! panic as a finding.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::code::JoinCode;
use crate::control::http_api::{ChallengeRequest, CreatePartyRequest, HeartbeatBody, JoinBody};
use crate::control::registry::Registry;
use crate::stun_server::responder::{Responder, MAX_REPLY_LEN};
use crate::wire::http::{self, MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_RESPONSE_BODY_BYTES};
use crate::wire::ip::Ipv4View;
use crate::wire::relay::{self, Frame};
use crate::wire::stun::{self, Class, Encoder, Message};
use crate::wire::wg::{self, Datagram};

mod peer_datagram;
pub use peer_datagram::{peer_datagram, PEER_DATAGRAM_KEYS};

/// A target body: takes any bytes, returns whether the parser accepted them.
pub type Body = fn(&[u8]) -> bool;

/// Fuzz target names and bodies; the corpus of target `name` lives in `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Body)] = &[
    ("wire_ip", wire_ip),
    ("wire_wg", wire_wg),
    ("join_code", join_code),
    ("registry_json", registry_json),
    ("http_request", http_request),
    ("http_response", http_response),
    ("api_bodies", api_bodies),
    ("relay_frame", relay_frame),
    ("stun", stun),
    ("peer_datagram", peer_datagram),
];

/// `Ipv4View::parse`; on success the accessors must read the fixed header (RFC 791 §3.1).
pub fn wire_ip(data: &[u8]) -> bool {
    let Ok(view) = Ipv4View::parse(data) else {
        return false;
    };
    assert!(data.len() >= 20, "accepted a {}-byte packet", data.len());
    assert_eq!(data[0] >> 4, 4, "accepted a non-IPv4 version nibble");
    assert_eq!(view.src().octets(), data[12..16]);
    assert_eq!(view.dst().octets(), data[16..20]);
    assert_eq!(view.protocol(), data[9]);
    true
}

/// `wg::classify`; a known message must have its type's length and zero reserved bytes
/// (whitepaper §5.4).
pub fn wire_wg(data: &[u8]) -> bool {
    let le = |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    match wg::classify(data) {
        Datagram::Unknown => return false,
        Datagram::HandshakeInit => {
            assert_eq!((data[0], data.len()), (1, 148));
            assert_eq!(data[1..4], [0, 0, 0]);
        }
        Datagram::ToIndex(index) => {
            assert_eq!(data[1..4], [0, 0, 0]);
            match data[0] {
                2 => assert_eq!((data.len(), index), (92, le(8))),
                3 => assert_eq!((data.len(), index), (64, le(4))),
                4 => assert!(data.len() >= 32 && index == le(4)),
                t => panic!("type {t} routed to index {index}"),
            }
        }
    }
    true
}

/// `JoinCode::parse` on UTF-8 input; an accepted code prints back to the same code.
pub fn join_code(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(code) = JoinCode::parse(text) else {
        return false;
    };
    let printed = code.to_string();
    assert_eq!(
        JoinCode::parse(&printed),
        Ok(code),
        "printed as {printed:?}"
    );
    true
}

/// A registry file as `FileControl::load` reads it: JSON, then `Registry::check`. A registry
/// that passes must survive being written and read back unchanged.
pub fn registry_json(data: &[u8]) -> bool {
    let Ok(registry) = serde_json::from_slice::<Registry>(data) else {
        return false;
    };
    if registry.check().is_err() {
        return false;
    }
    let written = match serde_json::to_vec_pretty(&registry) {
        Ok(bytes) => bytes,
        Err(e) => panic!("an accepted registry does not serialize: {e}"),
    };
    match serde_json::from_slice::<Registry>(&written) {
        Ok(again) => {
            assert_eq!(again, registry, "registry changed through a write and read");
            assert_eq!(again.check(), Ok(()));
        }
        Err(e) => panic!("a written registry does not read back: {e}"),
    }
    true
}

/// `wire::http::parse_request`. An accepted request used at most the input, ends its head
/// with CRLFCRLF right before a body of exactly the bytes it carries (RFC 9112 §2.1, §6.2),
/// respects the size limits, and is not recognised before all its bytes are there.
pub fn http_request(data: &[u8]) -> bool {
    let (request, used) = match http::parse_request(data) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return false,
        Err(e) => {
            let (status, message) = e.status();
            assert!((400..600).contains(&status) && !message.is_empty(), "{e:?}");
            return false;
        }
    };
    assert!(used <= data.len(), "used {used} of {} bytes", data.len());
    let body_len = request.body.len();
    assert!(
        body_len <= MAX_BODY_BYTES,
        "accepted a {body_len}-byte body"
    );
    let head_len = used - body_len;
    assert!(
        head_len <= MAX_HEAD_BYTES,
        "accepted a {head_len}-byte head"
    );
    assert!(
        data[..head_len].ends_with(b"\r\n\r\n"),
        "head does not end in CRLFCRLF"
    );
    assert_eq!(
        request.body,
        data[head_len..used],
        "body is not the bytes after the head"
    );
    assert!(request.path.starts_with('/'), "path {:?}", request.path);
    assert!(
        !request.path.contains('?'),
        "query left in path {:?}",
        request.path
    );
    let target = if request.query.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.query)
    };
    assert!(!target.bytes().any(|b| b.is_ascii_control()), "{target:?}");
    assert_eq!(
        http::parse_request(&data[..used]),
        Ok(Some((request.clone(), used))),
        "the request depends on bytes after it"
    );
    for cut in [used - 1, head_len - 1, head_len] {
        if cut < used {
            assert_eq!(
                http::parse_request(&data[..cut]),
                Ok(None),
                "recognised after {cut} of its {used} bytes"
            );
        }
    }
    true
}

/// `wire::http::parse_response`, as the `http://` client calls it: with the connection still
/// open and after the server closed it. An accepted response used at most the input, its
/// body is bytes of the input right after a head ending in CRLFCRLF, within the limit; it is
/// the same with or without the bytes after it, and a response complete before the close is
/// the same after it. A response that needs more bytes while open is decided by the close.
pub fn http_response(data: &[u8]) -> bool {
    let open = http::parse_response(data, false);
    let closed = http::parse_response(data, true);
    if open != Ok(None) {
        assert_eq!(
            closed, open,
            "the close changed a response that waited for nothing"
        );
    }
    let Ok(Some(r)) = closed else {
        assert!(
            !matches!(closed, Ok(None)),
            "still waiting for bytes after the close"
        );
        return false;
    };
    assert!(
        r.len <= data.len(),
        "used {} of {} bytes",
        r.len,
        data.len()
    );
    assert!((200..600).contains(&r.status), "final status {}", r.status);
    assert!(
        r.body.len() <= MAX_RESPONSE_BODY_BYTES,
        "{}-byte body",
        r.body.len()
    );
    let head_end = r.len - r.body.len();
    assert!(
        data[..head_end].ends_with(b"\r\n\r\n"),
        "head does not end in CRLFCRLF"
    );
    assert_eq!(
        r.body,
        &data[head_end..r.len],
        "body is not the bytes after the head"
    );
    if r.len < data.len() || open.is_ok_and(|o| o.is_some()) {
        // Delimited by its length, not by the close: the bytes after it do not matter.
        assert_eq!(
            http::parse_response(&data[..r.len], false),
            Ok(Some(r)),
            "the response depends on bytes after it"
        );
    }
    true
}

/// Deserializes `data` as `T`; an accepted body must survive being written and read back.
fn body_round_trips<T>(data: &[u8]) -> bool
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return false;
    };
    let written = match serde_json::to_vec(&value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("an accepted body does not serialize: {e}"),
    };
    match serde_json::from_slice::<T>(&written) {
        Ok(again) => assert_eq!(again, value, "body changed through a write and read"),
        Err(e) => panic!("a written body does not read back: {e}"),
    }
    true
}

/// The control API's request bodies (`control::http_api`) as the server reads them: each of
/// the create-party, challenge, join and heartbeat bodies. Returns whether any accepted.
pub fn api_bodies(data: &[u8]) -> bool {
    let results = [
        body_round_trips::<CreatePartyRequest>(data),
        body_round_trips::<ChallengeRequest>(data),
        body_round_trips::<JoinBody>(data),
        body_round_trips::<HeartbeatBody>(data),
    ];
    results.contains(&true)
}

/// `wire::relay::Frame::parse`. An accepted frame is written back byte for byte by the
/// emitters; and whatever the bytes, the relay core and a member's client take them without
/// panicking, and the relay never answers with more bytes than came in.
pub fn relay_frame(data: &[u8]) -> bool {
    use crate::relay::client::RelayClient;
    use crate::relay::core::{Config, Now, Relay};
    let at = std::time::Instant::now();
    let now = Now {
        at,
        unix_ms: 1_800_000_000_000,
    };
    let src = std::net::SocketAddr::from(([192, 0, 2, 1], 4000));
    let mut relay = Relay::new(Config::default(), &[0x5A; 32], now);
    let mut buf = data.to_vec();
    if let Some(out) = relay.handle_datagram(src, &mut buf, now) {
        assert!(
            out.payload.len() <= data.len(),
            "amplified {} bytes",
            data.len()
        );
    }
    let mut client = RelayClient::new(src, at);
    let _ = client.handle_datagram(src, data, at);

    let Ok(frame) = Frame::parse(data) else {
        return false;
    };
    let mut out = vec![0u8; data.len() + 64];
    let len = match frame {
        Frame::Bind {
            timestamp_ms,
            ticket,
            proof,
            signed,
        } => {
            assert_eq!(ticket.bytes.len() + relay::BIND_FIXED_LEN, data.len());
            assert_eq!(signed.len() + relay::TAG_LEN, data.len());
            assert!(!ticket.party.is_empty() && ticket.party.len() <= relay::MAX_PARTY_LEN);
            let signed_len = relay::emit_bind_signed(&mut out, timestamp_ms, ticket.bytes)
                .unwrap_or_else(|e| panic!("cannot re-emit a parsed bind: {e:?}"));
            let tag: [u8; relay::TAG_LEN] =
                proof.try_into().unwrap_or_else(|_| panic!("proof size"));
            relay::finish_tagged(&mut out, signed_len, &tag).unwrap_or(0)
        }
        Frame::Bound {
            timestamp_ms,
            idle_timeout_s,
            tag,
            ..
        } => {
            let signed_len =
                relay::emit_bound_signed(&mut out, timestamp_ms, idle_timeout_s).unwrap_or(0);
            let tag: [u8; relay::TAG_LEN] = tag.try_into().unwrap_or_else(|_| panic!("tag size"));
            relay::finish_tagged(&mut out, signed_len, &tag).unwrap_or(0)
        }
        Frame::Refused {
            timestamp_ms,
            reason,
            tag,
            ..
        } => {
            let signed_len =
                relay::emit_refused_signed(&mut out, timestamp_ms, reason).unwrap_or(0);
            let tag: [u8; relay::TAG_LEN] = tag.try_into().unwrap_or_else(|_| panic!("tag size"));
            relay::finish_tagged(&mut out, signed_len, &tag).unwrap_or(0)
        }
        Frame::DataTo { to, payload } => {
            relay::emit_data(&mut out, relay::DATA_TO, to, payload).unwrap_or(0)
        }
        Frame::DataFrom { from, payload } => {
            relay::emit_data(&mut out, relay::DATA_FROM, from, payload).unwrap_or(0)
        }
        Frame::Keepalive { echo } => {
            relay::emit_keepalive(&mut out, relay::KEEPALIVE, echo).unwrap_or(0)
        }
        Frame::KeepaliveAck { echo } => {
            relay::emit_keepalive(&mut out, relay::KEEPALIVE_ACK, echo).unwrap_or(0)
        }
    };
    assert_eq!(
        &out[..len],
        data,
        "a parsed frame does not write back the same"
    );
    true
}

/// `wire::stun::Message::parse`, and the STUN responder on the same bytes. An accepted
/// message passes the demux rule, has the length its header says, and its attributes survive
/// being encoded again; the responder answers exactly the requests, once, from one of its
/// sockets, to the sender, for the same transaction, within `MAX_REPLY_LEN`.
pub fn stun(data: &[u8]) -> bool {
    let sockets = [
        "192.0.2.1:3478",
        "192.0.2.1:3479",
        "192.0.2.2:3478",
        "192.0.2.2:3479",
    ]
    .map(|s| s.parse().expect("valid address"));
    let from = "203.0.113.5:40001".parse().expect("valid address");
    let reply = Responder::with_rate(sockets.to_vec(), 0, 0).handle(
        0,
        from,
        data,
        std::time::Instant::now(),
    );
    let Ok(m) = Message::parse(data) else {
        assert_eq!(reply, None, "answered input that does not parse");
        return false;
    };
    assert!(stun::is_stun(data));
    assert_eq!(
        data.len(),
        stun::HEADER_LEN + usize::from(u16::from_be_bytes([data[2], data[3]]))
    );
    assert_eq!(m.transaction, data[8..20]);
    let mut e = Encoder::new(m.class, m.method, m.transaction);
    if let Some(a) = m.xor_mapped_address {
        e.xor_mapped_address(a);
    }
    if let Some(a) = m.mapped_address {
        e.mapped_address(a);
    }
    if let Some(a) = m.other_address {
        e.other_address(a);
    }
    if let Some(a) = m.response_origin {
        e.response_origin(a);
    }
    if let Some(c) = m.change_request {
        e.change_request(c);
    }
    if let Some(p) = m.response_port {
        e.response_port(p);
    }
    if let Some(c) = m.error_code {
        e.error_code(c.code, c.reason);
    }
    if let Some(s) = m.software {
        e.software(s);
    }
    let written = e.finish_with_fingerprint();
    match Message::parse(&written) {
        Ok(again) => assert_eq!(
            again,
            Message {
                fingerprint: true,
                unknown: again.unknown,
                ..m
            },
            "attributes changed through an encode and parse"
        ),
        Err(e) => panic!("an encoded message does not parse: {e:?}"),
    }
    match reply {
        None => assert_ne!(m.class, Class::Request, "a request went unanswered"),
        Some(r) => {
            assert_eq!(m.class, Class::Request, "answered a {:?}", m.class);
            assert!(r.socket < sockets.len() && r.dst.ip() == from.ip());
            assert!(
                r.payload.len() <= MAX_REPLY_LEN,
                "{}-byte reply",
                r.payload.len()
            );
            match Message::parse(&r.payload) {
                Ok(answer) => {
                    assert_eq!(answer.transaction, m.transaction);
                    assert!(matches!(answer.class, Class::Success | Class::Error));
                }
                Err(e) => panic!("our reply does not parse: {e:?}"),
            }
        }
    }
    true
}
