//! One criterion group per stage of the data path (see `src/lib.rs`):
//!
//! - `encode`: JSON parse, schema validation and NDJSON encoding of a `/track` body
//!   (`event::encode`), per event and per body byte. HTTP parsing is not in here; the
//!   `throughput` bench covers the whole request.
//! - `queue_append`: a 1-event entry made durable (`fsync`, group commit) or only appended
//!   (`interval`), by 64 concurrent appenders, as concurrent requests would.
//! - `packing`: the flusher draining a prepared backlog into a sink that answers at once,
//!   with lines packed into records and without.
//! - `drain`: the flusher, as configured by default, emptying a 200k-event backlog.
//! - `privacy`: a privacy policy of three drops and two hashes, a tracking plan of 50 events,
//!   and both, applied to a 100-message Segment batch's records, per event, beside the same
//!   batch under no policy (which returns the records untouched).
//! - `suppression`: the same batch matched against a deletion-request list of 10 000
//!   identifiers (none of the batch's; and one user of it), per event, beside an empty list.
//!
//! `cargo bench --bench stages [-- --warm-up-time 1 --measurement-time 2]`. Queues live
//! under Cargo's target scratch directory (see `common::scratch_dir`).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use firehose_edge::config::{Durability, FlusherConfig, QueueConfig};
use firehose_edge::flusher::{Flusher, Packing};
use firehose_edge::protocol::classic::{self as event, Endpoint};
use firehose_edge::queue::Queue;
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use common::InstantSink;

const STREAM: &str = "log_user_events";

/// Concurrent appenders: enough that a group commit covers many appends, as under load.
const APPENDERS: u64 = 64;

/// A fresh queue after this many appends, so that a fast mode (`interval`) does not grow
/// sled's files (which never shrink) by gigabytes over a run.
const ROTATE_AFTER: u64 = 200_000;

/// Events per entry in the flusher backlogs: a 100-event request.
const EVENTS_PER_ENTRY: u64 = 100;

