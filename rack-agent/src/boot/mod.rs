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
use std::sync::{Mutex, PoisonError};

use protocol::fleet::{EventKind, RackNode};
use protocol::Mac;

pub mod dhcp;
pub mod http;
pub mod tftp;

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
