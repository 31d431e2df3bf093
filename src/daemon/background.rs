//! `join --background`: starts the member as a detached process of its own (new session,
//! standard input from /dev/null, output appended to `member.log` in the state directory)
//! and returns once it is up, or has failed, with its reason and exit code.
//!
//! The member is this binary again, with the same arguments less `--background`; so it runs
//! exactly the foreground code path, and the pidfile, lock and socket are its own.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::failure::Failure;

use super::MemberOptions;

/// Log file of a background member, in the state directory.
pub const LOG_FILE: &str = "member.log";
/// A log above this size is moved to `member.log.1` when the next member starts.
const LOG_ROTATE_BYTES: u64 = 1 << 20;
/// How long the member may take to come up (it retries an unreachable control plane for
/// less than this, then exits with its reason).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the member described by `opts` in the background, running this binary with
/// `member_argv` (the command line without `--background`).
pub fn start(opts: &MemberOptions, member_argv: &[String]) -> Result<(), Failure> {
    crate::identity::ensure_private_dir(&opts.state_dir).map_err(|e| {
        Failure::System(format!("state directory {}: {e}", opts.state_dir.display()))
    })?;
    if super::settle_running(opts)?.is_none() {
        return Ok(());
    }
    let log_path = opts.state_dir.join(LOG_FILE);
    let log = open_log(&log_path)?;
    let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe()
        .map_err(|e| Failure::System(format!("cannot find this program: {e}")))?;
    let mut command = Command::new(exe);
    command
        .args(member_argv)
        // The member runs in the foreground, whatever the environment or config file say.
        .env("LANPARTY_BACKGROUND", "false")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(log_failure(&log_path))?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| Failure::System(format!("cannot start the member: {e}")))?;
    let give_up = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            let output = read_from(&log_path, start_offset);
            if status.success() {
                // It found the same party already running (a race with another `join`).
                print!("{output}");
                return Ok(());
            }
            let reason = output
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("lanparty-lite: "))
                .unwrap_or("the member exited; see the log")
                .to_string();
            let code = status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1);
            return Err(Failure::Background(
                code,
                format!("{reason} (log: {})", log_path.display()),
            ));
        }
        if let Some(line) = read_from(&log_path, start_offset)
            .lines()
            .find(|l| l.starts_with("joined as ") || l.starts_with("already running: "))
        {
            println!(
                "{line}; running in the background: pid {}, log {}",
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(Failure::System(format!(
                "the member (pid {}) did not come up within {} s; see {}",
                child.id(),
                START_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_failure(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::System(format!("{}: {e}", path.display()))
}

/// Opens the log for appending (mode 0600), first moving a large one to `member.log.1`.
fn open_log(path: &Path) -> Result<File, Failure> {
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let mut old = PathBuf::from(path);
        old.set_extension("log.1");
        fs::rename(path, &old).map_err(log_failure(path))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(log_failure(path))
}

/// What the log holds after `offset` (this start's output).
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}
