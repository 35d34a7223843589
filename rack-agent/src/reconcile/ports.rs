//! The switch-port reconciler: applies pending [`PortIntent`]s grouped per switch, each
//! switch's pending ports in ONE driver batch (one OVSDB transaction, one CLI session), read
//! back by the driver, and reports one `PortApplied` per port with what the switch shows.
//!
//! A port is pending while its intent's generation is newer than the one recorded in the
//! store's `ports_applied` table. Outcomes, failures included, are recorded with their events
//! in one transaction; a failed port is tried again only when a newer generation arrives.
//! Within one attempt a batch is narrowed rather than failed whole: a port the switch rejects
//! by name (unknown, invalid, reads back wrong) fails alone and the rest is applied again
//! (every change is idempotent); transient faults (timeouts, lost connections) are retried
//! [`PORT_RETRIES`] times with backoff before the whole batch is reported failed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::fleet::{EventKind, PortConfig as WantedConfig, PortIntent};

use super::{Context, ReconcileError, Reconciler, TaskFuture};
use crate::agent::Switches;
use crate::store::Applied;
use crate::switch::{
    validate_batch, PortChange, PortConfig, PortMode, SwitchDriver, SwitchError, Vlan,
};

/// Retries of a batch after a transient switch fault.
pub const PORT_RETRIES: u32 = 3;
/// Delay before the first retry; doubled per retry.
pub const PORT_BACKOFF: Duration = Duration::from_millis(500);

/// Applies port intents. See the module doc.
#[derive(Debug)]
pub struct PortReconciler {
    ctx: Context,
    switches: Switches,
    backoff: Duration,
}

impl PortReconciler {
    /// A reconciler recording into `ctx`, driving the agent's configured `switches`.
    pub fn new(ctx: Context, switches: Switches) -> PortReconciler {
        PortReconciler {
            ctx,
            switches,
            backoff: PORT_BACKOFF,
        }
    }

    /// The same with another retry delay (tests).
    pub fn with_backoff(mut self, backoff: Duration) -> PortReconciler {
        self.backoff = backoff;
        self
    }
}

impl Reconciler for PortReconciler {
    type Key = String;
    const NAME: &'static str = "ports";

    async fn pending(
        &mut self,
        busy: &BTreeSet<String>,
    ) -> Result<Vec<(String, TaskFuture)>, ReconcileError> {
        let (intents, applied) = self
            .ctx
            .store
            .call(|s| Ok((s.ports()?, s.ports_applied()?)))
            .await?;
        let mut per_switch: BTreeMap<String, Vec<PortIntent>> = BTreeMap::new();
        for intent in intents {
            let key = (intent.switch.clone(), intent.port.clone());
            let done = applied.get(&key).map(|a| a.generation);
            if done.is_some_and(|g| g >= intent.generation) || busy.contains(&intent.switch) {
                continue;
            }
            per_switch
                .entry(intent.switch.clone())
                .or_default()
                .push(intent);
        }
        Ok(per_switch
            .into_iter()
            .map(|(switch, intents)| {
                let task = apply_switch(
                    self.ctx.clone(),
                    self.switches.get(&switch).cloned(),
                    switch.clone(),
                    intents,
                    self.backoff,
                );
                (switch, Box::pin(task) as TaskFuture)
            })
            .collect())
    }
}

/// The switch model of a wanted port config (VLAN ids validated).
pub fn wanted_mode(config: &WantedConfig) -> Result<PortMode, SwitchError> {
    Ok(match config {
        WantedConfig::Unconfigured => PortMode::Unconfigured,
        WantedConfig::Access { vlan } => PortMode::Access {
            vlan: Vlan::new(*vlan)?,
        },
        WantedConfig::Trunk { native, allowed } => PortMode::Trunk {
            native: native.map(Vlan::new).transpose()?,
            allowed: allowed
                .iter()
                .map(|v| Vlan::new(*v))
                .collect::<Result<_, _>>()?,
        },
    })
}

/// The protocol shape of a port mode read from a switch.
pub fn observed_config(mode: &PortMode) -> WantedConfig {
    match mode {
        PortMode::Unconfigured => WantedConfig::Unconfigured,
        PortMode::Access { vlan } => WantedConfig::Access { vlan: vlan.get() },
        PortMode::Trunk { native, allowed } => WantedConfig::Trunk {
            native: native.map(Vlan::get),
            allowed: allowed.iter().map(|v| v.get()).collect(),
        },
    }
}

/// One port's outcome.
struct Outcome {
    ok: bool,
    observed: Option<WantedConfig>,
    message: String,
}

