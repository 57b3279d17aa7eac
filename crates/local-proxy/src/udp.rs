//! The UDP forwarder: datagrams received on one socket (the agent's virtual IP) go to a local
//! UDP upstream, one connected upstream socket per flow, and the replies come back.
//!
//! A flow is one client address and port. Its upstream socket is connected, so the kernel
//! hands it only the upstream's replies, and each reply goes back to that client. Bounds, all
//! counted when they drop a datagram ([`UdpDropReason`]): flows per route
//! ([`UdpRouteConfig::max_flows`]) and across routes ([`ProxyConfig::max_udp_flows`], held
//! by the [`ConnectionTracker`]); one descriptor of the shared [`FdBudget`](crate::FdBudget)
//! per flow; datagrams queued towards the upstream ([`UdpRouteConfig::max_queued_bytes`] per
//! route, [`FLOW_QUEUE`] per flow); and replies no larger than the socket can send
//! ([`DatagramSocket::max_payload`]: the tunnel's MTU, as the stack does not fragment).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::budget::FdPermit;
use crate::log::{WARN_INTERVAL, WarnLimiter, limited_warn};
use crate::{ConnectionTracker, ProxyConfig, UdpRouteConfig, Upstream};

/// Datagrams queued per flow towards the upstream; past it they are dropped (`queue_full`).
pub const FLOW_QUEUE: usize = 64;

/// How long a one-shot flow (one datagram from the client, answered) stays open after its
/// reply, when the route's idle timeout is longer: a DNS query is one flow, and a resolver
/// uses a new source port for each query.
pub const ONE_SHOT_IDLE: Duration = Duration::from_secs(2);

/// The largest datagram received from the client side.
const RECV_BUFFER: usize = 65_536;

/// A datagram socket the forwarder serves: the agent's UDP socket on its virtual IP, or a
/// tokio [`UdpSocket`](tokio::net::UdpSocket) in tests and other services.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Receives one datagram (truncated to `buf`) and its sender. Must be cancel-safe.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;

    /// Sends one datagram to `target`, waiting while the socket's queue is full.
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// The largest payload a datagram to `target` may carry; a longer reply is dropped and
    /// counted (`oversize`), never fragmented.
    fn max_payload(&self, target: SocketAddr) -> usize;
}

impl DatagramSocket for tokio::net::UdpSocket {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, buf, target).await
    }

    fn max_payload(&self, target: SocketAddr) -> usize {
        if target.is_ipv4() { 65_507 } else { 65_527 }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum UdpDropReason {
    /// A new flow past the route's `max_flows` or the global `max_udp_flows`.
    FlowLimit,
    /// A new flow with no descriptor left in the shared budget (`max_upstream_sockets`).
    SocketBudget,
    /// The flow's queue or the route's queued bytes towards the upstream were full.
    QueueFull,
    /// A reply larger than the client side can carry (the tunnel MTU).
    Oversize,
    /// The upstream could not be reached (connect or send failed, or it refused).
    Upstream,
    /// The reply could not be sent back to the client.
    Client,
}

impl UdpDropReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 6] = [
        Self::FlowLimit,
        Self::SocketBudget,
        Self::QueueFull,
        Self::Oversize,
        Self::Upstream,
        Self::Client,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlowLimit => "flow_limit",
            Self::SocketBudget => "socket_budget",
            Self::QueueFull => "queue_full",
            Self::Oversize => "oversize",
            Self::Upstream => "upstream",
            Self::Client => "client",
        }
    }
}

/// Live counters of one UDP route (relaxed atomics, no lock).
#[derive(Debug, Default)]
pub struct UdpMetrics {
    open_flows: AtomicU64,
    flows: AtomicU64,
    expired_flows: AtomicU64,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: [AtomicU64; UdpDropReason::ALL.len()],
}

/// A copy of a UDP route's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UdpMetricsSnapshot {
    /// Flows open now.
    pub open_flows: u64,
    /// Flows opened since start.
    pub flows: u64,
    /// Flows closed by their idle timeout.
    pub expired_flows: u64,
    /// Datagrams forwarded from clients to the upstream.
    pub datagrams_in: u64,
    /// Datagrams forwarded from the upstream to clients.
    pub datagrams_out: u64,
    /// Payload bytes forwarded from clients to the upstream.
    pub bytes_in: u64,
    /// Payload bytes forwarded from the upstream to clients.
    pub bytes_out: u64,
    /// Datagrams dropped, by reason (in [`UdpDropReason::ALL`] order).
    pub dropped: [u64; UdpDropReason::ALL.len()],
}

impl UdpMetricsSnapshot {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: UdpDropReason) -> u64 {
        UdpDropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.dropped[i])
    }
}

