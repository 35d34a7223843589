//! `metalctl` workflow commands (issue 6): `workflow put|list|get|delete`, `run start|list|
//! get|logs|pause|resume|cancel`, `rollout create|list|get|pause|resume|abort|watch` and
//! `node events` — their arguments, the requests they make, and the renderings of the answers
//! (pure, so golden files pin them down). `rollout watch` and `node events --follow` print as
//! they go and return what is left to print.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use clap::{Args, Subcommand};
use protocol::domain::UnixMillis;
use protocol::error::{ErrorBody, ErrorCode};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::api::{Api, Body};
use super::args::Output;
use super::error::CliError;
use super::table::{fields, relative_ms, time_ms, Table, NONE};
use crate::app::now_ms;

/// How often `rollout watch` and `node events --follow` ask.
pub const POLL: Duration = Duration::from_secs(1);

/// `metalctl workflow ...`
#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// Store a template from a YAML file (its `version` is stored once; bump it to change).
    Put {
        /// The YAML file (`kind: Workflow`).
        file: std::path::PathBuf,
    },
    /// List templates and their versions.
    List,
    /// Show a template's YAML (the newest version unless `--version`).
    Get {
        /// Template name.
        name: String,
        /// Version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete a template (every version unless `--version`); refused while runs use it.
    Delete {
        /// Template name.
        name: String,
        /// Version.
        #[arg(long)]
        version: Option<u32>,
    },
}

/// `metalctl run ...`
#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Start a template on nodes (one run each).
    Start {
        /// Template name.
        workflow: String,
        /// Node ids or serials.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Template version (default: the newest).
        #[arg(long)]
        version: Option<u32>,
        /// A parameter: NAME=VALUE (VALUE read as JSON when it parses, else as text).
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// List runs, newest first.
    List {
        /// Only runs of this node.
        #[arg(long)]
        node: Option<String>,
        /// Only runs in this state (or `active`).
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this rollout.
        #[arg(long)]
        rollout: Option<u64>,
    },
    /// Show a run with its steps.
    Get {
        /// Run id.
        id: String,
    },
    /// Show a run's kept log lines.
    Logs {
        /// Run id.
        id: String,
        /// Only this step.
        #[arg(long)]
        step: Option<String>,
    },
    /// Pause a run before its next step.
    Pause {
        /// Run id.
        id: String,
    },
    /// Resume a paused run.
    Resume {
        /// Run id.
        id: String,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        id: String,
    },
}

/// `metalctl rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Apply a template to the selected nodes with concurrency limits and a failure budget.
    Create(RolloutCreate),
    /// List rollouts, newest first.
    List,
    /// Show a rollout's progress.
    Get {
        /// Rollout id.
        id: u64,
    },
    /// Start nothing new (running runs go on).
    Pause {
        /// Rollout id.
        id: u64,
    },
    /// Start runs again.
    Resume {
        /// Rollout id.
        id: u64,
        /// A new failure budget.
        #[arg(long)]
        failure_budget: Option<u32>,
    },
    /// Cancel running runs and drop waiting nodes.
    Abort {
        /// Rollout id.
        id: u64,
    },
    /// Follow a rollout until it ends (exit 0 when it succeeded).
    Watch {
        /// Rollout id.
        id: u64,
    },
}

/// `metalctl rollout create ...`
#[derive(Debug, Args)]
pub struct RolloutCreate {
    /// Template name.
    pub workflow: String,
    /// Template version (default: the newest).
    #[arg(long)]
    pub version: Option<u32>,
    /// A parameter: NAME=VALUE (VALUE read as JSON when it parses, else as text).
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Nodes in racks of this site.
    #[arg(long)]
    pub site: Option<String>,
    /// Nodes in this rack.
    #[arg(long)]
    pub rack: Option<String>,
    /// Nodes with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Nodes in this lifecycle state.
    #[arg(long)]
    pub state: Option<String>,
    /// Only these nodes (repeatable; ids or serials).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Runs in flight at most, overall.
    #[arg(long, default_value_t = 10)]
    pub max_in_flight: u32,
    /// Runs in flight at most per rack (default: --max-in-flight).
    #[arg(long)]
    pub max_per_rack: Option<u32>,
    /// Failed runs tolerated; one more pauses the rollout.
    #[arg(long, default_value_t = 0)]
    pub failure_budget: u32,
    /// Follow it until it ends, as `rollout watch` does.
    #[arg(long)]
    pub watch: bool,
}

