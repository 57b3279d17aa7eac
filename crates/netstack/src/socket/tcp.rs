//! TCP sockets: [`TcpListener`] with an accept backlog, and [`TcpStream`] with tokio's
//! `AsyncRead`/`AsyncWrite`.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use smoltcp::wire::IpEndpoint;

use crate::accept::ListenerShared;
use crate::buffer::TcpSocket;
use crate::shard::Shard;
use crate::stack::{Netstack, Shared};
use crate::wire::Tuple;

/// First port of the ephemeral range for outbound connections.
const EPHEMERAL_FIRST: u16 = 49_152;

/// TCP on the stack (beside its other methods in `stack.rs`, `udp.rs`, `icmp.rs`).
impl Netstack {
    /// Listens on `addr` (one of the stack's addresses, or unspecified for all of them)
    /// with the configured accept backlog.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.listen_with_backlog(addr, self.shared.config.accept_backlog)
    }

    /// Listens on `addr` with an accept backlog of `backlog` connections (half-open plus
    /// established, not yet accepted); SYNs past it are answered with RST.
    pub fn listen_with_backlog(&self, addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
        let listener = self.shared.register_listener(addr, backlog)?;
        tracing::debug!(%addr, backlog, "netstack: listening");
        Ok(TcpListener::new(Arc::clone(&self.shared), listener, addr))
    }

    /// Opens a TCP connection from the stack's address of `remote`'s family. A closed
    /// port fails with `ConnectionRefused` as soon as the RST arrives; no answer within
    /// `handshake_timeout` fails with `TimedOut`.
    pub async fn connect(&self, remote: SocketAddr) -> io::Result<TcpStream> {
        let shared = &self.shared;
        let local_ip = shared.source_for(remote.ip())?;
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("netstack: connect: {remote} is not a destination"),
            ));
        }
        let now = Instant::now();
        for _ in 0..64 {
            let port = rand::random_range(EPHEMERAL_FIRST..=u16::MAX);
            let tuple = Tuple {
                local: IpEndpoint::new(local_ip, port),
                remote: IpEndpoint::from(remote),
            };
            let idx = shared.shard_for(&tuple);
            let handle = shared.with_shard(idx, now, |shard| shard.connect(shared, tuple))?;
            if let Some(handle) = handle {
                let stream = TcpStream::new(Arc::clone(shared), idx, handle, tuple);
                stream.wait_established().await?;
                return Ok(stream);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("netstack: connect to {remote}: no free local port"),
        ))
    }
}

/// A TCP listener on a virtual IP. Connections are queued (up to the backlog) from the
/// moment their SYN arrives and handed out by [`accept`](Self::accept) once established.
/// Dropping it resets queued connections and frees their sockets.
pub struct TcpListener {
    shared: Arc<Shared>,
    listener: Arc<ListenerShared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TcpListener {
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: Arc<ListenerShared>,
        addr: SocketAddr,
    ) -> Self {
        Self {
            shared,
            listener,
            addr,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for an established connection; returns it with the peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut notified = pin!(self.listener.notified());
            notified.as_mut().enable();
            if let Some(stream) = self.try_accept() {
                let peer = stream.peer_addr();
                return Ok((stream, peer));
            }
            notified.await;
        }
    }

    fn try_accept(&self) -> Option<TcpStream> {
        let accepted = self.listener.pop()?;
        self.shared.counters.pending_accepts.fetch_sub(1, Relaxed);
        Some(TcpStream::new(
            Arc::clone(&self.shared),
            accepted.shard,
            accepted.handle,
            accepted.tuple,
        ))
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.shared.unregister(&self.listener);
        let queued = self.listener.close();
        let now = Instant::now();
        for accepted in queued {
            self.listener.listen.pending.fetch_sub(1, Relaxed);
            self.shared.counters.pending_accepts.fetch_sub(1, Relaxed);
            self.shared.with_shard(accepted.shard, now, |shard| {
                shard.release(&self.shared, accepted.tuple, now, true);
            });
        }
    }
}

/// A TCP connection on a virtual IP.
///
/// `shutdown` sends FIN and reading continues until the peer's FIN (half-close).
/// Errors: `ConnectionReset` after the peer's RST, `TimedOut` after the idle timeout (no
/// answer from the peer for `idle_timeout`), `BrokenPipe` when writing after shutdown,
/// `NotConnected` after [`abort`](Self::abort).
///
/// Dropping it closes gracefully in the background (FIN, bounded by `close_timeout` of
/// peer silence), or resets when unread data is left; [`abort`](Self::abort) resets at
/// once. Data the peer sends after the drop is answered with RST and discarded.
pub struct TcpStream {
    shared: Arc<Shared>,
    shard: usize,
    handle: SocketHandle,
    tuple: Tuple,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr())
            .field("peer", &self.peer_addr())
            .finish()
    }
}

