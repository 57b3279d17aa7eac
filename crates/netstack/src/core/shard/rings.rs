//! The connection table's ring memory: sockets created with rings sized from the budget,
//! send memory reserved as streams write, idle send rings released, and data for a
//! dropped stream discarded (see `autotune.rs`, `buffer.rs`).

use super::*;

/// Bytes a connection sends before its emptied send ring is released (see
/// [`Shard::release_idle_tx`]): the syscall and the page faults after it cost little
/// next to this much data.
const RELEASE_AFTER: usize = 256 << 10;

/// How long such a connection's send queue must stay empty before its ring is released.
const RELEASE_DELAY: Duration = Duration::from_secs(1);

impl Shard {
    /// Reserves sender memory for `want` bytes the stream of `tuple` is about to queue;
    /// returns how many it may queue (see `Sender::reserve`). Past it a writer waits for
    /// an ACK.
    pub(crate) fn reserve_send(&mut self, env: &Env, tuple: &Tuple, want: usize) -> usize {
        let Some(conn) = self.conns.get_mut(tuple) else {
            return want;
        };
        let queued = self.sockets.get::<tcp::Socket>(conn.handle).send_queue();
        // Send-ring pages first (see `autotune.rs`), then the sender's memory.
        let want = conn
            .rings
            .admit_tx(&env.budget, &env.counters.tcp_ring_bytes, queued, want);
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

    /// Data arrived for a connection whose stream was dropped: nobody will read it, so
    /// reset the connection (as Linux does for an orphaned socket) instead of buffering
    /// up to a whole receive ring until the close times out.
    pub(super) fn reset_unread(&mut self, tuple: Tuple) {
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
    pub(super) fn release_idle_tx(&mut self, tuple: Tuple, now: Instant) {
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return;
        };
        let key = Timer::Release(tuple);
        if conn.tx_dirty < RELEASE_AFTER || self.deadlines.get(key).is_some() {
            return;
        }
        if self.sockets.get::<tcp::Socket>(conn.handle).send_queue() == 0 {
            self.deadlines.set(key, Some(now + RELEASE_DELAY));
        }
    }

    /// Releases the send rings of candidates whose delay has passed and that stayed idle.
    pub(super) fn release_due(&mut self, env: &Env, now: Instant) {
        let release = |t: &Timer| matches!(t, Timer::Release(_));
        while let Some(Timer::Release(tuple)) = self.deadlines.pop_due(now, release) {
            let Some(conn) = self.conns.get_mut(&tuple) else {
                continue;
            };
            let mut socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            if socket.send_queue() == 0 && socket.release_send_ring() {
                conn.tx_dirty = 0;
                conn.rings
                    .released_tx(&env.budget, &env.counters.tcp_ring_bytes);
            }
        }
    }

    /// A TCP socket with this stack's options, within `max_connections`, with its rings
    /// charged to the budget, its receive ring at least `rx_floor` bytes; the large rings
    /// of the budget's first step only if `large`.
    pub(super) fn new_tcp(
        &mut self,
        env: &Env,
        rx_floor: usize,
        large: bool,
    ) -> io::Result<(SocketHandle, Rings)> {
        let config = &env.config;
        let count = &env.counters.tcp_sockets;
        if count.fetch_add(1, Relaxed) >= config.max_connections {
            count.fetch_sub(1, Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                "netstack: max_connections reached",
            ));
        }
        // Ring sizes from the budget (see `NetstackConfig::tcp_buffer_budget`). Shards
        // reserve concurrently: the sizes follow the reservation seen, the bound holds.
        let budget = &env.budget;
        let ring_bytes = &env.counters.tcp_ring_bytes;
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
