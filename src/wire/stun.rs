//! STUN (RFC 5389) messages with the NAT behaviour discovery attributes of RFC 5780: a parser
//! that reads a datagram into a borrowed [`Message`] and an [`Encoder`] for the messages we
//! send. Binding is the only method we act on; authentication (MESSAGE-INTEGRITY) is not
//! implemented: it is skipped when present, and nothing after it but FINGERPRINT is read
//! (RFC 5389 §15.4).
//!
//! Left to the caller: matching transactions, retransmission, and what to answer.

mod encode;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use encode::Encoder;

/// Magic cookie, bytes 4..8 of every RFC 5389 message (§6).
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Fixed header: type, length, cookie, transaction id (§6).
pub const HEADER_LEN: usize = 20;
/// The Binding method (§18.1).
pub const BINDING: u16 = 0x001;
/// FINGERPRINT is the CRC-32 of the message XOR this (§15.5).
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Reason phrases and SOFTWARE: at most 763 bytes (§15.6, §15.10).
const MAX_TEXT_BYTES: usize = 763;
/// Most unknown comprehension-required attributes remembered (and listed in a 420).
pub const MAX_UNKNOWN: usize = 4;

/// Attribute types (RFC 5389 §18.2, RFC 5780 §7).
pub mod attr {
    /// Mapped address in the clear (§15.1); RFC 3489 clients read only this one.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// Flags asking for a reply from another IP and/or port (RFC 5780 §7.2).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// Short-term or long-term credential user name (§15.3); read past, not checked.
    pub const USERNAME: u16 = 0x0006;
    /// HMAC-SHA1 of the message (§15.4); read past, not checked.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// Error class and number with a reason phrase (§15.6).
    pub const ERROR_CODE: u16 = 0x0009;
    /// The attribute types a 420 reply did not understand (§15.9).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// Long-term credential realm (§15.7); read past.
    pub const REALM: u16 = 0x0014;
    /// Long-term credential nonce (§15.8); read past.
    pub const NONCE: u16 = 0x0015;
    /// Send the response to this port of the request's source IP (RFC 5780 §7.5).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// Mapped address XORed with the cookie (and the transaction id for IPv6) (§15.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// The sender's software (§15.10).
    pub const SOFTWARE: u16 = 0x8022;
    /// CRC-32 of the message, last attribute (§15.5).
    pub const FINGERPRINT: u16 = 0x8028;
    /// Where the reply was sent from (RFC 5780 §7.3).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// The server's alternate IP and port (RFC 5780 §7.4).
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// Message class (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Expects a response.
    Request,
    /// Expects nothing.
    Indication,
    /// Success response.
    Success,
    /// Error response.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// The 96-bit transaction id (§6).
pub type TransactionId = [u8; 12];

/// Why bytes are not a STUN message we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    TooShort,
    /// Top two bits set or no magic cookie: not RFC 5389 STUN.
    NotStun,
    /// The length field is not a multiple of 4 or does not match the datagram.
    BadLength,
    /// An attribute runs past the end of the message.
    TruncatedAttribute,
    /// An address attribute has an unknown family or the wrong length.
    BadAddress,
    /// CHANGE-REQUEST or RESPONSE-PORT is not 4 bytes.
    BadChangeRequest,
    /// ERROR-CODE is too short or its class/number is out of range.
    BadErrorCode,
    /// A text attribute is not UTF-8 or too long.
    BadText,
    /// FINGERPRINT is not the last attribute or not 4 bytes.
    MisplacedFingerprint,
    /// FINGERPRINT does not match the message.
    BadFingerprint,
}

/// RFC 5780 CHANGE-REQUEST flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeRequest {
    /// Reply from the other IP address ("A" flag).
    pub ip: bool,
    /// Reply from the other port ("B" flag).
    pub port: bool,
}

/// CHANGE-REQUEST flag bits (RFC 5780 §7.2).
const CHANGE_IP: u8 = 0x04;
const CHANGE_PORT: u8 = 0x02;

/// ERROR-CODE: a code in 300..=699 and a reason phrase for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// Class × 100 + number, e.g. 420.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'a str,
}

/// 400 Bad Request (§15.6).
pub const BAD_REQUEST: u16 = 400;
/// 420 Unknown Attribute (§15.6), also RFC 5780's answer to an unserviceable CHANGE-REQUEST.
pub const UNKNOWN_ATTRIBUTE: u16 = 420;

