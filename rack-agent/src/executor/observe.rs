//! What the executor learns from the boot services: check-ins (node facts), node-agent log
//! lines of its actions (step logs and progress), leases and named node events. The
//! [`Tap`] forwards every event to the agent's sink and copies the interesting ones to the
//! executor's observation task, which records them.
//!
//! Facts the executor adds under `facts.metalfleet`: `checkin_at` (unix millis of the last
//! check-in), `events.<name>` (unix millis of the last report of a named event). Leases land
//! in `facts.lease` (`{mac, ip}`).
//!
//! A named node event reaches the agent as a node-agent log line without an action,
//! `metalfleet.event <name>` (an installer's late command can POST it to
//! `/node/v1/logs`), or through [`super::Executor::report_event`].

use std::sync::Arc;

use tokio::sync::mpsc;

use protocol::fleet::EventKind;
use protocol::workflow::Progress;
use protocol::NodeId;

use super::{steps, ExecutorError, RunEvent, Shared};
use crate::boot::EventSink;

/// How often a progress report that repeats the stored percent is recorded.
pub const PROGRESS_EVERY_MS: i64 = 10_000;

/// Prefix of a node-agent log line that reports a named node event.
pub const EVENT_PREFIX: &str = "metalfleet.event ";

/// The executor's [`EventSink`] wrapper (see [`super::tap`]).
pub struct Tap {
    pub(super) inner: Arc<dyn EventSink>,
    pub(super) tx: mpsc::UnboundedSender<EventKind>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").finish_non_exhaustive()
    }
}

impl EventSink for Tap {
    fn emit(&self, kinds: Vec<EventKind>) {
        for k in &kinds {
            if matches!(
                k,
                EventKind::CheckIn { .. } | EventKind::Log { .. } | EventKind::Lease { .. }
            ) {
                // A closed channel means the executor is gone; the agent's sink still gets it.
                let _ = self.tx.send(k.clone());
            }
        }
        self.inner.emit(kinds);
    }
}

/// Records a named node event in the node's facts.
pub(super) fn record_event(sh: &Shared, node: NodeId, name: &str) -> Result<(), ExecutorError> {
    let now = crate::unix_millis();
    sh.update_facts(node, |f| {
        f["metalfleet"]["events"][name] = serde_json::json!(now);
    })?;
    Ok(())
}

/// The observation task: records what the tap copies, until the executor shuts down.
pub(super) async fn run(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<EventKind>) {
    while let Some(first) = tokio::select! {
        e = rx.recv() => e,
        _ = sh.cancel.cancelled() => None,
    } {
        // Batch what is already queued: one transaction per step's lines.
        let mut batch = vec![first];
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
            if batch.len() >= 512 {
                break;
            }
        }
        if let Err(e) = record(&sh, batch) {
            tracing::warn!(error = %crate::error_chain(&e), "executor could not record observations");
        }
    }
}

fn record(sh: &Shared, batch: Vec<EventKind>) -> Result<(), ExecutorError> {
    // (run, step index) -> lines, in arrival order.
    let mut lines: Vec<((String, usize), Vec<String>)> = Vec::new();
    for e in batch {
        match e {
            EventKind::CheckIn { macs, facts, .. } => {
                let Some(node) = macs.iter().find_map(|m| sh.hw.nodes.node_by_mac(m)) else {
                    continue;
                };
                let now = crate::unix_millis();
                sh.update_facts(node.id, |f| {
                    if let (Some(obj), serde_json::Value::Object(new)) =
                        (f.as_object_mut(), facts.0)
                    {
                        for (k, v) in new {
                            // The executor's own keys are not the node's to overwrite.
                            if k != "metalfleet" {
                                obj.insert(k, v);
                            }
                        }
                    }
                    f["metalfleet"]["checkin_at"] = serde_json::json!(now);
                })?;
            }
            EventKind::Lease { mac, ip } => {
                if let Some(node) = sh.hw.nodes.node_by_mac(&mac) {
                    sh.update_facts(node.id, |f| {
                        f["lease"] =
                            serde_json::json!({"mac": mac.to_string(), "ip": ip.to_string()});
                    })?;
                }
            }
            EventKind::Log { node, message } => {
                if let Some(name) = message.strip_prefix(EVENT_PREFIX) {
                    record_event(sh, node, name.trim())?;
                    continue;
                }
                let Some((action, line)) = split_action(&message) else {
                    continue;
                };
                let Some((run, step)) = steps::parse_action_id(action) else {
                    continue;
                };
                let key = (run.to_owned(), step);
                match lines.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, l)) => l.push(line.to_owned()),
                    None => lines.push((key, vec![line.to_owned()])),
                }
            }
            _ => {}
        }
    }
    for ((run, step), l) in lines {
        append_node_lines(sh, &run, step, l)?;
    }
    Ok(())
}

