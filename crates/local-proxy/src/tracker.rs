//! Connection accounting shared by every route: the connection limit and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::{FdBudget, ProxyConfig};

/// Lifecycle of a [`ConnectionTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; in-flight requests, tunnels and TCP forwards finish; kept-alive HTTP
    /// connections close after their current request (HTTP/2 gets `GOAWAY`).
    Draining,
    /// Every remaining connection is being closed.
    Closed,
}

/// How [`ConnectionTracker::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownOutcome {
    /// Every connection finished within the drain timeout.
    Drained,
    /// The drain timeout passed; this many connections were closed while still busy.
    ForcedClose {
        /// Connections open when the deadline passed.
        closed: usize,
    },
}

/// Counts the connections of every route served with it, enforces `max_connections`, and
/// drives graceful shutdown.
///
/// Clone it freely: clones share one state. Serve every route of a process with one tracker so
/// that the limit and the shutdown cover all of them.
///
/// What draining means per kind of connection: an HTTP/1 connection finishes its current
/// request and closes (an idle kept-alive one closes at once); an HTTP/2 connection gets
/// `GOAWAY` and finishes its open streams; an upgraded tunnel (WebSocket) or a TCP forward keeps
/// running, as nothing can ask it to finish, until it ends or the drain timeout closes it.
///
/// Shutdown: [`shutdown`](Self::shutdown) does it all (stop accepting, wait up to
/// `drain_timeout` for in-flight work, then close the rest and wait until they are gone). The
/// steps are also available alone: [`begin_shutdown`](Self::begin_shutdown),
/// [`drained`](Self::drained), [`force_close`](Self::force_close).
#[derive(Debug, Clone)]
pub struct ConnectionTracker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: watch::Sender<Phase>,
    active: watch::Sender<usize>,
    limit: Arc<Semaphore>,
    drain_timeout: Duration,
    /// `max_upstream_requests`.
    requests: Arc<Semaphore>,
    fd_budget: FdBudget,
    /// `max_udp_flows`.
    udp_flows: Arc<Semaphore>,
}

impl ConnectionTracker {
    /// A tracker with `config.max_connections`, `config.drain_timeout`, and the bounds shared
    /// by every route: `config.max_upstream_requests`, `config.max_upstream_sockets` and
    /// `config.max_udp_flows`.
    pub fn new(config: &ProxyConfig) -> Self {
        let (phase, _) = watch::channel(Phase::Running);
        let (active, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                phase,
                active,
                limit: Arc::new(Semaphore::new(
                    config.max_connections.min(Semaphore::MAX_PERMITS),
                )),
                drain_timeout: config.drain_timeout,
                requests: Arc::new(Semaphore::new(
                    config
                        .max_upstream_requests
                        .clamp(1, Semaphore::MAX_PERMITS),
                )),
                fd_budget: FdBudget::new(config.max_upstream_sockets),
                udp_flows: Arc::new(Semaphore::new(config.udp_flow_permits())),
            }),
        }
    }

    /// The descriptor budget of every route served with this tracker
    /// (`max_upstream_sockets`); charge other per-connection sockets to it too.
    pub fn fd_budget(&self) -> &FdBudget {
        &self.inner.fd_budget
    }

    /// The `max_upstream_requests` bound shared by every HTTP route.
    pub(crate) fn upstream_requests(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.requests)
    }

    /// The `max_udp_flows` bound shared by every UDP route.
    pub(crate) fn udp_flows(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.udp_flows)
    }

    /// Connections (HTTP, upgraded tunnels, TCP forwards) open right now.
    pub fn open_connections(&self) -> usize {
        *self.inner.active.borrow()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    /// Stop accepting and let in-flight work finish. Idempotent.
    pub fn begin_shutdown(&self) {
        self.inner.phase.send_if_modified(|p| {
            let change = *p == Phase::Running;
            if change {
                *p = Phase::Draining;
            }
            change
        });
    }

    /// Close every remaining connection now (also stops accepting).
    pub fn force_close(&self) {
        self.inner.phase.send_if_modified(|p| {
            let change = *p != Phase::Closed;
            *p = Phase::Closed;
            change
        });
    }

    /// Resolves when no connection is open. Used after [`begin_shutdown`](Self::begin_shutdown);
    /// while running it resolves whenever the count touches zero.
    pub async fn drained(&self) {
        let mut rx = self.inner.active.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Graceful shutdown: stop accepting, give in-flight requests, tunnels and TCP forwards up
    /// to `drain_timeout`, then close what is left and wait until every connection is gone.
    pub async fn shutdown(&self) -> ShutdownOutcome {
        self.begin_shutdown();
        tracing::info!(open = self.open_connections(), "proxy draining");
        if tokio::time::timeout(self.inner.drain_timeout, self.drained())
            .await
            .is_ok()
        {
            tracing::info!("proxy drained");
            return ShutdownOutcome::Drained;
        }
        let closed = self.open_connections();
        tracing::warn!(closed, "drain timeout passed, closing busy connections");
        self.force_close();
        self.drained().await;
        ShutdownOutcome::ForcedClose { closed }
    }

    /// Admit one connection, or `None` when at the limit or not running.
    pub(crate) fn try_admit(&self) -> Option<ConnGuard> {
        if self.phase() != Phase::Running {
            return None;
        }
        let permit = Arc::clone(&self.inner.limit).try_acquire_owned().ok()?;
        self.inner.active.send_modify(|n| *n += 1);
        Some(ConnGuard {
            _permit: permit,
            inner: Arc::clone(&self.inner),
        })
    }

    /// A receiver of phase changes, for one connection or accept loop.
    pub(crate) fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.inner.phase.subscribe(),
        }
    }
}

/// One admitted connection; dropping it frees its slot.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.inner.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Phase changes seen by one task.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownSignal {
    rx: watch::Receiver<Phase>,
}

impl ShutdownSignal {
    /// Resolves once draining (or closing) has begun.
    pub(crate) async fn draining(&mut self) {
        // The sender outlives every receiver's owner (they hold the tracker); if it were gone,
        // stopping is the right answer anyway.
        let _ = self.rx.wait_for(|p| *p != Phase::Running).await;
    }

    /// Resolves once connections must close.
    pub(crate) async fn closed(&mut self) {
        let _ = self.rx.wait_for(|p| *p == Phase::Closed).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn limit_and_phases() {
        let config = ProxyConfig {
            max_connections: 2,
            ..ProxyConfig::default()
        };
        let tracker = ConnectionTracker::new(&config);
        let a = tracker.try_admit().unwrap();
        let b = tracker.try_admit().unwrap();
        assert!(tracker.try_admit().is_none());
        assert_eq!(tracker.open_connections(), 2);
        drop(a);
        let c = tracker.try_admit().unwrap();
        tracker.begin_shutdown();
        assert_eq!(tracker.phase(), Phase::Draining);
        assert!(tracker.try_admit().is_none());
        drop((b, c));
        tracker.drained().await;
        assert_eq!(tracker.open_connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_forces_after_drain_timeout() {
        let config = ProxyConfig {
            drain_timeout: Duration::from_secs(5),
            ..ProxyConfig::default()
        };
        let tracker = ConnectionTracker::new(&config);
        let guard = tracker.try_admit().unwrap();
        let mut signal = tracker.signal();
        let holder = tokio::spawn(async move {
            signal.closed().await;
            drop(guard);
        });
        let outcome = tracker.shutdown().await;
        assert_eq!(outcome, ShutdownOutcome::ForcedClose { closed: 1 });
        holder.await.unwrap();
    }
}
