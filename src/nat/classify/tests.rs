use super::*;
use crate::stun_server::Responder;

const LOCAL: &str = "192.168.1.10:40000";
const PUBLIC: &str = "203.0.113.7:50000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The four sockets of a two-IP, two-port server; index 0 is the primary.
fn grid() -> Vec<SocketAddr> {
    [
        "198.51.100.1:3478",
        "198.51.100.1:3479",
        "198.51.100.2:3478",
        "198.51.100.2:3479",
    ]
    .map(addr)
    .to_vec()
}

/// What the stand-in NAT lets in: RFC 4787 filtering by what the member has sent to.
#[derive(Clone, Copy)]
enum Filter {
    Anything,
    SentToIp,
    SentToIpAndPort,
}

/// A server (the real responder) behind a stand-in for the NAT: `mapped(dst)` is the public
/// address a request to `dst` leaves with; replies get in per `filter`.
struct Path<'a> {
    responder: Responder,
    mapped: &'a dyn Fn(SocketAddr) -> SocketAddr,
    filter: Filter,
    sent_to: Vec<SocketAddr>,
}

impl Path<'_> {
    fn passes(&self, src: SocketAddr) -> bool {
        match self.filter {
            Filter::Anything => true,
            Filter::SentToIp => self.sent_to.iter().any(|s| s.ip() == src.ip()),
            Filter::SentToIpAndPort => self.sent_to.contains(&src),
        }
    }

    /// Delivers every pending transmit and its reply.
    fn exchange(&mut self, c: &mut Classifier, now: Instant) {
        while let Some(t) = c.poll_transmit() {
            self.sent_to.push(t.dst);
            let on = self
                .responder
                .sockets()
                .iter()
                .position(|s| *s == t.dst)
                .unwrap();
            let Some(reply) = self
                .responder
                .handle(on, (self.mapped)(t.dst), &t.payload, now)
            else {
                continue;
            };
            let src = self.responder.sockets()[reply.socket];
            if self.passes(src) {
                assert!(c.handle_datagram(src, &reply.payload, now));
            }
        }
    }

    /// Runs the classification to its end, stepping time to each deadline.
    fn run(&mut self, servers: &[SocketAddr], start: Instant) -> (NatReport, Duration) {
        let mut c = Classifier::new(servers, &[addr(LOCAL)], [9; 12], start);
        let mut now = start;
        loop {
            self.exchange(&mut c, now);
            if let Some(report) = c.result() {
                assert_eq!(c.poll_timeout(), None);
                return (report, now - start);
            }
            now = c.poll_timeout().expect("a deadline while not done");
            c.handle_timeout(now);
        }
    }
}

fn path(
    servers: Vec<SocketAddr>,
    mapped: &dyn Fn(SocketAddr) -> SocketAddr,
    filter: Filter,
) -> Path<'_> {
    Path {
        responder: Responder::new(servers),
        mapped,
        filter,
        sent_to: Vec::new(),
    }
}

fn report(nat_type: NatType, mapping: Option<Mapping>, filtering: Option<Filtering>) -> NatReport {
    NatReport {
        nat_type,
        public: Some(addr(PUBLIC)),
        mapping,
        filtering,
    }
}

const EIM: Option<Mapping> = Some(Mapping::EndpointIndependent);

#[test]
fn retransmits_double_then_give_up_as_unknown() {
    let t0 = Instant::now();
    let servers = grid();
    let mut c = Classifier::new(&servers, &[addr(LOCAL)], [1; 12], t0);
    let first = c.poll_transmit().unwrap();
    assert_eq!(first.dst, servers[0]);
    assert_eq!(c.poll_transmit(), None);
    for (at, resent) in [(500, true), (1500, true), (3000, false)] {
        let deadline = t0 + Duration::from_millis(at);
        assert_eq!(c.poll_timeout(), Some(deadline));
        c.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(c.poll_transmit(), None, "nothing before {at} ms");
        c.handle_timeout(deadline);
        if resent {
            assert_eq!(
                c.poll_transmit(),
                Some(first.clone()),
                "same request at {at} ms"
            );
        }
    }
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(
        c.result(),
        Some(NatReport {
            nat_type: NatType::Unknown,
            public: None,
            mapping: None,
            filtering: None,
        })
    );
}

