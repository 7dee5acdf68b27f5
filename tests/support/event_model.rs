//! A small reference model of the request schemas and record format of `design.md`, shared
//! by the property tests (`tests/event_props.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/decode.rs`), which include this file by path.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use firehose_edge::protocol::classic::{Endpoint, Records};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// `received_at()` as RFC 3339 UTC with milliseconds.
pub const RECEIVED_AT: &str = "2023-11-14T22:13:20.123Z";

/// The keys of a record of `endpoint`, besides `messageId` and `receivedAt`.
pub fn schema_keys(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::Track => &["userId", "eventName", "timestampUTC", "metadata"],
        Endpoint::Alias => &["newUserId", "originalUserId", "timestampUTC"],
        Endpoint::Profile => &["userId", "timestampUTC", "attributes"],
    }
}

/// The fields allowed at the top of a body for `endpoint`.
pub fn top_fields(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::Track => &["userId", "events"],
        Endpoint::Alias => &["newUserId", "originalUserId", "timestampUTC"],
        Endpoint::Profile => &["userId", "attributes", "timestampUTC"],
    }
}

/// The required string fields at the top of a body for `endpoint`.
pub fn top_strings(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::Track => &["userId"],
        Endpoint::Alias => &["newUserId", "originalUserId"],
        Endpoint::Profile => &["userId"],
    }
}

pub const EVENT_FIELDS: &[&str] = &["eventName", "metadata", "timestampUTC"];

/// The NDJSON invariants that hold for any accepted body, whatever it contained: `count`
/// lines, each ending in `\n` and holding no other, each a JSON object with the endpoint's
/// keys, a fresh UUIDv7 `messageId` and the request's `receivedAt`. Returns the lines parsed
/// one level deep only, so free-form values nested past serde_json's recursion limit or
/// holding lone surrogate escapes (both of which `encode` copies through raw) still check.
pub fn check_ndjson(endpoint: Endpoint, records: &Records) -> Vec<BTreeMap<String, &RawValue>> {
    let text = std::str::from_utf8(&records.ndjson).expect("records are UTF-8");
    assert!(
        text.ends_with('\n'),
        "last record is not terminated: {text:?}"
    );
    let newlines = text.bytes().filter(|&b| b == b'\n').count();
    assert_eq!(
        newlines, records.count as usize,
        "count {} but {newlines} lines: {text:?}",
        records.count
    );
    let mut keys: Vec<&str> = schema_keys(endpoint).to_vec();
    keys.extend(["messageId", "receivedAt"]);
    keys.sort_unstable();
    let mut ids = HashSet::new();
    text.split_terminator('\n')
        .map(|line| {
            assert!(!line.contains('\r'), "CR in record: {line:?}");
            let fields: BTreeMap<String, &RawValue> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("record is not a JSON object ({e}): {line:?}"));
            let got: Vec<&str> = fields.keys().map(String::as_str).collect();
            assert_eq!(got, keys, "record keys: {line:?}");
            let id: String = serde_json::from_str(fields["messageId"].get()).expect("string id");
            assert_uuid_v7(&id);
            assert!(ids.insert(id.clone()), "duplicate messageId {id}");
            let at: String = serde_json::from_str(fields["receivedAt"].get()).expect("string");
            assert_eq!(at, RECEIVED_AT);
            fields
        })
        .collect()
}

pub fn assert_uuid_v7(id: &str) {
    let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?}: {e}"));
    assert_eq!(parsed.get_version_num(), 7, "{id}");
    assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
    // The canonical text form: 8-4-4-4-12 lowercase hex, so ids compare as strings.
    assert_eq!(parsed.hyphenated().to_string(), id);
}

/// Decodes JSON text as written. serde_json's own `Value` has a special case: with its
/// `raw_value` feature (enabled by the main crate) an object whose first key is
/// `$serde_json::private::RawValue` decodes to the JSON inside that key's string value, so
/// `{"$serde_json::private::RawValue":"0"}` would come out as `0`. `encode` rightly sees an
/// object with one odd key; so must the model. (Found by the fuzz target.)
pub fn decode(text: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice::<Faithful>(text).map(|f| f.0)
}

pub struct Faithful(pub Value);

impl<'de> Deserialize<'de> for Faithful {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FaithfulVisitor).map(Faithful)
    }
}

pub struct FaithfulVisitor;

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

/// A small reference model of the schemas in design.md: the paths `encode` must name, empty
/// when the body is valid. Works on the decoded body, so it only applies to bodies that
/// serde_json can decode to a `Value`.
pub fn model_errors(endpoint: Endpoint, body: &Value) -> Vec<String> {
    fn join(prefix: &str, name: &str) -> String {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    }
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
        if obj
            .get("timestampUTC")
            .is_some_and(|v| !v.is_null() && model_integer(v).is_none())
        {
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
    unknown(&mut errors, "", top, top_fields(endpoint));
    for name in top_strings(endpoint) {
        string(&mut errors, "", top, name);
    }
    match endpoint {
        Endpoint::Track => match top.get("events") {
            Some(Value::Array(events)) if !events.is_empty() => {
                for (i, event) in events.iter().enumerate() {
                    let path = format!("events[{i}]");
                    let Value::Object(event) = event else {
                        errors.push(path);
                        continue;
                    };
                    unknown(&mut errors, &path, event, EVENT_FIELDS);
                    string(&mut errors, &path, event, "eventName");
                    free(&mut errors, &path, event, "metadata");
                    timestamp(&mut errors, &path, event);
                }
            }
            _ => errors.push("events".to_owned()),
        },
        Endpoint::Alias => timestamp(&mut errors, "", top),
        Endpoint::Profile => {
            free(&mut errors, "", top, "attributes");
            timestamp(&mut errors, "", top);
        }
    }
    errors.sort();
    errors
}

/// The value of a `timestampUTC` the schema takes: JSON Schema's `integer`, any number with
/// no fractional part, within 64 bits (`5`, `5.0`, `-0.0`). A float at or beyond 2^63 is
/// out: serde_json writes it in a form whose exact value is beyond i64 too.
pub fn model_integer(v: &Value) -> Option<i64> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| !v.is_u64() && f.fract() == 0.0 && f.abs() < TWO_63)
            .map(|f| f as i64)
    })
}

/// The records a body the model accepts must become, without `messageId` / `receivedAt`.
pub fn model_records(endpoint: Endpoint, body: &Value) -> Vec<Map<String, Value>> {
    let top = body.as_object().expect("a valid body is an object");
    let field = |obj: &Map<String, Value>, name: &str| obj.get(name).cloned().unwrap_or_default();
    // Written in plain integer form, however the body spelled it.
    let integer = |obj: &Map<String, Value>| {
        obj.get("timestampUTC")
            .and_then(model_integer)
            .map_or(Value::Null, Value::from)
    };
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
                    ("userId", field(top, "userId")),
                    ("eventName", field(e, "eventName")),
                    ("timestampUTC", integer(e)),
                    ("metadata", field(e, "metadata")),
                ])
            })
            .collect(),
        Endpoint::Alias => vec![record(vec![
            ("newUserId", field(top, "newUserId")),
            ("originalUserId", field(top, "originalUserId")),
            ("timestampUTC", integer(top)),
        ])],
        Endpoint::Profile => vec![record(vec![
            ("userId", field(top, "userId")),
            ("timestampUTC", integer(top)),
            ("attributes", field(top, "attributes")),
        ])],
    }
}
