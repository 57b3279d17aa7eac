//! Buffer memory that follows the path: what each TCP connection's rings take from the
//! stack-wide budget ([`NetstackConfig::tcp_buffer_budget`]), and how its send memory
//! grows with the measured bandwidth-delay product.
//!
//! What smoltcp 0.14's rings allow (see the `smoltcp_assumption_*` tests in `sim.rs`):
//!
//! - A ring's size is fixed when its socket is created, and the window scale offered in
//!   the SYN follows from the receive ring's size. So a connection's receive ring is sized
//!   at SYN time, for the largest window it may ever advertise.
//! - The receive ring never rewinds: reading does not move the write position back to the
//!   start even when the ring empties, so a connection that received as many bytes as its
//!   ring holds has written every page of it. Giving pages back as they are read would
//!   keep only the window resident, but each page then faults in again on the next lap
//!   (measured: copying through a ring that releases what was read runs at 0.58 GB/s
//!   against 8.2 GB/s). So a receive ring is charged to the budget in full at SYN time:
//!   the budget bounds resident memory, and no window edge ever has to retreat.
//! - The send ring rewinds when the application queues data into an empty ring, and its
//!   free space can be handed back to the kernel (see `buffer.rs`). So a send ring is
//!   charged page by page as its write position first reaches them ([`Rings::admit_tx`]);
//!   an idle release gives the pages back. A writer that would need a page the budget
//!   cannot give waits until the queue drains (the ring then rewinds into pages already
//!   charged). Pages behind the read position are out of reach until the writer wraps,
//!   though, so a connection streaming a response writes up to the response's size (or
//!   the ring's) before it rewinds: with 64 connections each sending 1 MiB, a ring larger
//!   than 512 KiB would double their resident send memory. So only connections created
//!   while under a quarter of the budget is taken get a send ring of `tcp_tx_buffer_max`
//!   (like their receive ring of `tcp_rx_buffer_max`); the others keep `tcp_tx_buffer`
//!   ([`NetstackConfig::ring_sizes`]).
//!
//! The send side autotunes like Linux's: the bytes a connection's sender may hold (and so
//! queue) start at `tcp_tx_buffer` and grow to twice the bytes acknowledged per smoothed
//! round trip, up to its send ring ([`Rings::on_ack`]). The sender's own packet memory is
//! charged to the same budget, within the senders' share of it (see `sender.rs` and
//! `NetstackConfig::tcp_buffer_budget`).
//!
//! [`NetstackConfig::tcp_buffer_budget`]: crate::NetstackConfig::tcp_buffer_budget
//! [`NetstackConfig::ring_sizes`]: crate::config::NetstackConfig::ring_sizes

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::sender::{Budget, Sender};

/// Granularity of send-ring charges (the usual page size; a larger real page only means
/// the charge rounds differently, the ring is page-aligned either way).
const PAGE: usize = 4096;

/// Per-packet memory the sender charges beyond the payload: headers and its entry (see
/// `Sender::reserve`), as a factor of 1/8 on top of the payload.
fn with_overhead(payload: usize) -> usize {
    payload + payload / 8
}

/// The ring memory one connection has taken from the budget, and its send-side tuning.
#[derive(Debug)]
pub(crate) struct Rings {
    /// Receive ring size, charged in full.
    rx: usize,
    /// Send ring size (reserved; charged as used).
    tx_ring: usize,
    /// Bytes of the send ring charged: an upper bound of its resident pages.
    tx_charged: usize,
    /// Charged at SYN time and kept until the connection goes.
    tx_base: usize,
    /// Upper bound of the send ring's write offset since it last rewound.
    tx_pos: usize,
    /// Start of the current measurement of acknowledged bytes: (when, ACK number).
    mark: Option<(Instant, u32)>,
}

impl Rings {
    /// A connection that was charged `rx + tx_base` bytes at SYN time, with a send ring of
    /// `tx_ring` bytes.
    pub(crate) fn new(rx: usize, tx_base: usize, tx_ring: usize) -> Self {
        Self {
            rx,
            tx_ring,
            tx_charged: tx_base,
            tx_base,
            tx_pos: 0,
            mark: None,
        }
    }

    /// Bytes charged to the budget now.
    pub(crate) fn charged(&self) -> usize {
        self.rx + self.tx_charged
    }

    /// The receive ring's size.
    pub(crate) fn rx(&self) -> usize {
        self.rx
    }

    /// The send memory charged at SYN time.
    pub(crate) fn tx_base(&self) -> usize {
        self.tx_base
    }

    /// How many of `want` bytes may be queued in the send ring now, which holds `queued`
    /// bytes; charges the pages they may newly touch. Call [`Rings::queued_tx`] with what
    /// was queued after all.
    pub(crate) fn admit_tx(
        &mut self,
        budget: &Budget,
        ring_bytes: &AtomicUsize,
        queued: usize,
        want: usize,
    ) -> usize {
        if queued == 0 {
            // smoltcp rewinds an empty ring when data is queued into it.
            self.tx_pos = 0;
        }
        let want = want.min(self.tx_ring.saturating_sub(queued));
        // Past the ring's end the write position wraps: every page is in use by then.
        let end = self.tx_pos.saturating_add(want);
        let need = if end >= self.tx_ring {
            self.tx_ring
        } else {
            end.next_multiple_of(PAGE).min(self.tx_ring)
        };
        if need > self.tx_charged {
            // As many of the pages as the budget has room for.
            let room = budget.limit().saturating_sub(budget.used()) / PAGE * PAGE;
            let extra = (need - self.tx_charged).min(room);
            if extra > 0 && budget.take(extra, false) {
                ring_bytes.fetch_add(extra, Relaxed);
                self.tx_charged += extra;
            }
        }
        if need <= self.tx_charged {
            want
        } else if self.tx_pos >= self.tx_ring {
            0
        } else {
            want.min(self.tx_charged.saturating_sub(self.tx_pos))
        }
    }

