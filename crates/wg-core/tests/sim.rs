//! Two (or more) engines on a simulated network, time jumped to the next timeout.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Net, agent_and_gateway, tag_of};
use wg_core::{DropReason, Event, HandshakeState, PeerChange, PresharedKey};

const AGENT: usize = 0;
const GW: usize = 1;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn up(net: &mut Net) {
    net.run_for(secs(1));
    let gw = net.nodes[GW].public_key();
    let agent = net.nodes[AGENT].public_key();
    let now = net.now;
    assert_eq!(
        net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap().state,
        HandshakeState::Established
    );
    assert_eq!(
        net.nodes[GW].peers.peer_stats(&agent, now).unwrap().state,
        HandshakeState::Established
    );
}

#[test]
fn handshake_then_data_both_ways_with_matching_wire_counters() {
    let mut net = agent_and_gateway(1, Some(secs(25)));
    net.latency = Duration::from_millis(20);
    up(&mut net);
    let gw = net.nodes[GW].public_key();
    let agent = net.nodes[AGENT].public_key();
    assert!(net.events_of(AGENT).contains(&Event::HandshakeCompleted {
        peer: gw,
        rekey: false
    }));
    assert!(
        net.events_of(GW)
            .iter()
            .any(|e| matches!(e, Event::EndpointChanged { peer, .. } if *peer == agent)),
        "the gateway learned the agent's endpoint from its handshake"
    );

    for i in 0..50 {
        net.send_ip(AGENT, GW, 100 + i * 20, i as u32);
        net.send_ip(GW, AGENT, 1_000, 1_000 + i as u32);
    }
    net.run_for(secs(1));
    let to_gw: Vec<u32> = net.nodes[GW].inbox.iter().map(|p| tag_of(&p.2)).collect();
    let to_agent: Vec<u32> = net.nodes[AGENT]
        .inbox
        .iter()
        .map(|p| tag_of(&p.2))
        .collect();
    assert_eq!(to_gw, (0..50).collect::<Vec<_>>());
    assert_eq!(to_agent, (1_000..1_050).collect::<Vec<_>>());
    assert!(net.nodes[GW].inbox.iter().all(|p| p.1 == agent));

    let now = net.now;
    let a = net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap();
    let g = net.nodes[GW].peers.peer_stats(&agent, now).unwrap();
    assert_eq!(a.tx_bytes, g.rx_bytes, "wire bytes agree like `wg show`");
    assert_eq!(a.rx_bytes, g.tx_bytes);
    assert!(a.tx_bytes > 50 * 100, "data counted on the wire");
    assert_eq!(a.handshakes, 1);
    assert!(
        a.handshake_rtt.is_some(),
        "the initiator measured its handshake"
    );
    // Wall time comes from the caller: the handshake happened this long before it.
    let handshake_at = net.nodes[AGENT]
        .events
        .iter()
        .find(|e| matches!(e.1, Event::HandshakeCompleted { .. }))
        .unwrap()
        .0;
    let wall = std::time::UNIX_EPOCH + secs(1_764_000_000);
    assert_eq!(a.last_handshake(wall), Some(wall - (now - handshake_at)));
    assert_eq!(a.last_handshake_unix(wall), Some(1_764_000_000 - 2));
    assert!(a.last_received_age.unwrap() < secs(1));
    assert_eq!(net.nodes[AGENT].peers.drops().total(), 0);
    assert_eq!(net.nodes[GW].peers.drops().total(), 0);
}

