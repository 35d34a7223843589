//! `metalctl`: the operator CLI for the coordinators' REST API. Thin: parses arguments, runs
//! the command in the library, prints, and exits with the error's class (see
//! [`coordinator::cli::error::CliError::exit_code`]).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use coordinator::cli::args::Cli;
use coordinator::cli::commands;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(&cli).await {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`metalctl ... | head`) is not a failure of the command.
            let _ = stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
