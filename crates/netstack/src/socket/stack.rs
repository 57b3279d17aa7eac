//! The tokio adapter: [`Netstack`], its shards behind locks, the outbound queue and the
//! driver task that polls shards at their deadlines.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Instant;

use bytes::Bytes;
use smoltcp::wire::IpAddress;
use tokio::sync::Notify;

use super::lock;
use crate::accept::{Accepted, ListenerShared};
use crate::config::{ConfigError, NetstackConfig};
use crate::env::{Env, Event};
use crate::offload;
use crate::shard::Shard;
use crate::stats::NetstackStats;
use crate::time::Clock;
use crate::wire::{Class, Tuple, classify, shard_of};

/// A userspace TCP/IP stack on virtual IPs. A cheap handle: clones share one stack.
///
/// The packet side ([`push_inbound`](Self::push_inbound) puts packets from the tunnel in,
/// [`recv_outbound`](Self::recv_outbound) takes packets for the tunnel out) connects it to
/// a tunnel; the socket side
/// ([`listen`](Self::listen), [`connect`](Self::connect), [`bind_udp`](Self::bind_udp),
/// [`ping`](Self::ping)) serves applications. A driver task, spawned by
/// [`Netstack::new`] and ended when the last handle, socket and listener are gone,
/// runs timers (retransmits, delayed ACKs, keep-alives) from smoltcp's next deadline:
/// it sleeps when nothing is due.
#[derive(Clone)]
pub struct Netstack {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Netstack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netstack")
            .field("addresses", &self.shared.config.addresses)
            .finish_non_exhaustive()
    }
}

/// State shared by the handle, the sockets and the driver: the core's [`Env`] (reached
/// through `Deref`) and the shards, plus what only the socket layer has: the outbound
/// queue, the driver's wake-ups and the listeners' accept queues.
pub(crate) struct Shared {
    env: Env,
    addrs: Vec<IpAddress>,
    shards: Box<[Mutex<Shard>]>,
    /// Each shard's next deadline in clock microseconds (`u64::MAX`: none).
    deadlines: Box<[AtomicU64]>,
    /// Shards that stopped emitting because the outbound queue was full.
    blocked: AtomicU64,
    /// When the driver will wake next (clock microseconds).
    driver_at: AtomicU64,
    driver: Arc<Notify>,
    out: Mutex<VecDeque<Bytes>>,
    out_len: AtomicUsize,
    /// Bytes of the packets in `out`.
    out_bytes: AtomicUsize,
    out_ready: Notify,
    /// Each listener's accept queue, by [`Listen::id`](crate::env::Listen).
    accept_queues: RwLock<HashMap<u64, Arc<ListenerShared>>>,
    hash_key: u64,
}

impl std::ops::Deref for Shared {
    type Target = Env;

    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wake the driver so it sees the stack is gone and ends.
        self.driver.notify_one();
        tracing::debug!("netstack: stopped");
    }
}

