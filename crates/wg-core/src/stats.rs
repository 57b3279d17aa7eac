//! Counters and snapshots: per-peer wire bytes, handshake state, drops by reason.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use boringtun::noise::errors::WireGuardError;

use crate::{IpNet, PublicKey};

/// Why a datagram or an IP packet was dropped. Every drop is counted under one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// A datagram longer than [`Config::max_datagram_size`](crate::Config), or an IP packet
    /// longer than the largest one that can be encapsulated.
    TooBig,
    /// Not a WireGuard message (bad type, reserved bytes or length), or not an IP packet.
    Malformed,
    /// A response, cookie reply or data message whose receiver index names no peer or session.
    UnknownIndex,
    /// A handshake initiation from a static key that is not a configured peer.
    UnknownPeer,
    /// Failed authentication: wrong MAC, AEAD tag, key or timestamp.
    BadAuth,
    /// A replayed or too old data message (counter check), or a handshake initiation not
    /// newer than the last one accepted from its peer (a replay).
    Replay,
    /// A handshake initiation refused under load (a cookie reply was sent instead).
    UnderLoad,
    /// A decrypted packet whose inner source address is not in the sending peer's allowed IPs.
    AllowedIpMismatch,
    /// An outbound IP packet whose destination matches no peer's allowed IPs.
    NoRoute,
    /// An outbound packet for a peer that has no endpoint yet.
    NoEndpoint,
    /// An internal bounded queue (transmits, received packets) was full.
    QueueFull,
    /// The peer's handshake has expired and boringtun refused the packet.
    Expired,
    /// Any other error reported by boringtun.
    Other,
}

impl DropReason {
    /// The reason for an error boringtun reported.
    pub(crate) fn of(e: &WireGuardError) -> DropReason {
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

    /// Every reason, in counter order.
    pub const ALL: [DropReason; 13] = [
        DropReason::TooBig,
        DropReason::Malformed,
        DropReason::UnknownIndex,
        DropReason::UnknownPeer,
        DropReason::BadAuth,
        DropReason::Replay,
        DropReason::UnderLoad,
        DropReason::AllowedIpMismatch,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::QueueFull,
        DropReason::Expired,
        DropReason::Other,
    ];

    /// A short snake_case label, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooBig => "too_big",
            DropReason::Malformed => "malformed",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadAuth => "bad_auth",
            DropReason::Replay => "replay",
            DropReason::UnderLoad => "under_load",
            DropReason::AllowedIpMismatch => "allowed_ip_mismatch",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drop counters, one per [`DropReason`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, zero counts included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    pub(crate) fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }
}

impl fmt::Debug for DropCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str(), n)),
            )
            .finish()
    }
}

/// Where a peer's tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HandshakeState {
    /// No handshake attempted yet (no endpoint, or nothing to send).
    Idle,
    /// A handshake is in progress (boringtun retries every 5 s).
    Connecting,
    /// A session exists: the last handshake is less than 180 s old.
    Established,
    /// boringtun gave up after 90 s; wg-core retries with exponential backoff and jitter.
    Backoff,
}

impl HandshakeState {
    /// A short snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeState::Idle => "idle",
            HandshakeState::Connecting => "connecting",
            HandshakeState::Established => "established",
            HandshakeState::Backoff => "backoff",
        }
    }
}

/// A snapshot of one peer, like a peer section of `wg show`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// The current endpoint (configured, or learned by roaming).
    pub endpoint: Option<SocketAddr>,
    /// The configured allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// The configured persistent keepalive.
    pub persistent_keepalive: Option<Duration>,
    /// UDP payload bytes received from the peer and authenticated (handshakes included).
    pub rx_bytes: u64,
    /// UDP payload bytes sent to the peer (handshakes, keepalives and data).
    pub tx_bytes: u64,
    /// Age of the last completed handshake (by the engine's `now`; the engine never reads the
    /// wall clock: see [`PeerStats::last_handshake`]).
    pub last_handshake_age: Option<Duration>,
    /// Time since anything authenticated (handshake, keepalive, data) arrived from the peer.
    pub last_received_age: Option<Duration>,
    /// Round-trip time of the last handshake this side initiated (boringtun's measure).
    pub handshake_rtt: Option<Duration>,
    /// Where the handshake stands.
    pub state: HandshakeState,
    /// Number of completed handshakes since the peer was added.
    pub handshakes: u64,
    /// Our handshake initiations since the last completed handshake (0 while handshakes
    /// succeed; it grows while the peer does not answer).
    pub unanswered_initiations: u32,
    /// The receiver index (24 bits) that routes this peer's messages to it.
    pub receiver_index: u32,
    /// Drops attributed to this peer.
    pub drops: DropCounts,
}

impl PeerStats {
    /// Wall-clock time of the last completed handshake, given the wall-clock time `wall_now`
    /// that corresponds to the `now` the snapshot was taken at (the caller reads the clock).
    pub fn last_handshake(&self, wall_now: SystemTime) -> Option<SystemTime> {
        self.last_handshake_age
            .and_then(|age| wall_now.checked_sub(age))
    }

    /// The last handshake as seconds since the Unix epoch (the value `wg show dump` prints),
    /// given the wall-clock time of the snapshot as for [`PeerStats::last_handshake`].
    pub fn last_handshake_unix(&self, wall_now: SystemTime) -> Option<u64> {
        self.last_handshake(wall_now)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    }
}

/// A snapshot of the whole engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Every peer, ordered by public key.
    pub peers: Vec<PeerStats>,
    /// All drops, including those not attributable to a peer.
    pub drops: DropCounts,
    /// Events discarded because the event queue was full.
    pub events_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boringtun_errors_map_to_reasons() {
        assert_eq!(
            DropReason::of(&WireGuardError::InvalidAeadTag),
            DropReason::BadAuth
        );
        assert_eq!(
            DropReason::of(&WireGuardError::DuplicateCounter),
            DropReason::Replay
        );
        assert_eq!(
            DropReason::of(&WireGuardError::NoCurrentSession),
            DropReason::UnknownIndex
        );
        assert_eq!(
            DropReason::of(&WireGuardError::InvalidPacket),
            DropReason::Malformed
        );
        assert_eq!(
            DropReason::of(&WireGuardError::UnderLoad),
            DropReason::UnderLoad
        );
        assert_eq!(
            DropReason::of(&WireGuardError::ConnectionExpired),
            DropReason::Expired
        );
        assert_eq!(
            DropReason::of(&WireGuardError::LockFailed),
            DropReason::Other
        );
    }
}
