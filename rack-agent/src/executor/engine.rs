//! One run's task: takes the node's turn, then advances step by step — `when` conditions,
//! attempts under a timeout, retries with backoff, `on_failure` — committing every state
//! before acting on it, and recovering a step found Running after a restart (see the module
//! doc of [`super`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use protocol::workflow::{OnFailure, RunState, StepKind, StepState};

use super::journal::{Control, RunRecord, StepJournal};
use super::steps::{self, StepCtx, StepErr};
use super::{
    finish_pending, observe, ExecutorError, RunEvent, Shared, INTERRUPTED, MAX_STEP_ENTRIES,
};

/// How a step ended, for the run loop.
enum StepEnd {
    /// Go on with this step index (the next one, or a `goto` target).
    Next(usize),
    /// The run failed.
    RunFailed(String),
    /// The run was cancelled (already recorded).
    Cancelled,
    /// A pause arrived while waiting between attempts (the step stays Running).
    Paused,
}

fn update(
    sh: &Shared,
    run_id: &str,
    f: impl FnOnce(&mut RunRecord),
) -> Result<RunRecord, ExecutorError> {
    let rec = sh
        .journal
        .update_run(run_id, f)?
        .ok_or_else(|| ExecutorError::UnknownRun {
            run_id: run_id.to_owned(),
        })?;
    sh.sink.emit(vec![RunEvent::Status {
        run: run_id.to_owned(),
        node: rec.node,
        status: rec.status.clone(),
    }]);
    sh.poke();
    Ok(rec)
}

fn load(sh: &Shared, run_id: &str) -> Result<RunRecord, ExecutorError> {
    sh.journal
        .run(run_id)?
        .ok_or_else(|| ExecutorError::UnknownRun {
            run_id: run_id.to_owned(),
        })
}

/// A line of the executor's own in a step's log.
fn note(sh: &Shared, run_id: &str, step: usize, line: String) {
    tracing::info!(run = run_id, step, "{line}");
    if let Err(e) = observe::append_step_lines(sh, run_id, step, vec![format!("[executor] {line}")])
    {
        tracing::warn!(run = run_id, error = %crate::error_chain(&e), "step log not stored");
    }
}

