//! Fan-out: one queue stream delivered over several delivery streams, each paced and backed
//! off on its own, so one that throttles or fails gets less and the others more.
//!
//! Each batch goes to the delivery stream that can take a full call soonest: not backing off,
//! below its calls-in-flight limit, and with its pacer's buckets ready. A stream whose share
//! shrank after throttling is ready less often and so gets fewer batches; one in back-off after
//! an outage gets none until its retry is due. Records of a failed call stay in the queue and
//! go out again with a later batch, to whichever stream is ready then. Order across delivery
//! streams is not kept (Firehose keeps none within one stream either).

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::pacing::{self, CallSize, Pacer};

/// One delivery stream of a fan-out.
#[derive(Debug)]
struct Target {
    stream: String,
    /// `None`: not paced (the file sink, or pacing turned off).
    pacer: Option<Pacer>,
    in_flight: usize,
    failures: u32,
    retry_at: Option<Instant>,
}

/// What the next batch may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Build a batch for target `i` now.
    Now(usize),
    /// Nothing may go before this instant (pacing or back-off).
    At(Instant),
    /// Every target is at its calls-in-flight limit: wait for a call to return.
    Busy,
}

/// How a call came back, as far as the delivery policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReport {
    /// When the call was sent.
    pub sent_at: Instant,
    /// Firehose throttled the call or some of its records.
    pub throttled: bool,
    /// Some record must be sent again (a failed call, or failed records).
    pub retry: bool,
    /// The call failed with a configuration error (missing stream, access denied).
    pub config_error: bool,
    /// The call was as large as the limits allowed: the stream has a backlog.
    pub full: bool,
}

/// The delivery streams of one queue stream.
#[derive(Debug)]
pub struct Targets {
    targets: Vec<Target>,
    max_in_flight: usize,
    backoff: Backoff,
    /// Where the search for a ready target starts, so ties rotate.
    next: usize,
}

impl Targets {
    /// Targets for `streams`, each with its pacer (`None`: unpaced), at most `max_in_flight`
    /// calls each (a paced one at least [`pacing::MAX_IN_FLIGHT`]), retried with `backoff`.
    pub fn new(
        streams: Vec<(String, Option<Pacer>)>,
        max_in_flight: usize,
        backoff: Backoff,
    ) -> Targets {
        assert!(!streams.is_empty(), "a queue stream delivers somewhere");
        Targets {
            targets: streams
                .into_iter()
                .map(|(stream, pacer)| Target {
                    stream,
                    pacer,
                    in_flight: 0,
                    failures: 0,
                    retry_at: None,
                })
                .collect(),
            max_in_flight: max_in_flight.max(1),
            backoff,
            next: 0,
        }
    }

