//! `metalctl`'s one error type and its one mapping to process exit codes (the API's error
//! codes keep the classes [`protocol::error::ErrorCode::exit_code`] gives them).

use protocol::error::ErrorBody;

use super::config::ConfigError;

/// Exit code for bad input found before any request was sent (config, arguments, files).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code when no coordinator could serve the request.
pub const EXIT_UNAVAILABLE: u8 = 6;
/// Exit code for failures that are nobody's input: unreadable responses, bugs.
pub const EXIT_INTERNAL: u8 = 1;

/// One coordinator that could not serve a request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The coordinator's base URL as configured.
    pub url: String,
    /// Why it failed (transport error chain, or the 503 it answered with).
    pub reason: String,
}

/// Why a `metalctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration (file, flags, environment) is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An argument or input file is unusable.
    #[error("{0}")]
    Input(String),
    /// The API answered with an error.
    #[error("{}{}", .0.message, .0.field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api(ErrorBody),
    /// Every coordinator failed at the transport level or answered 503.
    #[error("no coordinator could serve the request:{}", .0.iter().map(|a| format!("\n  {}: {}", a.url, a.reason)).collect::<String>())]
    Unreachable(Vec<Attempt>),
    /// A coordinator answered something that is not the API's JSON.
    #[error("unexpected response from {url}: {message}")]
    BadResponse {
        /// Which coordinator answered.
        url: String,
        /// What was wrong with the answer.
        message: String,
    },
}

impl CliError {
    /// The process exit code: the API code's class, or 2/6/1 for local failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Input(_) => EXIT_BAD_INPUT,
            CliError::Api(b) => u8::try_from(b.code.exit_code()).unwrap_or(EXIT_INTERNAL),
            CliError::Unreachable(_) => EXIT_UNAVAILABLE,
            CliError::BadResponse { .. } => EXIT_INTERNAL,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::error::ErrorCode;

    #[test]
    fn messages_and_exit_codes() {
        let e = CliError::Api(
            ErrorBody::new(ErrorCode::InvalidField, "bad mac").with_field("line 2: nics"),
        );
        assert_eq!(e.to_string(), "bad mac (field line 2: nics)");
        assert_eq!(e.exit_code(), 2);
        let e = CliError::Api(ErrorBody::new(ErrorCode::Unauthenticated, "unknown token"));
        assert_eq!(e.to_string(), "unknown token");
        assert_eq!(e.exit_code(), 3);
        let e = CliError::Unreachable(vec![
            Attempt {
                url: "https://a:1".into(),
                reason: "connection refused".into(),
            },
            Attempt {
                url: "https://b:2".into(),
                reason: "503 unavailable: no leader".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "no coordinator could serve the request:\n  https://a:1: connection refused\n  https://b:2: 503 unavailable: no leader"
        );
        assert_eq!(e.exit_code(), 6);
    }
}
