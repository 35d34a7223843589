//! The state machine in redb: applies committed entries through the pure
//! [`State::apply`](crate::state::State::apply), then writes the objects it touched together
//! with the applied log id in one durable transaction — so after a crash the stored state is
//! always exactly the state at some applied log id, never in between.
//!
//! Snapshots are postcard images of the whole [`State`] plus the applied id and membership;
//! the newest is kept in the same file so it survives restarts.

use std::fmt::Debug;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta};
use protocol::domain::CoordinatorAddr;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{LogId, StorageError, StoredMembership, TypeConfig};
use crate::state::{Applied, Key, Response, State};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_objects");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";

/// Snapshot image format version.
const IMAGE_VERSION: u16 = 1;

/// The state plus what Raft needs to know about it.
#[derive(Debug, Default)]
pub struct SmData {
    /// The desired state.
    pub state: State,
    /// Last applied log id (the revision is its index).
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
}

/// State shared between the state machine and readers (the API).
pub type SharedState = Arc<RwLock<SmData>>;

#[derive(Serialize, Deserialize)]
struct Image {
    v: u16,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, CoordinatorAddr>,
    data: Vec<u8>,
}

/// The redb-backed state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: SharedState,
    snapshot_seq: Arc<AtomicU64>,
}

impl Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMachineStore")
    }
}

fn io_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> std::io::Error {
    std::io::Error::other(e)
}
fn sm_write<E: std::error::Error + Send + Sync + 'static>(e: E) -> StorageError {
    super::serr::write_state_machine(&io_err(e))
}
fn sm_read<E: std::error::Error + Send + Sync + 'static>(e: E) -> StorageError {
    super::serr::read_state_machine(&io_err(e))
}

