//! The peer table: one `boringtun::noise::Tunn` per peer, routing by virtual IP, demultiplexing
//! of the shared UDP socket by receiver index, the allowed-IP check and endpoint learning.
//!
//! It owns no socket: output goes through the [`Io`] the caller passes in, so the data plane
//! loop does the real I/O and tests use a recording sink.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::Ipv4Net;
use x25519_dalek::{PublicKey, StaticSecret};

use super::broadcast::{self, Dedup, OwnBroadcast, RateLimit};
use super::health::Thresholds;
use super::peer::{Peer, Source};
use crate::identity::Key;
use crate::nat::Prediction;
use crate::wire::ip::Ipv4View;
use crate::wire::probe;
use crate::wire::relay::MemberId;
use crate::wire::wg::{self, Datagram};

#[path = "peers_cleanup.rs"]
mod cleanup;
#[path = "peers_stats.rs"]
mod stats;
pub use cleanup::{REVIVE_CLEANED_EVERY, REVIVE_WINDOW};
pub use stats::PeerStats;

/// Keepalive interval; below Linux's 30 s timeout for unreplied UDP flows.
pub const PERSISTENT_KEEPALIVE_S: u16 = 25;
/// Scratch buffer size: the largest datagram plus WireGuard overhead.
pub const BUF_LEN: usize = 65_535 + 32;
/// Handshake messages per second (all peers together) before cookies are demanded
/// (WireGuard whitepaper §5.3, boringtun's limiter).
const HANDSHAKES_PER_SECOND: u64 = 100;
/// The limiter counts handshakes per this period.
const LIMITER_PERIOD: Duration = Duration::from_secs(1);
/// IGMP: group membership reports are about the link they are sent on, not the party's.
const IP_PROTO_IGMP: u8 = 2;

/// Where the data plane sends its output.
pub trait Io {
    /// Sends one datagram on the shared UDP socket.
    fn send_to(&mut self, payload: &[u8], dst: SocketAddr);
    /// Sends one datagram for member `to` through the relay at `relay`.
    fn send_relayed(&mut self, payload: &[u8], relay: SocketAddr, to: MemberId);
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
    /// Candidate addresses of its UDP socket (local addresses).
    pub endpoints: Vec<SocketAddr>,
    /// Its public (server-reflexive) address, a candidate too.
    pub public_endpoint: Option<SocketAddr>,
    /// The relay we meet it at.
    pub relay: Option<SocketAddr>,
    /// Whether punching can work between our NATs.
    pub prediction: Prediction,
}

/// Packets the table dropped, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropCounters {
    /// Tun packets to an address no peer owns, not IPv4, or broadcasts with a source other
    /// than our virtual IP.
    pub no_route: u64,
    /// Decrypted packets whose source is not the peer's virtual IP.
    pub bad_source: u64,
    /// Decrypted packets for an address other than ours, the party broadcast or multicast
    /// (a member may not route into our other networks).
    pub bad_destination: u64,
    /// Datagrams that are not WireGuard, name no known peer, or fail to authenticate.
    pub bad_datagram: u64,
}

/// All peers of this member.
pub struct PeerTable {
    secret: StaticSecret,
    public: PublicKey,
    own_ip: Ipv4Addr,
    subnet: Ipv4Net,
    limiter: Arc<RateLimiter>,
    limiter_reset_at: Option<Instant>,
    peers: HashMap<u32, Peer>,
    by_ip: HashMap<Ipv4Addr, u32>,
    by_key: HashMap<Key, u32>,
    next_index: u32,
    buf: Vec<u8>,
    /// Scratch for probes sent while `buf` holds a decrypted packet.
    probe_buf: Vec<u8>,
    broadcast_rate: u32,
    broadcast_out: RateLimit,
    /// Relays we are bound at.
    bound: Vec<SocketAddr>,
    dedup: Dedup,
    thresholds: Thresholds,
    /// Peers removed after failing for `thresholds.cleanup_after`, by key, with when to try
    /// them again: added back for [`REVIVE_WINDOW`] every [`REVIVE_CLEANED_EVERY`] or when
    /// they start a handshake (for good once they answer), and forgotten when the roster
    /// says something new of them.
    cleaned: HashMap<Key, (PeerConfig, Instant)>,
    /// What was dropped and why.
    pub drops: DropCounters,
    /// Our own broadcasts: replicated and dropped.
    pub broadcast: OwnBroadcast,
    /// Direct paths that went from up to down since [`PeerTable::poll_direct_paths_lost`]
    /// last ran: our public mapping may have moved (a NAT rebinding).
    direct_paths_lost: u32,
}

