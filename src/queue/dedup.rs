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

/// Ids accepted by one group commit.
struct Accepted {
    key: u64,
    ms: u64,
    ids: Vec<Box<str>>,
}

#[derive(Default)]
struct State {
    ids: HashSet<Box<str>>,
    groups: VecDeque<Accepted>,
}

/// The window.
pub(super) struct Dedup {
    window_ms: u64,
    max_ids: usize,
    state: Mutex<State>,
}

/// A request's lines grouped by stream: (stream, lines, count).
pub(super) type Parts = Vec<super::entry::Part>;

fn id_key(source: &str, id: &str) -> Box<str> {
    format!("{source}\u{0}{id}").into_boxed_str()
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
            state: Mutex::default(),
        };
        {
            let mut state = dedup.state.lock();
            for item in tree.iter() {
                let (k, v) = item?;
                let Some(group) = decode(&k, &v) else {
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
    pub fn filter(&self, source: &str, lines: Vec<BatchLine>) -> (Parts, u32, Vec<Box<str>>) {
        let mut state = self.state.lock();
        let mut parts: Parts = Vec::new();
        let (mut duplicates, mut new_ids) = (0, Vec::new());
        for line in lines {
            if let Some(id) = &line.message_id {
                let key = id_key(source, id);
                if state.ids.contains(&key) {
                    duplicates += 1;
                    continue;
                }
                state.ids.insert(key.clone());
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
    pub fn forget(&self, ids: &[Box<str>]) {
        let mut state = self.state.lock();
        for id in ids {
            state.ids.remove(id);
        }
    }

    /// The value that records `ids` under `key`, and notes it for pruning.
    pub fn record(&self, key: u64, now_ms: u64, ids: Vec<Box<str>>) -> Vec<u8> {
        let mut value = Vec::new();
        value.extend_from_slice(&now_ms.to_be_bytes());
        for id in &ids {
            let bytes = id.as_bytes();
            let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(&bytes[..usize::from(len)]);
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

fn decode(k: &[u8], v: &[u8]) -> Option<Accepted> {
    let key = u64::from_be_bytes(k.try_into().ok()?);
    let ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let mut ids = Vec::new();
    let mut rest = &v[8..];
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let id = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        ids.push(id.into());
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
        assert!(tree.is_empty(), "expired groups leave the disk too");
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
        assert_eq!(tree.len(), 1);
        assert_eq!(d.filter("web", vec![line("a", "1", Some("a1"))]).1, 0);
        assert_eq!(d.filter("web", vec![line("a", "4", Some("a4"))]).1, 1);
    }
}
