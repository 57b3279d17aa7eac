//! One shard of the stack: a smoltcp interface and socket set, and the connection table
//! that gives the socket set a backlog, limits and cleanup. Sans-IO: packets and `now` go
//! in; packets, events (see [`Event`]) and the next deadline come out.
//!
//! smoltcp scans every socket of a set on each ingress packet and each egress pass, so
//! the stack splits its TCP connections over several shards by a keyed hash of the
//! 4-tuple. UDP and ICMP sockets live in shard 0.
//!
//! This file: the table itself (entries, states, close and sweep, the timers in one
//! [`Deadlines`]) and segment offload's glue. Beside it: `handshake.rs` (SYN table to
//! socket to `Event::Accepted`), `senders.rs` (each connection's sender between smoltcp
//! and the wire), `rings.rs` (ring memory from the budget, idle release).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smoltcp::iface::{Interface, SocketHandle};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpCidr};

use crate::autotune::Rings;
use crate::buffer::{Owned, Sockets, TcpSocket};
use crate::config::NetstackConfig;
use crate::deadlines::Deadlines;
use crate::device::{Dev, Spare, capabilities};
use crate::env::{Env, Event, Listen};
use crate::offload::{self, Offload};
use crate::sender::{Sender, Verdict};
use crate::stats::DropReason;
use crate::synq::{SynTable, parse_syn, replay_iface, smoltcp_wscale};
use crate::time::Clock;
use crate::wire::{Class, Segment, Tuple, tcp_segment};

mod handshake;
mod rings;
mod senders;

use handshake::Completion;

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
    /// Listed in `Shard::ready`.
    ready: bool,
    /// Payload bytes sent since the send ring's pages were last released.
    tx_dirty: usize,
    /// What its rings take from the budget (see `autotune.rs`).
    rings: Rings,
    /// Segmentation offload: wire segment sizes, window scale, ACKs sent.
    offload: Offload,
}

/// What each of a shard's deadlines is for (see [`Shard::deadlines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// smoltcp's next poll (its retransmissions, delayed ACKs, keep-alives): refreshed
    /// after every pass, never taken (each egress pass polls smoltcp anyway).
    Smoltcp,
    /// The SYN table's oldest entry expires (see `synq.rs`).
    SynTable,
    /// Half-open and closing connections are checked (while any exist).
    Sweep,
    /// A connection's sender deadline (see `sender.rs`).
    Sender(Tuple),
    /// A connection's idle send ring may be released (see [`Shard::release_idle_tx`]).
    Release(Tuple),
}

