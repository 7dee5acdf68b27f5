//! Whether an append may be taken: the byte budget, the free-space floor and the storage's
//! health, each with hysteresis so clients back off for a while instead of flapping.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::QueueError;

/// After hitting the budget, appends resume once the queue is below this share of it.
pub const RESUME_PERCENT: u64 = 90;

/// How the queue reads the free space of its file system: a seam, so the floor can be tested
/// without filling a disk.
pub trait FreeSpace: Send + Sync {
    /// Bytes an unprivileged writer may still use on the file system holding `path`.
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64>;
    /// The most [`FreeSpace::free_bytes`] could ever read on that file system: its size less
    /// the blocks reserved for root.
    fn usable_bytes(&self, path: &Path) -> std::io::Result<u64>;
}

/// `statvfs(2)`: the space available to unprivileged users (`f_bavail`), as sled sees it.
pub struct Statvfs;

impl FreeSpace for Statvfs {
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64> {
        let s = rustix::fs::statvfs(path)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }

    fn usable_bytes(&self, path: &Path) -> std::io::Result<u64> {
        let s = rustix::fs::statvfs(path)?;
        let reserved = s.f_bfree.saturating_sub(s.f_bavail);
        Ok(s.f_blocks
            .saturating_sub(reserved)
            .saturating_mul(s.f_frsize))
    }
}

/// Refuses a `queue.min_free_bytes` the queue's file system can never have free: the service
/// would start, log one error and answer 503 to every request for as long as it runs. The
/// file system is the one that holds `path`, or its nearest existing parent (the queue's
/// directory is created at its first start). When none can be read, the queue's own open
/// reports why.
pub fn check_floor(
    min_free: u64,
    path: &Path,
    fs: &dyn FreeSpace,
) -> Result<(), crate::config::ConfigError> {
    let usable = path.ancestors().find_map(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs.usable_bytes(dir).ok().map(|n| (dir, n))
    });
    match usable {
        Some((dir, size)) if min_free >= size => Err(crate::config::ConfigError::Invalid {
            key: "queue.min_free_bytes".to_owned(),
            message: format!(
                "{min_free} bytes ({}) is not below the usable size of the queue's file system \
                 at {} ({size} bytes, {}): below the floor every request is answered 503, so \
                 the queue could never take one; set it to a fraction of the volume (e.g. {})",
                human(min_free),
                dir.display(),
                human(size),
                size / 10,
            ),
        }),
        _ => Ok(()),
    }
}

/// `n` bytes in MiB or GiB, for a message.
fn human(n: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    match n as f64 / MIB {
        mib if mib >= 1024.0 => format!("{:.1} GiB", mib / 1024.0),
        mib => format!("{mib:.1} MiB"),
    }
}

/// The admission state.
pub(super) struct Admission {
    max_bytes: u64,
    /// Budget bytes queued or reserved by appends in progress.
    pub queued_bytes: AtomicU64,
    /// Set when an append is refused for the budget; cleared below [`RESUME_PERCENT`].
    full: AtomicBool,
    /// `queue.min_free_bytes`.
    min_free: u64,
    /// Last reading of the free space.
    pub free_bytes: AtomicU64,
    /// Set while free space is under the floor; cleared once it is 10 % above it.
    low_disk: AtomicBool,
    /// Set while storage fails (a write or flush returned an error); cleared by recovery.
    failing: AtomicBool,
}

