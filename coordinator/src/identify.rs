//! The identify hook: the "node identify" service of a real buildout. When a node is
//! identified (its serial matches an expected-inventory record) or lands in the discovered
//! pool, the leader `POST`s `{"serial", "macs", "rack", "facts"}` to the configured URL and
//! commits what comes back: the JSON object under `facts.identify`, a `"hostname"` into
//! `facts.hostname`, and `"static_ips"` into the node's inventory record (as a re-import
//! through the API would). Failures are retried with backoff a bounded number of times, then
//! recorded in `facts.identify_error`.
//!
//! Nothing here runs inside `apply`: which calls are due is a pure function of the state
//! ([`pending`]), and what to commit for an answer is another ([`writes`]); only the loop in
//! [`spawn`] does I/O. A call is due while `facts.identify_phase` differs from the node's
//! phase; the last write of a call sets it, so a leader that takes over redoes only calls
//! whose writes were not all committed, and every write carries an idempotency key derived
//! from the serial, the phase and the inventory revision, so a write proposed twice (a retry,
//! two leaders racing across an election) is applied once.

use std::sync::{Arc, Weak};
use std::time::Duration;

use protocol::domain::{InventoryRecord, Node, StaticIp};
use protocol::json::JsonValue;
use protocol::{NodeId, Revision, Serial};
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::state::{Command, ImportItem, NodePatch, State};

/// How often the leader looks for due calls when no state change pokes it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Calls of the hook per node and phase before giving up and recording the error.
pub const MAX_ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled after each failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Facts key holding the hook's answer.
pub const FACT_ANSWER: &str = "identify";
/// Facts key holding why the hook's answer could not be obtained or applied (`null`: fine).
pub const FACT_ERROR: &str = "identify_error";
/// Facts key holding the phase the hook last ran for (`identified` or `discovered`).
pub const FACT_PHASE: &str = "identify_phase";

/// Which side of identification a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its serial matches an expected-inventory record.
    Identified,
    /// Its serial matches nothing: it is in the discovered pool.
    Discovered,
}

impl Phase {
    /// The name stored in `facts.identify_phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Identified => "identified",
            Phase::Discovered => "discovered",
        }
    }
}

/// A hook call that is due, with everything needed to make it and commit its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The node.
    pub id: NodeId,
    /// Its serial.
    pub serial: Serial,
    /// The phase the call is for.
    pub phase: Phase,
    /// The node's inventory record when identified (static addresses are written into it).
    pub record: Option<InventoryRecord>,
    /// The request body.
    pub body: Value,
}

impl Pending {
    /// Idempotency key of this call's write `what`: serial, phase and the revision of the
    /// inventory record it is based on (0 in the discovered pool), the same on every leader.
    pub fn request_id(&self, what: &str) -> String {
        let basis: Revision = self.record.as_ref().map(|r| r.revision).unwrap_or(0);
        format!(
            "coordinator:identify/{}/{}/{basis}/{what}",
            self.serial,
            self.phase.as_str()
        )
    }
}

/// The phase `node` is in.
pub fn phase_of(state: &State, node: &Node) -> Phase {
    if state.is_identified(node) {
        Phase::Identified
    } else {
        Phase::Discovered
    }
}

/// The hook calls due in `state`: nodes whose recorded `facts.identify_phase` is not their
/// current phase. Retired nodes are left alone.
pub fn pending(state: &State) -> Vec<Pending> {
    state
        .nodes
        .values()
        .filter(|n| n.state != protocol::domain::NodeState::Retired)
        .filter_map(|n| {
            let phase = phase_of(state, n);
            let done = n.facts.0.get(FACT_PHASE).and_then(Value::as_str);
            if done == Some(phase.as_str()) {
                return None;
            }
            let body = json!({
                "serial": n.serial,
                "macs": n.macs,
                "rack": n.rack,
                "facts": n.facts.0,
            });
            Some(Pending {
                id: n.id,
                serial: n.serial.clone(),
                phase,
                record: state.inventory.get(&n.serial).cloned(),
                body,
            })
        })
        .collect()
}

