//! The STUN Binding responder (RFC 5389 §7.3, RFC 5780 §6) as a pure value: a request, where
//! it came from and which local socket it arrived on go in; at most one reply and the socket
//! to send it from come out. Sockets are numbered by their place in the address list given to
//! [`Responder::new`]; the caller owns them and the clock.

use std::net::SocketAddr;
use std::time::Instant;

use crate::server::rate::RateLimiter;
use crate::wire::stun::{self, ChangeRequest, Class, Encoder, Message, BINDING};

/// Replies per second per source IP, and the burst allowed above that. A NAT classification
/// needs 4 transactions; this leaves room for a whole party behind one address while capping
/// what a spoofed source can have reflected at it.
pub const RATE_PER_S: u32 = 50;
/// Burst of [`RATE_PER_S`].
pub const RATE_BURST: u32 = 100;
/// Largest reply we send: a success with four IPv6 address attributes and FINGERPRINT. Replies
/// carry no SOFTWARE and no PADDING, so a 20-byte request is answered with at most this.
pub const MAX_REPLY_LEN: usize = stun::HEADER_LEN + 4 * 24 + 8;

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Index of the local socket to send from.
    pub socket: usize,
    /// Where to send it: the request's source, or its RESPONSE-PORT on the source IP.
    pub dst: SocketAddr,
    /// The STUN message.
    pub payload: Vec<u8>,
}

/// Answers Binding requests arriving on a set of local sockets.
pub struct Responder {
    sockets: Vec<SocketAddr>,
    rate: RateLimiter,
}

impl Responder {
    /// A responder for sockets bound to `sockets` (specific IPs, so that the source of each
    /// reply is known), with the default per-source rate limit.
    pub fn new(sockets: Vec<SocketAddr>) -> Responder {
        Responder::with_rate(sockets, RATE_PER_S, RATE_BURST)
    }

    /// As [`Responder::new`] with `per_second` replies per source IP (0: unlimited).
    pub fn with_rate(sockets: Vec<SocketAddr>, per_second: u32, burst: u32) -> Responder {
        Responder {
            sockets,
            rate: RateLimiter::new(per_second, burst),
        }
    }

    /// The local addresses, by socket index.
    pub fn sockets(&self) -> &[SocketAddr] {
        &self.sockets
    }

    /// The socket a reply to a request that arrived on `on` asking for `change` leaves from:
    /// no change, the same socket; change-port, the same IP and another port; change-IP,
    /// another IP (the same port if there is one); both, another IP and another port. Only
    /// sockets of the arrival's address family qualify. `None`: no socket can do it.
    pub fn source_for(&self, on: usize, change: ChangeRequest) -> Option<usize> {
        let arrival = *self.sockets.get(on)?;
        let candidates = || {
            self.sockets
                .iter()
                .enumerate()
                .filter(move |(_, s)| s.is_ipv4() == arrival.is_ipv4())
        };
        let found = |pred: &dyn Fn(&SocketAddr) -> bool| {
            candidates().find(|(_, s)| pred(s)).map(|(i, _)| i)
        };
        let (ip, port) = (arrival.ip(), arrival.port());
        match (change.ip, change.port) {
            (false, false) => Some(on),
            (false, true) => found(&|s| s.ip() == ip && s.port() != port),
            (true, false) => {
                found(&|s| s.ip() != ip && s.port() == port).or_else(|| found(&|s| s.ip() != ip))
            }
            (true, true) => found(&|s| s.ip() != ip && s.port() != port),
        }
    }

    /// OTHER-ADDRESS for requests arriving on `on`: where a change-IP-and-port reply would
    /// come from (RFC 5780 §6.1), if this responder has such a socket.
    pub fn other_address(&self, on: usize) -> Option<SocketAddr> {
        let both = ChangeRequest {
            ip: true,
            port: true,
        };
        self.source_for(on, both).map(|i| self.sockets[i])
    }

