//! Shared test fixtures: a real hyper upstream, a proxy on 127.0.0.1:0, small clients.
#![allow(dead_code, reason = "each test binary uses a part of the fixtures")]
#![allow(clippy::unwrap_used, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use local_proxy::{ConnectionTracker, HttpProxy, HttpRouteConfig, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A body of `remaining` zero bytes, produced on demand in 64 KiB frames (no allocation).
pub struct Zeros {
    pub remaining: u64,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZEROS.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// A body made of the given frames (data and trailers).
pub struct Frames(pub std::collections::VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

pub fn text(s: impl Into<String>) -> TestBody {
    Full::new(Bytes::from(s.into()))
        .map_err(|never| match never {})
        .boxed()
}

/// The test upstream app: routes by path.
pub async fn upstream_handler(
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let response = match req.uri().path() {
        "/headers" => {
            let mut out = format!("version: {:?}\n", req.version());
            for (name, value) in req.headers() {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            Response::new(text(out))
        }
        "/echo" => Response::new(req.into_body().map_err(BoxError::from).boxed()),
        "/say" => Response::new(text(query)),
        "/slow" => {
            let ms: u64 = query.parse().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(text("slow done"))
        }
        "/download" => {
            let remaining: u64 = query.parse().unwrap_or(0);
            Response::new(Zeros { remaining }.map_err(|never| match never {}).boxed())
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(text(total.to_string()))
        }
        "/ws" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", "not-checked-by-the-proxy")
                .body(text(""))
                .unwrap()
        }
        "/trailers" => {
            // Like a gRPC server: trailers only for a client that announced `TE: trailers`.
            if req.headers().get("te").is_none_or(|te| te != "trailers") {
                return Ok(Response::builder()
                    .status(400)
                    .body(text("te: trailers missing"))
                    .unwrap());
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = vec![
                Frame::data(Bytes::from_static(b"reply")),
                Frame::trailers(trailers),
            ];
            Response::new(Frames(frames.into()).boxed())
        }
        "/status" => {
            let code: u16 = query.parse().unwrap_or(500);
            Response::builder()
                .status(code)
                .body(text("status"))
                .unwrap()
        }
        _ => Response::builder()
            .status(404)
            .body(text("no such path"))
            .unwrap(),
    };
    Ok(response)
}

/// Start the upstream app (HTTP/1.1 with upgrades and h2c by prior knowledge) on 127.0.0.1:0.
pub async fn start_upstream() -> SocketAddr {
    start_counted_upstream().await.0
}

/// The upstream app and the number of TCP connections it has accepted.
pub async fn start_counted_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service_fn(upstream_handler),
                    )
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Default settings changed by `f`.
pub fn config(f: impl FnOnce(&mut ProxyConfig)) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    f(&mut config);
    config
}

/// A proxy serving on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: HttpProxy,
    pub tracker: ConnectionTracker,
    pub serving: tokio::task::JoinHandle<()>,
}

pub async fn start_proxy(route: HttpRouteConfig, config: ProxyConfig) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = ConnectionTracker::new(&config);
    let proxy = HttpProxy::new(route, &config, &tracker);
    let serving = tokio::spawn({
        let (proxy, tracker) = (proxy.clone(), tracker.clone());
        async move { proxy.serve(listener, &tracker).await }
    });
    TestProxy {
        addr,
        proxy,
        tracker,
        serving,
    }
}

/// Upstream plus proxy with the default route settings.
pub async fn start_pair(config: ProxyConfig) -> (SocketAddr, TestProxy) {
    let upstream = start_upstream().await;
    let proxy = start_proxy(HttpRouteConfig::new(upstream), config).await;
    (upstream, proxy)
}

/// Send one request over a fresh HTTP/1.1 connection.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.unwrap()
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "example.test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Write `request` on a fresh connection and read until the proxy closes it (bounded: 10 s).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "proxy did not close the connection; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The highest RSS sampled every 50 ms while it runs.
pub struct RssWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    pub fn start() -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_kib()));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self { peak, task }
    }

    pub fn stop(self) -> u64 {
        self.task.abort();
        self.peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(rss_kib())
    }
}

/// Read one response head, byte by byte (bounded: 5 s per byte).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the end of the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A loopback address where nothing listens (a port that was free a moment ago).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Reads until the peer closes the connection, which must happen within `limit`.
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// One read (bounded: 5 s): how many bytes came, 0 when the connection was closed or reset.
pub async fn read_once(stream: &mut TcpStream) -> usize {
    let mut buf = [0; 64];
    tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, driven by a spawned task.
pub async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

/// A WebSocket upgrade through the proxy at `addr`: the tunnel, once the 101 has arrived.
pub async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut ws = TcpStream::connect(addr).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut ws).await.starts_with("HTTP/1.1 101"));
    ws
}
