//! End to end: the real service against a bare hyper server, under the same HTTP/1.1
//! keep-alive load, and the flusher's drain rate next to the ingest rate.
//!
//! `cargo bench --bench throughput`; under `cargo test` it makes a short smoke run (in-process
//! generator, no `wrk` needed) that fails on any error. Knobs (`knobs.rs`):
//! - `THROUGHPUT_SECS`: measured seconds per run (default 5; `wrk` runs whole seconds, so a
//!   fraction is rounded up for it).
//! - `THROUGHPUT_QUICK=1`: 1 s runs at 64 connections only, a 200k-event drain.
//! - `THROUGHPUT_CONNS`: connection counts, e.g. `16,64` (default `64,256`).
//! - `THROUGHPUT_CASES`: case letters, e.g. `ac` (default all, `abcdef`; `cases.rs`).
//! - `THROUGHPUT_GENERATOR`: `wrk`, `inprocess`, or `auto` (default: `wrk` when it is on
//!   `PATH` — Debian package `wrk` — else the in-process generator).
//! - `THROUGHPUT_CLIENT_THREADS`: load generator threads, `wrk -t` (default 2) or the
//!   in-process generator's runtime workers (default 1). The same for both servers.
//!
//! What is measured, in the order `main` runs it:
//! - The load generator's own ceiling, printed before the table: its rate against a server
//!   that answers with a pre-built response (`servers/canned.rs`), with the first case's
//!   bodies.
//! - The table: each case at each connection count, first against bare hyper
//!   (`servers/bare.rs`), then against firehose-edge on a fresh queue with an instant sink
//!   (`servers/edge.rs`). The ratio is firehose-edge ÷ bare. A run is a warm-up, then a fixed
//!   window in which every response that completes counts, from N connections each sending
//!   one request after another, from `wrk` (`wrk.rs`) or the in-process generator
//!   (`load.rs`); `generators.rs` says which and why. The `cpu` columns come from `/proc`
//!   (`cpu.rs`).
//! - The flusher draining a queued backlog (`drain.rs`).
//!
//! Every non-2xx response and socket error is an error: the row is marked and the bench fails
//! at the end; errors are never counted as throughput (`report.rs`).
//!
//! No tracing subscriber and no metrics recorder are installed, so logging and metrics cost
//! less than in production, where `main` installs both.

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod cpu;
mod drain;
mod generators;
mod knobs;
mod load;
mod report;
mod servers;
mod wrk;

use tokio::runtime::Runtime;

use cases::Case;
use generators::{Driver, Generators};
use knobs::Knobs;
use report::Row;
use servers::{EdgeServer, Server};

fn main() {
    let knobs = Knobs::from_env();
    if knobs.smoke {
        wrk::check_parser();
    }
    let bench = Bench::new(knobs);
    let cases = cases::selected(&bench.knobs.cases);
    report::setup(&bench.knobs, &bench.generators);

    let ceiling = bench.measure_ceiling(&cases[0]);
    let table = bench.measure_table(&cases, &ceiling);
    bench.measure_drain(table.case_c_events_per_sec);

    // Every run, smoke or full, must be clean: a bench that errors measures nothing.
    let failed_runs = ceiling.failed_runs + table.failed_runs;
    assert_eq!(
        failed_runs, 0,
        "{failed_runs} run(s) had errors (marked ^^ above); their figures are not throughput"
    );
}

/// What every step needs: the settings, the servers' runtime and the load generators.
struct Bench {
    knobs: Knobs,
    server_rt: Runtime,
    generators: Generators,
}

/// The generator's rate against the canned server, by connection count.
struct Ceiling {
    rates: Vec<(usize, f64)>,
    failed_runs: usize,
}

impl Ceiling {
    fn at(&self, conns: usize) -> Option<f64> {
        self.rates.iter().find(|c| c.0 == conns).map(|c| c.1)
    }
}

/// What the table's runs leave for the end.
struct Table {
    failed_runs: usize,
    /// Firehose-edge's best events/s in case (c), for the drain's ratio; 0 when not run.
    case_c_events_per_sec: f64,
}

