//! Typed configuration: a TOML file, then `FIREHOSE_EDGE__SECTION__KEY` environment overrides,
//! validated once at start.
//!
//! Every section denies unknown keys, so a typo is an error rather than a silently ignored
//! setting. Errors name the key (`queue.durability: unknown variant ...`), and `main` exits
//! with status 64 (EX_USAGE) on any of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

// Each protocol's section is declared in its own file.
pub use crate::protocol::classic::StreamsConfig;
pub use crate::protocol::segment::SegmentConfig;

/// Prefix of environment overrides: `FIREHOSE_EDGE__QUEUE__PATH=/var/lib/q` sets `queue.path`.
pub const ENV_PREFIX: &str = "FIREHOSE_EDGE__";

use crate::delivery::DeliveryStream;
/// Firehose's largest record (kept under this name for its users; the limits live in
/// [`crate::firehose_limits`]).
pub use crate::firehose_limits::MAX_RECORD_BYTES as FIREHOSE_MAX_RECORD_BYTES;
use crate::firehose_limits::{
    DirectPutQuota, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_DEAGGREGATED_LINES, direct_put_quota,
};

/// Why a configuration was refused. The message always starts with the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path, e.g. `queue.durability`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// `key` holds a value that is not allowed, for this reason.
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The whole configuration. Every section has defaults, so an empty file is a valid config
/// (the embedded default: file sink under `data/`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The ingest listener and its request limits.
    pub server: ServerConfig,
    /// The admin listener (health, metrics).
    pub admin: AdminConfig,
    /// The durable queue.
    pub queue: QueueConfig,
    /// Where records go.
    pub sink: SinkConfig,
    /// Endpoint to delivery stream names.
    pub streams: StreamsConfig,
    /// How the flusher drains the queue.
    pub flusher: FlusherConfig,
    /// How the process stops.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// API keys for the ingest endpoints.
    pub auth: AuthConfig,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// The Segment-compatible API.
    pub segment: SegmentConfig,
    /// PostHog's capture API.
    pub posthog: crate::protocol::posthog::PostHogConfig,
    /// Snowplow's tracker protocol.
    pub snowplow: crate::protocol::snowplow::SnowplowConfig,
    /// Privacy policies: the default one, and each source's.
    pub privacy: crate::policy::privacy::PrivacyConfig,
    /// Tracking plans, by source.
    pub plans: crate::policy::plan::PlansConfig,
}

/// `[auth]`: API keys. With none configured, ingest is open (as the replaced service was).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted keys. Never logged: the effective-config log line omits them.
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
    /// A file with more keys, one per line (blank lines and `#` comments ignored), for keys
    /// kept out of the config (e.g. a mounted secret).
    pub api_keys_file: Option<PathBuf>,
    /// Segment write keys by source name (`web = "…"`): each is an API key too, and the
    /// records it sends carry `"source": "web"` (never the key). Requests with a plain API
    /// key, or to an open service, are from source `default`.
    #[serde(skip_serializing)]
    pub sources: std::collections::BTreeMap<String, String>,
}

impl AuthConfig {
    /// Every configured key: `api_keys` plus the lines of `api_keys_file`.
    pub fn keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid("auth.api_keys_file", format!("{}: {e}", path.display()))
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        keys.extend(self.sources.values().cloned());
        Ok(keys)
    }

    /// Every key with the source its requests come from.
    pub fn keys_with_sources(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let named: Vec<(String, String)> = self
            .sources
            .iter()
            .map(|(source, key)| (key.clone(), source.clone()))
            .collect();
        let mut all: Vec<(String, String)> = self
            .keys()?
            .into_iter()
            .filter(|k| !self.sources.values().any(|v| v == k))
            .map(|k| (k, DEFAULT_SOURCE.to_owned()))
            .collect();
        all.extend(named);
        Ok(all)
    }
}

/// The source of requests made with a plain API key, or to an open service.
pub const DEFAULT_SOURCE: &str = "default";

/// `[cors]`: which web origins may call the ingest API from a browser.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins, exactly as browsers send them (`https://shop.example`), or `"*"`.
    /// Empty: no CORS headers, and preflights are refused.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer, in seconds.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age_secs: 86_400,
        }
    }
}

/// `[shutdown]`: the bounded, ordered stop on SIGTERM/SIGINT.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest the stop may take, in seconds: drain connections, finish sink calls in
    /// flight, flush the queue. Default 25, under Kubernetes' 30 s termination grace.
    pub grace_period: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period: 25 }
    }
}

