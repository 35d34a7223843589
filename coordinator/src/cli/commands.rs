//! Runs one parsed `metalctl` command: maps it to API calls and renders the answer.

use std::collections::HashMap;

use protocol::error::ErrorCode;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::api::{Api, Body};
use super::args::{
    AuditArgs, Cli, ClusterCmd, Command, InventoryCmd, NodeCmd, NodeSetArgs, Output, ProjectCmd,
    RackCmd, SiteCmd, TokenCmd, UserCmd,
};
use super::config::{default_config_path, ClientConfig, Overrides};
use super::error::CliError;
use super::render::{render, View};
use crate::app::now_ms;

/// Loads the configuration, runs the command, and returns what to print on stdout.
pub async fn run(cli: &Cli) -> Result<String, CliError> {
    let overrides = Overrides {
        config: cli.config.clone(),
        coordinators: cli.coordinators.clone(),
        token: cli.token.clone(),
        ca_cert: cli.ca_cert.clone(),
    };
    let cfg = ClientConfig::resolve(&overrides, default_config_path())?;
    let api = Api::new(&cfg, cli.stale)?;
    execute(&api, &cli.command, cli.output).await
}

/// What a command got back, before formatting.
enum Answer {
    /// A JSON document of a known shape.
    Doc(View, Value),
    /// A write the API answers with 204 and no body: the sentence saying what was done.
    Done(String),
}

fn format(answer: Answer, output: Output) -> Result<String, CliError> {
    match (answer, output) {
        (Answer::Doc(_, v), Output::Json) => serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| CliError::BadResponse {
                url: "-".into(),
                message: e.to_string(),
            }),
        (Answer::Doc(view, v), Output::Table) => {
            // The one clock read: rendering itself is pure (relative times need a "now").
            render(view, &v, now_ms()).map_err(|e| CliError::BadResponse {
                url: "-".into(),
                message: format!("answer does not have the expected shape ({view:?}): {e}"),
            })
        }
        (Answer::Done(_), Output::Json) => Ok(String::new()),
        (Answer::Done(what), Output::Table) => Ok(format!("{what}\n")),
    }
}

/// Runs `cmd` against `api` and formats the answer.
pub async fn execute(api: &Api, cmd: &Command, output: Output) -> Result<String, CliError> {
    let answer = match cmd {
        // Workflow commands format their own answers (watch and follow print as they go).
        Command::Workflow(c) => return super::runs::workflow(api, c, output).await,
        Command::Run(c) => return super::runs::run(api, c, output).await,
        Command::Rollout(c) => return super::runs::rollout(api, c, output).await,
        Command::Node(NodeCmd::Events(a)) => return super::runs::node_events(api, a, output).await,
        Command::Cluster(c) => cluster(api, c).await?,
        Command::Site(c) => site(api, c).await?,
        Command::Rack(c) => rack(api, c).await?,
        Command::Inventory(c) => inventory(api, c).await?,
        Command::Node(c) => node(api, c).await?,
        Command::Project(c) => project(api, c).await?,
        Command::User(c) => user(api, c).await?,
        Command::Token(c) => token(api, c).await?,
        Command::Audit(a) => audit(api, a).await?,
        Command::Network(c) => tenancy_answer(super::tenancy::network(api, c).await?)?,
        Command::Job(c) => tenancy_answer(super::tenancy::job(api, c).await?)?,
        Command::Lease(c) => tenancy_answer(super::tenancy::lease(api, c).await?)?,
    };
    format(answer, output)
}

/// A tenancy answer as an [`Answer`]; a failed job (`--wait`) fails the command with exit
/// code 5 and the job's error.
fn tenancy_answer(a: super::tenancy::TenancyAnswer) -> Result<Answer, CliError> {
    use super::tenancy::TenancyAnswer as T;
    match a {
        T::Doc(view, v) => Ok(Answer::Doc(View::Tenancy(view), v)),
        T::Done(what) => Ok(Answer::Done(what)),
        T::Failed(j) => Err(CliError::Api(protocol::error::ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "job {} failed: {}",
                j["id"],
                j["error"].as_str().unwrap_or("no reason given")
            ),
        ))),
    }
}

