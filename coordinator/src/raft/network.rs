//! Raft RPC between coordinators over QUIC with mutual TLS (ALPN `metalfleet-raft/1`).
//!
//! One QUIC connection per peer, one bidirectional stream per RPC; each stream carries one
//! [`protocol::frame`] request and one reply. Besides Raft's own RPCs the same channel
//! forwards client writes and read-index checks from followers to the leader, so clients
//! never have to find the leader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use protocol::domain::CoordinatorAddr;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Raft, TypeConfig};
use crate::pki::{self, Identity};
use crate::state::{Request, Response};

/// How long a QUIC handshake to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest RPC message accepted (snapshot chunks are 3 MiB by default).
const MAX_RPC: usize = protocol::frame::MAX_FRAME_LEN;

/// What one coordinator asks another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<u64>),
    /// Raft InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded by a follower.
    Write(Request),
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
    /// Add a learner (forwarded to the leader).
    AddLearner {
        /// New member id.
        id: u64,
        /// Its addresses.
        addr: CoordinatorAddr,
    },
    /// Replace the voter set (forwarded to the leader).
    ChangeVoters(std::collections::BTreeSet<u64>),
    /// Remove a learner (forwarded to the leader).
    RemoveLearner(u64),
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// AppendEntries result.
    AppendEntries(AppendEntriesResponse<u64>),
    /// Vote result.
    Vote(VoteResponse<u64>),
    /// InstallSnapshot result.
    InstallSnapshot(InstallSnapshotResponse<u64>),
    /// The chunk did not continue the snapshot being received: start over.
    SnapshotMismatch(openraft::error::SnapshotMismatch),
    /// Result of a forwarded write.
    Write(Response),
    /// Read index confirmed by the leader.
    ReadIndex(u64),
    /// Membership change committed at this log index.
    Membership(u64),
    /// The receiver is not the leader; here is who it thinks is.
    NotLeader(Option<(u64, CoordinatorAddr)>),
    /// Anything else that went wrong remotely.
    Error(String),
}

/// Transport errors of a peer call.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The client could not be set up (TLS material, socket).
    #[error("raft client setup: {message}")]
    Setup {
        /// Why.
        message: String,
    },
    /// Could not resolve or connect.
    #[error("connect to coordinator at {addr}: {message}")]
    Connect {
        /// Target.
        addr: String,
        /// Why.
        message: String,
    },
    /// The call timed out.
    #[error("rpc to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Target.
        addr: String,
        /// Timeout.
        timeout: Duration,
    },
    /// The stream broke or the reply was malformed.
    #[error("rpc to {addr}: {message}")]
    Stream {
        /// Target.
        addr: String,
        /// Why.
        message: String,
    },
}

/// Makes RPCs to other coordinators, caching one QUIC connection per address.
#[derive(Debug)]
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    conns: Mutex<HashMap<String, quinn::Connection>>,
}

impl PeerClient {
    /// A client that presents `leaf` and trusts `ca_pem`.
    pub fn new(ca_pem: &str, leaf: &pki::CertKeyPem) -> Result<Self, PeerError> {
        let setup = |message: String| PeerError::Setup { message };
        let client_cfg = pki::quinn_client_config(ca_pem, leaf, pki::ALPN_RAFT)
            .map_err(|e| setup(e.to_string()))?;
        let bind: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| setup(format!("bind QUIC client socket: {e}")))?;
        Ok(PeerClient {
            endpoint,
            client_cfg,
            conns: Mutex::new(HashMap::new()),
        })
    }

    async fn connection(&self, addr: &str) -> Result<quinn::Connection, PeerError> {
        {
            let mut conns = self.conns.lock().await;
            if let Some(c) = conns.get(addr) {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
                conns.remove(addr);
            }
        }
        // Dial without holding the map lock: a handshake to a dead peer must not stall RPCs
        // to live ones (it did, and it cost a whole election round on failover).
        let err = |message: String| PeerError::Connect {
            addr: addr.to_owned(),
            message,
        };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(addr);
        let connecting = self
            .endpoint
            .connect_with(self.client_cfg.clone(), sock, host)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| err("handshake timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        self.conns
            .lock()
            .await
            .insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// One request/reply exchange with `addr`, bounded by `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, PeerError> {
        let started = tokio::time::Instant::now();
        let conn = tokio::time::timeout(timeout, self.connection(addr))
            .await
            .map_err(|_| PeerError::Timeout {
                addr: addr.to_owned(),
                timeout,
            })??;
        let left = timeout.saturating_sub(started.elapsed());
        let result = match tokio::time::timeout(left, exchange(&conn, addr, req)).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout {
                addr: addr.to_owned(),
                timeout,
            }),
        };
        if result.is_err() {
            // A peer that restarted cannot reset our old connection: it would linger until the
            // idle timeout while every RPC on it times out. Forget it so the next call dials.
            let mut conns = self.conns.lock().await;
            if conns
                .get(addr)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(addr);
            }
        }
        result
    }
}

