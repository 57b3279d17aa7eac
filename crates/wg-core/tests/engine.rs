//! Engine behaviour beyond the two-peer scenarios: private key rotation, queue bounds, IPv6,
//! endpoints, and the rate limiter's reset (short real time).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use common::{Net, agent_and_gateway, tag_of};
use wg_core::{Config, DropReason, HandshakeState, IpNet, PeerConfig, Peers, PrivateKey};

const AGENT: usize = 0;
const GW: usize = 1;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn new_private_key_rekeys_every_tunnel() {
    let mut net = agent_and_gateway(31, Some(secs(25)));
    net.run_for(secs(1));
    let gw = net.nodes[GW].public_key();
    let before = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(before.state, HandshakeState::Established);

    let new_key = PrivateKey::generate();
    let now = net.now;
    // The gateway learns the agent's new public key first (as a control plane would arrange).
    let mut cfg = net.nodes[AGENT].config_for(false);
    cfg.public_key = new_key.public_key();
    net.nodes[GW].peers.set_peers(vec![cfg], now);
    net.nodes[AGENT].key = new_key.clone();
    net.nodes[AGENT].peers.set_private_key(new_key.clone(), now);
    assert_eq!(net.nodes[AGENT].peers.public_key(), new_key.public_key());
    net.run_for(secs(1));
    let after = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(after.state, HandshakeState::Established);
    assert_ne!(after.receiver_index, before.receiver_index);
    assert_eq!(after.handshakes, 2, "counted since the peer was added");
    net.send_ip(AGENT, GW, 100, 3);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.last().map(|p| tag_of(&p.2)), Some(3));
    // The same key again changes nothing.
    let now = net.now;
    net.nodes[AGENT].peers.set_private_key(new_key, now);
    let same = net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap();
    assert_eq!(same.receiver_index, after.receiver_index);
}

#[test]
fn transmit_and_received_queues_are_bounded() {
    let mut net = Net::new(32);
    let mut c = net.seeded_config();
    c.max_transmits = 4;
    net.add_node("agent", c);
    let mut c = net.seeded_config();
    c.max_received = 3;
    c.max_events = 1;
    net.add_node("gateway", c);
    let now = net.now;
    let agent_cfg = net.nodes[AGENT].config_for(false);
    net.nodes[GW].peers.set_peers(vec![agent_cfg], now);
    let gw_cfg = net.nodes[GW].config_for(true);
    net.nodes[AGENT].peers.set_peers(vec![gw_cfg], now);
    net.run_for(secs(1));

    // Ten packets without polling: four queue, six are dropped and counted.
    let p = common::ipv4_packet(
        net.nodes[AGENT].virtual_ip,
        net.nodes[GW].virtual_ip,
        100,
        1,
    );
    let mut datagrams = Vec::new();
    let now = net.now;
    for _ in 0..10 {
        let _ = net.nodes[AGENT].peers.handle_ip_packet(&p, now);
    }
    assert_eq!(net.nodes[AGENT].peers.queued_transmits(), 4);
    assert_eq!(net.nodes[AGENT].peers.drops().get(DropReason::QueueFull), 6);
    // Timers while the caller has not drained: nothing more is counted as dropped.
    for s in 1..5 {
        net.nodes[AGENT]
            .peers
            .handle_timeout(now + Duration::from_secs(s));
    }
    assert_eq!(net.nodes[AGENT].peers.drops().get(DropReason::QueueFull), 6);
    while let Some(t) = net.nodes[AGENT].peers.poll_transmit() {
        datagrams.push(t.payload.to_vec());
    }
    // Four datagrams into a received queue of three, without polling; the second comes from
    // another address and the third from the first again (two endpoint changes).
    let home = net.nodes[AGENT].addr;
    let away: std::net::SocketAddr = "198.51.100.20:4000".parse().unwrap();
    for (d, from) in datagrams.iter().zip([home, away, home, home]) {
        let _ = net.nodes[GW].peers.handle_datagram(from, d, now);
    }
    assert_eq!(net.nodes[GW].peers.queued_received(), 3);
    let agent = net.nodes[AGENT].public_key();
    let stats = net.nodes[GW].peers.peer_stats(&agent, now).unwrap();
    assert_eq!(stats.drops.get(DropReason::QueueFull), 1);
    // One event fits; the rest were counted as dropped.
    assert_eq!(net.nodes[GW].peers.stats(now).events_dropped, 1);
}

