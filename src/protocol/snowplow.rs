//! Snowplow's tracker protocol, as its trackers send it: `POST
//! /com.snowplowanalytics.snowplow/tp2` with a `payload_data` self-describing JSON (a batch of
//! events), and `GET /i?…` (the pixel: one event in the query string).
//!
//! Every event becomes one record: the collector's fields first (`eid`, `source`,
//! `collector_tstamp`, the skew-corrected `derived_tstamp`, `ip`, `useragent`, `referer`),
//! then the tracker's own fields under their own names, as sent (all strings), then the
//! self-describing event (`ue_px` / `ue_pr`) and the context entities (`cx` / `co`) decoded
//! into JSON as `unstruct_event` and `contexts`, so the lake can query them. Unlike
//! Snowplow's collector, which stores anything and leaves validation to its enrichment,
//! events are checked here, before they are stored: a request is stored whole or refused
//! whole (400, which the trackers do not retry).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json::check_raw;
use super::record::{self, Writer};
use super::{Accepted, Auth, Methods, Path, Protocol, Records, Registration, Request, Route};
use crate::config::{Config, ConfigError, StreamList};
use crate::ingest::IngestError;
use crate::protocol::classic::FieldError;
use crate::queue::BatchLine;

/// Registered in [`super::PROTOCOLS`].
pub const PROTOCOL: Registration = Registration {
    name: "snowplow",
    routes: &ROUTES,
    streams,
    enabled,
    validate,
    build,
};

const POST: u8 = 0;
const PIXEL: u8 = 1;

const ROUTES: [Route; 3] = [
    route(
        "/com.snowplowanalytics.snowplow/tp2",
        "snowplow_tp2",
        Methods::POST,
        POST,
    ),
    route("/i", "snowplow_pixel", Methods::GET, PIXEL),
    // The pixel's other name in Snowplow's collector.
    route("/ice.png", "snowplow_pixel", Methods::GET, PIXEL),
];

const fn route(path: &'static str, label: &'static str, methods: Methods, id: u8) -> Route {
    Route {
        path: Path::Exact(path),
        label,
        methods,
        // Trackers send no API key: the source is the key's (a `customHeaders` /
        // `X-Api-Key`), or the app id's (`snowplow.app_ids`).
        auth: Auth::Protocol,
        // The trackers label their JSON `application/json; charset=UTF-8` (or
        // `charset=utf-8`); the body is read as the protocol defines it either way.
        strict_content_type: false,
        id,
    }
}

fn streams(config: &Config) -> Vec<(&'static str, &StreamList)> {
    vec![("snowplow.events", &config.snowplow.events)]
}

fn enabled(config: &Config) -> bool {
    config.snowplow.enabled
}

fn validate(config: &Config) -> Result<(), ConfigError> {
    config
        .snowplow
        .app_ids
        .values()
        .try_for_each(|source| super::check_source_name("snowplow.app_ids", source))
}

fn build(config: &Config) -> Box<dyn Protocol> {
    Box::new(Snowplow {
        stream: config.snowplow.events.queue().to_owned(),
        app_ids: config.snowplow.app_ids.clone(),
        max_events: config.server.max_events_per_request,
    })
}

/// `[snowplow]`: Snowplow's tracker protocol.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnowplowConfig {
    /// Whether `/com.snowplowanalytics.snowplow/tp2` and `/i` are served.
    pub enabled: bool,
    /// Delivery stream(s) of its events.
    pub events: StreamList,
    /// Source by app id (`aid`): `web-shop = "web"`. Trackers cannot send an API key unless
    /// told to (custom headers), so with `[auth]` keys configured, a request without a key
    /// is taken when every event's app id is listed here, and refused (401) otherwise.
    pub app_ids: BTreeMap<String, String>,
}

impl Default for SnowplowConfig {
    fn default() -> Self {
        SnowplowConfig {
            enabled: true,
            events: "snowplow_events".into(),
            app_ids: BTreeMap::new(),
        }
    }
}

