//! The step kinds: what one attempt of each does, through the agent's hardware handles. By
//! area: [`bmc`] (BMC and Redfish, through a [`super::BmcConnector`]), [`node`] (work the
//! node-agent does through the real [`crate::boot::http::node_api::NodeActions`] queue, boot
//! and address overrides, waits), [`host`] (webhooks and Ansible from the agent's host).
//!
//! Node actions are named `<run>/<step index>/<attempt>/<n>` (`n` counts the actions of one
//! attempt), so their log lines find their step without any state, also after a restart.
//! The id is committed to the step's journal before the action is queued. Re-attaching after
//! a restart queues, under the same id, a harmless probe: a node-agent still running the
//! original reports the original's result under that id (which completes the probe unseen);
//! a node-agent that is not, runs the probe, whose output says the result was lost, and the
//! step is then re-run only if it is idempotent. The work itself is never queued twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use protocol::fleet::RackNode;
use protocol::json::JsonValue;
use protocol::node::{ActionResult, NodeAction};
use protocol::workflow::{OutputFormat, Step, StepKind};
use protocol::NodeId;

use super::journal::StepJournal;
use super::Shared;
use crate::boot::http::node_api::{ActionError, ActionTarget};

pub mod bmc;
pub mod host;
pub mod node;

/// Marker in the output of the re-attach probe.
pub const PROBE_MARKER: &str = "metalfleet: re-attach probe: no result of the original action";

/// How one attempt ended well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOk {
    /// Exit code of the command it ran, if any.
    pub exit_code: Option<i32>,
    /// A note for the status (what was done).
    pub message: Option<String>,
    /// The last progress its output reported (recorded with the result, so it does not
    /// depend on the streamed log lines arriving first).
    pub progress: Option<(u8, String)>,
}

impl StepOk {
    fn msg(message: impl Into<String>) -> StepOk {
        StepOk {
            exit_code: None,
            message: Some(message.into()),
            progress: None,
        }
    }
}

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepErr {
    /// Why, for operators.
    pub message: String,
    /// Exit code of the command it ran, if any.
    pub exit_code: Option<i32>,
    /// The result of work started before a restart is lost: whether it ran is unknown.
    pub lost: bool,
}

impl StepErr {
    /// A plain failure.
    pub fn failed(message: impl Into<String>) -> StepErr {
        StepErr {
            message: message.into(),
            exit_code: None,
            lost: false,
        }
    }
}

/// Everything one attempt needs.
pub(crate) struct StepCtx {
    pub sh: Arc<Shared>,
    pub run_id: String,
    pub node: NodeId,
    pub index: usize,
    pub step: Step,
    /// The attempt number (the step's `attempts`), part of node action ids.
    pub attempt: u32,
    /// When the attempt started (unix millis): waits only count what happened after it.
    pub attempt_started_at: i64,
    /// When the run started (unix millis): identification counts from the run's start, since
    /// the check-in that carried the serial precedes the step that waits for the match.
    pub run_started_at: i64,
    /// Deadline of the attempt.
    pub deadline: tokio::time::Instant,
    /// The journal of the attempt interrupted by a restart, when re-attaching.
    pub resume: Option<StepJournal>,
    /// The plan's parameters.
    pub params: BTreeMap<String, JsonValue>,
}

/// Whether the kind's work runs on the node (re-attached after a restart, never re-queued).
pub fn runs_on_node(kind: &StepKind) -> bool {
    matches!(
        kind,
        StepKind::NodeRun(_)
            | StepKind::NodeTemplate(_)
            | StepKind::OsInstall(_)
            | StepKind::BmcConfigure(_)
            | StepKind::LldpCheck(_)
    )
}

/// The id of action `n` of an attempt.
pub fn action_id(run: &str, step: usize, attempt: u32, n: u32) -> String {
    format!("{run}/{step}/{attempt}/{n}")
}

/// `(run, step index)` of an action id made by [`action_id`].
pub fn parse_action_id(id: &str) -> Option<(&str, usize)> {
    let mut parts = id.rsplitn(4, '/');
    let _n: u32 = parts.next()?.parse().ok()?;
    let _attempt: u32 = parts.next()?.parse().ok()?;
    let step: usize = parts.next()?.parse().ok()?;
    let run = parts.next()?;
    (!run.is_empty()).then_some((run, step))
}

