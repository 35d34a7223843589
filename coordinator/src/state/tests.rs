//! Unit tests of `State::apply`, one or more per command, without Raft.
//!
//! Every test drives a [`Fleet`]: a state plus the revision counter the Raft log would
//! provide. [`Fleet::run`] checks the invariants every request must keep (one audit entry at
//! its revision, with the right outcome); [`Fleet::refused`] also checks that a refusal
//! changes nothing but that audit entry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::str::FromStr;

use protocol::domain::{
    AuditEntry, BmcDriver, BmcSpec, BootTarget, CredentialsInput, ExpectedNic, InventoryRecord,
    NodeState, Project, Rack, Role, Site, StaticIp, TokenRecord, UnixMillis, User,
};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::json::JsonValue;
use protocol::{Mac, NodeId, ProjectId, RackId, Revision, Serial, SiteId, Tag, TokenId, UserName};
use serde_json::json;
use uuid::Uuid;

use super::{
    Applied, ClusterInfo, Command, ImportItem, ImportReport, Key, NodePatch, Request, Response,
    State, SESSION_RETENTION_MS,
};
use crate::secrets::{hash_token, SealingKey};

/// Proposal time of every request unless a test says otherwise.
const T0: UnixMillis = 1_700_000_000_000;
const ACTOR: &str = "user:root";
/// Token created by `InitCluster` in [`Fleet::new`].
const ROOT_TOKEN: u128 = 1;

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

/// Parses an identifier that the test knows to be valid.
fn id<T: FromStr>(s: &str) -> T
where
    T::Err: Debug,
{
    s.parse().unwrap()
}

fn serial(s: &str) -> Serial {
    id(s)
}

fn node_id(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

fn token_id(n: u128) -> TokenId {
    TokenId(Uuid::from_u128(n))
}

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, last])
}

fn tags(names: &[&str]) -> BTreeSet<Tag> {
    names.iter().map(|t| id(t)).collect()
}

fn req(command: Command) -> Request {
    Request {
        actor: ACTOR.to_owned(),
        at: T0,
        request_id: None,
        command,
    }
}

fn req_with_id(command: Command, request_id: &str, at: UnixMillis) -> Request {
    Request {
        actor: ACTOR.to_owned(),
        at,
        request_id: Some(request_id.to_owned()),
        command,
    }
}

fn cluster_info() -> ClusterInfo {
    ClusterInfo {
        name: "lab".to_owned(),
        ca_cert_pem: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".to_owned(),
        ca_key: SealingKey::generate().seal("ca", b"ca private key"),
        created_at: T0,
    }
}

fn token(n: u128, user: &str) -> TokenRecord {
    TokenRecord {
        id: token_id(n),
        user: id(user),
        hash: hash_token(&format!("mf_secret-{n}")),
        description: format!("token {n}"),
        created_at: T0,
        expires_at: None,
    }
}

fn init(admin: &str, token: TokenRecord) -> Command {
    Command::InitCluster {
        info: cluster_info(),
        admin: id(admin),
        token,
    }
}

fn site(name: &str) -> Command {
    Command::PutSite(Site {
        name: id(name),
        description: format!("site {name}"),
    })
}

fn rack(name: &str, site: &str) -> Command {
    Command::PutRack(Rack {
        name: id(name),
        site: id(site),
        description: String::new(),
    })
}

fn project(name: &str) -> Command {
    Command::PutProject(Project {
        name: id(name),
        description: String::new(),
    })
}

fn user(name: &str, role: Role, project: Option<&str>) -> Command {
    Command::PutUser(User {
        name: id(name),
        role,
        project: project.map(id),
    })
}

fn record(serial: &str, site: &str, rack: &str) -> InventoryRecord {
    InventoryRecord {
        serial: id(serial),
        site: id(site),
        rack: id(rack),
        u_position: None,
        model: None,
        nics: Vec::new(),
        bmc: None,
        static_ips: Vec::new(),
        tags: BTreeSet::new(),
        revision: 0,
        generation: 0,
    }
}

/// A record with every optional field filled in, credentials sealed with `key`.
fn full_record(serial: &str, key: &SealingKey, password: &str) -> InventoryRecord {
    let creds = CredentialsInput {
        username: "admin".to_owned(),
        password: password.to_owned(),
    };
    InventoryRecord {
        u_position: Some(12),
        model: Some("PowerEdge R650".to_owned()),
        nics: vec![ExpectedNic {
            name: "eno1".to_owned(),
            mac: Some(mac(0xe1)),
            switch: Some("tor1".to_owned()),
            port: Some("Ethernet1/12".to_owned()),
        }],
        bmc: Some(BmcSpec {
            address: "10.0.0.12".to_owned(),
            driver: BmcDriver::Redfish,
            credentials: Some(key.seal_credentials(&format!("bmc:{serial}"), &creds)),
        }),
        static_ips: vec![StaticIp {
            interface: "eno1".to_owned(),
            address: "10.1.0.12".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.1.0.1".parse().unwrap()),
        }],
        tags: tags(&["gpu", "prod"]),
        ..record(serial, "ams1", "r1")
    }
}

fn items(records: impl IntoIterator<Item = InventoryRecord>) -> Vec<ImportItem> {
    records
        .into_iter()
        .map(|record| ImportItem { record })
        .collect()
}

fn import(records: impl IntoIterator<Item = InventoryRecord>) -> Command {
    Command::ImportInventory(items(records))
}

fn register(n: u128, serial: &str, rack: Option<&str>, macs: &[u8]) -> Command {
    Command::RegisterNode {
        id: node_id(n),
        serial: id(serial),
        rack: rack.map(id),
        macs: macs.iter().copied().map(mac).collect(),
    }
}

fn patch(node: NodeId, patch: NodePatch) -> Command {
    Command::PatchNode { id: node, patch }
}

fn to_state(node: NodeId, state: NodeState) -> Command {
    patch(
        node,
        NodePatch {
            state: Some(state),
            ..NodePatch::default()
        },
    )
}

fn facts(node: NodeId, value: serde_json::Value) -> Command {
    patch(
        node,
        NodePatch {
            facts: Some(JsonValue(value)),
            ..NodePatch::default()
        },
    )
}

fn set_project(node: NodeId, project: Option<&str>) -> Command {
    patch(
        node,
        NodePatch {
            project: Some(project.map(id)),
            ..NodePatch::default()
        },
    )
}

fn note(target: &str) -> Command {
    Command::Note {
        action: "membership.add".to_owned(),
        target: target.to_owned(),
    }
}

fn as_node(applied: Applied) -> protocol::domain::Node {
    match applied {
        Applied::Node(n) => *n,
        other => panic!("expected Applied::Node, got {other:?}"),
    }
}

fn as_report(applied: Applied) -> ImportReport {
    match applied {
        Applied::Import(r) => r,
        other => panic!("expected Applied::Import, got {other:?}"),
    }
}

fn keys(keys: impl IntoIterator<Item = Key>) -> BTreeSet<Key> {
    keys.into_iter().collect()
}

/// Asserts a refusal's code and field.
#[track_caller]
fn assert_refusal(err: &ErrorBody, code: ErrorCode, field: Option<&str>) {
    assert_eq!(err.code, code, "{err}");
    assert_eq!(err.field.as_deref(), field, "{err}");
}

// ---------------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------------

/// A state under test plus the revision counter a Raft log would provide.
struct Fleet {
    state: State,
    rev: Revision,
}

impl Fleet {
    fn empty() -> Self {
        Fleet {
            state: State::default(),
            rev: 0,
        }
    }

    /// An initialised cluster: admin `root` with token 1, sites `ams1` (racks `r1`, `r2`)
    /// and `fra1` (rack `f1`), project `blue`. Dirty keys cleared.
    fn new() -> Self {
        let mut f = Fleet::empty();
        f.ok(init("root", token(ROOT_TOKEN, "root")));
        for cmd in [
            site("ams1"),
            site("fra1"),
            rack("r1", "ams1"),
            rack("r2", "ams1"),
            rack("f1", "fra1"),
            project("blue"),
        ] {
            f.ok(cmd);
        }
        f.state.take_dirty();
        f
    }

    /// Applies a request at the next revision, with no checks.
    fn apply(&mut self, req: &Request) -> Response {
        self.rev += 1;
        self.state.apply(self.rev, req)
    }