impl Netstack {
    /// Creates the stack and spawns its driver on the current tokio runtime.
    pub fn new(config: NetstackConfig) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let shared = Arc::new(Shared::new(config, Instant::now())?);
        runtime.spawn(drive(Arc::downgrade(&shared), Arc::clone(&shared.driver)));
        tracing::info!(addresses = ?shared.config.addresses, path_mtu = shared.config.path_mtu, "netstack: up");
        Ok(Self { shared })
    }

    /// The stack's configuration.
    pub fn config(&self) -> &NetstackConfig {
        &self.shared.config
    }

    /// Gauges and counters.
    pub fn stats(&self) -> NetstackStats {
        let mut stats = self.shared.counters.snapshot();
        stats.tcp_repair_bytes = self.shared.sender_bytes();
        stats
    }

    /// Puts inbound IP packets (from the tunnel) into the stack and processes them at
    /// once: each shard's share of the batch goes through smoltcp, then one egress pass
    /// emits replies into the outbound queue. Returns how many packets were accepted (the
    /// rest were malformed or not for us, and counted).
    ///
    /// It never waits for room in the outbound queue (so one task may feed and drain
    /// two stacks without deadlock): when the queue is full the stack stops emitting, TCP
    /// windows close, and peers slow down; the only packets dropped are immediate replies
    /// (RST, echo replies) past twice the queue bound, counted as
    /// [`DropReason::QueueFull`](crate::DropReason::QueueFull).
    pub fn push_inbound<P: AsRef<[u8]>>(&self, packets: &[P]) -> usize {
        self.shared.push_at(packets, Instant::now())
    }

    /// Waits for outbound IP packets (to the tunnel), takes up to `max` of them out of the
    /// stack into `out`. Returns how many (at least 1 unless `max` is 0).
    pub async fn recv_outbound(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        loop {
            let mut ready = pin!(self.shared.out_ready.notified());
            ready.as_mut().enable();
            let n = self.try_recv_outbound(out, max);
            if n > 0 || max == 0 {
                return n;
            }
            ready.await;
        }
    }

    /// Takes up to `max` queued outbound packets into `out` without waiting.
    pub fn try_recv_outbound(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        self.shared.drain_out(out, max)
    }

    /// Outbound packets waiting to be taken.
    pub fn pending_outbound(&self) -> usize {
        self.shared.out_len.load(Relaxed)
    }

    /// Bytes of the outbound packets waiting to be taken (bounded by
    /// [`max_outbound_bytes`](NetstackConfig::max_outbound_bytes), past which the stack
    /// stops emitting).
    pub fn pending_outbound_bytes(&self) -> usize {
        self.shared.out_bytes.load(Relaxed)
    }

    /// A human-readable dump of every TCP socket's state (for debugging).
    #[doc(hidden)]
    pub fn debug_dump(&self) -> String {
        let mut out = format!(
            "out_len={} blocked={:#x} driver_at={} deadlines<now={}\n",
            self.shared.out_len.load(SeqCst),
            self.shared.blocked.load(SeqCst),
            self.shared.driver_at.load(SeqCst),
            self.shared.clock.micros(Instant::now()),
        );
        for i in 0..self.shared.shards.len() {
            let d = self.shared.deadlines[i].load(SeqCst);
            let shard = self.shared.lock(i);
            let dump = shard.debug_dump();
            if !dump.is_empty() {
                out.push_str(&format!("shard {i} deadline {d}: {dump}\n"));
            }
        }
        out
    }

    /// Number of sockets in each shard (for tests and benches of the sharding).
    pub fn shard_sizes(&self) -> Vec<usize> {
        (0..self.shared.shards.len())
            .map(|i| self.shared.lock(i).socket_count())
            .collect()
    }
}

impl Shared {
    /// Bytes of the budget the senders hold.
    pub(crate) fn sender_bytes(&self) -> usize {
        self.sender_budget.used()
    }

    /// A stack without a driver; [`Netstack::new`] adds one.
    pub(crate) fn new(config: NetstackConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let clock = Clock::new(now);
        let env = Env::new(config, clock);
        let config = &env.config;
        let shards = (0..config.shards)
            .map(|i| {
                let promised = Arc::clone(&env.syn_promised);
                Mutex::new(Shard::new(i, config, clock, rand::random(), promised, now))
            })
            .collect();
        let deadlines = (0..config.shards)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect();
        Ok(Self {
            addrs: config
                .addresses
                .iter()
                .map(|a| IpAddress::from(*a))
                .collect(),
            shards,
            deadlines,
            blocked: AtomicU64::new(0),
            driver_at: AtomicU64::new(u64::MAX),
            driver: Arc::new(Notify::new()),
            out: Mutex::new(VecDeque::new()),
            out_len: AtomicUsize::new(0),
            out_bytes: AtomicUsize::new(0),
            out_ready: Notify::new(),
            accept_queues: RwLock::new(HashMap::new()),
            hash_key: rand::random(),
            env,
        })
    }

