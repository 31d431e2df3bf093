//! The peer table: one `boringtun::noise::Tunn` per peer, routing by virtual IP, demultiplexing
//! of the shared UDP socket by receiver index, the allowed-IP check and endpoint learning.
//!
//! It owns no socket: output goes through the [`Io`] the caller passes in, so the data plane
//! loop does the real I/O and tests use a recording sink.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::Ipv4Net;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::identity::Key;
use crate::wire::ip::Ipv4View;
use crate::wire::wg::{self, Datagram};

/// Keepalive interval; below Linux's 30 s timeout for unreplied UDP flows.
pub const PERSISTENT_KEEPALIVE_S: u16 = 25;
/// Scratch buffer size: the largest datagram plus WireGuard overhead.
pub const BUF_LEN: usize = 65_535 + 32;
/// A handshake younger than this means the session is up (WireGuard's REJECT_AFTER_TIME).
const SESSION_LIFETIME: Duration = Duration::from_secs(180);
/// Handshake messages per second (all peers together) before cookies are demanded
/// (WireGuard whitepaper §5.3, boringtun's limiter).
const HANDSHAKES_PER_SECOND: u64 = 100;
/// The limiter counts per second; `update_timers` runs every 250 ms.
const TICKS_PER_LIMITER_RESET: u32 = 4;

/// Where the data plane sends its output.
pub trait Io {
    /// Sends one datagram on the shared UDP socket.
    fn send_to(&mut self, payload: &[u8], dst: SocketAddr);
    /// Writes one IP packet to the tun device.
    fn write_tun(&mut self, packet: &[u8]);
}

/// What the control thread tells the data plane about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Member id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// WireGuard public key.
    pub public_key: Key,
    /// The only source address accepted from this peer's tunnel.
    pub virtual_ip: Ipv4Addr,
    /// Candidate addresses of its UDP socket.
    pub endpoints: Vec<SocketAddr>,
}

/// A snapshot of one peer for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The peer's configuration.
    pub config: PeerConfig,
    /// Endpoint learned from authenticated traffic, if any.
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake.
    pub since_handshake: Option<Duration>,
    /// Bytes received through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent through the tunnel.
    pub tx_bytes: u64,
    /// Round-trip time of the last handshake, in milliseconds.
    pub handshake_rtt_ms: Option<u32>,
}

impl PeerStats {
    /// Whether a session is up (a handshake completed recently).
    pub fn is_connected(&self) -> bool {
        self.since_handshake.is_some_and(|d| d < SESSION_LIFETIME)
    }
}

/// Packets the table dropped, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropCounters {
    /// Tun packets to an address no peer owns (or not IPv4).
    pub no_route: u64,
    /// Decrypted packets whose source is not the peer's virtual IP.
    pub bad_source: u64,
    /// Decrypted packets for an address other than ours, the party broadcast or multicast
    /// (a member may not route into our other networks).
    pub bad_destination: u64,
    /// Datagrams that are not WireGuard, name no known peer, or fail to authenticate.
    pub bad_datagram: u64,
}

struct Peer {
    config: PeerConfig,
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
}

impl Peer {
    /// Sends to the learned endpoint, or to every candidate until one answers.
    fn transmit(&self, payload: &[u8], io: &mut impl Io) {
        match self.endpoint {
            Some(dst) => io.send_to(payload, dst),
            None => {
                for dst in &self.config.endpoints {
                    io.send_to(payload, *dst);
                }
            }
        }
    }
}

/// All peers of this member.
pub struct PeerTable {
    secret: StaticSecret,
    public: PublicKey,
    own_ip: Ipv4Addr,
    subnet: Ipv4Net,
    limiter: Arc<RateLimiter>,
    ticks: u32,
    peers: HashMap<u32, Peer>,
    by_ip: HashMap<Ipv4Addr, u32>,
    by_key: HashMap<Key, u32>,
    next_index: u32,
    buf: Vec<u8>,
    /// What was dropped and why.
    pub drops: DropCounters,
}

