//! `openapi.yaml` is the contract, checked against the running server: schemathesis (PyPI,
//! installed into ./.venv by the test command) fuzzes every operation with valid and invalid
//! requests under all of its default checks — no 5xx, only documented status codes, headers
//! and bodies, nothing the schema forbids accepted and everything it allows accepted — and
//! every 2xx request's records are then found in the lake. The
//! document and the validator cannot drift apart: each operation's examples must be accepted
//! and its `x-counter-examples` refused with 400.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestServer, WAIT, lake_lines, test_config};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_server_true_to_its_openapi_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv/bin");
    assert!(
        venv.join("schemathesis").exists(),
        "schemathesis is missing from ./.venv: run ./scripts/test, which installs it with \
         scripts/ensure-sdks.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let cassette = dir.path().join("cassette.yaml");
    // Every check schemathesis runs by default (no `--checks`), `positive_data_acceptance`
    // among them: each request the document allows must be accepted, so the document says
    // exactly what the server takes.
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(venv.join("schemathesis"))
            .arg("run")
            .arg(root.join("openapi.yaml"))
            .args(["--url", &server.ingest])
            .args(["--max-examples", "25", "--seed", "1", "--no-color"])
            .args(["--report", "vcr", "--report-vcr-path"])
            .arg(&cassette)
            .env("SCHEMATHESIS_HOOKS", "")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finishes")
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    eprintln!("schemathesis: {:.0?}", started.elapsed());

    let checked = tokio::process::Command::new(venv.join("python"))
        .arg(root.join("tests/py/openapi_check.py"))
        .arg(root.join("openapi.yaml"))
        .arg(&server.ingest)
        .arg(&cassette)
        .output()
        .await
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let found: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(
        found["drift"],
        Value::Array(vec![]),
        "document and validator drifted"
    );
    let counted = |key: &str| found[key].as_u64().unwrap() as usize;
    let want = [
        counted("classic_records"),
        counted("v1_records"),
        counted("posthog_records"),
        counted("snowplow_records"),
    ];
    assert!(
        want.iter().all(|&n| n > 0),
        "every protocol stored records: {found}"
    );
    let lake = dir.path().join("lake");
    let count =
        |streams: &[&str]| -> usize { streams.iter().map(|s| lake_lines(&lake, s).len()).sum() };
    let streams: [&[&str]; 4] = [
        &["log_user_events", "link_users", "user_profiles"],
        &[
            "segment_tracks",
            "segment_identifies",
            "segment_pages",
            "segment_screens",
            "segment_groups",
            "segment_aliases",
        ],
        &["posthog_events"],
        &["snowplow_events"],
    ];
    let landed = || streams.map(&count);
    tokio::time::timeout(WAIT, async {
        while landed().iter().zip(&want).any(|(got, want)| got < want) {
            // Another task writes the lake: nothing to await but its files.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the lake holds {:?} of {want:?} classic, /v1, PostHog and Snowplow records",
            landed()
        )
    });
    server.stop().await;
    assert_eq!(landed(), want, "classic, /v1, PostHog and Snowplow records");
}
