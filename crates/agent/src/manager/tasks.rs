//! The packet tasks: UDP socket ⇄ wg-core ⇄ netstack, in batches.
//!
//! Three tasks share the device behind one lock, each holding it only while it feeds the
//! engine and drains its outputs into reused buffers (never across an `.await`):
//! - **receive**: a batch of datagrams (recvmmsg/GRO) → `handle_datagram` → decrypted packets
//!   to the stack (waiting when the stack pushes back), replies to the socket;
//! - **send**: outbound packets from the stack → `handle_ip_packet` → a GSO batch to the socket;
//! - **timer**: sleeps until the engine's `poll_timeout`, woken early when a handler moved it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use wg_core::Event;
use wg_core::driver::{RecvBatch, SendBatch, UdpDriver};

use super::{Device, Inner};

/// Datagrams one send batch holds; beyond it a transmit is dropped and counted.
const SEND_BATCH: usize = 2_048;
/// Outbound packets taken from the stack per lock.
const OUT_BATCH: usize = 128;
/// Consecutive receive errors after which the socket is re-created.
const RECREATE_AFTER_ERRORS: u32 = 8;

/// Counters of the packet tasks, for metrics.
#[derive(Debug, Default)]
pub struct PacketCounters {
    /// Receive errors on the UDP socket.
    pub udp_recv_errors: AtomicU64,
    /// Send calls that failed.
    pub udp_send_errors: AtomicU64,
    /// Times the UDP socket was re-created after errors.
    pub udp_socket_recreated: AtomicU64,
    /// Datagrams not sent because a send batch was full.
    pub transmit_overflow: AtomicU64,
    /// Datagrams received.
    pub rx_datagrams: AtomicU64,
    /// Packets handed to the stack.
    pub rx_packets: AtomicU64,
    /// Packets taken from the stack.
    pub tx_packets: AtomicU64,
}

/// The UDP socket (one dual-stack socket where the host has IPv6, else IPv4), replaceable
/// after persistent errors.
///
/// No task keeps a socket across a wait: each takes [`current`](Self::current) per batch, so
/// a replaced socket closes as soon as the send in flight on it ends.
pub(crate) struct Sockets {
    /// `None` only while a socket on a fixed port is being re-created.
    current: RwLock<Option<Arc<UdpDriver>>>,
    port: u16,
    /// Whether the socket reaches IPv6 (kept while re-creating).
    v6: std::sync::atomic::AtomicBool,
}

impl Sockets {
    pub(crate) fn bind(port: u16) -> io::Result<Self> {
        let driver = bind_udp(port)?;
        let v6 = driver.local_addr().is_ok_and(|a| a.is_ipv6());
        Ok(Self {
            current: RwLock::new(Some(Arc::new(driver))),
            port,
            v6: std::sync::atomic::AtomicBool::new(v6),
        })
    }

