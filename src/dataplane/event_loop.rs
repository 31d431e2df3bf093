//! The data plane's mio loop: the thin shell around [`PeerTable`] and [`Relays`]. It owns
//! the tun device, the UDP socket and the clock (read once per wake-up), sorts datagrams by
//! their first bytes (STUN to the NAT thread, relay frames to the relay clients, WireGuard to
//! the peer table), and sends what the state machines hand it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::peer::Source;
use super::peers::{Io, PeerTable, BUF_LEN};
use super::relays::{RelayNews, Relays};
use super::udp_offload::{self, TxBatch};
/// The soonest the loop wakes up again for a suspect path's probe.
const URGENT_MIN: Duration = Duration::from_millis(20);

use super::{next_timer_run, Command, DataplaneEvent, DataplaneStatus, ReportLimit, Uplinks};
use crate::control::Reach;
use crate::wire::relay::{self as frame, MemberId};
use crate::wire::stun;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
/// The token of the [`super::Handle`]'s waker.
pub const WAKER: Token = Token(2);

struct LoopIo<'a> {
    udp_fd: RawFd,
    batch: &'a mut TxBatch,
    tun: &'a tun::Device,
    frame: &'a mut [u8],
    /// A packet went to the tun: the kernel may have answered it into the tun already.
    wrote_tun: bool,
}

impl Io for LoopIo<'_> {
    fn send_to(&mut self, payload: &[u8], dst: SocketAddr) {
        self.batch.push(self.udp_fd, payload, dst);
    }

    fn send_relayed(&mut self, payload: &[u8], relay: SocketAddr, to: MemberId) {
        match frame::emit_data(self.frame, frame::DATA_TO, to, payload) {
            Ok(len) => self.batch.push(self.udp_fd, &self.frame[..len], relay),
            Err(e) => log::debug!("relay frame for {to}: {e:?}"),
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        self.wrote_tun = true;
        if let Err(e) = self.tun.send(packet) {
            log::trace!("tun write: {e}");
        }
    }
}

/// Everything the loop owns besides the sockets.
struct State {
    table: PeerTable,
    relays: Relays,
    uplinks: Uplinks,
    batch: TxBatch,
    frame: Vec<u8>,
    udp_fd: RawFd,
    reach: Reach,
    direct_lost: ReportLimit,
}

