//! Bodies of the fuzz targets in `fuzz/fuzz_targets/`, one function per parser. They live in
//! the library so that `cargo fuzz` and the seed-corpus replay test (`tests/fuzz_corpus.rs`)
//! run the very same code. Every function accepts any bytes, returns whether the parser
//! accepted them, and checks what an accepted input must satisfy; a panic is a bug.
//!
//! Not an API: the caller (libFuzzer or the replay test) provides the inputs and treats a
//! panic as a finding.

use crate::control::code::JoinCode;
use crate::control::registry::Registry;
use crate::wire::ip::Ipv4View;
use crate::wire::wg::{self, Datagram};

/// A target body: takes any bytes, returns whether the parser accepted them.
pub type Body = fn(&[u8]) -> bool;

/// Fuzz target names and bodies; the corpus of target `name` lives in `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Body)] = &[
    ("wire_ip", wire_ip),
    ("wire_wg", wire_wg),
    ("join_code", join_code),
    ("registry_json", registry_json),
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
