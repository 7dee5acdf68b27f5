//! Running the real binary: start it on loopback ports over a directory, load it, stop it.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use super::fake_firehose::FakeFirehose;
use super::{WAIT, lake_lines};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary over `dir` and returns it with its ingest address, read from its
/// "listening" log line (so the test needs no fixed port).
pub async fn spawn(dir: &Path, extra_env: &[(&str, String)]) -> (Child, String) {
    let (child, ingest, _) = spawn_with_admin(dir, extra_env).await;
    (child, ingest)
}

/// The binary over `dir` (queue and lake under it, loopback ports, quick batching, info
/// logs on a piped stderr), with only `extra_env` of the caller's environment (which overrides
/// those); add arguments
/// and spawn it.
pub fn command(dir: &Path, extra_env: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_firehose-edge"));
    command
        .env_clear()
        .env("FIREHOSE_EDGE__SERVER__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__QUEUE__PATH", dir.join("queue"))
        .env("FIREHOSE_EDGE__SINK__DIRECTORY", dir.join("lake"))
        .env("FIREHOSE_EDGE__FLUSHER__LINGER_MS", "5")
        .env("FIREHOSE_EDGE__LOG__LEVEL", "info")
        // Last, so the caller's settings win over these.
        .envs(extra_env.iter().map(|(k, v)| (*k, v)))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The exit code of `child`, which must exit within [`WAIT`].
pub async fn exit_code(mut child: Child) -> Option<i32> {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the binary exits in time")
        .unwrap()
        .code()
}

/// [`spawn`], also returning the admin address.
pub async fn spawn_with_admin(dir: &Path, extra_env: &[(&str, String)]) -> (Child, String, String) {
    let mut child = command(dir, extra_env).spawn().expect("the binary starts");
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
pub fn firehose_env(fake: &FakeFirehose) -> Vec<(&'static str, String)> {
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
pub struct Load {
    pub acked: Arc<Mutex<HashSet<String>>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `senders` tasks against `addr`. With `allow_refusals`, a non-200 answer ends a
    /// sender (as while the server stops); without, it fails the test.
    pub fn start(
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
    pub async fn wait_acked(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.acked.lock().unwrap().len() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("load is acknowledged in time");
    }

    /// Waits for the senders (they end when the server is gone) and returns the acknowledged names.
    pub async fn finish(self) -> HashSet<String> {
        for s in self.senders {
            s.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Sends SIGTERM to `child`.
pub async fn terminate(child: &Child) {
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
pub async fn wait_for_lake(lake: &Path, acked: &HashSet<String>) {
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
