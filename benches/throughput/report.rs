//! What the bench prints, in order: the setup line, the generator's ceiling, the table (one
//! row a case and connection count, printed as it is measured), the notes under it and the
//! drain line. A run with errors is marked `^^` under its row and never counted as
//! throughput.

use std::time::Duration;

use crate::cases::Case;
use crate::generators::{Generators, Run};
use crate::knobs::Knobs;
use crate::wrk::whole_secs;

/// One row of the table: the same load against bare hyper and against firehose-edge.
pub struct Row {
    pub bare: Run,
    pub edge: Run,
    /// Events firehose-edge acknowledged that were not at the sink when the load stopped.
    pub undelivered: u64,
}

/// The first lines: durations, cores, threads, and what kind of run this is.
pub fn setup(knobs: &Knobs, generators: &Generators) {
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
}

/// One line of the generator's ceiling, at `conns` connections with `case`'s bodies.
pub fn ceiling(generator: &str, conns: usize, case: &Case, run: &Run) {
    println!(
        "load generator: {}, ceiling ≈ {:.0} req/s at {conns} conns ({} bodies against a \
         pre-built answer; cpu gen+srv/all {}){}",
        generator,
        run.per_sec(run.requests),
        &case.name[..3],
        run.cpu(),
        error_note(run),
    );
}

pub fn table_header() {
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
}

/// A row of the table, then a `^^` line under it for each server whose run had errors;
/// returns how many had.
pub fn row(case: &Case, conns: usize, generator: &str, row: &Row) -> usize {
    let (base, got) = (&row.bare, &row.edge);
    let ratio = got.per_sec(got.requests) / base.per_sec(base.requests);
    let errors = base.errors + got.errors;
    println!(
        "{:<24} {:>5} {:<9} {:>9.0} {:>9.0} {:>10.0} {:>7} {:>7} {:>5.2} {:>14} {:>14} \
         {:>6} {:>7}",
        case.name,
        conns,
        generator,
        base.per_sec(base.requests),
        got.per_sec(got.requests),
        got.per_sec(got.events),
        ms(got.p50),
        ms(got.p99),
        ratio,
        base.cpu(),
        got.cpu(),
        errors,
        row.undelivered,
    );
    let mut failed = 0;
    for (server, run) in [("bare hyper", base), ("firehose-edge", got)] {
        if run.errors > 0 {
            failed += 1;
            println!("    ^^ {server}{}", error_note(run));
        }
    }
    failed
}

/// The columns explained, then the notes gathered while the table was measured.
pub fn legend(notes: &[String]) {
    println!(
        "(r/s: 2xx responses a second; events/s, p50, p99: firehose-edge's; ratio: edge ÷ bare; \
         cpu: cores used during the run by generator + server / by the whole machine, whose \
         rest is kernel threads (the journal, for fsyncs) and other people's work; undeliv: \
         acked events not yet at the sink)"
    );
    for note in notes {
        println!("{note}");
    }
}

/// The drain line, and its ratio to case (c)'s ingest when case (c) ran.
pub fn drain(events: u64, elapsed: Duration, calls: u64, case_c_events_per_sec: f64) {
    println!();
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

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Why a bare-hyper run's figure is not the bare server's, if it is not: the generator at
/// its `ceiling` (when given) or using all its threads, or idle CPU on the machine (`cores`).
/// Notes other work on the machine during the run, which makes any figure suspect.
pub fn bare_verdict(
    run: &Run,
    ceiling: Option<f64>,
    threads: usize,
    cores: usize,
) -> Option<String> {
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
