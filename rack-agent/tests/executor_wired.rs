//! The executor wired into the agent: a run assigned in the rack's desired state (seeded into
//! the agent's store, as the fleet link stores it) executes in the real `rack-agent` binary
//! with every coordinator unreachable — `bmc.power` on a simulated BMC (`[bmc] simulate`),
//! `boot.set` changing the iPXE script the agent's HTTP server answers, `node.wait` for a
//! check-in and `node.run` through a real `node-agent` process on the agent's node API,
//! `dhcp.reserve` pinning the address the DHCP server's backend hands out. The agent is
//! SIGKILLed while a slow `node.run` is running on the node; started again (in-process, to
//! look inside), it finishes the run without running any step twice (each command appends a
//! line to its own file), and the run's status and step logs are in the durable outbox.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocol::domain::{BmcDriver, BootTarget, ExpectedNic, StaticIp};
use protocol::fleet::{
    BmcAccess, EventKind, RackDesiredState, RackNode, RunAssignment, RunControl,
};
use protocol::workflow::*;
use protocol::{Mac, NodeId};
use rack_agent::agent::Agent;
use rack_agent::boot::BootBackend;
use rack_agent::store::Store;

const DEAD: &str = "127.0.0.1:1";
const RUN: &str = "run-wired-1";

/// A child process killed and reaped when dropped (by PID, through `Child`).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The real `node-agent` binary, built next to this test's binaries if it is not there.
fn node_agent_bin() -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let bin = dir.join("node-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "build",
            "--quiet",
            "-p",
            "node-agent",
            "--bin",
            "node-agent",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p node-agent failed");
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(60)..].join("\n")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn step(name: &str, kind: StepKind) -> Step {
    Step {
        name: name.into(),
        idempotent: kind.idempotent_by_default(),
        kind,
        timeout: HumanDuration::from_secs(120),
        retries: 0,
        backoff: Backoff {
            initial: HumanDuration::from_millis(100),
            factor: 2,
            max: HumanDuration::from_secs(1),
        },
        on_failure: OnFailure::Fail,
        when: None,
    }
}

fn sh(script: String) -> StepKind {
    StepKind::NodeRun(NodeRun {
        command: "sh".into(),
        args: vec!["-c".into(), script],
        expected_exit: vec![0],
        capture_logs: true,
        facts: None,
    })
}

/// The fake machine's filesystem root the node-agent reads its inventory from.
fn machine_root(root: &Path, serial: &str, mac: &Mac) {
    write(
        &root.join("sys/class/dmi/id/product_serial"),
        &format!("{serial}\n"),
    );
    write(&root.join("sys/class/dmi/id/sys_vendor"), "QEMU\n");
    write(
        &root.join("proc/cpuinfo"),
        "processor\t: 0\nmodel name\t: Test CPU\n",
    );
    write(&root.join("proc/meminfo"), "MemTotal: 1024 kB\n");
    write(&root.join("sys/block/vda/size"), "2048\n");
    write(&root.join("sys/class/net/eth0/type"), "1\n");
    write(
        &root.join("sys/class/net/eth0/address"),
        &format!("{mac}\n"),
    );
    write(&root.join("sys/class/net/eth0/carrier"), "1\n");
}

fn node_agent(bin: &Path, url: &str, mac: &Mac, root: &Path, log: &Path, once: bool) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--agent")
        .arg(url)
        .arg("--mac")
        .arg(mac.to_string())
        .arg("--root")
        .arg(root)
        .arg("--scratch")
        .arg(root)
        .args(["--poll-wait", "2", "--no-external-commands"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if once {
        cmd.arg("checkin");
    }
    cmd.spawn().unwrap()
}

async fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    common::poll(secs, what, || {
        let v = f();
        async move { v }
    })
    .await
}

