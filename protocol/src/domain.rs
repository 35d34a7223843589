//! Domain objects shared by coordinators, agents and clients: sites, racks, expected
//! inventory, nodes, projects, users, tokens, audit entries.
//!
//! These are the shapes stored in the replicated state and returned by the REST API. Secrets
//! appear here only as [`Sealed`] ciphertext; the plaintext input type
//! [`CredentialsInput`] never reaches storage or logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::json::JsonValue;
use crate::{Mac, NodeId, ProjectId, RackId, Revision, Serial, SiteId, Tag, TokenId, UserName};

/// Milliseconds since the Unix epoch, stamped by the coordinator that proposed a change
/// (never read from a clock while applying, so replicas agree).
pub type UnixMillis = i64;

/// A datacenter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Unique name.
    pub name: SiteId,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
}

/// A rack: the unit one rack agent serves (one DHCP subnet/broadcast domain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rack {
    /// Unique name across the fleet.
    pub name: RackId,
    /// The site the rack stands in; must exist.
    pub site: SiteId,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
}

/// How the agent talks to a server's baseboard management controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BmcDriver {
    /// IPMI 2.0 over LAN (RMCP+), driven through `ipmitool -I lanplus`.
    Ipmi,
    /// DMTF Redfish over HTTPS.
    Redfish,
}

/// A secret sealed with the coordinator's at-rest key (XChaCha20-Poly1305).
///
/// Only the coordinator can open it; `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Which key sealed it (for key rotation).
    pub key_id: u32,
    /// 24-byte random nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with the authentication tag appended.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(key {}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

/// Credentials as an operator submits them (plaintext, over HTTPS). Never stored as is:
/// the coordinator seals the password before proposing the change. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsInput {
    /// Login name.
    pub username: String,
    /// Password; write-only.
    pub password: String,
}

impl fmt::Debug for CredentialsInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsInput")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials as stored: the password sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredentials {
    /// Login name.
    pub username: String,
    /// Sealed password.
    pub password: Sealed,
    /// Keyed fingerprint (HMAC-SHA256 under a key derived from the at-rest key) of the
    /// password, so a re-import can tell "same password" without decrypting.
    pub fingerprint: String,
}

/// What the API shows of stored credentials: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CredentialsView {
    /// Login name.
    pub username: String,
    /// Always true when credentials exist; the password itself is never returned.
    pub password_set: bool,
}

/// Expected BMC of a server (generic over how credentials are represented).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcSpec<C> {
    /// IP address or host name the BMC will answer on.
    pub address: String,
    /// Protocol used to drive it.
    pub driver: BmcDriver,
    /// Login to use; `None` until known.
    #[serde(default = "none")]
    pub credentials: Option<C>,
}

fn none<T>() -> Option<T> {
    None
}

/// One expected network interface of a server, as cabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedNic {
    /// Interface label (e.g. `eno1`, `port1`).
    pub name: String,
    /// MAC if known in advance.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Top-of-rack switch name it is cabled to.
    #[serde(default)]
    pub switch: Option<String>,
    /// Switch port it is cabled to (e.g. `Ethernet1/12`).
    #[serde(default)]
    pub port: Option<String>,
}

/// A static address to give a server once identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticIp {
    /// Interface label it belongs to (matches an [`ExpectedNic::name`]), or `bmc`.
    pub interface: String,
    /// The address.
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// Prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix: u8,
    /// Default gateway, if any.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<IpAddr>,
}

