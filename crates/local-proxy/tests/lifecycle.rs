//! Connection limits, idle timeouts and graceful shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use local_proxy::{ProxyConfig, ShutdownOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn max_connections_is_enforced() {
    let config = config(|c| c.max_connections = 1);
    let (_, p) = start_pair(config).await;
    let mut first = TcpStream::connect(p.addr).await.unwrap();
    first
        .write_all(b"GET /say?a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut first).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(p.addr).await.unwrap();
    let n = read_once(&mut second).await;
    assert_eq!(n, 0, "second connection should be closed");
    assert_eq!(p.proxy.metrics().snapshot().connections_rejected, 1);
    drop(first);
    tokio::time::timeout(Duration::from_secs(2), p.tracker.drained())
        .await
        .unwrap();
    assert_eq!(body_text(send(p.addr, get("/say?b")).await).await, "b");
}

#[tokio::test]
async fn graceful_shutdown_completes_a_slow_response() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let in_flight = tokio::spawn(send(p.addr, get("/slow?800")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.tracker.open_connections(), 1);
    let outcome = tokio::time::timeout(Duration::from_secs(5), p.tracker.shutdown())
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::Drained);
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "slow done");
    p.serving.await.unwrap();
    assert!(
        TcpStream::connect(p.addr).await.is_err(),
        "listener should be closed"
    );
}

#[tokio::test]
async fn shutdown_closes_tunnels_after_the_drain_timeout() {
    let config = config(|c| c.drain_timeout = Duration::from_millis(300));
    let (_, p) = start_pair(config).await;
    let mut ws = open_tunnel(p.addr).await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), p.tracker.shutdown())
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::ForcedClose { closed: 1 });
    assert!(started.elapsed() >= Duration::from_millis(300));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), ws.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
}

#[tokio::test]
async fn idle_connections_and_tunnels_are_closed_at_the_idle_timeout() {
    let config = config(|c| c.idle_timeout = Duration::from_millis(400));
    let (_, p) = start_pair(config).await;
    let started = std::time::Instant::now();
    let mut kept = TcpStream::connect(p.addr).await.unwrap();
    kept.write_all(b"GET /say?a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut kept).await.starts_with("HTTP/1.1 200"));
    let mut ws = open_tunnel(p.addr).await;
    // Traffic keeps the tunnel open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.write_all(b"ping").await.unwrap();
        let mut back = [0; 4];
        ws.read_exact(&mut back).await.unwrap();
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), kept.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle keep-alive connection stayed open");
    let closed = tokio::time::timeout(Duration::from_secs(3), ws.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle tunnel stayed open");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    tokio::time::timeout(Duration::from_secs(2), p.tracker.drained())
        .await
        .unwrap();
}

#[tokio::test]
async fn forced_close_also_ends_in_flight_http2_streams() {
    let (_, p) = start_pair(config(|c| c.drain_timeout = Duration::from_millis(200))).await;
    let (mut sender, _conn) = h2_client(p.addr).await;
    let req = Request::get("http://x/slow?5000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(async move { sender.send_request(req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(3), p.tracker.shutdown())
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::ForcedClose { closed: 1 });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let answer = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_err(), "the slow request cannot have completed");
}

#[tokio::test]
async fn an_upgraded_tunnel_keeps_its_connection_slot() {
    let (_, p) = start_pair(config(|c| c.max_connections = 1)).await;
    let mut ws = open_tunnel(p.addr).await;
    ws.write_all(b"hi").await.unwrap();
    let mut back = [0; 2];
    ws.read_exact(&mut back).await.unwrap();
    let mut second = TcpStream::connect(p.addr).await.unwrap();
    let n = read_once(&mut second).await;
    assert_eq!(n, 0, "the tunnel holds the only slot");
    assert_eq!(p.proxy.metrics().snapshot().connections_rejected, 1);
    assert_eq!(p.proxy.metrics().snapshot().open_connections, 1);
}

#[tokio::test]
async fn graceful_shutdown_lets_http2_streams_finish() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let (mut sender, conn) = h2_client(p.addr).await;
    let req = Request::get("http://x/slow?500")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(async move { sender.send_request(req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), p.tracker.shutdown())
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::Drained);
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(body_text(resp).await, "slow done");
    // GOAWAY was sent and the connection closed cleanly.
    tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_that_vanishes_mid_request_frees_its_slot() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /slow?300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(p.tracker.open_connections(), 1);
    drop(s);
    tokio::time::timeout(Duration::from_secs(3), p.tracker.drained())
        .await
        .unwrap();
    assert_eq!(p.proxy.metrics().snapshot().open_connections, 0);
}