async fn ipxe_script(client: &reqwest::Client, url: &str, mac: &Mac) -> Option<String> {
    let r = client.get(format!("{url}/ipxe/{mac}")).send().await.ok()?;
    r.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_run_survives_sigkill_offline_and_reports_through_the_outbox() {
    // Built first: cargo may wait for the shared build lock, and node.wait's clock must not
    // run meanwhile.
    let node_bin = node_agent_bin();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = common::config(
        dir.path(),
        &[DEAD.to_owned()],
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n[bmc]\nsimulate = true\n"),
    );
    let ca = pki::CertAuthority::generate("test").unwrap();
    common::issue_identity(&config, &ca);

    let mac: Mac = "52:54:00:ee:00:01".parse().unwrap();
    let node = RackNode {
        id: NodeId(uuid::Uuid::from_u128(0xee01)),
        serial: "WIRED-0001".parse().unwrap(),
        macs: vec![mac],
        boot_target: BootTarget::Local,
        static_ips: vec![StaticIp {
            interface: "eth0".into(),
            address: "10.9.0.10".parse().unwrap(),
            prefix: 24,
            gateway: None,
        }],
        switch_ports: vec![ExpectedNic {
            name: "eth0".into(),
            mac: Some(mac),
            switch: None,
            port: None,
        }],
        bmc: Some(BmcAccess {
            address: "10.9.1.10".into(),
            driver: BmcDriver::Ipmi,
            username: Some("admin".into()),
            password: Some("password".into()),
        }),
        revision: 1,
        power: None,
    };
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let count = |name: &str| out.join(format!("count-{name}"));
    let plan = RunPlan {
        template: "wired".into(),
        version: 1,
        params: BTreeMap::new(),
        steps: vec![
            step(
                "power",
                StepKind::BmcPower(BmcPower {
                    action: PowerAction::On,
                }),
            ),
            step(
                "pxe",
                StepKind::BootSet(BootSet {
                    target: BootTarget::Discovery,
                }),
            ),
            step(
                "booted",
                StepKind::NodeWait(NodeWait {
                    wait_for: WaitFor::Checkin,
                }),
            ),
            step(
                "first",
                sh(format!(
                    "echo first >> {}; echo 'progress: 50% halfway'; echo first-done",
                    count("first").display()
                )),
            ),
            step(
                "slow",
                sh(format!(
                    "echo slow >> {}; sleep 6; echo slow-done",
                    count("slow").display()
                )),
            ),
            step(
                "pin",
                StepKind::DhcpReserve(DhcpReserve {
                    interface: Some("eth0".into()),
                    address: Some("10.9.0.77".into()),
                }),
            ),
            step(
                "disk",
                StepKind::BootSet(BootSet {
                    target: BootTarget::Local,
                }),
            ),
            step(
                "last",
                sh(format!("echo last >> {}", count("last").display())),
            ),
        ],
    };
    // What the fleet link stores when a coordinator assigns the run.
    {
        let store = Store::open(&config.store_path()).unwrap();
        store
            .apply_snapshot(&RackDesiredState {
                revision: 1,
                nodes: vec![node.clone()],
                ports: Vec::new(),
                runs: vec![RunAssignment {
                    run_id: RUN.into(),
                    node: node.id,
                    plan: plan.clone(),
                    control: RunControl::Run,
                    revision: 1,
                }],
            })
            .unwrap();
    }

    let log = dir.path().join("agent.log");
    let agent_out = std::fs::File::create(&log).unwrap();
    let agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_rack-agent"))
            .arg("run")
            .arg("--config")
            .arg(&config.file)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(agent_out.try_clone().unwrap())
            .stderr(agent_out)
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let root = dir.path().join("machine");
    machine_root(&root, node.serial.as_str(), &mac);
    let node_log = dir.path().join("node-agent.log");

    // boot.set: the agent's HTTP server now answers the discovery microkernel for the MAC
    // (the desired state says local disk).
    let mut seen = false;
    for _ in 0..3000 {
        if let Some(s) = ipxe_script(&client, &url, &mac).await {
            if s.contains("discovery microkernel for") {
                seen = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen,
        "no discovery script; agent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The machine boots the microkernel: a node-agent serving actions, and check-ins (as
    // reboots would make them) until node.wait has seen one after it started, which is when
    // the first command runs.
    let _machine = Proc(node_agent(&node_bin, &url, &mac, &root, &node_log, false));
    let mut checkins = 0;
    while lines(&count("first")).is_empty() {
        assert!(
            checkins < 600,
            "the first command never ran; agent log:\n{}\nnode-agent log:\n{}",
            tail(&log),
            tail(&node_log)
        );
        let mut c = node_agent(&node_bin, &url, &mac, &root, &node_log, true);
        c.wait().unwrap();
        checkins += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL while the slow command runs on the node.
    poll(120, "the slow command to start", || {
        (!lines(&count("slow")).is_empty()).then_some(())
    })
    .await;
    drop(agent);
    assert_eq!(lines(&count("slow")), ["slow"]);

    // Started again on the same data directory and port, still without a coordinator.
    let agent = Agent::start(config.clone()).await.unwrap();
    let ex = agent.executor().unwrap().clone();
    let status = poll(120, "the run to finish", || {
        ex.status(RUN).ok().filter(|s| s.state.is_final())
    })
    .await;
    assert_eq!(
        status.state,
        RunState::Succeeded,
        "{status:#?}\nagent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(status.steps.iter().all(|s| s.state == StepState::Succeeded));
    // No step ran twice.
    assert_eq!(lines(&count("first")), ["first"]);
    assert_eq!(lines(&count("slow")), ["slow"]);
    assert_eq!(lines(&count("last")), ["last"]);
    assert!(ex
        .logs(RUN, "slow")
        .unwrap()
        .iter()
        .any(|l| l.contains("slow-done")));

    // The boot services answer with the executor's overrides: local disk again, and the
    // pinned address as the reservation of the MAC.
    let script = ipxe_script(&client, &url, &mac).await.unwrap();
    assert!(script.contains("local disk for"), "{script}");
    let served = BootBackend::node_by_mac(agent.shared().as_ref(), &mac).unwrap();
    assert_eq!(served.boot_target, BootTarget::Local);
    assert_eq!(served.static_ips[0].address.to_string(), "10.9.0.77");

    // Statuses and step logs wait in the outbox (no coordinator reachable): the final one
    // among them, the first step's progress, and the slow step's output.
    let store = agent.shared().store.clone();
    let events = poll(60, "the final status in the outbox", || {
        let events: Vec<EventKind> = store
            .pending(100_000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        events
            .iter()
            .any(|k| {
                matches!(k, EventKind::RunStatus { run, status, .. }
                    if run == RUN && status.state == RunState::Succeeded)
            })
            .then_some(events)
    })
    .await;
    let statuses: Vec<&RunStatus> = events
        .iter()
        .filter_map(|k| match k {
            EventKind::RunStatus {
                run,
                node: n,
                status,
            } if run == RUN => {
                assert_eq!(*n, node.id);
                Some(status)
            }
            _ => None,
        })
        .collect();
    assert!(statuses.len() >= 3, "{}", statuses.len());
    assert!(statuses.iter().any(|s| s.steps[3]
        .progress
        .as_ref()
        .is_some_and(|p| p.percent == 50)));
    let logs = |step_name: &str| -> Vec<String> {
        events
            .iter()
            .filter_map(|k| match k {
                EventKind::StepLog {
                    run, step, lines, ..
                } if run == RUN && step == step_name => Some(lines.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert!(
        logs("first").iter().any(|l| l == "first-done"),
        "{:?}",
        logs("first")
    );
    assert!(
        logs("slow").iter().any(|l| l == "slow-done"),
        "{:?}",
        logs("slow")
    );

    agent.shutdown().await;
}
