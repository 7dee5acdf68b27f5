//! Policies: what the edge does to a request's records after its protocol encoded them and
//! before they are queued, the same for every protocol. [`privacy`] removes, truncates or
//! hashes personal data per source.

pub mod privacy;

use crate::config::{Config, ConfigError};
use crate::ingest::IngestError;
use crate::protocol::Records;
use privacy::{Personal, Privacy};

/// Every policy of the configuration, ready to apply.
pub struct Policies {
    privacy: Privacy,
}

impl Policies {
    /// The policies of `config` (their keys read; an invalid one refused, naming its key).
    pub fn new(config: &Config) -> Result<Policies, ConfigError> {
        Ok(Policies {
            privacy: Privacy::new(&config.privacy)?,
        })
    }

    /// `records` with the policies of their source applied. `source` is the request's, for
    /// records that do not name theirs; `personal` is where the protocol keeps addresses and
    /// user agents. Untouched (and not read again) when no policy applies.
    pub fn apply(
        &self,
        records: Records,
        source: &str,
        personal: &Personal,
    ) -> Result<Records, IngestError> {
        let too_large = |i: usize, bytes: usize| {
            IngestError::ProtocolTooLarge(format!(
                "event {i} encodes, with its privacy policy applied, to a record of {bytes} bytes, \
                 over Firehose's {}-byte record limit",
                crate::config::FIREHOSE_MAX_RECORD_BYTES
            ))
        };
        Ok(match records {
            Records::None => Records::None,
            Records::Lines {
                stream,
                ndjson,
                count,
            } => match self.privacy.of(source) {
                None => Records::Lines {
                    stream,
                    ndjson,
                    count,
                },
                Some(policy) => {
                    let mut out = Vec::with_capacity(ndjson.len());
                    for (i, line) in ndjson.split_inclusive(|&b| b == b'\n').enumerate() {
                        out.extend(policy.apply(line, personal).map_err(|n| too_large(i, n))?);
                    }
                    Records::Lines {
                        stream,
                        ndjson: out,
                        count,
                    }
                }
            },
            Records::Messages {
                source,
                ids,
                mut lines,
            } => {
                if let Some(policy) = self.privacy.of(&source) {
                    for (i, line) in lines.iter_mut().enumerate() {
                        line.line = policy
                            .apply(&line.line, personal)
                            .map_err(|n| too_large(i, n))?;
                    }
                }
                Records::Messages { source, ids, lines }
            }
        })
    }
}
