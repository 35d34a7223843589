//! Steps about the node itself: the executor-owned overrides (`boot.set`, `dhcp.reserve`),
//! waits (`node.wait`), and work the node-agent does through the action queue (`node.run`,
//! `node.template`, `bmc.configure`, `lldp.check`, `os.install`).

use std::net::IpAddr;

use serde_json::Value;

use protocol::domain::BootTarget;
use protocol::node::NodeAction;
use protocol::workflow::{
    Autoinstall, BmcConfigure, BootSet, CredentialSource, DhcpReserve, LldpCheck, NodeRun,
    NodeTemplate, NodeWait, OsInstall, WaitFor,
};
use protocol::Mac;

use super::{parse_output, StepCtx, StepErr, StepOk};
use crate::executor::DhcpPin;

fn db_err(e: &crate::executor::ExecutorError) -> StepErr {
    StepErr::failed(crate::error_chain(e))
}

/// `boot.set`: the executor's boot override for the node.
pub(crate) fn boot_set(ctx: &StepCtx, p: &BootSet) -> Result<StepOk, StepErr> {
    let target = p.target.clone();
    ctx.sh
        .set_override(ctx.node, |o| o.boot = Some(target))
        .map_err(|e| db_err(&e))?;
    Ok(StepOk::msg(format!("boots {:?} next", p.target)))
}

