//! The engine: [`Peers`], a sans-IO WireGuard device for several peers over boringtun.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::buffers::{Ring, RxMeta, TxMeta};
use crate::ipnet::{Lookup, RouteTable};
use crate::lifecycle::{GaveUp, REKEY_AFTER};
use crate::peer::Peer;
use crate::stats::{DropCounts, DropReason, HandshakeState, PeerStats, Stats};
use crate::wire::{self, Message};
use crate::{Event, PeerConfig, PrivateKey, PublicKey};

mod inbound;
mod outbound;
mod table;
mod timers;

/// boringtun's timers are ticked this often while a handshake is in progress.
const TICK_FAST: Duration = Duration::from_millis(250);
/// ... and this often otherwise (its timers have one-second resolution).
const TICK_SLOW: Duration = Duration::from_secs(1);
/// The shared rate limiter's counting window.
const LIMITER_RESET: Duration = Duration::from_secs(1);

/// Limits and tuning of a [`Peers`] engine. `Config::default()` suits a handful of gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest UDP payload accepted by [`Peers::handle_datagram`]; longer ones are dropped
    /// ([`DropReason::TooBig`]) before boringtun sees them. Default 65,535.
    pub max_datagram_size: usize,
    /// Largest IP packet accepted by [`Peers::handle_ip_packet`]. Default 1,500; set it to the
    /// interface MTU.
    pub max_packet_size: usize,
    /// Bound of the transmit queue (datagrams waiting for [`Peers::poll_transmit`]). Default 1,024.
    pub max_transmits: usize,
    /// Bound of the received queue (packets waiting for [`Peers::poll_received`]). Default 1,024.
    pub max_received: usize,
    /// Bound of the event queue. Default 256.
    pub max_events: usize,
    /// Handshake initiations accepted per second before cookie replies are sent. Default 100.
    pub handshake_rate_limit: u64,
    /// Seed for the jitter and index generator; `None` seeds from the OS (tests fix it).
    pub rng_seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_datagram_size: 65_535,
            max_packet_size: 1_500,
            max_transmits: 1_024,
            max_received: 1_024,
            max_events: 256,
            handshake_rate_limit: 100,
            rng_seed: None,
        }
    }
}

/// Why [`Peers::handle_datagram`] or [`Peers::handle_ip_packet`] dropped its input. The drop is
/// already counted; the caller may ignore this (it is for tracing and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet dropped: {reason}")]
#[non_exhaustive]
pub struct PacketError {
    /// Why.
    pub reason: DropReason,
}

/// How [`Peers::upsert_peer`] treated one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerChange {
    /// A new peer; its handshake started at once when it has an endpoint.
    Added,
    /// Endpoint, allowed IPs or keepalive changed; the session was kept.
    Changed,
    /// The preshared key changed: the tunnel was re-created and a new handshake started.
    Rekeyed,
    /// Nothing changed; the session and receiver index are untouched.
    Unchanged,
}

/// What [`Peers::set_peers`] did, by public key (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Update {
    /// Peers that were not there before.
    pub added: Vec<PublicKey>,
    /// Peers that are gone.
    pub removed: Vec<PublicKey>,
    /// Peers whose configuration changed (PSK changes included).
    pub changed: Vec<PublicKey>,
    /// Peers left exactly as they were (session kept, no handshake).
    pub unchanged: Vec<PublicKey>,
}

/// A datagram for the UDP socket. `payload` borrows the engine until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// A decrypted IP packet for the network stack. `packet` borrows the engine until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// The peer it came from (its source address is in that peer's allowed IPs).
    pub peer: PublicKey,
    /// The IP packet (IPv4 or IPv6), trimmed to its header's length.
    pub packet: &'a [u8],
}

