//! Keeping per-request problems from flooding the operator's log.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often an upstream problem of one route may be logged at `warn`.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one `warn` through per interval; callers log the rest at `debug`.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    base: Instant,
    interval: Duration,
    /// Milliseconds since `base` before which warnings are held back (0: none yet).
    next_ms: AtomicU64,
}

impl WarnLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            base: Instant::now(),
            interval,
            next_ms: AtomicU64::new(0),
        }
    }

    /// Whether this event may be a `warn` (at most one per interval; lock-free).
    pub(crate) fn allow(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        let until =
            now.saturating_add(u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX));
        now >= next
            && self
                .next_ms
                .compare_exchange(next, until.max(1), Relaxed, Relaxed)
                .is_ok()
    }
}

/// `warn!` when the limiter allows it, `debug!` otherwise.
macro_rules! limited_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if $limiter.allow() {
            tracing::warn!($($arg)+);
        } else {
            tracing::debug!($($arg)+);
        }
    };
}
pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval() {
        let limiter = WarnLimiter::new(Duration::from_millis(50));
        assert!(limiter.allow());
        assert!(!limiter.allow());
        assert!(!limiter.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.allow());
        assert!(!limiter.allow());
    }
}
