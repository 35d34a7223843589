//! Boot services the rack agent serves to its rack: DHCPv4 (with PXE/iPXE boot decisions),
//! IPv6 router advertisements on provisioning interfaces, TFTP, and HTTP (iPXE scripts, boot
//! assets, the node API the microkernel talks to).
//!
//! Each service is listener → handler → backend: the socket loop knows nothing about policy,
//! the handler takes a parsed request and a lookup into the rack's desired state and returns a
//! decision, and a bad request is counted, logged and dropped.
//!
//! The services meet only through the names below: the URL layout the DHCP server hands out
//! and the HTTP server answers, the iPXE binary names TFTP serves, and two traits — a lookup
//! into the rack's desired state ([`BootBackend`]) and a sink for events ([`EventSink`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;

use protocol::fleet::{EventKind, RackNode};
use protocol::Mac;

pub mod dhcp;
pub mod http;
pub mod tftp;
pub mod tftp_scripts;

/// HTTP path prefix of per-node iPXE scripts: `GET /ipxe/<mac>` (any MAC notation).
/// `GET /ipxe/boot.ipxe?mac=<mac>` is the same script for iPXE builds that chain with
/// `${net0/mac}`.
pub const IPXE_SCRIPT_PREFIX: &str = "/ipxe/";
/// HTTP path prefix of boot assets (kernels, initrds, iPXE binaries): `GET /assets/<name>`.
pub const ASSETS_PREFIX: &str = "/assets/";
/// HTTP path prefix of the node API the microkernel's node-agent uses.
pub const NODE_API_PREFIX: &str = "/node/v1/";

/// iPXE binary for legacy BIOS PXE clients (option 93 = 0), served over TFTP.
pub const IPXE_BIOS: &str = "undionly.kpxe";
/// iPXE binary for UEFI x64 clients (option 93 = 7 or 9), over TFTP or, for HTTP Boot
/// clients (option 93 = 16), over HTTP.
pub const IPXE_EFI_X64: &str = "ipxe.efi";
/// iPXE binary for UEFI ARM64 clients (option 93 = 11; HTTP Boot: 19).
pub const IPXE_EFI_ARM64: &str = "ipxe-arm64.efi";

/// The script URL an iPXE client is given for `mac` by a server reachable at `host:port`.
pub fn ipxe_script_url(scheme: &str, host: std::net::IpAddr, port: u16, mac: &Mac) -> String {
    format!("{scheme}://{host}:{port}{IPXE_SCRIPT_PREFIX}{mac}")
}

/// What the boot services need from the rack's desired state. Implemented by the agent's store
/// and, for tests, by [`FixtureBackend`]. Calls are cheap point reads; they must not block on
/// the network.
pub trait BootBackend: Send + Sync + 'static {
    /// The node of this rack that owns `mac`, if any.
    fn node_by_mac(&self, mac: &Mac) -> Option<RackNode>;
}

/// Where boot services report what they observed (leases, boot decisions, check-ins).
/// Implemented by the agent (durable outbox) and, for tests, by [`CollectingSink`].
pub trait EventSink: Send + Sync + 'static {
    /// Queues events for delivery to the coordinators, in order. Must not block for long:
    /// callers on hot paths batch.
    fn emit(&self, kinds: Vec<EventKind>);
}

/// A Prometheus text-format source (counters of one service).
pub trait Metrics: Send + Sync + 'static {
    /// Appends this source's metrics, with `# HELP`/`# TYPE` lines, to `out`.
    fn render_prometheus(&self, out: &mut String);
}

/// Default directory of the iPXE binaries (Debian's `ipxe` package).
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";

/// Context for validating a boot service's config section: relative paths resolve against
/// `base_dir` (the config file's directory); per-service state defaults under `data_dir`.
#[derive(Debug, Clone)]
pub struct ConfigCtx {
    /// Directory of the config file.
    pub base_dir: PathBuf,
    /// The agent's data directory.
    pub data_dir: PathBuf,
}

impl ConfigCtx {
    /// `p` made absolute against the config file's directory.
    pub fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() {
            self.base_dir.join(p)
        } else {
            p
        }
    }
}

