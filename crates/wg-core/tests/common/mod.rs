//! A simulated network for wg-core engines: datagrams move in memory with latency, loss,
//! reordering and an MTU, and time jumps to the next event (quinn's `Pair`, smoltcp's netsim).
//!
//! boringtun reads the real clock for its own timers; here virtual time runs far ahead of it,
//! so boringtun's retransmits and rekeys never fire and everything observed comes from wg-core's
//! own schedule, deterministically.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wg_core::{Config, Event, IpNet, PeerConfig, Peers, PrivateKey, PublicKey};

/// One engine and what it produced.
pub struct Node {
    pub name: &'static str,
    pub key: PrivateKey,
    pub peers: Peers,
    pub addr: SocketAddr,
    pub virtual_ip: Ipv4Addr,
    /// Decrypted packets: (time, from peer, packet).
    pub inbox: Vec<(Instant, PublicKey, Vec<u8>)>,
    pub events: Vec<(Instant, Event)>,
    /// Datagrams sent: (time, destination, message type, length).
    pub sent: Vec<(Instant, SocketAddr, u8, usize)>,
    /// The first 64 datagrams sent, as bytes.
    pub sent_payloads: Vec<Vec<u8>>,
    /// Times `handle_timeout` ran.
    pub wakeups: Vec<Instant>,
    /// A node that is down receives nothing (its datagrams are lost).
    pub down: bool,
}

impl Node {
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Initiations sent (message type 1), with their times.
    pub fn initiations(&self) -> Vec<Instant> {
        self.sent.iter().filter(|s| s.2 == 1).map(|s| s.0).collect()
    }

    /// Keepalives sent (data messages of 32 bytes).
    pub fn keepalives(&self) -> Vec<Instant> {
        self.sent
            .iter()
            .filter(|s| s.2 == 4 && s.3 == 32)
            .map(|s| s.0)
            .collect()
    }

    pub fn config_for(&self, endpoint: bool) -> PeerConfig {
        let mut c = PeerConfig::new(self.public_key())
            .with_allowed_ip(IpNet::host(IpAddr::V4(self.virtual_ip)));
        if endpoint {
            c = c.with_endpoint(self.addr);
        }
        c
    }
}

struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The simulated network.
pub struct Net {
    pub nodes: Vec<Node>,
    pub now: Instant,
    pub start: Instant,
    pub latency: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram gets up to 3x extra latency (so later ones overtake it).
    pub reorder: f64,
    /// Datagrams longer than this are lost.
    pub mtu: usize,
    /// Losses caused by `loss`, `mtu` or a down node.
    pub lost: u64,
    rng: StdRng,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Called with every jump of virtual time (the timer tests advance boringtun's mock
    /// clock with it, so both clocks move together).
    pub on_advance: Option<Box<dyn FnMut(Duration)>>,
}

impl Net {
    pub fn new(seed: u64) -> Self {
        let now = Instant::now();
        Self {
            nodes: Vec::new(),
            now,
            start: now,
            latency: Duration::from_millis(10),
            loss: 0.0,
            reorder: 0.0,
            mtu: 65_535,
            lost: 0,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            on_advance: None,
        }
    }

    /// Adds a node at 192.0.2.N:51820 with virtual IP 10.1.0.N.
    pub fn add_node(&mut self, name: &'static str, config: Config) -> usize {
        let n = self.nodes.len() as u8 + 1;
        let key = PrivateKey::generate();
        let peers = Peers::with_config(key.clone(), config);
        self.nodes.push(Node {
            name,
            key,
            peers,
            addr: SocketAddr::from(([192, 0, 2, n], 51820)),
            virtual_ip: Ipv4Addr::new(10, 1, 0, n),
            inbox: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
            sent_payloads: Vec::new(),
            wakeups: Vec::new(),
            down: false,
        });
        self.nodes.len() - 1
    }

