//! The node API between a node-agent (in the microkernel) and its rack agent's HTTP server
//! (`/node/v1/`): JSON bodies only. The rack agent serves it (`rack-agent/src/boot/http/`), the
//! node-agent (`microkernel/`) calls it.

use serde::{Deserialize, Serialize};

use crate::{Mac, NodeId, Serial};

/// Kernel command-line key naming the rack agent's HTTP base URL (`scheme://host:port`).
pub const CMDLINE_AGENT: &str = "metalfleet.agent";
/// Kernel command-line key naming the MAC the machine booted from.
pub const CMDLINE_MAC: &str = "metalfleet.mac";

/// An action for a node-agent, as `GET /node/v1/next` returns it: JSON internally tagged by
/// `kind`, e.g. `{"kind":"reboot","id":"a1"}`. Ids are chosen by whoever pushes the action and
/// name it in logs and results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeAction {
    /// Run a command (no shell) and report its exit code and output.
    Run {
        /// Action id.
        id: String,
        /// Program to execute.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Kill it after this many seconds.
        timeout_secs: u64,
    },
    /// Write a file.
    Template {
        /// Action id.
        id: String,
        /// Absolute path on the node.
        path: String,
        /// File content.
        content: String,
        /// Permission bits (e.g. 420 = 0o644).
        mode: u32,
    },
    /// Reboot the node.
    Reboot {
        /// Action id.
        id: String,
    },
    /// Power the node off.
    Poweroff {
        /// Action id.
        id: String,
    },
    /// kexec into another kernel.
    Kexec {
        /// Action id.
        id: String,
        /// Kernel URL.
        kernel: String,
        /// Initrd URL.
        initrd: String,
        /// Kernel command line.
        cmdline: String,
    },
}

impl NodeAction {
    /// The action's id.
    pub fn id(&self) -> &str {
        match self {
            NodeAction::Run { id, .. }
            | NodeAction::Template { id, .. }
            | NodeAction::Reboot { id }
            | NodeAction::Poweroff { id }
            | NodeAction::Kexec { id, .. } => id,
        }
    }
}

/// What a node-agent reported for an action (`POST /node/v1/results`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    /// The MAC the node-agent reports from.
    pub mac: Mac,
    /// The action id.
    pub action: String,
    /// Exit code (0 = success; for reboot/poweroff/kexec, whether it was started).
    pub exit_code: i32,
    /// Output (combined stdout/stderr, possibly truncated by the node-agent).
    #[serde(default)]
    pub output: String,
}

/// `POST /node/v1/checkin` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinRequest {
    /// DMI serial of the machine.
    pub serial: Serial,
    /// Its MACs.
    pub macs: Vec<Mac>,
    /// Hardware facts (a JSON object).
    #[serde(default)]
    pub facts: serde_json::Value,
}

/// `POST /node/v1/checkin` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinResponse {
    /// Whether one of the MACs belongs to a node of this rack.
    pub known: bool,
    /// That node.
    pub node: Option<NodeId>,
}

/// `POST /node/v1/logs` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// The MAC the node-agent reports from.
    pub mac: Mac,
    /// The action the lines belong to, if any.
    #[serde(default)]
    pub action: Option<String>,
    /// Log lines.
    pub lines: Vec<String>,
}
