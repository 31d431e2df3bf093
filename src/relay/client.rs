//! A member's side of one relay, as a pure state machine: binds with a ticket, refreshes the
//! binding with each new ticket, keeps it (and the NAT mapping) alive, measures the relay's
//! RTT from bind and keepalive answers, wraps outgoing WireGuard datagrams for a peer into
//! data frames and unwraps incoming ones.
//!
//! It owns no socket and reads no clock. The caller (the data plane) feeds it datagrams from
//! the relay's address with [`RelayClient::handle_datagram`], calls
//! [`RelayClient::handle_timeout`] at [`RelayClient::poll_timeout`], sends what
//! [`RelayClient::poll_transmit`] returns to [`RelayClient::relay`], and reacts to
//! [`RelayClient::poll_event`] (fetch a ticket on [`Event::NeedTicket`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ticket::BindKey;
use super::Transmit;
use crate::wire::relay::{self as frame, Frame, MemberId, RefuseReason};

/// Keepalives this often keep the binding and the NAT mapping alive (below Linux's 30 s UDP
/// timeout for unreplied flows).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// A keepalive unanswered this long starts a re-bind (the NAT mapping may have changed).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// First bind retransmission; doubles up to [`BIND_RETRY_MAX`].
pub const BIND_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between bind retransmissions.
pub const BIND_RETRY_MAX: Duration = Duration::from_secs(16);
/// Unanswered binds after which the relay counts as lost ([`Event::Lost`]).
pub const LOST_AFTER_BINDS: u32 = 3;
/// While a needed ticket has not arrived, [`Event::NeedTicket`] repeats this often.
pub const TICKET_RETRY: Duration = Duration::from_secs(30);
/// A relay that refused for being full is tried again after this long.
pub const FULL_RETRY: Duration = Duration::from_secs(60);

/// A ticket from the control server (`POST /v1/parties/{id}/relay-ticket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Ticket bytes.
    pub ticket: Vec<u8>,
    /// The bind key that came with it.
    pub bind_key: [u8; 32],
    /// Unix seconds the ticket expires (server clock).
    pub expires_at: u64,
    /// The server's Unix seconds when it issued the ticket: bind timestamps follow this
    /// clock, so a member's own wrong clock does not matter.
    pub server_time: u64,
}

/// Where the binding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No usable ticket.
    NoTicket,
    /// Binds sent, none answered yet.
    Binding {
        /// Binds sent in this series.
        attempts: u32,
    },
    /// The relay accepted a bind.
    Bound {
        /// When the binding was first confirmed.
        since: Instant,
    },
    /// The relay refused the last bind.
    Refused(RefuseReason),
}

/// Something the caller should know or act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Fetch a ticket and pass it to [`RelayClient::handle_ticket`].
    NeedTicket,
    /// The relay accepted the binding (first time, or again after losing it).
    Bound,
    /// The relay refused a bind; `Full` means: use another relay.
    Refused(RefuseReason),
    /// [`LOST_AFTER_BINDS`] binds went unanswered: the relay may be down.
    Lost,
    /// The ticket expired before a new one came.
    TicketExpired,
}

/// A data frame from the relay.
#[derive(Debug, PartialEq, Eq)]
pub struct Received<'a> {
    /// The member that sent it.
    pub from: MemberId,
    /// The WireGuard datagram.
    pub payload: &'a [u8],
}

struct Ticket {
    bytes: Vec<u8>,
    key: BindKey,
    expires_at: Instant,
    /// When to ask for the next ticket; `None` once asked.
    refresh_at: Option<Instant>,
}

/// Remembered binds, so a late answer still counts and gives an RTT sample.
const SENT_BINDS: usize = 4;

/// One relay as a member sees it.
pub struct RelayClient {
    relay: SocketAddr,
    state: State,
    ticket: Option<Ticket>,
    /// Server Unix milliseconds at an instant: bind timestamps follow the server's clock.
    clock: Option<(u64, Instant)>,
    last_timestamp_ms: u64,
    bind_due_at: Option<Instant>,
    bind_retry: Duration,
    sent_binds: VecDeque<(u64, Instant)>,
    keepalive_due_at: Option<Instant>,
    keepalive_pending: Option<(u64, Instant)>,
    keepalive_seq: u64,
    ticket_wanted_at: Option<Instant>,
    srtt: Option<Duration>,
    events: VecDeque<Event>,
    buf: Vec<u8>,
}

