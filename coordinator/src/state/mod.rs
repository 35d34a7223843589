//! The replicated desired state and the one pure function that changes it.
//!
//! Every change is a [`Request`] (a [`Command`] plus who asked, when, and an idempotency key)
//! committed to the Raft log; [`State::apply`] is a pure function of the state and the
//! request — no clock, no randomness, no I/O — so every replica computes the same result.
//! The log index is the revision. [`State::apply`] records which objects it touched in
//! [`State::take_dirty`], which the storage layer persists in the same transaction as the
//! applied log id.

#[cfg(test)]
mod agent_tests;
mod apply;
#[cfg(test)]
mod identify_tests;
pub mod runs;
#[cfg(test)]
mod runs_tests;
pub mod tenancy;
#[cfg(test)]
mod tenancy_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use protocol::domain::{
    AuditEntry, EnrollToken, InventoryRecord, Lease, Node, NodeView, Project, Rack, RackAgent,
    Sealed, Site, TokenRecord, UnixMillis, User,
};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::{Mac, NodeId, ProjectId, RackId, Revision, Serial, SiteId, TokenId, UserName};
use serde::{Deserialize, Serialize};

pub use apply::{
    Applied, Command, ImportItem, ImportOutcome, ImportReport, NodePatch, Request, Response,
};

/// How long an idempotency key is remembered after its request was applied.
pub const SESSION_RETENTION_MS: UnixMillis = 24 * 60 * 60 * 1000;

/// Cluster-wide identity created by `coordinator init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Human name of the cluster.
    pub name: String,
    /// PEM of the cluster CA certificate (public).
    pub ca_cert_pem: String,
    /// The CA private key, sealed with the at-rest key.
    pub ca_key: Sealed,
    /// When the cluster was created.
    pub created_at: UnixMillis,
}

/// A remembered request outcome, so a retried request is answered, not applied again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// When the request was proposed.
    pub at: UnixMillis,
    /// Revision it was applied at.
    pub revision: Revision,
    /// The response it got.
    pub response: Response,
}

/// One object of the state, as the storage layer addresses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// The cluster identity.
    Cluster,
    /// A site.
    Site(SiteId),
    /// A rack.
    Rack(RackId),
    /// An expected-inventory record.
    Inventory(Serial),
    /// A node.
    Node(NodeId),
    /// A project.
    Project(ProjectId),
    /// A user.
    User(UserName),
    /// A token.
    Token(TokenId),
    /// An audit entry.
    Audit(Revision),
    /// A remembered request.
    Session(String),
    /// A rack's agent record.
    Agent(RackId),
    /// An enrollment token, by hash.
    EnrollToken(String),
    /// A DHCP lease, by MAC.
    Lease(Mac),
    /// A node that left a rack (for that rack's deltas).
    Departure(RackId, NodeId),
    /// A tenancy object (network, switch port, power intent, job, elastic lease).
    Tenancy(tenancy::TenancyKey),
    /// A workflow object (template version, run, step log, node timeline, rollout).
    Runs(runs::RunsKey),
}