async fn exchange(
    conn: &quinn::Connection,
    addr: &str,
    req: &PeerRequest,
) -> Result<PeerReply, PeerError> {
    let stream_err = |message: String| PeerError::Stream {
        addr: addr.to_owned(),
        message,
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    let bytes = protocol::frame::encode(protocol::version::CURRENT, req)
        .map_err(|e| stream_err(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    send.finish().map_err(|e| stream_err(e.to_string()))?;
    let reply = recv
        .read_to_end(MAX_RPC + 4)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    match protocol::frame::decode::<PeerReply>(&reply) {
        Ok(Some((frame, _))) => Ok(frame.body),
        Ok(None) => Err(stream_err("truncated reply".into())),
        Err(e) => Err(stream_err(e.to_string())),
    }
}

/// openraft's network factory over [`PeerClient`].
#[derive(Debug, Clone)]
pub struct Network {
    client: Arc<PeerClient>,
}

impl Network {
    /// Wraps a shared client.
    pub fn new(client: Arc<PeerClient>) -> Self {
        Network { client }
    }
}

/// A connection to one peer as openraft sees it.
#[derive(Debug)]
pub struct Conn {
    client: Arc<PeerClient>,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;
    async fn new_client(&mut self, target: u64, node: &CoordinatorAddr) -> Conn {
        Conn {
            client: self.client.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

fn unreachable<E: std::error::Error>(e: &PeerError) -> RPCError<u64, CoordinatorAddr, E> {
    match e {
        PeerError::Connect { .. } => RPCError::Unreachable(Unreachable::new(e)),
        _ => RPCError::Network(NetworkError::new(e)),
    }
}

fn unexpected<E: std::error::Error>(
    target: u64,
    what: &str,
    reply: PeerReply,
) -> RPCError<u64, CoordinatorAddr, E> {
    let msg = match reply {
        PeerReply::Error(m) => m,
        other => format!("unexpected reply to {what}: {other:?}"),
    };
    RPCError::Network(NetworkError::new(&PeerError::Stream {
        addr: format!("coordinator {target}"),
        message: msg,
    }))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, CoordinatorAddr, RaftError<u64>>> {
        match self
            .client
            .call(
                &self.addr,
                &PeerRequest::AppendEntries(rpc),
                option.hard_ttl(),
            )
            .await
        {
            Ok(PeerReply::AppendEntries(r)) => Ok(r),
            Ok(other) => Err(unexpected(self.target, "append_entries", other)),
            Err(e) => Err(unreachable(&e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, CoordinatorAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .client
            .call(
                &self.addr,
                &PeerRequest::InstallSnapshot(rpc),
                option.hard_ttl(),
            )
            .await
        {
            Ok(PeerReply::InstallSnapshot(r)) => Ok(r),
            Ok(PeerReply::SnapshotMismatch(m)) => Err(RPCError::RemoteError(RemoteError::new(
                self.target,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
            ))),
            Ok(other) => Err(unexpected(self.target, "install_snapshot", other)),
            Err(e) => Err(unreachable(&e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, CoordinatorAddr, RaftError<u64>>> {
        match self
            .client
            .call(&self.addr, &PeerRequest::Vote(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerReply::Vote(r)) => Ok(r),
            Ok(other) => Err(unexpected(self.target, "vote", other)),
            Err(e) => Err(unreachable(&e)),
        }
    }
}

/// Answers [`PeerRequest`]s on behalf of the local Raft member.
pub async fn handle(raft: &Raft, req: PeerRequest) -> PeerReply {
    use openraft::error::{ClientWriteError, RaftError as RE};
    fn not_leader<E>(e: &RE<u64, E>) -> Option<PeerReply>
    where
        E: std::error::Error + TryAsForward,
    {
        match e {
            RE::APIError(api) => api
                .forward()
                .map(|f| PeerReply::NotLeader(f.leader_id.zip(f.leader_node.clone()))),
            RE::Fatal(_) => None,
        }
    }
    match req {
        PeerRequest::AppendEntries(r) => match raft.append_entries(r).await {
            Ok(r) => PeerReply::AppendEntries(r),
            Err(e) => PeerReply::Error(e.to_string()),
        },
        PeerRequest::Vote(r) => match raft.vote(r).await {
            Ok(r) => PeerReply::Vote(r),
            Err(e) => PeerReply::Error(e.to_string()),
        },
        PeerRequest::InstallSnapshot(r) => match raft.install_snapshot(r).await {
            Ok(r) => PeerReply::InstallSnapshot(r),
            Err(RE::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                PeerReply::SnapshotMismatch(m)
            }
            Err(e) => PeerReply::Error(e.to_string()),
        },
        PeerRequest::Write(r) => match raft.client_write(r).await {
            Ok(resp) => PeerReply::Write(resp.data),
            Err(e) => not_leader::<ClientWriteError<u64, CoordinatorAddr>>(&e)
                .unwrap_or_else(|| PeerReply::Error(e.to_string())),
        },
        PeerRequest::ReadIndex => match raft.ensure_linearizable().await {
            Ok(id) => PeerReply::ReadIndex(id.map(|l| l.index).unwrap_or(0)),
            Err(e) => not_leader(&e).unwrap_or_else(|| PeerReply::Error(e.to_string())),
        },
        PeerRequest::AddLearner { id, addr } => match raft.add_learner(id, addr, true).await {
            Ok(r) => PeerReply::Membership(r.log_id.index),
            Err(e) => not_leader(&e).unwrap_or_else(|| PeerReply::Error(e.to_string())),
        },
        PeerRequest::ChangeVoters(voters) => match raft.change_membership(voters, false).await {
            Ok(r) => PeerReply::Membership(r.log_id.index),
            Err(e) => not_leader(&e).unwrap_or_else(|| PeerReply::Error(e.to_string())),
        },
        PeerRequest::RemoveLearner(id) => {
            let change = openraft::ChangeMembers::RemoveNodes([id].into_iter().collect());
            match raft.change_membership(change, false).await {
                Ok(r) => PeerReply::Membership(r.log_id.index),
                Err(e) => not_leader(&e).unwrap_or_else(|| PeerReply::Error(e.to_string())),
            }
        }
    }
}

/// Errors that may say "ask the leader instead".
pub trait TryAsForward {
    /// The forward hint, if this error is one.
    fn forward(&self) -> Option<&openraft::error::ForwardToLeader<u64, CoordinatorAddr>>;
}
impl TryAsForward for openraft::error::ClientWriteError<u64, CoordinatorAddr> {
    fn forward(&self) -> Option<&openraft::error::ForwardToLeader<u64, CoordinatorAddr>> {
        match self {
            openraft::error::ClientWriteError::ForwardToLeader(f) => Some(f),
            _ => None,
        }
    }
}
impl TryAsForward for openraft::error::CheckIsLeaderError<u64, CoordinatorAddr> {
    fn forward(&self) -> Option<&openraft::error::ForwardToLeader<u64, CoordinatorAddr>> {
        match self {
            openraft::error::CheckIsLeaderError::ForwardToLeader(f) => Some(f),
            _ => None,
        }
    }
}

/// Serves Raft RPCs on `endpoint` until it is closed. Only peers whose certificate says
/// `coordinator:<id>` are served.
pub async fn serve(endpoint: quinn::Endpoint, raft: Raft) {
    while let Some(incoming) = endpoint.accept().await {
        let raft = raft.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "raft handshake failed");
                    return;
                }
            };
            match pki::quinn_peer_identity(&conn) {
                Ok(Identity::Coordinator(_)) => {}
                Ok(other) => {
                    tracing::warn!(peer = ?other, remote = %conn.remote_address(), "refusing non-coordinator on raft port");
                    conn.close(1u32.into(), b"not a coordinator");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refusing raft peer without identity");
                    conn.close(1u32.into(), b"no identity");
                    return;
                }
            }
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let raft = raft.clone();
                tokio::spawn(async move {
                    let Ok(bytes) = recv.read_to_end(MAX_RPC + 4).await else {
                        return;
                    };
                    let reply = match protocol::frame::decode::<PeerRequest>(&bytes) {
                        Ok(Some((frame, _))) => handle(&raft, frame.body).await,
                        Ok(None) => PeerReply::Error("truncated request".into()),
                        Err(e) => PeerReply::Error(format!("malformed request: {e}")),
                    };
                    match protocol::frame::encode(protocol::version::CURRENT, &reply) {
                        Ok(out) => {
                            let _ = send.write_all(&out).await;
                            let _ = send.finish();
                        }
                        Err(e) => tracing::error!(error = %e, "cannot encode raft reply"),
                    }
                });
            }
        });
    }
}
