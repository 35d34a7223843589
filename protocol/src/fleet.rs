//! Messages of the fleet link between a rack agent and the coordinators (QUIC, mutual TLS,
//! ALPN `metalfleet/1`). One bidirectional stream per connection; each message travels as
//! one [`crate::frame`] frame.
//!
//! The agent speaks first with [`AgentMsg::Hello`]; the coordinator answers
//! [`CoordinatorMsg::Welcome`] with the negotiated version, then sends the rack's desired
//! state — a [`CoordinatorMsg::Snapshot`] on first contact (or when its change history no
//! longer reaches back to the agent's revision), otherwise [`CoordinatorMsg::Deltas`] since
//! the agent's revision — and keeps pushing deltas as the rack's desired state changes. The
//! agent persists what it receives before acknowledging it ([`AgentMsg::AckRevision`]).
//! Events flow the other way with a per-rack sequence number and are acknowledged
//! ([`CoordinatorMsg::AckEvents`]) once applied through Raft; the coordinator applies each
//! `(rack, seq)` at most once, so the agent may resend freely.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{BmcDriver, BootTarget, ExpectedNic, StaticIp, UnixMillis};
use crate::error::ErrorBody;
use crate::json::JsonValue;
use crate::version::{ProtocolVersion, VersionOffer};
use crate::{Mac, NodeId, RackId, Revision, Serial};

/// How the agent reaches a node's BMC. Credentials are decrypted by the coordinator only for
/// the agent of the node's rack and travel only over that agent's mutually authenticated link.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcAccess {
    /// BMC address.
    pub address: String,
    /// Protocol.
    pub driver: BmcDriver,
    /// Login name, if known.
    pub username: Option<String>,
    /// Password, if known (plaintext; never printed by `Debug`).
    pub password: Option<String>,
}

impl fmt::Debug for BmcAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcAccess")
            .field("address", &self.address)
            .field("driver", &self.driver)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One node as its rack agent needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RackNode {
    /// Node id.
    pub id: NodeId,
    /// Chassis serial.
    pub serial: Serial,
    /// MACs the agent should recognise in DHCP.
    pub macs: Vec<Mac>,
    /// What the node network-boots next.
    pub boot_target: BootTarget,
    /// Static addresses to hand out (DHCP reservations), from the expected inventory.
    pub static_ips: Vec<StaticIp>,
    /// Expected NICs with their switch ports, from the expected inventory.
    pub switch_ports: Vec<ExpectedNic>,
    /// BMC access, from the expected inventory.
    pub bmc: Option<BmcAccess>,
    /// Revision at which this view of the node last changed.
    pub revision: Revision,
}

/// The part of the desired state one rack agent holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RackDesiredState {
    /// Revision this state corresponds to.
    pub revision: Revision,
    /// Nodes of the rack, sorted by id.
    pub nodes: Vec<RackNode>,
}

/// A change to a rack's desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // transient wire values; boxing would buy nothing
pub enum Delta {
    /// A node was added or changed.
    UpsertNode(RackNode),
    /// A node left the rack.
    RemoveNode(NodeId),
}

/// Something an agent observed, to be applied once through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Per-rack sequence number: 1, 2, 3, ... without gaps; `(rack, seq)` identifies it.
    pub seq: u64,
    /// When the agent observed it.
    pub at: UnixMillis,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of event an agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A DHCP lease was granted or renewed.
    Lease {
        /// Client MAC.
        mac: Mac,
        /// Leased address.
        ip: std::net::IpAddr,
    },
    /// A node network-booted and checked in with its serial.
    CheckIn {
        /// Reported serial.
        serial: Serial,
        /// MACs seen.
        macs: Vec<Mac>,
        /// Hardware facts (JSON object).
        facts: JsonValue,
    },
    /// Observed power state.
    Power {
        /// Node.
        node: NodeId,
        /// True when on.
        on: bool,
    },
    /// A log line about a node (step output, BMC messages).
    Log {
        /// Node it concerns.
        node: NodeId,
        /// The line.
        message: String,
    },
    /// A boot decision the agent's boot services made for a client (DHCP boot file, iPXE
    /// script, TFTP/HTTP fetch of a boot file).
    Boot {
        /// Client MAC.
        mac: Mac,
        /// The node it belongs to, if the MAC is known.
        node: Option<NodeId>,
        /// What was decided, e.g. `dhcp: uefi-x64 pxe -> tftp ipxe.efi`.
        detail: String,
    },
}

/// Frames an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First frame on a connection.
    Hello {
        /// Versions the agent speaks.
        offer: VersionOffer,
        /// The rack it serves (must match its certificate).
        rack: RackId,
        /// Last desired-state revision it has stored; 0 for none.
        last_revision: Revision,
        /// Events waiting in its outbox.
        outbox_depth: u64,
    },
    /// The agent stored the desired state up to this revision.
    AckRevision(Revision),
    /// Events to apply, in sequence order.
    Events(Vec<Event>),
    /// Periodic report of the agent's local view.
    Status {
        /// Stored revision.
        revision: Revision,
        /// Events waiting in its outbox.
        outbox_depth: u64,
    },
    /// Certificate renewal: a CSR for a new key (the identity comes from the link).
    RenewCertificate {
        /// PEM CSR.
        csr_pem: String,
    },
    /// Keep-alive.
    Ping(u64),
}

/// Frames a coordinator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMsg {
    /// Answer to `Hello`.
    Welcome {
        /// Negotiated protocol version for the rest of the connection.
        version: ProtocolVersion,
        /// The coordinator's Raft id.
        coordinator: u64,
        /// Fleet endpoints of every coordinator (`host:port`), so the agent's list stays current.
        coordinators: Vec<String>,
    },
    /// Full desired state (first sync, or history no longer reaches the agent's revision).
    Snapshot(RackDesiredState),
    /// Changes from `from` (exclusive) to `to` (inclusive).
    Deltas {
        /// Revision the deltas start after.
        from: Revision,
        /// Revision after applying them.
        to: Revision,
        /// The changes, in order.
        deltas: Vec<Delta>,
    },
    /// Events up to and including this sequence number are applied; delete them.
    AckEvents(u64),
    /// A renewed certificate for the agent.
    Certificate {
        /// PEM certificate signed by the cluster CA.
        cert_pem: String,
    },
    /// Keep-alive answer.
    Pong(u64),
    /// The coordinator refuses the connection or a frame; the connection closes after it.
    Error(ErrorBody),
}
