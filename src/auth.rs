//! API keys for the ingest endpoints.
//!
//! A key may come as `Authorization: Bearer KEY`, as HTTP Basic with the key as user name
//! and an empty password (Segment's writeKey convention), as `X-Api-Key: KEY`, or as
//! `?api_key=KEY` or `?writeKey=KEY` (for `navigator.sendBeacon`, which cannot set headers;
//! the second is RudderStack's). Keys are kept only
//! as SHA-256 digests and compared in constant time against every configured key, so neither
//! the position of a mismatch nor which key matched shows in the timing.

use base64::Engine;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured keys; empty means ingest is open.
pub struct ApiKeys {
    /// Digest of each key, and the source its requests come from.
    digests: Vec<([u8; 32], String)>,
}

impl ApiKeys {
    /// Keys from their plain text (their requests are from the default source).
    pub fn new(keys: &[String]) -> ApiKeys {
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.clone(), crate::config::DEFAULT_SOURCE.to_owned()))
            .collect();
        ApiKeys::with_sources(&keys)
    }

    /// Keys with the source each one's requests come from.
    pub fn with_sources(keys: &[(String, String)]) -> ApiKeys {
        ApiKeys {
            digests: keys
                .iter()
                .map(|(k, source)| (digest(k.as_bytes()), source.clone()))
                .collect(),
        }
    }

    /// Whether any key is required.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether the request carries a configured key (always true when none is configured).
    pub fn allows(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        !self.enabled()
            || presented_key(headers, query).is_some_and(|k| self.source_of(&k).is_some())
    }

    /// The source of the key the request carries in its headers or query, if it is one.
    pub fn source(&self, headers: &HeaderMap, query: Option<&str>) -> Option<&str> {
        self.source_of(&presented_key(headers, query)?)
    }

    /// The source of `key` (e.g. a `writeKey` sent in a body), if it is a configured key.
    pub fn source_of(&self, key: &str) -> Option<&str> {
        let presented = digest(key.as_bytes());
        // Compare with every key without stopping early.
        let mut found = None;
        for (d, source) in &self.digests {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(source.as_str());
            }
        }
        found
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The key as the client gave it, from the first of the supported places that has one.
fn presented_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = value.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim().to_owned());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            // `KEY:` (empty password); a bare `KEY` is accepted too.
            let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
            return Some(user.to_owned());
        }
        return None;
    }
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    // `writeKey` is where RudderStack's browser SDK puts it for its beacons.
    form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "api_key" || name == "writeKey")
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: &str = "k3y-0123456789abcdef";

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn every_way_of_giving_a_key() {
        let keys = ApiKeys::new(&["other-key-000000000".to_owned(), KEY.to_owned()]);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"));
        assert!(keys.allows(&headers("authorization", &format!("Bearer {KEY}")), None));
        assert!(keys.allows(&headers("authorization", &format!("bearer  {KEY} ")), None));
        assert!(keys.allows(&headers("authorization", &format!("Basic {basic}")), None));
        assert!(keys.allows(&headers("x-api-key", KEY), None));
        assert!(keys.allows(&HeaderMap::new(), Some(&format!("a=1&api_key={KEY}"))));
        assert!(keys.allows(&HeaderMap::new(), Some("api_key=k3y%2D0123456789abcdef")));
        assert!(keys.allows(&HeaderMap::new(), Some(&format!("writeKey={KEY}"))));
    }

    #[test]
    fn wrong_or_missing_keys_are_refused() {
        let keys = ApiKeys::new(&[KEY.to_owned()]);
        assert!(!keys.allows(&HeaderMap::new(), None));
        assert!(!keys.allows(&headers("authorization", "Bearer nope"), None));
        assert!(!keys.allows(&headers("authorization", &format!("Token {KEY}")), None));
        assert!(!keys.allows(&headers("authorization", "Basic !!!"), None));
        assert!(!keys.allows(&headers("x-api-key", &format!("{KEY}x")), None));
        assert!(!keys.allows(&HeaderMap::new(), Some("api_key=")));
        assert!(!keys.allows(&HeaderMap::new(), Some("key=k3y-0123456789abcdef")));
        let open = ApiKeys::new(&[]);
        assert!(open.allows(&HeaderMap::new(), None));
    }
}
