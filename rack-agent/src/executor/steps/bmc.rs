//! BMC steps from the agent: `bmc.power`, `bmc.boot_device`, `bmc.validate`,
//! `redfish.firmware_update`, `redfish.bios`, `redfish.raid` — through the executor's
//! [`crate::executor::BmcConnector`] (the agent's guarded drivers; simulators in tests).

use std::sync::Arc;

use protocol::fleet::BmcAccess;
use protocol::workflow::{
    BmcBootDevice, BmcPower, BmcValidate, BootDevice, PowerAction, RaidLevel, RedfishBios,
    RedfishFirmwareUpdate, RedfishRaid,
};

use super::{StepCtx, StepErr, StepOk};
use crate::bmc::{self, Bmc, BootOverride, PowerState, TaskState, VolumeSpec};

fn bmc_err(e: &bmc::BmcError) -> StepErr {
    StepErr::failed(crate::error_chain(e))
}

/// The node's BMC access from the desired state.
fn access(ctx: &StepCtx) -> Result<BmcAccess, StepErr> {
    ctx.rack_node()?.bmc.ok_or_else(|| {
        StepErr::failed(format!(
            "node {} has no BMC access in the desired state",
            ctx.node
        ))
    })
}

fn connect(ctx: &StepCtx, access: &BmcAccess) -> Result<Arc<dyn Bmc>, StepErr> {
    ctx.sh
        .hw
        .bmcs
        .connect(ctx.node, access)
        .map_err(|e| bmc_err(&e))
}

fn node_bmc(ctx: &StepCtx) -> Result<Arc<dyn Bmc>, StepErr> {
    connect(ctx, &access(ctx)?)
}

/// How long `bmc.power` waits for the BMC to show the state its action leads to.
const POWER_SETTLE: std::time::Duration = std::time::Duration::from_secs(15);

/// `bmc.power`.
pub(crate) async fn power(ctx: &StepCtx, p: &BmcPower) -> Result<StepOk, StepErr> {
    let b = node_bmc(ctx)?;
    let action = match p.action {
        PowerAction::On => bmc::PowerAction::On,
        PowerAction::Off => bmc::PowerAction::Off,
        PowerAction::Cycle => bmc::PowerAction::Cycle,
        PowerAction::Reset => bmc::PowerAction::Reset,
        PowerAction::Soft => bmc::PowerAction::SoftOff,
    };
    b.power(action).await.map_err(|e| bmc_err(&e))?;
    // BMCs apply power changes a moment later (a cycle reads Off right after it was
    // accepted): the fact records the state the action leads to once the BMC shows it, or
    // what it shows after a bounded wait.
    let want = if p.action == PowerAction::Off || p.action == PowerAction::Soft {
        PowerState::Off
    } else {
        PowerState::On
    };
    let settle = (tokio::time::Instant::now() + POWER_SETTLE).min(ctx.deadline);
    let state = loop {
        let state = b.power_status().await.map_err(|e| bmc_err(&e))?;
        if state == want || tokio::time::Instant::now() >= settle {
            break state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    ctx.put_fact("power", serde_json::json!(state == PowerState::On), false)?;
    Ok(StepOk::msg(format!(
        "power {:?} done, power is {state:?}",
        p.action
    )))
}

/// `bmc.boot_device`: sets the override and reads it back.
pub(crate) async fn boot_device(ctx: &StepCtx, p: &BmcBootDevice) -> Result<StepOk, StepErr> {
    let b = node_bmc(ctx)?;
    let device = match p.device {
        BootDevice::Pxe => bmc::BootDevice::Pxe,
        BootDevice::Disk => bmc::BootDevice::Disk,
        BootDevice::Cdrom => bmc::BootDevice::Cdrom,
        BootDevice::Bios => bmc::BootDevice::BiosSetup,
    };
    // Keep the firmware mode the BMC reports; a boot device change is not a mode change.
    let uefi = b.boot_override().await.map(|o| o.uefi).unwrap_or(true);
    b.set_boot(BootOverride {
        device,
        uefi,
        persistent: p.persistent,
    })
    .await
    .map_err(|e| bmc_err(&e))?;
    let back = b.boot_override().await.map_err(|e| bmc_err(&e))?;
    Ok(StepOk::msg(format!(
        "boot device {} (reads back as {}, persistent {})",
        device, back.device, back.persistent
    )))
}

/// `bmc.validate`: reaches the BMC with its new settings; reads power and LAN.
pub(crate) async fn validate(ctx: &StepCtx, p: &BmcValidate) -> Result<StepOk, StepErr> {
    let mut a = access(ctx)?;
    let facts = ctx.facts()?;
    // The address `bmc.configure` set (its re-read LAN facts) wins over the inventory's.
    let configured = facts
        .pointer("/bmc/lan/IP Address")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    if let Some(addr) = p.address.clone().or(configured) {
        a.address = addr;
    }
    if let Some(d) = p.driver {
        a.driver = d;
    }
    let b = connect(ctx, &a)?;
    let power = b.power_status().await.map_err(|e| bmc_err(&e))?;
    let lan = b.lan_config().await.map_err(|e| bmc_err(&e))?;
    ctx.put_fact(
        "bmc.validated",
        serde_json::json!({
            "address": a.address,
            "power": power,
            "lan": lan,
            "at": crate::unix_millis(),
        }),
        false,
    )?;
    Ok(StepOk::msg(format!(
        "BMC {} answers: power {power:?}, LAN ip {}",
        a.address,
        lan.ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into())
    )))
}

/// `redfish.firmware_update`: starts the update and polls its task, reporting its percent
/// as progress.
pub(crate) async fn firmware_update(
    ctx: &StepCtx,
    p: &RedfishFirmwareUpdate,
) -> Result<StepOk, StepErr> {
    let b = node_bmc(ctx)?;
    let mut task = b
        .firmware_update(&p.image_uri)
        .await
        .map_err(|e| bmc_err(&e))?;
    ctx.log(format!("firmware update task {}", task.id));
    let mut interval = std::time::Duration::from_millis(200);
    while task.state == TaskState::Running {
        if let Some(pc) = task.percent {
            ctx.log(format!("progress: {pc}% firmware update task {}", task.id));
        }
        tokio::time::sleep(interval.min(ctx.left())).await;
        interval = (interval * 2).min(std::time::Duration::from_secs(5));
        task = b.task_status(&task.id).await.map_err(|e| bmc_err(&e))?;
    }
    for m in &task.messages {
        ctx.log(format!("bmc: {m}"));
    }
    match task.state {
        TaskState::Completed => Ok(StepOk::msg(format!("firmware task {} completed", task.id))),
        _ => Err(StepErr::failed(format!(
            "firmware task {} failed: {}",
            task.id,
            task.messages.join("; ")
        ))),
    }
}

/// `redfish.bios`: PATCHes pending settings; with `apply`, resets the system and checks that
/// nothing is pending any more.
pub(crate) async fn bios(ctx: &StepCtx, p: &RedfishBios) -> Result<StepOk, StepErr> {
    let b = node_bmc(ctx)?;
    let attrs = p
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    b.set_bios_attributes(attrs)
        .await
        .map_err(|e| bmc_err(&e))?;
    if !p.apply {
        return Ok(StepOk::msg(format!(
            "{} BIOS attributes pending until the next reboot",
            p.attributes.len()
        )));
    }
    let on = b.power_status().await.map_err(|e| bmc_err(&e))? == PowerState::On;
    let action = if on {
        bmc::PowerAction::Reset
    } else {
        bmc::PowerAction::On
    };
    b.power(action).await.map_err(|e| bmc_err(&e))?;
    let now = b.bios_attributes().await.map_err(|e| bmc_err(&e))?;
    let wrong: Vec<String> = p
        .attributes
        .iter()
        .filter(|(k, v)| now.current.get(*k) != Some(&v.0))
        .map(|(k, v)| format!("{k} is {:?}, want {}", now.current.get(k), v.0))
        .collect();
    if !wrong.is_empty() {
        return Err(StepErr::failed(format!(
            "BIOS settings not in effect after the reset: {}",
            wrong.join(", ")
        )));
    }
    Ok(StepOk::msg(format!(
        "{} BIOS attributes in effect",
        p.attributes.len()
    )))
}

fn raid_type(l: RaidLevel) -> &'static str {
    match l {
        RaidLevel::Raid0 => "RAID0",
        RaidLevel::Raid1 => "RAID1",
        RaidLevel::Raid5 => "RAID5",
        RaidLevel::Raid6 => "RAID6",
        RaidLevel::Raid10 => "RAID10",
    }
}