impl ShutdownConfig {
    /// The grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_period)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax (`info`, `firehose_edge=debug`); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// `[server]`: the public ingest listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the ingest API listens on (the old service's port 5000).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes, after decompression; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most events in one `/track` request; more get 413. Also bounds how much one request
    /// can grow when encoded (each record adds ~110 bytes of id, time and keys).
    pub max_events_per_request: usize,
    /// Longest `userId`, `newUserId`, `originalUserId` and `eventName`, in characters
    /// (Unicode code points once decoded, as `openapi.yaml`'s `maxLength` counts them); longer
    /// gets 400.
    pub max_string_chars: usize,
    /// Longest wait for a request's headers, in ms, after which the connection is closed
    /// (slowloris). hyper starts this timer whenever a connection waits for its next request,
    /// so it is also the idle timeout of keep-alive connections.
    pub header_read_timeout_ms: u64,
    /// Longest wait for a request's whole body, in ms; 408 after it.
    pub body_read_timeout_ms: u64,
    /// Most open client connections; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl ServerConfig {
    /// How the accept loop treats connections.
    pub fn connection_limits(&self) -> crate::server::ConnectionLimits {
        crate::server::ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5000)),
            max_body_bytes: 1 << 20,
            max_events_per_request: 2_000,
            max_string_chars: 1_024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_connections: 10_000,
        }
    }
}

/// `[admin]`: health, metrics and the deletion-request API, kept off the public port.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` and `/suppressions`.
    pub listen: SocketAddr,
    /// The admin key (`/suppressions` refuses every request without it): a file holding it.
    /// Empty: none.
    pub api_key_file: PathBuf,
    /// The admin key's environment variable. Empty: none.
    pub api_key_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            api_key_file: PathBuf::new(),
            api_key_env: String::new(),
        }
    }
}

impl AdminConfig {
    /// The admin key, if one is configured (read now: a missing or short one is refused).
    pub fn api_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        secret("admin.api_key", &self.api_key_file, &self.api_key_env)
    }
}

/// When a 200 is sent relative to the disk.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answer after a (shared) flush that covers the request's records.
    Fsync,
    /// Answer after the append; sled's background flush persists it within
    /// `queue.flush_interval_ms`. A crash may lose that window of acknowledged events.
    Interval,
}

/// `[queue]`: the sled database that buffers records until the sink takes them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Budget of queued record bytes; beyond it ingest answers 503. The disk needs ~2-2.5x
    /// this, because sled's files do not shrink after a drain.
    pub max_bytes: u64,
    /// `fsync` (default) or `interval`.
    pub durability: Durability,
    /// Period of sled's background flush in milliseconds (the loss window of `interval`).
    pub flush_interval_ms: u64,
    /// sled's page cache in bytes (sled's own default of 1 GiB is far more than a queue needs).
    pub cache_capacity: u64,
    /// Floor of free space on the queue's file system: below it ingest answers 503 (and
    /// `/readyz` too) until 10 % above it, so sled never meets a full disk in normal
    /// operation. Read with `statvfs` about twice a second, not per request.
    pub min_free_bytes: u64,
    /// How long an accepted `messageId` is remembered per source, in seconds: a copy within
    /// the window is answered as accepted and not queued again (`/v1` ingest).
    pub dedup_window_secs: u64,
    /// Most `messageId`s remembered (the oldest go first); ~120 bytes of memory each.
    pub dedup_max_ids: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            path: PathBuf::from("data/queue"),
            max_bytes: 10 * (1 << 30),
            durability: Durability::Fsync,
            flush_interval_ms: 500,
            cache_capacity: 64 << 20,
            min_free_bytes: 1 << 30,
            dedup_window_secs: 24 * 3600,
            dedup_max_ids: 1_000_000,
        }
    }
}

/// Which sink the flusher delivers to.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Amazon Kinesis Data Firehose.
    Firehose,
    /// NDJSON files in a local directory, laid out like Firehose's S3 prefixes.
    File,
}

/// `[sink]`: where delivered records land.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// `file` (default, no AWS needed) or `firehose`.
    pub kind: SinkKind,
    /// File sink: root of the local lake.
    pub directory: PathBuf,
    /// Firehose sink: AWS region.
    pub region: String,
    /// Firehose sink: a local Firehose API (moto, LocalStack) instead of AWS's.
    pub endpoint_url: Option<String>,
    /// Firehose sink: longest wait for a TCP/TLS connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Firehose sink: longest wait for one `PutRecordBatch` attempt, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::File,
            directory: PathBuf::from("data/lake"),
            region: "us-east-1".to_owned(),
            endpoint_url: None,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 15_000,
        }
    }
}

/// An endpoint's delivery streams: one name (`track = "log_user_events"`) or a fan-out
/// (`track = ["log_user_events-0", "log_user_events-1"]`). The endpoint's records are queued
/// under the **first** name, and the flusher spreads them over all of them, so adding streams
/// after the first keeps what is queued; replacing the first one leaves its queued records
/// undelivered (the start-up log says so) until it is configured again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamList(Vec<String>);

impl StreamList {
    /// The name the endpoint's records are queued under: the first.
    pub fn queue(&self) -> &str {
        &self.0[0]
    }

    /// Every delivery stream, in order.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for StreamList {
    type Error = &'static str;

