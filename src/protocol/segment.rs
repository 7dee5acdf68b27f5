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

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::SystemTime;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::json::check_raw;
use super::object::{self, Object};
use super::record::{self, TIME_REASON, Writer, parse_time};
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
        let source = request.source_with(|| write_key(request.body))?;
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

/// Every field of a message that is not kept in `extra`: those with a column of their own,
/// then those never stored (the write key is a secret; `receivedAt` is the server's). Read
/// into slots (see [`Object`]); the constants below are their indices.
const FIELDS: [&str; 18] = [
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
    "writeKey",
    "receivedAt",
];
const TYPE: usize = 0;
const MESSAGE_ID: usize = 1;
const USER_ID: usize = 2;
const ANONYMOUS_ID: usize = 3;
const CONTEXT: usize = 11;
const INTEGRATIONS: usize = 12;
const TIMESTAMP: usize = 13;
const ORIGINAL_TIMESTAMP: usize = 14;
const SENT_AT: usize = 15;
const WRITE_KEY: usize = 16;

/// The fields of a message that must be non-empty strings when sent (`null` where optional).
const STRINGS: [usize; 8] = [2, 3, 4, 5, 6, 9, 10, MESSAGE_ID];
/// The fields of a message that must be objects when sent (or `null`).
const OBJECTS: [usize; 4] = [7, 8, CONTEXT, INTEGRATIONS];

/// A batch's own fields.
const BATCH_FIELDS: [&str; 4] = ["batch", "sentAt", "context", "writeKey"];

type Message<'a> = Object<'a, { FIELDS.len() }>;

/// The `writeKey` field of a body, for browsers that send the key there.
pub fn write_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Key {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<Key>(body).ok()?.write_key
}

