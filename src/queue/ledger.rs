//! The accounting: one home for every counter of a stream and the rules that move them, and
//! how they are kept on disk so that a start reads them instead of walking the queue (sled
//! 0.34 keeps every page a walk reads: 10 M queued events cost 1.7 GiB and tens of seconds
//! that way).
//!
//! What a tree (`q/<stream>`, `dead/<stream>`) holds is what came **in** minus what went
//! **out**, both counted in events and budget bytes ([`Flow`]):
//! - **In** is carried by the entries themselves: each is stamped, in its header, with what
//!   had come in once it was added ([`Stamp`]). Entries are added under the stream's lock with
//!   keys taken under it, so the last entry of the tree carries the newest surviving stamp.
//! - **Out** lives in the tree's [`Record`] (under [`RECORD_KEY`]), rewritten *before* every
//!   change that takes something out (a delivery, a dead letter, a merge, a take-back), and
//!   naming that change ([`Op`]), with what it takes out.
//!
//! Every write is a single sled insert or remove: sled's atomic batches roll its IO buffer
//! twice each, and one per append starves its file truncation into a deadlock (see the
//! README's sled notes). A crash therefore leaves at most the last change of a stream half
//! done — sled recovers a prefix of its log, and a stream's writes are ordered by its lock —
//! and [`recover`] tells from the tree whether that change happened, undoing its count if it
//! did not (or finishing a merge whose merged value is already written). So the counts after
//! a crash are exact, and a start reads two entries and one record per tree.
//!
//! The in-memory [`Books`] hold the flows, the damaged tree's count, and the manifest's
//! `acked` and `lost` (kept in the manifest file, see [`super::manifest`]).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use super::QueueError;
pub use super::entry::Stamp;
use super::entry::{Entry, key_of};
use super::store::Trees;

/// Key of a tree's record: nine bytes that sort after every 8-byte entry key, so entries are
/// read with `range(..RECORD_KEY)` and the head is still the first key.
pub(super) const RECORD_KEY: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, b'R'];
const RECORD_VERSION: u8 = 1;
/// version (1) · in, out (16 each) · delivered (8) · op: kind (1), three u64 (24) · undo:
/// events, bytes, delivered (24) · CRC-32 of what precedes (4)
const RECORD_LEN: usize = 1 + 16 + 16 + 8 + 1 + 24 + 24 + 4;
/// No dead-letter key (keys are taken from a counter that never gets there).
const NO_KEY: u64 = u64::MAX;

/// What came in and went out of a tree, ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Flow {
    pub came_in: Stamp,
    pub went_out: Stamp,
    /// Queue trees: events delivered (accepted by the sink), ever; a part of `went_out`.
    pub delivered: u64,
}

impl Flow {
    /// Events the tree holds.
    pub fn events(&self) -> u64 {
        self.came_in.events.saturating_sub(self.went_out.events)
    }

    /// Budget bytes the tree holds.
    pub fn bytes(&self) -> u64 {
        self.came_in.bytes.saturating_sub(self.went_out.bytes)
    }
}

/// The change a record announces (the last one that took something out of its tree).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Op {
    #[default]
    None,
    /// Removes entry `key` (after adding some of its lines to the dead-letter tree as entry
    /// `dead`, if set).
    Remove { key: u64, dead: Option<u64> },
    /// Rewrites entry `key` with `count` lines, fewer than it had (after adding some of its
    /// lines to the dead-letter tree as entry `dead`, if set).
    Rewrite {
        key: u64,
        count: u32,
        dead: Option<u64>,
    },
    /// Writes the lines of entries `first..=last` as one entry of `count` lines at `last`,
    /// then removes the others.
    Merge { first: u64, last: u64, count: u32 },
}

