//! The public API: routing, request limits, and the path from body to durable queue entry,
//! the same for every protocol.
//!
//! route ([`protocol::Table`]) → CORS preflight → method → API key → content type, encoding
//! and size checks → body read under a deadline and a (decompressed) cap → the protocol's
//! [`Protocol::accept`] (validation, records) → [`Queue::append`] / [`Queue::append_batch`]
//! (which return once the records are durable) → the protocol's answer. Every refusal is an
//! [`IngestError`], mapped to its status in one `match`.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::ApiKeys;
use crate::body::{self, BodyError};
use crate::config::{Config, ConfigError};
use crate::cors::Cors;
use crate::metrics;
use crate::protocol::classic::FieldError;
use crate::protocol::{self, Auth, Protocol, Records, Route};
use crate::queue::{Queue, QueueError};
use crate::response::json_response;
use crate::suppression::Suppressions;

/// Seconds a client is told to wait when the queue cannot take more.
const RETRY_AFTER_SECS: u64 = 5;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No such path.
    #[error("not found")]
    NotFound,
    /// An ingest path with a method it does not take (those it does, for `Allow`).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A content type other than JSON or text/plain (classic API only), or an unknown
    /// content encoding.
    #[error("unsupported content type or encoding")]
    UnsupportedMediaType,
    /// No valid API key.
    #[error("a valid API key is required")]
    Unauthorized,
    /// A CORS preflight from an origin that is not allowed.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The body did not arrive within `server.body_read_timeout_ms`.
    #[error("body not received in time")]
    BodyTimeout,
    /// More events than `server.max_events_per_request`.
    #[error("{count} events, over the limit of {max} per request")]
    TooManyEvents {
        /// Events sent.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// The compressed body is corrupt.
    #[error("body could not be decompressed")]
    Corrupt,
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
    /// Over a compatibility protocol's own per-message or per-batch size (Segment answers
    /// 400, and its SDKs drop rather than retry it).
    #[error("{0}")]
    ProtocolTooLarge(String),
    /// The request alone needs more than the queue's whole byte budget.
    #[error(
        "the request needs {bytes} bytes of the queue's budget, more than all of it \
         (queue.max_bytes = {max})"
    )]
    OverQueueBudget {
        /// What it needs.
        bytes: u64,
        /// `queue.max_bytes`.
        max: u64,
    },
    /// The queue's byte budget is spent, or its disk is below the free-space floor.
    #[error("the queue is full; retry later")]
    QueueFull,
    /// The queue failed (I/O, disk full) or is shutting down. The client is told only that;
    /// the queue's error (paths, OS error text) is for the log (see [`queue_error`]).
    #[error("the queue cannot take requests now; retry later")]
    Unavailable(QueueError),
}

