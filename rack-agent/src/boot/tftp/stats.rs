//! The TFTP server's counters and their Prometheus rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::packet::Malformed;
use crate::boot::Metrics;

/// How a request ended (the `result` label of `metalfleet_tftp_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole file was sent and acknowledged.
    Ok,
    /// No such file (ERROR 1), or a directory.
    NotFound,
    /// The path was refused (ERROR 2): traversal, escape, bad characters.
    AccessViolation,
    /// A write request (ERROR 2, read-only server).
    WriteRefused,
    /// An unknown opcode or unsupported mode (ERROR 4).
    IllegalOperation,
    /// Over `max_transfers` (ERROR 0).
    Busy,
    /// The client stopped acknowledging.
    TimedOut,
    /// The client sent ERROR (including ERROR 8 to our OACK).
    ClientError,
    /// Reading the file failed.
    IoError,
    /// The server shut down mid-transfer.
    Shutdown,
    /// The client sent a different request from the same port; this transfer was dropped.
    Superseded,
}

impl Outcome {
    /// Every outcome, in metrics order.
    pub const ALL: [Outcome; 11] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::AccessViolation,
        Outcome::WriteRefused,
        Outcome::IllegalOperation,
        Outcome::Busy,
        Outcome::TimedOut,
        Outcome::ClientError,
        Outcome::IoError,
        Outcome::Shutdown,
        Outcome::Superseded,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::AccessViolation => "access_violation",
            Outcome::WriteRefused => "write_refused",
            Outcome::IllegalOperation => "illegal_operation",
            Outcome::Busy => "busy",
            Outcome::TimedOut => "timed_out",
            Outcome::ClientError => "client_error",
            Outcome::IoError => "io_error",
            Outcome::Shutdown => "shutdown",
            Outcome::Superseded => "superseded",
        }
    }
}

/// Why a path was refused (the `reason` label of `metalfleet_tftp_refused_paths_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `..` component.
    Traversal,
    /// NUL, backslash or a control character in the name.
    BadCharacter,
    /// The canonical path lies outside the root (a symlink leaving it).
    Escape,
    /// A directory, a device or a file that cannot be opened.
    NotRegular,
}

impl Refusal {
    /// Every reason, in metrics order.
    pub const ALL: [Refusal; 4] = [
        Refusal::Traversal,
        Refusal::BadCharacter,
        Refusal::Escape,
        Refusal::NotRegular,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Traversal => "traversal",
            Refusal::BadCharacter => "bad_character",
            Refusal::Escape => "escape",
            Refusal::NotRegular => "not_regular",
        }
    }
}

/// Counters of one TFTP server, shared by the listener and every transfer.
#[derive(Debug, Default)]
pub struct TftpStats {
    requests: [AtomicU64; Outcome::ALL.len()],
    malformed: [AtomicU64; Malformed::ALL.len()],
    refused: [AtomicU64; Refusal::ALL.len()],
    bytes_sent: AtomicU64,
    blocks_sent: AtomicU64,
    blocks_retransmitted: AtomicU64,
    timeouts: AtomicU64,
    unknown_tid: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    active: AtomicI64,
}

fn index_of<T: PartialEq>(all: &[T], v: &T) -> usize {
    all.iter().position(|x| x == v).unwrap_or(0)
}

