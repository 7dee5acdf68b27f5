//! sled itself: opening it without letting a damaged database panic the process, the trees
//! of each stream, and counting what they hold.
//!
//! Tree `q/<stream>`: key = big-endian `u64` sequence number (iteration order is age order),
//! value = an [`Entry`]. `dead/<stream>`: the same, for records the sink refused for good.
//! `damaged/<stream>`: values whose checksum or header failed, kept (never deleted) for an
//! operator, out of the delivery path. Each of them also holds its summary (see
//! [`super::ledger`]). `meta`: a probe key used to test whether writes work again, and the
//! `delivered/<stream>` counters queues kept before summaries existed (read, never written).

use std::collections::HashMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::entry::{Entry, key_of};
use super::ledger::{SUMMARY_KEY, Summary, Which};
use super::{QueueError, SEGMENT_SIZE};
use crate::config::QueueConfig;

/// One stream's trees.
pub(super) struct Trees {
    pub q: sled::Tree,
    pub dead: sled::Tree,
    pub damaged: sled::Tree,
    /// Bytes written through this sled handle (all streams share it): what its next open
    /// would replay from the log (sled 0.34 writes its snapshot only when it opens).
    pub written: Arc<AtomicU64>,
}

impl Trees {
    pub fn get(&self, which: Which) -> &sled::Tree {
        match which {
            Which::Queue => &self.q,
            Which::Dead => &self.dead,
            Which::Damaged => &self.damaged,
        }
    }
}

/// An open sled database and its trees.
pub(super) struct Store {
    pub db: sled::Db,
    /// See [`Trees::written`].
    pub written: Arc<AtomicU64>,
    pub meta: sled::Tree,
    /// Accepted `messageId`s (see [`super::dedup`]).
    pub dedup: sled::Tree,
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

impl Store {
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
            let mut trees = HashMap::new();
            let written = Arc::new(AtomicU64::new(0));
            for name in streams {
                let t = Trees {
                    written: written.clone(),
                    q: db.open_tree(format!("q/{name}"))?,
                    dead: db.open_tree(format!("dead/{name}"))?,
                    damaged: db.open_tree(format!("damaged/{name}"))?,
                };
                trees.insert(name.clone(), t);
            }
            Ok::<_, sled::Error>(Store {
                written,
                db,
                meta,
                dedup,
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

    /// Counts what `stream` holds by reading every entry (a queue written before summaries
    /// existed, a summary that is missing or damaged, and `queue verify`). With `quarantine`,
    /// values that fail their check move to the `damaged/` tree (kept, never deleted), so
    /// delivery does not stall on them; without it nothing is written.
    pub fn count(&self, stream: &str, quarantine: bool) -> Result<Tally, QueueError> {
        let t = self.trees(stream)?;
        let mut tally = Tally::default();
        for (tree, dead) in [(&t.q, false), (&t.dead, true)] {
            for item in tree.range(..SUMMARY_KEY) {
                let (k, v) = item?;
                tally.read += 1;
                match Entry::decode(&k, v.clone()) {
                    Ok(e) => {
                        let s = if dead { &mut tally.dead } else { &mut tally.q };
                        s.values += 1;
                        s.events += u64::from(e.count);
                        s.bytes += e.budget_bytes();
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
                            t.damaged.insert(&k, v.clone())?;
                            tree.remove(&k)?;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for item in t.damaged.range(..SUMMARY_KEY) {
            let (_, v) = item?;
            tally.quarantined += 1;
            tally.damaged.values += 1;
            tally.damaged.events += u64::from(Entry::claimed_count(&v).unwrap_or(0));
            tally.damaged.bytes += v.len() as u64;
        }
        Ok(tally)
    }
}

/// What a walk of a stream's trees found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// The queue tree.
    pub q: Summary,
    /// The dead-letter tree.
    pub dead: Summary,
    /// The damaged tree, after this walk.
    pub damaged: Summary,
    /// Values found damaged by this walk.
    pub damaged_entries: u64,
    /// Events those values claim to hold (when their header is readable).
    pub damaged_events: u64,
    /// Values in the damaged tree.
    pub quarantined: u64,
    /// One past the highest key seen.
    pub next_key: u64,
    /// Entries read.
    pub read: u64,
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
