//! The one record writer every protocol uses, and the time rules they share.
//!
//! A record is one line of JSON (`{"key":value,...}\n`) written straight from the request's
//! raw JSON text: client values are copied byte for byte, minus any CR or LF (inside valid
//! JSON they can only be whitespace between tokens, and a record must stay on one line).
//! [`Writer::end`] checks each line against Firehose's record limit, so no protocol can queue
//! a record Firehose would refuse.

use std::sync::LazyLock;
use std::time::SystemTime;

use regex::Regex;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::firehose_limits::MAX_RECORD_BYTES as FIREHOSE_MAX_RECORD_BYTES;

/// A line over Firehose's record limit: its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The encoded line's size, in bytes.
    pub bytes: usize,
}

/// Writes NDJSON records into one buffer, one line per [`Writer::begin`]…[`Writer::end`].
pub struct Writer {
    buf: Vec<u8>,
    line_start: usize,
    first: bool,
    lines: u32,
    /// Whether this record's client values may hold a CR or LF (to drop).
    breaks: bool,
}

impl Writer {
    /// A writer whose buffer starts with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(capacity),
            line_start: 0,
            first: true,
            lines: 0,
            breaks: true,
        }
    }

    /// Starts a record.
    pub fn begin(&mut self) {
        self.line_start = self.buf.len();
        self.first = true;
        self.breaks = true;
        self.buf.push(b'{');
    }

    /// Starts a record whose client values all come from `sources`: when none of them has a
    /// CR or LF (the usual case: one vectorised search each), values are copied whole rather
    /// than searched one by one.
    pub fn begin_from(&mut self, sources: &[&str]) {
        self.begin();
        self.breaks = sources
            .iter()
            .any(|s| memchr::memchr2(b'\n', b'\r', s.as_bytes()).is_some());
    }

    /// `key` (written as is: a name of ours, plain ASCII) with a raw JSON value.
    pub fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.value(value);
    }

    /// `key` with a raw JSON value, or `null` when absent.
    pub fn raw_or_null(&mut self, key: &str, value: Option<&RawValue>) {
        self.raw(key, value.map_or("null", RawValue::get));
    }

    /// `key` with `value` as a JSON string.
    pub fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        self.quoted(value);
    }

    /// `key` with the time `t` as a JSON string, UTC with milliseconds.
    pub fn time(&mut self, key: &str, t: OffsetDateTime) {
        self.key(key);
        self.buf.push(b'"');
        write_time(&mut self.buf, t);
        self.buf.push(b'"');
    }

    /// `key` with a new message id (a UUIDv7: time-ordered, so the lake's ids sort by arrival).
    pub fn new_id(&mut self, key: &str) {
        self.key(key);
        let mut id = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
        self.buf.push(b'"');
        self.buf.extend_from_slice(id.as_bytes());
        self.buf.push(b'"');
    }

    /// A key that came from a client (it may need escapes), with a raw JSON value.
    pub fn client_field(&mut self, key: &str, value: &str) {
        self.separator();
        self.quoted(key);
        self.buf.push(b':');
        self.value(value);
    }

    /// An object of (client key, raw JSON value) pairs, or `null` when there are none.
    pub fn object_or_null<'a>(
        &mut self,
        key: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut fields = fields.into_iter().peekable();
        if fields.peek().is_none() {
            self.raw(key, "null");
        } else {
            self.object(key, fields);
        }
    }

    /// The raw JSON object `raw` (as a client sent it) with one more (key, raw JSON value)
    /// pair at its end, if given: `raw` is copied, not re-written.
    pub fn extended_object(&mut self, key: &str, raw: &str, more: Option<(&str, &str)>) {
        self.key(key);
        let Some((k, v)) = more else {
            return self.value(raw);
        };
        let inner = raw
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .expect("a raw JSON object");
        self.buf.push(b'{');
        if inner.bytes().any(|b| !b.is_ascii_whitespace()) {
            self.value(inner);
            self.buf.push(b',');
        }
        self.quoted(k);
        self.buf.push(b':');
        self.value(v);
        self.buf.push(b'}');
    }

    /// An object of (client key, raw JSON value) pairs.
    pub fn object<'a>(&mut self, key: &str, fields: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.key(key);
        let mut first = true;
        self.buf.push(b'{');
        for (k, v) in fields {
            if !first {
                self.buf.push(b',');
            }
            first = false;
            self.quoted(k);
            self.buf.push(b':');
            self.value(v);
        }
        self.buf.push(b'}');
    }

    /// Ends the record; refuses it (and takes it back out) if the line is over Firehose's
    /// record limit.
    pub fn end(&mut self) -> Result<(), TooLarge> {
        self.buf.extend_from_slice(b"}\n");
        let bytes = self.buf.len() - self.line_start;
        if bytes > FIREHOSE_MAX_RECORD_BYTES {
            self.buf.truncate(self.line_start);
            return Err(TooLarge { bytes });
        }
        self.lines += 1;
        Ok(())
    }

    /// Records written.
    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// The records' bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn separator(&mut self) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
    }

    fn key(&mut self, name: &str) {
        self.separator();
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn value(&mut self, raw: &str) {
        if !self.breaks {
            return self.buf.extend_from_slice(raw.as_bytes());
        }
        let mut rest = raw.as_bytes();
        // Line breaks are rare (pretty-printed clients): copy the runs between them whole.
        while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
            self.buf.extend_from_slice(&rest[..at]);
            rest = &rest[at + 1..];
        }
        self.buf.extend_from_slice(rest);
    }

    fn quoted(&mut self, s: &str) {
        serde_json::to_writer(&mut self.buf, s).expect("a string serializes into a Vec");
    }
}

