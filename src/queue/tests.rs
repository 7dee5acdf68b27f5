//! Unit tests of the queue's public behaviour.

use super::entry::HEADER_LEN;
use super::*;
use std::path::Path;
use std::time::Duration;

/// A generous bound for tests awaiting queue signals.
const TEST_WAIT: Duration = Duration::from_secs(10);

pub(super) fn config(dir: &Path, durability: Durability) -> QueueConfig {
    QueueConfig {
        path: dir.join("q"),
        max_bytes: 1 << 30,
        durability,
        flush_interval_ms: 500,
        cache_capacity: 8 << 20,
        ..QueueConfig::default()
    }
}

pub(super) fn streams() -> Vec<String> {
    vec!["a".to_owned(), "b".to_owned()]
}

pub(super) fn lines(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|e| {
            e.iter_lines()
                .map(|l| String::from_utf8(l.to_vec()).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn append_is_one_entry_read_from_the_head_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.append("a", b"1\n2\n3\n", 3).await.unwrap();
    q.append("b", b"x\n", 1).await.unwrap();
    q.append("a", b"4\n", 1).await.unwrap();
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(head.len(), 2, "one entry per append");
    assert_eq!(head[0].count, 3);
    assert!(head[0].key < head[1].key);
    assert_eq!(lines(&head), ["1\n", "2\n", "3\n", "4\n"]);
    assert_eq!(q.queued_events("a"), 4);
    assert_eq!(q.queued_events("b"), 1);
    let skip: HashSet<u64> = [head[0].key].into();
    let rest = q.read_head("a", &skip, 10, usize::MAX).unwrap();
    assert_eq!(lines(&rest), ["4\n"]);
    assert!(matches!(
        q.append("zzz", b"1\n", 1).await,
        Err(QueueError::UnknownStream(_))
    ));
}

#[tokio::test]
async fn settle_removes_exactly_the_accepted_lines() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.append("a", b"1\n2\n3\n", 3).await.unwrap();
    q.append("a", b"4\n", 1).await.unwrap();
    let before = q.queued_bytes();
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    // Lines 1 and 3 accepted, 2 failed; the second entry fully accepted.
    q.settle("a", &head[0], &[b"2\n"]).unwrap();
    q.settle("a", &head[1], &[]).unwrap();
    let left = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(lines(&left), ["2\n"]);
    assert_eq!(
        left[0].key, head[0].key,
        "the remainder keeps its place at the head"
    );
    assert_eq!(left[0].enqueued_ms, head[0].enqueued_ms);
    assert_eq!(q.queued_events("a"), 1);
    assert_eq!(q.queued_bytes(), before - 4 - 2 - HEADER_LEN as u64);
    // Settling with nothing delivered changes nothing.
    q.settle("a", &left[0], &[b"2\n"]).unwrap();
    assert_eq!(q.queued_events("a"), 1);
    q.settle("a", &left[0], &[]).unwrap();
    assert!(
        q.read_head("a", &HashSet::new(), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.queued_bytes(), 0);
    assert_eq!(q.queued_events("a"), 0);
}

#[tokio::test]
async fn restart_keeps_order_counts_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let (last_key, bytes_before);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        for i in 0..20u32 {
            q.append("a", format!("{i}\n").as_bytes(), 1).await.unwrap();
        }
        let head = q.read_head("a", &HashSet::new(), 5, usize::MAX).unwrap();
        for e in &head {
            q.settle("a", e, &[]).unwrap();
        }
        last_key = q
            .read_head("a", &HashSet::new(), 100, usize::MAX)
            .unwrap()
            .last()
            .unwrap()
            .key;
        bytes_before = q.queued_bytes();
        q.close().unwrap();
    }
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_eq!(q.queued_events("a"), 15);
    assert_eq!(
        q.queued_bytes(),
        bytes_before,
        "the budget is recounted at start"
    );
    q.append("a", b"new\n", 1).await.unwrap();
    let all = q.read_head("a", &HashSet::new(), 100, usize::MAX).unwrap();
    let got = lines(&all);
    let want: Vec<String> = (5..20)
        .map(|i| format!("{i}\n"))
        .chain(["new\n".to_owned()])
        .collect();
    assert_eq!(got, want);
    assert!(
        all.last().unwrap().key > last_key,
        "sequence resumes after the highest key"
    );
}

#[tokio::test]
async fn counts_survive_a_clean_close_and_a_crash_without_a_walk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Interval);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.append("a", b"1\n2\n", 2).await.unwrap();
        q.append("b", b"3\n", 1).await.unwrap();
        let head = q.read_head("a", &HashSet::new(), 1, usize::MAX).unwrap();
        q.dead_letter("a", &head[0], &[b"2\n"], &[]).unwrap();
        q.append("a", b"4\n", 1).await.unwrap();
        q.close().unwrap();
    }
    let (events, bytes);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        reads_only_the_ends(&q);
        assert_eq!(
            (
                q.queued_events("a"),
                q.queued_events("b"),
                q.dead_letter_events("a")
            ),
            (1, 1, 1)
        );
        q.append("a", b"5\n6\n", 2).await.unwrap();
        (events, bytes) = (q.queued_events("a"), q.queued_bytes());
        q.crash();
    }
    let q = Queue::open(&cfg, &streams()).unwrap();
    reads_only_the_ends(&q);
    assert_eq!(q.queued_events("a"), events);
    assert_eq!(q.queued_events("a"), 3);
    assert_eq!(q.queued_bytes(), bytes);
    assert_eq!(q.dead_letter_events("a"), 1);
    q.append("a", b"7\n", 1).await.unwrap();
    let keys: Vec<u64> = q
        .read_head("a", &HashSet::new(), 10, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.key)
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
}