/// The whole desired state held by every coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Cluster identity; `None` until `coordinator init` ran.
    pub cluster: Option<ClusterInfo>,
    /// Sites by name.
    pub sites: BTreeMap<SiteId, Site>,
    /// Racks by name.
    pub racks: BTreeMap<RackId, Rack>,
    /// Expected inventory by serial.
    pub inventory: BTreeMap<Serial, InventoryRecord>,
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Projects by name.
    pub projects: BTreeMap<ProjectId, Project>,
    /// Users by name.
    pub users: BTreeMap<UserName, User>,
    /// API tokens by id.
    pub tokens: BTreeMap<TokenId, TokenRecord>,
    /// Audit trail by revision: one entry per applied or refused request.
    pub audit: BTreeMap<Revision, AuditEntry>,
    /// Idempotency keys of recent requests.
    pub sessions: BTreeMap<String, Session>,
    /// Rack agents by rack.
    pub agents: BTreeMap<RackId, RackAgent>,
    /// Rack enrollment tokens by hash.
    pub enroll_tokens: BTreeMap<String, EnrollToken>,
    /// DHCP leases reported by agents, by MAC.
    pub leases: BTreeMap<Mac, Lease>,
    /// Nodes that left a rack, with the revision they left at: the rack's agent is told to
    /// remove them.
    pub departures: BTreeMap<(RackId, NodeId), Revision>,
    /// Networks, switch ports, power intents, jobs and elastic leases (issue 7).
    #[serde(default)]
    pub tenancy: tenancy::Tenancy,
    /// Workflow templates, runs, step logs, node timelines and rollouts (issue 6).
    #[serde(default)]
    pub runs: runs::Runs,

    /// Index: serial → node id. Derived; rebuilt by [`State::rebuild_indexes`].
    #[serde(skip)]
    node_by_serial: BTreeMap<Serial, NodeId>,
    /// Index: token hash → token id. Derived.
    #[serde(skip)]
    token_by_hash: BTreeMap<String, TokenId>,
    /// Index: (time, key) of sessions, oldest first, for expiry. Derived.
    #[serde(skip)]
    session_order: BTreeSet<(UnixMillis, String)>,
    /// Index: rack → its nodes. Derived.
    #[serde(skip)]
    rack_nodes: BTreeMap<RackId, BTreeSet<NodeId>>,
    /// Index: rack → last revision at which anything its agent holds changed. Derived.
    #[serde(skip)]
    rack_changed: BTreeMap<RackId, Revision>,
    /// Objects touched since the last [`State::take_dirty`]. Not persisted.
    #[serde(skip)]
    dirty: BTreeSet<Key>,
    /// Serials identified by the command being applied, for its audit entry. Not persisted;
    /// empty between requests.
    #[serde(skip)]
    identified_now: Vec<Serial>,
}

/// Why a command was refused. Refusals are answers, not failures: they are committed,
/// audited and returned to the client as 4xx.
pub type Refusal = ErrorBody;

impl State {
    /// Rebuild derived indexes after loading or installing a snapshot.
    pub fn rebuild_indexes(&mut self) {
        self.node_by_serial = self
            .nodes
            .values()
            .map(|n| (n.serial.clone(), n.id))
            .collect();
        self.token_by_hash = self
            .tokens
            .values()
            .map(|t| (t.hash.clone(), t.id))
            .collect();
        self.session_order = self
            .sessions
            .iter()
            .map(|(k, s)| (s.at, k.clone()))
            .collect();
        self.rack_nodes.clear();
        self.rack_changed.clear();
        for n in self.nodes.values() {
            if let Some(r) = &n.rack {
                self.rack_nodes.entry(r.clone()).or_default().insert(n.id);
                let inv = self
                    .inventory
                    .get(&n.serial)
                    .map(|i| i.revision)
                    .unwrap_or(0);
                let e = self.rack_changed.entry(r.clone()).or_default();
                *e = (*e).max(n.revision).max(inv);
            }
        }
        for ((rack, _), rev) in &self.departures {
            let e = self.rack_changed.entry(rack.clone()).or_default();
            *e = (*e).max(*rev);
        }
        self.rebuild_tenancy_indexes();
        self.rebuild_runs_indexes();
    }

    /// Ids of the nodes in `rack`.
    pub fn rack_node_ids(&self, rack: &RackId) -> impl Iterator<Item = &NodeId> {
        self.rack_nodes.get(rack).into_iter().flatten()
    }

    /// Last revision at which anything `rack`'s agent holds changed (0: nothing yet).
    pub fn rack_changed(&self, rack: &RackId) -> Revision {
        self.rack_changed.get(rack).copied().unwrap_or(0)
    }

    /// Records that `rack`'s agent view changed at `rev`.
    pub(crate) fn touch_rack(&mut self, rack: &RackId, rev: Revision) {
        let e = self.rack_changed.entry(rack.clone()).or_default();
        *e = (*e).max(rev);
    }

    /// Keeps the rack → nodes index in step when a node enters or leaves a rack.
    pub(crate) fn index_node_rack(
        &mut self,
        id: NodeId,
        old: Option<&RackId>,
        new: Option<&RackId>,
    ) {
        if let Some(o) = old {
            if let Some(set) = self.rack_nodes.get_mut(o) {
                set.remove(&id);
                if set.is_empty() {
                    self.rack_nodes.remove(o);
                }
            }
        }
        if let Some(n) = new {
            self.rack_nodes.entry(n.clone()).or_default().insert(id);
        }
    }

