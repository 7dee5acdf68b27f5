//! The official analytics SDKs, unchanged but for their host, against firehose-edge's
//! Segment-compatible API: every message they send reaches the lake once, with its
//! `messageId`, a skew-corrected `timestamp`, its `context` and its source — also when the
//! server answers 503 for a while (they retry) and when they send a batch twice.
//!
//! The SDKs are installed by the test command (`scripts/test` → `scripts/ensure-sdks.sh`
//! into `./.venv`); without them these tests fail and say so.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, WAIT, test_config};
use serde_json::Value;

const WRITE_KEY: &str = "py-write-key-0123456789";

/// One metrics recorder for this test binary, as `main` installs one for the process.
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            firehose_edge::metrics::exporter()
                .install_recorder()
                .expect("one recorder per process")
        })
        .clone()
}

/// The venv's python, checked to have the SDKs.
fn python() -> PathBuf {
    let python = std::env::var_os("SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import segment.analytics, rudderstack.analytics"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import segment-analytics-python and rudder-sdk-python: run ./scripts/test, \
         which installs them with scripts/ensure-sdks.sh (or set SDK_PYTHON)",
        python.display()
    );
    python
}

/// Every record in the lake, by `messageId` (all copies).
fn lake(dir: &Path) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    let Ok(streams) = std::fs::read_dir(dir) else {
        return out;
    };
    for stream in streams {
        let name = stream.unwrap().file_name().into_string().unwrap();
        for record in common::lake_lines(dir, &name) {
            let id = record["messageId"].as_str().unwrap_or_default().to_owned();
            out.entry(id).or_default().push(record);
        }
    }
    out
}

/// Waits until every id in `want` is in the lake (another task writes it: polled, bounded).
async fn wait_for_lake(dir: &Path, want: &HashSet<String>) -> HashMap<String, Vec<Value>> {
    tokio::time::timeout(WAIT, async {
        loop {
            let got = lake(dir);
            if want.iter().all(|id| got.contains_key(id)) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let got = lake(dir);
        let missing = want.iter().filter(|id| !got.contains_key(*id)).count();
        panic!(
            "{missing} of {} messages never reached the lake",
            want.len()
        )
    })
}

/// Runs the SDK driver; returns the messages it sent.
async fn drive(sdk: &str, server: &TestServer, count: usize, skew_secs: i64) -> Vec<Value> {
    drive_at(sdk, &server.ingest, count, skew_secs).await
}

/// [`drive`] against the ingest URL `ingest`.
async fn drive_at(sdk: &str, ingest: &str, count: usize, skew_secs: i64) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sdk_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(script)
            .args([sdk, ingest, WRITE_KEY, &count.to_string()])
            .arg(skew_secs.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{sdk} SDK driver failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["errors"],
        Value::Array(vec![]),
        "the SDK reported errors: {stderr}"
    );
    report["sent"].as_array().unwrap().clone()
}

fn config(dir: &Path) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config
        .auth
        .sources
        .insert("backend".to_owned(), WRITE_KEY.to_owned());
    config
}

fn rfc3339(v: &Value) -> time::OffsetDateTime {
    let text = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .or_else(|_| {
            time::OffsetDateTime::parse(
                text,
                &time::format_description::well_known::Iso8601::DEFAULT,
            )
        })
        .unwrap()
}

