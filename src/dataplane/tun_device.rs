//! Creates the party interface: a layer-3 tun with the virtual IP, the party prefix and MTU.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Default MTU: 1500 minus WireGuard over IPv4/UDP overhead (20 + 8 + 32) and a margin.
pub const DEFAULT_MTU: u16 = 1420;
/// Default interface name.
pub const DEFAULT_INTERFACE: &str = "lp0";
/// Smallest MTU IPv4 allows (RFC 791: every host must accept 576-byte datagrams).
pub const MIN_MTU: u16 = 576;

/// Why the interface could not be created.
#[derive(Debug)]
pub struct TunError(pub String);

/// Creates interface `name` with `ip` in `subnet`, brings it up, and returns the device.
/// The interface disappears when the device is dropped.
pub fn create(
    name: &str,
    ip: Ipv4Addr,
    subnet: Ipv4Net,
    mtu: u16,
) -> Result<tun::Device, TunError> {
    let mut config = tun::Configuration::default();
    config
        .tun_name(name)
        .address(ip)
        .netmask(subnet.netmask())
        .mtu(mtu)
        .up();
    tun::create(&config).map_err(|e| {
        let hint = match &e {
            tun::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                " (needs root or CAP_NET_ADMIN, and /dev/net/tun)"
            }
            tun::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                " (/dev/net/tun is missing: load the tun module or pass the device into the container)"
            }
            tun::Error::Io(io) if io.raw_os_error() == Some(libc::EBUSY) => {
                " (an interface with this name is already in use; pick another with --interface)"
            }
            _ => "",
        };
        TunError(format!("cannot create interface {name}: {e}{hint}"))
    })
}

/// Checks an interface name the way the kernel will (1 to 15 bytes, no '/', ':' or spaces).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 characters"
        ));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
        || name == "."
        || name == ".."
    {
        return Err(format!(
            "interface name {name:?} contains characters the kernel refuses"
        ));
    }
    Ok(())
}
