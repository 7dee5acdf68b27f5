//! Shared support for the integration tests: a server started in-process on 127.0.0.1:0 over
//! a temporary directory, stopped when dropped, and a sink wrapper that signals deliveries.
#![allow(dead_code)]

pub mod binary;
pub mod docker;
pub mod driver;
pub mod fake_firehose;
pub mod matrix;
pub mod moto;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use firehose_edge::config::{Config, Durability};
use firehose_edge::sink::{FileSink, RecordOutcome, Sink, SinkError};
use firehose_edge::{Listeners, run_with_sink};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything a test awaits; generous because CI machines are slow.
pub const WAIT: Duration = Duration::from_secs(30);

/// A config for tests: everything under `dir`, loopback only, fast batching.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.queue.path = dir.join("queue");
    config.queue.durability = Durability::Fsync;
    // The default 1 GiB floor would make every test fail on a nearly full dev disk; the floor
    // itself is tested in tests/storage.rs.
    config.queue.min_free_bytes = 16 << 20;
    config.sink.directory = dir.join("lake");
    config.flusher.linger_ms = 10;
    config.flusher.retry_base_ms = 10;
    config.flusher.retry_max_ms = 200;
    config.shutdown.grace_period = 10;
    config
}

/// Wraps a sink and publishes how many lines (events) it has accepted so far.
pub struct Observed {
    inner: Arc<dyn Sink>,
    accepted: watch::Sender<usize>,
    /// Every record the inner sink accepted, exactly as sent.
    records: std::sync::Mutex<Vec<(String, Bytes)>>,
}

impl Observed {
    pub fn new(inner: Arc<dyn Sink>) -> Arc<Observed> {
        Arc::new(Observed {
            inner,
            accepted: watch::channel(0).0,
            records: std::sync::Mutex::default(),
        })
    }

    /// Resolves once at least `n` events were accepted (panics after [`WAIT`]).
    pub async fn wait_for_events(&self, n: usize) {
        let mut rx = self.accepted.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|&got| got >= n))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events delivered", *self.accepted.borrow()))
            .unwrap();
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Every accepted record of `stream`, parsed (one per line).
    pub fn records(&self, stream: &str) -> Vec<serde_json::Value> {
        self.lines(stream)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The NDJSON lines of every accepted record of `stream`, as sent.
    pub fn lines(&self, stream: &str) -> Vec<String> {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .filter(|(s, _)| s == stream)
            .flat_map(|(_, r)| {
                String::from_utf8(r.to_vec())
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[async_trait]
impl Sink for Observed {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        let lines: Vec<usize> = records
            .iter()
            .map(|r| r.iter().filter(|&&b| b == b'\n').count())
            .collect();
        let sent = records.clone();
        let outcomes = self.inner.put_batch(stream, records).await?;
        {
            let mut kept = self.records.lock().unwrap();
            for (record, outcome) in sent.into_iter().zip(&outcomes) {
                if *outcome == RecordOutcome::Accepted {
                    kept.push((stream.to_owned(), record));
                }
            }
        }
        let n: usize = lines
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == RecordOutcome::Accepted)
            .map(|(n, _)| n)
            .sum();
        self.accepted.send_modify(|a| *a += n);
        Ok(outcomes)
    }
}

/// A file sink that takes nothing until it is opened (the sender sends `true`): the queue
/// fills up meanwhile.
pub struct Held {
    open: watch::Receiver<bool>,
    inner: FileSink,
}

impl Held {
    /// A held file sink writing under `lake`, and the switch that opens it.
    pub fn file_sink(lake: &Path) -> (watch::Sender<bool>, Arc<Held>) {
        let (open, held) = watch::channel(false);
        let sink = Held {
            open: held,
            inner: FileSink::new(lake),
        };
        (open, Arc::new(sink))
    }
}

#[async_trait]
impl Sink for Held {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.put_batch(stream, records).await
    }
}

/// The service running in-process; stopped (gracefully) when dropped or by [`stop`].
pub struct TestServer {
    pub ingest: String,
    pub admin: String,
    pub config: Config,
    pub sink: Arc<Observed>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), firehose_edge::app::AppError>>>,
}

impl TestServer {
    /// Starts the service with `config` over a file sink at `config.sink.directory`.
    pub async fn start(config: Config) -> TestServer {
        let sink = Observed::new(Arc::new(FileSink::new(&config.sink.directory)));
        TestServer::start_with_sink(config, sink).await
    }

