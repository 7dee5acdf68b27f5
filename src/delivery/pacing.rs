//! Pacing one delivery stream to the quota Firehose enforces on it, instead of finding the
//! quota by being throttled.
//!
//! A Direct PUT stream takes so many requests, records and bytes per second (see
//! [`crate::firehose_limits`]); above that every call is throttled. A [`Pacer`] keeps one
//! token bucket per dimension and lets a call go only when all three hold its cost, counted as
//! Firehose counts it (one request, its records, its bytes before base64).
//!
//! Several replicas share one stream's quota and know nothing of each other, so each paces
//! itself to a *share* of the quota, adapted as TCP adapts its congestion window: the share
//! grows while the stream has a backlog and calls pass, and shrinks multiplicatively on every
//! throttled call. What keeps this quiet at any number of replicas is the unit of growth: the
//! share grows by about a fixed fraction of itself per call it sends (per second, in
//! proportion to share², see [`Pacer::growth`]), not by a fixed fraction of the whole quota.
//! Each replica then needs about the same number of its own calls to regain a cut, so the
//! calls throttled per call sent grow only slowly with the number of replicas: N replicas
//! together add about 1/N as much per second as one does, instead of N times as much.
//! (Scalable TCP and TCP Reno's per-ACK increase scale their increase to the window for the
//! same reason.) A lone replica paces at the whole quota and is then never throttled.
//! [`sim`] runs replicas against a model of Firehose's meter: the tests and the scale example
//! measure the policy with it.
//!
//! Why growth in share² alone is not enough, and what the log term buys: each replica sees only
//! its own calls, and a shared overload's throttles fall on calls, so a replica at share s is
//! cut c·s about p·s ÷ [`SLICE`] times a second (p the throttled fraction of calls, the same for
//! all). Its decrease goes as s²; with growth as s² too, every split of the quota is an
//! equilibrium, and the luck of which calls met an empty bucket walks the shares apart for good
//! (two replicas starting together ended at 1.97 and 0.03 of their fair share). Shares are
//! pulled together only if growth rises more slowly than s²; but then N replicas at 1/N
//! need more throttles to balance it, and p rises with N: so it goes, in this model, for any
//! rule that knows only its own share. The growth here, s²·(a − b·ln s), makes p rise with ln N only:
//! ~0.5 % at 2 replicas, ~1.2 % at 16, ~1.7 % at 64 and 128, and gives small shares a pull
//! back that does not fade as N grows. The pull is still slow where each replica meets a
//! throttle only every tens of seconds, so the start matters: see [`START`].
//!
//! Time is passed in, so the policy is tested without a runtime or a clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::firehose_limits::DirectPutQuota;

pub mod sim;

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

/// Multiplicative decrease: the share kept after **each** throttled call. Every throttled call
/// counts, so the cut follows how deep the overload is (as DCTCP scales its cut to the
/// fraction of marked packets): a slight overshoot costs one call and a tenth of the share, a
/// deep one (a neighbour starting, the real quota halved) a tenth per refused call until the
/// calls pass. A replica with a larger share sends more of the calls that meet an empty
/// bucket, so it shrinks more than a smaller one.
pub const DECREASE: f64 = 0.9;

/// Growth while backlogged and not throttled, per second, the part in share²: the share grows
/// by a fixed fraction of itself *per call* (calls are one [`SLICE`] of the whole quota, so a
/// replica sends share ÷ [`SLICE`] calls a second), whatever the number of replicas sharing
/// the stream. (An increase in units of the whole quota, as before ac3de29, made N replicas
/// add N times as much: at 16 replicas 80 % of the quota a second, and one call in five
/// throttled.)
pub const GROWTH: f64 = 0.027;

/// Growth per second, the part in −share²·ln(share): the smaller the share, the more it gains
/// per call, which pulls unequal shares together (see the module's comment). With [`GROWTH`],
/// a lone replica at half the quota regains the whole in ~11 s and one at the whole quota
/// regains a cut in ~4 s.
pub const GROWTH_LOG: f64 = 0.034;

/// A replica's first seconds: every replica that starts at once finds the stream deep in
/// overload (each paces at the whole quota until told otherwise), and were every throttled call
/// a cut, a replica's cut would be the luck of how many of its calls met an empty bucket,
/// which at 64 replicas left shares 0.3 to 5 times their fair one. So for this long a
/// throttled call sent before the last cut is no new cut (once per round of calls, as TCP's
/// loss response): the cuts then follow the rounds, alike for every replica. After it, every
/// throttled call counts (see [`DECREASE`]).
pub const START: Duration = Duration::from_secs(10);

