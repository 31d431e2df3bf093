//! Load generator for the control server (`lanparty-lite server`), on loopback only.
//!
//! Simulated members (default 2000, in parties of 20) against one server:
//!
//! 1. **setup**: creates the parties (`POST /v1/parties`);
//! 2. **join**: `GET /v1/info` once, then per member `POST …/challenge` and `POST …/members`
//!    with a proof from [`proof::sign`] and a fresh key, from a pool of worker threads with
//!    keep-alive connections;
//! 3. **baseline** (optional, default 5 s): heartbeats and a trickle of new joins, no long-polls
//!    parked, so the cost of parked connections shows up by comparison;
//! 4. **measured** (default 20 s): every member holds a roster long-poll
//!    (`GET …/roster?since=V`, one thread with a 64 KiB stack per member, re-issued when
//!    answered) while the members heartbeat at an accelerated rate and new members trickle in,
//!    which wakes the long-polls of their party. "Roster propagation" is the time from sending
//!    a join to each other member's long-poll returning the roster that holds the new member.
//!
//! Prints a table (count, errors, requests/s, p50/p99/max latency per request type) and writes
//! JSON. With `--server-pid` it also reads the server's CPU time and memory from /proc per
//! phase. Driven by `scripts/bench-control.sh`; run by hand:
//!
//! ```text
//! lanparty-lite server --listen 127.0.0.1:7000 --state-dir /tmp/s --rate-limit 0 \
//!     --max-parties 1000 --max-peers 64 &
//! cargo run --release --example control_load -- --server 127.0.0.1:7000 --server-pid $!
//! ```
//!
//! The server must run with `--rate-limit 0` (every simulated member comes from 127.0.0.1),
//! `--max-parties` ≥ members / party size and `--max-peers` ≥ `--party-max-peers`.
//! Needs about members + workers + 20 file descriptors (the server as many).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lanparty_lite::control::http_api::{
    ChallengeReply, ChallengeRequest, CreatePartyReply, CreatePartyRequest, ErrorReply,
    HeartbeatBody, Info, JoinBody, JoinReply, TokenReply,
};
use lanparty_lite::control::{proof, Roster};
use lanparty_lite::identity::Key;
use lanparty_lite::random;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use x25519_dalek::{PublicKey, StaticSecret};

const USAGE: &str = "\
usage: control_load --server ADDR:PORT [options]
  --members N          simulated members (default 2000)
  --party-size N       members per party (default 20)
  --party-max-peers N  max_peers of each created party (default 64)
  --seconds S          measured period with long-polls (default 20)
  --baseline-seconds S heartbeats + joins without long-polls first (default 5; 0: skip)
  --heartbeat-s S      each member heartbeats every S seconds (default 2)
  --joins-per-s R      trickle of new joins during baseline and measured period (default 10)
  --workers N          threads with keep-alive connections for joins/heartbeats (default 16)
  --server-pid PID     read the server's CPU time and memory from /proc per phase
  --json PATH          write the results as JSON to PATH";

