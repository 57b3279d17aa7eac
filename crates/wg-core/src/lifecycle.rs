//! A peer's lifecycle: one type for where its handshake stands ([`Lifecycle`]) and every
//! transition between its phases, with WireGuard's time limits and wg-core's retry backoff.
//!
//! The engine decides *when* (a datagram arrived, a timer fired) and does the I/O; the phase
//! and its times change only here. `tests/lifecycle_model.rs` drives random event sequences
//! through the engine and checks every phase against a reference model.

use std::time::{Duration, Instant};

use crate::stats::HandshakeState;

/// WireGuard's reject-after time: a session older than this is dead.
pub(crate) const REJECT_AFTER: Duration = Duration::from_secs(180);
/// WireGuard's rekey-after time: an initiator renews a session this old when it sends.
pub(crate) const REKEY_AFTER: Duration = Duration::from_secs(120);
/// boringtun abandons a handshake after this long (REKEY_ATTEMPT_TIME); so does wg-core.
pub(crate) const REKEY_ATTEMPT: Duration = Duration::from_secs(90);
/// First retry delay once a handshake was abandoned.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Largest retry delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Initiations that went unanswered before the engine reports it
/// ([`Event::HandshakeUnanswered`](crate::Event::HandshakeUnanswered)): with boringtun's 5 s
/// retry, about 15 s into an attempt, long before the 90 s limit.
pub const UNANSWERED_TRIES: u32 = 3;

/// Where a peer's handshake stands, with the times its timers count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    /// No session and no handshake of ours running: traffic, a keepalive or the peer's
    /// initiation starts one.
    Idle,
    /// Our initiation went out at `since` and no session exists; abandoned after
    /// [`REKEY_ATTEMPT`].
    Connecting { since: Instant },
    /// A session from the handshake completed `at`; dead at `at +` [`REJECT_AFTER`]. A rekey
    /// in progress stays here.
    Established { at: Instant },
    /// A handshake was abandoned; retry number `attempt + 1` goes out at `retry_at`.
    Backoff { attempt: u32, retry_at: Instant },
}

/// What [`Lifecycle::give_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// Already idle or backing off: nothing to do (boringtun repeats its error every tick).
    Ignored,
    /// Now in backoff; the first retry is this far away.
    Backoff(Duration),
    /// Now idle: no session is wanted.
    Idle,
}

impl Lifecycle {
    /// The phase as reported in [`PeerStats`](crate::PeerStats).
    pub(crate) fn state(self) -> HandshakeState {
        match self {
            Lifecycle::Idle => HandshakeState::Idle,
            Lifecycle::Connecting { .. } => HandshakeState::Connecting,
            Lifecycle::Established { .. } => HandshakeState::Established,
            Lifecycle::Backoff { .. } => HandshakeState::Backoff,
        }
    }