/// `redfish.raid`: optionally deletes the controller's volumes, then creates the volumes.
pub(crate) async fn raid(ctx: &StepCtx, p: &RedfishRaid) -> Result<StepOk, StepErr> {
    let b = node_bmc(ctx)?;
    let controllers = b.storage().await.map_err(|e| bmc_err(&e))?;
    let ctrl = match &p.controller {
        Some(id) => controllers
            .iter()
            .find(|c| c.id == *id || c.id.ends_with(&format!("/{id}")))
            .ok_or_else(|| StepErr::failed(format!("no storage controller {id:?}")))?,
        None => controllers
            .first()
            .ok_or_else(|| StepErr::failed("the BMC reports no storage controller"))?,
    };
    if p.clear {
        for v in &ctrl.volumes {
            b.delete_volume(&v.id).await.map_err(|e| bmc_err(&e))?;
            ctx.log(format!("deleted volume {}", v.id));
        }
    }
    let mut made = Vec::new();
    for v in &p.volumes {
        let drives = v
            .drives
            .iter()
            .map(|d| {
                ctrl.drives
                    .iter()
                    .find(|x| x.id == *d || x.id.ends_with(&format!("/{d}")))
                    .map(|x| x.id.clone())
                    .unwrap_or_else(|| d.clone())
            })
            .collect();
        let spec = VolumeSpec {
            name: v.name.clone(),
            raid_type: raid_type(v.level).to_owned(),
            capacity_bytes: v.size_gib.map(|g| g.saturating_mul(1 << 30)),
            drives,
        };
        let id = b
            .create_volume(&ctrl.id, spec)
            .await
            .map_err(|e| bmc_err(&e))?;
        ctx.log(format!("created volume {} ({})", v.name, id));
        made.push(id);
    }
    Ok(StepOk::msg(format!("created {} volume(s)", made.len())))
}
