//! Tenancy: networks, network jobs and elastic leases as the API and the state machine see
//! them (issue 7).
//!
//! A project owns nodes (allocated from the free pool) and tenant networks; each network has
//! one VLAN, unique fleet-wide, so a tenant network can never share a VLAN with the
//! provisioning or BMC network. A node's NIC is cabled to one switch port (from the expected
//! inventory, or from the LLDP neighbours the microkernel reported); attaching the NIC to
//! networks sets that port's configuration. Changes to ports and power are asynchronous
//! [`Job`]s that complete when the rack agent reports the outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::UnixMillis;
use crate::fleet::PortConfig;
use crate::ids::IdError;
use crate::{NodeId, ProjectId, RackId, Revision};

/// Longest network name.
pub const MAX_NETWORK_NAME: usize = 63;
/// Lowest usable 802.1Q VLAN id.
pub const VLAN_MIN: u16 = 1;
/// Highest usable 802.1Q VLAN id.
pub const VLAN_MAX: u16 = 4094;

/// A network's name: 1..=63 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkName(String);

impl NetworkName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetworkName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        // Same shape as every other operator-chosen name.
        let shaped = s.parse::<ProjectId>().map_err(|e| IdError {
            kind: "network",
            value: e.value,
            reason: e.reason,
        })?;
        Ok(NetworkName(shaped.as_str().to_owned()))
    }
}

impl TryFrom<String> for NetworkName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<NetworkName> for String {
    fn from(n: NetworkName) -> String {
        n.0
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl utoipa::PartialSchema for NetworkName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9][A-Za-z0-9._-]*$"))
            .max_length(Some(MAX_NETWORK_NAME))
            .description(Some("A network name"))
            .into()
    }
}
impl ToSchema for NetworkName {}

/// What a network is for. Only `tenant` networks belong to a project; the others are made by
/// admins.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// A project's private network; its VLAN comes from the configured pool.
    Tenant,
    /// A shared network (e.g. the internet uplink) any project may attach to.
    Public,
    /// The network nodes PXE-boot and are provisioned on; admins and operators only.
    Provisioning,
    /// The BMC management network; admins and operators only.
    Bmc,
}

impl NetworkKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Tenant => "tenant",
            NetworkKind::Public => "public",
            NetworkKind::Provisioning => "provisioning",
            NetworkKind::Bmc => "bmc",
        }
    }

    /// Provisioning and BMC networks: never reachable from tenant networks, never on the same
    /// NIC as one.
    pub fn is_infrastructure(self) -> bool {
        matches!(self, NetworkKind::Provisioning | NetworkKind::Bmc)
    }
}

/// A layer-2 network (one VLAN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    /// Unique name.
    pub name: NetworkName,
    /// What it is for.
    pub kind: NetworkKind,
    /// Owning project (tenant networks only).
    pub owner: Option<ProjectId>,
    /// Other projects allowed to attach their nodes.
    pub access: BTreeSet<ProjectId>,
    /// Its 802.1Q VLAN id, unique across all networks.
    pub vlan: u16,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Revision of the last change.
    pub revision: Revision,
}

impl Network {
    /// Whether nodes of `project` may attach to it (owner, access list, or public).
    pub fn admits(&self, project: &ProjectId) -> bool {
        self.kind == NetworkKind::Public
            || self.owner.as_ref() == Some(project)
            || self.access.contains(project)
    }
}

/// How a NIC joins a network.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Untagged (access port / native VLAN of a trunk): at most one per NIC.
    Access,
    /// 802.1Q-tagged on a trunk.
    Trunk,
}

impl AttachMode {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Access => "access",
            AttachMode::Trunk => "trunk",
        }
    }
}

