//! Cluster endpoints: status, membership (learner, promote, remove), and the join flow that
//! hands a new coordinator its certificate.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use protocol::domain::CoordinatorAddr;
use protocol::error::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Need, Principal};
use super::commit;
use super::error::{ApiError, ApiResult};
use super::extract::{IdempotencyKey, JsonBody};
use super::fleet::parse_path;
use crate::app::{App, ClusterStatus, JoinBundle, JoinRequest};
use crate::state::Command;

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterStatus)), security(("bearer" = [])))]
pub(super) async fn status(
    State(app): State<Arc<App>>,
    p: Principal,
) -> ApiResult<Json<ClusterStatus>> {
    p.require(Need::Read)?;
    Ok(Json(app.status()))
}

/// Body of `POST /v1/cluster/learners`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewLearner {
    id: u64,
    raft_addr: String,
    api_url: String,
    /// `host:port` of its fleet endpoint for rack agents (optional; agents also learn it
    /// from their configuration).
    #[serde(default)]
    fleet_addr: Option<String>,
}

/// Result of a membership change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipChanged {
    /// Log index at which the change committed.
    pub revision: u64,
    /// The cluster afterwards.
    pub cluster: ClusterStatus,
}

async fn note(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    action: &str,
    target: String,
) -> ApiResult<()> {
    commit(
        app,
        p,
        key,
        Command::Note {
            action: action.into(),
            target,
        },
    )
    .await
    .map(|_| ())
}

/// Records a membership change in the audit trail and answers with the cluster afterwards.
async fn changed(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    action: &str,
    target: String,
    revision: u64,
) -> ApiResult<Json<MembershipChanged>> {
    note(app, p, key, action, target).await?;
    Ok(Json(MembershipChanged {
        revision,
        cluster: app.status(),
    }))
}

#[utoipa::path(post, path = "/v1/cluster/learners", tag = "cluster", request_body = NewLearner,
    responses((status = 200, body = MembershipChanged)), security(("bearer" = [])))]
pub(super) async fn add_learner(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(l): JsonBody<NewLearner>,
) -> ApiResult<Json<MembershipChanged>> {
    p.require(Need::Admin)?;
    if l.id == 0 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "id",
            "must be greater than 0",
        ));
    }
    if !l.api_url.starts_with("https://") {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "api_url",
            "must start with https://",
        ));
    }
    if l.raft_addr
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_none()
    {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "raft_addr",
            "must be host:port",
        ));
    }
    let addr = CoordinatorAddr {
        raft_addr: l.raft_addr,
        api_url: l.api_url,
        fleet_addr: l.fleet_addr.unwrap_or_default(),
    };
    let revision = app.add_learner(l.id, addr.clone()).await?;
    changed(
        &app,
        &p,
        key,
        "cluster.add_learner",
        format!("{} {addr}", l.id),
        revision,
    )
    .await
}

#[utoipa::path(post, path = "/v1/cluster/voters/{id}", tag = "cluster",
    responses((status = 200, body = MembershipChanged)), security(("bearer" = [])))]
pub(super) async fn promote(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<MembershipChanged>> {
    p.require(Need::Admin)?;
    let id: u64 = parse_path("id", &id)?;
    let revision = app.promote(id).await?;
    changed(&app, &p, key, "cluster.promote", id.to_string(), revision).await
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    responses((status = 200, body = MembershipChanged)), security(("bearer" = [])))]
pub(super) async fn remove(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<MembershipChanged>> {
    p.require(Need::Admin)?;
    let id: u64 = parse_path("id", &id)?;
    if !app.status().members.iter().any(|m| m.id == id) {
        return Err(ApiError::not_found(format!("coordinator {id}")));
    }
    let revision = app.remove(id).await?;
    changed(&app, &p, key, "cluster.remove", id.to_string(), revision).await
}

#[utoipa::path(post, path = "/v1/cluster/join", tag = "cluster", request_body = JoinRequest,
    responses((status = 200, body = JoinBundle)), security(("bearer" = [])))]
pub(super) async fn join(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(j): JsonBody<JoinRequest>,
) -> ApiResult<Json<JoinBundle>> {
    p.require(Need::Admin)?;
    if j.id == 0 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "id",
            "must be greater than 0",
        ));
    }
    app.read_barrier().await?;
    let bundle = app.issue_join_bundle(j.id, &j.csr_pem, &j.addr)?;
    note(
        &app,
        &p,
        key,
        "cluster.issue_certificate",
        format!("coordinator:{}", j.id),
    )
    .await?;
    Ok(Json(bundle))
}
