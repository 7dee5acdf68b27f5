//! PostHog's official SDKs, unchanged but for their host, against firehose-edge's PostHog
//! capture API: `posthog` (Python) and `posthog-node` send thousands of events of every kind
//! they emit (capture, `$set`, `$set_once`, `$identify`, `$create_alias`,
//! `$groupidentify`), each lands once with its uuid, skew-corrected, from the token's
//! source; a batch sent again is stored once; with the queue full they are answered 503,
//! retry, and everything lands once. `posthog-js` runs in headless Chromium on a page of
//! another origin. A recording proxy sees what each SDK really sent. The drivers are
//! tests/py/posthog_client.py, tests/js/posthog_node.mjs and tests/py/browser_posthog.py;
//! `scripts/test` installs the SDKs and the browser, and without them these tests fail and
//! say so.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::wire::Wire;
use common::{TestServer, WAIT, driver, test_config};
use serde_json::Value;

const TOKEN: &str = "phc_web_token_0123456789";

fn config(dir: &Path) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config
        .auth
        .sources
        .insert("web".to_owned(), TOKEN.to_owned());
    // People events get a stream of their own; the rest stay in `posthog_events`.
    config.posthog.identify = Some("posthog_people".into());
    config
}

const STREAMS: [&str; 2] = ["posthog_events", "posthog_people"];

/// Every delivered record of the PostHog streams, by uuid (all copies).
fn landed(server: &TestServer) -> HashMap<String, Vec<Value>> {
    driver::by_id(&STREAMS, "uuid", |s| server.sink.records(s))
}

fn time(v: &Value) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &::time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// The longest an event may wait in an SDK's queue before its batch goes out, on a loaded
/// machine (the SDKs flush every few seconds or every N events).
const QUEUED: Duration = Duration::from_secs(30);

/// Checks that every event of `sent` landed once, whole, in its kind's stream. `waited`: how
/// long an event may have spent in the SDK's retries on top of its 60 s in the past.
fn check(sent: &[Value], landed: &HashMap<String, Vec<Value>>, lib: &str, waited: f64) {
    assert_eq!(landed.len(), sent.len(), "every event, and nothing else");
    for event in sent {
        let uuid = event["uuid"].as_str().unwrap();
        let copies = landed
            .get(uuid)
            .unwrap_or_else(|| panic!("{uuid} never landed"));
        assert_eq!(copies.len(), 1, "{uuid} landed {} times", copies.len());
        let r = &copies[0];
        assert_eq!(r["event"], event["event"], "{r}");
        assert_eq!(r["distinct_id"], event["distinct_id"], "{r}");
        assert_eq!(r["source"], "web", "{r}");
        assert_eq!(r["properties"]["$lib"], lib, "{r}");
        let people = ["$identify", "$set", "$set_once"].contains(&r["event"].as_str().unwrap());
        let stream = if people {
            "posthog_people"
        } else {
            "posthog_events"
        };
        assert_eq!(r["stream"], stream, "{r}");
        // Skew correction, exactly: the event happened as long before the server received
        // the request as the device's clock says it happened before the device sent it.
        let ms = |field: &str| time(&r[field]).unix_timestamp_nanos() / 1_000_000;
        let aged = ms("sent_at") - ms("client_timestamp");
        assert!(
            (ms("received_at") - aged - ms("timestamp")).abs() <= 1,
            "timestamp not received_at − (sent_at − client_timestamp): {r}"
        );
        // The driver dates an event 60 s before it calls the SDK (or leaves it to the SDK's
        // own clock), by the device's clock, whatever that clock says: so 60 s (or none)
        // before it was sent, plus the time it waited in the SDK's queue for its batch (on
        // a loaded machine, seconds) and the time spent retrying.
        let aged = aged as f64 / 1000.0;
        let queued = QUEUED.as_secs_f64() + waited;
        assert!(
            (59.9..=60.0 + queued).contains(&aged) || (-0.1..=queued).contains(&aged),
            "{aged} s between the event and its request: {r}"
        );
        assert!(!r.to_string().contains(TOKEN), "{r}");
    }
}

