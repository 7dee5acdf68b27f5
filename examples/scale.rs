//! Scale figures against quota-limited delivery streams: the service's real flusher and
//! Firehose sink (aws-sdk-firehose over HTTP) against the fake Firehose of the tests, which
//! meters every delivery stream as AWS meters a Direct PUT stream (requests, records and bytes
//! per second; `ServiceUnavailableException` over it, per call or per record).
//!
//! ```sh
//! cargo build --release && cargo run --release --example scale
//! ```
//! Knobs: `SCALE_SECS` (measured seconds per case, default 30), `SCALE_CASES` (any of `fan`,
//! `unpaced`, `pair`, `drain`, `sixteenth`, `procs`, `scalein`, `sim`; default all), `SCALE_LATENCY_MS` (how
//! long the fake takes to answer a call, default 50: real Firehose answers in tens of
//! milliseconds, and a flusher that waited for each answer would never reach the quota);
//! for `sim`, `SCALE_SIM_SEEDS` (seeds per case, default 5) and `SCALE_SIM_LATENCY_MS` (the
//! simulated Firehose's median answer, default 50). `--help` prints this.
//!
//! Cases, every stream at the quota of regions other than us-east-1, us-west-2 and eu-west-1
//! (1 MiB/s, 1,000 calls/s, 100,000 records/s), the service configured with `sink.region =
//! "eu-central-1"` so it paces to that documented default with no quota keys set:
//! - `fan`: one instance, one endpoint fanned out over 1, 2 and 4 streams, a backlog larger
//!   than the measured window: delivered bytes/s as a share of the sum of the quotas, and the
//!   share of calls Firehose throttled, measured after a warm-up;
//! - `unpaced`: one stream with `flusher.pacing = false`, the flusher finding the quota by
//!   being throttled, for comparison;
//! - `pair`: two service processes (the release binary: `cargo build --release` first), both
//!   fanned out over the same two streams: each one's share over time, their sum, and the
//!   throttled calls;
//! - `drain`: a backlog left by an outage, drained into two streams: time to empty against
//!   the quota's bound (backlog ÷ the streams' quotas);
//! - `sixteenth`: one instance fanned out over two streams, told the 1 MiB/s quota while the
//!   fake grants each stream a sixteenth of it, as one of 16 replicas sharing them would get;
//! - `procs`: 1, 2 and 4 service processes (the release binary) sharing one stream: the
//!   delivered share, the throttled calls, and the spread of the processes' shares;
//! - `scalein`: 4 service processes on one stream, 2 of them then stopped with SIGTERM: how
//!   long the other two take to use the quota the stopped ones freed;
//! - `sim`: 1 to 128 replicas sharing one stream, simulated
//!   (`firehose_edge::delivery::pacing::sim`: each replica's own delivery policy against a
//!   model of Firehose's meter, in simulated time), all starting together, then one starting
//!   late, a fraction of the quota granted, half of them stopping (a scale-in: how long the
//!   others take to use what it freed), then the real quota halved and restored: what no
//!   machine here could run as processes.
//!
//! The in-process instances are the library's `run_with_sink`, as `main` runs it, minus
//! logging and the metrics recorder; the `pair` case runs the binary itself. Lines are ~200-byte records like /track's; packing is on, as by default.

#[path = "../tests/common/fake_firehose.rs"]
mod fake_firehose;

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_firehose::config::{Credentials, SharedCredentialsProvider};
use bytes::Bytes;
use fake_firehose::{FakeFirehose, QUOTA_OTHER_REGIONS, StreamStats};
use firehose_edge::config::{Config, Durability, SinkKind, StreamList};
use firehose_edge::delivery::pacing::sim;
use firehose_edge::firehose_limits::DIRECT_PUT_QUOTA_DEFAULT;
use firehose_edge::queue::Queue;
use firehose_edge::sink::{FirehoseSink, RecordOutcome, Sink, SinkError};
use firehose_edge::{Listeners, run_with_sink};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const LINE_BYTES: usize = 200;

/// Counts what one instance got accepted, so that two instances on the same streams can be
/// told apart (the fake counts per stream).
struct Counting {
    inner: FirehoseSink,
    accepted_bytes: AtomicU64,
}

#[async_trait]
impl Sink for Counting {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        let sizes: Vec<usize> = records.iter().map(Bytes::len).collect();
        let outcomes = self.inner.put_batch(stream, records).await?;
        let accepted: usize = sizes
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == RecordOutcome::Accepted)
            .map(|(s, _)| s)
            .sum();
        self.accepted_bytes
            .fetch_add(accepted as u64, Ordering::Relaxed);
        Ok(outcomes)
    }
}

