//! local-proxy's UDP forwarder: request/response round trips per second through it, beside
//! the same load sent straight to the upstream in the same run.
//!
//! Everything runs in one process on loopback: an echo upstream, the forwarder on
//! 127.0.0.1:0, and 16 clients (16 flows), each with one datagram in flight.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use local_proxy::{ConnectionTracker, ProxyConfig, UdpForwarder, UdpRouteConfig};
use tokio::net::UdpSocket;
use tokio::runtime::Runtime;

const CLIENTS: usize = 16;
const PAYLOAD: usize = 64;

async fn echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn forwarder(upstream: SocketAddr) -> SocketAddr {
    let config = ProxyConfig::default();
    let tracker = ConnectionTracker::new(&config);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let forwarder = UdpForwarder::new(UdpRouteConfig::new(upstream));
    tokio::spawn(async move { forwarder.serve(socket, &tracker).await });
    addr
}

async fn clients(to: SocketAddr) -> Vec<UdpSocket> {
    let mut out = Vec::new();
    for _ in 0..CLIENTS {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(to).await.unwrap();
        out.push(socket);
    }
    out
}

/// `iters` round trips spread over the clients; a lost datagram is sent again after 1 s.
async fn round_trips(clients: &[UdpSocket], iters: u64) -> Duration {
    let start = Instant::now();
    let per = iters.div_ceil(CLIENTS as u64);
    let tasks = clients.iter().map(|c| async move {
        let request = [7u8; PAYLOAD];
        let mut buf = [0u8; 2048];
        for _ in 0..per {
            loop {
                c.send(&request).await.unwrap();
                if let Ok(n) = tokio::time::timeout(Duration::from_secs(1), c.recv(&mut buf)).await
                {
                    assert_eq!(n.unwrap(), PAYLOAD);
                    break;
                }
            }
        }
    });
    futures_join_all(tasks).await;
    start.elapsed()
}

/// Polls every future to completion on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future<Output = ()>>(tasks: impl Iterator<Item = F>) {
    let mut tasks: Vec<_> = tasks.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        tasks.retain_mut(|t| t.as_mut().poll(cx).is_pending());
        if tasks.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (direct, forwarded) = rt.block_on(async {
        let upstream = echo().await;
        let front = forwarder(upstream).await;
        (clients(upstream).await, clients(front).await)
    });
    let mut group = c.benchmark_group("local_proxy/udp_round_trips_16_flows");
    group.throughput(Throughput::Elements(1));
    for (name, set) in [("direct", &direct), ("forwarder", &forwarded)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(round_trips(set, iters)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
