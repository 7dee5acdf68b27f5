//! The durable queue: one sled tree per delivery stream, group-committed appends, reads from
//! the head, per-record acknowledgement and a dead-letter tree, guarded against the faults of
//! its own disk.
//!
//! The files, one concern each:
//! - [`entry`]: the value format (header, stamp, checksum, lines);
//! - `ledger.rs`: the accounting — every counter of a stream, the rules that move them, and
//!   how a start reads them back from the trees without walking them;
//! - `commit.rs`: the group commit — how an append becomes durable (check it against the
//!   README's promise there);
//! - `compact.rs`: the background merge of small consecutive entries (bounds sled's values);
//! - [`admission`]: whether an append is taken: byte budget, free-space floor, failed storage;
//! - [`dedup`]: the durable window of accepted `messageId`s (idempotent ingest);
//! - `store.rs`: sled itself (opening it without panicking, trees, walking them);
//! - `open.rs`: the start-up: lock, open or move aside, read the counts, and compare them
//!   with the manifest;
//! - [`manifest`]: the independent record of what the queue must hold (loss detection);
//! - `health.rs`: the background round that reads free space, rewrites the manifest,
//!   recovers failed storage and re-opens sled after every 512 MiB written (both in the
//!   running process);
//! - [`lock`]: one process per queue directory.
//!
//! # Why sled 0.34.7
//! It is sled's only stable release and on-disk format. The 1.0 alphas are faster and give
//! space back, but their format still changes between alphas and their author lists open
//! blockers; a queue that must reopen its own files after an upgrade cannot sit on that.
//! 0.34.7's known traps shape this module:
//! - `flush_async` deadlocks under concurrency (sled #1241, #1357), so appends are made
//!   durable by a **group commit** (see `commit.rs`).
//! - `apply_batch` and transactions take a process-wide write lock that stalls every other
//!   writer and roll the IO buffer twice each; one per append starved sled's file
//!   truncation into a deadlock (its 7 IO threads wait on the segment accountant, whose
//!   holder waits on a truncation queued behind them). So a request's records for one
//!   stream are made **one value**, the counts are kept with single writes (`ledger.rs`),
//!   and only a request that spans several streams is written as a transaction.
//! - It writes its page-table snapshot only when it opens, so an open replays every log
//!   write since the last one: the health round re-opens it while running.
//! - `flush()` ends in `sync_file_range`, which survives a process crash but not a power
//!   loss, and values stored as separate blob files are never synced at all; the committer
//!   `fdatasync`s both, and the segment size keeps entries up to 2 MiB in the synced log.
//! - After an I/O error (a full disk) sled refuses every later operation: recovery re-opens it.
//! - The files never shrink, so the budget is enforced on bytes counted here, not on
//!   `size_on_disk()`.

pub mod admission;
mod background;
mod commit;
mod compact;
pub mod dedup;
pub mod entry;
mod erase;
mod health;
mod ledger;
pub mod lock;
pub mod manifest;
mod open;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

pub use admission::{FreeSpace, RESUME_PERCENT, Statvfs, check_floor};
#[cfg(test)]
pub(crate) use commit::panic_next_round;
pub use dedup::{BatchAppended, BatchLine};
pub use entry::{Entry, Part};
pub use erase::{Erased, Eraser, Suppressed};
pub use open::{StreamReport, VerifyReport};

use crate::config::{Durability, QueueConfig};
use admission::Admission;
use commit::{GroupCommit, Pending, Request};
use ledger::{Books, Ledger, Out, RECORD_KEY, Which};
use store::Store;

/// sled's segment size. A value is written as a separate, never-synced blob file when its log
/// item exceeds a quarter of a segment; 8 MiB keeps items up to 2 MiB in the synced log.
const SEGMENT_SIZE: usize = 8 << 20;