/// An expected-inventory record as submitted (credentials in clear, over HTTPS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryInput {
    /// Chassis serial: the key. Upserts with the same serial replace the record.
    pub serial: Serial,
    /// Site the server stands in.
    pub site: SiteId,
    /// Rack the server stands in.
    pub rack: RackId,
    /// Lowest rack unit the chassis occupies.
    #[serde(default)]
    pub u_position: Option<u16>,
    /// Vendor model string.
    #[serde(default)]
    pub model: Option<String>,
    /// Expected NICs and cabling.
    #[serde(default)]
    pub nics: Vec<ExpectedNic>,
    /// Expected BMC.
    #[serde(default)]
    pub bmc: Option<BmcSpec<CredentialsInput>>,
    /// Static addresses to assign.
    #[serde(default)]
    pub static_ips: Vec<StaticIp>,
    /// Free tags for selection.
    #[serde(default)]
    pub tags: BTreeSet<Tag>,
}

/// An expected-inventory record as stored (credentials sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryRecord {
    /// Chassis serial.
    pub serial: Serial,
    /// Site.
    pub site: SiteId,
    /// Rack.
    pub rack: RackId,
    /// Lowest rack unit.
    pub u_position: Option<u16>,
    /// Vendor model.
    pub model: Option<String>,
    /// Expected NICs.
    pub nics: Vec<ExpectedNic>,
    /// Expected BMC.
    pub bmc: Option<BmcSpec<StoredCredentials>>,
    /// Static addresses.
    pub static_ips: Vec<StaticIp>,
    /// Tags.
    pub tags: BTreeSet<Tag>,
    /// Revision at which this record last changed.
    pub revision: Revision,
    /// How many times this record was written (created = 1).
    pub generation: u64,
}

/// An expected-inventory record as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryView {
    /// Chassis serial.
    pub serial: Serial,
    /// Site.
    pub site: SiteId,
    /// Rack.
    pub rack: RackId,
    /// Lowest rack unit.
    pub u_position: Option<u16>,
    /// Vendor model.
    pub model: Option<String>,
    /// Expected NICs.
    pub nics: Vec<ExpectedNic>,
    /// Expected BMC (credentials shown without the secret).
    pub bmc: Option<BmcSpec<CredentialsView>>,
    /// Static addresses.
    pub static_ips: Vec<StaticIp>,
    /// Tags.
    pub tags: BTreeSet<Tag>,
    /// Revision at which this record last changed.
    pub revision: Revision,
    /// How many times this record was written.
    pub generation: u64,
}

impl From<&InventoryRecord> for InventoryView {
    fn from(r: &InventoryRecord) -> Self {
        InventoryView {
            serial: r.serial.clone(),
            site: r.site.clone(),
            rack: r.rack.clone(),
            u_position: r.u_position,
            model: r.model.clone(),
            nics: r.nics.clone(),
            bmc: r.bmc.as_ref().map(|b| BmcSpec {
                address: b.address.clone(),
                driver: b.driver,
                credentials: b.credentials.as_ref().map(|c| CredentialsView {
                    username: c.username.clone(),
                    password_set: true,
                }),
            }),
            static_ips: r.static_ips.clone(),
            tags: r.tags.clone(),
            revision: r.revision,
            generation: r.generation,
        }
    }
}

/// Where a node is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Registered (from a first network boot or by an operator) but not yet inspected.
    Discovered,
    /// Being configured and tested (BMC, firmware, BIOS, RAID, burn-in).
    Commissioning,
    /// Commissioned and free to allocate.
    Ready,
    /// An operating system is being installed.
    Deploying,
    /// Installed and handed over.
    Deployed,
    /// A step failed; needs an operator or a retry.
    Failed,
    /// Out of service for good; kept for the record.
    Retired,
}

impl NodeState {
    /// Every state, in lifecycle order.
    pub const ALL: [NodeState; 7] = [
        NodeState::Discovered,
        NodeState::Commissioning,
        NodeState::Ready,
        NodeState::Deploying,
        NodeState::Deployed,
        NodeState::Failed,
        NodeState::Retired,
    ];

