//! The subset of HTTP/1.1 (RFC 9112) the control plane speaks. For the server: one request
//! parsed from a byte buffer, one response serialised. For the `http://` client: one response
//! parsed from a byte buffer ([`parse_response`]). No chunked bodies, no continuation lines, no
//! pipelining beyond "parse the next request once this one is answered". Pure: no I/O; the
//! caller reads the socket, keeps the buffer and says when the peer has closed.

use std::fmt;

/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 48;

/// Request methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path without the query, e.g. `/v1/parties/abc/roster`.
    pub path: String,
    /// Query string without `?` (empty if none).
    pub query: String,
    /// `Authorization: Bearer …` token, if given.
    pub bearer: Option<String>,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
    /// Body bytes (`Content-Length` long).
    pub body: Vec<u8>,
}

/// Why bytes are not an acceptable request. Each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request line or header (400).
    Malformed,
    /// Method other than GET, POST, DELETE (405).
    MethodNotAllowed,
    /// HTTP version other than 1.0/1.1 (505).
    Version,
    /// Head larger than [`MAX_HEAD_BYTES`] or too many headers (431).
    HeadTooLarge,
    /// Body larger than [`MAX_BODY_BYTES`] (413).
    BodyTooLarge,
    /// `Transfer-Encoding` bodies are not supported (411: send Content-Length).
    LengthRequired,
}

impl HttpError {
    /// Status code and a message a person can read.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            HttpError::Malformed => (400, "malformed HTTP request"),
            HttpError::MethodNotAllowed => (405, "method not allowed"),
            HttpError::Version => (505, "only HTTP/1.0 and HTTP/1.1 are supported"),
            HttpError::HeadTooLarge => (431, "request head too large"),
            HttpError::BodyTooLarge => (413, "request body too large (at most 16384 bytes)"),
            HttpError::LengthRequired => (411, "send the body with Content-Length"),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status().1)
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses one request from the start of `buf`. `Ok(None)`: need more bytes. `Ok(Some((r, n)))`:
/// a request that used the first `n` bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(head_len) = find_head_end(buf) else {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_len - 4]).map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(HttpError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(HttpError::MethodNotAllowed)
        }
        _ => return Err(HttpError::Malformed),
    };
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(HttpError::Version),
        _ => return Err(HttpError::Malformed),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::Malformed);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut content_length: Option<usize> = None;
    let mut bearer = None;
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(HttpError::Malformed);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| HttpError::Malformed)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::Malformed);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            if let Some((scheme, token)) = value.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") {
                    bearer = Some(token.trim().to_string());
                }
            }
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    let request = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        bearer,
        keep_alive,
        body: buf[head_len..head_len + body_len].to_vec(),
    };
    Ok(Some((request, head_len + body_len)))
}

/// Value of `key` in a query string like `since=5&x=y` (no percent-decoding: our keys and
/// values are plain).
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

/// Serialises a JSON response.
pub fn response(status: u16, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response_typed(status, "application/json", body, keep_alive)
}

/// Serialises a response whose body is `content_type`.
pub fn response_typed(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Largest response body the client reads (the biggest reply, a full party's roster, is far
/// smaller).
pub const MAX_RESPONSE_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A complete response, borrowed from the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseView<'a> {
    /// Status code of the final response (interim 1xx responses before it are skipped).
    pub status: u16,
    /// Body bytes.
    pub body: &'a [u8],
    /// Bytes of the buffer the response (with any interim responses before it) used.
    pub len: usize,
}

/// Why bytes are not an acceptable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Malformed status line or header.
    Malformed,
    /// HTTP version other than 1.0/1.1.
    Version,
    /// Head larger than [`MAX_HEAD_BYTES`] or too many headers.
    HeadTooLarge,
    /// Body larger than [`MAX_RESPONSE_BODY_BYTES`].
    BodyTooLarge,
    /// A `Transfer-Encoding` (chunked) body: our server never sends one.
    Chunked,
    /// The connection closed before the response was complete.
    Truncated,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseError::Malformed => "malformed HTTP response",
            ResponseError::Version => "not an HTTP/1.0 or HTTP/1.1 response",
            ResponseError::HeadTooLarge => "response head too large",
            ResponseError::BodyTooLarge => "response body larger than 4 MiB",
            ResponseError::Chunked => {
                "chunked (Transfer-Encoding) responses are not supported: not a lanparty-lite server?"
            }
            ResponseError::Truncated => "connection closed before the response was complete",
        })
    }
}

