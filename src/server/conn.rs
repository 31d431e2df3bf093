//! One HTTP connection of the control server: bytes in, parsed requests out, a reply buffer,
//! and a parked long-poll. Owns no policy; the server loop decides.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::wire::http::{self, HttpError, Request, MAX_BODY_BYTES, MAX_HEAD_BYTES};

/// Buffers above this capacity are released once empty.
const KEEP_CAPACITY: usize = 4096;

/// A long-poll waiting for a roster change.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Party watched.
    pub party_id: String,
    /// Version the client has.
    pub since: u64,
    /// When to answer anyway.
    pub deadline: Instant,
    /// Keep the connection open after answering.
    pub keep_alive: bool,
}

/// A client connection.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Peer address, for rate limits.
    pub ip: IpAddr,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// A long-poll waiting for an answer; no further request is read meanwhile.
    pub parked: Option<Parked>,
    /// Close once the reply is written.
    pub closing: bool,
    /// Last time a request arrived or a reply left.
    pub active_at: Instant,
}

/// What came out of the input buffer.
pub enum Input {
    /// A complete request.
    Request(Request),
    /// Bytes that cannot be a request: answer the error and close.
    Invalid(HttpError),
    /// Nothing complete yet.
    Incomplete,
}

impl Conn {
    /// Wraps an accepted stream.
    pub fn new(stream: TcpStream, ip: IpAddr, now: Instant) -> Conn {
        Conn {
            stream,
            ip,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            parked: None,
            closing: false,
            active_at: now,
        }
    }

    /// Reads what the socket has. Returns `false` when the peer closed or failed.
    pub fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    if self.inbuf.len() > MAX_HEAD_BYTES + MAX_BODY_BYTES + 4096 {
                        // The parser will refuse it; stop reading.
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// The next request in the input buffer, if complete.
    pub fn next_request(&mut self) -> Input {
        if self.parked.is_some() || self.closing {
            return Input::Incomplete;
        }
        match http::parse_request(&self.inbuf) {
            Ok(Some((request, used))) => {
                self.inbuf.drain(..used);
                Input::Request(request)
            }
            Ok(None) => Input::Incomplete,
            Err(e) => Input::Invalid(e),
        }
    }

    /// Queues a reply.
    pub fn reply(&mut self, status: u16, body: &[u8], keep_alive: bool, now: Instant) {
        self.outbuf
            .extend_from_slice(&http::response(status, body, keep_alive));
        self.closing |= !keep_alive;
        self.active_at = now;
    }

    /// Whether replies are waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Drops queued replies (the store failed; they must not reach the client).
    pub fn discard_output(&mut self) {
        self.outbuf.clear();
    }

    /// Writes what the socket takes. Returns `false` on a write error.
    pub fn flush(&mut self) -> bool {
        // Idle connections (thousands of parked long-polls) keep no large buffers.
        if self.outbuf.is_empty() && self.outbuf.capacity() > KEEP_CAPACITY {
            self.outbuf = Vec::new();
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_CAPACITY {
            self.inbuf = Vec::new();
        }
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Whether the connection is finished: a closing reply fully written.
    pub fn done(&self) -> bool {
        self.closing && self.outbuf.is_empty()
    }
}
