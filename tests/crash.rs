//! The durability promise against the real binary: concurrent load, `SIGKILL` mid-load,
//! restart on the same queue, and every event that got a 200 must reach the lake.

mod common;

use std::collections::HashSet;
use std::process::Stdio;

use common::binary::{Load, firehose_env, spawn, spawn_with_admin, terminate, wait_for_lake};
use common::fake_firehose::FakeFirehose;
use common::{WAIT, track_body};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path(), &[]).await;
    // Two events a request, so partial requests would show; any refusal is a failure.
    let load = Load::start(&addr, 16, 2, "kill", false);
    // Kill once a good share of events is acknowledged, with requests still in flight.
    load.wait_acked(2000).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let acked = load.finish().await;

    let (mut child, _) = spawn(dir.path(), &[]).await;
    wait_for_lake(&dir.path().join("lake"), &acked).await;
    // A clean stop on SIGTERM.
    let pid = child.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_outage_then_sigkill_then_recovery_delivers_everything() {
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let env = firehose_env(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path(), &env).await;
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for i in 0..300 {
        let name = format!("outage-{i}");
        let status = client
            .post(format!("http://{addr}/track"))
            .body(track_body(&name))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        acked.push(name);
    }
    assert_eq!(fake.accepted_count(), 0, "Firehose is down");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    let (_child, _) = spawn(dir.path(), &env).await;
    fake.set_down(false).await;
    let acked: HashSet<String> = acked.into_iter().collect();
    let delivered = common::wait_for_fake_events(&fake, &acked).await;
    assert_eq!(delivered, 300);
    assert!(fake.limit_violations().is_empty());
}

/// A backlog of single-event requests is merged by the compactor while it builds up; a
/// `SIGKILL` lands in the middle of that (twice), and after the outage every acknowledged event
/// reaches Firehose exactly once: nothing lost or doubled by a merge cut short. (Order is
/// the queue's, checked in its unit tests; delivery with fan-out and retries may reorder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_compacting_an_outage_backlog_loses_and_doubles_nothing() {
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let env = firehose_env(&fake);
    let dir = tempfile::tempdir().unwrap();
    let mut acked = HashSet::new();
    for round in 0..2 {
        let (mut child, addr, admin) = spawn_with_admin(dir.path(), &env).await;
        let load = Load::start(&addr, 4, 1, &format!("merge{round}"), false);
        load.wait_acked(2500).await;
        // The compactor is at work (another process: its counter is the signal there is).
        tokio::time::timeout(WAIT, async {
            while merged_entries(&admin).await == 0.0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the compactor merges the backlog");
        child.start_kill().unwrap(); // SIGKILL, with requests and merges in flight
        child.wait().await.unwrap();
        acked.extend(load.finish().await);
    }
    assert_eq!(fake.accepted_count(), 0, "Firehose was down");
    let (_child, _) = spawn(dir.path(), &env).await;
    fake.set_down(false).await;
    common::wait_for_fake_events(&fake, &acked).await;
    let names = common::event_names(&common::fake_lines(&fake, None));
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(names.len(), distinct.len(), "no event delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    // Firehose-like sink that is down, so the backlog is still queued at the stop.
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let env = firehose_env(&fake);
    let (mut child, addr) = spawn(dir.path(), &env).await;
    // A 503 while stopping is fine: only 200s are promises.
    let load = Load::start(&addr, 8, 1, "term", true);
    load.wait_acked(500).await;
    let stopped_at = std::time::Instant::now();
    terminate(&child).await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "SIGTERM under load exits 0, got {status}");
    assert!(
        stopped_at.elapsed() < std::time::Duration::from_secs(10),
        "within the grace period"
    );
    let acked = load.finish().await;

    // Restart with Firehose back: every acknowledged event arrives.
    fake.set_down(false).await;
    let (_child, _) = spawn(dir.path(), &env).await;
    common::wait_for_fake_events(&fake, &acked).await;
}

#[tokio::test]
async fn healthcheck_subcommand_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("FIREHOSE_EDGE__LOG__FORMAT", "json".to_owned())];
    // JSON logs: every line is an object; one carries the effective configuration.
    let mut child = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("FIREHOSE_EDGE__SERVER__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__QUEUE__PATH", dir.path().join("queue"))
        .env("FIREHOSE_EDGE__SINK__DIRECTORY", dir.path().join("lake"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut saw_config, mut admin) = (false, None);
    while admin.is_none() {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("log line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        if v["fields"]["message"] == "effective configuration" {
            let config: serde_json::Value =
                serde_json::from_str(v["fields"]["config"].as_str().unwrap()).unwrap();
            assert_eq!(config["queue"]["durability"], "fsync");
            saw_config = true;
        }
        if let Some(a) = v["fields"]["admin"].as_str() {
            admin = Some(a.to_owned());
        }
    }
    assert!(saw_config);
    let admin = admin.unwrap();
    let check = |admin: String| async move {
        Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
            .arg("healthcheck")
            .env_clear()
            .env("FIREHOSE_EDGE__ADMIN__LISTEN", admin)
            .status()
            .await
            .unwrap()
    };
    assert!(
        check(admin.clone()).await.success(),
        "healthy while running"
    );
    terminate(&child).await;
    assert!(
        tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    assert_eq!(check(admin).await.code(), Some(1), "unhealthy once stopped");
}

/// `firehose_edge_queue_merged_entries_total` as the admin listener at `admin` reports it.
async fn merged_entries(admin: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("firehose_edge_queue_merged_entries_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
