//! The load generators, and what one run of either saw.
//!
//! The machine's cores are shared by server and generator; the server runs one worker per
//! core, the generator `THROUGHPUT_CLIENT_THREADS` threads, and nothing is pinned, so the OS
//! divides the cores. `wrk` (`wrk.rs`) is the reference: a C event loop that needs less CPU
//! per request than the hyper client of the in-process generator (`load.rs`), whose ceiling
//! (~165k req/s on 2 cores here) is what bare hyper reaches with it. Both servers get
//! `wrk -t2` by default: on 2 cores `-t1` left a quarter of the machine idle against bare
//! hyper (~165k req/s, one event loop waiting on the server), `-t2` saturates it (~200k,
//! under a ceiling of ~240k); pinning wrk and the server to a core each (`taskset`) halved
//! every figure here. A case wrk cannot send stays on the in-process generator, and the
//! output says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::cases::Body;
use crate::cpu::{Cores, CpuTimes};
use crate::knobs::Knobs;
use crate::{load, wrk};

/// What one load run against one server saw, whichever generator drove it.
pub struct Run {
    /// The measured window (wrk: the duration it reports).
    pub window: Duration,
    /// 2xx responses completed in the window.
    pub requests: u64,
    /// Events those carried.
    pub events: u64,
    /// Failed requests: non-2xx answers, socket errors, timeouts, no request at all.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Events of every 2xx of the run, warm-up included: what the sink should receive.
    pub acked_events: u64,
    pub p50: Duration,
    pub p99: Duration,
    /// CPU used over the run, warm-up included.
    pub cpu: Option<Cores>,
}

impl Run {
    pub fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.window.as_secs_f64()
    }

    pub fn cpu(&self) -> String {
        self.cpu.as_ref().map_or("-".to_owned(), |c| {
            format!("{:.2}+{:.2}/{:.2}", c.generator, c.server, c.machine)
        })
    }
}

/// Which generator sends a case's requests.
#[derive(Clone, Copy)]
pub enum Driver {
    InProcess,
    Wrk,
}

/// The load generators available to this run.
pub struct Generators {
    /// The in-process generator's runtime: always there, for cases wrk cannot send.
    load_rt: Runtime,
    pub threads: usize,
    /// `wrk`'s version line, when it drives the runs.
    pub wrk: Option<String>,
    /// Why wrk does not, when it was asked for by `auto` and is missing.
    pub wrk_absent: Option<String>,
}

impl Generators {
    pub fn new(knobs: &Knobs) -> Generators {
        let (wrk, wrk_absent) = match knobs.generator.as_str() {
            "inprocess" => (None, None),
            "wrk" => (
                Some(wrk::version().expect(
                    "THROUGHPUT_GENERATOR=wrk, but wrk is not on PATH (apt-get install wrk)",
                )),
                None,
            ),
            "auto" => match wrk::version() {
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
            .thread_name(load::LOADGEN_THREAD)
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
    pub fn pick(&self, bodies: &[Body]) -> (Driver, Option<String>) {
        if self.wrk.is_none() {
            return (Driver::InProcess, None);
        }
        match wrk::cannot_send(bodies) {
            None => (Driver::Wrk, None),
            Some(why) => (Driver::InProcess, Some(why)),
        }
    }

    pub fn label(&self, driver: Driver) -> String {
        match driver {
            Driver::InProcess => format!("inproc/{}", self.threads),
            Driver::Wrk => format!("wrk -t{}", self.threads),
        }
    }

    /// Loads the server at `addr` from `conns` connections: warm-up, then the window.
    pub fn drive(
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
                    .block_on(load::run(addr, conns, bodies.clone(), knobs));
                tally.into_run()
            }
            Driver::Wrk => wrk::load(self.threads, addr, conns, bodies, knobs),
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
