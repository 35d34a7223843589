//! The one-shot subcommands (`status`, `nodes`, `emit`): ask the running agent over its
//! control socket, or — when no agent is running — read or write the store directly (its
//! lock is free then), saying so.

use protocol::fleet::{EventKind, RackNode};
use protocol::json::JsonValue;
use protocol::{Mac, Serial};

use crate::config::Config;
use crate::control::{self, ControlError, Request, MAX_EMIT_EVENTS};
use crate::status::StatusView;
use crate::store::{Store, StoreError};

/// Highest `--checkins` count: the index must fit the three free octets of the MAC.
pub const MAX_CHECKINS: u32 = 0x00ff_ffff;

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The control socket request failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The arguments make no sense.
    #[error("{0}")]
    Usage(String),
    /// No store exists yet (the agent never ran nor enrolled).
    #[error("no store at {path}: the agent has never run nor enrolled")]
    NoStore {
        /// The store file.
        path: std::path::PathBuf,
    },
    /// The data directory could not be created.
    #[error("creating {path}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The agent's answer lacks what was asked for.
    #[error("the agent's answer has no {0}")]
    Incomplete(&'static str),
}

impl CliError {
    /// Exit code: 2 for bad arguments or a refused request, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Control(ControlError::Refused(body)) => body.code.exit_code(),
            _ => 1,
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The running agent answered.
    Agent,
    /// No agent runs; the store was used directly.
    Store,
}

/// The agent's local view: from the running agent, else from the store (marked not running).
pub async fn status(config: &Config) -> Result<StatusView, CliError> {
    match control::request(&config.control_socket, &Request::Status).await {
        Ok(r) => r.status.ok_or(CliError::Incomplete("status")),
        Err(ControlError::NotRunning { .. }) => {
            match offline(config, false, |store, config| {
                StatusView::collect(config, Some(store), None)
            })
            .await
            {
                Err(CliError::NoStore { .. }) => Ok(StatusView::collect(config, None, None)?),
                other => other,
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The stored nodes (BMC passwords removed), and where they were read.
pub async fn nodes(config: &Config) -> Result<(Vec<RackNode>, Source), CliError> {
    match control::request(&config.control_socket, &Request::Nodes).await {
        Ok(r) => Ok((r.nodes.ok_or(CliError::Incomplete("nodes"))?, Source::Agent)),
        Err(ControlError::NotRunning { .. }) => {
            let mut nodes = match offline(config, false, |store, _| store.nodes()).await {
                Err(CliError::NoStore { .. }) => Vec::new(),
                other => other?,
            };
            for node in &mut nodes {
                if let Some(bmc) = &mut node.bmc {
                    bmc.password = None;
                }
            }
            Ok((nodes, Source::Store))
        }
        Err(e) => Err(e.into()),
    }
}

/// Enqueues `events` through the running agent (in requests of at most
/// [`MAX_EMIT_EVENTS`]), or straight into the store when no agent runs. Returns the assigned
/// sequence numbers.
pub async fn emit(config: &Config, events: Vec<EventKind>) -> Result<(Vec<u64>, Source), CliError> {
    let mut seqs = Vec::with_capacity(events.len());
    let mut chunks = events.chunks(MAX_EMIT_EVENTS).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let request = Request::Emit {
            events: chunk.to_vec(),
        };
        match control::request(&config.control_socket, &request).await {
            Ok(r) => seqs.extend(r.seqs.ok_or(CliError::Incomplete("seqs"))?),
            Err(ControlError::NotRunning { .. }) if first => {
                let rest: Vec<EventKind> = events.clone();
                let stored =
                    offline(config, true, move |store, _| store.enqueue_many(rest)).await?;
                return Ok((stored, Source::Store));
            }
            Err(e) => return Err(e.into()),
        }
        first = false;
        if chunks.peek().is_none() {
            break;
        }
    }
    Ok((seqs, Source::Agent))
}

/// `count` CheckIn events with serials `<prefix>-000001`.. and MACs `52:54:00:xx:xx:xx`
/// derived from the index, facts `{}`.
pub fn checkin_events(count: u32, prefix: &str) -> Result<Vec<EventKind>, CliError> {
    if count == 0 || count > MAX_CHECKINS {
        return Err(CliError::Usage(format!(
            "--checkins must be between 1 and {MAX_CHECKINS}"
        )));
    }
    (1..=count)
        .map(|i| {
            let serial: Serial = format!("{prefix}-{i:06}")
                .parse()
                .map_err(|e| CliError::Usage(format!("--serial-prefix: {e}")))?;
            let [_, a, b, c] = i.to_be_bytes();
            Ok(EventKind::CheckIn {
                serial,
                macs: vec![Mac([0x52, 0x54, 0x00, a, b, c])],
                facts: JsonValue(serde_json::json!({})),
            })
        })
        .collect()
}

/// Runs `f` on the store of a stopped agent. A missing store file is created only if `create`
/// (otherwise [`CliError::NoStore`]), so looking at a never-started agent changes nothing.
async fn offline<T, F>(config: &Config, create: bool, f: F) -> Result<T, CliError>
where
    T: Send + 'static,
    F: FnOnce(&Store, &Config) -> Result<T, StoreError> + Send + 'static,
{
    let config = config.clone();
    let path = config.store_path();
    let config_path = path.clone();
    let run = move || -> Result<T, CliError> {
        if !path.exists() {
            if !create {
                return Err(CliError::NoStore { path });
            }
            std::fs::create_dir_all(&config.data_dir).map_err(|source| CliError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        }
        let store = Store::open(&path)?;
        Ok(f(&store, &config)?)
    };
    tokio::task::spawn_blocking(run).await.map_err(|_| {
        CliError::Store(StoreError::Interrupted {
            path: config_path.clone(),
        })
    })?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checkins_are_numbered_with_derived_macs() {
        let events = checkin_events(2, "RACK1").unwrap();
        let EventKind::CheckIn {
            serial,
            macs,
            facts,
        } = &events[1]
        else {
            panic!("{events:?}")
        };
        assert_eq!(serial.as_str(), "RACK1-000002");
        assert_eq!(macs[0].to_string(), "52:54:00:00:00:02");
        assert_eq!(facts.0, serde_json::json!({}));
        let big = checkin_events(300, "P").unwrap();
        let EventKind::CheckIn { macs, .. } = &big[299] else {
            panic!()
        };
        assert_eq!(macs[0].to_string(), "52:54:00:00:01:2c");
        assert!(checkin_events(0, "P").is_err());
        assert!(checkin_events(1, "bad prefix").is_err());
    }
}
