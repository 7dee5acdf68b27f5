//! Erasure: what goes, what stays, entries out with a flusher, crashes at every write, and
//! the durable list.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::super::tests::{config, lines, reads_only_the_ends, streams};
use super::*;
use crate::config::Durability;

/// Lines of user `gone`.
fn eraser() -> Eraser {
    Arc::new(|line: &[u8]| line.starts_with(br#"{"u":"gone""#))
}

fn event(user: &str, i: usize) -> String {
    format!("{{\"u\":\"{user}\",\"i\":{i}}}\n")
}

async fn append(q: &Queue, stream: &str, events: &[String]) {
    let ndjson: String = events.concat();
    q.append(stream, ndjson.as_bytes(), events.len() as u32)
        .await
        .unwrap();
}

fn head(q: &Queue, stream: &str) -> Vec<Entry> {
    q.read_head(stream, &HashSet::new(), 99, usize::MAX)
        .unwrap()
}

/// Settles every entry of `stream`'s head as delivered.
fn deliver_all(q: &Queue, stream: &str) {
    for e in head(q, stream) {
        q.settle(stream, &e, &[]).unwrap();
    }
}

/// Closes `q` and checks the queue with `queue verify`: consistent, and nothing missing.
fn verified(q: Queue, cfg: &crate::config::QueueConfig) {
    q.close().unwrap();
    drop(q);
    let report = Queue::verify(cfg, &streams()).unwrap();
    for s in &report.streams {
        assert_eq!((s.summary, s.missing), ("ok", 0), "{report:?}");
    }
}

#[tokio::test]
async fn an_erasure_takes_out_the_users_records_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    // A dead letter of each user first (the sink refused them for good).
    append(&q, "a", &[event("gone", 0), event("kept", 0)]).await;
    let e = &head(&q, "a")[0];
    let all: Vec<&[u8]> = e.iter_lines().collect();
    q.dead_letter("a", e, &all, &[]).unwrap();
    append(
        &q,
        "a",
        &[event("gone", 1), event("kept", 1), event("gone", 2)],
    )
    .await;
    append(&q, "a", &[event("gone", 3)]).await;
    append(&q, "a", &[event("kept", 2)]).await;
    append(&q, "b", &[event("kept", 3), event("gone", 4)]).await;
    let budget = q.queued_bytes();

    let erased = q.erase(eraser()).unwrap();
    assert_eq!(
        erased,
        Erased {
            queued: 4,
            dead_letters: 1,
            in_flight: 0
        }
    );
    assert_eq!(lines(&head(&q, "a")), [event("kept", 1), event("kept", 2)]);
    assert_eq!(lines(&head(&q, "b")), [event("kept", 3)]);
    assert_eq!(lines(&q.dead_letters("a").unwrap()), [event("kept", 0)]);
    assert_eq!((q.queued_events("a"), q.dead_letter_events("a")), (2, 1));
    assert!(q.queued_bytes() < budget, "the budget is given back");
    // A second walk finds nothing; the counts stay exact across a start.
    assert_eq!(q.erase(eraser()).unwrap(), Erased::default());
    q.close().unwrap();
    drop(q);
    let q = Queue::open(&cfg, &streams()).unwrap();
    assert_eq!((q.queued_events("a"), q.dead_letter_events("a")), (2, 1));
    deliver_all(&q, "a");
    deliver_all(&q, "b");
    assert_eq!(q.queued_bytes(), 0);
    verified(q, &cfg);
}

#[tokio::test]
async fn an_entry_out_with_the_flusher_is_erased_when_it_settles_or_before_it_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    append(&q, "a", &[event("gone", 0), event("kept", 0)]).await;
    append(&q, "a", &[event("kept", 1), event("gone", 1)]).await;
    append(&q, "a", &[event("gone", 2)]).await;
    let out = head(&q, "a");
    // The third was handed out too, and already delivered: only two are still out.
    q.settle("a", &out[2], &[]).unwrap();

    let erased = q.erase(eraser()).unwrap();
    assert_eq!(
        (erased.queued, erased.in_flight),
        (0, 2),
        "nothing rewritten under a flusher"
    );
    // The first one's attempt failed: its lines would stay, but the user's go now.
    let all: Vec<&[u8]> = out[0].iter_lines().collect();
    q.settle("a", &out[0], &all).unwrap();
    assert_eq!(q.queued_events("a"), 3);
    // The second was read and not sent (it lingered): the next read filters it first.
    let again = head(&q, "a");
    assert_eq!(lines(&again), [event("kept", 0), event("kept", 1)]);
    assert_eq!(q.queued_events("a"), 2);
    for e in &again {
        q.settle("a", e, &[]).unwrap();
    }
    assert_eq!((q.queued_events("a"), q.queued_bytes()), (0, 0));
    verified(q, &cfg);
}

