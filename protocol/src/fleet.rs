//! Messages of the fleet link between a rack agent and the coordinators (QUIC, mutual TLS,
//! ALPN `metalfleet/1`). Each message travels as one [`crate::frame`] frame.
//!
//! The agent speaks first with [`AgentMsg::Hello`]; the coordinator answers
//! [`CoordinatorMsg::Welcome`] with the negotiated version, then streams the rack's desired
//! state (a snapshot or the deltas since the agent's revision). Events flow the other way
//! with a per-rack sequence number and are acknowledged once applied through Raft.

use serde::{Deserialize, Serialize};

use crate::domain::{BootTarget, UnixMillis};
use crate::json::JsonValue;
use crate::version::{ProtocolVersion, VersionOffer};
use crate::{Mac, NodeId, RackId, Revision, Serial};

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
}

/// The part of the desired state one rack agent holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RackDesiredState {
    /// Revision this state corresponds to.
    pub revision: Revision,
    /// Nodes of the rack.
    pub nodes: Vec<RackNode>,
}

/// A change to a rack's desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Delta {
    /// A node was added or changed.
    UpsertNode(RackNode),
    /// A node left the rack.
    RemoveNode(NodeId),
}

/// Something an agent observed, to be applied once through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Per-rack sequence number, strictly increasing; `(rack, seq)` identifies the event.
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
    /// A node network-booted and checked in.
    CheckIn {
        /// Reported serial.
        serial: Serial,
        /// MACs seen.
        macs: Vec<Mac>,
        /// Hardware facts.
        facts: JsonValue,
    },
    /// Observed power state.
    Power {
        /// Node.
        node: NodeId,
        /// True when on.
        on: bool,
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
    /// Events to apply.
    Events(Vec<Event>),
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
    },
    /// Full desired state (first sync, or the log was compacted past the agent's revision).
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
    /// Keep-alive answer.
    Pong(u64),
    /// The coordinator refuses the connection or a frame.
    Error(crate::error::ErrorBody),
}
