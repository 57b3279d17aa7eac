//! Overload: HTTP/2 stream floods, the in-flight request bound and the socket budget.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use local_proxy::{HttpRouteConfig, ProxyConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Open and peak number of upstream connections.
#[derive(Default)]
struct Sockets {
    open: AtomicUsize,
    peak: AtomicUsize,
    accepted: AtomicUsize,
}

/// The test app on 127.0.0.1:0, counting its open connections.
async fn counted_upstream() -> (SocketAddr, Arc<Sockets>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sockets = Arc::new(Sockets::default());
    tokio::spawn({
        let sockets = Arc::clone(&sockets);
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                sockets.accepted.fetch_add(1, Relaxed);
                let open = sockets.open.fetch_add(1, Relaxed) + 1;
                sockets.peak.fetch_max(open, Relaxed);
                let sockets = Arc::clone(&sockets);
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                        .await;
                    sockets.open.fetch_sub(1, Relaxed);
                });
            }
        }
    });
    (addr, sockets)
}

/// Polls `done` every 20 ms until it holds (bounded: 10 s).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 frame header.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A hostile HTTP/2 client: it opens the largest windows HTTP/2 allows (so the server may send
/// as much as it buffers), asks for `streams` large downloads, and never reads a byte.
async fn flood(addr: SocketAddr, streams: u32, path: &str) -> TcpStream {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = 2^31 - 1.
    let mut settings = Vec::new();
    settings.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
    settings.extend_from_slice(&[0, 4, 0x7f, 0xff, 0xff, 0xff]);
    out.extend(frame(4, 0, 0, &settings));
    // The server's SETTINGS come first on every connection: acknowledge them unread.
    out.extend(frame(4, 1, 0, &[]));
    // Connection window to 2^31 - 1 as well.
    out.extend(frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    for i in 0..streams {
        // HPACK: :method GET, :scheme http (static table), :path and :authority as literals
        // without indexing.
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 1, b'x']);
        // END_STREAM | END_HEADERS
        out.extend(frame(1, 0x5, 2 * i + 1, &block));
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&out).await.unwrap();
    stream
}

/// The attack of issue 13: 8 connections, each opening 256 streams to a large response and
/// never reading. Memory and upstream sockets stay bounded, and a normal request still gets
/// through while it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_h2_stream_flood_is_bounded_in_memory_and_sockets() {
    const CONNECTIONS: u32 = 8;
    const STREAMS: u32 = 256;
    let (upstream, sockets) = counted_upstream().await;
    let config = ProxyConfig::default();
    let p = start_proxy(HttpRouteConfig::new(upstream), config.clone()).await;
    let _ = body_text(send(p.addr, get("/say?warm")).await).await;
    let before = rss_kib();
    let watch = RssWatch::start();

    let path = format!("/download?{}", 1u64 << 30);
    let mut attackers = Vec::new();
    for _ in 0..CONNECTIONS {
        attackers.push(flood(p.addr, STREAMS, &path).await);
    }
    // Wait until the proxy stops opening upstream connections and stops sending (the attacker
    // reads nothing): bounded by 30 s, settled after 2 s without change.
    let started = Instant::now();
    let mut last = (0, 0);
    let mut settled = Instant::now();
    while started.elapsed() < Duration::from_secs(30) && settled.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (
            sockets.accepted.load(Relaxed),
            p.proxy.metrics().snapshot().bytes_out,
        );
        if now != last {
            last = now;
            settled = Instant::now();
        }
    }
    // A normal request gets in during the attack.
    let normal = tokio::time::timeout(Duration::from_secs(10), async {
        body_text(send(p.addr, get("/say?still-served")).await).await
    })
    .await
    .expect("a normal request is answered during the attack");
    assert_eq!(normal, "still-served");
    let peak = watch.stop();
    let peak_sockets = sockets.peak.load(Relaxed);
    eprintln!(
        "h2 flood: {} streams asked, {peak_sockets} upstream sockets at most, rss {before} -> peak {peak} KiB ({} MiB growth), settled after {:.1?}",
        CONNECTIONS * STREAMS,
        peak.saturating_sub(before) / 1024,
        started.elapsed(),
    );
    assert!(
        peak.saturating_sub(before) < 256 * 1024,
        "rss grew from {before} to {peak} KiB"
    );
    assert!(
        peak_sockets <= config.max_upstream_sockets,
        "{peak_sockets} upstream sockets open at once, bound {}",
        config.max_upstream_sockets
    );
    drop(attackers);
}

/// A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS gets no more than the limit served.
#[tokio::test]
async fn h2_streams_beyond_the_per_connection_limit_are_refused() {
    let (upstream, sockets) = counted_upstream().await;
    let config = config(|c| c.http2_max_concurrent_streams = 4);
    let p = start_proxy(HttpRouteConfig::new(upstream), config).await;
    let attacker = flood(p.addr, 12, "/slow?3000").await;
    wait_until("a request reaches the upstream", || {
        sockets.peak.load(Relaxed) > 0
    })
    .await;
    // The others would follow within milliseconds if they were served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached = sockets.peak.load(Relaxed);
    assert!(
        (1..=4).contains(&reached),
        "{reached} requests reached the upstream at once"
    );
    drop(attacker);
}

#[tokio::test]
async fn requests_past_max_upstream_requests_get_503_and_are_counted() {
    let (upstream, sockets) = counted_upstream().await;
    let config = config(|c| c.max_upstream_requests = 2);
    let p = start_proxy(HttpRouteConfig::new(upstream), config).await;
    let slow =
        |addr| tokio::spawn(async move { send(addr, get("/slow?3000")).await.status().as_u16() });
    let (a, b) = (slow(p.addr), slow(p.addr));
    wait_until("both requests reach the upstream", || {
        sockets.accepted.load(Relaxed) == 2
    })
    .await;
    let resp = send(p.addr, get("/say?late")).await;
    assert_eq!(resp.status(), 503);
    assert!(body_text(resp).await.starts_with("503 Service Unavailable"));
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (200u16, 200u16));
    // The bound frees with the responses.
    assert_eq!(
        body_text(send(p.addr, get("/say?again")).await).await,
        "again"
    );
    let m = p.proxy.metrics().snapshot();
    assert_eq!((m.over_request_limit, m.over_socket_budget), (1, 0));
    let text = m.to_prometheus("r", "port=\"80\"");
    assert!(
        text.contains("r_limit_refusals_total{port=\"80\",limit=\"max_upstream_requests\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_sockets_past_the_budget_get_503_and_are_counted() {
    let (upstream, sockets) = counted_upstream().await;
    let config = config(|c| c.max_upstream_sockets = 1);
    let p = start_proxy(HttpRouteConfig::new(upstream), config).await;
    let slow = tokio::spawn({
        let addr = p.addr;
        async move { send(addr, get("/slow?3000")).await.status().as_u16() }
    });
    wait_until("the request reaches the upstream", || {
        sockets.accepted.load(Relaxed) == 1
    })
    .await;
    assert_eq!(p.tracker.fd_budget().in_use(), 1);
    let resp = send(p.addr, get("/say?late")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(slow.await.unwrap(), 200);
    // The pooled connection keeps its descriptor and serves the next request.
    assert_eq!(
        body_text(send(p.addr, get("/say?again")).await).await,
        "again"
    );
    assert_eq!(sockets.accepted.load(Relaxed), 1);
    let m = p.proxy.metrics().snapshot();
    assert_eq!((m.over_request_limit, m.over_socket_budget), (0, 1));
    assert_eq!(p.tracker.fd_budget().refused(), 1);
}
