//! The node API under `/node/v1/` that the microkernel's node-agent speaks: check-in, the
//! long-polled action queue ([`NodeActions`]), logs and results. Request types, the pure
//! decisions behind each endpoint, and the queue handle the executor drives.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::watch;

use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::EventKind;
use protocol::json::JsonValue;
use protocol::{Mac, NodeId};

use crate::boot::BootBackend;

// The wire types are shared with the node-agent.
pub use protocol::node::{ActionResult, CheckinRequest, CheckinResponse, LogsRequest, NodeAction};

/// Results kept for [`NodeActions::result`] after their action completed (oldest dropped
/// first), so a slow executor still finds them without the map growing forever.
pub const MAX_KEPT_RESULTS: usize = 4096;

/// Whom an action is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionTarget {
    /// The machine with this MAC (also unknown machines running discovery).
    Mac(Mac),
    /// The node, through any of its MACs.
    Node(NodeId),
}

impl ActionTarget {
    fn matches(&self, mac: &Mac, node: Option<NodeId>) -> bool {
        match self {
            ActionTarget::Mac(m) => m == mac,
            ActionTarget::Node(n) => Some(*n) == node,
        }
    }
}

/// Why the queue refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// An action with this id is already pending.
    #[error("action {id:?} is already pending")]
    Duplicate {
        /// The id.
        id: String,
    },
    /// No pending or completed action has this id.
    #[error("no action {id:?} is pending")]
    Unknown {
        /// The id.
        id: String,
    },
    /// The action is pending for another machine.
    #[error("action {id:?} is not for {mac}")]
    WrongNode {
        /// The id.
        id: String,
        /// The reporting MAC.
        mac: Mac,
    },
}

#[derive(Debug)]
struct Pending {
    target: ActionTarget,
    action: NodeAction,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Pending>,
    results: BTreeMap<String, ActionResult>,
    result_order: VecDeque<String>,
}

#[derive(Debug)]
struct Inner {
    queue: Mutex<Queue>,
    changed: watch::Sender<u64>,
}

/// The in-agent action queue: the executor pushes actions for a node (or a MAC), the
/// node-agent long-polls them and posts results. Delivery is at-least-once: an action stays
/// pending, and is handed out again on every poll, until its result arrives; a node's actions
/// run in push order. Cloning shares the queue.
#[derive(Debug, Clone)]
pub struct NodeActions {
    inner: Arc<Inner>,
}

impl Default for NodeActions {
    fn default() -> Self {
        NodeActions {
            inner: Arc::new(Inner {
                queue: Mutex::default(),
                changed: watch::Sender::new(0),
            }),
        }
    }
}

impl NodeActions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn poke(&self) {
        self.inner.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Queues `action` for `target`; wakes a waiting long poll.
    pub fn push(&self, target: ActionTarget, action: NodeAction) -> Result<(), ActionError> {
        {
            let mut q = self.lock();
            if q.pending.iter().any(|p| p.action.id() == action.id()) {
                return Err(ActionError::Duplicate {
                    id: action.id().to_owned(),
                });
            }
            q.pending.push(Pending {
                target,
                action,
                deliveries: 0,
            });
        }
        self.poke();
        Ok(())
    }

    /// Removes a pending action (it will not be delivered again). True if it was pending.
    pub fn cancel(&self, id: &str) -> bool {
        let mut q = self.lock();
        let before = q.pending.len();
        q.pending.retain(|p| p.action.id() != id);
        before != q.pending.len()
    }

    /// Pending actions with their targets and how often each was handed out.
    pub fn pending(&self) -> Vec<(ActionTarget, NodeAction, u32)> {
        self.lock()
            .pending
            .iter()
            .map(|p| (p.target, p.action.clone(), p.deliveries))
            .collect()
    }

    /// The result of a completed action, if it arrived.
    pub fn result(&self, id: &str) -> Option<ActionResult> {
        self.lock().results.get(id).cloned()
    }

