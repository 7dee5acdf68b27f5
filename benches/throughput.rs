//! End to end: the real service against a bare hyper server, under the same HTTP/1.1
//! keep-alive load, and the flusher's drain rate next to the ingest rate.
//!
//! `cargo bench --bench throughput` (under `cargo test` it makes a short smoke run). Knobs: `THROUGHPUT_SECS` (measured seconds per run,
//! default 5), `THROUGHPUT_QUICK=1` (1 s runs at 64 connections only, a 200k-event drain),
//! `THROUGHPUT_CONNS` (e.g. `16,64`), `THROUGHPUT_CASES` (letters, e.g. `ac`; default all),
//! `THROUGHPUT_CLIENT_THREADS` (load generator workers, default 1).
//!
//! What is measured:
//! - firehose-edge: `run_with_sink` on 127.0.0.1:0 over a fresh queue per run, and a sink
//!   that accepts at once. A file sink would put the lake's writes on the disk that the
//!   queue fsyncs, making the figure about that disk; with the instant sink the flusher still
//!   does all of its own work (read the head, pack, remove) while requests come in, as it
//!   would in front of Firehose.
//! - bare hyper: reads the whole body and answers the same 200 JSON without looking at it:
//!   the ceiling that HTTP handling, this load generator and this machine allow.
//! - A run is a warm-up, then a fixed window in which every response that completes counts,
//!   from N connections each sending one request after another.
//!
//! No tracing subscriber and no metrics recorder are installed, so logging and metrics cost
//! less than in production, where `main` installs both.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use firehose_edge::config::{Config, Durability, FlusherConfig, QueueConfig};
use firehose_edge::event::{self, Endpoint};
use firehose_edge::flusher::{Flusher, Packing};
use firehose_edge::queue::Queue;
use firehose_edge::{Listeners, run_with_sink};
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use common::InstantSink;

/// What the bare server answers, byte for byte what firehose-edge answers to a 1-event body.
const OK_BODY: &[u8] = br#"{"status":"ok","accepted":1}"#;

/// Longest wait for a server to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

struct Knobs {
    measure: Duration,
    warmup: Duration,
    conns: Vec<usize>,
    /// Case letters to run (`a`..`f`).
    cases: String,
    backlog_events: u64,
    server_threads: usize,
    client_threads: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
        // it, and then a short smoke run proves the bench still works without costing CI
        // minutes.
        if !std::env::args().any(|a| a == "--bench") {
            return Knobs {
                measure: Duration::from_millis(300),
                warmup: Duration::from_millis(100),
                conns: vec![8],
                cases: "acef".to_owned(),
                backlog_events: 20_000,
                server_threads: 2,
                client_threads: 1,
            };
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let quick = var("THROUGHPUT_QUICK").is_some_and(|v| v != "0");
        let secs: f64 = var("THROUGHPUT_SECS").map_or(if quick { 1.0 } else { 5.0 }, |v| {
            v.parse().expect("THROUGHPUT_SECS is a number of seconds")
        });
        let conns = var("THROUGHPUT_CONNS").map_or_else(
            || if quick { vec![64] } else { vec![64, 256] },
            |v| {
                v.split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .expect("THROUGHPUT_CONNS: numbers, comma separated")
                    })
                    .collect()
            },
        );
        let client_threads = var("THROUGHPUT_CLIENT_THREADS").map_or(1, |v| {
            v.parse().expect("THROUGHPUT_CLIENT_THREADS is a number")
        });
        Knobs {
            measure: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64(if quick { 0.5 } else { 1.0 }),
            conns,
            cases: var("THROUGHPUT_CASES").unwrap_or_else(|| "abcdef".to_owned()),
            backlog_events: if quick { 200_000 } else { 1_000_000 },
            // As the service would run on this machine: one worker per core.
            server_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            client_threads,
        }
    }
}

/// One request body of a case, and the events it carries.
#[derive(Clone)]
struct Body {
    path: &'static str,
    bytes: Bytes,
    events: u64,
    /// `@ID@` in `bytes` is replaced by an id unique to each request, so that every message
    /// has its own `messageId` and the dedup window is checked and grown, never hit.
    unique_ids: bool,
}

struct Case {
    letter: char,
    name: &'static str,
    durability: Durability,
    /// Sent in turn; each connection starts at a different one.
    bodies: Arc<[Body]>,
}