/// Why the queue could not take or give records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The budget of queued bytes is spent; the caller should back off (503).
    #[error("queue is full: {queued} of {max} bytes queued")]
    Full {
        /// Bytes queued now.
        queued: u64,
        /// `queue.max_bytes`.
        max: u64,
    },
    /// One request needs more than the whole budget: it can never be taken, so it is not a
    /// reason to retry (400), unlike [`QueueError::Full`].
    #[error("a request of {bytes} bytes is over the whole queue budget of {max}")]
    OverBudget {
        /// What the request needs.
        bytes: u64,
        /// `queue.max_bytes`.
        max: u64,
    },
    /// The queue's file system is below `queue.min_free_bytes` (503).
    #[error("queue disk is low: {free} bytes free, floor {min}")]
    LowDisk {
        /// Bytes free at the last reading.
        free: u64,
        /// `queue.min_free_bytes`.
        min: u64,
    },
    /// Storage failed and has not recovered yet (503); recovery is automatic.
    #[error("queue storage is failing; retrying in the background")]
    Failing,
    /// The stream is not configured.
    #[error("unknown stream {0}")]
    UnknownStream(String),
    /// The queue is closed (shutting down).
    #[error("queue is closed")]
    Closed,
    /// Another process holds the queue directory.
    #[error("{} is in use by another process ({holder}); one process per queue directory", path.display())]
    InUse {
        /// `queue.path`.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The directory could not be used (permissions, a missing mount): not damage.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// A stored value failed its check.
    #[error("queue entry {key} is damaged: {why}")]
    Damaged {
        /// Its key.
        key: u64,
        /// What is wrong.
        why: String,
    },
    /// sled or the file system failed (disk full, I/O error).
    #[error("storage error: {0}")]
    Storage(String),
    /// A background part of the queue died (see [`Queue::failed`]); the process stops.
    #[error("the queue's {0} stopped after an internal error")]
    Dead(&'static str),
}

impl From<sled::Error> for QueueError {
    fn from(e: sled::Error) -> Self {
        QueueError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        QueueError::Storage(e.to_string())
    }
}

/// The first background part of the queue that died (a panic in sled or in our code): set
/// once, never cleared. The process cannot trust its counts after that, so it stops and its
/// supervisor restarts it (a start re-derives them from disk); until then every append is
/// refused and `/readyz` says why.
pub(super) struct Fatal {
    died: tokio::sync::watch::Sender<Option<&'static str>>,
}

impl Default for Fatal {
    fn default() -> Self {
        Fatal {
            died: tokio::sync::watch::channel(None).0,
        }
    }
}

impl Fatal {
    /// Records that `component` died of `why` (logged and counted the first time only).
    pub(super) fn report(&self, component: &'static str, why: &str) {
        let first = self.died.send_if_modified(|died| {
            let first = died.is_none();
            if first {
                *died = Some(component);
            }
            first
        });
        if first {
            tracing::error!(
                component,
                panic = why,
                "a queue component died: refusing appends (503) and stopping the process so that its supervisor restarts it"
            );
            crate::metrics::component_failed(component);
        }
    }

    fn get(&self) -> Option<&'static str> {
        *self.died.borrow()
    }
}

/// The queue, shared by the server (appends) and the flushers (reads, acks).
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    config: QueueConfig,
    /// `None` while sled is being re-opened after a failure.
    store: RwLock<Option<Arc<Store>>>,
    /// Per stream: its counts and the lock that orders its writers (see [`ledger`]).
    streams: HashMap<String, Ledger>,
    next_key: AtomicU64,
    /// Entries the start read to count them (0 when every tree's summary was there).
    read_at_open: u64,
    admission: Admission,
    commit: Arc<GroupCommit>,
    health: Arc<health::Health>,
    compactor: Arc<compact::Compactor>,
    closed: AtomicBool,
    /// Keys written for requests that were answered with an error and could not be taken
    /// back: never delivered, removed once storage works.
    refused: Mutex<HashMap<String, HashSet<u64>>>,
    dedup: dedup::Dedup,
    manifest: Mutex<manifest::Writer>,
    fatal: Fatal,
    free_space: Box<dyn FreeSpace>,
    _lock: lock::DirLock,
    /// Decides which records of entries marked for a recheck go (see `erase.rs`).
    eraser: RwLock<Option<Eraser>>,
    /// Tests: storage refuses writes (or only flushes), as a failing disk would.
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.commit.stop();
        self.compactor.stop();
        self.health.stop();
    }
}