    /// Waits up to `timeout` for the result of `id`.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn wait_result(&self, id: &str, timeout: Duration) -> Option<ActionResult> {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.result(id) {
                return Some(r);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.result(id),
            }
        }
    }

    /// Long polls and result waiters currently waiting on the queue (lets tests and status
    /// pages see that a node-agent is listening).
    pub fn waiters(&self) -> usize {
        self.inner.changed.receiver_count()
    }

    /// A receiver that changes whenever the queue does (push or result).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The oldest pending action for `mac` (or its `node`), counted as delivered.
    pub fn next_for(&self, mac: &Mac, node: Option<NodeId>) -> Option<NodeAction> {
        let mut q = self.lock();
        let p = q.pending.iter_mut().find(|p| p.target.matches(mac, node))?;
        p.deliveries = p.deliveries.saturating_add(1);
        Some(p.action.clone())
    }

    /// Records a result: the action leaves the queue. A repeated result for a completed action
    /// is accepted again (the node-agent may resend after a lost answer).
    pub fn complete(&self, node: Option<NodeId>, result: ActionResult) -> Result<(), ActionError> {
        {
            let mut q = self.lock();
            let id = result.action.clone();
            match q.pending.iter().position(|p| p.action.id() == id) {
                Some(i) => {
                    let ok = q
                        .pending
                        .get(i)
                        .is_some_and(|p| p.target.matches(&result.mac, node));
                    if !ok {
                        return Err(ActionError::WrongNode {
                            id,
                            mac: result.mac,
                        });
                    }
                    q.pending.remove(i);
                }
                None if q.results.contains_key(&id) => return Ok(()),
                None => return Err(ActionError::Unknown { id }),
            }
            q.result_order.push_back(id.clone());
            q.results.insert(id, result);
            while q.result_order.len() > MAX_KEPT_RESULTS {
                if let Some(old) = q.result_order.pop_front() {
                    q.results.remove(&old);
                }
            }
        }
        self.poke();
        Ok(())
    }
}

/// Query of `GET /node/v1/next`.
#[derive(Debug, Clone, Deserialize)]
pub struct NextQuery {
    /// The polling machine's MAC (any notation).
    pub mac: String,
    /// Seconds to wait for an action (capped by `long_poll_max_secs`); 0 or absent answers at
    /// once.
    #[serde(default)]
    pub wait: Option<u64>,
}

/// Check-in decision: the event to emit and the answer. Pure over the backend lookup.
pub fn checkin(backend: &dyn BootBackend, req: CheckinRequest) -> (EventKind, CheckinResponse) {
    let node = req
        .macs
        .iter()
        .find_map(|m| backend.node_by_mac(m))
        .map(|n| n.id);
    (
        EventKind::CheckIn {
            serial: req.serial,
            macs: req.macs,
            facts: JsonValue(req.facts),
        },
        CheckinResponse {
            known: node.is_some(),
            node,
        },
    )
}

/// Logs decision: one `Log` event per line, or an error when the MAC is unknown.
pub fn logs(backend: &dyn BootBackend, req: LogsRequest) -> Result<Vec<EventKind>, ErrorBody> {
    let node = backend.node_by_mac(&req.mac).ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::NotFound,
            format!("no node of this rack has MAC {}", req.mac),
        )
        .with_field("mac")
    })?;
    Ok(req
        .lines
        .into_iter()
        .map(|line| EventKind::Log {
            node: node.id,
            message: match &req.action {
                Some(a) => format!("[{a}] {line}"),
                None => line,
            },
        })
        .collect())
}