impl RelayClient {
    /// A client for the relay at `relay`; it asks for a ticket first.
    pub fn new(relay: SocketAddr, now: Instant) -> RelayClient {
        RelayClient {
            relay,
            state: State::NoTicket,
            ticket: None,
            clock: None,
            last_timestamp_ms: 0,
            bind_due_at: None,
            bind_retry: BIND_RETRY_FIRST,
            sent_binds: VecDeque::new(),
            keepalive_due_at: None,
            keepalive_pending: None,
            keepalive_seq: 0,
            ticket_wanted_at: Some(now),
            srtt: None,
            events: VecDeque::new(),
            buf: vec![0; frame::BIND_FIXED_LEN + 255],
        }
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// Where the binding stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Smoothed round-trip time to the relay (RFC 6298 §2, alpha 1/8), once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Whether data frames can go out now.
    pub fn is_bound(&self) -> bool {
        matches!(self.state, State::Bound { .. })
    }

    /// Takes a new ticket: binds (or refreshes the binding) at once.
    pub fn handle_ticket(&mut self, grant: Grant, now: Instant) {
        if grant.ticket.len() > 255 {
            return;
        }
        let server_ms = grant.server_time.saturating_mul(1000);
        self.clock = Some((server_ms, now));
        let lifetime = Duration::from_millis(
            grant
                .expires_at
                .saturating_mul(1000)
                .saturating_sub(server_ms),
        );
        self.ticket = Some(Ticket {
            bytes: grant.ticket,
            key: BindKey::new(grant.bind_key),
            expires_at: now + lifetime,
            refresh_at: Some(now + lifetime * 2 / 3),
        });
        self.ticket_wanted_at = None;
        if !self.is_bound() {
            self.state = State::Binding { attempts: 0 };
        }
        self.bind_due_at = Some(now);
        self.bind_retry = BIND_RETRY_FIRST;
    }

    /// Binds again at once with the ticket we have (our public address moved: the relay
    /// knows us at the old one). The binding stays usable meanwhile.
    pub fn refresh(&mut self, now: Instant) {
        if self.ticket.is_some() {
            self.bind_due_at = Some(now);
            self.bind_retry = BIND_RETRY_FIRST;
        }
    }

    /// The next datagram for the relay, if one is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        if self.bind_due_at.is_some_and(|at| at <= now) {
            return self.send_bind(now);
        }
        if self.is_bound() && self.keepalive_due_at.is_some_and(|at| at <= now) {
            self.keepalive_seq += 1;
            let echo = self.keepalive_seq;
            self.keepalive_pending = Some((echo, now));
            self.keepalive_due_at = Some(now + KEEPALIVE_INTERVAL);
            let len = frame::emit_keepalive(&mut self.buf, frame::KEEPALIVE, echo).ok()?;
            return Some(Transmit {
                dst: self.relay,
                payload: &self.buf[..len],
            });
        }
        None
    }

    fn send_bind(&mut self, now: Instant) -> Option<Transmit<'_>> {
        let Some(ticket) = &self.ticket else {
            self.bind_due_at = None;
            return None;
        };
        let (base_ms, base_at) = self.clock?;
        let server_ms = base_ms + now.saturating_duration_since(base_at).as_millis() as u64;
        let timestamp_ms = server_ms.max(self.last_timestamp_ms + 1);
        self.last_timestamp_ms = timestamp_ms;
        let signed = frame::emit_bind_signed(&mut self.buf, timestamp_ms, &ticket.bytes).ok()?;
        let tag = ticket.key.tag(&self.buf[..signed]);
        let len = frame::finish_tagged(&mut self.buf, signed, &tag).ok()?;
        if self.sent_binds.len() == SENT_BINDS {
            self.sent_binds.pop_front();
        }
        self.sent_binds.push_back((timestamp_ms, now));
        self.bind_due_at = Some(now + self.bind_retry);
        self.bind_retry = (self.bind_retry * 2).min(BIND_RETRY_MAX);
        if let State::Binding { attempts } = &mut self.state {
            *attempts += 1;
            if *attempts == LOST_AFTER_BINDS + 1 {
                self.events.push_back(Event::Lost);
            }
        }
        Some(Transmit {
            dst: self.relay,
            payload: &self.buf[..len],
        })
    }

    /// Handles a datagram that came from `src`; returns the payload of a data frame.
    pub fn handle_datagram<'a>(
        &mut self,
        src: SocketAddr,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<Received<'a>> {
        if src != self.relay {
            return None;
        }
        match Frame::parse(bytes).ok()? {
            Frame::DataFrom { from, payload } => Some(Received { from, payload }),
            Frame::Bound {
                timestamp_ms,
                tag,
                signed,
                ..
            } => {
                let sent_at = self.answered_bind(timestamp_ms, signed, tag)?;
                self.sample_rtt(now.saturating_duration_since(sent_at));
                if !self.is_bound() {
                    self.state = State::Bound { since: now };
                    self.events.push_back(Event::Bound);
                }
                self.bind_due_at = None;
                self.bind_retry = BIND_RETRY_FIRST;
                self.keepalive_pending = None;
                self.keepalive_due_at = Some(now + KEEPALIVE_INTERVAL);
                None
            }
            Frame::Refused {
                timestamp_ms,
                reason,
                tag,
                signed,
            } => {
                self.answered_bind(timestamp_ms, signed, tag)?;
                self.state = State::Refused(reason);
                self.keepalive_due_at = None;
                self.keepalive_pending = None;
                self.events.push_back(Event::Refused(reason));
                match reason {
                    RefuseReason::Full => self.bind_due_at = Some(now + FULL_RETRY),
                    RefuseReason::Expired | RefuseReason::Clock => {
                        self.ticket = None;
                        self.bind_due_at = None;
                        self.want_ticket(now);
                    }
                }
                None
            }
            Frame::KeepaliveAck { echo } => {
                if let Some((pending, sent_at)) = self.keepalive_pending {
                    if pending == echo {
                        self.keepalive_pending = None;
                        self.sample_rtt(now.saturating_duration_since(sent_at));
                    }
                }
                None
            }
            Frame::Bind { .. } | Frame::DataTo { .. } | Frame::Keepalive { .. } => None,
        }
    }

    /// The send time of the bind this tagged answer is for, if it is genuine and ours.
    fn answered_bind(&mut self, timestamp_ms: u64, signed: &[u8], tag: &[u8]) -> Option<Instant> {
        let ticket = self.ticket.as_ref()?;
        if !ticket.key.verify(signed, tag) {
            return None;
        }
        let at = self
            .sent_binds
            .iter()
            .position(|(ts, _)| *ts == timestamp_ms)?;
        let (_, sent_at) = self.sent_binds[at];
        // Answers to earlier binds no longer count.
        self.sent_binds.drain(..=at);
        Some(sent_at)
    }

    fn sample_rtt(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(srtt) => (srtt * 7 + sample) / 8,
        });
    }

    fn want_ticket(&mut self, now: Instant) {
        self.events.push_back(Event::NeedTicket);
        self.ticket_wanted_at = Some(now + TICKET_RETRY);
    }

    /// Wraps a WireGuard datagram for member `to` into `out`; `None` while not bound (or
    /// if `out` is shorter than the payload plus [`frame::DATA_HEADER_LEN`]).
    pub fn encapsulate<'o>(
        &self,
        to: MemberId,
        payload: &[u8],
        out: &'o mut [u8],
    ) -> Option<Transmit<'o>> {
        if !self.is_bound() {
            return None;
        }
        let len = frame::emit_data(out, frame::DATA_TO, to, payload).ok()?;
        Some(Transmit {
            dst: self.relay,
            payload: &out[..len],
        })
    }

    /// The next thing the caller should know.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`RelayClient::handle_timeout`] or [`RelayClient::poll_transmit`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keepalive = if self.is_bound() {
            self.keepalive_due_at
        } else {
            None
        };
        [
            self.bind_due_at,
            keepalive,
            self.keepalive_pending.map(|(_, at)| at + ACK_TIMEOUT),
            self.ticket_wanted_at,
            self.ticket
                .as_ref()
                .map(|t| t.refresh_at.unwrap_or(t.expires_at).min(t.expires_at)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, sent_at)) = self.keepalive_pending {
            if now >= sent_at + ACK_TIMEOUT {
                // Unanswered: the relay may have lost us or our NAT mapping changed. A
                // fresh bind from wherever we are now restores the binding.
                self.keepalive_pending = None;
                self.state = State::Binding { attempts: 0 };
                self.bind_due_at = Some(now);
                self.bind_retry = BIND_RETRY_FIRST;
            }
        }
        if let Some(ticket) = &mut self.ticket {
            if now >= ticket.expires_at {
                self.ticket = None;
                self.bind_due_at = None;
                self.keepalive_due_at = None;
                self.keepalive_pending = None;
                self.state = State::NoTicket;
                self.events.push_back(Event::TicketExpired);
                self.want_ticket(now);
            } else if ticket.refresh_at.is_some_and(|at| now >= at) {
                ticket.refresh_at = None;
                self.want_ticket(now);
            }
        }
        if self.ticket_wanted_at.is_some_and(|at| at <= now) {
            self.want_ticket(now);
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
