//! What the step executor reports about a run: per-step state, attempts, timestamps, exit
//! codes and progress of long steps.

use serde::{Deserialize, Serialize};

use super::RunPlan;
use crate::domain::UnixMillis;

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not reached yet.
    Pending,
    /// An attempt is under way (or waiting out its backoff before the next one).
    Running,
    /// Done.
    Succeeded,
    /// Its last attempt failed (the run may go on: `on_failure`).
    Failed,
    /// Its `when` condition was false when it was reached.
    Skipped,
    /// The run was cancelled before or while it ran.
    Cancelled,
}

impl StepState {
    /// Whether the step will not change state again (unless a `goto` re-enters it).
    pub fn is_final(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Running)
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted by the agent, not started.
    Pending,
    /// Executing a step.
    Running,
    /// Paused by an operator; resumes at the current step.
    Paused,
    /// Every step succeeded, was skipped, or failed with `on_failure: continue`.
    Succeeded,
    /// A step failed with `on_failure: fail`, or a non-idempotent step was interrupted.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl RunState {
    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

/// How far a long step has got (a 72-hour drive stress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// 0..=100.
    pub percent: u8,
    /// What it is doing, for operators (e.g. `fio: 31h of 72h, 0 errors`).
    pub message: String,
    /// When this was reported.
    pub at: UnixMillis,
}

/// One step's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepStatus {
    /// The step's name in the plan.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Attempts started so far (0 until it runs; retries and re-entries by `goto` count).
    pub attempts: u32,
    /// When the first attempt started.
    pub started_at: Option<UnixMillis>,
    /// When it reached a final state.
    pub finished_at: Option<UnixMillis>,
    /// Exit code of the last command it ran, for steps that run one.
    pub exit_code: Option<i32>,
    /// Latest progress report of a long step.
    pub progress: Option<Progress>,
    /// Why the last attempt failed (or why it was skipped or cancelled).
    pub message: Option<String>,
}

impl StepStatus {
    /// A step not reached yet.
    pub fn pending(name: &str) -> StepStatus {
        StepStatus {
            name: name.to_owned(),
            state: StepState::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            exit_code: None,
            progress: None,
            message: None,
        }
    }
}

/// A run's status as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunStatus {
    /// Where the run is.
    pub state: RunState,
    /// Index in the plan of the step being executed (or that will run on resume).
    pub current: Option<usize>,
    /// One entry per plan step, in plan order.
    pub steps: Vec<StepStatus>,
    /// When the first step started.
    pub started_at: Option<UnixMillis>,
    /// When the run reached a final state.
    pub finished_at: Option<UnixMillis>,
    /// Why it failed or was cancelled.
    pub message: Option<String>,
}

impl RunStatus {
    /// The status of a run not started yet: every step pending.
    pub fn new(plan: &RunPlan) -> RunStatus {
        RunStatus {
            state: RunState::Pending,
            current: None,
            steps: plan
                .steps
                .iter()
                .map(|s| StepStatus::pending(&s.name))
                .collect(),
            started_at: None,
            finished_at: None,
            message: None,
        }
    }

    /// The named step's status.
    pub fn step(&self, name: &str) -> Option<&StepStatus> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::workflow::{Backoff, BmcPower, OnFailure, PowerAction, Step, StepKind};

    #[test]
    fn new_status_is_all_pending_and_round_trips() {
        let plan = RunPlan {
            template: "t".into(),
            version: 1,
            params: BTreeMap::new(),
            steps: vec![Step {
                name: "on".into(),
                kind: StepKind::BmcPower(BmcPower {
                    action: PowerAction::On,
                }),
                timeout: crate::workflow::HumanDuration::from_secs(60),
                retries: 0,
                backoff: Backoff::default(),
                on_failure: OnFailure::Fail,
                when: None,
                idempotent: true,
            }],
        };
        let mut status = RunStatus::new(&plan);
        assert_eq!(status.state, RunState::Pending);
        assert_eq!(status.steps, [StepStatus::pending("on")]);
        status.steps[0].progress = Some(Progress {
            percent: 40,
            message: "fio".into(),
            at: 5,
        });
        let bin = postcard::to_stdvec(&status).unwrap();
        assert_eq!(postcard::from_bytes::<RunStatus>(&bin).unwrap(), status);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["steps"][0]["state"], "pending");
        assert!(!StepState::Running.is_final() && StepState::Skipped.is_final());
        assert!(RunState::Cancelled.is_final() && !RunState::Paused.is_final());
    }
}
