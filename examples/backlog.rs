//! Measures the queue with a large backlog: RSS while holding it, and the time to reopen it
//! (what a restart costs before the service can serve).
//!
//! ```sh
//! cargo run --release --example backlog -- fill DIR [EVENTS] [EVENTS_PER_ENTRY]
//! cargo run --release --example backlog -- open DIR     # a restart, in a fresh process
//! ```
//! Defaults: 10,000,000 events, 1 per entry (one-event requests, the worst case). RSS is
//! read from /proc/self/status.

use std::time::Instant;

use firehose_edge::config::{Durability, QueueConfig};
use firehose_edge::queue::Queue;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().expect("fill or open");
    let dir: std::path::PathBuf = args.next().expect("DIR").into();
    let events: u64 = args
        .next()
        .map_or(10_000_000, |a| a.parse().expect("EVENTS"));
    let per_entry: u64 = args
        .next()
        .map_or(1, |a| a.parse().expect("EVENTS_PER_ENTRY"));
    let config = QueueConfig {
        path: dir.join("queue"),
        durability: Durability::Interval,
        ..QueueConfig::default()
    };
    let streams = vec!["log_user_events".to_owned()];
    println!("rss at start: {:.1} MiB", rss_mib());
    if mode == "open" {
        let reopened = Instant::now();
        let queue = Queue::open(&config, &streams).expect("queue reopens");
        let head = queue
            .read_head("log_user_events", &Default::default(), 1, usize::MAX)
            .expect("head");
        println!(
            "reopened with {} events queued, head readable: {} — in {:.2} s; rss {:.1} MiB",
            queue.queued_events("log_user_events"),
            !head.is_empty(),
            reopened.elapsed().as_secs_f64(),
            rss_mib()
        );
        return;
    }
    // A typical ~200-byte encoded event.
    let line = r#"{"messageId":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","receivedAt":"2026-11-24T08:56:02.123Z","userId":"user-123456","eventName":"page_view","timestampUTC":1732435200,"metadata":{"path":"/p"}}
"#;
    let entry = line.repeat(per_entry as usize);
    let filled = Instant::now();
    {
        let queue = Queue::open(&config, &streams).expect("queue opens");
        let writers = 8;
        let per_writer = events / per_entry / writers;
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (queue, entry) = (queue.clone(), entry.clone());
                tokio::spawn(async move {
                    for _ in 0..per_writer {
                        queue
                            .append("log_user_events", entry.as_bytes(), per_entry as u32)
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
        println!(
            "filled {} events ({} per entry) in {:.1} s; rss {:.1} MiB; on disk {:.0} MiB; budget bytes {:.0} MiB",
            queue.queued_events("log_user_events"),
            per_entry,
            filled.elapsed().as_secs_f64(),
            rss_mib(),
            queue.size_on_disk() as f64 / 1048576.0,
            queue.queued_bytes() as f64 / 1048576.0,
        );
        queue.close().expect("close");
    }
}
