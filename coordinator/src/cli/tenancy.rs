//! `metalctl` tenancy commands (issue 7): `network`, `node allocate|free|attach|detach|revert|
//! power|move|ports`, `job` and `lease` — their arguments, the requests they make, and the
//! table renderings of the answers (pure, so golden files pin them down).

use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use protocol::domain::UnixMillis;
use protocol::fleet::PortConfig;
use protocol::tenancy::{Job, JobKind, LeaseWindow, Network, StepState, SwitchPort};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::api::{Api, Body};
use super::error::CliError;
use super::table::{fields, list, opt, relative_ms, time_ms, Table, NONE};
use crate::api::LeaseView;

/// How often `--wait` and `job wait` look at a job.
pub const WAIT_POLL: Duration = Duration::from_millis(250);
/// Default bound of `--wait` and `job wait`.
pub const DEFAULT_WAIT_SECS: u64 = 300;

/// `metalctl network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List the networks you may see.
    List,
    /// Show one network.
    Get {
        /// Network name.
        name: String,
    },
    /// Create a network (tenant networks take the lowest free VLAN of the pool).
    Create {
        /// Network name.
        name: String,
        /// What it is for.
        #[arg(long, value_enum, default_value_t = KindArg::Tenant)]
        kind: KindArg,
        /// Owning project of a tenant network (project members: their own by default).
        #[arg(long)]
        owner: Option<String>,
        /// VLAN id of a public, provisioning or BMC network (admins only).
        #[arg(long)]
        vlan: Option<u16>,
    },
    /// Delete a network (refused while attached); its VLAN returns to the pool.
    Delete {
        /// Network name.
        name: String,
    },
    /// Let another project attach its nodes to a tenant network.
    Grant {
        /// Network name.
        name: String,
        /// Project.
        project: String,
    },
    /// Withdraw a project's access (refused while its nodes are attached).
    Revoke {
        /// Network name.
        name: String,
        /// Project.
        project: String,
    },
}

/// Network kinds on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A project's network.
    Tenant,
    /// Shared by every project.
    Public,
    /// The provisioning network (admins and operators attach it).
    Provisioning,
    /// The BMC network (admins and operators attach it).
    Bmc,
}

impl KindArg {
    fn as_str(self) -> &'static str {
        match self {
            KindArg::Tenant => "tenant",
            KindArg::Public => "public",
            KindArg::Provisioning => "provisioning",
            KindArg::Bmc => "bmc",
        }
    }
}

/// Attachment modes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Untagged.
    Access,
    /// 802.1Q-tagged.
    Trunk,
}

impl ModeArg {
    fn as_str(self) -> &'static str {
        match self {
            ModeArg::Access => "access",
            ModeArg::Trunk => "trunk",
        }
    }
}

/// Power states on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PowerArg {
    /// Power on.
    On,
    /// Power off.
    Off,
}

/// `metalctl node allocate|free|attach|detach|revert|power|move|ports`.
#[derive(Debug, Subcommand)]
pub enum NodeTenancyCmd {
    /// Give a node of the free pool to a project.
    Allocate {
        /// Node id or serial.
        id: String,
        /// Project (project members: their own by default).
        #[arg(long)]
        project: Option<String>,
    },
    /// Return a node to the free pool (refused while any NIC is attached).
    Free {
        /// Node id or serial.
        id: String,
    },
    /// Attach a NIC to a network (a job).
    Attach {
        /// Node id or serial.
        id: String,
        /// NIC name.
        nic: String,
        /// Network name.
        network: String,
        /// Untagged (access) or tagged (trunk).
        #[arg(long, value_enum, default_value_t = ModeArg::Access)]
        mode: ModeArg,
        /// Wait until the job is done or failed.
        #[arg(long)]
        wait: bool,
    },
    /// Detach a NIC from a network (a job).
    Detach {
        /// Node id or serial.
        id: String,
        /// NIC name.
        nic: String,
        /// Network name.
        network: String,
        /// Wait until the job is done or failed.
        #[arg(long)]
        wait: bool,
    },
    /// Revert a NIC's switch port to carry nothing (a job).
    Revert {
        /// Node id or serial.
        id: String,
        /// NIC name.
        nic: String,
        /// Wait until the job is done or failed.
        #[arg(long)]
        wait: bool,
    },
    /// Power a node on or off through its BMC (a job).
    Power {
        /// Node id or serial.
        id: String,
        /// on or off.
        #[arg(value_enum)]
        state: PowerArg,
        /// Wait until the job is done or failed.
        #[arg(long)]
        wait: bool,
    },
    /// Move a node to another project: power off, detach, reassign, attach, power on (a job).
    Move {
        /// Node id or serial.
        id: String,
        /// Target project.
        project: String,
        /// A network to attach in the target project: NIC=NETWORK or NIC=NETWORK:trunk.
        #[arg(long = "attach", value_name = "NIC=NETWORK[:trunk]")]
        attach: Vec<String>,
        /// Wait until the job is done or failed.
        #[arg(long)]
        wait: bool,
    },
    /// Show a node's switch ports, their networks and what the switch reported.
    Ports {
        /// Node id or serial.
        id: String,
    },
}