#[tokio::test]
async fn budget_refuses_without_evicting() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Durability::Fsync);
    cfg.max_bytes = 2 * (HEADER_LEN as u64 + 10) + 5;
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.append("a", b"123456789\n", 1).await.unwrap();
    q.append("b", b"123456789\n", 1).await.unwrap();
    let err = q.append("a", b"1234567\n", 1).await.unwrap_err();
    assert!(matches!(err, QueueError::Full { .. }), "{err}");
    let err = q.append("a", b"x\n", 1).await.unwrap_err();
    assert!(
        matches!(err, QueueError::Full { .. }),
        "fits, but the queue is full: {err}"
    );
    assert_eq!(q.queued_events("a"), 1);
    assert_eq!(q.queued_events("b"), 1);
    assert!(q.is_full());
    // Full stays full, even for what would fit, until the queue drains below 90%.
    let head = q.read_head("b", &HashSet::new(), 10, usize::MAX).unwrap();
    q.settle("b", &head[0], &[]).unwrap();
    assert!(!q.is_full(), "half the budget is free");
    q.append("a", b"x\n", 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.append("a", format!("{i}\n").as_bytes(), 1).await })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(TEST_WAIT, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let flushes = q.flush_count();
    assert_eq!(q.queued_events("a"), 1000);
    let entries = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    assert!(
        entries.len() < 500,
        "requests written together share entries: {}",
        entries.len()
    );
    let mut got: Vec<String> = lines(&entries);
    got.sort();
    let mut want: Vec<String> = (0..1000).map(|i| format!("{i}\n")).collect();
    want.sort();
    assert_eq!(got, want, "every request whole, once");
    assert!(flushes >= 1);
    assert!(
        flushes < 500,
        "1000 concurrent appends took {flushes} flushes: not shared"
    );
}

#[tokio::test]
async fn every_fsync_append_waits_for_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    for i in 1..=3u64 {
        q.append("a", b"x\n", 1).await.unwrap();
        assert_eq!(
            q.flush_count(),
            i,
            "a lone append is answered only after its own flush"
        );
    }
    let interval = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(interval.path(), Durability::Interval), &streams()).unwrap();
    q.append("a", b"x\n", 1).await.unwrap();
    assert_eq!(q.flush_count(), 0);
    assert_eq!(q.queued_events("a"), 1);
}

#[tokio::test]
async fn dead_letters_keep_the_refused_lines() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.append("a", b"good\nbad\n", 2).await.unwrap();
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    q.dead_letter("a", &head[0], &[b"bad\n"], &[b"good\n"])
        .unwrap();
    assert_eq!(lines(&q.dead_letters("a").unwrap()), ["bad\n"]);
    assert_eq!(
        lines(&q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap()),
        ["good\n"]
    );
    assert_eq!(q.queued_events("a"), 1);
}

#[test]
fn a_blob_that_vanishes_before_its_sync_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    std::fs::write(blobs.join("1"), b"blob").unwrap();
    // Listed but gone when opened, as when sled collects a blob mid-sync.
    std::os::unix::fs::symlink(blobs.join("collected"), blobs.join("2")).unwrap();
    let mut synced = HashSet::new();
    commit::sync_new_blobs(dir.path(), &mut synced).unwrap();
    assert!(synced.contains(std::ffi::OsStr::new("1")));
    assert!(!synced.contains(std::ffi::OsStr::new("2")));
}

#[tokio::test]
async fn closed_queue_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.close().unwrap();
    assert!(matches!(
        q.append("a", b"x\n", 1).await,
        Err(QueueError::Closed)
    ));
}

/// Free space as the test sets it.
struct FakeFree(Arc<AtomicU64>);

impl FreeSpace for FakeFree {
    fn free_bytes(&self, _: &Path) -> std::io::Result<u64> {
        Ok(self.0.load(Ordering::Acquire))
    }
    fn usable_bytes(&self, _: &Path) -> std::io::Result<u64> {
        Ok(u64::MAX)
    }
}

fn with_floor(dir: &Path, floor: u64, free: u64) -> (Queue, Arc<AtomicU64>) {
    let reading = Arc::new(AtomicU64::new(free));
    let mut cfg = config(dir, Durability::Fsync);
    cfg.min_free_bytes = floor;
    let q = Queue::open_with(&cfg, &streams(), Box::new(FakeFree(reading.clone()))).unwrap();
    (q, reading)
}

