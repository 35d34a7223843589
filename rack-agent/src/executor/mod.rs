//! The durable step executor: runs workflow [`RunPlan`]s for the rack's nodes step by step,
//! with its own redb file (`<data_dir>/runs.redb`), and survives agent restarts.
//!
//! The agent holds one [`Executor`] and talks to it through the handle: [`Executor::submit`]
//! (idempotent by run id), [`Executor::cancel`], [`Executor::pause`], [`Executor::resume`],
//! [`Executor::status`], [`Executor::logs`]; status changes and log lines go to a
//! [`RunSink`] (the agent's outbox). Observations the executor needs from the boot services
//! (check-ins with facts, node-agent log lines, leases, named node events) arrive through
//! [`tap`], an [`EventSink`] wrapped around the agent's own.
//!
//! Durability contract, per step: its Running state and attempt number are committed before
//! the attempt starts; a node action id is committed before the action is queued. After a
//! restart a step found Running is
//! - re-attached when its work runs on the node (`node.run`, `node.template`, `os.install`,
//!   and the node parts of `bmc.configure` and `lldp.check`): the executor waits for the
//!   recorded action's result instead of queueing the work again (see [`steps`]);
//! - re-run when it is idempotent;
//! - failed otherwise, with [`INTERRUPTED`], and the run fails.
//!
//! One run executes per node at a time (in submission order); each run advances on its own
//! task. A pause takes effect between attempts; a cancel stops the step in flight.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use protocol::domain::BootTarget;
use protocol::fleet::{BmcAccess, EventKind, RackNode};
use protocol::workflow::{OnFailure, RunPlan, RunState, RunStatus, StepStatus};
use protocol::{Mac, NodeId};

use crate::bmc::{self, Bmc, BmcConfig, BmcError, BmcRegistry};
use crate::boot::http::node_api::NodeActions;
use crate::boot::EventSink;

mod engine;
pub mod journal;
pub mod observe;
pub mod outbox;
pub mod reconcile;
pub mod steps;

pub use journal::{Control, DhcpPin, NodeOverrides};

/// Name of the executor's database file under the agent's data directory.
pub const DB_FILE: &str = "runs.redb";
/// Log lines kept per step by default (oldest dropped first).
pub const DEFAULT_MAX_LOG_LINES: u64 = 10_000;
/// Steps a run may enter in total (bounds `goto` loops).
pub const MAX_STEP_ENTRIES: u32 = 1000;
/// Why a non-idempotent step found Running after a restart is not run again.
pub const INTERRUPTED: &str = "interrupted while running; step is not idempotent, not re-run";
/// Longest accepted run id.
pub const MAX_RUN_ID_LEN: usize = 64;

/// Why an executor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The database is open in another executor (another agent on the same data directory).
    #[error("run database {path} is in use by another process")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A database operation failed.
    #[error("run database {path}: {op}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// What redb reported (boxed: it is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// A directory could not be created.
    #[error("creating {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A record did not decode.
    #[error("run database {path}: decoding {what}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Cause.
        #[source]
        source: postcard::Error,
    },
    /// A record could not be encoded.
    #[error("run database {path}: encoding {what}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Cause.
        #[source]
        source: postcard::Error,
    },
    /// A record was written by another schema version.
    #[error("run database {path}: {what} has format {found}, this build reads format {want}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Version found.
        found: u16,
        /// Version this build reads.
        want: u16,
    },
    /// A record is damaged.
    #[error("run database {path}: {what}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// A node's stored facts are not JSON.
    #[error("facts of node {node}: {message}")]
    Facts {
        /// The node.
        node: NodeId,
        /// What is wrong.
        message: String,
    },
    /// No run has this id.
    #[error("no run {run_id:?}")]
    UnknownRun {
        /// The id.
        run_id: String,
    },
    /// The run id is not usable.
    #[error("run id {run_id:?}: {reason}")]
    BadRunId {
        /// The id.
        run_id: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A run with this id exists with another node or plan.
    #[error("run {run_id:?} was submitted before with a different node or plan")]
    Conflict {
        /// The id.
        run_id: String,
    },
    /// The plan cannot run: names the step and the field.
    #[error("plan of run {run_id:?}: step {step:?}: {field}: {message}")]
    BadPlan {
        /// The run.
        run_id: String,
        /// The step.
        step: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The run is over; it cannot be paused, resumed or cancelled.
    #[error("run {run_id:?} is already {state:?}")]
    Finished {
        /// The id.
        run_id: String,
        /// Its final state.
        state: RunState,
    },
    /// The executor is shutting down.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The run is not over; it cannot be forgotten.
    #[error("run {run_id:?} is not over yet ({state:?}); cancel it first")]
    NotFinished {
        /// The id.
        run_id: String,
        /// Its state.
        state: RunState,
    },
}

/// What the executor reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RunEvent {
    /// A run's status changed (a step started, finished, reported progress...).
    Status {
        /// Run id.
        run: String,
        /// Its node.
        node: NodeId,
        /// The whole status.
        status: RunStatus,
    },
    /// Log lines of one step (node-agent output, ansible output, the executor's own notes).
    Log {
        /// Run id.
        run: String,
        /// Its node.
        node: NodeId,
        /// Step name.
        step: String,
        /// The lines.
        lines: Vec<String>,
    },
}

