//! Unit tests of identification by serial in `State::apply`: a check-in whose serial is in
//! the expected inventory is identified (and audited as `node.identified`), an unknown serial
//! stays in the discovered pool without changing its rack's agent view beyond the node
//! itself, and importing a record later identifies a node already checked in. Also the pure
//! halves of the identify hook: which calls are due and what an answer commits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use protocol::domain::{InventoryRecord, Rack, Site, StaticIp, UnixMillis};
use protocol::fleet::{Event, EventKind};
use protocol::json::JsonValue;
use protocol::{Mac, RackId, Revision, Serial};
use serde_json::json;

use super::{Applied, Command, ImportItem, Request, State};
use crate::identify::{self, Phase};

const T0: UnixMillis = 1_700_000_000_000;

fn id<T: FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0x0b, last])
}

fn record(serial: &str, rack: &str, u: u16) -> InventoryRecord {
    InventoryRecord {
        serial: id(serial),
        site: id("ams1"),
        rack: id(rack),
        u_position: Some(u),
        model: None,
        nics: Vec::new(),
        bmc: None,
        static_ips: vec![StaticIp {
            interface: "eno1".into(),
            address: "10.1.0.7".parse().unwrap(),
            prefix: 24,
            gateway: None,
        }],
        tags: ["compute".parse().unwrap()].into_iter().collect(),
        revision: 0,
        generation: 0,
    }
}

fn import(rec: InventoryRecord) -> Command {
    Command::ImportInventory(vec![ImportItem { record: rec }])
}

/// A state plus the Raft log's revision counter; rack `r1` has an enrolled agent.
struct Fleet {
    state: State,
    rev: Revision,
    seq: u64,
}

impl Fleet {
    fn new() -> Fleet {
        let mut f = Fleet {
            state: State::default(),
            rev: 0,
            seq: 0,
        };
        f.ok(Command::PutSite(Site {
            name: id("ams1"),
            description: String::new(),
        }));
        f.ok(Command::PutRack(Rack {
            name: id("r1"),
            site: id("ams1"),
            description: String::new(),
        }));
        f.ok(Command::CreateEnrollToken(protocol::domain::EnrollToken {
            rack: id("r1"),
            hash: "h".into(),
            expires_at: T0 + 1000,
            used_at: None,
        }));
        f.ok(Command::Enroll {
            rack: id("r1"),
            token_hash: "h".into(),
            fingerprint: "fp".into(),
            not_after: T0 + 1_000_000,
        });
        f
    }

    fn run(&mut self, command: Command) -> Result<Applied, protocol::error::ErrorBody> {
        self.rev += 1;
        let req = Request {
            actor: "rack:r1".into(),
            at: T0,
            request_id: None,
            command,
        };
        self.state.apply(self.rev, &req).result
    }

    #[track_caller]
    fn ok(&mut self, command: Command) -> Applied {
        self.run(command).unwrap_or_else(|e| panic!("refused: {e}"))
    }

    /// The rack agent of `r1` reports a check-in.
    fn check_in(&mut self, serial: &str, macs: &[u8], facts: serde_json::Value) {
        self.seq += 1;
        let e = Event {
            seq: self.seq,
            at: T0,
            kind: EventKind::CheckIn {
                serial: id(serial),
                macs: macs.iter().copied().map(mac).collect(),
                facts: JsonValue(facts),
            },
        };
        self.ok(Command::AgentEvents {
            rack: id("r1"),
            events: vec![e],
        });
    }

    fn node(&self, serial: &str) -> protocol::domain::NodeView {
        let n = self.state.node_by_serial(&id::<Serial>(serial)).unwrap();
        self.state.node_view(n)
    }
}

#[test]
fn check_in_of_an_expected_serial_is_identified_and_audited() {
    let mut f = Fleet::new();
    f.ok(import(record("SN-1", "r1", 12)));
    f.check_in("SN-1", &[1, 2], json!({"cpus": 8}));
    let v = f.node("SN-1");
    assert!(v.identified);
    assert_eq!(v.u_position, Some(12));
    assert_eq!(v.node.rack, Some(id::<RackId>("r1")));
    assert_eq!(v.node.macs, vec![mac(1), mac(2)]);
    assert!(
        v.node.tags.contains(&id("compute")),
        "inventory tags copied"
    );
    assert_eq!(v.node.facts.0["cpus"], 8);
    let entry = &f.state.audit[&f.rev];
    assert_eq!(entry.action, "node.identified");
    assert_eq!(entry.target, "SN-1");
    assert_eq!(entry.actor, "rack:r1");
    // The agent's view carries the record's static addresses.
    let key = crate::secrets::SealingKey::from_bytes(&[7; 32]).unwrap();
    let snap = crate::fleet::desired::snapshot(&f.state, &key, &id("r1"), f.rev);
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(snap.nodes[0].static_ips.len(), 1);
    // A second check-in is not a second identification.
    let audit = f.state.audit.len();
    f.check_in("SN-1", &[3], json!({"disks": 2}));
    assert_eq!(f.state.audit.len(), audit);
    assert_eq!(f.node("SN-1").node.macs, vec![mac(1), mac(2), mac(3)]);
}

