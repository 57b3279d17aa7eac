//! Runs the per-packet path N times, for instruction counts under callgrind:
//! `hotpath MODE N` with MODE one of `raw-encap`, `peers-encap`, `raw-decap`, `peers-decap`.
//! Two runs with different N give the per-packet cost without the setup.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use wg_core::{PeerConfig, Peers, PrivateKey};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("peers-encap");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let mut packet = vec![0u8; size];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    packet[12..16].copy_from_slice(&[10, 1, 0, 100]);
    packet[16..20].copy_from_slice(&[10, 1, 0, 1]);
    let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let now = Instant::now();

    let (sa, sb) = (
        x25519::StaticSecret::from([0x11; 32]),
        x25519::StaticSecret::from([0x22; 32]),
    );
    let (pa, pb) = (x25519::PublicKey::from(&sa), x25519::PublicKey::from(&sb));
    let mut ta = Tunn::new(
        sa,
        pb,
        None,
        None,
        1,
        Some(Arc::new(RateLimiter::new(&pa, 100))),
    );
    let mut tb = Tunn::new(
        sb,
        pa,
        None,
        None,
        2,
        Some(Arc::new(RateLimiter::new(&pb, 100))),
    );
    let (mut b1, mut b2) = (vec![0u8; 2048], vec![0u8; 2048]);
    let init = match ta.format_handshake_initiation(&mut b1, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!(),
    };
    let resp = match tb.decapsulate(None, &init, &mut b2) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!(),
    };
    let ka = match ta.decapsulate(None, &resp, &mut b1) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!(),
    };
    let _ = tb.decapsulate(None, &ka, &mut b2);

    let (ka_, kb_) = (
        PrivateKey::from_bytes([0x33; 32]),
        PrivateKey::from_bytes([0x44; 32]),
    );
    let mut a = Peers::new(ka_.clone(), now);
    let mut b = Peers::new(kb_.clone(), now);
    b.set_peers(
        vec![PeerConfig::new(ka_.public_key()).with_allowed_ip("10.1.0.100/32".parse().unwrap())],
        now,
    );
    a.set_peers(
        vec![
            PeerConfig::new(kb_.public_key())
                .with_endpoint(from)
                .with_allowed_ip("10.1.0.1/32".parse().unwrap()),
        ],
        now,
    );
    loop {
        let mut moved = 0;
        let mut v = Vec::new();
        while let Some(t) = a.poll_transmit() {
            v.push(t.payload.to_vec());
        }
        for d in &v {
            let _ = b.handle_datagram(from, d, now);
            moved += 1;
        }
        v.clear();
        while let Some(t) = b.poll_transmit() {
            v.push(t.payload.to_vec());
        }
        for d in &v {
            let _ = a.handle_datagram(from, d, now);
            moved += 1;
        }
        if moved == 0 {
            break;
        }
    }

    let mut out = vec![0u8; 2048];
    match mode {
        "raw-encap" => {
            for _ in 0..n {
                if let TunnResult::WriteToNetwork(d) = ta.encapsulate(black_box(&packet), &mut out)
                {
                    black_box(d.len());
                }
            }
        }
        "peers-encap" => {
            for _ in 0..n {
                a.handle_ip_packet(black_box(&packet), now).unwrap();
                black_box(a.poll_transmit().unwrap().payload.len());
            }
        }
        "raw-decap" => {
            let mut enc = Vec::with_capacity(n);
            for _ in 0..n {
                if let TunnResult::WriteToNetwork(d) = ta.encapsulate(&packet, &mut out) {
                    enc.push(d.to_vec());
                }
            }
            for d in &enc {
                if let TunnResult::WriteToTunnelV4(p, _) =
                    tb.decapsulate(Some(from.ip()), black_box(d), &mut out)
                {
                    black_box(p.len());
                }
            }
        }
        "peers-decap" => {
            let mut enc2 = Vec::with_capacity(n);
            for _ in 0..n {
                a.handle_ip_packet(&packet, now).unwrap();
                enc2.push(a.poll_transmit().unwrap().payload.to_vec());
            }
            for d in &enc2 {
                b.handle_datagram(from, black_box(d), now).unwrap();
                black_box(b.poll_received().unwrap().packet.len());
            }
        }
        _ => panic!("unknown mode"),
    }
}
