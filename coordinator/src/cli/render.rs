//! Human renderings of the API's answers: one function per shape, all pure (value and "now"
//! in, text out) so golden files pin them down. Rows are sorted by their natural key so output
//! is stable whatever order the server used; the audit trail keeps the API's newest-first
//! order.

use protocol::domain::{
    AuditEntry, BootTarget, InventoryView, NodeView, Project, Rack, Site, TokenView, UnixMillis,
    User,
};
use serde::de::{DeserializeOwned, Error as _};
use serde::Deserialize;
use serde_json::Value;

use super::table::{fields, list, opt, relative_ms, time_ms, Table, NONE};
use crate::api::{AgentView, CreatedEnrollToken, CreatedToken, MembershipChanged};
use crate::app::ClusterStatus;
use crate::state::ImportReport;

/// Which shape an API answer has, and so how to render it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `GET /v1/cluster`.
    ClusterStatus,
    /// A membership change's answer.
    Membership,
    /// A list of sites.
    Sites,
    /// One site.
    Site,
    /// Racks joined with their agents (`rack list`; see [`RackRow`]).
    RackAgents,
    /// One rack.
    Rack,
    /// A new enrollment token, with its secret.
    CreatedEnrollToken,
    /// A list of inventory records.
    Inventory,
    /// One inventory record.
    InventoryRecord,
    /// An import's (or dry run's) report.
    ImportReport,
    /// A list of nodes.
    Nodes,
    /// One node.
    Node,
    /// A list of projects.
    Projects,
    /// One project.
    Project,
    /// A list of users.
    Users,
    /// One user.
    User,
    /// A list of tokens.
    Tokens,
    /// A newly created token, with its secret.
    CreatedToken,
    /// Audit entries.
    Audit,
    /// Tenancy answers (networks, jobs, ports, leases).
    Tenancy(super::tenancy::TenancyView),
}

/// Renders an API answer of shape `view` as text, with relative times counted back from
/// `now` (ms since the epoch); fails when the JSON is not that shape.
pub fn render(view: View, v: &Value, now: UnixMillis) -> Result<String, serde_json::Error> {
    fn de<T: DeserializeOwned>(v: &Value) -> Result<T, serde_json::Error> {
        T::deserialize(v)
    }
    Ok(match view {
        View::ClusterStatus => cluster_status(&de(v)?),
        View::Membership => membership(&de(v)?),
        View::Sites => sites(&de::<Vec<Site>>(v)?),
        View::Site => sites(&[de(v)?]),
        View::RackAgents => rack_agents(&RackRow::list(v)?, now),
        View::Rack => racks(&[de(v)?]),
        View::CreatedEnrollToken => created_enroll_token(&de(v)?, now),
        View::Inventory => inventory(&de::<Vec<InventoryView>>(v)?),
        View::InventoryRecord => inventory_record(&de(v)?),
        View::ImportReport => import_report(&de(v)?),
        View::Nodes => nodes(&de::<Vec<NodeView>>(v)?),
        View::Node => node(&de(v)?),
        View::Projects => projects(&de::<Vec<Project>>(v)?),
        View::Project => projects(&[de(v)?]),
        View::Users => users(&de::<Vec<User>>(v)?),
        View::User => users(&[de(v)?]),
        View::Tokens => tokens(&de::<Vec<TokenView>>(v)?),
        View::CreatedToken => created_token(&de(v)?),
        View::Audit => audit(&de::<Vec<AuditEntry>>(v)?),
        View::Tenancy(t) => super::tenancy::render(t, v, now)?,
    })
}

/// Snake-case name of a serde enum value (roles, states, drivers).
fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => NONE.to_owned(),
    }
}

