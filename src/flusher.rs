//! The flusher: one task per queue stream that drains the queue head into the sink.
//!
//! Each round reads the oldest entries not already in flight, packs their lines into sink
//! records, and sends the batch once it is full or its oldest entry has lingered long enough,
//! to the delivery stream the policy in [`crate::delivery`] picks (one, or one of a fan-out),
//! when that stream's pacing allows. Several batches may be in flight. When a call returns,
//! exactly the lines of accepted records leave the queue; lines of failed records stay at the
//! head and are sent again after a back-off that never gives up. A call refused for its content
//! is split until the offending record is alone, and that record goes to the dead-letter tree.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::FlusherConfig;
use crate::delivery::{
    Backoff, CallSize, Choice, Delivered, DeliveryStream, Pacer, Targets, deliver_batch,
};
use crate::firehose_limits::BILLING_INCREMENT;
use crate::metrics;
use crate::queue::{Entry, Queue};
use crate::sink::{RecordOutcome, Sink, SinkError};

/// How lines become sink records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Pack consecutive lines into one record (`false`: one line per record).
    pub enabled: bool,
    /// Largest packed record in bytes.
    pub max_bytes: usize,
    /// Most lines in one packed record.
    pub max_lines: usize,
}

/// Drains one stream of the queue into a sink.
pub struct Flusher {
    stream: String,
    queue: Queue,
    sink: Arc<dyn Sink>,
    config: FlusherConfig,
    packing: Packing,
    delivery: Vec<DeliveryStream>,
}

/// The most one call may carry: the configured batch limits, lowered to what pacing allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    records: usize,
    bytes: usize,
    packing: Packing,
}

impl Limits {
    /// The limits of a call: `config`'s, lowered to `paced` (what the pacer lets through at
    /// once) when the target is paced. A paced call's bytes are then rounded down to whole
    /// billing increments (at least one), and so are its packed records: a small call must
    /// not end in a small record, billed as a whole 5 KB unit (that cost ~48 % more).
    fn new(config: &FlusherConfig, packing: Packing, paced: Option<CallSize>) -> Limits {
        let Some(p) = paced else {
            return Limits {
                records: config.max_batch_records,
                bytes: config.max_batch_bytes,
                packing,
            };
        };
        let increment = BILLING_INCREMENT as usize;
        let units = (p.bytes / increment * increment).max(increment);
        let bytes = config.max_batch_bytes.min(units);
        Limits {
            records: config.max_batch_records.min(p.records.max(1)),
            bytes,
            packing: Packing {
                max_bytes: packing.max_bytes.min(bytes),
                ..packing
            },
        }
    }
}

/// A batch in flight: the entries it holds and how their lines map to records.
struct Batch {
    entries: Vec<Entry>,
    records: Vec<Bytes>,
    /// `ends[i]`: one past the last line (counted across `entries` in order) of record `i`.
    ends: Vec<usize>,
    /// Bytes of the records.
    bytes: usize,
}

impl Batch {
    /// Packs lines of `entries` (in order) into records within `limits`. Lines that do not fit
    /// stay out; their entry keeps them. The first line always goes in, so that a line larger
    /// than what pacing allows per call still goes, alone (it is within Firehose's limits:
    /// ingest refuses larger ones).
    fn build(entries: Vec<Entry>, limits: Limits) -> Batch {
        let packing = limits.packing;
        let mut records = Vec::new();
        let mut ends = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        let (mut current_lines, mut total_bytes, mut lines) = (0usize, 0usize, 0usize);
        'entries: for entry in &entries {
            let (n, len) = (entry.count as usize, entry.lines.len());
            // Fast path: the whole entry fits one packed record, copied in one go. Entries
            // are whole requests (or groups of them), so this is the common case.
            let whole = packing.enabled
                && n > 0
                && len <= packing.max_bytes
                && n <= packing.max_lines
                && total_bytes + len <= limits.bytes;
            if whole {
                let joins_current = current_lines > 0
                    && current.len() + len <= packing.max_bytes
                    && current_lines + n <= packing.max_lines;
                if !joins_current {
                    if current_lines > 0 {
                        records.push(Bytes::from(std::mem::take(&mut current)));
                        ends.push(lines);
                        current_lines = 0;
                    }
                    if records.len() == limits.records {
                        break 'entries;
                    }
                }
                current.extend_from_slice(&entry.lines);
                current_lines += n;
                total_bytes += len;
                lines += n;
                continue;
            }
            for line in entry.iter_lines() {
                if lines > 0 && total_bytes + line.len() > limits.bytes {
                    break 'entries;
                }
                let joins_current = packing.enabled
                    && current_lines > 0
                    && current.len() + line.len() <= packing.max_bytes
                    && current_lines < packing.max_lines;
                if !joins_current {
                    if current_lines > 0 {
                        records.push(Bytes::from(std::mem::take(&mut current)));
                        ends.push(lines);
                        current_lines = 0;
                    }
                    if records.len() == limits.records {
                        break 'entries;
                    }
                }
                current.extend_from_slice(line);
                current_lines += 1;
                total_bytes += line.len();
                lines += 1;
            }
        }
        if current_lines > 0 {
            records.push(Bytes::from(current));
            ends.push(lines);
        }
        Batch {
            entries,
            records,
            ends,
            bytes: total_bytes,
        }
    }

    fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.key)
    }

    fn size(&self) -> CallSize {
        CallSize {
            records: self.records.len(),
            bytes: self.bytes,
        }
    }

    /// Whether the batch is as large as `limits` allow, within a line's slack: the stream
    /// then has more waiting than one call takes.
    fn is_full(&self, limits: Limits) -> bool {
        self.records.len() >= limits.records || self.bytes * 10 >= limits.bytes * 9
    }
}

