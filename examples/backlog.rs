//! Measures what a backlog costs: memory while filling, and the restart after a crash and
//! after a clean stop, the drain, and sled's own share of it (issue 16).
//!
//! One command runs it end to end on a fresh directory (removed afterwards unless `--keep`):
//!
//! ```sh
//! cargo build --release --example backlog --bin firehose-edge
//! target/release/examples/backlog run --events 10000000 --per-request 1
//! target/release/examples/backlog run --events 50000000 --per-request 100 --dir /work/tmp
//! target/release/examples/backlog run --events 1000000 --probe-caches 16M,64M,1G
//! ```
//!
//! Phases, one table row each (events queued, sled files on disk, VmHWM of that process, time):
//!
//! 1. **fill**: a child (this example, `fill --hold`) appends the events through the real queue
//!    API (`Queue::append`), `--per-request` events per append, one writer by default so that
//!    appends never overlap (the worst case: one sled value per request). It appends in
//!    `interval` mode, then waits 1.5 s (sled's flush and the manifest round have run), so the
//!    crash that follows loses nothing in flight. VmHWM is read from `/proc/<pid>/status` just
//!    before the kill.
//! 2. **crash**: `kill -9` of the fill child (`--fill-stop term` closes it cleanly instead).
//! 3. optional **sled probes** (`--probe-caches`): on a copy of the crashed directory (sled's
//!    first open rewrites its files: it writes a snapshot and zeroes the segments it frees),
//!    a bare `sled::open` in a child per `cache_capacity`, then a bare walk of the stream's
//!    tree (header and CRC, the work `Queue::open` does after a crash), each timed with its
//!    VmHWM; the child is killed with SIGKILL. The first copy is opened twice, to show what a
//!    later open costs once that snapshot exists. Skipped if the copy would leave < 20 GiB.
//! 4. **crash restart**: the real binary (`target/release/firehose-edge`, config written to
//!    the run directory, listeners on 127.0.0.1) on the crashed queue, with a file sink that
//!    cannot deliver (its directory lies below a regular file): time to `GET /readyz` 200 on
//!    the admin listener, VmHWM at that moment and 2 s later, queue depth from `/metrics`.
//! 5. **clean stop** (SIGTERM) and **clean restart** on the full queue, measured the same way.
//! 6. **drain**: VmHWM is reset (`/proc/<pid>/clear_refs`), the sink's directory made
//!    writable, and the time until `firehose_edge_queue_depth_events` reads 0; the lake's lines
//!    are counted afterwards.
//! 7. **restart after the drain** (sled's files do not shrink), then SIGTERM.
//!
//! sled 0.34.7 writes its page-table snapshot only when it opens (`snapshot_after_ops` is a
//! no-op), so an open replays every log write since the last one; the queue re-opens sled
//! in the running process after every 512 MiB written (and 128 MiB read), so that a crash
//! restart replays little whatever the backlog.
//! `--cold` evicts the queue's files from the page cache (`fadvise DONTNEED`, those files only)
//! before every open, as after a node loss; by default they are warm.
//!
//! The older standalone modes remain: `fill DIR [EVENTS] [PER_ENTRY]` (closes cleanly),
//! `open DIR` (`Queue::open` in this process) and `sled-open DIR --cache 64M [--walk]`
//! (which leaves a new sled snapshot behind).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use firehose_edge::config::{Config, Durability, QueueConfig};
use firehose_edge::queue::Queue;

/// The `/track` queue stream of the default configuration.
const STREAM: &str = "log_user_events";
/// `queue::SEGMENT_SIZE` (private): sled refuses to open with another segment size.
const SEGMENT_SIZE: usize = 8 << 20;
/// Budget used by the fill and the service: far above any run, so `/readyz` never reports
/// the budget as the reason it is not ready.
const BUDGET: u64 = 1 << 40;
/// A typical ~200-byte encoded event.
const LINE: &str = r#"{"messageId":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","receivedAt":"2026-11-24T08:56:02.123Z","userId":"user-123456","eventName":"page_view","timestampUTC":1732435200,"metadata":{"path":"/p"}}
"#;

