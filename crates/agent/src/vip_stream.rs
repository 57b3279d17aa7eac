//! A connection accepted on the virtual IP, as local-proxy serves it: netstack's stream plus
//! local-proxy's [`Abort`], so a TCP route resets it when the upstream side fails.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use local_proxy::Abort;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// netstack's [`netstack::TcpStream`] with local-proxy's [`Abort`] (neither crate knows the
/// other, so the agent joins them here).
#[derive(Debug)]
pub(crate) struct VipStream(pub(crate) netstack::TcpStream);

impl Abort for VipStream {
    fn abort(&mut self) {
        self.0.abort();
    }
}

impl AsyncRead for VipStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        #[cfg(feature = "test-hooks")]
        crate::hooks::panic_on_first_connection();
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for VipStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
