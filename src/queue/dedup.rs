//! Idempotent ingest: a durable window of accepted `messageId`s per source, so that an SDK
//! retrying a batch whose answer was lost does not queue it twice.
//!
//! Only the committer thread checks and records ids, in arrival order, so two copies of one
//! message in flight at once cannot both pass. The ids a group accepted are written as one
//! sled value (`dedup` tree, key = sequence number) right after the group's records and
//! before its flush: the same group commit makes both durable, and because sled recovers a
//! prefix of its log, a crash can leave records without their ids (a retry then stores a
//! copy: at-least-once, as before) but never ids without their records (which would drop a
//! retried message that was never stored).
//!
//! The window is bounded by age (`queue.dedup_window_secs`) and by count
//! (`queue.dedup_max_ids`), in memory and on disk; it is rebuilt from the tree at start.
//!
//! An id is kept as a 128-bit fingerprint of (source, `messageId`) — SipHash-1-3 under a
//! random key made once per queue and kept in the tree — not as its text: ~36 bytes of memory
//! an id instead of ~165 (1 M ids: ~36 MiB instead of ~165), 16 bytes on disk. Two distinct
//! ids share a fingerprint with a chance of about n²/2¹²⁹ (n = 1 M: 10⁻²⁷), and without the
//! key a client cannot make one of its ids collide with another's on purpose.

use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};

use super::QueueError;

/// One message for [`super::Queue::append_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLine {
    /// Queue stream (delivery stream name) it goes to.
    pub stream: String,
    /// One NDJSON line, ending in `\n`.
    pub line: Vec<u8>,
    /// Idempotency key (the client's `messageId`), if the client sent one.
    pub message_id: Option<String>,
}

/// What [`super::Queue::append_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchAppended {
    /// Lines queued.
    pub stored: u32,
    /// Lines skipped: their `message_id` was accepted from this source within the window.
    pub duplicates: u32,
    /// Lines queued by stream, in the order the streams first appear among them (a stream
    /// with none queued is left out): what the accepted-events counter counts.
    pub per_stream: Vec<(String, u32)>,
}

/// An id's fingerprint (see the module's notes).
pub(super) type Id = u128;

/// Ids accepted by one group commit.
struct Accepted {
    key: u64,
    ms: u64,
    ids: Vec<Id>,
}

/// Hashes a fingerprint for the window's set by folding it to 64 bits: it is already a keyed
/// hash of the id (uniform, and unknown to clients without the key), so hashing it again
/// with SipHash, the set's default, would only cost time (~200 instructions a message).
#[derive(Default, Clone, Copy)]
struct Folded(u64);

impl std::hash::Hasher for Folded {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used (an `Id`); anything else is folded in all the same.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, id: u128) {
        self.0 ^= (id as u64) ^ ((id >> 64) as u64);
    }
}

type IdSet = HashSet<Id, std::hash::BuildHasherDefault<Folded>>;

#[derive(Default)]
struct State {
    ids: IdSet,
    groups: VecDeque<Accepted>,
}

/// The window.
pub(super) struct Dedup {
    window_ms: u64,
    max_ids: usize,
    hasher_key: [u8; 16],
    state: Mutex<State>,
}

/// Where the fingerprint key lives in the tree (not an 8-byte group key).
const HASHER_KEY: &[u8] = b"fingerprint-key";
/// First byte of a group record of fingerprints (older records hold the ids' text and begin
/// with a big-endian time in ms, whose first byte is 0).
const FINGERPRINTS: u8 = 0xF1;

/// A request's lines grouped by stream: (stream, lines, count).
pub(super) type Parts = Vec<super::entry::Part>;

/// The fingerprint of `id` from `source`.
fn fingerprint(key: &[u8; 16], source: &str, id: &str) -> Id {
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new_with_key(key);
    h.write(source.as_bytes());
    h.write(&[0]);
    h.write(id.as_bytes());
    siphasher::sip128::Hasher128::finish128(&h).as_u128()
}

/// The tree's fingerprint key, made (and stored) if it has none.
fn hasher_key(tree: &sled::Tree) -> Result<[u8; 16], QueueError> {
    if let Some(raw) = tree.get(HASHER_KEY)?
        && let Ok(key) = <[u8; 16]>::try_from(&raw[..])
    {
        return Ok(key);
    }
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| QueueError::Storage(format!("no randomness: {e}")))?;
    tree.insert(HASHER_KEY, &key[..])?;
    Ok(key)
}

