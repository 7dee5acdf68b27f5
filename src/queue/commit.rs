//! The group commit: how an append becomes durable. This is the one place to check against
//! the README's durability promise.
//!
//! Appenders hand their lines to one committer thread and wait. The committer takes every
//! append that arrived since its last round, writes each stream's share as one sled value per
//! up to [`MAX_GROUP_ENTRY_BYTES`] (a request is never split, so each stays atomic), then, in
//! `fsync` mode, runs one `flush()`, `fdatasync`s sled's data file and any new blob file, and
//! only then answers everyone. N concurrent requests cost one flush.
//!
//! If a write or the flush fails, every request of the round is answered with an error, the
//! values it wrote are taken back (or, if the disk refuses even that, remembered as *refused*:
//! never delivered, removed once storage works), and the queue enters its failed state.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use tokio::sync::oneshot;

use super::entry::Part;
use super::ledger::{self, Out, Which};
use super::{Inner, Queue, QueueError};

/// Largest entry the committer builds from several requests: big enough that a group of
/// small requests becomes a few values (sled's memory and work grow with the number of
/// values: ~300 200-byte events fit), small enough that a sled leaf of 16 such entries
/// (1 MiB) stays below the 2 MiB blob threshold, so group flushes write no blob files.
pub(super) const MAX_GROUP_ENTRY_BYTES: usize = 64 << 10;

/// What a request asks the committer to write.
pub(super) enum Request {
    /// Its lines, one part per stream.
    Parts(Vec<Part>),
    /// Lines with idempotency keys, filtered against the dedup window by the committer.
    Batch {
        source: String,
        lines: Vec<super::BatchLine>,
    },
}

/// One request waiting for the committer: its lines for one or more streams, all or none.
pub(super) struct Pending {
    pub request: Request,
    /// What is written: (stream, lines, line count), one part per stream (filled by the
    /// committer).
    pub parts: Vec<Part>,
    /// Lines skipped as already accepted.
    pub duplicates: u32,
    /// Ids this request adds to the dedup window (recorded with it, or forgotten).
    pub ids: Vec<super::dedup::Id>,
    pub enqueued_ms: u64,
    /// Budget bytes taken for it (its lines plus one header per part).
    pub reserved: u64,
    pub done: Answer,
}

/// Where a pending append's outcome goes: what it stored, or why it failed.
pub(super) type Answer = oneshot::Sender<Result<Stored, QueueError>>;

/// What one request stored: its lines per stream, and how many it skipped as already
/// accepted (so the caller counts what is stored, not what was sent).
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// (stream, lines), for the streams it wrote to.
    pub per_stream: Vec<(String, u32)>,
    /// Lines skipped as duplicates.
    pub duplicates: u32,
}

impl Pending {
    /// What this request stored, once its group is durable.
    fn stored(&self) -> Stored {
        Stored {
            per_stream: self
                .parts
                .iter()
                .map(|part| (part.stream.clone(), part.count))
                .collect(),
            duplicates: self.duplicates,
        }
    }
}

/// The committer's name in failure reports and metrics.
pub(super) const COMPONENT: &str = "committer";

