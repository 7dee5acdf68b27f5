//! Fuzzes `event::encode`, the parser every request body goes through.
//!
//! Input: the first byte picks the endpoint (modulo 3: /track, /alias, /profile), the rest is
//! the body. Checks:
//! - no panic, whatever the bytes;
//! - on success, the NDJSON contract: `count` lines, each ending in `\n` with no other line
//!   break, each a JSON object with exactly the endpoint's keys plus a UUIDv7 `messageId`
//!   (unique in the request) and the `receivedAt` handed in;
//! - on success, when serde_json can decode the whole body (it cannot when the body holds a
//!   lone surrogate escape, a number beyond f64, or nesting past 128 levels, all of which
//!   `encode` copies through raw), the body is valid by the schema in design.md and every
//!   record carries exactly the body's values, omitted optionals as `null`;
//! - on refusal for a body serde_json can decode, every field the schema model finds wrong is
//!   named, and nothing else but over-long strings (`encode` also caps string lengths).
//!
//! An error never carries records: `encode` returns either records or a reason, so there is
//! nothing to check on the error side beyond "it did not panic" and the paths above.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use firehose_edge::event::{EncodeError, Endpoint, Records, encode};
use libfuzzer_sys::fuzz_target;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// `SystemTime` of the requests, and how `receivedAt` must read.
const RECEIVED_AT_MS: u64 = 1_700_000_000_123;
const RECEIVED_AT: &str = "2023-11-14T22:13:20.123Z";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = Endpoint::ALL[usize::from(selector) % Endpoint::ALL.len()];
    let received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(RECEIVED_AT_MS);
    let result = encode(endpoint, body, received_at);
    let decoded: Option<Value> = serde_json::from_slice::<Faithful>(body)
        .ok()
        .map(|f| f.0)
        .filter(|v| !negative_zero_timestamp(v));
    match result {
        Ok(records) => {
            let lines = check_ndjson(endpoint, &records);
            if let Some(body) = decoded {
                let want = model_errors(endpoint, &body);
                assert!(
                    want.is_empty(),
                    "accepted a body the schema refuses: {want:?}"
                );
                let got: Vec<Map<String, Value>> = lines.iter().map(|l| full(l)).collect();
                assert_eq!(
                    got,
                    model_records(endpoint, &body),
                    "records differ from body"
                );
            }
        }
        Err(EncodeError::Invalid(errors)) => {
            assert!(!errors.is_empty(), "refused without a reason");
            if let Some(body) = decoded {
                let want = model_errors(endpoint, &body);
                let strings = string_fields(endpoint, &body);
                let got: HashSet<&str> = errors.iter().map(|e| e.path.as_str()).collect();
                for path in &want {
                    assert!(got.contains(path.as_str()), "{path} not named: {errors:?}");
                }
                for path in &got {
                    assert!(
                        want.iter().any(|w| w == path) || strings.contains(*path),
                        "{path} named but not wrong: {errors:?}"
                    );
                }
            }
        }
        // Over Firehose's record size or the event cap: no records, nothing else to check.
        Err(_) => {}
    }
});

/// The keys of a record of `endpoint`, besides `messageId` and `receivedAt`.
fn schema_keys(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::Track => &["userId", "eventName", "timestampUTC", "metadata"],
        Endpoint::Alias => &["newUserId", "originalUserId", "timestampUTC"],
        Endpoint::Profile => &["userId", "timestampUTC", "attributes"],
    }
}

