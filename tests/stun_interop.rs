//! `lanparty-lite server --stun` against standard STUN clients on loopback (127.0.0.1 and
//! 127.0.0.2 are both on `lo`): coturn's `turnutils_natdiscovery` (RFC 5780 mapping and
//! filtering tests) and `turnutils_stunclient`, installed by `scripts/deps.sh`. Without a NAT
//! on loopback, a correct server makes the client report endpoint-independent mapping and
//! filtering; that needs OTHER-ADDRESS and every CHANGE-REQUEST reply to come from the right
//! socket. The server is killed by PID on drop.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::TempDir;

/// Longest a client run may take: the filtering tests wait out unanswered requests.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `lanparty-lite server` process, killed by PID on drop.
struct Server {
    child: Child,
    http: SocketAddr,
    stun: Vec<SocketAddr>,
}

impl Server {
    fn start(dir: &TempDir, stun: &[SocketAddr]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lanparty-lite"));
        command
            .args(["server", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.0.join("state"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for addr in stun {
            command.arg("--stun").arg(addr.to_string());
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory; the
        // server dies with this test process should the guard never run.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn the server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            stun: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.stun.len() < stun.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the server printed no `stun on` lines; {:?}",
                    server.child.try_wait()
                )
            });
            if let Some(addr) = line.strip_prefix("listening on ") {
                server.http = addr.parse().unwrap();
            } else if let Some(addr) = line.strip_prefix("stun on ") {
                server.stun.push(addr.parse().unwrap());
            }
        }
        server
    }

    /// `GET /v1/info`, parsed.
    fn info(&self) -> serde_json::Value {
        let mut conn = TcpStream::connect(self.http).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"GET /v1/info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two UDP ports free on both 127.0.0.1 and 127.0.0.2, and the four addresses they make:
/// [A1:P1, A1:P2, A2:P1, A2:P2].
fn grid() -> [SocketAddr; 4] {
    let free = || {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    for _ in 0..100 {
        let (p1, p2) = (free(), free());
        let addrs = [
            ("127.0.0.1", p1),
            ("127.0.0.1", p2),
            ("127.0.0.2", p1),
            ("127.0.0.2", p2),
        ]
        .map(|(ip, port)| SocketAddr::new(ip.parse().unwrap(), port));
        if p1 != p2 && addrs.iter().all(|a| UdpSocket::bind(a).is_ok()) {
            return addrs;
        }
    }
    panic!("no two UDP ports free on 127.0.0.1 and 127.0.0.2");
}

/// Runs a client tool with a time limit; panics with a hint when it is not installed.
fn client(tool: &str, args: &[String]) -> (Output, String) {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e} (install it with `bash scripts/deps.sh`)"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{tool} {args:?} did not finish within {CLIENT_TIMEOUT:?}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn info_lists_the_stun_addresses() {
    let dir = TempDir::new("stun-info");
    let addrs = grid();
    let server = Server::start(&dir, &addrs);
    assert_eq!(server.stun, addrs);
    let listed: Vec<SocketAddr> = server.info()["stun"]
        .as_array()
        .expect("an array of addresses")
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, addrs);
}

#[test]
fn coturn_natdiscovery_sees_endpoint_independent_mapping_and_filtering_on_loopback() {
    let dir = TempDir::new("stun-natdiscovery");
    let addrs = grid();
    let _server = Server::start(&dir, &addrs);
    let args = ["-m", "-f", "-p", &addrs[0].port().to_string(), "127.0.0.1"].map(String::from);
    let (out, text) = client("turnutils_natdiscovery", &args);
    assert!(out.status.success(), "{text}");
    for needle in [
        // OTHER-ADDRESS of the primary socket is the opposite corner of the grid.
        format!("Other addr: : {}", addrs[3]),
        // Its change-IP-and-port reply came from there (filtering test II).
        format!("Response origin: : {}", addrs[3]),
        "NAT with Endpoint Independent Mapping!".into(),
        "NAT with Endpoint Independent Filtering!".into(),
    ] {
        assert!(text.contains(&needle), "no {needle:?} in:\n{text}");
    }
}

#[test]
fn coturn_stunclient_gets_its_reflexive_address_and_a_changed_origin() {
    let dir = TempDir::new("stun-stunclient");
    let addrs = grid();
    let _server = Server::start(&dir, &addrs);
    let args = ["-p", &addrs[0].port().to_string(), "127.0.0.1"].map(String::from);
    let (out, text) = client("turnutils_stunclient", &args);
    assert!(out.status.success(), "{text}");
    for needle in [
        "UDP reflexive addr: 127.0.0.1:".to_string(),
        format!("Response origin: : {}", addrs[0]),
        // Its second request asks for change-IP-and-port with a RESPONSE-PORT.
        format!("Response origin: : {}", addrs[3]),
        // Its third carries 1500 bytes of PADDING, which we refuse rather than echo.
        "error 420".into(),
    ] {
        assert!(text.contains(&needle), "no {needle:?} in:\n{text}");
    }
}

#[test]
fn server_refuses_a_wildcard_stun_address() {
    let dir = TempDir::new("stun-wildcard");
    let out = Command::new(env!("CARGO_BIN_EXE_lanparty-lite"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--stun",
            "0.0.0.0:3478",
            "--state-dir",
        ])
        .arg(dir.0.join("state"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("give a specific IP address"), "{stderr}");
}