/// `[id] line` as the node API formats action log lines.
fn split_action(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix('[')?;
    let (id, line) = rest.split_once("] ")?;
    Some((id, line))
}

/// Stores a step's log lines, reports them, and updates the step's progress when a line
/// reports it.
pub(super) fn append_step_lines(
    sh: &Shared,
    run: &str,
    step: usize,
    lines: Vec<String>,
) -> Result<(), ExecutorError> {
    append_lines(sh, run, step, lines, false)
}

/// [`append_step_lines`] for lines a node-agent streamed: a `node.run` with `capture_logs:
/// false` keeps none of them (its progress still counts).
fn append_node_lines(
    sh: &Shared,
    run: &str,
    step: usize,
    lines: Vec<String>,
) -> Result<(), ExecutorError> {
    append_lines(sh, run, step, lines, true)
}

fn append_lines(
    sh: &Shared,
    run: &str,
    step: usize,
    lines: Vec<String>,
    from_node: bool,
) -> Result<(), ExecutorError> {
    let Some(rec) = sh.journal.run(run)? else {
        return Ok(());
    };
    let Some(s) = rec.plan.steps.get(step) else {
        return Ok(());
    };
    let name = s.name.clone();
    let keep = !(from_node
        && matches!(&s.kind, protocol::workflow::StepKind::NodeRun(r) if !r.capture_logs));
    let progress = lines.iter().rev().find_map(|l| parse_progress(l));
    let lines = if keep { lines } else { Vec::new() };
    sh.journal
        .append_logs(run, super::step_key(step), &lines, sh.config.max_log_lines)?;
    let mut events = Vec::new();
    if !lines.is_empty() {
        events.push(RunEvent::Log {
            run: run.to_owned(),
            node: rec.node,
            step: name,
            lines,
        });
    }
    // A stress tool may print progress every second for days: a report that only repeats
    // the stored percent is recorded at most every PROGRESS_EVERY_MS.
    let now = crate::unix_millis();
    let worth = |old: Option<&Progress>, percent: u8| {
        old.is_none_or(|p| p.percent != percent || now - p.at >= PROGRESS_EVERY_MS)
    };
    let stored = rec.status.steps.get(step).and_then(|s| s.progress.as_ref());
    let progress = progress.filter(|(percent, _)| worth(stored, *percent));
    if let Some((percent, message)) = progress {
        let mut changed = false;
        let updated = sh.journal.update_run(run, |r| {
            if let Some(st) = r.status.steps.get_mut(step) {
                if st.state == protocol::workflow::StepState::Running {
                    st.progress = Some(Progress {
                        percent,
                        message,
                        at: crate::unix_millis(),
                    });
                    changed = true;
                }
            }
        })?;
        if let (true, Some(r)) = (changed, updated) {
            events.push(RunEvent::Status {
                run: run.to_owned(),
                node: r.node,
                status: r.status,
            });
        }
    }
    if !events.is_empty() {
        sh.sink.emit(events);
        sh.poke();
    }
    Ok(())
}

/// Progress a long step reports in its output: a line `progress: 42% what it is doing`
/// (`progress` in any case, the colon and `%` optional, a fraction allowed: `progress 31.5`).
pub fn parse_progress(line: &str) -> Option<(u8, String)> {
    let t = line.trim();
    let head = t.get(..8)?;
    if !head.eq_ignore_ascii_case("progress") {
        return None;
    }
    let rest = t[8..].trim_start().trim_start_matches(':').trim_start();
    let num_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if num_len == 0 {
        return None;
    }
    let value: f64 = rest[..num_len].parse().ok()?;
    let rest = rest[num_len..].trim_start_matches('%').trim();
    let percent = value.clamp(0.0, 100.0) as u8;
    Some((percent, rest.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("progress: 42% fio 31h of 72h"),
            Some((42, "fio 31h of 72h".into()))
        );
        assert_eq!(parse_progress("PROGRESS 31.5"), Some((31, String::new())));
        assert_eq!(parse_progress("  Progress 250% x"), Some((100, "x".into())));
        assert_eq!(parse_progress("progress: none"), None);
        assert_eq!(parse_progress("prog"), None);
        assert_eq!(parse_progress("no progress: 5%"), None);
    }

    #[test]
    fn action_lines() {
        assert_eq!(
            split_action("[r1/0/1/1] hello] x"),
            Some(("r1/0/1/1", "hello] x"))
        );
        assert_eq!(split_action("no action"), None);
    }
}
