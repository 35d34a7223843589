//! Workflow templates, runs, rollouts and node timelines in the replicated state (issue 6).
//!
//! Everything here is part of the pure [`State::apply`]. The proposer parses, validates and
//! expands templates (YAML and minijinja stay out of apply); a command carries the stored
//! YAML text or the expanded [`RunPlan`]. Run ids and rollout ids come from the revision of
//! the request that made them. A rollout advances inside apply — when it is created or
//! resumed, and whenever one of the runs it waits for ends — so a new leader has nothing to
//! catch up on; the leader-side driver only proposes [`RunsCommand::RolloutTick`] as a
//! safety net for nodes freed by something else.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protocol::domain::{NodeState, Role, UnixMillis};
use protocol::error::ErrorCode;
use protocol::fleet::{Event, EventKind, RunAssignment, RunControl};
use protocol::workflow::{RunPlan, RunState, RunStatus, StepState};
use protocol::{NodeId, ProjectId, RackId, Revision, SiteId, Tag};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tenancy::Caller;
use super::{refuse, refuse_field, Applied, Key, Refusal, State};

/// Log lines kept per step of a run (the newest).
pub const LOG_LINES_PER_STEP: usize = 2000;
/// Timeline entries kept per node (the newest).
pub const TIMELINE_PER_NODE: usize = 1000;

/// Storage kinds (the part of the storage key before the first `/`) of this module's objects.
pub const STORAGE_KINDS: [&str; 5] = ["workflow", "run", "runlog", "timeline", "rollout"];

/// A rollout id: the revision of the request that created it.
pub type RolloutId = u64;

/// One stored version of a workflow template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersion {
    /// Template name.
    pub name: String,
    /// Version (immutable once stored).
    pub version: u32,
    /// The template's description.
    pub description: String,
    /// The YAML text, as it was put.
    pub source: String,
    /// Who stored it.
    pub actor: String,
    /// When.
    pub created_at: UnixMillis,
    /// Revision it was stored at.
    pub revision: Revision,
}

/// A workflow run: one expanded plan for one node, assigned to the agent of its rack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    /// Run id: `<revision>-<n>`.
    pub id: String,
    /// The node.
    #[schema(value_type = String)]
    pub node: NodeId,
    /// The node's rack when the run started (whose agent executes it).
    #[schema(value_type = String)]
    pub rack: RackId,
    /// The node's project when the run started (project members see their own runs).
    #[schema(value_type = Option<String>)]
    pub project: Option<ProjectId>,
    /// Template name.
    pub workflow: String,
    /// Template version.
    pub version: u32,
    /// The expanded plan.
    pub plan: RunPlan,
    /// What the operator wants: run, pause or cancel.
    #[schema(value_type = String)]
    pub control: RunControl,
    /// The latest status the agent reported (all steps pending until it reports).
    pub status: RunStatus,
    /// The rollout that started it.
    pub rollout: Option<RolloutId>,
    /// Who started it.
    pub actor: String,
    /// When.
    pub created_at: UnixMillis,
    /// When its control or status last changed.
    pub updated_at: UnixMillis,
    /// Revision it was created at.
    pub created_revision: Revision,
    /// Revision at which its assignment (control) last changed, or it left the agent's state.
    pub revision: Revision,
    /// Revision at which it left the agent's desired state (its end was recorded).
    pub removed_at: Option<Revision>,
}

impl Run {
    /// Whether the run is over (its final status is recorded).
    pub fn is_final(&self) -> bool {
        self.status.state.is_final()
    }

    /// The assignment the rack agent holds.
    pub fn assignment(&self) -> RunAssignment {
        RunAssignment {
            run_id: self.id.clone(),
            node: self.node,
            plan: self.plan.clone(),
            control: self.control,
            revision: self.revision,
        }
    }

    /// Name of the step being executed (or next), if any.
    pub fn current_step(&self) -> Option<&str> {
        self.status
            .current
            .and_then(|i| self.status.steps.get(i))
            .map(|s| s.name.as_str())
    }
}

/// The newest log lines of one step of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepLogs {
    /// Run id.
    pub run: String,
    /// Step name.
    pub step: String,
    /// The newest lines, oldest first.
    pub lines: VecDeque<String>,
    /// Lines dropped to keep the bound.
    pub dropped: u64,
}

/// What a timeline entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimelineKind {
    /// The node network-booted and checked in.
    CheckIn,
    /// A boot decision of the agent's boot services.
    Boot,
    /// Observed power state.
    Power,
    /// A log line about the node.
    Log,
    /// A run started, was paused, resumed, cancelled, or ended.
    Run,
    /// A step started, succeeded, failed, was skipped or cancelled.
    Step,
    /// Log lines of a step arrived (a summary: consecutive batches are merged).
    StepLog,
    /// A tenancy job (merged in when the timeline is read).
    Job,
}

/// One entry of a node's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// When it happened (the agent's clock for agent events).
    pub at: UnixMillis,
    /// Revision it was recorded at.
    pub revision: Revision,
    /// Rack whose agent reported it.
    #[schema(value_type = Option<String>)]
    pub rack: Option<RackId>,
    /// The agent's event sequence number.
    pub seq: Option<u64>,
    /// What it is about.
    pub kind: TimelineKind,
    /// Run it concerns.
    pub run: Option<String>,
    /// Step it concerns.
    pub step: Option<String>,
    /// Step attempt.
    pub attempt: Option<u32>,
    /// New state (run or step state, power on/off, job state).
    pub state: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// Which nodes a rollout applies to (every given criterion must hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Nodes in racks of this site.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub site: Option<SiteId>,
    /// Nodes in this rack.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub rack: Option<RackId>,
    /// Nodes carrying every one of these tags.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub tags: BTreeSet<Tag>,
    /// Nodes in this lifecycle state.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub state: Option<NodeState>,
    /// Only these nodes (ids; the API resolves serials).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub nodes: Vec<NodeId>,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Starting runs as slots free.
    Running,
    /// Nothing new starts (by an operator, or the failure budget was exceeded); running runs go on.
    Paused,
    /// Every node's run succeeded.
    Succeeded,
    /// Every node's run ended; some failed (within the budget, or after a resume).
    Failed,
    /// Aborted: pending nodes dropped, running runs cancelled.
    Aborted,
}

