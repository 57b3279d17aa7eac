//! Upstream connections charged to the [`FdBudget`]: a connect without a free descriptor fails
//! at once, and every open upstream socket (pooled idle ones included) holds its permit.
//!
//! They also keep an early answer readable. An app that refuses an upload (`413`) often
//! answers before reading the body and closes; our next body write then fails, and hyper's
//! client would report that failure instead of the answer already waiting in the socket. So
//! after a failed write the rest of the body is discarded (bounded by
//! [`Linger`]) while the read side delivers the answer, or its own error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::Upstream;
use crate::budget::{FdBudget, FdPermit};
use crate::upstream::UpstreamStream;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;

/// No descriptor was left in the budget for a new upstream connection.
#[derive(Debug, thiserror::Error)]
#[error("max_upstream_sockets reached: no new upstream connection")]
pub(super) struct SocketBudgetExhausted;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An [`HttpConnector`] (or, for a unix upstream, a unix socket connect) that takes a
/// permit from the budget before each connect.
#[derive(Debug, Clone)]
pub(super) struct BudgetConnector {
    http: HttpConnector,
    /// A unix upstream: every connection goes to it, whatever the URI says.
    unix: Option<(Upstream, Duration)>,
    budget: FdBudget,
    linger: Linger,
}

impl BudgetConnector {
    /// `connect_timeout` bounds a unix connect (the `HttpConnector` has its own).
    pub(super) fn new(
        http: HttpConnector,
        upstream: &Upstream,
        connect_timeout: Duration,
        budget: FdBudget,
        linger: Linger,
    ) -> Self {
        Self {
            http,
            unix: upstream
                .unix_path()
                .is_some()
                .then(|| (upstream.clone(), connect_timeout)),
            budget,
            linger,
        }
    }
}

/// How much of a request body is discarded after the upstream stopped reading it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Linger {
    pub(super) bytes: u64,
    pub(super) time: Duration,
}

impl tower_service::Service<Uri> for BudgetConnector {
    type Response = Budgeted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Budgeted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Some(permit) = self.budget.try_acquire() else {
            return Box::pin(std::future::ready(Err(SocketBudgetExhausted.into())));
        };
        let linger = self.linger;
        if let Some((upstream, timeout)) = self.unix.clone() {
            return Box::pin(async move {
                let stream = tokio::time::timeout(timeout, UpstreamStream::connect(&upstream))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "unix upstream connect timed out")
                    })??;
                Ok(Budgeted {
                    io: TokioIo::new(stream),
                    _permit: permit,
                    linger,
                    failed: None,
                })
            });
        }
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = TokioIo::new(UpstreamStream::Tcp(connecting.await?.into_inner()));
            Ok(Budgeted {
                io,
                _permit: permit,
                linger,
                failed: None,
            })
        })
    }
}

/// An upstream socket and its descriptor permit, released together.
#[derive(Debug)]
pub(super) struct Budgeted {
    io: TokioIo<UpstreamStream>,
    _permit: FdPermit,
    linger: Linger,
    /// The first write error, when, and the bytes discarded since.
    failed: Option<(io::Error, Instant, u64)>,
}

impl Budgeted {
    /// After a write error: pretend `len` more bytes were written while within the linger
    /// bounds, then report the error.
    fn discard(&mut self, len: usize) -> Poll<io::Result<usize>> {
        let Some((error, since, discarded)) = &mut self.failed else {
            return Poll::Ready(Ok(len));
        };
        *discarded += len as u64;
        if *discarded > self.linger.bytes || since.elapsed() > self.linger.time {
            return Poll::Ready(Err(io::Error::new(error.kind(), error.to_string())));
        }
        Poll::Ready(Ok(len))
    }

    fn write_result(
        &mut self,
        result: Poll<io::Result<usize>>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Err(error)) => {
                tracing::trace!(%error, "upstream stopped reading the request: discarding the rest");
                self.failed = Some((error, Instant::now(), 0));
                self.discard(len)
            }
            other => other,
        }
    }
}

impl Connection for Budgeted {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Budgeted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Budgeted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.failed.is_some() {
            return self.discard(buf.len());
        }
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.write_result(result, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.failed.is_some() {
            return self.discard(len);
        }
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.write_result(result, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether a client error (or one of its sources) is a refused descriptor.
pub(super) fn is_budget_exhausted(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<SocketBudgetExhausted>() {
            return true;
        }
        current = e.source();
    }
    false
}
