//! `--metrics ADDR:PORT`: a thread answering `GET /metrics` over plain HTTP/1.1, one
//! connection at a time, blocking, one request per connection. It leaves the numbers to a
//! closure (the daemon's asks the data plane for a snapshot and renders it with
//! [`super::metrics::render`]) and the request syntax to [`crate::wire::http`].
//!
//! A slow client holds the endpoint for at most [`REQUEST_DEADLINE`] to send its request and
//! `WRITE_TIMEOUT` to read the answer; that is fine for a
//! scraper every few seconds, and the data plane never waits on it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::metrics::CONTENT_TYPE;
use crate::failure::Failure;
use crate::wire::http::{self, HttpError, Method, Request, MAX_BODY_BYTES, MAX_HEAD_BYTES};

/// The only path served.
pub const PATH: &str = "/metrics";
/// The whole request must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Writing the response may take this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics address; a failure is the user's configuration error (exit 3).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr)
        .map_err(|e| Failure::Input(format!("--metrics {addr}: cannot listen: {e}")))
}

/// Serves `listener` from a thread of its own; `metrics` renders the current metrics, or
/// `None` when they cannot be had (503).
pub fn serve(
    listener: TcpListener,
    metrics: impl Fn() -> Option<String> + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &metrics) {
                            log::debug!("metrics: {e}");
                        }
                    }
                    Err(e) => log::debug!("metrics: accept: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// Reads one request (bounded in size and time), writes one response, closes.
fn answer(mut stream: TcpStream, metrics: &impl Fn() -> Option<String>) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let request = loop {
        match http::parse_request(&buf) {
            Ok(Some((request, _))) => break Ok(request),
            Err(e) => break Err(e),
            Ok(None) => {}
        }
        if buf.len() > MAX_HEAD_BYTES + MAX_BODY_BYTES {
            break Err(HttpError::BodyTooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break Err(HttpError::Malformed),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    write_before(
        &mut stream,
        &respond(request, metrics),
        Instant::now() + WRITE_TIMEOUT,
    )
}

/// Writes all of `bytes` before `deadline`, however slowly the client reads: each write
/// waits only for the time left.
fn write_before(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client reads too slowly",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => bytes = &bytes[n..],
        }
    }
    stream.flush()
}

fn text(status: u16, body: &str) -> Vec<u8> {
    http::response_typed(status, "text/plain; charset=utf-8", body.as_bytes(), false)
}

/// The response to one parsed request.
fn respond(request: Result<Request, HttpError>, metrics: &impl Fn() -> Option<String>) -> Vec<u8> {
    match request {
        Err(e) => {
            let (status, message) = e.status();
            text(status, &format!("{message}\n"))
        }
        Ok(r) if r.path != PATH => text(404, "not found: the metrics are at /metrics\n"),
        Ok(r) if r.method != Method::Get => text(405, "method not allowed: use GET\n"),
        Ok(_) => match metrics() {
            Some(body) => http::response_typed(200, CONTENT_TYPE, body.as_bytes(), false),
            None => text(503, "the data plane is not responding\n"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics endpoint on a free loopback port, rendering `body` (or 503 on `None`).
    fn endpoint(body: Option<&'static str>) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, move || body.map(String::from)).unwrap();
        addr
    }

    /// Sends `request` and returns everything the server answered before closing.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    #[test]
    fn get_metrics_answers_the_exposition_format_with_its_content_type() {
        let addr = endpoint(Some("lanparty_peers 2\n"));
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert!(
            response.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"),
            "{response}"
        );
        assert!(
            response.contains("\r\nContent-Length: 17\r\n"),
            "{response}"
        );
        assert!(
            response.ends_with("\r\n\r\nlanparty_peers 2\n"),
            "{response}"
        );
        // One connection at a time, but every connection gets its answer.
        let again = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert_eq!(status_line(&again), "HTTP/1.1 200 OK");
    }

    #[test]
    fn other_paths_methods_and_garbage_get_4xx_with_a_reason() {
        let addr = endpoint(Some("x 1\n"));
        for (request, status, reason) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found", "/metrics"),
            (
                b"GET /metricsx HTTP/1.1\r\n\r\n",
                "404 Not Found",
                "/metrics",
            ),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "405 Method Not Allowed",
                "GET",
            ),
            (
                b"PUT /metrics HTTP/1.1\r\n\r\n",
                "405 Method Not Allowed",
                "method",
            ),
            (
                b"\x16\x03\x01\x00\xa5garbage\r\n\r\n",
                "400 Bad Request",
                "malformed",
            ),
            (b"hello", "400 Bad Request", "malformed"),
            (
                b"GET /metrics HTTP/2.0\r\n\r\n",
                "505 HTTP Version Not Supported",
                "HTTP/1.1",
            ),
        ] {
            let response = exchange(addr, request);
            assert_eq!(
                status_line(&response),
                format!("HTTP/1.1 {status}"),
                "{}",
                String::from_utf8_lossy(request)
            );
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            assert!(body.contains(reason), "{status}: {body:?}");
            assert!(!body.contains("x 1"), "no metrics on an error");
        }
    }

    #[test]
    fn an_oversized_request_is_refused_without_reading_it_all() {
        let addr = endpoint(Some("x 1\n"));
        let mut request = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        request.resize(MAX_HEAD_BYTES + 100, b'a');
        let response = exchange(addr, &request);
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[test]
    fn no_snapshot_is_503_and_a_taken_port_is_a_configuration_error() {
        let addr = endpoint(None);
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
        assert!(response.ends_with("the data plane is not responding\n"));
        let taken = bind(addr).unwrap_err();
        assert_eq!(taken.exit_code(), 3);
        assert!(
            taken
                .to_string()
                .starts_with(&format!("--metrics {addr}: cannot listen: ")),
            "{taken}"
        );
    }
}
