//! Unit tests of the rack-agent commands of `State::apply` — enrollment, certificate renewal
//! and revocation, exactly-once events, link reports — and of the rack bookkeeping the agents'
//! deltas rely on: node departures, the rack → nodes index and the per-rack change revision.
//!
//! [`Fleet::run_at`] checks on every request that audited commands leave exactly one audit
//! entry and agent telemetry none; [`Fleet::refused`] also checks that a refusal changes
//! nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use protocol::domain::{
    AgentLink, EnrollToken, InventoryRecord, Lease, Node, Rack, RackAgent, Site, UnixMillis,
};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{Event, EventKind};
use protocol::json::JsonValue;
use protocol::{Mac, NodeId, RackId, Revision};
use serde_json::json;
use uuid::Uuid;

use super::{Applied, Command, ImportItem, Key, NodePatch, Request, State};

const T0: UnixMillis = 1_700_000_000_000;
const HOUR: UnixMillis = 60 * 60 * 1000;
const NOT_AFTER: UnixMillis = T0 + 30 * 24 * HOUR;

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

fn id<T: FromStr>(s: &str) -> T
where
    T::Err: Debug,
{
    s.parse().unwrap()
}

fn rack(name: &str) -> RackId {
    id(name)
}

fn node_id(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0x0a, last])
}

/// An unused enrollment token for `rack_name`, expiring an hour after [`T0`].
fn token(rack_name: &str, hash: &str) -> EnrollToken {
    EnrollToken {
        rack: rack(rack_name),
        hash: hash.to_owned(),
        expires_at: T0 + HOUR,
        used_at: None,
    }
}

fn enroll(rack_name: &str, hash: &str, fingerprint: &str) -> Command {
    Command::Enroll {
        rack: rack(rack_name),
        token_hash: hash.to_owned(),
        fingerprint: fingerprint.to_owned(),
        not_after: NOT_AFTER,
    }
}

fn renew(rack_name: &str, old: &str, new: &str, not_after: UnixMillis) -> Command {
    Command::RenewAgentCert {
        rack: rack(rack_name),
        old_fingerprint: old.to_owned(),
        fingerprint: new.to_owned(),
        not_after,
    }
}

fn events(rack_name: &str, events: impl IntoIterator<Item = Event>) -> Command {
    Command::AgentEvents {
        rack: rack(rack_name),
        events: events.into_iter().collect(),
    }
}

fn link_report(rack_name: &str) -> Command {
    Command::AgentLinkReport {
        rack: rack(rack_name),
        link: AgentLink {
            connected: true,
            coordinator: 2,
            last_seen: T0 + 7,
            revision: 41,
            outbox_depth: 3,
            version: "0.1.0".to_owned(),
            session: 1,
        },
    }
}

fn event(seq: u64, kind: EventKind) -> Event {
    Event {
        seq,
        at: T0 + i64::try_from(seq).unwrap(),
        kind,
    }
}

/// The address lease event `seq` of delivery `round` grants: the round shows which delivery
/// of a resent event was the one applied.
fn lease_ip(seq: u64, round: u8) -> IpAddr {
    IpAddr::from([10, 0, round, u8::try_from(seq).unwrap()])
}

/// Lease events `seqs` of delivery `round`, event `seq` leasing to `mac(seq)`.
fn leases(seqs: RangeInclusive<u64>, round: u8) -> Vec<Event> {
    seqs.map(|seq| {
        let kind = EventKind::Lease {
            mac: mac(u8::try_from(seq).unwrap()),
            ip: lease_ip(seq, round),
        };
        event(seq, kind)
    })
    .collect()
}

fn check_in(seq: u64, serial: &str, macs: &[u8], facts: serde_json::Value) -> Event {
    let kind = EventKind::CheckIn {
        serial: id(serial),
        macs: macs.iter().copied().map(mac).collect(),
        facts: JsonValue(facts),
    };
    event(seq, kind)
}

fn register(n: u128, serial: &str, rack_name: &str) -> Command {
    Command::RegisterNode {
        id: node_id(n),
        serial: id(serial),
        rack: Some(rack(rack_name)),
        macs: vec![mac(u8::try_from(n).unwrap())],
    }
}

