//! One running coordinator: its Raft member, the Raft endpoint, and the operations the API
//! builds on — writes forwarded to the leader, linearizable reads, membership changes — plus
//! the bootstrap (`init`) and trust (`join`) flows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use protocol::domain::{CoordinatorAddr, TokenRecord};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::{TokenId, UserName};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::pki::{self, CertAuthority, CertKeyPem, Identity};
use crate::raft::log_store::LogStore;
use crate::raft::network::{self, Network, PeerClient, PeerReply, PeerRequest};
use crate::raft::state_machine::{SharedState, StateMachineStore};
use crate::raft::{self, Raft};
use crate::secrets::{self, SealingKey};
use crate::state::{ClusterInfo, Command, Request, Response};

/// How long a write may take end to end, leader elections included.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(15);
/// How long a read may wait for the leader's read index to be applied locally.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Sealing context of the cluster CA key.
pub const CA_KEY_CONTEXT: &str = "cluster-ca-key";
/// Validity of coordinator certificates.
pub const COORDINATOR_CERT_DAYS: u32 = 825;

/// Failures of coordinator operations, mapped to API errors in one place ([`crate::api`]).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No leader could be reached in time.
    #[error("no Raft leader reachable: {0}")]
    Unavailable(String),
    /// The deadline passed after the request may have reached a leader: its outcome is
    /// unknown. Retrying with the same idempotency key is safe.
    #[error("{0}")]
    Timeout(String),
    /// The operation was refused by the cluster (e.g. a membership change in progress).
    #[error("{0}")]
    Refused(ErrorBody),
    /// Local setup or I/O failure.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// As the API's JSON error body.
    pub fn body(&self) -> ErrorBody {
        match self {
            AppError::Unavailable(m) => ErrorBody::new(ErrorCode::Unavailable, m.clone()),
            AppError::Timeout(m) => ErrorBody::new(ErrorCode::Timeout, m.clone()),
            AppError::Refused(b) => b.clone(),
            AppError::Internal(m) => ErrorBody::new(ErrorCode::Internal, m.clone()),
        }
    }
}

fn internal<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> AppError + '_ {
    move |e| AppError::Internal(format!("{what}: {e}"))
}

/// TLS files of a coordinator, under `<data_dir>/tls`.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Cluster CA certificate.
    pub ca_pem: String,
    /// This coordinator's certificate and key.
    pub leaf: CertKeyPem,
}

impl TlsMaterial {
    /// Reads `ca.crt`, `node.crt`, `node.key`.
    pub fn load(dir: &Path) -> Result<Self, AppError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| AppError::Internal(format!("{}: {e}", dir.join(name).display())))
        };
        Ok(TlsMaterial {
            ca_pem: read("ca.crt")?,
            leaf: CertKeyPem {
                cert_pem: read("node.crt")?,
                key_pem: read("node.key")?,
            },
        })
    }

    /// Writes the three files (the key with mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), AppError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(dir).map_err(internal("create tls dir"))?;
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).map_err(internal("write ca.crt"))?;
        std::fs::write(dir.join("node.crt"), &self.leaf.cert_pem)
            .map_err(internal("write node.crt"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("node.key"))
            .map_err(internal("write node.key"))?;
        f.write_all(self.leaf.key_pem.as_bytes())
            .map_err(internal("write node.key"))
    }
}

