//! Identification by serial and the identify hook, end to end through one real coordinator
//! run in-process (`coordinator init` by the binary, then [`App::start`] and the HTTPS API on
//! loopback) with a small HTTP server in the test as the "node identify" service.
//!
//! Check-ins enter the way the fleet server commits them: a `rack.events` command from the
//! rack's enrolled agent (the fleet link itself is tested by the agent suite).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use coordinator::app::App;
use coordinator::config::Config;
use coordinator::state::{Command, ImportItem};
use protocol::domain::{EnrollToken, InventoryRecord, NodeView, Rack, Site, StaticIp};
use protocol::fleet::{Event, EventKind};
use protocol::json::JsonValue;
use protocol::{Mac, Serial};
use serde_json::{json, Value};

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

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

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0x0c, last])
}

/// The test's identify service: records every request; answers by serial.
#[derive(Clone, Default)]
struct HookLog(Arc<Mutex<Vec<Value>>>);

impl HookLog {
    fn calls_for(&self, serial: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["serial"] == serial)
            .count()
    }
}

async fn identify(
    AxState(log): AxState<HookLog>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    log.0.lock().unwrap().push(body.clone());
    match body["serial"].as_str().unwrap_or_default() {
        "SN-BROKEN" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "cmdb down"})),
        ),
        serial => (
            StatusCode::OK,
            Json(json!({
                "hostname": format!("host-{}", serial.to_lowercase()),
                "owner": "team-metal",
                "seen_macs": body["macs"],
                "static_ips": [{"interface": "eno1", "address": "10.20.0.5", "prefix": 24,
                                "gateway": "10.20.0.1"}],
            })),
        ),
    }
}

/// One coordinator with its API served, plus the hook server.
struct Rig {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    api_url: String,
    token: String,
    metalctl_config: PathBuf,
    home: PathBuf,
    hook: HookLog,
    client: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

async fn start() -> Rig {
    let hook = HookLog::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/identify", post(identify))
        .with_state(hook.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let api_port = free_tcp_port();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = 1\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{api_port}\"\nraft_listen = \"127.0.0.1:{}\"\nfleet_listen = \"127.0.0.1:{}\"\nidentify_hook_url = \"http://{hook_addr}/identify\"\nidentify_hook_timeout_secs = 2\n",
            dir.path().join("data").display().to_string(),
            free_udp_port(),
            free_udp_port(),
        ),
    )
    .unwrap();
    let init = Process::new(env!("CARGO_BIN_EXE_coordinator"))
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
    let config = Config::load(&cfg).unwrap();
    let app = App::start(config).await.unwrap();
    let api = tokio::net::TcpListener::bind(("127.0.0.1", api_port))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(coordinator::api::serve(app.clone(), api, stop.clone()));
    let ca = dir.path().join("data/tls/ca.crt");
    let client =
        coordinator::cli::client::http_client(Some(&std::fs::read_to_string(&ca).unwrap()))
            .unwrap();
    let api_url = format!("https://127.0.0.1:{api_port}");
    let metalctl_config = dir.path().join("metalctl.toml");
    std::fs::write(
        &metalctl_config,
        format!(
            "coordinators = [{api_url:?}]\ntoken = {token:?}\nca_cert = {:?}\n",
            ca.display().to_string()
        ),
    )
    .unwrap();
    let home = dir.path().to_owned();
    let rig = Rig {
        _dir: dir,
        app,
        api_url,
        token,
        metalctl_config,
        home,
        hook,
        client,
        stop,
    };
    rig.wait_until("the coordinator leads", || async {
        rig.app.raft.metrics().borrow().current_leader == Some(1)
    })
    .await;
    rig
}

