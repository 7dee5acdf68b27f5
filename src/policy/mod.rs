//! Policies: what the edge does to a request's records after its protocol encoded them and
//! before they are queued, the same for every protocol. [`plan`] checks them against their
//! source's tracking plan (refusing, tagging or routing what breaks it); [`privacy`] then
//! removes, truncates or hashes personal data, so the plan sees the values as sent and the
//! disk never does. A source with neither costs nothing: its records are not read again.

pub mod plan;
pub mod privacy;
pub mod suppress;

use serde_json::Value;

use crate::config::{Config, ConfigError, FIREHOSE_MAX_RECORD_BYTES};
use crate::ingest::IngestError;
use crate::protocol::Records;
use crate::protocol::classic::FieldError;
use crate::queue::BatchLine;
use plan::{Mode, Plan, Planned, Plans, Unplanned, Verdict};
use privacy::{Policy, Privacy};

/// What the policies need to know of a protocol's records.
pub struct Shape {
    /// Where the client's address is (the server's, or one the client sent).
    pub ip: &'static [&'static str],
    /// Where the user agent is.
    pub user_agent: &'static [&'static str],
    /// What a tracking plan checks of a record (`None`: nothing, it is not planned).
    pub planned: fn(&Value) -> Option<Planned>,
    /// Where a record names its user (what a deletion request matches, see [`suppress`]).
    pub ids: &'static [&'static str],
}

/// The field a tagged record lists its plan violations in.
pub const VIOLATIONS_FIELD: &str = "violations";

/// Every policy of the configuration, ready to apply.
pub struct Policies {
    privacy: Privacy,
    plans: Plans,
}

impl Policies {
    /// The policies of `config` (keys read, plans compiled; an invalid one refused, naming its
    /// key, file and schema path).
    pub fn new(config: &Config) -> Result<Policies, ConfigError> {
        Ok(Policies {
            privacy: Privacy::new(&config.privacy)?,
            plans: Plans::new(&config.plans)?,
        })
    }

    /// The privacy policies (their hash keys write a deletion request's hashed forms).
    pub fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    /// `records` with the policies of their source applied. `source` is the request's, for
    /// records that do not name theirs. Untouched when no policy applies to the source.
    pub fn apply(
        &self,
        records: Records,
        source: &str,
        shape: &Shape,
    ) -> Result<Records, IngestError> {
        let name = match &records {
            Records::Messages { source, .. } => source.as_str(),
            _ => source,
        };
        let (plan, privacy) = (self.plans.of(name), self.privacy.of(name));
        if plan.is_none() && privacy.is_none() {
            // The request path of a source without policies: nothing read, nothing copied.
            return Ok(records);
        }
        let source = name.to_owned();
        let stage = Stage {
            source: &source,
            plan,
            privacy,
            shape,
        };
        match records {
            Records::None => Ok(Records::None),
            Records::Lines {
                stream,
                ndjson,
                count,
            } => {
                let mut lines = Vec::with_capacity(count as usize);
                for (i, line) in ndjson.split_inclusive(|&b| b == b'\n').enumerate() {
                    let (line, routed) = stage.line(i, line)?;
                    lines.push(BatchLine {
                        stream: routed.unwrap_or(&stream).to_owned(),
                        line,
                        message_id: None,
                    });
                }
                // One stream, as it came: the lines again as one.
                if lines.iter().all(|l| l.stream == stream) {
                    let ndjson = lines.into_iter().flat_map(|l| l.line).collect();
                    return Ok(Records::Lines {
                        stream,
                        ndjson,
                        count,
                    });
                }
                Ok(Records::Messages {
                    source,
                    ids: "",
                    lines,
                })
            }
            Records::Messages {
                source,
                ids,
                mut lines,
            } => {
                for (i, line) in lines.iter_mut().enumerate() {
                    let (new, routed) = stage.line(i, &line.line)?;
                    line.line = new;
                    if let Some(stream) = routed {
                        line.stream = stream.to_owned();
                    }
                }
                Ok(Records::Messages { source, ids, lines })
            }
        }
    }
}

/// The policies of one request's source.
struct Stage<'a> {
    source: &'a str,
    plan: Option<&'a Plan>,
    privacy: Option<&'a Policy>,
    shape: &'a Shape,
}

impl<'a> Stage<'a> {
    /// The `i`-th record with the policies applied, and the stream it is routed to, if not
    /// its own.
    fn line(&self, i: usize, line: &[u8]) -> Result<(Vec<u8>, Option<&'a str>), IngestError> {
        let mut record: Value =
            serde_json::from_slice(line).expect("a protocol writes JSON records");
        let mut routed = None;
        if let Some(plan) = self.plan
            && let Some(planned) = (self.shape.planned)(&record)
        {
            let verdict = plan.check(&planned);
            let name = &planned.name;
            let outcome = match (&verdict, plan.mode, plan.unplanned) {
                (Verdict::Fine, ..) => "as_planned",
                (Verdict::Unplanned, _, Unplanned::Allow) => "unplanned_allowed",
                (Verdict::Unplanned, _, Unplanned::Block) => "unplanned_blocked",
                (Verdict::Unplanned, _, Unplanned::Route) => "unplanned_routed",
                (Verdict::Breaks(_), Mode::Block, _) => "blocked",
                (Verdict::Breaks(_), Mode::Tag, _) => "tagged",
                (Verdict::Breaks(_), Mode::Route, _) => "routed",
            };
            crate::metrics::plan_event(self.source, plan.label(&planned), outcome);
            match (verdict, plan.mode, plan.unplanned) {
                (Verdict::Fine, ..) | (Verdict::Unplanned, _, Unplanned::Allow) => {}
                (Verdict::Unplanned, _, Unplanned::Block) => {
                    return Err(invalid(
                        format!("events[{i}]"),
                        format!("{name:?} is not in the source's tracking plan"),
                    ));
                }
                (Verdict::Unplanned, _, Unplanned::Route) => {
                    routed = Some(plan.violations.as_str())
                }
                (Verdict::Breaks(violations), Mode::Block, _) => {
                    return Err(IngestError::Invalid(
                        violations
                            .iter()
                            .map(|v| FieldError {
                                path: format!("events[{i}]{}", v.path),
                                reason: format!(
                                    "{name:?} breaks the tracking plan at {}: {}",
                                    v.schema_path, v.message
                                ),
                            })
                            .collect(),
                    ));
                }
                (Verdict::Breaks(violations), Mode::Tag, _) => {
                    if let Some(object) = record.as_object_mut() {
                        object.insert(
                            VIOLATIONS_FIELD.to_owned(),
                            serde_json::to_value(violations).expect("violations serialize"),
                        );
                    }
                }
                (Verdict::Breaks(_), Mode::Route, _) => routed = Some(plan.violations.as_str()),
            }
        }
        if let Some(policy) = self.privacy {
            policy.apply_to(&mut record, self.shape);
        }
        let mut out = serde_json::to_vec(&record).expect("a value serializes");
        out.push(b'\n');
        if out.len() > FIREHOSE_MAX_RECORD_BYTES {
            return Err(IngestError::ProtocolTooLarge(format!(
                "event {i} encodes, with its source's policies applied, to a record of {} \
                 bytes, over Firehose's {FIREHOSE_MAX_RECORD_BYTES}-byte record limit",
                out.len()
            )));
        }
        Ok((out, routed))
    }
}

fn invalid(path: String, reason: String) -> IngestError {
    IngestError::Invalid(vec![FieldError { path, reason }])
}
