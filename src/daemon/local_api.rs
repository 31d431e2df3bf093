//! The local API: a Unix socket in the state directory that `status` and `leave` use to talk
//! to the running member. Only the member's own user (or root) may use it: the state
//! directory is 0700, the socket 0600, and the peer's uid is checked on every connection.
//!
//! Protocol: one JSON request line (`{"command":"status"}` or `{"command":"leave"}`), one JSON
//! response line (the status document, `{"ok":true}`, or `{"error":"…"}`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failure::Failure;
use crate::status::Status;

/// Socket file name inside the state directory.
pub const SOCKET_FILE: &str = "lanparty-lite.sock";
/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 4096;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A request on the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Return the status document.
    Status,
    /// Leave the party and stop the member.
    Leave,
}

#[derive(Serialize, Deserialize)]
struct RequestLine {
    command: Request,
}

/// What the daemon does for each request.
pub trait Handler: Send + 'static {
    /// Current status.
    fn status(&self) -> Result<Status, String>;
    /// Begin leaving.
    fn leave(&self);
}

/// Path of the socket for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Binds the socket, replacing a stale one left by a crash; `None` if a member is running.
/// Called before anything else touches the party, so a second `join` changes nothing.
pub fn bind(state_dir: &Path) -> Result<Option<(UnixListener, PathBuf, std::fs::File)>, Failure> {
    // One member per state dir: an exclusive lock held for the daemon's life, taken before
    // the socket is touched, so two racing `join`s cannot both pass the check.
    let lock_path = state_dir.join(super::running::LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            Failure::System(format!(
                "state directory {}: cannot create member.lock: {e}",
                state_dir.display()
            ))
        })?;
    let path = socket_path(state_dir);
    if lock.try_lock().is_err() || UnixStream::connect(&path).is_ok() {
        return Ok(None);
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| Failure::System(format!("cannot create {}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Failure::System(format!("{}: {e}", path.display())))?;
    Ok(Some((listener, path, lock)))
}

/// Serves requests on `listener` from a thread of its own.
pub fn serve(listener: UnixListener, handler: impl Handler) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("local-api".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &handler) {
                    log::debug!("local api: {e}");
                }
            }
        })
        .map(|_| ())
}

fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn answer(mut stream: UnixStream, handler: &impl Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let uid = peer_uid(&stream)?;
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    let reply = if uid != own && uid != 0 {
        error_line("permission denied")
    } else {
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
        match serde_json::from_str::<RequestLine>(&line) {
            Ok(RequestLine {
                command: Request::Status,
            }) => match handler.status() {
                Ok(status) => serde_json::to_string(&status).unwrap_or_default(),
                Err(e) => error_line(&e),
            },
            Ok(RequestLine {
                command: Request::Leave,
            }) => {
                handler.leave();
                r#"{"ok":true}"#.to_string()
            }
            Err(_) => error_line(
                "bad request: expected {\"command\":\"status\"} or {\"command\":\"leave\"}",
            ),
        }
    };
    stream.write_all(reply.as_bytes())?;
    stream.write_all(b"\n")
}

fn error_line(message: &str) -> String {
    #[derive(serde::Serialize)]
    struct ErrorLine<'a> {
        error: &'a str,
    }
    serde_json::to_string(&ErrorLine { error: message }).unwrap_or_default()
}

/// Sends `request` to the member running with `state_dir` and returns its response line.
pub fn call(state_dir: &Path, request: Request) -> Result<String, Failure> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Failure::NotRunning(format!(
            "no member is running with state directory {}",
            state_dir.display()
        )),
        _ => Failure::System(format!(
            "cannot reach the member at {}: {e}",
            path.display()
        )),
    })?;
    let io_failure = |e: io::Error| Failure::System(format!("local api: {e}"));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io_failure)?;
    let line = serde_json::to_string(&RequestLine { command: request }).unwrap_or_default();
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io_failure)?;
    let mut response = String::new();
    BufReader::new(stream)
        .read_line(&mut response)
        .map_err(io_failure)?;
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: String,
    }
    if let Ok(Refusal { error }) = serde_json::from_str::<Refusal>(&response) {
        return Err(Failure::System(format!("member refused: {error}")));
    }
    Ok(response)
}