#[test]
fn ipv6_prefixes_route_and_check_sources() {
    let mut net = agent_and_gateway(33, Some(secs(25)));
    let now = net.now;
    let mut gw_cfg = net.nodes[GW].config_for(true).with_keepalive(secs(25));
    gw_cfg.allowed_ips.push("fd00:1::/64".parse().unwrap());
    net.nodes[AGENT].peers.set_peers(vec![gw_cfg], now);
    let mut agent_cfg = net.nodes[AGENT].config_for(false);
    agent_cfg
        .allowed_ips
        .push("fd00:100::1/128".parse().unwrap());
    net.nodes[GW].peers.set_peers(vec![agent_cfg], now);
    net.run_for(secs(1));

    let src: Ipv6Addr = "fd00:100::1".parse().unwrap();
    let dst: Ipv6Addr = "fd00:1::42".parse().unwrap();
    let mut p = vec![0u8; 60];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&20u16.to_be_bytes());
    p[6] = 17;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    let now = net.now;
    net.nodes[AGENT].peers.handle_ip_packet(&p, now).unwrap();
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 1);
    assert_eq!(net.nodes[GW].inbox[0].2, p);

    // An IPv6 destination outside every prefix has no route.
    p[24..40].copy_from_slice(&"fd00:2::1".parse::<Ipv6Addr>().unwrap().octets());
    let err = net.nodes[AGENT]
        .peers
        .handle_ip_packet(&p, now)
        .unwrap_err();
    assert_eq!(err.reason, DropReason::NoRoute);
}

#[test]
fn peer_without_endpoint_waits_and_set_endpoint_keeps_session() {
    let now = Instant::now();
    let mut a = Peers::new(PrivateKey::generate());
    let gw = PrivateKey::generate().public_key();
    a.set_peers(
        vec![PeerConfig::new(gw).with_allowed_ip(IpNet::host(IpAddr::from([10, 1, 0, 1])))],
        now,
    );
    assert!(a.poll_transmit().is_none(), "no endpoint: no handshake");
    let p = common::ipv4_packet([10, 1, 0, 100].into(), [10, 1, 0, 1].into(), 10, 1);
    assert_eq!(
        a.handle_ip_packet(&p, now).unwrap_err().reason,
        DropReason::NoEndpoint
    );
    assert!(a.set_endpoint(&gw, "192.0.2.1:51820".parse().unwrap()));
    a.handle_ip_packet(&p, now).unwrap();
    let t = a.poll_transmit().unwrap();
    assert_eq!(t.payload[0], 1, "the first packet starts the handshake");
    let destination = t.destination;
    assert_eq!(destination, "192.0.2.1:51820".parse().unwrap());
    assert_eq!(
        a.peer_stats(&gw, now).unwrap().state,
        HandshakeState::Connecting
    );
    assert!(!a.set_endpoint(&PrivateKey::generate().public_key(), destination));
    // Idle: a 250 ms tick while connecting, nothing busier.
    let next = a.poll_timeout().unwrap();
    assert!(next >= now + Duration::from_millis(250), "{:?}", next - now);
}

#[test]
fn engine_without_peers_never_wakes() {
    let now = Instant::now();
    let mut a = Peers::new(PrivateKey::generate());
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(now + secs(10));
    assert_eq!(a.poll_timeout(), None);
    assert!(a.poll_event().is_none());
    assert!(a.stats(now).peers.is_empty());
}

