//! A lossy path in virtual time: one bulk transfer between two stacks over a link with
//! per-direction delay, jitter, reordering and seeded random loss; reports how long it
//! took in virtual time. A measurement harness (figures in docs/PERFORMANCE.md), not a
//! timed assertion: the tests below only check that the data arrives intact.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::NetstackConfig;
use crate::sim::{client_tuple, dial};
use crate::stack::Shared;

/// One direction of the simulated path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path {
    /// Probability a packet is lost.
    pub(crate) loss: f64,
    /// One-way delay.
    pub(crate) delay: Duration,
    /// Extra delay, uniform in `0..jitter`.
    pub(crate) jitter: Duration,
    /// Probability a packet skips the delay (arrives ahead of older ones).
    pub(crate) reorder: f64,
    /// The machine, not the path: the stacks' timers fire this late (a busy machine).
    pub(crate) late_timers: Duration,
}

/// A small deterministic generator (xorshift64*), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

type Queue = BinaryHeap<Reverse<(Instant, u64, bool, Bytes)>>;

/// What crossed the simulated wire.
#[derive(Debug, Default, Clone)]
pub(crate) struct Wire {
    /// The largest IP packet either side sent.
    pub(crate) largest: usize,
    /// Data segments the receiver got.
    pub(crate) delivered: u64,
    /// ACKs (segments without payload) the receiver sent.
    pub(crate) acks: u64,
    /// The largest advance of the receiver's ACK number from one segment it sent to the
    /// next, in bytes.
    pub(crate) widest_ack: u32,
    /// The receiver's last ACK number.
    last_ack: Option<u32>,
    /// Wire segments the receiver joined before its smoltcp saw them.
    pub(crate) joined: u64,
    /// The most SACK blocks one ACK of the receiver carried.
    pub(crate) sack_max: usize,
    /// SACK blocks of the receiver naming data it never got, or data at or below its
    /// cumulative ACK (other than a D-SACK block, which comes first).
    pub(crate) false_sacks: u64,
    /// ACKs of the receiver that reported a duplicate (D-SACK, RFC 2883).
    pub(crate) dsacks: u64,
    /// ACKs of the receiver sent while it held two or more out-of-order ranges, and how
    /// many of them reported at least two.
    pub(crate) holes_acked: u64,
    pub(crate) multi_acked: u64,
    /// What the receiver got: ranges of offsets from the first data byte.
    got: Got,
    /// ACKs of the receiver that repeated the one before in everything (ACK number,
    /// window, SACK blocks): they tell the sender nothing.
    pub(crate) redundant: u64,
    /// The receiver's last pure ACK.
    last_pure: Option<AckFields>,
}

/// What a pure ACK tells the sender: ACK number, window field, SACK blocks.
type AckFields = (u32, u16, Vec<(u32, u32)>);

/// Data the receiver got, as sorted disjoint ranges of offsets from `base` (the first
/// data byte), so the checks hold across sequence number wraparound.
#[derive(Debug, Default, Clone)]
struct Got {
    base: Option<u32>,
    ranges: Vec<(u64, u64)>,
}

impl Got {
    fn offset(&self, seq: u32) -> Option<u64> {
        let off = u64::from(seq.wrapping_sub(self.base?));
        (off < 1 << 31).then_some(off)
    }

    fn add(&mut self, seq: u32, len: usize) {
        let mut base = *self.base.get_or_insert(seq);
        if seq.wrapping_sub(base) >= 1 << 31 {
            // Data before the first that arrived (reordered): start from it.
            let shift = u64::from(base.wrapping_sub(seq));
            for r in &mut self.ranges {
                *r = (r.0 + shift, r.1 + shift);
            }
            self.base = Some(seq);
            base = seq;
        }
        let start = u64::from(seq.wrapping_sub(base));
        let end = start + len as u64;
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }

    fn holds(&self, start: u64, end: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// Ranges above `ack` (an offset).
    fn above(&self, ack: u64) -> usize {
        self.ranges.iter().filter(|&&(s, _)| s > ack).count()
    }
}

impl Wire {
    /// Checks one ACK `p` of the receiver against what it got.
    fn check_ack(&mut self, p: &[u8]) {
        let Some((0, _, Some(number))) = crate::offload::seq_ack(p) else {
            return;
        };
        let Some(ack) = self.got.offset(number) else {
            return;
        };
        let blocks = crate::offload::sack_blocks(p);
        let this = (
            number,
            crate::offload::window(p).unwrap_or(0),
            blocks.clone(),
        );
        if self.last_pure.as_ref() == Some(&this) {
            self.redundant += 1;
        }
        self.last_pure = Some(this);
        self.sack_max = self.sack_max.max(blocks.len());
        if self.got.above(ack) >= 2 {
            self.holes_acked += 1;
            self.multi_acked += u64::from(blocks.len() >= 2);
        }
        let offsets: Vec<(u64, u64)> = blocks
            .iter()
            .filter_map(|&(s, e)| Some((self.got.offset(s)?, self.got.offset(e)?)))
            .collect();
        for (i, &(s, e)) in offsets.iter().enumerate() {
            let dsack =
                i == 0 && (e <= ack || offsets.get(1).is_some_and(|&(s2, e2)| s2 <= s && e <= e2));
            if dsack {
                self.dsacks += 1;
                if !self.got.holds(s, e) {
                    self.false_sacks += 1;
                }
            } else if s <= ack || !self.got.holds(s, e) {
                self.false_sacks += 1;
            }
        }
    }
}

/// A bottleneck on the a → b direction: a FIFO drained at `rate` bytes per second
/// holding at most `queue` bytes (a packet that does not fit is dropped), before the
/// path's delay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bottleneck {
    pub(crate) rate: f64,
    pub(crate) queue: usize,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Run {
    /// Per flow: virtual time from the first byte written to the last byte read.
    pub(crate) elapsed: Vec<Duration>,
    /// Per flow: bytes read when the first flow finished.
    pub(crate) read_at_first_finish: Vec<usize>,
    /// The bottleneck's backlog (virtual time since the start, bytes) at each arrival.
    pub(crate) backlog: Vec<(Duration, usize)>,
    /// Packets the bottleneck dropped.
    pub(crate) overflow: u64,
    pub(crate) stats: crate::NetstackStats,
    pub(crate) wire: Wire,
}

/// Sends `bytes` from a to b over `path` (both directions alike); returns the virtual
/// time from the first byte written to the last byte read, and a's stats.
pub(crate) fn transfer(
    bytes: usize,
    path: Path,
    seed: u64,
    tune: impl Fn(&mut NetstackConfig),
) -> (Duration, crate::NetstackStats, Wire) {
    let run = transfer_flows(1, bytes, path, None, seed, tune);
    (run.elapsed[0], run.stats, run.wire)
}

/// Sends `bytes` on each of `flows` connections from a to b at once, over `path` (both
/// directions alike) and `bottleneck` (a → b only).
pub(crate) fn transfer_flows(
    flows: usize,
    bytes: usize,
    path: Path,
    bottleneck: Option<Bottleneck>,
    seed: u64,
    tune: impl Fn(&mut NetstackConfig),
) -> Run {
    let start = Instant::now();
    let mut now = start;
    let make = |ip: &str| {
        let mut config = NetstackConfig::new([ip.parse().expect("ip")]);
        tune(&mut config);
        Shared::new(config, now).expect("stack")
    };
    let (a, b) = (make("10.0.0.1"), make("10.0.0.2"));
    let server: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    let listener = b.register_listener(server, 16).expect("listen");
    let mut senders = Vec::new();
    for f in 0..flows {
        let port = 50_000 + u16::try_from(f).expect("few flows");
        let tuple = client_tuple(port);
        let (idx, handle) = dial(&a, tuple, now);
        senders.push((idx, handle, tuple));
    }
    let mut rng = Rng(seed | 1);
    let mut queue: Queue = BinaryHeap::new();
    let mut n = 0u64;
    let mut out: Vec<Bytes> = Vec::new();
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut written = vec![0usize; flows];
    let mut read = vec![0usize; flows];
    let mut elapsed: Vec<Option<Duration>> = vec![None; flows];
    let mut read_at_first_finish = Vec::new();
    let mut accepted: Vec<Option<crate::accept::Accepted>> = (0..flows).map(|_| None).collect();
    let mut began = None;
    let mut buf = vec![0u8; 256 * 1024];
    // The bottleneck: when its link is next free, the departures of what it holds.
    let mut link_free = start;
    let mut departures: std::collections::VecDeque<(Instant, usize)> = Default::default();
    let mut backlog = Vec::new();
    let mut overflow = 0u64;
    let mut wire = Wire::default();
    let payload = |p: &[u8]| crate::offload::seq_ack(p).map_or(0, |(len, ..)| len);
    for _ in 0..50_000_000u64 {
        while let Some(acc) = listener.pop() {
            let f = usize::from(acc.tuple.remote.port - 50_000);
            accepted[f] = Some(acc);
        }
        for f in 0..flows {
            let Some(acc) = &accepted[f] else {
                continue;
            };
            let (idx, handle, tuple) = senders[f];
            if written[f] < data.len() {
                began.get_or_insert(now);
                let from = written[f];
                // As `TcpStream::poll_write` does: memory first, then the ring.
                written[f] += a.with_shard(idx, now, |s| {
                    let granted = s.reserve_send(&a, &tuple, data.len() - from);
                    let n = s
                        .tcp(handle)
                        .send_slice(&data[from..from + granted])
                        .unwrap_or(0);
                    s.unreserve_send(&tuple, granted, n);
                    n
                });
            }
            loop {
                let got = b.with_shard(acc.shard, now, |s| {
                    s.tcp(acc.handle).recv_slice(&mut buf).unwrap_or(0)
                });
                if got == 0 {
                    break;
                }
                assert_eq!(buf[..got], data[read[f]..read[f] + got], "data intact");
                read[f] += got;
            }
            if read[f] == data.len() && elapsed[f].is_none() {
                elapsed[f] = Some(now - began.unwrap_or(start));
                if read_at_first_finish.is_empty() {
                    read_at_first_finish = read.clone();
                }
            }
        }
        if elapsed.iter().all(Option::is_some) {
            let mut stats = a.counters.snapshot();
            stats.tcp_repair_bytes = a.sender_bytes();
            wire.joined = b.counters.snapshot().tcp_segments_joined;
            // The ACKs of the last data, already emitted.
            out.clear();
            b.drain_out(&mut out, usize::MAX);
            wire.acks += out.iter().filter(|p| payload(p) == 0).count() as u64;
            return Run {
                wire,
                elapsed: elapsed.into_iter().flatten().collect(),
                read_at_first_finish,
                backlog,
                overflow,
                stats,
            };
        }
        for (from_a, stack) in [(true, &a), (false, &b)] {
            out.clear();
            stack.drain_out(&mut out, usize::MAX);
            for p in out.drain(..) {
                wire.largest = wire.largest.max(p.len());
                if !from_a && payload(&p) == 0 {
                    wire.acks += 1;
                    wire.check_ack(&p);
                }
                if !from_a && let Some((_, _, Some(ack))) = crate::offload::seq_ack(&p) {
                    if let Some(last) = wire.last_ack {
                        let advance = ack.wrapping_sub(last);
                        if advance < 1 << 30 {
                            wire.widest_ack = wire.widest_ack.max(advance);
                        }
                    }
                    wire.last_ack = Some(ack);
                }
                if rng.unit() < path.loss {
                    continue;
                }
                let mut at = now;
                if from_a && let Some(neck) = bottleneck {
                    while departures.front().is_some_and(|(t, _)| *t <= now) {
                        departures.pop_front();
                    }
                    let held: usize = departures.iter().map(|(_, len)| len).sum();
                    backlog.push((now - start, held));
                    if held + p.len() > neck.queue {
                        overflow += 1;
                        continue;
                    }
                    link_free =
                        link_free.max(now) + Duration::from_secs_f64(p.len() as f64 / neck.rate);
                    departures.push_back((link_free, p.len()));
                    at = link_free;
                }
                if rng.unit() >= path.reorder {
                    at += path.delay + path.jitter.mul_f64(rng.unit());
                }
                n += 1;
                queue.push(Reverse((at, n, from_a, p)));
            }
        }
        let late = |d: Option<Instant>| d.map(|d| d + path.late_timers);
        let next = [
            queue.peek().map(|Reverse((t, ..))| *t),
            late(a.next_deadline()),
            late(b.next_deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| {
            for st in [&a, &b] {
                for i in 0..st.shard_count() {
                    eprintln!("DUMP {i}: {}", st.lock(i).debug_dump());
                }
            }
            panic!("something pending while data is missing {read:?} {written:?}")
        });
        now = now.max(next);
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        while let Some(Reverse((t, ..))) = queue.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, _, from_a, p))) = queue.pop() else {
                break;
            };
            if from_a {
                wire.delivered += u64::from(payload(&p) > 0);
                if let Some((len @ 1.., seq, _)) = crate::offload::seq_ack(&p) {
                    wire.got.add(seq, len);
                }
                to_b.push(p)
            } else {
                to_a.push(p)
            }
        }
        b.push_at(&to_b, now);
        a.push_at(&to_a, now);
        a.drive_at(now);
        b.drive_at(now);
    }
    panic!("no end: {read:?} of {bytes} bytes");
}

