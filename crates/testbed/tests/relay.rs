//! Self-tests of `ImpairedRelay` over loopback: forwarding both ways, and drop / duplicate /
//! reorder counts that match what a receiver observes, reproducible for a fixed seed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use testbed::{ImpairedRelay, Impairment, RelayStats};

const LOOPBACK: &str = "127.0.0.1:0";

/// A loopback socket with a large receive buffer (best effort), so that on a busy machine the
/// kernel drops nothing before the relay's counters are compared with what arrived.
fn socket() -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&LOOPBACK.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// A gateway socket, an agent socket and a relay between them on loopback.
fn relay_with(impairment: Impairment) -> (UdpSocket, UdpSocket, ImpairedRelay) {
    let gateway = socket();
    let agent = socket();
    let relay = ImpairedRelay::start(
        LOOPBACK.parse().unwrap(),
        gateway.local_addr().unwrap(),
        impairment,
    )
    .unwrap();
    (gateway, agent, relay)
}

fn wait_idle(relay: &ImpairedRelay) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.queued() > 0 {
        assert!(Instant::now() < deadline, "relay never drained: {relay:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Receives until nothing arrives for 200 ms (bounded by `max`).
fn drain(socket: &UdpSocket, max: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < max {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => got.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn transparent_relay_forwards_both_ways_and_learns_the_agent() {
    let (gateway, agent, relay) = relay_with(Impairment::default());
    agent.send_to(b"hello gateway", relay.local_addr()).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = gateway.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello gateway");
    assert_eq!(from, relay.upstream_local_addr());
    gateway.send_to(b"hello agent", from).unwrap();
    let (n, from) = agent.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello agent");
    assert_eq!(from, relay.local_addr());

    // A stranger sending to the upstream socket is not forwarded to the agent.
    let stranger = socket();
    stranger
        .send_to(b"spoof", relay.upstream_local_addr())
        .unwrap();
    assert!(agent.recv_from(&mut buf).is_err());

    wait_idle(&relay);
    let stats = relay.stats();
    assert_eq!((stats.to_gateway.received, stats.to_gateway.sent), (1, 1));
    assert_eq!((stats.to_agent.received, stats.to_agent.sent), (1, 1));
    assert_eq!(stats.to_gateway.dropped + stats.to_agent.dropped, 0);
}

#[test]
fn delay_applies_to_each_direction() {
    let (gateway, agent, relay) = relay_with(Impairment {
        delay: Duration::from_millis(40),
        ..Impairment::default()
    });
    let start = Instant::now();
    agent.send_to(b"x", relay.local_addr()).unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = gateway.recv_from(&mut buf).unwrap();
    let one_way = start.elapsed();
    gateway.send_to(b"y", from).unwrap();
    agent.recv_from(&mut buf).unwrap();
    let rtt = start.elapsed();
    assert!(one_way >= Duration::from_millis(40), "one way {one_way:?}");
    assert!(rtt >= Duration::from_millis(80), "round trip {rtt:?}");
    assert!(rtt < Duration::from_millis(1000), "round trip {rtt:?}");
}

/// What the gateway side saw: per sequence number, how often; and how many arrived late.
struct Observed {
    copies: BTreeMap<u32, u32>,
    late: u64,
}

fn observe(datagrams: &[Vec<u8>]) -> Observed {
    let mut copies = BTreeMap::new();
    let mut late = 0;
    let mut highest = None;
    for d in datagrams {
        let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let first_copy = !copies.contains_key(&seq);
        *copies.entry(seq).or_insert(0) += 1;
        if first_copy && highest.is_some_and(|h| seq < h) {
            late += 1;
        }
        highest = highest.max(Some(seq));
    }
    Observed { copies, late }
}

fn impaired_run(seed: u64, count: u32) -> (RelayStats, Observed) {
    let (gateway, agent, relay) = relay_with(Impairment {
        loss: 0.2,
        duplicate: 0.1,
        reorder: 0.1,
        reorder_hold: Duration::from_millis(200),
        seed,
        ..Impairment::default()
    });
    let receiver = std::thread::spawn(move || drain(&gateway, 10 * count as usize));
    for seq in 0..count {
        let mut datagram = seq.to_be_bytes().to_vec();
        datagram.resize(100, 0xab);
        agent.send_to(&datagram, relay.local_addr()).unwrap();
        // Pace the sender so no kernel socket buffer overflows: the relay's counts must be
        // the only losses.
        if seq % 16 == 15 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    wait_idle(&relay);
    let got = receiver.join().unwrap();
    (relay.stats(), observe(&got))
}

#[test]
fn impairment_counts_match_what_arrives_and_repeat_for_a_seed() {
    const COUNT: u32 = 2000;
    let (stats, seen) = impaired_run(42, COUNT);
    let s = stats.to_gateway;
    assert_eq!(s.received, u64::from(COUNT), "{stats:?}");
    assert_eq!(s.queue_full + s.send_errors, 0, "{stats:?}");
    // Everything the relay says it sent arrived; dropped ones never did; duplicates twice.
    let delivered: u32 = seen.copies.values().sum();
    assert_eq!(u64::from(delivered), s.sent, "{stats:?}");
    assert_eq!(
        seen.copies.len() as u64,
        s.received - s.dropped,
        "{stats:?}"
    );
    assert_eq!(s.sent, s.received - s.dropped + s.duplicated, "{stats:?}");
    let twice = seen.copies.values().filter(|&&n| n == 2).count() as u64;
    assert_eq!(twice, s.duplicated, "{stats:?}");
    assert!(seen.copies.values().all(|&n| n <= 2));
    // Every held-back datagram arrived after its successor (but for a last one that had none).
    assert!(
        seen.late <= s.reordered && seen.late + 1 >= s.reordered,
        "{stats:?} late {}",
        seen.late
    );
    // The rates are near what was asked (binomial, > 5 sigma margins).
    let near = |n: u64, p: f64, base: u64| {
        let mean = p * base as f64;
        let sigma = (base as f64 * p * (1.0 - p)).sqrt();
        (n as f64 - mean).abs() < 5.0 * sigma
    };
    assert!(near(s.dropped, 0.2, s.received), "{stats:?}");
    assert!(near(s.duplicated, 0.1, s.received - s.dropped), "{stats:?}");
    assert!(s.reordered > 50, "{stats:?}");
    assert_eq!(stats.to_agent, Default::default());

    // Same seed, same decisions; another seed, others.
    let (again, _) = impaired_run(42, COUNT);
    assert_eq!(again, stats);
    let (other, _) = impaired_run(43, COUNT);
    assert_ne!(other.to_gateway, stats.to_gateway);
}

#[test]
fn full_queue_drops_and_counts() {
    let (gateway, agent, relay) = relay_with(Impairment {
        delay: Duration::from_millis(300),
        queue_limit: 10,
        ..Impairment::default()
    });
    for i in 0..30u8 {
        agent.send_to(&[i], relay.local_addr()).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while relay.stats().to_gateway.received < 30 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let queued = relay.stats().to_gateway;
    assert_eq!(queued.received, 30);
    assert_eq!(queued.queue_full, 20, "{queued:?}");
    wait_idle(&relay);
    let got = drain(&gateway, 100);
    assert_eq!(got.len(), 10);
    assert_eq!(relay.stats().to_gateway.sent, 10);
}

#[test]
fn drop_stops_the_threads_and_frees_the_port() {
    let (_gateway, _agent, relay) = relay_with(Impairment::default());
    let addr: SocketAddr = relay.local_addr();
    let start = Instant::now();
    drop(relay);
    assert!(start.elapsed() < Duration::from_secs(1));
    // The port is free again once the sockets are closed.
    UdpSocket::bind(addr).unwrap();
}

#[test]
fn out_of_range_probabilities_are_clamped() {
    let (gateway, agent, relay) = relay_with(Impairment {
        loss: f64::NAN,
        duplicate: -1.0,
        reorder: 2.0,
        // Longer than any scheduling hiccup: each held datagram waits for its successor.
        reorder_hold: Duration::from_secs(2),
        ..Impairment::default()
    });
    for i in 0..10u8 {
        agent.send_to(&[i], relay.local_addr()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_idle(&relay);
    let got = drain(&gateway, 100);
    let s = relay.stats().to_gateway;
    // NaN loss = none lost; duplicate < 0 = never; reorder > 1 = every one that can be held.
    assert_eq!((s.received, s.dropped, s.duplicated), (10, 0, 0), "{s:?}");
    assert_eq!(got.len(), 10);
    assert_eq!(
        s.reordered, 5,
        "every other datagram is held behind the next: {s:?}"
    );
    assert_eq!(got, [[1], [0], [3], [2], [5], [4], [7], [6], [9], [8]]);

    relay.set_impairment(Impairment {
        loss: 7.0,
        ..Impairment::default()
    });
    agent.send_to(b"gone", relay.local_addr()).unwrap();
    assert!(drain(&gateway, 1).is_empty());
    assert_eq!(relay.stats().to_gateway.dropped, 1);
}

/// Sends `count` numbered datagrams 1 ms apart through a relay with 5 ms ± 4 ms and returns the
/// order they arrived in.
fn arrival_order(keep_order: bool, count: u32) -> Vec<u32> {
    let (gateway, agent, relay) = relay_with(Impairment {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(4),
        keep_order,
        seed: 11,
        ..Impairment::default()
    });
    for seq in 0..count {
        agent
            .send_to(&seq.to_be_bytes(), relay.local_addr())
            .unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_idle(&relay);
    drain(&gateway, count as usize)
        .iter()
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .collect()
}

#[test]
fn jitter_reorders_unless_order_is_kept() {
    let netem_like = arrival_order(false, 100);
    let fifo = arrival_order(true, 100);
    assert_eq!(fifo, (0..100).collect::<Vec<_>>());
    let mut sorted = netem_like.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "nothing lost");
    let inversions = netem_like.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        inversions > 5,
        "jitter of ±4 ms at 1 ms spacing reorders: {netem_like:?}"
    );
}

/// `undelayed` sends a share of the datagrams at once: on a FIFO path with a long delay they
/// overtake the ones in flight (and only they do), and the counter says how many.
#[test]
fn undelayed_datagrams_overtake_a_fifo_delay() {
    const COUNT: u32 = 200;
    let (gateway, agent, relay) = relay_with(Impairment {
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(5),
        keep_order: true,
        undelayed: 0.1,
        seed: 5,
        ..Impairment::default()
    });
    for seq in 0..COUNT {
        agent
            .send_to(&seq.to_be_bytes(), relay.local_addr())
            .unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_idle(&relay);
    let order: Vec<u32> = drain(&gateway, COUNT as usize)
        .iter()
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .collect();
    let s = relay.stats().to_gateway;
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..COUNT).collect::<Vec<_>>(), "nothing lost");
    // Near 10 % (binomial, > 5 sigma margin: 20 ± 21).
    assert!((1..=41).contains(&s.undelayed), "{s:?}");
    // The delayed ones keep their order among themselves: removing every datagram that
    // arrived ahead of a smaller one leaves an increasing sequence.
    let mut overtakers = 0;
    let mut max_seen = None;
    for (i, &seq) in order.iter().enumerate() {
        if order[i + 1..].iter().any(|&later| later < seq) {
            overtakers += 1;
        } else {
            assert!(max_seen.is_none_or(|m| seq > m), "{order:?}");
            max_seen = Some(seq);
        }
    }
    assert!(overtakers >= 1, "{order:?}");
    assert!(overtakers as u64 <= s.undelayed, "{overtakers} > {s:?}");
}