#[tokio::test]
async fn the_free_space_floor_refuses_and_resumes_with_hysteresis() {
    let dir = tempfile::tempdir().unwrap();
    let (q, free) = with_floor(dir.path(), 1000, 5000);
    q.append("a", b"1\n", 1).await.unwrap();
    free.store(900, Ordering::Release);
    q.check_health_now();
    let err = q.append("a", b"2\n", 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::LowDisk {
                free: 900,
                min: 1000
            }
        ),
        "{err}"
    );
    assert_eq!(
        q.unready_reason(),
        Some("queue disk below its free-space floor")
    );
    free.store(1050, Ordering::Release);
    q.check_health_now();
    assert!(
        q.append("a", b"3\n", 1).await.is_err(),
        "needs 10 % above the floor"
    );
    free.store(1100, Ordering::Release);
    q.check_health_now();
    assert_eq!(q.unready_reason(), None);
    q.append("a", b"4\n", 1).await.unwrap();
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(
        lines(&head),
        ["1\n", "4\n"],
        "refused requests left nothing"
    );
}

#[tokio::test]
async fn failed_storage_answers_errors_leaves_nothing_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.append("a", b"kept\n", 1).await.unwrap();
    // The value is written but its flush fails: the request is answered with an error and
    // what it wrote is taken back.
    q.fail_syncs(true);
    assert!(q.append("a", b"refused-1\n", 1).await.is_err());
    assert_eq!(q.unready_reason(), Some("queue storage failing"));
    assert!(matches!(
        q.append("a", b"refused-2\n", 1).await,
        Err(QueueError::Failing)
    ));
    q.check_health_now();
    assert_eq!(
        q.unready_reason(),
        Some("queue storage failing"),
        "probe still fails"
    );
    q.fail_syncs(false);
    q.check_health_now();
    assert_eq!(q.unready_reason(), None, "recovered without a restart");
    q.append("a", b"after\n", 1).await.unwrap();
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(lines(&head), ["kept\n", "after\n"]);
    assert_eq!(q.queued_events("a"), 2);
    let want: u64 = head.iter().map(|e| e.budget_bytes()).sum();
    assert_eq!(q.queued_bytes(), want, "the budget matches what is stored");
}

#[tokio::test]
async fn a_request_for_several_streams_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        let part = |stream: &str, lines: &[u8], count| Part {
            stream: stream.to_owned(),
            lines: lines.to_vec(),
            count,
        };
        let parts = vec![part("a", b"a1\na2\n", 2), part("b", b"b1\n", 1)];
        q.append_parts(parts).await.unwrap();
        q.fail_syncs(true);
        let parts = vec![part("a", b"x\n", 1), part("b", b"y\n", 1)];
        assert!(q.append_parts(parts).await.is_err());
        q.crash();
    }
    let q = Queue::open(&cfg, &streams()).unwrap();
    let a = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    let b = q.read_head("b", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(
        (lines(&a), lines(&b)),
        (
            vec!["a1\n".to_owned(), "a2\n".to_owned()],
            vec!["b1\n".to_owned()]
        )
    );
}

#[tokio::test]
async fn a_second_open_of_one_directory_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.append("a", b"1\n", 1).await.unwrap();
    let err = Queue::open(&cfg, &streams()).err().expect("refused");
    assert!(matches!(err, QueueError::InUse { .. }), "{err}");
    assert_nothing_moved_aside(dir.path());
    q.append("a", b"2\n", 1).await.unwrap();
    assert_eq!(q.queued_events("a"), 2);
}

/// Flips a bit in the last byte of entry `k` (value `v`) of `tree`, as bit rot would.
fn damage(tree: &sled::Tree, k: &[u8], v: &[u8]) {
    let mut bad = v.to_vec();
    *bad.last_mut().unwrap() ^= 0x20;
    tree.insert(k, bad).unwrap();
}

/// No `<queue>.damaged-*` directory next to the queue: nothing was moved aside.
fn assert_nothing_moved_aside(dir: &Path) {
    let moved = std::fs::read_dir(dir)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().contains("damaged"));
    assert!(!moved, "nothing was moved aside");
}

/// Opens the closed queue's sled database directly (as damage would) and runs `f` on it.
fn tamper(cfg: &QueueConfig, f: impl FnOnce(&sled::Db)) {
    let db = sled::Config::new()
        .path(&cfg.path)
        .segment_size(SEGMENT_SIZE)
        .open()
        .unwrap();
    f(&db);
    db.flush().unwrap();
}

/// Copies a closed queue's sled files (not its manifest) to `to`, or back.
fn copy_sled(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let name = item.file_name();
        if name == manifest::MANIFEST_FILE || name == lock::LOCK_FILE {
            continue;
        }
        if item.file_type().unwrap().is_dir() {
            copy_sled(&item.path(), &to.join(&name));
        } else {
            std::fs::copy(item.path(), to.join(&name)).unwrap();
        }
    }
}