fn track(events: usize, user: usize) -> Body {
    Body {
        path: "/track",
        bytes: common::track_body(events, user).into(),
        events: events as u64,
        unique_ids: false,
    }
}

/// A Segment message as analytics SDKs send it, with a `messageId` to make unique.
fn segment_message(user: usize, k: usize) -> String {
    format!(
        r#"{{"type":"track","userId":"user-{user:06}","event":"page_view","properties":{{"path":"/p/{k:05}"}},"timestamp":"2026-11-24T08:56:02.123Z","messageId":"@ID@-{k}","context":{{"library":{{"name":"bench","version":"1"}}}}}}"#
    )
}

fn v1_track(user: usize) -> Body {
    Body {
        path: "/v1/track",
        bytes: segment_message(user, 0).into(),
        events: 1,
        unique_ids: true,
    }
}

fn v1_batch(events: usize, user: usize) -> Body {
    let batch: Vec<String> = (0..events).map(|k| segment_message(user, k)).collect();
    Body {
        path: "/v1/batch",
        bytes: format!(
            r#"{{"batch":[{}],"sentAt":"2026-11-24T08:56:03.000Z"}}"#,
            batch.join(",")
        )
        .into(),
        events: events as u64,
        unique_ids: true,
    }
}

fn cases() -> Vec<Case> {
    // A few users, so that bodies are not all identical.
    let users = 0..8;
    let track_1: Arc<[Body]> = users.clone().map(|u| track(1, u)).collect();
    let mix: Arc<[Body]> = users
        .clone()
        .flat_map(|u| {
            // Mostly events, with the occasional alias and profile update: 3:1:1.
            [
                track(1, u),
                track(1, u + 100),
                track(1, u + 200),
                Body {
                    path: "/alias",
                    bytes: common::alias_body(u).into(),
                    events: 1,
                    unique_ids: false,
                },
                Body {
                    path: "/profile",
                    bytes: common::profile_body(u).into(),
                    events: 1,
                    unique_ids: false,
                },
            ]
        })
        .collect();
    vec![
        Case {
            letter: 'a',
            name: "(a) track 1 ev, fsync",
            durability: Durability::Fsync,
            bodies: track_1.clone(),
        },
        Case {
            letter: 'b',
            name: "(b) track 1 ev, interval",
            durability: Durability::Interval,
            bodies: track_1,
        },
        Case {
            letter: 'c',
            name: "(c) track 100 ev, fsync",
            durability: Durability::Fsync,
            bodies: users.map(|u| track(100, u)).collect(),
        },
        Case {
            letter: 'd',
            name: "(d) mix 3:1:1, fsync",
            durability: Durability::Fsync,
            bodies: mix,
        },
        Case {
            letter: 'e',
            name: "(e) v1/track 1, dedup",
            durability: Durability::Fsync,
            bodies: (0..8).map(v1_track).collect(),
        },
        Case {
            letter: 'f',
            name: "(f) v1/batch 100, dedup",
            durability: Durability::Fsync,
            bodies: (0..8).map(|u| v1_batch(100, u)).collect(),
        },
    ]
}

