//! `lab`: builds, inspects and tears down the virtual datacenter (`metalfleet_tests::lab`)
//! from the command line; the lab keeps running after `lab up` returns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metalfleet_tests::lab::{Lab, LabConfig};

/// The Metalfleet virtual datacenter: namespaces, Open vSwitch, coordinators, rack agents,
/// QEMU VMs behind virtual BMCs.
#[derive(Debug, Parser)]
#[command(name = "lab")]
struct Cli {
    /// Lab directory (state, logs, consoles) [default: <workspace>/lab-state/lab].
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab and leave it running (tears down a lab left in --dir first).
    Up {
        /// Lab config [default: tests/lab/lab.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop every process of the lab, delete its namespaces and its directory.
    Down {
        /// Config naming the prefix, used when the directory does not (a crash before it was
        /// written) [default: tests/lab/lab.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the lab's processes, VMs and namespaces.
    Status,
    /// Run metalctl against the lab's coordinators (inside the core namespace).
    Metalctl {
        /// metalctl's arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Power a VM on or off, or show its power state, through its BMC with the agent's drivers.
    Power {
        /// VM name.
        vm: String,
        /// on | off | status
        action: String,
    },
    /// Print a VM's serial console.
    Console {
        /// VM name.
        vm: String,
    },
}

fn default_dir() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).join("lab-state/lab")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.dir.clone().unwrap_or_else(default_dir);
    match run(cli.command, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd, dir: &Path) -> anyhow::Result<()> {
    match cmd {
        Cmd::Up { config } => {
            let path = config.unwrap_or_else(LabConfig::default_path);
            let config = LabConfig::load(&path)?;
            let lab = Lab::up(&config, dir)?;
            print!("{}", lab.status());
            println!(
                "\nThe lab runs. metalctl: cargo run -p metalfleet-tests --bin lab -- --dir {d} metalctl node list\n\
                 power a VM:  cargo run -p metalfleet-tests --bin lab -- --dir {d} power <vm> on\n\
                 tear down:   cargo run -p metalfleet-tests --bin lab -- --dir {d} down",
                d = lab.dir().display()
            );
            lab.detach();
        }
        Cmd::Down { config } => {
            let prefix = LabConfig::load(&config.unwrap_or_else(LabConfig::default_path))
                .map(|c| c.prefix)
                .unwrap_or_else(|_| "mflab".into());
            let t = Lab::down_dir(dir, &prefix)?;
            println!(
                "stopped {} processes ({} needed SIGKILL), deleted namespaces {:?}, removed {}: {}",
                t.stopped,
                t.killed,
                t.namespaces,
                dir.display(),
                t.removed_dir
            );
        }
        Cmd::Status => print!("{}", Lab::open(dir)?.status()),
        Cmd::Metalctl { args } => {
            let lab = Lab::open(dir)?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            print!("{}", lab.metalctl(&args)?);
        }
        Cmd::Power { vm, action } => {
            let lab = Lab::open(dir)?;
            match action.as_str() {
                "on" | "off" => lab.power(&vm, action == "on")?,
                "status" => println!("{}", if lab.power_status(&vm)? { "on" } else { "off" }),
                other => anyhow::bail!("power action {other:?}: use on, off or status"),
            }
        }
        Cmd::Console { vm } => print!("{}", Lab::open(dir)?.vm_console(&vm)?),
    }
    Ok(())
}
