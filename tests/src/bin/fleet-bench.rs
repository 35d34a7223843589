//! Rack-agent fleet benchmark: many simulated rack agents in this one process against 3
//! coordinator processes on loopback. Prints figures; asserts nothing (speed is measured, not
//! tested). Run via `tests/bench/fleet.sh`.
//!
//! Each simulated agent has its own rack, enrolled certificate and registered nodes, and
//! speaks the fleet protocol as `rack-agent` does (Hello with its stored revision, Welcome,
//! Snapshot or Deltas, AckRevision; on connection loss the next coordinator in the list, with
//! backoff), but its "store" is one revision number in memory and it sends no Status, Ping
//! or events. All agents share one QUIC client endpoint (one UDP socket with a large receive
//! buffer), each connection with its agent's own client certificate.
//!
//! Phases and what they print:
//!
//! 1. Setup: a site, one rack per agent with an enrolled agent (token + CSR), `--nodes`
//!    nodes per rack registered with concurrent `POST /v1/nodes` (there is no bulk
//!    registration endpoint). Timed, with progress on stderr.
//! 2. Memory baseline: a rolling restart (so the heaps hold loaded state, not setup garbage),
//!    writes until every coordinator has just built a Raft snapshot (so the next one falls
//!    outside the measured window; flagged if it does not), an idle interval for the drift.
//! 3. Initial sync: agent `i` dials coordinator `i % 3` with revision 0; time from the first
//!    connect until every agent holds its snapshot; coordinator RSS growth `--settle-secs`
//!    later, per agent served, per coordinator.
//! 4. Restart: SIGKILL of one coordinator (`--kill`), started again at once, then one change
//!    per rack; time from the kill until every agent holds its rack's new revision, and
//!    whether the reconnected agents were resynchronised with deltas or snapshots.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;
use metalfleet_tests::{Api, Cluster};
use protocol::fleet::{AgentMsg, CoordinatorMsg};
use protocol::version::{self, VersionOffer};
use protocol::{frame, RackId, Revision};
use serde_json::{json, Value};

/// Per-attempt bound of the QUIC handshake (as `rack-agent`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the coordinator may take to answer Hello (as `rack-agent`).
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest reconnect delay (as `rack-agent`).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Before the memory baseline, every coordinator's last Raft snapshot should be at most this
/// many entries old; they snapshot every 5000 (`SnapshotPolicy::LogsSinceLast` in
/// `coordinator/src/raft/mod.rs`), so the agents have at least 4000 writes before the next.
const SNAPSHOT_FRESH_LOGS: u64 = 1000;
/// Warm-up writes between checks of the snapshot indexes.
const SNAPSHOT_ALIGN_STEP: usize = 250;
/// Warm-up writes after which the alignment is given up.
const SNAPSHOT_ALIGN_MAX_WRITES: usize = 20_000;
/// Receive and send buffer asked for the simulator's UDP socket.
const CLIENT_SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// How often coordinator RSS is printed while the agents connect and settle.
const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Poll interval of the measurements; bounds their resolution.
const MEASURE_POLL: Duration = Duration::from_millis(10);
/// How often setup progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long a write is retried while the cluster elects a leader.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Victim {
    /// The Raft leader.
    Leader,
    /// The follower serving the most agents.
    Follower,
}

#[derive(Debug, Parser)]
struct Args {
    /// Simulated rack agents (one rack each).
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Nodes registered in each rack.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Concurrent API requests during setup and for the desired-state changes.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Which coordinator to SIGKILL and restart.
    #[arg(long, value_enum, default_value_t = Victim::Leader)]
    kill: Victim,
    /// Seconds to wait after the initial sync before reading coordinator RSS, so that every
    /// session's first link report has gone through Raft.
    #[arg(long, default_value_t = 12)]
    settle_secs: u64,
    /// Bound of every wait for the agents, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// What one simulated agent has done; written by its task, read by the measurements.
#[derive(Debug, Default)]
struct AgentState {
    /// The stored revision (the simulated store): set before it is acknowledged.
    revision: AtomicU64,
    /// Raft id of the coordinator serving the live connection; 0 while disconnected.
    serving: AtomicU64,
    /// Connections that got as far as Welcome.
    connects: AtomicU64,
    /// Connection attempts that failed before Welcome.
    failed_attempts: AtomicU64,
    /// Snapshot frames received.
    snapshots: AtomicU64,
    /// Deltas frames received.
    deltas: AtomicU64,
    /// Connections whose first desired-state frame was a Snapshot.
    synced_by_snapshot: AtomicU64,
    /// Connections whose first desired-state frame was Deltas.
    synced_by_deltas: AtomicU64,
    /// Deltas that did not start at the stored revision (the agent reconnects, as
    /// `rack-agent` does).
    out_of_step: AtomicU64,
}

/// Totals over all agents, for before/after comparisons.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    connects: u64,
    failed_attempts: u64,
    snapshots: u64,
    deltas: u64,
    synced_by_snapshot: u64,
    synced_by_deltas: u64,
    out_of_step: u64,
}

