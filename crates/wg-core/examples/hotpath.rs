//! Runs one per-packet path N times, for instruction counts under callgrind:
//! `hotpath MODE N SIZE` with MODE one of `raw-encap`, `peers-encap`, `raw-decap`, `peers-decap`.
//!
//! The measured loop is the function `measure`, alone: run callgrind with
//! `--collect-atstart=no --toggle-collect='*measure*'` and divide the collected count by N
//! (setup, handshakes and the encryption of the datagrams a decap loop consumes are not
//! counted). `crates/wg-core/callgrind.sh` does this for every mode and size. The setup is the
//! criterion bench's (`benches/benches/wg_core.rs`): the sending engine has five peers, so
//! routing has work; raw `Tunn`s are the baseline.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use wg_core::{PeerConfig, Peers, PrivateKey};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("peers-encap");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let size = size.max(20);
    let mut packet = vec![0u8; size];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[10, 1, 0, 100]);
    packet[16..20].copy_from_slice(&[10, 1, 0, 1]);
    let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let now = Instant::now();
    let (mut ta, mut tb) = tunnels();
    let (mut a, mut b) = engines(now);
    let mut out = vec![0u8; 2048];

    let input = match mode {
        "raw-encap" | "peers-encap" => Input::Packet(&packet),
        "raw-decap" => Input::Datagrams(
            (0..n)
                .map(|_| match ta.encapsulate(&packet, &mut out) {
                    TunnResult::WriteToNetwork(d) => d.to_vec(),
                    _ => panic!("encapsulate"),
                })
                .collect(),
        ),
        "peers-decap" => Input::Datagrams(
            (0..n)
                .map(|_| {
                    a.handle_ip_packet(&packet, now).unwrap();
                    a.poll_transmit().unwrap().payload.to_vec()
                })
                .collect(),
        ),
        _ => panic!("unknown mode {mode}"),
    };
    let mut ctx = Ctx {
        ta: &mut ta,
        tb: &mut tb,
        a: &mut a,
        b: &mut b,
        out: &mut out,
        from,
        now,
    };
    let total = measure(mode, n, &input, &mut ctx);
    assert_eq!(total, n, "every packet went through");
}

enum Input<'a> {
    Packet(&'a [u8]),
    Datagrams(Vec<Vec<u8>>),
}

struct Ctx<'a> {
    ta: &'a mut Tunn,
    tb: &'a mut Tunn,
    a: &'a mut Peers,
    b: &'a mut Peers,
    out: &'a mut [u8],
    from: SocketAddr,
    now: Instant,
}

/// The measured loops; returns how many packets came out.
#[inline(never)]
fn measure(mode: &str, n: usize, input: &Input<'_>, c: &mut Ctx<'_>) -> usize {
    let mut done = 0;
    match (mode, input) {
        ("raw-encap", Input::Packet(p)) => {
            for _ in 0..n {
                if let TunnResult::WriteToNetwork(d) = c.ta.encapsulate(black_box(p), c.out) {
                    black_box(d.len());
                    done += 1;
                }
            }
        }
        ("peers-encap", Input::Packet(p)) => {
            for _ in 0..n {
                if c.a.handle_ip_packet(black_box(p), c.now).is_ok()
                    && let Some(t) = c.a.poll_transmit()
                {
                    black_box(t.payload.len());
                    done += 1;
                }
            }
        }
        ("raw-decap", Input::Datagrams(ds)) => {
            for d in ds {
                if let TunnResult::WriteToTunnelV4(p, _) =
                    c.tb.decapsulate(Some(c.from.ip()), black_box(d), c.out)
                {
                    black_box(p.len());
                    done += 1;
                }
            }
        }
        ("peers-decap", Input::Datagrams(ds)) => {
            for d in ds {
                if c.b.handle_datagram(c.from, black_box(d), c.now).is_ok()
                    && let Some(r) = c.b.poll_received()
                {
                    black_box(r.packet.len());
                    done += 1;
                }
            }
        }
        _ => {}
    }
    done
}

/// Two raw tunnels with an established session.
fn tunnels() -> (Tunn, Tunn) {
    let (sa, sb) = (
        x25519::StaticSecret::from([0x11; 32]),
        x25519::StaticSecret::from([0x22; 32]),
    );
    let (pa, pb) = (x25519::PublicKey::from(&sa), x25519::PublicKey::from(&sb));
    let la = Arc::new(RateLimiter::new(&pa, 100));
    let lb = Arc::new(RateLimiter::new(&pb, 100));
    let mut ta = Tunn::new(sa, pb, None, None, 1, Some(la));
    let mut tb = Tunn::new(sb, pa, None, None, 2, Some(lb));
    let (mut b1, mut b2) = (vec![0u8; 2048], vec![0u8; 2048]);
    let init = match ta.format_handshake_initiation(&mut b1, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("initiation"),
    };
    let resp = match tb.decapsulate(None, &init, &mut b2) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("response"),
    };
    let ka = match ta.decapsulate(None, &resp, &mut b1) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("keepalive"),
    };
    let _ = tb.decapsulate(None, &ka, &mut b2);
    (ta, tb)
}

/// Two engines with an established session; A has four more peers, as in the criterion bench.
fn engines(now: Instant) -> (Peers, Peers) {
    let (ka, kb) = (
        PrivateKey::from_bytes([0x33; 32]),
        PrivateKey::from_bytes([0x44; 32]),
    );
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "192.0.2.1:51820".parse().unwrap(),
        "192.0.2.2:51820".parse().unwrap(),
    );
    let mut a = Peers::new(ka.clone());
    let mut b = Peers::new(kb.clone());
    b.set_peers(
        vec![PeerConfig::new(ka.public_key()).with_allowed_ip("10.1.0.100/32".parse().unwrap())],
        now,
    );
    let mut configs = vec![
        PeerConfig::new(kb.public_key())
            .with_endpoint(b_addr)
            .with_allowed_ip("10.1.0.1/32".parse().unwrap())
            .with_keepalive(Duration::from_secs(25)),
    ];
    for i in 2..6u8 {
        configs.push(
            PeerConfig::new(PrivateKey::from_bytes([0x50 + i; 32]).public_key())
                .with_allowed_ip(format!("10.1.0.{i}/32").parse().unwrap()),
        );
    }
    a.set_peers(configs, now);
    while pump(&mut a, a_addr, &mut b, now) + pump(&mut b, b_addr, &mut a, now) > 0 {}
    (a, b)
}

/// Moves every queued datagram from one engine to the other.
fn pump(from: &mut Peers, from_addr: SocketAddr, to: &mut Peers, now: Instant) -> usize {
    let mut moved = Vec::new();
    while let Some(t) = from.poll_transmit() {
        moved.push(t.payload.to_vec());
    }
    for d in &moved {
        let _ = to.handle_datagram(from_addr, d, now);
    }
    while to.poll_received().is_some() {}
    moved.len()
}
