//! The ingest protocols, one file each, behind one interface.
//!
//! A protocol declares its [`Route`]s (path, methods, how a request names its source, whether
//! its `Content-Type` is checked) and turns a request into records for its streams and the
//! answer its clients expect ([`Protocol::accept`]). [`crate::ingest`] does the rest for all of
//! them alike: CORS, API keys, body limits and decoding, the all-or-nothing durable append,
//! metrics, and every refusal's status. [`record`] is the one record writer (with the
//! record-size check and the clock-skew rules), [`json`] the checks on raw JSON they share.
//!
//! Adding a protocol is a file here with a [`Registration`], one line in [`PROTOCOLS`], and
//! its config section (a field of [`Config`], documented in `config/default.toml`).

pub mod classic;
pub mod json;
pub mod object;
pub mod posthog;
pub mod record;
pub mod segment;
pub mod snowplow;

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::Full;

use crate::auth::ApiKeys;
use crate::config::{Config, ConfigError, DEFAULT_SOURCE, StreamList};
use crate::ingest::IngestError;
use crate::policy::Shape;
use crate::queue::BatchLine;

/// Every protocol, registered once.
pub const PROTOCOLS: &[Registration] = &[
    classic::PROTOCOL,
    segment::PROTOCOL,
    posthog::PROTOCOL,
    snowplow::PROTOCOL,
];

/// What [`PROTOCOLS`] knows of a protocol before it is built.
pub struct Registration {
    /// Its name (logs).
    pub name: &'static str,
    /// Every route it serves.
    pub routes: &'static [Route],
    /// Its delivery stream lists, by config key (`segment.track`).
    pub streams: fn(&Config) -> Vec<(&'static str, &StreamList)>,
    /// Whether the configuration turns it on.
    pub enabled: fn(&Config) -> bool,
    /// Checks its config section beyond its types (at start: exit 64 naming the key).
    pub validate: fn(&Config) -> Result<(), ConfigError>,
    /// The protocol as configured.
    pub build: fn(&Config) -> Box<dyn Protocol>,
}

/// One path a protocol serves.
#[derive(Debug)]
pub struct Route {
    /// The path: exact, or a prefix (`/array/` + a token + `/config`).
    pub path: Path,
    /// The metric label of its requests (bounded: one per route).
    pub label: &'static str,
    /// The methods it takes (and `OPTIONS`, the CORS preflight).
    pub methods: Methods,
    /// How a request names its source.
    pub auth: Auth,
    /// Whether `Content-Type` must say JSON.
    pub strict_content_type: bool,
    /// The protocol's own tag for the route.
    pub id: u8,
}

/// A route's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// This path exactly.
    Exact(&'static str),
    /// Any path that starts with this.
    Prefix(&'static str),
}

/// The methods of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Methods {
    /// `GET` (its data in the query string; no body is read).
    pub get: bool,
    /// `POST`.
    pub post: bool,
}

impl Methods {
    /// `POST` only.
    pub const POST: Methods = Methods {
        get: false,
        post: true,
    };
    /// `GET` only.
    pub const GET: Methods = Methods {
        get: true,
        post: false,
    };
    /// Both.
    pub const ANY: Methods = Methods {
        get: true,
        post: true,
    };

    /// Whether `method` is one of them.
    pub fn allow(self, method: &Method) -> bool {
        (self.get && method == Method::GET) || (self.post && method == Method::POST)
    }

    /// The `Allow` header's value.
    pub fn header(self) -> &'static str {
        match (self.get, self.post) {
            (true, true) => "GET, POST",
            (true, false) => "GET",
            _ => "POST",
        }
    }
}

/// How a request names its source, when API keys are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// A key in the headers or query string; refused (401) before the body is read.
    Key,
    /// A key in the headers or query string, or one the protocol finds in the request
    /// (Segment's `writeKey`, PostHog's project token): [`Request::source`] decides.
    Protocol,
    /// None: the route stores nothing and answers everyone alike (PostHog's flags).
    Open,
}

/// What [`crate::ingest`] knows of a request when its protocol takes over.
pub struct Request<'a> {
    /// Its route.
    pub route: &'a Route,
    /// Its method.
    pub method: &'a Method,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its query string.
    pub query: Option<&'a str>,
    /// Its path.
    pub path: &'a str,
    /// Its body, decoded per `Content-Encoding` and capped (empty for `GET`).
    pub body: &'a [u8],
    /// The source of the key in its headers or query string, if any (`default` when no key
    /// is configured).
    pub source: Option<&'a str>,
    /// The configured keys, for keys a protocol finds in the body.
    pub keys: &'a ApiKeys,
    /// The client's address (see the trusted-proxy rule in `ingest`).
    pub ip: Option<&'a str>,
    /// When it arrived.
    pub at: SystemTime,
    /// `server.max_body_bytes`: also the cap on what a protocol decodes itself.
    pub max_body_bytes: usize,
}

