//! Request bodies: validation against the original service's schemas, and encoding into the
//! exact NDJSON bytes that will be shipped.
//!
//! The body is parsed once into borrowed [`RawValue`]s. Types are checked on the raw JSON
//! text, and valid values are copied byte for byte into the output line, so an event is
//! never re-serialized between the request and the lake. Free-form objects (`metadata`,
//! `attributes`) are copied raw too, minus any line breaks (they can only be insignificant
//! whitespace in valid JSON) so that every record stays on one line.

use std::borrow::Cow;
use std::time::SystemTime;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use super::json::MAX_FREE_FORM_DEPTH;
use super::json::{check_raw, decoded_chars, integer_value};
use super::{
    Accepted, Auth, Methods, Path, Protocol, Registration, Request, Route, object, record,
};
use crate::config::{Config, StreamList};
use crate::ingest::IngestError;
use crate::response::json_response;

/// The three ingest endpoints of the original service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /track`: a user's events, one record per event.
    Track,
    /// `POST /alias`: links two user ids.
    Alias,
    /// `POST /profile`: a user's attributes.
    Profile,
}

impl Endpoint {
    /// Every endpoint, in a fixed order.
    pub const ALL: [Endpoint; 3] = [Endpoint::Track, Endpoint::Alias, Endpoint::Profile];

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/track" => Some(Endpoint::Track),
            "/alias" => Some(Endpoint::Alias),
            "/profile" => Some(Endpoint::Profile),
            _ => None,
        }
    }

    /// Short name, used in metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Track => "track",
            Endpoint::Alias => "alias",
            Endpoint::Profile => "profile",
        }
    }
}

/// The classic API, registered in [`super::PROTOCOLS`].
pub const PROTOCOL: Registration = Registration {
    name: "classic",
    routes: &ROUTES,
    streams,
    enabled: always,
    validate: super::valid,
    build,
};

const ROUTES: [Route; 3] = [
    route("/track", Endpoint::Track),
    route("/alias", Endpoint::Alias),
    route("/profile", Endpoint::Profile),
];

const fn route(path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        path: Path::Exact(path),
        // The path without its slash.
        label: match endpoint {
            Endpoint::Track => "track",
            Endpoint::Alias => "alias",
            Endpoint::Profile => "profile",
        },
        methods: Methods::POST,
        auth: Auth::Key,
        // Our own API insists on JSON: its clients are ours to fix.
        strict_content_type: true,
        id: endpoint as u8,
    }
}

fn streams(config: &Config) -> Vec<(&'static str, &StreamList)> {
    let s = &config.streams;
    vec![
        ("streams.track", &s.track),
        ("streams.alias", &s.alias),
        ("streams.profile", &s.profile),
    ]
}

fn always(_: &Config) -> bool {
    true
}

fn build(config: &Config) -> Box<dyn Protocol> {
    Box::new(Classic {
        limits: Limits {
            max_events: config.server.max_events_per_request,
            max_string_chars: config.server.max_string_chars,
        },
        streams: [
            config.streams.track.queue().to_owned(),
            config.streams.alias.queue().to_owned(),
            config.streams.profile.queue().to_owned(),
        ],
    })
}

/// The classic API as configured: its limits, and the stream of each endpoint.
struct Classic {
    limits: Limits,
    streams: [String; 3],
}

/// Classic records hold no address or user agent; a plan sees a `/track` event by its
/// `eventName`, with its `metadata` as `properties`.
pub static SHAPE: crate::policy::Shape = crate::policy::Shape {
    ip: &[],
    user_agent: &[],
    planned,
    ids: &["userId", "newUserId", "originalUserId"],
};

fn planned(record: &serde_json::Value) -> Option<crate::policy::plan::Planned> {
    Some(crate::policy::plan::Planned {
        kind: crate::policy::plan::Kind::Event,
        name: record["eventName"].as_str()?.to_owned(),
        document: serde_json::json!({"properties": record["metadata"]}),
    })
}

