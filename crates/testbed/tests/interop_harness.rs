//! Self-tests of the namespace and wireguard-go harness (root only: they skip with one line
//! without it, and fail under `CI=true`).

#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use testbed::{
    GatewayConfig, GatewayPeer, GatewaySite, ImpairedRelay, Impairment, Netns, WireguardGo, run,
};

fn netns_exists(name: &str) -> bool {
    testbed::netns_exists(name).unwrap()
}

fn link_exists(ifname: &str) -> bool {
    run("ip", ["link", "show", ifname]).is_ok()
}

/// A UDP datagram to a closed port is answered by the kernel with ICMP port unreachable, which a
/// connected socket reports as `ConnectionRefused`: proof of a round trip with no tool inside.
/// Three tries, 500 ms each.
fn udp_round_trip(to: SocketAddr) -> bool {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect(to).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (0..3).any(|_| {
        let _ = socket.send(b"probe");
        let mut buf = [0u8; 16];
        matches!(socket.recv(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
    })
}

/// `curl` from inside `ns` to `url` (10 s at most). To a closed port through a tunnel it fails
/// fast with "couldn't connect" (exit 7): the SYN crossed and the far kernel's RST came back.
fn curl(ns: &Netns, url: &str) -> Output {
    ns.command("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .unwrap()
}

/// wireguard-go gateways at 10.1.0.1 in `ns1` and 10.1.0.2 in `ns2`, peers of each other;
/// gw1 dials gw2 at `gw2_endpoint`. Returns them with their public keys.
fn gateway_pair(
    ns1: &Netns,
    ns2: &Netns,
    gw2_endpoint: SocketAddr,
) -> (WireguardGo, WireguardGo, String, String) {
    let c1 = GatewayConfig::new("10.1.0.1/24").unwrap();
    let c2 = GatewayConfig::new("10.1.0.2/24").unwrap();
    let (k1, k2) = (c1.key.public.clone(), c2.key.public.clone());
    let gw2 =
        WireguardGo::start(ns2, c2.with_peer(GatewayPeer::new(&k1, &["10.1.0.1/32"]))).unwrap();
    let gw1 = WireguardGo::start(
        ns1,
        c1.with_peer(GatewayPeer::new(&k2, &["10.1.0.2/32"]).with_endpoint(gw2_endpoint)),
    )
    .unwrap();
    (gw1, gw2, k1, k2)
}

#[test]
fn interop_netns_veth_to_host_and_cleanup() {
    testbed::require_gateway_prereqs!();
    let ns = Netns::new("self").unwrap();
    let name = ns.name().to_owned();
    assert!(name.starts_with("wgtb-self-"), "{name}");
    assert!(netns_exists(&name));
    let link = ns.veth_to_host().unwrap();
    assert_eq!(link.a.netns.as_deref(), Some(name.as_str()));
    assert_eq!(link.b.netns, None);
    assert!(link_exists(&link.b.ifname));
    assert!(udp_round_trip(SocketAddr::new(link.a.ip.into(), 9)));
    // A second namespace gets a different name and subnet.
    let other = Netns::new("self").unwrap();
    let link2 = other.veth_to_host().unwrap();
    assert_ne!(other.name(), name);
    assert_ne!(link2.a.ip, link.a.ip);

    let log = testbed::TempDir::new("self").unwrap();
    let mut sleeper = ns
        .spawn("sleep", ["30"], &log.path().join("sleep.log"))
        .unwrap();
    let pid = sleeper.pid().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !ns.pids().contains(&pid) {
        assert!(Instant::now() < deadline, "sleep never showed up in {name}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let host_if = link.b.ifname.clone();
    drop(link);
    assert!(!link_exists(&host_if));
    drop(ns);
    assert!(!netns_exists(&name));
    // The process inside was killed.
    let status = sleeper.wait_timeout(Duration::from_secs(2)).unwrap();
    assert!(!status.success());
    drop(link2);
    drop(other);
}

#[test]
fn interop_netns_is_removed_when_the_test_panics() {
    testbed::require_gateway_prereqs!();
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new("panic").unwrap();
        let _link = ns.veth_to_host().unwrap();
        seen = Some(ns.name().to_owned());
        panic!("test failure inside");
    }));
    assert!(result.is_err());
    let name = seen.unwrap();
    assert!(!netns_exists(&name), "{name} left behind");
}

#[test]
fn interop_two_wireguard_go_gateways_handshake_and_carry_tcp() {
    testbed::require_gateway_prereqs!();
    let ns1 = Netns::new("gw1").unwrap();
    let ns2 = Netns::new("gw2").unwrap();
    let link = ns1.veth_to(&ns2).unwrap();
    let (gw1, gw2, k1, k2) = gateway_pair(&ns1, &ns2, SocketAddr::new(link.b.ip.into(), 51820));
    assert_ne!(gw1.ifname(), gw2.ifname());
    assert!(gw1.control_socket().exists() && gw2.control_socket().exists());
    assert_eq!(gw1.dump().unwrap().public_key, k1);

    // curl from gw1's namespace to a closed port on 10.1.0.2: the SYN crosses the tunnel and
    // gw2's kernel answers RST through it, so curl fails fast with "couldn't connect" (7), not
    // with a timeout (28).
    let out = curl(&ns1, "http://10.1.0.2:9/");
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: {}\ngw1: {}\ngw2: {}",
        String::from_utf8_lossy(&out.stderr),
        gw1.log(),
        gw2.log()
    );
    let p2 = gw1.wait_for_handshake(&k2, Duration::from_secs(5)).unwrap();
    let p1 = gw2.wait_for_handshake(&k1, Duration::from_secs(5)).unwrap();
    assert_eq!(p1.endpoint, Some(SocketAddr::new(link.a.ip.into(), 51820)));
    // Both sides count the same wire bytes (nothing is in flight any more).
    assert!(p2.tx_bytes > 148 && p2.rx_bytes > 92, "{p2:?}");
    assert_eq!((p2.tx_bytes, p2.rx_bytes), (p1.rx_bytes, p1.tx_bytes));
}

#[test]
fn interop_wireguard_go_restart_keeps_key_and_peers() {
    testbed::require_gateway_prereqs!();
    let ns = Netns::new("gwr").unwrap();
    let peer = testbed::KeyPair::generate().unwrap();
    let mut gw = WireguardGo::start(
        &ns,
        GatewayConfig::new("10.1.0.1/24")
            .unwrap()
            .with_peer(GatewayPeer::new(&peer.public, &["10.1.0.100/32"]).with_keepalive(25)),
    )
    .unwrap();
    let before = gw.dump().unwrap();
    let pid = gw.pid().unwrap();
    gw.restart(&ns).unwrap();
    assert_ne!(gw.pid(), Some(pid));
    let after = gw.dump().unwrap();
    assert_eq!(after.public_key, before.public_key);
    assert_eq!(after.listen_port, 51820);
    assert_eq!(after.peers.len(), 1);
    assert_eq!(after.peers[0].public_key, peer.public);
    assert_eq!(after.peers[0].persistent_keepalive, Some(25));
    assert!(
        ns.ip(["addr", "show", gw.ifname()])
            .unwrap()
            .contains("10.1.0.1/24")
    );
    gw.remove_peer(&peer.public).unwrap();
    assert!(gw.dump().unwrap().peers.is_empty());
    let socket = gw.control_socket();
    drop(gw);
    assert!(!Path::new(&socket).exists());
    assert!(ns.pids().is_empty());
}

#[test]
fn interop_impaired_relay_carries_wireguard_between_namespaces() {
    testbed::require_gateway_prereqs!();
    // gw1 (ns1) -> relay in the host (on ns1's host link) -> gw2 (ns2, via its host link).
    let ns1 = Netns::new("rl1").unwrap();
    let ns2 = Netns::new("rl2").unwrap();
    let link1 = ns1.veth_to_host().unwrap();
    let link2 = ns2.veth_to_host().unwrap();
    let gw2_addr = SocketAddr::new(link2.a.ip.into(), 51820);
    let relay = ImpairedRelay::start(
        SocketAddr::new(link1.b.ip.into(), 0),
        gw2_addr,
        Impairment {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            duplicate: 0.3,
            seed: 6,
            ..Impairment::default()
        },
    )
    .unwrap();
    let (gw1, gw2, k1, _) = gateway_pair(&ns1, &ns2, relay.local_addr());
    let start = Instant::now();
    let out = curl(&ns1, "http://10.1.0.2:9/");
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: {}\nrelay: {relay:?}\ngw1: {}\ngw2: {}",
        String::from_utf8_lossy(&out.stderr),
        gw1.log(),
        gw2.log()
    );
    // Handshake and SYN/RST: at least two round trips of 2 x 20 ms (- jitter).
    assert!(
        start.elapsed() >= Duration::from_millis(60),
        "{:?}",
        start.elapsed()
    );
    let p1 = gw2.wait_for_handshake(&k1, Duration::from_secs(5)).unwrap();
    // gw2 sees gw1 at the relay's upstream socket (an address in the host).
    assert_eq!(p1.endpoint.map(|e| e.ip()), Some(link2.b.ip.into()));
    let stats = relay.stats();
    assert!(stats.to_gateway.received >= 2, "{stats:?}");
    assert!(stats.to_agent.received >= 2, "{stats:?}");
    assert_eq!(stats.to_gateway.send_errors + stats.to_agent.send_errors, 0);
}

