//! End to end: the real service against a bare hyper server, under the same HTTP/1.1
//! keep-alive load, and the flusher's drain rate next to the ingest rate.
//!
//! `cargo bench --bench throughput`; under `cargo test` it makes a short smoke run (in-process
//! generator, no `wrk` needed) that fails on any error. Knobs:
//! - `THROUGHPUT_SECS`: measured seconds per run (default 5; `wrk` runs whole seconds, so a
//!   fraction is rounded up for it).
//! - `THROUGHPUT_QUICK=1`: 1 s runs at 64 connections only, a 200k-event drain.
//! - `THROUGHPUT_CONNS`: connection counts, e.g. `16,64` (default `64,256`).
//! - `THROUGHPUT_CASES`: case letters, e.g. `ac` (default all, `abcdef`).
//! - `THROUGHPUT_GENERATOR`: `wrk`, `inprocess`, or `auto` (default: `wrk` when it is on
//!   `PATH` — Debian package `wrk` — else the in-process generator).
//! - `THROUGHPUT_CLIENT_THREADS`: load generator threads, `wrk -t` (default 2) or the
//!   in-process generator's runtime workers (default 1). The same for both servers.
//!
//! What is measured:
//! - firehose-edge: `run_with_sink` on 127.0.0.1:0 over a fresh queue per run, and a sink
//!   that accepts at once. A file sink would put the lake's writes on the disk that the
//!   queue fsyncs, making the figure about that disk; with the instant sink the flusher still
//!   does all of its own work (read the head, pack, remove) while requests come in, as it
//!   would in front of Firehose.
//! - bare hyper: reads the whole body and answers the same 200 JSON without looking at it:
//!   the ceiling that HTTP handling and this machine allow. The ratio is firehose-edge ÷ bare.
//! - A run is a warm-up, then a fixed window in which every response that completes counts,
//!   from N connections each sending one request after another. With `wrk` the warm-up is a
//!   `wrk` run of its own against the same server, and the window is wrk's measured run.
//! - The load generator's own ceiling, printed before the table: its rate against a server
//!   that answers every request with a pre-built response and never parses the body (it only
//!   skips `Content-Length` bytes to find the next request), with the first case's bodies.
//!   The table's `cpu` columns are the cores that the generator and the server used during
//!   each run, and the whole machine (from `/proc`, 10 ms ticks): a generator near its thread
//!   count is saturated, and a machine much busier than the two was doing other work too.
//!
//! Load generators. The machine's cores are shared by server and generator; the server runs
//! one worker per core, the generator `THROUGHPUT_CLIENT_THREADS` threads, and nothing is
//! pinned, so the OS divides the cores. `wrk` is the reference: a C event loop that needs less
//! CPU per request than the hyper client, whose ceiling (~165k req/s on 2 cores here) is what
//! bare hyper reaches with it. Both servers get `wrk -t2` by default: on 2 cores `-t1` left a
//! quarter of the machine idle against bare hyper (~165k req/s, one event loop waiting on the
//! server), `-t2` saturates it (~200k, under a ceiling of ~240k); pinning wrk and the server
//! to a core each (`taskset`) halved every figure here. wrk sends the case's bodies through
//! `scripts/throughput.lua` (POST, `Content-Type: application/json`, the same bodies in turn,
//! unique `messageId`s for the `/v1` cases); a case it cannot send stays on the in-process
//! generator, and the output says so. Every non-2xx response and socket error is an error:
//! the row is marked and the bench fails at the end; errors are never counted as throughput.
//!
//! No tracing subscriber and no metrics recorder are installed, so logging and metrics cost
//! less than in production, where `main` installs both.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use firehose_edge::config::{Config, Durability, FlusherConfig, QueueConfig};
use firehose_edge::flusher::{Flusher, Packing};
use firehose_edge::protocol::classic::{self as event, Endpoint};
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use common::InstantSink;

/// What the bare server answers, byte for byte what firehose-edge answers to a 1-event body.
const OK_BODY: &[u8] = br#"{"status":"ok","accepted":1}"#;