/// The group committer's shared state.
pub(super) struct GroupCommit {
    /// Flush (and fdatasync) before answering: `durability = "fsync"`.
    pub flush: bool,
    pending: Mutex<Vec<Pending>>,
    wake: Condvar,
    stop: AtomicBool,
    pub flushes: AtomicU64,
    /// Every key below this is settled: written and acknowledged, or taken back after an
    /// error (the compactor merges only such keys). Moved after each round.
    pub settled_below: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Tests: queue directories whose committer panics in its next round (by path, so tests
/// running side by side in one process do not hit each other's committers).
#[cfg(test)]
static PANIC_NEXT: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Tests: the committer of the queue at `path` panics in its next round, as a bug in sled or
/// in our code would.
#[cfg(test)]
pub(crate) fn panic_next_round(path: &Path) {
    PANIC_NEXT.lock().push(path.to_path_buf());
}

#[cfg(test)]
fn take_injected_panic(path: &Path) -> bool {
    let mut paths = PANIC_NEXT.lock();
    let before = paths.len();
    paths.retain(|p| p != path);
    paths.len() != before
}

impl GroupCommit {
    pub fn new(flush: bool) -> GroupCommit {
        GroupCommit {
            flush,
            pending: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            settled_below: AtomicU64::new(0),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread. It holds the queue only weakly (and only while writing), so
    /// dropping the queue stops it.
    pub fn spawn(self: &Arc<Self>, queue: std::sync::Weak<Inner>) -> std::io::Result<()> {
        let commit = self.clone();
        let handle = std::thread::Builder::new()
            .name("queue-committer".to_owned())
            .spawn(move || committer_loop(&commit, &queue))?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Hands a request to the committer; refuses it if the committer has stopped.
    pub fn submit(&self, pending: Pending) -> Result<(), QueueError> {
        {
            let mut queue = self.pending.lock();
            // Checked under the lock the committer takes its last group under: a request
            // is either in that group or refused here, never stranded.
            if self.stop.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            queue.push(pending);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// After a panic in a round: refuses what is pending and everything after it, and
    /// reports the death (the round's own appenders were answered as it unwound).
    fn die(&self, queue: &Queue, why: &str) {
        let orphans = {
            let mut pending = self.pending.lock();
            self.stop.store(true, Ordering::Release);
            std::mem::take(&mut *pending)
        };
        queue.inner.fatal.report(COMPONENT, why);
        for p in orphans {
            queue.inner.admission.release(p.reserved);
            let _ = p.done.send(Err(QueueError::Dead(COMPONENT)));
        }
    }

    /// Stops the thread after it wrote what is pending.
    pub fn stop(&self) {
        {
            let _pending = self.pending.lock();
            self.stop.store(true, Ordering::Release);
        }
        self.wake.notify_one();
        let handle = self.thread.lock().take();
        if let Some(handle) = handle {
            // The committer may itself drop the last handle to the queue.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

fn committer_loop(commit: &GroupCommit, queue: &std::sync::Weak<Inner>) {
    let mut synced_blobs = HashSet::new();
    loop {
        let (group, stopping) = {
            let mut pending = commit.pending.lock();
            while pending.is_empty() && !commit.stop.load(Ordering::Acquire) {
                commit.wake.wait(&mut pending);
            }
            (
                std::mem::take(&mut *pending),
                commit.stop.load(Ordering::Acquire),
            )
        };
        if !group.is_empty() {
            let Some(inner) = queue.upgrade() else {
                for p in group {
                    let _ = p.done.send(Err(QueueError::Closed));
                }
                return;
            };
            let queue = Queue { inner };
            let reserved: u64 = group.iter().map(|p| p.reserved).sum();
            // A panic (in sled or in our code) must not leave appenders waiting forever, nor
            // the service looking ready: the group's appenders are answered with an error as
            // their answers unwind, the rest below, and the process is told to stop.
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                #[cfg(test)]
                if take_injected_panic(&queue.inner.config.path) {
                    panic!("injected committer panic");
                }
                queue.commit_group(group, &mut synced_blobs)
            }));
            let answers = match round {
                Ok(answers) => answers,
                Err(panic) => {
                    // Their budget back (exact for a panic before the round wrote; after
                    // that the counts are in doubt anyway, and are not saved: see `die`).
                    queue
                        .inner
                        .admission
                        .release(reserved.min(queue.queued_bytes()));
                    commit.die(&queue, super::store::panic_message(&*panic));
                    return;
                }
            };
            let next = queue.inner.next_key.load(Ordering::Acquire);
            commit.settled_below.store(next, Ordering::Release);
            queue.inner.compactor.wake();
            // Not waiting for the store here: the round's answers go out first.
            let store = queue.inner.store.try_read().and_then(|s| s.clone());
            if let Some(store) = store {
                queue.inner.health.renew_if_due(&store);
            }
            drop(queue);
            // Answered only now, with the queue released: a caller that drops the queue after
            // its answer then holds the last handle, and the queue closes on its thread.
            for (done, result) in answers {
                let _ = done.send(result);
            }
        }
        if stopping {
            return;
        }
    }
}

/// A value the committer wrote: where, how big, and the line count it holds.
struct Written {
    stream: String,
    key: u64,
    len: u64,
    count: u32,
}

/// Values written by a round, each with the requests it holds (one value for a coalesced
/// chunk of single-stream requests; one value per stream for a multi-stream request).
type WrittenGroup = Vec<(Vec<Written>, Vec<Pending>)>;

impl Queue {
    /// Writes a group of pending appends (the committer's half of [`Queue::append`]) and
    /// returns the answers, for the caller to send once it no longer holds the queue. The
    /// steps, as the README's durability section tells them: skip what the dedup window
    /// holds; write each stream's share as values; count what was written; record the new
    /// ids; make it all durable with one flush; then answer everyone — or, if anything of
    /// it failed, take the values back and answer everyone with the error.
    fn commit_group(
        &self,
        group: Vec<Pending>,
        synced_blobs: &mut HashSet<std::ffi::OsString>,
    ) -> Vec<(Answer, Result<Stored, QueueError>)> {
        let store = match self.store() {
            Ok(store) => store,
            Err(e) => return self.refuse_all(group, &e),
        };
        let (group, nothing_new) = self.skip_duplicates(group);
        let (written, failed) = self.write_values(&store, group);
        self.count_written(&written);
        let (recorded, new_ids) = self.record_ids(&store, &written);
        // A group is answered as one: if any of it failed, none of it is acknowledged.
        let durable = match failed.first() {
            Some((_, e)) => Err(e.clone()),
            None => Ok(()),
        }
        .and(recorded)
        .and_then(|()| self.make_durable(&store, !written.is_empty(), synced_blobs));
        let mut answers = match durable {
            Ok(()) => self.acknowledge(&store, written, nothing_new),
            Err(e) => self.roll_back(&store, written, nothing_new, &new_ids, &e),
        };
        if let Some((_, e)) = failed.first() {
            self.storage_failed("append", e);
        }
        for (p, e) in failed {
            self.inner.dedup.forget(&p.ids);
            self.inner.admission.release(p.reserved);
            answers.push((p.done, Err(e)));
        }
        answers
    }

    /// Step 1: turns each request into its parts, skipping the idempotent lines the dedup
    /// window holds (in arrival order), and gives back the budget they had reserved.
    /// Returns what is to be written, and the requests left with nothing new.
    fn skip_duplicates(&self, group: Vec<Pending>) -> (Vec<Pending>, Vec<Pending>) {
        let inner = &self.inner;
        let mut nothing_new = Vec::new();
        let mut group: Vec<Pending> = group
            .into_iter()
            .filter_map(|mut p| {
                match std::mem::replace(&mut p.request, Request::Parts(Vec::new())) {
                    Request::Parts(parts) => p.parts = parts,
                    Request::Batch { source, lines } => {
                        let (parts, duplicates, ids) = inner.dedup.filter(&source, lines);
                        (p.parts, p.duplicates, p.ids) = (parts, duplicates, ids);
                    }
                }
                if p.parts.is_empty() {
                    // Nothing new: answered with the group (its copies may be in this very
                    // group, and must be durable before it hears "accepted").
                    inner.admission.release(p.reserved);
                    p.reserved = 0;
                    nothing_new.push(p);
                    return None;
                }
                Some(p)
            })
            .collect();
        // The reservation counted the duplicates too; give their share back.
        for p in &mut group {
            let needed = reserved_bytes(&p.parts);
            inner.admission.release(p.reserved - needed);
            p.reserved = needed;
        }
        (group, nothing_new)
    }

    /// Step 2: writes the values. Requests writing to one stream are coalesced into values
    /// of up to [`MAX_GROUP_ENTRY_BYTES`] (a request is never split); a request writing to
    /// several is one atomic sled batch of its own (see `write_multi`). Returns what was
    /// written and the requests whose write failed.
    fn write_values(
        &self,
        store: &super::store::Store,
        group: Vec<Pending>,
    ) -> (WrittenGroup, Vec<(Pending, QueueError)>) {
        let (single, multi): (Vec<Pending>, Vec<Pending>) =
            group.into_iter().partition(|p| p.parts.len() == 1);
        let mut written: WrittenGroup = Vec::new();
        let mut failed: Vec<(Pending, QueueError)> = Vec::new();
        for (name, requests) in by_stream(single) {
            for chunk in chunks(requests) {
                let count: u32 = chunk.iter().map(|p| p.parts[0].count).sum();
                let enqueued = chunk.iter().map(|p| p.enqueued_ms).min().unwrap_or(0);
                let parts: Vec<&[u8]> = chunk.iter().map(|p| p.parts[0].lines.as_slice()).collect();
                let result = self.fault().and_then(|()| {
                    let trees = store.trees(&name)?;
                    let mut books = self.ledger(&name)?.lock();
                    let next_key = &self.inner.next_key;
                    ledger::add(
                        &mut books,
                        Which::Queue,
                        trees,
                        next_key,
                        enqueued,
                        count,
                        &parts,
                    )
                });
                match result {
                    Ok((key, len)) => {
                        let w = Written {
                            stream: name.clone(),
                            key,
                            len,
                            count,
                        };
                        written.push((vec![w], chunk));
                    }
                    Err(e) => failed.extend(chunk.into_iter().map(|p| (p, e.clone()))),
                }
            }
        }
        for p in multi {
            match self.write_multi(store, &p) {
                Ok(ws) => written.push((ws, vec![p])),
                Err(e) => failed.push((p, e)),
            }
        }
        (written, failed)
    }

    /// Step 3: gives back the budget reserved beyond what was written (one header per
    /// value instead of one per request); the stream's books moved with each write.
    fn count_written(&self, written: &WrittenGroup) {
        for (ws, requests) in written {
            let reserved: u64 = requests.iter().map(|p| p.reserved).sum();
            let used: u64 = ws.iter().map(|w| w.len).sum();
            self.inner.admission.release(reserved - used);
        }
    }

    /// Step 4: records the ids the written requests add to the dedup window, after the
    /// records and into the same flush (see `dedup`). Returns the outcome and the ids.
    fn record_ids(
        &self,
        store: &super::store::Store,
        written: &WrittenGroup,
    ) -> (Result<(), QueueError>, Vec<super::dedup::Id>) {
        let new_ids: Vec<super::dedup::Id> = written
            .iter()
            .flat_map(|(_, requests)| requests.iter().flat_map(|p| p.ids.iter().copied()))
            .collect();
        if new_ids.is_empty() {
            return (Ok(()), new_ids);
        }
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let value = self
            .inner
            .dedup
            .record(key, super::now_ms(), new_ids.clone());
        let recorded = self
            .fault()
            .and_then(|()| Ok(store.dedup.insert(key.to_be_bytes(), value).map(drop)?));
        (recorded, new_ids)
    }

    /// Step 5: in `fsync` mode, one `flush()` and `fdatasync` of sled's data file and of
    /// any new blob file, for everything the round wrote. In `interval` mode sled's
    /// background flush persists it within `flush_interval_ms`.
    fn make_durable(
        &self,
        store: &super::store::Store,
        wrote: bool,
        synced_blobs: &mut HashSet<std::ffi::OsString>,
    ) -> Result<(), QueueError> {
        let inner = &self.inner;
        if !(inner.commit.flush && wrote) {
            return Ok(());
        }
        inner.commit.flushes.fetch_add(1, Ordering::AcqRel);
        crate::metrics::queue_flush();
        self.sync_fault()
            .and_then(|()| store.sync(&inner.config.path))
            .and_then(|()| Ok(sync_new_blobs(&inner.config.path, synced_blobs)?))
    }

    /// Step 6, when the round is durable: counts the records as acknowledged, wakes the
    /// flushers, and answers every request "stored".
    fn acknowledge(
        &self,
        store: &super::store::Store,
        written: WrittenGroup,
        nothing_new: Vec<Pending>,
    ) -> Vec<(Answer, Result<Stored, QueueError>)> {
        let mut answers = Vec::new();
        for (ws, requests) in written {
            for w in ws {
                let ledger = self.ledger(&w.stream).expect("written streams exist");
                ledger.lock().acked += u64::from(w.count);
                ledger.appended.notify_one();
            }
            answers.extend(requests.into_iter().map(|p| {
                let stored = p.stored();
                (p.done, Ok(stored))
            }));
        }
        answers.extend(nothing_new.into_iter().map(|p| {
            let stored = p.stored();
            (p.done, Ok(stored))
        }));
        if let Err(e) = self.inner.dedup.prune(&store.dedup, super::now_ms()) {
            tracing::warn!(error = %e, "cannot prune the dedup window");
        }
        answers
    }

    /// Step 6, when any of the round failed: enters the failed state, takes back the values
    /// and the ids it wrote, and answers every request with the error (nothing of it is
    /// acknowledged, so nothing of it may stay).
    fn roll_back(
        &self,
        store: &super::store::Store,
        written: WrittenGroup,
        nothing_new: Vec<Pending>,
        new_ids: &[super::dedup::Id],
        e: &QueueError,
    ) -> Vec<(Answer, Result<Stored, QueueError>)> {
        self.storage_failed("group flush", e);
        self.inner.dedup.forget(new_ids);
        let mut answers: Vec<_> = nothing_new
            .into_iter()
            .map(|p| (p.done, Err(e.clone())))
            .collect();
        for (ws, requests) in written {
            for w in ws {
                self.take_back(store, &w);
            }
            answers.extend(requests.into_iter().map(|p| (p.done, Err(e.clone()))));
        }
        answers
    }

    /// Writes a request that spans several streams as one stamped insert per stream inside
    /// one multi-tree transaction, so that after a crash either
    /// all of it is there or none. Only such requests pay for sled's transaction lock.
    fn write_multi(
        &self,
        store: &super::store::Store,
        p: &Pending,
    ) -> Result<Vec<Written>, QueueError> {
        use sled::Transactional;
        self.fault()?;
        let mut ws = Vec::new();
        let mut trees = Vec::new();
        let mut values = Vec::new();
        let mut books = Vec::new();
        for part in &p.parts {
            let held = self.ledger(&part.stream)?.lock();
            let next_key = &self.inner.next_key;
            let lines = [&part.lines[..]];
            let (key, value) = ledger::stamped(
                &held,
                Which::Queue,
                next_key,
                p.enqueued_ms,
                part.count,
                &lines,
            );
            let len = value.len() as u64;
            ws.push(Written {
                stream: part.stream.clone(),
                key,
                len,
                count: part.count,
            });
            let t = store.trees(&part.stream)?;
            t.written(len)?;
            trees.push(t.q.clone());
            values.push((key, value));
            books.push(held);
        }
        trees
            .as_slice()
            .transaction(|txs| {
                for (tx, (key, value)) in txs.iter().zip(&values) {
                    tx.insert(&key.to_be_bytes(), value.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| QueueError::Storage(format!("{e:?}")))?;
        for (held, w) in books.iter_mut().zip(&ws) {
            ledger::added(held, Which::Queue, w.count, w.len);
        }
        Ok(ws)
    }

    /// Takes back a value whose request is answered with an error. If the disk refuses even
    /// that, the key is remembered as refused: never delivered, removed once storage works
    /// (and the books recounted from the store then).
    fn take_back(&self, store: &super::store::Store, w: &Written) {
        self.inner.admission.release(w.len);
        let removed = self.ledger(&w.stream).and_then(|ledger| {
            let trees = store.trees(&w.stream)?;
            let out = Out {
                events: u64::from(w.count),
                bytes: w.len,
                delivered: 0,
            };
            ledger::remove(&mut ledger.lock(), Which::Queue, trees, w.key, out)
        });
        if removed.is_err() {
            self.refuse(&w.stream, w.key);
        }
    }

    fn refuse_all(
        &self,
        group: Vec<Pending>,
        e: &QueueError,
    ) -> Vec<(Answer, Result<Stored, QueueError>)> {
        group
            .into_iter()
            .map(|p| {
                self.inner.admission.release(p.reserved);
                (p.done, Err(e.clone()))
            })
            .collect()
    }
}

/// Budget bytes a request with these parts takes.
pub(super) fn reserved_bytes(parts: &[Part]) -> u64 {
    parts.iter().map(Part::budget_bytes).sum()
}

/// Splits single-stream requests by stream, keeping arrival order within each.
fn by_stream(group: Vec<Pending>) -> Vec<(String, Vec<Pending>)> {
    let mut out: Vec<(String, Vec<Pending>)> = Vec::new();
    for p in group {
        match out.iter_mut().find(|(name, _)| *name == p.parts[0].stream) {
            Some((_, list)) => list.push(p),
            None => out.push((p.parts[0].stream.clone(), vec![p])),
        }
    }
    out
}

/// Cuts one stream's requests into entries of at most [`MAX_GROUP_ENTRY_BYTES`] (a larger
/// request is an entry of its own).
fn chunks(requests: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut out: Vec<Vec<Pending>> = Vec::new();
    let mut size = 0;
    for p in requests {
        let len = p.parts[0].lines.len();
        match out.last_mut() {
            Some(last) if size + len <= MAX_GROUP_ENTRY_BYTES => {
                size += len;
                last.push(p);
            }
            _ => {
                size = len;
                out.push(vec![p]);
            }
        }
    }
    out
}

/// `fsync`s blob files written since the last call (sled writes them without syncing).
pub(super) fn sync_new_blobs(
    path: &Path,
    synced: &mut HashSet<std::ffi::OsString>,
) -> std::io::Result<()> {
    let dir = path.join("blobs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut any = false;
    let mut present = HashSet::new();
    for item in entries {
        let name = item?.file_name();
        if !synced.contains(&name) {
            match File::open(dir.join(&name)).and_then(|f| f.sync_data()) {
                Ok(()) => any = true,
                // sled collected it between the listing and the open: nothing to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        present.insert(name);
    }
    if any {
        File::open(&dir)?.sync_all()?;
    }
    // Forget blobs sled has collected, so the set does not grow forever.
    *synced = present;
    Ok(())
}
