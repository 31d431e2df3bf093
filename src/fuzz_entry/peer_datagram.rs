//! Fuzz body `peer_datagram`: probes (WireGuard messages) against a member's peer table.

use crate::wire::relay;

/// The static keys of the two members `peer_datagram` sets up.
pub const PEER_DATAGRAM_KEYS: ([u8; 32], [u8; 32]) = ([0x11; 32], [0x22; 32]);

/// A member's peer table (key `PEER_DATAGRAM_KEYS.1`) that knows one peer (key `.0`) takes
/// `data` as a probe from an attacker's address, then as if a relay forwarded it from that
/// peer. Forged or replayed probes must never move the peer's endpoint, reach the tun or
/// be answered with more than one datagram of at most the input's size. Returns whether the
/// probe authenticated (only a genuine handshake initiation from the peer can, in a table
/// without a session).
pub fn peer_datagram(data: &[u8]) -> bool {
    use crate::dataplane::peer::Source;
    use crate::dataplane::peers::{Io, PeerConfig, PeerTable};
    use crate::identity::Key;
    use std::net::{Ipv4Addr, SocketAddr};

    #[derive(Default)]
    struct Count {
        sent: Vec<usize>,
        tun: usize,
    }
    impl Io for Count {
        fn send_to(&mut self, payload: &[u8], _dst: SocketAddr) {
            self.sent.push(payload.len());
        }
        fn send_relayed(&mut self, payload: &[u8], _relay: SocketAddr, _to: relay::MemberId) {
            self.sent.push(payload.len());
        }
        fn write_tun(&mut self, _packet: &[u8]) {
            self.tun += 1;
        }
    }
    let (peer_secret, own_secret) = PEER_DATAGRAM_KEYS;
    let peer_key = Key(
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(peer_secret)).to_bytes(),
    );
    let now = std::time::Instant::now();
    let known: SocketAddr = ([192, 0, 2, 1], 51820).into();
    let attacker: SocketAddr = ([198, 51, 100, 66], 4444).into();
    let relay_addr: SocketAddr = ([203, 0, 113, 9], 3479).into();
    let mut authenticated = false;
    for source in [
        Source::Direct(attacker),
        Source::Relayed {
            relay: relay_addr,
            from: peer_key.member_id(),
        },
    ] {
        let mut table = PeerTable::new(
            x25519_dalek::StaticSecret::from(own_secret),
            Ipv4Addr::new(10, 66, 0, 2),
            "10.66.0.0/16".parse().expect("valid subnet"),
            200,
        );
        let config = PeerConfig {
            id: peer_key.short_id(),
            name: "peer".into(),
            public_key: peer_key,
            virtual_ip: Ipv4Addr::new(10, 66, 0, 1),
            endpoints: vec![known],
            public_endpoint: None,
            relay: Some(relay_addr),
            prediction: crate::nat::Prediction::Direct,
        };
        let mut io = Count::default();
        table.sync(vec![config], now, &mut io);
        io.sent.clear();
        table.handle_datagram(data, source, now, &mut io);
        let stats = table.stats(now);
        let endpoint = stats[0].endpoint;
        assert_eq!(
            io.tun, 0,
            "a table without a session wrote a probe to the tun"
        );
        assert!(
            io.sent.len() <= 1,
            "answered one probe with {} datagrams",
            io.sent.len()
        );
        assert!(
            io.sent.iter().all(|n| *n <= data.len()),
            "answered {} bytes with more",
            data.len()
        );
        match source {
            Source::Direct(_) if endpoint.is_some() => {
                assert_eq!(endpoint, Some(attacker));
                assert_eq!(
                    (data.first(), data.len()),
                    (Some(&1), 148),
                    "only an initiation authenticates"
                );
                authenticated = true;
            }
            Source::Relayed { .. } => {
                assert_eq!(endpoint, None, "a relayed probe set a direct endpoint")
            }
            Source::Direct(_) => {}
        }
    }
    authenticated
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake initiation from the peer of `peer_datagram`, as it would send it.
    fn genuine_initiation() -> Vec<u8> {
        let (peer_secret, own_secret) = PEER_DATAGRAM_KEYS;
        let own_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(own_secret));
        let mut tunn = boringtun::noise::Tunn::new(
            x25519_dalek::StaticSecret::from(peer_secret),
            own_public,
            None,
            None,
            1,
            None,
        );
        let mut buf = vec![0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            boringtun::noise::TunnResult::WriteToNetwork(out) => out.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    #[test]
    fn a_genuine_initiation_authenticates_and_any_altered_byte_does_not() {
        let init = genuine_initiation();
        assert!(peer_datagram(&init));
        // Not bytes 132..148: MAC2 only counts under load (whitepaper §5.4.7).
        for at in [4, 40, 100, 120, 131] {
            let mut forged = init.clone();
            forged[at] ^= 0x01;
            assert!(
                !peer_datagram(&forged),
                "byte {at} altered still authenticates"
            );
        }
    }
}
