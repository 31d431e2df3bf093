//! Just enough of IPv4 to route packets read from the tun and to check the source of
//! packets leaving a tunnel.

use std::net::Ipv4Addr;

/// Why bytes are not an IPv4 packet we can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpError {
    /// Shorter than the 20-byte minimum header.
    TooShort,
    /// Version nibble is not 4 (IPv6 is not routed yet).
    NotIpv4,
    /// Header length field is below 5 words or past the end of the buffer.
    BadHeaderLength,
}

/// A borrowed view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<'a> {
    bytes: &'a [u8],
}

impl<'a> Ipv4View<'a> {
    /// Checks the fixed header (RFC 791 §3.1) and wraps the bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, IpError> {
        if bytes.len() < 20 {
            return Err(IpError::TooShort);
        }
        if bytes[0] >> 4 != 4 {
            return Err(IpError::NotIpv4);
        }
        let ihl = usize::from(bytes[0] & 0x0f) * 4;
        if ihl < 20 || ihl > bytes.len() {
            return Err(IpError::BadHeaderLength);
        }
        Ok(Ipv4View { bytes })
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[12],
            self.bytes[13],
            self.bytes[14],
            self.bytes[15],
        )
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[16],
            self.bytes[17],
            self.bytes[18],
            self.bytes[19],
        )
    }

    /// Protocol number.
    pub fn protocol(&self) -> u8 {
        self.bytes[9]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[9] = 17;
        h[12..16].copy_from_slice(&[10, 66, 0, 1]);
        h[16..20].copy_from_slice(&[10, 66, 0, 2]);
        h
    }

    #[test]
    fn reads_addresses() {
        let h = header();
        let v = Ipv4View::parse(&h).unwrap();
        assert_eq!(v.src(), Ipv4Addr::new(10, 66, 0, 1));
        assert_eq!(v.dst(), Ipv4Addr::new(10, 66, 0, 2));
        assert_eq!(v.protocol(), 17);
    }

    #[test]
    fn rejects_malformed() {
        let mut h = header();
        assert_eq!(Ipv4View::parse(&h[..19]).unwrap_err(), IpError::TooShort);
        h[0] = 0x65;
        assert_eq!(Ipv4View::parse(&h).unwrap_err(), IpError::NotIpv4);
        h[0] = 0x44;
        assert_eq!(Ipv4View::parse(&h).unwrap_err(), IpError::BadHeaderLength);
        h[0] = 0x46;
        assert_eq!(Ipv4View::parse(&h).unwrap_err(), IpError::BadHeaderLength);
    }
}