/// 1 % loss and 10 ms each way.
pub(crate) const LOSSY: Path = Path {
    loss: 0.01,
    delay: Duration::from_millis(10),
    jitter: Duration::ZERO,
    reorder: 0.0,
    late_timers: Duration::ZERO,
};

/// 3 % loss, 10 ± 5 ms each way, 5 % of packets not delayed (reordered).
pub(crate) const REORDERING: Path = Path {
    loss: 0.03,
    delay: Duration::from_millis(5),
    jitter: Duration::from_millis(10),
    reorder: 0.05,
    late_timers: Duration::ZERO,
};

/// No loss, 50 ms each way.
pub(crate) const LONG: Path = Path {
    loss: 0.0,
    delay: Duration::from_millis(50),
    jitter: Duration::ZERO,
    reorder: 0.0,
    late_timers: Duration::ZERO,
};

/// Mean throughput over seeds 1..=3, MB/s, and seed 1's counters.
fn mean_mbs(
    bytes: usize,
    path: Path,
    tune: impl Fn(&mut NetstackConfig) + Copy,
) -> (f64, crate::NetstackStats) {
    let mut total = Duration::ZERO;
    let mut first = None;
    for seed in 1..=3 {
        let (t, stats, _) = transfer(bytes, path, seed, tune);
        first.get_or_insert(stats);
        total += t;
    }
    (
        3.0 * bytes as f64 / total.as_secs_f64() / 1e6,
        first.expect("three runs"),
    )
}

