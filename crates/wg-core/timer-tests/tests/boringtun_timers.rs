//! wg-core driving boringtun's own timers, with boringtun's clock (`mock_instant`) advanced
//! together with the simulated network's virtual time.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Net, agent_and_gateway, tag_of};
use mock_instant::MockClock;
use wg_core::{Event, HandshakeState};

const AGENT: usize = 0;
const GW: usize = 1;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A pair whose virtual time also moves boringtun's (thread-local) mock clock.
fn pair(seed: u64, keepalive: Option<Duration>) -> Net {
    MockClock::set_time(secs(1_000));
    let mut net = agent_and_gateway(seed, keepalive);
    net.on_advance = Some(Box::new(MockClock::advance));
    net
}

fn state(net: &Net, node: usize, peer: usize) -> HandshakeState {
    let key = net.nodes[peer].public_key();
    net.nodes[node]
        .peers
        .peer_stats(&key, net.now)
        .unwrap()
        .state
}

fn completed(net: &Net, node: usize) -> Vec<(Duration, bool)> {
    net.nodes[node]
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::HandshakeCompleted { rekey, .. } => Some((*t - net.start, *rekey)),
            _ => None,
        })
        .collect()
}

#[test]
fn traffic_is_rekeyed_by_boringtun_after_120_s_without_loss() {
    let mut net = pair(41, None);
    net.run_for(secs(1));
    assert_eq!(state(&net, AGENT, GW), HandshakeState::Established);
    for i in 0..300u32 {
        net.send_ip(AGENT, GW, 200, i);
        net.send_ip(GW, AGENT, 200, 10_000 + i);
        net.run_for(secs(1));
    }
    let got: Vec<u32> = net.nodes[GW].inbox.iter().map(|p| tag_of(&p.2)).collect();
    assert_eq!(
        got,
        (0..300).collect::<Vec<_>>(),
        "nothing lost across rekeys"
    );
    assert_eq!(net.nodes[AGENT].inbox.len(), 300);
    let hs = completed(&net, AGENT);
    assert!(hs.len() >= 3, "{hs:?}");
    let first_rekey = hs.iter().find(|h| h.1).unwrap().0;
    assert!(
        first_rekey >= secs(120) && first_rekey <= secs(127),
        "boringtun rekeys the initiator's session after 120 s: {hs:?}"
    );
    assert!(
        !net.events_of(AGENT)
            .iter()
            .any(|e| matches!(e, Event::SessionExpired { .. }))
    );
}

#[test]
fn idle_session_expires_after_180_s_and_traffic_starts_a_new_one() {
    let mut net = pair(42, None);
    net.run_for(secs(1));
    net.run_for(secs(200));
    let gw = net.nodes[GW].public_key();
    assert!(
        net.events_of(AGENT)
            .contains(&Event::SessionExpired { peer: gw })
    );
    assert_eq!(state(&net, AGENT, GW), HandshakeState::Idle);
    net.send_ip(AGENT, GW, 100, 5);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.last().map(|p| tag_of(&p.2)), Some(5));
    assert_eq!(completed(&net, AGENT).len(), 2);
}

#[test]
fn boringtun_retries_every_5_s_for_90_s_then_wg_core_backs_off_and_recovers() {
    let mut net = pair(43, Some(secs(25)));
    net.nodes[GW].down = true;
    net.run_for(secs(300));
    let inits: Vec<Duration> = net.nodes[AGENT]
        .initiations()
        .into_iter()
        .map(|t| t - net.start)
        .collect();
    // boringtun's retransmits: every 5 s (our 250 ms tick) until it gives up at 90 s.
    let early: Vec<&Duration> = inits.iter().filter(|t| **t < secs(90)).collect();
    assert!(early.len() >= 16 && early.len() <= 19, "{inits:?}");
    for w in early.windows(2) {
        let gap = *w[1] - *w[0];
        assert!(
            gap >= secs(5) && gap <= Duration::from_millis(5_300),
            "{inits:?}"
        );
    }
    let failing = net
        .events_of(AGENT)
        .iter()
        .filter(|e| matches!(e, Event::HandshakeFailing { .. }))
        .count();
    assert_eq!(failing, 1);
    assert_eq!(state(&net, AGENT, GW), HandshakeState::Backoff);
    // After that, only wg-core's backoff (never boringtun's 5 s rhythm): gaps of >= 7.5 s.
    let late: Vec<Duration> = inits.iter().copied().filter(|t| *t > secs(95)).collect();
    for w in late.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(7_500), "{inits:?}");
    }

    // The gateway returns: the next retry brings the tunnel up, and boringtun keeps the new
    // session (its clock was not left behind while wg-core backed off).
    net.nodes[GW].down = false;
    net.run_for(secs(61));
    assert_eq!(state(&net, AGENT, GW), HandshakeState::Established);
    let before = completed(&net, AGENT).len();
    for i in 0..100u32 {
        net.send_ip(AGENT, GW, 100, i);
        net.run_for(secs(1));
    }
    let got = net.nodes[GW].inbox.len();
    let tags: Vec<u32> = net.nodes[GW].inbox.iter().map(|p| tag_of(&p.2)).collect();
    assert_eq!(
        got,
        100,
        "every packet after recovery arrives: {tags:?} gw drops {:?} agent drops {:?} agent events {:?} lost {}",
        net.nodes[GW].peers.drops(),
        net.nodes[AGENT].peers.drops(),
        net.nodes[AGENT].events,
        net.lost
    );
    // boringtun renews once when data follows a long silence (its "15 s without a reply"
    // check counts from the last packet received); nothing else happens.
    assert!(completed(&net, AGENT).len() <= before + 1);
    let events = net.events_of(AGENT);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::SessionExpired { .. }))
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::HandshakeFailing { .. }))
            .count(),
        1
    );
}

