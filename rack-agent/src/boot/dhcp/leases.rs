//! Lease state: the in-memory table the handler decides against (one entry per address,
//! an index by client), and its durable copy in `<data_dir>/dhcp-leases.redb`, written by a
//! group-commit thread that sends each ACK only once the batch holding its lease is on disk.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use protocol::fleet::EventKind;
use protocol::Mac;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::config::{Pool, SubnetConfig};
use super::stats::Stats;
use super::EventBatcher;

/// The lease table: key = IPv4 address as u32, value = postcard [`LeaseRecord`].
const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");

/// Version of [`LeaseRecord`]'s encoding.
const RECORD_VERSION: u8 = 1;

/// Most lease writes one transaction commits (bounds the latency of the first ACK in it).
const MAX_BATCH: usize = 4096;

/// How long the writer waits for more lease writes before committing a batch. Adds at most
/// this much to an ACK's latency; divides the commit cost among everything that arrived.
const COMMIT_LINGER: Duration = Duration::from_millis(4);

/// Lease writes (with their replies) waiting for the writer before new ones are refused.
pub const WRITE_QUEUE: usize = 16384;

/// What an address is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// OFFERed and held for the client until `expires` (memory only).
    Offered,
    /// Leased (ACKed) until `expires`.
    Bound,
    /// DECLINEd by a client (in use by someone unknown) until `expires`.
    Quarantined,
}

/// One address's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The client holding it (none for a quarantined address).
    pub mac: Option<Mac>,
    /// Index of the subnet it belongs to.
    pub subnet: usize,
    /// What it is used for.
    pub state: State,
    /// Unix seconds after which the address is free again.
    pub expires: u64,
}

/// The persisted form of a bound or quarantined address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Encoding version ([`RECORD_VERSION`]).
    pub version: u8,
    /// Client MAC (none when quarantined).
    pub mac: Option<Mac>,
    /// `Bound` or `Quarantined`.
    pub state: State,
    /// Unix seconds at which it expires.
    pub expires: u64,
}

/// A change to the durable lease table: `None` deletes the address's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its new record, or `None` to free it.
    pub record: Option<LeaseRecord>,
}

/// Addresses in use and by whom. Owned by the handler (behind one lock); no I/O.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Entry>,
    by_mac: HashMap<(usize, Mac), Ipv4Addr>,
    /// Per subnet: offset into its pools where the next allocation search starts.
    cursors: Vec<u32>,
    /// Addresses seen as some node's reservation: never handed out from a pool.
    reserved: HashSet<Ipv4Addr>,
}

impl LeaseTable {
    /// A table for `subnets` holding the persisted `records` (records outside every subnet
    /// are ignored: the config changed). Also returns the addresses of records superseded by
    /// a later lease of the same client (to delete from disk).
    pub fn load(
        subnets: &[SubnetConfig],
        mut records: Vec<(Ipv4Addr, LeaseRecord)>,
    ) -> (LeaseTable, Vec<Ipv4Addr>) {
        let mut t = LeaseTable {
            cursors: vec![0; subnets.len()],
            ..LeaseTable::default()
        };
        // Oldest first, so a client's latest lease is the one that stays.
        records.sort_by_key(|(_, r)| r.expires);
        let mut stale = Vec::new();
        for (ip, r) in records {
            let Some(subnet) = subnets.iter().position(|s| s.network.contains(&ip)) else {
                continue;
            };
            stale.extend(t.set(
                ip,
                Entry {
                    mac: r.mac,
                    subnet,
                    state: r.state,
                    expires: r.expires,
                },
            ));
        }
        (t, stale)
    }

    /// The live (unexpired) entry for `ip`.
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<&Entry> {
        self.by_ip.get(&ip).filter(|e| e.expires > now)
    }

    /// The address `mac` holds or held in `subnet` (possibly expired but not yet reused).
    pub fn by_client(&self, subnet: usize, mac: Mac) -> Option<(Ipv4Addr, Entry)> {
        let ip = *self.by_mac.get(&(subnet, mac))?;
        let e = self.by_ip.get(&ip)?;
        (e.mac == Some(mac)).then_some((ip, *e))
    }

    /// Whether `ip` may be given to `mac`: nobody else holds it (a quarantined address is
    /// held by nobody, so it is free to no one until it expires).
    pub fn free_for(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        match self.holder(ip, now) {
            None => true,
            Some(e) => e.mac == Some(mac),
        }
    }

