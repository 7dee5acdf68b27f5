//! The browser rows of the SDK compatibility matrix: a real browser (headless Chromium,
//! Debian's `chromium` + `chromium-driver`, driven by selenium) loads each official browser
//! SDK from the local npm install on a page of another origin, pointed at firehose-edge
//! through a recording proxy; its identify, track and page calls land in the lake once each,
//! in the SDK's default transport and in `sendBeacon` where the SDK has one, and — where the
//! SDK retries — also when the queue is full at first (503, it retries, everything lands
//! once). The README's matrix rows are checked against what the browser really sent.
//! `scripts/test` installs all of it (`scripts/ensure-browser.sh`,
//! `scripts/ensure-node-sdks.sh`); without it, this fails and says what is missing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::wire::Wire;
use common::{Observed, TestServer, lake_lines, test_config};
use serde_json::{Value, json};

const KEY: &str = "browser-write-key-0123456789";

/// A browser SDK of the matrix, in one transport.
#[derive(Clone, Copy)]
struct BrowserSdk {
    package: &'static str,
    /// `tests/py/browser.py`'s name for it.
    mode: &'static str,
    /// The matrix's `transport` column.
    transport: &'static str,
}

const SEGMENT_NEXT: BrowserSdk = BrowserSdk {
    package: "@segment/analytics-next",
    mode: "segment",
    transport: "fetch",
};
const RUDDER_JS: BrowserSdk = BrowserSdk {
    package: "@rudderstack/analytics-js",
    mode: "rudder",
    transport: "XHR",
};
const RUDDER_JS_BEACON: BrowserSdk = BrowserSdk {
    package: "@rudderstack/analytics-js",
    mode: "rudder-beacon",
    transport: "sendBeacon",
};

/// The venv's python, after checking that everything the browser needs is installed.
fn python(sdk: BrowserSdk) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    for (what, ok) in [
        ("/usr/bin/chromium", Path::new("/usr/bin/chromium").exists()),
        (
            "/usr/bin/chromedriver",
            Path::new("/usr/bin/chromedriver").exists(),
        ),
        (
            "selenium in ./.venv",
            std::process::Command::new(&python)
                .args(["-c", "import selenium"])
                .output()
                .is_ok_and(|o| o.status.success()),
        ),
    ] {
        assert!(
            ok,
            "{what} is missing: run ./scripts/test, which installs Chromium and chromedriver \
             (apt-get) and selenium (pip) with scripts/ensure-browser.sh"
        );
    }
    // Says what is missing (and how it is installed) if the SDK is not in tests/js.
    common::matrix::npm_version(sdk.package);
    python
}

/// Runs the page of `sdk` against `api` (the proxy) and returns the driver's report.
async fn browse(sdk: BrowserSdk, page_port: u16, api: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::time::timeout(
        Duration::from_secs(150),
        tokio::process::Command::new(python(sdk))
            .arg(root.join("tests/py/browser.py"))
            .args([sdk.mode, &page_port.to_string(), api, KEY])
            .env("BROWSER_TIMEOUT_SECS", "90")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {stderr}", String::from_utf8_lossy(&out.stdout)));
    assert!(
        out.status.success() && result["ok"] == true,
        "{} ({}) in the browser: {result:#} {stderr}",
        sdk.package,
        sdk.transport
    );
    assert_eq!(result["failed"], json!([]), "{result:#}");
    assert_eq!(
        result["external_requests"],
        json!([]),
        "the page tried to leave the machine: {result:#}"
    );
    result
}

fn config(dir: &Path, page_port: u16) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config.auth.sources.insert("web".to_owned(), KEY.to_owned());
    config.cors.allowed_origins = vec![format!("http://127.0.0.1:{page_port}")];
    config
}