    /// When this phase's own timer fires: the attempt limit, session expiry or the retry.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Lifecycle::Idle => None,
            Lifecycle::Connecting { since } => Some(since + REKEY_ATTEMPT),
            Lifecycle::Established { at } => Some(at + REJECT_AFTER),
            Lifecycle::Backoff { retry_at, .. } => Some(retry_at),
        }
    }

    /// The age of the live session, if there is one.
    pub(crate) fn session_age(self, now: Instant) -> Option<Duration> {
        match self {
            Lifecycle::Established { at } => {
                Some(now.saturating_duration_since(at)).filter(|age| *age < REJECT_AFTER)
            }
            _ => None,
        }
    }

    /// Our initiation went out: an idle peer is connecting since `now`. A live session being
    /// renewed, a backoff retry or a handshake already running keep their phase. Returns
    /// whether the phase changed.
    pub(crate) fn initiation_sent(&mut self, now: Instant) -> bool {
        if *self == Lifecycle::Idle {
            *self = Lifecycle::Connecting { since: now };
            return true;
        }
        false
    }

    /// A handshake completed at `now`, from any phase. Returns whether it renewed a live
    /// session (a rekey) rather than bringing the tunnel up.
    pub(crate) fn handshake_completed(&mut self, now: Instant) -> bool {
        let rekey = self.session_age(now).is_some();
        *self = Lifecycle::Established { at: now };
        rekey
    }

    /// Whether our handshake attempt has run for [`REKEY_ATTEMPT`] without an answer.
    pub(crate) fn attempt_timed_out(self, now: Instant) -> bool {
        matches!(self, Lifecycle::Connecting { since } if now >= since + REKEY_ATTEMPT)
    }

    /// The session is [`REJECT_AFTER`] old at `now`: the peer becomes idle. Returns whether it
    /// expired.
    pub(crate) fn expire_session(&mut self, now: Instant) -> bool {
        if matches!(*self, Lifecycle::Established { at } if now >= at + REJECT_AFTER) {
            *self = Lifecycle::Idle;
            return true;
        }
        false
    }

    /// The handshake was abandoned (our 90 s limit, or boringtun gave up): back off with the
    /// first delay when a session is still `wanted`, else go idle. `unit` is the jitter, a
    /// number in [0, 1).
    pub(crate) fn give_up(&mut self, now: Instant, wanted: bool, unit: f64) -> GaveUp {
        match *self {
            Lifecycle::Idle | Lifecycle::Backoff { .. } => GaveUp::Ignored,
            Lifecycle::Connecting { .. } | Lifecycle::Established { .. } if wanted => {
                let delay = backoff_delay(0, unit);
                *self = Lifecycle::Backoff {
                    attempt: 0,
                    retry_at: now + delay,
                };
                GaveUp::Backoff(delay)
            }
            Lifecycle::Connecting { .. } | Lifecycle::Established { .. } => {
                *self = Lifecycle::Idle;
                GaveUp::Idle
            }
        }
    }

    /// Whether a backoff retry is due at `now`.
    pub(crate) fn retry_due(self, now: Instant) -> bool {
        matches!(self, Lifecycle::Backoff { retry_at, .. } if now >= retry_at)
    }

    /// A backoff retry goes out at `now`: the next one is scheduled with the next (longer)
    /// delay, `unit` being its jitter. Returns the attempt number, or `None` when not in
    /// backoff.
    pub(crate) fn retried(&mut self, now: Instant, unit: f64) -> Option<u32> {
        let Lifecycle::Backoff { attempt, .. } = *self else {
            return None;
        };
        let attempt = attempt.saturating_add(1);
        *self = Lifecycle::Backoff {
            attempt,
            retry_at: now + backoff_delay(attempt, unit),
        };
        Some(attempt)
    }

    /// A new address may work where the old one failed: a peer in backoff retries at `at`
    /// (now or earlier, so at the next timeout), counting delays from the first again.
    pub(crate) fn retry_soon(&mut self, at: Instant) {
        if let Lifecycle::Backoff { .. } = self {
            *self = Lifecycle::Backoff {
                attempt: 0,
                retry_at: at,
            };
        }
    }

    /// Start over with no session: our key or the preshared key changed, or a forced
    /// handshake leaves backoff.
    pub(crate) fn reset(&mut self) {
        *self = Lifecycle::Idle;
    }
}

/// Our handshake initiations that no completed handshake followed yet. An *episode* runs from
/// the first such initiation to the next completed handshake (whoever initiated it); backoff,
/// retries and endpoint changes stay inside one episode. It is reported once, when
/// [`UNANSWERED_TRIES`] initiations went unanswered, and its end only when it was reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unanswered {
    tries: u32,
    since: Option<Instant>,
    reported: bool,
}

impl Unanswered {
    /// Initiations sent since the last completed handshake.
    pub(crate) fn tries(self) -> u32 {
        self.tries
    }

    /// An initiation goes out at `now`. Returns `Some((tries, elapsed))`, once per episode,
    /// when [`UNANSWERED_TRIES`] earlier initiations went unanswered: `elapsed` is the time
    /// since the first of them.
    pub(crate) fn initiation_sent(&mut self, now: Instant) -> Option<(u32, Duration)> {
        let since = *self.since.get_or_insert(now);
        let report = !self.reported && self.tries >= UNANSWERED_TRIES;
        self.tries = self.tries.saturating_add(1);
        if report {
            self.reported = true;
            return Some((self.tries - 1, now.saturating_duration_since(since)));
        }
        None
    }

    /// A handshake completed at `now`: the episode ends. Returns `Some((tries, elapsed))` when
    /// it had been reported, `elapsed` counted from its first initiation.
    pub(crate) fn answered(&mut self, now: Instant) -> Option<(u32, Duration)> {
        let ended = *self;
        *self = Self::default();
        match ended {
            Self {
                tries,
                since: Some(since),
                reported: true,
            } => Some((tries, now.saturating_duration_since(since))),
            _ => None,
        }
    }
}

