//! Shared by the wg-core interop tests: the agent side (wg-core's `Peers` driven with a std
//! UDP socket, one datagram per turn) and a gateway site in a namespace linked to the host.

#![allow(dead_code)] // each test file uses a different part

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use testbed::garbage;
use testbed::packet::{icmp_echo_request, parse_icmp_echo};
use testbed::{Daemon, GatewayConfig, GatewayPeer, GatewaySite, TempDir, WireguardGo};
use wg_core::{PeerConfig, Peers, PrivateKey, PublicKey};

pub(crate) const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
pub(crate) const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub(crate) const ECHO_IDENT: u16 = 0x7762;

/// The agent side: wg-core's engine plus a UDP socket (in the host, or made inside a namespace).
pub(crate) struct Agent {
    pub(crate) key: PrivateKey,
    pub(crate) peers: Peers,
    pub(crate) socket: UdpSocket,
    /// Decrypted packets received, in order.
    pub(crate) received: Vec<Vec<u8>>,
    /// The receiver index of the last transport data message that arrived (ours, as the peer
    /// addresses it).
    pub(crate) data_index: Option<u32>,
    pub(crate) buf: Vec<u8>,
}

impl Agent {
    pub(crate) fn new(key: PrivateKey, bind: SocketAddr) -> Self {
        Self::with_socket(key, UdpSocket::bind(bind).unwrap())
    }

    pub(crate) fn with_socket(key: PrivateKey, socket: UdpSocket) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Self {
            peers: Peers::new(key.clone()),
            key,
            socket,
            received: Vec::new(),
            data_index: None,
            buf: vec![0; 65_535],
        }
    }

    pub(crate) fn public_base64(&self) -> String {
        self.key.public_key().to_base64()
    }

    pub(crate) fn add_gateway(&mut self, gateway: &WireguardGo, endpoint: SocketAddr) -> PublicKey {
        let key = PublicKey::from_base64(gateway.public_key()).unwrap();
        self.peers.set_peers(
            vec![
                PeerConfig::new(key)
                    .with_endpoint(endpoint)
                    .with_allowed_ip("10.1.0.1/32".parse().unwrap()),
            ],
            Instant::now(),
        );
        key
    }

    /// One turn of the I/O loop: flush transmits, receive for up to 5 ms, run timers, collect
    /// decrypted packets.
    pub(crate) fn turn(&mut self) {
        while let Some(t) = self.peers.poll_transmit() {
            // A send error (e.g. ICMP unreachable reported late) is what UDP does; keep going.
            let _ = self.socket.send_to(t.payload, t.destination);
        }
        if let Ok((len, from)) = self.socket.recv_from(&mut self.buf) {
            let datagram = &self.buf[..len];
            if datagram[0] == garbage::TRANSPORT_DATA {
                self.data_index = garbage::receiver_index_of(datagram).or(self.data_index);
            }
            let _ = self.peers.handle_datagram(from, datagram, Instant::now());
        }
        let now = Instant::now();
        if self.peers.poll_timeout().is_some_and(|t| t <= now) {
            self.peers.handle_timeout(now);
        }
        while let Some(r) = self.peers.poll_received() {
            self.received.push(r.packet.to_vec());
        }
        while let Some(t) = self.peers.poll_transmit() {
            let _ = self.socket.send_to(t.payload, t.destination);
        }
    }

    /// Runs the loop until `done` holds or `timeout` passes; returns whether `done` held.
    pub(crate) fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.turn();
            if done(self) {
                return true;
            }
        }
        false
    }

    pub(crate) fn send_echo(&mut self, seq: u16, payload: &[u8]) {
        self.send_echo_to(GATEWAY_IP, seq, payload);
    }

    pub(crate) fn send_echo_to(&mut self, dst: Ipv4Addr, seq: u16, payload: &[u8]) {
        let packet = icmp_echo_request(AGENT_IP, dst, ECHO_IDENT, seq, payload);
        self.peers
            .handle_ip_packet(&packet, Instant::now())
            .unwrap();
    }

    /// Whether an echo reply with this sequence number and payload has arrived.
    pub(crate) fn has_reply(&self, seq: u16, payload: &[u8]) -> bool {
        self.has_reply_from(GATEWAY_IP, seq, payload)
    }

    pub(crate) fn has_reply_from(&self, src: Ipv4Addr, seq: u16, payload: &[u8]) -> bool {
        self.received.iter().any(|p| {
            parse_icmp_echo(p).is_some_and(|e| {
                e.is_reply
                    && e.src == src
                    && e.dst == AGENT_IP
                    && e.ident == ECHO_IDENT
                    && e.seq == seq
                    && e.payload == payload
            })
        })
    }

    /// Sends echo `seq` (again every 500 ms) until its reply arrives, for at most `timeout`.
    pub(crate) fn ping(&mut self, seq: u16, payload: &[u8], timeout: Duration) -> bool {
        self.ping_to(GATEWAY_IP, seq, payload, timeout)
    }

    pub(crate) fn ping_to(
        &mut self,
        dst: Ipv4Addr,
        seq: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.send_echo_to(dst, seq, payload);
            if self.run_until(Duration::from_millis(500), |a| {
                a.has_reply_from(dst, seq, payload)
            }) {
                return true;
            }
        }
        false
    }
}