/// A WireGuard device for several peers: a sans-IO state machine over boringtun.
///
/// Inputs are `handle_*` (datagrams from the UDP socket, IP packets from the network stack,
/// time), outputs are `poll_*` (datagrams to send, packets to deliver, the next deadline, state
/// changes). Time is passed in as `now`; the engine never reads the clock for its own schedule
/// and never does I/O. After any `handle_*`, drain every `poll_*`.
///
/// Peers are identified by [`PublicKey`]. See the crate documentation for an example.
pub struct Peers {
    config: Config,
    private_key: PrivateKey,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    /// Peer storage; a peer keeps its slot for life, so routes and indices can name it.
    slots: Vec<Option<Peer>>,
    by_key: BTreeMap<PublicKey, usize>,
    by_index: table::ReceiverIndices,
    routes: RouteTable<usize>,
    tx: Ring<TxMeta>,
    rx: Ring<RxMeta>,
    events: VecDeque<Event>,
    /// Output of boringtun for handshake messages (at most 148 bytes in and out).
    scratch: [u8; 256],
    drops: DropCounts,
    events_dropped: u64,
    next_tick: Option<Instant>,
    next_limiter_reset: Option<Instant>,
    rng: StdRng,
    /// Configuration sequence number: the latest configured peer wins a shared prefix.
    seq: u64,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("public_key", &self.private_key.public_key())
            .field("peers", &self.by_key.keys().collect::<Vec<_>>())
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// An engine with no peers and the default [`Config`]. Nothing happens until a peer is
    /// added, so no time is needed yet.
    pub fn new(private_key: PrivateKey) -> Self {
        Self::with_config(private_key, Config::default())
    }

    /// An engine with no peers.
    pub fn with_config(private_key: PrivateKey, config: Config) -> Self {
        let secret = private_key.to_static_secret();
        let public = x25519::PublicKey::from(&secret);
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            limiter: new_limiter(&public, &config),
            // Every grown transmit buffer holds a handshake initiation (what boringtun writes
            // instead of data without a session).
            tx: Ring::with_floor(config.max_transmits, wire::INITIATION_LEN),
            rx: Ring::new(config.max_received),
            events: VecDeque::new(),
            scratch: [0; 256],
            config,
            private_key,
            secret,
            public,
            slots: Vec::new(),
            by_key: BTreeMap::new(),
            by_index: table::ReceiverIndices::default(),
            routes: RouteTable::default(),
            drops: DropCounts::default(),
            events_dropped: 0,
            next_tick: None,
            next_limiter_reset: None,
            rng,
            seq: 0,
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(self.public.to_bytes())
    }

