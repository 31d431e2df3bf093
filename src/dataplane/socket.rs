//! The shared UDP socket and the host's own addresses (its first endpoint candidates).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Binds the data plane socket on all IPv4 addresses at `port` (0 picks one).
///
/// Socket buffers stay at the kernel default: 2 MiB buffers (and more) cut retransmits but
/// doubled ping RTT under load in `scripts/bench.sh`, and games care about the latter.
pub fn bind(port: u16) -> io::Result<mio::net::UdpSocket> {
    let std_socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    std_socket.set_nonblocking(true)?;
    Ok(mio::net::UdpSocket::from_std(std_socket))
}

/// The host's IPv4 addresses that others could reach: up, not loopback, not on `exclude`.
pub fn local_ipv4_addresses(exclude_interface: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`; we walk it read-only and free it once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let flags = ifa.ifa_flags as libc::c_int;
            if flags & libc::IFF_UP == 0 || flags & libc::IFF_LOOPBACK != 0 {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if name == exclude_interface {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        libc::freeifaddrs(list);
    }
    out
}

/// Endpoint candidates: every local address with the socket's port.
pub fn local_endpoints(port: u16, exclude_interface: &str) -> Vec<SocketAddr> {
    local_ipv4_addresses(exclude_interface)
        .into_iter()
        .map(|ip| SocketAddr::from((ip, port)))
        .collect()
}