/// A config problem inside one service's section: `key` is the dotted path within the section
/// (the caller prefixes the section name), `-` for the whole section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    /// Dotted key within the section.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl KeyError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Deserializes a config section into its raw shape, naming the key at fault (including an
/// unknown key, with `deny_unknown_fields`).
pub fn from_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, KeyError> {
    serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table)).map_err(|e| {
        let key = match e.path().to_string().as_str() {
            "." | "" => "-".to_owned(),
            p => p.to_owned(),
        };
        KeyError::new(key, e.inner().to_string().trim().replace('\n', " "))
    })
}

/// Files a TFTP server generates per request instead of reading from its root (per-node
/// scripts). Consulted before the root directory.
pub trait GeneratedFiles: Send + Sync + 'static {
    /// The content for `path` (already normalised: relative, no `..`) requested by `peer`,
    /// or `None` to fall through to the root directory.
    fn generate(&self, path: &str, peer: SocketAddr) -> Option<Vec<u8>>;
}

/// Metrics sources of the running boot services; the HTTP server renders them at `/metrics`.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    sources: Arc<Mutex<Vec<Arc<dyn Metrics>>>>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// Adds a source.
    pub fn register(&self, source: Arc<dyn Metrics>) {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Every source, rendered in registration order.
    pub fn render(&self) -> String {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        for s in sources {
            s.render_prometheus(&mut out);
        }
        out
    }
}

/// What every boot service gets from the agent when it binds.
#[derive(Clone)]
pub struct BootDeps {
    /// Lookup into the rack's desired state.
    pub backend: Arc<dyn BootBackend>,
    /// Where observations go.
    pub events: Arc<dyn EventSink>,
    /// The agent's data directory (leases, caches live below it).
    pub data_dir: PathBuf,
    /// Directory holding the iPXE binaries ([`IPXE_BIOS`], [`IPXE_EFI_X64`], ...).
    pub ipxe_dir: PathBuf,
    /// Registry the service adds its counters to.
    pub metrics: MetricsRegistry,
    /// Per-request generated files for TFTP, if any.
    pub generated: Option<Arc<dyn GeneratedFiles>>,
    /// Port of the agent's HTTP boot server (for URLs handed to iPXE), once bound.
    pub http_port: Option<u16>,
}

impl std::fmt::Debug for BootDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootDeps")
            .field("data_dir", &self.data_dir)
            .field("ipxe_dir", &self.ipxe_dir)
            .field("http_port", &self.http_port)
            .finish_non_exhaustive()
    }
}

impl BootDeps {
    /// Dependencies backed by in-memory fixtures (tests).
    pub fn fixture(
        backend: Arc<FixtureBackend>,
        events: Arc<CollectingSink>,
        data_dir: PathBuf,
    ) -> BootDeps {
        BootDeps {
            backend,
            events,
            data_dir,
            ipxe_dir: PathBuf::from(DEFAULT_IPXE_DIR),
            metrics: MetricsRegistry::default(),
            generated: None,
            http_port: None,
        }
    }
}

/// Test fixture: a fixed set of nodes keyed by MAC.
#[derive(Debug, Default)]
pub struct FixtureBackend {
    nodes: Mutex<BTreeMap<Mac, RackNode>>,
}

impl FixtureBackend {
    /// A backend holding `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = RackNode>) -> FixtureBackend {
        let b = FixtureBackend::default();
        for n in nodes {
            b.upsert(n);
        }
        b
    }

    /// Adds or replaces a node (under each of its MACs).
    pub fn upsert(&self, node: RackNode) {
        let mut map = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, n| n.id != node.id);
        for mac in &node.macs {
            map.insert(*mac, node.clone());
        }
    }
}

impl BootBackend for FixtureBackend {
    fn node_by_mac(&self, mac: &Mac) -> Option<RackNode> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(mac)
            .cloned()
    }
}

/// Test fixture: keeps every emitted event in memory.
#[derive(Debug, Default)]
pub struct CollectingSink {
    events: Mutex<Vec<EventKind>>,
}

impl CollectingSink {
    /// Everything emitted so far.
    pub fn events(&self) -> Vec<EventKind> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl EventSink for CollectingSink {
    fn emit(&self, kinds: Vec<EventKind>) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(kinds);
    }
}
