//! The HTTP boot server in-process on 127.0.0.1:0 with real `curl` as the client: iPXE scripts
//! against golden files, assets (Range, HEAD, conditionals, path confinement, iPXE binaries),
//! the remote-asset cache against a second local HTTP server, the node API (check-in, long
//! poll, results, logs, bad bodies), autoinstall templates, metrics and HTTPS.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test -p rack-agent --test
//! http_boot` and review the diff.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::domain::{BootTarget, StaticIp};
use protocol::fleet::{EventKind, RackNode};
use protocol::{Mac, NodeId};
use rack_agent::boot::http::{ActionTarget, HttpConfig, HttpServer, NodeAction, NodeActions};
use rack_agent::boot::{BootDeps, CollectingSink, ConfigCtx, FixtureBackend};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn id(n: u8) -> NodeId {
    format!("00000000-0000-0000-0000-0000000000{n:02x}")
        .parse()
        .unwrap()
}

fn mac(n: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, n])
}

fn node(n: u8, boot_target: BootTarget) -> RackNode {
    RackNode {
        id: id(n),
        serial: format!("SN{n:02}").parse().unwrap(),
        macs: vec![mac(n), Mac([0x52, 0x54, 0, 0, 1, n])],
        boot_target,
        static_ips: vec![StaticIp {
            interface: "eth0".into(),
            address: format!("10.0.0.{n}").parse().unwrap(),
            prefix: 24,
            gateway: Some("10.0.0.1".parse().unwrap()),
        }],
        switch_ports: vec![],
        bmc: None,
        revision: 1,
        power: None,
    }
}

const UNKNOWN: u8 = 0x99;

fn nodes() -> Vec<RackNode> {
    vec![
        node(1, BootTarget::Discovery),
        node(2, BootTarget::Local),
        node(
            3,
            BootTarget::Install {
                kernel: "debian-13/vmlinuz".into(),
                initrd: "debian-13/initrd.gz".into(),
                cmdline: "auto=true priority=critical url={{ autoinstall_url }} console=ttyS0"
                    .into(),
                autoinstall: Some("debian-13.preseed".into()),
            },
        ),
        node(
            4,
            BootTarget::Install {
                kernel: "https://mirror.example/debian/vmlinuz".into(),
                initrd: "https://mirror.example/debian/initrd.gz".into(),
                cmdline: "ip=dhcp".into(),
                autoinstall: None,
            },
        ),
        node(
            5,
            BootTarget::Sanboot {
                target: "iscsi:10.0.0.5::3260:1:iqn.2026-11.example:node5".into(),
            },
        ),
        node(6, BootTarget::None),
        node(
            8,
            BootTarget::Sanboot {
                // The host's loopback seen from QEMU's user network; port 1 refuses at once.
                target: "iscsi:10.0.2.2::1:1:iqn.2026-11.example:nothing".into(),
            },
        ),
        node(
            7,
            BootTarget::Install {
                kernel: "k".into(),
                initrd: "i".into(),
                cmdline: String::new(),
                autoinstall: Some("broken.tmpl".into()),
            },
        ),
    ]
}

