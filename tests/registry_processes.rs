//! Several processes sharing one `file:` registry, as daemons on one host do: concurrent joins
//! from many processes, and writers killed with SIGKILL at any moment of a write.
//!
//! The test binary is its own child process: the parent runs it again as
//! `--exact child_worker`, with `LP_CHILD_ROLE` naming the work. Without that variable
//! `child_worker` returns at once, so a plain `cargo test` only runs the parents.
//!
//! Protocol between parent and child: the child waits for a line on stdin (a start barrier, so
//! all children hit the registry together; end of input means the parent gave up), then writes
//! its reports to stdout as lines containing `@lp <message>`.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lanparty_lite::control::file::FileControl;
use lanparty_lite::control::registry::{JoinRequest, NewParty, Registry};
use lanparty_lite::control::{ControlError, ControlPlane};
use lanparty_lite::identity::Key;

const ROLE_ENV: &str = "LP_CHILD_ROLE";
const REGISTRY_ENV: &str = "LP_CHILD_REGISTRY";
const PARTY_ENV: &str = "LP_CHILD_PARTY";
const WORKER_ENV: &str = "LP_CHILD_WORKER";
/// Marks a report line in a child's stdout (libtest may print on the same line).
const MARK: &str = "@lp ";
/// How long the parent waits for a child's next report before declaring it hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// A churning child stops by itself after this long, should its parent never kill it.
const CHURN_BUDGET: Duration = Duration::from_secs(60);
/// Keys the churning children share, so they contend for the same members.
const CHURN_KEYS: u8 = 24;

// ---------------------------------------------------------------------------------------------
// Child side.

/// Runs the work `LP_CHILD_ROLE` names; does nothing in a normal test run.
#[test]
fn child_worker() {
    let Ok(role) = env::var(ROLE_ENV) else {
        return;
    };
    // Die with the parent even if it is killed before it can kill us.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let registry = PathBuf::from(env::var(REGISTRY_ENV).unwrap());
    let party = env::var(PARTY_ENV).unwrap();
    let worker: u8 = env::var(WORKER_ENV).unwrap().parse().unwrap();
    let mut go = String::new();
    if std::io::stdin().read_line(&mut go).unwrap() == 0 {
        return;
    }
    let control = FileControl::new(registry.clone());
    match role.as_str() {
        "join" => join_distinct_keys(control, &party, worker),
        "churn" => churn(control, &party, worker),
        "inherit-stray-temp" => join_over_own_stray_temp(control, &registry, &party),
        other => panic!("unknown child role {other:?}"),
    }
}

fn report(message: &str) {
    println!("{MARK}{message}");
}

fn key(a: u8, b: u8) -> Key {
    let mut k = [0x77u8; 32];
    k[0] = a;
    k[1] = b;
    Key(k)
}

fn request(key: Key, endpoints: Vec<SocketAddr>) -> JoinRequest {
    JoinRequest {
        name: format!("m-{}", key.short_id()),
        public_key: key,
        endpoints,
        reach: Default::default(),
    }
}

const JOINS_PER_PROCESS: u8 = 15;

fn join_distinct_keys(mut control: FileControl, party: &str, worker: u8) {
    for i in 0..JOINS_PER_PROCESS {
        match control.join(party, request(key(worker + 1, i), vec![])) {
            Ok(m) => report(&format!("JOINED {} {}", m.id, m.virtual_ip)),
            Err(e) => {
                report(&format!("FAIL join {i}: {e}"));
                panic!("join {i}: {e}");
            }
        }
    }
}

/// Joins, heartbeats and leaves over a shared key pool as fast as it can, until killed.
fn churn(mut control: FileControl, party: &str, worker: u8) {
    let mut rng = Rng(u64::from(std::process::id()) << 8 | u64::from(worker));
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed() < CHURN_BUDGET {
        let k = key(0, (rng.next() % u64::from(CHURN_KEYS)) as u8);
        let port = 1024 + (rng.next() % 60000) as u16;
        let endpoints = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
        let result = match rng.next() % 3 {
            0 => control.join(party, request(k, endpoints)).map(drop),
            1 => control.heartbeat(party, &k.short_id(), &endpoints, &Default::default()),
            _ => control.leave(party, &k.short_id()),
        };
        match result {
            Ok(()) | Err(ControlError::UnknownMember(_)) => {}
            Err(e) => {
                report(&format!("FAIL after {ops} operations: {e}"));
                panic!("{e}");
            }
        }
        ops += 1;
        if ops == 1 {
            report("READY");
        }
    }
    report(&format!("OUT-OF-TIME after {ops} operations"));
}

