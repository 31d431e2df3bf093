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
    builder.format(|buf, record| {
        writeln!(
            buf,
            "[{} {:<5} {}] {}",
            utc_timestamp(std::time::SystemTime::now()),
            record.level(),
            record.target(),
            record.args()
        )
    });
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

/// `2026-12-01T09:13:49Z` for `at` (UTC, seconds; before 1970 reads as 1970).
fn utc_timestamp(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of day `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
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
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(utc_timestamp(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(at(1_795_944_829)), "2026-11-29T09:33:49Z");
        assert_eq!(utc_timestamp(at(4_107_542_399)), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn priorities_use_the_daemon_facility() {
        assert_eq!(priority(Level::Error), 27);
        assert_eq!(priority(Level::Info), 30);
        assert_eq!(priority(Level::Trace), 31);
    }
}
