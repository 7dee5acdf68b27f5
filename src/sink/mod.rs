//! Where the flusher delivers: a [`Sink`] takes one batch of records for one delivery stream
//! and answers per record, like Firehose's `PutRecordBatch`.

use async_trait::async_trait;
use bytes::Bytes;

pub mod file;
pub mod firehose;

pub use file::FileSink;
pub use firehose::FirehoseSink;

/// What became of one record of a batch, by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The sink has it; it may leave the queue.
    Accepted,
    /// Not taken this time (e.g. `ServiceUnavailableException`); send it again later.
    Retry {
        /// The sink's error code, for metrics and logs.
        code: String,
    },
    /// Refused for good; it goes to the dead-letter tree.
    Reject {
        /// The sink's error code.
        code: String,
    },
}

/// Why a whole call failed. Every variant keeps the data: the flusher decides what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Throttling, 5xx, timeouts, broken connections: retry with backoff.
    #[error("retriable {code}: {message}")]
    Retriable {
        /// Error code (`ThrottlingException`, `http_503`, `timeout`, ...).
        code: String,
        /// Details for the log.
        message: String,
    },
    /// The sink is misconfigured (stream missing, access denied, KMS): retry after a long
    /// back-off, and tell the operator what to fix.
    #[error("configuration {code}: {message}")]
    Config {
        /// Error code (`ResourceNotFoundException`, `AccessDeniedException`, ...).
        code: String,
        /// Details for the log.
        message: String,
    },
    /// The call was refused because of its content (`InvalidArgumentException`): some
    /// record in it can never be delivered. The flusher splits the batch to find it.
    #[error("invalid batch {code}: {message}")]
    InvalidBatch {
        /// Error code.
        code: String,
        /// Details for the log.
        message: String,
    },
}

impl SinkError {
    /// The error code, for metric labels.
    pub fn code(&self) -> &str {
        match self {
            SinkError::Retriable { code, .. }
            | SinkError::Config { code, .. }
            | SinkError::InvalidBatch { code, .. } => code,
        }
    }
}

/// A destination for batches of records. Calls may run concurrently (several batches of a
/// stream in flight), so implementations take `&self`.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers `records` (each one sink record, e.g. one Firehose record) to `stream`, and
    /// answers one outcome per record, in order.
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError>;
}