/// Checks that the page's identify, track and page calls are each in the lake exactly once.
fn check_lake(lake: &Path, sdk: BrowserSdk) {
    let find = |stream: &str| -> Value {
        let records = lake_lines(lake, stream);
        assert_eq!(records.len(), 1, "{} {stream}: {records:?}", sdk.package);
        records[0].clone()
    };
    let identify = find("segment_identifies");
    assert_eq!(identify["userId"], "browser-user");
    // (RudderStack's SDK sends identify's traits as `context.traits` only.)
    let plan = if identify["traits"].is_null() {
        &identify["context"]["traits"]["plan"]
    } else {
        &identify["traits"]["plan"]
    };
    assert_eq!(plan, "pro", "{identify}");
    let track = find("segment_tracks");
    assert_eq!(track["event"], "Browser Clicked");
    assert_eq!(track["properties"]["button"], "buy");
    assert_eq!(
        track["userId"], "browser-user",
        "the identified user carries over"
    );
    let page = find("segment_pages");
    assert_eq!(page["name"], "Intro", "{page}");
    for r in [&identify, &track, &page] {
        assert_eq!(r["source"], "web", "{r}");
        assert_eq!(r["context"]["ip"], "127.0.0.1", "{r}");
        assert!(
            r["context"]["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.contains("Chrome")),
            "{r}"
        );
        assert!(!r.to_string().contains(KEY), "the write key is stored: {r}");
    }
}

/// The SDK in its transport: every call lands once, and the matrix row is what it sent.
async fn delivers_once(sdk: BrowserSdk) {
    // The page's origin: a free loopback port, allowed by CORS.
    let page_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), page_port)).await;
    let wire = Wire::start(&server.ingest).await;
    browse(sdk, page_port, &wire.url).await;
    server.sink.wait_for_events(3).await;
    server.stop().await;
    let lake = dir.path().join("lake");
    tokio::task::block_in_place(|| check_lake(&lake, sdk));
    common::matrix::Row::of(sdk.package, sdk.transport)
        .check(&common::matrix::npm_version(sdk.package), &wire);
    println!(
        "matrix: {} ({}): sent 3, landed 3, duplicates 0",
        sdk.package, sdk.transport
    );
}

/// The queue is full when the page calls: the browser is answered 503, the SDK retries,
/// and once the queue drains every call lands, once.
async fn retries_through_a_full_queue(sdk: BrowserSdk) {
    // The page's origin: a free loopback port, allowed by CORS.
    let page_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), page_port);
    config.queue.max_bytes = 64 << 10;
    let (open, held) = common::Held::file_sink(&dir.path().join("lake"));
    let sink = Observed::new(held);
    let server = TestServer::start_with_sink(config, sink).await;
    // Fill the queue (a stream the page does not write, so the lake check stays exact).
    let filler = json!({"userId": "filler", "name": "x", "properties": {"p": "y".repeat(8 << 10)}});
    let client = reqwest::Client::new();
    let mut filled = false;
    for _ in 0..64 {
        let status = client
            .post(server.url("/v1/screen"))
            .basic_auth(KEY, Some(""))
            .json(&filler)
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            filled = true;
            break;
        }
        assert_eq!(status, 200);
    }
    assert!(filled, "the queue never filled");
    let wire = Wire::start(&server.ingest).await;
    let browser = tokio::spawn({
        let url = wire.url.clone();
        async move { browse(sdk, page_port, &url).await }
    });
    wire.wait_for_status(503).await;
    open.send(true).unwrap();
    browser.await.unwrap();
    server.sink.wait_for_events(3).await;
    server.stop().await;
    let lake = dir.path().join("lake");
    tokio::task::block_in_place(|| check_lake(&lake, sdk));
    let refused = wire.seen().iter().filter(|s| s.status == 503).count();
    println!(
        "matrix: {} ({}) on a full queue: {refused} requests answered 503 and retried, 3 calls landed once",
        sdk.package, sdk.transport
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_next() {
    delivers_once(SEGMENT_NEXT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_next_on_a_full_queue() {
    retries_through_a_full_queue(SEGMENT_NEXT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_analytics_js() {
    delivers_once(RUDDER_JS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_analytics_js_on_a_full_queue() {
    retries_through_a_full_queue(RUDDER_JS).await;
}

/// A beacon's answer is invisible to the page, so the SDK cannot retry it: on a full
/// queue those events are lost at the client (the README says so). Its normal case lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_analytics_js_beacon() {
    delivers_once(RUDDER_JS_BEACON).await;
}
