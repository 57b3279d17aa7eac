//! Answers where something is wrong: upstream down or slow, bad or slow clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use local_proxy::{HttpRouteConfig, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn upstream_refused_gives_502() {
    let p = start_proxy(HttpRouteConfig::new(closed_port()), ProxyConfig::default()).await;
    let resp = send(p.addr, get("/")).await;
    assert_eq!(resp.status(), 502);
    assert!(body_text(resp).await.starts_with("502 Bad Gateway"));
    let m = p.proxy.metrics().snapshot();
    assert_eq!((m.requests_by_class[4], m.upstream_errors), (1, 1));
}

#[tokio::test]
async fn slow_upstream_gives_504_and_the_proxy_keeps_serving() {
    let config = config(|c| c.upstream_response_timeout = Duration::from_millis(300));
    let (_, p) = start_pair(config).await;
    let started = std::time::Instant::now();
    let resp = send(p.addr, get("/slow?3000")).await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(body_text(resp).await.starts_with("504 Gateway Timeout"));
    assert_eq!(
        body_text(send(p.addr, get("/say?fine")).await).await,
        "fine"
    );
}

#[tokio::test]
async fn oversized_head_gives_431_and_malformed_gives_400() {
    let config = config(|c| c.max_header_bytes = 8 * 1024);
    let (_, p) = start_pair(config).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let out = raw_exchange(p.addr, big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Far beyond any buffer: still 431, and the proxy reads no more than it must.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let out = raw_exchange(p.addr, huge.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let out = raw_exchange(p.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw_exchange(p.addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        body_text(send(p.addr, get("/say?still-here")).await).await,
        "still-here"
    );
    let m = p.proxy.metrics().snapshot();
    assert_eq!(m.requests_by_class[3], 4, "{m:?}");
}

#[tokio::test]
async fn silent_and_trickling_clients_are_cut_at_the_header_timeout() {
    let config = config(|c| c.header_read_timeout = Duration::from_millis(500));
    let (_, p) = start_pair(config).await;
    let started = std::time::Instant::now();

    let silent = async {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        assert_eq!(read_once(&mut s).await, 0);
        started.elapsed()
    };
    // Sends the start of a head, then trickles `more` every 100 ms.
    let trickle = |first: &'static [u8], more: &'static [u8]| async move {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut buf = [0; 64];
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(more).await.is_err() {
                break;
            }
            if let Ok(read) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                let answer = read
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(&buf[..*n]).into_owned());
                assert!(
                    matches!(read, Ok(0) | Err(_)),
                    "unexpected answer {answer:?}"
                );
                break;
            }
        }
        started.elapsed()
    };
    let (a, b, c) = tokio::join!(
        silent,
        trickle(b"GET / HTTP/1.1\r\n", b"X-Slow: 1\r\n"),
        // A partial HTTP/2 preface, then silence: stuck in protocol detection.
        trickle(b"PRI * HTTP", b""),
    );
    for cut in [a, b, c] {
        assert!(
            cut >= Duration::from_millis(450) && cut < Duration::from_millis(2000),
            "{cut:?}"
        );
    }
    assert_eq!(p.proxy.metrics().snapshot().client_timeouts, 3);
    tokio::time::timeout(Duration::from_secs(2), p.tracker.drained())
        .await
        .unwrap();
}

/// Deterministic pseudo-random numbers (xorshift64*), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A valid request, then random damage: byte flips, cuts, inserted control bytes, or noise.
fn mangled_request(rng: &mut Rng) -> Vec<u8> {
    let valid: &[u8] = b"POST /echo?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
        Transfer-Encoding: chunked\r\nConnection: keep-alive, upgrade\r\nUpgrade: websocket\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n";
    let mut out = valid.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        1 => out.truncate(rng.below(out.len())),
        2 => {
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(out.len());
                let b = [b'\r', b'\n', 0, b':', b' ', 0xff][rng.below(6)];
                out.insert(i, b);
            }
        }
        _ => out = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
    }
    out
}