/// The smallest share: a stream keeps moving, however often it is throttled (at 1 MiB/s, one
/// call of a [`SLICE`] every 10 s). Small, because the floors of every replica on a stream add
/// up: at 1 % (as before) 100 replicas at the floor already asked for the whole quota, and 128
/// of them were throttled on 30 % of their calls, 256 on 59 %, however they adapted; at 0.1 %
/// they take 1.7 % and 4.5 %, and the floors fill a stream only at 1,000 replicas.
pub const MIN_SHARE: f64 = 0.001;

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

/// Paces one delivery stream: three token buckets and the adapted share.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// The stream's quota per second: requests, records, bytes.
    quota: [f64; 3],
    /// The fraction of the quota this process takes, in `MIN_SHARE..=1`.
    share: f64,
    tokens: [f64; 3],
    refilled: Instant,
    /// When an increase was last counted, or the share last shrank: growth restarts then.
    increased: Instant,
    /// When the pacer was made: [`START`] runs from then.
    made: Instant,
    /// When the share was last cut.
    cut: Option<Instant>,
    /// The share at the last call that passed.
    held: f64,
    /// The share to regain at once after the stream refused everything down to the floor.
    regain: Option<f64>,
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
            increased: now,
            made: now,
            cut: None,
            held: 1.0,
            regain: None,
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

    /// Firehose throttled a call (sent at `sent_at`): the share shrinks by [`DECREASE`].
    /// Every throttled call counts, those already in flight when the share shrank too: each
    /// is one more call the stream could not take — except in the pacer's first [`START`],
    /// when a call sent before the last cut is answered by that cut. Returns whether the pacer
    /// slowed the stream for it (false at the floor: nothing left to cut).
    pub fn throttled(&mut self, sent_at: Instant, now: Instant) -> bool {
        self.refill(now);
        let starting = now.saturating_duration_since(self.made) < START;
        if starting && self.cut.is_some_and(|cut| sent_at < cut) {
            self.increased = now;
            return self.share > MIN_SHARE;
        }
        self.cut = Some(now);
        let before = self.share;
        if before <= MIN_SHARE {
            // Refused at the floor: not a share too large but a stream refusing everything (a
            // brown-out). Once calls pass again, the share they passed at is regained at once.
            self.regain.get_or_insert(self.held);
        } else {
            self.regain = None;
        }
        self.share = (self.share * DECREASE).max(MIN_SHARE);
        for i in [REQUESTS, RECORDS, BYTES] {
            self.tokens[i] = self.tokens[i].min(self.depth(i));
        }
        self.increased = now;
        self.share < before
    }

    /// A call went through unthrottled. While the stream is `backlogged` (its calls are as
    /// large as pacing allows, so the pacer is what holds it back) the share grows with the
    /// time since the last increase, at [`Pacer::growth`]; an idle stream has no evidence that
    /// more would pass.
    pub fn accepted(&mut self, backlogged: bool, now: Instant) {
        self.refill(now);
        let gap = now
            .saturating_duration_since(self.increased)
            .min(MAX_INCREASE_GAP);
        self.increased = now;
        if backlogged {
            let gap = gap.as_secs_f64();
            self.share = match self.regain {
                // After a brown-out: doubling every second up to the share held before it
                // (as TCP slow-starts to its threshold after a timeout). The growth law alone
                // would take an hour from the floor: it reads a share that small as a
                // thousand replicas sharing the stream.
                Some(target) if self.share < target => (self.share * gap.exp2()).min(target),
                _ => {
                    self.regain = None;
                    (self.share + Pacer::growth(self.share) * gap).min(1.0)
                }
            };
        }
        self.held = self.share;
    }

    /// The share gained per second at `share` while backlogged: share² × ([`GROWTH`] −
    /// [`GROWTH_LOG`] × ln share).
    pub fn growth(share: f64) -> f64 {
        share * share * (GROWTH - GROWTH_LOG * share.ln())
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
    fn every_throttled_call_shrinks_the_share_down_to_the_floor() {
        let made = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, made);
        // Past its start (see the next test).
        let t0 = made + START;
        let t1 = t0 + Duration::from_millis(100);
        assert!(pacer.throttled(t0, t1));
        assert!((pacer.share() - DECREASE).abs() < 1e-9);
        // Four more calls in flight come back throttled: four more calls the stream could not
        // take, each a cut (a deep overload is cut deeply).
        for _ in 0..4 {
            assert!(pacer.throttled(t0, t1 + Duration::from_millis(5)));
        }
        assert!((pacer.share() - DECREASE.powi(5)).abs() < 1e-9);
        // Never below the floor.
        let mut t = t1;
        for _ in 0..200 {
            t += Duration::from_millis(1);
            pacer.throttled(t, t);
        }
        assert!((pacer.share() - MIN_SHARE).abs() < 1e-9);
        assert!(!pacer.throttled(t, t), "at the floor: no change");
    }

    #[test]
    fn in_its_first_seconds_a_pacer_cuts_once_per_round_of_calls() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        let t1 = t0 + Duration::from_millis(50);
        assert!(pacer.throttled(t0, t1));
        // Calls sent before that cut come back throttled: answered by it, no new cut.
        for k in 1..=5 {
            assert!(pacer.throttled(t0 + Duration::from_millis(k), t1 + Duration::from_millis(k)));
        }
        assert!((pacer.share() - DECREASE).abs() < 1e-9);
        // A call sent after it is a new round.
        let t2 = t1 + Duration::from_millis(60);
        assert!(pacer.throttled(t1 + Duration::from_millis(10), t2));
        assert!((pacer.share() - DECREASE * DECREASE).abs() < 1e-9);
        // After START every throttled call counts again.
        let late = t0 + START;
        pacer.throttled(late, late);
        pacer.throttled(
            late - Duration::from_millis(1),
            late + Duration::from_millis(1),
        );
        assert!((pacer.share() - DECREASE.powi(4)).abs() < 1e-9);
    }

    #[test]
    fn the_share_grows_about_with_its_square_only_while_backlogged() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        pacer.throttled(t0, t0);
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_millis(100);
            pacer.accepted(false, t);
        }
        assert!((pacer.share() - DECREASE).abs() < 1e-9, "idle: no growth");
        let before = pacer.share();
        for _ in 0..10 {
            t += Duration::from_millis(100);
            pacer.accepted(true, t);
        }
        // One second's growth (a little more: the share compounds over the ten steps).
        let grown = before + Pacer::growth(before);
        assert!((pacer.share() - grown).abs() < 0.005, "{}", pacer.share());
        // A long quiet gap counts as one second at most.
        let before = pacer.share();
        t += Duration::from_secs(3600);
        pacer.accepted(true, t);
        assert!((pacer.share() - (before + Pacer::growth(before))).abs() < 1e-9);
        // A share a sixteenth as large grows slower per second, so that 16 replicas do not add
        // 16 times what one does (~57 times slower: together they add ~1/3.6 of what one
        // does), but faster per call it sends (~4.5 times): it regains a cut in fewer of its
        // own calls, which pulls small shares up to the others.
        let (whole, sixteenth) = (Pacer::growth(1.0), Pacer::growth(1.0 / 16.0));
        assert!(
            (40.0..=80.0).contains(&(whole / sixteenth)),
            "{whole} {sixteenth}"
        );
        let per_call = |share: f64| Pacer::growth(share) / (share * share);
        assert!(per_call(1.0 / 16.0) > 4.0 * per_call(1.0));
        for _ in 0..100 {
            t += Duration::from_secs(1);
            pacer.accepted(true, t);
        }
        assert_eq!(pacer.share(), 1.0, "never above the quota");
    }

    /// N replicas, each with its own pacer, start together on one stream whose quota is the
    /// one they are told, against a model of Firehose's meter: once converged (after two
    /// minutes), they use the quota and few calls are throttled, whatever N, for each of three
    /// seeds (latencies and back-off jitter) — up to 128 replicas, more than the 100 at which
    /// the old 1 % floor alone asked for the whole quota (30 % of their calls were throttled).
    #[test]
    fn replicas_sharing_a_stream_are_rarely_throttled_and_use_the_quota() {
        for replicas in [1, 2, 4, 16, 64, 128] {
            for seed in 1..=3 {
                let mut scenario = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, replicas, 300);
                scenario.seed = seed;
                let s = scenario.run().summary(120, 300);
                assert_eq!(s.replicas, replicas);
                assert!(
                    s.delivered >= 0.90,
                    "{replicas} replicas, seed {seed}: together {:.3} of the quota",
                    s.delivered
                );
                assert!(
                    s.throttled <= 0.02,
                    "{replicas} replicas, seed {seed}: {:.2} % of {} calls throttled",
                    100.0 * s.throttled,
                    s.calls
                );
            }
        }
    }

    /// Two or four replicas starting together each end with at least half their fair share,
    /// for each of ten seeds. (With growth in share² alone and a back-off on every throttle,
    /// one of two replicas ended below half on 11 of 20 seeds, at 0.03 on two.) At 16 and more
    /// replicas this does not hold for every seed: see the module's comment.
    #[test]
    fn two_or_four_replicas_each_get_at_least_half_their_fair_share() {
        for replicas in [2, 4] {
            for seed in 1..=10 {
                let mut scenario = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, replicas, 300);
                scenario.seed = seed;
                let s = scenario.run().summary(120, 300);
                assert!(
                    s.spread.0 >= 0.5,
                    "{replicas} replicas, seed {seed}: shares {:.2} to {:.2} of fair",
                    s.spread.0,
                    s.spread.1
                );
            }
        }
    }

    /// The case of the issue: one replica told the whole quota, Firehose granting it a
    /// sixteenth (or a sixty-fourth) of it, as one of that many replicas would get.
    #[test]
    fn a_replica_granted_a_fraction_of_its_quota_is_rarely_throttled() {
        for fraction in [1.0 / 16.0, 1.0 / 64.0] {
            let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 1, 180)
                .real_from(Duration::ZERO, fraction)
                .run();
            let s = run.summary(60, 180);
            assert!(s.delivered >= 0.90, "1/{}: {s:?}", 1.0 / fraction);
            assert!(s.throttled <= 0.02, "1/{}: {s:?}", 1.0 / fraction);
        }
    }

    /// A replica that starts while the others already share the stream (a scale-out): it
    /// starts at the whole quota, is cut down to its share within seconds, holds at least half
    /// of it from then on, and the stream stays quiet.
    #[test]
    fn a_late_replica_reaches_its_share_within_30_seconds() {
        for replicas in [2, 4, 16, 64] {
            let late = Duration::from_secs(120);
            let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, replicas, 240)
                .late_start(late)
                .run();
            let reached = run.reached_share(replicas - 1, 120, 10, 0.5);
            assert!(
                reached.is_some_and(|s| s <= 30),
                "{replicas} replicas: the late one reached half its share after {reached:?} s"
            );
            let s = run.summary(150, 240);
            assert!(s.delivered >= 0.90, "{replicas} replicas: {s:?}");
            assert!(s.throttled <= 0.02, "{replicas} replicas: {s:?}");
        }
    }

    /// Firehose refuses every call for two minutes (a brown-out: the share falls to the floor,
    /// and the back-off takes over there), then takes them again: a lone replica has its whole
    /// quota back within 45 s (at most 30 s of back-off, then the share doubles every second),
    /// not after the hour the growth law alone would take from the floor.
    #[test]
    fn after_a_brown_out_the_share_it_held_is_regained_at_once() {
        let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 1, 300)
            .real_from(Duration::from_secs(60), 0.000_1)
            .real_from(Duration::from_secs(180), 1.0)
            .run();
        assert!(
            run.shares[0][170] <= 2.0 * MIN_SHARE,
            "refused throughout: {}",
            run.shares[0][170]
        );
        let back = (180..290).find(|&t| run.summary(t, t + 10).delivered >= 0.9);
        assert!(
            back.is_some_and(|t| t <= 180 + 45),
            "back at 90 % of the quota at second {back:?}"
        );
    }

    /// The real quota halves (a neighbour starts sharing it) and is later restored: the drop
    /// is followed within seconds, and a lone replica regains the whole quota.
    #[test]
    fn the_real_quota_halved_then_restored_is_followed() {
        let halved = Duration::from_secs(30);
        let restored = Duration::from_secs(60);
        let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 1, 120)
            .real_from(halved, 0.5)
            .real_from(restored, 1.0)
            .run();
        let share_at = |s: usize| run.shares[0][s];
        assert!(share_at(33) <= 0.6, "not followed: {}", share_at(33));
        let half = run.summary(35, 60);
        assert!(half.delivered >= 0.90 && half.throttled <= 0.02, "{half:?}");
        let again = run.summary(85, 120);
        assert!(
            again.delivered >= 0.90 && again.throttled <= 0.02,
            "{again:?}"
        );
        // Four replicas follow a drop too.
        let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 4, 150)
            .real_from(Duration::from_secs(90), 0.5)
            .run();
        let sum: f64 = (0..4).map(|r| run.shares[r][94]).sum();
        assert!(sum <= 0.6, "together {sum:.2} of the quota after the drop");
        let half = run.summary(100, 150);
        assert!(half.delivered >= 0.90 && half.throttled <= 0.02, "{half:?}");
    }
}
