//! The data plane thread: one mio loop owning the tun device and the UDP socket, around the
//! [`peers::PeerTable`]. Other threads talk to it with [`Command`]s through a [`Handle`],
//! which wakes the loop.

pub mod broadcast;
mod event_loop;
pub mod health;
pub mod peer;
mod peer_health;
pub mod peers;
pub mod relays;
pub mod socket;
pub mod tun_device;
pub mod udp_offload;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::UdpSocket;
use mio::{Poll, Waker};

use crate::control::Reach;
use crate::relay::client::Grant;
use broadcast::OwnBroadcast;
use peers::{DropCounters, PeerConfig, PeerStats, PeerTable};
use relays::RelayState;
/// How often WireGuard timers run while packets flow (boringtun wants about 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often they run when no packet moved since the last run: WireGuard's timers are whole
/// seconds (keepalive 25 s, handshake retry 5 s, rekey 120 s), so an idle member wakes up
/// once a second instead of four times.
pub const IDLE_TIMER_TICK: Duration = Duration::from_secs(1);

/// At most one [`DataplaneEvent::DirectPathLost`] per this period: every peer's direct
/// path goes down together when our own NAT rebinds, and one check of our mapping is enough.
pub const DIRECT_LOST_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Passes on at most one report per [`DIRECT_LOST_REPORT_INTERVAL`]; a loss held back by
/// the interval is reported once the interval has passed (not dropped: the path that went
/// down second may be the one our rebinding broke).
#[derive(Debug, Default)]
struct ReportLimit {
    last_at: Option<Instant>,
    pending: bool,
}

impl ReportLimit {
    /// Notes `losses` new losses at `now`; whether a report goes out now.
    fn poll(&mut self, losses: u32, now: Instant) -> bool {
        self.pending |= losses > 0;
        let may = self
            .last_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DIRECT_LOST_REPORT_INTERVAL);
        if !(self.pending && may) {
            return false;
        }
        self.pending = false;
        self.last_at = Some(now);
        true
    }
}

/// The next timer run after one at `now`, given whether packets moved since the last one.
fn next_timer_run(now: Instant, active: bool) -> Instant {
    now + if active { TIMER_TICK } else { IDLE_TIMER_TICK }
}

/// Messages to the data plane thread.
pub enum Command {
    /// Make the peer set match this list.
    SyncPeers(Vec<PeerConfig>),
    /// Reply with a snapshot of every peer.
    Status(Sender<DataplaneStatus>),
    /// Send this datagram from the data plane's socket (STUN for NAT classification, so the
    /// mapping it learns is WireGuard's).
    Transmit {
        /// Destination.
        dst: SocketAddr,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// Keep bindings with exactly these relays.
    SetRelays(Vec<SocketAddr>),
    /// Our public address moved: bind again at every relay from where we are now.
    RefreshRelays,
    /// A relay ticket, for every relay.
    RelayGrant(Grant),
    /// What we publish about ourselves (NAT, public address, home relay), for `status`.
    SetReach(Reach),
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
    /// Every relay we keep a binding with.
    pub relays: Vec<RelayState>,
    /// What we publish about ourselves.
    pub reach: Reach,
}

/// What the data plane tells the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneEvent {
    /// The relays need a (new) ticket.
    NeedTicket,
    /// A relay's binding or RTT changed.
    Relay(RelayState),
    /// A peer's direct path stopped answering: our public mapping may have moved (a NAT
    /// rebinding), worth a quick check. At most one per [`DIRECT_LOST_REPORT_INTERVAL`].
    DirectPathLost,
}

/// Where the data plane sends what it does not handle itself.
#[derive(Clone, Default)]
pub struct Uplinks {
    /// STUN datagrams (source, bytes), for the NAT thread.
    pub stun: Option<Sender<(SocketAddr, Vec<u8>)>>,
    /// Relay news, for the control thread.
    pub control: Option<Sender<DataplaneEvent>>,
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

/// Starts the data plane thread on an opened tun device and bound socket.
pub fn spawn(
    tun: tun::Device,
    socket: UdpSocket,
    table: PeerTable,
    uplinks: Uplinks,
) -> io::Result<(Handle, JoinHandle<()>)> {
    tun.set_nonblock()?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), event_loop::WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = Handle { tx, waker };
    let thread = std::thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || {
            if let Err(e) = event_loop::run(poll, tun, socket, table, rx, uplinks) {
                log::error!("data plane stopped: {e}");
            }
        })?;
    Ok((handle, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_run_four_times_a_second_with_traffic_and_once_when_idle() {
        let now = Instant::now();
        assert_eq!(next_timer_run(now, true), now + Duration::from_millis(250));
        assert_eq!(next_timer_run(now, false), now + Duration::from_secs(1));
    }

    #[test]
    fn direct_path_losses_are_reported_at_most_once_per_interval_and_never_dropped() {
        let now = Instant::now();
        let interval = DIRECT_LOST_REPORT_INTERVAL;
        let mut limit = ReportLimit::default();
        assert!(!limit.poll(0, now), "nothing lost, nothing reported");
        assert!(limit.poll(1, now), "the first loss is reported");
        assert!(!limit.poll(2, now), "more at once are not");
        assert!(!limit.poll(0, now + interval - Duration::from_millis(1)));
        assert!(
            limit.poll(0, now + interval),
            "the held-back loss, once the interval passed"
        );
        assert!(!limit.poll(0, now + interval * 3), "reported once only");
        assert!(
            limit.poll(1, now + interval * 3),
            "a new loss after a quiet spell: at once"
        );
        assert_eq!(DIRECT_LOST_REPORT_INTERVAL, Duration::from_secs(10));
    }
}
