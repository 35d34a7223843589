//! `coordinator`: initialise a cluster, join one, or run a member. Thin: everything lives in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator::app::{self, App};
use coordinator::config::Config;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Metalfleet coordinator (Raft-replicated desired state + REST API)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bootstrap a one-member cluster: CA, certificates, sealing key, first admin token.
    Init {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Obtain a certificate and the sealing key from a running coordinator, to be added as
    /// a member afterwards (`metalctl cluster add-learner`, `promote`).
    Join {
        /// Config file of the new coordinator.
        #[arg(long, short)]
        config: PathBuf,
        /// API URL of any running coordinator.
        #[arg(long)]
        via: String,
        /// Admin token.
        #[arg(long, env = "METALFLEET_TOKEN", hide_env_values = true)]
        token: String,
        /// The cluster CA certificate (copied from an existing coordinator's tls/ca.crt).
        #[arg(long)]
        ca_cert: PathBuf,
    },
    /// Run this coordinator until SIGINT/SIGTERM.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn fail(e: app::AppError) -> ExitCode {
    let body = e.body();
    eprintln!("error: {}", body.message);
    ExitCode::from(u8::try_from(body.code.exit_code()).unwrap_or(1))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(c) => return c,
            };
            match app::init(config).await {
                Ok(out) => {
                    println!("Cluster initialised.");
                    println!("CA certificate: {}", out.ca_path.display());
                    println!("Admin token (shown once, store it now):");
                    println!("{}", out.admin_token);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Join {
            config,
            via,
            token,
            ca_cert,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(c) => return c,
            };
            let ca = match std::fs::read_to_string(&ca_cert) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {}: {e}", ca_cert.display());
                    return ExitCode::from(2);
                }
            };
            match app::join(&config, &via, &token, &ca).await {
                Ok(()) => {
                    println!(
                        "Certificate for coordinator {} stored in {}.",
                        config.id,
                        config.tls_dir().display()
                    );
                    println!("Start it with `coordinator run`, then add it: metalctl cluster add-learner {} {} {}",
                        config.id, config.raft_addr, config.api_url);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(c) => return c,
            };
            let listen = config.api_listen;
            let app = match App::start(config).await {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: bind API {listen}: {e}");
                    return ExitCode::from(1);
                }
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            let server = tokio::spawn(coordinator::api::serve(
                app.clone(),
                listener,
                shutdown.clone(),
            ));
            tracing::info!(id = app.config.id, api = %app.config.api_url, raft = %app.config.raft_addr, "coordinator running");
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: install SIGTERM handler: {e}");
                        return ExitCode::from(1);
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
            app.shutdown().await;
            ExitCode::SUCCESS
        }
    }
}