/// `metalctl node events ...`
#[derive(Debug, Args)]
pub struct NodeEventsArgs {
    /// Node id or serial.
    pub id: String,
    /// Keep printing new entries until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// At most this many of the newest entries.
    #[arg(long)]
    pub limit: Option<usize>,
}

fn params(items: &[String]) -> Result<Value, CliError> {
    let mut m = Map::new();
    for p in items {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| CliError::Input(format!("--param {p:?}: expected NAME=VALUE")))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        m.insert(k.to_owned(), v);
    }
    Ok(Value::Object(m))
}

fn print(output: Output, v: &Value, table: impl FnOnce(&Value) -> String) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        Output::Table => table(v),
    }
}

async fn post(api: &Api, path: &[&str], body: Value) -> Result<Value, CliError> {
    api.call(Method::POST, path, &[], Body::Json(body))
        .await?
        .ok_or_else(|| CliError::BadResponse {
            url: path.join("/"),
            message: "empty body where a JSON document was expected".into(),
        })
}

/// `metalctl workflow ...`
pub async fn workflow(api: &Api, c: &WorkflowCmd, output: Output) -> Result<String, CliError> {
    match c {
        WorkflowCmd::Put { file } => {
            let text = std::fs::read(file)
                .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
            let name = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| serde_yaml_ng::from_str::<Value>(t).ok())
                .and_then(|v| v["name"].as_str().map(str::to_owned))
                .ok_or_else(|| {
                    CliError::Input(format!("{}: no template name found", file.display()))
                })?;
            let v = api
                .call(
                    Method::PUT,
                    &["v1", "workflows", &name],
                    &[],
                    Body::Raw {
                        content_type: "application/yaml",
                        bytes: text,
                    },
                )
                .await?
                .unwrap_or(Value::Null);
            Ok(print(output, &v, |v| {
                format!(
                    "Stored workflow {} version {} (versions: {}).\n",
                    name, v["version"], v["versions"]
                )
            }))
        }
        WorkflowCmd::List => {
            let v = api.get(&["v1", "workflows"], &[]).await?;
            Ok(print(output, &v, workflows))
        }
        WorkflowCmd::Get { name, version } => {
            let q: Vec<(&str, String)> =
                version.iter().map(|v| ("version", v.to_string())).collect();
            let v = api.get(&["v1", "workflows", name], &q).await?;
            Ok(print(output, &v, |v| {
                v["source"].as_str().unwrap_or_default().to_owned()
            }))
        }
        WorkflowCmd::Delete { name, version } => {
            let q: Vec<(&str, String)> =
                version.iter().map(|v| ("version", v.to_string())).collect();
            api.call(Method::DELETE, &["v1", "workflows", name], &q, Body::Empty)
                .await?;
            Ok(match output {
                Output::Json => String::new(),
                Output::Table => format!("Deleted workflow {name}.\n"),
            })
        }
    }
}

