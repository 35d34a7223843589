//! The replicated desired state and the one pure function that changes it.
//!
//! Every change is a [`Request`] (a [`Command`] plus who asked, when, and an idempotency key)
//! committed to the Raft log; [`State::apply`] is a pure function of the state and the
//! request — no clock, no randomness, no I/O — so every replica computes the same result.
//! The log index is the revision. [`State::apply`] records which objects it touched in
//! [`State::take_dirty`], which the storage layer persists in the same transaction as the
//! applied log id.

mod apply;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use protocol::domain::{
    AuditEntry, InventoryRecord, Node, Project, Rack, Sealed, Site, TokenRecord, UnixMillis, User,
};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::{NodeId, ProjectId, RackId, Revision, Serial, SiteId, TokenId, UserName};
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

    /// Index: serial → node id. Derived; rebuilt by [`State::rebuild_indexes`].
    #[serde(skip)]
    node_by_serial: BTreeMap<Serial, NodeId>,
    /// Index: token hash → token id. Derived.
    #[serde(skip)]
    token_by_hash: BTreeMap<String, TokenId>,
    /// Index: (time, key) of sessions, oldest first, for expiry. Derived.
    #[serde(skip)]
    session_order: BTreeSet<(UnixMillis, String)>,
    /// Objects touched since the last [`State::take_dirty`]. Not persisted.
    #[serde(skip)]
    dirty: BTreeSet<Key>,
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
    }

    /// The node with this serial, if registered.
    pub fn node_by_serial(&self, serial: &Serial) -> Option<&Node> {
        self.node_by_serial
            .get(serial)
            .and_then(|id| self.nodes.get(id))
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
