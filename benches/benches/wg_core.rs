//! wg-core: encapsulate + route and decapsulate + route per packet size (64, 512, 1420 bytes)
//! through `Peers`, beside raw `boringtun::noise::Tunn` doing the same crypto in the same run
//! (baseline). The difference is wg-core's routing, checks, queues and counters.

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wg_core::{PeerConfig, Peers, PrivateKey};

const SIZES: [usize; 3] = [64, 512, 1420];
const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("bench address")
}

fn ipv4(len: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Moves every queued datagram from one engine to the other.
fn pump(from: &mut Peers, from_addr: SocketAddr, to: &mut Peers, now: Instant) -> usize {
    let mut moved = Vec::new();
    while let Some(t) = from.poll_transmit() {
        moved.push(t.payload.to_vec());
    }
    for d in &moved {
        let _ = to.handle_datagram(from_addr, d, now);
    }
    while to.poll_received().is_some() {}
    moved.len()
}

/// Two engines with an established session; A has a few more gateways so routing has work.
fn engines() -> (Peers, Peers) {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let now = Instant::now();
    let mut a = Peers::new(ka.clone());
    let mut b = Peers::new(kb.clone());
    b.set_peers(
        vec![
            PeerConfig::new(ka.public_key()).with_allowed_ip("10.1.0.100/32".parse().expect("net")),
        ],
        now,
    );
    let mut configs = vec![
        PeerConfig::new(kb.public_key())
            .with_endpoint(addr(B_ADDR))
            .with_allowed_ip("10.1.0.1/32".parse().expect("net"))
            .with_keepalive(Duration::from_secs(25)),
    ];
    for i in 2..6u8 {
        configs.push(
            PeerConfig::new(PrivateKey::generate().public_key())
                .with_allowed_ip(format!("10.1.0.{i}/32").parse().expect("net")),
        );
    }
    a.set_peers(configs, now);
    while pump(&mut a, addr(A_ADDR), &mut b, now) + pump(&mut b, addr(B_ADDR), &mut a, now) > 0 {}
    (a, b)
}

/// Two raw tunnels with an established session.
fn tunnels() -> (Tunn, Tunn) {
    // Fixed keys: the bench measures per-packet work, not key generation.
    let (sa, sb) = (
        x25519::StaticSecret::from([0x11; 32]),
        x25519::StaticSecret::from([0x22; 32]),
    );
    let (pa, pb) = (x25519::PublicKey::from(&sa), x25519::PublicKey::from(&sb));
    let la = Arc::new(RateLimiter::new(&pa, 100));
    let lb = Arc::new(RateLimiter::new(&pb, 100));
    let mut a = Tunn::new(sa, pb, None, None, 1, Some(la));
    let mut b = Tunn::new(sb, pa, None, None, 2, Some(lb));
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("initiation"),
    };
    let resp = match b.decapsulate(None, &init, &mut buf2) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("response"),
    };
    let keepalive = match a.decapsulate(None, &resp, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("keepalive"),
    };
    let _ = b.decapsulate(None, &keepalive, &mut buf2);
    (a, b)
}

fn bench_encapsulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("wg_core/encapsulate");
    let (mut a, _b) = engines();
    let (mut ta, _tb) = tunnels();
    let now = Instant::now();
    let mut out = vec![0u8; 2048];
    for size in SIZES {
        let packet = ipv4(size, [10, 1, 0, 100], [10, 1, 0, 1]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("raw_boringtun", size),
            &packet,
            |bench, p| {
                bench.iter(|| match ta.encapsulate(black_box(p), &mut out) {
                    TunnResult::WriteToNetwork(d) => black_box(d.len()),
                    _ => 0,
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("peers_route", size),
            &packet,
            |bench, p| {
                bench.iter(|| {
                    a.handle_ip_packet(black_box(p), now).expect("routed");
                    let t = a.poll_transmit().expect("datagram");
                    black_box(t.payload.len())
                })
            },
        );
    }
    group.finish();
}

fn bench_decapsulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("wg_core/decapsulate");
    let (mut a, mut b) = engines();
    let (mut ta, mut tb) = tunnels();
    let now = Instant::now();
    let from = addr(A_ADDR);
    let mut enc = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    for size in SIZES {
        let packet = ipv4(size, [10, 1, 0, 100], [10, 1, 0, 1]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("raw_boringtun", size), |bench| {
            bench.iter_batched(
                || match ta.encapsulate(&packet, &mut enc) {
                    TunnResult::WriteToNetwork(d) => d.to_vec(),
                    _ => panic!("encapsulate"),
                },
                |d| match tb.decapsulate(Some(from.ip()), black_box(&d), &mut out) {
                    TunnResult::WriteToTunnelV4(p, _) => black_box(p.len()),
                    other => panic!("decapsulate: {other:?}"),
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("peers_route", size), |bench| {
            bench.iter_batched(
                || {
                    a.handle_ip_packet(&packet, now).expect("routed");
                    a.poll_transmit().expect("datagram").payload.to_vec()
                },
                |d| {
                    b.handle_datagram(from, black_box(&d), now)
                        .expect("accepted");
                    black_box(b.poll_received().expect("packet").packet.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encapsulate, bench_decapsulate);
criterion_main!(benches);
