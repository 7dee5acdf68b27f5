//! One batch's delivery: the sink call, and the splitting of a call refused for its content
//! until each offending record is alone.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::metrics;
use crate::sink::{RecordOutcome, Sink, SinkError};

/// What one batch's delivery came to.
#[derive(Debug)]
pub struct Delivered {
    /// One outcome per record, in order.
    pub outcomes: Vec<RecordOutcome>,
    /// The first call-level error, which decides the back-off.
    pub error: Option<SinkError>,
}

/// Delivers one batch to `stream`. If splitting found *every* record invalid, the cause is not a
/// poison record but the stream's setup (e.g. a wrong record format for a transform): nothing
/// is dead-lettered, and the batch is retried after the configuration-error back-off.
pub async fn deliver_batch(sink: &dyn Sink, stream: &str, records: Vec<Bytes>) -> Delivered {
    let n = records.len();
    let delivered = deliver(sink, stream, records).await;
    let all_rejected = delivered
        .outcomes
        .iter()
        .all(|o| matches!(o, RecordOutcome::Reject { .. }));
    if n > 1 && all_rejected {
        let message = format!("all {n} records of a batch were refused as invalid");
        return failed_call(
            stream,
            n,
            SinkError::Config {
                code: "InvalidArgumentException".to_owned(),
                message,
            },
        );
    }
    delivered
}

/// Sends `records`, splitting a batch refused for its content until each offending record is
/// alone (then it is rejected for good). Always answers one outcome per record. (The halves
/// are not paced: a refused call is rare, and its halves are never larger than it was.)
fn deliver<'a>(
    sink: &'a dyn Sink,
    stream: &'a str,
    records: Vec<Bytes>,
) -> Pin<Box<dyn Future<Output = Delivered> + Send + 'a>> {
    Box::pin(async move {
        let n = records.len();
        let started = std::time::Instant::now();
        let result = sink.put_batch(stream, records.clone()).await;
        metrics::put_batch(stream, started.elapsed());
        match result {
            Ok(outcomes) if outcomes.len() == n => Delivered {
                outcomes,
                error: None,
            },
            Ok(outcomes) => {
                let message = format!("{} outcomes for {n} records", outcomes.len());
                failed_call(
                    stream,
                    n,
                    SinkError::Retriable {
                        code: "bad_response".to_owned(),
                        message,
                    },
                )
            }
            Err(SinkError::InvalidBatch { code, message }) if n > 1 => {
                tracing::warn!(stream, records = n, %code, %message, "batch refused for its content; splitting it to isolate the record");
                let mut right = records;
                let left = right.drain(..n / 2).collect();
                let mut first = deliver(sink, stream, left).await;
                let second = deliver(sink, stream, right).await;
                first.outcomes.extend(second.outcomes);
                Delivered {
                    outcomes: first.outcomes,
                    error: first.error.or(second.error),
                }
            }
            Err(SinkError::InvalidBatch { code, .. }) => Delivered {
                outcomes: vec![RecordOutcome::Reject { code }],
                error: None,
            },
            Err(e) => failed_call(stream, n, e),
        }
    })
}

/// A call that failed as a whole: every record is retried.
pub(crate) fn failed_call(stream: &str, n: usize, error: SinkError) -> Delivered {
    match &error {
        SinkError::Config { code, message } => tracing::error!(
            stream,
            %code,
            %message,
            "sink configuration error: check that the delivery stream exists and this service may write to it; records are kept"
        ),
        e => tracing::warn!(stream, error = %e, records = n, "sink call failed; will retry"),
    }
    Delivered {
        outcomes: vec![
            RecordOutcome::Retry {
                code: error.code().to_owned()
            };
            n
        ],
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// Refuses any call holding a record that contains `poison`, as Firehose refuses a call
    /// with an invalid record; records every call's size.
    struct Poisoned {
        poison: &'static [u8],
        calls: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Sink for Poisoned {
        async fn put_batch(
            &self,
            _: &str,
            records: Vec<Bytes>,
        ) -> Result<Vec<RecordOutcome>, SinkError> {
            self.calls.lock().unwrap().push(records.len());
            if records.iter().any(|r| {
                self.poison.is_empty() || r.windows(self.poison.len()).any(|w| w == self.poison)
            }) {
                return Err(SinkError::InvalidBatch {
                    code: "InvalidArgumentException".to_owned(),
                    message: "bad".to_owned(),
                });
            }
            Ok(vec![RecordOutcome::Accepted; records.len()])
        }
    }

    fn records(names: &[&'static str]) -> Vec<Bytes> {
        names
            .iter()
            .map(|n| Bytes::from_static(n.as_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn splitting_isolates_the_poison_record() {
        let sink = Poisoned {
            poison: b"bad",
            calls: Mutex::default(),
        };
        let batch = records(&["a\n", "b\n", "bad\n", "c\n", "d\n", "e\n", "f\n", "g\n"]);
        let delivered = deliver_batch(&sink, "s", batch).await;
        assert!(delivered.error.is_none());
        for (i, outcome) in delivered.outcomes.iter().enumerate() {
            let rejected = matches!(outcome, RecordOutcome::Reject { .. });
            assert_eq!(rejected, i == 2, "record {i}: {outcome:?}");
        }
        // Halving, depth first: 8 refused → 4 refused → its 2 healthy, 2 refused → 1 refused
        // (the poison), 1 healthy; then the other 4.
        assert_eq!(*sink.calls.lock().unwrap(), vec![8, 4, 2, 2, 1, 1, 4]);
    }

    #[tokio::test]
    async fn a_batch_refused_whole_is_a_configuration_error_not_dead_letters() {
        let sink = Poisoned {
            poison: b"",
            calls: Mutex::default(),
        };
        let delivered = deliver_batch(&sink, "s", records(&["a\n", "b\n"])).await;
        assert!(matches!(delivered.error, Some(SinkError::Config { .. })));
        assert!(
            delivered
                .outcomes
                .iter()
                .all(|o| matches!(o, RecordOutcome::Retry { .. }))
        );
    }
}