    /// The configured peers, ordered by public key.
    pub fn peer_keys(&self) -> impl Iterator<Item = &PublicKey> + '_ {
        self.by_key.keys()
    }

    /// The applied configuration of one peer.
    pub fn peer_config(&self, key: &PublicKey) -> Option<&PeerConfig> {
        self.peer(key).map(|p| &p.config)
    }

    // ----- configuration ---------------------------------------------------------------------

    /// Replaces the peer list, applying only the difference.
    ///
    /// A peer whose configuration is equal to its current one is left alone (session and
    /// receiver index kept, no handshake). A changed endpoint, allowed IPs or keepalive is
    /// applied to the live session. A changed preshared key re-creates the tunnel. Peers not in
    /// `configs` are removed; new ones start their handshake at once. When a public key appears
    /// twice the last entry wins; when two peers claim the same prefix the later one gets it.
    pub fn set_peers(&mut self, configs: Vec<PeerConfig>, now: Instant) -> Update {
        let mut wanted: BTreeMap<PublicKey, PeerConfig> = BTreeMap::new();
        let mut order = Vec::with_capacity(configs.len());
        for config in configs {
            if !wanted.contains_key(&config.public_key) {
                order.push(config.public_key);
            }
            wanted.insert(config.public_key, config);
        }
        let mut update = Update::default();
        let gone: Vec<PublicKey> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.remove_peer(&key);
            update.removed.push(key);
        }
        for key in order {
            let Some(config) = wanted.remove(&key) else {
                continue;
            };
            match self.upsert_inner(config, now) {
                PeerChange::Added => update.added.push(key),
                PeerChange::Changed | PeerChange::Rekeyed => update.changed.push(key),
                PeerChange::Unchanged => update.unchanged.push(key),
            }
        }
        self.rebuild_routes();
        self.schedule_tick(now);
        update.added.sort();
        update.changed.sort();
        update.unchanged.sort();
        update
    }

    /// Adds a peer or updates it in place (see [`Peers::set_peers`] for what is kept).
    pub fn upsert_peer(&mut self, config: PeerConfig, now: Instant) -> PeerChange {
        let change = self.upsert_inner(config, now);
        self.rebuild_routes();
        self.schedule_tick(now);
        change
    }

    /// Removes a peer; returns whether it existed. Its datagrams already queued still go out.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        let Some(slot) = self.by_key.remove(key) else {
            return false;
        };
        if let Some(peer) = self.slots[slot].take() {
            self.by_index.remove(&peer.index);
            tracing::debug!(peer = %key, "peer removed");
        }
        self.rebuild_routes();
        true
    }

    /// Replaces our private key: every tunnel is re-created with it and peers with an endpoint
    /// start a new handshake at once. Setting the same key again does nothing.
    pub fn set_private_key(&mut self, key: PrivateKey, now: Instant) {
        if key == self.private_key {
            return;
        }
        self.secret = key.to_static_secret();
        self.public = x25519::PublicKey::from(&self.secret);
        self.private_key = key;
        self.limiter = new_limiter(&self.public, &self.config);
        let slots: Vec<usize> = self.by_key.values().copied().collect();
        for slot in slots {
            self.restart_session(slot, now);
        }
        self.schedule_tick(now);
        tracing::debug!(public_key = %self.public_key(), "private key replaced; tunnels re-keyed");
    }

    /// Sets a peer's endpoint (after DNS re-resolution, say); returns whether the peer exists.
    /// The session is kept. A peer in backoff retries at the next [`Peers::handle_timeout`]
    /// (check [`Peers::poll_timeout`]) when the address changed.
    pub fn set_endpoint(&mut self, key: &PublicKey, endpoint: SocketAddr) -> bool {
        let endpoint = crate::canonical(endpoint);
        let Some(peer) = self.peer_mut(key) else {
            return false;
        };
        if peer.endpoint != Some(endpoint) {
            peer.endpoint = Some(endpoint);
            peer.retry_soon();
        }
        true
    }

    /// Sends a handshake initiation to the peer now, even if one is in progress or a session
    /// exists (a restarted peer has lost the session: this finds it again). Leaves backoff.
    pub fn force_handshake(&mut self, key: &PublicKey, now: Instant) -> bool {
        let Some(&slot) = self.by_key.get(key) else {
            return false;
        };
        if self.slots[slot]
            .as_ref()
            .is_some_and(|p| p.lifecycle.state() == HandshakeState::Backoff)
        {
            // A fresh tunnel, as for a backoff retry: boringtun's clock restarts now.
            self.reset_tunnel(slot);
            if let Some(peer) = self.slots[slot].as_mut() {
                peer.lifecycle.reset();
            }
        }
        self.start_handshake(slot, true, now);
        self.schedule_tick(now);
        true
    }

    // ----- inputs ----------------------------------------------------------------------------

    /// A UDP datagram arrived from `from` (IPv4-mapped addresses count as IPv4, see
    /// [`canonical`](crate::canonical)). Never panics; a bad datagram is counted and dropped.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        if datagram.len() > self.config.max_datagram_size {
            return Err(self.drop_global(DropReason::TooBig));
        }
        match Message::parse(datagram) {
            // The per-packet path (it canonicalizes `from` only if needed).
            Some(Message::Data { receiver }) => {
                let Some(slot) = self.by_index.get(Message::peer_index(receiver)) else {
                    return Err(self.unknown_index(crate::canonical(from), datagram.len()));
                };
                self.decapsulate_data(slot, &from, datagram, now)
            }
            Some(message) => self.handle_control(crate::canonical(from), message, now),
            None => Err(self.drop_global(DropReason::Malformed)),
        }
    }

    /// An IP packet from the network stack: routed by destination (longest prefix) and sent to
    /// that peer, or queued inside boringtun (up to 256) while its handshake runs.
    pub fn handle_ip_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), PacketError> {
        if packet.len() > self.config.max_packet_size {
            return Err(self.drop_global(DropReason::TooBig));
        }
        // The destination, as boringtun's `Tunn::dst_address` reads it; IPv4 inline.
        let slot = match packet.first_chunk::<20>() {
            Some(h) if h[0] >> 4 == 4 => {
                let dst = [h[16], h[17], h[18], h[19]];
                self.routes.route_v4(dst, Lookup::Destination)
            }
            _ => match wire::ipv6_destination(packet) {
                Some(dst) => self.routes.route(dst, Lookup::Destination),
                None => return Err(self.drop_global(DropReason::Malformed)),
            },
        };
        let Some(slot) = slot else {
            return Err(self.no_route(packet));
        };
        let Some(peer) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Err(self.drop_global(DropReason::NoRoute));
        };
        if peer.endpoint.is_none() {
            peer.drops.add(DropReason::NoEndpoint);
            return Err(self.drop_global(DropReason::NoEndpoint));
        }
        // Without a session boringtun queues the packet and writes an initiation instead: the
        // ring's floor makes room for that.
        let Some(buf) = self.tx.free_slot(packet.len() + wire::DATA_OVERHEAD) else {
            peer.drops.add(DropReason::QueueFull);
            return Err(self.drop_global(DropReason::QueueFull));
        };
        peer.last_data_sent = Some(now);
        // `emit`, inlined for the per-packet path (one slot lookup, no closure).
        match peer.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(out) => {
                let len = out.len();
                let initiation = wire::is_initiation(out);
                // Read here rather than kept across the call: one copy of the address, not two.
                let Some(destination) = peer.endpoint else {
                    peer.drops.add(DropReason::NoEndpoint);
                    return Err(self.drop_global(DropReason::NoEndpoint));
                };
                self.tx.commit(TxMeta { destination, len });
                peer.tx_bytes += len as u64;
                // `now`, as stored before the call (not kept in registers across it).
                peer.last_traversal = peer.last_data_sent;
                if initiation {
                    self.initiation_sent(slot);
                }
                Ok(())
            }
            TunnResult::Err(e) => Err(self.drop_peer(slot, DropReason::of(&e))),
            _ => Ok(()),
        }
    }

    /// Time passed: run due timers (boringtun's tick, keepalives, retries, expiry).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_limiter_reset.is_some_and(|t| t <= now) {
            self.limiter.reset_count();
            self.next_limiter_reset = None;
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.next_tick = None;
            self.tick_boringtun(now);
        }
        for slot in 0..self.slots.len() {
            self.run_peer_timers(slot, now);
        }
        self.schedule_tick(now);
    }

    // ----- outputs ---------------------------------------------------------------------------

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        let (payload, meta) = self.tx.pop()?;
        Some(Transmit {
            destination: meta.destination,
            payload,
        })
    }

    /// The next decrypted IP packet for the network stack, if any.
    pub fn poll_received(&mut self) -> Option<Received<'_>> {
        let (packet, meta) = self.rx.pop()?;
        Some(Received {
            peer: meta.peer,
            packet,
        })
    }

    /// Datagrams waiting for [`Peers::poll_transmit`].
    pub fn queued_transmits(&self) -> usize {
        self.tx.len()
    }

    /// Packets waiting for [`Peers::poll_received`] (the caller's back-pressure signal: stop
    /// reading the socket while the network stack cannot take more).
    pub fn queued_received(&self) -> usize {
        self.rx.len()
    }

    /// The next state change, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Peers::handle_timeout`] should next be called; `None` when nothing is scheduled.
    ///
    /// At idle this is one wake-up per second (boringtun's timers, for every live tunnel),
    /// every 250 ms while a handshake is in progress, only the retry time for peers in backoff,
    /// and `None` without peers. A returned instant in the past means "call now"; after that
    /// call the next deadline is in the future.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = min_opt(self.next_tick, self.next_limiter_reset);
        for peer in self.slots.iter().flatten() {
            next = min_opt(next, peer.keepalive_deadline());
            next = min_opt(next, peer.lifecycle.deadline());
        }
        next
    }

    // ----- stats -----------------------------------------------------------------------------

    /// A snapshot of every peer and the global drop counters.
    pub fn stats(&self, now: Instant) -> Stats {
        Stats {
            peers: self
                .by_key
                .values()
                .filter_map(|&slot| self.slots[slot].as_ref())
                .map(|p| peer_stats(p, now))
                .collect(),
            drops: self.drops,
            events_dropped: self.events_dropped,
        }
    }

    /// A snapshot of one peer.
    pub fn peer_stats(&self, key: &PublicKey, now: Instant) -> Option<PeerStats> {
        self.peer(key).map(|p| peer_stats(p, now))
    }

    /// Global drop counters by reason (every drop, attributed to a peer or not).
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    // ----- internals: queues -----------------------------------------------------------------

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events {
            self.events_dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    fn drop_global(&mut self, reason: DropReason) -> PacketError {
        self.drops.add(reason);
        PacketError { reason }
    }

    fn drop_peer(&mut self, slot: usize, reason: DropReason) -> PacketError {
        if let Some(peer) = self.slots[slot].as_mut() {
            peer.drops.add(reason);
        }
        self.drop_global(reason)
    }
}