#[test]
fn interop_two_gateway_sites_reach_an_agent_namespace() {
    testbed::require_gateway_prereqs!();
    // Issue 6's layout: the agent in its own namespace, one namespace per gateway linked to it.
    // Here the "agent" is a third wireguard-go that dials out with a keepalive.
    let agent_ns = Netns::new("agent").unwrap();
    let agent_config = GatewayConfig::new("10.1.0.100/24").unwrap();
    let agent_public = agent_config.key.public.clone();
    let mut sites = Vec::new();
    for (i, address) in ["10.1.0.1/24", "10.1.0.2/24"].into_iter().enumerate() {
        let config = GatewayConfig::new(address)
            .unwrap()
            .with_peer(GatewayPeer::new(&agent_public, &["10.1.0.100/32"]));
        sites.push(GatewaySite::start(&format!("site{i}"), config, Some(&agent_ns)).unwrap());
    }
    assert_ne!(sites[0].endpoint(), sites[1].endpoint());
    let mut agent_config = agent_config;
    for (site, vip) in sites.iter().zip(["10.1.0.1/32", "10.1.0.2/32"]) {
        agent_config = agent_config.with_peer(
            GatewayPeer::new(site.wg.public_key(), &[vip])
                .with_endpoint(site.endpoint())
                .with_keepalive(1),
        );
    }
    let agent = WireguardGo::start(&agent_ns, agent_config).unwrap();
    for (site, vip) in sites.iter().zip(["10.1.0.1", "10.1.0.2"]) {
        let peer = site
            .wg
            .wait_for_handshake(&agent_public, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            peer.endpoint.map(|e| e.ip()),
            Some(site.agent_side_ip().into())
        );
        // Gateway -> agent's virtual IP through the tunnel: RST from the agent's kernel.
        let out = curl(&site.ns, "http://10.1.0.100:9/");
        assert_eq!(out.status.code(), Some(7), "via {vip}: {}", agent.log());
    }
    drop(sites);
    drop(agent);
}

