//! Counters the agent exports as metrics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a parseable IPv4/IPv6 packet, or a bad TCP/UDP header.
    Malformed,
    /// Destination is not one of the stack's addresses.
    NotForUs,
    /// IP fragments, IPv6 extension headers and other features the stack does not handle.
    Unsupported,
    /// UDP to a port nobody bound, or TCP to a port nobody listens on (answered with RST).
    NoSocket,
    /// A connection refused because a limit was reached (answered with RST).
    LimitReached,
    /// An immediate reply (RST, echo reply) was not sent: the outbound queue was full.
    QueueFull,
}

impl DropReason {
    /// Every reason, in [`DropCounts`] order.
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::NotForUs,
        DropReason::Unsupported,
        DropReason::NoSocket,
        DropReason::LimitReached,
        DropReason::QueueFull,
    ];

    /// A short metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotForUs => "not_for_us",
            DropReason::Unsupported => "unsupported",
            DropReason::NoSocket => "no_socket",
            DropReason::LimitReached => "limit_reached",
            DropReason::QueueFull => "queue_full",
        }
    }

    fn index(self) -> usize {
        match self {
            DropReason::Malformed => 0,
            DropReason::NotForUs => 1,
            DropReason::Unsupported => 2,
            DropReason::NoSocket => 3,
            DropReason::LimitReached => 4,
            DropReason::QueueFull => 5,
        }
    }
}

/// Dropped inbound packets by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; 6]);

impl DropCounts {
    /// Packets dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A snapshot of a stack's gauges and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetstackStats {
    /// TCP sockets in any state (open, closing). Half-open connections have none.
    pub tcp_sockets: usize,
    /// Established connections waiting in listeners' accept queues.
    pub pending_accepts: usize,
    /// Half-open connections (SYN received, handshake not finished): SYN table entries.
    pub half_open: usize,
    /// IP packets taken in.
    pub rx_packets: u64,
    /// IP packets handed out.
    pub tx_packets: u64,
    /// Inbound packets dropped, by reason.
    pub dropped: DropCounts,
    /// TCP segments the sender sent again because RACK or its timeout found them lost.
    pub tcp_repaired: u64,
    /// Tail-loss probes the sender sent.
    pub tcp_probes: u64,
    /// Segments smoltcp emitted past the senders' memory bound (smoltcp's own timeout
    /// emits them again later).
    pub tcp_repairs_skipped: u64,
    /// Bytes the senders hold now: packets sent and not yet acknowledged, and packets
    /// waiting for the congestion window.
    pub tcp_repair_bytes: usize,
    /// Half-open connections dropped to make room for a new SYN at `max_pending_syns` (a
    /// SYN flood).
    pub half_open_evicted: u64,
    /// TCP segments smoltcp emitted again (its fast retransmit or timeout).
    pub tcp_smoltcp_resent: u64,
    /// Of those, the ones not sent: the sender holds their bytes and resends on its
    /// own schedule (with the sender on, all of them).
    pub tcp_resends_dropped: u64,
    /// Retransmission timeouts of the senders.
    pub tcp_rtos: u64,
    /// Window cuts undone because every retransmission of the recovery was spurious.
    pub tcp_undos: u64,
    /// Peer segments the senders ignored: outside the window we advertised, or
    /// acknowledging data never sent (see `sender.rs`).
    pub tcp_segments_ignored: u64,
    /// Bytes of TCP rings mapped now, counted against
    /// [`tcp_buffer_budget`](crate::NetstackConfig::tcp_buffer_budget).
    pub tcp_ring_bytes: usize,
    /// Inbound wire segments joined into larger ones before smoltcp saw them (segment
    /// offload; see [`NetstackConfig::segment_offload`](crate::NetstackConfig)).
    pub tcp_segments_joined: u64,
    /// Outbound wire segments cut from smoltcp's larger ones.
    pub tcp_segments_split: u64,
    /// Short wire segments not sent yet that were joined to the data smoltcp emitted
    /// after them (so that the gateway's GRO can join the stream's wire segments).
    pub tcp_tails_joined: u64,
    /// Cumulative ACKs the stack added between smoltcp's (one per two wire segments).
    pub tcp_acks_added: u64,
    /// Pure ACKs only the sender saw: a newer one of the same batch went to smoltcp.
    pub tcp_acks_folded: u64,
    /// Our ACKs whose SACK option the stack wrote (several blocks, see `offload/sack.rs`).
    pub tcp_acks_sacked: u64,
    /// Duplicate segments reported to the peer (D-SACK, RFC 2883).
    pub tcp_dsacks: u64,
}

