//! The accounting: one home for every counter of a stream and the rules that move them.
//!
//! Each of a stream's trees (`q/`, `dead/`, `damaged/`) carries a [`Summary`] of what it
//! holds — values, events, budget bytes, and for the queue tree the events delivered so far —
//! stored *in that tree* under [`SUMMARY_KEY`] and rewritten in the same sled batch as every
//! change it counts. sled recovers a batch whole or not at all, so after a crash each tree's
//! summary describes exactly the entries that survived, and a start reads three small values
//! per stream instead of walking the queue (sled 0.34 keeps every page a walk reads: 10 M
//! queued events cost 1.7 GiB and tens of seconds that way).
//!
//! The in-memory [`Books`] mirror the summaries, plus the manifest's `acked` and `lost`
//! (kept in the manifest file, see [`super::manifest`]). A stream's books are changed under
//! its lock only, by the functions here, and only after sled took the change: the lock also
//! orders the stream's writers (the committer, the flusher's settles, the compactor).

use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use super::QueueError;
use super::store::Trees;

/// Key of a tree's summary: nine bytes that sort after every 8-byte entry key, so entries are
/// read with `range(..SUMMARY_KEY)` and the head is still the first key.
pub(super) const SUMMARY_KEY: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, b'S'];
const SUMMARY_VERSION: u8 = 1;
/// version (1) · values, events, bytes, delivered (8 each) · CRC-32 of what precedes (4)
const SUMMARY_LEN: usize = 1 + 4 * 8 + 4;

/// What one tree holds, as stored beside its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// sled values (entries).
    pub values: u64,
    /// Events (lines) in them.
    pub events: u64,
    /// Budget bytes of them (header and lines of each entry).
    pub bytes: u64,
    /// Queue tree only: events delivered (accepted by the sink) and removed, ever.
    pub delivered: u64,
}

/// How a change moves a summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub values: i64,
    pub events: i64,
    pub bytes: i64,
    pub delivered: u64,
}

impl Delta {
    /// One entry of `events` events and `bytes` budget bytes comes in.
    pub fn add(events: u64, bytes: u64) -> Delta {
        Delta {
            values: 1,
            events: events as i64,
            bytes: bytes as i64,
            delivered: 0,
        }
    }

    /// One entry of `events` events and `bytes` budget bytes goes.
    pub fn remove(events: u64, bytes: u64) -> Delta {
        Delta {
            values: -1,
            events: -(events as i64),
            bytes: -(bytes as i64),
            delivered: 0,
        }
    }
}

impl Summary {
    pub fn encode(&self) -> [u8; SUMMARY_LEN] {
        let mut raw = [0u8; SUMMARY_LEN];
        raw[0] = SUMMARY_VERSION;
        for (i, v) in [self.values, self.events, self.bytes, self.delivered]
            .iter()
            .enumerate()
        {
            raw[1 + i * 8..9 + i * 8].copy_from_slice(&v.to_be_bytes());
        }
        let crc = crc32fast::hash(&raw[..SUMMARY_LEN - 4]);
        raw[SUMMARY_LEN - 4..].copy_from_slice(&crc.to_be_bytes());
        raw
    }

    /// `None` for anything but an intact summary of this version.
    pub fn decode(raw: &[u8]) -> Option<Summary> {
        if raw.len() != SUMMARY_LEN || raw[0] != SUMMARY_VERSION {
            return None;
        }
        let stored = u32::from_be_bytes(raw[SUMMARY_LEN - 4..].try_into().ok()?);
        if crc32fast::hash(&raw[..SUMMARY_LEN - 4]) != stored {
            return None;
        }
        let field = |i: usize| u64::from_be_bytes(raw[1 + i * 8..9 + i * 8].try_into().unwrap());
        Some(Summary {
            values: field(0),
            events: field(1),
            bytes: field(2),
            delivered: field(3),
        })
    }

    /// The summary after `delta`. A change that would take a count below zero means the
    /// books and the tree disagree (an entry removed behind the queue's back): the count
    /// stops at zero and the caller is told, so the disagreement is reported, not hidden.
    pub fn after(&self, delta: Delta) -> (Summary, bool) {
        let mut short = false;
        let mut apply = |v: u64, d: i64| {
            let (n, under) = v.overflowing_add_signed(d);
            if under {
                short = true;
                0
            } else {
                n
            }
        };
        let next = Summary {
            values: apply(self.values, delta.values),
            events: apply(self.events, delta.events),
            bytes: apply(self.bytes, delta.bytes),
            delivered: self.delivered + delta.delivered,
        };
        (next, short)
    }
}

/// Which of a stream's trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Queue,
    Dead,
    Damaged,
}

impl Which {
    pub const ALL: [Which; 3] = [Which::Queue, Which::Dead, Which::Damaged];
}

/// A stream's counts: its trees' summaries and the manifest's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Books {
    pub q: Summary,
    pub dead: Summary,
    pub damaged: Summary,
    /// Events acknowledged to clients, ever (the manifest's `acked`).
    pub acked: u64,
    /// Events found missing and reported, ever (the manifest's `lost`).
    pub lost: u64,
}