/// One write to commit for a call: its idempotency key and command.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Idempotency key.
    pub request_id: String,
    /// The command.
    pub command: Command,
}

/// What to commit for the hook's `answer` to `call` (or its final error), in order: the
/// inventory import of static addresses if any, then the facts patch that records the phase
/// as done (last, so a crash in between leaves the call due).
pub fn writes(call: &Pending, answer: Result<Map<String, Value>, String>) -> Vec<Write> {
    let mut out = Vec::new();
    let mut facts = Map::new();
    let mut problems = Vec::new();
    match answer {
        Err(e) => problems.push(e),
        Ok(obj) => {
            if let Some(h) = obj.get("hostname") {
                match h.as_str() {
                    Some(h) if !h.is_empty() => {
                        facts.insert("hostname".into(), Value::String(h.to_owned()));
                    }
                    _ => problems.push(format!("hostname: expected a non-empty string, got {h}")),
                }
            }
            if let Some(ips) = obj.get("static_ips") {
                match (
                    serde_json::from_value::<Vec<StaticIp>>(ips.clone()),
                    &call.record,
                ) {
                    (Err(e), _) => problems.push(format!("static_ips: {e}")),
                    (Ok(_), None) => problems.push(format!(
                        "static_ips ignored: serial {} has no expected-inventory record to hold them",
                        call.serial
                    )),
                    (Ok(ips), Some(rec)) if ips != rec.static_ips => {
                        let mut record = rec.clone();
                        record.static_ips = ips;
                        out.push(Write {
                            request_id: call.request_id("static_ips"),
                            command: Command::ImportInventory(vec![ImportItem { record }]),
                        });
                    }
                    (Ok(_), Some(_)) => {}
                }
            }
            facts.insert(FACT_ANSWER.into(), Value::Object(obj));
        }
    }
    let error = if problems.is_empty() {
        Value::Null
    } else {
        Value::String(problems.join("; "))
    };
    facts.insert(FACT_ERROR.into(), error);
    facts.insert(FACT_PHASE.into(), Value::String(call.phase.as_str().into()));
    out.push(Write {
        request_id: call.request_id("facts"),
        command: Command::PatchNode {
            id: call.id,
            patch: NodePatch {
                facts: Some(JsonValue(Value::Object(facts))),
                ..NodePatch::default()
            },
        },
    });
    out
}

/// Why one call of the hook failed.
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("POST {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST {url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("POST {url}: the answer is not a JSON object")]
    NotObject { url: String },
}

/// The hook's HTTP side.
struct Hook {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl Hook {
    fn new(app: &App, url: reqwest::Url) -> Result<Hook, String> {
        let mut b = reqwest::Client::builder().timeout(app.config.identify_hook_timeout);
        if url.scheme() == "https" {
            let ca = reqwest::Certificate::from_pem(app.tls.ca_pem.as_bytes())
                .map_err(|e| format!("cluster CA: {e}"))?;
            b = b.add_root_certificate(ca);
        }
        let client = b.build().map_err(|e| e.to_string())?;
        Ok(Hook { url, client })
    }

    /// One call. Cancel-safe: dropping it abandons the request.
    async fn call(&self, body: &Value) -> Result<Map<String, Value>, HookError> {
        let url = self.url.to_string();
        let http = |source| HookError::Http {
            url: url.clone(),
            source,
        };
        let resp = self
            .client
            .post(self.url.clone())
            .json(body)
            .send()
            .await
            .map_err(http)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HookError::Status {
                url,
                status: status.as_u16(),
            });
        }
        match resp.json::<Value>().await.map_err(http)? {
            Value::Object(m) => Ok(m),
            _ => Err(HookError::NotObject { url }),
        }
    }
}