/// The request's constants, each written once per request rather than once per message.
struct Constants<'a> {
    received_at: OffsetDateTime,
    /// `receivedAt`, `source`, and the connection's address as JSON strings.
    received_text: String,
    source: String,
    ip: Option<String>,
    batch_sent: Option<(&'a RawValue, OffsetDateTime)>,
    batch_context: Option<Vec<(Cow<'a, str>, &'a RawValue)>>,
    /// The batch's `context` as sent (empty when none): its values go into every record.
    batch_context_text: &'a str,
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
    // Why a body is not an object, when it is not one (the fast path reads it only once).
    let not_an_object = || match serde_json::from_slice::<&RawValue>(body) {
        Err(e) => invalid("$", &format!("body is not valid JSON: {e}")),
        Ok(_) => invalid("$", "must be an object"),
    };
    let mut errors = Vec::new();
    let mut batch_sent = None;
    let mut batch_context = None;
    // Each message: its size as sent, and its fields (`None`: not an object).
    let mut batch_context_text = "";
    // Each message: its text as sent, and its fields (`None`: not an object).
    let messages: Vec<(&str, Option<Message<'_>>)> = match endpoint {
        V1::Single(_) => {
            let message = Object::from_slice(body, &FIELDS).ok_or_else(not_an_object)?;
            if body.len() > config.max_message_bytes {
                return Err(SegmentError::TooLarge(format!(
                    "message of {} bytes, over the limit of {}",
                    body.len(),
                    config.max_message_bytes
                )));
            }
            // Valid JSON is UTF-8; were it not, a line break stands in for the text, so
            // that every value is searched for line breaks.
            vec![(std::str::from_utf8(body).unwrap_or("\n"), Some(message))]
        }
        V1::Batch => {
            // One pass over the body reads the batch, its array and its messages; only a
            // refused body is read again, to say why.
            let (top, read) = match Object::from_slice_with_objects(body, &BATCH_FIELDS, 0, &FIELDS)
            {
                Some(batch) => batch,
                None => (
                    Object::from_slice(body, &BATCH_FIELDS).ok_or_else(not_an_object)?,
                    None,
                ),
            };
            if body.len() > config.max_batch_bytes {
                return Err(SegmentError::TooLarge(format!(
                    "batch of {} bytes, over the limit of {}",
                    body.len(),
                    config.max_batch_bytes
                )));
            }
            let items: Vec<(&str, Option<Message<'_>>)> = match read {
                Some(items) => items.into_iter().map(|i| (i.text, i.object)).collect(),
                None => {
                    let raw = top.get(0).ok_or_else(|| invalid("batch", "missing"))?;
                    let items =
                        object::items(raw).ok_or_else(|| invalid("batch", "must be an array"))?;
                    items
                        .into_iter()
                        .map(|m| (m.get(), Object::parse(m, &FIELDS)))
                        .collect()
                }
            };
            if items.is_empty() {
                return Err(invalid("batch", "must not be empty"));
            }
            if top.get(3).is_some_and(|v| !v.get().starts_with('"')) {
                return Err(invalid("writeKey", "must be a string"));
            }
            // A batch's `context` goes into every record, so it is held to a message's rules.
            if let Some(v) = top.get(2) {
                if !v.get().starts_with('{') && v.get() != "null" {
                    return Err(invalid("context", "must be an object"));
                } else if let Err(reason) = check_raw(v.get().as_bytes()) {
                    return Err(invalid("context", &reason));
                }
                batch_context = object::fields(v);
                batch_context_text = v.get();
            }
            // A batch's own `sentAt` applies to each of its messages; checked once, under
            // its own path.
            if let Some(v) = top.present(1) {
                match parse_time(v) {
                    Some(t) => batch_sent = Some((v, t)),
                    None => errors.push(FieldError {
                        path: "sentAt".to_owned(),
                        reason: TIME_REASON.to_owned(),
                    }),
                }
            }
            items
        }
    };
    let prefix = endpoint == V1::Batch;
    let received_at = record::now_of(received.at);
    let constants = Constants {
        received_at,
        received_text: record::quoted_time(received_at),
        source: record::quoted(received.source),
        ip: received.ip.as_deref().map(record::quoted),
        batch_sent,
        batch_context,
        batch_context_text,
    };
    let mut lines = Vec::with_capacity(messages.len());
    for (i, (raw, msg)) in messages.into_iter().enumerate() {
        let path = |field: &str| match (prefix, field) {
            (true, "") => format!("batch[{i}]"),
            (true, f) => format!("batch[{i}].{f}"),
            (false, "") => "$".to_owned(),
            (false, f) => f.to_owned(),
        };
        let mut fail = |field: &str, reason: &str| {
            errors.push(FieldError {
                path: path(field),
                reason: reason.to_owned(),
            })
        };
        if raw.len() > config.max_message_bytes {
            return Err(SegmentError::TooLarge(format!(
                "{} is {} bytes, over the limit of {} per message",
                path(""),
                raw.len(),
                config.max_message_bytes
            )));
        }
        let Some(msg) = msg else {
            fail("", "must be an object");
            continue;
        };
        let sent_type = msg.get(TYPE).map(|t| t.get());
        // The type's name as sent, if it is a plain JSON string.
        let named = sent_type.and_then(|t| t.strip_prefix('"')?.strip_suffix('"'));
        let kind = match (endpoint, sent_type) {
            (V1::Single(kind), None) => kind,
            (V1::Single(kind), Some(_)) if named == Some(kind.spec().name) => kind,
            (V1::Single(kind), Some(_)) => {
                let reason = format!("must be \"{}\" at this endpoint", kind.spec().name);
                fail("type", &reason);
                continue;
            }
            (V1::Batch, Some(_)) => match named.and_then(Kind::from_name) {
                Some(kind) => kind,
                None => {
                    fail(
                        "type",
                        "must be one of track, identify, page, screen, group, alias",
                    );
                    continue;
                }
            },
            (V1::Batch, None) => {
                fail("type", "missing");
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
        for field in STRINGS {
            if let Some(v) = msg.get(field) {
                let text = v.get();
                let ok = text.starts_with('"') && text.len() > 2
                    || text == "null" && !kind.spec().required.contains(&FIELDS[field]);
                if !ok {
                    fail(FIELDS[field], "must be a non-empty string");
                } else if let Err(reason) = check_raw(text.as_bytes()) {
                    fail(FIELDS[field], &reason);
                }
            }
        }
        if msg
            .get(WRITE_KEY)
            .is_some_and(|v| !v.get().starts_with('"'))
        {
            fail("writeKey", "must be a string");
        }
        if msg.present(USER_ID).is_none() && msg.present(ANONYMOUS_ID).is_none() {
            fail("userId", "userId or anonymousId is required");
        }
        for field in kind.spec().required {
            let at = FIELDS.iter().position(|f| f == field).expect("a field");
            if msg.present(at).is_none() {
                fail(field, "missing");
            }
        }
        for field in OBJECTS {
            if let Some(v) = msg.get(field) {
                if !v.get().starts_with('{') && v.get() != "null" {
                    fail(FIELDS[field], "must be an object");
                } else if let Err(reason) = check_raw(v.get().as_bytes()) {
                    fail(FIELDS[field], &reason);
                }
            }
        }
        let mut times = [None; 3];
        for (slot, field) in [TIMESTAMP, ORIGINAL_TIMESTAMP, SENT_AT]
            .into_iter()
            .enumerate()
        {
            let Some(v) = msg.present(field) else {
                continue;
            };
            match parse_time(v) {
                Some(t) => times[slot] = Some((v, t)),
                None => fail(FIELDS[field], TIME_REASON),
            }
        }
        if errors.len() > before {
            continue;
        }
        // The device's time of the event, and when the device sent it.
        let original = times[0].or(times[1]);
        let sent = times[2].or(constants.batch_sent);
        // The device's time corrected for its clock's skew (see `record::corrected`): a
        // time that cannot be written is not a reason to refuse the message; the record
        // keeps the device's `originalTimestamp` and `sentAt` as sent.
        let corrected = record::corrected(
            constants.received_at,
            original.map(|(_, t)| t),
            sent.map(|(_, t)| t),
        );
        // What the server adds (ids, times, the batch's context, nulls) can take a message
        // under `max_message_bytes` past Firehose's record limit: refused now, not dead-lettered
        // later.
        let line = write_record(
            kind,
            raw,
            &msg,
            &constants,
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
            .present(MESSAGE_ID)
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

/// Writes one record: every key of [`RECORD_KEYS`] in order (a test checks the order).
fn write_record(
    kind: Kind,
    raw: &str,
    msg: &Message<'_>,
    constants: &Constants<'_>,
    original: Option<&RawValue>,
    sent: Option<&RawValue>,
    timestamp: OffsetDateTime,
) -> Result<Vec<u8>, record::TooLarge> {
    // Room for the message and what the server adds (keys, nulls, times, ids): one allocation.
    record::one_from(
        raw.len() + 512,
        &[raw, constants.batch_context_text],
        |out| {
            out.string("type", kind.spec().name);
            match msg.present(MESSAGE_ID) {
                Some(v) => out.raw("messageId", v.get()),
                None => out.new_id("messageId"),
            }
            out.raw("source", &constants.source);
            // `userId` … `previousId`: the same order in both lists.
            let columns = USER_ID..CONTEXT;
            for (key, value) in FIELDS[columns.clone()].iter().zip(&msg.known[columns]) {
                out.raw_or_null(key, *value);
            }
            write_context(out, msg.present(CONTEXT), constants);
            out.raw_or_null("integrations", msg.get(INTEGRATIONS));
            out.time("timestamp", timestamp);
            out.raw_or_null("originalTimestamp", original);
            out.raw_or_null("sentAt", sent);
            out.raw("receivedAt", &constants.received_text);
            out.object_or_null("extra", msg.rest.iter().map(|(k, v)| (k.as_ref(), v.get())));
        },
    )
}

/// The message's `context`, with the batch's `context` keys it lacks and `ip` when absent.
/// Copied as sent when it needs nothing added, or only `ip` (the common case, told without
/// reading its keys). Its keys are read otherwise: a client's duplicate keys are then
/// written once (the last value), as they were when every context was re-written.
fn write_context(out: &mut Writer, own: Option<&RawValue>, constants: &Constants<'_>) {
    let batch = constants.batch_context.as_deref().unwrap_or_default();
    // No key of `own` can be "ip" if the text `"ip"` is not in it and nothing is escaped.
    if let Some(own) = own.filter(|_| batch.is_empty()) {
        let text = own.get().as_bytes();
        static IP_KEY: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(b"\"ip\""));
        if memchr::memchr(b'\\', text).is_none() && IP_KEY.find(text).is_none() {
            return out.extended_object(
                "context",
                own.get(),
                constants.ip.as_deref().map(|ip| ("ip", ip)),
            );
        }
    }
    let own_fields = own.and_then(|c| Object::<0>::parse(c, &[]));
    let has = |key: &str| {
        own_fields
            .as_ref()
            .is_some_and(|o| o.rest.iter().any(|(k, _)| k == key))
    };
    let ip = constants.ip.as_deref().filter(|_| !has("ip"));
    if let (Some(own), Some(fields)) = (own, &own_fields)
        && batch.is_empty()
        && !fields.duplicates
    {
        return out.extended_object("context", own.get(), ip.map(|ip| ("ip", ip)));
    }
    let own = own_fields.iter().flat_map(|o| o.rest.iter());
    let inherited = batch.iter().filter(|(k, _)| !has(k));
    out.object(
        "context",
        own.chain(inherited)
            .map(|(k, v)| (k.as_ref(), v.get()))
            .chain(ip.map(|ip| ("ip", ip))),
    );
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
    fn every_record_has_the_record_keys_in_order_and_its_context_merged() {
        let received = Received {
            at: SystemTime::now(),
            ip: Some("192.0.2.1".to_owned()),
            source: "web",
        };
        let batch = |context: &str| {
            format!(
                r#"{{"batch":[{{"type":"alias","userId":"u","previousId":"p","zz":1,"context":{{"a":1,"ip":"10.0.0.1"}}}},{{"type":"track","userId":"u","event":"e","context":{{"a":1}},"writeKey":"k"}},{{"type":"page","anonymousId":"a"}}]{context}}}"#
            )
        };
        for top in ["", r#","context":{"b":2,"a":9}"#] {
            let body = batch(top);
            let lines = encode(
                V1::Batch,
                body.as_bytes(),
                &received,
                &SegmentConfig::default(),
            )
            .unwrap();
            let mut contexts = Vec::new();
            for l in &lines {
                let raw: &RawValue = serde_json::from_slice(&l.line).unwrap();
                let keys: Vec<String> = object::fields(raw)
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| k.into_owned())
                    .collect();
                assert_eq!(keys, RECORD_KEYS, "{}", raw.get());
                let record: Value = serde_json::from_slice(&l.line).unwrap();
                contexts.push(record["context"].clone());
            }
            let inherited = match top {
                "" => serde_json::json!({}),
                _ => serde_json::json!({"b": 2}),
            };
            let with = |mut c: Value| {
                c.as_object_mut()
                    .unwrap()
                    .extend(inherited.as_object().unwrap().clone());
                c
            };
            assert_eq!(
                contexts[0],
                with(serde_json::json!({"a": 1, "ip": "10.0.0.1"}))
            );
            assert_eq!(
                contexts[1],
                with(serde_json::json!({"a": 1, "ip": "192.0.2.1"}))
            );
            let mut all = serde_json::json!({"ip": "192.0.2.1"});
            if !top.is_empty() {
                all.as_object_mut()
                    .unwrap()
                    .extend([("a".to_owned(), 9.into()), ("b".to_owned(), 2.into())]);
            }
            assert_eq!(contexts[2], all, "no context of its own: the batch's whole");
            let first: Value = serde_json::from_slice(&lines[0].line).unwrap();
            assert_eq!(first["extra"], serde_json::json!({"zz": 1}));
            assert!(!String::from_utf8_lossy(&lines[1].line).contains("writeKey"));
        }
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
