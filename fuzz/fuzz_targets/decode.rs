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
use std::time::{Duration, SystemTime};

use firehose_edge::event::{EncodeError, Endpoint, encode};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

#[path = "../../tests/support/event_model.rs"]
mod event_model;
use event_model::*;

/// `SystemTime` of the requests, and how `receivedAt` must read.
const RECEIVED_AT_MS: u64 = 1_700_000_000_123;

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
