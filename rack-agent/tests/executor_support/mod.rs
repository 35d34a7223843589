//! A rack agent's executor in-process for the executor tests: the agent's real HTTP server
//! (node API with its action queue) on loopback, the executor on its own redb file in a
//! scratch directory, guarded BMC simulators, and real node-agent loops (the microkernel's
//! `node-agent` library) that check in and execute actions. The agent can be stopped the way
//! a crash stops it and started again on the same port and data directory.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node_agent::actions::PowerCommands;
use node_agent::cmdline::BootParams;
use node_agent::run::Options;
use protocol::domain::{BmcDriver, BootTarget, StaticIp};
use protocol::fleet::{BmcAccess, RackNode};
use protocol::workflow::{
    Backoff, HumanDuration, OnFailure, RunPlan, RunState, RunStatus, Step, StepKind,
};
use protocol::{Mac, NodeId};
use rack_agent::bmc::guard::CollectingObserver;
use rack_agent::bmc::sim::SimBmc;
use rack_agent::bmc::{Bmc, BmcError, BmcRegistry, GuardedBmc, RetryPolicy};
use rack_agent::boot::http::node_api::NodeActions;
use rack_agent::boot::http::{HttpConfig, HttpServer};
use rack_agent::boot::{BootDeps, CollectingSink, ConfigCtx, FixtureBackend};
use rack_agent::executor::{
    self, BmcConnector, CollectingRunSink, Executor, ExecutorConfig, ExecutorHardware,
    StaticDirectory,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// BMC simulators by address, each behind a real guard (no guard retries: the step's own
/// retries are under test).
#[derive(Default)]
pub struct SimConnector {
    pub sims: Mutex<BTreeMap<String, Arc<SimBmc>>>,
    registry: BmcRegistry,
}

impl SimConnector {
    pub fn sim(&self, address: &str) -> Arc<SimBmc> {
        self.sims
            .lock()
            .unwrap()
            .entry(address.to_owned())
            .or_insert_with(|| SimBmc::shared(address))
            .clone()
    }
}

impl BmcConnector for SimConnector {
    fn connect(&self, _node: NodeId, access: &BmcAccess) -> Result<Arc<dyn Bmc>, BmcError> {
        let policy = RetryPolicy {
            retries: 0,
            backoff: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            attempt_timeout: Duration::from_secs(120),
        };
        Ok(Arc::new(GuardedBmc::new(
            self.sim(&access.address),
            &self.registry,
            policy,
            Duration::from_secs(5),
            Arc::new(CollectingObserver::default()),
        )))
    }
}

/// A node of the fixture rack: `n` picks its id, serial, MAC and BMC address.
pub fn rack_node(n: u8) -> RackNode {
    RackNode {
        id: NodeId(uuid::Uuid::from_u128(u128::from(n))),
        serial: format!("NA-{n:04}").parse().unwrap(),
        macs: vec![mac(n)],
        boot_target: BootTarget::Discovery,
        static_ips: vec![StaticIp {
            interface: "eth0".into(),
            address: "127.0.0.1".parse().unwrap(),
            prefix: 8,
            gateway: None,
        }],
        switch_ports: vec![],
        bmc: Some(BmcAccess {
            address: format!("bmc-{n}"),
            driver: BmcDriver::Ipmi,
            username: Some("admin".into()),
            password: Some("password".into()),
        }),
        revision: 1,
        power: None,
    }
}

pub fn mac(n: u8) -> Mac {
    format!("52:54:00:aa:00:{n:02x}").parse().unwrap()
}

/// A step with test-sized defaults: 60 s timeout, no retries, 100 ms backoff.
pub fn step(name: &str, kind: StepKind) -> Step {
    Step {
        name: name.into(),
        idempotent: kind.idempotent_by_default(),
        kind,
        timeout: HumanDuration::from_secs(60),
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

pub fn plan(steps: Vec<Step>) -> RunPlan {
    RunPlan {
        template: "test".into(),
        version: 1,
        params: BTreeMap::new(),
        steps,
    }
}

pub fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Lines in a file (0 when it does not exist).
pub fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Polls `f` every 20 ms until it gives a value; panics after `what` never happened.
pub async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..6000 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Running {
    executor: Executor,
    actions: NodeActions,
    server: JoinHandle<()>,
    cancel: CancellationToken,
}

/// The rack agent side (HTTP node API + executor) and the machines.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<RackNode>,
    pub directory: Arc<StaticDirectory>,
    pub bmcs: Arc<SimConnector>,
    /// The BMC connector steps use; the simulators unless a test sets another.
    pub connector: Option<Arc<dyn BmcConnector>>,
    pub boot_events: Arc<CollectingSink>,
    pub runs: Arc<CollectingRunSink>,
    addr: Option<SocketAddr>,
    running: Option<Running>,
    machines: Vec<JoinHandle<()>>,
}

impl Lab {
    pub fn new(nodes: Vec<RackNode>) -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            directory: Arc::new(StaticDirectory::new(nodes.clone())),
            nodes,
            bmcs: Arc::new(SimConnector::default()),
            connector: None,
            boot_events: Arc::new(CollectingSink::default()),
            runs: Arc::new(CollectingRunSink::default()),
            addr: None,
            running: None,
            machines: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("agent")
    }

    /// Starts the agent side (the same port and data directory as before, after a stop).
    pub async fn start(&mut self) -> Executor {
        let listen = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let ctx = ConfigCtx {
            base_dir: self.dir.path().to_owned(),
            data_dir: self.data_dir(),
        };
        let table: toml::Table = format!("listen = \"{listen}\"").parse().unwrap();
        let config = HttpConfig::from_toml(table, &ctx).unwrap();
        let (events, observations) = executor::tap(self.boot_events.clone());
        let mut deps = BootDeps::fixture(
            Arc::new(FixtureBackend::new(self.nodes.clone())),
            self.boot_events.clone(),
            self.data_dir(),
        );
        deps.events = events;
        let server = HttpServer::bind(&config, &deps).await.unwrap();
        self.addr = Some(server.local_addr());
        let hw = ExecutorHardware {
            node_actions: server.node_actions(),
            bmcs: self
                .connector
                .clone()
                .unwrap_or_else(|| self.bmcs.clone() as Arc<dyn BmcConnector>),
            nodes: self.directory.clone(),
        };
        let mut xc = ExecutorConfig::new(self.data_dir());
        xc.playbook_dir = self.path("playbooks");
        xc.autoinstall_dir = Some(self.path("agent/templates"));
        let executor = Executor::open(xc, hw, self.runs.clone(), observations).unwrap();
        let cancel = CancellationToken::new();
        let actions = server.node_actions();
        let task = tokio::spawn(server.run(cancel.clone()));
        self.running = Some(Running {
            executor: executor.clone(),
            actions,
            server: task,
            cancel,
        });
        executor
    }

    /// Stops the agent side where it is: run tasks are dropped mid-step (nothing more is
    /// recorded, as after a crash), the HTTP server goes away with its in-memory queue.
    /// `executor` is the caller's handle, given back so the database closes.
    pub async fn crash(&mut self, executor: Executor) {
        drop(executor);
        let r = self.running.take().expect("agent running");
        r.executor.shutdown().await;
        r.cancel.cancel();
        r.server.await.unwrap();
    }

    /// Ids of the actions queued and not yet completed.
    pub fn pending_actions(&self) -> Vec<String> {
        self.running
            .as_ref()
            .map(|r| {
                r.actions
                    .pending()
                    .into_iter()
                    .map(|(_, a, _)| a.id().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The agent's HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("agent started"))
    }

    /// Starts a real node-agent loop for node `n` of `self.nodes` (its machine's files under
    /// `machines/<serial>`).
    pub fn boot_machine(&mut self, i: usize) {
        let node = self.nodes[i].clone();
        let root = self.path(&format!("machines/{}", node.serial));
        let m = node.macs[0];
        write(
            &root.join("sys/class/dmi/id/product_serial"),
            &format!("{}\n", node.serial),
        );
        write(&root.join("sys/class/dmi/id/sys_vendor"), "QEMU\n");
        write(
            &root.join("proc/cpuinfo"),
            "processor\t: 0\nmodel name\t: Test CPU\n",
        );
        write(&root.join("proc/meminfo"), "MemTotal: 1024 kB\n");
        write(&root.join("sys/block/vda/size"), "2048\n");
        write(&root.join("sys/class/net/eth0/type"), "1\n");
        write(&root.join("sys/class/net/eth0/address"), &format!("{m}\n"));
        write(&root.join("sys/class/net/eth0/carrier"), "1\n");
        let opts = Options {
            root: root.clone(),
            poll_wait: Duration::from_secs(2),
            power: PowerCommands {
                reboot: vec!["touch".into(), root.join("rebooted").display().to_string()],
                poweroff: vec!["true".into()],
                kexec: "true".into(),
                scratch: root.clone(),
            },
            external_commands: false,
            checkin_only: false,
        };
        let params = BootParams {
            agent: format!("http://{}", self.addr.expect("agent started")),
            mac: Some(m),
        };
        self.machines.push(tokio::spawn(async move {
            let _ = node_agent::run::run(params, opts).await;
        }));
    }

    /// Waits until the run's status satisfies `pred`.
    pub async fn wait_run(
        &self,
        ex: &Executor,
        run: &str,
        what: &str,
        pred: impl Fn(&RunStatus) -> bool,
    ) -> RunStatus {
        poll(&format!("run {run}: {what}"), || {
            ex.status(run).ok().filter(|s| pred(s))
        })
        .await
    }

    /// Waits until the run is over.
    pub async fn finished(&self, ex: &Executor, run: &str) -> RunStatus {
        self.wait_run(ex, run, "a final state", |s| s.state.is_final())
            .await
    }

    /// Waits until a step's log has a line containing `text` (lines arrive asynchronously).
    pub async fn log_contains(&self, ex: &Executor, run: &str, step: &str, text: &str) {
        poll(&format!("{text:?} in the log of {run}/{step}"), || {
            ex.logs(run, step)
                .unwrap()
                .iter()
                .any(|l| l.contains(text))
                .then_some(())
        })
        .await;
    }

    /// Waits for the node's check-in facts.
    pub async fn checked_in(&self, ex: &Executor, i: usize) {
        let id = self.nodes[i].id;
        poll("the check-in facts", || {
            ex.facts(id)
                .ok()
                .filter(|f| f["system"]["vendor"] == "QEMU")
                .map(|_| ())
        })
        .await;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for m in &self.machines {
            m.abort();
        }
        if let Some(r) = &self.running {
            r.cancel.cancel();
        }
    }
}

pub fn done(s: &RunStatus) -> bool {
    s.state == RunState::Succeeded
}