#[test]
fn persistent_keepalive_every_interval_and_changeable_live() {
    let mut net = agent_and_gateway(2, Some(secs(25)));
    up(&mut net);
    let t0 = net.now;
    net.run_for(secs(76));
    let ka: Vec<Duration> = net.nodes[AGENT]
        .keepalives()
        .into_iter()
        .filter(|t| *t > t0)
        .map(|t| t - net.start)
        .collect();
    assert_eq!(ka.len(), 3, "{ka:?}");
    for w in ka.windows(2) {
        assert_eq!(w[1] - w[0], secs(25), "{ka:?}");
    }
    assert!(
        net.nodes[GW].keepalives().is_empty(),
        "the gateway has no keepalive"
    );
    // At idle: about one wake-up per second (boringtun's tick), no busy loop.
    let wakeups = net.nodes[AGENT].wakeups.iter().filter(|t| **t > t0).count();
    assert!(wakeups <= 2 * 76, "{wakeups} wake-ups in 76 s");

    // Change the interval on the live session: kept, same index, no handshake (the session
    // stays younger than the 120 s rekey age).
    let gw = net.nodes[GW].public_key();
    let now = net.now;
    let before = net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap();
    let mut cfg = net.nodes[GW].config_for(true);
    cfg.persistent_keepalive = Some(secs(5));
    assert_eq!(
        net.nodes[AGENT].peers.upsert_peer(cfg, now),
        PeerChange::Changed
    );
    let inits = net.nodes[AGENT].initiations().len();
    let t1 = net.now;
    net.run_for(secs(21));
    let after = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(after.receiver_index, before.receiver_index);
    assert_eq!(after.handshakes, before.handshakes);
    assert_eq!(net.nodes[AGENT].initiations().len(), inits);
    let ka = net.nodes[AGENT]
        .keepalives()
        .into_iter()
        .filter(|t| *t > t1)
        .count();
    assert_eq!(ka, 4, "every 5 s for 21 s");
}

#[test]
fn keepalive_only_tunnel_rekeys_before_reject_time() {
    let mut net = agent_and_gateway(3, Some(secs(25)));
    up(&mut net);
    net.run_for(secs(600));
    let gw = net.nodes[GW].public_key();
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert!(stats.handshakes >= 4, "rekeyed: {stats:?}");
    assert_eq!(stats.state, HandshakeState::Established);
    let events = net.events_of(AGENT);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::HandshakeCompleted { rekey: true, .. }))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::SessionExpired { .. })),
        "{events:?}"
    );
    // The renewed session carries data.
    net.send_ip(AGENT, GW, 200, 7);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 1);
}

#[test]
fn idle_session_expires_then_traffic_brings_it_back() {
    let mut net = agent_and_gateway(4, None);
    up(&mut net);
    net.run_for(secs(181));
    let gw = net.nodes[GW].public_key();
    assert!(
        net.events_of(AGENT)
            .contains(&Event::SessionExpired { peer: gw })
    );
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.state, HandshakeState::Idle);
    // Idle without keepalive and without sessions: nothing scheduled beyond the slow tick.
    let before = net.nodes[AGENT].wakeups.len();
    net.run_for(secs(60));
    assert!(net.nodes[AGENT].wakeups.len() - before <= 61);

    net.send_ip(AGENT, GW, 300, 42);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.last().map(|p| tag_of(&p.2)), Some(42));
    assert_eq!(
        net.nodes[AGENT]
            .peers
            .peer_stats(&gw, net.now)
            .unwrap()
            .handshakes,
        2
    );
}

#[test]
fn unanswered_handshakes_back_off_with_jitter_then_recover() {
    let mut net = agent_and_gateway(5, Some(secs(25)));
    net.nodes[GW].down = true;
    net.run_for(secs(400));
    let gw = net.nodes[GW].public_key();
    let events = net.events_of(AGENT);
    let failing: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::HandshakeFailing { .. }))
        .collect();
    assert_eq!(failing.len(), 1, "reported once: {events:?}");
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.state, HandshakeState::Backoff);

    // The first initiation at 0 s, the 90 s limit, then retries 5 -> 60 s with jitter.
    let inits: Vec<Duration> = net.nodes[AGENT]
        .initiations()
        .into_iter()
        .map(|t| t - net.start)
        .collect();
    assert_eq!(inits[0], Duration::ZERO);
    let gaps: Vec<Duration> = inits.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= secs(90) + Duration::from_millis(3_750),
        "{gaps:?}"
    );
    let expected = [10u64, 20, 40, 60, 60, 60];
    for (gap, max) in gaps[1..].iter().zip(expected) {
        let max = secs(max);
        assert!(*gap <= max && *gap >= max.mul_f64(0.75), "{gaps:?}");
    }
    // In backoff nothing ticks: wake-ups only for retries.
    let last = *net.nodes[AGENT].initiations().last().unwrap();
    let wakeups_since = net.nodes[AGENT]
        .wakeups
        .iter()
        .filter(|t| **t > last)
        .count();
    assert!(wakeups_since <= 1, "{wakeups_since}");

    // The gateway comes back: the next retry succeeds.
    net.nodes[GW].down = false;
    net.run_for(secs(61));
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.state, HandshakeState::Established, "{stats:?}");
    assert!(net.events_of(AGENT).contains(&Event::HandshakeCompleted {
        peer: gw,
        rekey: false
    }));
    net.send_ip(AGENT, GW, 100, 9);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 1);
}