/// `s` as a JSON string.
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `t` as a JSON string, as [`Writer::time`] writes it.
pub fn quoted_time(t: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(26);
    out.push(b'"');
    write_time(&mut out, t);
    out.push(b'"');
    String::from_utf8(out).expect("digits and ASCII punctuation")
}

/// One record of its own: `fill` writes its fields between `{` and `}`.
pub fn one(capacity: usize, fill: impl FnOnce(&mut Writer)) -> Result<Vec<u8>, TooLarge> {
    one_from(capacity, &[], fill)
}

/// [`one`], for a record whose client values all come from `sources` (see
/// [`Writer::begin_from`]); an empty list: from anywhere.
pub fn one_from(
    capacity: usize,
    sources: &[&str],
    fill: impl FnOnce(&mut Writer),
) -> Result<Vec<u8>, TooLarge> {
    let mut w = Writer::with_capacity(capacity);
    match sources.is_empty() {
        true => w.begin(),
        false => w.begin_from(sources),
    }
    fill(&mut w);
    w.end()?;
    Ok(w.into_bytes())
}

/// The device's time of an event corrected for its clock's skew, as Segment documents it
/// (`receivedAt − (sentAt − timestamp)`); the device's own time when it did not say when it
/// sent; the server's time when it gave no time at all.
///
/// Client clocks can be anywhere in the years 0000–9999, and the correction of two such
/// times may leave that range (it once panicked, found by schemathesis) or land where RFC
/// 3339 cannot write it in UTC. Such a time is not a reason to refuse an event: the record
/// then takes the server's time, and keeps the device's times as sent.
pub fn corrected(
    received: OffsetDateTime,
    device: Option<OffsetDateTime>,
    sent: Option<OffsetDateTime>,
) -> OffsetDateTime {
    match (device, sent) {
        (Some(o), Some(s)) => received.checked_sub(s - o).and_then(writable_utc),
        (Some(o), None) => writable_utc(o),
        (None, _) => None,
    }
    .unwrap_or(received)
}

/// A time in milliseconds since the Unix epoch (how Snowplow's trackers and PostHog's
/// `$time` count), if it is one RFC 3339 can write.
pub fn from_millis(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(writable_utc)
}

/// The server's clock as a time.
pub fn now_of(at: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(at)
}

/// Why a time field was refused.
pub const TIME_REASON: &str = "must be an RFC 3339 date-time such as 2026-11-24T10:00:00.000Z";

