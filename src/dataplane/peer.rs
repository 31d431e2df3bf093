//! One peer of the table: its `Tunn`, its two kinds of path (a direct endpoint, learned only
//! from authenticated packets, and a relay both members are bound at), their probes and
//! health (`health`), which path a datagram takes, and when to punch. Pure: the caller
//! passes `now` and does the sending.
//!
//! Path choice: the direct path while it is usable (answering probes; after an outage, for
//! `health::RETURN_AFTER`), else the relay in use unless it is down, else whatever is left.
//! The relay in use is the meeting relay when we are bound there; when it stops answering,
//! the next relay we are bound at is tried (every member binds every listed relay, so the
//! peer is very likely bound there too, and it answers on the path a probe came by).
//!
//! Hole punching needs no probe format of its own: WireGuard messages are the probes. Until
//! a session is up, handshake initiations go to every candidate address of the peer (and
//! through the relay); once it is up but the direct path is not, an authenticated keepalive
//! goes to every candidate on a schedule. Both members do this at once (they learn of each
//! other from the roster together), so each one's packets open its own NAT for the other's.
//! A packet that fails authentication, or replays an old counter, never moves an endpoint.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};

use super::broadcast::{PeerBroadcast, RateLimit};
use super::health::{PathHealth, PathState, PeerHealth, PROBE_FAST, PROBE_STANDBY};
use super::peers::{Io, PeerConfig};
use crate::nat::Prediction;
use crate::wire::relay::MemberId;

#[path = "peer_probes.rs"]
mod probes;

/// A handshake younger than this means the session is up (WireGuard's REJECT_AFTER_TIME).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// Whether a session is up, given the time since the last completed handshake.
pub fn session_is_up(since_handshake: Option<Duration>) -> bool {
    since_handshake.is_some_and(|d| d < SESSION_LIFETIME)
}

/// A failed peer whose session is gone gets a handshake initiation this often (to every
/// candidate and through the relay), and its relays are tried again: probes need a session,
/// and WireGuard itself gives up after 90 s.
pub const REVIVE_EVERY: Duration = Duration::from_secs(10);

/// Traffic this recent makes a peer busy: its path in use is probed at the fast rate.
pub const TRAFFIC_RECENT: Duration = Duration::from_secs(2);
/// Punches at this interval while a direct path is expected …
pub const PUNCH_FAST: Duration = Duration::from_secs(1);
/// … for this many tries, then at [`PUNCH_SLOW`].
pub const FAST_PUNCHES: u32 = 15;
/// Punch interval after the fast tries, until a path answers.
pub const PUNCH_SLOW: Duration = Duration::from_secs(5);
/// Punch interval for pairs whose NATs rule out a direct path: in case one was misclassified.
pub const PUNCH_HOPELESS: Duration = Duration::from_secs(30);

/// Where a datagram of this peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the peer's endpoint.
    Direct(SocketAddr),
    /// Through the relay at this address.
    Relayed(SocketAddr),
    /// No path known: every candidate (and the relay, if bound).
    Everywhere,
}

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Straight from this address.
    Direct(SocketAddr),
    /// Through the relay at `relay`, which says member `from` sent it.
    Relayed {
        /// The relay's address.
        relay: SocketAddr,
        /// The sender, as the relay knows it.
        from: MemberId,
    },
}

impl Source {
    /// The address the datagram arrived from (the relay's, for a relayed one).
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Source::Direct(a) => a,
            Source::Relayed { relay, .. } => relay,
        }
    }

    /// Sends `payload` back the way this datagram came.
    pub fn reply(&self, payload: &[u8], io: &mut impl Io) {
        match *self {
            Source::Direct(a) => io.send_to(payload, a),
            Source::Relayed { relay, from } => io.send_relayed(payload, relay, from),
        }
    }
}