/// Where the executor reports run status changes and step logs (the agent connects it to its
/// durable outbox). Must not block.
pub trait RunSink: Send + Sync + 'static {
    /// Events in the order they happened.
    fn emit(&self, events: Vec<RunEvent>);
}

/// Collects run events in memory (tests, demos).
#[derive(Debug, Default)]
pub struct CollectingRunSink {
    events: Mutex<Vec<RunEvent>>,
}

impl CollectingRunSink {
    /// Everything emitted so far.
    pub fn events(&self) -> Vec<RunEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RunSink for CollectingRunSink {
    fn emit(&self, events: Vec<RunEvent>) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(events);
    }
}

/// The rack's nodes as the executor needs them (the agent implements it over its store).
/// Point reads, no network.
pub trait NodeDirectory: Send + Sync + 'static {
    /// The node with this id.
    fn node(&self, id: NodeId) -> Option<RackNode>;
    /// The node owning this MAC.
    fn node_by_mac(&self, mac: &Mac) -> Option<RackNode>;
}

/// A fixed set of nodes (tests, demos); [`StaticDirectory::upsert`] changes it.
#[derive(Debug, Default)]
pub struct StaticDirectory {
    nodes: Mutex<BTreeMap<NodeId, RackNode>>,
}

impl StaticDirectory {
    /// A directory of `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = RackNode>) -> StaticDirectory {
        let d = StaticDirectory::default();
        for n in nodes {
            d.upsert(n);
        }
        d
    }

    /// Adds or replaces a node.
    pub fn upsert(&self, node: RackNode) {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.id, node);
    }
}

impl NodeDirectory for StaticDirectory {
    fn node(&self, id: NodeId) -> Option<RackNode> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn node_by_mac(&self, mac: &Mac) -> Option<RackNode> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|n| n.macs.contains(mac))
            .cloned()
    }
}

/// The BMC area: a driver for a node's BMC. The agent's is [`GuardedConnector`]; tests hand
/// in simulators that keep their state between calls.
pub trait BmcConnector: Send + Sync + 'static {
    /// A BMC for `node` reached with `access`.
    fn connect(&self, node: NodeId, access: &BmcAccess) -> Result<Arc<dyn Bmc>, BmcError>;
}

/// The agent's connector: [`bmc::connect_guarded`] with the `[bmc]` config and the agent-wide
/// registry (so the executor, the power reconciler and the CLI take turns on one BMC);
/// failures are reported as node events to `events`.
pub struct GuardedConnector {
    /// The `[bmc]` config.
    pub config: BmcConfig,
    /// The agent's registry (`Agent::hardware().bmcs`).
    pub registry: Arc<BmcRegistry>,
    /// Where BMC failures are reported.
    pub events: Arc<dyn EventSink>,
}

impl std::fmt::Debug for GuardedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedConnector").finish_non_exhaustive()
    }
}

impl BmcConnector for GuardedConnector {
    fn connect(&self, node: NodeId, access: &BmcAccess) -> Result<Arc<dyn Bmc>, BmcError> {
        let observer = Arc::new(bmc::guard::NodeEventObserver {
            node,
            sink: self.events.clone(),
        });
        bmc::connect_guarded(access, &self.config, &self.registry, observer)
            .map(|g| Arc::new(g) as Arc<dyn Bmc>)
    }
}