/// The cluster as the answering coordinator sees it, then its members.
pub fn cluster_status(s: &ClusterStatus) -> String {
    let mut out = fields([
        ("Cluster", s.name.clone()),
        ("Answered by", s.this.to_string()),
        ("Role", s.role.clone()),
        ("Leader", opt(s.leader)),
        ("Term", s.term.to_string()),
        ("Last applied", s.last_applied.to_string()),
        ("Last log index", s.last_log_index.to_string()),
    ]);
    out.push('\n');
    let mut members: Vec<_> = s.members.iter().collect();
    members.sort_by_key(|m| m.id);
    let mut t = Table::new(["ID", "KIND", "LEADER", "RAFT ADDR", "API URL", "MATCHED"]);
    for m in members {
        t.row([
            m.id.to_string(),
            m.kind.clone(),
            match s.leader {
                Some(l) if l == m.id => "yes",
                Some(_) => "no",
                // No leader known here: do not claim anyone is not it.
                None => NONE,
            }
            .to_owned(),
            m.addr.raft_addr.clone(),
            m.addr.api_url.clone(),
            // Only the leader knows replication progress; elsewhere it is unknown, not 0.
            opt(m.matched_index),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// A membership change: where it committed, then the cluster afterwards.
pub fn membership(m: &MembershipChanged) -> String {
    format!(
        "Membership changed at revision {}.\n\n{}",
        m.revision,
        cluster_status(&m.cluster)
    )
}

/// Sites by name.
pub fn sites(items: &[Site]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new(["NAME", "DESCRIPTION"]);
    for s in v {
        t.row([s.name.to_string(), s.description.clone()]);
    }
    t.render()
}

/// Racks by name.
pub fn racks(items: &[Rack]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new(["NAME", "SITE", "DESCRIPTION"]);
    for r in v {
        t.row([
            r.name.to_string(),
            r.site.to_string(),
            r.description.clone(),
        ]);
    }
    t.render()
}

/// A rack with its agent, as `rack list` joins `GET /v1/racks` and `GET /v1/agents`: the
/// rack's fields plus `"agent"` (an [`AgentView`], or `null` when unknown: see
/// [`super::commands::join_agents`]).
#[derive(Debug)]
pub struct RackRow {
    /// The rack.
    pub rack: Rack,
    /// Its agent as the agent list reported it.
    pub agent: Option<AgentView>,
}

impl RackRow {
    /// Parses the joined list (split by hand: [`Rack`] refuses unknown fields, so it cannot
    /// be flattened into a struct that also holds `agent`).
    pub fn list(v: &Value) -> Result<Vec<RackRow>, serde_json::Error> {
        Vec::<Value>::deserialize(v)?
            .into_iter()
            .map(|item| {
                let Value::Object(mut obj) = item else {
                    return Err(serde_json::Error::custom("expected a rack object"));
                };
                let agent = obj.remove("agent").unwrap_or(Value::Null);
                Ok(RackRow {
                    agent: Option::<AgentView>::deserialize(agent)?,
                    rack: Rack::deserialize(Value::Object(obj))?,
                })
            })
            .collect()
    }
}

/// The agent column: what the coordinators hold for the rack's agent.
fn agent_state(a: &AgentView) -> &'static str {
    if a.revoked {
        "revoked"
    } else if a.enrolled {
        "enrolled"
    } else {
        "none"
    }
}

/// Racks by name with their agents. Link figures (revision, lag, outbox) show as [`NONE`]
/// until the agent has reported once: the API fills them with 0, which would read as "in
/// sync, nothing queued" for an agent that never spoke. A rack without an agent entry
/// (created between the two reads, or a caller not allowed to list agents) shows [`NONE`]
/// throughout rather than a guess.
pub fn rack_agents(items: &[RackRow], now: UnixMillis) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.rack.name.cmp(&b.rack.name));
    let mut t = Table::new([
        "RACK",
        "SITE",
        "AGENT",
        "LINK",
        "COORDINATOR",
        "LAST SEEN",
        "REVISION",
        "LAG",
        "OUTBOX",
        "VERSION",
        "EVENTS",
    ]);
    for r in v {
        let mut row = vec![r.rack.name.to_string(), r.rack.site.to_string()];
        match &r.agent {
            None => row.extend(std::iter::repeat_n(NONE.to_owned(), 9)),
            Some(a) => {
                let reported = a.last_seen.is_some();
                let link = |x: String| if reported { x } else { NONE.to_owned() };
                row.extend([
                    agent_state(a).to_owned(),
                    link(if a.connected { "up" } else { "down" }.to_owned()),
                    opt(a.coordinator),
                    a.last_seen
                        .map_or_else(|| NONE.to_owned(), |t| relative_ms(t, now)),
                    link(a.revision.to_string()),
                    link(a.revision_lag.to_string()),
                    link(a.outbox_depth.to_string()),
                    opt(a.version.as_deref()),
                    a.last_seq.to_string(),
                ]);
            }
        }
        t.row(row);
    }
    t.render()
}

/// A new enrollment token: rack and expiry, then the secret alone on the last line (easy to
/// capture with `tail -n1`).
pub fn created_enroll_token(c: &CreatedEnrollToken, now: UnixMillis) -> String {
    format!(
        "Enrollment token for rack {} (single use, expires {}, {}):\n{}\n",
        c.rack,
        time_ms(c.expires_at),
        relative_ms(c.expires_at, now),
        c.token
    )
}

fn bmc_short(r: &InventoryView) -> String {
    r.bmc
        .as_ref()
        .map(|b| format!("{} ({})", b.address, name_of(&b.driver)))
        .unwrap_or_else(|| NONE.to_owned())
}

/// Expected inventory by serial.
pub fn inventory(items: &[InventoryView]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.serial.cmp(&b.serial));
    let mut t = Table::new([
        "SERIAL", "SITE", "RACK", "U", "MODEL", "BMC", "NICS", "TAGS", "GEN",
    ]);
    for r in v {
        t.row([
            r.serial.to_string(),
            r.site.to_string(),
            r.rack.to_string(),
            opt(r.u_position),
            opt(r.model.as_deref()),
            bmc_short(r),
            list(r.nics.iter().map(|n| &n.name)),
            list(&r.tags),
            r.generation.to_string(),
        ]);
    }
    t.render()
}

