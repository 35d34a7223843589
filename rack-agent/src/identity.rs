//! The agent's TLS identity on disk (`data_dir/tls`): the cluster CA certificate, the agent
//! certificate and its private key; crash-safe replacement of the certificate/key pair; and
//! the renewal decision.
//!
//! The certificate and key must always match, yet two files cannot be renamed at once. A pair
//! is therefore installed through a small journal: `agent.key.new` then `agent.crt.new` are
//! written (each via a temporary file, fsync and rename), and only then moved over the live
//! files. `agent.crt.new` is the commit point: [`recover`], run before every load, finishes an
//! installation whose `agent.crt.new` exists and discards a lone `agent.key.new`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pki::{CertKeyPem, PkiError};

use crate::config::Config;

/// Suffix of the journal files of a pair being installed.
const NEW_SUFFIX: &str = "new";
/// Suffix of the temporary file an atomic write goes through.
const TMP_SUFFIX: &str = "tmp";

/// Why the identity could not be read, checked or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file of the identity does not exist: the agent has not enrolled yet.
    #[error("{path} does not exist: this agent is not enrolled (run `rack-agent enroll`)")]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing, renaming or syncing a file failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A certificate could not be parsed.
    #[error("{what}: {reason}")]
    Certificate {
        /// Which certificate.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA, certificate and key do not make a usable TLS client identity (e.g. the
    /// certificate is not for this key).
    #[error("{what} cannot be used as the fleet link identity")]
    Unusable {
        /// Which material.
        what: String,
        /// What the PKI layer reported.
        #[source]
        source: PkiError,
    },
}

/// The identity the agent presents on the fleet link, loaded from disk.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// Cluster CA certificate, PEM.
    pub ca_pem: String,
    /// Agent certificate and key.
    pub leaf: CertKeyPem,
    /// The certificate's `notBefore`, unix seconds.
    pub not_before: i64,
    /// The certificate's `notAfter`, unix seconds.
    pub not_after: i64,
}

impl AgentIdentity {
    /// The QUIC client configuration for the fleet link.
    pub fn quinn_client_config(&self) -> Result<quinn::ClientConfig, IdentityError> {
        pki::quinn_client_config(&self.ca_pem, &self.leaf, pki::ALPN_FLEET).map_err(|source| {
            IdentityError::Unusable {
                what: "agent certificate and key".into(),
                source,
            }
        })
    }

    /// True once less than `fraction` of the certificate's lifetime is left at `now`.
    pub fn needs_renewal(&self, now: i64, fraction: f64) -> bool {
        needs_renewal(now, self.not_before, self.not_after, fraction)
    }
}

/// True when the agent has (some of) an identity: a certificate or a key in place.
pub fn exists(config: &Config) -> bool {
    config.cert_path().exists()
        || config.key_path().exists()
        || journal(&config.cert_path()).exists()
}

/// Loads the CA, certificate and key (finishing an interrupted installation first) and checks
/// that they make a usable identity.
pub fn load(config: &Config) -> Result<AgentIdentity, IdentityError> {
    recover(&config.tls_dir())?;
    let ca_pem = read(&config.ca_cert)?;
    let cert_pem = read(&config.cert_path())?;
    let key_pem = read(&config.key_path())?;
    let (not_before, not_after) = validity(&cert_pem, "agent certificate")?;
    let identity = AgentIdentity {
        ca_pem,
        leaf: CertKeyPem { cert_pem, key_pem },
        not_before,
        not_after,
    };
    identity.quinn_client_config()?;
    Ok(identity)
}

/// Checks that `cert_pem` and `key_pem` belong together and chain to `ca_pem` well enough to
/// build the fleet link configuration.
pub fn check(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
    let leaf = CertKeyPem {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
    };
    pki::quinn_client_config(ca_pem, &leaf, pki::ALPN_FLEET)
        .map(|_| ())
        .map_err(|source| IdentityError::Unusable {
            what: "issued certificate".into(),
            source,
        })
}

/// Writes the CA certificate to `ca_path` (atomically).
pub fn install_ca(ca_path: &Path, ca_pem: &str) -> Result<(), IdentityError> {
    write_atomic(ca_path, ca_pem.as_bytes(), 0o644)
}

/// Replaces the agent's certificate and key as one unit (see the module docs).
pub fn install_pair(config: &Config, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
    let dir = config.tls_dir();
    create_dir(&dir)?;
    write_atomic(&journal(&config.key_path()), key_pem.as_bytes(), 0o600)?;
    write_atomic(&journal(&config.cert_path()), cert_pem.as_bytes(), 0o644)?;
    recover(&dir)
}