    /// The socket, `None` while one on a fixed port is re-created (datagrams to send are then
    /// dropped and counted).
    pub(crate) fn current(&self) -> Option<Arc<UdpDriver>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, driver: Option<UdpDriver>) {
        if let Some(d) = &driver {
            self.v6
                .store(d.local_addr().is_ok_and(|a| a.is_ipv6()), Relaxed);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = driver.map(Arc::new);
    }

    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.current()
            .and_then(|d| d.local_addr().ok())
            .into_iter()
            .collect()
    }

    /// Whether the socket can reach IPv6 destinations.
    pub(crate) fn has_ipv6(&self) -> bool {
        self.v6.load(Relaxed)
    }

    /// Replaces the socket. On any port the new one is bound first, then swapped in. On a
    /// fixed port the old one must close first: it is taken out (sends meanwhile are dropped
    /// and counted) and the port bound again as soon as the last send in flight lets go; no
    /// socket on another port ever stands in.
    async fn recreate(&self) -> io::Result<()> {
        if self.port == 0 {
            self.set(Some(bind_udp(0)?));
            return Ok(());
        }
        self.set(None);
        let mut last = None;
        for _ in 0..50u32 {
            match bind_udp(self.port) {
                Ok(driver) => {
                    self.set(Some(driver));
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot re-create the UDP socket")))
    }
}

fn bind_udp(port: u16) -> io::Result<UdpDriver> {
    // Dual-stack `[::]` reaches IPv4 and IPv6 gateways; hosts without IPv6 fall back to IPv4.
    UdpDriver::bind(SocketAddr::new(IpAddr::from([0u16; 8]), port))
        .or_else(|_| UdpDriver::bind(SocketAddr::new(IpAddr::from([0u8; 4]), port)))
}

/// A destination as the socket wants it: IPv4 addresses become v4-mapped on a v6 socket.
fn to_socket(dst: SocketAddr, v6_socket: bool) -> SocketAddr {
    match dst {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

/// A source as the engine sees it: v4-mapped addresses back to IPv4.
fn from_socket(src: SocketAddr) -> SocketAddr {
    SocketAddr::new(src.ip().to_canonical(), src.port())
}

/// Wakes the timer task when a handler moved the engine's next deadline earlier.
#[derive(Default)]
pub(crate) struct TimerWake {
    /// The deadline the timer sleeps until, in nanoseconds after `base` (`u64::MAX`: none).
    armed: AtomicU64,
    notify: Notify,
    base: std::sync::OnceLock<Instant>,
}

impl TimerWake {
    fn base(&self) -> Instant {
        *self.base.get_or_init(Instant::now)
    }

    fn encode(&self, at: Option<Instant>) -> u64 {
        at.map_or(u64::MAX, |at| {
            u64::try_from(at.saturating_duration_since(self.base()).as_nanos()).unwrap_or(u64::MAX)
        })
    }

    fn arm(&self, at: Option<Instant>) {
        self.armed.store(self.encode(at), Relaxed);
    }

    pub(crate) fn maybe_wake(&self, next: Option<Instant>) {
        if self.encode(next) < self.armed.load(Relaxed) {
            self.notify.notify_one();
        }
    }
}

/// Reused buffers for decrypted packets on their way to the stack.
struct ToStack {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl ToStack {
    fn new() -> Self {
        Self {
            bufs: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, packet: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(2048));
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf.extend_from_slice(packet);
        self.len += 1;
    }

    fn deliver(&mut self, inner: &Inner) {
        if self.len > 0 {
            inner
                .counters
                .rx_packets
                .fetch_add(self.len as u64, Relaxed);
            inner.netstack.push_inbound(&self.bufs[..self.len]);
            self.len = 0;
        }
    }
}

/// Outputs drained from the engine under the lock, sent after it.
struct Outputs {
    tx: SendBatch,
    v6_socket: bool,
    to_stack: ToStack,
    /// Events taken under the lock with their gateway's id, logged after it.
    events: Vec<Labelled>,
}

impl Outputs {
    fn new(driver: &UdpDriver) -> Self {
        Self {
            tx: SendBatch::with_limits(driver.max_gso_segments(), SEND_BATCH),
            v6_socket: driver.local_addr().is_ok_and(|a| a.is_ipv6()),
            to_stack: ToStack::new(),
            events: Vec::new(),
        }
    }

    /// Takes every transmit and received packet and every event out of the engine.
    fn drain(&mut self, t: &mut Device, inner: &Inner) {
        while let Some(transmit) = t.peers.poll_transmit() {
            let dst = to_socket(transmit.destination, self.v6_socket);
            if !self.tx.push(dst, transmit.payload) {
                inner.counters.transmit_overflow.fetch_add(1, Relaxed);
            }
        }
        while let Some(received) = t.peers.poll_received() {
            self.to_stack.push(received.packet);
        }
        take_events(t, &inner.virtual_ips, &mut self.events);
        inner.timer.maybe_wake(t.peers.poll_timeout());
    }

    /// Logs the events taken by [`drain`](Self::drain); called with the lock released, by
    /// [`send`](Self::send).
    fn log_events(&mut self) {
        for labelled in self.events.drain(..) {
            log_event(labelled);
        }
    }

    async fn send(&mut self, inner: &Inner, driver: &UdpDriver) {
        self.log_events();
        if !self.tx.is_empty() {
            if let Err(e) = driver.send(&mut self.tx).await {
                inner.counters.udp_send_errors.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "udp send failed");
            }
            self.tx.clear();
        }
    }
}

/// An engine event with what its log line names: the gateway's id and, for unanswered
/// handshakes, what the gateway must be told (taken under the lock, logged after it).
struct Labelled {
    event: Event,
    gateway: String,
    /// The gateway's endpoint as the agent sends to it.
    endpoint: String,
    /// The agent's public key and its addresses inside the tunnel, as the gateway's peer
    /// entry must name them.
    agent: Option<(wg_core::PublicKey, Vec<IpAddr>)>,
}

/// Takes the engine's events with their gateway's id (under the lock; logged after it).
/// Failing handshakes also ask the upkeep to re-resolve the gateway's name.
fn take_events(t: &mut Device, virtual_ips: &[IpAddr], out: &mut Vec<Labelled>) {
    while let Some(event) = t.peers.poll_event() {
        let peer = match &event {
            Event::HandshakeCompleted { peer, .. }
            | Event::HandshakeFailing { peer, .. }
            | Event::HandshakeUnanswered { peer, .. }
            | Event::HandshakeRecovered { peer, .. }
            | Event::SessionExpired { peer }
            | Event::EndpointChanged { peer, .. } => Some(*peer),
            _ => None,
        };
        if let (Event::HandshakeFailing { .. } | Event::HandshakeUnanswered { .. }, Some(peer)) =
            (&event, peer)
            && let Some(g) = t.gateways.get_mut(&peer)
        {
            g.upkeep.resolve_soon = true;
        }
        let gateway = peer.map_or_else(String::new, |p| t.gateway_id(&p).to_owned());
        let (endpoint, agent) = match (&event, peer) {
            (Event::HandshakeUnanswered { .. }, Some(peer)) => {
                let endpoint = t
                    .peers
                    .peer_stats(&peer, Instant::now())
                    .and_then(|s| s.endpoint)
                    .map(|a| a.to_string())
                    .or_else(|| {
                        t.gateways
                            .get(&peer)
                            .and_then(|g| g.spec.endpoint.as_ref())
                            .map(ToString::to_string)
                    })
                    .unwrap_or_else(|| "(no endpoint)".to_owned());
                (endpoint, Some((t.peers.public_key(), virtual_ips.to_vec())))
            }
            _ => (String::new(), None),
        };
        // Bounded: a burst beyond this is not worth a line each.
        if out.len() < 256 {
            out.push(Labelled {
                event,
                gateway,
                endpoint,
                agent,
            });
        }
    }
}

/// Logs one tunnel state change, by gateway id.
fn log_event(labelled: Labelled) {
    let Labelled {
        event,
        gateway,
        endpoint,
        agent,
    } = labelled;
    let gateway = gateway.as_str();
    match event {
        Event::HandshakeCompleted { rekey: false, .. } => {
            tracing::info!(gateway, "handshake completed: tunnel up");
        }
        Event::HandshakeCompleted { rekey: true, .. } => {
            tracing::debug!(gateway, "session re-keyed");
        }
        Event::HandshakeUnanswered { tries, elapsed, .. } => {
            let Some((key, vips)) = agent else {
                return;
            };
            let key = key.to_base64();
            // As the gateway's `AllowedIPs` line lists them.
            let allowed_ips = vips
                .iter()
                .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                gateway,
                endpoint = %endpoint,
                tries,
                "gateway {gateway} ({endpoint}): no handshake response after {tries} tries in {} s. \
                 Check that the gateway has peer {key} with AllowedIPs {allowed_ips}, and that \
                 UDP to {endpoint} is allowed",
                elapsed.as_secs()
            );
        }
        Event::HandshakeRecovered { elapsed, .. } => {
            tracing::info!(
                gateway,
                "gateway {gateway}: handshake completed after {} s",
                elapsed.as_secs()
            );
        }
        Event::HandshakeFailing { retry_in, .. } => {
            // Said once already, at the first unanswered tries: only the backoff is new.
            tracing::debug!(
                gateway,
                retry_in_s = retry_in.as_secs(),
                "handshakes failing for 90 s: retrying with backoff"
            );
        }
        Event::SessionExpired { .. } => {
            tracing::info!(gateway, "session expired (no handshake for 180 s)");
        }
        Event::EndpointChanged { old, new, .. } => {
            tracing::info!(
                gateway,
                old = ?old,
                new = %new,
                "gateway endpoint changed (roaming)"
            );
        }
        other => tracing::debug!(event = ?other, "tunnel event"),
    }
}

/// Drains the engine's outputs and sends them now (after a configuration change).
pub(crate) async fn flush(inner: &Inner) {
    let Some(driver) = inner.sockets.current() else {
        // The socket is being re-created: the engine keeps its outputs for the next wake.
        inner.timer.notify.notify_one();
        return;
    };
    let mut out = Outputs::new(&driver);
    {
        let mut t = inner.lock();
        out.drain(&mut t, inner);
    }
    inner.timer.notify.notify_one();
    out.send(inner, &driver).await;
    out.to_stack.deliver(inner);
}

async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|closed| *closed).await;
}

pub(crate) async fn receive_task(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut batch = RecvBatch::new();
    let mut errors = 0u32;
    let mut out: Option<(std::sync::Weak<UdpDriver>, Outputs)> = None;
    loop {
        let Some(driver) = inner.sockets.current() else {
            // A re-creation on the fixed port failed: try again in a moment.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = closed(&mut shutdown) => return,
            }
            recreate(&inner).await;
            continue;
        };
        let outputs = match &mut out {
            Some((weak, o)) if std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&driver)) => o,
            slot => {
                &mut slot
                    .insert((Arc::downgrade(&driver), Outputs::new(&driver)))
                    .1
            }
        };
        let received = tokio::select! {
            r = driver.recv(&mut batch) => r,
            () = closed(&mut shutdown) => return,
        };
        if let Err(e) = received {
            inner.counters.udp_recv_errors.fetch_add(1, Relaxed);
            errors += 1;
            tracing::debug!(error = %e, errors, "udp receive failed");
            if errors >= RECREATE_AFTER_ERRORS {
                drop(driver);
                recreate(&inner).await;
                errors = 0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        errors = 0;
        #[cfg(feature = "test-hooks")]
        crate::hooks::panic_on_receive();
        let now = Instant::now();
        {
            let mut t = inner.lock();
            let mut n = 0u64;
            for (from, datagram) in batch.iter() {
                n += 1;
                // Dropped datagrams are counted by the engine; nothing to do here.
                let _ = t.peers.handle_datagram(from_socket(from), datagram, now);
                outputs.drain(&mut t, &inner);
            }
            inner.counters.rx_datagrams.fetch_add(n, Relaxed);
        }
        outputs.send(&inner, &driver).await;
        outputs.to_stack.deliver(&inner);
    }
}

