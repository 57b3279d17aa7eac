//! The engine: [`Peers`], a sans-IO WireGuard device for several peers over boringtun.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::buffers::{Ring, RxMeta, TxMeta};
use crate::ipnet::RouteTable;
use crate::peer::{Peer, REJECT_AFTER, REKEY_AFTER, REKEY_ATTEMPT, backoff_delay};
use crate::stats::{DropCounts, DropReason, HandshakeState, PeerStats, Stats};
use crate::{Event, PeerConfig, PrivateKey, PublicKey};

/// boringtun's timers are ticked this often while a handshake is in progress.
const TICK_FAST: Duration = Duration::from_millis(250);
/// ... and this often otherwise (its timers have one-second resolution).
const TICK_SLOW: Duration = Duration::from_secs(1);
/// The shared rate limiter's counting window.
const LIMITER_RESET: Duration = Duration::from_secs(1);

const HANDSHAKE_INIT: u8 = 1;
const HANDSHAKE_RESP: u8 = 2;
const COOKIE_REPLY: u8 = 3;
const DATA: u8 = 4;
const HANDSHAKE_INIT_LEN: usize = 148;
const HANDSHAKE_RESP_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;
/// Data message header (16) plus AEAD tag (16).
const DATA_OVERHEAD: usize = 32;

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

/// Receiver indices are random: hashing them again is wasted work.
#[derive(Default)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