impl RolloutState {
    /// Whether the rollout is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded | RolloutState::Failed | RolloutState::Aborted
        )
    }
}

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutNode {
    /// Its rack when selected.
    #[schema(value_type = String)]
    pub rack: RackId,
    /// Its run, once started.
    pub run: Option<String>,
    /// Why it will not run (aborted, no rack...).
    pub skipped: Option<String>,
}

/// A workflow applied to a selection of nodes with concurrency limits and a failure budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    /// Id: the revision that created it.
    pub id: RolloutId,
    /// Template name.
    pub workflow: String,
    /// Template version.
    pub version: u32,
    /// The plan every node runs (expanded once: node data is rendered by the agent).
    pub plan: RunPlan,
    /// The selection as asked.
    pub selector: Selector,
    /// Runs in flight at most, overall.
    pub max_in_flight: u32,
    /// Runs in flight at most per rack.
    pub max_per_rack: u32,
    /// Failed runs tolerated; one more pauses the rollout.
    pub failure_budget: u32,
    /// Where it is.
    pub state: RolloutState,
    /// Why it paused or ended, for people.
    pub reason: Option<String>,
    /// Failed runs so far.
    pub failed: u32,
    /// Its nodes.
    #[schema(value_type = Object)]
    pub nodes: BTreeMap<NodeId, RolloutNode>,
    /// Who created it.
    pub actor: String,
    /// When.
    pub created_at: UnixMillis,
    /// When it last changed.
    pub updated_at: UnixMillis,
    /// Revision it last changed at.
    pub revision: Revision,
}

/// The workflow objects of the desired state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Runs {
    /// Stored templates by (name, version).
    pub workflows: BTreeMap<(String, u32), WorkflowVersion>,
    /// Runs by id.
    pub runs: BTreeMap<String, Run>,
    /// Step logs by (run, step).
    pub logs: BTreeMap<(String, String), StepLogs>,
    /// Node timelines, newest last.
    pub timelines: BTreeMap<NodeId, VecDeque<TimelineEntry>>,
    /// Rollouts by id.
    pub rollouts: BTreeMap<RolloutId, Rollout>,
    /// Index: node → its active (not final) run. Derived.
    #[serde(skip)]
    active: BTreeMap<NodeId, String>,
    /// Run ids handed out at `id_rev` so far (ids are `<rev>-<n>`). Not persisted: reset
    /// with every new revision.
    #[serde(skip)]
    id_rev: Revision,
    #[serde(skip)]
    id_next: u32,
}

/// One workflow object, as the storage layer addresses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunsKey {
    /// A template version.
    Workflow(String, u32),
    /// A run.
    Run(String),
    /// A step's logs.
    Log(String, String),
    /// A node's timeline.
    Timeline(NodeId),
    /// A rollout.
    Rollout(RolloutId),
}

impl Runs {
    /// Every stored object's key.
    pub fn keys(&self) -> Vec<RunsKey> {
        let mut keys: Vec<RunsKey> = self
            .workflows
            .keys()
            .map(|(n, v)| RunsKey::Workflow(n.clone(), *v))
            .collect();
        keys.extend(self.runs.keys().cloned().map(RunsKey::Run));
        keys.extend(
            self.logs
                .keys()
                .map(|(r, s)| RunsKey::Log(r.clone(), s.clone())),
        );
        keys.extend(self.timelines.keys().copied().map(RunsKey::Timeline));
        keys.extend(self.rollouts.keys().copied().map(RunsKey::Rollout));
        keys
    }

    /// The object's bytes, or `None` when it no longer exists.
    pub fn encode(&self, key: &RunsKey) -> Result<Option<Vec<u8>>, postcard::Error> {
        fn enc<T: Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, postcard::Error> {
            v.map(postcard::to_stdvec).transpose()
        }
        match key {
            RunsKey::Workflow(n, v) => enc(self.workflows.get(&(n.clone(), *v))),
            RunsKey::Run(id) => enc(self.runs.get(id)),
            RunsKey::Log(r, s) => enc(self.logs.get(&(r.clone(), s.clone()))),
            RunsKey::Timeline(n) => enc(self.timelines.get(n).map(|t| (n, t)).as_ref()),
            RunsKey::Rollout(id) => enc(self.rollouts.get(id)),
        }
    }

    /// Storage key string: `<kind>/<id>`. Step names hold `/` (include prefixes): the run id,
    /// which never does, comes first.
    pub fn storage_key(key: &RunsKey) -> String {
        match key {
            RunsKey::Workflow(n, v) => format!("workflow/{n}/{v:010}"),
            RunsKey::Run(id) => format!("run/{id}"),
            RunsKey::Log(r, s) => format!("runlog/{r}/{s}"),
            RunsKey::Timeline(n) => format!("timeline/{n}"),
            RunsKey::Rollout(id) => format!("rollout/{id:020}"),
        }
    }

    /// Loads one stored object of storage kind `kind` (one of [`STORAGE_KINDS`]).
    pub fn load(&mut self, kind: &str, storage_key: &str, bytes: &[u8]) -> Result<(), String> {
        let err = |e: postcard::Error| format!("{storage_key}: {e}");
        match kind {
            "workflow" => {
                let v: WorkflowVersion = postcard::from_bytes(bytes).map_err(err)?;
                self.workflows.insert((v.name.clone(), v.version), v);
            }
            "run" => {
                let v: Run = postcard::from_bytes(bytes).map_err(err)?;
                self.runs.insert(v.id.clone(), v);
            }
            "runlog" => {
                let v: StepLogs = postcard::from_bytes(bytes).map_err(err)?;
                self.logs.insert((v.run.clone(), v.step.clone()), v);
            }
            "timeline" => {
                let (n, t): (NodeId, VecDeque<TimelineEntry>) =
                    postcard::from_bytes(bytes).map_err(err)?;
                self.timelines.insert(n, t);
            }
            "rollout" => {
                let v: Rollout = postcard::from_bytes(bytes).map_err(err)?;
                self.rollouts.insert(v.id, v);
            }
            other => {
                return Err(format!(
                    "{storage_key}: not a workflow object kind {other:?}"
                ))
            }
        }
        Ok(())
    }

    /// The active (not final) run of `node`.
    pub fn active_run(&self, node: NodeId) -> Option<&Run> {
        self.active.get(&node).and_then(|id| self.runs.get(id))
    }

