//! wg-core against a real WireGuard peer: `wireguard-go` in a network namespace, reached from
//! the test process over a veth pair. wg-core's sans-IO `Peers` is driven with a std UDP socket.
//!
//! Checks: the handshake completes, ICMP echo requests built by hand travel through the tunnel
//! and the gateway kernel's echo replies come back through wg-core; traffic the gateway starts
//! reaches wg-core; `wg show` and wg-core agree on the handshake and on rx/tx wire bytes; a
//! restarted gateway is found again by a forced handshake; an impaired path (relay with delay,
//! jitter, loss, reordering, duplication) still carries the tunnel.
//!
//! Root only: without it each test prints one `skipping` line; under `CI=true` it fails.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use testbed::garbage;
use testbed::packet::{icmp_echo_request, parse_icmp_echo};
use testbed::{
    Daemon, GatewayConfig, GatewayPeer, GatewaySite, ImpairedRelay, Impairment, TempDir,
    WireguardGo,
};
use wg_core::{DropReason, HandshakeState, PeerConfig, Peers, PrivateKey, PublicKey};

const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const ECHO_IDENT: u16 = 0x7762;

/// The agent side: wg-core's engine plus a UDP socket in the host namespace.
struct Agent {
    key: PrivateKey,
    peers: Peers,
    socket: UdpSocket,
    /// Decrypted packets received, in order.
    received: Vec<Vec<u8>>,
    /// The receiver index of the last transport data message that arrived (ours, as the peer
    /// addresses it).
    data_index: Option<u32>,
    buf: Vec<u8>,
}

impl Agent {
    fn new(key: PrivateKey, bind: SocketAddr) -> Self {
        Self::with_socket(key, UdpSocket::bind(bind).unwrap())
    }

    fn with_socket(key: PrivateKey, socket: UdpSocket) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Self {
            peers: Peers::new(key.clone(), Instant::now()),
            key,
            socket,
            received: Vec::new(),
            data_index: None,
            buf: vec![0; 65_535],
        }
    }

    fn public_base64(&self) -> String {
        self.key.public_key().to_base64()
    }

    fn add_gateway(&mut self, gateway: &WireguardGo, endpoint: SocketAddr) -> PublicKey {
        let key = PublicKey::from_base64(gateway.public_key()).unwrap();
        self.peers.set_peers(
            vec![
                PeerConfig::new(key)
                    .with_endpoint(endpoint)
                    .with_allowed_ip("10.1.0.1/32".parse().unwrap()),
            ],
            Instant::now(),
        );
        key
    }

    /// One turn of the I/O loop: flush transmits, receive for up to 5 ms, run timers, collect
    /// decrypted packets.
    fn turn(&mut self) {
        while let Some(t) = self.peers.poll_transmit() {
            // A send error (e.g. ICMP unreachable reported late) is what UDP does; keep going.
            let _ = self.socket.send_to(t.payload, t.destination);
        }
        if let Ok((len, from)) = self.socket.recv_from(&mut self.buf) {
            let datagram = &self.buf[..len];
            if datagram[0] == garbage::TRANSPORT_DATA {
                self.data_index = garbage::receiver_index_of(datagram).or(self.data_index);
            }
            let _ = self.peers.handle_datagram(from, datagram, Instant::now());
        }
        let now = Instant::now();
        if self.peers.poll_timeout().is_some_and(|t| t <= now) {
            self.peers.handle_timeout(now);
        }
        while let Some(r) = self.peers.poll_received() {
            self.received.push(r.packet.to_vec());
        }
        while let Some(t) = self.peers.poll_transmit() {
            let _ = self.socket.send_to(t.payload, t.destination);
        }
    }

    /// Runs the loop until `done` holds or `timeout` passes; returns whether `done` held.
    fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.turn();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn send_echo(&mut self, seq: u16, payload: &[u8]) {
        self.send_echo_to(GATEWAY_IP, seq, payload);
    }

    fn send_echo_to(&mut self, dst: Ipv4Addr, seq: u16, payload: &[u8]) {
        let packet = icmp_echo_request(AGENT_IP, dst, ECHO_IDENT, seq, payload);
        self.peers
            .handle_ip_packet(&packet, Instant::now())
            .unwrap();
    }

    /// Whether an echo reply with this sequence number and payload has arrived.
    fn has_reply(&self, seq: u16, payload: &[u8]) -> bool {
        self.has_reply_from(GATEWAY_IP, seq, payload)
    }

    fn has_reply_from(&self, src: Ipv4Addr, seq: u16, payload: &[u8]) -> bool {
        self.received.iter().any(|p| {
            parse_icmp_echo(p).is_some_and(|e| {
                e.is_reply
                    && e.src == src
                    && e.dst == AGENT_IP
                    && e.ident == ECHO_IDENT
                    && e.seq == seq
                    && e.payload == payload
            })
        })
    }

    /// Sends echo `seq` (again every 500 ms) until its reply arrives, for at most `timeout`.
    fn ping(&mut self, seq: u16, payload: &[u8], timeout: Duration) -> bool {
        self.ping_to(GATEWAY_IP, seq, payload, timeout)
    }

    fn ping_to(&mut self, dst: Ipv4Addr, seq: u16, payload: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.send_echo_to(dst, seq, payload);
            if self.run_until(Duration::from_millis(500), |a| {
                a.has_reply_from(dst, seq, payload)
            }) {
                return true;
            }
        }
        false
    }
}

