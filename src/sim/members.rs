//! Members and relays as simulation hosts: [`MemberNode`] runs the real data plane (a
//! [`PeerTable`] and its [`Relays`], wired as `dataplane::event_loop` wires them) on one UDP
//! socket with a fake tun, and [`RelayNode`] runs the real relay core. Tickets come from a
//! [`TicketDesk`] that plays the control server (it shares the relay's secret).
//!
//! One limit of the simulation: boringtun reads the real clock for WireGuard's own timers
//! (handshake retransmission, keepalives, rekeying). A scenario takes milliseconds of real
//! time, so those timers never fire; everything this project decides (paths, punching,
//! relay bindings) follows the virtual clock.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use x25519_dalek::{PublicKey, StaticSecret};

use super::{Datagram, Node};
use crate::dataplane::broadcast::DEFAULT_RATE_PER_S;
use crate::dataplane::peer::Source;
use crate::dataplane::peers::{Io, PeerConfig, PeerTable, BUF_LEN};
use crate::dataplane::relays::{RelayNews, Relays};
use crate::identity::Key;
use crate::relay::client::Grant;
use crate::relay::core::{Config, Now, Relay};
use crate::relay::ticket::{RelaySecret, TICKET_LIFETIME_S};
use crate::wire::relay::{self as frame, MemberId};

/// How often the data plane runs the table's timers while traffic flows.
pub const TICK: Duration = Duration::from_millis(250);
/// The secret the control server and the relay share.
pub const RELAY_SECRET: &[u8] = b"simulated relay secret, 32 bytes";
/// Unix seconds at the start of the virtual clock.
pub const T0_UNIX_S: u64 = 1_800_000_000;
/// The party every simulated member is in.
pub const PARTY: &str = "sim-party";

/// The control server's ticket office, on the virtual clock.
#[derive(Clone, Copy)]
pub struct TicketDesk {
    /// Virtual instant of [`T0_UNIX_S`].
    pub start: Instant,
}

impl TicketDesk {
    /// Unix milliseconds at `now`.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        T0_UNIX_S * 1000 + (now - self.start).as_millis() as u64
    }

    /// A ticket for the holder of `key`.
    pub fn grant(&self, key: Key, now: Instant) -> Grant {
        let now_s = self.unix_ms(now) / 1000;
        let expires_at = now_s + TICKET_LIFETIME_S;
        let issued = RelaySecret::new(RELAY_SECRET)
            .issue(PARTY, key.member_id(), key.0, expires_at)
            .expect("a valid party id");
        Grant {
            ticket: issued.ticket,
            bind_key: issued.bind_key,
            expires_at,
            server_time: now_s,
        }
    }
}

/// How a datagram reached the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight from the peer's address.
    Direct,
    /// Through a relay.
    Relay,
}

/// A packet the member's tun received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// When.
    pub at: Instant,
    /// The IP packet.
    pub packet: Vec<u8>,
    /// The path of the datagram that carried it.
    pub via: Via,
}

/// The member's socket and tun as the table sees them.
struct SimIo {
    local: SocketAddr,
    now: Instant,
    via: Via,
    outbox: VecDeque<Datagram>,
    frame: Vec<u8>,
    tun: Vec<Delivered>,
    keepalives: Vec<(Instant, SocketAddr)>,
}

/// An empty WireGuard transport message (a keepalive, which is what a punch is): header 16
/// bytes, tag 16.
const KEEPALIVE_LEN: usize = 32;

impl Io for SimIo {
    fn send_to(&mut self, payload: &[u8], dst: SocketAddr) {
        if payload.len() == KEEPALIVE_LEN && payload.first() == Some(&4) {
            self.keepalives.push((self.now, dst));
        }
        self.outbox.push_back(Datagram {
            src: self.local,
            dst,
            payload: payload.to_vec(),
        });
    }

    fn send_relayed(&mut self, payload: &[u8], relay: SocketAddr, to: MemberId) {
        let len = frame::emit_data(&mut self.frame, frame::DATA_TO, to, payload)
            .expect("a WireGuard datagram fits a frame");
        self.outbox.push_back(Datagram {
            src: self.local,
            dst: relay,
            payload: self.frame[..len].to_vec(),
        });
    }

    fn write_tun(&mut self, packet: &[u8]) {
        self.tun.push(Delivered {
            at: self.now,
            packet: packet.to_vec(),
            via: self.via,
        });
    }
}

