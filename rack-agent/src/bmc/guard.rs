//! The guard around any BMC driver: one operation at a time per BMC address (others queue in
//! arrival order), a time limit per attempt, retries with bounded exponential backoff for
//! transient faults only, and every failure reported to a [`BmcObserver`].
//!
//! Why serialise per address: BMCs have few session slots (often 4–8) and many refuse or
//! corrupt concurrent changes (a boot override racing a power cycle). Why no retry after an
//! auth failure: BMCs lock accounts after a few bad logins, and a wrong password does not get
//! better by repetition.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use protocol::fleet::EventKind;
use protocol::NodeId;

use super::{
    BiosAttributes, Bmc, BmcError, BmcFuture, BootOverride, DriverKind, FruInfo, LanConfig,
    Operation, PowerAction, PowerState, StorageController, TaskStatus, VirtualMediaStatus,
    VolumeSpec,
};
use crate::boot::EventSink;

/// Retry and time-limit policy of a [`GuardedBmc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first, for transient faults only.
    pub retries: u32,
    /// Delay before the first retry; doubled per retry.
    pub backoff: Duration,
    /// Cap of the delay.
    pub backoff_max: Duration,
    /// Limit of one attempt (power on/off attempts get the driver's power wait on top, since
    /// the driver polls until the change lands).
    pub attempt_timeout: Duration,
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based): `backoff * 2^(retry-1)`, at most
    /// `backoff_max`.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// One failed attempt, as reported to the observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcFailure {
    /// BMC address.
    pub address: String,
    /// Driver.
    pub driver: DriverKind,
    /// Operation.
    pub operation: Operation,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// The error with its causes; carries the BMC's own message. Never a credential.
    pub message: String,
    /// Whether the fault was transient.
    pub transient: bool,
    /// When a retry follows, after how long; `None` when the error goes to the caller.
    pub retry_in: Option<Duration>,
}

impl BmcFailure {
    /// One log line: `bmc 10.0.0.5 (ipmi): power on failed (attempt 1, retry in 500ms): ...`.
    pub fn log_line(&self) -> String {
        let next = match self.retry_in {
            Some(d) => format!("retry in {d:?}"),
            None => "giving up".to_owned(),
        };
        format!(
            "bmc {} ({}): {} failed (attempt {}, {next}): {}",
            self.address, self.driver, self.operation, self.attempt, self.message
        )
    }

    /// The fleet event for `node`: `EventKind::Log` with [`BmcFailure::log_line`].
    pub fn to_event(&self, node: NodeId) -> EventKind {
        EventKind::Log {
            node,
            message: self.log_line(),
        }
    }
}

/// Told about every failed attempt (also those that are retried). Implemented by the agent
/// ([`NodeEventObserver`] turns failures into `EventKind::Log` events) and by tests
/// ([`CollectingObserver`]). Must not block.
pub trait BmcObserver: Send + Sync {
    /// One attempt failed.
    fn failure(&self, failure: &BmcFailure);
}

/// Reports failures of one node's BMC as `EventKind::Log { node, message }` to an event sink
/// (the agent's durable outbox).
pub struct NodeEventObserver {
    /// The node whose BMC this is.
    pub node: NodeId,
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
}

impl fmt::Debug for NodeEventObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeEventObserver")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl BmcObserver for NodeEventObserver {
    fn failure(&self, failure: &BmcFailure) {
        tracing::warn!(target: "bmc", "{}", failure.log_line());
        self.sink.emit(vec![failure.to_event(self.node)]);
    }
}

/// Collects failures in memory (tests).
#[derive(Debug, Default)]
pub struct CollectingObserver {
    failures: Mutex<Vec<BmcFailure>>,
}

impl CollectingObserver {
    /// Everything reported so far.
    pub fn failures(&self) -> Vec<BmcFailure> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl BmcObserver for CollectingObserver {
    fn failure(&self, failure: &BmcFailure) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(failure.clone());
    }
}

/// What every guard of one agent shares: the per-address locks, so two guards (two nodes
/// sharing a chassis BMC, or two tasks) for the same address still take turns, and the
/// counters ([`BmcStats`]).
#[derive(Debug, Default)]
pub struct BmcRegistry {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    stats: Arc<BmcStats>,
}