impl StateMachineStore {
    /// Opens the state machine, loading every stored object into memory.
    #[allow(clippy::result_large_err)] // openraft's own error type; constructed once at start-up
    pub fn new(db: Arc<Database>) -> Result<Self, StorageError> {
        {
            let txn = db.begin_write().map_err(sm_write)?;
            txn.open_table(OBJECTS).map_err(sm_write)?;
            txn.open_table(SM_META).map_err(sm_write)?;
            txn.commit().map_err(sm_write)?;
        }
        let mut loaded = SmData::default();
        {
            let txn = db.begin_read().map_err(sm_read)?;
            let objects = txn.open_table(OBJECTS).map_err(sm_read)?;
            for item in objects.iter().map_err(sm_read)? {
                let (k, v) = item.map_err(sm_read)?;
                loaded
                    .state
                    .load_object(k.value(), v.value())
                    .map_err(|e| super::serr::read_state_machine(&std::io::Error::other(e)))?;
            }
            let meta = txn.open_table(SM_META).map_err(sm_read)?;
            if let Some(v) = meta.get(APPLIED).map_err(sm_read)? {
                loaded.last_applied = postcard::from_bytes(v.value()).map_err(sm_read)?;
            }
            if let Some(v) = meta.get(MEMBERSHIP).map_err(sm_read)? {
                loaded.membership = postcard::from_bytes(v.value()).map_err(sm_read)?;
            }
        }
        loaded.state.rebuild_indexes();
        Ok(StateMachineStore {
            db,
            shared: Arc::new(RwLock::new(loaded)),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The state readers use.
    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// Persists the given objects' current values plus the applied id and membership.
    /// `replace_all` clears stored objects first (snapshot install).
    fn persist(&self, keys: Vec<Key>, replace_all: bool) -> Result<(), std::io::Error> {
        let (writes, applied, membership) = {
            let g = self
                .shared
                .read()
                .map_err(|_| std::io::Error::other("state lock poisoned"))?;
            let mut writes = Vec::with_capacity(keys.len());
            for k in &keys {
                writes.push((
                    State::storage_key(k),
                    g.state.encode_object(k).map_err(io_err)?,
                ));
            }
            (
                writes,
                postcard::to_stdvec(&g.last_applied).map_err(io_err)?,
                postcard::to_stdvec(&g.membership).map_err(io_err)?,
            )
        };
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            if replace_all {
                txn.delete_table(OBJECTS).map_err(io_err)?;
            }
            let mut objects = txn.open_table(OBJECTS).map_err(io_err)?;
            for (k, v) in &writes {
                match v {
                    Some(bytes) => {
                        objects
                            .insert(k.as_str(), bytes.as_slice())
                            .map_err(io_err)?;
                    }
                    None => {
                        objects.remove(k.as_str()).map_err(io_err)?;
                    }
                }
            }
            let mut meta = txn.open_table(SM_META).map_err(io_err)?;
            meta.insert(APPLIED, applied.as_slice()).map_err(io_err)?;
            meta.insert(MEMBERSHIP, membership.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    fn save_snapshot(&self, snap: &StoredSnapshot) -> Result<(), std::io::Error> {
        let bytes = postcard::to_stdvec(snap).map_err(io_err)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut meta = txn.open_table(SM_META).map_err(io_err)?;
            meta.insert(SNAPSHOT, bytes.as_slice()).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, membership) = {
            let g = self
                .shared
                .read()
                .map_err(|_| sm_read(std::io::Error::other("state lock poisoned")))?;
            let image = Image {
                v: IMAGE_VERSION,
                last_applied: g.last_applied,
                membership: g.membership.clone(),
                state: g.state.clone(),
            };
            (
                postcard::to_stdvec(&image).map_err(sm_read)?,
                g.last_applied,
                g.membership.clone(),
            )
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.save_snapshot(&stored))
            .await
            .map_err(|e| super::serr::write_snapshot(Some(meta.signature()), &io_err(e)))?
            .map_err(|e| super::serr::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let g = self
            .shared
            .read()
            .map_err(|_| sm_read(std::io::Error::other("state lock poisoned")))?;
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (responses, dirty) = {
            let mut g = self
                .shared
                .write()
                .map_err(|_| sm_write(std::io::Error::other("state lock poisoned")))?;
            let mut responses = Vec::new();
            for entry in entries {
                let idx = entry.log_id.index;
                g.last_applied = Some(entry.log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => Response {
                        revision: idx,
                        result: Ok(Applied::Done),
                        replayed: false,
                    },
                    EntryPayload::Normal(req) => g.state.apply(idx, &req),
                    EntryPayload::Membership(m) => {
                        g.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response {
                            revision: idx,
                            result: Ok(Applied::Done),
                            replayed: false,
                        }
                    }
                };
                responses.push(resp);
            }
            (responses, g.state.take_dirty())
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.persist(dirty.into_iter().collect(), false))
            .await
            .map_err(sm_write)?
            .map_err(|e| super::serr::write_state_machine(&e))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, CoordinatorAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image: Image = postcard::from_bytes(&data)
            .map_err(|e| super::serr::read_snapshot(Some(meta.signature()), &io_err(e)))?;
        if image.v != IMAGE_VERSION {
            return Err(super::serr::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(format!(
                    "snapshot image version {} is not supported",
                    image.v
                )),
            ));
        }
        let keys = {
            let mut g = self
                .shared
                .write()
                .map_err(|_| sm_write(std::io::Error::other("state lock poisoned")))?;
            g.state = image.state;
            g.state.rebuild_indexes();
            g.state.take_dirty();
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
            g.state.all_keys()
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        let sig = meta.signature();
        tokio::task::spawn_blocking(move || {
            this.persist(keys, true)?;
            this.save_snapshot(&stored)
        })
        .await
        .map_err(|e| super::serr::write_snapshot(Some(sig.clone()), &io_err(e)))?
        .map_err(|e| super::serr::write_snapshot(Some(sig), &e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let txn = self.db.begin_read().map_err(sm_read)?;
        let meta = txn.open_table(SM_META).map_err(sm_read)?;
        let Some(v) = meta.get(SNAPSHOT).map_err(sm_read)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = postcard::from_bytes(v.value()).map_err(sm_read)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