#[test]
fn lossy_paths_deliver_everything_with_either_controller_and_without_the_sender() {
    use crate::config::CongestionControl;
    for (name, path) in [("lossy", LOSSY), ("reordering", REORDERING), ("long", LONG)] {
        let bytes = 4 << 20;
        let mut line = format!("sim {name} 4 MiB:");
        let runs: [(&str, bool, CongestionControl, bool); 4] = [
            ("bbr", true, CongestionControl::Bbr, true),
            ("bbr, wire segments", true, CongestionControl::Bbr, false),
            ("cubic", true, CongestionControl::Cubic, true),
            ("smoltcp alone", false, CongestionControl::Cubic, false),
        ];
        for (label, sender, cc, offload) in runs {
            let (mbs, stats) = mean_mbs(bytes, path, |c| {
                c.tcp_sender = sender;
                c.congestion = cc;
                c.segment_offload = offload;
            });
            eprintln!(
                "  {name} {label}: retransmits {} probes {} rtos {} undos {} smoltcp resent {} tx {}",
                stats.tcp_repaired,
                stats.tcp_probes,
                stats.tcp_rtos,
                stats.tcp_undos,
                stats.tcp_smoltcp_resent,
                stats.tx_packets
            );
            line.push_str(&format!(" {label} {mbs:.2} MB/s;"));
        }
        eprintln!("{line}");
    }
}

