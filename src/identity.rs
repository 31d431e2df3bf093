//! The member's x25519 key pair: created once in the state directory, in WireGuard's base64
//! format, so `wg pubkey < private.key` prints the same public key we do.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::atomic_file;
use crate::random;

/// File name of the private key inside the state directory.
pub const PRIVATE_KEY_FILE: &str = "private.key";

/// A WireGuard public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Parses WireGuard's base64 form (44 characters).
    pub fn parse(text: &str) -> Option<Key> {
        let text = text.trim();
        if text.len() != 44 {
            return None;
        }
        let bytes = STANDARD.decode(text).ok()?;
        Some(Key(bytes.try_into().ok()?))
    }

    /// Short stable identifier (12 hex characters) used as a member id.
    pub fn short_id(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The member id relays know this key by: its first 6 bytes (`short_id`, decoded).
    pub fn member_id(&self) -> crate::wire::relay::MemberId {
        let mut id = [0u8; 6];
        id.copy_from_slice(&self.0[..6]);
        crate::wire::relay::MemberId(id)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// The member's own key pair.
pub struct Identity {
    /// Private half; never leaves the process except to the key file.
    pub secret: StaticSecret,
    /// Public half, as peers know it.
    pub public: Key,
}

/// Why the identity could not be loaded or created.
#[derive(Debug)]
pub enum IdentityError {
    /// The state directory or key file could not be read or written.
    Io(PathBuf, io::Error),
    /// The key file exists but does not hold a base64 WireGuard private key.
    Malformed(PathBuf),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            IdentityError::Malformed(path) => write!(
                f,
                "{}: not a WireGuard private key (expected 44 base64 characters)",
                path.display()
            ),
        }
    }
}

impl Identity {
    fn from_secret(secret: StaticSecret) -> Identity {
        let public = Key(PublicKey::from(&secret).to_bytes());
        Identity { secret, public }
    }

    /// Loads the key pair from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(PRIVATE_KEY_FILE);
        let text = fs::read_to_string(&path).map_err(|e| IdentityError::Io(path.clone(), e))?;
        let key = Key::parse(&text).ok_or(IdentityError::Malformed(path))?;
        Ok(Identity::from_secret(StaticSecret::from(key.0)))
    }

    /// Loads the key pair, creating it first if there is none. Returns whether it was created.
    pub fn load_or_create(state_dir: &Path) -> Result<(Identity, bool), IdentityError> {
        let path = state_dir.join(PRIVATE_KEY_FILE);
        match fs::metadata(&path) {
            Ok(_) => return Ok((Identity::load(state_dir)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IdentityError::Io(path, e)),
        }
        ensure_private_dir(state_dir).map_err(|e| IdentityError::Io(state_dir.into(), e))?;
        let mut bytes = [0u8; 32];
        random::fill(&mut bytes).map_err(|e| IdentityError::Io("/dev/urandom".into(), e))?;
        // Clamping as `wg genkey` does; x25519 clamps again on use.
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        let text = format!("{}\n", STANDARD.encode(bytes));
        let created = atomic_file::create_new(&path, text.as_bytes(), 0o600)
            .map_err(|e| IdentityError::Io(path.clone(), e))?;
        if !created {
            // Another process created the key meanwhile; theirs is the identity.
            return Ok((Identity::load(state_dir)?, false));
        }
        Ok((Identity::from_secret(StaticSecret::from(bytes)), true))
    }
}

/// Creates `dir` (and parents) if missing, accessible to its owner only. An existing
/// directory is left as it is unless others can write to it (like `/tmp`), which is refused:
/// another user could then replace our socket or key.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(io::Error::new(io::ErrorKind::AlreadyExists, "not a directory")),
        Ok(meta) if meta.permissions().mode() & 0o022 != 0 => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "other users can write to it; use a private directory (chmod 700) or another --state-dir",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lp-id-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn keygen_is_idempotent_and_private() {
        let dir = temp_dir("idem");
        let (first, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        let (second, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(first.public, second.public);
        let mode = fs::metadata(dir.join(PRIVATE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_keygens_agree_on_one_identity() {
        let dir = temp_dir("race");
        let keys: Vec<Key> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || Identity::load_or_create(&dir).unwrap().0.public)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(
            keys.iter().all(|k| *k == keys[0]),
            "every caller sees the stored key"
        );
        assert_eq!(Identity::load(&dir).unwrap().public, keys[0]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn known_wireguard_key_pair_matches() {
        // Pair produced by `wg genkey | tee k | wg pubkey`.
        let dir = temp_dir("known");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(PRIVATE_KEY_FILE),
            "cGLTpGdmOLPOt7hcDOMoB4DuyB8CPXFY2gAStAjx9WQ=\n",
        )
        .unwrap();
        let id = Identity::load(&dir).unwrap();
        assert_eq!(
            id.public.to_string(),
            "Kra5yvSjbZEcJIL5HJ2/YWwqyHF2ZMHYrqhQ71S0qGs="
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wg_pubkey_agrees_with_generated_key_when_installed() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let dir = temp_dir("wg");
        let (id, _) = Identity::load_or_create(&dir).unwrap();
        let private = fs::read(dir.join(PRIVATE_KEY_FILE)).unwrap();
        let child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("wg not installed; agreement checked by known_wireguard_key_pair_matches");
            return;
        };
        child.stdin.take().unwrap().write_all(&private).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            id.public.to_string()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shared_writable_directories_are_refused_and_left_alone() {
        let dir = temp_dir("shared");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(Identity::load_or_create(&dir).is_err());
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            Identity::load_or_create(&dir).is_ok(),
            "readable by others is fine"
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_key_file_is_reported_not_replaced() {
        let dir = temp_dir("bad");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(PRIVATE_KEY_FILE), "garbage").unwrap();
        assert!(matches!(
            Identity::load_or_create(&dir),
            Err(IdentityError::Malformed(_))
        ));
        assert_eq!(
            fs::read_to_string(dir.join(PRIVATE_KEY_FILE)).unwrap(),
            "garbage"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_parse_rejects_wrong_lengths() {
        assert!(Key::parse("").is_none());
        assert!(Key::parse("AAAA").is_none());
        assert!(Key::parse(&"A".repeat(44)).is_none());
    }
}
