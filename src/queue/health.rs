//! The health round, run by a background thread about twice a second (and on demand): reads
//! the free space of the queue's file system, rewrites the manifest, and recovers failed
//! storage — first by probing whether sled writes again, else by re-opening sled inside the
//! running process (after an I/O error sled 0.34 refuses every later operation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::background::Background;
use std::time::Duration;

use super::ledger::Books;
use super::store::{OpenError, RELEASE_WAIT, Store};
use super::{Inner, Queue, QueueError};

/// Period of the background round.
const PERIOD: Duration = Duration::from_millis(500);

/// sled 0.34 writes its page-table snapshot only when it opens, so an open replays every log
/// write since the last one: after this many bytes written through one sled handle the
/// round re-opens sled in the running process (appends and deliveries wait meanwhile, they
/// are not refused), which bounds what a start after a crash replays, whatever the backlog.
pub(super) const RENEW_AFTER_BYTES: u64 = 512 << 20;
/// sled 0.34 also keeps every page a reader touched, whatever its `cache_capacity` (a drain
/// of 10 M queued events held ~780 MiB that way): after this many bytes of entries read
/// through one handle, the round re-opens sled too, which lets all of it go. (Each re-open
/// costs an open, which grows with the pages sled keeps for a drained head: 50 ms to 4 s
/// over a drain of 50 M events; so not more often.)
pub(super) const RENEW_AFTER_READ_BYTES: u64 = 256 << 20;

/// The health round's name in failure reports and metrics.
pub(super) const COMPONENT: &str = "health";

/// The background thread's handle and signals.
pub(super) struct Health {
    thread: Background,
    /// Tests: panic in the next background round.
    #[cfg(test)]
    pub panic_next: std::sync::atomic::AtomicBool,
    /// One round at a time (the background one and [`super::Queue::check_health_now`]):
    /// two re-opens racing would each find sled held by the other.
    round: Mutex<()>,
    /// [`RENEW_AFTER_BYTES`] and [`RENEW_AFTER_READ_BYTES`] (tests set less).
    pub renew_after: AtomicU64,
    pub renew_after_read: AtomicU64,
    /// Renewals done.
    pub renewals: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            thread: Background::default(),
            #[cfg(test)]
            panic_next: std::sync::atomic::AtomicBool::new(false),
            round: Mutex::new(()),
            renew_after: AtomicU64::new(RENEW_AFTER_BYTES),
            renew_after_read: AtomicU64::new(RENEW_AFTER_READ_BYTES),
            renewals: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Starts the thread. Between rounds it holds the queue only weakly, so dropping the
    /// queue stops it.
    pub fn spawn(self: &Arc<Self>, queue: Weak<Inner>) -> std::io::Result<()> {
        let health = self.clone();
        self.thread.spawn("queue-health", move || {
            while !health.thread.stopping() {
                let Some(inner) = queue.upgrade() else {
                    return;
                };
                let queue = Queue { inner };
                // A round that panics is not retried: the free-space readings, the
                // manifest and recovery stop with it, so the process must stop too.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    #[cfg(test)]
                    if health.panic_next.swap(false, Ordering::AcqRel) {
                        panic!("injected health round panic");
                    }
                    round(&queue)
                }));
                if let Err(panic) = result {
                    let why = super::store::panic_message(&*panic);
                    queue.inner.fatal.report(COMPONENT, why);
                    return;
                }
                drop(queue);
                health.thread.wait(PERIOD);
            }
        })
    }

    /// Wakes the round if `store` has written or read enough to be re-opened (called by the
    /// writers and readers, so that the re-open follows at once, not up to a period later).
    pub fn renew_if_due(&self, store: &Store) {
        if self.renewal_due(store) {
            self.wake();
        }
    }

    fn renewal_due(&self, store: &Store) -> bool {
        store.log_bytes.load(Ordering::Relaxed) >= self.renew_after.load(Ordering::Relaxed)
            || store.read_bytes.load(Ordering::Relaxed)
                >= self.renew_after_read.load(Ordering::Relaxed)
    }

    /// Runs a round soon (after a storage error).
    pub fn wake(&self) {
        self.thread.wake();
    }

    pub fn stop(&self) {
        self.thread.stop();
    }
}

/// One round: free space, recovery, manifest.
pub(super) fn round(q: &Queue) {
    let inner = &q.inner;
    let _one_at_a_time = inner.health.round.lock();
    match inner.free_space.free_bytes(&inner.config.path) {
        Ok(free) => match inner.admission.observe_free(free) {
            Some(true) => tracing::error!(
                free,
                floor = inner.admission.min_free(),
                "queue disk below its free-space floor: answering 503 until space returns"
            ),
            Some(false) => tracing::info!(free, "queue disk has room again: accepting"),
            None => {}
        },
        Err(e) => tracing::warn!(error = %e, "cannot read the queue disk's free space"),
    }
    if inner.admission.is_failing() && !inner.admission.is_low_disk() {
        match recover(q) {
            Ok(()) => {
                if inner.admission.set_failing(false) {
                    tracing::info!("queue storage works again: accepting and delivering");
                }
            }
            Err(e) => tracing::debug!(error = %e, "queue storage still failing"),
        }
    }
    if !inner.admission.is_failing()
        && let Err(e) = q.write_manifest()
    {
        q.storage_failed("manifest write", &e);
    }
    let due = (inner.store.read().as_ref()).is_some_and(|s| inner.health.renewal_due(s));
    if !inner.admission.is_failing()
        && due
        && let Err(e) = renew(q)
    {
        q.storage_failed("sled re-open", &e);
    }
}