    /// Stored versions of template `name`, ascending.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = &WorkflowVersion> + '_ {
        let name = name.to_owned();
        self.workflows
            .range((name.clone(), 0)..)
            .take_while(move |((n, _), _)| *n == name)
            .map(|(_, w)| w)
    }

    /// A stored template; `version` `None`: the newest.
    pub fn workflow(&self, name: &str, version: Option<u32>) -> Option<&WorkflowVersion> {
        match version {
            Some(v) => self.workflows.get(&(name.to_owned(), v)),
            None => self.versions(name).last(),
        }
    }

    /// Runs of `rack` still in its agent's desired state, sorted by id.
    pub fn rack_runs<'a>(&'a self, rack: &'a RackId) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs
            .values()
            .filter(move |r| &r.rack == rack && r.removed_at.is_none())
    }

    /// Runs of `rack` whose assignment changed after `since`.
    pub fn rack_runs_since<'a>(
        &'a self,
        rack: &'a RackId,
        since: Revision,
    ) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs
            .values()
            .filter(move |r| &r.rack == rack && r.revision > since)
    }

    /// Per-state counts and each node's run state and current step of a rollout.
    pub fn rollout_progress(&self, r: &Rollout) -> RolloutProgress {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut racks: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        let mut nodes = Vec::new();
        for (id, n) in &r.nodes {
            let run = n.run.as_ref().and_then(|x| self.runs.get(x));
            let state = match (run, &n.skipped) {
                (Some(run), _) => state_name(run.status.state).to_owned(),
                (None, Some(_)) => "skipped".to_owned(),
                (None, None) => "waiting".to_owned(),
            };
            *counts.entry(state.clone()).or_default() += 1;
            *racks
                .entry(n.rack.to_string())
                .or_default()
                .entry(state.clone())
                .or_default() += 1;
            nodes.push(RolloutNodeView {
                node: *id,
                rack: n.rack.clone(),
                run: n.run.clone(),
                state,
                step: run.and_then(|r| r.current_step().map(str::to_owned)),
                message: run
                    .and_then(|r| r.status.message.clone())
                    .or_else(|| n.skipped.clone()),
            });
        }
        RolloutProgress {
            total: u32::try_from(r.nodes.len()).unwrap_or(u32::MAX),
            counts,
            racks,
            nodes,
        }
    }
}

/// A rollout node as progress shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutNodeView {
    /// Node id.
    #[schema(value_type = String)]
    pub node: NodeId,
    /// Its rack.
    #[schema(value_type = String)]
    pub rack: RackId,
    /// Its run.
    pub run: Option<String>,
    /// `waiting`, `skipped`, or the run's state.
    pub state: String,
    /// The run's current step.
    pub step: Option<String>,
    /// Why it failed or was skipped.
    pub message: Option<String>,
}

/// A rollout's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutProgress {
    /// Nodes selected.
    pub total: u32,
    /// Nodes per state (`waiting`, `pending`, `running`, `paused`, `succeeded`, `failed`,
    /// `cancelled`, `skipped`).
    pub counts: BTreeMap<String, u32>,
    /// The same per rack.
    pub racks: BTreeMap<String, BTreeMap<String, u32>>,
    /// Every node.
    pub nodes: Vec<RolloutNodeView>,
}

/// A run's state as text.
pub fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Pending => "pending",
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Succeeded => "succeeded",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
    }
}

fn step_state_name(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Succeeded => "succeeded",
        StepState::Failed => "failed",
        StepState::Skipped => "skipped",
        StepState::Cancelled => "cancelled",
    }
}

/// What an operator does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunAction {
    /// Stop before the next step.
    Pause,
    /// Go on.
    Resume,
    /// Stop for good.
    Cancel,
}

/// What an operator does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutAction {
    /// Start nothing new.
    Pause,
    /// Start runs again; optionally with a new failure budget.
    Resume {
        /// Replaces the failure budget.
        failure_budget: Option<u32>,
    },
    /// Drop waiting nodes and cancel running runs.
    Abort,
}

/// The workflow commands (one [`super::Command::Runs`] each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunsCommand {
    /// Store a template version (validated and checked by the proposer).
    PutWorkflow {
        /// Name.
        name: String,
        /// Version.
        version: u32,
        /// Description.
        description: String,
        /// YAML text.
        source: String,
    },
    /// Delete a template (every version, or one); refused while runs or rollouts use it.
    DeleteWorkflow {
        /// Name.
        name: String,
        /// One version only.
        version: Option<u32>,
    },
    /// Start one run per node with a plan the proposer expanded.
    StartRuns {
        /// Who asks.
        caller: Caller,
        /// The plan (its template and version name the stored template).
        plan: RunPlan,
        /// The nodes, each with no active run.
        nodes: Vec<NodeId>,
    },
    /// Pause, resume or cancel a run.
    ControlRun {
        /// Who asks.
        caller: Caller,
        /// Run id.
        run: String,
        /// What to do.
        action: RunAction,
    },
    /// Create a rollout (the proposer expanded the plan).
    CreateRollout {
        /// The plan.
        plan: RunPlan,
        /// Which nodes.
        selector: Selector,
        /// Runs in flight at most, overall.
        max_in_flight: u32,
        /// Runs in flight at most per rack.
        max_per_rack: u32,
        /// Failed runs tolerated.
        failure_budget: u32,
    },
    /// Pause, resume or abort a rollout.
    ControlRollout {
        /// Which.
        rollout: RolloutId,
        /// What to do.
        action: RolloutAction,
    },
    /// Start what a running rollout may start now (the leader's driver).
    RolloutTick {
        /// Which.
        rollout: RolloutId,
    },
}

