//! Raft in four seams: [`log_store`] (redb), [`state_machine`] (redb, applying
//! [`crate::state`]), [`network`] (QUIC with mutual TLS), and the app/API on top
//! ([`crate::app`]). This module fixes the type configuration shared by all four.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use protocol::domain::CoordinatorAddr;

use crate::state::{Request, Response};

openraft::declare_raft_types!(
    /// Metalfleet's Raft types: requests are [`Request`]s, members are addressed by
    /// [`CoordinatorAddr`], snapshots are postcard images of the whole state in memory.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = CoordinatorAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft member.
pub type Raft = openraft::Raft<TypeConfig>;
/// Storage error with our node id type.
pub type StorageError = openraft::StorageError<u64>;
/// Log id with our node id type.
pub type LogId = openraft::LogId<u64>;
/// Membership as stored.
pub type StoredMembership = openraft::StoredMembership<u64, CoordinatorAddr>;

/// One redb file holds a coordinator's log and state machine.
pub const DB_FILE: &str = "raft.redb";

/// Opens (or creates) the coordinator's database file.
pub fn open_db(
    data_dir: &std::path::Path,
) -> Result<std::sync::Arc<redb::Database>, redb::DatabaseError> {
    redb::Database::create(data_dir.join(DB_FILE)).map(std::sync::Arc::new)
}

/// Raft timing and snapshot policy for a cluster on one LAN or across a metro.
pub fn raft_config(cluster_name: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        purge_batch_size: 256,
        ..Default::default()
    }
}

/// Builds openraft storage errors from any displayable cause.
pub(crate) mod serr {
    use std::fmt::Display;

    use openraft::storage::SnapshotSignature;
    use openraft::{ErrorSubject, ErrorVerb};

    use super::StorageError;

    fn mk<E: Display + ?Sized>(s: ErrorSubject<u64>, v: ErrorVerb, e: &E) -> StorageError {
        StorageError::from_io_error(s, v, std::io::Error::other(e.to_string()))
    }
    pub fn read_logs<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::Logs, ErrorVerb::Read, e)
    }
    pub fn write_logs<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::Logs, ErrorVerb::Write, e)
    }
    pub fn read_vote<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::Vote, ErrorVerb::Read, e)
    }
    pub fn write_vote<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::Vote, ErrorVerb::Write, e)
    }
    pub fn read<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::Store, ErrorVerb::Read, e)
    }
    pub fn write<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::Store, ErrorVerb::Write, e)
    }
    pub fn read_state_machine<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::StateMachine, ErrorVerb::Read, e)
    }
    pub fn write_state_machine<E: Display + ?Sized>(e: &E) -> StorageError {
        mk(ErrorSubject::StateMachine, ErrorVerb::Write, e)
    }
    pub fn read_snapshot<E: Display + ?Sized>(
        sig: Option<SnapshotSignature<u64>>,
        e: &E,
    ) -> StorageError {
        mk(ErrorSubject::Snapshot(sig), ErrorVerb::Read, e)
    }
    pub fn write_snapshot<E: Display + ?Sized>(
        sig: Option<SnapshotSignature<u64>>,
        e: &E,
    ) -> StorageError {
        mk(ErrorSubject::Snapshot(sig), ErrorVerb::Write, e)
    }
}