/// One switch port of a rack that carries a node's NIC, with its networks and intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SwitchPort {
    /// Rack whose agent drives the switch.
    pub rack: RackId,
    /// Switch name (as the rack agent's `[[switches]]` names it).
    pub switch: String,
    /// Port name on the switch.
    pub port: String,
    /// Node whose NIC is cabled here.
    pub node: NodeId,
    /// The NIC's name (e.g. `eno1`).
    pub nic: String,
    /// Networks the NIC is attached to, with their mode.
    pub attachments: BTreeMap<NetworkName, AttachMode>,
    /// What the port should carry (derived from the attachments).
    pub config: PortConfig,
    /// Generation of the intent (the revision that set it).
    pub generation: u64,
    /// Highest generation the agent reported on (0: none yet).
    pub applied_generation: u64,
    /// Whether that report was a success.
    pub applied_ok: Option<bool>,
    /// What the agent read back from the switch.
    pub observed: Option<PortConfig>,
    /// The agent's message when it failed.
    pub message: String,
    /// The job changing this port now (one pending action per NIC).
    pub job: Option<JobId>,
    /// Revision of the last change.
    pub revision: Revision,
}

/// The power a node should have, and what its agent reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PowerRecord {
    /// The node.
    pub node: NodeId,
    /// Desired power.
    pub on: bool,
    /// Generation of the intent (the revision that set it).
    pub generation: u64,
    /// Highest generation the agent reported on.
    pub applied_generation: u64,
    /// Whether that report was a success.
    pub applied_ok: Option<bool>,
    /// The agent's message when it failed.
    pub message: String,
    /// The job waiting for this intent.
    pub job: Option<JobId>,
}

/// A job id: the revision of the request that created it.
pub type JobId = u64;

/// Where a job is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted; nothing sent to an agent yet.
    Pending,
    /// Intents are out; waiting for the agent's reports.
    Running,
    /// Every step succeeded.
    Done,
    /// A step failed; `error` says which and why.
    Failed,
}

impl JobState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    /// Done or failed.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

/// A step's state inside a job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Sent; no report yet.
    Pending,
    /// The agent reported success.
    Done,
    /// The agent reported failure.
    Failed,
}

/// One port a job changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobPort {
    /// Switch.
    pub switch: String,
    /// Port.
    pub port: String,
    /// The node's NIC on it.
    pub nic: String,
    /// What the port should carry.
    pub config: PortConfig,
    /// Intent generation the job waits for.
    pub generation: u64,
    /// Outcome so far.
    pub state: StepState,
    /// What the agent read back.
    pub observed: Option<PortConfig>,
    /// The agent's message on failure.
    pub message: String,
}

/// The power step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobPower {
    /// Desired power.
    pub on: bool,
    /// Intent generation the job waits for.
    pub generation: u64,
    /// Outcome so far.
    pub state: StepState,
    /// The agent's (BMC's) message on failure.
    pub message: String,
}

/// A NIC-to-network attachment as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachSpec {
    /// NIC name of the node.
    pub nic: String,
    /// Network to attach it to.
    pub network: NetworkName,
    /// Untagged (`access`, the default) or tagged (`trunk`).
    #[serde(default = "default_mode")]
    pub mode: AttachMode,
}

fn default_mode() -> AttachMode {
    AttachMode::Access
}

/// Where a node transfer (move, lease start, lease end) is. Stored in Raft, so a transfer
/// resumes where it was after any restart.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TransferPhase {
    /// Waiting for the node to be powered off.
    PowerOff,
    /// Waiting for the old networks to be detached (ports reverted).
    Detach,
    /// Waiting for the new networks to be attached.
    Attach,
    /// Waiting for the node to be powered on.
    PowerOn,
    /// Finished.
    Finished,
}

impl TransferPhase {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferPhase::PowerOff => "power_off",
            TransferPhase::Detach => "detach",
            TransferPhase::Attach => "attach",
            TransferPhase::PowerOn => "power_on",
            TransferPhase::Finished => "finished",
        }
    }
}

/// Handing a node to another project (or back to the pool): power off → detach old networks →
/// reassign → attach new networks → power on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    /// Project the node ends with (`None`: the free pool).
    pub to: Option<ProjectId>,
    /// Project it had when the transfer started.
    pub from: Option<ProjectId>,
    /// Networks to attach once reassigned.
    pub attach: Vec<AttachSpec>,
    /// Whether to power the node on at the end.
    pub power_on: bool,
    /// Current phase.
    pub phase: TransferPhase,
    /// The lease this transfer starts or ends, if any.
    pub lease: Option<LeaseId>,
}

