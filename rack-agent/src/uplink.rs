//! The fleet link: one long-running task that keeps a QUIC connection (mutual TLS, ALPN
//! `metalfleet/1`) to some coordinator, stores the desired state it pushes, delivers the
//! outbox, reports status and renews the agent certificate. It never gives up: with every
//! coordinator down it retries with capped exponential backoff while the rest of the agent
//! keeps working from the store.
//!
//! Per connection: one bidirectional stream; `Hello` → `Welcome`; then, concurrently,
//! messages from the coordinator are applied to the store before being acknowledged, the
//! outbox is sent in sequence order (everything unacknowledged again after each reconnect;
//! the coordinator applies each `(rack, seq)` once), and `Status` + `Ping` go out every
//! `status_interval`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{AgentMsg, CoordinatorMsg, Event};
use protocol::frame::{self, Frame, FrameError};
use protocol::version::{self, ProtocolVersion, VersionOffer};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::Shared;
use crate::config::split_endpoint;
use crate::identity::{self, AgentIdentity, IdentityError};
use crate::store::{CertInfo, StoreError};

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the QUIC/TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the coordinator may take to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Events per `Events` frame.
pub const EVENT_BATCH: usize = 500;
/// Events sent but not yet acknowledged before the agent waits for an acknowledgement.
pub const MAX_UNACKED: u64 = 2000;
/// Frames buffered between the reader task and the session.
const INBOX: usize = 16;
/// While the link stays down, one failure in this many is logged at warn level (the first
/// round through the endpoints always is); the rest at debug, so a long outage does not flood
/// the log.
const FAILURES_PER_WARNING: u64 = 60;
/// How long the agent refuses snapshots older than its stored revision. A lagging coordinator
/// offers one (the agent is ahead of it) and catches up within moments, so the agent tries
/// another; if every coordinator still offers only older state after this long, their history
/// really went back (cluster restored) and the agent follows it.
pub const STALE_SNAPSHOT_GRACE: Duration = Duration::from_secs(60);
/// After the coordinators refuse a renewal, the agent keeps its certificate and asks again
/// only after this long (asking on every connection would make the link flap).
pub const RENEWAL_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How long a closing connection may take to tell the coordinator.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Why a connection attempt or an established connection ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No endpoint in the store (enrollment, `Welcome`) nor in the config.
    #[error("no fleet endpoint known: enroll, or set `coordinators` in the config")]
    NoEndpoints,
    /// The agent has no usable certificate.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The endpoint string is malformed (stored by an older release or a coordinator).
    #[error("invalid fleet endpoint {endpoint}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The host name did not resolve.
    #[error("resolving {endpoint}")]
    Resolve {
        /// The endpoint.
        endpoint: String,
        /// The resolver error.
        #[source]
        source: std::io::Error,
    },
    /// The local UDP socket could not be opened.
    #[error("opening a local QUIC endpoint")]
    Bind(#[source] std::io::Error),
    /// quinn refused to start the connection.
    #[error("connecting to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What quinn reported.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC or TLS handshake failed, or the connection broke.
    #[error("connection to {endpoint}")]
    Connection {
        /// The endpoint.
        endpoint: String,
        /// What quinn reported.
        #[source]
        source: quinn::ConnectionError,
    },
    /// A step did not finish in time.
    #[error("{endpoint}: timed out {what}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// What was being waited for.
        what: &'static str,
    },
    /// Writing to the stream failed.
    #[error("sending {what}")]
    Write {
        /// Which message.
        what: &'static str,
        /// What quinn reported.
        #[source]
        source: quinn::WriteError,
    },
    /// Reading from the stream failed.
    #[error("reading from the coordinator")]
    Read(#[source] quinn::ReadExactError),
    /// The coordinator finished the stream.
    #[error("the coordinator closed the stream")]
    Closed,
    /// A frame could not be encoded or decoded.
    #[error("fleet frame")]
    Frame(#[from] FrameError),
    /// The coordinator sent `Error` and closes the connection.
    #[error("the coordinator refused: {0}")]
    Refused(ErrorBody),
    /// The coordinator broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The store refused or failed (a revision mismatch ends the connection on purpose).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LinkError {
    /// True when the coordinators refuse this agent's identity: revoked, or the certificate
    /// names another rack. Retrying will not help until an operator acts.
    pub fn is_auth(&self) -> bool {
        matches!(self, LinkError::Refused(b)
            if matches!(b.code, ErrorCode::Forbidden | ErrorCode::Unauthenticated))
    }
}

/// Capped exponential backoff with jitter (each delay uniform in [d/2, d]).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next delay; doubles the one after, up to [`BACKOFF_MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }

    /// Back to [`BACKOFF_MIN`] (after a successful handshake).
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// What the link remembers from one connection to the next.
#[derive(Debug, Default)]
struct Memory {
    backoff: Backoff,
    /// Since when every snapshot offered was older than the stored revision.
    stale_since: Option<Instant>,
    /// No renewal is asked before this instant (the coordinators refused the last one).
    renewal_paused_until: Option<Instant>,
    /// The `notAfter` of the expired certificate already reported (reported once, not on
    /// every attempt).
    expired_reported: Option<i64>,
}

/// Runs the fleet link until `cancel` fires. Cancel-safe: it returns promptly on
/// cancellation, closing any open connection.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut memory = Memory::default();
    // Start at a random place in the list: when a coordinator dies, its agents then spread
    // over the survivors instead of all stampeding the next one in order.
    let mut turn: usize = rand::random::<u16>().into();
    let mut failures = 0u64;
    while !cancel.is_cancelled() {
        let endpoints = candidates(&shared).await;
        let result = match endpoints.get(turn % endpoints.len().max(1)) {
            None => Err(LinkError::NoEndpoints),
            Some(endpoint) => {
                turn = turn.wrapping_add(1);
                shared.update_link(|l| l.endpoint = Some(endpoint.clone()));
                connect_and_serve(&shared, endpoint, &cancel, &mut memory).await
            }
        };
        let established = shared.link().connected;
        shared.update_link(|l| {
            l.connected = false;
            l.coordinator = None;
            l.protocol_version = None;
        });
        match result {
            Ok(()) => break,
            Err(e) => {
                let msg = crate::error_chain(&e);
                if established {
                    failures = 0;
                }
                failures += 1;
                let loud = established
                    || failures <= u64::try_from(endpoints.len().max(1)).unwrap_or(1)
                    || failures.checked_rem(FAILURES_PER_WARNING) == Some(0);
                if e.is_auth() && loud {
                    tracing::error!(
                        error = %msg,
                        failures,
                        "the coordinators refuse this agent's identity: its certificate was \
                         revoked or is for another rack; re-enroll it (rack-agent enroll --force)"
                    );
                } else if loud {
                    tracing::warn!(error = %msg, failures, "fleet link down; retrying");
                } else {
                    tracing::debug!(error = %msg, failures, "fleet link still down");
                }
                shared.update_link(|l| l.last_error = Some(msg));
            }
        }
        let delay = memory.backoff.next_delay();
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Endpoints to rotate through: the stored list (from enrollment and the last `Welcome`)
/// first, then configured ones it lacks.
async fn candidates(shared: &Arc<Shared>) -> Vec<String> {
    let mut list = match shared.store.call(|s| s.endpoints()).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read stored endpoints");
            Vec::new()
        }
    };
    for c in &shared.config.coordinators {
        if !list.contains(c) {
            list.push(c.clone());
        }
    }
    list
}