/// The tracker protocol as configured.
struct Snowplow {
    stream: String,
    app_ids: BTreeMap<String, String>,
    max_events: usize,
}

/// The `payload_data` schemas trackers send (1-0-4 today; every 1-0-x is the same shape).
const PAYLOAD_DATA: &str = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-";

/// The fields every event must have (`payload_data`'s `required`).
const REQUIRED: [&str; 3] = ["e", "p", "tv"];

/// Keys the record writes itself: a tracker field of the same name is refused (the record
/// would have the key twice).
const RESERVED: [&str; 7] = [
    "source",
    "collector_tstamp",
    "derived_tstamp",
    "useragent",
    "referer",
    "unstruct_event",
    "contexts",
];

/// Tracker fields the record writes in its own way: `eid` and `ip` (the tracker's override
/// of the address) as its columns, the encoded ones decoded.
const CONSUMED: [&str; 6] = ["eid", "ip", "ue_px", "ue_pr", "cx", "co"];

/// Most digits of a time in milliseconds: 13 reach the year 2286.
const MAX_MILLIS_DIGITS: usize = 13;

/// The 1×1 transparent GIF Snowplow's collector answers its pixel with (43 bytes).
const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0xf0, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Base64 as the trackers write it: URL-safe (JavaScript without padding, Python with);
/// the standard alphabet is taken too, as Snowplow's enrichment takes it.
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One event: its fields, decoded (every value of the protocol is a string).
type Event<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// Where its records keep the client's address and user agent, and what a plan checks.
pub static SHAPE: crate::policy::Shape = crate::policy::Shape {
    ip: &["ip"],
    user_agent: &["useragent", "ua"],
    planned,
    ids: &["uid", "duid", "tnuid", "nuid"],
};

/// A record as a tracking plan sees it: a self-describing event (`e=ue`) by its schema's
/// URI (`iglu:com.example/checkout/jsonschema/1-0-0`) with its data as `properties`; other
/// events are not planned (Snowplow's own schemas describe them).
fn planned(record: &serde_json::Value) -> Option<crate::policy::plan::Planned> {
    use crate::policy::plan::{Kind, Planned};
    if record["e"] != "ue" {
        return None;
    }
    let event = &record["unstruct_event"]["data"];
    Some(Planned {
        kind: Kind::Event,
        name: event["schema"].as_str()?.to_owned(),
        document: serde_json::json!({"properties": event["data"]}),
    })
}

impl Protocol for Snowplow {
    fn shape(&self) -> &'static crate::policy::Shape {
        &SHAPE
    }

    fn accept(&self, request: &Request<'_>) -> Result<Accepted, IngestError> {
        let (events, batch) = match request.route.id {
            POST => (post_events(request.body)?, true),
            _ => (vec![query_event(request.query)], false),
        };
        if events.len() > self.max_events {
            return Err(IngestError::ProtocolTooLarge(format!(
                "{} events, over the limit of {} per request",
                events.len(),
                self.max_events
            )));
        }
        let path = |i: usize, field: &str| match batch {
            true => format!("data[{i}].{field}"),
            false => field.to_owned(),
        };
        let source = self.source(request, &events, &path)?;
        // `SP-Anonymous` (the browser tracker's server-side anonymisation): no address kept.
        let anonymous = request.headers.contains_key("sp-anonymous");
        let collector = Collector {
            at: record::now_of(request.at),
            source: &source,
            ip: request.ip.filter(|_| !anonymous),
            useragent: request.header("user-agent"),
            referer: request.header("referer"),
        };
        let mut errors = Vec::new();
        let mut lines = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match encode(event, &collector) {
                Ok((line, eid)) => lines.push(BatchLine {
                    stream: self.stream.clone(),
                    line,
                    message_id: eid,
                }),
                Err(Refused::Fields(fields)) => {
                    errors.extend(fields.into_iter().map(|(field, reason)| FieldError {
                        path: path(i, field),
                        reason,
                    }))
                }
                Err(Refused::TooLarge(bytes)) => {
                    return Err(IngestError::ProtocolTooLarge(format!(
                        "{} encodes to a record of {bytes} bytes, over Firehose's {}-byte record limit",
                        if batch {
                            format!("data[{i}]")
                        } else {
                            "the event".to_owned()
                        },
                        crate::config::FIREHOSE_MAX_RECORD_BYTES
                    )));
                }
            }
        }
        if !errors.is_empty() {
            return Err(IngestError::Invalid(errors));
        }
        Ok(Accepted {
            records: Records::Messages {
                source,
                ids: "snowplow",
                lines,
            },
            answer: match batch {
                true => answer("text/plain; charset=utf-8", Bytes::from_static(b"ok")),
                false => {
                    let mut gif = answer("image/gif", Bytes::from_static(&PIXEL_GIF));
                    gif.headers_mut().insert(
                        CACHE_CONTROL,
                        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
                    );
                    gif
                }
            },
        })
    }

    /// The browser tracker sends every request with `credentials: 'include'`.
    fn cors_credentials(&self) -> bool {
        true
    }
}

