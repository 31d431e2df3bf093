//! Helpers shared by integration tests that need no network namespaces.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A unique temporary directory, removed on drop. Named `lpt-<pid>-…` like the lab's, so a
/// lab sweep removes it if this process dies without running destructors.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<tmp>/lpt-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lpt-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