async fn until_cancel(mut ctl: watch::Receiver<Control>) {
    if ctl.wait_for(|c| *c == Control::Cancel).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn until_not_run(mut ctl: watch::Receiver<Control>) -> Control {
    let seen = ctl.wait_for(|c| *c != Control::Run).await.map(|c| *c);
    match seen {
        Ok(c) => c,
        Err(_) => std::future::pending().await,
    }
}

/// The run's task. Errors of the executor itself (the database) fail the run with the error.
pub(super) async fn drive(sh: Arc<Shared>, run_id: String, ctl: watch::Receiver<Control>) {
    let turn = sh
        .journal
        .run(&run_id)
        .ok()
        .flatten()
        .map(|r| (r.node, r.seq));
    let result = drive_inner(&sh, &run_id, ctl).await;
    if let Some((node, seq)) = turn {
        sh.leave_queue(node, seq);
    }
    if let Err(e) = result {
        let message = format!("executor error: {}", crate::error_chain(&e));
        tracing::error!(run = %run_id, "{message}");
        let r = update(&sh, &run_id, |r| {
            r.status.state = RunState::Failed;
            r.status.finished_at = Some(crate::unix_millis());
            r.status.message = Some(message);
        });
        if let Err(e) = r {
            tracing::error!(run = %run_id, error = %crate::error_chain(&e), "run state not recorded");
        }
    }
}

fn cancel_run(sh: &Shared, run_id: &str) -> Result<(), ExecutorError> {
    let rec = load(sh, run_id)?;
    withdraw_actions(sh, &rec);
    update(sh, run_id, |r| {
        finish_pending(&mut r.status.steps, StepState::Cancelled);
        let now = crate::unix_millis();
        for s in &mut r.status.steps {
            if s.state == StepState::Cancelled && s.finished_at.is_none() && s.started_at.is_some()
            {
                s.finished_at = Some(now);
            }
        }
        r.control = Control::Cancel;
        r.status.state = RunState::Cancelled;
        r.status.finished_at = Some(now);
        r.status.message = Some("cancelled by an operator".into());
    })?;
    Ok(())
}

/// Takes back node actions of the run that were not delivered yet (see [`steps::withdraw`]).
fn withdraw_actions(sh: &Shared, rec: &RunRecord) {
    for j in &rec.journal {
        if let Some(a) = &j.action {
            steps::withdraw(&sh.hw.node_actions, a);
        }
    }
}

async fn drive_inner(
    sh: &Arc<Shared>,
    run_id: &str,
    mut ctl: watch::Receiver<Control>,
) -> Result<(), ExecutorError> {
    let rec = load(sh, run_id)?;
    if rec.status.state.is_final() {
        return Ok(());
    }
    // One run per node, in submission order.
    let mut changed = sh.changed.subscribe();
    while !sh.has_turn(rec.node, rec.seq) {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            _ = until_cancel(ctl.clone()) => return cancel_run(sh, run_id),
        }
    }
    loop {
        let rec = load(sh, run_id)?;
        if rec.status.state.is_final() {
            return Ok(());
        }
        let c = *ctl.borrow_and_update();
        // An attempt found in flight (after a restart) is seen through first: a pause takes
        // effect between attempts, and a node-agent still running the work needs its result
        // accepted.
        let in_flight = rec.status.current.is_some_and(|i| {
            rec.status.steps.get(i).map(|s| s.state) == Some(StepState::Running)
                && rec
                    .journal
                    .get(i)
                    .is_some_and(|j| j.backoff_until.is_none())
        });
        match c {
            Control::Cancel => return cancel_run(sh, run_id),
            Control::Pause if !in_flight => {
                if rec.status.state != RunState::Paused {
                    update(sh, run_id, |r| {
                        r.control = Control::Pause;
                        r.status.state = RunState::Paused;
                    })?;
                }
                if ctl.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Control::Run | Control::Pause => {
                if rec.status.state != RunState::Running || rec.status.current.is_none() {
                    update(sh, run_id, |r| {
                        r.control = c;
                        r.status.state = RunState::Running;
                        r.status.started_at.get_or_insert(crate::unix_millis());
                        r.status.current.get_or_insert(0);
                    })?;
                }
            }
        }
        let rec = load(sh, run_id)?;
        let i = rec.status.current.unwrap_or(0);
        if i >= rec.plan.steps.len() {
            update(sh, run_id, |r| {
                r.status.state = RunState::Succeeded;
                r.status.current = None;
                r.status.finished_at = Some(crate::unix_millis());
            })?;
            return Ok(());
        }
        match run_step(sh, run_id, i, &ctl).await? {
            StepEnd::Next(next) => {
                update(sh, run_id, |r| r.status.current = Some(next))?;
            }
            StepEnd::RunFailed(message) => {
                update(sh, run_id, |r| {
                    r.status.state = RunState::Failed;
                    r.status.finished_at = Some(crate::unix_millis());
                    r.status.message = Some(message);
                })?;
                return Ok(());
            }
            StepEnd::Cancelled => return Ok(()),
            StepEnd::Paused => {}
        }
    }
}

/// Waits until `until` (unix millis) unless a cancel or pause arrives first.
async fn wait_backoff(until: i64, ctl: &watch::Receiver<Control>) -> Option<Control> {
    let ms = u64::try_from(until - crate::unix_millis()).unwrap_or(0);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => None,
        c = until_not_run(ctl.clone()) => Some(c),
    }
}

