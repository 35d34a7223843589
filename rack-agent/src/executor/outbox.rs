//! The agent's [`RunSink`]: run status changes and step logs become
//! [`EventKind::RunStatus`] / [`EventKind::StepLog`] events in the store's durable outbox.
//!
//! The executor must not block when it reports, and every outbox write waits for fsync, so
//! [`OutboxSink::emit`] only queues in memory and one writer task ([`run`]) moves what is
//! queued into the outbox, one transaction per batch. While a write is in flight the next
//! batch gathers, and a batch is coalesced before it is written: a status carries the whole
//! run status and the coordinators keep the latest, so of several queued statuses of one run
//! only the last goes out — except final ones, which are never dropped.
//!
//! What is queued in memory when the agent dies is lost; the statuses are not, because the
//! run reconciler reports the current status of every assigned run once at start
//! ([`super::reconcile`]). Log lines stay in the executor's own database either way.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use protocol::fleet::EventKind;

use super::{RunEvent, RunSink};
use crate::store::{Store, StoreError, MAX_EVENT_BYTES};

/// Longest log line carried in a [`EventKind::StepLog`]; longer ones are cut (the executor's
/// own log keeps them whole).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Bytes of lines per [`EventKind::StepLog`] event: far below [`MAX_EVENT_BYTES`].
pub const MAX_LOG_EVENT_BYTES: usize = MAX_EVENT_BYTES / 4;
/// Events per outbox transaction.
const MAX_BATCH: usize = 512;
/// Pause before retrying a failed outbox write.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Queues run events for the writer task. Cheap and non-blocking.
#[derive(Debug, Default)]
pub struct OutboxSink {
    queue: Mutex<Vec<RunEvent>>,
    ready: Notify,
}

impl RunSink for OutboxSink {
    fn emit(&self, events: Vec<RunEvent>) {
        if events.is_empty() {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(events);
        self.ready.notify_one();
    }
}

impl OutboxSink {
    fn take(&self) -> Vec<RunEvent> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts a batch that could not be written back in front of what arrived since.
    fn put_back(&self, mut batch: Vec<RunEvent>) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        batch.append(&mut q);
        *q = batch;
    }
}

/// Drops every status of a run that a later status of the same run in `batch` supersedes,
/// unless it is final; everything else keeps its order.
pub fn coalesce(batch: Vec<RunEvent>) -> Vec<RunEvent> {
    let mut seen_later = BTreeSet::new();
    let mut keep = vec![true; batch.len()];
    for (i, e) in batch.iter().enumerate().rev() {
        if let RunEvent::Status { run, status, .. } = e {
            if !seen_later.insert(run.as_str()) && !status.state.is_final() {
                keep[i] = false;
            }
        }
    }
    batch
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

/// The outbox events of run events: statuses one to one, log lines cut to
/// [`MAX_LINE_BYTES`] and split into events of at most [`MAX_LOG_EVENT_BYTES`].
pub fn to_events(batch: Vec<RunEvent>) -> Vec<EventKind> {
    let mut out = Vec::with_capacity(batch.len());
    for e in batch {
        match e {
            RunEvent::Status { run, node, status } => {
                out.push(EventKind::RunStatus { run, node, status })
            }
            RunEvent::Log {
                run,
                node,
                step,
                lines,
            } => {
                let mut chunk = Vec::new();
                let mut bytes = 0;
                for line in lines {
                    let line = cut(line);
                    if bytes + line.len() > MAX_LOG_EVENT_BYTES && !chunk.is_empty() {
                        out.push(EventKind::StepLog {
                            run: run.clone(),
                            node,
                            step: step.clone(),
                            lines: std::mem::take(&mut chunk),
                        });
                        bytes = 0;
                    }
                    bytes += line.len();
                    chunk.push(line);
                }
                if !chunk.is_empty() {
                    out.push(EventKind::StepLog {
                        run,
                        node,
                        step,
                        lines: chunk,
                    });
                }
            }
        }
    }
    out
}

fn cut(mut line: String) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push_str(" [line cut]");
    line
}

/// The writer task: moves queued run events into the outbox until `stop`, then writes what is
/// still queued once more. `wake` is called after events were committed (the agent pokes its
/// fleet link).
pub async fn run(
    sink: Arc<OutboxSink>,
    store: Store,
    wake: Arc<dyn Fn() + Send + Sync>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = sink.ready.notified() => {}
            () = stop.cancelled() => break,
        }
        while !flush(&sink, &store, &wake).await {
            tokio::select! {
                () = tokio::time::sleep(RETRY_AFTER) => {}
                () = stop.cancelled() => break,
            }
        }
    }
    if !flush(&sink, &store, &wake).await {
        tracing::warn!(
            "run events still queued at shutdown were not written; statuses are reported again \
             at the next start"
        );
    }
}

