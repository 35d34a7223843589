//! Workflow endpoints (issue 6): templates (`/v1/workflows`), runs (`/v1/runs`), rollouts
//! (`/v1/rollouts`) and node timelines (`/v1/nodes/{id}/events`).
//!
//! The handler parses, validates and expands templates against the stored ones (YAML and
//! minijinja stay out of apply) and commits a [`RunsCommand`] carrying the YAML text or the
//! expanded plan; who may act on which node is checked inside apply, against the state the
//! command is applied to.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::domain::Role;
use protocol::error::ErrorCode;
use protocol::workflow::RunPlan;
use protocol::{NodeId, Revision, Serial};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Need, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{IdempotencyKey, JsonBody, Query};
use super::{read, Consistency};
use crate::app::App;
use crate::state::runs::{
    state_name, Rollout, RolloutAction, RolloutId, RolloutProgress, Run, RunAction, RunsCommand,
    Selector, TimelineEntry, TimelineKind, WorkflowVersion,
};
use crate::state::tenancy::Caller;
use crate::state::{Command, State as DesiredState};
use crate::workflow::{ExpandError, Template, TemplateError, TemplateRegistry};

/// The workflow routes, merged into the API router.
pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows))
        .routes(routes!(get_workflow, put_workflow, delete_workflow))
        .routes(routes!(list_runs, start_runs))
        .routes(routes!(get_run))
        .routes(routes!(pause_run))
        .routes(routes!(resume_run))
        .routes(routes!(cancel_run))
        .routes(routes!(run_logs))
        .routes(routes!(node_events))
        .routes(routes!(list_rollouts, create_rollout))
        .routes(routes!(get_rollout))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(abort_rollout))
}

/// The caller as apply's rules see it; read-only users are refused here already.
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

async fn commit(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    cmd: RunsCommand,
) -> ApiResult<Revision> {
    let request_id = key.0.map(|k| format!("{}/{k}", p.user));
    let resp = app.write(p.actor(), request_id, Command::Runs(cmd)).await?;
    resp.result.map_err(ApiError::from)?;
    Ok(resp.revision)
}

async fn read_fresh<T>(
    app: &App,
    f: impl FnOnce(&DesiredState) -> Result<T, ApiError>,
) -> ApiResult<T> {
    read(app, &Consistency::default(), f).await
}

/// Every stored template, parsed again (the stored text was validated when it was put).
pub fn registry(s: &DesiredState) -> TemplateRegistry {
    let mut reg = TemplateRegistry::new();
    for w in s.runs.workflows.values() {
        match Template::parse(&w.name, &w.source) {
            Ok(t) => {
                if let Err(e) = reg.insert(t) {
                    tracing::warn!(workflow = %w.name, version = w.version, error = %e, "stored workflow refused");
                }
            }
            Err(e) => {
                tracing::warn!(workflow = %w.name, version = w.version, error = %e, "stored workflow does not parse")
            }
        }
    }
    reg
}

fn expand_error(e: ExpandError) -> ApiError {
    match e {
        ExpandError::NotFound { .. } => {
            ApiError::field(ErrorCode::NotFound, "workflow", e.to_string())
        }
        ExpandError::Invalid(p) => {
            let field = p.0.first().map(|x| x.at.clone()).unwrap_or_default();
            ApiError::field(ErrorCode::InvalidField, field, p.to_string())
        }
    }
}

/// Expands a stored template with `params` (the proposer's half of starting runs).
async fn expand(
    app: &App,
    workflow: &str,
    version: Option<u32>,
    params: &BTreeMap<String, Value>,
) -> ApiResult<RunPlan> {
    read_fresh(app, |s| {
        registry(s)
            .expand(workflow, version, params)
            .map_err(expand_error)
    })
    .await
}

/// A node by id or serial.
async fn node_id(app: &App, field: &str, id: &str) -> ApiResult<NodeId> {
    if let Ok(n) = id.parse::<NodeId>() {
        return Ok(n);
    }
    let serial: Serial = id.parse().map_err(|e: protocol::ids::IdError| {
        ApiError::field(ErrorCode::InvalidField, field, e.to_string())
    })?;
    read_fresh(app, |s| {
        s.node_by_serial(&serial).map(|n| n.id).ok_or_else(|| {
            ApiError::field(
                ErrorCode::NotFound,
                field,
                format!("node {id} does not exist"),
            )
        })
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Templates

/// A template name with its stored versions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSummary {
    /// Name.
    pub name: String,
    /// Stored versions, ascending.
    pub versions: Vec<u32>,
    /// The newest version's description.
    pub description: String,
    /// When the newest version was stored.
    pub updated_at: protocol::domain::UnixMillis,
}

/// A stored template version, with every version of its name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    /// The version asked for (the newest by default).
    #[serde(flatten)]
    pub workflow: WorkflowVersion,
    /// Stored versions of this name, ascending.
    pub versions: Vec<u32>,
}

#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", params(Consistency),
    responses((status = 200, body = Vec<WorkflowSummary>)), security(("bearer" = [])))]
