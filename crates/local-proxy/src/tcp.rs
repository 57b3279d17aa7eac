//! The raw TCP forwarder: bytes copied both ways, with half-close and optional PROXY v2.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::accept::{Accept, accept_loop};
use crate::io::{Activity, IdleClock};
use crate::log::{WARN_INTERVAL, WarnLimiter, limited_warn};
use crate::proxy_protocol::encode_v2;
use crate::relay::{Abort, Broken, Side, relay};
use crate::tracker::{ConnGuard, ShutdownSignal};
use crate::upstream::UpstreamStream;
use crate::{ConnectionTracker, FdBudget, ProxyConfig, RouteMetrics, TcpRouteConfig};

/// Copy buffer per direction.
const COPY_BUFFER: usize = 64 * 1024;

/// A raw TCP route: each accepted stream is joined to a fresh connection to the upstream.
///
/// When one side stops sending, the other side's write half is shut down (half-close); the
/// connection ends when both directions are done, when it idles for `idle_timeout`, or when
/// shutdown closes it. When one side fails (a reset, a timeout, any I/O error), the other is
/// reset ([`Abort`]), so a cut-off stream never looks complete; a forward closed at the
/// shutdown deadline is reset both ways for the same reason. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TcpForwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    route: TcpRouteConfig,
    config: ProxyConfig,
    metrics: Arc<RouteMetrics>,
    warnings: WarnLimiter,
}

impl TcpForwarder {
    /// A forwarder for `route` with `config`'s connect and idle timeouts.
    pub fn new(route: TcpRouteConfig, config: &ProxyConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                route,
                config: config.clone(),
                metrics: Arc::new(RouteMetrics::new()),
                warnings: WarnLimiter::new(WARN_INTERVAL),
            }),
        }
    }

    /// This route's counters (bytes, connections, upstream errors).
    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.inner.metrics
    }

    /// Accept from `listener` until it closes or `tracker` begins shutdown, forwarding each
    /// connection in its own task. The listener's [`Accept::connection_local_addr`] is the
    /// PROXY header's destination.
    pub async fn serve<A>(&self, listener: A, tracker: &ConnectionTracker)
    where
        A: Accept,
        A::Stream: Abort,
    {
        accept_loop(
            listener,
            tracker,
            &self.inner.metrics,
            |stream, peer, local, guard| {
                let this = self.clone();
                let (signal, budget) = (tracker.signal(), tracker.fd_budget().clone());
                tokio::spawn(async move {
                    this.run(stream, peer, local, guard, signal, budget).await;
                });
            },
        )
        .await;
    }

    /// Forward one accepted stream from `peer` (accepted on `local`, if known) until it ends.
    pub async fn serve_connection<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        tracker: &ConnectionTracker,
    ) where
        S: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
    {
        match tracker.try_admit() {
            Some(guard) => {
                let budget = tracker.fd_budget().clone();
                self.run(stream, peer, local, guard, tracker.signal(), budget)
                    .await;
            }
            None => self.inner.metrics.connection_rejected(),
        }
    }

    async fn run<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        _guard: ConnGuard,
        mut signal: ShutdownSignal,
        budget: FdBudget,
    ) where
        S: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        let _open = inner.metrics.open_connection();
        let upstream = &inner.route.upstream;
        // Whenever the upstream cannot be reached, the client is reset: like a refused
        // connection, never an empty stream that ended cleanly.
        let Some(_fd) = budget.try_acquire() else {
            stream.abort();
            inner.metrics.over_socket_budget();
            limited_warn!(inner.warnings, %peer, %upstream, "tcp route: max_upstream_sockets reached, connection closed");
            return;
        };
        let connect = UpstreamStream::connect(upstream);
        let mut upstream_stream = match tokio::time::timeout(
            inner.config.upstream_connect_timeout,
            connect,
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                inner.metrics.upstream_error();
                limited_warn!(inner.warnings, %peer, %upstream, %error, "tcp route: upstream connect failed");
                stream.abort();
                return;
            }
            Err(_) => {
                inner.metrics.upstream_error();
                limited_warn!(inner.warnings, %peer, %upstream, "tcp route: upstream connect timed out");
                stream.abort();
                return;
            }
        };
        if inner.route.proxy_protocol
            && let Err(error) = upstream_stream.write_all(&encode_v2(peer, local)).await
        {
            inner.metrics.upstream_error();
            limited_warn!(inner.warnings, %peer, %upstream, %error, "tcp route: sending PROXY header failed");
            stream.abort();
            return;
        }
        let clock = IdleClock::new();
        let mut client = Activity::new(stream, Arc::clone(&clock), Arc::clone(&inner.metrics));
        tokio::select! {
            result = relay(&mut client, &mut upstream_stream, COPY_BUFFER) => match result {
                Ok((sent, received)) => tracing::trace!(%peer, sent, received, "tcp route: done"),
                Err(Broken { side: Side::A, error }) => {
                    tracing::debug!(%peer, %error, "tcp route: client connection failed, resetting the upstream");
                    upstream_stream.abort();
                }
                Err(Broken { side: Side::B, error }) => {
                    tracing::debug!(%peer, %error, "tcp route: upstream connection failed, resetting the client");
                    client.get_mut().abort();
                }
            },
            () = signal.closed() => {
                tracing::debug!(%peer, "tcp route: closed by shutdown, resetting both sides");
                client.get_mut().abort();
                upstream_stream.abort();
            }
            () = clock.expired(inner.config.idle_timeout) => tracing::debug!(%peer, "tcp route: idle, closed"),
        }
    }
}