/// Current wall clock in ms; used only when *proposing* (never inside apply).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A running coordinator.
pub struct App {
    /// Validated config.
    pub config: Config,
    /// The Raft member.
    pub raft: Raft,
    /// Applied state, for reads.
    pub state: SharedState,
    /// Client for forwarding to other coordinators.
    pub peers: Arc<PeerClient>,
    /// At-rest key.
    pub key: SealingKey,
    /// TLS material.
    pub tls: TlsMaterial,
    /// The bound Raft endpoint (closed on shutdown).
    raft_endpoint: quinn::Endpoint,
    /// The bound fleet endpoint for rack agents (closed on shutdown).
    fleet_endpoint: quinn::Endpoint,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

/// Summary of the cluster for `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// The coordinator that answered.
    pub this: u64,
    /// Its Raft role (`Leader`, `Follower`, `Candidate`, `Learner`, `Shutdown`).
    pub role: String,
    /// Current leader, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last applied log index (the revision readers see here).
    pub last_applied: u64,
    /// Last log index in this coordinator's log.
    pub last_log_index: u64,
    /// Members with their addresses and roles.
    pub members: Vec<MemberStatus>,
}

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberStatus {
    /// Raft id.
    pub id: u64,
    /// `voter` or `learner`.
    pub kind: String,
    /// Addresses.
    pub addr: CoordinatorAddr,
    /// Replication progress as seen by the leader (only when the answering node leads).
    pub matched_index: Option<u64>,
}

/// Answer to a join request: everything a new coordinator needs to take part.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinBundle {
    /// Cluster name.
    pub cluster_name: String,
    /// Cluster CA certificate.
    pub ca_cert_pem: String,
    /// The joiner's certificate (signed from its CSR).
    pub cert_pem: String,
    /// The at-rest sealing key (base64). Sent only over HTTPS to an admin.
    pub sealing_key: String,
}

