//! A simulated network for the sans-IO core: two stacks without a driver, packets moved
//! by hand, time jumped to the next deadline. Deterministic loss by packet index.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smoltcp::wire::IpEndpoint;

use crate::config::NetstackConfig;
use crate::stack::Shared;
use crate::stats::NetstackStats;
use crate::wire::Tuple;

fn stack(ip: &str, now: Instant) -> Shared {
    stack_with(ip, now, |_| {})
}

fn stack_with(ip: &str, now: Instant, tune: impl FnOnce(&mut NetstackConfig)) -> Shared {
    let mut config = NetstackConfig::new([ip.parse().expect("ip")]);
    tune(&mut config);
    Shared::new(config, now).expect("stack")
}

/// Moves packets both ways until none are in flight; `lose(n)` drops the n-th packet
/// from `a` to `b`.
fn exchange(a: &Shared, b: &Shared, now: Instant, sent: &mut usize, lose: &dyn Fn(usize) -> bool) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        batch.clear();
        let from_a = a.drain_out(&mut batch, usize::MAX);
        batch.retain(|_| {
            *sent += 1;
            !lose(*sent)
        });
        b.push_at(&batch, now);
        batch.clear();
        let from_b = b.drain_out(&mut batch, usize::MAX);
        a.push_at(&batch, now);
        if from_a == 0 && from_b == 0 {
            return;
        }
    }
}

#[test]
fn handshake_transfer_and_loss_recovery_in_virtual_time() {
    // smoltcp alone: its retransmission timers must fire.
    let (alone, stats) = transfer_losing_every_17th_packet(0);
    assert!(alone >= Duration::from_millis(10), "timers ran: {alone:?}");
    assert_eq!(stats.tcp_repaired + stats.tcp_probes, 0);
    // With loss repair: the receiver's SACK blocks show the holes, which are resent
    // without waiting for a timeout, so the same transfer takes less virtual time.
    let (repaired, stats) = transfer_losing_every_17th_packet(32 << 20);
    assert!(stats.tcp_repaired > 0, "{stats:?}");
    assert!(
        repaired < alone,
        "with repair {repaired:?}, without {alone:?}"
    );
    eprintln!(
        "sim: 200 KiB at 1/17 loss: {alone:?} without loss repair, {repaired:?} with ({stats:?})"
    );
    assert_eq!(
        stats.tcp_repair_bytes, 0,
        "everything acknowledged: {stats:?}"
    );
}

