//! The `wrk` driver and its report's parser. wrk sends the case's bodies through
//! `scripts/throughput.lua` (POST, `Content-Type: application/json`, the same bodies in turn,
//! unique `messageId`s for the `/v1` cases). The warm-up is a wrk run of its own against the
//! same server, and the window is wrk's measured run; wrk runs whole seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cases::Body;
use crate::generators::Run;
use crate::knobs::Knobs;

/// `wrk`'s version (`wrk debian/4.1.0-3+b2`), or `None` when it is not on `PATH`.
pub fn version() -> Option<String> {
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
pub fn cannot_send(bodies: &[Body]) -> Option<String> {
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

/// `wrk -d` takes whole seconds.
pub fn whole_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// `scripts/throughput.lua`, which sends a case's bodies from wrk.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throughput.lua")
}

/// A warm-up run of wrk, then the measured one, against the server at `addr`.
pub fn load(threads: usize, addr: SocketAddr, conns: usize, bodies: &[Body], knobs: &Knobs) -> Run {
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
    let warm = run_once(threads, addr, conns, whole_secs(knobs.warmup), &file, "w");
    let window = run_once(threads, addr, conns, whole_secs(knobs.measure), &file, "m");
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
fn run_once(
    threads: usize,
    addr: SocketAddr,
    conns: usize,
    secs: u64,
    bodies: &Path,
    tag: &str,
) -> Report {
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script())
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
    parse(&stdout).unwrap_or_else(|e| panic!("wrk's report: {e}:\n{stdout}{stderr}"))
}

/// The parts of wrk's report (`--latency`) that the table shows.
#[derive(Debug, PartialEq)]
struct Report {
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

fn parse(out: &str) -> Result<Report, String> {
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
                requests_duration = Some((n, parse_time(d.trim_end_matches(','))?));
            }
            ["50%", t] => p50 = Some(parse_time(t)?),
            ["99%", t] => p99 = Some(parse_time(t)?),
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
    Ok(Report {
        requests,
        duration,
        non_2xx,
        socket_errors,
        p50: p50.ok_or("no 50% line (was --latency given?)")?,
        p99: p99.ok_or("no 99% line (was --latency given?)")?,
    })
}

/// A time as wrk prints it: `812.00us`, `1.23ms`, `5.00s`, `1.00m`, `2.00h`.
fn parse_time(t: &str) -> Result<Duration, String> {
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
pub fn check_parser() {
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
        parse(report),
        Ok(Report {
            requests: 728_264,
            duration: Duration::from_secs(5),
            non_2xx: 17,
            socket_errors: 5,
            p50: Duration::from_micros(412),
            p99: Duration::from_micros(1020),
        })
    );
    assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
}