/// One peer.
pub struct Peer {
    /// What the control plane says about it.
    pub config: PeerConfig,
    /// The WireGuard session.
    pub tunn: Tunn,
    /// Its id at relays.
    pub member: MemberId,
    /// Our virtual IP: the source of our probes, checked by the peer like any packet's.
    own_ip: Ipv4Addr,
    /// Its direct endpoint, learned from authenticated packets only.
    pub direct: Option<SocketAddr>,
    direct_health: PathHealth,
    /// The relay we reach it through (one we are bound at), if any.
    pub relay: Option<SocketAddr>,
    relayed_health: PathHealth,
    /// Relays that stopped answering since the peer last answered on one.
    relays_tried: Vec<SocketAddr>,
    health: PeerHealth,
    next_revive_at: Instant,
    /// When the table added the peer back after cleaning it up (it goes again unless it
    /// answers within `peers::REVIVE_WINDOW`).
    pub revived_at: Option<Instant>,
    next_seq: u32,
    last_traffic_at: Option<Instant>,
    /// The route traffic took at the last health check, to count and log switches.
    last_route: Option<Route>,
    /// Times traffic moved from one path to another.
    pub path_switches: u64,
    /// Bytes of WireGuard datagrams sent and received through relays.
    pub relayed_tx_bytes: u64,
    /// See `relayed_tx_bytes`.
    pub relayed_rx_bytes: u64,
    added_at: Instant,
    /// When the direct path first worked, measured from when the peer was added.
    pub time_to_direct: Option<Duration>,
    next_punch_at: Instant,
    punches: u32,
    /// Broadcast allowance we give this peer.
    pub broadcast_in: RateLimit,
    /// Broadcast counters.
    pub broadcast: PeerBroadcast,
}

impl Peer {
    /// A new peer of the member at `own_ip`, added at `now`.
    pub fn new(
        config: PeerConfig,
        tunn: Tunn,
        own_ip: Ipv4Addr,
        broadcast_rate: u32,
        now: Instant,
    ) -> Peer {
        Peer {
            member: config.public_key.member_id(),
            own_ip,
            config,
            tunn,
            direct: None,
            direct_health: PathHealth::new(now),
            relay: None,
            relayed_health: PathHealth::new(now),
            relays_tried: Vec::new(),
            health: PeerHealth::new(now),
            next_revive_at: now,
            revived_at: None,
            next_seq: 1,
            last_traffic_at: None,
            last_route: None,
            path_switches: 0,
            relayed_tx_bytes: 0,
            relayed_rx_bytes: 0,
            added_at: now,
            time_to_direct: None,
            next_punch_at: now + PUNCH_FAST,
            punches: 0,
            broadcast_in: RateLimit::new(broadcast_rate),
            broadcast: PeerBroadcast::default(),
        }
    }

    /// Whether the WireGuard session is up.
    pub fn session_up(&self) -> bool {
        session_is_up(self.tunn.time_since_last_handshake())
    }

    /// Whether traffic may go straight to the peer.
    pub fn direct_usable(&self, now: Instant) -> bool {
        self.direct.is_some() && self.direct_health.usable(now)
    }

    /// When a probe of a suspect path is due (only while a session is up: no probes before).
    pub fn urgent_probe_at(&self) -> Option<Instant> {
        if !self.session_up() {
            return None;
        }
        let direct = self
            .direct
            .and_then(|_| self.direct_health.urgent_probe_at());
        let relayed = self
            .relay
            .and_then(|_| self.relayed_health.urgent_probe_at());
        direct.into_iter().chain(relayed).min()
    }

    /// The peer's state machine.
    pub fn health(&self) -> &PeerHealth {
        &self.health
    }

    /// The direct path's health (of the current endpoint), if there is an endpoint.
    pub fn direct_health(&self) -> Option<&PathHealth> {
        self.direct.map(|_| &self.direct_health)
    }

    /// The relayed path's health, if a relay is in use.
    pub fn relayed_health(&self) -> Option<&PathHealth> {
        self.relay.map(|_| &self.relayed_health)
    }

    /// The health of the path traffic takes now, if it is one we probe.
    pub fn path_in_use(&self, now: Instant) -> Option<&PathHealth> {
        match self.route(now) {
            Route::Direct(_) => self.direct_health(),
            Route::Relayed(_) => self.relayed_health(),
            Route::Everywhere => None,
        }
    }

    /// The path for a data packet now: direct while it is usable; else the relay if it
    /// answers; else a direct path that answers but is still in its hold-off; else the
    /// relay, then the direct endpoint, unless down; else whatever is left.
    pub fn route(&self, now: Instant) -> Route {
        let direct = self.direct_health.state();
        let relayed = self.relayed_health.state();
        match (self.direct, self.relay) {
            (Some(d), _) if self.direct_usable(now) => Route::Direct(d),
            (_, Some(r)) if relayed == PathState::Up => Route::Relayed(r),
            (Some(d), _) if direct == PathState::Up => Route::Direct(d),
            (_, Some(r)) if relayed != PathState::Down => Route::Relayed(r),
            (Some(d), _) if direct != PathState::Down => Route::Direct(d),
            (_, Some(r)) => Route::Relayed(r),
            (Some(d), None) => Route::Direct(d),
            (None, None) => Route::Everywhere,
        }
    }