/// The NDJSON contract, checked on lines parsed one level deep so that values `encode` copies
/// through raw (lone surrogates, deep nesting, huge numbers) do not trip the check.
fn check_ndjson(endpoint: Endpoint, records: &Records) -> Vec<BTreeMap<String, &RawValue>> {
    let text = std::str::from_utf8(&records.ndjson).expect("records are UTF-8");
    assert!(text.ends_with('\n'), "last record not terminated");
    let newlines = text.bytes().filter(|&b| b == b'\n').count();
    assert_eq!(newlines, records.count as usize, "count vs lines");
    assert!(!text.contains('\r'), "CR in records");
    let mut keys: Vec<&str> = schema_keys(endpoint).to_vec();
    keys.extend(["messageId", "receivedAt"]);
    keys.sort_unstable();
    let mut ids = HashSet::new();
    text.split_terminator('\n')
        .map(|line| {
            let fields: BTreeMap<String, &RawValue> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("record is not a JSON object ({e}): {line:?}"));
            let got: Vec<&str> = fields.keys().map(String::as_str).collect();
            assert_eq!(got, keys, "record keys");
            let id: String = serde_json::from_str(fields["messageId"].get()).expect("string id");
            let uuid = uuid::Uuid::parse_str(&id).expect("messageId is a UUID");
            assert_eq!(uuid.get_version_num(), 7, "messageId {id} is not v7");
            assert!(ids.insert(id), "duplicate messageId");
            let at: String = serde_json::from_str(fields["receivedAt"].get()).expect("string");
            assert_eq!(at, RECEIVED_AT);
            fields
        })
        .collect()
}

/// A record's fields as values, without `messageId` and `receivedAt`.
fn full(line: &BTreeMap<String, &RawValue>) -> Map<String, Value> {
    line.iter()
        .filter(|(k, _)| *k != "messageId" && *k != "receivedAt")
        .map(|(k, raw)| {
            let Faithful(v) = serde_json::from_str(raw.get())
                .unwrap_or_else(|e| panic!("{k} of a decodable body does not decode: {e}"));
            (k.clone(), v)
        })
        .collect()
}

/// Whether a `timestampUTC` is `-0` or `-0.0`: serde_json decodes both to the float -0.0 but
/// only the first is a JSON integer, so the model cannot judge it.
fn negative_zero_timestamp(body: &Value) -> bool {
    let is = |obj: &Value| {
        obj.get("timestampUTC")
            .and_then(Value::as_f64)
            .is_some_and(|f| f == 0.0 && f.is_sign_negative())
    };
    is(body)
        || body
            .get("events")
            .and_then(Value::as_array)
            .is_some_and(|events| events.iter().any(is))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The schemas of design.md as a reference model: the paths of every offending field,
/// empty when the body is valid.
fn model_errors(endpoint: Endpoint, body: &Value) -> Vec<String> {
    fn unknown(errors: &mut Vec<String>, prefix: &str, obj: &Map<String, Value>, known: &[&str]) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            errors.push(join(prefix, key));
        }
    }
    fn string(errors: &mut Vec<String>, prefix: &str, obj: &Map<String, Value>, name: &str) {
        if !obj.get(name).is_some_and(Value::is_string) {
            errors.push(join(prefix, name));
        }
    }
    fn timestamp(errors: &mut Vec<String>, prefix: &str, obj: &Map<String, Value>) {
        let bad = |v: &Value| !v.is_null() && !v.is_i64();
        if obj.get("timestampUTC").is_some_and(bad) {
            errors.push(join(prefix, "timestampUTC"));
        }
    }
    fn free(errors: &mut Vec<String>, prefix: &str, obj: &Map<String, Value>, name: &str) {
        if obj
            .get(name)
            .is_some_and(|v| !v.is_null() && !v.is_object())
        {
            errors.push(join(prefix, name));
        }
    }

    let Value::Object(top) = body else {
        return vec!["$".to_owned()];
    };
    let mut errors = Vec::new();
    match endpoint {
        Endpoint::Track => {
            unknown(&mut errors, "", top, &["userId", "events"]);
            string(&mut errors, "", top, "userId");
            match top.get("events") {
                Some(Value::Array(events)) if !events.is_empty() => {
                    for (i, event) in events.iter().enumerate() {
                        let path = format!("events[{i}]");
                        let Value::Object(event) = event else {
                            errors.push(path);
                            continue;
                        };
                        let known = ["eventName", "metadata", "timestampUTC"];
                        unknown(&mut errors, &path, event, &known);
                        string(&mut errors, &path, event, "eventName");
                        free(&mut errors, &path, event, "metadata");
                        timestamp(&mut errors, &path, event);
                    }
                }
                _ => errors.push("events".to_owned()),
            }
        }
        Endpoint::Alias => {
            let known = ["newUserId", "originalUserId", "timestampUTC"];
            unknown(&mut errors, "", top, &known);
            string(&mut errors, "", top, "newUserId");
            string(&mut errors, "", top, "originalUserId");
            timestamp(&mut errors, "", top);
        }
        Endpoint::Profile => {
            unknown(
                &mut errors,
                "",
                top,
                &["userId", "attributes", "timestampUTC"],
            );
            string(&mut errors, "", top, "userId");
            free(&mut errors, "", top, "attributes");
            timestamp(&mut errors, "", top);
        }
    }
    errors
}

