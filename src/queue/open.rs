//! Start-up: lock the directory, open sled (moving a damaged database aside, never deleting
//! it), count what every stream holds, and compare with the manifest, so that a queue that
//! comes back shorter than what was acknowledged is reported — how many events, which stream.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Mutex, RwLock};

use super::admission::{Admission, FreeSpace};
use super::commit::GroupCommit;
use super::ledger::{self, Books, Ledger, RECORD_KEY, Which};
use super::lock::DirLock;
use super::manifest::{self, Counts};
use super::store::{OpenError, Store, Tally};
use super::{Inner, Queue, QueueError};
use crate::config::{Durability, QueueConfig};

/// What [`Queue::verify`] found in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// The stream.
    pub stream: String,
    /// Events in its queue tree.
    pub queued: u64,
    /// Events in its dead-letter tree.
    pub dead_letters: u64,
    /// Events the manifest says it must hold (`None` without a readable manifest).
    pub expected: Option<u64>,
    /// Events missing against the manifest.
    pub missing: u64,
    /// Values whose header or checksum is bad.
    pub damaged_entries: u64,
    /// Values kept in the damaged tree (from earlier opens).
    pub quarantined: u64,
    /// Whether the trees' records (with their last entries) tell what the walk counted:
    /// "ok", "missing" (a queue written before records existed; the next start writes them)
    /// or "disagrees" (the store changed behind the queue's back; the next start trusts the
    /// records, and the difference is reported when the stream drains).
    pub summary: &'static str,
}

/// What [`Queue::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per stream.
    pub streams: Vec<StreamReport>,
    /// The manifest: "ok", "missing" or "damaged".
    pub manifest: &'static str,
}

impl VerifyReport {
    /// Whether anything is wrong: missing events, damaged values, or a damaged manifest.
    pub fn damaged(&self) -> bool {
        self.manifest == "damaged"
            || self
                .streams
                .iter()
                .any(|s| s.missing > 0 || s.damaged_entries > 0 || s.summary == "disagrees")
    }
}

/// See [`Queue::open_with`].
pub(super) fn open(
    config: &QueueConfig,
    streams: &[String],
    free_space: Box<dyn FreeSpace>,
) -> Result<Queue, QueueError> {
    let mut lock = DirLock::acquire(&config.path)?;
    let mut manifest_read = read_manifest(&config.path);
    let loaded = match load(config, streams) {
        Ok(loaded) => loaded,
        Err(OpenError::Other(e)) => return Err(e),
        Err(OpenError::Damaged(why)) => {
            let aside = move_aside(&config.path, &why, &manifest_read, lock)?;
            lock = DirLock::acquire(&config.path)?;
            tracing::error!(moved_to = %aside.display(), "started a fresh queue; the old one is kept for recovery");
            manifest_read = manifest::Read::Missing;
            load(config, streams).map_err(|e| match e {
                OpenError::Damaged(why) => QueueError::Storage(why),
                OpenError::Other(e) => e,
            })?
        }
    };
    let store = loaded.store;
    let expected = match manifest_read {
        manifest::Read::Found(m) => Some(m),
        manifest::Read::Missing => None,
        manifest::Read::Damaged => {
            tracing::error!(path = %config.path.display(), "the queue's manifest is damaged: losses cannot be checked at this start; it is rewritten now");
            None
        }
    };
    let mut ledgers = HashMap::new();
    let mut queued_bytes = 0;
    for (name, mut books, damaged_entries) in loaded.books {
        let found = books.q.events() + books.dead.events();
        let counts = reconcile(
            &name,
            found,
            damaged_entries,
            expected.as_ref(),
            books.q.delivered,
        );
        (books.acked, books.q.delivered, books.lost) =
            (counts.acked, counts.delivered, counts.lost);
        queued_bytes += books.q.bytes();
        ledgers.insert(name, Ledger::new(books));
    }
    tracing::info!(
        entries_read = loaded.read,
        "queue opened: counts read from each tree's record and last entry"
    );
    warn_about_unconfigured_streams(&store.db, streams);
    let manifest = manifest::Writer::open(&config.path)?;
    let dedup = super::dedup::Dedup::load(
        &store.dedup,
        config.dedup_window_secs.saturating_mul(1000),
        config.dedup_max_ids,
        super::now_ms(),
    )?;
    // Both modes write through the committer, which coalesces concurrent requests into
    // few sled values; only `fsync` waits for a flush before answering.
    let commit = Arc::new(GroupCommit::new(config.durability == Durability::Fsync));
    // What is on disk at the start is settled.
    commit
        .settled_below
        .store(loaded.highest, std::sync::atomic::Ordering::Release);
    let inner = Arc::new(Inner {
        config: config.clone(),
        store: RwLock::new(Some(Arc::new(store))),
        streams: ledgers,
        next_key: AtomicU64::new(loaded.highest),
        read_at_open: loaded.read,
        admission: Admission::new(config.max_bytes, config.min_free_bytes, queued_bytes),
        commit,
        health: Default::default(),
        compactor: Default::default(),
        closed: AtomicBool::new(false),
        refused: Mutex::default(),
        dedup,
        manifest: Mutex::new(manifest),
        fatal: Default::default(),
        free_space,
        _lock: lock,
        eraser: RwLock::new(None),
        fail_writes: AtomicBool::new(false),
        fail_syncs: AtomicBool::new(false),
    });
    let queue = Queue { inner };
    // The new baseline is on disk before anything is acknowledged against it.
    queue.write_manifest()?;
    super::health::round(&queue);
    queue.inner.commit.spawn(Arc::downgrade(&queue.inner))?;
    queue.inner.health.spawn(Arc::downgrade(&queue.inner))?;
    queue.inner.compactor.spawn(Arc::downgrade(&queue.inner))?;
    Ok(queue)
}