#[test]
fn rate_limiter_resets_each_second() {
    // Real time: boringtun's limiter checks its own clock before resetting.
    let mut net = Net::new(34);
    let c = net.seeded_config();
    net.add_node("agent", c);
    let mut c: Config = net.seeded_config();
    c.handshake_rate_limit = 1;
    net.add_node("gateway", c);
    let now = net.now;
    let agent_cfg = net.nodes[AGENT].config_for(false);
    net.nodes[GW].peers.set_peers(vec![agent_cfg], now);
    let gw_cfg = net.nodes[GW].config_for(true);
    net.nodes[AGENT].peers.set_peers(vec![gw_cfg], now);
    let gw = net.nodes[GW].public_key();
    for _ in 0..4 {
        let now = net.now;
        net.nodes[AGENT].peers.force_handshake(&gw, now);
        net.drain();
    }
    net.run_for(Duration::from_millis(100));
    let under_load = net.nodes[GW].peers.drops().get(DropReason::UnderLoad);
    assert!(under_load >= 1);
    std::thread::sleep(Duration::from_millis(1_100));
    net.run_for(secs(2));
    let now = net.now;
    net.nodes[AGENT].peers.force_handshake(&gw, now);
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.nodes[GW].peers.drops().get(DropReason::UnderLoad),
        under_load,
        "accepted again after the reset"
    );
}

#[test]
fn absurd_keepalive_interval_never_fires_and_never_panics() {
    let mut net = agent_and_gateway(35, Some(Duration::MAX));
    net.run_for(secs(1));
    let gw = net.nodes[GW].public_key();
    assert_eq!(
        net.nodes[AGENT]
            .peers
            .peer_stats(&gw, net.now)
            .unwrap()
            .state,
        HandshakeState::Established
    );
    // Established, then idle past expiry: the keepalive deadline is computed in both states.
    let t0 = net.now;
    net.run_for(secs(400));
    // (The keepalive that confirms the handshake went out before `t0`.)
    assert!(net.nodes[AGENT].keepalives().iter().all(|t| *t < t0));
    assert!(
        net.nodes[AGENT]
            .peers
            .poll_timeout()
            .is_none_or(|t| t > net.now)
    );
}

#[test]
fn remembered_routes_follow_runtime_changes_at_once() {
    // The engine remembers the last route of each direction; every configuration change must
    // forget it, outbound (destination -> peer) and inbound (source -> allowed IPs).
    let mut net = agent_and_gateway(35, Some(secs(25)));
    net.run_for(secs(1));
    let (agent_ip, gw_ip) = (net.nodes[AGENT].virtual_ip, net.nodes[GW].virtual_ip);
    let packet = common::ipv4_packet(agent_ip, gw_ip, 40, 7);
    let now = net.now;
    for _ in 0..3 {
        net.nodes[AGENT]
            .peers
            .handle_ip_packet(&packet, now)
            .unwrap();
    }
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 3);

    // The gateway's prefix is taken away: no route, at once.
    let now = net.now;
    let bare = PeerConfig {
        allowed_ips: Vec::new(),
        ..net.nodes[GW].config_for(true)
    }
    .with_keepalive(secs(25));
    net.nodes[AGENT].peers.set_peers(vec![bare], now);
    let err = net.nodes[AGENT]
        .peers
        .handle_ip_packet(&packet, now)
        .unwrap_err();
    assert_eq!(err.reason, DropReason::NoRoute);
    // ... and given back (a wider prefix this time).
    let wide = net.nodes[GW]
        .config_for(true)
        .with_keepalive(secs(25))
        .with_allowed_ip(IpNet::new(IpAddr::V4(gw_ip), 24).unwrap());
    net.nodes[AGENT].peers.set_peers(vec![wide], now);
    net.nodes[AGENT]
        .peers
        .handle_ip_packet(&packet, now)
        .unwrap();
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 4);

    // The gateway stops accepting the agent's address as a source: the next packet from it is
    // dropped, though the same source was accepted just before.
    let now = net.now;
    let other = PeerConfig {
        allowed_ips: vec!["10.99.0.1/32".parse().unwrap()],
        ..net.nodes[AGENT].config_for(false)
    };
    net.nodes[GW].peers.set_peers(vec![other], now);
    net.nodes[AGENT]
        .peers
        .handle_ip_packet(&packet, now)
        .unwrap();
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 4);
    let agent = net.nodes[AGENT].public_key();
    let stats = net.nodes[GW].peers.peer_stats(&agent, net.now).unwrap();
    assert_eq!(stats.drops.get(DropReason::AllowedIpMismatch), 1);
    // Allowed again: accepted again.
    let now = net.now;
    let back = net.nodes[AGENT].config_for(false);
    net.nodes[GW].peers.set_peers(vec![back], now);
    net.nodes[AGENT]
        .peers
        .handle_ip_packet(&packet, now)
        .unwrap();
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 5);
}