/// What a job does (externally tagged in JSON too, e.g. `{"power": {"on": true}}`, so the
/// same shape works in postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Attach a NIC to a network.
    Attach {
        /// NIC.
        nic: String,
        /// Network.
        network: NetworkName,
        /// Mode.
        mode: AttachMode,
    },
    /// Detach a NIC from a network.
    Detach {
        /// NIC.
        nic: String,
        /// Network.
        network: NetworkName,
    },
    /// Revert a NIC's port to carry nothing.
    Revert {
        /// NIC.
        nic: String,
    },
    /// Power the node on or off.
    Power {
        /// Desired power.
        on: bool,
    },
    /// Move the node to another project in one go.
    Move(Transfer),
    /// Lend the node to a lease's borrower (reclaim it from its owner).
    LeaseStart(Transfer),
    /// Take the node back from the borrower when the lease window ends.
    LeaseEnd(Transfer),
}

impl JobKind {
    /// The transfer of a move or lease job.
    pub fn transfer(&self) -> Option<&Transfer> {
        match self {
            JobKind::Move(t) | JobKind::LeaseStart(t) | JobKind::LeaseEnd(t) => Some(t),
            _ => None,
        }
    }

    /// Mutable access to the transfer of a move or lease job.
    pub fn transfer_mut(&mut self) -> Option<&mut Transfer> {
        match self {
            JobKind::Move(t) | JobKind::LeaseStart(t) | JobKind::LeaseEnd(t) => Some(t),
            _ => None,
        }
    }

    /// Short name (`attach`, `move`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Attach { .. } => "attach",
            JobKind::Detach { .. } => "detach",
            JobKind::Revert { .. } => "revert",
            JobKind::Power { .. } => "power",
            JobKind::Move(_) => "move",
            JobKind::LeaseStart(_) => "lease_start",
            JobKind::LeaseEnd(_) => "lease_end",
        }
    }
}

/// An asynchronous change of ports and/or power, with per-step results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Id (the revision that created it).
    pub id: JobId,
    /// The node it works on.
    pub node: NodeId,
    /// Projects that may see it (the node's project when created, and a move's target).
    pub projects: BTreeSet<ProjectId>,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Ports of the current step.
    pub ports: Vec<JobPort>,
    /// Power step, if the current step has one.
    pub power: Option<JobPower>,
    /// Why it failed.
    pub error: Option<String>,
    /// Who asked (`user:<name>`, `coordinator:<id>`).
    pub actor: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it last changed.
    pub updated_at: UnixMillis,
    /// Revision of the last change.
    pub revision: Revision,
}

/// A lease id: the revision of the request that created it.
pub type LeaseId = u64;

/// When a lease lends its node.
///
/// JSON shape (API): untagged, told apart by its fields (`{"start","end","tz"}` or
/// `{"from","until"}`). Binary shape (postcard: Raft log and snapshots): externally tagged,
/// because postcard cannot decode untagged enums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWindow {
    /// Every day between two wall-clock times (`"00:00"`–`"06:00"`); `end` before `start`
    /// spans midnight.
    Daily {
        /// `HH:MM`.
        start: String,
        /// `HH:MM`.
        end: String,
        /// Time zone; only `UTC` is supported.
        tz: String,
    },
    /// Once, between two instants (unix milliseconds).
    Once {
        /// Start (inclusive).
        from: UnixMillis,
        /// End (exclusive).
        until: UnixMillis,
    },
}

/// The JSON (untagged) shape of [`LeaseWindow`].
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
#[schema(as = LeaseWindow)]
enum LeaseWindowJson {
    /// Every day between two UTC wall-clock times.
    Daily {
        /// `HH:MM`.
        start: String,
        /// `HH:MM` (before `start`: spans midnight).
        end: String,
        /// Only `UTC`.
        tz: String,
    },
    /// Once, between two instants.
    Once {
        /// Unix milliseconds, inclusive.
        from: UnixMillis,
        /// Unix milliseconds, exclusive.
        until: UnixMillis,
    },
}

