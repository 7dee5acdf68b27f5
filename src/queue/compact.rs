//! Compaction: a background thread merges runs of small consecutive entries of a stream into
//! one value, so that the number of sled values — what sled's memory and its log replay grow
//! with — follows the bytes queued, not the number of requests that brought them (a long
//! trickle of single-event requests is one value each when written).
//!
//! What makes it safe, step by step:
//! - A merge is **announced first**: the queue tree's record names the run and the merged
//!   count, then the merged value replaces the run's last key, then the other keys go (single
//!   writes: sled's batches deadlock under this load, see [`super::ledger`]). A crash at any
//!   point is finished or undone at the next start: a merged value at the last key means the
//!   leftovers go; the original there means nothing happened. Never both, never neither.
//! - **Order is kept**: a run is contiguous (no key of the stream lies between its keys, which
//!   is checked again under the stream's lock before the batch) and its lines keep their order.
//! - **Nothing in flight or unacknowledged** is touched: only keys at or above what
//!   `read_head` handed out (checked under the stream's lock, which `read_head` holds while it
//!   hands entries out) and below what the committer has settled (acknowledged, or taken back
//!   after an error) are merged.
//! - A **damaged** entry ends a run and is left where it is, for `read_head` to quarantine
//!   and report; dead letters and damaged entries live in other trees and are never merged.
//! - It pauses while storage is failing, and never holds the stream's lock while it reads.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::background::Background;

use super::entry::{Entry, key_of};
use super::ledger;
use super::{Inner, Queue, QueueError};

/// A merged value holds at most this many bytes of lines: ~80 events of 200 bytes, so a
/// 10 GiB budget of them is ~650 k values (sled keeps ~300 bytes of memory per value). Not
/// more: sled 0.34 rewrites a leaf whole on every change near it, and with larger values its
/// memory and files blow up (measured on 300 k single-event requests, VmHWM and files:
/// 16 KiB 66 MiB and 169 MiB; 32 KiB 237 and 137; 64 KiB 525 MiB and 1.3 GiB; 256 KiB 539
/// MiB and 769 MiB; no compaction 98 MiB and 145 MiB; see the README's sled notes).
pub(super) const TARGET_BYTES: usize = 16 << 10;
/// Entries with this many bytes of lines or more are left as they are (and end a run): so a
/// merged value is never merged again, and each byte is rewritten at most once.
pub(super) const SMALL_BYTES: usize = TARGET_BYTES / 4;
/// Runs merged per stream before the thread looks at the other streams again.
const RUNS_PER_TURN: usize = 64;
/// Longest wait between passes when nothing wakes the thread.
const PERIOD: Duration = Duration::from_secs(1);

/// The compactor's name in failure reports and metrics.
pub(super) const COMPONENT: &str = "compactor";

/// The background thread's handle and signals.
#[derive(Default)]
pub(super) struct Compactor {
    thread: Background,
    /// Merges done (for tests and the gauges).
    pub merged_runs: std::sync::atomic::AtomicU64,
    /// Erasures walking now: no merge meanwhile (see `erase.rs`).
    pub paused: std::sync::atomic::AtomicUsize,
    /// Pauses ever taken: entries read before one may have been rewritten by it, so a run
    /// read before it is never merged (checked under the stream's lock).
    pub pauses: std::sync::atomic::AtomicU64,
    /// Tests: panic in the middle of the next merge, after its batch is built.
    #[cfg(test)]
    pub panic_next: std::sync::atomic::AtomicBool,
}

impl Compactor {
    /// Starts the thread; it holds the queue only weakly between passes.
    pub fn spawn(self: &Arc<Self>, queue: Weak<Inner>) -> std::io::Result<()> {
        let me = self.clone();
        self.thread.spawn("queue-compactor", move || {
            // Per stream: where the next pass starts reading (the start of a run that
            // may still grow; everything below it is merged or large already). A new
            // process starts near the tail: what an earlier one left unmerged is a tail
            // run at most, and reading the whole queue to look would cost its size in
            // memory (sled keeps what a reader touched).
            let mut cursors = std::collections::HashMap::<String, Cursor>::new();
            if let Some(inner) = queue.upgrade() {
                let queue = Queue { inner };
                for stream in queue.inner.streams.keys() {
                    let from = near_the_tail(&queue, stream).unwrap_or(0);
                    cursors.insert(stream.clone(), Cursor::at(from));
                }
            }
            while !me.thread.stopping() {
                let Some(inner) = queue.upgrade() else {
                    return;
                };
                let queue = Queue { inner };
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pass(&queue, &me, &mut cursors)
                }));
                let more = match pass {
                    Ok(more) => more,
                    Err(panic) => {
                        let why = super::store::panic_message(&*panic);
                        queue.inner.fatal.report(COMPONENT, why);
                        return;
                    }
                };
                drop(queue);
                if !more {
                    me.thread.wait(PERIOD);
                }
            }
        })
    }

    /// Runs a pass soon (the committer calls it after each round).
    pub fn wake(&self) {
        self.thread.wake();
    }

    pub fn stop(&self) {
        self.thread.stop();
    }

    /// No merge until the guard is dropped (a merge under way finishes first: it holds its
    /// stream's lock, and checks under it).
    pub fn pause(&self) -> Paused<'_> {
        self.paused.fetch_add(1, Ordering::AcqRel);
        self.pauses.fetch_add(1, Ordering::AcqRel);
        Paused(self)
    }
}