/// An opened and counted store.
struct Loaded {
    store: Store,
    /// Per stream: its books (the manifest's counts not yet set) and how many damaged
    /// entries a walk found.
    books: Vec<(String, Books, u64)>,
    /// One past the highest key of any tree: a key is never reused.
    highest: u64,
    /// Entries read to count them (a few per tree when every record was there).
    read: u64,
}

/// Opens sled and reads every stream's books from its trees (see [`books_of`]), walking only
/// a tree without a usable record (a queue written before records existed, or damage). sled can also panic or fail while its trees are read (a damaged
/// page), so the whole of it counts as opening: a panic or an error here is damage, and the
/// directory is moved aside instead of crash-looping.
fn load(config: &QueueConfig, streams: &[String]) -> Result<Loaded, OpenError> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let store = Store::open_released(config, streams)?;
        let damaged = |e: QueueError| OpenError::Damaged(e.to_string());
        let mut books = Vec::new();
        let mut read = 0;
        let mut highest = highest_key(&store.db).map_err(damaged)?;
        for name in streams {
            let (b, damaged_entries) =
                books_of(&store, name, &mut read, &mut highest).map_err(damaged)?;
            books.push((name.clone(), b, damaged_entries));
        }
        Ok(Loaded {
            store,
            books,
            highest,
            read,
        })
    }));
    attempt.unwrap_or_else(|panic| {
        Err(OpenError::Damaged(format!(
            "sled panicked while reading the queue: {}",
            super::store::panic_message(&*panic)
        )))
    })
}

