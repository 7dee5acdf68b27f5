//! Tracking plans: per source, the events a source may send, each with a JSON Schema (draft
//! 2020-12) for what it carries, checked before anything is stored.
//!
//! A plan file is JSON in the shape of Segment Protocols' and RudderStack's tracking plans:
//!
//! ```json
//! {"rules": {
//!   "events": [{"name": "Order Completed",
//!               "rules": {"type": "object", "properties": {"properties": {
//!                   "type": "object", "required": ["total"],
//!                   "properties": {"total": {"type": "number"}}}}}}],
//!   "identify": {"type": "object", "properties": {"traits": {"type": "object"}}},
//!   "group": {"type": "object", "properties": {"traits": {"type": "object"}}}}}
//! ```
//!
//! An event's `rules` is a schema for `{"properties": …}` (what its protocol calls its
//! properties), `identify`'s and `group`'s for `{"traits": …}`. Which record is which event is
//! its protocol's to say ([`crate::protocol::Protocol::planned`]). Every schema is compiled
//! once, at start; a plan that does not parse or holds an invalid schema stops the start,
//! naming its file and the schema's path.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ConfigError, StreamList};

/// What a violation does.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The request is refused (400 naming the event and the failing schema path); a batch
    /// with one violating message is refused whole.
    #[default]
    Block,
    /// Stored, with a `violations` field listing what failed.
    Tag,
    /// Stored in the plan's `violations` stream instead of its own.
    Route,
}

/// What an event the plan does not name does.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unplanned {
    /// Stored as usual.
    #[default]
    Allow,
    /// Refused (400), like a violation in `block` mode.
    Block,
    /// Stored in the plan's `violations` stream.
    Route,
}

/// `[plans.sources.NAME]`: a source's tracking plan.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlanConfig {
    /// The plan file (JSON).
    pub file: PathBuf,
    /// What a violation does.
    pub mode: Mode,
    /// What an unplanned event does.
    pub unplanned: Unplanned,
    /// The delivery stream of routed events.
    pub violations: StreamList,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            file: PathBuf::new(),
            mode: Mode::default(),
            unplanned: Unplanned::default(),
            violations: "violations".into(),
        }
    }
}

/// `[plans]`: the tracking plans, by source.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlansConfig {
    /// A source's plan (a source without one sends what it likes).
    pub sources: BTreeMap<String, PlanConfig>,
}

impl PlansConfig {
    /// The streams routed events go to, by config key (only of plans that route).
    pub fn stream_lists(&self) -> Vec<(&'static str, &StreamList)> {
        self.sources
            .values()
            .filter(|p| p.mode == Mode::Route || p.unplanned == Unplanned::Route)
            .map(|p| ("plans.sources.violations", &p.violations))
            .collect()
    }
}

/// What kind of call a record is, for a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event with a name (a Segment track, a PostHog event, a Snowplow self-describing
    /// event by its schema URI, a classic `/track` event).
    Event,
    /// Who the user is (`traits`).
    Identify,
    /// The user's group (`traits`).
    Group,
}

/// A record as a plan sees it: its kind, its name, and the document its schema checks.
pub struct Planned {
    /// The kind.
    pub kind: Kind,
    /// The event's name (for [`Kind::Event`]).
    pub name: String,
    /// `{"properties": …}` or `{"traits": …}`.
    pub document: Value,
}

/// One thing a record breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where in the document (`/properties/total`), as JSON Pointer.
    pub path: String,
    /// Which rule (`/properties/properties/properties/total/type`).
    pub schema_path: String,
    /// What is wrong.
    pub message: String,
}

/// What a plan says of a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As planned, or not a kind the plan covers.
    Fine,
    /// Planned, and it breaks these rules.
    Breaks(Vec<Violation>),
    /// An event the plan does not name.
    Unplanned,
}

/// A compiled plan.
pub struct Plan {
    /// What a violation does.
    pub mode: Mode,
    /// What an unplanned event does.
    pub unplanned: Unplanned,
    /// The stream of routed events.
    pub violations: String,
    events: HashMap<String, jsonschema::Validator>,
    identify: Option<jsonschema::Validator>,
    group: Option<jsonschema::Validator>,
}