/// A store that comes back older than what was acknowledged (a disk that lied about a
/// flush, a restored snapshot): at the next start, without reading a single entry, the
/// depth and the budget are what the store holds, and exactly the acknowledged events it
/// no longer holds are reported, per stream — entries delivered since are re-deliveries,
/// never losses.
#[tokio::test]
async fn a_store_that_lost_acknowledged_events_is_reported_exactly_without_a_walk() {
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.append("a", b"1\n2\n3\n", 3).await.unwrap();
        q.append("b", b"4\n", 1).await.unwrap();
        q.close().unwrap();
    }
    copy_sled(dir.path(), old.path());
    let (depth_then, bytes_then);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        (depth_then, bytes_then) = (q.queued_events("a"), q.queued_bytes());
        // Since the copy: `b`'s entry delivered, four more events of `a` acknowledged.
        let head = q.read_head("b", &HashSet::new(), 10, usize::MAX).unwrap();
        q.settle("b", &head[0], &[]).unwrap();
        q.append("a", b"5\n6\n", 2).await.unwrap();
        q.append("a", b"7\n8\n", 2).await.unwrap();
        q.check_health_now(); // the manifest round
        q.crash();
    }
    copy_sled(old.path(), dir.path());
    let q = Queue::open(&cfg, &streams()).unwrap();
    reads_only_the_ends(&q);
    assert_eq!(
        (q.queued_events("a"), q.queued_events("b")),
        (depth_then, 1)
    );
    assert_eq!(q.queued_bytes(), bytes_then);
    let counts = q.manifest_counts();
    assert_eq!((counts["a"].lost, counts["b"].lost), (4, 0), "{counts:?}");
    q.close().unwrap();
    drop(q);
    let report = Queue::verify(&cfg, &streams()).unwrap();
    assert!(!report.damaged(), "reported once, at the open: {report:?}");
}

/// An entry removed behind the queue's back (its summary left as it was): `queue verify`
/// finds the disagreement, and the running queue reports the exact shortfall when the
/// stream drains, after which its counts follow the store.
#[tokio::test]
async fn an_entry_removed_behind_the_queues_back_is_found_by_verify_and_at_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.append("a", b"1\n2\n3\n", 3).await.unwrap();
        q.append("a", b"4\n", 1).await.unwrap();
        q.close().unwrap();
    }
    tamper(&cfg, |db| {
        let tree = db.open_tree("q/a").unwrap();
        let (k, _) = tree.first().unwrap().unwrap();
        tree.remove(k).unwrap();
    });
    let report = Queue::verify(&cfg, &streams()).unwrap();
    let a = &report.streams[0];
    assert_eq!(
        (
            a.stream.as_str(),
            a.expected,
            a.queued,
            a.missing,
            a.summary
        ),
        ("a", Some(4), 1, 3, "disagrees")
    );
    assert!(report.damaged());
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_eq!(
        q.queued_events("a"),
        4,
        "the record is trusted at the start"
    );
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(lines(&head), ["4\n"]);
    q.settle("a", &head[0], &[]).unwrap();
    assert!(
        q.read_head("a", &HashSet::new(), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.queued_events("a"), 0, "the counts follow the store");
    assert_eq!(q.queued_bytes(), 0);
    assert_eq!(q.manifest_counts()["a"].lost, 3);
    q.close().unwrap();
    drop(q);
    let report = Queue::verify(&cfg, &streams()).unwrap();
    assert!(!report.damaged(), "reported once: {report:?}");
    assert_eq!(report.streams[0].expected, Some(0));
}

#[tokio::test]
async fn a_damaged_entry_is_kept_aside_reported_and_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.append("a", b"good\n", 1).await.unwrap();
        q.append("a", b"soon bad\n", 1).await.unwrap();
        q.close().unwrap();
    }
    tamper(&cfg, |db| {
        let tree = db.open_tree("q/a").unwrap();
        let (k, v) = tree.range(..RECORD_KEY).next_back().unwrap().unwrap();
        damage(&tree, &k, &v);
    });
    let report = Queue::verify(&cfg, &streams()).unwrap();
    assert_eq!(report.streams[0].damaged_entries, 1);
    assert_eq!(report.streams[0].missing, 1);
    let q = Queue::open(&cfg, &streams()).unwrap();
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(lines(&head), ["good\n"]);
    q.close().unwrap();
    drop(q);
    let report = Queue::verify(&cfg, &streams()).unwrap();
    assert_eq!(report.streams[0].quarantined, 1, "kept, not deleted");
    assert!(!report.damaged(), "{report:?}");
}

#[tokio::test]
async fn replayed_dead_letters_keep_the_budget_right_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.append("a", b"bad\n", 1).await.unwrap();
        let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
        q.dead_letter("a", &head[0], &[b"bad\n"], &[]).unwrap();
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(q.replay_dead_letters("a").unwrap(), 1);
        let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
        q.settle("a", &head[0], &[]).unwrap();
        assert_eq!(q.queued_bytes(), 0);
        q.close().unwrap();
    }
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_eq!(q.queued_bytes(), 0, "the budget gauge is back to 0");
    q.append("a", b"x\n", 1).await.unwrap();
}