#[test]
fn unknown_serial_lands_in_the_discovered_pool() {
    let mut f = Fleet::new();
    let audit = f.state.audit.len();
    f.check_in("SN-X", &[9], json!({"cpus": 2}));
    let v = f.node("SN-X");
    assert!(!v.identified);
    assert_eq!(v.u_position, None);
    assert_eq!(
        f.state.audit.len(),
        audit,
        "nothing identified, nothing audited"
    );
    // Its rack's agent learns the node and its MACs (so it can boot it into discovery),
    // and nothing else: no addresses, no ports, no BMC.
    let key = crate::secrets::SealingKey::from_bytes(&[7; 32]).unwrap();
    let snap = crate::fleet::desired::snapshot(&f.state, &key, &id("r1"), f.rev);
    assert_eq!(snap.nodes.len(), 1);
    let n = &snap.nodes[0];
    assert_eq!(n.macs, vec![mac(9)]);
    assert!(n.static_ips.is_empty() && n.switch_ports.is_empty() && n.bmc.is_none());
}

#[test]
fn importing_a_record_later_identifies_a_checked_in_node() {
    let mut f = Fleet::new();
    f.check_in("SN-2", &[4], json!({}));
    assert!(!f.node("SN-2").identified);
    let before = f.node("SN-2").node.revision;
    f.ok(import(record("SN-2", "r1", 30)));
    let v = f.node("SN-2");
    assert!(v.identified);
    assert_eq!(v.u_position, Some(30));
    assert!(v.node.tags.contains(&id("compute")));
    assert!(v.node.revision > before, "the node's view moved forward");
    assert_eq!(f.state.rack_changed(&id("r1")), f.rev);
    let entry = &f.state.audit[&f.rev];
    assert_eq!(entry.action, "inventory.import");
    assert_eq!(entry.outcome, "applied");
    assert_eq!(entry.target, "SN-2; node.identified: SN-2");
    // Re-importing the same (or a changed) record is not a new identification.
    let mut changed = record("SN-2", "r1", 31);
    changed.model = Some("m".into());
    f.ok(import(changed));
    assert_eq!(f.state.audit[&f.rev].target, "SN-2");
    // Deleting the record puts the node back in the pool; importing again identifies it.
    f.ok(Command::DeleteInventory(id("SN-2")));
    assert!(!f.node("SN-2").identified);
    f.ok(import(record("SN-2", "r1", 30)));
    assert!(f.node("SN-2").identified);
}

#[test]
fn import_gives_a_rackless_node_the_records_rack() {
    let mut f = Fleet::new();
    f.ok(Command::RegisterNode {
        id: protocol::NodeId(uuid::Uuid::from_u128(5)),
        serial: id("SN-5"),
        rack: None,
        macs: vec![],
    });
    assert_eq!(f.node("SN-5").node.rack, None);
    f.ok(import(record("SN-5", "r1", 2)));
    assert_eq!(f.node("SN-5").node.rack, Some(id("r1")));
    assert_eq!(f.state.rack_node_ids(&id("r1")).count(), 1);
}

#[test]
fn identification_survives_reload() {
    let mut f = Fleet::new();
    f.ok(import(record("SN-1", "r1", 12)));
    f.check_in("SN-1", &[1], json!({}));
    f.check_in("SN-9", &[9], json!({}));
    let mut fresh = State::default();
    for key in f.state.all_keys() {
        let bytes = f.state.encode_object(&key).unwrap().unwrap();
        fresh
            .load_object(&State::storage_key(&key), &bytes)
            .unwrap();
    }
    fresh.rebuild_indexes();
    let one = fresh.node_by_serial(&id("SN-1")).unwrap();
    let nine = fresh.node_by_serial(&id("SN-9")).unwrap();
    assert!(fresh.is_identified(one));
    assert!(!fresh.is_identified(nine));
}

