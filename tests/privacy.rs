//! Privacy policies, through every protocol and a real SDK: what a policy removes or hashes
//! is never written — not in the queue's files (sled's directory, read byte by byte), not in
//! the lake — addresses are truncated or dropped, user agents dropped, each source gets its
//! own policy or the default, every touched record names its policy, and a hash is stable
//! across restarts under one key and changes with the key (and its id).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, driver, test_config};
use serde_json::{Value, json};

const DEFAULT_KEY: &str = "default-api-key-0123456789";
const WEB_KEY: &str = "phc_web_token_0123456789";

/// Strings that must never be written anywhere.
const SECRETS: [&str; 6] = [
    "a@secret.example",
    "secret-user-",
    "SecretAgent",
    "203.0.113.77",
    "198.51.100.23",
    "+1-555-0100",
];

fn key_file(dir: &Path, key: &str) -> PathBuf {
    let path = dir.join(format!("hash-key-{}", key.len()));
    std::fs::write(&path, key).unwrap();
    path
}

fn config(dir: &Path, key: &str) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config.auth.api_keys = vec![DEFAULT_KEY.to_owned()];
    config
        .auth
        .sources
        .insert("web".to_owned(), WEB_KEY.to_owned());
    let text = format!(
        r#"
        ip = "truncate"
        drop = ["properties.email", "traits.*", "metadata.email", "contexts.data.data.email",
                "properties.$set.phone"]
        hash = ["userId", "distinct_id", "uid", "context.traits.phone"]
        hash_key_file = {:?}
        user_agent = "drop"
        [sources.web]
        ip = "drop"
        drop = ["properties.email"]
        hash = ["distinct_id"]
        hash_key_file = {:?}
        "#,
        key_file(dir, key),
        key_file(dir, key)
    );
    config.privacy = toml::from_str(&text).unwrap();
    config
}

async fn post(server: &TestServer, path: &str, body: Value, headers: &[(&str, &str)]) -> u16 {
    let mut request = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/json")
        .header("user-agent", "SecretAgent/1.0")
        .header("x-forwarded-for", "203.0.113.77")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Every file under `dir`, searched byte by byte for each secret.
fn found_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for secret in SECRETS {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(format!("{secret} in {}", entry.display()));
            }
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// One request of each protocol, each carrying the secrets.
async fn send_everything(server: &TestServer) {
    let default = [("x-api-key", DEFAULT_KEY)];
    let classic = json!({"userId": "secret-user-1", "events": [
        {"eventName": "signup", "metadata": {"email": "a@secret.example", "plan": "pro"}}]});
    assert_eq!(post(server, "/track", classic, &default).await, 200);
    let segment = json!({"batch": [{"type": "identify", "userId": "secret-user-2",
        "messageId": "m-1", "traits": {"email": "a@secret.example", "name": "Ann"},
        "context": {"ip": "203.0.113.77", "userAgent": "SecretAgent/1.0",
                    "traits": {"phone": "+1-555-0100"}}}]});
    assert_eq!(post(server, "/v1/batch", segment, &default).await, 200);
    let posthog = json!({"api_key": WEB_KEY, "batch": [{"event": "bought", "uuid": "p-1",
        "distinct_id": "secret-user-3",
        "properties": {"email": "a@secret.example", "$ip": "198.51.100.23", "price": 3}}]});
    assert_eq!(post(server, "/batch/", posthog, &[]).await, 200);
    let contexts = json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
        "data": [{"schema": "iglu:com.example/user/jsonschema/1-0-0",
                  "data": {"email": "a@secret.example", "tier": "gold"}}]});
    let snowplow = json!({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"e": "pv", "p": "web", "tv": "t", "eid": "s-1", "uid": "secret-user-4",
                  "ip": "198.51.100.23", "ua": "SecretAgent/2.0", "co": contexts.to_string()}]});
    assert_eq!(
        post(
            server,
            "/com.snowplowanalytics.snowplow/tp2",
            snowplow,
            &default
        )
        .await,
        200
    );
}

fn one(server: &TestServer, stream: &str) -> Value {
    let records = server.sink.records(stream);
    assert_eq!(records.len(), 1, "{stream}: {records:?}");
    records.into_iter().next().unwrap()
}

