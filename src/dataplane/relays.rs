//! The relays this member is bound to, as seen from the data plane: one
//! [`RelayClient`] per relay, all bound with the same ticket (any relay accepts a ticket
//! of the control server they share a secret with). Pure: time passed in; the loop sends
//! what [`Relays::poll_transmit`] returns and reports [`Relays::poll_event`] upwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::relay::client::{Event, Grant, Received, RelayClient};

/// Most relays bound at once (each costs a keepalive every 25 s).
pub const MAX_RELAYS: usize = 8;

/// A relay's state for the control thread, which picks the home relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayState {
    /// The relay.
    pub relay: SocketAddr,
    /// Whether we are bound there.
    pub bound: bool,
    /// Smoothed round trip to it.
    pub rtt: Option<Duration>,
    /// It refused us for being full.
    pub full: bool,
}

/// Every relay we keep a binding with.
#[derive(Default)]
pub struct Relays {
    clients: BTreeMap<SocketAddr, RelayClient>,
    grant: Option<Grant>,
    events: Vec<RelayNews>,
}

/// Something the data plane must act on or pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayNews {
    /// A ticket is needed (for any relay: one serves all).
    NeedTicket,
    /// A relay's binding changed (bound, lost, refused) or its RTT moved.
    Changed(RelayState),
}

impl Relays {
    /// Keeps exactly the relays in `wanted` (at most [`MAX_RELAYS`]), binding new ones.
    pub fn set(&mut self, wanted: &[SocketAddr], now: Instant) {
        let wanted: Vec<SocketAddr> = wanted.iter().copied().take(MAX_RELAYS).collect();
        self.clients.retain(|addr, _| wanted.contains(addr));
        for addr in wanted {
            self.clients.entry(addr).or_insert_with(|| {
                let mut client = RelayClient::new(addr, now);
                if let Some(grant) = &self.grant {
                    client.handle_ticket(grant.clone(), now);
                }
                client
            });
        }
    }

    /// Every relay binds again at once (our public address moved).
    pub fn refresh(&mut self, now: Instant) {
        for client in self.clients.values_mut() {
            client.refresh(now);
        }
    }

    /// A fresh ticket for every relay.
    pub fn handle_grant(&mut self, grant: Grant, now: Instant) {
        for client in self.clients.values_mut() {
            client.handle_ticket(grant.clone(), now);
        }
        self.grant = Some(grant);
    }

    /// Handles a datagram from relay `src`; returns a peer's datagram it carried.
    pub fn handle_datagram<'a>(
        &mut self,
        src: SocketAddr,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<Received<'a>> {
        let client = self.clients.get_mut(&src)?;
        let before = state_of(client);
        let received = client.handle_datagram(src, bytes, now);
        self.note_change(src, before);
        received
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SocketAddr> = self
            .clients
            .iter()
            .filter(|(_, c)| c.poll_timeout().is_some_and(|t| t <= now))
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            if let Some(client) = self.clients.get_mut(&addr) {
                let before = state_of(client);
                client.handle_timeout(now);
                self.note_change(addr, before);
            }
        }
    }

    /// The earliest timer of any relay.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clients
            .values()
            .filter_map(RelayClient::poll_timeout)
            .min()
    }

    /// Hands every datagram a relay client wants sent to `send`.
    pub fn poll_transmit(&mut self, now: Instant, mut send: impl FnMut(&[u8], SocketAddr)) {
        for client in self.clients.values_mut() {
            while let Some(t) = client.poll_transmit(now) {
                send(t.payload, t.dst);
            }
        }
    }

    /// The next news for the data plane and the control thread.
    pub fn poll_event(&mut self) -> Option<RelayNews> {
        for (addr, client) in self.clients.iter_mut() {
            while let Some(event) = client.poll_event() {
                let news = match event {
                    Event::NeedTicket | Event::TicketExpired => RelayNews::NeedTicket,
                    // Binding and unbinding are noted where the state changes.
                    Event::Bound => continue,
                    Event::Refused(_) | Event::Lost => RelayNews::Changed(snapshot(*addr, client)),
                };
                self.events.push(news);
            }
        }
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The relays we are bound at.
    pub fn bound(&self) -> Vec<SocketAddr> {
        self.clients
            .iter()
            .filter(|(_, c)| c.is_bound())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Every relay's state.
    pub fn states(&self) -> Vec<RelayState> {
        self.clients.iter().map(|(a, c)| snapshot(*a, c)).collect()
    }

    fn note_change(&mut self, addr: SocketAddr, before: (bool, Option<Duration>)) {
        if let Some(client) = self.clients.get(&addr) {
            let after = state_of(client);
            // RTT changes are news only when they are large (a smoothed value moves a little
            // with every sample); bound/unbound always is.
            let rtt_moved = match (before.1, after.1) {
                (Some(a), Some(b)) => a.abs_diff(b) * 5 > a,
                (a, b) => a != b,
            };
            if before.0 != after.0 || rtt_moved {
                self.events.push(RelayNews::Changed(snapshot(addr, client)));
            }
        }
    }
}

fn state_of(client: &RelayClient) -> (bool, Option<Duration>) {
    (client.is_bound(), client.rtt())
}

fn snapshot(relay: SocketAddr, client: &RelayClient) -> RelayState {
    RelayState {
        relay,
        bound: client.is_bound(),
        rtt: client.rtt(),
        full: matches!(
            client.state(),
            crate::relay::client::State::Refused(crate::wire::relay::RefuseReason::Full)
        ),
    }
}