/// `metalctl job ...`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs you may see, newest first.
    List {
        /// Only this node (id).
        #[arg(long)]
        node: Option<String>,
        /// Only jobs in this state (pending, running, done, failed).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one job with its per-port results.
    Get {
        /// Job id.
        id: u64,
    },
    /// Wait until a job is done or failed, then show it (exit 5 when it failed).
    Wait {
        /// Job id.
        id: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = DEFAULT_WAIT_SECS)]
        timeout: u64,
    },
}

/// `metalctl lease ...`
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// List leases you may see.
    List,
    /// Show one lease.
    Get {
        /// Lease id.
        id: u64,
    },
    /// Lend a node to a project: every day (`--daily 00:00-06:00`, UTC) or once
    /// (`--from`/`--until`, unix ms).
    Create {
        /// Node id or serial.
        node: String,
        /// Borrowing project.
        project: String,
        /// Daily window `HH:MM-HH:MM` (UTC).
        #[arg(long, conflicts_with_all = ["from", "until"])]
        daily: Option<String>,
        /// One-time window start (unix ms).
        #[arg(long, requires = "until")]
        from: Option<i64>,
        /// One-time window end (unix ms).
        #[arg(long, requires = "from")]
        until: Option<i64>,
    },
    /// End a lease for good (a lent node is taken back first).
    Cancel {
        /// Lease id.
        id: u64,
    },
}

/// Which shape a tenancy answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenancyView {
    /// A list of networks.
    Networks,
    /// One network.
    Network,
    /// A list of jobs.
    Jobs,
    /// One job.
    Job,
    /// A node's switch ports.
    Ports,
    /// A list of leases.
    Leases,
    /// One lease.
    Lease,
}

/// What a tenancy command got back, before formatting.
#[derive(Debug)]
pub enum TenancyAnswer {
    /// A JSON document of a known shape.
    Doc(TenancyView, Value),
    /// A write answered with 204: the sentence saying what was done.
    Done(String),
    /// A job that failed (`--wait`, `job wait`): shown, then the command fails.
    Failed(Value),
}

async fn doc(api: &Api, method: Method, path: &[&str], body: Body) -> Result<Value, CliError> {
    api.call(method, path, &[], body)
        .await?
        .ok_or_else(|| CliError::BadResponse {
            url: path.join("/"),
            message: "empty body where a JSON document was expected".into(),
        })
}

async fn done(
    api: &Api,
    method: Method,
    path: &[&str],
    what: String,
) -> Result<TenancyAnswer, CliError> {
    api.call(method, path, &[], Body::Empty).await?;
    Ok(TenancyAnswer::Done(what))
}

/// Runs `metalctl network ...`.
pub async fn network(api: &Api, c: &NetworkCmd) -> Result<TenancyAnswer, CliError> {
    use TenancyView as V;
    Ok(match c {
        NetworkCmd::List => {
            TenancyAnswer::Doc(V::Networks, api.get(&["v1", "networks"], &[]).await?)
        }
        NetworkCmd::Get { name } => {
            TenancyAnswer::Doc(V::Network, api.get(&["v1", "networks", name], &[]).await?)
        }
        NetworkCmd::Create {
            name,
            kind,
            owner,
            vlan,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("kind".into(), json!(kind.as_str()));
            if let Some(o) = owner {
                body.insert("owner".into(), json!(o));
            }
            if let Some(v) = vlan {
                body.insert("vlan".into(), json!(v));
            }
            let v = doc(
                api,
                Method::POST,
                &["v1", "networks"],
                Body::Json(Value::Object(body)),
            )
            .await?;
            TenancyAnswer::Doc(V::Network, v)
        }
        NetworkCmd::Delete { name } => {
            done(
                api,
                Method::DELETE,
                &["v1", "networks", name],
                format!("Deleted network {name}."),
            )
            .await?
        }
        NetworkCmd::Grant { name, project } => {
            done(
                api,
                Method::PUT,
                &["v1", "networks", name, "access", project],
                format!("Project {project} may attach to network {name}."),
            )
            .await?
        }
        NetworkCmd::Revoke { name, project } => {
            done(
                api,
                Method::DELETE,
                &["v1", "networks", name, "access", project],
                format!("Project {project} no longer has access to network {name}."),
            )
            .await?
        }
    })
}

