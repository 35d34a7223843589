//! The command vocabulary and [`State::apply`]: a pure match over [`Command`].

use std::collections::BTreeSet;

use protocol::domain::{AgentLink, EnrollToken, Lease, RackAgent};
use protocol::domain::{
    AuditEntry, BootTarget, InventoryRecord, Node, NodeState, Project, Rack, Role, Site,
    TokenRecord, UnixMillis, User,
};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{Event, EventKind};
use protocol::json::JsonValue;
use protocol::{Mac, NodeId, ProjectId, RackId, Revision, Serial, SiteId, Tag, TokenId, UserName};
use serde::{Deserialize, Serialize};

use super::{
    refuse, refuse_field, ClusterInfo, Key, Refusal, Session, State, SESSION_RETENTION_MS,
};

/// A change to the desired state, as committed to the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Who asked: `user:<name>`, `coordinator:<id>` or `rack:<name>`.
    pub actor: String,
    /// When the proposing coordinator received it (the only clock `apply` sees).
    pub at: UnixMillis,
    /// Idempotency key: a retried request with the same key is answered from memory.
    pub request_id: Option<String>,
    /// What to do.
    pub command: Command,
}

/// One item of an inventory import, credentials already sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportItem {
    /// The record to upsert (`revision`/`generation` are filled in by apply).
    pub record: InventoryRecord,
}

/// Changes to a node; `None` fields are left alone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodePatch {
    /// New lifecycle state (must be an allowed transition).
    pub state: Option<NodeState>,
    /// New boot target.
    pub boot_target: Option<BootTarget>,
    /// New project: `Some(None)` frees the node.
    pub project: Option<Option<ProjectId>>,
    /// Replacement tag set.
    pub tags: Option<BTreeSet<Tag>>,
    /// Facts merged (top-level keys replaced) into the node's facts.
    pub facts: Option<JsonValue>,
}

/// Every way the desired state can change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create the cluster identity and the first admin (once).
    InitCluster {
        /// Cluster identity.
        info: ClusterInfo,
        /// First admin user.
        admin: UserName,
        /// The admin's first token.
        token: TokenRecord,
    },
    /// Create or replace a site.
    PutSite(Site),
    /// Delete a site (refused while racks stand in it).
    DeleteSite(SiteId),
    /// Create or replace a rack (its site must exist).
    PutRack(Rack),
    /// Delete a rack (refused while inventory or nodes reference it).
    DeleteRack(RackId),
    /// Upsert expected-inventory records by serial, all or nothing.
    ImportInventory(Vec<ImportItem>),
    /// Delete an expected-inventory record.
    DeleteInventory(Serial),
    /// Register a node (idempotent by serial: an existing node gets the MACs merged).
    RegisterNode {
        /// Id to give it if new (chosen by the proposer).
        id: NodeId,
        /// Serial.
        serial: Serial,
        /// Rack it was seen in.
        rack: Option<RackId>,
        /// MACs seen.
        macs: Vec<Mac>,
    },
    /// Change a node.
    PatchNode {
        /// Which node.
        id: NodeId,
        /// What to change.
        patch: NodePatch,
    },
    /// Create or replace a project.
    PutProject(Project),
    /// Delete a project (refused while it owns nodes or has members).
    DeleteProject(ProjectId),
    /// Create or replace a user.
    PutUser(User),
    /// Delete a user and its tokens (the last admin cannot be deleted).
    DeleteUser(UserName),
    /// Add a token (hash only).
    CreateToken(TokenRecord),
    /// Revoke a token.
    DeleteToken(TokenId),
    /// Add a one-time rack enrollment token (hash only).
    CreateEnrollToken(EnrollToken),
    /// Enroll a rack's agent: consume the token, record the certificate it was issued.
    Enroll {
        /// Rack.
        rack: RackId,
        /// Hash of the presented token.
        token_hash: String,
        /// Fingerprint of the issued certificate.
        fingerprint: String,
        /// Its expiry.
        not_after: UnixMillis,
    },
    /// An enrolled agent renewed its certificate over its fleet link.
    RenewAgentCert {
        /// Rack.
        rack: RackId,
        /// Fingerprint of the certificate it connected with.
        old_fingerprint: String,
        /// Fingerprint of the new certificate.
        fingerprint: String,
        /// Its expiry.
        not_after: UnixMillis,
    },
    /// Revoke a rack's agent: its certificate is refused from now on.
    RevokeAgent(RackId),
    /// Events an agent observed; each `(rack, seq)` is applied at most once, in order.
    AgentEvents {
        /// Rack.
        rack: RackId,
        /// Events in sequence order.
        events: Vec<Event>,
    },
    /// What the coordinator serving an agent last saw of its link.
    AgentLinkReport {
        /// Rack.
        rack: RackId,
        /// Link state.
        link: AgentLink,
    },
    /// Record an action that happened outside the state machine (e.g. a membership change).
    Note {
        /// Action name.
        action: String,
        /// Target.
        target: String,
    },
    /// Tenancy: allocation, networks, attachments, power, moves, leases (issue 7). Appended
    /// last: postcard encodes a variant by its position.
    Tenancy(super::tenancy::TenancyCommand),
    /// Workflows, runs and rollouts (issue 6). Appended last: postcard encodes a variant by
    /// its position.
    Runs(super::runs::RunsCommand),
}

