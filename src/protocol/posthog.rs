//! PostHog's capture API, as its SDKs send it (`posthog-python`, `posthog-node`,
//! `posthog-js`): events at `/e/`, `/i/v0/e/`, `/capture/` and `/batch/` (each also without
//! its slash), and the browser SDK's start-up calls (`/array/<token>/config[.js]`,
//! `/flags/`, `/decide/`), answered so that it runs with no feature flags, no session
//! recording and no surveys.
//!
//! A body is decoded as the SDKs encode it: `Content-Encoding: gzip` (the server SDKs), raw
//! gzip with no header (posthog-js: `text/plain`, recognised by its magic bytes, or the
//! `compression=gzip-js` of older versions), or a form `data=` holding base64 JSON
//! (`compression=base64`, posthog-js's beacons). Its JSON is a batch (`{"api_key", "batch",
//! "sent_at"}`), an array of events, or one event. The project token (`api_key`, `token`,
//! `$token`, or an event's `properties.token`) names the source, like a write key.
//!
//! Every event becomes one record with PostHog's own field names, the same keys for every
//! event (`null` where it has none): `uuid` (the message id the dedup window keeps),
//! `source`, `event`, `distinct_id` (top level, or `properties.distinct_id` where posthog-js
//! puts it), `properties` (without the token), `$set`, `$set_once`, the skew-corrected
//! `timestamp` (`received_at − (sent_at − timestamp)`), the device's `client_timestamp` and
//! `sent_at` as sent, `received_at`, `ip` (the connection's), and `extra` (other top-level
//! fields). A request is stored whole or refused whole.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::json::{check_raw, integer_value};
use super::record::{self, TIME_REASON, parse_time};
use super::{Accepted, Auth, Methods, Path, Protocol, Records, Registration, Request, Route};
use crate::body::{self, Encoding};
use crate::config::{Config, FIREHOSE_MAX_RECORD_BYTES, StreamList};
use crate::ingest::{IngestError, body_error};
use crate::protocol::classic::FieldError;
use crate::queue::BatchLine;
use crate::response::json_response;

/// Registered in [`super::PROTOCOLS`].
pub const PROTOCOL: Registration = Registration {
    name: "posthog",
    routes: &ROUTES,
    streams,
    enabled,
    validate: super::valid,
    build,
};

const CAPTURE: u8 = 0;
const FLAGS: u8 = 1;
const CONFIG: u8 = 2;

const ROUTES: [Route; 13] = [
    capture("/e/"),
    capture("/e"),
    capture("/i/v0/e/"),
    capture("/i/v0/e"),
    capture("/capture/"),
    capture("/capture"),
    capture("/batch/"),
    capture("/batch"),
    flags("/flags/"),
    flags("/flags"),
    flags("/decide/"),
    flags("/decide"),
    Route {
        path: Path::Prefix("/array/"),
        label: "posthog_config",
        methods: Methods::GET,
        auth: Auth::Open,
        strict_content_type: false,
        id: CONFIG,
    },
];

const fn capture(path: &'static str) -> Route {
    Route {
        path: Path::Exact(path),
        label: "posthog_capture",
        methods: Methods::POST,
        // The project token is in the body.
        auth: Auth::Protocol,
        // posthog-js labels raw gzip `text/plain` and base64 `x-www-form-urlencoded`.
        strict_content_type: false,
        id: CAPTURE,
    }
}

/// Flags are answered alike to everyone: none are stored, and nothing is.
const fn flags(path: &'static str) -> Route {
    Route {
        path: Path::Exact(path),
        label: "posthog_flags",
        methods: Methods::ANY,
        auth: Auth::Open,
        strict_content_type: false,
        id: FLAGS,
    }
}

