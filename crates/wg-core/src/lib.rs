//! WireGuard peers for several gateways, over [boringtun]: a sans-IO engine plus a small tokio
//! UDP driver.
//!
//! # What it does
//!
//! [`Peers`] is a WireGuard device for any number of peers, identified by [`PublicKey`]:
//!
//! - **routing in**: each datagram goes to its peer by receiver index (handshake responses,
//!   cookie replies, data) or, for handshake initiations, by the sender's static key (the shared
//!   rate limiter first, cookie replies under load). The inner source of every decrypted packet
//!   must be in that peer's allowed IPs.
//! - **routing out**: an IP packet goes to the peer whose allowed IPs hold its destination
//!   (longest prefix).
//! - **timers** on its own schedule, with `now` passed in: boringtun's `update_timers` on a
//!   coarse tick (1 s, 250 ms while a handshake runs) for live tunnels only, persistent
//!   keepalive (changeable on a live session), handshake retry with exponential backoff and
//!   jitter after boringtun gives up, session expiry. [`Peers::poll_timeout`] says when to come
//!   back; at idle that is about once a second, never a busy loop.
//! - **runtime updates**: [`Peers::set_peers`] applies the difference; an unchanged peer keeps
//!   its session and receiver index.
//! - **roaming**, **stats** (wire bytes like `wg show`, handshake age, drops by reason) and
//!   **events** (tunnel up, failing, expired, endpoint changed) reported once.
//!
//! The `driver` feature adds [`driver::UdpDriver`]: a UDP socket with batched receive and send
//! (recvmmsg, GRO, GSO through quinn-udp) and reused buffers.
//!
//! # What it does not do
//!
//! No sockets and no clock in the engine, no TUN device, no IP stack, no DNS, no configuration
//! files. The caller owns the I/O loop: feed `handle_*`, then drain every `poll_*`.
//!
//! # Testing
//!
//! `tests/` runs engines on a simulated network (latency, loss, reordering, MTU, virtual time
//! jumped to the next timeout), feeds random and truncated datagrams, and drives the UDP driver
//! over loopback. boringtun's own long timers run on its real clock, so they are tested in
//! `timer-tests/`, a separate workspace that enables boringtun's `mock-instant` (never enable
//! it in a workspace that builds a binary): `cargo test --manifest-path
//! crates/wg-core/timer-tests/Cargo.toml`.
//!
//! # Example
//!
//! Two engines handshake and exchange an IP packet, with datagrams moved in memory:
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use wg_core::{Peers, PeerConfig, PrivateKey};
//!
//! let (a_key, b_key) = (PrivateKey::generate(), PrivateKey::generate());
//! let a_addr: SocketAddr = "127.0.0.1:51001".parse()?;
//! let b_addr: SocketAddr = "127.0.0.1:51002".parse()?;
//! let now = Instant::now();
//!
//! let mut a = Peers::new(a_key.clone());
//! let mut b = Peers::new(b_key.clone());
//! b.set_peers(vec![PeerConfig::new(a_key.public_key()).with_allowed_ip("10.1.0.100/32".parse()?)], now);
//! // Adding a peer with an endpoint starts the handshake at once.
//! a.set_peers(vec![PeerConfig::new(b_key.public_key())
//!     .with_endpoint(b_addr)
//!     .with_allowed_ip("10.1.0.1/32".parse()?)], now);
//!
//! // Move datagrams until both sides are quiet.
//! fn pump(from: &mut Peers, from_addr: SocketAddr, to: &mut Peers, now: Instant) -> usize {
//!     let mut moved = Vec::new();
//!     while let Some(t) = from.poll_transmit() {
//!         moved.push(t.payload.to_vec());
//!     }
//!     for d in &moved {
//!         let _ = to.handle_datagram(from_addr, d, now);
//!     }
//!     moved.len()
//! }
//! while pump(&mut a, a_addr, &mut b, now) + pump(&mut b, b_addr, &mut a, now) > 0 {}
//!
//! // An IPv4 header (20 bytes, no payload) from 10.1.0.100 to 10.1.0.1.
//! let mut ip = [0u8; 20];
//! ip[0] = 0x45;
//! ip[3] = 20;
//! ip[12..16].copy_from_slice(&[10, 1, 0, 100]);
//! ip[16..20].copy_from_slice(&[10, 1, 0, 1]);
//! a.handle_ip_packet(&ip, now)?;
//! pump(&mut a, a_addr, &mut b, now);
//! let got = b.poll_received().expect("decrypted packet");
//! assert_eq!(got.peer, a_key.public_key());
//! assert_eq!(got.packet, &ip[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod buffers;
mod event;
mod initiation;
mod ipnet;
mod keys;
mod lifecycle;
mod peer;
mod peers;
mod stats;
mod wire;

#[cfg(feature = "driver")]
pub mod driver;

pub use event::Event;
pub use lifecycle::UNANSWERED_TRIES;

/// An address in canonical form: IPv4-mapped IPv6 (`[::ffff:192.0.2.1]:51820`, what a
/// dual-stack socket reports for IPv4 peers) becomes plain IPv4, so an endpoint compares equal
/// however the socket saw it.
pub fn canonical(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
pub use ipnet::{IpNet, IpNetError};
pub use keys::{KEY_LEN, KeyError, PresharedKey, PrivateKey, PublicKey};
pub use peer::PeerConfig;
pub use peers::{Config, PacketError, PeerChange, Peers, Received, Transmit, Update};
pub use stats::{DropCounts, DropReason, HandshakeState, PeerStats, Stats};
