//! The agent's local view for `rack-agent status`: in-memory fleet link counters
//! ([`LinkStats`]), the combined report ([`StatusView`]) and its human rendering.
//!
//! A status never guesses: what only a running agent knows (link state, counters) is absent
//! (`null`) when the report was read from the store of a stopped agent.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::{OutboxCounters, Store, StoreError};

/// What the fleet link task knows, kept in memory only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// A coordinator answered `Welcome` and the connection is up.
    pub connected: bool,
    /// Raft id of the coordinator currently connected to.
    pub coordinator: Option<u64>,
    /// Endpoint (`host:port`) currently connected to, or being tried.
    pub endpoint: Option<String>,
    /// Protocol version negotiated on the current connection.
    pub protocol_version: Option<u16>,
    /// Snapshots received since the agent started.
    pub snapshots_received: u64,
    /// Delta batches received since the agent started.
    pub deltas_received: u64,
    /// Successful connections (`Welcome` received) since the agent started.
    pub connects: u64,
    /// Events sent (including resends) since the agent started.
    pub events_sent: u64,
    /// Why the last connection attempt or connection failed, if it did.
    pub last_error: Option<String>,
}

/// The agent's local view, as `{"op":"status"}` returns it and `rack-agent status` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// Rack served.
    pub rack: String,
    /// Software version of the agent that answered (of the CLI when the agent is not
    /// running).
    pub version: String,
    /// False when this view was read from the store because the agent is not running.
    pub agent_running: bool,
    /// Stored desired-state revision (0: none yet).
    pub revision: u64,
    /// Stored nodes.
    pub nodes: u64,
    /// Events waiting in the outbox.
    pub outbox_depth: u64,
    /// Highest event sequence number the coordinators acknowledged.
    pub last_acked_seq: u64,
    /// Sequence number the next event will get.
    pub next_seq: u64,
    /// Fleet endpoints learnt from enrollment and the coordinators.
    pub endpoints: Vec<String>,
    /// Fleet endpoints from the config file.
    pub configured_endpoints: Vec<String>,
    /// `notAfter` of the agent certificate on disk (unix seconds); absent if not enrolled.
    pub cert_not_after: Option<i64>,
    /// Link is up (always false when the agent is not running).
    pub connected: bool,
    /// Coordinator connected to.
    pub coordinator: Option<u64>,
    /// Endpoint connected to or being tried.
    pub endpoint: Option<String>,
    /// Snapshots received since start (unknown when not running).
    pub snapshots_received: Option<u64>,
    /// Delta batches received since start (unknown when not running).
    pub deltas_received: Option<u64>,
    /// Connections since start (unknown when not running).
    pub connects: Option<u64>,
    /// Events sent since start (unknown when not running).
    pub events_sent: Option<u64>,
    /// Last link error (unknown when not running).
    pub last_error: Option<String>,
}

impl StatusView {
    /// Builds the view from the store (none: nothing stored yet), the certificate on disk,
    /// and — for a running agent — the link counters. Blocks on store reads.
    pub fn collect(
        config: &Config,
        store: Option<&Store>,
        link: Option<&LinkStats>,
    ) -> Result<StatusView, StoreError> {
        let (outbox, revision, nodes, endpoints) = match store {
            Some(s) => (
                s.outbox_counters()?,
                s.revision()?,
                s.node_count()?,
                s.endpoints()?,
            ),
            None => (
                OutboxCounters {
                    next_seq: 1,
                    ..OutboxCounters::default()
                },
                0,
                0,
                Vec::new(),
            ),
        };
        let cert_not_after = std::fs::read_to_string(config.cert_path())
            .ok()
            .and_then(|pem| crate::identity::validity(&pem, "agent certificate").ok())
            .map(|(_, not_after)| not_after);
        Ok(StatusView {
            rack: config.rack.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_running: link.is_some(),
            revision,
            nodes,
            outbox_depth: outbox.depth,
            last_acked_seq: outbox.acked_seq,
            next_seq: outbox.next_seq,
            endpoints,
            configured_endpoints: config.coordinators.clone(),
            cert_not_after,
            connected: link.is_some_and(|l| l.connected),
            coordinator: link.and_then(|l| l.coordinator),
            endpoint: link.and_then(|l| l.endpoint.clone()),
            snapshots_received: link.map(|l| l.snapshots_received),
            deltas_received: link.map(|l| l.deltas_received),
            connects: link.map(|l| l.connects),
            events_sent: link.map(|l| l.events_sent),
            last_error: link.and_then(|l| l.last_error.clone()),
        })
    }

    /// Multi-line human summary; `now` (unix seconds) is used for the certificate's time left.
    pub fn render(&self, now: i64) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "{label:<13}{value}");
        };
        line("rack:", self.rack.clone());
        line(
            "agent:",
            if self.agent_running {
                format!("running (rack-agent {})", self.version)
            } else {
                "(agent not running) view read from the store".to_owned()
            },
        );
        if self.agent_running {
            let link = match (self.connected, self.coordinator, &self.endpoint) {
                (true, Some(id), Some(ep)) => format!("connected to coordinator {id} at {ep}"),
                (true, _, _) => "connected".to_owned(),
                (false, _, Some(ep)) => format!("offline (trying {ep})"),
                (false, _, None) => "offline".to_owned(),
            };
            line("link:", link);
            if let (false, Some(err)) = (self.connected, &self.last_error) {
                line("last error:", err.clone());
            }
        }
        line(
            "revision:",
            if self.revision == 0 {
                "0 (no desired state received yet)".to_owned()
            } else {
                self.revision.to_string()
            },
        );
        line("nodes:", self.nodes.to_string());
        line(
            "outbox:",
            format!(
                "{} event(s) waiting (last acked seq {}, next seq {})",
                self.outbox_depth, self.last_acked_seq, self.next_seq
            ),
        );
        if let (Some(s), Some(d), Some(c)) =
            (self.snapshots_received, self.deltas_received, self.connects)
        {
            line(
                "received:",
                format!("{s} snapshot(s), {d} delta batch(es) over {c} connection(s)"),
            );
        }
        line(
            "certificate:",
            match self.cert_not_after {
                Some(t) => format!("valid until {}, {}", format_utc(t), time_left(t - now)),
                None => "none (not enrolled)".to_owned(),
            },
        );
        let mut endpoints = self.endpoints.clone();
        for e in &self.configured_endpoints {
            if !endpoints.contains(e) {
                endpoints.push(e.clone());
            }
        }
        line(
            "endpoints:",
            if endpoints.is_empty() {
                "none".to_owned()
            } else {
                endpoints.join(", ")
            },
        );
        out
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian calendar).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `29d 23h left`, `3h 12m left`, `expired 2d 1h ago`.
pub fn time_left(secs: i64) -> String {
    let abs = secs.unsigned_abs();
    let (d, h, m) = (abs / 86_400, abs % 86_400 / 3600, abs % 3600 / 60);
    let span = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", abs % 60)
    };
    if secs >= 0 {
        format!("{span} left")
    } else {
        format!("expired {span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_797_851_941), "2026-12-21 11:19:01 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn time_left_forms() {
        assert_eq!(time_left(30 * 86_400 + 3600), "30d 1h left");
        assert_eq!(time_left(3 * 3600 + 120), "3h 2m left");
        assert_eq!(time_left(59), "0m 59s left");
        assert_eq!(time_left(-2 * 86_400 - 3600), "expired 2d 1h ago");
    }
}