    /// Applies a command (no idempotency key) and checks it was answered at its revision
    /// with exactly one audit entry recording its outcome.
    #[track_caller]
    fn run(&mut self, cmd: Command) -> Response {
        let audit_before = self.state.audit.len();
        let request = req(cmd);
        let resp = self.apply(&request);
        assert_eq!(resp.revision, self.rev);
        assert!(!resp.replayed);
        assert_eq!(
            self.state.audit.len(),
            audit_before + 1,
            "one audit entry per request"
        );
        let entry = &self.state.audit[&self.rev];
        let outcome = match &resp.result {
            Ok(_) => "applied".to_owned(),
            Err(e) => format!("refused: {}: {}", e.code.as_str(), e.message),
        };
        assert_eq!(
            entry,
            &AuditEntry {
                revision: self.rev,
                at: T0,
                actor: ACTOR.to_owned(),
                action: request.command.action().to_owned(),
                target: request.command.target(),
                outcome,
                request_id: None,
            }
        );
        resp
    }

    #[track_caller]
    fn ok(&mut self, cmd: Command) -> Applied {
        match self.run(cmd).result {
            Ok(a) => a,
            Err(e) => panic!("expected success, got {e}"),
        }
    }

    /// Applies a command that must be refused, and checks the refusal changed nothing but
    /// its own audit entry (in the state and in the dirty set). Clears the dirty set.
    #[track_caller]
    fn refused(&mut self, cmd: Command) -> ErrorBody {
        self.state.take_dirty();
        let before = self.state.clone();
        let err = self.run(cmd).result.expect_err("expected a refusal");
        assert_eq!(
            self.state.take_dirty(),
            keys([Key::Audit(self.rev)]),
            "a refusal touches only its audit entry ({err})"
        );
        let mut after = self.state.clone();
        after.audit.remove(&self.rev);
        assert_eq!(
            after, before,
            "a refusal changes nothing but the audit trail ({err})"
        );
        err
    }

    /// Registers node `n` with serial `S<n>` in `rack`, returning its id.
    fn node(&mut self, n: u128, rack: &str) -> NodeId {
        as_node(self.ok(register(n, &format!("S{n}"), Some(rack), &[n as u8]))).id
    }

    /// Registers node 1 and drives it to `state` through allowed transitions.
    fn with_node_in(state: NodeState) -> (Fleet, NodeId) {
        use NodeState::*;
        let path: &[NodeState] = match state {
            Discovered => &[],
            Commissioning => &[Commissioning],
            Ready => &[Commissioning, Ready],
            Deploying => &[Commissioning, Ready, Deploying],
            Deployed => &[Commissioning, Ready, Deploying, Deployed],
            Failed => &[Failed],
            Retired => &[Retired],
        };
        let mut f = Fleet::new();
        let n = f.node(1, "r1");
        for s in path {
            f.ok(to_state(n, *s));
        }
        assert_eq!(f.state.nodes[&n].state, state);
        (f, n)
    }
}

// ---------------------------------------------------------------------------------------------
// InitCluster
// ---------------------------------------------------------------------------------------------

#[test]
fn init_cluster_creates_identity_admin_and_token() {
    let mut f = Fleet::empty();
    let cmd = init("root", token(ROOT_TOKEN, "root"));
    let Command::InitCluster { info, .. } = &cmd else {
        unreachable!()
    };
    let info = info.clone();

    assert_eq!(f.ok(cmd), Applied::Done);

    assert_eq!(f.state.cluster, Some(info));
    assert_eq!(
        f.state.users[&id::<UserName>("root")],
        User {
            name: id("root"),
            role: Role::Admin,
            project: None
        }
    );
    assert_eq!(
        f.state.tokens[&token_id(ROOT_TOKEN)],
        token(ROOT_TOKEN, "root")
    );
    let found = f
        .state
        .token_by_hash(&hash_token("mf_secret-1"))
        .expect("token by hash");
    assert_eq!(found.id, token_id(ROOT_TOKEN));
    assert_eq!(found.user, id::<UserName>("root"));
    assert!(f.state.token_by_hash(&hash_token("mf_other")).is_none());
    assert_eq!(
        f.state.take_dirty(),
        keys([
            Key::Cluster,
            Key::User(id("root")),
            Key::Token(token_id(ROOT_TOKEN)),
            Key::Audit(1)
        ])
    );
}

#[test]
fn init_cluster_twice_is_already_exists() {
    let mut f = Fleet::new();
    let err = f.refused(init("other", token(99, "other")));
    assert_refusal(&err, ErrorCode::AlreadyExists, None);
    assert!(!f.state.users.contains_key(&id::<UserName>("other")));
    assert_eq!(
        f.state.cluster.as_ref().map(|c| c.name.as_str()),
        Some("lab")
    );
}

#[test]
fn refused_init_cluster_leaves_no_trace() {
    let mut f = Fleet::empty();
    // The token names a user that does not exist, so `create_token` refuses it — but only
    // after `cluster` was set and the admin created.
    let err = f.refused(init("root", token(ROOT_TOKEN, "nobody")));
    assert_refusal(&err, ErrorCode::InvalidField, Some("user"));
    assert!(f.state.cluster.is_none());
    assert!(f.state.users.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Sites and racks
// ---------------------------------------------------------------------------------------------

#[test]
fn put_site_creates_and_replaces() {
    let mut f = Fleet::new();
    assert_eq!(f.ok(site("par1")), Applied::Done);
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Site(id("par1")), Key::Audit(f.rev)])
    );
    f.ok(Command::PutSite(Site {
        name: id("par1"),
        description: "Paris".to_owned(),
    }));
    assert_eq!(f.state.sites[&id::<SiteId>("par1")].description, "Paris");
    assert_eq!(f.state.sites.len(), 3);
}

#[test]
fn delete_site_not_found_refused_while_racked_then_ok() {
    let mut f = Fleet::new();
    let err = f.refused(Command::DeleteSite(id("nowhere")));
    assert_refusal(&err, ErrorCode::NotFound, None);

    let err = f.refused(Command::DeleteSite(id("fra1")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    assert!(err.message.contains("f1"), "names the rack: {err}");

    f.ok(Command::DeleteRack(id("f1")));
    f.state.take_dirty();
    assert_eq!(f.ok(Command::DeleteSite(id("fra1"))), Applied::Done);
    assert!(!f.state.sites.contains_key(&id::<SiteId>("fra1")));
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Site(id("fra1")), Key::Audit(f.rev)])
    );
}

#[test]
fn put_rack_needs_an_existing_site() {
    let mut f = Fleet::new();
    let err = f.refused(rack("x1", "nowhere"));
    assert_refusal(&err, ErrorCode::InvalidField, Some("site"));

    assert_eq!(f.ok(rack("x1", "fra1")), Applied::Done);
    assert_eq!(
        f.state.racks[&id::<RackId>("x1")].site,
        id::<SiteId>("fra1")
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Rack(id("x1")), Key::Audit(f.rev)])
    );
    // Replacing moves it.
    f.ok(rack("x1", "ams1"));
    assert_eq!(
        f.state.racks[&id::<RackId>("x1")].site,
        id::<SiteId>("ams1")
    );
}

