//! A deterministic simulated network for scenario tests (test builds only): hosts with
//! addresses, NAT boxes with RFC 4787 behaviours ([`nat_box`]), a virtual clock, one-way
//! latency and programmable loss. Protocol logic runs in [`Node`]s, the same pure state
//! machines the threads drive (a STUN server host runs the real responder: [`stun_host`]);
//! [`Sim::run`] steps them from event to event, so minutes of virtual time take
//! milliseconds.
//!
//! Topology: public hosts own internet addresses; a host behind a NAT owns a private address
//! and reaches the internet through its NAT's public IP. Hairpinning and NATs behind NATs are
//! not modelled.

#[cfg(test)]
mod health_scenarios;
#[cfg(test)]
mod member_scenarios;
pub mod members;
pub mod nat_box;
#[cfg(test)]
mod scenarios;
pub mod stun_host;
#[cfg(test)]
mod two_members;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use nat_box::{FilteringBehaviour, MappingBehaviour, NatBox, NatModel};

/// One UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Datagram {
    /// Source as seen where the datagram is (after NAT on the far side).
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes.
    pub payload: Vec<u8>,
}

/// Protocol logic living on a host, driven by [`Sim::run`] like a thread loop drives it.
pub trait Node {
    /// A datagram for one of the host's addresses arrived.
    fn handle_datagram(&mut self, datagram: Datagram, now: Instant);
    /// The deadline from [`Node::poll_timeout`] has come.
    fn handle_timeout(&mut self, now: Instant);
    /// Next datagram to send; its `src` is one of the host's own addresses.
    fn poll_transmit(&mut self) -> Option<Datagram>;
    /// When [`Node::handle_timeout`] must run next.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// A host in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostId(usize);

/// A NAT box in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatId(usize);

struct Host {
    ips: Vec<IpAddr>,
    behind: Option<NatId>,
}

/// A datagram on its way, ordered by arrival time and then by send order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    datagram: Datagram,
}

/// Decides per datagram (after NAT translation on the way out) whether it is lost.
pub type Loss = Box<dyn FnMut(&Datagram) -> bool>;

/// Extra one-way delay per datagram (after NAT translation on the way out).
pub type Delay = Box<dyn FnMut(&Datagram) -> Duration>;

/// What happened to the datagrams sent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Handed to a node (or to a host without one).
    pub delivered: u64,
    /// Dropped by the loss model.
    pub lost: u64,
    /// Dropped by a NAT: no mapping, expired, or filtered.
    pub filtered: u64,
    /// No host owns the destination.
    pub unroutable: u64,
}

/// The network and its clock.
pub struct Sim {
    now: Instant,
    start: Instant,
    latency: Duration,
    hosts: Vec<Host>,
    nats: Vec<NatBox>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    loss: Loss,
    delay: Delay,
    /// Fates of datagrams so far.
    pub counters: Counters,
}

/// One-way latency of every path unless [`Sim::with_latency`] says otherwise.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(20);

impl Default for Sim {
    fn default() -> Sim {
        Sim::with_latency(DEFAULT_LATENCY)
    }
}

impl Sim {
    /// An empty network whose paths take `latency` one way.
    pub fn with_latency(latency: Duration) -> Sim {
        let start = Instant::now();
        Sim {
            now: start,
            start,
            latency,
            hosts: Vec::new(),
            nats: Vec::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            loss: Box::new(|_| false),
            delay: Box::new(|_| Duration::ZERO),
            counters: Counters::default(),
        }
    }

    /// Virtual now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Replaces the loss model.
    pub fn set_loss(&mut self, loss: impl FnMut(&Datagram) -> bool + 'static) {
        self.loss = Box::new(loss);
    }

    /// A host on the internet owning `ips`.
    pub fn add_public_host(&mut self, ips: &[&str]) -> HostId {
        self.hosts.push(Host {
            ips: ips.iter().map(|ip| ip.parse().expect("an IP")).collect(),
            behind: None,
        });
        HostId(self.hosts.len() - 1)
    }

    /// A NAT box with public IP `public_ip`.
    pub fn add_nat(&mut self, public_ip: &str, model: NatModel) -> NatId {
        self.nats
            .push(NatBox::new(public_ip.parse().expect("an IP"), model));
        NatId(self.nats.len() - 1)
    }

    /// A host with private address `ip` behind `nat`.
    pub fn add_host_behind(&mut self, nat: NatId, ip: &str) -> HostId {
        self.hosts.push(Host {
            ips: vec![ip.parse().expect("an IP")],
            behind: Some(nat),
        });
        HostId(self.hosts.len() - 1)
    }

    /// A NAT box, to look at its mappings.
    pub fn nat(&self, nat: NatId) -> &NatBox {
        &self.nats[nat.0]
    }

    /// Replaces the extra-delay model (`tc netem delay` on some paths).
    pub fn set_delay(&mut self, delay: impl FnMut(&Datagram) -> Duration + 'static) {
        self.delay = Box::new(delay);
    }

    /// Flushes the mappings of the NAT `host` is behind (a router's `conntrack -F`).
    pub fn flush_nat_of(&mut self, host: HostId) {
        if let Some(nat) = self.hosts[host.0].behind {
            self.nats[nat.0].flush();
        }
    }