#[test]
fn force_handshake_leaves_backoff_at_once() {
    let mut net = agent_and_gateway(6, Some(secs(25)));
    net.nodes[GW].down = true;
    net.run_for(secs(100));
    net.nodes[GW].down = false;
    let gw = net.nodes[GW].public_key();
    let now = net.now;
    assert!(net.nodes[AGENT].peers.force_handshake(&gw, now));
    net.run_for(Duration::from_millis(100));
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.state, HandshakeState::Established);
}

#[test]
fn roaming_follows_authenticated_source() {
    let mut net = agent_and_gateway(7, Some(secs(25)));
    up(&mut net);
    let agent = net.nodes[AGENT].public_key();
    let old = net.nodes[AGENT].addr;
    let new = "198.51.100.9:40000".parse().unwrap();
    net.nodes[AGENT].addr = new; // NAT rebinding
    net.send_ip(AGENT, GW, 100, 1);
    net.run_for(secs(1));
    assert!(net.events_of(GW).contains(&Event::EndpointChanged {
        peer: agent,
        old: Some(old),
        new
    }));
    assert_eq!(
        net.nodes[GW]
            .peers
            .peer_stats(&agent, net.now)
            .unwrap()
            .endpoint,
        Some(new)
    );
    net.send_ip(GW, AGENT, 100, 2);
    net.run_for(secs(1));
    assert_eq!(net.nodes[AGENT].inbox.last().map(|p| tag_of(&p.2)), Some(2));

    // A forged datagram from elsewhere does not move the endpoint.
    let now = net.now;
    let forged = vec![
        4u8, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ];
    let _ = net.nodes[GW]
        .peers
        .handle_datagram("203.0.113.1:1".parse().unwrap(), &forged, now);
    assert_eq!(
        net.nodes[GW]
            .peers
            .peer_stats(&agent, now)
            .unwrap()
            .endpoint,
        Some(new)
    );
}

#[test]
fn restarted_gateway_is_found_by_a_forced_handshake() {
    let mut net = agent_and_gateway(8, Some(secs(25)));
    up(&mut net);
    // The gateway restarts: same key and address, no session.
    let key = net.nodes[GW].key.clone();
    let now = net.now;
    let mut fresh = wg_core::Peers::new(key);
    fresh.set_peers(vec![net.nodes[AGENT].config_for(false)], now);
    net.nodes[GW].peers = fresh;
    net.send_ip(AGENT, GW, 100, 1);
    net.run_for(secs(1));
    assert!(net.nodes[GW].inbox.is_empty());
    assert_eq!(net.nodes[GW].peers.drops().get(DropReason::UnknownIndex), 1);

    let gw = net.nodes[GW].public_key();
    let now = net.now;
    assert!(net.nodes[AGENT].peers.force_handshake(&gw, now));
    net.run_for(Duration::from_millis(100));
    net.send_ip(AGENT, GW, 100, 2);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.last().map(|p| tag_of(&p.2)), Some(2));
    assert_eq!(
        net.nodes[AGENT]
            .peers
            .peer_stats(&gw, net.now)
            .unwrap()
            .handshakes,
        2
    );
}

