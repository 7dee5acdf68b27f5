//! JSON checks every protocol shares, on raw JSON text that serde_json has already
//! validated: what strict readers of the lake refuse although the grammar allows it, a
//! string's length as JSON Schema counts it, and integers however they are written.

/// Deepest nesting of arrays and objects inside `metadata` / `attributes`. The lake's
/// readers stop somewhere (serde_json at 128 levels, Athena's JSON reader around 1,000); a
/// record they cannot read is lost in all but name, so deeper values are refused at ingest.
pub const MAX_FREE_FORM_DEPTH: usize = 64;

/// The value of `text` (a raw JSON value) if it is a number with no fractional part that fits
/// in 64 bits, however it is written: `1732435200`, `1732435200.0`, `1.7324352e9`, `-0`.
/// JSON has one number type, and JSON Schema's `integer` (what `openapi.yaml` declares) is any
/// number whose fractional part is zero; a validator that went by the spelling would refuse
/// what the document allows. Exact (decimal, not through `f64`), so no large value is rounded.
pub fn integer_value(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e),
        None => (unsigned, "0"),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exponent_digits = exponent.trim_start_matches(['+', '-']);
    if !digits_only(whole)
        || !(fraction.is_empty() || digits_only(fraction))
        || !digits_only(exponent_digits)
    {
        return None; // a string, a boolean, null, an object or an array
    }
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return Some(0); // `0.0`, `-0e5`: zero however large the exponent
    }
    // value = significant × 10^scale
    let trailing_zeros = digits.trim_start_matches('0').len() - significant.len();
    // An exponent too long for i64 is far outside the range either way.
    let exponent: i64 = exponent.parse().unwrap_or(if exponent.starts_with('-') {
        i64::MIN / 2
    } else {
        i64::MAX / 2
    });
    let scale = exponent
        .saturating_sub(fraction.len() as i64)
        .saturating_add(trailing_zeros as i64);
    // A fractional part, or more digits than the 19 of i64::MAX.
    if scale < 0 || significant.len() as i64 + scale > 19 {
        return None;
    }
    let magnitude: i128 = format!("{significant}{}", "0".repeat(scale as usize))
        .parse()
        .ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Characters (Unicode code points) of the JSON string literal `raw` (quotes included) once
/// decoded, which is what JSON Schema's `maxLength` counts: an escape is one character, and
/// an escaped surrogate pair one too.
pub fn decoded_chars(raw: &[u8]) -> usize {
    let inner = &raw[1..raw.len() - 1];
    let unit = |at: usize| {
        inner
            .get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    let (mut chars, mut i) = (0, 0);
    while i < inner.len() {
        i += match inner[i] {
            b'\\' if inner.get(i + 1) == Some(&b'u') => {
                let pair = (0xD800..0xDC00).contains(&unit(i + 2))
                    && inner.get(i + 6..i + 8) == Some(b"\\u")
                    && (0xDC00..0xE000).contains(&unit(i + 8));
                if pair { 12 } else { 6 }
            }
            b'\\' => 2,
            b if b < 0x80 => 1,
            b if b < 0xE0 => 2,
            b if b < 0xF0 => 3,
            _ => 4,
        };
        chars += 1;
    }
    chars
}

/// Checks a raw JSON value (already known to be valid JSON) for what strict readers of the
/// lake refuse although the JSON grammar allows it: an unpaired UTF-16 surrogate escape
/// (`"\ud800"`), and nesting deeper than [`MAX_FREE_FORM_DEPTH`]. Written by hand: it is one
/// pass over bytes that serde_json has validated, where a full parse would allocate.
pub fn check_raw(raw: &[u8]) -> Result<(), String> {
    // Most values have neither an escape nor enough brackets to nest too deep (each level
    // opens and closes one): told by a vectorised search and count, without the pass below.
    let could_nest = |raw: &[u8]| {
        raw.len() > 2 * MAX_FREE_FORM_DEPTH
            && raw.iter().filter(|&&b| b == b'[' || b == b'{').count() > MAX_FREE_FORM_DEPTH
    };
    if memchr::memchr(b'\\', raw).is_none() && !could_nest(raw) {
        return Ok(());
    }
    let hex = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let unpaired = || Err("contains an unpaired UTF-16 surrogate escape".to_owned());
    let (mut depth, mut i, mut in_string) = (0usize, 0usize, false);
    while i < raw.len() {
        match (in_string, raw[i]) {
            (true, b'\\') if raw.get(i + 1) == Some(&b'u') => {
                let unit = hex(i + 2).unwrap_or(0);
                if (0xD800..0xDC00).contains(&unit) {
                    let low = (raw.get(i + 6..i + 8) == Some(b"\\u"))
                        .then(|| hex(i + 8))
                        .flatten();
                    if !low.is_some_and(|l| (0xDC00..0xE000).contains(&l)) {
                        return unpaired();
                    }
                    i += 12;
                    continue;
                }
                if (0xDC00..0xE000).contains(&unit) {
                    return unpaired();
                }
                i += 6;
                continue;
            }
            // Any other escape: skip the escaped byte (it may be a quote).
            (true, b'\\') => i += 1,
            (true, b'"') => in_string = false,
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_FREE_FORM_DEPTH {
                    return Err(format!("nested deeper than {MAX_FREE_FORM_DEPTH} levels"));
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}
