//! Tenancy in the replicated state (issue 7): node allocation, networks and their VLANs,
//! NIC attachments as switch-port intents, power intents, jobs that wait for the rack agent's
//! reports, node transfers (moves, lease starts and ends) and elastic leases.
//!
//! Everything here is part of the pure [`State::apply`]: ids and intent generations are the
//! revision of the request that made them, times come from the request, and a transfer's
//! phase advances inside apply when the agent's report arrives, so a move or lease resumes
//! where it was after any coordinator or agent restart (the agent re-applies intents whose
//! generation it has not recorded, idempotently).

use std::collections::{BTreeMap, BTreeSet};

use protocol::domain::{Node, NodeState, Role, UnixMillis};
use protocol::error::ErrorCode;
use protocol::fleet::{EventKind, PortConfig, PortIntent, PowerIntent};
use protocol::tenancy::{
    AttachMode, AttachSpec, Job, JobId, JobKind, JobPort, JobPower, JobState, Lease, LeaseId,
    LeaseState, LeaseWindow, Network, NetworkKind, NetworkName, PowerRecord, StepState, SwitchPort,
    Transfer, TransferPhase, VLAN_MAX, VLAN_MIN,
};
use protocol::{NodeId, ProjectId, RackId, Revision};
use serde::{Deserialize, Serialize};

use super::{refuse, refuse_field, Applied, Key, Refusal, State};

/// How long a finished job stays listed.
pub const JOB_RETENTION_MS: UnixMillis = 7 * 24 * 60 * 60 * 1000;

/// A switch port of a rack: (rack, switch, port).
pub type PortKey = (RackId, String, String);

/// The tenancy objects of the desired state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tenancy {
    /// Networks by name.
    pub networks: BTreeMap<NetworkName, Network>,
    /// Switch ports that carry a node's NIC, by (rack, switch, port).
    pub ports: BTreeMap<PortKey, SwitchPort>,
    /// Power intents by node.
    pub power: BTreeMap<NodeId, PowerRecord>,
    /// Jobs by id.
    pub jobs: BTreeMap<JobId, Job>,
    /// Elastic leases by id.
    pub leases: BTreeMap<LeaseId, Lease>,
    /// Index: jobs not yet done or failed. Derived.
    #[serde(skip)]
    open_jobs: BTreeSet<JobId>,
    /// Actor of the request being applied (jobs record who asked). Not persisted.
    #[serde(skip)]
    pub(crate) actor_now: String,
}

/// One tenancy object, as the storage layer addresses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TenancyKey {
    /// A network.
    Network(NetworkName),
    /// A switch port.
    Port(PortKey),
    /// A node's power intent.
    Power(NodeId),
    /// A job.
    Job(JobId),
    /// An elastic lease.
    Lease(LeaseId),
}

/// Storage kinds (the part of the storage key before the first `/`) of tenancy objects.
pub const STORAGE_KINDS: [&str; 5] = ["network", "port", "power", "job", "elastic_lease"];

impl Tenancy {
    /// Every stored object's key.
    pub fn keys(&self) -> Vec<TenancyKey> {
        let mut keys: Vec<TenancyKey> = self
            .networks
            .keys()
            .cloned()
            .map(TenancyKey::Network)
            .collect();
        keys.extend(self.ports.keys().cloned().map(TenancyKey::Port));
        keys.extend(self.power.keys().copied().map(TenancyKey::Power));
        keys.extend(self.jobs.keys().copied().map(TenancyKey::Job));
        keys.extend(self.leases.keys().copied().map(TenancyKey::Lease));
        keys
    }

    /// The object's bytes, or `None` when it no longer exists.
    pub fn encode(&self, key: &TenancyKey) -> Result<Option<Vec<u8>>, postcard::Error> {
        fn enc<T: Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, postcard::Error> {
            v.map(postcard::to_stdvec).transpose()
        }
        match key {
            TenancyKey::Network(k) => enc(self.networks.get(k)),
            TenancyKey::Port(k) => enc(self.ports.get(k)),
            TenancyKey::Power(k) => enc(self.power.get(k)),
            TenancyKey::Job(k) => enc(self.jobs.get(k)),
            TenancyKey::Lease(k) => enc(self.leases.get(k)),
        }
    }

    /// Storage key string: `<kind>/<id>`. Switch and port names may hold `/`, so the switch
    /// name is length-prefixed to keep keys unique.
    pub fn storage_key(key: &TenancyKey) -> String {
        match key {
            TenancyKey::Network(k) => format!("network/{k}"),
            TenancyKey::Port((r, s, p)) => format!("port/{r}/{}:{s}/{p}", s.len()),
            TenancyKey::Power(k) => format!("power/{k}"),
            TenancyKey::Job(k) => format!("job/{k:020}"),
            TenancyKey::Lease(k) => format!("elastic_lease/{k:020}"),
        }
    }

    /// Loads one stored object of storage kind `kind` (one of [`STORAGE_KINDS`]).
    pub fn load(&mut self, kind: &str, storage_key: &str, bytes: &[u8]) -> Result<(), String> {
        let err = |e: postcard::Error| format!("{storage_key}: {e}");
        match kind {
            "network" => {
                let v: Network = postcard::from_bytes(bytes).map_err(err)?;
                self.networks.insert(v.name.clone(), v);
            }
            "port" => {
                let v: SwitchPort = postcard::from_bytes(bytes).map_err(err)?;
                self.ports
                    .insert((v.rack.clone(), v.switch.clone(), v.port.clone()), v);
            }
            "power" => {
                let v: PowerRecord = postcard::from_bytes(bytes).map_err(err)?;
                self.power.insert(v.node, v);
            }
            "job" => {
                let v: Job = postcard::from_bytes(bytes).map_err(err)?;
                self.jobs.insert(v.id, v);
            }
            "elastic_lease" => {
                let v: Lease = postcard::from_bytes(bytes).map_err(err)?;
                self.leases.insert(v.id, v);
            }
            other => {
                return Err(format!(
                    "{storage_key}: not a tenancy object kind {other:?}"
                ))
            }
        }
        Ok(())
    }

    /// Ports of `rack`, sorted by (switch, port).
    pub fn rack_ports<'a>(&'a self, rack: &RackId) -> impl Iterator<Item = &'a SwitchPort> + 'a {
        let rack = rack.clone();
        self.ports
            .range((rack.clone(), String::new(), String::new())..)
            .take_while(move |((r, _, _), _)| *r == rack)
            .map(|(_, p)| p)
    }

    /// Ports carrying NICs of `node`.
    pub fn node_ports(&self, node: NodeId) -> impl Iterator<Item = &SwitchPort> + '_ {
        self.ports.values().filter(move |p| p.node == node)
    }

    /// Jobs not yet done or failed.
    pub fn open_jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.open_jobs.iter().filter_map(|id| self.jobs.get(id))
    }
}

/// Who asks, as far as tenancy rules care: the role, and the project of a project member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Role of the user.
    pub role: Role,
    /// The project a project member is limited to.
    pub project: Option<ProjectId>,
}

impl Caller {
    /// Admins and operators (and the coordinator itself) act fleet-wide.
    pub fn fleet() -> Caller {
        Caller {
            role: Role::Operator,
            project: None,
        }
    }

    fn is_fleet(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }

    /// The project a project member is limited to; `None` for fleet-wide callers.
    fn limit(&self) -> Option<&ProjectId> {
        if self.is_fleet() {
            None
        } else {
            self.project.as_ref()
        }
    }
}

