//! Rack agent endpoints: one-time enrollment tokens, enrollment itself (authenticated by the
//! token, not a bearer token), the agent list with link state, and revocation.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::domain::{EnrollToken, UnixMillis};
use protocol::error::ErrorCode;
use protocol::{RackId, Revision};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Need, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{IdempotencyKey, JsonBody, Query};
use super::fleet::parse_path;
use super::{commit, commit_fresh, read, Consistency};
use crate::app::{now_ms, App};
use crate::fleet::AGENT_CERT_DAYS;
use crate::secrets;
use crate::state::{Applied, Command};

/// Default lifetime of an enrollment token.
pub const DEFAULT_ENROLL_TOKEN_SECS: u64 = 3600;
/// Prefix of enrollment token secrets.
pub const ENROLL_TOKEN_PREFIX: &str = "mfe_";

/// Body of `POST /v1/racks/{name}/enroll-tokens`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEnrollToken {
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// A new enrollment token: shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedEnrollToken {
    /// Rack it enrolls.
    pub rack: RackId,
    /// The single-use secret for `rack-agent enroll --token`.
    pub token: String,
    /// Expiry (ms since epoch).
    pub expires_at: UnixMillis,
}

#[utoipa::path(post, path = "/v1/racks/{name}/enroll-tokens", tag = "agents", request_body = NewEnrollToken,
    responses((status = 201, body = CreatedEnrollToken)), security(("bearer" = [])))]
pub(super) async fn create_enroll_token(
    State(app): State<Arc<App>>,
    p: Principal,
    key: IdempotencyKey,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<CreatedEnrollToken>)> {
    p.require(Need::Admin)?;
    let rack: RackId = parse_path("name", &name)?;
    // The body is optional: an empty one takes the defaults.
    let opts: NewEnrollToken = if body.is_empty() {
        NewEnrollToken::default()
    } else {
        super::extract::parse_json(&body)?
    };
    let secs = opts.expires_in_secs.unwrap_or(DEFAULT_ENROLL_TOKEN_SECS);
    if secs == 0 || secs > 30 * 24 * 3600 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "expires_in_secs",
            "must be 1..=2592000",
        ));
    }
    let secret = format!(
        "{ENROLL_TOKEN_PREFIX}{}",
        &secrets::new_token_secret()[secrets::TOKEN_PREFIX.len()..]
    );
    let expires_at = now_ms() + (secs as i64) * 1000;
    let token = EnrollToken {
        rack: rack.clone(),
        hash: secrets::hash_token(&secret),
        expires_at,
        used_at: None,
    };
    commit_fresh(
        &app,
        &p,
        key,
        Command::CreateEnrollToken(token),
        "an enrollment token was already created with this Idempotency-Key; create another",
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollToken {
            rack,
            token: secret,
            expires_at,
        }),
    ))
}

/// Body of `POST /v1/enroll`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EnrollRequest {
    /// Rack to enroll.
    rack: RackId,
    /// The one-time token.
    token: String,
    /// PEM CSR (the agent's key stays with the agent).
    csr_pem: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("rack", &self.rack)
            .finish_non_exhaustive()
    }
}

/// What an enrolled agent receives.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The agent's certificate (identity `rack:<name>`).
    pub cert_pem: String,
    /// The cluster CA.
    pub ca_cert_pem: String,
    /// Fleet endpoints of the coordinators (`host:port`).
    pub fleet_endpoints: Vec<String>,
    /// Highest event sequence number already applied for this rack: a fresh agent starts
    /// its outbox after it, so events stay exactly-once across agent replacements.
    pub last_seq: u64,
}

