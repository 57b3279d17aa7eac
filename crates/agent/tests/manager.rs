//! The Manager end to end, in process, on loopback: a gateway built from the same Manager
//! (wg-core + netstack) and an agent, joined by real UDP sockets on 127.0.0.1.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use agent::config::{Endpoint, Host};
use agent::manager::{GatewaySpec, Manager, ManagerConfig};
use agent::snapshot::GatewayState;
use common::{
    AGENT_VIP, GW_VIP, agent_config, gateway_config, gateway_spec, serve_echo, start_gateway,
    udp_port,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_core::{IpNet, PrivateKey};

async fn echo_roundtrip(from: &Manager, to: SocketAddr, payload: &[u8]) {
    let mut stream = tokio::time::timeout(Duration::from_secs(10), from.dial_tcp(to))
        .await
        .expect("connect in time")
        .expect("connect");
    let (mut rd, mut wr) = tokio::io::split(&mut stream);
    let payload_owned = payload.to_vec();
    let writer = async move {
        wr.write_all(&payload_owned).await.expect("write");
        wr.shutdown().await.expect("shutdown");
    };
    let reader = async move {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.expect("read");
        got
    };
    let ((), got) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("echo in time");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_through_the_tunnel_both_ways_and_stats_agree() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let agent = Manager::start(agent_config(&agent_key, &gw_key, &gw))
        .await
        .expect("agent starts");
    serve_echo(&agent, 80);

    // Gateway -> agent (the product's direction), 1 MiB.
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    echo_roundtrip(&gw, SocketAddr::new(IpAddr::from(AGENT_VIP), 80), &payload).await;

    // Agent -> gateway (the seed's Dial).
    serve_echo(&gw, 7);
    echo_roundtrip(
        &agent,
        SocketAddr::new(IpAddr::from(GW_VIP), 7),
        b"hello gateway",
    )
    .await;

    // ICMP echo through the tunnel, the liveness probe's path.
    let rtt = agent
        .ping(IpAddr::from(GW_VIP), Duration::from_secs(5))
        .await
        .expect("ping answered");
    assert!(rtt < Duration::from_secs(5));

    let stats = agent.stats();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!(s.id, "gw1");
    assert_eq!(s.state, GatewayState::Up);
    assert!(s.last_handshake.is_some());
    assert!(
        s.rx_bytes > 1 << 20,
        "rx counts the echoed MiB: {}",
        s.rx_bytes
    );
    // Both ends count wire bytes: what one sent, the other received.
    // Let the last ACKs land, then compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, g) = (&agent.stats()[0], &gw.stats()[0]);
    assert_eq!(s.tx_bytes, g.rx_bytes, "agent tx == gateway rx");
    assert_eq!(s.rx_bytes, g.tx_bytes, "agent rx == gateway tx");
    agent.close().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_gateways_keeps_an_unchanged_gateway_and_its_connection() {
    let agent_key = PrivateKey::generate();
    let k1 = PrivateKey::generate();
    let k2 = PrivateKey::generate();
    let k3 = PrivateKey::generate();
    let gw1 = start_gateway(&k1, GW_VIP, &agent_key).await;
    let gw2 = start_gateway(&k2, [10, 1, 0, 2], &agent_key).await;
    let gw3 = start_gateway(&k3, [10, 1, 0, 3], &agent_key).await;
    let mut config = ManagerConfig::new(agent_key.clone(), IpAddr::from(AGENT_VIP));
    config.gateways = vec![
        gateway_spec("gw1", &k1, &gw1, GW_VIP),
        gateway_spec("gw2", &k2, &gw2, [10, 1, 0, 2]),
    ];
    let agent = Manager::start(config).await.expect("agent starts");
    serve_echo(&agent, 80);
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), 80);

    // A long transfer through gw1 runs while the update happens (echoed 32 MiB, checked).
    let transfer = tokio::spawn({
        let gw1 = gw1.clone();
        async move {
            let payload: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
            echo_roundtrip(&gw1, target, &payload).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A connection through gw1 stays open across the update.
    let mut held = gw1.dial_tcp(target).await.expect("connect via gw1");
    held.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    held.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"before");
    let handshakes_before = agent
        .stats()
        .iter()
        .find(|s| s.id == "gw1")
        .map(|s| s.handshakes);

    // Remove gw2, add gw3, keep gw1.
    let update = agent
        .update_gateways(vec![
            gateway_spec("gw1", &k1, &gw1, GW_VIP),
            gateway_spec("gw3", &k3, &gw3, [10, 1, 0, 3]),
        ])
        .await
        .expect("update applies");
    assert_eq!(update.unchanged, vec!["gw1".to_owned()]);
    assert_eq!(update.added, vec!["gw3".to_owned()]);
    assert_eq!(update.removed, vec!["gw2".to_owned()]);

    transfer
        .await
        .expect("the transfer through the unchanged gateway finished intact");
    held.write_all(b"after!").await.expect("write after update");
    held.read_exact(&mut buf).await.expect("read after update");
    assert_eq!(&buf, b"after!");
    let handshakes_after = agent
        .stats()
        .iter()
        .find(|s| s.id == "gw1")
        .map(|s| s.handshakes);
    assert_eq!(
        handshakes_before, handshakes_after,
        "no new handshake for the unchanged gateway"
    );

    // The new gateway reaches the app; the removed one no longer does.
    echo_roundtrip(&gw3, target, b"via gw3").await;
    let via_gw2 = tokio::time::timeout(Duration::from_secs(3), gw2.dial_tcp(target)).await;
    assert!(
        !matches!(via_gw2, Ok(Ok(_))),
        "a removed gateway must not reach the agent"
    );
    for m in [&agent, &gw1, &gw2, &gw3] {
        m.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_endpoint_localhost_and_udp_dial() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let gw_port = udp_port(&gw);
    let mut config = ManagerConfig::new(agent_key.clone(), IpAddr::from(AGENT_VIP));
    let endpoint = Endpoint {
        host: Host::Name("localhost".into()),
        port: gw_port,
    };
    config.gateways = vec![GatewaySpec::new(
        "gw1",
        gw_key.public_key(),
        Some(endpoint),
        IpAddr::from(GW_VIP),
    )];
    let agent = Manager::start(config).await.expect("agent starts");

    // UDP echo on the gateway's virtual IP.
    let server = gw
        .netstack()
        .bind_udp(SocketAddr::new(IpAddr::from(GW_VIP), 5353))
        .expect("bind");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(&buf[..n], from).await;
        }
    });
    let socket = agent.dial_udp().expect("udp socket");
    let mut buf = [0u8; 64];
    let mut answered = None;
    for _ in 0..20 {
        socket
            .send_to(
                b"ping over udp",
                SocketAddr::new(IpAddr::from(GW_VIP), 5353),
            )
            .await
            .expect("send");
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
        {
            answered = Some(n);
            break;
        }
    }
    let n = answered.expect("udp echo through the tunnel");
    assert_eq!(&buf[..n], b"ping over udp");
    assert!(agent.stats()[0].endpoint.ends_with(&format!(":{gw_port}")));
    agent.close().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_gateway_is_found_again_by_the_liveness_probe() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let gw_port = udp_port(&gw);
    let mut config = agent_config(&agent_key, &gw_key, &gw);
    // Short probe timings keep the test quick; the logic is the one of the 25 s / 10 s defaults.
    config.probe_after = Duration::from_secs(2);
    config.probe_timeout = Duration::from_secs(1);
    let agent = Manager::start(config).await.expect("agent starts");
    serve_echo(&agent, 80);
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), 80);
    echo_roundtrip(&gw, target, b"before restart").await;

    // The gateway restarts: same key, same port, no session, no idea where the agent is.
    gw.close().await;
    drop(gw);
    let mut restarted = None;
    for _ in 0..50 {
        let mut config = gateway_config(&gw_key, GW_VIP, &agent_key);
        config.listen_port = gw_port;
        match Manager::start(config).await {
            Ok(m) => {
                restarted = Some(m);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let gw = restarted.expect("gateway restarts on its port");
    assert!(gw.stats()[0].last_handshake.is_none());

    // No traffic flows; the agent's probe goes unanswered and it re-handshakes on its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while gw.stats()[0].last_handshake.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent did not re-handshake within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echo_roundtrip(&gw, target, b"after restart").await;
    let stats = &agent.stats()[0];
    assert!(
        stats.probes_failed >= 1,
        "the probe noticed the restart: {stats:?}"
    );
    // The probe that confirms the new handshake is answered: a restart is no filtered ICMP.
    let answered = stats.probes_answered;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while agent.stats()[0].probes_answered == answered {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no probe answered after the restart: {:?}",
            agent.stats()[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!agent.stats()[0].icmp_filtered, "{:?}", agent.stats()[0]);
    agent.close().await;
    gw.close().await;
}

/// A gateway that completes handshakes but never answers the probe's echo (here its stack
/// does not own the address probed, as a gateway whose firewall drops ICMP would not answer):
/// marked `icmp_filtered`, and still up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_filters_icmp_is_told_apart() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let mut config = agent_config(&agent_key, &gw_key, &gw);
    let silent = IpAddr::from([10, 1, 0, 9]);
    config.gateways[0].virtual_ip = Some(silent);
    config.gateways[0].allowed_ips = vec![wg_core::IpNet::host(silent)];
    config.probe_after = Duration::from_secs(2);
    config.probe_timeout = Duration::from_secs(1);
    let agent = Manager::start(config).await.expect("agent starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !agent.stats()[0].icmp_filtered {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not marked icmp_filtered: {:?}",
            agent.stats()[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = &agent.stats()[0];
    assert_eq!(stats.probes_answered, 0, "{stats:?}");
    assert!(
        stats.probes_failed >= 2,
        "a probe and its confirmation: {stats:?}"
    );
    assert!(
        stats.handshakes >= 2,
        "the forced handshake succeeded: {stats:?}"
    );
    assert_eq!(stats.state, GatewayState::Up, "{stats:?}");
    agent.close().await;
    gw.close().await;
}

/// `close` drains: it stops accepting, lets a connection already open finish its transfer,
/// then stops the packet tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_accepting_and_lets_open_connections_finish() {
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 16;
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let agent = Manager::start(agent_config(&agent_key, &gw_key, &gw))
        .await
        .expect("agent starts");
    // The app: each connection gets 1 MiB, 64 KiB every 20 ms, then the stream is closed.
    let listener = agent.listen(80).expect("listen");
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; CHUNK];
                for _ in 0..CHUNKS {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), 80);
    let mut download = tokio::time::timeout(Duration::from_secs(10), gw.dial_tcp(target))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut first = [0u8; 1];
    download.read_exact(&mut first).await.expect("first byte");

    // Close while the download is under way.
    let closing = tokio::spawn({
        let agent = agent.clone();
        async move { agent.close().await }
    });
    // It stops accepting: the serving loop ends, a new connection is refused, so are new
    // listeners.
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the accept loop ends once close begins")
        .expect("server task");
    let refused = tokio::time::timeout(Duration::from_secs(30), gw.dial_tcp(target))
        .await
        .expect("the new connection is answered");
    assert!(
        refused.is_err(),
        "a new connection is refused while closing"
    );
    assert!(agent.listen(81).is_err(), "no new listener while closing");

    // The open download finishes.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), download.read_to_end(&mut rest))
        .await
        .expect("the open download finishes while the manager closes")
        .expect("read to the end");
    assert_eq!(rest.len() + 1, CHUNK * CHUNKS, "every byte arrived");
    drop(download);
    tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .expect("close returns within its bound")
        .expect("close task");
    gw.close().await;
}

/// `close` is bounded: a connection that never ends delays it by the drain bound only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_gives_up_on_a_connection_that_never_ends() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let agent = Manager::start(agent_config(&agent_key, &gw_key, &gw))
        .await
        .expect("agent starts");
    serve_echo(&agent, 80);
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), 80);
    let mut idle = tokio::time::timeout(Duration::from_secs(10), gw.dial_tcp(target))
        .await
        .expect("connect in time")
        .expect("connect");
    idle.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    idle.read_exact(&mut buf).await.expect("echo");
    // The connection stays open and idle; close waits 1 s for it, then stops anyway.
    tokio::time::timeout(
        Duration::from_secs(30),
        agent.close_within(Duration::from_secs(1)),
    )
    .await
    .expect("close returns once its bound has passed");
    assert!(agent.dial_tcp(target).await.is_err(), "closed: no dial");
    // A second close returns at once: the manager is closed.
    tokio::time::timeout(Duration::from_secs(30), agent.close())
        .await
        .expect("a second close returns");
    drop(idle);
    gw.close_within(Duration::ZERO).await;
}