/// A batch on its way: where it went, and when.
struct InFlight {
    batch: Batch,
    target: usize,
    sent_at: Instant,
    full: bool,
}

/// A queue update that the queue could not record (its storage failing) after the sink took
/// the lines it covers. The entry stays held, so nothing it holds is sent again, and only the
/// update is retried, with back-off, until the queue records it: a full disk must not turn
/// into a loop that sends the same batch again and again.
struct Unsettled {
    entry: Entry,
    /// Lines still to deliver (they stay in the queue).
    remaining: Vec<Vec<u8>>,
    /// Lines the sink refused for good (they go to the dead-letter tree).
    dead: Vec<Vec<u8>>,
}

impl Unsettled {
    fn apply(&self, queue: &Queue, stream: &str) -> Result<(), crate::queue::QueueError> {
        let remaining: Vec<&[u8]> = self.remaining.iter().map(Vec::as_slice).collect();
        if self.dead.is_empty() {
            queue.settle(stream, &self.entry, &remaining)
        } else {
            let dead: Vec<&[u8]> = self.dead.iter().map(Vec::as_slice).collect();
            queue.dead_letter(stream, &self.entry, &dead, &remaining)
        }
    }
}

/// Failures of the queue itself (reading the head, recording deliveries): they pause the whole
/// flusher, whichever delivery stream is healthy.
#[derive(Default)]
struct QueueTrouble {
    failures: u32,
    retry_at: Option<Instant>,
}

impl QueueTrouble {
    fn waiting(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }

    fn failed(&mut self, backoff: &Backoff, storage: bool) {
        self.failures += 1;
        let delay = if storage {
            backoff.storage_delay(self.failures)
        } else {
            backoff.delay(self.failures, false)
        };
        self.retry_at = Some(Instant::now() + delay);
    }

    fn cleared(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }
}

impl Flusher {
    /// A flusher of `stream`, delivering to the delivery stream of the same name, unpaced.
    pub fn new(
        stream: String,
        queue: Queue,
        sink: Arc<dyn Sink>,
        config: FlusherConfig,
        packing: Packing,
    ) -> Flusher {
        let delivery = vec![DeliveryStream {
            name: stream.clone(),
            quota: None,
        }];
        Flusher {
            stream,
            queue,
            sink,
            config,
            packing,
            delivery,
        }
    }

    /// Delivers to these streams instead (a fan-out when there are several), each paced to its
    /// quota. An empty list keeps the default.
    pub fn deliver_to(mut self, delivery: Vec<DeliveryStream>) -> Flusher {
        if !delivery.is_empty() {
            self.delivery = delivery;
        }
        self
    }

