//! A NAT box with the behaviours RFC 4787 names: mapping (§4.1) and filtering (§5), each
//! endpoint-independent, address-dependent or address-and-port-dependent, and a mapping
//! timeout refreshed by outbound traffic only (REQ-6). Public ports are handed out in order
//! from 40000 and never reused, so a new mapping is always visible as a new port.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Which outbound datagrams share a mapping (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingBehaviour {
    /// Every destination: one public port per internal address and port.
    EndpointIndependent,
    /// Destinations with the same IP.
    AddressDependent,
    /// Only the same destination IP and port.
    AddressAndPortDependent,
}

/// Which inbound datagrams a mapping lets in (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilteringBehaviour {
    /// From anyone.
    EndpointIndependent,
    /// From IPs the host has sent to through the mapping.
    AddressDependent,
    /// From IP and port pairs the host has sent to through the mapping.
    AddressAndPortDependent,
}

/// A NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatModel {
    /// Mapping behaviour.
    pub mapping: MappingBehaviour,
    /// Filtering behaviour.
    pub filtering: FilteringBehaviour,
    /// A mapping without outbound traffic for this long is gone.
    pub timeout: Duration,
}

/// Linux's conntrack timeout of an assured UDP flow (design.md §4).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl NatModel {
    /// Endpoint-independent mapping and filtering.
    pub const FULL_CONE: NatModel = NatModel::new(
        MappingBehaviour::EndpointIndependent,
        FilteringBehaviour::EndpointIndependent,
    );
    /// Endpoint-independent mapping, address-dependent filtering.
    pub const RESTRICTED: NatModel = NatModel::new(
        MappingBehaviour::EndpointIndependent,
        FilteringBehaviour::AddressDependent,
    );
    /// Endpoint-independent mapping, address-and-port-dependent filtering (Linux
    /// `masquerade`).
    pub const PORT_RESTRICTED: NatModel = NatModel::new(
        MappingBehaviour::EndpointIndependent,
        FilteringBehaviour::AddressAndPortDependent,
    );
    /// Address-and-port-dependent mapping and filtering (Linux `masquerade random`).
    pub const SYMMETRIC: NatModel = NatModel::new(
        MappingBehaviour::AddressAndPortDependent,
        FilteringBehaviour::AddressAndPortDependent,
    );

    /// A model with the default timeout.
    pub const fn new(mapping: MappingBehaviour, filtering: FilteringBehaviour) -> NatModel {
        NatModel {
            mapping,
            filtering,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One mapping: an internal endpoint, the destination it was made for, its public port.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The host's private address and port.
    pub internal: SocketAddr,
    /// The destination that created it (what the mapping behaviour keys on).
    pub created_for: SocketAddr,
    /// Public port on the NAT's IP.
    pub public_port: u16,
    /// Last outbound datagram.
    pub used_at: Instant,
    /// Every destination sent to through it (what filtering checks).
    pub sent_to: Vec<SocketAddr>,
}

/// A NAT box.
pub struct NatBox {
    public_ip: IpAddr,
    model: NatModel,
    next_port: u16,
    mappings: Vec<Mapping>,
}

/// First public port handed out.
pub const FIRST_PORT: u16 = 40000;

impl NatBox {
    /// A NAT with `public_ip` behaving as `model`.
    pub fn new(public_ip: IpAddr, model: NatModel) -> NatBox {
        NatBox {
            public_ip,
            model,
            next_port: FIRST_PORT,
            mappings: Vec::new(),
        }
    }

    /// The public IP.
    pub fn public_ip(&self) -> IpAddr {
        self.public_ip
    }

    /// Live mappings.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Forgets every mapping, as `conntrack -F` on a router does: the next outbound datagram
    /// of each flow gets a new public port.
    pub fn flush(&mut self) {
        self.mappings.clear();
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.model.timeout;
        self.mappings
            .retain(|m| now.saturating_duration_since(m.used_at) < timeout);
    }

    /// Translates an outbound datagram from `internal` to `dst`: the public source address.
    pub fn outbound(&mut self, internal: SocketAddr, dst: SocketAddr, now: Instant) -> SocketAddr {
        self.expire(now);
        let shares = |m: &Mapping| {
            m.internal == internal
                && match self.model.mapping {
                    MappingBehaviour::EndpointIndependent => true,
                    MappingBehaviour::AddressDependent => m.created_for.ip() == dst.ip(),
                    MappingBehaviour::AddressAndPortDependent => m.created_for == dst,
                }
        };
        let at = match self.mappings.iter().position(shares) {
            Some(at) => at,
            None => {
                let public_port = self.next_port;
                self.next_port = self.next_port.wrapping_add(1).max(FIRST_PORT);
                self.mappings.push(Mapping {
                    internal,
                    created_for: dst,
                    public_port,
                    used_at: now,
                    sent_to: Vec::new(),
                });
                self.mappings.len() - 1
            }
        };
        let m = &mut self.mappings[at];
        m.used_at = now;
        if !m.sent_to.contains(&dst) {
            m.sent_to.push(dst);
        }
        SocketAddr::new(self.public_ip, m.public_port)
    }

    /// Translates an inbound datagram from `src` to `dst` (our public IP): the internal
    /// destination, or `None` when no live mapping has that port or filtering drops it.
    pub fn inbound(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        now: Instant,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let m = self.mappings.iter().find(|m| m.public_port == dst.port())?;
        let allowed = match self.model.filtering {
            FilteringBehaviour::EndpointIndependent => true,
            FilteringBehaviour::AddressDependent => m.sent_to.iter().any(|s| s.ip() == src.ip()),
            FilteringBehaviour::AddressAndPortDependent => m.sent_to.contains(&src),
        };
        allowed.then_some(m.internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const HOST: &str = "10.0.0.2:5000";
    const S1: &str = "198.51.100.1:3478";
    const S2: &str = "198.51.100.1:3479";
    const S3: &str = "198.51.100.2:3478";

    fn nat(mapping: MappingBehaviour, filtering: FilteringBehaviour) -> NatBox {
        NatBox::new(
            "203.0.113.1".parse().unwrap(),
            NatModel::new(mapping, filtering),
        )
    }

    #[test]
    fn mapping_behaviours_share_ports_as_rfc_4787_says() {
        use MappingBehaviour::*;
        let now = Instant::now();
        for (mapping, ports) in [
            (EndpointIndependent, [40000, 40000, 40000]),
            (AddressDependent, [40000, 40000, 40001]),
            (AddressAndPortDependent, [40000, 40001, 40002]),
        ] {
            let mut n = nat(mapping, FilteringBehaviour::EndpointIndependent);
            let got = [S1, S2, S3].map(|dst| n.outbound(a(HOST), a(dst), now).port());
            assert_eq!(got, ports, "{mapping:?}");
            assert_eq!(n.outbound(a(HOST), a(S1), now).port(), 40000, "stable");
        }
    }

    #[test]
    fn filtering_behaviours_let_in_what_rfc_4787_says() {
        use FilteringBehaviour::*;
        let now = Instant::now();
        let public = a("203.0.113.1:40000");
        for (filtering, from_s2, from_s3) in [
            (EndpointIndependent, true, true),
            (AddressDependent, true, false),
            (AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(MappingBehaviour::EndpointIndependent, filtering);
            n.outbound(a(HOST), a(S1), now);
            assert_eq!(n.inbound(a(S1), public, now), Some(a(HOST)));
            assert_eq!(
                n.inbound(a(S2), public, now).is_some(),
                from_s2,
                "{filtering:?}"
            );
            assert_eq!(
                n.inbound(a(S3), public, now).is_some(),
                from_s3,
                "{filtering:?}"
            );
            assert_eq!(
                n.inbound(a(S1), a("203.0.113.1:40001"), now),
                None,
                "no mapping"
            );
        }
    }

    #[test]
    fn an_idle_mapping_expires_and_comes_back_on_a_new_port() {
        let t0 = Instant::now();
        let mut n = NatBox::new(
            "203.0.113.1".parse().unwrap(),
            NatModel {
                timeout: Duration::from_secs(30),
                ..NatModel::PORT_RESTRICTED
            },
        );
        let public = n.outbound(a(HOST), a(S1), t0);
        // Inbound traffic does not refresh it (RFC 4787 REQ-6 allows outbound refresh only).
        assert!(n
            .inbound(a(S1), public, t0 + Duration::from_secs(29))
            .is_some());
        assert_eq!(n.inbound(a(S1), public, t0 + Duration::from_secs(30)), None);
        assert!(n.mappings().is_empty());
        let again = n.outbound(a(HOST), a(S1), t0 + Duration::from_secs(31));
        assert_eq!(again.port(), public.port() + 1);
        // Outbound traffic keeps it alive.
        let t1 = t0 + Duration::from_secs(31);
        n.outbound(a(HOST), a(S1), t1 + Duration::from_secs(20));
        assert!(n
            .inbound(a(S1), again, t1 + Duration::from_secs(45))
            .is_some());
    }
}