fn streams(config: &Config) -> Vec<(&'static str, &StreamList)> {
    let p = &config.posthog;
    let mut lists = vec![("posthog.events", &p.events)];
    for (key, list) in [
        ("posthog.identify", &p.identify),
        ("posthog.alias", &p.alias),
        ("posthog.group", &p.group),
    ] {
        if let Some(list) = list {
            lists.push((key, list));
        }
    }
    lists
}

fn enabled(config: &Config) -> bool {
    config.posthog.enabled
}

fn build(config: &Config) -> Box<dyn Protocol> {
    let p = &config.posthog;
    let stream = |list: &Option<StreamList>| list.as_ref().unwrap_or(&p.events).queue().to_owned();
    Box::new(PostHog {
        streams: [
            p.events.queue().to_owned(),
            stream(&p.identify),
            stream(&p.alias),
            stream(&p.group),
        ],
        max_events: config.server.max_events_per_request,
    })
}

/// `[posthog]`: PostHog's capture API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostHogConfig {
    /// Whether its routes are served.
    pub enabled: bool,
    /// Delivery stream(s) of its events (and of the kinds below left unset).
    pub events: StreamList,
    /// Stream(s) of `$identify`, `$set` and `$set_once` events, if not `events`.
    pub identify: Option<StreamList>,
    /// Stream(s) of `$create_alias` events, if not `events`.
    pub alias: Option<StreamList>,
    /// Stream(s) of `$groupidentify` events, if not `events`.
    pub group: Option<StreamList>,
}

impl Default for PostHogConfig {
    fn default() -> Self {
        PostHogConfig {
            enabled: true,
            events: "posthog_events".into(),
            identify: None,
            alias: None,
            group: None,
        }
    }
}

/// The capture API as configured: a stream per kind (events, identify, alias, group).
struct PostHog {
    streams: [String; 4],
    max_events: usize,
}

/// Top-level event fields with a column of their own; the rest go to `extra`.
const COLUMNS: [&str; 7] = [
    "event",
    "distinct_id",
    "properties",
    "$set",
    "$set_once",
    "timestamp",
    "uuid",
];

/// Never stored: the project token is the key.
const DROPPED: [&str; 3] = ["api_key", "token", "$token"];

/// Where its records keep the client's address and user agent, and what a plan checks.
pub static SHAPE: crate::policy::Shape = crate::policy::Shape {
    ip: &["ip", "properties.$ip"],
    user_agent: &["properties.$raw_user_agent"],
    planned,
    ids: &[
        "distinct_id",
        "properties.$anon_distinct_id",
        "properties.$device_id",
    ],
};

/// A record as a tracking plan sees it: an event by its name with its `properties`;
/// `$identify` and `$set` by their `$set` traits, `$groupidentify` by its `$group_set`.
fn planned(record: &serde_json::Value) -> Option<crate::policy::plan::Planned> {
    use crate::policy::plan::{Kind, Planned};
    let name = record["event"].as_str()?;
    let (kind, document) = match name {
        "$identify" | "$set" => (
            Kind::Identify,
            serde_json::json!({"traits": record["$set"]}),
        ),
        "$groupidentify" => (
            Kind::Group,
            serde_json::json!({"traits": record["properties"]["$group_set"]}),
        ),
        _ => (
            Kind::Event,
            serde_json::json!({"properties": record["properties"]}),
        ),
    };
    Some(Planned {
        kind,
        name: name.to_owned(),
        document,
    })
}

impl Protocol for PostHog {
    fn shape(&self) -> &'static crate::policy::Shape {
        &SHAPE
    }

    fn accept(&self, request: &Request<'_>) -> Result<Accepted, IngestError> {
        match request.route.id {
            CAPTURE => self.capture(request),
            FLAGS => Ok(Accepted {
                records: Records::None,
                answer: json_response(StatusCode::OK, &flags_answer()),
            }),
            _ => config_answer(request.path),
        }
    }

    /// posthog-js before 1.384.3 sent its XHRs `withCredentials`.
    fn cors_credentials(&self) -> bool {
        true
    }
}

