//! Deletion requests (suppression): the list of user identifiers whose events the edge no
//! longer stores, as the service keeps it — the one place that changes it, for the admin API
//! and the `suppress` sub-command alike.
//!
//! Adding an identifier, in order:
//! 1. it is written to the queue's database, flushed, and marked pending;
//! 2. the ingest path's matcher is swapped **behind a gate**: every request holds the gate
//!    (shared) from the moment it is matched until its append is durable, and the swap takes
//!    it whole, so once it is done no request matched against the old list is still to be
//!    written;
//! 3. the queue is walked and the identifier's queued and dead-lettered events erased (see
//!    the queue's `erase.rs`), then it is marked erased. A crash before that leaves it
//!    pending, and [`Suppressions::open`] walks again before the flushers start.
//!
//! Events of a suppressed identifier are answered as accepted (an SDK that got a 4xx would
//! drop the user's other events, one that got a 5xx would retry forever) and counted in
//! `firehose_edge_events_suppressed_total`.

use std::sync::Arc;

use crate::config::Config;
use crate::policy::Policies;
use crate::policy::suppress::{Matcher, check_id};
use crate::protocol::{Records, Table};
use crate::queue::{Erased, Eraser, Queue, QueueError, Suppressed};

/// Identifiers one change may name.
pub const MAX_IDS_PER_CHANGE: usize = 10_000;

/// What adding identifiers did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Added {
    /// Identifiers that were not listed before.
    pub added: u64,
    /// What left the queue.
    pub erased: Erased,
}

/// Why a change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The identifiers given are not acceptable (400).
    #[error("{0}")]
    Invalid(String),
    /// The queue could not record it (503); nothing was erased unless it says so.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The suppression list of a running queue.
pub struct Suppressions {
    queue: Queue,
    /// Where every enabled protocol's records name their user.
    fields: Vec<&'static str>,
    /// What ingest matches against (swapped whole).
    matcher: parking_lot::RwLock<Arc<Matcher>>,
    /// Whose hash keys write the hashed forms of an identifier.
    policies: parking_lot::RwLock<Arc<Policies>>,
    /// Held shared by each request from its match until its append is durable (see above).
    gate: tokio::sync::RwLock<()>,
    /// One change at a time.
    changes: tokio::sync::Mutex<()>,
}

impl Suppressions {
    /// The list of `queue`, with the erasures a crash left pending finished (call it before
    /// anything delivers).
    pub fn open(
        queue: Queue,
        config: &Config,
        policies: Arc<Policies>,
    ) -> Result<Suppressions, QueueError> {
        let suppressions = Suppressions {
            queue,
            fields: Table::new(config).identity_fields(),
            matcher: parking_lot::RwLock::new(Arc::new(Matcher::empty())),
            policies: parking_lot::RwLock::new(policies),
            gate: tokio::sync::RwLock::new(()),
            changes: tokio::sync::Mutex::new(()),
        };
        let listed = suppressions.queue.suppressed()?;
        let matcher = suppressions.publish(&listed);
        let pending: Vec<String> = listed
            .into_iter()
            .filter(|s| s.pending)
            .map(|s| s.id)
            .collect();
        if !pending.is_empty() {
            let erased = suppressions.queue.erase(suppressions.eraser(matcher))?;
            suppressions.queue.erased(&pending)?;
            tracing::info!(
                identifiers = pending.len(),
                erased_queued = erased.queued,
                erased_dead_letters = erased.dead_letters,
                "finished the erasure of deletion requests a stop interrupted"
            );
        }
        Ok(suppressions)
    }