/// One connection: handshake, then the session until it fails or `cancel` fires (`Ok`).
async fn connect_and_serve(
    shared: &Arc<Shared>,
    endpoint: &str,
    cancel: &CancellationToken,
    memory: &mut Memory,
) -> Result<(), LinkError> {
    let config = shared.config.clone();
    let identity = tokio::task::spawn_blocking(move || identity::load(&config))
        .await
        .map_err(|_| StoreError::Interrupted {
            path: shared.config.tls_dir(),
        })??;
    let now = crate::unix_secs();
    if identity.not_after <= now && memory.expired_reported != Some(identity.not_after) {
        memory.expired_reported = Some(identity.not_after);
        tracing::error!(
            not_after = identity.not_after,
            "the agent certificate has expired; the coordinators will refuse it: re-enroll \
             (rack-agent enroll --force)"
        );
    }
    let (host, port) = split_endpoint(endpoint).map_err(|reason| LinkError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    })?;

    let connect = async {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| LinkError::Resolve {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| LinkError::Resolve {
                endpoint: endpoint.to_owned(),
                source: std::io::Error::other("no address"),
            })?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut quic = quinn::Endpoint::client(bind).map_err(LinkError::Bind)?;
        quic.set_default_client_config(identity.quinn_client_config()?);
        let connecting = quic
            .connect(addr, &host)
            .map_err(|source| LinkError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| LinkError::Timeout {
                endpoint: endpoint.to_owned(),
                what: "in the QUIC handshake",
            })?
            .map_err(|source| LinkError::Connection {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        Ok::<_, LinkError>((quic, conn))
    };
    let (quic, conn) = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        r = connect => r?,
    };

    let result = tokio::select! {
        () = cancel.cancelled() => Ok(()),
        r = session(shared, endpoint, &conn, identity, cancel, memory) => r,
    };
    let (code, reason): (u32, &[u8]) = match &result {
        Ok(()) => (0, b"agent shutting down"),
        Err(_) => (1, b"agent reconnecting"),
    };
    conn.close(code.into(), reason);
    let _ = tokio::time::timeout(CLOSE_GRACE, quic.wait_idle()).await;
    result
}

