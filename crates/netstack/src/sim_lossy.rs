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

/// Sends `bytes` from a to b over `path` (both directions alike); returns the virtual
/// time from the first byte written to the last byte read, and a's stats.
pub(crate) fn transfer(
    bytes: usize,
    path: Path,
    seed: u64,
    tune: impl Fn(&mut NetstackConfig),
) -> (Duration, crate::NetstackStats) {
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
    for _ in 0..50_000_000u64 {
        if accepted.is_none() {
            accepted = listener.pop();
        }
        if let Some(acc) = &accepted {
            if written < data.len() {
                began.get_or_insert(now);
                // As `TcpStream::poll_write` does: memory first, then the ring.
                written += a.with_shard(idx, now, |s| {
                    let granted = s.reserve_send(&a, &tuple, data.len() - written);
                    let n = s
                        .tcp(handle)
                        .send_slice(&data[written..written + granted])
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
                assert_eq!(buf[..got], data[read..read + got], "data intact");
                read += got;
            }
            if read == data.len() {
                let elapsed = now - began.unwrap_or(start);
                let mut stats = a.counters.snapshot();
                stats.tcp_repair_bytes = a.sender_bytes();
                return (elapsed, stats);
            }
        }
        for (from_a, stack) in [(true, &a), (false, &b)] {
            out.clear();
            stack.drain_out(&mut out, usize::MAX);
            for p in out.drain(..) {
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
        .expect("something pending while data is missing");
        now = now.max(next);
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        while let Some(Reverse((t, ..))) = queue.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, _, from_a, p))) = queue.pop() else {
                break;
            };
            if from_a { to_b.push(p) } else { to_a.push(p) }
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
        for (label, sender) in [("sender", true), ("smoltcp alone", false)] {
            let mut total = Duration::ZERO;
            for seed in 1..=3 {
                let (t, stats) = transfer(bytes, path, seed, |c| c.tcp_sender = sender);
                if seed == 1 {
                    eprintln!(
                        "  {name} {label}: {t:?} retransmits {} probes {} rtos {} undos {} smoltcp resent {} tx {}",
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

/// Virtual-time throughput of `bytes` over `path`, MB/s (seed 1).
fn throughput(bytes: usize, path: Path, tune: impl Fn(&mut NetstackConfig)) -> f64 {
    let (t, _) = transfer(bytes, path, 1, tune);
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