pub(super) async fn list_workflows(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<WorkflowSummary>>> {
    p.require(Need::Read)?;
    read(&app, &c, |s| {
        let mut out: BTreeMap<String, WorkflowSummary> = BTreeMap::new();
        for w in s.runs.workflows.values() {
            let e = out
                .entry(w.name.clone())
                .or_insert_with(|| WorkflowSummary {
                    name: w.name.clone(),
                    versions: Vec::new(),
                    description: String::new(),
                    updated_at: 0,
                });
            e.versions.push(w.version);
            e.description.clone_from(&w.description);
            e.updated_at = w.created_at;
        }
        Ok(out.into_values().collect())
    })
    .await
    .map(Json)
}

/// Query of `GET|DELETE /v1/workflows/{name}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionQuery {
    /// A version (default: the newest; for a delete: every version).
    version: Option<u32>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/workflows/{name}", tag = "workflows", params(VersionQuery),
    responses((status = 200, body = WorkflowView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_workflow(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<WorkflowView>> {
    p.require(Need::Read)?;
    read(&app, &Consistency { stale: q.stale }, |s| {
        let w = s.runs.workflow(&name, q.version).ok_or_else(|| {
            ApiError::not_found(match q.version {
                Some(v) => format!("workflow {name} version {v}"),
                None => format!("workflow {name}"),
            })
        })?;
        Ok(WorkflowView {
            workflow: w.clone(),
            versions: s.runs.versions(&name).map(|w| w.version).collect(),
        })
    })
    .await
    .map(Json)
}

/// `PUT /v1/workflows/{name}`: the template's YAML (`kind: Workflow`, `name` as in the path).
/// Its `version` is stored once: the same text again is a no-op, other text under a stored
/// version is refused (publish a new version); older versions stay addressable.
#[utoipa::path(put, path = "/v1/workflows/{name}", tag = "workflows",
    request_body(content = String, content_type = "application/yaml", description = "The template's YAML"),
    responses((status = 200, body = WorkflowView), (status = 400, body = protocol::error::ErrorBody), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn put_workflow(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<WorkflowView>> {
    p.require(Need::Operate)?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body is not UTF-8: {e}")))?;
    let t = Template::parse(&name, text).map_err(|e| match e {
        TemplateError::Yaml { .. } => ApiError::new(ErrorCode::BadRequest, e.to_string()),
        TemplateError::Invalid(p) => {
            let field = p.0.first().map(|x| x.at.clone()).unwrap_or_default();
            ApiError::field(ErrorCode::InvalidField, field, p.to_string())
        }
    })?;
    if t.name != name {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "name",
            format!("the template is named {:?}, the path says {name:?}", t.name),
        ));
    }
    let version = t.version;
    let description = t.description.clone();
    // Includes resolve against the stored templates: check the expansion before storing.
    read_fresh(&app, |s| {
        let mut reg = registry(s);
        reg.insert(t)
            .map_err(|e| ApiError::field(ErrorCode::Conflict, "version", e.to_string()))?;
        reg.check(&name, Some(version)).map_err(expand_error)?;
        Ok(())
    })
    .await?;
    commit(
        &app,
        &p,
        key,
        RunsCommand::PutWorkflow {
            name: name.clone(),
            version,
            description,
            source: text.to_owned(),
        },
    )
    .await?;
    get_workflow(
        State(app),
        p,
        Path(name),
        Query(VersionQuery {
            version: Some(version),
            stale: false,
        }),
    )
    .await
}

#[utoipa::path(delete, path = "/v1/workflows/{name}", tag = "workflows", params(VersionQuery),
    responses((status = 204), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn delete_workflow(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<StatusCode> {
    p.require(Need::Operate)?;
    commit(
        &app,
        &p,
        key,
        RunsCommand::DeleteWorkflow {
            name,
            version: q.version,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Runs

fn sees_run(p: &Principal, r: &Run) -> bool {
    p.sees_project(r.project.as_ref())
}

/// Body of `POST /v1/runs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRuns {
    /// Template name.
    workflow: String,
    /// Template version (default: the newest).
    #[serde(default)]
    version: Option<u32>,
    /// Parameter values.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: BTreeMap<String, Value>,
    /// Node ids or serials; one run each.
    nodes: Vec<String>,
}

#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = NewRuns,
    responses((status = 201, body = Vec<Run>), (status = 400, body = protocol::error::ErrorBody), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn start_runs(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<NewRuns>,
) -> ApiResult<(StatusCode, Json<Vec<Run>>)> {
    let caller = caller(&p)?;
    let mut nodes = Vec::with_capacity(body.nodes.len());
    for (i, n) in body.nodes.iter().enumerate() {
        nodes.push(node_id(&app, &format!("nodes[{i}]"), n).await?);
    }
    let plan = expand(&app, &body.workflow, body.version, &body.params).await?;
    let rev = commit(
        &app,
        &p,
        key,
        RunsCommand::StartRuns {
            caller,
            plan,
            nodes,
        },
    )
    .await?;
    let runs = read_fresh(&app, |s| {
        Ok(s.runs
            .runs
            .values()
            .filter(|r| r.created_revision == rev && r.rollout.is_none())
            .cloned()
            .collect())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(runs)))
}

/// Filters of the run list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct RunFilter {
    /// Only runs of this node (id or serial).
    node: Option<String>,
    /// Only runs in this state (`pending`, `running`, `paused`, `succeeded`, `failed`,
    /// `cancelled`), or `active` (not ended).
    state: Option<String>,
    /// Only runs of this rollout.
    rollout: Option<RolloutId>,
    /// At most this many, newest first (default 100, max 10000).
    limit: Option<usize>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(RunFilter),
    responses((status = 200, body = Vec<Run>)), security(("bearer" = [])))]
pub(super) async fn list_runs(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(f): Query<RunFilter>,
) -> ApiResult<Json<Vec<Run>>> {
    let limit = f.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "limit",
            "must be 1..=10000",
        ));
    }
    let states = [
        "pending",
        "running",
        "paused",
        "succeeded",
        "failed",
        "cancelled",
        "active",
    ];
    if let Some(st) = &f.state {
        if !states.contains(&st.as_str()) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "state",
                format!(
                    "unknown state {st:?}: expected one of {}",
                    states.join(", ")
                ),
            ));
        }
    }
    let node = match &f.node {
        Some(n) => Some(node_id(&app, "node", n).await?),
        None => None,
    };
    read(&app, &Consistency { stale: f.stale }, |s| {
        let mut runs: Vec<&Run> = s
            .runs
            .runs
            .values()
            .filter(|r| sees_run(&p, r))
            .filter(|r| node.is_none_or(|n| r.node == n))
            .filter(|r| f.rollout.is_none_or(|x| r.rollout == Some(x)))
            .filter(|r| match f.state.as_deref() {
                None => true,
                Some("active") => !r.is_final(),
                Some(st) => state_name(r.status.state) == st,
            })
            .collect();
        runs.sort_by(|a, b| (b.created_revision, &b.id).cmp(&(a.created_revision, &a.id)));
        Ok(runs.into_iter().take(limit).cloned().collect())
    })
    .await
    .map(Json)
}

fn visible_run(s: &DesiredState, p: &Principal, id: &str) -> Result<Run, ApiError> {
    match s.runs.runs.get(id) {
        Some(r) if sees_run(p, r) => Ok(r.clone()),
        _ => Err(ApiError::not_found(format!("run {id}"))),
    }
}

#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(Consistency),
    responses((status = 200, body = Run), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_run(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Run>> {
    read(&app, &c, |s| visible_run(s, &p, &id)).await.map(Json)
}

async fn control_run(
    app: Arc<App>,
    p: Principal,
    key: IdempotencyKey,
    id: String,
    action: RunAction,
) -> ApiResult<Json<Run>> {
    let caller = caller(&p)?;
    commit(
        &app,
        &p,
        key,
        RunsCommand::ControlRun {
            caller,
            run: id.clone(),
            action,
        },
    )
    .await?;
    read_fresh(&app, |s| visible_run(s, &p, &id))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/v1/runs/{id}/pause", tag = "runs",
    responses((status = 200, body = Run), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn pause_run(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    control_run(app, p, key, id, RunAction::Pause).await
}

#[utoipa::path(post, path = "/v1/runs/{id}/resume", tag = "runs",
    responses((status = 200, body = Run), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn resume_run(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    control_run(app, p, key, id, RunAction::Resume).await
}

#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs",
    responses((status = 200, body = Run), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn cancel_run(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    control_run(app, p, key, id, RunAction::Cancel).await
}

/// The kept log lines of one step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepLogView {
    /// Step name.
    pub step: String,
    /// The newest lines, oldest first.
    pub lines: Vec<String>,
    /// Older lines dropped to keep the bound.
    pub dropped: u64,
}

/// Query of `GET /v1/runs/{id}/logs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    /// Only this step (default: every step, in plan order).
    step: Option<String>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "runs", params(LogQuery),
    responses((status = 200, body = Vec<StepLogView>), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn run_logs(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<StepLogView>>> {
    read(&app, &Consistency { stale: q.stale }, |s| {
        let run = visible_run(s, &p, &id)?;
        if let Some(step) = &q.step {
            if !run.plan.steps.iter().any(|x| &x.name == step) {
                return Err(ApiError::field(
                    ErrorCode::NotFound,
                    "step",
                    format!("run {id} has no step {step:?}"),
                ));
            }
        }
        Ok(run
            .plan
            .steps
            .iter()
            .filter(|x| q.step.as_ref().is_none_or(|st| st == &x.name))
            .filter_map(|x| s.runs.logs.get(&(id.clone(), x.name.clone())))
            .map(|l| StepLogView {
                step: l.step.clone(),
                lines: l.lines.iter().cloned().collect(),
                dropped: l.dropped,
            })
            .collect())
    })
    .await
    .map(Json)
}

/// Query of `GET /v1/nodes/{id}/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Only entries recorded after this revision (for following).
    since: Option<Revision>,
    /// At most this many, the newest (default 1000).
    limit: Option<usize>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

/// `GET /v1/nodes/{id}/events`: the node's timeline, oldest first — check-ins, boot
/// decisions, power, runs and their step transitions, step log summaries, tenancy jobs.
#[utoipa::path(get, path = "/v1/nodes/{id}/events", tag = "runs", params(EventsQuery),
    responses((status = 200, body = Vec<TimelineEntry>), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn node_events(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<TimelineEntry>>> {
    let node = node_id(&app, "id", &id).await?;
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(crate::state::runs::TIMELINE_PER_NODE);
    read(&app, &Consistency { stale: q.stale }, |s| {
        match s.nodes.get(&node) {
            Some(n) if p.sees_project(n.project.as_ref()) => {}
            _ => return Err(ApiError::not_found(format!("node {id}"))),
        }
        let mut out: Vec<TimelineEntry> = s
            .runs
            .timelines
            .get(&node)
            .into_iter()
            .flatten()
            .filter(|e| e.revision > since)
            .cloned()
            .collect();
        // Tenancy jobs are kept with their own history: merged in as they now are.
        out.extend(
            s.tenancy
                .jobs
                .values()
                .filter(|j| j.node == node)
                .filter(|j| j.revision > since)
                .map(|j| TimelineEntry {
                    at: j.updated_at,
                    revision: j.revision,
                    rack: None,
                    seq: None,
                    kind: TimelineKind::Job,
                    run: None,
                    step: None,
                    attempt: None,
                    state: serde_json::to_value(j.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned)),
                    message: format!(
                        "job {} {}{}",
                        j.id,
                        serde_json::to_value(&j.kind)
                            .ok()
                            .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
                            .unwrap_or_default(),
                        j.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                }),
        );
        out.sort_by_key(|e| (e.revision, e.at));
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    })
    .await
    .map(Json)
}

// ---------------------------------------------------------------------------------------
// Rollouts

/// Body of `POST /v1/rollouts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRollout {
    /// Template name.
    workflow: String,
    /// Template version (default: the newest).
    #[serde(default)]
    version: Option<u32>,
    /// Parameter values.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: BTreeMap<String, Value>,
    /// Which nodes (`nodes` takes ids or serials).
    selector: SelectorInput,
    /// Runs in flight at most, overall.
    max_in_flight: u32,
    /// Runs in flight at most per rack (default: `max_in_flight`).
    #[serde(default)]
    max_per_rack: Option<u32>,
    /// Failed runs tolerated; one more pauses the rollout (default 0).
    #[serde(default)]
    failure_budget: u32,
}

/// A rollout's node selection as the API takes it.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SelectorInput {
    /// Site.
    #[serde(default)]
    site: Option<String>,
    /// Rack.
    #[serde(default)]
    rack: Option<String>,
    /// Tags (all of them).
    #[serde(default)]
    tags: Vec<String>,
    /// Lifecycle state.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    state: Option<protocol::domain::NodeState>,
    /// Node ids or serials.
    #[serde(default)]
    nodes: Vec<String>,
}

fn parse<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse()
        .map_err(|e: T::Err| ApiError::field(ErrorCode::InvalidField, field, e.to_string()))
}

/// A rollout with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    /// The rollout.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Per-state counts, per rack, per node.
    pub progress: RolloutProgress,
}

fn rollout_view(s: &DesiredState, id: RolloutId) -> Result<RolloutView, ApiError> {
    let r = s
        .runs
        .rollouts
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("rollout {id}")))?;
    Ok(RolloutView {
        rollout: r.clone(),
        progress: s.runs.rollout_progress(r),
    })
}

#[utoipa::path(post, path = "/v1/rollouts", tag = "rollouts", request_body = NewRollout,
    responses((status = 201, body = RolloutView), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn create_rollout(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<NewRollout>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    p.require(Need::Operate)?;
    let sel = body.selector;
    let mut nodes = Vec::new();
    for (i, n) in sel.nodes.iter().enumerate() {
        nodes.push(node_id(&app, &format!("selector.nodes[{i}]"), n).await?);
    }
    let selector = Selector {
        site: sel
            .site
            .as_deref()
            .map(|x| parse("selector.site", x))
            .transpose()?,
        rack: sel
            .rack
            .as_deref()
            .map(|x| parse("selector.rack", x))
            .transpose()?,
        tags: sel
            .tags
            .iter()
            .map(|t| parse("selector.tags", t))
            .collect::<Result<_, _>>()?,
        state: sel.state,
        nodes,
    };
    let plan = expand(&app, &body.workflow, body.version, &body.params).await?;
    let rev = commit(
        &app,
        &p,
        key,
        RunsCommand::CreateRollout {
            plan,
            selector,
            max_in_flight: body.max_in_flight,
            max_per_rack: body.max_per_rack.unwrap_or(body.max_in_flight),
            failure_budget: body.failure_budget,
        },
    )
    .await?;
    let v = read_fresh(&app, |s| rollout_view(s, rev)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(get, path = "/v1/rollouts", tag = "rollouts", params(Consistency),
    responses((status = 200, body = Vec<RolloutView>)), security(("bearer" = [])))]
pub(super) async fn list_rollouts(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<RolloutView>>> {
    p.require(Need::ReadAll)?;
    read(&app, &c, |s| {
        s.runs
            .rollouts
            .keys()
            .rev()
            .map(|id| rollout_view(s, *id))
            .collect()
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/v1/rollouts/{id}", tag = "rollouts", params(Consistency),
    responses((status = 200, body = RolloutView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_rollout(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<RolloutView>> {
    p.require(Need::ReadAll)?;
    let id: RolloutId = parse("id", &id)?;
    read(&app, &c, |s| rollout_view(s, id)).await.map(Json)
}

async fn control_rollout(
    app: Arc<App>,
    p: Principal,
    key: IdempotencyKey,
    id: String,
    action: RolloutAction,
) -> ApiResult<Json<RolloutView>> {
    p.require(Need::Operate)?;
    let id: RolloutId = parse("id", &id)?;
    commit(
        &app,
        &p,
        key,
        RunsCommand::ControlRollout {
            rollout: id,
            action,
        },
    )
    .await?;
    read_fresh(&app, |s| rollout_view(s, id)).await.map(Json)
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/pause", tag = "rollouts",
    responses((status = 200, body = RolloutView), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn pause_rollout(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    control_rollout(app, p, key, id, RolloutAction::Pause).await
}

/// Body of `POST /v1/rollouts/{id}/resume` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResumeInput {
    /// A new failure budget.
    #[serde(default)]
    failure_budget: Option<u32>,
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/resume", tag = "rollouts", request_body = Option<ResumeInput>,
    responses((status = 200, body = RolloutView), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn resume_rollout(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<RolloutView>> {
    let input: ResumeInput = if body.iter().all(u8::is_ascii_whitespace) {
        ResumeInput::default()
    } else {
        super::extract::parse_json(&body)?
    };
    control_rollout(
        app,
        p,
        key,
        id,
        RolloutAction::Resume {
            failure_budget: input.failure_budget,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/abort", tag = "rollouts",
    responses((status = 200, body = RolloutView), (status = 409, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn abort_rollout(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    control_rollout(app, p, key, id, RolloutAction::Abort).await
}
