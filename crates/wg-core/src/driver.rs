//! A batched UDP socket for tokio (feature `driver`): recvmmsg + GRO in, GSO out, via quinn-udp.
//!
//! It moves datagrams and nothing else: it does not own a [`Peers`](crate::Peers). The caller
//! runs the loop (receive a batch, feed `handle_datagram`, drain `poll_transmit` into a
//! [`SendBatch`], send it). [`UdpDriver`] takes `&self`, so one socket can be shared by a
//! receiving and a sending task behind an `Arc`.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use wg_core::driver::{RecvBatch, SendBatch, UdpDriver};
//! let driver = UdpDriver::bind("127.0.0.1:0".parse().unwrap())?;
//! let mut rx = RecvBatch::new();
//! let mut tx = SendBatch::new(&driver);
//! loop {
//!     driver.recv(&mut rx).await?;
//!     for (from, datagram) in rx.iter() {
//!         // peers.handle_datagram(from, datagram, Instant::now()) ...
//!         let _ = tx.push(from, datagram); // echo, for the example
//!     }
//!     driver.send(&mut tx).await?;
//! }
//! # }
//! ```

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

/// Socket buffer size requested for both directions (the kernel may grant less; see
/// [`UdpDriver::buffer_sizes`]). Kernel defaults drop packets at a few hundred Mbit/s.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// Datagrams per `recvmmsg` call.
pub const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
/// Bytes per receive buffer: one largest datagram, or one GRO train of smaller ones.
const RECV_BUF: usize = 65_535;
/// Largest GSO train: the whole train is one IP packet inside the kernel, so its UDP
/// payload is at most 65,535 − 20 (IPv4 header) − 8 (UDP header) bytes (IPv6 allows 20
/// more). That is 45 datagrams of a 1,420-byte tunnel MTU (1,452 bytes with WireGuard's
/// headers), one more per train than a round 65,000 allowed.
pub const GSO_MAX_BYTES: usize = 65_507;

/// A UDP socket with batched, segmentation-offloaded I/O.
#[derive(Debug)]
pub struct UdpDriver {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    send_errors: AtomicU64,
    /// An IPv6 socket: IPv4 destinations are sent as IPv4-mapped addresses.
    ipv6: bool,
}

