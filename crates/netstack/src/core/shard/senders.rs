//! The connection table's glue to each connection's sender (see `sender.rs`): what
//! smoltcp emits goes through the sender, what the peer sends is fed to it, its deadlines
//! and readiness are kept in the shard's `Deadlines` and ready list.

use super::*;

impl Shard {
    pub(super) fn new_sender(&self, env: &Env, rings: &Rings) -> Sender {
        let config = &env.config;
        // Packets of the initial send memory, with their headers and entries; it grows
        // with the path (see `autotune.rs`).
        let tx = rings.tx_base().max(crate::MIN_TCP_RING);
        let limit = tx + tx / 8;
        let mss = u32::try_from(config.path_mtu.saturating_sub(40)).unwrap_or(1380);
        Sender::new(
            limit,
            env.sender_budget.clone(),
            rings.rx(),
            mss,
            config.min_rto,
        )
        .with_congestion(config.congestion)
    }

    /// Hands the TCP segments smoltcp just emitted (`self.tx[from..]`) to their
    /// connections' senders; keeps in `self.tx` only what goes out now. A run of segments
    /// of one connection costs one table lookup.
    pub(super) fn route_emitted(&mut self, env: &Env, from: usize, now: Instant) {
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
                        schedule(&mut self.deadlines, &mut self.ready, env, tuple, conn);
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
        env: &Env,
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
        env.counters.tcp_acks_folded.fetch_add(1, Relaxed);
        true
    }

    /// Feeds a segment the peer sent on `tuple` (after smoltcp) to its sender; a socket
    /// smoltcp closed (reset, timed out) aborts it.
    pub(super) fn feed_sender(
        &mut self,
        env: &Env,
        tuple: Tuple,
        seg: Option<&Segment>,
        now: Instant,
    ) {
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
                    .on_ack(&mut conn.sender, &env.sender_budget, ack, now);
            }
        }
        schedule(&mut self.deadlines, &mut self.ready, env, tuple, conn);
    }

    /// [`schedule`] for `tuple`.
    pub(super) fn schedule(&mut self, env: &Env, tuple: Tuple) {
        if let Some(conn) = self.conns.get_mut(&tuple) {
            schedule(&mut self.deadlines, &mut self.ready, env, tuple, conn);
        }
    }

    /// Runs the sender timers due at `now`, however late.
    pub(super) fn run_sender_timers(&mut self, env: &Env, now: Instant) {
        // All due ones first: a sender may re-arm at `now`, which waits for the next pass.
        let sender = |t: &Timer| matches!(t, Timer::Sender(_));
        let mut due = Vec::new();
        while let Some(Timer::Sender(tuple)) = self.deadlines.pop_due(now, sender) {
            due.push(tuple);
        }
        for tuple in due {
            if let Some(conn) = self.conns.get_mut(&tuple) {
                conn.sender.handle_timeout(now);
            }
            self.schedule(env, tuple);
        }
    }

    /// Lets the ready senders transmit until the batch holds `limit` packets; those
    /// left over stay ready.
    pub(super) fn transmit_ready(&mut self, env: &Env, now: Instant, limit: usize) {
        for tuple in std::mem::take(&mut self.ready) {
            let Some(conn) = self.conns.get_mut(&tuple) else {
                continue;
            };
            conn.ready = false;
            let room = limit.saturating_sub(self.tx.len());
            if room > 0 {
                conn.sender.poll_transmit(now, &mut self.tx, room);
            }
            self.schedule(env, tuple);
        }
    }
}

/// Brings `tuple`'s entries in the shard's deadlines and ready list up to date with its
/// sender, and adds what the sender did to the stack's counters.
pub(super) fn schedule(
    deadlines: &mut Deadlines<Timer>,
    ready: &mut Vec<Tuple>,
    env: &Env,
    tuple: Tuple,
    conn: &mut Conn,
) {
    deadlines.set(Timer::Sender(tuple), conn.sender.poll_timeout());
    if !conn.ready && conn.sender.wants_transmit() {
        conn.ready = true;
        ready.push(tuple);
    }
    env.counters.sender(conn.sender.take_events());
}