    /// The delivery stream of target `i`.
    pub fn stream(&self, i: usize) -> &str {
        &self.targets[i].stream
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are none (never: [`Targets::new`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Calls in flight over all targets.
    pub fn in_flight(&self) -> usize {
        self.targets.iter().map(|t| t.in_flight).sum()
    }

    /// The pacing share of target `i` (1 when unpaced), for the metric.
    pub fn share(&self, i: usize) -> f64 {
        self.targets[i].pacer.as_ref().map_or(1.0, Pacer::share)
    }

    /// Which target the next batch goes to, or when one will be ready.
    pub fn choose(&mut self, now: Instant) -> Choice {
        let n = self.targets.len();
        let mut best: Option<(Instant, usize)> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let t = &mut self.targets[i];
            let limit = match t.pacer {
                Some(_) => self.max_in_flight.max(pacing::MAX_IN_FLIGHT),
                None => self.max_in_flight,
            };
            if t.in_flight >= limit {
                continue;
            }
            let mut ready = t.retry_at.filter(|r| *r > now).unwrap_or(now);
            if let Some(pacer) = &mut t.pacer {
                ready = ready.max(pacer.ready_at(pacer.max_call(), now));
            }
            // Among the ready ones, the one with fewest calls in flight spreads the load.
            let better = match best {
                None => true,
                Some((b, j)) => {
                    ready < b || (ready == b && t.in_flight < self.targets[j].in_flight)
                }
            };
            if better {
                best = Some((ready, i));
            }
        }
        match best {
            None => Choice::Busy,
            Some((ready, i)) if ready <= now => {
                self.next = (i + 1) % n;
                Choice::Now(i)
            }
            Some((ready, _)) => Choice::At(ready),
        }
    }

    /// The largest call target `i` may take now (`None`: only the caller's own limits).
    pub fn max_call(&self, i: usize) -> Option<CallSize> {
        self.targets[i].pacer.as_ref().map(Pacer::max_call)
    }

    /// A call of `size` goes to target `i` now.
    pub fn sent(&mut self, i: usize, size: CallSize, now: Instant) {
        let t = &mut self.targets[i];
        t.in_flight += 1;
        if let Some(pacer) = &mut t.pacer {
            pacer.take(size, now);
        }
    }

    /// A call to target `i` came back. Throttling shrinks its pacing share; any other failure
    /// puts it in back-off (the others keep going); a success clears that and may grow the
    /// share.
    ///
    /// A paced stream's throttled call does not back off while its share could still shrink:
    /// the cut *is* its back-off (the pacer spaces its calls further apart, down to one small
    /// call every 10 s at the floor), and only at the floor does the exponential back-off take
    /// over. Backing off as well kept a stream out of the shared overload for up to 30 s, so
    /// that it met none of the throttles that cut its neighbours and came back with the share
    /// it had: two replicas starting together could end at 1.97 and 0.03 of their fair share.
    pub fn returned(&mut self, i: usize, report: CallReport, now: Instant) {
        let backoff = self.backoff;
        let t = &mut self.targets[i];
        t.in_flight = t.in_flight.saturating_sub(1);
        let mut cut = false;
        if let Some(pacer) = &mut t.pacer {
            if report.throttled {
                cut = pacer.throttled(report.sent_at, now);
            } else if !report.retry {
                pacer.accepted(report.full, now);
            }
        }
        if report.config_error || (report.retry && !cut) {
            t.failures += 1;
            t.retry_at = Some(now + backoff.delay(t.failures, report.config_error));
        } else {
            t.failures = 0;
            t.retry_at = None;
        }
    }

    /// How long target `i` waits before its next call because of failures.
    pub fn backing_off(&self, i: usize, now: Instant) -> Duration {
        self.targets[i]
            .retry_at
            .map_or(Duration::ZERO, |r| r.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firehose_limits::DIRECT_PUT_QUOTA_DEFAULT;

    fn ok(sent_at: Instant, full: bool) -> CallReport {
        CallReport {
            sent_at,
            throttled: false,
            retry: false,
            config_error: false,
            full,
        }
    }

    fn paced(n: usize, now: Instant) -> Targets {
        let streams = (0..n)
            .map(|i| {
                (
                    format!("s-{i}"),
                    Some(Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, now)),
                )
            })
            .collect();
        Targets::new(streams, 4, Backoff::from_millis(100, 30_000))
    }

    /// Drives the targets for `secs` of simulated time with a backlog: every call is as large
    /// as allowed and comes back after 20 ms, answered by `answer(target, sent_at)`. Returns
    /// the bytes each target was sent.
    fn run(
        targets: &mut Targets,
        start: Instant,
        secs: u64,
        answer: impl Fn(usize, Instant, CallSize) -> CallReport,
    ) -> Vec<usize> {
        run_with_latency(targets, start, secs, Duration::from_millis(20), answer)
    }

    /// [`run`], each call answered after `latency`.
    fn run_with_latency(
        targets: &mut Targets,
        start: Instant,
        secs: u64,
        latency: Duration,
        answer: impl Fn(usize, Instant, CallSize) -> CallReport,
    ) -> Vec<usize> {
        let mut sent = vec![0usize; targets.len()];
        let mut pending: Vec<(Instant, usize, CallReport)> = Vec::new();
        let mut now = start;
        let end = start + Duration::from_secs(secs);
        while now < end {
            // Return calls that are due, in order.
            pending.sort_by_key(|p| p.0);
            while pending.first().is_some_and(|p| p.0 <= now) {
                let (at, i, report) = pending.remove(0);
                targets.returned(i, report, at);
            }
            match targets.choose(now) {
                Choice::Now(i) => {
                    let size = targets.max_call(i).unwrap();
                    targets.sent(i, size, now);
                    sent[i] += size.bytes;
                    pending.push((now + latency, i, answer(i, now, size)));
                }
                Choice::At(t) => {
                    now = pending.first().map_or(t, |p| p.0.min(t));
                }
                Choice::Busy => now = pending.iter().map(|p| p.0).min().unwrap(),
            }
        }
        sent
    }

    #[test]
    fn fan_out_uses_every_stream_at_its_pace() {
        let t0 = Instant::now();
        let mut targets = paced(4, t0);
        let sent = run(&mut targets, t0, 10, |_, at, _| ok(at, true));
        let quota = DIRECT_PUT_QUOTA_DEFAULT.bytes_per_sec as f64 * 10.0;
        for (i, bytes) in sent.iter().enumerate() {
            let share = *bytes as f64 / quota;
            assert!((0.97..=1.06).contains(&share), "stream {i}: {share:.3}");
        }
    }

    /// Real Firehose answers in tens to hundreds of milliseconds: small paced calls must still
    /// add up to the quota, so a paced stream keeps enough of them in flight.
    #[test]
    fn a_slow_firehose_still_gets_the_whole_quota() {
        let t0 = Instant::now();
        let mut targets = paced(2, t0);
        let latency = Duration::from_millis(250);
        let sent = run_with_latency(&mut targets, t0, 10, latency, |_, at, _| ok(at, true));
        let quota = DIRECT_PUT_QUOTA_DEFAULT.bytes_per_sec as f64 * 10.0;
        for (i, bytes) in sent.iter().enumerate() {
            let share = *bytes as f64 / quota;
            assert!((0.95..=1.06).contains(&share), "stream {i}: {share:.3}");
        }
    }

    #[test]
    fn a_throttled_stream_gets_less_and_does_not_stall_the_others() {
        let t0 = Instant::now();
        let mut targets = paced(3, t0);
        // Stream 0 really takes a tenth of its quota: every call over that is throttled.
        let limit = DIRECT_PUT_QUOTA_DEFAULT.bytes_per_sec as f64 * 0.1;
        let meter = std::cell::RefCell::new((limit, t0));
        let sent = run(&mut targets, t0, 30, |i, at, size| {
            if i != 0 {
                return ok(at, true);
            }
            let mut m = meter.borrow_mut();
            m.0 = (m.0 + limit * (at - m.1).as_secs_f64()).min(limit);
            m.1 = at;
            let size = size.bytes as f64;
            if m.0 >= size {
                m.0 -= size;
                ok(at, true)
            } else {
                CallReport {
                    throttled: true,
                    retry: true,
                    ..ok(at, true)
                }
            }
        });
        let quota = DIRECT_PUT_QUOTA_DEFAULT.bytes_per_sec as f64 * 30.0;
        let shares: Vec<f64> = sent.iter().map(|b| *b as f64 / quota).collect();
        assert!(shares[0] < 0.3, "the throttled stream got {shares:?}");
        assert!(
            shares[1] > 0.95 && shares[2] > 0.95,
            "the others kept their pace: {shares:?}"
        );
        assert!(targets.share(0) < 0.5);
    }

    #[test]
    fn a_throttled_paced_stream_is_slowed_by_its_pacer_and_backs_off_only_at_the_floor() {
        let t0 = Instant::now();
        let mut targets = paced(1, t0);
        let throttled = |sent_at| CallReport {
            throttled: true,
            retry: true,
            ..ok(sent_at, true)
        };
        let mut t = t0;
        let size = targets.max_call(0).unwrap();
        targets.sent(0, size, t);
        t += Duration::from_millis(20);
        targets.returned(0, throttled(t), t);
        assert!(targets.share(0) < 1.0, "the cut");
        assert_eq!(targets.backing_off(0, t), Duration::ZERO, "is its back-off");
        // A failure that is not a throttle still backs off.
        targets.sent(0, size, t);
        targets.returned(
            0,
            CallReport {
                retry: true,
                ..ok(t, true)
            },
            t,
        );
        assert!(targets.backing_off(0, t) > Duration::ZERO);
        // At the floor the pacer has nothing left to cut: the back-off takes over.
        while targets.share(0) > pacing::MIN_SHARE {
            t += Duration::from_millis(1);
            targets.returned(0, throttled(t), t);
        }
        assert_eq!(targets.backing_off(0, t), Duration::ZERO);
        t += Duration::from_millis(1);
        targets.returned(0, throttled(t), t);
        assert!(targets.backing_off(0, t) > Duration::ZERO, "at the floor");
    }

    #[test]
    fn a_failing_stream_backs_off_while_the_others_take_its_batches() {
        let t0 = Instant::now();
        let mut targets = Targets::new(
            vec![("a".to_owned(), None), ("b".to_owned(), None)],
            1,
            Backoff::from_millis(1000, 30_000),
        );
        let Choice::Now(first) = targets.choose(t0) else {
            panic!("an unpaced target is ready at once")
        };
        targets.sent(
            first,
            CallSize {
                records: 1,
                bytes: 1,
            },
            t0,
        );
        let t1 = t0 + Duration::from_millis(10);
        targets.returned(
            first,
            CallReport {
                retry: true,
                ..ok(t0, false)
            },
            t1,
        );
        // The other one is chosen, again and again, while the failed one waits.
        for _ in 0..5 {
            let Choice::Now(i) = targets.choose(t1) else {
                panic!("the healthy target is ready")
            };
            assert_ne!(i, first);
            targets.sent(
                i,
                CallSize {
                    records: 1,
                    bytes: 1,
                },
                t1,
            );
            targets.returned(i, ok(t1, false), t1);
        }
        // Both failing: wait for the earliest retry, never spin.
        let other = 1 - first;
        targets.sent(
            other,
            CallSize {
                records: 1,
                bytes: 1,
            },
            t1,
        );
        targets.returned(
            other,
            CallReport {
                config_error: true,
                ..ok(t1, false)
            },
            t1,
        );
        match targets.choose(t1) {
            Choice::At(at) => {
                assert!(at > t1 && at <= t1 + Duration::from_millis(1000));
                assert_eq!(targets.backing_off(other, t1), Duration::from_secs(30));
            }
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn calls_in_flight_are_limited_per_stream() {
        let t0 = Instant::now();
        let mut targets = Targets::new(
            vec![("a".to_owned(), None), ("b".to_owned(), None)],
            2,
            Backoff::from_millis(1, 10),
        );
        let mut per = [0usize; 2];
        for _ in 0..4 {
            let Choice::Now(i) = targets.choose(t0) else {
                panic!("room in flight")
            };
            targets.sent(
                i,
                CallSize {
                    records: 1,
                    bytes: 1,
                },
                t0,
            );
            per[i] += 1;
        }
        assert_eq!(per, [2, 2]);
        assert_eq!(targets.choose(t0), Choice::Busy);
        targets.returned(0, ok(t0, false), t0);
        assert_eq!(targets.choose(t0), Choice::Now(0));
    }
}