#[test]
fn runtime_update_applies_the_difference() {
    let mut net = Net::new(9);
    for name in ["agent", "gw1", "gw2", "gw3"] {
        let c = net.seeded_config();
        net.add_node(name, c);
    }
    let now = net.now;
    for gw in 1..4 {
        let agent_cfg = net.nodes[0].config_for(false);
        net.nodes[gw].peers.set_peers(vec![agent_cfg], now);
    }
    let cfg1 = net.nodes[1].config_for(true).with_keepalive(secs(25));
    let cfg2 = net.nodes[2].config_for(true).with_keepalive(secs(25));
    let update = net.nodes[0]
        .peers
        .set_peers(vec![cfg1.clone(), cfg2.clone()], now);
    assert_eq!(update.added.len(), 2);
    net.run_for(secs(1));
    let (k1, k2, k3) = (
        net.nodes[1].public_key(),
        net.nodes[2].public_key(),
        net.nodes[3].public_key(),
    );
    let before1 = net.nodes[0].peers.peer_stats(&k1, net.now).unwrap();
    let before2 = net.nodes[0].peers.peer_stats(&k2, net.now).unwrap();
    assert_eq!(before1.state, HandshakeState::Established);

    // gw1 unchanged, gw2 gets one more allowed prefix, gw3 is new.
    let cfg2b = cfg2.clone().with_allowed_ip("10.9.0.0/16".parse().unwrap());
    let cfg3 = net.nodes[3].config_for(true).with_keepalive(secs(25));
    let sent_before = net.nodes[0].sent.len();
    let now = net.now;
    let update = net.nodes[0]
        .peers
        .set_peers(vec![cfg1.clone(), cfg2b.clone(), cfg3], now);
    assert_eq!(update.unchanged, vec![k1]);
    assert_eq!(update.changed, vec![k2]);
    assert_eq!(update.added, vec![k3]);
    assert!(update.removed.is_empty());
    let new_sends: Vec<_> = net.nodes[0].sent[sent_before..].to_vec();
    net.drain();
    let new_sends: Vec<_> = net.nodes[0].sent[sent_before..]
        .iter()
        .chain(new_sends.iter())
        .cloned()
        .collect();
    assert!(
        new_sends
            .iter()
            .all(|s| s.1 == net.nodes[3].addr && s.2 == 1),
        "only the new gateway's handshake starts: {new_sends:?}"
    );
    net.run_for(secs(1));
    let after1 = net.nodes[0].peers.peer_stats(&k1, net.now).unwrap();
    let after2 = net.nodes[0].peers.peer_stats(&k2, net.now).unwrap();
    assert_eq!(after1.receiver_index, before1.receiver_index);
    assert_eq!(after1.handshakes, before1.handshakes);
    assert_eq!(after2.receiver_index, before2.receiver_index);
    assert_eq!(after2.handshakes, before2.handshakes);
    assert_eq!(
        net.nodes[0].peers.peer_stats(&k3, net.now).unwrap().state,
        HandshakeState::Established
    );
    // The unchanged and the changed sessions still carry data, no packet lost.
    for gw in 1..4 {
        net.send_ip(0, gw, 100, gw as u32);
    }
    // The new prefix routes to gw2.
    let p = common::ipv4_packet(net.nodes[0].virtual_ip, "10.9.1.1".parse().unwrap(), 50, 99);
    let now = net.now;
    net.nodes[0].peers.handle_ip_packet(&p, now).unwrap();
    net.run_for(secs(1));
    for gw in 1..4 {
        assert_eq!(
            net.nodes[gw].inbox.len(),
            1 + usize::from(gw == 2),
            "gw{gw}"
        );
    }
    assert_eq!(tag_of(&net.nodes[2].inbox[1].2), 99);

    // A preshared key change re-creates the tunnel (new index, new handshake)...
    let psk = PresharedKey::generate();
    let now = net.now;
    let agent_cfg = net.nodes[0]
        .config_for(false)
        .with_preshared_key(psk.clone());
    net.nodes[2].peers.set_peers(vec![agent_cfg], now);
    let update = net.nodes[0].peers.set_peers(
        vec![cfg1.clone(), cfg2b.clone().with_preshared_key(psk)],
        now,
    );
    // ...and the gateway missing from the list is removed.
    assert_eq!(update.removed, vec![k3]);
    assert_eq!(update.changed, vec![k2]);
    net.run_for(secs(1));
    let rekeyed = net.nodes[0].peers.peer_stats(&k2, net.now).unwrap();
    assert_ne!(rekeyed.receiver_index, before2.receiver_index);
    assert_eq!(rekeyed.state, HandshakeState::Established);
    assert!(net.nodes[0].peers.peer_stats(&k3, net.now).is_none());
    net.send_ip(0, 2, 100, 5);
    net.run_for(secs(1));
    assert_eq!(net.nodes[2].inbox.last().map(|p| tag_of(&p.2)), Some(5));
    // Traffic to the removed gateway has no route.
    let p = common::ipv4_packet(net.nodes[0].virtual_ip, net.nodes[3].virtual_ip, 50, 1);
    let now = net.now;
    let err = net.nodes[0].peers.handle_ip_packet(&p, now).unwrap_err();
    assert_eq!(err.reason, DropReason::NoRoute);
}