/// The hardware handles steps act through.
#[derive(Clone)]
pub struct ExecutorHardware {
    /// The node-agents' action queue (`Agent::hardware().node_actions`).
    pub node_actions: NodeActions,
    /// BMCs.
    pub bmcs: Arc<dyn BmcConnector>,
    /// The rack's nodes.
    pub nodes: Arc<dyn NodeDirectory>,
}

impl std::fmt::Debug for ExecutorHardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHardware").finish_non_exhaustive()
    }
}

/// Where the executor keeps things and finds playbooks and templates.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The agent's data directory: [`DB_FILE`] and scratch files (ansible inventories) live
    /// below it.
    pub data_dir: PathBuf,
    /// Relative `ansible.run` playbooks resolve against this directory.
    pub playbook_dir: PathBuf,
    /// Private key for `ansible.run` when the step names none.
    pub ansible_private_key: Option<PathBuf>,
    /// The HTTP server's autoinstall template directory (`os.install` with an inline
    /// autoinstall file writes the rendered file here).
    pub autoinstall_dir: Option<PathBuf>,
    /// Log lines kept per step.
    pub max_log_lines: u64,
}

impl ExecutorConfig {
    /// Defaults under `data_dir`: playbooks in `<data_dir>/playbooks`, no key, no autoinstall
    /// directory, [`DEFAULT_MAX_LOG_LINES`].
    pub fn new(data_dir: impl Into<PathBuf>) -> ExecutorConfig {
        let data_dir = data_dir.into();
        ExecutorConfig {
            playbook_dir: data_dir.join("playbooks"),
            data_dir,
            ansible_private_key: None,
            autoinstall_dir: None,
            max_log_lines: DEFAULT_MAX_LOG_LINES,
        }
    }
}

/// The `[executor]` section as written (all keys optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecutorConfig {
    playbook_dir: Option<PathBuf>,
    ansible_private_key: Option<PathBuf>,
    autoinstall_dir: Option<PathBuf>,
    max_log_lines: Option<u64>,
}

impl ExecutorConfig {
    /// Reads the `[executor]` section: `playbook_dir` (default `<data_dir>/playbooks`),
    /// `ansible_private_key`, `autoinstall_dir` (the HTTP server's `templates_dir`),
    /// `max_log_lines` (1..=1000000, default [`DEFAULT_MAX_LOG_LINES`]). Relative paths
    /// resolve against the config file's directory. Errors name the key within the section.
    pub fn from_toml(
        table: toml::Table,
        ctx: &crate::boot::ConfigCtx,
    ) -> Result<ExecutorConfig, crate::boot::KeyError> {
        let raw: RawExecutorConfig = crate::boot::from_table(table)?;
        let mut c = ExecutorConfig::new(ctx.data_dir.clone());
        if let Some(p) = raw.playbook_dir {
            c.playbook_dir = ctx.resolve(p);
        }
        c.ansible_private_key = raw.ansible_private_key.map(|p| ctx.resolve(p));
        c.autoinstall_dir = raw.autoinstall_dir.map(|p| ctx.resolve(p));
        if let Some(n) = raw.max_log_lines {
            if !(1..=1_000_000).contains(&n) {
                return Err(crate::boot::KeyError::new(
                    "max_log_lines",
                    format!("{n} is out of range 1..=1000000"),
                ));
            }
            c.max_log_lines = n;
        }
        Ok(c)
    }
}

/// What [`Executor::submit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new run, queued.
    Accepted,
    /// The same run was submitted before; nothing changed.
    AlreadyKnown,
}

pub(crate) struct Shared {
    journal: journal::Journal,
    config: ExecutorConfig,
    hw: ExecutorHardware,
    sink: Arc<dyn RunSink>,
    overrides: RwLock<BTreeMap<NodeId, NodeOverrides>>,
    /// Runs not over yet, per node, by submission order: the first one has the node's turn.
    queues: Mutex<BTreeMap<NodeId, BTreeMap<u64, String>>>,
    controls: Mutex<BTreeMap<String, watch::Sender<Control>>>,
    /// Bumped on every status, facts or override change.
    changed: watch::Sender<u64>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    http: reqwest::Client,
}