/// What the ceiling server answers: hyper's answer to the bare server's response, pre-built.
const CANNED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 28\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n{\"status\":\"ok\",\"accepted\":1}";

/// Longest wait for a server to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Clock ticks a second in `/proc/*/stat` (`USER_HZ`, fixed at 100 by Linux's user ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// The in-process generator's runtime threads are named this, to find their CPU time.
const LOADGEN_THREAD: &str = "loadgen";

struct Knobs {
    measure: Duration,
    warmup: Duration,
    conns: Vec<usize>,
    /// Case letters to run (`a`..`f`).
    cases: String,
    backlog_events: u64,
    server_threads: usize,
    /// `None`: the generator's default (wrk 2, in-process 1).
    client_threads: Option<usize>,
    /// `wrk`, `inprocess` or `auto`.
    generator: String,
    smoke: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
        // it, and then a short smoke run proves the bench still works without costing CI
        // minutes, and without needing wrk.
        if !std::env::args().any(|a| a == "--bench") {
            return Knobs {
                measure: Duration::from_millis(300),
                warmup: Duration::from_millis(100),
                conns: vec![8],
                cases: "acef".to_owned(),
                backlog_events: 20_000,
                server_threads: 2,
                client_threads: Some(1),
                generator: "inprocess".to_owned(),
                smoke: true,
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
        let client_threads = var("THROUGHPUT_CLIENT_THREADS").map(|v| {
            v.parse()
                .expect("THROUGHPUT_CLIENT_THREADS is a number of threads")
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
            generator: var("THROUGHPUT_GENERATOR").unwrap_or_else(|| "auto".to_owned()),
            smoke: false,
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
    if knobs.smoke {
        check_wrk_parser();
    }
    // Two runtimes, so that the servers and the in-process load generator each have their
    // own scheduler: on one runtime, client tasks would sit in the same run queues as server
    // tasks and whichever side got polled more would set the numbers. Threads still share
    // the cores, which the OS divides; the client is kept to few threads so that most of
    // the machine is left to the server.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.server_threads)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let generators = Generators::new(&knobs);
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| knobs.cases.contains(c.letter))
        .collect();
    assert!(!cases.is_empty(), "THROUGHPUT_CASES selects no case");

    println!(
        "firehose-edge throughput: {:.1} s measured after {:.1} s warm-up per run{}; {} cores, \
         server {} workers, load generator {} thread(s)",
        knobs.measure.as_secs_f64(),
        knobs.warmup.as_secs_f64(),
        if generators.wrk.is_some() {
            format!(
                " (wrk: {} s after {} s)",
                whole_secs(knobs.measure),
                whole_secs(knobs.warmup)
            )
        } else {
            String::new()
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        knobs.server_threads,
        generators.threads,
    );
    if knobs.smoke {
        println!("smoke run (cargo test, debug build): checks that the bench works; not figures");
    }
    if let Some(why) = &generators.wrk_absent {
        println!("{why}");
    }

    // The generator's own ceiling, before anything it limits is measured.
    let ceiling_case = &cases[0];
    let driver = generators.pick(&ceiling_case.bodies).0;
    let canned = Server::canned(&server_rt);
    let mut failed_runs = 0;
    let mut ceilings = Vec::new();
    for &conns in &knobs.conns {
        let run = generators.drive(driver, canned.addr, conns, &ceiling_case.bodies, &knobs);
        failed_runs += usize::from(run.errors > 0);
        ceilings.push((conns, run.per_sec(run.requests)));
        println!(
            "load generator: {}, ceiling ≈ {:.0} req/s at {conns} conns ({} bodies against a \
             pre-built answer; cpu gen+srv/all {}){}",
            generators.label(driver),
            run.per_sec(run.requests),
            &ceiling_case.name[..3],
            run.cpu(),
            error_note(&run),
        );
    }
    canned.stop(&server_rt);

    println!();
    println!(
        "{:<24} {:>5} {:<9} {:>9} {:>9} {:>10} {:>7} {:>7} {:>5} {:>14} {:>14} {:>6} {:>7}",
        "case",
        "conns",
        "generator",
        "bare r/s",
        "edge r/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "cpu bare",
        "cpu edge",
        "errors",
        "undeliv"
    );

    let bare = Server::bare(&server_rt);
    let mut case_c_events_per_sec: f64 = 0.0;
    let mut notes = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let (driver, why_not_wrk) = generators.pick(&case.bodies);
        if let Some(why) = why_not_wrk {
            notes.push(format!(
                "{}: in-process generator, since wrk cannot send it: {why}",
                case.name
            ));
        }
        for &conns in &knobs.conns {
            let base = generators.drive(driver, bare.addr, conns, &case.bodies, &knobs);

            let edge = EdgeServer::start(&server_rt, case.durability);
            let got = generators.drive(driver, edge.addr, conns, &case.bodies, &knobs);
            // Events acknowledged but not yet at the sink when the load stopped: the
            // flusher's linger (200 ms by default) keeps this above zero; far more means it
            // fell behind.
            let undelivered = got.acked_events.saturating_sub(edge.sink.events());
            edge.stop(&server_rt);
            let ratio = got.per_sec(got.requests) / base.per_sec(base.requests);
            let errors = base.errors + got.errors;
            println!(
                "{:<24} {:>5} {:<9} {:>9.0} {:>9.0} {:>10.0} {:>7} {:>7} {:>5.2} {:>14} {:>14} \
                 {:>6} {:>7}",
                case.name,
                conns,
                generators.label(driver),
                base.per_sec(base.requests),
                got.per_sec(got.requests),
                got.per_sec(got.events),
                ms(got.p50),
                ms(got.p99),
                ratio,
                base.cpu(),
                got.cpu(),
                errors,
                undelivered,
            );
            for (server, run) in [("bare hyper", &base), ("firehose-edge", &got)] {
                if run.errors > 0 {
                    failed_runs += 1;
                    println!("    ^^ {server}{}", error_note(run));
                }
            }
            // Who set the bare figure: said for the first case, and for any other when it
            // was not the bare server.
            let ceiling = (n == 0)
                .then(|| ceilings.iter().find(|c| c.0 == conns).map(|c| c.1))
                .flatten();
            let verdict = bare_verdict(&base, ceiling, generators.threads, knobs.server_threads);
            if n == 0 || verdict.is_some() {
                notes.push(format!(
                    "{} at {conns} conns, bare hyper: {}",
                    &case.name[..3],
                    verdict.as_deref().unwrap_or("no CPU figures from /proc")
                ));
            }
            if case.letter == 'c' {
                case_c_events_per_sec = case_c_events_per_sec.max(got.per_sec(got.events));
            }
        }
    }
    bare.stop(&server_rt);
    println!(
        "(r/s: 2xx responses a second; events/s, p50, p99: firehose-edge's; ratio: edge ÷ bare; \
         cpu: cores used during the run by generator + server / by the whole machine, whose \
         rest is kernel threads (the journal, for fsyncs) and other people's work; undeliv: \
         acked events not yet at the sink)"
    );
    for note in notes {
        println!("{note}");
    }

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
    // Every run, smoke or full, must be clean: a bench that errors measures nothing.
    assert_eq!(
        failed_runs, 0,
        "{failed_runs} run(s) had errors (marked ^^ above); their figures are not throughput"
    );
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Why a bare-hyper run's figure is not the bare server's, if it is not: the generator at
/// its `ceiling` (when given) or using all its threads, or idle CPU on the machine (`cores`).
/// Notes other work on the machine during the run, which makes any figure suspect.
fn bare_verdict(run: &Run, ceiling: Option<f64>, threads: usize, cores: usize) -> Option<String> {
    let cpu = run.cpu.as_ref()?;
    let rate = run.per_sec(run.requests);
    let mut why = if let Some(c) = ceiling.filter(|&c| rate >= 0.9 * c) {
        format!(
            "{:.2} of the generator's ceiling: the bare figure is the generator's",
            rate / c
        )
    } else if cpu.generator >= 0.9 * threads as f64 {
        format!(
            "the generator used {:.2} cores for {threads} thread(s): the bare figure is the \
             generator's",
            cpu.generator
        )
    } else if cpu.machine < 0.9 * cores as f64 {
        format!(
            "the machine was {:.2} of {cores} cores busy: the server waited on the generator \
             (more THROUGHPUT_CLIENT_THREADS?)",
            cpu.machine
        )
    } else {
        String::new()
    };
    if let Some(c) = ceiling.filter(|_| why.is_empty()) {
        why = format!(
            "{:.2} of the generator's ceiling, {:.2} of {cores} cores busy: the bare figure is \
             the server's",
            rate / c,
            cpu.machine
        );
    }
    if cpu.others() > 0.2 {
        why += &format!(
            "{}other work took {:.2} cores meanwhile: rerun",
            if why.is_empty() { "" } else { "; " },
            cpu.others()
        );
    }
    (!why.is_empty()).then_some(why)
}

/// `!! N ERRORS …, first: …` for a run with errors, else nothing.
fn error_note(run: &Run) -> String {
    if run.errors == 0 {
        return String::new();
    }
    format!(
        "  !! {} ERRORS (not counted as throughput), first: {}",
        run.errors,
        run.first_error.as_deref().unwrap_or("?")
    )
}

/// `wrk -d` takes whole seconds.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// What one load run against one server saw, whichever generator drove it.
struct Run {
    /// The measured window (wrk: the duration it reports).
    window: Duration,
    /// 2xx responses completed in the window.
    requests: u64,
    /// Events those carried.
    events: u64,
    /// Failed requests: non-2xx answers, socket errors, timeouts, no request at all.
    errors: u64,
    first_error: Option<String>,
    /// Events of every 2xx of the run, warm-up included: what the sink should receive.
    acked_events: u64,
    p50: Duration,
    p99: Duration,
    /// CPU used over the run, warm-up included.
    cpu: Option<Cores>,
}

impl Run {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.window.as_secs_f64()
    }

    fn cpu(&self) -> String {
        self.cpu.as_ref().map_or("-".to_owned(), |c| {
            format!("{:.2}+{:.2}/{:.2}", c.generator, c.server, c.machine)
        })
    }
}

/// Which generator sends a case's requests.
#[derive(Clone, Copy)]
enum Driver {
    InProcess,
    Wrk,
}

/// The load generators available to this run.
struct Generators {
    /// The in-process generator's runtime: always there, for cases wrk cannot send.
    load_rt: Runtime,
    threads: usize,
    /// `wrk`'s version line, when it drives the runs.
    wrk: Option<String>,
    /// Why wrk does not, when it was asked for by `auto` and is missing.
    wrk_absent: Option<String>,
}

impl Generators {
    fn new(knobs: &Knobs) -> Generators {
        let (wrk, wrk_absent) = match knobs.generator.as_str() {
            "inprocess" => (None, None),
            "wrk" => (
                Some(wrk_version().expect(
                    "THROUGHPUT_GENERATOR=wrk, but wrk is not on PATH (apt-get install wrk)",
                )),
                None,
            ),
            "auto" => match wrk_version() {
                Some(v) => (Some(v), None),
                None => (
                    None,
                    Some(
                        "wrk is not on PATH (Debian: apt-get install wrk): the in-process \
                         generator drives both servers; see its ceiling below"
                            .to_owned(),
                    ),
                ),
            },
            other => panic!("THROUGHPUT_GENERATOR is wrk, inprocess or auto, not {other:?}"),
        };
        // Measured on 2 cores: `wrk -t1` left a quarter of the machine idle against bare hyper
        // (one event loop waits on the server), `-t2` saturates it; a second hyper client
        // thread adds little, its per-request cost being what limits it.
        let threads = knobs
            .client_threads
            .unwrap_or(if wrk.is_some() { 2 } else { 1 });
        // Also wrk's stand-in for a case it cannot send, with as many threads.
        let load_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(LOADGEN_THREAD)
            .enable_all()
            .build()
            .expect("load generator runtime");
        Generators {
            load_rt,
            threads,
            wrk,
            wrk_absent,
        }
    }

    /// wrk when it is used and can send `bodies`, with the reason when it cannot.
    fn pick(&self, bodies: &[Body]) -> (Driver, Option<String>) {
        if self.wrk.is_none() {
            return (Driver::InProcess, None);
        }
        match wrk_cannot_send(bodies) {
            None => (Driver::Wrk, None),
            Some(why) => (Driver::InProcess, Some(why)),
        }
    }

    fn label(&self, driver: Driver) -> String {
        match driver {
            Driver::InProcess => format!("inproc/{}", self.threads),
            Driver::Wrk => format!("wrk -t{}", self.threads),
        }
    }

    /// Loads the server at `addr` from `conns` connections: warm-up, then the window.
    fn drive(
        &self,
        driver: Driver,
        addr: SocketAddr,
        conns: usize,
        bodies: &Arc<[Body]>,
        knobs: &Knobs,
    ) -> Run {
        let before = CpuTimes::now();
        let mut run = match driver {
            Driver::InProcess => {
                let tally = self
                    .load_rt
                    .block_on(load(addr, conns, bodies.clone(), knobs));
                tally.into_run()
            }
            Driver::Wrk => wrk_load(self.threads, addr, conns, bodies, knobs),
        };
        if run.requests == 0 && run.errors == 0 {
            run.errors = 1;
            run.first_error = Some("no request completed".to_owned());
        }
        run.cpu = match (before, CpuTimes::now()) {
            (Some(before), Some(after)) => Some(after.cores_since(&before, driver)),
            _ => None,
        };
        run
    }
}

/// CPU time of this process and of its waited-for children, from `/proc`, in ticks.
struct CpuTimes {
    at: Instant,
    process: u64,
    children: u64,
    /// The in-process generator's worker threads.
    loadgen: u64,
    /// The thread that drives a run (`block_on`, or waiting for wrk).
    this_thread: u64,
    /// The whole machine's busy time, all cores (`/proc/stat`).
    machine: u64,
}

impl CpuTimes {
    fn now() -> Option<CpuTimes> {
        let at = Instant::now();
        let (process, children) = stat_times(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let (this_thread, _) =
            stat_times(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)?;
        let machine = machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let mut loadgen = 0;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if stat_comm(&stat) == Some(LOADGEN_THREAD) {
                loadgen += stat_times(&stat).map_or(0, |(own, _)| own);
            }
        }
        Some(CpuTimes {
            at,
            process,
            children,
            loadgen,
            this_thread,
            machine,
        })
    }

    /// Cores used since `before` by the generator, the server and the machine. The process
    /// holds the servers and, in process, the generator's threads; wrk is a child, counted
    /// once it was waited for.
    fn cores_since(&self, before: &CpuTimes, driver: Driver) -> Cores {
        let wall = (self.at - before.at).as_secs_f64() * TICKS_PER_SEC;
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let process = d(self.process, before.process);
        let this_thread = d(self.this_thread, before.this_thread);
        let generator = match driver {
            Driver::InProcess => d(self.loadgen, before.loadgen) + this_thread,
            Driver::Wrk => d(self.children, before.children),
        };
        let server = match driver {
            Driver::InProcess => process - generator,
            Driver::Wrk => process - this_thread,
        };
        Cores {
            generator: generator / wall,
            server: server.max(0.0) / wall,
            machine: d(self.machine, before.machine) / wall,
        }
    }
}

/// CPU used over a run, in cores (CPU seconds a second).
struct Cores {
    generator: f64,
    server: f64,
    machine: f64,
}

impl Cores {
    /// What the machine did besides generator and server: kernel threads (the file system's
    /// journal, for fsyncs) and other people's work.
    fn others(&self) -> f64 {
        (self.machine - self.generator - self.server).max(0.0)
    }
}

/// Busy ticks of all cores from `/proc/stat`'s `cpu` line: all but idle and iowait.
fn machine_busy(stat: &str) -> Option<u64> {
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = ticks.iter().take(8).sum::<u64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy)
}

/// `comm` of a `/proc/*/stat` line.
fn stat_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// (utime + stime, cutime + cstime) of a `/proc/*/stat` line (fields 14–17, proc(5)).
fn stat_times(stat: &str) -> Option<(u64, u64)> {
    // Fields after `comm`, which may hold spaces; the first of them is field 3.
    let fields: Vec<u64> = stat[stat.rfind(')')? + 2..]
        .split(' ')
        .skip(11)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some((
        fields.first()? + fields.get(1)?,
        fields.get(2)? + fields.get(3)?,
    ))
}

/// What a load run of the in-process generator saw. Only responses completing inside the
/// measured window count, except `acked_events`, which counts every 200 of the run.
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

    fn into_run(self) -> Run {
        Run {
            window: self.window,
            requests: self.requests,
            events: self.events,
            errors: self.errors,
            acked_events: self.acked_events,
            p50: self.percentile(0.50),
            p99: self.percentile(0.99),
            first_error: self.first_error,
            cpu: None,
        }
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

/// `wrk`'s version (`wrk debian/4.1.0-3+b2`), or `None` when it is not on `PATH`.
fn wrk_version() -> Option<String> {
    // wrk has no version flag of its own: an unknown one prints the banner and the usage.
    let out = Command::new("wrk").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let banner = text.lines().next()?;
    Some(
        banner
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Why `scripts/throughput.lua` cannot send these bodies as the in-process generator does.
fn wrk_cannot_send(bodies: &[Body]) -> Option<String> {
    // wrk counts responses, not bodies: events are responses × events per body.
    if bodies.iter().any(|b| b.events != bodies[0].events) {
        return Some("its bodies carry different numbers of events".to_owned());
    }
    // The script reads one body a line, fields split at tabs.
    if bodies
        .iter()
        .any(|b| b.bytes.iter().any(|&c| c == b'\n' || c == b'\t'))
    {
        return Some("a body holds a newline or a tab".to_owned());
    }
    None
}

/// `scripts/throughput.lua`, which sends a case's bodies from wrk.
fn wrk_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throughput.lua")
}

/// A warm-up run of wrk, then the measured one, against the server at `addr`.
fn wrk_load(threads: usize, addr: SocketAddr, conns: usize, bodies: &[Body], knobs: &Knobs) -> Run {
    let dir = tempfile::tempdir().expect("a directory for wrk's bodies");
    let file = dir.path().join("bodies.tsv");
    let lines: String = bodies
        .iter()
        .map(|b| {
            format!(
                "{}\t{}\t{}\n",
                b.path,
                u8::from(b.unique_ids),
                std::str::from_utf8(&b.bytes).expect("the bench's bodies are UTF-8")
            )
        })
        .collect();
    std::fs::write(&file, lines).expect("write wrk's bodies");
    let per_request = bodies[0].events;
    // Distinct tags, so the measured run's messageIds are not the warm-up's again.
    let warm = wrk_run(threads, addr, conns, whole_secs(knobs.warmup), &file, "w");
    let window = wrk_run(threads, addr, conns, whole_secs(knobs.measure), &file, "m");
    let ok = window.requests.saturating_sub(window.non_2xx);
    let warm_ok = warm.requests.saturating_sub(warm.non_2xx);
    let mut run = Run {
        window: window.duration,
        requests: ok,
        events: ok * per_request,
        errors: window.non_2xx + window.socket_errors + warm.non_2xx + warm.socket_errors,
        first_error: None,
        acked_events: (ok + warm_ok) * per_request,
        p50: window.p50,
        p99: window.p99,
        cpu: None,
    };
    if run.errors > 0 {
        // wrk does not say what the errors were (a Lua response() hook would slow it down).
        run.first_error = Some(format!(
            "wrk: {} non-2xx responses, {} socket errors (warm-up: {}, {}); rerun with \
             THROUGHPUT_GENERATOR=inprocess to see an answer",
            window.non_2xx, window.socket_errors, warm.non_2xx, warm.socket_errors
        ));
    }
    run
}

/// Runs wrk once and parses its report; panics with wrk's output when it fails.
fn wrk_run(
    threads: usize,
    addr: SocketAddr,
    conns: usize,
    secs: u64,
    bodies: &Path,
    tag: &str,
) -> WrkReport {
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(wrk_script())
        .arg(format!("http://{addr}"))
        .arg("--")
        .arg(bodies)
        .arg(tag)
        .output()
        .expect("run wrk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!("wrk failed ({}):\n{stdout}{stderr}", out.status);
    }
    parse_wrk(&stdout).unwrap_or_else(|e| panic!("wrk's report: {e}:\n{stdout}{stderr}"))
}

/// The parts of wrk's report (`--latency`) that the table shows.
#[derive(Debug, PartialEq)]
struct WrkReport {
    /// Responses completed, whatever their status.
    requests: u64,
    duration: Duration,
    /// `Non-2xx or 3xx responses` (wrk counts statuses above 399).
    non_2xx: u64,
    /// `Socket errors`: connect, read, write and timeout.
    socket_errors: u64,
    p50: Duration,
    p99: Duration,
}

fn parse_wrk(out: &str) -> Result<WrkReport, String> {
    let mut requests_duration = None;
    let (mut p50, mut p99) = (None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    let mut rate = None;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // `750000 requests in 5.00s, 100.00MB read`
            [n, "requests", "in", d, ..] => {
                let n = n.parse().map_err(|_| format!("requests in {line:?}"))?;
                requests_duration = Some((n, wrk_time(d.trim_end_matches(','))?));
            }
            ["50%", t] => p50 = Some(wrk_time(t)?),
            ["99%", t] => p99 = Some(wrk_time(t)?),
            // `Socket errors: connect 0, read 0, write 0, timeout 0`
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                non_2xx = n.parse().map_err(|_| format!("non-2xx in {line:?}"))?;
            }
            ["Requests/sec:", r] => rate = r.parse::<f64>().ok(),
            _ => {}
        }
    }
    let (requests, duration) = requests_duration.ok_or("no `N requests in T` line")?;
    rate.ok_or("no Requests/sec line")?;
    Ok(WrkReport {
        requests,
        duration,
        non_2xx,
        socket_errors,
        p50: p50.ok_or("no 50% line (was --latency given?)")?,
        p99: p99.ok_or("no 99% line (was --latency given?)")?,
    })
}

/// A time as wrk prints it: `812.00us`, `1.23ms`, `5.00s`, `1.00m`, `2.00h`.
fn wrk_time(t: &str) -> Result<Duration, String> {
    let split = t
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("no unit in {t:?}"))?;
    let value: f64 = t[..split]
        .parse()
        .map_err(|_| format!("no number in {t:?}"))?;
    let unit = match &t[split..] {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} in {t:?}")),
    };
    Ok(Duration::from_secs_f64(value * unit))
}

/// The smoke run cannot count on wrk: it checks the parser on a report of wrk 4.1.0.
fn check_wrk_parser() {
    let report = "Running 5s test @ http://127.0.0.1:40000
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   434.79us  120.55us   7.11ms   91.24%
    Req/Sec   146.35k     6.02k  155.02k    78.00%
  Latency Distribution
     50%  412.00us
     75%  458.00us
     90%  521.00us
     99%    1.02ms
  728264 requests in 5.00s, 112.51MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 17
Requests/sec: 145640.12
Transfer/sec:     22.50MB
";
    assert_eq!(
        parse_wrk(report),
        Ok(WrkReport {
            requests: 728_264,
            duration: Duration::from_secs(5),
            non_2xx: 17,
            socket_errors: 5,
            p50: Duration::from_micros(412),
            p99: Duration::from_micros(1020),
        })
    );
    assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
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

/// A reference server on the server runtime.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Bare hyper: an HTTP/1.1 server that reads each body and answers 200 without looking
    /// at it.
    fn bare(rt: &Runtime) -> Server {
        Self::spawn(rt, |stream| async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(bare_answer))
                .await;
        })
    }

    /// The generator's ceiling: answers every request with [`CANNED_RESPONSE`].
    fn canned(rt: &Runtime) -> Server {
        Self::spawn(rt, canned_connection)
    }

    fn spawn<F, Fut>(rt: &Runtime, serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let (addr, task) = rt.block_on(async {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind reference server");
            let addr = listener.local_addr().expect("reference server address");
            (addr, tokio::spawn(accept(listener, serve, stop.clone())))
        });
        Server { addr, stop, task }
    }

    fn stop(self, rt: &Runtime) {
        self.stop.cancel();
        rt.block_on(async { tokio::time::timeout(STOP_WAIT, self.task).await })
            .expect("reference server stops")
            .expect("reference server task");
    }
}

async fn accept<F, Fut>(listener: TcpListener, serve: F, stop: CancellationToken)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve(stream));
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

/// Finds each request's end (the blank line, then `Content-Length` bytes, skipped unread)
/// and answers every complete request in the buffer with one write.
async fn canned_connection(mut stream: TcpStream) {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let mut answers = Vec::new();
    loop {
        // Room for a full read: `advance` leaves the consumed front unusable until `reserve`
        // reclaims it, and small reads would split requests.
        buffer.reserve(16 * 1024);
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        answers.clear();
        while let Some(length) = request_length(&buffer) {
            if buffer.len() < length {
                break;
            }
            buffer.advance(length);
            answers.extend_from_slice(CANNED_RESPONSE);
        }
        if !answers.is_empty() && stream.write_all(&answers).await.is_err() {
            return;
        }
    }
}

/// Header bytes plus `Content-Length` of the request at the start of `buffer`, once its
/// header is complete.
fn request_length(buffer: &[u8]) -> Option<usize> {
    let head = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body = buffer[..head]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            if !line[..colon].eq_ignore_ascii_case(b"content-length") {
                return None;
            }
            std::str::from_utf8(&line[colon + 1..])
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some(head + body)
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