#[tokio::test]
async fn mangled_requests_never_break_the_proxy() {
    let (_, p) = start_pair(config(|c| {
        c.header_read_timeout = Duration::from_millis(500)
    }))
    .await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let inputs: Vec<Vec<u8>> = (0..200).map(|_| mangled_request(&mut rng)).collect();
    for batch in inputs.chunks(20) {
        let mut tasks = Vec::new();
        for input in batch {
            let (addr, input) = (p.addr, input.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&input).await;
                let _ = s.shutdown().await;
                let mut out = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
                assert!(
                    read.is_ok(),
                    "connection not closed for input {:?}",
                    String::from_utf8_lossy(&input)
                );
                let text = String::from_utf8_lossy(&out);
                assert!(
                    out.is_empty() || text.starts_with("HTTP/1.1 "),
                    "odd answer {text:?} to {:?}",
                    String::from_utf8_lossy(&input)
                );
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
    assert_eq!(
        body_text(send(p.addr, get("/say?alive")).await).await,
        "alive"
    );
    tokio::time::timeout(Duration::from_secs(3), p.tracker.drained())
        .await
        .unwrap();
    let m = p.proxy.metrics().snapshot();
    assert!(m.requests_by_class[3] > 50, "{m:?}");
}

#[tokio::test]
async fn upstream_connect_timeout_gives_502_in_time() {
    // A listener that never accepts, with its backlog filled: further SYNs go unanswered.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let upstream = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(upstream)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let config = config(|c| c.upstream_connect_timeout = Duration::from_millis(300));
    let p = start_proxy(HttpRouteConfig::new(upstream), config).await;
    let started = std::time::Instant::now();
    let resp = send(p.addr, get("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 502);
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(p.proxy.metrics().snapshot().upstream_errors, 1);
    drop(full);
}

#[tokio::test]
async fn a_long_upload_is_not_cut_by_the_response_timeout_while_it_progresses() {
    let (_, p) = start_pair(config(|c| {
        c.upstream_response_timeout = Duration::from_millis(300)
    }))
    .await;
    let (mut tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
    let req = http::Request::post("/upload")
        .header("host", "x")
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        // One second of upload, more than three response timeouts.
        for _ in 0..10 {
            tx.send_data(bytes::Bytes::from_static(&[1; 1000]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let resp = send(p.addr, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "10000");
    sending.await.unwrap();
    assert_eq!(p.proxy.metrics().snapshot().upstream_errors, 0);
}

/// An app that refuses a large upload early: it reads the request head, answers `413` and
/// closes without reading the body (its kernel then resets the connection).
async fn start_early_413_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\
                          connection: close\r\n\r\ntoo large",
                    )
                    .await;
            });
        }
    });
    addr
}

const UPLOAD: u64 = 10 << 20;

#[tokio::test]
async fn an_early_413_to_a_large_upload_reaches_the_client() {
    let upstream = start_early_413_upstream().await;
    let p = start_proxy(HttpRouteConfig::new(upstream), ProxyConfig::default()).await;
    let req = http::Request::post("/upload")
        .header("host", "x")
        .body(Zeros { remaining: UPLOAD })
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), send(p.addr, req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(body_text(resp).await, "too large");
}

/// The same with a client that writes its whole body before it reads (a simple script).
#[tokio::test]
async fn an_early_413_reaches_a_client_that_reads_only_after_sending() {
    let upstream = start_early_413_upstream().await;
    let p = start_proxy(HttpRouteConfig::new(upstream), ProxyConfig::default()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {UPLOAD}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    let writing = tokio::time::timeout(Duration::from_secs(20), async {
        while sent < UPLOAD {
            if s.write_all(&chunk).await.is_err() {
                return false;
            }
            sent += chunk.len() as u64;
        }
        true
    })
    .await;
    // Either the proxy read (and dropped) the whole body, or it stopped reading after its
    // bound: both are fine as long as the answer arrives.
    let _ = writing;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "sent {sent} bytes, then read {read:?}: {text:?}"
    );
}
