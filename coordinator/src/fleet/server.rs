//! Accept loop and per-agent session of the fleet endpoint.

use std::sync::Arc;
use std::time::Duration;

use pki::Identity;
use protocol::domain::AgentLink;
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{AgentMsg, CoordinatorMsg, Event};
use protocol::{frame, version, RackId, Revision};
use tokio::sync::mpsc;

use super::{desired, AGENT_CERT_DAYS, LINK_REPORT_INTERVAL};
use crate::app::{now_ms, App};
use crate::state::{Applied, Command};

/// How long an agent may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest batch of events applied in one Raft entry.
const MAX_EVENTS_PER_WRITE: usize = 1000;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("refused: {0}")]
    Refused(ErrorBody),
    #[error("link: {0}")]
    Link(String),
}

fn refused(code: ErrorCode, msg: impl Into<String>) -> SessionError {
    SessionError::Refused(ErrorBody::new(code, msg))
}

/// Serves agents on `endpoint` until it is closed.
pub async fn serve(endpoint: quinn::Endpoint, app: Arc<App>) {
    while let Some(incoming) = endpoint.accept().await {
        let app = app.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "fleet handshake failed");
                    return;
                }
            };
            let remote = conn.remote_address();
            let Ok((mut send, recv)) = conn.accept_bi().await else {
                return;
            };
            let rack = match pki::quinn_peer(&conn) {
                Ok((Identity::Rack(name), fp)) => name.parse::<RackId>().ok().map(|r| (r, fp)),
                _ => None,
            };
            let result = match rack {
                None => Err(refused(
                    ErrorCode::Forbidden,
                    "the fleet endpoint serves rack agents only",
                )),
                Some((rack, fp)) => session(&app, &rack, &fp, &mut send, recv).await,
            };
            match result {
                Ok(()) => {}
                Err(SessionError::Refused(body)) => {
                    tracing::warn!(%remote, code = body.code.as_str(), message = %body.message, "agent refused");
                    let _ = write(&mut send, &CoordinatorMsg::Error(body)).await;
                    let _ = send.finish();
                    // Give the frame a moment to leave before closing.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    conn.close(1u32.into(), b"refused");
                }
                Err(SessionError::Link(e)) => {
                    tracing::info!(%remote, error = %e, "agent link closed");
                    conn.close(0u32.into(), b"bye");
                }
            }
        });
    }
}

async fn write(send: &mut quinn::SendStream, msg: &CoordinatorMsg) -> Result<(), SessionError> {
    write_v(send, version::MIN_SUPPORTED, msg).await
}

/// Writes a frame encoded in protocol version `v` (the negotiated one once known; before
/// that, the oldest we speak, so any peer can read a refusal).
async fn write_v(
    send: &mut quinn::SendStream,
    v: version::ProtocolVersion,
    msg: &CoordinatorMsg,
) -> Result<(), SessionError> {
    let bytes = frame::encode(v, msg).map_err(|e| SessionError::Link(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| SessionError::Link(e.to_string()))
}

/// Reads frames off the stream in its own task (reading is not cancel-safe, so it does not
/// sit in a `select!`), handing each decoded message to the session.
fn spawn_reader(mut recv: quinn::RecvStream) -> mpsc::Receiver<Result<AgentMsg, String>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = recv.read_exact(&mut len).await {
                let _ = tx.send(Err(format!("read: {e}"))).await;
                return;
            }
            let n = match frame::parse_len(len) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            let mut buf = vec![0u8; n];
            if let Err(e) = recv.read_exact(&mut buf).await {
                let _ = tx.send(Err(format!("read: {e}"))).await;
                return;
            }
            let msg = frame::decode_body::<AgentMsg>(&buf)
                .map(|f| f.body)
                .map_err(|e| e.to_string());
            let stop = msg.is_err();
            if tx.send(msg).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Whether `fp` is the live certificate of `rack`'s agent.
fn check_agent(app: &App, rack: &RackId, fp: &str) -> Result<(), SessionError> {
    let g = app
        .state
        .read()
        .map_err(|_| SessionError::Link("state lock poisoned".into()))?;
    match g.state.agents.get(rack) {
        Some(a) if a.revoked => Err(refused(
            ErrorCode::Forbidden,
            format!("the agent of rack {rack} is revoked"),
        )),
        Some(a)
            if a.cert_fingerprint.as_deref() == Some(fp)
                || a.previous_fingerprint.as_deref() == Some(fp) =>
        {
            Ok(())
        }
        Some(_) => Err(refused(
            ErrorCode::Forbidden,
            format!("this certificate is no longer valid for rack {rack}"),
        )),
        None => Err(refused(
            ErrorCode::Forbidden,
            format!("rack {rack} has no enrolled agent"),
        )),
    }
}

struct Session<'a> {
    app: &'a App,
    rack: &'a RackId,
    /// Revision the agent has been sent up to.
    sent: Revision,
    /// Revision the agent acknowledged.
    acked: Revision,
    outbox_depth: u64,
    version: String,
    /// Negotiated protocol version: every frame after Welcome is encoded in it.
    v: version::ProtocolVersion,
    /// Whether the link report after the initial sync was made.
    synced: bool,
    /// Id of this session, ordered by start time (see [`AgentLink::session`]).
    session: u64,
}