impl Dedup {
    /// Rebuilds the window from `tree`, dropping what has expired.
    pub fn load(
        tree: &sled::Tree,
        window_ms: u64,
        max_ids: usize,
        now_ms: u64,
    ) -> Result<Dedup, QueueError> {
        let dedup = Dedup {
            window_ms,
            max_ids,
            hasher_key: hasher_key(tree)?,
            state: Mutex::default(),
        };
        {
            let mut state = dedup.state.lock();
            for item in tree.iter() {
                let (k, v) = item?;
                if &k[..] == HASHER_KEY {
                    continue;
                }
                let Some(group) = decode(&dedup.hasher_key, &k, &v) else {
                    tracing::warn!(
                        "unreadable dedup record dropped; its ids may be accepted again"
                    );
                    tree.remove(k)?;
                    continue;
                };
                state.ids.extend(group.ids.iter().cloned());
                state.groups.push_back(group);
            }
        }
        dedup.prune(tree, now_ms)?;
        Ok(dedup)
    }

    /// Splits `lines` into the parts to store and the duplicates to skip; the ids of the
    /// lines to store join the window at once (so a copy later in the same group is caught)
    /// and are returned, to be recorded or forgotten with the group.
    pub fn filter(&self, source: &str, lines: Vec<BatchLine>) -> (Parts, u32, Vec<Id>) {
        let mut state = self.state.lock();
        let mut parts: Parts = Vec::new();
        let (mut duplicates, mut new_ids) = (0, Vec::new());
        for line in lines {
            if let Some(id) = &line.message_id {
                let key = fingerprint(&self.hasher_key, source, id);
                if !state.ids.insert(key) {
                    duplicates += 1;
                    continue;
                }
                new_ids.push(key);
            }
            match parts.iter_mut().find(|p| p.stream == line.stream) {
                Some(part) => {
                    part.lines.extend_from_slice(&line.line);
                    part.count += 1;
                }
                None => parts.push(super::entry::Part {
                    stream: line.stream,
                    lines: line.line,
                    count: 1,
                }),
            }
        }
        (parts, duplicates, new_ids)
    }

    /// Takes back ids of a group that failed (its requests were answered with an error).
    pub fn forget(&self, ids: &[Id]) {
        let mut state = self.state.lock();
        for id in ids {
            state.ids.remove(id);
        }
    }

    /// The value that records `ids` under `key`, and notes it for pruning.
    pub fn record(&self, key: u64, now_ms: u64, ids: Vec<Id>) -> Vec<u8> {
        let mut value = Vec::with_capacity(9 + 16 * ids.len());
        value.push(FINGERPRINTS);
        value.extend_from_slice(&now_ms.to_be_bytes());
        for id in &ids {
            value.extend_from_slice(&id.to_be_bytes());
        }
        let mut state = self.state.lock();
        state.groups.push_back(Accepted {
            key,
            ms: now_ms,
            ids,
        });
        value
    }

    /// Drops groups past the window's age or over its size, from memory and from `tree`.
    pub fn prune(&self, tree: &sled::Tree, now_ms: u64) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        while let Some(oldest) = state.groups.front() {
            let expired = oldest.ms + self.window_ms < now_ms;
            if !expired && state.ids.len() <= self.max_ids {
                break;
            }
            let group = state.groups.pop_front().expect("front exists");
            tree.remove(group.key.to_be_bytes())?;
            for id in &group.ids {
                state.ids.remove(id);
            }
        }
        Ok(())
    }
}