/// Writes everything queued; false when a write failed (the batch is queued again).
async fn flush(sink: &OutboxSink, store: &Store, wake: &Arc<dyn Fn() + Send + Sync>) -> bool {
    loop {
        let batch = sink.take();
        if batch.is_empty() {
            return true;
        }
        let batch = coalesce(batch);
        let kinds = to_events(batch.clone());
        let mut rest = kinds.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(MAX_BATCH));
            rest = later;
            let now = now.to_vec();
            match store.call(move |s| write(s, now)).await {
                Ok(()) => wake(),
                Err(e) => {
                    tracing::error!(
                        error = %crate::error_chain(&e),
                        "could not queue run events in the outbox; retrying"
                    );
                    // Already written chunks would go out twice; only statuses (idempotent,
                    // latest wins) and a few log lines can repeat, and only on this path.
                    sink.put_back(batch);
                    return false;
                }
            }
        }
    }
}

/// One transaction; an event too large for any frame is logged and left out.
fn write(store: &Store, kinds: Vec<EventKind>) -> Result<(), StoreError> {
    match store.enqueue_many(kinds.clone()) {
        Err(StoreError::EventTooLarge { .. }) => {
            for k in kinds {
                match store.enqueue(k) {
                    Err(e @ StoreError::EventTooLarge { .. }) => {
                        tracing::error!(error = %e, "run event too large for the outbox; dropped")
                    }
                    other => {
                        other?;
                    }
                }
            }
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use protocol::workflow::{RunPlan, RunState, RunStatus};
    use protocol::NodeId;

    use super::*;

    fn status(run: &str, state: RunState) -> RunEvent {
        let mut status = RunStatus::new(&RunPlan {
            template: "t".into(),
            version: 1,
            params: Default::default(),
            steps: Vec::new(),
        });
        status.state = state;
        RunEvent::Status {
            run: run.into(),
            node: NodeId(uuid_nil()),
            status,
        }
    }

    fn uuid_nil() -> uuid::Uuid {
        uuid::Uuid::nil()
    }

    fn log(run: &str, lines: Vec<String>) -> RunEvent {
        RunEvent::Log {
            run: run.into(),
            node: NodeId(uuid_nil()),
            step: "s".into(),
            lines,
        }
    }

    #[test]
    fn only_the_latest_status_of_a_run_and_every_final_one_stay() {
        let batch = vec![
            status("a", RunState::Pending),
            status("b", RunState::Running),
            log("a", vec!["x".into()]),
            status("a", RunState::Running),
            status("a", RunState::Failed),
            status("b", RunState::Paused),
        ];
        assert_eq!(
            coalesce(batch),
            vec![
                log("a", vec!["x".into()]),
                status("a", RunState::Failed),
                status("b", RunState::Paused),
            ]
        );
        // A final status followed by a later one (a cancel that lost a race) stays.
        let batch = vec![
            status("a", RunState::Succeeded),
            status("a", RunState::Cancelled),
        ];
        assert_eq!(coalesce(batch.clone()), batch);
    }

    #[test]
    fn long_logs_are_cut_and_split() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let many: Vec<String> = (0..40).map(|_| "y".repeat(MAX_LINE_BYTES)).collect();
        let mut lines = vec![long];
        lines.extend(many);
        let events = to_events(vec![log("a", lines)]);
        assert!(events.len() >= 3, "{}", events.len());
        let mut total = 0;
        for e in &events {
            let EventKind::StepLog { lines, .. } = e else {
                panic!("{e:?}")
            };
            let bytes: usize = lines.iter().map(String::len).sum();
            assert!(bytes <= MAX_LOG_EVENT_BYTES);
            assert!(lines.iter().all(|l| l.len() <= MAX_LINE_BYTES + 16));
            total += lines.len();
        }
        assert_eq!(total, 41);
        let EventKind::StepLog { lines, .. } = &events[0] else {
            panic!()
        };
        assert!(lines[0].ends_with("[line cut]"));
    }

    #[tokio::test]
    async fn the_writer_queues_events_durably() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let sink = Arc::new(OutboxSink::default());
        let stop = CancellationToken::new();
        let woken = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let w = woken.clone();
        let task = tokio::spawn(run(
            sink.clone(),
            store.clone(),
            Arc::new(move || {
                w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
            stop.clone(),
        ));
        sink.emit(vec![
            status("a", RunState::Running),
            log("a", vec!["hello".into()]),
        ]);
        // Emitted right before the stop: the final flush writes it.
        stop.cancel();
        sink.emit(vec![status("a", RunState::Succeeded)]);
        task.await.unwrap();
        let kinds: Vec<EventKind> = store
            .pending(100)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(matches!(
            kinds.last(),
            Some(EventKind::RunStatus { status, .. }) if status.state == RunState::Succeeded
        ));
        assert!(kinds
            .iter()
            .any(|k| matches!(k, EventKind::StepLog { lines, .. } if lines == &["hello"])));
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }
}
