//! The one place where monotonic `std::time::Instant` becomes smoltcp time and back.
//!
//! smoltcp's own `Instant::now()` reads the wall clock, which jumps; the stack only ever
//! sees microseconds since this clock's epoch, taken from `std::time::Instant`.
//!
//! smoltcp's clock may also run faster than real time, by an integer `rate`. smoltcp 0.14
//! hard-codes its retransmission timeout floor (and initial value) at 1 s, five times
//! Linux's 200 ms; each loss it does not repair by fast retransmit costs at least that
//! long. Running its clock `rate` times faster divides those fixed constants by `rate`,
//! while every duration this crate hands to smoltcp (delayed ACK, keep-alive, timeouts)
//! is converted with [`Clock::smol_duration`] and keeps its real length. What smoltcp
//! measures (round-trip times) is measured in its own units and converted back, so an
//! RTO computed from them is the same in real time; only the constants change. See
//! `NetstackConfig::min_rto` and docs/ARCHITECTURE.md for the full list.

use std::time::{Duration, Instant};

/// Converts between `std::time::Instant` and smoltcp's microsecond timestamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    /// smoltcp microseconds per real microsecond (≥ 1).
    rate: u64,
}

impl Clock {
    /// A clock whose zero is `epoch`, running smoltcp's time `rate` times faster than
    /// real time (`rate` is clamped to at least 1).
    pub(crate) fn new(epoch: Instant, rate: u32) -> Self {
        Self {
            epoch,
            rate: u64::from(rate.max(1)),
        }
    }

    /// Real microseconds since the epoch (0 for instants before it).
    pub(crate) fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// `now` as smoltcp time.
    pub(crate) fn smol_at(&self, now: Instant) -> smoltcp::time::Instant {
        let smol = self.micros(now).saturating_mul(self.rate);
        smoltcp::time::Instant::from_micros(i64::try_from(smol).unwrap_or(i64::MAX))
    }

    /// A smoltcp instant back as `std::time::Instant`, rounded up to the next real
    /// microsecond so that waking at the returned instant never comes before `t`.
    pub(crate) fn std_at(&self, t: smoltcp::time::Instant) -> Instant {
        let smol = u64::try_from(t.total_micros()).unwrap_or(0);
        self.instant_at(smol.div_ceil(self.rate))
    }

    /// Real microseconds since the epoch back as `std::time::Instant`.
    pub(crate) fn instant_at(&self, micros: u64) -> Instant {
        self.epoch + Duration::from_micros(micros)
    }

    /// A real duration as a smoltcp duration of the same real length.
    pub(crate) fn smol_duration(&self, d: Duration) -> smoltcp::time::Duration {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        smoltcp::time::Duration::from_micros(micros.saturating_mul(self.rate))
    }
}

/// The clock rate that turns smoltcp's fixed 1 s RTO floor into `min_rto`:
/// `round(1 s / min_rto)`, at least 1.
pub(crate) fn rate_for_min_rto(min_rto: Duration) -> u32 {
    let micros = min_rto.as_micros().max(1);
    let rate = (1_000_000 + micros / 2) / micros;
    u32::try_from(rate).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_smoltcp_time() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch, 1);
        let later = epoch + Duration::from_millis(1234);
        let smol = clock.smol_at(later);
        assert_eq!(smol.total_millis(), 1234);
        assert_eq!(clock.std_at(smol), later);
        assert_eq!(clock.micros(epoch - Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_fast_clock_keeps_real_durations_and_round_trips() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch, 5);
        let later = epoch + Duration::from_millis(200);
        let smol = clock.smol_at(later);
        // smoltcp sees 1 s where 200 ms passed: its 1 s RTO floor is 200 ms of real time.
        assert_eq!(smol.total_millis(), 1000);
        assert_eq!(clock.std_at(smol), later);
        // A duration we set keeps its real length.
        assert_eq!(
            clock
                .smol_duration(Duration::from_millis(10))
                .total_millis(),
            50
        );
        assert_eq!(
            clock.smol_at(later) + clock.smol_duration(Duration::from_millis(10)),
            clock.smol_at(later + Duration::from_millis(10))
        );
        // A smoltcp deadline between two real microseconds maps to the later one.
        let odd = smoltcp::time::Instant::from_micros(1_000_001);
        assert_eq!(clock.std_at(odd), epoch + Duration::from_micros(200_001));
        assert!(clock.smol_at(clock.std_at(odd)) >= odd);
    }

    #[test]
    fn rate_follows_min_rto() {
        assert_eq!(rate_for_min_rto(Duration::from_secs(1)), 1);
        assert_eq!(rate_for_min_rto(Duration::from_millis(200)), 5);
        assert_eq!(rate_for_min_rto(Duration::from_millis(50)), 20);
        assert_eq!(rate_for_min_rto(Duration::from_millis(300)), 3);
        assert_eq!(rate_for_min_rto(Duration::from_secs(5)), 1);
    }
}