impl PeerTable {
    /// An empty table for the member holding `secret`, at `own_ip` in `subnet`, that sends
    /// (and accepts from each peer) at most `broadcast_rate` broadcast packets per second.
    pub fn new(
        secret: StaticSecret,
        own_ip: Ipv4Addr,
        subnet: Ipv4Net,
        broadcast_rate: u32,
    ) -> PeerTable {
        let public = PublicKey::from(&secret);
        PeerTable {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            limiter_reset_at: None,
            own_ip,
            subnet,
            secret,
            public,
            peers: HashMap::new(),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
            next_index: 1,
            buf: vec![0; BUF_LEN],
            probe_buf: vec![0; 64 + probe::LEN],
            broadcast_rate,
            broadcast_out: RateLimit::new(broadcast_rate),
            bound: Vec::new(),
            dedup: Dedup::default(),
            thresholds: Thresholds::default(),
            cleaned: HashMap::new(),
            drops: DropCounters::default(),
            broadcast: OwnBroadcast::default(),
            direct_paths_lost: 0,
        }
    }

    /// The same table, with these health thresholds.
    pub fn with_thresholds(mut self, thresholds: Thresholds) -> PeerTable {
        self.set_thresholds(thresholds);
        self
    }

    /// Replaces the health thresholds.
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// Makes the table match `configs`: adds new peers (and starts a handshake with each, so
    /// tunnels are up before the first packet), updates known ones, removes the rest.
    /// Our own key is ignored.
    pub fn sync(&mut self, configs: Vec<PeerConfig>, now: Instant, io: &mut impl Io) {
        let own = Key(self.public.to_bytes());
        let wanted: HashMap<Key, PeerConfig> = configs
            .into_iter()
            .filter(|c| c.public_key != own)
            .map(|c| (c.public_key, c))
            .collect();
        // A cleaned-up peer stays out while the roster says the same of it.
        self.cleaned
            .retain(|key, (config, _)| wanted.get(key).is_some_and(|w| w == config));
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
                    let reachable_anew = config.endpoints != peer.config.endpoints
                        || config.public_endpoint != peer.config.public_endpoint
                        || config.relay != peer.config.relay;
                    peer.config = config;
                    peer.choose_relay(&self.bound, now);
                    if reachable_anew {
                        retry_handshake(peer, &mut self.buf, now, io);
                        punch_anew(peer, &mut self.buf, io);
                    }
                }
                None if self.cleaned.contains_key(&key) => {}
                None => self.add(config, now, io),
            }
        }
    }

    /// Adds a peer and starts a handshake with it.
    fn add(&mut self, config: PeerConfig, now: Instant, io: &mut impl Io) {
        let index = self.insert(config, now);
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        if let TunnResult::WriteToNetwork(out) =
            peer.tunn.format_handshake_initiation(&mut self.buf, false)
        {
            peer.transmit(out, now, io);
        }
    }

    /// Adds a peer; returns its index.
    fn insert(&mut self, config: PeerConfig, now: Instant) -> u32 {
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
        let mut peer = Peer::new(config, tunn, self.own_ip, self.broadcast_rate, now);
        peer.choose_relay(&self.bound, now);
        self.peers.insert(index, peer);
        index
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Encrypts a packet read from the tun and sends it to the peer owning its destination,
    /// or, for a broadcast or multicast destination, to every peer.
    pub fn handle_tun_packet(&mut self, packet: &[u8], now: Instant, io: &mut impl Io) {
        let Ok(ip) = Ipv4View::parse(packet) else {
            self.drops.no_route += 1;
            return;
        };
        let Some(peer) = self
            .by_ip
            .get(&ip.dst())
            .and_then(|index| self.peers.get_mut(index))
        else {
            if broadcast::is_for_everyone(ip.dst(), self.subnet) {
                self.replicate(packet, ip, now, io);
            } else {
                self.drops.no_route += 1;
            }
            return;
        };
        peer.note_traffic(now);
        match peer.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(out) => peer.transmit(out, now, io),
            TunnResult::Err(e) => log::debug!("encapsulate for {}: {e:?}", peer.config.name),
            _ => {}
        }
    }

    /// Sends one copy of a broadcast we originated through every peer's tunnel. Packets from
    /// other sources are never replicated, so nothing received is ever forwarded again.
    fn replicate(&mut self, packet: &[u8], ip: Ipv4View, now: Instant, io: &mut impl Io) {
        if ip.src() != self.own_ip {
            self.drops.no_route += 1;
            return;
        }
        if ip.protocol() == IP_PROTO_IGMP {
            return;
        }
        if !self.broadcast_out.allow(now) {
            self.broadcast.dropped += 1;
            log::trace!("broadcast to {} over the rate limit", ip.dst());
            return;
        }
        self.broadcast.sent += 1;
        for peer in self.peers.values_mut() {
            match peer.tunn.encapsulate(packet, &mut self.buf) {
                TunnResult::WriteToNetwork(out) => peer.transmit(out, now, io),
                TunnResult::Err(e) => {
                    log::debug!("encapsulate for {}: {e:?}", peer.config.name);
                    continue;
                }
                // Queued until the handshake completes.
                _ => {}
            }
            peer.broadcast.sent += 1;
        }
    }

    /// Handles a datagram that came straight from `source`, or through a relay.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        source: Source,
        now: Instant,
        io: &mut impl Io,
    ) {
        let src_ip = source.addr().ip();
        let index = match wg::classify(datagram) {
            Datagram::ToIndex(receiver) => Some(receiver >> 8),
            Datagram::HandshakeInit => {
                // MAC1 (and, under load, a cookie) before any expensive key exchange.
                match self
                    .limiter
                    .verify_packet(Some(src_ip), datagram, &mut self.buf)
                {
                    Ok(_) => self.initiator_index(datagram, now),
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        source.reply(cookie, io);
                        return;
                    }
                    Err(_) => None,
                }
            }
            Datagram::Unknown => None,
        };
        let peer = index
            .and_then(|i| self.peers.get_mut(&i))
            .filter(|p| match source {
                // A relay names the sender; it must be the peer the datagram is for.
                Source::Relayed { from, .. } => from == p.member,
                Source::Direct(_) => true,
            });
        let Some(peer) = peer else {
            self.drops.bad_datagram += 1;
            log::trace!("dropped {} byte datagram from {source:?}", datagram.len());
            return;
        };
        let buf = &mut self.buf;
        match peer.tunn.decapsulate(Some(src_ip), datagram, buf) {
            TunnResult::WriteToNetwork(out) => {
                // A cookie reply (type 3) is sent before authentication; anything else means
                // the handshake message authenticated, so the peer is really at `source`.
                if out.first() != Some(&3) {
                    peer.handle_authenticated(source, datagram.len(), now);
                }
                source.reply(out, io);
                while let TunnResult::WriteToNetwork(out) = peer.tunn.decapsulate(None, &[], buf) {
                    peer.transmit(out, now, io);
                }
            }
            TunnResult::WriteToTunnelV4(packet, inner_source) => {
                peer.handle_authenticated(source, datagram.len(), now);
                let dst = Ipv4View::parse(packet).map(|ip| ip.dst()).ok();
                if inner_source == peer.config.virtual_ip && probe::is_probe_protocol(packet) {
                    // Ours to answer or to measure with; never for the tun.
                    if let Some(p) = probe::parse(packet) {
                        peer.handle_probe(p, source, &mut self.probe_buf, now, io);
                    }
                    peer.poll_probes(&mut self.probe_buf, now, io);
                } else if inner_source != peer.config.virtual_ip {
                    self.drops.bad_source += 1;
                    log::trace!(
                        "dropped packet from {inner_source} inside {}'s tunnel",
                        peer.config.name
                    );
                } else if dst == Some(self.own_ip) {
                    peer.note_traffic(now);
                    io.write_tun(packet);
                } else if dst.is_some_and(|d| broadcast::is_for_everyone(d, self.subnet)) {
                    // Duplicates first, so a second copy costs the sender no allowance.
                    if self.dedup.first_time(packet, now) && peer.broadcast_in.allow(now) {
                        peer.broadcast.received += 1;
                        io.write_tun(packet);
                    } else {
                        peer.broadcast.dropped += 1;
                    }
                } else {
                    self.drops.bad_destination += 1;
                    log::trace!(
                        "dropped packet to {dst:?} from {}: not ours",
                        peer.config.name
                    );
                }
            }
            TunnResult::WriteToTunnelV6(..) => self.drops.bad_source += 1,
            // A keepalive decapsulates to `Done`: authenticated transport data all the same.
            // (Handshake responses are followed by our keepalive and need no special case.)
            // A punch from a new or unproven direct source makes a direct probe due at once,
            // which is what moves both sides to the direct path.
            TunnResult::Done => {
                if datagram.first() == Some(&4) {
                    peer.handle_authenticated(source, datagram.len(), now);
                    peer.poll_probes(&mut self.probe_buf, now, io);
                }
            }
            TunnResult::Err(e) => {
                self.drops.bad_datagram += 1;
                log::debug!("decapsulate from {}: {e:?}", peer.config.name);
            }
        }
    }

    /// Notes which relays we are bound at; peers that meet us there may use them.
    /// A peer newly reachable through a relay gets a handshake through it at once.
    pub fn set_bound_relays(&mut self, bound: Vec<SocketAddr>, now: Instant, io: &mut impl Io) {
        for peer in self.peers.values_mut() {
            let had = peer.relay.is_some();
            peer.choose_relay(&bound, now);
            if peer.relay.is_some() && !had {
                retry_handshake(peer, &mut self.buf, now, io);
            }
        }
        self.bound = bound;
    }

    /// The peer a handshake initiation is from. A cleaned-up peer that starts a handshake is
    /// back: it is added again (with the roster's last word on it).
    fn initiator_index(&mut self, datagram: &[u8], now: Instant) -> Option<u32> {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) else {
            return None;
        };
        let half = parse_handshake_anon(&self.secret, &self.public, &init).ok()?;
        let key = Key(half.peer_static_public);
        if let Some((config, _)) = self.cleaned.remove(&key) {
            log::info!(
                "peer {} ({}) starts a handshake: added back",
                config.name,
                config.virtual_ip
            );
            let index = self.insert(config, now);
            if let Some(peer) = self.peers.get_mut(&index) {
                peer.revived_at = Some(now);
            }
        }
        self.by_key.get(&key).copied()
    }

    /// Runs WireGuard's timers (every 250 ms while traffic flows, every second or so when
    /// idle): handshakes, keepalives, rekeys; and resets the handshake limiter once a second.
    pub fn update_timers(&mut self, now: Instant, io: &mut impl Io) {
        if self
            .limiter_reset_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LIMITER_PERIOD)
        {
            self.limiter_reset_at = Some(now);
            self.limiter.reset_count();
        }
        for peer in self.peers.values_mut() {
            match peer.tunn.update_timers(&mut self.buf) {
                TunnResult::WriteToNetwork(out) => peer.transmit(out, now, io),
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => log::debug!("timers for {}: {e:?}", peer.config.name),
                _ => {}
            }
            let session_up = peer.session_up();
            if peer.poll_punch(session_up, now) {
                peer.punch(&mut self.buf, io);
            }
            if peer.poll_health(&self.bound, &self.thresholds, now) {
                self.direct_paths_lost += 1;
            }
            peer.poll_probes(&mut self.buf, now, io);
            if peer.poll_revive(now) {
                retry_handshake(peer, &mut self.buf, now, io);
            }
        }
        self.clean_up(now);
        self.retry_cleaned(now, io);
    }

    /// The earliest probe due on a suspect path, if any: [`PeerTable::update_timers`] should
    /// run then, even between idle ticks, so a path that stopped answering is found out at
    /// the probe rate, not the tick rate.
    pub fn urgent_probe_at(&self) -> Option<Instant> {
        self.peers.values().filter_map(Peer::urgent_probe_at).min()
    }

    /// How many direct paths went from up to down since the last call (in
    /// [`PeerTable::update_timers`]); resets the count.
    pub fn poll_direct_paths_lost(&mut self) -> u32 {
        std::mem::take(&mut self.direct_paths_lost)
    }
}

