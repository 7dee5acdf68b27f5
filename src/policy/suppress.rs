//! Deletion requests, the matching half: which records belong to a suppressed user. The list
//! itself is kept in the queue's database (`crate::queue` `erase.rs`) and changed through
//! [`crate::suppression`]; this decides, for one record, whether one of its identity fields
//! (each protocol's [`super::Shape::ids`]) holds a suppressed identifier.
//!
//! A record is matched on its bytes first: an Aho-Corasick automaton finds the names of the
//! identity fields (a dozen, whatever the list's length), the value after each is looked up
//! in a hash set, and only a record where one is listed is parsed and its fields compared at
//! their paths (the name may occur elsewhere: `properties.userId` is not the user). So a
//! list of any length costs one scan of each record and a lookup per identity field, not a
//! parse, and an empty list costs nothing. The forms are the identifier as sent and as each
//! privacy policy's hash key writes it (a queued record of a source that hashes `userId`
//! holds the hash). A record with an escape in it (`\u0061`, `\/`, `\"`: the classic API and
//! some protocols' properties keep what the client wrote) is always parsed, since a name or a
//! value may be spelled with one.

use std::collections::HashSet;

use aho_corasick::AhoCorasick;
use serde_json::Value;

use super::privacy::Privacy;
use crate::protocol::Records;

/// The longest identifier a deletion request may name (bytes).
pub const MAX_ID_BYTES: usize = 1024;

/// The suppressed identifiers, ready to match records.
pub struct Matcher {
    /// Every form an identifier is stored as.
    forms: HashSet<String>,
    /// Finds the identity fields' names (`"userId"`, …) in a record's bytes (escapes are
    /// looked for apart: a one-byte pattern would make every `"` a candidate); `None` for an
    /// empty list.
    prefilter: Option<AhoCorasick>,
}

impl Matcher {
    /// Matches nothing.
    pub fn empty() -> Matcher {
        Matcher {
            forms: HashSet::new(),
            prefilter: None,
        }
    }

    /// Matches `ids`, as sent and as `privacy`'s hash keys write them, in records whose
    /// identity fields are among `fields` (dot-separated paths; every protocol's, for the
    /// queue, which holds them all).
    pub fn new<'a>(
        ids: impl IntoIterator<Item = &'a str>,
        privacy: Option<&Privacy>,
        fields: &[&str],
    ) -> Matcher {
        let mut forms = HashSet::new();
        for id in ids {
            forms.insert(id.to_owned());
            forms.extend(privacy.map(|p| p.hashed_forms(id)).unwrap_or_default());
        }
        if forms.is_empty() {
            return Matcher::empty();
        }
        // Each field's own name, quoted as a JSON key (at any depth: the parse tells paths
        // apart).
        let mut patterns: Vec<String> = Vec::new();
        for field in fields {
            let name = field.rsplit('.').next().unwrap_or(field);
            let quoted = serde_json::to_string(name).expect("a string serializes");
            if !patterns.contains(&quoted) {
                patterns.push(quoted);
            }
        }
        // Leftmost-first: the kind its SIMD searcher (Teddy) serves; the names never overlap.
        let prefilter = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .build(&patterns)
            .expect("literal patterns build");
        Matcher {
            forms,
            prefilter: Some(prefilter),
        }
    }

    /// Whether no identifier is suppressed.
    pub fn is_empty(&self) -> bool {
        self.prefilter.is_none()
    }

    /// Whether `line` (one JSON record) holds a suppressed identifier in one of `fields`
    /// (dot-separated paths).
    pub fn matches(&self, line: &[u8], fields: &[&str]) -> bool {
        let Some(prefilter) = &self.prefilter else {
            return false;
        };
        if !self.may_match(prefilter, line) {
            return false;
        }
        let Ok(record) = serde_json::from_slice::<Value>(line) else {
            return false;
        };
        fields.iter().any(|path| {
            let value = path.split('.').try_fold(&record, |v, name| v.get(name));
            match value {
                Some(Value::String(s)) => self.forms.contains(s),
                Some(Value::Number(n)) => self.forms.contains(&n.to_string()),
                _ => false,
            }
        })
    }

    /// Whether a listed form follows a field's name in `line` as its value (or an escape
    /// makes the bytes unreliable): the scan before a parse.
    fn may_match(&self, prefilter: &AhoCorasick, line: &[u8]) -> bool {
        if line.contains(&b'\\') {
            return true;
        }
        for found in prefilter.find_iter(line) {
            let rest = skip_space(&line[found.end()..]);
            let Some(rest) = rest.strip_prefix(b":").map(skip_space) else {
                continue;
            };
            let value = match rest.first() {
                Some(b'"') => {
                    let text = &rest[1..];
                    match text.iter().position(|&b| b == b'"') {
                        Some(end) => &text[..end],
                        None => continue,
                    }
                }
                Some(b'-' | b'0'..=b'9') => {
                    let end = rest
                        .iter()
                        .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                }
                _ => continue,
            };
            if std::str::from_utf8(value).is_ok_and(|v| self.forms.contains(v)) {
                return true;
            }
        }
        false
    }

    /// `records` without those of suppressed users, and how many went.
    pub fn filter(&self, records: Records, fields: &[&str]) -> (Records, u64) {
        if self.is_empty() {
            return (records, 0);
        }
        match records {
            Records::None => (Records::None, 0),
            Records::Lines {
                stream,
                ndjson,
                count,
            } => {
                let mut kept = Vec::with_capacity(ndjson.len());
                let mut left = 0u32;
                for line in ndjson.split_inclusive(|&b| b == b'\n') {
                    if !self.matches(line, fields) {
                        kept.extend_from_slice(line);
                        left += 1;
                    }
                }
                let gone = u64::from(count - left);
                match left {
                    0 => (Records::None, gone),
                    _ => (
                        Records::Lines {
                            stream,
                            ndjson: kept,
                            count: left,
                        },
                        gone,
                    ),
                }
            }
            Records::Messages {
                source,
                ids,
                mut lines,
            } => {
                let before = lines.len();
                lines.retain(|l| !self.matches(&l.line, fields));
                let gone = (before - lines.len()) as u64;
                match lines.is_empty() {
                    true => (Records::None, gone),
                    false => (Records::Messages { source, ids, lines }, gone),
                }
            }
        }
    }
}