#[test]
fn delete_rack_refused_while_referenced() {
    let mut f = Fleet::new();
    assert_refusal(
        &f.refused(Command::DeleteRack(id("r9"))),
        ErrorCode::NotFound,
        None,
    );

    // Referenced by inventory.
    f.ok(import([record("S1", "ams1", "r1")]));
    let err = f.refused(Command::DeleteRack(id("r1")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    assert!(err.message.contains("S1"), "{err}");
    f.ok(Command::DeleteInventory(serial("S1")));

    // Referenced by a node.
    let n = f.node(7, "r1");
    let err = f.refused(Command::DeleteRack(id("r1")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    assert!(err.message.contains(&n.to_string()), "{err}");

    // Once the node is seen in another rack, r1 can go.
    f.ok(register(7, "S7", Some("r2"), &[]));
    f.state.take_dirty();
    assert_eq!(f.ok(Command::DeleteRack(id("r1"))), Applied::Done);
    assert!(!f.state.racks.contains_key(&id::<RackId>("r1")));
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Rack(id("r1")), Key::Audit(f.rev)])
    );
}

#[test]
fn inventory_never_names_a_missing_site() {
    let mut f = Fleet::new();
    f.ok(import([record("S1", "fra1", "f1")]));
    // Move rack f1 to ams1: its inventory record still says site fra1 (an import with that
    // combination would be refused as "rack in another site").
    let _ = f.run(rack("f1", "ams1"));
    // fra1 now has no racks, so nothing stops its deletion.
    let _ = f.run(Command::DeleteSite(id("fra1")));
    for r in f.state.inventory.values() {
        assert!(
            f.state.sites.contains_key(&r.site),
            "{} names missing site {}",
            r.serial,
            r.site
        );
        assert_eq!(
            f.state.racks[&r.rack].site, r.site,
            "{}: rack and site disagree",
            r.serial
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Inventory
// ---------------------------------------------------------------------------------------------

#[test]
fn import_reports_created_updated_unchanged() {
    let mut f = Fleet::new();
    let report = as_report(f.ok(import([
        record("A", "ams1", "r1"),
        record("B", "ams1", "r1"),
    ])));
    let first = f.rev;
    assert_eq!(
        report,
        ImportReport {
            created: vec![serial("A"), serial("B")],
            updated: vec![],
            unchanged: vec![],
            dry_run: false
        }
    );
    for s in ["A", "B"] {
        let r = &f.state.inventory[&serial(s)];
        assert_eq!((r.revision, r.generation), (first, 1), "{s}");
    }
    f.state.take_dirty();

    let b = InventoryRecord {
        model: Some("R650".to_owned()),
        tags: tags(&["gpu"]),
        ..record("B", "ams1", "r1")
    };
    let report = as_report(f.ok(import([
        record("A", "ams1", "r1"),
        b,
        record("C", "ams1", "r2"),
    ])));
    assert_eq!(
        report,
        ImportReport {
            created: vec![serial("C")],
            updated: vec![(serial("B"), vec!["model".to_owned(), "tags".to_owned()])],
            unchanged: vec![serial("A")],
            dry_run: false
        }
    );
    let gen_rev = |s: &str| {
        let r = &f.state.inventory[&serial(s)];
        (r.generation, r.revision)
    };
    assert_eq!(
        gen_rev("A"),
        (1, first),
        "unchanged keeps generation and revision"
    );
    assert_eq!(gen_rev("B"), (2, f.rev));
    assert_eq!(gen_rev("C"), (1, f.rev));
    assert_eq!(
        f.state.inventory[&serial("B")].model.as_deref(),
        Some("R650")
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([
            Key::Inventory(serial("B")),
            Key::Inventory(serial("C")),
            Key::Audit(f.rev)
        ])
    );
}

#[test]
fn import_generation_increments_only_on_real_change() {
    let key = SealingKey::generate();
    let mut f = Fleet::new();
    f.ok(import([full_record("S1", &key, "pw")]));
    let created_at = f.rev;
    for _ in 0..3 {
        // Re-sealed each time: new nonce and ciphertext, same fingerprint.
        let report = as_report(f.ok(import([full_record("S1", &key, "pw")])));
        assert_eq!(report.unchanged, vec![serial("S1")]);
        let r = &f.state.inventory[&serial("S1")];
        assert_eq!((r.generation, r.revision), (1, created_at));
    }
    f.ok(import([InventoryRecord {
        u_position: Some(20),
        ..full_record("S1", &key, "pw")
    }]));
    let r = &f.state.inventory[&serial("S1")];
    assert_eq!(
        (r.generation, r.revision, r.u_position),
        (2, f.rev, Some(20))
    );
}

#[test]
fn import_names_each_changed_field() {
    let key = SealingKey::generate();
    let base = full_record("S1", &key, "pw");
    type Change = fn(&mut InventoryRecord);
    let cases: [(Change, &[&str]); 8] = [
        (
            |r| {
                r.site = id("fra1");
                r.rack = id("f1");
            },
            &["site", "rack"],
        ),
        (|r| r.rack = id("r2"), &["rack"]),
        (|r| r.u_position = None, &["u_position"]),
        (|r| r.model = Some("other".to_owned()), &["model"]),
        (
            |r| r.nics[0].port = Some("Ethernet1/13".to_owned()),
            &["nics"],
        ),
        (|r| r.static_ips[0].prefix = 25, &["static_ips"]),
        (|r| r.tags = tags(&["gpu"]), &["tags"]),
        (
            |r| {
                r.model = None;
                r.tags.clear();
                r.nics.clear();
            },
            &["model", "nics", "tags"],
        ),
    ];
    for (change, want) in cases {
        let mut f = Fleet::new();
        f.ok(import([base.clone()]));
        let mut changed = base.clone();
        change(&mut changed);
        let report = as_report(f.ok(import([changed.clone()])));
        let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(report.updated, vec![(serial("S1"), want.clone())]);
        let stored = &f.state.inventory[&serial("S1")];
        assert_eq!(stored.generation, 2, "{want:?}");
        assert_eq!(
            InventoryRecord {
                revision: 0,
                generation: 0,
                ..stored.clone()
            },
            changed,
            "{want:?}: the new content is stored"
        );
    }
}

#[test]
fn import_compares_bmc_credentials_by_username_and_fingerprint() {
    let key = SealingKey::generate();
    let mut f = Fleet::new();
    let original = full_record("S1", &key, "pw");
    f.ok(import([original.clone()]));

    // Same password re-sealed: different ciphertext, same fingerprint → unchanged, and the
    // stored ciphertext is left alone.
    let resealed = full_record("S1", &key, "pw");
    let creds = |r: &InventoryRecord| r.bmc.clone().unwrap().credentials.unwrap();
    assert_ne!(creds(&resealed).password, creds(&original).password);
    assert_eq!(creds(&resealed).fingerprint, creds(&original).fingerprint);
    let report = as_report(f.ok(import([resealed])));
    assert_eq!(report.unchanged, vec![serial("S1")]);
    assert_eq!(creds(&f.state.inventory[&serial("S1")]), creds(&original));

    type Change = fn(&mut InventoryRecord, &SealingKey);
    let changes: [(&str, Change); 5] = [
        ("new password", |r, k| *r = full_record("S1", k, "pw2")),
        ("new username", |r, _| {
            if let Some(c) = r.bmc.as_mut().and_then(|b| b.credentials.as_mut()) {
                c.username = "root".to_owned();
            }
        }),
        ("credentials removed", |r, _| {
            r.bmc.as_mut().unwrap().credentials = None
        }),
        ("new address", |r, _| {
            r.bmc.as_mut().unwrap().address = "10.0.0.99".to_owned()
        }),
        ("new driver", |r, _| {
            r.bmc.as_mut().unwrap().driver = BmcDriver::Ipmi
        }),
    ];
    for (what, change) in changes {
        let mut changed = original.clone();
        change(&mut changed, &key);
        assert_eq!(
            f.state.plan_import(&items([changed])).unwrap().updated,
            vec![(serial("S1"), vec!["bmc".to_owned()])],
            "{what}"
        );
    }
    let no_bmc = InventoryRecord {
        bmc: None,
        ..original.clone()
    };
    let report = as_report(f.ok(import([no_bmc])));
    assert_eq!(report.updated, vec![(serial("S1"), vec!["bmc".to_owned()])]);
    assert_eq!(f.state.inventory[&serial("S1")].generation, 2);
    let report = as_report(f.ok(import([original])));
    assert_eq!(report.updated, vec![(serial("S1"), vec!["bmc".to_owned()])]);
    assert_eq!(f.state.inventory[&serial("S1")].generation, 3);
}

#[test]
fn import_refusals_name_the_item_and_change_nothing() {
    let mut f = Fleet::new();
    f.ok(import([record("OLD", "ams1", "r1")]));
    let good = || record("NEW", "ams1", "r1");
    let cases = [
        (vec![good(), record("X", "nowhere", "r1")], "[1].site"),
        (vec![record("X", "ams1", "r9"), good()], "[0].rack"),
        (vec![good(), record("X", "fra1", "r1")], "[1].rack"),
        (vec![good(), record("NEW", "fra1", "f1")], "[1].serial"),
        // An update of an existing record is not applied when a later item is bad.
        (
            vec![
                record("OLD", "ams1", "r2"),
                good(),
                record("X", "ams1", "f1"),
            ],
            "[2].rack",
        ),
    ];
    for (records, field) in cases {
        let planned = f.state.plan_import(&items(records.clone())).unwrap_err();
        let err = f.refused(import(records));
        assert_refusal(&err, ErrorCode::InvalidField, Some(field));
        assert_eq!(planned, err, "dry run and import refuse alike");
    }
    let err = f.refused(import([record("X", "fra1", "r1")]));
    assert!(err.message.contains("stands in site ams1"), "{err}");
    assert_eq!(f.state.inventory.len(), 1);
    assert_eq!(f.state.inventory[&serial("OLD")].rack, id::<RackId>("r1"));
}

#[test]
fn plan_import_matches_the_import_and_changes_nothing() {
    let key = SealingKey::generate();
    let mut f = Fleet::new();
    f.ok(import([
        full_record("A", &key, "pw"),
        full_record("B", &key, "pw"),
    ]));
    f.state.take_dirty();
    let batch = items([
        full_record("A", &key, "pw"),
        InventoryRecord {
            model: None,
            ..full_record("B", &key, "other")
        },
        record("C", "fra1", "f1"),
    ]);

    let before = f.state.clone();
    let planned = f.state.plan_import(&batch).unwrap();
    assert_eq!(
        f.state, before,
        "a dry run changes nothing, not even the dirty set"
    );
    assert_eq!(
        planned,
        ImportReport {
            created: vec![serial("C")],
            updated: vec![(serial("B"), vec!["model".to_owned(), "bmc".to_owned()])],
            unchanged: vec![serial("A")],
            dry_run: false,
        }
    );
    let applied = as_report(f.ok(Command::ImportInventory(batch.clone())));
    assert_eq!(applied, planned);
    // Planned again after the import: everything is now unchanged.
    assert_eq!(
        f.state.plan_import(&batch).unwrap().unchanged,
        vec![serial("A"), serial("B"), serial("C")]
    );
}

#[test]
fn import_of_nothing_is_a_no_op() {
    let mut f = Fleet::new();
    let report = as_report(f.ok(import([])));
    assert_eq!(report, ImportReport::default());
    assert_eq!(f.state.take_dirty(), keys([Key::Audit(f.rev)]));
    assert_eq!(f.state.audit[&f.rev].target, "0 records");
}

#[test]
fn delete_inventory() {
    let mut f = Fleet::new();
    assert_refusal(
        &f.refused(Command::DeleteInventory(serial("S1"))),
        ErrorCode::NotFound,
        None,
    );
    f.ok(import([record("S1", "ams1", "r1")]));
    f.state.take_dirty();
    assert_eq!(f.ok(Command::DeleteInventory(serial("S1"))), Applied::Done);
    assert!(f.state.inventory.is_empty());
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Inventory(serial("S1")), Key::Audit(f.rev)])
    );
    // Re-importing starts again at generation 1.
    f.ok(import([record("S1", "ams1", "r1")]));
    assert_eq!(f.state.inventory[&serial("S1")].generation, 1);
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

#[test]
fn register_new_node_takes_rack_and_tags_from_inventory() {
    let mut f = Fleet::new();
    f.ok(import([InventoryRecord {
        tags: tags(&["gpu", "prod"]),
        ..record("S1", "ams1", "r2")
    }]));
    f.state.take_dirty();

    let node = as_node(f.ok(register(1, "S1", None, &[1, 2])));
    assert_eq!(
        node,
        protocol::domain::Node {
            id: node_id(1),
            serial: serial("S1"),
            rack: Some(id("r2")),
            macs: vec![mac(1), mac(2)],
            state: NodeState::Discovered,
            facts: JsonValue(json!({})),
            boot_target: BootTarget::Discovery,
            project: None,
            power_on: None,
            tags: tags(&["gpu", "prod"]),
            created_at: T0,
            revision: f.rev,
        }
    );
    assert_eq!(f.state.nodes[&node_id(1)], node);
    assert_eq!(f.state.node_by_serial(&serial("S1")), Some(&node));
    assert!(f.state.node_by_serial(&serial("S2")).is_none());
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Node(node_id(1)), Key::Audit(f.rev)])
    );
}