/// Plays a process that got the PID of a writer killed on its first write (a daemon that is
/// PID 1 of a restarted container, or plain PID reuse): that writer's temp file is in the way.
fn join_over_own_stray_temp(mut control: FileControl, registry: &Path, party: &str) {
    let stray = registry.with_file_name(format!(".registry.json.tmp.{}.0", std::process::id()));
    fs::write(&stray, b"{\"format\": \"lanparty-lite-reg").unwrap();
    match control.join(party, request(key(0xdd, 0), vec![])) {
        Ok(m) => report(&format!("JOINED {} {}", m.id, m.virtual_ip)),
        Err(e) => report(&format!("FAIL {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Parent side.

/// A scratch directory removed on drop, unique per test and process.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = env::temp_dir().join(format!(
            "lp-procs-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn registry(&self) -> PathBuf {
        self.0.join("registry.json")
    }

    /// Temporary files left by writers that died between creating and renaming them.
    fn stray_temp_files(&self) -> Vec<String> {
        fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".registry.json.tmp."))
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child test process; killed (by its PID) and reaped on drop if still running.
struct Worker {
    child: Child,
    reports: Receiver<String>,
    exited: bool,
}

impl Worker {
    fn spawn(role: &str, registry: &Path, party: &str, worker: u8) -> Worker {
        let mut child = Command::new(env::current_exe().unwrap())
            .args(["--exact", "child_worker", "--nocapture", "--quiet"])
            .args(["--test-threads", "1"])
            .env(ROLE_ENV, role)
            .env(REGISTRY_ENV, registry)
            .env(PARTY_ENV, party)
            .env(WORKER_ENV, worker.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, reports) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, message)) = line.split_once(MARK) {
                    if tx.send(message.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Worker {
            child,
            reports,
            exited: false,
        }
    }

    /// Lets the child start (the start barrier) by writing its go line and closing stdin.
    fn go(&mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }

    /// Waits for the child's next report.
    fn next_report(&self) -> Option<String> {
        match self.reports.recv_timeout(CHILD_TIMEOUT) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("child {} silent for {CHILD_TIMEOUT:?}", self.pid())
            }
        }
    }

    /// Reads reports until the child closes stdout, then reaps it.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let reports: Vec<String> = std::iter::from_fn(|| self.next_report()).collect();
        let status = self.child.wait().unwrap();
        self.exited = true;
        (status, reports)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn new_party(registry: &Path) -> String {
    FileControl::new(registry.to_path_buf())
        .create_party(NewParty {
            name: "friday".into(),
            subnet: "10.66.0.0/16".parse().unwrap(),
            max_peers: 1000,
            secret: None,
        })
        .unwrap()
        .id
}

/// The invariants every reader of the registry relies on, beyond what `check()` covers.
fn assert_consistent(registry: &Registry) {
    assert_eq!(registry.check(), Ok(()));
    for party in registry.parties.values() {
        let mut ips = BTreeSet::new();
        for m in party.members.values() {
            assert!(ips.insert(m.virtual_ip), "{} is held twice", m.virtual_ip);
            assert_eq!(
                party.allocations.get(&m.public_key).map(|a| a.ip),
                Some(m.virtual_ip),
                "member {} holds an address not reserved for its key",
                m.id
            );
        }
        let reserved: BTreeSet<Ipv4Addr> = party.allocations.values().map(|a| a.ip).collect();
        assert_eq!(
            reserved.len(),
            party.allocations.len(),
            "two keys reserve one address"
        );
    }
}

/// xorshift64: deterministic from a printed seed, so a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const JOIN_PROCESSES: u8 = 6;

#[test]
fn concurrent_joins_from_many_processes_never_share_an_address() {
    let dir = TempDir::new("joins");
    let party = new_party(&dir.registry());
    let mut workers: Vec<Worker> = (0..JOIN_PROCESSES)
        .map(|w| Worker::spawn("join", &dir.registry(), &party, w))
        .collect();
    workers.iter_mut().for_each(Worker::go);

    let mut assigned: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for worker in workers {
        let pid = worker.pid();
        let (status, reports) = worker.finish();
        assert!(
            status.success(),
            "child {pid}: {status}, reports {reports:?}"
        );
        for report in reports {
            let mut words = report.split(' ');
            assert_eq!(words.next(), Some("JOINED"), "child {pid}: {report}");
            let (id, ip) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(assigned.insert(id.into(), ip.parse().unwrap()), None);
        }
    }
    let total = usize::from(JOIN_PROCESSES) * usize::from(JOINS_PER_PROCESS);
    assert_eq!(assigned.len(), total, "every join was reported once");
    let distinct: BTreeSet<Ipv4Addr> = assigned.values().copied().collect();
    assert_eq!(distinct.len(), total, "two members were given one address");

    let mut control = FileControl::new(dir.registry());
    assert_consistent(&control.load().unwrap());
    let roster: BTreeMap<String, Ipv4Addr> = control
        .roster(&party)
        .unwrap()
        .members
        .into_iter()
        .map(|m| (m.id, m.virtual_ip))
        .collect();
    assert_eq!(
        roster, assigned,
        "the roster shows every member at its address"
    );
}

/// A nonzero xorshift seed that differs from run to run.
fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::from(now.subsec_nanos()) | 1
}