fn runtime() -> Runtime {
    // Multi-threaded like the service, so appenders and flusher calls really run in
    // parallel (on this machine's cores).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The NDJSON lines of a `/track` request of `events` events, as the queue would receive them.
fn encoded(events: usize) -> Vec<u8> {
    event::encode(
        Endpoint::Track,
        &common::track_body(events, 1),
        SystemTime::now(),
    )
    .expect("the bench body is valid")
    .ndjson
}

/// A queue in its own temporary directory, closed (committer thread stopped) when replaced.
struct Scratch {
    queue: Queue,
    appended: u64,
    // Dropped after `queue` is closed; keeps the directory alive until then.
    _dir: TempDir,
}

impl Scratch {
    fn open(durability: Durability) -> Scratch {
        let dir = common::scratch_dir();
        let config = QueueConfig {
            path: dir.path().join("queue"),
            durability,
            ..QueueConfig::default()
        };
        let queue = Queue::open(&config, &[STREAM.to_owned()]).expect("queue opens");
        Scratch {
            queue,
            appended: 0,
            _dir: dir,
        }
    }

    fn close(self) {
        self.queue.close().expect("queue closes");
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    // The same work twice, once per unit: criterion reports one throughput per benchmark.
    for events in [1usize, 100] {
        let body = common::track_body(events, 1);
        let received = SystemTime::now();
        for (unit, throughput) in [
            ("events", Throughput::Elements(events as u64)),
            ("body_bytes", Throughput::Bytes(body.len() as u64)),
        ] {
            group.throughput(throughput);
            group.bench_with_input(
                BenchmarkId::new(format!("track/{unit}"), events),
                &body,
                |b, body| {
                    b.iter(|| {
                        event::encode(Endpoint::Track, black_box(body), received)
                            .expect("the bench body is valid")
                    })
                },
            );
        }
    }
    group.finish();
}

fn queue_append(c: &mut Criterion) {
    let rt = runtime();
    let lines: Arc<[u8]> = encoded(1).into();
    let mut group = c.benchmark_group("queue_append");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for (name, durability) in [
        ("fsync", Durability::Fsync),
        ("interval", Durability::Interval),
    ] {
        let mut scratch = Some(Scratch::open(durability));
        group.bench_function(BenchmarkId::new(name, APPENDERS), |b| {
            // Time `iters` appends spread over the appenders, all started together.
            b.iter_custom(|iters| {
                if scratch.as_ref().is_some_and(|s| s.appended > ROTATE_AFTER) {
                    scratch.take().expect("present").close();
                    scratch = Some(Scratch::open(durability));
                }
                let s = scratch.as_mut().expect("present");
                s.appended += iters;
                let queue = s.queue.clone();
                let lines = lines.clone();
                rt.block_on(async move {
                    let tasks = APPENDERS.min(iters);
                    let started = std::time::Instant::now();
                    let mut set = JoinSet::new();
                    for t in 0..tasks {
                        let n = iters / tasks + u64::from(t < iters % tasks);
                        let (queue, lines) = (queue.clone(), lines.clone());
                        set.spawn(async move {
                            for _ in 0..n {
                                queue.append(STREAM, &lines, 1).await.expect("append");
                            }
                        });
                    }
                    while let Some(done) = set.join_next().await {
                        done.expect("appender");
                    }
                    started.elapsed()
                })
            });
        });
        if let Some(s) = scratch {
            s.close();
        }
    }
    group.finish();
}

/// Appends a backlog of `events` events in 100-event entries (not timed).
async fn prefill(queue: &Queue, entry: &[u8], events: u64) {
    for _ in 0..events / EVENTS_PER_ENTRY {
        queue
            .append(STREAM, entry, EVENTS_PER_ENTRY as u32)
            .await
            .expect("append");
    }
}

/// Times a flusher from its start until it has delivered and removed `events` events.
async fn drain(queue: &Queue, config: &FlusherConfig, packing: bool, events: u64) -> Duration {
    let sink = Arc::new(InstantSink::default());
    let packing = Packing {
        enabled: packing,
        max_bytes: config.pack_max_bytes,
        max_lines: config.pack_max_lines,
    };
    let stop = CancellationToken::new();
    let started = std::time::Instant::now();
    let flusher = tokio::spawn(
        Flusher::new(
            STREAM.to_owned(),
            queue.clone(),
            sink.clone(),
            config.clone(),
            packing,
        )
        .run(stop.clone()),
    );
    sink.wait_for(events).await;
    // A stopping flusher returns once its calls in flight are settled, so the timing ends
    // when the backlog has left the queue, not merely reached the sink.
    stop.cancel();
    flusher.await.expect("flusher stops");
    let elapsed = started.elapsed();
    assert_eq!(queue.queued_events(STREAM), 0, "backlog fully drained");
    elapsed
}

/// A flusher bench: each iteration prefills `events` events (untimed) and drains them.
fn bench_drain(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    id: BenchmarkId,
    config: &FlusherConfig,
    packing: bool,
    events: u64,
) {
    let entry = encoded(EVENTS_PER_ENTRY as usize);
    let scratch = Scratch::open(Durability::Interval);
    group.throughput(Throughput::Elements(events));
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    prefill(&scratch.queue, &entry, events).await;
                    total += drain(&scratch.queue, config, packing, events).await;
                }
                total
            })
        });
    });
    scratch.close();
}

fn flusher_config() -> FlusherConfig {
    FlusherConfig {
        // A backlog needs no lingering; without this the last, partial batch would wait
        // 200 ms for company that never comes.
        linger_ms: 0,
        ..FlusherConfig::default()
    }
}

fn packing(c: &mut Criterion) {
    const EVENTS: u64 = 50_000;
    let rt = runtime();
    let config = flusher_config();
    let mut group = c.benchmark_group("packing");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for (name, on) in [("on", true), ("off", false)] {
        let id = BenchmarkId::new(name, EVENTS);
        bench_drain(&mut group, &rt, id, &config, on, EVENTS);
    }
    group.finish();
}

fn drain_backlog(c: &mut Criterion) {
    const EVENTS: u64 = 200_000;
    let rt = runtime();
    let config = flusher_config();
    let mut group = c.benchmark_group("drain");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let id = BenchmarkId::new("default", EVENTS);
    bench_drain(&mut group, &rt, id, &config, config.packing, EVENTS);
    group.finish();
}