#[tokio::test]
async fn every_protocol_applies_its_sources_policy_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "the-first-key-0123456789");
    config.segment.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let server = TestServer::start(config).await;
    send_everything(&server).await;
    server.sink.wait_for_events(4).await;
    let hashed = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("hmac-sha256:"));

    let classic = one(&server, "log_user_events");
    assert!(hashed(&classic["userId"]), "{classic}");
    assert_eq!(classic["metadata"], json!({"plan": "pro"}));
    let segment = one(&server, "segment_identifies");
    assert!(hashed(&segment["userId"]), "{segment}");
    assert_eq!(segment["traits"], json!({}));
    assert_eq!(segment["context"]["ip"], "203.0.113.0");
    assert!(segment["context"].get("userAgent").is_none(), "{segment}");
    assert!(hashed(&segment["context"]["traits"]["phone"]), "{segment}");
    // PostHog's token is source `web`: its own policy (addresses dropped, not truncated).
    let posthog = one(&server, "posthog_events");
    assert!(hashed(&posthog["distinct_id"]), "{posthog}");
    assert_eq!(posthog["ip"], Value::Null);
    assert_eq!(posthog["properties"], json!({"price": 3}));
    assert!(
        posthog["privacy_policy"]
            .as_str()
            .unwrap()
            .starts_with("web:")
    );
    let snowplow = one(&server, "snowplow_events");
    assert!(hashed(&snowplow["uid"]), "{snowplow}");
    assert_eq!(snowplow["ip"], "198.51.100.0");
    assert!(snowplow.get("useragent").is_none() && snowplow.get("ua").is_none());
    assert_eq!(
        snowplow["contexts"]["data"][0]["data"],
        json!({"tier": "gold"})
    );
    for record in [&classic, &segment, &snowplow] {
        assert!(
            record["privacy_policy"]
                .as_str()
                .unwrap()
                .starts_with("default:")
        );
    }
    server.stop().await;
    let found = found_in(dir.path());
    assert!(found.is_empty(), "written: {found:?}");
}

#[tokio::test]
async fn a_hash_is_stable_across_restarts_and_changes_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for (i, key) in [
        "the-first-key-0123456789",
        "the-first-key-0123456789",
        "a-second-key-0123456789",
    ]
    .iter()
    .enumerate()
    {
        let server = TestServer::start(config(dir.path(), key)).await;
        let body = json!({"userId": "secret-user-1", "events": [{"eventName": format!("e{i}")}]});
        assert_eq!(
            post(&server, "/track", body, &[("x-api-key", DEFAULT_KEY)]).await,
            200
        );
        server.sink.wait_for_events(1).await;
        hashes.push(
            one(&server, "log_user_events")["userId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        server.stop().await;
    }
    assert_eq!(hashes[0], hashes[1], "the same key, after a restart");
    assert_ne!(hashes[0], hashes[2], "another key");
    let id = |h: &str| h.split(':').nth(1).unwrap().to_owned();
    assert_ne!(id(&hashes[0]), id(&hashes[2]), "and another key id");
    assert!(found_in(dir.path()).is_empty());
}

/// segment-analytics-python, unchanged: its user ids are hashed and its traits dropped
/// before they are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_under_a_policy_writes_no_user_id_and_no_trait() {
    let python = driver::python("segment.analytics");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.api_keys = vec![DEFAULT_KEY.to_owned()];
    config.privacy = toml::from_str(&format!(
        "drop = [\"traits.*\"]\nhash = [\"userId\", \"previousId\"]\nhash_key_file = {:?}\n",
        key_file(dir.path(), "the-first-key-0123456789")
    ))
    .unwrap();
    let server = TestServer::start(config).await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(driver::root().join("tests/py/sdk_client.py"))
        .args(["segment", &server.ingest, DEFAULT_KEY, "300", "0"]);
    let report = driver::run(command, "sdk_client.py", Duration::from_secs(120)).await;
    assert_eq!(report["errors"], json!([]));
    server.sink.wait_for_events(300).await;
    server.stop().await;
    let checked = assert_never_written(
        dir.path(),
        &["\"userId\":\"u", "\"plan\":\"pro\"", "\"previousId\":\"a"],
    );
    let lake = common::lake_lines(&dir.path().join("lake"), "segment_tracks");
    assert_eq!(lake.len(), 50);
    assert!(
        lake.iter()
            .all(|r| r["userId"].as_str().unwrap().starts_with("hmac-sha256:"))
    );
    println!(
        "privacy: segment-analytics-python, 300 messages, {checked} files read: no user id, no trait"
    );
}

/// Reads every file of the lake and the queue under `dir` for each of `needles`.
fn assert_never_written(dir: &Path, needles: &[&str]) -> usize {
    let files: Vec<PathBuf> = walk(&dir.join("lake"))
        .into_iter()
        .chain(walk(&dir.join("queue")))
        .collect();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in {}",
                file.display()
            );
        }
    }
    files.len()
}

