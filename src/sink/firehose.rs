//! The Firehose sink: one `PutRecordBatch` call per batch, answered per record.
//!
//! The flusher owns retries, so the SDK's own retry loop is turned off: it would hide
//! attempts from the metrics and multiply them under an outage (and it does not retry a
//! `ServiceUnavailableException` sent with HTTP 400, nor per-record failures, anyway). Every
//! error is classified here by its code, or by its HTTP status when the body has none (a 500
//! with an HTML body), into retriable, configuration, or "this batch is invalid".

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::http::HttpResponse;
use aws_sdk_firehose::config::{Region, SharedCredentialsProvider};
use aws_sdk_firehose::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use bytes::Bytes;

use super::{RecordOutcome, Sink, SinkError};
use crate::config::SinkConfig;

/// Error codes that mean the sink is set up wrong: wait long, tell the operator, keep the data.
const CONFIG_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "InvalidKMSResourceException",
    "InvalidSourceException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
];

/// Delivers batches to Kinesis Data Firehose.
#[derive(Debug, Clone)]
pub struct FirehoseSink {
    client: Client,
}

impl FirehoseSink {
    /// A sink for `config` (region, optional endpoint, timeouts). Credentials come from
    /// `credentials` when given (tests), else from the standard AWS chain: environment,
    /// shared profile, web identity (IRSA), ECS, IMDS.
    pub async fn connect(
        config: &SinkConfig,
        credentials: Option<SharedCredentialsProvider>,
    ) -> FirehoseSink {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                    .operation_attempt_timeout(Duration::from_millis(config.request_timeout_ms))
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        FirehoseSink {
            client: Client::new(&loader.load().await),
        }
    }
}

#[async_trait]
impl Sink for FirehoseSink {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        let records: Vec<Record> = records
            .into_iter()
            .map(|data| {
                Record::builder()
                    .data(Blob::new(Vec::from(data)))
                    .build()
                    .expect("data is set")
            })
            .collect();
        let output = self
            .client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(classify)?;
        Ok(output
            .request_responses()
            .iter()
            .map(|r| match r.error_code() {
                None => RecordOutcome::Accepted,
                // ServiceUnavailableException and InternalFailure are the documented codes;
                // anything else is retried too: a record is never dropped on a guess.
                Some(code) => RecordOutcome::Retry {
                    code: bounded_code(code),
                },
            })
            .collect())
    }
}

/// Maps an SDK error to what the flusher should do about it.
fn classify(error: SdkError<PutRecordBatchError, HttpResponse>) -> SinkError {
    let message = aws_sdk_firehose::error::DisplayErrorContext(&error).to_string();
    match &error {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let code = e.err().code().map(bounded_code);
            from_code(code, status, message)
        }
        SdkError::TimeoutError(_) => SinkError::Retriable {
            code: "timeout".to_owned(),
            message,
        },
        SdkError::DispatchFailure(d) => SinkError::Retriable {
            code: if d.is_timeout() {
                "timeout"
            } else {
                "connection"
            }
            .to_owned(),
            message,
        },
        SdkError::ResponseError(r) => SinkError::Retriable {
            code: format!("http_{}", r.raw().status().as_u16()),
            message,
        },
        // The request could not even be built: missing credentials or region.
        SdkError::ConstructionFailure(_) => SinkError::Config {
            code: "construction".to_owned(),
            message,
        },
        _ => SinkError::Retriable {
            code: "unknown".to_owned(),
            message,
        },
    }
}

/// Classifies by error code, falling back to the HTTP status when the body carried none.
fn from_code(code: Option<String>, status: u16, message: String) -> SinkError {
    match code {
        Some(code) if code == "InvalidArgumentException" => {
            SinkError::InvalidBatch { code, message }
        }
        Some(code) if CONFIG_CODES.contains(&code.as_str()) || code.starts_with("KMS") => {
            SinkError::Config { code, message }
        }
        // ServiceUnavailableException (sent with 400 or 500), ThrottlingException,
        // InternalFailure, and anything unknown: retried with back-off, data kept.
        Some(code) => SinkError::Retriable { code, message },
        None => SinkError::Retriable {
            code: format!("http_{status}"),
            message,
        },
    }
}

/// Keeps metric labels bounded: AWS error codes are identifiers; anything else is `other`.
fn bounded_code(code: &str) -> String {
    if code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        code.to_owned()
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        let m = || "m".to_owned();
        let retriable = |c: Option<&str>, s| {
            matches!(
                from_code(c.map(str::to_owned), s, m()),
                SinkError::Retriable { .. }
            )
        };
        assert!(retriable(Some("ServiceUnavailableException"), 400));
        assert!(retriable(Some("ServiceUnavailableException"), 500));
        assert!(retriable(Some("ThrottlingException"), 400));
        assert!(retriable(Some("InternalFailure"), 500));
        assert!(retriable(None, 500));
        assert!(retriable(None, 502));
        assert!(
            matches!(from_code(None, 503, m()), SinkError::Retriable { code, .. } if code == "http_503")
        );
        for code in [
            "ResourceNotFoundException",
            "AccessDeniedException",
            "InvalidKMSResourceException",
            "KMSDisabledException",
        ] {
            assert!(
                matches!(
                    from_code(Some(code.to_owned()), 400, m()),
                    SinkError::Config { .. }
                ),
                "{code}"
            );
        }
        assert!(matches!(
            from_code(Some("InvalidArgumentException".to_owned()), 400, m()),
            SinkError::InvalidBatch { .. }
        ));
        assert_eq!(bounded_code("Weird code <script>"), "other");
    }
}