/// Parses `NIC=NETWORK[:trunk|:access]` of `node move --attach`.
pub fn parse_attach(s: &str) -> Result<Value, CliError> {
    let bad = || {
        CliError::Input(format!(
            "--attach {s:?}: expected NIC=NETWORK or NIC=NETWORK:trunk"
        ))
    };
    let (nic, rest) = s.split_once('=').ok_or_else(bad)?;
    let (network, mode) = match rest.split_once(':') {
        None => (rest, "access"),
        Some((n, m @ ("trunk" | "access"))) => (n, m),
        Some(_) => return Err(bad()),
    };
    if nic.is_empty() || network.is_empty() {
        return Err(bad());
    }
    Ok(json!({"nic": nic, "network": network, "mode": mode}))
}

async fn job_request(
    api: &Api,
    path: &[&str],
    body: Value,
    wait: bool,
) -> Result<TenancyAnswer, CliError> {
    let job = doc(api, Method::POST, path, Body::Json(body)).await?;
    if !wait {
        return Ok(TenancyAnswer::Doc(TenancyView::Job, job));
    }
    let id = job["id"].as_u64().ok_or_else(|| CliError::BadResponse {
        url: path.join("/"),
        message: "202 without a job id".into(),
    })?;
    wait_job(api, id, Duration::from_secs(DEFAULT_WAIT_SECS)).await
}

/// Polls job `id` until it is done or failed.
pub async fn wait_job(api: &Api, id: u64, timeout: Duration) -> Result<TenancyAnswer, CliError> {
    let id_s = id.to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let j = api.get(&["v1", "jobs", &id_s], &[]).await?;
        match j["state"].as_str() {
            Some("done") => return Ok(TenancyAnswer::Doc(TenancyView::Job, j)),
            Some("failed") => return Ok(TenancyAnswer::Failed(j)),
            _ if Instant::now() >= deadline => {
                return Err(CliError::Input(format!(
                    "job {id} is still {} after {}s; follow it with `metalctl job get {id}`",
                    j["state"].as_str().unwrap_or("unknown"),
                    timeout.as_secs()
                )))
            }
            _ => tokio::time::sleep(WAIT_POLL).await,
        }
    }
}

/// Runs `metalctl node allocate|free|attach|...`.
pub async fn node(api: &Api, c: &NodeTenancyCmd) -> Result<TenancyAnswer, CliError> {
    Ok(match c {
        NodeTenancyCmd::Allocate { id, project } => {
            let body = match project {
                Some(p) => json!({"project": p}),
                None => json!({}),
            };
            let v = doc(
                api,
                Method::POST,
                &["v1", "nodes", id, "allocate"],
                Body::Json(body),
            )
            .await?;
            TenancyAnswer::Done(format!(
                "Node {id} allocated to project {}.",
                v["project"].as_str().unwrap_or(NONE)
            ))
        }
        NodeTenancyCmd::Free { id } => {
            doc(
                api,
                Method::POST,
                &["v1", "nodes", id, "free"],
                Body::Json(json!({})),
            )
            .await?;
            TenancyAnswer::Done(format!("Node {id} returned to the free pool."))
        }
        NodeTenancyCmd::Attach {
            id,
            nic,
            network,
            mode,
            wait,
        } => {
            let body = json!({"nic": nic, "network": network, "mode": mode.as_str()});
            job_request(api, &["v1", "nodes", id, "attach"], body, *wait).await?
        }
        NodeTenancyCmd::Detach {
            id,
            nic,
            network,
            wait,
        } => {
            let body = json!({"nic": nic, "network": network});
            job_request(api, &["v1", "nodes", id, "detach"], body, *wait).await?
        }
        NodeTenancyCmd::Revert { id, nic, wait } => {
            job_request(
                api,
                &["v1", "nodes", id, "revert"],
                json!({"nic": nic}),
                *wait,
            )
            .await?
        }
        NodeTenancyCmd::Power { id, state, wait } => {
            let body = json!({"on": *state == PowerArg::On});
            job_request(api, &["v1", "nodes", id, "power"], body, *wait).await?
        }
        NodeTenancyCmd::Move {
            id,
            project,
            attach,
            wait,
        } => {
            let networks = attach
                .iter()
                .map(|a| parse_attach(a))
                .collect::<Result<Vec<_>, _>>()?;
            let body = json!({"project": project, "networks": networks});
            job_request(api, &["v1", "nodes", id, "move"], body, *wait).await?
        }
        NodeTenancyCmd::Ports { id } => TenancyAnswer::Doc(
            TenancyView::Ports,
            api.get(&["v1", "nodes", id, "ports"], &[]).await?,
        ),
    })
}

