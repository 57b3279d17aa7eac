//! The one place where monotonic `std::time::Instant` becomes smoltcp time and back.
//!
//! smoltcp's own `Instant::now()` reads the wall clock, which jumps; the stack only ever
//! sees microseconds since this clock's epoch, taken from `std::time::Instant`. smoltcp's
//! clock runs at real time: its fixed 1 s retransmission-timeout floor is only a backstop
//! behind the sender's own timeout (see `sender.rs`).

use std::time::{Duration, Instant};

/// Converts between `std::time::Instant` and smoltcp's microsecond timestamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose zero is `epoch`.
    pub(crate) fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// Microseconds since the epoch (0 for instants before it).
    pub(crate) fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// `now` as smoltcp time.
    pub(crate) fn smol_at(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(i64::try_from(self.micros(now)).unwrap_or(i64::MAX))
    }

    /// A smoltcp instant back as `std::time::Instant`.
    pub(crate) fn std_at(&self, t: smoltcp::time::Instant) -> Instant {
        self.instant_at(u64::try_from(t.total_micros()).unwrap_or(0))
    }

    /// Microseconds since the epoch back as `std::time::Instant`.
    pub(crate) fn instant_at(&self, micros: u64) -> Instant {
        self.epoch + Duration::from_micros(micros)
    }

    /// A duration as a smoltcp duration.
    pub(crate) fn smol_duration(&self, d: Duration) -> smoltcp::time::Duration {
        smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_smoltcp_time_at_real_speed() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch);
        let later = epoch + Duration::from_millis(1234);
        let smol = clock.smol_at(later);
        assert_eq!(smol.total_millis(), 1234);
        assert_eq!(clock.std_at(smol), later);
        assert_eq!(clock.micros(epoch - Duration::from_secs(1)), 0);
        assert_eq!(
            clock
                .smol_duration(Duration::from_millis(10))
                .total_millis(),
            10
        );
    }
}
