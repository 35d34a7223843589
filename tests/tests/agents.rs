//! The rack agent spine end to end: real `coordinator` and `rack-agent` processes talking
//! QUIC with mutual TLS on loopback. Enrollment and its refusals, the fleet endpoint refusing
//! a certificate used for another rack and a revoked agent, an agent SIGKILLed mid-stream
//! resuming from its stored revision with deltas only, events queued while every coordinator
//! is down applied exactly once, and event delivery across a leader kill.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metalfleet_tests::agent::Agent;
use metalfleet_tests::{poll, wait_until, Api, Cluster, StatusCode};
use serde_json::{json, Value};

/// Bound of waits on the fleet link: a dead peer is noticed by the QUIC idle timeout (10 s),
/// reconnecting may meet a handshake timeout (5 s) and backoff (at most 5 s).
const LINK: Duration = Duration::from_secs(45);
/// Bound of waits on what a coordinator records about a link: it reports every 10 s.
const REPORT: Duration = Duration::from_secs(30);
/// Bound of waits on event delivery after an outage or a leader kill (election, reconnect).
const DELIVERY: Duration = Duration::from_secs(90);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Site `s1` with `racks`.
async fn setup(api: &Api, racks: &[&str]) {
    api.put("/v1/sites/s1", &json!({"name": "s1"}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    for rack in racks {
        api.put(
            &format!("/v1/racks/{rack}"),
            &json!({"name": rack, "site": "s1"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    }
}

/// `POST /v1/racks/{rack}/enroll-tokens`; the created token's JSON.
async fn create_token(api: &Api, rack: &str, expires_in_secs: Option<u64>) -> Value {
    let body = match expires_in_secs {
        Some(secs) => json!({"expires_in_secs": secs}),
        None => json!({}),
    };
    let r = api
        .post(&format!("/v1/racks/{rack}/enroll-tokens"), &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["rack"], rack, "{}", r.body);
    let token = r.body["token"].as_str().unwrap();
    assert!(token.starts_with("mfe_"), "{token}");
    r.body
}

async fn token(api: &Api, rack: &str) -> String {
    create_token(api, rack, None).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An agent for `rack`, enrolled through member 1 and running.
async fn enrolled_agent(c: &Cluster, rack: &str) -> Agent {
    let a = Agent::new(c, rack).unwrap();
    a.enroll(&token(&c.api(1), rack).await).await.unwrap();
    a.start().await.unwrap();
    a.wait_status(LINK, "the link to come up", |s| s["connected"] == true)
        .await
        .unwrap();
    a
}

/// The API of the leader, or of some running member when there is none.
async fn live_api(c: &Cluster) -> Api {
    match c.leader_now().await {
        Some(id) => c.api(id),
        None => c.api(c.running().first().copied().unwrap_or(1)),
    }
}

/// The `GET /v1/agents` entry of `rack`, through a running member.
async fn agent_view(c: &Cluster, rack: &str) -> Option<Value> {
    let r = live_api(c).await.get("/v1/agents").await.ok()?;
    if !r.status.is_success() {
        return None;
    }
    r.body
        .as_array()?
        .iter()
        .find(|v| v["rack"] == rack)
        .cloned()
}

/// Polls `GET /v1/agents` until `rack`'s entry satisfies `cond`; calls `seen` with every
/// entry read on the way. Fails with the last entry seen.
async fn wait_view(
    c: &Cluster,
    rack: &str,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
    mut seen: impl FnMut(&Value),
) -> Value {
    let last = Mutex::new(Value::Null);
    let seen = Mutex::new(&mut seen);
    let r = poll(
        timeout,
        &format!("GET /v1/agents: {rack} {what}"),
        || async {
            let v = agent_view(c, rack).await?;
            if let Ok(mut f) = seen.lock() {
                (*f)(&v);
            }
            if cond(&v) {
                return Some(v);
            }
            *last.lock().unwrap() = v;
            None
        },
    )
    .await;
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:#}; last entry: {}", last.lock().unwrap()),
    }
}

/// `GET /v1/nodes?rack=…` through a running member.
async fn rack_nodes(c: &Cluster, rack: &str) -> Vec<Value> {
    let body = live_api(c)
        .await
        .get(&format!("/v1/nodes?rack={rack}"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    body.as_array().unwrap().clone()
}

fn serials(nodes: &[Value]) -> BTreeSet<String> {
    nodes
        .iter()
        .map(|n| n["serial"].as_str().unwrap().to_owned())
        .collect()
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Lines of `text` containing `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// The kind of a boot target in either JSON shape: the API's `{"kind": "local"}` or the
/// agent store's externally tagged `"Local"` / `{"Install": {...}}`.
fn boot_kind(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        Value::Object(o) => match o.get("kind") {
            Some(k) => k.as_str().unwrap_or_default().to_owned(),
            None => o.keys().next().cloned().unwrap_or_default().to_lowercase(),
        },
        other => panic!("unexpected boot target {other}"),
    }
}

/// A CheckIn event (the control socket's `EventKind` JSON) with a MAC derived from `i`.
fn checkin(prefix: &str, i: u32) -> Value {
    let [_, a, b, c] = i.to_be_bytes();
    json!({"CheckIn": {
        "serial": format!("{prefix}-{i:06}"),
        "macs": [format!("02:01:00:{a:02x}:{b:02x}:{c:02x}")],
        "facts": {"index": i},
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment() {
    let started = Instant::now();
    let c = Cluster::start(1).await.unwrap();
    let api = c.api(1);
    setup(&api, &["r1", "r2"]).await;

    // Happy path: enroll, run, connected; the coordinator lists it with its version.
    let tok = token(&api, "r1").await;
    let a = Agent::new(&c, "r1").unwrap();
    a.enroll(&tok).await.unwrap();
    assert!(a.has_certificate());
    a.start().await.unwrap();
    // The link counters are read a moment before the store: wait for the counter too.
    let s = a
        .wait_status(LINK, "connected with a snapshot", |s| {
            s["connected"] == true && s["snapshots_received"].as_u64() >= Some(1)
        })
        .await
        .unwrap();
    assert_eq!(s["rack"], "r1", "{s}");
    assert_eq!(s["coordinator"], 1, "{s}");
    assert_eq!(
        s["snapshots_received"], 1,
        "first contact is a snapshot: {s}"
    );
    assert_eq!(s["deltas_received"], 0, "{s}");
    assert!(u64_of(&s, "revision") > 0, "{s}");
    let v = wait_view(
        &c,
        "r1",
        REPORT,
        "enrolled and connected",
        |v| v["enrolled"] == true && v["connected"] == true,
        |_| {},
    )
    .await;
    assert_eq!(v["revoked"], false, "{v}");
    assert_eq!(v["coordinator"], 1, "{v}");
    assert!(v["cert_not_after"].as_i64().unwrap() > now_ms(), "{v}");
    let version = v["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("rack-agent "), "{v}");
    let r2_before = agent_view(&c, "r2").await.unwrap();
    assert_eq!(r2_before["enrolled"], false, "{r2_before}");
    assert_eq!(r2_before["connected"], false, "{r2_before}");

    // The same token again, from another agent directory: refused as used, no identity.
    let b = Agent::new(&c, "r1").unwrap();
    let exit = b.try_enroll(&tok).await.unwrap();
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(exit.stderr.contains("already used"), "{exit:?}");
    assert!(!b.has_certificate());

    // An expired token.
    let t = create_token(&api, "r1", Some(1)).await;
    let expires_at = t["expires_at"].as_i64().unwrap();
    wait_until(Duration::from_secs(5), "the token to expire", || async {
        now_ms() > expires_at
    })
    .await
    .unwrap();
    let exit = b.try_enroll(t["token"].as_str().unwrap()).await.unwrap();
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(exit.stderr.contains("expired"), "{exit:?}");
    assert!(!b.has_certificate());

    // A token of r1 presented by an agent configured for r2: forbidden.
    let d = Agent::new(&c, "r2").unwrap();
    let exit = d.try_enroll(&token(&api, "r1").await).await.unwrap();
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(
        exit.stderr.contains("this token enrolls rack r1, not r2"),
        "{exit:?}"
    );
    assert!(!d.has_certificate());

    // r1's certificate used for r2: the fleet endpoint refuses the session.
    a.kill().unwrap();
    a.set_rack("r2").unwrap();
    a.start().await.unwrap();
    let s = a
        .wait_status(LINK, "the coordinator's refusal", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("forbidden"))
        })
        .await
        .unwrap();
    assert_eq!(s["connected"], false, "{s}");
    assert_eq!(s["connects"], 0, "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("this certificate speaks for rack r1, not r2"),
        "{s}"
    );
    let coordinator_log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(
        coordinator_log.contains("agent refused"),
        "no refusal in the coordinator log"
    );
    let r2_after = agent_view(&c, "r2").await.unwrap();
    assert_eq!(r2_after, r2_before, "r2's agent record changed");
    assert!(rack_nodes(&c, "r2").await.is_empty());

    // Revocation: the running agent is disconnected and refused from then on.
    a.kill().unwrap();
    a.set_rack("r1").unwrap();
    a.start().await.unwrap();
    a.wait_status(LINK, "connected again as r1", |s| s["connected"] == true)
        .await
        .unwrap();
    let r = api.delete("/v1/racks/r1/agent").await.unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let s = a
        .wait_status(LINK, "disconnected as revoked", |s| {
            s["connected"] == false
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("is revoked"))
        })
        .await
        .unwrap();
    let connects = u64_of(&s, "connects");
    assert_eq!(connects, 1, "{s}");
    // It keeps trying (backoff from 100 ms) and keeps being refused.
    let refusals = count(
        &std::fs::read_to_string(c.log_path(1)).unwrap(),
        "is revoked",
    );
    wait_until(LINK, "the agent to be refused twice more", || async {
        let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
        count(&log, "is revoked") >= refusals + 2
    })
    .await
    .unwrap();
    let s = a.status().await.unwrap();
    assert_eq!(s["connected"], false, "{s}");
    assert_eq!(s["connects"], connects, "a revoked agent reconnected: {s}");
    let v = agent_view(&c, "r1").await.unwrap();
    assert_eq!(v["revoked"], true, "{v}");
    assert_eq!(v["enrolled"], false, "{v}");
    // `connected` of a revoked agent: see `revoked_agent_is_listed_as_disconnected`.

    // Re-enrolling the revoked agent (stopped: enrollment needs its store) with a new token
    // and --force gives it a working identity again; it resumes from its stored revision.
    a.kill().unwrap();
    let exit = a.try_enroll_via(&c.url(1), &tok, true).await.unwrap();
    assert_eq!(exit.code, Some(3), "a used token re-enrolled: {exit:?}");
    let exit = a
        .try_enroll_via(&c.url(1), &token(&api, "r1").await, true)
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    a.start().await.unwrap();
    let s = a
        .wait_status(LINK, "connected after re-enrolling", |s| {
            s["connected"] == true && s["deltas_received"].as_u64() >= Some(1)
        })
        .await
        .unwrap();
    assert_eq!(s["snapshots_received"], 0, "{s}");
    let v = wait_view(
        &c,
        "r1",
        REPORT,
        "enrolled again",
        |v| v["enrolled"] == true && v["revoked"] == false,
        |_| {},
    )
    .await;
    assert_eq!(v["connected"], true, "{v}");
    println!("enrollment: {:.1?}", started.elapsed());
}

/// After revocation the coordinator ends the agent's session, but its closing link report is
/// refused (`AgentLinkReport` requires a live agent) and `RevokeAgent` keeps the last report,
/// so `GET /v1/agents` lists the revoked, disconnected agent as `connected: true` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_agent_is_listed_as_disconnected() {
    let c = Cluster::start(1).await.unwrap();
    let api = c.api(1);
    setup(&api, &["r1"]).await;
    let a = enrolled_agent(&c, "r1").await;
    wait_view(
        &c,
        "r1",
        REPORT,
        "connected",
        |v| v["connected"] == true,
        |_| {},
    )
    .await;
    let r = api.delete("/v1/racks/r1/agent").await.unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    a.wait_status(LINK, "disconnected as revoked", |s| {
        s["connected"] == false
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("is revoked"))
    })
    .await
    .unwrap();
    // Two link report periods: ample time for any report to land.
    let v = wait_view(
        &c,
        "r1",
        REPORT,
        "revoked and not connected",
        |v| v["revoked"] == true && v["connected"] == false,
        |_| {},
    )
    .await;
    assert_eq!(v["enrolled"], false, "{v}");
}

/// A SIGKILLed agent that comes straight back: its old session lingers on the coordinator
/// until the QUIC idle timeout (10 s) and then records `connected: false`, over the report of
/// the new, live session, until that session's next periodic report (every 10 s). The wrong
/// window lasts about as long as the agent was down (here: tens of milliseconds; an agent
/// restarted 5 s after a crash is listed as disconnected for about 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_agent_stays_listed_as_connected() {
    let c = Cluster::start(1).await.unwrap();
    setup(&c.api(1), &["r1"]).await;
    let a = enrolled_agent(&c, "r1").await;
    wait_view(
        &c,
        "r1",
        REPORT,
        "connected",
        |v| v["connected"] == true,
        |_| {},
    )
    .await;
    a.kill().unwrap();
    a.start().await.unwrap();
    a.wait_status(LINK, "connected again", |s| s["connected"] == true)
        .await
        .unwrap();
    // Past the idle timeout of the old session and one report period of the new one.
    let restarted = Instant::now();
    let until = restarted + Duration::from_secs(15);
    let mut wrong_since: Option<Instant> = None;
    let mut wrong = Vec::new();
    while Instant::now() < until {
        let v = agent_view(&c, "r1").await.unwrap();
        let s = a.status().await.unwrap();
        assert_eq!(s["connects"], 1, "the agent reconnected: {s}");
        match (v["connected"] == true, wrong_since) {
            (false, None) => wrong_since = Some(Instant::now()),
            (true, Some(t)) => {
                wrong.push(format!(
                    "{:.1?} after the restart, for {:.1?}",
                    t - restarted,
                    t.elapsed()
                ));
                wrong_since = None;
            }
            _ => {}
        }
        tokio::time::sleep(metalfleet_tests::POLL).await;
    }
    if let Some(t) = wrong_since {
        wrong.push(format!(
            "{:.1?} after the restart, until the end",
            t - restarted
        ));
    }
    assert!(
        wrong.is_empty(),
        "GET /v1/agents said disconnected while the agent was connected: {wrong:?}"
    );
}

/// Nodes registered in the rack before the agent is killed.
const NODES: usize = 20;
/// Nodes whose boot target changes around the kill.
const PATCHED: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_agent_resumes_from_its_revision() {
    let started = Instant::now();
    let c = Cluster::start(1).await.unwrap();
    let api = c.api(1);
    setup(&api, &["r1"]).await;
    let a = enrolled_agent(&c, "r1").await;

    let mut ids = Vec::new();
    for i in 1..=NODES {
        let n = api
            .post(
                "/v1/nodes",
                &json!({"serial": format!("KR-{i:03}"), "rack": "r1",
                        "macs": [format!("02:00:00:00:01:{i:02x}")]}),
            )
            .await
            .unwrap()
            .ok()
            .unwrap();
        ids.push(n["id"].as_str().unwrap().to_owned());
    }
    let applied = c.status(1).await.unwrap().last_applied;
    let s = a
        .wait_status(LINK, "all nodes at the cluster's revision", |s| {
            s["revision"].as_u64() >= Some(applied)
                && s["nodes"] == NODES
                && s["deltas_received"].as_u64() > Some(0)
        })
        .await
        .unwrap();
    assert_eq!(s["snapshots_received"], 1, "{s}");
    assert!(u64_of(&s, "deltas_received") > 0, "{s}");

    // Boot target changes stream to the agent; it is SIGKILLed halfway through them, and the
    // second half changes while it is down.
    for (k, id) in ids.iter().take(PATCHED).enumerate() {
        if k == PATCHED / 2 {
            a.kill().unwrap();
        }
        let target = if k % 2 == 0 {
            json!({"kind": "local"})
        } else {
            json!({"kind": "install", "kernel": "vmlinuz", "initrd": "initrd.img"})
        };
        api.patch(&format!("/v1/nodes/{id}"), &json!({"boot_target": target}))
            .await
            .unwrap()
            .ok()
            .unwrap();
    }
    let stopped = a.status_cli().await.unwrap();
    assert_eq!(stopped["agent_running"], false, "{stopped}");
    assert_eq!(stopped["snapshots_received"], Value::Null, "{stopped}");
    let stored = u64_of(&stopped, "revision");
    assert!(stored >= applied, "{stopped}");
    assert_eq!(stopped["nodes"], NODES, "{stopped}");

    a.start().await.unwrap();
    let target = c.status(1).await.unwrap().last_applied;
    let s = a
        .wait_status(LINK, "caught up after the restart", |s| {
            // Counters and store are read at slightly different instants: wait for both.
            s["connected"] == true
                && s["revision"].as_u64() >= Some(target)
                && s["deltas_received"].as_u64().unwrap_or(0)
                    + s["snapshots_received"].as_u64().unwrap_or(0)
                    > 0
        })
        .await
        .unwrap();
    assert_eq!(s["snapshots_received"], 0, "resumed with a snapshot: {s}");
    assert!(u64_of(&s, "deltas_received") > 0, "{s}");
    assert_eq!(s["connects"], 1, "{s}");
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("agent connected") && l.contains(&format!("from={stored}"))),
        "the coordinator did not see the agent resume from revision {stored}"
    );

    // The agent's nodes are the coordinator's, boot targets included.
    let want: BTreeMap<String, String> = rack_nodes(&c, "r1")
        .await
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                boot_kind(&n["boot_target"]),
            )
        })
        .collect();
    assert_eq!(want.len(), NODES);
    let changed = want.values().filter(|k| *k != "discovery").count();
    assert_eq!(changed, PATCHED, "{want:?}");
    let got: BTreeMap<String, String> = a
        .nodes()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                boot_kind(&n["boot_target"]),
            )
        })
        .collect();
    assert_eq!(got, want);

    // The coordinator's record of the link: in sync, nothing queued.
    let synced_at = started.elapsed();
    let v = wait_view(
        &c,
        "r1",
        REPORT,
        "connected and in sync",
        |v| v["connected"] == true && v["revision_lag"] == 0,
        |_| {},
    )
    .await;
    // In sync means: holds the rack's last change (a later revision touched other things).
    assert!(u64_of(&v, "revision") >= stored, "{v}");
    assert_eq!(v["outbox_depth"], 0, "{v}");
    assert_eq!(v["last_seq"], 0, "{v}");
    println!(
        "killed_agent_resumes_from_its_revision: {:.1?} (agent caught up at {synced_at:.1?})",
        started.elapsed()
    );
}

/// Check-ins queued while every coordinator is down.
const OFFLINE_EVENTS: u32 = 1_000;
/// Nodes registered through the API before the outage.
const PRE_EXISTING: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_events_are_applied_exactly_once() {
    let started = Instant::now();
    let c = Cluster::start(3).await.unwrap();
    let api = c.api(1);
    setup(&api, &["r1"]).await;
    for i in 1..=PRE_EXISTING {
        api.post(
            "/v1/nodes",
            &json!({"serial": format!("PRE-{i}"), "rack": "r1",
                    "macs": [format!("02:00:00:00:02:{i:02x}")]}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    }
    let a = enrolled_agent(&c, "r1").await;
    let s = a
        .wait_status(LINK, "the pre-existing nodes", |s| {
            s["nodes"] == PRE_EXISTING
        })
        .await
        .unwrap();
    let endpoints = s["endpoints"].as_array().unwrap().len();
    assert_eq!(
        endpoints, 3,
        "enrollment stores every member's endpoint: {s}"
    );

    for id in c.ids() {
        c.kill(id).unwrap();
    }
    let out = a.emit_checkins(OFFLINE_EVENTS, "OFF").await.unwrap();
    assert!(out.contains("via the running agent"), "{out}");
    let s = a
        .wait_status(LINK, "the link to notice the outage", |s| {
            s["connected"] == false
        })
        .await
        .unwrap();
    assert_eq!(s["outbox_depth"], OFFLINE_EVENTS, "{s}");
    assert_eq!(s["next_seq"], OFFLINE_EVENTS + 1, "{s}");
    assert_eq!(s["last_acked_seq"], 0, "{s}");
    assert_eq!(
        s["nodes"], PRE_EXISTING,
        "the store lost nodes offline: {s}"
    );

    for id in c.ids() {
        c.restart(id).await.unwrap();
    }
    let mut max_depth = 0;
    let v = wait_view(
        &c,
        "r1",
        DELIVERY,
        "every queued event applied",
        |v| v["last_seq"] == OFFLINE_EVENTS,
        |v| max_depth = max_depth.max(v["outbox_depth"].as_u64().unwrap_or(0)),
    )
    .await;
    assert_eq!(v["events_applied"], OFFLINE_EVENTS, "not exactly once: {v}");
    let s = a
        .wait_status(LINK, "the outbox to drain", |s| {
            s["outbox_depth"] == 0 && s["last_acked_seq"] == OFFLINE_EVENTS
        })
        .await
        .unwrap();
    assert!(
        u64_of(&s, "events_sent") >= u64::from(OFFLINE_EVENTS),
        "{s}"
    );

    let nodes = rack_nodes(&c, "r1").await;
    let mut want: BTreeSet<String> = (1..=OFFLINE_EVENTS)
        .map(|i| format!("OFF-{i:06}"))
        .collect();
    want.extend((1..=PRE_EXISTING).map(|i| format!("PRE-{i}")));
    assert_eq!(nodes.len(), want.len());
    assert_eq!(serials(&nodes), want);
    a.wait_status(LINK, "the registered nodes to reach the agent", |s| {
        s["nodes"] == want.len()
    })
    .await
    .unwrap();

    // The coordinators' record: the queue was reported while it was there, and drained.
    let v = wait_view(
        &c,
        "r1",
        REPORT,
        "connected, in sync, outbox empty",
        |v| v["connected"] == true && v["outbox_depth"] == 0 && v["revision_lag"] == 0,
        |v| max_depth = max_depth.max(v["outbox_depth"].as_u64().unwrap_or(0)),
    )
    .await;
    assert!(
        max_depth > 0,
        "GET /v1/agents never reported the queued events (outbox_depth stayed 0)"
    );
    assert_eq!(v["events_applied"], OFFLINE_EVENTS, "{v}");
    println!(
        "offline_events_are_applied_exactly_once: {:.1?} (largest outbox_depth reported {max_depth})",
        started.elapsed()
    );
}

/// Check-ins sent across the leader kill.
const LIVE_EVENTS: u32 = 2_000;
/// Check-ins per control socket request.
const CHUNK: u32 = 100;
/// Pause between chunks, so delivery is still going on when the leader dies.
const CHUNK_PAUSE: Duration = Duration::from_millis(100);
/// The leader is killed once the coordinators acknowledged this many.
const KILL_AFTER_ACKED: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_during_event_delivery() {
    let started = Instant::now();
    let c = Cluster::start(3).await.unwrap();
    setup(&c.api(1), &["r1"]).await;
    let a = enrolled_agent(&c, "r1").await;
    let leader = c.leader().await.unwrap();

    let emitter = async {
        for k in 0..LIVE_EVENTS / CHUNK {
            let events: Vec<Value> = (k * CHUNK + 1..=(k + 1) * CHUNK)
                .map(|i| checkin("LK", i))
                .collect();
            let seqs = a.emit(&events).await.unwrap();
            assert_eq!(seqs.len(), events.len());
            assert_eq!(seqs[0], u64::from(k * CHUNK + 1));
            tokio::time::sleep(CHUNK_PAUSE).await;
        }
    };
    let killer = async {
        let s = a
            .wait_status(LINK, "delivery under way", |s| {
                s["last_acked_seq"].as_u64() >= Some(KILL_AFTER_ACKED)
            })
            .await
            .unwrap();
        c.kill(leader).unwrap();
        let acked_at_kill = u64_of(&s, "last_acked_seq");
        let killed_at = Instant::now();
        let new_leader = c.leader().await.unwrap();
        let elected_after = killed_at.elapsed();
        assert_ne!(new_leader, leader);
        c.restart(leader).await.unwrap();
        (
            acked_at_kill,
            s["coordinator"].clone(),
            new_leader,
            elected_after,
        )
    };
    let ((), (acked_at_kill, agent_on, new_leader, elected_after)) = tokio::join!(emitter, killer);
    assert!(
        acked_at_kill < u64::from(LIVE_EVENTS),
        "the leader died after delivery was complete ({acked_at_kill} acked)"
    );

    let v = wait_view(
        &c,
        "r1",
        DELIVERY,
        "every event applied",
        |v| v["last_seq"] == LIVE_EVENTS,
        |_| {},
    )
    .await;
    assert_eq!(v["events_applied"], LIVE_EVENTS, "not exactly once: {v}");
    let s = a
        .wait_status(LINK, "the outbox to drain", |s| {
            s["outbox_depth"] == 0 && s["last_acked_seq"] == LIVE_EVENTS
        })
        .await
        .unwrap();
    assert!(u64_of(&s, "events_sent") >= u64::from(LIVE_EVENTS), "{s}");

    // Every replica applied each event once.
    c.wait_converged(DELIVERY).await.unwrap();
    for id in c.ids() {
        let r = c.api(id).get("/v1/agents?stale=true").await.unwrap();
        let body = r.ok().unwrap();
        let v = body
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["rack"] == "r1")
            .unwrap();
        assert_eq!(v["last_seq"], LIVE_EVENTS, "member {id}: {v}");
        assert_eq!(v["events_applied"], LIVE_EVENTS, "member {id}: {v}");
    }
    let nodes = rack_nodes(&c, "r1").await;
    let want: BTreeSet<String> = (1..=LIVE_EVENTS).map(|i| format!("LK-{i:06}")).collect();
    assert_eq!(nodes.len(), want.len());
    assert_eq!(serials(&nodes), want);
    println!(
        "leader_killed_during_event_delivery: {:.1?} (leader {leader} killed at {acked_at_kill} acked, \
         agent on {agent_on}, {new_leader} led {elected_after:.1?} later; {} connects, {} events sent)",
        started.elapsed(),
        s["connects"],
        s["events_sent"],
    );
}
