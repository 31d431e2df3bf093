//! NAT classification over STUN, as a state machine that owns no socket and reads no clock
//! (quinn-proto style): feed it datagrams with [`Classifier::handle_datagram`] and deadlines
//! with [`Classifier::handle_timeout`], drain [`Classifier::poll_transmit`], sleep until
//! [`Classifier::poll_timeout`], read [`Classifier::result`].
//!
//! The tests, in order (RFC 5780 §4.3-4.4), all from the one local socket:
//! 1. Binding to the primary server address `P` (the first one given): the mapped (public)
//!    address `M1`. No answer: `unknown`. `M1` is a local address: `open`.
//! 2. Filtering, two requests to `P` at once: CHANGE-REQUEST change-IP-and-port (a reply from
//!    the other IP and port means endpoint-independent filtering) and change-port (a reply
//!    from `P`'s IP and another port means address-dependent; none, address-and-port-
//!    dependent). These run before anything is sent to another server address: a packet sent
//!    there would open the NAT to the very replies being tested.
//! 3. Mapping: Binding to a server address `S` of another IP (and port, when the server has
//!    one): the same `M1` means endpoint-independent mapping, another one endpoint-dependent
//!    (symmetric).
//!
//! What cannot be learnt (a 420 from a server without alternate sockets, a lost test, a
//! server with one address) stays `None` in the [`NatReport`], and the type is `unknown`
//! unless the rest settles it (endpoint-dependent mapping is `symmetric` whatever the
//! filtering). Each request is retransmitted per RFC 5389 §7.2.1 (RTO doubling from 500 ms)
//! but bounded: [`MAX_TRANSMISSIONS`] sends and a final wait, [`TRANSACTION_TIMEOUT`] in all,
//! so a whole classification ends within three of those.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::NatType;
use crate::wire::stun::{self, ChangeRequest, Class, Encoder, Message, TransactionId, BINDING};

/// Initial retransmission timeout in milliseconds (RFC 5389 §7.2.1 asks for more than
/// 500 ms on unknown paths; we are at the bound).
const RTO_MS: u64 = 500;
/// Initial retransmission timeout; it doubles after every send.
pub const INITIAL_RTO: Duration = Duration::from_millis(RTO_MS);
/// Sends per request (RFC 5389's Rc is 7, which takes 39.5 s; classification must be quick).
pub const MAX_TRANSMISSIONS: u32 = 3;
/// After the last send, wait this many initial RTOs (RFC 5389's Rm, 16 there).
const LAST_WAIT_RTOS: u64 = 3;
/// From first send to giving up: sends at 0, 0.5 and 1.5 s, then 1.5 s more.
pub const TRANSACTION_TIMEOUT: Duration =
    Duration::from_millis(RTO_MS * ((1 << (MAX_TRANSMISSIONS - 1)) - 1 + LAST_WAIT_RTOS));

/// One datagram for the caller to send from the data plane's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination (a server STUN address).
    pub dst: SocketAddr,
    /// The STUN request.
    pub payload: Vec<u8>,
}

/// Mapping behaviour (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// One public address for every destination.
    EndpointIndependent,
    /// A public address per destination (address- or address-and-port-dependent).
    EndpointDependent,
}

/// Filtering behaviour (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filtering {
    /// Anyone may send to a mapping.
    EndpointIndependent,
    /// Only IPs the member has sent to.
    AddressDependent,
    /// Only IP and port pairs the member has sent to.
    AddressAndPortDependent,
}

/// What the classification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// The NAT type (`unknown` unless the findings below settle it).
    pub nat_type: NatType,
    /// The server-reflexive address (test 1), if the server answered.
    pub public: Option<SocketAddr>,
    /// Mapping behaviour, if learnt.
    pub mapping: Option<Mapping>,
    /// Filtering behaviour, if learnt.
    pub filtering: Option<Filtering>,
}