/// `metalctl run ...`
pub async fn run(api: &Api, c: &RunCmd, output: Output) -> Result<String, CliError> {
    let now = now_ms();
    match c {
        RunCmd::Start {
            workflow,
            nodes,
            version,
            params: p,
        } => {
            let body = json!({"workflow": workflow, "version": version, "params": params(p)?,
                              "nodes": nodes});
            let v = post(api, &["v1", "runs"], body).await?;
            Ok(print(output, &v, |v| runs(v, now)))
        }
        RunCmd::List {
            node,
            state,
            rollout,
        } => {
            let mut q = Vec::new();
            if let Some(n) = node {
                q.push(("node", n.clone()));
            }
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            if let Some(r) = rollout {
                q.push(("rollout", r.to_string()));
            }
            let v = api.get(&["v1", "runs"], &q).await?;
            Ok(print(output, &v, |v| runs(v, now)))
        }
        RunCmd::Get { id } => {
            let v = api.get(&["v1", "runs", id], &[]).await?;
            Ok(print(output, &v, |v| run_detail(v, now)))
        }
        RunCmd::Logs { id, step } => {
            let q: Vec<(&str, String)> = step.iter().map(|s| ("step", s.clone())).collect();
            let v = api.get(&["v1", "runs", id, "logs"], &q).await?;
            Ok(print(output, &v, logs))
        }
        RunCmd::Pause { id } | RunCmd::Resume { id } | RunCmd::Cancel { id } => {
            let action = match c {
                RunCmd::Pause { .. } => "pause",
                RunCmd::Resume { .. } => "resume",
                _ => "cancel",
            };
            let v = post(api, &["v1", "runs", id, action], json!({})).await?;
            Ok(print(output, &v, |v| run_detail(v, now)))
        }
    }
}

/// `metalctl rollout ...`
pub async fn rollout(api: &Api, c: &RolloutCmd, output: Output) -> Result<String, CliError> {
    let now = now_ms();
    match c {
        RolloutCmd::Create(a) => {
            let mut sel = Map::new();
            if let Some(s) = &a.site {
                sel.insert("site".into(), json!(s));
            }
            if let Some(r) = &a.rack {
                sel.insert("rack".into(), json!(r));
            }
            if !a.tags.is_empty() {
                sel.insert("tags".into(), json!(a.tags));
            }
            if let Some(s) = &a.state {
                sel.insert("state".into(), json!(s));
            }
            if !a.nodes.is_empty() {
                sel.insert("nodes".into(), json!(a.nodes));
            }
            let body = json!({"workflow": a.workflow, "version": a.version,
                              "params": params(&a.params)?, "selector": sel,
                              "max_in_flight": a.max_in_flight, "max_per_rack": a.max_per_rack,
                              "failure_budget": a.failure_budget});
            let v = post(api, &["v1", "rollouts"], body).await?;
            if a.watch {
                let id = v["id"].as_u64().unwrap_or_default();
                return watch(api, id, output).await;
            }
            Ok(print(output, &v, |v| rollout_detail(v, now)))
        }
        RolloutCmd::List => {
            let v = api.get(&["v1", "rollouts"], &[]).await?;
            Ok(print(output, &v, |v| rollouts(v, now)))
        }
        RolloutCmd::Get { id } => {
            let v = api.get(&["v1", "rollouts", &id.to_string()], &[]).await?;
            Ok(print(output, &v, |v| rollout_detail(v, now)))
        }
        RolloutCmd::Pause { id } | RolloutCmd::Abort { id } => {
            let action = if matches!(c, RolloutCmd::Pause { .. }) {
                "pause"
            } else {
                "abort"
            };
            let v = post(api, &["v1", "rollouts", &id.to_string(), action], json!({})).await?;
            Ok(print(output, &v, |v| rollout_detail(v, now)))
        }
        RolloutCmd::Resume { id, failure_budget } => {
            let v = post(
                api,
                &["v1", "rollouts", &id.to_string(), "resume"],
                json!({"failure_budget": failure_budget}),
            )
            .await?;
            Ok(print(output, &v, |v| rollout_detail(v, now)))
        }
        RolloutCmd::Watch { id } => watch(api, *id, output).await,
    }
}