/// Virtual-time throughput of `bytes` over `path`, MB/s (seed 1).
fn throughput(bytes: usize, path: Path, tune: impl Fn(&mut NetstackConfig)) -> f64 {
    let (t, ..) = transfer(bytes, path, 1, tune);
    bytes as f64 / t.as_secs_f64() / 1e6
}

/// Round 1's fixed rings: 1 MiB receive, 512 KiB send (the baseline printed beside the
/// figures below).
fn fixed_rings(c: &mut NetstackConfig) {
    c.tcp_rx_buffer_max = c.tcp_rx_buffer;
    c.tcp_tx_buffer_max = c.tcp_tx_buffer;
}

/// The long clean path (100 ms round trip, no bandwidth limit in the simulation) must not
/// be capped by the rings a connection starts with: a 1 MiB receive ring allows at most
/// about 10 MB/s, a 512 KiB send ring about 5 MB/s. Slow start alone would move 16 MiB
/// in about 11 round trips (some 14 MB/s).
#[test]
fn a_long_path_is_not_capped_by_the_receive_ring() {
    // A sender whose send memory is never the limit: what caps it is the receiver.
    let large_send = |c: &mut NetstackConfig| {
        c.tcp_tx_buffer = 32 << 20;
        c.tcp_tx_buffer_max = 32 << 20;
    };
    let mbs = throughput(16 << 20, LONG, large_send);
    let fixed = throughput(16 << 20, LONG, |c| {
        large_send(c);
        c.tcp_rx_buffer_max = c.tcp_rx_buffer;
    });
    eprintln!("sim long 16 MiB, large send memory: {mbs:.2} MB/s (1 MiB receive ring: {fixed:.2})");
    assert!(mbs >= 11.0, "{mbs:.2} MB/s at 100 ms RTT");
}

#[test]
fn a_long_path_is_not_capped_by_the_send_ring() {
    // A receiver whose ring is never the limit: what caps it is the sender.
    let large_receive = |c: &mut NetstackConfig| {
        c.tcp_rx_buffer = 32 << 20;
        c.tcp_rx_buffer_max = 32 << 20;
    };
    let mbs = throughput(16 << 20, LONG, large_receive);
    let fixed = throughput(16 << 20, LONG, |c| {
        large_receive(c);
        c.tcp_tx_buffer_max = c.tcp_tx_buffer;
    });
    eprintln!(
        "sim long 16 MiB, large receive ring: {mbs:.2} MB/s (512 KiB send memory: {fixed:.2})"
    );
    assert!(mbs >= 11.0, "{mbs:.2} MB/s at 100 ms RTT");
}

/// Cubic's slow start doubles the window each round trip while the sender is window-limited.
/// Whether it is was judged per ACK from the bytes in flight just before it; a round's ACKs
/// arrive together, so past the first half of them less than half the window was in flight
/// and they stopped counting: the window grew about 1.5x per round trip. On the long path
/// (100 ms round trip, no loss, nothing else limiting) 16 MiB then took some 16 round trips
/// of slow start instead of 11.
#[test]
fn cubic_slow_start_doubles_per_round_trip_on_the_long_path() {
    let large = |c: &mut NetstackConfig| {
        c.congestion = crate::config::CongestionControl::Cubic;
        c.tcp_rx_buffer = 32 << 20;
        c.tcp_rx_buffer_max = 32 << 20;
    };
    let mbs = throughput(16 << 20, LONG, large);
    eprintln!("sim long 16 MiB, cubic: {mbs:.2} MB/s");
    // 11 rounds of doubling from a 10-segment window, and the handshake: about 14 MB/s.
    assert!(mbs >= 12.0, "{mbs:.2} MB/s at 100 ms RTT");
}