impl UdpMetrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters now.
    pub fn snapshot(&self) -> UdpMetricsSnapshot {
        UdpMetricsSnapshot {
            open_flows: self.open_flows.load(Relaxed),
            flows: self.flows.load(Relaxed),
            expired_flows: self.expired_flows.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            datagrams_out: self.datagrams_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            dropped: std::array::from_fn(|i| self.dropped[i].load(Relaxed)),
        }
    }

    fn drop_one(&self, reason: UdpDropReason) {
        if let Some(i) = UdpDropReason::ALL.iter().position(|r| *r == reason) {
            self.dropped[i].fetch_add(1, Relaxed);
        }
    }
}

/// Append Prometheus text for several UDP routes to `out`, each family's `HELP`/`TYPE` once;
/// labels as in [`render_prometheus`](crate::render_prometheus).
///
/// Families: `{prefix}_open_flows`, `{prefix}_flows_total`, `{prefix}_expired_flows_total`,
/// `{prefix}_datagrams_total{direction="in"|"out"}`, `{prefix}_bytes_total{direction}`,
/// `{prefix}_dropped_total{reason}` (reasons of [`UdpDropReason::as_str`]).
pub fn render_udp_prometheus(
    out: &mut String,
    prefix: &str,
    routes: &[(&str, &UdpMetricsSnapshot)],
) {
    use std::fmt::Write as _;
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
        let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
    };
    let set = |labels: &str, extra: &str| match (labels.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("{{{labels}}}"),
        (true, false) => format!("{{{extra}}}"),
        (false, false) => format!("{{{labels},{extra}}}"),
    };
    type Simple = (
        &'static str,
        &'static str,
        &'static str,
        fn(&UdpMetricsSnapshot) -> u64,
    );
    let simple: [Simple; 3] = [
        ("open_flows", "gauge", "UDP flows open now.", |m| {
            m.open_flows
        }),
        ("flows_total", "counter", "UDP flows opened.", |m| m.flows),
        (
            "expired_flows_total",
            "counter",
            "UDP flows closed by their idle timeout.",
            |m| m.expired_flows,
        ),
    ];
    for (name, kind, help, get) in simple {
        family(out, name, kind, help);
        for (labels, m) in routes {
            let _ = writeln!(out, "{prefix}_{name}{} {}", set(labels, ""), get(m));
        }
    }
    type Pair = (
        &'static str,
        &'static str,
        fn(&UdpMetricsSnapshot) -> (u64, u64),
    );
    let pairs: [Pair; 2] = [
        (
            "datagrams_total",
            "UDP datagrams forwarded (in: client to upstream).",
            |m| (m.datagrams_in, m.datagrams_out),
        ),
        (
            "bytes_total",
            "UDP payload bytes forwarded (in: client to upstream).",
            |m| (m.bytes_in, m.bytes_out),
        ),
    ];
    for (name, help, get) in pairs {
        family(out, name, "counter", help);
        for (labels, m) in routes {
            let (i, o) = get(m);
            let _ = writeln!(
                out,
                "{prefix}_{name}{} {i}",
                set(labels, "direction=\"in\"")
            );
            let _ = writeln!(
                out,
                "{prefix}_{name}{} {o}",
                set(labels, "direction=\"out\"")
            );
        }
    }
    family(
        out,
        "dropped_total",
        "counter",
        "UDP datagrams dropped, by reason.",
    );
    for (labels, m) in routes {
        for (reason, n) in UdpDropReason::ALL.iter().zip(m.dropped) {
            let extra = format!("reason=\"{}\"", reason.as_str());
            let _ = writeln!(out, "{prefix}_dropped_total{} {n}", set(labels, &extra));
        }
    }
}

/// A UDP route: datagrams received on a [`DatagramSocket`] are forwarded per flow to one
/// upstream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UdpForwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    route: UdpRouteConfig,
    metrics: Arc<UdpMetrics>,
    /// This route's `max_flows`.
    flows: Arc<Semaphore>,
    /// Bytes queued towards the upstream across this route's flows.
    queued: AtomicUsize,
    warnings: WarnLimiter,
}

/// A flow as the receive loop knows it.
struct Flow {
    id: u64,
    queue: mpsc::Sender<Bytes>,
}

/// What a flow task holds for its whole life: freed together when it ends.
struct FlowPermits {
    _route: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    _fd: FdPermit,
}

impl UdpForwarder {
    /// A forwarder for `route`. Its flows count against the tracker's `max_udp_flows` and
    /// descriptor budget: serve it with the tracker made from the same [`ProxyConfig`].
    pub fn new(route: UdpRouteConfig) -> Self {
        let flows = Arc::new(Semaphore::new(
            route.max_flows.clamp(1, Semaphore::MAX_PERMITS),
        ));
        Self {
            inner: Arc::new(Inner {
                route,
                metrics: Arc::new(UdpMetrics::new()),
                flows,
                queued: AtomicUsize::new(0),
                warnings: WarnLimiter::new(WARN_INTERVAL),
            }),
        }
    }