/// A write that must answer with a document.
async fn write(
    api: &Api,
    method: Method,
    path: &[&str],
    query: &[(&str, String)],
    body: Body,
    view: View,
) -> Result<Answer, CliError> {
    let v = api
        .call(method, path, query, body)
        .await?
        .ok_or_else(|| CliError::BadResponse {
            url: path.join("/"),
            message: "empty body where a JSON document was expected".into(),
        })?;
    Ok(Answer::Doc(view, v))
}

async fn delete(api: &Api, path: &[&str], what: String) -> Result<Answer, CliError> {
    api.call(Method::DELETE, path, &[], Body::Empty).await?;
    Ok(Answer::Done(format!("Deleted {what}.")))
}

async fn list(
    api: &Api,
    path: &[&str],
    query: &[(&str, String)],
    view: View,
) -> Result<Answer, CliError> {
    Ok(Answer::Doc(view, api.get(path, query).await?))
}

/// Query pairs for the filters that are set.
fn filters<'a>(pairs: &[(&'a str, Option<String>)]) -> Vec<(&'a str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect()
}

async fn cluster(api: &Api, c: &ClusterCmd) -> Result<Answer, CliError> {
    match c {
        ClusterCmd::Status => list(api, &["v1", "cluster"], &[], View::ClusterStatus).await,
        ClusterCmd::AddLearner {
            id,
            raft_addr,
            api_url,
            fleet_addr,
        } => {
            let mut body = json!({"id": id, "raft_addr": raft_addr, "api_url": api_url});
            if let Some(f) = fleet_addr {
                body["fleet_addr"] = json!(f);
            }
            write(
                api,
                Method::POST,
                &["v1", "cluster", "learners"],
                &[],
                Body::Json(body),
                View::Membership,
            )
            .await
        }
        ClusterCmd::Promote { id } => {
            let id = id.to_string();
            write(
                api,
                Method::POST,
                &["v1", "cluster", "voters", &id],
                &[],
                Body::Empty,
                View::Membership,
            )
            .await
        }
        ClusterCmd::Remove { id } => {
            let id = id.to_string();
            write(
                api,
                Method::DELETE,
                &["v1", "cluster", "members", &id],
                &[],
                Body::Empty,
                View::Membership,
            )
            .await
        }
    }
}

async fn site(api: &Api, c: &SiteCmd) -> Result<Answer, CliError> {
    match c {
        SiteCmd::List => list(api, &["v1", "sites"], &[], View::Sites).await,
        SiteCmd::Create { name, description } => {
            let body = json!({"name": name, "description": description});
            write(
                api,
                Method::PUT,
                &["v1", "sites", name],
                &[],
                Body::Json(body),
                View::Site,
            )
            .await
        }
        SiteCmd::Delete { name } => {
            delete(api, &["v1", "sites", name], format!("site {name}")).await
        }
    }
}

async fn rack(api: &Api, c: &RackCmd) -> Result<Answer, CliError> {
    match c {
        RackCmd::List => {
            let racks = api.get(&["v1", "racks"], &[]).await?;
            let agents = match api.get(&["v1", "agents"], &[]).await {
                // Project members may list racks but not the fleet's agents: their racks
                // show with the agent unknown (`null`, `-`), not as "none".
                Err(CliError::Api(b)) if b.code == ErrorCode::Forbidden => Value::Array(vec![]),
                other => other?,
            };
            Ok(Answer::Doc(View::RackAgents, join_agents(racks, &agents)?))
        }
        RackCmd::Create {
            name,
            site,
            description,
        } => {
            let body = json!({"name": name, "site": site, "description": description});
            write(
                api,
                Method::PUT,
                &["v1", "racks", name],
                &[],
                Body::Json(body),
                View::Rack,
            )
            .await
        }
        RackCmd::Delete { name } => {
            delete(api, &["v1", "racks", name], format!("rack {name}")).await
        }
        RackCmd::EnrollToken { name, expires_in } => {
            let mut body = Map::new();
            if let Some(s) = expires_in {
                body.insert("expires_in_secs".into(), json!(s));
            }
            write(
                api,
                Method::POST,
                &["v1", "racks", name, "enroll-tokens"],
                &[],
                Body::Json(Value::Object(body)),
                View::CreatedEnrollToken,
            )
            .await
        }
        RackCmd::Revoke { name } => {
            api.call(
                Method::DELETE,
                &["v1", "racks", name, "agent"],
                &[],
                Body::Empty,
            )
            .await?;
            Ok(Answer::Done(format!(
                "Revoked the agent of rack {name}; it must enroll again with a new token."
            )))
        }
    }
}