fn decode(hasher_key: &[u8; 16], k: &[u8], v: &[u8]) -> Option<Accepted> {
    let key = u64::from_be_bytes(k.try_into().ok()?);
    if v.first() == Some(&FINGERPRINTS) {
        let ms = u64::from_be_bytes(v.get(1..9)?.try_into().ok()?);
        let rest = &v[9..];
        if !rest.len().is_multiple_of(16) {
            return None;
        }
        let ids = rest
            .chunks_exact(16)
            .map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes")))
            .collect();
        return Some(Accepted { key, ms, ids });
    }
    // A record from before fingerprints: the ids' `source\0id` text.
    let ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let mut ids = Vec::new();
    let mut rest = &v[8..];
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let text = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        let (source, id) = text.split_once('\u{0}')?;
        ids.push(fingerprint(hasher_key, source, id));
        rest = &rest[2 + len..];
    }
    Some(Accepted { key, ms, ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: &str, text: &str, id: Option<&str>) -> BatchLine {
        BatchLine {
            stream: stream.to_owned(),
            line: format!("{text}\n").into_bytes(),
            message_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn the_window_is_bounded_by_age_and_count_and_survives_a_reload() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("dedup").unwrap();
        let d = Dedup::load(&tree, 1000, 3, 0).unwrap();
        let (parts, dups, ids) = d.filter(
            "web",
            vec![
                line("a", "1", Some("m1")),
                line("b", "2", Some("m2")),
                line("a", "3", None),
                line("a", "1 again", Some("m1")),
            ],
        );
        assert_eq!(dups, 1, "a copy inside the same batch");
        assert_eq!(
            parts,
            [
                super::super::entry::Part {
                    stream: "a".to_owned(),
                    lines: b"1\n3\n".to_vec(),
                    count: 2
                },
                super::super::entry::Part {
                    stream: "b".to_owned(),
                    lines: b"2\n".to_vec(),
                    count: 1
                },
            ]
        );
        tree.insert(1u64.to_be_bytes(), d.record(1, 100, ids))
            .unwrap();
        // Another source may use the same id.
        assert_eq!(d.filter("app", vec![line("a", "x", Some("m1"))]).1, 0);
        let d = Dedup::load(&tree, 1000, 3, 500).unwrap();
        assert_eq!(
            d.filter("web", vec![line("a", "1", Some("m1"))]).1,
            1,
            "reloaded"
        );
        let d = Dedup::load(&tree, 1000, 3, 5000).unwrap();
        assert_eq!(
            d.filter("web", vec![line("a", "1", Some("m1"))]).1,
            0,
            "expired"
        );
        assert_eq!(
            tree.len(),
            1,
            "expired groups leave the disk too (the key stays)"
        );
        // Count bound: the oldest group goes first.
        let (_, _, ids) = d.filter(
            "web",
            vec![line("a", "1", Some("a1")), line("a", "2", Some("a2"))],
        );
        tree.insert(2u64.to_be_bytes(), d.record(2, 6000, ids))
            .unwrap();
        let (_, _, ids) = d.filter(
            "web",
            vec![line("a", "3", Some("a3")), line("a", "4", Some("a4"))],
        );
        tree.insert(3u64.to_be_bytes(), d.record(3, 6000, ids))
            .unwrap();
        d.prune(&tree, 6000).unwrap();
        assert_eq!(tree.len(), 2);
        assert_eq!(d.filter("web", vec![line("a", "1", Some("a1"))]).1, 0);
        assert_eq!(d.filter("web", vec![line("a", "4", Some("a4"))]).1, 1);
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    /// A window written before fingerprints (ids as text) still catches its ids, and the key
    /// a queue made is the one it keeps.
    #[test]
    fn records_of_ids_as_text_still_count_and_the_key_stays() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("dedup").unwrap();
        let mut old = 100u64.to_be_bytes().to_vec();
        for text in ["web\u{0}m1", "app\u{0}m2"] {
            old.extend_from_slice(&(text.len() as u16).to_be_bytes());
            old.extend_from_slice(text.as_bytes());
        }
        tree.insert(7u64.to_be_bytes(), old).unwrap();
        let d = Dedup::load(&tree, 10_000, 10, 200).unwrap();
        let key = d.hasher_key;
        let line = |id: &str| BatchLine {
            stream: "s".to_owned(),
            line: b"x\n".to_vec(),
            message_id: Some(id.to_owned()),
        };
        assert_eq!(d.filter("web", vec![line("m1")]).1, 1);
        assert_eq!(d.filter("app", vec![line("m2")]).1, 1);
        assert_eq!(
            d.filter("web", vec![line("m2")]).1,
            0,
            "another source's id"
        );
        assert_eq!(Dedup::load(&tree, 10_000, 10, 200).unwrap().hasher_key, key);
        assert_ne!(
            fingerprint(&key, "web", "m1"),
            fingerprint(&key, "web\u{0}m", "1"),
            "the separator keeps (source, id) pairs apart"
        );
    }
}
