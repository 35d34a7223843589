//! A running agent: owns the store, the control socket, the fleet link task, the boot
//! services, the reconcilers and the step executor, under one cancellation token;
//! [`Agent::shutdown`] stops them within a bound and removes the socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use crate::bmc::BmcRegistry;
use crate::boot::dhcp::{DhcpError, DhcpServer};
use crate::boot::http::NodeActions;
use crate::boot::http::{HttpError, HttpServer};
use crate::boot::tftp::{TftpError, TftpServer};
use crate::boot::tftp_scripts::TftpScripts;
use crate::boot::{BootBackend, BootDeps, EventSink, MetricsRegistry};
use crate::config::Config;
use crate::control::{self, ControlError};
use crate::executor::{
    self, Executor, ExecutorError, ExecutorHardware, GuardedConnector, NodeDirectory,
};
use crate::status::LinkStats;
use crate::store::{Store, StoreError};
use crate::switch::{CountedSwitch, SwitchDriver, SwitchError};
use crate::uplink;

/// How long shutdown waits for the tasks to finish before aborting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store could not be opened (or another agent holds it).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The DHCP server could not start.
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    /// The TFTP server could not start.
    #[error(transparent)]
    Tftp(#[from] TftpError),
    /// The HTTP boot server could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The step executor could not open its database.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// A configured switch driver could not be set up.
    #[error("switch {name}: {source}")]
    Switch {
        /// The switch's name in the config.
        name: String,
        /// Why (boxed: switch errors are large and this path is cold).
        #[source]
        source: Box<SwitchError>,
    },
}

/// The hardware handles of a running agent, for the step executor: the node API's action
/// queue, the per-BMC locks and counters, and one driver per configured switch.
#[derive(Clone)]
pub struct Hardware {
    /// Actions for node-agents (present when the HTTP server runs).
    pub node_actions: Option<NodeActions>,
    /// Per-BMC serialisation and counters shared by every BMC guard of this agent.
    pub bmcs: Arc<BmcRegistry>,
    /// Switch drivers by their configured name (counted; no I/O until first use).
    pub switches: Switches,
}