type IndexMap = HashMap<u32, usize, BuildHasherDefault<IndexHasher>>;

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
    by_index: IndexMap,
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
    /// An engine with no peers and the default [`Config`].
    pub fn new(private_key: PrivateKey, now: Instant) -> Self {
        Self::with_config(private_key, Config::default(), now)
    }

    /// An engine with no peers.
    pub fn with_config(private_key: PrivateKey, config: Config, now: Instant) -> Self {
        let _ = now;
        let secret = private_key.to_static_secret();
        let public = x25519::PublicKey::from(&secret);
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            limiter: new_limiter(&public, &config),
            tx: Ring::new(config.max_transmits),
            rx: Ring::new(config.max_received),
            events: VecDeque::new(),
            scratch: [0; 256],
            config,
            private_key,
            secret,
            public,
            slots: Vec::new(),
            by_key: BTreeMap::new(),
            by_index: IndexMap::default(),
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
            self.reset_tunnel(slot);
            if let Some(peer) = self.slots[slot].as_mut() {
                peer.state = HandshakeState::Idle;
                peer.last_handshake = None;
                peer.connecting_since = None;
                peer.next_retry = None;
            }
            self.start_handshake(slot, false, now);
        }
        self.schedule_tick(now);
        tracing::info!(public_key = %self.public_key(), "private key replaced; tunnels re-keyed");
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
            .is_some_and(|p| p.state == HandshakeState::Backoff)
        {
            // A fresh tunnel, as for a backoff retry: boringtun's clock restarts now.
            self.reset_tunnel(slot);
            if let Some(peer) = self.slots[slot].as_mut() {
                peer.state = HandshakeState::Idle;
                peer.next_retry = None;
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
        let from = crate::canonical(from);
        let len = datagram.len();
        if len > self.config.max_datagram_size {
            return Err(self.drop_global(DropReason::TooBig));
        }
        if len < 4 || datagram[1..4] != [0, 0, 0] {
            return Err(self.drop_global(DropReason::Malformed));
        }
        let receiver = match (datagram[0], len) {
            (HANDSHAKE_INIT, HANDSHAKE_INIT_LEN) => {
                return self.handle_initiation(from, datagram, now);
            }
            (HANDSHAKE_RESP, HANDSHAKE_RESP_LEN) => {
                // Responses count against the shared limiter too: reset it a second later.
                self.schedule_limiter_reset(now);
                le_u32(&datagram[8..12])
            }
            (COOKIE_REPLY, COOKIE_REPLY_LEN) => le_u32(&datagram[4..8]),
            (DATA, DATA_OVERHEAD..) => le_u32(&datagram[4..8]),
            _ => return Err(self.drop_global(DropReason::Malformed)),
        };
        let Some(&slot) = self.by_index.get(&(receiver >> 8)) else {
            tracing::trace!(%from, len, "datagram for an unknown receiver index");
            return Err(self.drop_global(DropReason::UnknownIndex));
        };
        self.decapsulate(slot, from, datagram, now)
    }

    /// An IP packet from the network stack: routed by destination (longest prefix) and sent to
    /// that peer, or queued inside boringtun (up to 256) while its handshake runs.
    pub fn handle_ip_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), PacketError> {
        if packet.len() > self.config.max_packet_size {
            return Err(self.drop_global(DropReason::TooBig));
        }
        let Some(dst) = Tunn::dst_address(packet) else {
            return Err(self.drop_global(DropReason::Malformed));
        };
        let Some(slot) = self.routes.lookup(dst) else {
            tracing::trace!(%dst, "no route");
            return Err(self.drop_global(DropReason::NoRoute));
        };
        let Some(peer) = self.slots[slot].as_mut() else {
            return Err(self.drop_global(DropReason::NoRoute));
        };
        let Some(endpoint) = peer.endpoint else {
            peer.drops.add(DropReason::NoEndpoint);
            return Err(self.drop_global(DropReason::NoEndpoint));
        };
        if self.tx.is_full() {
            peer.drops.add(DropReason::QueueFull);
            return Err(self.drop_global(DropReason::QueueFull));
        }
        peer.last_data_sent = Some(now);
        let need = (packet.len() + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN);
        // Without a session boringtun queues the packet and writes an initiation instead.
        match self.emit(slot, need, Some(endpoint), now, |t, b| {
            t.encapsulate(packet, b)
        }) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.drop_peer(slot, reason_of(&e))),
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
            next = min_opt(next, peer.next_retry);
            if peer.state == HandshakeState::Connecting
                && let Some(since) = peer.connecting_since
            {
                next = min_opt(next, Some(since + REKEY_ATTEMPT));
            }
            if peer.state == HandshakeState::Established {
                next = min_opt(next, peer.last_handshake.map(|t| t + REJECT_AFTER));
            }
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

    // ----- internals: inbound ----------------------------------------------------------------

    fn handle_initiation(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        self.schedule_limiter_reset(now);
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let key = match self
            .limiter
            .verify_packet(Some(from.ip()), datagram, &mut cookie)
        {
            Ok(Packet::HandshakeInit(init)) => {
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => PublicKey::from_bytes(half.peer_static_public),
                    Err(_) => return Err(self.drop_global(DropReason::BadAuth)),
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
            Err(TunnResult::Err(e)) => return Err(self.drop_global(reason_of(&e))),
            Err(_) => return Err(self.drop_global(DropReason::Other)),
        };
        let Some(&slot) = self.by_key.get(&key) else {
            tracing::debug!(%from, peer = %key, "handshake initiation from an unknown peer");
            return Err(self.drop_global(DropReason::UnknownPeer));
        };
        self.decapsulate(slot, from, datagram, now)
    }

    /// Runs boringtun on a datagram already routed to `slot`.
    fn decapsulate(
        &mut self,
        slot: usize,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        let kind = datagram[0];
        let wire = datagram.len();
        let Some(peer) = self.slots[slot].as_mut() else {
            return Err(self.drop_global(DropReason::UnknownIndex));
        };
        if kind != DATA {
            return self.decapsulate_handshake(slot, from, datagram, now);
        }
        // Data decrypts straight into the received queue's free slot. boringtun panics when
        // `dst` is shorter than the datagram: the slot is at least as long.
        let Some(buf) = self.rx.free_slot(wire) else {
            peer.drops.add(DropReason::QueueFull);
            return Err(self.drop_global(DropReason::QueueFull));
        };
        let (src, len) = match peer.tunn.decapsulate(Some(from.ip()), datagram, buf) {
            TunnResult::WriteToTunnelV4(p, src) => (IpAddr::V4(src), p.len()),
            TunnResult::WriteToTunnelV6(p, src) => (IpAddr::V6(src), p.len()),
            TunnResult::Done => {
                // An authenticated keepalive.
                self.authenticated(slot, from, wire, now);
                return Ok(());
            }
            TunnResult::WriteToNetwork(_) => return Err(self.drop_peer(slot, DropReason::Other)),
            TunnResult::Err(e) => {
                tracing::trace!(%from, error = ?e, "data message refused");
                return Err(self.drop_peer(slot, reason_of(&e)));
            }
        };
        // Authenticated: count it, and follow the peer if it moved (roaming).
        let key = peer.config.public_key;
        peer.rx_bytes += wire as u64;
        peer.last_received = Some(now);
        peer.last_traversal = Some(now);
        if peer.endpoint != Some(from) {
            self.roam(slot, from);
        }
        if self.routes.lookup(src) != Some(slot) {
            tracing::trace!(%src, "source address not in the peer's allowed IPs");
            return Err(self.drop_peer(slot, DropReason::AllowedIpMismatch));
        }
        self.rx.commit(RxMeta { peer: key, len });
        Ok(())
    }

    /// Brings an unticked tunnel's clock up to date before it handles a handshake message, so
    /// the session it creates is not born old; an expired one is re-created before answering
    /// an initiation (boringtun would keep it marked expired).
    fn refresh_tunnel(&mut self, slot: usize, kind: u8, now: Instant) {
        let Some(peer) = self.slots[slot].as_ref() else {
            return;
        };
        if peer.needs_tick() {
            return;
        }
        if peer.state == HandshakeState::Backoff {
            let endpoint = peer.endpoint;
            let _ = self.emit(slot, HANDSHAKE_INIT_LEN, endpoint, now, |t, b| {
                t.update_timers(b)
            });
        }
        let expired = self.slots[slot]
            .as_ref()
            .is_some_and(|p| p.tunn.is_expired());
        if kind == HANDSHAKE_INIT && expired {
            self.reset_tunnel(slot);
        }
    }

    /// Handshake initiation, response or cookie reply, already routed to `slot`.
    fn decapsulate_handshake(
        &mut self,
        slot: usize,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        let kind = datagram[0];
        self.refresh_tunnel(slot, kind, now);
        let Some(peer) = self.slots[slot].as_mut() else {
            return Err(self.drop_global(DropReason::UnknownIndex));
        };
        match peer
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.scratch)
        {
            TunnResult::Done => {
                if kind == COOKIE_REPLY {
                    self.on_cookie(slot, now);
                }
                Ok(())
            }
            TunnResult::WriteToNetwork(out) => {
                let len = out.len();
                let out_kind = out[0];
                let meta = TxMeta {
                    destination: from,
                    len,
                };
                if out_kind == COOKIE_REPLY {
                    // Under load: the message was not processed, a cookie goes back instead.
                    if !self.tx.push_copy(&self.scratch[..len], meta) {
                        self.drops.add(DropReason::QueueFull);
                    }
                    return Err(self.drop_peer(slot, DropReason::UnderLoad));
                }
                self.authenticated(slot, from, datagram.len(), now);
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
                tracing::trace!(%from, kind, error = ?e, "handshake message refused");
                Err(self.drop_peer(slot, reason_of(&e)))
            }
        }
    }

    /// Sends what boringtun queued while the handshake ran.
    fn flush_queued(&mut self, slot: usize, now: Instant) {
        let need = (self.config.max_packet_size + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN);
        loop {
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
    fn emit<F>(
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
                let kind = out[0];
                let Some(destination) = destination else {
                    peer.drops.add(DropReason::NoEndpoint);
                    self.drops.add(DropReason::NoEndpoint);
                    return Ok(None);
                };
                self.tx.commit(TxMeta { destination, len });
                peer.tx_bytes += len as u64;
                peer.last_traversal = Some(now);
                if kind == HANDSHAKE_INIT && peer.state == HandshakeState::Idle {
                    peer.state = HandshakeState::Connecting;
                    peer.connecting_since = Some(now);
                    self.ensure_fast_tick(now);
                }
                Ok(Some(kind))
            }
            TunnResult::Err(e) => Err(e),
            _ => Ok(None),
        }
    }

    /// An authenticated message arrived: count it, and follow the peer if it moved (roaming).
    fn authenticated(&mut self, slot: usize, from: SocketAddr, wire_len: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        peer.rx_bytes += wire_len as u64;
        peer.last_received = Some(now);
        peer.last_traversal = Some(now);
        if peer.endpoint != Some(from) {
            self.roam(slot, from);
        }
    }

    /// The peer's authenticated packet came from a new address: follow it.
    #[cold]
    fn roam(&mut self, slot: usize, from: SocketAddr) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let old = peer.endpoint.replace(from);
        let event = Event::EndpointChanged {
            peer: peer.config.public_key,
            old,
            new: from,
        };
        tracing::info!(peer = %peer.config.public_key, ?old, new = %from, "peer endpoint changed");
        self.push_event(event);
    }

    fn handshake_completed(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let rekey = peer.session_age(now).is_some() && peer.state == HandshakeState::Established;
        peer.last_handshake = Some(now);
        peer.handshakes += 1;
        peer.state = HandshakeState::Established;
        peer.connecting_since = None;
        peer.next_retry = None;
        peer.backoff_attempt = 0;
        let key = peer.config.public_key;
        if rekey {
            tracing::debug!(peer = %key, "session renewed");
        } else {
            tracing::info!(peer = %key, "handshake completed, tunnel up");
        }
        self.push_event(Event::HandshakeCompleted { peer: key, rekey });
        self.schedule_tick(now);
    }

    /// A cookie reply arrived (the peer is under load). In backoff boringtun is not ticked, so
    /// resend the initiation now: it carries the cookie.
    fn on_cookie(&mut self, slot: usize, now: Instant) {
        let in_backoff = self.slots[slot]
            .as_ref()
            .is_some_and(|p| p.state == HandshakeState::Backoff);
        if in_backoff {
            self.send_initiation(slot, true, now);
        }
    }

    // ----- internals: timers -----------------------------------------------------------------

    fn tick_boringtun(&mut self, now: Instant) {
        let need = (self.config.max_packet_size + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN);
        for slot in 0..self.slots.len() {
            let Some(peer) = self.slots[slot].as_ref() else {
                continue;
            };
            if !peer.needs_tick() {
                continue;
            }
            let endpoint = peer.endpoint;
            match self.emit(slot, need, endpoint, now, |t, b| t.update_timers(b)) {
                Err(WireGuardError::ConnectionExpired) => self.handshake_expired(slot, now),
                Err(e) => tracing::debug!(error = ?e, "boringtun timer error"),
                Ok(_) => {}
            }
            // Packets boringtun still holds (the transmit queue was full at the handshake).
            self.flush_queued(slot, now);
        }
    }

    fn run_peer_timers(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let key = peer.config.public_key;
        // Our own 90 s limit on a handshake attempt (boringtun's runs on its own clock).
        if peer
            .connecting_since
            .is_some_and(|since| now >= since + REKEY_ATTEMPT)
            && peer.state == HandshakeState::Connecting
        {
            self.handshake_expired(slot, now);
        }
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.state == HandshakeState::Established
            && peer.last_handshake.is_some_and(|t| now >= t + REJECT_AFTER)
        {
            peer.state = HandshakeState::Idle;
            peer.connecting_since = None;
            tracing::info!(peer = %key, "session expired: no handshake for 180 s");
            self.push_event(Event::SessionExpired { peer: key });
            // boringtun drops the session on its own clock; drop it here too so both agree
            // (its clock also counts suspended time, ours does not).
            self.reset_tunnel(slot);
        }
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.next_retry.is_some_and(|t| now >= t) {
            self.backoff_retry(slot, now);
        }
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.keepalive_deadline().is_some_and(|t| now >= t) {
            self.send_keepalive(slot, now);
        }
    }

    fn send_keepalive(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        match peer.state {
            HandshakeState::Established => {
                // boringtun renews sessions only on data; keepalive-only tunnels renew here,
                // as the kernel does on any send.
                if peer.session_age(now).is_none_or(|age| age >= REKEY_AFTER) {
                    self.send_initiation(slot, false, now);
                }
                self.encapsulate_keepalive(slot, now);
            }
            HandshakeState::Idle => {
                self.start_handshake(slot, false, now);
                if let Some(peer) = self.slots[slot].as_mut()
                    && peer.state == HandshakeState::Idle
                {
                    // Nothing went out (full queue): try again one interval later.
                    peer.last_traversal = Some(now);
                }
            }
            HandshakeState::Connecting | HandshakeState::Backoff => {}
        }
    }

    fn encapsulate_keepalive(&mut self, slot: usize, now: Instant) {
        let Some(endpoint) = self.slots[slot].as_ref().and_then(|p| p.endpoint) else {
            return;
        };
        let sent = self.emit(slot, HANDSHAKE_INIT_LEN, Some(endpoint), now, |t, b| {
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
    fn handshake_expired(&mut self, slot: usize, now: Instant) {
        let unit: f64 = self.rng.random();
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if matches!(peer.state, HandshakeState::Backoff | HandshakeState::Idle) {
            // Already handled: boringtun repeats `ConnectionExpired` on every tick.
            return;
        }
        let key = peer.config.public_key;
        peer.connecting_since = None;
        if peer.endpoint.is_some() && peer.wants_session(now) {
            let delay = backoff_delay(0, unit);
            peer.state = HandshakeState::Backoff;
            peer.backoff_attempt = 0;
            peer.next_retry = Some(now + delay);
            tracing::info!(peer = %key, retry_in_ms = delay.as_millis() as u64,
                "handshake not answered for 90 s; retrying with backoff");
            self.push_event(Event::HandshakeFailing {
                peer: key,
                retry_in: delay,
            });
        } else {
            peer.state = HandshakeState::Idle;
            tracing::debug!(peer = %key, "handshake abandoned; idle until there is traffic");
        }
    }

    fn backoff_retry(&mut self, slot: usize, now: Instant) {
        let unit: f64 = self.rng.random();
        // A fresh tunnel: boringtun's own clock and retry state start again, so the session
        // this attempt creates is not aged by the time spent in backoff.
        self.reset_tunnel(slot);
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        peer.backoff_attempt = peer.backoff_attempt.saturating_add(1);
        peer.next_retry = Some(now + backoff_delay(peer.backoff_attempt, unit));
        tracing::debug!(peer = %peer.config.public_key, attempt = peer.backoff_attempt, "handshake retry");
        self.send_initiation(slot, true, now);
    }

    /// Starts a handshake with a peer that has an endpoint (state becomes `Connecting` unless
    /// a session exists or the peer is in backoff).
    fn start_handshake(&mut self, slot: usize, force: bool, now: Instant) {
        self.send_initiation(slot, force, now);
    }

    fn send_initiation(&mut self, slot: usize, force: bool, now: Instant) {
        let Some(endpoint) = self.slots[slot].as_ref().and_then(|p| p.endpoint) else {
            return;
        };
        let _ = self.emit(slot, HANDSHAKE_INIT_LEN, Some(endpoint), now, |t, b| {
            t.format_handshake_initiation(b, force)
        });
    }

    /// Bookkeeping after a datagram for `slot` was queued outside [`Peers::emit`].
    fn after_send(&mut self, slot: usize, len: usize, now: Instant) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        peer.tx_bytes += len as u64;
        peer.last_traversal = Some(now);
    }

    fn schedule_tick(&mut self, now: Instant) {
        let mut any = false;
        let mut connecting = false;
        for peer in self.slots.iter().flatten() {
            if peer.needs_tick() {
                any = true;
                connecting |= peer.state == HandshakeState::Connecting;
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

    fn schedule_limiter_reset(&mut self, now: Instant) {
        if self.next_limiter_reset.is_none() {
            self.next_limiter_reset = Some(now + LIMITER_RESET);
        }
    }

    fn ensure_fast_tick(&mut self, now: Instant) {
        let at = now + TICK_FAST;
        self.next_tick = Some(self.next_tick.map_or(at, |t| t.min(at)));
    }

    // ----- internals: table ------------------------------------------------------------------

    fn upsert_inner(&mut self, mut config: PeerConfig, now: Instant) -> PeerChange {
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
                peer.last_traversal = Some(peer.last_traversal.map_or(now, |t| t.max(now)));
            }
            let start = peer.state == HandshakeState::Idle
                && peer.config.endpoint.is_none()
                && config.endpoint.is_some();
            peer.config = config;
            peer.seq = seq;
            if psk_changed {
                self.reset_tunnel(slot);
                if let Some(peer) = self.slots[slot].as_mut() {
                    peer.state = HandshakeState::Idle;
                    peer.last_handshake = None;
                    peer.connecting_since = None;
                    peer.next_retry = None;
                }
                self.start_handshake(slot, false, now);
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

    /// Re-creates a peer's tunnel under a new receiver index (sessions are dropped).
    fn reset_tunnel(&mut self, slot: usize) {
        let index = self.new_index();
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        self.by_index.remove(&peer.index);
        peer.recreate_tunn(&self.secret, index, &self.limiter);
        self.by_index.insert(index, slot);
    }

    fn new_index(&mut self) -> u32 {
        loop {
            let index = self.rng.random::<u32>() & 0x00ff_ffff;
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    /// Rebuilds the routing table; a prefix claimed by two peers goes to the one configured
    /// last (as with `wg set`).
    fn rebuild_routes(&mut self) {
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

    fn peer(&self, key: &PublicKey) -> Option<&Peer> {
        self.by_key
            .get(key)
            .and_then(|&slot| self.slots[slot].as_ref())
    }

    fn peer_mut(&mut self, key: &PublicKey) -> Option<&mut Peer> {
        let slot = *self.by_key.get(key)?;
        self.slots[slot].as_mut()
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
        last_handshake: age.and_then(|a| SystemTime::now().checked_sub(a)),
        last_handshake_age: age,
        last_received_age: peer.last_received.map(|t| now.saturating_duration_since(t)),
        handshake_rtt: peer
            .tunn
            .stats()
            .4
            .map(|ms| Duration::from_millis(u64::from(ms))),
        state: peer.state,
        handshakes: peer.handshakes,
        receiver_index: peer.index,
        drops: peer.drops,
    }
}

fn reason_of(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::InvalidMac
        | WireGuardError::InvalidAeadTag
        | WireGuardError::WrongKey
        | WireGuardError::InvalidTai64nTimestamp
        | WireGuardError::WrongTai64nTimestamp => DropReason::BadAuth,
        WireGuardError::InvalidCounter | WireGuardError::DuplicateCounter => DropReason::Replay,
        WireGuardError::WrongIndex
        | WireGuardError::NoCurrentSession
        | WireGuardError::UnexpectedPacket => DropReason::UnknownIndex,
        WireGuardError::IncorrectPacketLength
        | WireGuardError::WrongPacketType
        | WireGuardError::InvalidPacket => DropReason::Malformed,
        WireGuardError::UnderLoad => DropReason::UnderLoad,
        WireGuardError::ConnectionExpired => DropReason::Expired,
        _ => DropReason::Other,
    }
}

#[inline]
fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
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
    fn boringtun_errors_map_to_reasons() {
        assert_eq!(
            reason_of(&WireGuardError::InvalidAeadTag),
            DropReason::BadAuth
        );
        assert_eq!(
            reason_of(&WireGuardError::DuplicateCounter),
            DropReason::Replay
        );
        assert_eq!(
            reason_of(&WireGuardError::NoCurrentSession),
            DropReason::UnknownIndex
        );
        assert_eq!(
            reason_of(&WireGuardError::InvalidPacket),
            DropReason::Malformed
        );
        assert_eq!(reason_of(&WireGuardError::UnderLoad), DropReason::UnderLoad);
        assert_eq!(
            reason_of(&WireGuardError::ConnectionExpired),
            DropReason::Expired
        );
        assert_eq!(reason_of(&WireGuardError::LockFailed), DropReason::Other);
    }

    #[test]
    fn datagram_header_checks_come_before_boringtun() {
        let now = Instant::now();
        let mut p = Peers::new(PrivateKey::generate(), now);
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
