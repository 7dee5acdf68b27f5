//! The flusher's drain rate, printed after the table next to the ingest rate of case (c):
//! a backlog queued up front, delivered to an instant sink with the default settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firehose_edge::config::{Durability, FlusherConfig, QueueConfig};
use firehose_edge::flusher::{Flusher, Packing};
use firehose_edge::protocol::classic::{self as event, Endpoint};
use firehose_edge::queue::Queue;
use tokio_util::sync::CancellationToken;

use crate::common::{self, InstantSink};

/// Appends `events` events in 100-event entries straight to a queue (untimed), then times a
/// flusher with the default settings delivering them all to an instant sink. Returns the
/// events, the time and the sink calls.
pub async fn backlog(events: u64) -> (u64, Duration, u64) {
    const PER_ENTRY: u64 = 100;
    const STREAM: &str = "log_user_events";
    let dir = common::scratch_dir();
    let queue_config = QueueConfig {
        path: dir.path().join("queue"),
        // Durability only affects appends, and these are not timed.
        durability: Durability::Interval,
        ..QueueConfig::default()
    };
    let queue = Queue::open(&queue_config, &[STREAM.to_owned()]).expect("queue opens");
    let entry = event::encode(
        Endpoint::Track,
        &common::track_body(PER_ENTRY as usize, 1),
        std::time::SystemTime::now(),
    )
    .expect("the bench body is valid")
    .ndjson;
    for _ in 0..events / PER_ENTRY {
        queue
            .append(STREAM, &entry, PER_ENTRY as u32)
            .await
            .expect("prefill");
    }
    let config = FlusherConfig {
        // Everything is queued already: nothing to linger for, and the last partial batch
        // would otherwise wait for company.
        linger_ms: 0,
        ..FlusherConfig::default()
    };
    let packing = Packing {
        enabled: config.packing,
        max_bytes: config.pack_max_bytes,
        max_lines: config.pack_max_lines,
    };
    let sink = Arc::new(InstantSink::default());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let flusher = tokio::spawn(
        Flusher::new(
            STREAM.to_owned(),
            queue.clone(),
            sink.clone(),
            config,
            packing,
        )
        .run(stop.clone()),
    );
    let total = events / PER_ENTRY * PER_ENTRY;
    sink.wait_for(total).await;
    let elapsed = started.elapsed();
    stop.cancel();
    flusher.await.expect("flusher stops");
    queue.close().expect("queue closes");
    (total, elapsed, sink.calls())
}
