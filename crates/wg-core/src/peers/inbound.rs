//! Inbound datagrams: routing to a peer, boringtun's decapsulate, allowed-IP check, roaming.

use super::*;
use crate::initiation;
use crate::ipnet::Lookup;

impl Peers {
    /// Everything but a well-formed data message: size and header checks, handshake messages,
    /// cookie replies.
    #[inline(never)]
    pub(super) fn handle_control(
        &mut self,
        from: SocketAddr,
        message: Message<'_>,
        now: Instant,
    ) -> Result<(), PacketError> {
        let receiver = match message {
            Message::Initiation(msg) => return self.handle_initiation(from, msg, now),
            Message::Response { receiver, .. } => {
                // Responses count against the shared limiter too: reset it a second later.
                self.schedule_limiter_reset(now);
                receiver
            }
            Message::CookieReply { receiver, .. } => receiver,
            // Data is the caller's per-packet path; never into the handshake buffer.
            Message::Data { .. } => return Err(self.drop_global(DropReason::Other)),
        };
        let Some(slot) = self.by_index.get(Message::peer_index(receiver)) else {
            return Err(self.unknown_index(from, message.handshake_bytes().len()));
        };
        self.decapsulate_handshake(slot, from, message, None, now)
    }

    #[cold]
    pub(super) fn unknown_index(&mut self, from: SocketAddr, len: usize) -> PacketError {
        tracing::trace!(%from, len, "datagram for an unknown receiver index");
        self.drop_global(DropReason::UnknownIndex)
    }

    fn handle_initiation(
        &mut self,
        from: SocketAddr,
        msg: &[u8; wire::INITIATION_LEN],
        now: Instant,
    ) -> Result<(), PacketError> {
        self.schedule_limiter_reset(now);
        let mut cookie = [0u8; wire::COOKIE_REPLY_LEN];
        let opened = match self
            .limiter
            .verify_packet(Some(from.ip()), msg, &mut cookie)
        {
            Ok(Packet::HandshakeInit(_)) => {
                match initiation::open(&self.secret, &self.public, msg) {
                    Some(opened) => opened,
                    None => return Err(self.drop_global(DropReason::BadAuth)),
                }
            }
            Ok(_) => return Err(self.drop_global(DropReason::Malformed)),
            Err(TunnResult::WriteToNetwork(reply)) => {
                let len = reply.len();
                if !self.tx.push_copy(
                    reply,
                    TxMeta {
                        destination: from,
                        len,
                    },
                ) {
                    self.drops.add(DropReason::QueueFull);
                }
                tracing::trace!(%from, "under load: cookie reply sent");
                return Err(self.drop_global(DropReason::UnderLoad));
            }
            Err(TunnResult::Err(e)) => return Err(self.drop_global(DropReason::of(&e))),
            Err(_) => return Err(self.drop_global(DropReason::Other)),
        };
        let key = PublicKey::from_bytes(opened.peer);
        let Some(&slot) = self.by_key.get(&key) else {
            tracing::debug!(%from, peer = %key, "handshake initiation from an unknown peer");
            return Err(self.drop_global(DropReason::UnknownPeer));
        };
        // The replay guard: boringtun's is reset with its tunnel, this one is not.
        if self.slots[slot]
            .as_ref()
            .and_then(|p| p.newest_initiation)
            .is_some_and(|newest| opened.timestamp <= newest)
        {
            tracing::debug!(%from, peer = %key, "replayed handshake initiation dropped");
            return Err(self.drop_peer(slot, DropReason::Replay));
        }
        let message = Message::Initiation(msg);
        self.decapsulate_handshake(slot, from, message, Some(opened.timestamp), now)
    }

