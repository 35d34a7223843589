//! Tenant isolation proven by traffic, with the real `rack-agent` binary driving a real Open
//! vSwitch (userspace datapath) from port intents in its desired state:
//! - namespaces as nodes, each cabled by a veth to an OVS port; nodes on one project VLAN ping
//!   each other, across projects they cannot; after a tenant move (new intents) a node reaches
//!   only its new network, after a revert nothing; the provisioning network (the agent's own
//!   VLAN, where it serves HTTP) is unreachable from tenant VLANs;
//! - an agent SIGKILLed with one switch's batch done and another's stuck finishes the rest after
//!   a restart, and reports each port generation exactly once; power intents against ipmi_sim
//!   are carried out (and a dead BMC reported) exactly once per generation across the restart.
//!
//! The desired state is seeded into the agent's store between runs (as the coordinators would
//! have pushed it). Needs root, iproute2, openvswitch-switch, iputils-ping, curl, python3,
//! openipmi, ipmitool.

#![allow(clippy::unwrap_used)]

mod bmc_support;
mod netns;
mod switch_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use protocol::domain::{BmcDriver, BootTarget};
use protocol::fleet::{
    BmcAccess, Delta, EventKind, PortConfig, PortIntent, PowerIntent, RackDesiredState, RackNode,
};
use protocol::NodeId;
use rack_agent::config::Config;
use rack_agent::control::{self, Request};
use rack_agent::store::Store;
use switch_support::{require, Host, Ovs, ProcGuard};

const AGENT: &str = env!("CARGO_BIN_EXE_rack-agent");

fn tools() {
    require("ping", "iputils-ping");
    require("curl", "curl");
    require("python3", "python3");
}

/// Turns off transmit checksum offload on a host's `eth0`: the kernel would leave TCP
/// checksums to a NIC that a veth does not have, and OVS's userspace datapath forwards the
/// frames unfixed (ping works, every TCP segment is dropped by the receiver). The ethtool
/// ioctl from python3 (`ethtool -K eth0 tx off`) spares the suite another package.
fn no_offload(h: &Host) {
    h.ns.exec(&["python3", "-c", NO_TX_CSUM_PY]);
}

/// `SIOCETHTOOL` with `ETHTOOL_STXCSUM` = 0 on `eth0`.
const NO_TX_CSUM_PY: &str = r#"
import ctypes, fcntl, socket, struct
buf = ctypes.create_string_buffer(struct.pack("II", 0x17, 0))
ifr = struct.pack("16sP", b"eth0", ctypes.addressof(buf))
s = socket.socket()
fcntl.ioctl(s.fileno(), 0x8946, ifr)
"#;

fn access(switch: &str, port: &str, vlan: u16, generation: u64) -> PortIntent {
    PortIntent {
        switch: switch.into(),
        port: port.into(),
        config: PortConfig::Access { vlan },
        generation,
    }
}

fn sorted(mut ports: Vec<PortIntent>) -> Vec<PortIntent> {
    ports.sort_by(|a, b| (&a.switch, &a.port).cmp(&(&b.switch, &b.port)));
    ports
}

/// A `rack-agent run` process (SIGKILLed on drop) with its config and data directory.
struct AgentRun {
    proc: ProcGuard,
    log: PathBuf,
}

/// The agent's files: config, store, control socket.
struct AgentFiles {
    config: PathBuf,
    store: PathBuf,
    socket: PathBuf,
    dir: PathBuf,
}

