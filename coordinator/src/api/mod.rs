//! The REST API under `/v1` (axum, JSON, OpenAPI at `/v1/openapi.json`), served over HTTPS
//! with the coordinator's cluster certificate; plus `/metrics`, `/healthz`, `/readyz`.
//!
//! Every mutation goes through [`App::write`] (Raft, forwarded to the leader); reads are
//! linearizable unless the caller passes `stale=true`.

mod access;
mod agents;
pub mod auth;
mod cluster;
pub mod csv_import;
pub mod error;
pub mod extract;
mod fleet;
pub mod runs;
mod tenancy;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use protocol::error::ErrorCode;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use access::CreatedToken;
pub use agents::{AgentView, CreatedEnrollToken, EnrollResponse};
pub use cluster::MembershipChanged;
pub use fleet::{bmc_context, NodePatchInput};
pub use tenancy::LeaseView;

use self::auth::Principal;
use self::error::{ApiError, ApiResult};
use self::extract::IdempotencyKey;
use crate::app::App;
use crate::state::{Applied, Command, State as DesiredState};

/// Read consistency: linearizable by default.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// Serve from this coordinator's state without a linearizable read (may lag).
    #[serde(default)]
    pub stale: bool,
}

/// Runs `f` over the state after a read barrier (unless stale reads were asked for).
pub(crate) async fn read<T>(
    app: &App,
    c: &Consistency,
    f: impl FnOnce(&DesiredState) -> Result<T, ApiError>,
) -> ApiResult<T> {
    if !c.stale {
        app.read_barrier().await?;
    }
    let g = app
        .state
        .read()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "state lock poisoned"))?;
    f(&g.state)
}

/// Commits a command as `p`; a refusal becomes the API error it carries.
pub(crate) async fn commit(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    cmd: Command,
) -> ApiResult<Applied> {
    // Keys are scoped per user so two clients cannot collide on each other's keys.
    let request_id = key.0.map(|k| format!("{}/{k}", p.user));
    let resp = app.write(p.actor(), request_id, cmd).await?;
    resp.result.map_err(ApiError::from)
}

/// Commits a command that mints a secret shown only once. A replayed answer (same
/// Idempotency-Key) is refused with `what_to_do`: the secret generated for this attempt is not
/// the one whose hash the first attempt stored.
pub(crate) async fn commit_fresh(
    app: &App,
    p: &Principal,
    key: IdempotencyKey,
    cmd: Command,
    what_to_do: &str,
) -> ApiResult<Applied> {
    let request_id = key.0.map(|k| format!("{}/{k}", p.user));
    let resp = app.write(p.actor(), request_id, cmd).await?;
    let applied = resp.result.map_err(ApiError::from)?;
    if resp.replayed {
        return Err(ApiError::new(ErrorCode::Conflict, what_to_do));
    }
    Ok(applied)
}

struct BearerAuth;
impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Metalfleet coordinator API", description = "Desired state of the fleet: sites, racks, expected inventory, nodes, projects, users, tokens, audit, cluster membership."),
    modifiers(&BearerAuth),
    components(schemas(protocol::error::ErrorBody, protocol::error::ErrorCode))
)]
struct ApiDoc;

/// The API router and its OpenAPI document.
pub fn router(app: Arc<App>) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(cluster::status))
        .routes(routes!(cluster::add_learner))
        .routes(routes!(cluster::promote))
        .routes(routes!(cluster::remove))
        .routes(routes!(cluster::join))
        .routes(routes!(fleet::list_sites))
        .routes(routes!(fleet::put_site, fleet::delete_site))
        .routes(routes!(fleet::list_racks))
        .routes(routes!(fleet::put_rack, fleet::delete_rack))
        .routes(routes!(fleet::list_inventory))
        .routes(routes!(
            fleet::get_inventory,
            fleet::put_inventory,
            fleet::delete_inventory
        ))
        .routes(routes!(fleet::import_inventory))
        .routes(routes!(fleet::list_nodes, fleet::create_node))
        .routes(routes!(fleet::get_node, fleet::patch_node))
        .routes(routes!(access::list_projects))
        .routes(routes!(access::put_project, access::delete_project))
        .routes(routes!(access::list_users))
        .routes(routes!(access::put_user, access::delete_user))
        .routes(routes!(access::list_tokens, access::create_token))
        .routes(routes!(access::delete_token))
        .routes(routes!(access::list_audit))
        .routes(routes!(agents::create_enroll_token))
        .routes(routes!(agents::enroll))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::revoke_agent))
        .merge(tenancy::routes())
        .merge(runs::routes())
        .split_for_parts();
    let doc = Arc::new(doc);
    let max_body = app.config.max_body_bytes;
    api.route(
        "/v1/openapi.json",
        get(move || {
            let d = doc.clone();
            async move { axum::Json((*d).clone()) }
        }),
    )
    .route("/healthz", get(|| async { "ok" }))
    .route("/readyz", get(readyz))
    .route("/metrics", get(metrics))
    .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
    .method_not_allowed_fallback(|| async {
        ApiError::new(ErrorCode::BadRequest, "method not allowed on this endpoint")
    })
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        count_responses,
    ))
    .layer(DefaultBodyLimit::max(max_body))
    .with_state(app)
}

async fn count_responses(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    app.metrics.inc_http(&method, resp.status().as_u16());
    resp
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let m = app.raft.metrics().borrow().clone();
    match m.current_leader {
        Some(l) => (
            StatusCode::OK,
            format!(
                "ready: leader {l}, applied {}\n",
                m.last_applied.map(|x| x.index).unwrap_or(0)
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known\n".to_owned(),
        ),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let m = app.raft.metrics().borrow().clone();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(&m),
    )
}

/// Serves the API over HTTPS on `listener` until `shutdown` resolves.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let tls = crate::pki::https_server_config(&app.tls.leaf).map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let router = router(app);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended with error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