impl utoipa::PartialSchema for LeaseWindow {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <LeaseWindowJson as utoipa::PartialSchema>::schema()
    }
}

impl ToSchema for LeaseWindow {
    fn name() -> std::borrow::Cow<'static, str> {
        "LeaseWindow".into()
    }
}

/// The binary (externally tagged) shape of [`LeaseWindow`].
#[derive(Serialize, Deserialize)]
enum LeaseWindowBin {
    Daily {
        start: String,
        end: String,
        tz: String,
    },
    Once {
        from: UnixMillis,
        until: UnixMillis,
    },
}

impl Serialize for LeaseWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let w = self.clone();
        if s.is_human_readable() {
            match w {
                LeaseWindow::Daily { start, end, tz } => LeaseWindowJson::Daily { start, end, tz },
                LeaseWindow::Once { from, until } => LeaseWindowJson::Once { from, until },
            }
            .serialize(s)
        } else {
            match w {
                LeaseWindow::Daily { start, end, tz } => LeaseWindowBin::Daily { start, end, tz },
                LeaseWindow::Once { from, until } => LeaseWindowBin::Once { from, until },
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for LeaseWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(match LeaseWindowJson::deserialize(d)? {
                LeaseWindowJson::Daily { start, end, tz } => LeaseWindow::Daily { start, end, tz },
                LeaseWindowJson::Once { from, until } => LeaseWindow::Once { from, until },
            })
        } else {
            Ok(match LeaseWindowBin::deserialize(d)? {
                LeaseWindowBin::Daily { start, end, tz } => LeaseWindow::Daily { start, end, tz },
                LeaseWindowBin::Once { from, until } => LeaseWindow::Once { from, until },
            })
        }
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Why a lease window is not usable; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WindowError {
    /// The offending field (`window.start`, ...).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn hhmm(field: &'static str, s: &str) -> Result<i64, WindowError> {
    let bad = || WindowError {
        field,
        message: format!("{s:?} is not a HH:MM time"),
    };
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok((h * 60 + m) * 60 * 1000)
}

impl LeaseWindow {
    /// Checks the window, naming the field at fault.
    pub fn validate(&self) -> Result<(), WindowError> {
        match self {
            LeaseWindow::Daily { start, end, tz } => {
                let s = hhmm("window.start", start)?;
                let e = hhmm("window.end", end)?;
                if s == e {
                    return Err(WindowError {
                        field: "window.end",
                        message: "must differ from start".into(),
                    });
                }
                if tz != "UTC" {
                    return Err(WindowError {
                        field: "window.tz",
                        message: format!("{tz:?}: only UTC is supported"),
                    });
                }
                Ok(())
            }
            LeaseWindow::Once { from, until } => {
                if until <= from {
                    return Err(WindowError {
                        field: "window.until",
                        message: "must be after from".into(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Whether the window is open at `at` (false for a window that does not validate).
    pub fn open_at(&self, at: UnixMillis) -> bool {
        match self {
            LeaseWindow::Daily { start, end, .. } => {
                let (Ok(s), Ok(e)) = (hhmm("window.start", start), hhmm("window.end", end)) else {
                    return false;
                };
                let t = at.rem_euclid(DAY_MS);
                if s < e {
                    s <= t && t < e
                } else {
                    t >= s || t < e
                }
            }
            LeaseWindow::Once { from, until } => *from <= at && at < *until,
        }
    }

    /// Whether the window can never open again after `at`.
    pub fn over_at(&self, at: UnixMillis) -> bool {
        match self {
            LeaseWindow::Daily { .. } => false,
            LeaseWindow::Once { until, .. } => at >= *until,
        }
    }
}

/// Where a lease is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// The node is with its owner; the borrower sees it as off.
    Away,
    /// Being handed to the borrower.
    Starting,
    /// Lent: the borrower has it.
    Active,
    /// Being taken back.
    Ending,
    /// Over for good (a one-time window passed, or the lease was cancelled).
    Ended,
}

impl LeaseState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Away => "away",
            LeaseState::Starting => "starting",
            LeaseState::Active => "active",
            LeaseState::Ending => "ending",
            LeaseState::Ended => "ended",
        }
    }
}

/// Elastic metal: `node` is lent to `project` while `window` is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// Id (the revision that created it).
    pub id: LeaseId,
    /// The node lent.
    pub node: NodeId,
    /// The borrower.
    pub project: ProjectId,
    /// The owner the node returns to (`None`: the free pool).
    pub owner: Option<ProjectId>,
    /// When it is lent.
    pub window: LeaseWindow,
    /// Where it is.
    pub state: LeaseState,
    /// The transfer job running now, if any.
    pub job: Option<JobId>,
    /// Cancelled: it ends for good once the node is back with its owner.
    pub cancelled: bool,
    /// Who created it.
    pub actor: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Revision of the last change.
    pub revision: Revision,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn network_names_are_checked() {
        assert!("tenant-a.net_1".parse::<NetworkName>().is_ok());
        let e = "-bad".parse::<NetworkName>().unwrap_err();
        assert_eq!(e.kind, "network");
        assert!("".parse::<NetworkName>().is_err());
        assert!("a/b".parse::<NetworkName>().is_err());
    }

    #[test]
    fn daily_windows_wrap_midnight() {
        let w = LeaseWindow::Daily {
            start: "22:00".into(),
            end: "06:00".into(),
            tz: "UTC".into(),
        };
        w.validate().unwrap();
        let h = |x: i64| x * 3_600_000 + 10 * DAY_MS;
        assert!(w.open_at(h(23)));
        assert!(w.open_at(h(0)));
        assert!(w.open_at(h(5)));
        assert!(!w.open_at(h(6)));
        assert!(!w.open_at(h(12)));
        let day = LeaseWindow::Daily {
            start: "00:00".into(),
            end: "06:00".into(),
            tz: "UTC".into(),
        };
        assert!(day.open_at(h(0)) && !day.open_at(h(7)) && !day.over_at(h(7)));
    }

    #[test]
    fn window_errors_name_the_field() {
        let bad = |w: LeaseWindow| w.validate().unwrap_err().field;
        let daily = |s: &str, e: &str, tz: &str| LeaseWindow::Daily {
            start: s.into(),
            end: e.into(),
            tz: tz.into(),
        };
        assert_eq!(bad(daily("24:00", "06:00", "UTC")), "window.start");
        assert_eq!(bad(daily("00:00", "6:00", "UTC")), "window.end");
        assert_eq!(bad(daily("01:00", "01:00", "UTC")), "window.end");
        assert_eq!(bad(daily("00:00", "06:00", "CET")), "window.tz");
        assert_eq!(bad(LeaseWindow::Once { from: 5, until: 5 }), "window.until");
        let once = LeaseWindow::Once { from: 5, until: 9 };
        assert!(once.open_at(5) && once.open_at(8) && !once.open_at(9) && once.over_at(9));
    }

    #[test]
    fn windows_parse_from_json() {
        let d: LeaseWindow =
            serde_json::from_str(r#"{"start":"00:00","end":"06:00","tz":"UTC"}"#).unwrap();
        assert!(matches!(d, LeaseWindow::Daily { .. }));
        let o: LeaseWindow = serde_json::from_str(r#"{"from":1,"until":2}"#).unwrap();
        assert_eq!(o, LeaseWindow::Once { from: 1, until: 2 });
        assert!(serde_json::from_str::<LeaseWindow>(r#"{"from":1}"#).is_err());
        for w in [d, o] {
            let bytes = postcard::to_allocvec(&w).unwrap();
            assert_eq!(postcard::from_bytes::<LeaseWindow>(&bytes).unwrap(), w);
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(serde_json::from_str::<LeaseWindow>(&json).unwrap(), w);
        }
    }
}