impl Snowplow {
    /// The source: the key's, when the request carries one; else that of the events' app
    /// id (all of them must name the same one); else the open service's, or 401.
    fn source(
        &self,
        request: &Request<'_>,
        events: &[Event<'_>],
        path: &dyn Fn(usize, &str) -> String,
    ) -> Result<String, IngestError> {
        if request.keys.enabled() && request.source.is_some() {
            return request.source(None);
        }
        let mut by_app: Option<&String> = None;
        for (i, event) in events.iter().enumerate() {
            let mapped = event
                .get("aid")
                .and_then(|aid| self.app_ids.get(aid.as_ref()));
            match (by_app, mapped) {
                (_, None) => {
                    by_app = None;
                    break;
                }
                (Some(seen), Some(this)) if seen != this => {
                    return Err(IngestError::Invalid(vec![FieldError {
                        path: path(i, "aid"),
                        reason: format!(
                            "app id of source {this:?}, in a request of source {seen:?}: one \
                             request, one source"
                        ),
                    }]));
                }
                (_, Some(this)) => by_app = Some(this),
            }
        }
        match by_app {
            Some(source) => Ok(source.clone()),
            None => request.source(None),
        }
    }
}

/// What the collector adds to every event of a request.
struct Collector<'a> {
    at: time::OffsetDateTime,
    source: &'a str,
    ip: Option<&'a str>,
    useragent: Option<&'a str>,
    referer: Option<&'a str>,
}