/// See [`Compactor::pause`].
pub(super) struct Paused<'a>(&'a Compactor);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.paused.fetch_sub(1, Ordering::AcqRel);
        self.0.wake();
    }
}

/// Tests: passes until nothing is left to merge, from the start of every stream.
#[cfg(test)]
pub(super) fn until_done(queue: &Queue) {
    let mut cursors = std::collections::HashMap::new();
    while pass(queue, &queue.inner.compactor, &mut cursors) {}
}

/// The key [`TAIL_ENTRIES`] entries before the end of `stream`'s queue tree.
fn near_the_tail(queue: &Queue, stream: &str) -> Result<u64, QueueError> {
    let store = queue.store()?;
    let q = &store.trees(stream)?.q;
    let key = q
        .range(..ledger::RECORD_KEY)
        .keys()
        .rev()
        .take(TAIL_ENTRIES)
        .last();
    match key.transpose()? {
        Some(k) => key_of(&k),
        None => Ok(0),
    }
}

/// Entries a new process looks back from the tail for a run left unmerged (a tail run is
/// shorter than [`SMALL_BYTES`], so at most this many single-event entries).
const TAIL_ENTRIES: usize = 64;

/// One pass over every stream; returns whether a stream has more to merge right away.
pub(super) fn pass(
    queue: &Queue,
    me: &Compactor,
    cursors: &mut std::collections::HashMap<String, Cursor>,
) -> bool {
    let a = &queue.inner.admission;
    if a.is_failing()
        || queue.inner.closed.load(Ordering::Acquire)
        || !super::erase::merging_allowed(queue)
    {
        return false;
    }
    let mut more = false;
    for stream in queue.inner.streams.keys() {
        let cursor = cursors
            .entry(stream.clone())
            .or_insert_with(|| Cursor::at(0));
        match compact_stream(queue, me, stream, cursor) {
            Ok(m) => more |= m,
            // A storage error: the committer or the flusher meets it too and starts the
            // recovery; the next pass tries again.
            Err(e) => {
                tracing::debug!(%stream, error = %e, "compaction pass failed");
                return false;
            }
        }
    }
    more
}

/// Where a stream's next pass starts: the start of a run that may still grow (everything
/// below it is merged or large already), and that run's entries as last read, so that a
/// pass reads only what came after them (the tail run was read again at every pass, and
/// with the flusher lingering on single-event entries that was most of the queue's work).
pub(super) struct Cursor {
    key: u64,
    tail: Vec<Entry>,
    /// [`Compactor::pauses`] when `tail` was read.
    read_at: u64,
    /// What had come into the stream's queue, and [`Compactor::pauses`], when a pass last
    /// went through to its end: while both stay the same there is nothing new to read (every
    /// stream is passed over at every wake, most of them idle).
    finished_at: Option<(u64, u64)>,
}

impl Cursor {
    fn at(key: u64) -> Cursor {
        Cursor {
            key,
            tail: Vec::new(),
            read_at: 0,
            finished_at: None,
        }
    }
}

