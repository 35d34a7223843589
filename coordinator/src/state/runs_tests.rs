//! Unit tests of workflows, runs, rollouts and node timelines in `State::apply`, without
//! Raft: agent reports go through `Command::AgentEvents` of enrolled racks, as the fleet link
//! delivers them; plans are expanded from real templates as the API does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::str::FromStr;

use protocol::domain::{EnrollToken, Project, Rack, Role, Site, UnixMillis};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{Delta, Event, EventKind, RunControl};
use protocol::workflow::{RunPlan, RunState, RunStatus, StepState};
use protocol::{NodeId, RackId, Revision};
use uuid::Uuid;

use super::runs::{
    RolloutAction, RolloutState, RunAction, RunsCommand as R, Selector, TimelineKind,
    LOG_LINES_PER_STEP, TIMELINE_PER_NODE,
};
use super::tenancy::{Caller, TenancyCommand};
use super::{Applied, Command, Request, Response, State};
use crate::workflow::{Template, TemplateRegistry};

const T0: UnixMillis = 1_700_000_000_000;

const BURN: &str = "apiVersion: metalfleet/v1
kind: Workflow
name: burn
version: 1
steps:
  - name: power-on
    kind: bmc.power
    with: { action: on }
  - name: stress
    kind: node.run
    with: { command: stress-ng }
";

fn id<T: FromStr>(s: &str) -> T
where
    T::Err: Debug,
{
    s.parse().unwrap()
}

