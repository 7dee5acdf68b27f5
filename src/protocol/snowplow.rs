//! Snowplow (stub while the seam lands).

use serde::{Deserialize, Serialize};

use super::{Protocol, Registration};
use crate::config::{Config, StreamList};

/// Registered in [`super::PROTOCOLS`].
pub const PROTOCOL: Registration = Registration {
    name: "snowplow",
    routes: &[],
    streams,
    enabled,
    build,
};

fn streams(config: &Config) -> Vec<(&'static str, &StreamList)> {
    vec![("snowplow.events", &config.snowplow.events)]
}

fn enabled(config: &Config) -> bool {
    config.snowplow.enabled
}

fn build(_: &Config) -> Box<dyn Protocol> {
    unimplemented!()
}

/// `[snowplow]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnowplowConfig {
    /// Whether its routes are served.
    pub enabled: bool,
    /// Delivery stream(s) of its events.
    pub events: StreamList,
}

impl Default for SnowplowConfig {
    fn default() -> Self {
        SnowplowConfig {
            enabled: false,
            events: "snowplow_events".into(),
        }
    }
}