fn patch_tags(node: NodeId, tags: &[&str]) -> Command {
    Command::PatchNode {
        id: node,
        patch: NodePatch {
            tags: Some(tags.iter().map(|t| id(t)).collect()),
            ..NodePatch::default()
        },
    }
}

fn import(serial: &str, rack_name: &str, u_position: u16) -> Command {
    Command::ImportInventory(vec![ImportItem {
        record: InventoryRecord {
            serial: id(serial),
            site: id("ams1"),
            rack: rack(rack_name),
            u_position: Some(u_position),
            model: None,
            nics: Vec::new(),
            bmc: None,
            static_ips: Vec::new(),
            tags: BTreeSet::new(),
            revision: 0,
            generation: 0,
        },
    }])
}

#[track_caller]
fn last_seq(applied: Applied) -> u64 {
    match applied {
        Applied::Events { last_seq } => last_seq,
        other => panic!("expected Applied::Events, got {other:?}"),
    }
}

#[track_caller]
fn assert_refusal(err: &ErrorBody, code: ErrorCode, field: Option<&str>) {
    assert_eq!(err.code, code, "{err}");
    assert_eq!(err.field.as_deref(), field, "{err}");
}

/// Writes every object the way the storage layer does and loads them into a fresh state.
fn reload_objects(state: &State) -> State {
    let mut fresh = State::default();
    for key in state.all_keys() {
        let bytes = state.encode_object(&key).unwrap().expect("present object");
        fresh
            .load_object(&State::storage_key(&key), &bytes)
            .unwrap();
    }
    fresh.rebuild_indexes();
    fresh
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
    /// Site `ams1` with racks `r1` and `r2`, no agents. Dirty keys cleared.
    fn new() -> Self {
        let mut f = Fleet {
            state: State::default(),
            rev: 0,
        };
        f.ok(Command::PutSite(Site {
            name: id("ams1"),
            description: String::new(),
        }));
        for name in ["r1", "r2"] {
            f.ok(Command::PutRack(Rack {
                name: rack(name),
                site: id("ams1"),
                description: String::new(),
            }));
        }
        f.state.take_dirty();
        f
    }

    /// Applies `command`, proposed at `at`, at the next revision; checks it was answered at
    /// that revision and audited iff the command is audited.
    #[track_caller]
    fn run_at(&mut self, at: UnixMillis, command: Command) -> Result<Applied, ErrorBody> {
        let audited = command.audited();
        let audit_before = self.state.audit.len();
        self.rev += 1;
        let request = Request {
            actor: "user:root".to_owned(),
            at,
            request_id: None,
            command,
        };
        let resp = self.state.apply(self.rev, &request);
        assert_eq!(resp.revision, self.rev);
        if audited {
            assert_eq!(self.state.audit.len(), audit_before + 1, "one audit entry");
            let entry = &self.state.audit[&self.rev];
            assert_eq!(entry.action, request.command.action());
            assert_eq!(entry.outcome == "applied", resp.result.is_ok(), "{entry:?}");
        } else {
            assert_eq!(
                self.state.audit.len(),
                audit_before,
                "telemetry is not audited"
            );
        }
        resp.result
    }

    #[track_caller]
    fn ok_at(&mut self, at: UnixMillis, command: Command) -> Applied {
        self.run_at(at, command)
            .unwrap_or_else(|e| panic!("expected success, got {e}"))
    }

    #[track_caller]
    fn ok(&mut self, command: Command) -> Applied {
        self.ok_at(T0, command)
    }

    /// Applies a command that must be refused and checks the refusal changed nothing but its
    /// audit entry (if audited), in the state and in the dirty set. Clears the dirty set.
    #[track_caller]
    fn refused_at(&mut self, at: UnixMillis, command: Command) -> ErrorBody {
        self.state.take_dirty();
        let before = self.state.clone();
        let audited = command.audited();
        let err = self.run_at(at, command).expect_err("expected a refusal");
        let audit_key = audited.then_some(Key::Audit(self.rev));
        assert_eq!(
            self.state.take_dirty(),
            audit_key.into_iter().collect::<BTreeSet<_>>(),
            "a refusal touches only its audit entry ({err})"
        );
        let mut after = self.state.clone();
        after.audit.remove(&self.rev);
        assert_eq!(after, before, "a refusal changes nothing else ({err})");
        err
    }

    #[track_caller]
    fn refused(&mut self, command: Command) -> ErrorBody {
        self.refused_at(T0, command)
    }

    /// Enrolls an agent for `rack_name` with a fresh token and certificate `fingerprint`;
    /// returns the `last_seq` the enrollment answered.
    fn enroll(&mut self, rack_name: &str, fingerprint: &str) -> u64 {
        let hash = format!("token-{}", self.rev + 1);
        self.ok(Command::CreateEnrollToken(token(rack_name, &hash)));
        last_seq(self.ok(enroll(rack_name, &hash, fingerprint)))
    }

    /// Sends agent events for `rack_name`; returns the `last_seq` answered.
    fn send(&mut self, rack_name: &str, evs: impl IntoIterator<Item = Event>) -> u64 {
        last_seq(self.ok(events(rack_name, evs)))
    }

    fn agent(&self, rack_name: &str) -> &RackAgent {
        &self.state.agents[&rack(rack_name)]
    }

    fn node(&self, serial: &str) -> &Node {
        self.state.node_by_serial(&id(serial)).expect("registered")
    }

    fn rack_nodes(&self, rack_name: &str) -> Vec<NodeId> {
        self.state
            .rack_node_ids(&rack(rack_name))
            .copied()
            .collect()
    }

    fn changed(&self, rack_name: &str) -> Revision {
        self.state.rack_changed(&rack(rack_name))
    }
}