    /// A fan-out over `names`, queued under the first; refused when empty.
    fn try_from(names: Vec<String>) -> Result<StreamList, Self::Error> {
        if names.is_empty() {
            Err("a stream list names at least one delivery stream")
        } else {
            Ok(StreamList(names))
        }
    }
}

impl From<&str> for StreamList {
    fn from(name: &str) -> StreamList {
        StreamList(vec![name.to_owned()])
    }
}

impl Serialize for StreamList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

// By hand rather than `#[serde(untagged)]`, whose error ("did not match any variant") would
// not say what the key takes.
impl<'de> Deserialize<'de> for StreamList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StreamList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a delivery stream name or a non-empty list of names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StreamList, E> {
                Ok(StreamList::from(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StreamList, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                if names.is_empty() {
                    return Err(serde::de::Error::invalid_length(0, &self));
                }
                Ok(StreamList(names))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[flusher]`: batching and retry of the drain into the sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlusherConfig {
    /// Most sink records per call (Firehose: at most 500).
    pub max_batch_records: usize,
    /// Most bytes per call (Firehose: at most 4 MiB).
    pub max_batch_bytes: usize,
    /// How long a record may wait for a fuller batch, in milliseconds.
    pub linger_ms: u64,
    /// Calls in flight per delivery stream. A paced stream may have up to 32 regardless (its
    /// calls are small and its pacing is what bounds it; see `delivery::pacing::MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
    /// First retry delay in milliseconds; doubles per consecutive failure (full jitter).
    pub retry_base_ms: u64,
    /// Largest retry delay in milliseconds.
    pub retry_max_ms: u64,
    /// Pack consecutive NDJSON lines into one Firehose record (billing rounds every record up
    /// to 5 KB, so packing small events cuts the bill up to ~25x; invisible in S3).
    pub packing: bool,
    /// Largest packed record in bytes (Firehose: at most 1,024,000).
    pub pack_max_bytes: usize,
    /// Most lines in one packed record (Firehose's de-aggregation limit: at most 500).
    pub pack_max_lines: usize,
    /// Pace each delivery stream to its Direct PUT quota (token buckets, and a share of it that
    /// shrinks on throttling and grows back, so replicas sharing a stream converge). Applies to
    /// the Firehose sink only; the file sink has no quota.
    pub pacing: bool,
    /// A delivery stream's quota in bytes/s (before base64); default: the documented quota
    /// of `sink.region` (5 MiB/s in us-east-1, us-west-2, eu-west-1; 1 MiB/s elsewhere).
    pub quota_bytes_per_sec: Option<u64>,
    /// A delivery stream's quota in PutRecordBatch calls/s; default: the region's (2,000 or
    /// 1,000).
    pub quota_requests_per_sec: Option<u64>,
    /// A delivery stream's quota in records/s; default: the region's (500,000 or 100,000).
    pub quota_records_per_sec: Option<u64>,
    /// Per-stream overrides, keyed by delivery stream name:
    /// `[flusher.per_stream.log_user_events] packing = false`.
    pub per_stream: BTreeMap<String, StreamOverrides>,
}

/// `[flusher.per_stream.<stream>]`: settings that differ for one delivery stream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamOverrides {
    /// Overrides `flusher.packing` (e.g. `false` for a Lambda transform that expects one event
    /// per record). Read for the endpoint's first stream, whose queue the records are packed
    /// from.
    pub packing: Option<bool>,
    /// Overrides `flusher.quota_bytes_per_sec` for this stream (a raised quota).
    pub quota_bytes_per_sec: Option<u64>,
    /// Overrides `flusher.quota_requests_per_sec` for this stream.
    pub quota_requests_per_sec: Option<u64>,
    /// Overrides `flusher.quota_records_per_sec` for this stream.
    pub quota_records_per_sec: Option<u64>,
}

impl Default for FlusherConfig {
    fn default() -> Self {
        FlusherConfig {
            max_batch_records: MAX_BATCH_RECORDS,
            max_batch_bytes: MAX_BATCH_BYTES,
            linger_ms: 200,
            max_in_flight: 4,
            retry_base_ms: 100,
            retry_max_ms: 30_000,
            packing: true,
            pack_max_bytes: FIREHOSE_MAX_RECORD_BYTES,
            pack_max_lines: MAX_DEAGGREGATED_LINES,
            pacing: true,
            quota_bytes_per_sec: None,
            quota_requests_per_sec: None,
            quota_records_per_sec: None,
            per_stream: BTreeMap::new(),
        }
    }
}

impl FlusherConfig {
    /// How long a record may wait for a fuller batch.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    /// Whether `stream`'s lines are packed.
    pub fn packing_for(&self, stream: &str) -> bool {
        self.per_stream
            .get(stream)
            .and_then(|o| o.packing)
            .unwrap_or(self.packing)
    }