impl Protocol for Classic {
    fn shape(&self) -> &'static crate::policy::Shape {
        &SHAPE
    }

    fn accept(&self, request: &Request<'_>) -> Result<Accepted, IngestError> {
        let endpoint = Endpoint::ALL[usize::from(request.route.id)];
        let records = encode_with_limits(endpoint, request.body, request.at, self.limits).map_err(
            |e| match e {
                EncodeError::Invalid(details) => IngestError::Invalid(details),
                EncodeError::TooManyEvents { count, max } => {
                    IngestError::TooManyEvents { count, max }
                }
                EncodeError::RecordTooLarge { index, bytes } => {
                    IngestError::EventTooLarge { index, bytes }
                }
            },
        )?;
        let answer = json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "accepted": records.count}),
        );
        Ok(Accepted {
            records: super::Records::Lines {
                stream: self.streams[usize::from(request.route.id)].clone(),
                ndjson: records.ndjson,
                count: records.count,
            },
            answer,
        })
    }

    fn compat_errors(&self) -> bool {
        false
    }
}

/// `[streams]`: the delivery stream (or streams) each endpoint writes to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// Stream(s) of `POST /track`.
    pub track: StreamList,
    /// Stream(s) of `POST /alias`.
    pub alias: StreamList,
    /// Stream(s) of `POST /profile`.
    pub profile: StreamList,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            track: "log_user_events".into(),
            alias: "link_users".into(),
            profile: "user_profiles".into(),
        }
    }
}

/// One reason a body was refused, by JSON path (`events[0].eventName`; `$` is the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where in the body.
    pub path: String,
    /// What is wrong (`missing`, `must be a string`, `unknown field`, ...).
    pub reason: String,
}

/// Why a body could not be turned into records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The body breaks the schema; every offending field is listed.
    Invalid(Vec<FieldError>),
    /// More events than `server.max_events_per_request`.
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// One event's record would exceed Firehose's 1,000 KiB record limit.
    RecordTooLarge {
        /// Position of the event in the request.
        index: usize,
        /// Size of its encoded line.
        bytes: usize,
    },
}

/// The records of one request: NDJSON lines, each ending in `\n`, ready to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The concatenated lines.
    pub ndjson: Vec<u8>,
    /// How many lines.
    pub count: u32,
}

/// Caps on what one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events in one `/track` request.
    pub max_events: usize,
    /// Longest id or event name, in characters (Unicode code points, as JSON Schema's
    /// `maxLength` counts them) once decoded.
    pub max_string_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 2_000,
            max_string_chars: 1_024,
        }
    }
}

/// Validates `body` for `endpoint` and encodes its records, stamped with `received_at`,
/// under the default [`Limits`].
pub fn encode(
    endpoint: Endpoint,
    body: &[u8],
    received_at: SystemTime,
) -> Result<Records, EncodeError> {
    encode_with_limits(endpoint, body, received_at, Limits::default())
}

/// [`encode`] under the given limits.
pub fn encode_with_limits(
    endpoint: Endpoint,
    body: &[u8],
    received_at: SystemTime,
    limits: Limits,
) -> Result<Records, EncodeError> {
    let mut v = Validator {
        errors: Vec::new(),
        limits,
    };
    let Some((top, items)) = v.top(body, endpoint == Endpoint::Track) else {
        return Err(EncodeError::Invalid(v.errors));
    };
    let mut out = Writer::new(body.len(), received_at);
    match endpoint {
        Endpoint::Track => {
            v.unknown_fields(Scope::Top, &top, &["userId", "events"]);
            let user_id = v.string(&top, Scope::Top, "userId");
            let events = v.events(&top, items)?;
            if !v.errors.is_empty() {
                return Err(EncodeError::Invalid(v.errors));
            }
            let (user_id, events) = (user_id.expect("valid"), events.expect("valid"));
            for (i, event) in events.iter().enumerate() {
                out.begin();
                out.field("userId", Some(user_id));
                out.field("eventName", event.get("eventName"));
                out.integer_field("timestampUTC", event.get("timestampUTC"));
                out.object_field("metadata", event.get("metadata"));
                out.end(i)?;
            }
        }
        Endpoint::Alias => {
            v.unknown_fields(
                Scope::Top,
                &top,
                &["newUserId", "originalUserId", "timestampUTC"],
            );
            v.string(&top, Scope::Top, "newUserId");
            v.string(&top, Scope::Top, "originalUserId");
            v.timestamp(&top, Scope::Top);
            if !v.errors.is_empty() {
                return Err(EncodeError::Invalid(v.errors));
            }
            out.begin();
            out.field("newUserId", top.get("newUserId"));
            out.field("originalUserId", top.get("originalUserId"));
            out.integer_field("timestampUTC", top.get("timestampUTC"));
            out.end(0)?;
        }
        Endpoint::Profile => {
            v.unknown_fields(Scope::Top, &top, &["userId", "attributes", "timestampUTC"]);
            v.string(&top, Scope::Top, "userId");
            v.free_object(&top, Scope::Top, "attributes");
            v.timestamp(&top, Scope::Top);
            if !v.errors.is_empty() {
                return Err(EncodeError::Invalid(v.errors));
            }
            out.begin();
            out.field("userId", top.get("userId"));
            out.integer_field("timestampUTC", top.get("timestampUTC"));
            out.object_field("attributes", top.get("attributes"));
            out.end(0)?;
        }
    }
    Ok(out.finish())
}

