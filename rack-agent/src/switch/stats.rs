//! Counters of one switch's driver calls ([`CountedSwitch`] wraps any driver) and their
//! Prometheus rendering, so `/metrics` shows batches, changed ports, verification failures
//! and errors by kind per switch.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt};

use super::{PortChange, PortConfig, SwitchDriver, SwitchError};
use crate::boot::Metrics;

/// The `kind` label of `switch_errors_total`, one per [`SwitchError`] variant.
pub const ERROR_KINDS: [&str; 12] = [
    "invalid_vlan",
    "invalid_change",
    "unknown_port",
    "mismatch",
    "rejected",
    "auth",
    "host_key",
    "timeout",
    "connect",
    "io",
    "protocol",
    "simulated",
];

fn kind_index(e: &SwitchError) -> usize {
    match e {
        SwitchError::InvalidVlan { .. } => 0,
        SwitchError::InvalidChange { .. } => 1,
        SwitchError::UnknownPort { .. } => 2,
        SwitchError::Mismatch { .. } => 3,
        SwitchError::Rejected { .. } => 4,
        SwitchError::Auth { .. } => 5,
        SwitchError::HostKey { .. } => 6,
        SwitchError::Timeout { .. } => 7,
        SwitchError::Connect { .. } => 8,
        SwitchError::Io { .. } => 9,
        SwitchError::Protocol { .. } => 10,
        SwitchError::Simulated { .. } => 11,
    }
}

/// Counters of one switch.
#[derive(Debug)]
pub struct SwitchStats {
    switch: String,
    applies_ok: AtomicU64,
    applies_failed: AtomicU64,
    ports_changed: AtomicU64,
    reads: AtomicU64,
    apply_micros: AtomicU64,
    errors: [AtomicU64; 12],
}

impl SwitchStats {
    fn new(switch: &str) -> SwitchStats {
        SwitchStats {
            switch: switch.to_owned(),
            applies_ok: AtomicU64::new(0),
            applies_failed: AtomicU64::new(0),
            ports_changed: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            apply_micros: AtomicU64::new(0),
            errors: Default::default(),
        }
    }

