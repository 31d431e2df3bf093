//! A STUN server host for the simulation: the real [`Responder`] on one simulated socket per
//! address, exactly as `lanparty-lite server --stun` runs it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Datagram, Node};
use crate::stun_server::Responder;

/// Answers Binding requests on `addrs` (addresses of its host).
pub struct StunHost {
    responder: Responder,
    outbox: VecDeque<Datagram>,
}

impl StunHost {
    /// A server answering on `addrs`.
    pub fn new(addrs: &[SocketAddr]) -> StunHost {
        StunHost {
            responder: Responder::new(addrs.to_vec()),
            outbox: VecDeque::new(),
        }
    }
}

impl Node for StunHost {
    fn handle_datagram(&mut self, datagram: Datagram, now: Instant) {
        let sockets = self.responder.sockets();
        let Some(on) = sockets.iter().position(|s| *s == datagram.dst) else {
            return;
        };
        if let Some(reply) = self
            .responder
            .handle(on, datagram.src, &datagram.payload, now)
        {
            self.outbox.push_back(Datagram {
                src: self.responder.sockets()[reply.socket],
                dst: reply.dst,
                payload: reply.payload,
            });
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<Datagram> {
        self.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}
