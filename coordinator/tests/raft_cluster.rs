//! In-process Raft clusters over the real redb storage, wired by a router that can drop,
//! partition and delay messages: the Raft ring of the test rings (STYLE.md habit 10).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use coordinator::raft::log_store::LogStore;
use coordinator::raft::state_machine::{SharedState, StateMachineStore};
use coordinator::raft::{LogId, Raft, TypeConfig};
use coordinator::state::{Command, Request, State};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{Config, RaftLogReader, RaftMetrics, ServerState, SnapshotPolicy};
use protocol::domain::{CoordinatorAddr, Site};
use tempfile::TempDir;

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

type Metrics = RaftMetrics<u64, CoordinatorAddr>;
type RpcResult<T, E> = Result<T, RPCError<u64, CoordinatorAddr, E>>;

/// Polls `cond` until it holds; fails the test with `what` after `timeout`.
async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Production timings with a shorter election timeout, so failover tests stay fast. The
/// heartbeat stays at 150 ms: openraft also uses it as the AppendEntries timeout.
fn test_config() -> Config {
    Config {
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..coordinator::raft::raft_config("test")
    }
}

/// Snapshot every 20 logs and purge everything a snapshot covers.
fn snapshot_config() -> Config {
    Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..test_config()
    }
}

fn addr(id: u64) -> CoordinatorAddr {
    CoordinatorAddr {
        raft_addr: format!("node-{id}"),
        api_url: format!("https://node-{id}"),
        fleet_addr: format!("node-{id}:7445"),
    }
}

fn put_site(name: &str) -> Request {
    Request {
        actor: "test".into(),
        at: 1_700_000_000_000,
        request_id: Some(format!("req-{name}")),
        command: Command::PutSite(Site {
            name: name.parse().unwrap(),
            description: "x".into(),
        }),
    }
}

/// What the router does to messages.
#[derive(Default)]
struct RouterState {
    /// Running members by id.
    rafts: BTreeMap<u64, Raft>,
    /// Every id ever registered, so isolation also covers stopped members.
    ids: BTreeSet<u64>,
    /// Directed links (from, to) whose messages are lost.
    dropped: BTreeSet<(u64, u64)>,
    /// Added latency per directed link.
    delay: BTreeMap<(u64, u64), Duration>,
    /// InstallSnapshot chunks delivered, by receiver.
    snapshot_chunks: BTreeMap<u64, u64>,
}

/// Delivers RPCs by calling the receiver's [`Raft`] directly.
#[derive(Clone, Default)]
struct Router(Arc<Mutex<RouterState>>);