/// A stream's books as its trees tell them (see [`ledger::recover`]): a record and a last
/// entry per tree, walking only a tree without a usable record (a queue written before
/// records existed, or damage), which then gets one. The manifest's counts are left at 0.
/// Returns them and how many damaged entries a walk found; entries read are added to `read`
/// and a walk's highest key to `highest`.
pub(super) fn books_of(
    store: &Store,
    stream: &str,
    read: &mut u64,
    highest: &mut u64,
) -> Result<(Books, u64), QueueError> {
    let trees = store.trees(stream)?;
    let legacy_delivered = store.delivered(stream)?;
    let q = ledger::recover(trees, Which::Queue, read, true)?;
    let dead = ledger::recover(trees, Which::Dead, read, true)?;
    let (mut books, damaged_entries) = match (q, dead) {
        (Some(q), Some(dead)) => (
            Books {
                q,
                dead,
                ..Books::default()
            },
            0,
        ),
        _ => {
            tracing::warn!(%stream, "a queue tree has no usable record: counting its entries");
            let tally = store.count(stream, true)?;
            *read += tally.read;
            *highest = (*highest).max(tally.next_key);
            let q = Tally::flow(tally.q, tally.q_top, legacy_delivered);
            let dead = Tally::flow(tally.dead, tally.dead_top, 0);
            ledger::rebase(trees, Which::Queue, q)?;
            ledger::rebase(trees, Which::Dead, dead)?;
            let books = Books {
                q,
                dead,
                ..Books::default()
            };
            (books, tally.damaged_entries)
        }
    };
    books.damaged = store.count_damaged(stream)?;
    books.q.delivered = books.q.delivered.max(legacy_delivered);
    // A tree that never had anything taken out has no record yet: it gets one now, so that
    // what is added to it from here on is counted from its stamps at the next start.
    for which in [Which::Queue, Which::Dead] {
        if ledger::stated(trees, which)?.is_none() {
            ledger::rebase(trees, which, *books.flow(which))?;
        }
    }
    Ok((books, damaged_entries))
}

/// Compares what a stream holds with what the manifest says it must, reports a shortfall,
/// and returns the counts to continue from.
fn reconcile(
    stream: &str,
    found: u64,
    damaged_entries: u64,
    manifest: Option<&BTreeMap<String, Counts>>,
    delivered_in_sled: u64,
) -> Counts {
    let Some(m) = manifest.map(|m| m.get(stream).copied().unwrap_or_default()) else {
        // No manifest (a new queue, or one from before manifests): accounting starts now.
        return Counts {
            acked: delivered_in_sled + found,
            delivered: delivered_in_sled,
            lost: 0,
        };
    };
    let delivered = m.delivered.max(delivered_in_sled);
    let expected = Counts { delivered, ..m }.expected();
    let missing = expected.saturating_sub(found);
    if missing > 0 {
        tracing::error!(
            %stream,
            missing_events = missing,
            expected_events = expected,
            found_events = found,
            damaged_entries,
            "the queue holds fewer events than were acknowledged: {missing} acknowledged events of {stream} are missing"
        );
        crate::metrics::queue_lost_events(stream, missing);
    }
    let lost = m.lost + missing;
    // More than expected (removals lost with a crash come back): those are re-deliveries,
    // not losses; the baseline follows what is there.
    Counts {
        acked: delivered + lost + found,
        delivered,
        lost,
    }
}

fn read_manifest(path: &Path) -> manifest::Read {
    manifest::read(path).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read the queue's manifest");
        manifest::Read::Damaged
    })
}

/// Moves a damaged queue directory aside (never deletes it), loudly, and reports what the
/// manifest says it held as lost to this process.
fn move_aside(
    path: &Path,
    why: &str,
    manifest: &manifest::Read,
    lock: DirLock,
) -> Result<PathBuf, QueueError> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|e| QueueError::Io {
        path: path.to_path_buf(),
        message: format!("cannot move the damaged queue aside: {e}"),
    })?;
    // Held until the directory is renamed, so no other process opens it meanwhile.
    drop(lock);
    tracing::error!(
        error = %why,
        moved_to = %aside.display(),
        "the queue's database is damaged and would not open: moved it aside (kept for recovery, not deleted)"
    );
    crate::metrics::queue_moved_aside();
    if let manifest::Read::Found(m) = manifest {
        for (stream, counts) in m {
            let held = counts.expected();
            if held > 0 {
                tracing::error!(%stream, events = held, moved_to = %aside.display(), "acknowledged events left in the moved-aside queue will not be delivered by this process");
                crate::metrics::queue_lost_events(stream, held);
            }
        }
    }
    Ok(aside)
}

