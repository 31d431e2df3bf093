//! The relay's pure core: bindings of ticketed members to UDP addresses, and forwarding of
//! opaque payloads between bound members of the same party. Datagrams and the time go in;
//! at most one datagram comes out per datagram in, written over the input buffer, so an
//! answer can never be larger than what came in (no amplification). The caller owns the
//! socket and the clock and calls [`Relay::handle_timeout`] at [`Relay::poll_timeout`].
//!
//! Nothing is answered to a sender without a valid ticket and proof, nor to malformed input:
//! such datagrams are dropped and counted in [`Counters`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::bucket::Bucket;
use super::ticket::{BindKey, RelaySecret};
use super::Transmit;
use crate::wire::relay::{self as frame, Frame, MemberId, RefuseReason, TicketView};

/// Bindings without a frame from their member for this long are forgotten. Members send a
/// keepalive every 25 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A bind's timestamp may be this far from the relay's clock (the same skew the control
/// server allows relay registrations).
pub const BIND_WINDOW_MS: u64 = 60_000;
/// How often expired bindings are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Binds checked per second (each costs three HMACs), bursts of as many.
pub const BIND_CHECKS_PER_S: u64 = 2_000;

// A replayed bind must find its binding still there, or its timestamp out of the window:
// bindings live at least this long after their last bind.
const _: () = assert!(IDLE_TIMEOUT.as_millis() > BIND_WINDOW_MS as u128);

/// Limits of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most bound members at once.
    pub max_clients: usize,
    /// Frames per second per member (bursts of one second's worth).
    pub client_pps: u64,
    /// Bytes per second per member (bursts of one second's worth).
    pub client_bytes_per_s: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_clients: 512,
            client_pps: 10_000,
            client_bytes_per_s: 12_500_000,
        }
    }
}

/// The time, as the loop read it once for this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: rate limits, idle timeouts.
    pub at: Instant,
    /// Unix milliseconds: ticket expiry and bind timestamps.
    pub unix_ms: u64,
}

/// What the relay did, for people (logged on SIGUSR1 and periodically).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data frames forwarded.
    pub forwarded_packets: u64,
    /// Bytes of forwarded data frames.
    pub forwarded_bytes: u64,
    /// Keepalives answered.
    pub keepalives: u64,
    /// Binds accepted (new bindings and refreshes).
    pub binds_accepted: u64,
    /// Accepted binds that moved a binding to a new address.
    pub binds_moved: u64,
    /// Binds refused: expired ticket.
    pub refused_expired: u64,
    /// Binds refused: at the client limit.
    pub refused_full: u64,
    /// Binds refused: timestamp too far from the relay's clock.
    pub refused_clock: u64,
    /// Dropped: not a relay frame at all (another protocol).
    pub dropped_not_relay: u64,
    /// Dropped: a malformed relay frame, or one only a relay sends.
    pub dropped_malformed: u64,
    /// Dropped: data or keepalive from an address without a binding.
    pub dropped_unbound: u64,
    /// Dropped: a bind whose ticket is not signed with our secret.
    pub dropped_bad_ticket: u64,
    /// Dropped: a bind whose proof does not verify under the ticket's bind key.
    pub dropped_bad_proof: u64,
    /// Dropped: a bind whose timestamp does not exceed the binding's last one.
    pub dropped_replay: u64,
    /// Dropped: a bind from an address another live member is bound at.
    pub dropped_address_in_use: u64,
    /// Dropped: data for a member not bound here in the sender's party.
    pub dropped_no_destination: u64,
    /// Dropped: over the sender's packet or byte rate.
    pub dropped_rate_limited: u64,
    /// Dropped: binds beyond [`BIND_CHECKS_PER_S`].
    pub dropped_bind_flood: u64,
    /// Bindings forgotten after [`IDLE_TIMEOUT`] of silence.
    pub expired_idle: u64,
    /// Bindings removed when their ticket expired.
    pub expired_ticket: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwarded {} packets / {} bytes, {} keepalives; binds {} accepted ({} moved), \
             refused {} expired / {} full / {} clock; dropped: {} not relay, {} malformed, \
             {} unbound, {} bad ticket, {} bad proof, {} replay, {} address in use, \
             {} no destination, {} rate limited, {} bind flood; expired {} idle / {} ticket",
            self.forwarded_packets,
            self.forwarded_bytes,
            self.keepalives,
            self.binds_accepted,
            self.binds_moved,
            self.refused_expired,
            self.refused_full,
            self.refused_clock,
            self.dropped_not_relay,
            self.dropped_malformed,
            self.dropped_unbound,
            self.dropped_bad_ticket,
            self.dropped_bad_proof,
            self.dropped_replay,
            self.dropped_address_in_use,
            self.dropped_no_destination,
            self.dropped_rate_limited,
            self.dropped_bind_flood,
            self.expired_idle,
            self.expired_ticket,
        )
    }
}

/// A party, interned: bindings are keyed by its number, not its id string.
type PartyNo = u64;
type Key = (PartyNo, MemberId);

struct Binding {
    addr: SocketAddr,
    ticket_expires_ms: u64,
    last_timestamp_ms: u64,
    heard_at: Instant,
    packets: Bucket,
    bytes: Bucket,
}

