//! Golden files for `metalctl`'s workflow tables (templates, runs, logs, node timelines,
//! rollouts and the `rollout watch` display): pure rendering of fixed API answers, shaped as
//! the API serialises them.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p coordinator --test metalctl_runs` and review
//! the diff.
#![allow(clippy::unwrap_used)]

use coordinator::cli::runs;
use serde_json::{json, Value};

mod golden_support;
use golden_support::golden;

/// The "now" relative times count from (2023-11-14T22:13:20Z), as in tests/metalctl.rs.
const NOW: i64 = 1_700_000_000_000;
const NODE: &str = "00000000-0000-0000-0000-000000000001";
const NODE2: &str = "00000000-0000-0000-0000-000000000002";

fn run() -> Value {
    json!({
        "id": "41-0", "node": NODE, "rack": "r1", "project": null, "workflow": "buildout",
        "version": 2, "plan": {"template": "buildout", "version": 2, "params": {}, "steps": []},
        "control": "run",
        "status": {"state": "running", "current": 1, "started_at": NOW - 60_000,
                   "finished_at": null, "message": null, "steps": [
            {"name": "discovery/boot", "state": "succeeded", "attempts": 1,
             "started_at": NOW - 60_000, "finished_at": NOW - 50_000, "exit_code": null,
             "progress": null, "message": null},
            {"name": "testing/drive-stress", "state": "running", "attempts": 2,
             "started_at": NOW - 40_000, "finished_at": null, "exit_code": null,
             "progress": {"percent": 43, "message": "fio: 31h of 72h", "at": NOW - 1000},
             "message": "exit code 1"},
            {"name": "install/os", "state": "pending", "attempts": 0, "started_at": null,
             "finished_at": null, "exit_code": null, "progress": null, "message": null}
        ]},
        "rollout": 40, "actor": "rollout", "created_at": NOW - 61_000, "updated_at": NOW - 1000,
        "created_revision": 41, "revision": 41, "removed_at": null
    })
}

fn rollout() -> Value {
    json!({
        "id": 40, "workflow": "buildout", "version": 2, "state": "paused",
        "reason": "failure budget exceeded: 2 failed run(s), budget 1",
        "max_in_flight": 4, "max_per_rack": 2, "failure_budget": 1, "failed": 2,
        "actor": "user:admin", "created_at": NOW - 3_600_000, "updated_at": NOW - 5000,
        "progress": {"total": 4,
            "counts": {"running": 1, "failed": 2, "waiting": 1},
            "racks": {"r1": {"running": 1, "failed": 1}, "r2": {"failed": 1, "waiting": 1}},
            "nodes": [
                {"node": NODE, "rack": "r1", "run": "41-0", "state": "running",
                 "step": "testing/drive-stress", "message": null},
                {"node": NODE2, "rack": "r1", "run": "41-1", "state": "failed",
                 "step": "testing/raid", "message": "perccli: exit code 3"},
                {"node": "00000000-0000-0000-0000-000000000003", "rack": "r2", "run": "41-2",
                 "state": "failed", "step": "discovery/pin-ip", "message": "no lease"},
                {"node": "00000000-0000-0000-0000-000000000004", "rack": "r2", "run": null,
                 "state": "waiting", "step": null, "message": null}
            ]}
    })
}

#[test]
fn golden_workflows_and_runs() {
    let w = json!([{"name": "buildout", "versions": [1, 2], "description": "the whole buildout",
                    "updated_at": NOW - 1000},
                   {"name": "hold", "versions": [1], "description": "", "updated_at": NOW}]);
    golden("runs_workflow_list", &runs::workflows(&w));
    golden("runs_run_list", &runs::runs(&json!([run()]), NOW));
    golden("runs_run_get", &runs::run_detail(&run(), NOW));
    let logs = json!([{"step": "testing/drive-stress", "lines": ["fio: start", "fio: 43%"],
                       "dropped": 12}]);
    golden("runs_logs", &runs::logs(&logs));
}

#[test]
fn golden_node_events() {
    let e = json!([
        {"at": NOW - 90_000, "revision": 30, "rack": "r1", "seq": 7, "kind": "check_in",
         "run": null, "step": null, "attempt": null, "state": null,
         "message": "checked in as S1 (52:54:00:00:0b:01)"},
        {"at": NOW - 61_000, "revision": 41, "rack": null, "seq": null, "kind": "run",
         "run": "41-0", "step": null, "attempt": null, "state": "pending",
         "message": "run 41-0 of buildout v2 started by rollout 40"},
        {"at": NOW - 40_000, "revision": 45, "rack": "r1", "seq": 9, "kind": "step",
         "run": "41-0", "step": "testing/drive-stress", "attempt": 2, "state": "running",
         "message": "step testing/drive-stress running (attempt 2)"},
        {"at": NOW - 5000, "revision": 50, "rack": null, "seq": null, "kind": "job",
         "run": null, "step": null, "attempt": null, "state": "done", "message": "job 50 power"}
    ]);
    golden("runs_node_events", &runs::events(&e, NOW));
}

#[test]
fn golden_rollouts_and_watch() {
    golden(
        "runs_rollout_list",
        &runs::rollouts(&json!([rollout()]), NOW),
    );
    golden("runs_rollout_get", &runs::rollout_detail(&rollout(), NOW));
    golden("runs_rollout_watch", &runs::watch_screen(&rollout(), NOW));
    golden("runs_rollout_watch_line", &runs::watch_line(&rollout()));
}
