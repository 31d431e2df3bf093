//! A small blocking HTTP/1.1 client for `http://` control URLs: one request per TCP connection
//! (`Connection: close`), `Content-Length` bodies, an overall deadline that bounds resolving,
//! connecting, writing and reading alike. Responses are parsed by `wire::http::parse_response`
//! (at most 4 MiB, no chunked bodies). `https://` is left to the caller (ureq with rustls).
//!
//! Host names are resolved with `std::net::ToSocketAddrs` (the system resolver, which the
//! deadline cannot interrupt); each resolved address is tried in turn until one connects.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::wire::http::{self, ResponseError};

/// Longest time spent connecting to one address (the overall deadline may be sooner).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Request methods the control API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST (with a JSON body).
    Post,
    /// DELETE.
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// A final response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body bytes (at most `wire::http::MAX_RESPONSE_BODY_BYTES`).
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum ClientError {
    /// The URL is not `http://host[:port][/]`, or the path or token would break the request.
    BadRequest(&'static str),
    /// The host name did not resolve (or resolved to nothing).
    Resolve(io::Error),
    /// Connecting, writing or reading failed.
    Io(io::Error),
    /// The deadline passed (`what`: connecting, or waiting for the response).
    Timeout {
        /// The step that ran out of time.
        what: &'static str,
        /// The timeout the caller gave.
        after: Duration,
    },
    /// The server's bytes are not a response we read.
    Response(ResponseError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadRequest(why) => f.write_str(why),
            ClientError::Resolve(e) => write!(f, "cannot resolve the host name: {e}"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Timeout { what, after } => {
                write!(f, "timed out {what} (after {after:?})")
            }
            ClientError::Response(e) => write!(f, "{e}"),
        }
    }
}

/// The `host[:port]` of an `http://` URL and the address string to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// `host:port` with the default port 80 filled in, for `ToSocketAddrs`.
    target: String,
}

impl Origin {
    /// Parses `http://host[:port]` with at most a trailing slash (no path, no user info).
    pub fn parse(url: &str) -> Result<Origin, ClientError> {
        let bad = ClientError::BadRequest("not an http://host:port URL");
        let rest = url.strip_prefix("http://").ok_or(bad)?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let ok_byte = |b: u8| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b);
        if authority.is_empty() || !authority.bytes().all(ok_byte) {
            return Err(ClientError::BadRequest("not an http://host:port URL"));
        }
        // A port follows the last colon, unless that colon is inside an IPv6 literal.
        let has_port = match authority.rsplit_once(':') {
            Some((host, port)) => {
                (!host.contains(':') || host.ends_with(']')) && port.parse::<u16>().is_ok()
            }
            None => false,
        };
        let target = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Origin {
            authority: authority.to_string(),
            target,
        })
    }
}

/// The request's bytes: `method path`, `Host`, `Connection: close`, the bearer token and a
/// JSON body (POST only) with its `Content-Length`.
fn request_bytes(
    origin: &Origin,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, ClientError> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ClientError::BadRequest(
            "request path with unsafe characters",
        ));
    }
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n",
        method.as_str(),
        origin.authority
    );
    if let Some(token) = bearer {
        if token.bytes().any(|b| b.is_ascii_control()) {
            return Err(ClientError::BadRequest("token with control characters"));
        }
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if method == Method::Post {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if method == Method::Post {
        bytes.extend_from_slice(body);
    }
    Ok(bytes)
}

/// Time left before `deadline`, or `None` once it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Connects to the first of `addrs` that answers within the deadline.
fn connect(
    addrs: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let mut last = timed_out("connecting", timeout);
    for addr in addrs {
        let Some(left) = remaining(deadline) else {
            return Err(timed_out("connecting", timeout));
        };
        match TcpStream::connect_timeout(addr, left.min(CONNECT_TIMEOUT)) {
            Ok(stream) => return Ok(stream),
            Err(e) if is_timeout(&e) => last = timed_out("connecting", timeout),
            Err(e) => last = ClientError::Io(e),
        }
    }
    Err(last)
}

fn timed_out(what: &'static str, after: Duration) -> ClientError {
    ClientError::Timeout { what, after }
}

/// Sends one request to `origin` and reads its response, all within `timeout`.
pub fn request(
    origin: &Origin,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let deadline = Instant::now() + timeout;
    let bytes = request_bytes(origin, method, path, bearer, body)?;
    let addrs: Vec<SocketAddr> = origin
        .target
        .to_socket_addrs()
        .map_err(ClientError::Resolve)?
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses",
        )));
    }
    let mut stream = connect(&addrs, deadline, timeout)?;
    let _ = stream.set_nodelay(true);
    const WAITING: &str = "waiting for the response";
    let left = remaining(deadline).ok_or_else(|| timed_out(WAITING, timeout))?;
    stream
        .set_write_timeout(Some(left))
        .map_err(ClientError::Io)?;
    stream.write_all(&bytes).map_err(|e| io_error(e, timeout))?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = remaining(deadline).ok_or_else(|| timed_out(WAITING, timeout))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(ClientError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e, timeout)),
        };
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_response(&buf, n == 0) {
            Ok(Some(reply)) => {
                return Ok(Reply {
                    status: reply.status,
                    body: reply.body.to_vec(),
                })
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::Response(e)),
        }
    }
}

fn io_error(e: io::Error, timeout: Duration) -> ClientError {
    if is_timeout(&e) {
        timed_out("waiting for the response", timeout)
    } else {
        ClientError::Io(e)
    }
}