    /// Drains until `shutdown` fires, then waits for the calls in flight and returns;
    /// everything not yet delivered stays in the queue for the next start. Callers bound the
    /// wait with their grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = Backoff::from_millis(self.config.retry_base_ms, self.config.retry_max_ms);
        let start = Instant::now();
        let mut targets = Targets::new(
            self.delivery
                .iter()
                .map(|d| (d.name.clone(), d.quota.map(|q| Pacer::new(q, start))))
                .collect(),
            self.config.max_in_flight,
            backoff,
        );
        for i in 0..targets.len() {
            metrics::pacing_share(targets.stream(i), targets.share(i));
        }
        let mut in_flight: JoinSet<Delivered> = JoinSet::new();
        let mut batches: HashMap<Id, InFlight> = HashMap::new();
        let mut held: HashSet<u64> = HashSet::new();
        let mut unsettled: Vec<Unsettled> = Vec::new();
        let mut trouble = QueueTrouble::default();
        let mut stopping = false;
        let mut lingering: Option<Linger> = None;
        loop {
            let mut wake_at: Option<Instant> = None;
            if !unsettled.is_empty() && !trouble.waiting(Instant::now()) && !stopping {
                let before = unsettled.len();
                unsettled.retain(|u| match u.apply(&self.queue, &self.stream) {
                    Ok(()) => {
                        held.remove(&u.entry.key);
                        false
                    }
                    Err(_) => true,
                });
                if unsettled.is_empty() {
                    tracing::info!(stream = %self.stream, entries = before, "the queue records deliveries again; resuming");
                    trouble.cleared();
                } else {
                    trouble.failed(&backoff, true);
                }
            }
            // Deliveries pause while the queue cannot record them: whatever is sent now could
            // not be settled either, and would be sent again.
            while !stopping && !trouble.waiting(Instant::now()) && unsettled.is_empty() {
                let now = Instant::now();
                let target = match targets.choose(now) {
                    Choice::Now(i) => i,
                    Choice::At(at) => {
                        wake_at = Some(at);
                        break;
                    }
                    Choice::Busy => break,
                };
                let limits = Limits::new(&self.config, self.packing, targets.max_call(target));
                // Lingering: an append wakes the loop, but the head is read again only when
                // what came in since could fill the batch (or the linger is over).
                if let Some(l) = lingering.take()
                    && now < l.until
                    && !l.could_fill(self.queue.came_in(&self.stream), limits)
                {
                    wake_at = Some(l.until);
                    lingering = Some(l);
                    break;
                }
                match self.next_entries(&held, limits) {
                    Ok(Some(entries)) => {
                        // Decided from the entries' headers: packing a batch only to drop it
                        // while lingering would cost a copy of up to 4 MiB per append.
                        let wait = self.linger_left(&entries);
                        if !wait.is_zero() && !surely_full(&entries, limits) {
                            wake_at = Some(now + wait);
                            lingering = Some(Linger {
                                until: now + wait,
                                read: entries.iter().map(|e| (e.count, e.lines.len())).collect(),
                                came_in: self.queue.came_in(&self.stream),
                            });
                            break;
                        }
                        let batch = Batch::build(entries, limits);
                        held.extend(batch.keys());
                        targets.sent(target, batch.size(), now);
                        let (sink, stream, records) = (
                            self.sink.clone(),
                            targets.stream(target).to_owned(),
                            batch.records.clone(),
                        );
                        let id = in_flight
                            .spawn(async move { deliver_batch(&*sink, &stream, records).await })
                            .id();
                        let full = batch.is_full(limits);
                        batches.insert(
                            id,
                            InFlight {
                                batch,
                                target,
                                sent_at: now,
                                full,
                            },
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(stream = %self.stream, error = %e, "cannot read the queue");
                        trouble.failed(&backoff, false);
                        break;
                    }
                }
            }
            if stopping && in_flight.is_empty() {
                if !unsettled.is_empty() {
                    tracing::warn!(stream = %self.stream, entries = unsettled.len(), "stopping with deliveries the queue could not record; their records will be sent again after restart");
                }
                return;
            }
            let queue_retry = trouble.retry_at.filter(|t| *t > Instant::now());
            let wake_at = match (wake_at, queue_retry) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    let (id, delivered) = match done {
                        Ok((id, d)) => (id, d),
                        Err(e) => {
                            let n = batches.get(&e.id()).map_or(0, |b| b.batch.records.len());
                            (e.id(), Delivered {
                                outcomes: vec![RecordOutcome::Retry { code: "panic".to_owned() }; n],
                                error: Some(SinkError::Retriable { code: "panic".to_owned(), message: e.to_string() }),
                            })
                        }
                    };
                    let InFlight { batch, target, sent_at, full } =
                        batches.remove(&id).expect("every task has its batch");
                    // Its entries may be back at the head (a retry): read it again.
                    lingering = None;
                    for key in batch.keys() {
                        held.remove(&key);
                    }
                    let report = delivered.report(sent_at, full);
                    targets.returned(target, report, Instant::now());
                    metrics::pacing_share(targets.stream(target), targets.share(target));
                    let stuck = self.settle(&batch, &delivered, targets.stream(target));
                    if !stuck.is_empty() {
                        if unsettled.is_empty() {
                            tracing::error!(stream = %self.stream, entries = stuck.len(), "the queue cannot record deliveries (storage failing); pausing deliveries, nothing is sent again until it can");
                        }
                        held.extend(stuck.iter().map(|u| u.entry.key));
                        unsettled.extend(stuck);
                        trouble.failed(&backoff, true);
                    } else if unsettled.is_empty() {
                        trouble.cleared();
                    }
                }
                _ = self.queue.appended(&self.stream), if !stopping => {}
                _ = sleep_until(wake_at), if wake_at.is_some() && !stopping => {}
                _ = shutdown.cancelled(), if !stopping => stopping = true,
            }
        }
    }

    /// The entries of the next batch from the head, skipping entries in flight; `None` when
    /// nothing waits.
    fn next_entries(
        &self,
        held: &HashSet<u64>,
        limits: Limits,
    ) -> Result<Option<Vec<Entry>>, crate::queue::QueueError> {
        let max_lines = if limits.packing.enabled {
            limits.packing.max_lines
        } else {
            1
        };
        let entries =
            self.queue
                .read_head(&self.stream, held, limits.records * max_lines, limits.bytes)?;
        Ok((!entries.is_empty()).then_some(entries))
    }

    /// How much longer the oldest of these entries should wait for company.
    fn linger_left(&self, entries: &[Entry]) -> Duration {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let oldest = entries.iter().map(|e| e.enqueued_ms).min().unwrap_or(0);
        let age = Duration::from_millis(now_ms.saturating_sub(oldest));
        self.config.linger().saturating_sub(age)
    }

    /// Applies a batch's outcomes to the queue (its metrics count for `target`, the delivery
    /// stream it went to); returns the updates the queue could not record.
    fn settle(&self, batch: &Batch, delivered: &Delivered, target: &str) -> Vec<Unsettled> {
        let mut stuck = Vec::new();
        let stream = &self.stream;
        let mut line = 0usize;
        let mut record = 0usize;
        let mut accepted_events = 0u64;
        let in_batch = batch.ends.last().copied().unwrap_or(0);
        for entry in &batch.entries {
            let n = entry.count as usize;
            // Fast path: every record carrying this entry's lines was accepted, so the entry
            // goes whole, without looking at its lines.
            if n > 0 && line + n <= in_batch {
                while batch.ends[record] <= line {
                    record += 1;
                }
                let mut last = record;
                while batch.ends[last] < line + n {
                    last += 1;
                }
                let accepted = (record..=last)
                    .all(|r| delivered.outcomes.get(r) == Some(&RecordOutcome::Accepted));
                if accepted {
                    if let Err(e) = self.queue.settle(stream, entry, &[]) {
                        tracing::debug!(stream = %stream, key = entry.key, error = %e, "cannot settle a queue entry");
                        stuck.push(Unsettled {
                            entry: entry.clone(),
                            remaining: Vec::new(),
                            dead: Vec::new(),
                        });
                    }
                    accepted_events += n as u64;
                    line += n;
                    continue;
                }
            }
            let mut remaining: Vec<&[u8]> = Vec::new();
            let mut dead: Vec<&[u8]> = Vec::new();
            for text in entry.iter_lines() {
                while record < batch.ends.len() && line >= batch.ends[record] {
                    record += 1;
                }
                match delivered
                    .outcomes
                    .get(record)
                    .filter(|_| record < batch.ends.len())
                {
                    Some(RecordOutcome::Accepted) => accepted_events += 1,
                    Some(RecordOutcome::Reject { .. }) => dead.push(text),
                    Some(RecordOutcome::Retry { .. }) => remaining.push(text),
                    // Not in this batch (it was full): stays for the next one.
                    None => remaining.push(text),
                }
                line += 1;
            }
            let result = if dead.is_empty() {
                self.queue.settle(stream, entry, &remaining)
            } else {
                tracing::error!(
                    stream = %stream,
                    records = dead.len(),
                    "sink refused records for good; moved to the dead-letter tree"
                );
                self.queue.dead_letter(stream, entry, &dead, &remaining)
            };
            if let Err(e) = result {
                tracing::debug!(stream = %stream, key = entry.key, error = %e, "cannot settle a queue entry");
                stuck.push(Unsettled {
                    entry: entry.clone(),
                    remaining: remaining.iter().map(|l| l.to_vec()).collect(),
                    dead: dead.iter().map(|l| l.to_vec()).collect(),
                });
            }
        }
        let accepted_sizes = batch
            .records
            .iter()
            .zip(&delivered.outcomes)
            .filter(|(_, o)| **o == RecordOutcome::Accepted)
            .map(|(r, _)| r.len());
        metrics::delivered(target, accepted_events, accepted_sizes);
        for outcome in &delivered.outcomes {
            if let RecordOutcome::Retry { code } | RecordOutcome::Reject { code } = outcome {
                metrics::failures(target, code, 1);
            }
        }
        stuck
    }
}