/// Everything after the QUIC handshake. Returns only with an error (or when cancelled by the
/// caller's select).
async fn session(
    shared: &Arc<Shared>,
    endpoint: &str,
    conn: &quinn::Connection,
    identity: AgentIdentity,
    cancel: &CancellationToken,
    memory: &mut Memory,
) -> Result<(), LinkError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|source| LinkError::Connection {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let (tx, mut inbox) = mpsc::channel(INBOX);
    let reader = tokio::spawn(read_frames(recv, tx));
    let _reader = AbortOnDrop(reader);

    let (revision, outbox_depth) = shared
        .store
        .call(|s| Ok((s.revision()?, s.outbox_depth()?)))
        .await?;
    let mut link = Session {
        shared: shared.clone(),
        send,
        // Hello goes out in the oldest version we speak: a coordinator of any release that
        // shares a version with us can read it and pick the version for the rest.
        version: version::MIN_SUPPORTED,
        identity,
        sent_upto: 0,
        renewal_key: None,
        renewal_requested: false,
        pings: 0,
        memory,
    };
    link.send(
        "Hello",
        &AgentMsg::Hello {
            offer: VersionOffer::ours(&format!("rack-agent {}", env!("CARGO_PKG_VERSION"))),
            rack: shared.config.rack.clone(),
            last_revision: revision,
            outbox_depth,
        },
    )
    .await?;

    let first = tokio::time::timeout(WELCOME_TIMEOUT, inbox.recv())
        .await
        .map_err(|_| LinkError::Timeout {
            endpoint: endpoint.to_owned(),
            what: "waiting for Welcome",
        })?
        .ok_or(LinkError::Closed)??;
    let (version, coordinator, coordinators) = match first.body {
        CoordinatorMsg::Welcome {
            version,
            coordinator,
            coordinators,
        } => (version, coordinator, coordinators),
        CoordinatorMsg::Error(body) => return Err(LinkError::Refused(body)),
        other => {
            return Err(LinkError::Protocol(format!(
                "expected Welcome, got {}",
                msg_name(&other)
            )))
        }
    };
    if !version::SUPPORTED.contains(&version) {
        return Err(LinkError::Protocol(format!(
            "coordinator chose protocol version {version}, we speak {}..={}",
            version::MIN_SUPPORTED,
            version::CURRENT
        )));
    }
    link.version = version;
    link.memory.backoff.reset();
    shared.update_link(|l| {
        l.connected = true;
        l.coordinator = Some(coordinator);
        l.endpoint = Some(endpoint.to_owned());
        l.protocol_version = Some(version);
        l.connects += 1;
        l.last_error = None;
    });
    tracing::info!(
        coordinator,
        endpoint,
        version,
        revision,
        outbox_depth,
        "fleet link up"
    );
    link.remember_endpoints(coordinators).await?;

    link.maybe_renew().await?;
    link.pump_events().await?;
    let mut tick = tokio::time::interval(shared.config.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            msg = inbox.recv() => {
                let frame = msg.ok_or(LinkError::Closed)??;
                link.handle(frame.body).await?;
            }
            () = shared.outbox_ready.notified() => link.pump_events().await?,
            _ = tick.tick() => {
                link.send_status().await?;
                link.maybe_renew().await?;
            }
        }
    }
}

