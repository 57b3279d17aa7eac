//! Model-based test of a peer's lifecycle: random sequences of events (time passing, the
//! gateway going down and up or moving, traffic, forced handshakes, preshared-key changes)
//! drive an agent and a gateway on the simulated network; after every step of the engine the
//! agent's reported state, handshake age and events are checked against a small reference
//! model of the lifecycle (`Model`), which the engine's outputs may only ever agree with.
//!
//! The model is deterministic except for the retry jitter: it keeps the window each backoff
//! retry must fall in, and takes the time from the initiation the engine sent.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Net, agent_and_gateway};
use proptest::prelude::*;
use wg_core::{Event, HandshakeState, PeerChange, PresharedKey};

const AGENT: usize = 0;
const GW: usize = 1;
/// The agent's persistent keepalive: with it a session is always wanted.
const KEEPALIVE: Duration = Duration::from_secs(25);
const REKEY_ATTEMPT: Duration = Duration::from_secs(90);
const REJECT_AFTER: Duration = Duration::from_secs(180);
/// A gateway up this long is always reached (worst case: a stale session expires at 180 s,
/// the keepalive starts a handshake within 25 s, and the network answers).
const LIVENESS: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
enum Action {
    Advance(u64),
    GatewayDown,
    GatewayUp,
    GatewayMoves,
    SendData,
    ForceHandshake,
    ChangePsk,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1u64..240).prop_map(Action::Advance),
        2 => Just(Action::GatewayDown),
        2 => Just(Action::GatewayUp),
        1 => Just(Action::GatewayMoves),
        2 => Just(Action::SendData),
        1 => Just(Action::ForceHandshake),
        1 => Just(Action::ChangePsk),
    ]
}

/// The reference lifecycle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Idle {
        since: Instant,
    },
    Connecting {
        since: Instant,
    },
    Established {
        at: Instant,
    },
    /// The next retry falls in `[earliest, latest]`.
    Backoff {
        attempt: u32,
        earliest: Instant,
        latest: Instant,
    },
}

impl Phase {
    fn state(self) -> HandshakeState {
        match self {
            Phase::Idle { .. } => HandshakeState::Idle,
            Phase::Connecting { .. } => HandshakeState::Connecting,
            Phase::Established { .. } => HandshakeState::Established,
            Phase::Backoff { .. } => HandshakeState::Backoff,
        }
    }
}

/// The retry delay before jitter (5 s doubling to 60 s).
fn backoff_base(attempt: u32) -> Duration {
    Duration::from_secs(5 << attempt.min(4)).min(Duration::from_secs(60))
}

struct Model {
    phase: Phase,
    /// Since when the gateway has been up (reachable at its current address, with the
    /// current keys).
    up_since: Option<Instant>,
}

impl Model {
    /// Applies what the engine reported at `now`: its events, then whether it sent an
    /// initiation (in backoff, one outside the retry window is allowed only when `traffic`
    /// caused it).
    fn observe(&mut self, now: Instant, events: &[Event], initiation: bool, traffic: bool) {
        for e in events {
            match *e {
                Event::HandshakeCompleted { rekey, .. } => {
                    let live = matches!(self.phase,
                        Phase::Established { at } if now - at < REJECT_AFTER);
                    assert_eq!(rekey, live, "rekey flag from {:?}", self.phase);
                    self.phase = Phase::Established { at: now };
                }
                Event::HandshakeFailing { retry_in, .. } => {
                    let Phase::Connecting { since } = self.phase else {
                        panic!("gave up from {:?}", self.phase);
                    };
                    assert_eq!(now - since, REKEY_ATTEMPT, "gave up after 90 s");
                    let base = backoff_base(0);
                    assert!(retry_in <= base && retry_in >= base.mul_f64(0.75));
                    self.phase = Phase::Backoff {
                        attempt: 0,
                        earliest: now + retry_in,
                        latest: now + retry_in,
                    };
                }
                Event::SessionExpired { .. } => {
                    let Phase::Established { at } = self.phase else {
                        panic!("expired from {:?}", self.phase);
                    };
                    assert_eq!(now - at, REJECT_AFTER, "expired at 180 s");
                    self.phase = Phase::Idle { since: now };
                }
                _ => {}
            }
        }
        if !initiation {
            return;
        }
        match self.phase {
            Phase::Idle { .. } => self.phase = Phase::Connecting { since: now },
            Phase::Backoff {
                attempt,
                earliest,
                latest,
            } => {
                let slack = Duration::from_millis(1);
                if now + slack >= earliest && now <= latest {
                    let attempt = attempt + 1;
                    let base = backoff_base(attempt);
                    self.phase = Phase::Backoff {
                        attempt,
                        earliest: now + base.mul_f64(0.75),
                        latest: now + base,
                    };
                } else {
                    assert!(traffic, "initiation in backoff outside the retry window");
                }
            }
            // A rekey, a forced or traffic-driven initiation: the phase stays.
            Phase::Connecting { .. } | Phase::Established { .. } => {}
        }
    }

    /// The session starts over (no session, a handshake about to start): liveness counts
    /// from now.
    fn restart(&mut self, now: Instant) {
        self.phase = Phase::Idle { since: now };
        if self.up_since.is_some() {
            self.up_since = Some(now);
        }
    }

