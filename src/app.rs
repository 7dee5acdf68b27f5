//! Wiring: open the queue, start a flusher per stream and the two listeners, and stop them in
//! order when asked.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{Config, SinkKind};
use crate::flusher::{Flusher, Packing};
use crate::ingest::Ingest;
use crate::queue::{Queue, QueueError};
use crate::server;
use crate::sink::{FileSink, FirehoseSink, Sink};

/// The listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// The public ingest API.
    pub ingest: TcpListener,
    /// Health and metrics.
    pub admin: TcpListener,
}

/// Why the service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The queue could not be opened or closed.
    #[error("queue at {path}: {source}")]
    Queue {
        /// `queue.path`.
        path: String,
        /// What failed.
        source: QueueError,
    },
    /// The configuration could not be applied (e.g. the API keys file vanished).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Builds the sink `config` names.
pub async fn build_sink(config: &Config) -> Result<Arc<dyn Sink>, AppError> {
    match config.sink.kind {
        SinkKind::File => Ok(Arc::new(FileSink::new(&config.sink.directory))),
        SinkKind::Firehose => Ok(Arc::new(FirehoseSink::connect(&config.sink, None).await)),
    }
}

/// Runs the service until `shutdown` resolves, then stops in order within
/// `shutdown.grace_period`: stop accepting and finish requests in flight, let the flushers
/// finish their sink calls, flush the queue. Whatever is not delivered stays queued.
pub async fn run(
    config: Config,
    listeners: Listeners,
    prometheus: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let sink = build_sink(&config).await?;
    run_with_sink(config, listeners, sink, prometheus, shutdown).await
}

/// [`run`] with a given sink instead of the one `config` names (tests wrap a sink to observe
/// deliveries).
pub async fn run_with_sink(
    config: Config,
    listeners: Listeners,
    sink: Arc<dyn Sink>,
    prometheus: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let streams = config.stream_names();
    let queue_error = |source| AppError::Queue {
        path: config.queue.path.display().to_string(),
        source,
    };
    let mut counted = streams.clone();
    counted.extend(config.all_delivery_streams());
    counted.dedup();
    crate::metrics::init_counters(&counted, &crate::ingest::route_labels());
    let queue = Queue::open(&config.queue, &streams).map_err(queue_error)?;
    let grace = config.shutdown.grace();

    let flush_stop = CancellationToken::new();
    let mut flushers = JoinSet::new();
    for stream in &streams {
        let packing = Packing {
            enabled: config.flusher.packing_for(stream),
            max_bytes: config.flusher.pack_max_bytes,
            max_lines: config.flusher.pack_max_lines,
        };
        let flusher = Flusher::new(
            stream.clone(),
            queue.clone(),
            sink.clone(),
            config.flusher.clone(),
            packing,
        )
        .deliver_to(config.delivery_streams(stream));
        flushers.spawn(flusher.run(flush_stop.clone()));
    }

    let shutting_down = Arc::new(AtomicBool::new(false));
    let ingest = Arc::new(Ingest::new(queue.clone(), &config)?);
    let admin = Arc::new(Admin::new(
        queue.clone(),
        streams.clone(),
        prometheus,
        shutting_down.clone(),
    ));
    let ingest_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let ingest_task = tokio::spawn(server::serve(
        "ingest",
        listeners.ingest,
        move |request| {
            let ingest = ingest.clone();
            async move { ingest.handle(request).await }
        },
        config.server.connection_limits(),
        ingest_stop.clone(),
        grace,
    ));
    let admin_task = tokio::spawn(server::serve(
        "admin",
        listeners.admin,
        move |request| {
            let admin = admin.clone();
            async move { admin.handle(request).await }
        },
        // Scrapers and probes: a few connections, the same header timeout.
        crate::server::ConnectionLimits {
            max_connections: 64,
            ..config.server.connection_limits()
        },
        admin_stop.clone(),
        grace,
    ));

    shutdown.await;
    let deadline = Instant::now() + grace;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    shutting_down.store(true, Ordering::Release);
    ingest_stop.cancel();
    let _ = ingest_task.await;
    flush_stop.cancel();
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, async {
        while flushers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        flushers.abort_all();
        // Aborted tasks stop at their next await; wait so no settle races the counters
        // that `close` saves.
        while flushers.join_next().await.is_some() {}
        tracing::warn!(
            queued_events = streams.iter().map(|s| queue.queued_events(s)).sum::<u64>(),
            "grace period over with sink calls in flight; abandoned them (their records stay queued)"
        );
    }
    let result = queue.close().map_err(queue_error);
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!(
        queued_events = streams.iter().map(|s| queue.queued_events(s)).sum::<u64>(),
        "stopped"
    );
    result
}
