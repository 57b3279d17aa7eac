//! The HTTP reverse proxy: HTTP/1.1 and h2c from clients, pooled HTTP/1.1 (or h2c) upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

mod conn;
mod connector;
mod detect;

use self::conn::{Ended, TunnelContext, drive, run_tunnel};
use self::connector::{BudgetConnector, Linger, is_budget_exhausted};
use self::detect::{Protocol, detect};
use crate::accept::{Accept, accept_loop};
use crate::headers::{
    apply_forwarded, join_cookies, remove_hop_by_hop, remove_hop_by_hop_request, wants_upgrade,
};
use crate::io::{Activity, IdleClock, Progress, Rewind};
use crate::log::{WARN_INTERVAL, WarnLimiter, limited_warn};
use crate::metrics::OpenConnection;
use crate::tracker::{ConnGuard, ShutdownSignal};
use crate::{ConnectionTracker, HttpRouteConfig, ProxyConfig, RouteMetrics};

/// Body of responses sent to clients: the upstream's body streamed, or a short error text.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// An upstream response body streamed to the client. Until it is done (or dropped) its request
/// counts against `max_upstream_requests`.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP route: serves HTTP/1.1 (keep-alive, pipelining, upgrades) and HTTP/2 with prior
/// knowledge on accepted streams and forwards every request to one upstream.
///
/// Cheap to clone; clones share the upstream connection pool and the metrics.
#[derive(Debug, Clone)]
pub struct HttpProxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    route: HttpRouteConfig,
    config: ProxyConfig,
    client: Client<BudgetConnector, Progress<Incoming>>,
    /// `max_upstream_requests`, shared with every route of the tracker.
    requests: Arc<Semaphore>,
    /// `http://host:port`, the prefix of every upstream URI.
    base: String,
    metrics: Arc<RouteMetrics>,
    warnings: WarnLimiter,
}

/// What a connection carries for its requests and its tunnels: dropping the last clone frees
/// the connection's slot.
#[derive(Debug)]
struct Slot {
    _guard: ConnGuard,
    _open: OpenConnection,
}

impl HttpProxy {
    /// A proxy for `route` with `config`'s timeouts and limits. Needs no runtime until used.
    ///
    /// Its upstream requests and sockets count against `tracker`'s bounds
    /// (`max_upstream_requests`, [`ConnectionTracker::fd_budget`]), shared by every route of
    /// that tracker: serve it with the same tracker.
    pub fn new(route: HttpRouteConfig, config: &ProxyConfig, tracker: &ConnectionTracker) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        let linger = Linger {
            bytes: config.lingering_close_bytes,
            time: config.lingering_close_timeout,
        };
        let connector = BudgetConnector::new(
            connector,
            &route.upstream,
            config.upstream_connect_timeout,
            tracker.fd_budget().clone(),
            linger,
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            // Idle connections hold descriptors of the shared budget: keep enough for bursts
            // of keep-alive reuse, not so many that one route starves the others.
            .pool_max_idle_per_host(UPSTREAM_IDLE_PER_ROUTE)
            // The upstream is local and fast, the client behind the tunnel slower: a read
            // buffer that can grow to hyper's default (~400 KiB) per connection only holds
            // response bytes longer (many concurrent large responses set the agent's peak
            // memory). The downstream side keeps `h1_buffer_limit`.
            .http1_max_buf_size(UPSTREAM_READ_BUFFER)
            .http2_only(route.upstream_h2c)
            .build(connector);
        let base = format!("http://{}", route.upstream.authority());
        Self {
            inner: Arc::new(Inner {
                route,
                config: config.clone(),
                client,
                requests: tracker.upstream_requests(),
                base,
                metrics: Arc::new(RouteMetrics::new()),
                warnings: WarnLimiter::new(WARN_INTERVAL),
            }),
        }
    }