#[test]
fn hook_calls_are_due_per_phase_until_recorded() {
    let mut f = Fleet::new();
    f.ok(import(record("SN-1", "r1", 12)));
    f.check_in("SN-1", &[1], json!({"cpus": 4}));
    f.check_in("SN-9", &[9], json!({}));
    let due = identify::pending(&f.state);
    let mut phases: Vec<_> = due
        .iter()
        .map(|p| (p.serial.to_string(), p.phase))
        .collect();
    phases.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        phases,
        vec![
            ("SN-1".to_owned(), Phase::Identified),
            ("SN-9".to_owned(), Phase::Discovered)
        ]
    );
    assert_eq!(due.len(), 2);
    let one = due.iter().find(|p| p.serial.as_str() == "SN-1").unwrap();
    assert_eq!(
        one.body,
        json!({"serial": "SN-1", "macs": [mac(1)], "rack": "r1", "facts": {"cpus": 4}})
    );
    // Answer the identified node's call: static addresses go to its record, facts to the node.
    let answer = json!({"hostname": "web-1", "static_ips": [
        {"interface": "eno1", "address": "10.9.0.1", "prefix": 24}], "role": "web"});
    let writes = identify::writes(one, Ok(answer.as_object().unwrap().clone()));
    assert_eq!(writes.len(), 2);
    assert!(writes[0].request_id.ends_with("/static_ips"));
    for w in &writes {
        f.ok(w.command.clone());
    }
    let v = f.node("SN-1");
    assert_eq!(v.node.facts.0["identify"]["role"], "web");
    assert_eq!(v.node.facts.0["hostname"], "web-1");
    assert_eq!(v.node.facts.0["identify_error"], serde_json::Value::Null);
    assert_eq!(v.node.facts.0["identify_phase"], "identified");
    assert_eq!(v.node.facts.0["cpus"], 4, "check-in facts kept");
    let rec = &f.state.inventory[&id::<Serial>("SN-1")];
    assert_eq!(rec.static_ips[0].address.to_string(), "10.9.0.1");
    // Only the discovered node is still due; a later check-in does not make SN-1 due again.
    f.check_in("SN-1", &[1], json!({"cpus": 4}));
    let due = identify::pending(&f.state);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].phase, Phase::Discovered);
    // A failure is recorded and ends the call; static addresses for a discovered node cannot
    // be applied and say so.
    let nine = due[0].clone();
    for w in identify::writes(&nine, Err("after 4 attempts: refused".into())) {
        f.ok(w.command);
    }
    assert_eq!(
        f.node("SN-9").node.facts.0["identify_error"],
        "after 4 attempts: refused"
    );
    assert!(identify::pending(&f.state).is_empty());
    let w = identify::writes(&nine, Ok(answer.as_object().unwrap().clone()));
    assert_eq!(w.len(), 1, "no inventory write for a discovered node");
    let Command::PatchNode { patch, .. } = &w[0].command else {
        panic!("expected a patch")
    };
    let err = patch.facts.as_ref().unwrap().0["identify_error"]
        .as_str()
        .unwrap();
    assert!(err.contains("no expected-inventory record"), "{err}");
    // Identifying SN-9 later makes its call due again, for the new phase.
    f.ok(import(record("SN-9", "r1", 40)));
    let due = identify::pending(&f.state);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].phase, Phase::Identified);
    assert_ne!(due[0].request_id("facts"), nine.request_id("facts"));
}

#[test]
fn hook_writes_are_keyed_by_serial_phase_and_revision() {
    let mut f = Fleet::new();
    f.ok(import(record("SN-1", "r1", 12)));
    f.check_in("SN-1", &[1], json!({}));
    let a = identify::pending(&f.state);
    let b = identify::pending(&f.state);
    assert_eq!(a[0].request_id("facts"), b[0].request_id("facts"));
    assert!(a[0].request_id("facts").contains("SN-1/identified/"));
    // The same write proposed twice is applied once: the second is answered from memory.
    let w = identify::writes(&a[0], Ok(serde_json::Map::new()));
    let mut first = None;
    for _ in 0..2 {
        f.rev += 1;
        let req = Request {
            actor: "coordinator:1".into(),
            at: T0,
            request_id: Some(w[0].request_id.clone()),
            command: w[0].command.clone(),
        };
        let resp = f.state.apply(f.rev, &req);
        match &first {
            None => first = Some(resp.revision),
            Some(r) => {
                assert!(resp.replayed);
                assert_eq!(resp.revision, *r);
            }
        }
    }
}
