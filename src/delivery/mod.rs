//! The delivery policy: when a batch may go, where, and what a failure changes. The flusher
//! (`flusher.rs`) reads the queue and settles what came back; everything here is about the
//! sink calls alone, and its tests need no queue.
//!
//! - [`pacing`]: token buckets per delivery stream, sized to its Firehose quota, and the
//!   adapted share (cut on a throttle, grown to balance its cuts at a throttled fraction that
//!   falls as the share grows) that keeps replicas on one stream under its quota and close to
//!   their fair shares without configuration, at any number of them; [`pacing::sim`] runs
//!   replicas against a model of Firehose's meter;
//! - [`fanout`]: one queue stream over several delivery streams, each paced and backed off on
//!   its own;
//! - [`backoff`]: exponential back-off with full jitter, never giving up;
//! - `send.rs`: one call, and the splitting of a call refused for its content until the
//!   offending record is alone.

pub mod backoff;
pub mod fanout;
pub mod pacing;
mod send;

pub use backoff::Backoff;
pub use fanout::{CallReport, Choice, Targets};
pub use pacing::{CallSize, Pacer};
pub use send::{Delivered, deliver_batch};

use crate::firehose_limits::DirectPutQuota;
use crate::sink::{RecordOutcome, SinkError};

/// One delivery stream a queue stream is sent to, and the quota it is paced to (`None`: not
/// paced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStream {
    /// The Firehose delivery stream name.
    pub name: String,
    /// What to pace it to.
    pub quota: Option<DirectPutQuota>,
}

/// Error codes by which Firehose says "too fast": a call over the stream's quota is refused
/// with `ServiceUnavailableException` ("Slow down."), sent as a whole-call error or per record
/// of a `PutRecordBatch`; `ThrottlingException` and `LimitExceededException` are the API's
/// own rate limits. <https://docs.aws.amazon.com/firehose/latest/APIReference/API_PutRecordBatch.html>
pub const THROTTLING_CODES: [&str; 3] = [
    "ServiceUnavailableException",
    "ThrottlingException",
    "LimitExceededException",
];

/// Whether `code` means the stream is being sent more than it takes.
pub fn is_throttling(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

impl Delivered {
    /// What this delivery tells the policy, for a call sent at `sent_at` that was `full`.
    pub fn report(&self, sent_at: tokio::time::Instant, full: bool) -> CallReport {
        let record_throttled = self.outcomes.iter().any(|o| match o {
            RecordOutcome::Retry { code } => is_throttling(code),
            _ => false,
        });
        let call_throttled = self.error.as_ref().is_some_and(|e| is_throttling(e.code()));
        CallReport {
            sent_at,
            throttled: record_throttled || call_throttled,
            retry: self.error.is_some()
                || self
                    .outcomes
                    .iter()
                    .any(|o| matches!(o, RecordOutcome::Retry { .. })),
            config_error: matches!(self.error, Some(SinkError::Config { .. })),
            full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_per_call_and_per_record() {
        let t = tokio::time::Instant::now();
        let retry = |code: &str| RecordOutcome::Retry {
            code: code.to_owned(),
        };
        let partial = Delivered {
            outcomes: vec![
                RecordOutcome::Accepted,
                retry("ServiceUnavailableException"),
            ],
            error: None,
        };
        let r = partial.report(t, true);
        assert!(r.throttled && r.retry && !r.config_error);
        let internal = Delivered {
            outcomes: vec![retry("InternalFailure")],
            error: None,
        };
        assert!(!internal.report(t, true).throttled);
        let call = Delivered {
            outcomes: vec![retry("ThrottlingException")],
            error: Some(SinkError::Retriable {
                code: "ThrottlingException".to_owned(),
                message: String::new(),
            }),
        };
        assert!(call.report(t, false).throttled);
        let missing = Delivered {
            outcomes: vec![retry("ResourceNotFoundException")],
            error: Some(SinkError::Config {
                code: "ResourceNotFoundException".to_owned(),
                message: String::new(),
            }),
        };
        let r = missing.report(t, false);
        assert!(r.config_error && !r.throttled);
        let fine = Delivered {
            outcomes: vec![RecordOutcome::Accepted],
            error: None,
        };
        assert_eq!(
            fine.report(t, true),
            CallReport {
                sent_at: t,
                throttled: false,
                retry: false,
                config_error: false,
                full: true
            }
        );
    }
}