/// Finishes (or discards) a pair installation interrupted by a crash. Idempotent.
pub fn recover(tls_dir: &Path) -> Result<(), IdentityError> {
    let cert = tls_dir.join(crate::config::AGENT_CERT_FILE);
    let key = tls_dir.join(crate::config::AGENT_KEY_FILE);
    let (cert_new, key_new) = (journal(&cert), journal(&key));
    if cert_new.exists() {
        if key_new.exists() {
            rename(&key_new, &key)?;
        }
        rename(&cert_new, &cert)?;
        sync_dir(tls_dir)?;
    } else if key_new.exists() {
        fs::remove_file(&key_new).map_err(|source| IdentityError::Write {
            path: key_new.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `notBefore` and `notAfter` of the first certificate in `pem`, unix seconds.
pub fn validity(pem: &str, what: &str) -> Result<(i64, i64), IdentityError> {
    let bad = |reason: String| IdentityError::Certificate {
        what: what.to_owned(),
        reason,
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
    let cert = block
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// True once less than `fraction` of the lifetime `not_before..not_after` is left at `now`
/// (always true for an empty or inverted lifetime).
pub fn needs_renewal(now: i64, not_before: i64, not_after: i64, fraction: f64) -> bool {
    let lifetime = not_after.saturating_sub(not_before);
    if lifetime <= 0 {
        return true;
    }
    let remaining = not_after.saturating_sub(now);
    // Lifetimes are far below 2^53 seconds, so the conversion is exact.
    (remaining as f64) < fraction * (lifetime as f64)
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            IdentityError::Missing {
                path: path.to_owned(),
            }
        } else {
            IdentityError::Read {
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn journal(path: &Path) -> PathBuf {
    with_suffix(path, NEW_SUFFIX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` via a temporary file in the same directory (created with `mode`),
/// fsync, rename, and fsync of the directory: afterwards `path` holds either the old or the
/// new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let wrap = |p: &Path| {
        let p = p.to_owned();
        move |source| IdentityError::Write { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir(dir)?;
    let tmp = with_suffix(path, TMP_SUFFIX);
    // A leftover temporary file from a crash may have another mode: start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(wrap(&tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(wrap(&tmp))?;
    file.write_all(bytes).map_err(wrap(&tmp))?;
    file.sync_all().map_err(wrap(&tmp))?;
    drop(file);
    rename(&tmp, path)?;
    sync_dir(dir)
}

fn rename(from: &Path, to: &Path) -> Result<(), IdentityError> {
    fs::rename(from, to).map_err(|source| IdentityError::Write {
        path: to.to_owned(),
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Write {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path) -> Config {
        Config::parse(
            &dir.join("agent.toml"),
            &format!("rack = \"r1\"\ndata_dir = \"{}\"\n", dir.display()),
        )
        .unwrap()
    }

    #[test]
    fn renewal_threshold() {
        // 90-day certificate issued at 0.
        let (nb, na) = (0, 90 * 86_400);
        assert!(!needs_renewal(0, nb, na, 0.33));
        assert!(!needs_renewal(60 * 86_400, nb, na, 0.33));
        assert!(needs_renewal(61 * 86_400, nb, na, 0.33));
        assert!(needs_renewal(na + 1, nb, na, 0.33));
        assert!(needs_renewal(0, 10, 10, 0.33));
    }

    #[test]
    fn pair_installation_is_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        assert!(!exists(&c));
        assert!(matches!(load(&c), Err(IdentityError::Missing { .. })));

        install_pair(&c, "CERT1", "KEY1").unwrap();
        assert!(exists(&c));
        assert_eq!(fs::read_to_string(c.cert_path()).unwrap(), "CERT1");
        assert_eq!(fs::read_to_string(c.key_path()).unwrap(), "KEY1");
        let mode = fs::metadata(c.key_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Crash after the key journal was written, before the cert journal: discarded.
        write_atomic(&journal(&c.key_path()), b"KEY2", 0o600).unwrap();
        recover(&c.tls_dir()).unwrap();
        assert_eq!(fs::read_to_string(c.key_path()).unwrap(), "KEY1");
        assert!(!journal(&c.key_path()).exists());

        // Crash after the key was moved into place, before the cert: finished.
        write_atomic(&journal(&c.cert_path()), b"CERT3", 0o644).unwrap();
        write_atomic(&c.key_path(), b"KEY3", 0o600).unwrap();
        recover(&c.tls_dir()).unwrap();
        assert_eq!(fs::read_to_string(c.cert_path()).unwrap(), "CERT3");
        assert_eq!(fs::read_to_string(c.key_path()).unwrap(), "KEY3");
        assert!(!journal(&c.cert_path()).exists());
    }

    #[test]
    fn real_identity_loads_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let ca = pki::CertAuthority::generate("test").unwrap();
        let identity = pki::Identity::Rack("r1".into());
        let (key_pem, csr_pem) = pki::generate_csr(&identity).unwrap();
        let cert_pem = ca.sign_csr(&csr_pem, &identity, &[], 30).unwrap();
        check(ca.cert_pem(), &cert_pem, &key_pem).unwrap();
        let (other_key, _) = pki::generate_csr(&identity).unwrap();
        assert!(matches!(
            check(ca.cert_pem(), &cert_pem, &other_key),
            Err(IdentityError::Unusable { .. })
        ));

        install_ca(&c.ca_cert, ca.cert_pem()).unwrap();
        install_pair(&c, &cert_pem, &key_pem).unwrap();
        let loaded = load(&c).unwrap();
        assert_eq!(loaded.not_after, pki::not_after(&cert_pem).unwrap());
        assert!(loaded.not_before < loaded.not_after);
        assert!(!loaded.needs_renewal(crate::unix_secs(), 0.33));
        assert!(loaded.needs_renewal(loaded.not_after - 86_400, 0.33));
    }
}
