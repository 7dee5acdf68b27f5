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
use std::sync::LazyLock;
use std::time::SystemTime;

use regex::Regex;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::config::{FIREHOSE_MAX_RECORD_BYTES, SegmentConfig};
use crate::event::{FieldError, check_raw};
use crate::queue::BatchLine;

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
    /// Short path analytics.js uses (`/v1/t`, …).
    short: &'static str,
    required: &'static [&'static str],
}

/// Every message type, declared once.
const KINDS: [Spec; 6] = [
    Spec {
        kind: Kind::Track,
        name: "track",
        short: "t",
        required: &["event"],
    },
    Spec {
        kind: Kind::Identify,
        name: "identify",
        short: "i",
        required: &[],
    },
    Spec {
        kind: Kind::Page,
        name: "page",
        short: "p",
        required: &[],
    },
    Spec {
        kind: Kind::Screen,
        name: "screen",
        short: "s",
        required: &[],
    },
    Spec {
        kind: Kind::Group,
        name: "group",
        short: "g",
        required: &["groupId"],
    },
    Spec {
        kind: Kind::Alias,
        name: "alias",
        short: "a",
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

impl V1 {
    /// The endpoint at `path`, if it is one.
    pub fn from_path(path: &str) -> Option<V1> {
        // RudderStack's browser SDK sends its `sendBeacon` batches here.
        if path == "/beacon/v1/batch" {
            return Some(V1::Batch);
        }
        let rest = path.strip_prefix("/v1/")?;
        match rest {
            "batch" | "import" => Some(V1::Batch),
            _ => KINDS
                .iter()
                .find(|s| s.name == rest || s.short == rest)
                .map(|s| V1::Single(s.kind)),
        }
    }

    /// Metric label.
    pub fn name(self) -> &'static str {
        match self {
            V1::Batch => "v1_batch",
            V1::Single(Kind::Track) => "v1_track",
            V1::Single(Kind::Identify) => "v1_identify",
            V1::Single(Kind::Page) => "v1_page",
            V1::Single(Kind::Screen) => "v1_screen",
            V1::Single(Kind::Group) => "v1_group",
            V1::Single(Kind::Alias) => "v1_alias",
        }
    }

    /// Every endpoint's metric label.
    pub const LABELS: [&'static str; 7] = [
        "v1_batch",
        "v1_track",
        "v1_identify",
        "v1_page",
        "v1_screen",
        "v1_group",
        "v1_alias",
    ];
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
    let received_at = OffsetDateTime::from(received.at);
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
        // The device's time corrected for its clock's skew. Client clocks can be anywhere in
        // the years 0000–9999, and the correction of two such times may leave that range (it
        // once panicked, found by schemathesis) or land where RFC 3339 cannot write it in UTC.
        // A time that cannot be written is not a reason to refuse the message (the document
        // allows every such pair): the record then takes the server's `receivedAt`, and keeps
        // the device's `originalTimestamp` and `sentAt` as sent.
        let corrected = match (original, sent) {
            (Some((_, o)), Some((_, s))) => received_at.checked_sub(s - o).and_then(writable_utc),
            (Some((_, o)), None) => writable_utc(o),
            (None, _) => None,
        }
        .unwrap_or(received_at);
        let line = write_record(
            kind,
            &msg,
            batch_context.as_ref(),
            received,
            original.map(|(raw, _)| raw),
            sent.map(|(raw, _)| raw),
            corrected,
        );
        // What the server adds (ids, times, the batch's context, nulls) can take a message
        // under `max_message_bytes` past Firehose's record limit: refused now, not dead-lettered
        // later.
        if line.len() > FIREHOSE_MAX_RECORD_BYTES {
            return Err(SegmentError::TooLarge(format!(
                "{} encodes to a record of {} bytes, over Firehose's {FIREHOSE_MAX_RECORD_BYTES}-byte record limit",
                path(""),
                line.len()
            )));
        }
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

/// Why a time field was refused.
const TIME_REASON: &str = "must be an RFC 3339 date-time such as 2026-11-24T10:00:00.000Z";

/// The date-times `/v1` accepts: the whole language, which `openapi.yaml` states as the
/// `Time` schema's `pattern` (a test keeps the two identical, and checks that `time` parses
/// every string of it). It is RFC 3339's `date-time` (section 5.6): a date that exists (month
/// lengths and leap years are in the pattern, so a tool generating strings from it makes only
/// real dates), `T` or `t`, hours 00–23, no leap second (`:60`), any number of fraction
/// digits, then `Z`, `z` or an offset `±hh:mm`. What ISO 8601 adds beyond RFC 3339 (week and
/// ordinal dates, the basic format, `+hhmm` offsets, reduced precision) is refused: no
/// document could say which of it a parser takes, and the SDKs send RFC 3339
/// (`toISOString()`, Python's `isoformat()` of an aware time).
pub const DATE_TIME_PATTERN: &str = concat!(
    "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
    "[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?",
    "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$",
);

/// A time field's value, if it is a string of [`DATE_TIME_PATTERN`].
fn parse_time(raw: &RawValue) -> Option<OffsetDateTime> {
    static GRAMMAR: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(DATE_TIME_PATTERN).expect("the date-time pattern compiles"));
    let text: String = serde_json::from_str(raw.get()).ok()?;
    if !GRAMMAR.is_match(&text) {
        return None;
    }
    // Every string of the pattern is one `time` parses (a property test checks it).
    OffsetDateTime::parse(&text, &Rfc3339).ok()
}

/// `t` in UTC, if RFC 3339 can write it there (years 0000–9999): an offset can carry a time
/// near either end of that range past it.
fn writable_utc(t: OffsetDateTime) -> Option<OffsetDateTime> {
    t.checked_to_offset(UtcOffset::UTC)
        .filter(|t| (0..=9999).contains(&t.year()))
}

/// `t` as the record writes it: UTC with milliseconds. `t` is in UTC already (see
/// [`writable_utc`]).
fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
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
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let raw_or_null = |field: &str| msg.get(field).map_or("null", |v| v.get()).to_owned();
    let message_id = match msg.get("messageId").filter(|v| v.get() != "null") {
        Some(v) => v.get().to_owned(),
        None => quoted(&uuid::Uuid::now_v7().to_string()),
    };
    let context = merged_context(msg.get("context"), batch_context, received.ip.as_deref());
    let extra: Vec<(&String, &&RawValue)> = msg
        .iter()
        .filter(|(k, _)| !COLUMNS.contains(&k.as_str()) && !DROPPED.contains(&k.as_str()))
        .collect();
    let extra = if extra.is_empty() {
        "null".to_owned()
    } else {
        join_object(extra.into_iter().map(|(k, v)| (k.as_str(), v.get())))
    };
    for key in RECORD_KEYS {
        let value = match key {
            "type" => quoted(kind.spec().name),
            "messageId" => message_id.clone(),
            "source" => quoted(received.source),
            "context" => context.clone(),
            "timestamp" => quoted(&format_time(timestamp)),
            "originalTimestamp" => original.map_or("null", |v| v.get()).to_owned(),
            "sentAt" => sent.map_or("null", |v| v.get()).to_owned(),
            "receivedAt" => quoted(&format_time(OffsetDateTime::from(received.at))),
            "extra" => extra.clone(),
            field => raw_or_null(field),
        };
        out.push(if key == "type" { b'{' } else { b',' });
        out.extend_from_slice(quoted(key).as_bytes());
        out.push(b':');
        // A CR or LF inside valid JSON can only be whitespace between tokens.
        out.extend(value.bytes().filter(|&b| b != b'\n' && b != b'\r'));
    }
    out.extend_from_slice(b"}\n");
    out
}

/// The message's `context`, with the batch's `context` keys it lacks and `ip` when absent.
fn merged_context(own: Option<&&RawValue>, batch: Option<&Object<'_>>, ip: Option<&str>) -> String {
    let mut fields: BTreeMap<String, String> = own
        .and_then(|c| object(c))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect();
    for (k, v) in batch.into_iter().flatten() {
        fields
            .entry(k.clone())
            .or_insert_with(|| v.get().to_owned());
    }
    if let Some(ip) = ip {
        fields
            .entry("ip".to_owned())
            .or_insert_with(|| serde_json::to_string(ip).expect("a string serializes"));
    }
    join_object(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn join_object<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let parts: Vec<String> = fields
        .map(|(k, v)| {
            format!(
                "{}:{v}",
                serde_json::to_string(k).expect("a string serializes")
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn time(text: &str) -> Option<OffsetDateTime> {
        let raw = serde_json::to_string(text).unwrap();
        parse_time(&RawValue::from_string(raw).unwrap())
    }

    #[test]
    fn the_document_states_the_date_time_pattern_the_server_uses() {
        let document = include_str!("../openapi.yaml");
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