fn batch(ids: &[&str]) -> Vec<BatchLine> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| BatchLine {
            stream: if i % 2 == 0 { "a" } else { "b" }.to_owned(),
            line: format!("{id}\n").into_bytes(),
            message_id: Some((*id).to_owned()),
        })
        .collect()
}

#[tokio::test]
async fn a_retried_batch_is_stored_once_also_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        let first = q
            .append_batch("web", batch(&["m1", "m2", "m3"]))
            .await
            .unwrap();
        assert_eq!(
            first,
            BatchAppended {
                stored: 3,
                duplicates: 0,
                per_stream: vec![("a".to_owned(), 2), ("b".to_owned(), 1)],
            }
        );
        let again = q
            .append_batch("web", batch(&["m1", "m2", "m3"]))
            .await
            .unwrap();
        assert_eq!(
            again,
            BatchAppended {
                stored: 0,
                duplicates: 3,
                per_stream: vec![],
            }
        );
        let other_source = q.append_batch("app", batch(&["m1"])).await.unwrap();
        assert_eq!(other_source.stored, 1, "windows are per source");
        q.crash();
    }
    let q = Queue::open(&cfg, &streams()).unwrap();
    let mixed = q.append_batch("web", batch(&["m3", "m4"])).await.unwrap();
    assert_eq!(
        mixed,
        BatchAppended {
            stored: 1,
            duplicates: 1,
            per_stream: vec![("b".to_owned(), 1)],
        }
    );
    let a = lines(&q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap());
    let b = lines(&q.read_head("b", &HashSet::new(), 10, usize::MAX).unwrap());
    assert_eq!(a, ["m1\n", "m3\n", "m1\n"]);
    assert_eq!(b, ["m2\n", "m4\n"]);
}

#[tokio::test]
async fn a_failed_batch_leaves_its_ids_free_for_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.fail_syncs(true);
    assert!(q.append_batch("web", batch(&["m1", "m2"])).await.is_err());
    q.fail_syncs(false);
    q.check_health_now();
    let retry = q.append_batch("web", batch(&["m1", "m2"])).await.unwrap();
    assert_eq!(
        retry,
        BatchAppended {
            stored: 2,
            duplicates: 0,
            per_stream: vec![("a".to_owned(), 1), ("b".to_owned(), 1)],
        }
    );
    assert_eq!(q.queued_events("a") + q.queued_events("b"), 2);
}

/// A committer that panics leaves no appender waiting and the queue not ready: the round's
/// appenders and every later one are refused, `/readyz` says why, the owner is told to
/// stop, and a later start finds what was acknowledged before, counted from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committer_panic_refuses_every_append_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.append("a", b"before\n", 1).await.unwrap();
    assert_eq!(q.unready_reason(), None);
    q.panic_next_commit();
    let refused = tokio::time::timeout(TEST_WAIT, q.append("a", b"during\n", 1))
        .await
        .expect("the appender is answered, not left waiting");
    assert!(refused.is_err(), "{refused:?}");
    let died = tokio::time::timeout(TEST_WAIT, q.failed())
        .await
        .expect("the owner is told");
    assert_eq!(died, "committer");
    assert_eq!(q.unready_reason(), Some("queue committer died"));
    let later = tokio::time::timeout(TEST_WAIT, q.append("b", b"after\n", 1))
        .await
        .expect("a later appender is answered at once");
    assert!(later.is_err(), "{later:?}");
    assert_eq!(
        q.queued_bytes(),
        (HEADER_LEN + 7) as u64,
        "refused appends hold no budget"
    );
    q.close().unwrap();
    drop(q);
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_eq!((q.queued_events("a"), q.queued_events("b")), (1, 0));
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(lines(&head), ["before\n"]);
}

/// A health round that panics (it reads free space, rewrites the manifest and recovers
/// storage) is reported the same way rather than stopping those silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_round_panic_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&config(dir.path(), Durability::Fsync), &streams()).unwrap();
    q.inner.health.panic_next.store(true, Ordering::Release);
    let died = tokio::time::timeout(TEST_WAIT, q.failed())
        .await
        .expect("the owner is told");
    assert_eq!(died, "health");
    assert_eq!(q.unready_reason(), Some("queue health round died"));
    assert!(matches!(
        q.append("a", b"x\n", 1).await,
        Err(QueueError::Dead("health"))
    ));
}

/// A start read at most the last entry of each tree and the one its record names.
pub(super) fn reads_only_the_ends(q: &Queue) {
    let bound = 2 * 2 * streams().len() as u64;
    let read = q.entries_read_at_open();
    assert!(read <= bound, "the start read {read} entries");
}

/// Values in the queue tree of `stream`.
fn values(q: &Queue, stream: &str) -> u64 {
    let store = q.store().unwrap();
    store.trees(stream).unwrap().q.range(..RECORD_KEY).count() as u64
}