    /// The quota `stream` is paced to in `region`: its overrides, else the flusher's, else the
    /// region's documented default.
    pub fn quota_for(&self, stream: &str, region: &str) -> DirectPutQuota {
        let region = direct_put_quota(region);
        let over = self.per_stream.get(stream);
        let pick =
            |own: Option<u64>, all: Option<u64>, default: u64| own.or(all).unwrap_or(default);
        DirectPutQuota {
            bytes_per_sec: pick(
                over.and_then(|o| o.quota_bytes_per_sec),
                self.quota_bytes_per_sec,
                region.bytes_per_sec,
            ),
            requests_per_sec: pick(
                over.and_then(|o| o.quota_requests_per_sec),
                self.quota_requests_per_sec,
                region.requests_per_sec,
            ),
            records_per_sec: pick(
                over.and_then(|o| o.quota_records_per_sec),
                self.quota_records_per_sec,
                region.records_per_sec,
            ),
        }
    }
}

/// Keys that were renamed when their meaning changed: refused with the new name, so an old
/// configuration fails at start saying what to write instead (rather than a bare "unknown
/// field").
const RENAMED: [(&str, &str, &str, &str); 1] = [(
    "server",
    "max_string_bytes",
    "server.max_string_chars",
    "it counts characters now, as openapi.yaml's maxLength does, not bytes as sent",
)];

fn refuse_renamed(table: &toml::Table) -> Result<(), ConfigError> {
    for (section, old, new, why) in RENAMED {
        let present = table
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(old));
        if present {
            return Err(ConfigError::invalid(
                &format!("{section}.{old}"),
                format!("renamed to {new} ({why})"),
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies overrides from `env` (pairs of
    /// variable name and value; only `FIREHOSE_EDGE__*` are looked at) and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "<defaults>".to_owned()),
        };
        Config::from_toml(&text, &origin, env)
    }

    /// Parses `text`, applies `env` overrides and validates; `origin` names the text in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: e.to_string().trim_end().replace('\n', " "),
                })?;
        apply_env(&mut table, env)?;
        refuse_renamed(&table)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Invalid {
                    key: if key == "." { "config".to_owned() } else { key },
                    // toml appends "in `key`" on a second line; the key is already named.
                    message: e
                        .into_inner()
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        for source in self.auth.sources.keys() {
            crate::protocol::check_source_name("auth.sources", source)?;
        }
        crate::protocol::validate(self)?;
        // Reads the hash keys and compiles the tracking plans, so a missing key or an invalid
        // plan stops the start (and `--check-config`) naming its key.
        crate::policy::Policies::new(self)?;
        self.admin.api_key()?;
        let f = &self.flusher;
        if !(1..=MAX_BATCH_RECORDS).contains(&f.max_batch_records) {
            return Err(ConfigError::invalid(
                "flusher.max_batch_records",
                format!(
                    "{} is outside 1..={MAX_BATCH_RECORDS} (Firehose's PutRecordBatch limit)",
                    f.max_batch_records
                ),
            ));
        }
        if !(FIREHOSE_MAX_RECORD_BYTES..=MAX_BATCH_BYTES).contains(&f.max_batch_bytes) {
            return Err(ConfigError::invalid(
                "flusher.max_batch_bytes",
                format!(
                    "{} is outside {FIREHOSE_MAX_RECORD_BYTES}..={MAX_BATCH_BYTES} (one record .. Firehose's 4 MiB per call)",
                    f.max_batch_bytes
                ),
            ));
        }
        if !(1..=FIREHOSE_MAX_RECORD_BYTES).contains(&f.pack_max_bytes) {
            return Err(ConfigError::invalid(
                "flusher.pack_max_bytes",
                format!(
                    "{} is outside 1..={FIREHOSE_MAX_RECORD_BYTES} (Firehose's record limit)",
                    f.pack_max_bytes
                ),
            ));
        }
        if !(1..=MAX_DEAGGREGATED_LINES).contains(&f.pack_max_lines) {
            return Err(ConfigError::invalid(
                "flusher.pack_max_lines",
                format!(
                    "{} is outside 1..={MAX_DEAGGREGATED_LINES} (Firehose's de-aggregation limit)",
                    f.pack_max_lines
                ),
            ));
        }
        if self.sink.connect_timeout_ms == 0 || self.sink.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "sink.request_timeout_ms",
                "timeouts must be at least 1 ms",
            ));
        }
        if f.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "flusher.max_in_flight",
                "must be at least 1",
            ));
        }
        if f.retry_base_ms == 0 || f.retry_base_ms > f.retry_max_ms {
            return Err(ConfigError::invalid(
                "flusher.retry_base_ms",
                "must be at least 1 and at most flusher.retry_max_ms",
            ));
        }
        for (key, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            (
                "server.max_events_per_request",
                self.server.max_events_per_request as u64,
            ),
            (
                "server.max_string_chars",
                self.server.max_string_chars as u64,
            ),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.max_connections", self.server.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        let keys = self.auth.keys()?;
        if keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError::invalid(
                "auth.api_keys",
                "every key must be at least 16 characters",
            ));
        }
        if let Some(bad) = self
            .cors
            .allowed_origins
            .iter()
            .find(|o| *o != "*" && !(o.starts_with("https://") || o.starts_with("http://")))
        {
            return Err(ConfigError::invalid(
                "cors.allowed_origins",
                format!("{bad:?} is not an origin (scheme://host[:port]) or \"*\""),
            ));
        }
        // A message becomes one record: a limit above Firehose's would take messages that
        // could only end as dead letters.
        if !(1..=FIREHOSE_MAX_RECORD_BYTES).contains(&self.segment.max_message_bytes) {
            return Err(ConfigError::invalid(
                "segment.max_message_bytes",
                format!(
                    "{} is outside 1..={FIREHOSE_MAX_RECORD_BYTES} (Firehose's record limit: \
                     each message is one record)",
                    self.segment.max_message_bytes
                ),
            ));
        }
        if self.segment.max_batch_bytes == 0 {
            return Err(ConfigError::invalid(
                "segment.max_batch_bytes",
                "must be at least 1",
            ));
        }
        if self.queue.max_bytes == 0 {
            return Err(ConfigError::invalid(
                "queue.max_bytes",
                "must be at least 1",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid("log.level", e.to_string()));
        }
        if self.queue.flush_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "queue.flush_interval_ms",
                "must be at least 1",
            ));
        }
        self.validate_streams()
    }

    /// Every endpoint's stream list: valid names, no repeats, and endpoints that share a queue
    /// (the same first stream) share the whole list, so the queue has one set of destinations.
    fn validate_streams(&self) -> Result<(), ConfigError> {
        let lists = self.stream_lists();
        for (key, list) in &lists {
            for name in list.names() {
                // Firehose's DeliveryStreamName pattern; the name also becomes a directory name.
                let ok = (1..=64).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{name:?} is not a delivery stream name ([a-zA-Z0-9_.-]{{1,64}})"),
                    ));
                }
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = list.names().iter().find(|n| !seen.insert(*n)) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{twice:?} is listed twice"),
                ));
            }
            if let Some((other, _)) = lists
                .iter()
                .find(|(_, l)| l.queue() == list.queue() && l != list)
            {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "shares its first stream {:?} (its queue) with {other}, but not the rest \
                         of the list; endpoints that share a queue must list the same streams",
                        list.queue()
                    ),
                ));
            }
        }
        let names: Vec<String> = lists
            .iter()
            .flat_map(|(_, l)| l.names().iter().cloned())
            .collect();
        let f = &self.flusher;
        if let Some(name) = f.per_stream.keys().find(|n| !names.contains(n)) {
            return Err(ConfigError::invalid(
                &format!("flusher.per_stream.{name}"),
                format!(
                    "not a configured stream (streams: {})",
                    self.stream_names().join(", ")
                ),
            ));
        }
        // Packing is decided where batches are built: per queue, i.e. for an endpoint's first
        // stream. On another stream of a fan-out it would silently do nothing.
        let queues = self.stream_names();
        if let Some(name) = f
            .per_stream
            .iter()
            .find(|(n, o)| o.packing.is_some() && !queues.contains(n))
            .map(|(n, _)| n)
        {
            let first = lists
                .iter()
                .find(|(_, l)| l.names().contains(name))
                .map_or("", |(_, l)| l.queue());
            return Err(ConfigError::invalid(
                &format!("flusher.per_stream.{name}.packing"),
                format!(
                    "packing is set per queue, for an endpoint's first stream: set it on {first:?}, which {name:?} shares a queue with"
                ),
            ));
        }
        let overrides = f.per_stream.iter().map(|(name, o)| {
            let key = format!("flusher.per_stream.{name}");
            (
                key,
                [
                    o.quota_bytes_per_sec,
                    o.quota_requests_per_sec,
                    o.quota_records_per_sec,
                ],
            )
        });
        let all = std::iter::once((
            "flusher".to_owned(),
            [
                f.quota_bytes_per_sec,
                f.quota_requests_per_sec,
                f.quota_records_per_sec,
            ],
        ));
        for (section, quotas) in all.chain(overrides) {
            for (value, key) in quotas.iter().zip([
                "quota_bytes_per_sec",
                "quota_requests_per_sec",
                "quota_records_per_sec",
            ]) {
                if *value == Some(0) {
                    return Err(ConfigError::invalid(
                        &format!("{section}.{key}"),
                        "must be at least 1 (set flusher.pacing = false to turn pacing off)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every endpoint's key and stream list, in endpoint order.
    fn stream_lists(&self) -> Vec<(&'static str, &StreamList)> {
        let mut lists = crate::protocol::stream_lists(self);
        lists.extend(self.plans.stream_lists());
        lists
    }

    /// Where the records queued under `queue` (an endpoint's first stream) are delivered, and
    /// the quota each is paced to (`None` when not paced: the file sink, or pacing off).
    pub fn delivery_streams(&self, queue: &str) -> Vec<DeliveryStream> {
        let paced = self.flusher.pacing && self.sink.kind == SinkKind::Firehose;
        self.stream_lists()
            .into_iter()
            .find(|(_, l)| l.queue() == queue)
            .map(|(_, l)| l.names().to_vec())
            .unwrap_or_else(|| vec![queue.to_owned()])
            .into_iter()
            .map(|name| DeliveryStream {
                quota: paced.then(|| self.flusher.quota_for(&name, &self.sink.region)),
                name,
            })
            .collect()
    }

    /// Every delivery stream, each once, in endpoint order (for metrics).
    pub fn all_delivery_streams(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.stream_lists()
            .into_iter()
            .flat_map(|(_, l)| l.names().iter().cloned())
            .filter(|n| seen.insert(n.clone()))
            .collect()
    }

    /// The effective configuration as one line of JSON, for the start-up log. Nothing here is
    /// secret today; fields that become so are skipped when serializing.
    pub fn summary(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }

    /// The distinct queue streams (each endpoint's first delivery stream), in endpoint order.
    pub fn stream_names(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.stream_lists()
            .into_iter()
            .map(|(_, l)| l.queue().to_owned())
            .filter(|n| seen.insert(n.clone()))
            .collect()
    }
}

/// A secret given in a file or an environment variable (`<key>_file`, `<key>_env`; empty:
/// not given), trimmed: `None` when neither is set. Refused, naming the key, when both are,
/// when it cannot be read, or when it is shorter than 16 bytes. Never logged.
pub fn secret(key: &str, file: &Path, var: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    let file = Some(file).filter(|p| !p.as_os_str().is_empty());
    let var = Some(var).filter(|v| !v.is_empty());
    let (file_key, env_key) = (format!("{key}_file"), format!("{key}_env"));
    let raw = match (file, var) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                &file_key,
                "give the key in a file or an environment variable, not both",
            ));
        }
        (Some(path), None) => std::fs::read(path)
            .map_err(|e| ConfigError::invalid(&file_key, format!("{}: {e}", path.display())))?,
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| ConfigError::invalid(&env_key, format!("{var} is not set")))?
            .into_bytes(),
        (None, None) => return Ok(None),
    };
    let secret = String::from_utf8_lossy(&raw).trim().as_bytes().to_vec();
    if secret.len() < 16 {
        let named = if file.is_some() { file_key } else { env_key };
        return Err(ConfigError::invalid(
            &named,
            "the key must be at least 16 bytes",
        ));
    }
    Ok(Some(secret))
}