type Object<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

fn object<'a>(raw: &'a RawValue) -> Option<Object<'a>> {
    raw.get()
        .starts_with('{')
        .then(|| serde_json::from_str(raw.get()).ok())
        .flatten()
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> IngestError {
    IngestError::Invalid(vec![FieldError {
        path: path.into(),
        reason: reason.into(),
    }])
}

impl PostHog {
    fn capture(&self, request: &Request<'_>) -> Result<Accepted, IngestError> {
        let query: BTreeMap<Cow<'_, str>, Cow<'_, str>> =
            form_urlencoded::parse(request.query.unwrap_or("").as_bytes()).collect();
        let body = decode(request, &query)?;
        let top: &RawValue = serde_json::from_slice(&body)
            .map_err(|e| invalid("$", format!("body is not valid JSON: {e}")))?;
        // A batch, an array of events (posthog-js before 1.407.3), or one event.
        let (envelope, items, batch) = match top.get().as_bytes().first() {
            Some(b'[') => (None, array(top, "$")?, true),
            Some(b'{') => {
                let envelope = object(top).ok_or_else(|| invalid("$", "must be an object"))?;
                match envelope.get("batch").copied() {
                    Some(batch) => (Some(envelope), array(batch, "batch")?, true),
                    None => (None, vec![top], false),
                }
            }
            _ => return Err(invalid("$", "must be an object or an array of events")),
        };
        if items.is_empty() {
            return Err(invalid(
                if envelope.is_some() { "batch" } else { "$" },
                "must not be empty",
            ));
        }
        if items.len() > self.max_events {
            return Err(IngestError::TooManyEvents {
                count: items.len(),
                max: self.max_events,
            });
        }
        let path = |i: usize, field: &str| match (batch, envelope.is_some(), field) {
            (false, _, "") => "$".to_owned(),
            (false, _, f) => f.to_owned(),
            (true, true, "") => format!("batch[{i}]"),
            (true, true, f) => format!("batch[{i}].{f}"),
            (true, false, "") => format!("[{i}]"),
            (true, false, f) => format!("[{i}].{f}"),
        };
        let mut errors = Vec::new();
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match object(item) {
                Some(event) => events.push(event),
                None => errors.push(FieldError {
                    path: path(i, ""),
                    reason: "must be an object".to_owned(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(IngestError::Invalid(errors));
        }
        // The token: the envelope's, else the single event's, else the first event's
        // `properties.token` (posthog-js puts it on every event).
        let key_holder = envelope.as_ref().or(events.first().filter(|_| !batch));
        let holder_path = |field: &str| match envelope {
            Some(_) => field.to_owned(),
            None => path(0, field),
        };
        for field in ["api_key", "token", "$token"] {
            if key_holder
                .and_then(|o| o.get(field))
                .is_some_and(|v| !v.get().starts_with('"'))
            {
                errors.push(FieldError {
                    path: holder_path(field),
                    reason: "must be a string".to_owned(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(IngestError::Invalid(errors));
        }
        let token = key_holder
            .and_then(|o| {
                ["api_key", "token", "$token"]
                    .iter()
                    .find_map(|k| o.get(*k))
            })
            .copied()
            .or_else(|| {
                events.first().and_then(|e| {
                    e.get("properties")
                        .and_then(|p| object(p))
                        .and_then(|p| p.get("token").copied())
                })
            })
            .and_then(|t| serde_json::from_str::<String>(t.get()).ok());
        let source = request.source(token.as_deref())?;
        // When the device sent the request: the batch's `sent_at`, or the `_` (ms) of
        // posthog-js before 1.407.3.
        let mut sent = None;
        if let Some(raw) = key_holder
            .and_then(|o| o.get("sent_at"))
            .copied()
            .filter(|v| v.get() != "null")
        {
            match parse_time(raw) {
                Some(t) => sent = Some((raw.get().to_owned(), t)),
                None => errors.push(FieldError {
                    path: holder_path("sent_at"),
                    reason: TIME_REASON.to_owned(),
                }),
            }
        } else if let Some(ms) = query.get("_").and_then(|v| v.parse::<i64>().ok()) {
            sent = record::from_millis(ms).map(|t| (format!("\"{}\"", record::format_time(t)), t));
        }
        let received = Received {
            at: record::now_of(request.at),
            source: &source,
            ip: request.ip,
            sent: sent.as_ref().map(|(raw, t)| (raw.as_str(), *t)),
            single: !batch,
        };
        let mut lines = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let before = errors.len();
            let checked = check(event, &mut |field: &str, reason: &str| {
                errors.push(FieldError {
                    path: path(i, field),
                    reason: reason.to_owned(),
                })
            });
            if errors.len() > before {
                continue;
            }
            let line = write(event, &checked, &received).map_err(|e| {
                IngestError::ProtocolTooLarge(format!(
                    "{} encodes to a record of {} bytes, over Firehose's \
                     {FIREHOSE_MAX_RECORD_BYTES}-byte record limit",
                    path(i, ""),
                    e.bytes
                ))
            })?;
            lines.push(BatchLine {
                stream: self.streams[checked.kind].clone(),
                line,
                message_id: checked.uuid.clone(),
            });
        }
        if !errors.is_empty() {
            return Err(IngestError::Invalid(errors));
        }
        Ok(Accepted {
            records: Records::Messages {
                source,
                ids: "posthog",
                lines,
            },
            // What PostHog's capture answers. Exactly 200: posthog-python and posthog-js
            // retry any other status, 2xx included.
            answer: json_response(StatusCode::OK, &serde_json::json!({"status": 1})),
        })
    }
}

/// The body as JSON text: undone gzip the headers did not announce, and a form's base64.
fn decode<'a>(
    request: &'a Request<'_>,
    query: &BTreeMap<Cow<'_, str>, Cow<'_, str>>,
) -> Result<Cow<'a, [u8]>, IngestError> {
    let limit = request.max_body_bytes;
    let mut body: Cow<'a, [u8]> = Cow::Borrowed(request.body);
    let compression = query.get("compression").map(|c| c.as_ref());
    if let Some(other) = compression.filter(|c| !["gzip-js", "gzip", "base64"].contains(c)) {
        return Err(invalid(
            "compression",
            format!(
                "{other:?} is not supported (gzip-js, base64; posthog-js stopped sending lz64 \
                 in 1.63.0)"
            ),
        ));
    }
    let form = request
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
        && body.starts_with(b"data=");
    if compression == Some("base64") || form {
        let data = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "data")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| invalid("data", "missing (a base64 form body)"))?;
        let text = data.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|_| invalid("data", "must be base64"))?;
        if decoded.len() > limit {
            return Err(IngestError::BodyTooLarge { limit });
        }
        body = Cow::Owned(decoded);
    }
    // gzip's magic bytes: posthog-js sends raw gzip as `text/plain`, with no header.
    if body.starts_with(&[0x1f, 0x8b]) {
        let raw = Bytes::copy_from_slice(&body);
        body = Cow::Owned(
            body::decode(raw, Encoding::Gzip, limit)
                .map_err(body_error)?
                .to_vec(),
        );
    } else if matches!(compression, Some("gzip-js" | "gzip")) {
        return Err(IngestError::Corrupt);
    }
    Ok(body)
}

fn array<'a>(raw: &'a RawValue, path: &str) -> Result<Vec<&'a RawValue>, IngestError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(path, "must be an array"))
}

