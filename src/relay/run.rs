//! `lanparty-lite relay`: one mio loop around [`Relay`] (the pure core) on one UDP socket,
//! the registration thread ([`register`]) and the signal thread. The loop reads the clock
//! once per turn, drains the socket, sends what the core returns, runs the core's timers,
//! tells the registration thread when the client count changed, and logs the counters on
//! SIGUSR1 and every [`STATS_EVERY`] while they move.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::core::{Config, Counters, Now, Relay};
use super::register::{self, Message, Registrar};
use crate::control::http::HttpControl;
use crate::daemon::signals;
use crate::failure::Failure;
use crate::wire::relay::is_relay_frame;

/// Counters are logged this often (at info) while they change.
pub const STATS_EVERY: Duration = Duration::from_secs(60);
const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// Resolved options of `relay`.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Address registered for members (default: the bound address).
    pub advertise: Option<SocketAddr>,
    /// Secret shared with the control server.
    pub secret: Vec<u8>,
    /// Control server URL (`http(s)://host:port`).
    pub control: String,
    /// Region label.
    pub region: String,
    /// Limits.
    pub config: Config,
    /// UDP addresses to answer STUN on as well (`--stun`).
    pub stun: Vec<SocketAddr>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: unix_ms(),
    }
}

/// A relay running on a thread of its own (see [`start`]).
pub struct RelayHandle {
    stop: Arc<AtomicBool>,
    report: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: std::thread::JoinHandle<Result<(), Failure>>,
}

impl RelayHandle {
    /// Stops the relay and waits for it.
    pub fn stop(self) -> Result<(), Failure> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Failure::System("the relay thread panicked".into())))
    }
}

/// Runs the relay until SIGINT/SIGTERM/SIGHUP; SIGUSR1 logs its counters.
pub fn run(opts: RelayOptions) -> Result<(), Failure> {
    signals::block_with(&[libc::SIGUSR1]).map_err(|e| Failure::System(format!("signals: {e}")))?;
    let handle = start(opts)?;
    let (stop, report, waker) = (
        handle.stop.clone(),
        handle.report.clone(),
        handle.waker.clone(),
    );
    signals::spawn_waiter_with(&[libc::SIGUSR1], move |signal| {
        if signal == libc::SIGUSR1 {
            report.store(true, Ordering::SeqCst);
        } else {
            stop.store(true, Ordering::SeqCst);
        }
        let _ = waker.wake();
    })
    .map_err(|e| Failure::System(e.to_string()))?;
    handle
        .thread
        .join()
        .unwrap_or_else(|_| Err(Failure::System("the relay thread panicked".into())))
}

