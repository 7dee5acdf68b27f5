//! The compatibility matrix of the server SDKs (the browsers' are in tests/browser.rs): every
//! official Segment-protocol SDK the registries carry, unchanged but for its host, against
//! firehose-edge's Segment-compatible API. Every message type it sends reaches the lake once,
//! with its `messageId`, a skew-corrected `timestamp`, its `context` and its source; also when
//! it sends a batch twice, and when the server answers 503 for a while (it retries). A
//! recording proxy in front of the service sees what each SDK really sends, and the README's
//! matrix is checked against it.
//!
//! The SDKs are installed by the test command (`scripts/test` → `scripts/ensure-sdks.sh`
//! into `./.venv`, `scripts/ensure-node-sdks.sh` into `tests/js`); without them these tests
//! fail and say so.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, WAIT, test_config};
use serde_json::Value;

const WRITE_KEY: &str = "py-write-key-0123456789";

/// The venv's python, checked to have the SDKs.
fn python() -> PathBuf {
    let python = std::env::var_os("SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args([
            "-c",
            "import segment.analytics, rudderstack.analytics, analytics",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import segment-analytics-python, rudder-sdk-python and analytics-python: \
         run ./scripts/test, \
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

/// An SDK of the compatibility matrix and how its driver runs it.
#[derive(Clone, Copy)]
struct Sdk {
    /// Its package name, as the README's matrix and the registry spell it.
    package: &'static str,
    driver: Driver,
    /// What its records carry in `context.library.name`.
    library: &'static str,
}

#[derive(Clone, Copy)]
enum Driver {
    /// `tests/py/sdk_client.py NAME`: a Python SDK in the venv.
    Python(&'static str),
    /// `tests/js/sdk_node.mjs NAME`: a Node SDK in tests/js.
    Node(&'static str),
}

impl Sdk {
    fn version(&self) -> String {
        match self.driver {
            Driver::Python(_) => common::matrix::python_version(&python(), self.package),
            Driver::Node(_) => common::matrix::npm_version(self.package),
        }
    }

    /// Runs the SDK's driver against `ingest`; returns the messages it sent.
    async fn drive(&self, ingest: &str, count: usize, skew_secs: i64) -> Vec<Value> {
        let report = self.run(ingest, WRITE_KEY, count, skew_secs).await;
        assert_eq!(
            report["errors"],
            Value::Array(vec![]),
            "{} reported errors",
            self.package
        );
        report["sent"].as_array().unwrap().clone()
    }

    /// Runs the SDK's driver against `ingest` with `key`; returns its report.
    async fn run(&self, ingest: &str, key: &str, count: usize, skew_secs: i64) -> Value {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = match self.driver {
            Driver::Python(name) => {
                let mut c = tokio::process::Command::new(python());
                c.arg(root.join("tests/py/sdk_client.py"))
                    .args([name, ingest, key, &count.to_string()])
                    .arg(skew_secs.to_string());
                c
            }
            Driver::Node(name) => {
                assert_eq!(skew_secs, 0, "the Node driver has no device clock to skew");
                // Checked first, so a missing install says so rather than failing in node.
                self.version();
                let mut c = tokio::process::Command::new("node");
                c.current_dir(root.join("tests/js")).args([
                    "sdk_node.mjs",
                    name,
                    ingest,
                    key,
                    &count.to_string(),
                ]);
                c
            }
        };
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            command.kill_on_drop(true).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{} finishes", self.package))
        .unwrap_or_else(|e| {
            panic!(
                "{} driver runs ({e}; Node.js and python3 are needed)",
                self.package
            )
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} driver failed: {stderr}",
            self.package
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

const SEGMENT_PYTHON: Sdk = Sdk {
    package: "segment-analytics-python",
    driver: Driver::Python("segment"),
    library: "analytics-python",
};
const RUDDER_PYTHON: Sdk = Sdk {
    package: "rudder-sdk-python",
    driver: Driver::Python("rudder"),
    library: "analytics-python",
};
const ANALYTICS_PYTHON: Sdk = Sdk {
    package: "analytics-python",
    driver: Driver::Python("analytics"),
    library: "analytics-python",
};
const SEGMENT_NODE: Sdk = Sdk {
    package: "@segment/analytics-node",
    driver: Driver::Node("segment"),
    library: "@segment/analytics-node",
};
const RUDDER_NODE: Sdk = Sdk {
    package: "@rudderstack/rudder-sdk-node",
    driver: Driver::Node("rudder"),
    library: "analytics-node",
};
const ANALYTICS_NODE: Sdk = Sdk {
    package: "analytics-node",
    driver: Driver::Node("legacy"),
    library: "analytics-node",
};

/// The ids of `sent`.
fn ids(sent: &[Value]) -> HashSet<String> {
    sent.iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect()
}

/// Every message type through the SDK's normal API (its batching, compression and retries):
/// each lands once, whole, and the README's matrix row says what the SDK really sent. Then
/// the SDK's retry of a batch whose answer was lost (here simply the same ids again):
/// answered as accepted, stored once.
async fn delivers_every_type_once(sdk: Sdk, count: usize, skew_secs: i64) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let wire = common::wire::Wire::start(&server.ingest).await;
    let sent = sdk.drive(&wire.url, count, skew_secs).await;
    let lake_dir = dir.path().join("lake");
    let lake = wait_for_lake(&lake_dir, &ids(&sent)).await;
    check(&sent, &lake, sdk.library, skew_secs, 0.0);
    let again = sdk.drive(&wire.url, count.min(600), skew_secs).await;
    assert_eq!(again.len(), count.min(600));
    server.stop().await;
    let lake = self::lake(&lake_dir);
    check(&sent, &lake, sdk.library, skew_secs, 0.0);
    common::matrix::Row::of(sdk.package, "HTTP").check(&sdk.version(), &wire);
    let landed: usize = lake.values().map(Vec::len).sum();
    println!(
        "matrix: {} {}: sent {}, landed {landed}, duplicates {}",
        sdk.package,
        sdk.version(),
        sent.len(),
        landed - ids(&sent).len()
    );
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
        // (An SDK that resends a batch with the `sentAt` of its first attempt, as
        // RudderStack's Node SDK does, makes its retry delay look like clock skew.)
        assert!(
            (device_offset - skew_secs as f64).abs() < 5.0 + waited,
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

/// A full queue answers 503 with `Retry-After`: the SDK keeps the batch and retries it, and
/// once the queue drains everything lands, once.
async fn retries_through_a_full_queue(sdk: Sdk) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue.max_bytes = 64 << 10;
    let (open, held) = common::Held::file_sink(&dir.path().join("lake"));
    let sink = common::Observed::new(held);
    let server = TestServer::start_with_sink(config, sink).await;
    let wire = common::wire::Wire::start(&server.ingest).await;
    let mut driver = {
        let url = wire.url.clone();
        tokio::spawn(async move { sdk.drive(&url, 1200, 0).await })
    };
    // The queue fills and the SDK is answered 503 (seen on the wire).
    tokio::select! {
        () = wire.wait_for_status(503) => {}
        sent = &mut driver => {
            panic!("{} finished before the queue filled: {sent:?}", sdk.package)
        }
    }
    open.send(true).unwrap();
    let sent = driver.await.unwrap();
    let lake = wait_for_lake(&dir.path().join("lake"), &ids(&sent)).await;
    check(&sent, &lake, sdk.library, 0, WAIT.as_secs_f64() * 2.0);
    server.stop().await;
    let lake = self::lake(&dir.path().join("lake"));
    check(&sent, &lake, sdk.library, 0, WAIT.as_secs_f64() * 2.0);
    let refused = wire.seen().iter().filter(|s| s.status == 503).count();
    println!(
        "matrix: {} on a full queue: {refused} requests answered 503 and retried, {} messages landed once",
        sdk.package,
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_python() {
    delivers_every_type_once(SEGMENT_PYTHON, 3000, 3600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_python_on_a_full_queue() {
    retries_through_a_full_queue(SEGMENT_PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_python() {
    delivers_every_type_once(RUDDER_PYTHON, 600, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_python_on_a_full_queue() {
    retries_through_a_full_queue(RUDDER_PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_python_legacy() {
    delivers_every_type_once(ANALYTICS_PYTHON, 600, 3600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_python_legacy_on_a_full_queue() {
    retries_through_a_full_queue(ANALYTICS_PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node() {
    delivers_every_type_once(SEGMENT_NODE, 3000, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_on_a_full_queue() {
    retries_through_a_full_queue(SEGMENT_NODE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_node() {
    delivers_every_type_once(RUDDER_NODE, 600, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_node_on_a_full_queue() {
    retries_through_a_full_queue(RUDDER_NODE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_node_legacy() {
    delivers_every_type_once(ANALYTICS_NODE, 600, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_node_legacy_on_a_full_queue() {
    retries_through_a_full_queue(ANALYTICS_NODE).await;
}

/// A request that can never succeed (here a wrong write key: 401) is given up at once by
/// every SDK, never retried into a storm: the answers carry what each SDK reads to tell a
/// final 4xx (RudderStack's Python SDK retried a 401 without `code` and `message`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_good_is_not_retried_by_any_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    for sdk in [
        SEGMENT_PYTHON,
        RUDDER_PYTHON,
        ANALYTICS_PYTHON,
        SEGMENT_NODE,
        RUDDER_NODE,
        ANALYTICS_NODE,
    ] {
        let wire = common::wire::Wire::start(&server.ingest).await;
        let report = sdk.run(&wire.url, "not-a-write-key-000000", 6, 0).await;
        let seen = wire.seen();
        assert!(
            !report["errors"].as_array().unwrap().is_empty(),
            "{}: the SDK reported no error: {report}",
            sdk.package
        );
        assert!(
            !seen.is_empty() && seen.iter().all(|s| s.status == 401),
            "{}: {seen:?}",
            sdk.package
        );
        // Six messages are one or two batches (RudderStack's Node SDK sends its first
        // message alone): any more requests are retries.
        assert!(
            seen.len() <= 2,
            "{} retried a 401 {} times",
            sdk.package,
            seen.len() - 1
        );
    }
    server.stop().await;
    assert!(self::lake(&dir.path().join("lake")).is_empty());
}