    /// Starts the service with a Firehose sink pointed at `endpoint` (moto or the fake),
    /// with static test credentials.
    pub async fn start_firehose(config: Config, endpoint: &str) -> TestServer {
        TestServer::start_firehose_observed(config, endpoint, None).await
    }

    /// [`TestServer::start_firehose`], rendering `/metrics` from `prometheus` when given.
    pub async fn start_firehose_observed(
        mut config: Config,
        endpoint: &str,
        prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> TestServer {
        use aws_sdk_firehose::config::{Credentials, SharedCredentialsProvider};
        config.sink.kind = firehose_edge::config::SinkKind::Firehose;
        config.sink.endpoint_url = Some(endpoint.to_owned());
        let credentials =
            SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "tests"));
        let sink =
            firehose_edge::sink::FirehoseSink::connect(&config.sink, Some(credentials)).await;
        TestServer::start_observed(config, Observed::new(Arc::new(sink)), prometheus).await
    }

    pub async fn start_with_sink(config: Config, sink: Arc<Observed>) -> TestServer {
        TestServer::start_observed(config, sink, None).await
    }

    /// Starts the service with `sink`, rendering `/metrics` from `prometheus` when given.
    pub async fn start_observed(
        config: Config,
        sink: Arc<Observed>,
        prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> TestServer {
        let ingest = TcpListener::bind(config.server.listen).await.unwrap();
        let admin = TcpListener::bind(config.admin.listen).await.unwrap();
        let (ingest_addr, admin_addr) = (ingest.local_addr().unwrap(), admin.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_with_sink(
            config.clone(),
            Listeners { ingest, admin },
            sink.clone(),
            prometheus,
            stop.clone().cancelled_owned(),
        ));
        TestServer {
            ingest: format!("http://{ingest_addr}"),
            admin: format!("http://{admin_addr}"),
            config,
            sink,
            stop,
            task: Some(task),
        }
    }

    /// Starts stopping the service without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// GETs an admin path and returns the status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.admin)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ingest)
    }

    /// Stops the service and waits for its ordered shutdown.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("shutdown in time")
            .unwrap()
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A loopback port nothing listens on now (for a server that binds it moments later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// POSTs `body` to `path` and returns the status code.
pub async fn post(server: &TestServer, path: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(server.url(path))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A one-event `/track` body with this event name.
pub fn track_body(name: &str) -> String {
    format!(r#"{{"userId":"u","events":[{{"eventName":"{name}"}}]}}"#)
}

/// The `eventName` of every NDJSON line.
pub fn event_names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["eventName"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Every NDJSON line under the lake directory of `stream`, in file-name order.
pub fn lake_lines(lake: &Path, stream: &str) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    walk(&lake.join(stream), &mut files);
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.ends_with('\n'),
            "{} is not newline-terminated",
            file.display()
        );
        for line in text.lines() {
            lines.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
    lines
}

/// Every NDJSON file below `dir`, sorted.
pub fn lake_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "ndjson") {
            out.push(p);
        }
    }
}

/// Lines of every record the fake accepted, of `stream` (or of all streams with `None`).
pub fn fake_lines(fake: &fake_firehose::FakeFirehose, stream: Option<&str>) -> Vec<String> {
    fake.accepted()
        .into_iter()
        .filter(|(s, _)| stream.is_none_or(|want| s == want))
        .flat_map(|(_, data)| {
            let text = String::from_utf8(data).unwrap();
            assert!(text.ends_with('\n'), "every record ends with a newline");
            text.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

/// Waits (on the fake's own signal) until every event name in `acked` reached the fake;
/// returns how many distinct events it holds. Panics after [`WAIT`].
pub async fn wait_for_fake_events(
    fake: &fake_firehose::FakeFirehose,
    acked: &std::collections::HashSet<String>,
) -> usize {
    let result = tokio::time::timeout(WAIT, async {
        loop {
            // Counted before looking, so a record that arrives in between wakes the wait.
            let seen = fake.accepted_count();
            let names: std::collections::HashSet<String> =
                event_names(&fake_lines(fake, None)).into_iter().collect();
            if acked.iter().all(|n| names.contains(n)) {
                return names.len();
            }
            fake.wait_for_accepted_records(seen + 1).await;
        }
    })
    .await;
    result.expect("every acknowledged event reaches Firehose")
}