impl Command {
    /// Stable action name for the audit trail (a note carries its own).
    pub fn action(&self) -> &str {
        match self {
            Command::InitCluster { .. } => "cluster.init",
            Command::PutSite(_) => "site.put",
            Command::DeleteSite(_) => "site.delete",
            Command::PutRack(_) => "rack.put",
            Command::DeleteRack(_) => "rack.delete",
            Command::ImportInventory(_) => "inventory.import",
            Command::DeleteInventory(_) => "inventory.delete",
            Command::RegisterNode { .. } => "node.register",
            Command::PatchNode { .. } => "node.patch",
            Command::PutProject(_) => "project.put",
            Command::DeleteProject(_) => "project.delete",
            Command::PutUser(_) => "user.put",
            Command::DeleteUser(_) => "user.delete",
            Command::CreateToken(_) => "token.create",
            Command::DeleteToken(_) => "token.delete",
            Command::CreateEnrollToken(_) => "rack.enroll_token",
            Command::Enroll { .. } => "rack.enroll",
            Command::RenewAgentCert { .. } => "rack.renew_certificate",
            Command::RevokeAgent(_) => "rack.revoke_agent",
            Command::AgentEvents { .. } => "rack.events",
            Command::AgentLinkReport { .. } => "rack.link",
            Command::Tenancy(t) => t.action(),
            Command::Runs(r) => r.action(),
            Command::Note { action, .. } => action,
        }
    }

    /// What the command touches, for the audit trail (never a secret).
    pub fn target(&self) -> String {
        match self {
            Command::InitCluster { info, .. } => info.name.clone(),
            Command::PutSite(s) => s.name.to_string(),
            Command::DeleteSite(s) => s.to_string(),
            Command::PutRack(r) => r.name.to_string(),
            Command::DeleteRack(r) => r.to_string(),
            Command::ImportInventory(items) => match items.as_slice() {
                [one] => one.record.serial.to_string(),
                many => format!("{} records", many.len()),
            },
            Command::DeleteInventory(s) => s.to_string(),
            Command::RegisterNode { serial, .. } => serial.to_string(),
            Command::PatchNode { id, .. } => id.to_string(),
            Command::PutProject(p) => p.name.to_string(),
            Command::DeleteProject(p) => p.to_string(),
            Command::PutUser(u) => u.name.to_string(),
            Command::DeleteUser(u) => u.to_string(),
            Command::CreateToken(t) => format!("{} ({})", t.id, t.user),
            Command::DeleteToken(t) => t.to_string(),
            Command::CreateEnrollToken(t) => t.rack.to_string(),
            Command::Enroll { rack, .. }
            | Command::RenewAgentCert { rack, .. }
            | Command::AgentEvents { rack, .. }
            | Command::AgentLinkReport { rack, .. } => rack.to_string(),
            Command::RevokeAgent(r) => r.to_string(),
            Command::Tenancy(t) => t.target(),
            Command::Runs(r) => r.target(),
            Command::Note { target, .. } => target.clone(),
        }
    }

    /// Whether the audit trail records this command. Agent telemetry (events, link reports)
    /// is observation, not an operator's change, and would drown the trail.
    pub fn audited(&self) -> bool {
        !matches!(
            self,
            Command::AgentEvents { .. } | Command::AgentLinkReport { .. }
        )
    }
}

/// Per-record result of an inventory import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportOutcome {
    /// New serial.
    Created,
    /// Existing serial, content changed.
    Updated,
    /// Existing serial, identical content.
    Unchanged,
}

/// What an inventory import did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Serials created.
    pub created: Vec<Serial>,
    /// Serials whose record changed, with the names of the fields that changed.
    pub updated: Vec<(Serial, Vec<String>)>,
    /// Serials already identical.
    pub unchanged: Vec<Serial>,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to report beyond success.
    Done,
    /// The node as it now is.
    Node(Box<Node>),
    /// Inventory import result.
    Import(ImportReport),
    /// Agent events applied up to this sequence number.
    Events {
        /// Highest applied sequence number for the rack.
        last_seq: u64,
    },
}

/// The answer to a [`Request`]: the revision it was applied at and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Log index of the request.
    pub revision: Revision,
    /// Result; a refusal is still a committed, audited answer.
    pub result: Result<Applied, ErrorBody>,
    /// True when this answer was remembered from an earlier identical request.
    pub replayed: bool,
}