/// Defaults against round 1's fixed rings on every profile, 16 MiB (figures for
/// docs/PERFORMANCE.md; the assertions are the tests above).
#[test]
fn defaults_against_fixed_rings_on_every_profile() {
    for (name, path) in [("lossy", LOSSY), ("reordering", REORDERING), ("long", LONG)] {
        let bytes = if name == "long" { 16 << 20 } else { 2 << 20 };
        let now = throughput(bytes, path, |_| {});
        let fixed = throughput(bytes, path, fixed_rings);
        eprintln!(
            "sim {name} {} MiB: defaults {now:.2} MB/s, fixed rings {fixed:.2} MB/s",
            bytes >> 20
        );
    }
}

/// A 2 MB/s bottleneck with a deep (1 MiB) queue, 10 ms each way: BDP 40 kB.
const NECK: Bottleneck = Bottleneck {
    rate: 2e6,
    queue: 1 << 20,
};
const CLEAN_20MS: Path = Path {
    loss: 0.0,
    delay: Duration::from_millis(10),
    jitter: Duration::ZERO,
    reorder: 0.0,
    late_timers: Duration::ZERO,
};

/// Largest and mean backlog over the second half of a run, bytes.
fn late_backlog(run: &Run) -> (usize, usize) {
    let end = run.backlog.last().map_or(Duration::ZERO, |(t, _)| *t);
    let late: Vec<usize> = run
        .backlog
        .iter()
        .filter(|(t, _)| *t >= end / 2)
        .map(|(_, b)| *b)
        .collect();
    let max = late.iter().copied().max().unwrap_or(0);
    let mean = late.iter().sum::<usize>() / late.len().max(1);
    (max, mean)
}

/// Mathis et al.'s bound for a loss-based sender: MSS / RTT × 1.22 / √p, bytes/s.
fn mathis(mss: f64, rtt: Duration, loss: f64) -> f64 {
    mss / rtt.as_secs_f64() * 1.22 / loss.sqrt()
}

#[test]
fn bbr_on_the_one_percent_path_goes_far_past_the_loss_based_bound() {
    use crate::config::CongestionControl;
    let (bbr, _) = mean_mbs(4 << 20, LOSSY, |c| c.congestion = CongestionControl::Bbr);
    // Loss on both directions: about 2 % of segments or their ACK are lost, but one
    // lost ACK costs nothing; the bound for 1 % at 20 ms.
    let bound = mathis(1380.0, Duration::from_millis(20), 0.01) / 1e6;
    assert!(
        bbr > 5.0 * bound,
        "bbr {bbr:.2} MB/s, loss-based bound {bound:.2}"
    );
}

#[test]
fn twenty_percent_loss_still_completes_with_either_controller() {
    use crate::config::CongestionControl;
    let heavy = Path {
        loss: 0.2,
        ..CLEAN_20MS
    };
    for cc in [CongestionControl::Bbr, CongestionControl::Cubic] {
        let (t, stats, _) = transfer(1 << 20, heavy, 1, |c| c.congestion = cc);
        eprintln!("{cc:?} 1 MiB at 20 %: {t:?}, {} resent", stats.tcp_repaired);
        assert!(stats.tcp_repaired > 0);
    }
}

#[test]
fn one_bbr_flow_keeps_a_deep_bottleneck_queue_near_one_bdp_where_cubic_fills_it() {
    use crate::config::CongestionControl;
    let bdp = NECK.rate * 0.02;
    let run = transfer_flows(1, 8 << 20, CLEAN_20MS, Some(NECK), 1, |c| {
        c.congestion = CongestionControl::Bbr;
    });
    let (max, mean) = late_backlog(&run);
    eprintln!("bbr: {:?} late queue max {max} mean {mean}", run.elapsed);
    assert!((max as f64) < 2.0 * bdp, "max {max} vs bdp {bdp}");
    // Still fills the link: 8 MiB at 2 MB/s is 4.19 s.
    assert!(
        run.elapsed[0] < Duration::from_millis(4_600),
        "{:?}",
        run.elapsed
    );
    // The same path with Cubic, to show the bound means something: a loss-based
    // sender fills the queue up to its send buffer.
    let run = transfer_flows(1, 8 << 20, CLEAN_20MS, Some(NECK), 1, |c| {
        c.congestion = CongestionControl::Cubic;
    });
    let (max, mean) = late_backlog(&run);
    eprintln!("cubic: {:?} late queue max {max} mean {mean}", run.elapsed);
    assert!(mean as f64 > 4.0 * bdp, "mean {mean} vs bdp {bdp}");
}

