//! ICMP echo client ([`Netstack::ping`]); echo requests to the stack's own addresses are
//! answered by smoltcp itself.

use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress};

use crate::stack::{Netstack, Shared};

/// Payload carried by our echo requests.
const PAYLOAD: &[u8] = b"wg-agent netstack ping";

impl Netstack {
    /// Sends one ICMP echo request to `dst` and waits up to `timeout` for the reply.
    /// Returns the round-trip time; `TimedOut` when no reply came.
    pub async fn ping(&self, dst: IpAddr, timeout: Duration) -> io::Result<Duration> {
        let shared = &self.shared;
        let src = shared.source_for(dst)?;
        let dst_ip = IpAddress::from(dst);
        let seq: u16 = rand::random();
        let probe = {
            let mut shard = shared.lock(0);
            let ident = (0..64)
                .map(|_| rand::random::<u16>())
                .find(|i| !shard.icmp_idents.contains(i))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        "netstack: ping: no free ident",
                    )
                })?;
            let buffer =
                || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0u8; 1024]);
            let mut socket = icmp::Socket::new(buffer(), buffer());
            socket.bind(icmp::Endpoint::Ident(ident)).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("netstack: ping: {err}"),
                )
            })?;
            let request = echo_request(src, dst_ip, ident, seq);
            socket.send_slice(&request, dst_ip).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("netstack: ping {dst}: {err}"),
                )
            })?;
            let handle = shard.add_socket(socket);
            shard.icmp_idents.insert(ident);
            shared.finish(0, &mut shard, Instant::now());
            Probe {
                shared: Arc::clone(shared),
                handle,
                ident,
            }
        };
        let sent = Instant::now();
        let reply = poll_fn(|cx| {
            let mut shard = shared.lock(0);
            let socket = shard.socket::<icmp::Socket>(probe.handle);
            while let Ok((data, from)) = socket.recv() {
                if from == dst_ip && is_reply(data, src, dst_ip, probe.ident, seq) {
                    return Poll::Ready(());
                }
            }
            socket.register_recv_waker(cx.waker());
            Poll::Pending
        });
        match tokio::time::timeout(timeout, reply).await {
            Ok(()) => Ok(sent.elapsed()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("netstack: ping {dst}: no reply within {timeout:?}"),
            )),
        }
    }
}

/// Removes the ICMP socket when the ping ends (or its future is dropped).
struct Probe {
    shared: Arc<Shared>,
    handle: SocketHandle,
    ident: u16,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut shard = self.shared.lock(0);
        shard.remove_socket(self.handle);
        shard.icmp_idents.remove(&self.ident);
    }
}

fn echo_request(src: IpAddress, dst: IpAddress, ident: u16, seq_no: u16) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) => {
            let repr = Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data: PAYLOAD,
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
                &caps,
            );
            buf
        }
        _ => {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data: PAYLOAD,
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]), &caps);
            buf
        }
    }
}

fn is_reply(data: &[u8], src: IpAddress, dst: IpAddress, ident: u16, seq: u16) -> bool {
    let caps = ChecksumCapabilities::ignored();
    match (src, dst) {
        (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) => {
            let Ok(packet) = Icmpv6Packet::new_checked(data) else {
                return false;
            };
            matches!(
                Icmpv6Repr::parse(&dst, &src, &packet, &caps),
                Ok(Icmpv6Repr::EchoReply { ident: i, seq_no, .. }) if i == ident && seq_no == seq
            )
        }
        _ => {
            let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                return false;
            };
            matches!(
                Icmpv4Repr::parse(&packet, &caps),
                Ok(Icmpv4Repr::EchoReply { ident: i, seq_no, .. }) if i == ident && seq_no == seq
            )
        }
    }
}
