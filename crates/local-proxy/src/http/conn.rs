//! Driving one served connection: graceful shutdown, idle cut, and upgraded tunnels.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Slot;
use crate::io::IdleClock;
use crate::tracker::ShutdownSignal;

/// What a request needs to keep its connection's slot and idle clock alive in a tunnel.
pub(super) struct TunnelContext {
    pub(super) slot: Arc<Slot>,
    pub(super) clock: Arc<IdleClock>,
    pub(super) signal: ShutdownSignal,
}

/// Join the two upgraded halves and copy both ways until either side closes, the tunnel idles
/// or shutdown closes it. Bytes are counted by the client stream's `Activity`.
pub(super) async fn run_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut tunnel: TunnelContext,
    idle: Duration,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = result {
                tracing::debug!(%error, "tunnel ended with an error");
            }
        }
        () = tunnel.signal.closed() => tracing::debug!("tunnel closed by shutdown"),
        () = tunnel.clock.expired(idle) => tracing::debug!("tunnel idle, closed"),
    }
    drop(tunnel.slot);
}

pub(super) enum Ended {
    Done(Result<(), hyper::Error>),
    Idle,
    Closed,
}

/// A served connection that can be asked to finish gracefully.
pub(super) trait GracefulConnection: Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, S, B> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Run a connection until it ends, idles, or shutdown closes it; ask it to finish gracefully
/// when draining begins.
pub(super) async fn drive<C: GracefulConnection>(
    conn: C,
    signal: ShutdownSignal,
    clock: &IdleClock,
    idle: Duration,
) -> Ended {
    let mut conn = pin!(conn);
    let mut draining = signal.clone();
    let mut closing = signal;
    let mut asked = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return Ended::Done(result),
            () = draining.draining(), if !asked => {
                asked = true;
                conn.as_mut().graceful();
            }
            () = closing.closed() => return Ended::Closed,
            () = clock.expired(idle) => return Ended::Idle,
        }
    }
}
