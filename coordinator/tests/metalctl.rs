//! `metalctl` rings: golden files for its tables (pure rendering of fixed API answers), and an
//! end-to-end run of the real binary against one real coordinator process on loopback.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test -p coordinator --test
//! metalctl` and review the diff.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coordinator::cli::render::{render, View};
use serde_json::{json, Value};

mod golden_support;
use golden_support::golden;

// ---------------------------------------------------------------------------------------
// Golden files
// ---------------------------------------------------------------------------------------

/// The "now" every golden rendering counts relative times from (2023-11-14T22:13:20Z).
const NOW: i64 = 1_700_000_000_000;

#[test]
fn golden_cluster_status() {
    // As a leader answers: it knows every member's replication progress.
    let v = json!({
        "name": "metalfleet",
        "this": 1,
        "role": "Leader",
        "leader": 1,
        "term": 4,
        "last_applied": 1042,
        "last_log_index": 1042,
        "members": [
            {"id": 3, "kind": "learner",
             "addr": {"raft_addr": "10.0.0.3:7444", "api_url": "https://10.0.0.3:7443"},
             "matched_index": 1040},
            {"id": 1, "kind": "voter",
             "addr": {"raft_addr": "10.0.0.1:7444", "api_url": "https://10.0.0.1:7443"},
             "matched_index": 1042},
            {"id": 2, "kind": "voter",
             "addr": {"raft_addr": "10.0.0.2:7444", "api_url": "https://10.0.0.2:7443"},
             "matched_index": 1042}
        ]
    });
    golden(
        "cluster_status",
        &render(View::ClusterStatus, &v, NOW).unwrap(),
    );

    // As a follower answers: progress unknown, shown as such rather than as 0.
    let mut f = v.clone();
    f["this"] = json!(2);
    f["role"] = json!("Follower");
    for m in f["members"].as_array_mut().unwrap() {
        m["matched_index"] = Value::Null;
    }
    golden(
        "cluster_status_follower",
        &render(View::ClusterStatus, &f, NOW).unwrap(),
    );
}

#[test]
fn golden_node_list() {
    let v = json!([
        {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "serial": "SN-0002", "rack": "ams1-r01",
         "macs": ["52:54:00:a0:00:02"], "state": "deployed", "facts": {"cpus": 64},
         "boot_target": {"kind": "install", "kernel": "vmlinuz", "initrd": "initrd.img",
                         "cmdline": "console=ttyS0", "autoinstall": null},
         "project": "web", "tags": ["batch-1", "compute"], "created_at": 1700000000000_i64,
         "revision": 57},
        {"id": "16fd2706-8baf-433b-82eb-8c7fada847da", "serial": "SN-0001", "rack": "ams1-r01",
         "macs": ["52:54:00:a0:00:01", "52:54:00:a0:00:11"], "state": "ready", "facts": {},
         "boot_target": {"kind": "local"}, "project": null, "tags": [],
         "created_at": 1700000000000_i64, "revision": 12},
        {"id": "9a1f0f5e-2f3c-4c1e-8a7b-3d2c1b0a9f8e", "serial": "SN-0010", "rack": null,
         "macs": [], "state": "discovered", "facts": {}, "boot_target": {"kind": "discovery"},
         "project": null, "tags": ["storage"], "created_at": 1700000100000_i64, "revision": 60}
    ]);
    golden("node_list", &render(View::Nodes, &v, NOW).unwrap());
    golden("node_get", &render(View::Node, &v[0], NOW).unwrap());
}

#[test]
fn golden_inventory_list() {
    let v = json!([
        {"serial": "SN-0002", "site": "ams1", "rack": "ams1-r01", "u_position": 2,
         "model": "PowerEdge R650", "nics": [{"name": "eno1", "mac": "52:54:00:a0:00:02",
         "switch": "tor1", "port": "Ethernet1/3"}],
         "bmc": {"address": "10.10.1.12", "driver": "ipmi",
                 "credentials": {"username": "admin", "password_set": true}},
         "static_ips": [{"interface": "eno1", "address": "10.20.1.12", "prefix": 24,
                         "gateway": "10.20.1.1"}],
         "tags": ["batch-1", "compute"], "revision": 20, "generation": 2},
        {"serial": "SN-0001", "site": "ams1", "rack": "ams1-r01", "u_position": null,
         "model": null, "nics": [], "bmc": null, "static_ips": [], "tags": [],
         "revision": 19, "generation": 1}
    ]);
    golden("inventory_list", &render(View::Inventory, &v, NOW).unwrap());
    golden(
        "inventory_get",
        &render(View::InventoryRecord, &v[0], NOW).unwrap(),
    );
}