/// 200 KiB from one stack to another over a link losing every 17th packet; returns the
/// virtual time it took and the sender's stats.
fn transfer_losing_every_17th_packet(repair_budget: usize) -> (Duration, NetstackStats) {
    let start = Instant::now();
    let mut now = start;
    let a = stack_with("10.0.0.1", now, |c| c.repair_budget = repair_budget);
    let b = stack("10.0.0.2", now);
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
    let mut sent = 0;
    exchange(&a, &b, now, &mut sent, &|_| false);
    let accepted = listener.pop().expect("established and queued");
    assert_eq!(accepted.tuple.remote, tuple.local);

    // 200 KiB from a to b, losing every 17th packet: retransmission timers must fire.
    let data: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut written = 0;
    let mut received = Vec::new();
    let lose = |n: usize| n.is_multiple_of(17);
    let mut rounds = 0;
    while received.len() < data.len() {
        rounds += 1;
        assert!(
            rounds < 10_000,
            "no progress: {} of {}",
            received.len(),
            data.len()
        );
        if written < data.len() {
            written += a.with_shard(idx, now, |s| {
                s.tcp(handle).send_slice(&data[written..]).expect("send")
            });
        }
        exchange(&a, &b, now, &mut sent, &lose);
        let mut buf = vec![0u8; 64 * 1024];
        let n = b.with_shard(accepted.shard, now, |s| {
            s.tcp(accepted.handle).recv_slice(&mut buf).expect("recv")
        });
        received.extend_from_slice(&buf[..n]);
        if n == 0 {
            // Nothing moved: jump to the next timer.
            let next = [a.next_deadline(), b.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .expect("a timer is pending while data is missing");
            now = now.max(next);
            a.drive_at(now);
            b.drive_at(now);
        }
    }
    assert_eq!(received, data);
    let elapsed = now - start;
    assert!(
        elapsed < Duration::from_secs(60),
        "recovered in {elapsed:?}"
    );
    // Let the last ACKs reach the sender.
    exchange(&a, &b, now, &mut sent, &|_| false);
    let mut stats = a.counters.snapshot();
    stats.tcp_repair_bytes = a.repair_budget.used();
    assert!(stats.tx_packets > 150);
    (elapsed, stats)
}

/// A valid SYN from 10.0.0.1:`port` to 10.0.0.2:80 (from a real stack, so it is what
/// a peer would send).
fn real_syn(port: u16) -> Vec<u8> {
    let now = Instant::now();
    let a = stack("10.0.0.1", now);
    let tuple = Tuple {
        local: IpEndpoint::new(
            "10.0.0.1".parse::<std::net::IpAddr>().expect("ip").into(),
            port,
        ),
        remote: IpEndpoint::from("10.0.0.2:80".parse::<SocketAddr>().expect("addr")),
    };
    let idx = a.shard_for(&tuple);
    a.with_shard(idx, now, |s| s.connect(&a, tuple))
        .expect("connect")
        .expect("free");
    let mut out = Vec::new();
    a.drain_out(&mut out, 1);
    out.pop().expect("a SYN").to_vec()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Arbitrary damage to real packets never panics the stack, and every packet is
    /// either processed or counted as dropped.
    #[test]
    fn damaged_packets_never_panic(
        flips in proptest::collection::vec((0usize..80, proptest::num::u8::ANY), 0..8),
        cut in 0usize..100,
        junk in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
    ) {
        let now = Instant::now();
        let b = stack("10.0.0.2", now);
        let _listener = b.register_listener("10.0.0.2:80".parse().expect("addr"), 4).expect("listen");
        let mut syn = real_syn(40_000);
        for (at, x) in flips {
            if let Some(byte) = syn.get_mut(at) {
                *byte ^= x;
            }
        }
        syn.truncate(cut.max(1));
        let batch = vec![syn, junk];
        let accepted = b.push_at(&batch, now);
        let stats = b.counters.snapshot();
        proptest::prop_assert_eq!(accepted as u64 + stats.dropped.total() - stats.dropped.get(crate::DropReason::NoSocket) - stats.dropped.get(crate::DropReason::LimitReached), 2);
        b.drive_at(now + Duration::from_secs(30));
        let mut out = Vec::new();
        b.drain_out(&mut out, usize::MAX);
    }
}

#[test]
fn a_new_syn_reuses_a_tuple_in_time_wait() {
    let now = Instant::now();
    let a = stack("10.0.0.1", now);
    let b = stack("10.0.0.2", now);
    let server: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    let listener = b.register_listener(server, 4).expect("listen");
    let tuple = Tuple {
        local: IpEndpoint::new(
            "10.0.0.1".parse::<std::net::IpAddr>().expect("ip").into(),
            50_001,
        ),
        remote: IpEndpoint::from(server),
    };
    let idx = a.shard_for(&tuple);
    let mut sent = 0;
    for round in 0..2 {
        let handle = a
            .with_shard(idx, now, |s| s.connect(&a, tuple))
            .expect("connect")
            .expect("tuple free on our side");
        exchange(&a, &b, now, &mut sent, &|_| false);
        let accepted = listener
            .pop()
            .unwrap_or_else(|| panic!("round {round}: not accepted"));
        assert_eq!(
            a.with_shard(idx, now, |s| s.tcp(handle).state()),
            smoltcp::socket::tcp::State::Established
        );
        // The server closes first (so it ends in TIME-WAIT), then the client.
        b.with_shard(accepted.shard, now, |s| {
            s.release(&b, accepted.tuple, now, false);
        });
        exchange(&a, &b, now, &mut sent, &|_| false);
        a.with_shard(idx, now, |s| s.tcp(handle).close());
        exchange(&a, &b, now, &mut sent, &|_| false);
        a.with_shard(idx, now, |s| s.release(&a, tuple, now, false));
        assert_eq!(a.counters.snapshot().tcp_sockets, 0);
        assert_eq!(b.counters.snapshot().tcp_sockets, 1, "server in TIME-WAIT");
    }
}

#[test]
fn an_idle_send_ring_is_released_through_smoltcp_and_reads_as_zeros() {
    let start = Instant::now();
    let a = stack("10.0.0.1", start);
    let b = stack("10.0.0.2", start);
    let server: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    let listener = b.register_listener(server, 4).expect("listen");
    let tuple = Tuple {
        local: IpEndpoint::new(
            "10.0.0.1".parse::<std::net::IpAddr>().expect("ip").into(),
            50_002,
        ),
        remote: IpEndpoint::from(server),
    };
    let idx = a.shard_for(&tuple);
    let handle = a
        .with_shard(idx, start, |s| s.connect(&a, tuple))
        .expect("connect")
        .expect("free tuple");
    let mut sent = 0;
    exchange(&a, &b, start, &mut sent, &|_| false);
    let accepted = listener.pop().expect("accepted");
    // 384 KiB of non-zero bytes, all read and acknowledged.
    let data = vec![0xa5u8; 384 << 10];
    let mut written = 0;
    let mut received = 0;
    let mut buf = vec![0u8; 64 << 10];
    while received < data.len() {
        written += a.with_shard(idx, start, |s| {
            s.tcp(handle).send_slice(&data[written..]).expect("send")
        });
        exchange(&a, &b, start, &mut sent, &|_| false);
        received += b.with_shard(accepted.shard, start, |s| {
            s.tcp(accepted.handle).recv_slice(&mut buf).expect("recv")
        });
    }
    exchange(&a, &b, start, &mut sent, &|_| false);
    let ring_is_zero = |a: &Shared, now| {
        a.with_shard(idx, now, |s| {
            s.tcp(handle)
                .send(|free| (0, free.iter().all(|&b| b == 0)))
                .expect("may send")
        })
    };
    assert_eq!(a.with_shard(idx, start, |s| s.tcp(handle).send_queue()), 0);
    assert!(
        !ring_is_zero(&a, start),
        "the sent bytes are still in the ring"
    );
    // Idle for the release delay: the pages go back and read as zeros.
    let later = start + Duration::from_secs(2);
    a.drive_at(later);
    assert!(ring_is_zero(&a, later), "released");
    // The ring works as before.
    a.with_shard(idx, later, |s| {
        s.tcp(handle).send_slice(b"more").expect("send")
    });
    exchange(&a, &b, later, &mut sent, &|_| false);
    let n = b.with_shard(accepted.shard, later, |s| {
        s.tcp(accepted.handle).recv_slice(&mut buf).expect("recv")
    });
    assert_eq!(&buf[..n], b"more");
}

#[test]
fn a_panic_under_a_shard_lock_leaves_the_stack_usable() {
    let now = Instant::now();
    let a = stack_with("10.0.0.1", now, |c| c.shards = 1);
    let b = stack("10.0.0.2", now);
    let server: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    let listener = b.register_listener(server, 4).expect("listen");
    let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.with_shard(0, now, |_| panic!("a bug while the shard is locked"))
    }));
    assert!(poisoned.is_err());
    let tuple = Tuple {
        local: IpEndpoint::new(
            "10.0.0.1".parse::<std::net::IpAddr>().expect("ip").into(),
            50_003,
        ),
        remote: IpEndpoint::from(server),
    };
    a.with_shard(0, now, |s| s.connect(&a, tuple))
        .expect("connect")
        .expect("free tuple");
    let mut sent = 0;
    exchange(&a, &b, now, &mut sent, &|_| false);
    assert!(listener.pop().is_some(), "connected after the panic");
}

