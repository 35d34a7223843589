//! Workflows, runs, rollouts and node timelines over the REST API of three real `coordinator`
//! processes, with a real enrolled `rack-agent` per rack: runs and their control reach the
//! agent's stored desired state (its acknowledged revision passes the assignment's), and the
//! agent reports run progress through its real outbox and fleet link — the test speaks for
//! the executor through the agent's control socket (`emit`), as `tests/src/agent.rs` allows.
//!
//! Covered: template put, versions and validation errors naming template/step/field; the run
//! lifecycle (one active run per node, pause, cancel, logs, final status, the run leaving the
//! agent's state); RBAC (a project member starts runs only on its nodes; read-only changes
//! nothing; members cannot manage templates or rollouts); a rollout whose per-rack and
//! overall limits hold at every observed moment; the failure budget pausing a rollout; abort;
//! the node timeline and `metalctl node events`/`rollout watch`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use metalfleet_tests::agent::Agent;
use metalfleet_tests::{poll, Api, Cluster, Method, StatusCode};
use serde_json::{json, Value};

/// Bound of waits on the fleet link and on the agents' reports.
const LINK: Duration = Duration::from_secs(45);

/// A plan an executor would hold in its first step: nothing in the test emits `never`.
const HOLD: &str = "apiVersion: metalfleet/v1
kind: Workflow
name: hold
version: 1
params:
  wait: { type: duration, default: 1h }
steps:
  - name: wait-never
    kind: node.wait
    with: { for: { event: never } }
    timeout: \"{{ wait }}\"
  - name: stress
    kind: node.run
    with: { command: stress-ng }
";

async fn ok(r: anyhow::Result<metalfleet_tests::Resp>) -> Value {
    r.unwrap().ok().unwrap()
}

async fn put_yaml(api: &Api, name: &str, yaml: &str) -> (StatusCode, Value) {
    let r = api
        .request(Method::PUT, &format!("/v1/workflows/{name}"))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn user(admin: &Api, name: &str, role: &str, project: Option<&str>) -> (Api, String) {
    admin.create_user(name, role, project).await.unwrap()
}

/// Runs the real `metalctl` against member 1 with `token`; returns (exit code, stdout, stderr).
async fn metalctl(c: &Cluster, token: &str, args: &[&str]) -> (i32, String, String) {
    c.metalctl(token, args).await.unwrap()
}

/// The status an executor would report: steps before `step` succeeded, `step` in
/// `step_state`, the rest pending.
fn status(run: &Value, state: &str, step: usize, step_state: &str) -> Value {
    let steps: Vec<Value> = run["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (st, attempts) = match i.cmp(&step) {
                std::cmp::Ordering::Less => ("succeeded", 1),
                std::cmp::Ordering::Equal => (step_state, 1),
                std::cmp::Ordering::Greater => ("pending", 0),
            };
            json!({"name": s["name"], "state": st, "attempts": attempts, "started_at": null,
                   "finished_at": null, "exit_code": null, "progress": null,
                   "message": (st == "failed").then_some("exit code 3")})
        })
        .collect();
    json!({"state": state, "current": step, "steps": steps, "started_at": null,
           "finished_at": null, "message": null})
}

struct Fleet {
    cluster: Cluster,
    admin: Api,
    admin_token: String,
    agents: BTreeMap<String, Agent>,
    /// Node ids by serial.
    nodes: BTreeMap<String, String>,
}

impl Fleet {
    /// Site `s1`, racks `r1` and `r2` with an enrolled running agent each, nodes `A1`..`A3` in
    /// `r1` and `B1`..`B3` in `r2`; `A1` belongs to project `p`.
    async fn start() -> Fleet {
        let cluster = Cluster::start(3).await.unwrap();
        let admin = cluster.api(1);
        let admin_token = cluster.admin_token().to_owned();
        ok(admin.put("/v1/sites/s1", &json!({"name": "s1"})).await).await;
        ok(admin.put("/v1/projects/p", &json!({"name": "p"})).await).await;
        let mut nodes = BTreeMap::new();
        let mut agents = BTreeMap::new();
        for (rack, prefix) in [("r1", "A"), ("r2", "B")] {
            ok(admin
                .put(
                    &format!("/v1/racks/{rack}"),
                    &json!({"name": rack, "site": "s1"}),
                )
                .await)
            .await;
            for n in 1..=3 {
                let serial = format!("{prefix}{n}");
                let v = ok(admin
                    .post("/v1/nodes", &json!({"serial": serial, "rack": rack}))
                    .await)
                .await;
                nodes.insert(serial, v["id"].as_str().unwrap().to_owned());
            }
            let agent = Agent::new(&cluster, rack).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(agent.config_path())
                .unwrap();
            writeln!(f, "\n[bmc]\nsimulate = true").unwrap();
            let t = ok(admin
                .post(&format!("/v1/racks/{rack}/enroll-tokens"), &json!({}))
                .await)
            .await;
            agent.enroll(t["token"].as_str().unwrap()).await.unwrap();
            agent.start().await.unwrap();
            agent
                .wait_status(LINK, "the link to come up", |s| s["connected"] == true)
                .await
                .unwrap();
            agents.insert(rack.to_owned(), agent);
        }
        ok(admin
            .post(
                &format!("/v1/nodes/{}/allocate", nodes["A1"]),
                &json!({"project": "p"}),
            )
            .await)
        .await;
        Fleet {
            cluster,
            admin,
            admin_token,
            agents,
            nodes,
        }
    }