/// Status line `HTTP/1.x NNN reason` (RFC 9112 §4): the status code.
fn parse_status_line(line: &str) -> Result<u16, ResponseError> {
    let (version, rest) = line.split_once(' ').ok_or(ResponseError::Malformed)?;
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(ResponseError::Version),
        _ => return Err(ResponseError::Malformed),
    }
    // The reason phrase is optional, and so (leniently) is the space before an empty one.
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
        || reason.bytes().any(|b| b.is_ascii_control() && b != b'\t')
    {
        return Err(ResponseError::Malformed);
    }
    let status: u16 = code.parse().map_err(|_| ResponseError::Malformed)?;
    if !(100..600).contains(&status) {
        return Err(ResponseError::Malformed);
    }
    Ok(status)
}

/// A response head: status, and the body length if `Content-Length` gives one.
fn parse_response_head(head: &str) -> Result<(u16, Option<usize>), ResponseError> {
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().ok_or(ResponseError::Malformed)?)?;
    let mut content_length: Option<usize> = None;
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(ResponseError::HeadTooLarge);
        }
        // No whitespace before the colon, no obsolete line folding (RFC 9112 §5.1, §5.2).
        let (name, value) = line.split_once(':').ok_or(ResponseError::Malformed)?;
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            || value.bytes().any(|b| b.is_ascii_control() && b != b'\t')
        {
            return Err(ResponseError::Malformed);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ResponseError::Malformed);
            }
            // Too many digits for usize is certainly too large.
            let n: usize = value.parse().map_err(|_| ResponseError::BodyTooLarge)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(ResponseError::Malformed);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ResponseError::Chunked);
        }
    }
    Ok((status, content_length))
}

