//! `wg set` against the running agent (issue 14), with Debian's wireguard-tools and two
//! wireguard-go gateways in namespaces: a gateway's endpoint moved (traffic leaves the old
//! path), its keepalive changed (the gateway sees it), a second gateway added (its traffic
//! is accepted only once it has allowed IPs) and removed, a restart-only key refused with
//! nothing changed, then `SIGHUP` restoring the file's state and saying what it replaced.
//! Root only (skips with one line without it; fails under `CI=true`). Named `interop_` so
//! that the CI profile runs it alone (it starts namespaces and two gateways).

#![allow(clippy::unwrap_used)]

mod suite;

use std::process::{Command, Output};
use std::time::Duration;

use suite::client::{self, url};
use suite::{AgentOptions, AgentProcess, Topology, poll_until};
use testbed::{ImpairedRelay, Impairment, WgDump};

/// Runs `wg ARGS`, printing the command and what it printed (the transcript the issue's
/// closing note shows).
fn wg(args: &[&str]) -> Output {
    let out = Command::new("wg").args(args).output().expect("run wg");
    eprintln!(
        "$ wg {}\n{}{}[exit {}]",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    );
    out
}

fn wg_ok(args: &[&str]) -> String {
    let out = wg(args);
    assert!(out.status.success(), "wg {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's interface as `wg show NAME dump` reports it.
fn dump(name: &str) -> WgDump {
    let out = Command::new("wg")
        .args(["show", name, "dump"])
        .output()
        .unwrap();
    assert!(out.status.success());
    WgDump::parse(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// The settings part of a dump (no counters, handshakes or roaming), to compare.
fn settings(d: &WgDump) -> Vec<(String, Vec<String>, Option<u16>)> {
    d.peers
        .iter()
        .map(|p| {
            (
                p.public_key.clone(),
                p.allowed_ips.clone(),
                p.persistent_keepalive,
            )
        })
        .collect()
}

fn hello(ns: &testbed::Netns, max: Duration) -> anyhow::Result<String> {
    client::get_text(ns, &url("/hello"), max)
}

#[test]
fn interop_uapi_wg_set_against_the_running_agent() {
    testbed::require_gateway_prereqs!();
    let topo = Topology::new("sus", 2).unwrap();
    // Gateway 1 is first reached through a relay: its endpoint then moves to the real one.
    let relay = ImpairedRelay::start_in(
        &topo.agent_ns,
        "127.0.0.1:0".parse().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
        topo.sites[0].endpoint(),
        Impairment::default(),
    )
    .unwrap();
    let file_gateways = [topo.gateway_via(0, relay.local_addr())];
    let mut agent = AgentProcess::start(
        &topo.agent_ns,
        &topo.agent_key,
        &file_gateways,
        AgentOptions::default(),
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let name = agent.uapi_name().to_owned();
    let (gw1, gw2) = (&topo.sites[0], &topo.sites[1]);
    let gw1_key = gw1.wg.public_key().to_owned();
    let gw2_key = gw2.wg.public_key().to_owned();
    assert_eq!(
        hello(&gw1.ns, Duration::from_secs(20)).unwrap(),
        "hello from the app\n"
    );
    assert!(relay.stats().to_gateway.sent > 0);
    wg_ok(&["show", &name]);

    // 1. Endpoint and keepalive in one command: traffic moves to the new endpoint, the
    // gateway receives keepalives every 2 s on an idle tunnel, `wg show` and /status say so.
    let real = gw1.endpoint().to_string();
    wg_ok(&[
        "set",
        &name,
        "peer",
        &gw1_key,
        "endpoint",
        &real,
        "persistent-keepalive",
        "2",
    ]);
    let agent_pub = topo.agent_key.public.clone();
    let agent_port = agent.status_json().unwrap()["agent"]["listen_port"]
        .as_u64()
        .unwrap();
    // The gateway learns the agent's direct address from the first keepalive (until then
    // its packets would still come through the relay, and the agent would roam back to it).
    poll_until(
        "the gateway to see the agent directly",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let peer = gw1.wg.peer(&agent_pub).ok()?;
            (peer.endpoint?.port() == agent_port as u16).then_some(())
        },
    )
    .unwrap();
    let rx = || gw1.wg.peer(&agent_pub).unwrap().rx_bytes;
    let start = rx();
    // 32 bytes per keepalive: at least three more of them.
    poll_until(
        "keepalives at the gateway",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (rx() >= start + 3 * 32).then_some(()),
    )
    .unwrap();
    let through_relay = relay.stats().to_gateway.received;
    assert_eq!(
        hello(&gw1.ns, Duration::from_secs(20)).unwrap(),
        "hello from the app\n"
    );
    assert_eq!(
        relay.stats().to_gateway.received,
        through_relay,
        "traffic still goes through the old endpoint"
    );
    let shown = wg_ok(&["show", &name]);
    assert!(shown.contains(&format!("endpoint: {real}")), "{shown}");
    assert!(
        shown.contains("persistent keepalive: every 2 seconds"),
        "{shown}"
    );
    let status = agent.status_json().unwrap();
    assert_eq!(status["gateways"][0]["endpoint"], real.as_str(), "{status}");
    assert_eq!(status["gateways"][0]["state"], "up", "{status}");

    // 3. A second gateway added without allowed IPs: its handshake works, but the agent
    // accepts no inner packet from it; once allowed IPs are set, its clients reach the agent.
    let gw2_endpoint = gw2.endpoint().to_string();
    wg_ok(&[
        "set",
        &name,
        "peer",
        &gw2_key,
        "endpoint",
        &gw2_endpoint,
        "persistent-keepalive",
        "25",
    ]);
    gw2.wg
        .wait_for_handshake(&agent_pub, Duration::from_secs(30))
        .unwrap();
    assert!(
        hello(&gw2.ns, Duration::from_secs(3)).is_err(),
        "packets from a peer without allowed IPs were accepted"
    );
    wg_ok(&["set", &name, "peer", &gw2_key, "allowed-ips", "10.1.0.2/32"]);
    assert_eq!(
        hello(&gw2.ns, Duration::from_secs(20)).unwrap(),
        "hello from the app\n"
    );
    let shown = wg_ok(&["show", &name]);
    assert!(shown.contains(&format!("peer: {gw2_key}")), "{shown}");
    let status = agent.status_json().unwrap();
    let added_id = format!("gw-{}", &gw2_key[..8].replace('+', "-").replace('/', "_"));
    assert!(
        status["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == added_id.as_str() && g["endpoint"] == gw2_endpoint.as_str()),
        "{status}"
    );
    // Gateway 1 still serves.
    assert_eq!(
        hello(&gw1.ns, Duration::from_secs(20)).unwrap(),
        "hello from the app\n"
    );

    // 4. Removed: gateway 2's clients no longer reach the agent.
    wg_ok(&["set", &name, "peer", &gw2_key, "remove"]);
    assert!(!wg_ok(&["show", &name]).contains(&gw2_key));
    assert!(hello(&gw2.ns, Duration::from_secs(3)).is_err());
    // Back again, in one command, for the reload to replace.
    wg_ok(&[
        "set",
        &name,
        "peer",
        &gw2_key,
        "endpoint",
        &gw2_endpoint,
        "allowed-ips",
        "10.1.0.2/32",
    ]);
    assert_eq!(
        hello(&gw2.ns, Duration::from_secs(20)).unwrap(),
        "hello from the app\n"
    );

    // 5. A restart-only key: errno=22, wg fails, nothing changes.
    let before = settings(&dump(&name));
    let out = wg(&["set", &name, "listen-port", "1"]);
    assert!(!out.status.success());
    // Debian's wg 1.0.20210914 prints "Unknown error -22" for EINVAL from a UAPI socket.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-22") || err.contains("Invalid argument"),
        "{err}"
    );
    assert_eq!(settings(&dump(&name)), before);

    // 6. SIGHUP re-applies the file: gateway 1 back behind the relay with keepalive 25,
    // gateway 2 gone, and the log names what was replaced.
    agent.reload(&file_gateways).unwrap();
    let (line, _) = poll_until(
        "the reload's report",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            agent
                .log()
                .lines()
                .find(|l| l.contains("reload replaced runtime changes made through UAPI"))
                .map(str::to_owned)
        },
    )
    .unwrap();
    eprintln!("agent log: {line}");
    for part in [
        "gw1 endpoint changed".to_owned(),
        "gw1 persistent keepalive changed".to_owned(),
        format!("peer {added_id} added"),
    ] {
        assert!(line.contains(&part), "missing `{part}` in: {line}");
    }
    // Right after the reload, before any packet could make it roam: the file's endpoint.
    let peer = dump(&name)
        .peers
        .into_iter()
        .find(|p| p.public_key == gw1_key)
        .unwrap();
    assert_eq!(peer.endpoint, Some(relay.local_addr()));
    assert_eq!(peer.persistent_keepalive, Some(25));
    let shown = wg_ok(&["show", &name]);
    assert!(!shown.contains(&gw2_key), "{shown}");
    assert_eq!(
        hello(&gw1.ns, Duration::from_secs(20)).unwrap(),
        "hello from the app\n"
    );
    assert!(hello(&gw2.ns, Duration::from_secs(3)).is_err());
    drop(agent);
}
