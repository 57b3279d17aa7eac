//! The peer table: adding and updating peers, receiver indices, the routing table.

use super::*;
use crate::lifecycle::Lifecycle;

impl Peers {
    pub(super) fn upsert_inner(&mut self, mut config: PeerConfig, now: Instant) -> PeerChange {
        config.endpoint = config.endpoint.map(crate::canonical);
        let key = config.public_key;
        self.seq += 1;
        let seq = self.seq;
        if let Some(&slot) = self.by_key.get(&key) {
            let Some(peer) = self.slots[slot].as_mut() else {
                return PeerChange::Unchanged;
            };
            peer.seq = seq;
            if peer.config == config {
                return PeerChange::Unchanged;
            }
            let psk_changed = peer.config.preshared_key != config.preshared_key;
            if config.endpoint.is_some() && config.endpoint != peer.config.endpoint {
                peer.endpoint = config.endpoint;
                peer.retry_soon();
            }
            if config.persistent_keepalive != peer.config.persistent_keepalive {
                // Count the new interval from now, not from a traversal long ago.
                peer.last_traversal = Some(peer.last_traversal().map_or(now, |t| t.max(now)));
            }
            let start = peer.lifecycle == Lifecycle::Idle
                && peer.config.endpoint.is_none()
                && config.endpoint.is_some();
            peer.config = config;
            peer.seq = seq;
            if psk_changed {
                self.restart_session(slot, now);
                return PeerChange::Rekeyed;
            }
            if start {
                self.start_handshake(slot, false, now);
            }
            return PeerChange::Changed;
        }
        let index = self.new_index();
        let mut peer = Peer::new(config, &self.secret, index, &self.limiter, now);
        peer.seq = seq;
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(peer);
                free
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(key, slot);
        self.by_index.insert(index, slot);
        tracing::debug!(peer = %key, "peer added");
        self.start_handshake(slot, false, now);
        PeerChange::Added
    }

    /// Starts over with a new tunnel, no session and no handshake history (our key or the
    /// preshared key changed), and starts a handshake. The replay guard is kept.
    pub(super) fn restart_session(&mut self, slot: usize, now: Instant) {
        self.reset_tunnel(slot);
        if let Some(peer) = self.slots[slot].as_mut() {
            peer.lifecycle.reset();
            peer.last_handshake = None;
        }
        self.start_handshake(slot, false, now);
    }

    /// Re-creates a peer's tunnel under a new receiver index (sessions are dropped).
    pub(super) fn reset_tunnel(&mut self, slot: usize) {
        let index = self.new_index();
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        self.by_index.remove(&peer.index);
        peer.recreate_tunn(&self.secret, index, &self.limiter);
        self.by_index.insert(index, slot);
    }

    pub(super) fn new_index(&mut self) -> u32 {
        loop {
            let index = self.rng.random::<u32>() & 0x00ff_ffff;
            if index != 0 && !self.by_index.contains_key(index) {
                return index;
            }
        }
    }

    /// Rebuilds the routing table; a prefix claimed by two peers goes to the one configured
    /// last (as with `wg set`).
    pub(super) fn rebuild_routes(&mut self) {
        self.routes.clear();
        let mut order: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| p.as_ref().map(|p| (p.seq, slot)))
            .collect();
        order.sort_unstable();
        for (_, slot) in order {
            if let Some(peer) = self.slots[slot].as_ref() {
                for net in &peer.config.allowed_ips {
                    self.routes.insert(*net, slot);
                }
            }
        }
    }

    pub(super) fn peer(&self, key: &PublicKey) -> Option<&Peer> {
        self.by_key
            .get(key)
            .and_then(|&slot| self.slots[slot].as_ref())
    }

    pub(super) fn peer_mut(&mut self, key: &PublicKey) -> Option<&mut Peer> {
        let slot = *self.by_key.get(key)?;
        self.slots[slot].as_mut()
    }
}

/// Receiver index (24 bits) -> slot, sorted for a binary search: cheaper than hashing for the handful
/// (or thousands) of peers an engine holds; changes only with the configuration.
#[derive(Debug, Default)]
pub(super) struct ReceiverIndices(Vec<(u32, usize)>);

impl ReceiverIndices {
    #[inline]
    pub(super) fn get(&self, index: u32) -> Option<usize> {
        match self.0.as_slice() {
            // One peer (the usual agent): no search.
            [(i, slot)] => (*i == index).then_some(*slot),
            entries => entries
                .binary_search_by_key(&index, |e| e.0)
                .ok()
                .and_then(|i| entries.get(i))
                .map(|e| e.1),
        }
    }

    pub(super) fn insert(&mut self, index: u32, slot: usize) {
        match self.0.binary_search_by_key(&index, |e| e.0) {
            Ok(i) => self.0[i].1 = slot,
            Err(i) => self.0.insert(i, (index, slot)),
        }
    }

    pub(super) fn remove(&mut self, index: &u32) {
        if let Ok(i) = self.0.binary_search_by_key(index, |e| e.0) {
            self.0.remove(i);
        }
    }

    pub(super) fn contains_key(&self, index: u32) -> bool {
        self.get(index).is_some()
    }
}
