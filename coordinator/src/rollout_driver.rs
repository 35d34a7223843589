//! The leader's rollout driver: proposes [`RunsCommand::RolloutTick`] for running rollouts
//! that could start runs now.
//!
//! Rollouts advance inside apply (on creation, resume, and whenever one of their runs ends),
//! so this loop is a safety net: it catches nodes freed by something apply does not tie to the
//! rollout (another rollout's or a hand-started run ending before this rollout waited on it).
//! It decides nothing itself: which nodes start is recomputed by apply within the limits, so a
//! tick proposed twice (two leaders across an election) starts nothing twice, and a new leader
//! simply goes on.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use protocol::domain::CoordinatorAddr;

use crate::app::App;
use crate::state::runs::{RolloutId, RolloutState, RunsCommand};
use crate::state::{Command, State};

/// How often the leader looks at the rollouts.
pub const TICK: Duration = Duration::from_secs(1);
/// Wait before proposing a tick for the same rollout again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Running rollouts that could start a run now.
pub fn due(state: &State) -> Vec<RolloutId> {
    state
        .runs
        .rollouts
        .values()
        .filter(|r| r.state == RolloutState::Running)
        .filter(|r| !state.rollout_choices(r.id).is_empty())
        .map(|r| r.id)
        .collect()
}

/// Starts the driver. It holds only a weak reference to the app and ends when the app is
/// dropped or its Raft member stops.
pub fn spawn(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    let metrics = app.raft.metrics();
    tokio::spawn(run(weak, metrics));
}

async fn run(
    weak: Weak<App>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, CoordinatorAddr>>,
) {
    let mut tried: HashMap<RolloutId, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if metrics.has_changed().is_err() {
            return; // Raft is gone.
        }
        let Some(app) = weak.upgrade() else { return };
        if !leads(&app) {
            tried.clear();
            continue;
        }
        let todo = match app.state.read() {
            Ok(g) => due(&g.state),
            Err(_) => {
                tracing::error!("state lock poisoned; rollout driver stops");
                return;
            }
        };
        tried.retain(|id, at| todo.contains(id) && at.elapsed() < RETRY_AFTER);
        for id in todo {
            if tried.contains_key(&id) {
                continue;
            }
            tried.insert(id, Instant::now());
            let cmd = Command::Runs(RunsCommand::RolloutTick { rollout: id });
            match app
                .write_unkeyed(format!("coordinator:{}", app.config.id), cmd)
                .await
            {
                Ok(r) => match r.result {
                    Ok(_) => tracing::info!(rollout = id, "rollout tick started runs"),
                    Err(refusal) => tracing::debug!(rollout = id, %refusal, "rollout tick refused"),
                },
                Err(e) => tracing::warn!(rollout = id, error = %e, "cannot propose rollout tick"),
            }
        }
    }
}

fn leads(app: &App) -> bool {
    let m = app.raft.metrics().borrow().clone();
    m.current_leader == Some(app.config.id) && m.running_state.is_ok()
}