    /// Classifies `packets`, then feeds each shard its share and runs one egress pass.
    pub(crate) fn push_at<P: AsRef<[u8]>>(&self, packets: &[P], now: Instant) -> usize {
        let shared = self;
        let n_shards = shared.shards.len();
        let mut items: Vec<(usize, usize, Class)> = Vec::with_capacity(packets.len());
        shared
            .counters
            .rx_packets
            .fetch_add(packets.len() as u64, Relaxed);
        for (i, packet) in packets.iter().enumerate() {
            match classify(packet.as_ref(), &shared.addrs) {
                Ok(class) => {
                    let shard = match &class {
                        Class::Tcp { tuple, .. } => shard_of(shared.hash_key, tuple, n_shards),
                        _ => 0,
                    };
                    items.push((shard, i, class));
                }
                Err(reason) => shared.counters.drop(reason),
            }
        }
        // By shard, then by connection (stable: each connection's packets keep their order;
        // only packets of different connections trade places).
        // A batch is mostly one connection's packets, already in that order: checking
        // costs one pass, sorting it anyway cost 6 % of the in-memory bulk bench's CPU.
        let offload = shared.config.offload();
        if offload {
            let key = |item: &(usize, usize, Class)| match item.2 {
                Class::Tcp { tuple, .. } => (item.0, Some(tuple)),
                _ => (item.0, None),
            };
            if !items.is_sorted_by_key(key) {
                items.sort_by_key(key);
            }
        } else if !items.is_sorted_by_key(|item| item.0) {
            items.sort_by_key(|item| item.0);
        }
        // One buffer for every run of joined segments of this batch.
        let mut scratch = Vec::new();
        for group in items.chunk_by(|a, b| a.0 == b.0) {
            let idx = group[0].0;
            let limit = 2 * shared.config.max_outbound_packets;
            let replies = limit.saturating_sub(shared.out_len.load(Relaxed));
            shared.with_shard(idx, now, |shard| {
                let mut k = 0;
                while k < group.len() {
                    let (_, i, mut class) = group[k];
                    let mut packet = packets[i].as_ref();
                    k += 1;
                    // Pure ACKs of one connection: the sender sees each, smoltcp only the
                    // newest (see `Shard::ack_to_sender_only`).
                    if offload
                        && let Class::Tcp { tuple, .. } = class
                        && let Some(mut ack) = offload::pure_ack(packet)
                    {
                        while let Some(&(_, j, next @ Class::Tcp { tuple: t, .. })) = group.get(k)
                            && t == tuple
                            && let Some(newer) = offload::pure_ack(packets[j].as_ref())
                            && offload::seq_at_or_after(newer, ack)
                            && shard.ack_to_sender_only(shared, tuple, packet, now)
                        {
                            (packet, class, ack) = (packets[j].as_ref(), next, newer);
                            k += 1;
                        }
                    }
                    // In-order data of one connection is joined (see `offload.rs`).
                    let merge = match class {
                        Class::Tcp { tuple, .. } if offload => {
                            match offload::Merge::start(packet, std::mem::take(&mut scratch)) {
                                Ok(m) => Some((m, tuple)),
                                Err(buf) => {
                                    scratch = buf;
                                    None
                                }
                            }
                        }
                        _ => None,
                    };
                    if let Some((mut merge, tuple)) = merge {
                        while let Some(&(_, j, Class::Tcp { tuple: t, .. })) = group.get(k)
                            && t == tuple
                            && merge.push(packets[j].as_ref())
                        {
                            k += 1;
                        }
                        if merge.segments > 1 {
                            shared
                                .counters
                                .tcp_joined
                                .fetch_add(u64::from(merge.segments), Relaxed);
                            let (joined, ends) = merge.finish();
                            shard.handle_packet(shared, &joined, class, now, replies, Some(&ends));
                            shared.deliver_events(shard, now);
                            scratch = joined;
                            continue;
                        }
                        scratch = merge.into_buf();
                    }
                    shard.handle_packet(shared, packet, class, now, replies, None);
                    shared.deliver_events(shard, now);
                }
            });
        }
        items.len()
    }

    /// Moves up to `max` outbound packets into `out`; wakes what waited for room.
    pub(crate) fn drain_out(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let shared = self;
        let n = {
            let mut q = lock(&shared.out);
            let n = max.min(q.len());
            let from = out.len();
            out.extend(q.drain(..n));
            let bytes = out[from..].iter().map(Bytes::len).sum();
            shared.out_bytes.fetch_sub(bytes, SeqCst);
            shared.out_len.fetch_sub(n, SeqCst);
            n
        };
        if n > 0 {
            if shared.blocked.load(SeqCst) != 0 {
                shared.driver.notify_one();
            }
            if shared.out_len.load(Relaxed) > 0 {
                // More left: keep the next `recv_outbound` from sleeping.
                shared.out_ready.notify_one();
            }
        }
        n
    }

