//! The relay core against members running the real client, on a virtual clock.

use super::*;
use crate::relay::client::Received;
use crate::relay::sim::{member_id, Member, Sim, SECRET};
use crate::relay::ticket::{BindKey, RelaySecret, TICKET_LIFETIME_S};
use crate::wire::relay::{emit_bind_signed, finish_tagged, DATA_TO};

fn config() -> Config {
    Config {
        max_clients: 8,
        client_pps: 100,
        client_bytes_per_s: 100_000,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A signed bind for `grant` with `timestamp_ms`.
fn bind_frame(ticket: &[u8], bind_key: [u8; 32], timestamp_ms: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let signed = emit_bind_signed(&mut buf, timestamp_ms, ticket).unwrap();
    let tag = BindKey::new(bind_key).tag(&buf[..signed]);
    let len = finish_tagged(&mut buf, signed, &tag).unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn a_ticketed_member_is_bound_and_its_data_reaches_the_named_member_of_its_party() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    let mut b = Member::new(&sim, "party1", 2);
    a.bind(&mut sim);
    b.bind(&mut sim);
    assert_eq!(sim.relay.clients(), 2);
    let frame = a.data_to(b.id, b"wireguard datagram");
    let out = sim.send(a.addr, &frame).expect("forwarded");
    assert_eq!(out.dst, b.addr);
    assert_eq!(out.bytes.len(), frame.len());
    assert_eq!(
        b.client
            .handle_datagram(sim.relay_addr(), &out.bytes, sim.at),
        Some(Received {
            from: a.id,
            payload: b"wireguard datagram"
        })
    );
    let c = sim.relay.counters();
    assert_eq!((c.forwarded_packets, c.binds_accepted), (1, 2));
    assert_eq!(c.forwarded_bytes, frame.len() as u64);
}

#[test]
fn an_unticketed_sender_gets_no_answer_and_nothing_is_forwarded() {
    let mut sim = Sim::new(config());
    let mut b = Member::new(&sim, "party1", 2);
    b.bind(&mut sim);
    let stranger = addr("192.0.2.66:5000");
    let mut data = vec![DATA_TO];
    data.extend_from_slice(&b.id.0);
    data.extend_from_slice(b"hello");
    assert_eq!(sim.send(stranger, &data), None);
    assert_eq!(sim.send(stranger, &[0xA5, 0, 0, 0, 0, 0, 0, 0, 1]), None);
    for junk in [
        &[][..],
        &[0xA0],
        &[0xA0; 200],
        &[4, 0, 0, 0, 1, 2, 3, 4],
        &[0xA7; 40],
    ] {
        assert_eq!(sim.send(stranger, junk), None, "{junk:?}");
    }
    let c = sim.relay.counters();
    assert_eq!(c.forwarded_packets, 0);
    assert_eq!(c.dropped_unbound, 2);
    assert_eq!(c.dropped_malformed + c.dropped_not_relay, 5);
}

#[test]
fn a_forged_ticket_or_a_wrong_proof_gets_no_answer_and_no_binding() {
    let mut sim = Sim::new(config());
    let forger = RelaySecret::new(b"not the relay secret, 32 bytes!!");
    let forged = forger
        .issue("party1", member_id(1), [1; 32], sim.unix_s() + 600)
        .unwrap();
    let a = addr("192.0.2.1:1000");
    let frame = bind_frame(&forged.ticket, forged.bind_key, sim.unix_ms);
    assert_eq!(sim.send(a, &frame), None);
    let genuine = sim.grant("party1", 1, 600);
    let frame = bind_frame(&genuine.ticket, [0; 32], sim.unix_ms);
    assert_eq!(
        sim.send(a, &frame),
        None,
        "a sniffed ticket without its bind key"
    );
    let c = sim.relay.counters();
    assert_eq!((c.dropped_bad_ticket, c.dropped_bad_proof), (1, 1));
    assert_eq!(sim.relay.clients(), 0);
}

#[test]
fn an_expired_ticket_is_refused_with_a_tagged_answer() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    // The ticket says 10 s; the member believes (wrongly) it has ten minutes.
    let mut grant = sim.grant("party1", 1, 10);
    grant.expires_at += 590;
    a.client.handle_ticket(grant, sim.at);
    sim.advance(Duration::from_secs(11));
    a.exchange(&mut sim);
    assert_eq!(
        a.client.state(),
        crate::relay::client::State::Refused(RefuseReason::Expired)
    );
    assert_eq!(sim.relay.counters().refused_expired, 1);
    assert_eq!(sim.relay.clients(), 0);
}

#[test]
fn members_of_different_parties_cannot_reach_each_other_even_with_the_same_member_id() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "partyA", 1);
    let mut b = Member::new(&sim, "partyB", 2);
    let mut twin = Member::new(&sim, "partyB", 1);
    twin.addr = addr("198.51.100.99:9999");
    a.bind(&mut sim);
    b.bind(&mut sim);
    twin.bind(&mut sim);
    assert_eq!(sim.send(a.addr, &a.data_to(b.id, b"x")), None);
    let out = sim.send(b.addr, &b.data_to(member_id(1), b"y")).unwrap();
    assert_eq!(
        out.dst, twin.addr,
        "B's member 1 is the twin in B, never A's member 1"
    );
    assert_eq!(sim.relay.counters().dropped_no_destination, 1);
}