#[test]
fn the_own_address_reflected_is_open_after_one_request() {
    let same = |_| addr(LOCAL);
    let (r, took) = path(grid(), &same, Filter::Anything).run(&grid(), Instant::now());
    assert_eq!(r.nat_type, NatType::Open);
    assert_eq!(r.public, Some(addr(LOCAL)));
    assert_eq!(took, Duration::ZERO);
}

#[test]
fn a_reply_from_the_other_ip_and_port_is_full_cone() {
    let eim = |_| addr(PUBLIC);
    let (r, took) = path(grid(), &eim, Filter::Anything).run(&grid(), Instant::now());
    assert_eq!(
        r,
        report(NatType::FullCone, EIM, Some(Filtering::EndpointIndependent))
    );
    assert_eq!(
        took,
        Duration::ZERO,
        "nothing to wait for when every reply arrives"
    );
}

#[test]
fn only_the_same_ip_getting_through_is_restricted_cone() {
    let eim = |_| addr(PUBLIC);
    let (r, took) = path(grid(), &eim, Filter::SentToIp).run(&grid(), Instant::now());
    assert_eq!(
        r,
        report(
            NatType::RestrictedCone,
            EIM,
            Some(Filtering::AddressDependent)
        )
    );
    assert_eq!(
        took, TRANSACTION_TIMEOUT,
        "the change-IP test had to time out"
    );
}

#[test]
fn only_the_primary_getting_through_is_port_restricted_cone() {
    let eim = |_| addr(PUBLIC);
    let (r, took) = path(grid(), &eim, Filter::SentToIpAndPort).run(&grid(), Instant::now());
    assert_eq!(
        r,
        report(
            NatType::PortRestrictedCone,
            EIM,
            Some(Filtering::AddressAndPortDependent)
        )
    );
    assert_eq!(took, TRANSACTION_TIMEOUT);
}

#[test]
fn a_new_mapping_for_another_server_address_is_symmetric() {
    let per_dst = |dst: SocketAddr| {
        if dst == grid()[0] {
            addr(PUBLIC)
        } else {
            addr("203.0.113.7:50001")
        }
    };
    let (r, _) = path(grid(), &per_dst, Filter::SentToIpAndPort).run(&grid(), Instant::now());
    assert_eq!(
        r,
        report(
            NatType::Symmetric,
            Some(Mapping::EndpointDependent),
            Some(Filtering::AddressAndPortDependent)
        )
    );
}

#[test]
fn a_one_address_server_gives_the_public_address_and_unknown() {
    let one = vec![addr("198.51.100.1:3478")];
    let eim = |_| addr(PUBLIC);
    let (r, took) = path(one.clone(), &eim, Filter::Anything).run(&one, Instant::now());
    // Both change requests are refused with 420 and there is nothing to compare with.
    assert_eq!(r, report(NatType::Unknown, None, None));
    assert_eq!(took, Duration::ZERO);
}

#[test]
fn a_one_ip_server_still_finds_port_dependent_filtering_and_port_dependent_mapping() {
    let ports = vec![addr("198.51.100.1:3478"), addr("198.51.100.1:3479")];
    let eim = |_| addr(PUBLIC);
    let mut p = path(ports.clone(), &eim, Filter::SentToIpAndPort);
    let (r, _) = p.run(&ports, Instant::now());
    // Same mapping for another port of the same IP does not rule out address-dependent
    // mapping, so the type stays unknown; the filtering is known.
    assert_eq!(
        r,
        report(
            NatType::Unknown,
            None,
            Some(Filtering::AddressAndPortDependent)
        )
    );
    let per_port = |dst: SocketAddr| SocketAddr::new(addr(PUBLIC).ip(), 50000 + dst.port() - 3478);
    let (r, _) = path(ports.clone(), &per_port, Filter::Anything).run(&ports, Instant::now());
    assert_eq!(r.nat_type, NatType::Symmetric);
    assert_eq!(
        r.filtering, None,
        "change-port got through, change-IP was refused"
    );
}

