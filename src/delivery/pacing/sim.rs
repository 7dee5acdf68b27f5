//! Replicas sharing one delivery stream, simulated: each replica's own delivery policy (a
//! [`Targets`] of one paced stream, as the flusher runs it) against a model of Firehose's
//! meter, in simulated time. The pacing tests check their bounds with it, and
//! `examples/scale.rs` prints its figures for replica counts no machine here could run as
//! processes.
//!
//! The [`Meter`] meters a stream as AWS documents the Direct PUT quota and as the fake
//! Firehose of the integration tests does: one-second token buckets of requests, records and
//! bytes, refilled continuously, a call's records taken in order while they last and the rest
//! refused. Every replica always has a backlog, so it sends as fast as its pacer lets it; a
//! call comes back after a latency drawn from a seeded generator, and a refused one puts the
//! stream in back-off as in service. Runs are deterministic for a seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use super::{CallSize, Pacer};
use crate::delivery::{Backoff, CallReport, Choice, Targets};
use crate::firehose_limits::DirectPutQuota;

/// Firehose's meter of one stream: one-second buckets of each rate, so a stream below its
/// quota may burst a second's worth, and above it every call that finds a bucket short is
/// refused, in part or whole.
#[derive(Debug, Clone)]
pub struct Meter {
    rates: [f64; 3],
    tokens: [f64; 3],
    refilled: Instant,
}

impl Meter {
    /// A meter of `quota` with full buckets.
    pub fn new(quota: DirectPutQuota, now: Instant) -> Meter {
        let rates = rates(quota);
        Meter {
            rates,
            tokens: rates,
            refilled: now,
        }
    }

    /// The stream's quota changes (raised, or lowered: a neighbour starts sharing it).
    pub fn set_quota(&mut self, quota: DirectPutQuota, now: Instant) {
        self.refill(now);
        self.rates = rates(quota);
        for (tokens, rate) in self.tokens.iter_mut().zip(self.rates) {
            *tokens = tokens.min(rate);
        }
    }

    /// Meters a call of `records` records of `record_bytes` each (the last one shorter, to make
    /// up `size.bytes`): returns how many were taken, in order.
    pub fn admit(&mut self, size: CallSize, record_bytes: usize, now: Instant) -> usize {
        self.refill(now);
        if self.tokens[0] < 1.0 {
            return 0;
        }
        self.tokens[0] -= 1.0;
        let mut left = size.bytes;
        let mut taken = 0;
        while taken < size.records {
            let len = if taken + 1 == size.records {
                left
            } else {
                record_bytes.min(left)
            } as f64;
            if self.tokens[1] < 1.0 || self.tokens[2] < len {
                break;
            }
            self.tokens[1] -= 1.0;
            self.tokens[2] -= len;
            left -= len as usize;
            taken += 1;
        }
        taken
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        for (tokens, rate) in self.tokens.iter_mut().zip(self.rates) {
            *tokens = (*tokens + rate * elapsed).min(rate);
        }
    }
}

