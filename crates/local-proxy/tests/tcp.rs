//! The raw TCP forwarder on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use local_proxy::{ConnectionTracker, ProxyConfig, TcpForwarder, TcpRouteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use common::{closed_port, read_once, read_to_close};

/// Parse a PROXY v2 header the way an upstream would: returns (source, destination).
async fn read_proxy_v2(stream: &mut TcpStream) -> (SocketAddr, SocketAddr) {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await.unwrap();
    assert_eq!(
        &fixed[..12],
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
    );
    assert_eq!(fixed[12], 0x21, "version 2, PROXY command");
    assert_eq!(fixed[13], 0x11, "TCP over IPv4");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    assert_eq!(len, 12);
    let mut addrs = vec![0u8; len];
    stream.read_exact(&mut addrs).await.unwrap();
    let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    (
        SocketAddr::new(ip(&addrs[0..4]), port(&addrs[8..10])),
        SocketAddr::new(ip(&addrs[4..8]), port(&addrs[10..12])),
    )
}

async fn start_forwarder(route: TcpRouteConfig) -> (SocketAddr, TcpForwarder, ConnectionTracker) {
    start_forwarder_with(route, ProxyConfig::default()).await
}

async fn start_forwarder_with(
    route: TcpRouteConfig,
    config: ProxyConfig,
) -> (SocketAddr, TcpForwarder, ConnectionTracker) {
    let tracker = ConnectionTracker::new(&config);
    let forwarder = TcpForwarder::new(route, &config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let (f, t) = (forwarder.clone(), tracker.clone());
        async move { f.serve(listener, &t).await }
    });
    (addr, forwarder, tracker)
}

#[tokio::test]
async fn proxy_v2_header_then_bytes_both_ways_with_half_close() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (seen_tx, seen_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let header = read_proxy_v2(&mut s).await;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap(); // the client half-closed
        s.write_all(&got).await.unwrap();
        s.write_all(b" and bye").await.unwrap();
        seen_tx.send(header).unwrap();
    });
    let mut route = TcpRouteConfig::new(upstream_addr);
    route.proxy_protocol = true;
    let (addr, forwarder, tracker) = start_forwarder(route).await;

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"hello upstream").await.unwrap();
    client.shutdown().await.unwrap();
    let back = read_to_close(&mut client, Duration::from_secs(5)).await;
    assert_eq!(back, b"hello upstream and bye");

    let (source, destination) = seen_rx.await.unwrap();
    assert_eq!(source, client.local_addr().unwrap());
    assert_eq!(destination, addr);
    tokio::time::timeout(Duration::from_secs(2), tracker.drained())
        .await
        .unwrap();
    let m = forwarder.metrics().snapshot();
    assert_eq!((m.bytes_in, m.bytes_out, m.connections), (14, 22, 1));
}

#[tokio::test]
async fn proxy_v2_destination_is_the_address_the_client_reached() {
    // A listener on every address (as a dual-stack agent's virtual IPs are served): the
    // header names the address of this connection, not the wildcard.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (seen_tx, seen_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        seen_tx.send(read_proxy_v2(&mut s).await).unwrap();
    });
    let mut route = TcpRouteConfig::new(upstream_addr);
    route.proxy_protocol = true;
    let config = ProxyConfig::default();
    let tracker = ConnectionTracker::new(&config);
    let forwarder = TcpForwarder::new(route, &config);
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn({
        let (f, t) = (forwarder.clone(), tracker.clone());
        async move { f.serve(listener, &t).await }
    });
    let reached = SocketAddr::from(([127, 0, 0, 1], port));
    let _client = TcpStream::connect(reached).await.unwrap();
    let (_, destination) = tokio::time::timeout(Duration::from_secs(10), seen_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(destination, reached);
}

#[tokio::test]
async fn refused_upstream_closes_the_client_and_counts() {
    let (addr, forwarder, _tracker) = start_forwarder(TcpRouteConfig::new(closed_port())).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_once(&mut client).await, 0);
    assert_eq!(forwarder.metrics().snapshot().upstream_errors, 1);
}

#[tokio::test]
async fn shutdown_closes_busy_forwards_at_the_drain_deadline() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut buf = [0; 1024];
        // Echo until the proxy closes us.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut config = ProxyConfig::default();
    config.drain_timeout = Duration::from_millis(300);
    let (addr, _forwarder, tracker) =
        start_forwarder_with(TcpRouteConfig::new(upstream_addr), config).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut back = [0; 4];
    client.read_exact(&mut back).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), tracker.shutdown())
        .await
        .unwrap();
    assert_eq!(
        outcome,
        local_proxy::ShutdownOutcome::ForcedClose { closed: 1 }
    );
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener should be closed"
    );
}

#[tokio::test]
async fn connections_past_the_socket_budget_are_closed_and_counted() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        // Hold every accepted connection open.
        let mut held = Vec::new();
        while let Ok((s, _)) = upstream.accept().await {
            held.push(s);
        }
    });
    let mut config = ProxyConfig::default();
    config.max_upstream_sockets = 1;
    let (addr, forwarder, tracker) =
        start_forwarder_with(TcpRouteConfig::new(upstream_addr), config).await;
    let _first = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    while tracker.fd_budget().in_use() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_once(&mut second).await, 0);
    assert_eq!(forwarder.metrics().snapshot().over_socket_budget, 1);
    assert_eq!(tracker.fd_budget().in_use(), 1);
}

/// Reads until the end: `Ok(bytes)` on a clean EOF, `Err` when the connection fails (bounded:
/// 10 s).
async fn read_all(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut total = 0;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the connection ends within 10 s")?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

const SENT: usize = 100_000;

#[tokio::test]
async fn an_upstream_reset_reaches_the_client_as_a_reset() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        // Once the client's first byte came through, the forward is established.
        s.read_exact(&mut [0; 1]).await.unwrap();
        s.write_all(&vec![7; SENT]).await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s); // RST
    });
    let (addr, _forwarder, _tracker) = start_forwarder(TcpRouteConfig::new(upstream_addr)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"g").await.unwrap();
    let end = read_all(&mut client).await;
    assert!(
        end.is_err(),
        "the client took a reset stream as complete: {end:?}"
    );
}

#[tokio::test]
async fn a_client_reset_reaches_the_upstream_as_a_reset() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (end_tx, end_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        end_tx.send(read_all(&mut s).await).unwrap();
    });
    let (addr, _forwarder, _tracker) = start_forwarder(TcpRouteConfig::new(upstream_addr)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&vec![7; SENT]).await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client); // RST
    let end = tokio::time::timeout(Duration::from_secs(15), end_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(
        end.is_err(),
        "the upstream took a reset stream as complete: {end:?}"
    );
}