#[test]
fn an_error_to_the_first_request_is_unknown_at_once() {
    let t0 = Instant::now();
    let mut c = Classifier::new(&grid(), &[addr(LOCAL)], [2; 12], t0);
    let t = c.poll_transmit().unwrap();
    let id = Message::parse(&t.payload).unwrap().transaction;
    let mut e = Encoder::new(Class::Error, BINDING, id);
    e.error_code(500, "Server Error");
    assert!(c.handle_datagram(grid()[0], &e.finish(), t0));
    assert_eq!(c.result().map(|r| r.nat_type), Some(NatType::Unknown));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn foreign_and_malformed_datagrams_are_not_taken() {
    let t0 = Instant::now();
    let mut c = Classifier::new(&grid(), &[addr(LOCAL)], [3; 12], t0);
    let t = c.poll_transmit().unwrap();
    let ours = Message::parse(&t.payload).unwrap().transaction;
    let other = Encoder::new(Class::Success, BINDING, [0xee; 12]).finish();
    let request_echo = t.payload.clone();
    let mut handshake = [0u8; 148];
    handshake[0] = 1;
    for junk in [&other[..], &request_echo, &handshake, &[], &t.payload[..21]] {
        assert!(!c.handle_datagram(grid()[0], junk, t0));
    }
    let mut cut = Encoder::new(Class::Success, BINDING, ours).finish();
    cut.push(0);
    assert!(!c.handle_datagram(grid()[0], &cut, t0));
    assert_eq!(c.result(), None, "still waiting for a real answer");
}

#[test]
fn a_change_reply_from_the_primary_itself_proves_nothing() {
    // A server that ignores CHANGE-REQUEST answers every test from where it was asked.
    let t0 = Instant::now();
    let servers = grid();
    let mut c = Classifier::new(&servers, &[addr(LOCAL)], [4; 12], t0);
    let mut now = t0;
    while c.result().is_none() {
        while let Some(t) = c.poll_transmit() {
            let id = Message::parse(&t.payload).unwrap().transaction;
            let mut e = Encoder::new(Class::Success, BINDING, id);
            e.xor_mapped_address(addr(PUBLIC));
            assert!(c.handle_datagram(t.dst, &e.finish(), now));
        }
        if let Some(at) = c.poll_timeout() {
            now = at;
            c.handle_timeout(now);
        }
    }
    assert_eq!(c.result(), Some(report(NatType::Unknown, EIM, None)));
}

#[test]
fn no_server_addresses_is_unknown_without_sending() {
    let mut c = Classifier::new(&[], &[], [5; 12], Instant::now());
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(c.result().map(|r| r.nat_type), Some(NatType::Unknown));
}

#[test]
fn transaction_ids_differ_per_request() {
    let t0 = Instant::now();
    let eim = |_| addr(PUBLIC);
    let mut p = path(grid(), &eim, Filter::Anything);
    let mut c = Classifier::new(&grid(), &[addr(LOCAL)], [6; 12], t0);
    let mut ids = Vec::new();
    while let Some(t) = c.poll_transmit() {
        ids.push(Message::parse(&t.payload).unwrap().transaction);
        let on = grid().iter().position(|s| *s == t.dst).unwrap();
        let reply = p
            .responder
            .handle(on, addr(PUBLIC), &t.payload, t0)
            .unwrap();
        c.handle_datagram(grid()[reply.socket], &reply.payload, t0);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "binding, two filtering tests, mapping");
}

#[test]
fn a_second_answer_to_a_retransmitted_request_is_taken_and_ignored() {
    let t0 = Instant::now();
    let mut c = Classifier::new(&grid(), &[addr(LOCAL)], [7; 12], t0);
    let first = c.poll_transmit().unwrap();
    c.handle_timeout(t0 + INITIAL_RTO);
    assert_eq!(c.poll_transmit(), Some(first.clone()));
    let id = Message::parse(&first.payload).unwrap().transaction;
    let mut e = Encoder::new(Class::Success, BINDING, id);
    e.xor_mapped_address(addr(PUBLIC));
    let answer = e.finish();
    assert!(c.handle_datagram(grid()[0], &answer, t0 + INITIAL_RTO));
    let filtering_tests: Vec<Transmit> = std::iter::from_fn(|| c.poll_transmit()).collect();
    assert_eq!(filtering_tests.len(), 2);
    // The answer to the retransmission: ours, so not junk for the data plane, but it
    // changes nothing.
    assert!(c.handle_datagram(grid()[0], &answer, t0 + INITIAL_RTO));
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(c.poll_timeout(), Some(t0 + INITIAL_RTO * 2));
}