/// Parses a JSON body strictly; the error names the field at fault (a missing field too).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ErrorBody> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let prefix = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!("{path}.")
        };
        // serde reports a missing field at its parent and an unknown field at itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(|f| format!("{prefix}{f}"));
        let unknown = message.starts_with("unknown field");
        let field = missing.or_else(|| (!prefix.is_empty()).then(|| path.clone()));
        let code = if inner.is_syntax() || inner.is_eof() {
            ErrorCode::BadRequest
        } else if unknown {
            ErrorCode::UnknownField
        } else {
            ErrorCode::InvalidField
        };
        let body = ErrorBody::new(code, message);
        match field {
            Some(f) => body.with_field(f),
            None => body,
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::FixtureBackend;
    use protocol::domain::BootTarget;
    use protocol::fleet::RackNode;

    fn node() -> RackNode {
        RackNode {
            id: "00000000-0000-0000-0000-000000000007".parse().unwrap(),
            serial: "SN7".parse().unwrap(),
            macs: vec!["52:54:00:00:00:07".parse().unwrap()],
            boot_target: BootTarget::Discovery,
            static_ips: vec![],
            switch_ports: vec![],
            bmc: None,
            revision: 1,
            power: None,
        }
    }

    #[test]
    fn action_json_shape() {
        let a = NodeAction::Run {
            id: "a1".into(),
            command: "lsblk".into(),
            args: vec!["-J".into()],
            timeout_secs: 30,
        };
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"kind":"run","id":"a1","command":"lsblk","args":["-J"],"timeout_secs":30})
        );
        assert_eq!(serde_json::from_value::<NodeAction>(j).unwrap(), a);
        let r: NodeAction = serde_json::from_str(r#"{"kind":"reboot","id":"r"}"#).unwrap();
        assert_eq!(r.id(), "r");
    }

    #[test]
    fn queue_is_at_least_once_and_ordered() {
        let q = NodeActions::default();
        let n = node();
        let mac = n.macs[0];
        q.push(
            ActionTarget::Node(n.id),
            NodeAction::Reboot { id: "1".into() },
        )
        .unwrap();
        q.push(
            ActionTarget::Mac(mac),
            NodeAction::Poweroff { id: "2".into() },
        )
        .unwrap();
        assert!(q
            .push(
                ActionTarget::Mac(mac),
                NodeAction::Reboot { id: "1".into() }
            )
            .is_err());
        let other: Mac = "52:54:00:00:00:08".parse().unwrap();
        assert_eq!(q.next_for(&other, None), None);
        assert_eq!(q.next_for(&mac, Some(n.id)).unwrap().id(), "1");
        // Asked again (restart): the same action again.
        assert_eq!(q.next_for(&mac, Some(n.id)).unwrap().id(), "1");
        let res = ActionResult {
            mac,
            action: "1".into(),
            exit_code: 0,
            output: String::new(),
        };
        assert!(matches!(
            q.complete(None, res.clone()),
            Err(ActionError::WrongNode { .. })
        ));
        q.complete(Some(n.id), res.clone()).unwrap();
        q.complete(Some(n.id), res.clone()).unwrap();
        assert_eq!(q.result("1"), Some(res));
        assert_eq!(q.next_for(&mac, Some(n.id)).unwrap().id(), "2");
        assert_eq!(q.pending().len(), 1);
        assert!(q.cancel("2"));
        assert_eq!(q.next_for(&mac, Some(n.id)), None);
        assert!(matches!(
            q.complete(
                None,
                ActionResult {
                    mac,
                    action: "zz".into(),
                    exit_code: 1,
                    output: String::new()
                }
            ),
            Err(ActionError::Unknown { .. })
        ));
    }

    #[test]
    fn checkin_and_logs_decisions() {
        let n = node();
        let b = FixtureBackend::new([n.clone()]);
        let req = CheckinRequest {
            serial: "SN7".parse().unwrap(),
            macs: vec!["52:54:00:00:00:99".parse().unwrap(), n.macs[0]],
            facts: serde_json::json!({"cpus": 4}),
        };
        let (ev, resp) = checkin(&b, req);
        assert!(matches!(ev, EventKind::CheckIn { .. }));
        assert_eq!(
            resp,
            CheckinResponse {
                known: true,
                node: Some(n.id)
            }
        );
        let evs = logs(
            &b,
            LogsRequest {
                mac: n.macs[0],
                action: Some("a".into()),
                lines: vec!["x".into(), "y".into()],
            },
        )
        .unwrap();
        assert_eq!(
            evs[1],
            EventKind::Log {
                node: n.id,
                message: "[a] y".into()
            }
        );
        let e = logs(
            &b,
            LogsRequest {
                mac: "52:54:00:00:00:99".parse().unwrap(),
                action: None,
                lines: vec![],
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<CheckinRequest>(br#"{"serial":"S","macs":["zz"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("macs[0]"), "{e}");
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = parse_json::<CheckinRequest>(br#"{"macs":[]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("serial"), "{e}");
        let e = parse_json::<CheckinRequest>(br#"{"serial":"S","macs":[],"x":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownField);
        assert_eq!(e.field.as_deref(), Some("x"), "{e}");
        let e = parse_json::<CheckinRequest>(b"{").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