#[test]
fn loss_reordering_and_mtu() {
    let mut net = agent_and_gateway(10, Some(secs(25)));
    net.latency = Duration::from_millis(15);
    net.loss = 0.1;
    net.reorder = 0.3;
    net.mtu = 1_200;
    // Lost initiations are retried by wg-core's schedule; give it time.
    let gw = net.nodes[GW].public_key();
    for _ in 0..20 {
        net.run_for(secs(60));
        if net.nodes[AGENT]
            .peers
            .peer_stats(&gw, net.now)
            .unwrap()
            .state
            == HandshakeState::Established
            && !net.nodes[GW].events.is_empty()
        {
            break;
        }
    }
    for i in 0..400 {
        // Every fourth packet is too big for the path MTU once encrypted.
        let len = if i % 4 == 0 { 1_180 } else { 500 };
        net.send_ip(AGENT, GW, len, i);
    }
    net.run_for(secs(2));
    let got: Vec<u32> = net.nodes[GW].inbox.iter().map(|p| tag_of(&p.2)).collect();
    assert!(
        got.iter().all(|t| t % 4 != 0),
        "oversized datagrams never arrive"
    );
    assert!(
        got.len() > 200 && got.len() < 300,
        "about 90% of 300: {}",
        got.len()
    );
    assert!(
        got.windows(2).any(|w| w[0] > w[1]),
        "some reordering happened"
    );
    let drops = net.nodes[GW].peers.drops();
    assert_eq!(
        drops.get(DropReason::Replay),
        0,
        "reordering within the window is fine"
    );
}

#[test]
fn oversized_datagrams_are_dropped_before_boringtun() {
    let mut net = Net::new(11);
    let c = net.seeded_config();
    net.add_node("agent", c);
    let mut c = net.seeded_config();
    c.max_datagram_size = 600;
    net.add_node("gateway", c);
    let now = net.now;
    let agent_cfg = net.nodes[0].config_for(false);
    net.nodes[1].peers.set_peers(vec![agent_cfg], now);
    let gw_cfg = net.nodes[1].config_for(true);
    net.nodes[0].peers.set_peers(vec![gw_cfg], now);
    net.run_for(secs(1));
    net.send_ip(AGENT, GW, 1_000, 1);
    net.send_ip(AGENT, GW, 100, 2);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 1);
    assert_eq!(net.nodes[GW].peers.drops().get(DropReason::TooBig), 1);
}