#[derive(Parser)]
#[command(about = "Backlog cost: fill, crash, restart, drain (issue 16)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Fill, kill -9, restart the real service, drain, restart: one table row per phase.
    Run(RunArgs),
    /// Fill DIR/queue through `Queue::append` (standalone: closes cleanly at the end).
    Fill {
        dir: PathBuf,
        #[arg(default_value_t = 10_000_000)]
        events: u64,
        #[arg(default_value_t = 1)]
        per_entry: u64,
        /// Concurrent appenders (more than 1: the group committer merges their requests).
        #[arg(long, default_value_t = 1)]
        writers: u64,
        /// After filling, print FILLED and wait to be killed (SIGKILL) or stopped (SIGTERM).
        #[arg(long)]
        hold: bool,
    },
    /// Reopen DIR/queue with `Queue::open` in this process (a restart without HTTP).
    Open { dir: PathBuf },
    /// A bare `sled::open` of DIR/queue (writes a sled snapshot unless killed first).
    SledOpen {
        dir: PathBuf,
        /// sled `cache_capacity`, e.g. 16M, 64M, 1G.
        #[arg(long, default_value = "64M")]
        cache: String,
        /// Then walk the stream's tree: every value's header and CRC.
        #[arg(long)]
        walk: bool,
        /// Print HOLD and wait to be killed.
        #[arg(long)]
        hold: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Events to queue.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per request (one sled value per request when requests do not overlap).
    #[arg(long, default_value_t = 1)]
    per_request: u64,
    /// Concurrent appenders while filling.
    #[arg(long, default_value_t = 1)]
    writers: u64,
    /// Where the run's directory is made (removed at the end unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the run's directory.
    #[arg(long)]
    keep: bool,
    /// The service binary (default: firehose-edge next to this example's directory).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// sled cache capacities to probe a bare open and walk with, e.g. 16M,64M,1G.
    #[arg(long, value_delimiter = ',')]
    probe_caches: Vec<String>,
    /// Evict the queue's files from the page cache before every open.
    #[arg(long)]
    cold: bool,
    /// How the fill child ends: `kill` (SIGKILL, a crash) or `term` (a clean close).
    #[arg(long, default_value = "kill")]
    fill_stop: String,
    /// Bound of each phase, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Skip the drain (and the restart after it).
    #[arg(long)]
    no_drain: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Run(args) => run(&args),
        Mode::Fill {
            dir,
            events,
            per_entry,
            writers,
            hold,
        } => runtime()?.block_on(fill(&dir, events, per_entry, writers, hold)),
        Mode::Open { dir } => runtime()?.block_on(open(&dir)),
        Mode::SledOpen {
            dir,
            cache,
            walk,
            hold,
        } => sled_open(&dir, parse_size(&cache)?, walk, hold),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

// ---------------------------------------------------------------------------------------
// Children: fill, open, sled-open.

/// The queue the service would open at `DIR/queue`, but acknowledging in `interval` mode
/// (a single appender waiting for an fsync per request would take hours).
fn fill_config(dir: &Path) -> QueueConfig {
    QueueConfig {
        path: dir.join("queue"),
        durability: Durability::Interval,
        max_bytes: BUDGET,
        ..QueueConfig::default()
    }
}

/// The streams the service opens with the default configuration.
fn service_streams() -> anyhow::Result<Vec<String>> {
    Ok(Config::load(None, Vec::new())?.stream_names())
}

async fn fill(
    dir: &Path,
    events: u64,
    per_entry: u64,
    writers: u64,
    hold: bool,
) -> anyhow::Result<()> {
    let per_entry = per_entry.max(1);
    let writers = writers.max(1);
    let config = fill_config(dir);
    std::fs::create_dir_all(&config.path)?;
    let queue = Queue::open(&config, &service_streams()?)?;
    let entry = Arc::new(LINE.repeat(per_entry as usize).into_bytes());
    let requests = events / per_entry;
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let progress = {
        let (done, finished) = (done.clone(), finished.clone());
        tokio::spawn(async move {
            let mut last = Instant::now();
            while !finished.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if last.elapsed() >= Duration::from_secs(10) {
                    last = Instant::now();
                    let n = done.load(Ordering::Relaxed) * per_entry;
                    println!(
                        "progress: {n} events in {:.0} s ({:.0}/s), VmRSS {:.0} MiB",
                        started.elapsed().as_secs_f64(),
                        n as f64 / started.elapsed().as_secs_f64(),
                        status_kb(std::process::id(), "VmRSS").unwrap_or(0) as f64 / 1024.0
                    );
                }
            }
        })
    };
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let share = requests / writers + u64::from(i < requests % writers);
            let (queue, entry, done) = (queue.clone(), entry.clone(), done.clone());
            tokio::spawn(async move {
                for _ in 0..share {
                    queue.append(STREAM, &entry, per_entry as u32).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, firehose_edge::queue::QueueError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    finished.store(true, Ordering::Release);
    progress.await?;
    // sled's background flush (500 ms) and the manifest round (twice a second) have run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued = queue.queued_events(STREAM);
    println!(
        "FILLED events={queued} requests={requests} secs={secs:.3} budget_bytes={} disk_bytes={}",
        queue.queued_bytes(),
        queue.size_on_disk()
    );
    if !hold {
        println!(
            "filled {queued} events ({per_entry} per request, {writers} writers) in {secs:.1} s ({:.0}/s); VmHWM {:.0} MiB",
            queued as f64 / secs,
            status_kb(std::process::id(), "VmHWM").unwrap_or(0) as f64 / 1024.0
        );
        queue.close()?;
        return Ok(());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        // Never left waiting for ever if the parent is gone.
        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
    }
    let closing = Instant::now();
    queue.close()?;
    println!("CLOSED secs={:.3}", closing.elapsed().as_secs_f64());
    Ok(())
}

async fn open(dir: &Path) -> anyhow::Result<()> {
    let config = QueueConfig {
        max_bytes: BUDGET,
        ..fill_config(dir)
    };
    let reopened = Instant::now();
    let queue = Queue::open(&config, &service_streams()?)?;
    let head = queue.read_head(STREAM, &Default::default(), 1, usize::MAX)?;
    println!(
        "reopened with {} events queued, head readable: {} — in {:.2} s; VmHWM {:.0} MiB",
        queue.queued_events(STREAM),
        !head.is_empty(),
        reopened.elapsed().as_secs_f64(),
        status_kb(std::process::id(), "VmHWM").unwrap_or(0) as f64 / 1024.0
    );
    queue.close()?;
    Ok(())
}

fn sled_open(dir: &Path, cache: u64, walk: bool, hold: bool) -> anyhow::Result<()> {
    let me = std::process::id();
    let started = Instant::now();
    let db = sled::Config::new()
        .path(dir.join("queue"))
        .cache_capacity(cache)
        .segment_size(SEGMENT_SIZE)
        .open()?;
    println!(
        "OPENED secs={:.3} hwm_kb={} rss_kb={} trees={}",
        started.elapsed().as_secs_f64(),
        status_kb(me, "VmHWM").unwrap_or(0),
        status_kb(me, "VmRSS").unwrap_or(0),
        db.tree_names().len()
    );
    if walk {
        let started = Instant::now();
        let tree = db.open_tree(format!("q/{STREAM}"))?;
        let (mut values, mut events, mut bytes, mut bad) = (0u64, 0u64, 0u64, 0u64);
        for item in tree.iter() {
            let (_, v) = item?;
            values += 1;
            bytes += v.len() as u64;
            // The entry header (version 2): version · enqueued ms · count · CRC-32.
            if v.len() >= 17 && v[0] == 2 {
                let mut crc = crc32fast::Hasher::new();
                crc.update(&v[1..13]);
                crc.update(&v[17..]);
                if crc.finalize().to_be_bytes() == v[13..17] {
                    events += u64::from(u32::from_be_bytes(v[9..13].try_into()?));
                    continue;
                }
            }
            bad += 1;
        }
        println!(
            "WALKED secs={:.3} values={values} events={events} bytes={bytes} bad={bad} hwm_kb={} rss_kb={}",
            started.elapsed().as_secs_f64(),
            status_kb(me, "VmHWM").unwrap_or(0),
            status_kb(me, "VmRSS").unwrap_or(0)
        );
    }
    if hold {
        println!("HOLD");
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(600));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parent: `run`.

/// One row of the table.
struct Row {
    phase: String,
    events: String,
    disk: String,
    hwm: String,
    time: String,
    note: String,
}

struct Table(Vec<Row>);

impl Table {
    fn header() -> &'static str {
        "| phase | events queued | sled files (du) | VmHWM | time | notes |\n|---|---|---|---|---|---|"
    }

    fn push(&mut self, row: Row) {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.phase, row.events, row.disk, row.hwm, row.time, row.note
        );
        self.0.push(row);
    }
}

/// The run's directory, removed on drop (after the children, which are dropped first).
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A child process that is killed (SIGKILL) if still running when dropped.
struct Proc {
    child: Child,
    what: String,
    log: Option<PathBuf>,
    /// The admin listener of a service.
    admin: Option<SocketAddr>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = self.log.as_ref().map(|l| log_tail(l)).unwrap_or_default();
            bail!("{} exited early ({status}){tail}", self.what);
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait up to `bound`; returns how long it took to exit.
    fn term(&mut self, bound: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        while started.elapsed() < bound {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    let tail = self.log.as_ref().map(|l| log_tail(l)).unwrap_or_default();
                    bail!("{} stopped with {status}{tail}", self.what);
                }
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{} did not stop within {bound:?} of SIGTERM", self.what)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of a child's stdout, read by a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line starting with `prefix`, echoing the others to stderr.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    proc: &mut Proc,
    prefix: &str,
    bound: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{}: no {prefix} line within {bound:?}", proc.what);
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(line) => eprintln!("  {}: {line}", proc.what),
            Err(mpsc::RecvTimeoutError::Timeout) => proc.check_alive()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                proc.check_alive()?;
                bail!("{}: output ended before {prefix}", proc.what);
            }
        }
    }
}