/// Applies `intents` (all on `switch`, none applied yet) as one batch and records the outcome
/// of every port with its `PortApplied` event.
///
/// Not cancel-safe in effect (a driver batch may be left applied but unrecorded); that is
/// harmless: the intents stay pending and the same configuration is applied again.
pub async fn apply_switch(
    ctx: Context,
    driver: Option<Arc<dyn SwitchDriver>>,
    switch: String,
    intents: Vec<PortIntent>,
    backoff: Duration,
) -> Result<(), ReconcileError> {
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    match driver {
        None => {
            let message = format!(
                "switch {switch:?} is not configured on this rack agent (no [[switches]] entry \
                 with that name)"
            );
            for i in &intents {
                outcomes.insert(i.port.clone(), failed(None, message.clone()));
            }
        }
        Some(driver) => {
            let mut batch: Vec<PortChange> = Vec::new();
            for i in &intents {
                let change = wanted_mode(&i.config)
                    .map(|mode| PortConfig::new(i.port.clone(), mode))
                    .and_then(|c| validate_batch(std::slice::from_ref(&c)).map(|()| c));
                match change {
                    Ok(c) => batch.push(c),
                    Err(e) => {
                        let message = format!("port {} on switch {switch}: {e}", i.port);
                        outcomes.insert(i.port.clone(), failed(None, message));
                    }
                }
            }
            apply_batch(driver.as_ref(), batch, backoff, &mut outcomes).await;
        }
    }
    let at = crate::unix_millis();
    let mut records = Vec::with_capacity(intents.len());
    let mut events = Vec::with_capacity(intents.len());
    for i in intents {
        let Some(o) = outcomes.remove(&i.port) else {
            continue;
        };
        if o.ok {
            tracing::info!(%switch, port = %i.port, generation = i.generation, config = %i.config, "port intent applied");
        } else {
            tracing::warn!(%switch, port = %i.port, generation = i.generation, message = %o.message, "port intent failed");
        }
        records.push((
            switch.clone(),
            i.port.clone(),
            Applied {
                generation: i.generation,
                ok: o.ok,
                at,
            },
        ));
        events.push(EventKind::PortApplied {
            switch: switch.clone(),
            port: i.port,
            generation: i.generation,
            ok: o.ok,
            observed: o.observed,
            message: o.message,
        });
    }
    ctx.store
        .call(move |s| s.record_ports_applied(&records, events))
        .await?;
    (ctx.wake)();
    Ok(())
}

fn failed(observed: Option<WantedConfig>, message: String) -> Outcome {
    Outcome {
        ok: false,
        observed,
        message,
    }
}

