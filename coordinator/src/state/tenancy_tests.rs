//! Unit tests of tenancy in `State::apply`: allocation, networks and VLANs, attachments and
//! their jobs, power, moves, elastic leases and RBAC scoping, all without Raft. Agent reports
//! go through `Command::AgentEvents` of an enrolled rack, as the fleet link delivers them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;
use std::str::FromStr;

use protocol::domain::{
    BootTarget, EnrollToken, ExpectedNic, InventoryRecord, Project, Rack, Role, Site, UnixMillis,
};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{Event, EventKind, PortConfig};
use protocol::json::JsonValue;
use protocol::tenancy::{
    AttachMode, AttachSpec, JobId, JobKind, JobState, LeaseState, LeaseWindow, NetworkKind,
    StepState, TransferPhase,
};
use protocol::{NodeId, ProjectId, RackId, Revision};
use serde_json::json;
use uuid::Uuid;

use super::tenancy::{Caller, TenancyCommand as T};
use super::{Applied, Command, ImportItem, NodePatch, Request, Response, State};

const T0: UnixMillis = 1_700_000_000_000;
const HOUR: UnixMillis = 3_600_000;
const POOL: (u16, u16) = (100, 199);

fn id<T: FromStr>(s: &str) -> T
where
    T::Err: Debug,
{
    s.parse().unwrap()
}

