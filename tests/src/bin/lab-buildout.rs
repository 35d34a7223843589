//! `lab-buildout`: the README's main job on the virtual datacenter — brings the lab up (or
//! reuses the one running in `--dir`), gives the rack agents the lab OS, stores the workflow
//! templates, starts the `buildout` rollout over every node with `lab-params.yaml`, follows it
//! with `metalctl rollout watch` and ends with a table of nodes (rack, U, serial, IPs, state).
//! `scripts/lab.sh` installs what it needs and runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use metalfleet_tests::lab::{buildout, Lab, LabConfig};

/// Run the buildout on the lab's VMs.
#[derive(Debug, Parser)]
#[command(name = "lab-buildout")]
struct Cli {
    /// Lab directory [default: <workspace>/lab-state/lab].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Lab config for a lab that is not running yet [default: tests/lab/os/buildout-lab.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Runs in flight at most, overall.
    #[arg(long, default_value_t = 4)]
    max_in_flight: u32,
    /// Failed runs tolerated before the rollout pauses.
    #[arg(long, default_value_t = 0)]
    failure_budget: u32,
}

fn workspace() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lab-buildout: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<bool> {
    let dir = cli
        .dir
        .clone()
        .unwrap_or_else(|| workspace().join("lab-state/lab"));
    // A lab whose coordinators answer is reused.
    let running = dir.join("lab.toml").is_file()
        && Lab::open(&dir).is_ok_and(|l| l.metalctl(&["node", "list"]).is_ok());
    let lab = if running {
        println!("== using the lab running in {}", dir.display());
        Lab::open(&dir)?
    } else {
        let path = cli
            .config
            .clone()
            .unwrap_or_else(|| workspace().join("tests/lab/os/buildout-lab.toml"));
        println!("== bringing the lab up ({})", path.display());
        let lab = Lab::up(&LabConfig::load(&path)?, &dir)?;
        let dir = lab.dir().to_path_buf();
        lab.detach();
        Lab::open(&dir)?
    };
    println!("== lab OS, workflow templates");
    buildout::prepare(&lab)?;
    let id = buildout::start(
        &lab,
        "buildout",
        &[],
        &[
            "--max-in-flight",
            &cli.max_in_flight.to_string(),
            "--failure-budget",
            &cli.failure_budget.to_string(),
        ],
    )?;
    println!("== buildout rollout {id}");
    // Live progress: metalctl's own display, on this terminal.
    let bin = lab.bin_dir().join("metalctl");
    let cfg = lab.metalctl_config();
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.core_ns()])
        .arg(&bin)
        .arg("-c")
        .arg(&cfg)
        .args(["rollout", "watch", &id.to_string()])
        .status()?;
    let end = buildout::get(&lab, id)?;
    println!();
    print!(
        "{}",
        buildout::render_table(&buildout::node_rows(&lab, Some(&end))?)
    );
    println!(
        "\nrollout {id}: {}. Run logs: scripts/lab.sh metalctl run logs <run>; a console: scripts/lab.sh console <vm>; tear down: scripts/lab.sh down",
        end["state"].as_str().unwrap_or("?"),
    );
    Ok(status.success() && end["state"] == "succeeded")
}
