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

use std::collections::HashSet;
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
use self::packet::{ErrorCode, MAX_DATAGRAM};
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

/// Releases a transfer's slot (peer entry and active gauge) however the task ends.
struct Slot {
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
    peer: SocketAddr,
    stats: Arc<TftpStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.peer);
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
        let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
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
                    let admitted = {
                        let mut set = peers.lock().unwrap_or_else(PoisonError::into_inner);
                        if set.contains(&peer) {
                            Err(None)
                        } else if set.len() >= self.max_transfers {
                            Err(Some(()))
                        } else {
                            set.insert(peer);
                            Ok(())
                        }
                    };
                    match admitted {
                        Ok(()) => {
                            self.stats.active(1);
                            let slot = Slot {
                                peers: peers.clone(),
                                peer,
                                stats: self.stats.clone(),
                            };
                            let shared = self.shared.clone();
                            let stop = stop_transfers.clone();
                            tasks.spawn(async move {
                                let _slot = slot;
                                session::run(shared, peer, req, stop).await;
                            });
                        }
                        // A retransmitted RRQ while its transfer runs: the transfer answers.
                        Err(None) => self.stats.malformed(packet::Malformed::Duplicate),
                        Err(Some(())) => {
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