/// A JSON object's fields in the order sent (a repeated name: its last value). Names are
/// borrowed unless they have escapes (`"user\u0049d"`). The classic bodies have two to four
/// fields, so a lookup is a short scan: no allocation per name, as a map would make.
struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Object<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }
}

fn body_object(body: &[u8]) -> Result<&RawValue, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("body is empty".to_owned());
    }
    serde_json::from_slice::<&RawValue>(body).map_err(|e| format!("body is not valid JSON: {e}"))
}

/// Collects every schema violation instead of stopping at the first, so a client learns all
/// of them from one 400.
struct Validator {
    errors: Vec<FieldError>,
    limits: Limits,
}

impl Validator {
    fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Parses `raw` as an object of raw values, or records why it is not one.
    fn object<'a>(
        &mut self,
        scope: Scope,
        raw: Result<&'a RawValue, String>,
    ) -> Option<Object<'a>> {
        let raw = match raw {
            Ok(raw) => raw,
            Err(reason) => {
                self.fail(scope.itself(), reason);
                return None;
            }
        };
        if !raw.get().starts_with('{') {
            self.fail(scope.itself(), "must be an object");
            return None;
        }
        // `raw` is valid JSON that starts as an object does: it is one.
        object::fields(raw).map(Object)
    }

    /// The body's top-level object, with the items of its array field `array` (if named)
    /// read in the same pass; only a body refused is read again, to say why.
    fn top<'a>(
        &mut self,
        body: &'a [u8],
        array: bool,
    ) -> Option<(Object<'a>, Option<Vec<&'a RawValue>>)> {
        const EVENTS: [&str; 1] = ["events"];
        let fast = match array {
            true => object::Object::from_slice_with_items(body, &EVENTS, 0)
                .map(|mut o| (Object(std::mem::take(&mut o.rest)), o.items.take())),
            false => object::Object::<0>::from_slice(body, &[]).map(|o| (Object(o.rest), None)),
        };
        match fast {
            Some(top) => Some(top),
            None => self
                .object(Scope::Top, body_object(body))
                .map(|o| (o, None)),
        }
    }

    fn unknown_fields(&mut self, scope: Scope, obj: &Object<'_>, known: &[&str]) {
        for name in obj.keys().filter(|k| !known.contains(k)) {
            self.fail(scope.field(name), "unknown field");
        }
    }

    /// A required string field.
    fn string<'a>(&mut self, obj: &Object<'a>, scope: Scope, name: &str) -> Option<&'a RawValue> {
        match obj.get(name) {
            None => self.fail(scope.field(name), "missing"),
            Some(raw) if raw.get().starts_with('"') => {
                if decoded_chars(raw.get().as_bytes()) > self.limits.max_string_chars {
                    let max = self.limits.max_string_chars;
                    self.fail(scope.field(name), format!("longer than {max} characters"));
                    return None;
                }
                if let Err(reason) = check_raw(raw.get().as_bytes()) {
                    self.fail(scope.field(name), reason);
                    return None;
                }
                return Some(raw);
            }
            Some(_) => self.fail(scope.field(name), "must be a string"),
        }
        None
    }

    /// Optional `timestampUTC`: an integer that fits in 64 bits (a lake column of type
    /// bigint), or null. See [`integer_value`] for how it may be written.
    fn timestamp(&mut self, obj: &Object<'_>, scope: Scope) {
        let Some(raw) = obj.get("timestampUTC") else {
            return;
        };
        let text = raw.get();
        if integer_value(text).is_none() && text != "null" {
            self.fail(scope.field("timestampUTC"), "must be an integer");
        }
    }

    /// Optional free-form object (`metadata`, `attributes`), or null.
    fn free_object(&mut self, obj: &Object<'_>, scope: Scope, name: &str) {
        if let Some(raw) = obj.get(name) {
            if !raw.get().starts_with('{') && raw.get() != "null" {
                self.fail(scope.field(name), "must be an object");
            } else if let Err(reason) = check_raw(raw.get().as_bytes()) {
                self.fail(scope.field(name), reason);
            }
        }
    }

    /// `events`: a non-empty array of `{eventName, metadata?, timestampUTC?}`. `Ok(None)`
    /// when invalid (the reasons are recorded); `Err` when over the event cap.
    /// `items`: the array's items when the body's first reading found them.
    fn events<'a>(
        &mut self,
        top: &Object<'a>,
        items: Option<Vec<&'a RawValue>>,
    ) -> Result<Option<Vec<Object<'a>>>, EncodeError> {
        let items = match (items, top.get("events")) {
            (Some(items), _) => items,
            (None, None) => {
                self.fail("events", "missing");
                return Ok(None);
            }
            // Valid JSON that starts as an array does is one.
            (None, Some(raw)) => match object::items(raw) {
                Some(items) => items,
                None => {
                    self.fail("events", "must be an array");
                    return Ok(None);
                }
            },
        };
        if items.is_empty() {
            self.fail("events", "must not be empty");
            return Ok(None);
        }
        if items.len() > self.limits.max_events {
            return Err(EncodeError::TooManyEvents {
                count: items.len(),
                max: self.limits.max_events,
            });
        }
        let before = self.errors.len();
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let scope = Scope::Event(i);
            if let Some(event) = self.object(scope, Ok(item)) {
                self.unknown_fields(scope, &event, &["eventName", "metadata", "timestampUTC"]);
                self.string(&event, scope, "eventName");
                self.free_object(&event, scope, "metadata");
                self.timestamp(&event, scope);
                events.push(event);
            }
        }
        Ok((self.errors.len() == before).then_some(events))
    }
}