#[test]
fn source_outside_allowed_ips_is_dropped() {
    let mut net = agent_and_gateway(12, Some(secs(25)));
    up(&mut net);
    // The gateway sends from an address the agent does not allow for it.
    let agent_key = net.nodes[AGENT].public_key();
    let mut cfg = net.nodes[AGENT].config_for(false);
    cfg.allowed_ips.push("10.66.0.0/16".parse().unwrap());
    let now = net.now;
    assert_eq!(
        net.nodes[GW].peers.upsert_peer(cfg, now),
        PeerChange::Changed
    );
    let p = common::ipv4_packet(
        "10.77.0.1".parse().unwrap(),
        "10.66.0.5".parse().unwrap(),
        40,
        1,
    );
    // Route 10.66/16 -> agent on the gateway, but the agent allows only 10.1.0.2 from it.
    net.nodes[GW].peers.handle_ip_packet(&p, now).unwrap();
    net.run_for(secs(1));
    assert!(net.nodes[AGENT].inbox.is_empty());
    let gw = net.nodes[GW].public_key();
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.drops.get(DropReason::AllowedIpMismatch), 1);
    assert_eq!(
        net.nodes[AGENT]
            .peers
            .drops()
            .get(DropReason::AllowedIpMismatch),
        1
    );
    let _ = agent_key;
}

#[test]
fn initiation_flood_gets_cookie_replies() {
    let mut net = Net::new(13);
    let c = net.seeded_config();
    net.add_node("agent", c);
    let mut c = net.seeded_config();
    c.handshake_rate_limit = 1;
    net.add_node("gateway", c);
    let now = net.now;
    let agent_cfg = net.nodes[0].config_for(false);
    net.nodes[1].peers.set_peers(vec![agent_cfg], now);
    let gw_cfg = net.nodes[1].config_for(true);
    net.nodes[0].peers.set_peers(vec![gw_cfg], now);
    let gw = net.nodes[1].public_key();
    // A burst of forced initiations within one second.
    for _ in 0..5 {
        let now = net.now;
        net.nodes[0].peers.force_handshake(&gw, now);
        net.drain();
    }
    net.run_for(Duration::from_millis(100));
    let drops = net.nodes[1].peers.drops();
    assert!(drops.get(DropReason::UnderLoad) >= 1, "{drops:?}");
    let cookies = net.nodes[1].sent.iter().filter(|s| s.2 == 3).count();
    assert_eq!(cookies as u64, drops.get(DropReason::UnderLoad));
}

#[test]
fn new_endpoint_in_backoff_is_tried_at_once() {
    let mut net = Net::new(14);
    let c = net.seeded_config();
    net.add_node("agent", c);
    let c = net.seeded_config();
    net.add_node("gateway", c);
    let now = net.now;
    let agent_cfg = net.nodes[AGENT].config_for(false);
    net.nodes[GW].peers.set_peers(vec![agent_cfg], now);
    // The configured address is wrong (nothing there); the gateway is really elsewhere.
    let mut gw_cfg = net.nodes[GW].config_for(true).with_keepalive(secs(25));
    gw_cfg.endpoint = Some("203.0.113.50:51820".parse().unwrap());
    net.nodes[AGENT].peers.set_peers(vec![gw_cfg], now);
    let gw = net.nodes[GW].public_key();
    let real = net.nodes[GW].addr;
    net.run_for(secs(100));
    assert_eq!(
        net.nodes[AGENT]
            .peers
            .peer_stats(&gw, net.now)
            .unwrap()
            .state,
        HandshakeState::Backoff
    );
    // DNS re-resolved: the retry goes out at the next timeout, not after the backoff delay.
    assert!(net.nodes[AGENT].peers.set_endpoint(&gw, real));
    assert!(net.nodes[AGENT].peers.poll_timeout().unwrap() <= net.now);
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.nodes[AGENT]
            .peers
            .peer_stats(&gw, net.now)
            .unwrap()
            .state,
        HandshakeState::Established
    );
}

