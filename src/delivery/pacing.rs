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
//! grows while the stream has a backlog and calls pass, and is cut on a throttled call (once
//! per round of calls: see [`Pacer::throttled`]). A lone replica paces at the whole quota and
//! is then never throttled. [`sim`] runs replicas against a model of Firehose's meter: the
//! tests and the scale example measure the policy with it.
//!
//! **How the growth is set.** Each replica sees only its own calls, and a shared overload's
//! throttles fall on calls: a replica at share s sends s ÷ [`SLICE`] calls a second, a fraction
//! p of them is throttled (p the same for every replica on the stream), and each cuts
//! [`Pacer::cut`]`(s)` of its share. Its share shrinks by cut(s)·s²·p ÷ SLICE a second. It
//! grows by [`Pacer::growth`]`(s)` = cut(s)·s²·aim(s) ÷ SLICE: what it would lose were p equal
//! to [`AIM`]`(s)`. A replica therefore holds still where p = aim(s), and aim falls as the share
//! grows, so for one p there is one such share, the same for every replica: one above it is
//! cut more than it grows, one below grows more than it is cut. N replicas settle at 1/N each
//! with p = aim(1/N): [`AIM`] is the table of throttled calls by replica count. (Growth in
//! units of the whole quota, as before ac3de29, made N replicas add N times what one does: at
//! 16 replicas one call in five was throttled.)
//!
//! **Why the cut depends on the share.** What walks shares apart is luck: which calls met an
//! empty bucket. Each throttle moves a replica by one cut, so the spread luck leaves grows with
//! the size of a cut, and it is undone at the pace at which a replica meets throttles: many a
//! second where shares are large, one every ~30 s at 64 replicas. So cuts are deep where
//! shares are large (a fifth: a lone replica at half its quota regains the rest within
//! seconds, and a slight overshoot is answered at once) and shallow where they are small (3 %
//! at 1/32: at 64 replicas one cut must not move a share far, for the next throttle that moves
//! it back is half a minute away). How hard shares are pulled together is the slope of aim,
//! and its rise is bounded by what may be throttled at the most replicas: 0.95 % at 2 to
//! 1.7 % at 64 is the whole budget.
//!
//! **What this costs.** A replica learns of the stream only from its own calls, s ÷ [`SLICE`]
//! a second, and follows a change at the pace of cut(s) × s ÷ SLICE, while the spread luck
//! leaves grows with cut(s): at small shares neither can be bought without the other. Shares
//! that come down together (replicas starting at once, a quota halved) are pulled together by
//! the cut, deeper at larger shares. Shares that grow back (a scale-in, a quota restored) are
//! pushed apart by the growth, faster at larger shares, as it must be for aim to stay under
//! 2 % at any count, and only the slope of aim pulls them together again, over tens of
//! minutes at 8 replicas or more (the README's Scaling section has the figures).
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

/// The cut of one throttled call, the fraction of the share it removes, by share: (share,
/// cut) points between which it runs straight on log-log axes, flat beyond the ends. Deep at
/// large shares, shallow at small ones (see the module's comment).
pub const CUT: [(f64, f64); 3] = [(0.03, 0.03), (0.25, 0.07), (0.5, 0.2)];

/// The fraction of calls throttled at which a replica's growth balances its cuts, by share:
/// (share, fraction) points as for [`CUT`]. N replicas sharing a stream settle at 1/N each
/// with this fraction of their calls throttled; it falls as the share grows, which is what
/// pulls unequal shares together (see the module's comment). At the whole quota it is small
/// because only a lone replica gets there, and it is never throttled when its quota is the
/// one it is told; it still sets how fast a lone replica regains a cut (a twentieth of the
/// quota a second at the whole quota and at half of it).
pub const AIM: [(f64, f64); 6] = [
    (1.0 / 128.0, 0.018),
    (1.0 / 64.0, 0.017),
    (1.0 / 16.0, 0.015),
    (0.25, 0.0125),
    (0.5, 0.0095),
    (1.0, 0.0025),
];

/// The smallest share: a stream keeps moving, however often it is throttled (at 1 MiB/s, one
/// call of a [`SLICE`] every 10 s). Small, because the floors of every replica on a stream add
/// up: at 1 % (as before) 100 replicas at the floor already asked for the whole quota, and 128
/// of them were throttled on 30 % of their calls, 256 on 59 %, however they adapted; at 0.1 %
/// they take 1.7 % and 4.5 %, and the floors fill a stream only at 1,000 replicas.
pub const MIN_SHARE: f64 = 0.001;

