//! Secrets at rest: the coordinator's sealing key, sealing/opening of credentials, keyed
//! fingerprints, and API token generation and hashing.
//!
//! Plaintext secrets live only in request handlers and in the rack agent that needs them;
//! what reaches the Raft log, the state machine and snapshots is [`Sealed`] ciphertext.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac as _};
use protocol::domain::{CredentialsInput, Sealed, StoredCredentials};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of the at-rest key in bytes.
pub const KEY_LEN: usize = 32;
/// Prefix of every API token secret, so leaked tokens are easy to grep for.
pub const TOKEN_PREFIX: &str = "mf_";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a base64 32-byte key.
    #[error("key file {path}: expected {KEY_LEN} bytes of base64 on one line")]
    BadKey {
        /// File path.
        path: String,
    },
    /// Decryption failed: wrong key or tampered ciphertext.
    #[error("cannot open sealed secret (key id {key_id}): wrong key or corrupted data")]
    Open {
        /// Key id recorded in the sealed value.
        key_id: u32,
    },
}

/// The at-rest key. `Debug` does not print it.
#[derive(Clone)]
pub struct SealingKey {
    id: u32,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey(id {}, <redacted>)", self.id)
    }
}

impl SealingKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SealingKey { id: 1, key }
    }

    /// From raw bytes (as shipped in a join response).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(SealingKey { id: 1, key })
    }

    /// Base64 form, for writing the key file or handing it to a joining coordinator.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key)
    }

    /// Read a key file (base64, one line).
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SecretsError::BadKey {
                path: path.display().to_string(),
            })?;
        Self::from_bytes(&bytes).ok_or_else(|| SecretsError::BadKey {
            path: path.display().to_string(),
        })
    }

    /// Write the key file with mode 0600, refusing to overwrite an existing one.
    pub fn save_new(&self, path: &Path) -> Result<(), SecretsError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| SecretsError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(format!("{}\n", self.to_base64()).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Seal `plaintext`; `context` is bound as associated data (e.g. `bmc:<serial>`), so a
    /// ciphertext cannot be moved to another record.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Sealed {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce length cannot fail.
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .unwrap_or_default();
        Sealed {
            key_id: self.id,
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Open a sealed value sealed under the same `context`.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretsError> {
        let err = || SecretsError::Open {
            key_id: sealed.key_id,
        };
        if sealed.key_id != self.id || sealed.nonce.len() != 24 {
            return Err(err());
        }
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| err())
    }

    /// Keyed fingerprint of a secret: equal secrets give equal fingerprints under one key,
    /// and the fingerprint reveals nothing without the key.
    pub fn fingerprint(&self, context: &str, secret: &[u8]) -> String {
        let mut derived = Sha256::new();
        derived.update(b"metalfleet fingerprint key v1");
        derived.update(self.key);
        let Ok(mut mac) = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&derived.finalize()) else {
            return String::new();
        };
        mac.update(context.as_bytes());
        mac.update(&[0]);
        mac.update(secret);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Seal submitted credentials for storage.
    pub fn seal_credentials(&self, context: &str, c: &CredentialsInput) -> StoredCredentials {
        StoredCredentials {
            username: c.username.clone(),
            password: self.seal(context, c.password.as_bytes()),
            fingerprint: self.fingerprint(context, c.password.as_bytes()),
        }
    }
}

/// A fresh API token secret: `mf_` + 32 random bytes in base64url.
pub fn new_token_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// How a token secret is stored and looked up: lowercase hex SHA-256. Token secrets carry
/// 256 bits of entropy, so a fast unsalted hash is sufficient (as for GitHub tokens).
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_context_binding() {
        let k = SealingKey::generate();
        let s = k.seal("bmc:SN1", b"hunter2");
        assert_eq!(k.open("bmc:SN1", &s).unwrap(), b"hunter2");
        assert!(
            k.open("bmc:SN2", &s).is_err(),
            "ciphertext moved to another record must not open"
        );
        let other = SealingKey::generate();
        assert!(other.open("bmc:SN1", &s).is_err());
        assert!(!format!("{s:?}{k:?}").contains("hunter2"));
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn fingerprints_are_stable_per_key() {
        let k = SealingKey::generate();
        assert_eq!(k.fingerprint("c", b"pw"), k.fingerprint("c", b"pw"));
        assert_ne!(k.fingerprint("c", b"pw"), k.fingerprint("c", b"pw2"));
        assert_ne!(
            k.fingerprint("c", b"pw"),
            SealingKey::generate().fingerprint("c", b"pw")
        );
    }

    #[test]
    fn key_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = SealingKey::generate();
        k.save_new(&p).unwrap();
        assert!(k.save_new(&p).is_err(), "must not overwrite a key");
        let back = SealingKey::load(&p).unwrap();
        assert_eq!(back.to_base64(), k.to_base64());
        std::fs::write(&p, "nope").unwrap();
        assert!(SealingKey::load(&p)
            .unwrap_err()
            .to_string()
            .contains("expected 32 bytes"));
    }

    #[test]
    fn tokens() {
        let t = new_token_secret();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_ne!(t, new_token_secret());
        assert_eq!(hash_token(&t).len(), 64);
    }
}
