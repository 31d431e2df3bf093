//! The NAT thread: runs [`Classifier`] over the data plane's own socket (its requests leave
//! through `Command::Transmit`, the answers come back from the data plane's demultiplexer),
//! so the mapping it learns is the one WireGuard uses. Classifies at start and again every
//! [`RECLASSIFY_INTERVAL`], and sends each report that differs from the last to the control
//! thread. Between runs, a [`NatCommand::CheckMapping`] (the control thread's, when a direct
//! path went down) asks the primary STUN server once for our mapping ([`MappingCheck`]): a
//! NAT that moved us to another public port is reported within a round trip, not minutes.
//! With no STUN server the type is `unknown` and the member relies on relays.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::dataplane::{self, Command};
use crate::nat::classify::{
    transaction_deadline, Classifier, NatReport, Transmit, MAX_TRANSMISSIONS,
};
use crate::wire::stun::{self, Class, Encoder, Message, TransactionId, BINDING};

/// How often classification runs again (it notices a changed public address or NAT). Longer
/// than the 120 s a mapping towards the other STUN addresses may live, which a new run needs
/// gone for its filtering tests.
pub const RECLASSIFY_INTERVAL: Duration = Duration::from_secs(300);

/// Messages to the NAT thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatCommand {
    /// Ask the primary STUN server for our public mapping now; a changed one is reported at
    /// once (with the last classification's type). Ignored during a classification, which
    /// learns the mapping anyway.
    CheckMapping,
    /// Stop the thread.
    Shutdown,
}

/// Starts the thread. It ends when the data plane or the control thread is gone.
pub fn spawn(
    servers: Vec<SocketAddr>,
    local: impl Fn() -> Vec<SocketAddr> + Send + 'static,
    dataplane: dataplane::Handle,
    stun: Receiver<(SocketAddr, Vec<u8>)>,
    commands: Receiver<NatCommand>,
    reports: Sender<NatReport>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nat".into())
        .spawn(move || run(&servers, &local, &dataplane, &stun, &commands, &reports))
        .map(|_| ())
}

/// The data plane or the control thread is gone: the NAT thread ends.
struct Gone;

fn run(
    servers: &[SocketAddr],
    local: &dyn Fn() -> Vec<SocketAddr>,
    dataplane: &dataplane::Handle,
    stun: &Receiver<(SocketAddr, Vec<u8>)>,
    commands: &Receiver<NatCommand>,
    reports: &Sender<NatReport>,
) {
    let mut last: Option<NatReport> = None;
    loop {
        let Some(report) = classify_once(servers, &local(), dataplane, stun) else {
            return;
        };
        if publish(&mut last, report, reports).is_err() {
            return;
        }
        // Checks asked for during the classification: it has just looked.
        for command in commands.try_iter() {
            if command == NatCommand::Shutdown {
                return;
            }
        }
        let until = Instant::now() + RECLASSIFY_INTERVAL;
        if wait_for_commands(
            until, servers, dataplane, stun, commands, reports, &mut last,
        )
        .is_err()
        {
            return;
        }
    }
}

/// Until `until`, runs mapping checks when asked, dropping stray STUN answers meanwhile.
fn wait_for_commands(
    until: Instant,
    servers: &[SocketAddr],
    dataplane: &dataplane::Handle,
    stun: &Receiver<(SocketAddr, Vec<u8>)>,
    commands: &Receiver<NatCommand>,
    reports: &Sender<NatReport>,
    last: &mut Option<NatReport>,
) -> Result<(), Gone> {
    while let Some(wait) = until.checked_duration_since(Instant::now()) {
        crossbeam_channel::select! {
            recv(stun) -> got => {
                got.map_err(|_| Gone)?;
            }
            recv(commands) -> command => match command {
                Ok(NatCommand::CheckMapping) => {
                    let mapped = check_mapping(servers, dataplane, stun)?;
                    log::debug!("NAT: mapping check: {mapped:?}");
                    if let Some(report) = mapped.and_then(|m| moved(*last, m)) {
                        publish(last, report, reports)?;
                    }
                }
                Ok(NatCommand::Shutdown) | Err(_) => return Err(Gone),
            },
            default(wait) => {}
        }
    }
    Ok(())
}

/// Sends `report` to the control thread if it differs from the last one.
fn publish(
    last: &mut Option<NatReport>,
    report: NatReport,
    reports: &Sender<NatReport>,
) -> Result<(), Gone> {
    if *last == Some(report) {
        return Ok(());
    }
    log::info!(
        "NAT: {:?}, public endpoint {}",
        report.nat_type,
        report
            .public
            .map_or_else(|| "unknown".into(), |p| p.to_string())
    );
    reports.send(report).map_err(|_| Gone)?;
    *last = Some(report);
    Ok(())
}

