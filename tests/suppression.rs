//! Deletion requests (suppression), from outside: the admin API refuses without its key;
//! identifiers added while their users' events wait in the queue (the sink down) are erased
//! before delivery and counted; later events of them are answered as accepted and never
//! stored, through every protocol (and under a policy that hashes the ids); the list and
//! its effect survive kill -9; the `suppress` sub-command works on a running service and on
//! a stopped one.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::fake_firehose::FakeFirehose;
use common::{Observed, TestServer, WAIT, binary, driver, test_config};
use firehose_edge::sink::{FileSink, RecordOutcome, Sink, SinkError};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn admin_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("admin-key");
    std::fs::write(&path, format!("{ADMIN_KEY}\n")).unwrap();
    path
}

/// A file sink that fails every call (retriable) while it is down.
struct Switchable {
    down: AtomicBool,
    inner: FileSink,
}

#[async_trait]
impl Sink for Switchable {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        if self.down.load(Ordering::Acquire) {
            return Err(SinkError::Retriable {
                code: "ServiceUnavailableException".to_owned(),
                message: "down (test)".to_owned(),
            });
        }
        self.inner.put_batch(stream, records).await
    }
}

/// A change to the suppression list; returns the status and the body.
async fn change(
    admin: &str,
    method: reqwest::Method,
    key: Option<&str>,
    ids: &[&str],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{admin}/suppressions"))
        .body(json!({ "ids": ids }).to_string());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn listed(admin: &str) -> Vec<String> {
    let response = reqwest::Client::new()
        .get(format!("{admin}/suppressions"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(url: String, body: Value) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The value of `name{labels…}` summed over series whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every file under `dir`, read byte by byte: which of `needles` occur.
fn written(dir: &Path, needles: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut found = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{needle} in {}", file.display()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_admin_api_refuses_without_its_key() {
    let dir = tempfile::tempdir().unwrap();
    // No key configured: refused for everyone, whatever they send.
    let server = TestServer::start(test_config(dir.path())).await;
    for key in [None, Some(ADMIN_KEY)] {
        let (status, body) = change(&server.admin, reqwest::Method::POST, key, &["u-1"]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("no_admin_key"))
        );
    }
    let (status, _) = server.admin_get("/suppressions").await;
    assert_eq!(status, 403);
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.admin.api_key_file = admin_key_file(dir.path());
    let server = TestServer::start(config).await;
    let wrong = format!("{ADMIN_KEY}x");
    for key in [None, Some(wrong.as_str()), Some(&ADMIN_KEY[..20])] {
        for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
            let (status, _) = change(&server.admin, method, key, &["u-1"]).await;
            assert_eq!(status, 401, "{key:?}");
        }
    }
    let (status, _) = server.admin_get("/suppressions").await;
    assert_eq!(status, 401);
    // With it: bad bodies are 400s, and nothing was listed by the refused requests.
    assert!(listed(&server.admin).await.is_empty());
    let (status, body) = change(&server.admin, reqwest::Method::POST, Some(ADMIN_KEY), &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid")));
    let long = "x".repeat(2000);
    let (status, _) = change(
        &server.admin,
        reqwest::Method::POST,
        Some(ADMIN_KEY),
        &[&long],
    )
    .await;
    assert_eq!(status, 400);
    let response = reqwest::Client::new()
        .put(format!("{}/suppressions", server.admin))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let (status, body) = change(
        &server.admin,
        reqwest::Method::POST,
        Some(ADMIN_KEY),
        &["u-1", "u-2"],
    )
    .await;
    assert_eq!((status, &body["added"]), (200, &json!(2)));
    let (status, body) = change(
        &server.admin,
        reqwest::Method::DELETE,
        Some(ADMIN_KEY),
        &["u-2", "u-9"],
    )
    .await;
    assert_eq!((status, &body["removed"]), (200, &json!(1)));
    assert_eq!(listed(&server.admin).await, ["u-1"]);
    server.stop().await;
}

/// Each protocol's user fields: an event naming a suppressed identifier in any of them is
/// answered like the others and never written, queued or not (the ids of one source hashed
/// by its policy: the queue holds the hash, and the erasure finds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocols_user_ids_are_erased_from_the_queue_and_refused_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.admin.api_key_file = admin_key_file(dir.path());
    let hash_key = dir.path().join("hash-key");
    std::fs::write(&hash_key, "a-hash-key-0123456789").unwrap();
    config.privacy = toml::from_str(&format!(
        "hash = [\"userId\"]\nhash_key_file = {hash_key:?}\n"
    ))
    .unwrap();
    let sink = Arc::new(Switchable {
        down: AtomicBool::new(true),
        inner: FileSink::new(&config.sink.directory),
    });
    let handle = firehose_edge::metrics::exporter()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let server =
        TestServer::start_observed(config, Observed::new(sink.clone()), Some(handle)).await;
    let gone = [
        "gone-user",
        "gone-anon",
        "gone-distinct",
        "gone-uid",
        "gone-duid",
    ];
    let send_all = |round: &'static str| {
        let server = &server;
        async move {
            let now = "2026-12-02T08:00:00Z";
            let segment = json!({"batch": [
                {"type": "track", "event": "E", "userId": "gone-user", "messageId": format!("{round}-1"), "timestamp": now},
                {"type": "track", "event": "E", "anonymousId": "gone-anon", "messageId": format!("{round}-2"), "timestamp": now},
                {"type": "alias", "userId": "kept-user", "previousId": "gone-anon", "messageId": format!("{round}-3"), "timestamp": now},
                {"type": "track", "event": "E", "userId": format!("kept-{round}"), "messageId": format!("{round}-4"), "timestamp": now},
            ]});
            assert_eq!(post(server.url("/v1/batch"), segment).await, 200);
            let posthog = json!({"api_key": "phc_any", "batch": [
                {"event": "e", "distinct_id": "gone-distinct", "uuid": uuid(round, 1)},
                {"event": "e", "distinct_id": "kept-d", "properties": {"$anon_distinct_id": "gone-anon"}, "uuid": uuid(round, 2)},
                {"event": "e", "distinct_id": format!("kept-{round}"), "uuid": uuid(round, 3)},
            ]});
            assert_eq!(post(server.url("/batch/"), posthog).await, 200);
            let snowplow = json!({
            "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
            "data": [
                {"e": "pv", "p": "web", "tv": "js-4", "eid": uuid(round, 4), "uid": "gone-uid"},
                {"e": "pv", "p": "web", "tv": "js-4", "eid": uuid(round, 5), "duid": "gone-duid"},
                {"e": "pv", "p": "web", "tv": "js-4", "eid": uuid(round, 6), "uid": format!("kept-{round}")},
            ]});
            assert_eq!(
                post(server.url("/com.snowplowanalytics.snowplow/tp2"), snowplow).await,
                200
            );
            let classic = json!({"userId": "gone-user", "events": [{"eventName": format!("classic-gone-{round}")}]});
            assert_eq!(post(server.url("/track"), classic).await, 200);
            let classic = json!({"userId": format!("kept-{round}"), "events": [{"eventName": format!("classic-{round}")}]});
            assert_eq!(post(server.url("/track"), classic).await, 200);
        }
    };
    // Queued while the sink is down: 12 events, 8 of them of suppressed users.
    send_all("before").await;
    let (status, body) = change(&server.admin, reqwest::Method::POST, Some(ADMIN_KEY), &gone).await;
    assert_eq!(status, 200, "{body}");
    let erased = &body["erased"];
    assert_eq!(
        erased["queued"].as_u64().unwrap() + erased["in_flight"].as_u64().unwrap(),
        8,
        "{body}"
    );
    // Later events of them are answered as accepted and not stored.
    send_all("after").await;
    sink.down.store(false, Ordering::Release);
    server.sink.wait_for_events(8).await;
    let (_, text) = server.admin_get("/metrics").await;
    server.stop().await;
    let lake = dir.path().join("lake");
    let all: Vec<Value> = [
        "segment_tracks",
        "segment_aliases",
        "posthog_events",
        "snowplow_events",
        "log_user_events",
    ]
    .iter()
    .flat_map(|s| common::lake_lines(&lake, s))
    .collect();
    // Everyone else's, each once; none of theirs.
    assert_eq!(all.len(), 8, "{all:#?}");
    let mut delivered: Vec<String> = all
        .iter()
        .map(|r| {
            let id = ["eventName", "messageId", "uuid", "eid"];
            let id = id.iter().find_map(|f| r.get(*f)?.as_str());
            id.unwrap().to_owned()
        })
        .collect();
    delivered.sort();
    let mut kept = vec![
        "before-4".to_owned(),
        "after-4".to_owned(),
        uuid("before", 3),
        uuid("after", 3),
        uuid("before", 6),
        uuid("after", 6),
        "classic-before".to_owned(),
        "classic-after".to_owned(),
    ];
    kept.sort();
    assert_eq!(delivered, kept);
    let found = written(&lake, &gone);
    assert!(found.is_empty(), "{found:?}");
    // What came after the request was never written at all, in the queue's files either.
    let later = [
        "after-1".to_owned(),
        "after-2".to_owned(),
        "after-3".to_owned(),
        uuid("after", 1),
        uuid("after", 2),
        uuid("after", 4),
        uuid("after", 5),
        "classic-gone-after".to_owned(),
    ];
    let later: Vec<&str> = later.iter().map(String::as_str).collect();
    let found = written(dir.path(), &later);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(
        metric(&text, "firehose_edge_events_suppressed_total", ""),
        8
    );
    assert_eq!(
        metric(&text, "firehose_edge_queue_erased_events_total", ""),
        8
    );
}

fn uuid(round: &str, n: u8) -> String {
    let r = if round == "before" { 1 } else { 2 };
    format!("0190a1b2-c3d4-7e5f-8a9b-0000000{r}00{n:02}")
}

/// segment-analytics-python against the binary, Firehose down: the users named while their
/// events wait are erased (the count reported), the list survives kill -9, and after the
/// restart none of their events reaches Firehose while everyone else's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_request_erases_queued_events_and_survives_kill_9() {
    let python = driver::python("segment.analytics");
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let mut env = binary::firehose_env(&fake);
    env.push((
        "FIREHOSE_EDGE__ADMIN__API_KEY_FILE",
        admin_key_file(dir.path()).display().to_string(),
    ));
    let (mut child, ingest, admin) = binary::spawn_with_admin(dir.path(), &env).await;
    let ingest = format!("http://{ingest}");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(driver::root().join("tests/py/sdk_client.py"))
        .args(["segment", &ingest, "any-key", "120", "0"])
        .env("SDK_USERS", "4");
    let report = driver::run(command, "sdk_client.py", Duration::from_secs(120)).await;
    assert_eq!(report["errors"], json!([]));
    let sent = report["sent"].as_array().unwrap().clone();
    // u1: its tracks, identifies, pages, groups and aliases; a3: its screens, and the aliases
    // whose previous id it is.
    let suppressed = ["u1", "a3"];
    let of_them = |m: &Value| {
        ["userId", "anonymousId", "previousId"]
            .iter()
            .any(|f| suppressed.contains(&m[*f].as_str().unwrap_or("")))
    };
    let expected = sent.iter().filter(|m| of_them(m)).count() as u64;
    assert_eq!(expected, 40);

    // Through the `suppress` sub-command, which finds the service holding the queue and
    // asks its admin API.
    let mut cli_env = env.clone();
    cli_env.push((
        "FIREHOSE_EDGE__ADMIN__LISTEN",
        admin.trim_start_matches("http://").to_owned(),
    ));
    let output = binary::command(dir.path(), &cli_env)
        .args(["suppress", "add", "u1", "a3"])
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let erased = &answer["erased"];
    assert_eq!(answer["added"], 2);
    assert_eq!(
        erased["queued"].as_u64().unwrap() + erased["in_flight"].as_u64().unwrap(),
        expected,
        "{answer}"
    );
    child.kill().await.unwrap();

    let (child, _, admin) = binary::spawn_with_admin(dir.path(), &env).await;
    assert_eq!(listed(&format!("http://{admin}")).await, ["a3", "u1"]);
    fake.set_down(false).await;
    let kept = sent.len() - expected as usize;
    fake.wait_for_accepted_records(1).await;
    let delivered = tokio::time::timeout(WAIT, async {
        loop {
            // Counted before the records are read: a call answered in between is then
            // waited for only if it was not read.
            let calls = fake.call_count();
            let lines: Vec<Value> = fake
                .accepted()
                .iter()
                .flat_map(|(_, data)| {
                    data.split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_slice::<Value>(l).unwrap())
                        .collect::<Vec<_>>()
                })
                .collect();
            let ids: HashSet<String> = lines
                .iter()
                .map(|l| l["messageId"].as_str().unwrap().to_owned())
                .collect();
            if ids.len() >= kept {
                return lines;
            }
            fake.wait_for_calls(calls + 1).await;
        }
    })
    .await
    .expect("everyone else's events reach Firehose");
    let of_theirs: Vec<&Value> = delivered
        .iter()
        .filter(|l| {
            ["userId", "anonymousId", "previousId"]
                .iter()
                .any(|f| suppressed.contains(&l[*f].as_str().unwrap_or("")))
        })
        .collect();
    assert!(of_theirs.is_empty(), "{of_theirs:#?}");
    binary::terminate(&child).await;
    assert_eq!(binary::exit_code(child).await, Some(0));

    // Stopped: the sub-command works on the directory itself.
    let output = binary::command(dir.path(), &env)
        .args(["suppress", "remove", "a3"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let output = binary::command(dir.path(), &env)
        .args(["suppress", "list"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let list: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (&list[0]["id"], &list[0]["pending"]),
        (&json!("u1"), &json!(false))
    );
    fake.shutdown().await;
}