impl Shared {
    fn poke(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Whether run `seq` is the oldest unfinished run of `node`.
    fn has_turn(&self, node: NodeId, seq: u64) -> bool {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .and_then(|q| q.keys().next().copied())
            .is_none_or(|first| first == seq)
    }

    /// Gives the node's turn to its next run.
    fn leave_queue(&self, node: NodeId, seq: u64) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(q) = queues.get_mut(&node) {
            q.remove(&seq);
            if q.is_empty() {
                queues.remove(&node);
            }
        }
        drop(queues);
        self.poke();
    }

    fn spawn(self: &Arc<Self>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(fut));
    }

    fn start_run(self: &Arc<Self>, rec: &journal::RunRecord) {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(rec.node)
            .or_default()
            .insert(rec.seq, rec.run_id.clone());
        let (tx, rx) = watch::channel(rec.control);
        self.controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(rec.run_id.clone(), tx);
        let sh = self.clone();
        let run_id = rec.run_id.clone();
        self.spawn(engine::drive(sh, run_id, rx));
    }

    pub(crate) fn set_override(
        &self,
        node: NodeId,
        f: impl FnOnce(&mut NodeOverrides),
    ) -> Result<(), ExecutorError> {
        let mut map = self
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut o = map.get(&node).cloned().unwrap_or_default();
        f(&mut o);
        self.journal.put_overrides(node, &o)?;
        map.insert(node, o);
        drop(map);
        self.poke();
        Ok(())
    }

    pub(crate) fn update_facts(
        &self,
        node: NodeId,
        f: impl FnOnce(&mut serde_json::Value),
    ) -> Result<serde_json::Value, ExecutorError> {
        let facts = self.journal.update_facts(node, f)?;
        self.poke();
        Ok(facts)
    }
}

/// The executor handle. Cloning shares the executor.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

/// What the boot services observed, on its way from a [`tap`] to the executor.
#[derive(Debug)]
pub struct Observations(mpsc::UnboundedReceiver<EventKind>);

/// Wraps the agent's event sink: everything is forwarded to `inner` unchanged, and check-ins
/// (facts), node-agent log lines (step logs and progress), leases and named node events are
/// also copied to the executor that is opened with the returned [`Observations`]. Give the
/// sink to the boot services as `BootDeps::events`; it can be made before the executor
/// exists (the HTTP server that owns the node action queue is bound first).
pub fn tap(inner: Arc<dyn EventSink>) -> (Arc<dyn EventSink>, Observations) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(observe::Tap { inner, tx }), Observations(rx))
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("db", &self.shared.journal.path())
            .finish_non_exhaustive()
    }
}

