//! Shared test fixtures: an in-process gateway (a `Manager`: wg-core + netstack) on loopback,
//! a small upstream app, requests through the tunnel; `process` runs the real `wg-agent`
//! binary against them; `files` holds scratch folders and config text.

#![allow(
    dead_code,
    reason = "each test binary uses a part of the shared fixtures"
)]

pub(crate) mod files;
pub(crate) mod process;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent::config::{Endpoint, Host, LivenessProbe};
use agent::manager::{GatewaySpec, Manager, ManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_core::PrivateKey;

/// The agent's virtual IP.
pub(crate) const AGENT_VIP: [u8; 4] = [10, 1, 0, 100];
/// The (first) gateway's virtual IP.
pub(crate) const GW_VIP: [u8; 4] = [10, 1, 0, 1];

/// A gateway's config: it knows the agent's key (allowed IP: the agent's virtual IP) but not
/// its endpoint, and sends no keepalive and no probe of its own.
pub(crate) fn gateway_config(key: &PrivateKey, vip: [u8; 4], agent: &PrivateKey) -> ManagerConfig {
    let mut config = ManagerConfig::new(key.clone(), IpAddr::from(vip));
    let mut peer = GatewaySpec::new("agent", agent.public_key(), None, IpAddr::from(AGENT_VIP));
    peer.persistent_keepalive = None;
    peer.liveness_probe = LivenessProbe::Off;
    config.gateways = vec![peer];
    config
}

/// A gateway started from [`gateway_config`].
pub(crate) async fn start_gateway(key: &PrivateKey, vip: [u8; 4], agent: &PrivateKey) -> Manager {
    Manager::start(gateway_config(key, vip, agent))
        .await
        .expect("gateway starts")
}

/// The manager's UDP port on 127.0.0.1.
pub(crate) fn udp_port(m: &Manager) -> u16 {
    m.local_addrs()[0].port()
}

/// How an agent reaches `gateway` (whose key is `key`) on loopback.
pub(crate) fn gateway_spec(
    id: &str,
    key: &PrivateKey,
    gateway: &Manager,
    vip: [u8; 4],
) -> GatewaySpec {
    let endpoint = Endpoint {
        host: Host::Ip(IpAddr::from([127, 0, 0, 1])),
        port: udp_port(gateway),
    };
    GatewaySpec::new(id, key.public_key(), Some(endpoint), IpAddr::from(vip))
}

/// The agent's config with one gateway, `gw1` at [`GW_VIP`], reached on loopback.
pub(crate) fn agent_config(
    agent_key: &PrivateKey,
    gateway_key: &PrivateKey,
    gateway: &Manager,
) -> ManagerConfig {
    let mut config = ManagerConfig::new(agent_key.clone(), IpAddr::from(AGENT_VIP));
    config.gateways = vec![gateway_spec("gw1", gateway_key, gateway, GW_VIP)];
    config
}

/// Echo server on the manager's virtual `port`.
pub(crate) fn serve_echo(manager: &Manager, port: u16) {
    let listener = manager.listen(port).expect("listen on the virtual IP");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
}

/// `/slow` requests the app has started answering.
pub(crate) static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);

/// A tiny upstream app on 127.0.0.1: answers every request with `app:<path>` and closes;
/// `/slow` is answered after 1.5 s.
pub(crate) async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                if path == "/slow" {
                    SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let body = format!("app:{path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// GET `path` on the agent's virtual `port` through the tunnel, from the gateway: the whole
/// response (5 s to connect, 10 s to read it).
pub(crate) async fn http_get(gw: &Manager, port: u16, path: &str) -> std::io::Result<String> {
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), port);
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut s = tokio::time::timeout(Duration::from_secs(5), gw.dial_tcp(target))
        .await
        .map_err(|_| timed_out())??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| timed_out())??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