impl Queue {
    /// Opens (or creates) the queue at `config.path`, with a tree pair per stream, reading
    /// free space with `statvfs`. See [`Queue::open_with`].
    pub fn open(config: &QueueConfig, streams: &[String]) -> Result<Queue, QueueError> {
        Queue::open_with(config, streams, Box::new(Statvfs))
    }

    /// Opens the queue: takes the directory's lock (refusing if another process holds it),
    /// opens sled (moving a damaged database aside, never deleting it, and starting fresh),
    /// counts what every stream holds and reports any shortfall against the manifest.
    pub fn open_with(
        config: &QueueConfig,
        streams: &[String],
        free_space: Box<dyn FreeSpace>,
    ) -> Result<Queue, QueueError> {
        open::open(config, streams, free_space)
    }

    /// Checks a stopped queue without changing it: sled opens, every entry passes its
    /// checksum, and each stream holds what the manifest says it must.
    pub fn verify(config: &QueueConfig, streams: &[String]) -> Result<VerifyReport, QueueError> {
        open::verify(config, streams)
    }

    fn ledger(&self, name: &str) -> Result<&Ledger, QueueError> {
        self.inner
            .streams
            .get(name)
            .ok_or_else(|| QueueError::UnknownStream(name.to_owned()))
    }

    /// The current sled store, or [`QueueError::Failing`] while it is being re-opened.
    fn store(&self) -> Result<Arc<Store>, QueueError> {
        self.inner.store.read().clone().ok_or(QueueError::Failing)
    }

    /// Tests' write failure, checked where storage is written.
    fn fault(&self) -> Result<(), QueueError> {
        match self.inner.fail_writes.load(Ordering::Acquire) {
            true => Err(QueueError::Storage("injected write failure".to_owned())),
            false => Ok(()),
        }
    }

    /// Tests' flush failure, checked before a group flush.
    fn sync_fault(&self) -> Result<(), QueueError> {
        match self.inner.fail_syncs.load(Ordering::Acquire) {
            true => Err(QueueError::Storage("injected flush failure".to_owned())),
            false => self.fault(),
        }
    }

