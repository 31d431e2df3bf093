//! `lanparty-lite server`: the control plane over HTTP/1.1 on one mio loop. Requests go to
//! [`api::Api`]; changes are written to the [`store::Store`] once per loop turn (group commit)
//! before any reply leaves; roster long-polls are parked connections, answered when their
//! party's version moves or after [`LONG_POLL`].

pub mod api;
mod api_relays;
#[cfg(test)]
mod api_tests;
pub mod conn;
pub mod rate;
pub mod relays;
pub mod store;
pub mod tokens;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::control::unix_now;
use crate::daemon::signals;
use crate::failure::Failure;
use crate::identity::{self, Identity};
use crate::stun_server::StunServer;
use api::{Api, Limits, Outcome};
use conn::{Conn, Input, Parked};
use rate::RateLimiter;
use store::Store;

/// How long a roster long-poll is held.
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// Connections idle this long (no request, nothing parked) are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often stale members are expired even without requests.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);
/// Heartbeats that only refresh `last_seen` are stored at most this late.
const LIVENESS_SAVE_EVERY: Duration = Duration::from_secs(5);
/// Listen backlog: room for every member reconnecting at once after a restart.
const LISTEN_BACKLOG: i32 = 4096;
/// Most simultaneous connections.
pub const MAX_CONNECTIONS: usize = 16_384;
const LISTENER: Token = Token(0);

/// Resolved options of `server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// State directory.
    pub state_dir: PathBuf,
    /// Most parties.
    pub max_parties: usize,
    /// Most members per party.
    pub max_peers: u32,
    /// Requests per second per source address (0: unlimited).
    pub rate_per_s: u32,
    /// Secret shared with relays (registration is refused without one).
    pub relay_secret: Option<Vec<u8>>,
    /// UDP addresses to answer STUN on (specific IPs), listed in `GET /v1/info`.
    pub stun: Vec<SocketAddr>,
}

/// A control server running on a thread of its own (see [`start`]).
pub struct ServerHandle {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waker: std::sync::Arc<mio::Waker>,
    thread: std::thread::JoinHandle<Result<(), Failure>>,
    /// Where it listens.
    pub local: SocketAddr,
}

impl ServerHandle {
    /// Stops the server (after the current loop turn's writes) and waits for it.
    pub fn stop(self) -> Result<(), Failure> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.waker.wake();
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Failure::System("the control server thread panicked".into())))
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(opts: ServerOptions) -> Result<(), Failure> {
    signals::block().map_err(|e| Failure::System(format!("signals: {e}")))?;
    let handle = start(opts)?;
    let (stop, waker) = (handle.stop.clone(), handle.waker.clone());
    signals::spawn_waiter(move |_| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = waker.wake();
    })
    .map_err(|e| Failure::System(e.to_string()))?;
    handle
        .thread
        .join()
        .unwrap_or_else(|_| Err(Failure::System("the control server thread panicked".into())))
}

