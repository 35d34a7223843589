//! Stable error codes and the JSON error body shared by the REST API, `metalctl` and agents.
//!
//! An [`ErrorCode`] is the one thing a client may branch on: its string form
//! ([`ErrorCode::as_str`]) is a stable contract, its HTTP status and CLI exit code are fixed
//! here once so every component maps errors the same way. Messages are for humans and may
//! change between releases.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// What went wrong, in terms a client can act on.
///
/// The snake_case string of each code (see [`ErrorCode::as_str`]) is part of the public API:
/// scripts, Ansible modules and older `metalctl` builds match on it. Never rename or reuse a
/// code; add a new one instead, at the end of the enum: postcard (the fleet link) encodes a
/// variant by its position, so the order is a wire contract too. A code this build does not
/// know (sent by a newer peer during a rolling upgrade) deserializes as
/// [`ErrorCode::Internal`], in JSON and in postcard alike, so the message still reaches the
/// operator instead of the whole body failing to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request could not be parsed or is inconsistent as a whole.
    BadRequest,
    /// One field has a value outside its allowed range or format; `field` names it.
    InvalidField,
    /// The request carries a field this API does not know (bodies are parsed strictly so a
    /// typo is not silently ignored); `field` names it.
    UnknownField,
    /// The request body or frame exceeds the size limit.
    PayloadTooLarge,
    /// No credentials, or credentials that are expired or invalid.
    Unauthenticated,
    /// Valid credentials whose role does not allow this action.
    Forbidden,
    /// The named object does not exist (or is not visible to the caller).
    NotFound,
    /// The request conflicts with the current state of the object (e.g. it is in use).
    Conflict,
    /// The object's lifecycle does not allow this transition from its current state.
    InvalidTransition,
    /// An object with this name or id already exists.
    AlreadyExists,
    /// A precondition such as an expected generation or `If-Match` did not hold; re-read and
    /// retry.
    PreconditionFailed,
    /// This coordinator is not the Raft leader and could not forward the write; retry against
    /// another coordinator.
    NotLeader,
    /// A dependency (quorum, agent, BMC, switch) is unreachable; retrying later may succeed.
    Unavailable,
    /// The operation did not finish in time; its outcome may be unknown.
    Timeout,
    /// The peer speaks a protocol or schema version this build does not.
    UnsupportedVersion,
    /// A bug or unexpected failure on the server side; also stands in for codes this build
    /// does not know.
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidField,
        ErrorCode::UnknownField,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::InvalidTransition,
        ErrorCode::AlreadyExists,
        ErrorCode::PreconditionFailed,
        ErrorCode::NotLeader,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Internal,
    ];

    /// The code's snake_case name, identical to its serde/JSON form.
    ///
    /// These strings are a stable contract with clients: never change one.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the REST API answers with for this code.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidField | ErrorCode::UnknownField => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::InvalidTransition | ErrorCode::AlreadyExists => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::NotLeader | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::UnsupportedVersion => 400,
            ErrorCode::Internal => 500,
        }
    }

    /// The process exit code a CLI (`metalctl`) uses when a request fails with this code.
    ///
    /// Grouped so scripts can branch on the class of failure: `2` bad input (fix the request),
    /// `3` authentication or authorisation, `4` not found, `5` conflict with current state
    /// (re-read and retry), `6` unavailable or timed out (retry later), `1` internal.
    pub fn exit_code(&self) -> i32 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidField
            | ErrorCode::UnknownField
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UnsupportedVersion => 2,
            ErrorCode::Unauthenticated | ErrorCode::Forbidden => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::Conflict
            | ErrorCode::InvalidTransition
            | ErrorCode::AlreadyExists
            | ErrorCode::PreconditionFailed => 5,
            ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Timeout => 6,
            ErrorCode::Internal => 1,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every REST API error: `{"code": ..., "message": ..., "field": ...}`.
///
/// Clients branch on `code`; `message` is for humans; `field` names the offending request
/// field (a dotted path such as `bmc.address`) when one is to blame and is omitted otherwise.
///
/// The same type travels in postcard frames on the fleet link; see the `Serialize` impl.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation, with enough context (ids, names) to act on.
    pub message: String,
    /// The request field at fault, if any.
    #[serde(default)]
    pub field: Option<String>,
}

// Written by hand because `skip_serializing_if` breaks postcard, which is not self-describing:
// the decoder would read whatever follows the body as `field`. So an absent `field` is omitted
// only for human-readable formats (JSON) and always written, as `None`, for binary ones.
impl Serialize for ErrorBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let omit_field = self.field.is_none() && serializer.is_human_readable();
        let mut st = serializer.serialize_struct("ErrorBody", if omit_field { 2 } else { 3 })?;
        st.serialize_field("code", &self.code)?;
        st.serialize_field("message", &self.message)?;
        if omit_field {
            st.skip_field("field")?;
        } else {
            st.serialize_field("field", &self.field)?;
        }
        st.end()
    }
}

