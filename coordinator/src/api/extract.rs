//! Request extractors that turn every malformed input into a 4xx naming the field:
//! JSON bodies (unknown fields, wrong types, invalid ids), query strings, and oversize
//! bodies.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use protocol::error::ErrorCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body, parsed with the failing field's path reported.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Maps a serde error plus its path into an API error naming the field.
pub fn field_error(path: &str, err: &str) -> ApiError {
    if let Some(rest) = err.strip_prefix("unknown field `") {
        // serde_path_to_error already ends the path with the unknown key.
        let name = rest.split('`').next().unwrap_or_default();
        let field = if path.is_empty() || path == "." {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return ApiError::field(
            ErrorCode::UnknownField,
            field,
            err.split(" at line").next().unwrap_or(err),
        );
    }
    if let Some(rest) = err.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let field = if path.is_empty() || path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return ApiError::field(
            ErrorCode::InvalidField,
            field,
            format!("missing field {name}"),
        );
    }
    let message = err.split(" at line").next().unwrap_or(err).to_owned();
    if path.is_empty() || path == "." {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("malformed request body: {message}"),
        )
    } else {
        ApiError::field(ErrorCode::InvalidField, path, message)
    }
}

/// Parses JSON text into `T`, naming the field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {inner}"))
        } else {
            field_error(&path, &inner.to_string())
        }
    })
}

/// Reads the body, mapping the size limit to 413.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body exceeds the configured limit (max_body_bytes)",
            )
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("cannot read body: {e}"))
        }
    })
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !ct.starts_with("application/json") {
            return Err(ApiError::field(
                ErrorCode::BadRequest,
                "content-type",
                format!("expected content-type application/json, got {ct:?}"),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A query string parsed into `T` (unknown parameters rejected when `T` denies them).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let mut err = field_error(&path, &msg);
                if err.0.field.is_none() {
                    err.0.code = ErrorCode::InvalidField;
                    err.0.field = Some("query".into());
                }
                err
            })
    }
}

/// Value of the `Idempotency-Key` header, if any (1..=128 visible ASCII characters).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) => {
                let s = v.to_str().unwrap_or("");
                if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ApiError::field(
                        ErrorCode::InvalidField,
                        "idempotency-key",
                        "must be 1..=128 visible ASCII characters",
                    ));
                }
                Ok(IdempotencyKey(Some(s.to_owned())))
            }
        }
    }
}
