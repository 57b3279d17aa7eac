//! Random, truncated and oversized datagrams of every size up to 65,535 bytes never panic; they
//! are dropped and counted. Datagrams carry valid receiver indices so they reach boringtun.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::agent_and_gateway;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wg_core::{DropReason, HandshakeState, Peers};

const AGENT: usize = 0;
const GW: usize = 1;

/// An established pair plus the real datagrams the gateway sent the agent (a handshake
/// response, keepalives, data): their receiver indices route to the agent's live peer.
fn established() -> (common::Net, Vec<Vec<u8>>) {
    let mut net = agent_and_gateway(21, Some(Duration::from_secs(25)));
    net.run_for(Duration::from_secs(1));
    net.send_ip(AGENT, GW, 200, 1);
    net.send_ip(GW, AGENT, 200, 1);
    net.run_for(Duration::from_secs(1));
    net.nodes[AGENT].inbox.clear();
    let mut captured: Vec<Vec<u8>> = net.nodes[GW].sent_payloads.clone();
    // An initiation, as the gateway would send it (captured from the agent, re-addressed by
    // nothing: initiations are routed by the sender's key, so the agent's own is refused).
    captured.extend(
        net.nodes[AGENT]
            .sent_payloads
            .iter()
            .filter(|d| d[0] == 1)
            .cloned(),
    );
    (net, captured)
}

fn feed_all(peers: &mut Peers, from: SocketAddr, datagrams: &[Vec<u8>], now: std::time::Instant) {
    for d in datagrams {
        let _ = peers.handle_datagram(from, d, now);
        while peers.poll_transmit().is_some() {}
        while peers.poll_received().is_some() {}
    }
}

#[test]
fn every_truncation_and_extension_of_real_datagrams_is_dropped() {
    let (mut net, captured) = established();
    assert!(captured.iter().any(|d| d[0] == 1));
    assert!(captured.iter().any(|d| d[0] == 2));
    assert!(captured.iter().any(|d| d[0] == 4 && d.len() > 32));
    let from = net.nodes[GW].addr;
    let now = net.now;
    let mut rng = StdRng::seed_from_u64(5);
    let before = net.nodes[AGENT].peers.drops().total();
    let mut fed = 0u64;
    for d in &captured {
        let mut variants = Vec::new();
        for len in 0..d.len() {
            variants.push(d[..len].to_vec());
        }
        // Extensions to every size class up to the largest UDP payload.
        for len in [d.len() + 1, 1_500, 1_533, 9_000, 65_534, 65_535] {
            let mut v = d.clone();
            v.resize(len, 0);
            rng.fill(&mut v[d.len()..]);
            variants.push(v);
        }
        // The same header with a random body.
        let mut v = d.clone();
        rng.fill(&mut v[8..]);
        variants.push(v);
        fed += variants.len() as u64;
        feed_all(&mut net.nodes[AGENT].peers, from, &variants, now);
    }
    let drops = net.nodes[AGENT].peers.drops();
    assert_eq!(
        drops.total() - before,
        fed,
        "every variant dropped and counted: {drops:?}"
    );
    assert_eq!(net.nodes[AGENT].inbox.len(), 0);
    // The tunnel still works.
    let gw = net.nodes[GW].public_key();
    assert_eq!(
        net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap().state,
        HandshakeState::Established
    );
    net.send_ip(AGENT, GW, 100, 77);
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.nodes[GW].inbox.last().map(|p| common::tag_of(&p.2)),
        Some(77)
    );
}

#[test]
fn heavy_random_datagrams_of_every_size_never_panic() {
    let (mut net, captured) = established();
    let data = captured.iter().find(|d| d[0] == 4).unwrap().clone();
    let from = net.nodes[GW].addr;
    let now = net.now;
    let mut rng = StdRng::seed_from_u64(6);
    let mut buf = vec![0u8; 65_535];
    for len in (0..=65_535usize).step_by(97).chain([65_535]) {
        rng.fill(&mut buf[..len]);
        if len >= 8 && rng.random_bool(0.5) {
            // A data header with the live receiver index: reaches boringtun's decrypt.
            buf[..8].copy_from_slice(&data[..8]);
        } else if len >= 4 {
            buf[0] = rng.random_range(0..6);
            buf[1..4].fill(0);
        }
        let _ = net.nodes[AGENT]
            .peers
            .handle_datagram(from, &buf[..len], now);
    }
    let drops = net.nodes[AGENT].peers.drops();
    assert!(drops.get(DropReason::BadAuth) > 100, "{drops:?}");
    assert!(drops.get(DropReason::Malformed) > 100, "{drops:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_datagrams_are_dropped(
        kind in 0u8..6,
        body in proptest::collection::vec(any::<u8>(), 0..2_000),
        index in any::<u32>(),
    ) {
        let mut net = agent_and_gateway(22, None);
        net.run_for(Duration::from_secs(1));
        let mut d = vec![kind, 0, 0, 0];
        d.extend_from_slice(&index.to_le_bytes());
        d.extend_from_slice(&body);
        let from = net.nodes[GW].addr;
        let now = net.now;
        let before = net.nodes[AGENT].peers.drops().total();
        let result = net.nodes[AGENT].peers.handle_datagram(from, &d, now);
        prop_assert!(result.is_err());
        prop_assert_eq!(net.nodes[AGENT].peers.drops().total(), before + 1);
    }

    #[test]
    fn arbitrary_ip_packets_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..3_000)) {
        let mut net = agent_and_gateway(23, None);
        net.run_for(Duration::from_secs(1));
        let now = net.now;
        let _ = net.nodes[AGENT].peers.handle_ip_packet(&packet, now);
        net.run_for(Duration::from_secs(1));
    }
}