impl BmcRegistry {
    /// The agent-wide counters (register them with the metrics registry).
    pub fn stats(&self) -> Arc<BmcStats> {
        self.stats.clone()
    }

    /// The lock of `address` (created on first use; dropped when no guard holds it).
    pub fn lock_for(&self, address: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = map.get(address).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(address.to_owned(), Arc::downgrade(&l));
        l
    }
}

/// Counters of every guarded BMC operation of one agent, rendered for Prometheus.
#[derive(Debug, Default)]
pub struct BmcStats {
    /// Operations that succeeded (after any retries).
    pub succeeded: AtomicU64,
    /// Failed attempts that were retried.
    pub retried: AtomicU64,
    /// Operations that failed for good.
    pub failed: AtomicU64,
    /// Failed attempts by kind: auth, timeout, session, transient, rejected, unsupported,
    /// other (index as [`FAILURE_KINDS`]).
    pub failures: [AtomicU64; FAILURE_KINDS.len()],
}

/// Labels of [`BmcStats::failures`].
pub const FAILURE_KINDS: [&str; 7] = [
    "auth",
    "timeout",
    "session",
    "transient",
    "rejected",
    "unsupported",
    "other",
];

impl BmcStats {
    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, e: &BmcError, retried: bool) {
        let kind = match e {
            BmcError::Auth { .. } => 0,
            BmcError::Timeout { .. } => 1,
            BmcError::SessionExhausted { .. } => 2,
            BmcError::Transient { .. } | BmcError::PowerNotReached { .. } => 3,
            BmcError::Rejected { .. } => 4,
            BmcError::Unsupported { .. } => 5,
            _ => 6,
        };
        if let Some(c) = self.failures.get(kind) {
            self.count(c);
        }
        self.count(if retried { &self.retried } else { &self.failed });
    }
}

impl crate::boot::Metrics for BmcStats {
    fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP metalfleet_bmc_operations_total BMC operations by final result.\n\
             # TYPE metalfleet_bmc_operations_total counter\n\
             metalfleet_bmc_operations_total{{result=\"ok\"}} {}\n\
             metalfleet_bmc_operations_total{{result=\"failed\"}} {}",
            load(&self.succeeded),
            load(&self.failed)
        );
        let _ = writeln!(
            out,
            "# HELP metalfleet_bmc_retries_total Failed BMC attempts that were retried.\n\
             # TYPE metalfleet_bmc_retries_total counter\n\
             metalfleet_bmc_retries_total {}",
            load(&self.retried)
        );
        let _ = writeln!(
            out,
            "# HELP metalfleet_bmc_failures_total Failed BMC attempts by kind.\n\
             # TYPE metalfleet_bmc_failures_total counter"
        );
        for (k, c) in FAILURE_KINDS.iter().zip(&self.failures) {
            let _ = writeln!(
                out,
                "metalfleet_bmc_failures_total{{kind=\"{k}\"}} {}",
                load(c)
            );
        }
    }
}

/// A driver behind the guard. Implements [`Bmc`] itself, so callers do not care whether they
/// hold a guarded or a bare driver.
///
/// Cancel-safety: as [`Bmc`]; dropping a call releases the address's turn at once.
pub struct GuardedBmc {
    inner: Arc<dyn Bmc>,
    lock: Arc<tokio::sync::Mutex<()>>,
    stats: Arc<BmcStats>,
    policy: RetryPolicy,
    power_wait: Duration,
    observer: Arc<dyn BmcObserver>,
}

