//! Case 6's two sides: echo servers for the gateway's namespace (std, on threads), and a
//! program built on the agent library (`Manager`) that dials them through the tunnel.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use agent::config::{Endpoint, Host};
use agent::manager::{GatewaySpec, Manager, ManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_core::{PrivateKey, PublicKey};

use super::pattern::{Pattern, fill_block, sha256_of};

pub(crate) const TCP_LEN: u64 = 4 << 20;
pub(crate) const UDP_COUNT: usize = 32;

/// Starts a Manager with the gateway, dials TCP and UDP echo servers on 10.1.0.1 and checks
/// what comes back; a one-line report.
pub(crate) async fn through_tunnel(
    key: &str,
    gateway_key: &str,
    endpoint: SocketAddr,
) -> Result<String, String> {
    let key = PrivateKey::from_base64(key).map_err(|e| e.to_string())?;
    let gateway_key = PublicKey::from_base64(gateway_key).map_err(|e| e.to_string())?;
    let mut config = ManagerConfig::new(key, IpAddr::from([10, 1, 0, 100]));
    config.gateways = vec![GatewaySpec::new(
        "gw1",
        gateway_key,
        Some(Endpoint {
            host: Host::Ip(endpoint.ip()),
            port: endpoint.port(),
        }),
        IpAddr::from([10, 1, 0, 1]),
    )];
    let manager = Manager::start(config).await.map_err(|e| e.to_string())?;
    let outcome = tokio::time::timeout(Duration::from_secs(60), exchange(&manager)).await;
    manager.close().await;
    outcome.map_err(|_| "the exchange took over 60 s".to_owned())?
}

async fn exchange(manager: &Manager) -> Result<String, String> {
    let start = Instant::now();
    let stream = tokio::time::timeout(
        Duration::from_secs(20),
        manager.dial_tcp("10.1.0.1:7000".parse().unwrap()),
    )
    .await
    .map_err(|_| "tcp connect timed out".to_owned())?
    .map_err(|e| format!("tcp connect: {e}"))?;
    let connected = start.elapsed();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = async move {
        let mut pattern = Pattern::new(61, TCP_LEN);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut pattern, &mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            wr.write_all(&buf[..n])
                .await
                .map_err(|e| format!("tcp write: {e}"))?;
        }
        wr.shutdown()
            .await
            .map_err(|e| format!("tcp shutdown: {e}"))
    };
    let reader = async move {
        let mut got = Vec::new();
        rd.read_to_end(&mut got)
            .await
            .map_err(|e| format!("tcp read: {e}"))?;
        Ok::<_, String>(got)
    };
    let (written, got) = tokio::join!(writer, reader);
    written?;
    let got = got?;
    let echoed = start.elapsed();
    let (sent_sha, _) = sha256_of(Pattern::new(61, TCP_LEN)).map_err(|e| e.to_string())?;
    let (got_sha, got_len) = sha256_of(&got[..]).map_err(|e| e.to_string())?;
    if (got_sha.as_str(), got_len) != (sent_sha.as_str(), TCP_LEN) {
        return Err(format!("tcp echo differs: {got_len} bytes, sha {got_sha}"));
    }

    let udp = manager.dial_udp().map_err(|e| format!("udp bind: {e}"))?;
    let target: SocketAddr = "10.1.0.1:7001".parse().unwrap();
    let mut retries = 0;
    let mut buf = vec![0u8; 2048];
    for i in 0..UDP_COUNT {
        let mut payload = vec![0u8; 1200];
        fill_block(62, i as u64, &mut payload);
        let mut ok = false;
        for _ in 0..5 {
            udp.send_to(&payload, target)
                .await
                .map_err(|e| format!("udp send: {e}"))?;
            let wait = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(wait);
            // A late echo of an earlier datagram (resent) is skipped, not an error.
            while !ok {
                tokio::select! {
                    () = &mut wait => break,
                    got = udp.recv_from(&mut buf) => {
                        let (n, from) = got.map_err(|e| format!("udp recv: {e}"))?;
                        ok = from == target && buf[..n] == payload[..];
                    }
                }
            }
            if ok {
                break;
            }
            retries += 1;
        }
        if !ok {
            return Err(format!("udp datagram {i} never came back"));
        }
    }
    Ok(format!(
        "tcp connected in {connected:.2?}, 4 MiB echoed intact in {echoed:.2?}; {UDP_COUNT} udp datagrams echoed intact ({retries} resent)"
    ))
}

/// Accepts one connection (within `timeout`) and echoes it until EOF; the bytes echoed.
pub(crate) fn tcp_echo_once(
    listener: &std::net::TcpListener,
    timeout: Duration,
) -> std::io::Result<u64> {
    use std::io::{Read, Write};
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(total)
}

/// Echoes datagrams until `stop` or `timeout`; how many.
pub(crate) fn udp_echo(
    socket: &std::net::UdpSocket,
    stop: &std::sync::atomic::AtomicBool,
    timeout: Duration,
) -> usize {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_535];
    let mut count = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && socket.send_to(&buf[..n], from).is_ok()
        {
            count += 1;
        }
    }
    count
}