/// Paths of the required string fields that hold a string: the only valid fields `encode`
/// may still refuse (for being too long).
fn string_fields(endpoint: Endpoint, body: &Value) -> HashSet<String> {
    let mut paths = HashSet::new();
    let Value::Object(top) = body else {
        return paths;
    };
    let names: &[&str] = match endpoint {
        Endpoint::Track => &["userId"],
        Endpoint::Alias => &["newUserId", "originalUserId"],
        Endpoint::Profile => &["userId"],
    };
    for name in names {
        if top.get(*name).is_some_and(Value::is_string) {
            paths.insert((*name).to_owned());
        }
    }
    if let (Endpoint::Track, Some(Value::Array(events))) = (endpoint, top.get("events")) {
        for (i, event) in events.iter().enumerate() {
            if event.get("eventName").is_some_and(Value::is_string) {
                paths.insert(format!("events[{i}].eventName"));
            }
        }
    }
    paths
}

/// The records a valid body must become, without `messageId` and `receivedAt`.
fn model_records(endpoint: Endpoint, body: &Value) -> Vec<Map<String, Value>> {
    let top = body.as_object().expect("a valid body is an object");
    let get = |obj: &Map<String, Value>, name: &str| obj.get(name).cloned().unwrap_or_default();
    let record = |pairs: Vec<(&str, Value)>| -> Map<String, Value> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    match endpoint {
        Endpoint::Track => top["events"]
            .as_array()
            .expect("valid")
            .iter()
            .map(|e| {
                let e = e.as_object().expect("valid");
                record(vec![
                    ("userId", get(top, "userId")),
                    ("eventName", get(e, "eventName")),
                    ("timestampUTC", get(e, "timestampUTC")),
                    ("metadata", get(e, "metadata")),
                ])
            })
            .collect(),
        Endpoint::Alias => vec![record(vec![
            ("newUserId", get(top, "newUserId")),
            ("originalUserId", get(top, "originalUserId")),
            ("timestampUTC", get(top, "timestampUTC")),
        ])],
        Endpoint::Profile => vec![record(vec![
            ("userId", get(top, "userId")),
            ("timestampUTC", get(top, "timestampUTC")),
            ("attributes", get(top, "attributes")),
        ])],
    }
}

/// A JSON value decoded as written. serde_json's own `Value` has a special case: with its
/// `raw_value` feature (enabled by the main crate) an object whose first key is
/// `$serde_json::private::RawValue` decodes to the JSON inside that key's string value, so
/// `{"$serde_json::private::RawValue":"0"}` would come out as `0`. `encode` rightly sees an
/// object with one odd key; so must the model.
struct Faithful(Value);

impl<'de> Deserialize<'de> for Faithful {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FaithfulVisitor).map(Faithful)
    }
}

struct FaithfulVisitor;

impl<'de> Visitor<'de> for FaithfulVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Faithful(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some((key, Faithful(value))) = map.next_entry::<String, Faithful>()? {
            obj.insert(key, value);
        }
        Ok(Value::Object(obj))
    }
}
