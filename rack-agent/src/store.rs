//! The agent's local store (redb, `data_dir/agent.redb`): the rack's desired state with its
//! revision (nodes, switch-port intents and workflow run assignments), the generations of power and port intents the
//! reconcilers have carried out, the fleet endpoints, certificate renewal info, and the durable
//! event outbox.
//!
//! One process opens the file at a time (redb holds a file lock). Every write is a single redb
//! transaction committed with [`Durability::Immediate`], so whatever a caller was told is
//! stored survives a crash: the agent acknowledges a revision, or reports an event's sequence
//! number, only after the commit returned.
//!
//! Schema (all values are `[format byte] ++ postcard(record)`, format [`RECORD_FORMAT`]):
//!
//! | table          | key                  | value                                         |
//! |----------------|----------------------|-----------------------------------------------|
//! | `nodes`        | node id (`u128`)     | [`RackNode`]                                  |
//! | `nodes_by_mac` | MAC (`u64`, multimap)| node id (`u128`) — derived index, raw ints    |
//! | `meta`         | name (`&str`)        | `schema`, `revision`, `endpoints`, `cert`, `next_seq`, `acked_seq` |
//! | `outbox`       | event seq (`u64`)    | [`Event`]                                     |
//! | `ports`        | (switch, port)       | [`PortIntent`]                                |
//! | `power_applied`| node id (`u128`)     | (node id, [`Applied`]): last power generation acted on |
//! | `ports_applied`| (switch, port)       | [`Applied`]: last port generation acted on    |
//! | `runs`         | run id (`&str`)      | [`RunAssignment`]                             |
//!
//! An intent's outcome and its events are committed in one transaction
//! ([`Store::record_power_applied`], [`Store::record_ports_applied`]), so after a crash the
//! agent either acts again (the outcome was not recorded; power and port changes are
//! idempotent) or has both the record and the events: never an event twice, never one lost.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;

use protocol::fleet::{
    Delta, Event, EventKind, PortIntent, RackDesiredState, RackNode, RunAssignment,
};
use protocol::{Mac, NodeId, Revision};
use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const NODES: TableDefinition<u128, &[u8]> = TableDefinition::new("nodes");
const NODES_BY_MAC: MultimapTableDefinition<u64, u128> =
    MultimapTableDefinition::new("nodes_by_mac");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const PORTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("ports");
const POWER_APPLIED: TableDefinition<u128, &[u8]> = TableDefinition::new("power_applied");
const PORTS_APPLIED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("ports_applied");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");

const META_SCHEMA: &str = "schema";
const META_REVISION: &str = "revision";
const META_ENDPOINTS: &str = "endpoints";
const META_CERT: &str = "cert";
const META_NEXT_SEQ: &str = "next_seq";
const META_ACKED_SEQ: &str = "acked_seq";

/// Format byte prefixed to every stored record, so a later release can read older ones and an
/// older release refuses newer ones instead of misreading them.
pub const RECORD_FORMAT: u8 = 1;

/// Largest accepted event (encoded). Batches are sized so a frame of events stays far below
/// `protocol::frame::MAX_FRAME_LEN`; an event that could never be sent must not block the
/// outbox forever, so it is refused when enqueued.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Layout of the tables (which tables and indexes exist). Bumped when a table is added or the
/// meaning of a key changes; the store refuses a file written with a newer schema and
/// upgrades an older one in place (2: `ports`, `power_applied`, `ports_applied`; 3: `runs`).
pub const SCHEMA_VERSION: u32 = 3;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (normally the running agent) holds the store open.
    #[error("store {path} is in use by another process (is the agent running?)")]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The store could not be opened or created.
    #[error("opening store {path}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What redb reported (boxed: redb's error is large, and this one travels far).
        #[source]
        source: Box<redb::Error>,
    },
    /// A read or write failed.
    #[error("store {path}: {op}")]
    Db {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// What redb reported (boxed: redb's error is large, and this one travels far).
        #[source]
        source: Box<redb::Error>,
    },
    /// A record was written by a newer release (or is empty or corrupt).
    #[error(
        "store {path}: {what} has record format {found:?}, this build reads format {RECORD_FORMAT}"
    )]
    Format {
        /// The store file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The format byte found (`None` for an empty record).
        found: Option<u8>,
    },
    /// The store was laid out by a newer release.
    #[error("store {path} has schema {found}, this build knows schema {SCHEMA_VERSION}: upgrade the agent")]
    Schema {
        /// The store file.
        path: PathBuf,
        /// Schema version found.
        found: u32,
    },
    /// A record did not decode.
    #[error("store {path}: decoding {what}")]
    Decode {
        /// The store file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// A record could not be encoded.
    #[error("store {path}: encoding {what}")]
    Encode {
        /// The store file.
        path: PathBuf,
        /// Which record.
        what: &'static str,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// Deltas do not start at the stored revision: the caller must resynchronise (reconnect
    /// announcing the stored revision).
    #[error("deltas start after revision {from} but the store holds revision {stored}")]
    RevisionMismatch {
        /// Revision the deltas start after.
        from: Revision,
        /// Revision in the store.
        stored: Revision,
    },
    /// Deltas that end before they start.
    #[error("deltas from revision {from} to {to} go backwards")]
    DeltaRange {
        /// Start (exclusive).
        from: Revision,
        /// End (inclusive).
        to: Revision,
    },
    /// An event too large to ever travel in a fleet frame.
    #[error("event of {bytes} bytes exceeds the limit of {max} bytes")]
    EventTooLarge {
        /// Encoded size.
        bytes: usize,
        /// [`MAX_EVENT_BYTES`].
        max: usize,
    },
    /// The blocking task running a store operation was cancelled (runtime shutting down).
    #[error("store {path}: operation interrupted by shutdown")]
    Interrupted {
        /// The store file.
        path: PathBuf,
    },
    /// A snapshot older than what is stored (e.g. from a lagging coordinator); applying it
    /// would roll boot targets back.
    #[error("snapshot at revision {snapshot} is older than the stored revision {stored}")]
    StaleSnapshot {
        /// The snapshot's revision.
        snapshot: Revision,
        /// Revision in the store.
        stored: Revision,
    },
}

/// What the agent knows about its certificate, for renewal decisions and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// When the agent received the certificate (enrollment or renewal), unix seconds.
    pub installed_at: i64,
    /// The certificate's `notBefore`, unix seconds.
    pub not_before: i64,
    /// The certificate's `notAfter`, unix seconds.
    pub not_after: i64,
}

/// What the agent did with one generation of an intent (power of a node, config of a port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The intent generation acted on; newer generations are pending.
    pub generation: u64,
    /// Whether it was carried out (false: the agent gave up and reported why).
    pub ok: bool,
    /// When, unix milliseconds.
    pub at: i64,
}