#[test]
fn golden_audit() {
    let v = json!([
        {"revision": 61, "at": 1700000200000_i64, "actor": "user:admin", "action": "node.patch",
         "target": "SN-0001", "outcome": "applied", "request_id": "admin/5d1c"},
        {"revision": 60, "at": 1700000100000_i64, "actor": "rack:ams1-r01",
         "action": "node.register", "target": "SN-0010", "outcome": "applied"},
        {"revision": 59, "at": 1700000000000_i64, "actor": "user:ops",
         "action": "rack.delete", "target": "ams1-r09",
         "outcome": "refused: conflict: rack ams1-r09 holds nodes", "request_id": null}
    ]);
    golden("audit", &render(View::Audit, &v, NOW).unwrap());
}

#[test]
fn golden_import_report() {
    let v = json!({
        "created": ["SN-0003"],
        "updated": [["SN-0002", ["model", "tags"]]],
        "unchanged": ["SN-0001"],
        "dry_run": true
    });
    golden(
        "import_report_dry_run",
        &render(View::ImportReport, &v, NOW).unwrap(),
    );
}

#[test]
fn golden_rack_list() {
    // An AgentView as `GET /v1/agents` gives it for a rack that never enrolled, with `set`
    // laid over it.
    let agent = |rack: &str, set: Value| {
        let mut a = json!({"rack": rack, "enrolled": false, "revoked": false,
            "cert_not_after": null, "connected": false, "coordinator": null, "last_seen": null,
            "revision": 0, "revision_lag": 0, "outbox_depth": 0, "version": null,
            "last_seq": 0, "events_applied": 0});
        a.as_object_mut()
            .unwrap()
            .extend(set.as_object().unwrap().clone());
        a
    };
    let up = agent(
        "ams1-r01",
        json!({"enrolled": true, "cert_not_after": NOW + 30 * 86_400_000_i64,
               "connected": true, "coordinator": 2, "last_seen": NOW - 3_000,
               "revision": 57, "version": "0.1.0", "last_seq": 1042, "events_applied": 1042}),
    );
    let down = agent(
        "ams1-r02",
        json!({"enrolled": true, "cert_not_after": NOW + 86_400_000_i64,
               "coordinator": 1, "last_seen": NOW - 340_000, "revision": 50,
               "revision_lag": 7, "outbox_depth": 12, "version": "0.1.0",
               "last_seq": 311, "events_applied": 311}),
    );
    let revoked = agent(
        "fra1-r01",
        json!({"revoked": true, "coordinator": 3, "last_seen": NOW - 3 * 86_400_000_i64,
               "revision": 9, "revision_lag": 2, "version": "0.0.9", "last_seq": 88,
               "events_applied": 88}),
    );
    let never = agent("ams1-r03", json!({}));
    // The joined list `rack list -o json` prints: rack fields plus "agent".
    // Listed out of order on purpose: the table sorts by rack.
    let v = json!([
        {"name": "fra1-r01", "site": "fra1", "description": "", "agent": revoked},
        {"name": "ams1-r03", "site": "ams1", "description": "new", "agent": never},
        {"name": "ams1-r02", "site": "ams1", "description": "", "agent": down},
        {"name": "ams1-r01", "site": "ams1", "description": "", "agent": up},
        // Created between the rack and agent reads: nothing known, nothing guessed.
        {"name": "ams1-r04", "site": "ams1", "description": "", "agent": null}
    ]);
    golden("rack_list", &render(View::RackAgents, &v, NOW).unwrap());
}

#[test]
fn golden_enroll_token() {
    let v = json!({"rack": "ams1-r01", "token": "mfe_3q2Yt0bKx1", "expires_at": NOW + 3_600_000});
    golden(
        "rack_enroll_token",
        &render(View::CreatedEnrollToken, &v, NOW).unwrap(),
    );
}

#[test]
fn rendering_refuses_the_wrong_shape() {
    assert!(render(View::Nodes, &json!({"not": "a list"}), NOW).is_err());
    assert!(render(
        View::RackAgents,
        &json!([{"name": "r", "agent": null}]),
        NOW
    )
    .is_err());
    assert!(render(View::RackAgents, &json!(["r"]), NOW).is_err());
}

