//! UDP sockets on the virtual IPs (all in shard 0).

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use crate::stack::{Netstack, Shared};

/// UDP and IP header bytes: a datagram's payload is at most `mtu` minus these.
const UDP_IPV4_OVERHEAD: usize = 20 + 8;
const UDP_IPV6_OVERHEAD: usize = 40 + 8;

impl Netstack {
    /// Binds a UDP socket on `addr` (one of the stack's addresses or unspecified; port 0
    /// picks a free ephemeral port). Datagrams to a port nobody bound are dropped and
    /// counted.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let shared = &self.shared;
        let ip = shared.local_ip(addr.ip())?;
        let config = &shared.config;
        let mut shard = shared.lock(0);
        let port = if addr.port() != 0 {
            if shard.udp_ports.contains_key(&addr.port()) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("netstack: bind udp: {addr} is in use"),
                ));
            }
            addr.port()
        } else {
            (0..64)
                .map(|_| rand::random_range(49_152..=u16::MAX))
                .find(|p| !shard.udp_ports.contains_key(p))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        "netstack: bind udp: no free port",
                    )
                })?
        };
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; config.udp_queue_packets],
                vec![0u8; config.udp_queue_bytes],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        let endpoint = IpListenEndpoint { addr: ip, port };
        socket.bind(endpoint).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("netstack: bind udp: {err}"),
            )
        })?;
        let handle = shard.add_socket(socket);
        *shard.udp_ports.entry(port).or_default() += 1;
        drop(shard);
        let local = SocketAddr::new(ip.map_or_else(|| addr.ip(), std::net::IpAddr::from), port);
        Ok(UdpSocket {
            shared: Arc::clone(shared),
            handle,
            local,
        })
    }
}

/// A UDP socket on a virtual IP. Dropping it frees the socket.
pub struct UdpSocket {
    shared: Arc<Shared>,
    handle: SocketHandle,
    local: SocketAddr,
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local)
            .finish()
    }
}

impl UdpSocket {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The largest payload a datagram to `target` can carry: the path MTU less the IP and
    /// UDP headers. The stack does not fragment: [`send_to`](Self::send_to) refuses more.
    pub fn max_payload(&self, target: SocketAddr) -> usize {
        let overhead = if target.is_ipv4() {
            UDP_IPV4_OVERHEAD
        } else {
            UDP_IPV6_OVERHEAD
        };
        self.shared.config.path_mtu.saturating_sub(overhead)
    }

    /// Sends one datagram to `target`, waiting while the socket's send queue is full.
    /// A payload past [`max_payload`](Self::max_payload) fails with `InvalidInput`.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        if buf.len() > self.max_payload(target) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "netstack: udp send to {target}: {} bytes exceed the mtu",
                    buf.len()
                ),
            ));
        }
        let endpoint = IpEndpoint::from(target);
        poll_fn(|cx| {
            let mut shard = self.shared.lock(0);
            let socket = shard.socket::<udp::Socket>(self.handle);
            match socket.send_slice(buf, endpoint) {
                Ok(()) => {
                    self.shared.finish(0, &mut shard, Instant::now());
                    Poll::Ready(Ok(buf.len()))
                }
                Err(udp::SendError::BufferFull) => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
                Err(err) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("netstack: udp send to {target}: {err}"),
                ))),
            }
        })
        .await
    }

    /// Receives one datagram into `buf` (truncated when longer), with its sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            let mut shard = self.shared.lock(0);
            let socket = shard.socket::<udp::Socket>(self.handle);
            match socket.recv() {
                Ok((data, meta)) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    Poll::Ready(Ok((n, meta.endpoint.into())))
                }
                Err(_) => {
                    socket.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut shard = self.shared.lock(0);
        shard.remove_socket(self.handle);
        let port = self.local.port();
        if let Some(n) = shard.udp_ports.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                shard.udp_ports.remove(&port);
            }
        }
    }
}
