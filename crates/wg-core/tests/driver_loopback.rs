//! The UDP driver on loopback: batched send (GSO trains) and receive (recvmmsg/GRO), and two
//! engines talking WireGuard through it.

#![cfg(feature = "driver")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wg_core::driver::{RecvBatch, SendBatch, UdpDriver};
use wg_core::{IpNet, PeerConfig, Peers, PrivateKey};

async fn recv_n(driver: &UdpDriver, batch: &mut RecvBatch, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < n {
        tokio::time::timeout_at(deadline, driver.recv(batch))
            .await
            .expect("datagrams arrive within 5 s")
            .unwrap();
        got.extend(batch.iter().map(|(a, d)| (a, d.to_vec())));
    }
    got
}

#[tokio::test]
async fn batches_cross_loopback_in_order() {
    let a = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let b = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (rx, tx) = b.buffer_sizes().unwrap();
    assert!(rx > 0 && tx > 0);
    let to = b.local_addr().unwrap();
    let mut batch = SendBatch::new(&a);
    // 40 equal datagrams (GSO trains where the kernel has GSO), a short tail, mixed sizes.
    let mut sent = Vec::new();
    for i in 0..40u8 {
        sent.push(vec![i; 1_200]);
    }
    sent.push(vec![200; 100]);
    for i in 0..10u8 {
        sent.push(vec![i; 64 + usize::from(i) * 10]);
    }
    for d in &sent {
        assert!(batch.push(to, d));
    }
    assert!(batch.trains() < sent.len() || a.max_gso_segments() == 1);
    a.send(&mut batch).await.unwrap();
    assert!(batch.is_empty());
    let mut rx = RecvBatch::new();
    let got = recv_n(&b, &mut rx, sent.len()).await;
    let from = a.local_addr().unwrap();
    assert!(got.iter().all(|(addr, _)| *addr == from));
    let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
    assert_eq!(got, sent);
    assert_eq!(a.send_errors(), 0);
}

/// The largest train the batch builds is one the kernel takes: 45 datagrams of 1,452 bytes
/// (a 1,420-byte tunnel MTU with WireGuard's headers) in one `sendmsg`, all delivered.
#[tokio::test]
async fn the_largest_gso_train_crosses_loopback() {
    let a = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let b = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = b.local_addr().unwrap();
    let mut batch = SendBatch::new(&a);
    let sent: Vec<Vec<u8>> = (0..45u8).map(|i| vec![i; 1_452]).collect();
    assert!(sent.iter().map(Vec::len).sum::<usize>() <= wg_core::driver::GSO_MAX_BYTES);
    for d in &sent {
        assert!(batch.push(to, d));
    }
    assert!(batch.trains() == 1 || a.max_gso_segments() < 45);
    a.send(&mut batch).await.unwrap();
    let mut rx = RecvBatch::new();
    let got: Vec<Vec<u8>> = recv_n(&b, &mut rx, sent.len())
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(got, sent);
    assert_eq!(a.send_errors(), 0);
}

#[tokio::test]
async fn ipv6_loopback_when_available() {
    let Ok(a) = UdpDriver::bind("[::1]:0".parse().unwrap()) else {
        eprintln!("skipping: no IPv6 loopback on this machine");
        return;
    };
    let b = UdpDriver::bind("[::1]:0".parse().unwrap()).unwrap();
    a.send_to(b.local_addr().unwrap(), b"hello").await.unwrap();
    let mut rx = RecvBatch::new();
    let got = recv_n(&b, &mut rx, 1).await;
    assert_eq!(got[0].1, b"hello");
    assert_eq!(got[0].0, a.local_addr().unwrap());
}