    fn error(&self, e: &SwitchError) {
        if let Some(c) = self.errors.get(kind_index(e)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Batches applied and verified.
    pub fn applies_ok(&self) -> u64 {
        self.applies_ok.load(Ordering::Relaxed)
    }

    /// Errors of one kind (a label of [`ERROR_KINDS`]; 0 for an unknown label).
    pub fn errors(&self, kind: &str) -> u64 {
        ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.errors.get(i))
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl Metrics for SwitchStats {
    fn render_prometheus(&self, out: &mut String) {
        let s = &self.switch;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP metalfleet_switch_applies_total Port-change batches by result (ok = applied and verified).");
        let _ = writeln!(out, "# TYPE metalfleet_switch_applies_total counter");
        let _ = writeln!(
            out,
            "metalfleet_switch_applies_total{{switch=\"{s}\",result=\"ok\"}} {}",
            get(&self.applies_ok)
        );
        let _ = writeln!(
            out,
            "metalfleet_switch_applies_total{{switch=\"{s}\",result=\"failed\"}} {}",
            get(&self.applies_failed)
        );
        let _ = writeln!(
            out,
            "# HELP metalfleet_switch_ports_changed_total Port changes in verified batches."
        );
        let _ = writeln!(out, "# TYPE metalfleet_switch_ports_changed_total counter");
        let _ = writeln!(
            out,
            "metalfleet_switch_ports_changed_total{{switch=\"{s}\"}} {}",
            get(&self.ports_changed)
        );
        let _ = writeln!(
            out,
            "# HELP metalfleet_switch_reads_total read_port/read_ports calls."
        );
        let _ = writeln!(out, "# TYPE metalfleet_switch_reads_total counter");
        let _ = writeln!(
            out,
            "metalfleet_switch_reads_total{{switch=\"{s}\"}} {}",
            get(&self.reads)
        );
        let _ = writeln!(
            out,
            "# HELP metalfleet_switch_apply_seconds_total Time spent in apply (write + read-back)."
        );
        let _ = writeln!(out, "# TYPE metalfleet_switch_apply_seconds_total counter");
        let _ = writeln!(
            out,
            "metalfleet_switch_apply_seconds_total{{switch=\"{s}\"}} {:.6}",
            get(&self.apply_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "# HELP metalfleet_switch_errors_total Failed calls by error kind (mismatch = read-back differed).");
        let _ = writeln!(out, "# TYPE metalfleet_switch_errors_total counter");
        for (k, c) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "metalfleet_switch_errors_total{{switch=\"{s}\",kind=\"{k}\"}} {}",
                get(c)
            );
        }
    }
}

/// A driver with counters around every call.
#[derive(Debug)]
pub struct CountedSwitch {
    inner: Arc<dyn SwitchDriver>,
    stats: Arc<SwitchStats>,
}

impl CountedSwitch {
    /// Wraps `inner`; register [`CountedSwitch::stats`] with the metrics registry.
    pub fn wrap(inner: Arc<dyn SwitchDriver>) -> Arc<CountedSwitch> {
        let stats = Arc::new(SwitchStats::new(inner.name()));
        Arc::new(CountedSwitch { inner, stats })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SwitchStats> {
        self.stats.clone()
    }

    fn read_done<T>(&self, r: Result<T, SwitchError>) -> Result<T, SwitchError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &r {
            self.stats.error(e);
        }
        r
    }
}

impl SwitchDriver for CountedSwitch {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn read_port<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<PortConfig, SwitchError>> {
        async move { self.read_done(self.inner.read_port(port).await) }.boxed()
    }

    fn read_ports(&self) -> BoxFuture<'_, Result<Vec<PortConfig>, SwitchError>> {
        async move { self.read_done(self.inner.read_ports().await) }.boxed()
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [PortChange],
    ) -> BoxFuture<'a, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            let t = Instant::now();
            let r = self.inner.apply(changes).await;
            let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.apply_micros.fetch_add(micros, Ordering::Relaxed);
            match &r {
                Ok(_) => {
                    self.stats.applies_ok.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .ports_changed
                        .fetch_add(changes.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.applies_failed.fetch_add(1, Ordering::Relaxed);
                    self.stats.error(e);
                }
            }
            r
        }
        .boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::switch::sim::{SimFaults, SimSwitch};
    use crate::switch::{PortMode, Vlan};

    #[tokio::test]
    async fn counts_batches_ports_and_error_kinds() {
        let sim = Arc::new(SimSwitch::new(
            "sim1",
            ["e1", "e2"].map(String::from),
            Duration::from_millis(100),
        ));
        let counted = CountedSwitch::wrap(sim.clone());
        let ch = |p: &str| {
            PortConfig::new(
                p,
                PortMode::Access {
                    vlan: Vlan::new(10).unwrap(),
                },
            )
        };
        counted.apply(&[ch("e1"), ch("e2")]).await.unwrap();
        sim.set_faults(SimFaults {
            ignore_next_changes: 1,
            ..Default::default()
        });
        counted.apply(&[ch("e1")]).await.unwrap();
        // Unchanged ports verify even when the change is dropped; make the drop visible.
        sim.set_behind_back("e1", PortMode::Unconfigured);
        sim.set_faults(SimFaults {
            ignore_next_changes: 1,
            ..Default::default()
        });
        assert!(counted.apply(&[ch("e1")]).await.is_err());
        assert!(counted.read_port("e9").await.is_err());
        let stats = counted.stats();
        assert_eq!(stats.applies_ok(), 2);
        assert_eq!(stats.errors("mismatch"), 1);
        assert_eq!(stats.errors("unknown_port"), 1);
        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(text.contains("metalfleet_switch_applies_total{switch=\"sim1\",result=\"ok\"} 2"));
        assert!(text.contains("metalfleet_switch_ports_changed_total{switch=\"sim1\"} 3"));
        assert!(
            text.contains("metalfleet_switch_errors_total{switch=\"sim1\",kind=\"mismatch\"} 1")
        );
    }
}
