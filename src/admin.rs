//! The admin listener: `/healthz` (the process runs), `/readyz` (it should get traffic) and
//! `/metrics` (Prometheus). Kept off the ingest port so the public never sees it.

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

/// State the admin endpoints report on.
pub struct Admin {
    queue: Queue,
    streams: Vec<String>,
    prometheus: Option<PrometheusHandle>,
    shutting_down: Arc<AtomicBool>,
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
}
