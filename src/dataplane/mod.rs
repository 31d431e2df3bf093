//! The data plane thread: one mio loop owning the tun device and the UDP socket, around the
//! [`peers::PeerTable`]. Other threads talk to it with [`Command`]s through a [`Handle`],
//! which wakes the loop.

pub mod broadcast;
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

use broadcast::OwnBroadcast;
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
    /// Our own broadcasts.
    pub broadcast: OwnBroadcast,
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
}

impl Io for LoopIo<'_> {
    fn send_to(&mut self, payload: &[u8], dst: SocketAddr) {
        self.batch.push(self.udp_fd, payload, dst);
    }

    fn write_tun(&mut self, packet: &[u8]) {
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
    let mut now = Instant::now();
    let mut next_tick = now;
    loop {
        if now >= next_tick {
            let mut io = LoopIo {
                udp_fd,
                batch: &mut batch,
                tun: &tun,
            };
            table.update_timers(&mut io);
            batch.flush(udp_fd);
            next_tick = now + TIMER_TICK;
        }
        match poll.poll(&mut events, Some(next_tick.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                now = Instant::now();
                continue;
            }
            Err(e) => return Err(e),
        }
        now = Instant::now();
        for event in events.iter() {
            let mut io = LoopIo {
                udp_fd,
                batch: &mut batch,
                tun: &tun,
            };
            match event.token() {
                TUN => loop {
                    match tun.recv(&mut buf) {
                        Ok(n) => table.handle_tun_packet(&buf[..n], now, &mut io),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                },
                UDP => loop {
                    match udp_offload::recv(udp_fd, &mut buf) {
                        Ok(got) => {
                            for datagram in buf[..got.len].chunks(got.segment.max(1)) {
                                table.handle_datagram(datagram, got.src, now, &mut io);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // ICMP errors (port unreachable) surface here; they are not fatal.
                        Err(e) => log::trace!("udp recv: {e}"),
                    }
                },
                _ => {
                    for command in commands.try_iter() {
                        match command {
                            Command::SyncPeers(configs) => table.sync(configs, &mut io),
                            Command::Status(reply) => {
                                let _ = reply.send(DataplaneStatus {
                                    peers: table.stats(),
                                    drops: table.drops,
                                    broadcast: table.broadcast,
                                });
                            }
                            Command::Shutdown => return Ok(()),
                        }
                    }
                }
            }
            batch.flush(udp_fd);
        }
    }
}
