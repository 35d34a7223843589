//! The Raft log and vote in redb: one table of postcard-encoded entries keyed by index, one
//! small table of metadata (vote, committed, last purged). Appends are flushed
//! (`Durability::Immediate`) before openraft is told they are durable.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, OptionalSend, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{LogId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// Format version prefixed to every stored entry, so a later release can read older ones.
const ENTRY_FORMAT: u8 = 1;

/// The redb-backed log store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

fn io_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> std::io::Error {
    std::io::Error::other(e)
}

impl LogStore {
    /// Wraps an open database, creating the tables if needed.
    #[allow(clippy::result_large_err)] // openraft's own error type; constructed once at start-up
    pub fn new(db: Arc<Database>) -> Result<Self, StorageError> {
        let txn = db
            .begin_write()
            .map_err(|e| super::serr::write_logs(&io_err(e)))?;
        {
            txn.open_table(LOG)
                .map_err(|e| super::serr::write_logs(&io_err(e)))?;
            txn.open_table(META)
                .map_err(|e| super::serr::write_logs(&io_err(e)))?;
        }
        txn.commit()
            .map_err(|e| super::serr::write_logs(&io_err(e)))?;
        Ok(LogStore { db })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), std::io::Error> {
        let bytes = postcard::to_stdvec(value).map_err(io_err)?;
        let mut txn = self.db.begin_write().map_err(io_err)?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(io_err)?;
        }
        {
            let mut table = txn.open_table(META).map_err(io_err)?;
            table.insert(key, bytes.as_slice()).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    fn read_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end)).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(decode_entry(v.value())?);
        }
        Ok(out)
    }
}

fn encode_entry(e: &Entry<TypeConfig>) -> Result<Vec<u8>, std::io::Error> {
    let mut out = vec![ENTRY_FORMAT];
    out.extend(postcard::to_stdvec(e).map_err(io_err)?);
    Ok(out)
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, std::io::Error> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, rest)) => postcard::from_bytes(rest).map_err(io_err),
        Some((v, _)) => Err(std::io::Error::other(format!(
            "log entry format {v} is newer than this binary"
        ))),
        None => Err(std::io::Error::other("empty log entry")),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_range(start, end))
            .await
            .map_err(|e| super::serr::read_logs(&io_err(e)))?
            .map_err(|e| super::serr::read_logs(&e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        // Stored as `Option<LogId>` (see `purge`): decode the same type, then flatten.
        let last_purged: Option<LogId> = self
            .get_meta::<Option<LogId>>(PURGED)
            .map_err(|e| super::serr::read_logs(&e))?
            .flatten();
        let last = {
            let txn = self
                .db
                .begin_read()
                .map_err(|e| super::serr::read_logs(&io_err(e)))?;
            let table = txn
                .open_table(LOG)
                .map_err(|e| super::serr::read_logs(&io_err(e)))?;
            let last = table
                .last()
                .map_err(|e| super::serr::read_logs(&io_err(e)))?;
            match last {
                Some((_, v)) => Some(
                    decode_entry(v.value())
                        .map_err(|e| super::serr::read_logs(&e))?
                        .log_id,
                ),
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote, true)
            .map_err(|e| super::serr::write_vote(&e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(VOTE).map_err(|e| super::serr::read_vote(&e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: losing it only means re-applying from the state machine's
        // own applied id, which is always durable.
        self.put_meta(COMMITTED, &committed, false)
            .map_err(|e| super::serr::write(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(COMMITTED)
            .map_err(|e| super::serr::read(&e))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((
                e.log_id.index,
                encode_entry(&e).map_err(|e| super::serr::write_logs(&e))?,
            ));
        }
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                for (idx, bytes) in &encoded {
                    table.insert(*idx, bytes.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })
        .await
        .map_err(io_err)
        .and_then(|r| r);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(super::serr::write_logs(&std::io::Error::other(msg)))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
        .map_err(|e| super::serr::write_logs(&io_err(e)))?
        .map_err(|e| super::serr::write_logs(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let bytes = postcard::to_stdvec(&Some(log_id)).map_err(io_err)?;
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut meta = txn.open_table(META).map_err(io_err)?;
                meta.insert(PURGED, bytes.as_slice()).map_err(io_err)?;
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
        .map_err(|e| super::serr::write_logs(&io_err(e)))?
        .map_err(|e| super::serr::write_logs(&e))
    }
}