/// The first [`MAX_UNKNOWN`] comprehension-required attribute types a message carried that
/// this codec does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnknownAttributes {
    types: [u16; MAX_UNKNOWN],
    len: usize,
}

impl UnknownAttributes {
    /// The types, in message order.
    pub fn as_slice(&self) -> &[u16] {
        &self.types[..self.len]
    }

    /// Whether there were none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, ty: u16) {
        if self.len < MAX_UNKNOWN && !self.as_slice().contains(&ty) {
            self.types[self.len] = ty;
            self.len += 1;
        }
    }
}

/// A parsed STUN message; text borrows from the datagram. Of a repeated attribute only the
/// first counts (§15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Request, indication, success or error.
    pub class: Class,
    /// Method (12 bits); [`BINDING`] is the one we use.
    pub method: u16,
    /// Transaction id.
    pub transaction: TransactionId,
    /// XOR-MAPPED-ADDRESS, decoded.
    pub xor_mapped_address: Option<SocketAddr>,
    /// MAPPED-ADDRESS.
    pub mapped_address: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780).
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780).
    pub response_origin: Option<SocketAddr>,
    /// CHANGE-REQUEST (RFC 5780).
    pub change_request: Option<ChangeRequest>,
    /// RESPONSE-PORT (RFC 5780).
    pub response_port: Option<u16>,
    /// ERROR-CODE.
    pub error_code: Option<ErrorCode<'a>>,
    /// SOFTWARE.
    pub software: Option<&'a str>,
    /// Comprehension-required attributes (type < 0x8000) we do not know; a request with any
    /// must be answered with 420 (§7.3.1).
    pub unknown: UnknownAttributes,
    /// Whether a FINGERPRINT was present (and matched: a wrong one fails the parse).
    pub fingerprint: bool,
}

/// Whether a datagram on the shared UDP socket is STUN: top two bits zero and the magic
/// cookie at bytes 4..8 (design.md §4). WireGuard messages have a type byte 1..4 followed by
/// three zero bytes, which a Binding message (second byte 0x01 or 0x11) never has; our own
/// messages set the top bit of their first byte.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] & 0xC0 == 0 && datagram[4..8] == MAGIC_COOKIE
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn message_type(class: Class, method: u16) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

fn split_type(ty: u16) -> (Class, u16) {
    let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    let method = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    (class, method)
}

