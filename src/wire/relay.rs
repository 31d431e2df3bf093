//! Relay frames (docs/PROTOCOL.md, "Relay frames"): what members and `lanparty-lite relay`
//! exchange on UDP, and the relay ticket they carry. Codec only: parsing borrows the
//! datagram, emitting writes into a caller's buffer; no I/O, no clock, no cryptography (MACs
//! are opaque bytes here and checked by `relay::ticket`).
//!
//! Every frame starts with a type byte in 0xA0..=0xAF, which neither WireGuard (1..4 and
//! three zero bytes) nor STUN (top two bits zero) can start with. 0xB0..=0xBF is reserved
//! for peer probes.

use std::fmt;

/// Member → relay: bind with a ticket and a proof.
pub const BIND: u8 = 0xA0;
/// Relay → member: the bind was accepted.
pub const BOUND: u8 = 0xA1;
/// Relay → member: a bind with a valid proof was refused.
pub const REFUSED: u8 = 0xA2;
/// Member → relay: payload for another member.
pub const DATA_TO: u8 = 0xA3;
/// Relay → member: payload from another member.
pub const DATA_FROM: u8 = 0xA4;
/// Member → relay: keep the binding (and the NAT mapping) alive; measures the RTT.
pub const KEEPALIVE: u8 = 0xA5;
/// Relay → member: answer to a keepalive, same size.
pub const KEEPALIVE_ACK: u8 = 0xA6;

/// The version byte of bind frames and tickets.
pub const VERSION: u8 = 1;
/// Length of the truncated HMAC-SHA256 tags in bind, bound and refused frames.
pub const TAG_LEN: usize = 16;
/// Length of a ticket's full HMAC-SHA256 tag.
pub const TICKET_MAC_LEN: usize = 32;
/// Header of a data frame: type byte and member id.
pub const DATA_HEADER_LEN: usize = 7;
/// Keepalive and keepalive-ack length.
pub const KEEPALIVE_LEN: usize = 9;
/// Bound frame length.
pub const BOUND_LEN: usize = 27;
/// Refused frame length.
pub const REFUSED_LEN: usize = 26;
/// Longest party id a ticket carries.
pub const MAX_PARTY_LEN: usize = 128;
/// Ticket length without the party id.
pub const TICKET_FIXED_LEN: usize = 1 + 1 + 6 + 32 + 8 + TICKET_MAC_LEN;
/// Bind frame length without the ticket.
pub const BIND_FIXED_LEN: usize = 1 + 1 + 8 + 1 + TAG_LEN;

/// Whether a datagram on a shared socket is a relay frame (by its first byte).
pub fn is_relay_frame(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0xA0..=0xAF))
}

/// A member id on the wire: the first 6 bytes of the member's public key (the registry's
/// hex member id, decoded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub [u8; 6]);

