//! wg-core against a real WireGuard peer: `wireguard-go` in a network namespace, reached from
//! the test process over a veth pair (or from an agent namespace). wg-core's sans-IO `Peers` is
//! driven with a std UDP socket.
//!
//! Checks: the handshake completes either way (wg-core or wireguard-go starts it), ICMP echo
//! requests built by hand travel through the tunnel and the gateway kernel's echo replies come
//! back through wg-core; traffic the gateway starts reaches wg-core; `wg show` and wg-core
//! agree on the handshake and on rx/tx wire bytes; IPv6 underlay; persistent keepalive;
//! preshared keys; routing between two gateways by allowed IPs.
//!
//! Root only: without it each test prints one `skipping` line; under `CI=true` it fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use testbed::packet::icmp_echo_request;
use testbed::{GatewayConfig, GatewayPeer, GatewaySite, TempDir, WireguardGo};
use wg_core::{DropReason, HandshakeState, PeerConfig, PrivateKey, PublicKey};

#[test]
fn interop_wg_core_handshakes_and_pings_wireguard_go() {
    testbed::require_gateway_prereqs!();
    let (gw, mut agent) = Gateway::start_with_agent();
    let key = agent.add_gateway(&gw.wg, gw.endpoint());

    // The first echo is queued inside the engine while the handshake runs, then sent.
    let started = Instant::now();
    let first = payload(0, 56);
    assert!(
        agent.ping(0, &first, Duration::from_secs(10)),
        "no echo reply through the tunnel; stats {:?}\nwireguard-go log:\n{}",
        agent.peers.stats(Instant::now()),
        gw.wg.log()
    );
    let handshake_time = started.elapsed();
    let stats = agent.peers.peer_stats(&key, Instant::now()).unwrap();
    assert_eq!(stats.state, HandshakeState::Established);
    assert!(stats.last_handshake_age.is_some());
    assert_eq!(stats.handshakes, 1);

    // Echoes of several sizes (up to 1,400 bytes inside an MTU of 1,420), one at a time.
    for (seq, len) in [
        (1u16, 0usize),
        (2, 1),
        (3, 100),
        (4, 512),
        (5, 1000),
        (6, 1372),
    ] {
        let data = payload(seq, len);
        assert!(
            agent.ping(seq, &data, Duration::from_secs(3)),
            "echo {seq} ({len} bytes)"
        );
    }
    // A burst of 50 in flight at once.
    for seq in 100..150u16 {
        agent.send_echo(seq, &payload(seq, 200));
    }
    assert!(
        agent.run_until(Duration::from_secs(5), |a| {
            (100..150u16).all(|seq| a.has_reply(seq, &payload(seq, 200)))
        }),
        "burst replies missing; {} packets received",
        agent.received.len()
    );

    // `wg show` on the gateway: a handshake with us, from the agent socket's address.
    let theirs = gw
        .wg
        .wait_for_handshake(&agent.public_base64(), Duration::from_secs(2))
        .unwrap();
    assert_eq!(theirs.endpoint, Some(agent.socket.local_addr().unwrap()));
    let ours = agent.peers.peer_stats(&key, Instant::now()).unwrap();
    assert_eq!(ours.endpoint, Some(gw.endpoint()));
    let (our_handshake, their_handshake) = (
        ours.last_handshake_unix(std::time::SystemTime::now())
            .unwrap(),
        theirs
            .latest_handshake
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    assert!(
        our_handshake.abs_diff(their_handshake) <= 1,
        "{our_handshake} vs {their_handshake}"
    );

    // Both sides count the same bytes on the wire.
    let (rx, tx, gw_rx, gw_tx) = settled_counters(&mut agent, &gw, &key);
    assert_eq!((rx, tx), (gw_tx, gw_rx), "wg-core rx/tx vs wg show tx/rx");
    // At least the handshake plus 57 echoes each way.
    assert!(tx > 148 + 57 * 32 && rx > 92 + 57 * 32, "rx {rx} tx {tx}");
    eprintln!(
        "handshake + first echo in {handshake_time:?}; wire bytes: wg-core rx {rx} tx {tx}, \
         wireguard-go rx {gw_rx} tx {gw_tx}"
    );
    assert_eq!(agent.peers.drops().total(), 0, "{:?}", agent.peers.drops());
    drop(gw);
}

#[test]
fn interop_wg_core_receives_traffic_the_gateway_starts() {
    testbed::require_gateway_prereqs!();
    let (gw, mut agent) = Gateway::start_with_agent();
    agent.add_gateway(&gw.wg, gw.endpoint());
    assert!(
        agent.ping(1, b"up", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );

    // curl inside the gateway namespace connects to the agent's virtual IP: its TCP SYN must come
    // out of wg-core, from 10.1.0.1 to 10.1.0.100:80.
    let logs = TempDir::new("curl").unwrap();
    let mut curl = gw.curl_agent(&logs);
    let is_syn_to_agent = |p: &Vec<u8>| {
        p.len() >= 40
            && p[0] == 0x45
            && p[9] == 6
            && p[12..16] == GATEWAY_IP.octets()
            && p[16..20] == AGENT_IP.octets()
            && p[22..24] == 80u16.to_be_bytes()
            && p[33] & 0x02 != 0
    };
    let got = agent.run_until(Duration::from_secs(5), |a| {
        a.received.iter().any(is_syn_to_agent)
    });
    curl.kill();
    assert!(
        got,
        "no SYN through wg-core; got {} packets",
        agent.received.len()
    );
}

#[test]
fn interop_wg_core_answers_a_handshake_wireguard_go_starts() {
    testbed::require_gateway_prereqs!();
    // The agent's socket exists first; the gateway knows its endpoint and dials it (keepalive
    // every second), while wg-core knows the gateway's key but no endpoint: it must answer the
    // initiation (rate limiter, static key lookup) and learn the endpoint from the data that
    // follows (an initiation alone never moves an endpoint: it could be a replay).
    let key = PrivateKey::generate();
    let ns = testbed::Netns::new("wgi").unwrap();
    let link = ns.veth_to_host().unwrap();
    let mut agent = Agent::new(key.clone(), SocketAddr::new(link.b.ip.into(), 0));
    let agent_addr = agent.socket.local_addr().unwrap();
    let gateway = WireguardGo::start(
        &ns,
        GatewayConfig::new("10.1.0.1/24").unwrap().with_peer(
            GatewayPeer::new(&key.public_key().to_base64(), &["10.1.0.100/32"])
                .with_endpoint(agent_addr)
                .with_keepalive(1),
        ),
    )
    .unwrap();
    let gw_key = PublicKey::from_base64(gateway.public_key()).unwrap();
    agent.peers.set_peers(
        vec![PeerConfig::new(gw_key).with_allowed_ip("10.1.0.1/32".parse().unwrap())],
        Instant::now(),
    );
    let up = agent.run_until(Duration::from_secs(10), |a| {
        a.peers
            .peer_stats(&gw_key, Instant::now())
            .is_some_and(|s| s.state == HandshakeState::Established && s.endpoint.is_some())
    });
    assert!(
        up,
        "{:?}\n{}",
        agent.peers.stats(Instant::now()),
        gateway.log()
    );
    let stats = agent.peers.peer_stats(&gw_key, Instant::now()).unwrap();
    let gw_endpoint = SocketAddr::new(link.a.ip.into(), gateway.listen_port());
    assert_eq!(
        stats.endpoint,
        Some(gw_endpoint),
        "endpoint learned from the gateway's first data after its initiation"
    );
    // Now data both ways over the session the gateway started.
    assert!(
        agent.ping(1, b"answered", Duration::from_secs(5)),
        "{}",
        gateway.log()
    );
    let theirs = gateway
        .wait_for_handshake(&key.public_key().to_base64(), Duration::from_secs(2))
        .unwrap();
    assert_eq!(theirs.endpoint, Some(agent_addr));
    assert_eq!(agent.peers.drops().total(), 0, "{:?}", agent.peers.drops());
}

#[test]
fn interop_wg_core_over_an_ipv6_underlay() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let mut gw = Gateway::start(&key.public_key().to_base64());
    let (gw_ip6, agent_ip6) = gw.link.add_ipv6().unwrap();
    let mut agent = Agent::new(key.clone(), SocketAddr::new(agent_ip6.into(), 0));
    let endpoint = SocketAddr::new(gw_ip6.into(), gw.wg.listen_port());
    let gw_key = agent.add_gateway(&gw.wg, endpoint);
    assert!(
        agent.ping(1, b"over ipv6", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );
    let theirs = gw
        .wg
        .wait_for_handshake(&key.public_key().to_base64(), Duration::from_secs(2))
        .unwrap();
    assert_eq!(theirs.endpoint, Some(agent.socket.local_addr().unwrap()));
    assert!(theirs.endpoint.unwrap().is_ipv6());
    let (rx, tx, gw_rx, gw_tx) = settled_counters(&mut agent, &gw, &gw_key);
    assert_eq!((rx, tx), (gw_tx, gw_rx));
}

#[test]
fn interop_wg_core_keepalives_reach_wireguard_go() {
    testbed::require_gateway_prereqs!();
    let (gw, mut agent) = Gateway::start_with_agent();
    let gw_key = PublicKey::from_base64(gw.wg.public_key()).unwrap();
    agent.peers.set_peers(
        vec![
            PeerConfig::new(gw_key)
                .with_endpoint(gw.endpoint())
                .with_allowed_ip("10.1.0.1/32".parse().unwrap())
                .with_keepalive(Duration::from_secs(1)),
        ],
        Instant::now(),
    );
    // Persistent keepalive brings the tunnel up with no traffic at all.
    let agent_pub = agent.public_base64();
    assert!(agent.run_until(Duration::from_secs(5), |a| {
        a.peers
            .peer_stats(&gw_key, Instant::now())
            .is_some_and(|s| s.state == HandshakeState::Established)
    }));
    gw.wg
        .wait_for_handshake(&agent_pub, Duration::from_secs(2))
        .unwrap();
    // Idle for 3.5 s: about three 32-byte keepalives reach wireguard-go, nothing else.
    agent.run_until(Duration::from_millis(300), |_| false);
    let before = gw.wg.peer(&agent_pub).unwrap().rx_bytes;
    agent.run_until(Duration::from_millis(3500), |_| false);
    let after = gw.wg.peer(&agent_pub).unwrap().rx_bytes;
    let keepalives = (after - before) / 32;
    assert_eq!(
        (after - before) % 32,
        0,
        "only keepalives: {before} -> {after}"
    );
    assert!(
        (2..=5).contains(&keepalives),
        "{keepalives} keepalives in 3.5 s"
    );
    assert!(agent.received.is_empty(), "keepalives deliver no packet");
}

#[test]
fn interop_wg_core_with_a_preshared_key() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let psk = testbed::generate_preshared_key().unwrap();
    let config = GatewayConfig::new("10.1.0.1/24").unwrap().with_peer(
        GatewayPeer::new(&key.public_key().to_base64(), &["10.1.0.100/32"])
            .with_preshared_key(&psk),
    );
    assert!(
        !format!("{config:?}").contains(&psk),
        "Debug shows the preshared key"
    );
    let gw = Gateway(GatewaySite::start("psk", config, None).unwrap());
    let mut agent = Agent::new(key.clone(), gw.agent_bind());
    let gw_key = PublicKey::from_base64(gw.wg.public_key()).unwrap();
    let peer = |psk: &str| {
        PeerConfig::new(gw_key)
            .with_endpoint(gw.endpoint())
            .with_allowed_ip("10.1.0.1/32".parse().unwrap())
            .with_preshared_key(wg_core::PresharedKey::from_base64(psk).unwrap())
    };

    // A wrong preshared key: wireguard-go answers the initiation, but its response does not
    // authenticate here, so no session and no echo.
    let wrong = testbed::generate_preshared_key().unwrap();
    agent.peers.set_peers(vec![peer(&wrong)], Instant::now());
    assert!(!agent.ping(1, b"wrong psk", Duration::from_millis(1500)));
    assert!(
        agent.peers.drops().get(DropReason::BadAuth) > 0,
        "{:?}",
        agent.peers.drops()
    );

    // The right one: the tunnel comes up.
    agent.peers.set_peers(vec![peer(&psk)], Instant::now());
    assert!(
        agent.ping(2, b"right psk", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );
    gw.wg
        .wait_for_handshake(&key.public_key().to_base64(), Duration::from_secs(2))
        .unwrap();
}

#[test]
fn interop_wg_core_routes_between_two_wireguard_go_gateways() {
    testbed::require_gateway_prereqs!();
    // The agent's socket lives in an agent namespace linked to two gateway namespaces.
    let key = PrivateKey::generate();
    let agent_ns = testbed::Netns::new("wgm").unwrap();
    let gateway_ips = [GATEWAY_IP, Ipv4Addr::new(10, 1, 0, 2)];
    let sites: Vec<GatewaySite> = gateway_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let config =
                GatewayConfig::new(&format!("{ip}/24"))
                    .unwrap()
                    .with_peer(GatewayPeer::new(
                        &key.public_key().to_base64(),
                        &["10.1.0.100/32"],
                    ));
            GatewaySite::start(&format!("wgm{i}"), config, Some(&agent_ns)).unwrap()
        })
        .collect();
    let socket = agent_ns.bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut agent = Agent::with_socket(key.clone(), socket);
    let keys: Vec<PublicKey> = sites
        .iter()
        .map(|s| PublicKey::from_base64(s.wg.public_key()).unwrap())
        .collect();
    agent.peers.set_peers(
        sites
            .iter()
            .zip(&keys)
            .zip(gateway_ips)
            .map(|((site, key), ip)| {
                PeerConfig::new(*key)
                    .with_endpoint(site.endpoint())
                    .with_allowed_ip(format!("{ip}/32").parse().unwrap())
            })
            .collect(),
        Instant::now(),
    );
    // Echoes to each gateway's virtual IP go to that gateway and come back from it.
    for round in 0..5u16 {
        for ip in gateway_ips {
            let data = payload(round, 100 + usize::from(round));
            assert!(
                agent.ping_to(ip, round, &data, Duration::from_secs(10)),
                "{ip} round {round}"
            );
        }
    }
    // A packet for neither gateway is refused with NoRoute.
    let stray = icmp_echo_request(AGENT_IP, Ipv4Addr::new(10, 1, 0, 3), ECHO_IDENT, 0, b"x");
    let err = agent
        .peers
        .handle_ip_packet(&stray, Instant::now())
        .unwrap_err();
    assert_eq!(err.reason, DropReason::NoRoute);
    // Each gateway saw the agent on its own link, and counts agree per peer.
    for (site, key) in sites.iter().zip(&keys) {
        let theirs = site
            .wg
            .wait_for_handshake(&agent.public_base64(), Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            theirs.endpoint,
            Some(SocketAddr::new(site.agent_side_ip().into(), port))
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            agent.turn();
            let ours = agent.peers.peer_stats(key, Instant::now()).unwrap();
            let theirs = site.wg.peer(&agent.public_base64()).unwrap();
            if (ours.rx_bytes, ours.tx_bytes) == (theirs.tx_bytes, theirs.rx_bytes) {
                break;
            }
            assert!(Instant::now() < deadline, "{ours:?} vs {theirs:?}");
        }
    }
    let dropped = agent.peers.drops();
    assert_eq!(
        dropped.total(),
        dropped.get(DropReason::NoRoute),
        "{dropped:?}"
    );
}