/// Who owns a TCP socket.
enum ConnState {
    /// Just created by the handshake-completing ACK for `listener` (see `synq.rs`):
    /// handed to its accept queue, or reset, before the packet's processing ends.
    HalfOpen {
        listener: Arc<Listen>,
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
    /// Buffers of split segments for smoltcp's next large ones (emptied after egress).
    spare: Spare,
    /// Connections in `HalfOpen` or `Closing`.
    watched: usize,
    /// Half-open connections, without sockets (see `synq.rs`).
    synq: SynTable,
    /// How many connections of this shard are `HalfOpen`.
    half_open: usize,
    /// Every timer of the shard, one entry per [`Timer`]: its next deadline is the
    /// earliest entry.
    deadlines: Deadlines<Timer>,
    /// Connections whose sender may have packets to send now.
    ready: Vec<Tuple>,
    /// `tcp_sender` is off: smoltcp sends on its own (its Cubic, its timers).
    sender_off: bool,
    /// `segment_offload`: smoltcp works in large segments (see `offload.rs`).
    offload: bool,
    /// The path MTU: what goes on the wire.
    path_mtu: usize,
    /// Bound UDP ports (shard 0 only), with the number of sockets on each.
    pub(crate) udp_ports: HashMap<u16, usize>,
    /// ICMP echo identifiers in use (shard 0 only).
    pub(crate) icmp_idents: HashSet<u16>,
    index: usize,
    /// The latest `now` seen: callers on other threads may arrive with an older one,
    /// and smoltcp must never see time go backwards.
    last_now: Instant,
    /// What happened for the socket layer (see [`Shard::take_events`]).
    events: Vec<Event>,
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
        let addrs: Vec<IpCidr> = config
            .addresses
            .iter()
            .map(|addr| {
                let addr = IpAddress::from(*addr);
                let prefix = if addr.version() == smoltcp::wire::IpVersion::Ipv4 {
                    32
                } else {
                    128
                };
                IpCidr::new(addr, prefix)
            })
            .collect();
        let mut iface = crate::device::interface(&caps, seed, &addrs, clock.smol_at(now));
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
            tx: Vec::new(),
            spare: Spare::default(),
            watched: 0,
            synq: SynTable::new(syn_promised),
            half_open: 0,
            deadlines: Deadlines::default(),
            ready: Vec::new(),
            sender_off: !config.tcp_sender,
            offload: config.offload(),
            path_mtu: config.path_mtu,
            udp_ports: HashMap::new(),
            icmp_idents: HashSet::new(),
            index,
            last_now: now,
            events: Vec::new(),
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
        env: &Env,
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
                    self.remove(env, tuple);
                }
                match self.conns.get_mut(&tuple) {
                    Some(conn) => {
                        conn.reset |= rst;
                        if matches!(conn.state, ConnState::HalfOpen { .. }) {
                            watch = Some(tuple);
                        }
                    }
                    None if syn_only => {
                        if self.on_syn(env, packet, tuple, now, reply_limit) {
                            return;
                        }
                    }
                    None if self.synq.get(&tuple).is_some() => {
                        match self.complete_half(env, packet, tuple, rst, now) {
                            Completion::Socket => watch = Some(tuple),
                            Completion::Consumed => return,
                            Completion::Refused => env.counters.drop(DropReason::NoSocket),
                        }
                    }
                    None => env.counters.drop(DropReason::NoSocket),
                }
            }
            Class::Udp { port } => {
                if !self.udp_ports.contains_key(&port) {
                    env.counters.drop(DropReason::NoSocket);
                    return;
                }
            }
            Class::Other => {}
        }
        let rewritten;
        let packet = match class {
            Class::Tcp {
                tuple, rst: false, ..
            } if self.offload => match self.offload_inbound(env, tuple, packet, ends) {
                Some(p) => {
                    rewritten = p;
                    &rewritten[..]
                }
                None => packet,
            },
            Class::Tcp {
                tuple, rst: false, ..
            } if offload::is_syn(packet) => {
                // Without offload only the peer's window scale counts (`keep_windows`).
                if let Some(conn) = self.conns.get_mut(&tuple) {
                    let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
                    let mss = env.config.path_mss(v6);
                    let _ = conn.offload.on_peer_syn(packet, mss, mss);
                }
                packet
            }
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
            spare: Some(&mut self.spare),
        };
        self.sockets
            .poll_ingress_single(&mut self.iface, self.clock.smol_at(now), &mut dev);
        // An immediate reply (RST, echo reply) past the bound is dropped like on a full link.
        if self.tx.len() > before && self.tx.len() > reply_limit {
            self.tx.truncate(before);
            env.counters.drop(DropReason::QueueFull);
        }
        self.offload_emitted(env, before);
        if let Class::Tcp { tuple, .. } = class {
            self.feed_sender(env, tuple, seg.as_ref(), now);
            self.reset_unread(tuple);
            self.release_idle_tx(tuple, now);
        }
        if let Some(tuple) = watch {
            self.check_half_open(env, tuple, now);
        }
    }

    /// Runs the senders' due timers, then egress passes until smoltcp has nothing more
    /// to send, then the senders' transmissions, until `budget` packets were produced.
    /// Returns whether it stopped for lack of room with packets left to send.
    pub(crate) fn egress(&mut self, env: &Env, now: Instant, budget: usize) -> bool {
        let now = self.tick(now);
        let limit = self.tx.len().saturating_add(budget);
        let bytes_limit = budget.saturating_mul(self.path_mtu);
        let mut bytes = 0;
        let fill_below = self.fill_below();
        self.run_sender_timers(env, now);
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
                spare: Some(&mut self.spare),
            };
            let res = self.sockets.poll_egress(&mut self.iface, t, &mut dev);
            bytes = dev.bytes;
            self.offload_emitted(env, from);
            self.route_emitted(env, from, now);
            if res == smoltcp::iface::PollResult::None
                || self.tx.len() >= limit
                || bytes >= bytes_limit
            {
                break;
            }
        }
        self.transmit_ready(env, now, limit);
        self.spare.clear();
        !self.ready.is_empty() && self.tx.len() >= limit
    }

    /// Drops half-open connections past their deadline and finishes closing ones.
    pub(crate) fn maintain(&mut self, env: &Env, now: Instant) {
        let now = self.tick(now);
        self.release_due(env, now);
        self.deadlines
            .set(Timer::SynTable, self.synq.next_deadline());
        if self.deadlines.take_due(Timer::SynTable, now) {
            let expired = self.synq.expire(now);
            env.counters.half_open.fetch_sub(expired, Relaxed);
        }
        if !self.deadlines.take_due(Timer::Sweep, now) {
            return;
        }
        let time_wait = env.config.time_wait;
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
            self.drop_half_open(env, tuple, true, now);
        }
        for tuple in remove {
            self.remove(env, tuple);
        }
        for tuple in aborted {
            self.schedule(env, tuple);
        }
        let next = (self.watched > 0).then(|| now + SWEEP_INTERVAL);
        self.deadlines.set(Timer::Sweep, next);
    }

    /// When this shard next needs a poll.
    pub(crate) fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let now = self.tick(now);
        let smol = self
            .sockets
            .poll_at(&mut self.iface, self.clock.smol_at(now))
            .map(|t| self.clock.std_at(t));
        self.deadlines.set(Timer::Smoltcp, smol);
        self.deadlines
            .set(Timer::SynTable, self.synq.next_deadline());
        // Senders with packets left when the outbound queue was full are resumed by the
        // stack when it drains, not by a deadline.
        self.deadlines.next()
    }

    /// Takes what happened since the last call: connections to hand to their
    /// listeners. The socket layer takes them before it releases the shard's lock.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
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
                "[{} -> {} {:?} sendq={} recvq={} sender={} recv={:?}] ",
                tuple.local,
                tuple.remote,
                s.state(),
                s.send_queue(),
                s.recv_queue(),
                conn.sender.debug(),
                conn.offload.sack,
            ));
        }
        out
    }

    /// Number of sockets (of all kinds) in this shard.
    pub(crate) fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// Opens an outbound connection on `tuple`; `Ok(None)` when the tuple is taken.
    pub(crate) fn connect(&mut self, env: &Env, tuple: Tuple) -> io::Result<Option<SocketHandle>> {
        if self.conns.contains_key(&tuple) {
            return Ok(None);
        }
        let (handle, rings) = self.new_tcp(env, 0, true)?;
        let mut socket = self.sockets.get_mut::<tcp::Socket>(handle);
        // Until established the smoltcp timeout bounds the handshake.
        socket.set_timeout(Some(self.clock.smol_duration(env.config.handshake_timeout)));
        let res = socket.connect(self.iface.context(), tuple.remote, tuple.local);
        self.conns.insert(
            tuple,
            Conn {
                handle,
                state: ConnState::Owned,
                reset: false,
                aborted: false,
                sender: self.new_sender(env, &rings),
                ready: false,
                tx_dirty: 0,
                rings,
                offload: Offload::new(
                    env.config
                        .path_mss(tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6),
                ),
            },
        );
        if let Err(err) = res {
            self.remove(env, tuple);
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
    pub(crate) fn established(&mut self, env: &Env, handle: SocketHandle) {
        let mut socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.set_timeout(env.config.idle_timeout.map(|d| self.clock.smol_duration(d)));
    }

    /// The stream or accept queue owning `tuple` let go of it: close gracefully in the
    /// background (abort when unread data is left, as a kernel does). Bounded by
    /// `close_timeout` of peer silence (smoltcp's timeout) and a hard deadline.
    pub(crate) fn release(&mut self, env: &Env, tuple: Tuple, now: Instant, abort: bool) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        match socket.state() {
            // An aborted socket whose RST is still to be sent stays until it is out.
            tcp::State::Closed if socket.remote_endpoint().is_some() => {}
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => {
                self.remove(env, tuple);
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
                socket.set_timeout(Some(self.clock.smol_duration(env.config.close_timeout)));
            }
        }
        conn.state = ConnState::Closing {
            deadline: now + env.config.close_timeout * crate::CLOSE_HARD_LIMIT_FACTOR,
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
        self.deadlines
            .arm_earlier(Timer::Sweep, now + SWEEP_INTERVAL);
    }

    /// Removes a connection that is `Closing` (or owned, on release).
    fn remove(&mut self, env: &Env, tuple: Tuple) {
        if let Some(conn) = self.conns.get(&tuple)
            && matches!(conn.state, ConnState::Closing { .. })
        {
            self.watched -= 1;
        }
        self.remove_conn(env, tuple);
    }

    fn remove_conn(&mut self, env: &Env, tuple: Tuple) {
        if let Some(mut conn) = self.conns.remove(&tuple) {
            self.deadlines.set(Timer::Sender(tuple), None);
            self.deadlines.set(Timer::Release(tuple), None);
            self.sockets.remove(conn.handle);
            conn.rings
                .release_all(&env.budget, &env.counters.tcp_ring_bytes);
            env.counters.tcp_sockets.fetch_sub(1, Relaxed);
        }
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
        env: &Env,
        tuple: Tuple,
        packet: &[u8],
        ends: Option<&[u32]>,
    ) -> Option<Vec<u8>> {
        let conn = self.conns.get_mut(&tuple)?;
        let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
        let path_mss = env.config.path_mss(v6);
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
            let end = seq.wrapping_add(len);
            conn.offload.on_peer_data(seq, len, ends.unwrap_or(&[end]));
            // A FIN resent with data smoltcp already acknowledged (its first copy came
            // above a hole: smoltcp kept the data, dropped the FIN). smoltcp would reject
            // the whole segment as old (it leaves the FIN out of the segment's length), and
            // the FIN would wait for the peer's timeout; it gets the bare FIN instead.
            if offload::flags(packet).is_some_and(|f| f & offload::FIN != 0)
                && conn.offload.sack.acked() == Some(end)
            {
                return offload::bare_fin(packet);
            }
        }
        None
    }

    /// Without segment offload, only the windows of the packets smoltcp just emitted
    /// (`self.tx[from..]`) are rewritten (see [`Offload::kept_window`]); our SYN's window
    /// scale is recorded for them.
    fn keep_windows(&mut self, from: usize) {
        for packet in &mut self.tx[from..] {
            let (Some(flags), Some((src, dst))) =
                (offload::flags(packet), offload::endpoints(packet))
            else {
                continue;
            };
            let Some(conn) = self.conns.get_mut(&Tuple {
                local: src,
                remote: dst,
            }) else {
                continue;
            };
            if flags & offload::SYN != 0 {
                conn.offload.on_our_syn(packet);
            } else if let Some((_, _, Some(ack))) = offload::seq_ack(packet) {
                keep_window(&mut conn.offload, packet, ack);
            }
        }
    }

    /// Segment offload for the packets smoltcp just emitted (`self.tx[from..]`), before
    /// the senders see them: our SYN's MSS becomes the path's, a segment larger than the
    /// connection's wire segment is split (each piece's checksum filled), an ACK is
    /// preceded by the ACKs the offload adds (one per two wire segments, see
    /// `Offload::on_our_ack`), and pure ACKs carry the SACK blocks of `offload/sack.rs`.
    fn offload_emitted(&mut self, env: &Env, from: usize) {
        if self.tx.len() == from {
            return;
        }
        if !self.offload {
            self.keep_windows(from);
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
            let path_mss = env.config.path_mss(v6);
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
                let window = keep_window(&mut conn.offload, &mut packet, ack);
                let shift = conn.offload.shift();
                let block = offload::sack_blocks(&packet).first().copied();
                conn.offload.sack.on_our_ack(ack, block);
                let sack = conn.offload.sack.enabled();
                let added = conn.offload.on_our_ack(ack);
                for end in added.duplicate {
                    if let Some(mut p) = offload::ack_at(&packet, ack, window) {
                        // The run's range as far as this wire segment (smoltcp's block holds
                        // the whole run).
                        if sack
                            && let Some((s, e)) = block
                            && offload::seq_at_or_after(end, s)
                            && offload::seq_at_or_after(e, end)
                        {
                            let room = offload::sack_room(&p);
                            let blocks = conn.offload.sack.blocks_led_by(ack, room, (s, end));
                            if let Some(q) = offload::with_sack(&p, &blocks) {
                                p = q;
                            }
                        }
                        self.tx.push(p);
                        env.counters.tcp_acks_added.fetch_add(1, Relaxed);
                    }
                }
                for at in added.cumulative {
                    let w = offload::window_for(ack, window, shift, at);
                    if let Some(mut p) = offload::ack_at(&packet, at, w) {
                        if sack {
                            let room = offload::sack_room(&p);
                            let blocks = conn.offload.sack.blocks(at, room, false);
                            if let Some(q) = offload::with_sack(&p, &blocks) {
                                p = q;
                            }
                        }
                        self.tx.push(p);
                        env.counters.tcp_acks_added.fetch_add(1, Relaxed);
                    }
                }
                // A pure ACK gets the SACK option this stack keeps (see `offload/sack.rs`);
                // smoltcp's data segments keep its own.
                if sack && offload::pure_ack(&packet).is_some() {
                    let room = offload::sack_room(&packet);
                    let pending = conn.offload.sack.dup_pending();
                    let blocks = conn.offload.sack.blocks(ack, room, true);
                    if (!blocks.is_empty() || block.is_some())
                        && let Some(q) = offload::with_sack(&packet, &blocks)
                    {
                        packet = q;
                        env.counters.tcp_acks_sacked.fetch_add(1, Relaxed);
                        if pending && !blocks.is_empty() {
                            env.counters.tcp_dsacks.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            let wire = conn
                .as_deref()
                .map_or(path_mss, |c| c.offload.wire_mss.min(path_mss));
            let options = offload::options_len(&packet).unwrap_or(0);
            let max_payload = usize::from(wire).saturating_sub(options).max(1);
            // A short piece of the previous emission still held unsent is joined to this
            // data, so that the wire segments stay full (see `Sender::unsent_tail`).
            let data = offload::seq_ack(&packet)
                .filter(|&(len, _, _)| len > 0 && flags & (offload::SYN | offload::RST) == 0)
                .map(|(_, seq, _)| seq);
            let joined = match (conn, data) {
                (Some(c), Some(seq)) if !self.sender_off => {
                    let tail = c.sender.unsent_tail(seq, max_payload, c.offload.carried);
                    let n = tail
                        .and_then(|t| offload::split_after(&t, &packet, max_payload, &mut self.tx));
                    c.offload.carried = n.is_some();
                    if n.is_some() {
                        c.sender.take_unsent_tail();
                        env.counters.tcp_tails_joined.fetch_add(1, Relaxed);
                    }
                    n
                }
                _ => None,
            };
            if let Some(n) = joined.or_else(|| offload::split(&packet, max_payload, &mut self.tx)) {
                env.counters.tcp_split.fetch_add(n as u64, Relaxed);
                self.spare.put(packet);
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
}

/// Rewrites the window of `packet` (one of ours, acknowledging `ack`) as
/// [`Offload::kept_window`] says; returns the window it carries. In place when the
/// device's buffer is ours alone (it is, fresh).
fn keep_window(offload: &mut Offload, packet: &mut Bytes, ack: u32) -> u16 {
    let smoltcp_window = offload::window(packet).unwrap_or(0);
    let window = offload.kept_window(ack, smoltcp_window);
    if window != smoltcp_window {
        let mut p = std::mem::take(packet)
            .try_into_mut()
            .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
        crate::wire::set_ack_and_window(&mut p, ack, window);
        *packet = p.freeze();
    }
    window
}