// ---------------------------------------------------------------------------------------------
// CreateEnrollToken, Enroll
// ---------------------------------------------------------------------------------------------

#[test]
fn create_enroll_token_for_an_unknown_rack_is_refused() {
    let mut f = Fleet::new();
    let err = f.refused(Command::CreateEnrollToken(token("r9", "h")));
    assert_refusal(&err, ErrorCode::InvalidField, Some("rack"));

    f.ok(Command::CreateEnrollToken(token("r1", "h")));
    let err = f.refused(Command::CreateEnrollToken(token("r2", "h")));
    assert_refusal(&err, ErrorCode::AlreadyExists, None);
}

#[test]
fn enroll_consumes_the_token_and_records_the_certificate() {
    let mut f = Fleet::new();
    f.ok(Command::CreateEnrollToken(token("r1", "h1")));
    assert_eq!(
        f.state.take_dirty(),
        BTreeSet::from([Key::Audit(f.rev), Key::EnrollToken("h1".to_owned())])
    );

    let applied = f.ok_at(T0 + 5, enroll("r1", "h1", "fp-1"));
    assert_eq!(applied, Applied::Events { last_seq: 0 });
    assert_eq!(f.state.enroll_tokens["h1"].used_at, Some(T0 + 5));
    assert_eq!(
        f.agent("r1"),
        &RackAgent {
            rack: Some(rack("r1")),
            cert_fingerprint: Some("fp-1".to_owned()),
            previous_fingerprint: None,
            cert_not_after: Some(NOT_AFTER),
            enrolled_at: Some(T0 + 5),
            revoked: false,
            last_seq: 0,
            events_applied: 0,
            link: None,
        }
    );
    assert_eq!(
        f.state.take_dirty(),
        BTreeSet::from([
            Key::Audit(f.rev),
            Key::EnrollToken("h1".to_owned()),
            Key::Agent(rack("r1")),
        ])
    );
}

#[test]
fn enroll_with_a_used_token_is_unauthenticated() {
    let mut f = Fleet::new();
    f.ok(Command::CreateEnrollToken(token("r1", "h1")));
    f.ok(enroll("r1", "h1", "fp-1"));
    let err = f.refused(enroll("r1", "h1", "fp-2"));
    assert_refusal(&err, ErrorCode::Unauthenticated, None);
    assert_eq!(f.agent("r1").cert_fingerprint.as_deref(), Some("fp-1"));
}

