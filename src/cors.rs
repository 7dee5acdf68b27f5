//! CORS for browsers calling the ingest API from other origins.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue};

use crate::config::CorsConfig;

/// Request headers every client needs (JSON bodies, API keys, compressed bodies), allowed
/// when a preflight names none.
const ALLOWED_HEADERS: &str = "content-type, authorization, x-api-key, content-encoding";

/// Most request headers a preflight may ask for; past it the default list is answered.
const MAX_REQUESTED_HEADERS: usize = 32;

/// The allowed origins and preflight lifetime.
pub struct Cors {
    any: bool,
    origins: Vec<String>,
    max_age: HeaderValue,
}

impl Cors {
    /// CORS as configured.
    pub fn new(config: &CorsConfig) -> Cors {
        Cors {
            any: config.allowed_origins.iter().any(|o| o == "*"),
            origins: config.allowed_origins.clone(),
            max_age: HeaderValue::from(config.max_age_secs),
        }
    }

    /// Whether cross-origin requests are enabled at all.
    pub fn enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// The request's origin, if CORS is on and the origin is allowed.
    pub fn allowed_origin<'a>(&self, request: &'a HeaderMap) -> Option<&'a HeaderValue> {
        if !self.enabled() {
            return None;
        }
        let origin = request.get(ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o == text)).then_some(origin)
    }

    /// Adds the headers of an actual (non-preflight) response; `origin` is the request's
    /// origin if it is allowed (see [`Cors::allowed_origin`]); `credentials` for a protocol
    /// whose browser clients send cookies (the answer then names the origin, never `*`, as
    /// it always does here).
    pub fn decorate(
        &self,
        origin: Option<HeaderValue>,
        credentials: bool,
        response: &mut HeaderMap,
    ) {
        if !self.enabled() {
            return;
        }
        // Caches must keep answers for different origins apart.
        response.append(VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin {
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if credentials {
                response.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
    }

    /// Adds the headers of a successful preflight answer to `request` (a preflight from an
    /// allowed origin) for a route taking `methods`.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        request: &HeaderMap,
        methods: &'static str,
        credentials: bool,
        response: &mut HeaderMap,
    ) {
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        if credentials {
            response.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed_headers(request));
        response.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        response.append(VARY, HeaderValue::from_static("origin"));
    }
}

/// The request headers a preflight is allowed: the ones it asks for, when they are a list
/// of header names. SDKs add headers of their own (RudderStack's browser SDK `AnonymousId`,
/// `SentAt` and `Rsa-Retry-*`, analytics.js `X-Retry-Count` on a retry), and a header left
/// off the list blocks the request in the browser, where the SDK retries it in vain. A header
/// grants nothing here (the origin and the key do), so allowing what is asked is safe.
fn allowed_headers(request: &HeaderMap) -> HeaderValue {
    let asked = request
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let valid = !asked.is_empty()
        && asked.len() <= MAX_REQUESTED_HEADERS
        && asked
            .iter()
            .all(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok());
    if !valid {
        return HeaderValue::from_static(ALLOWED_HEADERS);
    }
    let mut names: Vec<String> = ALLOWED_HEADERS.split(", ").map(str::to_owned).collect();
    for h in asked {
        let h = h.to_ascii_lowercase();
        if !names.contains(&h) {
            names.push(h);
        }
    }
    HeaderValue::from_str(&names.join(", ")).expect("header names are valid header text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(value: &str) -> String {
        let mut request = HeaderMap::new();
        request.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_str(value).unwrap(),
        );
        allowed_headers(&request).to_str().unwrap().to_owned()
    }

    #[test]
    fn a_preflight_gets_the_headers_it_asks_for() {
        assert_eq!(allowed_headers(&HeaderMap::new()), ALLOWED_HEADERS);
        assert_eq!(
            asking("AnonymousId, SentAt,content-type"),
            format!("{ALLOWED_HEADERS}, anonymousid, sentat")
        );
        assert_eq!(
            asking("x-retry-count"),
            format!("{ALLOWED_HEADERS}, x-retry-count")
        );
        // Not a list of header names, or an absurd one: the default list.
        assert_eq!(asking("bad header, x"), ALLOWED_HEADERS);
        let many: Vec<String> = (0..40).map(|i| format!("x-h{i}")).collect();
        assert_eq!(asking(&many.join(",")), ALLOWED_HEADERS);
    }
}