/// Why an event was refused.
enum Refused {
    /// These fields, for these reasons.
    Fields(Vec<(&'static str, String)>),
    /// Its record would be this many bytes, over Firehose's limit.
    TooLarge(usize),
}

fn answer(content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn invalid(path: &str, reason: impl Into<String>) -> IngestError {
    IngestError::Invalid(vec![FieldError {
        path: path.to_owned(),
        reason: reason.into(),
    }])
}

/// The events of a `payload_data` body.
fn post_events(body: &[u8]) -> Result<Vec<Event<'_>>, IngestError> {
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        schema: Option<&'a RawValue>,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let payload: Payload<'_> = serde_json::from_slice(body)
        .map_err(|e| invalid("$", format!("body is not a payload_data JSON object: {e}")))?;
    let schema = payload
        .schema
        .and_then(|s| serde_json::from_str::<Cow<'_, str>>(s.get()).ok());
    if !schema.is_some_and(|s| s.starts_with(PAYLOAD_DATA)) {
        return Err(invalid("schema", format!("must be {PAYLOAD_DATA}x")));
    }
    let data = payload.data.ok_or_else(|| invalid("data", "missing"))?;
    let items: Vec<&RawValue> =
        serde_json::from_str(data.get()).map_err(|_| invalid("data", "must be an array"))?;
    if items.is_empty() {
        return Err(invalid("data", "must not be empty"));
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let fields: BTreeMap<Cow<'_, str>, &RawValue> = match serde_json::from_str(item.get()) {
            Ok(fields) if item.get().starts_with('{') => fields,
            _ => {
                errors.push(FieldError {
                    path: format!("data[{i}]"),
                    reason: "must be an object".to_owned(),
                });
                continue;
            }
        };
        let mut event = Event::new();
        for (key, value) in fields {
            match serde_json::from_str::<Cow<'_, str>>(value.get()) {
                Ok(text) => {
                    event.insert(key, text);
                }
                Err(_) => errors.push(FieldError {
                    path: format!("data[{i}].{key}"),
                    reason: "must be a string (the tracker protocol's values all are)".to_owned(),
                }),
            }
        }
        events.push(event);
    }
    if !errors.is_empty() {
        return Err(IngestError::Invalid(errors));
    }
    Ok(events)
}

/// The event of a pixel request's query string (form-encoded: `+` and `%20` are spaces),
/// without an API key sent there (`?api_key=`, `?writeKey=`): a key is never stored.
fn query_event(query: Option<&str>) -> Event<'_> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "api_key" && k != "writeKey")
        .collect()
}

/// An event's record and its `eid` (the message id the dedup window keeps).
fn encode(
    event: &Event<'_>,
    collector: &Collector<'_>,
) -> Result<(Vec<u8>, Option<String>), Refused> {
    let mut errors: Vec<(&'static str, String)> = Vec::new();
    for field in REQUIRED {
        if event.get(field).is_none_or(|v| v.is_empty()) {
            errors.push((field, "missing".to_owned()));
        }
    }
    if event.get("eid").is_some_and(|v| v.is_empty()) {
        errors.push(("eid", "must not be empty".to_owned()));
    }
    let mut millis = |field: &'static str| -> Option<time::OffsetDateTime> {
        let text = event.get(field)?;
        let digits = (1..=MAX_MILLIS_DIGITS).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_digit());
        let t = digits
            .then(|| text.parse::<i64>().ok())
            .flatten()
            .and_then(record::from_millis);
        if t.is_none() {
            errors.push((
                field,
                format!(
                    "must be milliseconds since the Unix epoch: a string of 1 to \
                     {MAX_MILLIS_DIGITS} digits"
                ),
            ));
        }
        t
    };
    let (dtm, stm, ttm) = (millis("dtm"), millis("stm"), millis("ttm"));
    let unstruct = decoded(event, "ue_px", "ue_pr", &mut errors);
    let contexts = decoded(event, "cx", "co", &mut errors);
    for key in event.keys() {
        if let Some(&reserved) = RESERVED.iter().find(|w| **w == key.as_ref()) {
            errors.push((reserved, "is written by the collector".to_owned()));
        }
    }
    if !errors.is_empty() {
        return Err(Refused::Fields(errors));
    }
    // The tracker's time of the event: its true timestamp when it has one (as Snowplow
    // derives it), else the device's, corrected for the device clock's skew.
    let derived = ttm.unwrap_or_else(|| record::corrected(collector.at, dtm, stm));
    let eid = event.get("eid").map(|e| e.to_string());
    let line = record::one(256 + event.len() * 32, |out| {
        match &eid {
            Some(eid) => out.string("eid", eid),
            None => out.new_id("eid"),
        }
        out.string("source", collector.source);
        out.time("collector_tstamp", collector.at);
        out.time("derived_tstamp", derived);
        // The tracker's `ip` (`setIpAddress`) stands for the client's, as in Snowplow.
        match event.get("ip").map(|ip| ip.as_ref()).or(collector.ip) {
            Some(ip) => out.string("ip", ip),
            None => out.raw("ip", "null"),
        }
        match event
            .get("ua")
            .map(|ua| ua.as_ref())
            .or(collector.useragent)
        {
            Some(ua) => out.string("useragent", ua),
            None => out.raw("useragent", "null"),
        }
        match collector.referer {
            Some(referer) => out.string("referer", referer),
            None => out.raw("referer", "null"),
        }
        write_fields(out, event);
        out.raw("unstruct_event", unstruct.as_deref().unwrap_or("null"));
        out.raw("contexts", contexts.as_deref().unwrap_or("null"));
    })
    .map_err(|e| Refused::TooLarge(e.bytes))?;
    Ok((line, eid))
}