/// The tenancy commands (one [`super::Command::Tenancy`] each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TenancyCommand {
    /// Give a node of the free pool to a project.
    AllocateNode {
        /// Who asks.
        caller: Caller,
        /// The node.
        node: NodeId,
        /// The project.
        project: ProjectId,
    },
    /// Return a node to the free pool (refused while any NIC is attached).
    FreeNode {
        /// Who asks.
        caller: Caller,
        /// The node.
        node: NodeId,
    },
    /// Create a network; its VLAN is `vlan` (admins, non-tenant networks) or the lowest free
    /// one of `pool`.
    CreateNetwork {
        /// Who asks.
        caller: Caller,
        /// Name.
        name: NetworkName,
        /// Kind.
        kind: NetworkKind,
        /// Owner (tenant networks).
        owner: Option<ProjectId>,
        /// Explicit VLAN.
        vlan: Option<u16>,
        /// The configured VLAN pool of the proposing coordinator (inclusive range).
        pool: (u16, u16),
    },
    /// Delete a network (refused while attached); its VLAN returns to the pool.
    DeleteNetwork {
        /// Who asks.
        caller: Caller,
        /// Name.
        name: NetworkName,
    },
    /// Let `project` attach its nodes to a tenant network.
    GrantAccess {
        /// Who asks.
        caller: Caller,
        /// Network.
        network: NetworkName,
        /// Project.
        project: ProjectId,
    },
    /// Withdraw access (refused while the project's nodes are attached).
    RevokeAccess {
        /// Who asks.
        caller: Caller,
        /// Network.
        network: NetworkName,
        /// Project.
        project: ProjectId,
    },
    /// Attach a NIC to a network (a job).
    Attach {
        /// Who asks.
        caller: Caller,
        /// Node.
        node: NodeId,
        /// What to attach.
        spec: AttachSpec,
    },
    /// Detach a NIC from a network (a job).
    Detach {
        /// Who asks.
        caller: Caller,
        /// Node.
        node: NodeId,
        /// NIC.
        nic: String,
        /// Network.
        network: NetworkName,
    },
    /// Revert a NIC's port to carry nothing (a job).
    Revert {
        /// Who asks.
        caller: Caller,
        /// Node.
        node: NodeId,
        /// NIC.
        nic: String,
    },
    /// Power a node on or off (a job).
    Power {
        /// Who asks.
        caller: Caller,
        /// Node.
        node: NodeId,
        /// Desired power.
        on: bool,
    },
    /// Move a node to another project: power off, detach, reassign, attach, power on (a job).
    Move {
        /// Who asks.
        caller: Caller,
        /// Node.
        node: NodeId,
        /// Target project.
        project: ProjectId,
        /// Networks to attach in the target project.
        networks: Vec<AttachSpec>,
    },
    /// Lend a node to `project` while `window` is open.
    CreateLease {
        /// Who asks.
        caller: Caller,
        /// Node.
        node: NodeId,
        /// Borrower.
        project: ProjectId,
        /// When.
        window: LeaseWindow,
    },
    /// End a lease for good (an active one is reclaimed first).
    CancelLease {
        /// Who asks.
        caller: Caller,
        /// Lease.
        lease: LeaseId,
    },
    /// The leader's lease driver saw `lease`'s window open (`open`) or closed at the request's
    /// time; apply re-checks the window against that time.
    LeaseTick {
        /// Lease.
        lease: LeaseId,
        /// Whether the window is open.
        open: bool,
    },
}

impl TenancyCommand {
    /// Audit action name.
    pub fn action(&self) -> &'static str {
        match self {
            TenancyCommand::AllocateNode { .. } => "node.allocate",
            TenancyCommand::FreeNode { .. } => "node.free",
            TenancyCommand::CreateNetwork { .. } => "network.create",
            TenancyCommand::DeleteNetwork { .. } => "network.delete",
            TenancyCommand::GrantAccess { .. } => "network.grant",
            TenancyCommand::RevokeAccess { .. } => "network.revoke",
            TenancyCommand::Attach { .. } => "node.attach",
            TenancyCommand::Detach { .. } => "node.detach",
            TenancyCommand::Revert { .. } => "node.revert_port",
            TenancyCommand::Power { .. } => "node.power",
            TenancyCommand::Move { .. } => "node.move",
            TenancyCommand::CreateLease { .. } => "lease.create",
            TenancyCommand::CancelLease { .. } => "lease.cancel",
            TenancyCommand::LeaseTick { .. } => "lease.tick",
        }
    }

    /// Audit target.
    pub fn target(&self) -> String {
        match self {
            TenancyCommand::AllocateNode { node, project, .. } => format!("{node} -> {project}"),
            TenancyCommand::FreeNode { node, .. } => node.to_string(),
            TenancyCommand::CreateNetwork { name, kind, .. } => {
                format!("{name} ({})", kind.as_str())
            }
            TenancyCommand::DeleteNetwork { name, .. } => name.to_string(),
            TenancyCommand::GrantAccess {
                network, project, ..
            }
            | TenancyCommand::RevokeAccess {
                network, project, ..
            } => format!("{network}: {project}"),
            TenancyCommand::Attach { node, spec, .. } => format!(
                "{node} {} -> {} ({})",
                spec.nic,
                spec.network,
                spec.mode.as_str()
            ),
            TenancyCommand::Detach {
                node, nic, network, ..
            } => format!("{node} {nic} -x {network}"),
            TenancyCommand::Revert { node, nic, .. } => format!("{node} {nic}"),
            TenancyCommand::Power { node, on, .. } => {
                format!("{node} {}", if *on { "on" } else { "off" })
            }
            TenancyCommand::Move { node, project, .. } => format!("{node} -> {project}"),
            TenancyCommand::CreateLease { node, project, .. } => format!("{node} -> {project}"),
            TenancyCommand::CancelLease { lease, .. } => format!("lease {lease}"),
            TenancyCommand::LeaseTick { lease, open } => {
                format!("lease {lease} {}", if *open { "open" } else { "closed" })
            }
        }
    }
}

fn not_found(field: &str, what: impl std::fmt::Display) -> Refusal {
    refuse_field(ErrorCode::NotFound, field, format!("{what} does not exist"))
}

fn conflict(field: &str, message: impl Into<String>) -> Refusal {
    refuse_field(ErrorCode::Conflict, field, message)
}

fn forbidden(field: &str, message: impl Into<String>) -> Refusal {
    refuse_field(ErrorCode::Forbidden, field, message)
}

/// The port configuration that carries `attachments` (VLANs looked up in `networks`).
pub fn port_config(
    attachments: &BTreeMap<NetworkName, AttachMode>,
    networks: &BTreeMap<NetworkName, Network>,
) -> PortConfig {
    let vlan = |n: &NetworkName| networks.get(n).map(|x| x.vlan);
    let native = attachments
        .iter()
        .find(|(_, m)| **m == AttachMode::Access)
        .and_then(|(n, _)| vlan(n));
    let tagged: BTreeSet<u16> = attachments
        .iter()
        .filter(|(_, m)| **m == AttachMode::Trunk)
        .filter_map(|(n, _)| vlan(n))
        .collect();
    if tagged.is_empty() {
        return native.map_or(PortConfig::Unconfigured, |vlan| PortConfig::Access { vlan });
    }
    let mut allowed = tagged;
    allowed.extend(native);
    PortConfig::Trunk {
        native,
        allowed: allowed.into_iter().collect(),
    }
}

/// Where `nic` of `node` is cabled: the expected inventory's switch and port, or failing that
/// the LLDP neighbour the microkernel reported on that interface (`facts.lldp`).
pub fn nic_port(state: &State, node: &Node, nic: &str) -> Result<PortKey, Refusal> {
    let Some(rack) = node.rack.clone() else {
        return Err(conflict(
            "node",
            format!(
                "node {} is in no rack: its switch ports are unknown",
                node.id
            ),
        ));
    };
    let expected = state
        .inventory
        .get(&node.serial)
        .and_then(|r| r.nics.iter().find(|n| n.name == nic));
    let from_inventory = expected.and_then(|n| Some((n.switch.clone()?, n.port.clone()?)));
    // The OS names NICs (`eno1`) as the inventory does; the microkernel that heard LLDP may
    // not (`eth0`): its interfaces with the NIC's MAC count as the NIC too.
    let mac = expected.and_then(|n| n.mac).map(|m| m.to_string());
    let mut local = vec![nic.to_owned()];
    if let (Some(mac), Some(nics)) = (&mac, node.facts.0.get("nics").and_then(|v| v.as_array())) {
        local.extend(
            nics.iter()
                .filter(|n| n.get("mac").and_then(|m| m.as_str()) == Some(mac.as_str()))
                .filter_map(|n| n.get("name")?.as_str().map(str::to_owned)),
        );
    }
    let from_lldp = || {
        node.facts.0.get("lldp")?.as_array()?.iter().find_map(|n| {
            let heard_on = n.get("interface")?.as_str()?;
            if !local.iter().any(|l| l == heard_on) {
                return None;
            }
            let switch = n.get("switch")?.as_str()?.to_owned();
            let port = n.get("port")?.as_str()?.to_owned();
            Some((switch, port))
        })
    };
    match from_inventory.or_else(from_lldp) {
        Some((switch, port)) if !switch.is_empty() && !port.is_empty() => Ok((rack, switch, port)),
        _ => Err(refuse_field(
            ErrorCode::InvalidField,
            "nic",
            format!(
                "no switch port known for NIC {nic:?} of node {}: neither the expected inventory nor the LLDP facts name one",
                node.id
            ),
        )),
    }
}

