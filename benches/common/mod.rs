//! Shared by both benches: realistic request bodies, a sink that accepts at once, and where
//! benchmark queues live.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use firehose_edge::sink::{RecordOutcome, Sink, SinkError};
use tokio::sync::watch;

pub mod bare;

/// A fixed event time, so bodies are identical from run to run.
const TIMESTAMP_MS: u64 = 1_700_000_000_123;

/// A `/track` body of `events` page views for one user. The metadata is small on purpose:
/// each event then encodes to a line of about 200 bytes (id, receive time and keys add
/// ~180), a typical small analytics event.
pub fn track_body(events: usize, user: usize) -> Vec<u8> {
    let events: Vec<String> = (0..events)
        .map(|i| {
            format!(
                r#"{{"eventName":"page_view","timestampUTC":{},"metadata":{{"path":"/p/{i:05}"}}}}"#,
                TIMESTAMP_MS + i as u64
            )
        })
        .collect();
    format!(
        r#"{{"userId":"user-{user:06}","events":[{}]}}"#,
        events.join(",")
    )
    .into_bytes()
}

/// An `/alias` body.
pub fn alias_body(user: usize) -> Vec<u8> {
    format!(
        r#"{{"newUserId":"user-{user:06}","originalUserId":"anon-{user:06}","timestampUTC":{TIMESTAMP_MS}}}"#
    )
    .into_bytes()
}

/// A `/profile` body.
pub fn profile_body(user: usize) -> Vec<u8> {
    format!(
        r#"{{"userId":"user-{user:06}","attributes":{{"plan":"pro","country":"DE"}},"timestampUTC":{TIMESTAMP_MS}}}"#
    )
    .into_bytes()
}

/// A Segment `track` message as analytics SDKs send it; `id` makes its `messageId` unique.
pub fn segment_message(user: usize, k: usize, id: &str) -> String {
    format!(
        r#"{{"type":"track","userId":"user-{user:06}","event":"page_view","properties":{{"path":"/p/{k:05}"}},"timestamp":"2026-11-24T08:56:02.123Z","messageId":"{id}-{k}","context":{{"library":{{"name":"bench","version":"1"}}}}}}"#
    )
}

/// A `/v1/batch` body of `events` such messages for one user, their ids made from `id`.
pub fn v1_batch_body(events: usize, user: usize, id: &str) -> Vec<u8> {
    let batch: Vec<String> = (0..events).map(|k| segment_message(user, k, id)).collect();
    format!(
        r#"{{"batch":[{}],"sentAt":"2026-11-24T08:56:03.000Z"}}"#,
        batch.join(",")
    )
    .into_bytes()
}

/// Records in a file sink's lake so far: its lines, in every file below `lake`.
pub fn lake_line_count(lake: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(lake) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => lake_line_count(&e.path()),
            Ok(_) => {
                std::fs::read(e.path()).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            }
            Err(_) => 0,
        })
        .sum()
}

/// Parent directory for benchmark queues. Cargo's per-target scratch directory sits on the
/// build disk, whereas `/tmp` is a tmpfs on many systems, where `fsync` costs nothing and
/// the durable-append numbers would be fiction.
pub fn scratch_dir() -> tempfile::TempDir {
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&parent).expect("scratch directory");
    tempfile::tempdir_in(parent).expect("temp dir")
}

/// A sink that accepts every record at once and publishes how many events (lines) it has
/// seen, so the figures measure this service and not a destination.
pub struct InstantSink {
    events: watch::Sender<u64>,
    calls: AtomicU64,
}

impl Default for InstantSink {
    fn default() -> Self {
        InstantSink {
            events: watch::channel(0).0,
            calls: AtomicU64::new(0),
        }
    }
}

impl InstantSink {
    /// Events accepted so far.
    pub fn events(&self) -> u64 {
        *self.events.borrow()
    }

    /// `put_batch` calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Resolves once at least `n` events were accepted.
    pub async fn wait_for(&self, n: u64) {
        let mut rx = self.events.subscribe();
        rx.wait_for(|&seen| seen >= n)
            .await
            .expect("the sender lives in self");
    }
}

#[async_trait]
impl Sink for InstantSink {
    async fn put_batch(
        &self,
        _: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        // Counting newlines is the only work done here: ~200 bytes per event, far below the
        // cost of the queue reads and removes this is meant to expose.
        let lines: u64 = records
            .iter()
            .map(|r| r.iter().filter(|&&b| b == b'\n').count() as u64)
            .sum();
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.events.send_modify(|seen| *seen += lines);
        Ok(vec![RecordOutcome::Accepted; records.len()])
    }
}