    /// Registers a listener on `addr`.
    pub(crate) fn register_listener(
        &self,
        addr: SocketAddr,
        backlog: usize,
    ) -> io::Result<Arc<ListenerShared>> {
        let ip = self.local_ip(addr.ip())?;
        if addr.port() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "netstack: listen: port 0 is not supported",
            ));
        }
        // The accept queue is in place before a shard can find the listener.
        let mut queues = self
            .accept_queues
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let listen = self
            .listeners
            .add(ip, addr.port(), backlog.max(1))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("netstack: listen: {addr} is in use"),
                )
            })?;
        let listener = Arc::new(ListenerShared::new(Arc::clone(&listen)));
        queues.insert(listen.id, Arc::clone(&listener));
        Ok(listener)
    }

    /// Locks shard `idx` (see [`lock`] for a poisoned one).
    pub(crate) fn lock(&self, idx: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[idx])
    }

    /// Runs `f` on shard `idx`, then its egress pass, maintenance and deadline update.
    pub(crate) fn with_shard<R>(
        &self,
        idx: usize,
        now: Instant,
        f: impl FnOnce(&mut Shard) -> R,
    ) -> R {
        let mut shard = self.lock(idx);
        let r = f(&mut shard);
        self.finish(idx, &mut shard, now);
        r
    }

    /// Egress, maintenance, flush to the outbound queue, next deadline.
    pub(crate) fn finish(&self, idx: usize, shard: &mut Shard, now: Instant) {
        self.deliver_events(shard, now);
        let bit = 1u64 << idx;
        let room = self.out_room();
        // Blocked: no room, or the room ran out with senders still holding packets to
        // send. Polled again when the queue drains (see `drain_out`).
        let blocked = room == 0 || shard.egress(self, now, room);
        if blocked {
            self.blocked.fetch_or(bit, SeqCst);
        }
        shard.maintain(self, now);
        if shard.has_transmit() {
            self.enqueue_out(shard.take_transmit());
        }
        let now_us = self.clock.micros(now);
        let deadline = if blocked {
            // Polled again when the queue drains (see `try_recv_outbound`).
            u64::MAX
        } else {
            match shard.poll_timeout(now) {
                // smoltcp asks for "now" only when it could not send; do not spin.
                Some(t) => self.clock.micros(t).max(now_us + 1000),
                None => u64::MAX,
            }
        };
        self.deadlines[idx].store(deadline, SeqCst);
        if deadline < self.driver_at.load(SeqCst) {
            self.driver.notify_one();
        }
    }

    /// Room left in the outbound queue, in wire packets: the packet bound, and the byte
    /// bound in packets of the path MTU. (The shards' egress stops at this many packets
    /// or as many path-MTU's worth of bytes, whichever comes first.)
    fn out_room(&self) -> usize {
        let packets = self
            .config
            .max_outbound_packets
            .saturating_sub(self.out_len.load(SeqCst));
        let bytes = self
            .config
            .max_outbound_bytes
            .saturating_sub(self.out_bytes.load(SeqCst));
        packets.min(bytes / self.config.path_mtu.max(1))
    }

    fn enqueue_out(&self, packets: Vec<Bytes>) {
        let n = packets.len();
        let bytes = packets.iter().map(Bytes::len).sum();
        self.out_bytes.fetch_add(bytes, SeqCst);
        lock(&self.out).extend(packets);
        self.out_len.fetch_add(n, SeqCst);
        self.counters.tx_packets.fetch_add(n as u64, Relaxed);
        self.out_ready.notify_one();
    }

    /// Forgets a listener: no SYN finds it and no connection is queued for it any more.
    pub(crate) fn unregister(&self, listener: &ListenerShared) {
        let mut queues = self
            .accept_queues
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.listeners.remove(&listener.listen);
        queues.remove(&listener.listen.id);
    }

    /// Removes only the accept queue of `listener`, as a listener dropped between a
    /// shard's lookup and the delivery of its event leaves things.
    #[cfg(test)]
    pub(crate) fn forget_accept_queue(&self, listener: &ListenerShared) {
        self.accept_queues
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&listener.listen.id);
    }

    /// Hands the connections shard `idx` reported established to their listeners' accept
    /// queues; one whose listener is gone is reset.
    fn deliver_events(&self, shard: &mut Shard, now: Instant) {
        for event in shard.take_events() {
            match event {
                Event::Accepted {
                    listener,
                    shard: idx,
                    handle,
                    tuple,
                } => {
                    let queue = self
                        .accept_queues
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&listener.id)
                        .cloned();
                    let accepted = Accepted {
                        shard: idx,
                        handle,
                        tuple,
                    };
                    if queue.is_none_or(|q| q.push(accepted).is_err()) {
                        // The listener is gone: reset, and let the sweep free the socket.
                        self.counters.pending_accepts.fetch_sub(1, Relaxed);
                        listener.pending.fetch_sub(1, Relaxed);
                        shard.release(self, tuple, now, true);
                    }
                }
            }
        }
    }

    /// `ip` as a local address to bind: `None` for unspecified, else one of ours.
    pub(crate) fn local_ip(&self, ip: IpAddr) -> io::Result<Option<IpAddress>> {
        if ip.is_unspecified() {
            return Ok(None);
        }
        let ip = IpAddress::from(ip);
        if self.addrs.contains(&ip) {
            Ok(Some(ip))
        } else {
            Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("netstack: {ip} is not an address of this stack"),
            ))
        }
    }

    /// Our address of `remote`'s family.
    pub(crate) fn source_for(&self, remote: IpAddr) -> io::Result<IpAddress> {
        self.addrs
            .iter()
            .copied()
            .find(|a| a.version() == IpAddress::from(remote).version())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("netstack: no local address of the family of {remote}"),
                )
            })
    }

    /// One driver pass: polls the shards that are due or were blocked. Returns the earliest
    /// remaining deadline (clock microseconds).
    fn drive_once(&self, now: Instant) -> u64 {
        let now_us = self.clock.micros(now);
        self.driver_at.store(0, SeqCst);
        let full = self.out_room() == 0;
        let due = if full {
            0
        } else {
            self.blocked.swap(0, SeqCst)
        };
        for (idx, deadline) in self.deadlines.iter().enumerate() {
            if due & (1 << idx) != 0 || deadline.load(SeqCst) <= now_us {
                self.with_shard(idx, now, |_| {});
            }
        }
        let next = self.min_deadline();
        self.driver_at.store(next, SeqCst);
        // A shard that stored an earlier deadline before seeing `driver_at` is caught here.
        self.min_deadline().min(next)
    }

    /// The earliest shard deadline, as an instant.
    #[cfg(test)]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let us = self.min_deadline();
        (us != u64::MAX).then(|| self.clock.instant_at(us))
    }

    /// One driver pass at `now` (for simulated time).
    #[cfg(test)]
    pub(crate) fn drive_at(&self, now: Instant) {
        self.drive_once(now);
    }

    #[cfg(test)]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of a TCP 4-tuple.
    pub(crate) fn shard_for(&self, tuple: &Tuple) -> usize {
        shard_of(self.hash_key, tuple, self.shards.len())
    }

    fn min_deadline(&self) -> u64 {
        self.deadlines
            .iter()
            .map(|d| d.load(SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// The driver task: polls shards when they are due, sleeps otherwise. Holds only a weak
/// reference while asleep, so dropping the last handle and socket ends it.
async fn drive(weak: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let mut notified = pin!(wake.notified());
        notified.as_mut().enable();
        let sleep_until = {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let next = shared.drive_once(Instant::now());
            let now_us = shared.clock.micros(Instant::now());
            if next <= now_us {
                drop(shared);
                tokio::task::yield_now().await;
                continue;
            }
            (next != u64::MAX).then(|| shared.clock.instant_at(next))
        };
        match sleep_until {
            Some(at) => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => notified.await,
        }
    }
}