/// Sequence numbers of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxCounters {
    /// Events waiting for the coordinators' acknowledgement.
    pub depth: u64,
    /// Highest sequence number acknowledged so far (0 for none).
    pub acked_seq: u64,
    /// Sequence number the next event will get.
    pub next_seq: u64,
}

/// The agent's store. Cheap to clone; clones share the open database. Methods block on disk
/// I/O (each write waits for fsync): async callers run them on the blocking pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Counts committed desired-state changes, so reconcilers wake when there is new work.
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating the file and its tables if needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_owned(),
            },
            other => StoreError::Open {
                path: path.to_owned(),
                source: Box::new(other.into()),
            },
        })?;
        // The store holds BMC credentials of the rack's nodes: owner only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            StoreError::Open {
                path: path.to_owned(),
                source: Box::new(redb::Error::Io(e)),
            }
        })?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        };
        store.write("create tables", |txn, s| {
            txn.open_table(NODES).map_err(s.db("create tables"))?;
            txn.open_multimap_table(NODES_BY_MAC)
                .map_err(s.db("create tables"))?;
            txn.open_table(OUTBOX).map_err(s.db("create tables"))?;
            txn.open_table(PORTS).map_err(s.db("create tables"))?;
            txn.open_table(POWER_APPLIED)
                .map_err(s.db("create tables"))?;
            txn.open_table(PORTS_APPLIED)
                .map_err(s.db("create tables"))?;
            txn.open_table(RUNS).map_err(s.db("create tables"))?;
            let mut meta = txn.open_table(META).map_err(s.db("create tables"))?;
            match s.meta_get::<u32, _>(&meta, META_SCHEMA)? {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::Schema {
                        path: s.inner.path.clone(),
                        found,
                    })
                }
                Some(SCHEMA_VERSION) => {}
                // Older layouts lack only tables, created above.
                Some(_) | None => s.meta_put(&mut meta, META_SCHEMA, &SCHEMA_VERSION)?,
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking thread pool (store calls wait for fsync) and returns its
    /// result. Cancel-safe in the sense that dropping the future lets `f` run to completion
    /// in the background; its transaction is never half-applied.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Interrupted {
                path: self.inner.path.clone(),
            }),
        }
    }

    /// Replaces the whole desired state (every node and the revision) in one transaction.
    ///
    /// A snapshot at the stored revision is applied again (harmless); an older one is refused
    /// with [`StoreError::StaleSnapshot`].
    pub fn apply_snapshot(&self, state: &RackDesiredState) -> Result<(), StoreError> {
        self.replace_state(state, false)
    }

    /// Like [`Store::apply_snapshot`] but also accepts a snapshot older than the stored
    /// revision: for when the coordinators' history really went back (cluster restored), as
    /// opposed to one lagging coordinator.
    pub fn apply_snapshot_allowing_rollback(
        &self,
        state: &RackDesiredState,
    ) -> Result<(), StoreError> {
        self.replace_state(state, true)
    }

    fn replace_state(&self, state: &RackDesiredState, allow_older: bool) -> Result<(), StoreError> {
        const OP: &str = "apply snapshot";
        self.write_desired(OP, |txn, s| {
            let stored = s.revision_in(txn)?;
            if state.revision < stored && !allow_older {
                return Err(StoreError::StaleSnapshot {
                    snapshot: state.revision,
                    stored,
                });
            }
            txn.delete_table(NODES).map_err(s.db(OP))?;
            txn.delete_multimap_table(NODES_BY_MAC).map_err(s.db(OP))?;
            let mut nodes = txn.open_table(NODES).map_err(s.db(OP))?;
            let mut macs = txn.open_multimap_table(NODES_BY_MAC).map_err(s.db(OP))?;
            for node in &state.nodes {
                let id = node.id.0.as_u128();
                nodes
                    .insert(id, s.encode("node", node)?.as_slice())
                    .map_err(s.db(OP))?;
                for mac in &node.macs {
                    macs.insert(mac_key(mac), id).map_err(s.db(OP))?;
                }
            }
            // Applied records of what is still wanted stay (they make a re-sent intent a
            // no-op); those of nodes and ports that left are forgotten, as by the deltas.
            let node_ids: std::collections::BTreeSet<u128> =
                state.nodes.iter().map(|n| n.id.0.as_u128()).collect();
            txn.open_table(POWER_APPLIED)
                .map_err(s.db(OP))?
                .retain(|id, _| node_ids.contains(&id))
                .map_err(s.db(OP))?;
            let port_keys: std::collections::BTreeSet<(&str, &str)> = state
                .ports
                .iter()
                .map(|p| (p.switch.as_str(), p.port.as_str()))
                .collect();
            txn.open_table(PORTS_APPLIED)
                .map_err(s.db(OP))?
                .retain(|key, _| port_keys.contains(&key))
                .map_err(s.db(OP))?;
            txn.delete_table(PORTS).map_err(s.db(OP))?;
            let mut ports = txn.open_table(PORTS).map_err(s.db(OP))?;
            for intent in &state.ports {
                ports
                    .insert(
                        (intent.switch.as_str(), intent.port.as_str()),
                        s.encode("port intent", intent)?.as_slice(),
                    )
                    .map_err(s.db(OP))?;
            }
            txn.delete_table(RUNS).map_err(s.db(OP))?;
            let mut runs = txn.open_table(RUNS).map_err(s.db(OP))?;
            for run in &state.runs {
                runs.insert(
                    run.run_id.as_str(),
                    s.encode("run assignment", run)?.as_slice(),
                )
                .map_err(s.db(OP))?;
            }
            let mut meta = txn.open_table(META).map_err(s.db(OP))?;
            s.meta_put(&mut meta, META_REVISION, &state.revision)
        })
    }

    /// Applies the changes from revision `from` (exclusive) to `to` (inclusive) in one
    /// transaction. Refused with [`StoreError::RevisionMismatch`] unless `from` is the stored
    /// revision.
    pub fn apply_deltas(
        &self,
        from: Revision,
        to: Revision,
        deltas: &[Delta],
    ) -> Result<(), StoreError> {
        const OP: &str = "apply deltas";
        if to < from {
            return Err(StoreError::DeltaRange { from, to });
        }
        self.write_desired(OP, |txn, s| {
            let stored = s.revision_in(txn)?;
            if from != stored {
                return Err(StoreError::RevisionMismatch { from, stored });
            }
            let mut nodes = txn.open_table(NODES).map_err(s.db(OP))?;
            let mut macs = txn.open_multimap_table(NODES_BY_MAC).map_err(s.db(OP))?;
            let mut ports = txn.open_table(PORTS).map_err(s.db(OP))?;
            let mut ports_applied = txn.open_table(PORTS_APPLIED).map_err(s.db(OP))?;
            let mut power_applied = txn.open_table(POWER_APPLIED).map_err(s.db(OP))?;
            let mut runs = txn.open_table(RUNS).map_err(s.db(OP))?;
            for delta in deltas {
                let id = match delta {
                    Delta::UpsertNode(node) => node.id,
                    Delta::RemoveNode(id) => {
                        power_applied.remove(id.0.as_u128()).map_err(s.db(OP))?;
                        *id
                    }
                    Delta::UpsertPort(intent) => {
                        ports
                            .insert(
                                (intent.switch.as_str(), intent.port.as_str()),
                                s.encode("port intent", intent)?.as_slice(),
                            )
                            .map_err(s.db(OP))?;
                        continue;
                    }
                    Delta::UpsertRun(run) => {
                        runs.insert(
                            run.run_id.as_str(),
                            s.encode("run assignment", run)?.as_slice(),
                        )
                        .map_err(s.db(OP))?;
                        continue;
                    }
                    Delta::RemoveRun(run_id) => {
                        runs.remove(run_id.as_str()).map_err(s.db(OP))?;
                        continue;
                    }
                    Delta::RemovePort { switch, port } => {
                        // Forgotten entirely: a later intent for the port is applied afresh.
                        let key = (switch.as_str(), port.as_str());
                        ports.remove(key).map_err(s.db(OP))?;
                        ports_applied.remove(key).map_err(s.db(OP))?;
                        continue;
                    }
                };
                let key = id.0.as_u128();
                // Drop the index entries of the node's previous version.
                let old = nodes
                    .remove(key)
                    .map_err(s.db(OP))?
                    .map(|v| s.decode_node(v.value(), || format!("node {id}")))
                    .transpose()?;
                if let Some(old) = old {
                    for mac in &old.macs {
                        macs.remove(mac_key(mac), key).map_err(s.db(OP))?;
                    }
                }
                if let Delta::UpsertNode(node) = delta {
                    nodes
                        .insert(key, s.encode("node", node)?.as_slice())
                        .map_err(s.db(OP))?;
                    for mac in &node.macs {
                        macs.insert(mac_key(mac), key).map_err(s.db(OP))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(s.db(OP))?;
            s.meta_put(&mut meta, META_REVISION, &to)
        })
    }

    /// Wakes when the desired state changes (a snapshot or deltas committed): the value counts
    /// changes since the store was opened. Reconcilers wait on it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Every stored switch-port intent, sorted by (switch, port).
    pub fn ports(&self) -> Result<Vec<PortIntent>, StoreError> {
        const OP: &str = "read port intents";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(PORTS).map_err(self.db(OP))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db(OP))? {
            let (k, v) = item.map_err(self.db(OP))?;
            let (switch, port) = k.value();
            out.push(self.decode(v.value(), || format!("port intent {switch}/{port}"))?);
        }
        Ok(out)
    }

    /// Every stored run assignment, sorted by run id.
    pub fn runs(&self) -> Result<Vec<RunAssignment>, StoreError> {
        const OP: &str = "read run assignments";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(RUNS).map_err(self.db(OP))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db(OP))? {
            let (k, v) = item.map_err(self.db(OP))?;
            out.push(self.decode(v.value(), || format!("run assignment {}", k.value()))?);
        }
        Ok(out)
    }

    /// The last power generation acted on, per node.
    pub fn power_applied(&self) -> Result<BTreeMap<NodeId, Applied>, StoreError> {
        const OP: &str = "read applied power";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(POWER_APPLIED).map_err(self.db(OP))?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(self.db(OP))? {
            let (k, v) = item.map_err(self.db(OP))?;
            // The value repeats the node id: the key is its raw integer form.
            let (id, applied): (NodeId, Applied) = self.decode(v.value(), || {
                format!("applied power of node {:032x}", k.value())
            })?;
            out.insert(id, applied);
        }
        Ok(out)
    }

    /// The last port generation acted on, per (switch, port).
    pub fn ports_applied(&self) -> Result<BTreeMap<(String, String), Applied>, StoreError> {
        const OP: &str = "read applied ports";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(PORTS_APPLIED).map_err(self.db(OP))?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(self.db(OP))? {
            let (k, v) = item.map_err(self.db(OP))?;
            let (switch, port) = k.value();
            let applied = self.decode(v.value(), || format!("applied port {switch}/{port}"))?;
            out.insert((switch.to_owned(), port.to_owned()), applied);
        }
        Ok(out)
    }

    /// Records what was done with power intent `applied.generation` of `node` and queues
    /// `events` (its report), in one transaction. A record never moves backwards: an older
    /// generation than the stored one changes nothing and queues nothing. Returns the events'
    /// sequence numbers.
    pub fn record_power_applied(
        &self,
        node: NodeId,
        applied: Applied,
        events: Vec<EventKind>,
    ) -> Result<Vec<u64>, StoreError> {
        const OP: &str = "record applied power";
        self.write(OP, |txn, s| {
            let mut table = txn.open_table(POWER_APPLIED).map_err(s.db(OP))?;
            let key = node.0.as_u128();
            let stored: Option<(NodeId, Applied)> = table
                .get(key)
                .map_err(s.db(OP))?
                .map(|v| s.decode(v.value(), || format!("applied power of node {node}")))
                .transpose()?;
            if stored.is_some_and(|(_, a)| a.generation > applied.generation) {
                return Ok(Vec::new());
            }
            table
                .insert(key, s.encode("applied power", &(node, applied))?.as_slice())
                .map_err(s.db(OP))?;
            drop(table);
            s.enqueue_in(txn, events)
        })
    }

    /// Records what was done with the given port intent generations (one switch batch) and
    /// queues `events` (one report per port), in one transaction. Ports whose stored record is
    /// newer keep it. Returns the events' sequence numbers.
    pub fn record_ports_applied(
        &self,
        applied: &[(String, String, Applied)],
        events: Vec<EventKind>,
    ) -> Result<Vec<u64>, StoreError> {
        const OP: &str = "record applied ports";
        self.write(OP, |txn, s| {
            let mut table = txn.open_table(PORTS_APPLIED).map_err(s.db(OP))?;
            for (switch, port, a) in applied {
                let key = (switch.as_str(), port.as_str());
                let stored: Option<Applied> = table
                    .get(key)
                    .map_err(s.db(OP))?
                    .map(|v| s.decode(v.value(), || format!("applied port {switch}/{port}")))
                    .transpose()?;
                if stored.is_some_and(|old| old.generation > a.generation) {
                    continue;
                }
                table
                    .insert(key, s.encode("applied port", a)?.as_slice())
                    .map_err(s.db(OP))?;
            }
            drop(table);
            s.enqueue_in(txn, events)
        })
    }

    /// The stored desired-state revision; 0 before the first snapshot.
    pub fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.read_meta(META_REVISION)?.unwrap_or(0))
    }

    /// Every stored node, sorted by id.
    pub fn nodes(&self) -> Result<Vec<RackNode>, StoreError> {
        const OP: &str = "read nodes";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(NODES).map_err(self.db(OP))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db(OP))? {
            let (k, v) = item.map_err(self.db(OP))?;
            out.push(self.decode_node(v.value(), || format!("node {:032x}", k.value()))?);
        }
        Ok(out)
    }

    /// The stored node with this id, if any.
    pub fn node(&self, id: NodeId) -> Result<Option<RackNode>, StoreError> {
        const OP: &str = "read node";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let nodes = txn.open_table(NODES).map_err(self.db(OP))?;
        let Some(v) = nodes.get(id.0.as_u128()).map_err(self.db(OP))? else {
            return Ok(None);
        };
        self.decode_node(v.value(), || format!("node {id}"))
            .map(Some)
    }

    /// Number of stored nodes.
    pub fn node_count(&self) -> Result<u64, StoreError> {
        const OP: &str = "count nodes";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(NODES).map_err(self.db(OP))?;
        table.len().map_err(self.db(OP))
    }

    /// The node one of whose MACs is `mac`, if any. Should the desired state (wrongly) give
    /// two nodes the same MAC, the one with the lowest id is returned.
    pub fn node_by_mac(&self, mac: &Mac) -> Result<Option<RackNode>, StoreError> {
        const OP: &str = "look up MAC";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let index = txn.open_multimap_table(NODES_BY_MAC).map_err(self.db(OP))?;
        let Some(first) = index.get(mac_key(mac)).map_err(self.db(OP))?.next() else {
            return Ok(None);
        };
        let id = first.map_err(self.db(OP))?.value();
        let nodes = txn.open_table(NODES).map_err(self.db(OP))?;
        let Some(v) = nodes.get(id).map_err(self.db(OP))? else {
            return Ok(None);
        };
        self.decode_node(v.value(), || format!("node {id:032x}"))
            .map(Some)
    }

    /// Appends one event to the outbox; returns its sequence number.
    pub fn enqueue(&self, kind: EventKind) -> Result<u64, StoreError> {
        let seqs = self.enqueue_many(vec![kind])?;
        // enqueue_many returns exactly one seq per event.
        Ok(seqs.first().copied().unwrap_or_default())
    }

    /// Appends events to the outbox in one transaction, stamped with the current time; returns
    /// their sequence numbers (consecutive, continuing the outbox's sequence: 1, 2, 3, ...).
    pub fn enqueue_many(&self, kinds: Vec<EventKind>) -> Result<Vec<u64>, StoreError> {
        self.write("enqueue events", |txn, s| s.enqueue_in(txn, kinds))
    }

    /// Appends events to the outbox inside `txn`.
    fn enqueue_in(
        &self,
        txn: &WriteTransaction,
        kinds: Vec<EventKind>,
    ) -> Result<Vec<u64>, StoreError> {
        const OP: &str = "enqueue events";
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let at = crate::unix_millis();
        let mut meta = txn.open_table(META).map_err(self.db(OP))?;
        let mut next: u64 = self.meta_get(&meta, META_NEXT_SEQ)?.unwrap_or(1);
        let mut outbox = txn.open_table(OUTBOX).map_err(self.db(OP))?;
        let mut seqs = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let event = Event {
                seq: next,
                at,
                kind,
            };
            let bytes = self.encode("event", &event)?;
            if bytes.len() > MAX_EVENT_BYTES {
                return Err(StoreError::EventTooLarge {
                    bytes: bytes.len(),
                    max: MAX_EVENT_BYTES,
                });
            }
            outbox.insert(next, bytes.as_slice()).map_err(self.db(OP))?;
            seqs.push(next);
            next += 1;
        }
        self.meta_put(&mut meta, META_NEXT_SEQ, &next)?;
        Ok(seqs)
    }

    /// Up to `limit` unacknowledged events, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.pending_after(0, limit)
    }

    /// Up to `limit` unacknowledged events with a sequence number above `after`, in order.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        const OP: &str = "read outbox";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let table = txn.open_table(OUTBOX).map_err(self.db(OP))?;
        let mut out = Vec::new();
        let Some(start) = after.checked_add(1) else {
            return Ok(out);
        };
        for item in table.range(start..).map_err(self.db(OP))?.take(limit) {
            let (k, v) = item.map_err(self.db(OP))?;
            out.push(self.decode(v.value(), || format!("event {}", k.value()))?);
        }
        Ok(out)
    }

    /// The coordinators applied every event up to and including `upto`: deletes them.
    /// Returns how many were deleted. An acknowledgement at or below the previous one is a
    /// no-op.
    ///
    /// An acknowledgement beyond the last assigned sequence number means the coordinators
    /// have seen this rack's sequence numbers from an earlier incarnation of this store (wiped
    /// or replaced): they would drop new events with those numbers as duplicates, so the
    /// sequence jumps past `upto`.
    pub fn ack(&self, upto: u64) -> Result<u64, StoreError> {
        const OP: &str = "acknowledge events";
        self.write(OP, |txn, s| {
            let mut meta = txn.open_table(META).map_err(s.db(OP))?;
            let acked: u64 = s.meta_get(&meta, META_ACKED_SEQ)?.unwrap_or(0);
            if upto <= acked {
                return Ok(0);
            }
            let mut outbox = txn.open_table(OUTBOX).map_err(s.db(OP))?;
            let before = outbox.len().map_err(s.db(OP))?;
            outbox.retain_in(..=upto, |_, _| false).map_err(s.db(OP))?;
            let deleted = before - outbox.len().map_err(s.db(OP))?;
            s.meta_put(&mut meta, META_ACKED_SEQ, &upto)?;
            let next: u64 = s.meta_get(&meta, META_NEXT_SEQ)?.unwrap_or(1);
            if upto >= next {
                tracing::warn!(
                    acked = upto,
                    next_seq = next,
                    "coordinators acknowledged events this store never assigned (store wiped or \
                     replaced?); continuing the sequence after the acknowledged number"
                );
                s.meta_put(&mut meta, META_NEXT_SEQ, &(upto.saturating_add(1)))?;
            }
            Ok(deleted)
        })
    }

    /// Aligns the outbox with the coordinators' record of this rack, `last_seq` (the highest
    /// sequence number they applied, as enrollment reports it): with `drop_applied`, pending
    /// events at or below it are deleted as already applied (this store produced them);
    /// the remaining ones are renumbered `last_seq + 1, ...` in their order, so the sequence
    /// continues exactly where the coordinators expect it (they skip numbers they have seen
    /// and stop at a gap). Returns `(dropped, kept)`.
    pub fn rebase_outbox(
        &self,
        last_seq: u64,
        drop_applied: bool,
    ) -> Result<(u64, u64), StoreError> {
        const OP: &str = "rebase outbox";
        self.write(OP, |txn, s| {
            let mut outbox = txn.open_table(OUTBOX).map_err(s.db(OP))?;
            let before = outbox.len().map_err(s.db(OP))?;
            if drop_applied {
                outbox
                    .retain_in(..=last_seq, |_, _| false)
                    .map_err(s.db(OP))?;
            }
            let mut kept = Vec::new();
            for item in outbox.iter().map_err(s.db(OP))? {
                let (k, v) = item.map_err(s.db(OP))?;
                kept.push(s.decode::<Event>(v.value(), || format!("event {}", k.value()))?);
            }
            outbox.retain(|_, _| false).map_err(s.db(OP))?;
            let mut next = last_seq.saturating_add(1);
            for mut event in kept.iter().cloned() {
                event.seq = next;
                outbox
                    .insert(next, s.encode("event", &event)?.as_slice())
                    .map_err(s.db(OP))?;
                next = next.saturating_add(1);
            }
            let mut meta = txn.open_table(META).map_err(s.db(OP))?;
            s.meta_put(&mut meta, META_ACKED_SEQ, &last_seq)?;
            s.meta_put(&mut meta, META_NEXT_SEQ, &next)?;
            let kept = u64::try_from(kept.len()).unwrap_or(u64::MAX);
            Ok((before - kept, kept))
        })
    }

    /// Number of events waiting in the outbox.
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.outbox_counters()?.depth)
    }

    /// Depth, last acknowledged and next sequence number of the outbox, read consistently.
    pub fn outbox_counters(&self) -> Result<OutboxCounters, StoreError> {
        const OP: &str = "read outbox counters";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let outbox = txn.open_table(OUTBOX).map_err(self.db(OP))?;
        let meta = txn.open_table(META).map_err(self.db(OP))?;
        Ok(OutboxCounters {
            depth: outbox.len().map_err(self.db(OP))?,
            acked_seq: self.meta_get(&meta, META_ACKED_SEQ)?.unwrap_or(0),
            next_seq: self.meta_get(&meta, META_NEXT_SEQ)?.unwrap_or(1),
        })
    }

    /// The fleet endpoints learnt from enrollment and from the coordinators; empty if none.
    pub fn endpoints(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.read_meta(META_ENDPOINTS)?.unwrap_or_default())
    }

    /// Replaces the stored fleet endpoints.
    pub fn set_endpoints(&self, endpoints: &[String]) -> Result<(), StoreError> {
        self.write_meta("store endpoints", META_ENDPOINTS, &endpoints.to_vec())
    }

    /// What is known about the agent's certificate, if it was ever installed.
    pub fn cert_info(&self) -> Result<Option<CertInfo>, StoreError> {
        self.read_meta(META_CERT)
    }

    /// Records the certificate just installed.
    pub fn set_cert_info(&self, info: &CertInfo) -> Result<(), StoreError> {
        self.write_meta("store certificate info", META_CERT, info)
    }

    // ---- plumbing ----

    /// [`Store::write`] of a desired-state change; tells subscribers once it is committed.
    fn write_desired<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction, &Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = self.write(op, f)?;
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(out)
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction, &Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.inner.db.begin_write().map_err(self.db(op))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.db(op)(redb::Error::from(e)))?;
        // On error the transaction is dropped uncommitted, which aborts it.
        let out = f(&txn, self)?;
        txn.commit().map_err(self.db(op))?;
        Ok(out)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        const OP: &str = "read meta";
        let txn = self.inner.db.begin_read().map_err(self.db(OP))?;
        let meta = txn.open_table(META).map_err(self.db(OP))?;
        self.meta_get(&meta, key)
    }

    fn write_meta<T: Serialize>(
        &self,
        op: &'static str,
        key: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.write(op, |txn, s| {
            let mut meta = txn.open_table(META).map_err(s.db(op))?;
            s.meta_put(&mut meta, key, value)
        })
    }

    fn revision_in(&self, txn: &WriteTransaction) -> Result<Revision, StoreError> {
        let meta = txn.open_table(META).map_err(self.db("read revision"))?;
        Ok(self.meta_get(&meta, META_REVISION)?.unwrap_or(0))
    }

    fn meta_get<T: DeserializeOwned, R: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        table: &R,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match table.get(key).map_err(self.db("read meta"))? {
            Some(v) => self.decode(v.value(), || format!("meta {key}")).map(Some),
            None => Ok(None),
        }
    }

    fn meta_put<T: Serialize>(
        &self,
        table: &mut redb::Table<'_, &'static str, &'static [u8]>,
        key: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = self.encode(key, value)?;
        table
            .insert(key, bytes.as_slice())
            .map_err(self.db("write meta"))?;
        Ok(())
    }

    fn encode<T: Serialize>(&self, what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
        postcard::to_extend(value, vec![RECORD_FORMAT]).map_err(|source| StoreError::Encode {
            path: self.inner.path.clone(),
            what,
            source,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: impl Fn() -> String,
    ) -> Result<T, StoreError> {
        match bytes.split_first() {
            Some((&RECORD_FORMAT, rest)) => {
                postcard::from_bytes(rest).map_err(|source| StoreError::Decode {
                    path: self.inner.path.clone(),
                    what: what(),
                    source,
                })
            }
            other => Err(StoreError::Format {
                path: self.inner.path.clone(),
                what: what(),
                found: other.map(|(f, _)| *f),
            }),
        }
    }

    /// A node record, also one written before [`RackNode::power`] existed (schema 1): postcard
    /// records carry no field names, so such a record ends where `power` would start.
    fn decode_node(&self, bytes: &[u8], what: impl Fn() -> String) -> Result<RackNode, StoreError> {
        match self.decode::<RackNode>(bytes, &what) {
            Err(StoreError::Decode {
                source: postcard::Error::DeserializeUnexpectedEnd,
                ..
            }) => self
                .decode::<RackNodeV1>(bytes, &what)
                .map(RackNodeV1::into_current),
            other => other,
        }
    }

    fn db<E: Into<redb::Error>>(&self, op: &'static str) -> impl Fn(E) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: self.inner.path.clone(),
            op,
            source: Box::new(e.into()),
        }
    }
}