/// The date-times the compatibility APIs accept: the whole language, which `openapi.yaml`
/// states as the `Time` schema's `pattern` (a test keeps the two identical, and checks that
/// `time` parses every string of it). It is RFC 3339's `date-time` (section 5.6): a date
/// that exists (month lengths and leap years are in the pattern, so a tool generating strings
/// from it makes only real dates), `T` or `t`, hours 00–23, no leap second (`:60`), any number
/// of fraction digits, then `Z`, `z` or an offset `±hh:mm`. What ISO 8601 adds beyond RFC 3339
/// (week and ordinal dates, the basic format, `+hhmm` offsets, reduced precision) is refused:
/// no document could say which of it a parser takes, and the SDKs send RFC 3339
/// (`toISOString()`, Python's `isoformat()` of an aware time).
pub const DATE_TIME_PATTERN: &str = concat!(
    "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
    "[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?",
    "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$",
);

/// A time field's value, if it is a JSON string of [`DATE_TIME_PATTERN`].
pub fn parse_time(raw: &RawValue) -> Option<OffsetDateTime> {
    // A string with no escape is its own text (the pattern has no quote in it).
    let plain = raw.get().strip_prefix('"')?.strip_suffix('"');
    match plain.filter(|t| !t.contains('\\')) {
        Some(text) => parse_time_text(text),
        None => parse_time_text(&serde_json::from_str::<String>(raw.get()).ok()?),
    }
}

/// `text`, if it is a string of [`DATE_TIME_PATTERN`].
pub fn parse_time_text(text: &str) -> Option<OffsetDateTime> {
    match parse_utc(text.as_bytes()) {
        Some(t) => Some(t),
        None => parse_any_time(text),
    }
}