impl Router {
    fn with<T>(&self, f: impl FnOnce(&mut RouterState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    fn drop_link(&self, from: u64, to: u64) {
        self.with(|s| s.dropped.insert((from, to)));
    }

    /// Cuts `id` off from every other member, both directions.
    fn isolate(&self, id: u64) {
        for other in self.with(|s| s.ids.clone()) {
            if other != id {
                self.drop_link(id, other);
                self.drop_link(other, id);
            }
        }
    }

    fn is_isolated(&self, id: u64) -> bool {
        self.with(|s| {
            s.ids
                .iter()
                .filter(|&&o| o != id)
                .all(|&o| s.dropped.contains(&(id, o)) && s.dropped.contains(&(o, id)))
        })
    }

    /// Restores every dropped link (delays stay).
    fn heal(&self) {
        self.with(|s| s.dropped.clear());
    }

    fn delay_all(&self, d: Duration) {
        self.with(|s| {
            let ids = s.ids.clone();
            for &a in &ids {
                for &b in &ids {
                    s.delay.insert((a, b), d);
                }
            }
        });
    }

    fn snapshot_chunks_to(&self, id: u64) -> u64 {
        self.with(|s| s.snapshot_chunks.get(&id).copied().unwrap_or(0))
    }

    /// One message crossing `from → to`: waits out the link's delay, then says whether it
    /// arrived (the link may have been cut while it was in flight).
    async fn carry(&self, from: u64, to: u64) -> bool {
        if let Some(d) = self.with(|s| s.delay.get(&(from, to)).copied()) {
            tokio::time::sleep(d).await;
        }
        self.with(|s| !s.dropped.contains(&(from, to)))
    }
}

/// openraft's view of the router from one member.
struct Net {
    from: u64,
    router: Router,
}

/// One member's connection to another.
struct Link {
    from: u64,
    to: u64,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Link;
    async fn new_client(&mut self, target: u64, _node: &CoordinatorAddr) -> Link {
        Link {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

impl Link {
    /// Request over `from → to`, handled by the receiver, reply over `to → from`.
    async fn call<T, E, Fut>(&self, handle: impl FnOnce(Raft) -> Fut) -> RpcResult<T, E>
    where
        E: std::error::Error,
        Fut: Future<Output = Result<T, E>>,
    {
        let lost = || {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "link {} -> {} is down",
                self.from, self.to
            ))))
        };
        if !self.router.carry(self.from, self.to).await {
            return Err(lost());
        }
        let Some(raft) = self.router.with(|s| s.rafts.get(&self.to).cloned()) else {
            return Err(lost());
        };
        let reply = handle(raft).await;
        if !self.router.carry(self.to, self.from).await {
            return Err(lost());
        }
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        self.call(|raft| async move { raft.append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let (router, to) = (self.router.clone(), self.to);
        self.call(|raft| async move {
            router.with(|s| *s.snapshot_chunks.entry(to).or_default() += 1);
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        self.call(|raft| async move { raft.vote(rpc).await }).await
    }

    /// Retry a cut link soon, so healing shows up within a heartbeat or two.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

/// A running member.
struct Member {
    raft: Raft,
    sm: SharedState,
    /// A second handle on the member's log, for looking at what is stored.
    log: LogStore,
    /// Lets `stop` wait until every handle on the redb file is gone.
    db: Weak<redb::Database>,
}

/// What a state machine holds: the state and the id it was applied up to.
type SmView = (State, Option<LogId>);

fn read_sm(sm: &SharedState) -> SmView {
    let g = sm.read().unwrap();
    (g.state.clone(), g.last_applied)
}

struct Cluster {
    config: Arc<Config>,
    router: Router,
    dirs: BTreeMap<u64, TempDir>,
    members: BTreeMap<u64, Member>,
    next_site: AtomicU64,
}

impl Cluster {
    /// Starts members `1..=n`, initialises them as voters and waits until all see a leader.
    async fn start(n: u64, config: Config) -> Cluster {
        let mut c = Cluster {
            config: Arc::new(config.validate().unwrap()),
            router: Router::default(),
            dirs: BTreeMap::new(),
            members: BTreeMap::new(),
            next_site: AtomicU64::new(0),
        };
        for id in 1..=n {
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            c.boot(id).await;
        }
        let voters: BTreeMap<u64, CoordinatorAddr> = (1..=n).map(|id| (id, addr(id))).collect();
        c.raft(1).initialize(voters).await.unwrap();
        c.leader().await;
        c.converge().await;
        c
    }

    /// Opens member `id`'s redb file.
    async fn open(&self, id: u64) -> Arc<redb::Database> {
        // The last `Arc<Database>` may still be inside redb's `Drop` (which releases the file
        // lock) when `stop` sees the strong count reach zero, so a reopen may briefly be refused.
        let mut db = None;
        wait_until(PATIENCE, &format!("member {id}'s database to open"), || {
            match coordinator::raft::open_db(self.dirs[&id].path()) {
                Ok(opened) => db = Some(opened),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {}
                Err(e) => panic!("open member {id}'s database: {e}"),
            }
            db.is_some()
        })
        .await;
        db.unwrap()
    }

    /// What a stopped member's state machine loads from its redb file.
    async fn load(&self, id: u64) -> SmView {
        assert!(!self.members.contains_key(&id), "member {id} is running");
        read_sm(
            &StateMachineStore::new(self.open(id).await)
                .unwrap()
                .shared(),
        )
    }

    /// Opens member `id`'s storage from its directory and starts Raft over it; returns what
    /// the state machine loaded from disk before Raft ran.
    async fn boot(&mut self, id: u64) -> SmView {
        let db = self.open(id).await;
        let weak = Arc::downgrade(&db);
        let log = LogStore::new(db.clone()).unwrap();
        let sm = StateMachineStore::new(db).unwrap();
        let shared = sm.shared();
        let loaded = read_sm(&shared);
        let net = Net {
            from: id,
            router: self.router.clone(),
        };
        let raft = Raft::new(id, self.config.clone(), net, log.clone(), sm)
            .await
            .unwrap();
        self.router.with(|s| {
            s.rafts.insert(id, raft.clone());
            s.ids.insert(id);
        });
        self.members.insert(
            id,
            Member {
                raft,
                log: log.clone(),
                sm: shared,
                db: weak,
            },
        );
        loaded
    }

    fn raft(&self, id: u64) -> &Raft {
        &self.members[&id].raft
    }

    fn metrics(&self, id: u64) -> Metrics {
        self.raft(id).metrics().borrow().clone()
    }

    fn sm(&self, id: u64) -> SmView {
        read_sm(&self.members[&id].sm)
    }

    /// Indexes of the log entries member `id` holds in `range`.
    async fn stored_log(&self, id: u64, range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        let mut log = self.members[&id].log.clone();
        let entries = log.try_get_log_entries(range).await.unwrap();
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// The running, reachable member that leads with the highest term, once there is one.
    async fn leader(&self) -> u64 {
        let mut found = None;
        wait_until(PATIENCE, "a reachable leader", || {
            found = self
                .members
                .keys()
                .filter(|&&id| !self.router.is_isolated(id))
                .map(|&id| self.metrics(id))
                .filter(|m| m.state == ServerState::Leader && m.current_leader == Some(m.id))
                .max_by_key(|m| m.current_term)
                .map(|m| m.id);
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// Writes `n` new sites through member `id`, concurrently, and checks each was applied.
    async fn write(&self, id: u64, n: u64) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let k = self.next_site.fetch_add(1, Ordering::Relaxed);
            let raft = self.raft(id).clone();
            tasks.spawn(async move { raft.client_write(put_site(&format!("site-{k}"))).await });
        }
        while let Some(done) = tasks.join_next().await {
            let resp = done.unwrap().unwrap().data;
            assert!(resp.result.is_ok() && !resp.replayed, "{resp:?}");
        }
    }

    /// Waits until every running member applied its whole log, Raft's metrics agree with the
    /// state machine, and all applied the same log id; returns the common state after checking
    /// the states are equal.
    async fn converge(&self) -> State {
        wait_until(
            PATIENCE,
            "all members to apply the same, complete log",
            || {
                let applied: BTreeSet<Option<LogId>> =
                    self.members.keys().map(|&id| self.sm(id).1).collect();
                let caught_up = self.members.keys().all(|&id| {
                    let m = self.metrics(id);
                    m.last_applied.is_some()
                        && m.last_applied == self.sm(id).1
                        && m.last_applied.map(|l| l.index) == m.last_log_index
                });
                applied.len() == 1 && caught_up
            },
        )
        .await;
        let mut states = self.members.iter().map(|(&id, m)| (id, read_sm(&m.sm).0));
        let (first, state) = states.next().unwrap();
        for (id, other) in states {
            assert!(
                other == state,
                "state of member {id} differs from member {first}"
            );
        }
        state
    }

    /// Shuts member `id` down and waits until its redb file is closed; returns its final
    /// state machine contents.
    async fn stop(&mut self, id: u64) -> SmView {
        let member = self.members.remove(&id).unwrap();
        self.router.with(|s| s.rafts.remove(&id));
        member.raft.shutdown().await.unwrap();
        drop((member.raft, member.log));
        let db = member.db;
        wait_until(
            PATIENCE,
            &format!("member {id} to close its database"),
            || db.strong_count() == 0,
        )
        .await;
        read_sm(&member.sm)
    }

    /// Starts member `id` again over its existing redb file.
    async fn restart(&mut self, id: u64) -> SmView {
        self.boot(id).await
    }
}

fn site_names(state: &State) -> BTreeSet<String> {
    state.sites.keys().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss() {
    let mut c = Cluster::start(3, test_config()).await;
    let old = c.leader().await;
    let old_term = c.metrics(old).current_term;
    c.write(old, 50).await;
    assert_eq!(c.converge().await.sites.len(), 50);

    c.stop(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    assert!(c.metrics(new).current_term > old_term);

    c.write(new, 10).await;
    let state = c.converge().await;
    assert_eq!(c.members.len(), 2);
    assert_eq!(state.sites.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitioned() {
    let c = Cluster::start(3, test_config()).await;
    let old = c.leader().await;
    let old_term = c.metrics(old).current_term;
    c.write(old, 20).await;
    c.converge().await;

    c.router.isolate(old);
    let new = c.leader().await;
    assert_ne!(new, old);
    assert!(c.metrics(new).current_term > old_term);
    c.write(new, 20).await;

    // The old leader still believes it leads and appends the write, but cannot reach a quorum.
    let lost = put_site("lost");
    let old_last = c.metrics(old).last_log_index.unwrap();
    let attempt = tokio::time::timeout(
        Duration::from_secs(1),
        c.raft(old).client_write(lost.clone()),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "write on the isolated old leader committed: {attempt:?}"
    );
    assert_eq!(c.metrics(old).last_log_index, Some(old_last + 1));

    c.router.heal();
    c.raft(old)
        .wait(Some(PATIENCE))
        .metrics(
            |m| m.state == ServerState::Follower && m.current_leader == Some(new),
            "old leader steps down",
        )
        .await
        .unwrap();
    let state = c.converge().await;
    assert_eq!(state.sites.len(), 40);
    assert!(!site_names(&state).contains("lost"));
    assert!(!state
        .sessions
        .contains_key(lost.request_id.as_deref().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_restart() {
    let mut c = Cluster::start(3, test_config()).await;
    let leader = c.leader().await;
    c.write(leader, 20).await;
    let before = c.converge().await;
    let membership = c.metrics(leader).membership_config.clone();

    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let at_stop = c.stop(follower).await;
    assert_eq!(at_stop.0, before);
    c.write(leader, 30).await;

    let loaded = c.restart(follower).await;
    assert_eq!(
        loaded, at_stop,
        "state loaded from redb differs from the state at shutdown"
    );
    assert_eq!(loaded.0.sites.len(), 20);

    let state = c.converge().await;
    assert_eq!(state.sites.len(), 50);
    assert!(site_names(&before).is_subset(&site_names(&state)));
    for id in 1..=3 {
        assert_eq!(
            c.metrics(id).membership_config,
            membership,
            "membership changed on member {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_install_on_lagging_follower() {
    let mut c = Cluster::start(3, snapshot_config()).await;
    let leader = c.leader().await;
    c.write(leader, 10).await;
    c.converge().await;

    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    let lag_index = c.metrics(lagging).last_log_index.unwrap();
    c.router.isolate(lagging);
    c.write(leader, 200).await;

    // The leader snapshots and purges past everything the lagging follower has.
    let m = c
        .raft(leader)
        .wait(Some(PATIENCE))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > lag_index),
            "leader purges its early log",
        )
        .await
        .unwrap();
    let snapshot_index = m.snapshot.unwrap().index;
    assert_eq!(
        c.stored_log(leader, 0..=lag_index + 1).await,
        Vec::<u64>::new()
    );
    assert_eq!(c.router.snapshot_chunks_to(lagging), 0);

    c.router.heal();
    let state = c.converge().await;
    assert!(
        c.router.snapshot_chunks_to(lagging) > 0,
        "follower caught up without a snapshot"
    );
    assert!(c.sm(lagging).1.unwrap().index >= snapshot_index);
    c.raft(lagging)
        .wait(Some(PATIENCE))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= snapshot_index),
            "lagging follower reports the installed snapshot",
        )
        .await
        .unwrap();
    assert_eq!(state.sites.len(), 210);

    // What the snapshot install wrote to redb is what the state machine loads. (Raft itself
    // is not restarted here: see `restart_after_log_purge`.)
    let at_stop = c.stop(lagging).await;
    assert_eq!(at_stop.0, state);
    assert_eq!(c.load(lagging).await, at_stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_log_purge() {
    let mut c = Cluster::start(3, snapshot_config()).await;
    let leader = c.leader().await;
    let term = c.metrics(leader).current_term;
    c.write(leader, 30).await;
    c.converge().await;
    wait_until(PATIENCE, "every member to purge its log", || {
        (1..=3).all(|id| c.metrics(id).purged.is_some())
    })
    .await;

    // A new term, and a few entries from it that stay in the logs after the purge point.
    let other = (1..=3).find(|&id| id != leader).unwrap();
    c.raft(other).trigger().elect().await.unwrap();
    wait_until(PATIENCE, "a leader in a newer term", || {
        (1..=3).any(|id| {
            let m = c.metrics(id);
            m.state == ServerState::Leader && m.current_term > term
        })
    })
    .await;
    c.converge().await;
    let leader = c.leader().await;
    c.write(leader, 5).await;
    c.converge().await;

    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let m = c.metrics(follower);
    assert!(m.last_log_index.unwrap() > m.purged.unwrap().index);
    let stored = {
        let mut log = c.members[&follower].log.clone();
        log.get_log_state().await.unwrap()
    };
    assert_eq!(
        stored.last_purged_log_id, m.purged,
        "log store misreports its purge point"
    );

    let at_stop = c.stop(follower).await;
    assert_eq!(c.restart(follower).await, at_stop);
    assert_eq!(c.converge().await.sites.len(), 35);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_links_still_commit() {
    let c = Cluster::start(3, test_config()).await;
    c.router.delay_all(Duration::from_millis(50));
    let leader = c.leader().await;

    let t0 = Instant::now();
    c.write(leader, 50).await;
    // A commit needs at least one round trip to a follower.
    assert!(t0.elapsed() >= Duration::from_millis(100));
    let state = c.converge().await;
    assert_eq!(state.sites.len(), 50);
}
