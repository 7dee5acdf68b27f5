//! The admin listener: `/healthz` (the process runs), `/readyz` (it should get traffic),
//! `/metrics` (Prometheus) and `/suppressions` (deletion requests: list, add, remove; only
//! with the admin key). Kept off the ingest port so the public never sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::metrics;
use crate::queue::Queue;
use crate::response::json_response;
use crate::suppression::{ChangeError, Suppressions};

/// The largest `/suppressions` body read (10 000 identifiers of 100 bytes fit).
const MAX_CHANGE_BYTES: usize = 4 << 20;
/// How long a `/suppressions` body may take to arrive.
const CHANGE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// State the admin endpoints report on.
pub struct Admin {
    queue: Queue,
    streams: Vec<String>,
    prometheus: Option<PrometheusHandle>,
    shutting_down: Arc<AtomicBool>,
    /// The deletion-request API, and the key it asks for (none: it refuses everyone).
    suppressions: Option<(Arc<Suppressions>, Option<Vec<u8>>)>,
}

/// The body of a `/suppressions` change.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    ids: Vec<String>,
}

impl Admin {
    /// Admin endpoints over `queue`; `prometheus` renders `/metrics` when a recorder is installed.
    pub fn new(
        queue: Queue,
        streams: Vec<String>,
        prometheus: Option<PrometheusHandle>,
        shutting_down: Arc<AtomicBool>,
    ) -> Admin {
        Admin {
            queue,
            streams,
            prometheus,
            shutting_down,
            suppressions: None,
        }
    }

    /// Serves `/suppressions` over `suppressions`, to requests that bear `key`.
    pub fn with_suppressions(self, suppressions: Arc<Suppressions>, key: Option<Vec<u8>>) -> Admin {
        Admin {
            suppressions: Some((suppressions, key)),
            ..self
        }
    }

    /// Whether the service should receive traffic: not shutting down, and the queue takes
    /// appends (under its budget and its free-space floor, storage working). A sink outage
    /// does not make it unready: buffering through one is its job.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Acquire) {
            Err("shutting down")
        } else if let Some(why) = self.queue.unready_reason() {
            Err(why)
        } else {
            Ok(())
        }
    }

    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/suppressions" {
            return self.suppressions(request).await;
        }
        if request.method() != Method::GET {
            return json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method"}));
        }
        match request.uri().path() {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => match self.ready() {
                Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
                Err(why) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unready", "reason": why}),
                ),
            },
            "/metrics" => match &self.prometheus {
                Some(handle) => {
                    metrics::set_queue_gauges(&self.queue.gauges(&self.streams));
                    let mut response = Response::new(Full::new(Bytes::from(handle.render())));
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                }
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no metrics recorder"}),
                ),
            },
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    /// `/suppressions`: `GET` lists, `POST {"ids": [...]}` adds (and erases their queued
    /// events), `DELETE {"ids": [...]}` removes. Only with `Authorization: Bearer <admin key>`.
    async fn suppressions(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some((suppressions, key)) = &self.suppressions else {
            return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
        };
        let Some(key) = key else {
            return json_response(
                StatusCode::FORBIDDEN,
                &json!({"error": "no_admin_key", "message": "no admin key is configured (admin.api_key_file or admin.api_key_env): deletion requests are refused"}),
            );
        };
        if !bears(request.headers(), key) {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "unauthorized", "message": "send the admin key as Authorization: Bearer <key>"}),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let method = request.method().clone();
        if method == Method::GET {
            return match suppressions.list() {
                Ok(listed) => json_response(StatusCode::OK, &json!({"suppressed": listed})),
                Err(e) => change_failed(&ChangeError::Queue(e)),
            };
        }
        if method != Method::POST && method != Method::DELETE {
            let mut response =
                json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method"}));
            response.headers_mut().insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, POST, DELETE"),
            );
            return response;
        }
        let body = match crate::body::read(
            request.into_body(),
            crate::body::Encoding::Identity,
            MAX_CHANGE_BYTES,
            CHANGE_READ_TIMEOUT,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "body", "message": e.to_string()}),
                );
            }
        };
        let ids = match serde_json::from_slice::<Change>(&body) {
            Ok(change) => change.ids,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid", "message": format!("expected {{\"ids\": [\"…\"]}}: {e}")}),
                );
            }
        };
        let answer = match method == Method::POST {
            true => suppressions
                .add(ids)
                .await
                .map(|added| serde_json::to_value(added).expect("serializes")),
            false => suppressions
                .remove(ids)
                .await
                .map(|removed| json!({"removed": removed})),
        };
        match answer {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(e) => change_failed(&e),
        }
    }
}

/// Whether the request bears `key` as its bearer token (compared in constant time).
fn bears(headers: &http::HeaderMap, key: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    token.len() == key.len() && bool::from(token.ct_eq(key))
}

/// A change that was refused (400) or that the queue could not record (503).
fn change_failed(e: &ChangeError) -> Response<Full<Bytes>> {
    match e {
        ChangeError::Invalid(why) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid", "message": why}),
        ),
        ChangeError::Queue(e) => {
            tracing::error!(error = %e, "a deletion request could not be recorded");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "unavailable", "message": "the queue could not record it; retry (an identifier added stays pending until its erasure finishes)"}),
            )
        }
    }
}
