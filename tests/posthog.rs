//! PostHog's capture API, request by request: every body encoding the SDKs send, the token
//! as the source, each validation rule a 400 that names the field (the SDKs drop a 4xx
//! other than 408/429 rather than retry it), all-or-nothing batches, `uuid` dedup, skew
//! correction, and the browser SDK's start-up calls. The official SDKs' runs are in
//! tests/posthog_sdk.rs.

mod common;

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use common::{TestServer, test_config};
use serde_json::{Value, json};

const TOKEN: &str = "phc_web_token_0123456789";

fn config(dir: &Path) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config
        .auth
        .sources
        .insert("web".to_owned(), TOKEN.to_owned());
    config.segment.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config
}

fn event(uuid: &str, name: &str) -> Value {
    json!({"uuid": uuid, "event": name, "distinct_id": "d1",
           "properties": {"$lib": "test", "price": 3}, "timestamp": "2026-11-24T10:00:00.000Z"})
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Sends `body` to `path` with these headers; returns the status and the answer's body.
async fn send(
    server: &TestServer,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = reqwest::Client::new().post(server.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// The records of `stream` once `n` events were delivered, by uuid.
async fn records(server: &TestServer, n: usize, stream: &str) -> Vec<Value> {
    server.sink.wait_for_events(n).await;
    server.sink.records(stream)
}

const JSON: (&str, &str) = ("content-type", "application/json");

type Headers = Vec<(&'static str, &'static str)>;

#[tokio::test]
async fn every_encoding_the_sdks_send_lands_once_with_posthogs_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let batch = |ids: &[&str]| {
        json!({"api_key": TOKEN, "sent_at": "2026-11-24T10:00:05.000Z",
               "batch": ids.iter().map(|id| event(id, "bought")).collect::<Vec<_>>()})
        .to_string()
    };
    // posthog-python: JSON to /batch/; posthog-node: gzip with Content-Encoding.
    let cases: Vec<(&str, Vec<u8>, Headers)> = vec![
        ("/batch/", batch(&["u-1", "u-2"]).into_bytes(), vec![JSON]),
        (
            "/batch",
            gzip(batch(&["u-3"]).as_bytes()),
            vec![JSON, ("content-encoding", "gzip")],
        ),
        // posthog-js: raw gzip labelled text/plain, found by its magic bytes.
        (
            "/e/",
            gzip(batch(&["u-4"]).as_bytes()),
            vec![("content-type", "text/plain")],
        ),
        // posthog-js's beacons: a form `data=` of base64 JSON.
        (
            "/e/?compression=base64",
            format!(
                "data={}",
                form_urlencoded::byte_serialize(
                    base64::engine::general_purpose::STANDARD
                        .encode(batch(&["u-5"]))
                        .as_bytes()
                )
                .collect::<String>()
            )
            .into_bytes(),
            vec![("content-type", "application/x-www-form-urlencoded")],
        ),
        // Older posthog-js: `compression=gzip-js`, an array of events with the token in
        // each event's properties, `_` as the sent time.
        (
            "/i/v0/e/?compression=gzip-js&_=1795514405000&ver=1.200.0",
            gzip(
                json!([{"uuid": "u-6", "event": "$pageview",
                        "properties": {"token": TOKEN, "distinct_id": "browser-1"},
                        "timestamp": "2026-11-24T10:00:00.000Z"}])
                .to_string()
                .as_bytes(),
            ),
            vec![("content-type", "text/plain")],
        ),
        // One event, the token in it.
        (
            "/capture/",
            json!({"api_key": TOKEN, "uuid": "u-7", "event": "$identify", "distinct_id": "d7",
                   "$set": {"plan": "pro"}})
            .to_string()
            .into_bytes(),
            vec![JSON],
        ),
    ];
    for (path, body, headers) in cases {
        let (status, answer) = send(&server, path, body, &headers).await;
        assert_eq!(
            (status, answer.as_str()),
            (200, r#"{"status":1}"#),
            "{path}"
        );
    }
    // A resent batch is stored once.
    let (status, _) = send(
        &server,
        "/batch/",
        batch(&["u-1", "u-2"]).into_bytes(),
        &[JSON],
    )
    .await;
    assert_eq!(status, 200);
    let records = records(&server, 7, "posthog_events").await;
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["uuid"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["u-1", "u-2", "u-3", "u-4", "u-5", "u-6", "u-7"]);
    let mut keys = [
        "uuid",
        "source",
        "event",
        "distinct_id",
        "properties",
        "$set",
        "$set_once",
        "timestamp",
        "client_timestamp",
        "sent_at",
        "received_at",
        "ip",
        "extra",
    ];
    keys.sort();
    for r in &records {
        let got: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(got, keys, "{r}");
        assert_eq!(r["source"], "web");
        assert_eq!(r["ip"], "127.0.0.1");
        assert!(
            !r.to_string().contains(TOKEN),
            "the token is not stored: {r}"
        );
    }
    let by = |id: &str| records.iter().find(|r| r["uuid"] == id).unwrap();
    // Sent 5 s after it happened by the device's clock: 5 s before it arrived.
    let u1 = by("u-1");
    let received = time::OffsetDateTime::parse(
        u1["received_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let corrected = time::OffsetDateTime::parse(
        u1["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(received - corrected, time::Duration::seconds(5));
    assert_eq!(u1["client_timestamp"], "2026-11-24T10:00:00.000Z");
    assert_eq!(u1["sent_at"], "2026-11-24T10:00:05.000Z");
    assert_eq!(u1["properties"], json!({"$lib": "test", "price": 3}));
    assert_eq!(by("u-6")["distinct_id"], "browser-1");
    assert_eq!(by("u-6")["sent_at"], "2026-11-24T10:00:05.000Z");
    assert_eq!(by("u-7")["$set"], json!({"plan": "pro"}));
    server.stop().await;
}

#[tokio::test]
async fn each_rule_is_a_400_naming_the_field_and_a_bad_event_refuses_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let with = |e: Value| json!({"api_key": TOKEN, "batch": [event("ok-1", "fine"), e]});
    let cases = [
        (with(json!({"distinct_id": "d"})), "batch[1].event"),
        (with(json!({"event": "e"})), "batch[1].distinct_id"),
        (
            with(json!({"event": "e", "distinct_id": "d", "properties": [1]})),
            "batch[1].properties",
        ),
        (
            with(json!({"event": "e", "distinct_id": "d", "$set": "x"})),
            "batch[1].$set",
        ),
        (
            with(json!({"event": "e", "distinct_id": "d", "timestamp": "yesterday"})),
            "batch[1].timestamp",
        ),
        (
            with(json!({"event": "e", "distinct_id": {"a": 1}})),
            "batch[1].distinct_id",
        ),
        (with(json!(7)), "batch[1]"),
        (
            json!({"api_key": TOKEN, "batch": [event("ok-1", "fine")], "sent_at": "soon"}),
            "sent_at",
        ),
        (json!({"api_key": TOKEN, "batch": []}), "batch"),
        (json!({"api_key": TOKEN, "batch": {}}), "batch"),
    ];
    for (body, path) in cases {
        let (status, answer) =
            send(&server, "/batch/", body.to_string().into_bytes(), &[JSON]).await;
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["details"][0]["path"], path, "{body}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{answer}");
    }
    for (path, body, headers, field) in [
        (
            "/e/?compression=lz64",
            b"xyz".to_vec(),
            vec![],
            "compression",
        ),
        (
            "/e/?compression=base64",
            b"data=***".to_vec(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            "data",
        ),
        ("/e/", b"not json".to_vec(), vec![JSON], "$"),
    ] {
        let (status, answer) = send(&server, path, body, &headers).await;
        assert_eq!(status, 400, "{path}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["details"][0]["path"], field, "{answer}");
    }
    // Corrupt gzip is a 400 too; none of the above stored anything.
    let (status, _) = send(&server, "/e/", vec![0x1f, 0x8b, 1, 2, 3], &[]).await;
    assert_eq!(status, 400);
    let (status, _) = send(
        &server,
        "/batch/",
        json!({"api_key": TOKEN, "batch": [event("last", "fine")]})
            .to_string()
            .into_bytes(),
        &[JSON],
    )
    .await;
    assert_eq!(status, 200);
    let records = records(&server, 1, "posthog_events").await;
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["last"], "a refused batch left nothing behind");
    server.stop().await;
}

#[tokio::test]
async fn the_token_names_the_source_and_the_start_up_calls_need_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.posthog.identify = Some("posthog_people".into());
    config.cors.allowed_origins = vec!["http://127.0.0.1:1".to_owned()];
    let server = TestServer::start(config).await;
    let body = |token: Option<&str>| {
        let mut b = json!({"batch": [event("t-1", "fine")]});
        if let Some(t) = token {
            b["api_key"] = t.into();
        }
        b.to_string().into_bytes()
    };
    for token in [None, Some("phc_wrong_token_000000")] {
        let (status, _) = send(&server, "/batch/", body(token), &[JSON]).await;
        assert_eq!(status, 401, "{token:?}");
    }
    // posthog-js's start-up: remote config (script and JSON) and flags, with no token.
    let client = reqwest::Client::new();
    let script = client
        .get(server.url("/array/phc_any/config.js"))
        .header("origin", "http://127.0.0.1:1")
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["access-control-allow-origin"],
        "http://127.0.0.1:1"
    );
    let text = script.text().await.unwrap();
    assert!(
        text.contains(r#"window._POSTHOG_REMOTE_CONFIG["phc_any"]"#),
        "{text}"
    );
    let config: Value = client
        .get(server.url("/array/phc_any/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["sessionRecording"], false);
    assert_eq!(config["hasFeatureFlags"], false);
    for (method, path) in [
        (reqwest::Method::POST, "/flags/?v=2&config=true"),
        (reqwest::Method::POST, "/decide/?v=3"),
        (reqwest::Method::GET, "/flags"),
    ] {
        let response = client
            .request(method.clone(), server.url(path))
            .body("data=e30%3D")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method} {path}");
        let flags: Value = response.json().await.unwrap();
        assert_eq!(flags["featureFlags"], json!({}));
        assert_eq!(flags["flags"], json!({}));
    }
    let (status, _) = send(&server, "/array/phc_any/other", vec![], &[]).await;
    assert_eq!(status, 405, "a GET route: POST is not allowed");
    // With the token (in an event's properties), an identify goes to its own stream.
    let (status, _) = send(
        &server,
        "/e/",
        json!([{"uuid": "p-1", "event": "$identify",
                "properties": {"token": TOKEN, "distinct_id": "d"}}])
        .to_string()
        .into_bytes(),
        &[JSON],
    )
    .await;
    assert_eq!(status, 200);
    let people = records(&server, 1, "posthog_people").await;
    assert_eq!(people[0]["uuid"], "p-1");
    assert_eq!(people[0]["source"], "web");
    server.stop().await;
}

/// Each protocol has its own namespace of ids in the dedup window: a PostHog `uuid` equal to
/// a Segment `messageId` or a Snowplow `eid` from the same source is not a duplicate of it.
#[tokio::test]
async fn an_id_is_a_duplicate_only_within_its_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let id = "0198c3c1-0000-7000-8000-0000000000aa";
    let requests = [
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "messageId": id}),
        ),
        ("/batch/", json!({"batch": [event(id, "e")]})),
        (
            "/com.snowplowanalytics.snowplow/tp2",
            json!({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
                   "data": [{"e": "pv", "p": "web", "tv": "t", "eid": id}]}),
        ),
    ];
    // Each twice: the second time is a duplicate within its own protocol.
    for _ in 0..2 {
        for (path, body) in &requests {
            let (status, _) = send(&server, path, body.to_string().into_bytes(), &[JSON]).await;
            assert_eq!(status, 200, "{path}");
        }
    }
    server.sink.wait_for_events(3).await;
    for stream in ["segment_tracks", "posthog_events", "snowplow_events"] {
        assert_eq!(server.sink.lines(stream).len(), 1, "{stream}");
    }
    server.stop().await;
}

/// The limits: a body over `server.max_body_bytes` (also once decompressed) and more events
/// than `server.max_events_per_request` are 413s (posthog-node halves its batch on a 413),
/// an event whose record would exceed Firehose's record limit a 400; nothing is stored.
#[tokio::test]
async fn size_limits_refuse_the_request_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.server.max_events_per_request = 3;
    config.server.max_body_bytes = 2 << 20;
    let server = TestServer::start(config).await;
    let batch = |events: Vec<Value>| {
        json!({"api_key": TOKEN, "batch": events})
            .to_string()
            .into_bytes()
    };
    let four = (0..4).map(|i| event(&format!("n-{i}"), "e")).collect();
    let (status, answer) = send(&server, "/batch/", batch(four), &[JSON]).await;
    assert_eq!(status, 413, "{answer}");
    let mut big = event("big", "e");
    big["properties"]["pad"] = "x".repeat(1_100_000).into();
    let (status, answer) = send(&server, "/batch/", batch(vec![big]), &[JSON]).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("batch[0] encodes to a record of"),
        "{answer}"
    );
    // 3 MiB of JSON, gzipped small: the cap is on what it decompresses to.
    let mut huge = event("huge", "e");
    huge["properties"]["pad"] = "x".repeat(3 << 20).into();
    for headers in [vec![JSON, ("content-encoding", "gzip")], vec![]] {
        let (status, _) = send(&server, "/e/", gzip(&batch(vec![huge.clone()])), &headers).await;
        assert_eq!(status, 413, "{headers:?}");
    }
    let (status, _) = send(&server, "/batch/", batch(vec![event("last", "e")]), &[JSON]).await;
    assert_eq!(status, 200);
    server.sink.wait_for_events(1).await;
    let stored = server.sink.lines("posthog_events");
    assert_eq!(stored.len(), 1, "only the last request stored: {stored:?}");
    server.stop().await;
}

/// A batch that needs more than the whole queue budget (`queue.max_bytes`) could never be
/// taken: it is a 413 (posthog-node halves its batch), not the 503 of a full queue the SDKs
/// would retry until they give up; requests that fit are still taken.
#[tokio::test]
async fn a_request_over_the_whole_queue_budget_is_a_413_not_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue.max_bytes = 16 << 10;
    let server = TestServer::start(config).await;
    let events = (0..300)
        .map(|i| event(&format!("b-{i}"), "e"))
        .collect::<Vec<_>>();
    let body = json!({"api_key": TOKEN, "batch": events}).to_string();
    assert!(body.len() > 16 << 10);
    let (status, answer) = send(&server, "/batch/", body.into_bytes(), &[JSON]).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("queue.max_bytes"), "{answer}");
    let small = json!({"api_key": TOKEN, "batch": [event("fits", "e")]}).to_string();
    assert_eq!(
        send(&server, "/batch/", small.into_bytes(), &[JSON])
            .await
            .0,
        200
    );
    server.stop().await;
}