/// Where in the body a check applies; the path text is built only for an error.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// The body's top-level object.
    Top,
    /// `events[i]`.
    Event(usize),
}

impl Scope {
    /// The path of field `name` in this scope.
    fn field(self, name: &str) -> String {
        match self {
            Scope::Top => name.to_owned(),
            Scope::Event(i) => format!("events[{i}].{name}"),
        }
    }

    /// The path of the scope itself.
    fn itself(self) -> String {
        match self {
            Scope::Top => "$".to_owned(),
            Scope::Event(i) => format!("events[{i}]"),
        }
    }
}

/// Writes records as `{"messageId":..,"receivedAt":..,<fields>}\n`.
struct Writer {
    out: record::Writer,
    /// `receivedAt` as a JSON string: the same in every record of the request.
    received_at: String,
}

impl Writer {
    fn new(body_len: usize, received_at: SystemTime) -> Writer {
        Writer {
            // Each record adds ~110 bytes of id, time and keys to what the body carried.
            out: record::Writer::with_capacity(body_len + 256),
            received_at: format!("\"{}\"", record::format_time(record::now_of(received_at))),
        }
    }

    fn begin(&mut self) {
        self.out.begin();
        self.out.new_id("messageId");
        self.out.raw("receivedAt", &self.received_at);
    }

    /// A scalar field copied raw (already valid JSON), or `null` when absent.
    fn field(&mut self, name: &str, raw: Option<&RawValue>) {
        self.out.raw_or_null(name, raw);
    }