/// A server on 127.0.0.1:0 with its fixtures; cancelled on drop.
struct Harness {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    https: Option<SocketAddr>,
    actions: NodeActions,
    sink: Arc<CollectingSink>,
    data: PathBuf,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Harness {
    async fn start(extra_toml: &str) -> Harness {
        Harness::start_with(extra_toml, |_| {}).await
    }

    /// `prepare` may write files into the data dir before the server binds.
    async fn start_with(extra_toml: &str, prepare: impl FnOnce(&Path)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_owned();
        let ipxe = data.join("ipxe");
        std::fs::create_dir_all(&ipxe).unwrap();
        for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi", "other.bin"] {
            std::fs::write(ipxe.join(f), format!("binary {f}")).unwrap();
        }
        prepare(&data);
        let toml = format!(
            "listen = \"127.0.0.1:0\"\n{extra_toml}\n[discovery]\nkernel = \"microkernel/vmlinuz\"\ninitrd = \"microkernel/initrd.img\"\ncmdline = \"console=ttyS0\"\n"
        );
        let ctx = ConfigCtx {
            base_dir: data.clone(),
            data_dir: data.clone(),
        };
        let config = HttpConfig::from_toml(toml::from_str(&toml).unwrap(), &ctx).unwrap();
        let backend = Arc::new(FixtureBackend::new(nodes()));
        let sink = Arc::new(CollectingSink::default());
        let mut deps = BootDeps::fixture(backend, sink.clone(), data.clone());
        deps.ipxe_dir = ipxe;
        let server = HttpServer::bind(&config, &deps).await.unwrap();
        let cancel = CancellationToken::new();
        let mut h = Harness {
            addr: server.local_addr(),
            task: None,
            https: server.https_addr(),
            actions: server.node_actions(),
            sink,
            data,
            cancel: cancel.clone(),
            _dir: dir,
        };
        h.task = Some(tokio::spawn(server.run(cancel)));
        h
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// One `curl` exchange.
#[derive(Debug)]
struct Curl {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Curl {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<String> {
        let want = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&want))
            .map(|l| l.get(want.len()..).unwrap_or("").trim().to_owned())
    }
}

/// Runs `curl -sS <args>`; the process is killed if the test fails while it runs.
async fn curl(args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let headers = dir.path().join("headers");
    let out = tokio::process::Command::new("curl")
        .arg("-sS")
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .arg("-w")
        .arg("%{http_code}")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        out.status.success() || status != 0,
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Curl {
        status,
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// Polls `cond` every 10 ms until it holds (the test's own timeout bounds it).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------
// Golden iPXE scripts
// ---------------------------------------------------------------------------------------

/// Compares `actual` with `tests/golden/ipxe/<name>.ipxe`, or rewrites it with
/// `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/ipxe")
        .join(format!("{name}.ipxe"));
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        actual == want,
        "{} differs (UPDATE_GOLDEN=1 to accept)\n--- want\n{want}--- got\n{actual}",
        path.display()
    );
}

const HOST: &str = "Host: boot.test:8080";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_match_golden_files_and_emit_boot_events() {
    let h = Harness::start("unknown_macs = \"discovery\"").await;
    let cases = [
        ("discovery", mac(1), "ipxe: discovery"),
        (
            "unknown-discovery",
            mac(UNKNOWN),
            "ipxe: discovery (unknown mac)",
        ),
        ("local", mac(2), "ipxe: local"),
        (
            "install-autoinstall",
            mac(3),
            "ipxe: install debian-13/vmlinuz",
        ),
        (
            "install-absolute-urls",
            mac(4),
            "ipxe: install https://mirror.example/debian/vmlinuz",
        ),
        (
            "sanboot",
            mac(5),
            "ipxe: sanboot iscsi:10.0.0.5::3260:1:iqn.2026-11.example:node5",
        ),
        ("none", mac(6), "ipxe: none"),
    ];
    for (name, m, detail) in cases {
        let r = curl(&["-H", HOST, &h.url(&format!("/ipxe/{m}"))]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        golden(name, &r.text());
        let node = nodes()
            .into_iter()
            .find(|n| n.macs.contains(&m))
            .map(|n| n.id);
        let want = EventKind::Boot {
            mac: m,
            node,
            detail: detail.to_owned(),
        };
        assert!(h.sink.events().contains(&want), "{name}: no {want:?}");
    }
    // The query form and other MAC notations give the same script.
    let a = curl(&["-H", HOST, &h.url("/ipxe/52-54-00-00-00-03")]).await;
    let b = curl(&["-H", HOST, &h.url("/ipxe/boot.ipxe?mac=5254.0000.0003")]).await;
    assert_eq!(a.text(), b.text());
    golden("install-autoinstall", &b.text());
    // A bad MAC is refused with a JSON error naming the field.
    let bad = curl(&[&h.url("/ipxe/not-a-mac")]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["field"], "mac");
    // Without a Host override the base URL is the address curl used.
    let plain = curl(&[&h.url(&format!("/ipxe/{}", mac(1)))]).await;
    assert!(
        plain
            .text()
            .contains(&format!("metalfleet.agent=http://{}", h.addr)),
        "{}",
        plain.text()
    );

    let exit = Harness::start("unknown_macs = \"exit\"").await;
    let r = curl(&["-H", HOST, &exit.url(&format!("/ipxe/{}", mac(UNKNOWN)))]).await;
    assert_eq!(r.status, 200);
    golden("unknown-exit", &r.text());
    assert!(exit.sink.events().contains(&EventKind::Boot {
        mac: mac(UNKNOWN),
        node: None,
        detail: "ipxe: exit (unknown mac)".into()
    }));
}

// ---------------------------------------------------------------------------------------
// Assets
// ---------------------------------------------------------------------------------------

fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_range_head_conditionals_and_confinement() {
    let content = pseudo_random(1_000_000, 7);
    let c2 = content.clone();
    let h = Harness::start_with("", move |data| {
        let assets = data.join("assets");
        std::fs::create_dir_all(assets.join("k")).unwrap();
        std::fs::write(assets.join("k/vmlinuz"), &c2).unwrap();
        std::fs::write(data.join("secret"), "top secret").unwrap();
        std::os::unix::fs::symlink(data.join("secret"), assets.join("escape")).unwrap();
        std::os::unix::fs::symlink(assets.join("k/vmlinuz"), assets.join("inside")).unwrap();
    })
    .await;

    let full = curl(&[&h.url("/assets/k/vmlinuz")]).await;
    assert_eq!(full.status, 200);
    assert!(full.body == content, "full body differs");
    assert_eq!(full.header("content-length").unwrap(), "1000000");
    assert_eq!(full.header("accept-ranges").unwrap(), "bytes");

    let part = curl(&["-r", "0-99", &h.url("/assets/k/vmlinuz")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, content[..100]);
    assert_eq!(part.header("content-range").unwrap(), "bytes 0-99/1000000");

    let tail = curl(&["-r", "999990-", &h.url("/assets/k/vmlinuz")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, content[999_990..]);

    let head = curl(&["-I", &h.url("/assets/k/vmlinuz")]).await;
    assert_eq!(head.status, 200);
    // curl -I writes the headers as its output: no body bytes came.
    assert!(head.body.len() < 1000, "HEAD sent a body");
    assert_eq!(head.header("content-length").unwrap(), "1000000");
    let etag = head.header("etag").unwrap();
    let modified = head.header("last-modified").unwrap();
    assert!(modified.ends_with("GMT"), "{modified}");

    let past = curl(&["-r", "2000000-3000000", &h.url("/assets/k/vmlinuz")]).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range").unwrap(), "bytes */1000000");

    let cached = curl(&[
        "-H",
        &format!("If-None-Match: {etag}"),
        &h.url("/assets/k/vmlinuz"),
    ])
    .await;
    assert_eq!(cached.status, 304);
    let stale_range = curl(&[
        "-r",
        "0-9",
        "-H",
        "If-Range: \"stale\"",
        &h.url("/assets/k/vmlinuz"),
    ])
    .await;
    assert_eq!(stale_range.status, 200, "a stale If-Range sends everything");

    // Escapes: dot segments (raw and percent-encoded) and a symlink leading outside.
    for path in [
        "/assets/../secret",
        "/assets/k/../../secret",
        "/assets/%2e%2e/secret",
        "/assets/k/%2E%2E/%2e%2e/secret",
        "/assets/escape",
    ] {
        let r = curl(&["--path-as-is", &h.url(path)]).await;
        assert!(
            r.status == 403 || r.status == 404,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("top secret"), "{path} leaked");
    }
    // A symlink that stays inside is fine.
    let inside = curl(&["-r", "0-9", &h.url("/assets/inside")]).await;
    assert_eq!(inside.status, 206);
    assert_eq!(inside.body, content[..10]);

    // iPXE binaries by their fixed names only.
    for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        let r = curl(&[&h.url(&format!("/assets/{name}"))]).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.text(), format!("binary {name}"));
    }
    let other = curl(&[&h.url("/assets/other.bin")]).await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["code"], "not_found");
}

/// A stand-in mirror: serves `body` at every path and counts requests.
async fn mirror(body: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>, CancellationToken) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        let hits = h2.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            // Slow enough that concurrent first requests overlap the download.
            tokio::time::sleep(Duration::from_millis(200)).await;
            body
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { c2.cancelled().await })
            .await;
    });
    (addr, hits, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_assets_are_downloaded_once_verified_and_cached() {
    let content = pseudo_random(3_000_000, 3);
    let sha = hex::encode(sha2::Sha256::digest(&content));
    let wrong = "0".repeat(64);
    let (maddr, hits, stop) = mirror(content.clone()).await;
    let toml = format!(
        "[[assets]]\nname = \"debian-13/vmlinuz\"\nurl = \"http://{maddr}/debian/linux\"\nsha256 = \"{sha}\"\n\
         [[assets]]\nname = \"bad/vmlinuz\"\nurl = \"http://{maddr}/bad/linux\"\nsha256 = \"{wrong}\"\n"
    );
    let h = Harness::start(&toml).await;
    let url = h.url("/assets/debian-13/vmlinuz");

    // Four concurrent first requests share one download.
    let first = futures::future::join_all((0..4).map(|_| {
        let url = url.clone();
        async move { curl(&[&url]).await }
    }))
    .await;
    for r in &first {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == content);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "mirror saw one request");
    let cached = h.data.join("assets-cache/sha256").join(&sha);
    assert_eq!(std::fs::read(&cached).unwrap(), content);

    // Second round: a cache hit, with Range, the mirror is not asked again.
    let part = curl(&["-r", "100-199", &url]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, content[100..200]);
    assert_eq!(part.header("etag").unwrap(), format!("\"sha256-{sha}\""));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A checksum mismatch: 502 naming the asset, nothing cached.
    let bad = curl(&[&h.url("/assets/bad/vmlinuz")]).await;
    assert_eq!(bad.status, 502, "{}", bad.text());
    let msg = bad.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("bad/vmlinuz") && msg.contains("sha256"),
        "{msg}"
    );
    let left: Vec<_> = std::fs::read_dir(h.data.join("assets-cache/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![sha.clone()], "only the verified asset is cached");

    let metrics = curl(&[&h.url("/metrics")]).await.text();
    assert!(
        metrics.contains("metalfleet_http_asset_downloads_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metalfleet_http_asset_download_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metalfleet_http_asset_cache_hits_total 1"),
        "{metrics}"
    );
    stop.cancel();
}

// ---------------------------------------------------------------------------------------
// Node API
// ---------------------------------------------------------------------------------------

async fn post(h: &Harness, path: &str, body: &str) -> Curl {
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        &h.url(path),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_checkin_long_poll_results_logs() {
    let h = Harness::start("long_poll_max_secs = 30\nmax_body_bytes = 4096").await;
    let n1 = nodes().remove(0);

    // Check-in of a known machine and of an unknown one.
    let r = post(
        &h,
        "/node/v1/checkin",
        &format!(
            r#"{{"serial":"SN01","macs":["{}"],"facts":{{"cpus":8}}}}"#,
            mac(1)
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"known": true, "node": n1.id.to_string()})
    );
    assert!(h.sink.events().iter().any(|e| matches!(
        e,
        EventKind::CheckIn { serial, macs, facts }
            if serial.as_str() == "SN01" && macs == &vec![mac(1)] && facts.0["cpus"] == 8
    )));
    let r = post(
        &h,
        "/node/v1/checkin",
        &format!(r#"{{"serial":"NEW1","macs":["{}"]}}"#, mac(UNKNOWN)),
    )
    .await;
    assert_eq!(r.json(), serde_json::json!({"known": false, "node": null}));

    // Malformed bodies: 400 naming the field.
    let r = post(&h, "/node/v1/checkin", r#"{"serial":"S","macs":["zz"]}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "macs[0]");
    assert_eq!(r.json()["code"], "invalid_field");
    let r = post(&h, "/node/v1/checkin", r#"{"macs":[]}"#).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, "serial".into())
    );
    let r = post(&h, "/node/v1/checkin", "{nope").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, "bad_request".into())
    );
    let big = format!(
        r#"{{"serial":"S","macs":[],"facts":"{}"}}"#,
        "x".repeat(10_000)
    );
    let r = post(&h, "/node/v1/checkin", &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "payload_too_large");

    // Nothing queued: 204 at once.
    let r = curl(&[&h.url(&format!("/node/v1/next?mac={}", mac(1)))]).await;
    assert_eq!(r.status, 204);

    // A long poll that is waiting receives an action pushed through the handle.
    let poll_url = h.url(&format!("/node/v1/next?mac={}&wait=30", mac(1)));
    let poll = tokio::spawn(async move { curl(&[&poll_url]).await });
    let actions = h.actions.clone();
    until("the long poll to wait", || actions.waiters() > 0).await;
    let action = NodeAction::Run {
        id: "inv-1".into(),
        command: "lsblk".into(),
        args: vec!["-J".into()],
        timeout_secs: 30,
    };
    h.actions
        .push(ActionTarget::Node(n1.id), action.clone())
        .unwrap();
    let r = poll.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"kind":"run","id":"inv-1","command":"lsblk","args":["-J"],"timeout_secs":30})
    );
    // At-least-once: asked again (after a restart), the same action, through another MAC.
    let again = curl(&[&h.url(&format!(
        "/node/v1/next?mac={}",
        Mac([0x52, 0x54, 0, 0, 1, 1])
    ))])
    .await;
    assert_eq!(again.json()["id"], "inv-1");

    // Logs → Log events; unknown MAC → 404.
    let r = post(
        &h,
        "/node/v1/logs",
        &format!(
            r#"{{"mac":"{}","action":"inv-1","lines":["sda 100G","sdb 200G"]}}"#,
            mac(1)
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for line in ["[inv-1] sda 100G", "[inv-1] sdb 200G"] {
        assert!(h.sink.events().contains(&EventKind::Log {
            node: n1.id,
            message: line.into()
        }));
    }
    let r = post(
        &h,
        "/node/v1/logs",
        &format!(r#"{{"mac":"{}","lines":["x"]}}"#, mac(UNKNOWN)),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["field"], "mac");

    // The result is visible on the handle and the action leaves the queue.
    let r = post(
        &h,
        "/node/v1/results",
        &format!(
            r#"{{"mac":"{}","action":"inv-1","exit_code":0,"output":"{{}}"}}"#,
            mac(1)
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let res = h
        .actions
        .wait_result("inv-1", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((res.exit_code, res.output.as_str()), (0, "{}"));
    assert!(h.sink.events().contains(&EventKind::Log {
        node: n1.id,
        message: "[inv-1] finished with exit code 0".into()
    }));
    let r = curl(&[&h.url(&format!("/node/v1/next?mac={}", mac(1)))]).await;
    assert_eq!(r.status, 204);
    let r = post(
        &h,
        "/node/v1/results",
        &format!(r#"{{"mac":"{}","action":"nope","exit_code":0}}"#, mac(1)),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoinstall_templates_render_per_node() {
    let h = Harness::start_with("", |data| {
        let t = data.join("templates");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(
            t.join("debian-13.preseed"),
            "d-i netcfg/get_hostname string {{ hostname }}\n\
             d-i netcfg/get_ipaddress string {{ static_ips[0].address }}\n\
             # node {{ node }} serial {{ serial }} via {{ agent_url }}\n",
        )
        .unwrap();
        std::fs::write(t.join("broken.tmpl"), "line one\n{{ no_such_variable }}\n").unwrap();
    })
    .await;
    let r = curl(&[
        "-H",
        HOST,
        &h.url(&format!("/node/v1/autoinstall/{}", mac(3))),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        format!(
            "d-i netcfg/get_hostname string sn03\n\
             d-i netcfg/get_ipaddress string 10.0.0.3\n\
             # node {} serial SN03 via http://boot.test:8080\n",
            id(3)
        )
    );
    let r = curl(&[&h.url(&format!("/node/v1/autoinstall/{}", mac(7)))]).await;
    assert_eq!(r.status, 500);
    let j = r.json();
    assert_eq!(j["template"], "broken.tmpl");
    assert_eq!(j["line"], 2);
    assert!(j["message"].as_str().unwrap().contains("line 2"), "{j}");
    // No template for that node.
    let r = curl(&[&h.url(&format!("/node/v1/autoinstall/{}", mac(1)))]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_fails_on_a_port_in_use_and_run_stops_on_cancel() {
    let mut h = Harness::start("").await;
    // A second server on the same address fails at bind, naming the address.
    let dir = tempfile::tempdir().unwrap();
    let ctx = ConfigCtx {
        base_dir: dir.path().to_owned(),
        data_dir: dir.path().to_owned(),
    };
    let config = HttpConfig::from_toml(
        toml::from_str(&format!("listen = \"{}\"", h.addr)).unwrap(),
        &ctx,
    )
    .unwrap();
    let deps = BootDeps::fixture(
        Arc::new(FixtureBackend::default()),
        Arc::new(CollectingSink::default()),
        dir.path().to_owned(),
    );
    let err = HttpServer::bind(&config, &deps).await.unwrap_err();
    assert!(err.to_string().contains(&h.addr.to_string()), "{err}");

    // A long poll in flight when the server is cancelled is answered (204) and run returns.
    let url = h.url(&format!("/node/v1/next?mac={}&wait=60", mac(1)));
    let poll = tokio::spawn(async move { curl(&[&url]).await });
    let actions = h.actions.clone();
    until("the long poll to wait", || actions.waiters() > 0).await;
    h.cancel.cancel();
    assert_eq!(poll.await.unwrap().status, 204);
    h.task.take().unwrap().await.unwrap();
    // Nothing listens any more.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &h.url("/healthz")])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz() {
    let h = Harness::start("").await;
    let _ = curl(&[&h.url(&format!("/ipxe/{}", mac(2)))]).await;
    let _ = curl(&[&h.url("/nowhere")]).await;
    // Undecodable paths are refused and counted, not a panic.
    let r = curl(&[&h.url("/assets/%ff%fe")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "bad_request");
    assert_eq!(curl(&[&h.url("/healthz")]).await.text(), "ok\n");
    let m = curl(&[&h.url("/metrics")]).await;
    assert_eq!(m.status, 200);
    let t = m.text();
    for want in [
        "metalfleet_http_requests_total{route=\"ipxe\",status=\"200\"} 1",
        "metalfleet_http_requests_total{route=\"other\",status=\"404\"} 1",
        "metalfleet_http_scripts_total{target=\"local\"} 1",
        "metalfleet_http_rejected_total{reason=\"no_route\"} 1",
        "metalfleet_http_rejected_total{reason=\"bad_path\"} 1",
        "# TYPE metalfleet_http_bytes_sent_total counter",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
}

// ---------------------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_scripts_to_curl_with_the_ca() {
    let ca = pki::CertAuthority::generate("http-boot-test").unwrap();
    let leaf = ca
        .issue(
            &pki::Identity::Rack("boot".into()),
            &["127.0.0.1".into(), "localhost".into()],
            30,
        )
        .unwrap();
    let (cert, key) = (leaf.cert_pem.clone(), leaf.key_pem.clone());
    let ca_pem = ca.cert_pem().to_owned();
    let h = Harness::start_with(
        "https_listen = \"127.0.0.1:0\"\ntls_cert = \"tls/boot.crt\"\ntls_key = \"tls/boot.key\"",
        move |data| {
            std::fs::create_dir_all(data.join("tls")).unwrap();
            std::fs::write(data.join("tls/boot.crt"), cert).unwrap();
            std::fs::write(data.join("tls/boot.key"), key).unwrap();
            std::fs::write(data.join("ca.pem"), ca_pem).unwrap();
        },
    )
    .await;
    let https = h.https.unwrap();
    let ca_file = h.data.join("ca.pem");
    let url = format!("https://{https}/ipxe/{}", mac(1));
    let r = curl(&["--cacert", ca_file.to_str().unwrap(), &url]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .contains(&format!("metalfleet.agent=https://{https} ")),
        "{}",
        r.text()
    );
    // Without the CA, curl refuses the certificate (status 0 from curl).
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &url])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    // Plain HTTP still works beside it.
    assert_eq!(curl(&[&h.url("/healthz")]).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// Real iPXE (QEMU, TCG, user-mode networking)
// ---------------------------------------------------------------------------------------

/// The lab's marker image (kernel + initramfs printing `METALFLEET-MARKER <cmdline>`).
fn marker_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("bash")
        .arg(root.join("tests/lab/marker-image.sh"))
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "marker-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Boots a QEMU VM (BIOS or UEFI) whose NIC ROM (iPXE) is told by QEMU's DHCP to chain our
/// script URL; returns the first serial line containing `needle` (the marker line its kernel
/// printed, by default).
async fn boot_vm(h: &Harness, uefi: bool, m: Mac, dir: &Path) -> String {
    boot_vm_until(h, uefi, m, dir, "METALFLEET-MARKER").await
}

async fn boot_vm_until(h: &Harness, uefi: bool, m: Mac, dir: &Path, needle: &str) -> String {
    let serial = dir.join(format!(
        "serial-{}-{}.log",
        if uefi { "uefi" } else { "bios" },
        m.to_string().replace(':', "")
    ));
    let port = h.addr.port();
    let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel", "tcg", "-m", "384", "-smp", "1", "-display", "none",
    ])
    .args(["-no-reboot", "-boot", "n"])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    // 10.0.2.2 is the host's loopback as seen from QEMU's user-mode network.
    .arg("-netdev")
    .arg(format!(
        "user,id=n0,ipv6=off,bootfile=http://10.0.2.2:{port}/ipxe/{}",
        m.to_string().replace(':', "-")
    ))
    .arg("-device")
    .arg(format!("virtio-net-pci,netdev=n0,mac={m}"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    if uefi {
        cmd.args(["-bios", "/usr/share/ovmf/OVMF.fd"]);
    }
    let mut vm = cmd.spawn().unwrap();
    for _ in 0..1800 {
        let log = std::fs::read(&serial).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        // Only whole lines: the console is written while we read it.
        let complete = log.rfind('\n').map_or("", |end| &log[..end]);
        if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
            let line = line.to_owned();
            let _ = vm.kill().await;
            return line;
        }
        if let Ok(Some(status)) = vm.try_wait() {
            panic!("VM exited ({status}) without {needle:?}; serial:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = vm.kill().await;
    panic!(
        "no {needle:?} from the VM; serial:\n{}",
        String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_ipxe_boots_discovery_and_install_scripts_bios_and_uefi() {
    let marker = marker_image();
    let h = Harness::start_with("", move |data| {
        for dir in ["microkernel", "debian-13"] {
            let d = data.join("assets").join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(marker.join("vmlinuz"), d.join("vmlinuz")).unwrap();
        }
        std::fs::copy(
            marker.join("initrd.img"),
            data.join("assets/microkernel/initrd.img"),
        )
        .unwrap();
        std::fs::copy(
            marker.join("initrd.img"),
            data.join("assets/debian-13/initrd.gz"),
        )
        .unwrap();
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://10.0.2.2:{}", h.addr.port());
    for uefi in [false, true] {
        // Discovery: the kernel got the configured cmdline plus agent URL and MAC (and,
        // under UEFI, found its initrd by name, or there would be no marker).
        let line = boot_vm(&h, uefi, mac(1), dir.path()).await;
        assert!(
            line.contains(&format!(
                "initrd=initrd.img console=ttyS0 metalfleet.agent={base} metalfleet.mac={}",
                mac(1)
            )),
            "uefi={uefi}: {line}"
        );
        // Install: asset names became URLs and the autoinstall placeholder was filled in.
        let line = boot_vm(&h, uefi, mac(3), dir.path()).await;
        assert!(
            line.contains(&format!(
                "initrd=initrd.gz auto=true priority=critical url={base}/node/v1/autoinstall/{}",
                mac(3)
            )),
            "uefi={uefi}: {line}"
        );
    }
    // SAN boot (UEFI iPXE prints to the serial console): the target refuses the connection
    // and the retry loop counts its attempts.
    let line = boot_vm_until(&h, true, mac(8), dir.path(), "attempt 2 of 3").await;
    assert!(line.contains("sanboot failed"), "{line}");
    let boots = h
        .sink
        .events()
        .into_iter()
        .filter(|e| matches!(e, EventKind::Boot { .. }))
        .count();
    assert_eq!(boots, 5);
}
