//! A userspace TCP/IP stack on virtual IPs: smoltcp 0.14 on `Medium::Ip`, with tokio
//! sockets.
//!
//! What it does: takes IP packets in ([`Netstack::push_inbound`]) and gives IP packets out
//! ([`Netstack::recv_outbound`]), and in between serves [`TcpListener`], [`TcpStream`]
//! (`AsyncRead + AsyncWrite`), [`UdpSocket`] and ICMP echo ([`Netstack::ping`]) on one
//! IPv4 and/or one IPv6 address. Every queue and table is bounded (see
//! [`NetstackConfig`]), TCP ring memory over all connections too
//! ([`NetstackConfig::tcp_buffer_budget`]); malformed packets are dropped and counted
//! ([`NetstackStats`]).
//!
//! What it does not do: it never sees a key or a UDP socket. Moving its packets through
//! a tunnel (WireGuard) is the caller's job; no TUN device, no root.
//!
//! Layout: two layers. `core/` is sans-IO and knows nothing of tokio (a test reads its
//! files to keep it so): `wire` classifies inbound packets and picks their shard; `shard`
//! is one smoltcp interface and socket set plus the connection table that adds a listen
//! backlog, limits and background close (packets and `now` in; packets, events and the
//! next deadline out), with its timers in one `deadlines` set; `env` is what it shares
//! with the layer above (configuration, clock, counters, budget, listener table) and the
//! events it reports (accepted connections); `sender`, `synq`, `offload`, `autotune` and
//! `buffer` are the connection's sending side, SYN table, segment offload, buffer sizing
//! and ring memory (the crate's only `unsafe`, sound by construction: a socket cannot
//! outlive its mapping). `socket/` is the tokio adapter: `stack` holds the shards, the
//! outbound queue, the accept queues and the driver task that sleeps until the next
//! deadline; `tcp`, `udp` and `icmp` are the sockets.
//!
//! Back-pressure: the outbound queue is bounded (`max_outbound_packets`). When it is full
//! the stack stops emitting until [`Netstack::recv_outbound`] drains it; TCP windows then
//! slow the peers down. [`Netstack::push_inbound`] never waits for it, so one task may move
//! packets both ways between two stacks.
//!
//! ```
//! use std::net::SocketAddr;
//! use netstack::{Netstack, NetstackConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let a = Netstack::new(NetstackConfig::new(["10.0.0.1".parse().unwrap()])).unwrap();
//! let b = Netstack::new(NetstackConfig::new(["10.0.0.2".parse().unwrap()])).unwrap();
//! // Join the two stacks in memory (a tunnel would carry these packets).
//! for (from, to) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
//!     tokio::spawn(async move {
//!         let mut batch = Vec::new();
//!         loop {
//!             from.recv_outbound(&mut batch, 64).await;
//!             to.push_inbound(&batch);
//!             batch.clear();
//!         }
//!     });
//! }
//! let listener = b.listen("10.0.0.2:80".parse().unwrap())?;
//! let mut client = a.connect("10.0.0.2:80".parse().unwrap()).await?;
//! let (mut server, peer) = listener.accept().await?;
//! assert_eq!(peer, client.local_addr());
//! client.write_all(b"ping").await?;
//! client.shutdown().await?;
//! let mut got = Vec::new();
//! server.read_to_end(&mut got).await?;
//! assert_eq!(got, b"ping");
//! # Ok(())
//! # }
//! ```

mod core;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_lossy;
mod socket;

// The core's modules under their short names (`crate::wire`, ...).
use self::core::{
    autotune, buffer, config, deadlines, device, env, offload, sender, shard, stats, synq, time,
    wire,
};

// The socket layer's modules under their short names.
use self::socket::{accept, stack, tcp, udp};

pub use config::{ConfigError, CongestionControl, NetstackConfig};

/// A stream dropped while open is aborted at the latest this many
/// [`NetstackConfig::close_timeout`]s after the drop, even if the peer keeps answering.
pub const CLOSE_HARD_LIMIT_FACTOR: u32 = 4;
/// The smallest TCP ring (each direction) a connection is given when the stack's
/// [`tcp_buffer_budget`](NetstackConfig::tcp_buffer_budget) is more than half taken.
pub const MIN_TCP_RING: usize = 8 << 10;
pub use stack::Netstack;
pub use stats::{DropCounts, DropReason, NetstackStats};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