fn check_run_id(run_id: &str) -> Result<(), ExecutorError> {
    let bad = |reason| ExecutorError::BadRunId {
        run_id: run_id.chars().take(80).collect(),
        reason,
    };
    if run_id.is_empty() {
        return Err(bad("empty"));
    }
    if run_id.len() > MAX_RUN_ID_LEN {
        return Err(bad("longer than 64 characters"));
    }
    if !run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// Refuses plans the executor cannot run: duplicate step names, `goto` to a missing step.
fn check_plan(run_id: &str, plan: &RunPlan) -> Result<(), ExecutorError> {
    let bad = |step: &str, field, message: String| ExecutorError::BadPlan {
        run_id: run_id.to_owned(),
        step: step.to_owned(),
        field,
        message,
    };
    for (i, s) in plan.steps.iter().enumerate() {
        if plan.steps[..i].iter().any(|o| o.name == s.name) {
            return Err(bad(&s.name, "name", "another step has this name".into()));
        }
        if let OnFailure::Goto(target) = &s.on_failure {
            if plan.step_index(target).is_none() {
                return Err(bad(
                    &s.name,
                    "on_failure",
                    format!("goto {target:?}: no step has this name"),
                ));
            }
        }
    }
    Ok(())
}

impl Executor {
    /// Opens `<data_dir>/runs.redb` and resumes every run that is not over (in submission
    /// order). Must be called inside a tokio runtime.
    pub fn open(
        config: ExecutorConfig,
        hw: ExecutorHardware,
        sink: Arc<dyn RunSink>,
        observations: Observations,
    ) -> Result<Executor, ExecutorError> {
        let journal = journal::Journal::open(&config.data_dir.join(DB_FILE))?;
        let overrides = journal.overrides()?;
        let runs = journal.runs()?;
        let shared = Arc::new(Shared {
            journal,
            config,
            hw,
            sink,
            overrides: RwLock::new(overrides),
            queues: Mutex::default(),
            controls: Mutex::default(),
            changed: watch::Sender::new(0),
            cancel: CancellationToken::new(),
            tasks: Mutex::default(),
            http: reqwest::Client::new(),
        });
        shared.spawn(observe::run(shared.clone(), observations.0));
        for rec in runs.iter().filter(|r| !r.status.state.is_final()) {
            tracing::info!(run = %rec.run_id, node = %rec.node, "resuming run");
            shared.start_run(rec);
        }
        Ok(Executor { shared })
    }

    /// Accepts a run for `node`. Idempotent by `run_id`: the same run again is
    /// [`Submitted::AlreadyKnown`]; the same id with another node or plan is refused.
    pub fn submit(
        &self,
        run_id: &str,
        node: NodeId,
        plan: RunPlan,
    ) -> Result<Submitted, ExecutorError> {
        self.submit_with(run_id, node, plan, Control::Run)
    }

    /// [`Executor::submit`] of a run that starts paused or cancelled when `control` says so
    /// (a run assigned paused never starts a step before its resume). The control of a run
    /// submitted before is left as it is.
    pub fn submit_with(
        &self,
        run_id: &str,
        node: NodeId,
        plan: RunPlan,
        control: Control,
    ) -> Result<Submitted, ExecutorError> {
        check_run_id(run_id)?;
        if self.shared.cancel.is_cancelled() {
            return Err(ExecutorError::ShuttingDown);
        }
        if let Some(existing) = self.shared.journal.run(run_id)? {
            return if existing.node == node && existing.plan == plan {
                Ok(Submitted::AlreadyKnown)
            } else {
                Err(ExecutorError::Conflict {
                    run_id: run_id.to_owned(),
                })
            };
        }
        check_plan(run_id, &plan)?;
        let status = RunStatus::new(&plan);
        let rec = journal::RunRecord {
            run_id: run_id.to_owned(),
            node,
            seq: 0,
            journal: vec![journal::StepJournal::default(); plan.steps.len()],
            plan,
            status,
            control,
            entries: 0,
        };
        let (rec, new) = self.shared.journal.insert_run(rec)?;
        if !new {
            return Ok(Submitted::AlreadyKnown);
        }
        self.shared.sink.emit(vec![RunEvent::Status {
            run: rec.run_id.clone(),
            node,
            status: rec.status.clone(),
        }]);
        self.shared.poke();
        self.shared.start_run(&rec);
        Ok(Submitted::Accepted)
    }

    fn control(&self, run_id: &str, c: Control) -> Result<(), ExecutorError> {
        let rec = self.record(run_id)?;
        if rec.status.state.is_final() {
            return Err(ExecutorError::Finished {
                run_id: run_id.to_owned(),
                state: rec.status.state,
            });
        }
        let tx = self
            .shared
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run_id)
            .cloned();
        let Some(tx) = tx else {
            return Err(ExecutorError::ShuttingDown);
        };
        // Durable before it takes effect: a pause asked during an attempt holds across a
        // restart that comes before the run's task records it.
        self.shared.journal.update_run(run_id, |r| {
            if !r.status.state.is_final() {
                r.control = c;
            }
        })?;
        tx.send_replace(c);
        Ok(())
    }

    /// Cancels a run: the step in flight is stopped (a node action not yet delivered is
    /// withdrawn; one already running on the node runs to its end, its result ignored).
    pub fn cancel(&self, run_id: &str) -> Result<(), ExecutorError> {
        self.control(run_id, Control::Cancel)
    }

    /// Pauses a run before its next attempt (the attempt in flight finishes first).
    pub fn pause(&self, run_id: &str) -> Result<(), ExecutorError> {
        self.control(run_id, Control::Pause)
    }

    /// Resumes a paused run at its current step.
    pub fn resume(&self, run_id: &str) -> Result<(), ExecutorError> {
        self.control(run_id, Control::Run)
    }

    fn record(&self, run_id: &str) -> Result<journal::RunRecord, ExecutorError> {
        self.shared
            .journal
            .run(run_id)?
            .ok_or_else(|| ExecutorError::UnknownRun {
                run_id: run_id.to_owned(),
            })
    }

    /// A run's status.
    pub fn status(&self, run_id: &str) -> Result<RunStatus, ExecutorError> {
        Ok(self.record(run_id)?.status)
    }

    /// Every run: id, node, state, in submission order.
    pub fn runs(&self) -> Result<Vec<(String, NodeId, RunState)>, ExecutorError> {
        Ok(self
            .shared
            .journal
            .runs()?
            .into_iter()
            .map(|r| (r.run_id, r.node, r.status.state))
            .collect())
    }

    /// What was last asked of a run since the executor opened (`None` for a run it does not
    /// drive: unknown, or found over when it opened).
    pub fn requested(&self, run_id: &str) -> Option<Control> {
        self.shared
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run_id)
            .map(|tx| *tx.borrow())
    }

    /// Deletes a finished run with its logs (once the coordinators have recorded its end).
    /// Returns whether it was stored; a run not over is refused.
    pub fn forget(&self, run_id: &str) -> Result<bool, ExecutorError> {
        let Some(rec) = self.shared.journal.run(run_id)? else {
            return Ok(false);
        };
        if !rec.status.state.is_final() {
            return Err(ExecutorError::NotFinished {
                run_id: run_id.to_owned(),
                state: rec.status.state,
            });
        }
        self.shared
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(run_id);
        let steps = u32::try_from(rec.plan.steps.len()).unwrap_or(u32::MAX);
        self.shared.journal.remove_run(run_id, steps)
    }

    /// The kept log lines of one step of a run, oldest first.
    pub fn logs(&self, run_id: &str, step: &str) -> Result<Vec<String>, ExecutorError> {
        let rec = self.record(run_id)?;
        let i = rec
            .plan
            .step_index(step)
            .ok_or_else(|| ExecutorError::BadPlan {
                run_id: run_id.to_owned(),
                step: step.to_owned(),
                field: "name",
                message: "no step has this name".into(),
            })?;
        Ok(self.shared.journal.logs(run_id, step_key(i))?.0)
    }

    /// What `node` should network-boot next according to the executor (`boot.set`,
    /// `os.install`), overriding the desired state's boot target. The agent's
    /// [`crate::boot::BootBackend`] applies it to the `RackNode` it returns.
    pub fn boot_override(&self, node: NodeId) -> Option<BootTarget> {
        self.shared
            .overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .and_then(|o| o.boot.clone())
    }

    /// Forgets the executor's boot override of `node` (once the desired state carries the
    /// same target, or an operator takes over).
    pub fn clear_boot_override(&self, node: NodeId) -> Result<(), ExecutorError> {
        self.shared.set_override(node, |o| o.boot = None)
    }

    /// The address `dhcp.reserve` pinned for `node`: the DHCP server hands it to that MAC.
    pub fn dhcp_pin(&self, node: NodeId) -> Option<DhcpPin> {
        self.shared
            .overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .and_then(|o| o.dhcp.clone())
    }

    /// Applies the executor's overrides to a node as the desired state describes it: the
    /// boot target `boot.set`/`os.install` chose, and the address `dhcp.reserve` pinned (as
    /// the static address of the interface with the pinned MAC, which the DHCP server's
    /// reservation lookup prefers). The agent's [`crate::boot::BootBackend`] calls it on
    /// every node it returns, so DHCP, TFTP and HTTP all see the same answer.
    pub fn apply_overrides(&self, node: &mut RackNode) {
        let o = self
            .shared
            .overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node.id)
            .cloned();
        if let Some(o) = o {
            apply_overrides(node, &o);
        }
    }

    /// The node's facts as the executor knows them (check-ins, captured outputs, webhooks).
    pub fn facts(&self, node: NodeId) -> Result<serde_json::Value, ExecutorError> {
        self.shared.journal.facts(node)
    }

    /// Records a named node event (`os.installed`...) for `node.wait` and `os.install`.
    pub fn report_event(&self, node: NodeId, name: &str) -> Result<(), ExecutorError> {
        observe::record_event(&self.shared, node, name)
    }

    /// A receiver that changes whenever a run's status, a node's facts or an override
    /// changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Stops every run task where it is, without recording anything more (what a crash or
    /// SIGKILL leaves behind is what a restart resumes from), and closes the database once
    /// the last handle is dropped.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        let tasks = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.shared
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// See [`Executor::apply_overrides`].
pub fn apply_overrides(node: &mut RackNode, o: &NodeOverrides) {
    if let Some(b) = &o.boot {
        node.boot_target = b.clone();
    }
    if let Some(pin) = &o.dhcp {
        let name = match node.switch_ports.iter().find(|n| n.mac == Some(pin.mac)) {
            Some(n) => n.name.clone(),
            None => {
                let name = PIN_INTERFACE.to_owned();
                node.switch_ports.push(protocol::domain::ExpectedNic {
                    name: name.clone(),
                    mac: Some(pin.mac),
                    switch: None,
                    port: None,
                });
                name
            }
        };
        let old = node
            .static_ips
            .iter()
            .position(|s| s.interface == name)
            .map(|i| node.static_ips.remove(i));
        node.static_ips.push(protocol::domain::StaticIp {
            interface: name,
            address: pin.address,
            prefix: old.as_ref().map(|s| s.prefix).unwrap_or(24),
            gateway: old.and_then(|s| s.gateway),
        });
    }
}