fn node_id(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

fn fleet() -> Caller {
    Caller {
        role: Role::Operator,
        project: None,
    }
}

fn plan() -> RunPlan {
    let mut reg = TemplateRegistry::new();
    reg.insert(Template::parse("burn", BURN).unwrap()).unwrap();
    reg.expand("burn", None, &BTreeMap::new()).unwrap()
}

/// Site `ams1`, racks `r1`, `r2` (both with enrolled agents), project `a`; nodes 1..=4 in
/// `r1`, 5..=8 in `r2`, node 9 in no rack; node 1 belongs to project `a`; template `burn` v1.
struct Lab {
    state: State,
    rev: Revision,
    seq: BTreeMap<String, u64>,
    now: UnixMillis,
}

impl Lab {
    fn new() -> Lab {
        let mut lab = Lab {
            state: State::default(),
            rev: 0,
            seq: BTreeMap::new(),
            now: T0,
        };
        lab.ok(Command::PutSite(Site {
            name: id("ams1"),
            description: String::new(),
        }));
        lab.ok(Command::PutProject(Project {
            name: id("a"),
            description: String::new(),
        }));
        for r in ["r1", "r2"] {
            lab.ok(Command::PutRack(Rack {
                name: id(r),
                site: id("ams1"),
                description: String::new(),
            }));
            lab.ok(Command::CreateEnrollToken(EnrollToken {
                rack: id(r),
                hash: format!("h{r}"),
                expires_at: T0 + 3_600_000,
                used_at: None,
            }));
            lab.ok(Command::Enroll {
                rack: id(r),
                token_hash: format!("h{r}"),
                fingerprint: format!("fp{r}"),
                not_after: T0 + 3_600_000_000,
            });
        }
        for n in 1..=9u8 {
            let rack = match n {
                1..=4 => Some(id("r1")),
                5..=8 => Some(id("r2")),
                _ => None,
            };
            lab.ok(Command::RegisterNode {
                id: node_id(n.into()),
                serial: id(&format!("S{n}")),
                rack,
                macs: Vec::new(),
            });
        }
        lab.ok(Command::Tenancy(TenancyCommand::AllocateNode {
            caller: fleet(),
            node: node_id(1),
            project: id("a"),
        }));
        lab.ok(put_burn());
        lab
    }

    fn apply(&mut self, command: Command) -> Response {
        self.rev += 1;
        self.now += 1000;
        self.state.apply(
            self.rev,
            &Request {
                actor: "user:tester".into(),
                at: self.now,
                request_id: None,
                command,
            },
        )
    }

    #[track_caller]
    fn ok(&mut self, command: Command) -> Applied {
        match self.apply(command).result {
            Ok(a) => a,
            Err(e) => panic!("expected success, got {e}"),
        }
    }

    /// A command that must be refused without changing runs or nodes.
    #[track_caller]
    fn refused(&mut self, cmd: R) -> ErrorBody {
        let before = self.state.runs.clone();
        let resp = self.apply(Command::Runs(cmd));
        let err = resp.result.expect_err("expected a refusal");
        assert_eq!(self.state.runs, before, "a refusal changed workflow state");
        assert!(self.state.audit[&self.rev].outcome.starts_with("refused"));
        err
    }

    /// Starts runs of `burn` on `nodes` as `caller`; returns their ids.
    #[track_caller]
    fn start(&mut self, caller: Caller, nodes: &[u128]) -> Vec<String> {
        self.ok(Command::Runs(R::StartRuns {
            caller,
            plan: plan(),
            nodes: nodes.iter().map(|n| node_id(*n)).collect(),
        }));
        (0..nodes.len())
            .map(|i| format!("{}-{i}", self.rev))
            .collect()
    }

    fn event(&mut self, rack: &str, kind: EventKind) {
        let seq = self.seq.entry(rack.to_owned()).or_default();
        *seq += 1;
        let e = Event {
            seq: *seq,
            at: self.now,
            kind,
        };
        self.ok(Command::AgentEvents {
            rack: id(rack),
            events: vec![e],
        });
    }

    /// Reports `state` for run `run` with step `step` (index) in `step_state`.
    fn report(&mut self, run: &str, state: RunState, step: usize, step_state: StepState) {
        let r = &self.state.runs.runs[run];
        let (node, rack) = (r.node, r.rack.to_string());
        let mut status = RunStatus::new(&r.plan);
        status.state = state;
        status.current = Some(step);
        for s in &mut status.steps[..step] {
            s.state = StepState::Succeeded;
            s.attempts = 1;
        }
        status.steps[step].state = step_state;
        status.steps[step].attempts = 1;
        if step_state == StepState::Failed {
            status.steps[step].message = Some("exit code 2".into());
        }
        self.event(
            &rack,
            EventKind::RunStatus {
                run: run.into(),
                node,
                status,
            },
        );
    }

    fn finish(&mut self, run: &str, ok: bool) {
        if ok {
            self.report(run, RunState::Succeeded, 1, StepState::Succeeded);
        } else {
            self.report(run, RunState::Failed, 1, StepState::Failed);
        }
    }

    fn deltas(&self, rack: &str, since: Revision) -> Vec<Delta> {
        let key = crate::secrets::SealingKey::generate();
        crate::fleet::desired::deltas_since(&self.state, &key, &id(rack), since)
            .into_iter()
            .filter(|d| matches!(d, Delta::UpsertRun(_) | Delta::RemoveRun(_)))
            .collect()
    }

    fn active_per_rack(&self) -> BTreeMap<RackId, usize> {
        let mut out = BTreeMap::new();
        for r in self.state.runs.runs.values().filter(|r| !r.is_final()) {
            *out.entry(r.rack.clone()).or_default() += 1;
        }
        out
    }
}

fn put_burn() -> Command {
    Command::Runs(R::PutWorkflow {
        name: "burn".into(),
        version: 1,
        description: String::new(),
        source: BURN.into(),
    })
}

#[test]
fn templates_are_versioned_and_immutable() {
    let mut lab = Lab::new();
    // The same text again is a no-op.
    lab.ok(put_burn());
    let err = lab.refused(R::PutWorkflow {
        name: "burn".into(),
        version: 1,
        description: String::new(),
        source: BURN.replace("stress-ng", "fio"),
    });
    assert_eq!(err.code, ErrorCode::Conflict);
    lab.ok(Command::Runs(R::PutWorkflow {
        name: "burn".into(),
        version: 2,
        description: String::new(),
        source: BURN.replace("version: 1", "version: 2"),
    }));
    assert_eq!(lab.state.runs.workflow("burn", None).unwrap().version, 2);
    assert_eq!(
        lab.state.runs.workflow("burn", Some(1)).unwrap().source,
        BURN
    );
    // Delete is refused while a run uses the version, allowed after it ended.
    let run = lab.start(fleet(), &[2]).remove(0);
    let err = lab.refused(R::DeleteWorkflow {
        name: "burn".into(),
        version: Some(1),
    });
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    lab.ok(Command::Runs(R::DeleteWorkflow {
        name: "burn".into(),
        version: Some(2),
    }));
    lab.finish(&run, true);
    lab.ok(Command::Runs(R::DeleteWorkflow {
        name: "burn".into(),
        version: None,
    }));
    assert!(lab.state.runs.workflow("burn", None).is_none());
    // A plan whose template is gone is refused.
    let err = lab.refused(R::StartRuns {
        caller: fleet(),
        plan: plan(),
        nodes: vec![node_id(3)],
    });
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[test]
fn run_lifecycle_reaches_the_agents_desired_state() {
    let mut lab = Lab::new();
    let before = lab.rev;
    let run = lab.start(fleet(), &[2]).remove(0);
    let r = &lab.state.runs.runs[&run];
    assert_eq!(
        (r.control, r.status.state),
        (RunControl::Run, RunState::Pending)
    );
    let d = lab.deltas("r1", before);
    assert!(
        matches!(&d[..], [Delta::UpsertRun(a)] if a.run_id == run && a.control == RunControl::Run)
    );
    assert!(lab.deltas("r2", before).is_empty());
    assert!(lab.state.rack_changed(&id("r1")) >= lab.rev);

    // One active run per node, all or nothing.
    let err = lab.refused(R::StartRuns {
        caller: fleet(),
        plan: plan(),
        nodes: vec![node_id(3), node_id(2)],
    });
    assert_eq!(
        (err.code, err.field.as_deref()),
        (ErrorCode::Conflict, Some("nodes[1]"))
    );
    let err = lab.refused(R::StartRuns {
        caller: fleet(),
        plan: plan(),
        nodes: vec![node_id(9)],
    });
    assert_eq!(err.code, ErrorCode::Conflict, "no rack: {err}");

    // Pause and resume change the control at a new revision.
    let at = lab.rev;
    lab.ok(Command::Runs(R::ControlRun {
        caller: fleet(),
        run: run.clone(),
        action: RunAction::Pause,
    }));
    let d = lab.deltas("r1", at);
    assert!(
        matches!(&d[..], [Delta::UpsertRun(a)] if a.control == RunControl::Pause && a.revision == lab.rev)
    );
    lab.ok(Command::Runs(R::ControlRun {
        caller: fleet(),
        run: run.clone(),
        action: RunAction::Resume,
    }));

    // Progress: the latest status wins; step transitions land in the timeline.
    lab.report(&run, RunState::Running, 0, StepState::Running);
    lab.report(&run, RunState::Running, 1, StepState::Running);
    lab.event(
        "r1",
        EventKind::StepLog {
            run: run.clone(),
            node: node_id(2),
            step: "stress".into(),
            lines: vec!["a".into(), "b".into()],
        },
    );
    let r = &lab.state.runs.runs[&run];
    assert_eq!(r.status.state, RunState::Running);
    assert_eq!(r.current_step(), Some("stress"));
    let log = &lab.state.runs.logs[&(run.clone(), "stress".to_owned())];
    assert_eq!(log.lines, ["a", "b"]);

    // The final status is recorded and the run leaves the agent's desired state.
    let at = lab.rev;
    lab.finish(&run, true);
    let r = &lab.state.runs.runs[&run];
    assert_eq!(r.status.state, RunState::Succeeded);
    assert_eq!(r.removed_at, Some(lab.rev));
    assert_eq!(lab.deltas("r1", at), [Delta::RemoveRun(run.clone())]);
    let key = crate::secrets::SealingKey::generate();
    let snap = crate::fleet::desired::snapshot(&lab.state, &key, &id("r1"), lab.rev);
    assert!(snap.runs.is_empty());
    assert!(lab.state.runs.active_run(node_id(2)).is_none());

    // Statuses after the end are ignored; control of an ended run is refused.
    lab.report(&run, RunState::Running, 0, StepState::Running);
    assert_eq!(lab.state.runs.runs[&run].status.state, RunState::Succeeded);
    let err = lab.refused(R::ControlRun {
        caller: fleet(),
        run: run.clone(),
        action: RunAction::Cancel,
    });
    assert_eq!(err.code, ErrorCode::InvalidTransition);

    let steps: Vec<(String, String)> = lab.state.runs.timelines[&node_id(2)]
        .iter()
        .filter(|e| e.kind == TimelineKind::Step)
        .map(|e| (e.step.clone().unwrap(), e.state.clone().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("power-on".to_owned(), "running".to_owned()),
            ("power-on".into(), "succeeded".into()),
            ("stress".into(), "running".into()),
            ("stress".into(), "succeeded".into()),
        ]
    );
    // A new run may start now.
    lab.start(fleet(), &[2]);
}

#[test]
fn cancel_reaches_the_agent_and_events_of_other_racks_are_ignored() {
    let mut lab = Lab::new();
    let run = lab.start(fleet(), &[2]).remove(0);
    // Rack r2's agent cannot speak for r1's run.
    let mut status = RunStatus::new(&plan());
    status.state = RunState::Failed;
    lab.event(
        "r2",
        EventKind::RunStatus {
            run: run.clone(),
            node: node_id(2),
            status,
        },
    );
    assert_eq!(lab.state.runs.runs[&run].status.state, RunState::Pending);
    let at = lab.rev;
    lab.ok(Command::Runs(R::ControlRun {
        caller: fleet(),
        run: run.clone(),
        action: RunAction::Cancel,
    }));
    let d = lab.deltas("r1", at);
    assert!(matches!(&d[..], [Delta::UpsertRun(a)] if a.control == RunControl::Cancel));
    // Still active until the agent reports the end.
    assert!(lab.state.runs.active_run(node_id(2)).is_some());
    lab.report(&run, RunState::Cancelled, 0, StepState::Cancelled);
    assert!(lab.state.runs.active_run(node_id(2)).is_none());
}

#[test]
fn project_members_run_only_on_their_nodes() {
    let mut lab = Lab::new();
    let member = Caller {
        role: Role::ProjectMember,
        project: Some(id("a")),
    };
    let err = lab.refused(R::StartRuns {
        caller: member.clone(),
        plan: plan(),
        nodes: vec![node_id(2)],
    });
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    let theirs = lab.start(member.clone(), &[1]).remove(0);
    assert_eq!(lab.state.runs.runs[&theirs].project, Some(id("a")));
    let other = lab.start(fleet(), &[2]).remove(0);
    let err = lab.refused(R::ControlRun {
        caller: member.clone(),
        run: other,
        action: RunAction::Cancel,
    });
    assert_eq!(err.code, ErrorCode::NotFound);
    lab.ok(Command::Runs(R::ControlRun {
        caller: member,
        run: theirs,
        action: RunAction::Pause,
    }));
}

fn rollout(lab: &mut Lab, max_in_flight: u32, max_per_rack: u32, budget: u32) -> Revision {
    lab.ok(Command::Runs(R::CreateRollout {
        plan: plan(),
        selector: Selector {
            site: Some(id("ams1")),
            ..Selector::default()
        },
        max_in_flight,
        max_per_rack,
        failure_budget: budget,
    }));
    lab.rev
}

#[test]
fn rollouts_respect_limits_and_never_run_twice_on_a_node() {
    let mut lab = Lab::new();
    // Node 3 is busy with a hand-started run: the rollout waits for it.
    let busy = lab.start(fleet(), &[3]).remove(0);
    let ro = rollout(&mut lab, 3, 1, 0);
    let r = &lab.state.runs.rollouts[&ro];
    assert_eq!(r.nodes.len(), 8, "node 9 is in no rack");
    let check = |lab: &Lab| {
        let per_rack = lab.active_per_rack();
        let of_rollout = lab
            .state
            .runs
            .runs
            .values()
            .filter(|r| r.rollout == Some(ro) && !r.is_final())
            .count();
        assert!(of_rollout <= 3, "{of_rollout} in flight");
        for (rack, n) in &per_rack {
            // The hand-started run counts against nothing of the rollout, but the rollout's
            // own runs never exceed one per rack.
            let own = lab
                .state
                .runs
                .runs
                .values()
                .filter(|r| r.rollout == Some(ro) && !r.is_final() && &r.rack == rack)
                .count();
            assert!(own <= 1, "rack {rack}: {own} rollout runs ({n} in all)");
        }
        let mut nodes = BTreeSet::new();
        for r in lab.state.runs.runs.values().filter(|r| !r.is_final()) {
            assert!(nodes.insert(r.node), "two active runs on {}", r.node);
        }
    };
    check(&lab);
    assert_eq!(
        lab.state
            .runs
            .rollout_progress(&lab.state.runs.rollouts[&ro])
            .counts["pending"],
        2
    );
    let mut guard = 0;
    loop {
        guard += 1;
        assert!(guard < 50, "rollout does not end");
        let running: Vec<String> = lab
            .state
            .runs
            .runs
            .values()
            .filter(|r| r.rollout == Some(ro) && !r.is_final())
            .map(|r| r.id.clone())
            .collect();
        if running.is_empty() {
            if lab.state.runs.active_run(node_id(3)).is_some() {
                // Only the busy node is left: its run ends and the rollout starts it.
                lab.finish(&busy, true);
                check(&lab);
                continue;
            }
            break;
        }
        for run in running {
            lab.finish(&run, true);
            check(&lab);
        }
    }
    let r = &lab.state.runs.rollouts[&ro];
    assert_eq!(r.state, RolloutState::Succeeded);
    assert_eq!(
        lab.state.runs.rollout_progress(r).counts,
        BTreeMap::from([("succeeded".to_owned(), 8)])
    );
}

#[test]
fn failure_budget_pauses_and_abort_cancels() {
    let mut lab = Lab::new();
    let ro = rollout(&mut lab, 2, 1, 1);
    let first: Vec<String> = lab.state.runs.runs.keys().cloned().collect();
    assert_eq!(first.len(), 2);
    lab.finish(&first[0], false);
    assert_eq!(lab.state.runs.rollouts[&ro].state, RolloutState::Running);
    let second: Vec<String> = lab
        .state
        .runs
        .runs
        .values()
        .filter(|r| !r.is_final())
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(second.len(), 2);
    lab.finish(&second[0], false);
    let r = &lab.state.runs.rollouts[&ro];
    assert_eq!(r.state, RolloutState::Paused);
    assert!(
        r.reason.as_ref().unwrap().contains("failure budget"),
        "{:?}",
        r.reason
    );
    // Nothing new starts; the running run goes on.
    let active: Vec<String> = lab
        .state
        .runs
        .runs
        .values()
        .filter(|r| !r.is_final())
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(lab.state.runs.runs[&active[0]].control, RunControl::Run);
    lab.finish(&active[0], true);
    assert!(lab.state.runs.runs.values().all(|r| r.is_final()));
    assert!(lab.state.rollout_choices(ro).is_empty());
    let err = lab.refused(R::RolloutTick { rollout: ro });
    assert_eq!(err.code, ErrorCode::InvalidTransition);

    // Resume with a larger budget starts runs again; abort cancels them and drops the rest.
    lab.ok(Command::Runs(R::ControlRollout {
        rollout: ro,
        action: RolloutAction::Resume {
            failure_budget: Some(5),
        },
    }));
    let running: Vec<String> = lab
        .state
        .runs
        .runs
        .values()
        .filter(|r| !r.is_final())
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(running.len(), 2);
    lab.ok(Command::Runs(R::ControlRollout {
        rollout: ro,
        action: RolloutAction::Abort,
    }));
    let r = &lab.state.runs.rollouts[&ro];
    assert_eq!(r.state, RolloutState::Aborted);
    for id in &running {
        assert_eq!(lab.state.runs.runs[id].control, RunControl::Cancel);
    }
    assert_eq!(
        r.nodes.values().filter(|n| n.skipped.is_some()).count(),
        3,
        "8 nodes: 3 ended, 2 running, 3 dropped"
    );
    let err = lab.refused(R::ControlRollout {
        rollout: ro,
        action: RolloutAction::Pause,
    });
    assert_eq!(err.code, ErrorCode::InvalidTransition);
}

#[test]
fn timeline_and_logs_are_bounded() {
    let mut lab = Lab::new();
    let run = lab.start(fleet(), &[2]).remove(0);
    for i in 0..5 {
        let lines = (0..1000).map(|j| format!("line {i}.{j}")).collect();
        lab.event(
            "r1",
            EventKind::StepLog {
                run: run.clone(),
                node: node_id(2),
                step: "stress".into(),
                lines,
            },
        );
    }
    let log = &lab.state.runs.logs[&(run.clone(), "stress".to_owned())];
    assert_eq!(log.lines.len(), LOG_LINES_PER_STEP);
    assert_eq!(log.dropped, 3000);
    assert_eq!(log.lines.back().unwrap(), "line 4.999");
    // Log batches of one step are one timeline entry.
    let tl = &lab.state.runs.timelines[&node_id(2)];
    assert_eq!(
        tl.iter()
            .filter(|e| e.kind == TimelineKind::StepLog)
            .count(),
        1
    );
    for i in 0..(TIMELINE_PER_NODE + 10) {
        lab.event(
            "r1",
            EventKind::Power {
                node: node_id(2),
                on: i % 2 == 0,
            },
        );
    }
    let tl = &lab.state.runs.timelines[&node_id(2)];
    assert_eq!(tl.len(), TIMELINE_PER_NODE);
    assert_eq!(tl.back().unwrap().kind, TimelineKind::Power);
    assert!(tl.back().unwrap().seq.is_some());
    // Another rack's agent does not write this node's timeline.
    let n = tl.len();
    let last = tl.back().cloned();
    lab.event(
        "r2",
        EventKind::Power {
            node: node_id(2),
            on: true,
        },
    );
    let tl = &lab.state.runs.timelines[&node_id(2)];
    assert_eq!((tl.len(), tl.back().cloned()), (n, last));
}

#[test]
fn workflow_objects_survive_storage_and_index_rebuilds() {
    let mut lab = Lab::new();
    let run = lab.start(fleet(), &[2]).remove(0);
    lab.event(
        "r1",
        EventKind::StepLog {
            run: run.clone(),
            node: node_id(2),
            step: "stress".into(),
            lines: vec!["x".into()],
        },
    );
    rollout(&mut lab, 1, 1, 0);
    let mut copy = State::default();
    for key in lab.state.all_keys() {
        if let Some(bytes) = lab.state.encode_object(&key).unwrap() {
            copy.load_object(&State::storage_key(&key), &bytes).unwrap();
        }
    }
    copy.rebuild_indexes();
    assert_eq!(copy.runs.workflows, lab.state.runs.workflows);
    assert_eq!(copy.runs.runs, lab.state.runs.runs);
    assert_eq!(copy.runs.logs, lab.state.runs.logs);
    assert_eq!(copy.runs.timelines, lab.state.runs.timelines);
    assert_eq!(copy.runs.rollouts, lab.state.runs.rollouts);
    assert_eq!(copy.runs.active_run(node_id(2)).unwrap().id, run);
    assert_eq!(
        copy.rack_changed(&id("r1")),
        lab.state.rack_changed(&id("r1"))
    );
}

const PREP: &str = "apiVersion: metalfleet/v1
kind: Workflow
name: prep
version: 1
lifecycle: { running: commissioning, succeeded: ready, failed: failed }
steps:
  - name: power-on
    kind: bmc.power
    with: { action: on }
  - name: stress
    kind: node.run
    with: { command: stress-ng }
";

const INST: &str = "apiVersion: metalfleet/v1
kind: Workflow
name: inst
version: 1
lifecycle: { running: deploying, succeeded: deployed, failed: failed }
steps:
  - name: install
    kind: node.run
    with: { command: install }
";

const DEPLOY: &str = "apiVersion: metalfleet/v1
kind: Workflow
name: deploy
version: 1
lifecycle: { running: commissioning }
include:
  - template: prep
  - template: inst
";

/// Stores `prep` and `deploy`, starts `deploy` on node 2 and reports step `step` (index)
/// in `state` (earlier steps succeeded).
fn deploy_run(lab: &mut Lab) -> String {
    for (name, src) in [("prep", PREP), ("inst", INST), ("deploy", DEPLOY)] {
        lab.ok(Command::Runs(R::PutWorkflow {
            name: name.into(),
            version: 1,
            description: String::new(),
            source: src.into(),
        }));
    }
    let mut reg = TemplateRegistry::new();
    for (name, src) in [("prep", PREP), ("inst", INST), ("deploy", DEPLOY)] {
        reg.insert(Template::parse(name, src).unwrap()).unwrap();
    }
    let plan = reg.expand("deploy", None, &BTreeMap::new()).unwrap();
    lab.ok(Command::Runs(R::StartRuns {
        caller: fleet(),
        plan,
        nodes: vec![node_id(2)],
    }));
    format!("{}-0", lab.rev)
}

fn node_state(lab: &Lab, n: u128) -> protocol::domain::NodeState {
    lab.state.nodes[&node_id(n)].state
}

#[test]
fn runs_move_the_node_along_the_templates_lifecycles() {
    use protocol::domain::NodeState as S;
    let mut lab = Lab::new();
    let run = deploy_run(&mut lab);
    assert_eq!(node_state(&lab, 2), S::Discovered);
    // Entering prep enters deploy too (outer first): commissioning once.
    lab.report(&run, RunState::Running, 0, StepState::Running);
    assert_eq!(node_state(&lab, 2), S::Commissioning);
    let notes = |lab: &Lab| -> Vec<String> {
        lab.state.runs.timelines[&node_id(2)]
            .iter()
            .filter(|e| e.kind == TimelineKind::Run && e.message.starts_with("node"))
            .map(|e| e.message.clone())
            .collect()
    };
    assert_eq!(notes(&lab).len(), 1, "{:?}", notes(&lab));
    assert!(notes(&lab)[0].contains("discovered → commissioning (run"));
    // One status reports prep done and inst entered: ready, then deploying, in step order.
    lab.report(&run, RunState::Running, 2, StepState::Running);
    assert_eq!(node_state(&lab, 2), S::Deploying);
    let n = notes(&lab);
    assert!(
        n[1].contains("commissioning → ready") && n[1].contains("prep/stress"),
        "{n:?}"
    );
    assert!(
        n[2].contains("ready → deploying") && n[2].contains("inst/install"),
        "{n:?}"
    );
    lab.report(&run, RunState::Succeeded, 2, StepState::Succeeded);
    assert_eq!(node_state(&lab, 2), S::Deployed);
    // The same statuses again change nothing.
    lab.report(&run, RunState::Succeeded, 2, StepState::Succeeded);
    assert_eq!(node_state(&lab, 2), S::Deployed);
}

#[test]
fn a_failed_run_marks_the_node_failed_by_the_innermost_template() {
    use protocol::domain::NodeState as S;
    let mut lab = Lab::new();
    let run = deploy_run(&mut lab);
    lab.report(&run, RunState::Running, 0, StepState::Running);
    lab.report(&run, RunState::Failed, 1, StepState::Failed);
    assert_eq!(node_state(&lab, 2), S::Failed);
    let last = lab.state.runs.timelines[&node_id(2)]
        .iter()
        .rev()
        .find(|e| e.kind == TimelineKind::Run && e.message.starts_with("node"))
        .unwrap();
    assert!(
        last.message.contains("commissioning → failed") && last.message.contains("prep/stress"),
        "{}",
        last.message
    );
}

#[test]
fn a_bad_lifecycle_state_names_the_field() {
    let bad = PREP.replace("succeeded: ready", "succeeded: done");
    let err = Template::parse("prep", &bad).unwrap_err().to_string();
    assert!(err.contains("prep/lifecycle.succeeded"), "{err}");
    assert!(err.contains("unknown node state"), "{err}");
}
