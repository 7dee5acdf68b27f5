//! The public API: routing, request limits, and the path from body to durable queue entry.
//!
//! `POST /track|/alias|/profile` → content type and size checks → body read under a cap →
//! [`event::encode`] → [`Queue::append`] (which returns once the records are durable) → 200.
//! Every refusal is an [`IngestError`], mapped to its status in one `match`.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::config::Config;
use crate::event::{self, EncodeError, Endpoint, FieldError};
use crate::metrics;
use crate::queue::{Queue, QueueError};

/// Seconds a client is told to wait when the queue cannot take more.
const RETRY_AFTER_SECS: u64 = 5;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No such path.
    #[error("not found")]
    NotFound,
    /// An ingest path with a method other than POST.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A content type other than JSON or text/plain.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// The body is over `server.max_body_bytes`.
    #[error("body over {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// One event would not fit in a Firehose record.
    #[error("event {index} encodes to {bytes} bytes, over Firehose's 1,024,000-byte record limit")]
    EventTooLarge {
        /// Its position in the request.
        index: usize,
        /// Its encoded size.
        bytes: usize,
    },
    /// The body does not match the schema.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// The body could not be read from the connection.
    #[error("body could not be read: {0}")]
    BodyRead(String),
    /// The queue's byte budget is spent.
    #[error("queue is full")]
    QueueFull,
    /// The queue failed (I/O, disk full) or is shutting down.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

impl IngestError {
    /// The status code, and the `reason` label of the rejection metric.
    fn status_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            IngestError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            IngestError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method"),
            IngestError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type")
            }
            IngestError::BodyTooLarge { .. } | IngestError::EventTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            IngestError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            IngestError::BodyRead(_) => (StatusCode::BAD_REQUEST, "body_read"),
            IngestError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            IngestError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, reason) = self.status_and_reason();
        let body = match &self {
            IngestError::Invalid(details) => {
                json!({"error": "invalid_request", "details": details})
            }
            other => json!({"error": reason, "message": other.to_string()}),
        };
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match self {
            IngestError::MethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("POST"));
            }
            IngestError::QueueFull | IngestError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

/// Serves the ingest API over a queue.
pub struct Ingest {
    queue: Queue,
    max_body_bytes: usize,
    streams: [String; 3],
}

impl Ingest {
    /// An ingest handler writing to `queue` with the limits and stream names of `config`.
    pub fn new(queue: Queue, config: &Config) -> Ingest {
        Ingest {
            queue,
            max_body_bytes: config.server.max_body_bytes,
            streams: [
                config.streams.track.clone(),
                config.streams.alias.clone(),
                config.streams.profile.clone(),
            ],
        }
    }

    fn stream(&self, endpoint: Endpoint) -> &str {
        match endpoint {
            Endpoint::Track => &self.streams[0],
            Endpoint::Alias => &self.streams[1],
            Endpoint::Profile => &self.streams[2],
        }
    }

    /// Answers one request. Never fails: every problem becomes a status code.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let endpoint = Endpoint::from_path(request.uri().path());
        let label = endpoint.map_or("other", Endpoint::name);
        let response = match self.accept(endpoint, request).await {
            Ok(n) => json_response(StatusCode::OK, &json!({"status": "ok", "accepted": n})),
            Err(e) => {
                let (status, reason) = e.status_and_reason();
                metrics::events_rejected(label, reason, 1);
                tracing::debug!(endpoint = label, status = status.as_u16(), error = %e, "request refused");
                e.into_response()
            }
        };
        metrics::request(label, response.status().as_u16(), started.elapsed());
        response
    }

    async fn accept(
        &self,
        endpoint: Option<Endpoint>,
        request: Request<Incoming>,
    ) -> Result<u32, IngestError> {
        let endpoint = endpoint.ok_or(IngestError::NotFound)?;
        if request.method() != Method::POST {
            return Err(IngestError::MethodNotAllowed);
        }
        check_content_type(request.headers().get(CONTENT_TYPE))?;
        let limit = self.max_body_bytes;
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(IngestError::BodyTooLarge { limit });
        }
        let body = Limited::new(request.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    IngestError::BodyTooLarge { limit }
                } else {
                    IngestError::BodyRead(e.to_string())
                }
            })?
            .to_bytes();
        let records = event::encode(endpoint, &body, SystemTime::now()).map_err(|e| match e {
            EncodeError::Invalid(details) => IngestError::Invalid(details),
            EncodeError::RecordTooLarge { index, bytes } => {
                IngestError::EventTooLarge { index, bytes }
            }
        })?;
        let stream = self.stream(endpoint);
        self.queue
            .append(stream, &records.ndjson, records.count)
            .await
            .map_err(|e| match e {
                QueueError::Full { .. } => IngestError::QueueFull,
                other => {
                    tracing::error!(stream, error = %other, "cannot queue a request");
                    IngestError::Unavailable(other.to_string())
                }
            })?;
        metrics::events_accepted(stream, u64::from(records.count));
        Ok(records.count)
    }
}

/// JSON (the default when absent) or `text/plain` (what `navigator.sendBeacon` sends).
fn check_content_type(value: Option<&HeaderValue>) -> Result<(), IngestError> {
    let Some(value) = value else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .map_err(|_| IngestError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(IngestError::UnsupportedMediaType),
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let ok = [
            None,
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("text/plain;charset=UTF-8"),
            Some("Application/JSON"),
        ];
        for v in ok {
            let h = v.map(HeaderValue::from_static);
            assert!(check_content_type(h.as_ref()).is_ok(), "{v:?}");
        }
        for v in [
            "application/x-www-form-urlencoded",
            "text/html",
            "multipart/form-data; boundary=x",
            "",
        ] {
            let h = HeaderValue::from_static(v);
            assert!(check_content_type(Some(&h)).is_err(), "{v:?}");
        }
    }
}