#[test]
fn a_replayed_bind_from_another_address_does_not_move_the_binding() {
    let mut sim = Sim::new(config());
    let grant = sim.grant("party1", 1, 600);
    let victim = addr("198.51.100.1:40001");
    let attacker = addr("192.0.2.66:5000");
    let bind = bind_frame(&grant.ticket, grant.bind_key, sim.unix_ms);
    assert!(sim.send(victim, &bind).is_some());
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.send(attacker, &bind), None);
    let mut b = Member::new(&sim, "party1", 2);
    b.bind(&mut sim);
    let out = sim
        .send(b.addr, &b.data_to(member_id(1), b"for 1"))
        .unwrap();
    assert_eq!(out.dst, victim);
    assert_eq!(sim.relay.counters().dropped_replay, 1);
    assert_eq!(sim.relay.counters().binds_moved, 0);
}

#[test]
fn a_replayed_bind_after_the_binding_expired_is_out_of_the_window() {
    let mut sim = Sim::new(config());
    let grant = sim.grant("party1", 1, 600);
    let bind = bind_frame(&grant.ticket, grant.bind_key, sim.unix_ms);
    assert!(sim.send(addr("198.51.100.1:40001"), &bind).is_some());
    sim.advance(IDLE_TIMEOUT);
    assert_eq!(sim.relay.clients(), 0, "idle binding forgotten");
    let out = sim.send(addr("192.0.2.66:5000"), &bind).unwrap();
    assert_eq!(out.bytes[0], crate::wire::relay::REFUSED);
    assert_eq!(sim.relay.clients(), 0);
    assert_eq!(sim.relay.counters().refused_clock, 1);
}

#[test]
fn a_fresh_bind_from_a_new_address_moves_the_binding() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    let mut b = Member::new(&sim, "party1", 2);
    a.bind(&mut sim);
    b.bind(&mut sim);
    // A's NAT gives it a new mapping: its keepalive goes unanswered, it re-binds.
    sim.advance(Duration::from_secs(25));
    a.addr = addr("198.51.100.1:50000");
    a.exchange(&mut sim);
    sim.advance(crate::relay::client::ACK_TIMEOUT);
    a.exchange(&mut sim);
    assert!(a.client.is_bound());
    assert_eq!(sim.relay.counters().binds_moved, 1);
    let out = sim.send(b.addr, &b.data_to(a.id, b"to a")).unwrap();
    assert_eq!(out.dst, a.addr);
    assert_eq!(
        sim.send(addr("198.51.100.1:40001"), &a.data_to(b.id, b"old")),
        None
    );
}

#[test]
fn the_per_client_packet_rate_holds_and_refills() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    let mut b = Member::new(&sim, "party1", 2);
    a.bind(&mut sim);
    b.bind(&mut sim);
    let frame = a.data_to(b.id, b"x");
    let through = (0..1000)
        .filter(|_| sim.send(a.addr, &frame).is_some())
        .count();
    assert_eq!(through, 100, "a burst of one second's worth");
    assert_eq!(sim.relay.counters().dropped_rate_limited, 900);
    sim.advance(Duration::from_millis(500));
    let through = (0..1000)
        .filter(|_| sim.send(a.addr, &frame).is_some())
        .count();
    assert_eq!(through, 50);
    let other = b.data_to(a.id, b"x");
    assert!(
        sim.send(b.addr, &other).is_some(),
        "clients are limited separately"
    );
}

#[test]
fn the_per_client_byte_rate_holds() {
    let mut sim = Sim::new(Config {
        client_bytes_per_s: 10_000,
        ..config()
    });
    let mut a = Member::new(&sim, "party1", 1);
    let mut b = Member::new(&sim, "party1", 2);
    a.bind(&mut sim);
    b.bind(&mut sim);
    let frame = a.data_to(b.id, &[7; 993]);
    let through = (0..50)
        .filter(|_| sim.send(a.addr, &frame).is_some())
        .count();
    assert_eq!(through, 10, "10 000 bytes of 1000-byte frames");
}

#[test]
fn max_clients_holds_but_bound_members_may_refresh() {
    let mut sim = Sim::new(Config {
        max_clients: 2,
        ..config()
    });
    let mut a = Member::new(&sim, "party1", 1);
    let mut b = Member::new(&sim, "party1", 2);
    let mut c = Member::new(&sim, "party1", 3);
    a.bind(&mut sim);
    b.bind(&mut sim);
    c.exchange(&mut sim);
    assert_eq!(
        c.client.state(),
        crate::relay::client::State::Refused(RefuseReason::Full)
    );
    assert_eq!(sim.relay.clients(), 2);
    a.client.handle_ticket(sim.grant("party1", 1, 600), sim.at);
    a.exchange(&mut sim);
    assert!(a.client.is_bound());
    assert_eq!(sim.relay.counters().refused_full, 1);
    assert_eq!(sim.relay.counters().binds_accepted, 3);
}

