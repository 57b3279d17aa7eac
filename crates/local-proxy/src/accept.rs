//! Where connections come from: any listener that yields a byte stream and the peer's address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A source of accepted connections.
///
/// The agent implements it for its userspace TCP stack's listener; this crate implements it for
/// [`tokio::net::TcpListener`] and for a channel receiver of `(stream, peer)` pairs.
///
/// # Example
///
/// ```
/// use std::{io, net::SocketAddr};
///
/// use local_proxy::Accept;
///
/// /// A listener fed by another task, for example a userspace TCP stack.
/// struct Handoff(tokio::sync::mpsc::Receiver<(tokio::io::DuplexStream, SocketAddr)>);
///
/// impl Accept for Handoff {
///     type Stream = tokio::io::DuplexStream;
///
///     async fn accept(&mut self) -> io::Result<Option<(Self::Stream, SocketAddr)>> {
///         Ok(self.0.recv().await)
///     }
///
///     fn local_addr(&self) -> Option<SocketAddr> {
///         "10.1.0.100:80".parse().ok()
///     }
/// }
/// ```
pub trait Accept: Send {
    /// The byte stream of one connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer's address.
    ///
    /// `Ok(None)`: the listener is closed, serving ends. `Err(_)`: a transient failure (for
    /// example too many open files); serving logs it, waits 50 ms and calls again.
    ///
    /// Must be cancel-safe: when shutdown begins, serving drops a pending `accept` future, and
    /// a connection it had half-accepted must not be lost silently (it may simply stay queued).
    fn accept(
        &mut self,
    ) -> impl Future<Output = io::Result<Option<(Self::Stream, SocketAddr)>>> + Send;

    /// The address connections are accepted on, if known (the PROXY protocol's destination).
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The address `stream` was accepted on: by default [`local_addr`](Self::local_addr). A
    /// listener on several addresses (a wildcard, or one address per IP family) returns the
    /// connection's own, so a PROXY header names the address the client really reached.
    fn connection_local_addr(&self, stream: &Self::Stream) -> Option<SocketAddr> {
        let _ = stream;
        self.local_addr()
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<Option<(Self::Stream, SocketAddr)>> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Small responses must not wait for Nagle; failure only costs latency.
        let _ = stream.set_nodelay(true);
        Ok(Some((stream, peer)))
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        tokio::net::TcpListener::local_addr(self).ok()
    }

    /// The address the client reached (a listener on `0.0.0.0` or `[::]` has many).
    fn connection_local_addr(&self, stream: &Self::Stream) -> Option<SocketAddr> {
        stream
            .local_addr()
            .ok()
            .or_else(|| Accept::local_addr(self))
    }
}

impl<S> Accept for tokio::sync::mpsc::Receiver<(S, SocketAddr)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = S;

    async fn accept(&mut self) -> io::Result<Option<(S, SocketAddr)>> {
        Ok(self.recv().await)
    }
}

/// Accept until the listener closes or shutdown begins; admitted connections go to `start`,
/// the others are closed and counted.
pub(crate) async fn accept_loop<A, F>(
    mut listener: A,
    tracker: &crate::ConnectionTracker,
    metrics: &crate::RouteMetrics,
    mut start: F,
) where
    A: Accept,
    F: FnMut(A::Stream, SocketAddr, Option<SocketAddr>, crate::tracker::ConnGuard),
{
    let mut signal = tracker.signal();
    loop {
        let accepted = tokio::select! {
            biased;
            () = signal.draining() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(Some((stream, peer))) => match tracker.try_admit() {
                Some(guard) => {
                    let local = listener.connection_local_addr(&stream);
                    start(stream, peer, local, guard);
                }
                None => {
                    metrics.connection_rejected();
                    tracing::debug!(%peer, "connection refused: max_connections reached");
                    drop(stream);
                }
            },
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "accept failed, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