/// One attempt of the step.
pub(crate) async fn execute(ctx: &StepCtx) -> Result<StepOk, StepErr> {
    match &ctx.step.kind {
        StepKind::BmcPower(p) => bmc::power(ctx, p).await,
        StepKind::BmcBootDevice(p) => bmc::boot_device(ctx, p).await,
        StepKind::BmcValidate(p) => bmc::validate(ctx, p).await,
        StepKind::RedfishFirmwareUpdate(p) => bmc::firmware_update(ctx, p).await,
        StepKind::RedfishBios(p) => bmc::bios(ctx, p).await,
        StepKind::RedfishRaid(p) => bmc::raid(ctx, p).await,
        StepKind::BootSet(p) => node::boot_set(ctx, p),
        StepKind::DhcpReserve(p) => node::dhcp_reserve(ctx, p),
        StepKind::NodeWait(p) => node::wait(ctx, p).await,
        StepKind::NodeRun(p) => node::run(ctx, p).await,
        StepKind::NodeTemplate(p) => node::template(ctx, p).await,
        StepKind::BmcConfigure(p) => node::bmc_configure(ctx, p).await,
        StepKind::LldpCheck(p) => node::lldp_check(ctx, p).await,
        StepKind::OsInstall(p) => node::os_install(ctx, p).await,
        StepKind::HttpCall(p) => host::http_call(ctx, p).await,
        StepKind::AnsibleRun(p) => host::ansible_run(ctx, p).await,
    }
}

impl StepCtx {
    /// The node as the desired state describes it.
    pub fn rack_node(&self) -> Result<RackNode, StepErr> {
        self.sh.hw.nodes.node(self.node).ok_or_else(|| {
            StepErr::failed(format!(
                "node {} is not in this rack's desired state",
                self.node
            ))
        })
    }

    /// The node's facts.
    pub fn facts(&self) -> Result<Value, StepErr> {
        self.sh
            .journal
            .facts(self.node)
            .map_err(|e| StepErr::failed(crate::error_chain(&e)))
    }

    /// Changes the node's facts.
    pub fn update_facts(&self, f: impl FnOnce(&mut Value)) -> Result<(), StepErr> {
        self.sh
            .update_facts(self.node, f)
            .map(|_| ())
            .map_err(|e| StepErr::failed(crate::error_chain(&e)))
    }

    /// Sets `facts.<dotted key>` to `value`, replacing what was there (`merge`: objects
    /// merge key by key).
    pub fn put_fact(&self, key: &str, value: Value, merge: bool) -> Result<(), StepErr> {
        self.update_facts(|f| {
            let mut at = f;
            for seg in key.split('.').filter(|s| !s.is_empty()) {
                if !at.is_object() {
                    *at = Value::Object(Default::default());
                }
                at = &mut at[seg];
            }
            match (merge, at.as_object_mut(), value) {
                (true, Some(obj), Value::Object(new)) => obj.extend(new),
                (_, _, v) => *at = v,
            }
        })
    }

