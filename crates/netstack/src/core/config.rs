//! Configuration of a [`Netstack`](crate::Netstack).

use std::net::IpAddr;
use std::time::Duration;

/// Which congestion controller the stack's TCP sender runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CongestionControl {
    /// Cubic (RFC 9438) with HyStart++ and spurious-loss undo: loss-based, so random
    /// loss costs it a window cut per recovery.
    Cubic,
    /// Model-based (BBR-style): paces at the measured bottleneck bandwidth and bounds
    /// what is in flight to about two bandwidth-delay products; random loss does not
    /// cut the window, persistent heavy loss lowers it to one BDP.
    #[default]
    Bbr,
}

/// Limits and tuning of one userspace stack.
///
/// Every queue and table it describes is bounded; past a bound a new connection is
/// refused with RST and the packet is counted in [`DropCounts`](crate::DropCounts).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetstackConfig {
    /// The virtual IPs the stack answers on: at most one IPv4 and one IPv6 address
    /// (smoltcp's interface holds two). Outbound connections use the first address
    /// of the remote's family.
    pub addresses: Vec<IpAddr>,
    /// The path MTU in bytes: the largest IP packet the stack puts on the wire (default
    /// 1420, WireGuard's). UDP datagrams and ICMP messages obey it, and the TCP MSS
    /// announced to peers and every outbound TCP segment follow from it.
    ///
    /// It is kept apart from the segment size smoltcp works in internally: with
    /// [`segment_offload`](Self::segment_offload), smoltcp handles segments of up to
    /// 64 KiB and the stack splits them to this MTU on the way out.
    pub path_mtu: usize,
    /// Segmentation offload inside the stack (default on): smoltcp works in TCP segments
    /// of up to 64 KiB, split to the path MTU on the way out and joined from in-order
    /// wire segments on the way in, which saves most of smoltcp's per-segment work on
    /// bulk transfers. On the wire nothing changes: the MSS announced to peers follows
    /// `path_mtu`, and peers get at least one ACK per two segments. Off: smoltcp works
    /// in wire segments (kept as a baseline for measurements). Needs the sender
    /// (`tcp_sender`), which repairs losses per wire segment; off without it.
    pub segment_offload: bool,
    /// Bytes of packets the outbound queue holds at most (default 8 MiB), beside
    /// [`max_outbound_packets`](Self::max_outbound_packets): past either the stack stops
    /// emitting.
    pub max_outbound_bytes: usize,
    /// Receive ring of a TCP connection in bytes (default 1 MiB) when the stack is busy:
    /// see [`tcp_rx_buffer_max`](Self::tcp_rx_buffer_max) and
    /// [`tcp_buffer_budget`](Self::tcp_buffer_budget). The advertised window (with window
    /// scaling) follows from the ring. Pages are committed only when used.
    pub tcp_rx_buffer: usize,
    /// Receive ring of a TCP connection while the budget is mostly free (default 8 MiB,
    /// at least [`tcp_rx_buffer`](Self::tcp_rx_buffer)): a window for about 80 MB/s at a
    /// 100 ms round trip. The window scale offered at SYN time allows for all of it.
    pub tcp_rx_buffer_max: usize,
    /// Send memory a TCP connection starts with in bytes (default 512 KiB): what it may
    /// queue and hold unacknowledged before its sender has measured the path, and its
    /// send ring when the stack is busy (see [`tcp_buffer_budget`](Self::tcp_buffer_budget)).
    ///
    /// A connection created while under a quarter of the budget is taken has a send ring
    /// of [`tcp_tx_buffer_max`](Self::tcp_tx_buffer_max), and its send memory grows with
    /// the measured bandwidth-delay product (twice the bytes acknowledged per smoothed
    /// round trip) up to that, as Linux's autotuning does, while the senders' share of the
    /// budget has room.
    /// Send-ring pages are charged to the budget as they are first used and returned to
    /// the kernel (and the budget) once a connection that sent 256 KiB or more has
    /// everything acknowledged and stays idle.
    pub tcp_tx_buffer: usize,
    /// The most send memory one TCP connection may grow to (default 8 MiB, at least
    /// [`tcp_tx_buffer`](Self::tcp_tx_buffer)): the send ring of a connection created
    /// while under a quarter of the budget is taken (virtual memory until used).
    pub tcp_tx_buffer_max: usize,
    /// Bytes of TCP buffer memory all connections together may take (default 512 MiB):
    /// receive rings, the used pages of send rings, and the packets the senders hold
    /// (sent and not yet acknowledged, or waiting for the congestion window). It bounds
    /// the stack's buffer memory whatever the connection count.
    ///
    /// A receive ring is charged in full when its connection is created (at SYN time): a
    /// peer can fill it, and smoltcp's ring cycles through all of its pages, so no window
    /// edge ever retreats and no ring is ever overcommitted. While under a quarter of the
    /// budget is taken (counting the new connection's rings), a connection gets
    /// `tcp_rx_buffer_max` (15 connections with the defaults); then `tcp_rx_buffer` while
    /// under half; between half and
    /// three quarters proportionally smaller rings; past that
    /// [`MIN_TCP_RING`](crate::MIN_TCP_RING) each way. The same steps size its initial
    /// send memory (`tcp_tx_buffer` down to `MIN_TCP_RING`, charged at once) and its send
    /// ring (`tcp_tx_buffer_max` in the first step, else its initial send memory). A
    /// connection whose rings no longer fit is refused (RST, counted as
    /// [`LimitReached`](crate::DropReason::LimitReached); `connect` fails with
    /// `QuotaExceeded`). Send memory grows only while the budget has room; past it,
    /// writers wait for acknowledgements. [`NetstackStats::tcp_ring_bytes`](crate::NetstackStats)
    /// shows what the rings take, `tcp_repair_bytes` what the senders hold.
    ///
    /// The senders together hold at most a sixty-fourth of the budget (8 MiB by default,
    /// at least 256 KiB), as round 1's separate `repair_budget` did: each held packet is a
    /// second copy of send-ring bytes, and with many connections sending at once this
    /// share, not the rings, is what bounds the memory they take (64 connections each
    /// sending 1 MiB: 154 MiB of peak RSS with the whole budget open to the senders,
    /// against a 128 MiB target). This budget replaces `repair_budget`.
    pub tcp_buffer_budget: usize,
    /// Maximum TCP sockets in any state (half-open, open, closing). Default 16,384.
    pub max_connections: usize,
    /// Default accept backlog of a listener: half-open plus established connections
    /// not yet accepted (default 1,024). [`Netstack::listen_with_backlog`] overrides it.
    ///
    /// [`Netstack::listen_with_backlog`]: crate::Netstack::listen_with_backlog
    pub accept_backlog: usize,
    /// Maximum half-open (SYN received) connections over all listeners (default 32,768).
    /// They hold no socket, only an entry of under 100 bytes in their shard's SYN table
    /// (see `synq.rs`), each shard holding `max_pending_syns / shards` (at least 1). At
    /// the bound a new SYN replaces its shard's oldest entry, so a SYN flood cannot lock
    /// real clients out: at the default, an entry outlives a 50 ms round trip up to
    /// about 650,000 SYN/s.
    pub max_pending_syns: usize,
    /// A half-open connection that does not complete its handshake in this time is
    /// dropped (default 20 s).
    pub handshake_timeout: Duration,
    /// Abort a connection when nothing was heard from the peer for this long
    /// (default 180 s). With `keepalive` set, a live peer answers the probes, so
    /// only dead peers are cut. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Send a keep-alive probe after this much silence (default 60 s). `None`: off.
    pub keepalive: Option<Duration>,
    /// How long a connection closed by us stays in TIME-WAIT (default 1 s; smoltcp's
    /// own 10 s would keep thousands of sockets in every poll).
    pub time_wait: Duration,
    /// A stream dropped while open sends its remaining data and FIN in the background;
    /// it is aborted when the peer stays silent this long (default 30 s), and in any case
    /// [`CLOSE_HARD_LIMIT_FACTOR`](crate::CLOSE_HARD_LIMIT_FACTOR) times this long after the drop.
    pub close_timeout: Duration,
    /// Nagle's algorithm (default off: latency matters more than tiny segments here).
    pub nagle: bool,
    /// Delayed ACK (default 10 ms, smoltcp's). `None`: ACK at once. Only without
    /// [`segment_offload`](Self::segment_offload): with it smoltcp believes in a 64 KiB
    /// MSS and would hold its ACK until 64 KiB arrived, so it ACKs every inbound batch at
    /// once and the stack adds an ACK per two wire segments.
    pub ack_delay: Option<Duration>,
    /// The floor of TCP's retransmission timeout (default 200 ms, Linux's; 50 ms..=1 s).
    ///
    /// The stack's own sender (see `sender.rs` and docs/ARCHITECTURE.md) computes the
    /// timeout from measured round trips (RFC 6298) and never goes below this; its cap
    /// is 60 s. smoltcp's own timeout (1-60 s) stays behind it as a backstop.
    pub min_rto: Duration,
    /// The stack's own TCP sender (default on; see `sender.rs` and docs/ARCHITECTURE.md):
    /// loss detection, recovery and congestion control below smoltcp. Off, smoltcp sends
    /// on its own, with its Cubic and its 1 s minimum timeout (kept as a baseline for
    /// measurements).
    pub tcp_sender: bool,
    /// The stack's congestion controller (default [`CongestionControl::Bbr`]); applies
    /// while the sender is on (`tcp_sender`). See `sender.rs` and docs/ARCHITECTURE.md
    /// for why BBR is the default.
    pub congestion: CongestionControl,
    /// Number of socket-set shards (1..=64, default 64). smoltcp scans every socket of a
    /// shard on each poll; connections are spread by a keyed hash of their 4-tuple.
    /// (See the `## netstack` section of docs/ARCHITECTURE.md for the measurements.)
    pub shards: usize,
    /// Bound of the outbound packet queue the caller drains with
    /// [`Netstack::recv_outbound`](crate::Netstack::recv_outbound) (default 4,096 packets).
    /// Past it the stack stops emitting (back-pressure) instead of growing memory.
    pub max_outbound_packets: usize,
    /// Datagrams queued per UDP socket and direction (default 256).
    pub udp_queue_packets: usize,
    /// Payload bytes queued per UDP socket and direction (default 256 KiB).
    pub udp_queue_bytes: usize,
}

