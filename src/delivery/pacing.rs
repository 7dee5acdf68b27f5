//! Pacing one delivery stream to the quota Firehose enforces on it, instead of finding the
//! quota by being throttled.
//!
//! A Direct PUT stream takes so many requests, records and bytes per second (see
//! [`crate::firehose_limits`]); above that every call is throttled. A [`Pacer`] keeps one
//! token bucket per dimension and lets a call go only when all three hold its cost, counted as
//! Firehose counts it (one request, its records, its bytes before base64).
//!
//! Several replicas share one stream's quota and know nothing of each other, so each paces
//! itself to a *share* of the quota, adapted AIMD-style (as TCP's congestion window, or Vector's
//! adaptive request concurrency): the share grows additively while the stream has a backlog and
//! calls succeed, and shrinks multiplicatively when Firehose throttles. Replicas that shrink on
//! the same overload and grow at the same pace converge to equal shares whose sum hovers just
//! under the quota (Chiu and Jain, 1989), with no configuration. A lone replica paces at the
//! whole quota and is then never throttled.
//!
//! Time is passed in, so the policy is tested without a runtime or a clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::firehose_limits::DirectPutQuota;

/// The largest call: what the quota carries in this long (a bucket holds two, so that a call
/// smaller than the largest, and the timer's rounding, cost no throughput). Short, so a call
/// never bursts far above the rate (Firehose meters per second) and a backlogged stream sends
/// many small calls rather than a few large ones: a throttle then costs one small call, and the
/// controller hears about an overload sooner (a throttled call's records wait out a back-off).
/// 10 ms of 1 MiB/s is ~10 KiB a call, at most 100 calls/s: a tenth of the 1,000 requests/s
/// quota, and calls are not billed (records are, by 5 KB: the flusher packs records to
/// multiples of that).
pub const SLICE: Duration = Duration::from_millis(10);

/// Calls in flight a paced stream may have, whatever `flusher.max_in_flight` says (that limit
/// is for unpaced streams, where nothing else bounds the rate). At the quota's rate a call
/// leaves every [`SLICE`], so reaching the quota takes one call in flight per slice of
/// Firehose's latency: 32 covers answers of up to ~300 ms. The pacer, not this, holds the rate.
pub const MAX_IN_FLIGHT: usize = 32;

/// Multiplicative decrease: the share kept after a throttle. The dip it makes is short (the
/// group regrows within ~2 s and then runs over the quota until Firehose's own burst
/// allowance is spent), so a deeper cut costs little throughput and makes replicas of unequal
/// shares converge faster: each cut narrows the gap between them by a fifth. (TCP's 0.5 would
/// leave much of each cycle below the quota.)
pub const DECREASE: f64 = 0.8;

/// Additive increase: share of the quota gained per second while backlogged and not
/// throttled. Two replicas regain a cut of 20 % in ~2 s.
pub const INCREASE_PER_SEC: f64 = 0.05;

/// The smallest share: a stream keeps moving, however often it is throttled.
pub const MIN_SHARE: f64 = 0.01;

/// Longest gap between two calls that counts towards one increase, so a call after a quiet
/// hour does not jump the share to the whole quota at once.
const MAX_INCREASE_GAP: Duration = Duration::from_secs(1);

/// Dimensions of a call's cost, in bucket order.
const REQUESTS: usize = 0;
const RECORDS: usize = 1;
const BYTES: usize = 2;

/// The size of one call, as Firehose meters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSize {
    /// Records in the call.
    pub records: usize,
    /// Bytes of the records, before base64.
    pub bytes: usize,
}

impl CallSize {
    fn cost(self) -> [f64; 3] {
        [1.0, self.records as f64, self.bytes as f64]
    }
}

/// Paces one delivery stream: three token buckets and the AIMD share.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// The stream's quota per second: requests, records, bytes.
    quota: [f64; 3],
    /// The fraction of the quota this process takes, in `MIN_SHARE..=1`.
    share: f64,
    tokens: [f64; 3],
    refilled: Instant,
    /// When the share last shrank: throttles of calls sent before that were answers to the
    /// same overload, and must not shrink it again.
    decreased: Option<Instant>,
    /// When an increase was last counted.
    increased: Instant,
}