/// [`RackNode`] as schema 1 stored it (before power intents).
#[derive(Serialize, Deserialize)]
struct RackNodeV1 {
    id: NodeId,
    serial: protocol::Serial,
    macs: Vec<Mac>,
    boot_target: protocol::domain::BootTarget,
    static_ips: Vec<protocol::domain::StaticIp>,
    switch_ports: Vec<protocol::domain::ExpectedNic>,
    bmc: Option<protocol::fleet::BmcAccess>,
    revision: Revision,
}

impl RackNodeV1 {
    fn into_current(self) -> RackNode {
        RackNode {
            id: self.id,
            serial: self.serial,
            macs: self.macs,
            boot_target: self.boot_target,
            static_ips: self.static_ips,
            switch_ports: self.switch_ports,
            bmc: self.bmc,
            revision: self.revision,
            power: None,
        }
    }
}

fn mac_key(mac: &Mac) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac.0);
    u64::from_be_bytes(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use protocol::domain::BootTarget;
    use protocol::json::JsonValue;

    use super::*;

    fn node(n: u8, revision: Revision) -> RackNode {
        RackNode {
            id: format!("00000000-0000-0000-0000-0000000000{n:02x}")
                .parse()
                .unwrap(),
            serial: format!("SN-{n}").parse().unwrap(),
            macs: vec![Mac([0x52, 0x54, 0, 0, 0, n]), Mac([0x52, 0x54, 0, 1, 0, n])],
            boot_target: BootTarget::Discovery,
            static_ips: vec![],
            switch_ports: vec![],
            bmc: None,
            revision,
            power: None,
        }
    }

    fn checkin(i: u32) -> EventKind {
        EventKind::CheckIn {
            serial: format!("SN-{i}").parse().unwrap(),
            macs: vec![],
            facts: JsonValue::default(),
        }
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("agent.redb")).unwrap()
    }

    #[test]
    fn snapshot_then_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.revision().unwrap(), 0);
        assert!(store.nodes().unwrap().is_empty());

        store
            .apply_snapshot(&RackDesiredState {
                revision: 10,
                nodes: vec![node(1, 5), node(2, 10)],
                ports: Vec::new(),
                runs: Vec::new(),
            })
            .unwrap();
        assert_eq!(store.revision().unwrap(), 10);
        assert_eq!(store.nodes().unwrap(), [node(1, 5), node(2, 10)]);
        let mac2 = Mac([0x52, 0x54, 0, 1, 0, 2]);
        assert_eq!(store.node_by_mac(&mac2).unwrap(), Some(node(2, 10)));

        // Node 1 changes its boot target and loses a MAC; node 2 leaves; node 3 arrives.
        let mut changed = node(1, 11);
        changed.boot_target = BootTarget::Local;
        changed.macs.truncate(1);
        store
            .apply_deltas(
                10,
                12,
                &[
                    Delta::UpsertNode(changed.clone()),
                    Delta::RemoveNode(node(2, 0).id),
                    Delta::UpsertNode(node(3, 12)),
                ],
            )
            .unwrap();
        assert_eq!(store.revision().unwrap(), 12);
        assert_eq!(store.nodes().unwrap(), [changed.clone(), node(3, 12)]);
        assert_eq!(store.node_count().unwrap(), 2);
        assert_eq!(
            store.node_by_mac(&Mac([0x52, 0x54, 0, 0, 0, 1])).unwrap(),
            Some(changed)
        );
        // The dropped MAC and the removed node's MACs no longer resolve.
        assert_eq!(
            store.node_by_mac(&Mac([0x52, 0x54, 0, 1, 0, 1])).unwrap(),
            None
        );
        assert_eq!(store.node_by_mac(&mac2).unwrap(), None);

        // A new snapshot replaces everything, index included.
        store
            .apply_snapshot(&RackDesiredState {
                revision: 20,
                nodes: vec![node(4, 20)],
                ports: Vec::new(),
                runs: Vec::new(),
            })
            .unwrap();
        assert_eq!(store.nodes().unwrap(), [node(4, 20)]);
        assert_eq!(
            store.node_by_mac(&Mac([0x52, 0x54, 0, 0, 0, 3])).unwrap(),
            None
        );
        assert_eq!(
            store.node_by_mac(&Mac([0x52, 0x54, 0, 0, 0, 4])).unwrap(),
            Some(node(4, 20))
        );
    }

    #[test]
    fn deltas_with_wrong_from_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .apply_snapshot(&RackDesiredState {
                revision: 7,
                nodes: vec![node(1, 7)],
                ports: Vec::new(),
                runs: Vec::new(),
            })
            .unwrap();
        for from in [6, 8] {
            let err = store
                .apply_deltas(from, 9, &[Delta::UpsertNode(node(2, 9))])
                .unwrap_err();
            assert!(
                matches!(err, StoreError::RevisionMismatch { stored: 7, from: f } if f == from),
                "{err}"
            );
        }
        assert!(matches!(
            store.apply_deltas(7, 6, &[]),
            Err(StoreError::DeltaRange { from: 7, to: 6 })
        ));
        assert_eq!(store.revision().unwrap(), 7);
        assert_eq!(store.nodes().unwrap(), [node(1, 7)]);

        // An older snapshot is refused too; an equal one is applied again.
        assert!(matches!(
            store.apply_snapshot(&RackDesiredState {
                revision: 6,
                nodes: vec![],
                ports: Vec::new(),
                runs: Vec::new(),
            }),
            Err(StoreError::StaleSnapshot {
                snapshot: 6,
                stored: 7
            })
        ));
        store
            .apply_snapshot(&RackDesiredState {
                revision: 7,
                nodes: vec![node(1, 7)],
                ports: Vec::new(),
                runs: Vec::new(),
            })
            .unwrap();
        assert_eq!(store.nodes().unwrap(), [node(1, 7)]);
    }

    #[test]
    fn restart_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            store
                .apply_snapshot(&RackDesiredState {
                    revision: 3,
                    nodes: vec![node(1, 3)],
                    ports: Vec::new(),
                    runs: Vec::new(),
                })
                .unwrap();
            store
                .apply_deltas(3, 4, &[Delta::UpsertNode(node(2, 4))])
                .unwrap();
            store
                .set_endpoints(&["10.0.0.1:7445".to_owned(), "10.0.0.2:7445".to_owned()])
                .unwrap();
            store
                .set_cert_info(&CertInfo {
                    installed_at: 100,
                    not_before: 90,
                    not_after: 1000,
                })
                .unwrap();
            assert_eq!(
                store.enqueue_many(vec![checkin(1), checkin(2)]).unwrap(),
                [1, 2]
            );
            store.ack(1).unwrap();
        }
        let store = open(&dir);
        assert_eq!(store.revision().unwrap(), 4);
        assert_eq!(store.nodes().unwrap(), [node(1, 3), node(2, 4)]);
        assert_eq!(
            store.node_by_mac(&Mac([0x52, 0x54, 0, 0, 0, 2])).unwrap(),
            Some(node(2, 4))
        );
        assert_eq!(
            store.endpoints().unwrap(),
            ["10.0.0.1:7445", "10.0.0.2:7445"]
        );
        assert_eq!(store.cert_info().unwrap().unwrap().not_after, 1000);
        assert_eq!(
            store.outbox_counters().unwrap(),
            OutboxCounters {
                depth: 1,
                acked_seq: 1,
                next_seq: 3
            }
        );
        let pending = store.pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, 2);
        assert_eq!(pending[0].kind, checkin(2));
    }

    #[test]
    fn seq_continues_after_reopen_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            assert_eq!(store.enqueue(checkin(1)).unwrap(), 1);
            assert_eq!(store.enqueue(checkin(2)).unwrap(), 2);
            // Acknowledging everything must not restart the sequence.
            assert_eq!(store.ack(2).unwrap(), 2);
            assert_eq!(store.outbox_depth().unwrap(), 0);
        }
        let store = open(&dir);
        assert_eq!(store.enqueue(checkin(3)).unwrap(), 3);
        assert_eq!(
            store
                .enqueue_many(vec![checkin(4), checkin(5), checkin(6)])
                .unwrap(),
            [4, 5, 6]
        );
        let seqs: Vec<u64> = store.pending(100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5, 6]);
        let seqs: Vec<u64> = store
            .pending_after(4, 1)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [5]);
        assert!(store.pending_after(u64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn ack_deletes_only_up_to_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.enqueue_many((1..=10).map(checkin).collect()).unwrap();
        assert_eq!(store.ack(4).unwrap(), 4);
        let seqs: Vec<u64> = store.pending(100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
        // Old or repeated acknowledgements change nothing.
        assert_eq!(store.ack(4).unwrap(), 0);
        assert_eq!(store.ack(2).unwrap(), 0);
        assert_eq!(store.outbox_depth().unwrap(), 6);
        assert_eq!(store.ack(10).unwrap(), 6);
        assert_eq!(
            store.outbox_counters().unwrap(),
            OutboxCounters {
                depth: 0,
                acked_seq: 10,
                next_seq: 11
            }
        );
    }

    #[test]
    fn ack_beyond_assigned_moves_the_sequence_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.enqueue(checkin(1)).unwrap();
        assert_eq!(store.ack(50).unwrap(), 1);
        assert_eq!(store.enqueue(checkin(2)).unwrap(), 51);
    }

    #[test]
    fn rebase_continues_after_the_coordinators_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // A fresh store queued events offline before enrolling a rack with history.
        store.enqueue_many((1..=3).map(checkin).collect()).unwrap();
        assert_eq!(store.rebase_outbox(500, false).unwrap(), (0, 3));
        let pending = store.pending(10).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [501, 502, 503]
        );
        assert_eq!(pending[0].kind, checkin(1));
        assert_eq!(store.enqueue(checkin(4)).unwrap(), 504);
        assert_eq!(store.outbox_counters().unwrap().acked_seq, 500);

        // Re-enrolling the same store: what the coordinators applied is dropped, the rest
        // follows their last seq even if they know less than we thought.
        assert_eq!(store.rebase_outbox(502, true).unwrap(), (2, 2));
        let seqs: Vec<u64> = store.pending(10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [503, 504]);
        assert_eq!(store.rebase_outbox(10, true).unwrap(), (0, 2));
        let pending = store.pending(10).unwrap();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(pending[1].kind, checkin(4));
        assert_eq!(store.enqueue(checkin(5)).unwrap(), 13);
    }

    #[test]
    fn rollback_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let newer = RackDesiredState {
            revision: 9,
            nodes: vec![node(1, 9)],
            ports: Vec::new(),
            runs: Vec::new(),
        };
        let older = RackDesiredState {
            revision: 3,
            nodes: vec![node(2, 3)],
            ports: Vec::new(),
            runs: Vec::new(),
        };
        store.apply_snapshot(&newer).unwrap();
        assert!(store.apply_snapshot(&older).is_err());
        store.apply_snapshot_allowing_rollback(&older).unwrap();
        assert_eq!(store.revision().unwrap(), 3);
        assert_eq!(store.nodes().unwrap(), [node(2, 3)]);
    }

    fn port(port: &str, vlan: u16, generation: u64) -> PortIntent {
        PortIntent {
            switch: "tor1".into(),
            port: port.into(),
            config: protocol::fleet::PortConfig::Access { vlan },
            generation,
        }
    }

    fn applied(generation: u64, ok: bool) -> Applied {
        Applied {
            generation,
            ok,
            at: 1,
        }
    }

    #[test]
    fn port_intents_and_applied_generations_persist() {
        let dir = tempfile::tempdir().unwrap();
        let changes;
        {
            let store = open(&dir);
            let mut rx = store.subscribe();
            store
                .apply_snapshot(&RackDesiredState {
                    revision: 1,
                    nodes: vec![node(1, 1)],
                    ports: vec![port("e1", 10, 1), port("e2", 10, 1)],
                    runs: Vec::new(),
                })
                .unwrap();
            store
                .apply_deltas(
                    1,
                    2,
                    &[
                        Delta::UpsertPort(port("e2", 20, 2)),
                        Delta::UpsertPort(port("e3", 30, 2)),
                        Delta::RemovePort {
                            switch: "tor1".into(),
                            port: "e1".into(),
                        },
                    ],
                )
                .unwrap();
            // Subscribers see both changes; a refused delta is not a change.
            assert!(store.apply_deltas(7, 8, &[]).is_err());
            assert!(rx.has_changed().unwrap());
            changes = *rx.borrow_and_update();
            assert_eq!(changes, 2);

            let seqs = store
                .record_ports_applied(
                    &[
                        ("tor1".into(), "e2".into(), applied(2, true)),
                        ("tor1".into(), "e3".into(), applied(2, false)),
                    ],
                    vec![checkin(1), checkin(2)],
                )
                .unwrap();
            assert_eq!(seqs, [1, 2]);
            // An older generation never overwrites a newer record.
            store
                .record_ports_applied(&[("tor1".into(), "e2".into(), applied(1, false))], vec![])
                .unwrap();
            let id = node(1, 1).id;
            store
                .record_power_applied(id, applied(5, true), vec![checkin(3)])
                .unwrap();
            // Older power generation: no record change, no events.
            assert!(store
                .record_power_applied(id, applied(4, false), vec![checkin(4)])
                .unwrap()
                .is_empty());
        }
        let store = open(&dir);
        assert_eq!(
            store.ports().unwrap(),
            [port("e2", 20, 2), port("e3", 30, 2)]
        );
        let ports = store.ports_applied().unwrap();
        assert_eq!(
            ports[&("tor1".to_owned(), "e2".to_owned())],
            applied(2, true)
        );
        assert_eq!(
            ports[&("tor1".to_owned(), "e3".to_owned())],
            applied(2, false)
        );
        assert_eq!(ports.len(), 2);
        assert_eq!(
            store.power_applied().unwrap()[&node(1, 1).id],
            applied(5, true)
        );
        assert_eq!(store.outbox_depth().unwrap(), 3);

        // Removing a port forgets its applied record too; a snapshot keeps the records of
        // what it still holds and forgets the others (node 1's power record goes with it).
        store
            .apply_deltas(
                2,
                3,
                &[Delta::RemovePort {
                    switch: "tor1".into(),
                    port: "e3".into(),
                }],
            )
            .unwrap();
        assert_eq!(store.ports_applied().unwrap().len(), 1);
        store
            .record_ports_applied(&[("tor1".into(), "e9".into(), applied(1, true))], vec![])
            .unwrap();
        store
            .apply_snapshot(&RackDesiredState {
                revision: 4,
                nodes: vec![],
                ports: vec![port("e2", 20, 2)],
                runs: Vec::new(),
            })
            .unwrap();
        assert_eq!(store.ports().unwrap(), [port("e2", 20, 2)]);
        let ports = store.ports_applied().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            ports[&("tor1".to_owned(), "e2".to_owned())],
            applied(2, true)
        );
        assert!(store.power_applied().unwrap().is_empty());
    }

    #[test]
    fn nodes_stored_before_power_intents_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let n = node(1, 3);
        let old = RackNodeV1 {
            id: n.id,
            serial: n.serial.clone(),
            macs: n.macs.clone(),
            boot_target: n.boot_target.clone(),
            static_ips: vec![],
            switch_ports: vec![],
            bmc: Some(protocol::fleet::BmcAccess {
                address: "10.0.0.5".into(),
                driver: protocol::domain::BmcDriver::Ipmi,
                username: None,
                password: None,
            }),
            revision: 3,
        };
        store
            .write("forge", |txn, s| {
                let mut nodes = txn.open_table(NODES).map_err(s.db("forge"))?;
                let mut macs = txn
                    .open_multimap_table(NODES_BY_MAC)
                    .map_err(s.db("forge"))?;
                nodes
                    .insert(n.id.0.as_u128(), s.encode("node", &old)?.as_slice())
                    .map_err(s.db("forge"))?;
                macs.insert(mac_key(&n.macs[0]), n.id.0.as_u128())
                    .map_err(s.db("forge"))?;
                Ok(())
            })
            .unwrap();
        let read = store.nodes().unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].power, None);
        assert_eq!(read[0].bmc.as_ref().unwrap().address, "10.0.0.5");
        assert_eq!(store.node_by_mac(&n.macs[0]).unwrap().unwrap().id, n.id);
        // A delta replacing it decodes the old record to drop its index entries.
        store
            .apply_deltas(0, 1, &[Delta::UpsertNode(node(1, 1))])
            .unwrap();
        assert_eq!(store.nodes().unwrap(), [node(1, 1)]);
    }

    #[test]
    fn an_older_schema_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            store.write_meta("forge", META_SCHEMA, &2u32).unwrap();
            // A schema 2 file has no runs table.
            store
                .write("forge", |txn, s| {
                    txn.delete_table(RUNS).map_err(s.db("forge"))?;
                    Ok(())
                })
                .unwrap();
        }
        let store = open(&dir);
        assert_eq!(
            store.read_meta::<u32>(META_SCHEMA).unwrap(),
            Some(SCHEMA_VERSION)
        );
        assert!(store.ports().unwrap().is_empty());
        assert!(store.runs().unwrap().is_empty());
    }

    fn run(id: &str, control: protocol::fleet::RunControl, revision: Revision) -> RunAssignment {
        RunAssignment {
            run_id: id.into(),
            node: node(1, 1).id,
            plan: protocol::workflow::RunPlan {
                template: "t".into(),
                version: 1,
                params: BTreeMap::new(),
                steps: Vec::new(),
            },
            control,
            revision,
        }
    }

    #[test]
    fn run_assignments_follow_snapshots_and_deltas() {
        use protocol::fleet::RunControl;
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            let mut rx = store.subscribe();
            store
                .apply_snapshot(&RackDesiredState {
                    revision: 5,
                    nodes: vec![node(1, 1)],
                    ports: Vec::new(),
                    runs: vec![run("a", RunControl::Run, 4), run("b", RunControl::Run, 5)],
                })
                .unwrap();
            store
                .apply_deltas(
                    5,
                    7,
                    &[
                        Delta::UpsertRun(run("b", RunControl::Pause, 6)),
                        Delta::UpsertRun(run("c", RunControl::Run, 7)),
                        Delta::RemoveRun("a".into()),
                        // Removing what is not there is a no-op.
                        Delta::RemoveRun("zzz".into()),
                    ],
                )
                .unwrap();
            assert_eq!(*rx.borrow_and_update(), 2);
        }
        let store = open(&dir);
        assert_eq!(
            store.runs().unwrap(),
            [run("b", RunControl::Pause, 6), run("c", RunControl::Run, 7)]
        );
        // A snapshot replaces the runs as a whole.
        store
            .apply_snapshot(&RackDesiredState {
                revision: 8,
                nodes: vec![node(1, 1)],
                ports: Vec::new(),
                runs: vec![run("d", RunControl::Cancel, 8)],
            })
            .unwrap();
        assert_eq!(store.runs().unwrap(), [run("d", RunControl::Cancel, 8)]);
        assert_eq!(store.node(node(1, 1).id).unwrap(), Some(node(1, 1)));
        assert_eq!(store.node(node(2, 1).id).unwrap(), None);
    }

    #[test]
    fn second_open_is_refused_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open(&dir);
        let err = Store::open(&dir.path().join("agent.redb")).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("is the agent running"), "{err}");
    }

    #[test]
    fn newer_record_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .write("forge", |txn, s| {
                let mut meta = txn.open_table(META).map_err(s.db("forge"))?;
                meta.insert(META_REVISION, [2u8, 5].as_slice())
                    .map_err(s.db("forge"))?;
                Ok(())
            })
            .unwrap();
        let err = store.revision().unwrap_err();
        assert!(
            matches!(&err, StoreError::Format { found: Some(2), .. }),
            "{err}"
        );
    }
}
