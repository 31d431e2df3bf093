//! The relay's registration thread: signs a registration with the shared secret and posts
//! it to the control server (`POST /v1/relays`) at start, every [`HEARTBEAT`], and soon
//! after the number of clients changes, so members see its load. The schedule is a pure
//! value ([`Schedule`]); the thread around it owns the HTTP client and the clock.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::control::http::HttpControl;
use crate::control::unix_now;
use crate::server::relays::Registration;

/// Registrations are refreshed this often (the server forgets relays after 90 s).
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A changed client count is reported this soon at the earliest after the last report.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// A failed registration is retried after this long.
pub const RETRY: Duration = Duration::from_secs(5);

/// Messages from the relay loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The number of bound clients changed.
    Load(u32),
    /// Stop.
    Shutdown,
}

/// When to register next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    clients: u32,
    reported: Option<u32>,
    next_at: Instant,
    last_ok_at: Option<Instant>,
}

impl Schedule {
    /// Registers at once.
    pub fn new(now: Instant) -> Schedule {
        Schedule {
            clients: 0,
            reported: None,
            next_at: now,
            last_ok_at: None,
        }
    }

    /// The client count changed.
    pub fn handle_load(&mut self, clients: u32, now: Instant) {
        self.clients = clients;
        if self.reported != Some(clients) {
            let earliest = self.last_ok_at.map_or(now, |at| at + MIN_GAP).max(now);
            self.next_at = self.next_at.min(earliest);
        }
    }

    /// When to register next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_at
    }

    /// The client count to register now, if a registration is due.
    pub fn poll_due(&self, now: Instant) -> Option<u32> {
        (now >= self.next_at).then_some(self.clients)
    }

    /// The registration of `clients` succeeded (`true`) or failed.
    pub fn handle_result(&mut self, clients: u32, ok: bool, now: Instant) {
        if ok {
            self.reported = Some(clients);
            self.last_ok_at = Some(now);
            self.next_at = now + HEARTBEAT;
            if clients != self.clients {
                self.next_at = now + MIN_GAP;
            }
        } else {
            self.next_at = now + RETRY;
        }
    }
}

/// What to register.
#[derive(Debug, Clone)]
pub struct Registrar {
    /// Control server URL.
    pub control: String,
    /// The address members reach the relay at.
    pub address: SocketAddr,
    /// Region label.
    pub region: String,
    /// Most clients.
    pub capacity: u32,
    /// The secret shared with the control server.
    pub secret: Vec<u8>,
}

impl Registrar {
    /// A signed registration with `clients` bound now.
    pub fn registration(&self, clients: u32, unix: u64) -> Registration {
        Registration {
            address: self.address,
            region: self.region.clone(),
            capacity: self.capacity,
            clients,
            timestamp: unix,
            mac: String::new(),
        }
        .sign(&self.secret)
    }
}

/// Starts the registration thread.
pub fn spawn(
    registrar: Registrar,
    client: HttpControl,
    rx: Receiver<Message>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("relay-register".into())
        .spawn(move || {
            let mut schedule = Schedule::new(Instant::now());
            let mut failing = false;
            loop {
                let now = Instant::now();
                if let Some(clients) = schedule.poll_due(now) {
                    let reg = registrar.registration(clients, unix_now());
                    let result = client.register_relay(&reg);
                    match &result {
                        Ok(()) if failing => {
                            log::info!("registered with {} again", registrar.control);
                        }
                        Ok(()) => log::debug!(
                            "registered with {}: {clients}/{} clients",
                            registrar.control,
                            registrar.capacity
                        ),
                        Err(e) => log::warn!(
                            "cannot register with {} (retrying in {} s): {e}",
                            registrar.control,
                            RETRY.as_secs()
                        ),
                    }
                    failing = result.is_err();
                    schedule.handle_result(clients, result.is_ok(), Instant::now());
                    continue;
                }
                let wait = schedule.poll_timeout().saturating_duration_since(now);
                match rx.recv_timeout(wait) {
                    Ok(Message::Load(clients)) => schedule.handle_load(clients, Instant::now()),
                    Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_immediate_then_every_30_seconds() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert_eq!(s.poll_due(t0), Some(0));
        s.handle_result(0, true, t0);
        assert_eq!(s.poll_timeout(), t0 + HEARTBEAT);
        assert_eq!(s.poll_due(t0 + HEARTBEAT - Duration::from_millis(1)), None);
        assert_eq!(s.poll_due(t0 + HEARTBEAT), Some(0));
    }

    #[test]
    fn a_changed_load_is_reported_within_the_minimum_gap() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.handle_result(0, true, t0);
        s.handle_load(3, t0 + Duration::from_millis(500));
        assert_eq!(s.poll_timeout(), t0 + MIN_GAP);
        s.handle_result(3, true, t0 + MIN_GAP);
        s.handle_load(3, t0 + MIN_GAP + Duration::from_secs(1));
        assert_eq!(
            s.poll_timeout(),
            t0 + MIN_GAP + HEARTBEAT,
            "an unchanged load waits for the heartbeat"
        );
    }

    #[test]
    fn a_failed_registration_is_retried_after_5_seconds() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.handle_result(0, false, t0);
        assert_eq!(s.poll_timeout(), t0 + RETRY);
    }

    #[test]
    fn registrations_are_signed_so_the_server_accepts_them() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let registrar = Registrar {
            control: "http://127.0.0.1:1".into(),
            address: "192.0.2.9:3478".parse().unwrap(),
            region: "eu-west".into(),
            capacity: 10,
            secret: secret.clone(),
        };
        let mut relays = crate::server::relays::Relays::new(Some(secret));
        relays
            .register(registrar.registration(4, 1000), 1000)
            .unwrap();
        assert_eq!(relays.list(1000)[0].clients, 4);
    }
}