    /// Whether `ip` is some node's reservation.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.reserved.contains(&ip)
    }

    /// Remembers that `ip` is a reservation so pools never hand it out.
    pub fn note_reserved(&mut self, ip: Ipv4Addr) {
        self.reserved.insert(ip);
    }

    /// Records `entry` for `ip`. A client holds one address per subnet, so its previous one
    /// is dropped — except that an offer never evicts a bound lease (the client may not take
    /// the offer; the lease then lapses on its own). Returns the evicted address when it was a
    /// bound (persisted) lease, so the caller deletes its record.
    pub fn set(&mut self, ip: Ipv4Addr, entry: Entry) -> Option<Ipv4Addr> {
        if let Some(old) = self.by_ip.get(&ip).copied() {
            if let Some(m) = old.mac {
                if self.by_mac.get(&(old.subnet, m)) == Some(&ip) {
                    self.by_mac.remove(&(old.subnet, m));
                }
            }
        }
        let mut evicted = None;
        if let Some(m) = entry.mac {
            if let Some(prev) = self.by_mac.insert((entry.subnet, m), ip) {
                let prev_entry = self.by_ip.get(&prev).copied().filter(|e| e.mac == Some(m));
                if let (true, Some(pe)) = (prev != ip, prev_entry) {
                    let keep = entry.state == State::Offered && pe.state == State::Bound;
                    if !keep {
                        self.by_ip.remove(&prev);
                        if pe.state == State::Bound {
                            evicted = Some(prev);
                        }
                    }
                }
            }
        }
        self.by_ip.insert(ip, entry);
        evicted
    }

    /// Frees `ip`.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Entry> {
        let old = self.by_ip.remove(&ip)?;
        if let Some(m) = old.mac {
            if self.by_mac.get(&(old.subnet, m)) == Some(&ip) {
                self.by_mac.remove(&(old.subnet, m));
            }
        }
        Some(old)
    }

    /// The next free pool address of `subnet` (not held, not reserved), searching round-robin
    /// from where the last search ended so freed addresses are reused last.
    pub fn allocate(&mut self, subnet: usize, pools: &[Pool], now: u64) -> Option<Ipv4Addr> {
        let total: u64 = pools.iter().map(|p| u64::from(p.size())).sum();
        let cursor = self.cursors.get(subnet).copied().unwrap_or(0);
        for step in 0..total {
            let off = (u64::from(cursor) + step) % total;
            let ip = nth_pool_addr(pools, off)?;
            if self.holder(ip, now).is_none() && !self.reserved.contains(&ip) {
                if let Some(c) = self.cursors.get_mut(subnet) {
                    *c = u32::try_from((off + 1) % total).unwrap_or(0);
                }
                return Some(ip);
            }
        }
        None
    }

    /// Drops expired entries; returns the persisted ones (bound/quarantined) to delete.
    pub fn sweep(&mut self, now: u64) -> Vec<Ipv4Addr> {
        let expired: Vec<(Ipv4Addr, State)> = self
            .by_ip
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(ip, e)| (*ip, e.state))
            .collect();
        let mut gone = Vec::new();
        for (ip, state) in expired {
            self.remove(ip);
            if state != State::Offered {
                gone.push(ip);
            }
        }
        gone
    }

    /// Number of unexpired bound leases.
    pub fn active(&self, now: u64) -> u64 {
        self.by_ip
            .values()
            .filter(|e| e.state == State::Bound && e.expires > now)
            .count() as u64
    }
}

fn nth_pool_addr(pools: &[Pool], mut off: u64) -> Option<Ipv4Addr> {
    for p in pools {
        let len = u64::from(p.size());
        if off < len {
            let base = u64::from(u32::from(p.start));
            return u32::try_from(base + off).ok().map(Ipv4Addr::from);
        }
        off -= len;
    }
    None
}

/// Why the lease database could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LeaseDbError {
    /// Opening or creating the file failed (or another process holds it).
    #[error("opening lease database {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// Reading the stored leases failed.
    #[error("reading lease database {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<redb::Error>,
    },
}

/// Opens (creating if needed) the lease database and reads every stored record. Records that
/// do not decode are skipped with a warning (a newer version wrote them).
pub fn open(path: &Path) -> Result<(Database, Vec<(Ipv4Addr, LeaseRecord)>), LeaseDbError> {
    let open_err = |e: redb::Error| LeaseDbError::Open {
        path: path.to_owned(),
        source: Box::new(e),
    };
    let read_err = |e: redb::Error| LeaseDbError::Read {
        path: path.to_owned(),
        source: Box::new(e),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| open_err(redb::Error::Io(e)))?;
    }
    let db = Database::create(path).map_err(|e| open_err(e.into()))?;
    {
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        txn.open_table(LEASES).map_err(|e| open_err(e.into()))?;
        txn.commit().map_err(|e| open_err(e.into()))?;
    }
    let mut out = Vec::new();
    let txn = db.begin_read().map_err(|e| read_err(e.into()))?;
    let table = txn.open_table(LEASES).map_err(|e| read_err(e.into()))?;
    for row in table.iter().map_err(|e| read_err(e.into()))? {
        let (k, v) = row.map_err(|e| read_err(e.into()))?;
        let ip = Ipv4Addr::from(k.value());
        match postcard::from_bytes::<LeaseRecord>(v.value()) {
            Ok(r) if r.version == RECORD_VERSION => out.push((ip, r)),
            _ => tracing::warn!(%ip, path = %path.display(), "skipping undecodable lease record"),
        }
    }
    drop(table);
    drop(txn);
    Ok((db, out))
}