/// A gateway namespace with a veth to the host and wireguard-go at 10.1.0.1/24 that knows the
/// agent's public key but not its endpoint (the agent dials out).
pub(crate) struct Gateway(pub(crate) GatewaySite);

impl std::ops::Deref for Gateway {
    type Target = GatewaySite;
    fn deref(&self) -> &GatewaySite {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut GatewaySite {
        &mut self.0
    }
}

impl Gateway {
    pub(crate) fn start(agent_public: &str) -> Self {
        let config = GatewayConfig::new("10.1.0.1/24")
            .unwrap()
            .with_peer(GatewayPeer::new(agent_public, &["10.1.0.100/32"]));
        Self(GatewaySite::start("wgc", config, None).unwrap())
    }

    /// A gateway for a fresh agent key, and that agent, bound at [`Gateway::agent_bind`] (no
    /// peer yet).
    pub(crate) fn start_with_agent() -> (Self, Agent) {
        let key = PrivateKey::generate();
        let gateway = Self::start(&key.public_key().to_base64());
        let agent = Agent::new(key, gateway.agent_bind());
        (gateway, agent)
    }

    /// curl inside the gateway's namespace to the agent's virtual IP, port 80 (5 s at most):
    /// traffic the gateway starts. Its output goes to `curl.log` in `logs`.
    pub(crate) fn curl_agent(&self, logs: &TempDir) -> Daemon {
        self.ns
            .spawn(
                "curl",
                ["-sS", "--max-time", "5", "http://10.1.0.100:80/"],
                &logs.path().join("curl.log"),
            )
            .unwrap()
    }

    /// Where the agent binds: the host end of the veth.
    pub(crate) fn agent_bind(&self) -> SocketAddr {
        SocketAddr::new(self.agent_side_ip().into(), 0)
    }
}

pub(crate) fn payload(seq: u16, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u16).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}

/// Polls until wg-core's tx equals the gateway's rx and the reverse (in-flight datagrams have
/// landed), at most 2 s; returns `(wg-core rx, wg-core tx, gateway rx, gateway tx)`.
pub(crate) fn settled_counters(
    agent: &mut Agent,
    gw: &Gateway,
    key: &PublicKey,
) -> (u64, u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        agent.turn();
        let ours = agent.peers.peer_stats(key, Instant::now()).unwrap();
        let theirs = gw.wg.peer(&agent.public_base64()).unwrap();
        let counters = (
            ours.rx_bytes,
            ours.tx_bytes,
            theirs.rx_bytes,
            theirs.tx_bytes,
        );
        if (counters.0, counters.1) == (counters.3, counters.2) || Instant::now() > deadline {
            return counters;
        }
    }
}