impl UdpDriver {
    /// Binds a non-blocking UDP socket to `addr` (IPv4 or IPv6; port 0 picks one) with
    /// [`SOCKET_BUFFER`]-sized buffers requested. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            // `[::]` also receives IPv4, as users of a wildcard listen address expect.
            let _ = socket.set_only_v6(false);
        }
        socket.set_nonblocking(true)?;
        // Best effort: unprivileged processes are capped by net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.bind(&addr.into())?;
        Self::from_std(socket.into())
    }

    /// Wraps an already bound socket (it is switched to non-blocking mode).
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let ipv6 = socket.local_addr()?.is_ipv6();
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        Ok(Self {
            socket,
            state,
            send_errors: AtomicU64::new(0),
            ipv6,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// `(receive, send)` buffer sizes the kernel granted.
    pub fn buffer_sizes(&self) -> io::Result<(usize, usize)> {
        let sock = (&self.socket).into();
        let rx = self.state.recv_buffer_size(sock)?;
        let sock = (&self.socket).into();
        Ok((rx, self.state.send_buffer_size(sock)?))
    }

    /// Datagrams the kernel accepts in one GSO send (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Datagrams the kernel may coalesce into one receive buffer (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Datagrams that could not be sent (unreachable destination, ...) since creation.
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Waits for datagrams and receives up to [`RECV_BATCH`] buffers of them into `batch`
    /// (replacing its contents). Returns the number of buffers filled; iterate with
    /// [`RecvBatch::iter`].
    pub async fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.filled = 0;
        loop {
            self.socket.readable().await?;
            let RecvBatch { storage, metas, .. } = &mut *batch;
            let mut chunks = storage.chunks_mut(RECV_BUF);
            let mut slices: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
            let result = self.socket.try_io(Interest::READABLE, || {
                self.state.recv((&self.socket).into(), &mut slices, metas)
            });
            match result {
                Ok(n) => {
                    batch.filled = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends every datagram in `batch` (GSO trains where possible) and clears it. A datagram
    /// the kernel refuses (e.g. unreachable network) is counted in [`UdpDriver::send_errors`]
    /// and skipped; only socket-level failures are returned.
    pub async fn send(&self, batch: &mut SendBatch) -> io::Result<()> {
        for i in 0..batch.trains.len() {
            let train = batch.trains[i];
            let contents = &batch.buf[train.start..train.start + train.len];
            let transmit = UdpTransmit {
                destination: self.socket_form(train.destination),
                ecn: None,
                contents,
                segment_size: (train.segments > 1).then_some(train.segment_size),
                src_ip: None,
            };
            if let Err(e) = self.send_one(&transmit).await {
                if train.segments > 1 {
                    // GSO refused (quinn-udp turns it off after EIO): send one by one.
                    for seg in contents.chunks(train.segment_size) {
                        let single = UdpTransmit {
                            contents: seg,
                            segment_size: None,
                            ..transmit.clone()
                        };
                        if let Err(e) = self.send_one(&single).await {
                            self.note_send_error(&e, train.destination);
                        }
                    }
                } else {
                    self.note_send_error(&e, train.destination);
                }
            }
        }
        batch.clear();
        // quinn-udp turns GSO off when the kernel refuses it: follow.
        batch.max_segments = batch.max_segments.min(self.max_gso_segments()).max(1);
        Ok(())
    }

    /// Sends one datagram.
    pub async fn send_to(&self, destination: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let transmit = UdpTransmit {
            destination: self.socket_form(destination),
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        self.send_one(&transmit).await
    }

    async fn send_one(&self, transmit: &UdpTransmit<'_>) -> io::Result<()> {
        loop {
            self.socket.writable().await?;
            match self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), transmit)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// An IPv4 destination as this socket can reach it (IPv4-mapped on an IPv6 socket).
    fn socket_form(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            other => other,
        }
    }

    fn note_send_error(&self, e: &io::Error, destination: SocketAddr) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%destination, error = %e, "udp send failed");
    }
}

/// Reused receive buffers for [`UdpDriver::recv`].
pub struct RecvBatch {
    storage: Vec<u8>,
    metas: [RecvMeta; RECV_BATCH],
    filled: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("filled", &self.filled)
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// [`RECV_BATCH`] buffers of 64 KiB (memory is only touched as datagrams arrive).
    pub fn new() -> Self {
        Self {
            storage: vec![0; RECV_BUF * RECV_BATCH],
            metas: [RecvMeta::default(); RECV_BATCH],
            filled: 0,
        }
    }

    /// Every datagram of the last receive, GRO trains split into their datagrams. Sources are
    /// canonical: an IPv4 peer seen through an IPv6 socket is reported as IPv4.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.metas[..self.filled]
            .iter()
            .zip(self.storage.chunks(RECV_BUF))
            .flat_map(|(meta, chunk)| {
                let data = &chunk[..meta.len.min(chunk.len())];
                let stride = if meta.stride == 0 {
                    data.len().max(1)
                } else {
                    meta.stride
                };
                let from = crate::canonical(meta.addr);
                data.chunks(stride).map(move |d| (from, d))
            })
    }

    /// Number of datagrams in the last receive.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the last receive returned nothing.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Train {
    destination: SocketAddr,
    start: usize,
    len: usize,
    segment_size: usize,
    segments: usize,
    /// The last segment was shorter than `segment_size`: nothing may follow it.
    closed: bool,
}

/// Datagrams waiting to be sent by [`UdpDriver::send`], packed into GSO trains: consecutive
/// datagrams to one destination with one size (the last may be shorter) share a send call.
#[derive(Debug)]
pub struct SendBatch {
    buf: Vec<u8>,
    trains: Vec<Train>,
    max_segments: usize,
    max_datagrams: usize,
    datagrams: usize,
}

impl SendBatch {
    /// A batch sized for `driver`'s GSO support, holding up to 256 datagrams.
    pub fn new(driver: &UdpDriver) -> Self {
        Self::with_limits(driver.max_gso_segments(), 256)
    }

    /// A batch with explicit limits (`max_segments` per GSO train, 1 disables GSO).
    pub fn with_limits(max_segments: usize, max_datagrams: usize) -> Self {
        Self {
            buf: Vec::with_capacity(max_datagrams.min(64) * 1_500),
            trains: Vec::with_capacity(max_datagrams.min(64)),
            max_segments: max_segments.max(1),
            max_datagrams: max_datagrams.max(1),
            datagrams: 0,
        }
    }

    /// Appends a datagram (copied). Returns `false`, leaving the batch unchanged, when the
    /// batch is full: send it first.
    pub fn push(&mut self, destination: SocketAddr, payload: &[u8]) -> bool {
        if self.datagrams >= self.max_datagrams {
            return false;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(payload);
        self.datagrams += 1;
        let len = payload.len();
        if let Some(last) = self.trains.last_mut()
            && last.destination == destination
            && !last.closed
            && last.segments < self.max_segments
            && len <= last.segment_size
            && last.len + len <= GSO_MAX_BYTES
            && len > 0
        {
            last.len += len;
            last.segments += 1;
            last.closed = len < last.segment_size;
            return true;
        }
        self.trains.push(Train {
            destination,
            start,
            len,
            segment_size: len.max(1),
            segments: 1,
            closed: len == 0,
        });
        true
    }

    /// Number of datagrams queued.
    pub fn len(&self) -> usize {
        self.datagrams
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.datagrams == 0
    }

    /// Number of send calls [`UdpDriver::send`] will make (GSO trains).
    pub fn trains(&self) -> usize {
        self.trains.len()
    }

    /// Drops everything queued (buffers are kept).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.trains.clear();
        self.datagrams = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn trains_group_equal_sizes_to_one_destination() {
        let mut b = SendBatch::with_limits(4, 100);
        for _ in 0..5 {
            assert!(b.push(addr(1), &[0; 100]));
        }
        assert_eq!(b.trains(), 2, "4 segments max per train");
        assert!(b.push(addr(1), &[0; 50]));
        assert_eq!(b.trains(), 2, "a shorter last segment joins the train");
        assert!(b.push(addr(1), &[0; 50]));
        assert_eq!(b.trains(), 3, "nothing follows a short segment");
        assert!(b.push(addr(2), &[0; 50]));
        assert_eq!(b.trains(), 4, "another destination starts a train");
        assert!(b.push(addr(2), &[0; 60]));
        assert_eq!(b.trains(), 5, "a longer datagram starts a train");
        assert_eq!(b.len(), 9);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn a_train_holds_45_datagrams_of_a_1420_byte_tunnel() {
        let mut b = SendBatch::with_limits(64, 100);
        for _ in 0..45 {
            assert!(b.push(addr(1), &[0; 1_452]));
        }
        assert_eq!(b.trains(), 1);
        assert!(b.push(addr(1), &[0; 1_452]));
        assert_eq!(b.trains(), 2, "the 46th would pass the IPv4 limit");
    }

    #[test]
    fn batch_is_bounded() {
        let mut b = SendBatch::with_limits(1, 2);
        assert!(b.push(addr(1), b"a"));
        assert!(b.push(addr(1), b"b"));
        assert!(!b.push(addr(1), b"c"));
        assert_eq!(b.len(), 2);
    }
}