impl RunsCommand {
    /// Stable action name for the audit trail.
    pub fn action(&self) -> &'static str {
        match self {
            RunsCommand::PutWorkflow { .. } => "workflow.put",
            RunsCommand::DeleteWorkflow { .. } => "workflow.delete",
            RunsCommand::StartRuns { .. } => "run.start",
            RunsCommand::ControlRun { action, .. } => match action {
                RunAction::Pause => "run.pause",
                RunAction::Resume => "run.resume",
                RunAction::Cancel => "run.cancel",
            },
            RunsCommand::CreateRollout { .. } => "rollout.create",
            RunsCommand::ControlRollout { action, .. } => match action {
                RolloutAction::Pause => "rollout.pause",
                RolloutAction::Resume { .. } => "rollout.resume",
                RolloutAction::Abort => "rollout.abort",
            },
            RunsCommand::RolloutTick { .. } => "rollout.tick",
        }
    }

    /// What the command touches, for the audit trail.
    pub fn target(&self) -> String {
        match self {
            RunsCommand::PutWorkflow { name, version, .. } => format!("{name} v{version}"),
            RunsCommand::DeleteWorkflow { name, version } => match version {
                Some(v) => format!("{name} v{v}"),
                None => name.clone(),
            },
            RunsCommand::StartRuns { plan, nodes, .. } => {
                let nodes = match nodes.as_slice() {
                    [one] => one.to_string(),
                    many => format!("{} nodes", many.len()),
                };
                format!("{} v{} on {nodes}", plan.template, plan.version)
            }
            RunsCommand::ControlRun { run, .. } => run.clone(),
            RunsCommand::CreateRollout { plan, .. } => {
                format!("{} v{}", plan.template, plan.version)
            }
            RunsCommand::ControlRollout { rollout, .. } | RunsCommand::RolloutTick { rollout } => {
                rollout.to_string()
            }
        }
    }
}

fn is_fleet(c: &Caller) -> bool {
    matches!(c.role, Role::Admin | Role::Operator)
}

fn sees(c: &Caller, project: Option<&ProjectId>) -> bool {
    is_fleet(c) || (c.project.is_some() && c.project.as_ref() == project)
}

impl State {
    /// Rebuilds the workflow indexes and the rack change marks runs contribute.
    pub(crate) fn rebuild_runs_indexes(&mut self) {
        self.runs.active = self
            .runs
            .runs
            .values()
            .filter(|r| !r.is_final())
            .map(|r| (r.node, r.id.clone()))
            .collect();
        let marks: Vec<(RackId, Revision)> = self
            .runs
            .runs
            .values()
            .map(|r| (r.rack.clone(), r.revision))
            .collect();
        for (rack, rev) in marks {
            self.touch_rack(&rack, rev);
        }
    }

    fn dirty_r(&mut self, key: RunsKey) {
        self.dirty.insert(Key::Runs(key));
    }

    fn next_run_id(&mut self, rev: Revision) -> String {
        if self.runs.id_rev != rev {
            self.runs.id_rev = rev;
            self.runs.id_next = 0;
        }
        let id = format!("{rev}-{}", self.runs.id_next);
        self.runs.id_next += 1;
        id
    }

    /// Appends to a node's timeline, keeping the newest [`TIMELINE_PER_NODE`].
    /// The stored versions of `root` and of every template it includes (transitively),
    /// parsed again (their text was validated when stored).
    fn workflow_registry(&self, root: &str) -> crate::workflow::TemplateRegistry {
        let mut reg = crate::workflow::TemplateRegistry::new();
        let mut todo = vec![root.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let range = (name.clone(), 0)..=(name.clone(), u32::MAX);
            for w in self.runs.workflows.range(range).map(|(_, w)| w) {
                if let Ok(t) = crate::workflow::Template::parse(&w.name, &w.source) {
                    todo.extend(t.includes.iter().map(|i| i.template.clone()));
                    // Versions are immutable: a second insert of the same text is a no-op.
                    let _ = reg.insert(t);
                }
            }
        }
        reg
    }

    /// Moves the node of run `id` along the `lifecycle:` of the templates whose steps the
    /// status just entered, completed or failed in (compared with `old`). Only transitions
    /// the lifecycle allows are made; others are noted in the node's timeline.
    fn follow_lifecycle(&mut self, id: &str, old: &RunStatus, rev: Revision, at: UnixMillis) {
        let Some(r) = self.runs.runs.get(id) else {
            return;
        };
        // Most reports only carry progress or logs: templates are parsed only when a step or
        // the run changed state.
        let same = |a: &RunStatus, b: &RunStatus| {
            a.state == b.state
                && a.steps.len() == b.steps.len()
                && a.steps
                    .iter()
                    .zip(&b.steps)
                    .all(|(x, y)| x.state == y.state)
        };
        if same(old, &r.status) {
            return;
        }
        let reg = self.workflow_registry(&r.workflow);
        let (phases, total) = crate::workflow::phases(&reg, &r.workflow, Some(r.version));
        // A plan laid out differently (an include changed since) has no reliable phases.
        if phases.is_empty() || total != r.status.steps.len() || old.steps.len() != total {
            return;
        }
        let new = &r.status;
        let pending = |st: &RunStatus, i: usize| st.steps[i].state == StepState::Pending;
        let done = |st: &RunStatus, i: usize| {
            matches!(st.steps[i].state, StepState::Succeeded | StepState::Skipped)
        };
        // (step index, order at that step, tie-break, state, why)
        let mut moves: Vec<(usize, u8, usize, NodeState, String)> = Vec::new();
        for p in &phases {
            let span = p.last - p.first;
            let entered = |st: &RunStatus| (p.first..=p.last).find(|&i| !pending(st, i));
            if let (Some(to), None, Some(i)) = (p.lifecycle.running, entered(old), entered(new)) {
                let why = format!("run {id} entered step {}", new.steps[i].name);
                // Outer templates first where two start at the same step.
                moves.push((i, 0, usize::MAX - span, to, why));
            }
            if let Some(to) = p.lifecycle.succeeded {
                if !done(old, p.last) && done(new, p.last) {
                    let why = format!("run {id} completed step {}", new.steps[p.last].name);
                    moves.push((p.last, 1, span, to, why));
                }
            }
        }
        if new.state == RunState::Failed && old.state != RunState::Failed {
            let at_step = new
                .steps
                .iter()
                .position(|s| s.state == StepState::Failed)
                .or(new.current);
            let innermost = at_step.and_then(|i| {
                phases
                    .iter()
                    .filter(|p| p.first <= i && i <= p.last)
                    .filter_map(|p| Some((p.last - p.first, p.lifecycle.failed?)))
                    .min_by_key(|(span, _)| *span)
                    .map(|(_, to)| (i, to))
            });
            if let Some((i, to)) = innermost {
                let why = format!("run {id} failed in step {}", new.steps[i].name);
                moves.push((i, 2, 0, to, why));
            }
        }
        moves.sort_by_key(|m| (m.0, m.1, m.2));
        let (node, rack, run) = (r.node, r.rack.clone(), r.id.clone());
        for (_, _, _, to, why) in moves {
            let Some(n) = self.nodes.get_mut(&node) else {
                return;
            };
            let from = n.state;
            if from == to {
                continue;
            }
            let (message, state) = if from.can_become(to) {
                n.state = to;
                self.dirty.insert(Key::Node(node));
                (
                    format!("node {} → {} ({why})", from.as_str(), to.as_str()),
                    Some(to.as_str().to_owned()),
                )
            } else {
                (
                    format!(
                        "node stays {}: the lifecycle does not allow {} → {} ({why})",
                        from.as_str(),
                        from.as_str(),
                        to.as_str()
                    ),
                    None,
                )
            };
            self.timeline_push(
                node,
                TimelineEntry {
                    at,
                    revision: rev,
                    rack: Some(rack.clone()),
                    seq: None,
                    kind: TimelineKind::Run,
                    run: Some(run.clone()),
                    step: None,
                    attempt: None,
                    state,
                    message,
                },
            );
        }
    }

