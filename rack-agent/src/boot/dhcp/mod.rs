//! The rack agent's DHCPv4 server (with PXE/iPXE/HTTP Boot decisions and ProxyDHCP) and the
//! IPv6 router-advertisement responder of its provisioning interfaces.
//!
//! Listener → handler → backend: [`listener`] owns the sockets and knows no policy;
//! [`handler`] is a pure function of a decoded request, the client's node and the
//! [`leases::LeaseTable`]; [`pxe`] decides boot files; [`leases`] persists leases in
//! `<data_dir>/dhcp-leases.redb` with group commit (an ACK leaves only once its lease is
//! durable); [`ra`] answers router solicitations; [`stats`] counts everything.
//!
//! Configuration (`[dhcp]` of the agent's TOML; every key documented on
//! [`config::DhcpConfig`] and [`config::SubnetConfig`]):
//!
//! ```toml
//! [dhcp]
//! lease_secs = 3600              # option 51; T1/T2 = 1/2, 7/8
//! offer_hold_secs = 30           # an OFFERed address stays reserved this long
//! decline_quarantine_secs = 3600 # a DECLINEd address stays out of the pool this long
//! # lease_file = "<data_dir>/dhcp-leases.redb"
//! [[dhcp.subnets]]
//! network = "10.10.0.0/24"       # required
//! interface = "br0"              # omit for a relayed-only subnet (matched by giaddr)
//! server_ip = "10.10.0.1"        # option 54, siaddr, host of HTTP boot URLs (required)
//! router = "10.10.0.1"           # option 3 (a reservation's gateway wins)
//! dns = ["10.10.0.1"]            # option 6
//! domain = "rack1.example"       # option 15
//! mtu = 1500                     # option 26
//! pools = ["10.10.0.100-10.10.0.199"]
//! discovery = false              # unknown MACs get a pool address + discovery boot
//! mode = "authoritative"         # or "proxy" (ProxyDHCP: no addresses, port 4011)
//! router_advertisements = true   # answer IPv6 RS with M=0, O=0 on `interface`
//! ```

pub mod config;
pub mod handler;
pub mod leases;
pub mod listener;
pub mod pxe;
pub mod ra;
pub mod stats;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::fleet::EventKind;
use protocol::{Mac, NodeId};
use tokio_util::sync::CancellationToken;

use super::{BootBackend, BootDeps, EventSink};
use config::Mode;
use handler::Arrival;
use leases::{LeaseTable, WriteJob, Writer};
use listener::Listener;
use ra::RaResponder;
use stats::Stats;

pub use config::DhcpConfig;

/// A boot decision for the same MAC with the same detail is not re-emitted within this.
pub const BOOT_EVENT_DEDUP: Duration = Duration::from_secs(60);
/// How often queued events are handed to the sink (one `emit` per flush, never per packet).
const EVENT_FLUSH: Duration = Duration::from_millis(250);
/// How often expired leases are swept and the active-lease gauge refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long shutdown waits for the lease writer to commit what it holds.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// A UDP socket could not be bound (port in use, missing interface, not root).
    #[error("binding DHCP socket on {interface} port {port}")]
    Bind {
        /// Interface name, or `*` for the unbound socket.
        interface: String,
        /// UDP port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The raw ICMPv6 socket for router advertisements could not be bound.
    #[error("binding router-advertisement socket on {interface}")]
    Ra {
        /// Interface name.
        interface: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The lease database could not be opened.
    #[error(transparent)]
    Leases(#[from] leases::LeaseDbError),
    /// The lease writer thread could not be started.
    #[error("starting the lease writer for {path}")]
    Writer {
        /// The lease database.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Events waiting to be handed to the sink in one batch, with boot-event deduplication.
#[derive(Debug, Default)]
pub struct EventBatcher {
    pending: Mutex<Vec<EventKind>>,
    recent: Mutex<HashMap<Mac, (String, Instant)>>,
}

impl EventBatcher {
    /// Queues events.
    pub fn push(&self, kinds: Vec<EventKind>) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(kinds);
    }

    /// Queues a boot event unless the same MAC got the same decision within
    /// [`BOOT_EVENT_DEDUP`].
    pub fn boot(&self, mac: Mac, node: Option<NodeId>, detail: String, stats: &Stats) {
        let now = Instant::now();
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((d, at)) = recent.get(&mac) {
                if *d == detail && now.duration_since(*at) < BOOT_EVENT_DEDUP {
                    stats.event_deduplicated();
                    return;
                }
            }
            recent.insert(mac, (detail.clone(), now));
        }
        self.push(vec![EventKind::Boot {
            mac,
            node,
            detail: format!("dhcp: {detail}"),
        }]);
    }

    /// Everything queued.
    pub fn take(&self) -> Vec<EventKind> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Forgets decisions older than the dedup window.
    fn prune(&self) {
        let now = Instant::now();
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (_, at)| now.duration_since(*at) < BOOT_EVENT_DEDUP);
    }
}

/// State shared by the receive loops.
pub struct Shared {
    config: DhcpConfig,
    http_port: Option<u16>,
    backend: Arc<dyn BootBackend>,
    table: Mutex<LeaseTable>,
    writer: Writer,
    stats: Arc<Stats>,
    events: Arc<EventBatcher>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// A bound DHCP server.
pub struct DhcpServer {
    shared: Arc<Shared>,
    listeners: Vec<Arc<Listener>>,
    ra: Vec<RaResponder>,
    sink: Arc<dyn EventSink>,
    writer_thread: std::thread::JoinHandle<()>,
    addr: SocketAddr,
}

impl std::fmt::Debug for DhcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpServer")
            .field("addr", &self.addr)
            .field("listeners", &self.listeners)
            .field("ra", &self.ra)
            .finish_non_exhaustive()
    }
}