/// The sending half of an established connection and what it tracks.
struct Session<'m> {
    shared: Arc<Shared>,
    send: quinn::SendStream,
    version: ProtocolVersion,
    identity: AgentIdentity,
    /// Highest event seq sent on this connection (0: none yet, so a reconnect resends every
    /// unacknowledged event).
    sent_upto: u64,
    /// Private key of the CSR sent for renewal, waiting for its certificate.
    renewal_key: Option<String>,
    /// Renewal is asked at most once per connection.
    renewal_requested: bool,
    pings: u64,
    memory: &'m mut Memory,
}

impl Session<'_> {
    async fn send(&mut self, what: &'static str, msg: &AgentMsg) -> Result<(), LinkError> {
        let bytes = frame::encode(self.version, msg)?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(|source| LinkError::Write { what, source })
    }

    async fn handle(&mut self, msg: CoordinatorMsg) -> Result<(), LinkError> {
        match msg {
            CoordinatorMsg::Snapshot(state) => {
                let revision = state.revision;
                let nodes = state.nodes.len();
                let stale_for = self.memory.stale_since.map(|t| t.elapsed());
                let rollback_ok = stale_for.is_some_and(|d| d >= STALE_SNAPSHOT_GRACE);
                let result = self
                    .shared
                    .store
                    .call(move |s| {
                        let before = s.revision()?;
                        if rollback_ok {
                            s.apply_snapshot_allowing_rollback(&state)?;
                        } else {
                            s.apply_snapshot(&state)?;
                        }
                        Ok(before)
                    })
                    .await;
                if let Err(StoreError::StaleSnapshot { stored, .. }) = &result {
                    self.memory.stale_since.get_or_insert_with(Instant::now);
                    tracing::warn!(
                        revision,
                        stored,
                        "coordinator offered desired state older than ours (it lags); trying \
                         another"
                    );
                }
                let before = result?;
                if revision < before {
                    tracing::error!(
                        revision,
                        before,
                        grace = ?STALE_SNAPSHOT_GRACE,
                        "the coordinators offered only older desired state for longer than the \
                         grace period; following them back (was the cluster restored?)"
                    );
                }
                self.memory.stale_since = None;
                self.shared.update_link(|l| l.snapshots_received += 1);
                tracing::info!(revision, nodes, "stored desired-state snapshot");
                self.send("AckRevision", &AgentMsg::AckRevision(revision))
                    .await
            }
            CoordinatorMsg::Deltas { from, to, deltas } => {
                let count = deltas.len();
                let result = self
                    .shared
                    .store
                    .call(move |s| s.apply_deltas(from, to, &deltas))
                    .await;
                if let Err(StoreError::RevisionMismatch { stored, .. }) = &result {
                    tracing::warn!(
                        from,
                        to,
                        stored,
                        "deltas do not follow the stored revision; reconnecting to resynchronise"
                    );
                }
                result?;
                self.memory.stale_since = None;
                self.shared.update_link(|l| l.deltas_received += 1);
                tracing::debug!(from, to, count, "stored desired-state deltas");
                self.send("AckRevision", &AgentMsg::AckRevision(to)).await
            }
            CoordinatorMsg::AckEvents(seq) => {
                let deleted = self.shared.store.call(move |s| s.ack(seq)).await?;
                tracing::debug!(seq, deleted, "events acknowledged");
                self.pump_events().await
            }
            CoordinatorMsg::Certificate { cert_pem } => self.install_certificate(cert_pem).await,
            CoordinatorMsg::Pong(_) => Ok(()),
            CoordinatorMsg::Error(body) => {
                if self.renewal_key.is_some() {
                    // Most likely the answer to our renewal (the coordinator closes after an
                    // Error, so nothing else can be learnt): keep the current certificate.
                    self.memory.renewal_paused_until = Some(Instant::now() + RENEWAL_RETRY_AFTER);
                    tracing::error!(
                        code = body.code.as_str(),
                        message = %body.message,
                        retry_after = ?RENEWAL_RETRY_AFTER,
                        "certificate renewal refused; keeping the current certificate"
                    );
                }
                Err(LinkError::Refused(body))
            }
            CoordinatorMsg::Welcome { .. } => Err(LinkError::Protocol(
                "second Welcome on one connection".to_owned(),
            )),
        }
    }

    /// Sends unacknowledged events in sequence order, at most [`MAX_UNACKED`] ahead of the
    /// last acknowledgement.
    async fn pump_events(&mut self) -> Result<(), LinkError> {
        loop {
            let after = self.sent_upto;
            let (acked, batch) = self
                .shared
                .store
                .call(move |s| {
                    let acked = s.outbox_counters()?.acked_seq;
                    let from = after.max(acked);
                    if from.saturating_sub(acked) >= MAX_UNACKED {
                        return Ok((acked, Vec::new()));
                    }
                    Ok((acked, s.pending_after(from, EVENT_BATCH)?))
                })
                .await?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                return Ok(());
            };
            let count = batch.len();
            self.send_events(batch).await?;
            self.sent_upto = last;
            self.shared
                .update_link(|l| l.events_sent += u64::try_from(count).unwrap_or(u64::MAX));
            tracing::debug!(acked, upto = last, count, "sent events");
        }
    }

    /// Sends a batch, halving it should a frame turn out too large.
    async fn send_events(&mut self, batch: Vec<Event>) -> Result<(), LinkError> {
        let mut rest = batch.as_slice();
        while !rest.is_empty() {
            let mut take = rest.len();
            loop {
                let msg = AgentMsg::Events(rest[..take].to_vec());
                match frame::encode(self.version, &msg) {
                    Ok(bytes) => {
                        self.send
                            .write_all(&bytes)
                            .await
                            .map_err(|source| LinkError::Write {
                                what: "Events",
                                source,
                            })?;
                        break;
                    }
                    Err(FrameError::TooLarge { .. }) if take > 1 => take /= 2,
                    Err(e) => return Err(e.into()),
                }
            }
            rest = &rest[take..];
        }
        Ok(())
    }

    async fn send_status(&mut self) -> Result<(), LinkError> {
        let (revision, outbox_depth) = self
            .shared
            .store
            .call(|s| Ok((s.revision()?, s.outbox_depth()?)))
            .await?;
        self.send(
            "Status",
            &AgentMsg::Status {
                revision,
                outbox_depth,
            },
        )
        .await?;
        self.pings += 1;
        self.send("Ping", &AgentMsg::Ping(self.pings)).await
    }

    /// Asks for a new certificate (once per connection) when the current one is past its
    /// renewal point.
    async fn maybe_renew(&mut self) -> Result<(), LinkError> {
        let fraction = self.shared.config.renew_before_fraction;
        let paused = self
            .memory
            .renewal_paused_until
            .is_some_and(|t| Instant::now() < t);
        if self.renewal_requested
            || paused
            || !self.identity.needs_renewal(crate::unix_secs(), fraction)
        {
            return Ok(());
        }
        let who = pki::Identity::Rack(self.shared.config.rack.to_string());
        let (key_pem, csr_pem) = match pki::generate_csr(&who) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot create a renewal CSR");
                self.renewal_requested = true;
                return Ok(());
            }
        };
        self.renewal_requested = true;
        self.renewal_key = Some(key_pem);
        tracing::info!(
            not_after = self.identity.not_after,
            "agent certificate is past its renewal point; requesting a new one"
        );
        self.send("RenewCertificate", &AgentMsg::RenewCertificate { csr_pem })
            .await
    }

    /// Installs a renewed certificate with the key of our CSR; the next connection uses it.
    async fn install_certificate(&mut self, cert_pem: String) -> Result<(), LinkError> {
        let Some(key_pem) = self.renewal_key.take() else {
            tracing::warn!(
                "coordinator sent a certificate this connection did not ask for; ignored"
            );
            return Ok(());
        };
        let ca_pem = self.identity.ca_pem.clone();
        let shared = self.shared.clone();
        let installed = self
            .shared
            .store
            .call(move |store| {
                let checked = identity::check(&ca_pem, &cert_pem, &key_pem)
                    .and_then(|()| identity::validity(&cert_pem, "renewed certificate"));
                let (not_before, not_after) = match checked {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                if let Err(e) = identity::install_pair(&shared.config, &cert_pem, &key_pem) {
                    return Ok(Err(e));
                }
                store.set_cert_info(&CertInfo {
                    installed_at: crate::unix_secs(),
                    not_before,
                    not_after,
                })?;
                Ok(Ok((not_before, not_after)))
            })
            .await?;
        match installed {
            Ok((not_before, not_after)) => {
                tracing::info!(
                    not_after,
                    "installed the renewed agent certificate; used from the next connection"
                );
                self.identity.not_before = not_before;
                self.identity.not_after = not_after;
            }
            Err(e) => tracing::error!(
                error = %crate::error_chain(&e),
                "renewed certificate not installed; keeping the current one"
            ),
        }
        Ok(())
    }

    /// Stores the coordinators' endpoint list from `Welcome` when it is non-empty and new.
    async fn remember_endpoints(&mut self, coordinators: Vec<String>) -> Result<(), LinkError> {
        let valid: Vec<String> = coordinators
            .into_iter()
            .filter(|e| match split_endpoint(e) {
                Ok(_) => true,
                Err(reason) => {
                    tracing::warn!(%reason, "ignoring malformed endpoint from the coordinator");
                    false
                }
            })
            .collect();
        if valid.is_empty() {
            return Ok(());
        }
        self.shared
            .store
            .call(move |s| {
                if s.endpoints()? != valid {
                    tracing::info!(endpoints = ?valid, "fleet endpoints updated");
                    s.set_endpoints(&valid)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// Reads frames until the stream ends or fails, forwarding each (and the final error).
async fn read_frames(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Frame<CoordinatorMsg>, LinkError>>,
) {
    loop {
        let frame = read_frame(&mut recv).await;
        let stop = frame.is_err();
        if tx.send(frame).await.is_err() || stop {
            return;
        }
    }
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Frame<CoordinatorMsg>, LinkError> {
    let mut prefix = [0u8; frame::LEN_PREFIX];
    recv.read_exact(&mut prefix).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(0) => LinkError::Closed,
        e => LinkError::Read(e),
    })?;
    let len = frame::parse_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(LinkError::Read)?;
    Ok(frame::decode_body(&body)?)
}

fn msg_name(msg: &CoordinatorMsg) -> &'static str {
    match msg {
        CoordinatorMsg::Welcome { .. } => "Welcome",
        CoordinatorMsg::Snapshot(_) => "Snapshot",
        CoordinatorMsg::Deltas { .. } => "Deltas",
        CoordinatorMsg::AckEvents(_) => "AckEvents",
        CoordinatorMsg::Certificate { .. } => "Certificate",
        CoordinatorMsg::Pong(_) => "Pong",
        CoordinatorMsg::Error(_) => "Error",
    }
}

/// Aborts the reader task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::default();
        let mut caps = Vec::new();
        for _ in 0..10 {
            caps.push(b.next);
            let d = b.next_delay();
            let cap = *caps.last().unwrap_or(&BACKOFF_MIN);
            assert!(d <= cap && d >= cap / 2, "{d:?} vs {cap:?}");
        }
        assert_eq!(caps[0], BACKOFF_MIN);
        assert_eq!(caps[1], BACKOFF_MIN * 2);
        assert_eq!(*caps.last().unwrap_or(&BACKOFF_MIN), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next, BACKOFF_MIN);
    }
}