    /// Tests: makes storage writes fail (or work again), as a full disk would.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.inner.fail_writes.store(fail, Ordering::Release);
    }

    /// Tests: a crash. Stops the background threads without flushing or writing anything,
    /// and drops this handle, so the directory is free when it returns (a dropped handle
    /// alone may be outlived for a moment by a health round holding the queue).
    #[cfg(test)]
    pub(crate) fn crash(self) {
        self.inner.commit.stop();
        self.inner.compactor.stop();
        self.inner.health.stop();
    }

    /// Tests: entries stay as appended (the compactor does not run).
    #[cfg(test)]
    pub(crate) fn stop_compactor(&self) {
        self.inner.compactor.stop();
    }

    /// Tests: the committer panics in its next round (as a bug in sled or in our code would).
    #[cfg(test)]
    pub(crate) fn panic_next_commit(&self) {
        commit::panic_next_round(&self.inner.config.path);
    }

    /// Tests: makes group flushes fail (or work again) while single writes work.
    #[cfg(test)]
    pub(crate) fn fail_syncs(&self, fail: bool) {
        self.inner.fail_syncs.store(fail, Ordering::Release);
    }

    /// Appends one request's `count` NDJSON lines to `stream`, and returns once they are
    /// durable as `queue.durability` defines. The lines go into one entry (with other
    /// requests' in fsync mode, never split), so either all are queued or, on error, none.
    pub async fn append(&self, stream: &str, lines: &[u8], count: u32) -> Result<(), QueueError> {
        self.append_parts(vec![Part {
            stream: stream.to_owned(),
            lines: lines.to_vec(),
            count,
        }])
        .await
    }

    /// Appends every line of one request (possibly for several streams) atomically — all
    /// durable (per `queue.durability`) before it returns `Ok`, or none stored — skipping
    /// lines whose `message_id` was already accepted from `source` within the dedup window.
    /// The ids are recorded in the same group commit as the records (see [`dedup`]).
    pub async fn append_batch(
        &self,
        source: &str,
        lines: Vec<BatchLine>,
    ) -> Result<BatchAppended, QueueError> {
        let stored = self
            .submit(Request::Batch {
                source: source.to_owned(),
                lines,
            })
            .await?;
        Ok(BatchAppended {
            stored: stored.per_stream.iter().map(|(_, n)| n).sum(),
            duplicates: stored.duplicates,
            per_stream: stored.per_stream,
        })
    }

    /// Appends one request's lines for one or more streams: all durable, or none stored.
    async fn append_parts(&self, parts: Vec<Part>) -> Result<(), QueueError> {
        self.submit(Request::Parts(parts)).await.map(drop)
    }

    /// Hands a request to the committer and waits for its answer (what it stored).
    async fn submit(&self, request: Request) -> Result<commit::Stored, QueueError> {
        let reserved = match &request {
            Request::Parts(parts) => {
                for part in parts {
                    self.ledger(&part.stream)?;
                }
                commit::reserved_bytes(parts)
            }
            Request::Batch { lines, .. } => {
                let mut streams: Vec<&str> = Vec::new();
                for l in lines {
                    self.ledger(&l.stream)?;
                    if !streams.contains(&l.stream.as_str()) {
                        streams.push(&l.stream);
                    }
                }
                let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
                (bytes + streams.len() * entry::HEADER_LEN) as u64
            }
        };
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        if let Some(component) = self.inner.fatal.get() {
            return Err(QueueError::Dead(component));
        }
        self.inner.admission.reserve(reserved)?;
        // The committer writes it (with whatever else is pending) and answers once it is
        // in sled, after the flush that covers it in `fsync` mode.
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            request,
            parts: Vec::new(),
            duplicates: 0,
            ids: Vec::new(),
            enqueued_ms: now_ms(),
            reserved,
            done,
        };
        if self.inner.commit.submit(pending).is_err() {
            self.inner.admission.release(reserved);
            return Err(QueueError::Closed);
        }
        answer.await.unwrap_or(Err(QueueError::Closed))
    }

    /// Up to `max_entries` entries from the head of `stream` (oldest first), skipping keys in
    /// `skip` (entries already in flight). Read from the head each time, never from a saved
    /// cursor: concurrent appends can commit key k+1 before k, and a cursor would pass k by.
    /// A damaged entry is moved to the damaged tree and reported, never delivered.
    pub fn read_head(
        &self,
        stream: &str,
        skip: &HashSet<u64>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        let ledger = self.ledger(stream)?;
        let store = self.store()?;
        let trees = store.trees(stream)?;
        let refused = self.refused_keys(stream);
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        // Under the stream's lock, so that the compactor (which merges only keys above what
        // was handed out, checked under this lock) never merges an entry being handed out.
        let mut books = ledger.lock();
        let mut flight = ledger.flight.lock();
        flight.out.retain(|key| skip.contains(key));
        let eraser = self.eraser();
        let mut first = true;
        for item in ledger.head_on(&trees.q) {
            if out.len() >= max_entries || bytes >= max_bytes {
                break;
            }
            let (k, v) = item?;
            let key = entry::key_of(&k)?;
            if std::mem::take(&mut first) {
                ledger.head.fetch_max(key, Ordering::AcqRel);
            }
            if skip.contains(&key) || refused.contains(&key) {
                continue;
            }
            // Counted once per hand-out: entries in flight are passed over again and again,
            // but their pages are the same.
            trees.read(v.len());
            match Entry::decode(&k, v.clone()) {
                Ok(mut entry) => {
                    // Not out (the caller holds what is): a deletion request's recheck
                    // happens now, before it is sent.
                    if let Some(eraser) = eraser.as_ref().filter(|_| flight.recheck.contains(&key))
                    {
                        let (now, _) =
                            self.erase_in(&mut books, trees, stream, Which::Queue, entry, eraser)?;
                        flight.recheck.remove(&key);
                        match now {
                            Some(e) => entry = e,
                            None => continue,
                        }
                    }
                    bytes += entry.lines.len();
                    flight.out.insert(key);
                    out.push(entry);
                }
                Err(QueueError::Damaged { why, .. }) => {
                    self.quarantine(&mut books, &store, stream, key, v, &why)?
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(last) = out.last() {
            ledger.handed_out.fetch_max(last.key + 1, Ordering::AcqRel);
        }
        self.inner.health.renew_if_due(&store);
        if out.is_empty() && skip.is_empty() && refused.is_empty() {
            self.check_drained(&mut books, &store, stream)?;
        }
        Ok(out)
    }

    /// Called, under the stream's lock, when `stream` reads empty with nothing in flight: if
    /// its books still hold events, the store lost them behind the queue's back (the books
    /// are exact otherwise: see [`ledger`]). Reported once, and the books follow the store.
    fn check_drained(
        &self,
        books: &mut Books,
        store: &Store,
        stream: &str,
    ) -> Result<(), QueueError> {
        let held = books.q;
        if held.events() == 0 && held.bytes() == 0 {
            return Ok(());
        }
        let trees = store.trees(stream)?;
        let ledger = self.ledger(stream)?;
        if ledger.head_on(&trees.q).next().transpose()?.is_some() {
            return Ok(());
        }
        let claimed = held.events();
        tracing::error!(%stream, missing_events = claimed, "the queue holds fewer events than were acknowledged: {claimed} acknowledged events of {stream} are missing (found when the stream drained)");
        crate::metrics::queue_lost_events(stream, claimed);
        let out = Out {
            events: claimed,
            bytes: held.bytes(),
            delivered: 0,
        };
        ledger::write_off(books, Which::Queue, trees, out)?;
        books.lost += claimed;
        self.inner.admission.release(out.bytes);
        Ok(())
    }

    /// Moves a damaged value out of the delivery path into `damaged/<stream>` and reports the
    /// events it claimed as lost (under the stream's lock).
    fn quarantine(
        &self,
        books: &mut Books,
        store: &Store,
        stream: &str,
        key: u64,
        v: sled::IVec,
        why: &str,
    ) -> Result<(), QueueError> {
        let trees = store.trees(stream)?;
        let claimed = u64::from(Entry::claimed_count(&v).unwrap_or(0));
        // Kept first, then taken out of the queue: a crash between leaves it in both, and
        // the next read quarantines it again (the damaged tree holds it once, by key).
        trees.damaged.insert(key.to_be_bytes(), v.clone())?;
        books.damaged.values += 1;
        books.damaged.events += claimed;
        // The books counted the entry as written; a damaged header may claim another count,
        // and its budget is what an entry of its size takes.
        let held = books.q;
        let lines = v.len().saturating_sub(entry::HEADER_LEN);
        let out = Out {
            events: claimed.min(held.events()),
            bytes: Entry::budget_of(lines).min(held.bytes()),
            delivered: 0,
        };
        ledger::remove(books, Which::Queue, trees, key, out)?;
        self.inner.admission.release(out.bytes);
        tracing::error!(%stream, %why, events = claimed, "a queue entry is damaged: moved to the damaged tree (kept, not delivered)");
        books.lost += claimed;
        crate::metrics::queue_lost_events(stream, claimed);
        Ok(())
    }

    /// Settles `entry` after a delivery attempt: `remaining` holds the lines the sink did not
    /// accept (empty when it took them all). Accepted lines leave the queue; the rest stay
    /// under the same key, so they keep their place at the head.
    pub fn settle(
        &self,
        stream: &str,
        entry: &Entry,
        remaining: &[&[u8]],
    ) -> Result<(), QueueError> {
        self.settle_inner(&*self.store()?, stream, entry, remaining, None)
    }

    /// [`Queue::settle`], where `dead` of the lines that leave go to the dead-letter tree
    /// (still held, so not counted as delivered).
    fn settle_inner(
        &self,
        store: &Store,
        stream: &str,
        entry: &Entry,
        remaining: &[&[u8]],
        dead: Option<&[&[u8]]>,
    ) -> Result<(), QueueError> {
        let ledger = self.ledger(stream)?;
        let mut books = ledger.lock();
        let mut flight = ledger.flight.lock();
        flight.out.remove(&entry.key);
        // A deletion request came while it was out: the user's lines go now, whether the
        // sink was to take them again or refused them for good.
        let (kept, kept_dead) = (
            self.unerased(&flight, entry.key, remaining),
            dead.and_then(|lines| self.unerased(&flight, entry.key, lines)),
        );
        let erased = kept.as_ref().map_or(0, |k| remaining.len() - k.len())
            + kept_dead
                .as_ref()
                .map_or(0, |k| dead.map_or(0, |d| d.len()) - k.len());
        let remaining = kept.as_deref().unwrap_or(remaining);
        let dead = kept_dead.as_deref().or(dead).filter(|d| !d.is_empty());
        let leaving = u64::from(entry.count) - remaining.len() as u64;
        if leaving == 0 {
            flight.recheck.remove(&entry.key);
            return Ok(());
        }
        self.fault()?;
        let trees = store.trees(stream)?;
        // The record of what leaves is written before the entry changes: a removal can
        // never look like a loss, and a crash between is told apart at the next start.
        // Erased lines leave on purpose, like delivered ones (see `erase.rs`).
        let out = Out {
            events: leaving,
            bytes: 0,
            delivered: leaving - dead.map_or(0, |lines| lines.len() as u64),
        };
        // A dead letter's key is taken under the lock, like every key of the stream's trees
        // (key order is stamp order); the queue tree's record names it before it is written,
        // so a crash before the original changes takes the copy back (`ledger::recover`).
        let dead = dead.map(|lines| ledger::DeadLetter {
            key: self.inner.next_key.fetch_add(1, Ordering::Relaxed),
            lines,
        });
        let path = &self.inner.config.path;
        let freed = ledger::take_out(
            &mut books,
            Which::Queue,
            trees,
            entry,
            remaining,
            out,
            dead,
            || store.sync(path),
        )?;
        flight.recheck.remove(&entry.key);
        drop(flight);
        drop(books);
        self.inner.admission.release(freed);
        if erased > 0 {
            crate::metrics::queue_erased(stream, erased as u64);
        }
        Ok(())
    }

    /// Moves `lines` of `entry` (which the sink refused for good) to the dead-letter tree, and
    /// settles the entry. Records are never dropped silently.
    pub fn dead_letter(
        &self,
        stream: &str,
        entry: &Entry,
        lines: &[&[u8]],
        remaining: &[&[u8]],
    ) -> Result<(), QueueError> {
        self.ledger(stream)?;
        self.fault()?;
        let store = self.store()?;
        self.settle_inner(&store, stream, entry, remaining, Some(lines))
    }

    /// Every dead-lettered entry of `stream`, oldest first.
    pub fn dead_letters(&self, stream: &str) -> Result<Vec<Entry>, QueueError> {
        dead_letters_in(&*self.store()?, stream)
    }

    /// Moves every dead letter of `stream` back to the tail of its queue (after the operator
    /// fixed what made the sink refuse them), flushes, and returns how many records moved.
    pub fn replay_dead_letters(&self, stream: &str) -> Result<u64, QueueError> {
        let ledger = self.ledger(stream)?;
        let store = self.store()?;
        let trees = store.trees(stream)?;
        let mut moved = 0;
        for entry in dead_letters_in(&store, stream)? {
            let count = u64::from(entry.count);
            let mut books = ledger.lock();
            let next_key = &self.inner.next_key;
            let lines = [&entry.lines[..]];
            let at = entry.enqueued_ms;
            let (_, len) = ledger::add(
                &mut books,
                Which::Queue,
                trees,
                next_key,
                at,
                entry.count,
                &lines,
            )?;
            self.inner.admission.add(len);
            let out = Out {
                events: count,
                bytes: entry.budget_bytes(),
                delivered: 0,
            };
            ledger::remove(&mut books, Which::Dead, trees, entry.key, out)?;
            moved += count;
        }
        store.sync(&self.inner.config.path)?;
        ledger.appended.notify_one();
        Ok(moved)
    }

    /// Records in the dead-letter tree of `stream`.
    pub fn dead_letter_events(&self, stream: &str) -> u64 {
        self.ledger(stream).map_or(0, |l| l.books().dead.events())
    }

    /// Removes a refused key (see [`Queue::refuse`]) once storage works again.
    fn remove_refused(&self, store: &Store, stream: &str, key: u64) -> Result<(), QueueError> {
        let trees = store.trees(stream)?;
        let mut books = self.ledger(stream)?.lock();
        let Some(v) = trees.q.get(key.to_be_bytes())? else {
            return Ok(());
        };
        let lines = v.len().saturating_sub(entry::HEADER_LEN);
        let out = Out {
            events: u64::from(Entry::claimed_count(&v).unwrap_or(0)),
            bytes: Entry::budget_of(lines),
            delivered: 0,
        };
        ledger::remove(&mut books, Which::Queue, trees, key, out)?;
        self.inner
            .admission
            .release(out.bytes.min(self.inner.admission.queued()));
        Ok(())
    }

    fn refuse(&self, stream: &str, key: u64) {
        self.inner
            .refused
            .lock()
            .entry(stream.to_owned())
            .or_default()
            .insert(key);
    }

    fn refused_keys(&self, stream: &str) -> HashSet<u64> {
        let refused = self.inner.refused.lock();
        refused.get(stream).cloned().unwrap_or_default()
    }

    /// Enters the failed state after a storage error (logged once per state change).
    fn storage_failed(&self, during: &str, e: &QueueError) {
        if self.inner.admission.set_failing(true) {
            tracing::error!(during, error = %e, "queue storage failed: answering 503 and pausing deliveries until writes work again");
            self.inner.health.wake();
        }
    }

    /// Resolves after the next append to `stream` (or at once if one happened since the last
    /// call), so an idle flusher wakes without polling.
    pub async fn appended(&self, stream: &str) {
        if let Ok(l) = self.ledger(stream) {
            l.appended.notified().await;
        }
    }

    /// Entries this queue's start read to count what it holds: 0 when every tree's summary
    /// was there, whatever the queue holds (see [`ledger`]).
    pub fn entries_read_at_open(&self) -> u64 {
        self.inner.read_at_open
    }

    /// Records (lines) queued in `stream`.
    pub fn queued_events(&self, stream: &str) -> u64 {
        self.ledger(stream).map_or(0, |l| l.books().q.events())
    }

    /// What has come into `stream`'s queue tree, in (events, bytes), a count that only
    /// grows: the flusher tells from it whether appends could have filled a batch.
    pub fn came_in(&self, stream: &str) -> (u64, u64) {
        self.ledger(stream).map_or((0, 0), |l| {
            let came = l.books().q.came_in;
            (came.events, came.bytes)
        })
    }

    /// Bytes queued across all streams (what `queue.max_bytes` limits).
    pub fn queued_bytes(&self) -> u64 {
        self.inner.admission.queued()
    }

    /// `queue.max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.inner.admission.max_bytes()
    }

    /// Whether appends are refused for the budget: from the first refusal until the queue
    /// drained below [`RESUME_PERCENT`] of `queue.max_bytes`.
    pub fn is_full(&self) -> bool {
        self.inner.admission.is_full()
    }

    /// Resolves with the name of a background part of the queue (the committer, the health
    /// round) once one has died; the caller should stop the process (see [`Fatal`]).
    pub async fn failed(&self) -> &'static str {
        let mut died = self.inner.fatal.died.subscribe();
        let component = died.wait_for(Option::is_some).await.map(|d| *d);
        match component {
            Ok(Some(component)) => component,
            // The sender lives as long as the queue: unreachable while `self` is held.
            _ => std::future::pending().await,
        }
    }

    /// Why appends are refused now, if they are (for `/readyz`).
    pub fn unready_reason(&self) -> Option<&'static str> {
        let a = &self.inner.admission;
        if let Some(component) = self.inner.fatal.get() {
            return Some(match component {
                commit::COMPONENT => "queue committer died",
                compact::COMPONENT => "queue compactor died",
                _ => "queue health round died",
            });
        }
        if a.is_failing() {
            Some("queue storage failing")
        } else if a.is_low_disk() {
            Some("queue disk below its free-space floor")
        } else if a.is_full() {
            Some("queue at its byte budget")
        } else {
            None
        }
    }

    /// Runs one health round now (free space, manifest, recovery) instead of waiting for the
    /// background one.
    pub fn check_health_now(&self) {
        health::round(self);
    }

    /// Enqueue time (ms since the epoch) of the oldest entry of `stream`.
    pub fn oldest_ms(&self, stream: &str) -> Result<Option<u64>, QueueError> {
        let store = self.store()?;
        let first = store
            .trees(stream)?
            .q
            .range(..RECORD_KEY)
            .next()
            .transpose()?;
        Ok(first.and_then(|(k, v)| Entry::decode(&k, v).ok().map(|e| e.enqueued_ms)))
    }

    /// Size of the sled files on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.store()
            .ok()
            .and_then(|s| s.db.size_on_disk().ok())
            .unwrap_or(0)
    }

    /// Group flushes performed so far (0 in `interval` mode).
    pub fn flush_count(&self) -> u64 {
        self.inner.commit.flushes.load(Ordering::Acquire)
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.inner.config.durability
    }

    /// The values the queue's gauges show.
    pub fn gauges(&self, streams: &[String]) -> crate::metrics::QueueGauges {
        let now = now_ms();
        let a = &self.inner.admission;
        crate::metrics::QueueGauges {
            streams: streams
                .iter()
                .map(|stream| crate::metrics::StreamGauges {
                    stream: stream.clone(),
                    depth: self.queued_events(stream),
                    oldest_age_seconds: match self.oldest_ms(stream) {
                        Ok(Some(t)) => now.saturating_sub(t) as f64 / 1000.0,
                        _ => 0.0,
                    },
                    dead_letters: self.dead_letter_events(stream),
                })
                .collect(),
            disk_bytes: self.size_on_disk(),
            budget_bytes: a.queued(),
            free_bytes: a.free_bytes.load(Ordering::Acquire),
            low_disk: a.is_low_disk(),
            storage_failed: a.is_failing(),
        }
    }

    /// The manifest's counts now.
    fn manifest_counts(&self) -> BTreeMap<String, manifest::Counts> {
        self.inner
            .streams
            .iter()
            .map(|(name, l)| (name.clone(), l.books().manifest()))
            .collect()
    }

    /// Rewrites the manifest (skipped when nothing changed).
    fn write_manifest(&self) -> Result<(), QueueError> {
        let counts = self.manifest_counts();
        self.inner.manifest.lock().write(&counts)?;
        Ok(())
    }

    /// Refuses further appends, stops the committer and the health round, and flushes
    /// everything (and the manifest) to disk. Callers stop the flushers first.
    pub fn close(&self) -> Result<(), QueueError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.commit.stop();
        self.inner.compactor.stop();
        self.inner.health.stop();
        let store = self.store()?;
        store.sync(&self.inner.config.path)?;
        self.write_manifest()
    }
}

/// Every dead-lettered entry of `stream` in `store`, oldest first.
fn dead_letters_in(store: &Store, stream: &str) -> Result<Vec<Entry>, QueueError> {
    store
        .trees(stream)?
        .dead
        .range(..RECORD_KEY)
        .map(|item| {
            item.map_err(QueueError::from)
                .and_then(|(k, v)| Entry::decode(&k, v))
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