#[tokio::test]
async fn a_crash_at_any_write_of_an_erasure_leaves_exact_counts_and_the_next_one_finishes() {
    for k in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), Durability::Fsync);
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.inner.compactor.stop();
        append(&q, "a", &[event("gone", 0), event("kept", 0)]).await;
        let e = &head(&q, "a")[0];
        let all: Vec<&[u8]> = e.iter_lines().collect();
        q.dead_letter("a", e, &all, &[]).unwrap();
        append(&q, "a", &[event("gone", 1), event("kept", 1)]).await;
        append(&q, "a", &[event("gone", 2)]).await;
        append(&q, "b", &[event("gone", 3), event("kept", 2)]).await;
        q.store().unwrap().crash_after.store(k, Ordering::Release);
        let finished = q.erase(eraser()).is_ok();
        q.crash();

        let q = Queue::open(&cfg, &streams()).unwrap();
        reads_only_the_ends(&q);
        let held = |q: &Queue| {
            let mut all = lines(&head(q, "a"));
            all.extend(lines(&head(q, "b")));
            all.extend(lines(&q.dead_letters("a").unwrap()));
            all
        };
        let before = held(&q);
        for kept in [event("kept", 0), event("kept", 1), event("kept", 2)] {
            assert!(before.contains(&kept), "after {k} writes: {before:?}");
        }
        assert_eq!(finished, before.len() == 3, "after {k} writes: {before:?}");
        q.close().unwrap();
        drop(q);
        let q = Queue::open(&cfg, &streams()).unwrap();
        q.erase(eraser()).unwrap();
        let after = held(&q);
        assert_eq!(after.len(), 3, "after {k} writes: {after:?}");
        assert!(
            !after.iter().any(|l| l.contains("gone")),
            "after {k} writes"
        );
        verified(q, &cfg);
    }
}

#[tokio::test]
async fn the_list_survives_a_crash_and_says_what_is_still_pending() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(q.suppress(&ids(&["u-2", "u-1"])).unwrap(), 2);
    let first = q.suppressed().unwrap();
    assert_eq!(q.suppress(&ids(&["u-1"])).unwrap(), 0, "listed already");
    q.crash();

    let q = Queue::open(&cfg, &streams()).unwrap();
    let listed = q.suppressed().unwrap();
    assert_eq!(listed, first, "when each was added is kept");
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.id.as_str(), s.pending))
            .collect::<Vec<_>>(),
        [("u-1", true), ("u-2", true)]
    );
    q.erased(&ids(&["u-1"])).unwrap();
    assert_eq!(q.unsuppress(&ids(&["u-2", "u-3"])).unwrap(), 1);
    q.crash();
    let q = Queue::open(&cfg, &streams()).unwrap();
    let listed = q.suppressed().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id.as_str(), listed[0].pending), ("u-1", false));
}

/// The compactor keeps the tail run it read for its next pass; an erasure between the two
/// rewrites entries of that run, so the copy it kept must not be merged: the user's lines
/// would come back.
#[tokio::test]
async fn a_tail_run_read_before_an_erasure_is_read_again_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Fsync);
    let q = Queue::open(&cfg, &streams()).unwrap();
    q.inner.compactor.stop();
    let me = &q.inner.compactor;
    let mut cursors = std::collections::HashMap::new();
    for i in 0..4 {
        append(&q, "a", &[event("gone", i), event("kept", i)]).await;
    }
    // Too small to merge yet: kept as the stream's tail run.
    crate::queue::compact::pass(&q, me, &mut cursors);
    assert_eq!(me.merged_runs.load(Ordering::Acquire), 0);
    assert_eq!(q.erase(eraser()).unwrap().queued, 4);
    // Enough to end the run at the compactor's threshold.
    let big = format!("{{\"u\":\"kept\",\"pad\":\"{}\"}}\n", "x".repeat(4096));
    for _ in 0..4 {
        append(&q, "a", &[event("kept", 9)]).await;
    }
    append(&q, "a", std::slice::from_ref(&big)).await;
    while crate::queue::compact::pass(&q, me, &mut cursors) {}
    assert!(me.merged_runs.load(Ordering::Acquire) >= 1);
    let left = lines(&head(&q, "a"));
    assert!(left.iter().all(|l| !l.contains("gone")), "{left:?}");
    let mut want: Vec<String> = (0..4).map(|i| event("kept", i)).collect();
    want.extend(std::iter::repeat_n(event("kept", 9), 4));
    want.push(big);
    assert_eq!(left, want);
}