#[test]
fn enroll_with_an_expired_token_is_unauthenticated() {
    let mut f = Fleet::new();
    f.ok(Command::CreateEnrollToken(token("r1", "h1")));
    // Expiry is exclusive: a token expiring at `at` is already expired.
    let err = f.refused_at(T0 + HOUR, enroll("r1", "h1", "fp-1"));
    assert_refusal(&err, ErrorCode::Unauthenticated, None);
    let err = f.refused_at(T0 + 2 * HOUR, enroll("r1", "h1", "fp-1"));
    assert_refusal(&err, ErrorCode::Unauthenticated, None);
    assert!(f.state.agents.is_empty());

    f.ok_at(T0 + HOUR - 1, enroll("r1", "h1", "fp-1"));
}

#[test]
fn enroll_with_another_racks_token_is_forbidden() {
    let mut f = Fleet::new();
    f.ok(Command::CreateEnrollToken(token("r1", "h1")));
    let err = f.refused(enroll("r2", "h1", "fp-1"));
    assert_refusal(&err, ErrorCode::Forbidden, Some("rack"));
    assert!(err.message.contains("r1"), "{err}");
    // The token is still good for its own rack.
    assert_eq!(f.state.enroll_tokens["h1"].used_at, None);
    f.ok(enroll("r1", "h1", "fp-1"));
}

#[test]
fn enroll_with_an_unknown_token_is_unauthenticated() {
    let mut f = Fleet::new();
    f.ok(Command::CreateEnrollToken(token("r1", "h1")));
    let err = f.refused(enroll("r1", "nope", "fp-1"));
    assert_refusal(&err, ErrorCode::Unauthenticated, None);
}

#[test]
fn re_enrollment_after_revoke_needs_a_new_token_and_keeps_last_seq() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    assert_eq!(f.send("r1", leases(1..=3, 0)), 3);
    f.ok(Command::RevokeAgent(rack("r1")));

    // The first token is spent.
    let err = f.refused(enroll("r1", "token-1", "fp-2"));
    assert_refusal(&err, ErrorCode::Unauthenticated, None);

    assert_eq!(
        f.enroll("r1", "fp-2"),
        3,
        "enrollment answers the rack's last_seq"
    );
    let agent = f.agent("r1");
    assert!(!agent.revoked);
    assert_eq!(agent.cert_fingerprint.as_deref(), Some("fp-2"));
    assert_eq!((agent.last_seq, agent.events_applied), (3, 3));
    // The replacement agent continues the rack's sequence.
    assert_eq!(f.send("r1", leases(1..=4, 1)), 4);
    assert_eq!(f.agent("r1").events_applied, 4);
    assert_eq!(f.state.leases[&mac(3)].ip, lease_ip(3, 0));
    assert_eq!(f.state.leases[&mac(4)].ip, lease_ip(4, 1));
}

// ---------------------------------------------------------------------------------------------
// RevokeAgent, RenewAgentCert, AgentLinkReport
// ---------------------------------------------------------------------------------------------

#[test]
fn revoked_agent_is_forbidden_everything() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.send("r1", leases(1..=2, 0));
    f.ok(Command::RevokeAgent(rack("r1")));
    let agent = f.agent("r1");
    assert!(agent.revoked);
    assert_eq!(agent.cert_fingerprint, None);
    assert_eq!(agent.previous_fingerprint, None);
    assert_eq!(agent.last_seq, 2);

    for cmd in [
        events("r1", leases(3..=3, 0)),
        link_report("r1"),
        renew("r1", "fp-1", "fp-2", NOT_AFTER),
    ] {
        let err = f.refused(cmd);
        assert_refusal(&err, ErrorCode::Forbidden, None);
    }
    // Revoking again is harmless.
    f.ok(Command::RevokeAgent(rack("r1")));
}

