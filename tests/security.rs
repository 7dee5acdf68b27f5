//! Facing the open internet: API keys, CORS and beacons, compressed bodies, slow and greedy
//! clients, and the disk-budget cycle, each against the real server.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use base64::Engine;
use common::fake_firehose::FakeFirehose;
use common::{TestServer, WAIT, event_names, lake_lines, post, test_config, track_body};
use flate2::Compression;
use flate2::write::{GzEncoder, ZlibEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "test-key-0123456789";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn api_keys_in_every_accepted_form_and_401_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.api_keys = vec!["another-key-000000000".to_owned(), KEY.to_owned()];
    let server = TestServer::start(config).await;
    let body = track_body("auth");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"));
    let ok = [
        client().post(server.url("/track")).bearer_auth(KEY),
        client()
            .post(server.url("/track"))
            .header("authorization", format!("Basic {basic}")),
        client().post(server.url("/track")).header("x-api-key", KEY),
        client().post(server.url(&format!("/track?api_key={KEY}"))),
    ];
    for request in ok {
        let response = request.body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let refused = [
        client().post(server.url("/track")),
        client()
            .post(server.url("/track"))
            .bearer_auth("wrong-key-0000000000"),
        client()
            .post(server.url("/track"))
            .header("x-api-key", format!("{KEY}x")),
        client().post(server.url("/track?api_key=nope")),
        client().post(server.url("/alias")),
    ];
    for request in refused {
        let response = request.body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["error"], "unauthorized");
    }
    server.sink.wait_for_events(4).await;
    server.stop().await;
    assert_eq!(
        lake_lines(&dir.path().join("lake"), "log_user_events").len(),
        4,
        "refused requests stored nothing"
    );
}

#[tokio::test]
async fn cors_preflight_actual_responses_and_beacons() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cors.allowed_origins = vec!["https://shop.example".to_owned()];
    config.auth.api_keys = vec![KEY.to_owned()];
    let server = TestServer::start(config).await;
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, server.url("/track"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, x-api-key")
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(allowed.status(), 204);
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert_eq!(h["access-control-allow-methods"], "POST");
    let allow_headers = h["access-control-allow-headers"].to_str().unwrap();
    for needed in [
        "content-type",
        "authorization",
        "x-api-key",
        "content-encoding",
    ] {
        assert!(allow_headers.contains(needed), "{allow_headers}");
    }
    assert_eq!(h["access-control-max-age"], "86400");
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let actual = |origin: &'static str| {
        client()
            .post(server.url("/track"))
            .header("origin", origin)
            .header("x-api-key", KEY)
            .body(track_body("cors"))
            .send()
    };
    let response = actual("https://shop.example").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let response = actual("https://evil.example").await.unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // A beacon: text/plain, the key in the query string, no custom headers.
    let beacon = client()
        .post(server.url(&format!("/track?api_key={KEY}")))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "https://shop.example")
        .body(track_body("beacon"))
        .send()
        .await
        .unwrap();
    assert_eq!(beacon.status(), 200);
    assert_eq!(
        beacon.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    server.sink.wait_for_events(3).await;
}