    /// Answers one datagram that arrived on socket `on` from `from` at `now`. Malformed
    /// input, indications, responses and sources over their rate get no answer.
    pub fn handle(
        &mut self,
        on: usize,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Option<Reply> {
        let arrival = *self.sockets.get(on)?;
        let request = Message::parse(datagram).ok()?;
        if request.class != Class::Request || !self.rate.allow(from.ip(), now) {
            return None;
        }
        let error = |code: u16, reason: &str, unknown: &[u16]| {
            let mut e = Encoder::new(Class::Error, request.method, request.transaction);
            e.error_code(code, reason);
            if !unknown.is_empty() {
                e.unknown_attributes(unknown);
            }
            Some(Reply {
                socket: on,
                dst: from,
                payload: e.finish_with_fingerprint(),
            })
        };
        if request.method != BINDING {
            return error(stun::BAD_REQUEST, "only Binding is served", &[]);
        }
        if !request.unknown.is_empty() {
            return error(
                stun::UNKNOWN_ATTRIBUTE,
                "Unknown Attribute",
                request.unknown.as_slice(),
            );
        }
        let change = request.change_request.unwrap_or_default();
        let Some(source) = self.source_for(on, change) else {
            // RFC 5780 §6.1: a CHANGE-REQUEST the server has no alternate address for is
            // answered with 420.
            return error(
                stun::UNKNOWN_ATTRIBUTE,
                "no socket can send the change asked for",
                &[stun::attr::CHANGE_REQUEST],
            );
        };
        // RFC 5780 §7.5: the reply goes to the source IP at RESPONSE-PORT, which redirects
        // nothing a spoofed source could not have named itself.
        let dst = SocketAddr::new(from.ip(), request.response_port.unwrap_or(from.port()));
        let mut e = Encoder::new(Class::Success, BINDING, request.transaction);
        e.xor_mapped_address(from)
            .mapped_address(from)
            .response_origin(self.sockets[source]);
        if let Some(other) = self.other_address(on) {
            e.other_address(other);
        }
        log::trace!(
            "stun: binding from {from} on {arrival}, reply from {}",
            self.sockets[source]
        );
        Some(Reply {
            socket: source,
            dst,
            payload: e.finish_with_fingerprint(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stun::{ErrorCode, TransactionId};

    const T: TransactionId = [5; 12];

    fn grid() -> Responder {
        Responder::new(
            [
                "192.0.2.1:3478",
                "192.0.2.1:3479",
                "192.0.2.2:3478",
                "192.0.2.2:3479",
                "[2001:db8::1]:3478",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        )
    }

    fn request(change: Option<(bool, bool)>) -> Vec<u8> {
        let mut e = Encoder::new(Class::Request, BINDING, T);
        if let Some((ip, port)) = change {
            e.change_request(ChangeRequest { ip, port });
        }
        e.finish()
    }

    fn client() -> SocketAddr {
        "203.0.113.5:40001".parse().unwrap()
    }

    #[test]
    fn binding_is_answered_with_both_mapped_addresses_origin_and_other_address() {
        let mut r = grid();
        let reply = r
            .handle(0, client(), &request(None), Instant::now())
            .unwrap();
        assert_eq!((reply.socket, reply.dst), (0, client()));
        assert!(reply.payload.len() <= MAX_REPLY_LEN);
        let m = Message::parse(&reply.payload).unwrap();
        assert_eq!(
            (m.class, m.method, m.transaction),
            (Class::Success, BINDING, T)
        );
        assert_eq!(m.xor_mapped_address, Some(client()));
        assert_eq!(m.mapped_address, Some(client()));
        assert_eq!(m.response_origin, Some("192.0.2.1:3478".parse().unwrap()));
        assert_eq!(m.other_address, Some("192.0.2.2:3479".parse().unwrap()));
        assert!(m.fingerprint);
    }

    #[test]
    fn change_request_picks_the_socket_rfc_5780_table_1_names() {
        let mut r = grid();
        let now = Instant::now();
        // Arrival on 192.0.2.2:3479 (A2:P2): change IP -> A1:P2, port -> A2:P1, both -> A1:P1.
        for (change, socket) in [
            ((false, false), 3),
            ((true, false), 1),
            ((false, true), 2),
            ((true, true), 0),
        ] {
            let reply = r.handle(3, client(), &request(Some(change)), now).unwrap();
            assert_eq!(reply.socket, socket, "{change:?}");
            let m = Message::parse(&reply.payload).unwrap();
            assert_eq!(m.response_origin, Some(r.sockets()[socket]));
            assert_eq!(m.other_address, Some(r.sockets()[0]), "always Ca:Cp");
        }
    }

    fn error_of(reply: &Reply) -> (u16, Vec<u16>) {
        let m = Message::parse(&reply.payload).unwrap();
        assert_eq!((m.class, m.transaction), (Class::Error, T));
        let ErrorCode { code, .. } = m.error_code.unwrap();
        // UNKNOWN-ATTRIBUTES is not exposed by the parser: read its value (after ERROR-CODE).
        let p = &reply.payload;
        let mut at = 20;
        let mut listed = Vec::new();
        while at + 4 <= p.len() {
            let ty = u16::from_be_bytes([p[at], p[at + 1]]);
            let len = usize::from(u16::from_be_bytes([p[at + 2], p[at + 3]]));
            if ty == stun::attr::UNKNOWN_ATTRIBUTES {
                listed = p[at + 4..at + 4 + len]
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        (code, listed)
    }

    #[test]
    fn a_change_no_socket_can_make_is_answered_with_420() {
        let now = Instant::now();
        let mut one_ip = Responder::new(vec![
            "192.0.2.1:3478".parse().unwrap(),
            "192.0.2.1:3479".parse().unwrap(),
        ]);
        let reply = one_ip
            .handle(0, client(), &request(Some((true, false))), now)
            .unwrap();
        assert_eq!(reply.socket, 0);
        assert_eq!(error_of(&reply), (420, vec![stun::attr::CHANGE_REQUEST]));
        // Change-port alone works, and with one IP there is no OTHER-ADDRESS (§7.4).
        let reply = one_ip
            .handle(0, client(), &request(Some((false, true))), now)
            .unwrap();
        let m = Message::parse(&reply.payload).unwrap();
        assert_eq!((reply.socket, m.other_address), (1, None));

        // Two IPs on different ports: change-IP falls back to the other port, change-port
        // alone has nowhere to go.
        let mut diagonal = Responder::new(vec![
            "192.0.2.1:3478".parse().unwrap(),
            "192.0.2.2:3479".parse().unwrap(),
        ]);
        let reply = diagonal
            .handle(0, client(), &request(Some((true, false))), now)
            .unwrap();
        assert_eq!(reply.socket, 1);
        let reply = diagonal
            .handle(0, client(), &request(Some((false, true))), now)
            .unwrap();
        assert_eq!(error_of(&reply).0, 420);
        // The IPv6 socket is never the alternate of an IPv4 one.
        let mut r = grid();
        let v6_client: SocketAddr = "[2001:db8::99]:5000".parse().unwrap();
        let reply = r
            .handle(4, v6_client, &request(Some((true, true))), now)
            .unwrap();
        assert_eq!((reply.socket, error_of(&reply).0), (4, 420));
    }

    #[test]
    fn unknown_required_attributes_get_420_listing_them() {
        let mut e = Encoder::new(Class::Request, BINDING, T);
        e.change_request(ChangeRequest::default());
        let mut bytes = e.finish();
        // PADDING (RFC 5780 §7.6): not supported, it exists to make replies large.
        bytes.extend_from_slice(&[0x00, 0x26, 0, 4, 0, 0, 0, 0]);
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        let reply = grid().handle(0, client(), &bytes, Instant::now()).unwrap();
        assert_eq!(error_of(&reply), (420, vec![0x0026]));
    }

    #[test]
    fn response_port_redirects_to_another_port_of_the_source_ip_only() {
        let mut e = Encoder::new(Class::Request, BINDING, T);
        e.response_port(5000);
        let reply = grid()
            .handle(0, client(), &e.finish(), Instant::now())
            .unwrap();
        assert_eq!(reply.dst, "203.0.113.5:5000".parse().unwrap());
        let m = Message::parse(&reply.payload).unwrap();
        assert_eq!(
            m.xor_mapped_address,
            Some(client()),
            "the mapping the request came from"
        );
    }

    #[test]
    fn other_methods_get_400_and_non_requests_nothing() {
        let now = Instant::now();
        let mut r = grid();
        let allocate = Encoder::new(Class::Request, 0x003, T).finish();
        assert_eq!(
            error_of(&r.handle(0, client(), &allocate, now).unwrap()).0,
            400
        );
        for class in [Class::Indication, Class::Success, Class::Error] {
            let m = Encoder::new(class, BINDING, T).finish();
            assert_eq!(r.handle(0, client(), &m, now), None, "{class:?}");
        }
        for junk in [
            &b""[..],
            &[0u8; 19],
            &[1, 0, 0, 0, 9, 9, 9, 9],
            &request(Some((false, false)))[..24],
        ] {
            assert_eq!(r.handle(0, client(), junk, now), None);
        }
        assert_eq!(
            r.handle(9, client(), &request(None), now),
            None,
            "no such socket"
        );
    }

    #[test]
    fn a_flooding_source_is_cut_off_others_are_not() {
        let now = Instant::now();
        let mut r = Responder::with_rate(vec!["192.0.2.1:3478".parse().unwrap()], 10, 5);
        let answered = (0..20)
            .filter(|_| r.handle(0, client(), &request(None), now).is_some())
            .count();
        assert_eq!(answered, 5);
        let other: SocketAddr = "203.0.113.6:1".parse().unwrap();
        assert!(r.handle(0, other, &request(None), now).is_some());
    }

    #[test]
    fn replies_stay_small_for_ipv6() {
        let mut r = Responder::new(vec![
            "[2001:db8::1]:3478".parse().unwrap(),
            "[2001:db8::2]:3479".parse().unwrap(),
        ]);
        let from: SocketAddr = "[2001:db8:ffff::1234]:65535".parse().unwrap();
        let reply = r
            .handle(0, from, &request(Some((true, true))), Instant::now())
            .unwrap();
        assert_eq!(reply.payload.len(), MAX_REPLY_LEN);
    }
}
