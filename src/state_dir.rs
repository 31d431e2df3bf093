//! Where a member keeps its key, socket and (later) other state.
//!
//! Precedence: `--state-dir`, then `LANPARTY_STATE_DIR`, then `/var/lib/lanparty-lite` for
//! root, else `$XDG_STATE_HOME/lanparty-lite`, else `~/.local/state/lanparty-lite`.

use std::path::PathBuf;

/// Resolves the state directory from the flag value and the environment.
pub fn resolve(flag: Option<&str>) -> Result<PathBuf, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(dir) = flag.map(String::from).or_else(|| env("LANPARTY_STATE_DIR")) {
        return Ok(PathBuf::from(dir));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/lanparty-lite"));
    }
    if let Some(xdg) = env("XDG_STATE_HOME") {
        return Ok(PathBuf::from(xdg).join("lanparty-lite"));
    }
    env("HOME")
        .map(|home| PathBuf::from(home).join(".local/state/lanparty-lite"))
        .ok_or_else(|| {
            "cannot find a state directory: set --state-dir or LANPARTY_STATE_DIR".into()
        })
}