impl PeerTable {
    /// An empty table for the member holding `secret`, at `own_ip` in `subnet`.
    pub fn new(secret: StaticSecret, own_ip: Ipv4Addr, subnet: Ipv4Net) -> PeerTable {
        let public = PublicKey::from(&secret);
        PeerTable {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            ticks: 0,
            own_ip,
            subnet,
            secret,
            public,
            peers: HashMap::new(),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
            next_index: 1,
            buf: vec![0; BUF_LEN],
            drops: DropCounters::default(),
        }
    }

    /// Makes the table match `configs`: adds new peers (and starts a handshake with each, so
    /// tunnels are up before the first packet), updates known ones, removes the rest.
    /// Our own key is ignored.
    pub fn sync(&mut self, configs: Vec<PeerConfig>, io: &mut impl Io) {
        let own = Key(self.public.to_bytes());
        let wanted: HashMap<Key, PeerConfig> = configs
            .into_iter()
            .filter(|c| c.public_key != own)
            .map(|c| (c.public_key, c))
            .collect();
        let gone: Vec<Key> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(index) = self.by_key.remove(&key) {
                if let Some(peer) = self.peers.remove(&index) {
                    self.by_ip.remove(&peer.config.virtual_ip);
                    log::info!(
                        "peer {} ({}) removed",
                        peer.config.name,
                        peer.config.virtual_ip
                    );
                }
            }
        }
        for (key, config) in wanted {
            match self.by_key.get(&key).and_then(|i| self.peers.get_mut(i)) {
                Some(peer) => {
                    if peer.config.virtual_ip != config.virtual_ip {
                        self.by_ip.remove(&peer.config.virtual_ip);
                        self.by_ip.insert(config.virtual_ip, self.by_key[&key]);
                    }
                    if peer.config.endpoints != config.endpoints
                        && !peer.endpoint.is_some_and(|e| config.endpoints.contains(&e))
                    {
                        peer.endpoint = None;
                    }
                    peer.config = config;
                }
                None => self.add(config, io),
            }
        }
    }

    fn add(&mut self, config: PeerConfig, io: &mut impl Io) {
        let index = self.next_index;
        self.next_index = (self.next_index % 0x00ff_ffff) + 1;
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(config.public_key.0),
            None,
            Some(PERSISTENT_KEEPALIVE_S),
            index,
            Some(self.limiter.clone()),
        );
        log::info!("peer {} ({}) added", config.name, config.virtual_ip);
        self.by_ip.insert(config.virtual_ip, index);
        self.by_key.insert(config.public_key, index);
        let mut peer = Peer {
            config,
            tunn,
            endpoint: None,
        };
        if let TunnResult::WriteToNetwork(out) =
            peer.tunn.format_handshake_initiation(&mut self.buf, false)
        {
            peer.transmit(out, io);
        }
        self.peers.insert(index, peer);
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Encrypts a packet read from the tun and sends it to the peer owning its destination.
    pub fn handle_tun_packet(&mut self, packet: &[u8], io: &mut impl Io) {
        let Some(index) = Ipv4View::parse(packet)
            .ok()
            .and_then(|ip| self.by_ip.get(&ip.dst()))
        else {
            self.drops.no_route += 1;
            return;
        };
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        match peer.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(out) => peer.transmit(out, io),
            TunnResult::Err(e) => log::debug!("encapsulate for {}: {e:?}", peer.config.name),
            _ => {}
        }
    }

    /// Handles a datagram from the shared UDP socket.
    pub fn handle_datagram(&mut self, datagram: &[u8], src: SocketAddr, io: &mut impl Io) {
        let index = match wg::classify(datagram) {
            Datagram::ToIndex(receiver) => Some(receiver >> 8),
            Datagram::HandshakeInit => {
                // MAC1 (and, under load, a cookie) before any expensive key exchange.
                match self
                    .limiter
                    .verify_packet(Some(src.ip()), datagram, &mut self.buf)
                {
                    Ok(_) => self.initiator_index(datagram),
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        io.send_to(cookie, src);
                        return;
                    }
                    Err(_) => None,
                }
            }
            Datagram::Unknown => None,
        };
        let Some(peer) = index.and_then(|i| self.peers.get_mut(&i)) else {
            self.drops.bad_datagram += 1;
            log::trace!("dropped {} byte datagram from {src}", datagram.len());
            return;
        };
        let buf = &mut self.buf;
        match peer.tunn.decapsulate(Some(src.ip()), datagram, buf) {
            TunnResult::WriteToNetwork(out) => {
                // A cookie reply (type 3) is sent before authentication; anything else means
                // the handshake message authenticated, so the peer is really at `src`.
                if out.first() != Some(&3) {
                    learn_endpoint(peer, src);
                }
                io.send_to(out, src);
                while let TunnResult::WriteToNetwork(out) = peer.tunn.decapsulate(None, &[], buf) {
                    io.send_to(out, src);
                }
            }
            TunnResult::WriteToTunnelV4(packet, source) => {
                learn_endpoint(peer, src);
                let dst = Ipv4View::parse(packet).map(|ip| ip.dst()).ok();
                let for_us = dst.is_some_and(|d| {
                    d == self.own_ip
                        || d == self.subnet.broadcast()
                        || d.is_broadcast()
                        || d.is_multicast()
                });
                if source != peer.config.virtual_ip {
                    self.drops.bad_source += 1;
                    log::trace!(
                        "dropped packet from {source} inside {}'s tunnel",
                        peer.config.name
                    );
                } else if !for_us {
                    self.drops.bad_destination += 1;
                    log::trace!(
                        "dropped packet to {dst:?} from {}: not ours",
                        peer.config.name
                    );
                } else {
                    io.write_tun(packet);
                }
            }
            TunnResult::WriteToTunnelV6(..) => self.drops.bad_source += 1,
            TunnResult::Done => learn_endpoint_on_keepalive(peer, datagram, src),
            TunnResult::Err(e) => {
                self.drops.bad_datagram += 1;
                log::debug!("decapsulate from {}: {e:?}", peer.config.name);
            }
        }
    }

    fn initiator_index(&self, datagram: &[u8]) -> Option<u32> {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) else {
            return None;
        };
        let half = parse_handshake_anon(&self.secret, &self.public, &init).ok()?;
        self.by_key.get(&Key(half.peer_static_public)).copied()
    }

    /// Runs WireGuard's timers (call about every 250 ms): handshakes, keepalives, rekeys.
    pub fn update_timers(&mut self, io: &mut impl Io) {
        self.ticks += 1;
        if self.ticks >= TICKS_PER_LIMITER_RESET {
            self.ticks = 0;
            self.limiter.reset_count();
        }
        for peer in self.peers.values_mut() {
            match peer.tunn.update_timers(&mut self.buf) {
                TunnResult::WriteToNetwork(out) => peer.transmit(out, io),
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => log::debug!("timers for {}: {e:?}", peer.config.name),
                _ => {}
            }
        }
    }

    /// Snapshots every peer, ordered by virtual IP.
    pub fn stats(&self) -> Vec<PeerStats> {
        let mut out: Vec<PeerStats> = self
            .peers
            .values()
            .map(|p| {
                let (since, tx, rx, _loss, rtt) = p.tunn.stats();
                PeerStats {
                    config: p.config.clone(),
                    endpoint: p.endpoint,
                    since_handshake: since,
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                    handshake_rtt_ms: rtt,
                }
            })
            .collect();
        out.sort_by_key(|s| s.config.virtual_ip);
        out
    }
}

