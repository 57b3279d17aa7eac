//! Random sequences of configuration changes, outages, key changes and time jumps: the engine
//! never asks to be woken again and again for nothing (no busy loop) and never panics.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Net;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wg_core::{PresharedKey, PrivateKey};

/// Runs `steps` random operations on a 3-node network and checks that after every
/// `handle_timeout` the next deadline moved into the future.
fn monkey(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = Net::new(seed);
    net.loss = 0.05;
    for name in ["agent", "gw1", "gw2"] {
        let c = net.seeded_config();
        net.add_node(name, c);
    }
    let now = net.now;
    for gw in 1..3 {
        let agent = net.nodes[0].config_for(false);
        net.nodes[gw].peers.set_peers(vec![agent], now);
    }
    for _ in 0..steps {
        let now = net.now;
        match rng.random_range(0..14) {
            12 | 13 => {
                // A real datagram seen on the wire, replayed or with a few bytes flipped.
                let from = rng.random_range(0..3);
                let to = (from + rng.random_range(1..3)) % 3;
                let sent = &net.nodes[from].sent_payloads;
                if !sent.is_empty() {
                    let mut d = sent[rng.random_range(0..sent.len())].clone();
                    for _ in 0..rng.random_range(0..3) {
                        let i = rng.random_range(0..d.len());
                        d[i] ^= 1 << rng.random_range(0..8);
                    }
                    if rng.random_bool(0.2) {
                        d.truncate(rng.random_range(0..=d.len()));
                    }
                    let src = net.nodes[from].addr;
                    let _ = net.nodes[to].peers.handle_datagram(src, &d, now);
                }
            }
            0 => {
                let mut configs = Vec::new();
                for gw in 1..3 {
                    if rng.random_bool(0.8) {
                        let mut c = net.nodes[gw].config_for(rng.random_bool(0.8));
                        c.persistent_keepalive = match rng.random_range(0..3) {
                            0 => None,
                            1 => Some(Duration::ZERO),
                            _ => Some(Duration::from_secs(rng.random_range(1..30))),
                        };
                        if rng.random_bool(0.1) {
                            c.preshared_key = Some(PresharedKey::from_bytes([7; 32]));
                        }
                        configs.push(c);
                    }
                }
                net.nodes[0].peers.set_peers(configs, now);
            }
            1 => {
                let gw = rng.random_range(1..3);
                let k = net.nodes[gw].public_key();
                net.nodes[0].peers.force_handshake(&k, now);
            }
            2 => {
                let gw = rng.random_range(1..3);
                net.nodes[gw].down = !net.nodes[gw].down;
            }
            3 => {
                let gw = rng.random_range(1..3);
                let k = net.nodes[gw].public_key();
                let addr = if rng.random_bool(0.5) {
                    net.nodes[gw].addr
                } else {
                    "203.0.113.9:9".parse().unwrap()
                };
                net.nodes[0].peers.set_endpoint(&k, addr);
            }
            4 => {
                let key = PrivateKey::generate();
                net.nodes[0].peers.set_private_key(key.clone(), now);
                net.nodes[0].key = key;
                for gw in 1..3 {
                    let agent = net.nodes[0].config_for(false);
                    net.nodes[gw].peers.set_peers(vec![agent], now);
                }
            }
            5 | 6 => {
                let gw = rng.random_range(1..3);
                net.send_ip(0, gw, rng.random_range(0..1_400), 1);
                net.send_ip(gw, 0, rng.random_range(0..1_400), 2);
            }
            _ => {
                let d = Duration::from_millis(rng.random_range(1..200_000));
                net.run_for(d);
            }
        }
        net.drain();
        // The invariant: handling a due timeout pushes the deadline past `now`.
        for node in &mut net.nodes {
            if let Some(t) = node.peers.poll_timeout()
                && t <= net.now
            {
                node.peers.handle_timeout(net.now);
                let next = node.peers.poll_timeout();
                assert!(
                    next.is_none_or(|n| n > net.now),
                    "seed {seed}: {} still due after handle_timeout",
                    node.name
                );
            }
        }
        net.drain();
        for node in &net.nodes {
            let _ = node.peers.stats(net.now);
        }
    }
}

#[test]
fn random_operations_never_busy_loop() {
    for seed in 0..16 {
        monkey(seed, 400);
    }
}