/// Applies `batch` on `driver`, narrowing it when the switch names a bad port and retrying
/// transient faults; fills `outcomes` for every port of the batch.
async fn apply_batch(
    driver: &dyn SwitchDriver,
    mut batch: Vec<PortChange>,
    backoff: Duration,
    outcomes: &mut BTreeMap<String, Outcome>,
) {
    let mut retries = 0u32;
    while !batch.is_empty() {
        let err = match driver.apply(&batch).await {
            Ok(read) => {
                for r in read {
                    outcomes.insert(
                        r.port.clone(),
                        Outcome {
                            ok: true,
                            observed: Some(observed_config(&r.mode)),
                            message: String::new(),
                        },
                    );
                }
                return;
            }
            Err(e) => e,
        };
        let message = crate::error_chain(&err);
        let named = match &err {
            SwitchError::UnknownPort { port, .. } | SwitchError::InvalidChange { port, .. } => {
                Some((port.clone(), None))
            }
            SwitchError::Mismatch { port, found, .. } => {
                Some((port.clone(), Some(observed_config(found))))
            }
            _ => None,
        };
        if let Some((port, observed)) = named {
            if let Some(pos) = batch.iter().position(|c| c.port == port) {
                batch.remove(pos);
                outcomes.insert(port, failed(observed, message));
                continue;
            }
        }
        if err.is_transient() && retries < PORT_RETRIES {
            retries += 1;
            let delay = backoff.saturating_mul(1 << (retries - 1));
            tracing::warn!(switch = driver.name(), retry = retries, ?delay, error = %message, "switch batch failed; retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        for c in batch.drain(..) {
            outcomes.insert(c.port, failed(None, message.clone()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use protocol::fleet::{Delta, RackDesiredState};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::store::Store;
    use crate::switch::sim::{SimFaults, SimSwitch};

    fn intent(switch: &str, port: &str, config: WantedConfig, generation: u64) -> PortIntent {
        PortIntent {
            switch: switch.into(),
            port: port.into(),
            config,
            generation,
        }
    }

    fn access(vlan: u16) -> WantedConfig {
        WantedConfig::Access { vlan }
    }

    fn sim(name: &str, ports: &[&str], timeout_ms: u64) -> Arc<SimSwitch> {
        Arc::new(SimSwitch::new(
            name,
            ports.iter().map(|p| (*p).to_owned()),
            Duration::from_millis(timeout_ms),
        ))
    }

    fn reports(store: &Store) -> Vec<(String, String, u64, bool, Option<WantedConfig>, String)> {
        store
            .pending(10_000)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::PortApplied {
                    switch,
                    port,
                    generation,
                    ok,
                    observed,
                    message,
                } => Some((switch, port, generation, ok, observed, message)),
                _ => None,
            })
            .collect()
    }

    async fn wait_reports(
        store: &Store,
        n: usize,
    ) -> Vec<(String, String, u64, bool, Option<WantedConfig>, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = reports(store);
            if r.len() >= n {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiting for {n} reports, have {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn switches(list: &[&Arc<SimSwitch>]) -> Switches {
        list.iter()
            .map(|s| (s.name().to_owned(), (*s).clone() as Arc<dyn SwitchDriver>))
            .collect()
    }

    #[tokio::test]
    async fn batches_per_switch_and_reports_each_port_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let a = sim("tor-a", &["e1", "e2", "e3"], 1000);
        let b = sim("tor-b", &["x1"], 1000);
        store
            .apply_snapshot(&RackDesiredState {
                revision: 1,
                nodes: vec![],
                ports: vec![
                    intent("tor-a", "e1", access(10), 1),
                    intent("tor-a", "e2", access(10), 1),
                    intent(
                        "tor-a",
                        "e3",
                        WantedConfig::Trunk {
                            native: Some(20),
                            allowed: vec![20, 30],
                        },
                        1,
                    ),
                    intent("tor-b", "x1", access(20), 4),
                    intent("tor-zz", "q1", access(20), 2),
                ],
                runs: Vec::new(),
            })
            .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(super::super::run(
            PortReconciler::new(Context::quiet(store.clone()), switches(&[&a, &b])),
            store.clone(),
            Duration::from_millis(50),
            cancel.clone(),
        ));
        let r = wait_reports(&store, 5).await;
        // One batch per switch.
        assert_eq!((a.batches(), b.batches()), (1, 1));
        assert!(r.contains(&(
            "tor-a".into(),
            "e3".into(),
            1,
            true,
            Some(WantedConfig::Trunk {
                native: Some(20),
                allowed: vec![20, 30]
            }),
            String::new()
        )));
        assert!(r.contains(&(
            "tor-b".into(),
            "x1".into(),
            4,
            true,
            Some(access(20)),
            String::new()
        )));
        let unknown = r.iter().find(|x| x.0 == "tor-zz").unwrap();
        assert!(!unknown.3 && unknown.4.is_none());
        assert!(
            unknown.5.contains("\"tor-zz\" is not configured"),
            "{}",
            unknown.5
        );

        // A new generation for one port: only that port, in its own batch; nothing repeats.
        store
            .apply_deltas(
                1,
                2,
                &[Delta::UpsertPort(intent(
                    "tor-a",
                    "e1",
                    WantedConfig::Unconfigured,
                    2,
                ))],
            )
            .unwrap();
        let r = wait_reports(&store, 6).await;
        assert_eq!(r.len(), 6);
        assert_eq!(
            r[5],
            (
                "tor-a".into(),
                "e1".into(),
                2,
                true,
                Some(WantedConfig::Unconfigured),
                String::new()
            )
        );
        assert_eq!(a.batches(), 2);
        assert_eq!(
            a.read_port("e1").await.unwrap().mode,
            PortMode::Unconfigured
        );
        let mut fresh = PortReconciler::new(Context::quiet(store.clone()), switches(&[&a, &b]));
        assert!(fresh.pending(&BTreeSet::new()).await.unwrap().is_empty());
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bad_ports_fail_alone_and_faults_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let ctx = Context::quiet(store.clone());
        let s = sim("tor-f", &["e1", "e2", "e3", "e4"], 100);
        let drv: Arc<dyn SwitchDriver> = s.clone();
        let fast = Duration::from_millis(1);

        // A VLAN out of range, a port the switch does not have, and a port that reads back
        // wrong fail on their own; e1 is applied.
        s.set_behind_back(
            "e3",
            PortMode::Access {
                vlan: Vlan::new(99).unwrap(),
            },
        );
        s.set_faults(SimFaults {
            ignore_next_changes: 1,
            ..Default::default()
        });
        apply_switch(
            ctx.clone(),
            Some(drv.clone()),
            "tor-f".into(),
            vec![
                intent("tor-f", "e3", access(30), 1),
                intent("tor-f", "e1", access(10), 1),
                intent("tor-f", "e2", access(4095), 1),
                intent("tor-f", "nope", access(10), 1),
            ],
            fast,
        )
        .await
        .unwrap();
        let r = reports(&store);
        assert_eq!(r.len(), 4, "{r:?}");
        let by_port = |p: &str| r.iter().find(|x| x.1 == p).unwrap().clone();
        assert!(by_port("e1").3);
        let e2 = by_port("e2");
        assert!(!e2.3 && e2.5.contains("VLAN 4095 is outside"), "{e2:?}");
        let nope = by_port("nope");
        assert!(!nope.3 && nope.5.contains("no port nope"), "{nope:?}");
        // The dropped change is caught by read-back; the report shows what the port carries.
        let e3 = by_port("e3");
        assert!(
            !e3.3 && e3.5.contains("reads back as access vlan 99"),
            "{e3:?}"
        );
        assert_eq!(e3.4, Some(access(99)));
        assert_eq!(
            s.read_port("e1").await.unwrap().mode,
            PortMode::Access {
                vlan: Vlan::new(10).unwrap()
            }
        );

        // A transient failure is retried and succeeds.
        s.set_faults(SimFaults {
            fail_next: 2,
            ..Default::default()
        });
        apply_switch(
            ctx.clone(),
            Some(drv.clone()),
            "tor-f".into(),
            vec![intent("tor-f", "e4", access(40), 2)],
            fast,
        )
        .await
        .unwrap();
        let r = reports(&store);
        assert_eq!(
            r[4],
            (
                "tor-f".into(),
                "e4".into(),
                2,
                true,
                Some(access(40)),
                String::new()
            )
        );

        // An unresponsive switch: retried, then every port of the batch fails with the timeout.
        s.set_faults(SimFaults {
            unresponsive: true,
            ..Default::default()
        });
        apply_switch(
            ctx.clone(),
            Some(drv.clone()),
            "tor-f".into(),
            vec![
                intent("tor-f", "e1", access(11), 3),
                intent("tor-f", "e4", access(11), 3),
            ],
            fast,
        )
        .await
        .unwrap();
        let r = reports(&store);
        assert_eq!(r.len(), 7);
        for x in &r[5..] {
            assert!(
                !x.3 && x.5.contains("no answer to apply within 100 ms"),
                "{x:?}"
            );
        }
        let applied = store.ports_applied().unwrap();
        assert_eq!(
            applied[&("tor-f".to_owned(), "e1".to_owned())].generation,
            3
        );
        assert!(!applied[&("tor-f".to_owned(), "e1".to_owned())].ok);
    }

    /// A switch that takes a batch and then never answers while `hang` is set: the agent dies
    /// (the task is dropped) between the change and its record.
    #[derive(Debug)]
    struct ApplyThenHang {
        inner: Arc<SimSwitch>,
        hang: std::sync::atomic::AtomicBool,
    }

    impl SwitchDriver for ApplyThenHang {
        fn name(&self) -> &str {
            self.inner.name()
        }

        fn read_port<'a>(
            &'a self,
            port: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<PortConfig, SwitchError>> {
            self.inner.read_port(port)
        }

        fn read_ports(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<Vec<PortConfig>, SwitchError>> {
            self.inner.read_ports()
        }

        fn apply<'a>(
            &'a self,
            changes: &'a [PortChange],
        ) -> futures::future::BoxFuture<'a, Result<Vec<PortConfig>, SwitchError>> {
            Box::pin(async move {
                let read = self.inner.apply(changes).await;
                if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                read
            })
        }
    }

    #[tokio::test]
    async fn dying_between_change_and_record_reapplies_and_reports_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let sim = sim("tor-h", &["e1", "e2"], 1000);
        let drv = Arc::new(ApplyThenHang {
            inner: sim.clone(),
            hang: true.into(),
        });
        let switches: Switches = [("tor-h".to_owned(), drv.clone() as Arc<dyn SwitchDriver>)]
            .into_iter()
            .collect();
        store
            .apply_snapshot(&RackDesiredState {
                revision: 1,
                nodes: vec![],
                ports: vec![
                    intent("tor-h", "e1", access(7), 1),
                    intent("tor-h", "e2", access(8), 1),
                ],
                runs: Vec::new(),
            })
            .unwrap();
        let mut r = PortReconciler::new(Context::quiet(store.clone()), switches.clone());
        let mut work = r.pending(&BTreeSet::new()).await.unwrap();
        assert_eq!(work.len(), 1);
        let (_, task) = work.remove(0);
        let running = tokio::spawn(task);
        // The change reached the switch; then the "agent" dies before recording it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sim.batches() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch never reached the switch"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(reports(&store).is_empty(), "a report without a record");
        assert!(store.ports_applied().unwrap().is_empty());

        // Restarted: the same configuration is applied again, and reported once.
        drv.hang.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut r = PortReconciler::new(Context::quiet(store.clone()), switches);
        for (_, task) in r.pending(&BTreeSet::new()).await.unwrap() {
            task.await.unwrap();
        }
        assert_eq!(sim.batches(), 2);
        let got = reports(&store);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|x| x.3 && x.2 == 1), "{got:?}");
        assert!(r.pending(&BTreeSet::new()).await.unwrap().is_empty());
    }
}
