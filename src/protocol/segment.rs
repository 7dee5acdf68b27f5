//! The Segment-compatible API (`/v1/*`): Segment's HTTP Tracking API, as its SDKs (and
//! RudderStack's) speak it, validated and encoded into one NDJSON line per message.
//!
//! Each message type is declared once, in `KINDS`: its name, the fields it requires, and
//! its stream key. Every record of every type has the same keys (those of [`RECORD_KEYS`],
//! `null` where a type or a client has none), so a stream holds one schema whichever types
//! are mapped to it. Client values are copied byte for byte; the server adds `messageId`
//! (when absent), `source`, `receivedAt`, the clock-skew-corrected `timestamp`
//! (`receivedAt − (sentAt − originalTimestamp)`, as Segment documents it), `context.ip`, and
//! keeps fields it has no column for in `extra`. A batch is all or nothing: one invalid
//! message refuses the whole request (400), so nothing is half stored.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::json::check_raw;
use super::record::{self, TIME_REASON, parse_time};
use super::{Accepted, Auth, Methods, Path, Protocol, Records, Registration, Request, Route};
use crate::config::{Config, FIREHOSE_MAX_RECORD_BYTES, StreamList};
use crate::ingest::IngestError;
use crate::protocol::classic::FieldError;
use crate::queue::BatchLine;
use crate::response::json_response;

/// A message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `track`: an action (`event`).
    Track,
    /// `identify`: who the user is (`traits`).
    Identify,
    /// `page`: a web page view.
    Page,
    /// `screen`: a mobile screen view.
    Screen,
    /// `group`: the user's organisation (`groupId`).
    Group,
    /// `alias`: one user, two ids (`previousId`).
    Alias,
}

/// What a message type requires besides `userId` or `anonymousId`.
struct Spec {
    kind: Kind,
    name: &'static str,
    required: &'static [&'static str],
}

/// Every message type, declared once.
const KINDS: [Spec; 6] = [
    Spec {
        kind: Kind::Track,
        name: "track",
        required: &["event"],
    },
    Spec {
        kind: Kind::Identify,
        name: "identify",
        required: &[],
    },
    Spec {
        kind: Kind::Page,
        name: "page",
        required: &[],
    },
    Spec {
        kind: Kind::Screen,
        name: "screen",
        required: &[],
    },
    Spec {
        kind: Kind::Group,
        name: "group",
        required: &["groupId"],
    },
    Spec {
        kind: Kind::Alias,
        name: "alias",
        required: &["previousId", "userId"],
    },
];

impl Kind {
    fn spec(self) -> &'static Spec {
        KINDS
            .iter()
            .find(|s| s.kind == self)
            .expect("every kind is declared")
    }

    fn from_name(name: &str) -> Option<Kind> {
        KINDS.iter().find(|s| s.name == name).map(|s| s.kind)
    }

    /// The stream this type is queued under.
    pub fn stream(self, config: &SegmentConfig) -> &str {
        match self {
            Kind::Track => config.track.queue(),
            Kind::Identify => config.identify.queue(),
            Kind::Page => config.page.queue(),
            Kind::Screen => config.screen.queue(),
            Kind::Group => config.group.queue(),
            Kind::Alias => config.alias.queue(),
        }
    }
}

/// A `/v1` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1 {
    /// `/v1/track` etc.: the body is one message of this type.
    Single(Kind),
    /// `/v1/batch` (and its older name `/v1/import`, and RudderStack's beacon path
    /// `/beacon/v1/batch`): `{"batch": [...]}`.
    Batch,
}

/// Segment's API, registered in [`super::PROTOCOLS`].
pub const PROTOCOL: Registration = Registration {
    name: "segment",
    routes: &ROUTES,
    streams,
    enabled: always,
    validate: super::valid,
    build,
};

/// The route tag of `/v1/batch`; a single message's is its kind's index in `KINDS`.
const BATCH: u8 = u8::MAX;

