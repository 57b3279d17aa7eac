//! A listener's accept queue: the socket layer's end of `Event::Accepted`. The shards
//! report established connections as events; the stack moves each into its listener's
//! queue (by `Listen::id`) and [`TcpListener::accept`](crate::TcpListener::accept) takes
//! them out.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use smoltcp::iface::SocketHandle;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::lock;
use crate::env::Listen;
use crate::wire::Tuple;

/// An established connection waiting in a listener's accept queue.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) shard: usize,
    pub(crate) handle: SocketHandle,
    pub(crate) tuple: Tuple,
}

/// A listener's accept queue: connections the shards reported established (see
/// `Event::Accepted`), waiting for [`TcpListener::accept`](crate::TcpListener::accept).
#[derive(Debug)]
pub(crate) struct ListenerShared {
    /// The listener as the shards see it.
    pub(crate) listen: Arc<Listen>,
    queue: Mutex<VecDeque<Accepted>>,
    notify: Notify,
    closed: AtomicBool,
}

impl ListenerShared {
    pub(crate) fn new(listen: Arc<Listen>) -> Self {
        Self {
            listen,
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Queues an established connection (called with its shard locked). Fails when the
    /// listener is gone; the caller then resets the connection.
    pub(crate) fn push(&self, accepted: Accepted) -> Result<(), Accepted> {
        let mut queue = lock(&self.queue);
        // Checked under the queue lock: `TcpListener::drop` sets `closed` before draining.
        if self.is_closed() {
            return Err(accepted);
        }
        queue.push_back(accepted);
        drop(queue);
        self.notify.notify_one();
        Ok(())
    }

    /// Resolves after the next `push`.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Closes the queue (later pushes fail) and takes what it held.
    pub(crate) fn close(&self) -> Vec<Accepted> {
        let mut queue = lock(&self.queue);
        self.closed.store(true, Relaxed);
        queue.drain(..).collect()
    }

    /// Takes the oldest established connection.
    pub(crate) fn pop(&self) -> Option<Accepted> {
        let accepted = lock(&self.queue).pop_front()?;
        self.listen.pending.fetch_sub(1, Relaxed);
        Some(accepted)
    }
}