/// `dhcp.reserve`: pins the node's address (the inventory's static address for the
/// interface, else its current lease) for the MAC of that interface.
pub(crate) fn dhcp_reserve(ctx: &StepCtx, p: &DhcpReserve) -> Result<StepOk, StepErr> {
    let node = ctx.rack_node()?;
    let facts = ctx.facts()?;
    let iface = p.interface.clone().or_else(|| {
        node.static_ips
            .iter()
            .find(|s| s.interface != "bmc")
            .map(|s| s.interface.clone())
    });
    let address: IpAddr = match &p.address {
        Some(a) => a
            .parse()
            .map_err(|_| StepErr::failed(format!("address {a:?} is not an IP address")))?,
        None => {
            let inventory = iface.as_ref().and_then(|i| {
                node.static_ips
                    .iter()
                    .find(|s| s.interface == *i)
                    .map(|s| s.address)
            });
            let lease = facts
                .pointer("/lease/ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok());
            inventory.or(lease).ok_or_else(|| {
                StepErr::failed(
                    "no address to pin: no static address for the interface in the inventory \
                     and no lease seen",
                )
            })?
        }
    };
    let mac = iface
        .as_ref()
        .and_then(|i| node.switch_ports.iter().find(|n| n.name == *i))
        .and_then(|n| n.mac)
        .or_else(|| {
            facts
                .pointer("/lease/mac")
                .and_then(Value::as_str)
                .and_then(|m| m.parse().ok())
        })
        .or_else(|| node.macs.first().copied())
        .ok_or_else(|| StepErr::failed("the node has no known MAC to pin an address for"))?;
    ctx.sh
        .set_override(ctx.node, |o| o.dhcp = Some(DhcpPin { mac, address }))
        .map_err(|e| db_err(&e))?;
    ctx.put_fact(
        "dhcp.reserved",
        serde_json::json!({"mac": mac.to_string(), "ip": address.to_string()}),
        false,
    )?;
    Ok(StepOk::msg(format!("pinned {address} for {mac}")))
}

fn millis_at(facts: &Value, pointer: &str) -> Option<i64> {
    facts.pointer(pointer).and_then(Value::as_i64)
}

/// Whether `w` happened at or after `since` (unix millis). Identification counts from
/// `run_since` instead: the node is identified once a check-in during the run carried the
/// serial of the node's expected-inventory record (the agent maps the check-in's MAC to the
/// node only after the coordinator matched the serial), and that check-in is usually what an
/// earlier `node.wait for: checkin` step saw.
fn happened(
    w: &WaitFor,
    facts: &Value,
    serial: &str,
    since: i64,
    run_since: i64,
) -> Result<bool, StepErr> {
    Ok(match w {
        WaitFor::Checkin => millis_at(facts, "/metalfleet/checkin_at").is_some_and(|t| t >= since),
        WaitFor::Identified => {
            millis_at(facts, "/metalfleet/checkin_at").is_some_and(|t| t >= run_since.min(since))
                && facts.pointer("/system/serial").and_then(Value::as_str) == Some(serial)
        }
        WaitFor::Event(name) => facts
            .get("metalfleet")
            .and_then(|m| m.get("events"))
            .and_then(|e| e.get(name))
            .and_then(Value::as_i64)
            .is_some_and(|t| t >= since),
        WaitFor::Condition(c) => c
            .evaluate(facts)
            .map_err(|e| StepErr::failed(format!("condition {c}: {e}")))?,
    })
}

/// Waits until `w` happens after `since`, re-checking whenever facts change.
async fn wait_for(ctx: &StepCtx, w: &WaitFor, since: i64) -> Result<(), StepErr> {
    let serial = ctx.rack_node()?.serial.to_string();
    let mut changed = ctx.sh.changed.subscribe();
    loop {
        changed.borrow_and_update();
        if happened(w, &ctx.facts()?, &serial, since, ctx.run_started_at)? {
            return Ok(());
        }
        if changed.changed().await.is_err() {
            return Err(StepErr::failed("the executor is shutting down"));
        }
    }
}

/// `node.wait`.
pub(crate) async fn wait(ctx: &StepCtx, p: &NodeWait) -> Result<StepOk, StepErr> {
    wait_for(ctx, &p.wait_for, ctx.attempt_started_at).await?;
    Ok(StepOk::msg(format!("{:?} seen", p.wait_for)))
}

/// `node.run`: the command through the node-agent; streamed lines land in the step log (and
/// report progress); the exit code decides; the output may become facts.
pub(crate) async fn run(ctx: &StepCtx, p: &NodeRun) -> Result<StepOk, StepErr> {
    let Some(res) = ctx
        .node_call(1, |id, secs| NodeAction::Run {
            id,
            command: p.command.clone(),
            args: p.args.clone(),
            timeout_secs: secs,
        })
        .await?
    else {
        return Err(StepErr::failed("node.run has a single action"));
    };
    if !p.expected_exit.contains(&res.exit_code) {
        let tail: String = res
            .output
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(StepErr {
            message: format!(
                "{} exited with {} (expected {:?}): {tail}",
                p.command, res.exit_code, p.expected_exit
            ),
            exit_code: Some(res.exit_code),
            lost: false,
        });
    }
    if let Some(cap) = &p.facts {
        let v = parse_output(cap.format, &res.output).map_err(StepErr::failed)?;
        ctx.put_fact(&cap.key, v, false)?;
    }
    Ok(StepOk {
        exit_code: Some(res.exit_code),
        message: Some(format!("{} exited with {}", p.command, res.exit_code)),
        progress: res
            .output
            .lines()
            .rev()
            .find_map(crate::executor::observe::parse_progress),
    })
}

/// `node.template`: renders the file and writes it through the node-agent.
pub(crate) async fn template(ctx: &StepCtx, p: &NodeTemplate) -> Result<StepOk, StepErr> {
    let content = ctx.render(&format!("template for {}", p.path), &p.template)?;
    let res = ctx
        .node_call(1, |id, _| NodeAction::Template {
            id,
            path: p.path.clone(),
            content: content.clone(),
            mode: p.mode.0,
        })
        .await?;
    match res {
        Some(r) if r.exit_code == 0 => Ok(StepOk::msg(format!(
            "wrote {} ({} bytes)",
            p.path,
            content.len()
        ))),
        Some(r) => Err(StepErr {
            message: format!("writing {}: {}", p.path, r.output.trim()),
            exit_code: Some(r.exit_code),
            lost: false,
        }),
        None => Err(StepErr::failed("node.template has a single action")),
    }
}

/// The script `bmc.configure` runs in the microkernel: values come as positional arguments,
/// never spliced into the script text.
const BMC_CONFIGURE_SCRIPT: &str = r#"set -e
tool="$1"; ch="$2"; uid="$3"; addr="$4"; mask="$5"; gw="$6"; user="$7"; pass="$8"
if [ -n "$addr" ]; then
  "$tool" lan set "$ch" ipsrc static
  "$tool" lan set "$ch" ipaddr "$addr"
fi
if [ -n "$mask" ]; then "$tool" lan set "$ch" netmask "$mask"; fi
if [ -n "$gw" ]; then "$tool" lan set "$ch" defgw ipaddr "$gw"; fi
if [ -n "$user" ]; then
  "$tool" user set name "$uid" "$user"
  "$tool" user set password "$uid" "$pass"
  "$tool" channel setaccess "$ch" "$uid" link=on ipmi=on callin=on privilege=4
  "$tool" user enable "$uid"
fi
echo "bmc configured"
"#;

/// `bmc.configure`: sets the BMC's LAN and login from the microkernel with ipmitool, then
/// re-reads `lan print` into `facts.bmc.lan`.
pub(crate) async fn bmc_configure(ctx: &StepCtx, p: &BmcConfigure) -> Result<StepOk, StepErr> {
    let node = ctx.rack_node()?;
    let inv = node.static_ips.iter().find(|s| s.interface == "bmc");
    let address = p
        .address
        .clone()
        .or_else(|| inv.map(|s| s.address.to_string()))
        .unwrap_or_default();
    let netmask = p
        .netmask
        .clone()
        .or_else(|| inv.and_then(|s| prefix_to_mask(s.prefix)))
        .unwrap_or_default();
    let gateway = p
        .gateway
        .clone()
        .or_else(|| inv.and_then(|s| s.gateway.map(|g| g.to_string())))
        .unwrap_or_default();
    let (user, pass) = match &p.credentials {
        CredentialSource::Given { username, password } => (username.clone(), password.clone()),
        CredentialSource::Inventory => {
            let b = node.bmc.as_ref();
            (
                b.and_then(|b| b.username.clone()).unwrap_or_default(),
                b.and_then(|b| b.password.clone()).unwrap_or_default(),
            )
        }
    };
    let args = vec![
        "-c".to_owned(),
        BMC_CONFIGURE_SCRIPT.to_owned(),
        "bmc-configure".to_owned(),
        p.ipmitool.clone(),
        p.channel.to_string(),
        p.user_id.to_string(),
        address,
        netmask,
        gateway,
        user,
        pass,
    ];
    if let Some(r) = ctx
        .node_call(1, |id, secs| NodeAction::Run {
            id,
            command: "sh".into(),
            args,
            timeout_secs: secs,
        })
        .await?
    {
        if r.exit_code != 0 {
            return Err(StepErr {
                message: format!("configuring the BMC failed: {}", r.output.trim()),
                exit_code: Some(r.exit_code),
                lost: false,
            });
        }
    }
    let Some(r) = ctx
        .node_call(2, |id, secs| NodeAction::Run {
            id,
            command: p.ipmitool.clone(),
            args: vec!["lan".into(), "print".into(), p.channel.to_string()],
            timeout_secs: secs,
        })
        .await?
    else {
        return Err(StepErr::failed(
            "bmc.configure: the re-read is its last action",
        ));
    };
    if r.exit_code != 0 {
        return Err(StepErr {
            message: format!("re-reading the BMC LAN failed: {}", r.output.trim()),
            exit_code: Some(r.exit_code),
            lost: false,
        });
    }
    let lan = parse_output(protocol::workflow::OutputFormat::KeyValue, &r.output)
        .map_err(StepErr::failed)?;
    let ip = lan
        .get("IP Address")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    ctx.put_fact("bmc.lan", lan, false)?;
    Ok(StepOk {
        exit_code: Some(0),
        message: Some(format!("BMC configured; LAN re-read: ip {ip}")),
        progress: None,
    })
}

fn prefix_to_mask(prefix: u8) -> Option<String> {
    if prefix > 32 {
        return None;
    }
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Some(std::net::Ipv4Addr::from(bits).to_string())
}

/// Neighbours from `lldpctl -f json` (lldpd 1.x: `{"lldp":{"interface":{IF:{...}}}}` or a
/// list of such objects): `[{interface, switch, port}]`.
pub fn parse_lldp(v: &Value) -> Vec<Value> {
    let mut entries: Vec<(String, &Value)> = Vec::new();
    match &v["lldp"]["interface"] {
        Value::Object(m) => entries.extend(m.iter().map(|(k, v)| (k.clone(), v))),
        Value::Array(list) => {
            for o in list.iter().filter_map(Value::as_object) {
                entries.extend(o.iter().map(|(k, v)| (k.clone(), v)));
            }
        }
        _ => {}
    }
    entries
        .into_iter()
        .map(|(iface, e)| {
            let switch = e["chassis"]
                .as_object()
                .and_then(|c| c.keys().next().cloned());
            let port = e["port"]["id"]["value"].as_str().map(str::to_owned);
            serde_json::json!({"interface": iface, "switch": switch, "port": port})
        })
        .collect()
}

/// One link `lldp.check` expects: a NIC as the inventory (or the step) names it, its MAC when
/// known, and the switch port it is cabled to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLink {
    /// The NIC's name in the inventory (`eno1`): what the installed OS will call it, not
    /// necessarily what the microkernel does (`eth0`).
    pub interface: String,
    /// The NIC's MAC, which identifies it whatever the kernel names it.
    pub mac: Option<Mac>,
    /// Switch system name.
    pub switch: String,
    /// Switch port id.
    pub port: String,
}