impl Session<'_> {
    fn current(&self) -> Revision {
        self.app
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// Sends what changed in the rack since `sent`; with `heartbeat`, also an empty delta
    /// that just advances the agent's revision.
    async fn push(
        &mut self,
        send: &mut quinn::SendStream,
        heartbeat: bool,
    ) -> Result<(), SessionError> {
        let (msg, to) = {
            let g = self
                .app
                .state
                .read()
                .map_err(|_| SessionError::Link("state lock poisoned".into()))?;
            let to = g.last_applied.map(|l| l.index).unwrap_or(0);
            if to <= self.sent || (!heartbeat && g.state.rack_changed(self.rack) <= self.sent) {
                return Ok(());
            }
            let deltas = desired::deltas_since(&g.state, &self.app.key, self.rack, self.sent);
            (
                CoordinatorMsg::Deltas {
                    from: self.sent,
                    to,
                    deltas,
                },
                to,
            )
        };
        write_v(send, self.v, &msg).await?;
        self.sent = to;
        Ok(())
    }

    async fn report(&self, connected: bool) {
        let link = AgentLink {
            connected,
            coordinator: self.app.config.id,
            last_seen: now_ms(),
            revision: self.acked,
            outbox_depth: self.outbox_depth,
            version: self.version.clone(),
            session: self.session,
        };
        let cmd = Command::AgentLinkReport {
            rack: self.rack.clone(),
            link,
        };
        if let Err(e) = self
            .app
            .write_unkeyed(format!("coordinator:{}", self.app.config.id), cmd)
            .await
        {
            tracing::debug!(rack = %self.rack, error = %e, "link report not recorded");
        }
    }

    async fn apply_events(&self, events: Vec<Event>) -> Result<u64, SessionError> {
        let mut last = 0;
        for chunk in events.chunks(MAX_EVENTS_PER_WRITE) {
            let cmd = Command::AgentEvents {
                rack: self.rack.clone(),
                events: chunk.to_vec(),
            };
            let resp = self
                .app
                .write_unkeyed(format!("rack:{}", self.rack), cmd)
                .await
                .map_err(|e| SessionError::Link(format!("applying events: {e}")))?;
            match resp.result {
                Ok(Applied::Events { last_seq }) => last = last_seq,
                Ok(other) => {
                    return Err(SessionError::Link(format!("unexpected result {other:?}")))
                }
                Err(body) => return Err(SessionError::Refused(body)),
            }
        }
        Ok(last)
    }
}

