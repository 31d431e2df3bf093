//! Test harness: a relay core, members running the real client, and a virtual clock. Every
//! datagram the relay answers is checked to be no larger than the one that came in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::{Event, Grant, RelayClient};
use super::core::{Config, Now, Relay};
use super::ticket::{RelaySecret, TICKET_LIFETIME_S};
use crate::wire::relay::MemberId;

/// The secret shared by the test server and relay.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Unix seconds at the start of the virtual clock.
pub const T0_S: u64 = 1_800_000_000;
/// Where the relay listens.
pub const RELAY: &str = "203.0.113.1:3478";

/// A relay and a virtual clock.
pub struct Sim {
    /// The relay under test.
    pub relay: Relay,
    /// Virtual monotonic time.
    pub at: Instant,
    /// Virtual Unix milliseconds.
    pub unix_ms: u64,
}

/// A datagram the relay sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes.
    pub bytes: Vec<u8>,
}

impl Sim {
    /// A relay with `config`, at the start of the clock.
    pub fn new(config: Config) -> Sim {
        let at = Instant::now();
        let unix_ms = T0_S * 1000;
        Sim {
            relay: Relay::new(config, SECRET, Now { at, unix_ms }),
            at,
            unix_ms,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Now {
        Now {
            at: self.at,
            unix_ms: self.unix_ms,
        }
    }

    /// Unix seconds now.
    pub fn unix_s(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// Moves the clock and runs the relay's timers.
    pub fn advance(&mut self, by: Duration) {
        self.at += by;
        self.unix_ms += by.as_millis() as u64;
        let now = self.now();
        self.relay.handle_timeout(now);
    }

    /// Hands `bytes` from `src` to the relay; returns what it sent.
    pub fn send(&mut self, src: SocketAddr, bytes: &[u8]) -> Option<Out> {
        let mut buf = bytes.to_vec();
        let now = self.now();
        let out = self.relay.handle_datagram(src, &mut buf, now)?;
        assert!(
            out.payload.len() <= bytes.len(),
            "answered {} bytes to {}",
            out.payload.len(),
            bytes.len()
        );
        Some(Out {
            dst: out.dst,
            bytes: out.payload.to_vec(),
        })
    }

    /// A ticket for member `n` of `party`, expiring `lifetime_s` from now.
    pub fn grant(&self, party: &str, n: u8, lifetime_s: u64) -> Grant {
        let issued = RelaySecret::new(SECRET)
            .issue(party, member_id(n), [n; 32], self.unix_s() + lifetime_s)
            .expect("a valid party id");
        Grant {
            ticket: issued.ticket,
            bind_key: issued.bind_key,
            expires_at: self.unix_s() + lifetime_s,
            server_time: self.unix_s(),
        }
    }
}

/// The member id of test member `n`.
pub fn member_id(n: u8) -> MemberId {
    MemberId([n, 0, 0, 0, 0, n])
}

/// A member: an address and the real client.
pub struct Member {
    /// Its (NAT-mapped) address.
    pub addr: SocketAddr,
    /// Its id.
    pub id: MemberId,
    /// Its relay client.
    pub client: RelayClient,
}

impl Member {
    /// Member `n` at 198.51.100.n:40000+n, with a fresh ticket for `party`.
    pub fn new(sim: &Sim, party: &str, n: u8) -> Member {
        let mut client = RelayClient::new(RELAY.parse().unwrap(), sim.at);
        client.handle_ticket(sim.grant(party, n, TICKET_LIFETIME_S), sim.at);
        Member {
            addr: SocketAddr::from(([198, 51, 100, n], 40_000 + u16::from(n))),
            id: member_id(n),
            client,
        }
    }

    /// Runs the client's timers and delivers everything it sends (and the answers).
    /// Returns how many datagrams the client sent.
    pub fn exchange(&mut self, sim: &mut Sim) -> usize {
        self.client.handle_timeout(sim.at);
        let mut sent = 0;
        while let Some(tx) = self.client.poll_transmit(sim.at) {
            assert_eq!(tx.dst, RELAY.parse().unwrap());
            let bytes = tx.payload.to_vec();
            sent += 1;
            if let Some(out) = sim.send(self.addr, &bytes) {
                if out.dst == self.addr {
                    assert_eq!(
                        self.client
                            .handle_datagram(sim.relay_addr(), &out.bytes, sim.at),
                        None
                    );
                }
            }
        }
        sent
    }

    /// Binds and checks the client saw `Bound`.
    pub fn bind(&mut self, sim: &mut Sim) {
        self.exchange(sim);
        assert!(self.client.is_bound(), "state {:?}", self.client.state());
        let events: Vec<Event> = std::iter::from_fn(|| self.client.poll_event()).collect();
        assert!(events.contains(&Event::Bound), "{events:?}");
    }

    /// A data frame for `to` carrying `payload`, as the client wraps it.
    pub fn data_to(&self, to: MemberId, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; payload.len() + 7];
        let tx = self
            .client
            .encapsulate(to, payload, &mut out)
            .expect("bound");
        tx.payload.to_vec()
    }
}

impl Sim {
    /// The relay's address.
    pub fn relay_addr(&self) -> SocketAddr {
        RELAY.parse().unwrap()
    }
}