impl MemberId {
    /// Decodes the registry's 12-character lowercase hex member id.
    pub fn from_hex(text: &str) -> Option<MemberId> {
        let bytes = text.as_bytes();
        if bytes.len() != 12 {
            return None;
        }
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        let mut id = [0u8; 6];
        for (i, out) in id.iter_mut().enumerate() {
            *out = nibble(bytes[2 * i])? << 4 | nibble(bytes[2 * i + 1])?;
        }
        Some(MemberId(id))
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

/// Why a bind with a valid proof was refused (the reason byte of a refused frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The ticket is past its expiry: fetch a new one.
    Expired = 1,
    /// The relay is at its client limit: use another relay.
    Full = 2,
    /// The bind timestamp is too far from the relay's clock.
    Clock = 3,
}

impl RefuseReason {
    fn from_byte(b: u8) -> Option<RefuseReason> {
        match b {
            1 => Some(RefuseReason::Expired),
            2 => Some(RefuseReason::Full),
            3 => Some(RefuseReason::Clock),
            _ => None,
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its type needs.
    TooShort,
    /// The first byte is not a relay frame type we know.
    UnknownType,
    /// A version byte we do not speak.
    BadVersion,
    /// A length field or the total length does not match.
    BadLength,
    /// A field holds a value it may not (party id characters, reason byte, empty payload).
    BadField,
    /// The output buffer is too small.
    NoRoom,
}

/// A relay ticket as carried in a bind (layout in docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketView<'a> {
    /// The whole ticket, as signed and as the bind key is derived from.
    pub bytes: &'a [u8],
    /// Party id (1..=128 bytes of `[A-Za-z0-9_-]`).
    pub party: &'a str,
    /// Member id.
    pub member: MemberId,
    /// Member public key.
    pub public_key: [u8; 32],
    /// Unix seconds after which the ticket is refused.
    pub expires_at: u64,
    /// HMAC-SHA256 over every byte before it.
    pub mac: &'a [u8],
}

impl<'a> TicketView<'a> {
    /// Parses a ticket (the MAC is not checked here).
    pub fn parse(bytes: &'a [u8]) -> Result<TicketView<'a>, FrameError> {
        if bytes.len() < TICKET_FIXED_LEN + 1 {
            return Err(FrameError::TooShort);
        }
        if bytes[0] != VERSION {
            return Err(FrameError::BadVersion);
        }
        let party_len = usize::from(bytes[1]);
        if party_len == 0 || party_len > MAX_PARTY_LEN {
            return Err(FrameError::BadField);
        }
        if bytes.len() != TICKET_FIXED_LEN + party_len {
            return Err(FrameError::BadLength);
        }
        let party_bytes = &bytes[2..2 + party_len];
        if !party_bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(FrameError::BadField);
        }
        let party = std::str::from_utf8(party_bytes).map_err(|_| FrameError::BadField)?;
        let rest = &bytes[2 + party_len..];
        let mut member = [0u8; 6];
        member.copy_from_slice(&rest[..6]);
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(&rest[6..38]);
        Ok(TicketView {
            bytes,
            party,
            member: MemberId(member),
            public_key,
            expires_at: be_u64(&rest[38..46]),
            mac: &rest[46..46 + TICKET_MAC_LEN],
        })
    }

    /// The signed part: every byte before the MAC.
    pub fn signed(&self) -> &'a [u8] {
        &self.bytes[..self.bytes.len() - TICKET_MAC_LEN]
    }
}

/// The fields of a ticket, for issuing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketFields<'a> {
    /// Party id.
    pub party: &'a str,
    /// Member id.
    pub member: MemberId,
    /// Member public key.
    pub public_key: [u8; 32],
    /// Unix seconds.
    pub expires_at: u64,
}

impl TicketFields<'_> {
    /// The ticket's signed part (everything but the MAC), or `BadField` for a party id a
    /// ticket cannot carry.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let party = self.party.as_bytes();
        if party.is_empty()
            || party.len() > MAX_PARTY_LEN
            || !party
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(FrameError::BadField);
        }
        let mut out = Vec::with_capacity(TICKET_FIXED_LEN + party.len());
        out.push(VERSION);
        out.push(party.len() as u8);
        out.extend_from_slice(party);
        out.extend_from_slice(&self.member.0);
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        Ok(out)
    }
}

/// A parsed relay frame, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `BIND`: ticket, timestamp and proof.
    Bind {
        /// Unix milliseconds (the issuing server's clock as the member tracks it); must grow.
        timestamp_ms: u64,
        /// The ticket.
        ticket: TicketView<'a>,
        /// Truncated HMAC under the bind key over every byte before it.
        proof: &'a [u8],
        /// The bytes the proof covers.
        signed: &'a [u8],
    },
    /// `BOUND`.
    Bound {
        /// The bind's timestamp, echoed.
        timestamp_ms: u64,
        /// Seconds without frames after which the relay forgets the binding.
        idle_timeout_s: u16,
        /// Truncated HMAC under the bind key.
        tag: &'a [u8],
        /// The bytes the tag covers.
        signed: &'a [u8],
    },
    /// `REFUSED`.
    Refused {
        /// The bind's timestamp, echoed.
        timestamp_ms: u64,
        /// Why.
        reason: RefuseReason,
        /// Truncated HMAC under the bind key.
        tag: &'a [u8],
        /// The bytes the tag covers.
        signed: &'a [u8],
    },
    /// `DATA_TO`: payload for member `to`.
    DataTo {
        /// Destination member.
        to: MemberId,
        /// Opaque payload (a WireGuard datagram), at least one byte.
        payload: &'a [u8],
    },
    /// `DATA_FROM`: payload from member `from`.
    DataFrom {
        /// Source member.
        from: MemberId,
        /// Opaque payload.
        payload: &'a [u8],
    },
    /// `KEEPALIVE` with an opaque echo value.
    Keepalive {
        /// Echoed by the relay.
        echo: u64,
    },
    /// `KEEPALIVE_ACK`.
    KeepaliveAck {
        /// The keepalive's value.
        echo: u64,
    },
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn member_at(b: &[u8]) -> MemberId {
    let mut id = [0u8; 6];
    id.copy_from_slice(&b[1..7]);
    MemberId(id)
}