/// A batch waiting for company: what was read, and what the stream's queue had taken in
/// then ([`crate::queue::Queue::came_in`]).
struct Linger {
    until: Instant,
    /// (lines, bytes of lines) of each entry read.
    read: Vec<(u32, usize)>,
    came_in: (u64, u64),
}

impl Linger {
    /// Whether the entries read and what came in since (`came_in` now) could fill a batch:
    /// the new bytes are counted with their entries' headers, so this errs towards a read.
    fn could_fill(&self, came_in: (u64, u64), limits: Limits) -> bool {
        let lines = came_in.0.saturating_sub(self.came_in.0) as usize;
        let bytes = came_in.1.saturating_sub(self.came_in.1) as usize;
        let read = self.read.iter().map(|&(l, b)| (l as usize, b));
        is_full(read.chain([(lines, bytes)]), limits)
    }
}

/// Whether these entries fill a batch for certain: a lower bound on the records they pack
/// into reaches the call limit, or their bytes reach the byte limit.
fn surely_full(entries: &[Entry], limits: Limits) -> bool {
    is_full(
        entries.iter().map(|e| (e.count as usize, e.lines.len())),
        limits,
    )
}

/// [`surely_full`] of entries given as (lines, bytes of lines).
fn is_full(entries: impl Iterator<Item = (usize, usize)>, limits: Limits) -> bool {
    let (lines, bytes) = entries.fold((0, 0), |(l, b), (el, eb)| (l + el, b + eb));
    let records = if limits.packing.enabled {
        bytes
            .div_ceil(limits.packing.max_bytes)
            .max(lines.div_ceil(limits.packing.max_lines))
    } else {
        lines
    };
    bytes >= limits.bytes || records >= limits.records
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, FIREHOSE_MAX_RECORD_BYTES, QueueConfig};
    use crate::firehose_limits::DirectPutQuota;

    #[test]
    fn a_linger_reads_again_only_when_what_came_in_could_fill_the_batch() {
        let limits = Limits {
            records: 10,
            bytes: 1000,
            packing: Packing {
                enabled: false,
                max_bytes: 1000,
                max_lines: 1,
            },
        };
        let l = Linger {
            until: Instant::now(),
            read: vec![(3, 300), (2, 200)],
            came_in: (100, 10_000),
        };
        assert!(!l.could_fill((100, 10_000), limits), "nothing came in");
        assert!(!l.could_fill((104, 10_400), limits), "9 lines, 900 bytes");
        assert!(l.could_fill((105, 10_400), limits), "10 lines");
        assert!(l.could_fill((101, 10_500), limits), "1000 bytes");
        let packed = Limits {
            packing: Packing {
                enabled: true,
                max_bytes: 100,
                max_lines: 2,
            },
            ..limits
        };
        // Packed: 5 + 13 lines pack into 9 records of 2 lines at least, 5 + 14 into 10.
        assert!(!l.could_fill((113, 10_000), packed));
        assert!(l.could_fill((114, 10_000), packed));
    }

    use async_trait::async_trait;
    use std::sync::Mutex;
    use tokio::sync::watch;

    type Script = dyn Fn(usize, &[Bytes]) -> Result<Vec<RecordOutcome>, SinkError> + Send + Sync;

    /// A sink answering from a script (call number, records), recording every call and
    /// publishing the number of lines it accepted.
    struct Scripted {
        script: Box<Script>,
        calls: Mutex<Vec<Vec<Bytes>>>,
        accepted: watch::Sender<Vec<String>>,
        /// Every call's delivery stream, (paused-clock) time and bytes.
        sent: Mutex<Vec<(String, Instant, usize)>>,
        /// A delivery stream that is down: its calls fail, the script is not asked.
        down: Mutex<Option<String>>,
    }

    impl Scripted {
        fn new(
            script: impl Fn(usize, &[Bytes]) -> Result<Vec<RecordOutcome>, SinkError>
            + Send
            + Sync
            + 'static,
        ) -> Arc<Scripted> {
            Arc::new(Scripted {
                script: Box::new(script),
                calls: Mutex::default(),
                accepted: watch::channel(Vec::new()).0,
                sent: Mutex::default(),
                down: Mutex::default(),
            })
        }
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn put_batch(
            &self,
            stream: &str,
            records: Vec<Bytes>,
        ) -> Result<Vec<RecordOutcome>, SinkError> {
            let bytes = records.iter().map(Bytes::len).sum();
            self.sent
                .lock()
                .unwrap()
                .push((stream.to_owned(), Instant::now(), bytes));
            if self.down.lock().unwrap().as_deref() == Some(stream) {
                return Err(SinkError::Retriable {
                    code: "connection".to_owned(),
                    message: "down".to_owned(),
                });
            }
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(records.clone());
                calls.len() - 1
            };
            let outcomes = (self.script)(n, &records)?;
            let lines: Vec<String> = records
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| **o == RecordOutcome::Accepted)
                .flat_map(|(r, _)| {
                    String::from_utf8(r.to_vec())
                        .unwrap()
                        .lines()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            self.accepted.send_modify(|a| a.extend(lines));
            Ok(outcomes)
        }
    }

    fn all_ok(_: usize, records: &[Bytes]) -> Result<Vec<RecordOutcome>, SinkError> {
        Ok(vec![RecordOutcome::Accepted; records.len()])
    }

    fn retry(code: &str) -> RecordOutcome {
        RecordOutcome::Retry {
            code: code.to_owned(),
        }
    }

    fn config() -> FlusherConfig {
        FlusherConfig {
            linger_ms: 0,
            retry_base_ms: 1,
            retry_max_ms: 20,
            ..FlusherConfig::default()
        }
    }

    const PACKED: Packing = Packing {
        enabled: true,
        max_bytes: 1000,
        max_lines: 7,
    };
    const UNPACKED: Packing = Packing {
        enabled: false,
        max_bytes: 1000,
        max_lines: 7,
    };

    struct Harness {
        queue: Queue,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        fn empty() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let qc = QueueConfig {
                path: dir.path().join("q"),
                durability: Durability::Interval,
                ..QueueConfig::default()
            };
            let queue = Queue::open(&qc, &["s".to_owned()]).unwrap();
            // These tests are about delivery: entries stay as they were appended.
            queue.stop_compactor();
            Harness { queue, _dir: dir }
        }

        /// `entries` entries of `per_entry` copies of `line` (which ends in `\n`).
        async fn with_entries(line: &str, per_entry: usize, entries: usize) -> Harness {
            let h = Harness::empty();
            let body = line.repeat(per_entry);
            for _ in 0..entries {
                h.queue
                    .append("s", body.as_bytes(), per_entry as u32)
                    .await
                    .unwrap();
            }
            h
        }

        async fn with_lines(n: usize, per_request: usize) -> Harness {
            let Harness { queue, _dir: dir } = Harness::empty();
            for start in (0..n).step_by(per_request) {
                let end = (start + per_request).min(n);
                let lines: String = (start..end).map(|i| format!("line-{i:05}\n")).collect();
                queue
                    .append("s", lines.as_bytes(), (end - start) as u32)
                    .await
                    .unwrap();
            }
            Harness { queue, _dir: dir }
        }

        /// Runs a flusher until the sink accepted `n` lines, then stops it (which settles
        /// every call in flight) and returns the accepted lines.
        async fn drain(
            &self,
            sink: Arc<Scripted>,
            config: FlusherConfig,
            packing: Packing,
            n: usize,
        ) -> Vec<String> {
            self.drain_to(sink, config, packing, Vec::new(), n).await
        }

        /// [`Harness::drain`] over these delivery streams (empty: the queue stream's own).
        async fn drain_to(
            &self,
            sink: Arc<Scripted>,
            config: FlusherConfig,
            packing: Packing,
            delivery: Vec<DeliveryStream>,
            n: usize,
        ) -> Vec<String> {
            let stop = CancellationToken::new();
            let flusher = Flusher::new(
                "s".to_owned(),
                self.queue.clone(),
                sink.clone(),
                config,
                packing,
            )
            .deliver_to(delivery);
            let task = tokio::spawn(flusher.run(stop.clone()));
            let mut rx = sink.accepted.subscribe();
            tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|a| a.len() >= n))
                .await
                .unwrap()
                .unwrap();
            stop.cancel();
            task.await.unwrap();
            sink.accepted.borrow().clone()
        }
    }

    /// What Firehose bills for these calls' records, over their bytes.
    fn billed_ratio(calls: &[Vec<Bytes>]) -> f64 {
        let records = calls.iter().flatten();
        let billed: u64 = records
            .clone()
            .map(|r| metrics::billed_bytes(r.len() as u64))
            .sum();
        let payload: u64 = records.map(|r| r.len() as u64).sum();
        billed as f64 / payload as f64
    }

    fn expected(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("line-{i:05}")).collect()
    }

    #[tokio::test]
    async fn packing_respects_line_byte_and_call_caps() {
        let h = Harness::with_lines(5000, 13).await;
        let sink = Scripted::new(all_ok);
        let cfg = FlusherConfig {
            max_batch_records: 20,
            max_batch_bytes: FIREHOSE_MAX_RECORD_BYTES,
            ..config()
        };
        let mut got = h.drain(sink.clone(), cfg, PACKED, 5000).await;
        got.sort();
        assert_eq!(got, expected(5000));
        for call in sink.calls.lock().unwrap().iter() {
            assert!(call.len() <= 20);
            for record in call {
                assert!(record.len() <= PACKED.max_bytes);
                assert!(record.ends_with(b"\n"));
                assert!(record.iter().filter(|&&b| b == b'\n').count() <= PACKED.max_lines);
            }
        }
        assert_eq!(h.queue.queued_events("s"), 0);
        assert_eq!(h.queue.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn packing_cuts_the_firehose_bill_for_small_events() {
        // 200-byte events: alone, each is billed as 5 KB (25.6x); packed, ~1x.
        let line = format!("{}\n", "x".repeat(199));
        for (packing, lo, hi) in [(true, 1.0, 1.05), (false, 25.59, 25.61)] {
            let h = Harness::with_entries(&line, 100, 50).await;
            let sink = Scripted::new(all_ok);
            let p = Packing {
                enabled: packing,
                max_bytes: FIREHOSE_MAX_RECORD_BYTES,
                max_lines: crate::firehose_limits::MAX_DEAGGREGATED_LINES,
            };
            h.drain(sink.clone(), config(), p, 5000).await;
            let ratio = billed_ratio(&sink.calls.lock().unwrap());
            assert!(
                (lo..=hi).contains(&ratio),
                "packing={packing}: billed/payload {ratio}"
            );
        }
    }

    #[tokio::test]
    async fn unpacked_sends_one_line_per_record() {
        let h = Harness::with_lines(1200, 100).await;
        let sink = Scripted::new(all_ok);
        let got = h.drain(sink.clone(), config(), UNPACKED, 1200).await;
        assert_eq!(got.len(), 1200);
        let calls = sink.calls.lock().unwrap();
        assert!(
            calls
                .iter()
                .all(|c| c.len() <= crate::firehose_limits::MAX_BATCH_RECORDS)
        );
        assert!(
            calls
                .iter()
                .flatten()
                .all(|r| r.iter().filter(|&&b| b == b'\n').count() == 1)
        );
    }

    #[tokio::test]
    async fn only_failed_records_are_sent_again() {
        let h = Harness::with_lines(300, 10).await;
        // The first call fails its records 0 and 2; later calls succeed.
        let sink = Scripted::new(|n, records| {
            Ok((0..records.len())
                .map(|i| {
                    if n == 0 && (i == 0 || i == 2) {
                        retry("ServiceUnavailableException")
                    } else {
                        RecordOutcome::Accepted
                    }
                })
                .collect())
        });
        let mut got = h.drain(sink.clone(), config(), UNPACKED, 300).await;
        let calls = sink.calls.lock().unwrap();
        let failed: Vec<Bytes> = vec![calls[0][0].clone(), calls[0][2].clone()];
        let resent: Vec<&Bytes> = calls[1..]
            .iter()
            .flatten()
            .filter(|r| failed.contains(r))
            .collect();
        assert_eq!(
            resent.len(),
            2,
            "each failed record is sent exactly once more"
        );
        let sent: usize = calls.iter().map(Vec::len).sum();
        assert_eq!(sent, 302, "nothing else is sent twice");
        got.sort();
        assert_eq!(got, expected(300), "every line delivered exactly once");
        assert_eq!(h.queue.queued_events("s"), 0);
    }

    #[tokio::test]
    async fn packed_whole_entries_with_a_failed_record_are_resent_exactly() {
        // 3-line entries, 7 lines a record: records hold two whole entries (the fast paths).
        let h = Harness::with_lines(300, 3).await;
        let sink = Scripted::new(|n, records| {
            Ok((0..records.len())
                .map(|i| {
                    if n == 0 && i == 1 {
                        retry("InternalFailure")
                    } else {
                        RecordOutcome::Accepted
                    }
                })
                .collect())
        });
        let mut got = h.drain(sink.clone(), config(), PACKED, 300).await;
        let calls = sink.calls.lock().unwrap();
        assert!(
            calls[0]
                .iter()
                .all(|r| r.iter().filter(|&&b| b == b'\n').count() == 6)
        );
        let failed = calls[0][1].clone();
        let resent: usize = calls[1..]
            .iter()
            .flatten()
            .map(|r| {
                r.windows(failed.len())
                    .filter(|w| *w == &failed[..])
                    .count()
            })
            .sum();
        assert_eq!(resent, 1, "the failed record's lines are sent once more");
        got.sort();
        assert_eq!(got, expected(300), "every line delivered exactly once");
        assert_eq!(h.queue.queued_events("s"), 0);
    }

    #[tokio::test]
    async fn an_outage_loses_nothing() {
        let h = Harness::with_lines(100, 1).await;
        let sink = Scripted::new(|n, records| {
            if n < 8 {
                Err(SinkError::Retriable {
                    code: "http_503".to_owned(),
                    message: "down".to_owned(),
                })
            } else {
                all_ok(n, records)
            }
        });
        let mut got = h.drain(sink.clone(), config(), PACKED, 100).await;
        got.sort();
        assert_eq!(got, expected(100));
        assert!(sink.calls.lock().unwrap().len() > 8);
    }

    /// A full disk after the sink took a batch: the batch is not sent again while the queue
    /// cannot record its delivery (the old code re-sent it in a tight loop, thousands of
    /// copies per event), deliveries pause, and resume once the queue can write.
    #[tokio::test(start_paused = true)]
    async fn a_delivery_the_queue_cannot_record_is_not_sent_again() {
        let h = Harness::with_lines(50, 5).await;
        h.queue.fail_writes(true);
        let sink = Scripted::new(all_ok);
        let stop = CancellationToken::new();
        let flusher = Flusher::new(
            "s".to_owned(),
            h.queue.clone(),
            sink.clone(),
            config(),
            UNPACKED,
        );
        let task = tokio::spawn(flusher.run(stop.clone()));
        let mut rx = sink.accepted.subscribe();
        rx.wait_for(|a| !a.is_empty()).await.unwrap();
        // A long failure: many back-off periods pass (paused time advances by itself).
        tokio::time::sleep(Duration::from_secs(60)).await;
        let calls_while_failing = sink.calls.lock().unwrap().len();
        assert_eq!(
            calls_while_failing, 1,
            "one batch sent, then deliveries paused until the queue records it"
        );
        assert_eq!(h.queue.queued_events("s"), 50, "nothing settled yet");
        h.queue.fail_writes(false);
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|a| a.len() >= 50))
            .await
            .unwrap()
            .unwrap();
        // Settled once the queue writes again (paused time: the bound is virtual, no spin).
        tokio::time::timeout(Duration::from_secs(60), async {
            while h.queue.queued_events("s") > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the queue settles once it writes again");
        stop.cancel();
        task.await.unwrap();
        let mut got = sink.accepted.borrow().clone();
        got.sort();
        assert_eq!(got, expected(50), "every line delivered exactly once");
    }

    #[tokio::test]
    async fn a_poison_record_is_isolated_into_the_dead_letter_tree() {
        let h = Harness::with_lines(64, 8).await;
        let poison = b"line-00037\n";
        let sink = Scripted::new(move |n, records: &[Bytes]| {
            if records
                .iter()
                .any(|r| r.windows(poison.len()).any(|w| w == poison))
            {
                Err(SinkError::InvalidBatch {
                    code: "InvalidArgumentException".to_owned(),
                    message: "bad".to_owned(),
                })
            } else {
                all_ok(n, records)
            }
        });
        let got = h.drain(sink, config(), UNPACKED, 63).await;
        // (The batch holding the poison also held good records, so this is a poison record,
        // not a misconfigured stream.)
        assert_eq!(got.len(), 63);
        assert!(!got.contains(&"line-00037".to_owned()));
        let dead = h.queue.dead_letters("s").unwrap();
        let dead_lines: Vec<&[u8]> = dead.iter().flat_map(Entry::iter_lines).collect();
        assert_eq!(dead_lines, vec![&poison[..]]);
        assert_eq!(h.queue.dead_letter_events("s"), 1);
        assert_eq!(h.queue.queued_events("s"), 0);
    }

    fn unpaced(names: &[&str]) -> Vec<DeliveryStream> {
        names
            .iter()
            .map(|n| DeliveryStream {
                name: (*n).to_owned(),
                quota: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn fan_out_uses_every_stream_and_delivers_each_line_once() {
        let h = Harness::with_lines(3000, 10).await;
        let sink = Scripted::new(all_ok);
        let cfg = FlusherConfig {
            max_batch_records: 10,
            ..config()
        };
        let streams = unpaced(&["a", "b", "c"]);
        let mut got = h.drain_to(sink.clone(), cfg, UNPACKED, streams, 3000).await;
        got.sort();
        assert_eq!(got, expected(3000), "every line delivered exactly once");
        let sent = sink.sent.lock().unwrap();
        for name in ["a", "b", "c"] {
            let calls = sent.iter().filter(|(s, ..)| s == name).count();
            assert!(
                calls >= 50,
                "stream {name} got {calls} of {} calls",
                sent.len()
            );
        }
        assert_eq!(h.queue.queued_events("s"), 0);
    }

    #[tokio::test]
    async fn a_stream_that_is_down_does_not_stall_the_others() {
        let h = Harness::with_lines(2000, 10).await;
        let sink = Scripted::new(all_ok);
        *sink.down.lock().unwrap() = Some("b".to_owned());
        let cfg = FlusherConfig {
            max_batch_records: 10,
            retry_base_ms: 200,
            retry_max_ms: 5_000,
            ..config()
        };
        let streams = unpaced(&["a", "b", "c"]);
        let mut got = tokio::time::timeout(
            Duration::from_secs(20),
            h.drain_to(sink.clone(), cfg, UNPACKED, streams, 2000),
        )
        .await
        .expect("the healthy streams drain the queue");
        got.sort();
        assert_eq!(got, expected(2000), "every line delivered exactly once");
        let sent = sink.sent.lock().unwrap();
        let to = |name: &str| sent.iter().filter(|(s, ..)| s == name).count();
        assert!(to("a") > 50 && to("c") > 50, "a {} c {}", to("a"), to("c"));
        // The down stream is backed off, not hammered: a few calls while the others did ~200.
        assert!(to("b") <= 10, "the down stream got {} calls", to("b"));
    }

    /// Paced to a tiny quota, on the paused clock: the flusher never sends more than the quota
    /// allows over any second, and still delivers everything at about the quota's rate.
    #[tokio::test(start_paused = true)]
    async fn a_paced_flusher_keeps_to_the_quota() {
        let h = Harness::with_lines(20_000, 100).await;
        let sink = Scripted::new(all_ok);
        let quota = DirectPutQuota {
            bytes_per_sec: 40_000,
            requests_per_sec: 20,
            records_per_sec: 2_000,
        };
        let streams = vec![DeliveryStream {
            name: "paced".to_owned(),
            quota: Some(quota),
        }];
        let started = Instant::now();
        // 20,000 lines of 11 bytes = 220,000 bytes: 5.5 s of a 40,000 bytes/s quota.
        let got = h
            .drain_to(sink.clone(), config(), PACKED, streams, 20_000)
            .await;
        let took = started.elapsed();
        assert_eq!(got.len(), 20_000);
        assert!(
            took >= Duration::from_secs(5),
            "faster than the quota: {took:?}"
        );
        assert!(took <= Duration::from_secs(8), "too slow: {took:?}");
        let sent = sink.sent.lock().unwrap();
        // The pacer's bucket for a quota of 20 calls/s: two slices long enough to hold two calls
        // each (2 x 0.1 s).
        let slice = 0.2;
        for (i, (_, at, _)) in sent.iter().enumerate() {
            let window: Vec<_> = sent[i..]
                .iter()
                .take_while(|(_, t, _)| *t - *at < Duration::from_secs(1))
                .collect();
            let bytes: usize = window.iter().map(|(.., b)| b).sum();
            let calls = window.len() as f64;
            let allowed = quota.bytes_per_sec as f64 * (1.0 + slice);
            assert!(bytes as f64 <= allowed, "{bytes} bytes in one second");
            let allowed_calls = quota.requests_per_sec as f64 * (1.0 + slice) + 1.0;
            assert!(calls <= allowed_calls, "{calls} calls in one second");
        }
    }

    /// Paced calls carry one slice of the quota, in records of whole 5 KB billing units: small
    /// calls must not cost partly empty units.
    #[tokio::test(start_paused = true)]
    async fn paced_calls_are_one_slice_in_records_of_whole_billing_units() {
        // 5,000 entries of 4 lines of 100 bytes: 2 MB, ~2 s of a 1 MiB/s quota.
        let h = Harness::with_entries(&format!("{}\n", "x".repeat(99)), 4, 5_000).await;
        let sink = Scripted::new(all_ok);
        let quota = crate::firehose_limits::DIRECT_PUT_QUOTA_DEFAULT;
        let streams = vec![DeliveryStream {
            name: "paced".to_owned(),
            quota: Some(quota),
        }];
        let packing = Packing {
            enabled: true,
            max_bytes: FIREHOSE_MAX_RECORD_BYTES,
            max_lines: crate::firehose_limits::MAX_DEAGGREGATED_LINES,
        };
        h.drain_to(sink.clone(), config(), packing, streams, 20_000)
            .await;
        let slice = Pacer::new(quota, Instant::now()).max_call().bytes;
        let unit = BILLING_INCREMENT as usize;
        let calls = sink.calls.lock().unwrap();
        assert!(calls.len() > 100, "{} calls", calls.len());
        for call in calls.iter() {
            let bytes: usize = call.iter().map(Bytes::len).sum();
            assert!(
                bytes <= slice,
                "a call of {bytes} bytes, over the {slice}-byte slice"
            );
            assert!(
                call.iter().all(|r| r.len() <= 2 * unit),
                "records within whole units"
            );
        }
        let ratio = billed_ratio(&calls);
        assert!(ratio < 1.03, "billed / payload = {ratio:.3}");
    }
}
