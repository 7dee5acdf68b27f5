//! firehose-edge: analytics events over HTTP into a durable local queue, drained into
//! Amazon Kinesis Data Firehose (or a local directory).
//!
//! The data path, module by module:
//!
//! 1. [`server`] accepts HTTP/1.1 connections under timeouts and a connection cap;
//!    [`ingest`] routes each request to its protocol, checks API keys ([`auth`]) and CORS
//!    ([`cors`]), reads the body under a deadline and a decompressed-size cap ([`body`]),
//!    and maps every refusal to a status code.
//! 2. [`protocol`] holds one file per ingest protocol, each validating a request and encoding
//!    it, once, into the NDJSON lines that will land in the lake: [`protocol::classic`] (the
//!    original service's `/track`, `/alias`, `/profile`), [`protocol::segment`] (Segment's
//!    and RudderStack's `/v1/*`), [`protocol::posthog`] (PostHog's capture API) and
//!    [`protocol::snowplow`] (Snowplow's tracker protocol).
//!    [`suppression`] drops the events of users a deletion request named, and [`policy`]
//!    applies the source's tracking plan and privacy policy to the rest, before anything is
//!    written.
//! 3. [`queue`] appends a request's lines to sled as one entry and answers when they are on
//!    disk (group commit: concurrent requests share one flush); it survives the faults of its
//!    own disk and reports any loss.
//! 4. [`flusher`] drains each stream's queue head in batches into a [`sink`], removes exactly
//!    what the sink accepted and retries the rest with back-off, forever; [`delivery`] is its
//!    policy: pacing to each delivery stream's quota, fan-out over several, back-off,
//!    splitting.
//! 5. [`sink`] delivers batches: [`sink::FileSink`] writes a local lake laid out like
//!    Firehose's S3 prefixes.
//!
//! Around it: [`firehose_limits`] (Firehose's documented limits), [`response`] (shared HTTP
//! answers), [`config`] (typed TOML + environment overrides), [`admin`] (health,
//! Prometheus and the deletion-request API on a side port), [`metrics`] (every metric name) and [`app`] (wiring and the
//! ordered shutdown).

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod cors;
pub mod delivery;
pub mod firehose_limits;
pub mod flusher;
pub mod ingest;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod queue;
pub mod response;
pub mod server;
pub mod sink;
pub mod suppression;

pub use app::{Listeners, run, run_with_sink};
pub use config::Config;
