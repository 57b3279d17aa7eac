//! Loss repair below smoltcp: SACK-driven retransmission (RACK, RFC 8985) and a tail-loss
//! probe, for the data this stack sends.
//!
//! smoltcp 0.14 repairs one hole per round trip: on the third duplicate ACK it resends the
//! first unacknowledged segment, and any other hole waits for three more duplicate ACKs or
//! for its retransmission timeout. It ignores the SACK blocks peers send, and a lost tail
//! (no segment after it to draw duplicate ACKs) always costs a timeout. Behind a gateway
//! that drops bursts, or on a lossy path, that made the agent's sending direction several
//! times slower than a kernel's.
//!
//! This module sits where smoltcp's packets leave the stack. It keeps a reference to each
//! data segment smoltcp sends (the packet itself: [`Bytes`] is reference counted, nothing is
//! copied) until it is acknowledged, reads the cumulative ACK and SACK blocks of every
//! segment the peer sends, and:
//! - marks a segment lost when a segment sent after it was delivered (cumulatively
//!   acknowledged or SACKed) and more than one smoothed RTT plus a reordering window has
//!   passed since it was sent (RACK), and re-emits the cached packet;
//! - sends a tail-loss probe (the last cached segment again) when nothing was acknowledged
//!   for about two RTTs with data outstanding, so the peer's answer (a SACK or a
//!   cumulative ACK) tells what is missing without waiting for a timeout;
//! - tells the shard when a retransmission of smoltcp's carries only bytes the peer has
//!   SACKed, so it is not sent (smoltcp goes back over a whole window after a timeout).
//!
//! smoltcp stays the TCP sender: it owns sequence numbers, windows and congestion control,
//! and still retransmits on its own; a repaired hole simply makes the peer's cumulative ACK
//! jump, which smoltcp takes as any ACK. A re-emitted packet carries the data and sequence
//! number sent before with smoltcp's latest acknowledgement number and window (a smoltcp
//! peer that has sent data since would drop a segment with an older ACK). The cache is
//! bounded per connection and over the whole stack (see `NetstackConfig::repair_budget`),
//! each segment charged for its packet and entry; past the bound segments are simply not
//! cached and smoltcp's own recovery applies.
//!
//! Everything here is sans-IO: time is passed in, packets come in and go out as values.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Floor of the reordering window: a segment is not declared lost sooner than this after a
/// later one was delivered, whatever the RTT.
const MIN_REORDER_WINDOW: Duration = Duration::from_millis(1);
/// Floor of the tail-loss probe timeout.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);
/// Added to two RTTs for the probe timeout: the peer may delay its ACK.
const PROBE_ACK_DELAY: Duration = Duration::from_millis(10);
/// Added instead when a single segment is outstanding (a delayed ACK's worst case).
const LONE_SEGMENT_ACK_DELAY: Duration = Duration::from_millis(200);
/// RTT assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Segments re-emitted per ACK or timer event at most (the rest follow with later ACKs).
pub(crate) const MAX_REPAIRS_PER_EVENT: usize = 16;
/// Bytes charged per cached segment beyond its packet (the entry, the allocation's header).
const SEG_OVERHEAD: usize = 64;
/// Spare capacity of an emptied cache kept for the next burst.
const KEEP_CAPACITY: usize = 64;

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in sequence space.
fn seq_le(a: u32, b: u32) -> bool {
    !seq_lt(b, a)
}

/// The shared byte budget of all connections' caches.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` payload bytes over all connections.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Relaxed);
        loop {
            if cur.saturating_add(n) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Relaxed);
    }
}

/// A data segment smoltcp sent and the peer has not acknowledged.
#[derive(Debug)]
struct Seg {
    /// Bytes taken from the budget for it.
    charged: usize,
    seq: u32,
    len: u32,
    /// The IP packet as sent.
    packet: Bytes,
    /// When it was sent, or sent again (by smoltcp or by us).
    sent: Instant,
    /// Sent more than once (no RTT sample from it: Karn's rule).
    again: bool,
    /// Covered by a SACK block.
    sacked: bool,
    /// A retransmission of it by smoltcp was dropped as redundant.
    skipped: bool,
}

