//! Fleet endpoints: sites, racks, expected inventory (bulk import, dry run), nodes.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::domain::{
    BootTarget, InventoryInput, InventoryRecord, InventoryView, Node, NodeState, NodeView, Rack,
    Site,
};
use protocol::error::ErrorCode;
use protocol::json::JsonValue;
use protocol::{Mac, NodeId, ProjectId, RackId, Serial, SiteId, Tag};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Need, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{body_bytes, IdempotencyKey, JsonBody, Query};
use super::{commit, read, Consistency};
use crate::app::App;
use crate::state::{Applied, Command, ImportItem, ImportReport, NodePatch};

/// Sealing context of a server's BMC password.
pub fn bmc_context(serial: &Serial) -> String {
    format!("bmc:{serial}")
}

#[utoipa::path(get, path = "/v1/sites", tag = "sites", params(Consistency),
    responses((status = 200, body = Vec<Site>)), security(("bearer" = [])))]
pub(super) async fn list_sites(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<Site>>> {
    p.require(Need::Read)?;
    read(&app, &c, |s| Ok(s.sites.values().cloned().collect()))
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/v1/sites/{name}", tag = "sites", request_body = Site,
    responses((status = 200, body = Site), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn put_site(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    JsonBody(site): JsonBody<Site>,
) -> ApiResult<Json<Site>> {
    p.require(Need::Operate)?;
    path_matches("name", &name, site.name.as_str())?;
    commit(&app, &p, key, Command::PutSite(site.clone())).await?;
    Ok(Json(site))
}

#[utoipa::path(delete, path = "/v1/sites/{name}", tag = "sites", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn delete_site(
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
        Command::DeleteSite(parse_path::<SiteId>("name", &name)?),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/racks", tag = "racks", params(Consistency),
    responses((status = 200, body = Vec<Rack>)), security(("bearer" = [])))]
pub(super) async fn list_racks(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<Rack>>> {
    p.require(Need::Read)?;
    read(&app, &c, |s| Ok(s.racks.values().cloned().collect()))
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/v1/racks/{name}", tag = "racks", request_body = Rack,
    responses((status = 200, body = Rack), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn put_rack(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    JsonBody(rack): JsonBody<Rack>,
) -> ApiResult<Json<Rack>> {
    p.require(Need::Operate)?;
    path_matches("name", &name, rack.name.as_str())?;
    commit(&app, &p, key, Command::PutRack(rack.clone())).await?;
    Ok(Json(rack))
}

#[utoipa::path(delete, path = "/v1/racks/{name}", tag = "racks", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn delete_rack(
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
        Command::DeleteRack(parse_path::<RackId>("name", &name)?),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of the inventory list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct InventoryFilter {
    /// Only this site.
    site: Option<SiteId>,
    /// Only this rack.
    rack: Option<RackId>,
    /// Only records carrying this tag.
    tag: Option<Tag>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/inventory", tag = "inventory", params(InventoryFilter),
    responses((status = 200, body = Vec<InventoryView>)), security(("bearer" = [])))]
pub(super) async fn list_inventory(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(f): Query<InventoryFilter>,
) -> ApiResult<Json<Vec<InventoryView>>> {
    p.require(Need::ReadAll)?;
    read(&app, &Consistency { stale: f.stale }, |s| {
        Ok(s.inventory
            .values()
            .filter(|r| f.site.as_ref().is_none_or(|x| &r.site == x))
            .filter(|r| f.rack.as_ref().is_none_or(|x| &r.rack == x))
            .filter(|r| f.tag.as_ref().is_none_or(|x| r.tags.contains(x)))
            .map(InventoryView::from)
            .collect())
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/v1/inventory/{serial}", tag = "inventory", params(Consistency),
    responses((status = 200, body = InventoryView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_inventory(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(serial): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<InventoryView>> {
    p.require(Need::ReadAll)?;
    let serial: Serial = parse_path("serial", &serial)?;
    read(&app, &c, |s| {
        s.inventory
            .get(&serial)
            .map(InventoryView::from)
            .ok_or_else(|| ApiError::not_found(format!("inventory serial {serial}")))
    })
    .await
    .map(Json)
}

#[utoipa::path(put, path = "/v1/inventory/{serial}", tag = "inventory", request_body = InventoryInput,
    responses((status = 200, body = ImportReport), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn put_inventory(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(serial): Path<String>,
    JsonBody(input): JsonBody<InventoryInput>,
) -> ApiResult<Json<ImportReport>> {
    p.require(Need::Operate)?;
    path_matches("serial", &serial, input.serial.as_str())?;
    import(&app, &p, key, vec![input], false).await.map(Json)
}

#[utoipa::path(delete, path = "/v1/inventory/{serial}", tag = "inventory", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn delete_inventory(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(serial): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Need::Operate)?;
    commit(
        &app,
        &p,
        key,
        Command::DeleteInventory(parse_path("serial", &serial)?),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Options of an import.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportOpts {
    /// Report what would change without changing anything.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/inventory/import`: a JSON array of records (`application/json`) or CSV
/// (`text/csv`, see [`super::csv_import`]). Upserts by serial, all or nothing.
#[utoipa::path(post, path = "/v1/inventory/import", tag = "inventory", params(ImportOpts),
    request_body(content = Vec<InventoryInput>, description = "JSON array, or text/csv with columns serial,site,rack,u_position,model,bmc_address,bmc_driver,bmc_username,bmc_password,nics,static_ips,tags"),
    responses((status = 200, body = ImportReport), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn import_inventory(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Query(opts): Query<ImportOpts>,
    req: Request,
) -> ApiResult<Json<ImportReport>> {
    p.require(Need::Operate)?;
    let ct = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = body_bytes(req, &()).await?;
    let items: Vec<InventoryInput> = if ct.starts_with("application/json") {
        super::extract::parse_json(&bytes)?
    } else if ct.starts_with("text/csv") {
        super::csv_import::parse(&bytes)?
    } else {
        return Err(ApiError::field(
            ErrorCode::BadRequest,
            "content-type",
            format!("expected application/json or text/csv, got {ct:?}"),
        ));
    };
    import(&app, &p, key, items, opts.dry_run).await.map(Json)
}

/// Checks what the type system cannot, naming the field (`[i].static_ips[j].prefix`).
fn validate(i: usize, r: &InventoryInput) -> Result<(), ApiError> {
    let f = |rest: &str| format!("[{i}].{rest}");
    let mut names = BTreeSet::new();
    for (j, nic) in r.nics.iter().enumerate() {
        if nic.name.trim().is_empty() || nic.name.len() > 64 {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                f(&format!("nics[{j}].name")),
                "NIC name must be 1..=64 characters",
            ));
        }
        if !names.insert(nic.name.as_str()) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                f(&format!("nics[{j}].name")),
                format!("NIC {} listed twice", nic.name),
            ));
        }
    }
    for (j, ip) in r.static_ips.iter().enumerate() {
        let max = if ip.address.is_ipv4() { 32 } else { 128 };
        if ip.prefix > max {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                f(&format!("static_ips[{j}].prefix")),
                format!("prefix {} exceeds {max}", ip.prefix),
            ));
        }
        if ip
            .gateway
            .is_some_and(|g| g.is_ipv4() != ip.address.is_ipv4())
        {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                f(&format!("static_ips[{j}].gateway")),
                "gateway and address must be the same IP family",
            ));
        }
    }
    if let Some(u) = r.u_position {
        if u == 0 || u > 60 {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                f("u_position"),
                "rack unit must be 1..=60",
            ));
        }
    }
    if let Some(b) = &r.bmc {
        if b.address.trim().is_empty() {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                f("bmc.address"),
                "BMC address must not be empty",
            ));
        }
        if let Some(c) = &b.credentials {
            if c.username.is_empty() {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    f("bmc.credentials.username"),
                    "must not be empty",
                ));
            }
        }
    }
    Ok(())
}

