//! A running agent: owns the store, the control socket and the fleet link task, under one
//! cancellation token; [`Agent::shutdown`] stops them within a bound and removes the socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{self, ControlError};
use crate::status::LinkStats;
use crate::store::{Store, StoreError};
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
}

impl Shared {
    /// Wraps an open store.
    pub fn new(config: Config, store: Store) -> Shared {
        Shared {
            config,
            store,
            outbox_ready: Notify::new(),
            link: Mutex::new(LinkStats::default()),
        }
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

/// A running agent. Dropping it cancels its tasks; [`Agent::shutdown`] also waits for them.
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
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
        let tasks = vec![
            tokio::spawn(control::serve(listener, shared.clone(), cancel.clone())),
            tokio::spawn(uplink::run(shared.clone(), cancel.clone())),
        ];
        tracing::info!(
            rack = %shared.config.rack,
            socket = %socket.display(),
            version = env!("CARGO_PKG_VERSION"),
            "rack agent started"
        );
        Ok(Agent {
            shared,
            cancel,
            tasks,
            socket,
        })
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
