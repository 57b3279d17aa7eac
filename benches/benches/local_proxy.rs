//! local-proxy: requests per second and bulk throughput through the proxy, each beside the same
//! load sent straight to the upstream in the same run.
//!
//! Everything runs in one process on loopback: a hyper upstream, the proxy on 127.0.0.1:0, and
//! hyper clients on kept-alive HTTP/1.1 connections.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use local_proxy::{ConnectionTracker, HttpProxy, HttpRouteConfig, ProxyConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const CONNECTIONS: usize = 16;
const BULK: u64 = 64 * 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

struct Zeros(u64);

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(ZEROS.len() as u64);
        self.0 -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0)
    }
}

type BenchBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

async fn upstream(req: Request<Incoming>) -> Result<Response<BenchBody>, Infallible> {
    let body: BenchBody = match req.uri().path() {
        "/download" => Zeros(BULK).map_err(|e| match e {}).boxed(),
        "/upload" => {
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|e| match e {})
                .boxed()
        }
        _ => Full::new(Bytes::from_static(b"hello, world\n"))
            .map_err(|e| match e {})
            .boxed(),
    };
    Ok(Response::new(body))
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(upstream)),
            );
        }
    });
    addr
}

async fn start_proxy(upstream: SocketAddr) -> SocketAddr {
    let config = ProxyConfig::default();
    let tracker = ConnectionTracker::new(&config);
    let proxy = HttpProxy::new(HttpRouteConfig::new(upstream), &config, &tracker);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { proxy.serve(listener, &tracker).await });
    addr
}

async fn connect(addr: SocketAddr) -> SendRequest<BenchBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(
    sender: &mut SendRequest<BenchBody>,
    method: &str,
    path: &str,
    body: BenchBody,
) -> u64 {
    sender.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .body(body)
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    n
}

fn empty() -> BenchBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// `iters` small GETs spread over the kept-alive connections in `senders`; wall time.
async fn small_requests(senders: &mut Vec<SendRequest<BenchBody>>, iters: u64) -> Duration {
    let started = Instant::now();
    let per = iters.div_ceil(senders.len() as u64);
    let mut tasks = Vec::new();
    for (i, mut sender) in std::mem::take(senders).into_iter().enumerate() {
        let count = per.min(iters.saturating_sub(per * i as u64));
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                assert_eq!(request(&mut sender, "GET", "/small", empty()).await, 13);
            }
            sender
        }));
    }
    for task in tasks {
        senders.push(task.await.unwrap());
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, proxy) = rt.block_on(async {
        let upstream = start_upstream().await;
        (upstream, start_proxy(upstream).await)
    });
    let targets = [("direct", upstream), ("proxy", proxy)];

    let mut group = c.benchmark_group("local_proxy/requests_16_conns");
    group.throughput(Throughput::Elements(1));
    for (name, addr) in targets {
        let mut senders: Vec<_> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..CONNECTIONS {
                v.push(connect(addr).await);
            }
            v
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(small_requests(&mut senders, iters)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("local_proxy/bulk_64MiB");
    group.throughput(Throughput::Bytes(BULK));
    group.sample_size(10);
    for (name, addr) in targets {
        let mut sender = rt.block_on(connect(addr));
        group.bench_function(format!("download/{name}"), |b| {
            b.iter(|| {
                assert_eq!(
                    rt.block_on(request(&mut sender, "GET", "/download", empty())),
                    BULK
                )
            });
        });
        group.bench_function(format!("upload/{name}"), |b| {
            b.iter(|| {
                let body = Zeros(BULK).map_err(|e| match e {}).boxed();
                assert_eq!(
                    rt.block_on(request(&mut sender, "POST", "/upload", body)),
                    2
                );
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