#[test]
fn ipv4_mapped_sources_are_the_same_endpoint() {
    let mut net = agent_and_gateway(15, Some(secs(25)));
    up(&mut net);
    // The gateway's socket is dual-stack: the agent's datagrams look IPv4-mapped there.
    let agent = net.nodes[AGENT].public_key();
    let v4 = net.nodes[AGENT].addr;
    let SocketAddr::V4(a) = v4 else {
        unreachable!()
    };
    let mapped = SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port());
    let p = common::ipv4_packet(net.nodes[AGENT].virtual_ip, net.nodes[GW].virtual_ip, 10, 1);
    let now = net.now;
    net.nodes[AGENT].peers.handle_ip_packet(&p, now).unwrap();
    let d = net.nodes[AGENT]
        .peers
        .poll_transmit()
        .unwrap()
        .payload
        .to_vec();
    net.nodes[GW]
        .peers
        .handle_datagram(mapped, &d, now)
        .unwrap();
    let stats = net.nodes[GW].peers.peer_stats(&agent, now).unwrap();
    assert_eq!(stats.endpoint, Some(v4));
    let roams = net
        .events_of(GW)
        .iter()
        .filter(|e| matches!(e, Event::EndpointChanged { .. }))
        .count();
    assert_eq!(roams, 1, "only the first contact");
}

/// The gateway initiates a handshake with the agent; returns that initiation as captured on
/// the path, after the handshake completed.
fn capture_gateway_initiation(net: &mut Net) -> Vec<u8> {
    up(net);
    let agent = net.nodes[AGENT].public_key();
    let now = net.now;
    assert!(net.nodes[GW].peers.force_handshake(&agent, now));
    let before = net.nodes[GW].sent_payloads.len();
    net.run_for(secs(1));
    let init = net.nodes[GW].sent_payloads[before..]
        .iter()
        .find(|p| p[0] == 1)
        .cloned()
        .expect("the gateway sent an initiation");
    let gw = net.nodes[GW].public_key();
    let stats = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(stats.handshakes, 2, "the gateway's handshake completed");
    init
}

/// Replays `init` to the agent from an address on the path and checks it changed nothing.
fn assert_replay_ignored(net: &mut Net, init: &[u8]) {
    let gw = net.nodes[GW].public_key();
    let attacker: SocketAddr = "203.0.113.66:40000".parse().unwrap();
    let now = net.now;
    let before = net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap();
    let events = net.nodes[AGENT].events.len();
    let sent = net.nodes[AGENT].sent.len();
    let _ = net.nodes[AGENT].peers.handle_datagram(attacker, init, now);
    net.drain();
    net.run_for(secs(5));
    let to_attacker = net.nodes[AGENT].sent[sent..]
        .iter()
        .filter(|s| s.1 == attacker)
        .count();
    assert_eq!(to_attacker, 0, "nothing is sent to the replaying address");
    let after = net.nodes[AGENT].peers.peer_stats(&gw, net.now).unwrap();
    assert_eq!(after.endpoint, before.endpoint, "the endpoint did not move");
    assert_eq!(after.handshakes, before.handshakes);
    let new_events: Vec<&Event> = net.nodes[AGENT].events[events..]
        .iter()
        .map(|e| &e.1)
        .collect();
    assert!(
        !new_events.iter().any(|e| matches!(
            e,
            Event::EndpointChanged { .. } | Event::HandshakeCompleted { .. }
        )),
        "{new_events:?}"
    );
    assert_eq!(after.drops.get(DropReason::Replay), 1, "{after:?}");
}

#[test]
fn replayed_initiation_after_session_expiry_does_not_move_the_gateway() {
    let mut net = agent_and_gateway(16, None);
    let init = capture_gateway_initiation(&mut net);
    // The session expires (the agent re-creates its tunnel).
    net.run_for(secs(181));
    let gw = net.nodes[GW].public_key();
    assert!(
        net.events_of(AGENT)
            .contains(&Event::SessionExpired { peer: gw })
    );
    assert_replay_ignored(&mut net, &init);
}

#[test]
fn replayed_initiation_after_psk_change_does_not_move_the_gateway() {
    let mut net = agent_and_gateway(17, None);
    let init = capture_gateway_initiation(&mut net);
    // A new preshared key on the agent re-creates its tunnel; the gateway is not told.
    let now = net.now;
    let cfg = net.nodes[GW]
        .config_for(true)
        .with_preshared_key(PresharedKey::from_bytes([7; 32]));
    assert_eq!(
        net.nodes[AGENT].peers.upsert_peer(cfg, now),
        PeerChange::Rekeyed
    );
    net.run_for(secs(1));
    assert_replay_ignored(&mut net, &init);
}