impl IngestError {
    /// The status code, and the `reason` label of the rejection metric.
    fn status_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            IngestError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            IngestError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method"),
            IngestError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type")
            }
            IngestError::BodyTooLarge { .. }
            | IngestError::EventTooLarge { .. }
            | IngestError::TooManyEvents { .. }
            | IngestError::OverQueueBudget { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            IngestError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            IngestError::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin"),
            IngestError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            IngestError::Corrupt => (StatusCode::BAD_REQUEST, "corrupt_body"),
            IngestError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            IngestError::ProtocolTooLarge(_) => (StatusCode::BAD_REQUEST, "too_large"),
            IngestError::BodyRead(_) => (StatusCode::BAD_REQUEST, "body_read"),
            IngestError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            IngestError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// The answer. `compat`: for a compatibility API, whose SDKs read errors their own way:
    /// RudderStack's Python SDK (and analytics-python 1.x) take a 4xx as final only when its
    /// body has both `code` and `message`, and otherwise retry it like a network error —
    /// a storm of retries of a request that can never succeed.
    pub fn into_response(self, compat: bool) -> Response<Full<Bytes>> {
        let (status, reason) = self.status_and_reason();
        let mut body = match &self {
            IngestError::Invalid(details) => {
                json!({"error": "invalid_request", "details": details})
            }
            other => json!({"error": reason, "message": other.to_string()}),
        };
        if compat {
            let code = body["error"].clone();
            body["code"] = code;
            if body.get("message").is_none() {
                body["message"] = json!(invalid_summary(&self));
            }
        }
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match self {
            IngestError::MethodNotAllowed(allowed) => {
                headers.insert(ALLOW, HeaderValue::from_static(allowed));
            }
            IngestError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            IngestError::QueueFull | IngestError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

/// One line for an invalid request: its first offending path, and how many there are.
fn invalid_summary(e: &IngestError) -> String {
    match e {
        IngestError::Invalid(details) => match details.as_slice() {
            [] => "invalid request".to_owned(),
            [one] => format!("invalid request: {}: {}", one.path, one.reason),
            [first, rest @ ..] => format!(
                "invalid request: {}: {} (and {} more, see details)",
                first.path,
                first.reason,
                rest.len()
            ),
        },
        other => other.to_string(),
    }
}

/// Serves the ingest API over a queue.
pub struct Ingest {
    queue: Queue,
    max_body_bytes: usize,
    body_timeout: Duration,
    keys: ApiKeys,
    cors: Cors,
    routes: protocol::Table,
    /// Swapped whole on a reload (SIGHUP); a request uses the ones it started with.
    policies: parking_lot::RwLock<std::sync::Arc<crate::policy::Policies>>,
    /// Deletion requests: whose events are not stored.
    suppressions: std::sync::Arc<Suppressions>,
    /// What the policies are rebuilt from on a reload (their files are read again).
    config: Config,
    trusted_proxies: Vec<std::net::IpAddr>,
}

/// Metric label of every route (and `other`).
pub fn route_labels() -> Vec<&'static str> {
    protocol::route_labels()
}

impl Ingest {
    /// An ingest handler writing to `queue` with the limits, keys, CORS and protocols of
    /// `config`, the `policies` built from it, and the suppression list of `queue`.
    pub fn new(
        queue: Queue,
        config: &Config,
        policies: std::sync::Arc<crate::policy::Policies>,
        suppressions: std::sync::Arc<Suppressions>,
    ) -> Result<Ingest, ConfigError> {
        let keys = ApiKeys::with_sources(&config.auth.keys_with_sources()?);
        if keys.enabled() {
            tracing::info!("ingest requires an API key");
        } else {
            tracing::warn!("no API keys configured: ingest is open to anyone who can reach it");
        }
        Ok(Ingest {
            queue,
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
            keys,
            cors: Cors::new(&config.cors),
            routes: protocol::Table::new(config),
            policies: parking_lot::RwLock::new(policies),
            suppressions,
            config: config.clone(),
            trusted_proxies: config.segment.trusted_proxies.clone(),
        })
    }

    /// Reads the tracking plans and hash keys again (SIGHUP) and swaps them in whole; requests
    /// in flight finish under the ones they started with. One that is invalid now is logged
    /// and the running ones stay.
    pub fn reload_policies(&self) {
        match crate::policy::Policies::new(&self.config) {
            Ok(policies) => {
                let policies = std::sync::Arc::new(policies);
                *self.policies.write() = policies.clone();
                self.suppressions.set_policies(policies);
                tracing::info!("tracking plans and privacy policies reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "tracking plans and privacy policies not reloaded: the running ones stay");
            }
        }
    }

    /// Answers one request. Never fails: every problem becomes a status code.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let found = self.routes.find(request.uri().path());
        let label = found.map_or("other", |(_, route)| route.label);
        let credentials = found.is_some_and(|(p, _)| p.cors_credentials());
        // Only the origin is needed after the request is consumed, and only with CORS on.
        let origin = self.cors.allowed_origin(request.headers()).cloned();
        let mut response = match self.accept(found, request).await {
            Ok(Accepted::Answer(response)) => response,
            Ok(Accepted::Preflight(origin, asked, methods)) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                self.cors.preflight(
                    &origin,
                    &asked,
                    methods,
                    credentials,
                    response.headers_mut(),
                );
                response
            }
            Err(e) => {
                let (status, reason) = e.status_and_reason();
                metrics::request_rejected(label, reason);
                // The queue's own error is for the log only (see `queue_error`).
                let cause = match &e {
                    IngestError::Unavailable(cause) => Some(cause.to_string()),
                    _ => None,
                };
                let cause = cause.as_deref();
                tracing::debug!(endpoint = label, status = status.as_u16(), error = %e, cause, "request refused");
                e.into_response(found.is_some_and(|(p, _)| p.compat_errors()))
            }
        };
        if found.is_some() && response.status() != StatusCode::NO_CONTENT {
            self.cors
                .decorate(origin, credentials, response.headers_mut());
        }
        metrics::request(label, response.status().as_u16(), started.elapsed());
        response
    }

    async fn accept(
        &self,
        found: Option<(&dyn Protocol, &'static Route)>,
        request: Request<Incoming>,
    ) -> Result<Accepted, IngestError> {
        let (protocol, route) = found.ok_or(IngestError::NotFound)?;
        if request.method() == Method::OPTIONS && self.cors.enabled() {
            // Preflights carry no credentials, so they are answered before the key check.
            return match self.cors.allowed_origin(request.headers()) {
                Some(origin) => Ok(Accepted::Preflight(
                    origin.clone(),
                    request.headers().clone(),
                    route.methods.header(),
                )),
                None => Err(IngestError::OriginNotAllowed),
            };
        }
        if !route.methods.allow(request.method()) {
            return Err(IngestError::MethodNotAllowed(route.methods.header()));
        }
        let source = match self.keys.enabled() {
            false => Some(crate::config::DEFAULT_SOURCE),
            true => self.keys.source(request.headers(), request.uri().query()),
        };
        if source.is_none() && route.auth == Auth::Key {
            return Err(IngestError::Unauthorized);
        }
        let ip = client_ip(&request, &self.trusted_proxies);
        if route.strict_content_type {
            check_content_type(request.headers().get(CONTENT_TYPE))?;
        }
        let (parts, incoming) = request.into_parts();
        // A GET carries its data in the query string (Snowplow's pixel); its body is not read.
        let body = match parts.method == Method::GET {
            true => Bytes::new(),
            false => self.read_body(&parts.headers, incoming).await?,
        };
        // A UTF-8 byte-order mark is not part of the JSON value; Python's `json` (the
        // replaced service) skipped it, so clients that send one keep working.
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        let accepted = protocol.accept(&protocol::Request {
            route,
            method: &parts.method,
            headers: &parts.headers,
            query: parts.uri.query(),
            path: parts.uri.path(),
            body,
            source,
            keys: &self.keys,
            ip: ip.as_deref(),
            at: SystemTime::now(),
            max_body_bytes: self.max_body_bytes,
        })?;
        let source = source.unwrap_or(crate::config::DEFAULT_SOURCE);
        let shape = protocol.shape();
        // Held until the records are durable: a deletion request waits for it (see
        // `suppression`). Suppressed events are matched on what the client sent, before a
        // policy hashes their ids, and answered as accepted.
        let _admitted = self.suppressions.admit().await;
        let records = self
            .suppressions
            .filter(accepted.records, source, shape.ids);
        let policies = self.policies.read().clone();
        let records = policies.apply(records, source, shape)?;
        self.store(records).await?;
        Ok(Accepted::Answer(accepted.answer))
    }

    /// Reads a request's body under the deadline and the (decompressed) cap.
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        incoming: Incoming,
    ) -> Result<Bytes, IngestError> {
        let encoding = body::encoding(headers).map_err(|_| IngestError::UnsupportedMediaType)?;
        let limit = self.max_body_bytes;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(IngestError::BodyTooLarge { limit });
        }
        body::read(incoming, encoding, limit, self.body_timeout)
            .await
            .map_err(body_error)
    }

    /// Appends a request's records, all or none, and counts them.
    async fn store(&self, records: Records) -> Result<(), IngestError> {
        match records {
            Records::None => {}
            Records::Lines {
                stream,
                ndjson,
                count,
            } => {
                self.queue
                    .append(&stream, &ndjson, count)
                    .await
                    .map_err(queue_error)?;
                metrics::events_accepted(&stream, u64::from(count));
            }
            Records::Messages { source, ids, lines } => {
                let appended = self
                    .queue
                    .append_batch(&protocol::dedup_scope(ids, &source), lines)
                    .await
                    .map_err(queue_error)?;
                if appended.duplicates > 0 {
                    metrics::events_duplicate(&source, u64::from(appended.duplicates));
                }
                // What was stored, stream by stream: a batch with duplicates among its
                // messages stored the others, and they count.
                for (stream, n) in &appended.per_stream {
                    metrics::events_accepted(stream, u64::from(*n));
                }
            }
        }
        Ok(())
    }
}

