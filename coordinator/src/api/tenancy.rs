//! Tenancy endpoints (issue 7): node allocation, networks and access lists, NIC attachments,
//! power, moves, jobs and elastic leases.
//!
//! Handlers translate the caller into a [`Caller`] and commit a [`TenancyCommand`]; the
//! ownership and visibility rules are checked inside apply, against the state the command is
//! applied to, so two racing requests cannot both pass. Port and power changes answer
//! `202 Accepted` with the job; `GET /v1/jobs/{id}` follows it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::domain::{NodeView, Role};
use protocol::error::ErrorCode;
use protocol::tenancy::{
    AttachSpec, Job, JobId, JobState, Lease, LeaseId, LeaseState, LeaseWindow, Network,
    NetworkKind, NetworkName, SwitchPort,
};
use protocol::{NodeId, ProjectId, Revision, Serial};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::extract::{IdempotencyKey, JsonBody, Query};
use super::{read, Consistency};
use crate::app::App;
use crate::state::tenancy::{Caller, TenancyCommand};
use crate::state::{Applied, Command, State as DesiredState};

/// The tenancy routes, merged into the API router.
pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(allocate_node))
        .routes(routes!(free_node))
        .routes(routes!(attach))
        .routes(routes!(detach))
        .routes(routes!(revert))
        .routes(routes!(power))
        .routes(routes!(move_node))
        .routes(routes!(node_ports))
        .routes(routes!(list_networks, create_network))
        .routes(routes!(get_network, delete_network))
        .routes(routes!(grant_access, revoke_access))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(list_leases, create_lease))
        .routes(routes!(get_lease, cancel_lease))
}

/// The caller as tenancy rules see it; read-only users are refused here already.
fn caller(p: &Principal) -> Result<Caller, ApiError> {
    if p.role == Role::ReadOnly {
        return Err(ApiError::forbidden(format!(
            "user {} is read-only and may not change anything",
            p.user
        )));
    }
    Ok(Caller {
        role: p.role,
        project: p.project.clone(),
    })
}

fn fleet_wide(p: &Principal) -> bool {
    p.role != Role::ProjectMember
}

/// Commits a tenancy command as `p`; returns the revision it was applied at (the id of the
/// job or lease it made) and its result.
async fn commit(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    cmd: TenancyCommand,
) -> ApiResult<(Revision, Applied)> {
    let request_id = key.0.map(|k| format!("{}/{k}", p.user));
    let resp = app
        .write(p.actor(), request_id, Command::Tenancy(cmd))
        .await?;
    let applied = resp.result.map_err(ApiError::from)?;
    Ok((resp.revision, applied))
}

/// Reads after a barrier, so what a write just did is visible here too.
async fn read_fresh<T>(
    app: &App,
    f: impl FnOnce(&DesiredState) -> Result<T, ApiError>,
) -> ApiResult<T> {
    read(app, &Consistency::default(), f).await
}

/// A node by id or serial. Nodes of other projects resolve too: apply answers "not found"
/// for them, so nothing leaks, and the rule lives in one place.
async fn node_id(app: &App, id: &str) -> ApiResult<NodeId> {
    if let Ok(n) = id.parse::<NodeId>() {
        return Ok(n);
    }
    let serial: Serial = id.parse().map_err(|e: protocol::ids::IdError| {
        ApiError::field(ErrorCode::InvalidField, "id", e.to_string())
    })?;
    read_fresh(app, |s| {
        s.node_by_serial(&serial).map(|n| n.id).ok_or_else(|| {
            ApiError::field(
                ErrorCode::NotFound,
                "node",
                format!("node {id} does not exist"),
            )
        })
    })
    .await
}

async fn job_answer(app: &App, job: JobId) -> ApiResult<(StatusCode, Json<Job>)> {
    let j = read_fresh(app, |s| {
        s.tenancy
            .jobs
            .get(&job)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, format!("job {job} vanished")))
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(j)))
}

fn node_answer(app: &App, a: Applied) -> ApiResult<Json<NodeView>> {
    match a {
        Applied::Node(n) => {
            let g = app
                .state
                .read()
                .map_err(|_| ApiError::new(ErrorCode::Internal, "state lock poisoned"))?;
            Ok(Json(g.state.node_view(&n)))
        }
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected result {other:?}"),
        )),
    }
}

/// Body of `POST /v1/nodes/{id}/allocate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AllocateInput {
    /// Project to give the node to (project members: their own, the default).
    #[serde(default)]
    project: Option<ProjectId>,
}

