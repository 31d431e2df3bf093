//! The NAT thread: runs [`Classifier`] over the data plane's own socket (its requests leave
//! through `Command::Transmit`, the answers come back from the data plane's demultiplexer),
//! so the mapping it learns is the one WireGuard uses. Classifies at start and again every
//! [`RECLASSIFY_INTERVAL`], and sends each report that differs from the last to the control
//! thread. With no STUN server the type is `unknown` and the member relies on relays.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::dataplane::{self, Command};
use crate::nat::classify::{Classifier, NatReport};

/// How often classification runs again (it notices a changed public address or NAT). Longer
/// than the 120 s a mapping towards the other STUN addresses may live, which a new run needs
/// gone for its filtering tests.
pub const RECLASSIFY_INTERVAL: Duration = Duration::from_secs(300);

/// Starts the thread. It ends when the data plane or the control thread is gone.
pub fn spawn(
    servers: Vec<SocketAddr>,
    local: impl Fn() -> Vec<SocketAddr> + Send + 'static,
    dataplane: dataplane::Handle,
    stun: Receiver<(SocketAddr, Vec<u8>)>,
    reports: Sender<NatReport>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nat".into())
        .spawn(move || run(&servers, &local, &dataplane, &stun, &reports))
        .map(|_| ())
}

fn run(
    servers: &[SocketAddr],
    local: &dyn Fn() -> Vec<SocketAddr>,
    dataplane: &dataplane::Handle,
    stun: &Receiver<(SocketAddr, Vec<u8>)>,
    reports: &Sender<NatReport>,
) {
    let mut last: Option<NatReport> = None;
    loop {
        let report = classify_once(servers, &local(), dataplane, stun);
        let Some(report) = report else { return };
        if last != Some(report) {
            log::info!(
                "NAT: {:?}, public endpoint {}",
                report.nat_type,
                report
                    .public
                    .map_or_else(|| "unknown".into(), |p| p.to_string())
            );
            if reports.send(report).is_err() {
                return;
            }
            last = Some(report);
        }
        // Sleep until the next run, dropping stray STUN answers meanwhile.
        let until = Instant::now() + RECLASSIFY_INTERVAL;
        while let Some(wait) = until.checked_duration_since(Instant::now()) {
            if stun.recv_timeout(wait).is_err_and(|e| e.is_disconnected()) {
                return;
            }
        }
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