/// A tree's record: its flow out, the newest stamp it knew, and its last change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Record {
    /// The flow once `op` is done (`came_in` as it was then).
    pub flow: Flow,
    pub op: Op,
    /// What `op` takes out, to be given back if it did not happen.
    pub undo: (Stamp, u64),
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut raw = [0u8; RECORD_LEN];
        raw[0] = RECORD_VERSION;
        let none = |d: Option<u64>| d.unwrap_or(NO_KEY);
        let (kind, a, b, c) = match self.op {
            Op::None => (0, 0, 0, 0),
            Op::Remove { key, dead } => (1, key, 0, none(dead)),
            Op::Rewrite { key, count, dead } => (2, key, u64::from(count), none(dead)),
            Op::Merge { first, last, count } => (3, first, last, u64::from(count)),
        };
        let f = &self.flow;
        let words = [
            f.came_in.events,
            f.came_in.bytes,
            f.went_out.events,
            f.went_out.bytes,
            f.delivered,
        ];
        let mut at = 1;
        for w in words {
            raw[at..at + 8].copy_from_slice(&w.to_be_bytes());
            at += 8;
        }
        raw[at] = kind;
        at += 1;
        let (undo, undo_delivered) = self.undo;
        for w in [a, b, c, undo.events, undo.bytes, undo_delivered] {
            raw[at..at + 8].copy_from_slice(&w.to_be_bytes());
            at += 8;
        }
        let crc = crc32fast::hash(&raw[..at]);
        raw[at..].copy_from_slice(&crc.to_be_bytes());
        raw
    }

    /// `None` for anything but an intact record of this version.
    fn decode(raw: &[u8]) -> Option<Record> {
        if raw.len() != RECORD_LEN || raw[0] != RECORD_VERSION {
            return None;
        }
        let stored = u32::from_be_bytes(raw[RECORD_LEN - 4..].try_into().ok()?);
        if crc32fast::hash(&raw[..RECORD_LEN - 4]) != stored {
            return None;
        }
        let word = |at: usize| u64::from_be_bytes(raw[at..at + 8].try_into().unwrap());
        let flow = Flow {
            came_in: Stamp {
                events: word(1),
                bytes: word(9),
            },
            went_out: Stamp {
                events: word(17),
                bytes: word(25),
            },
            delivered: word(33),
        };
        let (a, b, c) = (word(42), word(50), word(58));
        let count = |v: u64| u32::try_from(v).ok();
        let dead = (c != NO_KEY).then_some(c);
        let op = match raw[41] {
            0 => Op::None,
            1 => Op::Remove { key: a, dead },
            2 => Op::Rewrite {
                key: a,
                count: count(b)?,
                dead,
            },
            3 => Op::Merge {
                first: a,
                last: b,
                count: count(c)?,
            },
            _ => return None,
        };
        let undo = (
            Stamp {
                events: word(66),
                bytes: word(74),
            },
            word(82),
        );
        Some(Record { flow, op, undo })
    }
}

/// Which of a stream's trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Queue,
    Dead,
}

/// What the damaged tree holds (counted by a walk at start: it is written only when an entry
/// fails its checksum, and never emptied by the service).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Damaged {
    pub values: u64,
    /// Events the values claim (when their header is readable).
    pub events: u64,
}

/// A stream's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Books {
    pub q: Flow,
    pub dead: Flow,
    pub damaged: Damaged,
    /// Events acknowledged to clients, ever (the manifest's `acked`).
    pub acked: u64,
    /// Events found missing and reported, ever (the manifest's `lost`).
    pub lost: u64,
}

impl Books {
    pub fn flow(&self, which: Which) -> &Flow {
        match which {
            Which::Queue => &self.q,
            Which::Dead => &self.dead,
        }
    }

