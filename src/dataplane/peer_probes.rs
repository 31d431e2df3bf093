//! A peer's probes and path health: answering and sending probes, the relay in use and its
//! replacement when it stops answering, reviving a failed peer, and the peer's state
//! machine with its log lines. A child of `peer.rs`, so it shares `Peer`'s fields.

use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::TunnResult;

use super::super::health::{PathHealth, PathState, PeerState, Role, Thresholds};
use super::super::peers::Io;
use super::{Peer, Route, Source, REVIVE_EVERY, TRAFFIC_RECENT};
use crate::wire::probe::{self, Kind, Probe};

impl Peer {
    /// A probe arrived from `source` inside the tunnel: a request is answered on the path it
    /// came by, a reply measures the path it came by.
    pub fn handle_probe(
        &mut self,
        probe: Probe,
        source: Source,
        buf: &mut [u8],
        now: Instant,
        io: &mut impl Io,
    ) {
        match probe.kind {
            Kind::Request => {
                let reply = Probe {
                    kind: Kind::Reply,
                    seq: probe.seq,
                };
                if let Some(out) = self.encapsulate_probe(reply, buf) {
                    if let Source::Relayed { .. } = source {
                        self.relayed_tx_bytes += out.len() as u64;
                    }
                    source.reply(out, io);
                }
            }
            Kind::Reply => match source {
                Source::Direct(src) if Some(src) == self.direct => {
                    let matched = self.direct_health.on_reply(probe.seq, now);
                    if matched && self.time_to_direct.is_none() {
                        self.time_to_direct = Some(now.saturating_duration_since(self.added_at));
                    }
                }
                Source::Relayed { relay, .. } if Some(relay) == self.relay => {
                    let matched = self.relayed_health.on_reply(probe.seq, now);
                    if matched {
                        self.relays_tried.clear();
                    }
                }
                _ => {}
            },
        }
    }