/// The delay before retry number `attempt` (0-based): 5 s doubling to 60 s, times a random
/// factor in [0.75, 1.0) from `unit` (a number in [0, 1)).
pub(crate) fn backoff_delay(attempt: u32, unit: f64) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 - 0.25 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_with_jitter() {
        assert_eq!(backoff_delay(0, 0.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(1, 0.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(2, 0.0), Duration::from_secs(20));
        assert_eq!(backoff_delay(3, 0.0), Duration::from_secs(40));
        assert_eq!(backoff_delay(4, 0.0), Duration::from_secs(60));
        assert_eq!(backoff_delay(40, 0.0), Duration::from_secs(60));
        let low = backoff_delay(4, 0.999);
        assert!(low >= Duration::from_secs(45) && low < Duration::from_secs(46));
        assert_eq!(backoff_delay(0, 0.5), Duration::from_millis(4375));
    }

    #[test]
    fn unanswered_initiations_are_reported_once_per_episode() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut u = Unanswered::default();
        assert_eq!(u.answered(s(0)), None, "nothing to end");
        assert_eq!(u.initiation_sent(s(0)), None);
        assert_eq!(u.initiation_sent(s(5)), None);
        assert_eq!(u.initiation_sent(s(10)), None);
        assert_eq!(
            u.initiation_sent(s(15)),
            Some((3, Duration::from_secs(15))),
            "three went unanswered"
        );
        assert_eq!(u.initiation_sent(s(20)), None, "once per episode");
        assert_eq!(u.tries(), 5);
        assert_eq!(u.answered(s(47)), Some((5, Duration::from_secs(47))));
        assert_eq!(u.tries(), 0);
        // A new episode that a handshake ends early is never reported.
        assert_eq!(u.initiation_sent(s(100)), None);
        assert_eq!(u.initiation_sent(s(105)), None);
        assert_eq!(u.answered(s(106)), None);
        // A new long episode is reported again.
        for n in 0..3 {
            assert_eq!(u.initiation_sent(s(200 + 5 * n)), None);
        }
        assert_eq!(
            u.initiation_sent(s(215)),
            Some((3, Duration::from_secs(15)))
        );
    }

    #[test]
    fn phases_and_their_timers() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut l = Lifecycle::Idle;
        assert!(l.initiation_sent(t0));
        assert_eq!(l, Lifecycle::Connecting { since: t0 });
        assert!(
            !l.initiation_sent(s(1)),
            "a running attempt keeps its start"
        );
        assert_eq!(l.deadline(), Some(s(90)));
        assert!(!l.attempt_timed_out(s(89)) && l.attempt_timed_out(s(90)));
        assert_eq!(l.give_up(s(90), true, 0.0), GaveUp::Backoff(BACKOFF_MIN));
        assert_eq!(l.give_up(s(91), true, 0.0), GaveUp::Ignored);
        assert!(!l.retry_due(s(94)) && l.retry_due(s(95)));
        assert_eq!(l.retried(s(95), 0.0), Some(1));
        assert_eq!(l.deadline(), Some(s(105)));
        assert!(!l.initiation_sent(s(95)), "a retry stays in backoff");
        l.retry_soon(s(96));
        assert_eq!(
            l,
            Lifecycle::Backoff {
                attempt: 0,
                retry_at: s(96)
            }
        );
        assert!(!l.handshake_completed(s(97)), "the tunnel came up");
        assert_eq!(l.session_age(s(100)), Some(Duration::from_secs(3)));
        assert!(l.handshake_completed(s(200)), "a rekey");
        assert!(!l.expire_session(s(379)) && l.expire_session(s(380)));
        assert_eq!(l, Lifecycle::Idle);
        assert_eq!(l.give_up(s(381), true, 0.0), GaveUp::Ignored);
        l.initiation_sent(s(400));
        assert_eq!(l.give_up(s(490), false, 0.0), GaveUp::Idle);
        assert_eq!(l.retried(s(491), 0.0), None);
        l.retry_soon(s(491));
        assert_eq!(l, Lifecycle::Idle);
    }
}
