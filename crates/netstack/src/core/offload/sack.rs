//! What the receiver reports in the SACK option of the ACKs smoltcp emits.
//!
//! smoltcp 0.14.0 reports one SACK block (the one holding the last segment, else the
//! lowest) and never a duplicate. netstack sees every inbound segment before smoltcp and
//! every ACK after it, so it keeps a record of the out-of-order data above the cumulative
//! ACK and writes the option itself:
//!
//! - up to 4 blocks (3 with timestamps: whatever room the other options leave), the
//!   block holding the most recently received segment first, then the most recently
//!   reported others (RFC 2018 section 4), so every block is repeated in several ACKs
//!   and a lost ACK loses nothing;
//! - a duplicate segment (below the cumulative ACK, or inside data already held) is
//!   reported once, as the first block of the next ACK, followed by the block holding it
//!   when it lies above the ACK (D-SACK, RFC 2883): the peer's RACK widens its
//!   reordering window and undoes a spurious recovery on it.
//!
//! The record never names data smoltcp does not hold: its ranges are the union of the
//! blocks smoltcp itself reported (smoltcp reports the block holding each out-of-order
//! segment it accepts, in the ACK that segment draws, and never discards held data), cut
//! at smoltcp's cumulative ACK. Segments are not taken on their word: smoltcp drops some
//! silently (one whose ACK number is older than the newest it saw, one past its window
//! or its reassembly limit). A duplicate is judged against the same truth.

use super::seq_ge;

/// Ranges the record holds at most: smoltcp's reassembly buffer holds as many (the
/// workspace enables its `assembler-max-segment-count-32` feature).
pub(crate) const MAX_RANGES: usize = 32;

/// SACK blocks that fit in one header at most (40 bytes of options, RFC 2018).
pub(crate) const MAX_BLOCKS: usize = 4;

/// One range of out-of-order data, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u32,
    end: u32,
    /// When a segment last arrived in it (a tick of [`Sack::clock`]).
    arrived: u64,
    /// When an ACK last reported it.
    reported: u64,
}

/// The receiver's record of one connection (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sack {
    /// Both SYNs offered SACK (the peer's, and ours as smoltcp or the SYN table made it).
    peer_permits: bool,
    we_permit: bool,
    /// smoltcp's cumulative ACK, as it last emitted it.
    acked: Option<u32>,
    /// Out-of-order data smoltcp reported above `acked`, in sequence order, disjoint and
    /// not adjacent.
    ranges: Vec<Range>,
    /// The segment that arrived last, if out of order: the range holding it is reported
    /// first once smoltcp confirms it.
    last: Option<u32>,
    /// A duplicate to report first in the next ACK.
    dup: Option<(u32, u32)>,
    /// Ticks once per segment and per report.
    clock: u64,
}

impl Sack {
    /// The peer's SYN arrived; `permits`: it offered SACK.
    pub(crate) fn on_peer_syn(&mut self, permits: bool) {
        self.peer_permits = permits;
        self.acked = None;
        self.ranges.clear();
        self.dup = None;
        self.last = None;
    }

    /// Our SYN or SYN-ACK went out; `permits`: it offered SACK.
    pub(crate) fn on_our_syn(&mut self, permits: bool) {
        self.we_permit = permits;
    }

    /// Whether ACKs of this connection carry SACK blocks.
    pub(crate) fn enabled(&self) -> bool {
        self.peer_permits && self.we_permit
    }

    /// smoltcp's cumulative ACK, as it last emitted it.
    pub(crate) fn acked(&self) -> Option<u32> {
        self.acked
    }

    /// Whether a duplicate waits to be reported.
    pub(crate) fn dup_pending(&self) -> bool {
        self.dup.is_some()
    }

    /// A segment with payload `[seq, seq + len)` arrived from the peer (before smoltcp
    /// sees it).
    pub(crate) fn on_data(&mut self, seq: u32, len: u32) {
        if len == 0 {
            return;
        }
        self.clock += 1;
        let end = seq.wrapping_add(len);
        self.last = None;
        // A duplicate: data smoltcp acknowledged or reported as held.
        if let Some(acked) = self.acked
            && !seq_ge(seq, acked)
        {
            self.dup = Some((seq, if seq_ge(acked, end) { end } else { acked }));
            return;
        }
        self.last = Some(seq);
        for r in &self.ranges {
            let s = if seq_ge(seq, r.start) { seq } else { r.start };
            let e = if seq_ge(r.end, end) { end } else { r.end };
            if s != e && seq_ge(e, s) {
                self.dup = Some((s, e));
                break;
            }
        }
    }