    fn flow_mut(&mut self, which: Which) -> &mut Flow {
        match which {
            Which::Queue => &mut self.q,
            Which::Dead => &mut self.dead,
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

/// Which of a stream's entries are out with a flusher, and which of those a deletion request
/// found records of a suppressed user in (see `erase.rs`). Taken with the books held.
#[derive(Debug, Default)]
pub(super) struct Flight {
    /// Handed out by the last `read_head` or held by its caller then: not to be rewritten.
    pub out: std::collections::HashSet<u64>,
    /// To be filtered again before they are handed out again, or when they settle.
    pub recheck: std::collections::HashSet<u64>,
}

/// One stream's ledger.
pub(super) struct Ledger {
    books: Mutex<Books>,
    /// See [`Flight`]; locked after the books, never alone.
    pub flight: Mutex<Flight>,
    /// Woken after every append, so an idle flusher starts at once.
    pub appended: Notify,
    /// One past the highest key [`super::Queue::read_head`] handed out: entries below it may
    /// be in flight, so the compactor leaves them alone (moved under the lock).
    pub handed_out: AtomicU64,
    /// No entry of the queue tree has a key below this: the first key a read of its head
    /// found (moved under the lock). Every later key is above it — new entries take new
    /// keys, rewrites and merges keep keys that exist — so a read starts here, not at the
    /// start of the tree: sled keeps the emptied leaves of every removed entry, and a read
    /// that walked them cost what had ever been delivered, not what it returned.
    pub head: AtomicU64,
}

impl Ledger {
    pub fn new(books: Books) -> Ledger {
        Ledger {
            books: Mutex::new(books),
            flight: Mutex::default(),
            appended: Notify::new(),
            handed_out: AtomicU64::new(0),
            head: AtomicU64::new(0),
        }
    }

    /// The queue tree's entries from [`Ledger::head`] on (the caller holds the lock).
    pub fn head_on(&self, q: &sled::Tree) -> sled::Iter {
        let start = self.head.load(Ordering::Acquire).to_be_bytes();
        q.range::<&[u8], _>(&start[..]..RECORD_KEY)
    }

    /// A copy of the books now.
    pub fn books(&self) -> Books {
        *self.books.lock()
    }

    /// The books, held: the stream's writers wait meanwhile. Every change below takes them.
    pub fn lock(&self) -> MutexGuard<'_, Books> {
        self.books.lock()
    }
}

/// What one change takes out of a tree.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Out {
    pub events: u64,
    pub bytes: u64,
    /// Of `events`, those delivered.
    pub delivered: u64,
}

/// Adds an entry of `count` lines (`parts` concatenated) to `which` under a key taken from
/// `next_key` now (so that key order is stamp order), stamped with what came in with it.
/// Returns its key and budget bytes.
pub(super) fn add(
    books: &mut Books,
    which: Which,
    trees: &Trees,
    next_key: &AtomicU64,
    enqueued_ms: u64,
    count: u32,
    parts: &[&[u8]],
) -> Result<(u64, u64), QueueError> {
    let (key, value) = stamped(books, which, next_key, enqueued_ms, count, parts);
    let bytes = value.len() as u64;
    insert(trees, which, key, value)?;
    let flow = books.flow_mut(which);
    flow.came_in.events += u64::from(count);
    flow.came_in.bytes += bytes;
    Ok((key, bytes))
}

/// The key and encoded value [`add`] writes (for a transaction that writes it itself; the
/// caller then calls [`added`]).
pub(super) fn stamped(
    books: &Books,
    which: Which,
    next_key: &AtomicU64,
    enqueued_ms: u64,
    count: u32,
    parts: &[&[u8]],
) -> (u64, Vec<u8>) {
    let key = next_key.fetch_add(1, Ordering::Relaxed);
    encode_stamped(books, which, key, enqueued_ms, count, parts)
}

fn encode_stamped(
    books: &Books,
    which: Which,
    key: u64,
    enqueued_ms: u64,
    count: u32,
    parts: &[&[u8]],
) -> (u64, Vec<u8>) {
    let lines: usize = parts.iter().map(|p| p.len()).sum();
    let came = books.flow(which).came_in;
    let stamp = Stamp {
        events: came.events + u64::from(count),
        bytes: came.bytes + Entry::budget_of(lines),
    };
    (key, Entry::encode_parts(enqueued_ms, count, stamp, parts))
}

/// Counts an entry a transaction wrote from [`stamped`].
pub(super) fn added(books: &mut Books, which: Which, count: u32, bytes: u64) {
    let flow = books.flow_mut(which);
    flow.came_in.events += u64::from(count);
    flow.came_in.bytes += bytes;
}

/// Removes entry `key` of `which`, taking `out` out of its flow.
pub(super) fn remove(
    books: &mut Books,
    which: Which,
    trees: &Trees,
    key: u64,
    out: Out,
) -> Result<(), QueueError> {
    announce(books, which, trees, Op::Remove { key, dead: None }, out)?;
    write(trees, which, key, None)
}

/// Lines of a queue entry that go to the dead-letter tree, as entry `key`.
pub(super) struct DeadLetter<'a> {
    pub key: u64,
    pub lines: &'a [&'a [u8]],
}

/// Takes `out` out of entry `entry` of `which`: removes it (no `remaining`) or rewrites it
/// with `remaining` (the lines that stay), keeping its key and stamp. With `dead` (queue
/// entries only), the lines that leave are added to the dead-letter tree first, and `synced`
/// runs between (it makes them durable before the original changes). Returns the budget
/// bytes freed.
#[allow(clippy::too_many_arguments)]
pub(super) fn take_out(
    books: &mut Books,
    which: Which,
    trees: &Trees,
    entry: &Entry,
    remaining: &[&[u8]],
    mut out: Out,
    dead: Option<DeadLetter<'_>>,
    synced: impl FnOnce() -> Result<(), QueueError>,
) -> Result<u64, QueueError> {
    let (key, dead_key) = (entry.key, dead.as_ref().map(|d| d.key));
    let (op, value) = if remaining.is_empty() {
        out.bytes = entry.budget_bytes();
        (
            Op::Remove {
                key,
                dead: dead_key,
            },
            None,
        )
    } else {
        let count = remaining.len() as u32;
        let stamp = entry.stamp.unwrap_or_default();
        let value = Entry::encode_parts(entry.enqueued_ms, count, stamp, remaining);
        out.bytes = entry.budget_bytes() - value.len() as u64;
        let op = Op::Rewrite {
            key,
            count,
            dead: dead_key,
        };
        (op, Some(value))
    };
    announce(books, which, trees, op, out)?;
    if let Some(d) = dead {
        let count = d.lines.len() as u32;
        let (dead_key, value) =
            encode_stamped(books, Which::Dead, d.key, entry.enqueued_ms, count, d.lines);
        let bytes = value.len() as u64;
        insert(trees, Which::Dead, dead_key, value)?;
        added(books, Which::Dead, count, bytes);
        synced()?;
    }
    write(trees, which, key, value)?;
    Ok(out.bytes)
}