/// What the server knows of a request.
struct Received<'a> {
    at: OffsetDateTime,
    source: &'a str,
    ip: Option<&'a str>,
    /// The batch's `sent_at`: raw JSON, and the time.
    sent: Option<(&'a str, OffsetDateTime)>,
    /// Whether the request is one event, whose `sent_at` is that column, not an extra.
    single: bool,
}

/// What checking an event found.
struct Checked<'a> {
    /// Index into the stream table: events, identify, alias, group.
    kind: usize,
    uuid: Option<String>,
    /// Raw JSON of the distinct id.
    distinct_id: Cow<'a, str>,
    properties: Option<Object<'a>>,
    timestamp: Option<(&'a RawValue, OffsetDateTime)>,
}

/// Checks an event, naming every offending field through `fail`.
fn check<'a>(event: &Object<'a>, fail: &mut dyn FnMut(&str, &str)) -> Checked<'a> {
    let string = |v: &RawValue| v.get().starts_with('"') && v.get().len() > 2;
    let name = event.get("event").copied();
    match name {
        Some(v) if string(v) => {
            if let Err(reason) = check_raw(v.get().as_bytes()) {
                fail("event", &reason);
            }
        }
        Some(_) => fail("event", "must be a non-empty string"),
        None => fail("event", "missing"),
    }
    let properties = match event.get("properties").copied() {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => match object(v) {
            Some(p) => {
                if let Err(reason) = check_raw(v.get().as_bytes()) {
                    fail("properties", &reason);
                }
                Some(p)
            }
            None => {
                fail("properties", "must be an object");
                None
            }
        },
    };
    for field in ["$set", "$set_once"] {
        if let Some(v) = event.get(field).filter(|v| v.get() != "null") {
            if !v.get().starts_with('{') {
                fail(field, "must be an object");
            } else if let Err(reason) = check_raw(v.get().as_bytes()) {
                fail(field, &reason);
            }
        }
    }
    // posthog-js sends the distinct id only in `properties`. PostHog takes a number too
    // and stores it as text; the record does the same.
    let distinct = event
        .get("distinct_id")
        .copied()
        .filter(|v| v.get() != "null")
        .map(|v| ("distinct_id", v))
        .or_else(|| {
            properties
                .as_ref()
                .and_then(|p| p.get("distinct_id").copied())
                .filter(|v| v.get() != "null")
                .map(|v| ("properties.distinct_id", v))
        });
    let distinct_id = match distinct {
        Some((_, v)) if string(v) => Cow::Borrowed(v.get()),
        Some((_, v)) if integer_value(v.get()).is_some() || v.get().parse::<f64>().is_ok() => {
            Cow::Owned(format!("\"{}\"", v.get()))
        }
        Some((field, _)) => {
            fail(field, "must be a non-empty string or a number");
            Cow::Borrowed("null")
        }
        None => {
            fail("distinct_id", "missing (here or in properties.distinct_id)");
            Cow::Borrowed("null")
        }
    };
    if let Err(reason) = check_raw(distinct_id.as_bytes()) {
        fail("distinct_id", &reason);
    }
    let uuid = match event.get("uuid").copied().filter(|v| v.get() != "null") {
        None => None,
        Some(v) => match serde_json::from_str::<String>(v.get()) {
            Ok(u) if !u.is_empty() && check_raw(v.get().as_bytes()).is_ok() => Some(u),
            _ => {
                fail("uuid", "must be a non-empty string");
                None
            }
        },
    };
    let timestamp = match event
        .get("timestamp")
        .copied()
        .filter(|v| v.get() != "null")
    {
        None => None,
        Some(v) => match parse_time(v) {
            Some(t) => Some((v, t)),
            None => {
                fail("timestamp", TIME_REASON);
                None
            }
        },
    };
    let kind = match name.map(RawValue::get) {
        Some("\"$identify\"" | "\"$set\"" | "\"$set_once\"") => 1,
        Some("\"$create_alias\"") => 2,
        Some("\"$groupidentify\"") => 3,
        _ => 0,
    };
    Checked {
        kind,
        uuid,
        distinct_id,
        properties,
        timestamp,
    }
}

