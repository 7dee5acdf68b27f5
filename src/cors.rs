//! CORS for browsers calling the ingest API from other origins.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue};

use crate::config::CorsConfig;

/// Request headers the clients need: JSON bodies, API keys, compressed bodies.
const ALLOWED_HEADERS: &str = "content-type, authorization, x-api-key, content-encoding";

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
    /// origin if it is allowed (see [`Cors::allowed_origin`]).
    pub fn decorate(&self, origin: Option<HeaderValue>, response: &mut HeaderMap) {
        if !self.enabled() {
            return;
        }
        // Caches must keep answers for different origins apart.
        response.append(VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin {
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }

    /// Adds the headers of a successful preflight answer.
    pub fn preflight(&self, origin: &HeaderValue, response: &mut HeaderMap) {
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        response.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        response.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        response.append(VARY, HeaderValue::from_static("origin"));
    }
}