/// Parses the response to one request from the start of `buf`; `closed`: the server has
/// closed the connection, so no more bytes will come. Interim (1xx) responses are skipped. A
/// body without `Content-Length` runs to the close (RFC 9112 §6.3); 204 and 304 have none.
/// `Ok(None)`: need more bytes.
pub fn parse_response(buf: &[u8], closed: bool) -> Result<Option<ResponseView<'_>>, ResponseError> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let Some(head_len) = find_head_end(rest) else {
            return if rest.len() > MAX_HEAD_BYTES {
                Err(ResponseError::HeadTooLarge)
            } else if closed {
                Err(ResponseError::Truncated)
            } else {
                Ok(None)
            };
        };
        if head_len > MAX_HEAD_BYTES {
            return Err(ResponseError::HeadTooLarge);
        }
        let head =
            std::str::from_utf8(&rest[..head_len - 4]).map_err(|_| ResponseError::Malformed)?;
        let (status, content_length) = parse_response_head(head)?;
        if status < 200 {
            // RFC 9110 §15.2: a client must be able to skip 1xx responses (they have no body).
            start += head_len;
            continue;
        }
        let after_head = &rest[head_len..];
        let body_len = match content_length {
            _ if status == 204 || status == 304 => 0,
            Some(n) if n > MAX_RESPONSE_BODY_BYTES => return Err(ResponseError::BodyTooLarge),
            Some(n) if after_head.len() >= n => n,
            Some(_) if closed => return Err(ResponseError::Truncated),
            Some(_) => return Ok(None),
            None if after_head.len() > MAX_RESPONSE_BODY_BYTES => {
                return Err(ResponseError::BodyTooLarge)
            }
            None if closed => after_head.len(),
            None => return Ok(None),
        };
        return Ok(Some(ResponseView {
            status,
            body: &after_head[..body_len],
            len: start + head_len + body_len,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_post_with_body_and_bearer() {
        let raw = b"POST /v1/parties/abc/heartbeat?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok\r\nContent-Length: 2\r\n\r\n{}rest";
        let (r, n) = parse_request(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 4);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/v1/parties/abc/heartbeat");
        assert_eq!(r.query, "x=1");
        assert_eq!(r.bearer.as_deref(), Some("tok"));
        assert!(r.keep_alive);
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn waits_for_the_whole_head_and_body() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n"), Ok(None));
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Ok(None)
        );
    }

    #[test]
    fn rejects_what_we_do_not_speak() {
        let e = |raw: &[u8]| parse_request(raw).unwrap_err();
        assert_eq!(e(b"PUT / HTTP/1.1\r\n\r\n"), HttpError::MethodNotAllowed);
        assert_eq!(e(b"GET / HTTP/2.0\r\n\r\n"), HttpError::Version);
        assert_eq!(e(b"GET  / HTTP/1.1\r\n\r\n"), HttpError::Malformed);
        assert_eq!(e(b"GET x HTTP/1.1\r\n\r\n"), HttpError::Malformed);
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
            HttpError::Malformed
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::LengthRequired
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::Malformed
        );
        assert_eq!(e(&vec![b'a'; MAX_HEAD_BYTES + 1]), HttpError::HeadTooLarge);
    }

    #[test]
    fn connection_header_and_version_decide_keep_alive() {
        let ka = |raw: &[u8]| parse_request(raw).unwrap().unwrap().0.keep_alive;
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn query_params_and_responses() {
        assert_eq!(query_param("since=7&a=b", "since"), Some("7"));
        assert_eq!(query_param("a=b", "since"), None);
        let r = response(404, b"{}", false);
        assert!(r.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(r.ends_with(b"Connection: close\r\n\r\n{}"));
    }

    #[test]
    fn parses_a_response_with_a_content_length_body() {
        let raw = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}extra";
        let r = parse_response(raw, false).unwrap().unwrap();
        assert_eq!((r.status, r.body, r.len), (201, &b"{}"[..], raw.len() - 5));
        assert_eq!(parse_response(&raw[..raw.len() - 6], false), Ok(None));
        assert_eq!(
            parse_response(&raw[..raw.len() - 6], true),
            Err(ResponseError::Truncated)
        );
    }

    #[test]
    fn a_response_without_length_ends_at_the_close_and_interim_ones_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(parse_response(raw, false), Ok(None));
        let r = parse_response(raw, true).unwrap().unwrap();
        assert_eq!((r.status, r.body), (404, &b"{\"error\":\"x\"}"[..]));
        let empty = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!(empty.unwrap().unwrap().body, b"");
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n", true),
            Err(ResponseError::Truncated)
        );
    }

    #[test]
    fn rejects_responses_we_do_not_read() {
        let e = |raw: &[u8]| parse_response(raw, true).unwrap_err();
        assert_eq!(e(b"HTTP/2 200 OK\r\n\r\n"), ResponseError::Version);
        assert_eq!(e(b"SSH-2.0-OpenSSH\r\n\r\n"), ResponseError::Malformed);
        assert_eq!(e(b"HTTP/1.1 20 OK\r\n\r\n"), ResponseError::Malformed);
        assert_eq!(e(b"HTTP/1.1 2000 OK\r\n\r\n"), ResponseError::Malformed);
        assert_eq!(e(b"HTTP/1.1 700 What\r\n\r\n"), ResponseError::Malformed);
        assert_eq!(e(b"HTTP/1.1  200 OK\r\n\r\n"), ResponseError::Malformed);
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n"),
            ResponseError::Malformed
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\n folded\r\n\r\n"),
            ResponseError::Malformed
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nX: a\nb\r\n\r\n"),
            ResponseError::Malformed
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}"),
            ResponseError::Malformed
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
            ResponseError::Malformed
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            ResponseError::Chunked
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length: 4194305\r\n\r\n"),
            ResponseError::BodyTooLarge
        );
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            ResponseError::BodyTooLarge
        );
        assert_eq!(
            e(&vec![b'a'; MAX_HEAD_BYTES + 1]),
            ResponseError::HeadTooLarge
        );
        let mut unbounded = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        unbounded.resize(unbounded.len() + MAX_RESPONSE_BODY_BYTES + 1, b' ');
        assert_eq!(
            parse_response(&unbounded, false),
            Err(ResponseError::BodyTooLarge)
        );
    }
}
