//! The executor's own redb file (`<data_dir>/runs.redb`): runs (plan, status and the per-step
//! journal of what is in flight), bounded per-step logs, node facts and the executor-owned
//! per-node overrides (boot target, pinned address).
//!
//! Every write is one transaction committed with [`Durability::Immediate`]: a state the
//! executor acted on (a step marked Running, a node action id recorded before it is queued)
//! is on disk before the action happens. Writes are small and few per step, so they run
//! inline on the calling task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use protocol::domain::BootTarget;
use protocol::workflow::{RunPlan, RunStatus};
use protocol::{NodeId, Versioned};

use super::ExecutorError;

const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
const LOGS: TableDefinition<(&str, u32, u64), &str> = TableDefinition::new("step_logs");
const LOG_BOUNDS: TableDefinition<(&str, u32), (u64, u64)> = TableDefinition::new("log_bounds");
const FACTS: TableDefinition<&str, &str> = TableDefinition::new("facts");
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("overrides");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Schema version of [`RunRecord`] in the file.
pub const RUN_RECORD_VERSION: u16 = 1;
/// Schema version of [`NodeOverrides`] in the file.
pub const OVERRIDES_VERSION: u16 = 1;

/// What an operator asked of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Execute.
    Run,
    /// Stop before the next attempt; resume at the current step.
    Pause,
    /// Stop now.
    Cancel,
}

/// What the executor knows about the step in flight, beyond [`protocol::workflow::StepStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepJournal {
    /// When the current attempt started (its timeout counts from here, across restarts).
    pub attempt_started_at: Option<i64>,
    /// Attempts within the current entry of the step (the retry budget; a `goto` re-entry
    /// starts a new entry).
    pub entry_attempts: u32,
    /// The node action in flight, recorded before it is queued.
    pub action: Option<String>,
    /// Phase of a multi-phase step (`os.install`: `rebooting`, `waiting`), recorded before the
    /// phase's effect.
    pub phase: Option<String>,
    /// When the phase started.
    pub phase_at: Option<i64>,
    /// The last attempt failed and the next one starts at this time: no attempt is in flight.
    pub backoff_until: Option<i64>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// The node it runs on.
    pub node: NodeId,
    /// Submission order (runs of one node execute in this order).
    pub seq: u64,
    /// The plan.
    pub plan: RunPlan,
    /// The reported status.
    pub status: RunStatus,
    /// The operator's last request.
    pub control: Control,
    /// One entry per plan step.
    pub journal: Vec<StepJournal>,
    /// Steps entered so far (bounds `goto` loops).
    pub entries: u32,
}

/// An address pinned by `dhcp.reserve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpPin {
    /// The MAC the reservation is for.
    pub mac: protocol::Mac,
    /// The address.
    pub address: std::net::IpAddr,
}

/// Executor-owned per-node state the boot services consult.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOverrides {
    /// What the node network-boots next (`boot.set`, `os.install`).
    pub boot: Option<BootTarget>,
    /// Its pinned address (`dhcp.reserve`).
    pub dhcp: Option<DhcpPin>,
}

/// The executor's database. Cloning shares it.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn db_err<E: Into<redb::Error>>(path: &Path, op: &'static str) -> impl FnOnce(E) -> ExecutorError {
    let path = path.to_owned();
    move |e| ExecutorError::Db {
        path,
        op,
        source: Box::new(e.into()),
    }
}