impl NatReport {
    fn from_findings(
        public: Option<SocketAddr>,
        mapping: Option<Mapping>,
        filtering: Option<Filtering>,
    ) -> NatReport {
        let nat_type = match (mapping, filtering) {
            (Some(Mapping::EndpointDependent), _) => NatType::Symmetric,
            (Some(Mapping::EndpointIndependent), Some(Filtering::EndpointIndependent)) => {
                NatType::FullCone
            }
            (Some(Mapping::EndpointIndependent), Some(Filtering::AddressDependent)) => {
                NatType::RestrictedCone
            }
            (Some(Mapping::EndpointIndependent), Some(Filtering::AddressAndPortDependent)) => {
                NatType::PortRestrictedCone
            }
            _ => NatType::Unknown,
        };
        NatReport {
            nat_type,
            public,
            mapping,
            filtering,
        }
    }
}

/// Which test a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Binding,
    ChangeIpAndPort,
    ChangePort,
    Mapping,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// A success response from `from`.
    Reply {
        from: SocketAddr,
        mapped: Option<SocketAddr>,
        other: Option<SocketAddr>,
    },
    /// An error response (a 420 for a change the server cannot make), or a success we
    /// cannot use.
    Refused,
    /// Nothing within [`TRANSACTION_TIMEOUT`].
    Silent,
}

struct Transaction {
    test: Test,
    id: TransactionId,
    dst: SocketAddr,
    payload: Vec<u8>,
    started_at: Instant,
    sent: u32,
}

impl Transaction {
    /// When the next send is due, or when it gives up after the last one.
    fn deadline(&self) -> Instant {
        transaction_deadline(self.started_at, self.sent)
    }
}

/// For a request first sent at `started_at` and sent `sent` times so far: when the next
/// send is due (RFC 5389 §7.2.1), or, after the last, when the transaction gives up.
pub fn transaction_deadline(started_at: Instant, sent: u32) -> Instant {
    if sent < MAX_TRANSMISSIONS {
        started_at + INITIAL_RTO * ((1 << sent) - 1)
    } else {
        started_at + TRANSACTION_TIMEOUT
    }
}

/// Where the classification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Binding,
    Filtering,
    Mapping,
    Done(NatReport),
}

/// The classification of the NAT in front of one local socket.
pub struct Classifier {
    servers: Vec<SocketAddr>,
    local: Vec<SocketAddr>,
    seed: TransactionId,
    /// Ids of every request of this run; late answers to them are taken and ignored.
    issued: Vec<TransactionId>,
    phase: Phase,
    pending: Vec<Transaction>,
    outbox: VecDeque<Transmit>,
    /// Answers of the finished requests of this run.
    heard: Vec<(Test, SocketAddr, Heard)>,
}