    async fn run(&self, id: &str) -> Value {
        ok(self.admin.get(&format!("/v1/runs/{id}")).await).await
    }

    /// Reports `status` of run `run` through its rack agent's outbox and fleet link.
    async fn report(&self, run: &Value, status: Value) {
        let rack = run["rack"].as_str().unwrap();
        self.agents[rack]
            .emit(&[
                json!({"RunStatus": {"run": run["id"], "node": run["node"], "status": status}}),
            ])
            .await
            .unwrap();
    }

    /// Waits until the coordinators recorded run `id` in `state`.
    async fn wait_run(&self, id: &str, state: &str) -> Value {
        poll(LINK, &format!("run {id} to be {state}"), || async {
            let r = self
                .admin
                .get(&format!("/v1/runs/{id}"))
                .await
                .ok()?
                .ok()
                .ok()?;
            (r["status"]["state"] == state).then_some(r)
        })
        .await
        .unwrap()
    }

    /// Waits until the agent of `rack` stored revision `rev` of its desired state.
    async fn agent_has(&self, rack: &str, rev: u64) {
        poll(
            LINK,
            &format!("agent of {rack} to store revision {rev}"),
            || async {
                let agents = self.admin.get("/v1/agents").await.ok()?.ok().ok()?;
                agents
                    .as_array()?
                    .iter()
                    .find(|a| a["rack"] == rack)
                    .filter(|a| a["revision"].as_u64().unwrap_or(0) >= rev)
                    .map(|_| ())
            },
        )
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_runs_rollouts_and_timelines() {
    let f = Fleet::start().await;
    let (member, member_token) = user(&f.admin, "mia", "project_member", Some("p")).await;
    let (reader, _) = user(&f.admin, "rita", "read_only", None).await;

    // --- Templates: validation errors name template, step and field; versions are kept.
    let bad = HOLD.replace("timeout: \"{{ wait }}\"", "timeout: 5 minutes");
    let (st, body) = put_yaml(&f.admin, "hold", &bad).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "hold/steps[0](wait-never).timeout", "{body}");
    let (st, body) = put_yaml(&f.admin, "other", HOLD).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "name", "{body}");
    let (st, body) = put_yaml(&member, "hold", HOLD).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, body) = put_yaml(&f.admin, "hold", HOLD).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["versions"], json!([1]));
    // The same text again is a no-op; other text under version 1 is refused.
    assert_eq!(put_yaml(&f.admin, "hold", HOLD).await.0, StatusCode::OK);
    let changed = HOLD.replace("stress-ng", "fio");
    let (st, body) = put_yaml(&f.admin, "hold", &changed).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    let v2 = changed.replace("version: 1", "version: 2");
    let (st, body) = put_yaml(&f.admin, "hold", &v2).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["versions"], json!([1, 2]));
    let one = ok(f.admin.get("/v1/workflows/hold?version=1").await).await;
    assert_eq!(one["source"], HOLD);
    // Includes resolve against stored templates.
    let parent = "apiVersion: metalfleet/v1\nkind: Workflow\nname: parent\nversion: 1\n\
                  include:\n  - { template: missing, version: 1 }\nsteps: []\n";
    let (st, body) = put_yaml(&f.admin, "parent", parent).await;
    assert!(st.is_client_error(), "{st}: {body}");
    assert!(
        body["message"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let list = ok(reader.get("/v1/workflows").await).await;
    assert_eq!(list[0]["name"], "hold");

    // --- Runs: start, one active run per node, RBAC.
    let (a1, a2) = (f.nodes["A1"].clone(), f.nodes["A2"].clone());
    let r = f
        .admin
        .post(
            "/v1/runs",
            &json!({"workflow": "hold", "version": 1, "params": {"wait": "2h"}, "nodes": ["A2"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let run = r.body[0].clone();
    let run_id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["node"], a2.as_str());
    assert_eq!(run["plan"]["params"]["wait"], "2h");
    f.agent_has("r1", run["revision"].as_u64().unwrap()).await;
    let again = f
        .admin
        .post(
            "/v1/runs",
            &json!({"workflow": "hold", "nodes": [a2.clone()]}),
        )
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let theirs = member
        .post("/v1/runs", &json!({"workflow": "hold", "nodes": ["A2"]}))
        .await
        .unwrap();
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.body);
    let ro = reader
        .post("/v1/runs", &json!({"workflow": "hold", "nodes": ["A3"]}))
        .await
        .unwrap();
    assert_eq!(ro.status, StatusCode::FORBIDDEN, "{}", ro.body);
    let mine = member
        .post("/v1/runs", &json!({"workflow": "hold", "nodes": ["A1"]}))
        .await
        .unwrap();
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.body);
    let mine_id = mine.body[0]["id"].as_str().unwrap().to_owned();
    let seen = ok(member.get("/v1/runs").await).await;
    assert_eq!(seen.as_array().unwrap().len(), 1, "{seen}");
    assert_eq!(seen[0]["node"], a1.as_str());
    assert_eq!(
        member
            .get(&format!("/v1/runs/{run_id}"))
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );

    // Pause reaches the agent's desired state at a new revision; resume.
    let paused = ok(f
        .admin
        .post(&format!("/v1/runs/{run_id}/pause"), &json!({}))
        .await)
    .await;
    assert_eq!(paused["control"], "pause");
    assert!(paused["revision"].as_u64() > run["revision"].as_u64());
    f.agent_has("r1", paused["revision"].as_u64().unwrap())
        .await;
    let resumed = ok(f
        .admin
        .post(&format!("/v1/runs/{run_id}/resume"), &json!({}))
        .await)
    .await;
    assert_eq!(resumed["control"], "run");

    // Progress and logs through the agent's outbox.
    f.report(&run, status(&run, "running", 0, "running")).await;
    f.report(&run, status(&run, "running", 1, "running")).await;
    f.agents["r1"]
        .emit(&[
            json!({"StepLog": {"run": run_id, "node": a2, "step": "stress",
                                    "lines": ["stress-ng: starting", "stress-ng: 10%"]}}),
        ])
        .await
        .unwrap();
    poll(LINK, "the step log", || async {
        let l = f
            .admin
            .get(&format!("/v1/runs/{run_id}/logs?step=stress"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (l[0]["lines"] == json!(["stress-ng: starting", "stress-ng: 10%"])).then_some(())
    })
    .await
    .unwrap();
    let r = f.wait_run(&run_id, "running").await;
    assert_eq!(r["status"]["current"], 1);
    let filtered = ok(f.admin.get("/v1/runs?node=A2&state=running").await).await;
    assert_eq!(filtered[0]["id"], run_id.as_str());

    // The final status is recorded; the run leaves the agent's state; a new run may start.
    f.report(&run, status(&run, "succeeded", 1, "succeeded"))
        .await;
    let done = f.wait_run(&run_id, "succeeded").await;
    assert!(done["removed_at"].is_u64(), "{done}");
    f.agent_has("r1", done["revision"].as_u64().unwrap()).await;

    // Cancel: the control reaches the agent; the run ends when the agent reports it.
    let cancelled = ok(member
        .post(&format!("/v1/runs/{mine_id}/cancel"), &json!({}))
        .await)
    .await;
    assert_eq!(cancelled["control"], "cancel");
    f.agent_has("r1", cancelled["revision"].as_u64().unwrap())
        .await;
    f.report(&cancelled, status(&cancelled, "cancelled", 0, "cancelled"))
        .await;
    f.wait_run(&mine_id, "cancelled").await;
    assert_eq!(
        f.admin
            .post(&format!("/v1/runs/{mine_id}/resume"), &json!({}))
            .await
            .unwrap()
            .status,
        StatusCode::CONFLICT
    );

    // Delete is refused while a run uses the template.
    let busy = f
        .admin
        .post("/v1/runs", &json!({"workflow": "hold", "nodes": ["A3"]}))
        .await
        .unwrap();
    assert_eq!(busy.status, StatusCode::CREATED, "{}", busy.body);
    let del = f
        .admin
        .delete("/v1/workflows/hold?version=2")
        .await
        .unwrap();
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.body);
    let busy_run = busy.body[0].clone();
    f.report(&busy_run, status(&busy_run, "failed", 0, "failed"))
        .await;
    f.wait_run(busy_run["id"].as_str().unwrap(), "failed").await;

    // --- Timeline: run and step transitions, log summary; metalctl shows it.
    let tl = ok(f.admin.get(&format!("/v1/nodes/{a2}/events")).await).await;
    let kinds: Vec<(String, String)> = tl
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step")
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("wait-never".to_owned(), "running".to_owned()),
            ("wait-never".into(), "succeeded".into()),
            ("stress".into(), "running".into()),
            ("stress".into(), "succeeded".into()),
        ],
        "{tl}"
    );
    assert!(tl
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "step_log"));
    assert!(tl
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["revision"].is_u64()));
    let (code, out, err) = metalctl(&f.cluster, &f.admin_token, &["node", "events", "A2"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stress") && out.contains("succeeded"), "{out}");
    let (code, out, err) = metalctl(
        &f.cluster,
        &member_token,
        &["-o", "json", "node", "events", "A1"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|e| e["state"] == "cancelled"),
        "{v}"
    );

    // --- Rollouts: limits hold at every observed moment; the budget pauses; abort.
    let r = member
        .post(
            "/v1/rollouts",
            &json!({"workflow": "hold", "selector": {}, "max_in_flight": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = f
        .admin
        .post(
            "/v1/rollouts",
            &json!({"workflow": "hold", "selector": {"site": "s1"}, "max_in_flight": 3,
                    "max_per_rack": 1, "failure_budget": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    assert_eq!(r.body["progress"]["total"], 6);
    let mut reported = std::collections::BTreeSet::new();
    let mut failures = 0;
    loop {
        let ro = ok(f.admin.get(&format!("/v1/rollouts/{id}")).await).await;
        let running: Vec<&Value> = ro["progress"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| matches!(n["state"].as_str(), Some("pending" | "running")))
            .collect();
        let mut per_rack: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &running {
            *per_rack.entry(n["rack"].as_str().unwrap()).or_default() += 1;
        }
        assert!(running.len() <= 3, "{ro}");
        assert!(
            per_rack.values().all(|n| *n <= 1),
            "max_per_rack exceeded: {ro}"
        );
        if ro["state"] == "paused" {
            assert!(
                ro["reason"].as_str().unwrap().contains("failure budget"),
                "{ro}"
            );
            assert_eq!(failures, 2);
            break;
        }
        assert_eq!(ro["state"], "running", "{ro}");
        // End every run not reported yet: the first two fail, the others succeed.
        for n in running {
            let rid = n["run"].as_str().unwrap().to_owned();
            if !reported.insert(rid.clone()) {
                continue;
            }
            let run = f.run(&rid).await;
            let (state, step_state) = if failures < 2 {
                failures += 1;
                ("failed", "failed")
            } else {
                ("succeeded", "succeeded")
            };
            f.report(&run, status(&run, state, 0, step_state)).await;
            f.wait_run(&rid, state).await;
        }
    }
    // Paused: nothing new starts (the other nodes are untouched).
    let before = ok(f.admin.get(&format!("/v1/rollouts/{id}")).await).await;
    let waiting = before["progress"]["counts"]["waiting"]
        .as_u64()
        .unwrap_or(0);
    assert!(waiting > 0, "{before}");
    // Resume with a new budget, then abort: running runs are cancelled, waiting nodes dropped.
    let resumed = ok(f
        .admin
        .post(
            &format!("/v1/rollouts/{id}/resume"),
            &json!({"failure_budget": 5}),
        )
        .await)
    .await;
    assert_eq!(resumed["state"], "running");
    let aborted = ok(f
        .admin
        .post(&format!("/v1/rollouts/{id}/abort"), &json!({}))
        .await)
    .await;
    assert_eq!(aborted["state"], "aborted");
    for n in aborted["progress"]["nodes"].as_array().unwrap() {
        if let Some(rid) = n["run"].as_str() {
            let run = f.run(rid).await;
            if run["status"]["state"] == "pending" {
                assert_eq!(run["control"], "cancel", "{run}");
            }
        } else {
            assert_eq!(n["state"], "skipped", "{n}");
        }
    }
    let (code, _, err) = metalctl(
        &f.cluster,
        &f.admin_token,
        &["rollout", "watch", &id.to_string()],
    )
    .await;
    assert_ne!(code, 0, "an aborted rollout fails the watch: {err}");
}
