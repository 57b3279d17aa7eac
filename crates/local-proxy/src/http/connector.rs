//! Upstream connections charged to the [`FdBudget`]: a connect without a free descriptor fails
//! at once, and every open upstream socket (pooled idle ones included) holds its permit.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::budget::{FdBudget, FdPermit};

/// No descriptor was left in the budget for a new upstream connection.
#[derive(Debug, thiserror::Error)]
#[error("max_upstream_sockets reached: no new upstream connection")]
pub(super) struct SocketBudgetExhausted;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An [`HttpConnector`] that takes a permit from the budget before each connect.
#[derive(Debug, Clone)]
pub(super) struct BudgetConnector {
    http: HttpConnector,
    budget: FdBudget,
}

impl BudgetConnector {
    pub(super) fn new(http: HttpConnector, budget: FdBudget) -> Self {
        Self { http, budget }
    }
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
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Budgeted {
                io,
                _permit: permit,
            })
        })
    }
}

/// An upstream socket and its descriptor permit, released together.
#[derive(Debug)]
pub(super) struct Budgeted {
    io: TokioIo<TcpStream>,
    _permit: FdPermit,
}

impl Connection for Budgeted {
    fn connected(&self) -> Connected {
        self.io.connected()
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
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
