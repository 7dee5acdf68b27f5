//! Erasure: the durable list of suppressed user identifiers (deletion requests), and taking
//! their records out of the queue before they are delivered. Which record is whose is the
//! caller's to say (an [`Eraser`]; see `crate::policy::suppress`); the queue decides when an
//! entry can change.
//!
//! What makes it safe, step by step:
//! - The list (tree `suppressed`: identifier → when it was added, and whether its erasure is
//!   still **pending**) is flushed before anything is erased, and an identifier stays pending
//!   until every tree was walked: a crash in the middle leaves it pending, and the next start
//!   walks again before any flusher runs ([`Queue::suppressed`] says which).
//! - Each entry changes with one ledger change, announced first (see [`super::ledger`]): a
//!   rewrite without the user's lines, or a removal when none is left; a crash at any point
//!   is told apart at the next start, and the counts stay exact. Erased events leave the
//!   books as **delivered** do (on purpose, not lost), so the manifest never reports them
//!   missing; a dead-letter tree's erased events are added to the queue tree's count first.
//! - An entry **out with a flusher** is never rewritten under it (its settle is computed from
//!   the copy it holds): it is marked for a recheck, and is filtered under the stream's lock
//!   when it settles or before it is handed out again ([`super::ledger::Flight`]).
//! - The **compactor pauses** while an erasure walks (a merge moves lines between keys), and
//!   a merge under way finishes first (it holds the stream's lock).
//! - The walk reads without the stream's lock, in chunks, so appends and deliveries go on;
//!   each entry with a match is read again under the lock before it changes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::entry::{Entry, key_of};
use super::ledger::{self, Books, Out, RECORD_KEY, Which};
use super::store::Trees;
use super::{Queue, QueueError};

/// Whether a record (one line, with its `\n`) belongs to a suppressed user.
pub type Eraser = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Entries an erasure reads per chunk (without the stream's lock, the store held).
const CHUNK: usize = 1024;

/// A suppressed identifier (as the admin API and `suppress list` show it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suppressed {
    /// The identifier.
    pub id: String,
    /// When it was added (ms since the epoch).
    #[serde(rename = "added_at_ms")]
    pub added_ms: u64,
    /// Whether the records of it still queued may not all be erased yet (a crash stopped
    /// the walk): the next erasure's to finish.
    pub pending: bool,
}

/// What an erasure took out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Records erased from the queue.
    pub queued: u64,
    /// Records erased from the dead-letter trees.
    pub dead_letters: u64,
    /// Records in entries out with a flusher at the time: erased when their delivery attempt
    /// settles, unless the sink accepted them in that attempt.
    pub in_flight: u64,
}

