//! Codecs only: views over packet bytes. No I/O, no clock; parsers borrow and never allocate
//! (encoders return the bytes they built).

pub mod http;
pub mod ip;
pub mod probe;
pub mod relay;
pub mod stun;
pub mod wg;