#[utoipa::path(post, path = "/v1/enroll", tag = "agents", request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), (status = 401, body = protocol::error::ErrorBody)))]
pub(super) async fn enroll(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> ApiResult<Json<EnrollResponse>> {
    app.read_barrier().await?;
    {
        let g = app
            .state
            .read()
            .map_err(|_| ApiError::new(ErrorCode::Internal, "state lock poisoned"))?;
        if !g.state.racks.contains_key(&req.rack) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "rack",
                format!("rack {} does not exist", req.rack),
            ));
        }
    }
    let ca = app.cluster_ca()?;
    // The certificate is signed before the token is checked (in `apply`, atomically); a
    // refused enrollment's certificate is never returned and its fingerprint never recorded,
    // so the fleet endpoint would refuse it anyway.
    let cert_pem = ca
        .sign_csr(
            &req.csr_pem,
            &pki::Identity::Rack(req.rack.to_string()),
            &[],
            AGENT_CERT_DAYS,
        )
        .map_err(|e| ApiError::field(ErrorCode::InvalidField, "csr_pem", e.to_string()))?;
    let fingerprint = pki::fingerprint(&cert_pem)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let not_after = pki::not_after(&cert_pem)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        * 1000;
    let cmd = Command::Enroll {
        rack: req.rack.clone(),
        token_hash: secrets::hash_token(&req.token),
        fingerprint,
        not_after,
    };
    let resp = app.write_unkeyed(format!("rack:{}", req.rack), cmd).await?;
    let last_seq = match resp.result.map_err(ApiError::from)? {
        Applied::Events { last_seq } => last_seq,
        other => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("unexpected result {other:?}"),
            ))
        }
    };
    let fleet_endpoints = app.fleet_endpoints();
    Ok(Json(EnrollResponse {
        cert_pem,
        ca_cert_pem: ca.cert_pem().to_owned(),
        fleet_endpoints,
        last_seq,
    }))
}

/// A rack agent as `GET /v1/agents` lists it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// Rack.
    pub rack: RackId,
    /// Enrolled with a live certificate.
    pub enrolled: bool,
    /// Revoked.
    pub revoked: bool,
    /// Certificate expiry (ms since epoch).
    pub cert_not_after: Option<UnixMillis>,
    /// Link up at the last report.
    pub connected: bool,
    /// Coordinator serving (or last serving) it.
    pub coordinator: Option<u64>,
    /// Last report (ms since epoch).
    pub last_seen: Option<UnixMillis>,
    /// Revision the agent has stored.
    pub revision: Revision,
    /// Revisions of its rack's desired state it has not stored yet (0: in sync).
    pub revision_lag: u64,
    /// Events waiting in its outbox.
    pub outbox_depth: u64,
    /// Agent software version.
    pub version: Option<String>,
    /// Highest applied event sequence number.
    pub last_seq: u64,
    /// Events applied in all.
    pub events_applied: u64,
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(Consistency),
    responses((status = 200, body = Vec<AgentView>)), security(("bearer" = [])))]
pub(super) async fn list_agents(
    State(app): State<Arc<App>>,
    p: Principal,
    Query(c): Query<Consistency>,
) -> ApiResult<Json<Vec<AgentView>>> {
    p.require(Need::ReadAll)?;
    read(&app, &c, |s| {
        Ok(s.racks
            .keys()
            .map(|rack| {
                let a = s.agents.get(rack);
                let link = a.and_then(|a| a.link.as_ref());
                let revision = link.map(|l| l.revision).unwrap_or(0);
                AgentView {
                    rack: rack.clone(),
                    enrolled: a.is_some_and(|a| a.cert_fingerprint.is_some() && !a.revoked),
                    revoked: a.is_some_and(|a| a.revoked),
                    cert_not_after: a.and_then(|a| a.cert_not_after),
                    connected: link.is_some_and(|l| l.connected),
                    coordinator: link.map(|l| l.coordinator),
                    last_seen: link.map(|l| l.last_seen),
                    revision,
                    revision_lag: s.rack_changed(rack).saturating_sub(revision),
                    outbox_depth: link.map(|l| l.outbox_depth).unwrap_or(0),
                    version: link.map(|l| l.version.clone()),
                    last_seq: a.map(|a| a.last_seq).unwrap_or(0),
                    events_applied: a.map(|a| a.events_applied).unwrap_or(0),
                }
            })
            .collect())
    })
    .await
    .map(Json)
}

#[utoipa::path(delete, path = "/v1/racks/{name}/agent", tag = "agents", responses((status = 204)), security(("bearer" = [])))]
pub(super) async fn revoke_agent(
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
        Command::RevokeAgent(parse_path("name", &name)?),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
