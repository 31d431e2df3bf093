//! The data plane thread: one mio loop owning the tun device and the UDP socket, around the
//! [`peers::PeerTable`]. Other threads talk to it with [`Command`]s through a [`Handle`],
//! which wakes the loop.

pub mod peers;
pub mod socket;
pub mod tun_device;
pub mod udp_offload;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use peers::{DropCounters, Io, PeerConfig, PeerStats, PeerTable, BUF_LEN};
use udp_offload::TxBatch;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const WAKER: Token = Token(2);
/// How often WireGuard timers run (boringtun wants about 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// Messages to the data plane thread.
pub enum Command {
    /// Make the peer set match this list.
    SyncPeers(Vec<PeerConfig>),
    /// Reply with a snapshot of every peer.
    Status(Sender<DataplaneStatus>),
    /// Stop the loop; dropping the tun device removes the interface.
    Shutdown,
}

/// A snapshot of the data plane for `status`.
#[derive(Debug, Clone)]
pub struct DataplaneStatus {
    /// Per peer.
    pub peers: Vec<PeerStats>,
    /// Drops by reason.
    pub drops: DropCounters,
}

/// Sends commands to the data plane thread and wakes it.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Queues a command and wakes the loop. Fails only when the thread has stopped.
    pub fn send(&self, command: Command) -> Result<(), Stopped> {
        self.tx.send(command).map_err(|_| Stopped)?;
        self.waker.wake().map_err(|_| Stopped)
    }

    /// Asks for a snapshot, waiting at most `timeout`.
    pub fn status(&self, timeout: Duration) -> Result<DataplaneStatus, Stopped> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Status(tx))?;
        rx.recv_timeout(timeout).map_err(|_| Stopped)
    }
}

/// The data plane thread is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

struct LoopIo<'a> {
    udp_fd: RawFd,
    batch: &'a mut TxBatch,
    tun: &'a tun::Device,
    /// A packet went to the tun: the kernel may have answered it into the tun already.
    wrote_tun: bool,
}

impl Io for LoopIo<'_> {
    fn send_to(&mut self, payload: &[u8], dst: SocketAddr) {
        self.batch.push(self.udp_fd, payload, dst);
    }

    fn write_tun(&mut self, packet: &[u8]) {
        self.wrote_tun = true;
        if let Err(e) = self.tun.send(packet) {
            log::trace!("tun write: {e}");
        }
    }
}

/// Starts the data plane thread on an opened tun device and bound socket.
pub fn spawn(
    tun: tun::Device,
    socket: UdpSocket,
    table: PeerTable,
) -> io::Result<(Handle, JoinHandle<()>)> {
    tun.set_nonblock()?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = Handle { tx, waker };
    let thread = std::thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || {
            if let Err(e) = run(poll, tun, socket, table, rx) {
                log::error!("data plane stopped: {e}");
            }
        })?;
    Ok((handle, thread))
}

fn run(
    mut poll: Poll,
    tun: tun::Device,
    mut socket: UdpSocket,
    mut table: PeerTable,
    commands: Receiver<Command>,
) -> io::Result<()> {
    let tun_fd = tun.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
    poll.registry()
        .register(&mut socket, UDP, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; BUF_LEN];
    let udp_fd = socket.as_raw_fd();
    let gro = udp_offload::enable_gro(udp_fd);
    let mut batch = TxBatch::new(udp_offload::probe_gso(udp_fd));
    log::debug!("UDP GRO {}", if gro { "on" } else { "off" });
    let mut next_tick = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_tick {
            let mut io = LoopIo {
                udp_fd,
                batch: &mut batch,
                tun: &tun,
                wrote_tun: false,
            };
            table.update_timers(&mut io);
            batch.flush(udp_fd);
            next_tick = now + TIMER_TICK;
        }
        match poll.poll(&mut events, Some(next_tick.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut tun_ready = false;
        let mut udp_ready = false;
        for event in events.iter() {
            match event.token() {
                TUN => tun_ready = true,
                UDP => udp_ready = true,
                _ => {
                    for command in commands.try_iter() {
                        let mut io = LoopIo {
                            udp_fd,
                            batch: &mut batch,
                            tun: &tun,
                            wrote_tun: false,
                        };
                        match command {
                            Command::SyncPeers(configs) => table.sync(configs, &mut io),
                            Command::Status(reply) => {
                                let _ = reply.send(DataplaneStatus {
                                    peers: table.stats(),
                                    drops: table.drops,
                                });
                            }
                            Command::Shutdown => return Ok(()),
                        }
                    }
                    batch.flush(udp_fd);
                }
            }
        }
        // Both sources are edge-triggered: each is read until it would block. They are read
        // in turns rather than one after the other, because a packet written to the tun is
        // often answered at once (the kernel replies to a ping, TCP acknowledges): the tun is
        // read again right after a datagram was written to it, so the answer leaves without
        // a trip through `poll`.
        while tun_ready || udp_ready {
            if udp_ready {
                let mut io = LoopIo {
                    udp_fd,
                    batch: &mut batch,
                    tun: &tun,
                    wrote_tun: false,
                };
                match udp_offload::recv(udp_fd, &mut buf) {
                    Ok(got) => {
                        for datagram in buf[..got.len].chunks(got.segment.max(1)) {
                            table.handle_datagram(datagram, got.src, &mut io);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => udp_ready = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // ICMP errors (port unreachable) surface here; they are not fatal.
                    Err(e) => log::trace!("udp recv: {e}"),
                }
                tun_ready |= io.wrote_tun;
            }
            if tun_ready {
                drain_tun(&tun, &mut buf, &mut table, udp_fd, &mut batch)?;
                tun_ready = false;
            }
        }
        batch.flush(udp_fd);
    }
}

/// Reads the tun until it would block, encrypting and queueing every packet. The first packet
/// leaves at once instead of waiting for the read that finds the tun empty: after a quiet
/// spell that packet is all there is (a ping, a game update), and during bulk traffic it costs
/// one extra `sendmsg` per drain while the rest still leave in GSO batches.
fn drain_tun(
    tun: &tun::Device,
    buf: &mut [u8],
    table: &mut PeerTable,
    udp_fd: RawFd,
    batch: &mut TxBatch,
) -> io::Result<()> {
    let mut first = true;
    loop {
        match tun.recv(buf) {
            Ok(n) => {
                let mut io = LoopIo {
                    udp_fd,
                    batch: &mut *batch,
                    tun,
                    wrote_tun: false,
                };
                table.handle_tun_packet(&buf[..n], &mut io);
                if first {
                    first = false;
                    batch.flush(udp_fd);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    batch.flush(udp_fd);
    Ok(())
}