/// A peer without a session whose candidates or relay just changed gets a new handshake
/// initiation now, sent everywhere it may be, instead of at WireGuard's next retry (5 s): the
/// first one may have gone out before its public endpoint or our meeting relay was known.
fn retry_handshake(peer: &mut Peer, buf: &mut [u8], now: Instant, io: &mut impl Io) {
    if peer.session_up() {
        return;
    }
    if let TunnResult::WriteToNetwork(out) = peer.tunn.format_handshake_initiation(buf, true) {
        peer.transmit(out, now, io);
    }
}

/// A peer with a session whose candidates just changed (its NAT moved it to a new public
/// port, say) is punched at once, even while our direct path to it still looks usable: that
/// path is likely dead, but we would notice only when its next probe goes unanswered (15 s
/// away when no traffic flows), and the peer's packets from its new port get through our NAT
/// only once we have sent there. A few keepalives per roster change cost nothing.
fn punch_anew(peer: &mut Peer, buf: &mut [u8], io: &mut impl Io) {
    if peer.session_up() {
        peer.punch(buf, io);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::health::PathState;

    #[derive(Default)]
    struct Recorder {
        sent: Vec<(Vec<u8>, SocketAddr)>,
        relayed: Vec<(Vec<u8>, SocketAddr, MemberId)>,
        tun: Vec<Vec<u8>>,
    }

    impl Io for Recorder {
        fn send_to(&mut self, payload: &[u8], dst: SocketAddr) {
            self.sent.push((payload.to_vec(), dst));
        }
        fn send_relayed(&mut self, payload: &[u8], relay: SocketAddr, to: MemberId) {
            self.relayed.push((payload.to_vec(), relay, to));
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
        now: Instant,
    }

    impl Node {
        fn tun_in(&mut self, packet: &[u8]) {
            self.table.handle_tun_packet(packet, self.now, &mut self.io);
        }
    }

    fn node(n: u8) -> Node {
        node_with_rate(n, broadcast::DEFAULT_RATE_PER_S)
    }

    fn node_with_rate(n: u8, broadcast_rate: u32) -> Node {
        let secret = StaticSecret::from([n; 32]);
        let key = Key(PublicKey::from(&secret).to_bytes());
        Node {
            table: PeerTable::new(
                secret,
                Ipv4Addr::new(10, 66, 0, n),
                "10.66.0.0/16".parse().unwrap(),
                broadcast_rate,
            ),
            key,
            vip: Ipv4Addr::new(10, 66, 0, n),
            addr: SocketAddr::from(([192, 168, 1, n], 5000 + u16::from(n))),
            io: Recorder::default(),
            now: Instant::now(),
        }
    }

    fn config_of(n: &Node, endpoints: Vec<SocketAddr>) -> PeerConfig {
        PeerConfig {
            public_endpoint: None,
            relay: None,
            prediction: Prediction::Direct,
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
            a.now,
            &mut a.io,
        );
        b.table
            .sync(vec![config_of(&a, vec![a.addr])], b.now, &mut b.io);
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
            to.table
                .handle_datagram(payload, Source::Direct(from.addr), to.now, &mut to.io);
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
        a.table.handle_tun_packet(&ping, a.now, &mut a.io);
        exchange(&mut a, &mut b);
        assert_eq!(
            b.io.tun,
            vec![ping],
            "queued packet delivered once, unchanged"
        );
        let stats = a.table.stats(a.now);
        assert_eq!(stats[0].endpoint, Some(b.addr));
        assert!(stats[0].is_connected());
    }

    #[test]
    fn peers_handshake_as_soon_as_they_learn_of_each_other() {
        let (mut a, mut b) = pair(vec![node(2).addr]);
        assert_eq!(a.io.sent.len(), 1, "A initiates at once");
        assert_eq!(b.io.sent.len(), 1, "B initiates at once");
        exchange(&mut a, &mut b);
        assert!(a.table.stats(a.now)[0].is_connected());
        assert!(b.table.stats(b.now)[0].is_connected());
        assert!(
            a.io.tun.is_empty() && b.io.tun.is_empty(),
            "no data was invented"
        );
        let ping = ipv4(a.vip, b.vip, b"after");
        a.table.handle_tun_packet(&ping, a.now, &mut a.io);
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
        a.io.sent.clear();
        a.table
            .handle_tun_packet(&ipv4(a.vip, b.vip, b"x"), a.now, &mut a.io);
        let dsts: Vec<_> = a.io.sent.iter().map(|(_, d)| *d).collect();
        assert_eq!(dsts, vec![b.addr], "only the endpoint that answered");
    }

    #[test]
    fn spoofed_inner_source_is_dropped() {
        let (mut a, mut b) = pair(vec![node(2).addr]);
        exchange(&mut a, &mut b);
        let spoofed = ipv4(Ipv4Addr::new(10, 66, 0, 99), b.vip, b"evil");
        a.table.handle_tun_packet(&spoofed, a.now, &mut a.io);
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
            a.table.sync(vec![b_as_target], a.now, &mut a.io);
            b.table
                .sync(vec![config_of(&a, vec![a.addr])], b.now, &mut b.io);
            exchange(&mut a, &mut b);
            a.table
                .handle_tun_packet(&ipv4(a.vip, target, b"sneaky"), a.now, &mut a.io);
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
            b.table
                .handle_datagram(&junk, Source::Direct(node(9).addr), b.now, &mut b.io);
        }
        assert!(b.io.sent.is_empty());
        assert_eq!(b.table.drops.bad_datagram, 1000);
    }

    #[test]
    fn junk_and_unknown_destinations_are_counted_not_answered() {
        let (mut a, _b) = pair(vec![]);
        a.table.handle_datagram(
            &[4, 0, 0, 0, 9, 9, 9, 9],
            Source::Direct(node(9).addr),
            a.now,
            &mut a.io,
        );
        a.table
            .handle_datagram(&[0u8; 148], Source::Direct(node(9).addr), a.now, &mut a.io);
        assert_eq!(a.table.drops.bad_datagram, 2);
        a.table.handle_tun_packet(
            &ipv4(a.vip, Ipv4Addr::new(10, 66, 0, 50), b"x"),
            a.now,
            &mut a.io,
        );
        assert_eq!(a.table.drops.no_route, 1);
        assert!(a.io.sent.is_empty() && a.io.tun.is_empty());
    }

    #[test]
    fn handshake_from_a_stranger_is_ignored() {
        let (_a, mut b) = pair(vec![node(2).addr]);
        let mut stranger = node(3);
        b.io.sent.clear();
        stranger.table.sync(
            vec![config_of(&b, vec![b.addr])],
            stranger.now,
            &mut stranger.io,
        );
        assert_eq!(deliver(&mut stranger, &mut b), 1);
        assert!(b.io.sent.is_empty(), "no response to an unknown key");
        assert_eq!(b.table.drops.bad_datagram, 1);
    }

    #[test]
    fn sync_removes_departed_peers_and_their_routes() {
        let (mut a, b) = pair(vec![node(2).addr]);
        assert_eq!(a.table.len(), 1, "own key is never a peer");
        a.table.sync(vec![], a.now, &mut a.io);
        assert!(a.table.is_empty());
        a.table
            .handle_tun_packet(&ipv4(a.vip, b.vip, b"x"), a.now, &mut a.io);
        assert_eq!(a.table.drops.no_route, 1);
    }

    /// Nodes that all know each other at their addresses, with sessions up and outboxes empty.
    fn mesh(mut nodes: Vec<Node>) -> Vec<Node> {
        let configs: Vec<PeerConfig> = nodes.iter().map(|n| config_of(n, vec![n.addr])).collect();
        for n in &mut nodes {
            n.table.sync(configs.clone(), n.now, &mut n.io);
        }
        for _ in 0..3 {
            for i in 0..nodes.len() {
                deliver_all(&mut nodes, i);
            }
        }
        for n in &mut nodes {
            let up: Vec<_> = n
                .table
                .stats(n.now)
                .iter()
                .map(|p| (p.config.virtual_ip, p.is_connected()))
                .collect();
            assert!(up.iter().all(|(_, c)| *c), "{}: {up:?}", n.vip);
            n.io.sent.clear();
        }
        nodes
    }

    fn two(nodes: &mut [Node], i: usize, j: usize) -> (&mut Node, &mut Node) {
        if i < j {
            let (l, r) = nodes.split_at_mut(j);
            (&mut l[i], &mut r[0])
        } else {
            let (l, r) = nodes.split_at_mut(i);
            (&mut r[0], &mut l[j])
        }
    }

    /// Delivers everything node `i` sent to every other node.
    fn deliver_all(nodes: &mut [Node], i: usize) {
        for j in 0..nodes.len() {
            if i != j {
                let (from, to) = two(nodes, i, j);
                let sent: Vec<_> = from
                    .io
                    .sent
                    .iter()
                    .filter(|(_, d)| *d == to.addr)
                    .cloned()
                    .collect();
                for (payload, _) in sent {
                    to.table.handle_datagram(
                        &payload,
                        Source::Direct(from.addr),
                        to.now,
                        &mut to.io,
                    );
                }
            }
        }
        nodes[i].io.sent.clear();
    }

    #[test]
    fn broadcast_reaches_every_peer_once_unchanged_and_is_never_forwarded() {
        for dst in [
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(10, 66, 255, 255),
            Ipv4Addr::new(239, 255, 255, 250),
        ] {
            let mut n = mesh(vec![node(1), node(2), node(3)]);
            let packet = ipv4(n[0].vip, dst, b"lobby");
            n[0].tun_in(&packet);
            let dsts: Vec<_> = n[0].io.sent.iter().map(|(_, d)| *d).collect();
            assert_eq!(dsts.len(), 2, "one copy per peer to {dst}");
            assert!(dsts.contains(&n[1].addr) && dsts.contains(&n[2].addr));
            deliver_all(&mut n, 0);
            for i in [1, 2] {
                assert_eq!(n[i].io.tun, vec![packet.clone()], "member {i}, {dst}");
                assert!(n[i].io.sent.is_empty(), "member {i} forwarded nothing");
                let from_a = &n[i].table.stats(n[i].now)[0];
                assert_eq!(from_a.broadcast.received, 1);
            }
            assert!(n[0].io.tun.is_empty(), "nothing came back to the sender");
            assert_eq!(n[0].table.broadcast.sent, 1);
            assert!(n[0]
                .table
                .stats(n[0].now)
                .iter()
                .all(|p| p.broadcast.sent == 1));
        }
    }

    #[test]
    fn broadcasts_from_other_sources_and_igmp_are_not_replicated() {
        let mut n = mesh(vec![node(1), node(2)]);
        let foreign = ipv4(Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::BROADCAST, b"x");
        n[0].tun_in(&foreign);
        let mut igmp = ipv4(n[0].vip, Ipv4Addr::new(224, 0, 0, 22), b"report");
        igmp[9] = IP_PROTO_IGMP;
        n[0].tun_in(&igmp);
        assert!(n[0].io.sent.is_empty());
        assert_eq!(n[0].table.drops.no_route, 1);
        assert_eq!(n[0].table.broadcast.sent, 0);
    }

    #[test]
    fn the_same_broadcast_twice_within_the_window_is_written_once() {
        let mut n = mesh(vec![node(1), node(2)]);
        let packet = ipv4(n[0].vip, Ipv4Addr::BROADCAST, b"same bytes");
        for _ in 0..2 {
            n[0].tun_in(&packet);
        }
        deliver_all(&mut n, 0);
        assert_eq!(n[1].io.tun.len(), 1);
        assert_eq!(n[1].table.stats(n[1].now)[0].broadcast.dropped, 1);
        n[1].now += broadcast::DEDUP_WINDOW;
        n[0].tun_in(&packet);
        deliver_all(&mut n, 0);
        assert_eq!(n[1].io.tun.len(), 2, "after the window it is new again");
    }

    #[test]
    fn a_broadcast_flood_is_capped_at_the_rate_and_unicast_still_flows() {
        let mut n = mesh(vec![node_with_rate(1, 50), node(2)]);
        for i in 0..1000u32 {
            let packet = ipv4(n[0].vip, Ipv4Addr::BROADCAST, &i.to_be_bytes());
            n[0].tun_in(&packet);
        }
        assert_eq!(n[0].table.broadcast.sent, 50);
        assert_eq!(n[0].table.broadcast.dropped, 950);
        let ping = ipv4(n[0].vip, n[1].vip, b"still here");
        n[0].tun_in(&ping);
        deliver_all(&mut n, 0);
        assert_eq!(n[1].io.tun.len(), 51);
        assert_eq!(n[1].io.tun.last(), Some(&ping));
    }

    #[test]
    fn a_receiver_caps_what_it_accepts_from_a_flooding_peer() {
        // Member 1 allows itself far more than member 2 accepts.
        let mut n = mesh(vec![node_with_rate(1, 10_000), node_with_rate(2, 10)]);
        for i in 0..100u32 {
            let packet = ipv4(n[0].vip, Ipv4Addr::BROADCAST, &i.to_be_bytes());
            n[0].tun_in(&packet);
        }
        deliver_all(&mut n, 0);
        assert_eq!(n[1].io.tun.len(), 10);
        let from_flooder = n[1].table.stats(n[1].now)[0].broadcast;
        assert_eq!((from_flooder.received, from_flooder.dropped), (10, 90));
    }

    /// Runs `n`'s timers at its clock.
    fn tick(n: &mut Node) {
        n.table.update_timers(n.now, &mut n.io);
    }

    fn direct_state(n: &Node) -> Option<PathState> {
        n.table.stats(n.now)[0].direct_path.map(|p| p.state)
    }

    #[test]
    fn a_direct_path_going_down_is_reported_once() {
        let mut n = mesh(vec![node(1), node(2)]);
        for _ in 0..4 {
            tick(&mut n[0]);
            deliver_all(&mut n, 0);
            deliver_all(&mut n, 1);
        }
        assert_eq!(direct_state(&n[0]), Some(PathState::Up));
        assert_eq!(n[0].table.poll_direct_paths_lost(), 0, "nothing lost yet");
        // B goes silent: A's probes go unanswered until the path is down.
        for _ in 0..40 {
            n[0].now += Duration::from_millis(250);
            tick(&mut n[0]);
            n[0].io.sent.clear();
        }
        assert_eq!(direct_state(&n[0]), Some(PathState::Down));
        assert_eq!(n[0].table.poll_direct_paths_lost(), 1);
        assert_eq!(n[0].table.poll_direct_paths_lost(), 0, "reported once");
        n[0].now += Duration::from_secs(5);
        tick(&mut n[0]);
        assert_eq!(
            n[0].table.poll_direct_paths_lost(),
            0,
            "still down, not lost again"
        );
    }

    #[test]
    fn a_new_public_endpoint_is_punched_at_once_even_while_the_direct_path_looks_up() {
        let mut n = mesh(vec![node(1), node(2)]);
        for _ in 0..4 {
            tick(&mut n[0]);
            deliver_all(&mut n, 0);
            deliver_all(&mut n, 1);
        }
        // The roster says B moved before A's probes noticed.
        assert_eq!(direct_state(&n[0]), Some(PathState::Up));
        n[0].io.sent.clear();
        let moved = SocketAddr::from(([203, 0, 113, 2], 20000));
        let mut b = config_of(&n[1], vec![n[1].addr]);
        b.public_endpoint = Some(moved);
        let now = n[0].now;
        let a = &mut n[0];
        a.table.sync(vec![b], now, &mut a.io);
        let dsts: Vec<_> = a.io.sent.iter().map(|(_, d)| *d).collect();
        assert!(dsts.contains(&moved), "punched the new endpoint: {dsts:?}");
    }
}