async fn import(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    items: Vec<InventoryInput>,
    dry_run: bool,
) -> ApiResult<ImportReport> {
    if items.is_empty() {
        return Err(ApiError::new(ErrorCode::BadRequest, "nothing to import"));
    }
    for (i, r) in items.iter().enumerate() {
        validate(i, r)?;
    }
    let items: Vec<ImportItem> = items
        .into_iter()
        .map(|r| {
            let ctx = bmc_context(&r.serial);
            ImportItem {
                record: InventoryRecord {
                    bmc: r.bmc.map(|b| protocol::domain::BmcSpec {
                        address: b.address,
                        driver: b.driver,
                        credentials: b.credentials.map(|c| app.key.seal_credentials(&ctx, &c)),
                    }),
                    serial: r.serial,
                    site: r.site,
                    rack: r.rack,
                    u_position: r.u_position,
                    model: r.model,
                    nics: r.nics,
                    static_ips: r.static_ips,
                    tags: r.tags,
                    revision: 0,
                    generation: 0,
                },
            }
        })
        .collect();
    if dry_run {
        app.read_barrier().await?;
        let g = app
            .state
            .read()
            .map_err(|_| ApiError::new(ErrorCode::Internal, "state lock poisoned"))?;
        let mut report = g.state.plan_import(&items)?;
        report.dry_run = true;
        return Ok(report);
    }
    match commit(app, p, key, Command::ImportInventory(items)).await? {
        Applied::Import(r) => Ok(r),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected result {other:?}"),
        )),
    }
}