/// Merges up to [`RUNS_PER_TURN`] runs of `stream` from `cursor` on; returns whether it
/// stopped for that limit (more to do).
fn compact_stream(
    queue: &Queue,
    me: &Compactor,
    stream: &str,
    cursor: &mut Cursor,
) -> Result<bool, QueueError> {
    let ledger = queue.ledger(stream)?;
    if !queue.refused_keys(stream).is_empty() {
        return Ok(false);
    }
    let read_at = me.pauses.load(Ordering::Acquire);
    let came_in = ledger.books().q.came_in.events;
    if cursor.finished_at == Some((came_in, read_at)) {
        return Ok(false);
    }
    cursor.finished_at = None;
    // Read after `came_in`: every entry counted there has a key below it.
    let allocated = queue.inner.next_key.load(Ordering::Acquire);
    let settled = queue.inner.commit.settled_below.load(Ordering::Acquire);
    let handed_out = ledger.handed_out.load(Ordering::Acquire);
    let from = cursor.key.max(handed_out);
    // The tail run as last read still stands if none of it was handed out and no erasure
    // has run since (merge checks both again under the lock, and that its keys are still
    // exactly these).
    let mut run = std::mem::take(&mut cursor.tail);
    if cursor.read_at != read_at || run.first().is_some_and(|e| e.key < from) {
        run.clear();
    }
    let start = run.last().map_or(from, |e| e.key + 1);
    if start >= settled {
        cursor.tail = run;
        if settled >= allocated {
            cursor.finished_at = Some((came_in, read_at));
        }
        return Ok(false);
    }
    let store = queue.store()?;
    let trees = store.trees(stream)?;
    let q = &trees.q;
    let (mut run_bytes, mut run_events) = run.iter().fold((0, 0u64), |(b, n), e| {
        (b + e.lines.len(), n + u64::from(e.count))
    });
    let mut merged = 0;
    cursor.key = run.first().map_or(from, |e| e.key);
    cursor.read_at = read_at;
    for item in q.range(start.to_be_bytes()..settled.to_be_bytes()) {
        // Not counted as read (`Trees::read`): each entry's pages are touched about once;
        // counting re-reads made sled re-open every few seconds while filling, and the
        // fill's memory grew.
        let (k, v) = item?;
        let key = key_of(&k)?;
        let entry = match Entry::decode(&k, v) {
            Ok(e) => e,
            Err(QueueError::Damaged { .. }) => {
                merged += merge(queue, me, stream, trees, std::mem::take(&mut run), read_at)?;
                (run_bytes, run_events) = (0, 0);
                cursor.key = key + 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let len = entry.lines.len();
        let events = u64::from(entry.count);
        let fits = run_bytes + len <= TARGET_BYTES && run_events + events <= u64::from(u32::MAX);
        if len < SMALL_BYTES && fits {
            if run.is_empty() {
                cursor.key = key;
            }
            (run_bytes, run_events) = (run_bytes + len, run_events + events);
            run.push(entry);
            continue;
        }
        // The run ends here and will not grow: merge it, whatever its size.
        merged += merge(queue, me, stream, trees, std::mem::take(&mut run), read_at)?;
        (run_bytes, run_events) = (0, 0);
        cursor.key = key;
        if len < SMALL_BYTES {
            (run_bytes, run_events) = (len, events);
            run.push(entry);
        } else {
            cursor.key = key + 1;
        }
        if merged >= RUNS_PER_TURN {
            // Read again from `cursor.key` next time.
            return Ok(true);
        }
    }
    // The last run may still grow with later appends: merged only once it is large enough
    // not to be merged again; kept for the next pass otherwise.
    if run_bytes >= SMALL_BYTES {
        let next = run.last().map_or(cursor.key, |e| e.key + 1);
        merge(queue, me, stream, trees, run, read_at)?;
        cursor.key = next;
    } else {
        cursor.tail = run;
    }
    // Everything counted in `came_in` was settled, so this pass read it all: until more
    // comes in (or an erasure runs), a pass would find nothing new.
    if settled >= allocated {
        cursor.finished_at = Some((came_in, read_at));
    }
    Ok(false)
}

/// Merges `run` (consecutive entries, as read) into one value at its last key, if it is
/// still what was read and nothing of it was handed out meanwhile. Returns 1 if it merged.
fn merge(
    queue: &Queue,
    me: &Compactor,
    stream: &str,
    trees: &super::store::Trees,
    run: Vec<Entry>,
    read_at: u64,
) -> Result<usize, QueueError> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok(0);
    };
    if run.len() < 2 {
        return Ok(0);
    }
    let ledger = queue.ledger(stream)?;
    let mut books = ledger.lock();
    // Read before an erasure began, the run may hold what it took out since.
    if first.key < ledger.handed_out.load(Ordering::Acquire)
        || !super::erase::merging_allowed(queue)
        || me.pauses.load(Ordering::Acquire) != read_at
    {
        return Ok(0);
    }
    let keys = trees
        .q
        .range(first.key.to_be_bytes()..=last.key.to_be_bytes())
        .keys()
        .map(|k| k.map_err(QueueError::from).and_then(|k| key_of(&k)))
        .collect::<Result<Vec<u64>, _>>()?;
    if !keys.iter().eq(run.iter().map(|e| &e.key)) {
        return Ok(0);
    }
    #[cfg(test)]
    if me.panic_next.swap(false, Ordering::AcqRel) {
        panic!("injected compactor panic");
    }
    queue.fault()?;
    let saved = ledger::merge(&mut books, trees, &run)?;
    drop(books);
    queue.inner.admission.release(saved);
    me.merged_runs.fetch_add(1, Ordering::AcqRel);
    crate::metrics::queue_merged(run.len() as u64);
    Ok(1)
}
