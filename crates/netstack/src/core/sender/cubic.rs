//! The congestion controller: Cubic (RFC 9438) with HyStart++ (RFC 9406) in slow start
//! and an undo of the window cut when every retransmission of a recovery proves spurious.
//!
//! Windows are in bytes; the cubic curve is computed in segments of `mss` bytes.
//! Sans-IO: time is passed in.

use std::time::{Duration, Instant};

/// Multiplicative decrease (RFC 9438 §4.6).
const BETA: f64 = 0.7;
/// Cubic's scaling constant C (RFC 9438 §4.2), in segments per second cubed.
const C: f64 = 0.4;
/// Initial window in segments (RFC 6928).
pub(crate) const INITIAL_WINDOW: u32 = 10;
/// HyStart++ constants (RFC 9406 §4.3).
const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
const MIN_RTT_DIVISOR: u32 = 8;
const N_RTT_SAMPLE: u32 = 8;
const CSS_GROWTH_DIVISOR: u32 = 4;
const CSS_ROUNDS: u32 = 5;

/// What a window cut replaced, to restore if the losses were spurious.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Undo {
    cwnd: u32,
    ssthresh: u32,
    w_max: f64,
}

/// HyStart++ state of one slow start.
#[derive(Debug, Default, Clone, Copy)]
struct HyStart {
    last_round_min: Option<Duration>,
    round_min: Option<Duration>,
    samples: u32,
    /// In Conservative Slow Start since this baseline RTT.
    css_baseline: Option<Duration>,
    css_rounds: u32,
}

/// Cubic with HyStart++.
#[derive(Debug)]
pub(crate) struct Cubic {
    mss: u32,
    cwnd: u32,
    ssthresh: u32,
    /// Window before the last reduction (W_max), bytes.
    w_max: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    /// K of the epoch, seconds.
    k: f64,
    /// The Reno-friendly estimate (W_est), segments.
    w_est: f64,
    /// Growth not yet added to `cwnd` (a fraction of a byte or more), bytes.
    frac: f64,
    hystart: HyStart,
}

impl Cubic {
    pub(crate) fn new(mss: u32) -> Self {
        let mss = mss.max(1);
        Self {
            mss,
            cwnd: INITIAL_WINDOW * mss,
            ssthresh: u32::MAX,
            w_max: 0.0,
            epoch: None,
            k: 0.0,
            w_est: 0.0,
            frac: 0.0,
            hystart: HyStart::default(),
        }
    }

    /// The congestion window in bytes.
    pub(crate) fn cwnd(&self) -> u32 {
        self.cwnd
    }

    pub(crate) fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    #[cfg(test)]
    pub(crate) fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// A new round trip started (the first segment sent in the last round was delivered).
    pub(crate) fn on_round_start(&mut self) {
        let h = &mut self.hystart;
        if self.cwnd >= self.ssthresh {
            return;
        }
        if h.css_baseline.is_some() {
            h.css_rounds += 1;
            if h.css_rounds >= CSS_ROUNDS {
                // Leave slow start for congestion avoidance (RFC 9406 §4.2).
                self.ssthresh = self.cwnd;
                self.hystart = HyStart::default();
                return;
            }
        }
        h.last_round_min = h.round_min;
        h.round_min = None;
        h.samples = 0;
    }

