//! The power reconciler: carries out each node's [`PowerIntent`] through the node's BMC (the
//! guarded driver: per-BMC serialisation, retries of transient faults, failures logged as
//! node events) and reports it as `PowerApplied` (+ the observed `Power`).
//!
//! An intent is pending while its generation is newer than the one recorded in the store's
//! `power_applied` table. Every outcome is recorded, failures included: a failed intent is
//! tried again only when a newer generation arrives (the coordinator decides whether to ask
//! again; the guard already retried transient faults).

use std::collections::BTreeSet;
use std::sync::Arc;

use protocol::fleet::{BmcAccess, EventKind, PowerIntent};
use protocol::NodeId;

use super::{Context, ReconcileError, Reconciler, TaskFuture};
use crate::bmc::guard::NodeEventObserver;
use crate::bmc::{self, Bmc, BmcConfig, BmcError, BmcObserver, BmcRegistry, PowerAction};
use crate::store::Applied;

/// Gives the BMC of a node: `(access, observer of failures)` to a driver. The agent's is
/// [`connector`]; tests hand in simulators that keep their state between calls.
pub type Connector =
    Arc<dyn Fn(&BmcAccess, Arc<dyn BmcObserver>) -> Result<Arc<dyn Bmc>, BmcError> + Send + Sync>;

/// The agent's connector: [`bmc::connect_guarded`] with the `[bmc]` config and the agent-wide
/// registry (so the reconciler and the step executor take turns on one BMC).
pub fn connector(config: BmcConfig, registry: Arc<BmcRegistry>) -> Connector {
    Arc::new(move |access, observer| {
        bmc::connect_guarded(access, &config, &registry, observer)
            .map(|g| Arc::new(g) as Arc<dyn Bmc>)
    })
}

/// Most BMC power operations in flight at once: a whole rack asked to power on must not start
/// one `ipmitool` per node at the same moment on the agent's host.
pub const MAX_CONCURRENT: usize = 16;

/// Message of a node that has a power intent but no BMC access in the desired state.
pub const NO_BMC: &str = "the node has no BMC access in the desired state";

/// Carries out power intents. See the module doc.
pub struct PowerReconciler {
    ctx: Context,
    connect: Connector,
    permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for PowerReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerReconciler")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl PowerReconciler {
    /// A reconciler recording into `ctx`, reaching BMCs through `connect`.
    pub fn new(ctx: Context, connect: Connector) -> PowerReconciler {
        PowerReconciler {
            ctx,
            connect,
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
        }
    }
}

impl Reconciler for PowerReconciler {
    type Key = NodeId;
    const NAME: &'static str = "power";

    async fn pending(
        &mut self,
        busy: &BTreeSet<NodeId>,
    ) -> Result<Vec<(NodeId, TaskFuture)>, ReconcileError> {
        let (nodes, applied) = self
            .ctx
            .store
            .call(|s| Ok((s.nodes()?, s.power_applied()?)))
            .await?;
        let mut out = Vec::new();
        for node in nodes {
            let Some(intent) = node.power else { continue };
            let done = applied.get(&node.id).map(|a| a.generation);
            if done.is_some_and(|g| g >= intent.generation) || busy.contains(&node.id) {
                continue;
            }
            let (ctx, connect, permits) =
                (self.ctx.clone(), self.connect.clone(), self.permits.clone());
            let task = async move {
                // The semaphore is never closed, so acquiring only waits.
                let _permit = permits.acquire_owned().await.ok();
                carry_out(ctx, connect, node.id, node.bmc, intent).await
            };
            out.push((node.id, Box::pin(task) as TaskFuture));
        }
        Ok(out)
    }
}

