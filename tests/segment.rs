//! The Segment-compatible API's rules, request by request: validation, size limits, all or
//! nothing, write keys and sources, `context.ip`, and `messageId` dedup across a `kill -9`.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::binary::{spawn, terminate};
use common::{TestServer, WAIT, lake_lines, test_config};
use serde_json::{Value, json};

const KEY: &str = "web-write-key-0123456789";

fn config(dir: &Path) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config.auth.sources.insert("web".to_owned(), KEY.to_owned());
    config.segment.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config
}

async fn post(server: &TestServer, path: &str, body: &Value, auth: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = auth {
        request = request.basic_auth(key, Some(""));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn track(id: &str) -> Value {
    json!({"type": "track", "userId": "u1", "event": "Bought", "messageId": id})
}

/// Every record in the lake of `stream`.
fn records(dir: &Path, stream: &str) -> Vec<Value> {
    lake_lines(&dir.join("lake"), stream)
}

#[tokio::test]
async fn each_rule_is_a_400_naming_the_field_and_a_bad_message_refuses_its_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let k = Some(KEY);
    let cases = [
        ("/v1/track", json!({"event": "x"}), "userId"),
        ("/v1/track", json!({"userId": "u"}), "event"),
        ("/v1/alias", json!({"userId": "u"}), "previousId"),
        (
            "/v1/alias",
            json!({"anonymousId": "a", "previousId": "p"}),
            "userId",
        ),
        ("/v1/group", json!({"userId": "u"}), "groupId"),
        (
            "/v1/identify",
            json!({"userId": "u", "traits": [1]}),
            "traits",
        ),
        (
            "/v1/page",
            json!({"userId": "u", "properties": "x"}),
            "properties",
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "context": 3}),
            "context",
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "integrations": true}),
            "integrations",
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "timestamp": "yesterday"}),
            "timestamp",
        ),
        ("/v1/track", json!({"userId": 7, "event": "e"}), "userId"),
        (
            "/v1/track",
            json!({"type": "page", "userId": "u", "event": "e"}),
            "type",
        ),
        (
            "/v1/batch",
            json!({"batch": [{"type": "click", "userId": "u"}]}),
            "batch[0].type",
        ),
        (
            "/v1/batch",
            json!({"batch": [{"userId": "u"}]}),
            "batch[0].type",
        ),
        ("/v1/batch", json!({"batch": []}), "batch"),
        // (A skew correction that leaves the years 0000–9999 once panicked, then was a 400;
        // the document allows such a pair, so it is now taken, with the server's time as
        // `timestamp`: src/segment.rs, a_skew_that_cannot_be_written_keeps_the_servers_time.)
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "timestamp": "2026-11-24 10:00:00Z"}),
            "timestamp",
        ),
        (
            "/v1/batch",
            json!({"context": [1], "batch": [track("c-1")]}),
            "context",
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "writeKey": 5}),
            "writeKey",
        ),
        (
            "/v1/batch",
            json!({"sentAt": "2026-01-01T00:00:00Z"}),
            "batch",
        ),
        (
            "/v1/batch",
            json!({"batch": [track("ok-1"), {"type": "track", "anonymousId": "a"}, track("ok-2")]}),
            "batch[1].event",
        ),
        // A single message's `sentAt` was once read as the message's and again as a batch's,
        // and listed twice.
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "sentAt": "yesterday"}),
            "sentAt",
        ),
        // A batch's own `sentAt` is one field, named once under its own path (not once per
        // message, under the message's).
        (
            "/v1/batch",
            json!({"sentAt": "yesterday", "batch": [track("b-1"), track("b-2")]}),
            "sentAt",
        ),
    ];
    for (path, body, field) in &cases {
        let (status, answer) = post(&server, path, body, k).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let paths: Vec<&str> = answer["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert!(paths.contains(field), "{path} {body}: {answer}");
        let unique: HashSet<&str> = paths.iter().copied().collect();
        assert_eq!(unique.len(), paths.len(), "an error listed twice: {answer}");
        if *path == "/v1/batch" && *field == "sentAt" {
            assert_eq!(paths, ["sentAt"], "{answer}");
        }
    }
    // Size limits, as Segment answers them: 400.
    let big = "x".repeat(33 * 1024);
    let message = json!({"userId": "u", "event": "e", "properties": {"big": big}});
    assert_eq!(post(&server, "/v1/track", &message, k).await.0, 400);
    let message = json!({"type": "track", "userId": "u", "event": "e", "properties": {"big": big}});
    assert_eq!(
        post(&server, "/v1/batch", &json!({"batch": [message]}), k)
            .await
            .0,
        400
    );
    let medium = json!({"type": "track", "userId": "u", "event": "e", "properties": {"p": "y".repeat(30 * 1024)}});
    let batch: Vec<Value> = (0..17).map(|_| medium.clone()).collect();
    let (status, answer) = post(&server, "/v1/batch", &json!({"batch": batch}), k).await;
    assert_eq!(status, 400, "a batch over 500 KB: {answer}");
    // A good one, so the lake is known to work.
    let (status, answer) = post(&server, "/v1/batch", &json!({"batch": [track("good")]}), k).await;
    assert_eq!((status, answer), (200, json!({"success": true})));
    server.sink.wait_for_events(1).await;
    server.stop().await;
    let lake = records(dir.path(), "segment_tracks");
    let ids: Vec<&str> = lake
        .iter()
        .map(|r| r["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["good"], "nothing of a refused request was stored");
}

#[tokio::test]
async fn write_keys_name_the_source_from_the_header_or_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.auth.api_keys = vec!["plain-api-key-0123456789".to_owned()];
    let server = TestServer::start(config).await;
    let body = json!({"batch": [track("by-header")]});
    assert_eq!(post(&server, "/v1/batch", &body, Some(KEY)).await.0, 200);
    let body = json!({"batch": [track("in-body")], "writeKey": KEY});
    assert_eq!(post(&server, "/v1/batch", &body, None).await.0, 200);
    let body = json!({"batch": [track("plain")]});
    assert_eq!(
        post(
            &server,
            "/v1/batch",
            &body,
            Some("plain-api-key-0123456789")
        )
        .await
        .0,
        200
    );
    let body = json!({"batch": [track("wrong")], "writeKey": "not-a-key-0000000000"});
    assert_eq!(post(&server, "/v1/batch", &body, None).await.0, 401);
    let body = json!({"batch": [track("none")]});
    assert_eq!(post(&server, "/v1/batch", &body, None).await.0, 401);
    // Behind a trusted proxy, the client's address comes from X-Forwarded-For.
    let response = reqwest::Client::new()
        .post(server.url("/v1/track"))
        .basic_auth(KEY, Some(""))
        .header("x-forwarded-for", "203.0.113.7, 127.0.0.1")
        .body(json!({"userId": "u", "event": "e", "messageId": "proxied"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.sink.wait_for_events(4).await;
    server.stop().await;
    let lake = records(dir.path(), "segment_tracks");
    let by_id = |id: &str| lake.iter().find(|r| r["messageId"] == id).unwrap().clone();
    assert_eq!(by_id("by-header")["source"], "web");
    assert_eq!(by_id("in-body")["source"], "web");
    assert_eq!(by_id("plain")["source"], "default");
    assert_eq!(by_id("proxied")["context"]["ip"], "203.0.113.7");
    assert_eq!(by_id("by-header")["context"]["ip"], "127.0.0.1");
    assert!(
        !lake.iter().any(|r| r.to_string().contains(KEY)),
        "a write key was stored"
    );
    let ids: HashSet<&str> = lake
        .iter()
        .map(|r| r["messageId"].as_str().unwrap())
        .collect();
    assert!(!ids.contains("wrong") && !ids.contains("none"));
}

/// An SDK retries a batch whose answer it did not get. Here the answer is lost to a
/// `kill -9` right after it: after the restart, the same batch is accepted and not stored
/// again (the ids were made durable with the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_after_a_kill_9_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("FIREHOSE_EDGE__AUTH__SOURCES__WEB", KEY.to_owned())];
    let body = json!({"batch": (0..50).map(|i| track(&format!("k9-{i}"))).collect::<Vec<_>>()});
    let send = |addr: String| {
        let body = body.to_string();
        async move {
            reqwest::Client::new()
                .post(format!("http://{addr}/v1/batch"))
                .basic_auth(KEY, Some(""))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The first process cannot deliver (its lake is under a file): a delivery before the
    // kill would be delivered again after it (at least once), which is not what this tests.
    std::fs::write(dir.path().join("blocked"), b"").unwrap();
    let mut blocked = env.to_vec();
    blocked.push((
        "FIREHOSE_EDGE__SINK__DIRECTORY",
        dir.path().join("blocked/lake").display().to_string(),
    ));
    let (mut child, addr) = spawn(dir.path(), &blocked).await;
    assert_eq!(send(addr).await, 200);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (child, addr) = spawn(dir.path(), &env).await;
    assert_eq!(
        send(addr.clone()).await,
        200,
        "a retry is answered as accepted"
    );
    // Delivered: both answers are in; now wait for the lake and stop.
    let lake = dir.path().join("lake");
    tokio::time::timeout(WAIT, async {
        while lake_lines(&lake, "segment_tracks").len() < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the batch is delivered");
    terminate(&child).await;
    let _ = tokio::time::timeout(WAIT, async move {
        let mut child = child;
        child.wait().await
    })
    .await;
    let ids: Vec<String> = lake_lines(&lake, "segment_tracks")
        .iter()
        .map(|r| r["messageId"].as_str().unwrap().to_owned())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (50, 50), "every message once");
}

/// The compatibility API reads every body as JSON whatever its label (RudderStack's Node SDK
/// sends gzipped JSON as `application/x-www-form-urlencoded`, and drops a batch answered
/// 4xx); what is not JSON after that is a 400 saying so, never a 415. The classic API keeps
/// its strict rule.
#[tokio::test]
async fn v1_reads_json_whatever_the_content_type_says() {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let client = reqwest::Client::new();
    let send = |label: Option<&'static str>, gzip: bool, body: Vec<u8>| {
        let mut request = client
            .post(server.url("/v1/batch"))
            .basic_auth(KEY, Some(""));
        if let Some(label) = label {
            request = request.header("content-type", label);
        }
        let body = if gzip {
            let mut e = GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(&body).unwrap();
            request = request.header("content-encoding", "gzip");
            e.finish().unwrap()
        } else {
            body
        };
        async move {
            let response = request.body(body).send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let labels = [
        Some("application/x-www-form-urlencoded"),
        Some("application/x-www-form-urlencoded; charset=utf-8"),
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/json; charset=ISO-8859-1"),
        Some("multipart/form-data; boundary=x"),
        Some("application/octet-stream"),
        Some(""),
        None,
    ];
    let mut want = Vec::new();
    for (i, label) in labels.into_iter().enumerate() {
        for gzip in [false, true] {
            let id = format!("label-{i}-{gzip}");
            let body = json!({"batch": [track(&id)]}).to_string().into_bytes();
            let answer = send(label, gzip, body).await;
            assert_eq!(
                answer,
                (200, json!({"success": true})),
                "{label:?} gzip {gzip}"
            );
            want.push(id);
        }
    }
    // A body that really is a form (or anything else that is not JSON): a 400 saying why.
    for gzip in [false, true] {
        let (status, answer) = send(
            Some("application/x-www-form-urlencoded"),
            gzip,
            b"batch=%5B%5D&writeKey=x".to_vec(),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["details"][0]["path"], "$", "{answer}");
        let reason = answer["details"][0]["reason"].as_str().unwrap();
        assert!(reason.contains("not valid JSON"), "{answer}");
    }
    // The classic API still insists on its label.
    let response = client
        .post(server.url("/track"))
        .header("content-type", "application/x-www-form-urlencoded")
        .basic_auth(KEY, Some(""))
        .body(r#"{"userId":"u1","events":[{"eventName":"signup"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    server.sink.wait_for_events(want.len()).await;
    server.stop().await;
    let mut got: Vec<String> = records(dir.path(), "segment_tracks")
        .iter()
        .map(|r| r["messageId"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each landed once");
}
