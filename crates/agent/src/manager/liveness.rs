//! A gateway's liveness: the probe setting ([`LivenessProbe`]) and the rule that turns a
//! gateway's timestamps into `up`, `connecting` or `stale` ([`gateway_state`]).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// An authenticated packet within this window means the gateway is up.
pub const RECEIVE_WINDOW: Duration = Duration::from_secs(60);
/// WireGuard's reject-after time: a handshake older than this no longer carries traffic.
pub const HANDSHAKE_LIFETIME: Duration = Duration::from_secs(180);

/// `liveness_probe`: how a gateway that has been silent is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LivenessProbe {
    /// ICMP echo to the gateway's virtual IP through the tunnel.
    #[default]
    Icmp,
    /// No probe; liveness follows handshakes only.
    Off,
}

/// A gateway's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    /// Authenticated traffic recently (or, with the probe off, a fresh handshake).
    Up,
    /// Not up yet, but not given up on: handshaking or waiting for a probe's answer.
    Connecting,
    /// Not up and no handshake for [`HANDSHAKE_LIFETIME`].
    Stale,
}

impl GatewayState {
    /// The lowercase name used in JSON, tables and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Connecting => "connecting",
            Self::Stale => "stale",
        }
    }
}

impl std::fmt::Display for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`gateway_state`] needs to know about one gateway; all times are monotonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// When the gateway was added (start-up or a config update).
    pub since: Instant,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// When the last authenticated packet (data or keepalive) arrived.
    pub last_received: Option<Instant>,
    /// The gateway's probe setting.
    pub probe: LivenessProbe,
}

/// The rule of docs/operations.md. **up**: an authenticated packet within
/// [`RECEIVE_WINDOW`], or, with the probe off, a handshake younger than [`HANDSHAKE_LIFETIME`]. **stale**: not up, and no
/// handshake for [`HANDSHAKE_LIFETIME`] (counted from `since` when there never was one).
/// **connecting**: otherwise.
pub fn gateway_state(l: &Liveness, now: Instant) -> GatewayState {
    let age = |t: Instant| now.saturating_duration_since(t);
    let received_recently = l.last_received.is_some_and(|t| age(t) <= RECEIVE_WINDOW);
    let handshake_fresh = l
        .last_handshake
        .is_some_and(|t| age(t) < HANDSHAKE_LIFETIME);
    if received_recently || (l.probe == LivenessProbe::Off && handshake_fresh) {
        return GatewayState::Up;
    }
    let quiet_for = age(l.last_handshake.unwrap_or(l.since));
    if quiet_for >= HANDSHAKE_LIFETIME {
        return GatewayState::Stale;
    }
    GatewayState::Connecting
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn state_rule() {
        let t0 = Instant::now();
        let mut l = Liveness {
            since: t0,
            last_handshake: None,
            last_received: None,
            probe: LivenessProbe::Icmp,
        };
        assert_eq!(gateway_state(&l, t0), GatewayState::Connecting);
        assert_eq!(gateway_state(&l, at(t0, 179)), GatewayState::Connecting);
        assert_eq!(
            gateway_state(&l, at(t0, 180)),
            GatewayState::Stale,
            "never handshaked for 180 s"
        );

        l.last_handshake = Some(at(t0, 10));
        l.last_received = Some(at(t0, 10));
        assert_eq!(gateway_state(&l, at(t0, 10)), GatewayState::Up);
        assert_eq!(
            gateway_state(&l, at(t0, 70)),
            GatewayState::Up,
            "60 s window inclusive"
        );
        assert_eq!(
            gateway_state(&l, at(t0, 71)),
            GatewayState::Connecting,
            "probe on: handshake alone is not enough"
        );
        assert_eq!(gateway_state(&l, at(t0, 189)), GatewayState::Connecting);
        assert_eq!(gateway_state(&l, at(t0, 190)), GatewayState::Stale);

        // Traffic keeps it up even when the handshake is old (a session being rekeyed).
        l.last_received = Some(at(t0, 200));
        assert_eq!(gateway_state(&l, at(t0, 230)), GatewayState::Up);

        // Probe off: a fresh handshake is enough.
        l.probe = LivenessProbe::Off;
        l.last_received = Some(at(t0, 10));
        assert_eq!(gateway_state(&l, at(t0, 100)), GatewayState::Up);
        assert_eq!(gateway_state(&l, at(t0, 189)), GatewayState::Up);
        assert_eq!(gateway_state(&l, at(t0, 190)), GatewayState::Stale);

        // A gateway re-added later gets its own 180 s before it is called stale.
        let l = Liveness {
            since: at(t0, 1000),
            last_handshake: None,
            last_received: None,
            probe: LivenessProbe::Icmp,
        };
        assert_eq!(gateway_state(&l, at(t0, 1100)), GatewayState::Connecting);
        assert_eq!(gateway_state(&l, at(t0, 1180)), GatewayState::Stale);

        // A clock that appears to run backwards never panics.
        assert_eq!(gateway_state(&l, t0), GatewayState::Connecting);
    }
}