async fn run_step(
    sh: &Arc<Shared>,
    run_id: &str,
    i: usize,
    ctl: &watch::Receiver<Control>,
) -> Result<StepEnd, ExecutorError> {
    let rec = load(sh, run_id)?;
    let step = rec.plan.steps[i].clone();
    let st = rec.status.steps[i].clone();
    let j = rec.journal[i].clone();
    // Re-attach to the work in flight (only after a restart), or re-run it without taking a
    // retry from the budget.
    let mut attach: Option<StepJournal> = None;
    let mut rerun = false;
    let mut resume_wait = false;
    if st.state == StepState::Running {
        if let Some(until) = j.backoff_until {
            match wait_backoff(until, ctl).await {
                Some(Control::Cancel) => {
                    cancel_run(sh, run_id)?;
                    return Ok(StepEnd::Cancelled);
                }
                Some(_) => return Ok(StepEnd::Paused),
                None => {}
            }
        } else if steps::runs_on_node(&step.kind) {
            note(
                sh,
                run_id,
                i,
                format!(
                    "agent restarted during attempt {}: re-attaching to the work on the node",
                    st.attempts
                ),
            );
            attach = Some(j);
        } else if matches!(step.kind, StepKind::NodeWait(_)) && j.attempt_started_at.is_some() {
            // A wait goes on as the same attempt: what happened since it started still
            // counts, and its timeout still runs from that start.
            note(
                sh,
                run_id,
                i,
                format!(
                    "agent restarted during attempt {}: resuming the wait",
                    st.attempts
                ),
            );
            rerun = true;
            resume_wait = true;
        } else if step.idempotent {
            note(
                sh,
                run_id,
                i,
                format!(
                    "agent restarted during attempt {}: the step is idempotent, running it again",
                    st.attempts
                ),
            );
            rerun = true;
        } else {
            note(sh, run_id, i, INTERRUPTED.to_owned());
            update(sh, run_id, |r| {
                let s = &mut r.status.steps[i];
                s.state = StepState::Failed;
                s.finished_at = Some(crate::unix_millis());
                s.message = Some(INTERRUPTED.to_owned());
            })?;
            return Ok(StepEnd::RunFailed(format!(
                "step {}: {INTERRUPTED}",
                step.name
            )));
        }
    } else {
        if rec.entries >= MAX_STEP_ENTRIES {
            return Ok(StepEnd::RunFailed(format!(
                "step {}: the run entered {MAX_STEP_ENTRIES} steps (a goto loop?)",
                step.name
            )));
        }
        if let Some(cond) = &step.when {
            let facts = sh.journal.facts(rec.node)?;
            let holds = match cond.evaluate(&facts) {
                Ok(b) => b,
                Err(e) => {
                    let message = format!("when {cond}: {e}");
                    update(sh, run_id, |r| {
                        let s = &mut r.status.steps[i];
                        s.state = StepState::Failed;
                        s.finished_at = Some(crate::unix_millis());
                        s.message = Some(message.clone());
                    })?;
                    return Ok(StepEnd::RunFailed(format!("step {}: {message}", step.name)));
                }
            };
            if !holds {
                update(sh, run_id, |r| {
                    r.entries += 1;
                    let s = &mut r.status.steps[i];
                    s.state = StepState::Skipped;
                    s.finished_at = Some(crate::unix_millis());
                    s.message = Some(format!("condition false: {cond}"));
                })?;
                return Ok(StepEnd::Next(i + 1));
            }
        }
        update(sh, run_id, |r| {
            r.entries += 1;
            r.journal[i] = StepJournal::default();
        })?;
    }
    loop {
        let rec = match &attach {
            Some(_) => load(sh, run_id)?,
            None => {
                let now = crate::unix_millis();
                // Committed before the attempt starts: a restart finds it Running.
                update(sh, run_id, |r| {
                    let s = &mut r.status.steps[i];
                    s.state = StepState::Running;
                    if !resume_wait {
                        s.attempts += 1;
                    }
                    s.started_at.get_or_insert(now);
                    s.finished_at = None;
                    s.exit_code = None;
                    s.progress = None;
                    s.message = None;
                    let j = &mut r.journal[i];
                    if !rerun {
                        j.entry_attempts += 1;
                    }
                    if !resume_wait || j.attempt_started_at.is_none() {
                        j.attempt_started_at = Some(now);
                    }
                    j.action = None;
                    j.phase = None;
                    j.phase_at = None;
                    j.backoff_until = None;
                })?
            }
        };
        rerun = false;
        resume_wait = false;
        let started = rec.journal[i]
            .attempt_started_at
            .unwrap_or_else(crate::unix_millis);
        let timeout_ms = step.timeout.as_millis();
        let left = (started + i64::try_from(timeout_ms).unwrap_or(i64::MAX))
            .saturating_sub(crate::unix_millis());
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let ctx = StepCtx {
            sh: sh.clone(),
            run_id: run_id.to_owned(),
            node: rec.node,
            index: i,
            step: step.clone(),
            attempt: rec.status.steps[i].attempts,
            attempt_started_at: started,
            run_started_at: rec.status.started_at.unwrap_or(started),
            deadline: tokio::time::Instant::now() + left,
            resume: attach.take(),
            params: rec.plan.params.clone(),
        };
        let result = tokio::select! {
            r = tokio::time::timeout(left, steps::execute(&ctx)) => match r {
                Ok(r) => r,
                Err(_) => Err(StepErr::failed(format!("timed out after {}", step.timeout))),
            },
            _ = until_cancel(ctl.clone()) => {
                cancel_run(sh, run_id)?;
                return Ok(StepEnd::Cancelled);
            }
        };
        let rec = load(sh, run_id)?;
        match result {
            Ok(ok) => {
                update(sh, run_id, |r| {
                    let s = &mut r.status.steps[i];
                    s.state = StepState::Succeeded;
                    s.finished_at = Some(crate::unix_millis());
                    s.exit_code = ok.exit_code.or(s.exit_code);
                    s.message = ok.message;
                    if let Some((percent, message)) = ok.progress {
                        s.progress = Some(protocol::workflow::Progress {
                            percent,
                            message,
                            at: crate::unix_millis(),
                        });
                    }
                    r.journal[i].backoff_until = None;
                })?;
                return Ok(StepEnd::Next(i + 1));
            }
            Err(e) if e.lost => {
                withdraw_actions(sh, &rec);
                if step.idempotent {
                    note(
                        sh,
                        run_id,
                        i,
                        format!("{}; the step is idempotent, running it again", e.message),
                    );
                    rerun = true;
                    continue;
                }
                let message = format!("{}; {INTERRUPTED}", e.message);
                note(sh, run_id, i, message.clone());
                update(sh, run_id, |r| {
                    let s = &mut r.status.steps[i];
                    s.state = StepState::Failed;
                    s.finished_at = Some(crate::unix_millis());
                    s.message = Some(message.clone());
                })?;
                return Ok(StepEnd::RunFailed(format!("step {}: {message}", step.name)));
            }
            Err(e) => {
                withdraw_actions(sh, &rec);
                let n = rec.journal[i].entry_attempts;
                if n <= step.retries {
                    let delay = step.backoff.delay(n);
                    let until = crate::unix_millis()
                        + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                    note(
                        sh,
                        run_id,
                        i,
                        format!(
                            "attempt {n} of {} failed: {}; retrying in {delay}",
                            step.retries + 1,
                            e.message
                        ),
                    );
                    update(sh, run_id, |r| {
                        let s = &mut r.status.steps[i];
                        s.message = Some(e.message.clone());
                        s.exit_code = e.exit_code.or(s.exit_code);
                        r.journal[i].backoff_until = Some(until);
                    })?;
                    match wait_backoff(until, ctl).await {
                        Some(Control::Cancel) => {
                            cancel_run(sh, run_id)?;
                            return Ok(StepEnd::Cancelled);
                        }
                        Some(_) => return Ok(StepEnd::Paused),
                        None => continue,
                    }
                }
                note(
                    sh,
                    run_id,
                    i,
                    format!("attempt {n} failed, no retries left: {}", e.message),
                );
                update(sh, run_id, |r| {
                    let s = &mut r.status.steps[i];
                    s.state = StepState::Failed;
                    s.finished_at = Some(crate::unix_millis());
                    s.exit_code = e.exit_code.or(s.exit_code);
                    s.message = Some(e.message.clone());
                    r.journal[i].backoff_until = None;
                })?;
                return Ok(match &step.on_failure {
                    OnFailure::Fail => {
                        StepEnd::RunFailed(format!("step {} failed: {}", step.name, e.message))
                    }
                    OnFailure::Continue => StepEnd::Next(i + 1),
                    OnFailure::Goto(target) => match rec.plan.step_index(target) {
                        Some(t) => StepEnd::Next(t),
                        None => StepEnd::RunFailed(format!(
                            "step {}: on_failure goto {target:?}: no such step",
                            step.name
                        )),
                    },
                });
            }
        }
    }
}
