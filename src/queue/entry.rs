//! The entry codec: one sled value per queued request (or group of requests written together).
//!
//! Layout (version 3): version (1 byte) · enqueue time in ms (8) · line count (4) · its
//! tree's [`Stamp`] (16) · CRC-32 of the 28 bytes before it and of the lines (4) · the NDJSON
//! lines. The checksum lets the queue tell a damaged entry from a good one instead of
//! delivering garbage or stalling on it; the stamp lets a start count a tree from its last
//! entry (see [`super::ledger`]). Versions 1 (13-byte header, no checksum) and 2 (17 bytes,
//! no stamp), written before those existed, are still read.

use super::QueueError;

/// Bytes of a version-3 header; every entry is charged this much against the budget.
pub(super) const HEADER_LEN: usize = 33;
const V2_HEADER_LEN: usize = 17;
const V1_HEADER_LEN: usize = 13;
const V1: u8 = 1;
const V2: u8 = 2;
/// Chosen so that no single flipped bit turns it into another version.
const V3: u8 = 7;

/// What had entered an entry's tree, ever, once the entry was added: events and budget
/// bytes. Carried by every entry, so the last entry of a tree tells what came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// Events.
    pub events: u64,
    /// Budget bytes.
    pub bytes: u64,
}

/// What one request asks to write to one stream: its NDJSON lines (each ending in `\n`) and
/// how many there are. A request for several streams has one part per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The queue stream.
    pub stream: String,
    /// The lines, concatenated.
    pub lines: Vec<u8>,
    /// How many lines `lines` holds.
    pub count: u32,
}

impl Part {
    /// Budget bytes this part takes as an entry of its own (its lines and one header).
    pub(super) fn budget_bytes(&self) -> u64 {
        Entry::budget_of(self.lines.len())
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
    /// Its tree's stamp when it was added (`None` for entries written before stamps).
    pub stamp: Option<Stamp>,
    /// NDJSON lines, each ending in `\n`.
    pub lines: sled::IVec,
}

impl Entry {
    /// Encodes an entry whose lines are the concatenation of `parts`.
    pub(super) fn encode_parts(
        enqueued_ms: u64,
        count: u32,
        stamp: Stamp,
        parts: &[&[u8]],
    ) -> Vec<u8> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut value = Vec::with_capacity(HEADER_LEN + len);
        value.push(V3);
        value.extend_from_slice(&enqueued_ms.to_be_bytes());
        value.extend_from_slice(&count.to_be_bytes());
        value.extend_from_slice(&stamp.events.to_be_bytes());
        value.extend_from_slice(&stamp.bytes.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&value[1..HEADER_LEN - 4]);
        for p in parts {
            crc.update(p);
        }
        value.extend_from_slice(&crc.finalize().to_be_bytes());
        for p in parts {
            value.extend_from_slice(p);
        }
        value
    }

    /// Budget bytes an entry of `lines_len` bytes of lines takes.
    pub(super) fn budget_of(lines_len: usize) -> u64 {
        (HEADER_LEN + lines_len) as u64
    }

    /// Decodes and checks a stored entry; a bad key, header or checksum is
    /// [`QueueError::Damaged`].
    pub(super) fn decode(key: &[u8], value: sled::IVec) -> Result<Entry, QueueError> {
        let key = key_of(key)?;
        let damaged = |why: &str| QueueError::Damaged {
            key,
            why: why.to_owned(),
        };
        let header = match value.first() {
            Some(&V3) if value.len() >= HEADER_LEN => HEADER_LEN,
            Some(&V2) if value.len() >= V2_HEADER_LEN => V2_HEADER_LEN,
            Some(&V1) if value.len() >= V1_HEADER_LEN => V1_HEADER_LEN,
            _ => return Err(damaged("unknown entry header")),
        };
        let u64_at = |i: usize| u64::from_be_bytes(value[i..i + 8].try_into().expect("8 bytes"));
        let enqueued_ms = u64_at(1);
        let count = u32::from_be_bytes(value[9..13].try_into().expect("4 bytes"));
        if header != V1_HEADER_LEN {
            let stored = u32::from_be_bytes(value[header - 4..header].try_into().expect("4"));
            let mut crc = crc32fast::Hasher::new();
            crc.update(&value[1..header - 4]);
            crc.update(&value[header..]);
            if crc.finalize() != stored {
                return Err(damaged("checksum mismatch"));
            }
        }
        let stamp = (header == HEADER_LEN).then(|| Stamp {
            events: u64_at(13),
            bytes: u64_at(21),
        });
        Ok(Entry {
            key,
            enqueued_ms,
            count,
            stamp,
            lines: value.subslice(header, value.len() - header),
        })
    }

    /// The line count a damaged value claims, if its header is readable (for loss reports).
    pub(super) fn claimed_count(value: &[u8]) -> Option<u32> {
        match value.first() {
            Some(&V1 | &V2 | &V3) => value
                .get(9..13)
                .map(|raw| u32::from_be_bytes(raw.try_into().expect("4 bytes"))),
            _ => None,
        }
    }

    /// The lines one by one, each with its `\n`.
    pub fn iter_lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.split_inclusive(|&b| b == b'\n')
    }

    /// Bytes this entry counts against the budget (whatever its version: a v3 header's).
    pub(super) fn budget_bytes(&self) -> u64 {
        Entry::budget_of(self.lines.len())
    }
}

/// A stored key as a sequence number.
pub(super) fn key_of(k: &[u8]) -> Result<u64, QueueError> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| QueueError::Damaged {
            key: 0,
            why: format!("bad key length {}", k.len()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_bit_is_caught() {
        let stamp = Stamp {
            events: 9,
            bytes: 1234,
        };
        let value = Entry::encode_parts(42, 2, stamp, &[b"a\n", b"bc\n"]);
        let e = Entry::decode(&7u64.to_be_bytes(), value.clone().into()).unwrap();
        assert_eq!(
            (e.key, e.enqueued_ms, e.count, e.stamp),
            (7, 42, 2, Some(stamp))
        );
        assert_eq!(e.iter_lines().collect::<Vec<_>>(), [&b"a\n"[..], b"bc\n"]);
        for i in 0..value.len() * 8 {
            let mut bad = value.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                Entry::decode(&7u64.to_be_bytes(), bad.into()).is_err(),
                "bit {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn version_1_and_2_entries_still_read() {
        let mut v1 = vec![V1];
        v1.extend_from_slice(&5u64.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(b"x\n");
        let e = Entry::decode(&1u64.to_be_bytes(), v1.into()).unwrap();
        assert_eq!((e.enqueued_ms, e.count, &e.lines[..]), (5, 1, &b"x\n"[..]));
        let mut v2 = vec![V2];
        v2.extend_from_slice(&5u64.to_be_bytes());
        v2.extend_from_slice(&1u32.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&v2[1..13]);
        crc.update(b"y\n");
        v2.extend_from_slice(&crc.finalize().to_be_bytes());
        v2.extend_from_slice(b"y\n");
        let e = Entry::decode(&1u64.to_be_bytes(), v2.into()).unwrap();
        assert_eq!((e.count, e.stamp, &e.lines[..]), (1, None, &b"y\n"[..]));
    }
}
