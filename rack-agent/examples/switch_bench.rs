//! Switch driver benchmark (run by `tests/bench/switch.sh`): VLAN changes for N ports applied
//! as one batch (one OVSDB transaction / one CLI session) versus one port per `apply`, against
//! whatever switch the arguments describe. Every apply is verified by read-back, as in
//! production. Prints per-round times, the best of each, and the ratio.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rack_agent::switch::config::{DriverConfig, OvsAddress, SshCliConfig};
use rack_agent::switch::sshcli::Dialect;
use rack_agent::switch::{self, PortConfig, PortMode, SwitchConfig, Vlan};

#[derive(Debug, Parser)]
struct Args {
    /// `ovs` or `ssh-cli`.
    #[arg(long)]
    driver: String,
    /// OVSDB address (`unix:<path>`, `tcp:<host>:<port>`) or SSH `host:port`.
    #[arg(long)]
    address: String,
    /// Comma-separated port names.
    #[arg(long)]
    ports: String,
    /// OVS bridge.
    #[arg(long, default_value = "br0")]
    bridge: String,
    /// SSH CLI dialect.
    #[arg(long, default_value = "nxos")]
    dialect: String,
    /// SSH user.
    #[arg(long, default_value = "metalfleet")]
    username: String,
    /// SSH password file.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The switch's SSH host key (`<type> <base64>`).
    #[arg(long)]
    known_host_key: Option<String>,
    /// Rounds (best is reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ports: Vec<String> = args.ports.split(',').map(str::to_owned).collect();
    let driver = match args.driver.as_str() {
        "ovs" => DriverConfig::Ovs {
            address: OvsAddress::parse(&args.address).map_err(anyhow::Error::msg)?,
            bridge: args.bridge.clone(),
        },
        "ssh-cli" => {
            let (host, port) = args
                .address
                .rsplit_once(':')
                .context("--address host:port")?;
            DriverConfig::SshCli(SshCliConfig {
                host: host.to_owned(),
                port: port.parse()?,
                dialect: Dialect::parse(&args.dialect).context("--dialect")?,
                username: args.username.clone(),
                password_file: args.password_file.clone().context("--password-file")?,
                known_host_key: args.known_host_key.clone().context("--known-host-key")?,
                ssh_binary: PathBuf::from("ssh"),
            })
        }
        other => bail!("unknown driver {other}"),
    };
    let drv = switch::connect(&SwitchConfig {
        name: "bench".into(),
        driver,
        timeout: Duration::from_secs(60),
    })?;
    let batch_for = |vlan: u16| -> anyhow::Result<Vec<PortConfig>> {
        let vlan = Vlan::new(vlan)?;
        Ok(ports
            .iter()
            .map(|p| PortConfig::new(p.clone(), PortMode::Access { vlan }))
            .collect())
    };
    // Warm up: connection (and SSH master) established, ports in a known state.
    drv.apply(&batch_for(99)?).await?;
    let (mut best_batch, mut best_single) = (Duration::MAX, Duration::MAX);
    for r in 0..args.rounds {
        let base = 100 + 2 * u16::try_from(r)?;
        let t = Instant::now();
        drv.apply(&batch_for(base)?).await?;
        let batched = t.elapsed();
        let t = Instant::now();
        for change in batch_for(base + 1)? {
            drv.apply(std::slice::from_ref(&change)).await?;
        }
        let single = t.elapsed();
        println!(
            "round {}: {} ports batched {} | one by one {} | ratio {:.1}x",
            r + 1,
            ports.len(),
            secs(batched),
            secs(single),
            single.as_secs_f64() / batched.as_secs_f64()
        );
        best_batch = best_batch.min(batched);
        best_single = best_single.min(single);
    }
    println!(
        "{} {}: {} ports, best batched {} (1 apply), best one-by-one {} ({} applies), ratio {:.1}x",
        args.driver,
        if args.driver == "ovs" {
            args.bridge.as_str()
        } else {
            args.dialect.as_str()
        },
        ports.len(),
        secs(best_batch),
        secs(best_single),
        ports.len(),
        best_single.as_secs_f64() / best_batch.as_secs_f64()
    );
    Ok(())
}
