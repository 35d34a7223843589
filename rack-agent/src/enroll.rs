//! Enrollment: trade a one-time token for the agent's certificate. The key is generated here
//! and never leaves the machine; only its CSR goes to `POST {api}/v1/enroll`, over HTTPS that
//! trusts nothing but the cluster CA given on the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::error::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::config::{split_endpoint, Config};
use crate::identity::{self, IdentityError};
use crate::store::{CertInfo, Store, StoreError};

/// Whole-request timeout of the enrollment call.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an unreadable error body is quoted.
const MAX_QUOTED_BODY: usize = 200;

/// What `rack-agent enroll` needs besides the config.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// Base URL of a coordinator's REST API, `https://host:port`.
    pub api: String,
    /// The one-time enrollment token.
    pub token: String,
    /// The cluster CA certificate to trust for this call.
    pub ca_cert: PathBuf,
    /// Replace an existing identity.
    pub force: bool,
}

/// Body of `POST /v1/enroll`.
#[derive(Debug, Serialize)]
struct EnrollBody<'a> {
    rack: &'a str,
    token: &'a str,
    csr_pem: &'a str,
}

/// Successful answer of `POST /v1/enroll`.
#[derive(Debug, Deserialize)]
struct EnrollAnswer {
    cert_pem: String,
    ca_cert_pem: String,
    fleet_endpoints: Vec<String>,
    /// Highest event sequence number the coordinators applied for this rack (from earlier
    /// agents of the rack, or earlier enrollments of this one).
    #[serde(default)]
    last_seq: u64,
}

/// The outcome of a successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// SHA-256 fingerprint of the new certificate.
    pub fingerprint: String,
    /// Its `notAfter`, unix seconds.
    pub not_after: i64,
    /// Fleet endpoints stored for the link.
    pub endpoints: Vec<String>,
    /// The event sequence continues after this number (the coordinators' record).
    pub last_seq: u64,
    /// Queued events dropped as already applied, and kept (renumbered) ones.
    pub outbox: (u64, u64),
}

/// Why enrollment failed. [`EnrollError::exit_code`] gives the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// An identity is already in place and `--force` was not given.
    #[error(
        "this agent is already enrolled ({path} exists); pass --force to replace its identity"
    )]
    AlreadyEnrolled {
        /// The existing certificate or key.
        path: PathBuf,
    },
    /// The API URL is unusable.
    #[error("--api {url:?} must be an https:// URL")]
    BadApiUrl {
        /// What was given.
        url: String,
    },
    /// The CA file given on the command line could not be read or is not a certificate.
    #[error("CA certificate {path}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store could not be opened or written (e.g. the agent is running).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Generating the key, or checking or writing the TLS files, failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Creating the CSR failed.
    #[error("creating the certificate signing request")]
    Csr(#[source] pki::PkiError),
    /// The HTTPS client could not be built.
    #[error("building the HTTPS client")]
    Client(#[source] reqwest::Error),
    /// The request did not complete (connection, TLS, timeout).
    #[error("POST {url}")]
    Http {
        /// The URL.
        url: String,
        /// What reqwest reported.
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator refused the enrollment.
    #[error("{}", .body.message)]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The error body (synthesised from the status if the body was not JSON).
        body: ErrorBody,
    },
    /// A 200 answer that is not what the contract says.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl EnrollError {
    /// Exit code: 2 for bad input (a 4xx other than 401/403, or a bad command line), 3 when
    /// the token is refused (401/403), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            EnrollError::Rejected {
                status: 401 | 403, ..
            } => 3,
            EnrollError::Rejected { status, .. } if (400..500).contains(status) => 2,
            EnrollError::AlreadyEnrolled { .. }
            | EnrollError::BadApiUrl { .. }
            | EnrollError::BadCa { .. } => 2,
            _ => 1,
        }
    }
}

