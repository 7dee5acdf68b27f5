//! Exponential back-off with full jitter, never giving up.
//!
//! Full jitter (a delay drawn uniformly from zero to the window) spreads the retries of many
//! replicas after a shared outage, so the recovery is not met by a synchronised storm
//! (<https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>).

use std::time::Duration;

/// Retry delays: a window that doubles per consecutive failure from `base` up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first window.
    pub base: Duration,
    /// The largest window, and the wait after a configuration error.
    pub cap: Duration,
}

impl Backoff {
    /// A back-off from `base_ms` to `cap_ms` milliseconds.
    pub fn from_millis(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms.max(base_ms)),
        }
    }

    /// The delay before the next attempt after `failures` consecutive failures: uniform over
    /// the window. Configuration errors (a missing stream, denied access) wait the cap: a
    /// fast retry cannot fix them, and the operator is told in the log.
    pub fn delay(&self, failures: u32, config_error: bool) -> Duration {
        if config_error {
            return self.cap;
        }
        let window = self.window(failures).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=window))
    }

    /// The delay before retrying a queue update: the jittered delay, but never zero, so the
    /// retry is always a timer the flusher sleeps for (a zero delay could pass before the
    /// loop sleeps and turn into a spin).
    pub fn storage_delay(&self, failures: u32) -> Duration {
        self.delay(failures, false)
            .max(self.base.max(Duration::from_millis(1)))
    }

    /// The window after `failures` consecutive failures.
    fn window(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_doubles_up_to_the_cap_with_full_jitter() {
        let b = Backoff::from_millis(100, 1600);
        fastrand::seed(7);
        for (failures, window) in [(1, 100), (2, 200), (3, 400), (5, 1600), (40, 1600)] {
            let samples: Vec<u64> = (0..400)
                .map(|_| b.delay(failures, false).as_millis() as u64)
                .collect();
            let max = *samples.iter().max().unwrap();
            let min = *samples.iter().min().unwrap();
            assert!(max <= window, "failures {failures}: {max} > {window}");
            assert!(
                max > window * 9 / 10,
                "failures {failures}: window not used ({max})"
            );
            assert!(min < window / 10, "failures {failures}: no jitter ({min})");
        }
        assert_eq!(
            b.delay(1, true),
            Duration::from_millis(1600),
            "configuration errors wait the cap"
        );
    }

    #[test]
    fn a_storage_retry_is_never_immediate() {
        let b = Backoff::from_millis(1, 20);
        assert!((0..1000).all(|_| b.storage_delay(1) >= Duration::from_millis(1)));
    }
}