const ROUTES: [Route; 15] = [
    route("/v1/batch", "v1_batch", BATCH),
    route("/v1/import", "v1_batch", BATCH),
    // RudderStack's browser SDK sends its `sendBeacon` batches here.
    route("/beacon/v1/batch", "v1_batch", BATCH),
    // analytics-next posts single messages to the short names.
    route("/v1/track", "v1_track", 0),
    route("/v1/t", "v1_track", 0),
    route("/v1/identify", "v1_identify", 1),
    route("/v1/i", "v1_identify", 1),
    route("/v1/page", "v1_page", 2),
    route("/v1/p", "v1_page", 2),
    route("/v1/screen", "v1_screen", 3),
    route("/v1/s", "v1_screen", 3),
    route("/v1/group", "v1_group", 4),
    route("/v1/g", "v1_group", 4),
    route("/v1/alias", "v1_alias", 5),
    route("/v1/a", "v1_alias", 5),
];

const fn route(path: &'static str, label: &'static str, id: u8) -> Route {
    Route {
        path: Path::Exact(path),
        label,
        methods: Methods::POST,
        // The write key may be in the body (`writeKey`), as browsers send it.
        auth: Auth::Protocol,
        // A compatibility API serves clients that someone else wrote and that cannot be
        // changed, so it reads the body as its protocol defines it whatever the label says
        // (RudderStack's Node SDK labels its gzipped JSON batches
        // `application/x-www-form-urlencoded`, its HTTP client's default, and drops a batch
        // answered 4xx); a body that is not JSON is still a 400 that says why.
        strict_content_type: false,
        id,
    }
}

impl V1 {
    fn of(route: &Route) -> V1 {
        match route.id {
            BATCH => V1::Batch,
            i => V1::Single(KINDS[usize::from(i)].kind),
        }
    }
}

fn streams(config: &Config) -> Vec<(&'static str, &StreamList)> {
    let g = &config.segment;
    vec![
        ("segment.track", &g.track),
        ("segment.identify", &g.identify),
        ("segment.page", &g.page),
        ("segment.screen", &g.screen),
        ("segment.group", &g.group),
        ("segment.alias", &g.alias),
    ]
}

fn always(_: &Config) -> bool {
    true
}

fn build(config: &Config) -> Box<dyn Protocol> {
    Box::new(Segment(config.segment.clone()))
}

/// Segment's API as configured.
struct Segment(SegmentConfig);

/// Where its records keep the client's address and user agent, and what a plan checks.
pub static SHAPE: crate::policy::Shape = crate::policy::Shape {
    ip: &["context.ip"],
    user_agent: &["context.userAgent", "context.userAgentData"],
    planned,
    ids: &["userId", "anonymousId", "previousId"],
};

/// A record as a tracking plan sees it: a track by its `event`, an identify's and a group's
/// `traits` (pages, screens and aliases are not planned).
fn planned(record: &serde_json::Value) -> Option<crate::policy::plan::Planned> {
    use crate::policy::plan::{Kind, Planned};
    let (kind, name, document) = match record["type"].as_str()? {
        "track" => (
            Kind::Event,
            record["event"].as_str()?.to_owned(),
            serde_json::json!({"properties": record["properties"]}),
        ),
        "identify" => (
            Kind::Identify,
            String::new(),
            serde_json::json!({"traits": record["traits"]}),
        ),
        "group" => (
            Kind::Group,
            String::new(),
            serde_json::json!({"traits": record["traits"]}),
        ),
        _ => return None,
    };
    Some(Planned {
        kind,
        name,
        document,
    })
}

