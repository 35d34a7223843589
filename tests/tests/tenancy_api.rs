//! Tenancy over the REST API of real `coordinator` processes, with a real `rack-agent` (sim
//! switch `tor1`, simulated BMCs) carrying out the port and power intents and reporting them
//! over its fleet link: the RBAC matrix (a project member cannot list, read, power, attach or
//! free another project's nodes or networks; read-only changes nothing), the job lifecycle
//! (202, running, done or failed with the agent's message, one pending action per NIC), a
//! move between projects that resumes after the agent and the coordinator were stopped
//! midway, and a lease whose window of seconds expires and is reclaimed.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::time::Duration;

use metalfleet_tests::agent::Agent;
use metalfleet_tests::{poll, Api, Cluster, StatusCode};
use serde_json::{json, Value};

/// Bound of waits on the fleet link (see tests/agents.rs) and on the agent's reports.
const LINK: Duration = Duration::from_secs(45);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The fleet: rack `r1` with nodes `S1`..`S4` (NIC `eno1` on `tor1` port `p<n>`, NIC `eno2`
/// of `S4` on the unknown switch `tor9`), projects `a` and `b` with members `alice` and
/// `bob`, read-only `reggie`, and an enrolled, running agent.
struct Fleet {
    cluster: Cluster,
    agent: Agent,
    admin: Api,
    alice: Api,
    /// Alice's bearer secret (for `metalctl`).
    alice_token: String,
    bob: Api,
    reggie: Api,
    /// Node ids by serial number (index 0 = `S1`).
    nodes: Vec<String>,
}

async fn ok(r: anyhow::Result<metalfleet_tests::Resp>) -> Value {
    r.unwrap().ok().unwrap()
}

async fn user(admin: &Api, name: &str, role: &str, project: Option<&str>) -> (Api, String) {
    admin.create_user(name, role, project).await.unwrap()
}

/// Runs the real `metalctl` against member 1 with `token`; returns (exit code, stdout, stderr).
async fn metalctl(c: &Cluster, token: &str, args: &[&str]) -> (i32, String, String) {
    c.metalctl(token, args).await.unwrap()
}

impl Fleet {
    async fn start() -> Fleet {
        let cluster = Cluster::start(1).await.unwrap();
        let admin = cluster.api(1);
        ok(admin.put("/v1/sites/s1", &json!({"name": "s1"})).await).await;
        ok(admin
            .put("/v1/racks/r1", &json!({"name": "r1", "site": "s1"}))
            .await)
        .await;
        for p in ["a", "b"] {
            ok(admin
                .put(&format!("/v1/projects/{p}"), &json!({"name": p}))
                .await)
            .await;
        }
        let records: Vec<Value> = (1..=4)
            .map(|n| {
                let mut nics =
                    vec![json!({"name": "eno1", "switch": "tor1", "port": format!("p{n}")})];
                if n == 4 {
                    nics.push(json!({"name": "eno2", "switch": "tor9", "port": "x1"}));
                }
                json!({"serial": format!("S{n}"), "site": "s1", "rack": "r1", "nics": nics,
                       "bmc": {"address": format!("10.9.0.{n}"), "driver": "ipmi"}})
            })
            .collect();
        ok(admin
            .post("/v1/inventory/import", &Value::Array(records))
            .await)
        .await;
        let mut nodes = Vec::new();
        for n in 1..=4 {
            let v = ok(admin
                .post(
                    "/v1/nodes",
                    &json!({"serial": format!("S{n}"), "rack": "r1"}),
                )
                .await)
            .await;
            nodes.push(v["id"].as_str().unwrap().to_owned());
        }
        let (alice, alice_token) = user(&admin, "alice", "project_member", Some("a")).await;
        let (bob, _) = user(&admin, "bob", "project_member", Some("b")).await;
        let (reggie, _) = user(&admin, "reggie", "read_only", None).await;

        let agent = Agent::new(&cluster, "r1").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(agent.config_path())
            .unwrap();
        writeln!(
            f,
            "\n[bmc]\nsimulate = true\n\n[[switches]]\nname = \"tor1\"\ndriver = \"sim\"\nports = [\"p1\", \"p2\", \"p3\", \"p4\"]"
        )
        .unwrap();
        let t = ok(admin.post("/v1/racks/r1/enroll-tokens", &json!({})).await).await;
        agent.enroll(t["token"].as_str().unwrap()).await.unwrap();
        agent.start().await.unwrap();
        agent
            .wait_status(LINK, "the link to come up", |s| s["connected"] == true)
            .await
            .unwrap();
        Fleet {
            cluster,
            agent,
            admin,
            alice,
            alice_token,
            bob,
            reggie,
            nodes,
        }
    }

    fn node(&self, n: usize) -> &str {
        &self.nodes[n - 1]
    }

    /// Polls `GET /v1/jobs/{id}` as admin until the job is done or failed; returns it.
    async fn finished(&self, job: &Value) -> Value {
        let id = job["id"].as_u64().unwrap();
        poll(LINK, &format!("job {id} to finish"), || async {
            let j = self
                .admin
                .get(&format!("/v1/jobs/{id}"))
                .await
                .ok()?
                .ok()
                .ok()?;
            matches!(j["state"].as_str(), Some("done" | "failed")).then_some(j)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent.log_tail(40)))
    }

    /// Sends a request expected to answer 202 with a job; returns the finished job.
    async fn job(&self, api: &Api, path: &str, body: Value) -> Value {
        let r = api.post(path, &body).await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{path}: {}", r.body);
        assert!(
            matches!(r.body["state"].as_str(), Some("running" | "pending")),
            "{}",
            r.body
        );
        self.finished(&r.body).await
    }
}

#[track_caller]
fn refused(r: &metalfleet_tests::Resp, status: StatusCode, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.field(), field, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_and_job_lifecycle() {
    let f = Fleet::start().await;
    let (s1, s2) = (f.node(1).to_owned(), f.node(2).to_owned());
    // Allocation: admins give nodes; members allocate free nodes to their own project.
    ok(f.admin
        .post(
            &format!("/v1/nodes/{s1}/allocate"),
            &json!({"project": "a"}),
        )
        .await)
    .await;
    let r = f
        .bob
        .post(&format!("/v1/nodes/{s1}/allocate"), &json!({}))
        .await
        .unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("node"));
    let v = ok(f.bob.post("/v1/nodes/S2/allocate", &json!({})).await).await;
    assert_eq!(v["project"], "b");
    let net_a = ok(f
        .alice
        .post("/v1/networks", &json!({"name": "net-a"}))
        .await)
    .await;
    assert_eq!(net_a["owner"], "a");
    assert_eq!(net_a["vlan"], 100);
    let net_b = ok(f.bob.post("/v1/networks", &json!({"name": "net-b"})).await).await;
    assert_eq!(net_b["vlan"], 101);

    // Alice cannot list, read, power, attach or free Bob's node or network.
    let list = ok(f.alice.get("/v1/nodes").await).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [s1.as_str()]);
    refused(
        &f.alice.get(&format!("/v1/nodes/{s2}")).await.unwrap(),
        StatusCode::NOT_FOUND,
        None,
    );
    let r = f.alice.get(&format!("/v1/nodes/{s2}/ports")).await.unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("node"));
    let r = f
        .alice
        .post(&format!("/v1/nodes/{s2}/power"), &json!({"on": true}))
        .await
        .unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("node"));
    let r = f
        .alice
        .post(
            &format!("/v1/nodes/{s2}/attach"),
            &json!({"nic": "eno1", "network": "net-a"}),
        )
        .await
        .unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("node"));
    let r = f.alice.post("/v1/nodes/S2/free", &json!({})).await.unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("node"));
    let nets = ok(f.alice.get("/v1/networks").await).await;
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");
    assert_eq!(nets[0]["name"], "net-a");
    refused(
        &f.alice.get("/v1/networks/net-b").await.unwrap(),
        StatusCode::NOT_FOUND,
        None,
    );
    let r = f
        .alice
        .post(
            &format!("/v1/nodes/{s1}/attach"),
            &json!({"nic": "eno1", "network": "net-b"}),
        )
        .await
        .unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("network"));
    let r = f.alice.delete("/v1/networks/net-b").await.unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("network"));
    let r = f
        .alice
        .put("/v1/networks/net-b/access/a", &json!({}))
        .await
        .unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("network"));

    // Read-only sees everything and changes nothing.
    assert_eq!(
        ok(f.reggie.get("/v1/nodes").await)
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        ok(f.reggie.get("/v1/networks").await)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for (path, body) in [
        (format!("/v1/nodes/{s1}/power"), json!({"on": true})),
        (
            format!("/v1/nodes/{s1}/attach"),
            json!({"nic": "eno1", "network": "net-a"}),
        ),
        (format!("/v1/nodes/{s1}/free"), json!({})),
        (
            "/v1/networks".to_owned(),
            json!({"name": "x", "owner": "a"}),
        ),
        (
            "/v1/leases".to_owned(),
            json!({"node": "S3", "project": "a", "window": {"from": 0, "until": 1}}),
        ),
    ] {
        let r = f.reggie.post(&path, &body).await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
    }
    // Bad input names the field.
    let r = f
        .alice
        .post(
            &format!("/v1/nodes/{s1}/attach"),
            &json!({"nic": "eno1", "network": "net-a", "mode": "sideways"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = f
        .alice
        .post("/v1/networks", &json!({"name": "x", "vlan": 7}))
        .await
        .unwrap();
    refused(&r, StatusCode::FORBIDDEN, Some("vlan"));
    let r = f
        .admin
        .post(
            "/v1/networks",
            &json!({"name": "prov", "kind": "provisioning", "vlan": 101}),
        )
        .await
        .unwrap();
    refused(&r, StatusCode::CONFLICT, Some("vlan"));

    // Attach: 202, then done when the agent configured and read back the sim switch port.
    let j = f
        .job(
            &f.alice,
            &format!("/v1/nodes/{s1}/attach"),
            json!({"nic": "eno1", "network": "net-a"}),
        )
        .await;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["ports"][0]["state"], "done", "{j}");
    assert_eq!(
        j["ports"][0]["observed"],
        json!({"mode": "access", "vlan": 100}),
        "{j}"
    );
    let ports = ok(f.alice.get(&format!("/v1/nodes/{s1}/ports")).await).await;
    assert_eq!(
        ports[0]["attachments"],
        json!({"net-a": "access"}),
        "{ports}"
    );
    assert_eq!(ports[0]["applied_ok"], true, "{ports}");
    // Bob cannot see Alice's job.
    let jid = j["id"].as_u64().unwrap();
    refused(
        &f.bob.get(&format!("/v1/jobs/{jid}")).await.unwrap(),
        StatusCode::NOT_FOUND,
        None,
    );
    assert!(ok(f.bob.get("/v1/jobs").await)
        .await
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        ok(f.alice.get("/v1/jobs").await)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Free is refused while attached.
    let r = f
        .alice
        .post(&format!("/v1/nodes/{s1}/free"), &json!({}))
        .await
        .unwrap();
    refused(&r, StatusCode::CONFLICT, Some("node"));

    // Power: the simulated BMC powers the node; the agent's observation reaches the node.
    let j = f
        .job(
            &f.alice,
            &format!("/v1/nodes/{s1}/power"),
            json!({"on": true}),
        )
        .await;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["power"]["state"], "done", "{j}");
    poll(LINK, "S1 to be seen powered on", || async {
        let n = f
            .alice
            .get(&format!("/v1/nodes/{s1}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (n["power_on"] == true).then_some(())
    })
    .await
    .unwrap();

    // The same through metalctl, as Alice: her networks only, her jobs, Bob's node unknown.
    let (code, out, err) = metalctl(&f.cluster, &f.alice_token, &["network", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("net-a") && !out.contains("net-b"), "{out}");
    let (code, out, err) = metalctl(
        &f.cluster,
        &f.alice_token,
        &["job", "wait", &j["id"].to_string()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("State:     done"), "{out}");
    let (code, _, err) =
        metalctl(&f.cluster, &f.alice_token, &["node", "power", "S2", "off"]).await;
    assert_eq!(code, 4, "not found: {err}");
    let (code, _, err) = metalctl(
        &f.cluster,
        &f.alice_token,
        &["node", "attach", "S1", "eno1", "net-a"],
    )
    .await;
    assert_eq!(code, 5, "already attached is a conflict: {err}");
    // The endpoints are in the OpenAPI document.
    let doc = ok(f.admin.anonymous().get("/v1/openapi.json").await).await;
    for path in [
        "/v1/networks",
        "/v1/nodes/{id}/move",
        "/v1/jobs/{id}",
        "/v1/leases",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }

    // A port on a switch the agent does not know: the job fails with the agent's message.
    ok(f.admin
        .post(
            &format!("/v1/nodes/{}/allocate", f.node(4)),
            &json!({"project": "a"}),
        )
        .await)
    .await;
    let j = f
        .job(
            &f.alice,
            &format!("/v1/nodes/{}/attach", f.node(4)),
            json!({"nic": "eno2", "network": "net-a", "mode": "trunk"}),
        )
        .await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("tor9"), "{j}");

    // One pending action per NIC: while the agent is stopped the job waits, a second action
    // on the NIC is refused, and the job completes once the agent is back.
    f.agent.kill().unwrap();
    let r = f
        .alice
        .post(
            &format!("/v1/nodes/{s1}/detach"),
            &json!({"nic": "eno1", "network": "net-a"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let pending = r.body;
    let r = f
        .alice
        .post(&format!("/v1/nodes/{s1}/revert"), &json!({"nic": "eno1"}))
        .await
        .unwrap();
    refused(&r, StatusCode::CONFLICT, Some("nic"));
    let j = ok(f.alice.get(&format!("/v1/jobs/{}", pending["id"])).await).await;
    assert_eq!(j["state"], "running", "{j}");
    f.agent.start().await.unwrap();
    let j = f.finished(&pending).await;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(
        j["ports"][0]["observed"],
        json!({"mode": "unconfigured"}),
        "{j}"
    );
    ok(f.alice
        .post(&format!("/v1/nodes/{s1}/free"), &json!({}))
        .await)
    .await;

    // Everything above is audited.
    let audit = ok(f.admin.get("/v1/audit?limit=1000").await).await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    for want in [
        ("node.allocate", "user:bob"),
        ("network.create", "user:alice"),
        ("node.attach", "user:alice"),
        ("node.power", "user:alice"),
        ("node.detach", "user:alice"),
        ("node.free", "user:alice"),
    ] {
        assert!(actions.contains(&want), "{want:?} not in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_resumes_after_agent_and_coordinator_restarts() {
    let f = Fleet::start().await;
    let s1 = f.node(1).to_owned();
    ok(f.admin
        .post(
            &format!("/v1/nodes/{s1}/allocate"),
            &json!({"project": "a"}),
        )
        .await)
    .await;
    ok(f.alice
        .post("/v1/networks", &json!({"name": "net-a"}))
        .await)
    .await;
    ok(f.bob.post("/v1/networks", &json!({"name": "net-b"})).await).await;
    let j = f
        .job(
            &f.alice,
            &format!("/v1/nodes/{s1}/attach"),
            json!({"nic": "eno1", "network": "net-a"}),
        )
        .await;
    assert_eq!(j["state"], "done", "{j}");
    let r = f
        .alice
        .post(&format!("/v1/nodes/{s1}/move"), &json!({"project": "b"}))
        .await
        .unwrap();
    refused(&r, StatusCode::FORBIDDEN, None);

    // Interrupt: the agent is down when the move starts, and the coordinator restarts while
    // the move waits for it.
    f.agent.kill().unwrap();
    let r = f
        .admin
        .post(
            &format!("/v1/nodes/{s1}/move"),
            &json!({"project": "b", "networks": [{"nic": "eno1", "network": "net-b"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mv = r.body;
    assert_eq!(mv["kind"]["move"]["phase"], "power_off", "{mv}");
    f.cluster.kill(1).unwrap();
    f.cluster.restart(1).await.unwrap();
    let j = ok(f.admin.get(&format!("/v1/jobs/{}", mv["id"])).await).await;
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(j["kind"]["move"]["phase"], "power_off", "{j}");
    f.agent.start().await.unwrap();
    let j = f.finished(&mv).await;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["kind"]["move"]["phase"], "finished", "{j}");

    // The node is Bob's, on net-b only, powered on; Alice no longer sees it.
    let n = ok(f.bob.get(&format!("/v1/nodes/{s1}")).await).await;
    assert_eq!(n["project"], "b");
    let ports = ok(f.bob.get(&format!("/v1/nodes/{s1}/ports")).await).await;
    assert_eq!(
        ports[0]["attachments"],
        json!({"net-b": "access"}),
        "{ports}"
    );
    assert_eq!(
        ports[0]["observed"],
        json!({"mode": "access", "vlan": 101}),
        "{ports}"
    );
    poll(LINK, "S1 to be seen powered on", || async {
        let n = f
            .bob
            .get(&format!("/v1/nodes/{s1}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (n["power_on"] == true).then_some(())
    })
    .await
    .unwrap();
    refused(
        &f.alice.get(&format!("/v1/nodes/{s1}")).await.unwrap(),
        StatusCode::NOT_FOUND,
        None,
    );
    // Both projects see the move job.
    ok(f.alice.get(&format!("/v1/jobs/{}", mv["id"])).await).await;
    ok(f.bob.get(&format!("/v1/jobs/{}", mv["id"])).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_window_ends_and_the_node_is_reclaimed() {
    let f = Fleet::start().await;
    let s3 = f.node(3).to_owned();
    ok(f.admin
        .post(
            &format!("/v1/nodes/{s3}/allocate"),
            &json!({"project": "a"}),
        )
        .await)
    .await;
    ok(f.bob.post("/v1/networks", &json!({"name": "net-b"})).await).await;
    let r = f
        .alice
        .post(
            "/v1/leases",
            &json!({"node": "S3", "project": "b", "window": {"start": "00:00", "end": "6:00", "tz": "UTC"}}),
        )
        .await
        .unwrap();
    refused(&r, StatusCode::BAD_REQUEST, Some("window.end"));
    let r = f
        .bob
        .post(
            "/v1/leases",
            &json!({"node": "S3", "project": "b", "window": {"from": 0, "until": 1}}),
        )
        .await
        .unwrap();
    refused(&r, StatusCode::NOT_FOUND, Some("node"));
    // A window of a few seconds, starting now (long enough for the hand-over and an attach
    // on a loaded machine; the end is awaited, not timed).
    let from = now_ms();
    let lease = ok(f
        .alice
        .post(
            "/v1/leases",
            &json!({"node": "S3", "project": "b", "window": {"from": from, "until": from + 15_000}}),
        )
        .await)
    .await;
    let id = lease["id"].as_u64().unwrap();
    // Lent: Bob sees the node and uses it.
    let l = poll(LINK, "the lease to become active", || async {
        let l = f
            .bob
            .get(&format!("/v1/leases/{id}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (l["state"] == "active").then_some(l)
    })
    .await
    .unwrap();
    assert_eq!(l["lent"], true);
    let n = ok(f.bob.get(&format!("/v1/nodes/{s3}")).await).await;
    assert_eq!(n["project"], "b");
    refused(
        &f.alice.get(&format!("/v1/nodes/{s3}")).await.unwrap(),
        StatusCode::NOT_FOUND,
        None,
    );
    let r = f
        .bob
        .post(
            &format!("/v1/nodes/{s3}/attach"),
            &json!({"nic": "eno1", "network": "net-b"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let j = f.finished(&r.body).await;
    assert_eq!(j["state"], "done", "{j}");

    // The window ends: powered off, ports reverted, back to Alice; the lease is over.
    let l = poll(Duration::from_secs(60), "the lease to end", || async {
        let l = f
            .bob
            .get(&format!("/v1/leases/{id}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (l["state"] == "ended").then_some(l)
    })
    .await
    .unwrap();
    assert_eq!(l["lent"], false);
    assert_eq!(
        l["power_on"], false,
        "away from the borrower it shows as off: {l}"
    );
    let n = ok(f.alice.get(&format!("/v1/nodes/{s3}")).await).await;
    assert_eq!(n["project"], "a");
    refused(
        &f.bob.get(&format!("/v1/nodes/{s3}")).await.unwrap(),
        StatusCode::NOT_FOUND,
        None,
    );
    let ports = ok(f.alice.get(&format!("/v1/nodes/{s3}/ports")).await).await;
    assert_eq!(ports[0]["attachments"], json!({}), "{ports}");
    assert_eq!(
        ports[0]["observed"],
        json!({"mode": "unconfigured"}),
        "{ports}"
    );
    let jobs = ok(f.admin.get(&format!("/v1/jobs?node={s3}")).await).await;
    let end = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"].get("lease_end").is_some())
        .unwrap();
    assert_eq!(end["state"], "done", "{end}");
    assert_eq!(end["actor"], "coordinator:1", "{end}");
    poll(LINK, "S3 to be seen powered off", || async {
        let n = f
            .alice
            .get(&format!("/v1/nodes/{s3}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        (n["power_on"] == false).then_some(())
    })
    .await
    .unwrap();
}