/// A reply to send once its lease writes are durable.
#[derive(Debug)]
pub struct Outgoing {
    /// Socket to send from.
    pub socket: Arc<UdpSocket>,
    /// Encoded reply.
    pub bytes: Vec<u8>,
    /// Destination.
    pub dest: SocketAddr,
    /// Message type (for counters).
    pub kind: super::stats::MsgKind,
}

impl Outgoing {
    /// Sends now; failures are counted and logged, never fatal.
    pub fn send(&self, stats: &Stats) {
        match self.socket.send_to(&self.bytes, self.dest) {
            Ok(_) => stats.sent(self.kind),
            Err(e) => {
                stats.send_error();
                tracing::debug!(dest = %self.dest, error = %e, "dhcp reply not sent");
            }
        }
    }
}

/// One unit of work for the writer: lease writes, then (once durable) a reply and events.
#[derive(Debug)]
pub struct WriteJob {
    /// Changes to persist.
    pub writes: Vec<LeaseWrite>,
    /// Reply to send after the commit.
    pub reply: Option<Outgoing>,
    /// Events to emit after the commit.
    pub events: Vec<EventKind>,
}

/// Handle to the group-commit writer thread.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: SyncSender<WriteJob>,
}

impl Writer {
    /// Starts the writer thread on `db`. It stops (after committing what it holds) once
    /// every `Writer` clone is dropped.
    pub fn start(
        db: Database,
        path: PathBuf,
        stats: Arc<Stats>,
        events: Arc<EventBatcher>,
    ) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let handle = std::thread::Builder::new()
            .name("dhcp-leases".into())
            .spawn(move || writer_loop(db, path, rx, stats, events))?;
        Ok((Writer { tx }, handle))
    }

    /// Queues a job; `false` if the queue is full or the writer stopped (the job is dropped:
    /// the client retries).
    pub fn submit(&self, job: WriteJob) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn writer_loop(
    db: Database,
    path: PathBuf,
    rx: Receiver<WriteJob>,
    stats: Arc<Stats>,
    events: Arc<EventBatcher>,
) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Linger briefly so one commit (one fsync) carries many leases: the commit, not the
        // packet handling, is what a lease costs.
        // Sleeping (rather than waiting on the channel) means senders do not wake this
        // thread once per job: one wake-up per batch.
        std::thread::sleep(COMMIT_LINGER);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        match commit(&db, &batch) {
            Ok(()) => {
                stats.committed(batch.len());
                for job in batch.drain(..) {
                    if let Some(r) = &job.reply {
                        r.send(&stats);
                    }
                    if !job.events.is_empty() {
                        events.push(job.events);
                    }
                }
            }
            Err(e) => {
                // The replies are not sent: the clients retry and are answered from memory
                // again, so nothing was promised that is not on disk.
                stats.commit_failed();
                tracing::error!(path = %path.display(), error = %e, jobs = batch.len(),
                    "lease commit failed; replies withheld");
                batch.clear();
            }
        }
    }
}