fn bind_err(interface: &str, port: u16) -> impl Fn(std::io::Error) -> DhcpError + '_ {
    move |source| DhcpError::Bind {
        interface: interface.to_owned(),
        port,
        source,
    }
}

impl DhcpServer {
    /// Opens the lease database and binds every socket: one per interface subnet (device-bound),
    /// one unbound if a subnet is relayed-only, the PXE port for proxy subnets, and the RA
    /// sockets. Registers the counters in `deps.metrics`.
    pub async fn bind(config: &DhcpConfig, deps: &BootDeps) -> Result<DhcpServer, DhcpError> {
        let port = config.server_port;
        let mut listeners = Vec::new();
        for (i, s) in config.subnets.iter().enumerate() {
            let Some(ifname) = &s.interface else { continue };
            let sock = listener::bind_udp(port, Some(ifname)).map_err(bind_err(ifname, port))?;
            listeners.push(Arc::new(Listener::new(
                sock,
                Arrival::Interface(i),
                format!("{ifname}:{port}"),
            )));
            if s.mode == Mode::Proxy {
                let pp = config.pxe_port;
                let sock = listener::bind_udp(pp, Some(ifname)).map_err(bind_err(ifname, pp))?;
                listeners.push(Arc::new(Listener::new(
                    sock,
                    Arrival::Pxe(Some(i)),
                    format!("{ifname}:{pp}"),
                )));
            }
        }
        if config.subnets.iter().any(|s| s.interface.is_none()) {
            let sock = listener::bind_udp(port, None).map_err(bind_err("*", port))?;
            listeners.push(Arc::new(Listener::new(
                sock,
                Arrival::Unbound,
                format!("*:{port}"),
            )));
            if config
                .subnets
                .iter()
                .any(|s| s.interface.is_none() && s.mode == Mode::Proxy)
            {
                let pp = config.pxe_port;
                let sock = listener::bind_udp(pp, None).map_err(bind_err("*", pp))?;
                listeners.push(Arc::new(Listener::new(
                    sock,
                    Arrival::Pxe(None),
                    format!("*:{pp}"),
                )));
            }
        }
        let mut ra = Vec::new();
        for s in &config.subnets {
            if let (Some(ifname), true) = (&s.interface, s.router_advertisements) {
                let r = RaResponder::bind(ifname).map_err(|source| DhcpError::Ra {
                    interface: ifname.clone(),
                    source,
                })?;
                ra.extend(r);
            }
        }
        let addr = listeners
            .first()
            .and_then(|l| l.socket.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));

