//! Building STUN messages: [`Encoder`] appends attributes in call order and keeps the
//! header's length right; [`Encoder::finish_with_fingerprint`] adds FINGERPRINT last.

use std::net::{IpAddr, SocketAddr};

use super::{
    attr, crc32, message_type, xor_pad, ChangeRequest, Class, TransactionId, CHANGE_IP,
    CHANGE_PORT, FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, MAX_TEXT_BYTES, MAX_UNKNOWN,
};

/// Builds one message; attributes are appended in call order.
#[derive(Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
    transaction: TransactionId,
}

impl Encoder {
    /// A message of `class` and `method` with `transaction`.
    pub fn new(class: Class, method: u16, transaction: TransactionId) -> Encoder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE);
        buf.extend_from_slice(&transaction);
        Encoder { buf, transaction }
    }

    /// Appends attribute `ty` whose value `write` appends, then pads it and fixes the length.
    fn attribute_with(&mut self, ty: u16, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        write(&mut self.buf);
        // Values are built here from bounded parts (text is cut to 763 bytes): 16 bits hold them.
        let value_len = (self.buf.len() - at - 4) as u16;
        self.buf[at + 2..at + 4].copy_from_slice(&value_len.to_be_bytes());
        self.buf.resize(self.buf.len().div_ceil(4) * 4, 0);
        let length = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        self
    }

    pub(super) fn attribute(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.attribute_with(ty, |buf| buf.extend_from_slice(value))
    }

    fn address(&mut self, ty: u16, addr: SocketAddr, xor: bool) -> &mut Self {
        let pad = if xor {
            xor_pad(&self.transaction)
        } else {
            [0; 16]
        };
        let mut value = [0u8; 20];
        let port = addr.port().to_be_bytes();
        value[2] = port[0] ^ pad[0];
        value[3] = port[1] ^ pad[1];
        let len = match addr.ip() {
            IpAddr::V4(ip) => {
                value[1] = 0x01;
                for (i, b) in ip.octets().into_iter().enumerate() {
                    value[4 + i] = b ^ pad[i];
                }
                8
            }
            IpAddr::V6(ip) => {
                value[1] = 0x02;
                for (i, b) in ip.octets().into_iter().enumerate() {
                    value[4 + i] = b ^ pad[i];
                }
                20
            }
        };
        self.attribute(ty, &value[..len])
    }

    /// XOR-MAPPED-ADDRESS.
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> &mut Self {
        self.address(attr::XOR_MAPPED_ADDRESS, addr, true)
    }

    /// MAPPED-ADDRESS.
    pub fn mapped_address(&mut self, addr: SocketAddr) -> &mut Self {
        self.address(attr::MAPPED_ADDRESS, addr, false)
    }

    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub fn other_address(&mut self, addr: SocketAddr) -> &mut Self {
        self.address(attr::OTHER_ADDRESS, addr, false)
    }

    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub fn response_origin(&mut self, addr: SocketAddr) -> &mut Self {
        self.address(attr::RESPONSE_ORIGIN, addr, false)
    }

    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub fn change_request(&mut self, change: ChangeRequest) -> &mut Self {
        let flags =
            if change.ip { CHANGE_IP } else { 0 } | if change.port { CHANGE_PORT } else { 0 };
        self.attribute(attr::CHANGE_REQUEST, &[0, 0, 0, flags])
    }

    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub fn response_port(&mut self, port: u16) -> &mut Self {
        let [hi, lo] = port.to_be_bytes();
        self.attribute(attr::RESPONSE_PORT, &[hi, lo, 0, 0])
    }

    /// ERROR-CODE with `code` in 300..=699 (clamped) and a reason phrase (cut to 763 bytes).
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let code = code.clamp(300, 699);
        self.attribute_with(attr::ERROR_CODE, |buf| {
            buf.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
            buf.extend_from_slice(truncate(reason).as_bytes());
        })
    }

    /// UNKNOWN-ATTRIBUTES (§15.9).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        self.attribute_with(attr::UNKNOWN_ATTRIBUTES, |buf| {
            for ty in types.iter().take(MAX_UNKNOWN) {
                buf.extend_from_slice(&ty.to_be_bytes());
            }
        })
    }

    /// SOFTWARE (cut to 763 bytes).
    pub fn software(&mut self, name: &str) -> &mut Self {
        self.attribute(attr::SOFTWARE, truncate(name).as_bytes())
    }

    /// The message without FINGERPRINT.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// The message with FINGERPRINT as its last attribute (§15.5): the CRC covers the header
    /// whose length already counts the FINGERPRINT attribute.
    pub fn finish_with_fingerprint(mut self) -> Vec<u8> {
        let at = self.buf.len();
        let length = (at + 8 - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        let crc = crc32(&self.buf) ^ FINGERPRINT_XOR;
        self.buf.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