/// Drives `node`'s BMC to `intent`, then records the outcome with its events.
///
/// Cancel-safe in effect: dropped before the record is committed, the intent stays pending and
/// is carried out again (power on/off is idempotent).
pub async fn carry_out(
    ctx: Context,
    connect: Connector,
    node: NodeId,
    access: Option<BmcAccess>,
    intent: PowerIntent,
) -> Result<(), ReconcileError> {
    let action = if intent.on {
        PowerAction::On
    } else {
        PowerAction::Off
    };
    let result = match &access {
        None => Err(NO_BMC.to_owned()),
        Some(access) => {
            let observer = Arc::new(NodeEventObserver {
                node,
                sink: Arc::new(ctx.clone()),
            });
            match connect(access, observer) {
                // Drivers return from on/off once the BMC reports the target state.
                Ok(b) => b.power(action).await.map_err(|e| crate::error_chain(&e)),
                Err(e) => Err(crate::error_chain(&e)),
            }
        }
    };
    let ok = result.is_ok();
    let message = result.err().unwrap_or_default();
    if ok {
        tracing::info!(%node, on = intent.on, generation = intent.generation, "power intent carried out");
    } else {
        tracing::warn!(%node, on = intent.on, generation = intent.generation, %message, "power intent failed");
    }
    let mut events = vec![EventKind::PowerApplied {
        node,
        generation: intent.generation,
        ok,
        message,
    }];
    if ok {
        events.push(EventKind::Power {
            node,
            on: intent.on,
        });
    }
    let applied = Applied {
        generation: intent.generation,
        ok,
        at: crate::unix_millis(),
    };
    ctx.store
        .call(move |s| s.record_power_applied(node, applied, events))
        .await?;
    (ctx.wake)();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use protocol::domain::{BmcDriver, BootTarget};
    use protocol::fleet::{Delta, RackDesiredState, RackNode};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::bmc::guard::{GuardedBmc, RetryPolicy};
    use crate::bmc::sim::SimBmc;
    use crate::bmc::PowerState;
    use crate::store::Store;

    fn node(n: u8, bmc: Option<&str>, power: Option<PowerIntent>) -> RackNode {
        RackNode {
            id: NodeId(uuid::Uuid::from_u128(n.into())),
            serial: format!("SN-{n}").parse().unwrap(),
            macs: vec![],
            boot_target: BootTarget::Discovery,
            static_ips: vec![],
            switch_ports: vec![],
            bmc: bmc.map(|a| BmcAccess {
                address: a.into(),
                driver: BmcDriver::Ipmi,
                username: Some("admin".into()),
                password: Some("pw".into()),
            }),
            revision: 1,
            power,
        }
    }

    fn on(generation: u64) -> Option<PowerIntent> {
        Some(PowerIntent {
            on: true,
            generation,
        })
    }

    fn off(generation: u64) -> Option<PowerIntent> {
        Some(PowerIntent {
            on: false,
            generation,
        })
    }

    /// Simulators by address, guarded with fast retries (2 retries).
    fn simulators(addresses: &[&str]) -> (BTreeMap<String, Arc<SimBmc>>, Connector) {
        let sims: BTreeMap<String, Arc<SimBmc>> = addresses
            .iter()
            .map(|a| ((*a).to_owned(), SimBmc::shared(a)))
            .collect();
        let registry = Arc::new(BmcRegistry::default());
        let map = sims.clone();
        let connect: Connector = Arc::new(move |access, observer| {
            let sim = map.get(&access.address).cloned().ok_or(BmcError::Config {
                address: access.address.clone(),
                message: "no such simulator".into(),
            })?;
            Ok(Arc::new(GuardedBmc::new(
                sim,
                &registry,
                RetryPolicy {
                    retries: 2,
                    backoff: Duration::from_millis(1),
                    backoff_max: Duration::from_millis(2),
                    attempt_timeout: Duration::from_millis(300),
                },
                Duration::ZERO,
                observer,
            )) as Arc<dyn Bmc>)
        });
        (sims, connect)
    }

    fn applied_events(store: &Store) -> Vec<EventKind> {
        store
            .pending(1000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .filter(|k| matches!(k, EventKind::PowerApplied { .. } | EventKind::Power { .. }))
            .collect()
    }

    async fn wait_for(store: &Store, n: usize) -> Vec<EventKind> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = applied_events(store);
            if ev.len() >= n {
                return ev;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiting for {n} events, have {ev:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn id(n: u8) -> NodeId {
        NodeId(uuid::Uuid::from_u128(n.into()))
    }

    #[tokio::test]
    async fn intents_are_carried_out_once_per_generation_and_failures_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let (sims, connect) = simulators(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        sims["10.0.0.3"].faults(|f| f.refuse_auth = true);
        store
            .apply_snapshot(&RackDesiredState {
                revision: 1,
                nodes: vec![
                    node(1, Some("10.0.0.1"), on(1)),
                    node(2, Some("10.0.0.2"), None),
                    node(3, Some("10.0.0.3"), on(1)),
                    node(4, None, off(7)),
                ],
                ports: vec![],
                runs: Vec::new(),
            })
            .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(super::super::run(
            PowerReconciler::new(Context::quiet(store.clone()), connect),
            store.clone(),
            Duration::from_millis(50),
            cancel.clone(),
        ));
        let events = wait_for(&store, 4).await;
        assert_eq!(
            sims["10.0.0.1"].power_status().await.unwrap(),
            PowerState::On
        );
        // Node 2 has no intent: its BMC is never touched.
        assert_eq!(sims["10.0.0.2"].calls(), 0);
        assert!(events.contains(&EventKind::PowerApplied {
            node: id(1),
            generation: 1,
            ok: true,
            message: String::new()
        }));
        assert!(events.contains(&EventKind::Power {
            node: id(1),
            on: true
        }));
        let failed = |n: u8| {
            events
                .iter()
                .find_map(|e| match e {
                    EventKind::PowerApplied {
                        node,
                        ok: false,
                        message,
                        generation,
                    } if *node == id(n) => Some((*generation, message.clone())),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no failure for node {n}: {events:?}"))
        };
        // The BMC's own words (the simulator's refusal) reach the report.
        let (g3, m3) = failed(3);
        assert_eq!(g3, 1);
        assert!(
            m3.contains("10.0.0.3") && m3.contains("authentication"),
            "{m3}"
        );
        assert_eq!(failed(4), (7, NO_BMC.to_owned()));
        // The failure was also logged as a node event by the guard's observer.
        assert!(store.pending(1000).unwrap().iter().any(|e| matches!(
            &e.kind,
            EventKind::Log { node, message } if *node == id(3) && message.contains("giving up")
        )));

        // Nothing is pending any more: not the success, not the failures (a fresh reconciler,
        // as after a restart, finds no work either).
        let (_, connect2) = simulators(&[]);
        let mut fresh = PowerReconciler::new(Context::quiet(store.clone()), connect2);
        assert!(fresh.pending(&BTreeSet::new()).await.unwrap().is_empty());
        assert_eq!(applied_events(&store).len(), 4);

        // A new generation (off) is carried out; a transient fault is retried by the guard.
        sims["10.0.0.1"].faults(|f| f.fail_next = 1);
        sims["10.0.0.3"].faults(|f| f.refuse_auth = false);
        store
            .apply_deltas(
                1,
                2,
                &[
                    Delta::UpsertNode(node(1, Some("10.0.0.1"), off(2))),
                    Delta::UpsertNode(node(3, Some("10.0.0.3"), on(2))),
                ],
            )
            .unwrap();
        let events = wait_for(&store, 8).await;
        assert_eq!(
            sims["10.0.0.1"].power_status().await.unwrap(),
            PowerState::Off
        );
        assert_eq!(
            sims["10.0.0.3"].power_status().await.unwrap(),
            PowerState::On
        );
        assert!(events.contains(&EventKind::PowerApplied {
            node: id(1),
            generation: 2,
            ok: true,
            message: String::new()
        }));
        assert!(events.contains(&EventKind::Power {
            node: id(1),
            on: false
        }));
        let applied = store.power_applied().unwrap();
        assert_eq!(applied[&id(1)].generation, 2);
        assert!(applied[&id(4)].generation == 7 && !applied[&id(4)].ok);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_unresponsive_bmc_is_reported_with_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let (sims, connect) = simulators(&["10.0.0.9"]);
        sims["10.0.0.9"].faults(|f| f.unresponsive = true);
        let ctx = Context::quiet(store.clone());
        carry_out(
            ctx,
            connect,
            id(9),
            node(9, Some("10.0.0.9"), None).bmc,
            PowerIntent {
                on: true,
                generation: 3,
            },
        )
        .await
        .unwrap();
        let events = applied_events(&store);
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            EventKind::PowerApplied {
                generation: 3,
                ok: false,
                message,
                ..
            } => assert!(message.contains("no answer within"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(!store.power_applied().unwrap()[&id(9)].ok);
    }
}