    /// Whether the lifecycle allows moving from `self` to `to` (same state is allowed: a no-op).
    pub fn can_become(self, to: NodeState) -> bool {
        use NodeState::*;
        if self == to {
            return true;
        }
        match (self, to) {
            (Retired, _) => false,
            (_, Retired) | (_, Failed) => true,
            (Discovered, Commissioning) => true,
            (Commissioning, Ready) => true,
            (Ready, Commissioning) | (Ready, Deploying) => true,
            (Deploying, Deployed) | (Deploying, Ready) => true,
            (Deployed, Ready) | (Deployed, Commissioning) => true,
            (Failed, Discovered) | (Failed, Commissioning) | (Failed, Ready) => true,
            _ => false,
        }
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Commissioning => "commissioning",
            NodeState::Ready => "ready",
            NodeState::Deploying => "deploying",
            NodeState::Deployed => "deployed",
            NodeState::Failed => "failed",
            NodeState::Retired => "retired",
        }
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NodeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown node state {s:?}"))
    }
}

/// What a node network-boots into next. Changing it is a desired-state change.
///
/// JSON shape (API): internally tagged, `{"kind": "install", "kernel": ..., ...}`. Binary
/// shape (postcard: Raft log, snapshots, fleet link): externally tagged, because postcard
/// cannot decode internally tagged enums.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BootTarget {
    /// Do not answer its network boot (it falls through to the next boot device).
    #[default]
    None,
    /// The discovery/maintenance microkernel.
    Discovery,
    /// Boot the local disk.
    Local,
    /// Boot an installer.
    Install {
        /// Kernel asset URL or asset name.
        kernel: String,
        /// Initrd asset URL or asset name.
        initrd: String,
        /// Kernel command line.
        cmdline: String,
        /// Name of the autoinstall template to render for this node, if any.
        autoinstall: Option<String>,
    },
    /// Boot from an iSCSI target (`iscsi:<ip>::<port>:<lun>:<iqn>`).
    Sanboot {
        /// iPXE SAN URI.
        target: String,
    },
}

/// The JSON shape of [`BootTarget`].
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = BootTarget)]
enum BootTargetJson {
    /// Do not answer its network boot.
    None,
    /// The discovery/maintenance microkernel.
    Discovery,
    /// Boot the local disk.
    Local,
    /// Boot an installer.
    Install {
        /// Kernel asset URL or asset name.
        kernel: String,
        /// Initrd asset URL or asset name.
        initrd: String,
        /// Kernel command line.
        #[serde(default)]
        cmdline: String,
        /// Autoinstall template name.
        #[serde(default)]
        autoinstall: Option<String>,
    },
    /// Boot from an iSCSI target.
    Sanboot {
        /// iPXE SAN URI.
        target: String,
    },
}

impl From<BootTargetJson> for BootTarget {
    fn from(j: BootTargetJson) -> Self {
        match j {
            BootTargetJson::None => BootTarget::None,
            BootTargetJson::Discovery => BootTarget::Discovery,
            BootTargetJson::Local => BootTarget::Local,
            BootTargetJson::Install {
                kernel,
                initrd,
                cmdline,
                autoinstall,
            } => BootTarget::Install {
                kernel,
                initrd,
                cmdline,
                autoinstall,
            },
            BootTargetJson::Sanboot { target } => BootTarget::Sanboot { target },
        }
    }
}

impl From<BootTarget> for BootTargetJson {
    fn from(b: BootTarget) -> Self {
        match b {
            BootTarget::None => BootTargetJson::None,
            BootTarget::Discovery => BootTargetJson::Discovery,
            BootTarget::Local => BootTargetJson::Local,
            BootTarget::Install {
                kernel,
                initrd,
                cmdline,
                autoinstall,
            } => BootTargetJson::Install {
                kernel,
                initrd,
                cmdline,
                autoinstall,
            },
            BootTarget::Sanboot { target } => BootTargetJson::Sanboot { target },
        }
    }
}

