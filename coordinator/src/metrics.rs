//! Prometheus counters of a coordinator, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Process-wide counters. Cheap to update from request handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    writes_local: AtomicU64,
    writes_forwarded: AtomicU64,
    http: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Metrics {
    /// Counts a committed write (forwarded to the leader or proposed locally).
    pub fn inc_write(&self, forwarded: bool) {
        let c = if forwarded {
            &self.writes_forwarded
        } else {
            &self.writes_local
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP response.
    pub fn inc_http(&self, method: &str, status: u16) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((method.to_owned(), status)).or_default() += 1;
        }
    }

    /// Renders all metrics, including Raft gauges from `raft`.
    pub fn render(
        &self,
        raft: &openraft::RaftMetrics<u64, protocol::domain::CoordinatorAddr>,
    ) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "metalfleet_raft_term",
            "Current Raft term.",
            raft.current_term,
        );
        gauge(
            &mut out,
            "metalfleet_raft_is_leader",
            "1 when this coordinator leads.",
            u64::from(raft.current_leader == Some(raft.id)),
        );
        gauge(
            &mut out,
            "metalfleet_raft_last_log_index",
            "Last log index.",
            raft.last_log_index.unwrap_or(0),
        );
        gauge(
            &mut out,
            "metalfleet_raft_last_applied",
            "Last applied index (revision).",
            raft.last_applied.map(|l| l.index).unwrap_or(0),
        );
        gauge(
            &mut out,
            "metalfleet_raft_snapshot_index",
            "Index of the last snapshot.",
            raft.snapshot.map(|l| l.index).unwrap_or(0),
        );
        let _ = writeln!(out, "# HELP metalfleet_writes_total Writes committed, by path.\n# TYPE metalfleet_writes_total counter");
        let _ = writeln!(
            out,
            "metalfleet_writes_total{{path=\"local\"}} {}",
            self.writes_local.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "metalfleet_writes_total{{path=\"forwarded\"}} {}",
            self.writes_forwarded.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP metalfleet_http_responses_total HTTP responses by method and status.\n# TYPE metalfleet_http_responses_total counter");
        if let Ok(m) = self.http.lock() {
            for ((method, status), n) in m.iter() {
                let _ = writeln!(out, "metalfleet_http_responses_total{{method=\"{method}\",status=\"{status}\"}} {n}");
            }
        }
        out
    }
}