/// Writes an event's record.
fn write(
    event: &Object<'_>,
    checked: &Checked<'_>,
    received: &Received<'_>,
) -> Result<Vec<u8>, record::TooLarge> {
    let device = checked.timestamp.map(|(_, t)| t);
    let timestamp = record::corrected(received.at, device, received.sent.map(|(_, t)| t));
    record::one(512, |out| {
        match event
            .get("uuid")
            .copied()
            .filter(|_| checked.uuid.is_some())
        {
            Some(uuid) => out.raw("uuid", uuid.get()),
            None => out.new_id("uuid"),
        }
        out.string("source", received.source);
        out.raw_or_null("event", event.get("event").copied());
        out.raw("distinct_id", &checked.distinct_id);
        match &checked.properties {
            // Without the token: it is the key.
            Some(p) => out.object(
                "properties",
                p.iter()
                    .filter(|(k, _)| k.as_ref() != "token")
                    .map(|(k, v)| (k.as_ref(), v.get())),
            ),
            None => out.raw("properties", "null"),
        }
        for field in ["$set", "$set_once"] {
            out.raw_or_null(field, event.get(field).copied());
        }
        out.time("timestamp", timestamp);
        out.raw_or_null("client_timestamp", checked.timestamp.map(|(raw, _)| raw));
        out.raw("sent_at", received.sent.map_or("null", |(raw, _)| raw));
        out.time("received_at", received.at);
        match received.ip {
            Some(ip) => out.string("ip", ip),
            None => out.raw("ip", "null"),
        }
        out.object_or_null(
            "extra",
            event
                .iter()
                .filter(|(k, _)| !COLUMNS.contains(&k.as_ref()) && !DROPPED.contains(&k.as_ref()))
                .filter(|(k, _)| !(received.single && k.as_ref() == "sent_at"))
                .map(|(k, v)| (k.as_ref(), v.get())),
        );
    })
}