#[test]
fn at_the_half_open_bound_the_oldest_half_open_connection_is_evicted() {
    let start = Instant::now();
    let a = stack("10.0.0.1", start);
    let b = stack_with("10.0.0.2", start, |c| {
        c.shards = 1;
        c.max_pending_syns = 3;
    });
    let server: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    let listener = b.register_listener(server, 16).expect("listen");
    let client = |port| Tuple {
        local: IpEndpoint::new(
            "10.0.0.1".parse::<std::net::IpAddr>().expect("ip").into(),
            port,
        ),
        remote: IpEndpoint::from(server),
    };
    // Four SYNs, 1 ms apart; b's SYN-ACKs are held back, so all stay half-open.
    let mut held = Vec::new();
    for (i, port) in [51_000u16, 51_001, 51_002, 51_003].into_iter().enumerate() {
        let now = start + Duration::from_millis(i as u64);
        let tuple = client(port);
        let idx = a.shard_for(&tuple);
        a.with_shard(idx, now, |s| s.connect(&a, tuple))
            .expect("connect")
            .expect("free");
        let mut syn = Vec::new();
        a.drain_out(&mut syn, usize::MAX);
        b.push_at(&syn, now);
        b.drain_out(&mut held, usize::MAX);
    }
    let stats = b.counters.snapshot();
    assert_eq!(
        (stats.half_open, stats.half_open_evicted),
        (3, 1),
        "{stats:?}"
    );
    // The SYN-ACKs reach the clients; their ACKs complete every handshake but the evicted.
    let now = start + Duration::from_millis(10);
    a.push_at(&held, now);
    let mut sent = 0;
    exchange(&a, &b, now, &mut sent, &|_| false);
    let mut accepted = Vec::new();
    while let Some(conn) = listener.pop() {
        accepted.push(conn.tuple.remote.port);
    }
    accepted.sort_unstable();
    assert_eq!(
        accepted,
        [51_001, 51_002, 51_003],
        "the oldest (51000) was evicted"
    );
}