/// One service instance on its own runtime and threads, over its own queue.
struct Instance {
    sink: Arc<Counting>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
    filled_bytes: u64,
    _dir: tempfile::TempDir,
}

impl Instance {
    /// Fills a fresh queue with `backlog` bytes of lines for `streams`' endpoint, then starts
    /// the service over it, delivering to `fake`.
    fn start(fake: &FakeFirehose, streams: &[&str], backlog: u64) -> Instance {
        Instance::start_with(fake, streams, backlog, true)
    }

    /// [`Instance::start`], with pacing on or off.
    fn start_with(fake: &FakeFirehose, streams: &[&str], backlog: u64, paced: bool) -> Instance {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = service_config(fake, streams, dir.path());
        config.flusher.pacing = paced;
        let filled_bytes = fill(&config, streams[0], backlog);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let credentials =
            SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "scale"));
        let sink = Arc::new(Counting {
            inner: runtime.block_on(FirehoseSink::connect(&config.sink, Some(credentials))),
            accepted_bytes: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let (run_sink, run_stop) = (sink.clone() as Arc<dyn Sink>, stop.clone());
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let ingest = TcpListener::bind(config.server.listen).await.unwrap();
                let admin = TcpListener::bind(config.admin.listen).await.unwrap();
                run_with_sink(
                    config,
                    Listeners { ingest, admin },
                    run_sink,
                    None,
                    run_stop.cancelled_owned(),
                )
                .await
                .expect("the service runs");
            })
        });
        Instance {
            sink,
            stop,
            thread,
            filled_bytes,
            _dir: dir,
        }
    }

    fn accepted(&self) -> u64 {
        self.sink.accepted_bytes.load(Ordering::Relaxed)
    }

    /// Whether the backlog lasted (a figure measured on an empty queue would be meaningless).
    fn has_backlog(&self) -> bool {
        self.accepted() < self.filled_bytes
    }

    fn stop(self) {
        self.stop.cancel();
        self.thread.join().expect("the instance stops");
    }
}