/// A stream that has refused every call for this long is browning out, not overloaded by its
/// sharers: were it overloaded, some of a replica's calls would pass (at 1/128 of the quota,
/// 1.8 % throttled, a replica sends 23 calls in 30 s). The floor alone would say so late:
/// cuts are small at small shares (see [`CUT`]) and such a share sends a call a second or
/// less, so a stream refusing everything takes minutes to cut it to the floor.
pub const BROWN_OUT: Duration = Duration::from_secs(30);

/// How long a share must pass calls uncut to be the one regained after a brown-out. (A
/// replica starting among many passes its first calls at the whole quota, from the meter's
/// full bucket, and may then be refused for half a minute while it is cut to its share; the
/// whole quota is no share to return to.)
const HELD: Duration = Duration::from_secs(1);

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
    /// When the share was last cut.
    cut: Option<Instant>,
    /// When the share was last cut, or the pacer made.
    calm_from: Instant,
    /// The share at the last call that passed with the share uncut for [`HELD`] before it:
    /// one the stream took, not one it had yet to refuse.
    held: Option<f64>,
    /// When a call last passed.
    passed: Option<Instant>,
    /// The share to regain at once after a brown-out (see [`BROWN_OUT`]).
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
            cut: None,
            calm_from: now,
            held: None,
            passed: None,
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

    /// Firehose throttled a call (sent at `sent_at`): the share is cut by [`Pacer::cut`] —
    /// once per round of calls, as TCP answers a loss: a call sent before the last cut is
    /// answered by it. (Were every throttled call a cut, the calls a replica had in flight when
    /// a burst met an empty bucket would decide how far it fell, which at large shares left
    /// replicas starting together far apart.) Returns whether the pacer slowed the stream for
    /// it (false at the floor: nothing left to cut).
    pub fn throttled(&mut self, sent_at: Instant, now: Instant) -> bool {
        self.refill(now);
        if self.cut.is_some_and(|cut| sent_at < cut) {
            self.increased = now;
            return self.share > MIN_SHARE;
        }
        self.cut = Some(now);
        self.calm_from = now;
        let before = self.share;
        let refusing = self
            .passed
            .is_some_and(|at| now.saturating_duration_since(at) >= BROWN_OUT);
        if before <= MIN_SHARE || refusing {
            // Refused at the floor, or for long: not a share too large but a stream refusing
            // everything (a brown-out). Once calls pass again, the share they passed at is
            // regained at once.
            self.regain = self.regain.or(self.held);
        } else {
            self.regain = None;
        }
        self.share = (self.share * (1.0 - Pacer::cut(self.share))).max(MIN_SHARE);
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
                    (self.share + Pacer::growth(self.share) * self.slices() * gap).min(1.0)
                }
            };
        }
        if now.saturating_duration_since(self.calm_from) >= HELD {
            self.held = Some(self.share);
        }
        self.passed = Some(now);
    }

    /// The fraction of the share one throttled call removes at `share`: [`CUT`].
    pub fn cut(share: f64) -> f64 {
        along(&CUT, share)
    }

    /// The share gained per second at `share` while backlogged: cut(share) × share² ×
    /// aim(share) ÷ [`SLICE`], the loss a replica at that share meets when that fraction of
    /// its calls is throttled ([`AIM`]; see the module's comment). Calls longer than a slice
    /// (a low request quota) are fewer, and the growth is scaled down with them.
    pub fn growth(share: f64) -> f64 {
        Pacer::cut(share) * share * share * along(&AIM, share) / SLICE.as_secs_f64()
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

    /// [`SLICE`] ÷ the slice calls carry: 1 unless the request quota makes calls longer.
    fn slices(&self) -> f64 {
        SLICE.as_secs_f64() / self.slice_secs()
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        for i in [REQUESTS, RECORDS, BYTES] {
            self.tokens[i] = (self.tokens[i] + self.rate(i) * elapsed).min(self.depth(i));
        }
    }
}

