//! Two stacks joined in memory, directly or through an impaired link.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use netstack::{Netstack, NetstackConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const A: &str = "10.9.0.1";
pub const B: &str = "10.9.0.2";
pub const A6: &str = "fd00::1";
pub const B6: &str = "fd00::2";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn sa(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(s), port)
}

pub fn config(addrs: &[&str]) -> NetstackConfig {
    NetstackConfig::new(addrs.iter().map(|a| ip(a)))
}

/// Impairments of a link direction.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impair {
    pub loss: f64,
    pub reorder: f64,
    pub duplicate: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub seed: u64,
}

pub struct Pair {
    pub a: Netstack,
    pub b: Netstack,
    pumps: Vec<JoinHandle<()>>,
}

impl Pair {
    /// Cuts the link both ways: nothing moves any more.
    pub fn cut(&self) {
        for p in &self.pumps {
            p.abort();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for p in &self.pumps {
            p.abort();
        }
    }
}

pub fn pair_with(ca: NetstackConfig, cb: NetstackConfig, impair: Option<Impair>) -> Pair {
    let a = Netstack::new(ca).expect("stack a");
    let b = Netstack::new(cb).expect("stack b");
    let pumps = vec![
        tokio::spawn(pump(a.clone(), b.clone(), impair)),
        tokio::spawn(pump(
            b.clone(),
            a.clone(),
            impair.map(|i| Impair {
                seed: i.seed ^ 0x5555,
                ..i
            }),
        )),
    ];
    Pair { a, b, pumps }
}

pub fn pair() -> Pair {
    pair_with(config(&[A, A6]), config(&[B, B6]), None)
}

async fn pump(from: Netstack, to: Netstack, impair: Option<Impair>) {
    let mut batch: Vec<Bytes> = Vec::new();
    let Some(imp) = impair else {
        loop {
            from.recv_outbound(&mut batch, 256).await;
            to.push_inbound(&batch);
            batch.clear();
        }
    };
    let mut rng = StdRng::seed_from_u64(imp.seed);
    let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = held.peek().map(|Reverse((t, _, _))| *t);
        tokio::select! {
            _ = from.recv_outbound(&mut batch, 256) => {
                let now = Instant::now();
                for p in batch.drain(..) {
                    if rng.random_bool(imp.loss) {
                        continue;
                    }
                    let copies = if rng.random_bool(imp.duplicate) { 2 } else { 1 };
                    for _ in 0..copies {
                        let mut at = now + imp.delay;
                        if imp.jitter > Duration::ZERO {
                            at += imp.jitter.mul_f64(rng.random::<f64>());
                        }
                        if rng.random_bool(imp.reorder) {
                            at += Duration::from_millis(3);
                        }
                        seq += 1;
                        held.push(Reverse((at, seq, p.to_vec())));
                    }
                }
            }
            _ = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {}
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((t, _, _))) = held.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, _, p))) = held.pop() else {
                break;
            };
            due.push(p);
        }
        if !due.is_empty() {
            to.push_inbound(&due);
        }
    }
}

/// Moves `bytes` each way at once over one connection and checks SHA-256 of both.
pub async fn transfer(p: &Pair, bytes: usize, port: u16) {
    let listener = p.b.listen(sa(B, port)).expect("listen");
    let c = p.a.connect(sa(B, port)).await.expect("connect");
    let (s, _) = listener.accept().await.expect("accept");
    let (c_rd, c_wr) = tokio::io::split(c);
    let (s_rd, s_wr) = tokio::io::split(s);
    let up = tokio::spawn(send(c_wr, bytes, 1));
    let down = tokio::spawn(send(s_wr, bytes, 2));
    let up_rx = tokio::spawn(recv(s_rd));
    let down_rx = tokio::spawn(recv(c_rd));
    let report = |what: &str| format!("{what}: a {:?} b {:?}", p.a.stats(), p.b.stats());
    let up_sent = up.await.unwrap_or_else(|e| panic!("{e} {}", report("up")));
    let down_sent = down
        .await
        .unwrap_or_else(|e| panic!("{e} {}", report("down")));
    let up_got = up_rx
        .await
        .unwrap_or_else(|e| panic!("{e} {}", report("up rx")));
    let down_got = down_rx
        .await
        .unwrap_or_else(|e| panic!("{e} {}", report("down rx")));
    assert_eq!(up_got, (bytes, up_sent));
    assert_eq!(down_got, (bytes, down_sent));
}

async fn send<W: AsyncWriteExt + Unpin>(mut w: W, n: usize, salt: u8) -> [u8; 32] {
    let mut chunk: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 9)) as u8)
        .collect();
    let mut h = Sha256::new();
    let mut left = n;
    let mut round = 0u8;
    while left > 0 {
        chunk[0] = salt;
        chunk[1] = round;
        round = round.wrapping_add(1);
        let k = left.min(chunk.len());
        w.write_all(&chunk[..k]).await.expect("write");
        h.update(&chunk[..k]);
        left -= k;
    }
    w.shutdown().await.expect("shutdown");
    h.finalize().into()
}

async fn recv<R: AsyncReadExt + Unpin>(mut r: R) -> (usize, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 65_536];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    (total, h.finalize().into())
}
