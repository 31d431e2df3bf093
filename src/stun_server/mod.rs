//! The STUN responder as a service: [`Responder`] (pure) answers Binding requests, and
//! [`StunServer`] is a thin thread around it with one UDP socket per configured address, so
//! that every reply leaves from a known IP and port (RFC 5780 CHANGE-REQUEST needs that).
//! Used by `lanparty-lite server --stun`; a relay can run the same.

pub mod responder;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

pub use responder::{Reply, Responder};

/// Largest datagram read; anything longer is not a request we answer.
const RECV_BUF: usize = 2048;

/// Checks addresses given for STUN sockets: a specific IP (replies must leave from a known
/// address, which a wildcard bind cannot promise), a port, no duplicates.
pub fn validate(addrs: &[SocketAddr]) -> Result<(), String> {
    for (i, addr) in addrs.iter().enumerate() {
        if addr.ip().is_unspecified() {
            return Err(format!(
                "{addr}: give a specific IP address, not {}: replies must leave from a known address",
                addr.ip()
            ));
        }
        if addr.port() == 0 {
            return Err(format!("{addr}: give a port (e.g. 3478)"));
        }
        if addrs[..i].contains(addr) {
            return Err(format!("{addr} given twice"));
        }
    }
    Ok(())
}

/// A running STUN responder thread; [`StunServer::stop`] ends it.
pub struct StunServer {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

const WAKER: Token = Token(usize::MAX);

impl StunServer {
    /// Binds one UDP socket per address (all or none) and starts answering on a new thread.
    pub fn start(addrs: &[SocketAddr]) -> io::Result<StunServer> {
        let mut sockets = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let socket = UdpSocket::bind(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("STUN socket {addr}: {e}")))?;
            sockets.push(socket);
        }
        let poll = Poll::new()?;
        for (i, socket) in sockets.iter_mut().enumerate() {
            poll.registry()
                .register(socket, Token(i), Interest::READABLE)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let responder = Responder::new(addrs.to_vec());
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("stun".into())
                .spawn(move || run(poll, sockets, responder, &stop))?
        };
        Ok(StunServer {
            addrs: addrs.to_vec(),
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The addresses answered on.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops the thread and closes the sockets.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn run(mut poll: Poll, sockets: Vec<UdpSocket>, mut responder: Responder, stop: &AtomicBool) {
    let mut events = Events::with_capacity(64);
    let mut buf = [0u8; RECV_BUF];
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("stun: poll failed: {e}; STUN answers stop");
            return;
        }
        for event in events.iter() {
            let on = event.token().0;
            let Some(socket) = sockets.get(on) else {
                continue;
            };
            loop {
                let (len, from) = match socket.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::debug!("stun: receive on {}: {e}", responder.sockets()[on]);
                        break;
                    }
                };
                let Some(reply) = responder.handle(on, from, &buf[..len], Instant::now()) else {
                    continue;
                };
                if let Err(e) = sockets[reply.socket].send_to(&reply.payload, reply.dst) {
                    log::debug!("stun: reply to {}: {e}", reply.dst);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_portless_and_repeated_addresses_are_refused() {
        let a: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert_eq!(validate(&[a, "127.0.0.2:3479".parse().unwrap()]), Ok(()));
        for (bad, why) in [
            (vec!["0.0.0.0:3478".parse().unwrap()], "specific IP"),
            (vec!["[::]:3478".parse().unwrap()], "specific IP"),
            (vec!["127.0.0.1:0".parse().unwrap()], "give a port"),
            (vec![a, a], "twice"),
        ] {
            let err = validate(&bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_thread_answers_from_the_socket_the_change_request_names() {
        use crate::wire::stun::{ChangeRequest, Class, Encoder, Message, BINDING};
        // Port 0 is refused on the command line; here it lets the test pick free ports.
        let probe = |ip: &str| {
            let s = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
            s.local_addr().unwrap()
        };
        let a1 = probe("127.0.0.1");
        let a2 = SocketAddr::new("127.0.0.2".parse().unwrap(), a1.port());
        let server = match StunServer::start(&[a1, a2]) {
            Ok(server) => server,
            Err(e) => panic!("binding {a1} and {a2}: {e}"),
        };
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut e = Encoder::new(Class::Request, BINDING, [8; 12]);
        e.change_request(ChangeRequest {
            ip: true,
            port: false,
        });
        client.send_to(&e.finish(), a1).unwrap();
        let mut buf = [0u8; 256];
        let (len, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, a2);
        let m = Message::parse(&buf[..len]).unwrap();
        assert_eq!(m.xor_mapped_address, Some(client.local_addr().unwrap()));
        server.stop();
    }
}