/// One inventory record in full (never a password: the API does not return it).
pub fn inventory_record(r: &InventoryView) -> String {
    let creds = r
        .bmc
        .as_ref()
        .and_then(|b| b.credentials.as_ref())
        .map(|c| {
            format!(
                "{} (password {})",
                c.username,
                if c.password_set { "set" } else { "not set" }
            )
        });
    let mut out = fields([
        ("Serial", r.serial.to_string()),
        ("Site", r.site.to_string()),
        ("Rack", r.rack.to_string()),
        ("U position", opt(r.u_position)),
        ("Model", opt(r.model.as_deref())),
        ("BMC", bmc_short(r)),
        ("BMC login", opt(creds)),
        ("Tags", list(&r.tags)),
        ("Revision", r.revision.to_string()),
        ("Generation", r.generation.to_string()),
    ]);
    if !r.nics.is_empty() {
        let mut t = Table::new(["NIC", "MAC", "SWITCH", "PORT"]);
        for n in &r.nics {
            t.row([
                n.name.clone(),
                opt(n.mac),
                opt(n.switch.as_deref()),
                opt(n.port.as_deref()),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !r.static_ips.is_empty() {
        let mut t = Table::new(["INTERFACE", "ADDRESS", "GATEWAY"]);
        for ip in &r.static_ips {
            t.row([
                ip.interface.clone(),
                format!("{}/{}", ip.address, ip.prefix),
                opt(ip.gateway),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// What an import did (or would do), one line per serial, then totals.
pub fn import_report(r: &ImportReport) -> String {
    let mut rows: Vec<(String, &str, String)> = Vec::new();
    rows.extend(
        r.created
            .iter()
            .map(|s| (s.to_string(), "created", String::new())),
    );
    rows.extend(
        r.updated
            .iter()
            .map(|(s, f)| (s.to_string(), "updated", f.join(","))),
    );
    rows.extend(
        r.unchanged
            .iter()
            .map(|s| (s.to_string(), "unchanged", String::new())),
    );
    rows.sort();
    let mut t = Table::new(["SERIAL", "RESULT", "CHANGED FIELDS"]);
    for (serial, what, changed) in rows {
        t.row([serial, what.to_owned(), changed]);
    }
    let mut out = t.render();
    out.push_str(&format!(
        "\n{} created, {} updated, {} unchanged{}\n",
        r.created.len(),
        r.updated.len(),
        r.unchanged.len(),
        if r.dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    ));
    out
}

/// A boot target in one word, for lists.
pub fn boot_short(b: &BootTarget) -> &'static str {
    match b {
        BootTarget::None => "none",
        BootTarget::Discovery => "discovery",
        BootTarget::Local => "local",
        BootTarget::Install { .. } => "install",
        BootTarget::Sanboot { .. } => "sanboot",
    }
}

/// A boot target with its parameters.
pub fn boot_long(b: &BootTarget) -> String {
    match b {
        BootTarget::Install {
            kernel,
            initrd,
            cmdline,
            autoinstall,
        } => {
            let mut s = format!("install kernel={kernel} initrd={initrd} cmdline={cmdline:?}");
            if let Some(a) = autoinstall {
                s.push_str(&format!(" autoinstall={a}"));
            }
            s
        }
        BootTarget::Sanboot { target } => format!("sanboot {target}"),
        other => boot_short(other).to_owned(),
    }
}

/// Nodes by serial.
pub fn nodes(items: &[NodeView]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.node.serial.cmp(&b.node.serial));
    let mut t = Table::new([
        "SERIAL",
        "ID",
        "RACK",
        "U",
        "IDENTIFIED",
        "STATE",
        "BOOT",
        "PROJECT",
        "TAGS",
        "MACS",
    ]);
    for view in v {
        let n = &view.node;
        t.row([
            n.serial.to_string(),
            n.id.to_string(),
            opt(n.rack.as_ref()),
            opt(view.u_position.as_ref()),
            yes_no(view.identified),
            n.state.as_str().to_owned(),
            boot_short(&n.boot_target).to_owned(),
            opt(n.project.as_ref()),
            list(&n.tags),
            list(&n.macs),
        ]);
    }
    t.render()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// One node in full.
pub fn node(view: &NodeView) -> String {
    let n = &view.node;
    fields([
        ("Id", n.id.to_string()),
        ("Serial", n.serial.to_string()),
        ("Rack", opt(n.rack.as_ref())),
        ("U", opt(view.u_position.as_ref())),
        ("Identified", yes_no(view.identified)),
        ("State", n.state.as_str().to_owned()),
        ("Boot", boot_long(&n.boot_target)),
        ("Project", opt(n.project.as_ref())),
        ("Tags", list(&n.tags)),
        ("MACs", list(&n.macs)),
        ("Created", time_ms(n.created_at)),
        ("Revision", n.revision.to_string()),
        ("Facts", n.facts.0.to_string()),
    ])
}

/// Projects by name.
pub fn projects(items: &[Project]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new(["NAME", "DESCRIPTION"]);
    for p in v {
        t.row([p.name.to_string(), p.description.clone()]);
    }
    t.render()
}

/// Users by name.
pub fn users(items: &[User]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new(["NAME", "ROLE", "PROJECT"]);
    for u in v {
        t.row([
            u.name.to_string(),
            name_of(&u.role),
            opt(u.project.as_ref()),
        ]);
    }
    t.render()
}

/// Tokens by creation time (never a secret: the API does not return them).
pub fn tokens(items: &[TokenView]) -> String {
    let mut v: Vec<_> = items.iter().collect();
    v.sort_by_key(|t| (t.created_at, t.id));
    let mut t = Table::new(["ID", "USER", "CREATED", "EXPIRES", "DESCRIPTION"]);
    for k in v {
        t.row([
            k.id.to_string(),
            k.user.to_string(),
            time_ms(k.created_at),
            k.expires_at.map(time_ms).unwrap_or_else(|| "never".into()),
            k.description.clone(),
        ]);
    }
    t.render()
}

/// A new token: its record, then the secret alone on the last line (easy to capture).
pub fn created_token(c: &CreatedToken) -> String {
    let mut out = tokens(std::slice::from_ref(&c.token));
    out.push_str("\nSecret (shown once, store it now):\n");
    out.push_str(&c.secret);
    out.push('\n');
    out
}

/// Audit entries in the order given (the API answers newest first).
pub fn audit(items: &[AuditEntry]) -> String {
    let mut t = Table::new(["REVISION", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"]);
    for e in items {
        t.row([
            e.revision.to_string(),
            time_ms(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            e.outcome.clone(),
        ]);
    }
    t.render()
}
