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
}

/// `statvfs(2)`: the space available to unprivileged users (`f_bavail`), as sled sees it.
pub struct Statvfs;

impl FreeSpace for Statvfs {
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64> {
        let s = rustix::fs::statvfs(path)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
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
    fn failing_storage_refuses_until_cleared() {
        let a = Admission::new(1 << 30, 0, 0);
        assert!(a.set_failing(true));
        assert!(!a.set_failing(true), "one state change, one log line");
        assert!(matches!(a.reserve(1), Err(QueueError::Failing)));
        assert!(a.set_failing(false));
        a.reserve(1).unwrap();
    }
}