fn main() {
    let knobs = Knobs::from_env();
    // Two runtimes, so that the servers and the load generator each have their own
    // scheduler: on one runtime, client tasks would sit in the same run queues as server
    // tasks and whichever side got polled more would set the numbers. Threads still share
    // the cores, which the OS divides; the client is kept to few threads so that most of
    // the machine is left to the server.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.server_threads)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.client_threads)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("load generator runtime");

    println!(
        "firehose-edge throughput: {:.1} s measured after {:.1} s warm-up per run; {} cores, \
         server {} workers, load generator {} worker(s)",
        knobs.measure.as_secs_f64(),
        knobs.warmup.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        knobs.server_threads,
        knobs.client_threads,
    );
    println!();
    println!(
        "{:<26} {:<14} {:>5} {:>10} {:>11} {:>9} {:>9} {:>7} {:>12} {:>6}",
        "case",
        "server",
        "conns",
        "req/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "undelivered",
        "ratio"
    );

    let bare = BareServer::start(&server_rt);
    let mut case_c_events_per_sec: f64 = 0.0;
    for case in cases()
        .into_iter()
        .filter(|c| knobs.cases.contains(c.letter))
    {
        for &conns in &knobs.conns {
            let base = load_rt.block_on(load(bare.addr, conns, case.bodies.clone(), &knobs));
            print_row(case.name, "bare hyper", conns, &base, None, None);

            let edge = EdgeServer::start(&server_rt, case.durability);
            let got = load_rt.block_on(load(edge.addr, conns, case.bodies.clone(), &knobs));
            // Events acknowledged but not yet at the sink when the load stopped: the
            // flusher's linger (200 ms by default) keeps this above zero; far more means it
            // fell behind.
            let undelivered = got.acked_events.saturating_sub(edge.sink.events());
            edge.stop(&server_rt);
            let ratio = got.per_sec(got.requests) / base.per_sec(base.requests);
            print_row(
                "",
                "firehose-edge",
                conns,
                &got,
                Some(undelivered),
                Some(ratio),
            );
            if case.letter == 'c' {
                case_c_events_per_sec = case_c_events_per_sec.max(got.per_sec(got.events));
            }
            if let Some(e) = got.first_error.as_ref().or(base.first_error.as_ref()) {
                println!("    first error: {e}");
            }
        }
    }
    bare.stop(&server_rt);

    println!();
    let (events, elapsed, calls) = server_rt.block_on(drain_backlog(knobs.backlog_events));
    let drain_rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "drain: {events} queued events (100-event entries) to an instant sink in {:.2} s = \
         {:.0} events/s ({calls} sink calls)",
        elapsed.as_secs_f64(),
        drain_rate,
    );
    if case_c_events_per_sec > 0.0 {
        println!(
            "ingest of case (c), best over connection counts: {case_c_events_per_sec:.0} \
             events/s; drain ÷ ingest = {:.2}",
            drain_rate / case_c_events_per_sec
        );
    }
}

fn print_row(
    case: &str,
    server: &str,
    conns: usize,
    t: &Tally,
    undelivered: Option<u64>,
    ratio: Option<f64>,
) {
    // Every run, smoke or full, must be clean: a bench that errors measures nothing.
    assert_eq!(
        t.errors, 0,
        "{case} on {server}: requests failed, first: {:?}",
        t.first_error
    );
    assert!(t.requests > 0, "{case} on {server}: no request completed");
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!(
        "{:<26} {:<14} {:>5} {:>10.0} {:>11.0} {:>9} {:>9} {:>7} {:>12} {:>6}",
        case,
        server,
        conns,
        t.per_sec(t.requests),
        t.per_sec(t.events),
        ms(t.percentile(0.50)),
        ms(t.percentile(0.99)),
        t.errors,
        undelivered.map_or("-".to_owned(), |u| u.to_string()),
        ratio.map_or("-".to_owned(), |r| format!("{r:.2}")),
    );
}

/// What a load run saw. Only responses completing inside the measured window count, except
/// `acked_events`, which counts every 200 of the run.
#[derive(Default)]
struct Tally {
    window: Duration,
    requests: u64,
    events: u64,
    errors: u64,
    acked_events: u64,
    /// Sorted once merged.
    latencies: Vec<Duration>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.events += other.events;
        self.errors += other.errors;
        self.acked_events += other.acked_events;
        self.latencies.extend(other.latencies);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.window.as_secs_f64()
    }

    /// Nearest-rank percentile of the sorted latencies.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// Opens `conns` keep-alive connections to `addr`, then has each send requests one after
/// another through the warm-up and the measured window.
async fn load(addr: SocketAddr, conns: usize, bodies: Arc<[Body]>, knobs: &Knobs) -> Tally {
    // Connect first, so connection setup is in neither the warm-up nor the window.
    let mut senders = Vec::with_capacity(conns);
    let mut drivers = JoinSet::new();
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        // Ends when the sender is dropped at the end of the run.
        drivers.spawn(async move {
            let _ = connection.await;
        });
        senders.push(sender);
    }
    let from = Instant::now() + knobs.warmup;
    let until = from + knobs.measure;
    let mut clients = JoinSet::new();
    for (i, sender) in senders.into_iter().enumerate() {
        clients.spawn(client(sender, bodies.clone(), i, from, until));
    }
    let mut total = Tally {
        window: knobs.measure,
        ..Tally::default()
    };
    while let Some(done) = clients.join_next().await {
        total.merge(done.expect("client task"));
    }
    while drivers.join_next().await.is_some() {}
    total.latencies.sort_unstable();
    total
}

