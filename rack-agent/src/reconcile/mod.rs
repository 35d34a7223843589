//! Reconcilers that make the rack match its desired state: node power through the BMCs
//! ([`power`]) and switch ports through the switch drivers ([`ports`]) (issue 7).
//!
//! Both follow one pattern: an intent carries a generation; the store records the last
//! generation acted on (and whether it worked); an intent whose generation is newer is pending.
//! A pass looks for pending intents and starts one task per unit of hardware that is not busy
//! already (a node's BMC, a switch), so a slow BMC never holds up a switch batch or another
//! node. Each task records its outcome and queues its events in ONE store transaction: after a
//! crash an intent is either done and reported, or carried out again (power and port changes
//! are idempotent), never reported twice. Passes run when the desired state changes
//! ([`Store::subscribe`]), when a task ends (a newer generation may have arrived meanwhile),
//! and every [`RECONCILE_INTERVAL`] as a backstop.

pub mod ports;
pub mod power;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use protocol::fleet::EventKind;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::agent::{Hardware, Shared};
use crate::boot::EventSink;
use crate::store::{Store, StoreError};

/// How often a reconciler looks for pending intents without being poked.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

/// Why a reconciler pass or task could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading intents or recording an outcome failed; the intent stays pending.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where reconcilers read intents and record outcomes: the store, and a wake-up for the fleet
/// link once events are queued.
#[derive(Clone)]
pub struct Context {
    /// The agent's store.
    pub store: Store,
    /// Called after events were queued (the agent pokes its fleet link).
    pub wake: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context whose wake-up does nothing (tests read the outbox themselves).
    pub fn quiet(store: Store) -> Context {
        Context {
            store,
            wake: Arc::new(|| {}),
        }
    }
}

/// BMC failure logs and other side events go straight to the durable outbox.
impl EventSink for Context {
    fn emit(&self, kinds: Vec<EventKind>) {
        let n = kinds.len();
        match self.store.enqueue_many(kinds) {
            Ok(_) => (self.wake)(),
            Err(e) => tracing::error!(
                events = n,
                error = %crate::error_chain(&e),
                "could not queue reconciler events; they are lost"
            ),
        }
    }
}

/// One reconciler: finds pending work and runs it, one task per busy key at most.
pub(crate) trait Reconciler: Send + 'static {
    /// What a task is keyed by (a node, a switch).
    type Key: Ord + Clone + Send + std::fmt::Debug + 'static;
    /// Name for logs.
    const NAME: &'static str;

    /// Pending work, skipping keys in `busy`: (key, task) pairs.
    fn pending(
        &mut self,
        busy: &BTreeSet<Self::Key>,
    ) -> impl Future<Output = Result<Vec<(Self::Key, TaskFuture)>, ReconcileError>> + Send;
}

/// A task of a reconciler.
pub(crate) type TaskFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<(), ReconcileError>> + Send>>;