/// A ping-like packet to `to` every `every`, from the member's tun.
struct Pinger {
    to: Ipv4Addr,
    every: Duration,
    next_at: Instant,
    seq: u16,
}

/// A member: the data plane on one socket, a fake tun, relays, and optionally a pinger.
pub struct MemberNode {
    /// The socket's address on its host.
    pub local: SocketAddr,
    /// Its key.
    pub key: Key,
    /// Its virtual IP.
    pub vip: Ipv4Addr,
    /// The data plane's peer table.
    pub table: PeerTable,
    /// Its relay clients.
    pub relays: Relays,
    desk: TicketDesk,
    io: SimIo,
    next_tick: Instant,
    pinger: Option<Pinger>,
}

impl MemberNode {
    /// Member `n` (key `[n; 32]`, virtual IP 10.66.0.n) on socket `local`.
    pub fn new(n: u8, local: SocketAddr, desk: TicketDesk, now: Instant) -> MemberNode {
        let secret = StaticSecret::from([n; 32]);
        let key = Key(PublicKey::from(&secret).to_bytes());
        let vip = Ipv4Addr::new(10, 66, 0, n);
        MemberNode {
            local,
            key,
            vip,
            table: PeerTable::new(
                secret,
                vip,
                "10.66.0.0/16".parse().expect("a subnet"),
                DEFAULT_RATE_PER_S,
            ),
            relays: Relays::default(),
            desk,
            io: SimIo {
                local,
                now,
                via: Via::Direct,
                outbox: VecDeque::new(),
                frame: vec![0; BUF_LEN + frame::DATA_HEADER_LEN],
                tun: Vec::new(),
                keepalives: Vec::new(),
            },
            next_tick: now,
            pinger: None,
        }
    }

    /// What the roster says about this member, as seen by a peer.
    pub fn config(
        &self,
        public_endpoint: Option<SocketAddr>,
        relay: Option<SocketAddr>,
        prediction: crate::nat::Prediction,
    ) -> PeerConfig {
        PeerConfig {
            id: self.key.short_id(),
            name: format!("m{}", self.vip.octets()[3]),
            public_key: self.key,
            virtual_ip: self.vip,
            endpoints: vec![self.local],
            public_endpoint,
            relay,
            prediction,
        }
    }

    /// Binds at `relays` with a fresh ticket (the control thread's `SetRelays` and
    /// `RelayGrant`).
    pub fn set_relays(&mut self, relays: &[SocketAddr], now: Instant) {
        self.relays.set(relays, now);
        self.relays
            .handle_grant(self.desk.grant(self.key, now), now);
        self.pump_relays(now);
    }

    /// A new roster (`SyncPeers`).
    pub fn sync(&mut self, configs: Vec<PeerConfig>, now: Instant) {
        self.io.now = now;
        self.table.sync(configs, now, &mut self.io);
    }

    /// Sends a ping-like packet to `to` every `every`, the first one `every` from now.
    pub fn ping_every(&mut self, to: Ipv4Addr, every: Duration, now: Instant) {
        self.pinger = Some(Pinger {
            to,
            every,
            next_at: now + every,
            seq: 0,
        });
    }

    /// Pings sent so far.
    pub fn pings_sent(&self) -> u16 {
        self.pinger.as_ref().map_or(0, |p| p.seq)
    }

    /// Everything the tun received.
    pub fn delivered(&self) -> &[Delivered] {
        &self.io.tun
    }

    /// Keepalives sent straight to `dst` (punches, when `dst` is a candidate of a peer whose
    /// direct path is not up), with their times.
    pub fn keepalives_to(&self, dst: SocketAddr) -> Vec<Instant> {
        self.io
            .keepalives
            .iter()
            .filter(|(_, d)| *d == dst)
            .map(|(at, _)| *at)
            .collect()
    }

    /// Whether the relay client at `relay` is bound.
    pub fn is_bound_at(&self, relay: SocketAddr) -> bool {
        self.relays
            .states()
            .iter()
            .any(|s| s.relay == relay && s.bound)
    }

