//! The queue on a real, size-limited file system: the free-space floor, and a full disk that
//! sled meets for real (`ENOSPC`), recovered from without a restart. The volume is a tmpfs
//! mounted by the test, so the test needs root (CI runs as root); without it the test fails
//! and says so — it never passes without having filled a disk.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fake_firehose::FakeFirehose;
use common::{TestServer, WAIT, event_names, fake_lines, test_config, wait_for_fake_events};

/// A tmpfs of a given size, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a size-limited tmpfs to fill a real disk and needs root \
             (CI runs as root): `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { path, _dir: dir }
    }

    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.path).unwrap();
        s.f_bavail * s.f_frsize
    }

    /// Writes a filler file so that about `leave` bytes stay free (or none at all).
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a; 1 << 20];
        while self.free() > leave {
            let n = (self.free() - leave).min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n.max(4096)]).is_err() {
                break; // full
            }
            let _ = file.flush();
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A `/track` body of `n` events named `<id>-<k>`, each padded to ~400 bytes.
fn body(id: &str, n: usize) -> String {
    let pad = "x".repeat(400);
    let events: Vec<String> = (0..n)
        .map(|k| format!(r#"{{"eventName":"{id}-{k}","metadata":{{"pad":"{pad}"}}}}"#))
        .collect();
    format!(r#"{{"userId":"u","events":[{}]}}"#, events.join(","))
}

/// Every body a 503 may have.
const STABLE_503: [&str; 2] = [
    r#"{"error":"queue_full","message":"the queue is full; retry later"}"#,
    r#"{"error":"unavailable","message":"the queue cannot take requests now; retry later"}"#,
];

/// Sends 10-event requests, 8 at a time, until `stop_after` requests in a row were refused
/// (or 60 s passed). Returns the acknowledged and the refused event names.
async fn load_until_refused(
    server: &TestServer,
    prefix: &str,
    stop_after: usize,
) -> (HashSet<String>, HashSet<String>, HashMap<u16, usize>) {
    let client = reqwest::Client::new();
    let (mut acked, mut refused) = (HashSet::new(), HashSet::new());
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut refused_in_a_row = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while refused_in_a_row < stop_after && tokio::time::Instant::now() < deadline {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..8 {
            i += 1;
            let id = format!("{prefix}{i}");
            let request = client
                .post(server.url("/track"))
                .header("content-type", "application/json")
                .body(body(&id, 10))
                .send();
            batch.spawn(async move {
                let response = request.await.expect("the server answers");
                let status = response.status().as_u16();
                (id, status, response.text().await.unwrap())
            });
        }
        for (id, status, answer) in batch.join_all().await {
            *statuses.entry(status).or_default() += 1;
            let names = (0..10).map(|k| format!("{id}-{k}"));
            if status == 200 {
                acked.extend(names);
                refused_in_a_row = 0;
            } else {
                assert_eq!(status, 503, "a full disk is a 503, nothing else");
                // A stable code and message: the queue's error (its files' paths, the OS's
                // "No space left on device (os error 28)") goes to the log, not to clients.
                assert!(
                    STABLE_503.contains(&answer.as_str()),
                    "503 body {answer:?} is not one of {STABLE_503:?}"
                );
                refused.extend(names);
                refused_in_a_row += 1;
            }
        }
    }
    (acked, refused, statuses)
}

async fn wait_ready(server: &TestServer, want: u16) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let (status, body) = server.admin_get("/readyz").await;
            if status == want {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz never answered {want}"))
}

fn config_on(vol: &Path, dir: &Path, min_free: u64) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config.queue.path = vol.join("queue");
    config.queue.min_free_bytes = min_free;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_space_floor_answers_503_before_the_disk_is_full_and_resumes() {
    let vol = Tmpfs::mount(64);
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeFirehose::start().await;
    let config = config_on(&vol.path, dir.path(), 24 << 20);
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    assert_eq!(
        common::post(&server, "/track", &body("before", 1)).await,
        200
    );
    let filler = vol.fill(16 << 20);
    let why = wait_ready(&server, 503).await;
    assert!(why.contains("free-space floor"), "{why}");
    let (acked, refused, _) = load_until_refused(&server, "low-", 4).await;
    assert!(acked.is_empty(), "below the floor nothing is taken");
    assert!(!refused.is_empty());
    std::fs::remove_file(filler).unwrap();
    wait_ready(&server, 200).await;
    assert_eq!(
        common::post(&server, "/track", &body("after", 1)).await,
        200
    );
    let want: HashSet<String> = ["before-0", "after-0"].map(str::to_owned).into();
    wait_for_fake_events(&fake, &want).await;
    let names: HashSet<String> = event_names(&fake_lines(&fake, None)).into_iter().collect();
    assert!(
        refused.iter().all(|n| !names.contains(n)),
        "refused events were delivered"
    );
    server.stop().await;
}

/// The issue's first scenario: the volume fills during a Firehose outage (no floor, so sled
/// meets `ENOSPC` for real). Before, every request got 503 until a restart, `/readyz` stayed
/// 200, and deliveries that could not be settled were re-sent in a loop (thousands of copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_recovers_by_itself_and_delivers_each_event_at_most_twice() {
    // The service's own log, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("firehose_edge=info")
        .with_test_writer()
        .try_init();
    let vol = Tmpfs::mount(48);
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let config = config_on(&vol.path, dir.path(), 0);
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    let filler = vol.fill(12 << 20);
    let (acked, refused, statuses) = load_until_refused(&server, "e", 16).await;
    eprintln!(
        "while filling: {statuses:?}, {} events acknowledged",
        acked.len()
    );
    assert!(!acked.is_empty() && !refused.is_empty(), "{statuses:?}");
    let why = wait_ready(&server, 503).await;
    assert!(why.contains("storage failing"), "{why}");

    // Firehose returns while the disk is still full: what is delivered cannot be settled,
    // so deliveries pause instead of re-sending the same batch in a loop.
    // (Whether a batch gets out depends on whether sled still serves reads from its cache.)
    fake.set_down(false).await;
    // Observing an absence needs time to pass: 3 s is fifteen back-off caps of the test
    // config, in which the old code sent the same batch hundreds of times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = fake.call_count();
    assert!(
        calls <= 2,
        "{calls} calls while the queue could not record deliveries"
    );

    std::fs::remove_file(filler).unwrap();
    wait_ready(&server, 200).await;
    assert_eq!(
        common::post(&server, "/track", &body("after", 1)).await,
        200
    );
    let mut want = acked.clone();
    want.insert("after-0".to_owned());
    let all_there = tokio::time::timeout(WAIT, async {
        loop {
            // Counted before looking, so a record that arrives in between wakes the wait.
            let seen = fake.accepted_count();
            let names: HashSet<String> =
                event_names(&fake_lines(&fake, None)).into_iter().collect();
            if want.iter().all(|n| names.contains(n)) {
                return;
            }
            fake.wait_for_accepted_records(seen + 1).await;
        }
    })
    .await;
    let names = event_names(&fake_lines(&fake, None));
    if all_there.is_err() {
        let got: HashSet<&String> = names.iter().collect();
        let mut missing: Vec<&String> = want.iter().filter(|n| !got.contains(n)).collect();
        missing.sort();
        panic!(
            "{} of {} acknowledged events never reached Firehose, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(20)]
        );
    }
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for n in &names {
        *copies.entry(n.as_str()).or_default() += 1;
    }
    let worst = copies.values().copied().max().unwrap_or(0);
    eprintln!(
        "acknowledged {}, refused {}, delivered lines {}, distinct {}, most copies {worst}",
        want.len(),
        refused.len(),
        names.len(),
        copies.len()
    );
    assert!(worst <= 2, "an event was delivered {worst} times");
    let leaked: Vec<&String> = refused
        .iter()
        .filter(|n| copies.contains_key(n.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "events of requests answered 503 were delivered: {leaked:?}"
    );
    server.stop().await;
}

/// The issue's 40 MiB volume with the default 1 GiB floor: the service used to start, log one
/// error and answer 503 forever. The real binary refuses it like any invalid key (exit 64,
/// one line naming the key and the volume's size) and starts once the floor fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_larger_than_the_volume_is_refused_at_start() {
    let vol = Tmpfs::mount(40);
    let out = tokio::time::timeout(WAIT, common::binary::command(&vol.path, &[]).output())
        .await
        .expect("the binary exits in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("queue.min_free_bytes: 1073741824 bytes (1.0 GiB)")
            && stderr.contains("(41943040 bytes, 40.0 MiB)"),
        "{stderr}"
    );
    assert!(
        !vol.path.join("queue").exists(),
        "nothing was created on the volume"
    );

    let fits = [(
        "FIREHOSE_EDGE__QUEUE__MIN_FREE_BYTES",
        (4u64 << 20).to_string(),
    )];
    let (child, ingest) = common::binary::spawn(&vol.path, &fits).await;
    let status = reqwest::Client::new()
        .post(format!("http://{ingest}/track"))
        .header("content-type", "application/json")
        .body(body("fits", 1))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    common::binary::terminate(&child).await;
    assert_eq!(common::binary::exit_code(child).await, Some(0));
}
