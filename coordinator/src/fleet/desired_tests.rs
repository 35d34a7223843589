//! Unit tests of a rack's desired state as its agent gets it: [`snapshot`] and
//! [`deltas_since`], computed from states built with `State::apply`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use protocol::domain::{
    BmcDriver, BmcSpec, BootTarget, CredentialsInput, ExpectedNic, InventoryRecord, Rack, Site,
    StaticIp,
};
use protocol::fleet::{BmcAccess, Delta, RackNode};
use protocol::{Mac, NodeId, RackId, Revision, Serial};
use uuid::Uuid;

use super::desired::{deltas_since, snapshot};
use crate::api::bmc_context;
use crate::secrets::SealingKey;
use crate::state::{Command, ImportItem, NodePatch, Request, State};

fn rack(name: &str) -> RackId {
    name.parse().unwrap()
}

fn serial(s: &str) -> Serial {
    s.parse().unwrap()
}

fn node_id(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0x0b, last])
}

/// Expected inventory of `S<n>` in `rack_name`: one NIC on a switch port, one static
/// address, a Redfish BMC with password `pw-S<n>` sealed with `key`.
fn record(n: u8, rack_name: &str, key: &SealingKey) -> InventoryRecord {
    let s = serial(&format!("S{n}"));
    let creds = CredentialsInput {
        username: "admin".to_owned(),
        password: format!("pw-{s}"),
    };
    InventoryRecord {
        site: "ams1".parse().unwrap(),
        rack: rack(rack_name),
        u_position: Some(n.into()),
        model: None,
        nics: vec![ExpectedNic {
            name: "eno1".to_owned(),
            mac: Some(mac(n)),
            switch: Some("tor1".to_owned()),
            port: Some(format!("Ethernet1/{n}")),
        }],
        bmc: Some(BmcSpec {
            address: format!("10.0.0.{n}"),
            driver: BmcDriver::Redfish,
            credentials: Some(key.seal_credentials(&bmc_context(&s), &creds)),
        }),
        static_ips: vec![StaticIp {
            interface: "eno1".to_owned(),
            address: format!("10.1.0.{n}").parse().unwrap(),
            prefix: 24,
            gateway: Some("10.1.0.1".parse().unwrap()),
        }],
        tags: BTreeSet::new(),
        revision: 0,
        generation: 0,
        serial: s,
    }
}

fn register(n: u8, rack_name: &str) -> Command {
    Command::RegisterNode {
        id: node_id(n.into()),
        serial: serial(&format!("S{n}")),
        rack: Some(rack(rack_name)),
        macs: vec![mac(n)],
    }
}

/// A state plus its revision counter and sealing key.
struct Lab {
    state: State,
    rev: Revision,
    key: SealingKey,
}

impl Lab {
    /// Site `ams1`; rack `r1` holds node 1 (with inventory) and node 2 (without); rack `r2`
    /// holds node 3 (with inventory).
    fn new() -> Self {
        let key = SealingKey::generate();
        let mut lab = Lab {
            state: State::default(),
            rev: 0,
            key,
        };
        lab.ok(Command::PutSite(Site {
            name: "ams1".parse().unwrap(),
            description: String::new(),
        }));
        for name in ["r1", "r2"] {
            lab.ok(Command::PutRack(Rack {
                name: rack(name),
                site: "ams1".parse().unwrap(),
                description: String::new(),
            }));
        }
        lab.import(&[(1, "r1"), (3, "r2")]);
        lab.ok(register(1, "r1"));
        lab.ok(register(2, "r1"));
        lab.ok(register(3, "r2"));
        lab
    }

    fn ok(&mut self, command: Command) {
        self.rev += 1;
        let request = Request {
            actor: "user:root".to_owned(),
            at: 1_700_000_000_000,
            request_id: None,
            command,
        };
        let resp = self.state.apply(self.rev, &request);
        if let Err(e) = resp.result {
            panic!("expected success, got {e}");
        }
    }

    fn import(&mut self, records: &[(u8, &str)]) {
        let items = records
            .iter()
            .map(|(n, r)| ImportItem {
                record: record(*n, r, &self.key),
            })
            .collect();
        self.ok(Command::ImportInventory(items));
    }

    fn deltas(&self, rack_name: &str, since: Revision) -> Vec<Delta> {
        deltas_since(&self.state, &self.key, &rack(rack_name), since)
    }

