//! Crash-safe file replacement: write a temporary file in the same directory, fsync it,
//! rename it over the target and fsync the directory. A reader sees the old or the new
//! content, never a mix, whatever moment the writer dies at.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::random;

/// Atomically replaces `path` with `bytes`; the new file gets permission bits `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    publish(path, bytes, mode, |tmp, path| fs::rename(tmp, path)).map(|_| ())
}

/// Atomically creates `path` with `bytes` unless it exists. Returns `false` (writing nothing)
/// when another writer got there first, so racing creators agree on one content.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    publish(path, bytes, mode, |tmp, path| {
        // link(2) fails instead of replacing; the temporary name is then removed either way.
        let linked = fs::hard_link(tmp, path);
        let _ = fs::remove_file(tmp);
        linked
    })
    .map(|()| true)
    .or_else(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Ok(false),
        _ => Err(e),
    })
}

/// Writes a synced temporary file next to `path` and lets `place` move it into position.
fn publish(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    place: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A random name: a dead writer's stray file (even one of a process that had our PID)
    // can never collide with ours.
    let tmp = dir.join(format!("{}{}", tmp_prefix(name), random::id(16)?));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        place(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn tmp_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.tmp.", name.to_string_lossy())
}

/// Deletes temporary files that writers of `path` died holding. Call only while holding the
/// lock that serialises writers of `path`, so no live writer owns one.
pub fn remove_strays(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = tmp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = std::env::temp_dir().join(format!("lp-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files are left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_new_never_replaces_and_racers_agree() {
        let dir = std::env::temp_dir().join(format!("lp-create-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let winners: Vec<bool> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || create_new(&path, &[i; 4], 0o600).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(
            winners.iter().filter(|w| **w).count(),
            1,
            "exactly one creator wins"
        );
        let content = fs::read(&path).unwrap();
        assert!(content.len() == 4 && content.iter().all(|b| *b == content[0]));
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary files left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn strays_of_dead_writers_are_removed_and_others_kept() {
        let dir = std::env::temp_dir().join(format!("lp-strays-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("reg.json");
        fs::write(dir.join(".reg.json.tmp.123.0"), b"half").unwrap();
        fs::write(dir.join("other.json"), b"keep").unwrap();
        write(&path, b"new", 0o600).unwrap();
        remove_strays(&path);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["other.json", "reg.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