impl Seg {
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// What a segment smoltcp just sent is, as far as repair knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// New data (or not tracked).
    New,
    /// A retransmission by smoltcp of data the peer may lack.
    Again,
    /// A retransmission of data the peer has every byte of (SACKed or acknowledged): the
    /// caller drops it instead of sending it.
    Redundant,
}

/// What the repair of one connection did, for the stack's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Emitted {
    /// Segments re-emitted because they were found lost.
    pub(crate) repairs: usize,
    /// Tail-loss probes.
    pub(crate) probes: usize,
}

/// Loss repair state of one TCP connection.
#[derive(Debug)]
pub(crate) struct Repair {
    segs: VecDeque<Seg>,
    /// Payload bytes cached (taken from the budget).
    bytes: usize,
    /// Most this connection may cache.
    limit: usize,
    budget: Budget,
    /// Highest cumulative ACK seen.
    una: Option<u32>,
    srtt: Option<Duration>,
    /// The latest transmission among delivered segments, and its end (RACK.xmit_ts and
    /// RACK.end_seq): a segment sent before it and still missing after a reordering window
    /// is lost.
    rack: Option<(Instant, u32)>,
    /// When a segment sent before `rack` stops being possibly reordered.
    reorder_at: Option<Instant>,
    /// Since when nothing was acknowledged (or first sent): the probe timer's start.
    quiet_since: Instant,
    /// A probe was sent and nothing was acknowledged since.
    probed: bool,
    /// Stopped caching at the bound: nothing is cached again until the cache empties, so
    /// the cache never has holes smoltcp's recovery would have to cover alone.
    overflowed: bool,
    /// The end of the highest segment smoltcp has sent (cached or not): an ACK beyond it
    /// acknowledges nothing real and is ignored.
    sent_end: Option<u32>,
    /// Acknowledgement number and window of the latest segment smoltcp sent on this
    /// connection: what a resent packet carries (see [`crate::wire::with_ack_and_window`]).
    latest: Option<(u32, u16)>,
}

impl Repair {
    /// Empty state; the connection may cache up to `limit` bytes, within `budget`.
    pub(crate) fn new(limit: usize, budget: Budget, now: Instant) -> Self {
        Self {
            segs: VecDeque::new(),
            bytes: 0,
            limit,
            budget,
            una: None,
            srtt: None,
            rack: None,
            reorder_at: None,
            quiet_since: now,
            probed: false,
            overflowed: false,
            sent_end: None,
            latest: None,
        }
    }

    /// smoltcp sent a segment (any: data or not) acknowledging `ack` with `window`.
    pub(crate) fn on_output(&mut self, ack: u32, window: u16) {
        self.latest = Some((ack, window));
    }

