//! CPU cost per request, as instructions counted by callgrind: deterministic (the same
//! binary, inputs and environment give the same count whatever else the machine does), so a
//! change can be judged on a noisy machine, beside the wall-clock figures of `throughput`.
//!
//! `cargo bench --bench instructions` (needs valgrind: Debian's `valgrind`, on every machine
//! this project is built on). Under `cargo test` it makes a smoke run instead: every case's
//! requests against the release-or-debug binary without valgrind, each answered 2xx, and the
//! callgrind output parser checked on a sample. Knobs:
//! - `INSTRUCTIONS_CASES`: case letters, e.g. `bd` (default all, `abcd`).
//! - `INSTRUCTIONS_REQUESTS`: requests measured per case (default: 400 of one event, 40 of
//!   a hundred).
//! - `INSTRUCTIONS_PROFILE`: a directory to keep each case's measured callgrind dump in
//!   (`<letter>.callgrind`), for `callgrind_annotate --inclusive=yes`.
//! - `INSTRUCTIONS_BINARY`: the service's binary to measure (default: this build's), e.g. a
//!   build of an earlier commit, to compare the two in one run.
//!
//! Method, per case: the server (the real `firehose-edge` binary on its embedded defaults:
//! file sink, fsync acks, a fresh queue; or the bare hyper reference, this bench's own binary
//! re-run as a server) runs under `valgrind --tool=callgrind --instr-atstart=no`. One
//! connection sends warm-up requests one after another and waits until their events are in
//! the lake (so the flusher has done its part); callgrind's counters are then zeroed
//! (`callgrind_control --zero`), the measured requests are sent the same way, and once their
//! events are all in the lake the counters are dumped. An idle window of the same length is
//! measured the same way and subtracted (timers: the flusher's linger, the queue's health
//! rounds). What is left, divided by the requests, is the server's user-space instructions
//! per request end to end: HTTP, parsing, validation, the queue's append and group commit,
//! and the flusher's read, pack, delivery to the file sink and removal.

mod common;

use common::bare;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start (valgrind translates as it goes: seconds).
const START_WAIT: Duration = Duration::from_secs(120);
/// How long the measured requests' events may take to reach the lake.
const DELIVERY_WAIT: Duration = Duration::from_secs(300);
/// glibc copies large buffers with `rep movsb`, which callgrind counts as one instruction
/// per byte (a core moves 32 or more bytes a cycle that way): a 50 KB copy would count as
/// much as parsing 50 KB of JSON. Both servers run with the vector copy loops instead, whose
/// instructions are what the copy costs.
const GLIBC_TUNABLES: &str =
    "glibc.cpu.x86_rep_movsb_threshold=2147483647:glibc.cpu.x86_rep_stosb_threshold=2147483647";

/// Warm-up requests before the counters are zeroed.
const WARMUP: usize = 20;

/// One case: a server and the requests it is sent.
struct Case {
    letter: char,
    name: &'static str,
    server: Server,
    path: &'static str,
    /// The events in each body (what the lake must hold before the dump).
    events: usize,
    /// The body of request `n` (unique `messageId`s where the protocol deduplicates).
    body: fn(usize) -> Vec<u8>,
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    /// The service's binary.
    Edge,
    /// Bare hyper: reads the body, answers 200.
    Bare,
}

fn track_1(n: usize) -> Vec<u8> {
    common::track_body(1, n % 8)
}

fn track_100(n: usize) -> Vec<u8> {
    common::track_body(100, n % 8)
}

