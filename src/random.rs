//! Randomness from the kernel (`/dev/urandom`), for keys, party ids and secrets.

use std::fs::File;
use std::io::{self, Read};

/// Fills `buf` with random bytes from the kernel.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    File::open("/dev/urandom")?.read_exact(buf)
}

/// A random lowercase identifier of `len` characters from an unambiguous alphabet.
pub fn id(len: usize) -> io::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = vec![0u8; len];
    fill(&mut bytes)?;
    // 256 % 31 leaves a tiny bias; irrelevant for identifiers.
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}
