//! The manifest: an independent, small record of what the queue must hold, so that a queue
//! that comes back shorter than what was acknowledged is reported instead of silently shrunk.
//!
//! Per stream it keeps three monotonic counts of events: `acked` (acknowledged to clients),
//! `delivered` (accepted by the sink and removed) and `lost` (found missing and reported
//! before). The queue must hold `acked − delivered − lost` events (its queue and dead-letter
//! trees together). It lives outside sled, in `queue.path/manifest`, as two fixed slots
//! written alternately (sequence number + CRC-32 each, `fdatasync`ed), so a crash in the
//! middle of a write leaves the other slot intact.
//!
//! Freshness, and so what it can detect: the manifest is rewritten about once a second, at
//! open and at a clean close, so a loss of events acknowledged in the last second before a
//! crash is not detected. `delivered` is also kept in sled, written *before* each removal,
//! and the larger of the two is used, so a removal can never look like a loss.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name inside `queue.path`.
pub const MANIFEST_FILE: &str = "manifest";
const SLOT: u64 = 64 << 10;
const MAGIC: &[u8; 4] = b"FEM1";
/// magic (4) · sequence (8) · payload length (4) · CRC-32 of sequence, length and payload (4)
const SLOT_HEADER: usize = 20;

/// One stream's counts of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Acknowledged to clients.
    pub acked: u64,
    /// Accepted by the sink and removed from the queue.
    pub delivered: u64,
    /// Found missing at an open and reported.
    pub lost: u64,
}

impl Counts {
    /// Events the queue must hold.
    pub fn expected(&self) -> u64 {
        self.acked
            .saturating_sub(self.delivered)
            .saturating_sub(self.lost)
    }
}

/// What the manifest file said.
#[derive(Debug)]
pub enum Read {
    /// No manifest file (a new queue, or one written before manifests existed).
    Missing,
    /// Neither slot is intact.
    Damaged,
    /// The newest intact slot.
    Found(BTreeMap<String, Counts>),
}

/// Reads the newest intact slot of `dir`'s manifest.
pub fn read(dir: &Path) -> std::io::Result<Read> {
    let file = match File::open(dir.join(MANIFEST_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e),
    };
    let best = (0..2)
        .filter_map(|slot| read_slot(&file, slot))
        .max_by_key(|(seq, _)| *seq);
    Ok(match best {
        Some((_, streams)) => Read::Found(streams),
        None => Read::Damaged,
    })
}

fn read_slot(file: &File, slot: u64) -> Option<(u64, BTreeMap<String, Counts>)> {
    let mut header = [0u8; SLOT_HEADER];
    file.read_exact_at(&mut header, slot * SLOT).ok()?;
    if &header[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(header[4..12].try_into().ok()?);
    let len = u32::from_be_bytes(header[12..16].try_into().ok()?) as usize;
    let stored = u32::from_be_bytes(header[16..20].try_into().ok()?);
    if len > SLOT as usize - SLOT_HEADER {
        return None;
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, slot * SLOT + SLOT_HEADER as u64)
        .ok()?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..16]);
    crc.update(&payload);
    if crc.finalize() != stored {
        return None;
    }
    Some((seq, serde_json::from_slice(&payload).ok()?))
}

/// The manifest's writer: alternates slots, one `fdatasync` per write.
#[derive(Debug)]
pub struct Writer {
    file: File,
    seq: u64,
    last: Option<BTreeMap<String, Counts>>,
}

impl Writer {
    /// Opens (or creates) `dir`'s manifest for writing.
    pub fn open(dir: &Path) -> std::io::Result<Writer> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(MANIFEST_FILE))?;
        let seq = (0..2)
            .filter_map(|slot| read_slot(&file, slot))
            .map(|(seq, _)| seq)
            .max()
            .unwrap_or(0);
        Ok(Writer {
            file,
            seq,
            last: None,
        })
    }

    /// Writes `streams` into the older slot and syncs it; skips the write when nothing
    /// changed since the last one.
    pub fn write(&mut self, streams: &BTreeMap<String, Counts>) -> std::io::Result<()> {
        if self.last.as_ref() == Some(streams) {
            return Ok(());
        }
        let payload = serde_json::to_vec(streams).map_err(std::io::Error::other)?;
        if payload.len() > SLOT as usize - SLOT_HEADER {
            return Err(std::io::Error::other("manifest larger than its slot"));
        }
        let seq = self.seq + 1;
        let mut buf = Vec::with_capacity(SLOT_HEADER + payload.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[4..16]);
        crc.update(&payload);
        buf.extend_from_slice(&crc.finalize().to_be_bytes());
        buf.extend_from_slice(&payload);
        self.file.write_all_at(&buf, (seq % 2) * SLOT)?;
        self.file.sync_data()?;
        self.seq = seq;
        self.last = Some(streams.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(acked: u64) -> BTreeMap<String, Counts> {
        [(
            "s".to_owned(),
            Counts {
                acked,
                delivered: 1,
                lost: 0,
            },
        )]
        .into()
    }

    #[test]
    fn newest_intact_slot_wins_and_a_torn_write_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Read::Missing));
        let mut w = Writer::open(dir.path()).unwrap();
        w.write(&counts(5)).unwrap();
        w.write(&counts(9)).unwrap();
        let Read::Found(got) = read(dir.path()).unwrap() else {
            panic!("manifest unreadable")
        };
        assert_eq!(got["s"].acked, 9);
        assert_eq!(got["s"].expected(), 8);
        // Tear the newer slot (seq 2 lives in slot 0): the older one is used.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(MANIFEST_FILE))
            .unwrap();
        f.write_all_at(b"garbage", 30).unwrap();
        let Read::Found(got) = read(dir.path()).unwrap() else {
            panic!("the older slot is intact")
        };
        assert_eq!(got["s"].acked, 5);
        f.write_all_at(b"garbage", SLOT + 30).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Read::Damaged));
        // A reopened writer continues the sequence.
        let mut w = Writer::open(dir.path()).unwrap();
        w.write(&counts(11)).unwrap();
        let Read::Found(got) = read(dir.path()).unwrap() else {
            panic!("rewritten")
        };
        assert_eq!(got["s"].acked, 11);
    }
}