fn rates(quota: DirectPutQuota) -> [f64; 3] {
    [
        quota.requests_per_sec as f64,
        quota.records_per_sec as f64,
        quota.bytes_per_sec as f64,
    ]
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The quota every replica is told (`flusher.quota_*`, or the region's default).
    pub quota: DirectPutQuota,
    /// When each replica starts, from the start of the run; one entry per replica.
    pub starts: Vec<Duration>,
    /// When each replica stops (a scale-in), or `None`: it runs to the end; one entry per
    /// replica, as for `starts`. Its calls in flight are lost with it, as a stopped process's
    /// are; its queue is another's concern.
    pub stops: Vec<Option<Duration>>,
    /// The quota Firehose really grants the stream, as a fraction of `quota`, from each instant
    /// on (the first entry should be at zero; 1 before it).
    pub real: Vec<(Duration, f64)>,
    /// The median time Firehose takes to answer; each call takes 0.5 to 1.5 times that.
    pub latency: Duration,
    /// Bytes of one record (packed records are whole 5 KB billing units).
    pub record_bytes: usize,
    /// Simulated seconds.
    pub seconds: u64,
    /// Seed of the latencies and back-off delays.
    pub seed: u64,
}

impl Scenario {
    /// `replicas` replicas all starting at once on one stream whose real quota is the one they
    /// are told, Firehose answering in 50 ms, for `seconds`.
    pub fn shared(quota: DirectPutQuota, replicas: usize, seconds: u64) -> Scenario {
        Scenario {
            quota,
            starts: vec![Duration::ZERO; replicas],
            stops: vec![None; replicas],
            real: vec![(Duration::ZERO, 1.0)],
            latency: Duration::from_millis(50),
            record_bytes: 5_000,
            seconds,
            seed: 1,
        }
    }

    /// The same, the last replica starting `late` after the others.
    pub fn late_start(mut self, late: Duration) -> Scenario {
        if let Some(last) = self.starts.last_mut() {
            *last = late;
        }
        self
    }

    /// The same, the last `count` replicas stopping at `at` (a scale-in: the others are left
    /// to find the quota they freed).
    pub fn scale_in(mut self, count: usize, at: Duration) -> Scenario {
        let n = self.stops.len();
        for stop in &mut self.stops[n.saturating_sub(count)..] {
            *stop = Some(at);
        }
        self
    }

    /// The same, with the latencies and back-off delays of `seed`.
    pub fn with_seed(mut self, seed: u64) -> Scenario {
        self.seed = seed;
        self
    }

    /// The real quota is `fraction` of the told one from `at` on.
    pub fn real_from(mut self, at: Duration, fraction: f64) -> Scenario {
        self.real.retain(|(t, _)| *t < at);
        self.real.push((at, fraction));
        self
    }

    fn real_at(&self, second: usize) -> f64 {
        let at = Duration::from_secs(second as u64);
        self.real
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map_or(1.0, |(_, f)| *f)
    }

    /// Runs the scenario.
    pub fn run(&self) -> Outcome {
        run(self)
    }
}

/// A call on its way back.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Answer {
    at: Instant,
    seq: u64,
    replica: usize,
    sent_at: Instant,
    throttled: bool,
}