impl<'a> Message<'a> {
    /// Parses one datagram: checks the header (§6), walks the attributes (§15) and verifies
    /// FINGERPRINT when present (§15.5).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, StunError> {
        if bytes.len() < HEADER_LEN {
            return Err(StunError::TooShort);
        }
        if !is_stun(bytes) {
            return Err(StunError::NotStun);
        }
        let length = usize::from(be16(bytes, 2));
        if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
            return Err(StunError::BadLength);
        }
        let (class, method) = split_type(be16(bytes, 0));
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&bytes[8..20]);
        let mut m = Message {
            class,
            method,
            transaction,
            xor_mapped_address: None,
            mapped_address: None,
            other_address: None,
            response_origin: None,
            change_request: None,
            response_port: None,
            error_code: None,
            software: None,
            unknown: UnknownAttributes::default(),
            fingerprint: false,
        };
        let mut at = HEADER_LEN;
        let mut after_integrity = false;
        while at < bytes.len() {
            if bytes.len() - at < 4 {
                return Err(StunError::TruncatedAttribute);
            }
            let ty = be16(bytes, at);
            let value_len = usize::from(be16(bytes, at + 2));
            let start = at + 4;
            // `at` and the message length are multiples of 4, so the padding fits if the value does.
            if value_len > bytes.len() - start {
                return Err(StunError::TruncatedAttribute);
            }
            let value = &bytes[start..start + value_len];
            let next = start + value_len.div_ceil(4) * 4;
            if ty == attr::FINGERPRINT {
                if value_len != 4 || next != bytes.len() {
                    return Err(StunError::MisplacedFingerprint);
                }
                let expected = crc32(&bytes[..at]) ^ FINGERPRINT_XOR;
                if value != expected.to_be_bytes() {
                    return Err(StunError::BadFingerprint);
                }
                m.fingerprint = true;
            } else if !after_integrity {
                m.read_attribute(ty, value)?;
                after_integrity = ty == attr::MESSAGE_INTEGRITY;
            }
            at = next;
        }
        Ok(m)
    }

    fn read_attribute(&mut self, ty: u16, value: &'a [u8]) -> Result<(), StunError> {
        let t = self.transaction;
        match ty {
            attr::XOR_MAPPED_ADDRESS if self.xor_mapped_address.is_none() => {
                self.xor_mapped_address = Some(read_address(value, Some(&t))?);
            }
            attr::MAPPED_ADDRESS if self.mapped_address.is_none() => {
                self.mapped_address = Some(read_address(value, None)?);
            }
            attr::OTHER_ADDRESS if self.other_address.is_none() => {
                self.other_address = Some(read_address(value, None)?);
            }
            attr::RESPONSE_ORIGIN if self.response_origin.is_none() => {
                self.response_origin = Some(read_address(value, None)?);
            }
            attr::CHANGE_REQUEST if self.change_request.is_none() => {
                let [_, _, _, flags] =
                    <[u8; 4]>::try_from(value).map_err(|_| StunError::BadChangeRequest)?;
                self.change_request = Some(ChangeRequest {
                    ip: flags & CHANGE_IP != 0,
                    port: flags & CHANGE_PORT != 0,
                });
            }
            attr::RESPONSE_PORT if self.response_port.is_none() => {
                let [hi, lo, _, _] =
                    <[u8; 4]>::try_from(value).map_err(|_| StunError::BadChangeRequest)?;
                self.response_port = Some(u16::from_be_bytes([hi, lo]));
            }
            attr::ERROR_CODE if self.error_code.is_none() => {
                if value.len() < 4 {
                    return Err(StunError::BadErrorCode);
                }
                let (class, number) = (u16::from(value[2] & 0x07), u16::from(value[3]));
                if !(3..=6).contains(&class) || number > 99 {
                    return Err(StunError::BadErrorCode);
                }
                self.error_code = Some(ErrorCode {
                    code: class * 100 + number,
                    reason: read_text(&value[4..])?,
                });
            }
            attr::SOFTWARE if self.software.is_none() => self.software = Some(read_text(value)?),
            attr::XOR_MAPPED_ADDRESS
            | attr::MAPPED_ADDRESS
            | attr::OTHER_ADDRESS
            | attr::RESPONSE_ORIGIN
            | attr::CHANGE_REQUEST
            | attr::RESPONSE_PORT
            | attr::ERROR_CODE
            | attr::SOFTWARE
            | attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::UNKNOWN_ATTRIBUTES
            | attr::REALM
            | attr::NONCE => {}
            required if required < 0x8000 => self.unknown.push(required),
            _optional => {}
        }
        Ok(())
    }

    /// The mapped address, preferring XOR-MAPPED-ADDRESS (§15.2) over MAPPED-ADDRESS.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.xor_mapped_address.or(self.mapped_address)
    }
}

fn read_text(value: &[u8]) -> Result<&str, StunError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(StunError::BadText);
    }
    std::str::from_utf8(value).map_err(|_| StunError::BadText)
}

/// The XOR pad of an address: cookie for IPv4, cookie and transaction id for IPv6 (§15.2).
fn xor_pad(transaction: &TransactionId) -> [u8; 16] {
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE);
    pad[4..].copy_from_slice(transaction);
    pad
}

fn read_address(value: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, StunError> {
    let pad = xor.map(xor_pad);
    let unpad = |i: usize, b: u8| pad.map_or(b, |p| b ^ p[i]);
    if value.len() < 4 {
        return Err(StunError::BadAddress);
    }
    let port = u16::from_be_bytes([unpad(0, value[2]), unpad(1, value[3])]);
    let ip = match (value[1], value.len()) {
        (0x01, 8) => IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|i| {
            unpad(i, value[4 + i])
        }))),
        (0x02, 20) => IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| {
            unpad(i, value[4 + i])
        }))),
        _ => return Err(StunError::BadAddress),
    };
    Ok(SocketAddr::new(ip, port))
}

/// CRC-32 (ISO-HDLC, the one of Ethernet and zlib) as FINGERPRINT needs (§15.5).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes
        .iter()
        .fold(!0u32, |c, b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

#[cfg(test)]
mod tests;