/// `points` (x, y), sorted by x, joined by straight lines on log-log axes and flat beyond
/// the ends, at `x`. (Two tables of a few points: a crate for it would be more than the code.)
fn along(points: &[(f64, f64)], x: f64) -> f64 {
    let (first, last) = (points[0], points[points.len() - 1]);
    if x <= first.0 {
        return first.1;
    }
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x <= x1 {
            let t = (x / x0).ln() / (x1 / x0).ln();
            return y0 * (y1 / y0).powf(t);
        }
    }
    last.1
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
    fn a_throttle_cuts_once_per_round_of_calls_down_to_the_floor() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        let t1 = t0 + Duration::from_millis(50);
        assert!(pacer.throttled(t0, t1));
        let after_one = 1.0 - Pacer::cut(1.0);
        assert!((pacer.share() - after_one).abs() < 1e-9);
        // Calls sent before that cut come back throttled: answered by it, no new cut.
        for k in 1..=5 {
            let sent = t0 + Duration::from_millis(k);
            assert!(pacer.throttled(sent, t1 + Duration::from_millis(k)));
        }
        assert!((pacer.share() - after_one).abs() < 1e-9);
        // A call sent after it is a new round: cut again, by the cut at the share it has now.
        let t2 = t1 + Duration::from_millis(60);
        assert!(pacer.throttled(t1 + Duration::from_millis(10), t2));
        let after_two = after_one * (1.0 - Pacer::cut(after_one));
        assert!((pacer.share() - after_two).abs() < 1e-9);
        // Never below the floor.
        let mut t = t2;
        for _ in 0..2000 {
            t += Duration::from_millis(1);
            pacer.throttled(t, t);
        }
        assert!((pacer.share() - MIN_SHARE).abs() < 1e-9);
        assert!(!pacer.throttled(t, t), "at the floor: no change");
    }

    #[test]
    fn cuts_are_deep_at_large_shares_and_shallow_at_small_ones() {
        assert!((Pacer::cut(1.0) - 0.2).abs() < 1e-12);
        assert!((Pacer::cut(0.5) - 0.2).abs() < 1e-12);
        assert!((Pacer::cut(0.25) - 0.07).abs() < 1e-12);
        assert!((Pacer::cut(0.001) - 0.03).abs() < 1e-12);
        // Between the points, straight on log-log axes: the geometric mean halfway.
        let halfway = (0.25f64 * 0.5).sqrt();
        assert!((Pacer::cut(halfway) - (0.07f64 * 0.2).sqrt()).abs() < 1e-12);
        let shares: Vec<f64> = (0..=100)
            .map(|k| 0.001f64.powf(f64::from(k) / 100.0))
            .collect();
        for pair in shares.windows(2) {
            // From the whole quota down: never deeper as the share shrinks.
            assert!(Pacer::cut(pair[1]) <= Pacer::cut(pair[0]));
        }
    }

    #[test]
    fn the_share_grows_to_balance_its_cuts_at_the_aim_only_while_backlogged() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        pacer.throttled(t0, t0);
        let cut = pacer.share();
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_millis(100);
            pacer.accepted(false, t);
        }
        assert_eq!(pacer.share(), cut, "idle: no growth");
        for _ in 0..10 {
            t += Duration::from_millis(100);
            pacer.accepted(true, t);
        }
        // One second's growth (a little more: the share compounds over the ten steps).
        let grown = cut + Pacer::growth(cut);
        assert!((pacer.share() - grown).abs() < 0.002, "{}", pacer.share());
        // A long quiet gap counts as one second at most.
        let before = pacer.share();
        t += Duration::from_secs(3600);
        pacer.accepted(true, t);
        assert!((pacer.share() - (before + Pacer::growth(before))).abs() < 1e-9);
        for _ in 0..100 {
            t += Duration::from_secs(1);
            pacer.accepted(true, t);
        }
        assert_eq!(pacer.share(), 1.0, "never above the quota");

        let shares: Vec<f64> = (0..=100)
            .map(|k| 0.001f64.powf(f64::from(k) / 100.0))
            .collect();
        for &s in &shares {
            // The growth is the loss at the aim: s ÷ SLICE calls a second, aim of them
            // throttled, each taking cut × s.
            let calls = s / SLICE.as_secs_f64();
            let loss = calls * along(&AIM, s) * Pacer::cut(s) * s;
            assert!((Pacer::growth(s) - loss).abs() <= 1e-12 * loss.max(1e-12));
        }
        for pair in shares.windows(2) {
            // From the whole quota down, the aim only rises: one share balances a given
            // throttled fraction, the same for every replica (what pulls shares together).
            assert!(along(&AIM, pair[1]) > along(&AIM, pair[0]) || pair[0] <= AIM[0].0);
        }
        // N replicas together add less as N grows, not more (they added N times as much
        // before ac3de29): 16 add under a tenth of what one does, 64 under a fiftieth.
        let together = |n: f64| n * Pacer::growth(1.0 / n);
        assert!(together(16.0) < Pacer::growth(1.0) / 10.0);
        assert!(together(64.0) < Pacer::growth(1.0) / 50.0);
        // And the aim stays under the 2 % the stream may throttle, at any count.
        assert!(AIM.iter().all(|&(_, aim)| aim < 0.02));
    }

    /// Refused for 30 s (a brown-out), a pacer regains the share it passed calls at for a
    /// second or more before, doubling every second — but not a share it only passed a call
    /// at in its first moments, from the meter's full bucket, before being cut down to its
    /// share (a replica starting among 128 can be refused for that long; regaining the whole
    /// quota then threw the stream back into overload).
    #[test]
    fn a_brown_out_regains_only_a_share_the_stream_took() {
        // Refused for half a minute, one round after another.
        let refuse = |pacer: &mut Pacer, from: Instant| {
            let mut t = from;
            while t < from + BROWN_OUT + Duration::from_secs(1) {
                pacer.throttled(t, t + Duration::from_millis(50));
                t += Duration::from_millis(100);
            }
            t
        };
        let t0 = Instant::now();
        let mut starting = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        starting.accepted(true, t0 + Duration::from_millis(5));
        let t = refuse(&mut starting, t0 + Duration::from_millis(10));
        let low = starting.share();
        assert!(low < 0.05, "{low}");
        starting.accepted(true, t + Duration::from_millis(500));
        starting.accepted(true, t + Duration::from_millis(1500));
        assert!(
            starting.share() < 1.1 * low,
            "no regain: {low} -> {}",
            starting.share()
        );

        let mut steady = Pacer::new(DIRECT_PUT_QUOTA_DEFAULT, t0);
        let mut t = t0;
        for _ in 0..30 {
            t += Duration::from_millis(100);
            steady.accepted(false, t);
        }
        let t = refuse(&mut steady, t);
        let low = steady.share();
        steady.accepted(true, t + Duration::from_millis(500));
        steady.accepted(true, t + Duration::from_millis(1500));
        assert!(
            steady.share() >= 2.0 * low,
            "doubling back: {low} -> {}",
            steady.share()
        );
        for k in 2..20 {
            steady.accepted(true, t + Duration::from_secs(k));
        }
        assert_eq!(steady.share(), 1.0, "the share it held");
    }

    /// Where the request quota makes calls longer than a slice, a replica sends fewer calls,
    /// meets fewer throttles, and grows as much slower: the throttled fraction it settles at
    /// is still its aim.
    #[test]
    fn growth_follows_the_calls_a_replica_sends() {
        let slow = DirectPutQuota {
            requests_per_sec: 50,
            ..DIRECT_PUT_QUOTA_DEFAULT
        };
        let t0 = Instant::now();
        for (quota, slices) in [(DIRECT_PUT_QUOTA_DEFAULT, 1.0), (slow, 0.25)] {
            let mut pacer = Pacer::new(quota, t0);
            pacer.throttled(t0, t0);
            let before = pacer.share();
            pacer.accepted(true, t0 + Duration::from_millis(500));
            let grown = pacer.share() - before;
            let expected = Pacer::growth(before) * slices * 0.5;
            assert!(
                (grown - expected).abs() < 1e-9 * expected,
                "{grown} {expected}"
            );
        }
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
                let scenario = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, replicas, 300);
                let s = scenario.with_seed(seed).run().summary(120, 300);
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

    /// Replicas starting together each end with at least half their fair share, for ten seeds
    /// at 2 to 16 replicas and five at 64. (With growth in share² alone and a back-off on every
    /// throttle, one of two replicas ended below half on 11 of 20 seeds, at 0.03 on two; with
    /// the log-term growth and a tenth cut on every throttle of ee30260, 64 replicas ended
    /// below half on 11 of 16 seeds, at 0.41 at worst.)
    #[test]
    fn replicas_starting_together_each_get_at_least_half_their_fair_share() {
        for (replicas, seeds) in [(2, 10), (3, 10), (4, 10), (16, 10), (64, 5)] {
            for seed in 1..=seeds {
                let scenario = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, replicas, 300);
                let s = scenario.with_seed(seed).run().summary(120, 300);
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

    /// Half of the replicas stop (a scale-in, as the shipped HPA does between 10 and 5): the
    /// stopped ones send nothing more, and the others take the quota they freed, 2 → 1 and
    /// 4 → 2 within 30 s and 10 → 5 within two minutes (6 s, 13 s and 65 s were the worst of
    /// 20 seeds), with the stream quiet throughout. Growth at a tenth of the quota is what
    /// 1.4 % of throttled calls pays for (see the module's comment), so it takes 16 → 8 about
    /// two minutes and 64 → 32 ten minutes: the scale example prints them. (2 → 1 caught a
    /// stopped replica that the sim brought back as a new one.)
    #[test]
    fn after_a_scale_in_the_others_take_the_quota_it_freed() {
        let stop = 120;
        for (replicas, within) in [(2, 30), (4, 30), (10, 120)] {
            for seed in 1..=3 {
                let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, replicas, 360)
                    .with_seed(seed)
                    .scale_in(replicas / 2, Duration::from_secs(stop))
                    .run();
                let left = replicas - replicas / 2;
                let sent_after: u64 = (left..replicas)
                    .map(|r| run.calls[r][stop as usize..].iter().sum::<u64>())
                    .sum();
                assert_eq!(sent_after, 0, "{replicas} replicas: the stopped ones sent");
                let back = (stop..350).find(|&t| run.summary(t, t + 10).delivered >= 0.9);
                assert!(
                    back.is_some_and(|t| t <= stop + within),
                    "{replicas} → {left}, seed {seed}: at 90 % of the quota from second {back:?}"
                );
                let after = run.summary(stop + 1, 360);
                assert_eq!(after.replicas, left);
                assert!(
                    after.throttled <= 0.02,
                    "{replicas} → {left}, seed {seed}: {after:?}"
                );
            }
        }
    }

    /// Firehose refuses every call for 45 s or two minutes (a brown-out: the share falls
    /// toward the floor, where the back-off would take over), then takes them again: a lone
    /// replica has its whole quota back within 12 s or 20 s (7 s and 13-14 s were measured:
    /// the share doubles every second from under 1 %), not after the hour the growth law
    /// would take from a share that small. Sixteen replicas likewise.
    #[test]
    fn after_a_brown_out_the_share_it_held_is_regained_at_once() {
        for (refused, within) in [(45, 12), (120, 20)] {
            let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 1, 300)
                .real_from(Duration::from_secs(60), 0.000_1)
                .real_from(Duration::from_secs(60 + refused), 1.0)
                .run();
            let end = 60 + refused as usize;
            let low = run.shares[0][end - 1];
            assert!(low <= 0.01, "refused for {refused} s, still at {low}");
            let back = (end..290).find(|&t| run.summary(t as u64, t as u64 + 10).delivered >= 0.9);
            assert!(
                back.is_some_and(|t| t <= end + within),
                "refused for {refused} s: back at 90 % of the quota at second {back:?}"
            );
        }
        // Sixteen replicas, two minutes into sharing the stream: each regains the share it
        // held, and they go on sharing it quietly and fairly.
        let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 16, 400)
            .real_from(Duration::from_secs(150), 0.000_1)
            .real_from(Duration::from_secs(270), 1.0)
            .run();
        let back = (270..390).find(|&t| run.summary(t, t + 10).delivered >= 0.9);
        assert!(
            back.is_some_and(|t| t <= 270 + 20),
            "16 replicas: back at 90 % of the quota at second {back:?}"
        );
        let after = run.summary(330, 400);
        assert!(
            after.throttled <= 0.02 && after.spread.0 >= 0.5,
            "16 replicas after the brown-out: {after:?}"
        );
    }

    /// The real quota halves (a neighbour starts sharing it) and is later restored: the drop
    /// is followed within seconds, and a lone replica has the whole quota back within 10 s
    /// (it grows by ~5 % of the quota a second from half of it up, as the additive controller
    /// before ac3de29 did), for each of five seeds.
    #[test]
    fn the_real_quota_halved_then_restored_is_followed() {
        let halved = Duration::from_secs(30);
        let restored = Duration::from_secs(60);
        for seed in 1..=5 {
            let run = sim::Scenario::shared(DIRECT_PUT_QUOTA_DEFAULT, 1, 120)
                .with_seed(seed)
                .real_from(halved, 0.5)
                .real_from(restored, 1.0)
                .run();
            let share_at = |s: usize| run.shares[0][s];
            assert!(
                share_at(33) <= 0.6,
                "seed {seed}: not followed: {}",
                share_at(33)
            );
            let half = run.summary(35, 60);
            assert!(
                half.delivered >= 0.90 && half.throttled <= 0.02,
                "seed {seed}: {half:?}"
            );
            let back = (60..110).find(|&t| run.summary(t, t + 10).delivered >= 0.9);
            assert!(
                back.is_some_and(|t| t <= 60 + 10),
                "seed {seed}: back at 90 % of the quota over 10 s from second {back:?}"
            );
            let again = run.summary(85, 120);
            assert!(
                again.delivered >= 0.90 && again.throttled <= 0.02,
                "seed {seed}: {again:?}"
            );
        }
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