impl Bench {
    fn new(knobs: Knobs) -> Bench {
        // Two runtimes, so that the servers and the in-process load generator each have their
        // own scheduler: on one runtime, client tasks would sit in the same run queues as
        // server tasks and whichever side got polled more would set the numbers. Threads
        // still share the cores, which the OS divides; the client is kept to few threads so
        // that most of the machine is left to the server.
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(knobs.server_threads)
            .thread_name("server")
            .enable_all()
            .build()
            .expect("server runtime");
        let generators = Generators::new(&knobs);
        Bench {
            knobs,
            server_rt,
            generators,
        }
    }

    /// The generator's own ceiling, before anything it limits is measured.
    fn measure_ceiling(&self, case: &Case) -> Ceiling {
        let driver = self.generators.pick(&case.bodies).0;
        let canned = Server::canned(&self.server_rt);
        let mut ceiling = Ceiling {
            rates: Vec::new(),
            failed_runs: 0,
        };
        for &conns in &self.knobs.conns {
            let run = self
                .generators
                .drive(driver, canned.addr, conns, &case.bodies, &self.knobs);
            ceiling.failed_runs += usize::from(run.errors > 0);
            ceiling.rates.push((conns, run.per_sec(run.requests)));
            report::ceiling(&self.generators.label(driver), conns, case, &run);
        }
        canned.stop(&self.server_rt);
        ceiling
    }

    /// The table: every case at every connection count, a row as each is measured, then
    /// the notes on them.
    fn measure_table(&self, cases: &[Case], ceiling: &Ceiling) -> Table {
        report::table_header();
        let bare = Server::bare(&self.server_rt);
        let mut table = Table {
            failed_runs: 0,
            case_c_events_per_sec: 0.0,
        };
        let mut notes = Vec::new();
        for (n, case) in cases.iter().enumerate() {
            let (driver, why_not_wrk) = self.generators.pick(&case.bodies);
            if let Some(why) = why_not_wrk {
                notes.push(format!(
                    "{}: in-process generator, since wrk cannot send it: {why}",
                    case.name
                ));
            }
            for &conns in &self.knobs.conns {
                let row = self.measure_row(driver, &bare, case, conns);
                let label = self.generators.label(driver);
                table.failed_runs += report::row(case, conns, &label, &row);
                // Who set the bare figure: said for the first case, and for any other when it
                // was not the bare server.
                let ceiling = (n == 0).then(|| ceiling.at(conns)).flatten();
                let verdict = report::bare_verdict(
                    &row.bare,
                    ceiling,
                    self.generators.threads,
                    self.knobs.server_threads,
                );
                if n == 0 || verdict.is_some() {
                    notes.push(format!(
                        "{} at {conns} conns, bare hyper: {}",
                        &case.name[..3],
                        verdict.as_deref().unwrap_or("no CPU figures from /proc")
                    ));
                }
                if case.letter == 'c' {
                    table.case_c_events_per_sec = table
                        .case_c_events_per_sec
                        .max(row.edge.per_sec(row.edge.events));
                }
            }
        }
        bare.stop(&self.server_rt);
        report::legend(&notes);
        table
    }

    /// One case at one connection count: bare hyper, then firehose-edge on a fresh queue.
    fn measure_row(&self, driver: Driver, bare: &Server, case: &Case, conns: usize) -> Row {
        let (generators, knobs) = (&self.generators, &self.knobs);
        let base = generators.drive(driver, bare.addr, conns, &case.bodies, knobs);

        let edge = EdgeServer::start(&self.server_rt, case.durability);
        let got = generators.drive(driver, edge.addr, conns, &case.bodies, knobs);
        // Events acknowledged but not yet at the sink when the load stopped: the flusher's
        // linger (200 ms by default) keeps this above zero; far more means it fell behind.
        let undelivered = got.acked_events.saturating_sub(edge.sink.events());
        edge.stop(&self.server_rt);
        Row {
            bare: base,
            edge: got,
            undelivered,
        }
    }

    /// The flusher's drain rate, next to case (c)'s ingest rate when that ran.
    fn measure_drain(&self, case_c_events_per_sec: f64) {
        let (events, elapsed, calls) = self
            .server_rt
            .block_on(drain::backlog(self.knobs.backlog_events));
        report::drain(events, elapsed, calls, case_c_events_per_sec);
    }
}
