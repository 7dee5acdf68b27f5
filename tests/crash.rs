//! The durability promise against the real binary: concurrent load, `SIGKILL` mid-load,
//! restart on the same queue, and every event that got a 200 must reach the lake.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::{WAIT, lake_lines};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary over `dir` and returns it with its ingest address, read from its
/// "listening" log line (so the test needs no fixed port).
async fn spawn(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .env_clear()
        .env("FIREHOSE_EDGE__SERVER__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__QUEUE__PATH", dir.join("queue"))
        .env("FIREHOSE_EDGE__SINK__DIRECTORY", dir.join("lake"))
        .env("FIREHOSE_EDGE__FLUSHER__LINGER_MS", "5")
        .env("FIREHOSE_EDGE__LOG__LEVEL", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("ingest=").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the binary exited before listening");
    })
    .await
    .expect("the binary listens in time");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path()).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for t in 0..16 {
        let (acked, client, url) = (
            acked.clone(),
            client.clone(),
            format!("http://{addr}/track"),
        );
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let names = [format!("t{t}-r{i}-a"), format!("t{t}-r{i}-b")];
                let body = format!(
                    r#"{{"userId":"u{t}","events":[{{"eventName":"{}"}},{{"eventName":"{}"}}]}}"#,
                    names[0], names[1]
                );
                match client.post(&url).body(body).send().await {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().extend(names),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Kill once a good share of events is acknowledged, with requests still in flight.
    tokio::time::timeout(WAIT, async {
        while acked.lock().unwrap().len() < 2000 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("load is acknowledged in time");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let (mut child, admin_less) = spawn(dir.path()).await;
    drop(admin_less);
    let lake = dir.path().join("lake");
    let missing = tokio::time::timeout(WAIT, async {
        loop {
            let delivered: HashSet<String> = lake_lines(&lake, "log_user_events")
                .iter()
                .map(|l| l["eventName"].as_str().unwrap().to_owned())
                .collect();
            let missing: Vec<&String> = acked.iter().filter(|n| !delivered.contains(*n)).collect();
            if missing.is_empty() {
                return 0;
            }
            // Another process writes the lake: there is nothing to await but its files.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        missing,
        Ok(0),
        "acknowledged events missing from the lake after the restart"
    );
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
