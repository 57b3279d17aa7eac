//! What the core takes from the stack around it and what it hands back: [`Env`] (the
//! configuration, clock, counters, buffer budget and listener table every shard shares)
//! and [`Event`] (what a shard reports to the socket layer). The socket layer owns one
//! `Env` and lends it to each shard call; it never hands the core a tokio type.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, PoisonError, RwLock};

use smoltcp::iface::SocketHandle;
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::config::NetstackConfig;
use crate::sender::Budget;
use crate::stats::Counters;
use crate::time::Clock;
use crate::wire::Tuple;

/// State every shard reads and the socket layer shares with them.
pub(crate) struct Env {
    pub(crate) config: NetstackConfig,
    pub(crate) clock: Clock,
    pub(crate) counters: Counters,
    /// The stack-wide buffer budget (`tcp_buffer_budget`): rings and what the senders
    /// hold (see `autotune.rs`, `sender.rs`).
    pub(crate) budget: Budget,
    /// Bytes of rings the SYN table's entries were promised (see `synq.rs`).
    pub(crate) syn_promised: Arc<AtomicUsize>,
    /// The senders' share of `budget` (see `NetstackConfig::tcp_buffer_budget`).
    pub(crate) sender_budget: Budget,
    /// Who listens where: looked up by the shards on each SYN.
    pub(crate) listeners: Listeners,
}

impl Env {
    pub(crate) fn new(config: NetstackConfig, clock: Clock) -> Self {
        let budget = Budget::new(config.tcp_buffer_budget);
        let sender_budget = budget.share(config.sender_share());
        Self {
            clock,
            counters: Counters::default(),
            budget,
            sender_budget,
            syn_promised: Arc::new(AtomicUsize::new(0)),
            listeners: Listeners::default(),
            config,
        }
    }
}

/// What a shard reports to the socket layer, taken with `Shard::take_events` before the
/// shard's lock is released.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection for `listener` finished its handshake. It counts in
    /// `listener.pending` and in `pending_accepts` until the socket layer hands it to an
    /// application; if the listener is gone, the socket layer undoes both and gives the
    /// connection back with `Shard::release(.., abort: true)`.
    Accepted {
        listener: Arc<Listen>,
        shard: usize,
        handle: SocketHandle,
        tuple: Tuple,
    },
}

/// A listening endpoint as the shards see it: where, and how many connections it may
/// hold before it accepts them.
#[derive(Debug)]
pub(crate) struct Listen {
    /// Tells the socket layer's accept queue of this listener (unique per stack).
    pub(crate) id: u64,
    /// Bound address; `None` for every address of the stack.
    pub(crate) addr: Option<IpAddress>,
    pub(crate) port: u16,
    pub(crate) backlog: usize,
    /// Half-open plus queued connections, bounded by `backlog`.
    pub(crate) pending: AtomicUsize,
}

/// The listener table, by port.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    by_port: RwLock<HashMap<u16, Vec<Arc<Listen>>>>,
    next_id: AtomicU64,
}

impl Listeners {
    /// Adds a listener on `addr` (`None`: all addresses) and `port`; `None` when the
    /// endpoint is taken.
    pub(crate) fn add(
        &self,
        addr: Option<IpAddress>,
        port: u16,
        backlog: usize,
    ) -> Option<Arc<Listen>> {
        let mut by_port = self.by_port.write().unwrap_or_else(PoisonError::into_inner);
        let on_port = by_port.entry(port).or_default();
        if on_port
            .iter()
            .any(|l| l.addr.is_none() || addr.is_none() || l.addr == addr)
        {
            return None;
        }
        let listen = Arc::new(Listen {
            id: self.next_id.fetch_add(1, Relaxed),
            addr,
            port,
            backlog,
            pending: AtomicUsize::new(0),
        });
        on_port.push(Arc::clone(&listen));
        Some(listen)
    }

    /// The listener for a SYN to `local`, if any.
    pub(crate) fn find(&self, local: IpEndpoint) -> Option<Arc<Listen>> {
        let by_port = self.by_port.read().unwrap_or_else(PoisonError::into_inner);
        by_port
            .get(&local.port)?
            .iter()
            .find(|l| l.addr.is_none_or(|a| a == local.addr))
            .cloned()
    }

    /// Forgets a listener: no SYN finds it any more.
    pub(crate) fn remove(&self, listen: &Arc<Listen>) {
        let mut by_port = self.by_port.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(on_port) = by_port.get_mut(&listen.port) {
            on_port.retain(|l| !Arc::ptr_eq(l, listen));
            if on_port.is_empty() {
                by_port.remove(&listen.port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Ipv4Address;

    fn ep(a: u8, port: u16) -> IpEndpoint {
        IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, a)), port)
    }

    #[test]
    fn listeners_are_found_by_address_and_port_and_taken_once() {
        let l = Listeners::default();
        let one = IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 1));
        let two = IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 2));
        let a = l.add(Some(one), 80, 4).expect("free");
        assert!(l.add(Some(one), 80, 4).is_none(), "taken");
        assert!(l.add(None, 80, 4).is_none(), "the wildcard overlaps");
        let b = l.add(Some(two), 80, 4).expect("other address");
        assert_ne!(a.id, b.id);
        assert_eq!(l.find(ep(1, 80)).map(|x| x.id), Some(a.id));
        assert_eq!(l.find(ep(2, 80)).map(|x| x.id), Some(b.id));
        assert!(l.find(ep(1, 81)).is_none());
        l.remove(&a);
        assert!(l.find(ep(1, 80)).is_none(), "removed");
        l.remove(&b);
        let any = l.add(None, 80, 4).expect("port free again");
        assert_eq!(l.find(ep(2, 80)).map(|x| x.id), Some(any.id));
    }
}