/// Lowest VLAN of `pool` no network uses.
fn free_vlan(networks: &BTreeMap<NetworkName, Network>, pool: (u16, u16)) -> Option<u16> {
    let used: BTreeSet<u16> = networks.values().map(|n| n.vlan).collect();
    (pool.0.max(VLAN_MIN)..=pool.1.min(VLAN_MAX)).find(|v| !used.contains(v))
}

impl State {
    /// Rebuilds tenancy's derived indexes and the rack change marks its ports contribute.
    pub(crate) fn rebuild_tenancy_indexes(&mut self) {
        self.tenancy.open_jobs = self
            .tenancy
            .jobs
            .values()
            .filter(|j| !j.state.is_final())
            .map(|j| j.id)
            .collect();
        let marks: Vec<(RackId, Revision)> = self
            .tenancy
            .ports
            .values()
            .map(|p| (p.rack.clone(), p.revision))
            .collect();
        for (rack, rev) in marks {
            self.touch_rack(&rack, rev);
        }
    }

    /// The power intent the rack agent should carry out for `node`.
    pub fn power_intent(&self, node: NodeId) -> Option<PowerIntent> {
        self.tenancy.power.get(&node).map(|p| PowerIntent {
            on: p.on,
            generation: p.generation,
        })
    }

    /// The port intents of `rack`, sorted by (switch, port).
    pub fn port_intents(&self, rack: &RackId) -> Vec<PortIntent> {
        self.tenancy.rack_ports(rack).map(port_intent).collect()
    }

    /// The port intents of `rack` changed after `since`.
    pub fn port_intents_since(&self, rack: &RackId, since: Revision) -> Vec<PortIntent> {
        self.tenancy
            .rack_ports(rack)
            .filter(|p| p.revision > since)
            .map(port_intent)
            .collect()
    }

    fn dirty_t(&mut self, key: TenancyKey) {
        self.dirty.insert(Key::Tenancy(key));
    }

    /// The node `caller` may act on: absent and other projects' nodes are both "not found",
    /// so a project member learns nothing about nodes that are not theirs.
    fn visible_node(&self, caller: &Caller, id: NodeId) -> Result<&Node, Refusal> {
        match self.nodes.get(&id) {
            Some(n) if caller.limit().is_none() || n.project.as_ref() == caller.limit() => Ok(n),
            _ => Err(not_found("node", format!("node {id}"))),
        }
    }

    /// The network `caller` may see: fleet-wide callers see all; a project member the ones
    /// its project may attach to.
    fn visible_network(&self, caller: &Caller, name: &NetworkName) -> Result<&Network, Refusal> {
        match self.tenancy.networks.get(name) {
            Some(n) if caller.limit().is_none_or(|p| n.admits(p)) => Ok(n),
            _ => Err(not_found("network", format!("network {name}"))),
        }
    }

    /// Refuses while a move or lease hand-over runs on `node`, and with `power`, also while
    /// a power job does (power and port changes of one node do not wait for each other).
    fn node_idle(&self, node: NodeId, power: bool) -> Result<(), Refusal> {
        if let Some(j) = self.tenancy.open_jobs().find(|j| {
            j.node == node
                && (j.kind.transfer().is_some()
                    || (power && matches!(j.kind, JobKind::Power { .. })))
        }) {
            return Err(conflict(
                "node",
                format!("node {node} has {} job {} in progress", j.kind.name(), j.id),
            ));
        }
        Ok(())
    }

    fn live_lease(&self, node: NodeId) -> Option<&Lease> {
        self.tenancy
            .leases
            .values()
            .find(|l| l.node == node && l.state != LeaseState::Ended)
    }

    /// Refuses a plain node patch that changes the project of a node that is attached to
    /// networks, busy with a job or on lease: that is what free, move and leases are for.
    pub(crate) fn tenancy_allows_reassign(
        &self,
        node: NodeId,
        to: Option<&ProjectId>,
    ) -> Result<(), Refusal> {
        let Some(n) = self.nodes.get(&node) else {
            return Ok(()); // PatchNode answers "not found" itself
        };
        if n.project.as_ref() == to {
            return Ok(());
        }
        let field = |e: Refusal| e.with_field("project");
        if let Some(p) = self
            .tenancy
            .node_ports(node)
            .find(|p| !p.attachments.is_empty())
        {
            return Err(conflict(
                "project",
                format!(
                    "NIC {} of node {node} is attached to {}; detach it first (or use node move)",
                    p.nic,
                    names(&p.attachments)
                ),
            ));
        }
        self.transfer_ready(n).map_err(field)?;
        if let Some(l) = self.live_lease(node) {
            return Err(conflict(
                "project",
                format!("node {node} is on lease {}; cancel it first", l.id),
            ));
        }
        Ok(())
    }

    /// What tenancy still holds of `project` (networks it owns or may use, leases), if
    /// anything: a project in use cannot be deleted.
    pub(crate) fn tenancy_uses_project(&self, project: &ProjectId) -> Option<String> {
        if let Some(n) = self
            .tenancy
            .networks
            .values()
            .find(|n| n.owner.as_ref() == Some(project) || n.access.contains(project))
        {
            return Some(format!("network {}", n.name));
        }
        self.tenancy
            .leases
            .values()
            .find(|l| {
                l.state != LeaseState::Ended
                    && (&l.project == project || l.owner.as_ref() == Some(project))
            })
            .map(|l| format!("lease {}", l.id))
    }