/// Re-creates the socket after errors and re-handshakes every gateway from it.
async fn recreate(inner: &Inner) {
    match inner.sockets.recreate().await {
        Ok(()) => {
            inner.counters.udp_socket_recreated.fetch_add(1, Relaxed);
            tracing::info!(local = ?inner.sockets.local_addrs(), "udp socket re-created after errors");
            force_all(inner);
        }
        Err(e) => tracing::warn!(error = %e, "cannot re-create the udp socket; retrying"),
    }
}

fn force_all(inner: &Inner) {
    let now = Instant::now();
    let mut t = inner.lock();
    let keys: Vec<_> = t.gateways.keys().copied().collect();
    for key in keys {
        t.peers.force_handshake(&key, now);
    }
    inner.timer.notify.notify_one();
}

pub(crate) async fn send_task(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut packets: Vec<Bytes> = Vec::with_capacity(OUT_BATCH);
    let mut out_slot: Option<(std::sync::Weak<UdpDriver>, Outputs)> = None;
    loop {
        // When told to stop, send what the stack still has queued (a last ACK or FIN) first.
        let stopping = tokio::select! {
            _ = inner.netstack.recv_outbound(&mut packets, OUT_BATCH) => false,
            () = closed(&mut shutdown) => {
                inner.netstack.try_recv_outbound(&mut packets, OUT_BATCH);
                true
            }
        };
        // Taken per wake, never kept across the wait above: a replaced socket closes at once.
        let Some(driver) = inner.sockets.current() else {
            // The socket is being re-created: these packets are lost (TCP resends them).
            inner.counters.udp_send_errors.fetch_add(1, Relaxed);
            packets.clear();
            if stopping {
                return;
            }
            continue;
        };
        let out = match &mut out_slot {
            Some((weak, o)) if std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&driver)) => o,
            slot => {
                &mut slot
                    .insert((Arc::downgrade(&driver), Outputs::new(&driver)))
                    .1
            }
        };
        loop {
            let now = Instant::now();
            inner
                .counters
                .tx_packets
                .fetch_add(packets.len() as u64, Relaxed);
            {
                let mut t = inner.lock();
                for packet in packets.drain(..) {
                    // Unroutable packets are counted by the engine.
                    let _ = t.peers.handle_ip_packet(&packet, now);
                }
                out.drain(&mut t, &inner);
            }
            out.send(&inner, &driver).await;
            out.to_stack.deliver(&inner);
            // Keep going while the stack has more, without waking up again.
            if inner.netstack.try_recv_outbound(&mut packets, OUT_BATCH) == 0 {
                break;
            }
        }
        if stopping {
            return;
        }
    }
}

