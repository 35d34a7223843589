//! The simulated switch: ports in memory, batches applied atomically, and fault switches
//! (slow, unresponsive, fail-next N, silently ignore the next N port changes) so tests can
//! break the switch on purpose and see verification and timeouts do their job.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};

use super::{
    validate_batch, verify_readback, PortChange, PortConfig, PortMode, SwitchDriver, SwitchError,
};

/// Fault switches; all off by default.
#[derive(Debug, Clone, Default)]
pub struct SimFaults {
    /// Added to every call before it does anything.
    pub delay: Duration,
    /// Every call hangs until the driver's timeout and fails with [`SwitchError::Timeout`].
    pub unresponsive: bool,
    /// The next N calls (reads or applies) fail with [`SwitchError::Simulated`].
    pub fail_next: u32,
    /// The next N port changes are acknowledged but not made (a switch that drops config),
    /// so the read-back verification must catch them.
    pub ignore_next_changes: u32,
}

#[derive(Debug)]
struct State {
    ports: BTreeMap<String, PortMode>,
    faults: SimFaults,
    batches: u64,
}

/// An in-memory switch.
#[derive(Debug)]
pub struct SimSwitch {
    name: String,
    timeout: Duration,
    state: Mutex<State>,
}

enum Gate {
    Go,
    Fail,
    Hang,
}