/// Opens the store, binds the listener (and the STUN sockets) and runs the server on a
/// thread of its own until [`ServerHandle::stop`]. Errors at start-up are returned here.
pub fn start(opts: ServerOptions) -> Result<ServerHandle, Failure> {
    identity::ensure_private_dir(&opts.state_dir).map_err(|e| {
        Failure::System(format!("state directory {}: {e}", opts.state_dir.display()))
    })?;
    let (store, registry) = Store::open(&opts.state_dir)?;
    let (key, _) =
        Identity::load_or_create(&opts.state_dir).map_err(|e| Failure::System(e.to_string()))?;
    let mut listener = TcpListener::bind(opts.listen)
        .map_err(|e| Failure::Network(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Network(e.to_string()))?;
    // SAFETY: a listening socket; listen(2) again only raises its backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), LISTEN_BACKLOG) };
    // Runs until the server stops (dropping it stops the thread).
    let stun = if opts.stun.is_empty() {
        None
    } else {
        let server = StunServer::start(&opts.stun)
            .map_err(|e| Failure::Network(format!("cannot answer STUN: {e}")))?;
        log::info!("answering STUN on {:?}", server.addresses());
        Some(server)
    };
    let mut poll = Poll::new().map_err(|e| Failure::System(e.to_string()))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| Failure::System(e.to_string()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waker = std::sync::Arc::new(
        mio::Waker::new(poll.registry(), Token(1)).map_err(|e| Failure::System(e.to_string()))?,
    );
    log::info!(
        "control server listening on {local}, public key {}",
        key.public
    );
    println!("listening on {local}");
    for addr in &opts.stun {
        println!("stun on {addr}");
    }
    let limits = Limits {
        max_parties: opts.max_parties,
        max_peers: opts.max_peers,
    };
    let mut api = Api::new(
        registry,
        key.secret,
        limits,
        RateLimiter::new(opts.rate_per_s, opts.rate_per_s.saturating_mul(2)),
    );
    api.relays = relays::Relays::new(opts.relay_secret);
    api.stun = opts.stun.clone();
    let mut server = Server {
        api,
        store,
        conns: HashMap::new(),
        next_token: 2,
        saved_at: Instant::now(),
        parked_seen: None,
    };
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            server
                .run(&mut poll, &mut listener, &stop_flag)
                .map_err(|e| Failure::System(format!("server loop: {e}")))?;
            drop(stun);
            log::info!("control server stopped");
            Ok(())
        })
        .map_err(|e| Failure::System(e.to_string()))?;
    Ok(ServerHandle {
        stop,
        waker,
        thread,
        local,
    })
}

struct Server {
    api: Api,
    store: Store,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// Last successful save.
    saved_at: Instant,
    /// Registry version and earliest deadline at the last scan of parked long-polls: while
    /// neither has moved, no parked poll can be due.
    parked_seen: Option<(u64, Instant)>,
}