    /// Payload bytes cached.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.bytes
    }

    /// The smoothed RTT, once measured.
    #[cfg(test)]
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    fn rtt(&self) -> Duration {
        self.srtt.unwrap_or(INITIAL_RTT)
    }

    fn reorder_window(&self) -> Duration {
        (self.rtt() / 4).max(MIN_REORDER_WINDOW)
    }

    fn probe_timeout(&self) -> Duration {
        // A receiver acknowledges every second segment at once but may hold the ACK of a
        // lone one (Linux up to 200 ms): a single outstanding segment waits for that.
        let ack_delay = if self.segs.len() == 1 {
            LONE_SEGMENT_ACK_DELAY
        } else {
            PROBE_ACK_DELAY
        };
        (2 * self.rtt() + ack_delay).max(MIN_PROBE_TIMEOUT)
    }

    fn sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(srtt) => (srtt * 7 + rtt) / 8,
        });
    }

    /// smoltcp sent a segment carrying `len` payload bytes from `seq` in `packet`.
    pub(crate) fn on_sent(&mut self, seq: u32, len: u32, packet: &Bytes, now: Instant) -> Sent {
        if len == 0 {
            return Sent::New;
        }
        let end = seq.wrapping_add(len);
        if self.sent_end.is_none_or(|e| seq_lt(e, end)) {
            self.sent_end = Some(end);
        }
        if self.una.is_some_and(|una| seq_le(end, una)) {
            // Below what the peer acknowledged: smoltcp's keep-alive (the last acknowledged
            // byte again, to draw an ACK). It must go out.
            return Sent::New;
        }
        if let Some(last) = self.segs.back()
            && seq_lt(seq, last.end())
        {
            if len == 1 && last.len > 1 && end == last.end() {
                // smoltcp's keep-alive (the last sent byte again), not a retransmission.
                return Sent::New;
            }
            // smoltcp sent this range again (fast retransmit, or going back after its
            // timeout, possibly cut differently). If the peer has SACKed every byte of it,
            // it is redundant (smoltcp ignores SACK and goes back over a whole window);
            // otherwise its segments were just sent.
            let from = self.segs.partition_point(|s| seq_le(s.end(), seq));
            let mut covered = seq;
            let mut all_sacked = true;
            for s in self.segs.range(from..) {
                if !seq_lt(s.seq, end) {
                    break;
                }
                if !s.sacked || s.skipped || seq_lt(covered, s.seq) {
                    all_sacked = false;
                    break;
                }
                covered = s.end();
            }
            // A one-byte segment may be smoltcp's keep-alive probe, which must draw an ACK.
            if len > 1 && all_sacked && seq_le(end, covered) && seq_le(covered, last.end()) {
                // Once only per segment: a receiver may (rarely) discard data it SACKed, and
                // then smoltcp's next retransmission must go out.
                for s in self.segs.range_mut(from..) {
                    if !seq_lt(s.seq, end) {
                        break;
                    }
                    s.skipped = true;
                }
                return Sent::Redundant;
            }
            for s in self.segs.range_mut(from..) {
                if !seq_lt(s.seq, end) {
                    break;
                }
                s.sent = now;
                s.again = true;
            }
            return Sent::Again;
        }
        if self.segs.is_empty() {
            self.overflowed = false;
            self.quiet_since = now;
            self.probed = false;
        }
        // Charged for the packet and its entry, so tiny segments cannot hold more memory
        // than the bounds say.
        let n = packet.len().max(len as usize) + SEG_OVERHEAD;
        if self.overflowed || self.bytes + n > self.limit || !self.budget.take(n) {
            self.overflowed = true;
            return Sent::New;
        }
        self.bytes += n;
        self.segs.push_back(Seg {
            charged: n,
            seq,
            len,
            packet: packet.clone(),
            sent: now,
            again: false,
            sacked: false,
            skipped: false,
        });
        Sent::New
    }

    /// The peer acknowledged up to `ack` and reported `sacks` (`[left, right)` ranges);
    /// packets to re-emit are appended to `out`.
    pub(crate) fn on_ack(
        &mut self,
        ack: u32,
        sacks: &[(u32, u32)],
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Emitted {
        if self.sent_end.is_some_and(|end| seq_lt(end, ack)) {
            // Acknowledges data never sent (smoltcp drops such a segment too).
            return Emitted::default();
        }
        if self.una.is_none_or(|una| seq_lt(una, ack)) {
            self.una = Some(ack);
            let mut progress = false;
            while let Some(front) = self.segs.front() {
                if !seq_le(front.end(), ack) {
                    break;
                }
                let Some(seg) = self.segs.pop_front() else {
                    break;
                };
                progress = true;
                self.delivered(&seg, now);
                self.release(seg.charged);
            }
            if progress {
                self.quiet_since = now;
                self.probed = false;
            }
            if self.segs.is_empty() {
                self.reorder_at = None;
                if self.segs.capacity() > KEEP_CAPACITY {
                    self.segs.shrink_to(KEEP_CAPACITY);
                }
            }
        }
        for &(left, right) in sacks {
            if !seq_lt(left, right) {
                continue;
            }
            let from = self.segs.partition_point(|s| seq_lt(s.seq, left));
            let mut newly = Vec::new();
            for (i, s) in self.segs.range(from..).enumerate() {
                if !seq_le(s.end(), right) {
                    break;
                }
                if !s.sacked {
                    newly.push(from + i);
                }
            }
            for i in newly {
                if let Some(s) = self.segs.get_mut(i) {
                    s.sacked = true;
                    let (sent, end, again) = (s.sent, s.end(), s.again);
                    self.note_delivery(sent, end, again, now);
                }
            }
        }
        self.detect(now, out)
    }

    /// Runs the reordering and probe timers due at `now`.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Emitted {
        let mut emitted = Emitted::default();
        if self.reorder_at.is_some_and(|at| at <= now) {
            emitted = self.detect(now, out);
        }
        if !self.probed && !self.segs.is_empty() && now >= self.quiet_since + self.probe_timeout() {
            // One probe per quiet period; none at all when the peer SACKed everything
            // (then only its cumulative ACK is missing, which smoltcp's timer covers).
            self.probed = true;
            if let Some(last) = self.segs.iter_mut().rev().find(|s| !s.sacked) {
                out.push(refreshed(&last.packet, self.latest));
                last.sent = now;
                last.again = true;
                emitted.probes += 1;
            }
        }
        emitted
    }

    /// When [`Repair::on_timer`] next has something to do.
    pub(crate) fn poll_at(&self) -> Option<Instant> {
        let probe = (!self.probed && !self.segs.is_empty())
            .then(|| self.quiet_since + self.probe_timeout());
        match (probe, self.reorder_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn delivered(&mut self, seg: &Seg, now: Instant) {
        if !seg.sacked {
            self.note_delivery(seg.sent, seg.end(), seg.again, now);
        }
    }

    fn note_delivery(&mut self, sent: Instant, end: u32, again: bool, now: Instant) {
        if !again {
            self.sample(now.saturating_duration_since(sent));
        }
        let later = match self.rack {
            None => true,
            Some((t, e)) => sent > t || (sent == t && seq_lt(e, end)),
        };
        if later {
            self.rack = Some((sent, end));
        }
    }

    /// RACK: re-emits segments sent before the latest delivered one and missing for longer
    /// than an RTT plus the reordering window; arms the timer for those not yet due.
    fn detect(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Emitted {
        let mut emitted = Emitted::default();
        self.reorder_at = None;
        let Some((rack_sent, rack_end)) = self.rack else {
            return emitted;
        };
        let wait = self.rtt() + self.reorder_window();
        let mut reorder_at: Option<Instant> = None;
        let latest = self.latest;
        for s in &mut self.segs {
            // Segments are in sequence order, so first transmissions are in time order:
            // past the delivered one nothing was sent before it.
            // An original transmission at or after the delivered one: so are all later ones
            // (segments sent again were sent later still).
            let before = s.sent < rack_sent || (s.sent == rack_sent && seq_lt(s.end(), rack_end));
            if !before {
                if !s.again {
                    break;
                }
                continue;
            }
            if s.sacked {
                continue;
            }
            let due = s.sent + wait;
            if now >= due {
                if emitted.repairs >= MAX_REPAIRS_PER_EVENT {
                    // The rest are lost too: repaired at the next event, soon.
                    reorder_at = Some(now);
                    break;
                }
                out.push(refreshed(&s.packet, latest));
                s.sent = now;
                s.again = true;
                emitted.repairs += 1;
            } else {
                reorder_at = Some(reorder_at.map_or(due, |at| at.min(due)));
            }
        }
        self.reorder_at = reorder_at;
        emitted
    }

    fn release(&mut self, n: usize) {
        self.bytes -= n;
        self.budget.give(n);
    }
}

/// The packet to resend: `packet` as it was, or a copy carrying smoltcp's latest ACK
/// number and window.
fn refreshed(packet: &Bytes, latest: Option<(u32, u16)>) -> Bytes {
    latest
        .and_then(|(ack, window)| crate::wire::with_ack_and_window(packet, ack, window))
        .map_or_else(|| packet.clone(), Bytes::from)
}

impl Drop for Repair {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;
    /// What one test segment costs the budget.
    const CHARGE: usize = MSS as usize + SEG_OVERHEAD;

    fn packet(seq: u32) -> Bytes {
        Bytes::from(seq.to_be_bytes().to_vec())
    }

    fn seq_of(p: &Bytes) -> u32 {
        u32::from_be_bytes([p[0], p[1], p[2], p[3]])
    }

    /// Sends `n` segments from `start` at `now`.
    fn send(r: &mut Repair, start: u32, n: u32, now: Instant) {
        for i in 0..n {
            let seq = start.wrapping_add(i * MSS);
            r.on_sent(seq, MSS, &packet(seq), now);
        }
    }

    fn repair() -> (Repair, Budget, Instant) {
        let budget = Budget::new(1 << 20);
        let t0 = Instant::now();
        (Repair::new(1 << 20, budget.clone(), t0), budget, t0)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_hole_below_sacked_segments_is_repaired_after_the_reordering_window() {
        let (mut r, budget, t0) = repair();
        send(&mut r, 0, 10, t0);
        assert_eq!(budget.used(), 10 * CHARGE);
        let mut out = Vec::new();
        // Segment 2 is lost: the peer acknowledges 0..2000 and SACKs 3000..10000.
        let at = t0 + ms(20);
        let e = r.on_ack(2 * MSS, &[(3 * MSS, 10 * MSS)], at, &mut out);
        // Sent 20 ms ago, the RTT is 20 ms: it may still be reordered.
        assert_eq!(e.repairs, 0);
        let due = r.poll_at().expect("reordering timer");
        assert!(due > at && due <= at + ms(6), "{due:?}");
        let e = r.on_timer(due, &mut out);
        assert_eq!(e.repairs, 1);
        assert_eq!(out.iter().map(seq_of).collect::<Vec<_>>(), [2 * MSS]);
        // The repair arrives: everything is acknowledged and released.
        out.clear();
        let e = r.on_ack(10 * MSS, &[], due + ms(20), &mut out);
        assert_eq!(e, Emitted::default());
        assert!(out.is_empty());
        assert_eq!(r.cached(), 0);
        assert_eq!(budget.used(), 0);
        assert_eq!(r.poll_at(), None);
    }

    #[test]
    fn several_holes_are_repaired_in_one_round_trip() {
        let (mut r, _, t0) = repair();
        send(&mut r, 0, 20, t0);
        let mut out = Vec::new();
        let at = t0 + ms(50);
        // Holes at 1, 5 and 9; the last SACK block arrives after the reordering window.
        r.on_ack(
            MSS,
            &[(2 * MSS, 5 * MSS), (6 * MSS, 9 * MSS), (10 * MSS, 20 * MSS)],
            at,
            &mut out,
        );
        let e = r.on_timer(r.poll_at().expect("timer"), &mut out);
        assert_eq!(e.repairs, 3);
        assert_eq!(
            out.iter().map(seq_of).collect::<Vec<_>>(),
            [MSS, 5 * MSS, 9 * MSS]
        );
        // Not repaired again before something sent after the repairs is delivered.
        out.clear();
        let later = at + ms(500);
        // Only the probe, which resends the highest segment not SACKed.
        assert_eq!(
            r.on_timer(later, &mut out),
            Emitted {
                repairs: 0,
                probes: 1
            }
        );
        assert_eq!(out.iter().map(seq_of).collect::<Vec<_>>(), [9 * MSS]);
    }

    #[test]
    fn a_lost_tail_is_found_by_the_probe() {
        let (mut r, _, t0) = repair();
        send(&mut r, 0, 10, t0);
        let mut out = Vec::new();
        // 0..6 arrive and are acknowledged; 6..10 are lost, so no SACK ever comes.
        r.on_ack(6 * MSS, &[], t0 + ms(20), &mut out);
        assert!(out.is_empty());
        let probe_at = r.poll_at().expect("probe timer");
        assert_eq!(probe_at, t0 + ms(20) + 2 * r.srtt().expect("srtt") + ms(10));
        let e = r.on_timer(probe_at, &mut out);
        assert_eq!(e.probes, 1);
        assert_eq!(out.iter().map(seq_of).collect::<Vec<_>>(), [9 * MSS]);
        // The peer SACKs the probe: 6, 7 and 8 were sent before it and are missing.
        out.clear();
        let sack_at = probe_at + ms(20);
        r.on_ack(6 * MSS, &[(9 * MSS, 10 * MSS)], sack_at, &mut out);
        assert_eq!(
            out.iter().map(seq_of).collect::<Vec<_>>(),
            [6 * MSS, 7 * MSS, 8 * MSS]
        );
        // One probe per quiet period.
        out.clear();
        assert_eq!(r.on_timer(sack_at, &mut out).probes, 0);
    }

    #[test]
    fn smoltcp_resending_a_range_restarts_its_segments() {
        let (mut r, _, t0) = repair();
        send(&mut r, 0, 4, t0);
        // smoltcp goes back after its timeout and sends 0..4000 cut as 0..1500, 1500..4000.
        let t1 = t0 + ms(200);
        r.on_sent(0, 1500, &packet(0), t1);
        r.on_sent(1500, 2500, &packet(1500), t1);
        assert_eq!(r.cached(), 4 * CHARGE);
        let mut out = Vec::new();
        r.on_ack(4 * MSS, &[], t1 + ms(20), &mut out);
        // Karn: nothing sent twice gives an RTT sample.
        assert_eq!(r.srtt(), None);
        assert_eq!(r.cached(), 0);
    }

    #[test]
    fn smoltcp_resending_sacked_data_is_redundant() {
        let (mut r, _, t0) = repair();
        send(&mut r, 0, 6, t0);
        let mut out = Vec::new();
        // Segment 1 lost; 2..6 SACKed.
        r.on_ack(MSS, &[(2 * MSS, 6 * MSS)], t0 + ms(10), &mut out);
        let t1 = t0 + ms(200);
        // smoltcp's timeout goes back over the window: the hole is needed, the rest not.
        assert_eq!(r.on_sent(MSS, MSS, &packet(MSS), t1), Sent::Again);
        assert_eq!(
            r.on_sent(2 * MSS, 2 * MSS, &packet(2 * MSS), t1),
            Sent::Redundant
        );
        assert_eq!(
            r.on_sent(4 * MSS, 1500, &packet(4 * MSS), t1),
            Sent::Redundant
        );
        // Straddling the hole: needed.
        assert_eq!(r.on_sent(500, MSS, &packet(500), t1), Sent::Again);
        // Below the acknowledged point: a keep-alive, which must go out.
        assert_eq!(r.on_sent(MSS - 1, 1, &packet(MSS - 1), t1), Sent::New);
        // SACKed data is skipped once only: if the peer discarded it, the next one goes.
        assert_eq!(
            r.on_sent(2 * MSS, MSS, &packet(2 * MSS), t1 + ms(400)),
            Sent::Again
        );
        // New data past the cache.
        assert_eq!(r.on_sent(6 * MSS, MSS, &packet(6 * MSS), t1), Sent::New);
    }

    #[test]
    fn the_caches_are_bounded_and_release_on_drop() {
        let budget = Budget::new(5 * CHARGE);
        let t0 = Instant::now();
        let mut a = Repair::new(3 * CHARGE, budget.clone(), t0);
        let mut b = Repair::new(1 << 20, budget.clone(), t0);
        send(&mut a, 0, 5, t0);
        assert_eq!(a.cached(), 3 * CHARGE, "the per-connection limit");
        send(&mut b, 0, 5, t0);
        assert_eq!(b.cached(), 2 * CHARGE, "the stack's budget");
        assert_eq!(budget.used(), 5 * CHARGE);
        // Past the bound nothing more is cached until the cache empties.
        let mut out = Vec::new();
        a.on_ack(MSS, &[], t0 + ms(5), &mut out);
        send(&mut a, 5 * MSS, 1, t0 + ms(6));
        assert_eq!(a.cached(), 2 * CHARGE);
        a.on_ack(6 * MSS, &[], t0 + ms(10), &mut out);
        assert_eq!(a.cached(), 0);
        send(&mut a, 6 * MSS, 1, t0 + ms(11));
        assert_eq!(a.cached(), CHARGE);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn tiny_segments_are_charged_for_their_entries() {
        let (mut r, budget, t0) = repair();
        for i in 0..100u32 {
            r.on_sent(i, 1, &packet(i), t0);
        }
        assert_eq!(budget.used(), 100 * (4 + SEG_OVERHEAD));
    }

    #[test]
    fn acks_of_unsent_data_and_keep_alives_change_nothing() {
        let (mut r, _, t0) = repair();
        send(&mut r, 0, 3, t0);
        let mut out = Vec::new();
        // A forged ACK beyond everything sent does not empty the cache.
        r.on_ack(10 * MSS, &[], t0 + ms(1), &mut out);
        assert_eq!(r.cached(), 3 * CHARGE);
        // smoltcp's keep-alive: the last sent byte again, one byte long.
        assert_eq!(r.on_sent(3 * MSS - 1, 1, &packet(0), t0 + ms(2)), Sent::New);
        r.on_ack(3 * MSS, &[], t0 + ms(20), &mut out);
        assert_eq!(
            r.srtt(),
            Some(ms(20)),
            "the last segment still gives its sample"
        );
    }

    #[test]
    fn a_fully_sacked_window_does_not_keep_the_probe_timer_in_the_past() {
        let (mut r, _, t0) = repair();
        send(&mut r, 0, 4, t0);
        let mut out = Vec::new();
        r.on_ack(0, &[(0, 4 * MSS)], t0 + ms(10), &mut out);
        let at = r.poll_at().expect("probe timer");
        assert_eq!(r.on_timer(at, &mut out).probes, 0);
        assert_eq!(r.poll_at(), None);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let (mut r, _, t0) = repair();
        let start = u32::MAX - 2 * MSS + 1;
        send(&mut r, start, 6, t0);
        let mut out = Vec::new();
        let hole = start.wrapping_add(3 * MSS);
        r.on_ack(
            hole,
            &[(hole.wrapping_add(MSS), start.wrapping_add(6 * MSS))],
            t0 + ms(30),
            &mut out,
        );
        r.on_timer(r.poll_at().expect("timer"), &mut out);
        assert_eq!(out.iter().map(seq_of).collect::<Vec<_>>(), [hole]);
        assert_eq!(r.cached(), 3 * CHARGE);
    }

    #[test]
    fn nonsense_acks_and_sacks_do_not_panic_or_emit() {
        let (mut r, budget, t0) = repair();
        send(&mut r, 1000, 3, t0);
        let mut out = Vec::new();
        for (ack, sacks) in [
            (0, vec![(5, 1)]),
            (500, vec![(0, u32::MAX)]),
            (u32::MAX, vec![(7, 7)]),
            (2_000_000_000, vec![]),
        ] {
            r.on_ack(ack, &sacks, t0 + ms(1), &mut out);
            r.on_timer(t0 + ms(1), &mut out);
        }
        assert!(budget.used() <= 3 * CHARGE);
    }
}