/// One side of a tunnel: the loop an agent runs (receive a batch, feed the engine, drain it,
/// send a batch, sleep until the next timeout).
async fn pump(
    peers: &mut Peers,
    driver: &UdpDriver,
    rx: &mut RecvBatch,
    tx: &mut SendBatch,
    mut until: impl FnMut(&mut Peers) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(t) = peers.poll_transmit() {
            if !tx.push(t.destination, t.payload) {
                break;
            }
        }
        driver.send(tx).await.unwrap();
        if until(peers) {
            return;
        }
        let wake = peers
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(deadline)
            .min(deadline);
        assert!(tokio::time::Instant::now() < deadline, "loop timed out");
        tokio::select! {
            r = driver.recv(rx) => {
                r.unwrap();
                let now = Instant::now();
                for (from, d) in rx.iter() {
                    let _ = peers.handle_datagram(from, d, now);
                }
            }
            _ = tokio::time::sleep_until(wake) => peers.handle_timeout(Instant::now()),
        }
    }
}

#[tokio::test]
async fn two_engines_handshake_and_exchange_data_over_loopback() {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let da = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let db = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let now = Instant::now();
    let mut a = Peers::new(ka.clone());
    let mut b = Peers::new(kb.clone());
    b.set_peers(
        vec![
            PeerConfig::new(ka.public_key())
                .with_allowed_ip("10.1.0.100/32".parse::<IpNet>().unwrap()),
        ],
        now,
    );
    a.set_peers(
        vec![
            PeerConfig::new(kb.public_key())
                .with_endpoint(db.local_addr().unwrap())
                .with_allowed_ip("10.1.0.1/32".parse().unwrap())
                .with_keepalive(Duration::from_secs(25)),
        ],
        now,
    );
    let mut packet = vec![0u8; 1_000];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&1_000u16.to_be_bytes());
    packet[12..16].copy_from_slice(&[10, 1, 0, 100]);
    packet[16..20].copy_from_slice(&[10, 1, 0, 1]);
    for i in 0..100u8 {
        packet[20] = i;
        a.handle_ip_packet(&packet, Instant::now()).unwrap();
    }
    let (mut rxa, mut txa) = (RecvBatch::new(), SendBatch::new(&da));
    let (mut rxb, mut txb) = (RecvBatch::new(), SendBatch::new(&db));
    let mut got = Vec::new();
    let gw = kb.public_key();
    tokio::join!(
        pump(&mut a, &da, &mut rxa, &mut txa, |p| {
            p.peer_stats(&gw, Instant::now()).unwrap().rx_bytes > 0 && p.queued_transmits() == 0
        }),
        pump(&mut b, &db, &mut rxb, &mut txb, |p| {
            while let Some(r) = p.poll_received() {
                got.push(r.packet.to_vec());
            }
            got.len() >= 100
        }),
    );
    assert_eq!(
        got.len(),
        100,
        "queued during the handshake, then delivered"
    );
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p[20], i as u8);
        assert_eq!(p.len(), 1_000);
    }
    let s = b.peer_stats(&ka.public_key(), Instant::now()).unwrap();
    assert_eq!(s.endpoint, Some(da.local_addr().unwrap()));
    assert!(s.rx_bytes >= 100 * 1_032);
}

#[tokio::test]
async fn dual_stack_socket_reports_and_reaches_ipv4_peers_as_ipv4() {
    let Ok(dual) = UdpDriver::bind("[::]:0".parse().unwrap()) else {
        eprintln!("skipping: no IPv6 on this machine");
        return;
    };
    let port = dual.local_addr().unwrap().port();
    let v4 = UdpDriver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    v4.send_to(to, b"ping").await.unwrap();
    let mut rx = RecvBatch::new();
    let got = recv_n(&dual, &mut rx, 1).await;
    assert_eq!(
        got[0].0,
        v4.local_addr().unwrap(),
        "plain IPv4, not ::ffff:127.0.0.1"
    );
    // And an IPv4 destination works through the IPv6 socket.
    dual.send_to(got[0].0, b"pong").await.unwrap();
    let got = recv_n(&v4, &mut rx, 1).await;
    assert_eq!(got[0].1, b"pong");
    assert_eq!(got[0].0.port(), port);
}
