//! PostHog (stub while the seam lands).

use serde::{Deserialize, Serialize};

use super::{Protocol, Registration};
use crate::config::{Config, StreamList};

/// Registered in [`super::PROTOCOLS`].
pub const PROTOCOL: Registration = Registration {
    name: "posthog",
    routes: &[],
    streams,
    enabled,
    build,
};

fn streams(config: &Config) -> Vec<(&'static str, &StreamList)> {
    vec![("posthog.events", &config.posthog.events)]
}

fn enabled(config: &Config) -> bool {
    config.posthog.enabled
}

fn build(_: &Config) -> Box<dyn Protocol> {
    unimplemented!()
}

/// `[posthog]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostHogConfig {
    /// Whether its routes are served.
    pub enabled: bool,
    /// Delivery stream(s) of its events.
    pub events: StreamList,
}

impl Default for PostHogConfig {
    fn default() -> Self {
        PostHogConfig {
            enabled: false,
            events: "posthog_events".into(),
        }
    }
}