/// Appends `n` one-line requests to `a`, one at a time (each its own value).
async fn trickle(q: &Queue, from: usize, n: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for i in from..from + n {
        let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(180));
        q.append("a", line.as_bytes(), 1).await.unwrap();
        sent.push(line);
    }
    sent
}

/// A trickle of single-event requests (one value each) is merged into few values; the
/// stream keeps its order, every event is there once, the budget shrinks by the headers
/// the merge saved, and all of it survives a restart — read from the tree's ends.
#[tokio::test]
async fn compaction_merges_small_entries_in_order_and_keeps_the_books_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Interval);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop(); // passes run here, one by one
    let sent = trickle(&q, 0, 2000).await;
    assert_eq!(values(&q, "a"), 2000);
    let bytes_before = q.queued_bytes();
    compact::until_done(&q);
    let after = values(&q, "a");
    // Merged values of at least SMALL_BYTES each, and a tail run shorter than that.
    let line_bytes: u64 = sent.iter().map(|l| l.len() as u64).sum();
    let bound = line_bytes / compact::SMALL_BYTES as u64 + compact::SMALL_BYTES as u64 / 190;
    assert!(
        after <= bound,
        "{after} values after compaction (bound {bound})"
    );
    let saved = (2000 - after) * HEADER_LEN as u64;
    assert_eq!(q.queued_bytes(), bytes_before - saved);
    let all = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(lines(&all), sent, "order kept, nothing lost or doubled");
    let stored: u64 = all.iter().map(Entry::budget_bytes).sum();
    assert_eq!(
        q.queued_bytes(),
        stored,
        "the budget is what the entries take"
    );
    q.crash();
    let q = Queue::open(&cfg, &streams()).unwrap();
    reads_only_the_ends(&q);
    assert_eq!((q.queued_events("a"), q.queued_bytes()), (2000, stored));
    q.close().unwrap();
    drop(q);
    let report = Queue::verify(&cfg, &streams()).unwrap();
    assert!(!report.damaged(), "{report:?}");
}

/// Entries handed out for delivery are never merged (the flusher settles them by key), and
/// nor is what follows a damaged entry merged across it: the damaged one stays for the
/// delivery path to quarantine and report.
#[tokio::test]
async fn compaction_leaves_in_flight_and_damaged_entries_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let sent;
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.inner.compactor.stop();
        sent = trickle(&q, 0, 900).await;
        q.close().unwrap();
    }
    // Entry 500 (of 0..900) is damaged on disk.
    tamper(&cfg, |db| {
        let tree = db.open_tree("q/a").unwrap();
        let (k, v) = tree.range(..RECORD_KEY).nth(500).unwrap().unwrap();
        damage(&tree, &k, &v);
    });
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    let in_flight = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    compact::until_done(&q);
    let again = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    let keys = |es: &[Entry]| es.iter().map(|e| (e.key, e.count)).collect::<Vec<_>>();
    assert_eq!(
        keys(&again),
        keys(&in_flight),
        "handed-out entries unchanged"
    );
    for e in &in_flight {
        q.settle("a", e, &[]).unwrap();
    }
    let rest = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    let mut want = sent[10..].to_vec();
    want.remove(490);
    assert_eq!(lines(&rest), want, "all but the damaged one, in order");
    assert!(values(&q, "a") < 100, "{} values", values(&q, "a"));
    assert_eq!(q.queued_events("a"), 899 - 10);
    assert_eq!(
        q.manifest_counts()["a"].lost,
        1,
        "the damaged entry was reported"
    );
    assert_eq!(q.ledger("a").unwrap().books().damaged.values, 1, "and kept");
    let report_free = q.manifest_counts();
    assert_eq!(report_free["a"].acked, 900);
}

/// A compactor that dies in the middle of a merge (after reading its run, before the batch)
/// changes nothing: the process is told to stop, and the next start finds every event
/// once, in order, with exact counts.
#[tokio::test]
async fn a_compactor_that_dies_mid_merge_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    let sent = trickle(&q, 0, 700).await;
    let (events, bytes) = (q.queued_events("a"), q.queued_bytes());
    q.inner.compactor.panic_next.store(true, Ordering::Release);
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compact::until_done(&q);
    }));
    assert!(died.is_err(), "the injected panic");
    assert_eq!((q.queued_events("a"), q.queued_bytes()), (events, bytes));
    q.crash();
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_eq!((q.queued_events("a"), q.queued_bytes()), (events, bytes));
    let all = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(lines(&all), sent);
    // The running compactor dies the same way and is reported.
    q.inner.compactor.panic_next.store(true, Ordering::Release);
    let mut more = Vec::new();
    for i in 700..1100 {
        let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(180));
        match q.append("a", line.as_bytes(), 1).await {
            Ok(()) => more.push(line),
            Err(e) => {
                assert!(matches!(e, QueueError::Dead(compact::COMPONENT)), "{e}");
                break;
            }
        }
    }
    let died = tokio::time::timeout(TEST_WAIT, q.failed()).await.unwrap();
    assert_eq!(died, compact::COMPONENT);
    assert_eq!(q.unready_reason(), Some("queue compactor died"));
    q.crash();
    let q = Queue::open(&cfg, &streams()).unwrap();
    let all = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(lines(&all), [sent, more].concat());
}