#[test]
fn two_bbr_flows_share_one_bottleneck_without_a_standing_queue() {
    use crate::config::CongestionControl;
    let bdp = NECK.rate * 0.02;
    let bytes = 4 << 20;
    let run = transfer_flows(2, bytes, CLEAN_20MS, Some(NECK), 1, |c| {
        c.congestion = CongestionControl::Bbr;
    });
    let (max, mean) = late_backlog(&run);
    eprintln!(
        "two flows: {:?} read at the first finish {:?}, late queue max {max} mean {mean}, {} dropped",
        run.elapsed, run.read_at_first_finish, run.overflow
    );
    let slower = run.read_at_first_finish.iter().min().copied().unwrap_or(0);
    assert!(
        slower as f64 >= 0.6 * bytes as f64,
        "when one flow had all {bytes} bytes, the other had {slower}"
    );
    assert!((max as f64) < 3.0 * bdp, "max {max} vs bdp {bdp}");
}

#[test]
fn bbr_keeps_its_throughput_when_the_machine_fires_timers_late() {
    // Every deadline of both stacks (pacing, delayed ACKs, ...) 10 ms late: a saturated
    // machine. The pacing timer's lateness must not become the bandwidth estimate:
    // with a fixed 2 ms catch-up and rate samples taken as path samples this fell from
    // 13.7 to 0.13 MB/s.
    let on_time = mean_mbs(4 << 20, LOSSY, |_| {}).0;
    let path = Path {
        late_timers: Duration::from_millis(10),
        ..LOSSY
    };
    let late = mean_mbs(4 << 20, path, |_| {}).0;
    eprintln!("on time {on_time:.2} MB/s, 10 ms late {late:.2} MB/s");
    assert!(late > 0.7 * on_time, "{late:.2} vs {on_time:.2} MB/s");
}

/// A shallow queue (128 KiB at 25 MB/s, a quarter of the BDP) on the 1 % path, with
/// 4 MiB of send memory: overflowing it is heavy loss, which must bound the rate, not
/// only the window (the bandwidth estimate is a max). 14 % of the packets overflowed
/// without the rate cap, 9 % with it.
#[test]
fn bbr_on_a_shallow_lossy_bottleneck_bounds_its_overflow() {
    let neck = Bottleneck {
        rate: 25e6,
        queue: 128 << 10,
    };
    let run = transfer_flows(1, 16 << 20, LOSSY, Some(neck), 1, |c| {
        c.tcp_tx_buffer = 4 << 20;
    });
    let share = run.overflow as f64 / run.stats.tx_packets as f64;
    eprintln!(
        "{:?}, {} overflowed of {} sent, {} timeouts",
        run.elapsed[0], run.overflow, run.stats.tx_packets, run.stats.tcp_rtos
    );
    assert!(share < 0.12, "{:.1} % overflowed", share * 100.0);
    // Still far past the loss-based bound (0.84 MB/s).
    assert!(run.elapsed[0] < Duration::from_secs(4), "{:?}", run.elapsed);
}

/// No loss, 1 ms each way: every flight arrives in one batch.
const CLEAN: Path = Path {
    loss: 0.0,
    delay: Duration::from_millis(1),
    jitter: Duration::ZERO,
    reorder: 0.0,
    late_timers: Duration::ZERO,
};

