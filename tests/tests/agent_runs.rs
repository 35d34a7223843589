//! A run started through the REST API executes in a real enrolled `rack-agent` while every
//! coordinator is down: the run's steps keep progressing (an `http.call` to a webhook the
//! test serves, `boot.set`, a second `http.call`), its RunStatus/StepLog events queue in the
//! agent's outbox, and once the coordinators return they drain and are applied once (the
//! rack's applied event count equals its last sequence number; the run is recorded as
//! succeeded with its step logs; each webhook was called once).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalfleet_tests::agent::Agent;
use metalfleet_tests::{poll, Cluster, Method};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;

const LINK: Duration = Duration::from_secs(60);

/// A webhook server: counts calls per path; `/hold` answers only once released.
#[derive(Default)]
struct Hooks {
    calls: Mutex<BTreeMap<String, u32>>,
    release: Notify,
}

impl Hooks {
    fn calls(&self, path: &str) -> u32 {
        self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn serve(listener: tokio::net::TcpListener, hooks: Arc<Hooks>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let hooks = hooks.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body by Content-Length.
            let (head_end, len) = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (i + 4, len);
                }
            };
            while buf.len() < head_end + len {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let first = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let path = first
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            *hooks.calls.lock().unwrap().entry(path.clone()).or_default() += 1;
            if path == "/hold" {
                hooks.release.notified().await;
            }
            let body = "{\"ok\": true}";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

async fn ok(r: anyhow::Result<metalfleet_tests::Resp>) -> Value {
    r.unwrap().ok().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_progresses_with_every_coordinator_down_and_its_events_drain_once() {
    let hooks = Arc::new(Hooks::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(listener, hooks.clone()));

    let cluster = Cluster::start(1).await.unwrap();
    let admin = cluster.api(1);
    ok(admin.put("/v1/sites/s1", &json!({"name": "s1"})).await).await;
    ok(admin
        .put("/v1/racks/r1", &json!({"name": "r1", "site": "s1"}))
        .await)
    .await;
    let node = ok(admin
        .post("/v1/nodes", &json!({"serial": "OFF1", "rack": "r1"}))
        .await)
    .await;
    let agent = Agent::new(&cluster, "r1").unwrap();
    let t = ok(admin.post("/v1/racks/r1/enroll-tokens", &json!({})).await).await;
    agent.enroll(t["token"].as_str().unwrap()).await.unwrap();
    agent.start().await.unwrap();
    agent
        .wait_status(LINK, "the link to come up", |s| s["connected"] == true)
        .await
        .unwrap();

    let yaml = format!(
        "apiVersion: metalfleet/v1\nkind: Workflow\nname: offline\nversion: 1\nsteps:\n\
         \x20 - name: hold\n    kind: http.call\n    with: {{ url: \"{hook_url}/hold\" }}\n    timeout: 10m\n\
         \x20 - name: disk\n    kind: boot.set\n    with: {{ target: {{ kind: local }} }}\n\
         \x20 - name: done\n    kind: http.call\n    with: {{ url: \"{hook_url}/done\" }}\n"
    );
    let r = admin
        .request(Method::PUT, "/v1/workflows/offline")
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    let st = r.status();
    assert!(st.is_success(), "{st}: {}", r.text().await.unwrap());
    let runs = ok(admin
        .post(
            "/v1/runs",
            &json!({"workflow": "offline", "nodes": [node["id"]]}),
        )
        .await)
    .await;
    let run_id = runs[0]["id"].as_str().unwrap().to_owned();

    // The agent executes the first step: the webhook is called. Every coordinator goes
    // away before it answers.
    poll(LINK, "the first webhook call", || async {
        (hooks.calls("/hold") == 1).then_some(())
    })
    .await
    .unwrap();
    cluster.kill(1).unwrap();
    hooks.release.notify_one();
    // The run goes on offline: the last step calls the second webhook.
    poll(LINK, "the last step's webhook call", || async {
        (hooks.calls("/done") == 1).then_some(())
    })
    .await
    .unwrap();
    let offline = agent
        .wait_status(LINK, "run events queued offline", |s| {
            s["connected"] == false && s["outbox_depth"].as_u64().unwrap_or(0) > 0
        })
        .await
        .unwrap();
    assert!(offline["outbox_depth"].as_u64().unwrap() > 0, "{offline}");

    // The coordinators return: the queue drains and every event is applied once.
    cluster.restart(1).await.unwrap();
    let run = poll(LINK, "the run recorded as succeeded", || async {
        let r = admin
            .get(&format!("/v1/runs/{run_id}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (r["status"]["state"] == "succeeded").then_some(r)
    })
    .await
    .unwrap();
    for s in run["status"]["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "succeeded", "{run}");
    }
    let status = agent
        .wait_status(LINK, "the outbox to drain", |s| {
            s["connected"] == true && s["outbox_depth"] == 0
        })
        .await
        .unwrap();
    let last_acked = status["last_acked_seq"].as_u64().unwrap();
    assert_eq!(status["next_seq"].as_u64().unwrap(), last_acked + 1);
    let view = poll(LINK, "the rack's applied events", || async {
        let agents = admin.get("/v1/agents").await.ok()?.ok().ok()?;
        agents
            .as_array()?
            .iter()
            .find(|a| a["rack"] == "r1" && a["last_seq"].as_u64() == Some(last_acked))
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(view["events_applied"], view["last_seq"], "{view}");
    let logs = ok(admin.get(&format!("/v1/runs/{run_id}/logs")).await).await;
    assert!(
        logs.as_array().unwrap().iter().any(|l| l["step"] == "done"),
        "{logs}"
    );
    assert_eq!(hooks.calls("/hold"), 1);
    assert_eq!(hooks.calls("/done"), 1);

    agent.kill().unwrap();
    server.abort();
}
