//! Tracking plans, request by request through each protocol: `block` refuses a request whose
//! event breaks its source's plan (400 naming the event and the failing schema path; a batch
//! whole, nothing of it stored), `tag` stores it with its `violations`, `route` sends it to the
//! plan's `violations` stream; unplanned events `allow`, `block` or `route`; a plan is checked
//! before the privacy policy hashes what it checks.

mod common;

use std::path::Path;

use common::{TestServer, test_config};
use serde_json::{Value, json};

const KEY: &str = "web-write-key-0123456789";

fn plan() -> Value {
    json!({"rules": {
        "events": [
            {"name": "Order Completed", "rules": {"type": "object", "properties": {"properties": {
                "type": "object", "required": ["total"],
                "properties": {"total": {"type": "number"}, "email": {"type": "string", "pattern": "@"}}}}}},
            {"name": "signup", "rules": {"type": "object", "properties": {"properties": {
                "type": "object", "required": ["plan"]}}}},
            {"name": "iglu:com.example/checkout/jsonschema/1-0-0", "rules": {"type": "object",
                "properties": {"properties": {"type": "object", "required": ["price"]}}}}
        ],
        "identify": {"type": "object", "properties": {"traits": {"type": "object", "required": ["plan"]}}}
    }})
}

fn config(dir: &Path, mode: &str, unplanned: &str) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config.auth.sources.insert("web".to_owned(), KEY.to_owned());
    config
        .snowplow
        .app_ids
        .insert("shop".to_owned(), "web".to_owned());
    let file = dir.join("plan.json");
    std::fs::write(&file, plan().to_string()).unwrap();
    config.plans = toml::from_str(&format!(
        "[sources.web]\nfile = {file:?}\nmode = {mode:?}\nunplanned = {unplanned:?}\n"
    ))
    .unwrap();
    config
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A classic `/track` request with the source's key; its status.
async fn post_classic(server: &TestServer, body: &Value) -> u16 {
    let response = reqwest::Client::new()
        .post(server.url("/track"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

fn track(id: &str, event: &str, properties: Value) -> Value {
    json!({"type": "track", "userId": "u1", "messageId": id, "event": event, "properties": properties})
}

#[tokio::test]
async fn block_refuses_the_whole_batch_naming_the_event_and_the_schema_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), "block", "block")).await;
    let batch = json!({"batch": [
        track("ok-1", "Order Completed", json!({"total": 3})),
        track("bad-1", "Order Completed", json!({"total": "three"}))]});
    let (status, answer) = post(&server, "/v1/batch", batch).await;
    assert_eq!(status, 400, "{answer}");
    let detail = &answer["details"][0];
    assert_eq!(detail["path"], "events[1]/properties/total", "{answer}");
    let reason = detail["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"Order Completed\"")
            && reason.contains("/properties/properties/properties/total/type"),
        "{reason}"
    );
    // Unplanned, blocked; an identify without its required trait, blocked.
    let (status, answer) = post(&server, "/v1/track", track("x", "Unknown", json!({}))).await;
    assert_eq!(status, 400);
    assert!(
        answer
            .to_string()
            .contains("not in the source's tracking plan"),
        "{answer}"
    );
    let identify = json!({"userId": "u1", "traits": {"name": "Ann"}});
    assert_eq!(post(&server, "/v1/identify", identify).await.0, 400);
    // The classic API and PostHog's go through the same plan.
    let classic = json!({"userId": "u1", "events": [{"eventName": "signup", "metadata": {}}]});
    assert_eq!(post_classic(&server, &classic).await, 400);
    let posthog = json!({"api_key": KEY, "batch": [{"event": "Order Completed", "distinct_id": "d",
        "properties": {"total": "x"}}]});
    assert_eq!(post(&server, "/batch/", posthog).await.0, 400);
    // What the plan allows is stored; nothing of the refused requests was.
    let fine = json!({"batch": [track("ok-2", "Order Completed", json!({"total": 4}))]});
    assert_eq!(post(&server, "/v1/batch", fine).await.0, 200);
    server.sink.wait_for_events(1).await;
    let stored = server.sink.records("segment_tracks");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["messageId"], "ok-2");
    server.stop().await;
}

