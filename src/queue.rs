//! The durable queue: one sled tree per delivery stream, group-committed appends, reads from
//! the head, per-record acknowledgement and a dead-letter tree.
//!
//! # Why sled 0.34.7
//! It is sled's only stable release and on-disk format. The 1.0 alphas are faster and give
//! space back, but their format still changes between alphas and their author lists open
//! blockers; a queue that must reopen its own files after an upgrade cannot sit on that.
//! 0.34.7's known traps shape this file:
//! - `flush_async` deadlocks under concurrency (sled #1241, #1357), so appends are made
//!   durable by a **group commit**: one committer thread flushes for every append since its
//!   last flush and publishes the covered generation on a `watch` channel.
//! - `apply_batch` and transactions take a process-wide write lock that stalls every other
//!   writer, so a request's records are made **one value** (one entry): a single `insert` is
//!   atomic, so a request is queued whole or not at all.
//! - `flush()` ends in `sync_file_range`, which survives a process crash but not a power
//!   loss, and values stored as separate blob files are never synced at all. After each group
//!   flush the committer therefore `fdatasync`s the data file and any new blob file, and the
//!   segment size is raised so that entries up to 2 MiB stay in the (synced) log.
//! - The files never shrink, so the budget is enforced on bytes counted here, not on
//!   `size_on_disk()`.
//!
//! # Layout
//! Tree `q/<stream>`: key = big-endian `u64` sequence number (so iteration order is age
//! order), value = [`Entry`]: a small header and the request's NDJSON lines. A partially
//! delivered entry is rewritten in place with only its undelivered lines. Tree
//! `dead/<stream>`: the same layout, for records the sink refused for good.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, oneshot};

use crate::config::{Durability, QueueConfig};

/// sled's segment size. A value is written as a separate, never-synced blob file when its log
/// item exceeds a quarter of a segment; 8 MiB keeps items up to 2 MiB in the synced log.
const SEGMENT_SIZE: usize = 8 << 20;

/// After hitting the budget, appends resume once the queue is below this share of it.
pub const RESUME_PERCENT: u64 = 90;

/// Bytes of an entry's header: version (1), enqueue time in ms (8), line count (4).
const HEADER_LEN: usize = 13;
const ENTRY_VERSION: u8 = 1;

/// Why the queue could not take or give records.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The budget of queued bytes is spent; the caller should back off (503).
    #[error("queue is full: {queued} of {max} bytes queued")]
    Full {
        /// Bytes queued now.
        queued: u64,
        /// `queue.max_bytes`.
        max: u64,
    },
    /// The stream is not configured.
    #[error("unknown stream {0}")]
    UnknownStream(String),
    /// The queue is closed (shutting down).
    #[error("queue is closed")]
    Closed,
    /// sled or the file system failed (disk full, I/O error, corruption).
    #[error("storage error: {0}")]
    Storage(String),
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

/// One queued request (or what is left of it): its key and its NDJSON lines.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence number; the head of a stream is its smallest key.
    pub key: u64,
    /// When the entry was first appended, in ms since the Unix epoch.
    pub enqueued_ms: u64,
    /// Number of lines in `lines`.
    pub count: u32,
    /// NDJSON lines, each ending in `\n`.
    pub lines: sled::IVec,
}

impl Entry {
    fn encode(enqueued_ms: u64, count: u32, lines: &[u8]) -> Vec<u8> {
        let mut value = Vec::with_capacity(HEADER_LEN + lines.len());
        value.push(ENTRY_VERSION);
        value.extend_from_slice(&enqueued_ms.to_be_bytes());
        value.extend_from_slice(&count.to_be_bytes());
        value.extend_from_slice(lines);
        value
    }

    fn decode(key: &[u8], value: sled::IVec) -> Result<Entry, QueueError> {
        let key = <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .map_err(|_| QueueError::Storage(format!("bad key length {}", key.len())))?;
        if value.len() < HEADER_LEN || value[0] != ENTRY_VERSION {
            return Err(QueueError::Storage(format!("entry {key} has a bad header")));
        }
        let enqueued_ms = u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
        let count = u32::from_be_bytes(value[9..13].try_into().expect("4 bytes"));
        Ok(Entry {
            key,
            enqueued_ms,
            count,
            lines: value.subslice(HEADER_LEN, value.len() - HEADER_LEN),
        })
    }

