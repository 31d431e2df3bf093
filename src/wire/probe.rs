//! Path probes: tiny IPv4 packets that travel inside a peer's WireGuard tunnel, so they are
//! as authenticated and replay-protected as the game traffic they measure. A request goes
//! out on one path (direct or through one relay); the peer answers on the path it came by.
//!
//! ```text
//! IPv4 header (20 bytes, protocol 253, src = sender's virtual IP, dst = receiver's)
//! 0      1      2      3      4      5      6      7
//! +------+------+------+------+------+------+------+------+
//! | 'L'  | 'P'  | kind |  0   |          sequence         |
//! +------+------+------+------+------+------+------+------+
//! kind: 1 = request, 2 = reply (echoes the request's sequence number)
//! ```
//!
//! Protocol 253 is reserved for experiments (RFC 3692); the receiver takes these packets
//! out of the tunnel before the tun device, so no program on either host ever sees them.

use std::net::Ipv4Addr;

use super::ip::Ipv4View;

/// The IP protocol number of a probe.
pub const PROTOCOL: u8 = 253;
/// Bytes of a probe packet, header included.
pub const LEN: usize = 20 + 8;
const MAGIC: [u8; 2] = *b"LP";

/// What a probe asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// "Answer me on the path this came by."
    Request,
    /// The answer to the request with the same sequence number.
    Reply,
}

/// A parsed probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Request or reply.
    pub kind: Kind,
    /// Chosen by the requester; echoed by the reply.
    pub seq: u32,
}

/// Builds a probe from `src` to `dst`.
pub fn encode(probe: Probe, src: Ipv4Addr, dst: Ipv4Addr) -> [u8; LEN] {
    let mut p = [0u8; LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = PROTOCOL;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let checksum = header_checksum(&p[..20]);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p[20..22].copy_from_slice(&MAGIC);
    p[22] = match probe.kind {
        Kind::Request => 1,
        Kind::Reply => 2,
    };
    p[24..28].copy_from_slice(&probe.seq.to_be_bytes());
    p
}

/// The probe in `packet`, if it is one: protocol 253, our magic and a known kind. Anything
/// else (including a protocol 253 packet that is not ours) is `None`.
pub fn parse(packet: &[u8]) -> Option<Probe> {
    let ip = Ipv4View::parse(packet).ok()?;
    if ip.protocol() != PROTOCOL {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let body = packet.get(ihl..ihl + 8)?;
    if body[..2] != MAGIC || body[3] != 0 {
        return None;
    }
    let kind = match body[2] {
        1 => Kind::Request,
        2 => Kind::Reply,
        _ => return None,
    };
    let seq = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    Some(Probe { kind, seq })
}

/// Whether `packet` is a protocol 253 packet (ours or not): such packets never reach the tun.
pub fn is_probe_protocol(packet: &[u8]) -> bool {
    Ipv4View::parse(packet).is_ok_and(|ip| ip.protocol() == PROTOCOL)
}

/// The RFC 791 header checksum (ones' complement of the ones' complement sum).
fn header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);

    #[test]
    fn round_trips_requests_and_replies() {
        for kind in [Kind::Request, Kind::Reply] {
            let probe = Probe {
                kind,
                seq: 0xdead_beef,
            };
            let bytes = encode(probe, A, B);
            assert_eq!(parse(&bytes), Some(probe));
            let ip = Ipv4View::parse(&bytes).unwrap();
            assert_eq!((ip.src(), ip.dst(), ip.protocol()), (A, B, PROTOCOL));
        }
    }

    #[test]
    fn header_checksum_verifies() {
        let bytes = encode(
            Probe {
                kind: Kind::Request,
                seq: 7,
            },
            A,
            B,
        );
        // Summing a header with its checksum gives 0xffff.
        assert_eq!(header_checksum(&bytes[..20]), 0);
        assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]) as usize, LEN);
    }

    #[test]
    fn rejects_what_is_not_a_probe() {
        let good = encode(
            Probe {
                kind: Kind::Reply,
                seq: 1,
            },
            A,
            B,
        );
        assert_eq!(parse(&good[..LEN - 1]), None, "truncated");
        let mut udp = good;
        udp[9] = 17;
        assert_eq!(parse(&udp), None, "another protocol");
        assert!(!is_probe_protocol(&udp));
        let mut foreign = good;
        foreign[20] = b'X';
        assert_eq!(parse(&foreign), None, "someone else's protocol 253");
        assert!(is_probe_protocol(&foreign));
        let mut kind = good;
        kind[22] = 9;
        assert_eq!(parse(&kind), None, "unknown kind");
        let mut reserved = good;
        reserved[23] = 1;
        assert_eq!(parse(&reserved), None, "reserved byte set");
        assert_eq!(parse(&[]), None);
    }
}