/// The answer to a bind, computed before the input buffer is overwritten.
enum Answer {
    Bound(u64, BindKey),
    Refused(u64, RefuseReason, BindKey),
}

/// The relay's state.
pub struct Relay {
    config: Config,
    secret: RelaySecret,
    bindings: HashMap<Key, Binding>,
    by_addr: HashMap<SocketAddr, Key>,
    parties: HashMap<String, (PartyNo, usize)>,
    next_party: PartyNo,
    bind_checks: Bucket,
    next_sweep_at: Instant,
    counters: Counters,
}

impl Relay {
    /// A relay with no bindings, accepting tickets signed with `secret`.
    pub fn new(config: Config, secret: &[u8], now: Now) -> Relay {
        Relay {
            config,
            secret: RelaySecret::new(secret),
            bindings: HashMap::new(),
            by_addr: HashMap::new(),
            parties: HashMap::new(),
            next_party: 0,
            bind_checks: Bucket::new(BIND_CHECKS_PER_S, BIND_CHECKS_PER_S, now.at),
            next_sweep_at: now.at + SWEEP_EVERY,
            counters: Counters::default(),
        }
    }

    /// Bound members right now.
    pub fn clients(&self) -> usize {
        self.bindings.len()
    }

    /// The limits this relay enforces.
    pub fn config(&self) -> Config {
        self.config
    }

    /// What happened so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Counts a datagram the caller handed elsewhere or dropped before the core saw it.
    pub fn count_not_relay(&mut self) {
        self.counters.dropped_not_relay += 1;
    }