#[tokio::test]
async fn wildcard_cors_echoes_any_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cors.allowed_origins = vec!["*".to_owned()];
    let server = TestServer::start(config).await;
    let response = client()
        .request(reqwest::Method::OPTIONS, server.url("/profile"))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://anyone.example"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn compressed_bodies_bombs_and_corrupt_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let send = |encoding: &'static str, body: Vec<u8>| {
        client()
            .post(server.url("/track"))
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    assert_eq!(
        send("gzip", gzip(track_body("gz").as_bytes()))
            .await
            .unwrap()
            .status(),
        200
    );
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(track_body("zlib").as_bytes()).unwrap();
    assert_eq!(
        send("deflate", z.finish().unwrap()).await.unwrap().status(),
        200
    );

    // 64 MiB of JSON-ish bytes in a few KB: refused at the 1 MiB decompressed cap.
    let bomb = gzip(&[b' '; 64 << 20]);
    assert!(bomb.len() < 100_000);
    assert_eq!(send("gzip", bomb).await.unwrap().status(), 413);
    let mut corrupt = gzip(track_body("x").as_bytes());
    corrupt.truncate(corrupt.len() / 2);
    let response = send("gzip", corrupt).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "corrupt_body"
    );
    assert_eq!(
        send("br", b"whatever".to_vec()).await.unwrap().status(),
        415
    );

    server.sink.wait_for_events(2).await;
    server.stop().await;
    let mut names = event_names(
        &lake_lines(&dir.path().join("lake"), "log_user_events")
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>(),
    );
    names.sort();
    assert_eq!(names, ["gz", "zlib"]);
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_and_slow_bodies_get_408() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.header_read_timeout_ms = 300;
    config.server.body_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let addr = server.ingest.trim_start_matches("http://").to_owned();

    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /track HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap(); // never finished
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(read.is_ok());
    assert!(!String::from_utf8_lossy(&buf).contains(" 200 "));

    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    slow_body
        .write_all(b"POST /track HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"userId\":")
        .await
        .unwrap();
    let mut head = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, slow_body.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
}

#[tokio::test]
async fn caps_on_events_strings_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_events_per_request = 3;
    config.server.max_string_chars = 16;
    config.server.max_connections = 2;
    let server = TestServer::start(config).await;
    let four = r#"{"userId":"u","events":[{"eventName":"a"},{"eventName":"b"},{"eventName":"c"},{"eventName":"d"}]}"#;
    assert_eq!(post(&server, "/track", four).await, 413);
    let long_id = format!(
        r#"{{"userId":"{}","events":[{{"eventName":"a"}}]}}"#,
        "u".repeat(17)
    );
    assert_eq!(post(&server, "/track", &long_id).await, 400);
    assert_eq!(
        post(
            &server,
            "/alias",
            &format!(
                r#"{{"newUserId":"{}","originalUserId":"o"}}"#,
                "n".repeat(17)
            )
        )
        .await,
        400
    );

    // Two held connections fill the cap: a third is not served until one closes.
    let addr = server.ingest.trim_start_matches("http://").to_owned();
    let request = format!(
        "POST /track HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{}",
        track_body("capped").len(),
        track_body("capped")
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 512];
        let n = c.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        held.push(c); // kept alive, idle
    }
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    // A negative check needs a bound: the answer must not come while both are held.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut head))
            .await
            .is_err(),
        "served past the cap"
    );
    drop(held.pop());
    let n = tokio::time::timeout(WAIT, third.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn disk_budget_cycle_503_then_drain_then_200_with_nothing_lost() {
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_bytes = 4000;
    config.sink.connect_timeout_ms = 200;
    config.flusher.retry_max_ms = 100;
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    let mut acked = Vec::new();
    let retry_after = loop {
        let name = format!("b{}", acked.len());
        let response = client()
            .post(server.url("/track"))
            .body(track_body(&name))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acked.push(name),
            503 => {
                break response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
            other => panic!("unexpected {other}"),
        }
    };
    assert!(retry_after >= 1);
    assert!(
        acked.len() >= 10,
        "{} accepted before the budget",
        acked.len()
    );
    assert_eq!(server.admin_get("/readyz").await.0, 503);
    assert_eq!(
        post(&server, "/track", &track_body("refused")).await,
        503,
        "still full"
    );

    fake.set_down(false).await;
    server.sink.wait_for_events(acked.len()).await;
    let ready = tokio::time::timeout(WAIT, async {
        // The budget is released as the flusher settles, right after the sink's answer.
        while server.admin_get("/readyz").await.0 != 200 {
            tokio::task::yield_now().await;
        }
    });
    ready.await.expect("ready again once drained");
    assert_eq!(post(&server, "/track", &track_body("after")).await, 200);
    server.sink.wait_for_events(acked.len() + 1).await;
    let delivered: HashSet<String> = event_names(&server.sink.lines("log_user_events"))
        .into_iter()
        .collect();
    for name in acked.iter().chain(std::iter::once(&"after".to_owned())) {
        assert!(delivered.contains(name), "{name} lost");
    }
    assert!(!delivered.contains("refused"));
}
