//! A lossy path in virtual time: one bulk transfer between two stacks over a link with
//! per-direction delay, jitter, reordering and seeded random loss; reports how long it
//! took in virtual time. A measurement harness (figures in docs/PERFORMANCE.md), not a
//! timed assertion: the tests below only check that the data arrives intact.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smoltcp::wire::IpEndpoint;

use crate::config::NetstackConfig;
use crate::stack::Shared;
use crate::wire::Tuple;

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
#[derive(Debug, Default, Clone, Copy)]
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
}

/// Sends `bytes` from a to b over `path` (both directions alike); returns the virtual
/// time from the first byte written to the last byte read, and a's stats.
pub(crate) fn transfer(
    bytes: usize,
    path: Path,
    seed: u64,
    tune: impl Fn(&mut NetstackConfig),
) -> (Duration, crate::NetstackStats, Wire) {
    let start = Instant::now();
    let mut now = start;
    let make = |ip: &str| {
        let mut config = NetstackConfig::new([ip.parse().expect("ip")]);
        tune(&mut config);
        Shared::new(config, now).expect("stack")
    };
    let (a, b) = (make("10.0.0.1"), make("10.0.0.2"));
    let server: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    let listener = b.register_listener(server, 4).expect("listen");
    let tuple = Tuple {
        local: IpEndpoint::new(
            "10.0.0.1".parse::<std::net::IpAddr>().expect("ip").into(),
            50_000,
        ),
        remote: IpEndpoint::from(server),
    };
    let idx = a.shard_for(&tuple);
    let handle = a
        .with_shard(idx, now, |s| s.connect(&a, tuple))
        .expect("connect")
        .expect("free tuple");
    let mut rng = Rng(seed | 1);
    let mut queue: Queue = BinaryHeap::new();
    let mut n = 0u64;
    let mut out: Vec<Bytes> = Vec::new();
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let (mut written, mut read) = (0usize, 0usize);
    let mut accepted = None;
    let mut began = None;
    let mut buf = vec![0u8; 256 * 1024];
    let mut wire = Wire::default();
    let payload = |p: &[u8]| crate::offload::seq_ack(p).map_or(0, |(len, ..)| len);
    for _ in 0..50_000_000u64 {
        if accepted.is_none() {
            accepted = listener.pop();
        }
        if let Some(acc) = &accepted {
            if written < data.len() {
                began.get_or_insert(now);
                written += a.with_shard(idx, now, |s| {
                    s.tcp(handle).send_slice(&data[written..]).unwrap_or(0)
                });
            }
            loop {
                let got = b.with_shard(acc.shard, now, |s| {
                    s.tcp(acc.handle).recv_slice(&mut buf).unwrap_or(0)
                });
                if got == 0 {
                    break;
                }
                assert_eq!(buf[..got], data[read..read + got], "data intact");
                read += got;
            }
            if read == data.len() {
                let elapsed = now - began.unwrap_or(start);
                let mut stats = a.counters.snapshot();
                stats.tcp_repair_bytes = a.repair_budget.used();
                wire.joined = b.counters.snapshot().tcp_segments_joined;
                // The ACKs of the last data, already emitted.
                out.clear();
                b.drain_out(&mut out, usize::MAX);
                wire.acks += out.iter().filter(|p| payload(p) == 0).count() as u64;
                return (elapsed, stats, wire);
            }
        }
        for (from_a, stack) in [(true, &a), (false, &b)] {
            out.clear();
            stack.drain_out(&mut out, usize::MAX);
            for p in out.drain(..) {
                wire.largest = wire.largest.max(p.len());
                if !from_a && payload(&p) == 0 {
                    wire.acks += 1;
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
                if rng.unit() >= path.reorder {
                    at += path.delay + path.jitter.mul_f64(rng.unit());
                }
                n += 1;
                queue.push(Reverse((at, n, from_a, p)));
            }
        }
        let next = [
            queue.peek().map(|Reverse((t, ..))| *t),
            a.next_deadline(),
            b.next_deadline(),
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
            panic!("something pending while data is missing {read} {written}")
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
    panic!("no end: {read} of {bytes} bytes");
}

/// 1 % loss and 10 ms each way.
pub(crate) const LOSSY: Path = Path {
    loss: 0.01,
    delay: Duration::from_millis(10),
    jitter: Duration::ZERO,
    reorder: 0.0,
};

/// 3 % loss, 10 ± 5 ms each way, 5 % of packets not delayed (reordered).
pub(crate) const REORDERING: Path = Path {
    loss: 0.03,
    delay: Duration::from_millis(5),
    jitter: Duration::from_millis(10),
    reorder: 0.05,
};

/// No loss, 50 ms each way.
pub(crate) const LONG: Path = Path {
    loss: 0.0,
    delay: Duration::from_millis(50),
    jitter: Duration::ZERO,
    reorder: 0.0,
};

#[test]
fn lossy_paths_deliver_everything_with_the_sender_and_without() {
    for (name, path) in [("lossy", LOSSY), ("reordering", REORDERING), ("long", LONG)] {
        let bytes = 4 << 20;
        let mut line = format!("sim {name} 4 MiB:");
        for (label, budget, offload) in [
            ("sender", 8 << 20, true),
            ("sender, wire segments", 8 << 20, false),
            ("smoltcp alone", 0, false),
        ] {
            let mut total = Duration::ZERO;
            for seed in 1..=3 {
                let (t, stats, wire) = transfer(bytes, path, seed, |c| {
                    c.repair_budget = budget;
                    c.segment_offload = offload;
                });
                if seed == 1 {
                    eprintln!(
                        "  {name} {label}: {t:?} retransmits {} probes {} rtos {} undos {} smoltcp resent {} tx {} {wire:?}",
                        stats.tcp_repaired,
                        stats.tcp_probes,
                        stats.tcp_rtos,
                        stats.tcp_undos,
                        stats.tcp_smoltcp_resent,
                        stats.tx_packets
                    );
                }
                total += t;
            }
            let mbs = 3.0 * bytes as f64 / total.as_secs_f64() / 1e6;
            line.push_str(&format!(" {label} {mbs:.2} MB/s;"));
        }
        eprintln!("{line}");
    }
}

/// No loss, 1 ms each way: every flight arrives in one batch.
const CLEAN: Path = Path {
    loss: 0.0,
    delay: Duration::from_millis(1),
    jitter: Duration::ZERO,
    reorder: 0.0,
};

#[test]
fn large_segments_keep_the_wire_standard_and_the_data_exact() {
    for (name, path, mtu) in [
        ("clean", CLEAN, 1420),
        ("clean, 1280", CLEAN, 1280),
        ("lossy", LOSSY, 1420),
        ("reordering", REORDERING, 1420),
    ] {
        // `transfer` checks every byte read against what was written.
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
        if path.loss == 0.0 {
            // Without holes to repair, no ACK ever covers more than two wire segments.
            let mss = (mtu - 40) as u32;
            assert!(wire.widest_ack <= 2 * mss, "{name}: {}", wire.widest_ack);
            assert!(wire.joined > 1000, "{name}: the receiver joined segments");
        }
    }
}