fn node_id(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

fn fleet() -> Caller {
    Caller {
        role: Role::Admin,
        project: None,
    }
}

fn member(project: &str) -> Caller {
    Caller {
        role: Role::ProjectMember,
        project: Some(id(project)),
    }
}

fn read_only() -> Caller {
    Caller {
        role: Role::ReadOnly,
        project: None,
    }
}

fn spec(nic: &str, network: &str, mode: AttachMode) -> AttachSpec {
    AttachSpec {
        nic: nic.into(),
        network: id(network),
        mode,
    }
}

#[track_caller]
fn assert_refusal(err: &ErrorBody, code: ErrorCode, field: &str) {
    assert_eq!(err.code, code, "{err}");
    assert_eq!(err.field.as_deref(), Some(field), "{err}");
}

/// A state with site `ams1`, racks `r1` (agent enrolled) and `r2`, projects `a`, `b`, `c`,
/// nodes 1..=3 in `r1` with inventory NICs `eno1`/`eno2` on switch `tor1` ports
/// `p<n>1`/`p<n>2`, node 4 in `r1` without inventory (LLDP facts only).
struct Lab {
    state: State,
    rev: Revision,
    seq: u64,
    now: UnixMillis,
}

impl Lab {
    fn new() -> Lab {
        let mut lab = Lab {
            state: State::default(),
            rev: 0,
            seq: 0,
            now: T0,
        };
        lab.ok(Command::PutSite(Site {
            name: id("ams1"),
            description: String::new(),
        }));
        for r in ["r1", "r2"] {
            lab.ok(Command::PutRack(Rack {
                name: id(r),
                site: id("ams1"),
                description: String::new(),
            }));
        }
        for p in ["a", "b", "c"] {
            lab.ok(Command::PutProject(Project {
                name: id(p),
                description: String::new(),
            }));
        }
        let records = (1..=3u8)
            .map(|n| ImportItem {
                record: InventoryRecord {
                    serial: id(&format!("S{n}")),
                    site: id("ams1"),
                    rack: id("r1"),
                    u_position: None,
                    model: None,
                    nics: ["eno1", "eno2"]
                        .iter()
                        .enumerate()
                        .map(|(i, name)| ExpectedNic {
                            name: (*name).into(),
                            mac: None,
                            switch: Some("tor1".into()),
                            port: Some(format!("p{n}{}", i + 1)),
                        })
                        .collect(),
                    bmc: None,
                    static_ips: Vec::new(),
                    tags: Default::default(),
                    revision: 0,
                    generation: 0,
                },
            })
            .collect();
        lab.ok(Command::ImportInventory(records));
        for n in 1..=4u8 {
            lab.ok(Command::RegisterNode {
                id: node_id(n.into()),
                serial: id(&format!("S{n}")),
                rack: Some(id("r1")),
                macs: Vec::new(),
            });
        }
        lab.ok(Command::PatchNode {
            id: node_id(4),
            patch: NodePatch {
                facts: Some(JsonValue(json!({"lldp": [
                    {"interface": "eth0", "switch": "tor1", "chassis_id": "aa", "port": "p41", "port_description": null},
                    {"interface": "eth9", "switch": null, "port": null}
                ]}))),
                ..NodePatch::default()
            },
        });
        lab.ok(Command::CreateEnrollToken(EnrollToken {
            rack: id("r1"),
            hash: "h".into(),
            expires_at: T0 + HOUR,
            used_at: None,
        }));
        lab.ok(Command::Enroll {
            rack: id("r1"),
            token_hash: "h".into(),
            fingerprint: "fp".into(),
            not_after: T0 + 1000 * HOUR,
        });
        lab
    }

    fn apply(&mut self, command: Command) -> Response {
        self.rev += 1;
        self.state.apply(
            self.rev,
            &Request {
                actor: "user:tester".into(),
                at: self.now,
                request_id: None,
                command,
            },
        )
    }

    #[track_caller]
    fn ok(&mut self, command: Command) -> Applied {
        match self.apply(command).result {
            Ok(a) => a,
            Err(e) => panic!("expected success, got {e}"),
        }
    }

    /// A tenancy command that must succeed; returns its revision (the job or lease id).
    #[track_caller]
    fn t(&mut self, cmd: T) -> Revision {
        self.ok(Command::Tenancy(cmd));
        self.rev
    }

    /// A tenancy command that must be refused without changing anything but the audit trail.
    #[track_caller]
    fn refused(&mut self, cmd: T) -> ErrorBody {
        let before = self.state.tenancy.clone();
        let nodes = self.state.nodes.clone();
        let resp = self.apply(Command::Tenancy(cmd));
        let err = resp.result.expect_err("expected a refusal");
        assert_eq!(
            self.state.tenancy, before,
            "a refusal changed tenancy state"
        );
        assert_eq!(self.state.nodes, nodes, "a refusal changed nodes");
        let audit = &self.state.audit[&self.rev];
        assert!(audit.outcome.starts_with("refused"), "{audit:?}");
        err
    }

    fn event(&mut self, rack: &str, kind: EventKind) {
        self.seq += 1;
        let e = Event {
            seq: self.seq,
            at: self.now,
            kind,
        };
        self.ok(Command::AgentEvents {
            rack: id(rack),
            events: vec![e],
        });
    }

    fn port_ok(&mut self, port: &str, generation: u64) {
        let config = self.port_intent(port).config.clone();
        self.event(
            "r1",
            EventKind::PortApplied {
                switch: "tor1".into(),
                port: port.into(),
                generation,
                ok: true,
                observed: Some(config),
                message: String::new(),
            },
        );
    }

    fn power_ok(&mut self, node: u128, generation: u64) {
        self.event(
            "r1",
            EventKind::PowerApplied {
                node: node_id(node),
                generation,
                ok: true,
                message: String::new(),
            },
        );
    }

    fn allocate(&mut self, node: u128, project: &str) {
        self.t(T::AllocateNode {
            caller: fleet(),
            node: node_id(node),
            project: id(project),
        });
    }

    fn network(&mut self, name: &str, owner: &str) -> u16 {
        self.t(T::CreateNetwork {
            caller: fleet(),
            name: id(name),
            kind: NetworkKind::Tenant,
            owner: Some(id(owner)),
            vlan: None,
            pool: POOL,
        });
        self.state.tenancy.networks[&id(name)].vlan
    }

    fn infra(&mut self, name: &str, kind: NetworkKind, vlan: u16) {
        self.t(T::CreateNetwork {
            caller: fleet(),
            name: id(name),
            kind,
            owner: None,
            vlan: Some(vlan),
            pool: POOL,
        });
    }

    fn attach(&mut self, caller: Caller, node: u128, s: AttachSpec) -> JobId {
        self.t(T::Attach {
            caller,
            node: node_id(node),
            spec: s,
        })
    }

    fn job(&self, id: JobId) -> &protocol::tenancy::Job {
        &self.state.tenancy.jobs[&id]
    }

    fn port_intent(&self, port: &str) -> &protocol::tenancy::SwitchPort {
        &self.state.tenancy.ports[&(id::<RackId>("r1"), "tor1".to_owned(), port.to_owned())]
    }

    fn project_of(&self, node: u128) -> Option<ProjectId> {
        self.state.nodes[&node_id(node)].project.clone()
    }

    /// Attaches `eno1` of `node` to `net` and lets the agent confirm it.
    fn attached(&mut self, node: u128, net: &str) -> JobId {
        let job = self.attach(fleet(), node, spec("eno1", net, AttachMode::Access));
        self.port_ok(&format!("p{node}1"), job);
        assert_eq!(self.job(job).state, JobState::Done);
        job
    }

    /// Reloads the state from its stored objects, as a restarted coordinator would.
    fn restart(&mut self) {
        let mut fresh = State::default();
        for key in self.state.all_keys() {
            let bytes = self.state.encode_object(&key).unwrap().expect("present");
            fresh
                .load_object(&State::storage_key(&key), &bytes)
                .unwrap();
        }
        fresh.rebuild_indexes();
        self.state.take_dirty();
        assert_eq!(fresh, self.state, "stored objects do not rebuild the state");
        self.state = fresh;
    }
}

#[test]
fn allocate_and_free_follow_the_pool_rules() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    assert_eq!(lab.project_of(1), Some(id("a")));
    let e = lab.refused(T::AllocateNode {
        caller: fleet(),
        node: node_id(1),
        project: id("b"),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
    // A member of another project does not learn that the node exists.
    let e = lab.refused(T::AllocateNode {
        caller: member("b"),
        node: node_id(1),
        project: id("b"),
    });
    assert_refusal(&e, ErrorCode::NotFound, "node");
    let e = lab.refused(T::AllocateNode {
        caller: member("b"),
        node: node_id(2),
        project: id("a"),
    });
    assert_refusal(&e, ErrorCode::Forbidden, "project");
    let e = lab.refused(T::AllocateNode {
        caller: fleet(),
        node: node_id(2),
        project: id("nope"),
    });
    assert_refusal(&e, ErrorCode::NotFound, "project");
    lab.t(T::AllocateNode {
        caller: member("b"),
        node: node_id(2),
        project: id("b"),
    });

    // Free is refused while a NIC is attached, and allowed once it is detached.
    lab.network("net-a", "a");
    lab.attached(1, "net-a");
    let e = lab.refused(T::FreeNode {
        caller: member("a"),
        node: node_id(1),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
    assert!(e.message.contains("eno1"), "{e}");
    let e = lab.refused(T::FreeNode {
        caller: member("b"),
        node: node_id(1),
    });
    assert_refusal(&e, ErrorCode::NotFound, "node");
    let job = lab.t(T::Detach {
        caller: member("a"),
        node: node_id(1),
        nic: "eno1".into(),
        network: id("net-a"),
    });
    // Still attached in the records only until... no: the attachment is gone at once, the
    // job waits for the switch; free waits for the job too.
    let e = lab.refused(T::FreeNode {
        caller: member("a"),
        node: node_id(1),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
    lab.port_ok("p11", job);
    lab.t(T::FreeNode {
        caller: member("a"),
        node: node_id(1),
    });
    assert_eq!(lab.project_of(1), None);
    let e = lab.refused(T::FreeNode {
        caller: fleet(),
        node: node_id(1),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
}

#[test]
fn read_only_and_projectless_members_change_nothing() {
    let mut lab = Lab::new();
    let e = lab.refused(T::AllocateNode {
        caller: read_only(),
        node: node_id(1),
        project: id("a"),
    });
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = lab.refused(T::Power {
        caller: Caller {
            role: Role::ProjectMember,
            project: None,
        },
        node: node_id(1),
        on: true,
    });
    assert_eq!(e.code, ErrorCode::Forbidden);
}

#[test]
fn vlans_come_from_the_pool_are_unique_and_return_on_delete() {
    let mut lab = Lab::new();
    lab.infra("prov", NetworkKind::Provisioning, 100);
    // The tenant pool skips the provisioning VLAN: a tenant network never gets it.
    assert_eq!(lab.network("n1", "a"), 101);
    assert_eq!(lab.network("n2", "b"), 102);
    lab.t(T::DeleteNetwork {
        caller: member("a"),
        name: id("n1"),
    });
    assert_eq!(lab.network("n3", "c"), 101);

    let e = lab.refused(T::CreateNetwork {
        caller: fleet(),
        name: id("n3"),
        kind: NetworkKind::Tenant,
        owner: Some(id("a")),
        vlan: None,
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::AlreadyExists, "name");
    let e = lab.refused(T::CreateNetwork {
        caller: fleet(),
        name: id("x"),
        kind: NetworkKind::Tenant,
        owner: Some(id("a")),
        vlan: Some(150),
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::InvalidField, "vlan");
    let e = lab.refused(T::CreateNetwork {
        caller: fleet(),
        name: id("x"),
        kind: NetworkKind::Tenant,
        owner: None,
        vlan: None,
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::InvalidField, "owner");
    let e = lab.refused(T::CreateNetwork {
        caller: fleet(),
        name: id("x"),
        kind: NetworkKind::Bmc,
        owner: None,
        vlan: Some(101),
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::Conflict, "vlan");
    let e = lab.refused(T::CreateNetwork {
        caller: fleet(),
        name: id("x"),
        kind: NetworkKind::Bmc,
        owner: None,
        vlan: Some(4095),
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::InvalidField, "vlan");
    let e = lab.refused(T::CreateNetwork {
        caller: member("a"),
        name: id("x"),
        kind: NetworkKind::Provisioning,
        owner: None,
        vlan: None,
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::Forbidden, "kind");
    let e = lab.refused(T::CreateNetwork {
        caller: member("a"),
        name: id("x"),
        kind: NetworkKind::Tenant,
        owner: Some(id("b")),
        vlan: None,
        pool: POOL,
    });
    assert_refusal(&e, ErrorCode::Forbidden, "owner");
    let e = lab.refused(T::CreateNetwork {
        caller: fleet(),
        name: id("x"),
        kind: NetworkKind::Tenant,
        owner: Some(id("a")),
        vlan: None,
        pool: (100, 102),
    });
    assert_refusal(&e, ErrorCode::Conflict, "vlan");
    // A member of another project cannot see, let alone delete, a network.
    let e = lab.refused(T::DeleteNetwork {
        caller: member("a"),
        name: id("n2"),
    });
    assert_refusal(&e, ErrorCode::NotFound, "network");
}

#[test]
fn networks_in_use_cannot_be_deleted_or_access_revoked() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.allocate(2, "b");
    lab.network("net-a", "a");
    // b has no access yet.
    let e = lab.refused(T::Attach {
        caller: member("b"),
        node: node_id(2),
        spec: spec("eno1", "net-a", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::NotFound, "network");
    let e = lab.refused(T::Attach {
        caller: fleet(),
        node: node_id(2),
        spec: spec("eno1", "net-a", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::Forbidden, "network");
    let e = lab.refused(T::GrantAccess {
        caller: member("b"),
        network: id("net-a"),
        project: id("b"),
    });
    assert_refusal(&e, ErrorCode::NotFound, "network");
    lab.t(T::GrantAccess {
        caller: member("a"),
        network: id("net-a"),
        project: id("b"),
    });
    let e = lab.refused(T::GrantAccess {
        caller: member("b"),
        network: id("net-a"),
        project: id("c"),
    });
    assert_refusal(&e, ErrorCode::Forbidden, "network");
    lab.attached(2, "net-a");
    let e = lab.refused(T::RevokeAccess {
        caller: member("a"),
        network: id("net-a"),
        project: id("b"),
    });
    assert_refusal(&e, ErrorCode::Conflict, "project");
    let e = lab.refused(T::DeleteNetwork {
        caller: member("a"),
        name: id("net-a"),
    });
    assert_refusal(&e, ErrorCode::Conflict, "name");
    let job = lab.t(T::Revert {
        caller: member("b"),
        node: node_id(2),
        nic: "eno1".into(),
    });
    assert_eq!(lab.port_intent("p21").config, PortConfig::Unconfigured);
    lab.port_ok("p21", job);
    lab.t(T::RevokeAccess {
        caller: member("a"),
        network: id("net-a"),
        project: id("b"),
    });
    let e = lab.refused(T::RevokeAccess {
        caller: member("a"),
        network: id("net-a"),
        project: id("b"),
    });
    assert_refusal(&e, ErrorCode::NotFound, "project");
    lab.t(T::DeleteNetwork {
        caller: member("a"),
        name: id("net-a"),
    });
}

#[test]
fn attach_is_a_job_that_completes_on_the_agents_report() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    let vlan = lab.network("net-a", "a");
    let job = lab.attach(member("a"), 1, spec("eno1", "net-a", AttachMode::Access));
    assert_eq!(job, lab.rev);
    let j = lab.job(job).clone();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.ports.len(), 1);
    assert_eq!(j.ports[0].config, PortConfig::Access { vlan });
    assert!(j.projects.contains(&id::<ProjectId>("a")));
    assert_eq!(j.actor, "user:tester");
    // The intent is in the rack's desired state with the job's generation.
    let intents = lab.state.port_intents(&id("r1"));
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].generation, job);
    assert_eq!(lab.state.rack_changed(&id("r1")), job);

    // One pending action per NIC.
    let e = lab.refused(T::Detach {
        caller: member("a"),
        node: node_id(1),
        nic: "eno1".into(),
        network: id("net-a"),
    });
    assert_refusal(&e, ErrorCode::Conflict, "nic");
    // The other NIC is free to change.
    let other = lab.attach(member("a"), 1, spec("eno2", "net-a", AttachMode::Trunk));

    // A report of an older generation, or from another rack, changes nothing.
    lab.port_ok("p11", job - 1);
    assert_eq!(lab.job(job).state, JobState::Running);
    lab.ok(Command::CreateEnrollToken(EnrollToken {
        rack: id("r2"),
        hash: "h2".into(),
        expires_at: T0 + HOUR,
        used_at: None,
    }));
    lab.ok(Command::Enroll {
        rack: id("r2"),
        token_hash: "h2".into(),
        fingerprint: "fp2".into(),
        not_after: T0 + HOUR,
    });
    let seq = lab.seq;
    lab.seq = 0;
    lab.event(
        "r2",
        EventKind::PortApplied {
            switch: "tor1".into(),
            port: "p11".into(),
            generation: job,
            ok: true,
            observed: None,
            message: String::new(),
        },
    );
    lab.seq = seq;
    assert_eq!(lab.job(job).state, JobState::Running);

    lab.port_ok("p11", job);
    let j = lab.job(job);
    assert_eq!(j.state, JobState::Done);
    assert_eq!(j.ports[0].state, StepState::Done);
    assert_eq!(j.ports[0].observed, Some(PortConfig::Access { vlan }));
    assert_eq!(lab.port_intent("p11").job, None);
    assert_eq!(lab.port_intent("p11").applied_ok, Some(true));

    // A failure carries the agent's message into the job.
    lab.event(
        "r1",
        EventKind::PortApplied {
            switch: "tor1".into(),
            port: "p12".into(),
            generation: other,
            ok: false,
            observed: None,
            message: "switch tor1: port p12 rejected vlan".into(),
        },
    );
    let j = lab.job(other);
    assert_eq!(j.state, JobState::Failed);
    assert!(
        j.error
            .as_deref()
            .unwrap()
            .contains("port p12 rejected vlan"),
        "{j:?}"
    );
    assert_eq!(lab.port_intent("p12").job, None);
    lab.restart();
}

#[test]
fn trunks_carry_tagged_vlans_and_one_native() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    let v1 = lab.network("n1", "a");
    let v2 = lab.network("n2", "a");
    let v3 = lab.network("n3", "a");
    let j = lab.attached(1, "n1");
    let _ = j;
    let e = lab.refused(T::Attach {
        caller: member("a"),
        node: node_id(1),
        spec: spec("eno1", "n2", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::Conflict, "mode");
    let e = lab.refused(T::Attach {
        caller: member("a"),
        node: node_id(1),
        spec: spec("eno1", "n1", AttachMode::Trunk),
    });
    assert_refusal(&e, ErrorCode::AlreadyExists, "network");
    let j2 = lab.attach(member("a"), 1, spec("eno1", "n3", AttachMode::Trunk));
    lab.port_ok("p11", j2);
    let j3 = lab.attach(member("a"), 1, spec("eno1", "n2", AttachMode::Trunk));
    assert_eq!(
        lab.port_intent("p11").config,
        PortConfig::Trunk {
            native: Some(v1),
            allowed: vec![v1, v2, v3]
        }
    );
    lab.port_ok("p11", j3);
    let j4 = lab.t(T::Detach {
        caller: member("a"),
        node: node_id(1),
        nic: "eno1".into(),
        network: id("n1"),
    });
    assert_eq!(
        lab.port_intent("p11").config,
        PortConfig::Trunk {
            native: None,
            allowed: vec![v2, v3]
        }
    );
    lab.port_ok("p11", j4);
    let e = lab.refused(T::Detach {
        caller: member("a"),
        node: node_id(1),
        nic: "eno1".into(),
        network: id("n1"),
    });
    assert_refusal(&e, ErrorCode::NotFound, "network");
}

#[test]
fn nic_ports_come_from_inventory_or_lldp() {
    let mut lab = Lab::new();
    lab.allocate(4, "a");
    lab.network("n1", "a");
    let job = lab.attach(member("a"), 4, spec("eth0", "n1", AttachMode::Access));
    assert_eq!(lab.job(job).ports[0].port, "p41");
    let e = lab.refused(T::Attach {
        caller: member("a"),
        node: node_id(4),
        spec: spec("eth9", "n1", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::InvalidField, "nic");
    lab.allocate(1, "a");
    let e = lab.refused(T::Attach {
        caller: member("a"),
        node: node_id(1),
        spec: spec("eno7", "n1", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::InvalidField, "nic");
}

#[test]
fn an_lldp_neighbour_heard_under_another_interface_name_counts_by_mac() {
    let mut lab = Lab::new();
    // S2's inventory knows eno3 by MAC but not its cabling; the microkernel heard the
    // switch on eth2, the interface with that MAC.
    let mut record = lab.state.inventory[&id::<protocol::Serial>("S2")].clone();
    record.nics.push(ExpectedNic {
        name: "eno3".into(),
        mac: Some("52:54:00:00:02:03".parse().unwrap()),
        switch: None,
        port: None,
    });
    lab.ok(Command::ImportInventory(vec![ImportItem { record }]));
    lab.ok(Command::PatchNode {
        id: node_id(2),
        patch: NodePatch {
            facts: Some(JsonValue(json!({
                "nics": [{"name": "eth2", "mac": "52:54:00:00:02:03"}],
                "lldp": [{"interface": "eth2", "switch": "tor1", "port": "p23"}]
            }))),
            ..NodePatch::default()
        },
    });
    lab.allocate(2, "a");
    lab.network("n1", "a");
    let job = lab.attach(member("a"), 2, spec("eno3", "n1", AttachMode::Access));
    assert_eq!(lab.job(job).ports[0].port, "p23");
}

#[test]
fn provisioning_and_bmc_networks_never_meet_tenant_networks() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.network("n1", "a");
    lab.infra("prov", NetworkKind::Provisioning, 10);
    lab.infra("bmc", NetworkKind::Bmc, 11);
    lab.t(T::CreateNetwork {
        caller: fleet(),
        name: id("internet"),
        kind: NetworkKind::Public,
        owner: None,
        vlan: None,
        pool: POOL,
    });
    // Project members can neither see nor attach infrastructure networks.
    let e = lab.refused(T::Attach {
        caller: member("a"),
        node: node_id(1),
        spec: spec("eno1", "prov", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::NotFound, "network");
    // A NIC on the provisioning network cannot take a tenant or public network, and back.
    let job = lab.attach(fleet(), 1, spec("eno1", "prov", AttachMode::Access));
    lab.port_ok("p11", job);
    for net in ["n1", "internet"] {
        let e = lab.refused(T::Attach {
            caller: fleet(),
            node: node_id(1),
            spec: spec("eno1", net, AttachMode::Trunk),
        });
        assert_refusal(&e, ErrorCode::Conflict, "network");
    }
    // The BMC network can share it (both infrastructure), tagged.
    let job = lab.attach(fleet(), 1, spec("eno1", "bmc", AttachMode::Trunk));
    lab.port_ok("p11", job);
    let job = lab.attach(member("a"), 1, spec("eno2", "n1", AttachMode::Access));
    lab.port_ok("p12", job);
    let e = lab.refused(T::Attach {
        caller: fleet(),
        node: node_id(1),
        spec: spec("eno2", "bmc", AttachMode::Trunk),
    });
    assert_refusal(&e, ErrorCode::Conflict, "network");
    // The public network admits every project; members detach only what they may.
    let job = lab.attach(member("a"), 1, spec("eno2", "internet", AttachMode::Trunk));
    lab.port_ok("p12", job);
    let e = lab.refused(T::Revert {
        caller: member("a"),
        node: node_id(1),
        nic: "eno1".into(),
    });
    assert_refusal(&e, ErrorCode::Forbidden, "nic");
    // A free node can sit on the provisioning network but not on a tenant one.
    let job = lab.attach(fleet(), 2, spec("eno1", "prov", AttachMode::Access));
    lab.port_ok("p21", job);
    let e = lab.refused(T::Attach {
        caller: fleet(),
        node: node_id(2),
        spec: spec("eno2", "internet", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
}

#[test]
fn power_is_a_job_carried_in_the_agents_node_view() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    let e = lab.refused(T::Power {
        caller: member("b"),
        node: node_id(1),
        on: true,
    });
    assert_refusal(&e, ErrorCode::NotFound, "node");
    let job = lab.t(T::Power {
        caller: member("a"),
        node: node_id(1),
        on: true,
    });
    let intent = lab.state.power_intent(node_id(1)).unwrap();
    assert!(intent.on);
    assert_eq!(intent.generation, job);
    assert_eq!(lab.state.nodes[&node_id(1)].revision, job);
    let e = lab.refused(T::Power {
        caller: member("a"),
        node: node_id(1),
        on: false,
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
    lab.power_ok(1, job);
    assert_eq!(lab.job(job).state, JobState::Done);

    let job = lab.t(T::Power {
        caller: fleet(),
        node: node_id(1),
        on: false,
    });
    lab.event(
        "r1",
        EventKind::PowerApplied {
            node: node_id(1),
            generation: job,
            ok: false,
            message: "ipmitool: Unable to establish IPMI v2 / RMCP+ session".into(),
        },
    );
    let j = lab.job(job);
    assert_eq!(j.state, JobState::Failed);
    assert!(j.error.as_deref().unwrap().contains("RMCP+ session"));
    lab.restart();
}

/// Drives a transfer job through its phases by answering every intent it sets, checking
/// the phases it passes.
fn drive(lab: &mut Lab, job: JobId, phases: &[TransferPhase]) {
    for phase in phases {
        let j = lab.job(job).clone();
        let t = j.kind.transfer().unwrap();
        assert_eq!(t.phase, *phase, "{j:?}");
        if let Some(p) = &j.power {
            lab.power_ok(1, p.generation);
        }
        for p in &j.ports {
            lab.port_ok(&p.port, p.generation);
        }
    }
}

#[test]
fn a_move_powers_off_detaches_reassigns_attaches_and_powers_on() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.network("net-a", "a");
    let vb = lab.network("net-b", "b");
    lab.attached(1, "net-a");
    let e = lab.refused(T::Move {
        caller: member("a"),
        node: node_id(1),
        project: id("b"),
        networks: Vec::new(),
    });
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = lab.refused(T::Move {
        caller: fleet(),
        node: node_id(1),
        project: id("b"),
        networks: vec![spec("eno1", "net-a", AttachMode::Access)],
    });
    assert_refusal(&e, ErrorCode::Forbidden, "networks[0].network");
    let e = lab.refused(T::Move {
        caller: fleet(),
        node: node_id(1),
        project: id("b"),
        networks: vec![spec("eno5", "net-b", AttachMode::Access)],
    });
    assert_refusal(&e, ErrorCode::InvalidField, "networks[0].nic");

    let job = lab.t(T::Move {
        caller: fleet(),
        node: node_id(1),
        project: id("b"),
        networks: vec![spec("eno1", "net-b", AttachMode::Access)],
    });
    assert!(!lab.state.power_intent(node_id(1)).unwrap().on);
    // Nothing else may touch the node meanwhile.
    let e = lab.refused(T::Attach {
        caller: fleet(),
        node: node_id(1),
        spec: spec("eno2", "net-a", AttachMode::Access),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
    drive(&mut lab, job, &[TransferPhase::PowerOff]);
    // Detaching: the old network is gone from the port; the node still belongs to a.
    assert_eq!(lab.port_intent("p11").config, PortConfig::Unconfigured);
    assert_eq!(lab.project_of(1), Some(id("a")));
    // A coordinator restart in the middle changes nothing.
    lab.restart();
    drive(&mut lab, job, &[TransferPhase::Detach]);
    assert_eq!(lab.project_of(1), Some(id("b")));
    assert_eq!(
        lab.port_intent("p11").config,
        PortConfig::Access { vlan: vb }
    );
    drive(
        &mut lab,
        job,
        &[TransferPhase::Attach, TransferPhase::PowerOn],
    );
    let j = lab.job(job);
    assert_eq!(j.state, JobState::Done, "{j:?}");
    assert!(lab.state.power_intent(node_id(1)).unwrap().on);
    assert!(
        j.projects.contains(&id::<ProjectId>("a")) && j.projects.contains(&id::<ProjectId>("b"))
    );
    // The node is b's now: a cannot see it, b can use it.
    let e = lab.refused(T::Power {
        caller: member("a"),
        node: node_id(1),
        on: false,
    });
    assert_refusal(&e, ErrorCode::NotFound, "node");
    lab.t(T::Power {
        caller: member("b"),
        node: node_id(1),
        on: false,
    });
    lab.restart();
}

#[test]
fn a_failed_move_step_fails_the_job_with_the_agents_message() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    let job = lab.t(T::Move {
        caller: fleet(),
        node: node_id(1),
        project: id("b"),
        networks: Vec::new(),
    });
    lab.event(
        "r1",
        EventKind::PowerApplied {
            node: node_id(1),
            generation: job,
            ok: false,
            message: "BMC timed out".into(),
        },
    );
    let j = lab.job(job);
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(
        j.error.as_deref(),
        Some("power_off phase: power off: BMC timed out")
    );
    assert_eq!(lab.project_of(1), Some(id("a")));
    // Failed jobs release the node.
    lab.t(T::Power {
        caller: member("a"),
        node: node_id(1),
        on: true,
    });
}

#[test]
fn a_nightly_lease_lends_the_node_and_takes_it_back() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.network("net-a", "a");
    lab.network("net-b", "b");
    lab.attached(1, "net-a");
    let nightly = LeaseWindow::Daily {
        start: "00:00".into(),
        end: "06:00".into(),
        tz: "UTC".into(),
    };
    let e = lab.refused(T::CreateLease {
        caller: member("b"),
        node: node_id(1),
        project: id("b"),
        window: nightly.clone(),
    });
    assert_refusal(&e, ErrorCode::NotFound, "node");
    let e = lab.refused(T::CreateLease {
        caller: member("a"),
        node: node_id(1),
        project: id("b"),
        window: LeaseWindow::Daily {
            start: "25:00".into(),
            end: "06:00".into(),
            tz: "UTC".into(),
        },
    });
    assert_refusal(&e, ErrorCode::InvalidField, "window.start");
    let e = lab.refused(T::CreateLease {
        caller: member("a"),
        node: node_id(1),
        project: id("a"),
        window: nightly.clone(),
    });
    assert_refusal(&e, ErrorCode::InvalidField, "project");
    let lease = lab.t(T::CreateLease {
        caller: member("a"),
        node: node_id(1),
        project: id("b"),
        window: nightly,
    });
    let l = &lab.state.tenancy.leases[&lease];
    assert_eq!(l.state, LeaseState::Away);
    assert_eq!(l.owner, Some(id("a")));
    let e = lab.refused(T::FreeNode {
        caller: member("a"),
        node: node_id(1),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");

    // T0 is 22:13 UTC: the window is closed, a tick claiming it open is refused.
    let e = lab.refused(T::LeaseTick { lease, open: true });
    assert_refusal(&e, ErrorCode::Conflict, "lease");
    let midnight = T0 - T0.rem_euclid(24 * HOUR) + 24 * HOUR;
    lab.now = midnight + 60_000;
    let start = lab.t(T::LeaseTick { lease, open: true });
    assert_eq!(lab.state.tenancy.leases[&lease].state, LeaseState::Starting);
    assert!(matches!(lab.job(start).kind, JobKind::LeaseStart(_)));
    drive(
        &mut lab,
        start,
        &[TransferPhase::PowerOff, TransferPhase::Detach],
    );
    assert_eq!(lab.job(start).state, JobState::Done);
    let l = &lab.state.tenancy.leases[&lease];
    assert_eq!(l.state, LeaseState::Active);
    assert_eq!(lab.project_of(1), Some(id("b")));
    assert_eq!(lab.port_intent("p11").config, PortConfig::Unconfigured);
    // The borrower uses it like its own node.
    let job = lab.attach(member("b"), 1, spec("eno1", "net-b", AttachMode::Access));
    lab.port_ok("p11", job);
    let e = lab.refused(T::Power {
        caller: member("a"),
        node: node_id(1),
        on: true,
    });
    assert_refusal(&e, ErrorCode::NotFound, "node");

    // 06:00: reclaimed, ports reverted, back to a, powered off.
    lab.now = midnight + 6 * HOUR;
    let end = lab.t(T::LeaseTick { lease, open: false });
    assert!(matches!(lab.job(end).kind, JobKind::LeaseEnd(_)));
    lab.restart();
    drive(
        &mut lab,
        end,
        &[TransferPhase::PowerOff, TransferPhase::Detach],
    );
    assert_eq!(lab.job(end).state, JobState::Done);
    assert_eq!(lab.state.tenancy.leases[&lease].state, LeaseState::Away);
    assert_eq!(lab.project_of(1), Some(id("a")));
    assert_eq!(lab.port_intent("p11").config, PortConfig::Unconfigured);
    assert!(lab.port_intent("p11").attachments.is_empty());
    assert!(!lab.state.power_intent(node_id(1)).unwrap().on);

    // Cancelled while away: over for good.
    lab.t(T::CancelLease {
        caller: member("b"),
        lease,
    });
    assert_eq!(lab.state.tenancy.leases[&lease].state, LeaseState::Ended);
    let e = lab.refused(T::CancelLease {
        caller: member("a"),
        lease,
    });
    assert_refusal(&e, ErrorCode::Conflict, "lease");
    let e = lab.refused(T::CancelLease {
        caller: member("c"),
        lease,
    });
    assert_refusal(&e, ErrorCode::NotFound, "lease");
}

#[test]
fn a_one_time_lease_of_a_free_node_returns_it_to_the_pool() {
    let mut lab = Lab::new();
    let lease = lab.t(T::CreateLease {
        caller: fleet(),
        node: node_id(2),
        project: id("c"),
        window: LeaseWindow::Once {
            from: T0 + 1000,
            until: T0 + 5000,
        },
    });
    lab.now = T0 + 1000;
    let start = lab.t(T::LeaseTick { lease, open: true });
    // Node 2 never had ports configured: its power goes off, then it changes hands.
    let j = lab.job(start).clone();
    lab.event(
        "r1",
        EventKind::PowerApplied {
            node: node_id(2),
            generation: j.power.unwrap().generation,
            ok: true,
            message: String::new(),
        },
    );
    assert_eq!(lab.job(start).state, JobState::Done);
    assert_eq!(lab.project_of(2), Some(id("c")));
    lab.now = T0 + 5000;
    let end = lab.t(T::LeaseTick { lease, open: false });
    let j = lab.job(end).clone();
    lab.event(
        "r1",
        EventKind::PowerApplied {
            node: node_id(2),
            generation: j.power.unwrap().generation,
            ok: true,
            message: String::new(),
        },
    );
    assert_eq!(lab.job(end).state, JobState::Done);
    assert_eq!(lab.project_of(2), None);
    assert_eq!(lab.state.tenancy.leases[&lease].state, LeaseState::Ended);
    let e = lab.refused(T::LeaseTick { lease, open: false });
    assert_refusal(&e, ErrorCode::Conflict, "lease");
}

#[test]
fn snapshots_and_deltas_carry_ports_and_power() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.network("n1", "a");
    let before = lab.rev;
    let job = lab.attach(member("a"), 1, spec("eno1", "n1", AttachMode::Access));
    let since = lab.state.port_intents_since(&id("r1"), before);
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].generation, job);
    assert!(lab.state.port_intents_since(&id("r1"), job).is_empty());
    assert!(lab.state.port_intents(&id("r2")).is_empty());
    // The agent's report does not change the intent: no new delta for it.
    lab.port_ok("p11", job);
    assert!(lab.state.port_intents_since(&id("r1"), job).is_empty());
    // Boot targets are untouched by tenancy.
    assert_eq!(
        lab.state.nodes[&node_id(1)].boot_target,
        BootTarget::Discovery
    );
}

#[test]
fn plain_patches_and_project_deletes_respect_tenancy() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.network("net-a", "a");
    lab.attached(1, "net-a");
    let patch = |project: Option<&str>| Command::PatchNode {
        id: node_id(1),
        patch: NodePatch {
            project: Some(project.map(id)),
            ..NodePatch::default()
        },
    };
    for to in [None, Some("b")] {
        let e = lab.apply(patch(to)).result.unwrap_err();
        assert_refusal(&e, ErrorCode::Conflict, "project");
    }
    // Same project: nothing to check.
    lab.ok(patch(Some("a")));
    lab.network("net-b", "b");
    let e = lab
        .apply(Command::DeleteProject(id("b")))
        .result
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.contains("network net-b"), "{e}");
    lab.allocate(2, "a");
    lab.t(T::CreateLease {
        caller: fleet(),
        node: node_id(2),
        project: id("c"),
        window: LeaseWindow::Once {
            from: T0 + HOUR,
            until: T0 + 2 * HOUR,
        },
    });
    let e = lab
        .apply(Command::DeleteProject(id("c")))
        .result
        .unwrap_err();
    assert!(e.message.contains("lease"), "{e}");
    let e = lab
        .apply(Command::PatchNode {
            id: node_id(2),
            patch: NodePatch {
                project: Some(None),
                ..NodePatch::default()
            },
        })
        .result
        .unwrap_err();
    assert_refusal(&e, ErrorCode::Conflict, "project");
}

#[test]
fn finished_jobs_are_forgotten_after_a_week() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    let first = lab.t(T::Power {
        caller: fleet(),
        node: node_id(1),
        on: true,
    });
    lab.power_ok(1, first);
    let open = lab.t(T::Power {
        caller: fleet(),
        node: node_id(2),
        on: true,
    });
    lab.now += super::tenancy::JOB_RETENTION_MS + 1;
    let last = lab.t(T::Power {
        caller: fleet(),
        node: node_id(1),
        on: false,
    });
    lab.power_ok(1, last);
    // The old finished job is gone; the open one (and everything after it) stays.
    assert!(!lab.state.tenancy.jobs.contains_key(&first));
    assert!(lab.state.tenancy.jobs.contains_key(&open));
    assert!(lab.state.tenancy.jobs.contains_key(&last));
    lab.restart();
}

#[test]
fn power_and_port_changes_of_one_node_do_not_wait_for_each_other() {
    let mut lab = Lab::new();
    lab.allocate(1, "a");
    lab.network("n1", "a");
    let power = lab.t(T::Power {
        caller: member("a"),
        node: node_id(1),
        on: true,
    });
    let attach = lab.attach(member("a"), 1, spec("eno1", "n1", AttachMode::Access));
    let e = lab.refused(T::FreeNode {
        caller: member("a"),
        node: node_id(1),
    });
    assert_refusal(&e, ErrorCode::Conflict, "node");
    lab.port_ok("p11", attach);
    lab.power_ok(1, power);
    assert_eq!(lab.job(attach).state, JobState::Done);
    assert_eq!(lab.job(power).state, JobState::Done);
}