#[test]
fn agent_commands_for_a_rack_without_agent_are_not_found() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    for cmd in [
        Command::RevokeAgent(rack("r2")),
        Command::RevokeAgent(rack("r9")),
        events("r2", leases(1..=1, 0)),
        link_report("r2"),
        renew("r2", "fp-1", "fp-2", NOT_AFTER),
    ] {
        let err = f.refused(cmd);
        assert_refusal(&err, ErrorCode::NotFound, None);
    }
}

#[test]
fn renewal_from_the_current_certificate_keeps_the_previous_one() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.state.take_dirty();
    assert_eq!(
        f.ok(renew("r1", "fp-1", "fp-2", NOT_AFTER + 1)),
        Applied::Done
    );
    let agent = f.agent("r1");
    assert_eq!(agent.cert_fingerprint.as_deref(), Some("fp-2"));
    assert_eq!(agent.previous_fingerprint.as_deref(), Some("fp-1"));
    assert_eq!(agent.cert_not_after, Some(NOT_AFTER + 1));
    assert!(f.state.take_dirty().contains(&Key::Agent(rack("r1"))));

    f.ok(renew("r1", "fp-2", "fp-3", NOT_AFTER + 2));
    let agent = f.agent("r1");
    assert_eq!(agent.cert_fingerprint.as_deref(), Some("fp-3"));
    assert_eq!(agent.previous_fingerprint.as_deref(), Some("fp-2"));
}

#[test]
fn renewal_from_an_unknown_certificate_is_forbidden() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.ok(renew("r1", "fp-1", "fp-2", NOT_AFTER));
    let err = f.refused(renew("r1", "fp-unknown", "fp-3", NOT_AFTER));
    assert_refusal(&err, ErrorCode::Forbidden, None);
    assert_eq!(f.agent("r1").cert_fingerprint.as_deref(), Some("fp-2"));
}

#[test]
fn renewal_retried_from_the_previous_certificate_replaces_the_unclaimed_one() {
    // The agent never received fp-2 (reply lost) and renews again from fp-1.
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.ok(renew("r1", "fp-1", "fp-2", NOT_AFTER));
    f.ok(renew("r1", "fp-1", "fp-3", NOT_AFTER + 1));
    let agent = f.agent("r1");
    assert_eq!(agent.cert_fingerprint.as_deref(), Some("fp-3"));
    assert_eq!(agent.previous_fingerprint.as_deref(), Some("fp-1"));
}

#[test]
fn link_report_is_recorded_and_not_audited() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.state.take_dirty();
    let Command::AgentLinkReport { link, .. } = link_report("r1") else {
        unreachable!()
    };
    assert_eq!(f.ok(link_report("r1")), Applied::Done);
    assert_eq!(f.agent("r1").link.as_ref(), Some(&link));
    assert_eq!(
        f.state.take_dirty(),
        BTreeSet::from([Key::Agent(rack("r1"))]),
        "no audit entry"
    );
}

// ---------------------------------------------------------------------------------------------
// AgentEvents
// ---------------------------------------------------------------------------------------------

#[test]
fn events_apply_exactly_once_and_in_order() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    let audit = f.state.audit.clone();
    let seqs = |f: &Fleet| (f.agent("r1").last_seq, f.agent("r1").events_applied);

    assert_eq!(f.send("r1", leases(1..=5, 0)), 5);
    assert_eq!(seqs(&f), (5, 5));

    // A resend after a lost acknowledgement changes nothing.
    let before = f.state.clone();
    assert_eq!(f.send("r1", leases(1..=5, 1)), 5);
    assert_eq!(seqs(&f), (5, 5));
    assert_eq!(f.state.leases, before.leases);

    // An overlapping batch applies only what is new.
    assert_eq!(f.send("r1", leases(4..=8, 2)), 8);
    assert_eq!(seqs(&f), (8, 8));
    for seq in 1..=8 {
        let round = if seq <= 5 { 0 } else { 2 };
        assert_eq!(f.state.leases[&mac(seq as u8)].ip, lease_ip(seq, round));
    }

    // A gap applies nothing beyond it.
    assert_eq!(f.send("r1", leases(10..=10, 3)), 8);
    assert_eq!(seqs(&f), (8, 8));
    assert!(!f.state.leases.contains_key(&mac(10)));
    let mut with_gap = leases(9..=9, 4);
    with_gap.extend(leases(11..=12, 4));
    assert_eq!(f.send("r1", with_gap), 9);
    assert_eq!(seqs(&f), (9, 9));
    assert!(!f.state.leases.contains_key(&mac(11)));

    // The agent resends from last_seq + 1.
    assert_eq!(f.send("r1", leases(10..=12, 5)), 12);
    assert_eq!(seqs(&f), (12, 12));
    assert_eq!(f.state.leases.len(), 12);

    assert_eq!(f.state.audit, audit, "events are not audited");
}

