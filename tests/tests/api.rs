//! The REST API as a client sees it, against real coordinator processes: authentication,
//! roles, strict input handling with named fields, secrets that never leave sealed, the
//! audit trail, OpenAPI and metrics, and writes through followers.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use metalfleet_tests::{Api, Cluster, Method, Options, Resp, StatusCode};
use serde_json::{json, Value};

fn assert_err(r: &Resp, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.code(), Some(code), "{}", r.body);
    if let Some(f) = field {
        assert_eq!(r.field(), Some(f), "{}", r.body);
    }
}

fn ok(r: anyhow::Result<Resp>) -> Value {
    r.unwrap().ok().unwrap()
}

/// Creates user `name` with `role` (and `project`) and returns a token secret for it.
async fn user_with_token(admin: &Api, name: &str, role: &str, project: Option<&str>) -> String {
    let mut user = json!({"name": name, "role": role});
    if let Some(p) = project {
        user["project"] = json!(p);
    }
    ok(admin.put(&format!("/v1/users/{name}"), &user).await);
    let r = admin
        .post("/v1/tokens", &json!({"user": name, "description": "e2e"}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["secret"].as_str().unwrap().to_owned()
}

async fn site_and_rack(admin: &Api) {
    ok(admin.put("/v1/sites/s1", &json!({"name": "s1"})).await);
    ok(admin
        .put("/v1/racks/r1", &json!({"name": "r1", "site": "s1"}))
        .await);
}

async fn new_node(api: &Api, serial: &str) -> String {
    let n = ok(api.post("/v1/nodes", &json!({"serial": serial})).await);
    n["id"].as_str().unwrap().to_owned()
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authentication_and_roles() {
    let c = Cluster::start(1).await.unwrap();
    let admin = c.api(1);

    // No credentials, unknown token, wrong scheme.
    let r = admin.anonymous().get("/v1/sites").await.unwrap();
    assert_err(&r, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    let r = admin
        .with_token("mf_not-a-token")
        .get("/v1/sites")
        .await
        .unwrap();
    assert_err(&r, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    let r = admin
        .anonymous()
        .request(Method::GET, "/v1/sites")
        .basic_auth("admin", Some(c.admin_token()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    for p in ["p1", "p2"] {
        ok(admin
            .put(&format!("/v1/projects/{p}"), &json!({"name": p}))
            .await);
    }
    let op = admin.with_token(&user_with_token(&admin, "op", "operator", None).await);
    let ro = admin.with_token(&user_with_token(&admin, "ro", "read_only", None).await);
    let pm = admin.with_token(&user_with_token(&admin, "pm", "project_member", Some("p1")).await);

    // read_only reads but changes nothing.
    let r = ro
        .put("/v1/sites/ro-site", &json!({"name": "ro-site"}))
        .await
        .unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    ok(ro.get("/v1/sites").await);

    // operator runs the fleet, not users or the cluster.
    ok(op
        .put(
            "/v1/sites/s1",
            &json!({"name": "s1", "description": "by op"}),
        )
        .await);
    let r = op
        .put("/v1/users/eve", &json!({"name": "eve", "role": "admin"}))
        .await
        .unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = op
        .post(
            "/v1/cluster/learners",
            &json!({"id": 9, "raft_addr": "127.0.0.1:1", "api_url": "https://127.0.0.1:1"}),
        )
        .await
        .unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = op.post("/v1/cluster/voters/9", &json!({})).await.unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = op.delete("/v1/cluster/members/1").await.unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = op
        .post(
            "/v1/tokens",
            &json!({"user": "ro", "description": "not mine"}),
        )
        .await
        .unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);

    // Nodes in p1, p2 and none.
    let mine = new_node(&op, "PM-1").await;
    let theirs = new_node(&op, "PM-2").await;
    let free = new_node(&op, "PM-3").await;
    ok(admin
        .patch(&format!("/v1/nodes/{mine}"), &json!({"project": "p1"}))
        .await);
    ok(admin
        .patch(&format!("/v1/nodes/{theirs}"), &json!({"project": "p2"}))
        .await);

    // project_member sees and changes only its project's nodes.
    let listed = ok(pm.get("/v1/nodes").await);
    assert_eq!(names(&listed, "id"), vec![mine.clone()], "{listed}");
    ok(pm.get(&format!("/v1/nodes/{mine}")).await);
    for other in [&theirs, &free] {
        let r = pm.get(&format!("/v1/nodes/{other}")).await.unwrap();
        assert_err(&r, StatusCode::NOT_FOUND, "not_found", None);
        let r = pm
            .patch(&format!("/v1/nodes/{other}"), &json!({"tags": ["x"]}))
            .await
            .unwrap();
        assert_err(&r, StatusCode::NOT_FOUND, "not_found", None);
    }
    let r = pm
        .patch(
            &format!("/v1/nodes/{mine}"),
            &json!({"state": "commissioning"}),
        )
        .await
        .unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", Some("state"));
    ok(pm
        .patch(&format!("/v1/nodes/{mine}"), &json!({"tags": ["pm-tag"]}))
        .await);
    let r = pm.get("/v1/inventory").await.unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = pm.get("/v1/audit").await.unwrap();
    assert_err(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let projects = ok(pm.get("/v1/projects").await);
    assert_eq!(names(&projects, "name"), vec!["p1"]);

    // admin does everything, membership included (the 404 is past the role check).
    let n = ok(admin
        .patch(
            &format!("/v1/nodes/{mine}"),
            &json!({"state": "commissioning"}),
        )
        .await);
    assert_eq!(n["state"], "commissioning");
    ok(admin.put("/v1/sites/s2", &json!({"name": "s2"})).await);
    ok(admin
        .put(
            "/v1/users/eve",
            &json!({"name": "eve", "role": "read_only"}),
        )
        .await);
    ok(admin.delete("/v1/users/eve").await);
    let r = admin.delete("/v1/cluster/members/99").await.unwrap();
    assert_err(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(
        ok(admin.get("/v1/users").await).as_array().unwrap().len(),
        4
    );

    // Every mutation is in the audit trail under its user.
    let audit = ok(admin.get("/v1/audit?limit=1000").await);
    let has = |actor: &str, action: &str, target: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["target"] == target)
    };
    assert!(has("user:op", "site.put", "s1"), "{audit:#}");
    assert!(has("user:op", "node.register", "PM-1"), "{audit:#}");
    assert!(has("user:admin", "user.put", "op"), "{audit:#}");
    assert!(has("user:admin", "project.put", "p2"), "{audit:#}");
    assert!(has("user:admin", "node.patch", &mine), "{audit:#}");
    assert!(has("user:pm", "node.patch", &mine), "{audit:#}");
    assert!(has("user:admin", "user.delete", "eve"), "{audit:#}");
    // Refused requests never reach the log; the read_only user wrote nothing.
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "user:ro"),
        "{audit:#}"
    );
    let by_op = ok(admin.get("/v1/audit?actor=user:op").await);
    assert!(by_op
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "user:op"));
    assert_eq!(by_op.as_array().unwrap().len(), 4, "{by_op:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_naming_the_field() {
    let c = Cluster::start_with(Options {
        members: 1,
        max_body_bytes: Some(65_536),
    })
    .await
    .unwrap();
    let admin = c.api(1);
    site_and_rack(&admin).await;
    let send_raw = |method: Method, path: &str, ct: &str, body: String| {
        let b = admin
            .request(method, path)
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(body);
        async move {
            let r = b.send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            Resp {
                status,
                body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            }
        }
    };

    let r = send_raw(
        Method::PUT,
        "/v1/sites/x",
        "application/json",
        "{\"name\": ".into(),
    )
    .await;
    assert_err(&r, StatusCode::BAD_REQUEST, "bad_request", None);

    let r = admin
        .put("/v1/sites/x", &json!({"name": "x", "colour": "red"}))
        .await
        .unwrap();
    assert_err(&r, StatusCode::BAD_REQUEST, "unknown_field", Some("colour"));

    let big = json!({"name": "x", "description": "a".repeat(70_000)});
    let r = admin.put("/v1/sites/x", &big).await.unwrap();
    assert_err(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    // Just under the configured limit is fine: the limit is max_body_bytes, not a default.
    let fits = json!({"name": "x", "description": "a".repeat(60_000)});
    ok(admin.put("/v1/sites/x", &fits).await);

    let r = admin.get("/v1/inventory/-bad").await.unwrap();
    assert_err(&r, StatusCode::BAD_REQUEST, "invalid_field", Some("serial"));
    let r = admin.get("/v1/nodes/no%20such").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    let r = admin
        .post(
            "/v1/inventory/import",
            &json!([{
                "serial": "MAC-1", "site": "s1", "rack": "r1",
                "nics": [{"name": "eno1", "mac": "52:54:00:zz:00:01"}]
            }]),
        )
        .await
        .unwrap();
    assert_err(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("[0].nics[0].mac"),
    );
    let r = admin
        .post(
            "/v1/inventory/import",
            &json!([
                {"serial": "OK-1", "site": "s1", "rack": "r1"},
                {"serial": "OK-2", "site": "s1", "rack": "r1", "u_position": "high"}
            ]),
        )
        .await
        .unwrap();
    assert_err(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("[1].u_position"),
    );

    let r = admin.get("/v1/sites?colour=red").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.field().is_some_and(|f| f.contains("colour")),
        "{}",
        r.body
    );
    let r = admin.get("/v1/audit?limit=0").await.unwrap();
    assert_err(&r, StatusCode::BAD_REQUEST, "invalid_field", Some("limit"));

    let r = send_raw(
        Method::PUT,
        "/v1/sites/x",
        "text/plain",
        "{\"name\": \"x\"}".into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.field(), Some("content-type"), "{}", r.body);
    let r = send_raw(
        Method::POST,
        "/v1/inventory/import",
        "application/xml",
        "<x/>".into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let r = admin
        .put("/v1/sites/x", &json!({"name": "y"}))
        .await
        .unwrap();
    assert_err(&r, StatusCode::BAD_REQUEST, "invalid_field", Some("name"));

    let node = new_node(&admin, "LC-1").await;
    let r = admin
        .patch(&format!("/v1/nodes/{node}"), &json!({"state": "deployed"}))
        .await
        .unwrap();
    assert_err(
        &r,
        StatusCode::CONFLICT,
        "invalid_transition",
        Some("state"),
    );
    let r = admin
        .patch(&format!("/v1/nodes/{node}"), &json!({"state": "sleeping"}))
        .await
        .unwrap();
    assert_err(&r, StatusCode::BAD_REQUEST, "invalid_field", Some("state"));

    // Nothing refused above changed the state.
    let sites = ok(admin.get("/v1/sites").await);
    assert_eq!(names(&sites, "name"), vec!["s1", "x"]);
    assert!(ok(admin.get("/v1/inventory").await)
        .as_array()
        .unwrap()
        .is_empty());
    let n = ok(admin.get(&format!("/v1/nodes/{node}")).await);
    assert_eq!(n["state"], "discovered");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bmc_passwords_never_leave_sealed() {
    let c = Cluster::start(1).await.unwrap();
    let admin = c.api(1);
    site_and_rack(&admin).await;
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let csv_password = format!("csvpw-{}", uuid::Uuid::new_v4().simple());
    let record = |serial: &str| {
        json!({
            "serial": serial, "site": "s1", "rack": "r1",
            "bmc": {"address": "10.1.0.5", "driver": "ipmi",
                    "credentials": {"username": "root", "password": password}}
        })
    };
    ok(admin
        .post("/v1/inventory/import", &json!([record("SEC-1")]))
        .await);
    ok(admin.put("/v1/inventory/SEC-2", &record("SEC-2")).await);
    // A dry run and a re-import of the same password go through the same sealing.
    ok(admin
        .post(
            "/v1/inventory/import?dry_run=true",
            &json!([record("SEC-3")]),
        )
        .await);
    let again = ok(admin.put("/v1/inventory/SEC-2", &record("SEC-2")).await);
    assert_eq!(again["unchanged"], json!(["SEC-2"]), "{again}");
    let csv = format!(
        "serial,site,rack,bmc_address,bmc_driver,bmc_username,bmc_password\n\
         SEC-4,s1,r1,10.1.0.6,redfish,admin,{csv_password}\n"
    );
    let r = admin
        .request(Method::POST, "/v1/inventory/import")
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    for path in [
        "/v1/inventory",
        "/v1/inventory/SEC-1",
        "/v1/inventory/SEC-4",
        "/v1/audit?limit=1000",
    ] {
        let r = admin.request(Method::GET, path).send().await.unwrap();
        assert!(r.status().is_success());
        let text = r.text().await.unwrap();
        assert!(
            !text.contains(&password),
            "{path} shows the password: {text}"
        );
        assert!(
            !text.contains(&csv_password),
            "{path} shows the password: {text}"
        );
    }
    let one = ok(admin.get("/v1/inventory/SEC-1").await);
    assert_eq!(
        one["bmc"]["credentials"],
        json!({"username": "root", "password_set": true}),
        "{one}"
    );

    let files = files_under(&c.data_dir(1));
    assert!(files.iter().any(|f| f.ends_with("raft.redb")), "{files:?}");
    for f in files.iter().chain([&c.log_path(1)]) {
        let bytes = std::fs::read(f).unwrap();
        for pw in [&password, &csv_password] {
            assert!(
                !contains(&bytes, pw.as_bytes()),
                "{} contains a BMC password in clear",
                f.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_health_and_metrics() {
    let c = Cluster::start(1).await.unwrap();
    let anon = c.api(1).anonymous();
    let doc = ok(anon.get("/v1/openapi.json").await);
    assert!(doc["openapi"].as_str().is_some(), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/nodes",
        "/v1/inventory/import",
        "/v1/cluster",
        "/v1/audit",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    let r = anon.request(Method::GET, "/metrics").send().await.unwrap();
    assert!(r.status().is_success());
    let text = r.text().await.unwrap();
    assert!(text.contains("metalfleet_raft_term"), "{text}");
    assert!(text.contains("metalfleet_raft_is_leader 1"), "{text}");
    let r = anon.get("/healthz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = anon.get("/readyz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = c.api(1).get("/v1/no-such-thing").await.unwrap();
    assert_err(&r, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_followers_are_forwarded_and_read_linearizably() {
    let c = Cluster::start(3).await.unwrap();
    let leader = c.leader().await.unwrap();
    let followers: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    assert_eq!(followers.len(), 2);
    for i in 0..20 {
        let (w, r) = if i % 2 == 0 {
            (followers[0], followers[1])
        } else {
            (followers[1], followers[0])
        };
        let name = format!("fwd-{i}");
        ok(c.api(w)
            .put(&format!("/v1/sites/{name}"), &json!({"name": name}))
            .await);
        // Linearizable (the default): no waiting, the other follower must already see it.
        let sites = ok(c.api(r).get("/v1/sites").await);
        assert!(
            names(&sites, "name").contains(&name),
            "write of {name} through {w} not visible on {r}: {sites}"
        );
        let one = c.api(r).get("/v1/inventory/none").await.unwrap();
        assert_eq!(one.status, StatusCode::NOT_FOUND);
    }
    for f in &followers {
        let r = c
            .api(*f)
            .request(Method::GET, "/metrics")
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        let forwarded: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("metalfleet_writes_total{path=\"forwarded\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            forwarded >= 10,
            "follower {f} forwarded {forwarded} writes:\n{text}"
        );
    }
}