/// Serde glue choosing the shape by format; used as `#[serde(with = "boot_target_serde")]`.
pub mod boot_target_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{BootTarget, BootTargetJson};

    /// Serialize in the format's shape.
    pub fn serialize<S: Serializer>(b: &BootTarget, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            BootTargetJson::from(b.clone()).serialize(s)
        } else {
            b.serialize(s)
        }
    }

    /// Deserialize from the format's shape.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BootTarget, D::Error> {
        if d.is_human_readable() {
            BootTargetJson::deserialize(d).map(BootTarget::from)
        } else {
            BootTarget::deserialize(d)
        }
    }

    /// The same for `Option<BootTarget>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        use super::super::{BootTarget, BootTargetJson};

        /// Serialize.
        pub fn serialize<S: Serializer>(b: &Option<BootTarget>, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                b.clone().map(BootTargetJson::from).serialize(s)
            } else {
                b.serialize(s)
            }
        }

        /// Deserialize.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<BootTarget>, D::Error> {
            if d.is_human_readable() {
                Option::<BootTargetJson>::deserialize(d).map(|o| o.map(BootTarget::from))
            } else {
                Option::<BootTarget>::deserialize(d)
            }
        }
    }
}

impl utoipa::PartialSchema for BootTarget {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <BootTargetJson as utoipa::PartialSchema>::schema()
    }
}
impl ToSchema for BootTarget {
    fn name() -> std::borrow::Cow<'static, str> {
        "BootTarget".into()
    }
}

/// A server Metalfleet knows as a machine (as opposed to an expected-inventory line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Stable id.
    pub id: NodeId,
    /// Chassis serial (unique among nodes).
    pub serial: Serial,
    /// Rack it was found in (from the reporting agent or the inventory match).
    pub rack: Option<RackId>,
    /// MACs seen on the node.
    pub macs: Vec<Mac>,
    /// Lifecycle state.
    pub state: NodeState,
    /// Facts reported by the microkernel and steps (free-form JSON object).
    pub facts: JsonValue,
    /// What it network-boots next.
    #[serde(with = "boot_target_serde")]
    pub boot_target: BootTarget,
    /// Owning project, if allocated.
    pub project: Option<ProjectId>,
    /// Last power state its rack agent observed (`None`: never observed).
    #[serde(default)]
    pub power_on: Option<bool>,
    /// Tags (inventory tags are copied on registration).
    pub tags: BTreeSet<Tag>,
    /// When it was registered.
    pub created_at: UnixMillis,
    /// Revision of the last change.
    pub revision: Revision,
}

/// A node as the API shows it: the stored [`Node`] plus what its expected-inventory match
/// says. Derived at read time from the inventory, so it is never stale and adds nothing to
/// the stored format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The node as stored.
    #[serde(flatten)]
    pub node: Node,
    /// True when an expected-inventory record has this node's serial (the node is linked to
    /// it: rack position, static addresses and BMC come from that record); false while the
    /// node is in the discovered pool. Absent from older coordinators' answers (read as false).
    #[serde(default)]
    pub identified: bool,
    /// Lowest rack unit, from the matching inventory record.
    #[serde(default)]
    pub u_position: Option<u16>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Unique name.
    pub name: ProjectId,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// What a user may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including users, tokens and cluster membership.
    Admin,
    /// Everything about the fleet (inventory, nodes, racks, sites, projects), but not users,
    /// tokens of others or cluster membership.
    Operator,
    /// Reads and changes only the nodes of its own project.
    ProjectMember,
    /// Reads everything except secrets and the audit trail of others; changes nothing.
    ReadOnly,
}

/// A person or automation that holds tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Unique name.
    pub name: UserName,
    /// Role.
    pub role: Role,
    /// Project, required for (and only for) `project_member`.
    #[serde(default)]
    pub project: Option<ProjectId>,
}

/// An API bearer token as stored: only its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: TokenId,
    /// Owner.
    pub user: UserName,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: String,
    /// Free text.
    pub description: String,
    /// Creation time.
    pub created_at: UnixMillis,
    /// Expiry, if any.
    pub expires_at: Option<UnixMillis>,
}