/// Runs `metalctl job ...`.
pub async fn job(api: &Api, c: &JobCmd) -> Result<TenancyAnswer, CliError> {
    Ok(match c {
        JobCmd::List { node, state, limit } => {
            let mut q = Vec::new();
            if let Some(n) = node {
                q.push(("node", n.clone()));
            }
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            TenancyAnswer::Doc(TenancyView::Jobs, api.get(&["v1", "jobs"], &q).await?)
        }
        JobCmd::Get { id } => TenancyAnswer::Doc(
            TenancyView::Job,
            api.get(&["v1", "jobs", &id.to_string()], &[]).await?,
        ),
        JobCmd::Wait { id, timeout } => wait_job(api, *id, Duration::from_secs(*timeout)).await?,
    })
}

/// The lease window of `lease create`'s flags.
pub fn window(
    daily: Option<&str>,
    from: Option<i64>,
    until: Option<i64>,
) -> Result<Value, CliError> {
    match (daily, from, until) {
        (Some(d), None, None) => {
            let (start, end) = d
                .split_once('-')
                .ok_or_else(|| CliError::Input(format!("--daily {d:?}: expected HH:MM-HH:MM")))?;
            Ok(json!({"start": start, "end": end, "tz": "UTC"}))
        }
        (None, Some(f), Some(u)) => Ok(json!({"from": f, "until": u})),
        _ => Err(CliError::Input(
            "give --daily HH:MM-HH:MM, or --from and --until (unix ms)".into(),
        )),
    }
}

/// Runs `metalctl lease ...`.
pub async fn lease(api: &Api, c: &LeaseCmd) -> Result<TenancyAnswer, CliError> {
    Ok(match c {
        LeaseCmd::List => {
            TenancyAnswer::Doc(TenancyView::Leases, api.get(&["v1", "leases"], &[]).await?)
        }
        LeaseCmd::Get { id } => TenancyAnswer::Doc(
            TenancyView::Lease,
            api.get(&["v1", "leases", &id.to_string()], &[]).await?,
        ),
        LeaseCmd::Create {
            node,
            project,
            daily,
            from,
            until,
        } => {
            let body = json!({"node": node, "project": project,
                              "window": window(daily.as_deref(), *from, *until)?});
            let v = doc(api, Method::POST, &["v1", "leases"], Body::Json(body)).await?;
            TenancyAnswer::Doc(TenancyView::Lease, v)
        }
        LeaseCmd::Cancel { id } => {
            let v = doc(
                api,
                Method::DELETE,
                &["v1", "leases", &id.to_string()],
                Body::Empty,
            )
            .await?;
            TenancyAnswer::Doc(TenancyView::Lease, v)
        }
    })
}

/// Renders a tenancy answer of shape `view`, with relative times counted back from `now`.
pub fn render(view: TenancyView, v: &Value, now: UnixMillis) -> Result<String, serde_json::Error> {
    fn de<T: DeserializeOwned>(v: &Value) -> Result<T, serde_json::Error> {
        T::deserialize(v)
    }
    Ok(match view {
        TenancyView::Networks => networks(&de::<Vec<Network>>(v)?),
        TenancyView::Network => network_detail(&de(v)?),
        TenancyView::Jobs => jobs(&de::<Vec<Job>>(v)?, now),
        TenancyView::Job => job_detail(&de(v)?, now),
        TenancyView::Ports => ports(&de::<Vec<SwitchPort>>(v)?),
        TenancyView::Leases => leases(&de::<Vec<LeaseView>>(v)?),
        TenancyView::Lease => lease_detail(&de(v)?, now),
    })
}

