//! One peer of the table: its `Tunn`, its two kinds of path (a direct endpoint, learned only
//! from authenticated packets, and the relay both members meet at), which path a datagram
//! takes, and when to punch. Pure: the caller passes `now` and does the sending.
//!
//! Hole punching needs no probe format of its own: WireGuard messages are the probes. Until
//! a session is up, handshake initiations go to every candidate address of the peer (and
//! through the relay); once it is up but the direct path is not, an authenticated keepalive
//! goes to every candidate on a schedule. Both members do this at once (they learn of each
//! other from the roster together), so each one's packets open its own NAT for the other's.
//! A packet that fails authentication, or replays an old counter, never moves an endpoint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;

use super::broadcast::{PeerBroadcast, RateLimit};
use super::peers::{Io, PeerConfig};
use crate::nat::Prediction;
use crate::wire::relay::MemberId;

/// A handshake younger than this means the session is up (WireGuard's REJECT_AFTER_TIME).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// Whether a session is up, given the time since the last completed handshake.
pub fn session_is_up(since_handshake: Option<Duration>) -> bool {
    since_handshake.is_some_and(|d| d < SESSION_LIFETIME)
}

/// A direct path counts as working this long after its last authenticated packet (each side
/// sends a keepalive after 25 s of silence).
pub const DIRECT_FRESH: Duration = Duration::from_secs(35);
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
    /// Its direct endpoint, learned from authenticated packets only.
    pub direct: Option<SocketAddr>,
    direct_rx_at: Option<Instant>,
    relayed_rx_at: Option<Instant>,
    /// Whether we are bound at the relay we meet this peer at.
    pub relay_bound: bool,
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
    /// A new peer, added at `now`.
    pub fn new(config: PeerConfig, tunn: Tunn, broadcast_rate: u32, now: Instant) -> Peer {
        Peer {
            member: config.public_key.member_id(),
            config,
            tunn,
            direct: None,
            direct_rx_at: None,
            relayed_rx_at: None,
            relay_bound: false,
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

    /// Whether an authenticated packet came straight from the peer recently.
    pub fn direct_is_fresh(&self, now: Instant) -> bool {
        self.direct_rx_at
            .is_some_and(|at| now.saturating_duration_since(at) < DIRECT_FRESH)
    }

    fn relay(&self) -> Option<SocketAddr> {
        self.config.relay.filter(|_| self.relay_bound)
    }

    /// The path for a data packet now: direct while it works, else the relay, else the last
    /// direct endpoint, else everywhere.
    pub fn route(&self, now: Instant) -> Route {
        match (self.direct, self.relay()) {
            (Some(d), _) if self.direct_is_fresh(now) => Route::Direct(d),
            (_, Some(r)) => Route::Relayed(r),
            (Some(d), None) => Route::Direct(d),
            (None, None) => Route::Everywhere,
        }
    }

    /// `direct`, `relayed` or `connecting`, for status (given whether a session is up).
    pub fn connection_type(&self, connected: bool, now: Instant) -> &'static str {
        match self.route(now) {
            Route::Direct(_) if connected && self.direct_is_fresh(now) => "direct",
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
    pub fn transmit(&self, payload: &[u8], now: Instant, io: &mut impl Io) {
        let initiation = payload.first() == Some(&1);
        match self.route(now) {
            Route::Direct(d) if !initiation || self.direct_is_fresh(now) => io.send_to(payload, d),
            Route::Relayed(r) if !initiation => io.send_relayed(payload, r, self.member),
            _ => {
                for dst in self.candidates() {
                    io.send_to(payload, dst);
                }
                if let Some(r) = self.relay() {
                    io.send_relayed(payload, r, self.member);
                }
            }
        }
    }

    /// Notes an authenticated datagram from `source` at `now`. True when it brought the
    /// direct path up: the caller then answers straight away (see [`Peer::answer_punch`]).
    pub fn handle_authenticated(&mut self, source: Source, now: Instant) -> bool {
        match source {
            Source::Direct(src) => {
                if self.direct != Some(src) {
                    log::debug!("peer {} is at {src}", self.config.name);
                    self.direct = Some(src);
                }
                let came_up = !self.direct_is_fresh(now);
                if came_up {
                    log::info!("peer {}: direct path up", self.config.name);
                }
                self.direct_rx_at = Some(now);
                if self.time_to_direct.is_none() {
                    self.time_to_direct = Some(now.saturating_duration_since(self.added_at));
                }
                came_up
            }
            Source::Relayed { .. } => {
                self.relayed_rx_at = Some(now);
                false
            }
        }
    }

    /// Answers the packet that brought the direct path up with an authenticated keepalive
    /// to where it came from. Punches (keepalives) get no answer from WireGuard, and once
    /// our direct path is fresh we stop punching, so without this the peer would keep using
    /// the relay until we happen to send it something straight (up to a persistent
    /// keepalive later when we have no traffic for it).
    pub fn answer_punch(&mut self, src: SocketAddr, buf: &mut [u8], io: &mut impl Io) {
        if let boringtun::noise::TunnResult::WriteToNetwork(keepalive) =
            self.tunn.encapsulate(&[], buf)
        {
            io.send_to(keepalive, src);
        }
    }

    /// Whether to punch now (send an authenticated keepalive to every candidate); advances
    /// the schedule when it says yes. Only once a session is up: before, handshake
    /// retransmissions go everywhere anyway.
    pub fn poll_punch(&mut self, session_up: bool, now: Instant) -> bool {
        if self.direct_is_fresh(now) {
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

    /// Sends a punch (an authenticated keepalive) to every candidate.
    pub fn punch(&self, keepalive: &[u8], io: &mut impl Io) {
        for dst in self.candidates() {
            io.send_to(keepalive, dst);
        }
    }
}
