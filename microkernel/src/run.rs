//! The node-agent's life: collect inventory, check in (retrying until the rack agent answers),
//! then poll for actions, execute them, and deliver each result (retrying until delivered).

use std::path::PathBuf;
use std::time::Duration;

use protocol::node::CheckinRequest;
use protocol::{Mac, Serial};

use crate::actions::{Executor, PowerCommands, Then};
use crate::client::NodeClient;
use crate::cmdline::BootParams;
use crate::inventory::{parse_lan_print, parse_lldpctl_json, Collector, Inventory};

/// First retry delay after a failed call; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How long an external inventory command (lldpctl, ipmitool) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How the node-agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Filesystem root to read inventory from (`/`).
    pub root: PathBuf,
    /// Long-poll duration of `next`.
    pub poll_wait: Duration,
    /// How power actions are carried out.
    pub power: PowerCommands,
    /// Ask `lldpctl` and `ipmitool` for LLDP neighbours and the BMC's LAN settings.
    pub external_commands: bool,
    /// Stop after the check-in (inventory only).
    pub checkin_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root: PathBuf::from("/"),
            poll_wait: Duration::from_secs(30),
            power: PowerCommands::default(),
            external_commands: true,
            checkin_only: false,
        }
    }
}

/// Why the node-agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No MAC on the command line and no NIC found.
    #[error("no MAC to report as: pass metalfleet.mac= or give the machine a NIC")]
    NoMac,
    /// Neither the DMI serial nor the MAC-derived fallback is a valid serial.
    #[error("no usable serial number")]
    NoSerial,
}

/// Collects the inventory, including what external tools report when enabled.
pub async fn collect(opts: &Options) -> Inventory {
    let mut inv = Collector::new(&opts.root).collect();
    if opts.external_commands {
        if let Some(out) = command_output("lldpctl", &["-f", "json"]).await {
            inv.lldp = parse_lldpctl_json(&out);
        }
        if opts.root.join("dev/ipmi0").exists() {
            if let Some(out) = command_output("ipmitool", &["lan", "print", "1"]).await {
                inv.bmc = Some(parse_lan_print(&out));
            }
        }
    }
    inv
}

async fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => {
            tracing::info!(program, status = %out.status, "inventory command failed");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(program, error = %e, "inventory command not available");
            None
        }
        Err(_) => {
            tracing::warn!(program, "inventory command timed out");
            None
        }
    }
}

/// The check-in for this inventory: the DMI serial (or, without one, a serial derived from the
/// boot MAC so the machine still lands in the discovered pool) and every NIC's MAC.
pub fn checkin_request(inv: &Inventory, boot_mac: Mac) -> Result<CheckinRequest, RunError> {
    let fallback = format!("nodmi-{}", boot_mac.to_string().replace(':', ""));
    let serial = match inv.system.serial.as_deref().map(str::parse::<Serial>) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the DMI serial is not usable; reporting {fallback}");
            fallback.parse().map_err(|_| RunError::NoSerial)?
        }
        None => fallback.parse().map_err(|_| RunError::NoSerial)?,
    };
    let mut macs: Vec<Mac> = inv.nics.iter().filter_map(|n| n.mac.parse().ok()).collect();
    if !macs.contains(&boot_mac) {
        macs.insert(0, boot_mac);
    }
    Ok(CheckinRequest {
        serial,
        macs,
        facts: serde_json::to_value(inv).unwrap_or_default(),
    })
}

/// Runs until the machine goes away (or, with `checkin_only`, until checked in).
pub async fn run(params: BootParams, opts: Options) -> Result<(), RunError> {
    let inv = collect(&opts).await;
    let boot_mac = params
        .mac
        .or_else(|| {
            inv.nics
                .iter()
                .find(|n| n.link_up)
                .or(inv.nics.first())
                .and_then(|n| n.mac.parse().ok())
        })
        .ok_or(RunError::NoMac)?;
    let client = NodeClient::new(&params.agent, boot_mac);
    let req = checkin_request(&inv, boot_mac)?;
    tracing::info!(agent = %params.agent, mac = %boot_mac, serial = %req.serial, "checking in");
    let reply = retry("check-in", || client.checkin(&req)).await;
    tracing::info!(known = reply.known, node = ?reply.node, "checked in");
    if opts.checkin_only {
        return Ok(());
    }
    let executor = Executor::new(client.clone(), opts.power.clone());
    let mut backoff = MIN_BACKOFF;
    loop {
        let action = match client.next(opts.poll_wait).await {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "polling for actions failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        tracing::info!(action = action.id(), "executing");
        let (result, then) = executor.execute(&action).await;
        retry("result", || client.result(&result)).await;
        if let Then::Exec(argv) = then {
            if let Some((program, args)) = argv.split_first() {
                tracing::info!(?argv, "leaving");
                match tokio::process::Command::new(program)
                    .args(args)
                    .status()
                    .await
                {
                    Ok(s) => tracing::warn!(status = %s, ?argv, "still here after"),
                    Err(e) => tracing::error!(error = %e, ?argv, "cannot run"),
                }
            }
        }
    }
}

/// Calls `f` until it succeeds, backing off between attempts.
async fn retry<T, E, F, Fut>(what: &str, mut f: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(what, error = %e, retry_in_ms = backoff.as_millis() as u64, "call failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
