//! wg-core against a real `wireguard-go` peer when things go wrong: the gateway restarts (a
//! forced handshake finds it again), the path is impaired (relay with delay, jitter, loss,
//! reordering, duplication), garbage arrives during traffic, the gateway roams to a new port.
//!
//! Root only: without it each test prints one `skipping` line; under `CI=true` it fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use testbed::packet::parse_icmp_echo;
use testbed::{ImpairedRelay, Impairment, TempDir, garbage};
use wg_core::{DropReason, HandshakeState};

#[test]
fn interop_wg_core_finds_a_restarted_gateway_with_a_forced_handshake() {
    testbed::require_gateway_prereqs!();
    let (mut gw, mut agent) = Gateway::start_with_agent();
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
    // The agent reaches the relay over the host's own address on the veth.
    let (gw, mut agent) = Gateway::start_with_agent();
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
fn interop_wg_core_survives_garbage_during_traffic() {
    use rand::SeedableRng;
    testbed::require_gateway_prereqs!();
    let (gw, mut agent) = Gateway::start_with_agent();
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
fn interop_wg_core_follows_a_gateway_that_roams() {
    testbed::require_gateway_prereqs!();
    let (mut gw, mut agent) = Gateway::start_with_agent();
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
    let mut curl = gw.curl_agent(&logs);
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