/// Stack of each long-poll thread (thousands of them).
const POLL_STACK: usize = 64 * 1024;
/// Stack of the worker threads (JSON, proofs, formatting).
const WORKER_STACK: usize = 256 * 1024;
/// Connect timeout and read timeout of ordinary requests.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Read timeout of long-polls (the server holds them up to 25 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// Largest response accepted.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Distinct error messages kept per request type.
const KEPT_ERRORS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Options {
    server: SocketAddr,
    members: usize,
    party_size: usize,
    party_max_peers: u32,
    seconds: f64,
    baseline_seconds: f64,
    heartbeat_s: f64,
    joins_per_s: f64,
    workers: usize,
    server_pid: Option<u32>,
    json: Option<String>,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut server = None;
    let mut o = Options {
        server: SocketAddr::from(([127, 0, 0, 1], 0)),
        members: 2000,
        party_size: 20,
        party_max_peers: 64,
        seconds: 20.0,
        baseline_seconds: 5.0,
        heartbeat_s: 2.0,
        joins_per_s: 10.0,
        workers: 16,
        server_pid: None,
        json: None,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: not a valid number: {v:?}"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--server" => {
                let v = args.next().ok_or("--server needs ADDR:PORT")?;
                let addr: SocketAddr = v
                    .parse()
                    .map_err(|_| format!("--server: not an address: {v:?}"))?;
                if !addr.ip().is_loopback() {
                    return Err("--server must be a loopback address (this is a load test)".into());
                }
                server = Some(addr);
            }
            "--members" => o.members = num(&arg, args.next())?,
            "--party-size" => o.party_size = num(&arg, args.next())?,
            "--party-max-peers" => o.party_max_peers = num(&arg, args.next())?,
            "--seconds" => o.seconds = num(&arg, args.next())?,
            "--baseline-seconds" => o.baseline_seconds = num(&arg, args.next())?,
            "--heartbeat-s" => o.heartbeat_s = num(&arg, args.next())?,
            "--joins-per-s" => o.joins_per_s = num(&arg, args.next())?,
            "--workers" => o.workers = num(&arg, args.next())?,
            "--server-pid" => o.server_pid = Some(num(&arg, args.next())?),
            "--json" => o.json = Some(args.next().ok_or("--json needs a path")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    o.server = server.ok_or("--server ADDR:PORT is required")?;
    if o.members == 0 || o.party_size == 0 || o.workers == 0 {
        return Err("--members, --party-size and --workers must be at least 1".into());
    }
    if o.party_size as u64 > u64::from(o.party_max_peers) {
        return Err("--party-size must not exceed --party-max-peers".into());
    }
    for (name, v) in [("--seconds", o.seconds), ("--heartbeat-s", o.heartbeat_s)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} must be positive"));
        }
    }
    for (name, v) in [
        ("--baseline-seconds", o.baseline_seconds),
        ("--joins-per-s", o.joins_per_s),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{name} must not be negative"));
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one keep-alive connection, Content-Length bodies
// ---------------------------------------------------------------------------------------------

/// Streams of the long-poll connections, shut down at the end to unblock their readers.
#[derive(Default)]
struct Sockets {
    closed: bool,
    streams: Vec<TcpStream>,
}

impl Sockets {
    fn add(&mut self, stream: &TcpStream) {
        if self.closed {
            let _ = stream.shutdown(Shutdown::Both);
        } else if let Ok(clone) = stream.try_clone() {
            self.streams.push(clone);
        }
    }

    fn close_all(&mut self) {
        self.closed = true;
        for s in self.streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("unexpected reply body: {e}"))
    }

    /// The server's `{"error"}` message, or the status.
    fn error(&self) -> String {
        match serde_json::from_slice::<ErrorReply>(&self.body) {
            Ok(e) => format!("HTTP {}: {}", self.status, e.error),
            Err(_) => format!("HTTP {}", self.status),
        }
    }
}

struct Http {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    sockets: Option<Arc<Mutex<Sockets>>>,
    /// Connections opened (1 = keep-alive held throughout).
    connects: u64,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Http {
    fn new(addr: SocketAddr, timeout: Duration) -> Http {
        Http {
            addr,
            timeout,
            stream: None,
            buf: Vec::with_capacity(8192),
            sockets: None,
            connects: 0,
        }
    }

    fn connect(&mut self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, CALL_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        if let Some(sockets) = &self.sockets {
            sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&stream);
        }
        self.connects += 1;
        self.buf.clear();
        Ok(stream)
    }

    /// One request and its response. The connection is kept unless the server closes it or
    /// something fails (the next request then reconnects).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut head = String::with_capacity(256);
        let _ = write!(head, "{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(token) = token {
            let _ = write!(head, "Authorization: Bearer {token}\r\n");
        }
        if let Some(body) = body {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());

        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect()?,
        };
        stream.write_all(&bytes)?;
        let (response, keep) = self.read_response(&mut stream)?;
        if keep {
            self.stream = Some(stream);
        }
        Ok(response)
    }

    fn read_response(&mut self, stream: &mut TcpStream) -> io::Result<(Response, bool)> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("response head too large"));
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed status line"))?;
        let (mut length, mut keep) = (0usize, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| bad("bad Content-Length"))?;
            } else if name.eq_ignore_ascii_case("connection") {
                keep = !value.eq_ignore_ascii_case("close");
            }
        }
        if length > MAX_RESPONSE {
            return Err(bad("response body too large"));
        }
        while self.buf.len() < head_end + length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok((Response { status, body }, keep))
    }

    fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&impl Serialize>,
    ) -> io::Result<Response> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("serialisable"));
        self.request(method, path, token, bytes.as_deref())
    }
}

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Series {
    /// Latencies of successful requests, microseconds.
    micros: Vec<u64>,
    errors: u64,
    /// Failures by status ("io" for transport errors).
    error_kinds: BTreeMap<String, u64>,
    messages: Vec<String>,
}

impl Series {
    fn merge(&mut self, other: Series) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        for m in other.messages {
            if self.messages.len() < KEPT_ERRORS && !self.messages.contains(&m) {
                self.messages.push(m);
            }
        }
    }
}