/// A gateway namespace with a veth to the host and wireguard-go at 10.1.0.1/24 that knows the
/// agent's public key but not its endpoint (the agent dials out).
struct Gateway(GatewaySite);

impl std::ops::Deref for Gateway {
    type Target = GatewaySite;
    fn deref(&self) -> &GatewaySite {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut GatewaySite {
        &mut self.0
    }
}

impl Gateway {
    fn start(agent_public: &str) -> Self {
        let config = GatewayConfig::new("10.1.0.1/24")
            .unwrap()
            .with_peer(GatewayPeer::new(agent_public, &["10.1.0.100/32"]));
        Self(GatewaySite::start("wgc", config, None).unwrap())
    }

    /// Where the agent binds: the host end of the veth.
    fn agent_bind(&self) -> SocketAddr {
        SocketAddr::new(self.agent_side_ip().into(), 0)
    }
}

fn payload(seq: u16, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u16).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}

/// Polls until wg-core's tx equals the gateway's rx and the reverse (in-flight datagrams have
/// landed), at most 2 s; returns `(wg-core rx, wg-core tx, gateway rx, gateway tx)`.
fn settled_counters(agent: &mut Agent, gw: &Gateway, key: &PublicKey) -> (u64, u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        agent.turn();
        let ours = agent.peers.peer_stats(key, Instant::now()).unwrap();
        let theirs = gw.wg.peer(&agent.public_base64()).unwrap();
        let counters = (
            ours.rx_bytes,
            ours.tx_bytes,
            theirs.rx_bytes,
            theirs.tx_bytes,
        );
        if (counters.0, counters.1) == (counters.3, counters.2) || Instant::now() > deadline {
            return counters;
        }
    }
}