    /// The gate a request holds from its match until its append is durable.
    pub async fn admit(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// `records` without the events of suppressed users (counted for `source`).
    pub fn filter(&self, records: Records, source: &str, fields: &[&str]) -> Records {
        let matcher = self.matcher.read().clone();
        if matcher.is_empty() {
            return records;
        }
        let name = match &records {
            Records::Messages { source, .. } => source.clone(),
            _ => source.to_owned(),
        };
        let (records, gone) = matcher.filter(records, fields);
        if gone > 0 {
            crate::metrics::events_suppressed(&name, gone);
        }
        records
    }

    /// Every listed identifier.
    pub fn list(&self) -> Result<Vec<Suppressed>, QueueError> {
        self.queue.suppressed()
    }

    /// Adds `ids`, and erases their events still queued.
    pub async fn add(&self, ids: Vec<String>) -> Result<Added, ChangeError> {
        check(&ids)?;
        let _one = self.changes.lock().await;
        let queue = self.queue.clone();
        let (added, listed) = blocking(move || {
            let added = queue.suppress(&ids)?;
            Ok((added, queue.suppressed()?))
        })
        .await?;
        let matcher = {
            let _closed = self.gate.write().await;
            self.publish(&listed)
        };
        let queue = self.queue.clone();
        let eraser = self.eraser(matcher);
        let erased = blocking(move || {
            let erased = queue.erase(eraser)?;
            // Lines left to a recheck are in memory only: until a walk finds none, a start
            // walks again (a crash would forget them).
            if erased.in_flight == 0 {
                let pending: Vec<String> = queue
                    .suppressed()?
                    .into_iter()
                    .filter(|s| s.pending)
                    .map(|s| s.id)
                    .collect();
                queue.erased(&pending)?;
            }
            Ok(erased)
        })
        .await?;
        tracing::info!(
            added,
            erased_queued = erased.queued,
            erased_dead_letters = erased.dead_letters,
            in_flight = erased.in_flight,
            "deletion request: identifiers suppressed"
        );
        Ok(Added { added, erased })
    }

    /// Removes `ids` from the list (their later events are stored again); returns how many
    /// were listed.
    pub async fn remove(&self, ids: Vec<String>) -> Result<u64, ChangeError> {
        check(&ids)?;
        let _one = self.changes.lock().await;
        let queue = self.queue.clone();
        let (removed, listed) = blocking(move || {
            let removed = queue.unsuppress(&ids)?;
            Ok((removed, queue.suppressed()?))
        })
        .await?;
        let matcher = self.publish(&listed);
        self.queue.set_eraser(Some(self.eraser(matcher)));
        tracing::info!(removed, "identifiers no longer suppressed");
        Ok(removed)
    }

    /// New policies (SIGHUP): a rotated hash key writes other hashed forms.
    pub fn set_policies(&self, policies: Arc<Policies>) {
        *self.policies.write() = policies;
        if let Ok(listed) = self.queue.suppressed() {
            let matcher = self.publish(&listed);
            self.queue.set_eraser(Some(self.eraser(matcher)));
        }
    }

    /// Makes `listed` what ingest matches against, and returns its matcher.
    fn publish(&self, listed: &[Suppressed]) -> Arc<Matcher> {
        let policies = self.policies.read().clone();
        let ids = listed.iter().map(|s| s.id.as_str());
        let matcher = Arc::new(Matcher::new(ids, Some(policies.privacy()), &self.fields));
        *self.matcher.write() = matcher.clone();
        matcher
    }

    fn eraser(&self, matcher: Arc<Matcher>) -> Eraser {
        let fields = self.fields.clone();
        Arc::new(move |line: &[u8]| matcher.matches(line, &fields))
    }
}

/// Refuses an empty, oversized or invalid list of identifiers.
fn check(ids: &[String]) -> Result<(), ChangeError> {
    if ids.is_empty() {
        return Err(ChangeError::Invalid("no identifiers given".to_owned()));
    }
    if ids.len() > MAX_IDS_PER_CHANGE {
        return Err(ChangeError::Invalid(format!(
            "{} identifiers in one change (at most {MAX_IDS_PER_CHANGE})",
            ids.len()
        )));
    }
    for (i, id) in ids.iter().enumerate() {
        check_id(id).map_err(|why| ChangeError::Invalid(format!("ids[{i}]: {why}")))?;
    }
    Ok(())
}

/// Runs queue work that walks or flushes off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(QueueError::Storage(format!("the erasure stopped: {e}"))))
}