impl Books {
    pub fn get(&self, which: Which) -> &Summary {
        match which {
            Which::Queue => &self.q,
            Which::Dead => &self.dead,
            Which::Damaged => &self.damaged,
        }
    }

    pub fn get_mut(&mut self, which: Which) -> &mut Summary {
        match which {
            Which::Queue => &mut self.q,
            Which::Dead => &mut self.dead,
            Which::Damaged => &mut self.damaged,
        }
    }

    /// The manifest's counts.
    pub fn manifest(&self) -> super::manifest::Counts {
        super::manifest::Counts {
            acked: self.acked,
            delivered: self.q.delivered,
            lost: self.lost,
        }
    }
}

/// One stream's ledger.
pub(super) struct Ledger {
    books: Mutex<Books>,
    /// Woken after every append, so an idle flusher starts at once.
    pub appended: Notify,
    /// One past the highest key [`super::Queue::read_head`] handed out: entries below it may
    /// be in flight, so the compactor leaves them alone (moved under the lock).
    pub handed_out: AtomicU64,
}

/// One write to a tree: a key and its new value, or `None` to remove it.
pub(super) type Write = (u64, Option<Vec<u8>>);

impl Ledger {
    pub fn new(books: Books) -> Ledger {
        Ledger {
            books: Mutex::new(books),
            appended: Notify::new(),
            handed_out: AtomicU64::new(0),
        }
    }

    /// A copy of the books now.
    pub fn books(&self) -> Books {
        *self.books.lock()
    }

    /// The books, held: the stream's writers wait meanwhile.
    pub fn lock(&self) -> MutexGuard<'_, Books> {
        self.books.lock()
    }
}

/// Applies `writes` to `tree` together with the summary `delta` makes of `books`'s, in one
/// sled batch, and moves the books only once sled took it. Returns whether the delta would
/// have taken a count below zero (see [`Summary::after`]).
pub(super) fn apply(
    books: &mut Books,
    which: Which,
    trees: &Trees,
    writes: Vec<Write>,
    delta: Delta,
) -> Result<bool, QueueError> {
    let (next, short) = books.get(which).after(delta);
    let mut batch = sled::Batch::default();
    // What the batch adds to sled's log, about (see `Trees::written`).
    let mut logged = SUMMARY_LEN as u64 + LOG_ITEM_OVERHEAD;
    for (key, value) in writes {
        logged += LOG_ITEM_OVERHEAD;
        match value {
            Some(v) => {
                logged += v.len() as u64;
                batch.insert(&key.to_be_bytes(), v);
            }
            None => batch.remove(&key.to_be_bytes()),
        }
    }
    batch.insert(SUMMARY_KEY, &next.encode()[..]);
    trees.get(which).apply_batch(batch)?;
    trees
        .written
        .fetch_add(logged, std::sync::atomic::Ordering::Relaxed);
    *books.get_mut(which) = next;
    Ok(short)
}

/// Bytes sled's log spends on an item besides its value (key, header, page pointers): an
/// estimate, so that many small writes count for what they cost to replay.
const LOG_ITEM_OVERHEAD: u64 = 64;

/// Reads `tree`'s summary: `Ok(None)` if it has none or it is not intact.
pub(super) fn read(tree: &sled::Tree) -> Result<Option<Summary>, QueueError> {
    Ok(tree.get(SUMMARY_KEY)?.and_then(|raw| Summary::decode(&raw)))
}

/// Writes `summary` as `tree`'s (after a walk counted it).
pub(super) fn write(tree: &sled::Tree, summary: &Summary) -> Result<(), QueueError> {
    tree.insert(SUMMARY_KEY, &summary.encode()[..])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_round_trips_and_a_flipped_bit_is_refused() {
        let s = Summary {
            values: 3,
            events: 700,
            bytes: 99_000,
            delivered: 12,
        };
        let raw = s.encode();
        assert_eq!(Summary::decode(&raw), Some(s));
        for i in 0..raw.len() * 8 {
            let mut bad = raw;
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(Summary::decode(&bad), None, "bit {i}");
        }
    }

    #[test]
    fn the_summary_key_sorts_after_every_entry_key() {
        assert!(SUMMARY_KEY > &u64::MAX.to_be_bytes()[..]);
        assert!(SUMMARY_KEY > &0u64.to_be_bytes()[..]);
    }

    #[test]
    fn a_count_never_goes_below_zero_and_says_so() {
        let s = Summary {
            values: 1,
            events: 2,
            bytes: 10,
            delivered: 0,
        };
        let (next, short) = s.after(Delta::remove(3, 10));
        assert!(short);
        assert_eq!((next.values, next.events, next.bytes), (0, 0, 0));
        let (next, short) = s.after(Delta::add(1, 5));
        assert!(!short);
        assert_eq!((next.values, next.events, next.bytes), (2, 3, 15));
    }
}