/// A gateway that does not know the agent's key: the agent reports it once, when
/// `UNANSWERED_TRIES` initiations went unanswered (here through the backoff retries: virtual
/// time does not move boringtun's own 5 s retry), and reports the end of the episode when the
/// gateway learns the key.
#[test]
fn unanswered_handshakes_are_reported_once_then_recovery() {
    use wg_core::{Event, UNANSWERED_TRIES};
    let mut net = Net::new(33);
    let c = net.seeded_config();
    net.add_node("agent", c);
    let c = net.seeded_config();
    net.add_node("gateway", c);
    let mut gw_cfg = net.nodes[GW].config_for(true);
    gw_cfg.persistent_keepalive = Some(secs(25));
    let now = net.now;
    net.nodes[AGENT].peers.set_peers(vec![gw_cfg], now);
    let gw = net.nodes[GW].public_key();
    let unanswered = |net: &Net| -> Vec<(u32, Duration)> {
        net.events_of(AGENT)
            .into_iter()
            .filter_map(|e| match e {
                Event::HandshakeUnanswered {
                    peer,
                    tries,
                    elapsed,
                } if peer == gw => Some((tries, elapsed)),
                _ => None,
            })
            .collect()
    };
    net.run_for(secs(400));
    let reported = unanswered(&net);
    assert_eq!(reported.len(), 1, "once per episode: {reported:?}");
    assert_eq!(reported[0].0, UNANSWERED_TRIES);
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert!(stats.unanswered_initiations > UNANSWERED_TRIES, "{stats:?}");

    // The gateway learns the agent's key: the next retry completes the handshake.
    let agent_cfg = net.nodes[AGENT].config_for(false);
    let now = net.now;
    net.nodes[GW].peers.set_peers(vec![agent_cfg], now);
    net.run_for(secs(120));
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.state, HandshakeState::Established);
    assert_eq!(stats.unanswered_initiations, 0);
    let events = net.events_of(AGENT);
    let recovered: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::HandshakeRecovered { .. }))
        .collect();
    assert_eq!(recovered.len(), 1, "{events:?}");
    let Event::HandshakeRecovered { tries, elapsed, .. } = recovered[0] else {
        unreachable!()
    };
    assert!(*tries > UNANSWERED_TRIES);
    assert!(
        *elapsed >= secs(400),
        "counted from the first try: {elapsed:?}"
    );
    // Recovery comes right before the handshake's own event.
    let at = events
        .iter()
        .position(|e| matches!(e, Event::HandshakeRecovered { .. }))
        .unwrap();
    assert!(matches!(
        events.get(at + 1),
        Some(Event::HandshakeCompleted { rekey: false, .. })
    ));
    assert_eq!(unanswered(&net).len(), 1, "no new report after recovery");
}