/// One connection's requests, sent one at a time until `until`.
async fn client(
    mut sender: SendRequest<Full<Bytes>>,
    bodies: Arc<[Body]>,
    first: usize,
    from: Instant,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    for i in first.. {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let body = &bodies[i % bodies.len()];
        if let Err(e) = sender.ready().await {
            tally.error(format!("connection closed: {e}"));
            break;
        }
        let bytes = if body.unique_ids {
            // Per request, so this copy is part of the generator's cost (it prints its ceiling).
            let id = format!("{first}x{i}");
            Bytes::from(String::from_utf8_lossy(&body.bytes).replace("@ID@", &id))
        } else {
            body.bytes.clone()
        };
        let request = Request::post(body.path)
            .header(HOST, "127.0.0.1")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .expect("a valid request");
        let answer = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(_) if status == StatusCode::OK => Ok(()),
                    Ok(b) => Err(format!(
                        "{} {status}: {}",
                        body.path,
                        String::from_utf8_lossy(&b.to_bytes())
                    )),
                    Err(e) => Err(format!("{} reading the response: {e}", body.path)),
                }
            }
            Err(e) => {
                tally.error(format!("{} request failed: {e}", body.path));
                break;
            }
        };
        let done = Instant::now();
        if answer.is_ok() {
            tally.acked_events += body.events;
        }
        if done < from || done > until {
            continue;
        }
        match answer {
            Ok(()) => {
                tally.requests += 1;
                tally.events += body.events;
                tally.latencies.push(done - sent);
            }
            Err(e) => tally.error(e),
        }
    }
    tally
}

/// firehose-edge in-process over a fresh queue, with an instant sink.
struct EdgeServer {
    addr: SocketAddr,
    sink: Arc<InstantSink>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), firehose_edge::app::AppError>>,
    // Removed after the server stopped.
    _dir: TempDir,
}

impl EdgeServer {
    fn start(rt: &Runtime, durability: Durability) -> EdgeServer {
        let dir = common::scratch_dir();
        let mut config = Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.queue.path = dir.path().join("queue");
        config.queue.durability = durability;
        config.sink.directory = dir.path().join("lake");
        let sink = Arc::new(InstantSink::default());
        let stop = CancellationToken::new();
        let (addr, task) = rt.block_on(async {
            let ingest = TcpListener::bind(config.server.listen)
                .await
                .expect("bind ingest");
            let admin = TcpListener::bind(config.admin.listen)
                .await
                .expect("bind admin");
            let addr = ingest.local_addr().expect("ingest address");
            let task = tokio::spawn(run_with_sink(
                config,
                Listeners { ingest, admin },
                sink.clone(),
                None,
                stop.clone().cancelled_owned(),
            ));
            (addr, task)
        });
        EdgeServer {
            addr,
            sink,
            stop,
            task,
            _dir: dir,
        }
    }

    fn stop(self, rt: &Runtime) {
        self.stop.cancel();
        rt.block_on(async { tokio::time::timeout(STOP_WAIT, self.task).await })
            .expect("firehose-edge stops within the grace period")
            .expect("server task")
            .expect("clean shutdown");
    }
}

/// A hyper HTTP/1.1 server that reads each body and answers 200 without looking at it.
struct BareServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl BareServer {
    fn start(rt: &Runtime) -> BareServer {
        let stop = CancellationToken::new();
        let (addr, task) = rt.block_on(async {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind bare server");
            let addr = listener.local_addr().expect("bare address");
            (addr, tokio::spawn(bare_serve(listener, stop.clone())))
        });
        BareServer { addr, stop, task }
    }

    fn stop(self, rt: &Runtime) {
        self.stop.cancel();
        rt.block_on(async { tokio::time::timeout(STOP_WAIT, self.task).await })
            .expect("bare server stops")
            .expect("bare server task");
    }
}

async fn bare_serve(listener: TcpListener, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(bare_answer))
                        .await;
                });
            }
            // Reap finished connections so the set does not grow over the runs.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stop.cancelled() => break,
        }
    }
    connections.shutdown().await;
}

async fn bare_answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    request.into_body().collect().await?;
    let mut response = Response::new(Full::new(Bytes::from_static(OK_BODY)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Appends `events` events in 100-event entries straight to a queue (untimed), then times a
/// flusher with the default settings delivering them all to an instant sink. Returns the
/// events, the time and the sink calls.
async fn drain_backlog(events: u64) -> (u64, Duration, u64) {
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