impl Default for NetstackConfig {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            path_mtu: 1420,
            segment_offload: true,
            max_outbound_bytes: 8 << 20,
            tcp_rx_buffer: 1 << 20,
            tcp_rx_buffer_max: 8 << 20,
            tcp_tx_buffer: 512 << 10,
            tcp_tx_buffer_max: 8 << 20,
            tcp_buffer_budget: 512 << 20,
            max_connections: 16_384,
            accept_backlog: 1024,
            max_pending_syns: 32 * 1024,
            handshake_timeout: Duration::from_secs(20),
            idle_timeout: Some(Duration::from_secs(180)),
            keepalive: Some(Duration::from_secs(60)),
            time_wait: Duration::from_secs(1),
            close_timeout: Duration::from_secs(30),
            nagle: false,
            ack_delay: Some(Duration::from_millis(10)),
            min_rto: crate::sender::MIN_RTO,
            tcp_sender: true,
            congestion: CongestionControl::default(),
            shards: 64,
            max_outbound_packets: 4096,
            udp_queue_packets: 256,
            udp_queue_bytes: 256 << 10,
        }
    }
}

impl NetstackConfig {
    /// A default configuration answering on `addresses`.
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            addresses: addresses.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The IP MTU smoltcp works in, from which its TCP MSS follows: 64 KiB with
    /// [`segment_offload`](Self::segment_offload) (the stack splits to
    /// [`path_mtu`](Self::path_mtu)), else the path MTU; only the device handed to smoltcp
    /// uses it.
    pub(crate) fn segment_mtu(&self) -> usize {
        if self.offload() {
            crate::offload::SEGMENT_MTU
        } else {
            self.path_mtu
        }
    }

