//! A real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
//! selenium) loads `@segment/analytics-next` from the local npm install on a page of another
//! origin, pointed at firehose-edge; its identify, track and page calls land in the lake.
//! `scripts/test` installs all of it (`scripts/ensure-browser.sh`); without it, this fails
//! and says what is missing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestServer, lake_lines, test_config};
use serde_json::Value;

const KEY: &str = "browser-write-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_in_chromium_sends_across_origins_into_the_lake() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let bundles = root.join("tests/js/node_modules/@segment/analytics-next/dist/umd");
    for (what, ok) in [
        ("/usr/bin/chromium", Path::new("/usr/bin/chromium").exists()),
        (
            "/usr/bin/chromedriver",
            Path::new("/usr/bin/chromedriver").exists(),
        ),
        (
            "@segment/analytics-next in tests/js",
            bundles.join("index.js").exists(),
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
             (apt-get), selenium (pip) and analytics-next (npm) with scripts/ensure-browser.sh"
        );
    }
    // The page's origin: a free loopback port, allowed by CORS.
    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.sources.insert("web".to_owned(), KEY.to_owned());
    config.cors.allowed_origins = vec![format!("http://127.0.0.1:{page_port}")];
    let server = TestServer::start(config).await;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(root.join("tests/py/browser.py"))
            .arg(page_port.to_string())
            .arg(&server.ingest)
            .arg(KEY)
            .arg(&bundles)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser driver failed: {stderr}");
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["failed"], Value::Array(vec![]), "{result}");
    server.sink.wait_for_events(3).await;
    server.stop().await;
    let lake = dir.path().join("lake");
    let find = |stream: &str| -> Value {
        tokio::task::block_in_place(|| {
            let records = lake_lines(&lake, stream);
            assert_eq!(records.len(), 1, "{stream}: {records:?}");
            records[0].clone()
        })
    };
    let identify = find("segment_identifies");
    assert_eq!(identify["userId"], "browser-user");
    assert_eq!(identify["traits"]["plan"], "pro");
    let track = find("segment_tracks");
    assert_eq!(track["event"], "Browser Clicked");
    assert_eq!(track["properties"]["button"], "buy");
    assert_eq!(
        track["userId"], "browser-user",
        "the identified user carries over"
    );
    let page = find("segment_pages");
    assert_eq!(
        (page["name"].clone(), page["category"].clone()),
        ("Intro".into(), "Docs".into())
    );
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