/// Enrolls the agent: key + CSR, `POST /v1/enroll`, then writes `tls/{ca.crt, agent.crt,
/// agent.key}`, stores the fleet endpoints and continues the event sequence after the
/// coordinators' `last_seq` for the rack (see [`Store::rebase_outbox`]). Refuses to replace an existing identity unless
/// `force`. The store is opened first, so a running agent (which holds it) makes this fail
/// before the token is spent.
pub async fn enroll(config: &Config, req: &EnrollRequest) -> Result<Enrolled, EnrollError> {
    if !req.force {
        for path in [config.cert_path(), config.key_path()] {
            if path.exists() {
                return Err(EnrollError::AlreadyEnrolled { path });
            }
        }
    }
    let base = req.api.trim_end_matches('/');
    if !base.starts_with("https://") || base.len() == "https://".len() {
        return Err(EnrollError::BadApiUrl {
            url: req.api.clone(),
        });
    }
    let url = format!("{base}/v1/enroll");
    let ca = read_ca(&req.ca_cert)?;

    std::fs::create_dir_all(&config.data_dir).map_err(|source| IdentityError::Write {
        path: config.data_dir.clone(),
        source,
    })?;
    let store_path = config.store_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path))
        .await
        .map_err(|_| StoreError::Interrupted {
            path: config.store_path(),
        })??;

    let who = pki::Identity::Rack(config.rack.to_string());
    let (key_pem, csr_pem) = pki::generate_csr(&who).map_err(EnrollError::Csr)?;

    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(ENROLL_TIMEOUT)
        .build()
        .map_err(EnrollError::Client)?;
    let response = client
        .post(&url)
        .json(&EnrollBody {
            rack: config.rack.as_str(),
            token: &req.token,
            csr_pem: &csr_pem,
        })
        .send()
        .await
        .map_err(|source| EnrollError::Http {
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    let text = response.text().await.map_err(|source| EnrollError::Http {
        url: url.clone(),
        source,
    })?;
    if !status.is_success() {
        return Err(EnrollError::Rejected {
            status: status.as_u16(),
            body: error_body(status, &text),
        });
    }
    let answer: EnrollAnswer = serde_json::from_str(&text).map_err(|e| EnrollError::BadAnswer {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    for endpoint in &answer.fleet_endpoints {
        split_endpoint(endpoint).map_err(|reason| EnrollError::BadAnswer {
            url: url.clone(),
            reason: format!("fleet_endpoints: {reason}"),
        })?;
    }
    identity::check(&answer.ca_cert_pem, &answer.cert_pem, &key_pem)?;
    let (not_before, not_after) = identity::validity(&answer.cert_pem, "issued certificate")?;
    let fingerprint =
        pki::fingerprint(&answer.cert_pem).map_err(|source| IdentityError::Unusable {
            what: "issued certificate".into(),
            source,
        })?;

    let config = config.clone();
    let endpoints = answer.fleet_endpoints.clone();
    let last_seq = answer.last_seq;
    let installed = store
        .call(move |store| {
            // Events queued by this store before an earlier enrollment may already be
            // applied; a store that never enrolled has only new ones.
            let drop_applied = store.cert_info()?.is_some();
            let files = identity::install_ca(&config.ca_cert, &answer.ca_cert_pem)
                .and_then(|()| identity::install_pair(&config, &answer.cert_pem, &key_pem));
            if let Err(e) = files {
                return Ok(Err(e));
            }
            store.set_cert_info(&CertInfo {
                installed_at: crate::unix_secs(),
                not_before,
                not_after,
            })?;
            if !answer.fleet_endpoints.is_empty() {
                store.set_endpoints(&answer.fleet_endpoints)?;
            }
            let outbox = store.rebase_outbox(answer.last_seq, drop_applied)?;
            Ok(Ok(outbox))
        })
        .await?;
    let outbox = installed?;
    Ok(Enrolled {
        fingerprint,
        not_after,
        endpoints,
        last_seq,
        outbox,
    })
}

fn read_ca(path: &Path) -> Result<reqwest::Certificate, EnrollError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| EnrollError::BadCa {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(|e| bad(Box::new(e)))?;
    std::str::from_utf8(&pem)
        .map_err(|e| bad(Box::new(e)))
        .and_then(|s| identity::validity(s, "CA certificate").map_err(|e| bad(Box::new(e))))?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| bad(Box::new(e)))
}

/// The JSON error body, or one synthesised from the status when the body is not one.
fn error_body(status: reqwest::StatusCode, text: &str) -> ErrorBody {
    if let Ok(body) = serde_json::from_str::<ErrorBody>(text) {
        return body;
    }
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        400..=499 => ErrorCode::BadRequest,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    let quoted: String = text.trim().chars().take(MAX_QUOTED_BODY).collect();
    let message = if quoted.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {quoted}")
    };
    ErrorBody::new(code, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rejected(status: u16) -> EnrollError {
        EnrollError::Rejected {
            status,
            body: ErrorBody::new(ErrorCode::BadRequest, "x"),
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(rejected(400).exit_code(), 2);
        assert_eq!(rejected(404).exit_code(), 2);
        assert_eq!(rejected(409).exit_code(), 2);
        assert_eq!(rejected(401).exit_code(), 3);
        assert_eq!(rejected(403).exit_code(), 3);
        assert_eq!(rejected(500).exit_code(), 1);
        assert_eq!(rejected(503).exit_code(), 1);
        assert_eq!(
            EnrollError::AlreadyEnrolled { path: "/x".into() }.exit_code(),
            2
        );
        assert_eq!(
            EnrollError::BadAnswer {
                url: "u".into(),
                reason: "r".into()
            }
            .exit_code(),
            1
        );
    }

    #[test]
    fn error_bodies() {
        let b = error_body(
            reqwest::StatusCode::UNAUTHORIZED,
            r#"{"code":"unauthenticated","message":"token expired"}"#,
        );
        assert_eq!(b.code, ErrorCode::Unauthenticated);
        assert_eq!(b.message, "token expired");
        assert_eq!(rejected(401).to_string(), "x");
        let b = error_body(reqwest::StatusCode::BAD_GATEWAY, "<html>oops</html>");
        assert_eq!(b.code, ErrorCode::Internal);
        assert_eq!(b.message, "HTTP 502 Bad Gateway: <html>oops</html>");
        let b = error_body(reqwest::StatusCode::NOT_FOUND, "");
        assert_eq!(b.message, "HTTP 404 Not Found");
    }

    #[tokio::test]
    async fn refuses_existing_identity_and_bad_input_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            &dir.path().join("agent.toml"),
            &format!("rack = \"r1\"\ndata_dir = \"{}\"\n", dir.path().display()),
        )
        .unwrap();
        let req = EnrollRequest {
            api: "https://127.0.0.1:1".into(),
            token: "t".into(),
            ca_cert: dir.path().join("missing.crt"),
            force: false,
        };
        let e = enroll(&config, &req).await.unwrap_err();
        assert!(matches!(e, EnrollError::BadCa { .. }), "{e}");
        let e = enroll(
            &config,
            &EnrollRequest {
                api: "http://x".into(),
                ..req.clone()
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, EnrollError::BadApiUrl { .. }), "{e}");

        identity::install_pair(&config, "C", "K").unwrap();
        let e = enroll(&config, &req).await.unwrap_err();
        assert!(matches!(e, EnrollError::AlreadyEnrolled { .. }), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
