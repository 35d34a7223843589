//! `node-agent`: parses arguments and the kernel command line, then runs (see the library).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use node_agent::actions::PowerCommands;
use node_agent::cmdline::{self, BootParams};
use node_agent::run::{self, Options};

/// Metalfleet node-agent (runs in the discovery/maintenance microkernel).
#[derive(Debug, Parser)]
#[command(name = "node-agent", version)]
struct Args {
    /// Kernel command line to read `metalfleet.agent=` / `metalfleet.mac=` from.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Rack agent base URL (overrides the command line).
    #[arg(long)]
    agent: Option<String>,
    /// MAC to report as (overrides the command line).
    #[arg(long)]
    mac: Option<String>,
    /// Filesystem root to read inventory from.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Long-poll duration in seconds.
    #[arg(long, default_value_t = 30)]
    poll_wait: u64,
    /// Do not run lldpctl/ipmitool.
    #[arg(long)]
    no_external_commands: bool,
    /// Directory for kexec downloads.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the inventory as JSON and exit.
    Inventory,
    /// Check in once and exit.
    Checkin,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let opts = Options {
        root: args.root.clone(),
        poll_wait: Duration::from_secs(args.poll_wait),
        power: PowerCommands {
            scratch: args.scratch.clone(),
            ..PowerCommands::default()
        },
        external_commands: !args.no_external_commands,
        checkin_only: matches!(args.command, Some(Command::Checkin)),
    };
    if let Some(Command::Inventory) = args.command {
        let inv = run::collect(&opts).await;
        match serde_json::to_string_pretty(&inv) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("node-agent: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let params = match params(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("node-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match run::run(params, opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn params(args: &Args) -> Result<BootParams, String> {
    let text = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let mut line = text.trim().to_owned();
    if let Some(a) = &args.agent {
        line.push_str(&format!(" {}={a}", protocol::node::CMDLINE_AGENT));
    }
    if let Some(m) = &args.mac {
        line.push_str(&format!(" {}={m}", protocol::node::CMDLINE_MAC));
    }
    cmdline::parse(&line).map_err(|e| format!("{}: {e}", args.cmdline.display()))
}