#[test]
fn interop_wg_core_handshakes_and_pings_wireguard_go() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let gw = Gateway::start(&key.public_key().to_base64());
    let mut agent = Agent::new(key, gw.agent_bind());
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
    assert!(stats.last_handshake.is_some());
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
        ours.last_handshake_unix().unwrap(),
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
    let key = PrivateKey::generate();
    let gw = Gateway::start(&key.public_key().to_base64());
    let mut agent = Agent::new(key, gw.agent_bind());
    agent.add_gateway(&gw.wg, gw.endpoint());
    assert!(
        agent.ping(1, b"up", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );

    // curl inside the gateway namespace connects to the agent's virtual IP: its TCP SYN must come
    // out of wg-core, from 10.1.0.1 to 10.1.0.100:80.
    let logs = TempDir::new("curl").unwrap();
    let mut curl: Daemon = gw
        .ns
        .spawn(
            "curl",
            ["-sS", "--max-time", "5", "http://10.1.0.100:80/"],
            &logs.path().join("curl.log"),
        )
        .unwrap();
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
fn interop_wg_core_finds_a_restarted_gateway_with_a_forced_handshake() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let mut gw = Gateway::start(&key.public_key().to_base64());
    let mut agent = Agent::new(key, gw.agent_bind());
    let key = agent.add_gateway(&gw.wg, gw.endpoint());
    assert!(
        agent.ping(1, b"before", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );

    // The gateway loses every session; our data now goes to an index it does not know.
    gw.restart().unwrap();
    agent.send_echo(2, b"lost");
    assert!(!agent.run_until(Duration::from_millis(500), |a| a.has_reply(2, b"lost")));

    // A forced handshake restores the session at once.
    let started = Instant::now();
    assert!(agent.peers.force_handshake(&key, Instant::now()));
    assert!(
        agent.ping(3, b"after", Duration::from_secs(5)),
        "{}",
        gw.wg.log()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = agent.peers.peer_stats(&key, Instant::now()).unwrap();
    assert_eq!(stats.handshakes, 2);
    gw.wg
        .wait_for_handshake(&agent.public_base64(), Duration::from_secs(2))
        .unwrap();
}

#[test]
fn interop_wg_core_through_an_impaired_relay() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let gw = Gateway::start(&key.public_key().to_base64());
    // Agent -> relay (on the host end of the veth) -> wireguard-go.
    let relay = ImpairedRelay::start(
        SocketAddr::new(gw.link.b.ip.into(), 0),
        gw.endpoint(),
        Impairment {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            seed: 2026,
            ..Impairment::default()
        },
    )
    .unwrap();
    // The agent reaches the relay over the host's own address on the veth.
    let mut agent = Agent::new(key, gw.agent_bind());
    let key = agent.add_gateway(&gw.wg, relay.local_addr());
    // Handshake on a clean path (a lost initiation would cost boringtun's 5 s retry).
    assert!(
        agent.ping(0, b"clean", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );

    // Then 5% loss, 20% reordering, 10% duplicates: 100 echoes in flight, most come back, every
    // reply intact; duplicates are rejected by the anti-replay window and counted, not delivered.
    relay.set_impairment(Impairment {
        loss: 0.05,
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        reorder: 0.2,
        duplicate: 0.1,
        seed: 2026,
        ..Impairment::default()
    });
    for seq in 1..=100u16 {
        agent.send_echo(seq, &payload(seq, 300));
        agent.turn();
    }
    agent.run_until(Duration::from_secs(2), |a| {
        (1..=100u16).all(|seq| a.has_reply(seq, &payload(seq, 300)))
    });
    // Let late copies (held, delayed, duplicated) land before counting.
    agent.run_until(Duration::from_secs(2), |_| relay.queued() == 0);
    agent.run_until(Duration::from_millis(100), |_| false);
    let replies = (1..=100u16)
        .filter(|&seq| agent.has_reply(seq, &payload(seq, 300)))
        .count();
    let stats = relay.stats();
    // Each echo crosses the relay twice; with 5% loss each way about 90 should survive.
    assert!(replies >= 75, "{replies} replies; relay {stats:?}");
    assert!(
        stats.to_gateway.dropped + stats.to_agent.dropped > 0,
        "{stats:?}"
    );
    // Every decrypted packet is a valid echo reply: nothing garbled, nothing delivered twice.
    let echoes = agent
        .received
        .iter()
        .filter(|p| parse_icmp_echo(p).is_some_and(|e| e.is_reply))
        .count();
    assert_eq!(echoes, agent.received.len());
    let seqs: std::collections::BTreeSet<u16> = agent
        .received
        .iter()
        .filter_map(|p| parse_icmp_echo(p).map(|e| e.seq))
        .collect();
    assert_eq!(
        seqs.len(),
        agent.received.len(),
        "a packet was delivered twice"
    );
    // Each duplicate the relay sent toward us was refused by the replay check, and only that.
    let drops = agent.peers.drops();
    assert_eq!(
        drops.get(DropReason::Replay),
        stats.to_agent.duplicated,
        "{drops:?}"
    );
    assert_eq!(drops.total(), drops.get(DropReason::Replay), "{drops:?}");
    let ours = agent.peers.peer_stats(&key, Instant::now()).unwrap();
    assert_eq!(ours.state, HandshakeState::Established);
    eprintln!(
        "impaired path: {replies}/100 replies; relay {stats:?}; wg-core drops {:?}",
        agent.peers.drops()
    );
}

#[test]
fn interop_wg_core_answers_a_handshake_wireguard_go_starts() {
    testbed::require_gateway_prereqs!();
    // The agent's socket exists first; the gateway knows its endpoint and dials it (keepalive
    // every second), while wg-core knows the gateway's key but no endpoint: it must answer the
    // initiation (rate limiter, static key lookup) and learn the endpoint from it.
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
            .is_some_and(|s| s.state == HandshakeState::Established)
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
        "endpoint learned from the initiation"
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
fn interop_wg_core_survives_garbage_during_traffic() {
    use rand::SeedableRng;
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let gw = Gateway::start(&key.public_key().to_base64());
    let mut agent = Agent::new(key.clone(), gw.agent_bind());
    let gw_key = agent.add_gateway(&gw.wg, gw.endpoint());
    assert!(
        agent.ping(0, b"before", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );
    let live_index = agent.data_index.expect("a data message arrived");

    // Garbage from another socket on the same host address, between echoes.
    let attacker = UdpSocket::bind(gw.agent_bind()).unwrap();
    let target = agent.socket.local_addr().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sent = 0u64;
    for seq in 1..=40u16 {
        let (other_a, other_b): (u32, u32) =
            (rand::Rng::random(&mut rng), rand::Rng::random(&mut rng));
        let mut batch = vec![
            garbage::random_bytes(&mut rng, usize::from(seq) * 37 % 1500 + 1),
            garbage::fake_handshake_initiation(&mut rng),
            garbage::fake_handshake_response(&mut rng, other_a),
            garbage::fake_handshake_response(&mut rng, live_index),
            garbage::fake_cookie_reply(&mut rng, live_index),
            garbage::fake_transport_data(&mut rng, live_index, u64::from(seq), 1100),
            garbage::fake_transport_data(&mut rng, live_index, u64::MAX, 16),
            garbage::fake_transport_data(&mut rng, other_b, 1, 64),
        ];
        if seq % 10 == 0 {
            batch.push(garbage::random_bytes(&mut rng, 9000));
            batch.push(garbage::fake_transport_data(
                &mut rng, live_index, 5, 60_000,
            ));
        }
        for datagram in &batch {
            attacker.send_to(datagram, target).unwrap();
            sent += 1;
        }
        let data = payload(seq, 200);
        assert!(
            agent.ping(seq, &data, Duration::from_secs(3)),
            "echo {seq} lost among garbage; drops {:?}",
            agent.peers.drops()
        );
    }
    let drops = agent.peers.drops();
    assert!(
        drops.total() >= sent,
        "{sent} garbage datagrams, drops {drops:?}"
    );
    for reason in [DropReason::Malformed, DropReason::UnknownIndex] {
        assert!(drops.get(reason) > 0, "{reason:?}: {drops:?}");
    }
    assert!(
        drops.get(DropReason::BadAuth) + drops.get(DropReason::Replay) > 0,
        "{drops:?}"
    );
    // Unauthenticated datagrams neither move the endpoint nor count as received bytes.
    let ours = agent.peers.peer_stats(&gw_key, Instant::now()).unwrap();
    assert_eq!(ours.endpoint, Some(gw.endpoint()));
    assert_eq!(ours.state, HandshakeState::Established);
    let (rx, tx, gw_rx, gw_tx) = settled_counters(&mut agent, &gw, &gw_key);
    assert_eq!((rx, tx), (gw_tx, gw_rx), "wire counters after garbage");
    eprintln!("{sent} garbage datagrams dropped as {drops:?}");
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

#[test]
fn interop_wg_core_keepalives_reach_wireguard_go() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let gw = Gateway::start(&key.public_key().to_base64());
    let mut agent = Agent::new(key.clone(), gw.agent_bind());
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
    let agent_pub = key.public_key().to_base64();
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
fn interop_wg_core_follows_a_gateway_that_roams() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let mut gw = Gateway::start(&key.public_key().to_base64());
    let mut agent = Agent::new(key.clone(), gw.agent_bind());
    let gw_key = agent.add_gateway(&gw.wg, gw.endpoint());
    assert!(
        agent.ping(1, b"before", Duration::from_secs(10)),
        "{}",
        gw.wg.log()
    );
    let old_endpoint = gw.endpoint();

    // The gateway moves to another port, keeping its session; the old port is closed.
    gw.wg.set_listen_port(51821).unwrap();
    let new_endpoint = gw.endpoint();
    assert_ne!(new_endpoint, old_endpoint);
    while agent.peers.poll_event().is_some() {}

    // Traffic the gateway starts (a TCP SYN to the agent's virtual IP) comes from the new port.
    let logs = TempDir::new("roam").unwrap();
    let mut curl = gw
        .ns
        .spawn(
            "curl",
            ["-sS", "--max-time", "5", "http://10.1.0.100:80/"],
            &logs.path().join("curl.log"),
        )
        .unwrap();
    let learned = agent.run_until(Duration::from_secs(5), |a| {
        a.peers
            .peer_stats(&gw_key, Instant::now())
            .is_some_and(|s| s.endpoint == Some(new_endpoint))
    });
    curl.kill();
    assert!(
        learned,
        "endpoint not learned: {:?}",
        agent.peers.stats(Instant::now())
    );
    let mut changed = false;
    while let Some(event) = agent.peers.poll_event() {
        if let wg_core::Event::EndpointChanged { peer, old, new } = event {
            assert_eq!((peer, old, new), (gw_key, Some(old_endpoint), new_endpoint));
            changed = true;
        }
    }
    assert!(changed, "no EndpointChanged event");
    // Our packets now go to the new port (the old one would not answer).
    assert!(
        agent.ping(2, b"after", Duration::from_secs(5)),
        "{}",
        gw.wg.log()
    );
    let stats = agent.peers.peer_stats(&gw_key, Instant::now()).unwrap();
    assert_eq!(stats.handshakes, 1, "roaming needs no new handshake");
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