fn new_limiter(public: &x25519::PublicKey, config: &Config) -> Arc<RateLimiter> {
    // Initiations pass the limiter twice (routing, then boringtun): double the budget.
    Arc::new(RateLimiter::new(
        public,
        config.handshake_rate_limit.saturating_mul(2),
    ))
}

fn peer_stats(peer: &Peer, now: Instant) -> PeerStats {
    let age = peer
        .last_handshake
        .map(|t| now.saturating_duration_since(t));
    PeerStats {
        public_key: peer.config.public_key,
        endpoint: peer.endpoint,
        allowed_ips: peer.config.allowed_ips.clone(),
        persistent_keepalive: peer.config.persistent_keepalive,
        rx_bytes: peer.rx_bytes,
        tx_bytes: peer.tx_bytes,
        last_handshake_age: age,
        last_received_age: peer.last_received.map(|t| now.saturating_duration_since(t)),
        handshake_rtt: peer
            .tunn
            .stats()
            .4
            .map(|ms| Duration::from_millis(u64::from(ms))),
        state: peer.lifecycle.state(),
        handshakes: peer.handshakes,
        unanswered_initiations: peer.unanswered.tries(),
        receiver_index: peer.index,
        drops: peer.drops,
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn engine_can_move_between_threads() {
        assert_send::<Peers>();
        assert_send::<PeerConfig>();
        assert_send::<Event>();
    }

    #[test]
    fn datagram_header_checks_come_before_boringtun() {
        let now = Instant::now();
        let mut p = Peers::new(PrivateKey::generate());
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let cases: [(&[u8], DropReason); 5] = [
            (&[], DropReason::Malformed),
            (&[4, 0, 0], DropReason::Malformed),
            (&[4, 1, 0, 0, 0, 0, 0, 0], DropReason::Malformed),
            (&[9, 0, 0, 0, 0, 0, 0, 0], DropReason::Malformed),
            (&[4; 40], DropReason::Malformed),
        ];
        for (d, reason) in cases {
            assert_eq!(p.handle_datagram(from, d, now).unwrap_err().reason, reason);
        }
        let mut data = vec![0u8; 40];
        data[0] = 4;
        assert_eq!(
            p.handle_datagram(from, &data, now).unwrap_err().reason,
            DropReason::UnknownIndex
        );
        assert_eq!(
            p.handle_datagram(from, &vec![4; 70_000], now)
                .unwrap_err()
                .reason,
            DropReason::TooBig
        );
        assert_eq!(p.drops().total(), 7);
    }
}