impl<'a> Frame<'a> {
    /// Parses one datagram.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let Some(&kind) = bytes.first() else {
            return Err(FrameError::TooShort);
        };
        match kind {
            BIND => {
                if bytes.len() < BIND_FIXED_LEN {
                    return Err(FrameError::TooShort);
                }
                if bytes[1] != VERSION {
                    return Err(FrameError::BadVersion);
                }
                let ticket_len = usize::from(bytes[10]);
                if bytes.len() != BIND_FIXED_LEN + ticket_len {
                    return Err(FrameError::BadLength);
                }
                let ticket = TicketView::parse(&bytes[11..11 + ticket_len])?;
                let split = bytes.len() - TAG_LEN;
                Ok(Frame::Bind {
                    timestamp_ms: be_u64(&bytes[2..10]),
                    ticket,
                    proof: &bytes[split..],
                    signed: &bytes[..split],
                })
            }
            BOUND => {
                if bytes.len() != BOUND_LEN {
                    return Err(FrameError::BadLength);
                }
                Ok(Frame::Bound {
                    timestamp_ms: be_u64(&bytes[1..9]),
                    idle_timeout_s: u16::from_be_bytes([bytes[9], bytes[10]]),
                    tag: &bytes[11..],
                    signed: &bytes[..11],
                })
            }
            REFUSED => {
                if bytes.len() != REFUSED_LEN {
                    return Err(FrameError::BadLength);
                }
                let reason = RefuseReason::from_byte(bytes[9]).ok_or(FrameError::BadField)?;
                Ok(Frame::Refused {
                    timestamp_ms: be_u64(&bytes[1..9]),
                    reason,
                    tag: &bytes[10..],
                    signed: &bytes[..10],
                })
            }
            DATA_TO | DATA_FROM => {
                if bytes.len() <= DATA_HEADER_LEN {
                    return Err(FrameError::TooShort);
                }
                let id = member_at(bytes);
                let payload = &bytes[DATA_HEADER_LEN..];
                Ok(if kind == DATA_TO {
                    Frame::DataTo { to: id, payload }
                } else {
                    Frame::DataFrom { from: id, payload }
                })
            }
            KEEPALIVE | KEEPALIVE_ACK => {
                if bytes.len() != KEEPALIVE_LEN {
                    return Err(FrameError::BadLength);
                }
                let echo = be_u64(&bytes[1..9]);
                Ok(if kind == KEEPALIVE {
                    Frame::Keepalive { echo }
                } else {
                    Frame::KeepaliveAck { echo }
                })
            }
            _ => Err(FrameError::UnknownType),
        }
    }
}

fn room(out: &mut [u8], len: usize) -> Result<&mut [u8], FrameError> {
    out.get_mut(..len).ok_or(FrameError::NoRoom)
}

/// Writes a bind frame's signed part (everything but the proof) into `out`; returns its
/// length. The caller appends the [`TAG_LEN`]-byte proof with [`finish_tagged`].
pub fn emit_bind_signed(
    out: &mut [u8],
    timestamp_ms: u64,
    ticket: &[u8],
) -> Result<usize, FrameError> {
    let ticket_len = u8::try_from(ticket.len()).map_err(|_| FrameError::BadLength)?;
    let len = BIND_FIXED_LEN - TAG_LEN + ticket.len();
    let buf = room(out, len + TAG_LEN)?;
    buf[0] = BIND;
    buf[1] = VERSION;
    buf[2..10].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[10] = ticket_len;
    buf[11..len].copy_from_slice(ticket);
    Ok(len)
}

/// Writes a bound frame's signed part; returns its length (the tag follows).
pub fn emit_bound_signed(
    out: &mut [u8],
    timestamp_ms: u64,
    idle_timeout_s: u16,
) -> Result<usize, FrameError> {
    let buf = room(out, BOUND_LEN)?;
    buf[0] = BOUND;
    buf[1..9].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[9..11].copy_from_slice(&idle_timeout_s.to_be_bytes());
    Ok(BOUND_LEN - TAG_LEN)
}