// ---------------------------------------------------------------------------------------
// End to end: one real coordinator, the real metalctl binary
// ---------------------------------------------------------------------------------------

const PATIENCE: Duration = Duration::from_secs(30);

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `coordinator run`, killed when dropped.
struct Coordinator {
    child: Child,
    log: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One coordinator with its data dir, plus a metalctl config pointing at it.
struct Cluster {
    dir: tempfile::TempDir,
    api_url: String,
    token: String,
    ca: PathBuf,
    config: PathBuf,
    _coordinator: Coordinator,
}

fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let api_port = free_tcp_port();
    let raft_port = free_udp_port();
    let fleet_port = free_udp_port();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = 1\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{api_port}\"\nraft_listen = \"127.0.0.1:{raft_port}\"\nfleet_listen = \"127.0.0.1:{fleet_port}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_coordinator");
    let init = Command::new(bin)
        .args(["init", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "coordinator init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let token = String::from_utf8(init.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let log = dir.path().join("coordinator.log");
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let coordinator = Coordinator { child, log };
    let ca = dir.path().join("data/tls/ca.crt");
    let api_url = format!("https://127.0.0.1:{api_port}");
    wait_ready(&api_url, &ca, &coordinator);
    let config = dir.path().join("metalctl.toml");
    std::fs::write(
        &config,
        format!(
            "coordinators = [{api_url:?}]\ntoken = {token:?}\nca_cert = {:?}\n",
            ca.display().to_string()
        ),
    )
    .unwrap();
    Cluster {
        dir,
        api_url,
        token,
        ca,
        config,
        _coordinator: coordinator,
    }
}

/// A second coordinator (id 2) that joined (holds a certificate) but is not a member: it knows
/// no leader, so its API answers 503 to everything that needs the cluster. Returns it with
/// its API URL, Raft address and fleet address.
fn start_leaderless(c: &Cluster) -> (Coordinator, String, String, String) {
    let api_port = free_tcp_port();
    let raft_port = free_udp_port();
    let fleet_port = free_udp_port();
    let cfg = c.dir.path().join("coordinator-2.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = 2\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{api_port}\"\nraft_listen = \"127.0.0.1:{raft_port}\"\nfleet_listen = \"127.0.0.1:{fleet_port}\"\n",
            c.dir.path().join("data-2").display().to_string()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_coordinator");
    let join = Command::new(bin)
        .args(["join", "-c"])
        .arg(&cfg)
        .args(["--via", &c.api_url, "--token", &c.token, "--ca-cert"])
        .arg(&c.ca)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        join.status.success(),
        "coordinator join failed: {}",
        String::from_utf8_lossy(&join.stderr)
    );
    let log = c.dir.path().join("coordinator-2.log");
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let coordinator = Coordinator { child, log };
    let api_url = format!("https://127.0.0.1:{api_port}");
    wait_for(&api_url, "/healthz", &c.ca, &coordinator);
    (
        coordinator,
        api_url,
        format!("127.0.0.1:{raft_port}"),
        format!("127.0.0.1:{fleet_port}"),
    )
}

/// Polls `/readyz` until the coordinator knows a leader.
fn wait_ready(api_url: &str, ca: &Path, c: &Coordinator) {
    wait_for(api_url, "/readyz", ca, c);
}

/// Polls `path` until it answers 200.
fn wait_for(api_url: &str, path: &str, ca: &Path, c: &Coordinator) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pem = std::fs::read_to_string(ca).unwrap();
    let client = coordinator::cli::client::http_client(Some(&pem)).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ok = rt.block_on(async {
            client
                .get(format!("{api_url}{path}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "coordinator {path} not 200 after {PATIENCE:?}; log:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// `metalctl` with a clean environment: only what the test passes.
    fn metalctl(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_metalctl"));
        c.env_clear()
            .env("HOME", self.dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        c
    }

    /// Runs `metalctl --config <ours> args...`.
    fn run(&self, args: &[&str]) -> Output {
        self.metalctl()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "metalctl {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn end_to_end_against_a_real_coordinator() {
    let c = start_cluster();

    // Sites and racks.
    let out = c.ok(&["site", "create", "ams1", "--description", "Amsterdam"]);
    assert!(out.contains("ams1") && out.contains("Amsterdam"), "{out}");
    c.ok(&["rack", "create", "ams1-r01", "--site", "ams1"]);
    let out = c.ok(&["rack", "list"]);
    assert!(out.starts_with("RACK"), "{out}");
    assert!(out.contains("ams1-r01"), "{out}");

    // Inventory from CSV, then a dry run of a changed file.
    let csv = c.write(
        "inventory.csv",
        "serial,site,rack,model,nics,tags\n\
         SN-0001,ams1,ams1-r01,R650,eno1=52:54:00:a0:00:01,compute\n\
         SN-0002,ams1,ams1-r01,R650,eno1=52:54:00:a0:00:02,compute\n",
    );
    let out = c.ok(&["inventory", "import", &csv]);
    assert!(out.contains("2 created, 0 updated"), "{out}");
    let changed = c.write(
        "inventory-v2.csv",
        "serial,site,rack,model,nics,tags\n\
         SN-0001,ams1,ams1-r01,R650,eno1=52:54:00:a0:00:01,compute\n\
         SN-0002,ams1,ams1-r01,R750,eno1=52:54:00:a0:00:02,compute\n",
    );
    let out = c.ok(&["inventory", "import", "--dry-run", &changed]);
    let line = out
        .lines()
        .find(|l| l.starts_with("SN-0002"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("updated") && line.contains("model"), "{out}");
    assert!(out.contains("dry run"), "{out}");
    let rec = c.json(&["inventory", "get", "SN-0002"]);
    assert_eq!(rec["model"], "R650", "the dry run changed nothing");
    let out = c.ok(&["inventory", "list", "--rack", "ams1-r01"]);
    assert_eq!(out.lines().count(), 3, "{out}");

    // A bad MAC is refused with the field named and exit code 2.
    let bad = c.write(
        "bad.csv",
        "serial,site,rack,nics\nSN-0003,ams1,ams1-r01,eno1=52:54:00:zz:00:03\n",
    );
    let o = c.run(&["inventory", "import", &bad]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(field line 2: nics)"),
        "{}",
        stderr(&o)
    );

    // Nodes.
    let out = c.ok(&[
        "node",
        "create",
        "SN-0001",
        "--rack",
        "ams1-r01",
        "--mac",
        "52:54:00:a0:00:01",
    ]);
    assert!(out.contains("SN-0001"), "{out}");
    let out = c.ok(&["node", "set", "SN-0001", "--boot", "local"]);
    assert!(out.contains("local"), "{out}");
    let nodes = c.json(&["node", "list"]);
    let n = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["serial"] == "SN-0001")
        .unwrap_or_else(|| panic!("{nodes}"));
    assert_eq!(n["boot_target"], json!({"kind": "local"}));
    let out = c.ok(&["node", "list", "--stale"]);
    assert!(out.contains("SN-0001") && out.contains("local"), "{out}");
    let o = c.run(&["node", "get", "SN-9999"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));

    // Every write carried this invocation's idempotency key (stored per user).
    let audit = c.json(&["audit", "--limit", "3"]);
    let latest = &audit.as_array().unwrap()[0];
    assert_eq!(latest["action"], "node.patch", "{audit}");
    assert!(
        latest["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("admin/")),
        "{audit}"
    );
    assert!(c.ok(&["audit", "--limit", "3"]).starts_with("REVISION"));

    // A new token works; a wrong one is refused with exit code 3.
    let created = c.json(&["token", "create", "--description", "e2e"]);
    let secret = created["secret"].as_str().unwrap();
    assert_ne!(secret, c.token);
    let out = c.ok(&["site", "list", "--token", secret]);
    assert!(out.contains("ams1"), "{out}");
    let o = c.run(&["site", "list", "--token", "mf_not_a_token"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = c.ok(&["token", "list"]);
    assert!(out.contains("e2e"), "{out}");
    assert!(!out.contains(secret), "secrets are never listed");

    // Rack agents: an enrollment token, alone on the last line; the rack stays without an
    // agent until one enrolls, so there is nothing to revoke (exit 4).
    let out = c.ok(&["rack", "enroll-token", "ams1-r01", "--expires-in", "600"]);
    assert!(out.contains("ams1-r01"), "{out}");
    let token = out.lines().last().unwrap();
    assert!(token.starts_with("mfe_") && !token.contains(' '), "{out}");
    let created = c.json(&["rack", "enroll-token", "ams1-r01"]);
    assert_eq!(created["rack"], "ams1-r01", "{created}");
    assert!(
        created["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("mfe_") && t != token),
        "{created}"
    );
    let out = c.ok(&["rack", "list"]);
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("ams1-r01 "))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["ams1-r01", "ams1", "none", "-"], "{out}");
    let racks = c.json(&["rack", "list"]);
    let r = &racks.as_array().unwrap()[0];
    assert_eq!(r["name"], "ams1-r01", "{racks}");
    assert_eq!(r["agent"]["rack"], "ams1-r01", "{racks}");
    assert_eq!(r["agent"]["enrolled"], false, "{racks}");
    let o = c.run(&["rack", "revoke", "ams1-r01"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("no enrolled agent"), "{}", stderr(&o));

    // Only admins create enrollment tokens: an operator is refused with exit code 3.
    c.ok(&["user", "create", "ops", "--role", "operator"]);
    let ops = c.json(&["token", "create", "--user", "ops"]);
    let ops = ops["secret"].as_str().unwrap();
    let o = c.run(&["rack", "enroll-token", "ams1-r01", "--token", ops]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(c.ok(&["rack", "list", "--token", ops]).contains("ams1-r01"));

    // A project member may list racks but not agents: the agent shows as unknown.
    c.ok(&["project", "create", "web"]);
    c.ok(&[
        "user",
        "create",
        "dev",
        "--role",
        "project_member",
        "--project",
        "web",
    ]);
    let dev = c.json(&["token", "create", "--user", "dev"]);
    let dev = dev["secret"].as_str().unwrap();
    let racks = c.json(&["rack", "list", "--token", dev]);
    assert_eq!(racks[0]["name"], "ams1-r01", "{racks}");
    assert_eq!(racks[0]["agent"], Value::Null, "{racks}");

    // Cluster status.
    let out = c.ok(&["cluster", "status"]);
    assert!(out.contains("Leader"), "{out}");
    assert!(out.contains(&c.api_url), "{out}");
}

#[test]
fn config_errors_and_failover() {
    let c = start_cluster();
    let ca = c.ca.display().to_string();

    // Unknown key: exit 2, the message names the file and the key.
    let bad = c.write(
        "bad.toml",
        &format!(
            "coordinators = [{:?}]\ntoken = {:?}\nca_cert = {ca:?}\ncolour = \"blue\"\n",
            c.api_url, c.token
        ),
    );
    let o = c
        .metalctl()
        .args(["--config", &bad, "site", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&bad) && stderr(&o).contains("colour"),
        "{}",
        stderr(&o)
    );

    // No config file at all, everything from flags and the environment.
    let out = c
        .metalctl()
        .env("METALFLEET_TOKEN", &c.token)
        .args([
            "--coordinator",
            &c.api_url,
            "--ca-cert",
            &ca,
            "site",
            "list",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // A dead coordinator first: reads and writes go to the next one.
    let failover = c.write(
        "failover.toml",
        &format!(
            "coordinators = [\"https://127.0.0.1:1\", {:?}]\ntoken = {:?}\nca_cert = {ca:?}\n",
            c.api_url, c.token
        ),
    );
    let run = |args: &[&str]| {
        c.metalctl()
            .arg("--config")
            .arg(&failover)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["site", "create", "fra1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["site", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("fra1"));

    // A coordinator without a leader answers 503: the next one serves the write.
    let (_second, url, raft_addr, fleet_addr) = start_leaderless(&c);
    let o = c
        .metalctl()
        .args(["--config", &failover, "--coordinator", &url])
        .args(["--coordinator", &c.api_url, "site", "create", "par1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(c.ok(&["site", "list"]).contains("par1"));

    // Only dead coordinators: exit 6, naming each one tried.
    let o = c
        .metalctl()
        .args([
            "--config",
            &failover,
            "--coordinator",
            "https://127.0.0.1:1",
        ])
        .args(["--coordinator", "https://127.0.0.1:2", "site", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("https://127.0.0.1:1:") && e.contains("https://127.0.0.1:2:"),
        "{e}"
    );

    // The second coordinator becomes a learner, with the fleet address agents will be given.
    let changed = c.json(&[
        "cluster",
        "add-learner",
        "2",
        &raft_addr,
        &url,
        "--fleet-addr",
        &fleet_addr,
    ]);
    let member = changed["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 2)
        .unwrap_or_else(|| panic!("{changed}"));
    assert_eq!(member["kind"], "learner", "{changed}");
    assert_eq!(
        member["addr"]["fleet_addr"],
        fleet_addr.as_str(),
        "{changed}"
    );
}