/// A server SDK and how its driver runs it.
#[derive(Clone, Copy)]
struct Sdk {
    lib: &'static str,
    python: bool,
}

const PYTHON: Sdk = Sdk {
    lib: "posthog-python",
    python: true,
};
const NODE: Sdk = Sdk {
    lib: "posthog-node",
    python: false,
};

impl Sdk {
    async fn drive(self, host: &str, count: usize, skew_secs: i64, gzip: bool) -> Vec<Value> {
        let command = if self.python {
            let mut c = tokio::process::Command::new(driver::python("posthog"));
            c.arg(driver::root().join("tests/py/posthog_client.py"))
                .args([host, TOKEN, &count.to_string(), &skew_secs.to_string()]);
            if gzip {
                c.env("POSTHOG_GZIP", "1");
            }
            c
        } else {
            assert_eq!(skew_secs, 0, "the Node driver has no device clock to skew");
            let mut c = driver::node("posthog_node.mjs", "posthog-node");
            c.args([host, TOKEN, &count.to_string()]);
            c
        };
        let report = driver::run(command, self.lib, Duration::from_secs(240)).await;
        assert_eq!(report["errors"], serde_json::json!([]), "{}", self.lib);
        let sent = report["sent"].as_array().unwrap().clone();
        assert_eq!(sent.len(), count);
        sent
    }
}

/// Waits until `n` events are delivered, and returns the records.
async fn delivered(server: &TestServer, n: usize) -> HashMap<String, Vec<Value>> {
    server.sink.wait_for_events(n).await;
    landed(server)
}

/// Every kind through the SDK's normal API; then its first batch sent again, exactly as it
/// was (a retry of a batch whose answer was lost): answered 200, stored once.
async fn delivers_every_kind_once(sdk: Sdk, count: usize, skew_secs: i64, gzip: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let wire = Wire::start(&server.ingest).await;
    let sent = sdk.drive(&wire.url, count, skew_secs, gzip).await;
    check(&sent, &delivered(&server, count).await, sdk.lib, 0.0);
    let seen = wire.seen();
    let first = seen.iter().find(|s| s.path == "/batch/").expect("a batch");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.content_encoding,
        if gzip { "gzip" } else { "-" },
        "{}",
        sdk.lib
    );
    let mut again = reqwest::Client::new()
        .post(server.url("/batch/"))
        .header("content-type", &first.content_type)
        .body(first.body.clone());
    if first.content_encoding != "-" {
        again = again.header("content-encoding", &first.content_encoding);
    }
    assert_eq!(again.send().await.unwrap().status(), 200);
    server.stop().await;
    let landed = landed_after_stop(&dir);
    check(&sent, &landed, sdk.lib, 0.0);
    println!(
        "posthog: {} ({} requests, {}): sent {}, landed {}",
        sdk.lib,
        seen.len(),
        wire.summary(|s| format!("{} {} {}", s.method, s.path, s.content_type)),
        sent.len(),
        landed.values().map(Vec::len).sum::<usize>()
    );
}

/// The lake's PostHog records after the server stopped (everything it took is delivered).
fn landed_after_stop(dir: &tempfile::TempDir) -> HashMap<String, Vec<Value>> {
    let lake = dir.path().join("lake");
    driver::by_id(&STREAMS, "uuid", |s| common::lake_lines(&lake, s))
}