impl Server {
    fn run(
        &mut self,
        poll: &mut Poll,
        listener: &mut TcpListener,
        stop: &std::sync::atomic::AtomicBool,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_expire = Instant::now() + EXPIRE_EVERY;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let now = Instant::now();
            let timeout = self
                .wake_at(now)
                .min(next_expire)
                .saturating_duration_since(now);
            if let Err(e) = poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let unix = unix_now();
            let mut touched = Vec::new();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(poll, listener, now),
                    Token(1) => {}
                    token => {
                        let Some(conn) = self.conns.get_mut(&token) else {
                            continue;
                        };
                        let open = conn.fill();
                        // A request may arrive together with the peer's half-close: answer
                        // what was read, then close once the replies are out.
                        self.serve(token, now, unix);
                        touched.push(token);
                        if !open {
                            let Some(conn) = self.conns.get_mut(&token) else {
                                continue;
                            };
                            conn.parked = None;
                            conn.closing = true;
                            if !conn.has_output() {
                                self.close(poll, token);
                            }
                        }
                    }
                }
            }
            if now >= next_expire {
                if self.api.registry.expire(unix) {
                    self.api.dirty = true;
                }
                next_expire = now + EXPIRE_EVERY;
            }
            self.commit(&touched, now);
            self.release_parked(now, unix);
            self.flush_all(poll, now);
        }
        Ok(())
    }

    fn accept(&mut self, poll: &mut Poll, listener: &mut TcpListener, now: Instant) {
        loop {
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        log::warn!("connection limit reached; refusing {}", addr.ip());
                        continue;
                    }
                    let token = Token(self.next_token);
                    self.next_token = self.next_token.wrapping_add(1).max(2);
                    if poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        self.conns.insert(token, Conn::new(stream, addr.ip(), now));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Answers every complete request on a connection (stopping at a parked long-poll).
    fn serve(&mut self, token: Token, now: Instant, unix: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        loop {
            match conn.next_request() {
                Input::Incomplete => return,
                Input::Invalid(e) => {
                    let (status, message) = e.status();
                    conn.reply(status, &api::error_body(message), false, now);
                    return;
                }
                Input::Request(req) => match self.api.handle(&req, conn.ip, unix, now) {
                    Outcome::Reply(status, body) => conn.reply(status, &body, req.keep_alive, now),
                    Outcome::Park { party_id, since } => {
                        conn.parked = Some(Parked {
                            party_id,
                            since,
                            deadline: now + LONG_POLL,
                            keep_alive: req.keep_alive,
                        });
                        return;
                    }
                },
            }
        }
    }

    /// Makes this turn's changes durable before any reply leaves. If the store fails, the
    /// changes are rolled back and this turn's replies become 503s.
    fn commit(&mut self, touched: &[Token], now: Instant) {
        let liveness_due = self.api.liveness_dirty && now >= self.saved_at + LIVENESS_SAVE_EVERY;
        if !self.api.dirty && !liveness_due {
            return;
        }
        self.api.dirty = false;
        self.api.liveness_dirty = false;
        match self.store.save(&self.api.registry) {
            Ok(()) => self.saved_at = now,
            Err(e) => self.roll_back(touched, e),
        }
    }

    /// The store failed: drop this turn's changes and turn its replies into 503s.
    fn roll_back(&mut self, touched: &[Token], e: io::Error) {
        log::error!("cannot save the registry: {e}; rolling back this turn");
        if let Ok(registry) = self.store.reload() {
            self.api.registry = registry;
        }
        let body = api::error_body("the server could not store the change; try again");
        for token in touched {
            if let Some(conn) = self.conns.get_mut(token) {
                if conn.has_output() {
                    conn.discard_output();
                    conn.reply(503, &body, false, Instant::now());
                }
            }
        }
    }

    fn release_parked(&mut self, now: Instant, unix: u64) {
        let version = self.api.registry.version;
        if self
            .parked_seen
            .is_some_and(|(seen, earliest)| seen == version && now < earliest)
        {
            return;
        }
        let mut earliest = now + LONG_POLL;
        for conn in self.conns.values_mut() {
            let Some(parked) = &conn.parked else { continue };
            let moved = self
                .api
                .roster_version(&parked.party_id, unix)
                .is_none_or(|v| v > parked.since);
            if moved || now >= parked.deadline {
                let keep_alive = parked.keep_alive;
                let Outcome::Reply(status, body) = self.api.roster_reply(&parked.party_id, unix)
                else {
                    continue;
                };
                conn.parked = None;
                conn.reply(status, &body, keep_alive, now);
            } else {
                earliest = earliest.min(parked.deadline);
            }
        }
        self.parked_seen = Some((version, earliest));
    }

    fn flush_all(&mut self, poll: &mut Poll, now: Instant) {
        let mut finished = Vec::new();
        for (token, conn) in self.conns.iter_mut() {
            let ok = conn.flush();
            let idle = conn.parked.is_none()
                && !conn.has_output()
                && now.saturating_duration_since(conn.active_at) > IDLE_TIMEOUT;
            if !ok || conn.done() || idle {
                finished.push(*token);
            }
        }
        for token in finished {
            self.close(poll, token);
        }
    }

    fn close(&mut self, poll: &mut Poll, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = poll.registry().deregister(&mut conn.stream);
        }
    }

    /// When the loop must look again without a socket event: the earliest parked long-poll
    /// deadline seen by the last scan, a pending liveness save, or the idle-connection check.
    fn wake_at(&self, now: Instant) -> Instant {
        let mut at = now + IDLE_TIMEOUT;
        if let Some((_, earliest)) = self.parked_seen {
            at = at.min(earliest);
        }
        if self.api.liveness_dirty {
            at = at.min(self.saved_at + LIVENESS_SAVE_EVERY);
        }
        at
    }
}