    /// An integer field (validated by [`integer_value`]) in plain integer form, however the
    /// client wrote it (`1.7e9` is written `1700000000`), or `null`: the lake's column is a
    /// bigint, which a reader would not parse from `1.7e9`.
    fn integer_field(&mut self, name: &str, raw: Option<&RawValue>) {
        match raw.and_then(|r| integer_value(r.get())) {
            Some(n) => self.out.raw(name, itoa::Buffer::new().format(n)),
            None => self.out.raw(name, "null"),
        }
    }

    /// A free-form object copied raw (the writer drops its line breaks), or `null`.
    fn object_field(&mut self, name: &str, raw: Option<&RawValue>) {
        self.out.raw_or_null(name, raw);
    }

    fn end(&mut self, index: usize) -> Result<(), EncodeError> {
        self.out.end().map_err(|e| EncodeError::RecordTooLarge {
            index,
            bytes: e.bytes,
        })
    }

    fn finish(self) -> Records {
        Records {
            count: self.out.lines(),
            ndjson: self.out.into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FIREHOSE_MAX_RECORD_BYTES;
    use serde_json::{Value, json};

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123)
    }

    fn lines(records: &Records) -> Vec<Value> {
        let text = std::str::from_utf8(&records.ndjson).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn errors(endpoint: Endpoint, body: &str) -> Vec<(String, String)> {
        match encode(endpoint, body.as_bytes(), now()) {
            Err(EncodeError::Invalid(errs)) => {
                errs.into_iter().map(|e| (e.path, e.reason)).collect()
            }
            other => panic!("{body}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_bodies_are_accepted() {
        let cases: &[(Endpoint, &str, u32)] = &[
            (
                Endpoint::Track,
                r#"{"userId":"u","events":[{"eventName":"a"}]}"#,
                1,
            ),
            (
                Endpoint::Track,
                r#"{"userId":"u","events":[{"eventName":"a","metadata":{"k":[1,{"x":null}]},"timestampUTC":1700000000},{"eventName":"b","metadata":null,"timestampUTC":null}]}"#,
                2,
            ),
            (
                Endpoint::Track,
                r#"{"userId":"","events":[{"eventName":""}]}"#,
                1,
            ),
            (
                Endpoint::Track,
                r#"{"user\u0049d":"u","events":[{"eventName":"a"}]}"#,
                1,
            ),
            (
                Endpoint::Track,
                "{\"userId\":\"u\",\n\"events\":[{\"eventName\":\"a\",\"metadata\":{\n\"a\": 1\r\n}}]}\n",
                1,
            ),
            (
                Endpoint::Alias,
                r#"{"newUserId":"n","originalUserId":"o"}"#,
                1,
            ),
            (
                Endpoint::Alias,
                r#"{"newUserId":"n","originalUserId":"o","timestampUTC":-5}"#,
                1,
            ),
            (Endpoint::Profile, r#"{"userId":"u"}"#, 1),
            (
                Endpoint::Profile,
                r#"{"userId":"u","attributes":{"plan":"pro"},"timestampUTC":0}"#,
                1,
            ),
        ];
        for (endpoint, body, n) in cases {
            let records = encode(*endpoint, body.as_bytes(), now())
                .unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(records.count, *n, "{body}");
            assert_eq!(lines(&records).len(), *n as usize, "{body}");
        }
    }

    #[test]
    fn invalid_bodies_name_every_offending_path() {
        use Endpoint::*;
        let m = "missing";
        let s = "must be a string";
        let i = "must be an integer";
        let o = "must be an object";
        let u = "unknown field";
        type Case<'a> = (Endpoint, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (Track, r#"{}"#, &[("userId", m), ("events", m)]),
            (
                Track,
                r#"{"userId":1,"events":[]}"#,
                &[("userId", s), ("events", "must not be empty")],
            ),
            (
                Track,
                r#"{"userId":"u","events":{}}"#,
                &[("events", "must be an array")],
            ),
            (Track, r#"{"userId":"u","events":[1]}"#, &[("events[0]", o)]),
            (
                Track,
                r#"{"userId":"u","events":[{}]}"#,
                &[("events[0].eventName", m)],
            ),
            (
                Track,
                r#"{"userId":"u","events":[{"eventName":"a"},{"eventName":2,"timestampUTC":"1","metadata":[],"x":1}],"extra":true}"#,
                &[
                    ("extra", u),
                    ("events[1].x", u),
                    ("events[1].eventName", s),
                    ("events[1].metadata", o),
                    ("events[1].timestampUTC", i),
                ],
            ),
            (
                Track,
                r#"{"userId":"u","events":[{"eventName":"a","timestampUTC":1.5}]}"#,
                &[("events[0].timestampUTC", i)],
            ),
            (
                Track,
                r#"{"userId":"u","events":[{"eventName":"a","timestampUTC":true}]}"#,
                &[("events[0].timestampUTC", i)],
            ),
            (
                Track,
                r#"{"userId":"u","events":[{"eventName":"a","timestampUTC":1e-3}]}"#,
                &[("events[0].timestampUTC", i)],
            ),
            (
                Track,
                r#"{"userId":"u","events":[{"eventName":"a","timestampUTC":99999999999999999999}]}"#,
                &[("events[0].timestampUTC", i)],
            ),
            (
                Track,
                r#"{"userId":null,"events":[{"eventName":"a"}]}"#,
                &[("userId", s)],
            ),
            (Alias, r#"{}"#, &[("newUserId", m), ("originalUserId", m)]),
            (
                Alias,
                r#"{"newUserId":"n","originalUserId":["o"],"timestampUTC":"x","userId":"u"}"#,
                &[("userId", u), ("originalUserId", s), ("timestampUTC", i)],
            ),
            (
                Profile,
                r#"{"attributes":"x"}"#,
                &[("userId", m), ("attributes", o)],
            ),
            (
                Profile,
                r#"{"userId":"u","attributes":[1],"events":[]}"#,
                &[("events", u), ("attributes", o)],
            ),
        ];
        for (endpoint, body, expected) in cases {
            let got = errors(*endpoint, body);
            let want: Vec<(String, String)> = expected
                .iter()
                .map(|(p, r)| (p.to_string(), r.to_string()))
                .collect();
            assert_eq!(got, want, "{endpoint:?} {body}");
        }
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused_for_every_endpoint() {
        for endpoint in Endpoint::ALL {
            for body in [
                "",
                "  \n",
                "not json",
                "[]",
                "\"s\"",
                "1",
                "null",
                "{\"userId\":",
                "{} {}",
            ] {
                let errs = errors(endpoint, body);
                assert_eq!(errs.len(), 1, "{body:?}: {errs:?}");
                assert_eq!(errs[0].0, "$", "{body:?}");
            }
        }
    }

    #[test]
    fn track_flattens_one_record_per_event_with_user_id() {
        let body = br#"{"userId":"u1","events":[{"eventName":"a","metadata":{"k":1},"timestampUTC":5},{"eventName":"b"}]}"#;
        let records = encode(Endpoint::Track, body, now()).unwrap();
        let got = lines(&records);
        assert_eq!(got.len(), 2);
        for line in &got {
            let keys: Vec<&str> = line
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                [
                    "eventName",
                    "messageId",
                    "metadata",
                    "receivedAt",
                    "timestampUTC",
                    "userId"
                ]
            );
            assert_eq!(line["userId"], "u1");
        }
        assert_eq!(got[0]["eventName"], "a");
        assert_eq!(got[0]["metadata"], json!({"k": 1}));
        assert_eq!(got[0]["timestampUTC"], 5);
        assert_eq!(got[1]["eventName"], "b");
        assert_eq!(got[1]["metadata"], Value::Null);
        assert_eq!(got[1]["timestampUTC"], Value::Null);
    }

    #[test]
    fn alias_and_profile_fill_omitted_fields_with_null() {
        let alias = lines(
            &encode(
                Endpoint::Alias,
                br#"{"newUserId":"n","originalUserId":"o"}"#,
                now(),
            )
            .unwrap(),
        );
        assert_eq!(alias.len(), 1);
        assert_eq!(alias[0]["newUserId"], "n");
        assert_eq!(alias[0]["originalUserId"], "o");
        assert!(alias[0].as_object().unwrap().contains_key("timestampUTC"));
        assert_eq!(alias[0]["timestampUTC"], Value::Null);

        let profile = lines(&encode(Endpoint::Profile, br#"{"userId":"u"}"#, now()).unwrap());
        assert_eq!(profile[0]["attributes"], Value::Null);
        assert_eq!(profile[0]["timestampUTC"], Value::Null);
        assert_eq!(profile[0].as_object().unwrap().len(), 5);
    }

    #[test]
    fn message_ids_are_unique_uuid_v7_and_received_at_is_rfc3339_millis() {
        let events: Vec<String> = (0..500)
            .map(|i| format!(r#"{{"eventName":"e{i}"}}"#))
            .collect();
        let body = format!(r#"{{"userId":"u","events":[{}]}}"#, events.join(","));
        let got = lines(&encode(Endpoint::Track, body.as_bytes(), now()).unwrap());
        let mut ids = std::collections::HashSet::new();
        for line in &got {
            let id: uuid::Uuid = line["messageId"].as_str().unwrap().parse().unwrap();
            assert_eq!(id.get_version_num(), 7);
            assert!(ids.insert(id));
            assert_eq!(line["receivedAt"], "2023-11-14T22:13:20.123Z");
        }
        assert_eq!(ids.len(), 500);
    }

    #[test]
    fn strings_keep_their_escapes_and_objects_lose_line_breaks() {
        let body = "{\"userId\":\"a\\nb\\u00e9\",\"events\":[{\"eventName\":\"x\",\"metadata\":{\r\n  \"s\": \"l1\\nl2\"\n}}]}";
        let records = encode(Endpoint::Track, body.as_bytes(), now()).unwrap();
        let text = std::str::from_utf8(&records.ndjson).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["userId"], "a\nbé");
        assert_eq!(line["metadata"]["s"], "l1\nl2");
    }

    #[test]
    fn caps_on_events_and_string_lengths() {
        let limits = Limits {
            max_events: 3,
            max_string_chars: 5,
        };
        let four = r#"{"userId":"u","events":[{"eventName":"a"},{"eventName":"a"},{"eventName":"a"},{"eventName":"a"}]}"#;
        assert_eq!(
            encode_with_limits(Endpoint::Track, four.as_bytes(), now(), limits),
            Err(EncodeError::TooManyEvents { count: 4, max: 3 })
        );
        let three = r#"{"userId":"12345","events":[{"eventName":"a"},{"eventName":"a"},{"eventName":"123456"}]}"#;
        match encode_with_limits(Endpoint::Track, three.as_bytes(), now(), limits) {
            Err(EncodeError::Invalid(e)) => {
                assert_eq!(
                    e,
                    vec![FieldError {
                        path: "events[2].eventName".to_owned(),
                        reason: "longer than 5 characters".to_owned()
                    }]
                )
            }
            other => panic!("{other:?}"),
        }
        let alias = r#"{"newUserId":"123456","originalUserId":"1"}"#;
        assert!(matches!(
            encode_with_limits(Endpoint::Alias, alias.as_bytes(), now(), limits),
            Err(EncodeError::Invalid(_))
        ));
    }

    #[test]
    fn an_integer_is_taken_however_it_is_written_and_stored_plainly() {
        for (text, want) in [
            ("1732435200", Some(1_732_435_200)),
            ("-284.0", Some(-284)),
            ("1.7324352e9", Some(1_732_435_200)),
            ("17324352E+2", Some(1_732_435_200)),
            ("1000e-3", Some(1)),
            ("1500e-3", None),
            ("-0", Some(0)),
            ("-0.0e99999999999999999999", Some(0)),
            ("9223372036854775807", Some(i64::MAX)),
            ("9223372036854775807.000", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("9.223372036854776e18", None),
            ("1e19", None),
            ("1e99999999999999999999", None),
            ("1.5", None),
            ("15e-1", None),
            ("1e-3", None),
            ("\"1\"", None),
            ("true", None),
            ("null", None),
            ("[1]", None),
        ] {
            assert_eq!(integer_value(text), want, "{text}");
        }
        let body = r#"{"userId":"u","events":[{"eventName":"a","timestampUTC":1.7324352e9},{"eventName":"b","timestampUTC":-0}]}"#;
        let records = encode(Endpoint::Track, body.as_bytes(), now()).unwrap();
        let text = String::from_utf8(records.ndjson).unwrap();
        assert!(text.contains(r#""timestampUTC":1732435200,"#), "{text}");
        assert!(text.contains(r#""timestampUTC":0,"#), "{text}");
    }

    #[test]
    fn string_limits_count_characters_as_json_schema_does() {
        for (literal, chars) in [
            (r#""""#, 0),
            (r#""abc""#, 3),
            ("\"é日😀\"", 3),
            (r#""\n\u00e9\ud83d\ude00""#, 3),
            (r#""\ud83d\u0041""#, 2),
        ] {
            assert_eq!(decoded_chars(literal.as_bytes()), chars, "{literal}");
        }
        let limits = Limits {
            max_events: 10,
            max_string_chars: 3,
        };
        let body = |id: &str| format!(r#"{{"userId":"{id}","events":[{{"eventName":"a"}}]}}"#);
        for ok in ["日本語", r"\u65e5\u672c\u8a9e", "😀😀😀"] {
            let e = encode_with_limits(Endpoint::Track, body(ok).as_bytes(), now(), limits);
            assert!(e.is_ok(), "{ok}: {e:?}");
        }
        let four = encode_with_limits(Endpoint::Track, body("abcd").as_bytes(), now(), limits);
        assert!(matches!(four, Err(EncodeError::Invalid(_))), "{four:?}");
    }

    #[test]
    fn values_strict_readers_refuse_are_refused_at_ingest() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let attrs = |v: String| format!(r#"{{"userId":"u","attributes":{{"a":{v}}}}}"#);
        // The attributes object itself is one level.
        let ok = attrs(deep(MAX_FREE_FORM_DEPTH - 1));
        assert!(encode(Endpoint::Profile, ok.as_bytes(), now()).is_ok());
        assert_eq!(
            errors(Endpoint::Profile, &attrs(deep(MAX_FREE_FORM_DEPTH))),
            [(
                "attributes".to_owned(),
                "nested deeper than 64 levels".to_owned()
            )]
        );
        // Brackets inside strings do not count.
        let in_string = attrs(format!("\"{}\"", "[".repeat(200)));
        assert!(encode(Endpoint::Profile, in_string.as_bytes(), now()).is_ok());
        let lone = "contains an unpaired UTF-16 surrogate escape".to_owned();
        for (body, path) in [
            (
                r#"{"userId":"\ud800","events":[{"eventName":"a"}]}"#,
                "userId",
            ),
            (
                r#"{"userId":"u","events":[{"eventName":"x\udc00"}]}"#,
                "events[0].eventName",
            ),
            (
                r#"{"userId":"u","events":[{"eventName":"a","metadata":{"k":"\ud83dx"}}]}"#,
                "events[0].metadata",
            ),
            (
                r#"{"userId":"u","events":[{"eventName":"a","metadata":{"\ud83d":1}}]}"#,
                "events[0].metadata",
            ),
        ] {
            assert_eq!(
                errors(Endpoint::Track, body),
                [(path.to_owned(), lone.clone())],
                "{body}"
            );
        }
        // Pairs, and an escaped backslash before "ud800", are fine.
        let pair = r#"{"userId":"\ud83d\ude00 \\ud800","events":[{"eventName":"\u00e9","metadata":{"e":"\ud83d\ude00"}}]}"#;
        let records = encode(Endpoint::Track, pair.as_bytes(), now()).unwrap();
        assert_eq!(lines(&records)[0]["userId"], "\u{1F600} \\ud800");
    }

    #[test]
    fn an_event_over_the_firehose_record_limit_is_too_large() {
        let big = "x".repeat(FIREHOSE_MAX_RECORD_BYTES);
        let body = format!(
            r#"{{"userId":"u","events":[{{"eventName":"a"}},{{"eventName":"b","metadata":{{"pad":"{big}"}}}}]}}"#
        );
        match encode(Endpoint::Track, body.as_bytes(), now()) {
            Err(EncodeError::RecordTooLarge { index, bytes }) => {
                assert_eq!(index, 1);
                assert!(bytes > FIREHOSE_MAX_RECORD_BYTES);
            }
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
    }
}