    /// smoltcp emits an ACK of `ack` with `block` (its own SACK block, if any).
    pub(crate) fn on_our_ack(&mut self, ack: u32, block: Option<(u32, u32)>) {
        self.acked = Some(ack);
        self.ranges.retain(|r| !seq_ge(ack, r.end));
        if let Some(first) = self.ranges.first_mut()
            && !seq_ge(first.start, ack)
        {
            first.start = ack;
        }
        if let Some((s, e)) = block
            && seq_ge(s, ack)
            && s != ack
            && seq_ge(e, s)
            && s != e
        {
            self.add(s, e);
        }
    }

    /// Joins `[start, end)`, which smoltcp holds, to the ranges.
    fn add(&mut self, start: u32, end: u32) {
        // The ranges it touches (overlaps or abuts): `lo..hi`.
        let lo = self
            .ranges
            .iter()
            .position(|r| seq_ge(r.end, start))
            .unwrap_or(self.ranges.len());
        let mut hi = lo;
        while hi < self.ranges.len() && seq_ge(end, self.ranges[hi].start) {
            hi += 1;
        }
        let newest = self
            .last
            .is_some_and(|l| seq_ge(l, start) && !seq_ge(l, end));
        let arrived = if newest { self.clock } else { 0 };
        if lo == hi {
            if self.ranges.len() >= MAX_RANGES {
                return;
            }
            self.ranges.insert(
                lo,
                Range {
                    start,
                    end,
                    arrived,
                    reported: 0,
                },
            );
            return;
        }
        let merged = Range {
            start: self.ranges[lo].start.min_seq(start),
            end: self.ranges[hi - 1].end.max_seq(end),
            arrived: self.ranges[lo..hi]
                .iter()
                .map(|r| r.arrived)
                .max()
                .unwrap_or(0)
                .max(arrived),
            reported: self.ranges[lo..hi]
                .iter()
                .map(|r| r.reported)
                .max()
                .unwrap_or(0),
        };
        self.ranges.drain(lo + 1..hi);
        self.ranges[lo] = merged;
    }

    /// The blocks for a duplicate ACK of `ack` the stack adds inside an out-of-order run:
    /// `first` (the run's range up to a wire segment end), then the others as
    /// [`Sack::blocks`] orders them.
    pub(crate) fn blocks_led_by(
        &mut self,
        ack: u32,
        room: usize,
        first: (u32, u32),
    ) -> Vec<(u32, u32)> {
        let mut out = self.blocks(ack, room, false);
        // Ranges are disjoint: drop the one holding `first`.
        out.retain(|&(s, e)| seq_ge(first.0, e) || seq_ge(s, first.1));
        if room > 0 {
            out.insert(0, first);
            out.truncate(room);
        }
        out
    }

    /// The blocks for an ACK of `ack`, at most `room`: a pending duplicate first (only
    /// with `dup`, which reports it), then the range that last got data, then the most
    /// recently reported others. Marks the ranges reported.
    pub(crate) fn blocks(&mut self, ack: u32, room: usize, dup: bool) -> Vec<(u32, u32)> {
        let mut out = Vec::with_capacity(room.min(MAX_BLOCKS));
        if room == 0 {
            return out;
        }
        self.clock += 1;
        let dup = if dup { self.dup.take() } else { None };
        // Only ranges above the ACK (an intermediate ACK is below smoltcp's).
        let mut order: Vec<usize> = (0..self.ranges.len())
            .filter(|&i| seq_ge(self.ranges[i].start, ack) && self.ranges[i].start != ack)
            .collect();
        let newest = order
            .iter()
            .copied()
            .max_by_key(|&i| self.ranges[i].arrived);
        let holding = dup.and_then(|(s, e)| {
            order
                .iter()
                .copied()
                .find(|&i| seq_ge(s, self.ranges[i].start) && seq_ge(self.ranges[i].end, e))
        });
        if let Some((s, e)) = dup {
            out.push((s, e));
        }
        // The range holding a duplicate above the ACK comes next (RFC 2883), else the
        // one that got the newest segment.
        if let Some(first) = holding.or(newest) {
            order.retain(|&j| j != first);
            order.insert(0, first);
        }
        if order.len() > 1 {
            let rest = &mut order[1..];
            rest.sort_by_key(|&i| {
                let r = &self.ranges[i];
                std::cmp::Reverse((r.reported, r.arrived))
            });
        }
        for i in order {
            if out.len() >= room {
                break;
            }
            let r = &mut self.ranges[i];
            r.reported = self.clock;
            out.push((r.start, r.end));
        }
        out
    }
}

/// Sequence-space minimum and maximum.
trait SeqOrd {
    fn min_seq(self, other: u32) -> u32;
    fn max_seq(self, other: u32) -> u32;
}

impl SeqOrd for u32 {
    fn min_seq(self, other: u32) -> u32 {
        if seq_ge(other, self) { self } else { other }
    }