impl fmt::Debug for GuardedBmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBmc")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl GuardedBmc {
    /// Guards `inner`; `locks` is the agent-wide lock registry, `power_wait` the driver's bound
    /// on polling a power change (added to the attempt limit of power on/off).
    pub fn new(
        inner: Arc<dyn Bmc>,
        locks: &BmcRegistry,
        policy: RetryPolicy,
        power_wait: Duration,
        observer: Arc<dyn BmcObserver>,
    ) -> GuardedBmc {
        let lock = locks.lock_for(inner.address());
        GuardedBmc {
            inner,
            lock,
            stats: locks.stats(),
            policy,
            power_wait,
            observer,
        }
    }

    /// The guarded driver.
    pub fn inner(&self) -> &Arc<dyn Bmc> {
        &self.inner
    }

    async fn run<'a, T, F>(&'a self, op: Operation, call: F) -> Result<T, BmcError>
    where
        F: Fn(&'a dyn Bmc) -> BmcFuture<'a, T>,
    {
        // Tokio's mutex is fair: waiters get their turn in arrival order.
        let _turn = self.lock.lock().await;
        let limit = match op {
            Operation::Power(PowerAction::On | PowerAction::Off) => {
                self.policy.attempt_timeout + self.power_wait
            }
            _ => self.policy.attempt_timeout,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout(limit, call(self.inner.as_ref())).await {
                Ok(r) => r,
                Err(_) => Err(BmcError::Timeout {
                    address: self.inner.address().to_owned(),
                    operation: op,
                    after: limit,
                    message: String::new(),
                }),
            };
            let e = match result {
                Ok(v) => {
                    self.stats.count(&self.stats.succeeded);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let transient = e.is_transient();
            let retry_in =
                (transient && attempt <= self.policy.retries).then(|| self.policy.delay(attempt));
            self.stats.record(&e, retry_in.is_some());
            // Unsupported is a caller's question, not a BMC failure worth an event.
            if !matches!(e, BmcError::Unsupported { .. }) {
                self.observer.failure(&BmcFailure {
                    address: self.inner.address().to_owned(),
                    driver: self.inner.driver(),
                    operation: op,
                    attempt,
                    message: crate::error_chain(&e),
                    transient,
                    retry_in,
                });
            }
            match retry_in {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(e),
            }
        }
    }
}

impl Bmc for GuardedBmc {
    fn driver(&self) -> DriverKind {
        self.inner.driver()
    }

    fn address(&self) -> &str {
        self.inner.address()
    }

    fn power_status(&self) -> BmcFuture<'_, PowerState> {
        Box::pin(self.run(Operation::PowerStatus, |b| b.power_status()))
    }

    fn power(&self, action: PowerAction) -> BmcFuture<'_, ()> {
        Box::pin(self.run(Operation::Power(action), move |b| b.power(action)))
    }

    fn set_boot(&self, boot: BootOverride) -> BmcFuture<'_, ()> {
        Box::pin(self.run(Operation::SetBoot, move |b| b.set_boot(boot)))
    }

    fn boot_override(&self) -> BmcFuture<'_, BootOverride> {
        Box::pin(self.run(Operation::GetBoot, |b| b.boot_override()))
    }

    fn fru(&self) -> BmcFuture<'_, FruInfo> {
        Box::pin(self.run(Operation::Fru, |b| b.fru()))
    }

    fn lan_config(&self) -> BmcFuture<'_, LanConfig> {
        Box::pin(self.run(Operation::LanConfig, |b| b.lan_config()))
    }

    fn firmware_update(&self, image_uri: &str) -> BmcFuture<'_, TaskStatus> {
        let uri = image_uri.to_owned();
        Box::pin(async move {
            self.run(Operation::FirmwareUpdate, |b| b.firmware_update(&uri))
                .await
        })
    }

    fn task_status(&self, task: &str) -> BmcFuture<'_, TaskStatus> {
        let task = task.to_owned();
        Box::pin(async move {
            self.run(Operation::TaskStatus, |b| b.task_status(&task))
                .await
        })
    }

    fn bios_attributes(&self) -> BmcFuture<'_, BiosAttributes> {
        Box::pin(self.run(Operation::BiosRead, |b| b.bios_attributes()))
    }

    fn set_bios_attributes(
        &self,
        attributes: BTreeMap<String, serde_json::Value>,
    ) -> BmcFuture<'_, ()> {
        Box::pin(self.run(Operation::BiosSet, move |b| {
            b.set_bios_attributes(attributes.clone())
        }))
    }

    fn storage(&self) -> BmcFuture<'_, Vec<StorageController>> {
        Box::pin(self.run(Operation::StorageList, |b| b.storage()))
    }

    fn create_volume(&self, controller: &str, spec: VolumeSpec) -> BmcFuture<'_, String> {
        let controller = controller.to_owned();
        Box::pin(async move {
            self.run(Operation::VolumeCreate, |b| {
                b.create_volume(&controller, spec.clone())
            })
            .await
        })
    }

    fn delete_volume(&self, volume: &str) -> BmcFuture<'_, ()> {
        let volume = volume.to_owned();
        Box::pin(async move {
            self.run(Operation::VolumeDelete, |b| b.delete_volume(&volume))
                .await
        })
    }

    fn virtual_media_insert(&self, image_uri: &str) -> BmcFuture<'_, ()> {
        let uri = image_uri.to_owned();
        Box::pin(async move {
            self.run(Operation::VirtualMediaInsert, |b| {
                b.virtual_media_insert(&uri)
            })
            .await
        })
    }

    fn virtual_media_eject(&self) -> BmcFuture<'_, ()> {
        Box::pin(self.run(Operation::VirtualMediaEject, |b| b.virtual_media_eject()))
    }

    fn virtual_media_status(&self) -> BmcFuture<'_, VirtualMediaStatus> {
        Box::pin(self.run(Operation::VirtualMediaStatus, |b| b.virtual_media_status()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bmc::sim::SimBmc;
    use crate::bmc::{BootDevice, TaskState};

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            attempt_timeout: Duration::from_secs(30),
        }
    }

    fn guard(sim: &Arc<SimBmc>, p: RetryPolicy) -> (GuardedBmc, Arc<CollectingObserver>) {
        let obs = Arc::new(CollectingObserver::default());
        let g = GuardedBmc::new(
            sim.clone(),
            &BmcRegistry::default(),
            p,
            Duration::from_secs(1),
            obs.clone(),
        );
        (g, obs)
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy(10);
        let d: Vec<u128> = (1..=6).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(d, vec![1, 2, 4, 4, 4, 4]);
        assert_eq!(p.delay(100), Duration::from_millis(4));
    }

    #[tokio::test]
    async fn operations_on_one_address_are_serialised() {
        let sim = SimBmc::shared("10.0.0.9");
        sim.faults(|f| f.delay = Duration::from_millis(20));
        let locks = BmcRegistry::default();
        let obs: Arc<dyn BmcObserver> = Arc::new(CollectingObserver::default());
        // Two guards over the same address (e.g. two nodes sharing a chassis BMC) take turns.
        let a = Arc::new(GuardedBmc::new(
            sim.clone(),
            &locks,
            policy(0),
            Duration::ZERO,
            obs.clone(),
        ));
        let b = Arc::new(GuardedBmc::new(
            sim.clone(),
            &locks,
            policy(0),
            Duration::ZERO,
            obs,
        ));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let g = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { g.power_status().await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), PowerState::Off);
        }
        assert_eq!(sim.calls(), 6);
        assert_eq!(sim.max_in_flight(), 1);
    }

    #[tokio::test]
    async fn different_addresses_do_not_wait_for_each_other() {
        let locks = BmcRegistry::default();
        let (s1, s2) = (SimBmc::shared("10.0.0.1"), SimBmc::shared("10.0.0.2"));
        s1.faults(|f| f.unresponsive = true);
        let obs: Arc<dyn BmcObserver> = Arc::new(CollectingObserver::default());
        let g1 = Arc::new(GuardedBmc::new(
            s1.clone(),
            &locks,
            policy(0),
            Duration::ZERO,
            obs.clone(),
        ));
        let g2 = GuardedBmc::new(s2.clone(), &locks, policy(0), Duration::ZERO, obs);
        let stuck = tokio::spawn(async move { g1.power_status().await });
        while s1.calls() == 0 {
            tokio::task::yield_now().await;
        }
        // 10.0.0.1 holds its turn forever; 10.0.0.2 still answers.
        assert_eq!(g2.power_status().await.unwrap(), PowerState::Off);
        stuck.abort();
        assert!(Arc::ptr_eq(
            &locks.lock_for("10.0.0.1"),
            &locks.lock_for("10.0.0.1")
        ));
    }

    #[tokio::test]
    async fn transient_faults_are_retried_with_backoff() {
        let sim = SimBmc::shared("10.0.0.3");
        sim.faults(|f| f.fail_next = 3);
        let (g, obs) = guard(&sim, policy(5));
        g.power(PowerAction::On).await.unwrap();
        assert_eq!(g.power_status().await.unwrap(), PowerState::On);
        let f = obs.failures();
        assert_eq!(f.len(), 3);
        let delays: Vec<_> = f.iter().map(|f| f.retry_in.unwrap().as_millis()).collect();
        assert_eq!(delays, vec![1, 2, 4]);
        assert!(f.iter().all(|f| f.transient && f.message.contains("503")));
        assert_eq!(f[2].attempt, 3);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let sim = SimBmc::shared("10.0.0.4");
        sim.faults(|f| f.fail_next = 100);
        let (g, obs) = guard(&sim, policy(4));
        let e = g.power_status().await.unwrap_err();
        assert!(matches!(e, BmcError::Transient { .. }));
        assert_eq!(sim.calls(), 5);
        let f = obs.failures();
        assert_eq!(f.len(), 5);
        assert_eq!(f[4].retry_in, None);
        let delays: Vec<_> = f[..4]
            .iter()
            .map(|f| f.retry_in.unwrap().as_millis())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 4], "backoff capped at backoff_max");
    }

    #[tokio::test]
    async fn counters_render_for_prometheus() {
        use crate::boot::Metrics;
        let sim = SimBmc::shared("10.0.0.11");
        let reg = BmcRegistry::default();
        let obs: Arc<dyn BmcObserver> = Arc::new(CollectingObserver::default());
        let g = GuardedBmc::new(sim.clone(), &reg, policy(3), Duration::ZERO, obs);
        sim.faults(|f| f.fail_next = 2);
        g.power_status().await.unwrap();
        sim.faults(|f| f.refuse_auth = true);
        assert!(g.power_status().await.is_err());
        let mut out = String::new();
        reg.stats().render_prometheus(&mut out);
        for want in [
            "metalfleet_bmc_operations_total{result=\"ok\"} 1",
            "metalfleet_bmc_operations_total{result=\"failed\"} 1",
            "metalfleet_bmc_retries_total 2",
            "metalfleet_bmc_failures_total{kind=\"transient\"} 2",
            "metalfleet_bmc_failures_total{kind=\"auth\"} 1",
            "# TYPE metalfleet_bmc_failures_total counter",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[tokio::test]
    async fn auth_failures_are_never_retried() {
        let sim = SimBmc::shared("10.0.0.5");
        sim.faults(|f| f.refuse_auth = true);
        let (g, obs) = guard(&sim, policy(5));
        let e = g.power_status().await.unwrap_err();
        assert!(matches!(e, BmcError::Auth { .. }), "{e}");
        assert_eq!(sim.calls(), 1);
        let f = obs.failures();
        assert_eq!(f.len(), 1);
        assert!(!f[0].transient && f[0].retry_in.is_none());
        assert!(
            f[0].log_line().contains("invalid username or password"),
            "{}",
            f[0].log_line()
        );
    }

    #[tokio::test]
    async fn unresponsive_bmc_times_out_per_attempt() {
        let sim = SimBmc::shared("10.0.0.6");
        sim.faults(|f| f.unresponsive = true);
        let mut p = policy(1);
        p.attempt_timeout = Duration::from_millis(30);
        let (g, obs) = guard(&sim, p);
        let e = g.fru().await.unwrap_err();
        assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
        assert_eq!(sim.calls(), 2);
        assert_eq!(obs.failures().len(), 2);
        // The switch off again, the same guard works (a timed-out attempt left nothing behind).
        sim.faults(|f| f.unresponsive = false);
        assert!(g.fru().await.unwrap().serial.is_some());
    }

    #[tokio::test]
    async fn session_exhaustion_is_retried_until_released() {
        let sim = SimBmc::shared("10.0.0.7");
        sim.faults(|f| f.sessions_exhausted = true);
        let mut p = policy(20);
        p.backoff = Duration::from_millis(5);
        p.backoff_max = Duration::from_millis(5);
        let (g, obs) = guard(&sim, p);
        let g = Arc::new(g);
        let task = {
            let g = g.clone();
            tokio::spawn(async move { g.power_status().await })
        };
        // Release once the guard has been refused at least twice.
        while obs.failures().len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sim.release_sessions();
        assert_eq!(task.await.unwrap().unwrap(), PowerState::Off);
        assert!(obs
            .failures()
            .iter()
            .all(|f| f.message.contains("insufficient resources for session")));
    }

    #[tokio::test]
    async fn unsupported_is_returned_without_an_event() {
        #[derive(Debug)]
        struct Minimal;
        impl Bmc for Minimal {
            fn driver(&self) -> DriverKind {
                DriverKind::Ipmi
            }
            fn address(&self) -> &str {
                "10.0.0.8"
            }
            fn power_status(&self) -> BmcFuture<'_, PowerState> {
                Box::pin(async { Ok(PowerState::On) })
            }
            fn power(&self, _: PowerAction) -> BmcFuture<'_, ()> {
                Box::pin(async { Ok(()) })
            }
            fn set_boot(&self, _: BootOverride) -> BmcFuture<'_, ()> {
                Box::pin(async { Ok(()) })
            }
            fn boot_override(&self) -> BmcFuture<'_, BootOverride> {
                Box::pin(async {
                    Ok(BootOverride {
                        device: BootDevice::Pxe,
                        uefi: false,
                        persistent: false,
                    })
                })
            }
            fn fru(&self) -> BmcFuture<'_, FruInfo> {
                Box::pin(async { Ok(FruInfo::default()) })
            }
            fn lan_config(&self) -> BmcFuture<'_, LanConfig> {
                Box::pin(async {
                    Err(BmcError::unsupported(
                        DriverKind::Ipmi,
                        Operation::LanConfig,
                    ))
                })
            }
        }
        let obs = Arc::new(CollectingObserver::default());
        let g = GuardedBmc::new(
            Arc::new(Minimal),
            &BmcRegistry::default(),
            policy(3),
            Duration::ZERO,
            obs.clone(),
        );
        let e = g.bios_attributes().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "ipmi driver does not support read BIOS attributes"
        );
        assert!(obs.failures().is_empty());
    }

    #[tokio::test]
    async fn simulator_covers_every_operation_through_the_guard() {
        let sim = SimBmc::shared("10.0.0.10");
        let (g, obs) = guard(&sim, policy(0));
        g.set_boot(BootOverride {
            device: BootDevice::Pxe,
            uefi: true,
            persistent: true,
        })
        .await
        .unwrap();
        assert_eq!(g.boot_override().await.unwrap().device, BootDevice::Pxe);
        let mut attrs = BTreeMap::new();
        attrs.insert("SriovEnable".to_owned(), serde_json::json!("Enabled"));
        g.set_bios_attributes(attrs).await.unwrap();
        let b = g.bios_attributes().await.unwrap();
        assert_eq!(b.pending["SriovEnable"], "Enabled");
        assert_eq!(b.current["SriovEnable"], "Disabled");
        g.power(PowerAction::Cycle).await.unwrap();
        let b = g.bios_attributes().await.unwrap();
        assert!(b.pending.is_empty());
        assert_eq!(b.current["SriovEnable"], "Enabled");
        let task = g
            .firmware_update("http://10.0.0.1/assets/fw.bin")
            .await
            .unwrap();
        assert_eq!(
            g.task_status(&task.id).await.unwrap().state,
            TaskState::Completed
        );
        assert_eq!(sim.firmware_version(), "1.0.1");
        let ctl = g.storage().await.unwrap().remove(0);
        let vol = g
            .create_volume(
                &ctl.id,
                VolumeSpec {
                    name: "os".into(),
                    raid_type: "RAID1".into(),
                    capacity_bytes: None,
                    drives: ctl.drives.iter().map(|d| d.id.clone()).collect(),
                },
            )
            .await
            .unwrap();
        assert_eq!(g.storage().await.unwrap()[0].volumes.len(), 1);
        g.delete_volume(&vol).await.unwrap();
        assert!(g.delete_volume(&vol).await.is_err());
        g.virtual_media_insert("http://x/a.iso").await.unwrap();
        assert!(g.virtual_media_status().await.unwrap().inserted);
        g.virtual_media_eject().await.unwrap();
        assert!(!g.virtual_media_status().await.unwrap().inserted);
        assert_eq!(obs.failures().len(), 1, "only the second delete failed");
    }

    #[test]
    fn failure_event_names_node_and_message() {
        let f = BmcFailure {
            address: "10.0.0.5".into(),
            driver: DriverKind::Ipmi,
            operation: Operation::Power(PowerAction::On),
            attempt: 1,
            message: "10.0.0.5: no free session: insufficient resources".into(),
            transient: true,
            retry_in: Some(Duration::from_millis(500)),
        };
        let node = NodeId(uuid::Uuid::from_u128(7));
        match f.to_event(node) {
            EventKind::Log { node: n, message } => {
                assert_eq!(n, node);
                assert_eq!(
                    message,
                    "bmc 10.0.0.5 (ipmi): power on failed (attempt 1, retry in 500ms): 10.0.0.5: no free session: insufficient resources"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