/// The form nearly every SDK sends (`toISOString()`, and Python's `isoformat()` in UTC with
/// `Z`): `YYYY-MM-DDThh:mm:ss`, an optional fraction of up to 9 digits, `Z`. Read digit by
/// digit, several times cheaper than the pattern and `time`'s RFC 3339 parser, which read
/// every other form (`None` here sends a string to them); the same checks (a date that
/// exists, hours to 23, no leap second) by `time`'s own constructors. A property test holds
/// the two to the same answer on strings of the pattern and near it.
fn parse_utc(text: &[u8]) -> Option<OffsetDateTime> {
    let number = |at: std::ops::Range<usize>| {
        text.get(at)?.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let punctuated = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
        .iter()
        .all(|&(at, c)| text.get(at) == Some(&c));
    if !punctuated || text.last() != Some(&b'Z') {
        return None;
    }
    let nanos = match &text[19..text.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(20..20 + digits.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let month = time::Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(number(0..4)?).ok()?,
        month,
        u8::try_from(number(8..10)?).ok()?,
    )
    .ok()?;
    let time = time::Time::from_hms_nano(
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(14..16)?).ok()?,
        u8::try_from(number(17..19)?).ok()?,
        nanos,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// `text`, if it is a string of [`DATE_TIME_PATTERN`]: any form of it.
fn parse_any_time(text: &str) -> Option<OffsetDateTime> {
    static GRAMMAR: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(DATE_TIME_PATTERN).expect("the date-time pattern compiles"));
    if !GRAMMAR.is_match(text) {
        return None;
    }
    // Every string of the pattern is one `time` parses (a property test checks it).
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// `t` in UTC, if RFC 3339 can write it there (years 0000–9999): an offset can carry a time
/// near either end of that range past it.
pub fn writable_utc(t: OffsetDateTime) -> Option<OffsetDateTime> {
    t.checked_to_offset(UtcOffset::UTC)
        .filter(|t| (0..=9999).contains(&t.year()))
}

/// Writes `t` as `YYYY-MM-DDThh:mm:ss.mmmZ` (UTC; `t` is in years 0000–9999, see
/// [`writable_utc`]). Fixed width, so written digit by digit rather than through `fmt`.
pub fn write_time(out: &mut Vec<u8>, t: OffsetDateTime) {
    fn digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
        let mut text = [b'0'; 4];
        for slot in text[..width].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&text[..width]);
    }
    let t = t.to_offset(UtcOffset::UTC);
    digits(out, t.year().clamp(0, 9999) as u32, 4);
    let fields = [
        (b'-', u32::from(u8::from(t.month()))),
        (b'-', u32::from(t.day())),
        (b'T', u32::from(t.hour())),
        (b':', u32::from(t.minute())),
        (b':', u32::from(t.second())),
    ];
    for (separator, value) in fields {
        out.push(separator);
        digits(out, value, 2);
    }
    out.push(b'.');
    digits(out, u32::from(t.millisecond()), 3);
    out.push(b'Z');
}

/// `t` as [`write_time`] writes it.
pub fn format_time(t: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(24);
    write_time(&mut out, t);
    String::from_utf8(out).expect("digits and ASCII punctuation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_fixed_width_in_utc_with_milliseconds() {
        for (text, want) in [
            ("2026-11-24T10:00:00Z", "2026-11-24T10:00:00.000Z"),
            (
                "2026-11-24T10:00:00.123456+01:00",
                "2026-11-24T09:00:00.123Z",
            ),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z"),
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        ] {
            let t = parse_time_text(text).unwrap();
            assert_eq!(format_time(t), want, "{text}");
        }
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(
            format_time(now_of(at)),
            humantime::format_rfc3339_millis(at).to_string()
        );
    }

    proptest::proptest! {
        /// What the fast reading of the common form takes, the pattern and `time` take, as
        /// the same time: on strings of that form and near it (out-of-range fields, a
        /// fraction too long or empty, no `Z`, a lower-case `z`, which it leaves to them).
        #[test]
        fn the_common_form_reads_as_the_general_reader_does(
            text in proptest::string::string_regex(
                "[0-9]{4}-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])T([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,10})?[Zz]?"
            ).unwrap()
        ) {
            if let Some(t) = parse_utc(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(t), parse_any_time(&text), "{}", text);
            }
        }
    }

    #[test]
    fn the_common_form_takes_real_dates_only() {
        for (text, ok) in [
            ("2024-02-29T23:59:59.999Z", true),
            ("2026-02-29T00:00:00Z", false),
            ("1900-02-29T00:00:00Z", false),
            ("2000-02-29T00:00:00Z", true),
            ("0000-02-29T00:00:00Z", true),
            ("2026-11-24T24:00:00Z", false),
            ("2026-11-24T10:60:00Z", false),
            ("2026-11-24T10:00:60Z", false),
            ("2026-11-24T10:00:00.Z", false),
            ("2026-11-24T10:00:00.123456789Z", true),
            ("2026-11-24T10:00:00.1234567891Z", false),
        ] {
            assert_eq!(parse_utc(text.as_bytes()).is_some(), ok, "{text}");
            assert_eq!(
                parse_utc(text.as_bytes()),
                parse_any_time(text).filter(|_| ok),
                "{text}"
            );
        }
    }

    #[test]
    fn a_line_over_firehoses_record_limit_is_refused_and_taken_back() {
        let mut w = Writer::with_capacity(16);
        w.begin();
        w.string("a", "fits");
        w.end().unwrap();
        let fits = w.lines();
        w.begin();
        w.string("a", &"x".repeat(FIREHOSE_MAX_RECORD_BYTES));
        let e = w.end().unwrap_err();
        assert!(e.bytes > FIREHOSE_MAX_RECORD_BYTES);
        assert_eq!(w.lines(), fits);
        assert_eq!(w.into_bytes(), b"{\"a\":\"fits\"}\n");
    }

    #[test]
    fn values_from_sources_without_line_breaks_are_copied_and_others_searched() {
        let clean = one_from(8, &["{\"a\":1}"], |w| w.raw("a", "1")).unwrap();
        assert_eq!(clean, b"{\"a\":1}\n");
        let broken = one_from(8, &["{}", "{\n}"], |w| w.raw("a", "{\r\n}")).unwrap();
        assert_eq!(broken, b"{\"a\":{}}\n");
    }

    #[test]
    fn client_keys_are_escaped_and_line_breaks_dropped() {
        let line = one(8, |w| {
            w.client_field("we\"ird", "{\n\"a\": 1\r\n}");
            w.object("o", [("k\n", "2")]);
            w.object_or_null("none", []);
            w.object("empty", []);
        })
        .unwrap();
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            "{\"we\\\"ird\":{\"a\": 1},\"o\":{\"k\\n\":2},\"none\":null,\"empty\":{}}\n"
        );
        let _: serde_json::Value = serde_json::from_str(&text).unwrap();
    }
}