impl Queue {
    /// Every suppressed identifier, in byte order.
    pub fn suppressed(&self) -> Result<Vec<Suppressed>, QueueError> {
        let store = self.store()?;
        let mut out = Vec::new();
        for item in store.suppressed.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let (added_ms, pending) = match v.as_ref() {
                [time @ .., pending] if time.len() == 8 => (
                    u64::from_be_bytes(time.try_into().expect("8 bytes")),
                    *pending != 0,
                ),
                _ => (0, true),
            };
            out.push(Suppressed {
                id,
                added_ms,
                pending,
            });
        }
        Ok(out)
    }

    /// Adds `ids` to the list, each pending, and flushes; returns how many were new. Call
    /// [`Queue::erase`] next, then [`Queue::erased`].
    pub fn suppress(&self, ids: &[String]) -> Result<u64, QueueError> {
        self.fault()?;
        let store = self.store()?;
        let mut new = 0;
        for id in ids {
            let added_ms = match store.suppressed.get(id.as_bytes())? {
                Some(v) if v.len() == 9 => u64::from_be_bytes(v[..8].try_into().expect("8")),
                _ => {
                    new += 1;
                    super::now_ms()
                }
            };
            store
                .suppressed
                .insert(id.as_bytes(), suppressed_value(added_ms, true))?;
        }
        store.sync(&self.inner.config.path)?;
        Ok(new)
    }

    /// Marks `ids` erased (no longer pending), if still listed.
    pub fn erased(&self, ids: &[String]) -> Result<(), QueueError> {
        let store = self.store()?;
        for id in ids {
            if let Some(v) = store.suppressed.get(id.as_bytes())?
                && v.len() == 9
            {
                let added_ms = u64::from_be_bytes(v[..8].try_into().expect("8"));
                store
                    .suppressed
                    .insert(id.as_bytes(), suppressed_value(added_ms, false))?;
            }
        }
        store.sync(&self.inner.config.path)
    }

    /// Removes `ids` from the list and flushes; returns how many were listed.
    pub fn unsuppress(&self, ids: &[String]) -> Result<u64, QueueError> {
        self.fault()?;
        let store = self.store()?;
        let mut removed = 0;
        for id in ids {
            removed += u64::from(store.suppressed.remove(id.as_bytes())?.is_some());
        }
        store.sync(&self.inner.config.path)?;
        Ok(removed)
    }

    /// What decides, from now on, which records of entries marked for a recheck go (`None`:
    /// none). [`Queue::erase`] sets it; a caller sets it again when the list shrinks.
    pub fn set_eraser(&self, eraser: Option<Eraser>) {
        *self.inner.eraser.write() = eraser;
    }

    pub(super) fn eraser(&self) -> Option<Eraser> {
        self.inner.eraser.read().clone()
    }

    /// Takes every record `eraser` matches out of every stream's queue and dead-letter trees
    /// (entries out with a flusher: when they settle), and returns what it took.
    pub fn erase(&self, eraser: Eraser) -> Result<Erased, QueueError> {
        self.set_eraser(Some(eraser.clone()));
        let compactor = &self.inner.compactor;
        let _paused = compactor.pause();
        // A merge that began before the pause holds its stream's lock until it is written.
        for ledger in self.inner.streams.values() {
            drop(ledger.lock());
        }
        let mut erased = Erased::default();
        let mut streams: Vec<&String> = self.inner.streams.keys().collect();
        streams.sort();
        for stream in streams {
            for which in [Which::Queue, Which::Dead] {
                let mut from = Some(0);
                while let Some(at) = from {
                    let (keys, next) = self.candidates(stream, which, at, &eraser)?;
                    for key in keys {
                        self.erase_key(stream, which, key, &eraser, &mut erased)?;
                    }
                    from = next;
                }
            }
        }
        Ok(erased)
    }

    /// Up to [`CHUNK`] entries of `which` from key `from`: the keys with a record `eraser`
    /// matches, and where the next chunk starts (`None`: the end).
    fn candidates(
        &self,
        stream: &str,
        which: Which,
        from: u64,
        eraser: &Eraser,
    ) -> Result<(Vec<u64>, Option<u64>), QueueError> {
        let store = self.store()?;
        let trees = store.trees(stream)?;
        let mut keys = Vec::new();
        let mut last = None;
        let range = from.to_be_bytes().to_vec()..RECORD_KEY.to_vec();
        for item in trees.get(which).range(range).take(CHUNK) {
            let (k, v) = item?;
            let key = key_of(&k)?;
            last = Some(key);
            trees.read(v.len());
            match Entry::decode(&k, v) {
                Ok(entry) if entry.iter_lines().any(|l| eraser(l)) => keys.push(key),
                // Left to `read_head` to quarantine and report.
                Ok(_) | Err(QueueError::Damaged { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let next = match last {
            Some(key) if key < u64::MAX => Some(key + 1),
            _ => None,
        };
        Ok((keys, next))
    }

    /// Erases the records `eraser` matches from entry `key` of `which`, read again under the
    /// stream's lock; an entry out with a flusher is marked for a recheck instead.
    fn erase_key(
        &self,
        stream: &str,
        which: Which,
        key: u64,
        eraser: &Eraser,
        erased: &mut Erased,
    ) -> Result<(), QueueError> {
        let store = self.store()?;
        let trees = store.trees(stream)?;
        let ledger = self.ledger(stream)?;
        let mut books = ledger.lock();
        let mut flight = ledger.flight.lock();
        let Some(value) = trees.get(which).get(key.to_be_bytes())? else {
            return Ok(());
        };
        let entry = match Entry::decode(&key.to_be_bytes(), value) {
            Ok(entry) => entry,
            Err(QueueError::Damaged { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if which == Which::Queue && flight.out.contains(&key) {
            let n = entry.iter_lines().filter(|l| eraser(l)).count() as u64;
            if n > 0 {
                flight.recheck.insert(key);
                erased.in_flight += n;
            }
            return Ok(());
        }
        let (_, n) = self.erase_in(&mut books, trees, stream, which, entry, eraser)?;
        match which {
            Which::Queue => erased.queued += n,
            Which::Dead => erased.dead_letters += n,
        }
        Ok(())
    }

    /// Rewrites `entry` of `which` without the records `eraser` matches (under the stream's
    /// lock, the entry not out with a flusher). Returns the entry as it is now (`None`:
    /// removed) and how many records went.
    pub(super) fn erase_in(
        &self,
        books: &mut Books,
        trees: &Trees,
        stream: &str,
        which: Which,
        entry: Entry,
        eraser: &Eraser,
    ) -> Result<(Option<Entry>, u64), QueueError> {
        let kept: Vec<&[u8]> = entry.iter_lines().filter(|l| !eraser(l)).collect();
        let gone = u64::from(entry.count).saturating_sub(kept.len() as u64);
        if gone == 0 {
            return Ok((Some(entry), 0));
        }
        self.fault()?;
        if which == Which::Dead {
            // The queue tree's count of what left on purpose first: a crash before the
            // dead-letter entry changes leaves more held than expected (re-deliveries at
            // worst), never a loss reported.
            let out = Out {
                delivered: gone,
                ..Out::default()
            };
            ledger::write_off(books, Which::Queue, trees, out)?;
        }
        let out = Out {
            events: gone,
            bytes: 0,
            delivered: if which == Which::Queue { gone } else { 0 },
        };
        let key = entry.key;
        let freed = ledger::take_out(books, which, trees, &entry, &kept, out, None, || Ok(()))?;
        if which == Which::Queue {
            self.inner.admission.release(freed);
        }
        crate::metrics::queue_erased(stream, gone);
        let now = match kept.is_empty() {
            true => None,
            false => match trees.get(which).get(key.to_be_bytes())? {
                Some(v) => Some(Entry::decode(&key.to_be_bytes(), v)?),
                None => None,
            },
        };
        Ok((now, gone))
    }

    /// The lines of `lines` that stay when entry `key`, out with a flusher, settles: all of
    /// them, unless an erasure marked it for a recheck (under the stream's lock).
    pub(super) fn unerased<'l>(
        &self,
        flight: &super::ledger::Flight,
        key: u64,
        lines: &[&'l [u8]],
    ) -> Option<Vec<&'l [u8]>> {
        if !flight.recheck.contains(&key) {
            return None;
        }
        let eraser = self.eraser()?;
        Some(lines.iter().copied().filter(|l| !eraser(l)).collect())
    }
}

/// The value of a listed identifier: when it was added, and whether its erasure is pending.
fn suppressed_value(added_ms: u64, pending: bool) -> Vec<u8> {
    let mut v = added_ms.to_be_bytes().to_vec();
    v.push(u8::from(pending));
    v
}

/// Whether the compactor may merge now (see [`super::compact`]).
pub(super) fn merging_allowed(queue: &Queue) -> bool {
    queue.inner.compactor.paused.load(Ordering::Acquire) == 0
}

#[cfg(test)]
#[path = "erase_tests.rs"]
mod tests;
