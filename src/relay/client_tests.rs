//! The member's relay client on a virtual clock, against the real relay core where an
//! answer is needed.

use super::*;
use crate::relay::core::Config;
use crate::relay::sim::{member_id, Member, Sim};
use crate::relay::ticket::TICKET_LIFETIME_S;

fn events(client: &mut RelayClient) -> Vec<Event> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

/// Sends everything due, returning the frames (nothing reaches a relay).
fn sent(client: &mut RelayClient, now: Instant) -> Vec<Vec<u8>> {
    client.handle_timeout(now);
    std::iter::from_fn(|| client.poll_transmit(now).map(|t| t.payload.to_vec())).collect()
}

#[test]
fn a_new_client_asks_for_a_ticket_and_sends_nothing_until_it_has_one() {
    let t0 = Instant::now();
    let mut c = RelayClient::new("203.0.113.1:3478".parse().unwrap(), t0);
    assert_eq!(c.poll_timeout(), Some(t0));
    assert!(sent(&mut c, t0).is_empty());
    assert_eq!(events(&mut c), vec![Event::NeedTicket]);
    assert_eq!(c.poll_timeout(), Some(t0 + TICKET_RETRY));
    assert_eq!(c.state(), State::NoTicket);
    let mut out = [0u8; 64];
    assert!(
        c.encapsulate(member_id(2), b"x", &mut out).is_none(),
        "not bound"
    );
}

#[test]
fn an_unanswered_bind_is_retransmitted_with_backoff_and_the_relay_is_reported_lost() {
    let sim = Sim::new(Config::default());
    let t0 = sim.at;
    let mut c = RelayClient::new(sim.relay_addr(), t0);
    c.handle_ticket(sim.grant("p", 1, TICKET_LIFETIME_S), t0);
    let mut at = t0;
    let mut gaps = Vec::new();
    let mut stamps = Vec::new();
    for _ in 0..6 {
        let frames = sent(&mut c, at);
        assert_eq!(frames.len(), 1);
        match crate::wire::relay::Frame::parse(&frames[0]).unwrap() {
            crate::wire::relay::Frame::Bind { timestamp_ms, .. } => stamps.push(timestamp_ms),
            other => panic!("{other:?}"),
        }
        let next = c.poll_timeout().unwrap();
        gaps.push((next - at).as_secs());
        at = next;
    }
    assert_eq!(gaps, vec![1, 2, 4, 8, 16, 16]);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    assert_eq!(events(&mut c), vec![Event::Lost]);
    assert_eq!(c.state(), State::Binding { attempts: 6 });
}

#[test]
fn a_bound_client_keeps_alive_every_25_seconds_and_measures_the_rtt() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    let bind = sent(&mut a.client, sim.at).remove(0);
    let answer = sim.send(a.addr, &bind).unwrap();
    sim.advance(Duration::from_millis(40));
    a.client
        .handle_datagram(sim.relay_addr(), &answer.bytes, sim.at);
    assert!(a.client.is_bound());
    assert_eq!(a.client.rtt(), Some(Duration::from_millis(40)));
    assert_eq!(a.client.poll_timeout(), Some(sim.at + KEEPALIVE_INTERVAL));
    sim.advance(KEEPALIVE_INTERVAL);
    let keepalive = sent(&mut a.client, sim.at).remove(0);
    assert_eq!(keepalive.len(), crate::wire::relay::KEEPALIVE_LEN);
    let ack = sim.send(a.addr, &keepalive).unwrap();
    sim.advance(Duration::from_millis(120));
    a.client
        .handle_datagram(sim.relay_addr(), &ack.bytes, sim.at);
    assert_eq!(
        a.client.rtt(),
        Some((Duration::from_millis(40) * 7 + Duration::from_millis(120)) / 8),
        "smoothed as in RFC 6298"
    );
}

#[test]
fn an_unanswered_keepalive_starts_a_rebind() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    a.bind(&mut sim);
    sim.advance(KEEPALIVE_INTERVAL);
    assert_eq!(sent(&mut a.client, sim.at).len(), 1, "the keepalive, lost");
    sim.advance(ACK_TIMEOUT);
    let frames = sent(&mut a.client, sim.at);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0][0], crate::wire::relay::BIND);
    assert_eq!(a.client.state(), State::Binding { attempts: 1 });
}

#[test]
fn a_refresh_binds_again_at_once_and_the_binding_stays_usable() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    a.bind(&mut sim);
    assert!(
        sent(&mut a.client, sim.at).is_empty(),
        "nothing due while bound"
    );
    a.client.refresh(sim.at);
    let frames = sent(&mut a.client, sim.at);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0][0], crate::wire::relay::BIND);
    assert!(a.client.is_bound(), "data may still go out meanwhile");
}