impl Protocol for Segment {
    fn shape(&self) -> &'static crate::policy::Shape {
        &SHAPE
    }

    /// The write key (from the headers, or the body's `writeKey`) names the source; the
    /// messages are queued all or none, skipping `messageId`s already accepted from it.
    fn accept(&self, request: &Request<'_>) -> Result<Accepted, IngestError> {
        let source = request.source(write_key(request.body).as_deref())?;
        let received = Received {
            at: request.at,
            ip: request.ip.map(str::to_owned),
            source: &source,
        };
        let lines = encode(V1::of(request.route), request.body, &received, &self.0).map_err(
            |e| match e {
                SegmentError::Invalid(details) => IngestError::Invalid(details),
                SegmentError::TooLarge(why) => IngestError::ProtocolTooLarge(why),
            },
        )?;
        Ok(Accepted {
            records: Records::Messages {
                source,
                ids: "",
                lines,
            },
            // What Segment's API answers, and its SDKs expect.
            answer: json_response(StatusCode::OK, &serde_json::json!({"success": true})),
        })
    }
}

/// `[segment]`: the Segment-compatible API (`/v1/*`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentConfig {
    /// Delivery stream(s) of `track` messages.
    pub track: StreamList,
    /// Delivery stream(s) of `identify` messages.
    pub identify: StreamList,
    /// Delivery stream(s) of `page` messages.
    pub page: StreamList,
    /// Delivery stream(s) of `screen` messages.
    pub screen: StreamList,
    /// Delivery stream(s) of `group` messages.
    pub group: StreamList,
    /// Delivery stream(s) of `alias` messages.
    pub alias: StreamList,
    /// Largest message, as sent (Segment: 32 KB); 400 above it. At most Firehose's record
    /// limit (1,024,000 bytes), since each message becomes one record; a message whose record
    /// (with the fields the server adds) would still exceed it is a 400 too.
    pub max_message_bytes: usize,
    /// Largest `/v1/batch` body (Segment: 500 KB); 400 above it.
    pub max_batch_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed for `context.ip` (load balancers).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            track: "segment_tracks".into(),
            identify: "segment_identifies".into(),
            page: "segment_pages".into(),
            screen: "segment_screens".into(),
            group: "segment_groups".into(),
            alias: "segment_aliases".into(),
            max_message_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The keys of every record, in order.
pub const RECORD_KEYS: [&str; 19] = [
    "type",
    "messageId",
    "source",
    "userId",
    "anonymousId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "groupId",
    "previousId",
    "context",
    "integrations",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "extra",
];

/// Message fields that have their own column (the rest go to `extra`).
const COLUMNS: [&str; 16] = [
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "groupId",
    "previousId",
    "context",
    "integrations",
    "timestamp",
    "originalTimestamp",
    "sentAt",
];

/// Fields that are never stored: the write key is a secret; `receivedAt` is the server's.
const DROPPED: [&str; 2] = ["writeKey", "receivedAt"];

/// Why a `/v1` body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    /// Messages break the spec; every offending field is listed.
    Invalid(Vec<FieldError>),
    /// Over Segment's size limits (a message or the batch).
    TooLarge(String),
}

/// What the server knows about the request.
pub struct Received<'a> {
    /// When it arrived.
    pub at: SystemTime,
    /// The client's address (`context.ip` when the client sent none).
    pub ip: Option<String>,
    /// The source the write key maps to.
    pub source: &'a str,
}

type Object<'a> = BTreeMap<String, &'a RawValue>;

fn object(raw: &RawValue) -> Option<Object<'_>> {
    raw.get()
        .starts_with('{')
        .then(|| serde_json::from_str(raw.get()).ok())
        .flatten()
}

/// The `writeKey` field of a body, for browsers that send the key there.
pub fn write_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Key {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<Key>(body).ok()?.write_key
}