/// The live counters behind [`NetstackStats`].
#[derive(Debug)]
pub(crate) struct Counters {
    created: Instant,
    /// Seconds after `created` of the last "limit reached" warning, plus one (0: never).
    limit_warned: AtomicU64,
    pub(crate) tcp_sockets: AtomicUsize,
    pub(crate) pending_accepts: AtomicUsize,
    pub(crate) half_open: AtomicUsize,
    pub(crate) rx_packets: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    drops: [AtomicU64; 6],
    tcp_repaired: AtomicU64,
    tcp_probes: AtomicU64,
    tcp_repairs_skipped: AtomicU64,
    pub(crate) half_open_evicted: AtomicU64,
    tcp_smoltcp_resent: AtomicU64,
    tcp_resends_dropped: AtomicU64,
    tcp_rtos: AtomicU64,
    tcp_undos: AtomicU64,
    tcp_segments_ignored: AtomicU64,
    pub(crate) tcp_ring_bytes: AtomicUsize,
    pub(crate) tcp_joined: AtomicU64,
    pub(crate) tcp_split: AtomicU64,
    pub(crate) tcp_tails_joined: AtomicU64,
    pub(crate) tcp_acks_added: AtomicU64,
    pub(crate) tcp_acks_folded: AtomicU64,
    pub(crate) tcp_acks_sacked: AtomicU64,
    pub(crate) tcp_dsacks: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            created: Instant::now(),
            limit_warned: AtomicU64::new(0),
            tcp_sockets: AtomicUsize::new(0),
            pending_accepts: AtomicUsize::new(0),
            half_open: AtomicUsize::new(0),
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            drops: Default::default(),
            tcp_repaired: AtomicU64::new(0),
            tcp_probes: AtomicU64::new(0),
            tcp_repairs_skipped: AtomicU64::new(0),
            half_open_evicted: AtomicU64::new(0),
            tcp_smoltcp_resent: AtomicU64::new(0),
            tcp_resends_dropped: AtomicU64::new(0),
            tcp_rtos: AtomicU64::new(0),
            tcp_undos: AtomicU64::new(0),
            tcp_segments_ignored: AtomicU64::new(0),
            tcp_ring_bytes: AtomicUsize::new(0),
            tcp_joined: AtomicU64::new(0),
            tcp_split: AtomicU64::new(0),
            tcp_tails_joined: AtomicU64::new(0),
            tcp_acks_added: AtomicU64::new(0),
            tcp_acks_folded: AtomicU64::new(0),
            tcp_acks_sacked: AtomicU64::new(0),
            tcp_dsacks: AtomicU64::new(0),
        }
    }
}

/// At most one "limit reached" warning per this many seconds.
const LIMIT_WARN_EVERY_SECS: u64 = 60;

impl Counters {
    /// Adds what a connection's sender did.
    pub(crate) fn sender(&self, e: crate::sender::Events) {
        if e == crate::sender::Events::default() {
            return;
        }
        for (counter, n) in [
            (&self.tcp_repaired, e.retransmits),
            (&self.tcp_probes, e.probes),
            (&self.tcp_repairs_skipped, e.deferred),
            (&self.tcp_smoltcp_resent, e.smoltcp_resends),
            (&self.tcp_resends_dropped, e.smoltcp_resends),
            (&self.tcp_rtos, e.rtos),
            (&self.tcp_undos, e.undos),
            (&self.tcp_segments_ignored, e.ignored),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    pub(crate) fn drop(&self, reason: DropReason) {
        tracing::trace!(reason = reason.as_str(), "netstack: packet dropped");
        self.drops[reason.index()].fetch_add(1, Relaxed);
        if reason == DropReason::LimitReached {
            self.warn_limit();
        }
    }

    /// Connections refused at a limit are something an operator may need to act on
    /// (raise the limit or find the flood): say so, once a minute at most.
    fn warn_limit(&self) {
        let now = self.created.elapsed().as_secs() + 1;
        let last = self.limit_warned.load(Relaxed);
        if (last == 0 || now >= last + LIMIT_WARN_EVERY_SECS)
            && self
                .limit_warned
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(
                refused = self.drops[DropReason::LimitReached.index()].load(Relaxed),
                half_open = self.half_open.load(Relaxed),
                tcp_sockets = self.tcp_sockets.load(Relaxed),
                "netstack: refusing connections: a connection limit is reached"
            );
        }
    }

    pub(crate) fn snapshot(&self) -> NetstackStats {
        let mut dropped = DropCounts::default();
        for (slot, counter) in dropped.0.iter_mut().zip(&self.drops) {
            *slot = counter.load(Relaxed);
        }
        NetstackStats {
            tcp_sockets: self.tcp_sockets.load(Relaxed),
            pending_accepts: self.pending_accepts.load(Relaxed),
            half_open: self.half_open.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            dropped,
            tcp_repaired: self.tcp_repaired.load(Relaxed),
            tcp_probes: self.tcp_probes.load(Relaxed),
            tcp_repairs_skipped: self.tcp_repairs_skipped.load(Relaxed),
            tcp_repair_bytes: 0,
            half_open_evicted: self.half_open_evicted.load(Relaxed),
            tcp_smoltcp_resent: self.tcp_smoltcp_resent.load(Relaxed),
            tcp_resends_dropped: self.tcp_resends_dropped.load(Relaxed),
            tcp_rtos: self.tcp_rtos.load(Relaxed),
            tcp_undos: self.tcp_undos.load(Relaxed),
            tcp_segments_ignored: self.tcp_segments_ignored.load(Relaxed),
            tcp_ring_bytes: self.tcp_ring_bytes.load(Relaxed),
            tcp_segments_joined: self.tcp_joined.load(Relaxed),
            tcp_segments_split: self.tcp_split.load(Relaxed),
            tcp_tails_joined: self.tcp_tails_joined.load(Relaxed),
            tcp_acks_added: self.tcp_acks_added.load(Relaxed),
            tcp_acks_folded: self.tcp_acks_folded.load(Relaxed),
            tcp_acks_sacked: self.tcp_acks_sacked.load(Relaxed),
            tcp_dsacks: self.tcp_dsacks.load(Relaxed),
        }
    }
}