/// Binds the relay's socket (and STUN sockets), starts registering with the control server,
/// and forwards on a thread of its own until [`RelayHandle::stop`].
pub fn start(opts: RelayOptions) -> Result<RelayHandle, Failure> {
    let client = HttpControl::new(&opts.control, None, None)?;
    let std_socket = std::net::UdpSocket::bind(opts.listen)
        .map_err(|e| Failure::Network(format!("cannot listen on UDP {}: {e}", opts.listen)))?;
    std_socket
        .set_nonblocking(true)
        .map_err(|e| Failure::System(e.to_string()))?;
    let mut socket = UdpSocket::from_std(std_socket);
    let local = socket
        .local_addr()
        .map_err(|e| Failure::Network(e.to_string()))?;
    let mut poll = Poll::new().map_err(|e| Failure::System(e.to_string()))?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)
        .map_err(|e| Failure::System(e.to_string()))?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| Failure::System(e.to_string()))?);
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(AtomicBool::new(false));
    let stun = if opts.stun.is_empty() {
        None
    } else {
        let server = crate::stun_server::StunServer::start(&opts.stun)
            .map_err(|e| Failure::Network(format!("cannot answer STUN: {e}")))?;
        for addr in server.addresses() {
            println!("stun on {addr}");
        }
        Some(server)
    };
    let address = opts.advertise.unwrap_or(local);
    let capacity = u32::try_from(opts.config.max_clients).unwrap_or(u32::MAX);
    let (tx, rx) = crossbeam_channel::unbounded();
    let registrar = Registrar {
        control: opts.control.clone(),
        address,
        region: opts.region.clone(),
        capacity,
        secret: opts.secret.clone(),
    };
    register::spawn(registrar, client, rx).map_err(|e| Failure::System(e.to_string()))?;
    log::info!(
        "relay listening on UDP {local} (registered as {address}, region {}, {} clients at most, \
         {} packets/s and {} bytes/s per client)",
        opts.region,
        opts.config.max_clients,
        opts.config.client_pps,
        opts.config.client_bytes_per_s
    );
    println!("relay listening on {local}");
    let (stop_flag, report_flag) = (stop.clone(), report.clone());
    let thread = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let mut relay = Relay::new(opts.config, &opts.secret, now());
            let result = serve(
                &mut poll,
                &mut socket,
                &mut relay,
                &stop_flag,
                &report_flag,
                &tx,
            );
            let _ = tx.send(Message::Shutdown);
            let send_errors = result.map_err(|e| Failure::System(format!("relay loop: {e}")))?;
            log_stats(&relay, send_errors);
            if let Some(stun) = stun {
                stun.stop();
            }
            log::info!("relay stopped");
            Ok(())
        })
        .map_err(|e| Failure::System(e.to_string()))?;
    Ok(RelayHandle {
        stop,
        report,
        waker,
        thread,
    })
}

fn log_stats(relay: &Relay, send_errors: u64) {
    log::info!(
        "relay stats: {}/{} clients; {}; {send_errors} send errors",
        relay.clients(),
        relay.config().max_clients,
        relay.counters()
    );
}

/// The loop: until a stop signal, drain the socket through the core and run its timers.
fn serve(
    poll: &mut Poll,
    socket: &mut UdpSocket,
    relay: &mut Relay,
    stop: &AtomicBool,
    report: &AtomicBool,
    tx: &crossbeam_channel::Sender<Message>,
) -> io::Result<u64> {
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 65_536];
    let mut clients_told = 0usize;
    let mut send_errors = 0u64;
    let mut next_stats_at = Instant::now() + STATS_EVERY;
    let mut stats_seen = Counters::default();
    while !stop.load(Ordering::SeqCst) {
        let wake_at = relay.poll_timeout().min(next_stats_at);
        let timeout = wake_at.saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = now();
        loop {
            let (len, src) = match socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; they say nothing about
                    // the next datagram.
                    log::trace!("relay recv: {e}");
                    continue;
                }
            };
            let datagram = &mut buf[..len];
            if !is_relay_frame(datagram) {
                // The STUN responder (issue 4, item 1) plugs in here: STUN requests have the
                // two top bits of the first byte zero and the magic cookie at bytes 4..8; an
                // answer goes back to `src` through this socket.
                relay.count_not_relay();
                continue;
            }
            if let Some(out) = relay.handle_datagram(src, datagram, now) {
                if let Err(e) = socket.send_to(out.payload, out.dst) {
                    send_errors += 1;
                    log::trace!("relay send: {e}");
                }
            }
        }
        relay.handle_timeout(now);
        if relay.clients() != clients_told {
            clients_told = relay.clients();
            let _ = tx.send(Message::Load(
                u32::try_from(clients_told).unwrap_or(u32::MAX),
            ));
        }
        if report.swap(false, Ordering::SeqCst) {
            log_stats(relay, send_errors);
        }
        if now.at >= next_stats_at {
            next_stats_at = now.at + STATS_EVERY;
            if relay.counters() != stats_seen {
                stats_seen = relay.counters();
                log_stats(relay, send_errors);
            }
        }
    }
    Ok(send_errors)
}