/// `key=value` of a child's status line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

struct Run<'a> {
    args: &'a RunArgs,
    dir: PathBuf,
    queue: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    starts: u32,
    table: Table,
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!(
        "backlog-{}x{}-{}",
        args.events,
        args.per_request,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let _guard = RunDir {
        path: dir.clone(),
        keep: args.keep,
    };
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no parent directory")?
            .join("firehose-edge"),
    };
    let config = dir.join("firehose-edge.toml");
    // The sink's directory lies below a regular file: every write fails (ENOTDIR, even for
    // root) until the file is replaced by a directory.
    std::fs::write(dir.join("blocked"), b"")?;
    std::fs::write(
        &config,
        format!(
            "[queue]\npath = {:?}\nmax_bytes = {BUDGET}\n\n[sink]\nkind = \"file\"\ndirectory = {:?}\n\n\
             [flusher]\nretry_max_ms = 500\n\n[log]\nlevel = \"info\"\n",
            dir.join("queue").display().to_string(),
            dir.join("blocked/lake").display().to_string(),
        ),
    )?;
    let checked = Command::new(&bin)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !checked.status.success() {
        bail!(
            "configuration refused: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    println!(
        "backlog run: {} events, {} per request, {} writer(s); {}; queue {}; load average {}",
        args.events,
        args.per_request,
        args.writers,
        if args.cold {
            "cold page cache before each open"
        } else {
            "warm page cache"
        },
        dir.display(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{}", Table::header());
    let mut run = Run {
        args,
        queue: dir.join("queue"),
        dir,
        config,
        bin,
        starts: 0,
        table: Table(Vec::new()),
    };
    let filled = run.fill()?;
    for (i, cache) in args.probe_caches.iter().enumerate() {
        run.probe(cache, i == 0)?;
    }
    let first_start = if args.fill_stop == "kill" {
        "restart after kill -9"
    } else {
        "restart after clean close of the fill"
    };
    let mut service = run.start(first_start, filled)?;
    let stop = service.term(Duration::from_secs(120))?;
    run.table.push(Row {
        phase: "SIGTERM (clean stop)".into(),
        events: filled.to_string(),
        disk: disk(&run.queue),
        hwm: "–".into(),
        time: format!("{:.2} s", stop.as_secs_f64()),
        note: "to exit".into(),
    });
    let mut service = run.start("clean restart (full queue)", filled)?;
    if !args.no_drain {
        run.drain(&mut service, filled)?;
        service.term(Duration::from_secs(120))?;
        let mut service = run.start("restart after the drain", 0)?;
        service.term(Duration::from_secs(120))?;
    } else {
        service.term(Duration::from_secs(120))?;
    }
    println!(
        "\nload average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("\n{}", Table::header());
    for r in &run.table.0 {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.phase, r.events, r.disk, r.hwm, r.time, r.note
        );
    }
    Ok(())
}

impl Run<'_> {
    fn bound(&self) -> Duration {
        Duration::from_secs(self.args.timeout_secs)
    }

    /// Phases 1 and 2: fill in a child, read its VmHWM, kill -9 it (or SIGTERM).
    fn fill(&mut self) -> anyhow::Result<u64> {
        let args = self.args;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("fill")
            .arg(&self.dir)
            .args([args.events.to_string(), args.per_request.to_string()])
            .args(["--writers", &args.writers.to_string(), "--hold"])
            .stdout(Stdio::piped())
            .spawn()?;
        let rx = lines_of(&mut child);
        let mut proc = Proc {
            child,
            what: "fill".into(),
            log: None,
            admin: None,
        };
        let line = wait_line(&rx, &mut proc, "FILLED", self.bound())?;
        let hwm = status_kb(proc.pid(), "VmHWM").unwrap_or(0);
        let events = field(&line, "events").unwrap_or(0.0) as u64;
        let requests = field(&line, "requests").unwrap_or(0.0);
        let secs = field(&line, "secs").unwrap_or(0.0);
        let budget = field(&line, "budget_bytes").unwrap_or(0.0);
        self.table.push(Row {
            phase: format!("fill ({} writer(s), Queue::append)", args.writers),
            events: events.to_string(),
            disk: disk(&self.queue),
            hwm: mib(hwm),
            time: format!("{secs:.1} s"),
            note: format!(
                "{requests:.0} requests, {:.0} events/s; budget bytes {:.0} MiB",
                events as f64 / secs,
                budget / 1048576.0
            ),
        });
        if args.fill_stop == "kill" {
            proc.kill9()?;
            self.table.push(Row {
                phase: "kill -9 of the fill".into(),
                events: events.to_string(),
                disk: disk(&self.queue),
                hwm: "–".into(),
                time: "–".into(),
                note: "SIGKILL".into(),
            });
        } else {
            proc.term(Duration::from_secs(120))?;
            let closed = wait_line(&rx, &mut proc, "CLOSED", Duration::from_secs(5))?;
            self.table.push(Row {
                phase: "clean close of the fill".into(),
                events: events.to_string(),
                disk: disk(&self.queue),
                hwm: "–".into(),
                time: format!("{:.2} s", field(&closed, "secs").unwrap_or(0.0)),
                note: "SIGTERM → Queue::close".into(),
            });
        }
        Ok(events)
    }

    /// Bare sled opens (and walks) in a child, SIGKILLed, on a copy of the queue: sled's
    /// first open rewrites its files (it writes a snapshot and zeroes the segments it
    /// frees), so the service must not meet a directory a probe opened. With `again`, the
    /// copy is opened a second time: what a later open costs, from the snapshot.
    fn probe(&mut self, cache: &str, again: bool) -> anyhow::Result<()> {
        let copy = self.dir.join("probe");
        let (len, _) = sizes(&self.queue);
        let free = rustix::fs::statvfs(&self.dir).map(|s| s.f_bavail * s.f_frsize)?;
        if free.saturating_sub(len) < 20 << 30 {
            println!(
                "note: sled probe with cache_capacity {cache} skipped: a copy of the queue would leave less than 20 GiB free"
            );
            return Ok(());
        }
        std::fs::create_dir_all(&copy)?;
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.queue)
            .arg(copy.join("queue"))
            .status()?;
        if !copied.success() {
            bail!("cannot copy the queue for the sled probe");
        }
        for which in [
            "as the crash left it (a copy)",
            "again, from the snapshot the first open wrote",
        ]
        .into_iter()
        .take(if again { 2 } else { 1 })
        {
            self.probe_once(&copy, cache, which)?;
        }
        std::fs::remove_dir_all(&copy)?;
        Ok(())
    }

    fn probe_once(&mut self, copy: &Path, cache: &str, which: &str) -> anyhow::Result<()> {
        if self.args.cold {
            evict(&copy.join("queue"))?;
        }
        let mut child = Command::new(std::env::current_exe()?)
            .arg("sled-open")
            .arg(copy)
            .args(["--cache", cache, "--walk", "--hold"])
            .stdout(Stdio::piped())
            .spawn()?;
        let rx = lines_of(&mut child);
        let mut proc = Proc {
            child,
            what: "sled-open".into(),
            log: None,
            admin: None,
        };
        let opened = wait_line(&rx, &mut proc, "OPENED", self.bound())?;
        let walked = wait_line(&rx, &mut proc, "WALKED", self.bound())?;
        wait_line(&rx, &mut proc, "HOLD", self.bound())?;
        proc.kill9()?;
        let kb = |line: &str, key: &str| field(line, key).unwrap_or(0.0) as u64;
        self.table.push(Row {
            phase: format!("bare sled::open, cache_capacity {cache}"),
            events: "–".into(),
            disk: disk(&copy.join("queue")),
            hwm: mib(kb(&opened, "hwm_kb")),
            time: format!("{:.2} s", field(&opened, "secs").unwrap_or(0.0)),
            note: format!("{which}; VmRSS after open {}", mib(kb(&opened, "rss_kb"))),
        });
        self.table.push(Row {
            phase: format!("  + bare walk of q/{STREAM} (header + CRC)"),
            events: format!("{:.0}", field(&walked, "events").unwrap_or(0.0)),
            disk: "–".into(),
            hwm: mib(kb(&walked, "hwm_kb")),
            time: format!("{:.2} s", field(&walked, "secs").unwrap_or(0.0)),
            note: format!(
                "{:.0} values, {:.0} MiB of values, {:.0} bad; VmRSS after walk {}",
                field(&walked, "values").unwrap_or(0.0),
                field(&walked, "bytes").unwrap_or(0.0) / 1048576.0,
                field(&walked, "bad").unwrap_or(0.0),
                mib(kb(&walked, "rss_kb"))
            ),
        });
        Ok(())
    }

    /// Starts the service on the queue (sink as it is now), measures the time to `/readyz`
    /// 200 and VmHWM then and 2 s later, and checks the depth.
    fn start(&mut self, phase: &str, expected: u64) -> anyhow::Result<Proc> {
        if self.args.cold {
            evict(&self.queue)?;
        }
        self.starts += 1;
        let (ingest, admin) = (free_port()?, free_port()?);
        let log = self.dir.join(format!("service-{}.log", self.starts));
        let out = std::fs::File::create(&log)?;
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .env("FIREHOSE_EDGE__SERVER__LISTEN", ingest.to_string())
            .env("FIREHOSE_EDGE__ADMIN__LISTEN", admin.to_string())
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()?;
        let mut proc = Proc {
            child,
            what: format!("firehose-edge ({phase})"),
            log: Some(log),
            admin: None,
        };
        let deadline = started + Duration::from_secs(600).min(self.bound());
        let mut rss_peak = 0;
        let ready = loop {
            proc.check_alive()?;
            rss_peak = rss_peak.max(status_kb(proc.pid(), "VmRSS").unwrap_or(0));
            if let Ok((200, _)) = http_get(admin, "/readyz", Duration::from_millis(500)) {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                bail!("{}: /readyz not 200 within 600 s", proc.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let hwm_ready = status_kb(proc.pid(), "VmHWM").unwrap_or(0);
        let later = Instant::now() + Duration::from_secs(2);
        while Instant::now() < later {
            rss_peak = rss_peak.max(status_kb(proc.pid(), "VmRSS").unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        let hwm_later = status_kb(proc.pid(), "VmHWM").unwrap_or(0);
        let depth = depth(admin)?;
        let note = if depth == expected {
            String::new()
        } else {
            format!("; expected {expected}")
        };
        self.table.push(Row {
            phase: phase.into(),
            events: depth.to_string(),
            disk: disk(&self.queue),
            hwm: format!("{} (2 s later {})", mib(hwm_ready), mib(hwm_later)),
            time: format!("{:.2} s", ready.as_secs_f64()),
            note: format!("to /readyz 200; VmRSS peak sampled {}{note}", mib(rss_peak)),
        });
        proc.admin = Some(admin);
        Ok(proc)
    }

    /// Resets VmHWM, makes the sink writable, waits for the depth gauge to read 0, and counts
    /// the lake's lines.
    fn drain(&mut self, service: &mut Proc, expected: u64) -> anyhow::Result<()> {
        let admin = service.admin.context("no admin address")?;
        let reset = std::fs::write(format!("/proc/{}/clear_refs", service.pid()), "5").is_ok();
        let base = status_kb(service.pid(), "VmHWM").unwrap_or(0);
        std::fs::remove_file(self.dir.join("blocked"))?;
        std::fs::create_dir(self.dir.join("blocked"))?;
        let started = Instant::now();
        let mut rss_peak = 0;
        let mut last_print = Instant::now();
        loop {
            service.check_alive()?;
            rss_peak = rss_peak.max(status_kb(service.pid(), "VmRSS").unwrap_or(0));
            let left = depth(admin)?;
            if left == 0 {
                break;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                last_print = Instant::now();
                eprintln!(
                    "  drain: {left} left after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
            if started.elapsed() > self.bound() {
                bail!("the queue did not drain within {:?}", self.bound());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let secs = started.elapsed().as_secs_f64();
        let hwm = status_kb(service.pid(), "VmHWM").unwrap_or(0);
        let lines = count_lines(&self.dir.join("blocked/lake"))?;
        self.table.push(Row {
            phase: "drain to the file sink".into(),
            events: "0".into(),
            disk: disk(&self.queue),
            hwm: if reset {
                mib(hwm)
            } else {
                format!("{} (not reset)", mib(hwm))
            },
            time: format!("{secs:.1} s"),
            note: format!(
                "{:.0} events/s; VmHWM reset to {} first; VmRSS peak sampled {}; lake holds {lines} lines of {expected}",
                expected as f64 / secs,
                mib(base),
                mib(rss_peak)
            ),
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A field of /proc/<pid>/status, in kB.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kb: u64) -> String {
    format!("{:.0} MiB", kb as f64 / 1024.0)
}

/// Apparent size and allocated size of every file below `dir`.
fn sizes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                let (a, b) = sizes(&e.path());
                total = (total.0 + a, total.1 + b);
            } else {
                total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
            }
        }
    }
    total
}

fn disk(dir: &Path) -> String {
    let (len, used) = sizes(dir);
    format!(
        "{:.0} MiB ({:.0})",
        len as f64 / 1048576.0,
        used as f64 / 1048576.0
    )
}

/// Drops the files below `dir` from the page cache (written back first): only these files.
fn evict(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            evict(&e.path())?;
        } else {
            let f = std::fs::File::open(e.path())?;
            f.sync_all()?;
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
        }
    }
    Ok(())
}

/// Newlines in every file below `dir`.
fn count_lines(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut buf = vec![0u8; 1 << 20];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            n += count_lines(&e.path())?;
        } else {
            let mut f = std::fs::File::open(e.path())?;
            loop {
                let read = f.read(&mut buf)?;
                if read == 0 {
                    break;
                }
                n += buf[..read].iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
    }
    Ok(n)
}

/// A port free now on 127.0.0.1.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Sum of `firehose_edge_queue_depth_events` over the streams, from `/metrics`.
fn depth(admin: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = http_get(admin, "/metrics", Duration::from_secs(10))?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with(firehose_edge::metrics::QUEUE_DEPTH))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// `123`, `16K`, `64M`, `1G`.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (digits, shift) = [("K", 10), ("M", 20), ("G", 30)]
        .iter()
        .find_map(|(suffix, shift)| Some((s.strip_suffix(suffix)?, *shift)))
        .unwrap_or((s, 0));
    Ok(digits.parse::<u64>().context("a size like 64M")? << shift)
}

/// The last lines of a service log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().rev().take(15).collect();
    let tail: Vec<_> = lines.into_iter().rev().collect();
    format!("; log {}:\n{}", log.display(), tail.join("\n"))
}