    /// The lines one by one, each with its `\n`.
    pub fn iter_lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.split_inclusive(|&b| b == b'\n')
    }

    /// Bytes this entry counts against the budget.
    fn budget_bytes(&self) -> u64 {
        (HEADER_LEN + self.lines.len()) as u64
    }
}

/// Per-stream trees and counters.
struct Stream {
    tree: sled::Tree,
    dead: sled::Tree,
    /// Records (lines) queued.
    events: AtomicU64,
    /// Budget bytes of this stream's entries (the sum over streams is `queued_bytes`).
    bytes: AtomicU64,
    /// Records (lines) in the dead-letter tree.
    dead_events: AtomicU64,
    /// Woken after every append, so an idle flusher starts at once.
    appended: Notify,
}

/// The queue, shared by the server (appends) and the flushers (reads, acks).
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    streams: HashMap<String, Stream>,
    next_key: AtomicU64,
    queued_bytes: AtomicU64,
    max_bytes: u64,
    /// Set when an append is refused for the budget; cleared once the queue drains below
    /// [`RESUME_PERCENT`] of it. While set, every append is refused, so clients back off
    /// for a while instead of squeezing small requests into the last bytes.
    full: AtomicBool,
    durability: Durability,
    commit: Arc<GroupCommit>,
    closed: AtomicBool,
    /// Counters saved at a clean close, and the clean mark.
    meta: sled::Tree,
    /// Tests: refuse settles as a failing disk would.
    #[cfg(test)]
    fail_writes: AtomicBool,
}

impl Queue {
    /// Opens (or creates) the queue at `config.path` with a tree pair per stream, and counts
    /// what is already queued.
    pub fn open(config: &QueueConfig, streams: &[String]) -> Result<Queue, QueueError> {
        std::fs::create_dir_all(&config.path)?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(Some(config.flush_interval_ms))
            .open()?;
        // After a clean close the counters were saved; trust them, and clear the mark at
        // once so that a crash from here on forces a recount. Walking a large queue takes
        // ~1 µs an entry and pulls it all into memory, so only a crash pays for it.
        let meta = db.open_tree("meta")?;
        let saved = Saved::load(&meta)?;
        if saved.is_some() {
            meta.remove(CLEAN_KEY)?;
            db.flush()?;
        }
        let mut map = HashMap::new();
        let mut next_key = saved.as_ref().map_or(0, |s| s.next_key);
        let mut queued_bytes = 0;
        for name in streams {
            let tree = db.open_tree(format!("q/{name}"))?;
            let dead = db.open_tree(format!("dead/{name}"))?;
            let counts = match saved.as_ref().and_then(|s| s.streams.get(name)) {
                Some(counts) => *counts,
                None => Counts::walk(&tree, &dead)?,
            };
            next_key = next_key.max(counts.next_key);
            queued_bytes += counts.bytes;
            map.insert(
                name.clone(),
                Stream {
                    tree,
                    dead,
                    events: AtomicU64::new(counts.events),
                    bytes: AtomicU64::new(counts.bytes),
                    dead_events: AtomicU64::new(counts.dead_events),
                    appended: Notify::new(),
                },
            );
        }
        warn_about_unconfigured_streams(&db, streams);
        // Both modes write through the committer, which coalesces concurrent requests into
        // few sled values; only `fsync` waits for a flush before answering.
        let commit = Arc::new(GroupCommit::new(config.durability == Durability::Fsync));
        let inner = Arc::new(Inner {
            db,
            path: config.path.clone(),
            streams: map,
            next_key: AtomicU64::new(next_key),
            queued_bytes: AtomicU64::new(queued_bytes),
            max_bytes: config.max_bytes,
            full: AtomicBool::new(false),
            durability: config.durability,
            commit,
            closed: AtomicBool::new(false),
            meta,
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
        });
        inner.commit.spawn(Arc::downgrade(&inner))?;
        Ok(Queue { inner })
    }

    fn stream(&self, name: &str) -> Result<&Stream, QueueError> {
        self.inner
            .streams
            .get(name)
            .ok_or_else(|| QueueError::UnknownStream(name.to_owned()))
    }