/// xorshift64*: latencies that vary, the same for a seed on every machine.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn run(scenario: &Scenario) -> Outcome {
    // The back-off's jitter is `fastrand`'s, per thread: seeded, so a run repeats.
    fastrand::seed(scenario.seed);
    let mut rng = Rng(scenario.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(scenario.seconds);
    let n = scenario.starts.len();
    let secs = scenario.seconds as usize;
    let mut meter = Meter::new(scenario.quota, t0);
    let mut real_changes: Vec<(Instant, f64)> =
        scenario.real.iter().map(|(t, f)| (t0 + *t, *f)).collect();
    real_changes.reverse();
    let start = |r: usize| t0 + scenario.starts[r];
    let mut targets: Vec<Option<Targets>> = (0..n).map(|_| None).collect();
    let mut wake: Vec<Option<Instant>> = (0..n).map(|r| Some(start(r))).collect();
    let mut stops: Vec<Option<Instant>> =
        scenario.stops.iter().map(|s| s.map(|s| t0 + s)).collect();
    let mut answers: BinaryHeap<Reverse<Answer>> = BinaryHeap::new();
    let mut seq = 0;
    let mut out = Outcome {
        fair: (0..secs).map(|s| scenario.real_at(s)).collect(),
        quota_bytes: scenario.quota.bytes_per_sec as f64,
        delivered: vec![vec![0.0; secs]; n],
        calls: vec![vec![0; secs]; n],
        throttled: vec![vec![0; secs]; n],
        shares: vec![vec![0.0; secs]; n],
        running: vec![vec![false; secs]; n],
    };
    let mut sampled = 0;
    loop {
        let next_answer = answers.peek().map(|a| a.0.at);
        let next_send = (0..n)
            .filter_map(|r| wake[r].map(|w| (w, r)))
            .min_by_key(|(w, r)| (*w, *r));
        let next_stop = stops.iter().flatten().min().copied();
        let now = [next_answer, next_send.map(|(s, _)| s), next_stop]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        // Per-second samples of every pacer's share, taken as time passes each second.
        while sampled < secs && t0 + Duration::from_secs(sampled as u64 + 1) <= now.min(end) {
            for (r, t) in targets.iter().enumerate() {
                if let Some(t) = t {
                    out.shares[r][sampled] = t.share(0);
                    out.running[r][sampled] = true;
                }
            }
            sampled += 1;
        }
        if now >= end {
            break;
        }
        while real_changes.last().is_some_and(|(t, _)| *t <= now) {
            let (_, fraction) = real_changes.pop().expect("checked");
            meter.set_quota(scaled(scenario.quota, fraction), now);
        }
        if next_stop == Some(now) {
            for r in 0..n {
                if stops[r] == Some(now) {
                    // Gone, with its calls in flight: nothing more of it is sent or answered.
                    stops[r] = None;
                    targets[r] = None;
                    wake[r] = None;
                }
            }
            continue;
        }
        if next_answer == Some(now) {
            let Reverse(answer) = answers.pop().expect("peeked");
            let r = answer.replica;
            let Some(t) = targets[r].as_mut() else {
                continue;
            };
            let report = CallReport {
                sent_at: answer.sent_at,
                throttled: answer.throttled,
                retry: answer.throttled,
                config_error: false,
                full: true,
            };
            t.returned(0, report, now);
            wake[r] = next_wake(t, now);
            continue;
        }
        let (_, r) = next_send.expect("an event is due");
        let t = targets[r].get_or_insert_with(|| {
            let pacer = Pacer::new(scenario.quota, now);
            Targets::new(
                vec![("stream".to_owned(), Some(pacer))],
                1,
                Backoff::from_millis(100, 30_000),
            )
        });
        match t.choose(now) {
            Choice::Now(i) => {
                let limit = t.max_call(i).expect("paced");
                let records = limit.bytes.div_ceil(scenario.record_bytes).max(1);
                let size = CallSize {
                    records: records.min(limit.records.max(1)),
                    bytes: limit.bytes,
                };
                let taken = meter.admit(size, scenario.record_bytes, now);
                t.sent(i, size, now);
                let second = (now - t0).as_secs() as usize;
                let bytes = if taken == size.records {
                    size.bytes
                } else {
                    taken * scenario.record_bytes
                };
                out.delivered[r][second] += bytes as f64;
                out.calls[r][second] += 1;
                let throttled = taken < size.records;
                out.throttled[r][second] += u64::from(throttled);
                let latency = scenario.latency.mul_f64(0.5 + rng.unit());
                seq += 1;
                answers.push(Reverse(Answer {
                    at: now + latency,
                    seq,
                    replica: r,
                    sent_at: now,
                    throttled,
                }));
                wake[r] = next_wake(t, now);
            }
            Choice::At(at) => wake[r] = Some(at),
            Choice::Busy => wake[r] = None,
        }
    }
    out
}

fn next_wake(targets: &mut Targets, now: Instant) -> Option<Instant> {
    match targets.choose(now) {
        Choice::Now(_) => Some(now),
        Choice::At(at) => Some(at),
        Choice::Busy => None,
    }
}

fn scaled(quota: DirectPutQuota, fraction: f64) -> DirectPutQuota {
    let scale = |v: u64| ((v as f64 * fraction).round() as u64).max(1);
    DirectPutQuota {
        bytes_per_sec: scale(quota.bytes_per_sec),
        requests_per_sec: scale(quota.requests_per_sec),
        records_per_sec: scale(quota.records_per_sec),
    }
}