impl SimSwitch {
    /// A switch named `name` with `ports`, all [`PortMode::Unconfigured`]; calls time out
    /// after `timeout` when the unresponsive fault is on.
    pub fn new(
        name: &str,
        ports: impl IntoIterator<Item = String>,
        timeout: Duration,
    ) -> SimSwitch {
        SimSwitch {
            name: name.to_owned(),
            timeout,
            state: Mutex::new(State {
                ports: ports
                    .into_iter()
                    .map(|p| (p, PortMode::Unconfigured))
                    .collect(),
                faults: SimFaults::default(),
                batches: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (batches are
        // applied after validation, without fallible steps), so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the fault switches.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// The current fault switches (counters show what is left).
    pub fn faults(&self) -> SimFaults {
        self.lock().faults.clone()
    }

    /// Changes a port without going through `apply` (an operator at the console).
    pub fn set_behind_back(&self, port: &str, mode: PortMode) {
        self.lock().ports.insert(port.to_owned(), mode);
    }

    /// Batches applied so far (one per successful or verified-failed `apply`).
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }

    fn gate(&self) -> (Duration, Gate) {
        let mut st = self.lock();
        let delay = st.faults.delay;
        if st.faults.unresponsive {
            return (delay, Gate::Hang);
        }
        if st.faults.fail_next > 0 {
            st.faults.fail_next -= 1;
            return (delay, Gate::Fail);
        }
        (delay, Gate::Go)
    }

    async fn enter(&self, what: &str) -> Result<(), SwitchError> {
        let (delay, gate) = self.gate();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match gate {
            Gate::Go => Ok(()),
            Gate::Fail => Err(SwitchError::Simulated {
                switch: self.name.clone(),
            }),
            Gate::Hang => {
                tokio::time::sleep(self.timeout).await;
                Err(SwitchError::Timeout {
                    switch: self.name.clone(),
                    what: what.to_owned(),
                    timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    fn read(&self, port: &str) -> Result<PortConfig, SwitchError> {
        self.lock()
            .ports
            .get(port)
            .map(|m| PortConfig::new(port, m.clone()))
            .ok_or_else(|| SwitchError::UnknownPort {
                switch: self.name.clone(),
                port: port.to_owned(),
            })
    }
}

impl SwitchDriver for SimSwitch {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_port<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<PortConfig, SwitchError>> {
        async move {
            self.enter("read_port").await?;
            self.read(port)
        }
        .boxed()
    }

    fn read_ports(&self) -> BoxFuture<'_, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            self.enter("read_ports").await?;
            Ok(self
                .lock()
                .ports
                .iter()
                .map(|(p, m)| PortConfig::new(p.clone(), m.clone()))
                .collect())
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [PortChange],
    ) -> BoxFuture<'a, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            validate_batch(changes)?;
            self.enter("apply").await?;
            {
                let mut st = self.lock();
                // All-or-nothing like an OVSDB transaction: check every port first.
                if let Some(c) = changes.iter().find(|c| !st.ports.contains_key(&c.port)) {
                    return Err(SwitchError::UnknownPort {
                        switch: self.name.clone(),
                        port: c.port.clone(),
                    });
                }
                for c in changes {
                    if st.faults.ignore_next_changes > 0 {
                        st.faults.ignore_next_changes -= 1;
                        continue;
                    }
                    st.ports.insert(c.port.clone(), c.mode.clone());
                }
                st.batches += 1;
            }
            let found = changes
                .iter()
                .map(|c| self.read(&c.port))
                .collect::<Result<Vec<_>, _>>()?;
            verify_readback(&self.name, changes, &found)
        }
        .boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::Vlan;

    fn sim() -> SimSwitch {
        SimSwitch::new(
            "sim1",
            ["e1", "e2", "e3"].map(String::from),
            Duration::from_millis(200),
        )
    }

    fn access(port: &str, vlan: u16) -> PortChange {
        PortConfig::new(
            port,
            PortMode::Access {
                vlan: Vlan::new(vlan).unwrap(),
            },
        )
    }

    #[tokio::test]
    async fn applies_and_reads_back() {
        let s = sim();
        let out = s
            .apply(&[access("e1", 10), access("e2", 20)])
            .await
            .unwrap();
        assert_eq!(out, vec![access("e1", 10), access("e2", 20)]);
        assert_eq!(s.read_port("e2").await.unwrap(), access("e2", 20));
        let all = s.read_ports().await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].mode, PortMode::Unconfigured);
        assert_eq!(s.batches(), 1);
    }

    #[tokio::test]
    async fn unknown_port_changes_nothing() {
        let s = sim();
        let err = s
            .apply(&[access("e1", 10), access("e9", 20)])
            .await
            .unwrap_err();
        assert!(matches!(err, SwitchError::UnknownPort { ref port, .. } if port == "e9"));
        assert_eq!(
            s.read_port("e1").await.unwrap().mode,
            PortMode::Unconfigured
        );
    }

    #[tokio::test]
    async fn fail_next_counts_down() {
        let s = sim();
        s.set_faults(SimFaults {
            fail_next: 2,
            ..Default::default()
        });
        assert!(matches!(
            s.apply(&[access("e1", 10)]).await,
            Err(SwitchError::Simulated { .. })
        ));
        let err = s.read_port("e1").await.unwrap_err();
        assert!(err.is_transient());
        assert_eq!(s.faults().fail_next, 0);
        s.apply(&[access("e1", 10)]).await.unwrap();
    }

    #[tokio::test]
    async fn ignored_change_is_caught_by_verification() {
        let s = sim();
        s.set_faults(SimFaults {
            ignore_next_changes: 1,
            ..Default::default()
        });
        match s.apply(&[access("e1", 10), access("e2", 20)]).await {
            Err(SwitchError::Mismatch {
                port,
                wanted,
                found,
                ..
            }) => {
                assert_eq!(port, "e1");
                assert_eq!(wanted, access("e1", 10).mode);
                assert_eq!(found, PortMode::Unconfigured);
            }
            other => panic!("{other:?}"),
        }
        // The second change went through; re-applying the batch converges.
        assert_eq!(s.read_port("e2").await.unwrap(), access("e2", 20));
        s.apply(&[access("e1", 10), access("e2", 20)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn unresponsive_times_out_and_slow_is_slow() {
        let s = sim();
        s.set_faults(SimFaults {
            unresponsive: true,
            ..Default::default()
        });
        let t0 = tokio::time::Instant::now();
        let err = s.read_ports().await.unwrap_err();
        assert!(matches!(
            err,
            SwitchError::Timeout {
                timeout_ms: 200,
                ..
            }
        ));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        s.set_faults(SimFaults {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
        let t0 = tokio::time::Instant::now();
        s.apply(&[access("e3", 30)]).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn invalid_batches_never_reach_the_switch() {
        let s = sim();
        s.set_faults(SimFaults {
            fail_next: 1,
            ..Default::default()
        });
        let err = s
            .apply(&[access("e1", 10), access("e1", 20)])
            .await
            .unwrap_err();
        assert!(matches!(err, SwitchError::InvalidChange { .. }));
        // The fault was not consumed: validation happens before the switch is asked.
        assert_eq!(s.faults().fail_next, 1);
    }
}
