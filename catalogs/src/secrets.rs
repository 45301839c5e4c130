//! Secrets at rest: the values Kura must be able to read back (a BMC's password, to log in to
//! it) but must never keep in the clear.
//!
//! This module owns the engine's secret key file and the sealed format; nothing else touches
//! either. The catalog stores only [`Sealed`] values, which can be made only by
//! [`SecretKey::seal`], so a plaintext secret cannot reach the database by mistake.
//!
//! # Key file
//!
//! `DATA/secrets.key`: 64 hex digits (a 256-bit key) and a newline, created with mode 0600 and
//! `O_EXCL|O_NOFOLLOW` on the engine's first start ([`SecretKey::load_or_create`]) and refused
//! if it is a symbolic link, owned by another user, or readable by group or others. It is deliberately not in the catalog: a copy of `catalog.db` alone (a backup, a
//! support bundle) reveals no password. Losing the key loses the sealed values, nothing else:
//! set the power credentials again.
//!
//! # Sealed format (version 1)
//!
//! ```text
//! 0x01 | nonce (12 random bytes) | ChaCha20-Poly1305 ciphertext | tag (16 bytes)
//! ```
//!
//! A fresh random nonce per value (2^96 nonces: no practical collision risk for the few
//! values an engine keeps). The associated data is `kura-secret-v1:` + the value's purpose
//! (e.g. `power.password`), so a sealed value cannot be replayed in another role.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use std::path::Path;

/// The sealed format's version byte.
const VERSION: u8 = 1;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("cannot generate random bytes: {0}")]
    Random(String),
    #[error("a sealed secret ({purpose}) cannot be opened: {reason}")]
    Open { purpose: String, reason: String },
}

/// The engine's key for secrets at rest.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A sealed secret, as stored in the catalog. Its bytes reveal nothing without the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

impl Sealed {
    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes read back from storage (checked when opened).
    pub fn from_stored(bytes: Vec<u8>) -> Sealed {
        Sealed(bytes)
    }
}

fn aad(purpose: &str) -> Vec<u8> {
    format!("kura-secret-v1:{purpose}").into_bytes()
}

fn key_err(path: &Path, message: impl Into<String>) -> SecretError {
    SecretError::KeyFile { path: path.display().to_string(), message: message.into() }
}

impl SecretKey {
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> SecretKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte ChaCha20-Poly1305 key");
        SecretKey { key: LessSafeKey::new(unbound) }
    }

    /// A fresh random key that lives only in memory (tests).
    pub fn generate() -> Result<SecretKey, SecretError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Loads the key at `path`, creating it (mode 0600, `O_EXCL|O_NOFOLLOW`, synced) if it does
    /// not exist. Refuses a key file that is a symbolic link, that another user owns, that group
    /// or others may read, or that is not 64 hex digits.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {
                let text = crate::private::read_secret(path, 0o077).map_err(|e| key_err(path, e.message))?;
                let text = String::from_utf8(text).map_err(|_| key_err(path, "not 64 hex digits"))?;
                let bytes = hex::decode(text.trim()).map_err(|_| key_err(path, "not 64 hex digits"))?;
                let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| key_err(path, "not 64 hex digits"))?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; KEY_LEN];
                getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
                crate::private::write_new(path, format!("{}\n", hex::encode(bytes)).as_bytes())
                    .map_err(|e| key_err(path, format!("cannot create it: {e}")))?;
                if let Some(dir) = path.parent() {
                    // The new name is durable too (best effort: some filesystems refuse).
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(key_err(path, e.to_string())),
        }
    }

    /// Seals `plaintext` for `purpose` with a fresh random nonce.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Sealed, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(purpose)), &mut buf)
            .map_err(|_| SecretError::Random("sealing failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(Sealed(out))
    }

    /// Opens a value sealed for `purpose`; fails if it was sealed with another key, for another
    /// purpose, or altered.
    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
        let err = |reason: &str| SecretError::Open { purpose: purpose.to_string(), reason: reason.to_string() };
        let b = &sealed.0;
        if b.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(err("too short"));
        }
        if b[0] != VERSION {
            return Err(err(&format!("unknown format version {}", b[0])));
        }
        let nonce: [u8; NONCE_LEN] = b[1..1 + NONCE_LEN].try_into().expect("length checked");
        let mut buf = b[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad(purpose)), &mut buf)
            .map_err(|_| err("wrong key (was DATA/secrets.key replaced?) or altered value"))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let key = SecretKey::generate().unwrap();
        let a = key.seal("power.password", b"hunter2").unwrap();
        let b = key.seal("power.password", b"hunter2").unwrap();
        assert_ne!(a, b, "the same value sealed twice must differ (random nonce)");
        assert!(!a.as_bytes().windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open("power.password", &a).unwrap(), b"hunter2");
        assert_eq!(key.open("power.password", &Sealed::from_stored(b.as_bytes().to_vec())).unwrap(), b"hunter2");
    }

    #[test]
    fn wrong_key_purpose_or_altered_bytes_are_refused() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal("power.password", b"hunter2").unwrap();
        assert!(SecretKey::generate().unwrap().open("power.password", &sealed).is_err());
        assert!(key.open("other.purpose", &sealed).is_err());
        let mut bytes = sealed.as_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(key.open("power.password", &Sealed::from_stored(bytes)).is_err());
        assert!(key.open("power.password", &Sealed::from_stored(vec![1; 10])).is_err());
    }

    #[test]
    fn a_planted_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("secrets.key");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = SecretKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A dangling link is not created through either.
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(SecretKey::load_or_create(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = SecretKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let sealed = key.seal("p", b"x").unwrap();
        let again = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(again.open("p", &sealed).unwrap(), b"x");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