/// Filters of the node list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeFilter {
    /// Only this rack.
    rack: Option<RackId>,
    /// Only this lifecycle state.
    #[param(value_type = Option<String>)]
    state: Option<NodeState>,
    /// Only this serial.
    serial: Option<Serial>,
    /// Only this project.
    project: Option<ProjectId>,
    /// Only nodes carrying this tag.
    tag: Option<Tag>,
    /// `true`: only nodes matched to an expected-inventory record; `false`: only the
    /// discovered pool (serials matching no record).
    identified: Option<bool>,
    /// Serve from this coordinator's state without a linearizable read.
    #[serde(default)]
    stale: bool,
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodeFilter),
    responses((status = 200, body = Vec<NodeView>), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn list_nodes(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(f): Query<NodeFilter>,
) -> ApiResult<Json<Vec<NodeView>>> {
    p.require(Need::Read)?;
    read(&app, &Consistency { stale: f.stale }, |s| {
        Ok(s.nodes
            .values()
            .filter(|n| p.sees_project(n.project.as_ref()))
            .filter(|n| f.rack.as_ref().is_none_or(|x| n.rack.as_ref() == Some(x)))
            .filter(|n| f.state.is_none_or(|x| n.state == x))
            .filter(|n| f.serial.as_ref().is_none_or(|x| &n.serial == x))
            .filter(|n| {
                f.project
                    .as_ref()
                    .is_none_or(|x| n.project.as_ref() == Some(x))
            })
            .filter(|n| f.tag.as_ref().is_none_or(|x| n.tags.contains(x)))
            .filter(|n| f.identified.is_none_or(|x| s.is_identified(n) == x))
            .map(|n| s.node_view(n))
            .collect())
    })
    .await
    .map(Json)
}

fn find_node<'a>(
    s: &'a crate::state::State,
    p: &Principal,
    id: &str,
) -> Result<&'a Node, ApiError> {
    // Accept the node id or its serial.
    let node = match id.parse::<NodeId>() {
        Ok(nid) => s.nodes.get(&nid),
        Err(_) => id
            .parse::<Serial>()
            .ok()
            .and_then(|serial| s.node_by_serial(&serial)),
    };
    match node {
        // Nodes of other projects are reported as absent, not forbidden: no existence leak.
        Some(n) if p.sees_project(n.project.as_ref()) => Ok(n),
        _ => Err(ApiError::not_found(format!("node {id}"))),
    }
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(Consistency),
    responses((status = 200, body = NodeView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn get_node(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<NodeView>> {
    p.require(Need::Read)?;
    read(&app, &c, |s| find_node(s, &p, &id).map(|n| s.node_view(n)))
        .await
        .map(Json)
}

/// Body of `POST /v1/nodes`: register a node by hand (normally agents register nodes when
/// they first network-boot).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNode {
    serial: Serial,
    #[serde(default)]
    rack: Option<RackId>,
    #[serde(default)]
    macs: Vec<Mac>,
}

#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = NewNode,
    responses((status = 200, body = NodeView), (status = 400, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn create_node(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    JsonBody(n): JsonBody<NewNode>,
) -> ApiResult<Json<NodeView>> {
    p.require(Need::Operate)?;
    let cmd = Command::RegisterNode {
        id: NodeId(uuid::Uuid::new_v4()),
        serial: n.serial,
        rack: n.rack,
        macs: n.macs,
    };
    node_result(&app, commit(&app, &p, key, cmd).await?)
}

/// The committed node as the API shows it; whether it is identified is read from this
/// coordinator's state (on a follower that forwarded the write: as of its last applied entry).
fn node_result(app: &App, a: Applied) -> ApiResult<Json<NodeView>> {
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

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `PATCH /v1/nodes/{id}`; absent fields are left alone, `"project": null` frees.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePatchInput {
    /// New lifecycle state.
    #[serde(default)]
    pub state: Option<NodeState>,
    /// New boot target.
    #[serde(default, with = "protocol::domain::boot_target_serde::option")]
    pub boot_target: Option<BootTarget>,
    /// New project (`null` frees the node).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub project: Option<Option<ProjectId>>,
    /// Replacement tag set.
    #[serde(default)]
    pub tags: Option<BTreeSet<Tag>>,
    /// Facts to merge (object).
    #[serde(default)]
    pub facts: Option<JsonValue>,
}

#[utoipa::path(patch, path = "/v1/nodes/{id}", tag = "nodes", request_body = NodePatchInput,
    responses((status = 200, body = NodeView), (status = 404, body = protocol::error::ErrorBody)), security(("bearer" = [])))]
pub(super) async fn patch_node(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<NodePatchInput>,
) -> ApiResult<Json<NodeView>> {
    p.require(Need::Read)?;
    if p.role == protocol::domain::Role::ReadOnly {
        return Err(ApiError::forbidden("read_only users cannot change nodes"));
    }
    if p.role == protocol::domain::Role::ProjectMember {
        for (name, set) in [
            ("state", patch.state.is_some()),
            ("project", patch.project.is_some()),
            ("facts", patch.facts.is_some()),
        ] {
            if set {
                return Err(ApiError::field(
                    ErrorCode::Forbidden,
                    name,
                    format!("project members cannot change {name}"),
                ));
            }
        }
    }
    app.read_barrier().await?;
    let node_id = {
        let g = app
            .state
            .read()
            .map_err(|_| ApiError::new(ErrorCode::Internal, "state lock poisoned"))?;
        find_node(&g.state, &p, &id)?.id
    };
    let cmd = Command::PatchNode {
        id: node_id,
        patch: NodePatch {
            state: patch.state,
            boot_target: patch.boot_target,
            project: patch.project,
            tags: patch.tags,
            facts: patch.facts,
        },
    };
    node_result(&app, commit(&app, &p, key, cmd).await?)
}

/// Parses a path segment into an id type, naming the segment on failure.
pub(super) fn parse_path<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse()
        .map_err(|e: T::Err| ApiError::field(ErrorCode::InvalidField, field, e.to_string()))
}

pub(super) fn path_matches(field: &str, path: &str, body: &str) -> Result<(), ApiError> {
    if path != body {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            field,
            format!("{field} {body:?} in the body differs from {path:?} in the path"),
        ));
    }
    Ok(())
}