/// A full queue answers 503 with `Retry-After`: the SDK keeps its batch and retries it, and
/// once the queue drains everything lands, once.
async fn retries_through_a_full_queue(sdk: Sdk) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // Room for a batch or two of the SDK's (500 events, ~150 KiB), not for all of them.
    config.queue.max_bytes = 256 << 10;
    let (open, held) = common::Held::file_sink(&dir.path().join("lake"));
    let server = TestServer::start_with_sink(config, common::Observed::new(held)).await;
    let wire = Wire::start(&server.ingest).await;
    let mut driving = {
        let url = wire.url.clone();
        tokio::spawn(async move { sdk.drive(&url, 1500, 0, false).await })
    };
    tokio::select! {
        () = wire.wait_for_status(503) => {}
        sent = &mut driving => panic!("{} finished before the queue filled: {sent:?}", sdk.lib),
    }
    open.send(true).unwrap();
    let sent = driving.await.unwrap();
    server.sink.wait_for_events(sent.len()).await;
    server.stop().await;
    check(
        &sent,
        &landed_after_stop(&dir),
        sdk.lib,
        WAIT.as_secs_f64() * 4.0,
    );
    let refused = wire.seen().iter().filter(|s| s.status == 503).count();
    println!(
        "posthog: {} on a full queue: {refused} requests answered 503 and retried, {} events landed once",
        sdk.lib,
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_lands_every_kind_once_skew_corrected() {
    delivers_every_kind_once(PYTHON, 3000, 3600, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_with_gzip() {
    delivers_every_kind_once(PYTHON, 500, 0, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_on_a_full_queue() {
    retries_through_a_full_queue(PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_lands_every_kind_once() {
    delivers_every_kind_once(NODE, 3000, 0, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_on_a_full_queue() {
    retries_through_a_full_queue(NODE).await;
}

/// posthog-js in a real browser, on a page of another origin: its start-up calls (remote
/// config, flags) are answered, an explicit capture, an identify and a capture after it land
/// once each, and the page's console shows no failed request to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_js_in_a_browser() {
    let python = driver::browser_python();
    common::matrix::npm_version("posthog-js");
    let dir = tempfile::tempdir().unwrap();
    let page_port = common::free_port();
    let mut config = config(dir.path());
    config.cors.allowed_origins = vec![format!("http://127.0.0.1:{page_port}")];
    let server = TestServer::start(config).await;
    let wire = Wire::start(&server.ingest).await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(driver::root().join("tests/py/browser_posthog.py"))
        .args([&page_port.to_string(), &wire.url, TOKEN])
        .env("BROWSER_TIMEOUT_SECS", "90");
    let report = driver::run(command, "browser_posthog.py", Duration::from_secs(150)).await;
    assert_eq!(report["ok"], true, "{report:#}");
    for empty in ["failed", "failed_requests", "external_requests"] {
        assert_eq!(report[empty], serde_json::json!([]), "{empty}: {report:#}");
    }
    let console = report["console"].to_string();
    assert!(
        !console.contains(&wire.url),
        "the console names the service: {console}"
    );
    let uuids = report["uuids"].as_object().unwrap();
    assert_eq!(uuids.len(), 3, "{report:#}");
    let landed = delivered(&server, 3).await;
    for (event, uuid) in uuids {
        let copies = &landed[uuid.as_str().unwrap()];
        assert_eq!(copies.len(), 1);
        let r = &copies[0];
        assert_eq!(&r["event"], event);
        assert_eq!(r["source"], "web");
        assert_eq!(r["properties"]["$lib"], "web");
        if event != "checkout" {
            assert_eq!(r["distinct_id"], "web-user", "{r}");
        }
    }
    // What the browser asked at start-up, and that every answer was a 200.
    let seen = wire.seen();
    assert!(
        seen.iter()
            .any(|s| s.path.ends_with("/config.js") || s.path.ends_with("/config")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|s| s.status == 200 || s.method == "OPTIONS"),
        "{seen:?}"
    );
    println!(
        "posthog: posthog-js {}: {}",
        common::matrix::npm_version("posthog-js"),
        wire.summary(|s| format!("{} {} {}", s.method, s.path, s.content_type))
    );
    server.stop().await;
}