/// What `/flags` and `/decide` answer: no flags (in every version's field names), and the
/// start-up settings of the old `/decide` (no recording, no surveys, no autocapture).
fn flags_answer() -> serde_json::Value {
    let mut answer = remote_config();
    let fields = answer.as_object_mut().expect("an object");
    fields.remove("token");
    fields.insert("flags".into(), serde_json::json!({}));
    fields.insert("featureFlags".into(), serde_json::json!({}));
    fields.insert("featureFlagPayloads".into(), serde_json::json!({}));
    fields.insert("errorsWhileComputingFlags".into(), false.into());
    fields.insert(
        "config".into(),
        serde_json::json!({"enable_collect_everything": false}),
    );
    answer
}

/// posthog-js's remote config: no feature flags, recording, surveys or other extensions
/// (so it loads no more scripts), gzip for its events, and events sent to `/e/`.
fn remote_config() -> serde_json::Value {
    serde_json::json!({
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": false,
        "analytics": {"endpoint": "/e/"},
        "sessionRecording": false,
        "surveys": false,
        "heatmaps": false,
        "autocaptureExceptions": false,
        "captureDeadClicks": false,
        "capturePerformance": false,
        "productTours": false,
        "conversations": false,
        "siteApps": [],
        "elementsChainAsString": true,
        "defaultIdentifiedOnly": true,
    })
}