const KILL_ROUNDS: u32 = 30;
const CHURNERS_PER_ROUND: u8 = 3;

#[test]
fn writers_killed_mid_write_leave_a_valid_registry() {
    let seed = env::var("LP_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    println!("kill schedule seed {seed} (replay with LP_KILL_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = TempDir::new("kills");
    let party = new_party(&dir.registry());
    let mut control = FileControl::new(dir.registry());
    let mut last_version = control.load().unwrap().version;
    let mut strays_seen = BTreeSet::new();

    for round in 0..KILL_ROUNDS {
        let mut workers: Vec<Worker> = (0..CHURNERS_PER_ROUND)
            .map(|w| Worker::spawn("churn", &dir.registry(), &party, w))
            .collect();
        workers.iter_mut().for_each(Worker::go);
        for worker in &workers {
            let first = worker.next_report();
            assert_eq!(
                first.as_deref(),
                Some("READY"),
                "round {round}: child {} did not get a first write through",
                worker.pid()
            );
        }
        for worker in &workers {
            // Real time on purpose: the point is to land SIGKILL at an arbitrary moment of a
            // real write (open, write, fsync, rename, directory fsync).
            thread::sleep(Duration::from_millis(1 + rng.next() % 40));
            // SAFETY: kill() takes a PID of our own live (unreaped) child and a signal number.
            let rc = unsafe { libc::kill(worker.pid(), libc::SIGKILL) };
            assert_eq!(rc, 0, "kill {}", worker.pid());
        }
        for worker in workers {
            let pid = worker.pid();
            let (status, reports) = worker.finish();
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "round {round}: child {pid} ended by itself ({status}): {reports:?}"
            );
            assert!(
                reports.is_empty(),
                "round {round}: child {pid}: {reports:?}"
            );
        }

        let registry = match control.load() {
            Ok(r) => r,
            Err(e) => panic!("round {round}: registry does not load after SIGKILL: {e}"),
        };
        assert_consistent(&registry);
        assert!(
            registry.version >= last_version,
            "round {round}: version went back from {last_version} to {}",
            registry.version
        );
        last_version = registry.version;
        strays_seen.extend(dir.stray_temp_files());
    }

    // Whatever was left behind, the registry still takes writes and serves the roster.
    let late = control.join(&party, request(key(0xee, 0), vec![])).unwrap();
    let roster = control.roster(&party).unwrap();
    assert!(roster.members.iter().any(|m| m.id == late.id));
    assert_consistent(&control.load().unwrap());
    println!(
        "{KILL_ROUNDS} rounds x {CHURNERS_PER_ROUND} writers killed; registry version {}; \
         {} stray temp files left by killed writers: {:?}",
        control.load().unwrap().version,
        strays_seen.len(),
        strays_seen
    );
}

#[test]
fn a_dead_writers_temp_file_does_not_block_a_process_with_its_pid() {
    let dir = TempDir::new("stray");
    let party = new_party(&dir.registry());
    let mut worker = Worker::spawn("inherit-stray-temp", &dir.registry(), &party, 0);
    worker.go();
    let (status, reports) = worker.finish();
    assert!(status.success(), "{status}");
    assert!(
        reports.len() == 1 && reports[0].starts_with("JOINED "),
        "the first write of a process whose PID matches a stray temp file: {reports:?}"
    );
}