/// The node's interfaces as the microkernel's check-in reports them (`facts.nics`:
/// `[{name, mac, ...}]`): `(name, MAC)`.
pub fn node_interfaces(facts: &Value) -> Vec<(String, Mac)> {
    facts["nics"]
        .as_array()
        .map(|nics| {
            nics.iter()
                .filter_map(|n| {
                    let name = n["name"].as_str()?.to_owned();
                    let mac = n["mac"].as_str()?.parse().ok()?;
                    Some((name, mac))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Adds each neighbour's local MAC (from `interfaces`) to what `parse_lldp` read, so the facts
/// say which NIC heard it even when the microkernel's names are not the inventory's.
pub fn with_macs(seen: &[Value], interfaces: &[(String, Mac)]) -> Vec<Value> {
    seen.iter()
        .map(|n| {
            let mut n = n.clone();
            if let Some((_, mac)) = interfaces
                .iter()
                .find(|(name, _)| n["interface"] == name.as_str())
            {
                n["mac"] = Value::String(mac.to_string());
            }
            n
        })
        .collect()
}

/// Compares the expected links with the neighbours seen (`parse_lldp`'s entries) on the node
/// whose interfaces are `interfaces`. An expected NIC is found on the node by its MAC (the
/// microkernel names NICs `eth0`, the inventory as the installed OS will, `eno1`), else by its
/// name. `Err` lists every difference, naming what was expected and what was seen.
pub fn check_cabling(
    expected: &[ExpectedLink],
    seen: &[Value],
    interfaces: &[(String, Mac)],
) -> Result<(), Vec<String>> {
    let describe = |n: &Value| {
        format!(
            "{} {} on {}",
            n["switch"].as_str().unwrap_or("?"),
            n["port"].as_str().unwrap_or("?"),
            n["interface"].as_str().unwrap_or("?")
        )
    };
    let mut wrong = Vec::new();
    for e in expected {
        let by_mac = e.mac.and_then(|m| {
            interfaces
                .iter()
                .find(|(_, mac)| *mac == m)
                .map(|(name, _)| name.as_str())
        });
        let local = by_mac.unwrap_or(e.interface.as_str());
        let label = match (by_mac, e.mac) {
            (Some(l), Some(m)) if l != e.interface => {
                format!("{} ({m}, {l} on the node)", e.interface)
            }
            (None, Some(m)) => format!("{} ({m} not among the node's NICs)", e.interface),
            _ => e.interface.clone(),
        };
        match seen.iter().find(|n| n["interface"] == local) {
            Some(n) if n["switch"] == e.switch.as_str() && n["port"] == e.port.as_str() => {}
            Some(n) => wrong.push(format!(
                "{label}: expected {} {}, seen {}",
                e.switch,
                e.port,
                describe(n)
            )),
            None => {
                let others: Vec<String> = seen.iter().map(describe).collect();
                wrong.push(format!(
                    "{label}: expected {} {}, no neighbour on {local} (seen: {})",
                    e.switch,
                    e.port,
                    if others.is_empty() {
                        "nothing".to_owned()
                    } else {
                        others.join(", ")
                    }
                ));
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong)
    }
}

/// Marks where the node's interface list starts in the output of [`LLDP_SCRIPT`].
pub const NICS_MARKER: &str = "@@metalfleet.nics";

/// What `lldp.check` runs in the microkernel: the step's command (`$1`, its output and exit
/// code passed on), then the node's interfaces with their MACs from sysfs, so the NICs are
/// known even when no check-in reached the executor since the node was identified.
const LLDP_SCRIPT: &str = r#"out=$(sh -c "$1"); rc=$?
printf '%s\n' "$out"
[ "$rc" -eq 0 ] || exit "$rc"
echo '@@metalfleet.nics'
for i in /sys/class/net/*; do
  [ -r "$i/address" ] && echo "${i##*/} $(cat "$i/address")"
done
exit 0
"#;

/// Splits [`LLDP_SCRIPT`]'s output into the command's output and the node's interfaces
/// (`name mac` lines; the loopback's all-zero MAC and unparsable lines are skipped).
pub fn split_lldp_output(output: &str) -> (&str, Vec<(String, Mac)>) {
    let (command, nics) = match output.split_once(&format!("\n{NICS_MARKER}\n")) {
        Some((c, n)) => (c, n),
        None => (output, ""),
    };
    let zero: Mac = Mac([0; 6]);
    let interfaces = nics
        .lines()
        .filter_map(|l| {
            let (name, mac) = l.trim().split_once(' ')?;
            let mac: Mac = mac.trim().parse().ok()?;
            (mac != zero).then(|| (name.to_owned(), mac))
        })
        .collect();
    (command, interfaces)
}

/// `lldp.check`: reads the neighbours on the node into `facts.lldp` and compares them with
/// the expected switch ports (the step's, else the inventory's cabling).
pub(crate) async fn lldp_check(ctx: &StepCtx, p: &LldpCheck) -> Result<StepOk, StepErr> {
    let node = ctx.rack_node()?;
    let Some(r) = ctx
        .node_call(1, |id, secs| NodeAction::Run {
            id,
            command: "sh".into(),
            args: vec![
                "-c".into(),
                LLDP_SCRIPT.into(),
                "lldp-check".into(),
                p.command.clone(),
            ],
            timeout_secs: secs,
        })
        .await?
    else {
        return Err(StepErr::failed("lldp.check has a single action"));
    };
    if r.exit_code != 0 {
        return Err(StepErr {
            message: format!("{} failed: {}", p.command, r.output.trim()),
            exit_code: Some(r.exit_code),
            lost: false,
        });
    }
    let (output, mut interfaces) = split_lldp_output(&r.output);
    let json: Value = serde_json::from_str(output.trim())
        .map_err(|e| StepErr::failed(format!("{} did not print JSON: {e}", p.command)))?;
    // The check-in's NICs for any the node did not list now.
    for (name, mac) in node_interfaces(&ctx.facts()?) {
        if !interfaces.iter().any(|(n, _)| *n == name) {
            interfaces.push((name, mac));
        }
    }
    let seen = with_macs(&parse_lldp(&json), &interfaces);
    ctx.put_fact("lldp", Value::Array(seen.clone()), false)?;
    let inventory_mac = |name: &str| {
        node.switch_ports
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.mac)
    };
    let expected: Vec<ExpectedLink> = if p.expected.is_empty() {
        node.switch_ports
            .iter()
            .filter_map(|n| {
                Some(ExpectedLink {
                    interface: n.name.clone(),
                    mac: n.mac,
                    switch: n.switch.clone()?,
                    port: n.port.clone()?,
                })
            })
            .collect()
    } else {
        p.expected
            .iter()
            .map(|e| ExpectedLink {
                interface: e.interface.clone(),
                mac: inventory_mac(&e.interface),
                switch: e.switch.clone(),
                port: e.port.clone(),
            })
            .collect()
    };
    if expected.is_empty() {
        return Err(StepErr::failed(
            "nothing to check: the step names no neighbours and the inventory has no cabling",
        ));
    }
    match check_cabling(&expected, &seen, &interfaces) {
        Ok(()) => Ok(StepOk::msg(format!(
            "{} link(s) cabled as expected",
            expected.len()
        ))),
        Err(wrong) => Err(StepErr::failed(format!(
            "cabling differs: {}",
            wrong.join("; ")
        ))),
    }
}

/// `os.install`: boot override to the installer, reboot, wait for the installer's done
/// event. Phases are journaled, so a restart while the installer runs keeps waiting instead
/// of rebooting the node again.
pub(crate) async fn os_install(ctx: &StepCtx, p: &OsInstall) -> Result<StepOk, StepErr> {
    let resumed_phase = ctx
        .resume
        .as_ref()
        .and_then(|j| j.phase.clone().zip(j.phase_at));
    let since = match resumed_phase {
        Some((phase, at)) if phase == "waiting" || phase == "rebooting" => {
            ctx.log(format!(
                "re-attached in phase {phase}: waiting for {}",
                p.done_event
            ));
            at
        }
        _ => {
            let autoinstall = match &p.autoinstall {
                None => None,
                Some(Autoinstall::Name(n)) => Some(n.clone()),
                Some(Autoinstall::Inline(text)) => Some(write_inline_autoinstall(ctx, text)?),
            };
            let target = BootTarget::Install {
                kernel: p.kernel.clone(),
                initrd: p.initrd.clone(),
                cmdline: p.cmdline.clone(),
                autoinstall,
            };
            ctx.sh
                .set_override(ctx.node, |o| o.boot = Some(target))
                .map_err(|e| db_err(&e))?;
            let at = ctx.set_phase("rebooting")?;
            reboot(ctx).await?;
            ctx.set_phase("waiting")?;
            at
        }
    };
    wait_for(ctx, &WaitFor::Event(p.done_event.clone()), since).await?;
    Ok(StepOk::msg(format!("installer reported {}", p.done_event)))
}

/// Reboots the node: power cycle through its BMC, else a reboot action for its node-agent.
async fn reboot(ctx: &StepCtx) -> Result<(), StepErr> {
    let node = ctx.rack_node()?;
    if let Some(access) = &node.bmc {
        let b = ctx
            .sh
            .hw
            .bmcs
            .connect(ctx.node, access)
            .map_err(|e| StepErr::failed(crate::error_chain(&e)))?;
        b.power(crate::bmc::PowerAction::Cycle)
            .await
            .map_err(|e| StepErr::failed(crate::error_chain(&e)))?;
        ctx.log("power cycled through the BMC");
        return Ok(());
    }
    let r = ctx.node_call(1, |id, _| NodeAction::Reboot { id }).await?;
    match r {
        Some(r) if r.exit_code == 0 => {
            ctx.log("node-agent is rebooting the node");
            Ok(())
        }
        Some(r) => Err(StepErr::failed(format!(
            "reboot failed: {}",
            r.output.trim()
        ))),
        None => Ok(()),
    }
}

fn write_inline_autoinstall(ctx: &StepCtx, text: &str) -> Result<String, StepErr> {
    let dir = ctx.sh.config.autoinstall_dir.clone().ok_or_else(|| {
        StepErr::failed("an inline autoinstall file needs the HTTP server's template directory")
    })?;
    let rendered = ctx.render("autoinstall", text)?;
    let name = format!("metalfleet-runs/{}-{}.j2", ctx.run_id, ctx.index);
    let path = dir.join(&name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StepErr::failed(format!("creating {}: {e}", parent.display())))?;
    }
    // Rendered here with the run's context; the HTTP server renders it again, so it must
    // come through that second pass unchanged.
    let body = format!("{{% raw %}}{rendered}{{% endraw %}}");
    std::fs::write(&path, body)
        .map_err(|e| StepErr::failed(format!("writing {}: {e}", path.display())))?;
    Ok(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_lldp() {
        assert_eq!(prefix_to_mask(24).as_deref(), Some("255.255.255.0"));
        assert_eq!(prefix_to_mask(0).as_deref(), Some("0.0.0.0"));
        assert_eq!(prefix_to_mask(33), None);
        let v: Value = serde_json::from_str(
            r#"{"lldp":{"interface":{"eth0":{"chassis":{"tor1":{}},"port":{"id":{"type":"ifname","value":"Ethernet1/12"}}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_lldp(&v),
            vec![serde_json::json!({"interface":"eth0","switch":"tor1","port":"Ethernet1/12"})]
        );
    }

    /// What `lldpctl -f json` printed in a microkernel-like node namespace facing the lab's
    /// switch-side lldpd (trimmed to the fields read).
    const LAB_LLDPCTL: &str = r#"{"lldp":{"interface":{"eth0":{"via":"LLDP","rid":"1",
        "chassis":{"lab-r1-tor":{"id":{"type":"mac","value":"12:1e:f5:d9:29:44"}}},
        "port":{"id":{"type":"local","value":"t1v1n0"},"descr":"t1v1n0","ttl":"20"}}}}}"#;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    fn link(interface: &str, m: Option<&str>, switch: &str, port: &str) -> ExpectedLink {
        ExpectedLink {
            interface: interface.into(),
            mac: m.map(mac),
            switch: switch.into(),
            port: port.into(),
        }
    }

    #[test]
    fn cabling_matches_by_mac_when_the_microkernel_names_the_nic_otherwise() {
        let seen = parse_lldp(&serde_json::from_str(LAB_LLDPCTL).unwrap());
        // As the microkernel's check-in reports NICs (`Inventory.nics`).
        let facts = serde_json::json!({"nics": [
            {"name": "eth0", "mac": "52:54:00:01:01:00", "link_up": true, "speed_mbps": null},
            {"name": "eth1", "mac": "52:54:00:01:01:01", "link_up": false, "speed_mbps": null}
        ]});
        let ifs = node_interfaces(&facts);
        assert_eq!(
            ifs,
            vec![
                ("eth0".to_owned(), mac("52:54:00:01:01:00")),
                ("eth1".to_owned(), mac("52:54:00:01:01:01"))
            ]
        );
        let expected = [link(
            "eno1",
            Some("52:54:00:01:01:00"),
            "lab-r1-tor",
            "t1v1n0",
        )];
        assert_eq!(check_cabling(&expected, &seen, &ifs), Ok(()));
        // Matching by name alone (what the check did before) finds nothing on eno1.
        let by_name = [link("eno1", None, "lab-r1-tor", "t1v1n0")];
        let err = check_cabling(&by_name, &seen, &ifs).unwrap_err();
        assert_eq!(
            err,
            vec!["eno1: expected lab-r1-tor t1v1n0, no neighbour on eno1 (seen: lab-r1-tor t1v1n0 on eth0)"]
        );
        // The facts keep what was seen, with the MAC of the NIC that heard it.
        assert_eq!(
            with_macs(&seen, &ifs),
            vec![
                serde_json::json!({"interface": "eth0", "switch": "lab-r1-tor",
                "port": "t1v1n0", "mac": "52:54:00:01:01:00"})
            ]
        );
    }

    #[test]
    fn cabling_falls_back_to_the_name_and_names_expected_and_seen() {
        let seen = vec![
            serde_json::json!({"interface": "eno1", "switch": "tor1", "port": "Ethernet1/12"}),
            serde_json::json!({"interface": "eth1", "switch": "tor2", "port": "Ethernet1/3"}),
        ];
        // No MAC known, or a MAC no NIC of the node has: the name decides.
        let ifs = vec![("eth1".to_owned(), mac("52:54:00:00:00:02"))];
        assert_eq!(
            check_cabling(&[link("eno1", None, "tor1", "Ethernet1/12")], &seen, &ifs),
            Ok(())
        );
        assert_eq!(
            check_cabling(
                &[link(
                    "eno1",
                    Some("52:54:00:00:00:09"),
                    "tor1",
                    "Ethernet1/12"
                )],
                &seen,
                &[]
            ),
            Ok(())
        );
        // Cabled to another port: both ends of the difference are named.
        let err = check_cabling(
            &[
                link("eno1", None, "tor1", "Ethernet1/12"),
                link("eno2", Some("52:54:00:00:00:02"), "tor1", "Ethernet1/13"),
                link("eno3", Some("52:54:00:00:00:03"), "tor1", "Ethernet1/14"),
            ],
            &seen,
            &ifs,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![
                "eno2 (52:54:00:00:00:02, eth1 on the node): expected tor1 Ethernet1/13, seen tor2 Ethernet1/3 on eth1".to_owned(),
                "eno3 (52:54:00:00:00:03 not among the node's NICs): expected tor1 Ethernet1/14, no neighbour on eno3 (seen: tor1 Ethernet1/12 on eno1, tor2 Ethernet1/3 on eth1)".to_owned(),
            ]
        );
        // Nothing heard at all.
        let err =
            check_cabling(&[link("eno1", None, "tor1", "Ethernet1/12")], &[], &[]).unwrap_err();
        assert_eq!(
            err,
            vec!["eno1: expected tor1 Ethernet1/12, no neighbour on eno1 (seen: nothing)"]
        );
        // Check-in facts without NICs (an older node-agent) give no interfaces.
        assert!(node_interfaces(&serde_json::json!({})).is_empty());
    }

    fn run_lldp_script(command: &str) -> (i32, String) {
        let out = std::process::Command::new("sh")
            .args(["-c", LLDP_SCRIPT, "lldp-check", command])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    }

    #[test]
    fn the_node_script_passes_the_command_on_and_lists_the_nics() {
        // What the step runs in the microkernel, run here with this machine's sysfs.
        let (code, out) = run_lldp_script(&format!("printf '%s' '{}'", LAB_LLDPCTL));
        assert_eq!(code, 0, "{out}");
        let (json, nics) = split_lldp_output(&out);
        let seen = parse_lldp(&serde_json::from_str(json.trim()).unwrap());
        assert_eq!(seen[0]["port"], "t1v1n0");
        let sysfs: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        assert!(nics.iter().all(|(n, _)| sysfs.contains(n)), "{nics:?}");
        assert!(!nics.iter().any(|(n, _)| n == "lo"), "{nics:?}");
        // A failing command keeps its exit code and output, and lists nothing.
        let (code, out) = run_lldp_script("echo 'unable to connect to lldpd'; exit 3");
        assert_eq!((code, out.as_str()), (3, "unable to connect to lldpd\n"));
        assert_eq!(
            split_lldp_output(&out),
            ("unable to connect to lldpd\n", vec![])
        );
        let listed =
            format!("{{}}\n{NICS_MARKER}\nlo 00:00:00:00:00:00\neth0 52:54:00:01:01:00\nbogus\n");
        assert_eq!(
            split_lldp_output(&listed),
            ("{}", vec![("eth0".to_owned(), mac("52:54:00:01:01:00"))])
        );
    }

    #[test]
    fn waits_count_only_what_happened_after() {
        let facts = serde_json::json!({
            "metalfleet": {"checkin_at": 100, "events": {"os.installed": 50}},
            "system": {"serial": "SN1"}
        });
        assert!(happened(&WaitFor::Checkin, &facts, "SN1", 100, 0).unwrap());
        assert!(!happened(&WaitFor::Checkin, &facts, "SN1", 101, 0).unwrap());
        assert!(happened(&WaitFor::Identified, &facts, "SN1", 10, 10).unwrap());
        assert!(!happened(&WaitFor::Identified, &facts, "SN2", 10, 10).unwrap());
        let ev = WaitFor::Event("os.installed".into());
        assert!(!happened(&ev, &facts, "SN1", 60, 0).unwrap());
        assert!(happened(&ev, &facts, "SN1", 50, 0).unwrap());
    }

    #[test]
    fn identification_counts_the_check_in_an_earlier_step_saw() {
        let facts = serde_json::json!({
            "metalfleet": {"checkin_at": 100},
            "system": {"serial": "SN1"}
        });
        // The `identified` step started after the check-in, within the same run.
        assert!(happened(&WaitFor::Identified, &facts, "SN1", 150, 90).unwrap());
        // A check-in from before the run (an earlier boot) does not identify.
        assert!(!happened(&WaitFor::Identified, &facts, "SN1", 150, 120).unwrap());
        // A check-in with another serial does not either.
        assert!(!happened(&WaitFor::Identified, &facts, "SN2", 150, 90).unwrap());
    }
}