    /// `direct`, `relayed` or `connecting`, for status (given whether a session is up).
    pub fn connection_type(&self, connected: bool, now: Instant) -> &'static str {
        match self.route(now) {
            Route::Direct(_) if connected && self.direct_usable(now) => "direct",
            Route::Relayed(_) if connected => "relayed",
            _ => "connecting",
        }
    }

    /// Every address the peer may be at: its direct endpoint, its local addresses and its
    /// public (server-reflexive) one.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let registered = self
            .config
            .endpoints
            .iter()
            .chain(self.config.public_endpoint.iter())
            .copied()
            .filter(move |c| Some(*c) != self.direct);
        self.direct.into_iter().chain(registered)
    }

    /// Sends one datagram of this peer's. Handshake initiations go everywhere while no direct
    /// path works (that is what punches the NATs and reaches the peer through its relay);
    /// everything else takes [`Peer::route`].
    pub fn transmit(&mut self, payload: &[u8], now: Instant, io: &mut impl Io) {
        let initiation = payload.first() == Some(&1);
        match self.route(now) {
            Route::Direct(d) if !initiation || self.direct_usable(now) => io.send_to(payload, d),
            Route::Relayed(r) if !initiation => self.send_relayed(payload, r, io),
            _ => {
                for dst in self.candidates() {
                    io.send_to(payload, dst);
                }
                if let Some(r) = self.relay {
                    self.send_relayed(payload, r, io);
                }
            }
        }
    }

    fn send_relayed(&mut self, payload: &[u8], relay: SocketAddr, io: &mut impl Io) {
        self.relayed_tx_bytes += payload.len() as u64;
        io.send_relayed(payload, relay, self.member);
    }

    /// Notes game traffic (not probes) to or from the peer: its path is probed fast. When
    /// traffic starts after a quiet spell, the next probes come sooner too (the idle
    /// schedule may have them 15 s away).
    pub fn note_traffic(&mut self, now: Instant) {
        let was_quiet = self
            .last_traffic_at
            .is_none_or(|at| now.saturating_duration_since(at) >= TRAFFIC_RECENT);
        self.last_traffic_at = Some(now);
        if was_quiet {
            let (in_use, standby) = match self.route(now) {
                Route::Relayed(_) => (&mut self.relayed_health, &mut self.direct_health),
                _ => (&mut self.direct_health, &mut self.relayed_health),
            };
            in_use.due_by(now + PROBE_FAST);
            standby.due_by(now + PROBE_STANDBY);
        }
    }

    /// Notes an authenticated datagram of `len` bytes from `source` at `now`. A direct one
    /// names the peer's endpoint (a new endpoint starts a new direct path); one while the
    /// direct path is not usable makes a direct probe due at once.
    pub fn handle_authenticated(&mut self, source: Source, len: usize, now: Instant) {
        match source {
            Source::Direct(src) => {
                if self.direct != Some(src) {
                    if let Some(old) = self.direct {
                        log::info!("peer {}: endpoint {old} -> {src}", self.config.name);
                    } else {
                        log::debug!("peer {} is at {src}", self.config.name);
                    }
                    self.direct = Some(src);
                    self.direct_health = self.direct_health.renew(now);
                } else if !self.direct_usable(now) {
                    self.direct_health.hurry(now);
                }
            }
            Source::Relayed { .. } => self.relayed_rx_bytes += len as u64,
        }
    }

    /// Whether to punch now (send an authenticated keepalive to every candidate); advances
    /// the schedule when it says yes. Only once a session is up: before, handshake
    /// retransmissions go everywhere anyway.
    pub fn poll_punch(&mut self, session_up: bool, now: Instant) -> bool {
        if self.direct_usable(now) {
            self.punches = 0;
            self.next_punch_at = now + PUNCH_FAST;
            return false;
        }
        if !session_up || now < self.next_punch_at {
            return false;
        }
        self.punches += 1;
        let interval = match self.config.prediction {
            Prediction::Relay => PUNCH_HOPELESS,
            _ if self.punches < FAST_PUNCHES => PUNCH_FAST,
            _ => PUNCH_SLOW,
        };
        self.next_punch_at = now + interval;
        true
    }

    /// Sends a punch (an authenticated keepalive, built in `buf`) to every candidate.
    pub fn punch(&mut self, buf: &mut [u8], io: &mut impl Io) {
        if let TunnResult::WriteToNetwork(keepalive) = self.tunn.encapsulate(&[], buf) {
            for dst in self.candidates() {
                io.send_to(keepalive, dst);
            }
        }
    }
}