impl TftpStats {
    /// Counts a finished request.
    pub fn request(&self, o: Outcome) {
        if let Some(c) = self.requests.get(index_of(&Outcome::ALL, &o)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a dropped datagram.
    pub fn malformed(&self, m: Malformed) {
        if let Some(c) = self.malformed.get(index_of(&Malformed::ALL, &m)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refused path.
    pub fn refused(&self, r: Refusal) {
        if let Some(c) = self.refused.get(index_of(&Refusal::ALL, &r)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts DATA blocks sent (first transmissions or retransmissions) and their payload.
    pub fn sent(&self, blocks: u64, payload: u64, retransmitted: u64) {
        self.blocks_sent.fetch_add(blocks, Ordering::Relaxed);
        self.bytes_sent.fetch_add(payload, Ordering::Relaxed);
        self.blocks_retransmitted
            .fetch_add(retransmitted, Ordering::Relaxed);
    }

    /// Counts a retransmission timeout.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a packet from a foreign transfer ID (answered with ERROR 5).
    pub fn unknown_tid(&self) {
        self.unknown_tid.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a file-cache lookup.
    pub fn cache(&self, hit: bool) {
        let c = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A transfer started (+1) or ended (-1).
    pub fn active(&self, delta: i64) {
        self.active.fetch_add(delta, Ordering::Relaxed);
    }

    /// Transfers in flight now.
    pub fn active_transfers(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests that ended with `o` so far.
    pub fn requests(&self, o: Outcome) -> u64 {
        self.requests
            .get(index_of(&Outcome::ALL, &o))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics for TftpStats {
    fn render_prometheus(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        header(
            out,
            "metalfleet_tftp_requests_total",
            "counter",
            "TFTP requests by result.",
        );
        for (o, c) in Outcome::ALL.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "metalfleet_tftp_requests_total{{result=\"{}\"}} {}",
                o.label(),
                load(c)
            );
        }
        header(
            out,
            "metalfleet_tftp_malformed_total",
            "counter",
            "Datagrams dropped as malformed or unexpected, by reason.",
        );
        for (m, c) in Malformed::ALL.iter().zip(&self.malformed) {
            let _ = writeln!(
                out,
                "metalfleet_tftp_malformed_total{{reason=\"{}\"}} {}",
                m.label(),
                load(c)
            );
        }
        header(
            out,
            "metalfleet_tftp_refused_paths_total",
            "counter",
            "Requested paths refused, by reason.",
        );
        for (r, c) in Refusal::ALL.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "metalfleet_tftp_refused_paths_total{{reason=\"{}\"}} {}",
                r.label(),
                load(c)
            );
        }
        for (name, help, c) in [
            (
                "metalfleet_tftp_bytes_sent_total",
                "File bytes sent in DATA blocks, retransmissions included.",
                &self.bytes_sent,
            ),
            (
                "metalfleet_tftp_blocks_sent_total",
                "DATA blocks sent, retransmissions included.",
                &self.blocks_sent,
            ),
            (
                "metalfleet_tftp_blocks_retransmitted_total",
                "DATA blocks sent again after a timeout or a partial window ACK.",
                &self.blocks_retransmitted,
            ),
            (
                "metalfleet_tftp_timeouts_total",
                "Retransmission timeouts.",
                &self.timeouts,
            ),
            (
                "metalfleet_tftp_unknown_tid_total",
                "Packets from a foreign transfer ID, answered with ERROR 5.",
                &self.unknown_tid,
            ),
            (
                "metalfleet_tftp_cache_hits_total",
                "File contents served from the in-memory cache.",
                &self.cache_hits,
            ),
            (
                "metalfleet_tftp_cache_misses_total",
                "File contents read from disk.",
                &self.cache_misses,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", load(c));
        }
        header(
            out,
            "metalfleet_tftp_active_transfers",
            "gauge",
            "Transfers in flight.",
        );
        let _ = writeln!(
            out,
            "metalfleet_tftp_active_transfers {}",
            self.active_transfers()
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_label() {
        let s = TftpStats::default();
        s.request(Outcome::Busy);
        s.malformed(Malformed::Short);
        s.refused(Refusal::Escape);
        s.sent(3, 1000, 1);
        s.active(1);
        let mut out = String::new();
        s.render_prometheus(&mut out);
        assert!(out.contains("metalfleet_tftp_requests_total{result=\"busy\"} 1"));
        assert!(out.contains("metalfleet_tftp_requests_total{result=\"ok\"} 0"));
        assert!(out.contains("metalfleet_tftp_malformed_total{reason=\"short\"} 1"));
        assert!(out.contains("metalfleet_tftp_refused_paths_total{reason=\"escape\"} 1"));
        assert!(out.contains("metalfleet_tftp_bytes_sent_total 1000"));
        assert!(out.contains("metalfleet_tftp_blocks_retransmitted_total 1"));
        assert!(out.contains("metalfleet_tftp_active_transfers 1"));
    }
}