    /// The node with this serial, if registered.
    pub fn node_by_serial(&self, serial: &Serial) -> Option<&Node> {
        self.node_by_serial
            .get(serial)
            .and_then(|id| self.nodes.get(id))
    }

    /// Whether `node` is identified: an expected-inventory record has its serial. Otherwise
    /// it is in the discovered pool.
    pub fn is_identified(&self, node: &Node) -> bool {
        self.inventory.contains_key(&node.serial)
    }

    /// `node` as the API shows it, with what its inventory match says.
    pub fn node_view(&self, node: &Node) -> NodeView {
        let inv = self.inventory.get(&node.serial);
        NodeView {
            node: node.clone(),
            identified: inv.is_some(),
            u_position: inv.and_then(|i| i.u_position),
        }
    }

    /// The token whose secret hashes to `hash`.
    pub fn token_by_hash(&self, hash: &str) -> Option<&TokenRecord> {
        self.token_by_hash
            .get(hash)
            .and_then(|id| self.tokens.get(id))
    }

    /// Objects touched since the last call, for the storage layer to persist.
    pub fn take_dirty(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.dirty)
    }

    /// Marks every object dirty (after installing a snapshot, everything is rewritten).
    pub fn all_keys(&self) -> Vec<Key> {
        let mut keys = Vec::new();
        if self.cluster.is_some() {
            keys.push(Key::Cluster);
        }
        keys.extend(self.sites.keys().cloned().map(Key::Site));
        keys.extend(self.racks.keys().cloned().map(Key::Rack));
        keys.extend(self.inventory.keys().cloned().map(Key::Inventory));
        keys.extend(self.nodes.keys().copied().map(Key::Node));
        keys.extend(self.projects.keys().cloned().map(Key::Project));
        keys.extend(self.users.keys().cloned().map(Key::User));
        keys.extend(self.tokens.keys().copied().map(Key::Token));
        keys.extend(self.audit.keys().copied().map(Key::Audit));
        keys.extend(self.sessions.keys().cloned().map(Key::Session));
        keys.extend(self.agents.keys().cloned().map(Key::Agent));
        keys.extend(self.enroll_tokens.keys().cloned().map(Key::EnrollToken));
        keys.extend(self.leases.keys().copied().map(Key::Lease));
        keys.extend(
            self.departures
                .keys()
                .map(|(r, n)| Key::Departure(r.clone(), *n)),
        );
        keys.extend(self.tenancy.keys().into_iter().map(Key::Tenancy));
        keys.extend(self.runs.keys().into_iter().map(Key::Runs));
        keys
    }

    /// Whether an object is currently present (for persisting: present → write, absent → delete).
    pub fn encode_object(&self, key: &Key) -> Result<Option<Vec<u8>>, postcard::Error> {
        fn enc<T: Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, postcard::Error> {
            v.map(postcard::to_stdvec).transpose()
        }
        match key {
            Key::Cluster => enc(self.cluster.as_ref()),
            Key::Site(k) => enc(self.sites.get(k)),
            Key::Rack(k) => enc(self.racks.get(k)),
            Key::Inventory(k) => enc(self.inventory.get(k)),
            Key::Node(k) => enc(self.nodes.get(k)),
            Key::Project(k) => enc(self.projects.get(k)),
            Key::User(k) => enc(self.users.get(k)),
            Key::Token(k) => enc(self.tokens.get(k)),
            Key::Audit(k) => enc(self.audit.get(k)),
            Key::Session(k) => enc(self.sessions.get(k)),
            Key::Agent(k) => enc(self.agents.get(k)),
            Key::EnrollToken(k) => enc(self.enroll_tokens.get(k)),
            Key::Lease(k) => enc(self.leases.get(k)),
            Key::Departure(r, n) => {
                let record = self.departures.get(&(r.clone(), *n)).map(|rev| (r, n, rev));
                enc(record.as_ref())
            }
            Key::Tenancy(k) => self.tenancy.encode(k),
            Key::Runs(k) => self.runs.encode(k),
        }
    }

    /// Storage key string of an object: `<kind>/<id>`; audit revisions are zero-padded so
    /// they sort numerically.
    pub fn storage_key(key: &Key) -> String {
        match key {
            Key::Cluster => "cluster/".to_owned(),
            Key::Site(k) => format!("site/{k}"),
            Key::Rack(k) => format!("rack/{k}"),
            Key::Inventory(k) => format!("inventory/{k}"),
            Key::Node(k) => format!("node/{k}"),
            Key::Project(k) => format!("project/{k}"),
            Key::User(k) => format!("user/{k}"),
            Key::Token(k) => format!("token/{k}"),
            Key::Audit(k) => format!("audit/{k:020}"),
            Key::Session(k) => format!("session/{k}"),
            Key::Agent(k) => format!("agent/{k}"),
            Key::EnrollToken(k) => format!("enroll/{k}"),
            Key::Lease(k) => format!("lease/{k}"),
            Key::Departure(r, n) => format!("departure/{r}/{n}"),
            Key::Tenancy(k) => tenancy::Tenancy::storage_key(k),
            Key::Runs(k) => runs::Runs::storage_key(k),
        }
    }

    /// Load one stored object by its storage key (inverse of [`State::storage_key`]).
    pub fn load_object(&mut self, storage_key: &str, bytes: &[u8]) -> Result<(), String> {
        let (kind, _) = storage_key
            .split_once('/')
            .ok_or_else(|| format!("bad key {storage_key:?}"))?;
        let err = |e: postcard::Error| format!("{storage_key}: {e}");
        match kind {
            "cluster" => self.cluster = Some(postcard::from_bytes(bytes).map_err(err)?),
            "site" => {
                let v: Site = postcard::from_bytes(bytes).map_err(err)?;
                self.sites.insert(v.name.clone(), v);
            }
            "rack" => {
                let v: Rack = postcard::from_bytes(bytes).map_err(err)?;
                self.racks.insert(v.name.clone(), v);
            }
            "inventory" => {
                let v: InventoryRecord = postcard::from_bytes(bytes).map_err(err)?;
                self.inventory.insert(v.serial.clone(), v);
            }
            "node" => {
                let v: Node = postcard::from_bytes(bytes).map_err(err)?;
                self.nodes.insert(v.id, v);
            }
            "project" => {
                let v: Project = postcard::from_bytes(bytes).map_err(err)?;
                self.projects.insert(v.name.clone(), v);
            }
            "user" => {
                let v: User = postcard::from_bytes(bytes).map_err(err)?;
                self.users.insert(v.name.clone(), v);
            }
            "token" => {
                let v: TokenRecord = postcard::from_bytes(bytes).map_err(err)?;
                self.tokens.insert(v.id, v);
            }
            "audit" => {
                let v: AuditEntry = postcard::from_bytes(bytes).map_err(err)?;
                self.audit.insert(v.revision, v);
            }
            "session" => {
                let k = &storage_key["session/".len()..];
                let v: Session = postcard::from_bytes(bytes).map_err(err)?;
                self.sessions.insert(k.to_owned(), v);
            }
            "agent" => {
                let v: RackAgent = postcard::from_bytes(bytes).map_err(err)?;
                let rack = v
                    .rack
                    .clone()
                    .ok_or_else(|| format!("{storage_key}: agent record without rack"))?;
                self.agents.insert(rack, v);
            }
            "enroll" => {
                let v: EnrollToken = postcard::from_bytes(bytes).map_err(err)?;
                self.enroll_tokens.insert(v.hash.clone(), v);
            }
            "lease" => {
                let v: Lease = postcard::from_bytes(bytes).map_err(err)?;
                self.leases.insert(v.mac, v);
            }
            "departure" => {
                let (r, n, rev): (RackId, NodeId, Revision) =
                    postcard::from_bytes(bytes).map_err(err)?;
                self.departures.insert((r, n), rev);
            }
            t if tenancy::STORAGE_KINDS.contains(&t) => self.tenancy.load(t, storage_key, bytes)?,
            t if runs::STORAGE_KINDS.contains(&t) => self.runs.load(t, storage_key, bytes)?,
            other => return Err(format!("unknown object kind {other:?} in {storage_key:?}")),
        }
        Ok(())
    }
}

pub(crate) fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    ErrorBody::new(code, message)
}

pub(crate) fn refuse_field(code: ErrorCode, field: &str, message: impl Into<String>) -> Refusal {
    ErrorBody::new(code, message).with_field(field)
}
