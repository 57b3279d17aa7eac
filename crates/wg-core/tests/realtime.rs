//! boringtun's own timers read the real clock: check, on a short real-time scale, that
//! wg-core's coarse tick drives them (the handshake retransmit after 5 s) without busy waking.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use wg_core::{HandshakeState, PeerConfig, Peers, PrivateKey};

#[test]
fn heavy_lost_initiation_is_retransmitted_by_boringtun_after_5_s() {
    let start = Instant::now();
    let mut a = Peers::new(PrivateKey::generate());
    let gw = PrivateKey::generate().public_key();
    // Nobody listens there: nothing is sent in this test, datagrams are only collected.
    a.set_peers(
        vec![
            PeerConfig::new(gw)
                .with_endpoint("192.0.2.1:51820".parse().unwrap())
                .with_allowed_ip("10.1.0.1/32".parse().unwrap()),
        ],
        start,
    );
    let mut initiations = Vec::new();
    let mut wakeups = 0u32;
    let end = start + Duration::from_millis(6_500);
    loop {
        while let Some(t) = a.poll_transmit() {
            if t.payload[0] == 1 {
                initiations.push(Instant::now() - start);
            }
        }
        let Some(next) = a.poll_timeout() else {
            break;
        };
        if next > end {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        wakeups += 1;
        a.handle_timeout(Instant::now());
    }
    assert_eq!(initiations.len(), 2, "{initiations:?}");
    assert!(initiations[0] < Duration::from_millis(100));
    let gap = initiations[1] - initiations[0];
    assert!(
        gap >= Duration::from_secs(5) && gap < Duration::from_millis(6_500),
        "{gap:?}"
    );
    // 250 ms ticks while connecting: about 26 wake-ups in 6.5 s, never a busy loop.
    assert!(wakeups <= 30, "{wakeups} wake-ups");
    assert_eq!(
        a.peer_stats(&gw, Instant::now()).unwrap().state,
        HandshakeState::Connecting
    );
}