#[test]
fn register_node_reported_rack_wins_and_unknown_serial_gets_no_tags() {
    let mut f = Fleet::new();
    f.ok(import([InventoryRecord {
        tags: tags(&["gpu"]),
        ..record("S1", "ams1", "r2")
    }]));
    let node = as_node(f.ok(register(1, "S1", Some("r1"), &[])));
    assert_eq!(node.rack, Some(id("r1")));
    assert_eq!(node.tags, tags(&["gpu"]));

    let stranger = as_node(f.ok(register(2, "S2", None, &[9])));
    assert_eq!((stranger.rack, stranger.tags), (None, BTreeSet::new()));
}

#[test]
fn register_same_serial_merges_macs_and_keeps_the_id() {
    let mut f = Fleet::new();
    let first = as_node(f.ok(register(1, "S1", Some("r1"), &[1, 2])));
    f.ok(to_state(first.id, NodeState::Commissioning));
    f.state.take_dirty();

    // A different proposed id, an overlapping MAC list and no rack.
    let again = as_node(f.ok(register(2, "S1", None, &[2, 3, 3, 1])));
    assert_eq!(again.id, node_id(1));
    assert_eq!(again.macs, vec![mac(1), mac(2), mac(3)]);
    assert_eq!(
        again.rack,
        Some(id("r1")),
        "no reported rack keeps the old one"
    );
    assert_eq!(
        again.state,
        NodeState::Commissioning,
        "registration does not reset the lifecycle"
    );
    assert_eq!((again.created_at, again.revision), (T0, f.rev));
    assert_eq!(f.state.nodes.len(), 1);
    assert_eq!(f.state.nodes[&node_id(1)], again);
    assert_eq!(
        f.state.node_by_serial(&serial("S1")).map(|n| n.id),
        Some(node_id(1))
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Node(node_id(1)), Key::Audit(f.rev)])
    );

    let moved = as_node(f.ok(register(1, "S1", Some("r2"), &[])));
    assert_eq!(moved.rack, Some(id("r2")));
    assert_eq!(moved.macs.len(), 3);
}

#[test]
fn register_node_refusals() {
    let mut f = Fleet::new();
    f.node(1, "r1");
    let err = f.refused(register(2, "S2", Some("r9"), &[]));
    assert_refusal(&err, ErrorCode::InvalidField, Some("rack"));
    // The rack is checked for known serials too.
    let err = f.refused(register(1, "S1", Some("r9"), &[7]));
    assert_refusal(&err, ErrorCode::InvalidField, Some("rack"));
    // A new serial cannot take an existing id.
    let err = f.refused(register(1, "S2", None, &[]));
    assert_refusal(&err, ErrorCode::AlreadyExists, None);
    assert!(f.state.node_by_serial(&serial("S2")).is_none());
}

#[test]
fn new_node_macs_are_deduplicated() {
    let mut f = Fleet::new();
    let node = as_node(f.ok(register(1, "S1", None, &[1, 1, 2])));
    assert_eq!(node.macs, vec![mac(1), mac(2)]);
}

/// Every allowed lifecycle edge besides staying in place.
const ALLOWED: &[(NodeState, NodeState)] = {
    use NodeState::*;
    &[
        (Discovered, Commissioning),
        (Commissioning, Ready),
        (Ready, Commissioning),
        (Ready, Deploying),
        (Deploying, Deployed),
        (Deploying, Ready),
        (Deployed, Ready),
        (Deployed, Commissioning),
        (Failed, Discovered),
        (Failed, Commissioning),
        (Failed, Ready),
        (Discovered, Failed),
        (Commissioning, Failed),
        (Ready, Failed),
        (Deploying, Failed),
        (Deployed, Failed),
        (Discovered, Retired),
        (Commissioning, Retired),
        (Ready, Retired),
        (Deploying, Retired),
        (Deployed, Retired),
        (Failed, Retired),
    ]
};

#[test]
fn patch_node_state_follows_the_lifecycle_table() {
    for from in NodeState::ALL {
        for to in NodeState::ALL {
            let allowed = from == to || ALLOWED.contains(&(from, to));
            assert_eq!(
                from.can_become(to),
                allowed,
                "can_become {from:?} -> {to:?}"
            );

            let (mut f, n) = Fleet::with_node_in(from);
            if allowed {
                f.state.take_dirty();
                let node = as_node(f.ok(to_state(n, to)));
                assert_eq!(node.state, to);
                assert_eq!(node.revision, f.rev);
                assert_eq!(f.state.nodes[&n], node);
                assert_eq!(
                    f.state.take_dirty(),
                    keys([Key::Node(n), Key::Audit(f.rev)])
                );
            } else {
                let err = f.refused(to_state(n, to));
                assert_refusal(&err, ErrorCode::InvalidTransition, Some("state"));
                let want = format!("cannot go from {} to {}", from.as_str(), to.as_str());
                assert!(err.message.contains(&want), "{err}");
                assert_eq!(f.state.nodes[&n].state, from);
            }
        }
    }
}

