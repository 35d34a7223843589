//! Boot service: http. PLACEHOLDER: replaced by the real server while issue 4 is built; until
//! then a config with a `[http]` section is refused at load.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::{BootDeps, ConfigCtx, KeyError};

/// Validated `[http]` section.
#[derive(Debug, Clone)]
pub struct HttpConfig {}

impl HttpConfig {
    /// Validates the section.
    pub fn from_toml(_table: toml::Table, _ctx: &ConfigCtx) -> Result<HttpConfig, KeyError> {
        Err(KeyError::new("-", "this build has no http server yet"))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("http server unavailable")]
pub struct HttpError;

/// A bound server.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds the server's sockets.
    pub async fn bind(_config: &HttpConfig, _deps: &BootDeps) -> Result<HttpServer, HttpError> {
        Err(HttpError)
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