    /// Whether segment offload is on: asked for, and the sender is on (without it smoltcp
    /// would resend whole 64 KiB segments, lost again whenever one of their ~45 wire
    /// segments is: measured, a 3 % loss path then never finishes).
    pub(crate) fn offload(&self) -> bool {
        self.segment_offload && self.tcp_sender
    }

    /// The TCP MSS on the wire for IPv4 (`v6`: IPv6): the path MTU minus the IP and TCP
    /// headers.
    pub(crate) fn path_mss(&self, v6: bool) -> u16 {
        let headers = if v6 { 60 } else { 40 };
        u16::try_from(self.path_mtu.saturating_sub(headers)).unwrap_or(u16::MAX - 60)
    }

    /// The senders' share of [`tcp_buffer_budget`](Self::tcp_buffer_budget): what they may
    /// hold together (a sixty-fourth, at least 256 KiB).
    pub(crate) fn sender_share(&self) -> usize {
        (self.tcp_buffer_budget / 64).max(256 << 10)
    }

    /// The sizes of a new connection's buffers while `reserved` bytes of the budget are
    /// taken: its receive ring, its initial send memory (both charged at once) and its send
    /// ring (reserved; charged as used, see `autotune.rs`). `None` when even the smallest
    /// no longer fit (see [`tcp_buffer_budget`](Self::tcp_buffer_budget)). The first step
    /// (the large rings) only when `large`.
    pub(crate) fn ring_sizes(&self, reserved: usize, large: bool) -> Option<RingSizes> {
        const PAGE: usize = 4096;
        let (rx, tx) = (self.tcp_rx_buffer, self.tcp_tx_buffer);
        let (rx_max, tx_max) = (
            self.tcp_rx_buffer_max.max(rx),
            self.tcp_tx_buffer_max.max(tx),
        );
        let budget = self.tcp_buffer_budget;
        let (quarter, half, three_quarters) = (budget / 4, budget / 2, budget / 4 * 3);
        let shrink = |full: usize, scale: f64| {
            let size = (full as f64 * scale) as usize / PAGE * PAGE;
            size.clamp(crate::MIN_TCP_RING.min(full), full)
        };
        let sizes = if large && reserved.saturating_add(rx_max + tx) <= quarter {
            RingSizes {
                rx: rx_max,
                tx,
                tx_ring: tx_max,
                large: true,
            }
        } else {
            let (rx, tx) = if reserved.saturating_add(rx + tx) <= half {
                (rx, tx)
            } else if reserved < three_quarters {
                let scale =
                    (three_quarters - reserved) as f64 / (three_quarters - half).max(1) as f64;
                (shrink(rx, scale), shrink(tx, scale))
            } else {
                (shrink(rx, 0.0), shrink(tx, 0.0))
            };
            RingSizes {
                rx,
                tx,
                tx_ring: tx,
                large: false,
            }
        };
        (reserved.saturating_add(sizes.rx + sizes.tx) <= budget).then_some(sizes)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let v4 = self.addresses.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.addresses.len() - v4;
        if self.addresses.is_empty() || v4 > 1 || v6 > 1 {
            return Err(ConfigError::Addresses);
        }
        if let Some(bad) = self
            .addresses
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err(ConfigError::Address(*bad));
        }
        if !(1280..=65_535).contains(&self.path_mtu) {
            return Err(ConfigError::Mtu(self.path_mtu));
        }
        for (field, value) in [
            ("tcp_rx_buffer", self.tcp_rx_buffer),
            ("tcp_rx_buffer_max", self.tcp_rx_buffer_max),
            ("tcp_tx_buffer", self.tcp_tx_buffer),
            ("tcp_tx_buffer_max", self.tcp_tx_buffer_max),
        ] {
            if !(4096..=(1 << 30)).contains(&value) {
                return Err(ConfigError::Range { field, value });
            }
        }
        if self.tcp_buffer_budget < 4 * crate::MIN_TCP_RING {
            return Err(ConfigError::Range {
                field: "tcp_buffer_budget",
                value: self.tcp_buffer_budget,
            });
        }
        for (field, value) in [
            ("max_connections", self.max_connections),
            ("accept_backlog", self.accept_backlog),
            ("max_pending_syns", self.max_pending_syns),
            ("max_outbound_packets", self.max_outbound_packets),
            ("udp_queue_packets", self.udp_queue_packets),
            ("udp_queue_bytes", self.udp_queue_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Range { field, value });
            }
        }
        if self.max_outbound_bytes < self.path_mtu {
            return Err(ConfigError::Range {
                field: "max_outbound_bytes",
                value: self.max_outbound_bytes,
            });
        }
        if !(Duration::from_millis(50)..=Duration::from_secs(1)).contains(&self.min_rto) {
            return Err(ConfigError::MinRto(self.min_rto));
        }
        if !(1..=64).contains(&self.shards) {
            return Err(ConfigError::Range {
                field: "shards",
                value: self.shards,
            });
        }
        Ok(())
    }
}