impl Pacer {
    /// A pacer at the whole of `quota`, its buckets full.
    pub fn new(quota: DirectPutQuota, now: Instant) -> Pacer {
        let quota = [
            quota.requests_per_sec as f64,
            quota.records_per_sec as f64,
            quota.bytes_per_sec as f64,
        ];
        let mut pacer = Pacer {
            quota,
            share: 1.0,
            tokens: [0.0; 3],
            refilled: now,
            decreased: None,
            increased: now,
        };
        pacer.tokens = [0, 1, 2].map(|i| pacer.depth(i));
        pacer
    }

    /// The fraction of the quota this pacer sends at now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The largest call to build: one [`SLICE`] of the quota (at least one record of one byte; a
    /// single line larger than a bucket still goes, alone, when the bucket is full).
    pub fn max_call(&self) -> CallSize {
        CallSize {
            records: self.call(RECORDS) as usize,
            bytes: self.call(BYTES) as usize,
        }
    }

    /// When a call of `size` may go: `now` if the buckets hold its cost. A call larger than the
    /// largest waits for that much and then takes the bucket into debt, which later calls wait
    /// out, so the average rate holds whatever the sizes.
    pub fn ready_at(&mut self, size: CallSize, now: Instant) -> Instant {
        self.refill(now);
        let cost = size.cost();
        let mut wait: f64 = 0.0;
        for i in [REQUESTS, RECORDS, BYTES] {
            let need = cost[i].min(self.call(i));
            // A hair of tolerance: refilling at the computed instant may fall a rounding
            // error short, and the caller must not wake, find it short, and sleep again.
            let short = need - self.tokens[i] - need * 1e-9;
            if short > 0.0 {
                wait = wait.max(short / self.rate(i));
            }
        }
        if wait <= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(wait)
        }
    }

    /// Takes the cost of a call that is being sent.
    pub fn take(&mut self, size: CallSize, now: Instant) {
        self.refill(now);
        let cost = size.cost();
        for i in [REQUESTS, RECORDS, BYTES] {
            self.tokens[i] -= cost[i];
        }
    }

    /// Firehose throttled a call sent at `sent_at`: shrink the share, once per overload.
    /// Returns whether it shrank.
    pub fn throttled(&mut self, sent_at: Instant, now: Instant) -> bool {
        if self.decreased.is_some_and(|d| sent_at < d) {
            return false;
        }
        self.refill(now);
        self.share = (self.share * DECREASE).max(MIN_SHARE);
        for i in [REQUESTS, RECORDS, BYTES] {
            self.tokens[i] = self.tokens[i].min(self.depth(i));
        }
        self.decreased = Some(now);
        self.increased = now;
        true
    }

    /// A call went through unthrottled. While the stream is `backlogged` (its calls are as
    /// large as pacing allows, so the pacer is what holds it back) the share grows with the
    /// time since the last increase; an idle stream has no evidence that more would pass.
    pub fn accepted(&mut self, backlogged: bool, now: Instant) {
        self.refill(now);
        let gap = now
            .saturating_duration_since(self.increased)
            .min(MAX_INCREASE_GAP);
        self.increased = now;
        if backlogged {
            self.share = (self.share + INCREASE_PER_SEC * gap.as_secs_f64()).min(1.0);
        }
    }

    fn rate(&self, i: usize) -> f64 {
        self.quota[i] * self.share
    }

    /// The largest call in dimension `i`: one slice of the whole quota (never less than one
    /// unit), whatever the share. Calls are then the same size in every replica, and the share
    /// sets how often they go: a replica with a larger share sends more calls, so more of the
    /// throttles of a shared overload fall on it and it shrinks more. (Were calls sized to the
    /// share, the larger replica's calls would take each refill of Firehose's bucket first and
    /// the smaller's would meet an empty one: it would starve.)
    fn call(&self, i: usize) -> f64 {
        (self.quota[i] * self.slice_secs()).max(1.0)
    }

    /// A bucket's capacity: two of the largest calls. A call waits until its bucket holds the
    /// largest call; what it leaves, and what accrues while the timer rounds up, stays for
    /// the next, so the rate is the paced one however the calls' sizes fall.
    fn depth(&self, i: usize) -> f64 {
        2.0 * self.call(i)
    }

    /// [`SLICE`], or longer when the request quota is so low that a slice would not hold two
    /// calls: calls must then be larger for the byte and record quotas to be reachable at all.
    fn slice_secs(&self) -> f64 {
        SLICE.as_secs_f64().max(2.0 / self.quota[REQUESTS].max(1.0))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        for i in [REQUESTS, RECORDS, BYTES] {
            self.tokens[i] = (self.tokens[i] + self.rate(i) * elapsed).min(self.depth(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firehose_limits::{DIRECT_PUT_QUOTA_DEFAULT, DIRECT_PUT_QUOTA_LARGE};

    const MIB: usize = 1 << 20;

    /// Sends calls of `size` as fast as the pacer allows for `secs` of simulated time, and
    /// returns every send time.
    fn saturate(pacer: &mut Pacer, size: CallSize, start: Instant, secs: f64) -> Vec<Instant> {
        let end = start + Duration::from_secs_f64(secs);
        let mut now = start;
        let mut sent = Vec::new();
        loop {
            now = pacer.ready_at(size, now);
            if now >= end {
                return sent;
            }
            pacer.take(size, now);
            sent.push(now);
        }
    }

    /// The most any window of `window` saw, in each dimension.
    fn worst_window(sent: &[Instant], size: CallSize, window: Duration) -> [f64; 3] {
        let mut worst = [0.0; 3];
        let mut first = 0;
        for last in 0..sent.len() {
            while sent[last] - sent[first] >= window {
                first += 1;
            }
            let calls = (last - first + 1) as f64;
            let cost = size.cost();
            for i in 0..3 {
                worst[i] = f64::max(worst[i], calls * cost[i]);
            }
        }
        worst
    }

    #[test]
    fn the_pacer_never_exceeds_the_quota_over_a_window() {
        let start = Instant::now();
        // Byte-bound, record-bound and request-bound loads, in both quota classes.
        for quota in [DIRECT_PUT_QUOTA_DEFAULT, DIRECT_PUT_QUOTA_LARGE] {
            for size in [
                CallSize {
                    records: 10,
                    bytes: 40_000,
                },
                CallSize {
                    records: 500,
                    bytes: 500,
                },
                CallSize {
                    records: 1,
                    bytes: 10,
                },
                // Larger than a bucket: goes alone, in debt.
                CallSize {
                    records: 1,
                    bytes: MIB,
                },
            ] {
                let mut pacer = Pacer::new(quota, start);
                let sent = saturate(&mut pacer, size, start, 20.0);
                let limits = [
                    quota.requests_per_sec as f64,
                    quota.records_per_sec as f64,
                    quota.bytes_per_sec as f64,
                ];
                let worst = worst_window(&sent, size, Duration::from_secs(1));
                let cost = size.cost();
                for i in 0..3 {
                    // Over any second: the quota, plus the two slices the bucket starts with
                    // (or one call, when a call is larger than that).
                    let slack = (2.0 * limits[i] * SLICE.as_secs_f64()).max(cost[i]);
                    assert!(
                        worst[i] <= limits[i] + slack,
                        "{quota:?} {size:?} dimension {i}: {} in one second",
                        worst[i]
                    );
                }
                // And it does use the quota: the binding dimension runs at ≥ 99 %.
                let rate = (0..3)
                    .map(|i| sent.len() as f64 * cost[i] / 20.0 / limits[i])
                    .fold(0.0, f64::max);
                assert!(
                    rate >= 0.99,
                    "{quota:?} {size:?}: only {rate:.3} of the quota"
                );
            }
        }
    }

    #[test]
    fn max_call_is_one_slice_of_the_quota() {
        let now = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, now);
        let slice = SLICE.as_secs_f64();
        let expected = CallSize {
            records: (100_000.0 * slice) as usize,
            bytes: (MIB as f64 * slice) as usize,
        };
        assert_eq!(pacer.max_call(), expected);
        pacer.throttled(now, now);
        assert_eq!(
            pacer.max_call(),
            expected,
            "the share sets how often, not how much"
        );
    }

    #[test]
    fn a_throttle_shrinks_the_share_once_per_overload() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        let t1 = t0 + Duration::from_millis(100);
        assert!(pacer.throttled(t0, t1));
        assert!((pacer.share() - DECREASE).abs() < 1e-9);
        // Four more calls sent before the decrease come back throttled: the same overload.
        for _ in 0..4 {
            assert!(!pacer.throttled(t0, t1 + Duration::from_millis(5)));
        }
        assert!((pacer.share() - DECREASE).abs() < 1e-9);
        // A call sent after the decrease, throttled too: the new rate is still too much.
        let t2 = t1 + Duration::from_millis(10);
        assert!(pacer.throttled(t2, t2 + Duration::from_millis(50)));
        assert!((pacer.share() - DECREASE * DECREASE).abs() < 1e-9);
        // Never below the floor.
        let mut t = t2;
        for _ in 0..200 {
            t += Duration::from_millis(1);
            pacer.throttled(t, t);
        }
        assert!((pacer.share() - MIN_SHARE).abs() < 1e-9);
    }

    #[test]
    fn the_share_grows_additively_only_while_backlogged() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        pacer.throttled(t0, t0);
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_millis(100);
            pacer.accepted(false, t);
        }
        assert!((pacer.share() - DECREASE).abs() < 1e-9, "idle: no growth");
        for _ in 0..10 {
            t += Duration::from_millis(100);
            pacer.accepted(true, t);
        }
        let grown = DECREASE + INCREASE_PER_SEC;
        assert!((pacer.share() - grown).abs() < 1e-6, "{}", pacer.share());
        // A long quiet gap counts as one second at most.
        t += Duration::from_secs(3600);
        pacer.accepted(true, t);
        assert!((pacer.share() - (grown + INCREASE_PER_SEC)).abs() < 1e-6);
        for _ in 0..100 {
            t += Duration::from_secs(1);
            pacer.accepted(true, t);
        }
        assert_eq!(pacer.share(), 1.0, "never above the quota");
    }

    /// Two replicas on one stream, each with its own pacer and no knowledge of the other,
    /// against a model of Firehose's meter (a one-second bucket of the quota): both converge
    /// to about half, the sum stays near the quota, and few calls are throttled.
    #[test]
    fn two_replicas_converge_to_shares_of_one_quota() {
        let quota = DIRECT_PUT_QUOTA_DEFAULT;
        let t0 = Instant::now();
        let mut replicas = [Pacer::new(quota, t0), Pacer::new(quota, t0)];
        // The second starts late, with a smaller share, as after a scale-out.
        replicas[1].share = 0.2;
        let limit = quota.bytes_per_sec as f64;
        let (mut meter, mut metered) = (limit, t0);
        let mut next = [t0, t0 + Duration::from_millis(7)];
        let (mut delivered, mut calls, mut throttled) = ([0f64; 2], 0u32, 0u32);
        let seconds = 120.0;
        let measure_from = t0 + Duration::from_secs(60);
        let end = t0 + Duration::from_secs_f64(seconds);
        loop {
            // The replica that can send first sends, so events happen in time order.
            let ready = [0, 1].map(|r| {
                let size = replicas[r].max_call();
                replicas[r].ready_at(size, next[r])
            });
            let r = if ready[0] <= ready[1] { 0 } else { 1 };
            let (size, now) = (replicas[r].max_call(), ready[r]);
            if now >= end {
                break;
            }
            replicas[r].take(size, now);
            meter = (meter + limit * (now - metered).as_secs_f64()).min(limit);
            metered = now;
            let answered = now + Duration::from_millis(20);
            let counted = now >= measure_from;
            if meter >= size.bytes as f64 {
                meter -= size.bytes as f64;
                replicas[r].accepted(true, answered);
                if counted {
                    delivered[r] += size.bytes as f64;
                }
            } else {
                replicas[r].throttled(now, answered);
                if counted {
                    throttled += 1;
                }
            }
            if counted {
                calls += 1;
            }
            next[r] = now;
        }
        let window = seconds - 60.0;
        let shares = delivered.map(|d| d / window / limit);
        let total = shares[0] + shares[1];
        assert!(total >= 0.90, "together {total:.3} of the quota");
        for s in shares {
            assert!(s >= 0.35, "a replica starved: {shares:?}");
        }
        let throttle_rate = throttled as f64 / calls as f64;
        eprintln!("shares {shares:?}, together {total:.3}, {throttled} of {calls} throttled");
        assert!(
            throttle_rate <= 0.01,
            "{throttled} of {calls} calls throttled"
        );
    }
}
