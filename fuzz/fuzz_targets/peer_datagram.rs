//! Fuzz target `peer_datagram`: the body is `lanparty_lite::fuzz_entry::peer_datagram`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/peer_datagram/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::peer_datagram(data);
});