fn learn_endpoint(peer: &mut Peer, src: SocketAddr) {
    if peer.endpoint != Some(src) {
        log::debug!("peer {} is at {src}", peer.config.name);
        peer.endpoint = Some(src);
    }
}

/// A keepalive decapsulates to `Done`; it is authenticated transport data, so it also pins the
/// endpoint. Handshake responses are followed by our keepalive and need no special case.
fn learn_endpoint_on_keepalive(peer: &mut Peer, datagram: &[u8], src: SocketAddr) {
    if datagram.first() == Some(&4) {
        learn_endpoint(peer, src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        sent: Vec<(Vec<u8>, SocketAddr)>,
        tun: Vec<Vec<u8>>,
    }

    impl Io for Recorder {
        fn send_to(&mut self, payload: &[u8], dst: SocketAddr) {
            self.sent.push((payload.to_vec(), dst));
        }
        fn write_tun(&mut self, packet: &[u8]) {
            self.tun.push(packet.to_vec());
        }
    }

    struct Node {
        table: PeerTable,
        key: Key,
        vip: Ipv4Addr,
        addr: SocketAddr,
        io: Recorder,
    }

    fn node(n: u8) -> Node {
        let secret = StaticSecret::from([n; 32]);
        let key = Key(PublicKey::from(&secret).to_bytes());
        Node {
            table: PeerTable::new(
                secret,
                Ipv4Addr::new(10, 66, 0, n),
                "10.66.0.0/16".parse().unwrap(),
            ),
            key,
            vip: Ipv4Addr::new(10, 66, 0, n),
            addr: SocketAddr::from(([192, 168, 1, n], 5000 + u16::from(n))),
            io: Recorder::default(),
        }
    }

    fn config_of(n: &Node, endpoints: Vec<SocketAddr>) -> PeerConfig {
        PeerConfig {
            id: n.key.short_id(),
            name: format!("n{}", n.vip.octets()[3]),
            public_key: n.key,
            virtual_ip: n.vip,
            endpoints,
        }
    }

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// Two nodes that know each other; A knows B at `b_endpoints`. Their first handshake
    /// initiations are in their outboxes.
    fn pair(b_endpoints: Vec<SocketAddr>) -> (Node, Node) {
        let mut a = node(1);
        let mut b = node(2);
        a.table.sync(
            vec![config_of(&b, b_endpoints), config_of(&a, vec![])],
            &mut a.io,
        );
        b.table.sync(vec![config_of(&a, vec![a.addr])], &mut b.io);
        (a, b)
    }

    /// Delivers everything `from` sent to `to`'s address; returns how many datagrams.
    fn deliver(from: &mut Node, to: &mut Node) -> usize {
        let sent: Vec<_> = from
            .io
            .sent
            .drain(..)
            .filter(|(_, dst)| *dst == to.addr)
            .collect();
        for (payload, _) in &sent {
            to.table.handle_datagram(payload, from.addr, &mut to.io);
        }
        sent.len()
    }

    fn exchange(a: &mut Node, b: &mut Node) {
        for _ in 0..3 {
            deliver(a, b);
            deliver(b, a);
        }
    }

    #[test]
    fn packet_sent_during_handshake_arrives_once() {
        let (mut a, mut b) = pair(vec![node(2).addr]);
        let ping = ipv4(a.vip, b.vip, b"hello");
        a.table.handle_tun_packet(&ping, &mut a.io);
        exchange(&mut a, &mut b);
        assert_eq!(
            b.io.tun,
            vec![ping],
            "queued packet delivered once, unchanged"
        );
        let stats = a.table.stats();
        assert_eq!(stats[0].endpoint, Some(b.addr));
        assert!(stats[0].is_connected());
    }

    #[test]
    fn peers_handshake_as_soon_as_they_learn_of_each_other() {
        let (mut a, mut b) = pair(vec![node(2).addr]);
        assert_eq!(a.io.sent.len(), 1, "A initiates at once");
        assert_eq!(b.io.sent.len(), 1, "B initiates at once");
        exchange(&mut a, &mut b);
        assert!(a.table.stats()[0].is_connected());
        assert!(b.table.stats()[0].is_connected());
        assert!(
            a.io.tun.is_empty() && b.io.tun.is_empty(),
            "no data was invented"
        );
        let ping = ipv4(a.vip, b.vip, b"after");
        a.table.handle_tun_packet(&ping, &mut a.io);
        deliver(&mut a, &mut b);
        assert_eq!(b.io.tun, vec![ping]);
    }

    #[test]
    fn handshake_goes_to_every_candidate_until_one_answers() {
        let other = SocketAddr::from(([198, 51, 100, 7], 9));
        let (mut a, mut b) = pair(vec![other, node(2).addr]);
        let dsts: Vec<_> = a.io.sent.iter().map(|(_, d)| *d).collect();
        assert_eq!(dsts, vec![other, b.addr]);
        exchange(&mut a, &mut b);
        a.table
            .handle_tun_packet(&ipv4(a.vip, b.vip, b"x"), &mut a.io);
        let dsts: Vec<_> = a.io.sent.iter().map(|(_, d)| *d).collect();
        assert_eq!(dsts, vec![b.addr], "only the endpoint that answered");
    }

    #[test]
    fn spoofed_inner_source_is_dropped() {
        let (mut a, mut b) = pair(vec![node(2).addr]);
        exchange(&mut a, &mut b);
        let spoofed = ipv4(Ipv4Addr::new(10, 66, 0, 99), b.vip, b"evil");
        a.table.handle_tun_packet(&spoofed, &mut a.io);
        deliver(&mut a, &mut b);
        assert!(b.io.tun.is_empty());
        assert_eq!(b.table.drops.bad_source, 1);
    }

    #[test]
    fn packets_for_other_networks_are_not_routed_into_ours() {
        for target in [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(10, 66, 0, 3)] {
            let mut a = node(1);
            let mut b = node(2);
            // A misbehaves: it routes `target` into B's tunnel.
            let mut b_as_target = config_of(&b, vec![b.addr]);
            b_as_target.virtual_ip = target;
            a.table.sync(vec![b_as_target], &mut a.io);
            b.table.sync(vec![config_of(&a, vec![a.addr])], &mut b.io);
            exchange(&mut a, &mut b);
            a.table
                .handle_tun_packet(&ipv4(a.vip, target, b"sneaky"), &mut a.io);
            assert_eq!(deliver(&mut a, &mut b), 1);
            assert!(
                b.io.tun.is_empty(),
                "{target} is not B's to receive: {:?}",
                b.io.tun
            );
            assert_eq!(b.table.drops.bad_destination, 1);
        }
    }

    #[test]
    fn handshake_initiations_with_a_bad_mac_cost_nothing_and_get_nothing() {
        let (_a, mut b) = pair(vec![node(2).addr]);
        b.io.sent.clear();
        let mut junk = [0x5au8; 148];
        junk[..4].copy_from_slice(&[1, 0, 0, 0]);
        for _ in 0..1000 {
            b.table.handle_datagram(&junk, node(9).addr, &mut b.io);
        }
        assert!(b.io.sent.is_empty());
        assert_eq!(b.table.drops.bad_datagram, 1000);
    }

    #[test]
    fn junk_and_unknown_destinations_are_counted_not_answered() {
        let (mut a, _b) = pair(vec![]);
        a.table
            .handle_datagram(&[4, 0, 0, 0, 9, 9, 9, 9], node(9).addr, &mut a.io);
        a.table
            .handle_datagram(&[0u8; 148], node(9).addr, &mut a.io);
        assert_eq!(a.table.drops.bad_datagram, 2);
        a.table
            .handle_tun_packet(&ipv4(a.vip, Ipv4Addr::new(10, 66, 0, 50), b"x"), &mut a.io);
        assert_eq!(a.table.drops.no_route, 1);
        assert!(a.io.sent.is_empty() && a.io.tun.is_empty());
    }

    #[test]
    fn handshake_from_a_stranger_is_ignored() {
        let (_a, mut b) = pair(vec![node(2).addr]);
        let mut stranger = node(3);
        b.io.sent.clear();
        stranger
            .table
            .sync(vec![config_of(&b, vec![b.addr])], &mut stranger.io);
        assert_eq!(deliver(&mut stranger, &mut b), 1);
        assert!(b.io.sent.is_empty(), "no response to an unknown key");
        assert_eq!(b.table.drops.bad_datagram, 1);
    }

    #[test]
    fn sync_removes_departed_peers_and_their_routes() {
        let (mut a, b) = pair(vec![node(2).addr]);
        assert_eq!(a.table.len(), 1, "own key is never a peer");
        a.table.sync(vec![], &mut a.io);
        assert!(a.table.is_empty());
        a.table
            .handle_tun_packet(&ipv4(a.vip, b.vip, b"x"), &mut a.io);
        assert_eq!(a.table.drops.no_route, 1);
    }
}