impl State {
    fn io<'a>(
        &'a mut self,
        tun: &'a tun::Device,
    ) -> (&'a mut PeerTable, &'a mut Relays, LoopIo<'a>) {
        (
            &mut self.table,
            &mut self.relays,
            LoopIo {
                udp_fd: self.udp_fd,
                batch: &mut self.batch,
                tun,
                frame: &mut self.frame,
                wrote_tun: false,
            },
        )
    }

    /// Sorts one datagram from `src` by its first bytes; true if it wrote to the tun.
    fn handle_datagram(
        &mut self,
        tun: &tun::Device,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> bool {
        if stun::is_stun(datagram) {
            if let Some(tx) = &self.uplinks.stun {
                let _ = tx.try_send((src, datagram.to_vec()));
            }
            return false;
        }
        let (table, relays, mut io) = self.io(tun);
        if frame::is_relay_frame(datagram) {
            if let Some(got) = relays.handle_datagram(src, datagram, now) {
                let source = Source::Relayed {
                    relay: src,
                    from: got.from,
                };
                table.handle_datagram(got.payload, source, now, &mut io);
            }
        } else {
            table.handle_datagram(datagram, Source::Direct(src), now, &mut io);
        }
        io.wrote_tun
    }

    /// Reads the tun until it would block, encrypting and queueing every packet. The first
    /// packet leaves at once instead of waiting for the read that finds the tun empty: after a
    /// quiet spell that packet is all there is (a ping, a game update), and during bulk
    /// traffic it costs one extra `sendmsg` per drain while the rest still leave in GSO
    /// batches.
    fn drain_tun(&mut self, tun: &tun::Device, buf: &mut [u8], now: Instant) -> io::Result<()> {
        let mut first = true;
        loop {
            match tun.recv(buf) {
                Ok(n) => {
                    let (table, _, mut io) = self.io(tun);
                    table.handle_tun_packet(&buf[..n], now, &mut io);
                    if first {
                        first = false;
                        self.batch.flush(self.udp_fd);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.batch.flush(self.udp_fd);
        Ok(())
    }

    /// Runs the peers' timers and tells the control thread when a direct path went down.
    fn update_timers(&mut self, tun: &tun::Device, now: Instant) {
        let (table, _, mut io) = self.io(tun);
        table.update_timers(now, &mut io);
        let lost = self.table.poll_direct_paths_lost();
        if self.direct_lost.poll(lost, now) {
            if let Some(tx) = &self.uplinks.control {
                let _ = tx.send(DataplaneEvent::DirectPathLost);
            }
        }
    }

    /// Sends what the relay clients want sent and passes their news on.
    fn pump_relays(&mut self, tun: &tun::Device, now: Instant) {
        if self.relays.poll_timeout().is_some_and(|t| t <= now) {
            self.relays.handle_timeout(now);
        }
        let (fd, batch) = (self.udp_fd, &mut self.batch);
        self.relays
            .poll_transmit(now, |payload, dst| batch.push(fd, payload, dst));
        while let Some(news) = self.relays.poll_event() {
            let event = match news {
                RelayNews::NeedTicket => DataplaneEvent::NeedTicket,
                RelayNews::Changed(state) => {
                    let bound = self.relays.bound();
                    let (table, _, mut io) = self.io(tun);
                    table.set_bound_relays(bound, now, &mut io);
                    DataplaneEvent::Relay(state)
                }
            };
            if let Some(tx) = &self.uplinks.control {
                let _ = tx.send(event);
            }
        }
    }

    /// Runs one command; false for `Shutdown`.
    fn handle_command(&mut self, tun: &tun::Device, command: Command, now: Instant) -> bool {
        match command {
            Command::SyncPeers(configs) => {
                let (table, _, mut io) = self.io(tun);
                table.sync(configs, now, &mut io);
            }
            Command::Status(reply) => {
                let _ = reply.send(DataplaneStatus {
                    peers: self.table.stats(now),
                    drops: self.table.drops,
                    broadcast: self.table.broadcast,
                    relays: self.relays.states(),
                    reach: self.reach,
                });
            }
            Command::Transmit { dst, payload } => self.batch.push(self.udp_fd, &payload, dst),
            Command::SetRelays(relays) => self.relays.set(&relays, now),
            Command::RelayGrant(grant) => self.relays.handle_grant(grant, now),
            Command::RefreshRelays => self.relays.refresh(now),
            Command::SetReach(reach) => self.reach = reach,
            Command::Shutdown => return false,
        }
        true
    }
}

/// Runs the loop until `Shutdown` (or a fatal tun error).
pub fn run(
    mut poll: Poll,
    tun: tun::Device,
    mut socket: UdpSocket,
    table: PeerTable,
    commands: Receiver<Command>,
    uplinks: Uplinks,
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
    log::debug!("UDP GRO {}", if gro { "on" } else { "off" });
    let mut state = State {
        table,
        relays: Relays::default(),
        uplinks,
        batch: TxBatch::new(udp_offload::probe_gso(udp_fd)),
        frame: vec![0u8; BUF_LEN + frame::DATA_HEADER_LEN],
        udp_fd,
        reach: Reach::default(),
        direct_lost: ReportLimit::default(),
    };
    let mut now = Instant::now();
    let mut next_tick = now;
    let mut active = true;
    loop {
        if now >= next_tick {
            state.update_timers(&tun, now);
            next_tick = next_timer_run(now, active);
            if let Some(at) = state.table.urgent_probe_at() {
                // Never sooner than a few ms from now: a probe that could not go out stays due.
                next_tick = next_tick.min(at.max(now + URGENT_MIN));
            }
            active = false;
        }
        state.pump_relays(&tun, now);
        state.batch.flush(udp_fd);
        let wake_at = state
            .relays
            .poll_timeout()
            .map_or(next_tick, |t| t.min(next_tick));
        match poll.poll(&mut events, Some(wake_at.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                now = Instant::now();
                continue;
            }
            Err(e) => return Err(e),
        }
        now = Instant::now();
        let (mut tun_ready, mut udp_ready) = (false, false);
        for event in events.iter() {
            match event.token() {
                TUN => tun_ready = true,
                UDP => udp_ready = true,
                _ => {
                    for command in commands.try_iter() {
                        if !state.handle_command(&tun, command, now) {
                            return Ok(());
                        }
                    }
                    state.batch.flush(udp_fd);
                }
            }
        }
        active |= tun_ready || udp_ready;
        // Both sources are edge-triggered: each is read until it would block. They are read
        // in turns rather than one after the other, because a packet written to the tun is
        // often answered at once (the kernel replies to a ping, TCP acknowledges): the tun is
        // read again right after a datagram was written to it, so the answer leaves without
        // a trip through `poll` (8 syscalls on a ping's round trip instead of 12).
        while tun_ready || udp_ready {
            if udp_ready {
                match udp_offload::recv(udp_fd, &mut buf) {
                    Ok(got) => {
                        for datagram in buf[..got.len].chunks(got.segment.max(1)) {
                            tun_ready |= state.handle_datagram(&tun, datagram, got.src, now);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => udp_ready = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // ICMP errors (port unreachable) surface here; they are not fatal.
                    Err(e) => log::trace!("udp recv: {e}"),
                }
            }
            if tun_ready {
                state.drain_tun(&tun, &mut buf, now)?;
                tun_ready = false;
            }
        }
        state.batch.flush(udp_fd);
    }
}
