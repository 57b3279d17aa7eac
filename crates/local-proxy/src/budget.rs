//! The file-descriptor budget: one bound on the sockets opened towards local apps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bound on the file descriptors opened on behalf of clients: sockets to upstreams of HTTP
/// routes (pooled idle ones included), of TCP routes, and any other per-connection or per-flow
/// socket a caller charges to it.
///
/// Every socket holds an [`FdPermit`] for its whole life; when none is left, the work that
/// wanted one is refused (HTTP: `503`; TCP: the client connection is closed) instead of
/// running the process out of descriptors, where every accept and connect would fail, the
/// admin endpoint's included.
///
/// Clones share one budget. [`ConnectionTracker`](crate::ConnectionTracker) holds the one
/// shared by every route ([`ConnectionTracker::fd_budget`](crate::ConnectionTracker::fd_budget)).
///
/// # Example
///
/// ```
/// let budget = local_proxy::FdBudget::new(1);
/// let permit = budget.try_acquire().expect("one is free");
/// assert!(budget.try_acquire().is_none());
/// assert_eq!((budget.in_use(), budget.refused()), (1, 1));
/// drop(permit);
/// assert!(budget.try_acquire().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct FdBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    permits: Arc<Semaphore>,
    limit: usize,
    refused: AtomicU64,
}

/// One descriptor of an [`FdBudget`]; dropping it gives the descriptor back.
#[derive(Debug)]
pub struct FdPermit {
    _permit: OwnedSemaphorePermit,
}

impl FdBudget {
    /// A budget of `limit` descriptors (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(limit)),
                limit,
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// One descriptor, or `None` (counted in [`refused`](Self::refused)) when all are in use.
    pub fn try_acquire(&self) -> Option<FdPermit> {
        match Arc::clone(&self.inner.permits).try_acquire_owned() {
            Ok(permit) => Some(FdPermit { _permit: permit }),
            Err(_) => {
                self.inner.refused.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Descriptors held now.
    pub fn in_use(&self) -> usize {
        self.inner.limit - self.inner.permits.available_permits()
    }

    /// Requests for a descriptor refused since the budget was made.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Relaxed)
    }
}
