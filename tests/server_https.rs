//! `https://` control URLs: the real client talks TLS (rustls) to a control server behind a
//! TLS terminator (socat) on loopback, trusting a private CA given in `LANPARTY_CA_FILE`;
//! without that CA the certificate is refused. Needs `openssl` and `socat`
//! (`scripts/deps.sh` installs them). Only with the `tls` feature: without it, `https://` is
//! refused before any connection (`control::http`'s unit tests).
#![cfg(feature = "tls")]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanparty_lite::control::registry::JoinRequest;
use lanparty_lite::control::{self, JoinCode};
use lanparty_lite::identity::Key;

const BIN: &str = env!("CARGO_BIN_EXE_lanparty-lite");

/// Processes and files of one test, removed on drop (also when the test panics).
struct Fixture {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private CA and a certificate for `localhost` signed by it.
fn make_certificates(dir: &Path) {
    sh(
        dir,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -subj /CN=lanparty-test-ca -days 2 2>/dev/null",
    );
    sh(
        dir,
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null",
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    sh(
        dir,
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 2 -extfile san.ext 2>/dev/null",
    );
}

fn start(fx: &mut Fixture) -> u16 {
    let mut server = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--state-dir",
        ])
        .arg(fx.dir.join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    fx.children.push(server);
    let http_addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let tls_port = free_port();
    let socat = Command::new("socat")
        .arg(format!(
            "openssl-listen:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            fx.dir.join("server.pem").display(),
            fx.dir.join("server.key").display()
        ))
        .arg(format!("tcp:{http_addr}"))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (scripts/deps.sh installs it)");
    fx.children.push(socat);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline, "TLS terminator did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    tls_port
}

#[test]
fn https_control_urls_work_with_a_trusted_ca_and_fail_without() {
    let dir = std::env::temp_dir().join(format!("lp-https-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut fx = Fixture {
        dir: dir.clone(),
        children: Vec::new(),
    };
    make_certificates(&dir);
    let port = start(&mut fx);
    let url = format!("https://localhost:{port}");
    let ca = dir.join("ca.pem");

    let untrusted = Command::new(BIN)
        .args(["create", "friday", "--control", &url])
        .env_remove("LANPARTY_CA_FILE")
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(4));
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    let created = Command::new(BIN)
        .args(["create", "friday", "--control", &url])
        .env("LANPARTY_CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let code_line = String::from_utf8(created.stdout).unwrap();
    let code = JoinCode::parse(code_line.lines().last().unwrap()).unwrap();
    assert_eq!(code.control, url);

    // SAFETY of set_var: this test binary has this one test, so no thread reads the env.
    std::env::set_var("LANPARTY_CA_FILE", &ca);
    let secret = x25519_dalek::StaticSecret::from([7u8; 32]);
    let public = Key(x25519_dalek::PublicKey::from(&secret).to_bytes());
    let mut client = control::open(&code.control, code.secret.clone(), Some(secret)).unwrap();
    let member = client
        .join(
            &code.party_id,
            JoinRequest {
                name: "alice".into(),
                public_key: public,
                endpoints: vec![],
                reach: Default::default(),
            },
        )
        .unwrap();
    let roster = client.roster(&code.party_id).unwrap();
    assert_eq!(roster.members.len(), 1);
    assert_eq!(roster.members[0].virtual_ip, member.virtual_ip);
    client.leave(&code.party_id, &member.id).unwrap();
}
