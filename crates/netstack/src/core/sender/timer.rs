//! A connection's sender deadlines in one table (no hand-kept timer fields).

use std::time::Instant;

/// The sender's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// RACK's reordering window of a possibly lost segment ends (RFC 8985 §6.2 step 5).
    Reorder = 0,
    /// Tail-loss probe (RFC 8985 §7).
    Probe = 1,
    /// Retransmission timeout (RFC 6298).
    Rto = 2,
    /// Pacing lets the next packet go. Firing late only delays it: nothing waits on
    /// it but the held packets, which go out when it fires.
    Pace = 3,
}

impl Timer {
    const ALL: [Timer; 4] = [Timer::Reorder, Timer::Probe, Timer::Rto, Timer::Pace];
}

/// When each [`Timer`] fires, if armed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TimerTable([Option<Instant>; 4]);

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    pub(crate) fn clear(&mut self) {
        self.0 = [None; 4];
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Disarms and returns the timers due at `now`, earliest kind first.
    pub(crate) fn expired(&mut self, now: Instant) -> impl Iterator<Item = Timer> + use<> {
        let mut due = [None; 4];
        for timer in Timer::ALL {
            if self.get(timer).is_some_and(|at| at <= now) {
                self.stop(timer);
                due[timer as usize] = Some(timer);
            }
        }
        due.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_fires_and_late_ones_still_fire() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Rto, t0 + Duration::from_millis(200));
        t.set(Timer::Probe, t0 + Duration::from_millis(20));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(20)));
        // Called a second late (a busy machine): both are due, none is lost.
        let due: Vec<_> = t.expired(t0 + Duration::from_secs(1)).collect();
        assert_eq!(due, [Timer::Probe, Timer::Rto]);
        assert_eq!(t.next(), None);
    }
}
