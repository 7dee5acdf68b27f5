//! `firehose-edge drain`: the way a scaled-in replica's queue is emptied. Run as the real
//! binary over a queue the service left behind, against the fake Firehose.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::binary::{Load, command, exit_code, firehose_env, spawn, terminate};
use common::fake_firehose::FakeFirehose;
use common::{WAIT, event_names, fake_lines};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The binary with `args` over `dir/queue`, delivering to `fake`; its stderr lines arrive on
/// the receiver.
fn start(
    dir: &Path,
    fake: &FakeFirehose,
    args: &[&str],
) -> (Child, mpsc::UnboundedReceiver<String>) {
    let mut child = command(dir, &firehose_env(fake))
        .args(args)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `text`; returns it.
async fn wait_line(rx: &mut mpsc::UnboundedReceiver<String>, text: &str) -> String {
    tokio::time::timeout(WAIT, async {
        while let Some(line) = rx.recv().await {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the binary exited without saying {text:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {text:?} in time"))
}

/// Leaves a queue behind: the service takes events while Firehose is down, then stops.
async fn orphaned_queue(dir: &Path, fake: &FakeFirehose) -> HashSet<String> {
    fake.set_down(true).await;
    let (server, addr) = spawn(dir, &firehose_env(fake)).await;
    let load = Load::start(&addr, 2, 20, "orphan", false);
    load.wait_acked(2_000).await;
    terminate(&server).await;
    let acked = load.finish().await;
    assert_eq!(exit_code(server).await, Some(0));
    acked
}

async fn queue_verify(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .args(["queue", "verify"])
        .env_clear()
        .env("FIREHOSE_EDGE__QUEUE__PATH", dir.join("queue"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The scale-in case: the replica is gone, its volume holds events; `drain` waits out a
/// Firehose outage, delivers every acknowledged event, and exits 0 with the queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_an_orphaned_queue_through_an_outage_and_exits_0() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let acked = orphaned_queue(dir.path(), &fake).await;
    assert!(
        queue_verify(dir.path())
            .await
            .contains("log_user_events: queued=")
    );

    let (drain, mut log) = start(dir.path(), &fake, &["drain"]);
    wait_line(&mut log, "draining the queue").await;
    // Firehose is still down: the drain keeps trying rather than giving up.
    let failing = wait_line(&mut log, "sink call failed; will retry").await;
    assert!(failing.contains("log_user_events"), "{failing}");
    fake.set_down(false).await;
    let summary = wait_line(&mut log, "drained:").await;
    assert_eq!(exit_code(drain).await, Some(0), "{summary}");
    assert!(summary.contains(", 0 remain"), "{summary}");

    let delivered: HashSet<String> = event_names(&fake_lines(&fake, Some("log_user_events")))
        .into_iter()
        .collect();
    let missing = acked.difference(&delivered).count();
    assert_eq!(missing, 0, "of {} acknowledged events", acked.len());
    let verify = queue_verify(dir.path()).await;
    assert!(verify.contains("log_user_events: queued=0"), "{verify}");

    // Draining an empty queue is immediate and still succeeds.
    let (again, mut log) = start(dir.path(), &fake, &["drain"]);
    let summary = wait_line(&mut log, "drained:").await;
    assert!(
        summary.contains("0 events left the queue, 0 remain"),
        "{summary}"
    );
    assert_eq!(exit_code(again).await, Some(0));
}

/// Never two processes on one queue: a drain started against a running replica's volume is
/// refused at once, and the replica keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_refused_while_the_replica_still_runs() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn(dir.path(), &firehose_env(&fake)).await;
    let load = Load::start(&addr, 1, 5, "live", false);
    load.wait_acked(100).await;
    let (drain, mut log) = start(dir.path(), &fake, &["--config", "/dev/null", "drain"]);
    let refused = wait_line(&mut log, "in use").await;
    assert!(
        refused.contains(&format!("pid {}", server.id().unwrap())),
        "{refused}"
    );
    assert_eq!(exit_code(drain).await, Some(1));
    let before = load.acked.lock().unwrap().len();
    load.wait_acked(before + 100).await;
    terminate(&server).await;
    load.finish().await;
    assert_eq!(exit_code(server).await, Some(0));
}

/// SIGTERM ends a drain that cannot finish (Firehose down): exit 1, and what is left stays
/// queued for the next drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_drain_keeps_what_is_left() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let acked = orphaned_queue(dir.path(), &fake).await;
    let (drain, mut log) = start(dir.path(), &fake, &["drain", "--config", "/dev/null"]);
    wait_line(&mut log, "draining the queue").await;
    wait_line(&mut log, "sink call failed; will retry").await;
    terminate(&drain).await;
    let summary = wait_line(&mut log, "drained:").await;
    assert_eq!(exit_code(drain).await, Some(1), "{summary}");
    assert!(
        summary.contains(&format!("{} remain", acked.len())),
        "{summary}"
    );
    let verify = queue_verify(dir.path()).await;
    assert!(
        verify.contains(&format!("log_user_events: queued={}", acked.len())),
        "{verify}"
    );
}

/// A mistyped path or an unmounted volume holds no queue: `drain` says so and fails, rather
/// than make an empty queue there and report it drained (after which an operator would delete
/// the real volume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_a_path_that_holds_no_queue() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (drain, mut log) = start(dir.path(), &fake, &["drain"]);
    let refused = wait_line(&mut log, "no queue at").await;
    assert!(
        refused.contains(&dir.path().join("queue").display().to_string()),
        "{refused}"
    );
    assert_eq!(exit_code(drain).await, Some(1));
    assert!(!dir.path().join("queue").exists(), "nothing created");
}