/// The last report with the public endpoint a mapping check found, if that moved. Nothing
/// before the first classification (it reports the mapping itself).
fn moved(last: Option<NatReport>, mapped: SocketAddr) -> Option<NatReport> {
    let last = last?;
    (last.public != Some(mapped)).then_some(NatReport {
        public: Some(mapped),
        ..last
    })
}

/// One [`MappingCheck`] to the primary server; `Ok(None)` if it did not answer.
fn check_mapping(
    servers: &[SocketAddr],
    dataplane: &dataplane::Handle,
    stun: &Receiver<(SocketAddr, Vec<u8>)>,
) -> Result<Option<SocketAddr>, Gone> {
    let mut id = [0u8; 12];
    let _ = crate::random::fill(&mut id);
    let Some(mut check) = MappingCheck::new(servers, id, Instant::now()) else {
        return Ok(None);
    };
    loop {
        while let Some(t) = check.poll_transmit() {
            let command = Command::Transmit {
                dst: t.dst,
                payload: t.payload,
            };
            dataplane.send(command).map_err(|_| Gone)?;
        }
        if let Some(mapped) = check.result() {
            return Ok(mapped);
        }
        let wait = check.poll_timeout().map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        match stun.recv_timeout(wait) {
            Ok((from, bytes)) => {
                check.handle_datagram(from, &bytes);
            }
            Err(e) if e.is_disconnected() => return Err(Gone),
            Err(_) => check.handle_timeout(Instant::now()),
        }
    }
}

/// One Binding request to the primary STUN server (RFC 5389 §7.2.1, retransmitted like the
/// classifier's, [`TRANSACTION_TIMEOUT`] in all): our public mapping right now. Pure: feed it
/// datagrams and deadlines, drain [`MappingCheck::poll_transmit`], read
/// [`MappingCheck::result`].
#[derive(Debug)]
pub struct MappingCheck {
    server: SocketAddr,
    id: TransactionId,
    payload: Vec<u8>,
    started_at: Instant,
    sent: u32,
    outbox: Option<Transmit>,
    /// `Some(None)`: no usable answer.
    outcome: Option<Option<SocketAddr>>,
}

impl MappingCheck {
    /// Starts a check with the primary (first) server; `None` without servers.
    pub fn new(servers: &[SocketAddr], id: TransactionId, now: Instant) -> Option<MappingCheck> {
        let server = *servers.first()?;
        let payload = Encoder::new(Class::Request, BINDING, id).finish_with_fingerprint();
        Some(MappingCheck {
            server,
            id,
            outbox: Some(Transmit {
                dst: server,
                payload: payload.clone(),
            }),
            payload,
            started_at: now,
            sent: 1,
            outcome: None,
        })
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.take()
    }

    /// When [`MappingCheck::handle_timeout`] must run next; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outcome
            .is_none()
            .then(|| transaction_deadline(self.started_at, self.sent))
    }

    /// Retransmits when due; gives up after the last wait.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|t| now < t) {
            return;
        }
        if self.sent < MAX_TRANSMISSIONS {
            self.sent += 1;
            self.outbox = Some(Transmit {
                dst: self.server,
                payload: self.payload.clone(),
            });
        } else {
            self.outcome = Some(None);
        }
    }

    /// Takes a datagram from `from`; true if it answered this check.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8]) -> bool {
        if self.outcome.is_some() || from != self.server || !stun::is_stun(bytes) {
            return false;
        }
        let Ok(m) = Message::parse(bytes) else {
            return false;
        };
        if m.transaction != self.id {
            return false;
        }
        self.outcome = Some(match m.class {
            Class::Success if m.unknown.is_empty() => m.mapped(),
            _ => None,
        });
        true
    }

    /// Once done: the mapped address, or `None` if the server gave none.
    pub fn result(&self) -> Option<Option<SocketAddr>> {
        self.outcome
    }
}

