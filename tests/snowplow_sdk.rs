//! Snowplow's official trackers, unchanged but for their collector, against firehose-edge:
//! `snowplow-tracker` (Python) and `@snowplow/node-tracker`, each in POST and GET mode, and
//! `@snowplow/browser-tracker` in headless Chromium on a page of another origin, POST and GET.
//! Page views, structured and self-describing events with contexts each land once, with the
//! tracker's fields, decoded `unstruct_event` and `contexts`, the source of their app id, and
//! a skew-corrected `derived_tstamp`. The drivers are tests/py/snowplow_client.py,
//! tests/js/snowplow_node.mjs and tests/py/browser_snowplow.py; `scripts/test` installs the
//! trackers and the browser, and without them these tests fail and say so.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{TestServer, driver, test_config};
use serde_json::Value;

fn config(dir: &Path) -> firehose_edge::Config {
    let mut config = test_config(dir);
    // Keys are on, so each tracker's app id must name its source.
    config
        .auth
        .sources
        .insert("server".to_owned(), "server-api-key-0123456789".to_owned());
    for (app, source) in [
        ("py-app", "python"),
        ("node-app", "node"),
        ("web-app", "web"),
    ] {
        config
            .snowplow
            .app_ids
            .insert(app.to_owned(), source.to_owned());
    }
    config
}

/// The delivered records, by eid (all copies), once `n` are delivered.
async fn landed(server: &TestServer, n: usize) -> HashMap<String, Vec<Value>> {
    server.sink.wait_for_events(n).await;
    driver::by_id(&["snowplow_events"], "eid", |s| server.sink.records(s))
}