/// Writes a refused frame's signed part; returns its length (the tag follows).
pub fn emit_refused_signed(
    out: &mut [u8],
    timestamp_ms: u64,
    reason: RefuseReason,
) -> Result<usize, FrameError> {
    let buf = room(out, REFUSED_LEN)?;
    buf[0] = REFUSED;
    buf[1..9].copy_from_slice(&timestamp_ms.to_be_bytes());
    buf[9] = reason as u8;
    Ok(REFUSED_LEN - TAG_LEN)
}

/// Appends a tag after a signed part of `signed_len` bytes; returns the frame length.
pub fn finish_tagged(
    out: &mut [u8],
    signed_len: usize,
    tag: &[u8; TAG_LEN],
) -> Result<usize, FrameError> {
    let buf = room(out, signed_len + TAG_LEN)?;
    buf[signed_len..].copy_from_slice(tag);
    Ok(signed_len + TAG_LEN)
}

/// Writes a data frame header (`DATA_TO` or `DATA_FROM`) into the first
/// [`DATA_HEADER_LEN`] bytes of `out`, in front of a payload already there.
pub fn emit_data_header(out: &mut [u8], kind: u8, member: MemberId) -> Result<(), FrameError> {
    if kind != DATA_TO && kind != DATA_FROM {
        return Err(FrameError::UnknownType);
    }
    let buf = room(out, DATA_HEADER_LEN)?;
    buf[0] = kind;
    buf[1..7].copy_from_slice(&member.0);
    Ok(())
}

/// Writes a data frame carrying `payload` into `out`; returns its length.
pub fn emit_data(
    out: &mut [u8],
    kind: u8,
    member: MemberId,
    payload: &[u8],
) -> Result<usize, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::BadField);
    }
    let len = DATA_HEADER_LEN + payload.len();
    let buf = room(out, len)?;
    emit_data_header(buf, kind, member)?;
    buf[DATA_HEADER_LEN..].copy_from_slice(payload);
    Ok(len)
}

