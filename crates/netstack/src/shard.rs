//! One shard of the stack: a smoltcp interface and socket set, and the connection table
//! that gives the socket set a backlog, limits and cleanup. Sans-IO: packets and `now` go
//! in, packets and the next deadline come out.
//!
//! smoltcp scans every socket of a set on each ingress packet and each egress pass, so
//! the stack splits its TCP connections over several shards by a keyed hash of the
//! 4-tuple. UDP and ICMP sockets live in shard 0.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smoltcp::iface::{Config, Interface, SocketHandle};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::autotune::Rings;
use crate::buffer::{Owned, Sockets, TcpSocket};
use crate::config::NetstackConfig;
use crate::device::{Dev, capabilities};
use crate::offload::{self, Offload};
use crate::sender::{Sender, Verdict};
use crate::stack::Shared;
use crate::stats::DropReason;
use crate::synq::{SynTable, parse_syn, replay_iface, smoltcp_wscale};
use crate::tcp::{Accepted, ListenerShared};
use crate::time::Clock;
use crate::wire::{Class, Segment, Tuple, tcp_segment};

/// Bytes a connection sends before its emptied send ring is released (see
/// [`Shard::release_idle_tx`]): the syscall and the page faults after it cost little
/// next to this much data.
const RELEASE_AFTER: usize = 256 << 10;

/// How long such a connection's send queue must stay empty before its ring is released.
const RELEASE_DELAY: Duration = Duration::from_secs(1);

/// How often half-open and closing connections are checked while any exist.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A TCP socket's entry in the connection table.
struct Conn {
    handle: SocketHandle,
    state: ConnState,
    /// The peer sent an RST (tells a reset from a timeout once the socket is closed).
    reset: bool,
    /// Its stream called [`TcpStream::abort`](crate::TcpStream::abort).
    aborted: bool,
    /// What goes on the wire and when (see `sender.rs`).
    sender: Sender,
    /// The sender's deadline as entered in `Shard::timers`.
    timer_at: Option<Instant>,
    /// Listed in `Shard::ready`.
    ready: bool,
    /// Payload bytes sent since the send ring's pages were last released.
    tx_dirty: usize,
    /// Queued in `Shard::release_queue`.
    release_pending: bool,
    /// What its rings take from the budget (see `autotune.rs`).
    rings: Rings,
    /// Segmentation offload: wire segment sizes, window scale, ACKs sent.
    offload: Offload,
}

/// What a segment for a SYN table entry did.
enum Completion {
    /// It completed the handshake: the connection has a socket, smoltcp takes the segment.
    Socket,
    /// Handled (or dropped) here; smoltcp does not see it.
    Consumed,
    /// Not for the entry: smoltcp answers it (with an RST, as no socket matches).
    Refused,
}

/// Who owns a TCP socket.
enum ConnState {
    /// Just created by the handshake-completing ACK for `listener` (see `synq.rs`):
    /// handed to its accept queue, or reset, before the packet's processing ends.
    HalfOpen {
        listener: Arc<ListenerShared>,
        deadline: Instant,
    },
    /// A `TcpStream` or a listener's accept queue owns it.
    Owned,
    /// Its stream was dropped: finishing the close, aborted past `deadline`.
    Closing {
        deadline: Instant,
        time_wait_until: Option<Instant>,
    },
}

/// One smoltcp interface with its sockets.
pub(crate) struct Shard {
    /// The smoltcp sockets with their rings.
    sockets: Sockets,
    iface: Interface,
    conns: HashMap<Tuple, Conn>,
    caps: DeviceCapabilities,
    clock: Clock,
    tx: Vec<Bytes>,
    /// Connections in `HalfOpen` or `Closing`.
    watched: usize,
    /// Half-open connections, without sockets (see `synq.rs`).
    synq: SynTable,
    /// How many connections of this shard are `HalfOpen`.
    half_open: usize,
    sweep_at: Option<Instant>,
    /// Every connection's sender deadline: the one timer structure of the senders.
    timers: BTreeSet<(Instant, Tuple)>,
    /// Connections whose sender may have packets to send now.
    ready: Vec<Tuple>,
    /// `tcp_sender` is off: smoltcp sends on its own (its Cubic, its timers).
    sender_off: bool,
    /// `segment_offload`: smoltcp works in large segments (see `offload.rs`).
    offload: bool,
    /// The path MTU: what goes on the wire.
    path_mtu: usize,
    /// Connections whose send ring may be released at the given time (in time order).
    release_queue: VecDeque<(Instant, Tuple)>,
    /// Bound UDP ports (shard 0 only), with the number of sockets on each.
    pub(crate) udp_ports: HashMap<u16, usize>,
    /// ICMP echo identifiers in use (shard 0 only).
    pub(crate) icmp_idents: HashSet<u16>,
    index: usize,
    /// The latest `now` seen: callers on other threads may arrive with an older one,
    /// and smoltcp must never see time go backwards.
    last_now: Instant,
}