    /// Appends one request's `count` NDJSON lines to `stream`, and returns once they are
    /// durable as `queue.durability` defines. The lines go into one entry (with other
    /// requests' in fsync mode, never split), so either all are queued or, on error, none.
    pub async fn append(&self, stream: &str, lines: &[u8], count: u32) -> Result<(), QueueError> {
        self.stream(stream)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        let size = (HEADER_LEN + lines.len()) as u64;
        self.reserve(size)?;
        // The committer writes it (with whatever else is pending) and answers once it is
        // in sled, after the flush that covers it in `fsync` mode.
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            stream: stream.to_owned(),
            lines: lines.to_vec(),
            count,
            enqueued_ms: now_ms(),
            reserved: size,
            done,
        };
        if self.inner.commit.submit(pending).is_err() {
            self.inner.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(QueueError::Closed);
        }
        answer.await.unwrap_or(Err(QueueError::Closed))
    }

    /// Writes a group of pending appends (the committer's half of [`Queue::append`]): one
    /// entry per stream per up to [`MAX_GROUP_ENTRY_BYTES`], one flush for all. A request is
    /// never split across entries, so each stays atomic. Returns the answers, for the caller
    /// to send once it no longer holds the queue.
    fn commit_group(
        &self,
        group: Vec<Pending>,
        synced_blobs: &mut HashSet<std::ffi::OsString>,
    ) -> Vec<(Answer, Result<(), QueueError>)> {
        let mut answers = Vec::with_capacity(group.len());
        let inner = &self.inner;
        // (stream, key, value length, the requests in it)
        let mut written: Vec<(&Stream, u64, u64, Vec<Pending>)> = Vec::new();
        let mut failed: Vec<(Pending, QueueError)> = Vec::new();
        for (name, requests) in by_stream(group) {
            let Some(s) = inner.streams.get(&name) else {
                failed.extend(
                    requests
                        .into_iter()
                        .map(|p| (p, QueueError::UnknownStream(name.clone()))),
                );
                continue;
            };
            for chunk in chunks(requests) {
                let count = chunk.iter().map(|p| p.count).sum();
                let enqueued = chunk.iter().map(|p| p.enqueued_ms).min().unwrap_or(0);
                let mut value = Vec::with_capacity(
                    HEADER_LEN + chunk.iter().map(|p| p.lines.len()).sum::<usize>(),
                );
                value.extend_from_slice(&Entry::encode(enqueued, count, &[]));
                for p in &chunk {
                    value.extend_from_slice(&p.lines);
                }
                let len = value.len() as u64;
                let key = inner.next_key.fetch_add(1, Ordering::Relaxed);
                match s.tree.insert(key.to_be_bytes(), value) {
                    Ok(_) => {
                        // One header for the group instead of one per request.
                        let reserved: u64 = chunk.iter().map(|p| p.reserved).sum();
                        inner
                            .queued_bytes
                            .fetch_sub(reserved - len, Ordering::AcqRel);
                        s.bytes.fetch_add(len, Ordering::AcqRel);
                        s.events.fetch_add(u64::from(count), Ordering::AcqRel);
                        written.push((s, key, len, chunk));
                    }
                    Err(e) => {
                        let e = QueueError::from(e);
                        for p in chunk {
                            inner.queued_bytes.fetch_sub(p.reserved, Ordering::AcqRel);
                            failed.push((p, QueueError::Storage(e.to_string())));
                        }
                    }
                }
            }
        }
        let commit = &inner.commit;
        let flushed = match commit.flush {
            true => {
                commit.flushes.fetch_add(1, Ordering::AcqRel);
                crate::metrics::queue_flush();
                inner
                    .db
                    .flush()
                    .map_err(|e| e.to_string())
                    .and_then(|_| sync_data_file(&inner.path).map_err(|e| e.to_string()))
                    .and_then(|()| {
                        sync_new_blobs(&inner.path, synced_blobs).map_err(|e| e.to_string())
                    })
            }
            // `interval`: sled's background flush persists it within flush_interval_ms.
            false => Ok(()),
        };
        match flushed {
            Ok(()) => {
                for (s, _, _, chunk) in written {
                    s.appended.notify_one();
                    answers.extend(chunk.into_iter().map(|p| (p.done, Ok(()))));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "queue flush failed; answering 503 to the requests it covered");
                for (s, key, len, chunk) in written {
                    // Not acknowledged, so take it back (best effort: if the disk is failing
                    // the remove may fail too, and the entry is then delivered although the
                    // client was told 503: a duplicate, never a loss).
                    if s.tree
                        .remove(key.to_be_bytes())
                        .is_ok_and(|old| old.is_some())
                    {
                        self.release(s, len);
                        let count: u64 = chunk.iter().map(|p| u64::from(p.count)).sum();
                        s.events.fetch_sub(count, Ordering::AcqRel);
                    }
                    answers.extend(chunk.into_iter().map(|p| {
                        (
                            p.done,
                            Err(QueueError::Storage(format!("flush failed: {e}"))),
                        )
                    }));
                }
            }
        }
        answers.extend(failed.into_iter().map(|(p, e)| (p.done, Err(e))));
        answers
    }

    /// Takes `size` bytes of budget, or refuses without taking any.
    fn reserve(&self, size: u64) -> Result<(), QueueError> {
        let max = self.inner.max_bytes;
        if self.is_full() {
            return Err(QueueError::Full {
                queued: self.queued_bytes(),
                max,
            });
        }
        self.inner
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + size <= max).then_some(q + size)
            })
            .map(drop)
            .map_err(|queued| {
                self.inner.full.store(true, Ordering::Release);
                QueueError::Full { queued, max }
            })
    }

    /// Whether appends are refused for the budget: from the first refusal until the queue
    /// drained below [`RESUME_PERCENT`] of `queue.max_bytes`.
    pub fn is_full(&self) -> bool {
        if !self.inner.full.load(Ordering::Acquire) {
            return false;
        }
        let resume_below =
            (u128::from(self.inner.max_bytes) * u128::from(RESUME_PERCENT) / 100) as u64;
        if self.queued_bytes() < resume_below {
            self.inner.full.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Up to `max_entries` entries from the head of `stream` (oldest first), skipping keys in
    /// `skip` (entries already in flight). Read from the head each time, never from a saved
    /// cursor: concurrent appends can commit key k+1 before k, and a cursor would pass k by.
    pub fn read_head(
        &self,
        stream: &str,
        skip: &HashSet<u64>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        let s = self.stream(stream)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in s.tree.iter() {
            if out.len() >= max_entries || bytes >= max_bytes {
                break;
            }
            let (k, v) = item?;
            let key = key_of(&k)?;
            if skip.contains(&key) {
                continue;
            }
            let entry = Entry::decode(&k, v)?;
            bytes += entry.lines.len();
            out.push(entry);
        }
        Ok(out)
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
        let s = self.stream(stream)?;
        #[cfg(test)]
        if self.inner.fail_writes.load(Ordering::Acquire) {
            return Err(QueueError::Storage("injected write failure".to_owned()));
        }
        let key = entry.key.to_be_bytes();
        let delivered = u64::from(entry.count) - remaining.len() as u64;
        if delivered == 0 {
            return Ok(());
        }
        if remaining.is_empty() {
            s.tree.remove(key)?;
            self.release(s, entry.budget_bytes());
        } else {
            let lines = remaining.concat();
            let value = Entry::encode(entry.enqueued_ms, remaining.len() as u32, &lines);
            let shrink = entry.budget_bytes() - value.len() as u64;
            s.tree.insert(key, value)?;
            self.release(s, shrink);
        }
        s.events.fetch_sub(delivered, Ordering::AcqRel);
        Ok(())
    }

    /// Moves `lines` of `entry` (which the sink refused for good) to the dead-letter tree, and
    /// settles the entry as if they had been delivered. Records are never dropped silently.
    pub fn dead_letter(
        &self,
        stream: &str,
        entry: &Entry,
        lines: &[&[u8]],
        remaining: &[&[u8]],
    ) -> Result<(), QueueError> {
        let s = self.stream(stream)?;
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let value = Entry::encode(entry.enqueued_ms, lines.len() as u32, &lines.concat());
        s.dead.insert(key.to_be_bytes(), value)?;
        // The dead letter must be on disk before the original goes.
        self.inner.db.flush()?;
        s.dead_events
            .fetch_add(lines.len() as u64, Ordering::AcqRel);
        self.settle(stream, entry, remaining)
    }

    /// Every dead-lettered entry of `stream`, oldest first.
    pub fn dead_letters(&self, stream: &str) -> Result<Vec<Entry>, QueueError> {
        let s = self.stream(stream)?;
        s.dead
            .iter()
            .map(|item| {
                item.map_err(QueueError::from)
                    .and_then(|(k, v)| Entry::decode(&k, v))
            })
            .collect()
    }

    /// Moves every dead letter of `stream` back to the tail of its queue (after the operator
    /// fixed what made the sink refuse them), flushes, and returns how many records moved.
    pub fn replay_dead_letters(&self, stream: &str) -> Result<u64, QueueError> {
        let s = self.stream(stream)?;
        let mut moved = 0;
        for entry in self.dead_letters(stream)? {
            let value = Entry::encode(entry.enqueued_ms, entry.count, &entry.lines);
            let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
            self.inner
                .queued_bytes
                .fetch_add(value.len() as u64, Ordering::AcqRel);
            s.tree.insert(key.to_be_bytes(), value)?;
            s.dead.remove(entry.key.to_be_bytes())?;
            s.events.fetch_add(u64::from(entry.count), Ordering::AcqRel);
            s.dead_events
                .fetch_sub(u64::from(entry.count), Ordering::AcqRel);
            moved += u64::from(entry.count);
        }
        self.inner.db.flush()?;
        Ok(moved)
    }

    /// Records in the dead-letter tree of `stream`.
    pub fn dead_letter_events(&self, stream: &str) -> u64 {
        self.stream(stream)
            .map_or(0, |s| s.dead_events.load(Ordering::Acquire))
    }

    fn release(&self, s: &Stream, bytes: u64) {
        s.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.inner.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Resolves after the next append to `stream` (or at once if one happened since the last
    /// call), so an idle flusher wakes without polling.
    pub async fn appended(&self, stream: &str) {
        if let Ok(s) = self.stream(stream) {
            s.appended.notified().await;
        }
    }

    /// Records (lines) queued in `stream`.
    pub fn queued_events(&self, stream: &str) -> u64 {
        self.stream(stream)
            .map_or(0, |s| s.events.load(Ordering::Acquire))
    }

    /// Bytes queued across all streams (what `queue.max_bytes` limits).
    pub fn queued_bytes(&self) -> u64 {
        self.inner.queued_bytes.load(Ordering::Acquire)
    }

    /// `queue.max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Enqueue time (ms since the epoch) of the oldest entry of `stream`.
    pub fn oldest_ms(&self, stream: &str) -> Result<Option<u64>, QueueError> {
        let s = self.stream(stream)?;
        s.tree
            .first()?
            .map(|(k, v)| Entry::decode(&k, v).map(|e| e.enqueued_ms))
            .transpose()
    }

    /// Tests: makes settles fail (or work again), as a full disk would.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.inner.fail_writes.store(fail, Ordering::Release);
    }

    /// Size of the sled files on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Group flushes performed so far (0 in `interval` mode).
    pub fn flush_count(&self) -> u64 {
        self.inner.commit.flushes.load(Ordering::Acquire)
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Refuses further appends, stops the committer, saves the counters with the clean
    /// mark (so the next open need not walk the queue) and flushes everything to disk.
    /// Callers stop the flushers first, so the counters no longer move.
    pub fn close(&self) -> Result<(), QueueError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.commit.stop();
        let inner = &self.inner;
        let saved = Saved {
            next_key: inner.next_key.load(Ordering::Acquire),
            streams: inner
                .streams
                .iter()
                .map(|(name, s)| {
                    let counts = Counts {
                        events: s.events.load(Ordering::Acquire),
                        bytes: s.bytes.load(Ordering::Acquire),
                        dead_events: s.dead_events.load(Ordering::Acquire),
                        next_key: 0,
                    };
                    (name.clone(), counts)
                })
                .collect(),
        };
        // Everything else reaches the disk before the mark that vouches for it.
        inner.db.flush()?;
        saved.store(&inner.meta)?;
        self.inner.db.flush()?;
        sync_data_file(&self.inner.path)?;
        Ok(())
    }
}

/// Key of the clean-close mark in the `meta` tree.
const CLEAN_KEY: &[u8] = b"clean";

/// What a stream holds, as counted at open or saved at a clean close.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    events: u64,
    bytes: u64,
    dead_events: u64,
    /// One past the highest key seen (walks only; saved counts carry it in [`Saved`]).
    next_key: u64,
}

impl Counts {
    /// Counts a stream by walking its trees (after a crash, or a stream new to the meta).
    fn walk(tree: &sled::Tree, dead: &sled::Tree) -> Result<Counts, QueueError> {
        let mut counts = Counts::default();
        for item in tree.iter() {
            let (k, v) = item?;
            let entry = Entry::decode(&k, v)?;
            counts.events += u64::from(entry.count);
            counts.bytes += entry.budget_bytes();
            counts.next_key = entry.key + 1;
        }
        for item in dead.iter() {
            let (k, v) = item?;
            let entry = Entry::decode(&k, v)?;
            counts.dead_events += u64::from(entry.count);
            counts.next_key = counts.next_key.max(entry.key + 1);
        }
        Ok(counts)
    }

    fn to_bytes(self) -> [u8; 24] {
        let mut out = [0; 24];
        out[..8].copy_from_slice(&self.events.to_be_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        out[16..].copy_from_slice(&self.dead_events.to_be_bytes());
        out
    }

    fn from_bytes(raw: &[u8]) -> Option<Counts> {
        let field = |i: usize| raw.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes);
        Some(Counts {
            events: field(0)?,
            bytes: field(8)?,
            dead_events: field(16)?,
            next_key: 0,
        })
    }
}

/// The counters saved at a clean close: valid only while the clean mark is present.
struct Saved {
    next_key: u64,
    streams: HashMap<String, Counts>,
}

impl Saved {
    /// The saved counters, if the last close was clean.
    fn load(meta: &sled::Tree) -> Result<Option<Saved>, QueueError> {
        let Some(mark) = meta.get(CLEAN_KEY)? else {
            return Ok(None);
        };
        let Ok(next_key) = <[u8; 8]>::try_from(&mark[..]).map(u64::from_be_bytes) else {
            return Ok(None);
        };
        let mut streams = HashMap::new();
        for item in meta.scan_prefix(b"counts/") {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[b"counts/".len()..]).into_owned();
            if let Some(counts) = Counts::from_bytes(&v) {
                streams.insert(name, counts);
            }
        }
        Ok(Some(Saved { next_key, streams }))
    }

    /// Saves the counters, then the mark (holding `next_key`), and flushes.
    fn store(&self, meta: &sled::Tree) -> Result<(), QueueError> {
        for (name, counts) in &self.streams {
            meta.insert(format!("counts/{name}"), &counts.to_bytes()[..])?;
        }
        meta.flush()?;
        meta.insert(CLEAN_KEY, &self.next_key.to_be_bytes()[..])?;
        meta.flush()?;
        Ok(())
    }
}