#[test]
fn disallowed_transitions_are_refused() {
    use NodeState::*;
    let mut table = vec![
        (Discovered, Ready),
        (Discovered, Deploying),
        (Discovered, Deployed),
        (Commissioning, Discovered),
        (Commissioning, Deploying),
        (Commissioning, Deployed),
        (Ready, Discovered),
        (Ready, Deployed),
        (Deploying, Discovered),
        (Deploying, Commissioning),
        (Deployed, Discovered),
        (Deployed, Deploying),
        (Failed, Deploying),
        (Failed, Deployed),
    ];
    table.extend(
        NodeState::ALL
            .into_iter()
            .filter(|s| *s != Retired)
            .map(|s| (Retired, s)),
    );
    for (from, to) in table {
        assert!(!from.can_become(to), "{from:?} -> {to:?}");
        let (mut f, n) = Fleet::with_node_in(from);
        let err = f.refused(to_state(n, to));
        assert_refusal(&err, ErrorCode::InvalidTransition, Some("state"));
    }
    // A refused transition applies none of the other changes of the same patch.
    let (mut f, n) = Fleet::with_node_in(Discovered);
    f.refused(patch(
        n,
        NodePatch {
            state: Some(Deployed),
            boot_target: Some(BootTarget::Local),
            project: Some(Some(id("blue"))),
            tags: Some(tags(&["x"])),
            facts: Some(JsonValue(json!({"cpus": 4}))),
        },
    ));
}

#[test]
fn patch_node_merges_facts_by_top_level_key() {
    let mut f = Fleet::new();
    let n = f.node(1, "r1");
    f.ok(facts(
        n,
        json!({"cpu": {"count": 2, "model": "old"}, "mem_gb": 8}),
    ));
    let node = as_node(f.ok(facts(n, json!({"cpu": {"model": "new"}, "disks": [1, 2]}))));
    assert_eq!(
        node.facts,
        JsonValue(json!({"cpu": {"model": "new"}, "mem_gb": 8, "disks": [1, 2]}))
    );
    assert_eq!(f.state.nodes[&n].facts, node.facts);

    for bad in [json!([1, 2]), json!("text"), json!(null), json!(3)] {
        let err = f.refused(facts(n, bad));
        assert_refusal(&err, ErrorCode::InvalidField, Some("facts"));
    }
}

#[test]
fn patch_node_project_boot_target_and_tags() {
    let mut f = Fleet::new();
    let n = f.node(1, "r1");

    let err = f.refused(set_project(n, Some("red")));
    assert_refusal(&err, ErrorCode::InvalidField, Some("project"));

    assert_eq!(
        as_node(f.ok(set_project(n, Some("blue")))).project,
        Some(id("blue"))
    );
    // Fields left as None are left alone.
    let node = as_node(f.ok(patch(n, NodePatch::default())));
    assert_eq!(node.project, Some(id("blue")));
    assert_eq!(node.revision, f.rev);
    // Some(None) frees.
    assert_eq!(as_node(f.ok(set_project(n, None))).project, None);

    let install = BootTarget::Install {
        kernel: "vmlinuz".to_owned(),
        initrd: "initrd".to_owned(),
        cmdline: "console=ttyS0".to_owned(),
        autoinstall: Some("ubuntu".to_owned()),
    };
    let node = as_node(f.ok(patch(
        n,
        NodePatch {
            boot_target: Some(install.clone()),
            tags: Some(tags(&["new"])),
            ..NodePatch::default()
        },
    )));
    assert_eq!((node.boot_target, node.tags), (install, tags(&["new"])));
    assert_eq!(
        as_node(f.ok(patch(
            n,
            NodePatch {
                tags: Some(BTreeSet::new()),
                ..NodePatch::default()
            }
        )))
        .tags,
        BTreeSet::new()
    );
}

#[test]
fn patch_unknown_node_is_not_found() {
    let mut f = Fleet::new();
    let err = f.refused(to_state(node_id(42), NodeState::Ready));
    assert_refusal(&err, ErrorCode::NotFound, None);
    let err = f.refused(set_project(node_id(42), None));
    assert_refusal(&err, ErrorCode::NotFound, None);
}

// ---------------------------------------------------------------------------------------------
// Projects, users and tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_project_refused_while_it_owns_nodes_or_has_members() {
    let mut f = Fleet::new();
    assert_refusal(
        &f.refused(Command::DeleteProject(id("red"))),
        ErrorCode::NotFound,
        None,
    );

    let n = f.node(1, "r1");
    f.ok(set_project(n, Some("blue")));
    f.ok(user("carol", Role::ProjectMember, Some("blue")));

    let err = f.refused(Command::DeleteProject(id("blue")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    assert!(err.message.contains("node"), "{err}");
    f.ok(set_project(n, None));

    let err = f.refused(Command::DeleteProject(id("blue")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    assert!(err.message.contains("carol"), "{err}");
    f.ok(Command::DeleteUser(id("carol")));

    f.state.take_dirty();
    assert_eq!(f.ok(Command::DeleteProject(id("blue"))), Applied::Done);
    assert!(f.state.projects.is_empty());
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Project(id("blue")), Key::Audit(f.rev)])
    );
}

#[test]
fn put_project_creates_and_replaces() {
    let mut f = Fleet::new();
    f.ok(Command::PutProject(Project {
        name: id("blue"),
        description: "tenant".to_owned(),
    }));
    assert_eq!(
        f.state.projects[&id::<ProjectId>("blue")].description,
        "tenant"
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Project(id("blue")), Key::Audit(f.rev)])
    );
}

#[test]
fn put_user_checks_project_membership() {
    let mut f = Fleet::new();
    let cases = [
        user("carol", Role::ProjectMember, None),
        user("carol", Role::ProjectMember, Some("red")),
        user("carol", Role::Operator, Some("blue")),
        user("carol", Role::ReadOnly, Some("blue")),
        user("carol", Role::Admin, Some("blue")),
    ];
    for cmd in cases {
        let err = f.refused(cmd);
        assert_refusal(&err, ErrorCode::InvalidField, Some("project"));
    }
    assert_eq!(
        f.ok(user("carol", Role::ProjectMember, Some("blue"))),
        Applied::Done
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::User(id("carol")), Key::Audit(f.rev)])
    );
    f.ok(user("carol", Role::ReadOnly, None));
    assert_eq!(
        f.state.users[&id::<UserName>("carol")],
        User {
            name: id("carol"),
            role: Role::ReadOnly,
            project: None
        }
    );
}

