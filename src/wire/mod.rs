//! Codecs only: views over packet bytes. No I/O, no clock, no allocation.

pub mod http;
pub mod ip;
pub mod relay;
pub mod wg;
