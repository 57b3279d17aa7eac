//! Routes people ask for (issue 14), through the tunnel from an in-process gateway: UDP
//! routes (flows, replies to the right client, oversize replies dropped and counted),
//! unix-socket upstreams for HTTP and TCP routes, and per-route idle timeouts.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::Agent;
use agent::admin::StatusSource as _;
use agent::config::Config;
use agent::manager::Manager;
use agent::metrics::MetricsWriter;
use common::files::{TempDir, agent_section, gateway_section};
use common::{AGENT_VIP, GW_VIP, http_get, start_gateway, udp_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_core::PrivateKey;

/// An agent started from `routes` (and `rest`) with one gateway, and that gateway.
async fn start(routes: &str, rest: &str) -> (Agent, Manager, TempDir) {
    let (agent, gw, dir, _) = start_with_file(routes, rest).await;
    (agent, gw, dir)
}

/// [`start`], and a function that rewrites the config file with other routes.
async fn start_with_file(
    routes: &str,
    rest: &str,
) -> (Agent, Manager, TempDir, impl Fn(&str) + use<>) {
    let agent_key = PrivateKey::generate();
    let gateway_key = PrivateKey::generate();
    let gw = start_gateway(&gateway_key, GW_VIP, &agent_key).await;
    let dir = TempDir::new();
    let mut text = agent_section(&format!(
        "private_key = \"{}\"",
        agent_key.to_base64_secret().as_str()
    ));
    text += &gateway_section(
        "gw1",
        &gateway_key.public_key().to_base64(),
        &format!("127.0.0.1:{}", udp_port(&gw)),
        "10.1.0.1",
    );
    let head = text;
    let tail = format!("\n[admin]\nlisten = \"off\"\n{rest}");
    let path = dir.write("agent.toml", &format!("{head}{routes}{tail}"), 0o600);
    let agent = Agent::start(Config::load(&path).expect("valid config"))
        .await
        .expect("agent starts");
    let rewrite = move |routes: &str| {
        std::fs::write(&path, format!("{head}{routes}{tail}")).expect("rewrite the config");
    };
    (agent, gw, dir, rewrite)
}

fn metrics(agent: &Agent) -> String {
    let mut text = String::new();
    agent.write_metrics(&mut MetricsWriter::new(&mut text));
    text
}

/// The value of the sample `line_start` (metric name and labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from(AGENT_VIP), port)
}

/// A UDP app on loopback: `size:N` is answered with N bytes, anything else with `echo:` and
/// the datagram.
async fn start_udp_app() -> SocketAddr {
    start_udp_app_saying("echo:").await
}