/// A body that could not be read or decoded, as the client's answer.
pub fn body_error(e: BodyError) -> IngestError {
    match e {
        BodyError::TooLarge { limit } => IngestError::BodyTooLarge { limit },
        BodyError::Timeout(_) => IngestError::BodyTimeout,
        BodyError::UnsupportedEncoding(_) => IngestError::UnsupportedMediaType,
        BodyError::Corrupt(_) => IngestError::Corrupt,
        BodyError::Read(e) => IngestError::BodyRead(e),
    }
}

/// A queue refusal as the client's answer: a stable code and message, never the queue's own
/// text (it names files and carries the OS's error strings).
fn queue_error(e: QueueError) -> IngestError {
    match e {
        QueueError::Full { .. } | QueueError::LowDisk { .. } => IngestError::QueueFull,
        // A retry would meet the same answer (a 503 would be retried until the client gives
        // up); posthog-node halves its batch on a 413, and the halves may fit.
        QueueError::OverBudget { bytes, max } => IngestError::OverQueueBudget { bytes, max },
        // The queue logged these once, when it entered the state (a storage error is raised
        // only by the committer, which logs the failed state as it enters it; a dead part is
        // logged once when it dies); one line per request would flood the log for as long as
        // the state lasts.
        QueueError::Failing | QueueError::Closed | QueueError::Dead(_) | QueueError::Storage(_) => {
            IngestError::Unavailable(e)
        }
        // Nothing on the append path raises these; if one does, it is a bug worth a line.
        other => {
            tracing::error!(error = %other, "cannot queue a request");
            IngestError::Unavailable(other)
        }
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the last
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
fn client_ip<B>(request: &Request<B>, trusted: &[std::net::IpAddr]) -> Option<String> {
    let peer = request.extensions().get::<crate::server::Peer>()?.0.ip();
    if !trusted.contains(&peer) {
        return Some(peer.to_string());
    }
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .collect::<Vec<_>>();
    let client = forwarded.into_iter().rev().find(|a| !trusted.contains(a));
    Some(client.unwrap_or(peer).to_string())
}

/// What a successful request was.
enum Accepted {
    /// Stored (or nothing to store): the protocol's answer.
    Answer(Response<Full<Bytes>>),
    /// A CORS preflight from this allowed origin, with its request's headers and the route's
    /// methods.
    Preflight(HeaderValue, http::HeaderMap, &'static str),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue failure's answer: a stable code and message, and none of the queue's own text
    /// (paths, OS error strings), which is for the log.
    #[tokio::test]
    async fn queue_failures_answer_a_stable_body_without_internals() {
        use http_body_util::BodyExt;
        let path = std::path::PathBuf::from("/var/lib/firehose-edge/queue");
        let os = "No space left on device (os error 28)";
        let cases = [
            (
                QueueError::Storage(format!("{}/db: {os}", path.display())),
                "unavailable",
            ),
            (QueueError::Failing, "unavailable"),
            (QueueError::Closed, "unavailable"),
            (
                QueueError::Io {
                    path: path.clone(),
                    message: "Permission denied (os error 13)".to_owned(),
                },
                "unavailable",
            ),
            (
                QueueError::Damaged {
                    key: 7,
                    why: "checksum mismatch".to_owned(),
                },
                "unavailable",
            ),
            (
                QueueError::UnknownStream("secret_stream".to_owned()),
                "unavailable",
            ),
            (
                QueueError::Full {
                    queued: 10,
                    max: 10,
                },
                "queue_full",
            ),
            (QueueError::LowDisk { free: 1, min: 2 }, "queue_full"),
            (QueueError::Dead("committer"), "unavailable"),
        ];
        // The classic API's body, and the compatibility APIs' (which add `code`).
        for ((e, code), compat) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
            let internal = e.to_string();
            let response = queue_error(e.clone()).into_response(compat);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[RETRY_AFTER], "5");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let message = match *code {
                "unavailable" => "the queue cannot take requests now; retry later",
                _ => "the queue is full; retry later",
            };
            let mut want = json!({"error": code, "message": message});
            if compat {
                want["code"] = json!(code);
            }
            assert_eq!(body, want, "{internal}");
            let text = body.to_string();
            for leak in [
                "/var",
                "os error",
                "secret_stream",
                "checksum",
                "bytes",
                "committer",
            ] {
                assert!(!text.contains(leak), "{text} leaks {leak:?} of {internal}");
            }
        }
    }

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