impl Totals {
    fn of(agents: &[Arc<AgentState>]) -> Totals {
        let mut t = Totals::default();
        for a in agents {
            t.connects += a.connects.load(Ordering::Relaxed);
            t.failed_attempts += a.failed_attempts.load(Ordering::Relaxed);
            t.snapshots += a.snapshots.load(Ordering::Relaxed);
            t.deltas += a.deltas.load(Ordering::Relaxed);
            t.synced_by_snapshot += a.synced_by_snapshot.load(Ordering::Relaxed);
            t.synced_by_deltas += a.synced_by_deltas.load(Ordering::Relaxed);
            t.out_of_step += a.out_of_step.load(Ordering::Relaxed);
        }
        t
    }

    fn since(self, before: Totals) -> Totals {
        Totals {
            connects: self.connects - before.connects,
            failed_attempts: self.failed_attempts - before.failed_attempts,
            snapshots: self.snapshots - before.snapshots,
            deltas: self.deltas - before.deltas,
            synced_by_snapshot: self.synced_by_snapshot - before.synced_by_snapshot,
            synced_by_deltas: self.synced_by_deltas - before.synced_by_deltas,
            out_of_step: self.out_of_step - before.out_of_step,
        }
    }
}

/// A rack set up for one simulated agent.
struct SimRack {
    rack: RackId,
    /// QUIC client config presenting this rack's agent certificate.
    client: quinn::ClientConfig,
}

/// Everything one agent task needs.
struct Link {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    rack: RackId,
    /// Fleet endpoints in member order; the agent starts at `first` and rotates on failure.
    coordinators: Arc<Vec<SocketAddr>>,
    first: usize,
    state: Arc<AgentState>,
    /// Why connections ended, shared by all agents.
    ends: Arc<Ends>,
}

/// Why connections ended: `before Welcome: <error>` or `after Welcome: <error>` → count.
type Ends = Mutex<BTreeMap<String, u64>>;

fn ends_snapshot(ends: &Ends) -> BTreeMap<String, u64> {
    ends.lock().map(|m| m.clone()).unwrap_or_default()
}