    /// A line of the executor's own in the step's log.
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        if let Err(e) =
            super::observe::append_step_lines(&self.sh, &self.run_id, self.index, vec![line])
        {
            tracing::warn!(run = %self.run_id, error = %crate::error_chain(&e), "step log not stored");
        }
    }

    /// Records a phase of a multi-phase step before its effect.
    pub fn set_phase(&self, phase: &str) -> Result<i64, StepErr> {
        let now = crate::unix_millis();
        let i = self.index;
        self.sh
            .journal
            .update_run(&self.run_id, |r| {
                r.journal[i].phase = Some(phase.to_owned());
                r.journal[i].phase_at = Some(now);
            })
            .map_err(|e| StepErr::failed(crate::error_chain(&e)))?;
        Ok(now)
    }

    /// Time left of the attempt.
    pub fn left(&self) -> std::time::Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// The minijinja context of templates rendered for the node.
    pub fn template_context(&self) -> Result<Value, StepErr> {
        let node = self.rack_node()?;
        let facts = self.facts()?;
        let hostname = facts
            .get("hostname")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| node.serial.to_string());
        let params: serde_json::Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        Ok(serde_json::json!({
            "node": node.id.to_string(),
            "serial": node.serial.to_string(),
            "macs": node.macs.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            "static_ips": node.static_ips,
            "hostname": hostname,
            "facts": facts,
            "params": params,
        }))
    }

    /// Renders a template (strict: an undefined variable is an error).
    pub fn render(&self, what: &str, text: &str) -> Result<String, StepErr> {
        let ctx = self.template_context()?;
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // Files written onto nodes keep their last newline.
        env.set_keep_trailing_newline(true);
        env.render_str(text, ctx)
            .map_err(|e| StepErr::failed(format!("rendering {what}: {e}")))
    }

    /// Runs node action `n` of this attempt (built by `make` from its id and the seconds
    /// left) and waits for its result. `Ok(None)`: the action was done before a restart and
    /// its result is not needed again (a later action of the attempt was in flight).
    pub async fn node_call(
        &self,
        n: u32,
        make: impl FnOnce(String, u64) -> NodeAction,
    ) -> Result<Option<ActionResult>, StepErr> {
        let id = action_id(&self.run_id, self.index, self.attempt, n);
        let queue = &self.sh.hw.node_actions;
        let target = ActionTarget::Node(self.node);
        let prefix = format!("{}/{}/{}/", self.run_id, self.index, self.attempt);
        let recorded = self
            .resume
            .as_ref()
            .and_then(|r| r.action.as_deref())
            .and_then(|r| r.strip_prefix(&prefix))
            .and_then(|m| m.parse::<u32>().ok());
        let secs = self.left().as_secs().max(1);
        match recorded {
            Some(m) if m > n => return Ok(None),
            Some(m) if m == n => {
                self.log(format!("re-attaching to node action {id}"));
                if queue.result(&id).is_none() {
                    let probe = NodeAction::Run {
                        id: id.clone(),
                        command: "sh".into(),
                        args: vec!["-c".into(), format!("echo '{PROBE_MARKER}'; exit 75")],
                        timeout_secs: 30,
                    };
                    match queue.push(target, probe) {
                        Ok(()) | Err(ActionError::Duplicate { .. }) => {}
                        Err(e) => return Err(StepErr::failed(e.to_string())),
                    }
                }
            }
            _ => {
                // Recorded before it is queued: a restart re-attaches instead of queueing
                // the work again.
                let i = self.index;
                self.sh
                    .journal
                    .update_run(&self.run_id, |r| r.journal[i].action = Some(id.clone()))
                    .map_err(|e| StepErr::failed(crate::error_chain(&e)))?;
                queue
                    .push(target, make(id.clone(), secs))
                    .map_err(|e| StepErr::failed(e.to_string()))?;
            }
        }
        let result = loop {
            let left = self.left();
            if let Some(r) = queue.wait_result(&id, left).await {
                break r;
            }
            if self.left().is_zero() {
                withdraw(queue, &id);
                return Err(StepErr::failed(format!(
                    "timed out after {}: node action {id} gave no result",
                    self.step.timeout
                )));
            }
        };
        if result.exit_code == 75 && result.output.contains(PROBE_MARKER) {
            return Err(StepErr {
                message: format!("the result of node action {id} was lost across an agent restart"),
                exit_code: None,
                lost: true,
            });
        }
        Ok(Some(result))
    }
}

/// Takes an action back if no node-agent has received it yet. One that was delivered stays
/// queued: its node-agent is running it and will report a result, which the queue must
/// still accept (the node-agent retries a refused result and polls for nothing else
/// meanwhile); nobody waits for that result any more.
pub fn withdraw(queue: &crate::boot::http::node_api::NodeActions, id: &str) {
    let undelivered = queue
        .pending()
        .iter()
        .any(|(_, a, deliveries)| a.id() == id && *deliveries == 0);
    if undelivered {
        queue.cancel(id);
    }
}

/// Parses command output for the facts.
pub fn parse_output(format: OutputFormat, output: &str) -> Result<Value, String> {
    match format {
        OutputFormat::Text => Ok(Value::String(output.to_owned())),
        OutputFormat::Json => {
            serde_json::from_str(output.trim()).map_err(|e| format!("output is not JSON: {e}"))
        }
        OutputFormat::KeyValue => {
            let mut map = serde_json::Map::new();
            for line in output.lines() {
                let sep = match (line.find(':'), line.find('=')) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => continue,
                };
                let key = line[..sep].trim();
                if key.is_empty() {
                    continue;
                }
                map.insert(
                    key.to_owned(),
                    Value::String(line[sep + 1..].trim().to_owned()),
                );
            }
            Ok(Value::Object(map))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_round_trip() {
        let id = action_id("run.1-a", 3, 2, 1);
        assert_eq!(id, "run.1-a/3/2/1");
        assert_eq!(parse_action_id(&id), Some(("run.1-a", 3)));
        assert_eq!(parse_action_id("x/1/2"), None);
        assert_eq!(parse_action_id("/1/2/3"), None);
    }

    #[test]
    fn output_formats() {
        let lan = "IP Address Source       : Static Address\nIP Address              : 10.0.0.5\nno separator\n";
        let v = parse_output(OutputFormat::KeyValue, lan).unwrap();
        assert_eq!(v["IP Address"], "10.0.0.5");
        assert_eq!(v["IP Address Source"], "Static Address");
        assert_eq!(
            parse_output(OutputFormat::Json, " {\"a\": 1}\n").unwrap()["a"],
            1
        );
        assert!(parse_output(OutputFormat::Json, "nope").is_err());
        assert_eq!(parse_output(OutputFormat::Text, "x\n").unwrap(), "x\n");
    }
}
