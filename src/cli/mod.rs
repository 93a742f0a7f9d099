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
        // The config is read before the runtime starts: it says how many threads to run.
        Command::Run { config } => crate::config::load_file(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| runtime(c.worker_threads).block_on(run::run(c))),
        Command::Sandbox {
            port,
            admin_port,
            pool_mode,
        } => runtime(0).block_on(sandbox::run(port, admin_port, &pool_mode)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime(configured: usize) -> tokio::runtime::Runtime {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(configured, cores))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One thread per core, but one on 2 cores or fewer. There the proxy shares the cores
/// with the kernel's network work and mostly with the app or the database; on 2 shared
/// cores one thread cost 5-22% less CPU per query than two (fewer wakeups between
/// threads) and served as many or more at 8 to 512 clients.
fn worker_threads(configured: usize, cores: usize) -> usize {
    match configured {
        0 if cores <= 2 => 1,
        0 => cores,
        n => n,
    }
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

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn one_thread_on_two_cores_or_fewer_unless_configured() {
        assert_eq!(worker_threads(0, 1), 1);
        assert_eq!(worker_threads(0, 2), 1);
        assert_eq!(worker_threads(0, 3), 3);
        assert_eq!(worker_threads(0, 16), 16);
        assert_eq!(worker_threads(2, 2), 2);
        assert_eq!(worker_threads(4, 64), 4);
    }
}