/// The tracker's fields, as sent, but for those the record writes itself.
fn write_fields(out: &mut Writer, event: &Event<'_>) {
    for (key, value) in event {
        if !CONSUMED.contains(&key.as_ref()) && !RESERVED.contains(&key.as_ref()) {
            let quoted = serde_json::to_string(value.as_ref()).expect("a string serializes");
            out.client_field(key, &quoted);
        }
    }
}

/// A self-describing JSON sent base64-encoded under `encoded` or as JSON text under `plain`,
/// as JSON text; `None` when absent. Refused unless it is a JSON object.
fn decoded(
    event: &Event<'_>,
    encoded: &'static str,
    plain: &'static str,
    errors: &mut Vec<(&'static str, String)>,
) -> Option<String> {
    let (field, text) = match (event.get(encoded), event.get(plain)) {
        (Some(_), Some(_)) => {
            errors.push((plain, format!("sent with {encoded}: one of them, not both")));
            return None;
        }
        (Some(b64), None) => {
            let bytes = URL_SAFE
                .decode(b64.trim_end_matches('=').as_bytes())
                .or_else(|_| STANDARD.decode(b64.trim_end_matches('=').as_bytes()));
            match bytes.ok().and_then(|b| String::from_utf8(b).ok()) {
                Some(text) => (encoded, text),
                None => {
                    errors.push((encoded, "must be base64-encoded UTF-8 JSON".to_owned()));
                    return None;
                }
            }
        }
        (None, Some(text)) => (plain, text.to_string()),
        (None, None) => return None,
    };
    let valid = serde_json::from_str::<&RawValue>(&text)
        .ok()
        .filter(|v| v.get().starts_with('{'))
        .map(|_| check_raw(text.as_bytes()));
    match valid {
        Some(Ok(())) => Some(text),
        Some(Err(reason)) => {
            errors.push((field, reason));
            None
        }
        None => {
            errors.push((field, "must be a self-describing JSON object".to_owned()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn collector() -> Collector<'static> {
        Collector {
            at: record::from_millis(1_795_521_600_000).unwrap(),
            source: "web",
            ip: Some("192.0.2.7"),
            useragent: Some("Mozilla/5.0"),
            referer: None,
        }
    }

    fn event(pairs: &[(&'static str, &'static str)]) -> Event<'static> {
        pairs
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
            .collect()
    }

    fn record(pairs: &[(&'static str, &'static str)]) -> Value {
        let (line, _) = match encode(&event(pairs), &collector()) {
            Ok(ok) => ok,
            Err(Refused::Fields(f)) => panic!("{f:?}"),
            Err(Refused::TooLarge(n)) => panic!("{n}"),
        };
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn encoded_self_describing_events_and_contexts_land_as_json() {
        let ue = json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
            "data": {"schema": "iglu:com.example/checkout/jsonschema/1-0-0", "data": {"price": 42}}});
        let cx = json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
            "data": [{"schema": "iglu:com.example/user/jsonschema/1-0-0", "data": {"tier": "gold"}}]});
        // JavaScript's (URL-safe, unpadded) and Python's (URL-safe, padded) base64.
        let unpadded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ue.to_string());
        let padded = base64::engine::general_purpose::URL_SAFE.encode(cx.to_string());
        let unpadded: &'static str = Box::leak(unpadded.into_boxed_str());
        let padded: &'static str = Box::leak(padded.into_boxed_str());
        let r = record(&[
            ("e", "ue"),
            ("p", "web"),
            ("tv", "js-4.10.1"),
            ("eid", "0b4c6f2e-7d1a-4c1e-9d55-5b0e2d6a1f3c"),
            ("ue_px", unpadded),
            ("cx", padded),
            ("dtm", "1795521590000"),
            ("stm", "1795521595000"),
        ]);
        assert_eq!(r["unstruct_event"], ue);
        assert_eq!(r["contexts"], cx);
        assert_eq!(r["eid"], "0b4c6f2e-7d1a-4c1e-9d55-5b0e2d6a1f3c");
        // Sent 5 s after it happened, by the device's clock: 5 s before it was received.
        assert_eq!(r["derived_tstamp"], "2026-11-24T11:59:55.000Z");
        assert_eq!(r["collector_tstamp"], "2026-11-24T12:00:00.000Z");
        assert_eq!(r["dtm"], "1795521590000");
        assert_eq!(r["ip"], "192.0.2.7");
        assert_eq!(r["useragent"], "Mozilla/5.0");
        assert!(r.get("ue_px").is_none() && r.get("cx").is_none());
    }

    #[test]
    fn plain_json_fields_the_trackers_overrides_and_true_time() {
        let r = record(&[
            ("e", "se"),
            ("p", "srv"),
            ("tv", "node-4.8.0"),
            ("co", r#"{"schema":"iglu:x","data":[]}"#),
            ("ip", "198.51.100.1"),
            ("ua", "custom"),
            ("ttm", "1795521000000"),
            ("dtm", "1"),
        ]);
        assert_eq!(r["contexts"], json!({"schema": "iglu:x", "data": []}));
        assert_eq!(r["ip"], "198.51.100.1");
        assert_eq!(r["useragent"], "custom");
        assert_eq!(r["ua"], "custom");
        assert_eq!(r["derived_tstamp"], "2026-11-24T11:50:00.000Z");
        assert!(r.get("co").is_none());
        assert!(r["eid"].as_str().unwrap().len() == 36, "an id is made");
    }

    #[test]
    fn every_broken_field_is_named() {
        let Err(Refused::Fields(fields)) = encode(
            &event(&[
                ("e", "ue"),
                ("ue_px", "!!!"),
                ("co", "[1]"),
                ("dtm", "-5"),
                ("source", "spoofed"),
            ]),
            &collector(),
        ) else {
            panic!("taken")
        };
        let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
        assert_eq!(names, ["p", "tv", "dtm", "ue_px", "co", "source"]);
    }

    #[test]
    fn a_pixel_query_is_form_decoded() {
        let e = query_event(Some(
            "e=pv&url=http%3A%2F%2Fx%2Fa+b&page=A%20B&tv=py-1.1.0&api_key=k&writeKey=k",
        ));
        assert_eq!(e["url"], "http://x/a b");
        assert_eq!(e["page"], "A B");
        assert!(!e.contains_key("api_key") && !e.contains_key("writeKey"));
    }

    #[test]
    fn a_payload_needs_its_schema_and_string_values() {
        let e = post_events(br#"{"schema":"iglu:other/x/jsonschema/1-0-0","data":[{"e":"pv"}]}"#)
            .err()
            .unwrap();
        assert!(matches!(e, IngestError::Invalid(f) if f[0].path == "schema"));
        let body = format!(r#"{{"schema":"{PAYLOAD_DATA}4","data":[{{"e":"pv","vid":1}}]}}"#);
        let e = post_events(body.as_bytes()).err().unwrap();
        assert!(matches!(e, IngestError::Invalid(f) if f[0].path == "data[0].vid"));
    }
}
