//! HTTP reverse proxy and raw TCP forwarder from accepted streams to a local app.
//!
//! This crate serves any `AsyncRead + AsyncWrite` stream together with its peer's address, so
//! the agent feeds it connections from its userspace TCP stack while tests and other services
//! use plain TCP. It knows nothing of WireGuard, keys or the stack.
//!
//! What it does:
//! - [`HttpProxy`]: HTTP/1.1 (keep-alive, pipelining, `101` upgrades such as WebSocket) and
//!   HTTP/2 with prior knowledge (h2c) from clients; a pooled HTTP/1.1 (or h2c) client to the
//!   upstream; bodies streamed with back-pressure, never buffered whole; hop-by-hop headers
//!   removed; `X-Forwarded-*` and `Forwarded` kept-and-appended or replaced
//!   ([`HttpRouteConfig::trust_forwarded`]); `502`/`504`/`431`/`400` answers; slow or silent
//!   clients cut at [`ProxyConfig::header_read_timeout`].
//! - [`TcpForwarder`]: raw byte forwarding with half-close, optionally announcing the peer with a
//!   PROXY protocol v2 header ([`proxy_protocol`]); a reset or failure of one side reaches the
//!   other as a reset ([`Abort`]), never as a clean end.
//! - [`ConnectionTracker`]: the connection limit shared by every route, and graceful shutdown
//!   (stop accepting, drain within [`ProxyConfig::drain_timeout`], then close, tunnels included).
//! - Overload bounds no client controls: HTTP/2 streams per connection and response bytes
//!   buffered per stream ([`ProxyConfig::http2_max_concurrent_streams`],
//!   [`ProxyConfig::http2_max_send_buffer`]), requests in flight to upstreams across routes
//!   ([`ProxyConfig::max_upstream_requests`], `503` past it), and one [`FdBudget`] for every
//!   socket opened towards upstreams ([`ProxyConfig::max_upstream_sockets`], `503` past it).
//! - [`UdpForwarder`]: UDP datagrams from any [`DatagramSocket`] to a local UDP upstream, one
//!   connected upstream socket per flow, with bounded flows and queues (see [`udp`]).
//! - Upstreams are `host:port` or a unix stream socket ([`Upstream::unix`]) for HTTP and TCP.
//! - [`RouteMetrics`]: lock-free per-route counters and a latency histogram, rendered as
//!   Prometheus text by [`render_prometheus`].
//!
//! What it does not do: TLS, load balancing over several upstreams, caching, forward-proxy
//! `CONNECT` (answered `405`), WebSocket over HTTP/2 (extended `CONNECT`; WebSocket over
//! HTTP/1.1 works), or installing a `tracing` subscriber. An `Upgrade: h2c` request is passed
//! to the upstream like any other upgrade.
//!
//! # Example
//!
//! ```
//! use local_proxy::{ConnectionTracker, HttpProxy, HttpRouteConfig, ProxyConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let config = ProxyConfig::default();
//! let tracker = ConnectionTracker::new(&config);
//! let app: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
//! let proxy = HttpProxy::new(HttpRouteConfig::new(app), &config, &tracker);
//!
//! // Any `Accept` works; the agent passes its virtual-IP listener here.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = tokio::spawn({
//!     let (proxy, tracker) = (proxy.clone(), tracker.clone());
//!     async move { proxy.serve(listener, &tracker).await }
//! });
//!
//! // ... later: stop accepting, let requests finish, close the rest.
//! tracker.shutdown().await;
//! server.await.unwrap();
//! let text = proxy.metrics().snapshot().to_prometheus("wg_agent_route", "port=\"80\"");
//! assert!(text.contains("wg_agent_route_requests_total{port=\"80\",class=\"2xx\"} 0"));
//! # Ok(())
//! # }
//! ```

mod accept;
mod budget;
mod config;
mod headers;
mod http;
mod io;
mod log;
mod metrics;
pub mod proxy_protocol;
mod relay;
mod tcp;
mod tracker;
pub mod udp;
mod upstream;

pub use accept::Accept;
pub use budget::{FdBudget, FdPermit};
pub use config::{
    HttpRouteConfig, ProxyConfig, TcpRouteConfig, UdpRouteConfig, Upstream, UpstreamParseError,
};
pub use http::{HttpProxy, ProxyBody, UpstreamBody};
pub use metrics::{
    HistogramSnapshot, LATENCY_BUCKETS_SECONDS, MetricsSnapshot, RouteMetrics, render_prometheus,
};
pub use relay::Abort;
pub use tcp::TcpForwarder;
pub use tracker::{ConnectionTracker, Phase, ShutdownOutcome};
pub use udp::{
    DatagramSocket, UdpDropReason, UdpForwarder, UdpMetrics, UdpMetricsSnapshot,
    render_udp_prometheus,
};
