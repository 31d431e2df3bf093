//! The lab: real networks on one machine for end-to-end tests (design.md section 6).
//!
//! A [`Lab`] is a guard that owns:
//! - a namespace `<base>-lan` holding the bridge `br0` that plays "the LAN";
//! - member namespaces `<base>-m0`, `<base>-m1`, … each with `lo` up and a veth `eth0` into
//!   the bridge, addressed `192.168.<S>.<i+1>/24` (S is per lab, for readable logs);
//! - a temporary directory `/tmp/<base>` with the registry, one state directory per member and
//!   the stdout/stderr of every process the lab started.
//!
//! `<base>` is `lpt-<pid>-<counter>-<tag>`, so labs in parallel test threads and in concurrent
//! test binaries never collide. Interface names (`br0`, `m<i>`, `eth0`, `lp0`) all live inside
//! the lab's own namespaces, so they stay within the kernel's 15 bytes and never clash either.
//!
//! Dropping the lab (also while a test panics) stops every process it started, by PID
//! (SIGTERM, then SIGKILL after a grace period), deletes its namespaces and its directory. A
//! new lab also sweeps namespaces and directories left by test processes that no longer exist
//! (a test binary killed with SIGKILL cannot run destructors).
//!
//! These tests need root (namespaces, veth, tun). Without root they fail with a clear message.

#![allow(dead_code)]

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lanparty-lite");
/// Prefix of every namespace and directory a lab creates.
const PREFIX: &str = "lpt-";
/// Default limit for one helper command (`ip`, `status`, `ping`, …).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member may take to print `joined as`.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period between SIGTERM and SIGKILL when the lab is dropped.
const KILL_GRACE: Duration = Duration::from_secs(3);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless we are root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these end-to-end tests need root (network namespaces, veth, bridges, tun devices); \
         run `cargo test` as root, as CI does"
    );
}

