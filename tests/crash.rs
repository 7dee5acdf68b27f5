//! The durability promise against the real binary: concurrent load, `SIGKILL` mid-load,
//! restart on the same queue, and every event that got a 200 must reach the lake.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::fake_firehose::FakeFirehose;
use common::{WAIT, lake_lines, track_body};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary over `dir` and returns it with its ingest address, read from its
/// "listening" log line (so the test needs no fixed port).
async fn spawn(dir: &Path, extra_env: &[(&str, String)]) -> (Child, String) {
    let (child, ingest, _) = spawn_with_admin(dir, extra_env).await;
    (child, ingest)
}

/// [`spawn`], also returning the admin address.
async fn spawn_with_admin(dir: &Path, extra_env: &[(&str, String)]) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .env_clear()
        .envs(extra_env.iter().map(|(k, v)| (*k, v)))
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
    let field = |line: &str, key: &str| {
        line.split(&format!("{key}="))
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
    };
    let (addr, admin) = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let (Some(ingest), Some(admin)) = (field(&line, "ingest"), field(&line, "admin")) {
                return (ingest, admin);
            }
        }
        panic!("the binary exited before listening");
    })
    .await
    .expect("the binary listens in time");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, admin)
}

/// The binary's environment for a Firehose sink at the fake (quick retries, test credentials).
fn firehose_env(fake: &FakeFirehose) -> Vec<(&'static str, String)> {
    vec![
        ("FIREHOSE_EDGE__SINK__KIND", "firehose".to_owned()),
        ("FIREHOSE_EDGE__SINK__ENDPOINT_URL", fake.endpoint_url()),
        ("FIREHOSE_EDGE__SINK__CONNECT_TIMEOUT_MS", "300".to_owned()),
        ("FIREHOSE_EDGE__FLUSHER__RETRY_MAX_MS", "300".to_owned()),
        ("FIREHOSE_EDGE__SHUTDOWN__GRACE_PERIOD", "10".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// Concurrent `/track` load on one server: each sender posts requests of `per_request`
/// uniquely named events until the server goes away, and every acknowledged name is kept.
struct Load {
    acked: Arc<Mutex<HashSet<String>>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `senders` tasks against `addr`. With `allow_refusals`, a non-200 answer ends a
    /// sender (as while the server stops); without, it fails the test.
    fn start(
        addr: &str,
        senders: usize,
        per_request: usize,
        prefix: &str,
        allow_refusals: bool,
    ) -> Load {
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/track");
        let senders = (0..senders)
            .map(|t| {
                let (acked, client, url, prefix) = (
                    acked.clone(),
                    client.clone(),
                    url.clone(),
                    prefix.to_owned(),
                );
                tokio::spawn(async move {
                    for i in 0.. {
                        let names: Vec<String> = (0..per_request)
                            .map(|k| format!("{prefix}-{t}-{i}-{k}"))
                            .collect();
                        let events: Vec<String> = names
                            .iter()
                            .map(|n| format!(r#"{{"eventName":"{n}"}}"#))
                            .collect();
                        let body =
                            format!(r#"{{"userId":"u{t}","events":[{}]}}"#, events.join(","));
                        match client.post(&url).body(body).send().await {
                            Ok(r) if r.status() == 200 => acked.lock().unwrap().extend(names),
                            Ok(_) if allow_refusals => return,
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            Err(_) => return, // the server is gone
                        }
                    }
                })
            })
            .collect();
        Load { acked, senders }
    }

    /// Waits until at least `n` events were acknowledged.
    async fn wait_acked(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.acked.lock().unwrap().len() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("load is acknowledged in time");
    }

    /// Waits for the senders (they end when the server is gone) and returns the acknowledged names.
    async fn finish(self) -> HashSet<String> {
        for s in self.senders {
            s.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Sends SIGTERM to `child`.
async fn terminate(child: &Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
}

/// Waits until every name in `acked` is in the lake of `log_user_events`.
async fn wait_for_lake(lake: &Path, acked: &HashSet<String>) {
    let result = tokio::time::timeout(WAIT, async {
        loop {
            let delivered: HashSet<String> = lake_lines(lake, "log_user_events")
                .iter()
                .map(|l| l["eventName"].as_str().unwrap().to_owned())
                .collect();
            if acked.iter().all(|n| delivered.contains(n)) {
                return;
            }
            // Another process writes the lake: there is nothing to await but its files.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(result.is_ok(), "acknowledged events missing from the lake");
}

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