impl ErrorBody {
    /// An error body with `code` and `message` and no field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The same body, naming `field` as the request field at fault.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Exhaustive, so adding a variant without listing it in `ALL` fails to compile here.
    fn position(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadRequest => 0,
            ErrorCode::InvalidField => 1,
            ErrorCode::UnknownField => 2,
            ErrorCode::PayloadTooLarge => 3,
            ErrorCode::Unauthenticated => 4,
            ErrorCode::Forbidden => 5,
            ErrorCode::NotFound => 6,
            ErrorCode::Conflict => 7,
            ErrorCode::InvalidTransition => 8,
            ErrorCode::AlreadyExists => 9,
            ErrorCode::PreconditionFailed => 10,
            ErrorCode::NotLeader => 11,
            ErrorCode::Unavailable => 12,
            ErrorCode::Timeout => 13,
            ErrorCode::UnsupportedVersion => 14,
            ErrorCode::Internal => 15,
        }
    }

    #[test]
    fn all_lists_every_code_once() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(position(*code), i, "{code:?}");
        }
    }

    #[test]
    fn as_str_matches_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn unknown_code_decodes_as_internal() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"too many"}"#).unwrap();
        assert_eq!(body.code, ErrorCode::Internal);
        assert_eq!(body.message, "too many");
    }

    #[test]
    fn postcard_round_trip_with_and_without_field() {
        let plain = ErrorBody::new(ErrorCode::NotFound, "node 42 not found");
        let with_field = plain.clone().with_field("rack");
        // Followed by another value, as inside an enum or struct in a fleet frame.
        for body in [plain, with_field] {
            let bytes = postcard::to_stdvec(&(body.clone(), 7u8)).unwrap();
            let back: (ErrorBody, u8) = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, (body, 7));
        }
    }

    #[test]
    fn postcard_variant_positions_are_stable() {
        for code in ErrorCode::ALL {
            let bytes = postcard::to_stdvec(&code).unwrap();
            assert_eq!(bytes, [u8::try_from(position(code)).unwrap()], "{code:?}");
        }
        // A position past the end (a newer peer's code) decodes as Internal.
        assert_eq!(
            postcard::from_bytes::<ErrorCode>(&[100]).unwrap(),
            ErrorCode::Internal
        );
    }

    #[test]
    fn status_mapping() {
        assert_eq!(ErrorCode::BadRequest.http_status(), 400);
        assert_eq!(ErrorCode::UnknownField.http_status(), 400);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::InvalidTransition.http_status(), 409);
        assert_eq!(ErrorCode::PreconditionFailed.http_status(), 412);
        assert_eq!(ErrorCode::NotLeader.http_status(), 503);
        assert_eq!(ErrorCode::Timeout.http_status(), 504);
        assert_eq!(ErrorCode::UnsupportedVersion.http_status(), 400);
        assert_eq!(ErrorCode::Internal.http_status(), 500);
    }

    #[test]
    fn exit_code_mapping() {
        assert_eq!(ErrorCode::InvalidField.exit_code(), 2);
        assert_eq!(ErrorCode::Forbidden.exit_code(), 3);
        assert_eq!(ErrorCode::NotFound.exit_code(), 4);
        assert_eq!(ErrorCode::AlreadyExists.exit_code(), 5);
        assert_eq!(ErrorCode::Unavailable.exit_code(), 6);
        assert_eq!(ErrorCode::Internal.exit_code(), 1);
        for code in ErrorCode::ALL {
            assert!((1..=6).contains(&code.exit_code()), "{code:?}");
        }
    }

    #[test]
    fn body_json_shape() {
        let plain = ErrorBody::new(ErrorCode::NotFound, "node 42 not found");
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"code": "not_found", "message": "node 42 not found"})
        );
        let with_field =
            ErrorBody::new(ErrorCode::InvalidField, "not an IP").with_field("bmc.address");
        assert_eq!(
            serde_json::to_value(&with_field).unwrap(),
            serde_json::json!({"code": "invalid_field", "message": "not an IP", "field": "bmc.address"})
        );
        let back: ErrorBody =
            serde_json::from_str(r#"{"code":"not_found","message":"node 42 not found"}"#).unwrap();
        assert_eq!(back, plain);
        assert_eq!(
            with_field.to_string(),
            "invalid_field: not an IP (field `bmc.address`)"
        );
        let _: &dyn std::error::Error = &plain;
    }
}