    /// Invariants that hold after every step: each phase's timer has not passed, and a
    /// gateway up long enough is reached.
    fn check(&self, now: Instant) {
        match self.phase {
            Phase::Idle { since } => assert!(now - since <= KEEPALIVE, "idle for too long"),
            Phase::Connecting { since } => assert!(now - since < REKEY_ATTEMPT),
            Phase::Established { at } => assert!(now - at < REJECT_AFTER),
            // At `latest` itself only when a new endpoint made the retry due at once.
            Phase::Backoff { latest, .. } => assert!(now <= latest, "retry overdue"),
        }
        if self.up_since.is_some_and(|t| now - t >= LIVENESS) {
            assert_eq!(
                self.phase.state(),
                HandshakeState::Established,
                "not reached"
            );
        }
    }
}

struct Run {
    net: Net,
    model: Model,
    events_seen: usize,
    sent_seen: usize,
    gw_addr_port: u16,
}

impl Run {
    fn new(seed: u64) -> Self {
        let net = agent_and_gateway(seed, Some(KEEPALIVE));
        let now = net.now;
        let mut run = Self {
            net,
            model: Model {
                phase: Phase::Idle { since: now },
                up_since: Some(now),
            },
            events_seen: 0,
            sent_seen: 0,
            gw_addr_port: 51820,
        };
        // Adding the gateway sent the first initiation already.
        run.net.drain();
        run.observe(false);
        run
    }

    /// Feeds the model what the agent did since the last observation, then compares.
    fn observe(&mut self, traffic: bool) {
        let now = self.net.now;
        let node = &self.net.nodes[AGENT];
        let events: Vec<Event> = node.events[self.events_seen..]
            .iter()
            .map(|e| e.1.clone())
            .collect();
        let initiation = node.sent[self.sent_seen..].iter().any(|s| s.2 == 1);
        self.events_seen = node.events.len();
        self.sent_seen = node.sent.len();
        self.model.observe(now, &events, initiation, traffic);
        let gw = self.net.nodes[GW].public_key();
        let stats = self.net.nodes[AGENT].peers.peer_stats(&gw, now).unwrap();
        assert_eq!(
            stats.state,
            self.model.phase.state(),
            "{:?}",
            self.model.phase
        );
        if let Phase::Established { at } = self.model.phase {
            assert_eq!(stats.last_handshake_age, Some(now - at));
        }
        self.model.check(now);
    }

    fn advance(&mut self, d: Duration) {
        let until = self.net.now + d;
        while self.net.step(until) {
            self.observe(false);
        }
        self.net.advance_to(until);
        self.observe(false);
    }

    fn apply(&mut self, a: &Action) {
        let now = self.net.now;
        let gw = self.net.nodes[GW].public_key();
        match a {
            Action::Advance(s) => return self.advance(Duration::from_secs(*s)),
            Action::GatewayDown => {
                self.net.nodes[GW].down = true;
                self.model.up_since = None;
            }
            Action::GatewayUp => {
                self.net.nodes[GW].down = false;
                self.model.up_since.get_or_insert(now);
            }
            Action::GatewayMoves => {
                self.gw_addr_port += 1;
                let addr = SocketAddr::from(([192, 0, 2, 2], self.gw_addr_port));
                self.net.nodes[GW].addr = addr;
                assert!(self.net.nodes[AGENT].peers.set_endpoint(&gw, addr));
                if let Phase::Backoff { .. } = self.model.phase {
                    // A new address is tried at the next timeout (now), from the first delay.
                    self.model.phase = Phase::Backoff {
                        attempt: 0,
                        earliest: now,
                        latest: now,
                    };
                }
                if !self.net.nodes[GW].down {
                    // Reachable at the new address from now on.
                    self.model.up_since = Some(now);
                }
            }
            Action::SendData => {
                let (from, to) = (AGENT, GW);
                self.net.send_ip(from, to, 100, 1);
                return self.observe(true);
            }
            Action::ForceHandshake => {
                assert!(self.net.nodes[AGENT].peers.force_handshake(&gw, now));
                if let Phase::Backoff { .. } = self.model.phase {
                    // Leaves backoff: starts over.
                    self.model.restart(now);
                }
            }
            Action::ChangePsk => {
                let psk = PresharedKey::from_bytes([self.gw_addr_port as u8; 32]);
                let mut gw_cfg = self.net.nodes[GW].config_for(true);
                gw_cfg.persistent_keepalive = Some(KEEPALIVE);
                let gw_cfg = gw_cfg.with_preshared_key(psk.clone());
                let agent_cfg = self.net.nodes[AGENT]
                    .config_for(false)
                    .with_preshared_key(psk);
                let changed = self.net.nodes[AGENT].peers.upsert_peer(gw_cfg, now);
                self.net.nodes[GW].peers.upsert_peer(agent_cfg, now);
                if changed == PeerChange::Rekeyed {
                    self.model.restart(now);
                }
            }
        }
        self.net.drain();
        self.observe(false);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn lifecycle_follows_the_reference_model(
        seed in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..24),
    ) {
        let mut run = Run::new(seed);
        for a in &actions {
            run.apply(a);
        }
        // Whatever happened, a gateway that stays up is reached.
        run.apply(&Action::GatewayUp);
        run.advance(LIVENESS);
        prop_assert_eq!(run.model.phase.state(), HandshakeState::Established);
    }
}