fn skip_space(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Why an identifier cannot be suppressed (the admin API's 400, the CLI's error).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an empty identifier".to_owned());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "an identifier of {} bytes (at most {MAX_ID_BYTES})",
            id.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::BatchLine;

    const FIELDS: &[&str] = &["userId", "anonymousId", "properties.$anon_distinct_id"];

    fn matcher(ids: &[&str]) -> Matcher {
        Matcher::new(ids.iter().copied(), None, FIELDS)
    }

    #[test]
    fn an_identifier_matches_in_an_identity_field_only() {
        let m = matcher(&["u-1", "42"]);
        assert!(m.matches(br#"{"userId":"u-1","event":"x"}"#, FIELDS));
        assert!(m.matches(br#"{"anonymousId":"u-1"}"#, FIELDS));
        assert!(m.matches(br#"{"properties":{"$anon_distinct_id":"u-1"}}"#, FIELDS));
        // The same text elsewhere, or another id that contains it, is not the user.
        assert!(!m.matches(br#"{"userId":"u-2","event":"u-1"}"#, FIELDS));
        assert!(!m.matches(br#"{"userId":"u-10"}"#, FIELDS));
        assert!(!m.matches(br#"{"properties":{"userId":"u-1"}}"#, FIELDS));
        // A number id, as a number.
        assert!(m.matches(br#"{"userId":42}"#, FIELDS));
        assert!(!m.matches(br#"{"userId":421}"#, FIELDS));
        assert!(!matcher(&[]).matches(br#"{"userId":"u-1"}"#, FIELDS));
    }

    #[test]
    fn an_escaped_spelling_is_still_the_user() {
        let m = matcher(&["ann/é\"x"]);
        assert!(m.matches(br#"{"userId":"ann/\u00e9\"x"}"#, FIELDS));
        assert!(m.matches(r#"{"userId":"ann\/é\"x"}"#.as_bytes(), FIELDS));
        assert!(m.matches("{\"userId\":\"ann/é\\\"x\"}".as_bytes(), FIELDS));
        // A name spelled with an escape, and space around the colon (raw client JSON).
        let m = matcher(&["u-1"]);
        assert!(m.matches(
            br#"{"properties":{"$anon\u005fdistinct_id":"u-1"}}"#,
            FIELDS
        ));
        assert!(m.matches(br#"{"properties": {"$anon_distinct_id" :  "u-1"}}"#, FIELDS));
        assert!(!m.matches(br#"{"userId" : 42, "x": 1}"#, &["userId"]));
        assert!(matcher(&["42"]).matches(br#"{"userId" : 42, "x": 1}"#, &["userId"]));
    }

    #[test]
    fn a_hashed_identifier_is_found_under_every_key() {
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), "0123456789abcdef0123").unwrap();
        let config = crate::policy::privacy::PrivacyConfig {
            hash: vec!["userId".into()],
            hash_key_file: key.path().to_owned(),
            ..Default::default()
        };
        let privacy = Privacy::new(&config).unwrap();
        let hashed = privacy.hashed_forms("u-1");
        assert_eq!(hashed.len(), 1);
        let m = Matcher::new(["u-1"], Some(&privacy), FIELDS);
        let line = format!("{{\"userId\":\"{}\"}}", hashed[0]);
        assert!(m.matches(line.as_bytes(), FIELDS));
        assert!(!matcher(&["u-1"]).matches(line.as_bytes(), FIELDS));
    }

    #[test]
    fn filtering_keeps_the_others_and_counts_what_went() {
        let m = matcher(&["gone"]);
        let ndjson = b"{\"userId\":\"gone\"}\n{\"userId\":\"kept\"}\n".to_vec();
        let lines = Records::Lines {
            stream: "s".to_owned(),
            ndjson,
            count: 2,
        };
        let (left, gone) = m.filter(lines, FIELDS);
        assert_eq!(gone, 1);
        match left {
            Records::Lines { ndjson, count, .. } => {
                assert_eq!(
                    (ndjson.as_slice(), count),
                    (&b"{\"userId\":\"kept\"}\n"[..], 1)
                );
            }
            _ => panic!("lines expected"),
        }
        let line = |id: &str| BatchLine {
            stream: "s".to_owned(),
            line: format!("{{\"anonymousId\":\"{id}\"}}\n").into_bytes(),
            message_id: None,
        };
        let only = Records::Messages {
            source: "web".to_owned(),
            ids: "",
            lines: vec![line("gone"), line("gone")],
        };
        let (left, gone) = m.filter(only, FIELDS);
        assert!(matches!(left, Records::None) && gone == 2);
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(check_id("user-1").is_ok());
    }
}
