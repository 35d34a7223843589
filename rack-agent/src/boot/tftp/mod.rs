//! Boot service: a read-only TFTP server (RFC 1350 with the RFC 2347 option extension,
//! blksize 2348, timeout/tsize 2349 and windowsize 7440) for PXE ROMs fetching iPXE and for
//! anything else that boots over TFTP.
//!
//! Listener → handler → transfer: the listen loop ([`TftpServer::run`]) only classifies
//! datagrams ([`handler::classify`]) and enforces the transfer limit; each read request runs in
//! its own task on its own ephemeral socket (the RFC 1350 transfer ID), where
//! [`handler::decide`] confines the path, finds the file and negotiates options, and
//! [`session::Window`] drives the retransmission state machine.

pub mod cache;
pub mod config;
pub mod handler;
pub mod packet;
pub mod session;
pub mod stats;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::cache::FileCache;
use self::handler::{FsLookup, Limits, ListenDecision};
use self::packet::{ErrorCode, Request, MAX_DATAGRAM};
use self::session::Shared;
use self::stats::{Outcome, TftpStats};
use super::BootDeps;

pub use self::config::TftpConfig;

/// How long in-flight transfers may run on after shutdown is requested before they are
/// stopped (each then tells its client with ERROR 0).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Receive buffer asked for on the listen socket, so a rack powering on at once (hundreds
/// of RRQs in a burst) is not dropped by the kernel.
const LISTEN_RCVBUF: usize = 4 << 20;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The root directory could not be created.
    #[error("tftp: cannot create root directory {path}")]
    CreateRoot {
        /// The root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The root directory could not be resolved to a canonical path.
    #[error("tftp: cannot resolve root directory {path}")]
    Root {
        /// The root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("tftp: cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A bound TFTP server; [`TftpServer::run`] serves it.
#[derive(Debug)]
pub struct TftpServer {
    socket: UdpSocket,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stats: Arc<TftpStats>,
    max_transfers: usize,
}

fn bind_listen(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(LISTEN_RCVBUF);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The transfer running for a peer (one per client address and port).
struct Active {
    id: u64,
    req: Request,
    superseded: CancellationToken,
}

type ActiveMap = Arc<Mutex<HashMap<SocketAddr, Active>>>;

/// What the listener does with a read request.
enum Admission {
    /// Start a transfer (after stopping the peer's previous one, if any).
    Start(u64, CancellationToken),
    /// The same request again while its transfer runs: the transfer answers it.
    Duplicate,
    /// Over `max_transfers`.
    Busy,
}

/// Admits `req` from `peer`. A different request from a peer with a transfer running
/// replaces that transfer: the client has given up on it (PXE ROMs ask for `tsize` alone,
/// abort, and ask again with `blksize`, sometimes from the same port).
fn admit(map: &ActiveMap, peer: SocketAddr, req: &Request, id: u64, max: usize) -> Admission {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    match map.get(&peer) {
        Some(a) if a.req == *req => return Admission::Duplicate,
        Some(_) => {
            if let Some(old) = map.remove(&peer) {
                old.superseded.cancel();
            }
        }
        None if map.len() >= max => return Admission::Busy,
        None => {}
    }
    let superseded = CancellationToken::new();
    map.insert(
        peer,
        Active {
            id,
            req: req.clone(),
            superseded: superseded.clone(),
        },
    );
    Admission::Start(id, superseded)
}

/// Releases a transfer's slot (peer entry and active gauge) however the task ends.
struct Slot {
    peers: ActiveMap,
    peer: SocketAddr,
    id: u64,
    stats: Arc<TftpStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        // A superseded transfer must not remove its successor's entry.
        if map.get(&self.peer).is_some_and(|a| a.id == self.id) {
            map.remove(&self.peer);
        }
        self.stats.active(-1);
    }
}

impl TftpServer {
    /// Creates the root if missing, binds the listen socket and registers the counters.
    pub async fn bind(config: &TftpConfig, deps: &BootDeps) -> Result<TftpServer, TftpError> {
        std::fs::create_dir_all(&config.root).map_err(|source| TftpError::CreateRoot {
            path: config.root.clone(),
            source,
        })?;
        let root = std::fs::canonicalize(&config.root).map_err(|source| TftpError::Root {
            path: config.root.clone(),
            source,
        })?;
        let socket = bind_listen(config.listen).map_err(|source| TftpError::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = socket.local_addr().map_err(|source| TftpError::Bind {
            addr: config.listen,
            source,
        })?;
        let stats = Arc::new(TftpStats::default());
        deps.metrics.register(stats.clone());
        let lookup = FsLookup {
            root,
            ipxe_dir: deps.ipxe_dir.clone(),
            generated: deps.generated.clone(),
            cache: Arc::new(FileCache::new(config.cache_bytes)),
        };
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            lookup: Arc::new(lookup),
            limits: Limits {
                max_blksize: config.max_blksize,
                max_windowsize: config.max_windowsize,
                timeout: config.timeout,
            },
            retries: config.retries,
            bind_ip: addr.ip(),
        });
        Ok(TftpServer {
            socket,
            addr,
            shared,
            stats,
            max_transfers: config.max_transfers,
        })
    }

    /// The bound listen address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters (also rendered through the metrics registry).
    pub fn stats(&self) -> Arc<TftpStats> {
        self.stats.clone()
    }

    /// Serves until `cancel` fires, then lets transfers in flight run for up to
    /// [`SHUTDOWN_GRACE`] before stopping them.
    pub async fn run(self, cancel: CancellationToken) {
        let peers: ActiveMap = Arc::default();
        let mut next_id = 0u64;
        let stop_transfers = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            // Reap finished transfers so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let (len, peer) = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // E.g. ECONNREFUSED from an ICMP error; never fatal to the loop.
                        tracing::debug!(error = %e, "tftp: receive error on the listen socket");
                        continue;
                    }
                },
            };
            let datagram = buf.get(..len).unwrap_or_default();
            match handler::classify(datagram) {
                ListenDecision::Drop(m) => {
                    self.stats.malformed(m);
                    tracing::debug!(%peer, reason = %m, "tftp: dropped datagram on the listen port");
                }
                ListenDecision::Reply {
                    code,
                    message,
                    outcome,
                    malformed,
                } => {
                    if let Some(m) = malformed {
                        self.stats.malformed(m);
                    }
                    self.stats.request(outcome);
                    tracing::debug!(%peer, code = code.code(), message, "tftp: request refused");
                    let _ = self
                        .socket
                        .send_to(&packet::encode_error(code, message), peer)
                        .await;
                }
                ListenDecision::Start(req) => {
                    next_id += 1;
                    match admit(&peers, peer, &req, next_id, self.max_transfers) {
                        Admission::Start(id, superseded) => {
                            self.stats.active(1);
                            let slot = Slot {
                                peers: peers.clone(),
                                peer,
                                id,
                                stats: self.stats.clone(),
                            };
                            let shared = self.shared.clone();
                            let stop = session::Stop {
                                shutdown: stop_transfers.clone(),
                                superseded,
                            };
                            tasks.spawn(async move {
                                let _slot = slot;
                                session::run(shared, peer, req, stop).await;
                            });
                        }
                        // A retransmitted RRQ while its transfer runs: the transfer answers.
                        Admission::Duplicate => self.stats.malformed(packet::Malformed::Duplicate),
                        Admission::Busy => {
                            self.stats.request(Outcome::Busy);
                            tracing::warn!(%peer, file = %req.filename, limit = self.max_transfers, "tftp: server busy");
                            let _ = self
                                .socket
                                .send_to(
                                    &packet::encode_error(ErrorCode::Undefined, "server busy"),
                                    peer,
                                )
                                .await;
                        }
                    }
                }
            }
        }
        drain(&mut tasks, &stop_transfers).await;
    }
}