/// One classification; `None` when the data plane is gone.
fn classify_once(
    servers: &[SocketAddr],
    local: &[SocketAddr],
    dataplane: &dataplane::Handle,
    stun: &Receiver<(SocketAddr, Vec<u8>)>,
) -> Option<NatReport> {
    let mut seed = [0u8; 12];
    let _ = crate::random::fill(&mut seed);
    let mut classifier = Classifier::new(servers, local, seed, Instant::now());
    loop {
        while let Some(t) = classifier.poll_transmit() {
            let command = Command::Transmit {
                dst: t.dst,
                payload: t.payload,
            };
            dataplane.send(command).ok()?;
        }
        if let Some(report) = classifier.result() {
            return Some(report);
        }
        let wait = classifier
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            });
        match stun.recv_timeout(wait) {
            Ok((from, bytes)) => {
                let now = Instant::now();
                classifier.handle_datagram(from, &bytes, now);
                if classifier.poll_timeout().is_some_and(|t| t <= now) {
                    classifier.handle_timeout(now);
                }
            }
            Err(e) if e.is_disconnected() => return None,
            Err(_) => classifier.handle_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::classify::TRANSACTION_TIMEOUT;
    use crate::nat::NatType;
    use crate::stun_server::Responder;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const SERVER: &str = "198.51.100.1:3478";
    const OLD: &str = "203.0.113.7:50000";
    const NEW: &str = "203.0.113.7:20000";

    fn classified() -> NatReport {
        NatReport {
            nat_type: NatType::PortRestrictedCone,
            public: Some(addr(OLD)),
            mapping: None,
            filtering: None,
        }
    }

    #[test]
    fn a_check_sends_one_binding_request_and_reads_the_mapping_from_the_answer() {
        let now = Instant::now();
        let servers = [addr(SERVER), addr("198.51.100.2:3479")];
        let mut check = MappingCheck::new(&servers, [7; 12], now).unwrap();
        let t = check.poll_transmit().expect("a request at once");
        assert_eq!(t.dst, addr(SERVER), "to the primary server");
        assert_eq!(check.poll_transmit(), None, "one request");
        assert_eq!(check.result(), None);
        let mut responder = Responder::new(servers.to_vec());
        let reply = responder.handle(0, addr(NEW), &t.payload, now).unwrap();
        assert!(!check.handle_datagram(addr("198.51.100.9:3478"), &reply.payload));
        assert!(check.handle_datagram(addr(SERVER), &reply.payload));
        assert_eq!(check.result(), Some(Some(addr(NEW))));
        assert_eq!(check.poll_timeout(), None, "done");
        assert!(
            !check.handle_datagram(addr(SERVER), &reply.payload),
            "a second answer is not taken"
        );
    }

    #[test]
    fn an_unanswered_check_retransmits_then_gives_up() {
        let now = Instant::now();
        let mut check = MappingCheck::new(&[addr(SERVER)], [7; 12], now).unwrap();
        assert!(check.poll_transmit().is_some());
        let mut sent_at = Vec::new();
        while let Some(at) = check.poll_timeout() {
            check.handle_timeout(at);
            if check.poll_transmit().is_some() {
                sent_at.push(at - now);
            }
        }
        assert_eq!(
            sent_at,
            vec![Duration::from_millis(500), Duration::from_millis(1500)]
        );
        assert_eq!(check.result(), Some(None));
        assert!(TRANSACTION_TIMEOUT <= Duration::from_secs(4));
    }

    #[test]
    fn an_answer_to_another_request_is_not_taken() {
        let now = Instant::now();
        let mut check = MappingCheck::new(&[addr(SERVER)], [7; 12], now).unwrap();
        let other = Encoder::new(Class::Request, BINDING, [8; 12]).finish_with_fingerprint();
        let mut responder = Responder::new(vec![addr(SERVER)]);
        let reply = responder.handle(0, addr(NEW), &other, now).unwrap();
        assert!(!check.handle_datagram(addr(SERVER), &reply.payload));
        assert!(!check.handle_datagram(addr(SERVER), b"not stun"));
        assert_eq!(check.result(), None);
    }

    #[test]
    fn no_server_means_no_check() {
        assert!(MappingCheck::new(&[], [7; 12], Instant::now()).is_none());
    }

    #[test]
    fn a_moved_mapping_is_the_last_report_with_the_new_endpoint() {
        let last = classified();
        assert_eq!(
            moved(Some(last), addr(NEW)),
            Some(NatReport {
                public: Some(addr(NEW)),
                ..last
            })
        );
        assert_eq!(moved(Some(last), addr(OLD)), None, "unchanged: nothing new");
        assert_eq!(
            moved(None, addr(NEW)),
            None,
            "before the first classification"
        );
    }

    #[test]
    fn a_moved_mapping_is_published_at_once_and_only_once() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut last = Some(classified());
        let report = moved(last, addr(NEW)).unwrap();
        assert!(publish(&mut last, report, &tx).is_ok());
        assert!(publish(&mut last, report, &tx).is_ok());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![report]);
        assert_eq!(last.and_then(|r| r.public), Some(addr(NEW)));
    }
}
