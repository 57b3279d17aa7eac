//! The UDP forwarder on loopback: flows, replies to the right client, idle expiry, the
//! bounds (flows, the descriptor budget) and oversize replies, each dropped and counted.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use local_proxy::{
    ConnectionTracker, DatagramSocket, ProxyConfig, UdpDropReason, UdpForwarder,
    UdpMetricsSnapshot, UdpRouteConfig,
};
use tokio::net::UdpSocket;

/// A loopback socket that, like the tunnel, carries replies of at most `max` bytes.
struct SmallMtu {
    socket: UdpSocket,
    max: usize,
}

impl DatagramSocket for SmallMtu {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        assert!(buf.len() <= self.max, "the forwarder sent past max_payload");
        self.socket.send_to(buf, target).await
    }

    fn max_payload(&self, _target: SocketAddr) -> usize {
        self.max
    }
}

/// The upstream app: answers `size:N` with N bytes of `x`, anything else with `echo:` and the
/// datagram, and counts the distinct source ports it saw (one per flow).
async fn start_upstream() -> (SocketAddr, tokio::sync::watch::Receiver<usize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            seen.insert(from);
            tx.send_replace(seen.len());
            let request = &buf[..n];
            let reply = match std::str::from_utf8(request)
                .ok()
                .and_then(|s| s.strip_prefix("size:"))
                .and_then(|s| s.parse::<usize>().ok())
            {
                Some(size) => vec![b'x'; size],
                None => [b"echo:".as_slice(), request].concat(),
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, rx)
}

struct Served {
    addr: SocketAddr,
    forwarder: UdpForwarder,
    tracker: ConnectionTracker,
}

async fn serve(route: UdpRouteConfig, config: ProxyConfig, max: usize) -> Served {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let tracker = ConnectionTracker::new(&config);
    let forwarder = UdpForwarder::new(route);
    tokio::spawn({
        let (f, t) = (forwarder.clone(), tracker.clone());
        async move { f.serve(SmallMtu { socket, max }, &t).await }
    });
    Served {
        addr,
        forwarder,
        tracker,
    }
}

async fn client(to: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(to).await.unwrap();
    socket
}

/// One request and its reply (retried: a datagram may be lost under load).
async fn exchange(socket: &UdpSocket, request: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..10 {
        socket.send(request).await.unwrap();
        if let Ok(n) = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf)).await {
            return buf[..n.unwrap()].to_vec();
        }
    }
    panic!("no reply to {:?}", String::from_utf8_lossy(request));
}

/// Polls the metrics until `ok` holds (at most 30 s: expiry is a deadline, not a race).
async fn wait_metrics(served: &Served, what: &str, ok: impl Fn(&UdpMetricsSnapshot) -> bool) {
    let start = Instant::now();
    loop {
        let m = served.forwarder.metrics().snapshot();
        if ok(&m) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_flow_gets_its_own_upstream_socket_and_its_own_replies() {
    let (upstream, sources) = start_upstream().await;
    let served = serve(UdpRouteConfig::new(upstream), ProxyConfig::default(), 1400).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(served.addr).await);
    }
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let request = format!("client {i} round {round}");
            let reply = exchange(c, request.as_bytes()).await;
            assert_eq!(reply, format!("echo:{request}").as_bytes());
        }
    }
    assert_eq!(*sources.borrow(), 4, "one upstream socket per flow");
    let m = served.forwarder.metrics().snapshot();
    assert_eq!((m.flows, m.open_flows), (4, 4));
    assert!(m.datagrams_in >= 12 && m.datagrams_out >= 12, "{m:?}");
    // Each flow holds one descriptor of the shared budget.
    assert_eq!(served.tracker.fd_budget().in_use(), 4);
}

#[tokio::test]
async fn idle_flows_expire_and_give_their_descriptors_back() {
    let (upstream, _) = start_upstream().await;
    let mut route = UdpRouteConfig::new(upstream);
    route.idle_timeout = Duration::from_millis(300);
    let served = serve(route, ProxyConfig::default(), 1400).await;
    let c = client(served.addr).await;
    // Two exchanges: not a one-shot flow, so the route's idle timeout applies.
    exchange(&c, b"one").await;
    exchange(&c, b"two").await;
    wait_metrics(&served, "the flow expires", |m| {
        m.open_flows == 0 && m.expired_flows == 1
    })
    .await;
    assert_eq!(served.tracker.fd_budget().in_use(), 0);
    // The client speaks again: a new flow.
    assert_eq!(exchange(&c, b"three").await, b"echo:three");
    assert_eq!(served.forwarder.metrics().snapshot().flows, 2);
}