impl State {
    /// Apply one committed request at `revision`. Pure: the same state and request give the
    /// same result on every replica.
    pub fn apply(&mut self, revision: Revision, req: &Request) -> Response {
        self.expire_sessions(req.at);
        if let Some(id) = &req.request_id {
            if let Some(s) = self.sessions.get(id) {
                let mut r = s.response.clone();
                r.replayed = true;
                return r;
            }
        }
        self.identified_now.clear();
        self.tenancy.actor_now.clone_from(&req.actor);
        let result = self.apply_command(revision, req.at, &req.command);
        self.tenancy.actor_now.clear();
        let identified = std::mem::take(&mut self.identified_now);
        let mut target = req.command.target();
        let outcome = match &result {
            Ok(_) => "applied".to_owned(),
            Err(e) => format!("refused: {}: {}", e.code.as_str(), e.message),
        };
        if result.is_ok() && !identified.is_empty() {
            let serials = identified
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",");
            // One audit entry per revision: an audited command's own entry carries the news.
            // A registration's entry already names the serial (it was identified iff the
            // inventory held that serial at this revision), so it is left as it is.
            if req.command.audited() {
                if !matches!(req.command, Command::RegisterNode { .. }) {
                    target = format!("{target}; node.identified: {serials}");
                }
            } else {
                // Agent events are not audited, but identifying a machine is worth a line.
                self.audit.insert(
                    revision,
                    AuditEntry {
                        revision,
                        at: req.at,
                        actor: req.actor.clone(),
                        action: "node.identified".to_owned(),
                        target: serials,
                        outcome: "applied".to_owned(),
                        request_id: req.request_id.clone(),
                    },
                );
                self.dirty.insert(Key::Audit(revision));
            }
        }
        if req.command.audited() {
            self.audit.insert(
                revision,
                AuditEntry {
                    revision,
                    at: req.at,
                    actor: req.actor.clone(),
                    action: req.command.action().to_owned(),
                    target,
                    outcome,
                    request_id: req.request_id.clone(),
                },
            );
            self.dirty.insert(Key::Audit(revision));
        }
        let response = Response {
            revision,
            result,
            replayed: false,
        };
        if let Some(id) = &req.request_id {
            self.sessions.insert(
                id.clone(),
                Session {
                    at: req.at,
                    revision,
                    response: response.clone(),
                },
            );
            self.session_order.insert((req.at, id.clone()));
            self.dirty.insert(Key::Session(id.clone()));
        }
        response
    }

    fn expire_sessions(&mut self, now: UnixMillis) {
        let cutoff = now.saturating_sub(SESSION_RETENTION_MS);
        while let Some((at, id)) = self.session_order.first().cloned() {
            if at >= cutoff {
                break;
            }
            self.session_order.pop_first();
            self.sessions.remove(&id);
            self.dirty.insert(Key::Session(id));
        }
    }

    fn apply_command(
        &mut self,
        rev: Revision,
        at: UnixMillis,
        cmd: &Command,
    ) -> Result<Applied, Refusal> {
        match cmd {
            Command::InitCluster { info, admin, token } => {
                if self.cluster.is_some() {
                    return Err(refuse(
                        ErrorCode::AlreadyExists,
                        "cluster is already initialised",
                    ));
                }
                // Check everything before changing anything: a refusal must leave no trace.
                if &token.user != admin {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "user",
                        format!("user {} does not exist: the first token must belong to the first admin {admin}", token.user),
                    ));
                }
                if self.tokens.contains_key(&token.id)
                    || self.token_by_hash.contains_key(&token.hash)
                {
                    return Err(refuse(
                        ErrorCode::AlreadyExists,
                        format!("token {} already exists", token.id),
                    ));
                }
                self.cluster = Some(info.clone());
                self.dirty.insert(Key::Cluster);
                self.put_user(User {
                    name: admin.clone(),
                    role: Role::Admin,
                    project: None,
                })?;
                self.create_token(token.clone())?;
                Ok(Applied::Done)
            }
            Command::PutSite(site) => {
                self.sites.insert(site.name.clone(), site.clone());
                self.dirty.insert(Key::Site(site.name.clone()));
                Ok(Applied::Done)
            }
            Command::DeleteSite(name) => {
                if !self.sites.contains_key(name) {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("site {name} does not exist"),
                    ));
                }
                if let Some(r) = self.racks.values().find(|r| &r.site == name) {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!(
                            "site {name} still has rack {}; delete its racks first",
                            r.name
                        ),
                    ));
                }
                if let Some(i) = self.inventory.values().find(|i| &i.site == name) {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!(
                            "site {name} is still referenced by inventory serial {}",
                            i.serial
                        ),
                    ));
                }
                self.sites.remove(name);
                self.dirty.insert(Key::Site(name.clone()));
                Ok(Applied::Done)
            }
            Command::PutRack(rack) => {
                if !self.sites.contains_key(&rack.site) {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "site",
                        format!("site {} does not exist", rack.site),
                    ));
                }
                if let Some(i) = self
                    .inventory
                    .values()
                    .find(|i| i.rack == rack.name && i.site != rack.site)
                {
                    return Err(refuse_field(
                        ErrorCode::Conflict,
                        "site",
                        format!(
                            "rack {} holds inventory serial {} of site {}; re-import it before moving the rack",
                            rack.name, i.serial, i.site
                        ),
                    ));
                }
                self.racks.insert(rack.name.clone(), rack.clone());
                self.dirty.insert(Key::Rack(rack.name.clone()));
                Ok(Applied::Done)
            }
            Command::DeleteRack(name) => {
                if self
                    .agents
                    .get(name)
                    .is_some_and(|a| !a.revoked && a.cert_fingerprint.is_some())
                {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("rack {name} has an enrolled agent; revoke it first"),
                    ));
                }
                if !self.racks.contains_key(name) {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("rack {name} does not exist"),
                    ));
                }
                if let Some(i) = self.inventory.values().find(|i| &i.rack == name) {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!(
                            "rack {name} is still referenced by inventory serial {}",
                            i.serial
                        ),
                    ));
                }
                if let Some(n) = self.nodes.values().find(|n| n.rack.as_ref() == Some(name)) {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!(
                            "rack {name} still holds node {} (serial {})",
                            n.id, n.serial
                        ),
                    ));
                }
                self.racks.remove(name);
                self.dirty.insert(Key::Rack(name.clone()));
                Ok(Applied::Done)
            }
            Command::ImportInventory(items) => {
                let report = self.plan_import(items)?;
                for item in items {
                    let serial = &item.record.serial;
                    let generation = match self.inventory.get(serial) {
                        Some(old) if same_inventory(old, &item.record) => continue,
                        Some(old) => old.generation + 1,
                        None => 1,
                    };
                    let mut rec = item.record.clone();
                    rec.revision = rev;
                    rec.generation = generation;
                    let tags = rec.tags.clone();
                    let rack = rec.rack.clone();
                    self.inventory.insert(serial.clone(), rec);
                    self.dirty.insert(Key::Inventory(serial.clone()));
                    if generation == 1 {
                        self.identify_existing(serial, &rack, &tags, rev);
                    }
                    if let Some(r) = self.node_by_serial(serial).and_then(|n| n.rack.clone()) {
                        self.touch_rack(&r, rev);
                    }
                }
                Ok(Applied::Import(report))
            }
            Command::DeleteInventory(serial) => {
                if self.inventory.remove(serial).is_none() {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("no inventory record for serial {serial}"),
                    ));
                }
                self.dirty.insert(Key::Inventory(serial.clone()));
                // The node's agent view loses the record's BMC, addresses and ports: bump the
                // node so its view revision moves forward and the rack's agent gets the change.
                if let Some(id) = self.node_by_serial.get(serial).copied() {
                    if let Some(node) = self.nodes.get_mut(&id) {
                        node.revision = rev;
                        let rack = node.rack.clone();
                        self.dirty.insert(Key::Node(id));
                        if let Some(r) = rack {
                            self.touch_rack(&r, rev);
                        }
                    }
                }
                Ok(Applied::Done)
            }
            Command::RegisterNode {
                id,
                serial,
                rack,
                macs,
            } => {
                if let Some(r) = rack {
                    if !self.racks.contains_key(r) {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            "rack",
                            format!("rack {r} does not exist"),
                        ));
                    }
                }
                if let Some(existing) = self.node_by_serial.get(serial).copied() {
                    let node = self.nodes.get_mut(&existing).ok_or_else(|| {
                        refuse(
                            ErrorCode::Internal,
                            format!("index names missing node {existing}"),
                        )
                    })?;
                    for m in macs {
                        if !node.macs.contains(m) {
                            node.macs.push(*m);
                        }
                    }
                    let old_rack = node.rack.clone();
                    if rack.is_some() {
                        node.rack.clone_from(rack);
                    }
                    node.revision = rev;
                    let node = node.clone();
                    self.dirty.insert(Key::Node(existing));
                    self.node_moved(existing, old_rack.as_ref(), node.rack.as_ref(), rev);
                    return Ok(Applied::Node(Box::new(node)));
                }
                if self.nodes.contains_key(id) {
                    return Err(refuse(
                        ErrorCode::AlreadyExists,
                        format!("node id {id} is taken"),
                    ));
                }
                let expected = self.inventory.get(serial);
                let node = Node {
                    id: *id,
                    serial: serial.clone(),
                    rack: rack.clone().or_else(|| expected.map(|e| e.rack.clone())),
                    macs: macs.iter().fold(Vec::new(), |mut v, m| {
                        if !v.contains(m) {
                            v.push(*m);
                        }
                        v
                    }),
                    state: NodeState::Discovered,
                    facts: JsonValue(serde_json::Value::Object(Default::default())),
                    boot_target: BootTarget::Discovery,
                    project: None,
                    power_on: None,
                    tags: expected.map(|e| e.tags.clone()).unwrap_or_default(),
                    created_at: at,
                    revision: rev,
                };
                if expected.is_some() {
                    self.identified_now.push(serial.clone());
                }
                self.node_by_serial.insert(serial.clone(), *id);
                self.nodes.insert(*id, node.clone());
                self.dirty.insert(Key::Node(*id));
                self.node_moved(*id, None, node.rack.as_ref(), rev);
                Ok(Applied::Node(Box::new(node)))
            }
            Command::PatchNode { id, patch } => {
                if let Some(Some(p)) = &patch.project {
                    if !self.projects.contains_key(p) {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            "project",
                            format!("project {p} does not exist"),
                        ));
                    }
                }
                if let Some(p) = &patch.project {
                    self.tenancy_allows_reassign(*id, p.as_ref())?;
                }
                let node = self.nodes.get_mut(id).ok_or_else(|| {
                    refuse(ErrorCode::NotFound, format!("node {id} does not exist"))
                })?;
                if let Some(to) = patch.state {
                    if !node.state.can_become(to) {
                        return Err(refuse_field(
                            ErrorCode::InvalidTransition,
                            "state",
                            format!(
                                "node {id} cannot go from {} to {}",
                                node.state.as_str(),
                                to.as_str()
                            ),
                        ));
                    }
                }
                if let Some(facts) = &patch.facts {
                    let serde_json::Value::Object(new) = &facts.0 else {
                        return Err(refuse_field(
                            ErrorCode::InvalidField,
                            "facts",
                            "facts must be a JSON object",
                        ));
                    };
                    if let serde_json::Value::Object(cur) = &mut node.facts.0 {
                        for (k, v) in new {
                            cur.insert(k.clone(), v.clone());
                        }
                    } else {
                        node.facts = facts.clone();
                    }
                }
                if let Some(s) = patch.state {
                    node.state = s;
                }
                if let Some(b) = &patch.boot_target {
                    node.boot_target = b.clone();
                }
                if let Some(p) = &patch.project {
                    node.project.clone_from(p);
                }
                if let Some(t) = &patch.tags {
                    node.tags.clone_from(t);
                }
                node.revision = rev;
                let node = node.clone();
                self.dirty.insert(Key::Node(*id));
                if let Some(r) = &node.rack {
                    self.touch_rack(r, rev);
                }
                Ok(Applied::Node(Box::new(node)))
            }
            Command::PutProject(p) => {
                self.projects.insert(p.name.clone(), p.clone());
                self.dirty.insert(Key::Project(p.name.clone()));
                Ok(Applied::Done)
            }
            Command::DeleteProject(name) => {
                if !self.projects.contains_key(name) {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("project {name} does not exist"),
                    ));
                }
                if let Some(n) = self
                    .nodes
                    .values()
                    .find(|n| n.project.as_ref() == Some(name))
                {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("project {name} still owns node {}", n.id),
                    ));
                }
                if let Some(what) = self.tenancy_uses_project(name) {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("project {name} still has {what}"),
                    ));
                }
                if let Some(u) = self
                    .users
                    .values()
                    .find(|u| u.project.as_ref() == Some(name))
                {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("project {name} still has member {}", u.name),
                    ));
                }
                self.projects.remove(name);
                self.dirty.insert(Key::Project(name.clone()));
                Ok(Applied::Done)
            }
            Command::PutUser(u) => {
                self.put_user(u.clone())?;
                Ok(Applied::Done)
            }
            Command::DeleteUser(name) => {
                let Some(user) = self.users.get(name) else {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("user {name} does not exist"),
                    ));
                };
                if user.role == Role::Admin
                    && self
                        .users
                        .values()
                        .filter(|u| u.role == Role::Admin)
                        .count()
                        == 1
                {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("{name} is the last admin"),
                    ));
                }
                self.users.remove(name);
                self.dirty.insert(Key::User(name.clone()));
                let revoked: Vec<TokenId> = self
                    .tokens
                    .values()
                    .filter(|t| &t.user == name)
                    .map(|t| t.id)
                    .collect();
                for id in revoked {
                    self.remove_token(id);
                }
                Ok(Applied::Done)
            }
            Command::CreateToken(t) => {
                self.create_token(t.clone())?;
                Ok(Applied::Done)
            }
            Command::DeleteToken(id) => {
                if !self.tokens.contains_key(id) {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("token {id} does not exist"),
                    ));
                }
                self.remove_token(*id);
                Ok(Applied::Done)
            }
            Command::CreateEnrollToken(t) => {
                if !self.racks.contains_key(&t.rack) {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        "rack",
                        format!("rack {} does not exist", t.rack),
                    ));
                }
                if self.enroll_tokens.contains_key(&t.hash) {
                    return Err(refuse(
                        ErrorCode::AlreadyExists,
                        "enrollment token already exists",
                    ));
                }
                self.dirty.insert(Key::EnrollToken(t.hash.clone()));
                self.enroll_tokens.insert(t.hash.clone(), t.clone());
                Ok(Applied::Done)
            }
            Command::Enroll {
                rack,
                token_hash,
                fingerprint,
                not_after,
            } => {
                let Some(token) = self.enroll_tokens.get_mut(token_hash) else {
                    return Err(refuse(
                        ErrorCode::Unauthenticated,
                        "unknown enrollment token",
                    ));
                };
                if token.used_at.is_some() {
                    return Err(refuse(
                        ErrorCode::Unauthenticated,
                        "enrollment token was already used",
                    ));
                }
                if token.expires_at <= at {
                    return Err(refuse(
                        ErrorCode::Unauthenticated,
                        "enrollment token expired",
                    ));
                }
                if &token.rack != rack {
                    return Err(refuse_field(
                        ErrorCode::Forbidden,
                        "rack",
                        format!("this token enrolls rack {}, not {rack}", token.rack),
                    ));
                }
                token.used_at = Some(at);
                self.dirty.insert(Key::EnrollToken(token_hash.clone()));
                // Re-enrollment keeps the event sequence: the rack's events stay exactly-once
                // across agent replacements.
                let agent = self.agents.entry(rack.clone()).or_default();
                agent.rack = Some(rack.clone());
                agent.cert_fingerprint = Some(fingerprint.clone());
                agent.previous_fingerprint = None;
                agent.cert_not_after = Some(*not_after);
                agent.enrolled_at = Some(at);
                agent.revoked = false;
                self.dirty.insert(Key::Agent(rack.clone()));
                Ok(Applied::Events {
                    last_seq: agent.last_seq,
                })
            }
            Command::RenewAgentCert {
                rack,
                old_fingerprint,
                fingerprint,
                not_after,
            } => {
                let agent = self.live_agent(rack)?;
                if agent.cert_fingerprint.as_ref() == Some(old_fingerprint) {
                    agent.previous_fingerprint =
                        agent.cert_fingerprint.replace(fingerprint.clone());
                } else if agent.previous_fingerprint.as_ref() == Some(old_fingerprint) {
                    // The reply to an earlier renewal was lost: the agent still holds the
                    // previous certificate. Replace the unclaimed one; keep accepting the old.
                    agent.cert_fingerprint = Some(fingerprint.clone());
                } else {
                    return Err(refuse(
                        ErrorCode::Forbidden,
                        format!("certificate of rack {rack} was replaced or revoked"),
                    ));
                }
                agent.cert_not_after = Some(*not_after);
                self.dirty.insert(Key::Agent(rack.clone()));
                Ok(Applied::Done)
            }
            Command::RevokeAgent(rack) => {
                let Some(agent) = self.agents.get_mut(rack) else {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        format!("rack {rack} has no enrolled agent"),
                    ));
                };
                agent.revoked = true;
                agent.cert_fingerprint = None;
                if let Some(l) = agent.link.as_mut() {
                    l.connected = false;
                }
                agent.previous_fingerprint = None;
                self.dirty.insert(Key::Agent(rack.clone()));
                Ok(Applied::Done)
            }
            Command::AgentEvents { rack, events } => {
                self.live_agent(rack)?;
                let mut last = self.agents.get(rack).map(|a| a.last_seq).unwrap_or(0);
                let mut applied = 0u64;
                for e in events {
                    if e.seq <= last {
                        continue; // already applied: a resend after a lost acknowledgement
                    }
                    if e.seq != last + 1 {
                        break; // a gap: apply nothing beyond it; the agent resends from last + 1
                    }
                    self.apply_event(rack, rev, e);
                    last = e.seq;
                    applied += 1;
                }
                if let Some(agent) = self.agents.get_mut(rack) {
                    agent.last_seq = last;
                    agent.events_applied += applied;
                }
                self.dirty.insert(Key::Agent(rack.clone()));
                Ok(Applied::Events { last_seq: last })
            }
            Command::AgentLinkReport { rack, link } => {
                // A revoked agent's closing report is still accepted: it records the link down.
                let agent = match self.agents.get_mut(rack) {
                    Some(a) if a.revoked && !link.connected => a,
                    _ => self.live_agent(rack)?,
                };
                // Session ids grow with the session's start time: a report from a session
                // older than the recorded one (a lingering link not yet timed out) is stale.
                let stale = agent
                    .link
                    .as_ref()
                    .is_some_and(|l| link.session < l.session);
                if !stale {
                    agent.link = Some(link.clone());
                }
                self.dirty.insert(Key::Agent(rack.clone()));
                Ok(Applied::Done)
            }
            Command::Tenancy(t) => self.apply_tenancy(rev, at, t),
            Command::Runs(r) => {
                let actor = self.tenancy.actor_now.clone();
                self.apply_runs(rev, at, &actor, r)
            }
            Command::Note { .. } => Ok(Applied::Done),
        }
    }

    /// A record was just created for `serial`: if a node with that serial already checked
    /// in, it leaves the discovered pool. It gets the record's tags (as a node registered
    /// after the import would) and, when no agent placed it yet, the record's rack.
    fn identify_existing(
        &mut self,
        serial: &Serial,
        rack: &RackId,
        tags: &BTreeSet<Tag>,
        rev: Revision,
    ) {
        let Some(id) = self.node_by_serial.get(serial).copied() else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.tags.extend(tags.iter().cloned());
        let old_rack = node.rack.clone();
        if node.rack.is_none() {
            node.rack = Some(rack.clone());
        }
        node.revision = rev;
        let new_rack = node.rack.clone();
        self.dirty.insert(Key::Node(id));
        self.node_moved(id, old_rack.as_ref(), new_rack.as_ref(), rev);
        self.identified_now.push(serial.clone());
    }

    /// The enrolled, unrevoked agent of `rack`.
    fn live_agent(&mut self, rack: &RackId) -> Result<&mut RackAgent, Refusal> {
        match self.agents.get_mut(rack) {
            Some(a) if !a.revoked && a.cert_fingerprint.is_some() => Ok(a),
            Some(_) => Err(refuse(
                ErrorCode::Forbidden,
                format!("the agent of rack {rack} is revoked"),
            )),
            None => Err(refuse(
                ErrorCode::NotFound,
                format!("rack {rack} has no enrolled agent"),
            )),
        }
    }

    /// Node entered `new` and/or left `old`: keep the index, the rack change marks and the
    /// departure records (so the old rack's agent is told to forget it) in step.
    fn node_moved(
        &mut self,
        id: NodeId,
        old: Option<&RackId>,
        new: Option<&RackId>,
        rev: Revision,
    ) {
        if old != new {
            self.index_node_rack(id, old, new);
            if let Some(o) = old {
                self.departures.insert((o.clone(), id), rev);
                self.dirty.insert(Key::Departure(o.clone(), id));
                self.touch_rack(o, rev);
            }
            if let Some(n) = new {
                if self.departures.remove(&(n.clone(), id)).is_some() {
                    self.dirty.insert(Key::Departure(n.clone(), id));
                }
            }
        }
        if let Some(n) = new {
            self.touch_rack(n, rev);
        }
    }

    /// The effect of one agent event on the desired state.
    fn apply_event(&mut self, rack: &RackId, rev: Revision, e: &Event) {
        match &e.kind {
            EventKind::Lease { mac, ip } => {
                self.leases.insert(
                    *mac,
                    Lease {
                        mac: *mac,
                        ip: *ip,
                        rack: rack.clone(),
                        at: e.at,
                    },
                );
                self.dirty.insert(Key::Lease(*mac));
            }
            EventKind::CheckIn {
                serial,
                macs,
                facts,
            } => {
                // The node id of a first check-in is derived from the serial, so every replica
                // (and a replay) computes the same id without a clock or randomness.
                let id = match self.node_by_serial.get(serial) {
                    Some(id) => *id,
                    None => NodeId(uuid_from(serial.as_str())),
                };
                let cmd = Command::RegisterNode {
                    id,
                    serial: serial.clone(),
                    rack: Some(rack.clone()),
                    macs: macs.clone(),
                };
                if self.apply_command(rev, e.at, &cmd).is_ok() {
                    let patch = NodePatch {
                        facts: Some(facts.clone()).filter(|f| f.0.is_object()),
                        ..Default::default()
                    };
                    let _ = self.apply_command(rev, e.at, &Command::PatchNode { id, patch });
                }
            }
            EventKind::Power { node, on } => {
                // An agent speaks only for its own rack's nodes.
                if let Some(n) = self
                    .nodes
                    .get_mut(node)
                    .filter(|n| n.rack.as_ref() == Some(rack))
                {
                    n.power_on = Some(*on);
                    self.dirty.insert(Key::Node(*node));
                }
            }
            // Step logs are kept by the agent and streamed separately (workflow issue); the
            // event still counts as applied so the outbox drains.
            EventKind::Log { .. } => {}
            // Boot decisions feed the node timeline (workflow issue); counted as applied.
            EventKind::Boot { .. } => {}
            // Run progress and step logs feed runs, rollouts and the node timeline (issue 6);
            // counted as applied.
            EventKind::RunStatus { .. } | EventKind::StepLog { .. } => {
                self.apply_run_event(rack, rev, e)
            }
            // Outcomes of power and port intents advance tenancy jobs.
            EventKind::PowerApplied { .. } | EventKind::PortApplied { .. } => {
                self.apply_tenancy_event(rack, rev, e.at, &e.kind)
            }
        }
        // The node timeline (issue 6): check-ins, boot decisions, power, logs.
        self.note_event(rack, rev, e);
    }

    /// Checks an import against the current state without changing it; also used for the
    /// API's dry run, so the dry run and the real import cannot disagree.
    pub fn plan_import(&self, items: &[ImportItem]) -> Result<ImportReport, Refusal> {
        let mut report = ImportReport::default();
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let r = &item.record;
            if !seen.insert(&r.serial) {
                return Err(refuse_field(
                    ErrorCode::InvalidField,
                    &format!("[{i}].serial"),
                    format!("serial {} appears twice in one import", r.serial),
                ));
            }
            if !self.sites.contains_key(&r.site) {
                return Err(refuse_field(
                    ErrorCode::InvalidField,
                    &format!("[{i}].site"),
                    format!("site {} does not exist", r.site),
                ));
            }
            match self.racks.get(&r.rack) {
                None => {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        &format!("[{i}].rack"),
                        format!("rack {} does not exist", r.rack),
                    ))
                }
                Some(rack) if rack.site != r.site => {
                    return Err(refuse_field(
                        ErrorCode::InvalidField,
                        &format!("[{i}].rack"),
                        format!(
                            "rack {} stands in site {}, not {}",
                            r.rack, rack.site, r.site
                        ),
                    ))
                }
                Some(_) => {}
            }
            match self.inventory.get(&r.serial) {
                None => report.created.push(r.serial.clone()),
                Some(old) if same_inventory(old, r) => report.unchanged.push(r.serial.clone()),
                Some(old) => report
                    .updated
                    .push((r.serial.clone(), changed_fields(old, r))),
            }
        }
        Ok(report)
    }

    fn put_user(&mut self, u: User) -> Result<(), Refusal> {
        match (&u.role, &u.project) {
            (Role::ProjectMember, None) => {
                return Err(refuse_field(
                    ErrorCode::InvalidField,
                    "project",
                    "a project_member needs a project",
                ))
            }
            (Role::ProjectMember, Some(p)) if !self.projects.contains_key(p) => {
                return Err(refuse_field(
                    ErrorCode::InvalidField,
                    "project",
                    format!("project {p} does not exist"),
                ))
            }
            (Role::ProjectMember, Some(_)) => {}
            (_, Some(_)) => {
                return Err(refuse_field(
                    ErrorCode::InvalidField,
                    "project",
                    "only a project_member has a project",
                ))
            }
            (_, None) => {}
        }
        if let Some(old) = self.users.get(&u.name) {
            if old.role == Role::Admin
                && u.role != Role::Admin
                && self
                    .users
                    .values()
                    .filter(|x| x.role == Role::Admin)
                    .count()
                    == 1
            {
                return Err(refuse_field(
                    ErrorCode::Conflict,
                    "role",
                    format!("{} is the last admin", u.name),
                ));
            }
        }
        self.dirty.insert(Key::User(u.name.clone()));
        self.users.insert(u.name.clone(), u);
        Ok(())
    }

    fn create_token(&mut self, t: TokenRecord) -> Result<(), Refusal> {
        if !self.users.contains_key(&t.user) {
            return Err(refuse_field(
                ErrorCode::InvalidField,
                "user",
                format!("user {} does not exist", t.user),
            ));
        }
        if self.tokens.contains_key(&t.id) || self.token_by_hash.contains_key(&t.hash) {
            return Err(refuse(
                ErrorCode::AlreadyExists,
                format!("token {} already exists", t.id),
            ));
        }
        self.token_by_hash.insert(t.hash.clone(), t.id);
        self.dirty.insert(Key::Token(t.id));
        self.tokens.insert(t.id, t);
        Ok(())
    }

    fn remove_token(&mut self, id: TokenId) {
        if let Some(t) = self.tokens.remove(&id) {
            self.token_by_hash.remove(&t.hash);
        }
        self.dirty.insert(Key::Token(id));
    }
}