    fn max_seq(self, other: u32) -> u32 {
        if seq_ge(self, other) { self } else { other }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sack(next: u32) -> Sack {
        let mut s = Sack::default();
        s.on_peer_syn(true);
        s.on_our_syn(true);
        s.on_our_ack(next, None);
        s
    }

    /// Segment `[seq, seq + len)` arrives and smoltcp acknowledges `ack` reporting
    /// `block`, as it does for every out-of-order segment it accepts.
    fn arrive(s: &mut Sack, seq: u32, len: u32, ack: u32, block: Option<(u32, u32)>) {
        s.on_data(seq, len);
        s.on_our_ack(ack, block);
    }

    #[test]
    fn blocks_name_the_newest_range_first_then_the_recently_reported() {
        let base = u32::MAX - 5000;
        let at = |k: u32| base.wrapping_add(1000 * k);
        let mut s = sack(at(0));
        assert!(s.enabled());
        // Segments 2, 4, 6, 8, 10 arrive (1, 3, 5, ... lost): five ranges.
        for k in [2, 4, 6, 8, 10] {
            arrive(&mut s, at(k), 1000, at(0), Some((at(k), at(k + 1))));
            let b = s.blocks(at(0), 4, true);
            assert_eq!(b[0], (at(k), at(k + 1)), "the newest first");
            // Then the previously reported ones, most recent first.
            let want: Vec<(u32, u32)> = (1..=3)
                .filter_map(|d| k.checked_sub(2 * d))
                .filter(|&j| j >= 2)
                .map(|j| (at(j), at(j + 1)))
                .collect();
            assert_eq!(b[1..], want[..], "after {k}");
        }
        // Segment 3 joins 2 and 4: that range is the newest.
        arrive(&mut s, at(3), 1000, at(0), Some((at(2), at(5))));
        let b = s.blocks(at(0), 3, true);
        assert_eq!(b, [(at(2), at(5)), (at(10), at(11)), (at(8), at(9))]);
        // Segments 0 and 1 fill the first hole: the ACK moves to 5, the rest stays.
        s.on_data(at(0), 1000);
        s.on_data(at(1), 1000);
        s.on_our_ack(at(5), Some((at(6), at(7))));
        let b = s.blocks(at(5), 4, true);
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|&(s, _)| seq_ge(s, at(6))), "{b:?}");
    }

    #[test]
    fn duplicates_are_reported_once_first_with_the_range_holding_them() {
        let base = 7_000u32;
        let mut s = sack(base);
        arrive(&mut s, base, 1000, base + 1000, None);
        // A resend of acknowledged data: a D-SACK block below the ACK.
        s.on_data(base, 1000);
        assert_eq!(s.blocks(base + 1000, 4, true), [(base, base + 1000)]);
        assert!(s.blocks(base + 1000, 4, true).is_empty(), "reported once");
        // Out of order, then the same segment again: D-SACK, then its range.
        let r3 = (base + 3000, base + 4000);
        let r5 = (base + 5000, base + 6000);
        arrive(&mut s, r3.0, 1000, base + 1000, Some(r3));
        arrive(&mut s, r5.0, 1000, base + 1000, Some(r5));
        arrive(&mut s, r3.0, 1000, base + 1000, Some(r3));
        assert_eq!(s.blocks(base + 1000, 4, true), [r3, r3, r5]);
        // Partly old data: the old part is the duplicate.
        s.on_data(base + 500, 1000);
        assert_eq!(s.blocks(base + 1000, 1, true), [(base + 500, base + 1000)]);
    }

    #[test]
    fn only_what_smoltcp_reported_is_named() {
        let base = 1u32;
        let mut s = sack(base);
        // smoltcp dropped this segment (no ACK, no block): nothing to report.
        s.on_data(base + 5000, 1000);
        assert!(s.blocks(base, 4, true).is_empty());
        // Nor a duplicate of it.
        s.on_data(base + 5000, 1000);
        assert!(s.blocks(base, 4, true).is_empty());
        // Blocks reported earlier stay after smoltcp moved on to others, until its ACK
        // passes them; a block below the ACK is cut.
        s.on_our_ack(base, Some((base + 2000, base + 3000)));
        s.on_our_ack(base, Some((base + 4000, base + 4500)));
        assert_eq!(s.blocks(base, 4, true).len(), 2);
        s.on_our_ack(base + 3000, None);
        assert_eq!(s.blocks(base + 3000, 4, true), [(base + 4000, base + 4500)]);
        // At most as many ranges as smoltcp holds.
        for k in 0..=MAX_RANGES as u32 {
            let at = base + 10_000 + 2000 * k;
            s.on_our_ack(base + 3000, Some((at, at + 1000)));
        }
        assert_eq!(s.ranges.len(), MAX_RANGES);
        // Without SACK on both SYNs, nothing is reported.
        let mut s = Sack::default();
        s.on_peer_syn(true);
        s.on_our_syn(false);
        assert!(!s.enabled());
    }
}