/// Validates and encodes a `/v1` body into one line per message, each for its stream.
pub fn encode(
    endpoint: V1,
    body: &[u8],
    received: &Received<'_>,
    config: &SegmentConfig,
) -> Result<Vec<BatchLine>, SegmentError> {
    let invalid = |path: &str, reason: &str| {
        SegmentError::Invalid(vec![FieldError {
            path: path.to_owned(),
            reason: reason.to_owned(),
        }])
    };
    let top: &RawValue = serde_json::from_slice(body)
        .map_err(|e| invalid("$", &format!("body is not valid JSON: {e}")))?;
    let top = object(top).ok_or_else(|| invalid("$", "must be an object"))?;
    let (messages, prefix): (Vec<(&RawValue, Option<Kind>)>, bool) = match endpoint {
        V1::Single(kind) => {
            if body.len() > config.max_message_bytes {
                return Err(SegmentError::TooLarge(format!(
                    "message of {} bytes, over the limit of {}",
                    body.len(),
                    config.max_message_bytes
                )));
            }
            let raw: &RawValue = serde_json::from_slice(body).expect("parsed above");
            (vec![(raw, Some(kind))], false)
        }
        V1::Batch => {
            if body.len() > config.max_batch_bytes {
                return Err(SegmentError::TooLarge(format!(
                    "batch of {} bytes, over the limit of {}",
                    body.len(),
                    config.max_batch_bytes
                )));
            }
            let raw = top
                .get("batch")
                .ok_or_else(|| invalid("batch", "missing"))?;
            let items: Vec<&RawValue> = serde_json::from_str(raw.get())
                .map_err(|_| invalid("batch", "must be an array"))?;
            if items.is_empty() {
                return Err(invalid("batch", "must not be empty"));
            }
            (items.into_iter().map(|m| (m, None)).collect(), true)
        }
    };
    if prefix
        && top
            .get("writeKey")
            .is_some_and(|v| !v.get().starts_with('"'))
    {
        return Err(invalid("writeKey", "must be a string"));
    }
    // A batch's `context` goes into every record, so it is held to a message's rules.
    if let Some(v) = top.get("context").filter(|_| prefix) {
        if !v.get().starts_with('{') && v.get() != "null" {
            return Err(invalid("context", "must be an object"));
        } else if let Err(reason) = check_raw(v.get().as_bytes()) {
            return Err(invalid("context", &reason));
        }
    }
    // A batch's own `sentAt` and `context` apply to each of its messages. A single message's
    // top level is the message itself: its fields are read once, below, not twice.
    let (batch_sent_at, batch_context) = match prefix {
        true => (
            top.get("sentAt").copied(),
            top.get("context").and_then(|c| object(c)),
        ),
        false => (None, None),
    };
    let received_at = record::now_of(received.at);
    let mut errors = Vec::new();
    // Checked once for the whole batch, under its own path.
    let batch_sent = match batch_sent_at.filter(|v| v.get() != "null") {
        None => None,
        Some(v) => match parse_time(v) {
            Some(t) => Some((v, t)),
            None => {
                errors.push(FieldError {
                    path: "sentAt".to_owned(),
                    reason: TIME_REASON.to_owned(),
                });
                None
            }
        },
    };
    let mut lines = Vec::with_capacity(messages.len());
    for (i, (raw, kind)) in messages.into_iter().enumerate() {
        let path = |field: &str| match (prefix, field) {
            (true, "") => format!("batch[{i}]"),
            (true, f) => format!("batch[{i}].{f}"),
            (false, "") => "$".to_owned(),
            (false, f) => f.to_owned(),
        };
        let mut fail = |field: &str, reason: String| {
            errors.push(FieldError {
                path: path(field),
                reason,
            })
        };
        if raw.get().len() > config.max_message_bytes {
            return Err(SegmentError::TooLarge(format!(
                "{} is {} bytes, over the limit of {} per message",
                path(""),
                raw.get().len(),
                config.max_message_bytes
            )));
        }
        let Some(msg) = object(raw) else {
            fail("", "must be an object".to_owned());
            continue;
        };
        let kind = match (kind, msg.get("type").map(|t| t.get())) {
            (Some(kind), None) => kind,
            (Some(kind), Some(t)) if t == format!("\"{}\"", kind.spec().name) => kind,
            (Some(kind), Some(_)) => {
                fail(
                    "type",
                    format!("must be \"{}\" at this endpoint", kind.spec().name),
                );
                continue;
            }
            (None, Some(t)) => match serde_json::from_str::<&str>(t)
                .ok()
                .and_then(Kind::from_name)
            {
                Some(kind) => kind,
                None => {
                    fail(
                        "type",
                        "must be one of track, identify, page, screen, group, alias".to_owned(),
                    );
                    continue;
                }
            },
            (None, None) => {
                fail("type", "missing".to_owned());
                continue;
            }
        };
        let before = errors.len();
        let mut fail = |field: &str, reason: &str| {
            errors.push(FieldError {
                path: path(field),
                reason: reason.to_owned(),
            })
        };
        for field in [
            "userId",
            "anonymousId",
            "event",
            "name",
            "category",
            "groupId",
            "previousId",
            "messageId",
        ] {
            if let Some(v) = msg.get(field) {
                let text = v.get();
                let ok = text.starts_with('"') && text.len() > 2
                    || text == "null" && !kind.spec().required.contains(&field);
                if !ok {
                    fail(field, "must be a non-empty string");
                } else if let Err(reason) = check_raw(text.as_bytes()) {
                    fail(field, &reason);
                }
            }
        }
        if msg
            .get("writeKey")
            .is_some_and(|v| !v.get().starts_with('"'))
        {
            fail("writeKey", "must be a string");
        }
        let present = |f: &str| msg.get(f).is_some_and(|v| v.get() != "null");
        if !present("userId") && !present("anonymousId") {
            fail("userId", "userId or anonymousId is required");
        }
        for field in kind.spec().required {
            if !present(field) {
                fail(field, "missing");
            }
        }
        for field in ["properties", "traits", "context", "integrations"] {
            if let Some(v) = msg.get(field) {
                if !v.get().starts_with('{') && v.get() != "null" {
                    fail(field, "must be an object");
                } else if let Err(reason) = check_raw(v.get().as_bytes()) {
                    fail(field, &reason);
                }
            }
        }
        let mut times = BTreeMap::new();
        for field in ["timestamp", "originalTimestamp", "sentAt"] {
            let Some(v) = msg.get(field).copied().filter(|v| v.get() != "null") else {
                continue;
            };
            match parse_time(v) {
                Some(t) => {
                    times.insert(field, (v, t));
                }
                None => fail(field, TIME_REASON),
            }
        }
        if errors.len() > before {
            continue;
        }
        // The device's time of the event, and when the device sent it.
        let original = times
            .get("timestamp")
            .or(times.get("originalTimestamp"))
            .copied();
        let sent = times.get("sentAt").copied().or(batch_sent);
        // The device's time corrected for its clock's skew (see `record::corrected`): a
        // time that cannot be written is not a reason to refuse the message; the record
        // keeps the device's `originalTimestamp` and `sentAt` as sent.
        let corrected =
            record::corrected(received_at, original.map(|(_, t)| t), sent.map(|(_, t)| t));
        // What the server adds (ids, times, the batch's context, nulls) can take a message
        // under `max_message_bytes` past Firehose's record limit: refused now, not dead-lettered
        // later.
        let line = write_record(
            kind,
            &msg,
            batch_context.as_ref(),
            received,
            original.map(|(raw, _)| raw),
            sent.map(|(raw, _)| raw),
            corrected,
        )
        .map_err(|e| {
            SegmentError::TooLarge(format!(
                "{} encodes to a record of {} bytes, over Firehose's {FIREHOSE_MAX_RECORD_BYTES}-byte record limit",
                path(""),
                e.bytes
            ))
        })?;
        let message_id = msg
            .get("messageId")
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
        lines.push(BatchLine {
            stream: kind.stream(config).to_owned(),
            line,
            message_id,
        });
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(SegmentError::Invalid(errors))
    }
}