/// Switch drivers by their configured name.
pub type Switches = BTreeMap<String, Arc<dyn SwitchDriver>>;

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hardware")
            .field("node_actions", &self.node_actions.is_some())
            .field("switches", &self.switches.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct Shared {
    /// Validated configuration.
    pub config: Config,
    /// The local store.
    pub store: Store,
    /// Poked whenever events are enqueued, so the link sends them without polling.
    pub outbox_ready: Notify,
    link: Mutex<LinkStats>,
    /// The step executor, once opened (the boot services bind before it and apply its
    /// overrides from then on).
    executor: OnceLock<Executor>,
}

impl Shared {
    /// Wraps an open store.
    pub fn new(config: Config, store: Store) -> Shared {
        Shared {
            config,
            store,
            outbox_ready: Notify::new(),
            link: Mutex::new(LinkStats::default()),
            executor: OnceLock::new(),
        }
    }

    /// The step executor, once the agent opened it.
    pub fn executor(&self) -> Option<&Executor> {
        self.executor.get()
    }

    /// A copy of the link counters.
    pub fn link(&self) -> LinkStats {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Updates the link counters (never held across an await).
    pub fn update_link(&self, f: impl FnOnce(&mut LinkStats)) {
        f(&mut self.link.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The boot services read the rack's desired state from the store, with the executor's
/// overrides applied: the boot target `boot.set`/`os.install` chose and the address
/// `dhcp.reserve` pinned, so DHCP, TFTP and HTTP answers follow the run in progress.
impl BootBackend for Shared {
    fn node_by_mac(&self, mac: &protocol::Mac) -> Option<protocol::fleet::RackNode> {
        match self.store.node_by_mac(mac) {
            Ok(mut node) => {
                if let (Some(n), Some(x)) = (node.as_mut(), self.executor.get()) {
                    x.apply_overrides(n);
                }
                node
            }
            Err(e) => {
                tracing::error!(%mac, error = %crate::error_chain(&e), "store lookup failed");
                None
            }
        }
    }
}

/// The rack's nodes for the executor, read from the store (without the executor's own
/// overrides: steps act on the node as the desired state describes it).
#[derive(Debug, Clone)]
pub struct StoreDirectory(pub Store);

impl NodeDirectory for StoreDirectory {
    fn node(&self, id: protocol::NodeId) -> Option<protocol::fleet::RackNode> {
        self.0.node(id).unwrap_or_else(|e| {
            tracing::error!(node = %id, error = %crate::error_chain(&e), "store lookup failed");
            None
        })
    }

    fn node_by_mac(&self, mac: &protocol::Mac) -> Option<protocol::fleet::RackNode> {
        self.0.node_by_mac(mac).unwrap_or_else(|e| {
            tracing::error!(%mac, error = %crate::error_chain(&e), "store lookup failed");
            None
        })
    }
}

/// The agent's event sink for what the executor holds (BMC failures): weak, because the
/// agent's state holds the executor and a strong handle would keep both alive forever.
struct WeakEvents(Weak<Shared>);

impl EventSink for WeakEvents {
    fn emit(&self, kinds: Vec<protocol::fleet::EventKind>) {
        if let Some(shared) = self.0.upgrade() {
            shared.emit(kinds);
        }
    }
}

/// Boot-service observations go to the durable outbox.
impl EventSink for Shared {
    fn emit(&self, kinds: Vec<protocol::fleet::EventKind>) {
        if kinds.is_empty() {
            return;
        }
        let n = kinds.len();
        match self.store.enqueue_many(kinds) {
            Ok(_) => self.outbox_ready.notify_one(),
            Err(e) => tracing::error!(
                events = n,
                error = %crate::error_chain(&e),
                "could not queue boot-service events; they are lost"
            ),
        }
    }
}

/// A running agent. Dropping it cancels its tasks; [`Agent::shutdown`] also waits for them.
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
    hardware: Hardware,
    http_addr: Option<std::net::SocketAddr>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    socket: PathBuf,
}

impl Agent {
    /// Opens the store, binds the control socket and starts the fleet link. Without any
    /// reachable coordinator the agent runs all the same (offline operation).
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ControlError::Setup {
            path: config.data_dir.clone(),
            source,
        })?;
        let store_path = config.store_path();
        let store = tokio::task::spawn_blocking(move || Store::open(&store_path))
            .await
            .map_err(|_| StoreError::Interrupted {
                path: config.store_path(),
            })??;
        let socket = config.control_socket.clone();
        let listener = control::bind(&socket)?;
        let shared = Arc::new(Shared::new(config, store));
        let cancel = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(control::serve(listener, shared.clone(), cancel.clone())),
            tokio::spawn(uplink::run(shared.clone(), cancel.clone())),
        ];
        // Boot services bind before anything is spawned for them, so a port in use or a
        // missing interface fails the start instead of leaving a half-running agent.
        // Check-ins, leases and node-agent log lines also reach the executor (facts for
        // `node.wait`, step logs and progress).
        let (events, observations) = executor::tap(shared.clone());
        let mut deps = BootDeps {
            backend: shared.clone(),
            events,
            data_dir: shared.config.data_dir.clone(),
            ipxe_dir: shared.config.ipxe_dir.clone(),
            metrics: MetricsRegistry::default(),
            generated: None,
            http_port: None,
        };
        let started = match Self::connect_switches(&shared.config, &deps) {
            Ok(switches) => Self::bind_boot_services(&shared.config, &mut deps)
                .await
                .map(|s| (s, switches)),
            Err((name, source)) => Err(AgentError::Switch { name, source }),
        };
        let ((http, tftp, dhcp), switches) = match started {
            Ok(servers) => servers,
            Err(e) => {
                cancel.cancel();
                for t in tasks {
                    t.abort();
                }
                control::remove_socket(&socket);
                return Err(e);
            }
        };
        let http_addr = http.as_ref().map(HttpServer::local_addr);
        let bmcs = Arc::new(BmcRegistry::default());
        deps.metrics.register(bmcs.stats());
        let hardware = Hardware {
            node_actions: http.as_ref().map(HttpServer::node_actions),
            bmcs,
            switches,
        };
        let run_sink = Arc::new(executor::outbox::OutboxSink::default());
        let opened = Self::open_executor(&shared, &hardware, run_sink.clone(), observations);
        let ex = match opened {
            Ok(ex) => ex,
            Err(e) => {
                cancel.cancel();
                for t in tasks {
                    t.abort();
                }
                control::remove_socket(&socket);
                return Err(e.into());
            }
        };
        tasks.extend(Self::spawn_executor(&shared, ex, run_sink, &cancel));
        // Power and switch ports follow the desired state from here on (offline too).
        tasks.extend(crate::reconcile::spawn(&shared, &hardware, &cancel));
        if let Some(s) = http {
            tracing::info!(addr = %s.local_addr(), "HTTP boot server listening");
            tasks.push(tokio::spawn(s.run(cancel.clone())));
        }
        if let Some(s) = tftp {
            tracing::info!(addr = %s.local_addr(), "TFTP server listening");
            tasks.push(tokio::spawn(s.run(cancel.clone())));
        }
        if let Some(s) = dhcp {
            tracing::info!(addr = %s.local_addr(), "DHCP server listening");
            tasks.push(tokio::spawn(s.run(cancel.clone())));
        }
        tracing::info!(
            rack = %shared.config.rack,
            socket = %socket.display(),
            version = env!("CARGO_PKG_VERSION"),
            "rack agent started"
        );
        Ok(Agent {
            shared,
            hardware,
            http_addr,
            cancel,
            tasks,
            socket,
        })
    }

    /// Opens the step executor on `<data_dir>/runs.redb` (resuming the runs it holds) and
    /// makes the boot services apply its overrides.
    fn open_executor(
        shared: &Arc<Shared>,
        hardware: &Hardware,
        sink: Arc<executor::outbox::OutboxSink>,
        observations: executor::Observations,
    ) -> Result<Executor, ExecutorError> {
        let mut config = shared.config.executor.clone();
        config.data_dir = shared.config.data_dir.clone();
        let hw = ExecutorHardware {
            // Without an HTTP server no node-agent can fetch actions: node steps time out.
            node_actions: hardware.node_actions.clone().unwrap_or_default(),
            bmcs: Arc::new(GuardedConnector {
                config: shared.config.bmc.clone(),
                registry: hardware.bmcs.clone(),
                events: Arc::new(WeakEvents(Arc::downgrade(shared))),
            }),
            nodes: Arc::new(StoreDirectory(shared.store.clone())),
        };
        let ex = Executor::open(config, hw, sink, observations)?;
        // Set once per Shared; a second start builds a new Shared.
        let _ = shared.executor.set(ex.clone());
        Ok(ex)
    }

    /// The run reconciler (desired runs → executor) and the writer of run events into the
    /// outbox. At cancellation the reconciler stops, then the executor (its run tasks stop
    /// where they are; a restart resumes them), then the writer flushes what is queued.
    fn spawn_executor(
        shared: &Arc<Shared>,
        ex: Executor,
        sink: Arc<executor::outbox::OutboxSink>,
        cancel: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let stop_writer = CancellationToken::new();
        let wake_shared = shared.clone();
        let writer = tokio::spawn(executor::outbox::run(
            sink.clone(),
            shared.store.clone(),
            Arc::new(move || wake_shared.outbox_ready.notify_one()),
            stop_writer.clone(),
        ));
        let store = shared.store.clone();
        let cancel = cancel.clone();
        let reconciler = tokio::spawn(async move {
            executor::reconcile::run(
                ex.clone(),
                store,
                sink,
                executor::reconcile::RECONCILE_INTERVAL,
                cancel,
            )
            .await;
            ex.shutdown().await;
            stop_writer.cancel();
        });
        vec![reconciler, writer]
    }

    /// One counted driver per configured switch (no I/O yet), its counters registered.
    fn connect_switches(
        config: &Config,
        deps: &BootDeps,
    ) -> Result<Switches, (String, Box<SwitchError>)> {
        let mut out = BTreeMap::new();
        for c in &config.switches {
            let driver = crate::switch::connect(c).map_err(|e| (c.name.clone(), Box::new(e)))?;
            let counted = CountedSwitch::wrap(driver);
            deps.metrics.register(counted.stats());
            out.insert(c.name.clone(), counted as Arc<dyn SwitchDriver>);
        }
        Ok(out)
    }

    /// Where the HTTP boot server listens, if configured.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// The step executor.
    pub fn executor(&self) -> Option<&Executor> {
        self.shared.executor()
    }

    /// The hardware handles (node actions, BMC registry, switch drivers).
    pub fn hardware(&self) -> &Hardware {
        &self.hardware
    }

    /// Binds HTTP first (DHCP hands out its port), then TFTP, then DHCP.
    async fn bind_boot_services(
        config: &Config,
        deps: &mut BootDeps,
    ) -> Result<(Option<HttpServer>, Option<TftpServer>, Option<DhcpServer>), AgentError> {
        let http = match &config.http {
            Some(c) => Some(HttpServer::bind(c, deps).await?),
            None => None,
        };
        deps.http_port = http.as_ref().map(|s| s.local_addr().port());
        if let (Some(http_config), Some(port)) = (&config.http, deps.http_port) {
            let subnets = config
                .dhcp
                .iter()
                .flat_map(|d| &d.subnets)
                .map(|s| (s.network, std::net::IpAddr::V4(s.server_ip)))
                .collect();
            deps.generated = Some(Arc::new(TftpScripts::new(
                deps.backend.clone(),
                deps.events.clone(),
                http_config.clone(),
                port,
                subnets,
            )));
        }
        let tftp = match &config.tftp {
            Some(c) => Some(TftpServer::bind(c, deps).await?),
            None => None,
        };
        let dhcp = match &config.dhcp {
            Some(c) => Some(DhcpServer::bind(c, deps).await?),
            None => None,
        };
        Ok((http, tftp, dhcp))
    }

    /// The state shared by the agent's tasks (store, link counters).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops every task (waiting up to [`SHUTDOWN_GRACE`]) and removes the control socket.
    /// Once it returns, the store is closed unless the caller still holds a clone of it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a task did not stop within the shutdown grace period; aborting it");
                abort.abort();
            }
        }
        control::remove_socket(&self.socket);
        tracing::info!("rack agent stopped");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