/// Queue trees of streams no longer configured are not drained: say so loudly.
fn warn_about_unconfigured_streams(db: &sled::Db, streams: &[String]) {
    for name in db.tree_names() {
        let Some(stream) = name.strip_prefix(b"q/") else {
            continue;
        };
        let stream = String::from_utf8_lossy(stream);
        let has_records = db.open_tree(&name).is_ok_and(|t| !t.is_empty());
        if has_records && !streams.iter().any(|s| *s == stream) {
            tracing::warn!(%stream, "the queue holds records of a stream that is not configured; they are kept but not delivered");
        }
    }
}

fn key_of(k: &[u8]) -> Result<u64, QueueError> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| QueueError::Storage(format!("bad key length {}", k.len())))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `fdatasync`s sled's data file: `flush()` only went as far as `sync_file_range`.
fn sync_data_file(path: &Path) -> std::io::Result<()> {
    File::open(path.join("db"))?.sync_data()
}

/// Largest entry the committer builds from several requests: big enough that a group of
/// small requests becomes a few values (sled's memory and work grow with the number of
/// values: ~300 200-byte events fit), small enough that a sled leaf of 16 such entries
/// (1 MiB) stays below the 2 MiB blob threshold, so group flushes write no blob files.
const MAX_GROUP_ENTRY_BYTES: usize = 64 << 10;

