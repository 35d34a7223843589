//! The API's one error type and its one mapping to HTTP: `{code, message, field?}` with the
//! status that [`ErrorCode::http_status`] assigns.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::error::{ErrorBody, ErrorCode};

use crate::app::AppError;

/// An error answer of the REST API.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    /// Error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ErrorBody::new(code, message))
    }
    /// Error about one field of the request.
    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError(ErrorBody::new(code, message).with_field(field))
    }
    /// 404 for a named object.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} does not exist"))
    }
    /// 403 with a reason.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }
}

impl From<ErrorBody> for ApiError {
    fn from(b: ErrorBody) -> Self {
        ApiError(b)
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError(e.body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.0.code.as_str(), message = %self.0.message, "request failed");
        }
        (status, Json(self.0)).into_response()
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;