#[test]
fn events_of_one_rack_do_not_advance_another() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.enroll("r2", "fp-2");
    f.send("r1", leases(1..=3, 0));
    assert_eq!(f.send("r2", leases(1..=1, 1)), 1);
    assert_eq!(f.agent("r2").last_seq, 1);
    assert_eq!(f.agent("r1").last_seq, 3);
}

#[test]
fn lease_event_records_the_lease() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.state.take_dirty();
    f.send("r1", leases(1..=1, 0));
    assert_eq!(
        f.state.leases[&mac(1)],
        Lease {
            mac: mac(1),
            ip: lease_ip(1, 0),
            rack: rack("r1"),
            at: T0 + 1,
        }
    );
    assert_eq!(
        f.state.take_dirty(),
        BTreeSet::from([Key::Agent(rack("r1")), Key::Lease(mac(1))])
    );
}

#[test]
fn check_in_registers_a_node_with_an_id_derived_from_its_serial() {
    let check_in_s1 = || {
        let mut f = Fleet::new();
        f.enroll("r1", "fp-1");
        f.send(
            "r1",
            [check_in(1, "S1", &[1, 2], json!({"cpu": "x86", "mem": 64}))],
        );
        f
    };
    let (a, b) = (check_in_s1(), check_in_s1());
    let node = a.node("S1");
    assert_eq!(node.id, b.node("S1").id, "same id on every replica");
    assert_ne!(node.id, NodeId(Uuid::nil()));
    assert_eq!(node.rack, Some(rack("r1")));
    assert_eq!(node.macs, vec![mac(1), mac(2)]);
    assert_eq!(node.facts.0, json!({"cpu": "x86", "mem": 64}));
    assert_eq!(node.created_at, T0 + 1);
    assert_eq!(a.rack_nodes("r1"), vec![node.id]);
    assert_eq!(a.changed("r1"), a.rev);
}

#[test]
fn second_check_in_merges_facts_and_macs_into_the_same_node() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.send(
        "r1",
        [check_in(1, "S1", &[1], json!({"cpu": "x86", "mem": 64}))],
    );
    let id = f.node("S1").id;
    f.send(
        "r1",
        [check_in(2, "S1", &[1, 2], json!({"mem": 128, "disk": 2}))],
    );
    assert_eq!(f.state.nodes.len(), 1);
    let node = f.node("S1");
    assert_eq!(node.id, id);
    assert_eq!(node.macs, vec![mac(1), mac(2)]);
    assert_eq!(node.facts.0, json!({"cpu": "x86", "mem": 128, "disk": 2}));
    assert_eq!(node.revision, f.rev);

    // Non-object facts are ignored, the check-in still counts.
    assert_eq!(f.send("r1", [check_in(3, "S1", &[3], json!("junk"))]), 3);
    let node = f.node("S1");
    assert_eq!(node.facts.0, json!({"cpu": "x86", "mem": 128, "disk": 2}));
    assert_eq!(node.macs, vec![mac(1), mac(2), mac(3)]);
}

#[test]
fn check_in_keeps_the_id_of_a_node_registered_by_hand() {
    let mut f = Fleet::new();
    f.ok(register(7, "S7", "r2"));
    f.enroll("r1", "fp-1");
    f.send("r1", [check_in(1, "S7", &[9], json!({}))]);
    assert_eq!(f.state.nodes.len(), 1);
    assert_eq!(f.node("S7").id, node_id(7));
    assert_eq!(
        f.node("S7").rack,
        Some(rack("r1")),
        "the node was seen in r1"
    );
}

