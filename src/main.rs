//! The `firehose-edge` binary: parse the command line, load config, start logging and the
//! metrics recorder, bind the listeners, and run until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use firehose_edge::config::{Config, LogFormat};
use firehose_edge::queue::lock::DirLock;
use firehose_edge::queue::{QueueError, Statvfs, check_floor};
use firehose_edge::{Listeners, run};
use tokio::net::TcpListener;

mod commands;

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

/// Batching edge proxy: analytics events over HTTP into a durable queue, drained into
/// Amazon Kinesis Data Firehose.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML). Without it the embedded defaults apply: a local file sink
    /// under ./data, no AWS needed. `FIREHOSE_EDGE__SECTION__KEY` variables override it.
    /// Accepted before or after a sub-command.
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration (file and environment) and exit: 0 if valid, 64 if not.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Exit 0 if the service on this host answers `GET /healthz` on its admin port, 1 if not
    /// (the container image's HEALTHCHECK; the slim base has no curl).
    Healthcheck,
    /// Inspect or replay records the sink refused for good. Stop the service first: the
    /// queue's database is locked while it runs.
    DeadLetters {
        #[command(subcommand)]
        action: commands::DeadLetterAction,
        /// Only this delivery stream (default: all).
        #[arg(long, global = true)]
        stream: Option<String>,
    },
    /// Deletion requests: list, add or remove suppressed user identifiers. Works on a
    /// running service through its admin API (needs the admin key in this configuration),
    /// or on the queue directory when no service holds it.
    Suppress {
        #[command(subcommand)]
        action: commands::SuppressAction,
    },
    /// Check or repair the queue directory offline.
    Queue {
        #[command(subcommand)]
        action: commands::QueueAction,
    },
    /// Deliver everything in the queue directory and exit 0 once it is empty; no listener,
    /// no new events. For the volume of a replica that was scaled in. Retries through sink
    /// outages without end; SIGTERM stops it (exit 1, what is left stays queued). Refused
    /// while another process holds the queue.
    Drain,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = firehose_edge::config::env_overrides(std::env::vars_os())
        .and_then(|env| Config::load(cli.config.as_deref(), env));
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("firehose-edge: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Command::DeadLetters { action, stream }) => {
            Some(commands::dead_letters(&config, &action, stream.as_deref()))
        }
        Some(Command::Queue { action }) => Some(commands::queue(&config, &action)),
        Some(Command::Suppress { action }) => Some(commands::suppress(&config, &action)),
        Some(Command::Healthcheck) => Some(commands::healthcheck(&config)),
        Some(Command::Drain) => {
            init_logging(&config);
            Some(commands::drain(config.clone(), stop_signal))
        }
        None => None,
    };
    if let Some(result) = result {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("firehose-edge: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // A free-space floor the queue's volume can never have free would answer 503 to every
    // request: refused like any invalid key, in one line, before anything is bound (`run`
    // checks it again for library callers).
    if let Err(e) = check_floor(config.queue.min_free_bytes, &config.queue.path, &Statvfs) {
        eprintln!("firehose-edge: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // One process per queue directory: say so in one line, before anything is logged or
    // bound (the queue takes the lock for real when it opens).
    if let Err(e @ QueueError::InUse { .. }) = DirLock::acquire(&config.queue.path) {
        eprintln!("firehose-edge: {e}");
        return ExitCode::FAILURE;
    }
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "firehose-edge failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed before anything else, so a SIGTERM during start-up is a graceful stop too
    // (the default action would kill the process).
    let stop = stop_signal()?;
    let prometheus = firehose_edge::metrics::exporter()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let ingest = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("server.listen {}: {e}", config.server.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {}: {e}", config.admin.listen))?;
    tracing::info!(config = %config.summary(), "effective configuration");
    tracing::info!(
        ingest = %ingest.local_addr()?,
        admin = %admin.local_addr()?,
        queue = %config.queue.path.display(),
        durability = ?config.queue.durability,
        sink = ?config.sink.kind,
        "firehose-edge listening"
    );
    run(config, Listeners { ingest, admin }, Some(prometheus), stop).await?;
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, and returns a future that resolves on the
/// first of them.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
        }
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
