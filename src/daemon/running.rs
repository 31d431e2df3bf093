//! A member that is already running with our state directory: find it, and decide what a
//! second `join` does (cron runs `join` every few minutes; it must be a no-op when the member
//! is up, and must not silently switch parties).

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::JoinCode;
use crate::failure::Failure;
use crate::status::Status;

use super::local_api::{self, Request};

/// The lock a running member holds for its whole life.
pub const LOCK_FILE: &str = "member.lock";
/// The running member's PID (informational; the lock is what counts).
pub const PID_FILE: &str = "member.pid";
/// How long a member that holds the lock may take to answer `status` (it may be starting).
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long a replaced member may take to leave.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// What a second `join` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing runs here: go ahead.
    Start,
    /// The same party already runs here: say so and exit 0.
    AlreadyUp(String),
    /// Another party runs here and `--replace` was given: make it leave, then start.
    Replace,
    /// Another party runs here: refuse.
    Refuse(String),
}

/// Decides from the running member's status (if any).
pub fn decide(running: Option<&Status>, code: &JoinCode, replace: bool) -> Decision {
    let Some(status) = running else {
        return Decision::Start;
    };
    let same = JoinCode::parse(&status.party.join_code)
        .is_ok_and(|c| c.control == code.control && c.party_id == code.party_id);
    let who = format!(
        "party {:?} ({}) as {} ({})",
        status.party.name, status.party.id, status.self_.name, status.self_.virtual_ip
    );
    if same {
        Decision::AlreadyUp(format!("already running: {who}"))
    } else if replace {
        Decision::Replace
    } else {
        Decision::Refuse(format!(
            "a member of {who} is already running with this state directory; \
             use --replace to leave that party and join this one, or another --state-dir"
        ))
    }
}

/// The PID in the running member's pidfile, if any.
pub fn pid(state_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state_dir.join(PID_FILE)).ok()?;
    text.trim().parse().ok()
}

/// Whether some process holds the member lock of `state_dir`.
pub fn is_locked(state_dir: &Path) -> bool {
    File::open(state_dir.join(LOCK_FILE)).is_ok_and(|f| f.try_lock_shared().is_err())
}

/// The status of the member running with `state_dir`, or `None` if none runs. A member that
/// holds the lock but does not answer within a few seconds is an error.
pub fn find(state_dir: &Path) -> Result<Option<Status>, Failure> {
    let give_up = Instant::now() + ANSWER_WAIT;
    loop {
        if !is_locked(state_dir) {
            return Ok(None);
        }
        let answer = local_api::call(state_dir, Request::Status).and_then(|line| {
            serde_json::from_str::<Status>(&line)
                .map_err(|e| Failure::System(format!("unexpected status from the member: {e}")))
        });
        match answer {
            Ok(status) => return Ok(Some(status)),
            Err(e) if Instant::now() >= give_up => {
                return Err(Failure::System(format!(
                "a member holds {} but does not answer ({e}); stop it or use another --state-dir",
                state_dir.join(LOCK_FILE).display()
            )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Asks the member running with `state_dir` to leave and waits until it has stopped.
pub fn stop(state_dir: &Path) -> Result<(), Failure> {
    local_api::call(state_dir, Request::Leave)?;
    let give_up = Instant::now() + LEAVE_WAIT;
    while is_locked(state_dir) {
        if Instant::now() >= give_up {
            return Err(Failure::System(format!(
                "the member did not stop within {} s",
                LEAVE_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{PartyStatus, SelfStatus};

    fn running(code: &str) -> Status {
        Status {
            party: PartyStatus {
                id: "abc".into(),
                name: "friday".into(),
                join_code: code.into(),
            },
            self_: SelfStatus {
                id: "1".into(),
                name: "alice".into(),
                public_key: "K".into(),
                virtual_ip: "10.66.0.1".parse().unwrap(),
                interface: "lp0".into(),
                listen_port: 1,
                broadcast: Default::default(),
                nat_type: "unknown".into(),
                public_endpoint: None,
                relay: None,
                relays: vec![],
            },
            peers: vec![],
        }
    }

    fn code(text: &str) -> JoinCode {
        JoinCode::parse(text).unwrap()
    }

    #[test]
    fn nothing_running_means_start() {
        assert_eq!(
            decide(None, &code("file:/r.json#abc"), false),
            Decision::Start
        );
    }

    #[test]
    fn the_same_party_again_is_already_up() {
        let status = running("http://192.0.2.1:7777#abc.secretone");
        let again = code("http://192.0.2.1:7777#abc.secretone");
        assert_eq!(
            decide(Some(&status), &again, false),
            Decision::AlreadyUp(
                "already running: party \"friday\" (abc) as alice (10.66.0.1)".into()
            )
        );
        assert!(matches!(
            decide(Some(&status), &again, true),
            Decision::AlreadyUp(_)
        ));
    }

    #[test]
    fn another_party_is_refused_unless_replacing() {
        let status = running("file:/r.json#abc");
        for other in ["file:/r.json#xyz", "file:/other.json#abc"] {
            let Decision::Refuse(why) = decide(Some(&status), &code(other), false) else {
                panic!("{other} was not refused");
            };
            assert!(why.contains("--replace") && why.contains("friday"), "{why}");
            assert_eq!(decide(Some(&status), &code(other), true), Decision::Replace);
        }
    }
}