#[test]
fn last_admin_cannot_be_deleted_or_demoted() {
    let mut f = Fleet::new();
    let err = f.refused(Command::DeleteUser(id("root")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    let err = f.refused(user("root", Role::Operator, None));
    assert_refusal(&err, ErrorCode::Conflict, Some("role"));
    // Re-putting the admin as admin is fine.
    f.ok(user("root", Role::Admin, None));

    // With a second admin, either may go.
    f.ok(user("alice", Role::Admin, None));
    f.ok(user("root", Role::Operator, None));
    assert_eq!(f.state.users[&id::<UserName>("root")].role, Role::Operator);
    let err = f.refused(Command::DeleteUser(id("alice")));
    assert_refusal(&err, ErrorCode::Conflict, None);
    f.ok(Command::DeleteUser(id("root")));
    assert_eq!(
        f.state.users.keys().collect::<Vec<_>>(),
        vec![&id::<UserName>("alice")]
    );
}

#[test]
fn delete_user_revokes_its_tokens() {
    let mut f = Fleet::new();
    assert_refusal(
        &f.refused(Command::DeleteUser(id("bob"))),
        ErrorCode::NotFound,
        None,
    );
    f.ok(user("bob", Role::Operator, None));
    f.ok(Command::CreateToken(token(2, "bob")));
    f.ok(Command::CreateToken(token(3, "bob")));
    assert!(f.state.token_by_hash(&token(2, "bob").hash).is_some());
    f.state.take_dirty();

    assert_eq!(f.ok(Command::DeleteUser(id("bob"))), Applied::Done);
    assert!(!f.state.users.contains_key(&id::<UserName>("bob")));
    for n in [2, 3] {
        assert!(!f.state.tokens.contains_key(&token_id(n)));
        assert!(f.state.token_by_hash(&token(n, "bob").hash).is_none());
    }
    assert!(
        f.state
            .token_by_hash(&token(ROOT_TOKEN, "root").hash)
            .is_some(),
        "others' tokens stay"
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([
            Key::User(id("bob")),
            Key::Token(token_id(2)),
            Key::Token(token_id(3)),
            Key::Audit(f.rev)
        ])
    );
}

#[test]
fn create_and_delete_tokens() {
    let mut f = Fleet::new();
    f.ok(user("bob", Role::Operator, None));
    f.state.take_dirty();
    assert_eq!(f.ok(Command::CreateToken(token(2, "bob"))), Applied::Done);
    assert_eq!(f.state.tokens[&token_id(2)], token(2, "bob"));
    assert_eq!(
        f.state.token_by_hash(&token(2, "bob").hash).map(|t| t.id),
        Some(token_id(2))
    );
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Token(token_id(2)), Key::Audit(f.rev)])
    );

    let same_id = TokenRecord {
        hash: hash_token("mf_fresh"),
        ..token(2, "bob")
    };
    assert_refusal(
        &f.refused(Command::CreateToken(same_id)),
        ErrorCode::AlreadyExists,
        None,
    );
    let same_hash = TokenRecord {
        id: token_id(9),
        ..token(2, "root")
    };
    assert_refusal(
        &f.refused(Command::CreateToken(same_hash)),
        ErrorCode::AlreadyExists,
        None,
    );
    let err = f.refused(Command::CreateToken(token(4, "nobody")));
    assert_refusal(&err, ErrorCode::InvalidField, Some("user"));

    assert_refusal(
        &f.refused(Command::DeleteToken(token_id(9))),
        ErrorCode::NotFound,
        None,
    );
    assert_eq!(f.ok(Command::DeleteToken(token_id(2))), Applied::Done);
    assert!(f.state.token_by_hash(&token(2, "bob").hash).is_none());
    assert!(!f.state.tokens.contains_key(&token_id(2)));
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Token(token_id(2)), Key::Audit(f.rev)])
    );
    // The id and hash are free again.
    f.ok(Command::CreateToken(token(2, "bob")));
}

// ---------------------------------------------------------------------------------------------
// Note and the audit trail
// ---------------------------------------------------------------------------------------------

#[test]
fn note_only_adds_an_audit_entry() {
    let mut f = Fleet::new();
    let before = f.state.clone();
    assert_eq!(f.ok(note("coordinator 3")), Applied::Done);
    let entry = f.state.audit.remove(&f.rev).unwrap();
    assert_eq!(
        (entry.action.as_str(), entry.target.as_str()),
        ("membership.add", "coordinator 3")
    );
    assert_eq!(f.state.take_dirty(), keys([Key::Audit(f.rev)]));
    assert_eq!(f.state, before);
}

#[test]
fn note_records_its_action() {
    let mut f = Fleet::new();
    f.ok(note("coordinator 3"));
    let entry = &f.state.audit[&f.rev];
    let text = format!("{} {} {}", entry.action, entry.target, entry.outcome);
    assert!(text.contains("membership.add"), "{entry:?}");
}

#[test]
fn audit_records_every_request_applied_or_refused() {
    let n1 = node_id(1).to_string();
    let steps: Vec<(Command, &str, String, String)> = vec![
        (
            init("root", token(1, "root")),
            "cluster.init",
            "lab".into(),
            "applied".into(),
        ),
        (site("ams1"), "site.put", "ams1".into(), "applied".into()),
        (
            Command::DeleteSite(id("nowhere")),
            "site.delete",
            "nowhere".into(),
            "refused: not_found: site nowhere does not exist".into(),
        ),
        (
            rack("r1", "ams1"),
            "rack.put",
            "r1".into(),
            "applied".into(),
        ),
        (
            rack("r2", "nowhere"),
            "rack.put",
            "r2".into(),
            "refused: invalid_field: site nowhere does not exist".into(),
        ),
        (
            Command::DeleteRack(id("r1")),
            "rack.delete",
            "r1".into(),
            "applied".into(),
        ),
        (
            rack("r1", "ams1"),
            "rack.put",
            "r1".into(),
            "applied".into(),
        ),
        (
            import([record("S1", "ams1", "r1")]),
            "inventory.import",
            "S1".into(),
            "applied".into(),
        ),
        (
            import([record("S2", "ams1", "r1"), record("S3", "ams1", "r1")]),
            "inventory.import",
            "2 records".into(),
            "applied".into(),
        ),
        (
            Command::DeleteInventory(serial("S3")),
            "inventory.delete",
            "S3".into(),
            "applied".into(),
        ),
        (
            register(1, "S1", None, &[1]),
            "node.register",
            "S1".into(),
            "applied".into(),
        ),
        (
            to_state(node_id(1), NodeState::Deployed),
            "node.patch",
            n1.clone(),
            format!("refused: invalid_transition: node {n1} cannot go from discovered to deployed"),
        ),
        (
            to_state(node_id(1), NodeState::Commissioning),
            "node.patch",
            n1,
            "applied".into(),
        ),
        (
            project("blue"),
            "project.put",
            "blue".into(),
            "applied".into(),
        ),
        (
            Command::DeleteProject(id("blue")),
            "project.delete",
            "blue".into(),
            "applied".into(),
        ),
        (
            user("bob", Role::Operator, None),
            "user.put",
            "bob".into(),
            "applied".into(),
        ),
        (
            Command::CreateToken(token(2, "bob")),
            "token.create",
            format!("{} (bob)", token_id(2)),
            "applied".into(),
        ),
        (
            Command::DeleteToken(token_id(2)),
            "token.delete",
            token_id(2).to_string(),
            "applied".into(),
        ),
        (
            Command::DeleteUser(id("bob")),
            "user.delete",
            "bob".into(),
            "applied".into(),
        ),
        (
            Command::DeleteUser(id("root")),
            "user.delete",
            "root".into(),
            "refused: conflict: root is the last admin".into(),
        ),
        (
            note("coordinator 3"),
            "membership.add",
            "coordinator 3".into(),
            "applied".into(),
        ),
    ];
    let mut state = State::default();
    let mut want = BTreeMap::new();
    for (i, (command, action, target, outcome)) in steps.into_iter().enumerate() {
        let revision = 10 + 2 * i as Revision; // revisions need not be contiguous
        let request = Request {
            actor: format!("user:u{i}"),
            at: T0 + i as UnixMillis,
            request_id: (i % 2 == 0).then(|| format!("req-{i}")),
            command,
        };
        let resp = state.apply(revision, &request);
        assert_eq!(
            resp.result.is_ok(),
            outcome == "applied",
            "step {i}: {resp:?}"
        );
        let entry = AuditEntry {
            revision,
            at: request.at,
            actor: request.actor,
            action: action.to_owned(),
            target,
            outcome,
            request_id: request.request_id,
        };
        assert_eq!(state.audit[&revision], entry, "step {i}");
        want.insert(revision, entry);
    }
    assert_eq!(state.audit, want);
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys
// ---------------------------------------------------------------------------------------------

#[test]
fn retried_request_is_answered_from_memory() {
    let mut f = Fleet::new();
    let request = req_with_id(import([record("S1", "ams1", "r1")]), "req-1", T0);
    let first = f.apply(&request);
    assert!(!first.replayed);
    assert_eq!(f.state.sessions["req-1"].revision, f.rev);
    assert_eq!(
        f.state.take_dirty(),
        keys([
            Key::Inventory(serial("S1")),
            Key::Audit(f.rev),
            Key::Session("req-1".into())
        ])
    );
    let audit = f.state.audit.clone();
    let inventory = f.state.inventory.clone();

    // Retried later (still within retention), at a later revision.
    let again = f.apply(&Request {
        at: T0 + 1000,
        ..request.clone()
    });
    assert!(again.replayed);
    assert_eq!(
        Response {
            replayed: false,
            ..again
        },
        first
    );
    assert_eq!(f.state.audit, audit, "a replay is not audited again");
    assert_eq!(f.state.inventory, inventory, "nor applied again");
    assert_eq!(f.state.inventory[&serial("S1")].generation, 1);
    assert!(f.state.take_dirty().is_empty());

    // A different key is a different request.
    let other = f.apply(&req_with_id(
        import([record("S1", "ams1", "r1")]),
        "req-2",
        T0,
    ));
    assert!(!other.replayed);
    assert_eq!(other.revision, f.rev);
    assert_eq!(f.state.audit[&f.rev].request_id.as_deref(), Some("req-2"));
}

#[test]
fn retried_refusal_is_replayed_too() {
    let mut f = Fleet::new();
    let request = req_with_id(Command::DeleteSite(id("nowhere")), "req-1", T0);
    let first = f.apply(&request);
    assert_refusal(
        first.result.as_ref().unwrap_err(),
        ErrorCode::NotFound,
        None,
    );
    assert_eq!(f.state.audit[&f.rev].request_id.as_deref(), Some("req-1"));
    // Even if the retry would now succeed, the remembered answer is returned.
    f.ok(site("nowhere"));
    let again = f.apply(&request);
    assert_eq!(
        again,
        Response {
            replayed: true,
            ..first
        }
    );
    assert!(f.state.sites.contains_key(&id::<SiteId>("nowhere")));
}

#[test]
fn sessions_expire_after_retention() {
    let mut f = Fleet::new();
    let request = req_with_id(note("first"), "req-1", T0);
    f.apply(&request);
    let first_rev = f.rev;
    f.state.take_dirty();

    // Exactly at the retention boundary the session is still remembered.
    let at_edge = Request {
        at: T0 + SESSION_RETENTION_MS,
        ..req(note("tick"))
    };
    f.apply(&at_edge);
    assert!(f.state.sessions.contains_key("req-1"));
    assert!(
        f.apply(&Request {
            at: at_edge.at,
            ..request.clone()
        })
        .replayed
    );
    f.state.take_dirty();

    // One millisecond later any request evicts it, and marks it for deletion.
    f.apply(&Request {
        at: T0 + SESSION_RETENTION_MS + 1,
        ..req(note("tick"))
    });
    assert!(f.state.sessions.is_empty());
    assert_eq!(
        f.state.take_dirty(),
        keys([Key::Session("req-1".into()), Key::Audit(f.rev)])
    );

    // A retry after expiry is applied again.
    let retry = f.apply(&Request {
        at: T0 + SESSION_RETENTION_MS + 2,
        ..request
    });
    assert!(!retry.replayed);
    assert_eq!(retry.revision, f.rev);
    let with_key: Vec<Revision> = f
        .state
        .audit
        .values()
        .filter(|e| e.request_id.as_deref() == Some("req-1"))
        .map(|e| e.revision)
        .collect();
    assert_eq!(with_key, vec![first_rev, f.rev]);
    assert_eq!(f.state.sessions["req-1"].at, T0 + SESSION_RETENTION_MS + 2);
}

#[test]
fn sessions_expire_oldest_first() {
    let mut f = Fleet::new();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        f.apply(&req_with_id(note(key), key, T0 + 10 * i as UnixMillis));
    }
    f.state.take_dirty();
    f.apply(&Request {
        at: T0 + SESSION_RETENTION_MS + 15,
        ..req(note("tick"))
    });
    assert_eq!(f.state.sessions.keys().collect::<Vec<_>>(), vec!["c"]);
    assert_eq!(
        f.state.take_dirty(),
        keys([
            Key::Session("a".into()),
            Key::Session("b".into()),
            Key::Audit(f.rev)
        ])
    );
    // The derived expiry index agrees with a rebuilt one.
    let mut rebuilt = f.state.clone();
    rebuilt.rebuild_indexes();
    assert_eq!(rebuilt, f.state);
}