    /// What the data plane loop does after every input: relay timers, relay transmits, relay
    /// news (bindings to the table, ticket requests answered at once).
    fn pump_relays(&mut self, now: Instant) {
        if self.relays.poll_timeout().is_some_and(|t| t <= now) {
            self.relays.handle_timeout(now);
        }
        let (local, outbox) = (self.local, &mut self.io.outbox);
        self.relays.poll_transmit(now, |payload, dst| {
            outbox.push_back(Datagram {
                src: local,
                dst,
                payload: payload.to_vec(),
            })
        });
        while let Some(news) = self.relays.poll_event() {
            match news {
                RelayNews::NeedTicket => {
                    let grant = self.desk.grant(self.key, now);
                    self.relays.handle_grant(grant, now);
                }
                RelayNews::Changed(_) => {
                    let bound = self.relays.bound();
                    self.table.set_bound_relays(bound, now, &mut self.io);
                }
            }
        }
        // A new ticket or binding may have something to send.
        let outbox = &mut self.io.outbox;
        self.relays.poll_transmit(now, |payload, dst| {
            outbox.push_back(Datagram {
                src: local,
                dst,
                payload: payload.to_vec(),
            })
        });
    }

    fn ping(&mut self, now: Instant) {
        let Some(p) = self.pinger.as_mut() else {
            return;
        };
        if now < p.next_at {
            return;
        }
        p.seq += 1;
        p.next_at = now + p.every;
        let packet = ping_packet(self.vip, p.to, p.seq);
        self.table.handle_tun_packet(&packet, now, &mut self.io);
    }
}

/// An ICMP echo request from `src` to `dst` with sequence number `seq`.
pub fn ping_packet(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20] = 8;
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p
}

/// The sequence number of a packet made by [`ping_packet`].
pub fn ping_seq(packet: &[u8]) -> Option<u16> {
    (packet.len() == 28 && packet[9] == 1 && packet[20] == 8)
        .then(|| u16::from_be_bytes([packet[26], packet[27]]))
}

impl Node for MemberNode {
    fn handle_datagram(&mut self, d: Datagram, now: Instant) {
        if d.dst != self.local || crate::wire::stun::is_stun(&d.payload) {
            return;
        }
        self.io.now = now;
        if frame::is_relay_frame(&d.payload) {
            if let Some(got) = self.relays.handle_datagram(d.src, &d.payload, now) {
                let source = Source::Relayed {
                    relay: d.src,
                    from: got.from,
                };
                self.io.via = Via::Relay;
                self.table
                    .handle_datagram(got.payload, source, now, &mut self.io);
            }
        } else {
            self.io.via = Via::Direct;
            self.table
                .handle_datagram(&d.payload, Source::Direct(d.src), now, &mut self.io);
        }
        self.pump_relays(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.io.now = now;
        if now >= self.next_tick {
            self.table.update_timers(now, &mut self.io);
            self.next_tick = now + TICK;
        }
        self.ping(now);
        self.pump_relays(now);
    }

    fn poll_transmit(&mut self) -> Option<Datagram> {
        self.io.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_tick;
        if let Some(t) = self.relays.poll_timeout() {
            next = next.min(t);
        }
        if let Some(p) = &self.pinger {
            next = next.min(p.next_at);
        }
        Some(next)
    }
}

/// The real relay core on one address.
pub struct RelayNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The core.
    pub relay: Relay,
    desk: TicketDesk,
    outbox: VecDeque<Datagram>,
}

impl RelayNode {
    /// A relay at `addr` with the default limits.
    pub fn new(addr: SocketAddr, desk: TicketDesk, now: Instant) -> RelayNode {
        let now = Now {
            at: now,
            unix_ms: desk.unix_ms(now),
        };
        RelayNode {
            addr,
            relay: Relay::new(Config::default(), RELAY_SECRET, now),
            desk,
            outbox: VecDeque::new(),
        }
    }

    fn now(&self, at: Instant) -> Now {
        Now {
            at,
            unix_ms: self.desk.unix_ms(at),
        }
    }
}

impl Node for RelayNode {
    fn handle_datagram(&mut self, d: Datagram, now: Instant) {
        if d.dst != self.addr {
            return;
        }
        let mut buf = d.payload;
        let now = self.now(now);
        if let Some(t) = self.relay.handle_datagram(d.src, &mut buf, now) {
            self.outbox.push_back(Datagram {
                src: self.addr,
                dst: t.dst,
                payload: t.payload.to_vec(),
            });
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let now = self.now(now);
        self.relay.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Datagram> {
        self.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.relay.poll_timeout())
    }
}