impl Admission {
    pub fn new(max_bytes: u64, min_free: u64, queued: u64) -> Admission {
        Admission {
            max_bytes,
            queued_bytes: AtomicU64::new(queued),
            full: AtomicBool::new(false),
            min_free,
            free_bytes: AtomicU64::new(u64::MAX),
            low_disk: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }

    /// Takes `size` bytes of budget, or refuses without taking any.
    pub fn reserve(&self, size: u64) -> Result<(), QueueError> {
        if self.is_failing() {
            return Err(QueueError::Failing);
        }
        if self.is_low_disk() {
            return Err(QueueError::LowDisk {
                free: self.free_bytes.load(Ordering::Acquire),
                min: self.min_free,
            });
        }
        let max = self.max_bytes;
        if size > max {
            return Err(QueueError::OverBudget { bytes: size, max });
        }
        if self.is_full() {
            return Err(QueueError::Full {
                queued: self.queued(),
                max,
            });
        }
        self.queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + size <= max).then_some(q + size)
            })
            .map(drop)
            .map_err(|queued| {
                self.full.store(true, Ordering::Release);
                QueueError::Full { queued, max }
            })
    }

    /// Counts bytes that entered the queue without a reservation (replayed dead letters).
    pub fn add(&self, bytes: u64) {
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Sets the total after a recount.
    pub fn set_queued(&self, bytes: u64) {
        self.queued_bytes.store(bytes, Ordering::Release);
    }

    /// Gives back `bytes` of budget.
    pub fn release(&self, bytes: u64) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn queued(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Refused for the budget: from the first refusal until the queue drained below
    /// [`RESUME_PERCENT`] of it.
    pub fn is_full(&self) -> bool {
        if !self.full.load(Ordering::Acquire) {
            return false;
        }
        let resume_below = (u128::from(self.max_bytes) * u128::from(RESUME_PERCENT) / 100) as u64;
        if self.queued() < resume_below {
            self.full.store(false, Ordering::Release);
            return false;
        }
        true
    }

    pub fn is_low_disk(&self) -> bool {
        self.low_disk.load(Ordering::Acquire)
    }

    /// Takes a free-space reading; returns the new low-disk state when it changed.
    pub fn observe_free(&self, free: u64) -> Option<bool> {
        self.free_bytes.store(free, Ordering::Release);
        let low = self.is_low_disk();
        let now_low = if low {
            // Resume only with a margin above the floor, so a disk hovering at the floor does
            // not flap between 200 and 503.
            free < self.min_free.saturating_add(self.min_free / 10)
        } else {
            free < self.min_free
        };
        self.low_disk.store(now_low, Ordering::Release);
        (now_low != low).then_some(now_low)
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Marks storage failing (or working); returns whether that changed the state.
    pub fn set_failing(&self, failing: bool) -> bool {
        self.failing.swap(failing, Ordering::AcqRel) != failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_refuses_below_it_and_resumes_with_a_margin() {
        let a = Admission::new(1 << 30, 1000, 0);
        assert_eq!(a.observe_free(5000), None);
        a.reserve(10).unwrap();
        assert_eq!(a.observe_free(999), Some(true));
        assert!(matches!(
            a.reserve(10),
            Err(QueueError::LowDisk {
                free: 999,
                min: 1000
            })
        ));
        assert_eq!(a.observe_free(1050), None, "not yet 10 % above the floor");
        assert!(a.reserve(10).is_err());
        assert_eq!(a.observe_free(1100), Some(false));
        a.reserve(10).unwrap();
        assert_eq!(a.queued(), 20, "refusals took no budget");
    }

    #[test]
    fn a_request_over_the_whole_budget_is_not_full_but_never_fits() {
        let a = Admission::new(100, 0, 0);
        assert!(matches!(
            a.reserve(101),
            Err(QueueError::OverBudget {
                bytes: 101,
                max: 100
            })
        ));
        assert!(!a.is_full(), "nothing else is refused because of it");
        a.reserve(100).unwrap();
        assert!(matches!(a.reserve(101), Err(QueueError::OverBudget { .. })));
        assert!(matches!(a.reserve(1), Err(QueueError::Full { .. })));
    }

    /// A file system of a given usable size, with everything free.
    struct Volume(u64);

    impl FreeSpace for Volume {
        fn free_bytes(&self, _: &Path) -> std::io::Result<u64> {
            Ok(self.0)
        }
        fn usable_bytes(&self, _: &Path) -> std::io::Result<u64> {
            Ok(self.0)
        }
    }

    #[test]
    fn a_floor_the_volume_can_never_have_free_is_refused_naming_the_key_and_size() {
        let volume = Volume(40 << 20);
        let path = Path::new("/var/lib/firehose-edge/queue");
        let e = check_floor(1 << 30, path, &volume).unwrap_err().to_string();
        assert!(
            e.starts_with("queue.min_free_bytes: 1073741824 bytes (1.0 GiB) is not below")
                && e.contains("(41943040 bytes, 40.0 MiB)")
                && e.contains("at /var/lib/firehose-edge/queue "),
            "{e}"
        );
        assert!(check_floor(40 << 20, path, &volume).is_err(), "equal");
        check_floor((40 << 20) - 1, path, &volume).unwrap();
        check_floor(0, path, &volume).unwrap();
    }

    #[test]
    fn the_floor_is_checked_on_the_nearest_directory_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let not_yet = dir.path().join("a/b/queue");
        let size = Statvfs.usable_bytes(dir.path()).unwrap();
        let e = check_floor(size, &not_yet, &Statvfs)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("at {} ", dir.path().display())), "{e}");
        check_floor(size - 1, &not_yet, &Statvfs).unwrap();
        // A relative path whose parents do not exist: the working directory's file system.
        check_floor(0, Path::new("no/such/queue"), &Statvfs).unwrap();
        assert!(check_floor(u64::MAX, Path::new("no/such/queue"), &Statvfs).is_err());
    }

    #[test]
    fn failing_storage_refuses_until_cleared() {
        let a = Admission::new(1 << 30, 0, 0);
        assert!(a.set_failing(true));
        assert!(!a.set_failing(true), "one state change, one log line");
        assert!(matches!(a.reserve(1), Err(QueueError::Failing)));
        assert!(a.set_failing(false));
        a.reserve(1).unwrap();
    }
}
