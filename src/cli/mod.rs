//! The command line: `run` (default), `check-config` and `sandbox`.

mod run;
mod sandbox;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "pgwarden", version, about = "SQL-aware PostgreSQL proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (the default command).
    Run {
        #[arg(long, short, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and explain what is wrong, by field path.
    CheckConfig {
        #[arg(long, short, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Start a local primary, two streaming replicas and the proxy; stop with Ctrl-C.
    Sandbox {
        /// Port for the proxy.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port for /metrics and /healthz.
        #[arg(long, default_value_t = 9930)]
        admin_port: u16,
        /// Pool mode for the sandbox proxy.
        #[arg(long, default_value = "transaction")]
        pool_mode: String,
    },
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let command = cli.command.unwrap_or(Command::Run {
        config: PathBuf::from("config.yaml"),
    });
    let result = match command {
        Command::CheckConfig { config } => run::check_config(&config),
        Command::Run { config } => runtime().block_on(run::run(&config)),
        Command::Sandbox {
            port,
            admin_port,
            pool_mode,
        } => runtime().block_on(sandbox::run(port, admin_port, &pool_mode)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
