//! The run reconciler: makes the executor hold what the rack's desired state assigns. Each
//! [`RunAssignment`] is submitted (idempotent by run id) and its control applied (run, pause,
//! cancel); a run that left the desired state is cancelled if it is not over, and forgotten
//! with its logs once it is (the coordinators only drop a run after recording its end).
//!
//! Passes run at start, whenever the desired state changes, and every [`RECONCILE_INTERVAL`].
//! Everything the executor was given is in its own database, so runs keep executing with
//! every coordinator gone and resume after a restart without waiting for a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use protocol::fleet::{RunAssignment, RunControl};
use protocol::workflow::{RunState, RunStatus};

use super::{Control, Executor, ExecutorError, RunEvent, RunSink, Submitted};
use crate::store::Store;

/// How often a pass runs without a desired-state change (forgets finished runs that were
/// cancelled because they left the desired state).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// The executor's control for an assignment's.
pub fn control_of(c: RunControl) -> Control {
    match c {
        RunControl::Run => Control::Run,
        RunControl::Pause => Control::Pause,
        RunControl::Cancel => Control::Cancel,
    }
}

/// State kept between passes.
struct Reconciler {
    executor: Executor,
    store: Store,
    sink: Arc<dyn RunSink>,
    /// Assignments the executor refused, with the plan refused (reported once per plan).
    refused: BTreeMap<String, protocol::workflow::RunPlan>,
}

/// Runs passes until `cancel`.
pub async fn run(
    executor: Executor,
    store: Store,
    sink: Arc<dyn RunSink>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut r = Reconciler {
        executor,
        store,
        sink,
        refused: BTreeMap::new(),
    };
    let mut changes = r.store.subscribe();
    let mut first = true;
    loop {
        changes.borrow_and_update();
        match r.pass(first).await {
            Ok(()) => first = false,
            Err(e) => tracing::error!(
                error = %crate::error_chain(&e),
                "run reconciler pass failed; retrying on the next one"
            ),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The assignments could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The executor's database failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

impl Reconciler {
    async fn pass(&mut self, first: bool) -> Result<(), ReconcileError> {
        let desired = self.store.call(|s| s.runs()).await?;
        let ex = self.executor.clone();
        let sink = self.sink.clone();
        let mut refused = std::mem::take(&mut self.refused);
        let result = tokio::task::spawn_blocking(move || {
            let r = apply(&ex, sink.as_ref(), &desired, &mut refused, first);
            (r, refused)
        })
        .await;
        match result {
            Ok((r, refused)) => {
                self.refused = refused;
                r
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ExecutorError::ShuttingDown.into()),
        }
    }
}

/// One pass over the executor's database (blocking: every executor write waits for fsync).
fn apply(
    ex: &Executor,
    sink: &dyn RunSink,
    desired: &[RunAssignment],
    refused: &mut BTreeMap<String, protocol::workflow::RunPlan>,
    first: bool,
) -> Result<(), ReconcileError> {
    let known: BTreeMap<String, RunState> = ex
        .runs()?
        .into_iter()
        .map(|(id, _, state)| (id, state))
        .collect();
    let wanted: BTreeSet<&str> = desired.iter().map(|a| a.run_id.as_str()).collect();
    refused.retain(|id, _| wanted.contains(id.as_str()));
    let mut resync = Vec::new();
    for a in desired {
        let want = control_of(a.control);
        let state = match known.get(&a.run_id) {
            Some(s) => *s,
            None => {
                if refused.get(&a.run_id) == Some(&a.plan) {
                    continue;
                }
                match ex.submit_with(&a.run_id, a.node, a.plan.clone(), want) {
                    Ok(Submitted::Accepted) => {
                        tracing::info!(run = %a.run_id, node = %a.node, control = ?want, "run accepted");
                        refused.remove(&a.run_id);
                        continue;
                    }
                    Ok(Submitted::AlreadyKnown) => ex.status(&a.run_id)?.state,
                    Err(e @ ExecutorError::ShuttingDown) => return Err(e.into()),
                    Err(e @ (ExecutorError::Db { .. } | ExecutorError::Encode { .. })) => {
                        return Err(e.into())
                    }
                    Err(e) => {
                        refuse(sink, a, &e);
                        refused.insert(a.run_id.clone(), a.plan.clone());
                        continue;
                    }
                }
            }
        };
        if first {
            // What was queued in memory when the agent last stopped may never have reached
            // the outbox: report where every assigned run is (the latest status wins).
            resync.push((a.run_id.clone(), a.node));
        }
        if state.is_final() || ex.requested(&a.run_id) == Some(want) {
            continue;
        }
        let r = match want {
            Control::Run => ex.resume(&a.run_id),
            Control::Pause => ex.pause(&a.run_id),
            Control::Cancel => ex.cancel(&a.run_id),
        };
        match r {
            Ok(()) => tracing::info!(run = %a.run_id, control = ?want, "run control applied"),
            // It ended meanwhile: nothing to change.
            Err(ExecutorError::Finished { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (id, state) in &known {
        if wanted.contains(id.as_str()) {
            continue;
        }
        if state.is_final() {
            if ex.forget(id)? {
                tracing::info!(run = %id, "finished run no longer assigned; forgotten");
            }
        } else if ex.requested(id) != Some(Control::Cancel) {
            tracing::info!(run = %id, "run no longer assigned; cancelling it");
            match ex.cancel(id) {
                Ok(()) | Err(ExecutorError::Finished { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !resync.is_empty() {
        let mut events = Vec::with_capacity(resync.len());
        for (id, node) in resync {
            let status = ex.status(&id)?;
            events.push(RunEvent::Status {
                run: id,
                node,
                status,
            });
        }
        sink.emit(events);
    }
    Ok(())
}

/// Reports an assignment the executor cannot take as a failed run, so the coordinators do
/// not wait for it forever.
fn refuse(sink: &dyn RunSink, a: &RunAssignment, e: &ExecutorError) {
    let message = crate::error_chain(e);
    tracing::error!(run = %a.run_id, node = %a.node, error = %message, "run refused");
    let mut status = RunStatus::new(&a.plan);
    status.state = RunState::Failed;
    status.finished_at = Some(crate::unix_millis());
    status.message = Some(format!("refused by the rack agent: {message}"));
    sink.emit(vec![RunEvent::Status {
        run: a.run_id.clone(),
        node: a.node,
        status,
    }]);
}
