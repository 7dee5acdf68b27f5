//! Every metric name, in one place. Each function records one fact; the recorder (the
//! Prometheus exporter) is installed by `main`, so library code and tests never fight over a
//! global. Label values are bounded: endpoint and stream names come from config, reasons and
//! error codes from fixed sets, never from user input.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// HTTP requests answered, by endpoint (`track`, `alias`, `profile`, `other`) and status.
pub const REQUESTS: &str = "firehose_edge_requests_total";
/// Time to answer, durability wait included.
pub const REQUEST_DURATION: &str = "firehose_edge_request_duration_seconds";
/// Records made durable, by queue stream: what was stored (a `/v1` message skipped as a
/// duplicate is not stored again, and is counted in [`EVENTS_DUPLICATE`] instead).
pub const EVENTS_ACCEPTED: &str = "firehose_edge_events_accepted_total";
/// Requests refused, by endpoint and reason. Requests, not events: most refusals (401, 413,
/// 415, a body that is not JSON) come before there are events to count, and a counter whose
/// unit changed with the reason could not be summed. (It was `events_rejected_total`, which
/// counted requests all the same.)
pub const REQUESTS_REJECTED: &str = "firehose_edge_requests_rejected_total";
/// Records waiting in the queue.
pub const QUEUE_DEPTH: &str = "firehose_edge_queue_depth_events";
/// Size of the queue's files on disk.
pub const QUEUE_DISK_BYTES: &str = "firehose_edge_queue_disk_bytes";
/// Bytes counted against `queue.max_bytes`.
pub const QUEUE_BUDGET_BYTES: &str = "firehose_edge_queue_budget_used_bytes";
/// Age of the oldest queued record: the outage alarm.
pub const QUEUE_OLDEST_AGE: &str = "firehose_edge_queue_oldest_event_age_seconds";
/// Events the sink accepted (events, not packed records).
pub const RECORDS_DELIVERED: &str = "firehose_edge_records_delivered_total";
/// Per-record and per-call failures, by error code.
pub const RECORD_FAILURES: &str = "firehose_edge_record_failures_total";
/// Latency of one sink call.
pub const PUT_BATCH_DURATION: &str = "firehose_edge_put_batch_duration_seconds";
/// Bytes Firehose bills: each record rounded up to 5 KB.
pub const BILLED_BYTES: &str = "firehose_edge_billed_bytes_total";
/// Records in the dead-letter tree.
pub const DEAD_LETTER_EVENTS: &str = "firehose_edge_dead_letter_events";
/// Group flushes of the queue.
pub const QUEUE_FLUSHES: &str = "firehose_edge_queue_flushes_total";
/// Queue entries merged into others by the compactor (values sled no longer holds).
pub const QUEUE_MERGED: &str = "firehose_edge_queue_merged_entries_total";
/// In-process re-opens of sled that keep its snapshot fresh.
pub const QUEUE_REOPENS: &str = "firehose_edge_queue_reopens_total";

/// Queue directories that would not open and were moved aside at start.
pub const QUEUE_MOVED_ASIDE: &str = "firehose_edge_queue_moved_aside_total";
/// Acknowledged events found missing (at start, against the manifest, or in damaged
/// entries), by stream.
pub const QUEUE_LOST_EVENTS: &str = "firehose_edge_queue_lost_events_total";
/// 1 while the queue's storage fails (writes or flushes return errors), else 0.
pub const QUEUE_STORAGE_FAILED: &str = "firehose_edge_queue_storage_failed";
/// 1 while the queue's file system is below `queue.min_free_bytes`, else 0.
pub const QUEUE_LOW_DISK: &str = "firehose_edge_queue_low_disk";
/// Free space of the queue's file system at the last reading.
pub const QUEUE_DISK_FREE_BYTES: &str = "firehose_edge_queue_disk_free_bytes";

/// Messages answered as accepted but not queued again: their `messageId` was already
/// accepted from that source within the dedup window, by source.
pub const EVENTS_DUPLICATE: &str = "firehose_edge_events_duplicate_total";
/// The share of its Firehose quota a delivery stream is paced to (1 = the whole quota; it
/// shrinks on throttling and grows back), by delivery stream.
pub const PACING_SHARE: &str = "firehose_edge_pacing_quota_share";

/// Events checked against their source's tracking plan, by source, event (a name the plan
/// knows, `identify`, `group`, or `other`: bounded by the plans) and outcome (`as_planned`,
/// `blocked`, `tagged`, `routed`, `unplanned_allowed`, `unplanned_blocked`,
/// `unplanned_routed`).
pub const PLAN_EVENTS: &str = "firehose_edge_plan_events_total";

