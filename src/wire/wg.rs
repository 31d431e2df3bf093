//! Classifies datagrams arriving on the shared UDP socket and reads the WireGuard receiver
//! index used to find the peer (whitepaper §5.4: type byte, three reserved zero bytes).

/// What a datagram on the shared socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// Handshake initiation: the peer is found by decrypting its static key.
    HandshakeInit,
    /// Handshake response, cookie reply or transport data, for the local index given.
    ToIndex(u32),
    /// Not a WireGuard message.
    Unknown,
}

/// Sizes of the fixed-length WireGuard messages (whitepaper §5.4.2-5.4.7).
const INIT_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_LEN: usize = 64;
const DATA_MIN_LEN: usize = 32;

/// Classifies `bytes` by type byte and length.
pub fn classify(bytes: &[u8]) -> Datagram {
    if bytes.len() < 8 || bytes[1..4] != [0, 0, 0] {
        return Datagram::Unknown;
    }
    let index = || u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    match (bytes[0], bytes.len()) {
        (1, INIT_LEN) => Datagram::HandshakeInit,
        (2, RESPONSE_LEN) => Datagram::ToIndex(u32::from_le_bytes([
            bytes[8], bytes[9], bytes[10], bytes[11],
        ])),
        (3, COOKIE_LEN) => Datagram::ToIndex(index()),
        (4, n) if n >= DATA_MIN_LEN => Datagram::ToIndex(index()),
        _ => Datagram::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_is_routed_by_receiver_field() {
        let mut r = [0u8; RESPONSE_LEN];
        r[0] = 2;
        r[4..8].copy_from_slice(&7u32.to_le_bytes()); // sender
        r[8..12].copy_from_slice(&0x0500u32.to_le_bytes()); // receiver = ours
        assert_eq!(classify(&r), Datagram::ToIndex(0x0500));
    }

    #[test]
    fn data_and_cookie_are_routed_by_first_index() {
        let mut d = [0u8; 48];
        d[0] = 4;
        d[4..8].copy_from_slice(&0x0300u32.to_le_bytes());
        assert_eq!(classify(&d), Datagram::ToIndex(0x0300));
        let mut c = [0u8; COOKIE_LEN];
        c[0] = 3;
        c[4..8].copy_from_slice(&0x0200u32.to_le_bytes());
        assert_eq!(classify(&c), Datagram::ToIndex(0x0200));
    }

    #[test]
    fn wrong_lengths_and_reserved_bytes_are_unknown() {
        let mut i = [0u8; INIT_LEN];
        i[0] = 1;
        assert_eq!(classify(&i), Datagram::HandshakeInit);
        assert_eq!(classify(&i[..100]), Datagram::Unknown);
        i[2] = 1;
        assert_eq!(classify(&i), Datagram::Unknown);
        assert_eq!(classify(&[4, 0, 0, 0, 1]), Datagram::Unknown);
        assert_eq!(classify(&[9; 64]), Datagram::Unknown);
    }
}
