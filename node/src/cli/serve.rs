//! `keel serve`: load the config, set up logging, run a node until SIGTERM/SIGINT.

use keel_raft::NodeId;
use tracing::{error, info};

use crate::config::{Config, LogFormat, ServeArgs};
use crate::state::Node;

/// Set up the tracing subscriber: `RUST_LOG` if set, else info for Keel and warn for
/// openraft (whose info level is chatty); repeated WARN/ERROR lines are limited
/// ([`crate::logging`]).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(crate::logging::RateLimitLayer::from_env());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(false)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    // Already initialised (in-process tests): keep the existing subscriber.
    let _ = res;
}

/// Run a node until a shutdown signal; returns the process exit code.
pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return Ok(2);
        }
    };
    init_tracing(config.log_format);
    crate::cluster::write::warn_unsafe_test_switches();
    let id: NodeId = config.id;
    let handle = match Node::start(config).await {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "node {id} failed to start");
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let cancel = handle.node.cancel.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
        _ = cancel.cancelled() => {}
    }
    let fatal = handle.node.fatal_error();
    handle.shutdown().await;
    match fatal {
        Some(reason) => {
            eprintln!("error: {reason}");
            Ok(1)
        }
        None => Ok(0),
    }
}