    /// Apply one tenancy command.
    pub(crate) fn apply_tenancy(
        &mut self,
        rev: Revision,
        at: UnixMillis,
        cmd: &TenancyCommand,
    ) -> Result<Applied, Refusal> {
        let actor = &self.tenancy.actor_now.clone();
        if let Some(c) = caller_of(cmd) {
            if c.role == Role::ReadOnly {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "read-only users change nothing",
                ));
            }
            if c.role == Role::ProjectMember && c.project.is_none() {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "a project member without a project may change nothing",
                ));
            }
        }
        match cmd {
            TenancyCommand::AllocateNode {
                caller,
                node,
                project,
            } => {
                if !self.projects.contains_key(project) {
                    return Err(not_found("project", format!("project {project}")));
                }
                if caller.limit().is_some_and(|p| p != project) {
                    return Err(forbidden(
                        "project",
                        "project members allocate nodes only to their own project",
                    ));
                }
                let Some(n) = self.nodes.get(node) else {
                    return Err(not_found("node", format!("node {node}")));
                };
                if let Some(owner) = &n.project {
                    // A project member must not learn which project holds it.
                    return Err(match caller.limit() {
                        Some(p) if p != owner => not_found("node", format!("node {node}")),
                        _ => conflict(
                            "node",
                            format!("node {node} is allocated to project {owner}"),
                        ),
                    });
                }
                if n.state == NodeState::Retired {
                    return Err(refuse_field(
                        ErrorCode::InvalidTransition,
                        "node",
                        format!("node {node} is retired"),
                    ));
                }
                if self.live_lease(*node).is_some() {
                    return Err(conflict("node", format!("node {node} is on lease")));
                }
                self.set_project(*node, Some(project.clone()), rev);
                Ok(Applied::Node(Box::new(self.nodes[node].clone())))
            }
            TenancyCommand::FreeNode { caller, node } => {
                let n = self.visible_node(caller, *node)?;
                if n.project.is_none() {
                    return Err(conflict("node", format!("node {node} is already free")));
                }
                if let Some(p) = self
                    .tenancy
                    .node_ports(*node)
                    .find(|p| !p.attachments.is_empty())
                {
                    return Err(conflict(
                        "node",
                        format!(
                            "NIC {} of node {node} is attached to {}; detach it first",
                            p.nic,
                            names(&p.attachments)
                        ),
                    ));
                }
                if let Some(p) = self.tenancy.node_ports(*node).find(|p| p.job.is_some()) {
                    return Err(conflict(
                        "node",
                        format!("NIC {} of node {node} has a job in progress", p.nic),
                    ));
                }
                self.node_idle(*node, true)?;
                if let Some(l) = self.live_lease(*node) {
                    return Err(conflict(
                        "node",
                        format!("node {node} is on lease {}; cancel it first", l.id),
                    ));
                }
                self.set_project(*node, None, rev);
                Ok(Applied::Node(Box::new(self.nodes[node].clone())))
            }
            TenancyCommand::CreateNetwork {
                caller,
                name,
                kind,
                owner,
                vlan,
                pool,
            } => {
                if self.tenancy.networks.contains_key(name) {
                    return Err(refuse_field(
                        ErrorCode::AlreadyExists,
                        "name",
                        format!("network {name} already exists"),
                    ));
                }
                match (kind, owner) {
                    (NetworkKind::Tenant, None) => {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            "owner",
                            "a tenant network needs an owner project",
                        ))
                    }
                    (NetworkKind::Tenant, Some(o)) => {
                        if !self.projects.contains_key(o) {
                            return Err(not_found("owner", format!("project {o}")));
                        }
                        if caller.limit().is_some_and(|p| p != o) {
                            return Err(forbidden(
                                "owner",
                                "project members create networks only for their own project",
                            ));
                        }
                        if vlan.is_some() {
                            return Err(refuse_field(
                                ErrorCode::InvalidField,
                                "vlan",
                                "tenant networks take their VLAN from the pool",
                            ));
                        }
                    }
                    (k, Some(_)) => {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            "owner",
                            format!("{} networks belong to no project", k.as_str()),
                        ))
                    }
                    (k, None) => {
                        if !caller.is_fleet() {
                            return Err(forbidden(
                                "kind",
                                format!("only admins and operators create {} networks", k.as_str()),
                            ));
                        }
                    }
                }
                let vlan = match vlan {
                    Some(v) => {
                        if !(VLAN_MIN..=VLAN_MAX).contains(v) {
                            return Err(refuse_field(
                                ErrorCode::InvalidField,
                                "vlan",
                                format!("VLAN {v} is outside {VLAN_MIN}..={VLAN_MAX}"),
                            ));
                        }
                        if let Some(n) = self.tenancy.networks.values().find(|n| n.vlan == *v) {
                            return Err(conflict(
                                "vlan",
                                format!("VLAN {v} is used by network {}", n.name),
                            ));
                        }
                        *v
                    }
                    None => free_vlan(&self.tenancy.networks, *pool).ok_or_else(|| {
                        conflict(
                            "vlan",
                            format!("the VLAN pool {}-{} is exhausted", pool.0, pool.1),
                        )
                    })?,
                };
                let net = Network {
                    name: name.clone(),
                    kind: *kind,
                    owner: owner.clone(),
                    access: BTreeSet::new(),
                    vlan,
                    created_at: at,
                    revision: rev,
                };
                self.tenancy.networks.insert(name.clone(), net);
                self.dirty_t(TenancyKey::Network(name.clone()));
                Ok(Applied::Done)
            }
            TenancyCommand::DeleteNetwork { caller, name } => {
                let net = self.owned_network(caller, name)?;
                let _ = net;
                if let Some(p) = self
                    .tenancy
                    .ports
                    .values()
                    .find(|p| p.attachments.contains_key(name))
                {
                    return Err(conflict(
                        "name",
                        format!(
                            "network {name} is attached to NIC {} of node {}; detach it first",
                            p.nic, p.node
                        ),
                    ));
                }
                if let Some(j) = self.tenancy.open_jobs().find(|j| job_uses(j, name)) {
                    return Err(conflict(
                        "name",
                        format!("network {name} is used by job {} in progress", j.id),
                    ));
                }
                self.tenancy.networks.remove(name);
                self.dirty_t(TenancyKey::Network(name.clone()));
                Ok(Applied::Done)
            }
            TenancyCommand::GrantAccess {
                caller,
                network,
                project,
            } => {
                let net = self.owned_network(caller, network)?;
                if net.kind != NetworkKind::Tenant {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "network",
                        format!("{} networks have no access list", net.kind.as_str()),
                    ));
                }
                if !self.projects.contains_key(project) {
                    return Err(not_found("project", format!("project {project}")));
                }
                if net.owner.as_ref() == Some(project) {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "project",
                        format!("project {project} owns network {network}"),
                    ));
                }
                if let Some(n) = self.tenancy.networks.get_mut(network) {
                    n.access.insert(project.clone());
                    n.revision = rev;
                }
                self.dirty_t(TenancyKey::Network(network.clone()));
                Ok(Applied::Done)
            }
            TenancyCommand::RevokeAccess {
                caller,
                network,
                project,
            } => {
                let net = self.owned_network(caller, network)?;
                if !net.access.contains(project) {
                    return Err(not_found(
                        "project",
                        format!("access of project {project} to network {network}"),
                    ));
                }
                if let Some(p) = self.tenancy.ports.values().find(|p| {
                    p.attachments.contains_key(network)
                        && self.nodes.get(&p.node).and_then(|n| n.project.as_ref()) == Some(project)
                }) {
                    return Err(conflict(
                        "project",
                        format!(
                            "NIC {} of node {} (project {project}) is attached to {network}; detach it first",
                            p.nic, p.node
                        ),
                    ));
                }
                if let Some(n) = self.tenancy.networks.get_mut(network) {
                    n.access.remove(project);
                    n.revision = rev;
                }
                self.dirty_t(TenancyKey::Network(network.clone()));
                Ok(Applied::Done)
            }
            TenancyCommand::Attach { caller, node, spec } => {
                let n = self.visible_node(caller, *node)?.clone();
                self.node_idle(*node, false)?;
                let key = self.check_attach(caller, &n, spec)?;
                let mut attachments = self
                    .tenancy
                    .ports
                    .get(&key)
                    .map(|p| p.attachments.clone())
                    .unwrap_or_default();
                attachments.insert(spec.network.clone(), spec.mode);
                let job = self.new_job(
                    rev,
                    at,
                    actor,
                    *node,
                    JobKind::Attach {
                        nic: spec.nic.clone(),
                        network: spec.network.clone(),
                        mode: spec.mode,
                    },
                    n.project.iter().cloned().collect(),
                );
                let jp = self.set_port(rev, key, *node, &spec.nic, attachments, Some(job));
                self.job_started(job, vec![jp], None, at, rev);
                Ok(Applied::Done)
            }
            TenancyCommand::Detach {
                caller,
                node,
                nic,
                network,
            } => {
                let n = self.visible_node(caller, *node)?.clone();
                self.node_idle(*node, false)?;
                let key = self.idle_port(&n, nic)?;
                let port = self.tenancy.ports.get(&key);
                let mut attachments = port.map(|p| p.attachments.clone()).unwrap_or_default();
                if attachments.remove(network).is_none() {
                    return Err(not_found(
                        "network",
                        format!("attachment of NIC {nic} of node {node} to network {network}"),
                    ));
                }
                let kind = self.tenancy.networks.get(network).map(|x| x.kind);
                if kind.is_some_and(NetworkKind::is_infrastructure) && !caller.is_fleet() {
                    return Err(forbidden(
                        "network",
                        "only admins and operators detach provisioning and BMC networks",
                    ));
                }
                let job = self.new_job(
                    rev,
                    at,
                    actor,
                    *node,
                    JobKind::Detach {
                        nic: nic.clone(),
                        network: network.clone(),
                    },
                    n.project.iter().cloned().collect(),
                );
                let jp = self.set_port(rev, key, *node, nic, attachments, Some(job));
                self.job_started(job, vec![jp], None, at, rev);
                Ok(Applied::Done)
            }
            TenancyCommand::Revert { caller, node, nic } => {
                let n = self.visible_node(caller, *node)?.clone();
                self.node_idle(*node, false)?;
                let key = self.idle_port(&n, nic)?;
                let attachments = self
                    .tenancy
                    .ports
                    .get(&key)
                    .map(|p| p.attachments.clone())
                    .unwrap_or_default();
                if !caller.is_fleet() {
                    if let Some(infra) = attachments.keys().find(|a| {
                        self.tenancy
                            .networks
                            .get(*a)
                            .is_some_and(|x| x.kind.is_infrastructure())
                    }) {
                        return Err(forbidden(
                            "nic",
                            format!("NIC {nic} carries {infra}: only admins and operators detach provisioning and BMC networks"),
                        ));
                    }
                }
                let job = self.new_job(
                    rev,
                    at,
                    actor,
                    *node,
                    JobKind::Revert { nic: nic.clone() },
                    n.project.iter().cloned().collect(),
                );
                let jp = self.set_port(rev, key, *node, nic, BTreeMap::new(), Some(job));
                self.job_started(job, vec![jp], None, at, rev);
                Ok(Applied::Done)
            }
            TenancyCommand::Power { caller, node, on } => {
                let n = self.visible_node(caller, *node)?.clone();
                self.node_idle(*node, true)?;
                if n.rack.is_none() {
                    return Err(conflict(
                        "node",
                        format!("node {node} is in no rack: no agent can reach its BMC"),
                    ));
                }
                let job = self.new_job(
                    rev,
                    at,
                    actor,
                    *node,
                    JobKind::Power { on: *on },
                    n.project.iter().cloned().collect(),
                );
                let jp = self.set_power(rev, *node, *on, job);
                self.job_started(job, Vec::new(), Some(jp), at, rev);
                Ok(Applied::Done)
            }
            TenancyCommand::Move {
                caller,
                node,
                project,
                networks,
            } => {
                if !caller.is_fleet() {
                    return Err(refuse(
                        ErrorCode::Forbidden,
                        "only admins and operators move nodes between projects",
                    ));
                }
                let n = self.visible_node(caller, *node)?.clone();
                if !self.projects.contains_key(project) {
                    return Err(not_found("project", format!("project {project}")));
                }
                if let Some(l) = self.live_lease(*node) {
                    return Err(conflict(
                        "node",
                        format!("node {node} is on lease {}; cancel it first", l.id),
                    ));
                }
                self.transfer_ready(&n)?;
                self.check_specs(caller, &n, project, networks)?;
                let t = Transfer {
                    to: Some(project.clone()),
                    from: n.project.clone(),
                    attach: networks.clone(),
                    power_on: true,
                    phase: TransferPhase::PowerOff,
                    lease: None,
                };
                let projects = n.project.iter().chain([project]).cloned().collect();
                let job = self.new_job(rev, at, actor, *node, JobKind::Move(t), projects);
                self.enter_phase(job, TransferPhase::PowerOff, rev, at);
                Ok(Applied::Done)
            }
            TenancyCommand::CreateLease {
                caller,
                node,
                project,
                window,
            } => {
                if let Err(e) = window.validate() {
                    return Err(refuse_field(ErrorCode::InvalidField, e.field, e.message));
                }
                let n = self.visible_node(caller, *node)?.clone();
                if !self.projects.contains_key(project) {
                    return Err(not_found("project", format!("project {project}")));
                }
                if n.project.as_ref() == Some(project) {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "project",
                        format!("node {node} already belongs to project {project}"),
                    ));
                }
                if let Some(l) = self.live_lease(*node) {
                    return Err(conflict(
                        "node",
                        format!("node {node} is already on lease {}", l.id),
                    ));
                }
                if let LeaseWindow::Once { until, .. } = window {
                    if *until <= at {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            "window.until",
                            "the window is already over",
                        ));
                    }
                }
                let lease = Lease {
                    id: rev,
                    node: *node,
                    project: project.clone(),
                    owner: n.project.clone(),
                    window: window.clone(),
                    state: LeaseState::Away,
                    job: None,
                    cancelled: false,
                    actor: actor.to_owned(),
                    created_at: at,
                    revision: rev,
                };
                self.tenancy.leases.insert(rev, lease);
                self.dirty_t(TenancyKey::Lease(rev));
                Ok(Applied::Done)
            }
            TenancyCommand::CancelLease { caller, lease } => {
                let l = self.visible_lease(caller, *lease)?.clone();
                match l.state {
                    LeaseState::Ended => {
                        return Err(conflict("lease", format!("lease {lease} has ended")))
                    }
                    LeaseState::Away => {
                        self.update_lease(*lease, rev, |l| {
                            l.state = LeaseState::Ended;
                            l.cancelled = true;
                        });
                    }
                    LeaseState::Active => {
                        self.update_lease(*lease, rev, |l| l.cancelled = true);
                        self.end_lease(*lease, rev, at, actor)?;
                    }
                    // The hand-over in progress finishes first; the driver ends it after.
                    LeaseState::Starting | LeaseState::Ending => {
                        self.update_lease(*lease, rev, |l| l.cancelled = true);
                    }
                }
                Ok(Applied::Done)
            }
            TenancyCommand::LeaseTick { lease, open } => {
                let Some(l) = self.tenancy.leases.get(lease).cloned() else {
                    return Err(not_found("lease", format!("lease {lease}")));
                };
                // The driver decided on its wall clock; the request's time is the one that
                // counts, so a late or replayed tick cannot flip a lease the wrong way.
                let open_now = l.window.open_at(at) && !l.cancelled;
                if *open != open_now {
                    return Err(conflict(
                        "lease",
                        format!(
                            "lease {lease} window is {} at {at}",
                            if open_now { "open" } else { "closed" }
                        ),
                    ));
                }
                match (l.state, open_now) {
                    (LeaseState::Away, true) => self.start_lease(*lease, rev, at, actor),
                    (LeaseState::Active, false) => self.end_lease(*lease, rev, at, actor),
                    (LeaseState::Away, false) if l.cancelled || l.window.over_at(at) => {
                        self.update_lease(*lease, rev, |l| l.state = LeaseState::Ended);
                        Ok(Applied::Done)
                    }
                    (s, _) => Err(conflict(
                        "lease",
                        format!("lease {lease} is {}: nothing to do", s.as_str()),
                    )),
                }
            }
        }
    }

    fn visible_lease(&self, caller: &Caller, id: LeaseId) -> Result<&Lease, Refusal> {
        match self.tenancy.leases.get(&id) {
            Some(l)
                if caller
                    .limit()
                    .is_none_or(|p| l.owner.as_ref() == Some(p) || &l.project == p) =>
            {
                Ok(l)
            }
            _ => Err(not_found("lease", format!("lease {id}"))),
        }
    }

    fn update_lease(&mut self, id: LeaseId, rev: Revision, f: impl FnOnce(&mut Lease)) {
        if let Some(l) = self.tenancy.leases.get_mut(&id) {
            f(l);
            l.revision = rev;
            self.dirty_t(TenancyKey::Lease(id));
        }
    }

    fn start_lease(
        &mut self,
        id: LeaseId,
        rev: Revision,
        at: UnixMillis,
        actor: &str,
    ) -> Result<Applied, Refusal> {
        let l = self.tenancy.leases[&id].clone();
        let n = self
            .nodes
            .get(&l.node)
            .cloned()
            .ok_or_else(|| not_found("node", format!("node {}", l.node)))?;
        self.transfer_ready(&n)?;
        let t = Transfer {
            to: Some(l.project.clone()),
            from: n.project.clone(),
            attach: Vec::new(),
            power_on: false,
            phase: TransferPhase::PowerOff,
            lease: Some(id),
        };
        let projects = n.project.iter().chain([&l.project]).cloned().collect();
        let job = self.new_job(rev, at, actor, l.node, JobKind::LeaseStart(t), projects);
        self.update_lease(id, rev, |l| {
            l.state = LeaseState::Starting;
            l.job = Some(job);
        });
        self.enter_phase(job, TransferPhase::PowerOff, rev, at);
        Ok(Applied::Done)
    }

    fn end_lease(
        &mut self,
        id: LeaseId,
        rev: Revision,
        at: UnixMillis,
        actor: &str,
    ) -> Result<Applied, Refusal> {
        let l = self.tenancy.leases[&id].clone();
        let n = self
            .nodes
            .get(&l.node)
            .cloned()
            .ok_or_else(|| not_found("node", format!("node {}", l.node)))?;
        self.transfer_ready(&n)?;
        // The owner must still exist to take the node back; otherwise it returns to the pool.
        let owner = l.owner.clone().filter(|o| self.projects.contains_key(o));
        let t = Transfer {
            to: owner,
            from: n.project.clone(),
            attach: Vec::new(),
            power_on: false,
            phase: TransferPhase::PowerOff,
            lease: Some(id),
        };
        let projects = l.owner.iter().chain([&l.project]).cloned().collect();
        let job = self.new_job(rev, at, actor, l.node, JobKind::LeaseEnd(t), projects);
        self.update_lease(id, rev, |l| {
            l.state = LeaseState::Ending;
            l.job = Some(job);
        });
        self.enter_phase(job, TransferPhase::PowerOff, rev, at);
        Ok(Applied::Done)
    }

    /// A tenant network owned by the caller's project, or any network for fleet-wide callers.
    fn owned_network(&self, caller: &Caller, name: &NetworkName) -> Result<&Network, Refusal> {
        let net = self.visible_network(caller, name)?;
        if let Some(p) = caller.limit() {
            if net.owner.as_ref() != Some(p) {
                return Err(forbidden(
                    "network",
                    format!("network {name} belongs to another project"),
                ));
            }
        } else if net.kind.is_infrastructure() && caller.role != Role::Admin {
            return Err(forbidden(
                "network",
                format!("only admins change {} networks", net.kind.as_str()),
            ));
        }
        Ok(net)
    }

    /// The port of `nic`, refusing while a job is changing it (one pending action per NIC).
    fn idle_port(&self, node: &Node, nic: &str) -> Result<PortKey, Refusal> {
        let key = nic_port(self, node, nic)?;
        if let Some(p) = self.tenancy.ports.get(&key) {
            if p.node != node.id || p.nic != nic {
                return Err(conflict(
                    "nic",
                    format!(
                        "switch {} port {} is recorded for NIC {} of node {}",
                        key.1, key.2, p.nic, p.node
                    ),
                ));
            }
            if let Some(j) = p.job {
                return Err(conflict(
                    "nic",
                    format!("NIC {nic} has job {j} in progress; wait for it to finish"),
                ));
            }
        }
        Ok(key)
    }

    /// Checks one attachment of `node` for `caller`; returns the NIC's port.
    fn check_attach(
        &self,
        caller: &Caller,
        node: &Node,
        spec: &AttachSpec,
    ) -> Result<PortKey, Refusal> {
        let net = self.visible_network(caller, &spec.network)?;
        if net.kind.is_infrastructure() {
            if !caller.is_fleet() {
                return Err(forbidden(
                    "network",
                    format!(
                        "only admins and operators attach {} networks",
                        net.kind.as_str()
                    ),
                ));
            }
        } else {
            let Some(project) = &node.project else {
                return Err(conflict(
                    "node",
                    format!("node {} is in the free pool; allocate it first", node.id),
                ));
            };
            if !net.admits(project) {
                return Err(forbidden(
                    "network",
                    format!("project {project} has no access to network {}", net.name),
                ));
            }
        }
        let key = self.idle_port(node, &spec.nic)?;
        let current = self
            .tenancy
            .ports
            .get(&key)
            .map(|p| p.attachments.clone())
            .unwrap_or_default();
        check_mix(&current, net, spec, &self.tenancy.networks)?;
        Ok(key)
    }

    /// Checks a transfer's attachments against the target project before anything moves.
    fn check_specs(
        &self,
        caller: &Caller,
        node: &Node,
        project: &ProjectId,
        specs: &[AttachSpec],
    ) -> Result<(), Refusal> {
        let mut planned: BTreeMap<String, BTreeMap<NetworkName, AttachMode>> = BTreeMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let field = |f: &str| format!("networks[{i}].{f}");
            let net = self
                .visible_network(caller, &spec.network)
                .map_err(|e| e.with_field(field("network")))?;
            if net.kind.is_infrastructure() {
                return Err(forbidden(
                    &field("network"),
                    format!(
                        "a move attaches tenant networks only; {} is a {} network",
                        net.name,
                        net.kind.as_str()
                    ),
                ));
            }
            if !net.admits(project) {
                return Err(forbidden(
                    &field("network"),
                    format!("project {project} has no access to network {}", net.name),
                ));
            }
            nic_port(self, node, &spec.nic).map_err(|e| e.with_field(field("nic")))?;
            let current = planned.entry(spec.nic.clone()).or_default();
            check_mix(current, net, spec, &self.tenancy.networks)
                .map_err(|e| e.with_field(field("mode")))?;
            current.insert(spec.network.clone(), spec.mode);
        }
        Ok(())
    }

    /// Refuses a transfer while a job runs on the node or any of its NICs.
    fn transfer_ready(&self, node: &Node) -> Result<(), Refusal> {
        self.node_idle(node.id, true)?;
        if let Some(p) = self.tenancy.node_ports(node.id).find(|p| p.job.is_some()) {
            return Err(conflict(
                "node",
                format!("NIC {} of node {} has a job in progress", p.nic, node.id),
            ));
        }
        Ok(())
    }

    fn set_project(&mut self, node: NodeId, project: Option<ProjectId>, rev: Revision) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.project = project;
            n.revision = rev;
            let rack = n.rack.clone();
            self.dirty.insert(Key::Node(node));
            if let Some(r) = rack {
                self.touch_rack(&r, rev);
            }
        }
    }

    fn new_job(
        &mut self,
        rev: Revision,
        at: UnixMillis,
        actor: &str,
        node: NodeId,
        kind: JobKind,
        projects: BTreeSet<ProjectId>,
    ) -> JobId {
        let job = Job {
            id: rev,
            node,
            projects,
            kind,
            state: JobState::Pending,
            ports: Vec::new(),
            power: None,
            error: None,
            actor: actor.to_owned(),
            created_at: at,
            updated_at: at,
            revision: rev,
        };
        self.tenancy.jobs.insert(rev, job);
        self.tenancy.open_jobs.insert(rev);
        self.dirty_t(TenancyKey::Job(rev));
        rev
    }

    /// Sets the intent of port `key` (NIC `nic` of `node`) to carry `attachments`, as a new
    /// generation owned by `job`.
    fn set_port(
        &mut self,
        rev: Revision,
        key: PortKey,
        node: NodeId,
        nic: &str,
        attachments: BTreeMap<NetworkName, AttachMode>,
        job: Option<JobId>,
    ) -> JobPort {
        let config = port_config(&attachments, &self.tenancy.networks);
        let (rack, switch, port) = key.clone();
        let rec = self
            .tenancy
            .ports
            .entry(key.clone())
            .or_insert_with(|| SwitchPort {
                rack: rack.clone(),
                switch: switch.clone(),
                port: port.clone(),
                node,
                nic: nic.to_owned(),
                attachments: BTreeMap::new(),
                config: PortConfig::Unconfigured,
                generation: 0,
                applied_generation: 0,
                applied_ok: None,
                observed: None,
                message: String::new(),
                job: None,
                revision: rev,
            });
        rec.attachments = attachments;
        rec.config = config.clone();
        rec.generation = rev;
        rec.job = job;
        rec.revision = rev;
        self.dirty_t(TenancyKey::Port(key));
        self.touch_rack(&rack, rev);
        JobPort {
            switch,
            port,
            nic: nic.to_owned(),
            config,
            generation: rev,
            state: StepState::Pending,
            observed: None,
            message: String::new(),
        }
    }

    /// Sets `node`'s power intent as a new generation owned by `job`.
    fn set_power(&mut self, rev: Revision, node: NodeId, on: bool, job: JobId) -> JobPower {
        let rec = self.tenancy.power.entry(node).or_insert(PowerRecord {
            node,
            on,
            generation: 0,
            applied_generation: 0,
            applied_ok: None,
            message: String::new(),
            job: None,
        });
        rec.on = on;
        rec.generation = rev;
        rec.job = Some(job);
        self.dirty_t(TenancyKey::Power(node));
        // The power intent travels in the node's agent view: bump the node so the rack's
        // agent gets it.
        if let Some(n) = self.nodes.get_mut(&node) {
            n.revision = rev;
            let rack = n.rack.clone();
            self.dirty.insert(Key::Node(node));
            if let Some(r) = rack {
                self.touch_rack(&r, rev);
            }
        }
        JobPower {
            on,
            generation: rev,
            state: StepState::Pending,
            message: String::new(),
        }
    }

    fn job_started(
        &mut self,
        job: JobId,
        ports: Vec<JobPort>,
        power: Option<JobPower>,
        at: UnixMillis,
        rev: Revision,
    ) {
        if let Some(j) = self.tenancy.jobs.get_mut(&job) {
            j.ports = ports;
            j.power = power;
            j.state = JobState::Running;
            j.updated_at = at;
            j.revision = rev;
        }
        self.dirty_t(TenancyKey::Job(job));
    }

    /// Starts `phase` of transfer job `job`, skipping phases with nothing to do.
    fn enter_phase(&mut self, job: JobId, phase: TransferPhase, rev: Revision, at: UnixMillis) {
        let Some(j) = self.tenancy.jobs.get(&job).cloned() else {
            return;
        };
        let Some(t) = j.kind.transfer().cloned() else {
            return;
        };
        let node = j.node;
        let mut phase = phase;
        loop {
            if let Some(jm) = self.tenancy.jobs.get_mut(&job) {
                if let Some(tm) = jm.kind.transfer_mut() {
                    tm.phase = phase;
                }
            }
            match phase {
                TransferPhase::PowerOff => {
                    let jp = self.set_power(rev, node, false, job);
                    self.job_started(job, Vec::new(), Some(jp), at, rev);
                    return;
                }
                TransferPhase::Detach => {
                    // Every port of the node that carries or may carry something is reverted,
                    // so nothing of the old project stays reachable.
                    let keys: Vec<(PortKey, String)> = self
                        .tenancy
                        .node_ports(node)
                        .filter(|p| {
                            !p.attachments.is_empty()
                                || p.config != PortConfig::Unconfigured
                                || p.applied_ok != Some(true)
                        })
                        .map(|p| {
                            (
                                (p.rack.clone(), p.switch.clone(), p.port.clone()),
                                p.nic.clone(),
                            )
                        })
                        .collect();
                    if keys.is_empty() {
                        phase = self.reassign(job, &t, rev, at);
                        continue;
                    }
                    let ports = keys
                        .into_iter()
                        .map(|(k, nic)| {
                            self.set_port(rev, k, node, &nic, BTreeMap::new(), Some(job))
                        })
                        .collect();
                    self.job_started(job, ports, None, at, rev);
                    return;
                }
                TransferPhase::Attach => {
                    let Some(n) = self.nodes.get(&node).cloned() else {
                        self.fail_job(job, "the node no longer exists".into(), at, rev);
                        return;
                    };
                    let mut per_port: BTreeMap<
                        PortKey,
                        (String, BTreeMap<NetworkName, AttachMode>),
                    > = BTreeMap::new();
                    for (i, spec) in t.attach.iter().enumerate() {
                        // Checked when the move was accepted; checked again because networks
                        // may have changed while the node was powering off.
                        let ok = self.tenancy.networks.get(&spec.network).is_some_and(|net| {
                            !net.kind.is_infrastructure()
                                && t.to.as_ref().is_some_and(|p| net.admits(p))
                        });
                        if !ok {
                            self.fail_job(
                                job,
                                format!(
                                    "networks[{i}]: network {} is gone or no longer admits project {}",
                                    spec.network,
                                    t.to.as_ref().map(|p| p.as_str()).unwrap_or("-")
                                ),
                                at,
                                rev,
                            );
                            return;
                        }
                        match nic_port(self, &n, &spec.nic) {
                            Ok(k) => {
                                per_port
                                    .entry(k)
                                    .or_insert_with(|| (spec.nic.clone(), BTreeMap::new()))
                                    .1
                                    .insert(spec.network.clone(), spec.mode);
                            }
                            Err(e) => {
                                self.fail_job(
                                    job,
                                    format!("networks[{i}]: {}", e.message),
                                    at,
                                    rev,
                                );
                                return;
                            }
                        }
                    }
                    if per_port.is_empty() {
                        phase = if t.power_on {
                            TransferPhase::PowerOn
                        } else {
                            TransferPhase::Finished
                        };
                        continue;
                    }
                    let ports = per_port
                        .into_iter()
                        .map(|(k, (nic, a))| self.set_port(rev, k, node, &nic, a, Some(job)))
                        .collect();
                    self.job_started(job, ports, None, at, rev);
                    return;
                }
                TransferPhase::PowerOn => {
                    let jp = self.set_power(rev, node, true, job);
                    self.job_started(job, Vec::new(), Some(jp), at, rev);
                    return;
                }
                TransferPhase::Finished => {
                    self.finish_job(job, JobState::Done, None, at, rev);
                    return;
                }
            }
        }
    }

    /// The node changes hands (between detach and attach); returns the next phase.
    fn reassign(
        &mut self,
        job: JobId,
        t: &Transfer,
        rev: Revision,
        at: UnixMillis,
    ) -> TransferPhase {
        let node = self.tenancy.jobs.get(&job).map(|j| j.node);
        if let Some(node) = node {
            self.set_project(node, t.to.clone(), rev);
        }
        if let Some(id) = t.lease {
            let starting = matches!(
                self.tenancy.jobs.get(&job).map(|j| &j.kind),
                Some(JobKind::LeaseStart(_))
            );
            self.update_lease(id, rev, |l| {
                l.state = if starting {
                    LeaseState::Active
                } else if l.cancelled || l.window.over_at(at) {
                    LeaseState::Ended
                } else {
                    LeaseState::Away
                };
            });
        }
        TransferPhase::Attach
    }

    fn fail_job(&mut self, job: JobId, error: String, at: UnixMillis, rev: Revision) {
        self.finish_job(job, JobState::Failed, Some(error), at, rev);
    }

    /// Ends `job`: releases its ports and power record.
    fn finish_job(
        &mut self,
        job: JobId,
        state: JobState,
        error: Option<String>,
        at: UnixMillis,
        rev: Revision,
    ) {
        let Some(j) = self.tenancy.jobs.get_mut(&job) else {
            return;
        };
        j.state = state;
        j.error = error;
        j.updated_at = at;
        j.revision = rev;
        let node = j.node;
        let lease = j.kind.transfer().and_then(|t| t.lease);
        self.tenancy.open_jobs.remove(&job);
        self.dirty_t(TenancyKey::Job(job));
        self.prune_jobs(at);
        let keys: Vec<PortKey> = self
            .tenancy
            .ports
            .iter()
            .filter(|(_, p)| p.job == Some(job))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(p) = self.tenancy.ports.get_mut(&k) {
                p.job = None;
            }
            self.dirty_t(TenancyKey::Port(k));
        }
        if let Some(p) = self.tenancy.power.get_mut(&node) {
            if p.job == Some(job) {
                p.job = None;
                self.dirty_t(TenancyKey::Power(node));
            }
        }
        if let Some(id) = lease {
            // A failed hand-over leaves the lease where the node is; the driver retries.
            self.update_lease(id, rev, |l| {
                l.job = None;
                if state == JobState::Failed {
                    l.state = match l.state {
                        LeaseState::Starting => LeaseState::Away,
                        LeaseState::Ending => LeaseState::Active,
                        s => s,
                    };
                }
            });
        }
    }

    /// Forgets finished jobs last changed more than [`JOB_RETENTION_MS`] before `at`, oldest
    /// first, stopping at the first job that is open or recent (ids grow with time).
    fn prune_jobs(&mut self, at: UnixMillis) {
        let cutoff = at.saturating_sub(JOB_RETENTION_MS);
        while let Some((&id, j)) = self.tenancy.jobs.first_key_value() {
            if !j.state.is_final() || j.updated_at >= cutoff {
                break;
            }
            self.tenancy.jobs.remove(&id);
            self.dirty_t(TenancyKey::Job(id));
        }
    }

    /// The effect of a power or port report of `rack`'s agent.
    pub(crate) fn apply_tenancy_event(
        &mut self,
        rack: &RackId,
        rev: Revision,
        at: UnixMillis,
        kind: &EventKind,
    ) {
        match kind {
            EventKind::PowerApplied {
                node,
                generation,
                ok,
                message,
            } => {
                // An agent speaks only for its own rack's nodes.
                if self.nodes.get(node).and_then(|n| n.rack.as_ref()) != Some(rack) {
                    return;
                }
                let Some(rec) = self.tenancy.power.get_mut(node) else {
                    return;
                };
                if *generation < rec.applied_generation || *generation > rec.generation {
                    return;
                }
                rec.applied_generation = *generation;
                rec.applied_ok = Some(*ok);
                rec.message.clone_from(message);
                let job = rec.job.filter(|_| *generation == rec.generation);
                self.dirty_t(TenancyKey::Power(*node));
                if let Some(job) = job {
                    if let Some(j) = self.tenancy.jobs.get_mut(&job) {
                        if let Some(p) = j.power.as_mut().filter(|p| p.generation == *generation) {
                            p.state = if *ok {
                                StepState::Done
                            } else {
                                StepState::Failed
                            };
                            p.message.clone_from(message);
                        }
                    }
                    self.advance_job(job, rev, at);
                }
            }
            EventKind::PortApplied {
                switch,
                port,
                generation,
                ok,
                observed,
                message,
            } => {
                let key = (rack.clone(), switch.clone(), port.clone());
                let Some(rec) = self.tenancy.ports.get_mut(&key) else {
                    return;
                };
                if *generation < rec.applied_generation || *generation > rec.generation {
                    return;
                }
                rec.applied_generation = *generation;
                rec.applied_ok = Some(*ok);
                rec.observed.clone_from(observed);
                rec.message.clone_from(message);
                let job = rec.job.filter(|_| *generation == rec.generation);
                self.dirty_t(TenancyKey::Port(key));
                if let Some(job) = job {
                    if let Some(j) = self.tenancy.jobs.get_mut(&job) {
                        for p in j.ports.iter_mut().filter(|p| {
                            &p.switch == switch && &p.port == port && p.generation == *generation
                        }) {
                            p.state = if *ok {
                                StepState::Done
                            } else {
                                StepState::Failed
                            };
                            p.observed.clone_from(observed);
                            p.message.clone_from(message);
                        }
                    }
                    self.advance_job(job, rev, at);
                }
            }
            _ => {}
        }
    }

    /// Moves `job` on after a report: finishes it, or starts its next transfer phase.
    fn advance_job(&mut self, job: JobId, rev: Revision, at: UnixMillis) {
        let Some(j) = self.tenancy.jobs.get_mut(&job) else {
            return;
        };
        j.updated_at = at;
        j.revision = rev;
        self.dirty_t(TenancyKey::Job(job));
        let j = self.tenancy.jobs[&job].clone();
        if j.state.is_final() {
            return;
        }
        let failed = j
            .ports
            .iter()
            .find(|p| p.state == StepState::Failed)
            .map(|p| format!("switch {} port {}: {}", p.switch, p.port, p.message))
            .or_else(|| {
                j.power
                    .as_ref()
                    .filter(|p| p.state == StepState::Failed)
                    .map(|p| format!("power {}: {}", if p.on { "on" } else { "off" }, p.message))
            });
        if let Some(e) = failed {
            let e = match j.kind.transfer() {
                Some(t) => format!("{} phase: {e}", t.phase.as_str()),
                None => e,
            };
            self.fail_job(job, e, at, rev);
            return;
        }
        let pending = j.ports.iter().any(|p| p.state == StepState::Pending)
            || j.power
                .as_ref()
                .is_some_and(|p| p.state == StepState::Pending);
        if pending {
            return;
        }
        match j.kind.transfer().cloned() {
            None => self.finish_job(job, JobState::Done, None, at, rev),
            Some(t) => {
                let next = match t.phase {
                    TransferPhase::PowerOff => TransferPhase::Detach,
                    TransferPhase::Detach => self.reassign(job, &t, rev, at),
                    TransferPhase::Attach if t.power_on => TransferPhase::PowerOn,
                    TransferPhase::Attach | TransferPhase::PowerOn | TransferPhase::Finished => {
                        TransferPhase::Finished
                    }
                };
                self.enter_phase(job, next, rev, at);
            }
        }
    }
}