    /// Sends `datagram` from `host` now: through its NAT, if any, then the loss model.
    pub fn send(&mut self, host: HostId, mut datagram: Datagram) {
        let h = &self.hosts[host.0];
        assert!(
            h.ips.contains(&datagram.src.ip()),
            "host {host:?} does not own {}",
            datagram.src
        );
        if let Some(nat) = h.behind {
            datagram.src = self.nats[nat.0].outbound(datagram.src, datagram.dst, self.now);
        }
        if (self.loss)(&datagram) {
            self.counters.lost += 1;
            return;
        }
        self.seq += 1;
        let extra = (self.delay)(&datagram);
        self.in_flight.push(Reverse(InFlight {
            at: self.now + self.latency + extra,
            seq: self.seq,
            datagram,
        }));
    }

    /// Where an arriving datagram ends up: the host and the datagram as it sees it.
    fn route(&mut self, mut datagram: Datagram) -> Option<(HostId, Datagram)> {
        let ip = datagram.dst.ip();
        let mut via = None;
        if let Some(n) = self.nats.iter().position(|nat| nat.public_ip() == ip) {
            let Some(inside) = self.nats[n].inbound(datagram.src, datagram.dst, self.now) else {
                self.counters.filtered += 1;
                return None;
            };
            datagram.dst = inside;
            via = Some(NatId(n));
        }
        let dst = datagram.dst.ip();
        match self
            .hosts
            .iter()
            .position(|h| h.behind == via && h.ips.contains(&dst))
        {
            Some(i) => {
                self.counters.delivered += 1;
                Some((HostId(i), datagram))
            }
            None => {
                self.counters.unroutable += 1;
                None
            }
        }
    }

    /// Steps `nodes` (each on its host) until no event is left before `until`, then sets the
    /// clock to `until`. After every input, each node's transmits are sent before time moves.
    pub fn run(&mut self, nodes: &mut [(HostId, &mut dyn Node)], until: Instant) {
        loop {
            for (host, node) in nodes.iter_mut() {
                while let Some(datagram) = node.poll_transmit() {
                    self.send(*host, datagram);
                }
            }
            let arrival = self.in_flight.peek().map(|Reverse(f)| f.at);
            let timer = nodes.iter().filter_map(|(_, n)| n.poll_timeout()).min();
            let next = match (arrival, timer) {
                (Some(a), Some(t)) => a.min(t),
                (a, t) => match a.or(t) {
                    Some(next) => next,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            while self
                .in_flight
                .peek()
                .is_some_and(|Reverse(f)| f.at <= self.now)
            {
                let Some(Reverse(f)) = self.in_flight.pop() else {
                    break;
                };
                if let Some((host, datagram)) = self.route(f.datagram) {
                    if let Some((_, node)) = nodes.iter_mut().find(|(h, _)| *h == host) {
                        node.handle_datagram(datagram, self.now);
                    }
                }
            }
            for (_, node) in nodes.iter_mut() {
                if node.poll_timeout().is_some_and(|t| t <= self.now) {
                    node.handle_timeout(self.now);
                }
            }
        }
        self.now = self.now.max(until);
    }
}

/// Loss of about `percent` % of datagrams, deterministic for a `seed` (xorshift64).
pub fn random_loss(percent: u64, seed: u64) -> impl FnMut(&Datagram) -> bool {
    let mut state = seed.max(1);
    move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % 100 < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what arrives.
    #[derive(Default)]
    struct Probe {
        got: Vec<(Instant, Datagram)>,
    }

    impl Node for Probe {
        fn handle_datagram(&mut self, datagram: Datagram, now: Instant) {
            self.got.push((now, datagram));
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self) -> Option<Datagram> {
            None
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    fn d(src: &str, dst: &str) -> Datagram {
        Datagram {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            payload: b"x".to_vec(),
        }
    }

    #[test]
    fn a_datagram_arrives_after_the_latency_with_the_nat_mapping_as_source() {
        let mut sim = Sim::default();
        let server = sim.add_public_host(&["198.51.100.1"]);
        let nat = sim.add_nat("203.0.113.1", NatModel::PORT_RESTRICTED);
        let client = sim.add_host_behind(nat, "10.0.0.2");
        sim.send(client, d("10.0.0.2:5000", "198.51.100.1:3478"));
        let mut probe = Probe::default();
        let t0 = sim.now();
        sim.run(&mut [(server, &mut probe)], t0 + Duration::from_secs(1));
        assert_eq!(probe.got.len(), 1);
        let (at, got) = &probe.got[0];
        assert_eq!(*at, t0 + DEFAULT_LATENCY);
        assert_eq!(got.src, "203.0.113.1:40000".parse().unwrap());
        assert_eq!(sim.elapsed(), Duration::from_secs(1));
        // The answer finds its way back in; a stranger's does not.
        sim.send(server, d("198.51.100.1:3478", "203.0.113.1:40000"));
        let stranger = sim.add_public_host(&["192.0.2.9"]);
        sim.send(stranger, d("192.0.2.9:3478", "203.0.113.1:40000"));
        let mut inside = Probe::default();
        let t1 = sim.now();
        sim.run(&mut [(client, &mut inside)], t1 + Duration::from_secs(1));
        assert_eq!(inside.got.len(), 1);
        assert_eq!(inside.got[0].1.dst, "10.0.0.2:5000".parse().unwrap());
        assert_eq!(sim.counters.filtered, 1);
    }

    #[test]
    fn loss_is_deterministic_for_a_seed() {
        let count = |seed| {
            let mut lose = random_loss(30, seed);
            (0..1000)
                .filter(|_| lose(&d("1.1.1.1:1", "2.2.2.2:2")))
                .count()
        };
        assert_eq!(count(7), count(7));
        assert!((250..350).contains(&count(7)), "{}", count(7));
    }
}