/// `now - before` per reason, as `reason × n` lines (nothing when nothing ended).
fn ends_since(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> Vec<String> {
    now.iter()
        .filter_map(|(why, n)| {
            let n = n - before.get(why).copied().unwrap_or(0);
            (n > 0).then(|| format!("{why} x {n}"))
        })
        .collect()
}

fn rack_name(i: usize) -> String {
    format!("rack-{i:04}")
}

fn serial(rack: usize, node: usize) -> String {
    format!("R{rack:04}-N{node:03}")
}

fn mac(rack: usize, node: usize) -> String {
    let (r, n) = (rack as u16, node as u16);
    format!(
        "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
        r >> 8,
        r & 0xff,
        n >> 8,
        n & 0xff
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Sends a write, retrying failures (a leader election, a restarting member) for a while.
async fn write_retrying(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> Result<Value> {
    let deadline = Instant::now() + WRITE_RETRY_FOR;
    loop {
        let r = api
            .call(method.clone(), path, Some(body))
            .await
            .and_then(|r| r.ok());
        match r {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{method} {path}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Creates the racks, enrolls one agent per rack (token + CSR), builds its client config.
async fn setup_racks(cluster: &Cluster, args: &Args, ca_pem: &str) -> Result<Vec<SimRack>> {
    let ids = cluster.ids();
    let mut racks: Vec<(usize, SimRack)> = futures::stream::iter(0..args.agents)
        .map(|i| {
            let api = cluster.api(ids[i % ids.len()]);
            async move {
                let name = rack_name(i);
                let rack: RackId = name.parse().map_err(|e| anyhow!("{e}"))?;
                write_retrying(
                    &api,
                    reqwest::Method::PUT,
                    &format!("/v1/racks/{name}"),
                    &json!({"name": name, "site": "s1"}),
                )
                .await?;
                let token = api
                    .post(&format!("/v1/racks/{name}/enroll-tokens"), &json!({}))
                    .await?
                    .ok()
                    .with_context(|| format!("enroll token for {name}"))?;
                let token = token["token"]
                    .as_str()
                    .context("enroll token response without token")?
                    .to_owned();
                let identity = pki::Identity::Rack(name.clone());
                let (key_pem, csr_pem) =
                    tokio::task::spawn_blocking(move || pki::generate_csr(&identity)).await??;
                let enrolled = api
                    .anonymous()
                    .post(
                        "/v1/enroll",
                        &json!({"rack": name, "token": token, "csr_pem": csr_pem}),
                    )
                    .await?
                    .ok()
                    .with_context(|| format!("enrolling {name}"))?;
                let cert_pem = enrolled["cert_pem"]
                    .as_str()
                    .context("enroll response without cert_pem")?
                    .to_owned();
                Ok::<_, anyhow::Error>((i, rack, pki::CertKeyPem { cert_pem, key_pem }))
            }
        })
        .buffer_unordered(args.setup_concurrency)
        .map(|r| {
            r.and_then(|(i, rack, leaf)| {
                let client = pki::quinn_client_config(ca_pem, &leaf, pki::ALPN_FLEET)?;
                Ok((i, SimRack { rack, client }))
            })
        })
        .collect::<Vec<Result<_>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    racks.sort_by_key(|(i, _)| *i);
    Ok(racks.into_iter().map(|(_, r)| r).collect())
}

/// Registers `nodes` nodes in every rack with concurrent `POST /v1/nodes` (the API has no
/// bulk registration), spread over all members; prints progress.
async fn register_nodes(cluster: &Cluster, args: &Args) -> Result<()> {
    let ids = cluster.ids();
    let total = args.agents * args.nodes;
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut done = 0usize;
    let mut results = futures::stream::iter(0..total)
        .map(|k| {
            let (rack, node) = (k / args.nodes, k % args.nodes);
            let api = cluster.api(ids[k % ids.len()]);
            async move {
                write_retrying(
                    &api,
                    reqwest::Method::POST,
                    "/v1/nodes",
                    &json!({"serial": serial(rack, node), "rack": rack_name(rack), "macs": [mac(rack, node)]}),
                )
                .await
            }
        })
        .buffer_unordered(args.setup_concurrency);
    while let Some(r) = results.next().await {
        r?;
        done += 1;
        if last_print.elapsed() >= PROGRESS_EVERY {
            last_print = Instant::now();
            let s = started.elapsed().as_secs_f64();
            eprintln!(
                "  registered {done}/{total} nodes in {s:.0} s ({:.0}/s)",
                done as f64 / s
            );
        }
    }
    Ok(())
}

/// `(last applied, last snapshot)` Raft indexes of member `id`, from its `/metrics`.
async fn raft_indexes(cluster: &Cluster, id: u64) -> Result<(u64, u64)> {
    let text = cluster
        .api(id)
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let metric = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics of member {id}"))
    };
    Ok((
        metric("metalfleet_raft_last_applied")?,
        metric("metalfleet_raft_snapshot_index")?,
    ))
}

async fn snapshot_indexes(cluster: &Cluster) -> Result<BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    for id in cluster.ids() {
        out.insert(id, raft_indexes(cluster, id).await?.1);
    }
    Ok(out)
}

/// Writes (no-op site updates) until every member has built a snapshot since the call and
/// none is more than [`SNAPSHOT_FRESH_LOGS`] entries past its last one; gives up (and says
/// so) after [`SNAPSHOT_ALIGN_MAX_WRITES`]. Returns the number of writes.
async fn align_snapshots(cluster: &Cluster, args: &Args, timeout: Duration) -> Result<usize> {
    let start = snapshot_indexes(cluster).await?;
    let (api, site) = (cluster.api(cluster.leader().await?), json!({"name": "s1"}));
    let mut written = 0;
    loop {
        cluster.wait_converged(timeout).await?;
        let mut fresh = true;
        for id in cluster.ids() {
            let (applied, snapshot) = raft_indexes(cluster, id).await?;
            fresh &= snapshot > start.get(&id).copied().unwrap_or(0)
                && applied.saturating_sub(snapshot) < SNAPSHOT_FRESH_LOGS;
        }
        if fresh {
            return Ok(written);
        }
        if written >= SNAPSHOT_ALIGN_MAX_WRITES {
            eprintln!(
                "  warning: the coordinators' snapshots did not line up after {written} writes; \
                 one may fall inside the memory measurement (flagged there)"
            );
            return Ok(written);
        }
        futures::stream::iter(0..SNAPSHOT_ALIGN_STEP)
            .map(|_| write_retrying(&api, reqwest::Method::PUT, "/v1/sites/s1", &site))
            .buffer_unordered(args.setup_concurrency)
            .collect::<Vec<Result<_>>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        written += SNAPSHOT_ALIGN_STEP;
    }
}

/// The QUIC endpoint all simulated agents share. Its UDP socket gets a large receive buffer:
/// real agents each have their own socket, and a thousand handshakes arriving at one default
/// sized buffer would measure the simulator, not the coordinators.
fn client_endpoint() -> Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("binding the simulator's UDP socket")?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Capped by net.core.rmem_max / wmem_max unless privileged; best effort.
    let _ = state.set_recv_buffer_size((&socket).into(), CLIENT_SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), CLIENT_SOCKET_BUFFER);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("creating the simulator's QUIC endpoint")
}

/// Receive-buffer drops of the IPv4 UDP sockets bound to `ports` (the `drops` column of
/// `/proc/net/udp`), by name; a socket not found is left out.
fn udp_drops(ports: &[(String, u16)]) -> BTreeMap<String, u64> {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let drops = fields.last().and_then(|d| d.parse::<u64>().ok());
        if let (Some(port), Some(drops)) = (port, drops) {
            for (name, p) in ports {
                if *p == port {
                    *out.entry(name.clone()).or_default() += drops;
                }
            }
        }
    }
    out
}

/// `after - before` per socket; `restarted` names a socket that was replaced in between,
/// whose count started again from 0.
fn drops_between(
    ports: &[(String, u16)],
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    restarted: Option<&str>,
) -> String {
    ports
        .iter()
        .map(|(name, _)| match (before.get(name), after.get(name)) {
            (_, Some(a)) if restarted == Some(name.as_str()) => {
                format!("{name} {a} (since its restart)")
            }
            (Some(b), Some(a)) => format!("{name} {}", a.saturating_sub(*b)),
            _ => format!("{name} ?"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// PID of member `id`'s running `coordinator run` process, found by its config path in
/// `/proc/*/cmdline` (the harness keeps the child but does not expose its PID).
fn coordinator_pid(cluster: &Cluster, id: u64) -> Result<u32> {
    let config = cluster.dir().join(format!("c{id}.toml"));
    let config = config.to_string_lossy();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_run = args.first().is_some_and(|a| a.ends_with(b"coordinator"))
            && args.iter().any(|a| *a == b"run")
            && args.iter().any(|a| *a == config.as_bytes());
        if is_run {
            return Ok(pid);
        }
    }
    bail!("no running coordinator process with config {config}")
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Result<u64> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {}", path.display()))
}

fn rss_all(cluster: &Cluster) -> Result<BTreeMap<u64, u64>> {
    cluster
        .ids()
        .into_iter()
        .map(|id| Ok((id, rss_kib(coordinator_pid(cluster, id)?)?)))
        .collect()
}

/// Polls `cond` every [`MEASURE_POLL`]; returns how long it took to hold (from `since`).
async fn measure(
    what: &str,
    since: Instant,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    loop {
        if cond() {
            return Ok(since.elapsed());
        }
        if since.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(MEASURE_POLL).await;
    }
}

/// Polls every condition every [`MEASURE_POLL`] until all hold; returns, for each, how long
/// after `since` it was first seen to hold.
async fn measure_all<const N: usize>(
    since: Instant,
    timeout: Duration,
    conds: [(&str, &dyn Fn() -> bool); N],
) -> Result<[Duration; N]> {
    let mut seen = [None; N];
    loop {
        for (slot, (_, cond)) in seen.iter_mut().zip(&conds) {
            if slot.is_none() && cond() {
                *slot = Some(since.elapsed());
            }
        }
        if seen.iter().all(Option::is_some) {
            return Ok(seen.map(Option::unwrap_or_default));
        }
        if since.elapsed() >= timeout {
            let missing: Vec<&str> = conds
                .iter()
                .zip(&seen)
                .filter(|(_, s)| s.is_none())
                .map(|((what, _), _)| *what)
                .collect();
            bail!(
                "timed out after {timeout:?} waiting for {}",
                missing.join("; ")
            );
        }
        tokio::time::sleep(MEASURE_POLL).await;
    }
}

async fn read_msg(recv: &mut quinn::RecvStream) -> Result<CoordinatorMsg> {
    let mut prefix = [0u8; frame::LEN_PREFIX];
    recv.read_exact(&mut prefix).await?;
    let len = frame::parse_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(frame::decode_body::<CoordinatorMsg>(&body)?.body)
}

/// One simulated agent: connects, and on every failure moves to the next coordinator after
/// a backoff, like `rack-agent`'s uplink. Runs until aborted.
async fn run_agent(link: Link) {
    let mut at = link.first;
    let mut backoff = BACKOFF_MIN;
    loop {
        let addr = link.coordinators[at % link.coordinators.len()];
        let mut welcomed = false;
        let Err(e) = session(&link, addr, &mut welcomed).await;
        link.state.serving.store(0, Ordering::Relaxed);
        let why = format!(
            "{} Welcome: {e:#}",
            if welcomed { "after" } else { "before" }
        );
        if let Ok(mut ends) = link.ends.lock() {
            *ends.entry(why).or_default() += 1;
        }
        if welcomed {
            backoff = BACKOFF_MIN;
        } else {
            link.state.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
        at += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: handshake, Hello with the stored revision, then desired state until the
/// link fails.
async fn session(link: &Link, addr: SocketAddr, welcomed: &mut bool) -> Result<Infallible> {
    let connecting =
        link.endpoint
            .connect_with(link.client.clone(), addr, &addr.ip().to_string())?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .context("QUIC handshake timed out")??;
    let result = async {
        let state = &link.state;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = AgentMsg::Hello {
            offer: VersionOffer::ours(concat!("fleet-bench ", env!("CARGO_PKG_VERSION"))),
            rack: link.rack.clone(),
            last_revision: state.revision.load(Ordering::Relaxed),
            outbox_depth: 0,
        };
        send.write_all(&frame::encode(version::MIN_SUPPORTED, &hello)?)
            .await?;
        let v = match tokio::time::timeout(WELCOME_TIMEOUT, read_msg(&mut recv))
            .await
            .context("no Welcome")??
        {
            CoordinatorMsg::Welcome {
                version,
                coordinator,
                ..
            } => {
                *welcomed = true;
                state.serving.store(coordinator, Ordering::Relaxed);
                state.connects.fetch_add(1, Ordering::Relaxed);
                version
            }
            CoordinatorMsg::Error(body) => bail!("refused: {}", body.message),
            other => bail!("expected Welcome, got {other:?}"),
        };
        let mut first = true;
        loop {
            let ack: Revision = match read_msg(&mut recv).await? {
                CoordinatorMsg::Snapshot(snap) => {
                    state.revision.store(snap.revision, Ordering::Relaxed);
                    state.snapshots.fetch_add(1, Ordering::Relaxed);
                    if std::mem::take(&mut first) {
                        state.synced_by_snapshot.fetch_add(1, Ordering::Relaxed);
                    }
                    snap.revision
                }
                CoordinatorMsg::Deltas { from, to, .. } => {
                    let stored = state.revision.load(Ordering::Relaxed);
                    if from != stored {
                        state.out_of_step.fetch_add(1, Ordering::Relaxed);
                        bail!("deltas from {from} do not follow the stored revision {stored}");
                    }
                    state.revision.store(to, Ordering::Relaxed);
                    state.deltas.fetch_add(1, Ordering::Relaxed);
                    if std::mem::take(&mut first) {
                        state.synced_by_deltas.fetch_add(1, Ordering::Relaxed);
                    }
                    to
                }
                CoordinatorMsg::Error(body) => bail!("coordinator error: {}", body.message),
                CoordinatorMsg::Welcome { .. } => bail!("second Welcome"),
                CoordinatorMsg::Pong(_)
                | CoordinatorMsg::AckEvents(_)
                | CoordinatorMsg::Certificate { .. } => continue,
            };
            send.write_all(&frame::encode(v, &AgentMsg::AckRevision(ack))?)
                .await?;
        }
    }
    .await;
    conn.close(1u32.into(), b"agent reconnecting");
    result
}

/// The simulated fleet: one task per agent and what the agents record.
struct Fleet {
    agents: Vec<Arc<AgentState>>,
    /// Owns the agent tasks; aborted by [`Fleet::stop`] (or when dropped).
    tasks: tokio::task::JoinSet<()>,
    endpoint: quinn::Endpoint,
    ends: Arc<Ends>,
    /// UDP sockets watched for receive-buffer drops: the simulator's and each coordinator's
    /// fleet socket, by name.
    udp_ports: Vec<(String, u16)>,
}

impl Fleet {
    /// Starts one agent per rack; agent `i` first dials member `ids[i % 3]`.
    fn start(cluster: &Cluster, racks: Vec<SimRack>) -> Result<Fleet> {
        let endpoint = client_endpoint()?;
        let mut udp_ports = vec![("simulator".to_owned(), endpoint.local_addr()?.port())];
        let mut coordinators = Vec::new();
        for id in cluster.ids() {
            let addr: SocketAddr = cluster
                .fleet_addr(id)
                .parse()
                .with_context(|| format!("fleet address of member {id}"))?;
            udp_ports.push((format!("coordinator {id}"), addr.port()));
            coordinators.push(addr);
        }
        let coordinators = Arc::new(coordinators);
        let ends: Arc<Ends> = Arc::default();
        let mut agents = Vec::with_capacity(racks.len());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, rack) in racks.into_iter().enumerate() {
            let state = Arc::new(AgentState::default());
            agents.push(state.clone());
            tasks.spawn(run_agent(Link {
                endpoint: endpoint.clone(),
                client: rack.client,
                rack: rack.rack,
                coordinators: coordinators.clone(),
                first: i % coordinators.len(),
                state,
                ends: ends.clone(),
            }));
        }
        Ok(Fleet {
            agents,
            tasks,
            endpoint,
            ends,
            udp_ports,
        })
    }

    fn revision(&self, i: usize) -> Revision {
        self.agents[i].revision.load(Ordering::Relaxed)
    }

    fn serving(&self, i: usize) -> u64 {
        self.agents[i].serving.load(Ordering::Relaxed)
    }

    fn connects(&self, i: usize) -> u64 {
        self.agents[i].connects.load(Ordering::Relaxed)
    }

    /// Agents currently served by each coordinator.
    fn served(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for i in 0..self.agents.len() {
            let c = self.serving(i);
            if c != 0 {
                *m.entry(c).or_default() += 1;
            }
        }
        m
    }

    fn drops(&self) -> BTreeMap<String, u64> {
        udp_drops(&self.udp_ports)
    }

    fn ends(&self) -> BTreeMap<String, u64> {
        ends_snapshot(&self.ends)
    }

    fn stop(mut self) {
        self.tasks.abort_all();
        self.endpoint.close(0u32.into(), b"bench done");
    }
}

/// Setup figures.
struct SetupReport {
    took: Duration,
    racks_took: Duration,
    nodes_took: Duration,
}

/// Site, racks with enrolled agents, nodes.
async fn setup(cluster: &Cluster, args: &Args) -> Result<(Vec<SimRack>, SetupReport)> {
    let ca_pem = std::fs::read_to_string(cluster.ca_path())
        .with_context(|| format!("reading {}", cluster.ca_path().display()))?;
    let started = Instant::now();
    cluster
        .api(cluster.leader().await?)
        .put("/v1/sites/s1", &json!({"name": "s1"}))
        .await?
        .ok()?;
    let racks = setup_racks(cluster, args, &ca_pem).await?;
    let racks_took = started.elapsed();
    eprintln!(
        "  {} racks created and enrolled in {}",
        racks.len(),
        secs(racks_took)
    );
    let t = Instant::now();
    register_nodes(cluster, args).await?;
    let nodes_took = t.elapsed();
    let total = args.agents * args.nodes;
    eprintln!(
        "  {total} nodes registered in {} ({:.0}/s)",
        secs(nodes_took),
        total as f64 / nodes_took.as_secs_f64()
    );
    cluster
        .wait_converged(Duration::from_secs(args.timeout_secs))
        .await?;
    let report = SetupReport {
        took: started.elapsed(),
        racks_took,
        nodes_took,
    };
    Ok((racks, report))
}

/// Coordinator memory before any agent connects.
struct Baseline {
    leader: u64,
    /// RSS (KiB) at the start and at the end of an idle interval as long as the settle time.
    rss_idle: BTreeMap<u64, u64>,
    rss_before: BTreeMap<u64, u64>,
    snapshots_before: BTreeMap<u64, u64>,
}

/// A rolling restart, so each coordinator's heap holds the state it loaded rather than the
/// setup's freed garbage (which later allocations would reuse without growing RSS); then
/// writes until every coordinator has built a Raft snapshot (a clone and image of the whole
/// state) recently, so that its transient memory is in the baseline and the agents' link
/// reports do not trigger the next one inside the measured window (flagged if they do);
/// then an idle interval, to show the drift without agents.
async fn memory_baseline(cluster: &Cluster, args: &Args) -> Result<Baseline> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let t = Instant::now();
    for id in cluster.ids() {
        cluster.kill(id)?;
        cluster.restart(id).await?;
        cluster.wait_converged(timeout).await?;
    }
    eprintln!(
        "  rolling restart of the 3 coordinators took {}",
        secs(t.elapsed())
    );
    let t = Instant::now();
    let written = align_snapshots(cluster, args, timeout).await?;
    eprintln!(
        "  {written} warm-up writes (a fresh Raft snapshot on every coordinator) took {}",
        secs(t.elapsed())
    );
    let snapshots_before = snapshot_indexes(cluster).await?;
    let rss_idle = rss_all(cluster)?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    Ok(Baseline {
        leader: cluster.leader().await?,
        rss_idle,
        rss_before: rss_all(cluster)?,
        snapshots_before,
    })
}

/// Initial-sync figures and coordinator memory once the agents have settled.
struct SyncReport {
    took: Duration,
    totals: Totals,
    ends: BTreeMap<String, u64>,
    drops_before: BTreeMap<String, u64>,
    drops_after: BTreeMap<String, u64>,
    rss_after: BTreeMap<u64, u64>,
    snapshots_after: BTreeMap<u64, u64>,
    serving: BTreeMap<u64, usize>,
}

/// Starts the fleet (every agent with revision 0), measures until every agent holds its
/// snapshot, waits the settle time and reads coordinator RSS. Prints RSS every
/// [`RSS_SAMPLE_EVERY`] on stderr meanwhile: a Raft snapshot or a new allocator arena shows
/// as a step.
async fn initial_sync(
    cluster: &Cluster,
    args: &Args,
    racks: Vec<SimRack>,
) -> Result<(Fleet, SyncReport)> {
    let pids: Vec<(u64, u32)> = cluster
        .ids()
        .into_iter()
        .map(|id| Ok((id, coordinator_pid(cluster, id)?)))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let fleet = Fleet::start(cluster, racks)?;
    let drops_before = fleet.drops();
    let sampler = {
        let agents = fleet.agents.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RSS_SAMPLE_EVERY).await;
                let rss: Vec<String> = pids
                    .iter()
                    .map(|(id, pid)| {
                        let mib = rss_kib(*pid).map_or(0.0, |k| k as f64 / 1024.0);
                        format!("{id}: {mib:.0}")
                    })
                    .collect();
                let synced = agents
                    .iter()
                    .filter(|a| a.revision.load(Ordering::Relaxed) > 0)
                    .count();
                eprintln!(
                    "  {:>5.1} s: coordinator RSS MiB {}; {synced} agents synced",
                    started.elapsed().as_secs_f64(),
                    rss.join(", ")
                );
            }
        })
    };
    let took = measure(
        "every agent to hold its snapshot",
        started,
        Duration::from_secs(args.timeout_secs),
        || (0..fleet.agents.len()).all(|i| fleet.revision(i) > 0),
    )
    .await;
    let took = match took {
        Ok(t) => t,
        Err(e) => {
            sampler.abort();
            return Err(e);
        }
    };
    let totals = Totals::of(&fleet.agents);
    let drops_after = fleet.drops();
    let ends = fleet.ends();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_after = rss_all(cluster)?;
    sampler.abort();
    let report = SyncReport {
        took,
        totals,
        ends,
        drops_before,
        drops_after,
        rss_after,
        snapshots_after: snapshot_indexes(cluster).await?,
        serving: fleet.served(),
    };
    Ok((fleet, report))
}

/// Figures of the restart.
struct RestartReport {
    victim: u64,
    victim_was_leader: bool,
    victims_agents: usize,
    healthy_after: Duration,
    changes: usize,
    changes_started: Duration,
    changes_done: Duration,
    /// Last applied index of the leader right after the changes.
    cluster_applied: Revision,
    others_caught_up: Duration,
    reconnected: Duration,
    all_caught_up: Duration,
    all_at_applied: Duration,
    totals: Totals,
    ends: Vec<String>,
    drops: String,
    serving_after: BTreeMap<u64, usize>,
}

/// SIGKILLs one coordinator and starts it again, then changes every rack once (PATCH of its
/// first node); measures, from the kill, until every agent holds its rack's new revision.
async fn restart(cluster: &Cluster, args: &Args, fleet: &Fleet) -> Result<RestartReport> {
    let ids = cluster.ids();
    let leader = cluster.leader().await?;
    let serving = fleet.served();
    let victim = match args.kill {
        Victim::Leader => leader,
        Victim::Follower => serving
            .iter()
            .filter(|(id, _)| **id != leader)
            .max_by_key(|(_, n)| **n)
            .map(|(id, _)| *id)
            .context("no follower serves agents")?,
    };
    let n = fleet.agents.len();
    let victims: Vec<bool> = (0..n).map(|i| fleet.serving(i) == victim).collect();
    let totals_before = Totals::of(&fleet.agents);
    let ends_before = fleet.ends();
    let drops_before = fleet.drops();
    let connects_before: Vec<u64> = (0..n).map(|i| fleet.connects(i)).collect();

    let killed_at = Instant::now();
    cluster.kill(victim)?;
    cluster.restart(victim).await?;
    let healthy_after = killed_at.elapsed();
    let targets: Vec<Revision> = futures::stream::iter(0..n)
        .map(|i| {
            // Every member takes writes (followers forward); the restarted one too.
            let api = cluster.api(ids[i % ids.len()]);
            async move {
                let node = write_retrying(
                    &api,
                    reqwest::Method::PATCH,
                    &format!("/v1/nodes/{}", serial(i, 0)),
                    &json!({"tags": ["fleet-bench-bump"]}),
                )
                .await?;
                node["revision"]
                    .as_u64()
                    .context("patched node without revision")
            }
        })
        .buffered(args.setup_concurrency)
        .collect::<Vec<Result<_>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let changes_done = killed_at.elapsed();
    let cluster_applied = cluster.status(cluster.leader().await?).await?.last_applied;

    let at_target = |i: usize| fleet.revision(i) >= targets[i];
    let moved = |i: usize| fleet.connects(i) > connects_before[i];
    let [others_caught_up, reconnected, all_caught_up, all_at_applied] = measure_all(
        killed_at,
        Duration::from_secs(args.timeout_secs),
        [
            (
                "agents that kept their coordinator to hold their rack's new revision",
                &|| (0..n).all(|i| victims[i] || at_target(i)),
            ),
            ("the killed coordinator's agents to reconnect", &|| {
                (0..n).all(|i| !victims[i] || moved(i))
            }),
            ("every agent to hold its rack's new revision", &|| {
                (0..n).all(at_target)
            }),
            (
                "every agent to hold the cluster's last applied revision after the changes",
                &|| (0..n).all(|i| fleet.revision(i) >= cluster_applied),
            ),
        ],
    )
    .await?;
    Ok(RestartReport {
        victim,
        victim_was_leader: victim == leader,
        victims_agents: victims.iter().filter(|v| **v).count(),
        healthy_after,
        changes: targets.len(),
        changes_started: healthy_after,
        changes_done,
        cluster_applied,
        others_caught_up,
        reconnected,
        all_caught_up,
        all_at_applied,
        totals: Totals::of(&fleet.agents).since(totals_before),
        ends: ends_since(&fleet.ends(), &ends_before),
        drops: drops_between(
            &fleet.udp_ports,
            &drops_before,
            &fleet.drops(),
            Some(&format!("coordinator {victim}")),
        ),
        serving_after: fleet.served(),
    })
}

fn print_setup(args: &Args, r: &SetupReport) {
    let total = args.agents * args.nodes;
    println!("agents: {}, nodes per agent: {}", args.agents, args.nodes);
    println!(
        "setup: {} total: {} racks created + enrolled in {}, {total} nodes registered in {} \
         ({:.0}/s, POST /v1/nodes, concurrency {})",
        secs(r.took),
        args.agents,
        secs(r.racks_took),
        secs(r.nodes_took),
        total as f64 / r.nodes_took.as_secs_f64(),
        args.setup_concurrency
    );
}

fn print_sync(args: &Args, ports: &[(String, u16)], base: &Baseline, r: &SyncReport) {
    println!(
        "initial sync: all {} agents connected and holding their snapshot {} after the first \
         connect ({} connections, {} failed attempts, {} snapshots)",
        args.agents,
        secs(r.took),
        r.totals.connects,
        r.totals.failed_attempts,
        r.totals.snapshots
    );
    for why in ends_since(&r.ends, &BTreeMap::new()) {
        println!("  connection ended: {why}");
    }
    println!(
        "  UDP datagrams dropped for a full receive buffer: {}",
        drops_between(ports, &r.drops_before, &r.drops_after, None)
    );
    println!(
        "coordinator RSS (before agents -> {} s after the initial sync; idle drift = change over \
         the same interval with no agents, just before):",
        args.settle_secs
    );
    let mib = |kib: i64| kib as f64 / 1024.0;
    let (mut sum_delta, mut sum_agents) = (0i64, 0usize);
    for (id, before) in &base.rss_before {
        let rss = |m: &BTreeMap<u64, u64>| m.get(id).map_or(0, |v| *v as i64);
        let (idle, before, after) = (rss(&base.rss_idle), *before as i64, rss(&r.rss_after));
        let n = r.serving.get(id).copied().unwrap_or(0);
        let delta = after - before;
        sum_delta += delta;
        sum_agents += n;
        let per_agent = if n == 0 {
            "-".to_owned()
        } else {
            format!("{:.1} KiB/agent", delta as f64 / n as f64)
        };
        println!(
            "  coordinator {id}{}: {:.1} MiB -> {:.1} MiB ({:+.1} MiB; idle drift {:+.1} MiB), \
             {n} agents: {per_agent}",
            if *id == base.leader { " (leader)" } else { "" },
            mib(before),
            mib(after),
            mib(delta),
            mib(before - idle),
        );
        let (s0, s1) = (
            base.snapshots_before.get(id).copied().unwrap_or(0),
            r.snapshots_after.get(id).copied().unwrap_or(0),
        );
        if s0 != s1 {
            println!(
                "    (includes a Raft snapshot built in the window: snapshot index {s0} -> {s1})"
            );
        }
    }
    if sum_agents > 0 {
        println!(
            "  all coordinators: {:+.1} MiB for {sum_agents} agents = {:.1} KiB/agent",
            mib(sum_delta),
            sum_delta as f64 / sum_agents as f64
        );
    }
}

fn print_restart(r: &RestartReport) {
    println!(
        "restart: SIGKILL of coordinator {} ({}, serving {} agents), answering /healthz again \
         after {}",
        r.victim,
        if r.victim_was_leader {
            "the leader"
        } else {
            "a follower"
        },
        r.victims_agents,
        secs(r.healthy_after)
    );
    println!(
        "  one node PATCHed per rack ({} changes) from {} to {} after the kill",
        r.changes,
        secs(r.changes_started),
        secs(r.changes_done)
    );
    println!(
        "  agents that kept their coordinator: all at their rack's new revision {} after the kill",
        secs(r.others_caught_up)
    );
    println!(
        "  the killed coordinator's {} agents: reconnected elsewhere {} after the kill",
        r.victims_agents,
        secs(r.reconnected)
    );
    println!(
        "  all agents at their rack's new revision: {} after the kill; at the cluster's last \
         applied revision {} (sampled after the changes): {}",
        secs(r.all_caught_up),
        r.cluster_applied,
        secs(r.all_at_applied)
    );
    let t = &r.totals;
    println!(
        "  after the kill: {} reconnections ({} failed attempts), resynchronised by {} deltas / \
         {} snapshots; {} Deltas and {} Snapshot frames received in all; {} out-of-step deltas",
        t.connects,
        t.failed_attempts,
        t.synced_by_deltas,
        t.synced_by_snapshot,
        t.deltas,
        t.snapshots,
        t.out_of_step
    );
    for why in &r.ends {
        println!("  connection ended: {why}");
    }
    println!(
        "  UDP datagrams dropped for a full receive buffer since the initial sync: {}",
        r.drops
    );
    println!(
        "  agents per coordinator after: {}",
        r.serving_after
            .iter()
            .map(|(id, n)| format!("{id}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.agents == 0 || args.nodes == 0 {
        bail!("--agents and --nodes must be at least 1");
    }
    if args.agents > usize::from(u16::MAX) || args.nodes > usize::from(u16::MAX) {
        bail!("--agents and --nodes must be at most {}", u16::MAX);
    }
    let cluster = Cluster::start(3).await.context("start 3 coordinators")?;
    println!(
        "fleet bench: {} agents x {} nodes, 3 coordinators on loopback (leader {})",
        args.agents,
        args.nodes,
        cluster.leader().await?
    );
    let (racks, setup) = setup(&cluster, &args).await?;
    let baseline = memory_baseline(&cluster, &args).await?;
    let (fleet, sync) = initial_sync(&cluster, &args, racks).await?;
    let restarted = restart(&cluster, &args, &fleet).await?;
    let ports = fleet.udp_ports.clone();
    fleet.stop();

    print_setup(&args, &setup);
    print_sync(&args, &ports, &baseline, &sync);
    print_restart(&restarted);
    Ok(())
}
