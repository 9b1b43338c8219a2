//! The clock the client counts leases on.
//!
//! tokio's `Instant` is `CLOCK_MONOTONIC`, which stops while the system is suspended: after
//! a laptop or VM suspend longer than a lease, a lease counted on it still looks alive. On
//! Linux the lease clock is `CLOCK_BOOTTIME`, which keeps counting across suspend; elsewhere
//! it falls back to the monotonic clock.

use std::time::Duration;

#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;

/// A reading of the lease clock: time since an arbitrary fixed origin (boot on Linux).
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseClock {
    /// Nanoseconds added to every reading (tests: a suspend, without suspending).
    #[cfg(test)]
    skew: Arc<AtomicU64>,
}

impl LeaseClock {
    /// The time now.
    pub(crate) fn now(&self) -> Duration {
        #[cfg(test)]
        {
            since_origin() + Duration::from_nanos(self.skew.load(Ordering::Relaxed))
        }
        #[cfg(not(test))]
        {
            since_origin()
        }
    }

    /// Moves this clock (and its clones) forward by `by`, as a suspend of that long would.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
fn since_origin() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    )
}

#[cfg(not(target_os = "linux"))]
fn since_origin() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_with_real_time_and_with_advance() {
        let clock = LeaseClock::default();
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let later = clock.now();
        assert!(
            later >= start + Duration::from_millis(20),
            "{start:?} {later:?}"
        );
        let copy = clock.clone();
        copy.advance(Duration::from_secs(60));
        assert!(clock.now() >= later + Duration::from_secs(60));
    }
}
