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

/// Routes limited broadcast (255.255.255.255/32) and IPv4 multicast (224.0.0.0/4) through
/// interface `name`, so games that broadcast without choosing an interface reach the party
/// (`--broadcast-route`). The routes go away with the interface.
pub fn add_broadcast_routes(name: &str) -> Result<(), TunError> {
    add_route(name, Ipv4Addr::BROADCAST, 32)?;
    add_route(name, Ipv4Addr::new(224, 0, 0, 0), 4)
}

fn add_route(name: &str, dst: Ipv4Addr, prefix: u8) -> Result<(), TunError> {
    let fail = |e: std::io::Error| {
        let hint = match e.raw_os_error() {
            Some(libc::EEXIST) => {
                " (another interface already has this route; remove it or drop --broadcast-route)"
            }
            Some(libc::EPERM) => " (needs root or CAP_NET_ADMIN)",
            _ => "",
        };
        TunError(format!(
            "--broadcast-route: cannot route {dst}/{prefix} through {name}: {e}{hint}"
        ))
    };
    let dev = std::ffi::CString::new(name)
        .map_err(|_| TunError(format!("bad interface name {name:?}")))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    // SAFETY: rtentry is plain old data; zero is a valid value for every field.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_v4(dst);
    route.rt_genmask = sockaddr_v4(Ipv4Addr::from(mask));
    route.rt_flags = libc::RTF_UP | if prefix == 32 { libc::RTF_HOST } else { 0 };
    route.rt_dev = dev.as_ptr() as *mut libc::c_char;
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: SIOCADDRT reads a valid rtentry whose rt_dev points at a live C string.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCADDRT as _, &route) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(fail(err));
    }
    Ok(())
}

fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}