#[test]
fn power_event_sets_power_on() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.send("r1", [check_in(1, "S1", &[1], json!({}))]);
    let node = f.node("S1").id;
    assert_eq!(f.node("S1").power_on, None);
    f.send("r1", [event(2, EventKind::Power { node, on: true })]);
    assert_eq!(f.node("S1").power_on, Some(true));
    f.send("r1", [event(3, EventKind::Power { node, on: false })]);
    assert_eq!(f.node("S1").power_on, Some(false));

    // An unknown node is ignored; the event still counts, so the outbox drains.
    let ghost = event(
        4,
        EventKind::Power {
            node: node_id(99),
            on: true,
        },
    );
    assert_eq!(f.send("r1", [ghost]), 4);
    assert!(!f.state.nodes.contains_key(&node_id(99)));
}

#[test]
fn log_event_counts_but_changes_nothing_else() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    let before = f.state.clone();
    let log = EventKind::Log {
        node: node_id(1),
        message: "hello".to_owned(),
    };
    assert_eq!(f.send("r1", [event(1, log)]), 1);
    let mut after = f.state.clone();
    after.agents = before.agents.clone();
    assert_eq!(after, before);
}

// ---------------------------------------------------------------------------------------------
// Departures, rack → nodes index, rack change revision
// ---------------------------------------------------------------------------------------------

#[test]
fn moving_a_node_records_a_departure_from_its_old_rack() {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    let n = node_id(1);
    assert_eq!(f.rack_nodes("r1"), vec![n]);
    assert_eq!(f.changed("r1"), f.rev);
    f.state.take_dirty();

    f.ok(register(1, "S1", "r2"));
    let moved = f.rev;
    assert_eq!(f.state.departures.get(&(rack("r1"), n)), Some(&moved));
    assert_eq!(f.state.departures.len(), 1);
    assert_eq!(f.rack_nodes("r1"), vec![]);
    assert_eq!(f.rack_nodes("r2"), vec![n]);
    assert_eq!((f.changed("r1"), f.changed("r2")), (moved, moved));
    assert!(f
        .state
        .take_dirty()
        .contains(&Key::Departure(rack("r1"), n)));

    f.ok(register(1, "S1", "r1"));
    let back = f.rev;
    assert_eq!(f.state.departures.get(&(rack("r1"), n)), None);
    assert_eq!(f.state.departures.get(&(rack("r2"), n)), Some(&back));
    assert_eq!(f.rack_nodes("r1"), vec![n]);
    assert_eq!(f.rack_nodes("r2"), vec![]);
    assert_eq!((f.changed("r1"), f.changed("r2")), (back, back));
    let dirty = f.state.take_dirty();
    assert!(dirty.contains(&Key::Departure(rack("r1"), n)), "deleted");
    assert!(dirty.contains(&Key::Departure(rack("r2"), n)), "written");
}

#[test]
fn re_registering_in_the_same_rack_records_no_departure() {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    f.ok(register(1, "S1", "r1"));
    assert!(f.state.departures.is_empty());
    assert_eq!(f.changed("r1"), f.rev);
    assert_eq!(f.changed("r2"), 0);
}

#[test]
fn check_in_from_another_rack_moves_the_node() {
    let mut f = Fleet::new();
    f.enroll("r1", "fp-1");
    f.enroll("r2", "fp-2");
    f.send("r1", [check_in(1, "S1", &[1], json!({}))]);
    let n = f.node("S1").id;
    f.send("r2", [check_in(1, "S1", &[1], json!({}))]);
    assert_eq!(f.node("S1").rack, Some(rack("r2")));
    assert_eq!(f.state.departures.get(&(rack("r1"), n)), Some(&f.rev));
    assert_eq!(f.rack_nodes("r2"), vec![n]);
    assert_eq!((f.changed("r1"), f.changed("r2")), (f.rev, f.rev));
}

#[test]
fn patching_a_node_bumps_its_rack_only() {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    f.ok(register(2, "S2", "r2"));
    let r2 = f.changed("r2");
    f.ok(patch_tags(node_id(1), &["gpu"]));
    assert_eq!(f.changed("r1"), f.rev);
    assert_eq!(f.changed("r2"), r2);
}

