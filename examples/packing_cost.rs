//! Measures what Firehose would bill for a backlog of 200-byte events, with packing on and
//! off: billed bytes ÷ payload bytes, records per call and calls per million events.
//!
//! `cargo run --release --example packing_cost [EVENTS]` (default 1,000,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use firehose_edge::config::{Durability, FlusherConfig, QueueConfig};
use firehose_edge::flusher::{Flusher, Packing};
use firehose_edge::metrics::billed_bytes;
use firehose_edge::queue::Queue;
use firehose_edge::sink::{RecordOutcome, Sink, SinkError};
use tokio_util::sync::CancellationToken;

/// Accepts everything and counts what Firehose would see.
#[derive(Default)]
struct Counting {
    calls: AtomicU64,
    records: AtomicU64,
    events: AtomicU64,
    payload: AtomicU64,
    billed: AtomicU64,
    done: tokio::sync::Notify,
    target: AtomicU64,
}

#[async_trait]
impl Sink for Counting {
    async fn put_batch(
        &self,
        _: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        for r in &records {
            self.payload.fetch_add(r.len() as u64, Ordering::Relaxed);
            self.billed
                .fetch_add(billed_bytes(r.len() as u64), Ordering::Relaxed);
            let lines = r.iter().filter(|&&b| b == b'\n').count() as u64;
            if self.events.fetch_add(lines, Ordering::Relaxed) + lines
                >= self.target.load(Ordering::Relaxed)
            {
                self.done.notify_one();
            }
        }
        Ok(vec![RecordOutcome::Accepted; records.len()])
    }
}

async fn measure(events: u64, packing: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let qc = QueueConfig {
        path: dir.path().join("q"),
        durability: Durability::Interval,
        ..QueueConfig::default()
    };
    let queue = Queue::open(&qc, &["s".to_owned()]).expect("queue opens");
    // A 200-byte line, as a typical small analytics event encodes.
    let line = format!(
        "{{\"eventName\":\"page_view\",\"pad\":\"{}\"}}\n",
        "x".repeat(200 - 35)
    );
    assert_eq!(line.len(), 200);
    let request: Vec<u8> = line.repeat(100).into_bytes();
    for _ in 0..events / 100 {
        queue.append("s", &request, 100).await.expect("append");
    }
    let sink = Arc::new(Counting::default());
    sink.target.store(events, Ordering::Relaxed);
    let config = FlusherConfig {
        linger_ms: 0,
        ..FlusherConfig::default()
    };
    let packing = Packing {
        enabled: packing,
        max_bytes: config.pack_max_bytes,
        max_lines: config.pack_max_lines,
    };
    let stop = CancellationToken::new();
    let started = std::time::Instant::now();
    let task = tokio::spawn(
        Flusher::new("s".to_owned(), queue.clone(), sink.clone(), config, packing)
            .run(stop.clone()),
    );
    sink.done.notified().await;
    let elapsed = started.elapsed();
    stop.cancel();
    task.await.expect("flusher stops");
    let calls = sink.calls.load(Ordering::Relaxed) as f64;
    let records = sink.records.load(Ordering::Relaxed) as f64;
    let payload = sink.payload.load(Ordering::Relaxed) as f64;
    let billed = sink.billed.load(Ordering::Relaxed) as f64;
    println!(
        "packing={:<5} events={events} calls={calls} records/call={:.1} events/record={:.1} calls/1M events={:.0} billed/payload={:.3} drain={:.0} events/s",
        packing.enabled,
        records / calls,
        events as f64 / records,
        calls * 1e6 / events as f64,
        billed / payload,
        events as f64 / elapsed.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("EVENTS is a number"));
    measure(events, true).await;
    measure(events, false).await;
}