/// A deterministic UUID (version 8, RFC 9562 custom) from a name.
fn uuid_from(name: &str) -> uuid::Uuid {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn same_inventory(a: &InventoryRecord, b: &InventoryRecord) -> bool {
    changed_fields(a, b).is_empty()
}

/// Names of the fields that differ (ignoring bookkeeping), for update reports and dry runs.
/// Sealed credentials are compared by username and keyed fingerprint: a re-sealed identical
/// password has a new nonce, and comparing ciphertexts would report a change on every import.
fn changed_fields(a: &InventoryRecord, b: &InventoryRecord) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, same: bool| {
        if !same {
            out.push(name.to_owned());
        }
    };
    diff("site", a.site == b.site);
    diff("rack", a.rack == b.rack);
    diff("u_position", a.u_position == b.u_position);
    diff("model", a.model == b.model);
    diff("nics", a.nics == b.nics);
    let bmc_same = match (&a.bmc, &b.bmc) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.address == y.address
                && x.driver == y.driver
                && x.credentials
                    .as_ref()
                    .map(|c| (&c.username, &c.fingerprint))
                    == y.credentials
                        .as_ref()
                        .map(|c| (&c.username, &c.fingerprint))
        }
        _ => false,
    };
    diff("bmc", bmc_same);
    diff("static_ips", a.static_ips == b.static_ips);
    diff("tags", a.tags == b.tags);
    out
}