/// The service's configuration for these runs: loopback, a queue under `dir`, the Firehose
/// sink at `fake` in a 1 MiB/s region, `streams` behind `/track`.
fn service_config(fake: &FakeFirehose, streams: &[&str], dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.queue.path = dir.join("queue");
    config.queue.durability = Durability::Interval;
    config.queue.min_free_bytes = 16 << 20;
    config.sink.kind = SinkKind::Firehose;
    config.sink.region = "eu-central-1".to_owned();
    config.sink.endpoint_url = Some(fake.endpoint_url());
    config.streams.track =
        StreamList::try_from(streams.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    config
}

/// A service **process**: the release binary (`cargo build --release`), over a queue filled
/// first, with its configuration in a file; what it delivered is read from its `/metrics`.
struct Process {
    child: std::process::Child,
    admin: String,
    filled_bytes: u64,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(fake: &FakeFirehose, streams: &[&str], backlog: u64) -> Process {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("firehose-edge")))
            .filter(|b| b.exists())
            .expect("the service binary next to this example: run `cargo build --release` first");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = service_config(fake, streams, dir.path());
        let filled_bytes = fill(&config, streams[0], backlog);
        let file = dir.path().join("config.toml");
        std::fs::write(&file, toml::to_string(&config).expect("the config as TOML")).unwrap();
        let mut child = std::process::Command::new(binary)
            .arg("--config")
            .arg(&file)
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the service starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let admin = loop {
            let line = lines
                .next()
                .expect("the service exits before listening")
                .unwrap();
            if let Some(rest) = line.split("admin=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep reading its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Process {
            child,
            admin,
            filled_bytes,
            _dir: dir,
        }
    }

    /// Bytes delivered: the service's delivered-events counters (every line is
    /// [`LINE_BYTES`] long).
    fn accepted(&self) -> u64 {
        let mut stream = std::net::TcpStream::connect(&self.admin).expect("the admin port");
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let events: f64 = text
            .lines()
            .filter(|l| l.starts_with("firehose_edge_records_delivered_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        events as u64 * LINE_BYTES as u64
    }

    fn has_backlog(&self) -> bool {
        self.accepted() < self.filled_bytes
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(killed.is_ok_and(|s| s.success()), "SIGTERM to {pid}");
        let status = self.child.wait().expect("the service exits");
        assert!(status.success(), "the service exited with {status}");
    }
}

/// Appends `bytes` worth of 200-byte lines under `queue_stream`, 100 to an entry (a 100-event
/// request each); returns the bytes queued.
fn fill(config: &Config, queue_stream: &str, bytes: u64) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queue = Queue::open(&config.queue, &config.stream_names()).expect("the queue opens");
    let entries = bytes.div_ceil((LINE_BYTES * 100) as u64);
    runtime.block_on(async {
        for e in 0..entries {
            let lines: String = (0..100)
                .map(|i| {
                    let head =
                        format!(r#"{{"userId":"u{e}","eventName":"e{i}","metadata":{{"pad":""#);
                    let pad = LINE_BYTES - head.len() - 4;
                    format!("{head}{}\"}}}}\n", "x".repeat(pad))
                })
                .collect();
            debug_assert_eq!(lines.len(), LINE_BYTES * 100);
            queue
                .append(queue_stream, lines.as_bytes(), 100)
                .await
                .expect("append");
        }
    });
    queue.close().expect("the queue closes");
    entries * (LINE_BYTES * 100) as u64
}

/// The fake's counts summed over `streams`.
fn totals(fake: &FakeFirehose, streams: &[&str]) -> StreamStats {
    let mut t = StreamStats::default();
    for s in streams {
        let x = fake.stream_stats(s);
        t.calls += x.calls;
        t.throttled_calls += x.throttled_calls;
        t.throttled_records += x.throttled_records;
        t.accepted_records += x.accepted_records;
        t.accepted_bytes += x.accepted_bytes;
    }
    t
}

fn delta(a: StreamStats, b: StreamStats) -> StreamStats {
    StreamStats {
        calls: b.calls - a.calls,
        throttled_calls: b.throttled_calls - a.throttled_calls,
        throttled_records: b.throttled_records - a.throttled_records,
        accepted_records: b.accepted_records - a.accepted_records,
        accepted_bytes: b.accepted_bytes - a.accepted_bytes,
    }
}

fn quota_bytes() -> f64 {
    QUOTA_OTHER_REGIONS.bytes_per_sec as f64
}

fn fan(fake: &FakeFirehose, measure: Duration) {
    println!(
        "\n## fan-out: one instance, N streams of 1 MiB/s each (warm-up 5 s, then {} s)",
        measure.as_secs()
    );
    println!(
        "| streams | sum of quotas | delivered | share | calls | throttled calls | throttled records |"
    );
    println!("|---|---|---|---|---|---|---|");
    let warmup = Duration::from_secs(5);
    for n in [1usize, 2, 4] {
        let names: Vec<String> = (0..n).map(|i| format!("fan{n}-{i}")).collect();
        let streams: Vec<&str> = names.iter().map(String::as_str).collect();
        for s in &streams {
            fake.set_quota(s, QUOTA_OTHER_REGIONS);
        }
        let backlog = (quota_bytes() * n as f64 * (warmup + measure).as_secs_f64() * 1.3) as u64;
        let instance = Instance::start(fake, &streams, backlog);
        std::thread::sleep(warmup);
        let (t0, s0) = (Instant::now(), totals(fake, &streams));
        std::thread::sleep(measure);
        let (t1, s1) = (Instant::now(), totals(fake, &streams));
        let d = delta(s0, s1);
        let rate = d.accepted_bytes as f64 / (t1 - t0).as_secs_f64();
        let sum = quota_bytes() * n as f64;
        let lasted = instance.has_backlog();
        instance.stop();
        println!(
            "| {n} | {:.2} MiB/s | {:.3} MiB/s | {:.1} % | {} | {} ({:.2} %) | {} of {} |{}",
            sum / 1048576.0,
            rate / 1048576.0,
            100.0 * rate / sum,
            d.calls,
            d.throttled_calls,
            100.0 * d.throttled_calls as f64 / d.calls.max(1) as f64,
            d.throttled_records,
            d.accepted_records + d.throttled_records,
            if lasted {
                ""
            } else {
                " (backlog ran out: figure invalid)"
            }
        );
    }
}

/// The same backlog into one stream with pacing off: what the flusher did before, finding the
/// quota by being throttled.
fn unpaced(fake: &FakeFirehose, measure: Duration) {
    let stream = "unpaced-0";
    fake.set_quota(stream, QUOTA_OTHER_REGIONS);
    println!(
        "\n## pacing off (flusher.pacing = false), one stream of 1 MiB/s (warm-up 5 s, then {} s)",
        measure.as_secs()
    );
    let warmup = Duration::from_secs(5);
    let backlog = (quota_bytes() * (warmup + measure).as_secs_f64() * 1.3) as u64;
    let instance = Instance::start_with(fake, &[stream], backlog, false);
    std::thread::sleep(warmup);
    let (t0, s0) = (Instant::now(), totals(fake, &[stream]));
    std::thread::sleep(measure);
    let d = delta(s0, totals(fake, &[stream]));
    let rate = d.accepted_bytes as f64 / t0.elapsed().as_secs_f64();
    instance.stop();
    println!(
        "delivered {:.3} MiB/s ({:.1} % of the quota); {} of {} calls throttled ({:.1} %), {} of {} records throttled",
        rate / 1048576.0,
        100.0 * rate / quota_bytes(),
        d.throttled_calls,
        d.calls,
        100.0 * d.throttled_calls as f64 / d.calls.max(1) as f64,
        d.throttled_records,
        d.accepted_records + d.throttled_records
    );
}

fn pair(fake: &FakeFirehose, measure: Duration) {
    let streams = ["pair-0", "pair-1"];
    for s in streams {
        fake.set_quota(s, QUOTA_OTHER_REGIONS);
    }
    let warmup = Duration::from_secs(10);
    let sum = quota_bytes() * streams.len() as f64;
    println!(
        "\n## two service processes sharing {} streams of 1 MiB/s (sum {:.0} MiB/s); the second starts 5 s after the first",
        streams.len(),
        sum / 1048576.0
    );
    let total = warmup + measure + Duration::from_secs(5);
    let backlog = (sum * total.as_secs_f64() * 1.3) as u64;
    let a = Process::start(fake, &streams, backlog);
    // The first has the streams to itself for a while, as before a scale-out.
    std::thread::sleep(Duration::from_secs(5));
    let b = Process::start(fake, &streams, backlog);
    println!("| seconds since the second started | first | second | together |");
    println!("|---|---|---|---|");
    let started = Instant::now();
    let (mut last, mut at) = ([a.accepted(), b.accepted()], Instant::now());
    let mut measured = ([0u64; 2], Duration::ZERO, totals(fake, &streams));
    while started.elapsed() < warmup + measure {
        std::thread::sleep(Duration::from_secs(5));
        let now = [a.accepted(), b.accepted()];
        let secs = at.elapsed().as_secs_f64();
        let shares = [0, 1].map(|i| (now[i] - last[i]) as f64 / secs / sum);
        println!(
            "| {:.0} | {:.1} % | {:.1} % | {:.1} % |",
            started.elapsed().as_secs_f64(),
            100.0 * shares[0],
            100.0 * shares[1],
            100.0 * (shares[0] + shares[1])
        );
        if started.elapsed() > warmup {
            measured.0[0] += now[0] - last[0];
            measured.0[1] += now[1] - last[1];
            measured.1 += at.elapsed();
        } else {
            measured.2 = totals(fake, &streams);
        }
        (last, at) = (now, Instant::now());
    }
    let d = delta(measured.2, totals(fake, &streams));
    let secs = measured.1.as_secs_f64();
    let shares = measured.0.map(|b| b as f64 / secs / sum);
    let lasted = a.has_backlog() && b.has_backlog();
    a.stop();
    b.stop();
    println!(
        "converged ({:.0} s after the warm-up): first {:.1} %, second {:.1} %, together {:.1} % of the quotas; {} of {} calls throttled ({:.2} %), {} records throttled{}",
        secs,
        100.0 * shares[0],
        100.0 * shares[1],
        100.0 * (shares[0] + shares[1]),
        d.throttled_calls,
        d.calls,
        100.0 * d.throttled_calls as f64 / d.calls.max(1) as f64,
        d.throttled_records,
        if lasted {
            ""
        } else {
            " (a backlog ran out: figures invalid)"
        }
    );
}

fn drain(fake: &FakeFirehose, measure: Duration) {
    let streams = ["drain-0", "drain-1"];
    for s in streams {
        fake.set_quota(s, QUOTA_OTHER_REGIONS);
    }
    let sum = quota_bytes() * streams.len() as f64;
    let backlog = (sum * measure.as_secs_f64()) as u64;
    println!(
        "\n## drain after an outage: {:.1} MiB queued, {} streams of 1 MiB/s",
        backlog as f64 / 1048576.0,
        streams.len()
    );
    let started = Instant::now();
    let instance = Instance::start(fake, &streams, backlog);
    let filled = started.elapsed();
    let draining = Instant::now();
    while instance.has_backlog() {
        // A measurement: poll the counter a few times a second.
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = draining.elapsed();
    let queued = instance.filled_bytes;
    let bound = queued as f64 / sum;
    let stats = totals(fake, &streams);
    instance.stop();
    println!(
        "filled in {:.1} s; drained {:.1} MiB in {:.1} s; the quotas' bound is {:.1} s ({:.1} % of it); {} throttled calls of {}",
        filled.as_secs_f64(),
        queued as f64 / 1048576.0,
        took.as_secs_f64(),
        bound,
        100.0 * bound / took.as_secs_f64(),
        stats.throttled_calls,
        stats.calls
    );
}

/// One instance, one endpoint over two streams, told the region's 1 MiB/s while the fake
/// grants each stream a sixteenth: what one of 16 replicas sharing them would see.
fn sixteenth(fake: &FakeFirehose, measure: Duration) {
    let streams = ["sixteenth-0", "sixteenth-1"];
    let granted = fake_firehose::Quota {
        bytes_per_sec: QUOTA_OTHER_REGIONS.bytes_per_sec / 16,
        requests_per_sec: QUOTA_OTHER_REGIONS.requests_per_sec / 16,
        records_per_sec: QUOTA_OTHER_REGIONS.records_per_sec / 16,
    };
    for s in streams {
        fake.set_quota(s, granted);
    }
    let real = granted.bytes_per_sec as f64 * streams.len() as f64;
    let warmup = Duration::from_secs(20);
    println!(
        "\n## one instance, two streams, told 1 MiB/s each, granted 1/16 of it (warm-up {} s, then {} s)",
        warmup.as_secs(),
        measure.as_secs()
    );
    let backlog = (real * (warmup + measure).as_secs_f64() * 3.0) as u64;
    let instance = Instance::start(fake, &streams, backlog);
    std::thread::sleep(warmup);
    let (t0, s0) = (Instant::now(), totals(fake, &streams));
    std::thread::sleep(measure);
    let d = delta(s0, totals(fake, &streams));
    let rate = d.accepted_bytes as f64 / t0.elapsed().as_secs_f64();
    let lasted = instance.has_backlog();
    instance.stop();
    println!(
        "delivered ÷ real quota {:.2}; {} of {} calls throttled ({:.2} %), {} records throttled{}",
        rate / real,
        d.throttled_calls,
        d.calls,
        100.0 * d.throttled_calls as f64 / d.calls.max(1) as f64,
        d.throttled_records,
        if lasted {
            ""
        } else {
            " (backlog ran out: figure invalid)"
        }
    );
}

/// 1, 2 and 4 service processes sharing one stream, started together.
fn procs(fake: &FakeFirehose, measure: Duration) {
    let warmup = Duration::from_secs(20);
    println!(
        "\n## N service processes sharing one stream of 1 MiB/s, started together (warm-up {} s, then {} s)",
        warmup.as_secs(),
        measure.as_secs()
    );
    println!(
        "| processes | delivered ÷ quota | calls | throttled calls | throttled records | smallest share ÷ fair | largest |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in [1usize, 2, 4] {
        let name = format!("procs{n}");
        fake.set_quota(&name, QUOTA_OTHER_REGIONS);
        let total = (warmup + measure + Duration::from_secs(5)).as_secs_f64();
        // Each gets about 1/N; twice that, so that none runs dry.
        let backlog = (quota_bytes() * total * 1.3 * (2.0 / n as f64).min(1.0)) as u64;
        let procs: Vec<Process> = (0..n)
            .map(|_| Process::start(fake, &[&name], backlog))
            .collect();
        std::thread::sleep(warmup);
        let (t0, s0) = (Instant::now(), totals(fake, &[&name]));
        let a0: Vec<u64> = procs.iter().map(Process::accepted).collect();
        std::thread::sleep(measure);
        let a1: Vec<u64> = procs.iter().map(Process::accepted).collect();
        let d = delta(s0, totals(fake, &[&name]));
        let secs = t0.elapsed().as_secs_f64();
        let fair = quota_bytes() * secs / n as f64;
        let shares: Vec<f64> = (0..n).map(|i| (a1[i] - a0[i]) as f64 / fair).collect();
        let lasted = procs.iter().all(Process::has_backlog);
        for p in procs {
            p.stop();
        }
        println!(
            "| {n} | {:.3} | {} | {} ({:.2} %) | {} | {:.2} | {:.2} |{}",
            d.accepted_bytes as f64 / secs / quota_bytes(),
            d.calls,
            d.throttled_calls,
            100.0 * d.throttled_calls as f64 / d.calls.max(1) as f64,
            d.throttled_records,
            shares.iter().copied().fold(f64::MAX, f64::min),
            shares.iter().copied().fold(0.0, f64::max),
            if lasted {
                ""
            } else {
                " (a backlog ran out: figures invalid)"
            }
        );
    }
}

/// Four service processes sharing one stream, two of them then stopped with SIGTERM, as
/// Kubernetes stops the pods a scale-in removes: how long the other two take to use the quota
/// the stopped ones freed (the sim's scale-in, on the real binary).
fn scale_in(fake: &FakeFirehose, measure: Duration) {
    let (n, stopped) = (4usize, 2usize);
    let warmup = Duration::from_secs(20);
    let watch = 2 * measure;
    let name = "scalein";
    fake.set_quota(name, QUOTA_OTHER_REGIONS);
    println!(
        "\n## scale-in: {n} service processes sharing one stream of 1 MiB/s, {stopped} stopped (SIGTERM) after {} s; the others watched for {} s",
        warmup.as_secs(),
        watch.as_secs()
    );
    // A quarter of the quota each until the stop, half of it after; half as much again, so
    // that none runs dry.
    let need = quota_bytes() * (warmup.as_secs_f64() / n as f64 + watch.as_secs_f64() / 2.0);
    let procs: Vec<Process> = (0..n)
        .map(|_| Process::start(fake, &[name], (1.5 * need) as u64))
        .collect();
    std::thread::sleep(warmup);
    let (left, going) = {
        let mut procs = procs;
        let going = procs.split_off(n - stopped);
        (procs, going)
    };
    let delivered = |procs: &[Process]| procs.iter().map(Process::accepted).sum::<u64>();
    let (t0, s0) = (Instant::now(), totals(fake, &[name]));
    let mut samples = vec![(0.0, delivered(&left))];
    // Stopped in the background: a graceful stop takes its grace period, and the others
    // are watched meanwhile.
    let stopping: Vec<_> = going
        .into_iter()
        .map(|p| std::thread::spawn(move || p.stop()))
        .collect();
    while t0.elapsed() < watch {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((t0.elapsed().as_secs_f64(), delivered(&left)));
    }
    let d = delta(s0, totals(fake, &[name]));
    let lasted = left.iter().all(Process::has_backlog);
    // The first sample from which 10 s delivered 90 % of the quota.
    let back = (0..samples.len()).find(|&i| {
        samples[i..]
            .iter()
            .find(|s| s.0 >= samples[i].0 + 10.0)
            .is_some_and(|end| {
                let bytes = (end.1 - samples[i].1) as f64;
                bytes >= 0.9 * quota_bytes() * (end.0 - samples[i].0)
            })
    });
    let last = samples.len() - 1;
    let from = samples
        .iter()
        .position(|s| s.0 >= samples[last].0 - 10.0)
        .unwrap_or(0);
    let together = (samples[last].1 - samples[from].1) as f64
        / (samples[last].0 - samples[from].0)
        / quota_bytes();
    for p in left {
        p.stop();
    }
    for s in stopping {
        s.join().expect("a stopped process exits cleanly");
    }
    println!(
        "the other {} at ≥ 90 % of the quota (10 s) after {}; the last 10 s: {:.3} of the quota; {} of {} calls throttled ({:.2} %, the stopping ones' included){}",
        n - stopped,
        back.map_or("never".to_owned(), |i| format!("{:.0} s", samples[i].0)),
        together,
        d.throttled_calls,
        d.calls,
        100.0 * d.throttled_calls as f64 / d.calls.max(1) as f64,
        if lasted {
            ""
        } else {
            " (a backlog ran out: figures invalid)"
        }
    );
}

/// A numeric knob from the environment: `default` when unset, and no run at all when it does
/// not parse (a mistyped figure must not measure something else).
fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// Replicas sharing one stream, simulated (see `delivery::pacing::sim`). Knobs:
/// `SCALE_SIM_SEEDS` (seeds of the latencies and back-off jitter, default 5: shares wander
/// from seed to seed, so a table of one seed would show its luck), `SCALE_SIM_LATENCY_MS`
/// (Firehose's median answer, default 50; each call takes 0.5 to 1.5 times it).
fn simulated() {
    let seeds = knob("SCALE_SIM_SEEDS", 5).max(1);
    let latency = Duration::from_millis(knob("SCALE_SIM_LATENCY_MS", 50));
    let scenario = |n: usize, seconds: u64, seed: u64| {
        let mut scenario =
            sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, n, seconds).with_seed(seed);
        scenario.latency = latency;
        scenario
    };
    let seconds = 300;
    println!(
        "\n## simulated: N replicas sharing one stream of 1 MiB/s, each told the whole quota, all starting at once; Firehose answers in {}-{} ms; figures over seconds 120-{seconds}, the worst of seeds 1-{seeds}",
        latency.as_millis() / 2,
        latency.as_millis() * 3 / 2
    );
    println!(
        "| replicas | delivered ÷ quota | throttled calls | smallest share ÷ fair (its seed) | largest | seeds with a share below ½ | settled (every 30 s ≥ 90 %, ≤ 2 % throttled) after |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in [1usize, 2, 3, 4, 8, 16, 32, 64, 128] {
        let runs: Vec<(u64, sim::Summary, Option<u64>)> = (1..=seeds)
            .map(|seed| {
                let run = scenario(n, seconds, seed).run();
                (
                    seed,
                    run.summary(120, seconds),
                    run.settled(0, 30, 0.9, 0.02),
                )
            })
            .collect();
        let delivered = runs.iter().map(|r| r.1.delivered).fold(f64::MAX, f64::min);
        let throttled = runs.iter().map(|r| r.1.throttled).fold(0.0, f64::max);
        let (smallest, seed) = runs
            .iter()
            .map(|r| (r.1.spread.0, r.0))
            .fold((f64::MAX, 0), |a, b| if b.0 < a.0 { b } else { a });
        let largest = runs.iter().map(|r| r.1.spread.1).fold(0.0, f64::max);
        let below = runs.iter().filter(|r| r.1.spread.0 < 0.5).count();
        let settled = runs
            .iter()
            .map(|r| r.2)
            .try_fold(0, |worst, s| s.map(|s| s.max(worst)))
            .map_or("never".to_owned(), |s| format!("{s} s"));
        println!(
            "| {n} | {delivered:.3} | {:.2} % | {smallest:.2} ({seed}) | {largest:.2} | {below} of {seeds} | {settled} |",
            100.0 * throttled
        );
    }
    println!("\n### simulated: one replica joins N−1 at second 120 (figures over seconds 150-240)");
    println!(
        "| replicas | delivered ÷ quota | throttled calls | smallest share ÷ fair | largest | the late one at ≥ ½ its share after |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [2usize, 4, 16, 64] {
        let run = scenario(n, 240, 1)
            .late_start(Duration::from_secs(120))
            .run();
        let s = run.summary(150, 240);
        let reached = run
            .reached_share(n - 1, 120, 10, 0.5)
            .map_or("never".to_owned(), |s| format!("{s} s"));
        println!(
            "| {n} | {:.3} | {:.2} % | {:.2} | {:.2} | {reached} |",
            s.delivered,
            100.0 * s.throttled,
            s.spread.0,
            s.spread.1
        );
    }
    println!(
        "\n### simulated: one replica granted a fraction of the quota it is told (figures over seconds 60-180)"
    );
    println!("| granted | delivered ÷ granted | calls | throttled calls |");
    println!("|---|---|---|---|");
    for k in [16.0, 64.0] {
        let run = scenario(1, 180, 1).real_from(Duration::ZERO, 1.0 / k).run();
        let s = run.summary(60, 180);
        println!(
            "| 1/{k} | {:.3} | {} | {:.2} % |",
            s.delivered,
            s.calls,
            100.0 * s.throttled
        );
    }
    // Seconds after a change, or None (never): the worst seed's.
    let worst = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a.max(b));
    println!(
        "\n### simulated: scale-in: half of N replicas stop at second 120 (the worst of seeds 1-{seeds})"
    );
    println!(
        "| replicas | the others at ≥ 90 % of the quota (10 s) after | throttled calls in the next 10 min | smallest share ÷ fair, minutes 10-20 after | seeds with a share below ½ |"
    );
    println!("|---|---|---|---|---|");
    const SCALE_IN_END: u64 = 120 + 1_200;
    for n in [2usize, 4, 10, 16, 64] {
        let (mut back, mut throttled, mut smallest, mut below) = (Some(0), 0.0f64, f64::MAX, 0);
        for seed in 1..=seeds {
            let run = scenario(n, SCALE_IN_END, seed)
                .scale_in(n / 2, Duration::from_secs(120))
                .run();
            let found = (120..SCALE_IN_END - 9)
                .find(|&t| run.summary(t, t + 10).delivered >= 0.9)
                .map(|t| t - 120);
            back = worst(back, found);
            throttled = throttled.max(run.summary(121, 720).throttled);
            let spread = run.summary(720, SCALE_IN_END).spread.0;
            smallest = smallest.min(spread);
            below += usize::from(spread < 0.5);
        }
        println!(
            "| {n} → {} | {} | {:.2} % | {smallest:.2} | {below} of {seeds} |",
            n - n / 2,
            back.map_or(format!("> {} s", SCALE_IN_END - 130), |t| format!("{t} s")),
            100.0 * throttled
        );
    }
    println!(
        "\n### simulated: the real quota halved at second 60, restored at second 120 (10 s windows; the worst of seeds 1-{seeds})"
    );
    println!(
        "| replicas | after the drop: delivered ÷ real, throttled | quiet (every 10 s ≥ 90 %, ≤ 2 % throttled) after | after the restore: ≥ 90 % of the quota after |"
    );
    println!("|---|---|---|---|");
    // How long the runs go on after the restore at second 120.
    const RESTORE_END: u64 = 1_020;
    for n in [1usize, 4, 16, 64] {
        let (mut delivered, mut throttled) = (f64::MAX, 0.0f64);
        let (mut followed, mut back) = (Some(0), Some(0));
        for seed in 1..=seeds {
            let run = scenario(n, RESTORE_END, seed)
                .real_from(Duration::from_secs(60), 0.5)
                .real_from(Duration::from_secs(120), 1.0)
                .run();
            let drop = run.summary(65, 120);
            delivered = delivered.min(drop.delivered);
            throttled = throttled.max(drop.throttled);
            let ok = |t: u64| {
                let s = run.summary(t, t + 10);
                s.delivered >= 0.9 && s.throttled <= 0.02
            };
            let quiet = (60..111).find(|&t| (t..111).all(ok)).map(|t| t - 60);
            followed = worst(followed, quiet);
            let again = (120..RESTORE_END - 9)
                .find(|&t| run.summary(t, t + 10).delivered >= 0.9)
                .map(|t| t - 120);
            back = worst(back, again);
        }
        println!(
            "| {n} | {delivered:.3}, {:.2} % | {} | {} |",
            100.0 * throttled,
            followed.map_or("never".to_owned(), |t| format!("{t} s")),
            back.map_or(format!("> {} s", RESTORE_END - 130), |t| format!("{t} s")),
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "{}",
            include_str!("scale.rs")
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .map(|l| l.trim_start_matches("//!").trim_start())
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    let measure = Duration::from_secs(
        std::env::var("SCALE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let cases = std::env::var("SCALE_CASES")
        .unwrap_or_else(|_| "fan,unpaced,pair,drain,sixteenth,procs,scalein,sim".to_owned());
    if cases == "sim" {
        // No fake needed: simulated time only.
        simulated();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime.block_on(FakeFirehose::start());
    fake.keep_records(false);
    let latency = Duration::from_millis(
        std::env::var("SCALE_LATENCY_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(50),
    );
    fake.set_latency(latency);
    println!(
        "fake Firehose on {} (1 thread), answering every call after {} ms; every stream metered at 1 MiB/s, 1,000 calls/s, 100,000 records/s",
        fake.endpoint_url(),
        latency.as_millis()
    );
    if cases.contains("fan") {
        fan(&fake, measure);
    }
    if cases.contains("unpaced") {
        unpaced(&fake, measure);
    }
    if cases.contains("pair") {
        pair(&fake, measure);
    }
    if cases.contains("drain") {
        drain(&fake, measure);
    }
    if cases.contains("sixteenth") {
        sixteenth(&fake, measure);
    }
    if cases.contains("procs") {
        procs(&fake, measure);
    }
    if cases.contains("scalein") {
        scale_in(&fake, measure);
    }
    if cases.contains("sim") {
        simulated();
    }
    let violations = fake.limit_violations();
    assert!(
        violations.is_empty(),
        "calls real Firehose would refuse: {violations:?}"
    );
    runtime.block_on(fake.shutdown());
}