fn time(v: &Value) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &::time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// Checks that each event of a driver's report landed once, decoded, from `source`.
fn check(sent: &[Value], landed: &HashMap<String, Vec<Value>>, source: &str, tracker: &str) {
    assert_eq!(landed.len(), sent.len(), "every event, and nothing else");
    for event in sent {
        let eid = event["eid"].as_str().unwrap();
        let copies = landed
            .get(eid)
            .unwrap_or_else(|| panic!("{eid} never landed"));
        assert_eq!(copies.len(), 1, "{eid} landed {} times", copies.len());
        let r = &copies[0];
        assert_eq!(r["source"], source, "{r}");
        assert_eq!(r["tv"], tracker, "{r}");
        assert_eq!(r["e"], event["e"], "{r}");
        let entities = r["contexts"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"));
        assert!(
            entities
                .iter()
                .any(|c| c["schema"] == "iglu:com.example/user/jsonschema/1-0-0"
                    && c["data"]["tier"] == "gold"),
            "{r}"
        );
        if let Some(price) = event.get("price") {
            assert_eq!(r["unstruct_event"]["data"]["data"]["price"], *price, "{r}");
            assert_eq!(
                r["unstruct_event"]["data"]["schema"],
                "iglu:com.example/checkout/jsonschema/1-0-0"
            );
        }
        if let Some(uid) = event.get("uid") {
            assert_eq!(r["uid"], *uid, "{r}");
        }
        assert!(r.get("cx").is_none() && r.get("ue_px").is_none(), "{r}");
        assert_eq!(r["ip"], "127.0.0.1");
    }
}

async fn python_tracker(method: &str, count: usize, skew_secs: i64) -> (Value, Value) {
    let python = driver::python("snowplow_tracker");
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(driver::root().join("tests/py/snowplow_client.py"))
        .args([
            method,
            &server.ingest,
            &count.to_string(),
            &skew_secs.to_string(),
        ]);
    let report = driver::run(command, "snowplow_client.py", Duration::from_secs(120)).await;
    let sent = report["sent"].as_array().unwrap().clone();
    assert_eq!(sent.len(), count);
    let landed = landed(&server, count).await;
    let tracker = report["tracker"].as_str().unwrap();
    check(&sent, &landed, "python", tracker);
    let any = landed.values().next().unwrap()[0].clone();
    server.stop().await;
    println!(
        "snowplow-tracker {method}: sent {count}, landed {}",
        landed.len()
    );
    (report, any)
}

#[tokio::test]
async fn the_python_tracker_posts_batches_that_land_once_decoded_and_skew_corrected() {
    // Its device clock an hour ahead: `derived_tstamp` is the server's time of the event.
    let (_, record) = python_tracker("post", 400, 3600).await;
    let (collector, derived) = (
        time(&record["collector_tstamp"]),
        time(&record["derived_tstamp"]),
    );
    let skew = (collector - derived).whole_seconds().abs();
    // Python's `stm` is in whole seconds (its `dtm` in ms): at most a second off.
    assert!(skew <= 5, "derived {derived} vs collector {collector}");
    assert_eq!(record["p"], "pc");
}

#[tokio::test]
async fn the_python_tracker_in_get_mode_lands_each_pixel_once() {
    python_tracker("get", 24, 0).await;
}

async fn node_tracker(method: &str, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let mut command = driver::node("snowplow_node.mjs", "@snowplow/node-tracker");
    command.args([method, &server.ingest, &count.to_string()]);
    let report = driver::run(command, "snowplow_node.mjs", Duration::from_secs(120)).await;
    let sent = report["sent"].as_array().unwrap().clone();
    assert_eq!(sent.len(), count);
    let landed = landed(&server, count).await;
    check(&sent, &landed, "node", report["tracker"].as_str().unwrap());
    server.stop().await;
    println!(
        "@snowplow/node-tracker {method}: sent {count}, landed {}",
        landed.len()
    );
}

#[tokio::test]
async fn the_node_tracker_posts_batches_that_land_once_decoded() {
    node_tracker("post", 300).await;
}

#[tokio::test]
async fn the_node_tracker_in_get_mode_lands_each_pixel_once() {
    node_tracker("get", 24).await;
}

async fn browser_tracker(mode: &str) {
    let python = driver::browser_python();
    common::matrix::npm_version("@snowplow/browser-tracker");
    let dir = tempfile::tempdir().unwrap();
    let page_port = common::free_port();
    let mut config = config(dir.path());
    config.cors.allowed_origins = vec![format!("http://127.0.0.1:{page_port}")];
    let server = TestServer::start(config).await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(driver::root().join("tests/py/browser_snowplow.py"))
        .args([mode, &page_port.to_string(), &server.ingest])
        .env("BROWSER_TIMEOUT_SECS", "90");
    let report = driver::run(command, "browser_snowplow.py", Duration::from_secs(150)).await;
    assert_eq!(report["ok"], true, "{report:#}");
    for empty in ["failed", "failed_requests", "external_requests"] {
        assert_eq!(report[empty], serde_json::json!([]), "{empty}: {report:#}");
    }
    let eids = report["eids"].as_object().unwrap();
    let landed = landed(&server, eids.len()).await;
    assert_eq!(landed.len(), 3, "{landed:#?}");
    for (e, eid) in eids {
        let copies = &landed[eid.as_str().unwrap()];
        assert_eq!(copies.len(), 1);
        let r = &copies[0];
        assert_eq!(&r["e"], e);
        assert_eq!(r["source"], "web");
        assert_eq!(r["uid"], "web-user");
        assert_eq!(r["p"], "web");
        // Every browser event carries its page's `web_page` entity.
        assert!(
            r["contexts"]["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["schema"]
                    .as_str()
                    .unwrap()
                    .starts_with("iglu:com.snowplowanalytics.snowplow/web_page/")),
            "{r}"
        );
        if e == "ue" {
            assert_eq!(r["unstruct_event"]["data"]["data"]["price"], 42);
        }
        assert!(r["useragent"].as_str().unwrap().contains("Chrome"), "{r}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_browser_tracker_posts_from_another_origin_with_credentials() {
    browser_tracker("post").await;
}

#[tokio::test]
async fn the_browser_tracker_in_get_mode_lands_each_event_once() {
    browser_tracker("get").await;
}