    pub fn seeded_config(&mut self) -> Config {
        let mut c = Config::default();
        c.rng_seed = Some(self.rng.random());
        c
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Collects every node's outputs and puts datagrams on the wire.
    pub fn drain(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let from = self.nodes[i].addr;
            let mut out = Vec::new();
            {
                let node = &mut self.nodes[i];
                while let Some(t) = node.peers.poll_transmit() {
                    node.sent
                        .push((now, t.destination, t.payload[0], t.payload.len()));
                    if node.sent_payloads.len() < 64 {
                        node.sent_payloads.push(t.payload.to_vec());
                    }
                    out.push((t.destination, t.payload.to_vec()));
                }
                while let Some(r) = node.peers.poll_received() {
                    node.inbox.push((now, r.peer, r.packet.to_vec()));
                }
                while let Some(e) = node.peers.poll_event() {
                    node.events.push((now, e));
                }
            }
            for (to, bytes) in out {
                self.send(from, to, bytes);
            }
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if bytes.len() > self.mtu || self.rng.random_bool(self.loss) {
            self.lost += 1;
            return;
        }
        let mut delay = self.latency;
        if self.rng.random_bool(self.reorder) {
            delay += self.latency.mul_f64(self.rng.random_range(0.0..3.0));
        }
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at: self.now + delay,
            seq: self.seq,
            from,
            to,
            bytes,
        }));
    }

    fn next_event(&self) -> Option<Instant> {
        let mut next = self.queue.peek().map(|r| r.0.at);
        for node in &self.nodes {
            if let Some(t) = node.peers.poll_timeout() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Runs until `until`, jumping from event to event.
    pub fn run_until(&mut self, until: Instant) {
        self.drain();
        let mut steps = 0u32;
        while self.step(until) {
            steps += 1;
            assert!(steps < 2_000_000, "simulation does not make progress");
        }
        self.advance_to(until);
    }

    /// Jumps to the next event if it is due by `until`, delivers every datagram due then, runs
    /// due timers and drains the outputs. Returns `false` (time unchanged) when nothing is due.
    pub fn step(&mut self, until: Instant) -> bool {
        let Some(next) = self.next_event() else {
            return false;
        };
        if next > until {
            return false;
        }
        self.advance_to(next);
        let now = self.now;
        while self.queue.peek().is_some_and(|r| r.0.at <= now) {
            let Some(Reverse(d)) = self.queue.pop() else {
                break;
            };
            let Some(node) = self.nodes.iter_mut().find(|n| n.addr == d.to) else {
                self.lost += 1;
                continue;
            };
            if node.down {
                self.lost += 1;
                continue;
            }
            let _ = node.peers.handle_datagram(d.from, &d.bytes, now);
        }
        for node in &mut self.nodes {
            if node.peers.poll_timeout().is_some_and(|t| t <= now) {
                node.wakeups.push(now);
                node.peers.handle_timeout(now);
            }
        }
        self.drain();
        true
    }

    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            let d = t - self.now;
            self.now = t;
            if let Some(hook) = self.on_advance.as_mut() {
                hook(d);
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Sends an IPv4/UDP-like packet from node `from` to node `to`'s virtual IP.
    pub fn send_ip(&mut self, from: usize, to: usize, payload_len: usize, tag: u32) {
        let packet = ipv4_packet(
            self.nodes[from].virtual_ip,
            self.nodes[to].virtual_ip,
            payload_len,
            tag,
        );
        let now = self.now;
        let _ = self.nodes[from].peers.handle_ip_packet(&packet, now);
        self.drain();
    }

    pub fn events_of(&self, node: usize) -> Vec<Event> {
        self.nodes[node]
            .events
            .iter()
            .map(|e| e.1.clone())
            .collect()
    }
}

/// A minimal IPv4 packet (protocol 17) with `tag` in the first payload bytes.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize, tag: u32) -> Vec<u8> {
    let total = 20 + payload_len.max(4);
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..24].copy_from_slice(&tag.to_be_bytes());
    p
}

pub fn tag_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[20], packet[21], packet[22], packet[23]])
}

/// An agent (node 0, with endpoints and keepalive) and a gateway (node 1, learns the agent's
/// endpoint from its handshake), configured but not yet run.
pub fn agent_and_gateway(seed: u64, keepalive: Option<Duration>) -> Net {
    let mut net = Net::new(seed);
    let c = net.seeded_config();
    net.add_node("agent", c);
    let c = net.seeded_config();
    net.add_node("gateway", c);
    let now = net.now;
    let agent_cfg = net.nodes[0].config_for(false);
    net.nodes[1].peers.set_peers(vec![agent_cfg], now);
    let mut gw_cfg = net.nodes[1].config_for(true);
    gw_cfg.persistent_keepalive = keepalive;
    net.nodes[0].peers.set_peers(vec![gw_cfg], now);
    net
}