/// Writes one record: every key of [`RECORD_KEYS`] in order.
fn write_record(
    kind: Kind,
    msg: &Object<'_>,
    batch_context: Option<&Object<'_>>,
    received: &Received<'_>,
    original: Option<&RawValue>,
    sent: Option<&RawValue>,
    timestamp: OffsetDateTime,
) -> Result<Vec<u8>, record::TooLarge> {
    let ip = received
        .ip
        .as_deref()
        .map(|ip| serde_json::to_string(ip).expect("a string serializes"));
    let context = merged_context(msg.get("context"), batch_context, ip.as_deref());
    record::one(512, |out| {
        for key in RECORD_KEYS {
            match key {
                "type" => out.string(key, kind.spec().name),
                "messageId" => match msg.get("messageId").filter(|v| v.get() != "null") {
                    Some(v) => out.raw(key, v.get()),
                    None => out.new_id(key),
                },
                "source" => out.string(key, received.source),
                "context" => out.object(key, context.iter().map(|(k, v)| (k.as_str(), *v))),
                "timestamp" => out.time(key, timestamp),
                "originalTimestamp" => out.raw_or_null(key, original),
                "sentAt" => out.raw_or_null(key, sent),
                "receivedAt" => out.time(key, record::now_of(received.at)),
                "extra" => out.object_or_null(
                    key,
                    msg.iter()
                        .filter(|(k, _)| {
                            !COLUMNS.contains(&k.as_str()) && !DROPPED.contains(&k.as_str())
                        })
                        .map(|(k, v)| (k.as_str(), v.get())),
                ),
                field => out.raw_or_null(key, msg.get(field).copied()),
            }
        }
    })
}