/// The health round re-opens sled once enough is written (so that sled writes a fresh
/// snapshot and a start after a crash replays little of its log): appends made meanwhile
/// wait instead of failing, deliveries go on, and the counts stay exact across it and
/// across a crash after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_is_renewed_in_the_running_process_without_refusing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner
        .health
        .renew_after
        .store(32 << 10, Ordering::Release);
    let writer = {
        let q = q.clone();
        tokio::spawn(async move { trickle(&q, 0, 1500).await })
    };
    let mut delivered = Vec::new();
    while !writer.is_finished() || q.queued_events("a") > 0 {
        q.check_health_now();
        for e in q.read_head("a", &HashSet::new(), 50, usize::MAX).unwrap() {
            delivered.extend(
                e.iter_lines()
                    .map(|l| String::from_utf8(l.to_vec()).unwrap()),
            );
            q.settle("a", &e, &[]).unwrap();
        }
        if q.queued_events("a") == 0 {
            tokio::task::yield_now().await;
        }
    }
    let sent = writer.await.unwrap();
    assert!(q.inner.health.renewals.load(Ordering::Acquire) >= 3);
    assert_eq!(delivered, sent, "every event once, in order");
    assert_eq!((q.queued_events("a"), q.queued_bytes()), (0, 0));
    assert_eq!(q.manifest_counts()["a"].delivered, 1500);
    let more = trickle(&q, 1500, 10).await;
    q.crash();
    let q = Queue::open(&cfg, &streams()).unwrap();
    reads_only_the_ends(&q);
    let all = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(lines(&all), more);
    assert_eq!(q.manifest_counts()["a"].delivered, 1500);
}

/// A start after a crash reads the ends of each tree, not its entries: 3,000 single-event
/// values, and the counts come back exact.
#[tokio::test]
async fn a_crash_restart_reads_the_ends_of_the_queue_not_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    let sent = trickle(&q, 0, 3000).await;
    let head = q.read_head("a", &HashSet::new(), 7, usize::MAX).unwrap();
    for e in &head {
        q.settle("a", e, &[]).unwrap();
    }
    let (events, bytes) = (q.queued_events("a"), q.queued_bytes());
    assert_eq!(values(&q, "a"), 2993);
    q.crash();
    let q = Queue::open(&cfg, &streams()).unwrap();
    reads_only_the_ends(&q);
    assert_eq!((q.queued_events("a"), q.queued_bytes()), (events, bytes));
    assert_eq!(q.manifest_counts()["a"].delivered, 7);
    let all = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(lines(&all), sent[7..]);
}

/// A crash after any single write of a merge, a partial settle, a removal or a dead letter
/// leaves counts a start recovers exactly (they equal a walk), every event once in the
/// queue, the dead-letter tree or the delivered count, and nothing merged twice.
#[tokio::test]
async fn a_crash_at_any_write_of_a_merge_or_a_settle_leaves_exact_counts() {
    // Four entries that together pass SMALL_BYTES: one merge of five.
    let big = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "y".repeat(1_500));
    for k in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), Durability::Fsync);
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.inner.compactor.stop();
        let mut sent = Vec::new();
        for i in 0..4 {
            let line = big(i);
            q.append("a", line.as_bytes(), 1).await.unwrap();
            sent.push(line);
        }
        q.append("a", b"x1\nx2\nx3\n", 3).await.unwrap();
        sent.extend(["x1\n", "x2\n", "x3\n"].map(String::from));
        q.store().unwrap().crash_after.store(k, Ordering::Release);
        let steps = (|| -> Result<(), QueueError> {
            compact::until_done(&q);
            let head = q.read_head("a", &HashSet::new(), 10, usize::MAX)?;
            let e = &head[0];
            let all: Vec<&[u8]> = e.iter_lines().collect();
            // The sink takes all but (up to) two lines; one of those it refuses for good.
            let keep = all.len().saturating_sub(1).min(2);
            q.settle("a", e, &all[all.len() - keep..])?;
            let e = &q.read_head("a", &HashSet::new(), 10, usize::MAX)?[0];
            let all: Vec<&[u8]> = e.iter_lines().collect();
            q.dead_letter("a", e, &all[..1], &all[1..])?;
            let e = &q.read_head("a", &HashSet::new(), 10, usize::MAX)?[0];
            q.settle("a", e, &[])
        })();
        let finished = steps.is_ok();
        let merged = q.inner.compactor.merged_runs.load(Ordering::Acquire);
        q.crash();
        let q = Queue::open(&cfg, &streams()).unwrap();
        reads_only_the_ends(&q);
        let (events, dead) = (q.queued_events("a"), q.dead_letter_events("a"));
        let bytes = q.queued_bytes();
        let counts = q.manifest_counts()["a"];
        let queued: Vec<String> =
            lines(&q.read_head("a", &HashSet::new(), 99, usize::MAX).unwrap());
        let dead_lines: Vec<String> = lines(&q.dead_letters("a").unwrap());
        q.close().unwrap();
        drop(q);
        let report = Queue::verify(&cfg, &streams()).unwrap();
        let a = &report.streams[0];
        assert_eq!(a.summary, "ok", "crash after {k} writes: {report:?}");
        assert_eq!(
            (a.queued, a.dead_letters),
            (events, dead),
            "after {k} writes"
        );
        assert_eq!(a.missing, 0, "after {k} writes: {report:?}");
        assert_eq!(queued.len() as u64, events, "after {k} writes");
        let stored: u64 = queued.iter().map(|l| l.len() as u64).sum::<u64>();
        assert!(
            bytes >= stored,
            "after {k} writes: the budget covers the lines"
        );
        // Every event exactly once: still queued, dead-lettered, or counted delivered.
        assert_eq!(events + dead + counts.delivered, 7, "after {k} writes");
        let mut seen: Vec<&String> = queued.iter().chain(&dead_lines).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len() as u64,
            events + dead,
            "no line twice, after {k} writes"
        );
        if finished {
            assert_eq!((dead, merged), (1, 1), "after {k} writes");
        }
    }
}