/// Answers each connection on the agent's `port` with the address the client reached.
fn serve_local_addr(manager: &Manager, port: u16) {
    let listener = manager.listen(port).expect("listen on the virtual IPs");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reached = stream.local_addr().to_string();
            let _ = stream.write_all(reached.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
}

async fn reached(from: &Manager, to: SocketAddr) -> String {
    let mut stream = tokio::time::timeout(Duration::from_secs(10), from.dial_tcp(to))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut got))
        .await
        .expect("answer in time")
        .expect("read");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_agent_listens_on_both_addresses() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let agent4 = IpAddr::from(AGENT_VIP);
    let agent6: IpAddr = "fd00::100".parse().expect("address");
    let gw6: IpAddr = "fd00::1".parse().expect("address");
    let mut gw_config = gateway_config(&gw_key, GW_VIP, &agent_key);
    gw_config.second_virtual_ip = Some(gw6);
    gw_config.gateways[0].allowed_ips.push(IpNet::host(agent6));
    let gw = Manager::start(gw_config).await.expect("gateway starts");
    let mut config = agent_config(&agent_key, &gw_key, &gw);
    config.second_virtual_ip = Some(agent6);
    config.gateways[0].allowed_ips.push(IpNet::host(gw6));
    let agent = Manager::start(config).await.expect("agent starts");
    assert_eq!(agent.virtual_ips(), [agent4, agent6]);
    assert_eq!(agent.virtual_ip(), agent4);
    serve_local_addr(&agent, 80);

    // One listener, both families; each connection knows which address it reached.
    assert_eq!(
        reached(&gw, SocketAddr::new(agent6, 80)).await,
        "[fd00::100]:80"
    );
    assert_eq!(
        reached(&gw, SocketAddr::new(agent4, 80)).await,
        "10.1.0.100:80"
    );
    // Outbound: each family leaves from the agent's address of that family.
    serve_local_addr(&gw, 7);
    assert_eq!(
        reached(&agent, SocketAddr::new(gw6, 7)).await,
        "[fd00::1]:7"
    );
    assert_eq!(
        reached(&agent, SocketAddr::new(IpAddr::from(GW_VIP), 7)).await,
        "10.1.0.1:7"
    );
    // ICMPv6 echo (the liveness probe of a gateway whose virtual IP is IPv6).
    agent
        .ping(gw6, Duration::from_secs(5))
        .await
        .expect("ICMPv6 echo answered");
    // UDP from one socket to both families.
    let udp = agent.dial_udp().expect("udp socket on every address");
    let gw_udp = gw
        .netstack()
        .bind_udp(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 5353))
        .expect("gateway udp");
    for to in [gw6, IpAddr::from(GW_VIP)] {
        udp.send_to(b"ping", SocketAddr::new(to, 5353))
            .await
            .expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), gw_udp.recv_from(&mut buf))
            .await
            .expect("datagram in time")
            .expect("recv");
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(
            from.ip(),
            if to.is_ipv6() { agent6 } else { agent4 },
            "source of the destination's family"
        );
    }
    agent.close().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_stack_listener_keeps_its_address() {
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    let agent = Manager::start(agent_config(&agent_key, &gw_key, &gw))
        .await
        .expect("agent starts");
    assert_eq!(agent.virtual_ips(), [IpAddr::from(AGENT_VIP)]);
    let listener = agent.listen(80).expect("listen");
    assert_eq!(
        listener.local_addr(),
        "10.1.0.100:80".parse().expect("address")
    );
    drop(listener);
    agent.close().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_virtual_ips_of_one_family_are_refused() {
    let mut config = ManagerConfig::new(PrivateKey::generate(), IpAddr::from(AGENT_VIP));
    config.second_virtual_ip = Some(IpAddr::from([10, 1, 0, 101]));
    let error = Manager::start(config)
        .await
        .expect_err("one address per family");
    assert!(
        error.to_string().contains("at most one per IP family"),
        "{error}"
    );
}

/// What `wg-agent ping` resolves: a gateway id to its virtual IP, an address to the gateway
/// whose allowed IPs hold it, the longest prefix winning as for packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_targets_resolve_like_packets_route() {
    let agent_key = PrivateKey::generate();
    let mut config = ManagerConfig::new(agent_key, IpAddr::from(AGENT_VIP));
    let endpoint = Endpoint {
        host: Host::Ip(IpAddr::from([127, 0, 0, 1])),
        port: 9,
    };
    let mut wide = GatewaySpec::new(
        "wide",
        PrivateKey::generate().public_key(),
        Some(endpoint.clone()),
        IpAddr::from([10, 1, 0, 1]),
    );
    wide.allowed_ips = vec!["10.1.0.0/24".parse().expect("a prefix")];
    let narrow = GatewaySpec::new(
        "narrow",
        PrivateKey::generate().public_key(),
        Some(endpoint),
        IpAddr::from([10, 1, 0, 2]),
    );
    config.gateways = vec![wide, narrow];
    let agent = Manager::start(config).await.expect("agent starts");
    assert_eq!(
        agent.gateway_virtual_ip("narrow"),
        Some(Some(IpAddr::from([10, 1, 0, 2])))
    );
    assert_eq!(agent.gateway_virtual_ip("nope"), None);
    let routing = |ip: [u8; 4]| agent.gateway_routing(IpAddr::from(ip));
    assert_eq!(routing([10, 1, 0, 2]).as_deref(), Some("narrow"));
    assert_eq!(routing([10, 1, 0, 5]).as_deref(), Some("wide"));
    assert_eq!(routing([10, 2, 0, 1]), None);
    agent.close().await;
}
