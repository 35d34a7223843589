//! Boot service: dhcp. PLACEHOLDER: replaced by the real server while issue 4 is built; until
//! then a config with a `[dhcp]` section is refused at load.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::{BootDeps, ConfigCtx, KeyError};

/// Validated `[dhcp]` section.
#[derive(Debug, Clone)]
pub struct DhcpConfig {}

impl DhcpConfig {
    /// Validates the section.
    pub fn from_toml(_table: toml::Table, _ctx: &ConfigCtx) -> Result<DhcpConfig, KeyError> {
        Err(KeyError::new("-", "this build has no dhcp server yet"))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("dhcp server unavailable")]
pub struct DhcpError;

/// A bound server.
#[derive(Debug)]
pub struct DhcpServer {
    addr: SocketAddr,
}

impl DhcpServer {
    /// Binds the server's sockets.
    pub async fn bind(_config: &DhcpConfig, _deps: &BootDeps) -> Result<DhcpServer, DhcpError> {
        Err(DhcpError)
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
