//! Bearer-token authentication and role checks.
//!
//! A token's secret is hashed and looked up in the replicated state; the request then acts as
//! the token's user with that user's role. Role rules live here, in one place.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use protocol::domain::Role;
use protocol::error::ErrorCode;
use protocol::{ProjectId, UserName};

use super::error::ApiError;
use crate::app::{now_ms, App};
use crate::secrets::hash_token;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User name.
    pub user: UserName,
    /// Role.
    pub role: Role,
    /// Project, for project members.
    pub project: Option<ProjectId>,
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read fleet objects (every role; project members are further scoped by handlers).
    Read,
    /// Read everything fleet-wide (not project members).
    ReadAll,
    /// Change fleet objects (operator, admin).
    Operate,
    /// Users, other people's tokens, cluster membership (admin).
    Admin,
}

impl Principal {
    /// Audit actor string.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user)
    }

    /// Refuses with 403 unless the role allows `need`.
    pub fn require(&self, need: Need) -> Result<(), ApiError> {
        let ok = match need {
            Need::Read => true,
            Need::ReadAll => self.role != Role::ProjectMember,
            Need::Operate => matches!(self.role, Role::Admin | Role::Operator),
            Need::Admin => self.role == Role::Admin,
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} of user {} may not do this",
                serde_json::to_value(self.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                self.user
            )))
        }
    }

    /// Whether the caller may see objects of `project` (admins, operators and read-only see
    /// all; project members only their own).
    pub fn sees_project(&self, project: Option<&ProjectId>) -> bool {
        self.role != Role::ProjectMember || (project.is_some() && project == self.project.as_ref())
    }
}

fn unauthenticated(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, msg)
}

impl FromRequestParts<Arc<App>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing Authorization: Bearer <token> header"))?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthenticated("Authorization header must be 'Bearer <token>'"))?;
        let hash = hash_token(secret);
        let lookup = |app: &App| -> Result<Option<Principal>, ApiError> {
            let g = app
                .state
                .read()
                .map_err(|_| ApiError::new(ErrorCode::Internal, "state lock poisoned"))?;
            let Some(tok) = g.state.token_by_hash(&hash) else {
                return Ok(None);
            };
            if tok.expires_at.is_some_and(|e| e <= now_ms()) {
                return Err(unauthenticated("token expired"));
            }
            let Some(user) = g.state.users.get(&tok.user) else {
                return Ok(None);
            };
            Ok(Some(Principal {
                user: user.name.clone(),
                role: user.role,
                project: user.project.clone(),
            }))
        };
        if let Some(p) = lookup(app)? {
            return Ok(p);
        }
        // A token created a moment ago may not be applied here yet: catch up once.
        app.read_barrier().await?;
        lookup(app)?.ok_or_else(|| unauthenticated("unknown or revoked token"))
    }
}
