//! The local control socket: a Unix stream socket (mode 0600) speaking one JSON request per
//! line and one JSON response per line, and its client used by `rack-agent status` / `emit`.
//!
//! Requests: `{"op":"status"}`, `{"op":"nodes"}`, `{"op":"emit","events":[<EventKind>...]}`.
//! Responses: `{"ok":true, "status"|"nodes"|"seqs": ...}` or
//! `{"ok":false,"error":{"code":...,"message":...}}`. BMC passwords are never sent.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{EventKind, RackNode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::Shared;
use crate::status::StatusView;
use crate::store::StoreError;

/// Longest request line accepted.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// Most events one `emit` request may carry.
pub const MAX_EMIT_EVENTS: usize = 10_000;
/// How long a client waits for the agent's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the control socket or a request over it failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another agent answers on the socket.
    #[error("control socket {path} is in use by a running agent")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; refusing to delete it.
    #[error("control socket path {path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or securing the socket failed.
    #[error("setting up control socket {path}")]
    Setup {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Nothing listens on the socket: the agent is not running.
    #[error("the agent is not running (nothing listens on {path})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Talking to the agent failed.
    #[error("talking to the agent on {path}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The agent did not answer in time.
    #[error("the agent on {path} did not answer within {CLIENT_TIMEOUT:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
    },
    /// The agent's answer is not what this client understands.
    #[error("unreadable answer from the agent on {path}")]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The agent refused the request.
    #[error("the agent refused the request: {0}")]
    Refused(ErrorBody),
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The agent's local view.
    Status,
    /// The stored nodes.
    Nodes,
    /// Enqueue events durably; answers their sequence numbers.
    Emit {
        /// The events, in order.
        events: Vec<EventKind>,
    },
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Response {
    /// True on success.
    pub ok: bool,
    /// Answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusView>,
    /// Answer to `nodes` (BMC passwords removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<RackNode>>,
    /// Answer to `emit`: the sequence numbers assigned, in request order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<Vec<u64>>,
    /// Why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(ErrorBody::new(code, message)),
            ..Response::default()
        }
    }
}

/// Binds the control socket at `path` (mode 0600), replacing a stale socket file left by an
/// agent that died, but never one a live agent answers on.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let setup = |source| ControlError::Setup {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(setup)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(setup)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(setup(e)),
    }
    let listener = UnixListener::bind(path).map_err(setup)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(setup)?;
    Ok(listener)
}

/// Removes the socket file (on shutdown); a missing file is fine.
pub fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove control socket")
        }
    }
}

/// Accepts connections until `cancel` fires, then stops the connection handlers.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(handle_conn(stream, shared.clone(), cancel.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    // Typically EMFILE: give the system a moment instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Handlers watch the same token; give them a moment to finish the request in hand.
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

async fn handle_conn(stream: UnixStream, shared: Arc<Shared>, cancel: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
        let mut limited = (&mut reader).take(limit);
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            r = limited.read_until(b'\n', &mut line) => r,
        };
        let response = match read {
            Ok(0) => return,
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                let r = Response::error(
                    ErrorCode::PayloadTooLarge,
                    format!("request line exceeds {MAX_LINE_BYTES} bytes"),
                );
                let _ = write_line(&mut write, &r).await;
                return;
            }
            Ok(_) => handle_line(&line, &shared).await,
            Err(e) => {
                tracing::debug!(error = %e, "control connection read failed");
                return;
            }
        };
        if let Err(e) = write_line(&mut write, &response).await {
            tracing::debug!(error = %e, "control connection write failed");
            return;
        }
    }
}

async fn write_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// Parses and executes one request line.
async fn handle_line(line: &[u8], shared: &Arc<Shared>) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Response::error(ErrorCode::BadRequest, format!("bad request: {e}")),
    };
    match execute(request, shared).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "control request failed");
            Response::error(ErrorCode::Internal, crate::error_chain(&e))
        }
    }
}

async fn execute(request: Request, shared: &Arc<Shared>) -> Result<Response, StoreError> {
    match request {
        Request::Status => {
            let link = shared.link();
            let sh = shared.clone();
            let status = shared
                .store
                .call(move |store| StatusView::collect(&sh.config, Some(store), Some(&link)))
                .await?;
            Ok(Response {
                ok: true,
                status: Some(status),
                ..Response::default()
            })
        }
        Request::Nodes => {
            let mut nodes = shared.store.call(|store| store.nodes()).await?;
            for node in &mut nodes {
                if let Some(bmc) = &mut node.bmc {
                    bmc.password = None;
                }
            }
            Ok(Response {
                ok: true,
                nodes: Some(nodes),
                ..Response::default()
            })
        }
        Request::Emit { events } => {
            if events.len() > MAX_EMIT_EVENTS {
                return Ok(Response::error(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "{} events in one request; at most {MAX_EMIT_EVENTS}",
                        events.len()
                    ),
                ));
            }
            let seqs = match shared
                .store
                .call(move |store| store.enqueue_many(events))
                .await
            {
                Ok(seqs) => seqs,
                Err(e @ StoreError::EventTooLarge { .. }) => {
                    return Ok(Response::error(ErrorCode::PayloadTooLarge, e.to_string()))
                }
                Err(e) => return Err(e),
            };
            if !seqs.is_empty() {
                shared.outbox_ready.notify_one();
            }
            Ok(Response {
                ok: true,
                seqs: Some(seqs),
                ..Response::default()
            })
        }
    }
}

/// Sends one request to the agent listening on `path` and returns its successful response.
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let exchange = async {
        let stream = UnixStream::connect(path).await.map_err(|source| {
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) {
                ControlError::NotRunning {
                    path: path.to_owned(),
                }
            } else {
                io_err(source)
            }
        })?;
        let (read, mut write) = stream.into_split();
        let mut bytes = serde_json::to_vec(request).map_err(|e| io_err(io::Error::other(e)))?;
        bytes.push(b'\n');
        write.write_all(&bytes).await.map_err(io_err)?;
        let mut line = String::new();
        BufReader::new(read)
            .read_line(&mut line)
            .await
            .map_err(io_err)?;
        let response: Response =
            serde_json::from_str(&line).map_err(|source| ControlError::BadResponse {
                path: path.to_owned(),
                source,
            })?;
        match (response.ok, &response.error) {
            (false, Some(body)) => Err(ControlError::Refused(body.clone())),
            (false, None) => Err(ControlError::Refused(ErrorBody::new(
                ErrorCode::Internal,
                "request failed without a reason",
            ))),
            (true, _) => Ok(response),
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Timeout {
            path: path.to_owned(),
        })?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shapes() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        let emit: Request = serde_json::from_str(
            r#"{"op":"emit","events":[
                {"CheckIn":{"serial":"SN-1","macs":["52:54:00:00:00:01"],"facts":{"cpus":2}}},
                {"Lease":{"mac":"52:54:00:00:00:01","ip":"10.0.0.5"}}
            ]}"#,
        )
        .unwrap();
        let Request::Emit { events } = emit else {
            panic!("not emit: {emit:?}")
        };
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], EventKind::CheckIn { facts, .. } if facts.0["cpus"] == 2),
            "{events:?}"
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"emit","events":[],"x":1}"#).is_err());
    }
}