impl Journal {
    /// Opens (or creates) the file.
    pub fn open(path: &Path) -> Result<Journal, ExecutorError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ExecutorError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => ExecutorError::Locked {
                path: path.to_owned(),
            },
            other => ExecutorError::Db {
                path: path.to_owned(),
                op: "open",
                source: Box::new(other.into()),
            },
        })?;
        let j = Journal {
            db: Arc::new(db),
            path: path.to_owned(),
        };
        j.write("create tables", |txn, p| {
            txn.open_table(RUNS).map_err(db_err(p, "create tables"))?;
            txn.open_table(LOGS).map_err(db_err(p, "create tables"))?;
            txn.open_table(LOG_BOUNDS)
                .map_err(db_err(p, "create tables"))?;
            txn.open_table(FACTS).map_err(db_err(p, "create tables"))?;
            txn.open_table(OVERRIDES)
                .map_err(db_err(p, "create tables"))?;
            txn.open_table(META).map_err(db_err(p, "create tables"))?;
            Ok(())
        })?;
        Ok(j)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::WriteTransaction, &Path) -> Result<T, ExecutorError>,
    ) -> Result<T, ExecutorError> {
        let mut txn = self.db.begin_write().map_err(db_err(&self.path, op))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| db_err(&self.path, op)(redb::Error::from(e)))?;
        let out = f(&txn, &self.path)?;
        txn.commit().map_err(db_err(&self.path, op))?;
        Ok(out)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: String,
        want: u16,
        bytes: &[u8],
    ) -> Result<T, ExecutorError> {
        let v: Versioned<T> =
            postcard::from_bytes(bytes).map_err(|source| ExecutorError::Decode {
                path: self.path.clone(),
                what: what.clone(),
                source,
            })?;
        if v.v != want {
            return Err(ExecutorError::Format {
                path: self.path.clone(),
                what,
                found: v.v,
                want,
            });
        }
        Ok(v.body)
    }

    fn encode<T: Serialize>(&self, what: &str, v: u16, body: &T) -> Result<Vec<u8>, ExecutorError> {
        postcard::to_stdvec(&Versioned { v, body }).map_err(|source| ExecutorError::Encode {
            path: self.path.clone(),
            what: what.to_owned(),
            source,
        })
    }

    /// Stores a new run with the next sequence number; returns it as stored. If `run_id` is
    /// already stored, returns the stored run instead (submission is idempotent).
    pub fn insert_run(&self, mut rec: RunRecord) -> Result<(RunRecord, bool), ExecutorError> {
        const OP: &str = "insert run";
        let existing = self.run(&rec.run_id)?;
        if let Some(r) = existing {
            return Ok((r, false));
        }
        self.write(OP, |txn, p| {
            let mut meta = txn.open_table(META).map_err(db_err(p, OP))?;
            let seq = meta
                .get("next_seq")
                .map_err(db_err(p, OP))?
                .map(|g| g.value())
                .unwrap_or(1);
            meta.insert("next_seq", seq + 1).map_err(db_err(p, OP))?;
            rec.seq = seq;
            let bytes = self.encode(&format!("run {}", rec.run_id), RUN_RECORD_VERSION, &rec)?;
            let mut runs = txn.open_table(RUNS).map_err(db_err(p, OP))?;
            runs.insert(rec.run_id.as_str(), bytes.as_slice())
                .map_err(db_err(p, OP))?;
            Ok(())
        })?;
        Ok((rec, true))
    }

    /// Replaces a stored run.
    pub fn put_run(&self, rec: &RunRecord) -> Result<(), ExecutorError> {
        const OP: &str = "write run";
        let bytes = self.encode(&format!("run {}", rec.run_id), RUN_RECORD_VERSION, rec)?;
        self.write(OP, |txn, p| {
            let mut runs = txn.open_table(RUNS).map_err(db_err(p, OP))?;
            runs.insert(rec.run_id.as_str(), bytes.as_slice())
                .map_err(db_err(p, OP))?;
            Ok(())
        })
    }

    /// Changes a stored run in one transaction (read, `f`, write), so concurrent writers
    /// (the run's task, progress from log lines) never undo each other; returns it as
    /// stored, or `None` when there is no such run.
    pub fn update_run(
        &self,
        run_id: &str,
        f: impl FnOnce(&mut RunRecord),
    ) -> Result<Option<RunRecord>, ExecutorError> {
        const OP: &str = "update run";
        self.write(OP, |txn, p| {
            let mut runs = txn.open_table(RUNS).map_err(db_err(p, OP))?;
            let Some(g) = runs.get(run_id).map_err(db_err(p, OP))? else {
                return Ok(None);
            };
            let mut rec: RunRecord =
                self.decode(format!("run {run_id}"), RUN_RECORD_VERSION, g.value())?;
            drop(g);
            f(&mut rec);
            let bytes = self.encode(&format!("run {run_id}"), RUN_RECORD_VERSION, &rec)?;
            runs.insert(run_id, bytes.as_slice())
                .map_err(db_err(p, OP))?;
            Ok(Some(rec))
        })
    }

    /// A stored run.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, ExecutorError> {
        const OP: &str = "read run";
        let txn = self.db.begin_read().map_err(db_err(&self.path, OP))?;
        let runs = txn.open_table(RUNS).map_err(db_err(&self.path, OP))?;
        let Some(g) = runs.get(run_id).map_err(db_err(&self.path, OP))? else {
            return Ok(None);
        };
        self.decode(format!("run {run_id}"), RUN_RECORD_VERSION, g.value())
            .map(Some)
    }

    /// Every stored run, in submission order.
    pub fn runs(&self) -> Result<Vec<RunRecord>, ExecutorError> {
        const OP: &str = "list runs";
        let txn = self.db.begin_read().map_err(db_err(&self.path, OP))?;
        let runs = txn.open_table(RUNS).map_err(db_err(&self.path, OP))?;
        let mut out = Vec::new();
        for item in runs.iter().map_err(db_err(&self.path, OP))? {
            let (k, v) = item.map_err(db_err(&self.path, OP))?;
            let rec: RunRecord =
                self.decode(format!("run {}", k.value()), RUN_RECORD_VERSION, v.value())?;
            out.push(rec);
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// Deletes a run with the logs of its `steps` steps in one transaction; returns whether
    /// it was stored.
    pub fn remove_run(&self, run_id: &str, steps: u32) -> Result<bool, ExecutorError> {
        const OP: &str = "remove run";
        self.write(OP, |txn, p| {
            let mut runs = txn.open_table(RUNS).map_err(db_err(p, OP))?;
            let existed = runs.remove(run_id).map_err(db_err(p, OP))?.is_some();
            let mut bounds = txn.open_table(LOG_BOUNDS).map_err(db_err(p, OP))?;
            let mut logs = txn.open_table(LOGS).map_err(db_err(p, OP))?;
            for step in 0..steps {
                bounds.remove((run_id, step)).map_err(db_err(p, OP))?;
                logs.retain_in((run_id, step, 0)..=(run_id, step, u64::MAX), |_, _| false)
                    .map_err(db_err(p, OP))?;
            }
            Ok(existed)
        })
    }

    /// Appends lines to a step's log, keeping at most `max_lines` (oldest dropped).
    pub fn append_logs(
        &self,
        run_id: &str,
        step: u32,
        lines: &[String],
        max_lines: u64,
    ) -> Result<(), ExecutorError> {
        const OP: &str = "append logs";
        if lines.is_empty() {
            return Ok(());
        }
        self.write(OP, |txn, p| {
            let mut bounds = txn.open_table(LOG_BOUNDS).map_err(db_err(p, OP))?;
            let mut logs = txn.open_table(LOGS).map_err(db_err(p, OP))?;
            let (mut first, mut next) = bounds
                .get((run_id, step))
                .map_err(db_err(p, OP))?
                .map(|g| g.value())
                .unwrap_or((0, 0));
            for line in lines {
                logs.insert((run_id, step, next), line.as_str())
                    .map_err(db_err(p, OP))?;
                next += 1;
            }
            while next - first > max_lines.max(1) {
                logs.remove((run_id, step, first)).map_err(db_err(p, OP))?;
                first += 1;
            }
            bounds
                .insert((run_id, step), (first, next))
                .map_err(db_err(p, OP))?;
            Ok(())
        })
    }

    /// A step's kept log lines, oldest first, and how many older lines were dropped.
    pub fn logs(&self, run_id: &str, step: u32) -> Result<(Vec<String>, u64), ExecutorError> {
        const OP: &str = "read logs";
        let txn = self.db.begin_read().map_err(db_err(&self.path, OP))?;
        let bounds = txn.open_table(LOG_BOUNDS).map_err(db_err(&self.path, OP))?;
        let logs = txn.open_table(LOGS).map_err(db_err(&self.path, OP))?;
        let (first, next) = bounds
            .get((run_id, step))
            .map_err(db_err(&self.path, OP))?
            .map(|g| g.value())
            .unwrap_or((0, 0));
        let mut out = Vec::new();
        for item in logs
            .range((run_id, step, first)..(run_id, step, next))
            .map_err(db_err(&self.path, OP))?
        {
            let (_, v) = item.map_err(db_err(&self.path, OP))?;
            out.push(v.value().to_owned());
        }
        Ok((out, first))
    }

    /// A node's facts (an empty object when none were recorded).
    pub fn facts(&self, node: NodeId) -> Result<serde_json::Value, ExecutorError> {
        const OP: &str = "read facts";
        let txn = self.db.begin_read().map_err(db_err(&self.path, OP))?;
        let facts = txn.open_table(FACTS).map_err(db_err(&self.path, OP))?;
        match facts
            .get(node.to_string().as_str())
            .map_err(db_err(&self.path, OP))?
        {
            Some(g) => serde_json::from_str(g.value()).map_err(|e| ExecutorError::Facts {
                node,
                message: e.to_string(),
            }),
            None => Ok(serde_json::Value::Object(Default::default())),
        }
    }

    /// Changes a node's facts in one transaction (read, `f`, write), so the observation task
    /// and the steps never undo each other's changes; returns them as stored.
    pub fn update_facts(
        &self,
        node: NodeId,
        f: impl FnOnce(&mut serde_json::Value),
    ) -> Result<serde_json::Value, ExecutorError> {
        const OP: &str = "write facts";
        let key = node.to_string();
        self.write(OP, |txn, p| {
            let mut t = txn.open_table(FACTS).map_err(db_err(p, OP))?;
            let stored = t
                .get(key.as_str())
                .map_err(db_err(p, OP))?
                .map(|g| g.value().to_owned());
            let mut facts = match stored {
                Some(text) => serde_json::from_str(&text).map_err(|e| ExecutorError::Facts {
                    node,
                    message: e.to_string(),
                })?,
                None => serde_json::Value::Null,
            };
            if !facts.is_object() {
                facts = serde_json::Value::Object(Default::default());
            }
            f(&mut facts);
            let text = facts.to_string();
            t.insert(key.as_str(), text.as_str())
                .map_err(db_err(p, OP))?;
            Ok(facts)
        })
    }

    /// Every node's overrides.
    pub fn overrides(&self) -> Result<BTreeMap<NodeId, NodeOverrides>, ExecutorError> {
        const OP: &str = "read overrides";
        let txn = self.db.begin_read().map_err(db_err(&self.path, OP))?;
        let t = txn.open_table(OVERRIDES).map_err(db_err(&self.path, OP))?;
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(db_err(&self.path, OP))? {
            let (k, v) = item.map_err(db_err(&self.path, OP))?;
            let node: NodeId =
                k.value()
                    .parse()
                    .map_err(|e: protocol::IdError| ExecutorError::Corrupt {
                        path: self.path.clone(),
                        what: "overrides key".into(),
                        message: e.to_string(),
                    })?;
            let o: NodeOverrides =
                self.decode(format!("overrides of {node}"), OVERRIDES_VERSION, v.value())?;
            out.insert(node, o);
        }
        Ok(out)
    }

    /// Stores a node's overrides.
    pub fn put_overrides(&self, node: NodeId, o: &NodeOverrides) -> Result<(), ExecutorError> {
        const OP: &str = "write overrides";
        let bytes = self.encode(&format!("overrides of {node}"), OVERRIDES_VERSION, o)?;
        self.write(OP, |txn, p| {
            let mut t = txn.open_table(OVERRIDES).map_err(db_err(p, OP))?;
            t.insert(node.to_string().as_str(), bytes.as_slice())
                .map_err(db_err(p, OP))?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("runs.redb")).unwrap();
        let lines: Vec<String> = (0..7).map(|i| format!("line {i}")).collect();
        j.append_logs("r1", 0, &lines[..3], 5).unwrap();
        j.append_logs("r1", 0, &lines[3..], 5).unwrap();
        j.append_logs("r1", 1, &lines[..1], 5).unwrap();
        let (kept, dropped) = j.logs("r1", 0).unwrap();
        assert_eq!(kept, lines[2..].to_vec());
        assert_eq!(dropped, 2);
        assert_eq!(j.logs("r1", 1).unwrap().0, vec!["line 0".to_owned()]);
        assert!(j.logs("r2", 0).unwrap().0.is_empty());
    }

    #[test]
    fn facts_and_overrides_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.redb");
        let node = NodeId(uuid::Uuid::from_u128(3));
        {
            let j = Journal::open(&path).unwrap();
            j.update_facts(node, |f| f["cpus"] = serde_json::json!(8))
                .unwrap();
            j.put_overrides(
                node,
                &NodeOverrides {
                    boot: Some(BootTarget::Local),
                    dhcp: None,
                },
            )
            .unwrap();
            assert!(matches!(
                Journal::open(&path),
                Err(ExecutorError::Locked { .. })
            ));
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.facts(node).unwrap()["cpus"], 8);
        assert_eq!(j.overrides().unwrap()[&node].boot, Some(BootTarget::Local));
    }
}