/// Networks by name.
pub fn networks(items: &[Network]) -> String {
    let mut items: Vec<&Network> = items.iter().collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new(["NAME", "KIND", "VLAN", "OWNER", "ACCESS"]);
    for n in items {
        t.row([
            n.name.to_string(),
            n.kind.as_str().to_owned(),
            n.vlan.to_string(),
            opt(n.owner.as_ref()),
            list(&n.access),
        ]);
    }
    t.render()
}

/// One network.
pub fn network_detail(n: &Network) -> String {
    fields([
        ("Name", n.name.to_string()),
        ("Kind", n.kind.as_str().to_owned()),
        ("VLAN", n.vlan.to_string()),
        ("Owner", opt(n.owner.as_ref())),
        ("Access", list(&n.access)),
        ("Created", time_ms(n.created_at)),
        ("Revision", n.revision.to_string()),
    ])
}

/// What a job does, in a few words.
fn job_what(j: &Job) -> String {
    match &j.kind {
        JobKind::Attach { nic, network, mode } => format!("{nic} -> {network} ({})", mode.as_str()),
        JobKind::Detach { nic, network } => format!("{nic} -x {network}"),
        JobKind::Revert { nic } => format!("{nic} -> nothing"),
        JobKind::Power { on } => (if *on { "on" } else { "off" }).to_owned(),
        JobKind::Move(t) | JobKind::LeaseStart(t) | JobKind::LeaseEnd(t) => format!(
            "{} -> {} ({})",
            opt(t.from.as_ref()),
            opt(t.to.as_ref()),
            t.phase.as_str()
        ),
    }
}

fn step(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Done => "done",
        StepState::Failed => "failed",
    }
}

fn config(c: &PortConfig) -> String {
    c.to_string()
}

/// Jobs, newest first (as the API lists them).
pub fn jobs(items: &[Job], now: UnixMillis) -> String {
    let mut t = Table::new(["ID", "KIND", "NODE", "STATE", "WHAT", "UPDATED"]);
    for j in items {
        t.row([
            j.id.to_string(),
            j.kind.name().to_owned(),
            j.node.to_string(),
            j.state.as_str().to_owned(),
            job_what(j),
            relative_ms(j.updated_at, now),
        ]);
    }
    t.render()
}