/// Interface label of a pinned address whose MAC the inventory does not list.
pub const PIN_INTERFACE: &str = "pinned";

/// Step index as the log table's key.
pub(crate) fn step_key(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// A status with every step not reached marked for a finished run.
pub(crate) fn finish_pending(steps: &mut [StepStatus], state: protocol::workflow::StepState) {
    for s in steps {
        if !s.state.is_final() {
            s.state = state;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_to_the_node() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let mut node = RackNode {
            id: "00000000-0000-0000-0000-000000000001".parse().unwrap(),
            serial: "SN1".parse().unwrap(),
            macs: vec![mac],
            boot_target: BootTarget::Discovery,
            static_ips: vec![protocol::domain::StaticIp {
                interface: "eno1".into(),
                address: "10.0.0.9".parse().unwrap(),
                prefix: 26,
                gateway: Some("10.0.0.1".parse().unwrap()),
            }],
            switch_ports: vec![protocol::domain::ExpectedNic {
                name: "eno1".into(),
                mac: Some(mac),
                switch: None,
                port: None,
            }],
            bmc: None,
            revision: 1,
            power: None,
        };
        let o = NodeOverrides {
            boot: Some(BootTarget::Local),
            dhcp: Some(DhcpPin {
                mac,
                address: "10.0.0.20".parse().unwrap(),
            }),
        };
        apply_overrides(&mut node, &o);
        assert_eq!(node.boot_target, BootTarget::Local);
        assert_eq!(node.static_ips.len(), 1);
        assert_eq!(node.static_ips[0].address.to_string(), "10.0.0.20");
        assert_eq!(node.static_ips[0].prefix, 26);
        let other: Mac = "52:54:00:00:00:02".parse().unwrap();
        let o = NodeOverrides {
            boot: None,
            dhcp: Some(DhcpPin {
                mac: other,
                address: "10.0.0.30".parse().unwrap(),
            }),
        };
        apply_overrides(&mut node, &o);
        assert_eq!(node.boot_target, BootTarget::Local);
        assert_eq!(node.switch_ports[1].name, PIN_INTERFACE);
        assert_eq!(node.static_ips[1].address.to_string(), "10.0.0.30");
    }

    #[test]
    fn config_section() {
        let ctx = crate::boot::ConfigCtx {
            base_dir: "/etc/mf".into(),
            data_dir: "/var/lib/mf".into(),
        };
        let t: toml::Table = "playbook_dir = \"pb\"\nmax_log_lines = 50".parse().unwrap();
        let c = ExecutorConfig::from_toml(t, &ctx).unwrap();
        assert_eq!(c.playbook_dir, PathBuf::from("/etc/mf/pb"));
        assert_eq!(c.max_log_lines, 50);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/mf"));
        let t: toml::Table = "max_log_lines = 0".parse().unwrap();
        assert_eq!(
            ExecutorConfig::from_toml(t, &ctx).unwrap_err().key,
            "max_log_lines"
        );
        let t: toml::Table = "playbooks = \"x\"".parse().unwrap();
        assert_eq!(
            ExecutorConfig::from_toml(t, &ctx).unwrap_err().key,
            "playbooks"
        );
    }

    #[test]
    fn run_ids_are_checked() {
        assert!(check_run_id("run-1.a_b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(matches!(
                check_run_id(bad),
                Err(ExecutorError::BadRunId { .. })
            ));
        }
    }
}
