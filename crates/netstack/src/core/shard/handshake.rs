//! The connection table's handshakes: a SYN gets a SYN table entry and our SYN-ACK (no
//! socket), the ACK completing it creates the socket, which is reported established to
//! the socket layer (`Event::Accepted`) or reset (see `synq.rs`).

use super::*;

/// What a segment for a SYN table entry did.
pub(super) enum Completion {
    /// It completed the handshake: the connection has a socket, smoltcp takes the segment.
    Socket,
    /// Handled (or dropped) here; smoltcp does not see it.
    Consumed,
    /// Not for the entry: smoltcp answers it (with an RST, as no socket matches).
    Refused,
}

impl Shard {
    /// A SYN for a new 4-tuple: a SYN table entry and our SYN-ACK, no socket (see
    /// `synq.rs`). Returns whether it was handled here; `false` lets smoltcp answer (an
    /// RST, as no socket matches).
    pub(super) fn on_syn(
        &mut self,
        env: &Env,
        packet: &[u8],
        tuple: Tuple,
        now: Instant,
        reply_limit: usize,
    ) -> bool {
        let c = &env.counters;
        let config = &env.config;
        let Some(listener) = env.listeners.find(tuple.local) else {
            c.drop(DropReason::NoSocket);
            return false;
        };
        let Some(syn) = parse_syn(packet) else {
            // A bad checksum: dropped silently, as smoltcp does.
            return true;
        };
        // The receive ring the connection will get (its size sets the window scale, and
        // the scale sets the smallest ring the handshake can complete with). Rings are
        // promised here and counted until the handshake completes or the entry goes: a
        // burst of SYNs must not be promised more than the budget holds, or their
        // handshakes could not complete (and later SYNs were refused while the budget
        // filled with rings no smaller than the early ones' window scales). So a burst
        // gets the large rings, then the usual ones, then smaller ones, as connections
        // created one after another would. Once the promises alone fill the budget (a
        // flood: entries that never complete), a SYN is answered by what the budget's
        // use allows and promised nothing, so a real client still gets in while the
        // flood's entries wait to expire.
        let used = env.budget.used();
        let promised = env.syn_promised.load(Relaxed);
        let reserved = used.saturating_add(promised);
        let counted = config
            .ring_sizes(reserved, true)
            .filter(|s| s.large)
            .or_else(|| config.ring_sizes(reserved, false));
        let sizes = counted.or_else(|| config.ring_sizes(used, false));
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
        let promise = match counted {
            Some(s) => (s.rx + s.tx, s.large),
            None => (0, false),
        };
        let wscale = smoltcp_wscale(sizes.rx);
        let window = u16::try_from(sizes.rx).unwrap_or(u16::MAX);
        let (entry, new) = self
            .synq
            .insert(tuple, syn, (wscale, window), promise, deadline);
        if new {
            c.half_open.fetch_add(1, Relaxed);
        }
        let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
        if let Some(reply) = entry.syn_ack(&tuple, config.path_mss(v6)) {
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
    pub(super) fn complete_half(
        &mut self,
        env: &Env,
        packet: &[u8],
        tuple: Tuple,
        rst: bool,
        now: Instant,
    ) -> Completion {
        let c = &env.counters;
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
        let Some(listener) = env.listeners.find(tuple.local) else {
            forget(self);
            return Completion::Refused;
        };
        if listener.pending.load(Relaxed) >= listener.backlog {
            // The accept queue is full: the peer retries (its ACK or data is resent).
            c.drop(DropReason::LimitReached);
            return Completion::Consumed;
        }
        // The budget may have shrunk the rings since the SYN-ACK: the receive ring must
        // still be large enough for the window scale and the window it announced.
        let scale_floor = match entry.peer_wscale {
            Some(_) if entry.our_wscale > 0 => 1usize << (u32::from(entry.our_wscale) + 15),
            _ => 0,
        };
        let rx_floor = scale_floor.max(usize::from(entry.window));
        let Ok((handle, mut rings)) = self.new_tcp(env, rx_floor, entry.large) else {
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
            rings.release_all(&env.budget, &c.tcp_ring_bytes);
            c.tcp_sockets.fetch_sub(1, Relaxed);
            forget(self);
            return Completion::Refused;
        };
        // Segment offload sees the handshake as if smoltcp had made it: the peer's SYN
        // (its MSS recorded, a large one for smoltcp) and our SYN-ACK.
        let mut syn = syn;
        let v6 = tuple.local.addr.version() == smoltcp::wire::IpVersion::Ipv6;
        let path_mss = env.config.path_mss(v6);
        let mut offload = Offload::new(path_mss);
        let syn_ack = entry.syn_ack(&tuple, path_mss).map(Bytes::from);
        let inner = offload::SEGMENT_MTU - if v6 { 60 } else { 40 };
        let inner = u16::try_from(inner).unwrap_or(u16::MAX);
        // Without offload only the window scales count (see `Offload::kept_window`).
        if let Some(mss) = offload.on_peer_syn(&syn, path_mss, inner)
            && self.offload
        {
            offload::rewrite_mss(&mut syn, mss);
        }
        if let Some(syn_ack) = &syn_ack {
            offload.on_our_syn(syn_ack);
            let _ = offload.on_our_ack(entry.peer_isn.wrapping_add(1));
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
                spare: None,
            };
            self.sockets.poll_ingress_single(&mut iface, t, &mut dev);
        }
        // The entry's count in `half_open` passes to the connection, until
        // `check_half_open` after this packet.
        self.synq.remove(&tuple);
        listener.pending.fetch_add(1, Relaxed);
        self.half_open += 1;
        // The sender starts on the SYN-ACK it sees go out; ours went out earlier.
        let mut sender = self.new_sender(env, &rings);
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
                ready: false,
                tx_dirty: 0,
                rings,
                offload,
            },
        );
        self.watch(now);
        Completion::Socket
    }

    /// After a packet for half-open `tuple`: hand it to the accept queue once
    /// established, forget it if the handshake failed.
    pub(super) fn check_half_open(&mut self, env: &Env, tuple: Tuple, now: Instant) {
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
            tcp::State::SynReceived => self.drop_half_open(env, tuple, true, now),
            tcp::State::Listen | tcp::State::Closed => self.drop_half_open(env, tuple, false, now),
            _ => {
                let listener = Arc::clone(listener);
                self.established(env, handle);
                if let Some(conn) = self.conns.get_mut(&tuple) {
                    conn.state = ConnState::Owned;
                }
                self.watched -= 1;
                self.half_open -= 1;
                env.counters.half_open.fetch_sub(1, Relaxed);
                env.counters.pending_accepts.fetch_add(1, Relaxed);
                self.events.push(Event::Accepted {
                    listener,
                    shard: self.index,
                    handle,
                    tuple,
                });
            }
        }
    }

    /// Forgets a half-open connection (sending RST when `abort`).
    pub(super) fn drop_half_open(&mut self, env: &Env, tuple: Tuple, abort: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        let ConnState::HalfOpen { listener, .. } = &conn.state else {
            return;
        };
        listener.pending.fetch_sub(1, Relaxed);
        env.counters.half_open.fetch_sub(1, Relaxed);
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
        self.remove_conn(env, tuple);
    }
}