    /// This route's counters.
    pub fn metrics(&self) -> &Arc<UdpMetrics> {
        &self.inner.metrics
    }

    /// Receives from `socket` until `tracker` begins shutdown (or the socket fails), forwarding
    /// each flow in its own task. When it returns, every flow is closed.
    pub async fn serve<S: DatagramSocket>(&self, socket: S, tracker: &ConnectionTracker) {
        let socket = Arc::new(socket);
        let inner = &self.inner;
        let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut peers: HashMap<tokio::task::Id, (SocketAddr, u64)> = HashMap::new();
        let mut next_id = 0u64;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut signal = tracker.signal();
        loop {
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    let (n, peer) = match received {
                        Ok(received) => received,
                        Err(error) => {
                            tracing::warn!(%error, upstream = %inner.route.upstream, "udp route: receiving failed, route stopped");
                            break;
                        }
                    };
                    let datagram = Bytes::copy_from_slice(&buf[..n]);
                    let datagram = match flows.get(&peer) {
                        Some(flow) => match self.enqueue(&flow.queue, datagram) {
                            Some(returned) => returned,
                            None => continue,
                        },
                        None => datagram,
                    };
                    // No flow, or its task has ended: open one.
                    let Some(permits) = self.admit(peer, tracker) else {
                        continue;
                    };
                    let (queue, rx) = mpsc::channel(FLOW_QUEUE);
                    if self.enqueue(&queue, datagram).is_some() {
                        continue;
                    }
                    next_id += 1;
                    inner.metrics.flows.fetch_add(1, Relaxed);
                    let task = FlowTask {
                        _permits: permits,
                        forwarder: self.clone(),
                        socket: Arc::clone(&socket),
                        peer,
                        rx,
                    };
                    let handle = tasks.spawn(task.run());
                    peers.insert(handle.id(), (peer, next_id));
                    flows.insert(peer, Flow { id: next_id, queue });
                }
                Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match ended {
                        Ok((id, ())) => id,
                        Err(error) => error.id(),
                    };
                    if let Some((peer, flow)) = peers.remove(&id)
                        && flows.get(&peer).is_some_and(|f| f.id == flow)
                    {
                        flows.remove(&peer);
                    }
                }
                () = signal.draining() => break,
            }
        }
    }

    /// Queues `datagram` on a flow; gives it back when the flow's task has ended, `None`
    /// when it was queued or dropped (counted).
    fn enqueue(&self, queue: &mpsc::Sender<Bytes>, datagram: Bytes) -> Option<Bytes> {
        let inner = &self.inner;
        let len = datagram.len();
        let before = inner.queued.fetch_add(len, Relaxed);
        if before + len > inner.route.max_queued_bytes {
            inner.queued.fetch_sub(len, Relaxed);
            inner.metrics.drop_one(UdpDropReason::QueueFull);
            return None;
        }
        match queue.try_send(datagram) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                inner.queued.fetch_sub(len, Relaxed);
                inner.metrics.drop_one(UdpDropReason::QueueFull);
                None
            }
            Err(mpsc::error::TrySendError::Closed(datagram)) => {
                inner.queued.fetch_sub(len, Relaxed);
                Some(datagram)
            }
        }
    }

    /// The permits of a new flow from `peer`, or `None` (the datagram dropped and counted).
    fn admit(&self, peer: SocketAddr, tracker: &ConnectionTracker) -> Option<FlowPermits> {
        let inner = &self.inner;
        let upstream = &inner.route.upstream;
        let Ok(route) = Arc::clone(&inner.flows).try_acquire_owned() else {
            inner.metrics.drop_one(UdpDropReason::FlowLimit);
            limited_warn!(inner.warnings, %peer, %upstream, "udp route: max_flows reached, datagram dropped");
            return None;
        };
        let Ok(global) = tracker.udp_flows().try_acquire_owned() else {
            inner.metrics.drop_one(UdpDropReason::FlowLimit);
            limited_warn!(inner.warnings, %peer, %upstream, "udp route: max_udp_flows reached, datagram dropped");
            return None;
        };
        let Some(fd) = tracker.fd_budget().try_acquire() else {
            inner.metrics.drop_one(UdpDropReason::SocketBudget);
            limited_warn!(inner.warnings, %peer, %upstream, "udp route: max_upstream_sockets reached, datagram dropped");
            return None;
        };
        Some(FlowPermits {
            _route: route,
            _global: global,
            _fd: fd,
        })
    }
}

