//! The ingest API end to end: a real server on 127.0.0.1:0 with the file sink, driven over
//! HTTP, with the lake read back from disk.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::{Observed, TestServer, WAIT, lake_lines, test_config};
use firehose_edge::sink::{RecordOutcome, Sink, SinkError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(
    server: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url(path))
        .body(body.to_owned());
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("body {text:?} is not JSON: {e}"));
    (status, headers, value)
}

/// Sends raw bytes and returns the status line's code (for requests reqwest will not make).
async fn raw(server: &TestServer, request: &[u8]) -> u16 {
    let addr = server.ingest.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn every_status_code_of_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_body_bytes = 4096;
    let server = TestServer::start(config).await;
    let track = r#"{"userId":"u","events":[{"eventName":"e"}]}"#;
    let alias = r#"{"newUserId":"n","originalUserId":"o"}"#;
    let profile = r#"{"userId":"u","attributes":{"a":1}}"#;
    let json = Some("application/json");
    let cases: Vec<(&str, Option<&str>, String, u16)> = vec![
        ("/track", json, track.to_owned(), 200),
        ("/alias", json, alias.to_owned(), 200),
        ("/profile", json, profile.to_owned(), 200),
        ("/track", None, track.to_owned(), 200),
        (
            "/track",
            Some("text/plain;charset=UTF-8"),
            track.to_owned(),
            200,
        ),
        (
            "/alias",
            Some("application/json; charset=utf-8"),
            alias.to_owned(),
            200,
        ),
        (
            "/track",
            Some("application/x-www-form-urlencoded"),
            track.to_owned(),
            415,
        ),
        ("/profile", Some("text/html"), profile.to_owned(), 415),
        ("/track", json, "".to_owned(), 400),
        ("/track", json, "nope".to_owned(), 400),
        ("/alias", json, "[]".to_owned(), 400),
        ("/profile", json, "{}".to_owned(), 400),
        (
            "/track",
            json,
            r#"{"userId":"u","events":[]}"#.to_owned(),
            400,
        ),
        (
            "/alias",
            json,
            r#"{"newUserId":"n","originalUserId":"o","x":1}"#.to_owned(),
            400,
        ),
        (
            "/profile",
            json,
            r#"{"userId":"u","timestampUTC":"1"}"#.to_owned(),
            400,
        ),
        (
            "/track",
            json,
            format!(
                r#"{{"userId":"u","events":[{{"eventName":"{}"}}]}}"#,
                "x".repeat(5000)
            ),
            413,
        ),
        ("/nope", json, track.to_owned(), 404),
        ("/", json, track.to_owned(), 404),
    ];
    for (path, ct, body, want) in cases {
        let (status, _, value) = post(&server, path, ct, &body).await;
        assert_eq!(status, want, "{path} {ct:?} {body:.80}: {value}");
        if want == 200 {
            assert_eq!(value, json!({"status": "ok", "accepted": 1}));
        } else {
            assert!(value["error"].is_string(), "{value}");
        }
    }
    for path in ["/track", "/alias", "/profile"] {
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "GET {path}");
        assert_eq!(response.headers()["allow"], "POST");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_400_names_every_offending_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let body =
        r#"{"userId":5,"events":[{"eventName":"a"},{"metadata":[],"timestampUTC":1.5,"extra":1}]}"#;
    let (status, _, value) = post(&server, "/track", None, body).await;
    assert_eq!(status, 400);
    assert_eq!(value["error"], "invalid_request");
    assert_eq!(
        value["details"],
        json!([
            {"path": "userId", "reason": "must be a string"},
            {"path": "events[1].extra", "reason": "unknown field"},
            {"path": "events[1].eventName", "reason": "missing"},
            {"path": "events[1].metadata", "reason": "must be an object"},
            {"path": "events[1].timestampUTC", "reason": "must be an integer"},
        ])
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_from_the_header_and_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_body_bytes = 1000;
    let server = TestServer::start(config).await;
    // Declared too large: refused before the body is read (none is sent).
    let declared = b"POST /track HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n";
    assert_eq!(raw(&server, declared).await, 413);
    // Chunked, no length: refused once the stream passes the cap.
    let mut chunked =
        b"POST /track HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "a".repeat(600)).as_bytes());
    }
    assert_eq!(raw(&server, &chunked).await, 413);
    // A chunked body under the cap is fine.
    let body = r#"{"userId":"u","events":[{"eventName":"chunked"}]}"#;
    let ok = format!(
        "POST /track HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    assert_eq!(raw(&server, ok.as_bytes()).await, 200);
}

#[tokio::test]
async fn an_event_too_large_for_one_firehose_record_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_body_bytes = 2 << 20;
    let server = TestServer::start(config).await;
    let pad = "x".repeat(1_024_000);
    let body = format!(
        r#"{{"userId":"u","events":[{{"eventName":"small"}},{{"eventName":"big","metadata":{{"pad":"{pad}"}}}}]}}"#
    );
    let (status, _, value) = post(&server, "/track", None, &body).await;
    assert_eq!(status, 413, "{value}");
    assert_eq!(value["error"], "too_large");
    let (status, _, _) = post(
        &server,
        "/track",
        None,
        r#"{"userId":"u","events":[{"eventName":"after"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    server.sink.wait_for_events(1).await;
    server.stop().await;
    let names: Vec<String> = lake_lines(&dir.path().join("lake"), "log_user_events")
        .iter()
        .map(|l| l["eventName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["after"],
        "no part of the refused request was stored"
    );
}

#[tokio::test]
async fn accepted_events_reach_the_lake_as_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (s, _, _) = post(&server, "/track", None, r#"{"userId":"u1","events":[{"eventName":"a","metadata":{"k":"v"},"timestampUTC":7},{"eventName":"b"}]}"#).await;
    assert_eq!(s, 200);
    let (s, _, _) = post(
        &server,
        "/alias",
        None,
        r#"{"newUserId":"n","originalUserId":"o","timestampUTC":9}"#,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = post(
        &server,
        "/profile",
        None,
        r#"{"userId":"u1","attributes":{"plan":"pro"}}"#,
    )
    .await;
    assert_eq!(s, 200);
    server.sink.wait_for_events(4).await;
    let lake = dir.path().join("lake");

    let track = lake_lines(&lake, "log_user_events");
    assert_eq!(track.len(), 2);
    assert_eq!(track[0]["userId"], "u1");
    assert_eq!(track[0]["eventName"], "a");
    assert_eq!(track[0]["metadata"], json!({"k": "v"}));
    assert_eq!(track[0]["timestampUTC"], 7);
    assert_eq!(track[1]["eventName"], "b");
    assert_eq!(track[1]["metadata"], Value::Null);
    assert_ne!(track[0]["messageId"], track[1]["messageId"]);

    let alias = lake_lines(&lake, "link_users");
    assert_eq!(alias.len(), 1);
    assert_eq!(alias[0]["newUserId"], "n");
    assert_eq!(alias[0]["timestampUTC"], 9);

    let profile = lake_lines(&lake, "user_profiles");
    assert_eq!(profile.len(), 1);
    assert_eq!(profile[0]["attributes"], json!({"plan": "pro"}));
    assert_eq!(profile[0]["timestampUTC"], Value::Null);
    for line in track.iter().chain(&alias).chain(&profile) {
        let at = line["receivedAt"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(at).is_ok() && at.len() == 24 && at.ends_with('Z'),
            "{at}"
        );
    }
    server.stop().await;
}

/// A request that alone needs more than the whole budget can never be taken: 413, not the
/// 503 of a full queue (which clients retry); nothing of it is stored, and what fits still is.
#[tokio::test]
async fn a_request_over_the_whole_budget_gets_413_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_bytes = 2000;
    let server = TestServer::start(config).await;
    let events: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"eventName":"big{i}"}}"#))
        .collect();
    let big = format!(r#"{{"userId":"u","events":[{}]}}"#, events.join(","));
    let (status, headers, value) = post(&server, "/track", None, &big).await;
    assert_eq!(status, 413, "{value}");
    assert!(headers.get("retry-after").is_none());
    assert_eq!(value["error"], "too_large", "{value}");
    let (status, _, _) = post(
        &server,
        "/track",
        None,
        r#"{"userId":"u","events":[{"eventName":"small"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    server.sink.wait_for_events(1).await;
    server.stop().await;
    let lines = lake_lines(&dir.path().join("lake"), "log_user_events");
    assert_eq!(
        lines.len(),
        1,
        "the refused request left nothing: {lines:?}"
    );
    assert_eq!(lines[0]["eventName"], "small");
}

/// A sink that is down: every call fails, nothing is accepted.
struct Down;

#[async_trait]
impl Sink for Down {
    async fn put_batch(&self, _: &str, _: Vec<Bytes>) -> Result<Vec<RecordOutcome>, SinkError> {
        Err(SinkError::Retriable {
            code: "down".to_owned(),
            message: "sink is down".to_owned(),
        })
    }
}

#[tokio::test]
async fn a_restart_delivers_what_the_queue_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let down = TestServer::start_with_sink(config.clone(), Observed::new(Arc::new(Down))).await;
    for i in 0..20 {
        let body = format!(r#"{{"userId":"u","events":[{{"eventName":"e{i}"}}]}}"#);
        assert_eq!(post(&down, "/track", None, &body).await.0, 200);
    }
    down.stop().await;
    assert!(lake_lines(&dir.path().join("lake"), "log_user_events").is_empty());

    let up = TestServer::start(config).await;
    up.sink.wait_for_events(20).await;
    up.stop().await;
    let names: Vec<String> = lake_lines(&dir.path().join("lake"), "log_user_events")
        .iter()
        .map(|l| l["eventName"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    assert_eq!(names, want, "every event, in order, once");
}

#[tokio::test]
async fn admin_serves_health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let health = reqwest::get(format!("{}/healthz", server.admin))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = reqwest::get(format!("{}/readyz", server.admin))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    // Never on the ingest port.
    assert_eq!(
        reqwest::get(server.url("/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

/// The replaced Flask service read bodies with Python's `json`, which skips a UTF-8
/// byte-order mark; clients that send one keep working (on `/v1` too).
#[tokio::test]
async fn a_body_with_a_utf8_byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/track", r#"{"userId":"u","events":[{"eventName":"bom"}]}"#),
        ("/v1/track", r#"{"userId":"u","event":"bom-v1"}"#),
    ] {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(body.as_bytes());
        let response = client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    server.sink.wait_for_events(2).await;
    server.stop().await;
    let lines = lake_lines(&dir.path().join("lake"), "log_user_events");
    assert_eq!(lines[0]["eventName"], "bom");
    let v1 = lake_lines(&dir.path().join("lake"), "segment_tracks");
    assert_eq!(v1[0]["event"], "bom-v1");
}