/// Reading is a reason to re-open sled too (it keeps every page a reader touched): after
/// enough entries read, the round renews the handle, and reading goes on from the new one.
#[tokio::test]
async fn reading_enough_renews_sled_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    q.inner
        .health
        .renew_after_read
        .store(64 << 10, Ordering::Release);
    let sent = trickle(&q, 0, 400).await;
    assert_eq!(q.inner.health.renewals.load(Ordering::Acquire), 0);
    for _ in 0..3 {
        let all = q
            .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!(lines(&all), sent);
        q.check_health_now();
    }
    assert_eq!(q.inner.health.renewals.load(Ordering::Acquire), 3);
}

/// A queue written before records and stamps (version-2 entries, no record): its first
/// start walks it once, exactly, and writes the records; later starts read only the ends,
/// and new entries are counted from their stamps on top.
#[tokio::test]
async fn a_queue_from_before_records_is_walked_once_then_read_from_its_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.close().unwrap();
    }
    // What the previous version left: v2 entries and a `delivered/a` counter in `meta`.
    let v2 = |text: &str| {
        let mut v = vec![2u8];
        v.extend_from_slice(&5u64.to_be_bytes());
        v.extend_from_slice(&1u32.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&v[1..13]);
        crc.update(text.as_bytes());
        v.extend_from_slice(&crc.finalize().to_be_bytes());
        v.extend_from_slice(text.as_bytes());
        v
    };
    tamper(&cfg, |db| {
        let tree = db.open_tree("q/a").unwrap();
        tree.remove(RECORD_KEY).unwrap();
        for i in 0..50u64 {
            tree.insert(i.to_be_bytes(), v2(&format!("old{i}\n")))
                .unwrap();
        }
        let meta = db.open_tree("meta").unwrap();
        meta.insert("delivered/a", &7u64.to_be_bytes()[..]).unwrap();
    });
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        assert_eq!(
            q.entries_read_at_open(),
            1 + 50,
            "its last entry, then a walk"
        );
        assert_eq!(q.queued_events("a"), 50);
        assert_eq!(q.manifest_counts()["a"].delivered, 7);
        q.append("a", b"new\n", 1).await.unwrap();
        q.crash();
    }
    let q = Queue::open(&cfg, &streams()).unwrap();
    reads_only_the_ends(&q);
    assert_eq!(q.queued_events("a"), 51);
    let budget: u64 = q
        .read_head("a", &HashSet::new(), usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(Entry::budget_bytes)
        .sum();
    assert_eq!(q.queued_bytes(), budget);
}

/// The entry a tree's record names turns out damaged at the next start: that tree is walked
/// (the damaged entry moved aside and reported), never the whole queue taken for damaged.
#[tokio::test]
async fn a_damaged_entry_named_by_the_record_means_a_walk_not_a_moved_queue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    {
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.inner.compactor.stop();
        q.append("a", b"1\n2\n3\n", 3).await.unwrap();
        q.append("a", b"4\n", 1).await.unwrap();
        let head = q.read_head("a", &HashSet::new(), 1, usize::MAX).unwrap();
        q.settle("a", &head[0], &[b"3\n"]).unwrap(); // the record names this rewrite
        q.close().unwrap();
    }
    tamper(&cfg, |db| {
        let tree = db.open_tree("q/a").unwrap();
        let (k, v) = tree.range(..RECORD_KEY).next().unwrap().unwrap();
        damage(&tree, &k, &v);
    });
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_nothing_moved_aside(dir.path());
    assert_eq!(
        q.queued_events("a"),
        1,
        "the good entry, counted by the walk"
    );
    assert_eq!(q.ledger("a").unwrap().books().damaged.values, 1);
    let head = q.read_head("a", &HashSet::new(), 10, usize::MAX).unwrap();
    assert_eq!(lines(&head), ["4\n"]);
}