fn port_intent(p: &SwitchPort) -> PortIntent {
    PortIntent {
        switch: p.switch.clone(),
        port: p.port.clone(),
        config: p.config.clone(),
        generation: p.generation,
    }
}

fn names(a: &BTreeMap<NetworkName, AttachMode>) -> String {
    a.keys().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn job_uses(j: &Job, network: &NetworkName) -> bool {
    match &j.kind {
        JobKind::Attach { network: n, .. } | JobKind::Detach { network: n, .. } => n == network,
        k => k
            .transfer()
            .is_some_and(|t| t.attach.iter().any(|s| &s.network == network)),
    }
}

/// Refuses an attachment of `net` to a NIC already carrying `current` when it would put a
/// tenant-side and an infrastructure network on one NIC, a second untagged network, or the
/// same network twice.
fn check_mix(
    current: &BTreeMap<NetworkName, AttachMode>,
    net: &Network,
    spec: &AttachSpec,
    networks: &BTreeMap<NetworkName, Network>,
) -> Result<(), Refusal> {
    if current.contains_key(&net.name) {
        return Err(refuse_field(
            ErrorCode::AlreadyExists,
            "network",
            format!("NIC {} is already attached to {}", spec.nic, net.name),
        ));
    }
    for other in current.keys().filter_map(|n| networks.get(n)) {
        if other.kind.is_infrastructure() != net.kind.is_infrastructure() {
            return Err(conflict(
                "network",
                format!(
                    "NIC {} carries {} network {}; a NIC never carries both a tenant and a provisioning/BMC network",
                    spec.nic,
                    other.kind.as_str(),
                    other.name
                ),
            ));
        }
    }
    if spec.mode == AttachMode::Access {
        if let Some((n, _)) = current.iter().find(|(_, m)| **m == AttachMode::Access) {
            return Err(conflict(
                "mode",
                format!(
                    "NIC {} already carries {n} untagged; attach {} as trunk",
                    spec.nic, net.name
                ),
            ));
        }
    }
    Ok(())
}

fn caller_of(cmd: &TenancyCommand) -> Option<&Caller> {
    match cmd {
        TenancyCommand::AllocateNode { caller, .. }
        | TenancyCommand::FreeNode { caller, .. }
        | TenancyCommand::CreateNetwork { caller, .. }
        | TenancyCommand::DeleteNetwork { caller, .. }
        | TenancyCommand::GrantAccess { caller, .. }
        | TenancyCommand::RevokeAccess { caller, .. }
        | TenancyCommand::Attach { caller, .. }
        | TenancyCommand::Detach { caller, .. }
        | TenancyCommand::Revert { caller, .. }
        | TenancyCommand::Power { caller, .. }
        | TenancyCommand::Move { caller, .. }
        | TenancyCommand::CreateLease { caller, .. }
        | TenancyCommand::CancelLease { caller, .. } => Some(caller),
        TenancyCommand::LeaseTick { .. } => None,
    }
}