fn commit(db: &Database, batch: &[WriteJob]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    {
        let mut table = txn.open_table(LEASES)?;
        for w in batch.iter().flat_map(|j| j.writes.iter()) {
            let key = u32::from(w.ip);
            match &w.record {
                Some(r) => {
                    let bytes = postcard::to_allocvec(r)
                        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                    table.insert(key, bytes.as_slice())?;
                }
                None => {
                    table.remove(key)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// A record for a bound lease.
pub fn bound_record(mac: Mac, expires: u64) -> LeaseRecord {
    LeaseRecord {
        version: RECORD_VERSION,
        mac: Some(mac),
        state: State::Bound,
        expires,
    }
}

/// A record for a quarantined address.
pub fn quarantine_record(expires: u64) -> LeaseRecord {
    LeaseRecord {
        version: RECORD_VERSION,
        mac: None,
        state: State::Quarantined,
        expires,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::dhcp::config::Mode;

    fn subnet() -> SubnetConfig {
        SubnetConfig {
            network: "10.0.0.0/24".parse().unwrap(),
            interface: None,
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            router: None,
            dns: vec![],
            domain: None,
            mtu: None,
            pools: vec![Pool {
                start: Ipv4Addr::new(10, 0, 0, 10),
                end: Ipv4Addr::new(10, 0, 0, 12),
            }],
            discovery: true,
            mode: Mode::Authoritative,
            router_advertisements: false,
        }
    }

    const A: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const B: Mac = Mac([2, 0, 0, 0, 0, 2]);

    #[test]
    fn allocate_skips_held_and_reserved_and_exhausts() {
        let s = subnet();
        let (mut t, _) = LeaseTable::load(std::slice::from_ref(&s), vec![]);
        t.note_reserved(Ipv4Addr::new(10, 0, 0, 11));
        let a = t.allocate(0, &s.pools, 100).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 10));
        t.set(
            a,
            Entry {
                mac: Some(A),
                subnet: 0,
                state: State::Bound,
                expires: 200,
            },
        );
        let b = t.allocate(0, &s.pools, 100).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 12));
        t.set(
            b,
            Entry {
                mac: Some(B),
                subnet: 0,
                state: State::Offered,
                expires: 130,
            },
        );
        assert_eq!(t.allocate(0, &s.pools, 100), None);
        // The offer hold lapses: the address is free again.
        assert_eq!(t.allocate(0, &s.pools, 131), Some(b));
        assert!(!t.free_for(a, B, 150));
        assert!(t.free_for(a, A, 150));
        assert!(t.free_for(a, B, 200));
    }

    #[test]
    fn a_client_holds_one_address_per_subnet() {
        let s = subnet();
        let (mut t, _) = LeaseTable::load(std::slice::from_ref(&s), vec![]);
        let x = Ipv4Addr::new(10, 0, 0, 10);
        let y = Ipv4Addr::new(10, 0, 0, 12);
        t.set(
            x,
            Entry {
                mac: Some(A),
                subnet: 0,
                state: State::Offered,
                expires: 50,
            },
        );
        t.set(
            y,
            Entry {
                mac: Some(A),
                subnet: 0,
                state: State::Bound,
                expires: 50,
            },
        );
        assert!(t.holder(x, 0).is_none());
        assert_eq!(t.by_client(0, A).unwrap().0, y);
        let e = |state, expires| Entry {
            mac: Some(A),
            subnet: 0,
            state,
            expires,
        };
        // An offer elsewhere keeps the bound lease; binding elsewhere evicts it (to delete).
        assert_eq!(t.set(x, e(State::Offered, 60)), None);
        assert!(t.holder(y, 0).is_some());
        assert_eq!(t.set(x, e(State::Bound, 70)), None);
        let z = Ipv4Addr::new(10, 0, 0, 11);
        assert_eq!(t.set(z, e(State::Bound, 80)), Some(x));
        assert!(t.holder(x, 0).is_none());
        t.remove(z);
        assert!(t.by_client(0, A).is_none());
    }

    #[test]
    fn load_keeps_a_clients_latest_lease() {
        let s = subnet();
        let recs = vec![
            (Ipv4Addr::new(10, 0, 0, 10), bound_record(A, 900)),
            (Ipv4Addr::new(10, 0, 0, 12), bound_record(A, 500)),
        ];
        let (t, stale) = LeaseTable::load(std::slice::from_ref(&s), recs);
        assert_eq!(t.by_client(0, A).unwrap().0, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(stale, vec![Ipv4Addr::new(10, 0, 0, 12)]);
    }

    #[test]
    fn persisted_leases_survive_reopen_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let (db, recs) = open(&path).unwrap();
        assert!(recs.is_empty());
        let job = WriteJob {
            writes: vec![
                LeaseWrite {
                    ip: Ipv4Addr::new(10, 0, 0, 10),
                    record: Some(bound_record(A, 500)),
                },
                LeaseWrite {
                    ip: Ipv4Addr::new(10, 0, 0, 12),
                    record: Some(quarantine_record(90)),
                },
            ],
            reply: None,
            events: vec![],
        };
        commit(&db, std::slice::from_ref(&job)).unwrap();
        drop(db);
        let (_db, recs) = open(&path).unwrap();
        assert_eq!(recs.len(), 2);
        let s = subnet();
        let (mut t, stale) = LeaseTable::load(std::slice::from_ref(&s), recs);
        assert!(stale.is_empty());
        assert_eq!(t.by_client(0, A).unwrap().0, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(t.active(100), 1);
        assert_eq!(t.sweep(100), vec![Ipv4Addr::new(10, 0, 0, 12)]);
    }
}