impl AgentFiles {
    /// Writes `agent.toml` in `dir` with `extra` sections; nothing runs yet.
    fn new(dir: &Path, rack: &str, extra: &str) -> AgentFiles {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!("rack = \"{rack}\"\ndata_dir = \"data\"\ncoordinators = []\n{extra}"),
        )
        .unwrap();
        let loaded = Config::load(&config).unwrap();
        std::fs::create_dir_all(&loaded.data_dir).unwrap();
        AgentFiles {
            store: loaded.store_path(),
            socket: loaded.control_socket.clone(),
            config,
            dir: dir.to_owned(),
        }
    }

    /// Changes the stored desired state (the agent must not be running).
    fn seed(&self, f: impl FnOnce(&Store)) {
        let store = Store::open(&self.store).unwrap();
        f(&store);
    }

    /// Starts the agent, in namespace `ns` or in the test's own.
    fn start(&self, ns: Option<&netns::Netns>, run: u32) -> AgentRun {
        let log = self.dir.join(format!("agent-{run}.log"));
        let args = [AGENT, "run", "--config", self.config.to_str().unwrap()];
        let mut cmd = match ns {
            Some(ns) => ns.cmd(&args),
            None => {
                let mut c = Command::new(AGENT);
                c.args(&args[1..]);
                c
            }
        };
        cmd.env("RUST_LOG", "info");
        AgentRun {
            proc: ProcGuard::spawn(cmd, "rack-agent", &log),
            log,
        }
    }

    /// Every event in the outbox, in order (the agent must not be running).
    fn events(&self) -> Vec<EventKind> {
        let store = Store::open(&self.store).unwrap();
        store
            .pending(100_000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Outbox depth as the running agent reports it over its control socket.
    async fn outbox_depth(&self, agent: &mut AgentRun) -> u64 {
        if let Some(code) = agent.proc.try_exit() {
            panic!(
                "the agent exited ({code:?}):\n{}",
                std::fs::read_to_string(&agent.log).unwrap_or_default()
            );
        }
        match control::request(&self.socket, &Request::Status).await {
            Ok(r) => r.status.map(|s| s.outbox_depth).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Waits until the running agent has queued at least `n` events.
    async fn wait_depth(&self, agent: &mut AgentRun, n: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let depth = self.outbox_depth(agent).await;
            if depth >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} ({depth} of {n} events queued):\n{}",
                std::fs::read_to_string(&agent.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `(switch, port, generation)` → every PortApplied report for it: `(ok, observed, message)`.
type PortReports = BTreeMap<(String, String, u64), Vec<(bool, Option<PortConfig>, String)>>;

fn port_reports(events: &[EventKind]) -> PortReports {
    let mut out = PortReports::new();
    for e in events {
        if let EventKind::PortApplied {
            switch,
            port,
            generation,
            ok,
            observed,
            message,
        } = e
        {
            out.entry((switch.clone(), port.clone(), *generation))
                .or_default()
                .push((*ok, observed.clone(), message.clone()));
        }
    }
    out
}

/// Asserts every intent in `intents` was reported exactly once, ok, with the port read back as
/// wanted — and nothing else was reported.
fn assert_reported_once(events: &[EventKind], intents: &[PortIntent]) {
    let reports = port_reports(events);
    for i in intents {
        let key = (i.switch.clone(), i.port.clone(), i.generation);
        let got = reports.get(&key).cloned().unwrap_or_default();
        assert_eq!(
            got,
            vec![(true, Some(i.config.clone()), String::new())],
            "reports of {key:?}"
        );
    }
    assert_eq!(
        reports.len(),
        intents.len(),
        "unexpected reports: {reports:?}"
    );
}

/// Waits until OVS shows `port` with `tag`.
fn wait_tag(ovs: &Ovs, port: &str, tag: &str) {
    netns::poll(60, &format!("port {port} tagged {tag}"), || {
        (ovs.get(port, "tag") == tag).then_some(())
    });
}

fn curl_ok(from: &Host, url: &str) -> bool {
    from.ns
        .try_exec(&["curl", "-sf", "--max-time", "3", url])
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_vlans_isolate_tenants_moves_replumb_and_provisioning_is_unreachable() {
    tools();
    let ovs = Ovs::start(None);
    // The agent's own leg on the provisioning network (VLAN 100), where it serves HTTP.
    let prov = ovs.add_host("10.61.0.1");
    // A node being provisioned (provisioning VLAN), project A (VLAN 101: a1, a2, and m until
    // it moves), project B (VLAN 102: b1). One IP subnet for all: only VLANs separate them.
    let p = ovs.add_host("10.61.0.5");
    let a1 = ovs.add_host("10.61.0.11");
    let a2 = ovs.add_host("10.61.0.12");
    let m = ovs.add_host("10.61.0.13");
    let b1 = ovs.add_host("10.61.0.21");
    for h in [&prov, &p, &a1, &a2, &m, &b1] {
        no_offload(h);
    }

    let dir = netns::tempdir();
    let files = AgentFiles::new(
        dir.path(),
        "tenancy1",
        &format!(
            "[http]\nlisten = \"10.61.0.1:8080\"\n\n[[switches]]\nname = \"tor1\"\ndriver = \
             \"ovs\"\naddress = \"unix:{}\"\nbridge = \"br0\"\n",
            ovs.sock.display()
        ),
    );
    let mut intents = sorted(vec![
        access("tor1", &prov.port, 100, 1),
        access("tor1", &p.port, 100, 1),
        access("tor1", &a1.port, 101, 1),
        access("tor1", &a2.port, 101, 1),
        access("tor1", &m.port, 101, 1),
        access("tor1", &b1.port, 102, 1),
    ]);
    files.seed(|s| {
        s.apply_snapshot(&RackDesiredState {
            revision: 1,
            nodes: vec![],
            ports: intents.clone(),
            runs: Vec::new(),
        })
        .unwrap()
    });

    let mut agent = files.start(Some(&prov.ns), 1);
    files
        .wait_depth(&mut agent, 6, "six PortApplied reports")
        .await;
    for (h, tag) in [
        (&prov, "100"),
        (&p, "100"),
        (&a1, "101"),
        (&m, "101"),
        (&b1, "102"),
    ] {
        assert_eq!(ovs.get(&h.port, "tag"), tag, "port of {}", h.ip);
    }
    // One batch for the whole switch.
    assert!(ovs
        .db_log()
        .contains("metalfleet switch tor1: 6 port change(s)"));

    // Same project: reachable. Across projects: not.
    a1.reaches(&a2.ip);
    m.reaches(&a1.ip);
    a1.cannot_reach(&b1.ip);
    b1.cannot_reach(&a2.ip);
    m.cannot_reach(&b1.ip);
    // The provisioning network: the node being provisioned reaches the agent (ping and its
    // HTTP server); no tenant reaches the agent or that node.
    p.reaches(&prov.ip);
    let out = p.ns.try_exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://10.61.0.1:8080/healthz",
    ]);
    assert!(
        out.status.success(),
        "the provisioning node cannot reach the agent's HTTP server: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&agent.log).unwrap_or_default()
    );
    for tenant in [&a1, &b1, &m] {
        tenant.cannot_reach(&prov.ip);
        tenant.cannot_reach(&p.ip);
        assert!(!curl_ok(tenant, "http://10.61.0.1:8080/healthz"));
    }

    // Tenant move: m leaves project A for project B (new intent, generation 2).
    drop(agent);
    files.seed(|s| {
        s.apply_deltas(1, 2, &[Delta::UpsertPort(access("tor1", &m.port, 102, 2))])
            .unwrap()
    });
    let mut agent = files.start(Some(&prov.ns), 2);
    wait_tag(&ovs, &m.port, "102");
    files.wait_depth(&mut agent, 7, "the move's report").await;
    m.reaches(&b1.ip);
    m.cannot_reach(&a1.ip);
    m.cannot_reach(&a2.ip);
    a1.cannot_reach(&m.ip);
    m.cannot_reach(&prov.ip);
    a1.reaches(&a2.ip);

    // Reverted to nothing: m reaches no one, not even its last project.
    drop(agent);
    files.seed(|s| {
        s.apply_deltas(
            2,
            3,
            &[Delta::UpsertPort(PortIntent {
                switch: "tor1".into(),
                port: m.port.clone(),
                config: PortConfig::Unconfigured,
                generation: 3,
            })],
        )
        .unwrap()
    });
    let mut agent = files.start(Some(&prov.ns), 3);
    files.wait_depth(&mut agent, 8, "the revert's report").await;
    assert_eq!(ovs.get(&m.port, "protected"), "true");
    m.cannot_reach(&b1.ip);
    b1.cannot_reach(&m.ip);
    drop(agent);

    // Every generation was reported exactly once, as read back from the switch.
    intents.push(access("tor1", &m.port, 102, 2));
    intents.push(PortIntent {
        switch: "tor1".into(),
        port: m.port.clone(),
        config: PortConfig::Unconfigured,
        generation: 3,
    });
    assert_reported_once(&files.events(), &intents);
}

fn node(n: u128, bmc: &str, power: PowerIntent) -> RackNode {
    RackNode {
        id: NodeId(uuid::Uuid::from_u128(n)),
        serial: format!("SN-T-{n}").parse().unwrap(),
        macs: vec![],
        boot_target: BootTarget::Discovery,
        static_ips: vec![],
        switch_ports: vec![],
        bmc: Some(BmcAccess {
            address: bmc.into(),
            driver: BmcDriver::Ipmi,
            username: Some(bmc_support::IPMI_USER.into()),
            password: Some(bmc_support::IPMI_PASSWORD.into()),
        }),
        revision: 1,
        power: Some(power),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_finishes_the_rest_and_reports_each_generation_once() {
    tools();
    // Two switches: tor1 answers, tor2's database is frozen (SIGSTOP) during the first run, so
    // the agent dies with tor1's batch done and tor2's stuck.
    let ovs1 = Ovs::start(None);
    let h1 = ovs1.add_host("10.62.0.1");
    let h2 = ovs1.add_host("10.62.0.2");
    let h3 = ovs1.add_host("10.62.0.3");
    let ovs2 = Ovs::start(None);
    let k1 = ovs2.add_host("10.63.0.1");
    let k2 = ovs2.add_host("10.63.0.2");

    let dir = netns::tempdir();
    let bmc_dir = dir.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let sim = bmc_support::IpmiSim::start(&bmc_dir, &[]);
    // A BMC nobody answers for.
    let dead = format!("127.0.0.1:{}", bmc_support::free_udp_port());
    let files = AgentFiles::new(
        dir.path(),
        "tenancy2",
        &format!(
            "[bmc]\ntimeout_secs = 2\nretries = 0\n[[bmc.overrides]]\naddress = \"{}\"\n\
             ipmi_cipher_suite = 3\n[[bmc.overrides]]\naddress = \"{dead}\"\nipmi_cipher_suite = 3\n\n\
             [[switches]]\nname = \"tor1\"\ndriver = \"ovs\"\naddress = \"unix:{}\"\nbridge = \"br0\"\n\n\
             [[switches]]\nname = \"tor2\"\ndriver = \"ovs\"\naddress = \"unix:{}\"\nbridge = \"br0\"\n\
             timeout_ms = 300000\n",
            sim.address(),
            ovs1.sock.display(),
            ovs2.sock.display()
        ),
    );
    let tor1 = vec![
        access("tor1", &h1.port, 201, 1),
        access("tor1", &h2.port, 201, 1),
        access("tor1", &h3.port, 202, 1),
    ];
    let tor2 = vec![
        access("tor2", &k1.port, 301, 5),
        access("tor2", &k2.port, 301, 5),
    ];
    let mut all = tor1.clone();
    all.extend(tor2.clone());
    let on = PowerIntent {
        on: true,
        generation: 1,
    };
    files.seed(|s| {
        s.apply_snapshot(&RackDesiredState {
            revision: 1,
            nodes: vec![node(1, &sim.address(), on), node(2, &dead, on)],
            ports: sorted(all.clone()),
            runs: Vec::new(),
        })
        .unwrap()
    });

    ovs2.freeze_db(true);
    let mut agent = files.start(None, 1);
    // tor1's three reports, node 1's PowerApplied + Power, node 2's failure log +
    // PowerApplied: everything but tor2, which cannot finish (its timeout is minutes away).
    files.wait_depth(&mut agent, 7, "everything but tor2").await;
    drop(agent);
    ovs2.freeze_db(false);

    let events = files.events();
    assert_reported_once(&events, &tor1);
    let n1 = NodeId(uuid::Uuid::from_u128(1));
    let n2 = NodeId(uuid::Uuid::from_u128(2));
    assert!(events.contains(&EventKind::PowerApplied {
        node: n1,
        generation: 1,
        ok: true,
        message: String::new()
    }));
    assert!(events.contains(&EventKind::Power { node: n1, on: true }));
    assert_eq!(sim.state_file("power").as_deref(), Some("1"));
    let dead_report = events
        .iter()
        .find_map(|e| match e {
            EventKind::PowerApplied {
                node,
                generation: 1,
                ok: false,
                message,
            } if *node == n2 => Some(message.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no failure report for the dead BMC: {events:?}"));
    assert!(dead_report.contains(&dead), "{dead_report}");

    // Node 1 is to be powered off (generation 2); then the agent runs again.
    files.seed(|s| {
        let mut n = node(
            1,
            &sim.address(),
            PowerIntent {
                on: false,
                generation: 2,
            },
        );
        n.revision = 2;
        s.apply_deltas(1, 2, &[Delta::UpsertNode(n)]).unwrap()
    });
    let mut agent = files.start(None, 2);
    files
        .wait_depth(&mut agent, 11, "tor2's reports and the power-off")
        .await;
    drop(agent);

    for k in [&k1, &k2] {
        assert_eq!(ovs2.get(&k.port, "tag"), "301");
    }
    k1.reaches(&k2.ip);
    h1.reaches(&h2.ip);
    h1.cannot_reach(&h3.ip);
    assert_eq!(sim.state_file("power").as_deref(), Some("0"));

    let events = files.events();
    // Each port generation once (tor1's not again after the restart), each power generation
    // once, the dead BMC not retried for the same generation.
    assert_reported_once(&events, &all);
    let power: Vec<&EventKind> = events
        .iter()
        .filter(|e| matches!(e, EventKind::PowerApplied { .. } | EventKind::Power { .. }))
        .collect();
    assert_eq!(power.len(), 5, "{power:?}");
    assert!(events.contains(&EventKind::PowerApplied {
        node: n1,
        generation: 2,
        ok: true,
        message: String::new()
    }));
    assert!(events.contains(&EventKind::Power {
        node: n1,
        on: false
    }));
    // tor1 was configured in one transaction, never again; ipmi_sim was told once each.
    let log1 = ovs1.db_log();
    assert_eq!(
        log1.matches("metalfleet switch tor1: 3 port change(s)")
            .count(),
        1,
        "tor1 was re-applied"
    );
    let calls = sim.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "set power 1").count(),
        1,
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "set power 0").count(),
        1,
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_follows_desired_state_changes() {
    // In-process: the agent's reconcilers wake when its store takes new desired state (what
    // the fleet link does with the coordinators' deltas), without a restart.
    let dir = netns::tempdir();
    let text = format!(
        "rack = \"tenancy3\"\ndata_dir = \"{}\"\ncoordinators = []\n[bmc]\nsimulate = true\n\n\
         [[switches]]\nname = \"tor1\"\ndriver = \"sim\"\nports = [\"e1\", \"e2\"]\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let agent = rack_agent::agent::Agent::start(Config::load(&path).unwrap())
        .await
        .unwrap();
    let store = agent.shared().store.clone();
    let tor1 = agent.hardware().switches["tor1"].clone();
    let n1 = NodeId(uuid::Uuid::from_u128(1));
    let n = node(
        1,
        "10.9.9.9",
        PowerIntent {
            on: true,
            generation: 1,
        },
    );
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        s.apply_deltas(
            0,
            1,
            &[
                Delta::UpsertNode(n),
                Delta::UpsertPort(access("tor1", "e2", 55, 1)),
                Delta::UpsertPort(access("tor1", "nope", 55, 1)),
            ],
        )
    })
    .await
    .unwrap()
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<EventKind> = store
            .pending(1000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let reports = port_reports(&events);
        let power = events
            .iter()
            .any(|e| matches!(e, EventKind::PowerApplied { node, .. } if *node == n1));
        if reports.len() == 2 && power {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reconcilers did not act on the new desired state: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        tor1.read_port("e2").await.unwrap().mode.to_string(),
        "access vlan 55"
    );
    let reports = port_reports(&events);
    let nope = &reports[&("tor1".to_owned(), "nope".to_owned(), 1)];
    assert!(
        nope.len() == 1 && !nope[0].0 && nope[0].2.contains("no port nope"),
        "{nope:?}"
    );
    assert!(events.contains(&EventKind::PowerApplied {
        node: n1,
        generation: 1,
        ok: true,
        message: String::new()
    }));
    agent.shutdown().await;
}