/// Merges `run` (consecutive entries of the queue tree) into one entry at its last key, then
/// removes the others. Returns the budget bytes saved (the headers that went).
pub(super) fn merge(books: &mut Books, trees: &Trees, run: &[Entry]) -> Result<u64, QueueError> {
    let (first, last) = (&run[0], &run[run.len() - 1]);
    let count: u32 = run.iter().map(|e| e.count).sum();
    let stamp = last.stamp.unwrap_or_default();
    let lines: Vec<&[u8]> = run.iter().map(|e| &e.lines[..]).collect();
    let value = Entry::encode_parts(first.enqueued_ms, count, stamp, &lines);
    let saved = run.iter().map(Entry::budget_bytes).sum::<u64>() - value.len() as u64;
    let op = Op::Merge {
        first: first.key,
        last: last.key,
        count,
    };
    let out = Out {
        bytes: saved,
        ..Out::default()
    };
    announce(books, Which::Queue, trees, op, out)?;
    insert(trees, Which::Queue, last.key, value)?;
    for e in &run[..run.len() - 1] {
        write(trees, Which::Queue, e.key, None)?;
    }
    Ok(saved)
}

/// Takes `out` out of `which`'s flow without a change to its entries (what a drained stream
/// still claimed: lost behind the queue's back).
pub(super) fn write_off(
    books: &mut Books,
    which: Which,
    trees: &Trees,
    out: Out,
) -> Result<(), QueueError> {
    announce(books, which, trees, Op::None, out)
}

/// Writes the record announcing `op` (which takes `out` out), then moves the books.
fn announce(
    books: &mut Books,
    which: Which,
    trees: &Trees,
    op: Op,
    out: Out,
) -> Result<(), QueueError> {
    let mut flow = *books.flow(which);
    flow.went_out.events += out.events;
    flow.went_out.bytes += out.bytes;
    flow.delivered += out.delivered;
    let undo = (
        Stamp {
            events: out.events,
            bytes: out.bytes,
        },
        out.delivered,
    );
    let record = Record { flow, op, undo };
    insert_raw(trees, which, RECORD_KEY, record.encode().to_vec())?;
    *books.flow_mut(which) = flow;
    Ok(())
}

fn insert(trees: &Trees, which: Which, key: u64, value: Vec<u8>) -> Result<(), QueueError> {
    write(trees, which, key, Some(value))
}

fn write(trees: &Trees, which: Which, key: u64, value: Option<Vec<u8>>) -> Result<(), QueueError> {
    match value {
        Some(v) => insert_raw(trees, which, &key.to_be_bytes(), v),
        None => {
            trees.written(LOG_ITEM_OVERHEAD)?;
            trees.get(which).remove(key.to_be_bytes())?;
            Ok(())
        }
    }
}

fn insert_raw(trees: &Trees, which: Which, key: &[u8], value: Vec<u8>) -> Result<(), QueueError> {
    trees.written(LOG_ITEM_OVERHEAD + value.len() as u64)?;
    trees.get(which).insert(key, value)?;
    Ok(())
}

/// Bytes sled's log spends on an item besides its value (key, header, page pointers): an
/// estimate, so that many small writes count for what they cost to replay.
const LOG_ITEM_OVERHEAD: u64 = 64;