/// The buffer sizes of a new TCP connection (see [`NetstackConfig::ring_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingSizes {
    /// Receive ring, charged at once.
    pub(crate) rx: usize,
    /// Initial send memory, charged at once.
    pub(crate) tx: usize,
    /// Send ring: the most send memory the connection may grow to.
    pub(crate) tx_ring: usize,
    /// The first step: larger rings than `tcp_rx_buffer` and `tcp_tx_buffer`.
    pub(crate) large: bool,
}

/// A [`NetstackConfig`] that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No address, or more than one per IP family.
    #[error("netstack config: addresses: need one or two addresses, at most one per IP family")]
    Addresses,
    /// An address that cannot be a host address.
    #[error("netstack config: addresses: `{0}` is not a unicast host address")]
    Address(IpAddr),
    /// `path_mtu` out of range.
    #[error("netstack config: path_mtu: {0} is outside 1280..=65535")]
    Mtu(usize),
    /// `min_rto` out of range.
    #[error("netstack config: min_rto: {0:?} is outside 50 ms..=1 s")]
    MinRto(Duration),
    /// A size or count out of its range.
    #[error("netstack config: {field}: {value} is out of range")]
    Range {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
    },
    /// [`Netstack::new`](crate::Netstack::new) was called outside a tokio runtime.
    #[error("netstack: must be created inside a tokio runtime (it spawns its driver task)")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_shrink_with_the_budget_and_never_pass_it() {
        let mut c = NetstackConfig::new(["10.0.0.1".parse().expect("ip")]);
        c.tcp_buffer_budget = 128 << 20;
        let (rx, tx) = (c.tcp_rx_buffer, c.tcp_tx_buffer);
        let (rx_max, tx_max) = (c.tcp_rx_buffer_max, c.tcp_tx_buffer_max);
        let large = RingSizes {
            rx: rx_max,
            tx,
            tx_ring: tx_max,
            large: true,
        };
        assert_eq!(c.ring_sizes(0, true), Some(large));
        let base = RingSizes {
            rx,
            tx,
            tx_ring: tx,
            large: false,
        };
        assert_eq!(c.ring_sizes(0, false), Some(base));
        assert_eq!(c.ring_sizes(32 << 20, true), Some(base));
        let mut reserved = 0;
        let mut last = rx_max + tx;
        let mut conns = 0;
        while let Some(s) = c.ring_sizes(reserved, true) {
            assert!(s.rx + s.tx <= last, "sizes never grow as the budget fills");
            assert!(s.rx >= crate::MIN_TCP_RING && s.tx >= crate::MIN_TCP_RING);
            assert_eq!((s.rx % 4096, s.tx % 4096), (0, 0));
            assert!(s.tx_ring >= s.tx);
            last = s.rx + s.tx;
            reserved += s.rx + s.tx;
            conns += 1;
            assert!(reserved <= c.tcp_buffer_budget);
        }
        assert_eq!(last, 2 * crate::MIN_TCP_RING, "ends at the smallest rings");
        // A quarter at the largest size, up to half at the base size, then smaller ones,
        // then a quarter of the budget at the minimum.
        assert!(conns > (16 << 20) / (2 * crate::MIN_TCP_RING), "{conns}");
        assert!(c.tcp_buffer_budget - reserved < 2 * crate::MIN_TCP_RING);
    }
}