/// The message's `context`, with the batch's `context` keys it lacks and `ip` (a JSON
/// string) when absent.
fn merged_context<'a>(
    own: Option<&&'a RawValue>,
    batch: Option<&'a Object<'a>>,
    ip: Option<&'a str>,
) -> BTreeMap<String, &'a str> {
    let mut fields: BTreeMap<String, &'a str> = own
        .and_then(|c| object(c))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.get()))
        .collect();
    for (k, v) in batch.into_iter().flatten() {
        fields.entry(k.clone()).or_insert_with(|| v.get());
    }
    if let Some(ip) = ip {
        fields.entry("ip".to_owned()).or_insert(ip);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::record::DATE_TIME_PATTERN;
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn time(text: &str) -> Option<OffsetDateTime> {
        let raw = serde_json::to_string(text).unwrap();
        parse_time(&RawValue::from_string(raw).unwrap())
    }

    #[test]
    fn the_document_states_the_date_time_pattern_the_server_uses() {
        let document = include_str!("../../openapi.yaml");
        assert!(
            document.contains(&format!("pattern: '{DATE_TIME_PATTERN}'")),
            "openapi.yaml's Time schema must carry DATE_TIME_PATTERN, byte for byte"
        );
    }

    #[test]
    fn rfc_3339_date_times_are_taken_and_nothing_else() {
        for ok in [
            "2026-11-24T10:00:00Z",
            "2026-11-24T10:00:00.000Z",
            "2026-11-24t10:00:00.123456789123z",
            "2024-02-29T00:00:00+05:30",
            "2000-02-29T23:59:59-00:00",
            "0000-02-29T00:00:00Z",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
        ] {
            assert!(time(ok).is_some(), "{ok} refused");
        }
        for bad in [
            "",
            "yesterday",
            "2026-02-29T10:00:00Z",
            "1900-02-29T10:00:00Z",
            "2026-04-31T10:00:00Z",
            "2026-11-24 10:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:00:00",
            "2026-11-24T10:00:00+0000",
            "2026-11-24T10:00:00+24:00",
            "2026-11-24T10:00Z",
            "2026-11-24T10:00:00.Z",
            "2026-11-24T10:00:00,5Z",
            "20261124T100000Z",
            "2026-W48-2T10:00:00Z",
            "2026-328T10:00:00Z",
            "+002026-11-24T10:00:00Z",
            "2026-11-24T10:00:00Z\n",
            " 2026-11-24T10:00:00Z",
        ] {
            assert!(time(bad).is_none(), "{bad:?} taken");
        }
    }

    proptest! {
        /// What a fuzzer generates from the document's pattern, the server takes.
        #[test]
        fn every_string_of_the_pattern_parses(
            text in proptest::string::string_regex(
                DATE_TIME_PATTERN.trim_start_matches('^').trim_end_matches('$')
            ).unwrap()
        ) {
            prop_assert!(time(&text).is_some(), "{} refused", text);
        }
    }

    /// The record's `timestamp` and `receivedAt` for a message with these times, received at
    /// 2026-11-24T12:00:00Z.
    fn corrected(timestamp: &str, sent_at: Option<&str>) -> (String, String) {
        let received = Received {
            at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_521_600),
            ip: None,
            source: "default",
        };
        let mut message = serde_json::json!({"userId": "u", "event": "e", "timestamp": timestamp});
        if let Some(sent) = sent_at {
            message["sentAt"] = sent.into();
        }
        let lines = encode(
            V1::Single(Kind::Track),
            message.to_string().as_bytes(),
            &received,
            &SegmentConfig::default(),
        )
        .unwrap();
        let record: Value = serde_json::from_slice(&lines[0].line).unwrap();
        (
            record["timestamp"].as_str().unwrap().to_owned(),
            record["receivedAt"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn a_message_whose_record_would_exceed_firehoses_limit_is_refused() {
        let config = SegmentConfig {
            max_message_bytes: FIREHOSE_MAX_RECORD_BYTES,
            max_batch_bytes: 2 * FIREHOSE_MAX_RECORD_BYTES,
            ..SegmentConfig::default()
        };
        let received = Received {
            at: SystemTime::now(),
            ip: Some("192.0.2.1".to_owned()),
            source: "default",
        };
        let message = |pad: usize| {
            serde_json::json!({"type": "track", "userId": "u", "event": "e", "properties": {"p": "x".repeat(pad)}})
                .to_string()
        };
        // Under the message limit as sent, over the record limit once encoded.
        let body = message(FIREHOSE_MAX_RECORD_BYTES - 200);
        assert!(body.len() <= config.max_message_bytes);
        let e = encode(V1::Single(Kind::Track), body.as_bytes(), &received, &config).unwrap_err();
        assert!(
            matches!(&e, SegmentError::TooLarge(why) if why.contains("Firehose's 1024000-byte record limit")),
            "{e:?}"
        );
        let batch = format!(
            r#"{{"batch":[{}]}}"#,
            message(FIREHOSE_MAX_RECORD_BYTES - 300)
        );
        assert!(matches!(
            encode(V1::Batch, batch.as_bytes(), &received, &config),
            Err(SegmentError::TooLarge(why)) if why.starts_with("batch[0] encodes")
        ));
        let fits = message(FIREHOSE_MAX_RECORD_BYTES - 1000);
        let lines = encode(V1::Single(Kind::Track), fits.as_bytes(), &received, &config).unwrap();
        assert!(lines[0].line.len() <= FIREHOSE_MAX_RECORD_BYTES);
    }

    #[test]
    fn a_skew_that_cannot_be_written_keeps_the_servers_time() {
        let (t, received) = corrected("2026-11-24T09:00:00Z", Some("2026-11-24T10:00:00Z"));
        assert_eq!(
            (t.as_str(), received.as_str()),
            ("2026-11-24T11:00:00.000Z", "2026-11-24T12:00:00.000Z")
        );
        // Corrections past year 9999 or before 0000, and a device time an offset carries
        // past 9999 in UTC: every such message is valid, and the record keeps a time RFC
        // 3339 can write.
        for (timestamp, sent) in [
            ("9999-12-31T00:00:00Z", Some("0001-01-01T00:00:00Z")),
            ("0001-01-01T00:00:00Z", Some("9999-12-31T00:00:00Z")),
            ("9999-12-31T23:59:59-23:59", None),
        ] {
            let (t, received) = corrected(timestamp, sent);
            assert_eq!(t, received, "{timestamp} {sent:?}");
        }
        let (t, _) = corrected("0000-01-01T00:30:00+00:30", None);
        assert_eq!(t, "0000-01-01T00:00:00.000Z");
    }
}