    /// The agent's view of node `n` as the current snapshot of its rack has it.
    fn view(&self, n: u8) -> RackNode {
        let node = &self.state.nodes[&node_id(n.into())];
        let r = node.rack.clone().expect("in a rack");
        snapshot(&self.state, &self.key, &r, self.rev)
            .nodes
            .into_iter()
            .find(|v| v.id == node.id)
            .expect("in its rack's snapshot")
    }
}

fn ids(nodes: &[RackNode]) -> Vec<NodeId> {
    nodes.iter().map(|n| n.id).collect()
}

#[test]
fn snapshot_holds_exactly_the_racks_nodes_with_their_inventory() {
    let lab = Lab::new();
    let snap = snapshot(&lab.state, &lab.key, &rack("r1"), lab.rev);
    assert_eq!(snap.revision, lab.rev);
    assert_eq!(ids(&snap.nodes), vec![node_id(1), node_id(2)]);

    let expected = record(1, "r1", &lab.key);
    let node = &lab.state.nodes[&node_id(1)];
    assert_eq!(
        snap.nodes[0],
        RackNode {
            id: node_id(1),
            serial: serial("S1"),
            macs: vec![mac(1)],
            boot_target: BootTarget::Discovery,
            static_ips: expected.static_ips,
            switch_ports: expected.nics,
            bmc: Some(BmcAccess {
                address: "10.0.0.1".to_owned(),
                driver: BmcDriver::Redfish,
                username: Some("admin".to_owned()),
                password: Some("pw-S1".to_owned()),
            }),
            revision: node.revision,
            power: None,
        }
    );
    let bare = &snap.nodes[1];
    assert!(bare.static_ips.is_empty() && bare.switch_ports.is_empty());
    assert_eq!(bare.bmc, None);

    let other = snapshot(&lab.state, &lab.key, &rack("r2"), lab.rev);
    assert_eq!(ids(&other.nodes), vec![node_id(3)]);
    let bmc = other.nodes[0].bmc.as_ref().expect("inventory has a BMC");
    assert_eq!(bmc.password.as_deref(), Some("pw-S3"));

    assert!(snapshot(&lab.state, &lab.key, &rack("r9"), lab.rev)
        .nodes
        .is_empty());
}

#[test]
fn snapshot_with_the_wrong_key_has_no_password() {
    let lab = Lab::new();
    let other_key = SealingKey::generate();
    let snap = snapshot(&lab.state, &other_key, &rack("r1"), lab.rev);
    let bmc = snap.nodes[0].bmc.as_ref().expect("inventory has a BMC");
    assert_eq!(bmc.username.as_deref(), Some("admin"));
    assert_eq!(bmc.password, None);
}

#[test]
fn view_revision_is_the_later_of_node_and_inventory() {
    let mut lab = Lab::new();
    assert_eq!(lab.view(1).revision, lab.state.nodes[&node_id(1)].revision);
    lab.import(&[(1, "r1"), (2, "r1")]); // S1 re-sealed but identical: unchanged
    assert_eq!(lab.view(1).revision, lab.state.nodes[&node_id(1)].revision);
    assert_eq!(lab.view(2).revision, lab.rev, "S2's record is new");
}

#[test]
fn deltas_name_only_the_changed_nodes() {
    let mut lab = Lab::new();
    let before = lab.rev;
    lab.ok(Command::PatchNode {
        id: node_id(1),
        patch: NodePatch {
            boot_target: Some(BootTarget::Local),
            ..NodePatch::default()
        },
    });
    let view = lab.view(1);
    assert_eq!(view.boot_target, BootTarget::Local);
    assert_eq!(lab.deltas("r1", before), vec![Delta::UpsertNode(view)]);
    assert_eq!(lab.deltas("r2", before), vec![]);

    // A new inventory record changes the agent's view of the node it describes.
    let before = lab.rev;
    lab.import(&[(2, "r1")]);
    let view = lab.view(2);
    assert_eq!(
        view.bmc.as_ref().unwrap().password.as_deref(),
        Some("pw-S2")
    );
    assert_eq!(lab.deltas("r1", before), vec![Delta::UpsertNode(view)]);
    assert_eq!(lab.deltas("r2", before), vec![]);
}