/// Follows rollout `id` until it ends: a redrawn display on a terminal, one line per change
/// otherwise. Succeeds only when the rollout succeeded.
async fn watch(api: &Api, id: u64, output: Output) -> Result<String, CliError> {
    let tty = std::io::stdout().is_terminal() && output == Output::Table;
    let mut last = String::new();
    loop {
        let v = api.get(&["v1", "rollouts", &id.to_string()], &[]).await?;
        let state = v["state"].as_str().unwrap_or_default().to_owned();
        let text = if tty {
            format!("\x1b[2J\x1b[H{}", watch_screen(&v, now_ms()))
        } else {
            watch_line(&v)
        };
        if text != last {
            let mut out = std::io::stdout().lock();
            // A closed pipe is not a failure of the watch.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            last = text;
        }
        if matches!(state.as_str(), "succeeded" | "failed" | "aborted") {
            let tail = match output {
                Output::Json => serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
                Output::Table => String::new(),
            };
            if state == "succeeded" {
                return Ok(tail);
            }
            if !tail.is_empty() {
                print!("{tail}");
            }
            return Err(CliError::Api(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "rollout {id} {state}: {}",
                    v["reason"].as_str().unwrap_or("no reason given")
                ),
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `metalctl node events ...`
pub async fn node_events(
    api: &Api,
    a: &NodeEventsArgs,
    output: Output,
) -> Result<String, CliError> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(l) = a.limit {
        q.push(("limit", l.to_string()));
    }
    let v = api.get(&["v1", "nodes", &a.id, "events"], &q).await?;
    if !a.follow {
        return Ok(print(output, &v, |v| events(v, now_ms())));
    }
    let mut since = 0;
    let mut first = true;
    let mut v = v;
    loop {
        let items = v.as_array().cloned().unwrap_or_default();
        for e in &items {
            since = since.max(e["revision"].as_u64().unwrap_or(0));
        }
        let text = match output {
            Output::Json => items
                .iter()
                .map(|e| serde_json::to_string(e).unwrap_or_default() + "\n")
                .collect(),
            Output::Table if first => events(&Value::Array(items), now_ms()),
            Output::Table => event_lines(&items),
        };
        first = false;
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(String::new());
        }
        drop(out);
        tokio::time::sleep(POLL).await;
        v = api
            .get(
                &["v1", "nodes", &a.id, "events"],
                &[("since", since.to_string())],
            )
            .await?;
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => NONE.to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> UnixMillis {
    v.as_i64().unwrap_or(0)
}

/// Templates and their versions.
pub fn workflows(v: &Value) -> String {
    let mut t = Table::new(["NAME", "VERSIONS", "DESCRIPTION"]);
    for w in v.as_array().into_iter().flatten() {
        let versions: Vec<String> = w["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x.to_string())
            .collect();
        t.row([s(&w["name"]), versions.join(","), s(&w["description"])]);
    }
    t.render()
}

fn current_step(r: &Value) -> String {
    r["status"]["current"]
        .as_u64()
        .and_then(|i| r["status"]["steps"].get(usize::try_from(i).ok()?))
        .map(|x| s(&x["name"]))
        .unwrap_or_else(|| NONE.to_owned())
}

/// Runs (as the API lists them).
pub fn runs(v: &Value, now: UnixMillis) -> String {
    let mut t = Table::new([
        "ID", "WORKFLOW", "NODE", "RACK", "STATE", "CONTROL", "STEP", "UPDATED",
    ]);
    for r in v.as_array().into_iter().flatten() {
        t.row([
            s(&r["id"]),
            format!("{} v{}", s(&r["workflow"]), r["version"]),
            s(&r["node"]),
            s(&r["rack"]),
            s(&r["status"]["state"]),
            s(&r["control"]),
            current_step(r),
            relative_ms(ms(&r["updated_at"]), now),
        ]);
    }
    t.render()
}

/// One run with its steps.
pub fn run_detail(r: &Value, now: UnixMillis) -> String {
    let mut out = fields([
        ("Run", s(&r["id"])),
        (
            "Workflow",
            format!("{} v{}", s(&r["workflow"]), r["version"]),
        ),
        ("Node", s(&r["node"])),
        ("Rack", s(&r["rack"])),
        ("State", s(&r["status"]["state"])),
        ("Control", s(&r["control"])),
        ("Rollout", s(&r["rollout"])),
        ("Message", s(&r["status"]["message"])),
        ("Actor", s(&r["actor"])),
        ("Created", time_ms(ms(&r["created_at"]))),
        ("Updated", relative_ms(ms(&r["updated_at"]), now)),
    ]);
    out.push('\n');
    let mut t = Table::new([
        "#", "STEP", "STATE", "ATTEMPTS", "EXIT", "PROGRESS", "MESSAGE",
    ]);
    for (i, st) in r["status"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let progress = match &st["progress"] {
            Value::Null => NONE.to_owned(),
            p => format!("{}% {}", p["percent"], s(&p["message"])),
        };
        t.row([
            i.to_string(),
            s(&st["name"]),
            s(&st["state"]),
            s(&st["attempts"]),
            s(&st["exit_code"]),
            progress,
            s(&st["message"]),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// Kept log lines, per step.
pub fn logs(v: &Value) -> String {
    let mut out = String::new();
    for l in v.as_array().into_iter().flatten() {
        out.push_str(&format!("==> {} <==\n", s(&l["step"])));
        if l["dropped"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!("({} older lines dropped)\n", l["dropped"]));
        }
        for line in l["lines"].as_array().into_iter().flatten() {
            out.push_str(line.as_str().unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

fn event_what(e: &Value) -> String {
    let mut what = s(&e["message"]);
    if let Some(attempt) = e["attempt"].as_u64().filter(|a| *a > 1) {
        if !what.contains("attempt") {
            what.push_str(&format!(" (attempt {attempt})"));
        }
    }
    what
}

/// A node's timeline, oldest first.
pub fn events(v: &Value, _now: UnixMillis) -> String {
    let mut t = Table::new(["TIME", "REV", "RACK/SEQ", "KIND", "RUN", "WHAT"]);
    for e in v.as_array().into_iter().flatten() {
        let origin = match (&e["rack"], &e["seq"]) {
            (Value::String(r), Value::Number(n)) => format!("{r}/{n}"),
            _ => NONE.to_owned(),
        };
        t.row([
            time_ms(ms(&e["at"])),
            s(&e["revision"]),
            origin,
            s(&e["kind"]),
            s(&e["run"]),
            event_what(e),
        ]);
    }
    t.render()
}

fn event_lines(items: &[Value]) -> String {
    items
        .iter()
        .map(|e| {
            format!(
                "{}  {}  {}\n",
                time_ms(ms(&e["at"])),
                s(&e["kind"]),
                event_what(e)
            )
        })
        .collect()
}

fn counts_text(counts: &Value) -> String {
    let order = [
        "waiting",
        "pending",
        "running",
        "paused",
        "succeeded",
        "failed",
        "cancelled",
        "skipped",
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|k| counts[*k].as_u64().map(|n| format!("{n} {k}")))
        .collect();
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join(", ")
    }
}

/// Rollouts (as the API lists them).
pub fn rollouts(v: &Value, now: UnixMillis) -> String {
    let mut t = Table::new(["ID", "WORKFLOW", "STATE", "NODES", "PROGRESS", "UPDATED"]);
    for r in v.as_array().into_iter().flatten() {
        t.row([
            s(&r["id"]),
            format!("{} v{}", s(&r["workflow"]), r["version"]),
            s(&r["state"]),
            s(&r["progress"]["total"]),
            counts_text(&r["progress"]["counts"]),
            relative_ms(ms(&r["updated_at"]), now),
        ]);
    }
    t.render()
}

/// One rollout with every node.
pub fn rollout_detail(r: &Value, now: UnixMillis) -> String {
    let mut out = fields([
        ("Rollout", s(&r["id"])),
        (
            "Workflow",
            format!("{} v{}", s(&r["workflow"]), r["version"]),
        ),
        ("State", s(&r["state"])),
        ("Reason", s(&r["reason"])),
        (
            "Limits",
            format!(
                "{} in flight, {} per rack, failure budget {} ({} failed)",
                r["max_in_flight"], r["max_per_rack"], r["failure_budget"], r["failed"]
            ),
        ),
        ("Progress", counts_text(&r["progress"]["counts"])),
        ("Actor", s(&r["actor"])),
        ("Created", time_ms(ms(&r["created_at"]))),
        ("Updated", relative_ms(ms(&r["updated_at"]), now)),
    ]);
    out.push('\n');
    out.push_str(&rollout_nodes(r));
    out
}

fn rollout_nodes(r: &Value) -> String {
    let mut t = Table::new(["RACK", "NODE", "RUN", "STATE", "STEP", "MESSAGE"]);
    let mut nodes: Vec<&Value> = r["progress"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    nodes.sort_by_key(|n| (s(&n["rack"]), s(&n["node"])));
    for n in nodes {
        t.row([
            s(&n["rack"]),
            s(&n["node"]),
            s(&n["run"]),
            s(&n["state"]),
            s(&n["step"]),
            s(&n["message"]),
        ]);
    }
    t.render()
}

/// A bar of `width` cells: `#` done, `>` in flight, `.` the rest.
fn bar(done: u64, active: u64, total: u64, width: u64) -> String {
    if total == 0 {
        return " ".repeat(usize::try_from(width).unwrap_or(0));
    }
    let d = done * width / total;
    let a = ((done + active) * width / total).saturating_sub(d);
    let rest = width.saturating_sub(d + a);
    let cells = |c: &str, n: u64| c.repeat(usize::try_from(n).unwrap_or(0));
    format!("{}{}{}", cells("#", d), cells(">", a), cells(".", rest))
}

fn count(m: &Value, keys: &[&str]) -> u64 {
    keys.iter().filter_map(|k| m[*k].as_u64()).sum()
}

const DONE: [&str; 4] = ["succeeded", "failed", "cancelled", "skipped"];
const ACTIVE: [&str; 3] = ["pending", "running", "paused"];

/// The live display of `rollout watch` on a terminal: a bar per rack, the counts, and each
/// node's current step.
pub fn watch_screen(r: &Value, now: UnixMillis) -> String {
    let mut out = format!(
        "rollout {} {} v{}: {} ({})\n",
        s(&r["id"]),
        s(&r["workflow"]),
        r["version"],
        s(&r["state"]),
        counts_text(&r["progress"]["counts"])
    );
    if let Some(reason) = r["reason"].as_str() {
        out.push_str(&format!("reason: {reason}\n"));
    }
    out.push('\n');
    let racks: BTreeMap<String, Value> = r["progress"]["racks"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut t = Table::new(["RACK", "PROGRESS", "DONE", "ACTIVE", "FAILED"]);
    for (rack, m) in &racks {
        let total: u64 = m
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let (done, active) = (count(m, &DONE), count(m, &ACTIVE));
        t.row([
            rack.clone(),
            format!("[{}]", bar(done, active, total, 30)),
            format!("{done}/{total}"),
            active.to_string(),
            count(m, &["failed"]).to_string(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(&rollout_nodes(r));
    out.push_str(&format!(
        "\nupdated {}\n",
        relative_ms(ms(&r["updated_at"]), now)
    ));
    out
}

/// One line of `rollout watch` when stdout is not a terminal.
pub fn watch_line(r: &Value) -> String {
    let steps: Vec<String> = r["progress"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| matches!(n["state"].as_str(), Some("running" | "paused")))
        .map(|n| format!("{}:{}", s(&n["node"]), s(&n["step"])))
        .collect();
    let mut line = format!(
        "rollout {} {}: {}",
        s(&r["id"]),
        s(&r["state"]),
        counts_text(&r["progress"]["counts"])
    );
    if !steps.is_empty() {
        line.push_str(&format!(" | {}", steps.join(" ")));
    }
    if let Some(reason) = r["reason"].as_str() {
        line.push_str(&format!(" | {reason}"));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn params_parse_json_or_text() {
        let v = params(&["a=1".into(), "b=5m".into(), "c=[1,2]".into()]).unwrap();
        assert_eq!(v, json!({"a": 1, "b": "5m", "c": [1, 2]}));
        assert!(params(&["nope".into()]).is_err());
    }

    #[test]
    fn bars_fill_in_order() {
        assert_eq!(bar(1, 1, 4, 8), "##>>....");
        assert_eq!(bar(4, 0, 4, 4), "####");
        assert_eq!(bar(0, 0, 0, 3), "   ");
    }
}
