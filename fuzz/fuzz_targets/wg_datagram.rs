//! Datagrams from the network into a wg-core engine that holds a live session.
//!
//! Two engines (`a` = a gateway, `b` = the agent under attack) complete a handshake in memory
//! once per process; every input then reaches `b` in one of these shapes, picked by its first
//! byte:
//!
//! - `0`: the rest is a raw datagram from `a`'s address (any message type, any length);
//! - `1`: the same from an unknown address (roaming must need authentication);
//! - `2`: a data message on `b`'s live receiver index, the rest being counter and ciphertext,
//!   so it reaches boringtun's replay check and decryption;
//! - `3`: the rest is an IP packet that `a` encrypts for real (destination forced to `b`'s
//!   virtual IP), so decrypted packets reach `b`'s allowed-IP check and its received queue;
//! - `4`: time passes (two bytes of milliseconds) and both engines run their timers.
//!
//! Outputs are drained after every input, as the runtime does. A panic is a bug.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wg_core::{Config, IpNet, PeerConfig, Peers, PrivateKey};

const A_VIP4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const B_VIP4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
const A_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
/// Rebuild the pair after this many inputs or this much virtual time (well before the session
/// would need re-keying), so data messages keep reaching decryption.
const INPUTS_PER_PAIR: u32 = 20_000;
const TIME_PER_PAIR: Duration = Duration::from_secs(60);

struct Pair {
    a: Peers,
    b: Peers,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    /// The first 8 bytes of a real data message from `a` to `b`: type and `b`'s receiver index.
    data_header: [u8; 8],
    now: Instant,
    start: Instant,
    inputs: u32,
}

impl Pair {
    fn new() -> Self {
        let a_key = PrivateKey::from_bytes([0x11; 32]);
        let b_key = PrivateKey::from_bytes([0x22; 32]);
        let a_addr = SocketAddr::from(([127, 0, 0, 1], 51_001));
        let b_addr = SocketAddr::from(([127, 0, 0, 1], 51_002));
        let now = Instant::now();
        let mut config = Config::default();
        config.rng_seed = Some(7);
        let mut a = Peers::with_config(a_key.clone(), config.clone());
        let mut b = Peers::with_config(b_key.clone(), config);
        b.set_peers(
            vec![
                PeerConfig::new(a_key.public_key())
                    .with_endpoint(a_addr)
                    .with_allowed_ip(IpNet::host(IpAddr::V4(A_VIP4)))
                    .with_allowed_ip(IpNet::host(IpAddr::V6(A_VIP6))),
            ],
            now,
        );
        a.set_peers(
            vec![
                PeerConfig::new(b_key.public_key())
                    .with_endpoint(b_addr)
                    .with_allowed_ip(IpNet::host(IpAddr::V4(B_VIP4)))
                    .with_allowed_ip(IpNet::host(IpAddr::V6(B_VIP6))),
            ],
            now,
        );
        let mut pair = Pair {
            a,
            b,
            a_addr,
            b_addr,
            data_header: [0; 8],
            now,
            start: now,
            inputs: 0,
        };
        for _ in 0..16 {
            if pair.pump() == 0 {
                break;
            }
        }
        // One real data message a -> b gives b's receiver index.
        let probe = ipv4_header(A_VIP4, B_VIP4);
        pair.a
            .handle_ip_packet(&probe, now)
            .expect("the session is up after the handshake");
        let t = pair.a.poll_transmit().expect("a data message");
        assert_eq!(t.payload[0], 4, "a data message");
        pair.data_header.copy_from_slice(&t.payload[..8]);
        pair.pump();
        pair
    }

    /// Moves every queued datagram both ways once and drains the other outputs; returns how
    /// many datagrams moved.
    fn pump(&mut self) -> usize {
        let now = self.now;
        let mut moved = 0;
        let mut batch = Vec::new();
        while let Some(t) = self.a.poll_transmit() {
            batch.push(t.payload.to_vec());
        }
        moved += batch.len();
        for d in batch.drain(..) {
            let _ = self.b.handle_datagram(self.a_addr, &d, now);
        }
        while let Some(t) = self.b.poll_transmit() {
            batch.push(t.payload.to_vec());
        }
        moved += batch.len();
        for d in batch.drain(..) {
            let _ = self.a.handle_datagram(self.b_addr, &d, now);
        }
        for engine in [&mut self.a, &mut self.b] {
            while let Some(r) = engine.poll_received() {
                std::hint::black_box(r.packet.len());
            }
            while engine.poll_event().is_some() {}
            let _ = engine.poll_timeout();
        }
        moved
    }

    fn input(&mut self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let now = self.now;
        match mode % 5 {
            0 => {
                let _ = self.b.handle_datagram(self.a_addr, rest, now);
            }
            1 => {
                let stranger = SocketAddr::from(([127, 0, 0, 9], 40_000));
                let _ = self.b.handle_datagram(stranger, rest, now);
            }
            2 => {
                let mut datagram = self.data_header.to_vec();
                datagram.extend_from_slice(rest);
                let _ = self.b.handle_datagram(self.a_addr, &datagram, now);
            }
            3 => {
                let mut packet = rest.to_vec();
                match packet.first().map(|v| v >> 4) {
                    Some(4) if packet.len() >= 20 => {
                        packet[16..20].copy_from_slice(&B_VIP4.octets());
                    }
                    Some(6) if packet.len() >= 40 => {
                        packet[24..40].copy_from_slice(&B_VIP6.octets());
                    }
                    _ => {}
                }
                let _ = self.a.handle_ip_packet(&packet, now);
            }
            _ => {
                let ms = rest
                    .get(..2)
                    .map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])) % 2_000);
                self.now += Duration::from_millis(ms);
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
        }
        self.pump();
        // The engine's memory is bounded by its queues, whatever arrives.
        assert!(self.b.queued_transmits() <= 1_024);
        assert!(self.b.queued_received() <= 1_024);
        self.inputs += 1;
    }
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[3] = 20;
    ip[8] = 64;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip
}

static PAIR: Mutex<Option<Pair>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = PAIR.lock().unwrap_or_else(|e| e.into_inner());
    if guard
        .as_ref()
        .is_none_or(|p| p.inputs >= INPUTS_PER_PAIR || p.now - p.start > TIME_PER_PAIR)
    {
        *guard = Some(Pair::new());
    }
    if let Some(pair) = guard.as_mut() {
        pair.input(data);
    }
});