/// Reads `which`'s flow back from the tree: its record, its last entry's stamp, and whether
/// the record's change happened (a crash may have stopped it half done). Returns `None` for
/// a tree that needs a walk: entries but no record, or entries written before stamps and no
/// record to say what came in. Entries read on the way are counted in `read`. With `repair`,
/// a merge stopped after its merged value was written is finished (its leftovers removed);
/// without it (`queue verify`) nothing is written.
pub(super) fn recover(
    trees: &Trees,
    which: Which,
    read: &mut u64,
    repair: bool,
) -> Result<Option<Flow>, QueueError> {
    let tree = trees.get(which);
    let last = match tree.range(..RECORD_KEY).next_back().transpose()? {
        Some((k, v)) => {
            *read += 1;
            Some(Entry::decode(&k, v))
        }
        None => None,
    };
    let record = match tree.get(RECORD_KEY)? {
        Some(raw) => match Record::decode(&raw) {
            Some(r) => r,
            None => return Ok(None),
        },
        None if last.is_none() => return Ok(Some(Flow::default())),
        None => return Ok(None),
    };
    let mut flow = record.flow;
    match last {
        // An entry from before stamps is the newest: nothing came in after the record.
        Some(Ok(e)) => {
            if let Some(stamp) = e.stamp {
                flow.came_in.events = flow.came_in.events.max(stamp.events);
                flow.came_in.bytes = flow.came_in.bytes.max(stamp.bytes);
            }
        }
        // The newest entry is damaged: its stamp is unknown.
        Some(Err(QueueError::Damaged { .. })) => return Ok(None),
        Some(Err(e)) => return Err(e),
        None => {}
    }
    // The entry the record names, if it is there; a damaged one makes the tree a walk's
    // (which moves it aside), never a reason to take the whole queue for damaged.
    let mut damaged = false;
    let mut entry = |key: u64| -> Result<Option<Entry>, QueueError> {
        match tree.get(key.to_be_bytes())? {
            Some(v) => {
                *read += 1;
                match Entry::decode(&key.to_be_bytes(), v) {
                    Ok(e) => Ok(Some(e)),
                    Err(QueueError::Damaged { .. }) => {
                        damaged = true;
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            None => Ok(None),
        }
    };
    let (happened, dead) = match record.op {
        Op::None => (true, None),
        Op::Remove { key, dead } => (tree.get(key.to_be_bytes())?.is_none(), dead),
        Op::Rewrite { key, count, dead } => (entry(key)?.is_none_or(|e| e.count == count), dead),
        Op::Merge { first, last, count } => {
            let merged = entry(last)?.is_some_and(|e| e.count == count);
            if merged && repair {
                // Finish it: the merged value holds the lines of every key left in the run.
                let left: Vec<u64> = tree
                    .range(first.to_be_bytes()..last.to_be_bytes())
                    .keys()
                    .map(|k| k.map_err(QueueError::from).and_then(|k| key_of(&k)))
                    .collect::<Result<_, _>>()?;
                for key in left {
                    write(trees, which, key, None)?;
                }
            }
            (merged, None)
        }
    };
    if damaged {
        return Ok(None);
    }
    if !happened
        && repair
        && let Some(dead) = dead
    {
        // The lines it was moving to the dead-letter tree are still in the queue: the copy
        // goes (the dead-letter tree's own count, read after this, then leaves it out).
        trees.dead.remove(dead.to_be_bytes())?;
    }
    if !happened {
        let (undo, undo_delivered) = record.undo;
        flow.went_out.events -= undo.events;
        flow.went_out.bytes -= undo.bytes;
        flow.delivered -= undo_delivered;
    }
    Ok(Some(flow))
}

/// Writes `which`'s record after a walk counted its flow (a queue from before records).
pub(super) fn rebase(trees: &Trees, which: Which, flow: Flow) -> Result<(), QueueError> {
    let record = Record {
        flow,
        ..Record::default()
    };
    insert_raw(trees, which, RECORD_KEY, record.encode().to_vec())
}

/// The flow `which`'s record states, if it has an intact one (for `queue verify`).
pub(super) fn stated(trees: &Trees, which: Which) -> Result<Option<Flow>, QueueError> {
    Ok(trees
        .get(which)
        .get(RECORD_KEY)?
        .and_then(|raw| Record::decode(&raw))
        .map(|r| r.flow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_refused() {
        let r = Record {
            flow: Flow {
                came_in: Stamp {
                    events: 700,
                    bytes: 99_000,
                },
                went_out: Stamp {
                    events: 12,
                    bytes: 2_000,
                },
                delivered: 10,
            },
            op: Op::Merge {
                first: 3,
                last: 9,
                count: 44,
            },
            undo: (
                Stamp {
                    events: 2,
                    bytes: 90,
                },
                1,
            ),
        };
        let raw = r.encode();
        assert_eq!(Record::decode(&raw), Some(r));
        for i in 0..raw.len() * 8 {
            let mut bad = raw;
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(Record::decode(&bad), None, "bit {i}");
        }
    }

    #[test]
    fn the_record_key_sorts_after_every_entry_key() {
        assert!(RECORD_KEY > &u64::MAX.to_be_bytes()[..]);
        assert!(RECORD_KEY > &0u64.to_be_bytes()[..]);
    }
}