/// Waits for transfers within [`SHUTDOWN_GRACE`], then stops the rest (they send ERROR 0)
/// and aborts whatever still has not finished a second later.
async fn drain(tasks: &mut JoinSet<()>, stop: &CancellationToken) {
    if tasks.is_empty() {
        return;
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_ok() {
        return;
    }
    stop.cancel();
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(1), all)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::tftp::packet::Mode;

    fn req(option: &str) -> Request {
        Request {
            filename: "undionly.kpxe".to_owned(),
            mode: Mode::Octet,
            options: vec![(option.to_owned(), "0".to_owned())],
        }
    }

    #[test]
    fn admission_dedups_replaces_and_limits() {
        let map = ActiveMap::default();
        let stats = Arc::new(TftpStats::default());
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:1000".parse().unwrap();
        let Admission::Start(1, first) = admit(&map, a, &req("tsize"), 1, 2) else {
            panic!("not started")
        };
        assert!(matches!(
            admit(&map, a, &req("tsize"), 2, 2),
            Admission::Duplicate
        ));
        assert!(matches!(
            admit(&map, a, &req("blksize"), 3, 2),
            Admission::Start(3, _)
        ));
        assert!(first.is_cancelled(), "the old transfer is told to stop");
        assert!(matches!(
            admit(&map, b, &req("tsize"), 4, 2),
            Admission::Start(4, _)
        ));
        assert!(matches!(
            admit(&map, c, &req("tsize"), 5, 2),
            Admission::Busy
        ));
        // The superseded transfer ending leaves its successor's entry alone.
        stats.active(2);
        drop(Slot {
            peers: map.clone(),
            peer: a,
            id: 1,
            stats: stats.clone(),
        });
        assert_eq!(map.lock().unwrap().get(&a).map(|x| x.id), Some(3));
        drop(Slot {
            peers: map.clone(),
            peer: a,
            id: 3,
            stats: stats.clone(),
        });
        assert!(map.lock().unwrap().get(&a).is_none());
        assert_eq!(stats.active_transfers(), 0);
    }
}
