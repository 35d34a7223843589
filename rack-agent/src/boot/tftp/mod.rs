//! Boot service: tftp. PLACEHOLDER: replaced by the real server while issue 4 is built; until
//! then a config with a `[tftp]` section is refused at load.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::{BootDeps, ConfigCtx, KeyError};

/// Validated `[tftp]` section.
#[derive(Debug, Clone)]
pub struct TftpConfig {}

impl TftpConfig {
    /// Validates the section.
    pub fn from_toml(_table: toml::Table, _ctx: &ConfigCtx) -> Result<TftpConfig, KeyError> {
        Err(KeyError::new("-", "this build has no tftp server yet"))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("tftp server unavailable")]
pub struct TftpError;

/// A bound server.
#[derive(Debug)]
pub struct TftpServer {
    addr: SocketAddr,
}

impl TftpServer {
    /// Binds the server's sockets.
    pub async fn bind(_config: &TftpConfig, _deps: &BootDeps) -> Result<TftpServer, TftpError> {
        Err(TftpError)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        cancel.cancelled().await;
    }
}