#[test]
fn a_ticket_is_asked_for_at_two_thirds_of_its_life_and_a_new_one_refreshes_the_binding() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    a.bind(&mut sim);
    for _ in 0..15 {
        sim.advance(KEEPALIVE_INTERVAL);
        a.exchange(&mut sim);
    }
    assert!(
        events(&mut a.client).is_empty(),
        "375 s in: nothing to do yet"
    );
    sim.advance(KEEPALIVE_INTERVAL);
    a.exchange(&mut sim);
    assert_eq!(events(&mut a.client), vec![Event::NeedTicket]);
    a.client
        .handle_ticket(sim.grant("p", 1, TICKET_LIFETIME_S), sim.at);
    assert_eq!(a.exchange(&mut sim), 1, "one bind with the new ticket");
    assert!(a.client.is_bound());
    assert!(
        events(&mut a.client).is_empty(),
        "still bound: no new Bound event"
    );
    assert_eq!(sim.relay.counters().binds_accepted, 2);
}

#[test]
fn a_ticket_that_runs_out_without_a_new_one_ends_the_binding() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    a.bind(&mut sim);
    let mut seen = Vec::new();
    for _ in 0..25 {
        sim.advance(KEEPALIVE_INTERVAL);
        a.exchange(&mut sim);
        seen.extend(events(&mut a.client));
    }
    assert_eq!(a.client.state(), State::NoTicket);
    assert!(seen.contains(&Event::TicketExpired), "{seen:?}");
    assert!(
        seen.iter().filter(|e| **e == Event::NeedTicket).count() >= 2,
        "{seen:?}"
    );
    let mut out = [0u8; 64];
    assert!(a.client.encapsulate(member_id(2), b"x", &mut out).is_none());
}

#[test]
fn answers_with_a_wrong_tag_from_another_address_or_for_another_bind_are_ignored() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    let bind = sent(&mut a.client, sim.at).remove(0);
    let answer = sim.send(a.addr, &bind).unwrap().bytes;
    let stranger: SocketAddr = "192.0.2.66:3478".parse().unwrap();
    a.client.handle_datagram(stranger, &answer, sim.at);
    assert!(!a.client.is_bound(), "not from the relay");
    let mut forged = answer.clone();
    forged[26] ^= 1;
    a.client.handle_datagram(sim.relay_addr(), &forged, sim.at);
    assert!(!a.client.is_bound(), "wrong tag");
    let mut other = answer.clone();
    other[8] ^= 1;
    a.client.handle_datagram(sim.relay_addr(), &other, sim.at);
    assert!(!a.client.is_bound(), "for a bind never sent");
    a.client.handle_datagram(sim.relay_addr(), &answer, sim.at);
    assert!(a.client.is_bound());
}

#[test]
fn a_full_relay_is_reported_and_tried_again_after_a_minute() {
    let mut sim = Sim::new(Config {
        max_clients: 1,
        ..Config::default()
    });
    let mut a = Member::new(&sim, "p", 1);
    let mut b = Member::new(&sim, "p", 2);
    a.bind(&mut sim);
    b.exchange(&mut sim);
    assert_eq!(
        events(&mut b.client),
        vec![Event::Refused(RefuseReason::Full)]
    );
    assert_eq!(b.client.poll_timeout(), Some(sim.at + FULL_RETRY));
}

#[test]
fn data_frames_wrap_and_unwrap_wireguard_datagrams_unchanged() {
    let mut sim = Sim::new(Config::default());
    let mut a = Member::new(&sim, "p", 1);
    let mut b = Member::new(&sim, "p", 2);
    a.bind(&mut sim);
    b.bind(&mut sim);
    let datagram = [4u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut out = [0u8; 64];
    let tx = a.client.encapsulate(b.id, &datagram, &mut out).unwrap();
    assert_eq!(tx.dst, sim.relay_addr());
    let frame = tx.payload.to_vec();
    let forwarded = sim.send(a.addr, &frame).unwrap();
    let got = b
        .client
        .handle_datagram(sim.relay_addr(), &forwarded.bytes, sim.at)
        .unwrap();
    assert_eq!((got.from, got.payload), (a.id, &datagram[..]));
    let mut small = [0u8; 10];
    assert!(
        a.client.encapsulate(b.id, &datagram, &mut small).is_none(),
        "no room"
    );
}

#[test]
fn bind_timestamps_grow_even_when_a_new_tickets_server_time_is_behind() {
    let sim = Sim::new(Config::default());
    let t0 = sim.at;
    let mut c = RelayClient::new(sim.relay_addr(), t0);
    c.handle_ticket(sim.grant("p", 1, TICKET_LIFETIME_S), t0);
    let stamp = |f: &[u8]| match crate::wire::relay::Frame::parse(f).unwrap() {
        crate::wire::relay::Frame::Bind { timestamp_ms, .. } => timestamp_ms,
        other => panic!("{other:?}"),
    };
    let at = t0 + Duration::from_millis(900);
    let first = stamp(&sent(&mut c, at)[0]);
    let mut late = sim.grant("p", 1, TICKET_LIFETIME_S);
    late.server_time -= 5;
    c.handle_ticket(late, at);
    let second = stamp(&sent(&mut c, at)[0]);
    assert!(second > first, "{second} after {first}");
}