/// Runs `r` until `cancel`: a pass at start, on every desired-state change, after every task
/// and every `interval`. Tasks still running at cancellation are dropped (their intents stay
/// pending and are carried out again after a restart). A key whose task failed to record its
/// outcome (or panicked) rests until the next tick, so a failing disk does not turn into a
/// tight loop of BMC or switch operations.
pub(crate) async fn run<R: Reconciler>(
    mut r: R,
    store: Store,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut changes = store.subscribe();
    let mut tasks: JoinSet<Result<(), ReconcileError>> = JoinSet::new();
    // Which key each task works for, also when it panics.
    let mut keys: HashMap<tokio::task::Id, R::Key> = HashMap::new();
    let mut busy = BTreeSet::new();
    let mut resting = BTreeSet::new();
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    // Every wake-up below is a reason for a pass.
    loop {
        match r.pending(&busy).await {
            Ok(work) => {
                for (key, fut) in work {
                    busy.insert(key.clone());
                    let handle = tasks.spawn(fut);
                    keys.insert(handle.id(), key);
                }
            }
            Err(e) => tracing::error!(
                reconciler = R::NAME,
                error = %crate::error_chain(&e),
                "could not look for pending intents; retrying on the next pass"
            ),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = changes.changed() => {
                // The sender lives as long as the store: an error cannot happen while we hold it.
                if changed.is_err() {
                    break;
                }
            }
            _ = timer.tick() => {
                for key in std::mem::take(&mut resting) {
                    busy.remove(&key);
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                let (id, ok) = match done {
                    Ok((id, Ok(()))) => (id, true),
                    Ok((id, Err(e))) => {
                        tracing::error!(
                            reconciler = R::NAME,
                            key = ?keys.get(&id),
                            error = %crate::error_chain(&e),
                            "could not record an outcome; the intent stays pending"
                        );
                        (id, false)
                    }
                    Err(e) => {
                        tracing::error!(reconciler = R::NAME, error = %e, "reconciler task failed");
                        (e.id(), false)
                    }
                };
                if let Some(key) = keys.remove(&id) {
                    if ok {
                        busy.remove(&key);
                    } else {
                        resting.insert(key);
                    }
                }
            }
        }
    }
    tasks.shutdown().await;
}

/// Starts the power and port reconcilers of a running agent under `cancel`.
pub fn spawn(
    shared: &Arc<Shared>,
    hardware: &Hardware,
    cancel: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let wake_shared = shared.clone();
    let ctx = Context {
        store: shared.store.clone(),
        wake: Arc::new(move || wake_shared.outbox_ready.notify_one()),
    };
    let power = power::PowerReconciler::new(
        ctx.clone(),
        power::connector(shared.config.bmc.clone(), hardware.bmcs.clone()),
    );
    let ports = ports::PortReconciler::new(ctx.clone(), hardware.switches.clone());
    vec![
        tokio::spawn(run(
            power,
            ctx.store.clone(),
            RECONCILE_INTERVAL,
            cancel.clone(),
        )),
        tokio::spawn(run(
            ports,
            ctx.store.clone(),
            RECONCILE_INTERVAL,
            cancel.clone(),
        )),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use protocol::fleet::RackDesiredState;

    use super::*;

    /// One key whose task always fails to record; counts passes and task starts.
    struct Failing {
        passes: Arc<AtomicU32>,
        starts: Arc<AtomicU32>,
        store: Store,
    }

    impl Reconciler for Failing {
        type Key = u8;
        const NAME: &'static str = "failing";

        async fn pending(
            &mut self,
            busy: &BTreeSet<u8>,
        ) -> Result<Vec<(u8, TaskFuture)>, ReconcileError> {
            self.passes.fetch_add(1, Ordering::SeqCst);
            if busy.contains(&1) {
                return Ok(Vec::new());
            }
            let (starts, path) = (self.starts.clone(), self.store.path().to_owned());
            let task = async move {
                starts.fetch_add(1, Ordering::SeqCst);
                Err(ReconcileError::Store(StoreError::Interrupted { path }))
            };
            Ok(vec![(1, Box::pin(task) as TaskFuture)])
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_key_rests_until_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let (passes, starts) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let cancel = CancellationToken::new();
        let r = Failing {
            passes: passes.clone(),
            starts: starts.clone(),
            store: store.clone(),
        };
        // A tick far away: only pokes cause passes during the test.
        let task = tokio::spawn(run(
            r,
            store.clone(),
            Duration::from_secs(3600),
            cancel.clone(),
        ));
        until("the first task", || starts.load(Ordering::SeqCst) == 1).await;
        // The failed task's end causes a pass; desired-state changes cause more. None starts
        // the resting key again.
        until("the pass after the failure", || {
            passes.load(Ordering::SeqCst) >= 2
        })
        .await;
        for revision in 1..=3 {
            let before = passes.load(Ordering::SeqCst);
            store
                .apply_snapshot(&RackDesiredState {
                    revision,
                    ..RackDesiredState::default()
                })
                .unwrap();
            until("a pass after the change", || {
                passes.load(Ordering::SeqCst) > before
            })
            .await;
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        cancel.cancel();
        task.await.unwrap();
    }
}
