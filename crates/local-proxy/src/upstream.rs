//! Connections to an upstream, over TCP or a unix stream socket, as one stream type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::Upstream;
use crate::relay::Abort;

/// A connected upstream stream.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl UpstreamStream {
    /// Connects to `upstream` (a DNS name is resolved by the system); `TCP_NODELAY` is set on
    /// TCP (latency only: forwarding works either way).
    pub(crate) async fn connect(upstream: &Upstream) -> io::Result<Self> {
        match upstream.unix_path() {
            Some(path) => UnixStream::connect(path).await.map(Self::Unix),
            None => {
                let stream = TcpStream::connect((upstream.host(), upstream.port())).await?;
                let _ = stream.set_nodelay(true);
                Ok(Self::Tcp(stream))
            }
        }
    }
}

/// A unix stream socket has no reset: aborting it does nothing, and the caller's drop then
/// closes it, which the app reads as an orderly end of stream (or `ECONNRESET` when it had
/// unread bytes queued towards us). Only TCP upstreams see a real reset.
impl Abort for UpstreamStream {
    fn abort(&mut self) {
        match self {
            Self::Tcp(stream) => stream.abort(),
            Self::Unix(_) => {}
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
