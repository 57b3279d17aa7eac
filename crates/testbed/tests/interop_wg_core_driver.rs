//! wg-core's tokio UDP driver (batched receive, GSO send) against a real `wireguard-go` peer in
//! a network namespace: bursts of ICMP echo requests through the tunnel, every reply back, and
//! the two sides' wire counters equal. The same bursts are sent once with GSO trains and once
//! one datagram per send call, and both timings are printed.
//!
//! Root only: without it the test prints one `skipping` line; under `CI=true` it fails.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use testbed::packet::{icmp_echo_request, parse_icmp_echo};
use testbed::{GatewayConfig, GatewayPeer, Netns, WireguardGo};
use wg_core::driver::{RecvBatch, SendBatch, UdpDriver};
use wg_core::{PeerConfig, Peers, PrivateKey, PublicKey};

const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const IDENT: u16 = 0x6472;
/// Echoes in flight at once. Debian's wireguard-go keeps the kernel's small default socket
/// buffers (docs/ARCHITECTURE.md, wg-core), so bursts stay well under what they hold.
const BURST: u16 = 64;
const BURSTS: u16 = 8;
const PAYLOAD: usize = 1000;

struct Loop {
    peers: Peers,
    driver: UdpDriver,
    rx: RecvBatch,
    tx: SendBatch,
    replies: BTreeSet<u16>,
    bad_replies: usize,
}

impl Loop {
    async fn flush(&mut self) {
        while let Some(t) = self.peers.poll_transmit() {
            if !self.tx.push(t.destination, t.payload) {
                self.driver.send(&mut self.tx).await.unwrap();
                assert!(self.tx.push(t.destination, t.payload));
            }
        }
        if !self.tx.is_empty() {
            self.driver.send(&mut self.tx).await.unwrap();
        }
    }

    /// Receives, runs timers and sends until `want` replies are in or `timeout` passes.
    async fn run_until_replies(&mut self, want: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.replies.len() < want && Instant::now() < deadline {
            self.flush().await;
            let wait = self
                .peers
                .poll_timeout()
                .map_or(Duration::from_millis(50), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(50));
            if let Ok(result) = tokio::time::timeout(wait, self.driver.recv(&mut self.rx)).await {
                result.unwrap();
                let now = Instant::now();
                for (from, datagram) in self.rx.iter() {
                    let _ = self.peers.handle_datagram(from, datagram, now);
                }
            }
            let now = Instant::now();
            if self.peers.poll_timeout().is_some_and(|t| t <= now) {
                self.peers.handle_timeout(now);
            }
            while let Some(r) = self.peers.poll_received() {
                match parse_icmp_echo(r.packet) {
                    Some(e)
                        if e.is_reply
                            && e.ident == IDENT
                            && e.src == GATEWAY_IP
                            && e.payload == payload(e.seq) =>
                    {
                        self.replies.insert(e.seq);
                    }
                    _ => self.bad_replies += 1,
                }
            }
        }
        self.replies.len() >= want
    }

    /// Sends `BURSTS` bursts of `BURST` echoes starting at `first_seq`; each burst must come
    /// back whole (a missing reply is sent again, at most twice). Returns the time taken.
    async fn bursts(&mut self, first_seq: u16) -> Duration {
        let start = Instant::now();
        for b in 0..BURSTS {
            let seqs: Vec<u16> = (0..BURST).map(|i| first_seq + b * BURST + i).collect();
            let mut missing = seqs.clone();
            for _attempt in 0..3 {
                let now = Instant::now();
                for &seq in &missing {
                    let packet = icmp_echo_request(AGENT_IP, GATEWAY_IP, IDENT, seq, &payload(seq));
                    self.peers.handle_ip_packet(&packet, now).unwrap();
                }
                let want = self.replies.len() + missing.len();
                self.run_until_replies(want, Duration::from_secs(2)).await;
                missing.retain(|s| !self.replies.contains(s));
                if missing.is_empty() {
                    break;
                }
            }
            assert!(missing.is_empty(), "burst {b}: no reply to {missing:?}");
        }
        start.elapsed()
    }
}

fn payload(seq: u16) -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i as u16 ^ seq) as u8).collect()
}

#[test]
fn interop_wg_core_driver_bursts_through_wireguard_go() {
    testbed::require_gateway_prereqs!();
    let key = PrivateKey::generate();
    let ns = Netns::new("drv").unwrap();
    let link = ns.veth_to_host().unwrap();
    let gateway = WireguardGo::start(
        &ns,
        GatewayConfig::new("10.1.0.1/24")
            .unwrap()
            .with_peer(GatewayPeer::new(
                &key.public_key().to_base64(),
                &["10.1.0.100/32"],
            )),
    )
    .unwrap();
    let gw_key = PublicKey::from_base64(gateway.public_key()).unwrap();
    let endpoint = SocketAddr::new(link.a.ip.into(), gateway.listen_port());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let driver = UdpDriver::bind(SocketAddr::new(link.b.ip.into(), 0)).unwrap();
        let mut peers = Peers::new(key.clone());
        peers.set_peers(
            vec![
                PeerConfig::new(gw_key)
                    .with_endpoint(endpoint)
                    .with_allowed_ip("10.1.0.1/32".parse().unwrap()),
            ],
            Instant::now(),
        );
        let gso_segments = driver.max_gso_segments();
        let mut l = Loop {
            tx: SendBatch::new(&driver),
            rx: RecvBatch::new(),
            peers,
            driver,
            replies: BTreeSet::new(),
            bad_replies: 0,
        };
        // Handshake (the first echo waits inside the engine meanwhile).
        let packet = icmp_echo_request(AGENT_IP, GATEWAY_IP, IDENT, 0, &payload(0));
        l.peers.handle_ip_packet(&packet, Instant::now()).unwrap();
        assert!(
            l.run_until_replies(1, Duration::from_secs(10)).await,
            "no handshake / first reply: {:?}\n{}",
            l.peers.stats(Instant::now()),
            gateway.log()
        );

        let batched = l.bursts(1).await;
        l.tx = SendBatch::with_limits(1, 256);
        let single = l.bursts(1 + BURST * BURSTS).await;
        let total = 1 + 2 * usize::from(BURST * BURSTS);
        assert_eq!(l.replies.len(), total);
        assert_eq!(l.bad_replies, 0);

        // Counters: wg-core's wire bytes equal wireguard-go's, both ways.
        let agent_pub = key.public_key().to_base64();
        let deadline = Instant::now() + Duration::from_secs(2);
        let (ours, theirs) = loop {
            l.run_until_replies(total, Duration::from_millis(20)).await;
            let ours = l.peers.peer_stats(&gw_key, Instant::now()).unwrap();
            let theirs = gateway.peer(&agent_pub).unwrap();
            if (ours.rx_bytes, ours.tx_bytes) == (theirs.tx_bytes, theirs.rx_bytes)
                || Instant::now() > deadline
            {
                break (ours, theirs);
            }
        };
        assert_eq!(
            (ours.rx_bytes, ours.tx_bytes),
            (theirs.tx_bytes, theirs.rx_bytes),
            "wg-core rx/tx vs wireguard-go tx/rx"
        );
        assert_eq!(l.driver.send_errors(), 0);
        eprintln!(
            "{} echoes of {PAYLOAD} bytes in bursts of {BURST}: GSO batches (up to {gso_segments} \
             per send) {batched:?}, one datagram per send {single:?}; wire bytes rx {} tx {}",
            BURST * BURSTS,
            ours.rx_bytes,
            ours.tx_bytes
        );
    });
}