#[test]
fn large_segments_keep_the_wire_standard_and_the_data_exact() {
    for (name, path, mtu) in [
        ("clean", CLEAN, 1420),
        ("clean, 1280", CLEAN, 1280),
        ("lossy", LOSSY, 1420),
        ("reordering", REORDERING, 1420),
    ] {
        // `transfer` checks every byte read against what was written. Defaults otherwise
        // (BBR, rings that grow): with a large flight on the lossy path the receiver
        // (whose ACKs this checks) once sent 371 ACKs for 1,538 wire segments, short of
        // one per two, until it acknowledged runs above a hole too (`offload.rs`).
        let (_, stats, wire) = transfer(2 << 20, path, 7, |c| c.path_mtu = mtu);
        eprintln!("{name}: {wire:?} split {}", stats.tcp_segments_split);
        assert!(wire.largest <= mtu, "{name}: {} on the wire", wire.largest);
        assert!(
            stats.tcp_segments_split > 1000,
            "{name}: smoltcp sent large segments"
        );
        assert!(
            wire.delivered <= 2 * wire.acks,
            "{name}: {} segments for {} ACKs",
            wire.delivered,
            wire.acks
        );
        // Every ACK tells the sender something new: an ACK number, a window or a SACK
        // block. Each one costs a gateway a UDP receive, a decryption and a TUN write.
        assert_eq!(wire.redundant, 0, "{name}: ACKs repeating the one before");
        if path.loss == 0.0 {
            // Without holes to repair, no ACK ever covers more than two wire segments.
            let mss = (mtu - 40) as u32;
            assert!(wire.widest_ack <= 2 * mss, "{name}: {}", wire.widest_ack);
            assert!(wire.joined > 1000, "{name}: the receiver joined segments");
            // Nor more than one per two, but for a flight's odd last segment: each costs
            // the gateway a TUN write (PERFORMANCE.md, "The clean upload").
            assert!(
                2 * wire.acks <= wire.delivered + wire.delivered / 50,
                "{name}: {} ACKs for {} segments",
                wire.acks,
                wire.delivered
            );
        }
    }
}

/// The receiver's ACKs (issue 12), behind the default sender: at least one per two wire
/// segments, also while data arrives out of order (RFC 5681 section 4.2); SACK blocks that
/// name only data it holds above its cumulative ACK, several of them while it holds
/// several ranges (RFC 2018); duplicates reported (D-SACK, RFC 2883).
#[test]
fn the_receiver_acks_every_second_segment_and_reports_what_it_holds() {
    let mut runs = Vec::new();
    for (name, path) in [("lossy", LOSSY), ("reordering", REORDERING)] {
        // Three different generators (the seed's low bit is forced on).
        for seed in [1, 2, 4] {
            let (t, _, wire) = transfer(4 << 20, path, seed, |_| {});
            eprintln!(
                "{name} seed {seed}: {t:?}, {} segments, {} ACKs, most blocks {}, {} of {} \
                 ACKs over two or more ranges named two or more, {} D-SACKs, {} false, \
                 {} redundant",
                wire.delivered,
                wire.acks,
                wire.sack_max,
                wire.multi_acked,
                wire.holes_acked,
                wire.dsacks,
                wire.false_sacks,
                wire.redundant
            );
            runs.push((name, seed, wire));
        }
    }
    for (name, seed, wire) in &runs {
        assert!(
            wire.delivered <= 2 * wire.acks,
            "{name} {seed}: {} segments for {} ACKs",
            wire.delivered,
            wire.acks
        );
        assert_eq!(wire.false_sacks, 0, "{name} {seed}: blocks naming no data");
        assert_eq!(
            wire.redundant, 0,
            "{name} {seed}: ACKs repeating the one before"
        );
        assert!(
            wire.sack_max >= 3,
            "{name} {seed}: {} blocks",
            wire.sack_max
        );
        assert!(
            2 * wire.multi_acked >= wire.holes_acked,
            "{name} {seed}: {} of {}",
            wire.multi_acked,
            wire.holes_acked
        );
    }
    let dsacks: u64 = runs.iter().map(|(_, _, w)| w.dsacks).sum();
    assert!(dsacks > 0, "no duplicate reported");
}
