//! State changes reported once, for logs and metrics ([`Event`]).
//!
//! wg-core itself logs these at `debug` only: the caller, who knows each peer's name, logs the
//! events at `info` (one line per change, as operators expect).

use std::net::SocketAddr;
use std::time::Duration;

use crate::PublicKey;

/// A tunnel state change. Each is reported once, when it happens; poll with
/// [`Peers::poll_event`](crate::Peers::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A handshake completed and a new session is in use.
    HandshakeCompleted {
        /// The peer.
        peer: PublicKey,
        /// `true` when a session already existed (a routine rekey, every two minutes under
        /// traffic), `false` when the tunnel came up.
        rekey: bool,
    },
    /// Handshakes failed for 90 s; wg-core now retries with exponential backoff and jitter
    /// (5 s doubling to 60 s). Reported when the peer enters backoff, not on every retry.
    HandshakeFailing {
        /// The peer.
        peer: PublicKey,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// Our handshake initiations went unanswered: `tries` of them (at least
    /// [`UNANSWERED_TRIES`](crate::UNANSWERED_TRIES)) over `elapsed`. Reported once per
    /// episode (until a handshake completes), about 15 s into an attempt: long before
    /// [`Event::HandshakeFailing`].
    HandshakeUnanswered {
        /// The peer.
        peer: PublicKey,
        /// Initiations sent that no handshake followed.
        tries: u32,
        /// Time since the first of them.
        elapsed: Duration,
    },
    /// A handshake completed after an episode reported by [`Event::HandshakeUnanswered`].
    /// Comes just before the [`Event::HandshakeCompleted`] of the same handshake.
    HandshakeRecovered {
        /// The peer.
        peer: PublicKey,
        /// Initiations sent during the episode.
        tries: u32,
        /// Time from the first unanswered initiation to the completed handshake.
        elapsed: Duration,
    },
    /// No handshake completed for 180 s (WireGuard's reject-after time): the session is gone.
    SessionExpired {
        /// The peer.
        peer: PublicKey,
    },
    /// The peer's endpoint changed because an authenticated packet came from a new address.
    EndpointChanged {
        /// The peer.
        peer: PublicKey,
        /// The previous endpoint.
        old: Option<SocketAddr>,
        /// The new endpoint.
        new: SocketAddr,
    },
}
