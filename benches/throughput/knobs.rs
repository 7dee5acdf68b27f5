//! The run's settings: the `THROUGHPUT_*` variables listed in `main.rs` under `cargo bench`,
//! fixed small ones for the smoke run under `cargo test`.

use std::time::Duration;

pub struct Knobs {
    pub measure: Duration,
    pub warmup: Duration,
    pub conns: Vec<usize>,
    /// Case letters to run (`a`..`f`).
    pub cases: String,
    pub backlog_events: u64,
    pub server_threads: usize,
    /// `None`: the generator's default (wrk 2, in-process 1).
    pub client_threads: Option<usize>,
    /// `wrk`, `inprocess` or `auto`.
    pub generator: String,
    pub smoke: bool,
}

impl Knobs {
    pub fn from_env() -> Knobs {
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