#[utoipa::path(post, path = "/v1/nodes/{id}/allocate", tag = "tenancy", request_body = AllocateInput,
    responses((status = 200, body = NodeView), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn allocate_node(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AllocateInput>,
) -> ApiResult<Json<NodeView>> {
    let caller = caller(&p)?;
    let project = body
        .project
        .or_else(|| p.project.clone())
        .ok_or_else(|| ApiError::field(ErrorCode::InvalidField, "project", "required"))?;
    let node = node_id(&app, &id).await?;
    let (_, a) = commit(
        &app,
        &p,
        key,
        TenancyCommand::AllocateNode {
            caller,
            node,
            project,
        },
    )
    .await?;
    node_answer(&app, a)
}

#[utoipa::path(post, path = "/v1/nodes/{id}/free", tag = "tenancy",
    responses((status = 200, body = NodeView), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn free_node(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeView>> {
    let caller = caller(&p)?;
    let node = node_id(&app, &id).await?;
    let (_, a) = commit(&app, &p, key, TenancyCommand::FreeNode { caller, node }).await?;
    node_answer(&app, a)
}

#[utoipa::path(post, path = "/v1/nodes/{id}/attach", tag = "tenancy", request_body = AttachSpec,
    responses((status = 202, body = Job), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn attach(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<AttachSpec>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let caller = caller(&p)?;
    let node = node_id(&app, &id).await?;
    let (job, _) = commit(&app, &p, key, TenancyCommand::Attach { caller, node, spec }).await?;
    job_answer(&app, job).await
}

/// Body of `POST /v1/nodes/{id}/detach`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DetachInput {
    /// NIC name.
    nic: String,
    /// Network to detach it from.
    network: NetworkName,
}

#[utoipa::path(post, path = "/v1/nodes/{id}/detach", tag = "tenancy", request_body = DetachInput,
    responses((status = 202, body = Job), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn detach(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DetachInput>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let caller = caller(&p)?;
    let node = node_id(&app, &id).await?;
    let cmd = TenancyCommand::Detach {
        caller,
        node,
        nic: body.nic,
        network: body.network,
    };
    let (job, _) = commit(&app, &p, key, cmd).await?;
    job_answer(&app, job).await
}

/// Body of `POST /v1/nodes/{id}/revert`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevertInput {
    /// NIC whose port should carry nothing.
    nic: String,
}

#[utoipa::path(post, path = "/v1/nodes/{id}/revert", tag = "tenancy", request_body = RevertInput,
    responses((status = 202, body = Job), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn revert(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RevertInput>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let caller = caller(&p)?;
    let node = node_id(&app, &id).await?;
    let cmd = TenancyCommand::Revert {
        caller,
        node,
        nic: body.nic,
    };
    let (job, _) = commit(&app, &p, key, cmd).await?;
    job_answer(&app, job).await
}

/// Body of `POST /v1/nodes/{id}/power`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PowerInput {
    /// True: on; false: off.
    on: bool,
}

#[utoipa::path(post, path = "/v1/nodes/{id}/power", tag = "tenancy", request_body = PowerInput,
    responses((status = 202, body = Job), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn power(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PowerInput>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let caller = caller(&p)?;
    let node = node_id(&app, &id).await?;
    let cmd = TenancyCommand::Power {
        caller,
        node,
        on: body.on,
    };
    let (job, _) = commit(&app, &p, key, cmd).await?;
    job_answer(&app, job).await
}

/// Body of `POST /v1/nodes/{id}/move`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveInput {
    /// Project the node goes to.
    project: ProjectId,
    /// Networks to attach there (the target project must own or have access to them).
    #[serde(default)]
    networks: Vec<AttachSpec>,
}

#[utoipa::path(post, path = "/v1/nodes/{id}/move", tag = "tenancy", request_body = MoveInput,
    responses((status = 202, body = Job), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn move_node(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MoveInput>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let caller = caller(&p)?;
    let node = node_id(&app, &id).await?;
    let cmd = TenancyCommand::Move {
        caller,
        node,
        project: body.project,
        networks: body.networks,
    };
    let (job, _) = commit(&app, &p, key, cmd).await?;
    job_answer(&app, job).await
}

#[utoipa::path(get, path = "/v1/nodes/{id}/ports", tag = "tenancy", params(Consistency),
    responses((status = 200, body = Vec<SwitchPort>), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn node_ports(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<SwitchPort>>> {
    let node = node_id(&app, &id).await?;
    read(&app, &c, |s| {
        match s.nodes.get(&node) {
            Some(n) if p.sees_project(n.project.as_ref()) => {}
            _ => {
                return Err(ApiError::field(
                    ErrorCode::NotFound,
                    "node",
                    format!("node {id} does not exist"),
                ))
            }
        }
        Ok(s.tenancy.node_ports(node).cloned().collect())
    })
    .await
    .map(Json)
}

fn sees_network(p: &Principal, n: &Network) -> bool {
    fleet_wide(p) || p.project.as_ref().is_some_and(|x| n.admits(x))
}

#[utoipa::path(get, path = "/v1/networks", tag = "tenancy", params(Consistency),
    responses((status = 200, body = Vec<Network>)), security(("bearer" = [])))]
pub(super) async fn list_networks(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<Network>>> {
    read(&app, &c, |s| {
        Ok(s.tenancy
            .networks
            .values()
            .filter(|n| sees_network(&p, n))
            .cloned()
            .collect())
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/v1/networks/{name}", tag = "tenancy", params(Consistency),
    responses((status = 200, body = Network), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_network(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(name): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Network>> {
    let name: NetworkName = parse("name", &name)?;
    read(&app, &c, |s| match s.tenancy.networks.get(&name) {
        Some(n) if sees_network(&p, n) => Ok(n.clone()),
        _ => Err(ApiError::not_found(format!("network {name}"))),
    })
    .await
    .map(Json)
}

/// Body of `POST /v1/networks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNetwork {
    /// Unique name.
    name: NetworkName,
    /// What it is for (default `tenant`).
    #[serde(default = "tenant")]
    kind: NetworkKind,
    /// Owning project of a tenant network (project members: their own, the default).
    #[serde(default)]
    owner: Option<ProjectId>,
    /// VLAN id for a public, provisioning or BMC network (admins only); otherwise the lowest
    /// free VLAN of the configured pool.
    #[serde(default)]
    vlan: Option<u16>,
}

fn tenant() -> NetworkKind {
    NetworkKind::Tenant
}

#[utoipa::path(post, path = "/v1/networks", tag = "tenancy", request_body = NewNetwork,
    responses((status = 201, body = Network), (status = 400, body = protocol::error::ErrorBody), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn create_network(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<NewNetwork>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    let caller = caller(&p)?;
    if body.vlan.is_some() && p.role != Role::Admin {
        return Err(ApiError::field(
            ErrorCode::Forbidden,
            "vlan",
            "only admins choose a network's VLAN",
        ));
    }
    let owner = match (body.kind, body.owner) {
        (NetworkKind::Tenant, None) => p.project.clone(),
        (_, o) => o,
    };
    let name = body.name.clone();
    let cmd = TenancyCommand::CreateNetwork {
        caller,
        name: body.name,
        kind: body.kind,
        owner,
        vlan: body.vlan,
        pool: app.config.vlan_pool,
    };
    commit(&app, &p, key, cmd).await?;
    let n = read_fresh(&app, |s| {
        s.tenancy
            .networks
            .get(&name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("network {name}")))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(n)))
}

#[utoipa::path(delete, path = "/v1/networks/{name}", tag = "tenancy",
    responses((status = 204), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn delete_network(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let caller = caller(&p)?;
    let name = parse("name", &name)?;
    commit(
        &app,
        &p,
        key,
        TenancyCommand::DeleteNetwork { caller, name },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/networks/{name}/access/{project}", tag = "tenancy",
    responses((status = 204), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn grant_access(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path((name, project)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let caller = caller(&p)?;
    let cmd = TenancyCommand::GrantAccess {
        caller,
        network: parse("name", &name)?,
        project: parse("project", &project)?,
    };
    commit(&app, &p, key, cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/networks/{name}/access/{project}", tag = "tenancy",
    responses((status = 204), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn revoke_access(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path((name, project)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let caller = caller(&p)?;
    let cmd = TenancyCommand::RevokeAccess {
        caller,
        network: parse("name", &name)?,
        project: parse("project", &project)?,
    };
    commit(&app, &p, key, cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn sees_job(p: &Principal, j: &Job) -> bool {
    fleet_wide(p) || p.project.as_ref().is_some_and(|x| j.projects.contains(x))
}

/// Filters of the job list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct JobFilter {
    /// Only jobs of this node (id).
    #[param(value_type = Option<String>)]
    node: Option<NodeId>,
    /// Only jobs in this state.
    #[param(value_type = Option<String>)]
    state: Option<JobState>,
    /// At most this many, newest first (default 100, max 10000).
    limit: Option<usize>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "tenancy", params(JobFilter),
    responses((status = 200, body = Vec<Job>)), security(("bearer" = [])))]
pub(super) async fn list_jobs(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(f): Query<JobFilter>,
) -> ApiResult<Json<Vec<Job>>> {
    let limit = f.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "limit",
            "must be 1..=10000",
        ));
    }
    read(&app, &Consistency { stale: f.stale }, |s| {
        Ok(s.tenancy
            .jobs
            .values()
            .rev()
            .filter(|j| sees_job(&p, j))
            .filter(|j| f.node.is_none_or(|n| j.node == n))
            .filter(|j| f.state.is_none_or(|st| j.state == st))
            .take(limit)
            .cloned()
            .collect())
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "tenancy", params(Consistency),
    responses((status = 200, body = Job), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_job(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Job>> {
    let id: JobId = parse("id", &id)?;
    read(&app, &c, |s| match s.tenancy.jobs.get(&id) {
        Some(j) if sees_job(&p, j) => Ok(j.clone()),
        _ => Err(ApiError::not_found(format!("job {id}"))),
    })
    .await
    .map(Json)
}

/// A lease as the API shows it, with its node as the caller should see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    /// The lease.
    #[serde(flatten)]
    pub lease: Lease,
    /// The node's serial.
    #[schema(value_type = String)]
    pub serial: Serial,
    /// The node's power as the caller sees it: to the borrower a node that is away (not
    /// lent right now) shows as off.
    pub power_on: Option<bool>,
    /// Whether the node is with the borrower now.
    pub lent: bool,
}

fn lease_view(s: &DesiredState, p: &Principal, l: &Lease) -> Option<LeaseView> {
    let borrower = p.project.as_ref() == Some(&l.project);
    let visible = fleet_wide(p) || borrower || (p.project.is_some() && p.project == l.owner);
    if !visible {
        return None;
    }
    let node = s.nodes.get(&l.node)?;
    let lent = l.state == LeaseState::Active;
    let power_on = if borrower && !lent {
        Some(false)
    } else {
        node.power_on
    };
    Some(LeaseView {
        lease: l.clone(),
        serial: node.serial.clone(),
        power_on,
        lent,
    })
}

#[utoipa::path(get, path = "/v1/leases", tag = "tenancy", params(Consistency),
    responses((status = 200, body = Vec<LeaseView>)), security(("bearer" = [])))]
pub(super) async fn list_leases(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<LeaseView>>> {
    read(&app, &c, |s| {
        Ok(s.tenancy
            .leases
            .values()
            .filter_map(|l| lease_view(s, &p, l))
            .collect())
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/v1/leases/{id}", tag = "tenancy", params(Consistency),
    responses((status = 200, body = LeaseView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_lease(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<LeaseView>> {
    let id: LeaseId = parse("id", &id)?;
    read(&app, &c, |s| {
        s.tenancy
            .leases
            .get(&id)
            .and_then(|l| lease_view(s, &p, l))
            .ok_or_else(|| ApiError::not_found(format!("lease {id}")))
    })
    .await
    .map(Json)
}

/// Body of `POST /v1/leases`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewLease {
    /// Node id or serial.
    node: String,
    /// The borrowing project.
    project: ProjectId,
    /// When it is lent: `{"start": "00:00", "end": "06:00", "tz": "UTC"}` every day, or
    /// `{"from": <unix ms>, "until": <unix ms>}` once.
    window: LeaseWindow,
}

#[utoipa::path(post, path = "/v1/leases", tag = "tenancy", request_body = NewLease,
    responses((status = 201, body = LeaseView), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn create_lease(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<NewLease>,
) -> ApiResult<(StatusCode, Json<LeaseView>)> {
    let caller = caller(&p)?;
    if let Err(e) = body.window.validate() {
        return Err(ApiError::field(ErrorCode::InvalidField, e.field, e.message));
    }
    let node = node_id(&app, &body.node).await?;
    let cmd = TenancyCommand::CreateLease {
        caller,
        node,
        project: body.project,
        window: body.window,
    };
    let (id, _) = commit(&app, &p, key, cmd).await?;
    let v = read_fresh(&app, |s| {
        s.tenancy
            .leases
            .get(&id)
            .and_then(|l| lease_view(s, &p, l))
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, format!("lease {id} vanished")))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "tenancy",
    responses((status = 200, body = LeaseView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn cancel_lease(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<LeaseView>> {
    let caller = caller(&p)?;
    let lease: LeaseId = parse("id", &id)?;
    commit(&app, &p, key, TenancyCommand::CancelLease { caller, lease }).await?;
    read_fresh(&app, |s| {
        s.tenancy
            .leases
            .get(&lease)
            .and_then(|l| lease_view(s, &p, l))
            .ok_or_else(|| ApiError::not_found(format!("lease {lease}")))
    })
    .await
    .map(Json)
}

fn parse<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse()
        .map_err(|e: T::Err| ApiError::field(ErrorCode::InvalidField, field, e.to_string()))
}
