//! HTTP and TCP routes to an upstream on a unix stream socket (`unix:/path`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use local_proxy::{
    ConnectionTracker, HttpRouteConfig, ProxyConfig, TcpForwarder, TcpRouteConfig, Upstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};

use common::{body_text, get, read_to_close, send, start_proxy};

/// A folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh socket path in a fresh folder (removed with the returned guard).
fn socket_path(name: &str) -> (TempDir, PathBuf) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "local-proxy-unix-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    (TempDir(dir), path)
}

/// The test app (HTTP/1.1 and h2c) on a unix socket.
fn start_unix_app(path: &PathBuf) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service_fn(common::upstream_handler),
                    )
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn http_route_to_a_unix_socket_keeps_the_client_host() {
    let (_dir, path) = socket_path("app.sock");
    start_unix_app(&path);
    let upstream: Upstream = format!("unix:{}", path.display()).parse().unwrap();
    let proxy = start_proxy(HttpRouteConfig::new(upstream), ProxyConfig::default()).await;
    for _ in 0..3 {
        let resp = send(proxy.addr, get("/headers")).await;
        assert_eq!(resp.status(), 200);
        let text = body_text(resp).await;
        assert!(text.contains("host: example.test\n"), "{text}");
        assert!(text.contains("x-forwarded-for: 127.0.0.1"), "{text}");
    }
    // The descriptor budget counts unix sockets as it counts TCP ones.
    assert!(proxy.tracker.fd_budget().in_use() >= 1);
    let resp = send(proxy.addr, get("/say?unix")).await;
    assert_eq!(body_text(resp).await, "unix");
}

#[tokio::test]
async fn http_route_to_a_missing_unix_socket_is_a_502() {
    let (_dir, path) = socket_path("absent.sock");
    let proxy = start_proxy(
        HttpRouteConfig::new(Upstream::unix(&path)),
        ProxyConfig::default(),
    )
    .await;
    let resp = send(proxy.addr, get("/headers")).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(proxy.proxy.metrics().snapshot().upstream_errors, 1);
}

#[tokio::test]
async fn tcp_route_to_a_unix_socket_copies_both_ways() {
    let (_dir, path) = socket_path("echo.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let config = ProxyConfig::default();
    let tracker = ConnectionTracker::new(&config);
    let forwarder = TcpForwarder::new(TcpRouteConfig::new(Upstream::unix(&path)), &config);
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn({
        let (f, t) = (forwarder.clone(), tracker.clone());
        async move { f.serve(front, &t).await }
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let echoed = read_to_close(&mut client, Duration::from_secs(30)).await;
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "bytes changed on the way");
    let m = forwarder.metrics().snapshot();
    assert_eq!((m.bytes_in, m.bytes_out), (200_000, 200_000));
}

#[tokio::test]
async fn tcp_route_to_a_missing_unix_socket_resets_the_client() {
    let (_dir, path) = socket_path("absent.sock");
    let config = ProxyConfig::default();
    let tracker = ConnectionTracker::new(&config);
    let forwarder = TcpForwarder::new(TcpRouteConfig::new(Upstream::unix(&path)), &config);
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn({
        let (f, t) = (forwarder.clone(), tracker.clone());
        async move { f.serve(front, &t).await }
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        read.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset,
        "an unreachable upstream is a reset, not a clean end"
    );
    assert_eq!(forwarder.metrics().snapshot().upstream_errors, 1);
}
