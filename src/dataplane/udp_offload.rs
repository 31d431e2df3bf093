//! UDP segmentation offload for the data plane socket (Linux 4.18+ GSO, 5.0+ GRO).
//!
//! Sending: consecutive datagrams to one destination with one size (the last may be shorter)
//! leave in one `sendmsg` with a `UDP_SEGMENT` control message, so the kernel walks its UDP/IP
//! stack once per batch instead of once per packet. Receiving: with `UDP_GRO` the kernel hands
//! over coalesced datagrams plus their segment size, and the caller splits them.
//! Where the kernel or the device refuses, both fall back to one datagram per call.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;

/// `SOL_UDP` options from `linux/udp.h`.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most bytes in one batch: an IPv4 datagram's 65,535 minus IP and UDP headers.
pub const MAX_BATCH_BYTES: usize = 65_507;
/// Most segments per batch (`UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_SEGMENTS: usize = 64;

/// Datagrams waiting to leave as one GSO batch.
pub struct TxBatch {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    dst: Option<SocketAddr>,
    /// A shorter segment was added; it must be the last.
    closed: bool,
    gso: bool,
}

impl TxBatch {
    /// An empty batch; with `gso` false every datagram is sent on its own.
    pub fn new(gso: bool) -> TxBatch {
        TxBatch {
            buf: Vec::new(),
            segment: 0,
            count: 0,
            dst: None,
            closed: false,
            gso,
        }
    }

    /// Queues a datagram, sending what is queued first if it cannot join the batch.
    pub fn push(&mut self, fd: RawFd, payload: &[u8], dst: SocketAddr) {
        if !self.gso || payload.is_empty() {
            send_one(fd, payload, dst);
            return;
        }
        let joins = self.dst == Some(dst)
            && !self.closed
            && self.count < MAX_SEGMENTS
            && payload.len() <= self.segment
            && self.buf.len() + payload.len() <= MAX_BATCH_BYTES;
        if !joins {
            self.flush(fd);
            self.segment = payload.len();
            self.dst = Some(dst);
        }
        self.buf.extend_from_slice(payload);
        self.count += 1;
        self.closed = payload.len() < self.segment;
    }

    /// Sends everything queued.
    pub fn flush(&mut self, fd: RawFd) {
        let Some(dst) = self.dst.take() else { return };
        if self.count == 1 {
            send_one(fd, &self.buf, dst);
        } else if let Err(e) = send_segmented(fd, &self.buf, self.segment, dst) {
            match e.raw_os_error() {
                Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT) => {
                    log::info!(
                        "UDP segmentation offload unavailable ({e}); sending packets one by one"
                    );
                    self.gso = false;
                    for chunk in self.buf.chunks(self.segment) {
                        send_one(fd, chunk, dst);
                    }
                }
                _ => log::trace!("send batch to {dst}: {e}"),
            }
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

fn sockaddr_v4(addr: &SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

fn send_one(fd: RawFd, payload: &[u8], dst: SocketAddr) {
    let SocketAddr::V4(v4) = dst else {
        log::trace!("no IPv6 on the data plane socket; dropped datagram to {dst}");
        return;
    };
    let sa = sockaddr_v4(&v4);
    // SAFETY: valid buffer and address for the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        log::trace!("send to {dst}: {}", io::Error::last_os_error());
    }
}

fn send_segmented(fd: RawFd, buf: &[u8], segment: usize, dst: SocketAddr) -> io::Result<()> {
    let SocketAddr::V4(v4) = dst else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut sa = sockaddr_v4(&v4);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // u64 alignment for the cmsg header.
    let mut control = [0u64; 4];
    // SAFETY: msghdr/cmsg set up per cmsg(3) within `control`, which is large enough for one
    // cmsg carrying a u16.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks the kernel to coalesce received datagrams. Returns whether it agreed.
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: valid fd, pointer and length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Whether the kernel accepts `UDP_SEGMENT` on this socket.
pub fn probe_gso(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
    }
}

/// One received (possibly coalesced) datagram.
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub src: SocketAddr,
    /// Size of each coalesced segment (the last may be shorter); `len` when not coalesced.
    pub segment: usize,
}

/// Receives one datagram or coalesced batch into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr points at live buffers of the lengths given; cmsgs are read within
    // `msg_controllen` as set by the kernel.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = n as usize;
        let mut segment = len;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                if size > 0 {
                    segment = size as usize;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let src = match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let sa = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                SocketAddr::from((
                    Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                    u16::from_be(sa.sin_port),
                ))
            }
            _ => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        };
        Ok(Received { len, src, segment })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dst = rx.local_addr().unwrap();
        (tx, rx, dst)
    }

    fn datagrams(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| vec![i as u8; *n])
            .collect()
    }

    /// Receives with GRO off: one datagram per call.
    fn receive_all(rx: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        (0..count)
            .map(|_| {
                let n = rx.recv(&mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect()
    }

    #[test]
    fn batched_datagrams_arrive_separately_in_order() {
        let (tx, rx, dst) = pair();
        let sent = datagrams(&[1000, 1000, 1000, 1000, 300]);
        let mut batch = TxBatch::new(probe_gso(tx.as_raw_fd()));
        for d in &sent {
            batch.push(tx.as_raw_fd(), d, dst);
        }
        batch.flush(tx.as_raw_fd());
        assert_eq!(receive_all(&rx, sent.len()), sent);
    }

    #[test]
    fn without_gso_every_datagram_goes_alone() {
        let (tx, rx, dst) = pair();
        let sent = datagrams(&[700, 700, 700]);
        let mut batch = TxBatch::new(false);
        for d in &sent {
            batch.push(tx.as_raw_fd(), d, dst);
        }
        assert_eq!(receive_all(&rx, sent.len()), sent, "sent before any flush");
    }

    #[test]
    fn size_change_or_new_destination_starts_a_new_batch() {
        let (tx, rx, dst) = pair();
        let (_, rx2, dst2) = pair();
        let sent = datagrams(&[500, 200, 900, 900]);
        let mut batch = TxBatch::new(probe_gso(tx.as_raw_fd()));
        for d in &sent {
            batch.push(tx.as_raw_fd(), d, dst);
        }
        batch.push(tx.as_raw_fd(), b"elsewhere", dst2);
        batch.flush(tx.as_raw_fd());
        assert_eq!(receive_all(&rx, sent.len()), sent);
        assert_eq!(receive_all(&rx2, 1), vec![b"elsewhere".to_vec()]);
    }

    #[test]
    fn gro_reports_the_segment_size_of_a_coalesced_batch() {
        let (tx, rx, dst) = pair();
        let gro = enable_gro(rx.as_raw_fd());
        let sent = datagrams(&[1200, 1200, 1200, 100]);
        let mut batch = TxBatch::new(probe_gso(tx.as_raw_fd()));
        for d in &sent {
            batch.push(tx.as_raw_fd(), d, dst);
        }
        batch.flush(tx.as_raw_fd());
        let mut buf = vec![0u8; MAX_BATCH_BYTES];
        let mut got = Vec::new();
        let mut calls = 0;
        while got.len() < sent.len() {
            let r = recv(rx.as_raw_fd(), &mut buf).unwrap();
            calls += 1;
            assert_eq!(r.src, tx.local_addr().unwrap());
            got.extend(buf[..r.len].chunks(r.segment).map(<[u8]>::to_vec));
        }
        assert_eq!(got, sent, "GRO on: {gro}");
        if gro && probe_gso(tx.as_raw_fd()) {
            assert_eq!(calls, 1, "one batch out, one coalesced datagram in");
        }
    }
}
