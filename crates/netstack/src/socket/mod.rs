//! The socket layer: the tokio adapter around the core. `stack` holds the shards behind
//! locks, the outbound queue, the driver task and the listeners' accept queues (`accept`;
//! it drains the core's events into them); `tcp`, `udp` and `icmp` are the sockets
//! applications use, each adding its methods to `Netstack`. Imports go one way: the
//! sockets use `stack`, `stack` uses only `accept` and the core.

pub(crate) mod accept;
pub(crate) mod icmp;
pub(crate) mod stack;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex. A poisoned one (a panic while it was held: a bug) is logged, cleared
/// and used: memory safety never depends on it, since the socket set keeps each socket
/// and its ring mapping consistent within single calls (see `buffer.rs`), and the worst a
/// half-finished update leaves is a connection or counter off until it times out, which
/// is better than failing every other connection of the stack.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| {
        tracing::error!("netstack: a lock was poisoned by a panic; continuing");
        m.clear_poison();
        poisoned.into_inner()
    })
}