/// Re-opens a working sled so that it writes a fresh snapshot (see [`RENEW_AFTER_BYTES`]).
/// The store's write lock is held throughout: appends queue up in the committer and
/// deliveries wait, for the time of one flush and one open (measured in the README).
fn renew(q: &Queue) -> Result<(), QueueError> {
    let started = std::time::Instant::now();
    let mut slot = q.inner.store.write();
    let Some(old) = slot.take() else {
        return Ok(());
    };
    let written = old.log_bytes.load(Ordering::Relaxed);
    let read = old.read_bytes.load(Ordering::Relaxed);
    wait_for_sole_owner(&old);
    let waited = started.elapsed();
    let old = match Arc::try_unwrap(old) {
        Ok(old) => old,
        Err(old) => {
            *slot = Some(old);
            tracing::debug!("sled busy: its re-open waits for the next round");
            return Ok(());
        }
    };
    old.sync(&q.inner.config.path)?;
    let synced = started.elapsed();
    drop(old);
    let dropped = started.elapsed();
    *slot = Some(Arc::new(open_again(q)?));
    drop(slot);
    q.inner.health.renewals.fetch_add(1, Ordering::AcqRel);
    crate::metrics::queue_reopened();
    tracing::info!(
        written_mib = written >> 20,
        read_mib = read >> 20,
        took_ms = started.elapsed().as_millis() as u64,
        waited_ms = waited.as_millis() as u64,
        synced_ms = synced.as_millis() as u64,
        dropped_ms = dropped.as_millis() as u64,
        "re-opened sled: a fresh snapshot (a start after a crash replays only what is written after it) and an empty page cache"
    );
    Ok(())
}

/// Brings storage back: a probe write on the current sled, else a re-open; then removes what
/// failed requests left behind and recounts.
fn recover(q: &Queue) -> Result<(), QueueError> {
    let probe = |store: &Store| -> Result<(), QueueError> {
        q.sync_fault()?;
        store
            .meta
            .insert("probe", &super::now_ms().to_be_bytes()[..])?;
        store.sync(&q.inner.config.path)
    };
    let current = q.inner.store.read().clone();
    if current.as_ref().is_none_or(|s| probe(s).is_err()) {
        drop(current);
        reopen(q)?;
        probe(&*q.store()?)?;
    }
    let store = q.store()?;
    // The books follow what the store holds now: a round that failed may have been applied
    // in sled's memory and lost with the re-open, or the other way round. The trees tell it
    // as at a start (records and last entries; see `ledger`), so this is a recount.
    let mut total = 0;
    for (name, ledger) in &q.inner.streams {
        let (mut read, mut highest) = (0, 0);
        let mut books = ledger.lock();
        let (found, _) = super::open::books_of(&store, name, &mut read, &mut highest)?;
        *books = Books {
            acked: books.acked,
            lost: books.lost,
            ..found
        };
        total += books.q.bytes();
    }
    q.inner.admission.set_queued(total);
    let refused = std::mem::take(&mut *q.inner.refused.lock());
    let removal = (|| {
        for (stream, keys) in &refused {
            for key in keys {
                q.remove_refused(&store, stream, *key)?;
            }
        }
        store.sync(&q.inner.config.path)
    })();
    if let Err(e) = removal {
        // Keep them refused (never delivered) and try again next round.
        q.inner.refused.lock().extend(refused);
        return Err(e);
    }
    Ok(())
}

/// Drops the failed sled handle (once its other users let go) and opens it again.
fn reopen(q: &Queue) -> Result<(), QueueError> {
    let old = q.inner.store.write().take();
    if let Some(old) = old {
        wait_for_sole_owner(&old);
        drop(old);
    }
    *q.inner.store.write() = Some(Arc::new(open_again(q)?));
    tracing::warn!("re-opened the queue's sled database after a storage failure");
    Ok(())
}

/// Opens sled again in this process, once the old handle is dropped.
fn open_again(q: &Queue) -> Result<Store, QueueError> {
    let streams: Vec<String> = q.inner.streams.keys().cloned().collect();
    match Store::open_released(&q.inner.config, &streams) {
        Ok(store) => Ok(store),
        Err(OpenError::Damaged(why)) => Err(QueueError::Storage(why)),
        Err(OpenError::Other(e)) => Err(e),
    }
}

fn wait_for_sole_owner(store: &Arc<Store>) {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    while Arc::strong_count(store) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}
