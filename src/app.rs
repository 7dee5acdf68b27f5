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
use crate::suppression::Suppressions;

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
    /// A long-lived part of the service died (a panic, or a task that returned): the
    /// service stopped in order and exits non-zero so that its supervisor restarts it.
    #[error("the {component} died: stopped so that a restart recovers from disk")]
    Died {
        /// Which part (the `component` label of `firehose_edge_component_failures_total`).
        component: &'static str,
    },
    /// `drain` was pointed at a directory that holds no queue.
    #[error(
        "no queue at {path} (no sled database or manifest there): nothing to drain; check queue.path"
    )]
    NoQueue {
        /// `queue.path`.
        path: String,
    },
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
    // Every delivery stream, queue names (each endpoint's first) among them.
    crate::metrics::init_counters(
        &config.all_delivery_streams(),
        &crate::ingest::route_labels(),
    );
    // Serving only: `drain` and the offline tools take no requests, so no floor applies.
    crate::queue::check_floor(
        config.queue.min_free_bytes,
        &config.queue.path,
        &crate::queue::Statvfs,
    )?;
    let queue = Queue::open(&config.queue, &streams).map_err(queue_error)?;
    let grace = config.shutdown.grace();
    let policies = Arc::new(crate::policy::Policies::new(&config)?);
    let suppressions = open_suppressions(&queue, &config, &policies).await?;

    let flush_stop = CancellationToken::new();
    let mut flushers = start_flushers(&config, &queue, &sink, &flush_stop);

    let shutting_down = Arc::new(AtomicBool::new(false));
    let ingest = Arc::new(Ingest::new(
        queue.clone(),
        &config,
        policies,
        suppressions.clone(),
    )?);
    // SIGHUP: the tracking plans and hash keys are read again, with no request dropped.
    let reloads = {
        use tokio::signal::unix::{SignalKind, signal};
        let ingest = ingest.clone();
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => Some(tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    ingest.reload_policies();
                }
            })),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: plans reload only with a restart");
                None
            }
        }
    };
    let admin = Arc::new(
        Admin::new(
            queue.clone(),
            streams.clone(),
            prometheus,
            shutting_down.clone(),
        )
        .with_suppressions(suppressions, config.admin.api_key()?),
    );
    let ingest_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let mut ingest_task = tokio::spawn(server::serve(
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
    let mut admin_task = tokio::spawn(server::serve(
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

    // Until asked to stop, or until a part dies: then the same ordered stop, and an error,
    // so the process exits non-zero and its supervisor restarts it. (Restarting a part in
    // place could not prove the counts it left behind; a start re-derives them from disk.)
    let died = tokio::select! {
        () = shutdown => None,
        component = queue.failed() => Some(component),
        Some(ended) = flushers.join_next() => Some(task_died("flusher", ended.err())),
        ended = &mut ingest_task => Some(task_died("ingest_server", ended.err())),
        ended = &mut admin_task => Some(task_died("admin_server", ended.err())),
    };
    let deadline = Instant::now() + grace;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    shutting_down.store(true, Ordering::Release);
    ingest_stop.cancel();
    if died != Some("ingest_server") {
        let _ = ingest_task.await;
    }
    // No reload after the last request (it holds the ingest handler, and so the queue).
    if let Some(reloads) = reloads {
        reloads.abort();
        let _ = reloads.await;
    }
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
    if died != Some("admin_server") {
        let _ = admin_task.await;
    }
    tracing::info!(
        queued_events = streams.iter().map(|s| queue.queued_events(s)).sum::<u64>(),
        "stopped"
    );
    match died {
        Some(component) => Err(AppError::Died { component }),
        None => result,
    }
}

/// Reports a task that ended before it was asked to (with its panic, if it panicked) and
/// returns its component name.
fn task_died(component: &'static str, error: Option<tokio::task::JoinError>) -> &'static str {
    let why = match &error {
        Some(e) if e.is_panic() => "panicked",
        Some(_) => "was cancelled",
        None => "returned",
    };
    tracing::error!(component, why, error = ?error, "a service task ended before shutdown: stopping the process so that its supervisor restarts it");
    crate::metrics::component_failed(component);
    component
}

/// The suppression list of `queue`, with the erasures a stop interrupted finished: before
/// any flusher starts, so nothing of a suppressed user is delivered.
async fn open_suppressions(
    queue: &Queue,
    config: &Config,
    policies: &Arc<crate::policy::Policies>,
) -> Result<Arc<Suppressions>, AppError> {
    let (queue, config, policies) = (queue.clone(), config.clone(), policies.clone());
    let path = config.queue.path.display().to_string();
    tokio::task::spawn_blocking(move || Suppressions::open(queue, &config, policies))
        .await
        .unwrap_or_else(|e| Err(QueueError::Storage(e.to_string())))
        .map(Arc::new)
        .map_err(|source| AppError::Queue { path, source })
}

/// One flusher per queue stream, each delivering to that stream's delivery streams.
fn start_flushers(
    config: &Config,
    queue: &Queue,
    sink: &Arc<dyn Sink>,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let mut flushers = JoinSet::new();
    for stream in config.stream_names() {
        let packing = Packing {
            enabled: config.flusher.packing_for(&stream),
            max_bytes: config.flusher.pack_max_bytes,
            max_lines: config.flusher.pack_max_lines,
        };
        let delivery = config.delivery_streams(&stream);
        let flusher = Flusher::new(
            stream,
            queue.clone(),
            sink.clone(),
            config.flusher.clone(),
            packing,
        )
        .deliver_to(delivery);
        flushers.spawn(flusher.run(stop.clone()));
    }
    flushers
}

/// What [`drain`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Events that left the queue: delivered, or refused for good and dead-lettered.
    pub delivered: u64,
    /// Events still queued (0 unless stopped early).
    pub remaining: u64,
    /// Events in the dead-letter trees, which a drain does not deliver (see `dead-letters`).
    pub dead_letters: u64,
}

/// Delivers everything queued under `config.queue.path` and returns once the queue is empty
/// (or when `stop` resolves first): no listener, no new events. For a queue whose replica is
/// gone (scale-in), run as `firehose-edge drain`. Retries never give up, as in [`run`]; the
/// caller's `stop` bounds it.
pub async fn drain(
    config: Config,
    sink: Arc<dyn Sink>,
    stop: impl Future<Output = ()>,
) -> Result<Drained, AppError> {
    let streams = config.stream_names();
    let queue_error = |source| AppError::Queue {
        path: config.queue.path.display().to_string(),
        source,
    };
    // Opening a path that holds nothing would make an empty queue there and report it
    // drained: a mistyped path or an unmounted volume must not look like an empty queue.
    let path = &config.queue.path;
    if !path.join("db").exists() && !path.join(crate::queue::manifest::MANIFEST_FILE).exists() {
        return Err(AppError::NoQueue {
            path: path.display().to_string(),
        });
    }
    let queue = Queue::open(&config.queue, &streams).map_err(queue_error)?;
    let policies = Arc::new(crate::policy::Policies::new(&config)?);
    open_suppressions(&queue, &config, &policies).await?;
    let queued = |q: &Queue| streams.iter().map(|s| q.queued_events(s)).sum::<u64>();
    let at_start = queued(&queue);
    tracing::info!(queued_events = at_start, "draining the queue");
    let flush_stop = CancellationToken::new();
    let mut flushers = start_flushers(&config, &queue, &sink, &flush_stop);
    tokio::pin!(stop);
    // The queue has no "settled" signal to await: a short tick reads two counters.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    let mut last_report = Instant::now();
    loop {
        let left = queued(&queue);
        if left == 0 {
            break;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(10) {
            tracing::info!(queued_events = left, "draining");
            last_report = Instant::now();
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => {
                tracing::warn!(queued_events = left, "stopped before the queue was empty; what is left stays queued");
                break;
            }
            component = queue.failed() => {
                flush_stop.cancel();
                while flushers.join_next().await.is_some() {}
                let _ = queue.close();
                return Err(AppError::Died { component });
            }
        }
    }
    flush_stop.cancel();
    if tokio::time::timeout(config.shutdown.grace(), async {
        while flushers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        flushers.abort_all();
        while flushers.join_next().await.is_some() {}
    }
    let remaining = queued(&queue);
    let dead_letters = streams.iter().map(|s| queue.dead_letter_events(s)).sum();
    queue.close().map_err(queue_error)?;
    let drained = Drained {
        delivered: at_start.saturating_sub(remaining),
        remaining,
        dead_letters,
    };
    tracing::info!(
        delivered = drained.delivered,
        remaining,
        dead_letters,
        "drain finished"
    );
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committer that dies mid-service: the request waiting on it is answered 503 (not
    /// left hanging), and the service stops in order and returns the error that makes the
    /// process exit non-zero, so its supervisor restarts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_committer_answers_503_and_stops_the_service_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.queue.path = dir.path().join("queue");
        config.queue.min_free_bytes = 16 << 20;
        config.sink.directory = dir.path().join("lake");
        let ingest = TcpListener::bind(config.server.listen).await.unwrap();
        let admin = TcpListener::bind(config.admin.listen).await.unwrap();
        let url = format!("http://{}/track", ingest.local_addr().unwrap());
        let sink: Arc<dyn Sink> = Arc::new(FileSink::new(&config.sink.directory));
        let queue_path = config.queue.path.clone();
        let service = tokio::spawn(run_with_sink(
            config,
            Listeners { ingest, admin },
            sink,
            None,
            std::future::pending(),
        ));
        let send = || {
            reqwest::Client::new()
                .post(&url)
                .body(r#"{"userId":"u","events":[{"eventName":"e"}]}"#)
                .send()
        };
        assert_eq!(send().await.unwrap().status(), 200);
        crate::queue::panic_next_round(&queue_path);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), send())
            .await
            .expect("answered, not left waiting");
        assert_eq!(answer.unwrap().status(), 503);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), service)
            .await
            .expect("the service stops by itself")
            .unwrap();
        assert!(
            matches!(
                ended,
                Err(AppError::Died {
                    component: "committer"
                })
            ),
            "{ended:?}"
        );
    }
}
