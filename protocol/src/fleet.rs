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
use crate::workflow::{RunPlan, RunStatus};
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
    /// What the node's power should be, if the coordinators want it driven; `None` leaves
    /// the power alone.
    #[serde(default)]
    pub power: Option<PowerIntent>,
}

/// What a node's power should be. The agent acts when `generation` is newer than the last
/// generation it acted on for this node (persisted in its store), and reports the outcome as
/// [`EventKind::PowerApplied`] (the observed state also as [`EventKind::Power`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerIntent {
    /// True: powered on; false: powered off.
    pub on: bool,
    /// Increases with every power request for this node (never reused), so the agent can
    /// tell a new request from one it already carried out.
    pub generation: u64,
}

/// How one switch port should be configured. Mirrors `rack_agent::switch::PortMode` (plain
/// u16 VLAN ids here; the agent validates them with `switch::Vlan`).
///
/// JSON shape (API): internally tagged, `{"mode": "access", "vlan": 100}`,
/// `{"mode": "trunk", "native": null, "allowed": [100, 200]}`, `{"mode": "unconfigured"}`.
/// Binary shape (postcard: Raft log, fleet link, agent store): externally tagged, because
/// postcard cannot decode internally tagged enums (the same split as
/// [`crate::domain::BootTarget`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum PortConfig {
    /// The port carries nothing (reverted: no VLAN, no traffic forwarded).
    #[default]
    Unconfigured,
    /// Untagged member of one VLAN.
    Access {
        /// VLAN id (1..=4094).
        vlan: u16,
    },
    /// 802.1Q-tagged member of `allowed`, optionally with one untagged (native) VLAN.
    Trunk {
        /// VLAN untagged frames belong to; `None` drops untagged frames. Must be in `allowed`.
        native: Option<u16>,
        /// VLANs carried tagged (non-empty, sorted, no duplicates).
        allowed: Vec<u16>,
    },
}

impl fmt::Display for PortConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortConfig::Unconfigured => f.write_str("unconfigured"),
            PortConfig::Access { vlan } => write!(f, "access vlan {vlan}"),
            PortConfig::Trunk { native, allowed } => {
                f.write_str("trunk")?;
                if let Some(n) = native {
                    write!(f, " native {n}")?;
                }
                let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
                write!(f, " allowed {}", list.join(","))
            }
        }
    }
}

/// The binary (externally tagged) shape of [`PortConfig`].
#[derive(Serialize, Deserialize)]
enum PortConfigBin {
    Unconfigured,
    Access {
        vlan: u16,
    },
    Trunk {
        native: Option<u16>,
        allowed: Vec<u16>,
    },
}

/// The JSON (internally tagged) shape of [`PortConfig`].
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = PortConfig)]
enum PortConfigJson {
    /// The port carries nothing.
    Unconfigured,
    /// Untagged member of one VLAN.
    Access {
        /// VLAN id (1..=4094).
        vlan: u16,
    },
    /// Tagged member of `allowed`, optionally with an untagged native VLAN.
    Trunk {
        /// Untagged VLAN (must be in `allowed`), or none.
        #[serde(default)]
        native: Option<u16>,
        /// VLANs carried tagged.
        allowed: Vec<u16>,
    },
}

impl From<PortConfig> for PortConfigJson {
    fn from(c: PortConfig) -> Self {
        match c {
            PortConfig::Unconfigured => PortConfigJson::Unconfigured,
            PortConfig::Access { vlan } => PortConfigJson::Access { vlan },
            PortConfig::Trunk { native, allowed } => PortConfigJson::Trunk { native, allowed },
        }
    }
}

impl From<PortConfigJson> for PortConfig {
    fn from(c: PortConfigJson) -> Self {
        match c {
            PortConfigJson::Unconfigured => PortConfig::Unconfigured,
            PortConfigJson::Access { vlan } => PortConfig::Access { vlan },
            PortConfigJson::Trunk { native, allowed } => PortConfig::Trunk { native, allowed },
        }
    }
}

impl From<PortConfig> for PortConfigBin {
    fn from(c: PortConfig) -> Self {
        match c {
            PortConfig::Unconfigured => PortConfigBin::Unconfigured,
            PortConfig::Access { vlan } => PortConfigBin::Access { vlan },
            PortConfig::Trunk { native, allowed } => PortConfigBin::Trunk { native, allowed },
        }
    }
}

impl From<PortConfigBin> for PortConfig {
    fn from(c: PortConfigBin) -> Self {
        match c {
            PortConfigBin::Unconfigured => PortConfig::Unconfigured,
            PortConfigBin::Access { vlan } => PortConfig::Access { vlan },
            PortConfigBin::Trunk { native, allowed } => PortConfig::Trunk { native, allowed },
        }
    }
}

impl Serialize for PortConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            PortConfigJson::from(self.clone()).serialize(s)
        } else {
            PortConfigBin::from(self.clone()).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PortConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            PortConfigJson::deserialize(d).map(PortConfig::from)
        } else {
            PortConfigBin::deserialize(d).map(PortConfig::from)
        }
    }
}

impl utoipa::PartialSchema for PortConfig {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <PortConfigJson as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for PortConfig {
    fn name() -> std::borrow::Cow<'static, str> {
        "PortConfig".into()
    }
}

/// Desired configuration of one switch port of the rack, with a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortIntent {
    /// Switch name as the rack agent's `[[switches]]` config names it.
    pub switch: String,
    /// Port name on that switch (e.g. `Ethernet1/12`, an OVS port name).
    pub port: String,
    /// What the port should carry.
    pub config: PortConfig,
    /// Increases with every change of this port's intent (never reused), so the agent applies
    /// each generation once and reports it in [`EventKind::PortApplied`].
    pub generation: u64,
}