// ---------------------------------------------------------------------------------------------
// Persistence helpers
// ---------------------------------------------------------------------------------------------

/// A state touched by every command that does not create a node (nodes cannot be decoded
/// yet, see `node_round_trips_through_the_object_store`), including deletions, sessions
/// (one with a `/` in its key) and refusals.
fn populated() -> State {
    let key = SealingKey::generate();
    let mut f = Fleet::new();
    f.ok(import([
        full_record("S1", &key, "pw"),
        record("S2", "fra1", "f1"),
    ]));
    f.ok(import([record("S3", "ams1", "r2")]));
    f.ok(Command::DeleteInventory(serial("S3")));
    f.ok(user("bob", Role::Operator, None));
    f.ok(user("carol", Role::ProjectMember, Some("blue")));
    f.ok(user("dave", Role::ReadOnly, None));
    f.ok(Command::CreateToken(token(2, "bob")));
    f.ok(Command::CreateToken(token(3, "dave")));
    f.ok(Command::CreateToken(token(4, "carol")));
    f.ok(Command::DeleteToken(token_id(4)));
    f.ok(Command::DeleteUser(id("dave")));
    f.ok(project("red"));
    f.ok(Command::DeleteProject(id("red")));
    f.ok(site("par1"));
    f.ok(Command::DeleteSite(id("par1")));
    f.refused(Command::DeleteRack(id("r1")));
    f.apply(&req_with_id(note("coordinator 3"), "ops/42", T0 + 5));
    f.apply(&req_with_id(
        Command::DeleteSite(id("ams1")),
        "retry-me",
        T0 + 6,
    ));
    f.apply(&req_with_id(
        import([record("S4", "ams1", "r1")]),
        "imp",
        T0 + 7,
    ));
    f.state
}

/// `populated` plus nodes in several shapes.
fn populated_with_nodes() -> State {
    let mut f = Fleet {
        rev: 1000,
        state: populated(),
    };
    let n = f.node(1, "r1");
    f.ok(facts(n, json!({"cpus": 8, "disks": [{"size": 10}]})));
    f.ok(set_project(n, Some("blue")));
    f.ok(patch(
        n,
        NodePatch {
            boot_target: Some(BootTarget::Local),
            ..NodePatch::default()
        },
    ));
    f.node(2, "f1");
    f.apply(&req_with_id(register(3, "S3", None, &[3]), "reg-3", T0 + 8));
    f.state
}

/// Writes every object the way the storage layer does and loads them into a fresh state.
fn reload_objects(state: &State) -> State {
    let mut fresh = State::default();
    for key in state.all_keys() {
        let bytes = state
            .encode_object(&key)
            .unwrap()
            .expect("all_keys names present objects");
        fresh
            .load_object(&State::storage_key(&key), &bytes)
            .unwrap();
    }
    fresh.rebuild_indexes();
    fresh
}

/// The state as it is after `take_dirty` (which the comparison includes).
fn settled(mut state: State) -> State {
    state.take_dirty();
    state
}

#[test]
fn incrementally_kept_indexes_equal_rebuilt_ones() {
    let original = settled(populated());
    let mut rebuilt = original.clone();
    rebuilt.rebuild_indexes();
    assert_eq!(rebuilt, original);
}

#[test]
fn every_object_round_trips_through_the_object_store() {
    let original = settled(populated());
    assert!(!original.sessions.is_empty() && !original.inventory.is_empty());
    let back = reload_objects(&original);
    assert_eq!(back, original);
    assert!(back.token_by_hash(&token(2, "bob").hash).is_some());
    assert!(back.sessions.contains_key("ops/42"));
}

#[test]
fn node_round_trips_through_the_object_store() {
    let original = settled(populated_with_nodes());
    for key in original.all_keys() {
        let bytes = original.encode_object(&key).unwrap().unwrap();
        let mut fresh = State::default();
        fresh
            .load_object(&State::storage_key(&key), &bytes)
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }
    assert_eq!(reload_objects(&original), original);
}

#[test]
fn dirty_keys_keep_a_store_in_step_with_the_state() {
    // What the state machine does after each apply: write present objects, delete absent
    // ones. If a command forgot to mark something dirty, the store would drift.
    let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut f = Fleet::empty();
    let mut flush = |state: &mut State| {
        for key in state.take_dirty() {
            let name = State::storage_key(&key);
            match state.encode_object(&key).unwrap() {
                Some(bytes) => store.insert(name, bytes),
                None => store.remove(&name),
            };
        }
        let mut loaded = State::default();
        for (k, v) in &store {
            loaded.load_object(k, v).unwrap();
        }
        loaded.rebuild_indexes();
        assert_eq!(&loaded, state);
    };
    let key = SealingKey::generate();
    let script = vec![
        req(init("root", token(1, "root"))),
        req(site("ams1")),
        req(site("fra1")),
        req(rack("r1", "ams1")),
        req(rack("f1", "fra1")),
        req(import([
            full_record("S1", &key, "pw"),
            record("S2", "ams1", "r1"),
        ])),
        req(import([full_record("S1", &key, "pw2")])),
        req(Command::DeleteInventory(serial("S2"))),
        req(project("blue")),
        req(user("bob", Role::ProjectMember, Some("blue"))),
        req(Command::CreateToken(token(2, "bob"))),
        req(Command::CreateToken(token(3, "bob"))),
        req(Command::DeleteToken(token_id(3))),
        req_with_id(Command::DeleteUser(id("bob")), "del-bob", T0),
        req(Command::DeleteProject(id("blue"))),
        req(Command::DeleteRack(id("f1"))),
        req(Command::DeleteSite(id("fra1"))),
        req_with_id(Command::DeleteSite(id("nowhere")), "refused", T0 + 1),
        Request {
            at: T0 + SESSION_RETENTION_MS + 2,
            ..req(note("expire"))
        },
    ];
    for request in &script {
        f.apply(request);
        flush(&mut f.state);
    }
    assert!(
        f.state.sessions.is_empty(),
        "the last request expired both sessions"
    );
    assert!(store.keys().all(|k| !k.starts_with("session/")));
    assert!(store.contains_key("inventory/S1") && !store.contains_key("inventory/S2"));
}