/// posthog-python, unchanged, under a policy: its distinct ids (and the alias's ids in
/// `properties`) are hashed and a `$set` trait dropped before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_under_a_policy_writes_no_distinct_id() {
    let python = driver::python("posthog");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config
        .auth
        .sources
        .insert("web".to_owned(), WEB_KEY.to_owned());
    config.privacy = toml::from_str(&format!(
        "[sources.web]\ndrop = [\"$set.plan\"]\n\
         hash = [\"distinct_id\", \"properties.distinct_id\", \"properties.alias\"]\n\
         hash_key_file = {:?}\n",
        key_file(dir.path(), "the-first-key-0123456789")
    ))
    .unwrap();
    let server = TestServer::start(config).await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(driver::root().join("tests/py/posthog_client.py"))
        .args([&server.ingest, WEB_KEY, "250", "0"]);
    let report = driver::run(command, "posthog_client.py", Duration::from_secs(120)).await;
    assert_eq!(report["errors"], json!([]));
    server.sink.wait_for_events(250).await;
    let records = server.sink.records("posthog_events");
    assert_eq!(records.len(), 250);
    assert!(records.iter().all(|r| {
        r["distinct_id"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    }));
    server.stop().await;
    let files = assert_never_written(dir.path(), &["\"py-u", "\"py-a", "\"plan\":\"pro\""]);
    println!("privacy: posthog-python, 250 events, {files} files read: no distinct id, no plan");
}

/// snowplow-tracker, unchanged, under a policy: its user ids hashed, addresses and user
/// agents dropped, a context entity's field dropped, before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowplow_python_under_a_policy_writes_no_user_id() {
    let python = driver::python("snowplow_tracker");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.privacy = toml::from_str(&format!(
        "ip = \"drop\"\nuser_agent = \"drop\"\ndrop = [\"contexts.data.data.tier\"]\n\
         hash = [\"uid\"]\nhash_key_file = {:?}\n",
        key_file(dir.path(), "the-first-key-0123456789")
    ))
    .unwrap();
    let server = TestServer::start(config).await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(driver::root().join("tests/py/snowplow_client.py"))
        .args(["post", &server.ingest, "120", "0"]);
    let report = driver::run(command, "snowplow_client.py", Duration::from_secs(120)).await;
    assert_eq!(report["errors"], json!([]));
    server.sink.wait_for_events(120).await;
    let records = server.sink.records("snowplow_events");
    assert_eq!(records.len(), 120);
    for r in &records {
        assert!(
            r["uid"].as_str().unwrap().starts_with("hmac-sha256:"),
            "{r}"
        );
        assert!(r["ip"].is_null() && r.get("useragent").is_none(), "{r}");
    }
    server.stop().await;
    let files = assert_never_written(
        dir.path(),
        &[
            "\"user-",
            "\"tier\":\"gold\"",
            "127.0.0.1",
            "python-requests",
        ],
    );
    println!(
        "privacy: snowplow-tracker, 120 events, {files} files read: no user id, address or user agent"
    );
}

/// A record the policy makes longer than Firehose's record limit (hashes are longer than the
/// short values they replace) is a 400, and nothing of the request is stored.
#[tokio::test]
async fn a_record_the_policy_makes_too_large_is_a_400_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.privacy = toml::from_str(&format!(
        "hash = [\"metadata.ids\"]\nhash_key_file = {:?}\n",
        key_file(dir.path(), "the-first-key-0123456789")
    ))
    .unwrap();
    let server = TestServer::start(config).await;
    // ~70 KB as sent; every one-letter id becomes an 85-byte hash: over 1,024,000 bytes.
    let ids = vec!["a"; 14_000];
    let body = json!({"userId": "u", "events": [{"eventName": "big", "metadata": {"ids": ids}}]});
    let response = reqwest::Client::new()
        .post(server.url("/track"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer = response.text().await.unwrap();
    assert!(
        answer.contains("with its source's policies applied"),
        "{answer}"
    );
    let small =
        json!({"userId": "u", "events": [{"eventName": "small", "metadata": {"ids": ["a"]}}]});
    let response = reqwest::Client::new()
        .post(server.url("/track"))
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.sink.wait_for_events(1).await;
    let stored = server.sink.records("log_user_events");
    assert_eq!(stored.len(), 1, "only the small request");
    assert_eq!(stored[0]["eventName"], "small");
    server.stop().await;
}
