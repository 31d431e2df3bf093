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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::{parse_request, MAX_RESPONSE_BODY_BYTES};
    use std::net::{Shutdown, TcpListener};
    use std::thread::{self, JoinHandle};

    /// What the test server does once it has answered.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Closes the connection.
        Close,
        /// Keeps it open until the client closes it.
        Hold,
    }

    /// A server on loopback that reads one request, writes `reply` and then acts as `after`
    /// says; the thread returns the request's raw bytes.
    fn serve_once(reply: Vec<u8>, after: After) -> (Origin, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while !matches!(parse_request(&request), Ok(Some(_)) | Err(_)) {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return request,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            // The client may give up before reading all of it (oversize replies).
            let _ = stream.write_all(&reply);
            if after == After::Hold {
                while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
            }
            let _ = stream.shutdown(Shutdown::Both);
            request
        });
        (Origin::parse(&url).unwrap(), server)
    }

    /// A server that accepts one connection and never answers (until the client closes).
    fn silent_server() -> (Origin, JoinHandle<Vec<u8>>) {
        serve_once(Vec::new(), After::Hold)
    }

    fn get(origin: &Origin, timeout: Duration) -> Result<Reply, ClientError> {
        request(origin, Method::Get, "/v1/info", None, b"", timeout)
    }

    const SECONDS_10: Duration = Duration::from_secs(10);

    #[test]
    fn a_post_sends_host_token_length_and_close_and_reads_status_and_body() {
        let (origin, server) = serve_once(
            b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n{\"id\":\"ab\"}".to_vec(),
            After::Close,
        );
        let reply = request(
            &origin,
            Method::Post,
            "/v1/parties?x=1",
            Some("tok"),
            b"{\"name\":\"n\"}",
            SECONDS_10,
        )
        .unwrap();
        assert_eq!(
            reply,
            Reply {
                status: 201,
                body: b"{\"id\":\"ab\"}".to_vec()
            }
        );
        let sent = server.join().unwrap();
        let (parsed, used) = parse_request(&sent).unwrap().unwrap();
        assert_eq!(used, sent.len());
        assert_eq!(parsed.method, crate::wire::http::Method::Post);
        assert_eq!(
            (parsed.path.as_str(), parsed.query.as_str()),
            ("/v1/parties", "x=1")
        );
        assert_eq!(parsed.bearer.as_deref(), Some("tok"));
        assert!(!parsed.keep_alive, "no Connection: close");
        assert_eq!(parsed.body, b"{\"name\":\"n\"}");
        let text = String::from_utf8(sent).unwrap();
        assert!(
            text.contains(&format!("\r\nHost: {}\r\n", origin.authority)),
            "{text}"
        );
        assert!(
            text.contains("\r\nContent-Type: application/json\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_get_and_a_delete_carry_no_body_and_error_statuses_come_back_as_replies() {
        let (origin, server) = serve_once(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 17\r\n\r\n{\"error\":\"gone\"}\n".to_vec(),
            After::Close,
        );
        let reply = request(
            &origin,
            Method::Delete,
            "/v1/x",
            None,
            b"ignored",
            SECONDS_10,
        );
        assert_eq!(reply.unwrap().status, 404);
        let sent = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(sent.starts_with("DELETE /v1/x HTTP/1.1\r\n"), "{sent}");
        assert!(!sent.contains("Content-Length") && !sent.contains("Authorization"));
        assert!(sent.ends_with("\r\n\r\n"), "{sent}");
    }

    #[test]
    fn a_complete_reply_is_returned_while_the_server_keeps_the_connection_open() {
        let (origin, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            After::Hold,
        );
        let reply = get(&origin, SECONDS_10).unwrap();
        assert_eq!((reply.status, reply.body), (200, b"{}".to_vec()));
        server.join().unwrap();
    }

    #[test]
    fn a_reply_without_length_ends_where_the_server_closes() {
        let (origin, server) =
            serve_once(b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}".to_vec(), After::Close);
        assert_eq!(get(&origin, SECONDS_10).unwrap().body, b"{\"a\":1}");
        server.join().unwrap();
    }

    #[test]
    fn a_closed_port_is_connection_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = get(&Origin::parse(&url).unwrap(), SECONDS_10).unwrap_err();
        assert!(matches!(err, ClientError::Io(_)), "{err:?}");
        assert!(err.to_string().contains("Connection refused"), "{err}");
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let (origin, server) = silent_server();
        let err = get(&origin, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    what: "waiting for the response",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "timed out waiting for the response (after 300ms)"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_reply_cut_short_by_the_close_is_truncated() {
        let (origin, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}".to_vec(),
            After::Close,
        );
        let err = get(&origin, SECONDS_10).unwrap_err();
        assert!(
            matches!(err, ClientError::Response(ResponseError::Truncated)),
            "{err:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn malformed_and_chunked_replies_are_refused_with_a_reason() {
        for (reply, expected, text) in [
            (
                &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
                ResponseError::Malformed,
                "malformed HTTP response",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                ResponseError::Chunked,
                "chunked",
            ),
        ] {
            let (origin, server) = serve_once(reply.to_vec(), After::Close);
            let err = get(&origin, SECONDS_10).unwrap_err();
            assert!(
                matches!(err, ClientError::Response(e) if e == expected),
                "{err:?}"
            );
            assert!(err.to_string().contains(text), "{err}");
            server.join().unwrap();
        }
    }

    #[test]
    fn replies_over_4_mib_are_refused_whether_announced_or_not() {
        let announced = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE_BODY_BYTES + 1
        );
        let mut unannounced = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        unannounced.resize(unannounced.len() + MAX_RESPONSE_BODY_BYTES + 1, b' ');
        for reply in [announced.into_bytes(), unannounced] {
            let (origin, server) = serve_once(reply, After::Close);
            let err = get(&origin, SECONDS_10).unwrap_err();
            assert!(
                matches!(err, ClientError::Response(ResponseError::BodyTooLarge)),
                "{err:?}"
            );
            server.join().unwrap();
        }
        // Exactly the limit is fine.
        let mut at_limit =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {MAX_RESPONSE_BODY_BYTES}\r\n\r\n")
                .into_bytes();
        at_limit.resize(at_limit.len() + MAX_RESPONSE_BODY_BYTES, b' ');
        let (origin, server) = serve_once(at_limit, After::Close);
        assert_eq!(
            get(&origin, SECONDS_10).unwrap().body.len(),
            MAX_RESPONSE_BODY_BYTES
        );
        server.join().unwrap();
    }

    #[test]
    fn a_token_or_path_that_would_split_the_request_is_not_sent() {
        let origin = Origin::parse("http://127.0.0.1:9").unwrap();
        let bad_token = request(
            &origin,
            Method::Get,
            "/v1/info",
            Some("t\r\nX-Evil: 1"),
            b"",
            SECONDS_10,
        );
        assert!(matches!(bad_token, Err(ClientError::BadRequest(_))));
        let bad_path = request(&origin, Method::Get, "/a b", None, b"", SECONDS_10);
        assert!(matches!(bad_path, Err(ClientError::BadRequest(_))));
    }

    #[test]
    fn origins_fill_in_port_80_and_keep_what_the_host_header_needs() {
        let o = |url: &str| Origin::parse(url).map(|o| (o.authority, o.target));
        let pair = |a: &str, t: &str| (a.to_string(), t.to_string());
        assert_eq!(
            o("http://h.example:8080").unwrap(),
            pair("h.example:8080", "h.example:8080")
        );
        assert_eq!(
            o("http://h.example/").unwrap(),
            pair("h.example", "h.example:80")
        );
        assert_eq!(
            o("http://[::1]:7000").unwrap(),
            pair("[::1]:7000", "[::1]:7000")
        );
        assert_eq!(o("http://[::1]").unwrap(), pair("[::1]", "[::1]:80"));
        for bad in [
            "https://h",
            "http://",
            "http://h/path",
            "http://u@h",
            "ftp://h",
        ] {
            assert!(o(bad).is_err(), "{bad}");
        }
    }
}
