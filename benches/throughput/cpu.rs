//! The table's `cpu` columns: the cores that the generator and the server used during each
//! run, and the whole machine, from `/proc` (10 ms ticks). A generator near its thread count
//! is saturated, and a machine much busier than the two was doing other work too.

use std::time::Instant;

use crate::generators::Driver;
use crate::load::LOADGEN_THREAD;

/// Clock ticks a second in `/proc/*/stat` (`USER_HZ`, fixed at 100 by Linux's user ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time of this process and of its waited-for children, from `/proc`, in ticks.
pub struct CpuTimes {
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
    pub fn now() -> Option<CpuTimes> {
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
    pub fn cores_since(&self, before: &CpuTimes, driver: Driver) -> Cores {
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
pub struct Cores {
    pub generator: f64,
    pub server: f64,
    pub machine: f64,
}

impl Cores {
    /// What the machine did besides generator and server: kernel threads (the file system's
    /// journal, for fsyncs) and other people's work.
    pub fn others(&self) -> f64 {
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
