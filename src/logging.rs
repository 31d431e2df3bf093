//! Logging set-up: env_logger to standard error (the default), or to the local syslog
//! daemon (`--syslog`, for routers and services without a log collector of their own).
//!
//! `RUST_LOG` picks what is logged either way (default `info`).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;

use log::Level;

/// The syslog socket of every Linux system (systemd-journald, rsyslog, busybox syslogd, logd).
const SYSLOG_SOCKET: &str = "/dev/log";
/// Facility `daemon` (RFC 5424 section 6.2.1).
const FACILITY_DAEMON: u8 = 3;

/// Starts logging to standard error, or to syslog when `syslog` is set (falling back to
/// standard error, with a warning, if there is no syslog daemon).
pub fn init(syslog: bool) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if syslog {
        match Syslog::connect() {
            Ok(target) => {
                builder
                    .format(|buf, record| {
                        writeln!(
                            buf,
                            "<{}>lanparty-lite[{}]: {}",
                            priority(record.level()),
                            std::process::id(),
                            record.args()
                        )
                    })
                    .target(env_logger::Target::Pipe(Box::new(target)));
            }
            Err(e) => {
                builder.init();
                log::warn!("--syslog: cannot reach {SYSLOG_SOCKET} ({e}); logging to stderr");
                return;
            }
        }
    }
    builder.init();
}

/// PRI = facility * 8 + severity (RFC 5424 section 6.2.1).
fn priority(level: Level) -> u8 {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    FACILITY_DAEMON * 8 + severity
}

/// One datagram per log record to `/dev/log`.
struct Syslog(UnixDatagram);

impl Syslog {
    fn connect() -> io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(SYSLOG_SOCKET)?;
        Ok(Syslog(socket))
    }
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // env_logger hands over one whole record per write; a syslog daemon that is gone
        // or full must never stop the member, so errors are swallowed.
        let record = buf.strip_suffix(b"\n").unwrap_or(buf);
        let _ = self.0.send(record);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_use_the_daemon_facility() {
        assert_eq!(priority(Level::Error), 27);
        assert_eq!(priority(Level::Info), 30);
        assert_eq!(priority(Level::Trace), 31);
    }
}