/// Our variables out of the process environment (`std::env::vars_os()`): only names with the
/// `FIREHOSE_EDGE__` prefix are kept. Other variables are none of our business, whatever
/// they hold (`std::env::vars()` would panic on any value that is not UTF-8); one of ours
/// that is not UTF-8 is refused, naming it.
pub fn env_overrides(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for (name, value) in vars {
        if !name.as_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let shown = name.to_string_lossy().into_owned();
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            _ => {
                return Err(ConfigError::invalid(
                    &shown,
                    "the variable's name or value is not valid UTF-8".to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// Applies `FIREHOSE_EDGE__A__B=value` as `a.b = value`. The value is read as a TOML value
/// when it parses as one (`5000`, `true`, `["a"]`), else as a string, so paths and addresses
/// need no quoting. A pure function over the pairs, so tests never touch the process env.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let key = path.join(".");
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                &key,
                format!("malformed variable {name}"),
            ));
        }
        let value = parse_env_value(&raw);
        let (last, parents) = path.split_last().expect("split yields at least one part");
        let mut node = &mut *table;
        for part in parents {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                ConfigError::invalid(&key, format!("{part} is not a section (from {name})"))
            })?;
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse `v = <raw>` so scalars and arrays keep their TOML types.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", Vec::new())
    }

    fn err_key(text: &str) -> String {
        match parse(text).expect_err("config should be refused") {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(c.admin.listen.to_string(), "0.0.0.0:9464");
        assert_eq!(c.queue.durability, Durability::Fsync);
        assert_eq!(c.sink.kind, SinkKind::File);
    }

    #[test]
    fn shipped_default_toml_equals_the_code_defaults() {
        let text = include_str!("../config/default.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("[queue]\ndurability = \"sometimes\"", "queue.durability"),
            ("[server]\nlisten = \"not an address\"", "server.listen"),
            ("[server]\nlisten = 5000", "server.listen"),
            ("[server]\nbogus = 1", "server.bogus"),
            ("[nope]\nx = 1", "nope"),
            ("[queue]\nmax_bytes = -1", "queue.max_bytes"),
            ("[queue]\nmax_bytes = 0", "queue.max_bytes"),
            ("[sink]\nkind = \"s3\"", "sink.kind"),
            (
                "[flusher]\nmax_batch_records = 501",
                "flusher.max_batch_records",
            ),
            (
                "[flusher]\nmax_batch_bytes = 5000000",
                "flusher.max_batch_bytes",
            ),
            ("[flusher]\nmax_in_flight = 0", "flusher.max_in_flight"),
            ("[streams]\ntrack = \"a/b\"", "streams.track"),
            (
                "[flusher]\npack_max_bytes = 1024001",
                "flusher.pack_max_bytes",
            ),
            ("[flusher]\npack_max_lines = 501", "flusher.pack_max_lines"),
            (
                "[flusher.per_stream.nope]\npacking = false",
                "flusher.per_stream.nope",
            ),
            ("[auth]\napi_keys = [\"short\"]", "auth.api_keys"),
            (
                "[auth]\napi_keys_file = \"/nonexistent/keys\"",
                "auth.api_keys_file",
            ),
            (
                "[cors]\nallowed_origins = [\"shop.example\"]",
                "cors.allowed_origins",
            ),
            ("[server]\nmax_connections = 0", "server.max_connections"),
            (
                "[segment]\nmax_message_bytes = 1024001",
                "segment.max_message_bytes",
            ),
            (
                "[segment]\nmax_message_bytes = 0",
                "segment.max_message_bytes",
            ),
            ("[segment]\nmax_batch_bytes = 0", "segment.max_batch_bytes"),
            (
                "[flusher.per_stream.link_users]\npack = false",
                "flusher.per_stream.link_users.pack",
            ),
        ];
        for (text, key) in cases {
            let got = err_key(text);
            assert!(
                got.starts_with(key),
                "{text:?}: expected key {key}, got {got}"
            );
        }
    }

    #[test]
    fn a_renamed_key_is_refused_naming_its_new_name() {
        let env = [(
            "FIREHOSE_EDGE__SERVER__MAX_STRING_BYTES".to_owned(),
            "64".to_owned(),
        )];
        for (text, env) in [("[server]\nmax_string_bytes = 64", &[][..]), ("", &env[..])] {
            let e = Config::from_toml(text, "t", env.to_vec()).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("server.max_string_bytes: renamed to server.max_string_chars"),
                "{e}"
            );
        }
        assert_eq!(
            parse("[server]\nmax_string_chars = 64")
                .unwrap()
                .server
                .max_string_chars,
            64
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = parse("[server\nlisten=").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        assert!(e.to_string().starts_with("test.toml:"), "{e}");
    }

    #[test]
    fn env_overrides_win_and_keep_types() {
        let env = vec![
            (
                "FIREHOSE_EDGE__QUEUE__PATH".to_owned(),
                "/var/lib/q".to_owned(),
            ),
            (
                "FIREHOSE_EDGE__QUEUE__MAX_BYTES".to_owned(),
                "1234".to_owned(),
            ),
            (
                "FIREHOSE_EDGE__SERVER__LISTEN".to_owned(),
                "127.0.0.1:8080".to_owned(),
            ),
            (
                "FIREHOSE_EDGE__SINK__ENDPOINT_URL".to_owned(),
                "http://127.0.0.1:1".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::from_toml("[queue]\npath = \"a\"\nmax_bytes = 1", "t", env).unwrap();
        assert_eq!(c.queue.path, PathBuf::from("/var/lib/q"));
        assert_eq!(c.queue.max_bytes, 1234);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.sink.endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn a_fan_out_can_be_set_from_the_environment() {
        let env = vec![(
            "FIREHOSE_EDGE__STREAMS__TRACK".to_owned(),
            r#"["ev-0", "ev-1"]"#.to_owned(),
        )];
        let c = Config::from_toml("", "t", env).unwrap();
        assert_eq!(
            c.streams.track.names(),
            ["ev-0".to_owned(), "ev-1".to_owned()]
        );
        let one = vec![("FIREHOSE_EDGE__STREAMS__TRACK".to_owned(), "ev".to_owned())];
        assert_eq!(
            Config::from_toml("", "t", one)
                .unwrap()
                .streams
                .track
                .queue(),
            "ev"
        );
    }

    #[test]
    fn env_overrides_ignore_other_variables_and_refuse_ours_when_not_utf8() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'a', 0xff, b'b']);
        let vars = vec![
            (OsString::from("LANG_OTHER"), bad()),
            (OsString::from_vec(vec![b'X', 0xfe]), OsString::from("v")),
            (
                OsString::from("FIREHOSE_EDGE__QUEUE__PATH"),
                OsString::from("/q"),
            ),
        ];
        assert_eq!(
            env_overrides(vars).unwrap(),
            [("FIREHOSE_EDGE__QUEUE__PATH".to_owned(), "/q".to_owned())]
        );
        let ours = vec![(OsString::from("FIREHOSE_EDGE__QUEUE__PATH"), bad())];
        let e = env_overrides(ours).unwrap_err().to_string();
        assert!(
            e.contains("FIREHOSE_EDGE__QUEUE__PATH") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn env_override_errors_name_the_key() {
        let env = vec![(
            "FIREHOSE_EDGE__QUEUE__DURABILITY".to_owned(),
            "never".to_owned(),
        )];
        let e = Config::from_toml("", "t", env).unwrap_err();
        assert!(e.to_string().starts_with("queue.durability"), "{e}");
    }

    #[test]
    fn packing_can_be_turned_off_per_stream() {
        let c = parse("[flusher.per_stream.link_users]\npacking = false").unwrap();
        assert!(!c.flusher.packing_for("link_users"));
        assert!(c.flusher.packing_for("log_user_events"));
    }

    #[test]
    fn stream_names_are_distinct() {
        let c = parse(
            "[streams]\ntrack = \"a\"\nalias = \"a\"\nprofile = \"b\"\n\
             [segment]\ntrack = \"s\"\nidentify = \"s\"\npage = \"s\"\nscreen = \"s\"\n\
             group = \"s\"\nalias = \"b\"",
        )
        .unwrap();
        assert_eq!(
            c.stream_names(),
            ["a", "b", "s", "posthog_events", "snowplow_events"]
        );
    }

    #[test]
    fn an_endpoint_fans_out_over_a_list_of_streams_queued_under_the_first() {
        let c = parse(
            "[sink]\nkind = \"firehose\"\nregion = \"eu-central-1\"\n\
             [streams]\ntrack = [\"ev-0\", \"ev-1\", \"ev-2\"]\n\
             [flusher.per_stream.ev-1]\nquota_bytes_per_sec = 5242880\n",
        )
        .unwrap();
        assert_eq!(c.streams.track.queue(), "ev-0");
        assert_eq!(c.stream_names()[0], "ev-0");
        assert!(!c.stream_names().contains(&"ev-1".to_owned()), "one queue");
        let delivery = c.delivery_streams("ev-0");
        let names: Vec<&str> = delivery.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["ev-0", "ev-1", "ev-2"]);
        // eu-central-1's documented quota, but the raised one for ev-1.
        assert_eq!(
            delivery[0].quota,
            Some(crate::firehose_limits::DIRECT_PUT_QUOTA_DEFAULT)
        );
        assert_eq!(delivery[1].quota.unwrap().bytes_per_sec, 5 << 20);
        assert_eq!(delivery[1].quota.unwrap().requests_per_sec, 1_000);
        assert!(c.all_delivery_streams().contains(&"ev-2".to_owned()));
        // A single name stays valid, and the file sink is not paced.
        let plain = parse("[streams]\ntrack = \"one\"").unwrap();
        assert_eq!(plain.streams.track.names(), ["one".to_owned()]);
        assert_eq!(plain.delivery_streams("one")[0].quota, None);
        let unpaced = parse("[sink]\nkind = \"firehose\"\n[flusher]\npacing = false").unwrap();
        assert_eq!(unpaced.delivery_streams("log_user_events")[0].quota, None);
        let us = parse("[sink]\nkind = \"firehose\"").unwrap();
        assert_eq!(
            us.delivery_streams("log_user_events")[0].quota,
            Some(crate::firehose_limits::DIRECT_PUT_QUOTA_LARGE)
        );
    }

    #[test]
    fn bad_stream_lists_name_their_key() {
        for (text, key, says) in [
            ("[streams]\ntrack = []", "streams.track", "non-empty list"),
            (
                "[streams]\ntrack = 5",
                "streams.track",
                "a delivery stream name or",
            ),
            ("[streams]\ntrack = [\"a\", 5]", "streams.track", "string"),
            (
                "[streams]\ntrack = [\"a\", \"a\"]",
                "streams.track",
                "twice",
            ),
            (
                "[streams]\ntrack = [\"a\", \"b/c\"]",
                "streams.track",
                "not a delivery stream name",
            ),
            (
                "[streams]\ntrack = [\"a\", \"b\"]\nalias = \"a\"",
                "streams.track",
                "with streams.alias",
            ),
            (
                "[flusher.per_stream.nope]\npacking = false",
                "flusher.per_stream.nope",
                "not a configured stream",
            ),
            (
                "[flusher]\nquota_bytes_per_sec = 0",
                "flusher.quota_bytes_per_sec",
                "at least 1",
            ),
            (
                "[streams]\ntrack = [\"a\", \"b\"]\n[flusher.per_stream.b]\npacking = false",
                "flusher.per_stream.b.packing",
                "set it on \"a\"",
            ),
        ] {
            match parse(text).expect_err(text) {
                ConfigError::Invalid { key: k, message } => {
                    assert!(k.starts_with(key), "{text}: key {k}");
                    assert!(message.contains(says), "{text}: {message}");
                }
                other => panic!("{text}: {other}"),
            }
        }
        // Endpoints sharing a queue with the same list are fine.
        parse("[streams]\ntrack = [\"a\", \"b\"]\nalias = [\"a\", \"b\"]").unwrap();
    }
}