#[test]
fn keepalive_only_tunnel_stays_up_for_ten_minutes() {
    let mut net = pair(44, Some(secs(25)));
    net.run_for(secs(600));
    assert_eq!(state(&net, AGENT, GW), HandshakeState::Established);
    assert!(
        !net.events_of(AGENT).iter().any(|e| matches!(
            e,
            Event::SessionExpired { .. } | Event::HandshakeFailing { .. }
        )),
        "{:?}",
        net.events_of(AGENT)
    );
    let hs = completed(&net, AGENT);
    assert!(hs.len() >= 4, "renewed by wg-core's keepalive: {hs:?}");
    net.send_ip(AGENT, GW, 100, 1);
    net.run_for(secs(1));
    assert_eq!(net.nodes[GW].inbox.len(), 1);
}

#[test]
fn peer_that_waits_ten_minutes_for_the_first_handshake_keeps_its_session() {
    MockClock::set_time(secs(1_000));
    let mut net = Net::new(45);
    net.on_advance = Some(Box::new(MockClock::advance));
    for name in ["agent", "gateway"] {
        let c = net.seeded_config();
        net.add_node(name, c);
    }
    // The agent knows the gateway but not where it is: it waits for the gateway's handshake.
    let now = net.now;
    let gw_cfg = net.nodes[GW].config_for(false);
    net.nodes[AGENT].peers.set_peers(vec![gw_cfg], now);
    net.run_for(secs(600));
    let now = net.now;
    let agent_cfg = net.nodes[AGENT].config_for(true);
    net.nodes[GW].peers.set_peers(vec![agent_cfg], now);
    net.run_for(secs(1));
    assert_eq!(state(&net, AGENT, GW), HandshakeState::Established);
    for i in 0..100u32 {
        net.send_ip(GW, AGENT, 100, i);
        net.send_ip(AGENT, GW, 100, i);
        net.run_for(secs(1));
    }
    assert_eq!(
        net.nodes[AGENT].inbox.len(),
        100,
        "{:?}",
        net.nodes[AGENT].peers.drops()
    );
    assert_eq!(
        net.nodes[GW].inbox.len(),
        100,
        "{:?}",
        net.nodes[GW].peers.drops()
    );
    assert!(!net.events_of(AGENT).iter().any(|e| matches!(
        e,
        Event::SessionExpired { .. } | Event::HandshakeFailing { .. }
    )));
}

#[test]
fn lost_handshake_messages_are_resent_by_boringtun_every_5_s() {
    let mut net = pair(46, Some(secs(25)));
    net.loss = 0.5;
    let mut up_at = None;
    for s in 0..120 {
        net.run_for(secs(1));
        if state(&net, AGENT, GW) == HandshakeState::Established {
            up_at = Some(s);
            break;
        }
    }
    let up_at = up_at.expect("up within 2 minutes at 50% loss");
    let inits = net.nodes[AGENT].initiations();
    assert!(
        inits.len() >= 2,
        "this seed loses the first exchange: {inits:?}"
    );
    for w in inits.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= secs(5) && gap <= Duration::from_millis(5_300),
            "{gap:?}"
        );
    }
    assert!(up_at < 90, "before boringtun gives up");
}