    /// An RTT sample (HyStart++ watches for a rising delay in slow start).
    pub(crate) fn on_rtt_sample(&mut self, rtt: Duration) {
        if self.cwnd >= self.ssthresh {
            return;
        }
        let h = &mut self.hystart;
        h.round_min = Some(h.round_min.map_or(rtt, |m| m.min(rtt)));
        h.samples += 1;
        match h.css_baseline {
            None => {
                if h.samples >= N_RTT_SAMPLE
                    && let (Some(last), Some(cur)) = (h.last_round_min, h.round_min)
                {
                    let eta = (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
                    if cur >= last + eta {
                        h.css_baseline = Some(cur);
                        h.css_rounds = 0;
                    }
                }
            }
            Some(baseline) => {
                if h.round_min.is_some_and(|cur| cur < baseline) {
                    // The delay rise was spurious: back to slow start.
                    h.css_baseline = None;
                    h.css_rounds = 0;
                }
            }
        }
    }

    /// `acked` bytes were newly delivered at `now` (outside recovery). `cwnd_limited`:
    /// the sender had the window filled, so growing it means something.
    pub(crate) fn on_ack(&mut self, acked: u32, now: Instant, srtt: Duration, cwnd_limited: bool) {
        if !cwnd_limited || acked == 0 {
            return;
        }
        if self.cwnd < self.ssthresh {
            let div = if self.hystart.css_baseline.is_some() {
                CSS_GROWTH_DIVISOR
            } else {
                1
            };
            self.cwnd = self.cwnd.saturating_add((acked / div).max(1));
            return;
        }
        self.congestion_avoidance(acked, now, srtt);
    }

    fn congestion_avoidance(&mut self, acked: u32, now: Instant, srtt: Duration) {
        let mss = f64::from(self.mss);
        let cwnd_seg = f64::from(self.cwnd) / mss;
        let epoch = *self.epoch.get_or_insert_with(|| {
            let w_max_seg = self.w_max / mss;
            self.k = if w_max_seg > cwnd_seg {
                ((w_max_seg - cwnd_seg) / C).cbrt()
            } else {
                0.0
            };
            self.w_est = cwnd_seg;
            if self.w_max < f64::from(self.cwnd) {
                self.w_max = f64::from(self.cwnd);
            }
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        let w_max_seg = self.w_max / mss;
        let w_cubic = |t: f64| C * (t - self.k).powi(3) + w_max_seg;
        // Reno-friendly region (RFC 9438 §4.3).
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * f64::from(acked) / mss / cwnd_seg;
        let target = w_cubic(t + srtt.as_secs_f64()).clamp(cwnd_seg, 1.5 * cwnd_seg);
        if w_cubic(t) < self.w_est {
            let est = (self.w_est * mss) as u64;
            self.cwnd = u32::try_from(est).unwrap_or(u32::MAX).max(self.cwnd);
        } else {
            // (target - cwnd) / cwnd segments per segment acknowledged, in bytes.
            self.frac += (target - cwnd_seg) / cwnd_seg * f64::from(acked);
            let whole = self.frac.floor();
            if whole >= 1.0 {
                self.frac -= whole;
                self.cwnd = self
                    .cwnd
                    .saturating_add(whole.min(f64::from(u32::MAX)) as u32);
            }
        }
    }

    /// A loss was detected (entering fast recovery): remembers what to undo, sets
    /// ssthresh. The window itself is brought down by PRR during recovery.
    pub(crate) fn on_congestion(&mut self) -> Undo {
        let undo = Undo {
            cwnd: self.cwnd,
            ssthresh: self.ssthresh,
            w_max: self.w_max,
        };
        let cwnd = f64::from(self.cwnd);
        // Fast convergence (RFC 9438 §4.7).
        self.w_max = if cwnd < self.w_max {
            cwnd * (1.0 + BETA) / 2.0
        } else {
            cwnd
        };
        self.ssthresh = ((cwnd * BETA) as u32).max(2 * self.mss);
        self.epoch = None;
        self.frac = 0.0;
        self.hystart = HyStart::default();
        undo
    }

    /// A retransmission timeout: the window falls to one segment (RFC 5681 §3.1).
    pub(crate) fn on_rto(&mut self) -> Undo {
        let undo = self.on_congestion();
        self.cwnd = self.mss;
        undo
    }

    /// Fast recovery ended: the window is ssthresh (RFC 6937).
    pub(crate) fn on_recovery_end(&mut self, pipe: u32) {
        if self.cwnd > self.ssthresh || pipe <= self.ssthresh {
            self.cwnd = self.ssthresh.max(self.mss);
        }
        self.epoch = None;
    }

    /// Sets the window during recovery (PRR decides it).
    pub(crate) fn set_cwnd(&mut self, cwnd: u32) {
        self.cwnd = cwnd.max(self.mss);
    }

    /// Every retransmission of the episode was spurious: restores what the cut replaced.
    pub(crate) fn undo(&mut self, undo: Undo) {
        self.cwnd = self.cwnd.max(undo.cwnd);
        self.ssthresh = self.ssthresh.max(undo.ssthresh);
        self.w_max = undo.w_max;
        self.epoch = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    #[test]
    fn slow_start_doubles_per_round_then_a_loss_cuts_to_beta() {
        let mut c = Cubic::new(MSS);
        let t0 = Instant::now();
        assert_eq!(c.cwnd(), 10 * MSS);
        c.on_ack(10 * MSS, t0, Duration::from_millis(20), true);
        assert_eq!(c.cwnd(), 20 * MSS);
        // Not cwnd-limited: no growth.
        c.on_ack(10 * MSS, t0, Duration::from_millis(20), false);
        assert_eq!(c.cwnd(), 20 * MSS);
        let undo = c.on_congestion();
        assert_eq!(c.ssthresh(), 14 * MSS);
        c.on_recovery_end(0);
        assert_eq!(c.cwnd(), 14 * MSS);
        c.undo(undo);
        assert_eq!(c.cwnd(), 20 * MSS);
        assert_eq!(c.ssthresh(), u32::MAX);
    }

    #[test]
    fn cubic_regrows_to_w_max_in_about_k_seconds() {
        let mut c = Cubic::new(MSS);
        let t0 = Instant::now();
        c.cwnd = 100 * MSS;
        c.ssthresh = 100 * MSS;
        c.on_congestion();
        c.on_recovery_end(0);
        assert_eq!(c.cwnd(), 70 * MSS);
        // K = cbrt(30 / 0.4) ≈ 4.2 s. Feed a window of ACKs every 100 ms for 5 s (at
        // this RTT the cubic curve is above the Reno-friendly estimate).
        let rtt = Duration::from_millis(100);
        let mut now = t0;
        for _ in 0..50 {
            now += rtt;
            let w = c.cwnd();
            c.on_ack(w, now, rtt, true);
        }
        let w = c.cwnd() / MSS;
        assert!((97..=110).contains(&w), "cwnd {w} segments after 5 s");
    }

    #[test]
    fn hystart_leaves_slow_start_when_the_delay_rises() {
        let mut c = Cubic::new(MSS);
        let t0 = Instant::now();
        let base = Duration::from_millis(40);
        for _ in 0..N_RTT_SAMPLE {
            c.on_rtt_sample(base);
        }
        c.on_round_start();
        for _ in 0..N_RTT_SAMPLE {
            c.on_rtt_sample(base + Duration::from_millis(10));
        }
        assert!(
            c.hystart.css_baseline.is_some(),
            "in conservative slow start"
        );
        let before = c.cwnd();
        c.on_ack(4 * MSS, t0, base, true);
        assert_eq!(c.cwnd(), before + MSS, "a quarter of the growth");
        for _ in 0..CSS_ROUNDS {
            c.on_round_start();
        }
        assert!(!c.in_slow_start());
    }
}
