//! The `file:` backend: one JSON registry shared by every process on a host (or a shared
//! disk). Each change is an exclusive `flock` on `<file>.lock`, a read, one registry
//! operation and an atomic replace; readers never need the lock.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::registry::{JoinRequest, Member, NewParty, Registry};
use super::{unix_now, ControlError, ControlPlane, CreatedParty, JoinCode, Reach, Roster};
use crate::atomic_file;
use crate::random;

/// Largest registry file we will read (guards against pointing at a huge foreign file).
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Longest wait for another process's lock (a stalled disk or a stopped process).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the exclusive lock, giving up after `wait`.
fn lock_within(file: &std::fs::File, wait: std::time::Duration) -> io::Result<()> {
    let give_up = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < give_up => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "locked by another process for 10 s",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// A registry file.
pub struct FileControl {
    path: PathBuf,
}

fn io_error(path: &Path, e: io::Error) -> ControlError {
    ControlError::Unavailable(format!("{}: {e}", path.display()))
}

impl FileControl {
    /// Uses the registry at `path` (created on first write).
    pub fn new(path: PathBuf) -> FileControl {
        FileControl { path }
    }

    /// Reads and validates the registry; a missing or empty file is an empty registry.
    pub fn load(&self) -> Result<Registry, ControlError> {
        let bytes = match fs::metadata(&self.path) {
            Ok(meta) if meta.len() > MAX_FILE_BYTES => {
                return Err(ControlError::Corrupt(format!(
                    "{}: larger than {MAX_FILE_BYTES} bytes, not a registry",
                    self.path.display()
                )))
            }
            Ok(_) => fs::read(&self.path).map_err(|e| io_error(&self.path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(&self.path, e)),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Registry::default());
        }
        let registry: Registry = serde_json::from_slice(&bytes).map_err(|e| {
            ControlError::Corrupt(format!(
                "{}: not a lanparty-lite registry ({e}); left untouched",
                self.path.display()
            ))
        })?;
        registry.check().map_err(|why| {
            ControlError::Corrupt(format!("{}: {why}; left untouched", self.path.display()))
        })?;
        Ok(registry)
    }

    /// Runs one read-modify-write under the exclusive lock. Nothing is written if `op` fails.
    fn update<T>(
        &self,
        op: impl FnOnce(&mut Registry, u64) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let lock_path = {
            let mut p = self.path.clone().into_os_string();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        lock_within(&lock, LOCK_WAIT).map_err(|e| io_error(&lock_path, e))?;
        atomic_file::remove_strays(&self.path);
        let mut registry = self.load()?;
        let before = registry.clone();
        let out = op(&mut registry, unix_now())?;
        if registry != before {
            registry.check().map_err(|why| {
                ControlError::Corrupt(format!("refusing to write an inconsistent registry: {why}"))
            })?;
            let mode = fs::metadata(&self.path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0o600);
            let mut bytes = serde_json::to_vec_pretty(&registry)
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            bytes.push(b'\n');
            atomic_file::write(&self.path, &bytes, mode).map_err(|e| io_error(&self.path, e))?;
        }
        drop(lock);
        Ok(out)
    }
}

impl ControlPlane for FileControl {
    fn create_party(&mut self, new: NewParty) -> Result<CreatedParty, ControlError> {
        let id = random::id(10).map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let path = fs::canonicalize(dir)
            .map(|dir| dir.join(self.path.file_name().unwrap_or_default()))
            .map_err(|e| io_error(&self.path, e))?;
        let control = format!("file:{}", path.display());
        // The code must parse again: no spaces or '#' in the registry path.
        if JoinCode::parse(&format!("{control}#{id}")).is_err() {
            return Err(ControlError::Invalid(format!(
                "registry path {} cannot go into a join code (no spaces or '#')",
                path.display()
            )));
        }
        let party = self.update(|r, now| r.create_party(id, new, now).cloned())?;
        let code = JoinCode {
            control,
            party_id: party.id.clone(),
            secret: None,
        };
        Ok(CreatedParty {
            id: party.id,
            name: party.name,
            subnet: party.subnet,
            max_peers: party.max_peers,
            join_code: code.to_string(),
        })
    }

    fn join(&mut self, party_id: &str, req: JoinRequest) -> Result<Member, ControlError> {
        self.update(|r, now| r.join(party_id, req, now))
    }

    fn heartbeat(
        &mut self,
        party_id: &str,
        member_id: &str,
        endpoints: &[SocketAddr],
        reach: &Reach,
    ) -> Result<(), ControlError> {
        self.update(|r, now| r.heartbeat(party_id, member_id, endpoints.to_vec(), *reach, now))
    }

    fn leave(&mut self, party_id: &str, member_id: &str) -> Result<(), ControlError> {
        self.update(|r, now| r.leave(party_id, member_id, now))
    }

    fn roster(&mut self, party_id: &str) -> Result<Roster, ControlError> {
        self.load()?.roster(party_id, unix_now())
    }

    fn try_clone(&self) -> Box<dyn ControlPlane> {
        Box::new(FileControl::new(self.path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Key;
    use std::collections::BTreeSet;

    fn temp_file(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lp-file-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("registry.json")
    }

    fn new_party() -> NewParty {
        NewParty {
            name: "friday".into(),
            subnet: "10.66.0.0/16".parse().unwrap(),
            max_peers: 1000,
            secret: None,
        }
    }

    fn join_req(n: u32) -> JoinRequest {
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        JoinRequest {
            name: format!("m{n}"),
            public_key: Key(k),
            endpoints: vec![],
            reach: Default::default(),
        }
    }

    #[test]
    fn concurrent_joins_from_threads_never_share_an_address() {
        let path = temp_file("threads");
        let party = FileControl::new(path.clone())
            .create_party(new_party())
            .unwrap();
        let handles: Vec<_> = (0..8u32)
            .map(|t| {
                let path = path.clone();
                let id = party.id.clone();
                std::thread::spawn(move || {
                    let mut c = FileControl::new(path);
                    (0..10u32)
                        .map(|i| c.join(&id, join_req(t * 100 + i)).unwrap().virtual_ip)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ips: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 80);
        let roster = FileControl::new(path).roster(&party.id).unwrap();
        assert_eq!(roster.members.len(), 80);
    }

    #[test]
    fn corrupt_file_is_reported_and_left_alone() {
        let path = temp_file("corrupt");
        fs::write(&path, b"{\"hello\": 1}").unwrap();
        let mut c = FileControl::new(path.clone());
        let err = c.create_party(new_party()).unwrap_err();
        assert!(matches!(err, ControlError::Corrupt(_)), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"{\"hello\": 1}");
        fs::write(&path, b"\x00\x01garbage").unwrap();
        assert!(matches!(c.roster("x"), Err(ControlError::Corrupt(_))));
    }

    #[test]
    fn failed_operation_writes_nothing() {
        let path = temp_file("nowrite");
        let mut c = FileControl::new(path.clone());
        let party = c
            .create_party(NewParty {
                max_peers: 1,
                ..new_party()
            })
            .unwrap();
        c.join(&party.id, join_req(1)).unwrap();
        let before = fs::read(&path).unwrap();
        assert_eq!(
            c.join(&party.id, join_req(2)),
            Err(ControlError::PartyFull(1))
        );
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn join_code_names_the_absolute_registry_path() {
        let path = temp_file("code");
        let party = FileControl::new(path.clone())
            .create_party(new_party())
            .unwrap();
        let code = JoinCode::parse(&party.join_code).unwrap();
        assert_eq!(code.control, format!("file:{}", path.display()));
        assert_eq!(code.party_id, party.id);
    }
}
