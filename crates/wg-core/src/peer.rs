//! One peer: its configuration ([`PeerConfig`]), its boringtun tunnel and wg-core's own timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use crate::initiation::Timestamp;
use crate::lifecycle::{Lifecycle, REKEY_ATTEMPT, Unanswered};
use crate::stats::{DropCounts, HandshakeState};
use crate::{IpNet, PresharedKey, PublicKey};

/// The configuration of one peer (a gateway). Two configs with equal fields are the same peer
/// in the same state: [`Peers::set_peers`](crate::Peers::set_peers) leaves such a peer alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Where to send; `None` waits for the peer to initiate (its source becomes the endpoint).
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses routed to this peer, and accepted as sources from it.
    pub allowed_ips: Vec<IpNet>,
    /// Send a keepalive when nothing crossed the tunnel for this long (WireGuard's
    /// `PersistentKeepalive`; 25 s is usual; zero means off). Scheduled by wg-core, changeable
    /// on a live session.
    pub persistent_keepalive: Option<Duration>,
    /// Optional preshared key mixed into the handshake.
    pub preshared_key: Option<PresharedKey>,
}

impl PeerConfig {
    /// A peer with only a public key: no endpoint, no allowed IPs, no keepalive, no PSK.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    /// Sets the endpoint.
    pub fn with_endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Adds an allowed-IP prefix.
    pub fn with_allowed_ip(mut self, net: IpNet) -> Self {
        self.allowed_ips.push(net);
        self
    }

    /// Sets the persistent keepalive interval.
    pub fn with_keepalive(mut self, interval: Duration) -> Self {
        self.persistent_keepalive = Some(interval);
        self
    }

    /// Sets the preshared key.
    pub fn with_preshared_key(mut self, key: PresharedKey) -> Self {
        self.preshared_key = Some(key);
        self
    }
}

/// Everything the engine keeps about one peer.
pub(crate) struct Peer {
    pub(crate) config: PeerConfig,
    pub(crate) tunn: Tunn,
    /// 24-bit receiver index; boringtun puts it in the upper bits of every session index.
    pub(crate) index: u32,
    pub(crate) endpoint: Option<SocketAddr>,
    /// Where the handshake stands; changed only through its transitions (`lifecycle.rs`).
    pub(crate) lifecycle: Lifecycle,
    /// Our initiations since the last completed handshake (`lifecycle.rs`).
    pub(crate) unanswered: Unanswered,
    /// When the last handshake completed, for stats (kept after the session is gone).
    pub(crate) last_handshake: Option<Instant>,
    /// The newest initiation timestamp accepted from this peer: the replay guard. It lives
    /// here, not in the tunnel, so re-creating the tunnel does not forget it (see
    /// `initiation.rs`); it goes only with the peer.
    pub(crate) newest_initiation: Option<Timestamp>,
    pub(crate) last_received: Option<Instant>,
    /// Last authenticated packet sent (or a keepalive put off until then): the persistent
    /// keepalive counts from the later of this and `last_received` (see
    /// [`Peer::last_traversal`]), so receiving stores one time, not two.
    pub(crate) last_traversal: Option<Instant>,
    pub(crate) last_data_sent: Option<Instant>,
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) handshakes: u64,
    pub(crate) drops: DropCounts,
    pub(crate) added_at: Instant,
    /// Configuration order, for prefixes claimed by two peers (the later one wins).
    pub(crate) seq: u64,
}

impl Peer {
    pub(crate) fn new(
        config: PeerConfig,
        secret: &x25519::StaticSecret,
        index: u32,
        limiter: &Arc<RateLimiter>,
        now: Instant,
    ) -> Self {
        let tunn = new_tunn(&config, secret, index, limiter);
        Self {
            endpoint: config.endpoint,
            config,
            tunn,
            index,
            lifecycle: Lifecycle::Idle,
            unanswered: Unanswered::default(),
            last_handshake: None,
            newest_initiation: None,
            last_received: None,
            last_traversal: None,
            last_data_sent: None,
            rx_bytes: 0,
            tx_bytes: 0,
            handshakes: 0,
            drops: DropCounts::default(),
            added_at: now,
            seq: 0,
        }
    }

    /// Replaces the tunnel (new keys, new PSK, or a fresh start after boringtun gave up).
    pub(crate) fn recreate_tunn(
        &mut self,
        secret: &x25519::StaticSecret,
        index: u32,
        limiter: &Arc<RateLimiter>,
    ) {
        self.tunn = new_tunn(&self.config, secret, index, limiter);
        self.index = index;
    }

    /// When the persistent keepalive is due, if one is configured and useful now.
    pub(crate) fn keepalive_deadline(&self) -> Option<Instant> {
        // Zero means off, as in `wg`.
        let interval = self.config.persistent_keepalive.filter(|d| !d.is_zero())?;
        self.endpoint?;
        match self.lifecycle.state() {
            HandshakeState::Established | HandshakeState::Idle => self
                .last_traversal()
                .unwrap_or(self.added_at)
                .checked_add(interval),
            HandshakeState::Connecting | HandshakeState::Backoff => None,
        }
    }

    /// The last authenticated packet sent or received (or a keepalive put off until then).
    pub(crate) fn last_traversal(&self) -> Option<Instant> {
        self.last_traversal.max(self.last_received)
    }

    /// Whether the peer wants a session even without traffic (keepalive, or recent data).
    pub(crate) fn wants_session(&self, now: Instant) -> bool {
        self.config
            .persistent_keepalive
            .is_some_and(|d| !d.is_zero())
            || self
                .last_data_sent
                .is_some_and(|t| now.saturating_duration_since(t) < REKEY_ATTEMPT)
    }

    /// Whether boringtun's `update_timers` should run for this peer on the coarse tick.
    ///
    /// boringtun only learns the time in `update_timers`, and stamps sessions and handshakes
    /// with the last time it learned: a tunnel left unticked would age a new session at birth
    /// (and drop it at the next tick). So every live tunnel is ticked, idle or not. Not ticked:
    /// peers in backoff (boringtun would resend every 5 s; their tunnel is re-created at each
    /// retry and refreshed before a handshake message) and expired idle tunnels (nothing to
    /// time; boringtun resets its clock when it starts a handshake, and wg-core re-creates the
    /// tunnel before answering one).
    pub(crate) fn needs_tick(&self) -> bool {
        match self.lifecycle.state() {
            HandshakeState::Backoff => false,
            HandshakeState::Idle => !self.tunn.is_expired(),
            HandshakeState::Connecting | HandshakeState::Established => true,
        }
    }

    /// A new address may work where the old one failed: in backoff, retry at the next timeout
    /// (`added_at` is in the past).
    pub(crate) fn retry_soon(&mut self) {
        self.lifecycle.retry_soon(self.added_at);
    }
}

fn new_tunn(
    config: &PeerConfig,
    secret: &x25519::StaticSecret,
    index: u32,
    limiter: &Arc<RateLimiter>,
) -> Tunn {
    Tunn::new(
        secret.clone(),
        config.public_key.to_x25519(),
        config.preshared_key.as_ref().map(PresharedKey::to_bytes),
        // Persistent keepalive is scheduled by wg-core, so it can change on a live session.
        None,
        index,
        Some(Arc::clone(limiter)),
    )
}