/// One request waiting for the committer.
struct Pending {
    stream: String,
    lines: Vec<u8>,
    count: u32,
    enqueued_ms: u64,
    /// Budget bytes taken for it (its lines plus one header).
    reserved: u64,
    done: Answer,
}

/// Where a pending append's outcome goes.
type Answer = oneshot::Sender<Result<(), QueueError>>;

/// Splits `group` by stream, keeping arrival order within each.
fn by_stream(group: Vec<Pending>) -> Vec<(String, Vec<Pending>)> {
    let mut out: Vec<(String, Vec<Pending>)> = Vec::new();
    for p in group {
        match out.iter_mut().find(|(name, _)| *name == p.stream) {
            Some((_, list)) => list.push(p),
            None => out.push((p.stream.clone(), vec![p])),
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
        match out.last_mut() {
            Some(last) if size + p.lines.len() <= MAX_GROUP_ENTRY_BYTES => {
                size += p.lines.len();
                last.push(p);
            }
            _ => {
                size = p.lines.len();
                out.push(vec![p]);
            }
        }
    }
    out
}

/// The group committer: one thread that writes and flushes on behalf of every append that
/// arrived since its last flush, so N concurrent requests cost one flush (and a few sled
/// values), not N.
struct GroupCommit {
    /// Flush (and fdatasync) before answering: `durability = "fsync"`.
    flush: bool,
    pending: Mutex<Vec<Pending>>,
    wake: Condvar,
    stop: AtomicBool,
    flushes: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupCommit {
    fn new(flush: bool) -> GroupCommit {
        GroupCommit {
            flush,
            pending: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread. It holds the queue only weakly (and only while writing), so
    /// dropping the queue stops it.
    fn spawn(self: &Arc<Self>, queue: std::sync::Weak<Inner>) -> Result<(), QueueError> {
        let commit = self.clone();
        let handle = std::thread::Builder::new()
            .name("queue-committer".to_owned())
            .spawn(move || committer_loop(&commit, &queue))?;
        *self.thread.lock().expect("committer handle") = Some(handle);
        Ok(())
    }

    /// Hands a request to the committer; gives it back if the committer has stopped.
    fn submit(&self, pending: Pending) -> Result<(), Pending> {
        {
            let mut queue = self.pending.lock().expect("committer mutex");
            // Checked under the lock the committer takes its last group under: a request
            // is either in that group or refused here, never stranded.
            if self.stop.load(Ordering::Acquire) {
                return Err(pending);
            }
            queue.push(pending);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Stops the thread after it wrote what is pending.
    fn stop(&self) {
        {
            let _pending = self.pending.lock().expect("committer mutex");
            self.stop.store(true, Ordering::Release);
        }
        self.wake.notify_one();
        let handle = self.thread.lock().expect("committer handle").take();
        if let Some(handle) = handle {
            // The committer may itself drop the last handle to the queue.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.commit.stop();
    }
}

fn committer_loop(commit: &GroupCommit, queue: &std::sync::Weak<Inner>) {
    let mut synced_blobs = HashSet::new();
    loop {
        let (group, stopping) = {
            let mut pending = commit.pending.lock().expect("committer mutex");
            while pending.is_empty() && !commit.stop.load(Ordering::Acquire) {
                pending = commit.wake.wait(pending).expect("committer mutex");
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
            let answers = Queue { inner }.commit_group(group, &mut synced_blobs);
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

/// `fsync`s blob files written since the last call (sled writes them without syncing).
fn sync_new_blobs(path: &Path, synced: &mut HashSet<std::ffi::OsString>) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A generous bound for tests awaiting queue signals.
    const TEST_WAIT: Duration = Duration::from_secs(10);

    fn config(dir: &Path, durability: Durability) -> QueueConfig {
        QueueConfig {
            path: dir.join("q"),
            max_bytes: 1 << 30,
            durability,
            flush_interval_ms: 500,
            cache_capacity: 8 << 20,
        }
    }

    fn streams() -> Vec<String> {
        vec!["a".to_owned(), "b".to_owned()]
    }

    fn lines(entries: &[Entry]) -> Vec<String> {
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
    async fn counters_survive_a_clean_close_and_are_recounted_after_a_crash() {
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
            // Clean: the saved counters are used, and the mark is cleared at once.
            let q = Queue::open(&cfg, &streams()).unwrap();
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
            // Dropped without close: a crash.
        }
        let q = Queue::open(&cfg, &streams()).unwrap();
        assert_eq!(
            q.queued_events("a"),
            events,
            "a crash after a clean open forces a recount"
        );
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
        sync_new_blobs(dir.path(), &mut synced).unwrap();
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
}
