//! The lake is queryable: DuckDB (PyPI `duckdb`, installed into ./.venv by the test command)
//! reads the file sink's NDJSON with the directory layout as partitions, finds one schema per
//! stream with the right types and `null`s, counts what was acknowledged, and the README's
//! `messageId` dedup query removes the copies an at-least-once delivery can leave.

mod common;

use std::path::Path;

use common::{TestServer, post, test_config};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_lake_one_schema_per_stream_and_dedups_by_message_id() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "duckdb is missing from ./.venv: run ./scripts/test, which installs it with \
         scripts/ensure-sdks.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    // Events with and without the optional fields; every kind of record.
    let mut events = 0;
    for i in 0..20 {
        let body = json!({"userId": format!("u{i}"), "events": [
            {"eventName": "a", "timestampUTC": 1_732_435_200 + i, "metadata": {"n": i}},
            {"eventName": "b"},
        ]});
        assert_eq!(post(&server, "/track", &body.to_string()).await, 200);
        events += 2;
    }
    let alias = json!({"newUserId": "u1", "originalUserId": "anon"}).to_string();
    assert_eq!(post(&server, "/alias", &alias).await, 200);
    let profile = json!({"userId": "u1", "attributes": {"plan": "pro"}}).to_string();
    assert_eq!(post(&server, "/profile", &profile).await, 200);
    let v1 = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "e", "properties": {"x": 1}},
        {"type": "track", "anonymousId": "a1", "event": "f", "timestamp": "2026-11-24T10:00:00Z"},
    ]});
    assert_eq!(post(&server, "/v1/batch", &v1.to_string()).await, 200);
    server.sink.wait_for_events(events + 4).await;
    server.stop().await;
    // An at-least-once copy: Firehose may deliver a record twice.
    let lake = dir.path().join("lake");
    let file = common::lake_files(&lake.join("log_user_events"))[0].clone();
    let copy = file.with_file_name(format!(
        "copy-{}",
        file.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(&file, &copy).unwrap();
    let copied = std::fs::read_to_string(&copy).unwrap().lines().count();

    let out = std::process::Command::new(&python)
        .arg(root.join("tests/py/lake_duckdb.py"))
        .arg(&lake)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (stream, report) in report.as_object().unwrap() {
        assert_eq!(
            report["schemas"].as_array().unwrap().len(),
            1,
            "{stream}: one schema: {report}"
        );
        assert!(
            report["partitions"].as_u64().unwrap() >= 1,
            "{stream}: {report}"
        );
    }
    let track = &report["log_user_events"];
    assert_eq!(track["rows"], events + copied, "{track}");
    assert_eq!(track["distinct_message_ids"], events, "{track}");
    assert_eq!(
        track["deduped_rows"], events,
        "the dedup query removes the copies: {track}"
    );
    assert_eq!(
        track["null_timestampUTC"],
        events / 2,
        "omitted fields are null: {track}"
    );
    assert_eq!(track["types"]["timestampUTC"], "BIGINT", "{track}");
    assert_eq!(track["types"]["eventName"], "VARCHAR", "{track}");
    assert_eq!(track["unreadable_receivedAt"], 0, "{track}");
    assert_eq!(report["link_users"]["rows"], 1);
    assert_eq!(report["user_profiles"]["rows"], 1);
    let segment = &report["segment_tracks"];
    assert_eq!(segment["rows"], 2, "{segment}");
    assert_eq!(segment["unreadable_receivedAt"], 0, "{segment}");
}
