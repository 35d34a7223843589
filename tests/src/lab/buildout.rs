//! The buildout on the lab (issue 6's main job): the lab OS put where the rack agents serve
//! it, the workflow templates of `examples/workflows/` stored in the coordinators, a
//! `buildout` rollout over the lab's nodes with `lab-params.yaml`, its progress, and the table
//! of nodes it ends with (rack, U, serial, IPs, state).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::os::LabOs;
use super::sys::wait_for;
use super::{Lab, LabError, Result};

/// The templates, in include order (the coordinator checks includes when storing).
pub const WORKFLOWS: [&str; 4] = ["discovery", "testing", "install", "buildout"];
/// How long the lab-sized buildout of a handful of VMs may take on a loaded 2-core machine.
pub const BUILDOUT_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// `examples/workflows/`.
pub fn workflows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows")
}

/// Builds the lab OS, gives it to every rack agent and stores the workflow templates.
pub fn prepare(lab: &Lab) -> Result<LabOs> {
    let os = LabOs::build()?;
    os.install_into(lab)?;
    put_workflows(lab)?;
    Ok(os)
}

/// `metalctl workflow put` for every template. The same text stored again is a no-op; a
/// version already stored with other text (a lab kept running while `examples/workflows/`
/// changed) is an error, rather than a rollout of the stale template.
pub fn put_workflows(lab: &Lab) -> Result<()> {
    let dir = workflows_dir();
    for name in WORKFLOWS {
        let file = dir.join(format!("{name}.yaml")).display().to_string();
        match lab.metalctl(&["workflow", "put", &file]) {
            Ok(_) => {}
            Err(e)
                if e.to_string()
                    .contains("already stored with different content") =>
            {
                return Err(LabError::Other(format!(
                    "{file} differs from the version the running lab stores ({e}); tear the lab \
                     down (scripts/lab.sh down) or publish the change as a new version"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `lab-params.yaml` as `metalctl rollout create -p NAME=VALUE` arguments (JSON values), for
/// `workflow` (`buildout`, or one of its stages: the values it declares).
pub fn lab_params(workflow: &str) -> Result<Vec<String>> {
    let loaded = coordinator::workflow::load_dir(&workflows_dir())
        .map_err(|e| LabError::Other(format!("examples/workflows: {e}")))?;
    let file = loaded
        .params
        .get("lab-params.yaml")
        .ok_or_else(|| LabError::Other("examples/workflows has no lab-params.yaml".into()))?;
    let template = loaded
        .registry
        .get(workflow, None)
        .ok_or_else(|| LabError::Other(format!("examples/workflows has no {workflow}")))?;
    Ok(file
        .params
        .iter()
        .filter(|(k, _)| template.params.contains_key(*k))
        .flat_map(|(k, v)| ["-p".to_owned(), format!("{k}={v}")])
        .collect())
}

/// How long the VMs may take to PXE-boot the microkernel and be identified.
pub const DISCOVER_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The serials of the lab's expected-inventory VMs.
pub fn inventory_serials(lab: &Lab) -> Vec<String> {
    lab.config()
        .racks
        .iter()
        .flat_map(|r| r.vms.iter())
        .filter(|v| v.in_inventory)
        .map(|v| v.serial.clone())
        .collect()
}

/// Nodes exist once a VM checked in and was matched to its inventory record: powers every
/// inventory VM on through its BMC (the first network boot is the microkernel) and waits
/// until all are identified. Returns their node ids, in inventory order.
pub fn discover(lab: &Lab) -> Result<Vec<String>> {
    let serials = inventory_serials(lab);
    for r in &lab.config().racks {
        for v in r.vms.iter().filter(|v| v.in_inventory) {
            lab.power(&v.name, true)?;
        }
    }
    wait_for(DISCOVER_TIMEOUT, "the lab's VMs to be identified", || {
        let list = lab.metalctl_json(&["node", "list", "--identified"])?;
        let nodes = list.as_array().cloned().unwrap_or_default();
        let ids: Option<Vec<String>> = serials
            .iter()
            .map(|s| {
                nodes
                    .iter()
                    .find(|n| n["serial"] == s.as_str())
                    .and_then(|n| n["id"].as_str().map(str::to_owned))
            })
            .collect();
        if ids.is_none() {
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(ids)
    })
}

/// Starts `workflow` (`buildout` or a stage) with the lab parameters and returns the rollout
/// id. `nodes` (ids or serials) selects those nodes; empty selects by site, as an operator
/// would (`--site <lab site>`), once every VM of the lab's expected inventory has been
/// discovered (a rollout selects existing nodes, and a VM becomes one when identified).
/// `extra` goes to `metalctl rollout create` as is (limits, `--rack`, more `-p`).
pub fn start(lab: &Lab, workflow: &str, nodes: &[&str], extra: &[&str]) -> Result<u64> {
    let params = lab_params(workflow)?;
    let site = lab.config().site.clone();
    let mut args: Vec<&str> = vec!["rollout", "create", workflow];
    args.extend(params.iter().map(String::as_str));
    if nodes.is_empty() {
        discover(lab)?;
        args.extend(["--site", &site]);
    }
    for n in nodes {
        args.extend(["--node", n]);
    }
    args.extend_from_slice(extra);
    let v = lab.metalctl_json(&args)?;
    v["id"]
        .as_u64()
        .ok_or_else(|| LabError::Other(format!("rollout create answered no id: {v}")))
}

/// The rollout as `metalctl rollout get` shows it (JSON).
pub fn get(lab: &Lab, id: u64) -> Result<Value> {
    lab.metalctl_json(&["rollout", "get", &id.to_string()])
}

/// Polls the rollout until `done` says so; its last view.
pub fn wait(
    lab: &Lab,
    id: u64,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_for(timeout, what, || {
        let v = get(lab, id)?;
        if done(&v) {
            return Ok(Some(v));
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(None)
    })
}

/// Whether a rollout stopped: a final state, or paused (nobody here resumes it; the failure
/// budget pauses it).
pub fn ended(v: &Value) -> bool {
    matches!(
        v["state"].as_str(),
        Some("succeeded" | "failed" | "aborted" | "paused")
    )
}

/// One row of the final table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Rack name.
    pub rack: String,
    /// U position.
    pub u: String,
    /// Chassis serial.
    pub serial: String,
    /// Addresses: the node's (from the inventory) and its BMC's.
    pub ips: String,
    /// Lifecycle state and the node's run state in the rollout.
    pub state: String,
}

/// The lab's nodes for the final table, from `metalctl node list` and the rollout `id`.
pub fn node_rows(lab: &Lab, rollout: Option<&Value>) -> Result<Vec<NodeRow>> {
    let list = lab.metalctl_json(&["node", "list"])?;
    let nodes = list
        .as_array()
        .or_else(|| list["nodes"].as_array())
        .cloned()
        .unwrap_or_default();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .map(|n| {
            // The node view carries no addresses: the inventory's (which the installed OS
            // uses) and the BMC's, from the lab config the inventory was made from.
            let ips = lab
                .config()
                .racks
                .iter()
                .flat_map(|r| r.vms.iter().map(move |v| (r, v)))
                .find(|(_, v)| n["serial"] == v.serial.as_str())
                .map(|(r, v)| format!("{} bmc {}", v.static_ip(r), v.bmc_ip(r)))
                .unwrap_or_default();
            let run = rollout
                .and_then(|r| r["progress"]["nodes"].as_array())
                .and_then(|ns| ns.iter().find(|v| v["node"] == n["id"]))
                .map(|v| s(&v["state"]))
                .unwrap_or_default();
            let state = if run.is_empty() {
                s(&n["state"])
            } else {
                let workflow = rollout.map(|r| s(&r["workflow"])).unwrap_or_default();
                format!("{} ({workflow} {run})", s(&n["state"]))
            };
            NodeRow {
                rack: s(&n["rack"]),
                u: s(&n["u_position"]),
                serial: s(&n["serial"]),
                ips,
                state,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.rack, &a.u, &a.serial).cmp(&(&b.rack, &b.u, &b.serial)));
    Ok(rows)
}

/// The rows as an aligned text table.
pub fn render_table(rows: &[NodeRow]) -> String {
    let header = ["RACK", "U", "SERIAL", "IPS", "STATE"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| [&*r.rack, &*r.u, &*r.serial, &*r.ips, &*r.state])
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: [&str; 5]| {
        let mut l = String::new();
        for (i, (v, w)) in c.iter().zip(width).enumerate() {
            if i + 1 == c.len() {
                l.push_str(v);
            } else {
                l.push_str(&format!("{v:<w$}  "));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for c in cells {
        out.push_str(&line(c));
    }
    out
}