impl Request<'_> {
    /// The request's source: that of the key in its headers or query string, else that of
    /// `key` (one the protocol found in the body), else 401.
    pub fn source(&self, key: Option<&str>) -> Result<String, IngestError> {
        if let Some(source) = self.source {
            return Ok(source.to_owned());
        }
        if !self.keys.enabled() {
            return Ok(DEFAULT_SOURCE.to_owned());
        }
        key.and_then(|k| self.keys.source_of(k))
            .map(str::to_owned)
            .ok_or(IngestError::Unauthorized)
    }

    /// [`Request::source`], with the body's key looked for (`find`) only when the headers
    /// and query string did not settle it: finding it can cost a pass over the body.
    pub fn source_with(
        &self,
        find: impl FnOnce() -> Option<String>,
    ) -> Result<String, IngestError> {
        match self.source.is_some() || !self.keys.enabled() {
            true => self.source(None),
            false => self.source(find().as_deref()),
        }
    }

    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What to store for an accepted request, and what to answer once it is stored.
pub struct Accepted {
    /// The records, appended all or none before `answer` is sent.
    pub records: Records,
    /// The answer its clients expect.
    pub answer: Response<Full<Bytes>>,
}

/// A request's records.
pub enum Records {
    /// Nothing to store (a flags call).
    None,
    /// NDJSON lines for one stream, with no ids to deduplicate (the classic API).
    Lines {
        /// The stream.
        stream: String,
        /// The lines.
        ndjson: Vec<u8>,
        /// How many.
        count: u32,
    },
    /// Messages for their streams, each skipped if its id was accepted from `source` within
    /// the dedup window, in the protocol's own namespace of ids.
    Messages {
        /// Their source.
        source: String,
        /// The namespace of their ids: a PostHog `uuid` is not a Segment `messageId`, and a
        /// client's id that happens to equal another protocol's must not make its event a
        /// duplicate. Segment's is `""` (the window's ids from before there were others).
        ids: &'static str,
        /// The messages.
        lines: Vec<BatchLine>,
    },
}

/// The dedup window's name for the ids of `source` in the namespace `ids` (see
/// [`Records::Messages`]): the source itself for `""`, else one that no source name of the
/// configuration can be (source names are refused when they start with U+FFFF).
pub fn dedup_scope(ids: &str, source: &str) -> String {
    match ids {
        "" => source.to_owned(),
        ids => format!("{ID_SCOPE_MARK}{ids}\u{0}{source}"),
    }
}

/// What starts a protocol's id namespace in the dedup window (a noncharacter).
pub const ID_SCOPE_MARK: char = '\u{FFFF}';

/// A protocol, built from the configuration.
pub trait Protocol: Send + Sync {
    /// Validates and encodes a request to one of its routes (method, auth and body limits
    /// already checked).
    fn accept(&self, request: &Request<'_>) -> Result<Accepted, IngestError>;

    /// Whether its clients read a refusal the way compatibility APIs answer it: a JSON body
    /// with `code` and `message` (see [`IngestError`]).
    fn compat_errors(&self) -> bool {
        true
    }

    /// Whether its browser clients send credentials (cookies), so CORS answers must allow
    /// them (`Access-Control-Allow-Credentials: true`).
    fn cors_credentials(&self) -> bool {
        false
    }

    /// What the policies need to know of its records: where the client's address and user
    /// agent are, and what a tracking plan checks.
    fn shape(&self) -> &'static Shape;
}

/// Every route of the enabled protocols, by path.
pub struct Table {
    exact: HashMap<&'static str, (usize, &'static Route)>,
    prefixes: Vec<(&'static str, usize, &'static Route)>,
    protocols: Vec<Box<dyn Protocol>>,
}

impl Table {
    /// The routes of every protocol `config` enables.
    ///
    /// # Panics
    /// If two routes claim one path: [`PROTOCOLS`] is a constant, and a test builds it.
    pub fn new(config: &Config) -> Table {
        let mut table = Table {
            exact: HashMap::new(),
            prefixes: Vec::new(),
            protocols: Vec::new(),
        };
        for registration in PROTOCOLS.iter().filter(|r| (r.enabled)(config)) {
            let index = table.protocols.len();
            table.protocols.push((registration.build)(config));
            for route in registration.routes {
                match route.path {
                    Path::Exact(path) => {
                        let before = table.exact.insert(path, (index, route));
                        assert!(before.is_none(), "two routes for {path}");
                    }
                    Path::Prefix(prefix) => table.prefixes.push((prefix, index, route)),
                }
            }
            tracing::debug!(protocol = registration.name, "protocol enabled");
        }
        table
    }

