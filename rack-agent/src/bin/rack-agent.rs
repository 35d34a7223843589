//! `rack-agent`: parses arguments, loads the config and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use protocol::domain::BmcDriver;
use rack_agent::agent::Agent;
use rack_agent::bmc::cli as bmc_cli;
use rack_agent::bmc::BootOverride;
use rack_agent::cli::{self, Source};
use rack_agent::config::Config;
use rack_agent::enroll::{self, EnrollRequest};
use rack_agent::status::format_utc;
use rack_agent::{error_chain, unix_secs};

/// Metalfleet rack agent.
#[derive(Debug, Parser)]
#[command(name = "rack-agent", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT/SIGTERM.
    Run {
        /// Agent config file (TOML).
        #[arg(long, short, env = "RACK_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Obtain the agent's certificate with a one-time enrollment token.
    Enroll {
        /// Agent config file (TOML).
        #[arg(long, short, env = "RACK_AGENT_CONFIG")]
        config: PathBuf,
        /// Coordinator REST API base URL, `https://host:port`.
        #[arg(long)]
        api: String,
        /// One-time enrollment token (prefer the environment variable: argv is public).
        #[arg(long, env = "METALFLEET_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Cluster CA certificate to trust for this call.
        #[arg(long)]
        ca_cert: PathBuf,
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// Show the agent's local view (from the store when the agent is not running).
    Status {
        /// Agent config file (TOML).
        #[arg(long, short, env = "RACK_AGENT_CONFIG")]
        config: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// List the nodes of the stored desired state (JSON).
    Nodes {
        /// Agent config file (TOML).
        #[arg(long, short, env = "RACK_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// One operation on a BMC through the agent's own drivers and `[bmc]` settings.
    ///
    /// Password from `METALFLEET_BMC_PASSWORD`. Redfish addresses may name the system:
    /// `https://host:port/redfish/v1/Systems/<id>`.
    Bmc {
        /// Agent config file (TOML); its `[bmc]` section applies.
        #[arg(long, short, env = "RACK_AGENT_CONFIG")]
        config: PathBuf,
        /// BMC protocol.
        #[arg(long, value_enum)]
        driver: DriverArg,
        /// BMC address: `host[:port]` (IPMI) or `https://host[:port][/redfish/v1/Systems/<id>]`.
        #[arg(long)]
        address: String,
        /// Login name.
        #[arg(long)]
        username: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
        #[command(subcommand)]
        op: BmcCommand,
    },
    /// Queue synthetic CheckIn events (tests and demos).
    Emit {
        /// Agent config file (TOML).
        #[arg(long, short, env = "RACK_AGENT_CONFIG")]
        config: PathBuf,
        /// Number of CheckIn events.
        #[arg(long)]
        checkins: u32,
        /// Serials are `<prefix>-000001`, `<prefix>-000002`, ...
        #[arg(long)]
        serial_prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DriverArg {
    Ipmi,
    Redfish,
}

#[derive(Debug, Subcommand)]
enum BmcCommand {
    /// `power on|off|cycle|reset|soft|status`.
    Power {
        /// What to do.
        action: String,
    },
    /// Set the boot device override: `bootdev pxe|disk|cdrom|bios|default`.
    Bootdev {
        /// Device.
        device: String,
        /// Boot in UEFI mode.
        #[arg(long)]
        uefi: bool,
        /// For every following boot (default: the next boot only).
        #[arg(long)]
        persistent: bool,
    },
    /// Read the boot device override back.
    Bootstatus,
    /// Read the FRU / system identity (serial).
    Fru,
    /// Read the BMC's LAN settings.
    Lan,
}

fn bmc_op(cmd: &BmcCommand) -> Result<bmc_cli::BmcOp, String> {
    Ok(match cmd {
        BmcCommand::Power { action } if action == "status" => bmc_cli::BmcOp::PowerStatus,
        BmcCommand::Power { action } => bmc_cli::BmcOp::Power(bmc_cli::parse_power_action(action)?),
        BmcCommand::Bootdev {
            device,
            uefi,
            persistent,
        } => bmc_cli::BmcOp::SetBoot(BootOverride {
            device: bmc_cli::parse_boot_device(device)?,
            uefi: *uefi,
            persistent: *persistent,
        }),
        BmcCommand::Bootstatus => bmc_cli::BmcOp::BootStatus,
        BmcCommand::Fru => bmc_cli::BmcOp::Fru,
        BmcCommand::Lan => bmc_cli::BmcOp::Lan,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let default_level = if matches!(args.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(dispatch(args.command))
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(2, &e.to_string()))
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn exit(code: i32, message: &str) -> ExitCode {
    fail(u8::try_from(code).unwrap_or(1), message)
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run(config).await
        }
        Command::Enroll {
            config,
            api,
            token,
            ca_cert,
            force,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let req = EnrollRequest {
                api,
                token,
                ca_cert,
                force,
            };
            match enroll::enroll(&config, &req).await {
                Ok(done) => {
                    println!(
                        "enrolled rack {}: certificate {} valid until {}",
                        config.rack,
                        done.fingerprint,
                        format_utc(done.not_after)
                    );
                    let (dropped, kept) = done.outbox;
                    println!(
                        "event sequence continues after {} ({kept} queued event(s) kept, {dropped} already applied)",
                        done.last_seq
                    );
                    if done.endpoints.is_empty() {
                        println!("fleet endpoints: none given; set `coordinators` in the config");
                    } else {
                        println!("fleet endpoints: {}", done.endpoints.join(", "));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => exit(e.exit_code(), &error_chain(&e)),
            }
        }
        Command::Status { config, output } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cli::status(&config).await {
                Ok(view) => {
                    match output {
                        Output::Json => match serde_json::to_string_pretty(&view) {
                            Ok(text) => println!("{text}"),
                            Err(e) => return fail(1, &e.to_string()),
                        },
                        Output::Text => print!("{}", view.render(unix_secs())),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => exit(e.exit_code(), &error_chain(&e)),
            }
        }
        Command::Nodes { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cli::nodes(&config).await {
                Ok((nodes, source)) => {
                    if source == Source::Store {
                        eprintln!("(agent not running) nodes read from the store");
                    }
                    match serde_json::to_string_pretty(&nodes) {
                        Ok(text) => println!("{text}"),
                        Err(e) => return fail(1, &e.to_string()),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => exit(e.exit_code(), &error_chain(&e)),
            }
        }
        Command::Bmc {
            config,
            driver,
            address,
            username,
            output,
            op,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let op = match bmc_op(&op) {
                Ok(op) => op,
                Err(e) => return fail(2, &e),
            };
            let driver = match driver {
                DriverArg::Ipmi => BmcDriver::Ipmi,
                DriverArg::Redfish => BmcDriver::Redfish,
            };
            let password = std::env::var("METALFLEET_BMC_PASSWORD").ok();
            let access = bmc_cli::access(driver, &address, username, password);
            match bmc_cli::run(&config, &access, op).await {
                Ok(answer) => {
                    match output {
                        Output::Json => match serde_json::to_string_pretty(&answer) {
                            Ok(text) => println!("{text}"),
                            Err(e) => return fail(1, &e.to_string()),
                        },
                        Output::Text => println!("{}", answer.render()),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &error_chain(&e)),
            }
        }
        Command::Emit {
            config,
            checkins,
            serial_prefix,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let events = match cli::checkin_events(checkins, &serial_prefix) {
                Ok(e) => e,
                Err(e) => return exit(e.exit_code(), &error_chain(&e)),
            };
            match cli::emit(&config, events).await {
                Ok((seqs, source)) => {
                    let range = match (seqs.first(), seqs.last()) {
                        (Some(a), Some(b)) => format!("seq {a}..={b}"),
                        _ => "no seqs".to_owned(),
                    };
                    let via = match source {
                        Source::Agent => "via the running agent",
                        Source::Store => "(agent not running) directly into the store",
                    };
                    println!("queued {} event(s), {range}, {via}", seqs.len());
                    ExitCode::SUCCESS
                }
                Err(e) => exit(e.exit_code(), &error_chain(&e)),
            }
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let agent = match Agent::start(config).await {
        Ok(a) => a,
        Err(e) => return fail(1, &error_chain(&e)),
    };
    if let Err(e) = shutdown_signal().await {
        tracing::error!(error = %e, "cannot wait for signals; stopping");
    }
    tracing::info!("shutting down");
    agent.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