impl Plan {
    /// Reads and compiles `config`'s plan; `key` names it in errors.
    pub fn load(key: &str, config: &PlanConfig) -> Result<Plan, ConfigError> {
        let file = config.file.display().to_string();
        let fail = |message: String| ConfigError::invalid(&format!("{key}.file"), message);
        let text =
            std::fs::read_to_string(&config.file).map_err(|e| fail(format!("{file}: {e}")))?;
        let document: Value =
            serde_json::from_str(&text).map_err(|e| fail(format!("{file}: not JSON: {e}")))?;
        let compile = |schema: &Value, at: String| {
            jsonschema::draft202012::new(schema).map_err(|e| {
                fail(format!(
                    "{file}: {at}: invalid schema at {}: {e}",
                    e.schema_path()
                ))
            })
        };
        let rules = document.get("rules").unwrap_or(&document);
        let mut events = HashMap::new();
        for (i, event) in rules
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("/rules/events/{i}");
            let name = event
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| fail(format!("{file}: {at}/name: missing")))?;
            let schema = event.get("rules").cloned().unwrap_or(Value::Bool(true));
            let validator = compile(&schema, format!("{at}/rules"))?;
            if events.insert(name.to_owned(), validator).is_some() {
                return Err(fail(format!("{file}: {at}: {name:?} is planned twice")));
            }
        }
        let identify = match rules.get("identify") {
            Some(schema) => Some(compile(schema, "/rules/identify".to_owned())?),
            None => None,
        };
        let group = match rules.get("group") {
            Some(schema) => Some(compile(schema, "/rules/group".to_owned())?),
            None => None,
        };
        Ok(Plan {
            mode: config.mode,
            unplanned: config.unplanned,
            violations: config.violations.queue().to_owned(),
            events,
            identify,
            group,
        })
    }

    /// The metric label of `planned`'s event: its name if the plan knows it (so labels are
    /// bounded by the plans), else `other`.
    pub fn label<'p>(&self, planned: &'p Planned) -> &'p str {
        match planned.kind {
            Kind::Identify => "identify",
            Kind::Group => "group",
            Kind::Event if self.events.contains_key(&planned.name) => &planned.name,
            Kind::Event => "other",
        }
    }

    /// What the plan says of `planned`.
    pub fn check(&self, planned: &Planned) -> Verdict {
        let validator = match planned.kind {
            Kind::Event => match self.events.get(&planned.name) {
                Some(v) => v,
                None => return Verdict::Unplanned,
            },
            Kind::Identify => match &self.identify {
                Some(v) => v,
                None => return Verdict::Fine,
            },
            Kind::Group => match &self.group {
                Some(v) => v,
                None => return Verdict::Fine,
            },
        };
        let violations: Vec<Violation> = validator
            .iter_errors(&planned.document)
            .map(|e| Violation {
                path: e.instance_path().to_string(),
                schema_path: e.schema_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Verdict::Fine
        } else {
            Verdict::Breaks(violations)
        }
    }
}

/// Every source's plan, compiled.
pub struct Plans {
    sources: HashMap<String, Plan>,
}

impl Plans {
    /// The plans of `config`.
    pub fn new(config: &PlansConfig) -> Result<Plans, ConfigError> {
        let mut sources = HashMap::new();
        for (name, plan) in &config.sources {
            sources.insert(
                name.clone(),
                Plan::load(&format!("plans.sources.{name}"), plan)?,
            );
        }
        Ok(Plans { sources })
    }

    /// The plan of `source`, if it has one.
    pub fn of(&self, source: &str) -> Option<&Plan> {
        self.sources.get(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(document: Value) -> Result<Plan, ConfigError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), document.to_string()).unwrap();
        Plan::load(
            "plans.sources.web",
            &PlanConfig {
                file: file.path().to_owned(),
                ..PlanConfig::default()
            },
        )
    }

    fn event(name: &str, properties: Value) -> Planned {
        Planned {
            kind: Kind::Event,
            name: name.to_owned(),
            document: json!({"properties": properties}),
        }
    }

    #[test]
    fn planned_events_are_checked_and_unplanned_ones_named() {
        let p = plan(
            json!({"rules": {"events": [{"name": "Order Completed", "rules": {
            "type": "object", "properties": {"properties": {"type": "object", "required": ["total"],
            "properties": {"total": {"type": "number"}}}}}}]}}),
        )
        .unwrap();
        assert_eq!(
            p.check(&event("Order Completed", json!({"total": 3}))),
            Verdict::Fine
        );
        let Verdict::Breaks(v) = p.check(&event("Order Completed", json!({"total": "x"}))) else {
            panic!("taken")
        };
        assert_eq!(v[0].path, "/properties/total");
        assert_eq!(
            v[0].schema_path,
            "/properties/properties/properties/total/type"
        );
        assert_eq!(v[0].message, r#""x" is not of type "number""#);
        assert_eq!(p.check(&event("Other", json!({}))), Verdict::Unplanned);
        let identify = Planned {
            kind: Kind::Identify,
            name: String::new(),
            document: json!({"traits": {}}),
        };
        assert_eq!(p.check(&identify), Verdict::Fine, "no identify rules: fine");
    }

    #[test]
    fn an_invalid_plan_names_its_file_and_the_schema_path() {
        let e = plan(json!({"rules": {"events": [{"name": "E", "rules": {"type": "nonsense"}}]}}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("plans.sources.web.file") && e.contains("/rules/events/0/rules"),
            "{e}"
        );
        let e = plan(json!({"rules": {"events": [{"rules": {}}]}}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/rules/events/0/name"), "{e}");
    }
}