    /// Every field where an enabled protocol's records name their user (each once): what a
    /// deletion request looks for in the queue, whose streams those protocols share.
    pub fn identity_fields(&self) -> Vec<&'static str> {
        let mut fields: Vec<&'static str> = Vec::new();
        for protocol in &self.protocols {
            for field in protocol.shape().ids {
                if !fields.contains(field) {
                    fields.push(field);
                }
            }
        }
        fields
    }

    /// The protocol and route serving `path`.
    pub fn find(&self, path: &str) -> Option<(&dyn Protocol, &'static Route)> {
        let (index, route) = self.exact.get(path).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _, _)| path.starts_with(prefix))
                .map(|&(_, index, route)| (index, route))
        })?;
        Some((self.protocols[index].as_ref(), route))
    }
}

/// The metric label of every route of every protocol (and `other`).
pub fn route_labels() -> Vec<&'static str> {
    let mut labels: Vec<&'static str> = Vec::new();
    for route in PROTOCOLS.iter().flat_map(|r| r.routes) {
        if !labels.contains(&route.label) {
            labels.push(route.label);
        }
    }
    labels.push("other");
    labels
}

/// A [`Registration::validate`] for a section with nothing to check beyond its types.
pub fn valid(_: &Config) -> Result<(), ConfigError> {
    Ok(())
}

/// Checks a source name (a key of `[auth.sources]`, a value of a protocol's map): not empty,
/// and not a protocol's id namespace (see [`dedup_scope`]).
pub fn check_source_name(key: &str, source: &str) -> Result<(), ConfigError> {
    if source.is_empty() || source.starts_with(ID_SCOPE_MARK) {
        return Err(ConfigError::invalid(
            key,
            format!("{source:?} is not a source name (empty, or starts with U+FFFF)"),
        ));
    }
    Ok(())
}

/// Every protocol's own checks of its config section.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    PROTOCOLS.iter().try_for_each(|r| (r.validate)(config))
}

/// Every enabled protocol's delivery stream lists, by config key, in registration order.
/// Only enabled protocols have streams: a disabled one's queue is left as it is (and its
/// records undelivered) until it is enabled again.
pub fn stream_lists(config: &Config) -> Vec<(&'static str, &StreamList)> {
    PROTOCOLS
        .iter()
        .filter(|r| (r.enabled)(config))
        .flat_map(|r| (r.streams)(config))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_route_and_every_label_is_bounded() {
        let table = Table::new(&Config::default());
        for route in PROTOCOLS.iter().flat_map(|r| r.routes) {
            let path = match route.path {
                Path::Exact(p) => p.to_owned(),
                Path::Prefix(p) => format!("{p}token/config"),
            };
            let (_, found) = table.find(&path).expect("routed");
            assert_eq!(
                (found.path, found.label, found.id),
                (route.path, route.label, route.id),
                "{path} routed elsewhere"
            );
        }
        assert!(table.find("/nope").is_none());
        let labels = route_labels();
        assert!(labels.len() < 40, "{labels:?}");
    }

    #[test]
    fn a_disabled_protocol_has_no_routes_and_no_streams() {
        let mut config = Config::default();
        config.posthog.enabled = false;
        config.snowplow.enabled = false;
        let table = Table::new(&config);
        for path in [
            "/batch/",
            "/e/",
            "/flags/",
            "/com.snowplowanalytics.snowplow/tp2",
            "/i",
        ] {
            assert!(table.find(path).is_none(), "{path}");
        }
        assert!(table.find("/v1/batch").is_some() && table.find("/track").is_some());
        let names = config.stream_names();
        assert!(
            !names
                .iter()
                .any(|n| n == "posthog_events" || n == "snowplow_events")
        );
    }

    #[test]
    fn protocol_id_namespaces_cannot_meet_a_source_name() {
        assert_eq!(dedup_scope("", "web"), "web");
        let scoped = dedup_scope("posthog", "web");
        assert!(scoped.starts_with(ID_SCOPE_MARK) && scoped.ends_with("\u{0}web"));
        let refused = Config::from_toml(
            "[auth.sources]\n\"\u{FFFF}posthog\" = \"key-0123456789abcdef\"\n",
            "t",
            std::iter::empty(),
        );
        let why = refused.unwrap_err().to_string();
        assert!(why.contains("not a source name"), "{why}");
    }
}