    pub(crate) fn timeline_push(&mut self, node: NodeId, entry: TimelineEntry) {
        let t = self.runs.timelines.entry(node).or_default();
        // Consecutive log batches of one step are one entry: logs must not push the rest out.
        if entry.kind == TimelineKind::StepLog {
            if let Some(last) = t.back_mut() {
                if last.kind == TimelineKind::StepLog
                    && last.run == entry.run
                    && last.step == entry.step
                {
                    *last = entry;
                    self.dirty_r(RunsKey::Timeline(node));
                    return;
                }
            }
        }
        t.push_back(entry);
        while t.len() > TIMELINE_PER_NODE {
            t.pop_front();
        }
        self.dirty_r(RunsKey::Timeline(node));
    }

    fn run_note(&mut self, run: &Run, rev: Revision, at: UnixMillis, message: String) {
        self.timeline_push(
            run.node,
            TimelineEntry {
                at,
                revision: rev,
                rack: None,
                seq: None,
                kind: TimelineKind::Run,
                run: Some(run.id.clone()),
                step: None,
                attempt: None,
                state: Some(state_name(run.status.state).to_owned()),
                message,
            },
        );
    }

    pub(crate) fn apply_runs(
        &mut self,
        rev: Revision,
        at: UnixMillis,
        actor: &str,
        cmd: &RunsCommand,
    ) -> Result<Applied, Refusal> {
        match cmd {
            RunsCommand::PutWorkflow {
                name,
                version,
                description,
                source,
            } => {
                if let Some(old) = self.runs.workflows.get(&(name.clone(), *version)) {
                    if &old.source == source {
                        return Ok(Applied::Done);
                    }
                    return Err(refuse_field(
                        ErrorCode::Conflict,
                        "version",
                        format!("workflow {name} version {version} is already stored with different content; publish a new version"),
                    ));
                }
                self.runs.workflows.insert(
                    (name.clone(), *version),
                    WorkflowVersion {
                        name: name.clone(),
                        version: *version,
                        description: description.clone(),
                        source: source.clone(),
                        actor: actor.to_owned(),
                        created_at: at,
                        revision: rev,
                    },
                );
                self.dirty_r(RunsKey::Workflow(name.clone(), *version));
                Ok(Applied::Done)
            }
            RunsCommand::DeleteWorkflow { name, version } => {
                let doomed: Vec<u32> = self
                    .runs
                    .versions(name)
                    .map(|w| w.version)
                    .filter(|v| version.is_none_or(|x| x == *v))
                    .collect();
                if doomed.is_empty() {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("workflow {name} does not exist"),
                    ));
                }
                let uses = |w: &str, v: u32| w == name && doomed.contains(&v);
                if let Some(r) = self
                    .runs
                    .runs
                    .values()
                    .find(|r| !r.is_final() && uses(&r.workflow, r.version))
                {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("run {} of node {} uses workflow {name}", r.id, r.node),
                    ));
                }
                if let Some(r) = self
                    .runs
                    .rollouts
                    .values()
                    .find(|r| !r.state.is_final() && uses(&r.workflow, r.version))
                {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("rollout {} uses workflow {name}", r.id),
                    ));
                }
                for v in doomed {
                    self.runs.workflows.remove(&(name.clone(), v));
                    self.dirty_r(RunsKey::Workflow(name.clone(), v));
                }
                Ok(Applied::Done)
            }
            RunsCommand::StartRuns {
                caller,
                plan,
                nodes,
            } => {
                self.stored_plan(plan)?;
                if nodes.is_empty() {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "nodes",
                        "name at least one node",
                    ));
                }
                // Check every node before starting any: all or nothing.
                let mut seen = BTreeSet::new();
                for (i, id) in nodes.iter().enumerate() {
                    let field = format!("nodes[{i}]");
                    if !seen.insert(*id) {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            &field,
                            format!("node {id} appears twice"),
                        ));
                    }
                    let node = self
                        .nodes
                        .get(id)
                        .filter(|n| sees(caller, n.project.as_ref()))
                        .ok_or_else(|| {
                            refuse_field(
                                ErrorCode::NotFound,
                                &field,
                                format!("node {id} does not exist"),
                            )
                        })?;
                    self.runnable(node.id, &field)?;
                }
                for id in nodes {
                    self.start_run(rev, at, actor, *id, plan.clone(), None);
                }
                Ok(Applied::Done)
            }
            RunsCommand::ControlRun {
                caller,
                run,
                action,
            } => {
                let r = self
                    .runs
                    .runs
                    .get(run)
                    .filter(|r| sees(caller, r.project.as_ref()))
                    .ok_or_else(|| {
                        refuse_field(
                            ErrorCode::NotFound,
                            "run",
                            format!("run {run} does not exist"),
                        )
                    })?;
                if r.is_final() {
                    return Err(refuse(
                        ErrorCode::InvalidTransition,
                        format!("run {run} is already {}", state_name(r.status.state)),
                    ));
                }
                let control = match (action, r.control) {
                    (_, RunControl::Cancel) => {
                        return Err(refuse(
                            ErrorCode::InvalidTransition,
                            format!("run {run} is being cancelled"),
                        ))
                    }
                    (RunAction::Pause, RunControl::Pause)
                    | (RunAction::Resume, RunControl::Run) => return Ok(Applied::Done),
                    (RunAction::Pause, _) => RunControl::Pause,
                    (RunAction::Resume, _) => RunControl::Run,
                    (RunAction::Cancel, _) => RunControl::Cancel,
                };
                self.set_control(run, control, rev, at);
                Ok(Applied::Done)
            }
            RunsCommand::CreateRollout {
                plan,
                selector,
                max_in_flight,
                max_per_rack,
                failure_budget,
            } => {
                self.stored_plan(plan)?;
                if *max_in_flight == 0 {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "max_in_flight",
                        "must be 1 or more",
                    ));
                }
                if *max_per_rack == 0 {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "max_per_rack",
                        "must be 1 or more",
                    ));
                }
                for (i, n) in selector.nodes.iter().enumerate() {
                    if !self.nodes.contains_key(n) {
                        return Err(refuse_field(
                            ErrorCode::NotFound,
                            &format!("selector.nodes[{i}]"),
                            format!("node {n} does not exist"),
                        ));
                    }
                }
                // Nodes in no rack have no agent to run them: a selector cannot pick them.
                let nodes: BTreeMap<NodeId, RolloutNode> = self
                    .nodes
                    .values()
                    .filter(|n| self.selected(selector, n))
                    .filter_map(|n| {
                        let rack = n.rack.clone()?;
                        Some((
                            n.id,
                            RolloutNode {
                                rack,
                                run: None,
                                skipped: None,
                            },
                        ))
                    })
                    .collect();
                if nodes.is_empty() {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "selector",
                        "selects no node",
                    ));
                }
                self.runs.rollouts.insert(
                    rev,
                    Rollout {
                        id: rev,
                        workflow: plan.template.clone(),
                        version: plan.version,
                        plan: plan.clone(),
                        selector: selector.clone(),
                        max_in_flight: *max_in_flight,
                        max_per_rack: *max_per_rack,
                        failure_budget: *failure_budget,
                        state: RolloutState::Running,
                        reason: None,
                        failed: 0,
                        nodes,
                        actor: actor.to_owned(),
                        created_at: at,
                        updated_at: at,
                        revision: rev,
                    },
                );
                self.dirty_r(RunsKey::Rollout(rev));
                self.advance_rollout(rev, rev, at);
                Ok(Applied::Done)
            }
            RunsCommand::ControlRollout { rollout, action } => {
                let r = self.runs.rollouts.get(rollout).ok_or_else(|| {
                    refuse_field(
                        ErrorCode::NotFound,
                        "rollout",
                        format!("rollout {rollout} does not exist"),
                    )
                })?;
                if r.state.is_final() {
                    return Err(refuse(
                        ErrorCode::InvalidTransition,
                        format!("rollout {rollout} is over ({:?})", r.state),
                    ));
                }
                let id = *rollout;
                match action {
                    RolloutAction::Pause => self.update_rollout(id, rev, at, |r| {
                        r.state = RolloutState::Paused;
                        r.reason = Some(format!("paused by {actor}"));
                    }),
                    RolloutAction::Resume { failure_budget } => {
                        self.update_rollout(id, rev, at, |r| {
                            r.state = RolloutState::Running;
                            r.reason = None;
                            if let Some(b) = failure_budget {
                                r.failure_budget = *b;
                            }
                        });
                        self.advance_rollout(id, rev, at);
                    }
                    RolloutAction::Abort => {
                        let mut cancel = Vec::new();
                        self.update_rollout(id, rev, at, |r| {
                            r.state = RolloutState::Aborted;
                            r.reason = Some(format!("aborted by {actor}"));
                            for n in r.nodes.values_mut() {
                                match &n.run {
                                    Some(run) => cancel.push(run.clone()),
                                    None if n.skipped.is_none() => {
                                        n.skipped = Some("rollout aborted".to_owned())
                                    }
                                    None => {}
                                }
                            }
                        });
                        for run in cancel {
                            let live =
                                self.runs.runs.get(&run).is_some_and(|r| {
                                    !r.is_final() && r.control != RunControl::Cancel
                                });
                            if live {
                                self.set_control(&run, RunControl::Cancel, rev, at);
                            }
                        }
                    }
                }
                Ok(Applied::Done)
            }
            RunsCommand::RolloutTick { rollout } => {
                let running = self
                    .runs
                    .rollouts
                    .get(rollout)
                    .is_some_and(|r| r.state == RolloutState::Running);
                if !running {
                    return Err(refuse(
                        ErrorCode::InvalidTransition,
                        format!("rollout {rollout} is not running"),
                    ));
                }
                if self.advance_rollout(*rollout, rev, at) == 0 {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("rollout {rollout} has nothing to start now"),
                    ));
                }
                Ok(Applied::Done)
            }
        }
    }

    /// The plan's template must still be stored (a delete may have raced the expansion).
    fn stored_plan(&self, plan: &RunPlan) -> Result<(), Refusal> {
        if self
            .runs
            .workflows
            .contains_key(&(plan.template.clone(), plan.version))
        {
            Ok(())
        } else {
            Err(refuse_field(
                ErrorCode::NotFound,
                "workflow",
                format!(
                    "workflow {} version {} does not exist",
                    plan.template, plan.version
                ),
            ))
        }
    }

    /// Whether a run may start on `node` now.
    fn runnable(&self, node: NodeId, field: &str) -> Result<(), Refusal> {
        let Some(n) = self.nodes.get(&node) else {
            return Err(refuse_field(
                ErrorCode::NotFound,
                field,
                format!("node {node} does not exist"),
            ));
        };
        if n.rack.is_none() {
            return Err(refuse_field(
                ErrorCode::Conflict,
                field,
                format!("node {} is in no rack: no agent can run it", n.serial),
            ));
        }
        if n.state == NodeState::Retired {
            return Err(refuse_field(
                ErrorCode::Conflict,
                field,
                format!("node {} is retired", n.serial),
            ));
        }
        if let Some(r) = self.runs.active_run(node) {
            return Err(refuse_field(
                ErrorCode::Conflict,
                field,
                format!("node {} already has an active run {}", n.serial, r.id),
            ));
        }
        Ok(())
    }

    fn start_run(
        &mut self,
        rev: Revision,
        at: UnixMillis,
        actor: &str,
        node: NodeId,
        plan: RunPlan,
        rollout: Option<RolloutId>,
    ) -> Option<String> {
        let n = self.nodes.get(&node)?;
        let rack = n.rack.clone()?;
        let project = n.project.clone();
        let id = self.next_run_id(rev);
        let run = Run {
            id: id.clone(),
            node,
            rack: rack.clone(),
            project,
            workflow: plan.template.clone(),
            version: plan.version,
            status: RunStatus::new(&plan),
            plan,
            control: RunControl::Run,
            rollout,
            actor: actor.to_owned(),
            created_at: at,
            updated_at: at,
            created_revision: rev,
            revision: rev,
            removed_at: None,
        };
        let msg = match rollout {
            Some(r) => format!(
                "run {id} of {} v{} started by rollout {r}",
                run.workflow, run.version
            ),
            None => format!(
                "run {id} of {} v{} started by {actor}",
                run.workflow, run.version
            ),
        };
        self.run_note(&run, rev, at, msg);
        self.runs.runs.insert(id.clone(), run);
        self.runs.active.insert(node, id.clone());
        self.dirty_r(RunsKey::Run(id.clone()));
        self.touch_rack(&rack, rev);
        Some(id)
    }

    fn set_control(&mut self, run: &str, control: RunControl, rev: Revision, at: UnixMillis) {
        let Some(r) = self.runs.runs.get_mut(run) else {
            return;
        };
        r.control = control;
        r.revision = rev;
        r.updated_at = at;
        let r = r.clone();
        self.dirty_r(RunsKey::Run(r.id.clone()));
        self.touch_rack(&r.rack, rev);
        let what = match control {
            RunControl::Run => "resumed",
            RunControl::Pause => "pause asked",
            RunControl::Cancel => "cancel asked",
        };
        let actor = self.tenancy.actor_now.clone();
        self.run_note(&r, rev, at, format!("run {}: {what} by {actor}", r.id));
    }

    fn update_rollout(
        &mut self,
        id: RolloutId,
        rev: Revision,
        at: UnixMillis,
        f: impl FnOnce(&mut Rollout),
    ) {
        if let Some(r) = self.runs.rollouts.get_mut(&id) {
            f(r);
            r.revision = rev;
            r.updated_at = at;
            self.dirty_r(RunsKey::Rollout(id));
        }
    }

    fn selected(&self, sel: &Selector, n: &protocol::domain::Node) -> bool {
        if !sel.nodes.is_empty() && !sel.nodes.contains(&n.id) {
            return false;
        }
        if sel.rack.is_some() && n.rack != sel.rack {
            return false;
        }
        if let Some(site) = &sel.site {
            let in_site = n
                .rack
                .as_ref()
                .and_then(|r| self.racks.get(r))
                .is_some_and(|r| &r.site == site);
            if !in_site {
                return false;
            }
        }
        if sel.state.is_some_and(|s| s != n.state) {
            return false;
        }
        sel.tags.is_subset(&n.tags)
    }

    /// The nodes rollout `id` may start now within its limits (none unless it is running).
    pub fn rollout_choices(&self, id: RolloutId) -> Vec<NodeId> {
        let Some(r) = self.runs.rollouts.get(&id) else {
            return Vec::new();
        };
        if r.state != RolloutState::Running {
            return Vec::new();
        }
        let mut in_flight = 0u32;
        let mut per_rack: BTreeMap<RackId, u32> = BTreeMap::new();
        let mut waiting = Vec::new();
        for (node, n) in &r.nodes {
            match n.run.as_ref().and_then(|x| self.runs.runs.get(x)) {
                Some(run) if !run.is_final() => {
                    in_flight += 1;
                    *per_rack.entry(n.rack.clone()).or_default() += 1;
                }
                Some(_) => {}
                None if n.skipped.is_none() => waiting.push((*node, n.rack.clone())),
                None => {}
            }
        }
        let mut chosen = Vec::new();
        for (node, rack) in waiting {
            if in_flight >= r.max_in_flight {
                break;
            }
            let slot = per_rack.entry(rack).or_default();
            // A node busy with another run waits: never two runs on a node.
            if *slot >= r.max_per_rack || self.runnable(node, "node").is_err() {
                continue;
            }
            *slot += 1;
            in_flight += 1;
            chosen.push(node);
        }
        chosen
    }

    /// Starts what rollout `id` may start now within its limits, and ends it when every node
    /// is done. Returns how many runs it started.
    fn advance_rollout(&mut self, id: RolloutId, rev: Revision, at: UnixMillis) -> usize {
        let chosen = self.rollout_choices(id);
        let mut started = 0;
        if let Some(plan) = self.runs.rollouts.get(&id).map(|r| r.plan.clone()) {
            for node in chosen {
                if let Some(run) = self.start_run(rev, at, "rollout", node, plan.clone(), Some(id))
                {
                    started += 1;
                    self.update_rollout(id, rev, at, |r| {
                        if let Some(n) = r.nodes.get_mut(&node) {
                            n.run = Some(run);
                        }
                    });
                }
            }
        }
        self.finish_rollout_if_done(id, rev, at);
        started
    }

    fn finish_rollout_if_done(&mut self, id: RolloutId, rev: Revision, at: UnixMillis) {
        let Some(r) = self.runs.rollouts.get(&id) else {
            return;
        };
        if r.state.is_final() {
            return;
        }
        let done = r.nodes.values().all(|n| match &n.run {
            Some(run) => self.runs.runs.get(run).is_none_or(Run::is_final),
            None => n.skipped.is_some(),
        });
        if done {
            self.update_rollout(id, rev, at, |r| {
                if r.failed == 0 {
                    r.state = RolloutState::Succeeded;
                    r.reason = None;
                } else {
                    r.state = RolloutState::Failed;
                    r.reason = Some(format!("{} run(s) failed", r.failed));
                }
            });
        }
    }

    /// A run of a rollout ended: count a failure, pause on an exceeded budget, start more.
    fn rollout_run_ended(&mut self, id: RolloutId, failed: bool, rev: Revision, at: UnixMillis) {
        if failed {
            self.update_rollout(id, rev, at, |r| {
                r.failed += 1;
                if r.failed > r.failure_budget && r.state == RolloutState::Running {
                    r.state = RolloutState::Paused;
                    r.reason = Some(format!(
                        "failure budget exceeded: {} failed run(s), budget {}",
                        r.failed, r.failure_budget
                    ));
                }
            });
        }
        self.advance_rollout(id, rev, at);
    }

    /// Agent events about runs: [`EventKind::RunStatus`] and [`EventKind::StepLog`].
    pub(crate) fn apply_run_event(&mut self, rack: &RackId, rev: Revision, e: &Event) {
        match &e.kind {
            EventKind::RunStatus { run, node, status } => {
                let Some(r) = self.runs.runs.get(run) else {
                    return;
                };
                // An agent speaks only for runs it was given; an ended run stays ended.
                if &r.rack != rack || &r.node != node || r.is_final() {
                    return;
                }
                let old = r.status.clone();
                let mut notes = Vec::new();
                for s in &status.steps {
                    let before = old.step(&s.name);
                    let changed =
                        before.is_none_or(|b| b.state != s.state || b.attempts != s.attempts);
                    if !changed || s.state == StepState::Pending {
                        continue;
                    }
                    let mut message = format!("step {} {}", s.name, step_state_name(s.state));
                    if s.attempts > 1 {
                        message.push_str(&format!(" (attempt {})", s.attempts));
                    }
                    if let Some(m) = &s.message {
                        message.push_str(&format!(": {m}"));
                    }
                    notes.push(TimelineEntry {
                        at: s
                            .finished_at
                            .filter(|_| s.state.is_final())
                            .or(s.started_at)
                            .unwrap_or(e.at),
                        revision: rev,
                        rack: Some(rack.clone()),
                        seq: Some(e.seq),
                        kind: TimelineKind::Step,
                        run: Some(run.clone()),
                        step: Some(s.name.clone()),
                        attempt: Some(s.attempts),
                        state: Some(step_state_name(s.state).to_owned()),
                        message,
                    });
                }
                if old.state != status.state {
                    let mut message = format!("run {run} {}", state_name(status.state));
                    if let Some(m) = &status.message {
                        message.push_str(&format!(": {m}"));
                    }
                    notes.push(TimelineEntry {
                        at: e.at,
                        revision: rev,
                        rack: Some(rack.clone()),
                        seq: Some(e.seq),
                        kind: TimelineKind::Run,
                        run: Some(run.clone()),
                        step: None,
                        attempt: None,
                        state: Some(state_name(status.state).to_owned()),
                        message,
                    });
                }
                for n in notes {
                    self.timeline_push(*node, n);
                }
                let Some(r) = self.runs.runs.get_mut(run) else {
                    return;
                };
                r.status = status.clone();
                r.updated_at = e.at;
                let ended = status.state.is_final();
                if ended {
                    // Recorded: the agent may forget it.
                    r.removed_at = Some(rev);
                    r.revision = rev;
                }
                let (rollout, id) = (r.rollout, r.id.clone());
                self.dirty_r(RunsKey::Run(id.clone()));
                self.follow_lifecycle(&id, &old, rev, e.at);
                if ended {
                    self.touch_rack(rack, rev);
                    if self.runs.active.get(node) == Some(&id) {
                        self.runs.active.remove(node);
                    }
                    if let Some(ro) = rollout {
                        self.rollout_run_ended(ro, status.state == RunState::Failed, rev, e.at);
                    }
                    // The node is free: rollouts that skipped it for this run may start it.
                    let others: Vec<RolloutId> = self
                        .runs
                        .rollouts
                        .values()
                        .filter(|x| x.state == RolloutState::Running && Some(x.id) != rollout)
                        .filter(|x| x.nodes.get(node).is_some_and(|n| n.run.is_none()))
                        .map(|x| x.id)
                        .collect();
                    for o in others {
                        self.advance_rollout(o, rev, e.at);
                    }
                }
            }
            EventKind::StepLog {
                run,
                node,
                step,
                lines,
            } => {
                let known = self
                    .runs
                    .runs
                    .get(run)
                    .is_some_and(|r| &r.rack == rack && &r.node == node);
                if !known || lines.is_empty() {
                    return;
                }
                let key = (run.clone(), step.clone());
                let buf = self.runs.logs.entry(key).or_insert_with(|| StepLogs {
                    run: run.clone(),
                    step: step.clone(),
                    ..StepLogs::default()
                });
                buf.lines.extend(lines.iter().cloned());
                while buf.lines.len() > LOG_LINES_PER_STEP {
                    buf.lines.pop_front();
                    buf.dropped += 1;
                }
                let total = buf.lines.len() as u64 + buf.dropped;
                self.dirty_r(RunsKey::Log(run.clone(), step.clone()));
                let last = lines.last().cloned().unwrap_or_default();
                self.timeline_push(
                    *node,
                    TimelineEntry {
                        at: e.at,
                        revision: rev,
                        rack: Some(rack.clone()),
                        seq: Some(e.seq),
                        kind: TimelineKind::StepLog,
                        run: Some(run.clone()),
                        step: Some(step.clone()),
                        attempt: None,
                        state: None,
                        message: format!("{total} log line(s); last: {last}"),
                    },
                );
            }
            _ => {}
        }
    }

    /// Check-ins, boot decisions, power and log events in the node timeline.
    pub(crate) fn note_event(&mut self, rack: &RackId, rev: Revision, e: &Event) {
        let (node, kind, state, message) = match &e.kind {
            EventKind::CheckIn { serial, macs, .. } => {
                let Some(n) = self.node_by_serial(serial) else {
                    return;
                };
                let macs: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
                (
                    n.id,
                    TimelineKind::CheckIn,
                    None,
                    format!("checked in as {serial} ({})", macs.join(", ")),
                )
            }
            EventKind::Boot {
                node: Some(node),
                detail,
                mac,
            } => (*node, TimelineKind::Boot, None, format!("{mac}: {detail}")),
            EventKind::Power { node, on } => (
                *node,
                TimelineKind::Power,
                Some(if *on { "on" } else { "off" }.to_owned()),
                format!("power {}", if *on { "on" } else { "off" }),
            ),
            EventKind::Log { node, message } => (*node, TimelineKind::Log, None, message.clone()),
            _ => return,
        };
        // An agent speaks only for its own rack's nodes.
        if self.nodes.get(&node).and_then(|n| n.rack.as_ref()) != Some(rack) {
            return;
        }
        self.timeline_push(
            node,
            TimelineEntry {
                at: e.at,
                revision: rev,
                rack: Some(rack.clone()),
                seq: Some(e.seq),
                kind,
                run: None,
                step: None,
                attempt: None,
                state,
                message,
            },
        );
    }
}