    /// Runs boringtun on a data message (type 4, at least 32 bytes) already routed to `slot`,
    /// decrypting straight into the received queue's free slot. `from` as the socket gave it
    /// (maybe IPv4-mapped).
    #[inline(always)]
    pub(super) fn decapsulate_data(
        &mut self,
        slot: usize,
        from: &SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        let wire = datagram.len();
        let Some(peer) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Err(self.drop_global(DropReason::UnknownIndex));
        };
        // boringtun panics when `dst` is shorter than the datagram: the slot is at least as long.
        let Some(buf) = self.rx.free_slot(wire) else {
            peer.drops.add(DropReason::QueueFull);
            return Err(self.drop_global(DropReason::QueueFull));
        };
        // boringtun reads the source address only for handshake messages (cookie checks under
        // load); this is a data message, so it is not built for every packet.
        let (route, src, len) = match peer.tunn.decapsulate(None, datagram, buf) {
            TunnResult::WriteToTunnelV4(p, src) => (
                self.routes.route_v4(src.octets(), Lookup::Source),
                IpAddr::V4(src),
                p.len(),
            ),
            TunnResult::WriteToTunnelV6(p, src) => (
                self.routes.route(IpAddr::V6(src), Lookup::Source),
                IpAddr::V6(src),
                p.len(),
            ),
            TunnResult::Done => {
                // An authenticated keepalive.
                self.authenticated(slot, crate::canonical(*from), wire, now);
                return Ok(());
            }
            TunnResult::WriteToNetwork(_) => return Err(self.drop_peer(slot, DropReason::Other)),
            TunnResult::Err(e) => return Err(self.data_refused(slot, from, e)),
        };
        // Authenticated: count it (this also counts as a traversal, see `Peer::last_traversal`).
        peer.rx_bytes += wire as u64;
        peer.last_received = Some(now);
        if route == Some(slot) && same_endpoint(peer.endpoint, from) {
            self.rx.commit(RxMeta {
                peer: peer.config.public_key,
                len,
            });
            return Ok(());
        }
        self.data_unusual(slot, from, route == Some(slot), src, len)
    }

    /// The rest of [`Peers::decapsulate_data`] when the peer moved (roaming: follow it) or the
    /// source is not in its allowed IPs (drop the packet).
    #[cold]
    #[inline(never)]
    fn data_unusual(
        &mut self,
        slot: usize,
        from: &SocketAddr,
        allowed: bool,
        src: IpAddr,
        len: usize,
    ) -> Result<(), PacketError> {
        if allowed && let Some(peer) = self.slots.get(slot).and_then(Option::as_ref) {
            self.rx.commit(RxMeta {
                peer: peer.config.public_key,
                len,
            });
        }
        if self
            .slots
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|p| !same_endpoint(p.endpoint, from))
        {
            self.roam(slot, crate::canonical(*from));
        }
        if !allowed {
            tracing::trace!(%src, "source address not in the peer's allowed IPs");
            return Err(self.drop_peer(slot, DropReason::AllowedIpMismatch));
        }
        Ok(())
    }

    #[cold]
    fn data_refused(&mut self, slot: usize, from: &SocketAddr, e: WireGuardError) -> PacketError {
        tracing::trace!(%from, error = ?e, "data message refused");
        self.drop_peer(slot, DropReason::of(&e))
    }

    /// Brings an unticked tunnel's clock up to date before it handles a handshake message, so
    /// the session it creates is not born old; an expired one is re-created before answering
    /// an initiation (boringtun would keep it marked expired).
    fn refresh_tunnel(&mut self, slot: usize, initiation: bool, now: Instant) {
        let Some(peer) = self.slots[slot].as_ref() else {
            return;
        };
        if peer.needs_tick() {
            return;
        }
        if peer.lifecycle.state() == HandshakeState::Backoff {
            let endpoint = peer.endpoint;
            let _peer = timers::boringtun_span(&peer.config.public_key).entered();
            let _ = self.emit(slot, wire::INITIATION_LEN, endpoint, now, |t, b| {
                t.update_timers(b)
            });
        }
        let expired = self.slots[slot]
            .as_ref()
            .is_some_and(|p| p.tunn.is_expired());
        if initiation && expired {
            self.reset_tunnel(slot);
        }
    }

    /// Handshake initiation (with its timestamp, already checked against the replay guard),
    /// response or cookie reply, already routed to `slot`.
    fn decapsulate_handshake(
        &mut self,
        slot: usize,
        from: SocketAddr,
        message: Message<'_>,
        timestamp: Option<initiation::Timestamp>,
        now: Instant,
    ) -> Result<(), PacketError> {
        let datagram = message.handshake_bytes();
        let is_initiation = matches!(message, Message::Initiation(_));
        self.refresh_tunnel(slot, is_initiation, now);
        let Some(peer) = self.slots[slot].as_mut() else {
            return Err(self.drop_global(DropReason::UnknownIndex));
        };
        let _peer = timers::boringtun_span(&peer.config.public_key).entered();
        match peer
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.scratch)
        {
            TunnResult::Done => {
                if let Message::CookieReply { .. } = message {
                    self.on_cookie(slot, now);
                }
                Ok(())
            }
            TunnResult::WriteToNetwork(out) => {
                let len = out.len();
                let out_kind = wire::message_type(out);
                let meta = TxMeta {
                    destination: from,
                    len,
                };
                if out_kind == wire::COOKIE_REPLY {
                    // Under load: the message was not processed, a cookie goes back instead.
                    if !self.tx.push_copy(&self.scratch[..len], meta) {
                        self.drops.add(DropReason::QueueFull);
                    }
                    return Err(self.drop_peer(slot, DropReason::UnderLoad));
                }
                if is_initiation {
                    // Authentic and newer than any before, but not proof that the peer is
                    // at `from`: the endpoint moves only on data or on the response to our
                    // own initiation. The response goes to `from` all the same.
                    if let Some(peer) = self.slots[slot].as_mut() {
                        peer.rx_bytes += datagram.len() as u64;
                        peer.last_received = Some(now);
                        peer.newest_initiation = timestamp.max(peer.newest_initiation);
                    }
                } else {
                    self.authenticated(slot, from, datagram.len(), now);
                }
                self.handshake_completed(slot, now);
                if self.tx.push_copy(&self.scratch[..len], meta) {
                    self.after_send(slot, len, now);
                } else {
                    self.drop_peer(slot, DropReason::QueueFull);
                }
                self.flush_queued(slot, now);
                Ok(())
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                Err(self.drop_peer(slot, DropReason::Other))
            }
            TunnResult::Err(e) => {
                tracing::trace!(%from, error = ?e, "handshake message refused");
                Err(self.drop_peer(slot, DropReason::of(&e)))
            }
        }
    }

    /// Sends what boringtun queued while the handshake ran.
    pub(super) fn flush_queued(&mut self, slot: usize, now: Instant) {
        let need = (self.config.max_packet_size + wire::DATA_OVERHEAD).max(wire::INITIATION_LEN);
        loop {
            if self.tx.is_full() {
                // Left in boringtun's queue; the next tick sends it.
                return;
            }
            let Some(endpoint) = self.slots[slot].as_ref().map(|p| p.endpoint) else {
                return;
            };
            match self.emit(slot, need, endpoint, now, |t, b| {
                t.decapsulate(None, &[], b)
            }) {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    }

    /// Runs `op` on the peer's tunnel with the transmit queue's free slot as its output, and
    /// queues what it wrote for `destination` (counted as `NoEndpoint` without one). Returns
    /// the message type written, if any.
    #[inline(always)]
    pub(super) fn emit<F>(
        &mut self,
        slot: usize,
        need: usize,
        destination: Option<SocketAddr>,
        now: Instant,
        op: F,
    ) -> Result<Option<u8>, WireGuardError>
    where
        F: for<'a> FnOnce(&mut Tunn, &'a mut [u8]) -> TunnResult<'a>,
    {
        let Some(peer) = self.slots[slot].as_mut() else {
            return Ok(None);
        };
        let Some(buf) = self.tx.free_slot(need) else {
            peer.drops.add(DropReason::QueueFull);
            self.drops.add(DropReason::QueueFull);
            return Ok(None);
        };
        match op(&mut peer.tunn, buf) {
            TunnResult::WriteToNetwork(out) => {
                let len = out.len();
                let kind = wire::message_type(out);
                let Some(destination) = destination else {
                    peer.drops.add(DropReason::NoEndpoint);
                    self.drops.add(DropReason::NoEndpoint);
                    return Ok(None);
                };
                self.tx.commit(TxMeta { destination, len });
                peer.tx_bytes += len as u64;
                peer.last_traversal = Some(now);
                if kind == wire::INITIATION {
                    let phase_changed = peer.lifecycle.initiation_sent(now);
                    let unanswered = peer.unanswered.initiation_sent(now);
                    let key = peer.config.public_key;
                    if phase_changed {
                        self.ensure_fast_tick(now);
                    }
                    if let Some((tries, elapsed)) = unanswered {
                        tracing::debug!(peer = %key, tries, "handshake initiations unanswered");
                        self.push_event(Event::HandshakeUnanswered {
                            peer: key,
                            tries,
                            elapsed,
                        });
                    }
                }
                Ok(Some(kind))
            }
            TunnResult::Err(e) => Err(e),
            _ => Ok(None),
        }
    }

    /// An authenticated message arrived: count it, and follow the peer if it moved (roaming).
    pub(super) fn authenticated(
        &mut self,
        slot: usize,
        from: SocketAddr,
        wire_len: usize,
        now: Instant,
    ) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        peer.rx_bytes += wire_len as u64;
        peer.last_received = Some(now);
        if peer.endpoint != Some(from) {
            self.roam(slot, from);
        }
    }

    /// The peer's authenticated packet came from a new address: follow it.
    #[cold]
    pub(super) fn roam(&mut self, slot: usize, from: SocketAddr) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let old = peer.endpoint.replace(from);
        let event = Event::EndpointChanged {
            peer: peer.config.public_key,
            old,
            new: from,
        };
        tracing::debug!(peer = %peer.config.public_key, ?old, new = %from, "peer endpoint changed");
        self.push_event(event);
    }

    pub(super) fn handshake_completed(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let rekey = peer.lifecycle.handshake_completed(now);
        let recovered = peer.unanswered.answered(now);
        peer.last_handshake = Some(now);
        peer.handshakes += 1;
        let key = peer.config.public_key;
        if let Some((tries, elapsed)) = recovered {
            self.push_event(Event::HandshakeRecovered {
                peer: key,
                tries,
                elapsed,
            });
        }
        if rekey {
            tracing::debug!(peer = %key, "session renewed");
        } else {
            tracing::debug!(peer = %key, "handshake completed, tunnel up");
        }
        self.push_event(Event::HandshakeCompleted { peer: key, rekey });
        self.schedule_tick(now);
    }

    /// A cookie reply arrived (the peer is under load). In backoff boringtun is not ticked, so
    /// resend the initiation now: it carries the cookie.
    pub(super) fn on_cookie(&mut self, slot: usize, now: Instant) {
        let in_backoff = self.slots[slot]
            .as_ref()
            .is_some_and(|p| p.lifecycle.state() == HandshakeState::Backoff);
        if in_backoff {
            self.send_initiation(slot, true, now);
        }
    }
}

/// `endpoint == Some(canonical(*from))`, with IPv4 compared as two integers (the derived
/// comparison is an out-of-line call on the per-packet path).
#[inline(always)]
fn same_endpoint(endpoint: Option<SocketAddr>, from: &SocketAddr) -> bool {
    match (endpoint, from) {
        (Some(SocketAddr::V4(a)), SocketAddr::V4(b)) => {
            a.ip().to_bits() == b.ip().to_bits() && a.port() == b.port()
        }
        (Some(a), b) => a == crate::canonical(*b),
        (None, _) => false,
    }
}