    /// `n` bytes were queued in the send ring.
    pub(crate) fn queued_tx(&mut self, n: usize) {
        self.tx_pos = self.tx_pos.saturating_add(n);
    }

    /// The send ring's pages went back to the kernel (its queue was empty): give their
    /// charge back, down to what was charged at SYN time.
    pub(crate) fn released_tx(&mut self, budget: &Budget, ring_bytes: &AtomicUsize) {
        let extra = self.tx_charged - self.tx_base;
        if extra > 0 {
            budget.give(extra);
            ring_bytes.fetch_sub(extra, Relaxed);
            self.tx_charged = self.tx_base;
        }
        self.tx_pos = 0;
    }

    /// Gives back everything charged (the connection is gone); returns how much.
    pub(crate) fn release_all(&mut self, budget: &Budget, ring_bytes: &AtomicUsize) -> usize {
        let all = self.charged();
        budget.give(all);
        ring_bytes.fetch_sub(all, Relaxed);
        self.rx = 0;
        self.tx_charged = 0;
        self.tx_base = 0;
        all
    }

    /// The peer acknowledged up to `ack` at `now`: once per smoothed round trip, let
    /// `sender` hold twice what was acknowledged in it (Linux's send-buffer autotuning
    /// follows the congestion window the same way), within the send ring and half of
    /// `budget` (the senders' share), and while that has room for it.
    pub(crate) fn on_ack(&mut self, sender: &mut Sender, budget: &Budget, ack: u32, now: Instant) {
        let Some(srtt) = sender.srtt() else {
            return;
        };
        let Some((since, from)) = self.mark else {
            self.mark = Some((now, ack));
            return;
        };
        // A round trip, and not less than a millisecond (a clock tick on some systems).
        if now.duration_since(since) < srtt.max(Duration::from_millis(1)) {
            return;
        }
        self.mark = Some((now, ack));
        let acked = ack.wrapping_sub(from) as usize;
        // At most half the senders' share: one connection alone never fills it (past it,
        // what smoltcp emits beyond the reservations is dropped and waits for smoltcp's
        // own backstop timer).
        let cap = with_overhead(self.tx_ring).min(budget.limit() / 2);
        let want = with_overhead(2 * acked).min(cap);
        let limit = sender.limit();
        // Grow only while the senders' share of the budget has room for the growth.
        if want > limit && want - limit <= budget.room() {
            sender.grow_limit(want);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_ring_pages_are_charged_as_first_used_and_given_back_on_release() {
        let budget = Budget::new(64 << 10);
        let bytes = AtomicUsize::new(0);
        budget.take(8 << 10, false);
        let mut rings = Rings::new(0, 8 << 10, 256 << 10);
        // Within what was charged at SYN time: nothing more.
        assert_eq!(rings.admit_tx(&budget, &bytes, 0, 5000), 5000);
        rings.queued_tx(5000);
        assert_eq!(budget.used(), 8 << 10);
        // Past it, page by page.
        assert_eq!(rings.admit_tx(&budget, &bytes, 5000, 10_000), 10_000);
        rings.queued_tx(10_000);
        assert_eq!(rings.charged(), 16 << 10);
        assert_eq!(budget.used(), 16 << 10);
        // The budget runs out: only up to what is charged.
        let got = rings.admit_tx(&budget, &bytes, 15_000, 200 << 10);
        assert_eq!(rings.charged(), 64 << 10);
        assert_eq!(got, (64 << 10) - 15_000, "up to the last charged byte");
        rings.queued_tx(got);
        assert_eq!(rings.admit_tx(&budget, &bytes, 64 << 10, 1000), 0);
        // Drained, the ring rewinds into pages already charged.
        assert_eq!(rings.admit_tx(&budget, &bytes, 0, 1000), 1000);
        rings.released_tx(&budget, &bytes);
        assert_eq!(budget.used(), 8 << 10);
        assert_eq!(rings.release_all(&budget, &bytes), 8 << 10);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_senders_share_counts_against_the_whole_budget() {
        let budget = Budget::new(100);
        let senders = budget.share(30);
        assert!(senders.take(20, false));
        assert_eq!(
            (budget.used(), senders.used(), senders.room()),
            (20, 20, 10)
        );
        assert!(!senders.take(20, false), "past the share");
        assert!(budget.take(75, false), "the rings' part");
        assert_eq!(
            senders.room(),
            5,
            "the whole budget is nearer than the share"
        );
        assert!(!senders.take(6, false));
        assert_eq!(
            (senders.used(), budget.used()),
            (20, 95),
            "a failed take takes nothing"
        );
        assert!(senders.take(50, true), "forced");
        senders.give(70);
        assert_eq!((senders.used(), budget.used()), (0, 75));
    }

    #[test]
    fn a_wrapped_send_ring_is_charged_in_full() {
        let budget = Budget::new(1 << 20);
        let bytes = AtomicUsize::new(0);
        let mut rings = Rings::new(0, 0, 64 << 10);
        let mut queued = 0;
        for _ in 0..10 {
            let n = rings.admit_tx(&budget, &bytes, queued.min(1), 30_000);
            rings.queued_tx(n);
            queued += n;
        }
        assert_eq!(rings.charged(), 64 << 10, "never more than the ring");
        assert_eq!(bytes.load(Relaxed), 64 << 10);
    }
}