/// What an operator wants of a run assigned to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunControl {
    /// Execute it (or go on executing it).
    Run,
    /// Stop before the next step; resume at that step on `Run`.
    Pause,
    /// Stop it for good (a step in flight is abandoned; the run ends `cancelled`).
    Cancel,
}

/// A workflow run assigned to the agent of the node's rack: the plan expanded whole for one
/// node, so the agent can execute it with every coordinator gone. The agent executes it
/// durably (its executor is the executor of record) and reports [`EventKind::RunStatus`] and
/// [`EventKind::StepLog`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAssignment {
    /// Run id (unique in the cluster; stable across restarts of anything).
    pub run_id: String,
    /// The node it runs on.
    pub node: NodeId,
    /// The expanded plan.
    pub plan: RunPlan,
    /// Run, pause or cancel.
    pub control: RunControl,
    /// Revision at which this assignment last changed.
    pub revision: Revision,
}

/// The part of the desired state one rack agent holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RackDesiredState {
    /// Revision this state corresponds to.
    pub revision: Revision,
    /// Nodes of the rack, sorted by id.
    pub nodes: Vec<RackNode>,
    /// Switch port intents of the rack, sorted by (switch, port).
    #[serde(default)]
    pub ports: Vec<PortIntent>,
    /// Workflow runs assigned to the rack's nodes that are not finished (or whose end the
    /// coordinators have not recorded yet), sorted by run id.
    #[serde(default)]
    pub runs: Vec<RunAssignment>,
}

/// A change to a rack's desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // transient wire values; boxing would buy nothing
pub enum Delta {
    /// A node was added or changed.
    UpsertNode(RackNode),
    /// A node left the rack.
    RemoveNode(NodeId),
    /// A switch port intent was added or changed.
    UpsertPort(PortIntent),
    /// A switch port no longer has an intent (the agent forgets it; it does not touch the
    /// port: reverting a port is an `UpsertPort` with [`PortConfig::Unconfigured`]).
    RemovePort {
        /// Switch name.
        switch: String,
        /// Port name.
        port: String,
    },
    /// A run was assigned, or its control changed.
    UpsertRun(RunAssignment),
    /// A run is no longer assigned (finished and recorded, or deleted): the agent may forget it.
    RemoveRun(String),
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
    /// The agent carried out (ok) or gave up on (not ok) power intent `generation` of `node`.
    PowerApplied {
        /// Node.
        node: NodeId,
        /// The [`PowerIntent::generation`] it acted on.
        generation: u64,
        /// True when the power state landed as asked (already being in it counts).
        ok: bool,
        /// Empty when ok; otherwise the BMC's own error.
        message: String,
    },
    /// The agent applied port intent `generation` and read the port back, or failed.
    PortApplied {
        /// Switch name.
        switch: String,
        /// Port name.
        port: String,
        /// The [`PortIntent::generation`] it acted on.
        generation: u64,
        /// True when the port was configured and read back as asked.
        ok: bool,
        /// What the switch reported for the port after the change, if it could be read.
        observed: Option<PortConfig>,
        /// Empty when ok; otherwise the switch's (or the agent's) error.
        message: String,
    },
    /// A run's status changed (a step started, finished or reported progress; the run paused,
    /// ended...). Carries the whole status: the latest applied one wins.
    RunStatus {
        /// Run id.
        run: String,
        /// Its node.
        node: NodeId,
        /// The whole status.
        status: RunStatus,
    },
    /// Log lines of one step of a run (node output, ansible output, executor notes).
    StepLog {
        /// Run id.
        run: String,
        /// Its node.
        node: NodeId,
        /// Step name.
        step: String,
        /// The lines, in order.
        lines: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> Vec<PortConfig> {
        vec![
            PortConfig::Unconfigured,
            PortConfig::Access { vlan: 100 },
            PortConfig::Trunk {
                native: Some(100),
                allowed: vec![100, 200],
            },
            PortConfig::Trunk {
                native: None,
                allowed: vec![300],
            },
        ]
    }

    #[test]
    fn port_config_json_is_tagged_by_mode() {
        let json = serde_json::to_value(PortConfig::Access { vlan: 7 }).expect("encode");
        assert_eq!(json, serde_json::json!({"mode": "access", "vlan": 7}));
        let back: PortConfig =
            serde_json::from_str(r#"{"mode":"trunk","allowed":[5,6]}"#).expect("decode");
        assert_eq!(
            back,
            PortConfig::Trunk {
                native: None,
                allowed: vec![5, 6]
            }
        );
        for c in configs() {
            let s = serde_json::to_string(&c).expect("encode");
            assert_eq!(serde_json::from_str::<PortConfig>(&s).expect("decode"), c);
        }
        assert!(serde_json::from_str::<PortConfig>(r#"{"mode":"access","vlan":1,"x":1}"#).is_err());
    }

    #[test]
    fn port_intents_and_events_round_trip_in_postcard() {
        for c in configs() {
            let intent = PortIntent {
                switch: "tor1".into(),
                port: "p1".into(),
                config: c.clone(),
                generation: 3,
            };
            let bytes = postcard::to_allocvec(&Delta::UpsertPort(intent.clone())).expect("encode");
            assert_eq!(
                postcard::from_bytes::<Delta>(&bytes).expect("decode"),
                Delta::UpsertPort(intent)
            );
            let ev = EventKind::PortApplied {
                switch: "tor1".into(),
                port: "p1".into(),
                generation: 3,
                ok: true,
                observed: Some(c),
                message: String::new(),
            };
            let bytes = postcard::to_allocvec(&ev).expect("encode");
            assert_eq!(
                postcard::from_bytes::<EventKind>(&bytes).expect("decode"),
                ev
            );
        }
    }
}