impl TcpStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        shard: usize,
        handle: SocketHandle,
        tuple: Tuple,
    ) -> Self {
        Self {
            shared,
            shard,
            handle,
            tuple,
        }
    }

    /// Our address (virtual IP and port).
    pub fn local_addr(&self) -> SocketAddr {
        self.tuple.local.into()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.tuple.remote.into()
    }

    /// Waits until an outbound connection is established.
    pub(crate) async fn wait_established(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut shard = self.shared.lock(self.shard);
            let mut socket = shard.tcp(self.handle);
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    socket.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed => {
                    let (kind, what) = if shard.was_reset(&self.tuple) {
                        (io::ErrorKind::ConnectionRefused, "refused")
                    } else {
                        (io::ErrorKind::TimedOut, "timed out")
                    };
                    Poll::Ready(Err(io::Error::new(
                        kind,
                        format!("netstack: connect to {}: {what}", self.tuple.remote),
                    )))
                }
                _ => {
                    shard.established(&self.shared, self.handle);
                    Poll::Ready(Ok(()))
                }
            }
        })
        .await
    }

    /// Aborts the connection: sends RST to the peer and drops the data still queued
    /// either way, as `close` with `SO_LINGER` 0 does on Linux. Afterwards reads, writes
    /// and shutdown fail with `NotConnected`; dropping the stream then only frees it.
    ///
    /// Dropping a stream without calling this closes it gracefully instead (FIN after the
    /// queued data), unless unread data is left (then it resets, as a kernel does).
    pub fn abort(&mut self) {
        let now = Instant::now();
        let shared = &*self.shared;
        shared.with_shard(self.shard, now, |shard| shard.abort(&self.tuple));
    }

    /// The error for a read, write or shutdown that cannot proceed in `state`.
    fn closed_error(&self, shard: &Shard, state: tcp::State, writing: bool) -> io::Error {
        let (kind, what) = match state {
            _ if shard.was_aborted(&self.tuple) => {
                (io::ErrorKind::NotConnected, "aborted by this side")
            }
            tcp::State::Closed if shard.was_reset(&self.tuple) => {
                (io::ErrorKind::ConnectionReset, "connection reset")
            }
            // Closed without an RST from the peer: smoltcp's timeout (idle or retransmit).
            tcp::State::Closed => (io::ErrorKind::TimedOut, "connection timed out"),
            _ if writing => (io::ErrorKind::BrokenPipe, "write after shutdown"),
            _ => (io::ErrorKind::NotConnected, "not connected"),
        };
        io::Error::new(
            kind,
            format!(
                "netstack: {} -> {}: {what}",
                self.tuple.local, self.tuple.remote
            ),
        )
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut shard = this.shared.lock(this.shard);
        let mut socket = shard.tcp(this.handle);
        let before = socket.recv_queue();
        let half = socket.recv_capacity() / 2;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let res = match copy_into(&mut socket, buf) {
            // The ring may wrap: a second piece.
            Ok(n) if n > 0 && buf.remaining() > 0 => {
                Ok(n + copy_into(&mut socket, buf).unwrap_or(0))
            }
            other => other,
        };
        match res {
            Ok(0) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Ok(_) => {
                if before > half {
                    // The window doubles: announce it now rather than at the next timer.
                    this.shared.finish(this.shard, &mut shard, Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Err(tcp::RecvError::Finished) => Poll::Ready(Ok(())),
            Err(_) => {
                let state = socket.state();
                Poll::Ready(Err(this.closed_error(&shard, state, false)))
            }
        }
    }
}

/// Copies one contiguous piece of received data straight into the (possibly
/// uninitialised) unfilled part of `buf`.
fn copy_into(socket: &mut TcpSocket<'_>, buf: &mut ReadBuf<'_>) -> Result<usize, tcp::RecvError> {
    socket.recv(|data| {
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        (n, n)
    })
}

impl TcpStream {
    /// Queues what fits of `bufs`, in order, into the send ring: the one write path of
    /// [`AsyncWrite::poll_write`] and [`AsyncWrite::poll_write_vectored`].
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[&[u8]],
    ) -> Poll<io::Result<usize>> {
        let mut shard = self.shared.lock(self.shard);
        let socket = shard.tcp(self.handle);
        if !socket.may_send() {
            let state = socket.state();
            return Poll::Ready(Err(self.closed_error(&shard, state, true)));
        }
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        if wanted == 0 {
            return Poll::Ready(Ok(0));
        }
        let free = socket.send_capacity() - socket.send_queue();
        // Memory for what the connection's sender will hold (see `Shard::reserve_send`).
        let granted = shard.reserve_send(&self.shared, &self.tuple, wanted.min(free));
        let (mut sent, mut failed) = (0, false);
        for buf in bufs {
            let room = granted - sent;
            if room == 0 {
                break;
            }
            let part = &buf[..buf.len().min(room)];
            match shard.tcp(self.handle).send_slice(part) {
                Ok(n) => {
                    sent += n;
                    if n < part.len() {
                        break;
                    }
                }
                Err(_) => {
                    failed = sent == 0;
                    break;
                }
            }
        }
        shard.unreserve_send(&self.tuple, granted, sent);
        let mut socket = shard.tcp(self.handle);
        if failed {
            let state = socket.state();
            return Poll::Ready(Err(self.closed_error(&shard, state, true)));
        }
        if sent == 0 {
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        self.shared.finish(self.shard, &mut shard, Instant::now());
        Poll::Ready(Ok(sent))
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, &[buf])
    }

    /// Writes as many of `bufs` as fit, in one pass under the shard's lock: callers that
    /// hold their data in pieces (hyper's queued body chunks) need not copy it into one
    /// buffer first.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // At most 64 slices per call (what hyper hands over at once), without allocating.
        let mut slices: [&[u8]; 64] = [&[]; 64];
        let n = bufs.len().min(slices.len());
        for (slot, buf) in slices.iter_mut().zip(bufs) {
            *slot = buf;
        }
        self.get_mut().poll_write_slices(cx, &slices[..n])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut shard = this.shared.lock(this.shard);
        if shard.was_aborted(&this.tuple) {
            let state = shard.tcp(this.handle).state();
            return Poll::Ready(Err(this.closed_error(&shard, state, true)));
        }
        shard.tcp(this.handle).close();
        this.shared.finish(this.shard, &mut shard, Instant::now());
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let now = Instant::now();
        let shared = &*self.shared;
        shared.with_shard(self.shard, now, |shard| {
            shard.release(shared, self.tuple, now, false);
        });
    }
}