/// The records of a 100-message `/v1/batch` (each with an e-mail, a phone and a user agent).
fn segment_batch() -> Vec<firehose_edge::queue::BatchLine> {
    use firehose_edge::protocol::segment::{self, Received, V1};
    let messages: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            serde_json::json!({"type": "track", "userId": format!("user-{i}"),
                "anonymousId": format!("anon-{i}"), "event": "Order Completed",
                "messageId": format!("m-{i}"),
                "properties": {"email": "a@b.example", "total": 42.5, "currency": "EUR"},
                "traits": {"phone": "+1-555-0100", "plan": "pro"},
                "context": {"userAgent": "Mozilla/5.0 (X11; Linux x86_64)", "library": {"name": "bench"}}})
        })
        .collect();
    let body = serde_json::json!({"batch": messages}).to_string();
    let received = Received {
        at: SystemTime::now(),
        ip: Some("203.0.113.7".to_owned()),
        source: "default",
    };
    segment::encode(V1::Batch, body.as_bytes(), &received, &Default::default())
        .expect("the bench batch is valid")
}

fn privacy(c: &mut Criterion) {
    use firehose_edge::policy::Policies;
    use firehose_edge::protocol::Records;
    let dir = TempDir::new().expect("a temporary directory");
    let key = dir.path().join("key");
    std::fs::write(&key, "a-bench-key-0123456789").expect("the key is written");
    let with = firehose_edge::Config {
        privacy: toml::from_str(&format!(
            "drop = [\"properties.email\", \"traits.phone\", \"context.library\"]\n\
             hash = [\"userId\", \"anonymousId\"]\nhash_key_file = {key:?}\n"
        ))
        .expect("the bench policy parses"),
        ..firehose_edge::Config::default()
    };
    // A plan of 50 events, the batch's among them, each with a schema for its properties.
    let plan = dir.path().join("plan.json");
    let events: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            let name = if i == 0 { "Order Completed".to_owned() } else { format!("Event {i}") };
            serde_json::json!({"name": name, "rules": {"type": "object", "properties": {"properties": {
                "type": "object", "required": ["total", "currency"],
                "properties": {"total": {"type": "number", "minimum": 0},
                               "currency": {"type": "string", "enum": ["EUR", "USD"]},
                               "email": {"type": "string"}}}}}})
        })
        .collect();
    std::fs::write(
        &plan,
        serde_json::json!({"rules": {"events": events}}).to_string(),
    )
    .expect("the plan is written");
    let planned = firehose_edge::Config {
        plans: toml::from_str(&format!(
            "[sources.default]\nfile = {plan:?}\nmode = \"tag\"\n"
        ))
        .expect("the bench plan config parses"),
        ..firehose_edge::Config::default()
    };
    let both = firehose_edge::Config {
        plans: planned.plans.clone(),
        ..with.clone()
    };
    let lines = segment_batch();
    let mut group = c.benchmark_group("privacy");
    group.throughput(Throughput::Elements(lines.len() as u64));
    for (name, config) in [
        ("none", firehose_edge::Config::default()),
        ("3_drops_2_hashes", with),
        ("plan_of_50_events", planned),
        ("plan_and_policy", both),
    ] {
        let policies = Policies::new(&config).expect("the bench policies are valid");
        group.bench_function(BenchmarkId::new(name, lines.len()), |b| {
            b.iter_batched(
                || Records::Messages {
                    source: "default".to_owned(),
                    ids: "",
                    lines: lines.clone(),
                },
                |records| {
                    policies
                        .apply(records, "default", &firehose_edge::protocol::segment::SHAPE)
                        .expect("fits")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn suppression(c: &mut Criterion) {
    use firehose_edge::policy::suppress::Matcher;
    use firehose_edge::protocol::Records;
    let lines = segment_batch();
    let fields = firehose_edge::protocol::segment::SHAPE.ids;
    let others: Vec<String> = (0..10_000).map(|i| format!("erased-user-{i}")).collect();
    let mut with_one = others.clone();
    with_one[0] = "user-7".to_owned();
    let mut group = c.benchmark_group("suppression");
    group.throughput(Throughput::Elements(lines.len() as u64));
    for (name, ids) in [
        ("empty_list", Vec::new()),
        ("10000_ids_none_in_batch", others),
        ("10000_ids_one_in_batch", with_one),
    ] {
        let matcher = Matcher::new(ids.iter().map(String::as_str), None, fields);
        group.bench_function(BenchmarkId::new(name, lines.len()), |b| {
            b.iter_batched(
                || Records::Messages {
                    source: "default".to_owned(),
                    ids: "",
                    lines: lines.clone(),
                },
                |records| black_box(matcher.filter(records, fields)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    encode,
    queue_append,
    packing,
    drain_backlog,
    privacy,
    suppression
);
criterion_main!(benches);
