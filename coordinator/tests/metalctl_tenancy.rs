//! Golden files for `metalctl`'s tenancy tables (networks, jobs, ports, leases): pure
//! rendering of fixed API answers, shaped as the API serialises them.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p coordinator --test metalctl_tenancy` and
//! review the diff.
#![allow(clippy::unwrap_used)]

use coordinator::cli::render::{render, View};
use coordinator::cli::tenancy::TenancyView as T;
use serde_json::{json, Value};

mod golden_support;
use golden_support::golden;

/// The "now" relative times count from (2023-11-14T22:13:20Z), as in tests/metalctl.rs.
const NOW: i64 = 1_700_000_000_000;

fn show(view: T, v: &Value) -> String {
    render(View::Tenancy(view), v, NOW).unwrap()
}

const NODE: &str = "00000000-0000-0000-0000-000000000001";

#[test]
fn golden_networks() {
    let v = json!([
        {"name": "prov", "kind": "provisioning", "owner": null, "access": [], "vlan": 10,
         "created_at": NOW - 86_400_000, "revision": 3},
        {"name": "blue-net", "kind": "tenant", "owner": "blue", "access": ["green", "red"],
         "vlan": 100, "created_at": NOW - 60_000, "revision": 12}
    ]);
    golden("tenancy_network_list", &show(T::Networks, &v));
    golden("tenancy_network_get", &show(T::Network, &v[1]));
}

#[test]
fn golden_jobs() {
    let attach = json!({
        "id": 42, "node": NODE, "projects": ["blue"],
        "kind": {"attach": {"nic": "eno1", "network": "blue-net", "mode": "access"}},
        "state": "failed",
        "ports": [{"switch": "tor1", "port": "Ethernet1/12", "nic": "eno1",
                   "config": {"mode": "access", "vlan": 100}, "generation": 42,
                   "state": "failed", "observed": null,
                   "message": "switch tor1: VLAN 100 does not exist"}],
        "power": null, "error": "switch tor1 port Ethernet1/12: switch tor1: VLAN 100 does not exist",
        "actor": "user:alice", "created_at": NOW - 5000, "updated_at": NOW - 3000, "revision": 44
    });
    let mv = json!({
        "id": 50, "node": NODE, "projects": ["blue", "green"],
        "kind": {"move": {"to": "green", "from": "blue",
                          "attach": [{"nic": "eno1", "network": "green-net", "mode": "trunk"}],
                          "power_on": true, "phase": "attach", "lease": null}},
        "state": "running",
        "ports": [{"switch": "tor1", "port": "Ethernet1/12", "nic": "eno1",
                   "config": {"mode": "trunk", "native": null, "allowed": [101, 102]},
                   "generation": 53, "state": "pending", "observed": null, "message": ""}],
        "power": null, "error": null,
        "actor": "user:admin", "created_at": NOW - 120_000, "updated_at": NOW - 1000, "revision": 53
    });
    let power = json!({
        "id": 51, "node": NODE, "projects": ["green"], "kind": {"power": {"on": true}},
        "state": "done", "ports": [],
        "power": {"on": true, "generation": 51, "state": "done", "message": ""},
        "error": null, "actor": "user:bob", "created_at": NOW - 9000, "updated_at": NOW - 8000,
        "revision": 52
    });
    golden(
        "tenancy_job_list",
        &show(T::Jobs, &json!([power.clone(), mv.clone(), attach.clone()])),
    );
    golden("tenancy_job_get_failed", &show(T::Job, &attach));
    golden("tenancy_job_get_move", &show(T::Job, &mv));
    golden("tenancy_job_get_power", &show(T::Job, &power));
}

#[test]
fn golden_ports() {
    let v = json!([
        {"rack": "r1", "switch": "tor1", "port": "Ethernet1/13", "node": NODE, "nic": "eno2",
         "attachments": {"blue-net": "access", "shared": "trunk"},
         "config": {"mode": "trunk", "native": 100, "allowed": [100, 300]},
         "generation": 61, "applied_generation": 60, "applied_ok": false,
         "observed": null, "message": "port is err-disabled", "job": 61, "revision": 61},
        {"rack": "r1", "switch": "tor1", "port": "Ethernet1/12", "node": NODE, "nic": "eno1",
         "attachments": {}, "config": {"mode": "unconfigured"},
         "generation": 40, "applied_generation": 40, "applied_ok": true,
         "observed": {"mode": "unconfigured"}, "message": "", "job": null, "revision": 40}
    ]);
    golden("tenancy_ports", &show(T::Ports, &v));
}

#[test]
fn golden_leases() {
    let v = json!([
        {"id": 80, "node": NODE, "project": "green", "owner": "blue",
         "window": {"start": "00:00", "end": "06:00", "tz": "UTC"},
         "state": "away", "job": null, "cancelled": false, "actor": "user:alice",
         "created_at": NOW - 3_600_000, "revision": 80,
         "serial": "SN-0001", "power_on": false, "lent": false},
        {"id": 70, "node": NODE, "project": "red", "owner": null,
         "window": {"from": NOW - 60_000, "until": NOW + 3_600_000},
         "state": "active", "job": null, "cancelled": false, "actor": "user:admin",
         "created_at": NOW - 120_000, "revision": 75,
         "serial": "SN-0002", "power_on": true, "lent": true}
    ]);
    golden("tenancy_lease_list", &show(T::Leases, &v));
    golden("tenancy_lease_get", &show(T::Lease, &v[0]));
}

#[test]
fn a_wrong_shape_is_an_error_not_a_table() {
    assert!(render(View::Tenancy(T::Jobs), &json!({"id": 1}), NOW).is_err());
}