#[test]
fn importing_inventory_of_a_registered_serial_bumps_its_nodes_rack() {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    let registered = f.rev;
    // The record names r2, but the node stands in r1: its agent is the one to tell.
    f.ok(import("S1", "r2", 10));
    assert_eq!(f.changed("r1"), f.rev);
    assert_eq!(f.changed("r2"), 0);
    let imported = f.rev;

    // An identical import changes nothing; an unregistered serial bumps no rack.
    f.ok(import("S1", "r2", 10));
    f.ok(import("S9", "r1", 11));
    assert_eq!((f.changed("r1"), f.changed("r2")), (imported, 0));
    assert!(imported > registered);
}

/// A state in which nodes were registered, moved, moved back, patched, imported and checked
/// in by agents, plus a revoked agent and a used and an unused enrollment token.
fn busy_fleet() -> Fleet {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    f.ok(register(2, "S2", "r1"));
    f.ok(register(3, "S3", "r2"));
    f.ok(register(1, "S1", "r2"));
    f.ok(register(2, "S2", "r2"));
    f.ok(register(2, "S2", "r1"));
    f.ok(patch_tags(node_id(3), &["gpu"]));
    f.ok(import("S2", "r1", 4));
    f.ok(import("S8", "r2", 5));
    f.enroll("r1", "fp-1");
    f.enroll("r2", "fp-2");
    f.send("r1", [check_in(1, "S5", &[5], json!({"a": 1}))]);
    f.send("r2", [check_in(1, "S5", &[5], json!({}))]);
    f.send("r2", leases(2..=3, 0));
    f.ok(link_report("r2"));
    f.ok(renew("r2", "fp-2", "fp-3", NOT_AFTER));
    f.ok(Command::RevokeAgent(rack("r1")));
    f.ok(Command::CreateEnrollToken(token("r1", "spare")));
    f.ok(import("S1", "r2", 6));
    f.state.take_dirty();
    f
}

#[test]
fn rebuilt_indexes_reproduce_rack_nodes_and_rack_changed() {
    let f = busy_fleet();
    assert!(!f.state.departures.is_empty() && !f.state.leases.is_empty());
    let reloaded = reload_objects(&f.state);
    let racks = ["r1", "r2", "r9"];
    for r in racks {
        let live: Vec<_> = f.state.rack_node_ids(&rack(r)).collect();
        let rebuilt: Vec<_> = reloaded.rack_node_ids(&rack(r)).collect();
        assert_eq!(rebuilt, live, "rack_node_ids({r})");
        assert_eq!(
            reloaded.rack_changed(&rack(r)),
            f.state.rack_changed(&rack(r)),
            "rack_changed({r})"
        );
    }
    assert_ne!(f.changed("r1"), 0);
    assert_eq!(reloaded.departures, f.state.departures);
    assert_eq!(reloaded.agents, f.state.agents);
    assert_eq!(reloaded.enroll_tokens, f.state.enroll_tokens);
    assert_eq!(reloaded.leases, f.state.leases);
    assert_eq!(reloaded.nodes, f.state.nodes);
}

#[test]
fn rebuilt_state_equals_the_live_one_after_a_move() {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    f.ok(register(1, "S1", "r2"));
    f.state.take_dirty();
    let mut rebuilt = f.state.clone();
    rebuilt.rebuild_indexes();
    assert_eq!(rebuilt, f.state);
}

#[test]
fn deleting_inventory_of_a_registered_node_bumps_its_rack() {
    let mut f = Fleet::new();
    f.ok(register(1, "S1", "r1"));
    f.ok(import("S1", "r1", 10));
    f.ok(Command::DeleteInventory(id("S1")));
    let deleted = f.rev;
    assert_eq!(
        f.changed("r1"),
        deleted,
        "its agent must drop the BMC and addresses"
    );
    f.state.take_dirty();
    let reloaded = reload_objects(&f.state);
    assert_eq!(reloaded.rack_changed(&rack("r1")), f.changed("r1"));
}