/// Events not stored because they name a suppressed user (a deletion request), answered as
/// accepted, by source.
pub const EVENTS_SUPPRESSED: &str = "firehose_edge_events_suppressed_total";
/// Queued (or dead-lettered) events of a suppressed user erased before delivery, by queue
/// stream.
pub const QUEUE_ERASED: &str = "firehose_edge_queue_erased_events_total";

/// Long-lived parts of the service that died (panicked or returned), by component: each
/// stops the process so that its supervisor restarts it. Any increase is a bug to report.
pub const COMPONENT_FAILURES: &str = "firehose_edge_component_failures_total";

/// Every `component` label of [`COMPONENT_FAILURES`].
pub const COMPONENTS: &[&str] = &[
    "committer",
    "health",
    "compactor",
    "flusher",
    "ingest_server",
    "admin_server",
];

/// Every `reason` label of [`REQUESTS_REJECTED`].
pub const REJECT_REASONS: &[&str] = &[
    "not_found",
    "method",
    "content_type",
    "too_large",
    "unauthorized",
    "origin",
    "timeout",
    "corrupt_body",
    "invalid",
    "body_read",
    "queue_full",
    "unavailable",
];

/// Bucket bounds of the duration histograms, in seconds: from a fast fsync'd answer
/// (sub-millisecond) to a Firehose call waiting out its timeout (tens of seconds).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The Prometheus exporter as the service configures it: durations as histograms (which
/// aggregate across replicas, unlike the exporter's default summaries). `main` installs it.
pub fn exporter() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::Matcher;
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for name in [REQUEST_DURATION, PUT_BATCH_DURATION] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), &DURATION_BUCKETS)
            .expect("the buckets are not empty");
    }
    builder
}

pub use crate::firehose_limits::BILLING_INCREMENT;

/// One answered request.
pub fn request(endpoint: &'static str, status: u16, elapsed: Duration) {
    counter!(REQUESTS, "endpoint" => endpoint, "status" => status.to_string()).increment(1);
    histogram!(REQUEST_DURATION, "endpoint" => endpoint).record(elapsed.as_secs_f64());
}

/// `n` records of `stream` made durable.
pub fn events_accepted(stream: &str, n: u64) {
    counter!(EVENTS_ACCEPTED, "stream" => stream.to_owned()).increment(n);
}

/// One request to `endpoint` refused for `reason` (one of [`REJECT_REASONS`]).
pub fn request_rejected(endpoint: &'static str, reason: &'static str) {
    counter!(REQUESTS_REJECTED, "endpoint" => endpoint, "reason" => reason).increment(1);
}

/// The latency of one sink call of `stream`.
pub fn put_batch(stream: &str, elapsed: Duration) {
    histogram!(PUT_BATCH_DURATION, "stream" => stream.to_owned()).record(elapsed.as_secs_f64());
}

/// `events` events in records of the given sizes were accepted by the sink.
pub fn delivered(stream: &str, events: u64, record_sizes: impl Iterator<Item = usize>) {
    counter!(RECORDS_DELIVERED, "stream" => stream.to_owned()).increment(events);
    let billed: u64 = record_sizes.map(|n| billed_bytes(n as u64)).sum();
    counter!(BILLED_BYTES, "stream" => stream.to_owned()).increment(billed);
}

/// Bytes Firehose bills for one record of `n` bytes.
pub fn billed_bytes(n: u64) -> u64 {
    n.div_ceil(BILLING_INCREMENT).max(1) * BILLING_INCREMENT
}

/// `n` failures (records or calls) of `stream` with `code`.
pub fn failures(stream: &str, code: &str, n: u64) {
    counter!(RECORD_FAILURES, "stream" => stream.to_owned(), "error_code" => code.to_owned())
        .increment(n);
}

/// The queue would not open and was moved aside.
pub fn queue_moved_aside() {
    counter!(QUEUE_MOVED_ASIDE).increment(1);
}

/// One group flush of the queue.
pub fn queue_flush() {
    counter!(QUEUE_FLUSHES).increment(1);
}

/// The compactor merged `n` entries into one.
pub fn queue_merged(n: u64) {
    counter!(QUEUE_MERGED).increment(n);
}

/// sled was re-opened so that it writes a fresh snapshot.
pub fn queue_reopened() {
    counter!(QUEUE_REOPENS).increment(1);
}

/// `n` messages from `source` skipped as duplicates.
pub fn events_duplicate(source: &str, n: u64) {
    counter!(EVENTS_DUPLICATE, "source" => source.to_owned()).increment(n);
}