#[test]
fn interop_sockets_made_inside_a_namespace_stay_there() {
    use std::io::{Read, Write};
    testbed::require_gateway_prereqs!();
    let ns = Netns::new("sock").unwrap();
    let link = ns.veth_to_host().unwrap();
    // UDP on the namespace's end of the link, reached from the host.
    let inside = ns.bind_udp(SocketAddr::new(link.a.ip.into(), 0)).unwrap();
    inside
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let host = UdpSocket::bind(SocketAddr::new(link.b.ip.into(), 0)).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.send_to(b"to ns", inside.local_addr().unwrap())
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = inside.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"to ns"[..], host.local_addr().unwrap())
    );
    inside.send_to(b"to host", from).unwrap();
    let (n, _) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to host");

    // The namespace's loopback is its own: the host's 127.0.0.1 does not reach it.
    let ns_loopback = ns.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    ns_loopback
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = host.send_to(b"lost", ns_loopback.local_addr().unwrap());
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = probe.send_to(b"lost", ns_loopback.local_addr().unwrap());
    assert!(ns_loopback.recv_from(&mut buf).is_err());

    // TCP: a listener inside, a client in the host.
    let listener = ns.bind_tcp(SocketAddr::new(link.a.ip.into(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).unwrap();
        stream.write_all(&got).unwrap();
    });
    let mut client = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    client.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    server.join().unwrap();
    // And a client made inside, to a listener in the host.
    let host_listener = std::net::TcpListener::bind(SocketAddr::new(link.b.ip.into(), 0)).unwrap();
    let stream = ns
        .connect_tcp(host_listener.local_addr().unwrap(), Duration::from_secs(2))
        .unwrap();
    let (_, peer) = host_listener.accept().unwrap();
    assert_eq!(peer, stream.local_addr().unwrap());
    assert_eq!(peer.ip(), std::net::IpAddr::from(link.a.ip));
}