    /// This route's counters.
    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.inner.metrics
    }

    /// Accept from `listener` until it closes or `tracker` begins shutdown; each connection runs
    /// in its own task. Returns when accepting stops; use the tracker to wait for connections.
    pub async fn serve<A: Accept>(&self, listener: A, tracker: &ConnectionTracker) {
        accept_loop(
            listener,
            tracker,
            &self.inner.metrics,
            |stream, peer, _local, guard| {
                let this = self.clone();
                let signal = tracker.signal();
                tokio::spawn(async move { this.run(stream, peer, guard, signal).await });
            },
        )
        .await;
    }

    /// Serve one accepted stream from `peer` until it closes; counted in `tracker` (closed at
    /// once when the tracker is at its limit or shutting down).
    pub async fn serve_connection<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        tracker: &ConnectionTracker,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match tracker.try_admit() {
            Some(guard) => self.run(stream, peer, guard, tracker.signal()).await,
            None => self.inner.metrics.connection_rejected(),
        }
    }

    async fn run<S>(&self, stream: S, peer: SocketAddr, guard: ConnGuard, signal: ShutdownSignal)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        let config = &inner.config;
        let slot = Arc::new(Slot {
            _guard: guard,
            _open: inner.metrics.open_connection(),
        });
        let clock = IdleClock::new();
        let mut stream = Activity::new(stream, Arc::clone(&clock), Arc::clone(&inner.metrics));

        let mut draining = signal.clone();
        let detected = tokio::select! {
            detected = tokio::time::timeout(config.header_read_timeout, detect(&mut stream)) => detected,
            () = draining.draining() => return,
        };
        let (protocol, prefix) = match detected {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::trace!(%peer, %error, "read failed before the first request");
                return;
            }
            Err(_) => {
                inner.metrics.client_timeout();
                tracing::debug!(%peer, "client sent no request within header_read_timeout");
                return;
            }
        };
        let io = TokioIo::new(Rewind::new(prefix, stream));
        let service = {
            let this = self.clone();
            let clock = Arc::clone(&clock);
            let signal = signal.clone();
            service_fn(move |req| {
                let this = this.clone();
                let tunnel = TunnelContext {
                    slot: Arc::clone(&slot),
                    clock: Arc::clone(&clock),
                    signal: signal.clone(),
                };
                async move { Ok::<_, Infallible>(this.handle(req, peer, protocol, tunnel).await) }
            })
        };
        let result = match protocol {
            Protocol::Http1 => {
                let max = config.max_header_bytes.max(1024);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(config.header_read_timeout)
                    .max_header_size(max)
                    .max_buf_size(h1_buffer_limit(max))
                    .keep_alive(true)
                    // A client may send its request and then shut down its write side
                    // (`nc -N`, some scripts); it still gets the answer.
                    .half_close(true)
                    .serve_connection(io, service)
                    .with_upgrades();
                drive(conn, signal, &clock, config.idle_timeout).await
            }
            Protocol::Http2 => {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(
                        u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .max_concurrent_streams(config.http2_max_concurrent_streams.max(1))
                    .max_send_buf_size(config.http2_max_send_buffer.max(1024))
                    .serve_connection(io, service);
                drive(conn, signal, &clock, config.idle_timeout).await
            }
        };
        match result {
            Ended::Done(Ok(())) => {}
            Ended::Done(Err(error)) => self.connection_error(peer, &error),
            Ended::Idle => tracing::debug!(%peer, "connection idle, closed"),
            Ended::Closed => tracing::debug!(%peer, "connection closed by shutdown"),
        }
    }

    /// Count and log a connection that ended with an error; hyper has already answered a
    /// malformed or oversized head (431 or 400, empty body).
    fn connection_error(&self, peer: SocketAddr, error: &hyper::Error) {
        let metrics = &self.inner.metrics;
        if error.is_parse_too_large() {
            metrics.record_status(431);
            tracing::debug!(%peer, "431: request head larger than max_header_bytes");
        } else if error.is_parse() || error.is_parse_status() {
            metrics.record_status(400);
            tracing::debug!(%peer, %error, "400: malformed request");
        } else if error.is_timeout() {
            metrics.client_timeout();
            tracing::debug!(%peer, "no complete request head within header_read_timeout, closed");
        } else {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        protocol: Protocol,
        tunnel: TunnelContext,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let inner = &self.inner;
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let response = self.forward(req, peer, protocol, tunnel).await;
        let status = response.status();
        inner.metrics.record_status(status.as_u16());
        let latency = start.elapsed();
        inner.metrics.record_latency(latency);
        if inner.config.access_log {
            tracing::info!(
                target: "local_proxy::access",
                %peer,
                %method,
                path = %path,
                status = status.as_u16(),
                latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                upstream = %inner.route.upstream,
            );
        }
        response
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        protocol: Protocol,
        tunnel: TunnelContext,
    ) -> Response<ProxyBody> {
        let inner = &self.inner;
        if req.method() == Method::CONNECT {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
        }
        let upgrade = protocol == Protocol::Http1 && wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let Ok(uri) = Uri::try_from(format!("{}{}", inner.base, path_and_query)) else {
            return error_response(StatusCode::BAD_REQUEST, "request target is not valid");
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        parts.version = if inner.route.upstream_h2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let headers = &mut parts.headers;
        remove_hop_by_hop_request(headers, upgrade);
        if protocol == Protocol::Http2 && !inner.route.upstream_h2c {
            join_cookies(headers);
        }
        if let Some(host) = &host {
            headers.insert(header::HOST, host.clone());
        }
        apply_forwarded(
            headers,
            peer,
            host.as_ref(),
            "http",
            inner.route.trust_forwarded,
        );
        let upstream_req = Request::from_parts(parts, body);
        let Ok(permit) = Arc::clone(&inner.requests).try_acquire_owned() else {
            inner.metrics.over_request_limit();
            limited_warn!(inner.warnings, %peer, upstream = %inner.route.upstream, "503: max_upstream_requests reached");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight",
            );
        };

        // The response timeout runs from the last request byte sent: a long upload is not cut
        // while it makes progress.
        let timeout = inner.config.upstream_response_timeout;
        let progress = IdleClock::new();
        let upstream_req = upstream_req.map(|body| Progress::new(body, Arc::clone(&progress)));
        let outcome = tokio::select! {
            outcome = inner.client.request(upstream_req) => Some(outcome),
            () = progress.expired(timeout) => None,
        };
        let mut response = match outcome {
            Some(Ok(response)) => response,
            Some(Err(error)) if is_budget_exhausted(&error) => {
                inner.metrics.over_socket_budget();
                limited_warn!(inner.warnings, %peer, upstream = %inner.route.upstream, "503: max_upstream_sockets reached");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many upstream connections",
                );
            }
            Some(Err(error)) => {
                inner.metrics.upstream_error();
                let source = error_chain(&error);
                limited_warn!(inner.warnings, %peer, upstream = %inner.route.upstream, error = %source, "502: upstream failed");
                return error_response(StatusCode::BAD_GATEWAY, "upstream unavailable");
            }
            None => {
                inner.metrics.upstream_error();
                limited_warn!(inner.warnings, %peer, upstream = %inner.route.upstream, ?timeout, "504: upstream sent no response in time");
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream did not answer in time",
                );
            }
        };

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client_upgrade) = client_upgrade else {
                inner.metrics.upstream_error();
                limited_warn!(inner.warnings, %peer, "502: upstream switched protocols unasked");
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream switched protocols unasked",
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(run_tunnel(
                client_upgrade,
                upstream_upgrade,
                tunnel,
                inner.config.idle_timeout,
            ));
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers, switching);
        parts.version = Version::HTTP_11;
        let body = UpstreamBody {
            inner: body,
            _permit: permit,
        };
        Response::from_parts(parts, Either::Left(body))
    }
}

/// Idle upstream connections kept per route.
const UPSTREAM_IDLE_PER_ROUTE: usize = 64;

/// Ceiling of the read buffer of one pooled upstream HTTP/1 connection.
const UPSTREAM_READ_BUFFER: usize = 128 * 1024;

/// The HTTP/1 read and write buffer ceiling of one connection: room for the largest head
/// accepted, and at least 256 KiB (measured: 64 KiB cost a third of the upload throughput).
fn h1_buffer_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_add(16 * 1024).max(256 * 1024)
}

fn error_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: {text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The error and its sources on one line (the legacy client's own message is vague).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
