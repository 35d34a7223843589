//! The REST API as `metalctl` calls it: base-URL-relative paths with escaped segments,
//! bearer auth, one `Idempotency-Key` per invocation on every write, `stale=true` on reads
//! when asked, failover across coordinators, and API error bodies turned into [`CliError`].

use protocol::error::{ErrorBody, ErrorCode};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::client::{http_client, send_failover};
use super::config::{ClientConfig, ConfigError};
use super::error::CliError;

/// Header carrying the per-invocation idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body.
    Empty,
    /// A JSON document (`application/json`).
    Json(Value),
    /// Bytes as they are, with their content type (e.g. a CSV file as `text/csv`).
    Raw {
        /// The `Content-Type` header.
        content_type: &'static str,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

/// A connection to the cluster for one `metalctl` invocation.
#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    coordinators: Vec<String>,
    token: String,
    idempotency_key: String,
    stale: bool,
}

impl Api {
    /// A client trusting only the configured CA, with a fresh idempotency key.
    pub fn new(cfg: &ClientConfig, stale: bool) -> Result<Api, CliError> {
        let http = http_client(Some(&cfg.ca_pem)).map_err(|e| ConfigError {
            file: cfg.ca_cert.display().to_string(),
            key: "ca_cert".into(),
            message: format!("unusable CA certificate: {e}"),
        })?;
        Ok(Api {
            http,
            coordinators: cfg.coordinators.clone(),
            token: cfg.token.clone(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            stale,
        })
    }

    /// The key every write of this invocation carries.
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// `GET` returning the JSON document.
    pub async fn get(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value, CliError> {
        let mut query = query.to_vec();
        if self.stale {
            query.push(("stale", "true".to_owned()));
        }
        self.call(Method::GET, path, &query, Body::Empty)
            .await?
            .ok_or_else(|| CliError::BadResponse {
                url: path.join("/"),
                message: "empty body where a JSON document was expected".into(),
            })
    }

    /// Any request; `None` for an empty answer (204).
    pub async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Option<Value>, CliError> {
        let write = method != Method::GET && method != Method::HEAD;
        let build = |base: &str| -> Result<reqwest::RequestBuilder, String> {
            let url = url(base, path, query)?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(&self.token)
                .header(reqwest::header::ACCEPT, "application/json");
            if write {
                req = req.header(IDEMPOTENCY_HEADER, &self.idempotency_key);
            }
            Ok(match &body {
                Body::Empty => req,
                Body::Json(v) => req.json(v),
                Body::Raw {
                    content_type,
                    bytes,
                } => req
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(bytes.clone()),
            })
        };
        let (base, resp) = send_failover(&self.coordinators, build)
            .await
            .map_err(CliError::Unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| CliError::BadResponse {
            url: base.clone(),
            message: format!("reading the body: {e}"),
        })?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| CliError::BadResponse {
                    url: base,
                    message: format!("{status} with a body that is not JSON: {e}"),
                });
        }
        Err(CliError::Api(error_body(status, &text)))
    }
}

/// `base` + escaped `path` segments + `query`.
pub fn url(base: &str, path: &[&str], query: &[(&str, String)]) -> Result<Url, String> {
    let mut url = Url::parse(base).map_err(|e| format!("bad URL {base:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|_| format!("bad URL {base:?}: cannot carry a path"))?
        .pop_if_empty()
        .extend(path);
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    Ok(url)
}

/// The API's error body, or one made up from the status when a proxy or an older server
/// answered something else.
pub fn error_body(status: StatusCode, text: &str) -> ErrorBody {
    if let Ok(b) = serde_json::from_str::<ErrorBody>(text) {
        return b;
    }
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        412 => ErrorCode::PreconditionFailed,
        413 => ErrorCode::PayloadTooLarge,
        503 => ErrorCode::Unavailable,
        504 => ErrorCode::Timeout,
        400..=499 => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    let snippet: String = text.trim().chars().take(200).collect();
    ErrorBody::new(
        code,
        if snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {snippet}")
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_segments() {
        let u = url(
            "https://a:7443/",
            &["v1", "sites", "a/b c"],
            &[("stale", "true".into())],
        )
        .unwrap();
        assert_eq!(u.as_str(), "https://a:7443/v1/sites/a%2Fb%20c?stale=true");
        let u = url("https://a:7443/prefix", &["v1", "nodes"], &[]).unwrap();
        assert_eq!(u.as_str(), "https://a:7443/prefix/v1/nodes");
    }

    #[test]
    fn error_bodies() {
        let b = error_body(
            StatusCode::BAD_REQUEST,
            r#"{"code":"invalid_field","message":"m","field":"f"}"#,
        );
        assert_eq!(b.field.as_deref(), Some("f"));
        let b = error_body(StatusCode::UNAUTHORIZED, "<html>");
        assert_eq!(b.code, ErrorCode::Unauthenticated);
        assert_eq!(b.code.exit_code(), 3);
    }
}