impl Classifier {
    /// Starts classifying with the server's STUN addresses (`servers[0]` is the primary;
    /// addresses of another family are ignored) and the socket's own addresses (`local`:
    /// interface addresses with its port). `seed` makes the transaction ids: give it fresh
    /// random bytes, since ids are all that ties a reply to a request.
    pub fn new(
        servers: &[SocketAddr],
        local: &[SocketAddr],
        seed: TransactionId,
        now: Instant,
    ) -> Classifier {
        let family = servers.first().map(SocketAddr::is_ipv4);
        let mut c = Classifier {
            servers: servers
                .iter()
                .copied()
                .filter(|s| Some(s.is_ipv4()) == family)
                .collect(),
            local: local.to_vec(),
            seed,
            issued: Vec::new(),
            phase: Phase::Binding,
            pending: Vec::new(),
            outbox: VecDeque::new(),
            heard: Vec::new(),
        };
        match c.servers.first() {
            Some(&primary) => c.start(Test::Binding, primary, now),
            None => c.phase = Phase::Done(NatReport::from_findings(None, None, None)),
        }
        c
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`Classifier::handle_timeout`] must run next; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(Transaction::deadline).min()
    }

    /// The finding, once every test has ended.
    pub fn result(&self) -> Option<NatReport> {
        match self.phase {
            Phase::Done(report) => Some(report),
            _ => None,
        }
    }

    /// Retransmits what is due and gives up on requests past [`TRANSACTION_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        for t in &mut self.pending {
            if now < t.deadline() {
                continue;
            }
            if t.sent < MAX_TRANSMISSIONS {
                t.sent += 1;
                self.outbox.push_back(Transmit {
                    dst: t.dst,
                    payload: t.payload.clone(),
                });
            } else {
                timed_out.push(t.id);
            }
        }
        for id in timed_out {
            self.finish(id, Heard::Silent, now);
        }
    }

    /// Takes a datagram that arrived on the socket from `from`; returns whether it was a
    /// response to one of our requests (the caller drops or routes it otherwise).
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> bool {
        if !stun::is_stun(bytes) {
            return false;
        }
        let Ok(m) = Message::parse(bytes) else {
            return false;
        };
        if !self.issued.contains(&m.transaction) {
            return false;
        }
        let heard = match m.class {
            // RFC 5389 §7.3.3: unknown comprehension-required attributes fail the transaction.
            Class::Success if m.unknown.is_empty() => Heard::Reply {
                from,
                mapped: m.mapped(),
                other: m.other_address,
            },
            Class::Success | Class::Error => Heard::Refused,
            Class::Request | Class::Indication => return false,
        };
        // A second answer (to a retransmission) or one to a request given up on is ignored.
        log::trace!("nat: {heard:?} for a request of this classification");
        self.finish(m.transaction, heard, now);
        true
    }

    fn start(&mut self, test: Test, dst: SocketAddr, now: Instant) {
        let mut id = self.seed;
        let count = self.issued.len() as u32;
        for (b, c) in id[8..].iter_mut().zip(count.to_be_bytes()) {
            *b ^= c;
        }
        self.issued.push(id);
        let mut e = Encoder::new(Class::Request, BINDING, id);
        match test {
            Test::ChangeIpAndPort => {
                e.change_request(ChangeRequest {
                    ip: true,
                    port: true,
                });
            }
            Test::ChangePort => {
                e.change_request(ChangeRequest {
                    ip: false,
                    port: true,
                });
            }
            Test::Binding | Test::Mapping => {}
        }
        let payload = e.finish_with_fingerprint();
        self.outbox.push_back(Transmit {
            dst,
            payload: payload.clone(),
        });
        self.pending.push(Transaction {
            test,
            id,
            dst,
            payload,
            started_at: now,
            sent: 1,
        });
    }

    fn finish(&mut self, id: TransactionId, heard: Heard, now: Instant) {
        let Some(at) = self.pending.iter().position(|t| t.id == id) else {
            return;
        };
        let t = self.pending.swap_remove(at);
        self.heard.push((t.test, t.dst, heard));
        self.advance(now);
    }

    fn heard(&self, test: Test) -> Option<(SocketAddr, Heard)> {
        self.heard
            .iter()
            .find(|(t, _, _)| *t == test)
            .map(|(_, dst, heard)| (*dst, *heard))
    }

    /// Moves to the next phase once the current one's requests have ended.
    fn advance(&mut self, now: Instant) {
        match self.phase {
            Phase::Binding => {
                let Some((primary, heard)) = self.heard(Test::Binding) else {
                    return;
                };
                let Heard::Reply {
                    mapped: Some(m1), ..
                } = heard
                else {
                    return self.done(None, None, None);
                };
                if self.local.contains(&m1) {
                    self.phase = Phase::Done(NatReport {
                        nat_type: NatType::Open,
                        public: Some(m1),
                        mapping: Some(Mapping::EndpointIndependent),
                        filtering: None,
                    });
                    return;
                }
                self.phase = Phase::Filtering;
                self.start(Test::ChangeIpAndPort, primary, now);
                self.start(Test::ChangePort, primary, now);
            }
            Phase::Filtering => {
                let eif = self.filtering_test(Test::ChangeIpAndPort);
                if eif == Some(true) {
                    // Endpoint-independent: the change-port answer adds nothing.
                    self.pending.retain(|t| t.test != Test::ChangePort);
                } else if !self.pending.is_empty() {
                    return;
                }
                self.phase = Phase::Mapping;
                match self.mapping_target() {
                    Some(target) => self.start(Test::Mapping, target, now),
                    None => self.conclude(),
                }
            }
            Phase::Mapping => self.conclude(),
            Phase::Done(_) => {}
        }
    }

    /// Whether the reply to a filtering test got through: `Some(true)` if it came from where
    /// the test asked, `Some(false)` if none came, `None` if the server could not make the
    /// change (or answered from elsewhere, which tells nothing).
    fn filtering_test(&self, test: Test) -> Option<bool> {
        let (primary, heard) = self.heard(test)?;
        match heard {
            Heard::Silent => Some(false),
            Heard::Refused => None,
            Heard::Reply { from, .. } => {
                let moved = match test {
                    Test::ChangeIpAndPort => {
                        from.ip() != primary.ip() && from.port() != primary.port()
                    }
                    _ => from.ip() == primary.ip() && from.port() != primary.port(),
                };
                moved.then_some(true)
            }
        }
    }

    /// The address to compare mappings with: one with another IP and port, else the
    /// primary's OTHER-ADDRESS, else another IP, else another port.
    fn mapping_target(&self) -> Option<SocketAddr> {
        let (primary, heard) = self.heard(Test::Binding)?;
        let other = match heard {
            Heard::Reply { other, .. } => other.filter(|o| o.is_ipv4() == primary.is_ipv4()),
            _ => None,
        };
        let find =
            |pred: &dyn Fn(&SocketAddr) -> bool| self.servers.iter().copied().find(|s| pred(s));
        find(&|s| s.ip() != primary.ip() && s.port() != primary.port())
            .or(other.filter(|o| o.ip() != primary.ip()))
            .or_else(|| find(&|s| s.ip() != primary.ip()))
            .or_else(|| find(&|s| s.ip() == primary.ip() && s.port() != primary.port()))
    }

    fn conclude(&mut self) {
        let Some((
            primary,
            Heard::Reply {
                mapped: Some(m1), ..
            },
        )) = self.heard(Test::Binding)
        else {
            return self.done(None, None, None);
        };
        let filtering = match (
            self.filtering_test(Test::ChangeIpAndPort),
            self.filtering_test(Test::ChangePort),
        ) {
            (Some(true), _) => Some(Filtering::EndpointIndependent),
            (Some(false), Some(true)) => Some(Filtering::AddressDependent),
            // A reply from the same IP was filtered: only port-dependent filtering does that.
            (_, Some(false)) => Some(Filtering::AddressAndPortDependent),
            _ => None,
        };
        let mapping = match self.heard(Test::Mapping) {
            Some((
                target,
                Heard::Reply {
                    mapped: Some(m2), ..
                },
            )) => {
                if m2 != m1 {
                    Some(Mapping::EndpointDependent)
                } else if target.ip() != primary.ip() {
                    Some(Mapping::EndpointIndependent)
                } else {
                    // Same mapping for another port of the same IP: address-dependent
                    // mapping would look the same.
                    None
                }
            }
            _ => None,
        };
        self.done(Some(m1), mapping, filtering);
    }

    fn done(
        &mut self,
        public: Option<SocketAddr>,
        mapping: Option<Mapping>,
        filtering: Option<Filtering>,
    ) {
        self.pending.clear();
        let report = NatReport::from_findings(public, mapping, filtering);
        log::info!(
            "nat: {:?} (mapping {mapping:?}, filtering {filtering:?})",
            report.nat_type
        );
        self.phase = Phase::Done(report);
    }
}

#[cfg(test)]
mod tests;
