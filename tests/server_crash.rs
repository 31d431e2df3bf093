//! Crash safety of the control server: the real binary on 127.0.0.1, SIGKILLed at varying
//! moments while many clients join concurrently, restarted each time on the same state
//! directory. After every restart the store loads, every join that got a successful reply is
//! still in the roster with the virtual IP it was told, and no virtual IP is held twice.
//!
//! No namespaces and no root needed. Every server is killed by PID when its guard drops
//! (also while the test panics), and the temporary directory is removed.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::TempDir;

use lanparty_lite::control::registry::Registry;
use lanparty_lite::control::{self, ControlError, ControlPlane, JoinCode, JoinRequest, NewParty};
use lanparty_lite::identity::Key;
use x25519_dalek::{PublicKey, StaticSecret};

const BIN: &str = env!("CARGO_BIN_EXE_lanparty-lite");
/// SIGKILL/restart cycles.
const ROUNDS: u64 = 20;
/// Concurrent joining clients.
const WORKERS: usize = 12;
/// Parties the workers spread over.
const PARTIES: usize = 3;
/// Member limit of each party (and the server's `--max-peers`): never the limiting factor.
const MAX_PEERS: u32 = 4000;
/// How long a server may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server; SIGKILLed by PID and reaped on drop.
struct Server {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Starts `server` on `127.0.0.1:port` with `state`, without waiting for it.
    fn spawn(dir: &Path, state: &Path, port: u16, n: u64) -> Server {
        let stdout = dir.join(format!("server-{n}.out"));
        let stderr = dir.join(format!("server-{n}.err"));
        let child = Command::new(BIN)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state)
            .args(["--rate-limit", "0", "--max-peers", &MAX_PEERS.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("start the server");
        Server {
            child,
            stdout,
            stderr,
        }
    }

    /// Starts `server` on `127.0.0.1:port` with `state` and waits for `listening on`. Panics
    /// (with its stderr) if it exits first: the store did not load.
    fn start(dir: &Path, state: &Path, port: u16, n: u64) -> Server {
        let listen = format!("127.0.0.1:{port}");
        let mut server = Server::spawn(dir, state, port, n);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = fs::read_to_string(&server.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with("listening on ")) {
                assert_eq!(line, format!("listening on {listen}"));
                return server;
            }
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!(
                    "server start {n} exited ({status}) before listening: the store did not \
                     load?\nstderr:\n{}",
                    fs::read_to_string(&server.stderr).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server start {n} did not print `listening on` within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGKILL and reap.
    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("wait for the server");
        assert!(!status.success(), "killed server exited {status}");
    }

    /// SIGTERM, and expect a clean exit.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "server exited {status} on SIGTERM:\n{}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
                return;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM for 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago (the server binds it again after every restart; the
/// listener sets SO_REUSEADDR).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A join the server answered with success.
#[derive(Debug, Clone)]
struct Ack {
    party: String,
    member_id: String,
    public_key: String,
    ip: Ipv4Addr,
}

/// What the workers saw.
#[derive(Default)]
struct Log {
    acks: Mutex<Vec<Ack>>,
    /// Per party, the client of its first acknowledged member (a token to read the roster).
    readers: Mutex<HashMap<String, Box<dyn ControlPlane>>>,
    /// Failures with the server down (connection refused).
    refused: AtomicUsize,
    /// Failures mid-request (reset, disconnected): the kill landed during a join.
    interrupted: AtomicUsize,
    /// Joins refused because their challenge nonce died with the previous server.
    stale_nonce: AtomicUsize,
    /// Anything else: a bug.
    unexpected: Mutex<Vec<String>>,
}

fn new_key() -> (StaticSecret, Key) {
    let mut bytes = [0u8; 32];
    lanparty_lite::random::fill(&mut bytes).expect("random bytes");
    let secret = StaticSecret::from(bytes);
    let public = Key(PublicKey::from(&secret).to_bytes());
    (secret, public)
}

/// Joins `code`'s party over and over, each time with a new key, until `stop`.
fn worker(w: usize, code: JoinCode, log: Arc<Log>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (secret, public) = new_key();
        let mut client = control::open(&code.control, code.secret.clone(), Some(secret))
            .expect("open the http backend");
        let req = JoinRequest {
            name: format!("w{w}-{n}"),
            public_key: public,
            endpoints: vec![format!("127.0.0.1:{}", 10_000 + w).parse().unwrap()],
            reach: Default::default(),
        };
        match client.join(&code.party_id, req) {
            Ok(member) => {
                if member.public_key != public.to_string() {
                    log.unexpected
                        .lock()
                        .unwrap()
                        .push(format!("join as {public} answered with member {member:?}"));
                    continue;
                }
                log.acks.lock().unwrap().push(Ack {
                    party: code.party_id.clone(),
                    member_id: member.id.clone(),
                    public_key: member.public_key.clone(),
                    ip: member.virtual_ip,
                });
                log.readers
                    .lock()
                    .unwrap()
                    .entry(code.party_id.clone())
                    .or_insert(client);
            }
            Err(ControlError::Unavailable(why)) => {
                if why.contains("refused") {
                    log.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    log.interrupted.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(ControlError::Denied(why)) if why.contains("nonce") => {
                log.stale_nonce.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log
                .unexpected
                .lock()
                .unwrap()
                .push(format!("w{w} join {n}: {e}")),
        }
    }
}

/// Reads the roster through the API with a member's token, retrying a dead pooled
/// connection or a server still coming up.
fn roster_via_api(reader: &mut Box<dyn ControlPlane>, party: &str) -> control::Roster {
    let mut last = None;
    for _ in 0..50 {
        match reader.roster(party) {
            Ok(roster) => return roster,
            Err(ControlError::Unavailable(why)) => last = Some(why),
            Err(e) => panic!("roster of {party} after a restart: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("roster of {party} unavailable after a restart: {last:?}");
}

/// Checks the store and the running server against every acknowledged join.
fn verify(state: &Path, log: &Log, round: u64) -> usize {
    // Acknowledged before we read: each was stored before its reply left the server.
    let acks = log.acks.lock().unwrap().clone();
    let bytes = fs::read(state.join("registry.json")).expect("read registry.json");
    let registry: Registry = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("round {round}: registry.json does not parse: {e}"));
    for (id, party) in &registry.parties {
        let mut ips = BTreeMap::new();
        for member in party.members.values() {
            if let Some(other) = ips.insert(member.virtual_ip, member.id.clone()) {
                panic!(
                    "round {round}: party {id}: {} is held by {other} and {}",
                    member.virtual_ip, member.id
                );
            }
        }
        let mut allocated = BTreeSet::new();
        for (key, a) in &party.allocations {
            assert!(
                allocated.insert(a.ip),
                "round {round}: party {id}: {} allocated twice (again to {key})",
                a.ip
            );
        }
        for member in party.members.values() {
            let a = party.allocations.get(&member.public_key);
            assert_eq!(
                a.map(|a| a.ip),
                Some(member.virtual_ip),
                "round {round}: party {id}: member {} has no allocation of its IP",
                member.id
            );
        }
    }
    for ack in &acks {
        let member = registry
            .parties
            .get(&ack.party)
            .and_then(|p| p.members.get(&ack.member_id))
            .unwrap_or_else(|| {
                panic!("round {round}: acknowledged join {ack:?} is missing from the store")
            });
        assert_eq!(
            (member.virtual_ip, &member.public_key),
            (ack.ip, &ack.public_key),
            "round {round}: acknowledged join {ack:?} changed in the store"
        );
    }
    // The restarted server agrees, through its API.
    let mut readers = log.readers.lock().unwrap();
    for (party, reader) in readers.iter_mut() {
        let roster = roster_via_api(reader, party);
        let by_id: HashMap<&str, Ipv4Addr> = roster
            .members
            .iter()
            .map(|m| (m.id.as_str(), m.virtual_ip))
            .collect();
        let distinct: BTreeSet<Ipv4Addr> = roster.members.iter().map(|m| m.virtual_ip).collect();
        assert_eq!(
            distinct.len(),
            roster.members.len(),
            "round {round}: party {party}: duplicate virtual IPs in the served roster"
        );
        for ack in acks.iter().filter(|a| a.party == *party) {
            assert_eq!(
                by_id.get(ack.member_id.as_str()),
                Some(&ack.ip),
                "round {round}: the restarted server's roster lost or moved {ack:?}"
            );
        }
    }
    acks.len()
}

/// Temporary files a dead writer left next to registry.json.
fn strays(state: &Path) -> usize {
    fs::read_dir(state)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".registry.json.tmp.")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_during_concurrent_joins_loses_no_acknowledged_member_and_duplicates_no_ip() {
    let started = Instant::now();
    let tmp = TempDir::new("crash");
    let state = tmp.0.join("state");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut starts = 0;
    let server = Server::start(&tmp.0, &state, port, starts);

    let codes: Vec<JoinCode> = (0..PARTIES)
        .map(|p| {
            let party = control::open(&url, None, None)
                .unwrap()
                .create_party(NewParty {
                    name: format!("crash-{p}"),
                    subnet: "10.66.0.0/16".parse().unwrap(),
                    max_peers: MAX_PEERS,
                    secret: None,
                })
                .expect("create a party");
            JoinCode::parse(&party.join_code).expect("the server's join code parses")
        })
        .collect();

    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the workers even if an assertion below panics, so the scope can end.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let server = std::thread::scope(|scope| {
        let _stop_workers = StopOnDrop(stop.clone());
        for w in 0..WORKERS {
            let (code, log, stop) = (codes[w % PARTIES].clone(), log.clone(), stop.clone());
            scope.spawn(move || worker(w, code, log, stop));
        }
        let mut server = server;
        let mut per_round = Vec::new();
        let mut acked_before = 0;
        for round in 0..ROUNDS {
            // 5 ms to 200 ms, in a scrambled order.
            let delay = Duration::from_millis(5 + (round * 83) % 196);
            std::thread::sleep(delay);
            server.kill();
            if round % 4 == 3 {
                // Also a kill while the server is still starting (loading the store).
                starts += 1;
                let early = Server::spawn(&tmp.0, &state, port, starts);
                std::thread::sleep(Duration::from_millis(round % 5));
                early.kill();
            }
            starts += 1;
            server = Server::start(&tmp.0, &state, port, starts);
            let acked = verify(&state, &log, round);
            per_round.push((delay.as_millis(), acked - acked_before));
            acked_before = acked;
        }
        stop.store(true, Ordering::Relaxed);
        eprintln!("(delay ms, joins acknowledged) per round: {per_round:?}");
        server
    });

    // A clean stop and one more start: everything is still there.
    server.stop();
    starts += 1;
    let server = Server::start(&tmp.0, &state, port, starts);
    let total = verify(&state, &log, ROUNDS);
    let interrupted = log.interrupted.load(Ordering::Relaxed);
    eprintln!(
        "{total} joins acknowledged over {ROUNDS} SIGKILLs in {:.1?}; failed: {} refused \
         (server down), {interrupted} interrupted mid-request, {} stale nonces; {} stray \
         temporary files in the state directory",
        started.elapsed(),
        log.refused.load(Ordering::Relaxed),
        log.stale_nonce.load(Ordering::Relaxed),
        strays(&state),
    );
    let unexpected = log.unexpected.lock().unwrap();
    assert!(
        unexpected.is_empty(),
        "unexpected join failures:\n{}",
        unexpected.join("\n")
    );
    assert!(
        total >= 10 * ROUNDS as usize,
        "only {total} joins acknowledged: the test did not exercise the server"
    );
    server.stop();
}

#[test]
fn a_restart_removes_temporary_files_a_killed_server_left() {
    let tmp = TempDir::new("strays");
    let state = tmp.0.join("state");
    let port = free_port();
    let server = Server::start(&tmp.0, &state, port, 0);
    control::open(&format!("http://127.0.0.1:{port}"), None, None)
        .unwrap()
        .create_party(NewParty {
            name: "strays".into(),
            subnet: "10.66.0.0/16".parse().unwrap(),
            max_peers: 8,
            secret: None,
        })
        .expect("create a party");
    server.kill();
    // What a SIGKILL between writing the temporary file and renaming it leaves behind (the
    // crash test above sees a few of these in the state directory after 20 kills).
    let stray = state.join(".registry.json.tmp.k3f9a2xm7qk3f9a2");
    fs::copy(state.join("registry.json"), &stray).expect("plant a stray temporary file");
    let server = Server::start(&tmp.0, &state, port, 1);
    let left = strays(&state);
    server.stop();
    assert_eq!(
        left,
        0,
        "the restarted server (holding server.lock, so no other writer can own them) left \
         {left} temporary file(s) of a dead writer in {}",
        state.display()
    );
}
