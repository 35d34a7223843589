//! Access endpoints: projects, users, API tokens, and the audit trail.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::domain::{AuditEntry, Project, Role, TokenRecord, TokenView, User};
use protocol::error::ErrorCode;
use protocol::{ProjectId, Revision, TokenId, UserName};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Need, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{IdempotencyKey, JsonBody, Query};
use super::fleet::{parse_path, path_matches};
use super::{commit, commit_fresh, read, Consistency};
use crate::app::{now_ms, App};
use crate::secrets;
use crate::state::Command;

#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(Consistency),
    responses((status = 200, body = Vec<Project>)), security(("bearer" = [])))]
pub(super) async fn list_projects(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<Project>>> {
    read(&app, &c, |s| {
        Ok(s.projects
            .values()
            .filter(|x| p.sees_project(Some(&x.name)))
            .cloned()
            .collect())
    })
    .await
    .map(Json)
}

#[utoipa::path(put, path = "/v1/projects/{name}", tag = "projects", request_body = Project,
    responses((status = 200, body = Project)), security(("bearer" = [])))]
pub(super) async fn put_project(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    JsonBody(project): JsonBody<Project>,
) -> ApiResult<Json<Project>> {
    p.require(Need::Operate)?;
    path_matches("name", &name, project.name.as_str())?;
    commit(&app, &p, key, Command::PutProject(project.clone())).await?;
    Ok(Json(project))
}

#[utoipa::path(delete, path = "/v1/projects/{name}", tag = "projects", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn delete_project(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Need::Operate)?;
    commit(
        &app,
        &p,
        key,
        Command::DeleteProject(parse_path::<ProjectId>("name", &name)?),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/users", tag = "users", params(Consistency),
    responses((status = 200, body = Vec<User>)), security(("bearer" = [])))]
pub(super) async fn list_users(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<User>>> {
    p.require(Need::ReadAll)?;
    read(&app, &c, |s| Ok(s.users.values().cloned().collect()))
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/v1/users/{name}", tag = "users", request_body = User,
    responses((status = 200, body = User)), security(("bearer" = [])))]
pub(super) async fn put_user(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    JsonBody(user): JsonBody<User>,
) -> ApiResult<Json<User>> {
    p.require(Need::Admin)?;
    path_matches("name", &name, user.name.as_str())?;
    commit(&app, &p, key, Command::PutUser(user.clone())).await?;
    Ok(Json(user))
}

#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn delete_user(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Need::Admin)?;
    commit(
        &app,
        &p,
        key,
        Command::DeleteUser(parse_path::<UserName>("name", &name)?),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(Consistency),
    responses((status = 200, body = Vec<TokenView>)), security(("bearer" = [])))]
pub(super) async fn list_tokens(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<TokenView>>> {
    read(&app, &c, |s| {
        Ok(s.tokens
            .values()
            .filter(|t| p.role == Role::Admin || t.user == p.user)
            .map(TokenView::from)
            .collect())
    })
    .await
    .map(Json)
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// Owner; defaults to the caller. Only admins may create tokens for others.
    #[serde(default)]
    user: Option<UserName>,
    /// Free text.
    #[serde(default)]
    description: String,
    /// Lifetime in seconds; none means no expiry.
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// A newly created token: the only time the secret is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token's record.
    pub token: TokenView,
    /// The bearer secret. Store it now; it cannot be shown again.
    pub secret: String,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken)), security(("bearer" = [])))]
pub(super) async fn create_token(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(t): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let user = t.user.unwrap_or_else(|| p.user.clone());
    if user != p.user {
        p.require(Need::Admin)?;
    }
    // Any user may mint tokens for themselves: a token never grants more than its user.
    let expires_at = match t.expires_in_secs {
        Some(0) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "expires_in_secs",
                "must be positive",
            ))
        }
        Some(s) => {
            Some(now_ms().saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let secret = secrets::new_token_secret();
    let record = TokenRecord {
        id: TokenId(uuid::Uuid::new_v4()),
        user,
        hash: secrets::hash_token(&secret),
        description: t.description,
        created_at: now_ms(),
        expires_at,
    };
    commit_fresh(
        &app,
        &p,
        key,
        Command::CreateToken(record.clone()),
        "a token was already created with this Idempotency-Key; its secret was shown once and cannot be shown again: list your tokens, delete the unused one and create a new one",
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: TokenView::from(&record),
            secret,
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn delete_token(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: TokenId = parse_path("id", &id)?;
    if p.role != Role::Admin {
        app.read_barrier().await?;
        let owner = app
            .state
            .read()
            .ok()
            .and_then(|g| g.state.tokens.get(&id).map(|t| t.user.clone()));
        if owner.as_ref() != Some(&p.user) {
            return Err(ApiError::not_found(format!("token {id}")));
        }
    }
    commit(&app, &p, key, Command::DeleteToken(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Paging of the audit trail (newest first).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// At most this many entries (default 100, max 10000).
    limit: Option<usize>,
    /// Only entries before this revision.
    before: Option<Revision>,
    /// Only entries by this actor (e.g. `user:admin`).
    actor: Option<String>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>)), security(("bearer" = [])))]
pub(super) async fn list_audit(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    p.require(Need::ReadAll)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "limit",
            "must be 1..=10000",
        ));
    }
    read(&app, &Consistency { stale: q.stale }, |s| {
        Ok(s.audit
            .range(..q.before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, e)| e)
            .filter(|e| q.actor.as_ref().is_none_or(|a| &e.actor == a))
            .take(limit)
            .cloned()
            .collect())
    })
    .await
    .map(Json)
}