#[test]
fn storage_keys() {
    let cases = [
        (Key::Cluster, "cluster/".to_owned()),
        (Key::Site(id("ams1")), "site/ams1".to_owned()),
        (Key::Rack(id("r1")), "rack/r1".to_owned()),
        (Key::Inventory(serial("S1")), "inventory/S1".to_owned()),
        (
            Key::Node(node_id(1)),
            format!("node/{}", Uuid::from_u128(1)),
        ),
        (Key::Project(id("blue")), "project/blue".to_owned()),
        (Key::User(id("bob")), "user/bob".to_owned()),
        (
            Key::Token(token_id(2)),
            format!("token/{}", Uuid::from_u128(2)),
        ),
        (Key::Audit(42), "audit/00000000000000000042".to_owned()),
        (Key::Session("ops/42".into()), "session/ops/42".to_owned()),
    ];
    for (key, want) in cases {
        assert_eq!(State::storage_key(&key), want);
    }
    // Audit keys sort numerically as strings.
    assert!(State::storage_key(&Key::Audit(9)) < State::storage_key(&Key::Audit(10)));
    assert!(State::storage_key(&Key::Audit(u64::MAX)).ends_with("18446744073709551615"));
}

#[test]
fn encode_object_of_an_absent_object_is_none_and_bad_input_is_refused() {
    let state = settled(populated());
    for key in [
        Key::Site(id("par1")),
        Key::Node(node_id(1)),
        Key::Token(token_id(4)),
        Key::Audit(999_999),
        Key::Session("nope".into()),
    ] {
        assert_eq!(state.encode_object(&key).unwrap(), None, "{key:?}");
    }
    assert!(State::default()
        .encode_object(&Key::Cluster)
        .unwrap()
        .is_none());

    let mut fresh = State::default();
    assert!(fresh.load_object("nokind", b"").is_err());
    let err = fresh.load_object("widget/1", b"").unwrap_err();
    assert!(err.contains("widget"), "{err}");
    let err = fresh.load_object("site/ams1", &[0xff, 0xff]).unwrap_err();
    assert!(err.starts_with("site/ams1"), "{err}");
    assert_eq!(fresh, State::default());
}

#[test]
fn all_keys_lists_every_object_once() {
    let state = populated();
    let all = state.all_keys();
    let unique: BTreeSet<Key> = all.iter().cloned().collect();
    assert_eq!(unique.len(), all.len());
    let count = 1
        + state.sites.len()
        + state.racks.len()
        + state.inventory.len()
        + state.nodes.len()
        + state.projects.len()
        + state.users.len()
        + state.tokens.len()
        + state.audit.len()
        + state.sessions.len();
    assert_eq!(all.len(), count);
    assert!(all.contains(&Key::Cluster) && all.contains(&Key::Session("ops/42".into())));
    assert!(State::default().all_keys().is_empty());
}

#[test]
fn whole_state_postcard_image_round_trips() {
    let original = settled(populated());
    let bytes = postcard::to_stdvec(&original).unwrap();
    let mut back: State = postcard::from_bytes(&bytes).unwrap();
    // Derived indexes are not in the image...
    assert!(back
        .token_by_hash(&token(ROOT_TOKEN, "root").hash)
        .is_none());
    // ...until rebuilt.
    back.rebuild_indexes();
    assert_eq!(back, original);
}

#[test]
fn whole_state_postcard_image_with_nodes_round_trips() {
    let original = settled(populated_with_nodes());
    let bytes = postcard::to_stdvec(&original).unwrap();
    let mut back: State = postcard::from_bytes(&bytes).unwrap();
    back.rebuild_indexes();
    assert_eq!(back, original);
}

#[track_caller]
fn assert_postcard_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let bytes = postcard::to_stdvec(value).unwrap();
    let back: T = postcard::from_bytes(&bytes).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    assert_eq!(&back, value);
}

/// One request per command variant (none carrying a `BootTarget`), in an order where most
/// apply and some are refused.
fn one_of_each_command() -> Vec<Command> {
    let key = SealingKey::generate();
    vec![
        init("root", token(1, "root")),
        site("ams1"),
        rack("r1", "ams1"),
        import([full_record("S1", &key, "pw"), record("S2", "ams1", "r1")]),
        register(1, "S1", None, &[1, 2]),
        patch(
            node_id(1),
            NodePatch {
                state: Some(NodeState::Commissioning),
                boot_target: None,
                project: Some(None),
                tags: Some(tags(&["a"])),
                facts: Some(JsonValue(json!({"cpus": 2}))),
            },
        ),
        project("blue"),
        set_project(node_id(1), Some("blue")),
        user("carol", Role::ProjectMember, Some("blue")),
        Command::CreateToken(token(2, "carol")),
        note("coordinator 3"),
        Command::DeleteToken(token_id(2)),
        Command::DeleteUser(id("carol")),
        Command::DeleteProject(id("blue")),
        Command::DeleteInventory(serial("S1")),
        Command::DeleteRack(id("r1")),
        Command::DeleteSite(id("ams1")),
    ]
}

#[test]
fn requests_and_responses_round_trip_through_postcard() {
    for command in one_of_each_command() {
        assert_postcard_round_trip(&req_with_id(command, "req-1", T0));
    }
    assert_postcard_round_trip(&req(note("x")));
    let report = ImportReport {
        created: vec![serial("A")],
        updated: vec![(serial("B"), vec!["bmc".to_owned()])],
        unchanged: vec![serial("C")],
        dry_run: true,
    };
    for result in [
        Ok(Applied::Done),
        Ok(Applied::Import(report)),
        Err(ErrorBody::new(ErrorCode::NotFound, "gone")),
        Err(ErrorBody::new(ErrorCode::InvalidField, "bad").with_field("[1].rack")),
    ] {
        assert_postcard_round_trip(&Response {
            revision: 7,
            result,
            replayed: false,
        });
    }
}

#[test]
fn node_requests_and_responses_round_trip_through_postcard() {
    let (mut f, n) = Fleet::with_node_in(NodeState::Ready);
    let command = patch(
        n,
        NodePatch {
            boot_target: Some(BootTarget::Local),
            ..NodePatch::default()
        },
    );
    let response = f.run(command.clone());
    assert_postcard_round_trip(&req(command));
    assert_postcard_round_trip(&response);
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

#[test]
fn same_requests_give_same_state_on_every_replica() {
    let mut script: Vec<Request> = one_of_each_command()
        .into_iter()
        .enumerate()
        .map(|(i, command)| Request {
            actor: format!("user:u{i}"),
            at: T0 + i as UnixMillis,
            request_id: (i % 3 == 0).then(|| format!("req-{i}")),
            command,
        })
        .collect();
    // Replay some, then let time pass so sessions expire.
    script.push(script[0].clone());
    script.push(script[3].clone());
    script.push(Request {
        at: T0 + SESSION_RETENTION_MS + 4,
        ..req(note("later"))
    });
    script.push(Request {
        at: T0 + SESSION_RETENTION_MS + 5,
        ..script[6].clone()
    });

    let run = || {
        let mut state = State::default();
        let responses: Vec<Response> = script
            .iter()
            .zip(1..)
            .map(|(r, rev)| state.apply(rev, r))
            .collect();
        (state, responses)
    };
    let (a, ra) = run();
    let (b, rb) = run();
    assert_eq!(ra, rb);
    assert_eq!(a, b);
    assert!(
        ra.iter().any(|r| r.replayed),
        "the script exercises replays"
    );
    assert!(ra.iter().any(|r| r.result.is_err()), "and refusals");
    assert!(!a.nodes.is_empty() && !a.users.is_empty());
}