impl Rig {
    async fn write(&self, command: Command) {
        let r = self
            .app
            .write("user:admin".into(), None, command)
            .await
            .unwrap();
        r.result.unwrap();
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap())
    }

    async fn node(&self, serial: &str) -> NodeView {
        let (status, v) = self.get(&format!("/v1/nodes/{serial}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn wait_until<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PATIENCE;
        while !cond().await {
            assert!(
                Instant::now() < deadline,
                "timed out after {PATIENCE:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the hook's result for `phase` is recorded on `serial`'s node.
    async fn wait_identified(&self, serial: &str, phase: &str) -> NodeView {
        self.wait_until(&format!("hook result ({phase}) on {serial}"), || async {
            self.node(serial).await.node.facts.0["identify_phase"] == phase
        })
        .await;
        self.node(serial).await
    }

    fn metalctl(&self, args: &[&str]) -> String {
        let out = Process::new(env!("CARGO_BIN_EXE_metalctl"))
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--config")
            .arg(&self.metalctl_config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "metalctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn record(serial: &str, u: u16) -> InventoryRecord {
    InventoryRecord {
        serial: serial.parse().unwrap(),
        site: "ams1".parse().unwrap(),
        rack: "r1".parse().unwrap(),
        u_position: Some(u),
        model: None,
        nics: Vec::new(),
        bmc: None,
        static_ips: Vec::new(),
        tags: BTreeSet::new(),
        revision: 0,
        generation: 0,
    }
}

fn check_in(seq: u64, serial: &str, last_mac: u8) -> Event {
    Event {
        seq,
        at: coordinator::app::now_ms(),
        kind: EventKind::CheckIn {
            serial: serial.parse().unwrap(),
            macs: vec![mac(last_mac)],
            facts: JsonValue(json!({"cpus": 4, "vendor": "QEMU"})),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ins_are_identified_or_pooled_and_the_hook_fills_them_in() {
    let rig = start().await;
    rig.write(Command::PutSite(Site {
        name: "ams1".parse().unwrap(),
        description: String::new(),
    }))
    .await;
    rig.write(Command::PutRack(Rack {
        name: "r1".parse().unwrap(),
        site: "ams1".parse().unwrap(),
        description: String::new(),
    }))
    .await;
    rig.write(Command::ImportInventory(vec![
        ImportItem {
            record: record("SN-KNOWN", 7),
        },
        ImportItem {
            record: record("SN-BROKEN", 8),
        },
    ]))
    .await;
    rig.write(Command::CreateEnrollToken(EnrollToken {
        rack: "r1".parse().unwrap(),
        hash: "enroll-hash".into(),
        expires_at: coordinator::app::now_ms() + 3_600_000,
        used_at: None,
    }))
    .await;
    rig.write(Command::Enroll {
        rack: "r1".parse().unwrap(),
        token_hash: "enroll-hash".into(),
        fingerprint: "agent-fp".into(),
        not_after: coordinator::app::now_ms() + 3_600_000,
    })
    .await;

    // The rack agent reports three machines booting its discovery image.
    let r = rig
        .app
        .write_unkeyed(
            "rack:r1".into(),
            Command::AgentEvents {
                rack: "r1".parse().unwrap(),
                events: vec![
                    check_in(1, "SN-KNOWN", 1),
                    check_in(2, "SN-STRAY", 2),
                    check_in(3, "SN-BROKEN", 3),
                ],
            },
        )
        .await
        .unwrap();
    r.result.unwrap();

    // The identified node: linked to its record, audited, and filled in by the hook.
    let known = rig.wait_identified("SN-KNOWN", "identified").await;
    assert!(known.identified);
    assert_eq!(known.u_position, Some(7));
    assert_eq!(
        known.node.rack.as_ref().map(|r| r.to_string()).as_deref(),
        Some("r1")
    );
    let facts = &known.node.facts.0;
    assert_eq!(facts["identify"]["owner"], "team-metal");
    assert_eq!(facts["identify"]["seen_macs"], json!([mac(1)]));
    assert_eq!(facts["hostname"], "host-sn-known");
    assert_eq!(facts["identify_error"], Value::Null);
    assert_eq!(facts["cpus"], 4, "the check-in's own facts stay");
    // Its static addresses went into its record, hence into the rack agent's desired state.
    let (inv, snap) = {
        let g = rig.app.state.read().unwrap();
        let serial: Serial = "SN-KNOWN".parse().unwrap();
        let rev = g.last_applied.map(|l| l.index).unwrap_or(0);
        (
            g.state.inventory[&serial].static_ips.clone(),
            coordinator::fleet::desired::snapshot(
                &g.state,
                &rig.app.key,
                &"r1".parse().unwrap(),
                rev,
            ),
        )
    };
    let want: Vec<StaticIp> = serde_json::from_value(
        json!([{"interface": "eno1", "address": "10.20.0.5", "prefix": 24, "gateway": "10.20.0.1"}]),
    )
    .unwrap();
    assert_eq!(inv, want);
    let agent_view = snap
        .nodes
        .iter()
        .find(|n| n.serial.as_str() == "SN-KNOWN")
        .unwrap();
    assert_eq!(agent_view.static_ips, want);
    let (_, audit) = rig.get("/v1/audit").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "node.identified"
                && e["target"].as_str().unwrap().contains("SN-KNOWN")),
        "{audit}"
    );

    // The unknown serial: in the discovered pool, called once as such; its static addresses
    // have no record to go to and say so.
    let stray = rig.wait_identified("SN-STRAY", "discovered").await;
    assert!(!stray.identified);
    assert_eq!(stray.u_position, None);
    assert_eq!(stray.node.facts.0["identify"]["owner"], "team-metal");
    assert!(stray.node.facts.0["identify_error"]
        .as_str()
        .unwrap()
        .contains("no expected-inventory record"));

    // The failing hook: retried a bounded number of times, then the error is recorded.
    let broken = rig.wait_identified("SN-BROKEN", "identified").await;
    let err = broken.node.facts.0["identify_error"].as_str().unwrap();
    assert!(err.contains("500"), "{err}");
    assert_eq!(
        rig.hook.calls_for("SN-BROKEN") as u32,
        coordinator::identify::MAX_ATTEMPTS
    );
    assert!(broken.node.facts.0.get("identify").is_none());

    // The discovered pool, through the API and metalctl.
    let (status, pool) = rig.get("/v1/nodes?identified=false").await;
    assert_eq!(status, StatusCode::OK);
    let serials: Vec<&str> = pool
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, vec!["SN-STRAY"]);
    let (_, known_list) = rig.get("/v1/nodes?identified=true").await;
    assert_eq!(known_list.as_array().unwrap().len(), 2);
    let (status, bad) = rig.get("/v1/nodes?identified=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["field"], "identified", "{bad}");
    let table = tokio::task::block_in_place(|| rig.metalctl(&["node", "list", "--discovered"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].contains("IDENTIFIED"), "{table}");
    assert!(
        lines[1].starts_with("SN-STRAY") && lines[1].contains(" no "),
        "{table}"
    );
    let all = tokio::task::block_in_place(|| rig.metalctl(&["node", "list"]));
    assert!(
        all.lines()
            .any(|l| l.starts_with("SN-KNOWN") && l.contains(" 7 ") && l.contains(" yes ")),
        "{all}"
    );

    // Importing a record for the stray identifies it; the hook runs again for that phase and
    // its static addresses now land in the new record.
    rig.write(Command::ImportInventory(vec![ImportItem {
        record: record("SN-STRAY", 20),
    }]))
    .await;
    let stray = rig.wait_identified("SN-STRAY", "identified").await;
    assert!(stray.identified);
    assert_eq!(stray.u_position, Some(20));
    assert_eq!(stray.node.facts.0["identify_error"], Value::Null);
    let (_, pool) = rig.get("/v1/nodes?identified=false").await;
    assert_eq!(pool, json!([]));

    // Once per node and phase: later check-ins and other writes do not call again.
    let r = rig
        .app
        .write_unkeyed(
            "rack:r1".into(),
            Command::AgentEvents {
                rack: "r1".parse().unwrap(),
                events: vec![check_in(4, "SN-KNOWN", 1)],
            },
        )
        .await
        .unwrap();
    r.result.unwrap();
    tokio::time::sleep(coordinator::identify::POLL_INTERVAL + Duration::from_millis(500)).await;
    assert_eq!(rig.hook.calls_for("SN-KNOWN"), 1);
    assert_eq!(rig.hook.calls_for("SN-STRAY"), 2);

    rig.stop.cancel();
    rig.app.shutdown().await;
}
