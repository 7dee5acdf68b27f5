//! sled itself: opening it without letting a damaged database panic the process, the trees
//! of each stream, and counting what they hold.
//!
//! Tree `q/<stream>`: key = big-endian `u64` sequence number (iteration order is age order),
//! value = an [`Entry`]. `dead/<stream>`: the same, for records the sink refused for good.
//! `damaged/<stream>`: values whose checksum or header failed, kept (never deleted) for an
//! operator, out of the delivery path. `q/` and `dead/` also hold their record, under a
//! 9-byte key after every entry (see [`super::ledger`]). `meta`: a probe key used to test whether writes work again, and the
//! `delivered/<stream>` counters queues kept before records existed (read, never written).

use std::collections::HashMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::entry::Stamp;
use super::entry::{Entry, key_of};
use super::ledger::{Damaged, Flow, RECORD_KEY, Which};
use super::{QueueError, SEGMENT_SIZE};
use crate::config::QueueConfig;

/// One stream's trees.
pub(super) struct Trees {
    pub q: sled::Tree,
    pub dead: sled::Tree,
    pub damaged: sled::Tree,
    /// Bytes written through this sled handle (all streams share it): what its next open
    /// would replay from the log (sled 0.34 writes its snapshot only when it opens).
    pub log_bytes: Arc<AtomicU64>,
    /// Bytes of entries read through this sled handle: what its page cache may hold (sled
    /// 0.34 keeps the pages a reader touched, whatever `cache_capacity` says).
    pub read_bytes: Arc<AtomicU64>,
    /// Tests: writes left before the store acts as if the process died (every later write
    /// fails); `u64::MAX` for never.
    #[cfg(test)]
    pub crash_after: Arc<AtomicU64>,
}

impl Trees {
    /// Counts a write of about `n` log bytes that is about to be made.
    pub fn written(&self, n: u64) -> Result<(), QueueError> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let left = self.crash_after.load(Ordering::Acquire);
            if left == 0 {
                return Err(QueueError::Storage("injected crash".to_owned()));
            }
            if left != u64::MAX {
                self.crash_after.store(left - 1, Ordering::Release);
            }
        }
        self.log_bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Counts `n` bytes of entries read.
    pub fn read(&self, n: usize) {
        self.read_bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self, which: Which) -> &sled::Tree {
        match which {
            Which::Queue => &self.q,
            Which::Dead => &self.dead,
        }
    }
}

/// An open sled database and its trees.
pub(super) struct Store {
    pub db: sled::Db,
    /// See [`Trees::log_bytes`] and [`Trees::read_bytes`].
    pub log_bytes: Arc<AtomicU64>,
    pub read_bytes: Arc<AtomicU64>,
    #[cfg(test)]
    pub crash_after: Arc<AtomicU64>,
    pub meta: sled::Tree,
    /// Accepted `messageId`s (see [`super::dedup`]).
    pub dedup: sled::Tree,
    /// Suppressed user identifiers (see `erase.rs`).
    pub suppressed: sled::Tree,
    pub trees: HashMap<String, Trees>,
}

/// Why sled would not open.
pub(super) enum OpenError {
    /// The database itself is damaged (sled panicked or reported corruption): move it aside.
    Damaged(String),
    /// Anything else (permissions, a missing mount, I/O): report it and stop; moving the
    /// directory aside would not help and would hide a queue that is fine.
    Other(QueueError),
}

/// Longest wait for sled's file lock, and for other users of an old handle, to be let go
/// in this process.
pub(super) const RELEASE_WAIT: Duration = Duration::from_secs(5);