fn v1_batch_100(n: usize) -> Vec<u8> {
    common::v1_batch_body(100, n % 8, &format!("req-{n}"))
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            letter: 'a',
            name: "bare hyper, 100-message /v1/batch body",
            server: Server::Bare,
            path: "/v1/batch",
            events: 100,
            body: v1_batch_100,
        },
        Case {
            letter: 'b',
            name: "1-event /track",
            server: Server::Edge,
            path: "/track",
            events: 1,
            body: track_1,
        },
        Case {
            letter: 'c',
            name: "100-event /track",
            server: Server::Edge,
            path: "/track",
            events: 100,
            body: track_100,
        },
        Case {
            letter: 'd',
            name: "100-message /v1/batch",
            server: Server::Edge,
            path: "/v1/batch",
            events: 100,
            body: v1_batch_100,
        },
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--serve-bare") {
        bare::serve_until_stdin_closes(args.get(at + 1).map_or("127.0.0.1:0", String::as_str));
        return;
    }
    let measuring = args.iter().any(|a| a == "--bench");
    let letters = std::env::var("INSTRUCTIONS_CASES").unwrap_or_else(|_| "abcd".to_owned());
    let requests: Option<usize> = std::env::var("INSTRUCTIONS_REQUESTS")
        .ok()
        .map(|n| n.parse().expect("INSTRUCTIONS_REQUESTS is a number"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    if !measuring {
        check_summary_parser();
    }
    if measuring {
        require_valgrind();
        println!(
            "firehose-edge instructions per request (callgrind, user space, one connection, \
             sequential requests, minus an idle window)"
        );
        println!(
            "{:<42} {:>9} {:>14} {:>12} {:>11}",
            "case", "requests", "instr/request", "instr/event", "idle/s"
        );
    }
    for case in cases().into_iter().filter(|c| letters.contains(c.letter)) {
        let n = requests.unwrap_or(if case.events == 1 { 400 } else { 40 });
        let n = if measuring { n } else { 3 };
        let dir = common::scratch_dir();
        let mut server = Running::start(&case, dir.path(), measuring);
        let client = Client::new(&server.url, case.path);
        let lake = dir.path().join("lake");
        let expect = |sent: usize| (case.server == Server::Edge).then_some(sent * case.events);
        rt.block_on(client.send(case.body, 0..WARMUP));
        wait_for_lake(&lake, expect(WARMUP));
        if !measuring {
            rt.block_on(client.send(case.body, WARMUP..WARMUP + n));
            wait_for_lake(&lake, expect(WARMUP + n));
            server.stop();
            println!("instructions smoke: {} answered {n} requests", case.name);
            continue;
        }
        server.zero();
        let started = Instant::now();
        rt.block_on(client.send(case.body, WARMUP..WARMUP + n));
        wait_for_lake(&lake, expect(WARMUP + n));
        let window = started.elapsed();
        let busy = server.dump();
        if let Some(keep) = std::env::var_os("INSTRUCTIONS_PROFILE") {
            let to = Path::new(&keep).join(format!("{}.callgrind", case.letter));
            std::fs::create_dir_all(&keep).expect("the profile directory");
            std::fs::copy(server.last_dump(), &to).expect("the dump is copied");
        }
        server.zero();
        std::thread::sleep(window);
        let idle = server.dump();
        server.stop();
        let per_request = busy.saturating_sub(idle) as f64 / n as f64;
        println!(
            "({}) {:<38} {:>9} {:>14} {:>12} {:>11}",
            case.letter,
            case.name,
            n,
            thousands(per_request),
            if case.server == Server::Edge {
                thousands(per_request / case.events as f64)
            } else {
                "-".to_owned()
            },
            thousands(idle as f64 / window.as_secs_f64()),
        );
    }
}

/// `n` with a k or M suffix, three significant digits.
fn thousands(n: f64) -> String {
    match n {
        n if n >= 1e6 => format!("{:.2} M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn require_valgrind() {
    for tool in ["valgrind", "callgrind_control"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: the instruction counts need valgrind (apt-get install valgrind)"
        );
    }
}

/// A server process, under callgrind when measuring.
struct Running {
    child: Child,
    url: String,
    server: Server,
    out: PathBuf,
    dumps: usize,
}

impl Running {
    fn start(case: &Case, dir: &Path, measuring: bool) -> Running {
        let out = dir.join("callgrind.out");
        let program = match case.server {
            Server::Edge => std::env::var_os("INSTRUCTIONS_BINARY").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_firehose-edge")),
                PathBuf::from,
            ),
            Server::Bare => std::env::current_exe().expect("this bench's binary"),
        };
        let mut command = if measuring {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg("--instr-atstart=no")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(format!("--log-file={}", dir.join("valgrind.log").display()))
                .arg(&program);
            c
        } else {
            Command::new(&program)
        };
        if case.server == Server::Bare {
            command.args(["--serve-bare", "127.0.0.1:0"]);
        }
        command
            .env_clear()
            .env("FIREHOSE_EDGE__SERVER__LISTEN", "127.0.0.1:0")
            .env("FIREHOSE_EDGE__ADMIN__LISTEN", "127.0.0.1:0")
            .env("FIREHOSE_EDGE__QUEUE__PATH", dir.join("queue"))
            .env("FIREHOSE_EDGE__SINK__DIRECTORY", dir.join("lake"))
            .env("FIREHOSE_EDGE__LOG__LEVEL", "info")
            .env("GLIBC_TUNABLES", GLIBC_TUNABLES)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the server starts");
        let addr = listening_addr(&mut child);
        Running {
            child,
            url: format!("http://{addr}"),
            server: case.server,
            out,
            dumps: 0,
        }
    }

    /// Zeroes callgrind's counters (and turns instrumentation on: it starts off, so that the
    /// server starts at close to native speed).
    fn zero(&mut self) {
        self.control(&["--instr=on"]);
        self.control(&["--zero"]);
    }

    /// Dumps the counters since the last zero, and returns their total.
    fn dump(&mut self) -> u64 {
        self.control(&["--dump"]);
        self.dumps += 1;
        let file = self.last_dump();
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("callgrind wrote no {}: {e}", file.display()));
        summary(&text).unwrap_or_else(|| panic!("no summary line in {}", file.display()))
    }

    /// The file of the last dump.
    fn last_dump(&self) -> PathBuf {
        PathBuf::from(format!("{}.{}", self.out.display(), self.dumps))
    }

    fn control(&self, args: &[&str]) {
        let status = Command::new("callgrind_control")
            .args(args)
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("callgrind_control runs");
        assert!(status.success(), "callgrind_control {args:?} failed");
    }

    /// SIGTERM, and waits for the exit.
    fn stop(mut self) {
        // The bare server stops when its stdin closes; the service on SIGTERM.
        drop(self.child.stdin.take());
        if self.server == Server::Edge {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let status = self.child.wait().expect("the server exits");
        assert!(status.success(), "the server exited with {status}");
    }
}

/// The ingest address from the server's "listening" log line (`addr=`).
fn listening_addr(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Read to the end, so that the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(rest) = line.split("ingest=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                sent = tx.send(addr).is_ok();
            }
        }
    });
    rx.recv_timeout(START_WAIT)
        .expect("the server logs its listening address")
}

/// The total of a callgrind output file: its `summary:` line (or `totals:`).
fn summary(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
}

fn check_summary_parser() {
    let sample = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456\n";
    assert_eq!(summary(sample), Some(123_456));
    assert_eq!(summary("events: Ir\ntotals: 42\n"), Some(42));
    assert_eq!(summary("events: Ir\n"), None);
}

/// One keep-alive connection, sending requests one after another.
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(base: &str, path: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client"),
            url: format!("{base}{path}"),
        }
    }

    async fn send(&self, body: fn(usize) -> Vec<u8>, requests: std::ops::Range<usize>) {
        for n in requests {
            let response = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body(n))
                .send()
                .await
                .expect("the server answers");
            let status = response.status();
            assert!(status.is_success(), "{}: {status}", self.url);
            response.bytes().await.expect("the answer's body");
        }
    }
}

/// Waits until the lake holds `lines` records (`None`: a server with no lake).
fn wait_for_lake(lake: &Path, lines: Option<usize>) {
    let Some(lines) = lines else { return };
    let deadline = Instant::now() + DELIVERY_WAIT;
    loop {
        if common::lake_line_count(lake) >= lines {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} records did not reach {} in time",
            lake.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