/// Checks every sent message landed once, whole, in its type's stream.
/// `waited`: how long a message may have spent in the SDK's retries on top of its 60 s.
fn check(
    sent: &[Value],
    lake: &HashMap<String, Vec<Value>>,
    library: &str,
    skew_secs: i64,
    waited: f64,
) {
    for m in sent {
        let id = m["messageId"].as_str().unwrap();
        let copies = &lake[id];
        assert_eq!(copies.len(), 1, "{id} landed {} times", copies.len());
        let r = &copies[0];
        assert_eq!(r["type"], m["type"], "{r}");
        assert_eq!(r["source"], "backend", "the source, never the key: {r}");
        assert!(
            !r.to_string().contains(WRITE_KEY),
            "the write key is stored: {r}"
        );
        assert!(
            r["context"]["library"]["name"]
                .as_str()
                .is_some_and(|n| n.contains(library)),
            "{r}"
        );
        assert_eq!(r["context"]["ip"], "127.0.0.1", "{r}");
        // The event happened 60 s before it was sent, on a clock `skew` ahead: corrected,
        // it happened 60 s before the server received it.
        let received = rfc3339(&r["receivedAt"]);
        let corrected = rfc3339(&r["timestamp"]);
        let original = rfc3339(&r["originalTimestamp"]);
        let age = (received - corrected).as_seconds_f64();
        assert!(
            (55.0..70.0 + waited).contains(&age),
            "corrected age {age} s: {r}"
        );
        let device_offset = (original - corrected).as_seconds_f64();
        assert!(
            (device_offset - skew_secs as f64).abs() < 5.0,
            "original keeps the device's clock: {r}"
        );
        let want_stream_field = match m["type"].as_str().unwrap() {
            "track" => "event",
            "group" => "groupId",
            "alias" => "previousId",
            "page" | "screen" => "name",
            _ => "traits",
        };
        // (RudderStack's SDK sends identify's traits as `context.traits`.)
        let carried = !r[want_stream_field].is_null()
            || (want_stream_field == "traits" && !r["context"]["traits"].is_null());
        assert!(carried, "{want_stream_field} missing: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_python_delivers_every_type_once_with_skew_corrected_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let sent = drive("segment", &server, 3000, 3600).await;
    let want: HashSet<String> = sent
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    let lake = wait_for_lake(&dir.path().join("lake"), &want).await;
    check(&sent, &lake, "analytics-python", 3600, 0.0);
    // The SDK's retry of a batch whose answer was lost, here simply the same ids again:
    // answered as accepted, stored once.
    let again = drive("segment", &server, 600, 3600).await;
    assert_eq!(again.len(), 600);
    server.stop().await;
    let lake = self::lake(&dir.path().join("lake"));
    check(&sent, &lake, "analytics-python", 3600, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_python_speaks_the_same_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let sent = drive("rudder", &server, 600, 0).await;
    let want: HashSet<String> = sent
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    let lake = wait_for_lake(&dir.path().join("lake"), &want).await;
    check(&sent, &lake, "analytics-python", 0, 0.0);
    server.stop().await;
}

/// A file sink that takes nothing until it is opened: the queue fills up meanwhile.
struct Held {
    open: tokio::sync::watch::Receiver<bool>,
    inner: firehose_edge::sink::FileSink,
}

#[async_trait::async_trait]
impl firehose_edge::sink::Sink for Held {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<bytes::Bytes>,
    ) -> Result<Vec<firehose_edge::sink::RecordOutcome>, firehose_edge::sink::SinkError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.put_batch(stream, records).await
    }
}

/// A full queue answers 503 with `Retry-After`: the SDK keeps the batch and retries it, and
/// once the queue drains everything lands, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retries_through_503s_and_nothing_is_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue.max_bytes = 64 << 10;
    let (open, held) = tokio::sync::watch::channel(false);
    let sink = common::Observed::new(std::sync::Arc::new(Held {
        open: held,
        inner: firehose_edge::sink::FileSink::new(dir.path().join("lake")),
    }));
    let server = TestServer::start_observed(config, sink, Some(recorder())).await;
    let sdk = {
        let ingest = server.ingest.clone();
        tokio::spawn(async move { drive_at("segment", &ingest, 1200, 0).await })
    };
    // The queue fills and the SDK is answered 503 (the service's own counter, polled).
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, text) = server.admin_get("/metrics").await;
            let refused = text.lines().any(|l| {
                l.starts_with("firehose_edge_requests_total{")
                    && l.contains("endpoint=\"v1_batch\"")
                    && l.contains("status=\"503\"")
                    && !l.ends_with(" 0")
            });
            if refused {
                return;
            }
            assert!(
                !sdk.is_finished(),
                "the SDK finished before the queue filled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the SDK is answered 503 while the queue is full");
    open.send(true).unwrap();
    let sent = sdk.await.unwrap();
    let want: HashSet<String> = sent
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    let lake = wait_for_lake(&dir.path().join("lake"), &want).await;
    check(
        &sent,
        &lake,
        "analytics-python",
        0,
        WAIT.as_secs_f64() * 2.0,
    );
    server.stop().await;
}

/// `@segment/analytics-node`, from tests/js (installed by scripts/ensure-node-sdks.sh).
async fn drive_node(ingest: &str, count: usize) -> Vec<Value> {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/@segment/analytics-node").is_dir(),
        "@segment/analytics-node is not installed in tests/js: run ./scripts/test, which \
         installs it with scripts/ensure-node-sdks.sh (npm ci)"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .current_dir(&js)
            .args(["sdk_node.mjs", ingest, WRITE_KEY, &count.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK finishes")
    .expect("node runs (Node.js is needed for this test)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "analytics-node driver failed: {stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["errors"], Value::Array(vec![]), "{stderr}");
    report["sent"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_delivers_every_type_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let sent = drive_node(&server.ingest, 3000).await;
    let want: HashSet<String> = sent
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    let lake = wait_for_lake(&dir.path().join("lake"), &want).await;
    check(&sent, &lake, "@segment/analytics-node", 0, 0.0);
    server.stop().await;
}
