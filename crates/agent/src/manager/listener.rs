//! [`Listener`]: a TCP listener on the manager's virtual IPs that stops accepting once the
//! manager begins to close, so a serving loop ends on its own and new connections are refused.

use std::io;
use std::net::SocketAddr;

use netstack::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Closing;

/// A TCP listener on the virtual IP (from [`Manager::listen`](super::Manager::listen)).
///
/// Once [`Manager::close`](super::Manager::close) begins, `accept` fails (and, through
/// [`local_proxy::Accept`], reports the listener closed): the serving loop ends and drops the
/// listener, so the stack answers new connections with a reset while the ones already
/// accepted finish.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    closing: watch::Receiver<Closing>,
}

impl Listener {
    pub(super) fn new(inner: TcpListener, closing: watch::Receiver<Closing>) -> Self {
        Self { inner, closing }
    }

    /// The next connection and its peer's address. Cancel-safe. Fails with
    /// [`io::ErrorKind::NotConnected`] once the manager is closing.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let mut closing = self.closing.clone();
        tokio::select! {
            biased;
            _ = closing.wait_for(|c| *c != Closing::Open) => Err(closing_error()),
            accepted = self.inner.accept() => accepted,
        }
    }

    /// The next connection, or `None` once the manager is closing (what
    /// [`local_proxy::Accept`] wants). Cancel-safe.
    pub async fn next_connection(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        match self.accept().await {
            Ok(accepted) => Ok(Some(accepted)),
            Err(_) if *self.closing.borrow() != Closing::Open => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The address it listens on: the virtual IP and port, or the unspecified address and
    /// port on a dual-stack manager (each accepted stream's `local_addr` says which virtual IP
    /// the client reached).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
}

impl local_proxy::Accept for Listener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        self.next_connection().await
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.inner.local_addr())
    }
}

/// The error of a listen, dial or accept on a closing manager.
pub(super) fn closing_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the manager is closing")
}