/// [`start_udp_app`], answering with `prefix` instead of `echo:`.
async fn start_udp_app_saying(prefix: &'static str) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let request = &buf[..n];
            let reply = match std::str::from_utf8(request)
                .ok()
                .and_then(|s| s.strip_prefix("size:"))
                .and_then(|s| s.parse::<usize>().ok())
            {
                Some(size) => vec![b'x'; size],
                None => [prefix.as_bytes(), request].concat(),
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// One request through the tunnel and its reply (retried: the first datagrams may wait for
/// the handshake, and a loaded machine may lose one).
async fn exchange(socket: &netstack::UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..20 {
        socket.send_to(request, to).await.expect("send");
        if let Ok(got) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
        {
            let (n, from) = got.expect("recv");
            assert_eq!(from, to, "the reply comes from the route's address");
            return buf[..n].to_vec();
        }
    }
    panic!("no reply to {:?}", String::from_utf8_lossy(request));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_route_forwards_each_flow_and_drops_oversize_replies() {
    let app = start_udp_app().await;
    let routes = format!(
        "\n[[routes]]\nport = 53\nupstream = \"{app}\"\nprotocol = \"udp\"\n\
         \n[[routes]]\nport = 54\nupstream = \"{app}\"\nprotocol = \"udp\"\nmax_flows = 1\n"
    );
    let (agent, gw, _dir) = start(&routes, "").await;
    let clients: Vec<netstack::UdpSocket> = (0..3).map(|_| gw.dial_udp().expect("udp")).collect();
    for round in 0..2 {
        for (i, c) in clients.iter().enumerate() {
            let request = format!("client {i} round {round}");
            let reply = exchange(c, vip(53), request.as_bytes()).await;
            assert_eq!(reply, format!("echo:{request}").as_bytes());
        }
    }
    let status = agent.snapshot();
    let dns = status
        .routes
        .iter()
        .find(|r| r.port == 53)
        .expect("route 53");
    assert_eq!(dns.protocol.to_string(), "udp");
    assert_eq!(dns.open_flows, Some(3));
    assert_eq!(dns.idle_timeout.as_deref(), Some("1m"));

    // The largest reply the tunnel carries (MTU 1420 - 28) passes, one byte more is dropped.
    let c = &clients[0];
    assert_eq!(exchange(c, vip(53), b"size:1392").await.len(), 1392);
    c.send_to(b"size:1393", vip(53)).await.expect("send");
    let start = Instant::now();
    loop {
        let text = metrics(&agent);
        if sample(
            &text,
            "wg_agent_udp_dropped_total{port=\"53\",reason=\"oversize\"}",
        ) == Some(1)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Route 54 takes one flow; a second client's datagram is dropped and counted.
    assert_eq!(
        exchange(&clients[1], vip(54), b"first").await,
        b"echo:first"
    );
    clients[2]
        .send_to(b"one flow too many", vip(54))
        .await
        .expect("send");
    let start = Instant::now();
    loop {
        let text = metrics(&agent);
        if sample(
            &text,
            "wg_agent_udp_dropped_total{port=\"54\",reason=\"flow_limit\"}",
        ) == Some(1)
        {
            assert_eq!(
                sample(&text, "wg_agent_udp_open_flows{port=\"54\"}"),
                Some(1)
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_adds_and_removes_udp_routes() {
    let (first, second) = (
        start_udp_app_saying("first:").await,
        start_udp_app_saying("second:").await,
    );
    let route = |port: u16, app: SocketAddr, extra: &str| {
        format!("\n[[routes]]\nport = {port}\nupstream = \"{app}\"\nprotocol = \"udp\"\n{extra}")
    };
    let (agent, gw, _dir, rewrite) = start_with_file(&route(53, first, ""), "").await;
    let c = gw.dial_udp().expect("udp");
    assert_eq!(exchange(&c, vip(53), b"q").await, b"first:q");

    // A changed route (other app, other idle timeout) takes over the same port; a new one
    // starts beside it.
    rewrite(&(route(53, second, "idle_timeout = \"30s\"\n") + &route(54, first, "")));
    agent.reload().await.expect("reload");
    assert_eq!(exchange(&c, vip(53), b"q").await, b"second:q");
    assert_eq!(exchange(&c, vip(54), b"q").await, b"first:q");
    let routes = agent.snapshot().routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].idle_timeout.as_deref(), Some("30s"));

    // Removed routes free their ports: a datagram there finds no socket.
    rewrite("\n[[routes]]\nport = 80\nupstream = \"127.0.0.1:9\"\n");
    agent.reload().await.expect("reload");
    let routes = agent.snapshot().routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].protocol.to_string(), "http");
    let dropped_before = gw_no_socket_drops(&agent);
    c.send_to(b"anyone?", vip(53)).await.expect("send");
    let start = Instant::now();
    while gw_no_socket_drops(&agent) == dropped_before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a datagram to a removed route's port is dropped as for no socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
    gw.close().await;
}

/// The agent's stack's count of datagrams that found no socket.
fn gw_no_socket_drops(agent: &Agent) -> u64 {
    agent
        .manager()
        .netstack()
        .stats()
        .dropped
        .get(netstack::DropReason::NoSocket)
}

/// A folder of its own for unix sockets (a short path: `sun_path` holds 108 bytes), and its
/// path.
fn socket_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let marker = dir.write("folder", "", 0o600);
    let path = marker.parent().expect("a file has a folder").to_owned();
    (dir, path)
}

/// An HTTP app on a unix socket: answers `unix:<path> host:<host header>` and closes.
fn start_unix_http_app(path: &Path) {
    let listener = tokio::net::UnixListener::bind(path).expect("bind unix app");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let host = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("host: ")
                            .or_else(|| l.strip_prefix("Host: "))
                    })
                    .unwrap_or("-")
                    .to_owned();
                let body = format!("unix:{path} host:{host}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

/// A byte echo on a unix socket.
fn start_unix_echo(path: &Path) {
    let listener = tokio::net::UnixListener::bind(path).expect("bind unix echo");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_routes_to_unix_socket_upstreams() {
    let (_sockets, dir) = socket_dir();
    let app: PathBuf = dir.join("app.sock");
    let echo: PathBuf = dir.join("echo.sock");
    start_unix_http_app(&app);
    start_unix_echo(&echo);
    let routes = format!(
        "\n[[routes]]\nport = 80\nupstream = \"unix:{}\"\n\
         \n[[routes]]\nport = 22\nupstream = \"unix:{}\"\nprotocol = \"tcp\"\n",
        app.display(),
        echo.display()
    );
    let (agent, gw, _dir) = start(&routes, "").await;
    let mut resp = Err(std::io::ErrorKind::TimedOut.into());
    for _ in 0..50 {
        resp = http_get(&gw, 80, "/over-unix").await;
        if resp.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = resp.expect("request through the tunnel");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("unix:/over-unix host:app"), "{resp}");
    let upstream = agent.snapshot().routes[0].upstream.clone();
    assert_eq!(upstream, format!("unix:{}", app.display()));

    let mut s = gw.dial_tcp(vip(22)).await.expect("dial route 22");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    s.write_all(&payload).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    assert!(back == payload, "{} bytes came back changed", back.len());
    agent.stop().await;
    gw.close().await;
}

/// Reads until the peer closes (EOF or reset); the time it took, or `None` after `limit`.
async fn closed_within(s: &mut netstack::TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_idle_timeout_keeps_a_quiet_connection_the_default_closes() {
    let (_sockets, dir) = socket_dir();
    let echo = dir.join("echo.sock");
    start_unix_echo(&echo);
    let routes = format!(
        "\n[[routes]]\nport = 81\nupstream = \"unix:{e}\"\nprotocol = \"tcp\"\nidle_timeout = \"1h\"\n\
         \n[[routes]]\nport = 82\nupstream = \"unix:{e}\"\nprotocol = \"tcp\"\n",
        e = echo.display()
    );
    let (agent, gw, _dir) = start(&routes, "\n[proxy]\nidle_timeout = \"1s\"\n").await;
    let mut long = gw.dial_tcp(vip(81)).await.expect("dial 81");
    let mut short = gw.dial_tcp(vip(82)).await.expect("dial 82");
    for s in [&mut long, &mut short] {
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&buf, b"ping");
    }
    // The default route closes its quiet connection after [proxy] idle_timeout (1 s)...
    let took = closed_within(&mut short, Duration::from_secs(30))
        .await
        .expect("the default idle timeout closes route 82's connection");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // ...while route 81, as quiet for as long, still echoes (its timeout is an hour).
    long.write_all(b"still")
        .await
        .expect("write after the quiet time");
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(30), long.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("route 81's connection is open");
    assert_eq!(&buf, b"still");
    let routes = agent.snapshot().routes;
    assert_eq!(routes[0].idle_timeout.as_deref(), Some("1h"));
    assert_eq!(routes[1].idle_timeout.as_deref(), Some("1s"));
    drop(long);
    agent.stop().await;
    gw.close().await;
}