/// `n` events of `source` not stored: their user is suppressed.
pub fn events_suppressed(source: &str, n: u64) {
    counter!(EVENTS_SUPPRESSED, "source" => source.to_owned()).increment(n);
}

/// `n` queued events of `stream` erased (their user is suppressed).
pub fn queue_erased(stream: &str, n: u64) {
    counter!(QUEUE_ERASED, "stream" => stream.to_owned()).increment(n);
}

/// An event of `source` checked against its plan (see [`PLAN_EVENTS`]).
pub fn plan_event(source: &str, event: &str, outcome: &'static str) {
    counter!(PLAN_EVENTS, "source" => source.to_owned(), "event" => event.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// The pacing share of delivery stream `stream` (see [`PACING_SHARE`]).
pub fn pacing_share(stream: &str, share: f64) {
    gauge!(PACING_SHARE, "stream" => stream.to_owned()).set(share);
}

/// `n` acknowledged events of `stream` found missing.
pub fn queue_lost_events(stream: &str, n: u64) {
    counter!(QUEUE_LOST_EVENTS, "stream" => stream.to_owned()).increment(n);
}

/// Creates every counter whose labels are known at start at zero, so that
/// `increase(...)`-based alerts can fire on the first event (a counter that does not exist
/// yet has no increase).
pub fn init_counters(streams: &[String], endpoints: &[&'static str]) {
    counter!(QUEUE_MOVED_ASIDE).increment(0);
    counter!(QUEUE_FLUSHES).increment(0);
    counter!(QUEUE_MERGED).increment(0);
    counter!(QUEUE_REOPENS).increment(0);
    for &component in COMPONENTS {
        counter!(COMPONENT_FAILURES, "component" => component).increment(0);
    }
    for stream in streams {
        for name in [
            QUEUE_LOST_EVENTS,
            QUEUE_ERASED,
            EVENTS_ACCEPTED,
            RECORDS_DELIVERED,
            BILLED_BYTES,
        ] {
            counter!(name, "stream" => stream.clone()).increment(0);
        }
    }
    for &endpoint in endpoints {
        for &reason in REJECT_REASONS {
            counter!(REQUESTS_REJECTED, "endpoint" => endpoint, "reason" => reason).increment(0);
        }
    }
}

/// A long-lived component died (see [`COMPONENT_FAILURES`]).
pub fn component_failed(component: &'static str) {
    counter!(COMPONENT_FAILURES, "component" => component).increment(1);
}

/// What the queue's gauges show (taken by the queue, so this module depends on nothing).
#[derive(Debug, Clone, Default)]
pub struct QueueGauges {
    /// Per stream.
    pub streams: Vec<StreamGauges>,
    /// Size of sled's files.
    pub disk_bytes: u64,
    /// Bytes counted against the budget.
    pub budget_bytes: u64,
    /// Free space of the queue's file system.
    pub free_bytes: u64,
    /// Below the free-space floor.
    pub low_disk: bool,
    /// Storage failing.
    pub storage_failed: bool,
}

/// One stream's gauges.
#[derive(Debug, Clone, Default)]
pub struct StreamGauges {
    /// The stream.
    pub stream: String,
    /// Records queued.
    pub depth: u64,
    /// Age of the oldest queued record.
    pub oldest_age_seconds: f64,
    /// Records in the dead-letter tree.
    pub dead_letters: u64,
}

/// Sets the queue gauges; called on every scrape, so they are current without a timer.
pub fn set_queue_gauges(g: &QueueGauges) {
    for s in &g.streams {
        let labels = [("stream", s.stream.clone())];
        gauge!(QUEUE_DEPTH, &labels).set(s.depth as f64);
        gauge!(QUEUE_OLDEST_AGE, &labels).set(s.oldest_age_seconds);
        gauge!(DEAD_LETTER_EVENTS, &labels).set(s.dead_letters as f64);
    }
    gauge!(QUEUE_DISK_BYTES).set(g.disk_bytes as f64);
    gauge!(QUEUE_BUDGET_BYTES).set(g.budget_bytes as f64);
    gauge!(QUEUE_DISK_FREE_BYTES).set(g.free_bytes.min(1 << 62) as f64);
    gauge!(QUEUE_LOW_DISK).set(f64::from(u8::from(g.low_disk)));
    gauge!(QUEUE_STORAGE_FAILED).set(f64::from(u8::from(g.storage_failed)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_rounds_up_to_5kb() {
        assert_eq!(billed_bytes(1), 5120);
        assert_eq!(billed_bytes(200), 5120);
        assert_eq!(billed_bytes(5120), 5120);
        assert_eq!(billed_bytes(5121), 10240);
    }
}