    /// Handles one datagram from `src`. The answer, if any, is written over `buf`.
    pub fn handle_datagram<'b>(
        &mut self,
        src: SocketAddr,
        buf: &'b mut [u8],
        now: Now,
    ) -> Option<Transmit<'b>> {
        if !frame::is_relay_frame(buf) {
            self.counters.dropped_not_relay += 1;
            return None;
        }
        let parsed = match Frame::parse(buf) {
            Ok(f) => f,
            Err(e) => {
                log::trace!("malformed relay frame ({e:?})");
                self.counters.dropped_malformed += 1;
                return None;
            }
        };
        match parsed {
            Frame::Bind {
                timestamp_ms,
                ticket,
                proof,
                signed,
            } => {
                let answer = self.bind(src, timestamp_ms, &ticket, proof, signed, now)?;
                let len = write_answer(buf, answer)?;
                Some(Transmit {
                    dst: src,
                    payload: &buf[..len],
                })
            }
            Frame::DataTo { to, .. } => {
                let (from, dst) = self.route(src, to, buf.len(), now)?;
                frame::emit_data_header(buf, frame::DATA_FROM, from).ok()?;
                self.counters.forwarded_packets += 1;
                self.counters.forwarded_bytes += buf.len() as u64;
                Some(Transmit { dst, payload: buf })
            }
            Frame::Keepalive { .. } => {
                let len = buf.len();
                self.admit(src, len, now)?;
                buf[0] = frame::KEEPALIVE_ACK;
                self.counters.keepalives += 1;
                Some(Transmit {
                    dst: src,
                    payload: buf,
                })
            }
            Frame::Bound { .. }
            | Frame::Refused { .. }
            | Frame::DataFrom { .. }
            | Frame::KeepaliveAck { .. } => {
                self.counters.dropped_malformed += 1;
                None
            }
        }
    }

    /// The sender's binding if it may send `len` more bytes now (refreshing it).
    fn admit(&mut self, src: SocketAddr, len: usize, now: Now) -> Option<Key> {
        let Some(&key) = self.by_addr.get(&src) else {
            self.counters.dropped_unbound += 1;
            return None;
        };
        let binding = self.bindings.get_mut(&key)?;
        binding.heard_at = now.at;
        let len = len as u64;
        if !binding.packets.has(1, now.at) || !binding.bytes.has(len, now.at) {
            self.counters.dropped_rate_limited += 1;
            return None;
        }
        binding.packets.spend(1);
        binding.bytes.spend(len);
        Some(key)
    }

    /// Sender member id and destination address of a data frame from `src` to `to`.
    fn route(
        &mut self,
        src: SocketAddr,
        to: MemberId,
        len: usize,
        now: Now,
    ) -> Option<(MemberId, SocketAddr)> {
        let (party, from) = self.admit(src, len, now)?;
        // Keyed by the sender's own party: another party's members cannot be named.
        match self.bindings.get(&(party, to)) {
            Some(dst) if to != from => Some((from, dst.addr)),
            _ => {
                self.counters.dropped_no_destination += 1;
                None
            }
        }
    }

    fn bind(
        &mut self,
        src: SocketAddr,
        timestamp_ms: u64,
        ticket: &TicketView<'_>,
        proof: &[u8],
        signed: &[u8],
        now: Now,
    ) -> Option<Answer> {
        if !self.bind_checks.take(1, now.at) {
            self.counters.dropped_bind_flood += 1;
            return None;
        }
        if !self.secret.verify(ticket) {
            self.counters.dropped_bad_ticket += 1;
            return None;
        }
        let key = self.secret.bind_key(ticket.bytes);
        if !key.verify(signed, proof) {
            self.counters.dropped_bad_proof += 1;
            return None;
        }
        let ticket_expires_ms = ticket.expires_at.saturating_mul(1000);
        if ticket_expires_ms <= now.unix_ms {
            self.counters.refused_expired += 1;
            return Some(Answer::Refused(timestamp_ms, RefuseReason::Expired, key));
        }
        if timestamp_ms.abs_diff(now.unix_ms) > BIND_WINDOW_MS {
            self.counters.refused_clock += 1;
            return Some(Answer::Refused(timestamp_ms, RefuseReason::Clock, key));
        }
        let existing = self
            .parties
            .get(ticket.party)
            .map(|(no, _)| (*no, ticket.member))
            .filter(|k| self.bindings.contains_key(k));
        if let Some(binding) = existing.and_then(|k| self.bindings.get(&k)) {
            if binding.last_timestamp_ms >= timestamp_ms {
                self.counters.dropped_replay += 1;
                return None;
            }
        }
        if let Some(other) = self.by_addr.get(&src) {
            if Some(*other) != existing {
                self.counters.dropped_address_in_use += 1;
                return None;
            }
        }
        match existing {
            Some(k) => {
                let binding = self.bindings.get_mut(&k)?;
                if binding.addr != src {
                    log::debug!(
                        "relay: member {} moved from {} to {src}",
                        ticket.member,
                        binding.addr
                    );
                    self.by_addr.remove(&binding.addr);
                    self.by_addr.insert(src, k);
                    binding.addr = src;
                    self.counters.binds_moved += 1;
                }
                binding.last_timestamp_ms = timestamp_ms;
                binding.ticket_expires_ms = ticket_expires_ms;
                binding.heard_at = now.at;
            }
            None => {
                if self.bindings.len() >= self.config.max_clients {
                    self.counters.refused_full += 1;
                    return Some(Answer::Refused(timestamp_ms, RefuseReason::Full, key));
                }
                let party = self.intern(ticket.party);
                let k = (party, ticket.member);
                let burst_pps = self.config.client_pps;
                let burst_bytes = self.config.client_bytes_per_s;
                self.bindings.insert(
                    k,
                    Binding {
                        addr: src,
                        ticket_expires_ms,
                        last_timestamp_ms: timestamp_ms,
                        heard_at: now.at,
                        packets: Bucket::new(self.config.client_pps, burst_pps, now.at),
                        bytes: Bucket::new(self.config.client_bytes_per_s, burst_bytes, now.at),
                    },
                );
                self.by_addr.insert(src, k);
                log::debug!(
                    "relay: member {} of a party bound at {src} ({} clients)",
                    ticket.member,
                    self.bindings.len()
                );
            }
        }
        self.counters.binds_accepted += 1;
        Some(Answer::Bound(timestamp_ms, key))
    }

    fn intern(&mut self, party: &str) -> PartyNo {
        if let Some((no, refs)) = self.parties.get_mut(party) {
            *refs += 1;
            return *no;
        }
        let no = self.next_party;
        self.next_party += 1;
        self.parties.insert(party.to_string(), (no, 1));
        no
    }

    fn release(&mut self, party: PartyNo) {
        let mut gone = None;
        for (id, (no, refs)) in self.parties.iter_mut() {
            if *no == party {
                *refs = refs.saturating_sub(1);
                if *refs == 0 {
                    gone = Some(id.clone());
                }
                break;
            }
        }
        if let Some(id) = gone {
            self.parties.remove(&id);
        }
    }

    /// When [`Relay::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep_at
    }

    /// Forgets idle bindings and those whose ticket expired.
    pub fn handle_timeout(&mut self, now: Now) {
        if now.at < self.next_sweep_at {
            return;
        }
        self.next_sweep_at = now.at + SWEEP_EVERY;
        let mut gone = Vec::new();
        for (key, b) in &self.bindings {
            if b.ticket_expires_ms <= now.unix_ms {
                self.counters.expired_ticket += 1;
                gone.push(*key);
            } else if now.at.saturating_duration_since(b.heard_at) >= IDLE_TIMEOUT {
                self.counters.expired_idle += 1;
                gone.push(*key);
            }
        }
        for key in gone {
            if let Some(b) = self.bindings.remove(&key) {
                self.by_addr.remove(&b.addr);
                self.release(key.0);
                log::debug!("relay: binding of member {} at {} ended", key.1, b.addr);
            }
        }
    }
}

fn write_answer(buf: &mut [u8], answer: Answer) -> Option<usize> {
    let (signed, key) = match &answer {
        Answer::Bound(ts, key) => (
            frame::emit_bound_signed(buf, *ts, IDLE_TIMEOUT.as_secs() as u16).ok()?,
            key,
        ),
        Answer::Refused(ts, reason, key) => {
            (frame::emit_refused_signed(buf, *ts, *reason).ok()?, key)
        }
    };
    let tag = key.tag(&buf[..signed]);
    frame::finish_tagged(buf, signed, &tag).ok()
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