impl std::fmt::Debug for JoinBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinBundle")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens storage, binds the Raft endpoint and starts the Raft member. Does not serve
    /// the API (see [`crate::api::serve`]).
    pub async fn start(config: Config) -> Result<Arc<App>, AppError> {
        let tls = TlsMaterial::load(&config.tls_dir())?;
        let key = SealingKey::load(&config.sealing_key_file)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let db = raft::open_db(&config.data_dir).map_err(internal("open raft.redb"))?;
        let log = LogStore::new(db.clone()).map_err(internal("open log store"))?;
        let sm = StateMachineStore::new(db).map_err(internal("open state machine"))?;
        let state = sm.shared();
        let peers =
            Arc::new(PeerClient::new(&tls.ca_pem, &tls.leaf).map_err(internal("raft client"))?);
        let server_cfg = pki::quinn_server_config(&tls.ca_pem, &tls.leaf, pki::ALPN_RAFT)
            .map_err(internal("raft tls"))?;
        let endpoint = quinn::Endpoint::server(server_cfg, config.raft_listen).map_err(
            internal(&format!("bind raft endpoint {}", config.raft_listen)),
        )?;
        let rcfg = Arc::new(
            raft::raft_config(&config.cluster_name)
                .validate()
                .map_err(internal("raft config"))?,
        );
        let raft = Raft::new(config.id, rcfg, Network::new(peers.clone()), log, sm)
            .await
            .map_err(internal("start raft"))?;
        tokio::spawn(network::serve(endpoint.clone(), raft.clone()));
        let fleet_cfg = pki::quinn_server_config(&tls.ca_pem, &tls.leaf, pki::ALPN_FLEET)
            .map_err(internal("fleet tls"))?;
        let fleet_endpoint = quinn::Endpoint::server(fleet_cfg, config.fleet_listen).map_err(
            internal(&format!("bind fleet endpoint {}", config.fleet_listen)),
        )?;
        let app = Arc::new(App {
            config,
            raft,
            state,
            peers,
            key,
            tls,
            raft_endpoint: endpoint,
            fleet_endpoint: fleet_endpoint.clone(),
            metrics: Default::default(),
        });
        tokio::spawn(crate::fleet::serve(fleet_endpoint, app.clone()));
        crate::identify::spawn(&app);
        crate::tenancy_driver::spawn(&app);
        crate::rollout_driver::spawn(&app);
        Ok(app)
    }

    /// Stops Raft and closes the endpoint.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.raft_endpoint.close(0u32.into(), b"shutdown");
        self.fleet_endpoint.close(0u32.into(), b"shutdown");
    }

    /// This coordinator's advertised addresses.
    pub fn addr(&self) -> CoordinatorAddr {
        CoordinatorAddr {
            raft_addr: self.config.raft_addr.clone(),
            api_url: self.config.api_url.clone(),
            fleet_addr: self.config.fleet_addr.clone(),
        }
    }

    fn leader_hint(&self) -> Option<(u64, CoordinatorAddr)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Proposes a command and waits for it to be applied; forwards to the leader when this
    /// coordinator does not lead. Retries across elections until [`WRITE_DEADLINE`]; the
    /// request id makes retries safe (a request is applied at most once).
    pub async fn write(
        &self,
        actor: String,
        request_id: Option<String>,
        command: Command,
    ) -> Result<Response, AppError> {
        let id = request_id.unwrap_or_else(|| format!("auto-{}", uuid::Uuid::new_v4()));
        self.propose(actor, Some(id), command).await
    }

    /// Like [`App::write`] but without an idempotency key, for commands that are idempotent
    /// by construction (agent events carry `(rack, seq)`; link reports overwrite). Keeps the
    /// session table from filling with telemetry.
    pub async fn write_unkeyed(
        &self,
        actor: String,
        command: Command,
    ) -> Result<Response, AppError> {
        self.propose(actor, None, command).await
    }

    async fn propose(
        &self,
        actor: String,
        request_id: Option<String>,
        command: Command,
    ) -> Result<Response, AppError> {
        let req = Request {
            actor,
            at: now_ms(),
            request_id,
            command,
        };
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut backoff = Duration::from_millis(20);
        let mut last_err = String::from("no leader elected yet");
        // Once a proposal may have reached a leader, running out of time means "unknown
        // outcome" (504), not "not applied" (503).
        let mut maybe_proposed = false;
        loop {
            match self.raft.client_write(req.clone()).await {
                Ok(r) => {
                    self.metrics.inc_write(false);
                    return Ok(r.data);
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let (Some(id), Some(node)) = (f.leader_id, f.leader_node) {
                        if id != self.config.id {
                            match self
                                .peers
                                .call(
                                    &node.raft_addr,
                                    &PeerRequest::Write(req.clone()),
                                    Duration::from_secs(5),
                                )
                                .await
                            {
                                Ok(PeerReply::Write(r)) => {
                                    self.metrics.inc_write(true);
                                    return Ok(r);
                                }
                                Ok(PeerReply::NotLeader(_)) => {
                                    last_err = format!("coordinator {id} is no longer leader")
                                }
                                Ok(other) => last_err = format!("coordinator {id}: {other:?}"),
                                Err(e) => {
                                    // A connect failure proves the request never left; a
                                    // broken or timed-out exchange may have been applied.
                                    maybe_proposed |=
                                        !matches!(e, network::PeerError::Connect { .. });
                                    last_err = e.to_string();
                                }
                            }
                        }
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(AppError::Refused(ErrorBody::new(
                        ErrorCode::Conflict,
                        e.to_string(),
                    )))
                }
                Err(RaftError::Fatal(e)) => {
                    return Err(AppError::Unavailable(format!("raft stopped: {e}")))
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(if maybe_proposed {
                    AppError::Timeout(format!(
                        "write not confirmed within {WRITE_DEADLINE:?} ({last_err}); it may or may not have been applied: retry with the same Idempotency-Key"
                    ))
                } else {
                    AppError::Unavailable(last_err)
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Waits until this coordinator's state reflects every write acknowledged before the
    /// call (a linearizable read); asks the leader for its read index when following.
    pub async fn read_barrier(&self) -> Result<(), AppError> {
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let err = match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::Fatal(e)) => {
                    return Err(AppError::Unavailable(format!("raft stopped: {e}")))
                }
                Err(RaftError::APIError(e)) => e,
            };
            let index = match network::TryAsForward::forward(&err) {
                Some(f) => match (f.leader_id, &f.leader_node) {
                    (Some(id), Some(node)) if id != self.config.id => {
                        match self
                            .peers
                            .call(
                                &node.raft_addr,
                                &PeerRequest::ReadIndex,
                                Duration::from_secs(2),
                            )
                            .await
                        {
                            Ok(PeerReply::ReadIndex(i)) => Some(i),
                            _ => None,
                        }
                    }
                    _ => None,
                },
                None => None,
            };
            if let Some(i) = index {
                let left = deadline.saturating_duration_since(Instant::now());
                return self
                    .raft
                    .wait(Some(left))
                    .applied_index_at_least(Some(i), "read barrier")
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        AppError::Unavailable(format!("waiting for read index {i}: {e}"))
                    });
            }
            if Instant::now() > deadline {
                return Err(AppError::Unavailable(format!(
                    "no leader confirmed a read index: {err}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a membership request to the leader (locally when leading).
    async fn membership(&self, req: PeerRequest) -> Result<u64, AppError> {
        let deadline = Instant::now() + WRITE_DEADLINE * 2;
        loop {
            let target = match self.leader_hint() {
                Some((id, _)) if id == self.config.id => None,
                Some((_, node)) => Some(node.raft_addr),
                None => {
                    if Instant::now() > deadline {
                        return Err(AppError::Unavailable("no leader".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let reply = match target {
                None => network::handle(&self.raft, clone_req(&req)).await,
                Some(addr) => self
                    .peers
                    .call(&addr, &clone_req(&req), WRITE_DEADLINE * 2)
                    .await
                    .map_err(|e| AppError::Unavailable(e.to_string()))?,
            };
            match reply {
                PeerReply::Membership(i) => return Ok(i),
                PeerReply::NotLeader(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                PeerReply::Error(m) => {
                    return Err(AppError::Refused(ErrorBody::new(ErrorCode::Conflict, m)))
                }
                other => {
                    return Err(AppError::Unavailable(format!(
                        "membership change: {other:?}"
                    )))
                }
            }
        }
    }

    /// Adds a coordinator as a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: u64, addr: CoordinatorAddr) -> Result<u64, AppError> {
        self.membership(PeerRequest::AddLearner { id, addr }).await
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, id: u64) -> Result<u64, AppError> {
        let mut voters = self.voters();
        if !self.learners().contains(&id) && !voters.contains(&id) {
            return Err(AppError::Refused(
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("coordinator {id} is not a learner; add it first"),
                )
                .with_field("id"),
            ));
        }
        voters.insert(id);
        self.membership(PeerRequest::ChangeVoters(voters)).await
    }

    /// Removes a member (voter or learner) from the cluster.
    pub async fn remove(&self, id: u64) -> Result<u64, AppError> {
        let mut voters = self.voters();
        if voters.remove(&id) {
            if voters.is_empty() {
                return Err(AppError::Refused(ErrorBody::new(
                    ErrorCode::Conflict,
                    "cannot remove the last voter",
                )));
            }
            self.membership(PeerRequest::ChangeVoters(voters)).await?;
        }
        if self.learners().contains(&id) {
            return self.membership(PeerRequest::RemoveLearner(id)).await;
        }
        Ok(self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0))
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    fn learners(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .collect()
    }

    /// Cluster status as this coordinator sees it.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched: BTreeMap<u64, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, addr)| MemberStatus {
                id: *id,
                kind: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                addr: addr.clone(),
                matched_index: matched.get(id).copied(),
            })
            .collect();
        let name = self
            .state
            .read()
            .ok()
            .and_then(|g| g.state.cluster.as_ref().map(|c| c.name.clone()))
            .unwrap_or_else(|| self.config.cluster_name.clone());
        ClusterStatus {
            name,
            this: self.config.id,
            role: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members,
        }
    }

    /// Fleet endpoints (`host:port`) of every member that advertises one, sorted.
    pub fn fleet_endpoints(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let mut v: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, a)| a.fleet_addr.clone())
            .filter(|a| !a.is_empty())
            .collect();
        v.sort();
        v
    }

    /// The cluster CA, opened with the sealing key.
    pub fn cluster_ca(&self) -> Result<CertAuthority, AppError> {
        let info = self
            .state
            .read()
            .map_err(|_| AppError::Internal("state lock poisoned".into()))?
            .state
            .cluster
            .clone()
            .ok_or_else(|| AppError::Internal("cluster is not initialised".into()))?;
        let ca_key = self
            .key
            .open(CA_KEY_CONTEXT, &info.ca_key)
            .map_err(internal("open CA key"))?;
        let ca_key = String::from_utf8(ca_key).map_err(internal("CA key"))?;
        CertAuthority::from_pem(&info.ca_cert_pem, &ca_key).map_err(internal("load CA"))
    }

    /// Signs a joining coordinator's CSR with the cluster CA and hands over the sealing key.
    pub fn issue_join_bundle(
        &self,
        id: u64,
        csr_pem: &str,
        addr: &CoordinatorAddr,
    ) -> Result<JoinBundle, AppError> {
        let ca = self.cluster_ca()?;
        let cluster_name = self.status().name;
        let mut sans = vec![
            crate::config::host_of(&addr.raft_addr),
            crate::config::host_of(addr.api_url.trim_start_matches("https://")),
            crate::config::host_of(&addr.fleet_addr),
            "localhost".to_owned(),
        ];
        sans.retain(|s| !s.is_empty());
        sans.sort();
        sans.dedup();
        let cert_pem = ca
            .sign_csr(
                csr_pem,
                &Identity::Coordinator(id),
                &sans,
                COORDINATOR_CERT_DAYS,
            )
            .map_err(|e| {
                AppError::Refused(
                    ErrorBody::new(ErrorCode::InvalidField, e.to_string()).with_field("csr_pem"),
                )
            })?;
        Ok(JoinBundle {
            cluster_name,
            ca_cert_pem: ca.cert_pem().to_owned(),
            cert_pem,
            sealing_key: self.key.to_base64(),
        })
    }
}

fn clone_req(r: &PeerRequest) -> PeerRequest {
    match r {
        PeerRequest::AddLearner { id, addr } => PeerRequest::AddLearner {
            id: *id,
            addr: addr.clone(),
        },
        PeerRequest::ChangeVoters(v) => PeerRequest::ChangeVoters(v.clone()),
        PeerRequest::RemoveLearner(id) => PeerRequest::RemoveLearner(*id),
        PeerRequest::ReadIndex => PeerRequest::ReadIndex,
        PeerRequest::Write(w) => PeerRequest::Write(w.clone()),
        // Raft RPCs are never re-sent through this path.
        PeerRequest::AppendEntries(_) | PeerRequest::Vote(_) | PeerRequest::InstallSnapshot(_) => {
            PeerRequest::ReadIndex
        }
    }
}

/// What `coordinator init` prints once.
#[derive(Debug)]
pub struct InitOutcome {
    /// The first admin's token secret (shown once, stored only hashed).
    pub admin_token: String,
    /// CA certificate path, to give to `metalctl` and joining coordinators.
    pub ca_path: std::path::PathBuf,
}

/// Bootstraps a one-member cluster: CA, this coordinator's certificate, sealing key, Raft
/// membership {self}, and the first admin with a token. Refuses to run twice.
pub async fn init(config: Config) -> Result<InitOutcome, AppError> {
    if config.data_dir.join(raft::DB_FILE).exists() {
        return Err(AppError::Refused(ErrorBody::new(
            ErrorCode::AlreadyExists,
            format!(
                "{} already holds a coordinator; refusing to initialise again",
                config.data_dir.display()
            ),
        )));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(internal("create data_dir"))?;
    let ca = CertAuthority::generate(&config.cluster_name).map_err(internal("generate CA"))?;
    let leaf = ca
        .issue(
            &Identity::Coordinator(config.id),
            &config.cert_sans(),
            COORDINATOR_CERT_DAYS,
        )
        .map_err(internal("issue coordinator certificate"))?;
    let tls = TlsMaterial {
        ca_pem: ca.cert_pem().to_owned(),
        leaf,
    };
    tls.save(&config.tls_dir())?;
    let key = if config.sealing_key_file.exists() {
        SealingKey::load(&config.sealing_key_file).map_err(|e| AppError::Internal(e.to_string()))?
    } else {
        let k = SealingKey::generate();
        k.save_new(&config.sealing_key_file)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        k
    };
    let app = App::start(config.clone()).await?;
    let mut members = BTreeMap::new();
    members.insert(config.id, app.addr());
    app.raft
        .initialize(members)
        .await
        .map_err(internal("initialise raft"))?;
    let secret = secrets::new_token_secret();
    let admin: UserName = "admin".parse().map_err(internal("admin name"))?;
    let token = TokenRecord {
        id: TokenId(uuid::Uuid::new_v4()),
        user: admin.clone(),
        hash: secrets::hash_token(&secret),
        description: "created by coordinator init".into(),
        created_at: now_ms(),
        expires_at: None,
    };
    let info = ClusterInfo {
        name: config.cluster_name.clone(),
        ca_cert_pem: ca.cert_pem().to_owned(),
        ca_key: key.seal(CA_KEY_CONTEXT, ca.key_pem().as_bytes()),
        created_at: now_ms(),
    };
    let resp = app
        .write(
            format!("coordinator:{}", config.id),
            None,
            Command::InitCluster { info, admin, token },
        )
        .await?;
    app.shutdown().await;
    resp.result.map_err(AppError::Refused)?;
    Ok(InitOutcome {
        admin_token: secret,
        ca_path: config.tls_dir().join("ca.crt"),
    })
}

/// Request body of `POST /v1/cluster/join`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joiner's Raft id.
    pub id: u64,
    /// PEM CSR (its key stays on the joiner).
    pub csr_pem: String,
    /// Its addresses.
    pub addr: CoordinatorAddr,
}

/// Client side of joining: obtains a certificate and the sealing key from a running
/// coordinator at `via` (trusting `ca_pem`), writes them to the new data dir.
pub async fn join(config: &Config, via: &str, token: &str, ca_pem: &str) -> Result<(), AppError> {
    if config.data_dir.join(raft::DB_FILE).exists() || config.tls_dir().join("node.crt").exists() {
        return Err(AppError::Refused(ErrorBody::new(
            ErrorCode::AlreadyExists,
            format!("{} already holds a coordinator", config.data_dir.display()),
        )));
    }
    let (key_pem, csr_pem) =
        pki::generate_csr(&Identity::Coordinator(config.id)).map_err(internal("generate CSR"))?;
    let client = crate::cli::client::http_client(Some(ca_pem))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let body = JoinRequest {
        id: config.id,
        csr_pem,
        addr: CoordinatorAddr {
            raft_addr: config.raft_addr.clone(),
            api_url: config.api_url.clone(),
            fleet_addr: config.fleet_addr.clone(),
        },
    };
    let resp = client
        .post(format!("{}/v1/cluster/join", via.trim_end_matches('/')))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| AppError::Unavailable(format!("{via}: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(AppError::Internal(format!(
            "join refused by {via}: {status}: {text}"
        )));
    }
    let bundle: JoinBundle = resp.json().await.map_err(internal("join response"))?;
    std::fs::create_dir_all(&config.data_dir).map_err(internal("create data_dir"))?;
    TlsMaterial {
        ca_pem: bundle.ca_cert_pem,
        leaf: CertKeyPem {
            cert_pem: bundle.cert_pem,
            key_pem,
        },
    }
    .save(&config.tls_dir())?;
    if !config.sealing_key_file.exists() {
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            bundle.sealing_key.trim(),
        )
        .map_err(internal("sealing key"))?;
        SealingKey::from_bytes(&bytes)
            .ok_or_else(|| AppError::Internal("sealing key has the wrong length".into()))?
            .save_new(&config.sealing_key_file)
            .map_err(|e| AppError::Internal(e.to_string()))?;
    }
    Ok(())
}