#[test]
fn keepalives_keep_a_binding_and_silence_ends_it() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    let mut quiet = Member::new(&sim, "party1", 2);
    a.bind(&mut sim);
    quiet.bind(&mut sim);
    for _ in 0..10 {
        sim.advance(Duration::from_secs(25));
        a.exchange(&mut sim);
    }
    assert_eq!(
        sim.relay.clients(),
        1,
        "only the member that kept quiet is gone"
    );
    assert_eq!(sim.relay.counters().expired_idle, 1);
    assert_eq!(sim.relay.counters().keepalives, 10);
}

#[test]
fn bindings_end_when_their_ticket_expires() {
    let mut sim = Sim::new(config());
    let grant = sim.grant("party1", 1, 30);
    let bind = bind_frame(&grant.ticket, grant.bind_key, sim.unix_ms);
    assert!(sim.send(addr("198.51.100.1:40001"), &bind).is_some());
    sim.advance(Duration::from_secs(29));
    assert_eq!(sim.relay.clients(), 1);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.relay.clients(), 0);
    assert_eq!(sim.relay.counters().expired_ticket, 1);
}

#[test]
fn a_bind_with_a_timestamp_far_from_the_relay_clock_is_refused() {
    let mut sim = Sim::new(config());
    let grant = sim.grant("party1", 1, 600);
    let bind = bind_frame(
        &grant.ticket,
        grant.bind_key,
        sim.unix_ms + BIND_WINDOW_MS + 1,
    );
    let out = sim.send(addr("198.51.100.1:40001"), &bind).unwrap();
    assert_eq!(out.bytes[0], crate::wire::relay::REFUSED);
    assert_eq!(out.bytes[9], RefuseReason::Clock as u8);
    assert_eq!(sim.relay.clients(), 0);
}

#[test]
fn a_bind_from_an_address_another_member_holds_is_dropped() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    a.bind(&mut sim);
    let other = sim.grant("party1", 2, 600);
    let bind = bind_frame(&other.ticket, other.bind_key, sim.unix_ms);
    assert_eq!(sim.send(a.addr, &bind), None);
    assert_eq!(sim.relay.counters().dropped_address_in_use, 1);
    assert_eq!(sim.relay.clients(), 1);
}

#[test]
fn data_for_oneself_or_an_unbound_member_is_dropped() {
    let mut sim = Sim::new(config());
    let mut a = Member::new(&sim, "party1", 1);
    a.bind(&mut sim);
    assert_eq!(sim.send(a.addr, &a.data_to(a.id, b"me")), None);
    assert_eq!(sim.send(a.addr, &a.data_to(member_id(9), b"nobody")), None);
    assert_eq!(sim.relay.counters().dropped_no_destination, 2);
}

#[test]
fn binds_beyond_the_check_rate_are_dropped_before_any_hmac() {
    let mut sim = Sim::new(config());
    let junk = bind_frame(&sim.grant("party1", 1, 600).ticket, [9; 32], sim.unix_ms);
    for i in 0..BIND_CHECKS_PER_S + 10 {
        let src = SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16));
        assert_eq!(sim.send(src, &junk), None);
    }
    let c = sim.relay.counters();
    assert_eq!(c.dropped_bind_flood, 10);
    assert_eq!(c.dropped_bad_proof, BIND_CHECKS_PER_S);
    let _ = (SECRET, TICKET_LIFETIME_S);
}

#[test]
fn the_counters_read_as_one_line_for_people() {
    let line = Counters {
        forwarded_packets: 3,
        dropped_rate_limited: 2,
        ..Counters::default()
    }
    .to_string();
    assert!(line.starts_with("forwarded 3 packets"), "{line}");
    assert!(line.contains("2 rate limited"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn a_bind_built_independently_from_the_protocol_document_is_accepted() {
    // fuzz/corpus/relay_frame/bind_valid was written by a Python script from the formats in
    // docs/PROTOCOL.md (secret 32 x 0x5A, clock 1_800_000_000_000 ms), not by this code.
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/relay_frame/bind_valid"
    );
    let mut bind = std::fs::read(seed).unwrap();
    let at = Instant::now();
    let now = Now {
        at,
        unix_ms: 1_800_000_000_000,
    };
    let mut relay = Relay::new(Config::default(), &[0x5A; 32], now);
    let out = relay
        .handle_datagram(addr("192.0.2.1:4000"), &mut bind, now)
        .expect("answered");
    assert_eq!(out.payload[0], crate::wire::relay::BOUND);
    assert_eq!(relay.clients(), 1);
}