/// Writes a keepalive (`KEEPALIVE` or `KEEPALIVE_ACK`) into `out`; returns its length.
pub fn emit_keepalive(out: &mut [u8], kind: u8, echo: u64) -> Result<usize, FrameError> {
    if kind != KEEPALIVE && kind != KEEPALIVE_ACK {
        return Err(FrameError::UnknownType);
    }
    let buf = room(out, KEEPALIVE_LEN)?;
    buf[0] = kind;
    buf[1..9].copy_from_slice(&echo.to_be_bytes());
    Ok(KEEPALIVE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Vec<u8> {
        let mut t = TicketFields {
            party: "fqdfeptzve",
            member: MemberId([1, 2, 3, 4, 5, 6]),
            public_key: [9; 32],
            expires_at: 1_800_000_600,
        }
        .signed_bytes()
        .unwrap();
        t.extend_from_slice(&[0xEE; TICKET_MAC_LEN]);
        t
    }

    #[test]
    fn a_ticket_reads_back_every_field() {
        let bytes = ticket();
        assert_eq!(bytes.len(), TICKET_FIXED_LEN + 10);
        let view = TicketView::parse(&bytes).unwrap();
        assert_eq!(view.party, "fqdfeptzve");
        assert_eq!(view.member.to_string(), "010203040506");
        assert_eq!(view.public_key, [9; 32]);
        assert_eq!(view.expires_at, 1_800_000_600);
        assert_eq!(view.mac, &[0xEE; 32][..]);
        assert_eq!(view.signed().len(), bytes.len() - 32);
    }

    #[test]
    fn tickets_with_bad_lengths_versions_or_party_ids_are_refused() {
        let good = ticket();
        assert_eq!(
            TicketView::parse(&good[..good.len() - 1]),
            Err(FrameError::BadLength)
        );
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(TicketView::parse(&v), Err(FrameError::BadVersion));
        let mut p = good.clone();
        p[3] = b'/';
        assert_eq!(TicketView::parse(&p), Err(FrameError::BadField));
        let mut z = good.clone();
        z[1] = 0;
        assert_eq!(TicketView::parse(&z), Err(FrameError::BadField));
        assert_eq!(TicketView::parse(&good[..5]), Err(FrameError::TooShort));
        let bad = TicketFields {
            party: "a b",
            member: MemberId([0; 6]),
            public_key: [0; 32],
            expires_at: 0,
        };
        assert_eq!(bad.signed_bytes(), Err(FrameError::BadField));
    }

    #[test]
    fn a_bind_round_trips_with_its_ticket_and_proof() {
        let t = ticket();
        let mut buf = [0u8; 256];
        let signed = emit_bind_signed(&mut buf, 42, &t).unwrap();
        let len = finish_tagged(&mut buf, signed, &[7; TAG_LEN]).unwrap();
        assert_eq!(len, BIND_FIXED_LEN + t.len());
        match Frame::parse(&buf[..len]).unwrap() {
            Frame::Bind {
                timestamp_ms,
                ticket,
                proof,
                signed: covered,
            } => {
                assert_eq!(timestamp_ms, 42);
                assert_eq!(ticket.bytes, &t[..]);
                assert_eq!(proof, &[7; TAG_LEN][..]);
                assert_eq!(covered, &buf[..signed]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Frame::parse(&buf[..len - 1]),
            Err(FrameError::BadLength),
            "a cut bind"
        );
    }

    #[test]
    fn answers_and_keepalives_round_trip_at_their_fixed_sizes() {
        let mut buf = [0u8; 64];
        let s = emit_bound_signed(&mut buf, 5, 120).unwrap();
        let n = finish_tagged(&mut buf, s, &[1; TAG_LEN]).unwrap();
        assert_eq!(n, BOUND_LEN);
        assert!(matches!(
            Frame::parse(&buf[..n]),
            Ok(Frame::Bound {
                timestamp_ms: 5,
                idle_timeout_s: 120,
                ..
            })
        ));
        let s = emit_refused_signed(&mut buf, 6, RefuseReason::Full).unwrap();
        let n = finish_tagged(&mut buf, s, &[1; TAG_LEN]).unwrap();
        assert_eq!(n, REFUSED_LEN);
        assert!(matches!(
            Frame::parse(&buf[..n]),
            Ok(Frame::Refused {
                timestamp_ms: 6,
                reason: RefuseReason::Full,
                ..
            })
        ));
        buf[9] = 0;
        assert_eq!(Frame::parse(&buf[..n]), Err(FrameError::BadField));
        let n = emit_keepalive(&mut buf, KEEPALIVE, 99).unwrap();
        assert_eq!(Frame::parse(&buf[..n]), Ok(Frame::Keepalive { echo: 99 }));
        let n = emit_keepalive(&mut buf, KEEPALIVE_ACK, 99).unwrap();
        assert_eq!(
            Frame::parse(&buf[..n]),
            Ok(Frame::KeepaliveAck { echo: 99 })
        );
        assert_eq!(
            emit_keepalive(&mut buf[..8], KEEPALIVE, 1),
            Err(FrameError::NoRoom)
        );
    }

    #[test]
    fn data_frames_name_the_member_and_carry_the_payload_unchanged() {
        let mut buf = [0u8; 64];
        let id = MemberId::from_hex("0013c9250b70").unwrap();
        let n = emit_data(&mut buf, DATA_TO, id, b"wireguard").unwrap();
        assert_eq!(n, DATA_HEADER_LEN + 9);
        assert_eq!(
            Frame::parse(&buf[..n]),
            Ok(Frame::DataTo {
                to: id,
                payload: b"wireguard"
            })
        );
        emit_data_header(&mut buf, DATA_FROM, id).unwrap();
        assert_eq!(
            Frame::parse(&buf[..n]),
            Ok(Frame::DataFrom {
                from: id,
                payload: b"wireguard"
            })
        );
        assert_eq!(Frame::parse(&buf[..7]), Err(FrameError::TooShort));
        assert_eq!(
            emit_data(&mut buf, DATA_TO, id, b""),
            Err(FrameError::BadField)
        );
    }

    #[test]
    fn other_protocols_are_not_relay_frames() {
        assert!(!is_relay_frame(&[4, 0, 0, 0]), "WireGuard data");
        assert!(
            !is_relay_frame(&[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]),
            "STUN"
        );
        assert!(!is_relay_frame(&[0xB0]), "probe range");
        assert!(!is_relay_frame(&[]));
        assert!(is_relay_frame(&[0xAF]));
        assert_eq!(Frame::parse(&[0xAF; 9]), Err(FrameError::UnknownType));
        assert_eq!(Frame::parse(&[]), Err(FrameError::TooShort));
        assert_eq!(MemberId::from_hex("0013C9250B70"), None, "lowercase only");
        assert_eq!(MemberId::from_hex("0013c9250b7"), None);
    }
}
