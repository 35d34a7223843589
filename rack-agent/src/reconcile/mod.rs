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
/// pending and are carried out again after a restart).
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
            () = tokio::time::sleep(interval) => {}
            Some(done) = tasks.join_next_with_id() => {
                let (id, result) = match done {
                    Ok((id, result)) => (id, result),
                    Err(e) => {
                        tracing::error!(reconciler = R::NAME, error = %e, "reconciler task failed");
                        (e.id(), Ok(()))
                    }
                };
                if let Some(key) = keys.remove(&id) {
                    if let Err(e) = result {
                        tracing::error!(
                            reconciler = R::NAME,
                            ?key,
                            error = %crate::error_chain(&e),
                            "could not record an outcome; the intent stays pending"
                        );
                    }
                    busy.remove(&key);
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
