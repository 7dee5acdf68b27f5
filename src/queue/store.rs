//! sled itself: opening it without letting a damaged database panic the process, the trees
//! of each stream, and counting what they hold.
//!
//! Tree `q/<stream>`: key = big-endian `u64` sequence number (iteration order is age order),
//! value = an [`Entry`]. `dead/<stream>`: the same, for records the sink refused for good.
//! `damaged/<stream>`: values whose checksum or header failed, kept (never deleted) for an
//! operator, out of the delivery path. `meta`: per-stream `delivered/<stream>` counters (see
//! [`super::manifest`]) and a probe key used to test whether writes work again.

use std::collections::HashMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use super::entry::{Entry, key_of};
use super::{QueueError, SEGMENT_SIZE};
use crate::config::QueueConfig;

/// One stream's trees.
pub(super) struct Trees {
    pub q: sled::Tree,
    pub dead: sled::Tree,
    pub damaged: sled::Tree,
}

/// An open sled database and its trees.
pub(super) struct Store {
    pub db: sled::Db,
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
            for name in streams {
                let t = Trees {
                    q: db.open_tree(format!("q/{name}"))?,
                    dead: db.open_tree(format!("dead/{name}"))?,
                    damaged: db.open_tree(format!("damaged/{name}"))?,
                };
                trees.insert(name.clone(), t);
            }
            Ok::<_, sled::Error>(Store {
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

    /// The counts saved at the last clean close, if that close was clean; the mark is
    /// cleared at once (and flushed), so that a crash from here on forces a walk.
    pub fn take_saved(&self) -> Result<Option<Saved>, QueueError> {
        let Some(mark) = self.meta.get(CLEAN_KEY)? else {
            return Ok(None);
        };
        let Ok(next_key) = <[u8; 8]>::try_from(&mark[..]).map(u64::from_be_bytes) else {
            return Ok(None);
        };
        let mut streams = HashMap::new();
        for item in self.meta.scan_prefix(COUNTS_PREFIX) {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[COUNTS_PREFIX.len()..]).into_owned();
            let field = |i: usize| {
                v.get(i..i + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            if let (Some(events), Some(bytes), Some(dead_events)) = (field(0), field(8), field(16))
            {
                let tally = Tally {
                    events,
                    bytes,
                    dead_events,
                    next_key,
                    ..Tally::default()
                };
                streams.insert(name, tally);
            }
        }
        self.meta.remove(CLEAN_KEY)?;
        self.db.flush()?;
        Ok(Some(Saved { streams }))
    }

    /// Saves the counts and then the clean mark (everything else is flushed first by the
    /// caller, so the mark never vouches for what is not on disk).
    pub fn save(&self, counts: &[(String, Tally)], next_key: u64) -> Result<(), QueueError> {
        for (name, t) in counts {
            let mut raw = [0u8; 24];
            raw[..8].copy_from_slice(&t.events.to_be_bytes());
            raw[8..16].copy_from_slice(&t.bytes.to_be_bytes());
            raw[16..].copy_from_slice(&t.dead_events.to_be_bytes());
            let mut key = COUNTS_PREFIX.to_vec();
            key.extend_from_slice(name.as_bytes());
            self.meta.insert(key, &raw[..])?;
        }
        self.meta.flush()?;
        self.meta.insert(CLEAN_KEY, &next_key.to_be_bytes()[..])?;
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

    /// Records that `total` events of `stream` have been delivered (before they are removed).
    pub fn set_delivered(&self, stream: &str, total: u64) -> Result<(), QueueError> {
        self.meta
            .insert(delivered_key(stream), &total.to_be_bytes()[..])?;
        Ok(())
    }

    /// Counts what `stream` holds. With `quarantine`, values that fail their check move to
    /// the `damaged/` tree (kept, never deleted), so delivery does not stall on them;
    /// without it (offline verification) nothing is written.
    pub fn count(&self, stream: &str, quarantine: bool) -> Result<Tally, QueueError> {
        let t = self.trees(stream)?;
        let mut tally = Tally::default();
        for (tree, dead) in [(&t.q, false), (&t.dead, true)] {
            for item in tree.iter() {
                let (k, v) = item?;
                match Entry::decode(&k, v.clone()) {
                    Ok(e) => {
                        if dead {
                            tally.dead_events += u64::from(e.count);
                        } else {
                            tally.events += u64::from(e.count);
                            tally.bytes += e.budget_bytes();
                        }
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
        tally.quarantined = t.damaged.len() as u64;
        Ok(tally)
    }
}

/// Key of the clean-close mark in `meta` (it holds the next key).
const CLEAN_KEY: &[u8] = b"clean";
const COUNTS_PREFIX: &[u8] = b"counts/";

/// Counts saved at a clean close.
pub(super) struct Saved {
    pub streams: HashMap<String, Tally>,
}

/// What a stream's trees hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events in the queue tree.
    pub events: u64,
    /// Budget bytes of the queue tree.
    pub bytes: u64,
    /// Events in the dead-letter tree.
    pub dead_events: u64,
    /// Values found damaged by this count.
    pub damaged_entries: u64,
    /// Events those values claim to hold (when their header is readable).
    pub damaged_events: u64,
    /// Values in the damaged tree (from this count and earlier ones).
    pub quarantined: u64,
    /// One past the highest key seen.
    pub next_key: u64,
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