pub(crate) async fn timer_task(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let deadline = inner.lock().peers.poll_timeout();
        inner.timer.arm(deadline);
        let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = tokio::time::sleep_until(sleep_until.into()) => {}
            () = inner.timer.notify.notified() => continue,
            () = closed(&mut shutdown) => return,
        }
        let Some(driver) = inner.sockets.current() else {
            // The socket is being re-created: the timers run once it is back.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                () = closed(&mut shutdown) => return,
            }
            continue;
        };
        let mut out = Outputs::new(&driver);
        {
            let mut t = inner.lock();
            t.peers.handle_timeout(Instant::now());
            out.drain(&mut t, &inner);
        }
        out.send(&inner, &driver).await;
        out.to_stack.deliver(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_destinations_are_mapped_on_a_v6_socket_and_back() {
        let v4: SocketAddr = "192.0.2.1:51820".parse().expect("literal");
        let mapped = to_socket(v4, true);
        assert_eq!(mapped.to_string(), "[::ffff:192.0.2.1]:51820");
        assert_eq!(from_socket(mapped), v4);
        assert_eq!(to_socket(v4, false), v4);
        let v6: SocketAddr = "[2001:db8::1]:51820".parse().expect("literal");
        assert_eq!(to_socket(v6, true), v6);
        assert_eq!(from_socket(v6), v6);
    }

    #[test]
    fn timer_wakes_only_for_an_earlier_deadline() {
        let wake = TimerWake::default();
        let now = Instant::now();
        wake.arm(Some(now + Duration::from_secs(10)));
        wake.maybe_wake(Some(now + Duration::from_secs(20)));
        wake.maybe_wake(None);
        assert!(wake.notify.notified().now_or_never_pending());
        wake.maybe_wake(Some(now + Duration::from_secs(1)));
        assert!(!wake.notify.notified().now_or_never_pending());
    }

    /// With a fixed `listen_port`, re-creating the socket must never put a socket on another
    /// port in its place, not even for a moment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recreating_a_fixed_port_socket_never_places_another_port() {
        let port = {
            let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let sockets = Arc::new(Sockets::bind(port).expect("bind the fixed port"));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let watcher = std::thread::spawn({
            let (sockets, done) = (Arc::clone(&sockets), Arc::clone(&done));
            move || {
                let mut seen = std::collections::BTreeSet::new();
                while !done.load(Relaxed) {
                    for addr in sockets.local_addrs() {
                        seen.insert(addr.port());
                    }
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_micros(200));
                }
                seen
            }
        });
        started_rx.recv().expect("the watcher runs");
        sockets.recreate().await.expect("re-created");
        done.store(true, Relaxed);
        let seen = watcher.join().expect("watcher");
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [port],
            "ports seen during re-creation"
        );
        assert_eq!(
            sockets
                .local_addrs()
                .iter()
                .map(|a| a.port())
                .collect::<Vec<_>>(),
            [port]
        );
    }

    trait NowOrNever {
        /// `true` when the future is still pending after one poll.
        fn now_or_never_pending(self) -> bool;
    }

    impl<F: std::future::Future> NowOrNever for F {
        fn now_or_never_pending(self) -> bool {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut fut = std::pin::pin!(self);
            fut.as_mut().poll(&mut cx).is_pending()
        }
    }
}