/// One flow's task: its upstream socket, its queue, its idle timer.
struct FlowTask<S> {
    /// First, so the permits are free before the queue closes (fields drop in order): a
    /// datagram that finds the queue closed may open a new flow at once.
    _permits: FlowPermits,
    forwarder: UdpForwarder,
    socket: Arc<S>,
    peer: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
}

impl<S: DatagramSocket> FlowTask<S> {
    async fn run(mut self) {
        let inner = Arc::clone(&self.forwarder.inner);
        let metrics = &inner.metrics;
        metrics.open_flows.fetch_add(1, Relaxed);
        let _open = OpenFlow(Arc::clone(metrics));
        let peer = self.peer;
        let upstream = &inner.route.upstream;
        let socket = match connect(upstream).await {
            Ok(socket) => socket,
            Err(error) => {
                limited_warn!(inner.warnings, %peer, %upstream, %error, "udp route: cannot reach the upstream");
                self.rx.close();
                while let Ok(datagram) = self.rx.try_recv() {
                    inner.queued.fetch_sub(datagram.len(), Relaxed);
                    metrics.drop_one(UdpDropReason::Upstream);
                }
                return;
            }
        };
        let max = self.socket.max_payload(peer);
        // One byte more than fits: a reply that fills it is too large (or truncated).
        let mut buf = vec![0u8; max.saturating_add(1).min(RECV_BUFFER)];
        let idle = inner.route.idle_timeout;
        let (mut sent, mut replies) = (0u64, 0u64);
        let mut last = Instant::now();
        loop {
            let quiet = if sent == 1 && replies >= 1 {
                idle.min(ONE_SHOT_IDLE)
            } else {
                idle
            };
            tokio::select! {
                datagram = self.rx.recv() => {
                    let Some(datagram) = datagram else { break };
                    inner.queued.fetch_sub(datagram.len(), Relaxed);
                    last = Instant::now();
                    match socket.send(&datagram).await {
                        Ok(n) => {
                            sent += 1;
                            metrics.datagrams_in.fetch_add(1, Relaxed);
                            metrics.bytes_in.fetch_add(n as u64, Relaxed);
                        }
                        Err(error) => {
                            metrics.drop_one(UdpDropReason::Upstream);
                            tracing::debug!(%peer, %upstream, %error, "udp route: send to the upstream failed");
                        }
                    }
                }
                received = socket.recv(&mut buf) => {
                    last = Instant::now();
                    match received {
                        Ok(n) if n > max => {
                            metrics.drop_one(UdpDropReason::Oversize);
                            limited_warn!(inner.warnings, %peer, %upstream, max, "udp route: reply larger than the tunnel MTU allows, dropped");
                        }
                        Ok(n) => match self.socket.send_to(&buf[..n], peer).await {
                            Ok(_) => {
                                replies += 1;
                                metrics.datagrams_out.fetch_add(1, Relaxed);
                                metrics.bytes_out.fetch_add(n as u64, Relaxed);
                            }
                            Err(error) => {
                                metrics.drop_one(UdpDropReason::Client);
                                tracing::debug!(%peer, %error, "udp route: reply not sent to the client");
                            }
                        },
                        // An ICMP error (port unreachable: nothing listens) on the connected
                        // socket; the flow stays, the app may come back.
                        Err(error) => {
                            metrics.drop_one(UdpDropReason::Upstream);
                            tracing::debug!(%peer, %upstream, %error, "udp route: upstream unreachable");
                        }
                    }
                }
                () = tokio::time::sleep_until(last + quiet) => {
                    metrics.expired_flows.fetch_add(1, Relaxed);
                    tracing::trace!(%peer, "udp route: flow idle, closed");
                    break;
                }
            }
        }
        // Datagrams still queued are dropped with the flow: give their bytes back.
        self.rx.close();
        while let Ok(datagram) = self.rx.try_recv() {
            inner.queued.fetch_sub(datagram.len(), Relaxed);
        }
    }
}

/// Counts a flow open while it lives (a panicking task included).
struct OpenFlow(Arc<UdpMetrics>);

impl Drop for OpenFlow {
    fn drop(&mut self) {
        self.0.open_flows.fetch_sub(1, Relaxed);
    }
}

/// A UDP socket connected to `upstream` (a DNS name resolved by the system, first address).
async fn connect(upstream: &Upstream) -> io::Result<tokio::net::UdpSocket> {
    if upstream.unix_path().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a udp route cannot use a unix socket upstream",
        ));
    }
    let target = tokio::net::lookup_host((upstream.host(), upstream.port()))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

impl ProxyConfig {
    /// The `max_udp_flows` bound as a semaphore size.
    pub(crate) fn udp_flow_permits(&self) -> usize {
        self.max_udp_flows.clamp(1, Semaphore::MAX_PERMITS)
    }
}