/// `/usr/bin/python3` when present (no pyenv shim in between), else `python3` from PATH.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Polls `probe` every 100 ms until it returns `Ok`, and returns that value. Panics after
/// `timeout` with `what` and the last error the probe gave.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The command line, for messages.
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// Exit code (None if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics unless the command exited 0; returns self for chaining.
    pub fn expect_success(self) -> Finished {
        assert!(
            self.status.success(),
            "`{}` failed with {}:\nstdout: {}\nstderr: {}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

impl From<(String, Output)> for Finished {
    fn from((command, out): (String, Output)) -> Self {
        Finished {
            command,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn describe(argv: &[&str]) -> String {
    argv.join(" ")
}

/// Runs `argv` with stdout/stderr sent to files under `dir` (so grandchildren holding the
/// descriptors cannot hang us), waiting at most `timeout`; on timeout kills it by PID and
/// panics.
fn run_in_dir(dir: &Path, argv: &[&str], env: &[(&str, &str)], timeout: Duration) -> Finished {
    static NEXT_RUN: AtomicU32 = AtomicU32::new(0);
    let n = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("run-{n}.out"));
    let err_path = dir.join(format!("run-{n}.err"));
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"));
    // What a user sees by default: the binary's own default log level.
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(argv)));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            kill_pid(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!("`{}` did not finish within {timeout:?}", describe(argv));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| {
        let s = String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let _ = fs::remove_file(p);
        s
    };
    Finished {
        command: describe(argv),
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Runs `ip ARGS…` in the root namespace (used for lab setup), panicking if it fails.
pub fn ip(args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        describe(&argv),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: libc::c_int) {
    kill_pid(pid, signal);
}

fn kill_pid(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; the pid is one we started.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` exists and is not a zombie (a process we did not start is reaped by init).
pub fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Deletes namespaces and directories of labs whose test process is gone. Only names with
/// our prefix and a dead owner PID are touched; the processes inside such a namespace were
/// started by that lab, and are killed by PID before the namespace goes.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let owner =
        |name: &str| -> Option<u32> { name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok() };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        match owner(name) {
            Some(pid) if !pid_alive(pid) => {
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        if let Ok(p) = p.parse() {
                            kill_pid(p, libc::SIGKILL);
                        }
                    }
                }
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
            _ => {}
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner(&name) {
                if !pid_alive(pid) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// One member namespace.
#[derive(Debug, Clone)]
pub struct Node {
    /// Namespace name.
    pub ns: String,
    /// Underlay ("LAN") address on `eth0`.
    pub underlay_ip: Ipv4Addr,
    /// The member's default state directory (`--state-dir`).
    pub state_dir: PathBuf,
}

/// A process the lab started; a cheap handle, the lab keeps the `Child`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Index in the lab's process list.
    index: usize,
    /// Member namespace it runs in.
    pub member: usize,
    /// Its PID (`ip netns exec` execs the command, so this is the command itself).
    pub pid: u32,
}

/// What a member printed when it came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Member name.
    pub name: String,
    /// Virtual IP.
    pub ip: Ipv4Addr,
}

struct Started {
    child: Child,
    label: String,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

/// The lab guard. See the module documentation.
pub struct Lab {
    base: String,
    dir: PathBuf,
    lan_ns: String,
    /// Third octet of the LAN's 192.168.S.0/24.
    subnet: u8,
    nodes: Vec<Node>,
    namespaces: Vec<String>,
    procs: Mutex<Vec<Started>>,
    adopted: Mutex<Vec<u32>>,
}

impl Lab {
    /// Builds a LAN with `members` member namespaces. `tag` (a few letters) names the test in
    /// namespace names, for debugging.
    pub fn new(tag: &str, members: usize) -> Lab {
        Lab::with_bridge(tag, members, "lan")
    }

    /// Like [`Lab::new`], but the namespace holding the bridge `br0` is `<base>-<bridge_tag>`
    /// (the NAT lab calls it `inet`: there the bridge plays "the internet").
    pub fn with_bridge(tag: &str, members: usize, bridge_tag: &str) -> Lab {
        require_root();
        sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&base);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create lab directory");
        let subnet = (1 + (std::process::id() + n) % 250) as u8;
        let mut lab = Lab {
            lan_ns: format!("{base}-{bridge_tag}"),
            subnet,
            base,
            dir,
            nodes: Vec::new(),
            namespaces: Vec::new(),
            procs: Mutex::new(Vec::new()),
            adopted: Mutex::new(Vec::new()),
        };
        // Anything below may panic; `lab` is already a guard, so Drop removes what exists.
        let lan = lab.lan_ns.clone();
        lab.add_namespace(&lan);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for i in 0..members {
            lab.attach(&format!("m{i}"), i as u8 + 1);
        }
        lab
    }

    /// Adds one more namespace `<base>-<tag>` on the LAN bridge, addressed
    /// `192.168.<S>.<host>/24` (pick `host` above the member count, e.g. 200), and returns its
    /// node index, usable with [`Lab::exec`], [`Lab::spawn`] and friends like a member's.
    /// `tag` names the bridge port too, so keep it short (at most 15 bytes) and unlike `m<i>`.
    /// Used for a host playing "the internet", such as a control server.
    pub fn add_host(&mut self, tag: &str, host: u8) -> usize {
        assert!(
            tag.len() <= 15 && !tag.starts_with('m') && tag != "br0",
            "host tag {tag:?} must be at most 15 bytes and must not clash with member ports"
        );
        self.attach(tag, host)
    }

    /// Creates namespace `<base>-<tag>` with `eth0` on the LAN bridge (bridge port `tag`) at
    /// `192.168.<S>.<host>/24`, and returns its node index.
    fn attach(&mut self, tag: &str, host: u8) -> usize {
        let ns = format!("{}-{tag}", self.base);
        self.add_namespace(&ns);
        let lan = self.lan_ns.clone();
        ip(&[
            "-n", &lan, "link", "add", tag, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &lan, "link", "set", tag, "master", "br0", "up"]);
        let underlay_ip = Ipv4Addr::new(192, 168, self.subnet, host);
        let address = format!("{underlay_ip}/24");
        ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        let state_dir = self.dir.join(format!("{tag}-state"));
        self.nodes.push(Node {
            ns,
            underlay_ip,
            state_dir,
        });
        self.nodes.len() - 1
    }

    /// Creates namespace `<base>-<tag>` with only `lo` up and returns its node index, with
    /// `address` as its [`Node::underlay_ip`]. The caller makes its links (see
    /// [`Lab::bridge_ns`]); the lab deletes it and stops what runs in it like any other node.
    pub fn add_bare(&mut self, tag: &str, address: Ipv4Addr) -> usize {
        let ns = format!("{}-{tag}", self.base);
        self.add_namespace(&ns);
        let state_dir = self.dir.join(format!("{tag}-state"));
        self.nodes.push(Node {
            ns,
            underlay_ip: address,
            state_dir,
        });
        self.nodes.len() - 1
    }

    /// The namespace holding the bridge `br0`.
    pub fn bridge_ns(&self) -> &str {
        &self.lan_ns
    }

    fn add_namespace(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// The lab's temporary directory (deleted on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Member `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The shared registry file (`<dir>/registry.json`).
    pub fn registry(&self) -> PathBuf {
        self.dir.join("registry.json")
    }

    /// `file:<registry>`.
    pub fn control_url(&self) -> String {
        format!("file:{}", self.registry().display())
    }

    /// Runs `argv` in the root namespace, waiting at most [`COMMAND_TIMEOUT`].
    pub fn run_host(&self, argv: &[&str]) -> Finished {
        run_in_dir(&self.dir, argv, &[], COMMAND_TIMEOUT)
    }

    /// Runs `argv` inside member `i`'s namespace and captures its output.
    pub fn exec(&self, i: usize, argv: &[&str]) -> Finished {
        self.exec_timeout(i, argv, COMMAND_TIMEOUT)
    }

    /// Like [`Lab::exec`] with an explicit time limit.
    pub fn exec_timeout(&self, i: usize, argv: &[&str], timeout: Duration) -> Finished {
        let mut full = vec!["ip", "netns", "exec", &self.nodes[i].ns];
        full.extend_from_slice(argv);
        run_in_dir(&self.dir, &full, &[], timeout)
    }

    /// Runs the binary in member `i`'s namespace: `lanparty-lite ARGS…`.
    pub fn lp(&self, i: usize, args: &[&str]) -> Finished {
        let mut argv = vec![BIN];
        argv.extend_from_slice(args);
        self.exec(i, &argv)
    }

    /// Creates a party on the lab registry (`create NAME --control URL EXTRA…`) and returns
    /// the join code (the last line of output).
    pub fn create_party(&self, extra: &[&str]) -> String {
        let url = self.control_url();
        let mut argv = vec![BIN, "create", "lan-night", "--control", &url];
        argv.extend_from_slice(extra);
        join_code_of(&self.run_host(&argv).expect_success(), &url)
    }

    /// Runs `create NAME --control CONTROL EXTRA…` inside node `i`'s namespace (for example
    /// against a control server on the lab network) and returns the join code it printed last.
    pub fn create_party_in(&self, i: usize, control: &str, extra: &[&str]) -> String {
        let mut args = vec!["create", "lan-night", "--control", control];
        args.extend_from_slice(extra);
        join_code_of(&self.lp(i, &args).expect_success(), control)
    }

    /// Starts `argv` in member `i`'s namespace in the background; the lab keeps it and stops
    /// it on drop.
    pub fn spawn(&self, i: usize, label: &str, argv: &[&str]) -> Proc {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let index = procs.len();
        let stdout = self.dir.join(format!("{label}-{index}.out"));
        let stderr = self.dir.join(format!("{label}-{index}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns])
            .args(argv)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let pid = child.id();
        procs.push(Started {
            child,
            label: label.to_string(),
            stdout,
            stderr,
            status: None,
        });
        Proc {
            index,
            member: i,
            pid,
        }
    }

    /// Starts `lanparty-lite join CODE --name m<i> --state-dir <node state dir> EXTRA…` in
    /// member `i`'s namespace (without waiting for it to come up).
    pub fn spawn_join(&self, i: usize, code: &str, extra: &[&str]) -> Proc {
        let name = format!("m{i}");
        let state = self.nodes[i].state_dir.display().to_string();
        let mut argv = vec![BIN, "join", code, "--name", &name, "--state-dir", &state];
        argv.extend_from_slice(extra);
        self.spawn(i, &format!("join-m{i}"), &argv)
    }

    /// Starts member `i` and waits until it prints `joined as NAME (IP)`.
    pub fn join(&self, i: usize, code: &str) -> (Proc, Joined) {
        let p = self.spawn_join(i, code, &[]);
        let joined = self.wait_joined(p);
        (p, joined)
    }

    /// Everything `p` has written to stdout so far.
    pub fn stdout(&self, p: Proc) -> String {
        let path = self.with_proc(p, |s| s.stdout.clone());
        String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
    }

    /// Everything `p` has written to stderr so far.
    pub fn stderr(&self, p: Proc) -> String {
        let path = self.with_proc(p, |s| s.stderr.clone());
        String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
    }

    fn with_proc<T>(&self, p: Proc, f: impl FnOnce(&mut Started) -> T) -> T {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut procs[p.index])
    }

    /// The exit status of `p` if it has exited (reaps it).
    pub fn try_exit(&self, p: Proc) -> Option<ExitStatus> {
        self.with_proc(p, |s| {
            if s.status.is_none() {
                s.status = s.child.try_wait().ok().flatten();
            }
            s.status
        })
    }

    /// Waits at most `timeout` for `p` to exit; `None` if it is still running.
    pub fn wait_exit(&self, p: Proc, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit(p) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to `p` (by PID), unless it has already been reaped.
    pub fn signal(&self, p: Proc, signal: libc::c_int) {
        if self.try_exit(p).is_none() {
            kill_pid(p.pid, signal);
        }
    }

    /// Polls `p`'s stdout until a line contains `needle`; returns that line. Panics if `p`
    /// exits first or after `timeout`.
    pub fn wait_line(&self, p: Proc, needle: &str, timeout: Duration) -> String {
        wait_until(
            &format!("{needle:?} on the output of pid {}", p.pid),
            timeout,
            || {
                if let Some(line) = self.stdout(p).lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_string());
                }
                if let Some(status) = self.try_exit(p) {
                    panic!(
                    "pid {} exited ({status}) before printing {needle:?}\nstdout: {}\nstderr: {}",
                    p.pid,
                    self.stdout(p),
                    self.stderr(p)
                );
                }
                Err(format!("stdout so far: {:?}", self.stdout(p)))
            },
        )
    }

    /// Waits until member process `p` prints `joined as NAME (IP)` and parses it.
    pub fn wait_joined(&self, p: Proc) -> Joined {
        let line = self.wait_line(p, "joined as ", JOIN_TIMEOUT);
        parse_joined(&line).unwrap_or_else(|| panic!("cannot parse {line:?}"))
    }

    /// `lanparty-lite status --json` of member `i` (its node state directory), parsed.
    /// Waits until member `i`'s status lists exactly `expected` as connected peers.
    pub fn wait_connected_peers(&self, i: usize, expected: &[Ipv4Addr], slack: Duration) {
        let mut want: Vec<(Ipv4Addr, String)> = expected
            .iter()
            .map(|ip| (*ip, "connected".to_string()))
            .collect();
        want.sort();
        wait_until(
            &format!("m{i}'s status to list {expected:?} as connected"),
            slack,
            || {
                let got = peers(&self.status(i)?);
                if got == want {
                    Ok(())
                } else {
                    Err(format!("peers are {got:?}"))
                }
            },
        );
    }

    /// Member `i`'s `status --json`.
    pub fn status(&self, i: usize) -> Result<Value, String> {
        let state = self.nodes[i].state_dir.display().to_string();
        let out = self.lp(i, &["status", "--json", "--state-dir", &state]);
        if !out.status.success() {
            return Err(format!(
                "status exited {}: {}",
                out.status,
                out.stderr.trim()
            ));
        }
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("status printed invalid JSON ({e}): {}", out.stdout))
    }

    /// One `ping -c 1 -W 1` from member `i` to `ip`.
    pub fn ping_once(&self, i: usize, ip: Ipv4Addr) -> Result<(), String> {
        self.ping_once_waiting(i, ip, 1)
    }

    /// One `ping -c 1 -W <wait_s>` from member `i` to `ip`.
    pub fn ping_once_waiting(&self, i: usize, ip: Ipv4Addr, wait_s: u32) -> Result<(), String> {
        let target = ip.to_string();
        let wait = wait_s.to_string();
        let out = self.exec(i, &["ping", "-n", "-q", "-c", "1", "-W", &wait, &target]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ping {target} from m{i}: {}{}",
                out.stdout, out.stderr
            ))
        }
    }

    /// Pings until a reply comes back (the first packets may only start the handshake).
    pub fn wait_ping(&self, i: usize, ip: Ipv4Addr, timeout: Duration) {
        wait_until(
            &format!("m{i} to get a ping reply from {ip}"),
            timeout,
            || self.ping_once(i, ip),
        );
    }

    /// Whether interface `name` exists in member `i`'s namespace.
    pub fn link_exists(&self, i: usize, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.nodes[i].ns, "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Makes the lab stop `pid` on drop too (SIGTERM, then SIGKILL): for processes it did not
    /// start itself, such as a member that `join --background` detached.
    pub fn adopt(&self, pid: u32) {
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }

    fn stop_adopted(&self) {
        let adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        for pid in adopted.iter().filter(|p| running(**p)) {
            kill_pid(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while adopted.iter().any(|p| running(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in adopted.iter().filter(|p| running(**p)) {
            kill_pid(*pid, libc::SIGKILL);
        }
    }

    fn stop_everything(&self) {
        self.stop_adopted();
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for s in procs.iter_mut() {
            if s.status.is_none() {
                s.status = s.child.try_wait().ok().flatten();
            }
            if s.status.is_none() {
                kill_pid(s.child.id(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + KILL_GRACE;
        for s in procs.iter_mut() {
            while s.status.is_none() && Instant::now() < deadline {
                s.status = s.child.try_wait().ok().flatten();
                if s.status.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if s.status.is_none() {
                kill_pid(s.child.id(), libc::SIGKILL);
                s.status = s.child.wait().ok();
            }
        }
        if std::thread::panicking() {
            for s in procs.iter() {
                let err = fs::read(&s.stderr).unwrap_or_default();
                let out = fs::read(&s.stdout).unwrap_or_default();
                eprintln!(
                    "---- {} (pid {}, {:?}) ----\nstdout:\n{}\nstderr:\n{}",
                    s.label,
                    s.child.id(),
                    s.status,
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&err)
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_everything();
        // Member namespaces first, then the LAN.
        for ns in self.namespaces.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !out.is_ok_and(|o| o.status.success()) {
                eprintln!("lab: could not delete namespace {ns}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The join code `create` printed as its last line, checked to name `control`.
pub fn join_code_of(out: &Finished, control: &str) -> String {
    let code = out
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        code.starts_with(&format!("{control}#")),
        "create printed {:?}; expected the join code for {control} last",
        out.stdout
    );
    code
}

/// Parses `joined as NAME (IP)`.
pub fn parse_joined(line: &str) -> Option<Joined> {
    let rest = line.trim().strip_prefix("joined as ")?;
    let (name, ip) = rest.rsplit_once(" (")?;
    let ip = ip.strip_suffix(')')?.parse().ok()?;
    Some(Joined {
        name: name.to_string(),
        ip,
    })
}

/// The peers of a status document as (virtual IP, state), sorted by IP.
pub fn peers(status: &Value) -> Vec<(Ipv4Addr, String)> {
    let mut out: Vec<(Ipv4Addr, String)> = status["peers"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["virtual_ip"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                p["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// SHA-256 of a file, via coreutils `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Asserts the user-visible shape of a failure: exit code `code`, and exactly one error line
/// on stderr, starting with `lanparty-lite: `, last, and containing every one of `needles`
/// (case-insensitive). Log records (`[time LEVEL target] …`, on by default at info) may come
/// before it; nothing else may.
pub fn assert_fails(out: &Finished, code: i32, needles: &[&str]) {
    assert_eq!(
        out.code(),
        Some(code),
        "`{}` should exit {code}\nstdout: {}\nstderr: {}",
        out.command,
        out.stdout,
        out.stderr
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with('['))
        .collect();
    assert!(
        errors.len() == 1 && lines.last() == errors.first(),
        "`{}` should print exactly one error line, last, starting with `lanparty-lite: `; \
         stderr was:\n{}",
        out.command,
        out.stderr
    );
    let line = errors[0];
    assert!(
        line.starts_with("lanparty-lite: "),
        "error line should start with `lanparty-lite: `: {line:?}"
    );
    let lower = line.to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "error line should mention {needle:?}: {line:?}"
        );
    }
}