#[tokio::test]
async fn tag_stores_what_failed_and_route_sends_it_to_the_violations_stream() {
    let dir = tempfile::tempdir().unwrap();
    let handle = firehose_edge::metrics::exporter()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let sink = common::Observed::new(std::sync::Arc::new(firehose_edge::sink::FileSink::new(
        dir.path().join("lake"),
    )));
    let server =
        TestServer::start_observed(config(dir.path(), "tag", "route"), sink, Some(handle)).await;
    let batch = json!({"batch": [
        track("t-1", "Order Completed", json!({"total": "three"})),
        track("t-2", "Order Completed", json!({"total": 3})),
        track("t-3", "Never Planned", json!({}))]});
    assert_eq!(post(&server, "/v1/batch", batch).await.0, 200);
    server.sink.wait_for_events(3).await;
    let tracks = server.sink.records("segment_tracks");
    let by = |id: &str| tracks.iter().find(|r| r["messageId"] == id).cloned();
    let tagged = by("t-1").unwrap();
    assert_eq!(
        tagged["violations"][0]["path"], "/properties/total",
        "{tagged}"
    );
    assert!(by("t-2").unwrap().get("violations").is_none());
    assert!(by("t-3").is_none(), "unplanned: routed");
    let routed = server.sink.records("violations");
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0]["messageId"], "t-3");
    // Counted by source, event (a planned name, or `other`) and outcome (only this test of
    // the binary's, which share one recorder, tags or routes unplanned events).
    let (_, metrics) = server.admin_get("/metrics").await;
    for (event, outcome) in [("Order Completed", "tagged"), ("other", "unplanned_routed")] {
        let series = format!(
            "firehose_edge_plan_events_total{{source=\"web\",event=\"{event}\",outcome=\"{outcome}\"}} 1"
        );
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in {metrics}"
        );
    }
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), "route", "allow")).await;
    let snowplow = json!({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"e": "ue", "p": "web", "tv": "t", "aid": "shop", "eid": "s-1",
                  "ue_pr": json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                      "data": {"schema": "iglu:com.example/checkout/jsonschema/1-0-0", "data": {"currency": "EUR"}}}).to_string()},
                 {"e": "pv", "p": "web", "tv": "t", "aid": "shop", "eid": "s-2"}]});
    let (status, answer) = post(&server, "/com.snowplowanalytics.snowplow/tp2", snowplow).await;
    assert_eq!(status, 200, "{answer}");
    let classic = json!({"userId": "u1", "events": [{"eventName": "signup", "metadata": {}},
        {"eventName": "signup", "metadata": {"plan": "pro"}}, {"eventName": "other"}]});
    assert_eq!(post_classic(&server, &classic).await, 200);
    server.sink.wait_for_events(5).await;
    let routed = server.sink.records("violations");
    let ids: Vec<String> = routed
        .iter()
        .map(|r| {
            r["eid"]
                .as_str()
                .or(r["eventName"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 2, "{routed:?}");
    assert!(ids.contains(&"s-1".to_owned()) && ids.contains(&"signup".to_owned()));
    assert_eq!(
        server.sink.records("snowplow_events").len(),
        1,
        "the page view"
    );
    let kept = server.sink.records("log_user_events");
    assert_eq!(
        kept.len(),
        2,
        "the planned signup and the unplanned event (allowed)"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_plan_sees_values_before_the_privacy_policy_hashes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "block", "allow");
    let key = dir.path().join("key");
    std::fs::write(&key, "a-hash-key-0123456789").unwrap();
    config.privacy = toml::from_str(&format!(
        "hash = [\"properties.email\"]\nhash_key_file = {key:?}\n"
    ))
    .unwrap();
    let server = TestServer::start(config).await;
    // The plan wants an e-mail there: the hash would not be one, the value as sent is.
    let message = track(
        "h-1",
        "Order Completed",
        json!({"total": 1, "email": "ann@example.com"}),
    );
    let (status, answer) = post(&server, "/v1/track", message).await;
    assert_eq!(status, 200, "{answer}");
    server.sink.wait_for_events(1).await;
    let stored = &server.sink.records("segment_tracks")[0];
    assert!(
        stored["properties"]["email"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    server.stop().await;
}

/// SIGHUP reads the plans (and the hash keys) again under load: no request fails, the new
/// plan and key apply from the reload on, and a plan that became invalid is logged and the
/// running one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_reloads_the_plan_under_load_with_no_failed_request() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("plan.json");
    let write_plan = |names: &[&str]| {
        let events: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
        std::fs::write(&plan_file, json!({"rules": {"events": events}}).to_string()).unwrap();
    };
    write_plan(&["A"]);
    let config = dir.path().join("config.toml");
    let key_file = dir.path().join("hash-key");
    std::fs::write(&key_file, "the-first-key-0123456789").unwrap();
    std::fs::write(
        &config,
        format!(
            "[plans.sources.default]\nfile = {plan_file:?}\nunplanned = \"block\"\n\
             [privacy]\nhash = [\"userId\"]\nhash_key_file = {key_file:?}\n"
        ),
    )
    .unwrap();
    let mut command = common::binary::command(dir.path(), &[]);
    command.arg("--config").arg(&config);
    let mut child = command.spawn().unwrap();
    let pid = child.id().unwrap().to_string();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let ingest = tokio::time::timeout(common::WAIT, async {
        loop {
            let line = log.next_line().await.unwrap().expect("the binary listens");
            if let Some(rest) = line.split("ingest=").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
    })
    .await
    .unwrap();
    let url = format!("http://{ingest}/track");
    assert_eq!(send(&url, "B").await, 400, "B is not planned yet");
    // Load: planned requests, one after another, until told to stop; every one must be 200.
    let stop = tokio_util::sync::CancellationToken::new();
    let (answered, mut answers) = tokio::sync::watch::channel(0u32);
    let load = {
        let (stop, url) = (stop.clone(), url.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.is_cancelled() {
                match send(&url, "A").await {
                    200 => ok += 1,
                    _ => failed += 1,
                }
                answered.send_replace(ok + failed);
            }
            (ok, failed)
        })
    };
    // The load is under way, and records under the first key are queued, before the reload:
    // were the reload first, every record would carry the rotated key alone.
    tokio::time::timeout(common::WAIT, answers.wait_for(|n| *n >= 10))
        .await
        .expect("the load is answered")
        .unwrap();
    write_plan(&["A", "B"]);
    // The hash key is read again too: a rotated key gives another key id.
    std::fs::write(&key_file, "a-rotated-key-0123456789").unwrap();
    hangup(&pid);
    logged(&mut log, "policies reloaded").await;
    assert_eq!(send(&url, "B").await, 200, "B is planned now");
    // An invalid plan: logged, and the running plan (A and B) stays.
    std::fs::write(&plan_file, "{not json").unwrap();
    hangup(&pid);
    logged(&mut log, "not reloaded").await;
    assert_eq!(send(&url, "B").await, 200, "the running plan stays");
    stop.cancel();
    let (ok, failed) = load.await.unwrap();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the reloads",
        ok + failed
    );
    assert!(ok > 0);
    // Delivered: the records name two key ids, the first key's and the rotated one's.
    let lake = dir.path().join("lake");
    let key_ids = || -> std::collections::BTreeSet<String> {
        common::lake_lines(&lake, "log_user_events")
            .iter()
            .filter_map(|r| r["userId"].as_str()?.split(':').nth(1).map(str::to_owned))
            .collect()
    };
    let landed = tokio::time::timeout(common::WAIT, async {
        loop {
            let ids = key_ids();
            if ids.len() >= 2 {
                return ids;
            }
            // Another process writes the lake: nothing to await but its files.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("key ids in the lake: {:?}", key_ids()));
    assert_eq!(landed.len(), 2, "{landed:?}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(common::WAIT, child.wait()).await;
}

async fn send(url: &str, event: &str) -> u16 {
    let body = json!({"userId": "u", "events": [{"eventName": event}]});
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn hangup(pid: &str) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (bounded) for a log line containing `expect`.
async fn logged(
    log: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    expect: &str,
) {
    tokio::time::timeout(common::WAIT, async {
        loop {
            let line = log.next_line().await.unwrap().expect("the binary runs");
            if line.contains(expect) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {expect:?} in the log"))
}