#[tokio::test]
async fn a_one_shot_exchange_closes_before_the_idle_timeout() {
    let (upstream, _) = start_upstream().await;
    let mut route = UdpRouteConfig::new(upstream);
    route.idle_timeout = Duration::from_secs(3600);
    let served = serve(route, ProxyConfig::default(), 1400).await;
    let c = client(served.addr).await;
    // Sent once, never again (a retry would make it a two-datagram flow): loopback does not
    // lose it, however late the reply.
    c.send(b"query").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(60), c.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"echo:query");
    // ONE_SHOT_IDLE (2 s), far below the hour configured.
    wait_metrics(&served, "the one-shot flow closes", |m| m.open_flows == 0).await;
}

#[tokio::test]
async fn oversize_replies_are_dropped_and_counted() {
    let (upstream, _) = start_upstream().await;
    let served = serve(UdpRouteConfig::new(upstream), ProxyConfig::default(), 100).await;
    let c = client(served.addr).await;
    assert_eq!(exchange(&c, b"size:100").await.len(), 100);
    c.send(b"size:101").await.unwrap();
    c.send(b"size:5000").await.unwrap();
    wait_metrics(&served, "two oversize drops", |m| {
        m.dropped(UdpDropReason::Oversize) == 2
    })
    .await;
    // The flow still works.
    assert_eq!(exchange(&c, b"size:7").await, b"xxxxxxx");
}

#[tokio::test]
async fn flows_past_the_route_bound_and_the_global_bound_are_dropped_and_counted() {
    let (upstream, _) = start_upstream().await;
    let mut route = UdpRouteConfig::new(upstream);
    route.max_flows = 2;
    let mut config = ProxyConfig::default();
    config.max_udp_flows = 3;
    let served = serve(route.clone(), config, 1400).await;
    let (a, b, extra) = (
        client(served.addr).await,
        client(served.addr).await,
        client(served.addr).await,
    );
    exchange(&a, b"a").await;
    exchange(&b, b"b").await;
    extra.send(b"dropped").await.unwrap();
    wait_metrics(&served, "the third flow is refused", |m| {
        m.dropped(UdpDropReason::FlowLimit) == 1
    })
    .await;
    assert_eq!(served.forwarder.metrics().snapshot().open_flows, 2);
    // Existing flows keep working.
    assert_eq!(exchange(&a, b"again").await, b"echo:again");

    // The global bound: a second route sharing the tracker gets one flow, not two.
    let other = UdpForwarder::new(route);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other_addr = socket.local_addr().unwrap();
    tokio::spawn({
        let (f, t) = (other.clone(), served.tracker.clone());
        async move { f.serve(SmallMtu { socket, max: 1400 }, &t).await }
    });
    let (c, d) = (client(other_addr).await, client(other_addr).await);
    exchange(&c, b"c").await;
    d.send(b"over the global bound").await.unwrap();
    let start = Instant::now();
    while other.metrics().snapshot().dropped(UdpDropReason::FlowLimit) < 1 {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn flows_past_the_descriptor_budget_are_dropped_and_counted() {
    let (upstream, _) = start_upstream().await;
    let mut config = ProxyConfig::default();
    config.max_upstream_sockets = 1;
    let served = serve(UdpRouteConfig::new(upstream), config, 1400).await;
    let (a, b) = (client(served.addr).await, client(served.addr).await);
    exchange(&a, b"a").await;
    b.send(b"no descriptor").await.unwrap();
    wait_metrics(&served, "the budget refuses", |m| {
        m.dropped(UdpDropReason::SocketBudget) == 1
    })
    .await;
    assert_eq!(served.tracker.fd_budget().refused(), 1);
}

#[tokio::test]
async fn shutdown_closes_every_flow() {
    let (upstream, _) = start_upstream().await;
    let served = serve(UdpRouteConfig::new(upstream), ProxyConfig::default(), 1400).await;
    let c = client(served.addr).await;
    exchange(&c, b"x").await;
    exchange(&c, b"y").await;
    served.tracker.begin_shutdown();
    wait_metrics(&served, "flows closed by shutdown", |m| m.open_flows == 0).await;
    assert_eq!(served.tracker.fd_budget().in_use(), 0);
}

#[test]
fn prometheus_text_names_every_reason() {
    let m = UdpForwarder::new(UdpRouteConfig::new(
        "127.0.0.1:53".parse::<SocketAddr>().unwrap(),
    ))
    .metrics()
    .snapshot();
    let mut text = String::new();
    local_proxy::render_udp_prometheus(&mut text, "wg_agent_udp", &[("port=\"53\"", &m)]);
    for reason in UdpDropReason::ALL {
        let line = format!(
            "wg_agent_udp_dropped_total{{port=\"53\",reason=\"{}\"}} 0\n",
            reason.as_str()
        );
        assert!(text.contains(&line), "{text}");
    }
    assert!(text.contains("wg_agent_udp_open_flows{port=\"53\"} 0\n"));
    assert!(text.contains("wg_agent_udp_datagrams_total{port=\"53\",direction=\"in\"} 0\n"));
}
