//! The real relay (`lanparty-lite relay`) next to the real control server on 127.0.0.1, with
//! plain UDP sockets in the test playing members (driven by the real member relay client,
//! `relay::client::RelayClient`, and tickets fetched over HTTP) and attackers (raw bytes).
//!
//! No assertion waits for "nothing arrived": after the datagrams that must not get through,
//! a legitimate datagram is sent through the same relay as a fence. The relay handles its one
//! socket in order and loopback delivers at once, so once the fence arrives, anything the
//! relay would have sent earlier is already queued.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use lanparty_lite::control::http::HttpControl;
use lanparty_lite::control::{ControlPlane, JoinCode, JoinRequest, NewParty};
use lanparty_lite::identity::Key;
use lanparty_lite::relay::client::{Grant, RelayClient, State};
use lanparty_lite::relay::ticket::{BindKey, RelaySecret};
use lanparty_lite::wire::relay::{self as frame, Frame, MemberId, RefuseReason};
use support::TempDir;
use x25519_dalek::{PublicKey, StaticSecret};

const SECRET: &str = "a relay secret shared by server and relays, 32+ chars";
/// Start-up and per-exchange bound; a relay that never answers fails the test, not hangs it.
const WAIT: Duration = Duration::from_secs(15);

/// A child process killed by PID on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts the binary with `args`, stderr to `log`, and waits for a stdout line starting
    /// with `ready`; returns the rest of that line as an address.
    fn start(args: &[&str], log: PathBuf, ready: &'static str) -> (Proc, SocketAddr) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lanparty-lite"));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it only makes the child die
        // with this test process should the guard never run.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix(ready) {
                    let _ = tx.send(addr.trim().to_string());
                    break;
                }
            }
            for _ in lines {}
        });
        let proc = Proc { child, log };
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr.parse().expect("an address"),
            Err(_) => panic!("{args:?} did not start; log:\n{}", proc.log_text()),
        };
        (proc, addr)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`; returns that line.
    fn wait_for_log(&self, needle: &str) -> String {
        let give_up = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.log_text().lines().rev().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < give_up,
                "no {needle:?} in the log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control server and a relay sharing the secret.
struct Lab {
    _dir: TempDir,
    url: String,
    server: Proc,
    relay: Proc,
    relay_addr: SocketAddr,
}

impl Lab {
    fn start(tag: &str, relay_flags: &[&str]) -> Lab {
        let dir = TempDir::new(tag);
        let secret_file = dir.0.join("relay.secret");
        fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let secret_path = secret_file.to_str().unwrap().to_string();
        let state = dir.0.join("state");
        let (server, server_addr) = Proc::start(
            &[
                "server",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                state.to_str().unwrap(),
                "--rate-limit",
                "0",
                "--relay-secret-file",
                &secret_path,
            ],
            dir.0.join("server.log"),
            "listening on ",
        );
        let url = format!("http://{server_addr}");
        let mut args = vec![
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            &secret_path,
            "--control",
            &url,
            "--region",
            "test-region",
        ];
        args.extend_from_slice(relay_flags);
        let (relay, relay_addr) =
            Proc::start(&args, dir.0.join("relay.log"), "relay listening on ");
        Lab {
            _dir: dir,
            url,
            server,
            relay,
            relay_addr,
        }
    }

    fn party(&self, name: &str) -> (String, String) {
        let created = lanparty_lite::control::open(&self.url, None, None)
            .unwrap()
            .create_party(NewParty {
                name: name.into(),
                subnet: "10.66.0.0/16".parse().unwrap(),
                max_peers: 16,
                secret: None,
            })
            .unwrap();
        let code = JoinCode::parse(&created.join_code).unwrap();
        (created.id, code.secret.unwrap())
    }

    /// Member `n` of `party`: joined, with a fresh relay ticket and its own UDP socket.
    fn member(&self, party: &(String, String), n: u8) -> Member {
        let secret = StaticSecret::from([n; 32]);
        let public = Key(PublicKey::from(&secret).to_bytes());
        let mut control = HttpControl::new(&self.url, Some(party.1.clone()), Some(secret)).unwrap();
        let record = control
            .join(
                &party.0,
                JoinRequest {
                    name: format!("member{n}"),
                    public_key: public,
                    endpoints: vec![],
                },
            )
            .unwrap();
        let grant = control.relay_ticket(&party.0).expect("a relay ticket");
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut client = RelayClient::new(self.relay_addr, Instant::now());
        client.handle_ticket(grant.clone(), Instant::now());
        Member {
            id: MemberId::from_hex(&record.id).unwrap(),
            socket,
            client,
            grant,
            sent: Vec::new(),
        }
    }
}

struct Member {
    id: MemberId,
    socket: UdpSocket,
    client: RelayClient,
    grant: Grant,
    /// Every datagram the client sent.
    sent: Vec<Vec<u8>>,
}

impl Member {
    /// Drives the client until the relay answered its bind; returns the final state.
    fn bind(&mut self) -> State {
        let give_up = Instant::now() + WAIT;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            self.client.handle_timeout(now);
            while let Some(tx) = self.client.poll_transmit(now) {
                self.socket.send_to(tx.payload, tx.dst).unwrap();
                self.sent.push(tx.payload.to_vec());
            }
            match self.client.state() {
                State::Bound { .. } | State::Refused(_) => break,
                _ => assert!(Instant::now() < give_up, "no answer to the bind"),
            }
            if let Ok((n, src)) = self.socket.recv_from(&mut buf) {
                self.client.handle_datagram(src, &buf[..n], Instant::now());
            }
        }
        self.socket.set_read_timeout(Some(WAIT)).unwrap();
        self.client.state()
    }

    fn send_to_member(&self, to: MemberId, payload: &[u8]) {
        let mut out = vec![0u8; payload.len() + frame::DATA_HEADER_LEN];
        let tx = self
            .client
            .encapsulate(to, payload, &mut out)
            .expect("bound");
        self.socket.send_to(tx.payload, tx.dst).unwrap();
    }

    /// The next datagram, unwrapped: (sender, payload).
    fn recv(&mut self) -> (MemberId, Vec<u8>) {
        let mut buf = [0u8; 2048];
        let (n, src) = self
            .socket
            .recv_from(&mut buf)
            .expect("a datagram through the relay");
        let got = self
            .client
            .handle_datagram(src, &buf[..n], Instant::now())
            .unwrap_or_else(|| panic!("not a data frame: {:?}", &buf[..n]));
        (got.from, got.payload.to_vec())
    }

    /// Whether a datagram is waiting right now (no waiting).
    fn has_pending(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let pending = self.socket.recv_from(&mut buf).is_ok();
        self.socket.set_nonblocking(false).unwrap();
        pending
    }
}

/// A bind for `ticket` under `bind_key`, stamped with the current time.
fn raw_bind(ticket: &[u8], bind_key: [u8; 32]) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut buf = vec![0u8; 512];
    let signed = frame::emit_bind_signed(&mut buf, now_ms, ticket).unwrap();
    let tag = BindKey::new(bind_key).tag(&buf[..signed]);
    let len = frame::finish_tagged(&mut buf, signed, &tag).unwrap();
    buf.truncate(len);
    buf
}

fn stranger() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn has_pending(socket: &UdpSocket) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let pending = socket.recv_from(&mut buf).is_ok();
    socket.set_nonblocking(false).unwrap();
    pending
}

#[test]
fn bound_members_of_a_party_reach_each_other_and_an_unticketed_sender_gets_nothing() {
    let lab = Lab::start("relay-unticketed", &[]);
    let party = lab.party("friday");
    let mut a = lab.member(&party, 1);
    let mut b = lab.member(&party, 2);
    assert!(matches!(a.bind(), State::Bound { .. }));
    assert!(matches!(b.bind(), State::Bound { .. }));
    a.send_to_member(b.id, b"hello b");
    assert_eq!(b.recv(), (a.id, b"hello b".to_vec()));

    let evil = stranger();
    let mut data = vec![frame::DATA_TO];
    data.extend_from_slice(&b.id.0);
    data.extend_from_slice(b"spoofed");
    let forger = RelaySecret::new(b"not the relay secret but 32 bytes long");
    let forged = forger
        .issue(&party.0, a.id, [1; 32], u64::MAX / 2000)
        .unwrap();
    let sniffed_ticket = a.grant.ticket.clone();
    for junk in [
        data.clone(),
        vec![frame::KEEPALIVE, 0, 0, 0, 0, 0, 0, 0, 1],
        raw_bind(&forged.ticket, forged.bind_key),
        raw_bind(&sniffed_ticket, [0; 32]),
        vec![0xA0; 300],
        vec![0xA3],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        evil.send_to(&junk, lab.relay_addr).unwrap();
    }
    a.send_to_member(b.id, b"fence");
    assert_eq!(
        b.recv(),
        (a.id, b"fence".to_vec()),
        "nothing from the stranger came first"
    );
    assert!(!has_pending(&evil), "the stranger got an answer");

    lab.relay.signal(libc::SIGUSR1);
    let stats = lab.relay.wait_for_log("relay stats:");
    assert!(stats.contains("2/512 clients"), "{stats}");
    assert!(stats.contains("forwarded 2 packets"), "{stats}");
    assert!(stats.contains("2 unbound"), "{stats}");
    assert!(stats.contains("1 bad ticket, 1 bad proof"), "{stats}");
}

#[test]
fn a_member_of_party_a_cannot_reach_a_member_of_party_b() {
    let lab = Lab::start("relay-parties", &[]);
    let party_a = lab.party("a");
    let party_b = lab.party("b");
    let mut a = lab.member(&party_a, 1);
    let mut b = lab.member(&party_b, 2);
    let mut c = lab.member(&party_b, 3);
    for m in [&mut a, &mut b, &mut c] {
        assert!(matches!(m.bind(), State::Bound { .. }));
    }
    a.send_to_member(b.id, b"across parties");
    c.send_to_member(b.id, b"fence");
    assert_eq!(b.recv(), (c.id, b"fence".to_vec()));
    assert!(!b.has_pending());
}

#[test]
fn expired_and_forged_tickets_are_refused() {
    let lab = Lab::start("relay-tickets", &[]);
    let party = lab.party("friday");
    let mut b = lab.member(&party, 2);
    let mut c = lab.member(&party, 3);
    assert!(matches!(b.bind(), State::Bound { .. }));
    assert!(matches!(c.bind(), State::Bound { .. }));
    // An expired ticket signed with the real secret: the proof holds, so the relay says why.
    let relay_secret = RelaySecret::new(SECRET.as_bytes());
    let expired = relay_secret
        .issue(&party.0, MemberId([1; 6]), [1; 32], 1_000_000)
        .unwrap();
    let late = stranger();
    late.send_to(&raw_bind(&expired.ticket, expired.bind_key), lab.relay_addr)
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = late.recv_from(&mut buf).expect("a refusal");
    match Frame::parse(&buf[..n]).unwrap() {
        Frame::Refused {
            reason,
            tag,
            signed,
            ..
        } => {
            assert_eq!(reason, RefuseReason::Expired);
            assert!(BindKey::new(expired.bind_key).verify(signed, tag));
        }
        other => panic!("{other:?}"),
    }
    // A forged ticket: no answer, and the forger cannot send through the relay.
    let forged = RelaySecret::new(b"a guessed secret that is long enough!")
        .issue(&party.0, MemberId([1; 6]), [1; 32], u64::MAX / 2000)
        .unwrap();
    let forger = stranger();
    forger
        .send_to(&raw_bind(&forged.ticket, forged.bind_key), lab.relay_addr)
        .unwrap();
    let mut data = vec![frame::DATA_TO];
    data.extend_from_slice(&b.id.0);
    data.extend_from_slice(b"forged");
    forger.send_to(&data, lab.relay_addr).unwrap();
    c.send_to_member(b.id, b"fence");
    assert_eq!(b.recv(), (c.id, b"fence".to_vec()));
    assert!(!has_pending(&forger));
}

#[test]
fn a_replayed_bind_from_another_address_does_not_move_the_binding() {
    let lab = Lab::start("relay-replay", &[]);
    let party = lab.party("friday");
    let mut a = lab.member(&party, 1);
    let mut b = lab.member(&party, 2);
    assert!(matches!(a.bind(), State::Bound { .. }));
    assert!(matches!(b.bind(), State::Bound { .. }));
    let sniffed = a.sent.last().unwrap().clone();
    assert_eq!(sniffed[0], frame::BIND);
    let attacker = stranger();
    attacker.send_to(&sniffed, lab.relay_addr).unwrap();
    b.send_to_member(a.id, b"still for a");
    assert_eq!(a.recv(), (b.id, b"still for a".to_vec()));
    assert!(!has_pending(&attacker), "the replay was answered");
}

#[test]
fn the_per_client_packet_rate_holds() {
    let lab = Lab::start("relay-rate", &["--client-pps", "20"]);
    let party = lab.party("friday");
    let mut a = lab.member(&party, 1);
    let mut b = lab.member(&party, 2);
    let mut c = lab.member(&party, 3);
    for m in [&mut a, &mut b, &mut c] {
        assert!(matches!(m.bind(), State::Bound { .. }));
    }
    // Batches small enough for the relay's socket buffer, each closed by a fence from C.
    let started = Instant::now();
    let mut from_a = 0u64;
    for batch in 0..6u32 {
        for i in 0..50u32 {
            a.send_to_member(b.id, &(batch * 50 + i).to_be_bytes());
        }
        c.send_to_member(b.id, b"fence");
        loop {
            match b.recv() {
                (id, _) if id == a.id => from_a += 1,
                (id, payload) => {
                    assert_eq!((id, payload), (c.id, b"fence".to_vec()));
                    break;
                }
            }
        }
    }
    // A burst of one second's worth, plus what the bucket refilled while we sent.
    let refilled = (started.elapsed().as_secs_f64() * 20.0).ceil() as u64;
    assert!(
        (20..=20 + refilled).contains(&from_a),
        "{from_a} of 300 got through (limit 20/s, {refilled} refilled)"
    );
}

#[test]
fn max_clients_holds_and_the_relay_is_listed_with_its_load() {
    let lab = Lab::start("relay-full", &["--max-clients", "2"]);
    let party = lab.party("friday");
    let mut a = lab.member(&party, 1);
    let mut b = lab.member(&party, 2);
    let mut c = lab.member(&party, 3);
    assert!(matches!(a.bind(), State::Bound { .. }));
    assert!(matches!(b.bind(), State::Bound { .. }));
    assert_eq!(c.bind(), State::Refused(RefuseReason::Full));

    let control = HttpControl::new(&lab.url, None, None).unwrap();
    let give_up = Instant::now() + WAIT;
    let listed = loop {
        let relays = control.relays().unwrap();
        if let Some(r) = relays.iter().find(|r| r.clients == 2) {
            break r.clone();
        }
        assert!(Instant::now() < give_up, "relay list: {relays:?}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed.address, lab.relay_addr);
    assert_eq!(
        (listed.capacity, listed.region.as_str()),
        (2, "test-region")
    );
    assert!(lab.server.log_text().contains("listening"), "server log");
}

#[test]
fn sigterm_stops_the_relay_cleanly() {
    let mut lab = Lab::start("relay-stop", &[]);
    lab.relay.signal(libc::SIGTERM);
    let give_up = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = lab.relay.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < give_up, "the relay did not stop");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}: {}", lab.relay.log_text());
    assert!(lab.relay.log_text().contains("relay stopped"));
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lanparty-lite"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn relay_refuses_bad_options_with_one_line_errors() {
    let dir = TempDir::new("relay-opts");
    let good = dir.0.join("good.secret");
    fs::write(&good, SECRET).unwrap();
    let short = dir.0.join("short.secret");
    fs::write(&short, "short").unwrap();
    let g = good.to_str().unwrap();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            g,
            "--control",
            "http://127.0.0.1:9",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |args: Vec<String>, code: i32, needle: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&refs);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{refs:?}: {err}");
        assert!(err.contains(needle), "{refs:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{refs:?}: {err}");
    };
    check(vec!["relay".into()], 2, "--listen");
    check(base(&["--bogus"]), 2, "unknown option");
    check(base(&["--max-clients", "0"]), 3, "--max-clients");
    check(base(&["--max-clients", "many"]), 3, "--max-clients");
    check(base(&["--client-pps", "0"]), 3, "--client-pps");
    check(
        base(&["--client-bytes-per-s", "100"]),
        3,
        "--client-bytes-per-s",
    );
    check(base(&["--region", "no spaces"]), 3, "--region");
    check(base(&["--advertise", "0.0.0.0:1"]), 3, "--advertise");
    let mut no_control = base(&[]);
    no_control[6] = "ftp://x".into();
    check(no_control, 3, "--control");
    let mut wildcard = base(&[]);
    wildcard[2] = "0.0.0.0:0".into();
    check(wildcard, 3, "--advertise");
    let mut short_secret = base(&[]);
    short_secret[4] = short.to_str().unwrap().into();
    check(short_secret, 3, "at least 32");
    let mut missing = base(&[]);
    missing[4] = dir.0.join("absent").to_str().unwrap().into();
    check(missing, 3, "--secret-file");
    let help = run(&["relay", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("Usage: lanparty-lite relay"));
}