/// `/array/<token>/config` (JSON) and `/array/<token>/config.js` (the script that sets it).
fn config_answer(path: &str) -> Result<Accepted, IngestError> {
    let rest = path.strip_prefix("/array/").ok_or(IngestError::NotFound)?;
    let (token, script) = match (
        rest.strip_suffix("/config"),
        rest.strip_suffix("/config.js"),
    ) {
        (Some(token), _) => (token, false),
        (_, Some(token)) => (token, true),
        _ => return Err(IngestError::NotFound),
    };
    if token.is_empty() || token.contains('/') {
        return Err(IngestError::NotFound);
    }
    let mut config = remote_config();
    config["token"] = token.into();
    let answer = if script {
        // The token as a JSON string is a JavaScript string literal too.
        let token = serde_json::to_string(token).expect("a string serializes");
        let text = format!(
            "(function(){{window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{{}};\
             window._POSTHOG_REMOTE_CONFIG[{token}]={{config:{config},siteApps:[]}};}})();\n"
        );
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/javascript"),
        );
        response
    } else {
        json_response(StatusCode::OK, &config)
    };
    Ok(Accepted {
        records: Records::None,
        answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn received(sent: Option<(&'static str, OffsetDateTime)>) -> Received<'static> {
        Received {
            at: record::from_millis(1_795_521_600_000).unwrap(),
            source: "web",
            ip: Some("192.0.2.9"),
            sent,
            single: false,
        }
    }

    fn encode(
        event: &Value,
        sent: Option<(&'static str, OffsetDateTime)>,
    ) -> Result<Value, Vec<String>> {
        let text = Box::leak(event.to_string().into_boxed_str());
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        let obj = object(raw).unwrap();
        let mut errors = Vec::new();
        let checked = check(&obj, &mut |f, r| errors.push(format!("{f}: {r}")));
        if !errors.is_empty() {
            return Err(errors);
        }
        let line = write(&obj, &checked, &received(sent)).unwrap();
        Ok(serde_json::from_slice(&line).unwrap())
    }

    #[test]
    fn a_browser_event_keeps_posthogs_names_and_loses_its_token() {
        let r = encode(
            &json!({"uuid": "0198c3c1-0000-7000-8000-000000000001", "event": "$pageview",
                "properties": {"token": "phc_secret", "distinct_id": "d1", "$lib": "web"},
                "$set": {"plan": "pro"}, "timestamp": "2026-11-24T11:59:50.000Z", "offset": 5}),
            Some((
                "\"2026-11-24T11:59:55.000Z\"",
                parse_time_str("2026-11-24T11:59:55.000Z"),
            )),
        )
        .unwrap();
        assert_eq!(r["distinct_id"], "d1");
        assert_eq!(r["properties"], json!({"distinct_id": "d1", "$lib": "web"}));
        assert_eq!(r["$set"], json!({"plan": "pro"}));
        assert_eq!(r["$set_once"], Value::Null);
        // Sent 5 s after it happened, by the device's clock.
        assert_eq!(r["timestamp"], "2026-11-24T11:59:55.000Z");
        assert_eq!(r["client_timestamp"], "2026-11-24T11:59:50.000Z");
        assert_eq!(r["received_at"], "2026-11-24T12:00:00.000Z");
        assert_eq!(r["ip"], "192.0.2.9");
        assert_eq!(r["extra"], json!({"offset": 5}));
        assert!(!r.to_string().contains("phc_secret"));
    }

    fn parse_time_str(text: &str) -> OffsetDateTime {
        record::parse_time_text(text).unwrap()
    }

    #[test]
    fn numeric_distinct_ids_are_text_and_broken_fields_are_named() {
        let r = encode(&json!({"event": "e", "distinct_id": 42}), None).unwrap();
        assert_eq!(r["distinct_id"], "42");
        assert_eq!(r["uuid"].as_str().unwrap().len(), 36);
        let errors = encode(
            &json!({"event": "", "properties": [1], "$set": 1, "timestamp": "noon", "uuid": 7}),
            None,
        )
        .unwrap_err();
        assert_eq!(
            errors
                .iter()
                .map(|e| e.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            [
                "event",
                "properties",
                "$set",
                "distinct_id",
                "uuid",
                "timestamp"
            ]
        );
    }

    #[test]
    fn the_config_script_sets_the_tokens_config() {
        let Accepted { answer, .. } = config_answer("/array/phc_x/config.js").unwrap();
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/javascript");
        assert!(config_answer("/array/phc_x/other").is_err());
        assert!(config_answer("/array//config").is_err());
    }
}