impl Shard {
    /// A shard answering on `config.addresses`.
    pub(crate) fn new(
        index: usize,
        config: &NetstackConfig,
        clock: Clock,
        seed: u64,
        syn_promised: Arc<AtomicUsize>,
        now: Instant,
    ) -> Self {
        let caps = capabilities(config.segment_mtu(), config.offload());
        let mut tx = Vec::new();
        let mut dev = Dev {
            rx: None,
            tx: &mut tx,
            tx_limit: 0,
            bytes_limit: 0,
            bytes: 0,
            fill_below: 0,
            caps: &caps,
        };
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut dev, clock.smol_at(now));
        iface.update_ip_addrs(|addrs| {
            for addr in &config.addresses {
                let addr = IpAddress::from(*addr);
                let prefix = if addr.version() == smoltcp::wire::IpVersion::Ipv4 {
                    32
                } else {
                    128
                };
                // Capacity is 2 and the config allows one address per family.
                let _ = addrs.push(IpCidr::new(addr, prefix));
            }
        });
        // Medium::Ip has no neighbours: a default route (via our own address, which is
        // never looked at) makes every destination reachable through the device.
        for addr in &config.addresses {
            let _ = match IpAddress::from(*addr) {
                IpAddress::Ipv4(a) => iface.routes_mut().add_default_ipv4_route(a).map(|_| ()),
                IpAddress::Ipv6(a) => iface.routes_mut().add_default_ipv6_route(a).map(|_| ()),
            };
        }
        Self {
            sockets: Sockets::new(),
            iface,
            conns: HashMap::new(),
            caps,
            clock,
            tx,
            watched: 0,
            synq: SynTable::new(syn_promised),
            half_open: 0,
            sweep_at: None,
            timers: BTreeSet::new(),
            ready: Vec::new(),
            sender_off: !config.tcp_sender,
            offload: config.offload(),
            path_mtu: config.path_mtu,
            release_queue: VecDeque::new(),
            udp_ports: HashMap::new(),
            icmp_idents: HashSet::new(),
            index,
            last_now: now,
        }
    }

    /// `now`, or the latest time already seen if `now` is older (monotonic per shard).
    fn tick(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    /// Feeds one classified inbound packet through smoltcp (ingress only).
    pub(crate) fn handle_packet(
        &mut self,
        shared: &Shared,
        packet: &[u8],
        class: Class,
        now: Instant,
        reply_limit: usize,
        ends: Option<&[u32]>,
    ) {
        let now = self.tick(now);
        let mut watch = None;
        let mut seg = None;
        match class {
            Class::Tcp {
                tuple,
                syn_only,
                rst,
            } => {
                seg = if self.sender_off {
                    None
                } else {
                    tcp_segment(packet)
                };
                if syn_only && self.reusable(&tuple) {
                    // A new connection on the 4-tuple of one in TIME-WAIT: let it in, as
                    // Linux does, instead of making the peer wait for the old one to go.
                    self.remove(shared, tuple);
                }
                match self.conns.get_mut(&tuple) {
                    Some(conn) => {
                        conn.reset |= rst;
                        if matches!(conn.state, ConnState::HalfOpen { .. }) {
                            watch = Some(tuple);
                        }
                    }
                    None if syn_only => {
                        if self.on_syn(shared, packet, tuple, now, reply_limit) {
                            return;
                        }
                    }
                    None if self.synq.get(&tuple).is_some() => {
                        match self.complete_half(shared, packet, tuple, rst, now) {
                            Completion::Socket => watch = Some(tuple),
                            Completion::Consumed => return,
                            Completion::Refused => shared.counters.drop(DropReason::NoSocket),
                        }
                    }
                    None => shared.counters.drop(DropReason::NoSocket),
                }
            }
            Class::Udp { port } => {
                if !self.udp_ports.contains_key(&port) {
                    shared.counters.drop(DropReason::NoSocket);
                    return;
                }
            }
            Class::Other => {}
        }
        let rewritten;
        let packet = match class {
            Class::Tcp {
                tuple, rst: false, ..
            } if self.offload => match self.offload_inbound(shared, tuple, packet, ends) {
                Some(p) => {
                    rewritten = p;
                    &rewritten[..]
                }
                None => packet,
            },
            _ => packet,
        };
        let before = self.tx.len();
        let fill_below = self.fill_below();
        let mut dev = Dev {
            rx: Some(packet),
            tx: &mut self.tx,
            tx_limit: usize::MAX,
            bytes_limit: usize::MAX,
            bytes: 0,
            fill_below,
            caps: &self.caps,
        };
        self.sockets
            .poll_ingress_single(&mut self.iface, self.clock.smol_at(now), &mut dev);
        // An immediate reply (RST, echo reply) past the bound is dropped like on a full link.
        if self.tx.len() > before && self.tx.len() > reply_limit {
            self.tx.truncate(before);
            shared.counters.drop(DropReason::QueueFull);
        }
        self.offload_emitted(shared, before);
        if let Class::Tcp { tuple, .. } = class {
            self.feed_sender(shared, tuple, seg.as_ref(), now);
            self.reset_unread(tuple);
            self.release_idle_tx(tuple, now);
        }
        if let Some(tuple) = watch {
            self.check_half_open(shared, tuple, now);
        }
    }

    /// Runs the senders' due timers, then egress passes until smoltcp has nothing more
    /// to send, then the senders' transmissions, until `budget` packets were produced.
    /// Returns whether it stopped for lack of room with packets left to send.
    pub(crate) fn egress(&mut self, shared: &Shared, now: Instant, budget: usize) -> bool {
        let now = self.tick(now);
        let limit = self.tx.len().saturating_add(budget);
        let bytes_limit = budget.saturating_mul(self.path_mtu);
        let mut bytes = 0;
        let fill_below = self.fill_below();
        self.run_sender_timers(shared, now);
        let t = self.clock.smol_at(now);
        loop {
            let from = self.tx.len();
            let mut dev = Dev {
                rx: None,
                tx: &mut self.tx,
                tx_limit: limit,
                bytes_limit,
                bytes,
                fill_below,
                caps: &self.caps,
            };
            let res = self.sockets.poll_egress(&mut self.iface, t, &mut dev);
            bytes = dev.bytes;
            self.offload_emitted(shared, from);
            self.route_emitted(shared, from, now);
            if res == smoltcp::iface::PollResult::None
                || self.tx.len() >= limit
                || bytes >= bytes_limit
            {
                break;
            }
        }
        self.transmit_ready(shared, now, limit);
        !self.ready.is_empty() && self.tx.len() >= limit
    }

    /// Drops half-open connections past their deadline and finishes closing ones.
    pub(crate) fn maintain(&mut self, shared: &Shared, now: Instant) {
        let now = self.tick(now);
        self.release_due(shared, now);
        let expired = self.synq.expire(now);
        shared.counters.half_open.fetch_sub(expired, Relaxed);
        if self.sweep_at.is_none_or(|at| now < at) {
            return;
        }
        let time_wait = shared.config.time_wait;
        let mut remove = Vec::new();
        let mut expired = Vec::new();
        let mut aborted = Vec::new();
        for (tuple, conn) in &mut self.conns {
            let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            match &mut conn.state {
                ConnState::Owned => {}
                ConnState::HalfOpen { deadline, .. } => {
                    if now >= *deadline {
                        expired.push(*tuple);
                    }
                }
                ConnState::Closing {
                    deadline,
                    time_wait_until,
                } => match socket.state() {
                    // Kept until its RST is out (smoltcp forgets the peer once sent).
                    tcp::State::Closed
                        if socket.remote_endpoint().is_none() || now >= *deadline =>
                    {
                        remove.push(*tuple)
                    }
                    tcp::State::Closed => {}
                    tcp::State::TimeWait => {
                        let until = *time_wait_until.get_or_insert(now + time_wait);
                        if now >= until {
                            remove.push(*tuple);
                        }
                    }
                    _ if now >= *deadline => {
                        socket.abort();
                        conn.sender.abort();
                        aborted.push(*tuple);
                    }
                    _ => {}
                },
            }
        }
        for tuple in expired {
            self.drop_half_open(shared, tuple, true, now);
        }
        for tuple in remove {
            self.remove(shared, tuple);
        }
        for tuple in aborted {
            self.schedule(shared, tuple);
        }
        self.sweep_at = (self.watched > 0).then(|| now + SWEEP_INTERVAL);
    }

    /// When this shard next needs a poll.
    pub(crate) fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let now = self.tick(now);
        let smol = self
            .sockets
            .poll_at(&mut self.iface, self.clock.smol_at(now))
            .map(|t| self.clock.std_at(t));
        let release = self.release_queue.front().map(|(at, _)| *at);
        // Senders with packets left when the outbound queue was full are resumed by the
        // stack when it drains, not by a deadline.
        let sender = self.timers.first().map(|(at, _)| *at);
        let synq = self.synq.next_deadline();
        [smol, self.sweep_at, sender, release, synq]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes the packets produced since the last call.
    pub(crate) fn take_transmit(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.tx)
    }

    /// Whether packets are waiting in [`Shard::take_transmit`].
    pub(crate) fn has_transmit(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Every TCP socket's state, for [`Netstack::debug_dump`](crate::Netstack::debug_dump).
    pub(crate) fn debug_dump(&self) -> String {
        let mut out = String::new();
        for (tuple, conn) in &self.conns {
            let s = self.sockets.get::<tcp::Socket>(conn.handle);
            out.push_str(&format!(
                "[{} -> {} {:?} sendq={} recvq={} sender={}] ",
                tuple.local,
                tuple.remote,
                s.state(),
                s.send_queue(),
                s.recv_queue(),
                conn.sender.debug(),
            ));
        }
        out
    }

    /// Number of sockets (of all kinds) in this shard.
    pub(crate) fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// Opens an outbound connection on `tuple`; `Ok(None)` when the tuple is taken.
    pub(crate) fn connect(
        &mut self,
        shared: &Shared,
        tuple: Tuple,
    ) -> io::Result<Option<SocketHandle>> {
        if self.conns.contains_key(&tuple) {
            return Ok(None);
        }
        let (handle, rings) = self.new_tcp(shared, 0, true)?;
        let mut socket = self.sockets.get_mut::<tcp::Socket>(handle);
        // Until established the smoltcp timeout bounds the handshake.
        socket.set_timeout(Some(
            self.clock.smol_duration(shared.config.handshake_timeout),
        ));
        let res = socket.connect(self.iface.context(), tuple.remote, tuple.local);
        self.conns.insert(
            tuple,
            Conn {
                handle,
                state: ConnState::Owned,
                reset: false,
                aborted: false,
                sender: self.new_sender(shared, &rings),
                timer_at: None,
                ready: false,
                tx_dirty: 0,
                release_pending: false,
                rings,
                offload: Offload::new(
                    shared
                        .config
                        .path_mss(tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6),
                ),
            },
        );
        if let Err(err) = res {
            self.remove(shared, tuple);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("netstack: connect to {}: {err}", tuple.remote),
            ));
        }
        Ok(Some(handle))
    }

    /// The TCP socket behind `handle`. smoltcp panics on a stale handle; ours never are:
    /// a socket owned by a stream or an accept queue is only removed through
    /// [`Shard::release`], called when that owner lets go.
    pub(crate) fn tcp(&mut self, handle: SocketHandle) -> TcpSocket<'_> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Whether `tuple` belongs to a dropped stream that finished its close (TIME-WAIT or
    /// closed), so a new SYN may take its place.
    fn reusable(&self, tuple: &Tuple) -> bool {
        self.conns.get(tuple).is_some_and(|conn| {
            matches!(conn.state, ConnState::Closing { .. })
                && matches!(
                    self.sockets.get::<tcp::Socket>(conn.handle).state(),
                    tcp::State::TimeWait | tcp::State::Closed
                )
        })
    }

    /// Reserves sender memory for `want` bytes the stream of `tuple` is about to queue;
    /// returns how many it may queue (see `Sender::reserve`). Past it a writer waits for
    /// an ACK.
    pub(crate) fn reserve_send(&mut self, shared: &Shared, tuple: &Tuple, want: usize) -> usize {
        let Some(conn) = self.conns.get_mut(tuple) else {
            return want;
        };
        let queued = self.sockets.get::<tcp::Socket>(conn.handle).send_queue();
        // Send-ring pages first (see `autotune.rs`), then the sender's memory.
        let want = conn.rings.admit_tx(
            &shared.budget,
            &shared.counters.tcp_ring_bytes,
            queued,
            want,
        );
        if self.sender_off {
            return want;
        }
        conn.sender.reserve(want)
    }

    /// Of `granted` bytes reserved, `queued` were queued: gives back the reservation of
    /// the rest.
    pub(crate) fn unreserve_send(&mut self, tuple: &Tuple, granted: usize, queued: usize) {
        let Some(conn) = self.conns.get_mut(tuple) else {
            return;
        };
        conn.rings.queued_tx(queued);
        let unused = granted.saturating_sub(queued);
        if !self.sender_off && unused > 0 {
            conn.sender.unreserve(unused);
        }
    }

    /// Whether the peer reset connection `tuple`.
    pub(crate) fn was_reset(&self, tuple: &Tuple) -> bool {
        self.conns.get(tuple).is_some_and(|c| c.reset)
    }

    /// Whether connection `tuple` was aborted by its stream.
    pub(crate) fn was_aborted(&self, tuple: &Tuple) -> bool {
        self.conns.get(tuple).is_some_and(|c| c.aborted)
    }

    /// The stream of `tuple` aborts it: smoltcp sends one RST at the next egress and
    /// neither sends nor delivers data any more.
    pub(crate) fn abort(&mut self, tuple: &Tuple) {
        let Some(conn) = self.conns.get_mut(tuple) else {
            return;
        };
        conn.aborted = true;
        let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        socket.discard_received();
        socket.abort();
        conn.sender.abort();
    }

    /// Sets the options of an established connection (idle timeout after the handshake).
    pub(crate) fn established(&mut self, shared: &Shared, handle: SocketHandle) {
        let mut socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.set_timeout(
            shared
                .config
                .idle_timeout
                .map(|d| self.clock.smol_duration(d)),
        );
    }

    /// The stream or accept queue owning `tuple` let go of it: close gracefully in the
    /// background (abort when unread data is left, as a kernel does). Bounded by
    /// `close_timeout` of peer silence (smoltcp's timeout) and a hard deadline.
    pub(crate) fn release(&mut self, shared: &Shared, tuple: Tuple, now: Instant, abort: bool) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        match socket.state() {
            // An aborted socket whose RST is still to be sent stays until it is out.
            tcp::State::Closed if socket.remote_endpoint().is_some() => {}
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => {
                self.remove(shared, tuple);
                return;
            }
            tcp::State::SynSent => {
                socket.abort();
                conn.sender.abort();
            }
            _ if abort || socket.recv_queue() > 0 => {
                socket.discard_received();
                socket.abort();
                conn.sender.abort();
            }
            _ => {
                socket.close();
                socket.set_timeout(Some(self.clock.smol_duration(shared.config.close_timeout)));
            }
        }
        conn.state = ConnState::Closing {
            deadline: now + shared.config.close_timeout * crate::CLOSE_HARD_LIMIT_FACTOR,
            time_wait_until: None,
        };
        self.watch(now);
    }

    /// Adds a UDP or ICMP socket.
    pub(crate) fn add_socket<T: Owned>(&mut self, socket: T) -> SocketHandle {
        self.sockets.add(socket)
    }

    /// Removes a UDP or ICMP socket.
    pub(crate) fn remove_socket(&mut self, handle: SocketHandle) {
        // UDP and ICMP sockets own their buffers: nothing unmapped.
        let _ = self.sockets.remove(handle);
    }

    /// A UDP or ICMP socket.
    pub(crate) fn socket<T: Owned>(&mut self, handle: SocketHandle) -> T::Mut<'_> {
        self.sockets.get_mut::<T>(handle)
    }

    fn watch(&mut self, now: Instant) {
        self.watched += 1;
        let at = now + SWEEP_INTERVAL;
        self.sweep_at = Some(self.sweep_at.map_or(at, |s| s.min(at)));
    }

    /// A SYN for a new 4-tuple: a SYN table entry and our SYN-ACK, no socket (see
    /// `synq.rs`). Returns whether it was handled here; `false` lets smoltcp answer (an
    /// RST, as no socket matches).
    fn on_syn(
        &mut self,
        shared: &Shared,
        packet: &[u8],
        tuple: Tuple,
        now: Instant,
        reply_limit: usize,
    ) -> bool {
        let c = &shared.counters;
        let config = &shared.config;
        let Some(listener) = shared.find_listener(tuple.local) else {
            c.drop(DropReason::NoSocket);
            return false;
        };
        let Some(syn) = parse_syn(packet) else {
            // A bad checksum: dropped silently, as smoltcp does.
            return true;
        };
        // The receive ring the connection will get (its size sets the window scale). The
        // large rings of the budget's first step are promised here and counted until the
        // handshake completes or the entry goes: a burst of SYNs must not be promised
        // more of them than the step holds, or their handshakes could not complete.
        // Under a flood the promises go to entries that never complete, and a real client
        // gets the usual rings until they expire.
        let used = shared.budget.used();
        let promised = shared.syn_promised.load(Relaxed);
        let sizes = config
            .ring_sizes(used.saturating_add(promised), true)
            .filter(|s| s.large)
            .or_else(|| config.ring_sizes(used, false));
        let Some(sizes) = sizes.filter(|_| listener.pending.load(Relaxed) < listener.backlog)
        else {
            c.drop(DropReason::LimitReached);
            return false;
        };
        // At the bound the oldest entry goes (O(1)): a flood of spoofed SYNs churns
        // through the table, and a real client's entry outlives its round trip as long
        // as the table holds more than a round trip of the flood.
        let bound = (config.max_pending_syns / config.shards).max(1);
        if self.synq.get(&tuple).is_none() && self.synq.len() >= bound && self.synq.evict_oldest() {
            c.half_open.fetch_sub(1, Relaxed);
            c.half_open_evicted.fetch_add(1, Relaxed);
        }
        let deadline = now + config.handshake_timeout;
        let promise = if sizes.large { sizes.rx + sizes.tx } else { 0 };
        let wscale = smoltcp_wscale(sizes.rx);
        let (entry, new) = self.synq.insert(tuple, syn, wscale, promise, deadline);
        if new {
            c.half_open.fetch_add(1, Relaxed);
        }
        let window = u16::try_from(sizes.rx).unwrap_or(u16::MAX);
        let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
        if let Some(reply) = entry.syn_ack(&tuple, config.path_mss(v6), window) {
            if self.tx.len() < reply_limit {
                self.tx.push(Bytes::from(reply));
            } else {
                c.drop(DropReason::QueueFull);
            }
        }
        true
    }

    /// A segment on `tuple`, which has a SYN table entry and no socket. The ACK of our
    /// SYN-ACK creates the socket: the peer's SYN is replayed into a listening socket
    /// through an interface that makes smoltcp pick our ISN, and the ACK then follows
    /// through the shard's interface like any segment.
    fn complete_half(
        &mut self,
        shared: &Shared,
        packet: &[u8],
        tuple: Tuple,
        rst: bool,
        now: Instant,
    ) -> Completion {
        let c = &shared.counters;
        let (Some(entry), Some(seg)) = (self.synq.get(&tuple).copied(), tcp_segment(packet)) else {
            return Completion::Refused;
        };
        let first = seg.seq == entry.peer_isn.wrapping_add(1);
        if rst {
            // The peer refused our SYN-ACK; a blind RST (other sequence number) is ignored.
            if first && self.synq.remove(&tuple).is_some() {
                c.half_open.fetch_sub(1, Relaxed);
            }
            return Completion::Consumed;
        }
        if seg.control || seg.ack != Some(entry.our_isn.wrapping_add(1)) {
            // Not an ACK of our SYN-ACK: smoltcp answers RST, as to any stray segment.
            return Completion::Refused;
        }
        if !first {
            // A later segment before the first: the peer resends from the start.
            return Completion::Consumed;
        }
        let forget = |this: &mut Self| {
            if this.synq.remove(&tuple).is_some() {
                c.half_open.fetch_sub(1, Relaxed);
            }
        };
        let Some(listener) = shared.find_listener(tuple.local) else {
            forget(self);
            return Completion::Refused;
        };
        if listener.pending.load(Relaxed) >= listener.backlog {
            // The accept queue is full: the peer retries (its ACK or data is resent).
            c.drop(DropReason::LimitReached);
            return Completion::Consumed;
        }
        // The budget may have shrunk the rings since the SYN-ACK: the receive ring must
        // still be large enough for the window scale it announced.
        let rx_floor = match entry.peer_wscale {
            Some(_) if entry.our_wscale > 0 => 1usize << (u32::from(entry.our_wscale) + 15),
            _ => 0,
        };
        let Ok((handle, mut rings)) = self.new_tcp(shared, rx_floor, entry.promised > 0) else {
            c.drop(DropReason::LimitReached);
            return Completion::Consumed;
        };
        let mut socket = self.sockets.get_mut::<tcp::Socket>(handle);
        // A larger scale than announced (the budget grew) only makes the peer see less
        // window than there is; a smaller one would make it overrun the ring.
        let scale_kept = entry.peer_wscale.is_none()
            || smoltcp_wscale(socket.recv_capacity()) >= entry.our_wscale;
        let syn = entry.syn(&tuple);
        let (true, Some(syn), Ok(())) = (scale_kept, syn, socket.listen(tuple.local)) else {
            self.sockets.remove(handle);
            rings.release_all(&shared.budget, &c.tcp_ring_bytes);
            c.tcp_sockets.fetch_sub(1, Relaxed);
            forget(self);
            return Completion::Refused;
        };
        // Segment offload sees the handshake as if smoltcp had made it: the peer's SYN
        // (its MSS recorded, a large one for smoltcp) and our SYN-ACK.
        let mut syn = syn;
        let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
        let path_mss = shared.config.path_mss(v6);
        let mut offload = Offload::new(path_mss);
        let window = u16::try_from(socket.recv_capacity()).unwrap_or(u16::MAX);
        let syn_ack = entry.syn_ack(&tuple, path_mss, window).map(Bytes::from);
        if self.offload {
            let inner = offload::SEGMENT_MTU - if v6 { 60 } else { 40 };
            let inner = u16::try_from(inner).unwrap_or(u16::MAX);
            if let Some(mss) = offload.on_peer_syn(&syn, path_mss, inner) {
                offload::rewrite_mss(&mut syn, mss);
            }
            if let Some(syn_ack) = &syn_ack {
                offload.on_our_syn(syn_ack);
                let _ = offload.on_our_ack(entry.peer_isn.wrapping_add(1));
            }
        }
        let t = self.clock.smol_at(now);
        let addrs: Vec<IpCidr> = self.iface.ip_addrs().to_vec();
        let salt = u64::from(entry.peer_isn) << 16 | u64::from(tuple.remote.port);
        let mut iface = replay_iface(&addrs, &self.caps, entry.our_isn, salt, t);
        // Then a bare ACK (to ESTABLISHED), and a byte before the window: smoltcp accepts
        // data only inside the window it last announced, and it has announced none (it
        // sent no SYN-ACK). That byte makes it announce one, in a reply not sent.
        let bare_ack = entry.ack(&tuple, 0, &[]);
        let probe = entry.ack(&tuple, 1, &[0]);
        let mut discard = Vec::new();
        for packet in [Some(syn), bare_ack, probe].iter().flatten() {
            let mut dev = Dev {
                rx: Some(packet),
                tx: &mut discard,
                tx_limit: usize::MAX,
                bytes_limit: usize::MAX,
                bytes: 0,
                fill_below: 0,
                caps: &self.caps,
            };
            self.sockets.poll_ingress_single(&mut iface, t, &mut dev);
        }
        // The entry's count in `half_open` passes to the connection, until
        // `check_half_open` after this packet.
        self.synq.remove(&tuple);
        listener.pending.fetch_add(1, Relaxed);
        self.half_open += 1;
        // The sender starts on the SYN-ACK it sees go out; ours went out earlier.
        let mut sender = self.new_sender(shared, &rings);
        if let Some(syn_ack) = &syn_ack
            && let Some(seg) = tcp_segment(syn_ack)
        {
            sender.on_emitted(&seg, syn_ack, now);
        }
        self.conns.insert(
            tuple,
            Conn {
                handle,
                state: ConnState::HalfOpen {
                    listener,
                    deadline: entry.deadline,
                },
                reset: false,
                aborted: false,
                sender,
                timer_at: None,
                ready: false,
                tx_dirty: 0,
                release_pending: false,
                rings,
                offload,
            },
        );
        self.watch(now);
        Completion::Socket
    }

    /// After a packet for half-open `tuple`: hand it to the accept queue once
    /// established, forget it if the handshake failed.
    fn check_half_open(&mut self, shared: &Shared, tuple: Tuple, now: Instant) {
        let Some(conn) = self.conns.get(&tuple) else {
            return;
        };
        let ConnState::HalfOpen { listener, .. } = &conn.state else {
            return;
        };
        let handle = conn.handle;
        match self.sockets.get::<tcp::Socket>(handle).state() {
            // smoltcp rejected the ACK: its ISN is not the one our SYN-ACK announced
            // (see `synq.rs`). Reset rather than run on a wrong sequence space.
            tcp::State::SynReceived => self.drop_half_open(shared, tuple, true, now),
            tcp::State::Listen | tcp::State::Closed => {
                self.drop_half_open(shared, tuple, false, now)
            }
            _ => {
                let listener = Arc::clone(listener);
                self.established(shared, handle);
                if let Some(conn) = self.conns.get_mut(&tuple) {
                    conn.state = ConnState::Owned;
                }
                self.watched -= 1;
                self.half_open -= 1;
                shared.counters.half_open.fetch_sub(1, Relaxed);
                let accepted = Accepted {
                    shard: self.index,
                    handle,
                    tuple,
                };
                shared.counters.pending_accepts.fetch_add(1, Relaxed);
                if listener.push(accepted).is_err() {
                    // The listener is gone: reset, and let the sweep free the socket.
                    shared.counters.pending_accepts.fetch_sub(1, Relaxed);
                    listener.pending.fetch_sub(1, Relaxed);
                    self.release(shared, tuple, now, true);
                }
            }
        }
    }

    /// Forgets a half-open connection (sending RST when `abort`).
    fn drop_half_open(&mut self, shared: &Shared, tuple: Tuple, abort: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        let ConnState::HalfOpen { listener, .. } = &conn.state else {
            return;
        };
        listener.pending.fetch_sub(1, Relaxed);
        shared.counters.half_open.fetch_sub(1, Relaxed);
        self.half_open -= 1;
        let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        if abort && socket.state() != tcp::State::Closed && socket.state() != tcp::State::Listen {
            // Keep it until the RST is out; the sweep removes closed sockets.
            socket.abort();
            conn.sender.abort();
            conn.state = ConnState::Closing {
                deadline: now,
                time_wait_until: None,
            };
            return;
        }
        self.watched -= 1;
        self.remove_conn(shared, tuple);
    }

    /// Removes a connection that is `Closing` (or owned, on release).
    fn remove(&mut self, shared: &Shared, tuple: Tuple) {
        if let Some(conn) = self.conns.get(&tuple)
            && matches!(conn.state, ConnState::Closing { .. })
        {
            self.watched -= 1;
        }
        self.remove_conn(shared, tuple);
    }

    fn remove_conn(&mut self, shared: &Shared, tuple: Tuple) {
        if let Some(mut conn) = self.conns.remove(&tuple) {
            if let Some(at) = conn.timer_at {
                self.timers.remove(&(at, tuple));
            }
            self.sockets.remove(conn.handle);
            conn.rings
                .release_all(&shared.budget, &shared.counters.tcp_ring_bytes);
            shared.counters.tcp_sockets.fetch_sub(1, Relaxed);
        }
    }

    /// Data arrived for a connection whose stream was dropped: nobody will read it, so
    /// reset the connection (as Linux does for an orphaned socket) instead of buffering
    /// up to a whole receive ring until the close times out.
    fn reset_unread(&mut self, tuple: Tuple) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        if !matches!(conn.state, ConnState::Closing { .. }) {
            return;
        }
        let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        if socket.recv_queue() > 0 && socket.state() != tcp::State::Closed {
            // Dropped with its pages (through smoltcp's own `recv`), then reset.
            socket.discard_received();
            socket.abort();
        }
    }

    /// Once a connection that sent at least [`RELEASE_AFTER`] bytes has everything
    /// acknowledged, it becomes a candidate: if its send queue is still empty
    /// [`RELEASE_DELAY`] later, its send ring's pages go back to the kernel, so a keep-alive
    /// connection that once sent a large response does not keep its ring committed while
    /// idle. (Releasing at once would make a bulk sender whose queue empties between writes
    /// fault its ring in again and again: measured, 3x slower in memory.)
    fn release_idle_tx(&mut self, tuple: Tuple, now: Instant) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        if conn.tx_dirty < RELEASE_AFTER || conn.release_pending {
            return;
        }
        if self.sockets.get::<tcp::Socket>(conn.handle).send_queue() == 0 {
            conn.release_pending = true;
            let at = now + RELEASE_DELAY;
            self.release_queue.push_back((at, tuple));
        }
    }

    /// Releases the send rings of candidates whose delay has passed and that stayed idle.
    fn release_due(&mut self, shared: &Shared, now: Instant) {
        while let Some(&(at, tuple)) = self.release_queue.front() {
            if at > now {
                break;
            }
            self.release_queue.pop_front();
            let Some(conn) = self.conns.get_mut(&tuple) else {
                continue;
            };
            conn.release_pending = false;
            let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            if socket.send_queue() == 0 && socket.release_send_ring() {
                conn.tx_dirty = 0;
                conn.rings
                    .released_tx(&shared.budget, &shared.counters.tcp_ring_bytes);
            }
        }
    }

    fn new_sender(&self, shared: &Shared, rings: &Rings) -> Sender {
        let config = &shared.config;
        // Packets of the initial send memory, with their headers and entries; it grows
        // with the path (see `autotune.rs`).
        let tx = rings.tx_base().max(crate::MIN_TCP_RING);
        let limit = tx + tx / 8;
        let mss = u32::try_from(config.path_mtu.saturating_sub(40)).unwrap_or(1380);
        Sender::new(
            limit,
            shared.sender_budget.clone(),
            rings.rx(),
            mss,
            config.min_rto,
        )
        .with_congestion(config.congestion)
    }

    /// TCP segments up to this length get their checksum from the device (see
    /// [`Dev::fill_below`]).
    fn fill_below(&self) -> usize {
        if self.offload { self.path_mtu } else { 0 }
    }

    /// Segment offload for a segment the peer sent on `tuple` (before smoltcp sees it):
    /// a SYN's MSS is recorded and replaced by a large one (the packet to feed instead
    /// is returned), data is recorded for the ACKs that follow. `ends`: where the wire
    /// segments of a joined one ended.
    fn offload_inbound(
        &mut self,
        shared: &Shared,
        tuple: Tuple,
        packet: &[u8],
        ends: Option<&[u32]>,
    ) -> Option<Vec<u8>> {
        let conn = self.conns.get_mut(&tuple)?;
        let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
        let path_mss = shared.config.path_mss(v6);
        if offload::is_syn(packet) {
            let inner = offload::SEGMENT_MTU - if v6 { 60 } else { 40 };
            let mss = conn.offload.on_peer_syn(
                packet,
                path_mss,
                u16::try_from(inner).unwrap_or(u16::MAX),
            )?;
            let mut p = packet.to_vec();
            offload::rewrite_mss(&mut p, mss);
            return Some(p);
        }
        let (len, seq, _) = offload::seq_ack(packet)?;
        if len > 0 {
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            let end = [seq.wrapping_add(len)];
            conn.offload.on_peer_data(seq, len, ends.unwrap_or(&end));
        }
        None
    }

    /// Segment offload for the packets smoltcp just emitted (`self.tx[from..]`), before
    /// the senders see them: our SYN's MSS becomes the path's, a segment larger than the
    /// connection's wire segment is split (each piece's checksum filled), and an ACK that
    /// covers more than two wire segments of in-order data is preceded by the cumulative
    /// ACKs in between (same right window edge).
    fn offload_emitted(&mut self, shared: &Shared, from: usize) {
        if !self.offload || self.tx.len() == from {
            return;
        }
        let emitted = self.tx.split_off(from);
        for packet in emitted {
            let (Some(flags), Some((src, dst))) =
                (offload::flags(&packet), offload::endpoints(&packet))
            else {
                self.tx.push(packet);
                continue;
            };
            let v6 = src.addr.version() == smoltcp::wire::IpVersion::Ipv6;
            let path_mss = shared.config.path_mss(v6);
            let mut conn = self.conns.get_mut(&Tuple {
                local: src,
                remote: dst,
            });
            let mut packet = packet;
            if flags & offload::SYN != 0 {
                if let Some(conn) = conn.as_deref_mut() {
                    conn.offload.on_our_syn(&packet);
                    if let Some((_, _, Some(ack))) = offload::seq_ack(&packet) {
                        // A SYN-ACK: the first ACK number on the wire.
                        let _ = conn.offload.on_our_ack(ack);
                    }
                }
                let mut p = bytes::BytesMut::from(&packet[..]);
                offload::rewrite_mss(&mut p, path_mss);
                packet = p.freeze();
            } else if let Some(conn) = conn.as_deref_mut()
                && let Some((_, _, Some(ack))) = offload::seq_ack(&packet)
            {
                let window = offload::window(&packet).unwrap_or(0);
                let shift = conn.offload.shift();
                for at in conn.offload.on_our_ack(ack) {
                    let w = offload::window_for(ack, window, shift, at);
                    if let Some(p) = offload::ack_at(&packet, at, w) {
                        self.tx.push(p);
                        shared.counters.tcp_acks_added.fetch_add(1, Relaxed);
                    }
                }
            }
            let wire = conn.map_or(path_mss, |c| c.offload.wire_mss.min(path_mss));
            let options = offload::options_len(&packet).unwrap_or(0);
            let max_payload = usize::from(wire).saturating_sub(options).max(1);
            if let Some(n) = offload::split(&packet, max_payload, &mut self.tx) {
                shared.counters.tcp_split.fetch_add(n as u64, Relaxed);
            } else {
                if packet.len() > self.path_mtu {
                    // Not split (no data to cut): its checksum is still ours to fill.
                    let mut p = bytes::BytesMut::from(&packet[..]);
                    offload::fill_tcp_checksum(&mut p);
                    packet = p.freeze();
                }
                self.tx.push(packet);
            }
        }
    }

    /// Hands the TCP segments smoltcp just emitted (`self.tx[from..]`) to their
    /// connections' senders; keeps in `self.tx` only what goes out now. A run of segments
    /// of one connection costs one table lookup.
    fn route_emitted(&mut self, shared: &Shared, from: usize, now: Instant) {
        let n = self.tx.len();
        let segs: Vec<Option<Segment>> = self.tx[from..].iter().map(|p| tcp_segment(p)).collect();
        let tuple_of = |seg: &Option<Segment>| {
            seg.as_ref().map(|s| Tuple {
                local: s.src,
                remote: s.dst,
            })
        };
        let mut kept = from;
        let mut i = from;
        while i < n {
            let tuple = tuple_of(&segs[i - from]);
            let mut j = i + 1;
            while j < n && tuple.is_some() && tuple_of(&segs[j - from]) == tuple {
                j += 1;
            }
            let conn = tuple.and_then(|t| self.conns.get_mut(&t));
            match (tuple, conn) {
                (Some(tuple), Some(conn)) => {
                    for k in i..j {
                        let Some(seg) = &segs[k - from] else {
                            continue;
                        };
                        let packet = std::mem::take(&mut self.tx[k]);
                        conn.tx_dirty = conn.tx_dirty.saturating_add(seg.len as usize);
                        let verdict = if self.sender_off {
                            Verdict::Pass
                        } else {
                            conn.sender.on_emitted(seg, &packet, now)
                        };
                        if verdict == Verdict::Pass {
                            self.tx[kept] = packet;
                            kept += 1;
                        }
                    }
                    if !self.sender_off {
                        schedule(&mut self.timers, &mut self.ready, shared, tuple, conn);
                    }
                }
                _ => {
                    for k in i..j {
                        self.tx.swap(kept, k);
                        kept += 1;
                    }
                }
            }
            i = j;
        }
        self.tx.truncate(kept);
    }

    /// A pure ACK on `tuple` that a newer one of the same batch follows: only the sender
    /// sees it (it counts every ACK: delivery, RTT, SACK); smoltcp gets the newer one,
    /// which tells it all this one does (a cumulative ACK and the newest window). Returns
    /// false, having done nothing, unless the connection is established.
    pub(crate) fn ack_to_sender_only(
        &mut self,
        shared: &Shared,
        tuple: Tuple,
        packet: &[u8],
        now: Instant,
    ) -> bool {
        let now = self.tick(now);
        if self.sender_off {
            return false;
        }
        let Some(seg) = tcp_segment(packet) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return false;
        };
        if !matches!(conn.state, ConnState::Owned)
            || self.sockets.get::<tcp::Socket>(conn.handle).state() != tcp::State::Established
        {
            return false;
        }
        conn.sender.on_segment(&seg, now);
        shared.counters.tcp_acks_folded.fetch_add(1, Relaxed);
        true
    }

    /// Feeds a segment the peer sent on `tuple` (after smoltcp) to its sender; a socket
    /// smoltcp closed (reset, timed out) aborts it.
    fn feed_sender(&mut self, shared: &Shared, tuple: Tuple, seg: Option<&Segment>, now: Instant) {
        if self.sender_off {
            return;
        }
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        if self.sockets.get::<tcp::Socket>(conn.handle).state() == tcp::State::Closed {
            conn.sender.abort();
        } else if let Some(seg) = seg {
            conn.sender.on_segment(seg, now);
            if let Some(ack) = seg.ack {
                conn.rings
                    .on_ack(&mut conn.sender, &shared.sender_budget, ack, now);
            }
        }
        schedule(&mut self.timers, &mut self.ready, shared, tuple, conn);
    }

    /// [`schedule`] for `tuple`.
    fn schedule(&mut self, shared: &Shared, tuple: Tuple) {
        if let Some(conn) = self.conns.get_mut(&tuple) {
            schedule(&mut self.timers, &mut self.ready, shared, tuple, conn);
        }
    }

    /// Runs the sender timers due at `now`, however late.
    fn run_sender_timers(&mut self, shared: &Shared, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(at, tuple)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            due.push(tuple);
        }
        for tuple in due {
            if let Some(conn) = self.conns.get_mut(&tuple) {
                conn.timer_at = None;
                conn.sender.handle_timeout(now);
            }
            self.schedule(shared, tuple);
        }
    }

    /// Lets the ready senders transmit until the batch holds `limit` packets; those
    /// left over stay ready.
    fn transmit_ready(&mut self, shared: &Shared, now: Instant, limit: usize) {
        for tuple in std::mem::take(&mut self.ready) {
            let Some(conn) = self.conns.get_mut(&tuple) else {
                continue;
            };
            conn.ready = false;
            let room = limit.saturating_sub(self.tx.len());
            if room > 0 {
                conn.sender.poll_transmit(now, &mut self.tx, room);
            }
            self.schedule(shared, tuple);
        }
    }

    /// A TCP socket with this stack's options, within `max_connections`, with its rings
    /// charged to the budget, its receive ring at least `rx_floor` bytes; the large rings
    /// of the budget's first step only if `large`.
    fn new_tcp(
        &mut self,
        shared: &Shared,
        rx_floor: usize,
        large: bool,
    ) -> io::Result<(SocketHandle, Rings)> {
        let config = &shared.config;
        let count = &shared.counters.tcp_sockets;
        if count.fetch_add(1, Relaxed) >= config.max_connections {
            count.fetch_sub(1, Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                "netstack: max_connections reached",
            ));
        }
        // Ring sizes from the budget (see `NetstackConfig::tcp_buffer_budget`). Shards
        // reserve concurrently: the sizes follow the reservation seen, the bound holds.
        let budget = &shared.budget;
        let ring_bytes = &shared.counters.tcp_ring_bytes;
        let sizes = config
            .ring_sizes(budget.used(), large)
            .map(|mut s| {
                s.rx = s.rx.max(rx_floor);
                s
            })
            .filter(|s| budget.take(s.rx + s.tx, false));
        let Some(sizes) = sizes else {
            count.fetch_sub(1, Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                "netstack: tcp_buffer_budget reached",
            ));
        };
        ring_bytes.fetch_add(sizes.rx + sizes.tx, Relaxed);
        let mut rings = Rings::new(sizes.rx, sizes.tx, sizes.tx_ring);
        let handle = match self.sockets.add_tcp(sizes.rx, sizes.tx_ring) {
            Ok(handle) => handle,
            Err(err) => {
                rings.release_all(budget, ring_bytes);
                count.fetch_sub(1, Relaxed);
                return Err(err);
            }
        };
        let mut socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.set_nagle_enabled(config.nagle);
        // With segment offload smoltcp believes in a 64 KiB MSS, so its delayed ACK would
        // wait for 64 KiB or the delay: it ACKs at once instead (after each inbound batch,
        // see `offload.rs`).
        let ack_delay = config.ack_delay.filter(|_| !self.offload);
        socket.set_ack_delay(ack_delay.map(|d| self.clock.smol_duration(d)));
        socket.set_keep_alive(config.keepalive.map(|d| self.clock.smol_duration(d)));
        // With the sender on, smoltcp emits what the peer's window allows and the sender
        // paces it (see `sender.rs`); without it, smoltcp's own Cubic applies.
        socket.set_congestion_control(if self.sender_off {
            tcp::CongestionControl::Cubic
        } else {
            tcp::CongestionControl::None
        });
        Ok((handle, rings))
    }
}

/// Brings `tuple`'s entries in the shard's timer set and ready list up to date with its
/// sender, and adds what the sender did to the stack's counters.
fn schedule(
    timers: &mut BTreeSet<(Instant, Tuple)>,
    ready: &mut Vec<Tuple>,
    shared: &Shared,
    tuple: Tuple,
    conn: &mut Conn,
) {
    let at = conn.sender.poll_timeout();
    if at != conn.timer_at {
        if let Some(old) = conn.timer_at {
            timers.remove(&(old, tuple));
        }
        if let Some(new) = at {
            timers.insert((new, tuple));
        }
        conn.timer_at = at;
    }
    if !conn.ready && conn.sender.wants_transmit() {
        conn.ready = true;
        ready.push(tuple);
    }
    shared.counters.sender(conn.sender.take_events());
}
