//! node-agent against the real rack-agent HTTP server (in-process, loopback): it checks in with
//! the inventory of a fixture machine, executes the actions pushed through the agent's action
//! queue (run with streamed logs, a timeout, a template, a reboot), reports their results, and
//! keeps going when the rack agent restarts.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use node_agent::actions::PowerCommands;
use node_agent::cmdline::BootParams;
use node_agent::run::{self, Options};
use protocol::domain::BootTarget;
use protocol::fleet::{EventKind, RackNode};
use protocol::{Mac, NodeId};
use rack_agent::boot::http::node_api::{ActionTarget, NodeAction};
use rack_agent::boot::http::{HttpConfig, HttpServer};
use rack_agent::boot::{BootDeps, CollectingSink, ConfigCtx, FixtureBackend};
use tokio_util::sync::CancellationToken;

const MAC: &str = "52:54:00:aa:00:01";

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn fixture_machine(root: &Path) {
    write(root, "sys/class/dmi/id/product_serial", "NA-0001\n");
    write(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
    write(
        root,
        "proc/cpuinfo",
        "processor\t: 0\nmodel name\t: Test CPU\n",
    );
    write(root, "proc/meminfo", "MemTotal: 1024 kB\n");
    write(root, "sys/block/vda/size", "2048\n");
    write(root, "sys/class/net/eth0/type", "1\n");
    write(root, "sys/class/net/eth0/address", &format!("{MAC}\n"));
    write(root, "sys/class/net/eth0/carrier", "1\n");
}

async fn start(
    dir: &Path,
    listen: &str,
    sink: Arc<CollectingSink>,
) -> (HttpServer, CancellationToken) {
    let ctx = ConfigCtx {
        base_dir: dir.to_owned(),
        data_dir: dir.join("data"),
    };
    let table: toml::Table = format!("listen = \"{listen}\"").parse().unwrap();
    let config = HttpConfig::from_toml(table, &ctx).unwrap();
    // The machine is a known node: log lines are attributed to nodes.
    let node = RackNode {
        id: NodeId(uuid::Uuid::from_u128(7)),
        serial: "NA-0001".parse().unwrap(),
        macs: vec![MAC.parse().unwrap()],
        boot_target: BootTarget::Discovery,
        static_ips: vec![],
        switch_ports: vec![],
        bmc: None,
        revision: 1,
        power: None,
    };
    let deps = BootDeps::fixture(
        Arc::new(FixtureBackend::new([node])),
        sink,
        dir.join("data"),
    );
    let server = HttpServer::bind(&config, &deps).await.unwrap();
    (server, CancellationToken::new())
}

async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_in_runs_actions_and_survives_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("machine");
    fixture_machine(&root);
    let sink = Arc::new(CollectingSink::default());
    let (server, cancel) = start(dir.path(), "127.0.0.1:0", sink.clone()).await;
    let addr = server.local_addr();
    let actions = server.node_actions();
    let task = tokio::spawn(server.run(cancel.clone()));

    let marker = dir.path().join("rebooted");
    let opts = Options {
        root: root.clone(),
        poll_wait: Duration::from_secs(2),
        power: PowerCommands {
            reboot: vec!["touch".into(), marker.display().to_string()],
            poweroff: vec!["true".into()],
            kexec: "true".into(),
            scratch: dir.path().to_owned(),
        },
        external_commands: false,
        checkin_only: false,
    };
    let mac: Mac = MAC.parse().unwrap();
    let params = BootParams {
        agent: format!("http://{addr}"),
        mac: Some(mac),
    };
    let agent = tokio::spawn(run::run(params, opts));

    // Check-in: the serial and the facts reach the event sink.
    let checkin = poll("the check-in event", || {
        sink.events().into_iter().find_map(|e| match e {
            EventKind::CheckIn {
                serial,
                macs,
                facts,
            } => Some((serial, macs, facts)),
            _ => None,
        })
    })
    .await;
    assert_eq!(checkin.0.as_str(), "NA-0001");
    assert_eq!(checkin.1, vec![mac]);
    assert_eq!(checkin.2 .0["system"]["vendor"], "QEMU");
    assert_eq!(checkin.2 .0["disks"][0]["size_bytes"], 2048 * 512);

    // A command: its lines arrive as logs while it runs, its output with the result.
    let target = ActionTarget::Mac(mac);
    actions
        .push(
            target,
            NodeAction::Run {
                id: "a1".into(),
                command: "sh".into(),
                args: vec!["-c".into(), "echo hello; echo oops >&2; exit 3".into()],
                timeout_secs: 30,
            },
        )
        .unwrap();
    let r = actions
        .wait_result("a1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 3);
    assert!(
        r.output.contains("hello") && r.output.contains("oops"),
        "{r:?}"
    );
    poll("the command's log lines", || {
        sink.events()
            .iter()
            .any(|e| matches!(e, EventKind::Log { message, .. } if message.contains("hello")))
            .then_some(())
    })
    .await;

    // A command that overruns its timeout is killed and reported as 124.
    actions
        .push(
            target,
            NodeAction::Run {
                id: "a2".into(),
                command: "sleep".into(),
                args: vec!["30".into()],
                timeout_secs: 1,
            },
        )
        .unwrap();
    let r = actions
        .wait_result("a2", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 124, "{r:?}");

    // The rack agent restarts on the same address; the node-agent carries on.
    cancel.cancel();
    task.await.unwrap();
    let (server, cancel) = start(dir.path(), &addr.to_string(), sink.clone()).await;
    let actions = server.node_actions();
    let task = tokio::spawn(server.run(cancel.clone()));

    let file = dir.path().join("etc/motd");
    actions
        .push(
            target,
            NodeAction::Template {
                id: "a3".into(),
                path: file.display().to_string(),
                content: "provisioned by metalfleet\n".into(),
                mode: 0o600,
            },
        )
        .unwrap();
    let r = actions
        .wait_result("a3", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "provisioned by metalfleet\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Reboot: the result is delivered first, then the (harmless) reboot command runs.
    actions
        .push(target, NodeAction::Reboot { id: "a4".into() })
        .unwrap();
    let r = actions
        .wait_result("a4", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    poll("the reboot command", || marker.exists().then_some(())).await;

    agent.abort();
    cancel.cancel();
    task.await.unwrap();
}