/// One job with its current step's ports and power.
pub fn job_detail(j: &Job, now: UnixMillis) -> String {
    let mut out = fields([
        ("Job", j.id.to_string()),
        ("Kind", j.kind.name().to_owned()),
        ("Node", j.node.to_string()),
        ("State", j.state.as_str().to_owned()),
        ("What", job_what(j)),
        ("Projects", list(&j.projects)),
        ("Actor", j.actor.clone()),
        (
            "Created",
            format!(
                "{} ({})",
                time_ms(j.created_at),
                relative_ms(j.created_at, now)
            ),
        ),
        (
            "Updated",
            format!(
                "{} ({})",
                time_ms(j.updated_at),
                relative_ms(j.updated_at, now)
            ),
        ),
        (
            "Power",
            j.power
                .as_ref()
                .map(|p| {
                    format!(
                        "{} (generation {}): {}{}",
                        if p.on { "on" } else { "off" },
                        p.generation,
                        step(p.state),
                        if p.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", p.message)
                        }
                    )
                })
                .unwrap_or_else(|| NONE.to_owned()),
        ),
        ("Error", opt(j.error.as_ref())),
    ]);
    if !j.ports.is_empty() {
        out.push('\n');
        let mut t = Table::new([
            "SWITCH",
            "PORT",
            "NIC",
            "CONFIG",
            "GENERATION",
            "STATE",
            "OBSERVED",
            "MESSAGE",
        ]);
        for p in &j.ports {
            t.row([
                p.switch.clone(),
                p.port.clone(),
                p.nic.clone(),
                config(&p.config),
                p.generation.to_string(),
                step(p.state).to_owned(),
                p.observed
                    .as_ref()
                    .map(config)
                    .unwrap_or_else(|| NONE.to_owned()),
                if p.message.is_empty() {
                    NONE.to_owned()
                } else {
                    p.message.clone()
                },
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

/// A node's switch ports.
pub fn ports(items: &[SwitchPort]) -> String {
    let mut items: Vec<&SwitchPort> = items.iter().collect();
    items.sort_by(|a, b| (&a.nic, &a.switch, &a.port).cmp(&(&b.nic, &b.switch, &b.port)));
    let mut t = Table::new([
        "NIC",
        "SWITCH",
        "PORT",
        "NETWORKS",
        "CONFIG",
        "GENERATION",
        "APPLIED",
        "JOB",
    ]);
    for p in items {
        let nets = p
            .attachments
            .iter()
            .map(|(n, m)| format!("{n}({})", m.as_str()));
        let applied = match p.applied_ok {
            None => NONE.to_owned(),
            Some(true) => format!("{} ok", p.applied_generation),
            Some(false) => format!("{} failed: {}", p.applied_generation, p.message),
        };
        t.row([
            p.nic.clone(),
            p.switch.clone(),
            p.port.clone(),
            list(nets),
            config(&p.config),
            p.generation.to_string(),
            applied,
            opt(p.job),
        ]);
    }
    t.render()
}

fn window_text(w: &LeaseWindow) -> String {
    match w {
        LeaseWindow::Daily { start, end, tz } => format!("daily {start}-{end} {tz}"),
        LeaseWindow::Once { from, until } => format!("{} - {}", time_ms(*from), time_ms(*until)),
    }
}

fn power_text(p: Option<bool>) -> String {
    match p {
        Some(true) => "on",
        Some(false) => "off",
        None => NONE,
    }
    .to_owned()
}

/// Leases by id.
pub fn leases(items: &[LeaseView]) -> String {
    let mut items: Vec<&LeaseView> = items.iter().collect();
    items.sort_by_key(|l| l.lease.id);
    let mut t = Table::new([
        "ID", "NODE", "BORROWER", "OWNER", "WINDOW", "STATE", "POWER",
    ]);
    for l in items {
        t.row([
            l.lease.id.to_string(),
            l.serial.to_string(),
            l.lease.project.to_string(),
            opt(l.lease.owner.as_ref()),
            window_text(&l.lease.window),
            l.lease.state.as_str().to_owned(),
            power_text(l.power_on),
        ]);
    }
    t.render()
}

/// One lease.
pub fn lease_detail(l: &LeaseView, now: UnixMillis) -> String {
    fields([
        ("Lease", l.lease.id.to_string()),
        ("Node", format!("{} ({})", l.serial, l.lease.node)),
        ("Borrower", l.lease.project.to_string()),
        ("Owner", opt(l.lease.owner.as_ref())),
        ("Window", window_text(&l.lease.window)),
        ("State", l.lease.state.as_str().to_owned()),
        ("Lent", (if l.lent { "yes" } else { "no" }).to_owned()),
        ("Power", power_text(l.power_on)),
        ("Job", opt(l.lease.job)),
        (
            "Cancelled",
            (if l.lease.cancelled { "yes" } else { "no" }).to_owned(),
        ),
        (
            "Created",
            format!(
                "{} ({})",
                time_ms(l.lease.created_at),
                relative_ms(l.lease.created_at, now)
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn attach_flags_parse() {
        assert_eq!(
            parse_attach("eno1=net-b").unwrap(),
            json!({"nic": "eno1", "network": "net-b", "mode": "access"})
        );
        assert_eq!(parse_attach("eno2=net-c:trunk").unwrap()["mode"], "trunk");
        for bad in ["eno1", "=net", "eno1=", "eno1=net:sideways"] {
            assert!(
                matches!(parse_attach(bad), Err(CliError::Input(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn lease_windows_from_flags() {
        assert_eq!(
            window(Some("00:00-06:00"), None, None).unwrap(),
            json!({"start": "00:00", "end": "06:00", "tz": "UTC"})
        );
        assert_eq!(
            window(None, Some(1), Some(2)).unwrap(),
            json!({"from": 1, "until": 2})
        );
        assert!(window(None, None, None).is_err());
        assert!(window(Some("0600"), None, None).is_err());
    }
}