        let (db, records) = leases::open(&config.lease_file)?;
        tracing::info!(path = %config.lease_file.display(), leases = records.len(), "dhcp lease database opened");
        let (table, stale) = LeaseTable::load(&config.subnets, records);
        let stats = Arc::new(Stats::default());
        stats.set_leases_active(table.active(unix_now()));
        let events = Arc::new(EventBatcher::default());
        let (writer, writer_thread) =
            Writer::start(db, config.lease_file.clone(), stats.clone(), events.clone()).map_err(
                |source| DhcpError::Writer {
                    path: config.lease_file.clone(),
                    source,
                },
            )?;
        if !stale.is_empty() {
            let writes = stale
                .into_iter()
                .map(|ip| leases::LeaseWrite { ip, record: None })
                .collect();
            let _ = writer.submit(WriteJob {
                writes,
                reply: None,
                events: vec![],
            });
        }
        deps.metrics.register(stats.clone());
        Ok(DhcpServer {
            shared: Arc::new(Shared {
                config: config.clone(),
                http_port: deps.http_port,
                backend: deps.backend.clone(),
                table: Mutex::new(table),
                writer,
                stats,
                events,
            }),
            listeners,
            ra,
            sink: deps.events.clone(),
            writer_thread,
            addr,
        })
    }

    /// The address of the first bound socket (0.0.0.0:67 unless configured otherwise).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters (also registered in the metrics registry).
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Serves until cancelled, then stops the receive loops, lets the lease writer commit
    /// what it holds (at most [`WRITER_DRAIN`]) and flushes queued events.
    pub async fn run(self, cancel: CancellationToken) {
        let DhcpServer {
            shared,
            listeners,
            ra,
            sink,
            writer_thread,
            addr: _,
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for l in listeners {
            let (shared, stop) = (shared.clone(), stop.clone());
            let label = l.label.clone();
            match std::thread::Builder::new()
                .name("dhcp-rx".into())
                .spawn(move || listener::serve(shared, l, stop))
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::error!(socket = %label, error = %e, "could not start dhcp receive thread")
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for r in ra {
            tasks.spawn(r.run(shared.stats.clone(), cancel.clone()));
        }
        tasks.spawn(housekeeping(shared.clone(), sink.clone(), cancel.clone()));
        while tasks.join_next().await.is_some() {}
        // The receive threads notice within one receive timeout.
        stop.store(true, Ordering::Relaxed);
        let receivers = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(WRITER_DRAIN, receivers).await.is_err() {
            tracing::warn!("dhcp receive threads did not stop in time");
        }
        let events = shared.events.clone();
        // Dropping the last handle on the writer's channel lets it finish and exit.
        drop(shared);
        let joined = tokio::task::spawn_blocking(move || writer_thread.join());
        if tokio::time::timeout(WRITER_DRAIN, joined).await.is_err() {
            tracing::warn!("dhcp lease writer did not finish in time");
        }
        let rest = events.take();
        if !rest.is_empty() {
            sink.emit(rest);
        }
    }
}

/// Flushes events in batches, sweeps expired leases, refreshes the gauge.
async fn housekeeping(shared: Arc<Shared>, sink: Arc<dyn EventSink>, cancel: CancellationToken) {
    let mut flush = tokio::time::interval(EVENT_FLUSH);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = flush.tick() => {
                let batch = shared.events.take();
                if !batch.is_empty() {
                    // The agent's sink writes to disk: off the async workers, in order.
                    let sink = sink.clone();
                    let _ = tokio::task::spawn_blocking(move || sink.emit(batch)).await;
                }
            }
            _ = sweep.tick() => {
                let now = unix_now();
                let (gone, active) = {
                    let mut t = shared.table.lock().unwrap_or_else(PoisonError::into_inner);
                    (t.sweep(now), t.active(now))
                };
                shared.stats.set_leases_active(active);
                shared.events.prune();
                if !gone.is_empty() {
                    let writes = gone
                        .into_iter()
                        .map(|ip| leases::LeaseWrite { ip, record: None })
                        .collect();
                    // Best effort: an expired record left on disk is swept again after a restart.
                    let _ = shared.writer.submit(WriteJob { writes, reply: None, events: vec![] });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_events_are_deduplicated_per_mac_and_decision() {
        let b = EventBatcher::default();
        let stats = Stats::default();
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        b.boot(mac, None, "discovery: ipxe -> x".into(), &stats);
        b.boot(mac, None, "discovery: ipxe -> x".into(), &stats);
        b.boot(mac, None, "discovery: bios pxe -> y".into(), &stats);
        b.boot(
            Mac([2, 0, 0, 0, 0, 2]),
            None,
            "discovery: ipxe -> x".into(),
            &stats,
        );
        let got = b.take();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(b.take().is_empty());
        let mut text = String::new();
        crate::boot::Metrics::render_prometheus(&stats, &mut text);
        assert!(
            text.contains("metalfleet_dhcp_boot_events_deduplicated_total 1"),
            "{text}"
        );
        assert!(text.contains("metalfleet_dhcp_dropped_total{reason=\"decode_error\"} 0"));
    }
}