/// Samples of one thread or phase, by request type.
#[derive(Default, Clone)]
struct Samples(BTreeMap<&'static str, Series>);

impl Samples {
    fn ok(&mut self, kind: &'static str, took: Duration) {
        self.0
            .entry(kind)
            .or_default()
            .micros
            .push(took.as_micros() as u64);
    }

    fn error(&mut self, kind: &'static str, class: &str, message: String) {
        let s = self.0.entry(kind).or_default();
        s.errors += 1;
        *s.error_kinds.entry(class.to_string()).or_default() += 1;
        if s.messages.len() < KEPT_ERRORS && !s.messages.contains(&message) {
            s.messages.push(message);
        }
    }

    /// Records the outcome of a request and returns the response if it was a success.
    fn record(
        &mut self,
        kind: &'static str,
        started: Instant,
        result: io::Result<Response>,
    ) -> Option<Response> {
        match result {
            Ok(r) if (200..300).contains(&r.status) => {
                self.ok(kind, started.elapsed());
                Some(r)
            }
            Ok(r) => {
                self.error(kind, &r.status.to_string(), r.error());
                None
            }
            Err(e) => {
                self.error(kind, "io", format!("transport: {e}"));
                None
            }
        }
    }

    fn merge(&mut self, other: Samples) {
        for (k, v) in other.0 {
            self.0.entry(k).or_default().merge(v);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0)
}

/// One row of the result table.
struct Row {
    phase: &'static str,
    kind: &'static str,
    count: usize,
    errors: u64,
    per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    error_kinds: BTreeMap<String, u64>,
    messages: Vec<String>,
}

fn rows(phase: &'static str, samples: &Samples, wall: Duration) -> Vec<Row> {
    samples
        .0
        .iter()
        .map(|(kind, s)| {
            let mut sorted = s.micros.clone();
            sorted.sort_unstable();
            Row {
                phase,
                kind,
                count: sorted.len(),
                errors: s.errors,
                per_s: sorted.len() as f64 / wall.as_secs_f64().max(1e-9),
                p50_ms: percentile(&sorted, 50.0),
                p99_ms: percentile(&sorted, 99.0),
                max_ms: sorted.last().map(|m| *m as f64 / 1000.0),
                error_kinds: s.error_kinds.clone(),
                messages: s.messages.clone(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct ProcSample {
    cpu_s: f64,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    /// `write(2)`-family calls and bytes to files (/proc/PID/io `syscw`, `wchar`; socket
    /// replies go out by `sendto` and are not counted), and bytes sent to storage.
    file_writes: Option<u64>,
    file_write_bytes: Option<u64>,
    storage_write_bytes: Option<u64>,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) and memory of `/proc/<pid>` ("self" for this process).
fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "pid (comm) ": state is field 3, utime/stime fields 14/15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu_s: ticks as f64 / clock_ticks(),
        rss_kib: field(&status, "VmRSS:"),
        hwm_kib: field(&status, "VmHWM:"),
        file_writes: field(&io, "syscw:"),
        file_write_bytes: field(&io, "wchar:"),
        storage_write_bytes: field(&io, "write_bytes:"),
    })
}

/// Busy and total jiffies of all CPUs (/proc/stat), to see whether the machine saturated.
fn host_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Resource use across one phase.
struct Meter {
    started: Instant,
    server: Option<ProcSample>,
    own: Option<ProcSample>,
    host: Option<(u64, u64)>,
}

struct PhaseUse {
    wall: Duration,
    server_cpu_s: Option<f64>,
    /// Server's file writes, bytes written to files and to storage during the phase.
    server_writes: Option<(u64, u64, u64)>,
    server_end: Option<ProcSample>,
    own_cpu_s: Option<f64>,
    host_busy_pct: Option<f64>,
}

impl Meter {
    fn start(server_pid: Option<u32>) -> Meter {
        Meter {
            started: Instant::now(),
            server: server_pid.and_then(|p| proc_sample(&p.to_string())),
            own: proc_sample("self"),
            host: host_jiffies(),
        }
    }

    fn stop(&self, server_pid: Option<u32>) -> PhaseUse {
        let server_end = server_pid.and_then(|p| proc_sample(&p.to_string()));
        let own_end = proc_sample("self");
        let host_end = host_jiffies();
        PhaseUse {
            wall: self.started.elapsed(),
            server_cpu_s: self.server.zip(server_end).map(|(a, b)| b.cpu_s - a.cpu_s),
            server_writes: self.server.zip(server_end).and_then(|(a, b)| {
                Some((
                    b.file_writes?.saturating_sub(a.file_writes?),
                    b.file_write_bytes?.saturating_sub(a.file_write_bytes?),
                    b.storage_write_bytes?
                        .saturating_sub(a.storage_write_bytes?),
                ))
            }),
            server_end,
            own_cpu_s: self.own.zip(own_end).map(|(a, b)| b.cpu_s - a.cpu_s),
            host_busy_pct: self.host.zip(host_end).and_then(|((b0, t0), (b1, t1))| {
                (t1 > t0).then(|| 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------------------------

struct Party {
    id: String,
    secret: String,
}

#[derive(Clone)]
struct Member {
    party: usize,
    id: String,
    token: String,
    endpoints: Vec<SocketAddr>,
}

/// State shared by all threads of a run.
struct Shared {
    opts: Options,
    server_key: Key,
    parties: Vec<Party>,
    /// When the join request of each trickle member was sent, by member id.
    join_sent: Mutex<HashMap<String, Instant>>,
    /// Start of the run; the two windows below are nanoseconds after it.
    base: Instant,
    measure_from: AtomicU64,
    measure_to: AtomicU64,
    stop_polls: AtomicBool,
    polls_ready: AtomicUsize,
    sockets: Arc<Mutex<Sockets>>,
}

impl Shared {
    fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn measuring(&self, t: Instant) -> bool {
        let t = self.at(t);
        t >= self.measure_from.load(Ordering::SeqCst) && t < self.measure_to.load(Ordering::SeqCst)
    }
}

fn endpoints_of(n: usize) -> Vec<SocketAddr> {
    // Documentation addresses (never contacted): the server only stores them.
    vec![SocketAddr::from((
        [192, 0, 2, (n % 250 + 1) as u8],
        (20_000 + n % 40_000) as u16,
    ))]
}

/// Challenge and join of one new member with a fresh key. `trickle` records the time the
/// join was sent (for roster propagation) and uses the trickle's request names.
fn join_member(
    http: &mut Http,
    shared: &Shared,
    party: usize,
    n: usize,
    trickle: bool,
    samples: &mut Samples,
) -> Option<Member> {
    let (k_challenge, k_join, k_both) = if trickle {
        (
            "trickle challenge",
            "trickle join",
            "trickle challenge+join",
        )
    } else {
        ("challenge", "join", "challenge+join")
    };
    let p = &shared.parties[party];
    let mut raw = [0u8; 32];
    if let Err(e) = random::fill(&mut raw) {
        samples.error(k_both, "random", format!("randomness: {e}"));
        return None;
    }
    let secret = StaticSecret::from(raw);
    let public = Key(PublicKey::from(&secret).to_bytes());
    let started = Instant::now();
    let t = Instant::now();
    let r = http.call(
        "POST",
        &format!("/v1/parties/{}/challenge", p.id),
        None,
        Some(&ChallengeRequest {
            join_secret: p.secret.clone(),
        }),
    );
    let challenge: ChallengeReply = match samples.record(k_challenge, t, r)?.json() {
        Ok(c) => c,
        Err(e) => {
            samples.error(k_challenge, "body", e);
            return None;
        }
    };
    let Some(proof) = proof::sign(&secret, &shared.server_key, &p.id, &challenge.nonce) else {
        samples.error(k_both, "proof", "server key is low-order".into());
        return None;
    };
    let endpoints = endpoints_of(n);
    let body = JoinBody {
        join_secret: p.secret.clone(),
        name: format!("m{n}"),
        public_key: public.to_string(),
        endpoints: endpoints.clone(),
        reach: Default::default(),
        nonce: challenge.nonce,
        proof,
    };
    let t = Instant::now();
    if trickle {
        shared
            .join_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(public.short_id(), t);
    }
    let r = http.call(
        "POST",
        &format!("/v1/parties/{}/members", p.id),
        None,
        Some(&body),
    );
    let reply: JoinReply = match samples.record(k_join, t, r)?.json() {
        Ok(j) => j,
        Err(e) => {
            samples.error(k_join, "body", e);
            return None;
        }
    };
    samples.ok(k_both, started.elapsed());
    Some(Member {
        party,
        id: reply.member.id,
        token: reply.token,
        endpoints,
    })
}

fn spawn_worker<T: Send + 'static>(
    name: String,
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .name(name)
        .stack_size(stack)
        .spawn(f)
        .expect("cannot spawn a thread (raise ulimit -u / memory?)")
}

/// Runs `task(http, index, samples)` for indices `0..count` on `workers` threads, each with its
/// own keep-alive connection. Returns the merged samples, the task results and connects made.
fn run_pool<T: Send + 'static>(
    shared: &Arc<Shared>,
    count: usize,
    task: fn(&mut Http, &Shared, usize, &mut Samples) -> Option<T>,
) -> (Samples, Vec<Option<T>>, u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..shared.opts.workers.min(count.max(1)))
        .map(|w| {
            let (shared, next) = (shared.clone(), next.clone());
            spawn_worker(format!("pool-{w}"), WORKER_STACK, move || {
                let mut http = Http::new(shared.opts.server, CALL_TIMEOUT);
                let mut samples = Samples::default();
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        break;
                    }
                    out.push((i, task(&mut http, &shared, i, &mut samples)));
                }
                (samples, out, http.connects)
            })
        })
        .collect();
    let mut samples = Samples::default();
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut connects = 0;
    for h in handles {
        let (s, out, c) = h.join().expect("worker panicked");
        samples.merge(s);
        connects += c;
        for (i, r) in out {
            results[i] = r;
        }
    }
    (samples, results, connects)
}

// ---------------------------------------------------------------------------------------------
// Heartbeats and trickle joins (baseline and measured periods)
// ---------------------------------------------------------------------------------------------

/// Heartbeats of `members` (one worker's share), each every `heartbeat_s`, spread evenly, until
/// `until`. Records latency and how late each heartbeat was sent against its schedule.
fn heartbeat_worker(
    shared: &Shared,
    members: &mut [Member],
    offset: f64,
    until: Instant,
) -> (Samples, u64) {
    let mut samples = Samples::default();
    let mut http = Http::new(shared.opts.server, CALL_TIMEOUT);
    if members.is_empty() {
        return (samples, 0);
    }
    let period = shared.opts.heartbeat_s;
    let n = members.len();
    let start = Instant::now();
    let mut k = 0usize;
    loop {
        let (round, slot) = (k / n, k % n);
        let due = start
            + Duration::from_secs_f64(period * (round as f64 + (slot as f64 + offset) / n as f64));
        let now = Instant::now();
        // A saturated server makes the schedule slip; stop at `until` all the same.
        if due >= until || now >= until {
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let sent = Instant::now();
        samples.ok(
            "heartbeat schedule lag",
            sent.saturating_duration_since(due),
        );
        let m = &mut members[slot];
        let path = format!(
            "/v1/parties/{}/members/{}/heartbeat",
            shared.parties[m.party].id, m.id
        );
        let body = HeartbeatBody {
            endpoints: m.endpoints.clone(),
            reach: Default::default(),
        };
        let r = http.call("POST", &path, Some(&m.token), Some(&body));
        if let Some(r) = samples.record("heartbeat", sent, r) {
            match r.json::<TokenReply>() {
                Ok(TokenReply {
                    token: Some(token), ..
                }) => m.token = token,
                Ok(_) => {}
                Err(e) => samples.error("heartbeat", "body", e),
            }
        }
        k += 1;
    }
    (samples, http.connects)
}

/// New members joining at `joins_per_s` until `until`, round robin over the parties.
fn trickle_worker(shared: &Shared, first_n: usize, until: Instant) -> (Samples, usize) {
    let mut samples = Samples::default();
    let rate = shared.opts.joins_per_s;
    if rate <= 0.0 {
        return (samples, 0);
    }
    let mut http = Http::new(shared.opts.server, CALL_TIMEOUT);
    let start = Instant::now();
    let mut k = 0usize;
    loop {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        let now = Instant::now();
        if due >= until || now >= until {
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let n = first_n + k;
        join_member(
            &mut http,
            shared,
            n % shared.parties.len(),
            n,
            true,
            &mut samples,
        );
        k += 1;
    }
    (samples, k)
}

/// Runs heartbeats (all members, on `workers` threads) and the trickle for `seconds`.
/// Returns the merged samples, the members (with refreshed tokens) and trickle joins sent.
fn load_period(
    shared: &Arc<Shared>,
    members: Vec<Member>,
    seconds: f64,
    first_trickle: usize,
) -> (Samples, Vec<Member>, usize) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let workers = shared.opts.workers;
    let mut shares: Vec<Vec<Member>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, m) in members.into_iter().enumerate() {
        shares[i % workers].push(m);
    }
    let handles: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(w, mut share)| {
            let shared = shared.clone();
            spawn_worker(format!("hb-{w}"), WORKER_STACK, move || {
                let (samples, _) =
                    heartbeat_worker(&shared, &mut share, w as f64 / workers as f64, until);
                (samples, share)
            })
        })
        .collect();
    let trickle = {
        let shared = shared.clone();
        spawn_worker("trickle".into(), WORKER_STACK, move || {
            trickle_worker(&shared, first_trickle, until)
        })
    };
    let mut samples = Samples::default();
    let mut members = Vec::new();
    for h in handles {
        let (s, share) = h.join().expect("heartbeat worker panicked");
        samples.merge(s);
        members.extend(share);
    }
    let (s, joins) = trickle.join().expect("trickle worker panicked");
    samples.merge(s);
    (samples, members, joins)
}

// ---------------------------------------------------------------------------------------------
// Long-polls
// ---------------------------------------------------------------------------------------------

/// One member's roster watcher: a full read, then long-polls `?since=V` re-issued on every
/// answer until told to stop. Records answered polls and roster propagation (time from a
/// trickle member's join request to this poll returning a roster with it) inside the window.
fn poll_worker(shared: &Shared, member: &Member) -> Samples {
    let mut samples = Samples::default();
    let mut http = Http::new(shared.opts.server, POLL_TIMEOUT);
    http.sockets = Some(shared.sockets.clone());
    let base = format!("/v1/parties/{}/roster", shared.parties[member.party].id);
    let mut known: HashSet<String> = HashSet::new();
    let mut version = None;
    let mut ready = false;
    while !shared.stop_polls.load(Ordering::SeqCst) {
        let path = match version {
            Some(v) => format!("{base}?since={v}"),
            None => base.clone(),
        };
        let sent = Instant::now();
        let result = http.request("GET", &path, Some(&member.token), None);
        let at = Instant::now();
        if shared.stop_polls.load(Ordering::SeqCst) {
            break;
        }
        let kind = if version.is_some() {
            "roster long-poll (held)"
        } else {
            "roster read (initial)"
        };
        let response = if version.is_none() || shared.measuring(at) {
            samples.record(kind, sent, result)
        } else {
            result.ok().filter(|r| r.status == 200)
        };
        let Some(response) = response else {
            thread::sleep(Duration::from_millis(200));
            continue;
        };
        let roster: Roster = match response.json() {
            Ok(r) => r,
            Err(e) => {
                samples.error(kind, "body", e);
                continue;
            }
        };
        if version == Some(roster.version) && shared.measuring(at) {
            samples.ok("roster long-poll timed out (25 s)", at - sent);
        }
        let fresh: Vec<&str> = roster
            .members
            .iter()
            .map(|m| m.id.as_str())
            .filter(|id| version.is_some() && !known.contains(*id))
            .collect();
        if !fresh.is_empty() && shared.measuring(at) {
            let sent = shared.join_sent.lock().unwrap_or_else(|p| p.into_inner());
            for id in fresh {
                if let Some(t) = sent.get(id) {
                    samples.ok("roster propagation", at.saturating_duration_since(*t));
                }
            }
        }
        known = roster.members.iter().map(|m| m.id.clone()).collect();
        version = Some(roster.version);
        if !ready {
            ready = true;
            shared.polls_ready.fetch_add(1, Ordering::SeqCst);
        }
    }
    if !ready {
        shared.polls_ready.fetch_add(1, Ordering::SeqCst);
    }
    samples
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<35} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8}",
        "phase", "request", "count", "errors", "per s", "p50 ms", "p99 ms", "max ms"
    );
    for r in rows {
        let per_s = if r.per_s.is_nan() {
            "-".to_string()
        } else {
            format!("{:.1}", r.per_s)
        };
        println!(
            "{:<9} {:<35} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8}",
            r.phase,
            r.kind,
            r.count,
            r.errors,
            per_s,
            fmt_ms(r.p50_ms),
            fmt_ms(r.p99_ms),
            fmt_ms(r.max_ms)
        );
    }
}

fn row_json(r: &Row) -> Value {
    json!({
        "phase": r.phase, "request": r.kind, "count": r.count, "errors": r.errors,
        "per_s": (r.per_s * 10.0).round() / 10.0,
        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
        "error_statuses": r.error_kinds, "error_messages": r.messages,
    })
}

struct Phase {
    name: &'static str,
    usage: PhaseUse,
    requests: u64,
    note: String,
}

fn phase_json(p: &Phase) -> Value {
    let wall = p.usage.wall.as_secs_f64();
    let server = p.usage.server_end;
    json!({
        "phase": p.name,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "requests": p.requests,
        "server_cpu_s": p.usage.server_cpu_s,
        "server_cpu_pct_of_core": p.usage.server_cpu_s.map(|c| (1000.0 * c / wall).round() / 10.0),
        "server_cpu_us_per_request": p.usage.server_cpu_s
            .filter(|_| p.requests > 0)
            .map(|c| (c * 1e6 / p.requests as f64).round()),
        "server_rss_kib_at_end": server.and_then(|s| s.rss_kib),
        "server_hwm_kib_at_end": server.and_then(|s| s.hwm_kib),
        "server_file_writes": p.usage.server_writes.map(|w| w.0),
        "server_file_writes_per_s": p.usage.server_writes.map(|w| (10.0 * w.0 as f64 / wall).round() / 10.0),
        "server_file_write_bytes": p.usage.server_writes.map(|w| w.1),
        "server_storage_write_bytes": p.usage.server_writes.map(|w| w.2),
        "generator_cpu_s": p.usage.own_cpu_s,
        "host_busy_pct": p.usage.host_busy_pct.map(|b| (b * 10.0).round() / 10.0),
        "note": p.note,
    })
}

fn print_phases(phases: &[Phase]) {
    println!();
    println!(
        "{:<9} {:>6} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>9} {:>9}",
        "phase",
        "wall s",
        "requests",
        "srv cpu%",
        "srv us/req",
        "srv RSS",
        "srv HWM",
        "srv wr/s",
        "srv MB wr/s",
        "gen cpu%",
        "host busy"
    );
    for p in phases {
        let wall = p.usage.wall.as_secs_f64();
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let server = p.usage.server_end;
        let writes = p.usage.server_writes;
        println!(
            "{:<9} {:>6.1} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>9} {:>9}",
            p.name,
            wall,
            p.requests,
            p.usage
                .server_cpu_s
                .map_or("-".into(), |c| format!("{:.1}", 100.0 * c / wall)),
            p.usage
                .server_cpu_s
                .filter(|_| p.requests > 0)
                .map_or("-".into(), |c| format!(
                    "{:.0}",
                    c * 1e6 / p.requests as f64
                )),
            kib(server.and_then(|s| s.rss_kib)),
            kib(server.and_then(|s| s.hwm_kib)),
            writes.map_or("-".into(), |w| format!("{:.0}", w.0 as f64 / wall)),
            writes.map_or("-".into(), |w| format!("{:.1}", w.1 as f64 / wall / 1e6)),
            p.usage
                .own_cpu_s
                .map_or("-".into(), |c| format!("{:.1}", 100.0 * c / wall)),
            p.usage
                .host_busy_pct
                .map_or("-".into(), |b| format!("{b:.0} %")),
        );
        if !p.note.is_empty() {
            println!("{:<9} {}", "", p.note);
        }
    }
    println!(
        "(srv: the server process; wr/s and MB wr/s: write(2) calls and bytes to files, i.e. \
         registry saves; us/req: server CPU per request; host busy: both CPUs)"
    );
}

/// Requests actually sent (successes and failures; not the derived series).
fn request_count(samples: &Samples) -> u64 {
    samples
        .0
        .iter()
        .filter(|(k, _)| {
            !k.contains("lag")
                && !k.contains("propagation")
                && !k.contains("timed out")
                && !k.contains('+')
        })
        .map(|(_, s)| s.micros.len() as u64 + s.errors)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("control_load: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("control_load: {e}");
            ExitCode::from(2)
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[control_load] {}", msg.as_ref());
}

/// Runs every phase; `Ok(false)` when requests failed.
fn run(opts: Options) -> Result<bool, String> {
    let pid = opts.server_pid;
    let n_parties = opts.members.div_ceil(opts.party_size);
    let mut all_rows = Vec::new();
    let mut phases = Vec::new();
    let base = Instant::now();

    // --- setup: server info, parties -----------------------------------------------------------
    let meter = Meter::start(pid);
    let mut http = Http::new(opts.server, CALL_TIMEOUT);
    let mut setup = Samples::default();
    let t = Instant::now();
    let info: Info = setup
        .record("info", t, http.call("GET", "/v1/info", None, None::<&()>))
        .ok_or_else(|| format!("GET /v1/info failed: {:?}", setup.0["info"].messages))?
        .json()?;
    let server_key =
        Key::parse(&info.public_key).ok_or("the server's public key does not parse")?;
    say(format!(
        "server {} ({} {}); creating {n_parties} parties",
        opts.server, info.service, info.version
    ));
    let mut shared = Shared {
        opts: opts.clone(),
        server_key,
        parties: Vec::new(),
        join_sent: Mutex::new(HashMap::new()),
        base,
        measure_from: AtomicU64::new(u64::MAX),
        measure_to: AtomicU64::new(u64::MAX),
        stop_polls: AtomicBool::new(false),
        polls_ready: AtomicUsize::new(0),
        sockets: Arc::new(Mutex::new(Sockets::default())),
    };
    for i in 0..n_parties {
        let t = Instant::now();
        let r = http.call(
            "POST",
            "/v1/parties",
            None,
            Some(&CreatePartyRequest {
                name: format!("bench-{i}"),
                subnet: None,
                max_peers: Some(opts.party_max_peers),
            }),
        );
        let reply: CreatePartyReply = setup
            .record("create party", t, r)
            .ok_or_else(|| {
                format!(
                    "creating party {i} failed: {:?}",
                    setup.0["create party"].messages
                )
            })?
            .json()?;
        shared.parties.push(Party {
            id: reply.id,
            secret: reply.join_secret,
        });
    }
    drop(http);
    let usage = meter.stop(pid);
    all_rows.extend(rows("setup", &setup, usage.wall));
    phases.push(Phase {
        name: "setup",
        requests: request_count(&setup),
        usage,
        note: String::new(),
    });
    let shared = Arc::new(shared);

    // --- join every member -------------------------------------------------------------------
    say(format!(
        "joining {} members on {} workers",
        opts.members, opts.workers
    ));
    let meter = Meter::start(pid);
    let (join_samples, joined, connects) =
        run_pool(&shared, opts.members, |http, shared, i, samples| {
            join_member(http, shared, i / shared.opts.party_size, i, false, samples)
        });
    let usage = meter.stop(pid);
    let members: Vec<Member> = joined.into_iter().flatten().collect();
    say(format!(
        "{} of {} joined in {:.1} s ({:.0} joins/s)",
        members.len(),
        opts.members,
        usage.wall.as_secs_f64(),
        members.len() as f64 / usage.wall.as_secs_f64()
    ));
    all_rows.extend(rows("join", &join_samples, usage.wall));
    phases.push(Phase {
        name: "join",
        requests: request_count(&join_samples),
        note: format!("{} connections for {} workers", connects, opts.workers),
        usage,
    });
    if members.is_empty() {
        return Err("no member could join".into());
    }
    let mut trickle_n = opts.members;
    let mut members = members;
    let mut failures = join_samples.0.values().any(|s| s.errors > 0);

    // --- baseline: heartbeats and joins, no long-polls ---------------------------------------
    if opts.baseline_seconds > 0.0 {
        say(format!(
            "baseline: {:.0} s of heartbeats (every {} s) and {} joins/s, no long-polls",
            opts.baseline_seconds, opts.heartbeat_s, opts.joins_per_s
        ));
        let meter = Meter::start(pid);
        let (samples, back, joins) =
            load_period(&shared, members, opts.baseline_seconds, trickle_n);
        let usage = meter.stop(pid);
        members = back;
        trickle_n += joins;
        failures |= samples.0.values().any(|s| s.errors > 0);
        all_rows.extend(rows("baseline", &samples, usage.wall));
        phases.push(Phase {
            name: "baseline",
            requests: request_count(&samples),
            usage,
            note: format!(
                "0 long-polls parked; heartbeats offered {:.0}/s; {joins} trickle joins",
                members.len() as f64 / opts.heartbeat_s
            ),
        });
    }

    // --- measured: long-polls + heartbeats + trickle -----------------------------------------
    say(format!(
        "starting {} long-poll threads ({} KiB stacks)",
        members.len(),
        POLL_STACK / 1024
    ));
    let pollers: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (shared, m) = (shared.clone(), m.clone());
            spawn_worker(format!("poll-{i}"), POLL_STACK, move || {
                poll_worker(&shared, &m)
            })
        })
        .collect();
    let wait_from = Instant::now();
    while shared.polls_ready.load(Ordering::SeqCst) < pollers.len() {
        if wait_from.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {} long-polls got a first roster within 120 s",
                shared.polls_ready.load(Ordering::SeqCst),
                pollers.len()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
    say(format!(
        "{} long-polls ready after {:.1} s; settling 1 s",
        pollers.len(),
        wait_from.elapsed().as_secs_f64()
    ));
    thread::sleep(Duration::from_secs(1));
    say(format!(
        "measured: {:.0} s of heartbeats (every {} s), {} joins/s, {} long-polls",
        opts.seconds,
        opts.heartbeat_s,
        opts.joins_per_s,
        pollers.len()
    ));
    let meter = Meter::start(pid);
    shared
        .measure_from
        .store(shared.at(Instant::now()), Ordering::SeqCst);
    let (mut samples, after, joins) = load_period(&shared, members, opts.seconds, trickle_n);
    let usage = meter.stop(pid);
    // Let the last joins propagate before closing the window of the long-polls.
    thread::sleep(Duration::from_millis(500));
    shared
        .measure_to
        .store(shared.at(Instant::now()), Ordering::SeqCst);
    shared.stop_polls.store(true, Ordering::SeqCst);
    shared
        .sockets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .close_all();
    let mut initial = Samples::default();
    for h in pollers {
        let mut s = h.join().expect("long-poll thread panicked");
        if let Some(first) = s.0.remove("roster read (initial)") {
            initial
                .0
                .entry("roster read (initial)")
                .or_default()
                .merge(first);
        }
        samples.merge(s);
    }
    failures |= samples.0.values().any(|s| s.errors > 0);
    let expected = joins as u64 * opts.party_size as u64;
    let propagated = samples
        .0
        .get("roster propagation")
        .map_or(0, |s| s.micros.len());
    all_rows.extend(
        rows("polls", &initial, usage.wall)
            .into_iter()
            .map(|mut r| {
                r.per_s = f64::NAN;
                r
            }),
    );
    all_rows.extend(rows("measured", &samples, usage.wall));
    phases.push(Phase {
        name: "measured",
        requests: request_count(&samples),
        usage,
        note: format!(
            "{} long-polls parked; heartbeats offered {:.0}/s; {joins} trickle joins; \
             {propagated} propagation samples (about {expected} expected)",
            after.len(),
            after.len() as f64 / opts.heartbeat_s
        ),
    });

    // --- report ------------------------------------------------------------------------------
    println!();
    println!(
        "control_load: {} members in {} parties of {}, heartbeat every {} s, {} joins/s, \
         {} workers, server {}",
        opts.members,
        n_parties,
        opts.party_size,
        opts.heartbeat_s,
        opts.joins_per_s,
        opts.workers,
        opts.server
    );
    println!();
    print_table(&all_rows);
    print_phases(&phases);
    let errors: Vec<Value> = all_rows
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| {
            json!({"phase": r.phase, "request": r.kind, "errors": r.errors,
                        "statuses": r.error_kinds, "messages": r.messages})
        })
        .collect();
    if !errors.is_empty() {
        println!();
        println!("errors:");
        for r in all_rows.iter().filter(|r| r.errors > 0) {
            println!(
                "  {} / {}: {} ({:?}) e.g. {:?}",
                r.phase, r.kind, r.errors, r.error_kinds, r.messages
            );
        }
    }
    if let Some(path) = &opts.json {
        let doc = json!({
            "tool": "control_load",
            "config": {
                "server": opts.server.to_string(),
                "members": opts.members,
                "party_size": opts.party_size,
                "parties": n_parties,
                "party_max_peers": opts.party_max_peers,
                "seconds": opts.seconds,
                "baseline_seconds": opts.baseline_seconds,
                "heartbeat_s": opts.heartbeat_s,
                "joins_per_s": opts.joins_per_s,
                "workers": opts.workers,
                "poll_thread_stack_kib": POLL_STACK / 1024,
            },
            "server_version": info.version,
            "requests": all_rows.iter().map(|r| {
                let mut v = row_json(r);
                if r.per_s.is_nan() { v["per_s"] = Value::Null; }
                v
            }).collect::<Vec<_>>(),
            "phases": phases.iter().map(phase_json).collect::<Vec<_>>(),
            "errors": errors,
            "ok": !failures,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{path}: {e}"))?;
        say(format!("wrote {path}"));
    }
    Ok(!failures)
}