/// See [`Queue::verify`]: the same checks as a start, writing nothing. A panic inside sled
/// is reported as damage, never passed on.
pub(super) fn verify(config: &QueueConfig, streams: &[String]) -> Result<VerifyReport, QueueError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        verify_inner(config, streams)
    }))
    .unwrap_or_else(|panic| {
        Err(QueueError::Storage(format!(
            "sled panicked while reading the queue: {}",
            super::store::panic_message(&*panic)
        )))
    })
}

fn verify_inner(config: &QueueConfig, streams: &[String]) -> Result<VerifyReport, QueueError> {
    let _lock = DirLock::acquire(&config.path)?;
    let manifest_read = read_manifest(&config.path);
    let store = Store::open_released(config, streams).map_err(|e| match e {
        OpenError::Damaged(why) => QueueError::Storage(format!("sled will not open: {why}")),
        OpenError::Other(e) => e,
    })?;
    let expected = match &manifest_read {
        manifest::Read::Found(m) => Some(m),
        _ => None,
    };
    let mut out = Vec::new();
    for name in streams {
        let tally = store.count(name, false)?;
        let expected = expected.map(|m| {
            let c = m.get(name).copied().unwrap_or_default();
            Counts {
                delivered: c.delivered.max(store.delivered(name).unwrap_or(0)),
                ..c
            }
            .expected()
        });
        let found = tally.q.events + tally.dead.events;
        let trees = store.trees(name)?;
        let mut summary = "ok";
        for (which, walked) in [(Which::Queue, tally.q), (Which::Dead, tally.dead)] {
            let mut read = 0;
            let told = match ledger::stated(trees, which)? {
                Some(_) => ledger::recover(trees, which, &mut read, false)?,
                None => None,
            };
            summary = match (told, summary) {
                (_, "disagrees") => "disagrees",
                (Some(f), _) if (f.events(), f.bytes()) != (walked.events, walked.bytes) => {
                    "disagrees"
                }
                (None, _) if walked.events > 0 => "missing",
                (_, earlier) => earlier,
            };
        }
        out.push(StreamReport {
            stream: name.clone(),
            queued: tally.q.events,
            dead_letters: tally.dead.events,
            summary,
            expected,
            missing: expected.map_or(0, |e| e.saturating_sub(found)),
            damaged_entries: tally.damaged_entries,
            quarantined: tally.damaged.values,
        });
    }
    Ok(VerifyReport {
        streams: out,
        manifest: match manifest_read {
            manifest::Read::Found(_) => "ok",
            manifest::Read::Missing => "missing",
            manifest::Read::Damaged => "damaged",
        },
    })
}

/// The highest key of any queue, dead-letter or damaged tree.
fn highest_key(db: &sled::Db) -> Result<u64, QueueError> {
    let mut next = 0;
    for name in db.tree_names() {
        if [&b"q/"[..], b"dead/", b"damaged/"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            let tree = db.open_tree(&name)?;
            if let Some((k, _)) = tree.range(..RECORD_KEY).next_back().transpose()?
                && let Ok(key) = super::entry::key_of(&k)
            {
                next = next.max(key + 1);
            }
        }
    }
    Ok(next)
}

/// Queue trees of streams no longer configured are not drained: say so loudly.
fn warn_about_unconfigured_streams(db: &sled::Db, streams: &[String]) {
    for name in db.tree_names() {
        let Some(stream) = name.strip_prefix(b"q/") else {
            continue;
        };
        let stream = String::from_utf8_lossy(stream);
        let has_records = db.open_tree(&name).is_ok_and(|t| !t.is_empty());
        if has_records && !streams.iter().any(|s| *s == stream) {
            tracing::warn!(%stream, "the queue holds records of a stream that is not configured; they are kept but not delivered");
        }
    }
}