#[test]
fn interop_relay_inside_an_agent_namespace() {
    testbed::require_gateway_prereqs!();
    // agent (wireguard-go, agent ns) -> relay on the agent namespace's loopback -> gateway site.
    let agent_ns = Netns::new("ragent").unwrap();
    let agent_config = GatewayConfig::new("10.1.0.100/24").unwrap();
    let agent_public = agent_config.key.public.clone();
    let site = GatewaySite::start(
        "rsite",
        GatewayConfig::new("10.1.0.1/24")
            .unwrap()
            .with_peer(GatewayPeer::new(&agent_public, &["10.1.0.100/32"])),
        Some(&agent_ns),
    )
    .unwrap();
    let relay = ImpairedRelay::start_in(
        &agent_ns,
        "127.0.0.1:0".parse().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
        site.endpoint(),
        Impairment {
            delay: Duration::from_millis(5),
            seed: 3,
            ..Impairment::default()
        },
    )
    .unwrap();
    let agent = WireguardGo::start(
        &agent_ns,
        agent_config.with_peer(
            GatewayPeer::new(site.wg.public_key(), &["10.1.0.1/32"])
                .with_endpoint(relay.local_addr())
                .with_keepalive(1),
        ),
    )
    .unwrap();
    let peer = site
        .wg
        .wait_for_handshake(&agent_public, Duration::from_secs(5))
        .unwrap();
    // The gateway sees the agent at the relay's upstream socket, on the agent side of the link.
    let seen = peer.endpoint.unwrap();
    assert_eq!(seen.ip(), std::net::IpAddr::from(site.agent_side_ip()));
    assert_eq!(seen.port(), relay.upstream_local_addr().port());
    let out = curl(&site.ns, "http://10.1.0.100:9/");
    assert_eq!(out.status.code(), Some(7), "{}", agent.log());
    let stats = relay.stats();
    assert!(
        stats.to_gateway.sent >= 2 && stats.to_agent.sent >= 2,
        "{stats:?}"
    );
}

#[test]
fn interop_rate_limit_slows_a_link() {
    use std::io::{Read, Write};
    testbed::require_gateway_prereqs!();
    const BYTES: usize = 1 << 20;
    let ns = Netns::new("tbf").unwrap();
    let link = ns.veth_to_host().unwrap();
    // 1 MiB from the namespace to the host over TCP, first unlimited, then at 16 Mbit/s
    // (at least 0.5 s for 8 Mbit).
    let transfer = || {
        let listener = std::net::TcpListener::bind(SocketAddr::new(link.b.ip.into(), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut total = 0;
            let mut buf = vec![0u8; 65536];
            loop {
                match stream.read(&mut buf).unwrap() {
                    0 => break total,
                    n => total += n,
                }
            }
        });
        let mut stream = ns.connect_tcp(addr, Duration::from_secs(2)).unwrap();
        let start = Instant::now();
        stream.write_all(&vec![0x5a; BYTES]).unwrap();
        drop(stream);
        let received = reader.join().unwrap();
        assert_eq!(received, BYTES);
        start.elapsed()
    };
    let unlimited = transfer();
    ns.rate_limit(&link.a.ifname, "16mbit").unwrap();
    let limited = transfer();
    assert!(
        limited >= Duration::from_millis(400) && limited < Duration::from_secs(10),
        "1 MiB at 16 Mbit/s took {limited:?} (unlimited {unlimited:?})"
    );
    assert!(limited > unlimited * 4, "{limited:?} vs {unlimited:?}");
    eprintln!("1 MiB: unlimited {unlimited:?}, tbf 16 Mbit/s {limited:?}");
}