/// `GET /v1/racks` joined with `GET /v1/agents`: each rack object as the API gave it, plus
/// `"agent"`, its [`crate::api::AgentView`], or `null` when the agent list (a separate read)
/// did not mention the rack or the caller may not list agents.
pub fn join_agents(racks: Value, agents: &Value) -> Result<Value, CliError> {
    let shape = |what: &str| CliError::BadResponse {
        url: "-".into(),
        message: format!("{what} is not a list of objects"),
    };
    let Value::Array(racks) = racks else {
        return Err(shape("the rack list"));
    };
    let agents: HashMap<&str, &Value> = agents
        .as_array()
        .ok_or_else(|| shape("the agent list"))?
        .iter()
        .filter_map(|a| Some((a.get("rack")?.as_str()?, a)))
        .collect();
    racks
        .into_iter()
        .map(|mut r| {
            let obj = r.as_object_mut().ok_or_else(|| shape("the rack list"))?;
            let agent = obj
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| agents.get(n))
                .map_or(Value::Null, |a| (*a).clone());
            obj.insert("agent".into(), agent);
            Ok(r)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

async fn inventory(api: &Api, c: &InventoryCmd) -> Result<Answer, CliError> {
    match c {
        InventoryCmd::List { site, rack, tag } => {
            let q = filters(&[
                ("site", site.clone()),
                ("rack", rack.clone()),
                ("tag", tag.clone()),
            ]);
            list(api, &["v1", "inventory"], &q, View::Inventory).await
        }
        InventoryCmd::Get { serial } => {
            list(
                api,
                &["v1", "inventory", serial],
                &[],
                View::InventoryRecord,
            )
            .await
        }
        InventoryCmd::Import { file, dry_run } => {
            let bytes = std::fs::read(file)
                .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
            let is_csv = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            let content_type = if is_csv {
                "text/csv"
            } else {
                "application/json"
            };
            let q = if *dry_run {
                vec![("dry_run", "true".to_owned())]
            } else {
                Vec::new()
            };
            write(
                api,
                Method::POST,
                &["v1", "inventory", "import"],
                &q,
                Body::Raw {
                    content_type,
                    bytes,
                },
                View::ImportReport,
            )
            .await
        }
        InventoryCmd::Delete { serial } => {
            delete(
                api,
                &["v1", "inventory", serial],
                format!("inventory record {serial}"),
            )
            .await
        }
    }
}

async fn node(api: &Api, c: &NodeCmd) -> Result<Answer, CliError> {
    match c {
        NodeCmd::List {
            rack,
            state,
            serial,
            project,
            tag,
            discovered,
            identified,
        } => {
            let pool = match (discovered, identified) {
                (true, _) => Some("false".to_owned()),
                (_, true) => Some("true".to_owned()),
                _ => None,
            };
            let q = filters(&[
                ("rack", rack.clone()),
                ("state", state.map(|s| s.as_str().to_owned())),
                ("serial", serial.clone()),
                ("project", project.clone()),
                ("tag", tag.clone()),
                ("identified", pool),
            ]);
            list(api, &["v1", "nodes"], &q, View::Nodes).await
        }
        NodeCmd::Get { id } => list(api, &["v1", "nodes", id], &[], View::Node).await,
        NodeCmd::Create { serial, rack, macs } => {
            let mut body = Map::new();
            body.insert("serial".into(), json!(serial));
            if let Some(r) = rack {
                body.insert("rack".into(), json!(r));
            }
            body.insert("macs".into(), json!(macs));
            write(
                api,
                Method::POST,
                &["v1", "nodes"],
                &[],
                Body::Json(Value::Object(body)),
                View::Node,
            )
            .await
        }
        NodeCmd::Tenancy(t) => tenancy_answer(super::tenancy::node(api, t).await?),
        NodeCmd::Events(a) => Err(CliError::Input(format!(
            "node events {} is handled before this point",
            a.id
        ))),
        NodeCmd::Set(s) => {
            let body = node_patch(s)?;
            write(
                api,
                Method::PATCH,
                &["v1", "nodes", &s.id],
                &[],
                Body::Json(body),
                View::Node,
            )
            .await
        }
    }
}

/// The `PATCH /v1/nodes/{id}` body for `node set`: only the fields asked for.
pub fn node_patch(s: &NodeSetArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(st) = s.state {
        body.insert("state".into(), json!(st.as_str()));
    }
    if let Some(b) = s.boot {
        body.insert("boot_target".into(), json!({"kind": b.kind()}));
    }
    if let Some(p) = &s.project {
        body.insert("project".into(), json!(p));
    }
    if s.no_project {
        body.insert("project".into(), Value::Null);
    }
    if !s.tags.is_empty() || s.no_tags {
        body.insert("tags".into(), json!(s.tags));
    }
    if body.is_empty() {
        return Err(CliError::Input(
            "nothing to change: give --state, --boot, --project/--no-project or --tag/--no-tags"
                .into(),
        ));
    }
    Ok(Value::Object(body))
}

async fn project(api: &Api, c: &ProjectCmd) -> Result<Answer, CliError> {
    match c {
        ProjectCmd::List => list(api, &["v1", "projects"], &[], View::Projects).await,
        ProjectCmd::Create { name, description } => {
            let body = json!({"name": name, "description": description});
            write(
                api,
                Method::PUT,
                &["v1", "projects", name],
                &[],
                Body::Json(body),
                View::Project,
            )
            .await
        }
        ProjectCmd::Delete { name } => {
            delete(api, &["v1", "projects", name], format!("project {name}")).await
        }
    }
}

async fn user(api: &Api, c: &UserCmd) -> Result<Answer, CliError> {
    match c {
        UserCmd::List => list(api, &["v1", "users"], &[], View::Users).await,
        UserCmd::Create {
            name,
            role,
            project,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("role".into(), json!(role.as_str()));
            if let Some(p) = project {
                body.insert("project".into(), json!(p));
            }
            write(
                api,
                Method::PUT,
                &["v1", "users", name],
                &[],
                Body::Json(Value::Object(body)),
                View::User,
            )
            .await
        }
        UserCmd::Delete { name } => {
            delete(api, &["v1", "users", name], format!("user {name}")).await
        }
    }
}

async fn token(api: &Api, c: &TokenCmd) -> Result<Answer, CliError> {
    match c {
        TokenCmd::List => list(api, &["v1", "tokens"], &[], View::Tokens).await,
        TokenCmd::Create {
            user,
            description,
            expires_in,
        } => {
            let mut body = Map::new();
            if let Some(u) = user {
                body.insert("user".into(), json!(u));
            }
            body.insert("description".into(), json!(description));
            if let Some(s) = expires_in {
                body.insert("expires_in_secs".into(), json!(s));
            }
            write(
                api,
                Method::POST,
                &["v1", "tokens"],
                &[],
                Body::Json(Value::Object(body)),
                View::CreatedToken,
            )
            .await
        }
        TokenCmd::Delete { id } => delete(api, &["v1", "tokens", id], format!("token {id}")).await,
    }
}

async fn audit(api: &Api, a: &AuditArgs) -> Result<Answer, CliError> {
    let q = filters(&[
        ("limit", a.limit.map(|l| l.to_string())),
        ("before", a.before.map(|b| b.to_string())),
        ("actor", a.actor.clone()),
    ]);
    list(api, &["v1", "audit"], &q, View::Audit).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn racks_join_their_agents() {
        let racks = json!([
            {"name": "r1", "site": "s", "description": "", "future_field": 1},
            {"name": "r2", "site": "s", "description": ""}
        ]);
        let agents = json!([{"rack": "r1", "enrolled": true}, {"rack": "gone"}]);
        let joined = join_agents(racks, &agents).unwrap();
        assert_eq!(
            joined,
            json!([
                {"name": "r1", "site": "s", "description": "", "future_field": 1,
                 "agent": {"rack": "r1", "enrolled": true}},
                {"name": "r2", "site": "s", "description": "", "agent": null}
            ])
        );
        assert!(join_agents(json!({"name": "r1"}), &agents).is_err());
        assert!(join_agents(json!(["r1"]), &agents).is_err());
        assert!(join_agents(json!([]), &json!({})).is_err());
    }
}
