//! The control server's crash-safe state in its state directory: `registry.json` (replaced
//! atomically after every batch of changes, before any reply to them leaves), the static key
//! `private.key`, and `server.lock`, held while a server runs so two cannot share the files.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::control::file::FileControl;
use crate::control::registry::Registry;
use crate::failure::Failure;

/// The state directory of a running server.
pub struct Store {
    registry_path: PathBuf,
    _lock: File,
}

impl Store {
    /// Locks `dir` for this process and loads the registry (empty if none yet).
    pub fn open(dir: &Path) -> Result<(Store, Registry), Failure> {
        let lock_path = dir.join("server.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Failure::System(format!("{}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            Failure::System(format!(
                "another server is running with state directory {}",
                dir.display()
            ))
        })?;
        let registry_path = dir.join("registry.json");
        // We hold the lock: temporary files are leftovers of a killed server.
        atomic_file::remove_strays(&registry_path);
        let registry = FileControl::new(registry_path.clone()).load()?;
        Ok((
            Store {
                registry_path,
                _lock: lock,
            },
            registry,
        ))
    }

    /// Writes the registry durably (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, registry: &Registry) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(registry).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        atomic_file::write(&self.registry_path, &bytes, 0o600)
    }

    /// Reads back what is on disk (after a failed save, to drop unsaved changes).
    pub fn reload(&self) -> Result<Registry, Failure> {
        Ok(FileControl::new(self.registry_path.clone()).load()?)
    }
}