async fn session(
    app: &App,
    rack: &RackId,
    fp: &str,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), SessionError> {
    check_agent(app, rack, fp)?;
    let mut frames = spawn_reader(recv);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, frames.recv())
        .await
        .map_err(|_| SessionError::Link("no hello".into()))?
        .ok_or_else(|| SessionError::Link("closed before hello".into()))?
        .map_err(SessionError::Link)?;
    let AgentMsg::Hello {
        offer,
        rack: claimed,
        last_revision,
        outbox_depth,
    } = hello
    else {
        return Err(refused(
            ErrorCode::BadRequest,
            "the first frame must be Hello",
        ));
    };
    if &claimed != rack {
        return Err(refused(
            ErrorCode::Forbidden,
            format!("this certificate speaks for rack {rack}, not {claimed}"),
        ));
    }
    let negotiated = version::negotiate(version::SUPPORTED, &offer)
        .map_err(|e| refused(ErrorCode::UnsupportedVersion, e.to_string()))?;
    // Catch up with the leader before computing the agent's view: a lagging follower must
    // not send an agent older state than it already holds.
    app.read_barrier()
        .await
        .map_err(|e| refused(ErrorCode::Unavailable, e.to_string()))?;
    let coordinators = app.fleet_endpoints();
    write_v(
        send,
        negotiated,
        &CoordinatorMsg::Welcome {
            version: negotiated,
            coordinator: app.config.id,
            coordinators,
        },
    )
    .await?;
    let mut s = Session {
        app,
        rack,
        sent: 0,
        acked: last_revision,
        outbox_depth,
        version: offer.software.clone(),
        v: negotiated,
        synced: false,
        // Start time in the high bits, so a newer session's id is larger; random low bits
        // tell apart sessions started in the same millisecond.
        session: ((now_ms().max(0) as u64) << 16) | u64::from(rand::random::<u16>()),
    };
    let current = s.current();
    // Deltas when the agent's revision is one we can compute changes from; a snapshot on
    // first contact, or when the agent claims a revision this cluster has not reached (its
    // store came from elsewhere).
    if last_revision == 0 || last_revision > current {
        let snap = {
            let g = app
                .state
                .read()
                .map_err(|_| SessionError::Link("state lock poisoned".into()))?;
            let rev = g.last_applied.map(|l| l.index).unwrap_or(0);
            desired::snapshot(&g.state, &app.key, rack, rev)
        };
        s.sent = snap.revision;
        write_v(send, negotiated, &CoordinatorMsg::Snapshot(snap)).await?;
    } else {
        s.sent = last_revision;
        s.push(send, true).await?;
    }
    tracing::info!(%rack, version = %s.version, from = last_revision, "agent connected");
    s.report(true).await;

    // Data metrics change only when the log or applied state does (not on every heartbeat
    // bookkeeping update), so a thousand idle agent sessions stay idle.
    let mut applied = app.raft.data_metrics();
    let mut ticker = tokio::time::interval(LINK_REPORT_INTERVAL);
    ticker.tick().await;
    let result = loop {
        tokio::select! {
            msg = frames.recv() => {
                let msg = match msg {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(SessionError::Link(e)),
                    Some(Ok(m)) => m,
                };
                match msg {
                    AgentMsg::AckRevision(r) => {
                        let first = s.acked < r && !s.synced;
                        s.acked = r;
                        if first {
                            // Show the agent in sync right away, not at the next tick.
                            s.synced = true;
                            s.report(true).await;
                        }
                    }
                    AgentMsg::Events(events) => {
                        let last = match s.apply_events(events).await {
                            Ok(l) => l,
                            Err(e) => break Err(e),
                        };
                        if let Err(e) = write_v(send, negotiated, &CoordinatorMsg::AckEvents(last)).await {
                            break Err(e);
                        }
                    }
                    AgentMsg::Status { revision, outbox_depth } => {
                        s.acked = revision;
                        s.outbox_depth = outbox_depth;
                    }
                    AgentMsg::RenewCertificate { csr_pem } => {
                        match renew(app, rack, fp, &csr_pem).await {
                            Ok(cert_pem) => {
                                if let Err(e) = write_v(send, negotiated, &CoordinatorMsg::Certificate { cert_pem }).await {
                                    break Err(e);
                                }
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    AgentMsg::Ping(n) => {
                        if let Err(e) = write_v(send, negotiated, &CoordinatorMsg::Pong(n)).await {
                            break Err(e);
                        }
                    }
                    AgentMsg::Hello { .. } => break Err(refused(ErrorCode::BadRequest, "Hello sent twice")),
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    break Err(SessionError::Link("coordinator shutting down".into()));
                }
                if let Err(e) = check_agent(app, rack, fp) {
                    break Err(e);
                }
                if let Err(e) = s.push(send, false).await {
                    break Err(e);
                }
            }
            _ = ticker.tick() => {
                if let Err(e) = s.push(send, true).await {
                    break Err(e);
                }
                s.report(true).await;
            }
        }
    };
    s.report(false).await;
    result
}

/// Signs a renewal CSR for the connection's rack and records the new certificate.
async fn renew(app: &App, rack: &RackId, fp: &str, csr_pem: &str) -> Result<String, SessionError> {
    let ca = app
        .cluster_ca()
        .map_err(|e| SessionError::Link(e.to_string()))?;
    let cert_pem = ca
        .sign_csr(
            csr_pem,
            &Identity::Rack(rack.to_string()),
            &[],
            AGENT_CERT_DAYS,
        )
        .map_err(|e| refused(ErrorCode::InvalidField, format!("renewal CSR: {e}")))?;
    let fingerprint = pki::fingerprint(&cert_pem).map_err(|e| SessionError::Link(e.to_string()))?;
    let not_after =
        pki::not_after(&cert_pem).map_err(|e| SessionError::Link(e.to_string()))? * 1000;
    let cmd = Command::RenewAgentCert {
        rack: rack.clone(),
        old_fingerprint: fp.to_owned(),
        fingerprint,
        not_after,
    };
    let resp = app
        .write_unkeyed(format!("rack:{rack}"), cmd)
        .await
        .map_err(|e| SessionError::Link(e.to_string()))?;
    resp.result.map_err(SessionError::Refused)?;
    Ok(cert_pem)
}