/// A token as the API lists it (never the secret nor its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Public id.
    pub id: TokenId,
    /// Owner.
    pub user: UserName,
    /// Free text.
    pub description: String,
    /// Creation time (ms since epoch).
    pub created_at: UnixMillis,
    /// Expiry (ms since epoch).
    pub expires_at: Option<UnixMillis>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        TokenView {
            id: t.id,
            user: t.user.clone(),
            description: t.description.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
        }
    }
}

/// One line of the audit trail: who changed what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Revision (Raft log index) of the change.
    pub revision: Revision,
    /// When it was proposed.
    pub at: UnixMillis,
    /// Who asked (`user:<name>`, `coordinator:<id>`, `rack:<name>`).
    pub actor: String,
    /// The command's name (e.g. `inventory.upsert`).
    pub action: String,
    /// What it touched (e.g. a serial).
    pub target: String,
    /// Whether it was applied or refused (and why).
    pub outcome: String,
    /// The client's idempotency key, if it sent one.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A coordinator as a member of the Raft cluster.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, ToSchema,
)]
pub struct CoordinatorAddr {
    /// `host:port` of its Raft (QUIC) endpoint.
    pub raft_addr: String,
    /// `https://host:port` of its REST API.
    pub api_url: String,
    /// `host:port` of its fleet (rack agent) QUIC endpoint.
    #[serde(default)]
    pub fleet_addr: String,
}

impl fmt::Display for CoordinatorAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} api={} fleet={}",
            self.raft_addr, self.api_url, self.fleet_addr
        )
    }
}

/// A rack's agent as the coordinators know it: its certificate and what it last reported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct RackAgent {
    /// The rack.
    pub rack: Option<RackId>,
    /// SHA-256 fingerprint of the agent's current certificate (`None`: not enrolled).
    pub cert_fingerprint: Option<String>,
    /// Fingerprint of the certificate it renewed from (accepted until it reconnects).
    pub previous_fingerprint: Option<String>,
    /// Expiry of the current certificate.
    pub cert_not_after: Option<UnixMillis>,
    /// When it enrolled.
    pub enrolled_at: Option<UnixMillis>,
    /// Revoked agents are refused until they enroll again.
    pub revoked: bool,
    /// Highest event sequence number applied.
    pub last_seq: u64,
    /// Events applied in all.
    pub events_applied: u64,
    /// What it last reported over the fleet link.
    pub link: Option<AgentLink>,
}

/// An agent's fleet link as last reported by the coordinator serving it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct AgentLink {
    /// Whether the link was up at the last report.
    pub connected: bool,
    /// Coordinator serving (or last serving) it.
    pub coordinator: u64,
    /// Time of the last report.
    pub last_seen: UnixMillis,
    /// Revision the agent has stored and acknowledged.
    pub revision: Revision,
    /// Events waiting in its outbox.
    pub outbox_depth: u64,
    /// Agent software version.
    pub version: String,
    /// Id of the link session this report comes from, increasing with the session's start
    /// time: reports of an older session (a link not yet timed out after the agent
    /// reconnected) must not overwrite a newer session's record.
    #[serde(default)]
    pub session: u64,
}

/// A one-time rack enrollment token as stored (hash only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollToken {
    /// Rack it enrolls.
    pub rack: RackId,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: String,
    /// Expiry.
    pub expires_at: UnixMillis,
    /// When it was used (tokens are single-use).
    pub used_at: Option<UnixMillis>,
}

/// A DHCP lease reported by a rack agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// Client MAC.
    pub mac: Mac,
    /// Address.
    #[schema(value_type = String)]
    pub ip: std::net::IpAddr,
    /// Rack whose agent granted it.
    pub rack: RackId,
    /// When the agent observed it.
    pub at: UnixMillis,
}

/// Labels attached to a free-form object; kept sorted for stable output.
pub type Labels = BTreeMap<String, String>;