#[test]
fn node_moved_out_is_removed_from_its_old_rack() {
    let mut lab = Lab::new();
    let before = lab.rev;
    lab.ok(register(2, "r2"));
    assert_eq!(
        lab.deltas("r1", before),
        vec![Delta::RemoveNode(node_id(2))]
    );
    assert_eq!(
        lab.deltas("r2", before),
        vec![Delta::UpsertNode(lab.view(2))]
    );
    let snap = snapshot(&lab.state, &lab.key, &rack("r1"), lab.rev);
    assert_eq!(ids(&snap.nodes), vec![node_id(1)]);

    // An agent catching up from further back gets both kinds, upserts first.
    assert_eq!(
        lab.deltas("r1", 0),
        vec![
            Delta::UpsertNode(lab.view(1)),
            Delta::RemoveNode(node_id(2))
        ]
    );

    // Back in r1: no removal any more, an upsert instead; r2 now removes it.
    let before = lab.rev;
    lab.ok(register(2, "r1"));
    assert_eq!(lab.deltas("r1", 0).len(), 2);
    assert_eq!(
        lab.deltas("r1", before),
        vec![Delta::UpsertNode(lab.view(2))]
    );
    assert_eq!(
        lab.deltas("r2", before),
        vec![Delta::RemoveNode(node_id(2))]
    );
}

#[test]
fn deltas_since_the_current_revision_are_empty() {
    let mut lab = Lab::new();
    lab.ok(register(2, "r2"));
    for r in ["r1", "r2", "r9"] {
        assert_eq!(lab.deltas(r, lab.rev), vec![], "{r}");
    }
}

#[test]
fn deleting_inventory_updates_the_agents_view() {
    let mut lab = Lab::new();
    lab.import(&[(2, "r1")]);
    let imported = lab.view(2).revision;
    assert_eq!(imported, lab.rev);
    lab.ok(Command::DeleteInventory(serial("S2")));
    let view = lab.view(2);
    assert_eq!(view.bmc, None);
    assert!(view.static_ips.is_empty() && view.switch_ports.is_empty());
    assert!(view.revision > imported, "{} <= {imported}", view.revision);
    assert_eq!(lab.deltas("r1", imported), vec![Delta::UpsertNode(view)]);
}

#[test]
fn snapshots_and_deltas_carry_power_and_port_intents() {
    use crate::state::tenancy::{Caller, TenancyCommand};
    use protocol::domain::{Project, Role};
    use protocol::fleet::{PortConfig, PortIntent, PowerIntent};
    use protocol::tenancy::{AttachMode, AttachSpec, NetworkKind};

    let mut lab = Lab::new();
    let admin = Caller {
        role: Role::Admin,
        project: None,
    };
    lab.ok(Command::PutProject(Project {
        name: "blue".parse().unwrap(),
        description: String::new(),
    }));
    lab.ok(Command::Tenancy(TenancyCommand::AllocateNode {
        caller: admin.clone(),
        node: node_id(1),
        project: "blue".parse().unwrap(),
    }));
    lab.ok(Command::Tenancy(TenancyCommand::CreateNetwork {
        caller: admin.clone(),
        name: "blue-net".parse().unwrap(),
        kind: NetworkKind::Tenant,
        owner: Some("blue".parse().unwrap()),
        vlan: None,
        pool: (300, 399),
    }));
    let before = lab.rev;
    lab.ok(Command::Tenancy(TenancyCommand::Attach {
        caller: admin.clone(),
        node: node_id(1),
        spec: AttachSpec {
            nic: "eno1".into(),
            network: "blue-net".parse().unwrap(),
            mode: AttachMode::Access,
        },
    }));
    let attached = lab.rev;
    let intent = PortIntent {
        switch: "tor1".into(),
        port: "Ethernet1/1".into(),
        config: PortConfig::Access { vlan: 300 },
        generation: attached,
    };
    // The port intent is in r1's snapshot and deltas, sorted, and nowhere else.
    let snap = snapshot(&lab.state, &lab.key, &rack("r1"), lab.rev);
    assert_eq!(snap.ports, vec![intent.clone()]);
    assert!(snapshot(&lab.state, &lab.key, &rack("r2"), lab.rev)
        .ports
        .is_empty());
    assert_eq!(lab.deltas("r1", before), vec![Delta::UpsertPort(intent)]);
    assert_eq!(lab.deltas("r2", before), vec![]);
    assert_eq!(lab.state.rack_changed(&rack("r1")), attached);

    // A power intent travels in the node's view, as a node delta.
    lab.ok(Command::Tenancy(TenancyCommand::Power {
        caller: admin,
        node: node_id(1),
        on: true,
    }));
    let view = lab.view(1);
    assert_eq!(
        view.power,
        Some(PowerIntent {
            on: true,
            generation: lab.rev
        })
    );
    assert_eq!(lab.deltas("r1", attached), vec![Delta::UpsertNode(view)]);
    assert_eq!(lab.view(2).power, None);
}
