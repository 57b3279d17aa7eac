//! wg-core's own schedule: boringtun's coarse tick, keepalive, the 90 s limit, backoff, expiry.

use super::*;

/// A span naming the peer around a call into boringtun, whose own log lines (`HANDSHAKE(
/// REKEY_TIMEOUT)` and the like) carry no peer. Created only while those lines are enabled at
/// all: the agent turns them off by default and reports per gateway from wg-core's events.
pub(super) fn boringtun_span(key: &PublicKey) -> tracing::Span {
    if tracing::enabled!(target: "boringtun", tracing::Level::ERROR) {
        tracing::error_span!("peer", public_key = %key)
    } else {
        tracing::Span::none()
    }
}

impl Peers {
    pub(super) fn tick_boringtun(&mut self, now: Instant) {
        let need = (self.config.max_packet_size + wire::DATA_OVERHEAD).max(wire::INITIATION_LEN);
        for slot in 0..self.slots.len() {
            let Some(peer) = self.slots[slot].as_ref() else {
                continue;
            };
            if !peer.needs_tick() {
                continue;
            }
            if self.tx.is_full() {
                // The caller has not drained yet: the next tick runs these timers.
                break;
            }
            let endpoint = peer.endpoint;
            let _peer = boringtun_span(&peer.config.public_key).entered();
            match self.emit(slot, need, endpoint, now, |t, b| t.update_timers(b)) {
                Err(WireGuardError::ConnectionExpired) => self.handshake_expired(slot, now),
                Err(e) => tracing::debug!(error = ?e, "boringtun timer error"),
                Ok(_) => {}
            }
            // Packets boringtun still holds (the transmit queue was full at the handshake).
            if self.slots[slot]
                .as_ref()
                .is_some_and(|p| p.lifecycle.state() == HandshakeState::Established)
            {
                self.flush_queued(slot, now);
            }
        }
    }

    pub(super) fn run_peer_timers(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let key = peer.config.public_key;
        // Our own 90 s limit on a handshake attempt (boringtun's runs on its own clock).
        if peer.lifecycle.attempt_timed_out(now) {
            self.handshake_expired(slot, now);
        }
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.lifecycle.expire_session(now) {
            tracing::debug!(peer = %key, "session expired: no handshake for 180 s");
            self.push_event(Event::SessionExpired { peer: key });
            // boringtun drops the session on its own clock; drop it here too so both agree
            // (its clock also counts suspended time, ours does not).
            self.reset_tunnel(slot);
        }
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.lifecycle.retry_due(now) {
            self.backoff_retry(slot, now);
        }
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.keepalive_deadline().is_some_and(|t| now >= t) {
            self.send_keepalive(slot, now);
        }
    }

    pub(super) fn send_keepalive(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        match peer.lifecycle.state() {
            HandshakeState::Established => {
                // boringtun renews sessions only on data; keepalive-only tunnels renew here,
                // as the kernel does on any send.
                if peer
                    .lifecycle
                    .session_age(now)
                    .is_none_or(|age| age >= REKEY_AFTER)
                {
                    self.send_initiation(slot, false, now);
                }
                self.encapsulate_keepalive(slot, now);
            }
            HandshakeState::Idle => {
                self.start_handshake(slot, false, now);
                if let Some(peer) = self.slots[slot].as_mut()
                    && peer.lifecycle.state() == HandshakeState::Idle
                {
                    // Nothing went out (full queue): try again one interval later.
                    peer.last_traversal = Some(now);
                }
            }
            HandshakeState::Connecting | HandshakeState::Backoff => {}
        }
    }

    pub(super) fn encapsulate_keepalive(&mut self, slot: usize, now: Instant) {
        let Some(endpoint) = self.slots[slot].as_ref().and_then(|p| p.endpoint) else {
            return;
        };
        let sent = self.emit(slot, wire::INITIATION_LEN, Some(endpoint), now, |t, b| {
            t.encapsulate(&[], b)
        });
        if !matches!(sent, Ok(Some(_)))
            && let Some(peer) = self.slots[slot].as_mut()
        {
            // A handshake is in progress (the keepalive waits in boringtun's queue) or the
            // queue is full: do not fire again at once.
            peer.last_traversal = Some(now);
        }
    }

    /// boringtun gave up (or our own 90 s passed): retry with backoff if a session is wanted.
    pub(super) fn handshake_expired(&mut self, slot: usize, now: Instant) {
        let unit: f64 = self.rng.random();
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let key = peer.config.public_key;
        let wanted = peer.endpoint.is_some() && peer.wants_session(now);
        match peer.lifecycle.give_up(now, wanted, unit) {
            GaveUp::Ignored => {}
            GaveUp::Backoff(delay) => {
                tracing::debug!(peer = %key, retry_in_ms = delay.as_millis() as u64,
                    "handshake not answered for 90 s; retrying with backoff");
                self.push_event(Event::HandshakeFailing {
                    peer: key,
                    retry_in: delay,
                });
            }
            GaveUp::Idle => {
                tracing::debug!(peer = %key, "handshake abandoned; idle until there is traffic");
            }
        }
    }

    pub(super) fn backoff_retry(&mut self, slot: usize, now: Instant) {
        let unit: f64 = self.rng.random();
        // A fresh tunnel: boringtun's own clock and retry state start again, so the session
        // this attempt creates is not aged by the time spent in backoff.
        self.reset_tunnel(slot);
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let attempt = peer.lifecycle.retried(now, unit);
        tracing::debug!(peer = %peer.config.public_key, ?attempt, "handshake retry");
        self.send_initiation(slot, true, now);
    }

    /// Starts a handshake with a peer that has an endpoint (state becomes `Connecting` unless
    /// a session exists or the peer is in backoff).
    pub(super) fn start_handshake(&mut self, slot: usize, force: bool, now: Instant) {
        self.send_initiation(slot, force, now);
    }

    pub(super) fn send_initiation(&mut self, slot: usize, force: bool, now: Instant) {
        let Some((endpoint, key)) = self.slots[slot]
            .as_ref()
            .and_then(|p| Some((p.endpoint?, p.config.public_key)))
        else {
            return;
        };
        let _peer = boringtun_span(&key).entered();
        let _ = self.emit(slot, wire::INITIATION_LEN, Some(endpoint), now, |t, b| {
            t.format_handshake_initiation(b, force)
        });
    }

    /// Bookkeeping after a datagram for `slot` was queued outside [`Peers::emit`].
    pub(super) fn after_send(&mut self, slot: usize, len: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        peer.tx_bytes += len as u64;
        peer.last_traversal = Some(now);
    }

    pub(super) fn schedule_tick(&mut self, now: Instant) {
        let mut any = false;
        let mut connecting = false;
        for peer in self.slots.iter().flatten() {
            if peer.needs_tick() {
                any = true;
                connecting |= peer.lifecycle.state() == HandshakeState::Connecting;
            }
        }
        if !any {
            self.next_tick = None;
            return;
        }
        let interval = if connecting { TICK_FAST } else { TICK_SLOW };
        let at = now + interval;
        self.next_tick = Some(self.next_tick.map_or(at, |t| t.min(at)));
    }

    pub(super) fn schedule_limiter_reset(&mut self, now: Instant) {
        if self.next_limiter_reset.is_none() {
            self.next_limiter_reset = Some(now + LIMITER_RESET);
        }
    }

    pub(super) fn ensure_fast_tick(&mut self, now: Instant) {
        let at = now + TICK_FAST;
        self.next_tick = Some(self.next_tick.map_or(at, |t| t.min(at)));
    }
}