impl Store {
    /// [`Store::open`] once sled's file lock is free. The caller holds the directory's own
    /// lock ([`super::lock::DirLock`]), so no other queue has it open: a held sled lock is
    /// this process's, kept by sled's background flusher until it next wakes (up to
    /// `queue.flush_interval_ms` after the last handle went), as after a re-open or a queue
    /// closed and opened again in one process.
    pub fn open_released(config: &QueueConfig, streams: &[String]) -> Result<Store, OpenError> {
        let wait = Duration::from_millis(2 * config.flush_interval_ms + 1000).min(RELEASE_WAIT);
        let deadline = Instant::now() + wait;
        loop {
            match Store::open(config, streams) {
                Err(OpenError::Other(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                done => return done,
            }
        }
    }

    /// Opens sled at `config.path` and the trees of `streams`. A panic inside sled (seen with
    /// flipped bytes in its `db` file) is caught and reported as damage.
    pub fn open(config: &QueueConfig, streams: &[String]) -> Result<Store, OpenError> {
        let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let db = sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_capacity)
                .segment_size(SEGMENT_SIZE)
                .flush_every_ms(Some(config.flush_interval_ms))
                .open()?;
            let meta = db.open_tree("meta")?;
            let dedup = db.open_tree("dedup")?;
            let suppressed = db.open_tree("suppressed")?;
            let mut trees = HashMap::new();
            let log_bytes = Arc::new(AtomicU64::new(0));
            let read_bytes = Arc::new(AtomicU64::new(0));
            #[cfg(test)]
            let crash_after = Arc::new(AtomicU64::new(u64::MAX));
            for name in streams {
                let t = Trees {
                    log_bytes: log_bytes.clone(),
                    read_bytes: read_bytes.clone(),
                    #[cfg(test)]
                    crash_after: crash_after.clone(),
                    q: db.open_tree(format!("q/{name}"))?,
                    dead: db.open_tree(format!("dead/{name}"))?,
                    damaged: db.open_tree(format!("damaged/{name}"))?,
                };
                trees.insert(name.clone(), t);
            }
            Ok::<_, sled::Error>(Store {
                log_bytes,
                read_bytes,
                #[cfg(test)]
                crash_after,
                db,
                meta,
                dedup,
                suppressed,
                trees,
            })
        }));
        match attempt {
            Ok(Ok(store)) => Ok(store),
            Ok(Err(e)) => Err(classify(e)),
            Err(panic) => Err(OpenError::Damaged(format!(
                "sled panicked while opening: {}",
                panic_message(&*panic)
            ))),
        }
    }

    /// The trees of `stream`.
    pub fn trees(&self, stream: &str) -> Result<&Trees, QueueError> {
        self.trees
            .get(stream)
            .ok_or_else(|| QueueError::UnknownStream(stream.to_owned()))
    }

    /// Flushes sled and then `fdatasync`s its data file: `flush()` only went as far as
    /// `sync_file_range`, which survives a process crash but not a power loss.
    pub fn sync(&self, path: &Path) -> Result<(), QueueError> {
        self.db.flush()?;
        File::open(path.join("db"))?.sync_data()?;
        Ok(())
    }

    /// `delivered/<stream>` as last written.
    pub fn delivered(&self, stream: &str) -> Result<u64, QueueError> {
        Ok(self
            .meta
            .get(delivered_key(stream))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Counts what `stream` holds by reading every entry (a queue written before records
    /// existed, a record that is missing or damaged, and `queue verify`). With `quarantine`,
    /// values that fail their check move to the `damaged/` tree (kept, never deleted), so
    /// delivery does not stall on them; without it nothing is written.
    pub fn count(&self, stream: &str, quarantine: bool) -> Result<Tally, QueueError> {
        let t = self.trees(stream)?;
        let mut tally = Tally::default();
        for (tree, dead) in [(&t.q, false), (&t.dead, true)] {
            for item in tree.range(..RECORD_KEY) {
                let (k, v) = item?;
                tally.read += 1;
                match Entry::decode(&k, v.clone()) {
                    Ok(e) => {
                        let (s, top) = if dead {
                            (&mut tally.dead, &mut tally.dead_top)
                        } else {
                            (&mut tally.q, &mut tally.q_top)
                        };
                        s.events += u64::from(e.count);
                        s.bytes += e.budget_bytes();
                        *top = (*top).max(e.stamp.unwrap_or_default());
                        tally.next_key = tally.next_key.max(e.key + 1);
                    }
                    Err(QueueError::Damaged { why, .. }) => {
                        let claimed = Entry::claimed_count(&v);
                        tracing::error!(%stream, key = ?key_of(&k).ok(), %why, claimed_events = ?claimed, "damaged queue entry: kept in the damaged tree, not delivered");
                        tally.damaged_entries += 1;
                        tally.damaged_events += u64::from(claimed.unwrap_or(0));
                        if let Ok(key) = key_of(&k) {
                            tally.next_key = tally.next_key.max(key + 1);
                        }
                        if quarantine {
                            t.damaged.insert(&k, v)?;
                            tree.remove(&k)?;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        tally.damaged = self.count_damaged(stream)?;
        Ok(tally)
    }

    /// Counts the damaged tree of `stream` (normally empty; it only grows by damage).
    pub fn count_damaged(&self, stream: &str) -> Result<Damaged, QueueError> {
        let mut d = Damaged::default();
        for item in self.trees(stream)?.damaged.iter() {
            let (_, v) = item?;
            d.values += 1;
            d.events += u64::from(Entry::claimed_count(&v).unwrap_or(0));
        }
        Ok(d)
    }
}

/// What a walk of a stream's trees found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// The queue tree: events and budget bytes.
    pub q: Stamp,
    /// The dead-letter tree.
    pub dead: Stamp,
    /// The highest stamp in the queue tree, and in the dead-letter tree.
    pub q_top: Stamp,
    pub dead_top: Stamp,
    /// The damaged tree, after this walk.
    pub damaged: Damaged,
    /// Values found damaged by this walk.
    pub damaged_entries: u64,
    /// Events those values claim to hold (when their header is readable).
    pub damaged_events: u64,
    /// One past the highest key seen.
    pub next_key: u64,
    /// Entries read.
    pub read: u64,
}

impl Tally {
    /// A flow that holds `held` (what a walk found) and agrees with the highest stamp its
    /// entries carry, so that a later start (which takes what came in from the last entry's
    /// stamp) reads the same.
    pub fn flow(held: Stamp, top: Stamp, delivered: u64) -> Flow {
        let came_in = Stamp {
            events: held.events.max(top.events),
            bytes: held.bytes.max(top.bytes),
        };
        Flow {
            came_in,
            went_out: Stamp {
                events: came_in.events - held.events,
                bytes: came_in.bytes - held.bytes,
            },
            delivered,
        }
    }
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic")
}

fn delivered_key(stream: &str) -> String {
    format!("delivered/{stream}")
}

/// sled's corruption and "bug" errors mean a damaged database; I/O errors of the directory
/// (permissions, a missing mount, a read-only file system) do not.
fn classify(e: sled::Error) -> OpenError {
    use std::io::ErrorKind;
    match e {
        sled::Error::Io(io)
            if matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            OpenError::Damaged(io.to_string())
        }
        sled::Error::Io(io) => OpenError::Other(QueueError::from(io)),
        e @ (sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_)) => OpenError::Damaged(e.to_string()),
        e => OpenError::Other(QueueError::from(e)),
    }
}