    fn encapsulate_probe<'b>(&mut self, probe: Probe, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let packet = probe::encode(probe, self.own_ip, self.config.virtual_ip);
        match self.tunn.encapsulate(&packet, buf) {
            TunnResult::WriteToNetwork(out) => Some(out),
            _ => None,
        }
    }

    /// Sends the probes that are due (only while a session is up: a probe must not start a
    /// handshake of its own).
    pub fn poll_probes(&mut self, buf: &mut [u8], now: Instant, io: &mut impl Io) {
        if !self.session_up() {
            return;
        }
        let busy = self
            .last_traffic_at
            .is_some_and(|at| now.saturating_duration_since(at) < TRAFFIC_RECENT);
        let route = self.route(now);
        let role = |in_use: bool| match (in_use, busy) {
            (true, true) => Role::Busy,
            (true, false) => Role::Idle,
            (false, true) => Role::Standby,
            (false, false) => Role::IdleStandby,
        };
        if let Some(d) = self.direct.filter(|_| self.direct_health.due(now)) {
            let role = role(matches!(route, Route::Direct(_)));
            self.send_probe(Route::Direct(d), role, buf, now, io);
        }
        if let Some(r) = self.relay.filter(|_| self.relayed_health.due(now)) {
            let role = role(matches!(route, Route::Relayed(_)));
            self.send_probe(Route::Relayed(r), role, buf, now, io);
        }
    }

    /// Sends a probe request on `path` and notes it in that path's health.
    fn send_probe(
        &mut self,
        path: Route,
        role: Role,
        buf: &mut [u8],
        now: Instant,
        io: &mut impl Io,
    ) {
        let seq = self.take_seq();
        let request = Probe {
            kind: Kind::Request,
            seq,
        };
        let Some(out) = self.encapsulate_probe(request, buf) else {
            return;
        };
        match path {
            Route::Direct(d) => {
                io.send_to(out, d);
                self.direct_health.sent(seq, role, now);
            }
            Route::Relayed(r) => {
                self.relayed_tx_bytes += out.len() as u64;
                io.send_relayed(out, r, self.member);
                self.relayed_health.sent(seq, role, now);
            }
            Route::Everywhere => {}
        }
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// Keeps the relay in use one we are bound at: the current one while bound, else the
    /// meeting relay, else the first bound one.
    pub fn choose_relay(&mut self, bound: &[SocketAddr], now: Instant) {
        if self.relay.is_some_and(|r| bound.contains(&r)) {
            return;
        }
        let next = self
            .config
            .relay
            .filter(|r| bound.contains(r))
            .or_else(|| bound.first().copied());
        self.use_relay(next, now);
    }

    fn use_relay(&mut self, relay: Option<SocketAddr>, now: Instant) {
        if relay != self.relay {
            self.relay = relay;
            self.relayed_health = self.relayed_health.renew(now);
        }
    }

    /// Whether to send a handshake initiation now to revive a failed peer whose session is
    /// gone (every [`REVIVE_EVERY`]); its relays are tried again from here.
    pub fn poll_revive(&mut self, now: Instant) -> bool {
        let failed = self.health.state() == PeerState::Failed;
        if !failed || self.session_up() || now < self.next_revive_at {
            return false;
        }
        self.next_revive_at = now + REVIVE_EVERY;
        self.relays_tried.clear();
        true
    }

    /// Runs the paths' and the peer's health at `now`: lost probes, paths going down (a dead
    /// relay is replaced by the next one we are bound at), the peer's state and path
    /// switches, each logged once. True when the direct path went from up to down (our
    /// public mapping may have moved).
    pub fn poll_health(
        &mut self,
        bound: &[SocketAddr],
        thresholds: &Thresholds,
        now: Instant,
    ) -> bool {
        let name = &self.config.name;
        let direct_was_up = self.direct_health.state() == PathState::Up;
        // A path going down makes the other one's next probe due at once: it is about to
        // carry the traffic, or to tell whether the peer is gone.
        let direct_down = self.direct_health.poll(now);
        if direct_down {
            log::info!(
                "peer {name}: direct path {} stopped answering",
                self.direct.map_or_else(|| "-".into(), |d| d.to_string())
            );
            self.relayed_health.hurry(now);
        }
        if self.relayed_health.poll(now) {
            self.direct_health.hurry(now);
            // The next bound relay not tried since the peer last answered through one.
            let current = self.relay;
            self.relays_tried.extend(current);
            let start = current
                .and_then(|c| bound.iter().position(|b| *b == c))
                .map_or(0, |i| i + 1);
            let next = (0..bound.len())
                .map(|k| bound[(start + k) % bound.len()])
                .find(|r| !self.relays_tried.contains(r));
            match next {
                Some(n) => {
                    log::info!(
                        "peer {name}: relay {} stopped answering; trying relay {n}",
                        current.map_or_else(|| "-".into(), |c| c.to_string())
                    );
                    self.use_relay(Some(n), now);
                }
                None => log::info!("peer {name}: relayed path stopped answering"),
            }
        }
        let route = self.route(now);
        if self.last_route.is_some_and(|last| last != route) && route != Route::Everywhere {
            self.path_switches += 1;
            log::info!("peer {}: traffic now {}", self.config.name, describe(route));
        }
        self.last_route = Some(route);
        let direct = self.direct.map(|_| &self.direct_health);
        let relayed = self.relay.map(|_| &self.relayed_health);
        let paths: Vec<&PathHealth> = direct.into_iter().chain(relayed).collect();
        let in_use = match route {
            Route::Direct(_) => direct,
            Route::Relayed(_) => relayed,
            Route::Everywhere => None,
        }
        .filter(|p| p.stats().replies > 0);
        if let Some(t) = self.health.update(&paths, in_use, thresholds, now) {
            let (from, to) = (t.from.name(), t.to.name());
            log::info!("peer {}: {from} -> {to}: {}", self.config.name, t.reason);
        }
        direct_was_up && direct_down
    }
}

fn describe(route: Route) -> String {
    match route {
        Route::Direct(d) => format!("direct to {d}"),
        Route::Relayed(r) => format!("relayed via {r}"),
        Route::Everywhere => "to every candidate".into(),
    }
}