/// Starts the hook loop if `identify_hook_url` is configured. The loop holds only a weak
/// reference to the app and ends when the app is dropped or its Raft member stops.
pub fn spawn(app: &Arc<App>) {
    let Some(url) = app.config.identify_hook_url.clone() else {
        return;
    };
    let hook = match Hook::new(app, url) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(file = %app.config.file.display(), key = "identify_hook_url", error = %e, "identify hook disabled");
            return;
        }
    };
    let weak = Arc::downgrade(app);
    let metrics = app.raft.metrics();
    tokio::spawn(run(weak, hook, metrics));
}

async fn run(
    weak: Weak<App>,
    hook: Hook,
    mut metrics: tokio::sync::watch::Receiver<
        openraft::RaftMetrics<u64, protocol::domain::CoordinatorAddr>,
    >,
) {
    loop {
        // Poked by every applied entry, or after the poll interval.
        if let Ok(Err(_)) = tokio::time::timeout(POLL_INTERVAL, metrics.changed()).await {
            return; // Raft is gone.
        }
        let Some(app) = weak.upgrade() else { return };
        if !leads(&app) {
            continue;
        }
        let due = match app.state.read() {
            Ok(g) => pending(&g.state),
            Err(_) => {
                tracing::error!("state lock poisoned; identify hook stops");
                return;
            }
        };
        for call in due {
            if !leads(&app) {
                break;
            }
            if let Some(answer) = call_with_retries(&app, &hook, &call).await {
                commit(&app, &call, answer).await;
            }
        }
    }
}

fn leads(app: &App) -> bool {
    let m = app.raft.metrics().borrow().clone();
    m.current_leader == Some(app.config.id) && m.running_state.is_ok()
}

/// Calls the hook until it answers or [`MAX_ATTEMPTS`] are spent; `None` when leadership was
/// lost meanwhile (the next leader makes the call).
async fn call_with_retries(
    app: &App,
    hook: &Hook,
    call: &Pending,
) -> Option<Result<Map<String, Value>, String>> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match hook.call(&call.body).await {
            Ok(m) => return Some(Ok(m)),
            Err(e) if attempt >= MAX_ATTEMPTS => {
                tracing::warn!(serial = %call.serial, phase = call.phase.as_str(), attempts = attempt, error = %e, "identify hook failed; recording the error");
                return Some(Err(format!("after {attempt} attempts: {e}")));
            }
            Err(e) => {
                tracing::info!(serial = %call.serial, attempt, error = %e, "identify hook failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
        if !leads(app) {
            return None;
        }
    }
}

/// Commits the writes for an answer; a failed write is logged and the call stays due.
async fn commit(app: &App, call: &Pending, answer: Result<Map<String, Value>, String>) {
    let actor = format!("coordinator:{}", app.config.id);
    let mut writes = writes(call, answer);
    let mut import_error: Option<String> = None;
    let last = writes.len().saturating_sub(1);
    for (i, mut w) in writes.drain(..).enumerate() {
        if i == last {
            if let (Some(e), Command::PatchNode { patch, .. }) = (&import_error, &mut w.command) {
                add_error(patch, e);
            }
        }
        match app
            .write(actor.clone(), Some(w.request_id), w.command)
            .await
        {
            Ok(r) => match r.result {
                Ok(_) => {}
                Err(refusal) => {
                    tracing::warn!(serial = %call.serial, error = %refusal, "identify hook result refused");
                    if i == last {
                        return;
                    }
                    import_error = Some(format!("static_ips refused: {refusal}"));
                }
            },
            Err(e) => {
                tracing::warn!(serial = %call.serial, error = %e, "cannot commit identify hook result; will retry");
                return;
            }
        }
    }
}

/// Adds `e` to the patch's `identify_error`.
fn add_error(patch: &mut NodePatch, e: &str) {
    if let Some(JsonValue(Value::Object(f))) = patch.facts.as_mut() {
        let joined = match f.get(FACT_ERROR).and_then(Value::as_str) {
            Some(prev) => format!("{prev}; {e}"),
            None => e.to_owned(),
        };
        f.insert(FACT_ERROR.into(), Value::String(joined));
    }
}
