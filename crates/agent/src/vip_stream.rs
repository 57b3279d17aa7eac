//! A connection accepted on the virtual IP, as local-proxy serves it: netstack's stream plus
//! local-proxy's [`Abort`], so a TCP route resets it when the upstream side fails; and a UDP
//! route's socket as local-proxy's `DatagramSocket` ([`VipDatagram`]).

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

/// netstack's [`netstack::UdpSocket`] as local-proxy's [`DatagramSocket`](local_proxy::DatagramSocket):
/// a UDP route's socket on the virtual IPs, shared with the route that may replace it.
#[derive(Debug, Clone)]
pub(crate) struct VipDatagram(pub(crate) std::sync::Arc<netstack::UdpSocket>);

impl local_proxy::DatagramSocket for VipDatagram {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr)> {
        self.0.recv_from(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: std::net::SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, target).await
    }

    fn max_payload(&self, target: std::net::SocketAddr) -> usize {
        self.0.max_payload(target)
    }
}
