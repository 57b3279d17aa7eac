//! The HTTP proxy against a real upstream on loopback: protocols, headers, streaming.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{Full, channel::Channel};
use hyper_util::rt::TokioIo;
use local_proxy::{HttpRouteConfig, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn get_and_post_with_fixed_and_chunked_bodies() {
    let (_, p) = start_pair(ProxyConfig::default()).await;

    let resp = send(p.addr, get("/say?hello")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "hello");

    let fixed = Request::post("/echo")
        .header("host", "example.test")
        .body(Full::new(Bytes::from_static(b"fixed body")))
        .unwrap();
    let resp = send(p.addr, fixed).await;
    assert_eq!(body_text(resp).await, "fixed body");

    // No length known up front: the client sends chunked, the upstream echoes chunked.
    let (mut tx, body) = Channel::<Bytes, std::convert::Infallible>::new(2);
    let chunked = Request::post("/echo")
        .header("host", "example.test")
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        for part in ["one ", "two ", "three"] {
            tx.send_data(Bytes::from(part)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let resp = send(p.addr, chunked).await;
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert_eq!(body_text(resp).await, "one two three");
    sending.await.unwrap();

    // Chunked by hand, too, with the upstream seeing no hop-by-hop framing.
    let raw = raw_exchange(
        p.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n11"), "{raw}");

    let m = p.proxy.metrics().snapshot();
    assert_eq!(m.requests_by_class[1], 4);
    assert!(m.bytes_in > 0 && m.bytes_out > 0);
    assert_eq!(m.latency.count, 4);
}

#[tokio::test]
async fn pipelined_requests_on_one_kept_alive_connection() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    let mut batch = Vec::new();
    for i in 1..=3 {
        batch
            .extend_from_slice(format!("GET /say?pong-{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(b"GET /say?last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(&batch).await.unwrap();
    let out = String::from_utf8(read_to_close(&mut stream, Duration::from_secs(10)).await).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 4, "{out}");
    let order: Vec<usize> = ["pong-1", "pong-2", "pong-3", "last"]
        .iter()
        .map(|w| out.find(w).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert_eq!(p.proxy.metrics().snapshot().connections, 1);
}

#[tokio::test]
async fn h2c_from_the_client_is_forwarded_as_http11() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let (mut sender, _conn) = h2_client(p.addr).await;
    let req = Request::get("http://app.example:8080/headers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let seen = body_text(resp).await;
    assert!(seen.contains("version: HTTP/1.1"), "{seen}");
    assert!(seen.contains("host: app.example:8080"), "{seen}");
    // HTTP/2 may split cookies over several fields; HTTP/1.1 gets them joined.
    let req = Request::get("http://app.example/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = body_text(sender.send_request(req).await.unwrap()).await;
    assert_eq!(seen.matches("cookie:").count(), 1, "{seen}");
    assert!(seen.contains("cookie: a=1; b=2\n"), "{seen}");
    // Several streams at once on the same connection, with bodies.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post("http://app.example/echo")
                .body(Full::new(Bytes::from(format!("body {i}"))))
                .unwrap();
            body_text(sender.send_request(req).await.unwrap()).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), format!("body {i}"));
    }
}

#[tokio::test]
async fn h2c_to_the_upstream_when_configured() {
    let upstream = start_upstream().await;
    let mut route = HttpRouteConfig::new(upstream);
    route.upstream_h2c = true;
    let p = start_proxy(route, ProxyConfig::default()).await;
    let seen = body_text(send(p.addr, get("/headers")).await).await;
    assert!(seen.contains("version: HTTP/2.0"), "{seen}");
    let req = Request::post("/echo")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    assert_eq!(body_text(send(p.addr, req).await).await, "over h2");
}

#[tokio::test]
async fn forwarded_chain_is_kept_and_appended_by_default() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let req = Request::get("/headers")
        .header("host", "app.example")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.7;proto=https")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "deflate")
        .header("x-app", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = body_text(send(p.addr, req).await).await;
    assert!(seen.contains("host: app.example\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: app.example\n"), "{seen}");
    assert!(
        seen.contains("forwarded: for=203.0.113.7;proto=https, for=127.0.0.1;host=\"app.example\";proto=http\n"),
        "{seen}"
    );
    assert!(seen.contains("x-app: kept\n"), "{seen}");
    for gone in ["x-drop-me", "keep-alive", "te:"] {
        assert!(!seen.contains(gone), "{gone} reached the upstream: {seen}");
    }
}

#[tokio::test]
async fn forwarded_chain_is_replaced_when_not_trusted() {
    let upstream = start_upstream().await;
    let mut route = HttpRouteConfig::new(upstream);
    route.trust_forwarded = false;
    let p = start_proxy(route, ProxyConfig::default()).await;
    let req = Request::get("/headers")
        .header("host", "app.example")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=203.0.113.7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = body_text(send(p.addr, req).await).await;
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: app.example\n"), "{seen}");
    assert!(
        seen.contains("forwarded: for=127.0.0.1;host=\"app.example\";proto=http\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("203.0.113.7") && !seen.contains("evil"),
        "{seen}"
    );
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for round in 0..3 {
        let msg = format!("frame {round} through the tunnel");
        stream.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    assert_eq!(p.tracker.open_connections(), 1);
    assert_eq!(p.proxy.metrics().snapshot().requests_by_class[0], 1);
    // Closing our side ends the tunnel and frees the slot.
    stream.shutdown().await.unwrap();
    read_to_close(&mut stream, Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(5), p.tracker.drained())
        .await
        .unwrap();
}

#[tokio::test]
async fn metrics_render_as_prometheus_text() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    for path in ["/say?x", "/status?404", "/status?503"] {
        let _ = body_text(send(p.addr, get(path)).await).await;
    }
    let snap = p.proxy.metrics().snapshot();
    let text = snap.to_prometheus("wg_agent_route", "port=\"80\"");
    for line in [
        "wg_agent_route_requests_total{port=\"80\",class=\"2xx\"} 1",
        "wg_agent_route_requests_total{port=\"80\",class=\"4xx\"} 1",
        "wg_agent_route_requests_total{port=\"80\",class=\"5xx\"} 1",
        "wg_agent_route_request_duration_seconds_count{port=\"80\"} 3",
        "wg_agent_route_connections_total{port=\"80\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
}

/// Collects formatted log output.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn access_log_writes_one_line_per_request() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // A current-thread runtime: every task of this test runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let (_, p) = start_pair(config(|c| c.access_log = true)).await;
    let _ = body_text(send(p.addr, get("/say?secret-query")).await).await;
    let _ = body_text(send(p.addr, get("/status?503")).await).await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("local_proxy::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("method=GET") && lines[0].contains("path=/say"),
        "{text}"
    );
    assert!(
        lines[0].contains("status=200") && lines[1].contains("status=503"),
        "{text}"
    );
    assert!(
        !text.contains("secret-query"),
        "query strings stay out of the log: {text}"
    );
}

#[tokio::test]
async fn http10_client_gets_an_answer_and_a_close() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let out = raw_exchange(p.addr, b"GET /say?old HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1."), "{out}");
    assert!(
        out.contains(" 200 OK\r\n") && out.ends_with("\r\n\r\nold"),
        "{out}"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let (upstream, accepted) = start_counted_upstream().await;
    let p = start_proxy(HttpRouteConfig::new(upstream), ProxyConfig::default()).await;
    for i in 0..10 {
        // A fresh client connection each time; the upstream side stays one kept-alive connection.
        let said = body_text(send(p.addr, get(&format!("/say?n{i}"))).await).await;
        assert_eq!(said, format!("n{i}"));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_without_delay() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    assert!(started.elapsed() < Duration::from_millis(500));
    s.write_all(b"body").await.unwrap();
    let rest = String::from_utf8(read_to_close(&mut s, Duration::from_secs(5)).await).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with("\r\n\r\n4"),
        "{rest}"
    );
}

#[tokio::test]
async fn any_stream_type_is_served_through_an_accept_channel() {
    // In-memory streams stand in for the agent's userspace TCP stack.
    let upstream = start_upstream().await;
    let config = ProxyConfig::default();
    let tracker = local_proxy::ConnectionTracker::new(&config);
    let proxy = local_proxy::HttpProxy::new(HttpRouteConfig::new(upstream), &config, &tracker);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let serving = tokio::spawn({
        let (proxy, tracker) = (proxy.clone(), tracker.clone());
        async move { proxy.serve(rx, &tracker).await }
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: std::net::SocketAddr = "10.1.0.1:40000".parse().unwrap();
    tx.send((server, peer)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let seen = body_text(sender.send_request(get("/headers")).await.unwrap()).await;
    assert!(seen.contains("x-forwarded-for: 10.1.0.1\n"), "{seen}");

    // One stream served directly, without a listener.
    let (client, server) = tokio::io::duplex(64 * 1024);
    let direct = tokio::spawn({
        let (proxy, tracker) = (proxy.clone(), tracker.clone());
        async move {
            proxy
                .serve_connection(server, "10.1.0.2:1".parse().unwrap(), &tracker)
                .await
        }
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let seen = body_text(sender.send_request(get("/headers")).await.unwrap()).await;
    assert!(seen.contains("x-forwarded-for: 10.1.0.2\n"), "{seen}");
    drop(sender);
    tokio::time::timeout(Duration::from_secs(2), direct)
        .await
        .unwrap()
        .unwrap();

    // Closing the channel ends `serve`.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), serving)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connect_method_is_refused() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let out = raw_exchange(
        p.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.contains("CONNECT is not supported"), "{out}");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_response() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /slow?100 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let out = String::from_utf8(read_to_close(&mut s, Duration::from_secs(5)).await).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("slow done"),
        "{out:?}"
    );
}

#[tokio::test]
async fn grpc_style_trailers_pass_over_h2c_both_sides() {
    let upstream = start_upstream().await;
    let mut route = HttpRouteConfig::new(upstream);
    route.upstream_h2c = true;
    let p = start_proxy(route, ProxyConfig::default()).await;
    let (mut sender, _conn) = h2_client(p.addr).await;
    let req = Request::post("http://app/trailers")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"request")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"reply");
}