/// What a run delivered, second by second.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The real quota in each second, as a fraction of the told one.
    fair: Vec<f64>,
    quota_bytes: f64,
    /// Bytes accepted, per replica and second.
    pub delivered: Vec<Vec<f64>>,
    /// Calls sent, per replica and second.
    pub calls: Vec<Vec<u64>>,
    /// Calls of which Firehose refused some record or all, per replica and second.
    pub throttled: Vec<Vec<u64>>,
    /// Each pacer's share at the end of each second.
    pub shares: Vec<Vec<f64>>,
    running: Vec<Vec<bool>>,
}

/// Figures of a window of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Replicas running through the window.
    pub replicas: usize,
    /// Bytes delivered by all of them ÷ the real quota's.
    pub delivered: f64,
    /// Calls of which some record was refused ÷ calls.
    pub throttled: f64,
    /// Calls sent.
    pub calls: u64,
    /// The smallest and the largest replica's delivery ÷ its fair share (the real quota ÷
    /// the replicas running).
    pub spread: (f64, f64),
}

impl Outcome {
    /// Figures over seconds `from..to`, of the replicas running through all of them.
    pub fn summary(&self, from: u64, to: u64) -> Summary {
        let (from, to) = (from as usize, (to as usize).min(self.fair.len()));
        let running: Vec<usize> = (0..self.delivered.len())
            .filter(|&r| self.running[r][from..to].iter().all(|x| *x))
            .collect();
        let real: f64 = self.fair[from..to].iter().sum::<f64>() * self.quota_bytes;
        let of = |r: usize| self.delivered[r][from..to].iter().sum::<f64>();
        let total: f64 = running.iter().map(|&r| of(r)).sum();
        let fair = real / running.len().max(1) as f64;
        let spread = running.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| {
            let s = of(r) / fair;
            (lo.min(s), hi.max(s))
        });
        let calls: u64 = running
            .iter()
            .map(|&r| self.calls[r][from..to].iter().sum::<u64>())
            .sum();
        let throttled: u64 = running
            .iter()
            .map(|&r| self.throttled[r][from..to].iter().sum::<u64>())
            .sum();
        Summary {
            replicas: running.len(),
            delivered: total / real,
            throttled: throttled as f64 / calls.max(1) as f64,
            calls,
            spread,
        }
    }

    /// Seconds from `since` until the run settled for good: from then on, every `window` of it
    /// delivered at least `delivered` of the real quota with at most `throttled` of its calls
    /// refused. `None`: it never did.
    pub fn settled(&self, since: u64, window: u64, delivered: f64, throttled: f64) -> Option<u64> {
        let last = self.fair.len() as u64;
        let mut settled = None;
        for from in (since..last.saturating_sub(window) + 1).rev() {
            let s = self.summary(from, from + window);
            if s.delivered >= delivered && s.throttled <= throttled {
                settled = Some(from - since);
            } else {
                break;
            }
        }
        settled
    }

    /// Seconds from `since` until replica `r` first delivered at least `fraction` of its fair
    /// share over a `window`, and kept doing so to the end.
    pub fn reached_share(&self, r: usize, since: u64, window: u64, fraction: f64) -> Option<u64> {
        let last = self.fair.len() as u64;
        let replicas = |s: usize| {
            (0..self.running.len())
                .filter(|&x| self.running[x][s])
                .count()
        };
        let mut reached = None;
        for from in (since..last.saturating_sub(window) + 1).rev() {
            let (a, b) = (from as usize, (from + window) as usize);
            let fair: f64 = (a..b)
                .map(|s| self.fair[s] * self.quota_bytes / replicas(s).max(1) as f64)
                .sum();
            let got: f64 = self.delivered[r][a..b].iter().sum();
            if got >= fraction * fair {
                reached = Some(from - since);
            } else {
                break;
            }
        }
        reached
    }
}
