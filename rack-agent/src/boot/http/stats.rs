//! Counters of the HTTP boot server, rendered in Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::ipxe::ScriptKind;
use crate::boot::Metrics;

/// Route labels of the request counter (a fixed set, so hostile paths cannot grow it).
pub const ROUTES: [&str; 6] = ["ipxe", "assets", "node_api", "metrics", "healthz", "other"];

/// The route label of a request path.
pub fn route_of(path: &str) -> &'static str {
    use crate::boot::{ASSETS_PREFIX, IPXE_SCRIPT_PREFIX, NODE_API_PREFIX};
    if path.starts_with(IPXE_SCRIPT_PREFIX) {
        "ipxe"
    } else if path.starts_with(ASSETS_PREFIX) {
        "assets"
    } else if path.starts_with(NODE_API_PREFIX) {
        "node_api"
    } else if path == "/metrics" {
        "metrics"
    } else if path == "/healthz" {
        "healthz"
    } else {
        "other"
    }
}

/// Every counter of the server. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    scripts: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Body bytes sent for assets and scripts.
    pub bytes_sent: AtomicU64,
    /// Remote asset served from the cache.
    pub cache_hits: AtomicU64,
    /// Remote asset not in the cache when requested.
    pub cache_misses: AtomicU64,
    /// Remote asset downloads completed and verified.
    pub downloads: AtomicU64,
    /// Remote asset downloads that failed (network, status, checksum).
    pub download_failures: AtomicU64,
    /// Connections accepted (HTTP and HTTPS).
    pub connections: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(k)
        .or_insert(0) += 1;
}

impl HttpStats {
    /// Counts one answered request.
    pub fn request(&self, route: &'static str, status: u16) {
        bump(&self.requests, (route, status));
    }

    /// Counts one script served.
    pub fn script(&self, kind: ScriptKind) {
        bump(&self.scripts, kind.label());
    }

    /// Counts a refused request by reason (bad MAC, path escape, bad JSON, ...).
    pub fn rejected(&self, reason: &'static str) {
        bump(&self.rejected, reason);
    }

    /// Adds to a plain counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests answered for `route` with `status` so far.
    pub fn requests_for(&self, route: &str, status: u16) -> u64 {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((r, s), _)| *r == route && *s == status)
            .map(|(_, n)| *n)
            .sum()
    }
}

impl Metrics for HttpStats {
    fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP metalfleet_http_requests_total HTTP boot server requests by route and status.\n\
             # TYPE metalfleet_http_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "metalfleet_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP metalfleet_http_scripts_total iPXE scripts served by target.\n\
             # TYPE metalfleet_http_scripts_total counter"
        );
        let scripts = self
            .scripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for kind in ScriptKind::ALL {
            let n = scripts.get(kind.label()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "metalfleet_http_scripts_total{{target=\"{}\"}} {n}",
                kind.label()
            );
        }
        let _ = writeln!(
            out,
            "# HELP metalfleet_http_rejected_total Requests refused as malformed or hostile, by reason.\n\
             # TYPE metalfleet_http_rejected_total counter"
        );
        for (reason, n) in self
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "metalfleet_http_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let plain: [(&str, &str, &AtomicU64); 7] = [
            (
                "metalfleet_http_bytes_sent_total",
                "Body bytes sent for assets and scripts.",
                &self.bytes_sent,
            ),
            (
                "metalfleet_http_asset_cache_hits_total",
                "Remote assets served from the local cache.",
                &self.cache_hits,
            ),
            (
                "metalfleet_http_asset_cache_misses_total",
                "Remote asset requests that found no cached copy.",
                &self.cache_misses,
            ),
            (
                "metalfleet_http_asset_downloads_total",
                "Remote assets downloaded and verified.",
                &self.downloads,
            ),
            (
                "metalfleet_http_asset_download_failures_total",
                "Remote asset downloads that failed (network, status, checksum).",
                &self.download_failures,
            ),
            (
                "metalfleet_http_connections_total",
                "Connections accepted (HTTP and HTTPS).",
                &self.connections,
            ),
            (
                "metalfleet_http_tls_handshake_failures_total",
                "TLS handshakes that failed.",
                &self.tls_failures,
            ),
        ];
        for (name, help, v) in plain {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}
