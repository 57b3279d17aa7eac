//! The operator's diagnostics against real wireguard-go gateways (issue 14): `wg-agent ping`
//! through the running agent, its admin endpoint refusing remote clients, the early warning
//! for a gateway that does not know the agent's key (and the recovery), and a gateway that
//! drops ICMP echo told apart from one that lost the session. The `wg-agent` binary runs in
//! its own namespace as in `gateway_suite.rs`. Root only: without it each case prints one
//! `skipping` line, under `CI=true` a missing prerequisite fails. All traffic stays inside the
//! namespaces each case creates.

#![allow(clippy::unwrap_used)]

mod suite;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use suite::agent::{ADMIN_ADDR, tail};
use suite::{AGENT_VIP, AgentGateway, AgentOptions, AgentProcess, Topology, poll_until};
use testbed::{GatewayConfig, GatewayPeer, GatewaySite, KeyPair, Netns};

/// `wg-agent ping --admin ADDR ARGS...` inside the agent's namespace.
fn ping(topo: &Topology, agent: &AgentProcess<'_>, args: &[&str]) -> Output {
    topo.agent_ns
        .command(&agent.binary().to_string_lossy())
        .args(["ping", "--admin", ADMIN_ADDR])
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One raw HTTP/1.1 request from `ns` to `addr`: the status code.
fn http_status(ns: &Netns, addr: SocketAddr, request: &str) -> u16 {
    let mut stream = ns.connect_tcp(addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}

/// `wg-agent ping` through wireguard-go: replies counted, exit 0; an address no gateway
/// routes: exit 1. The admin endpoint serves every address with `allow_remote`: a client in
/// the gateway's namespace gets `/metrics` but `403` for `/ping`. Then the gateway stops
/// answering ICMP echo (`icmp_echo_ignore_all` in its namespace): ping exits 1 with a
/// timeout line per echo, and the liveness probe, unanswered while the handshake it forces
/// succeeds, makes the agent warn once and mark `icmp_filtered` in `/status` and `status`.
#[test]
fn interop_ping_and_filtered_icmp() {
    testbed::require_gateway_prereqs!();
    let topo = Topology::new("dpi", 1).unwrap();
    let agent = topo
        .start_agent(
            &[topo.gateway(0)],
            AgentOptions {
                admin_remote: true,
                ..AgentOptions::default()
            },
        )
        .unwrap();

    let out = ping(&topo, &agent, &["-c", "3", "gw1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    eprintln!("diagnostics: wg-agent ping -c 3 gw1:\n{stdout}");
    assert!(
        stdout.starts_with("PING gw1 (10.1.0.1) through gateway gw1"),
        "{stdout}"
    );
    for seq in 1..=3 {
        let prefix = format!("reply from 10.1.0.1: icmp_seq={seq} time=");
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix)),
            "{prefix} in\n{stdout}"
        );
    }
    assert!(
        stdout.contains("3 transmitted, 3 received, 0% packet loss\nrtt min/avg/max = "),
        "{stdout}"
    );
    let out = ping(&topo, &agent, &["-c", "1", "10.1.0.77"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("10.1.0.77 is not in any gateway's allowed_ips"),
        "{}",
        text(&out.stderr)
    );

    // A remote client (the gateway's namespace, over the veth link).
    let gw_ns = &topo.sites[0].ns;
    let port: u16 = ADMIN_ADDR.rsplit_once(':').unwrap().1.parse().unwrap();
    let remote = SocketAddr::new(topo.sites[0].agent_side_ip().into(), port);
    let get_metrics = "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(http_status(gw_ns, remote, get_metrics), 200);
    let body = r#"{"target":"gw1","timeout_ms":1000}"#;
    let post_ping = format!(
        "POST /ping HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http_status(gw_ns, remote, &post_ping), 403, "remote /ping");
    let get_status = "GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(
        http_status(gw_ns, remote, get_status),
        403,
        "remote /status"
    );

    // The gateway stops answering ICMP echo; handshakes still work.
    gw_ns
        .run("sysctl", ["-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"])
        .unwrap();
    let out = ping(&topo, &agent, &["-c", "2", "-W", "1", "gw1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("no reply from 10.1.0.1: icmp_seq=1")
            && stdout.contains("2 transmitted, 0 received, 100% packet loss"),
        "{stdout}"
    );

    // 25 s of silence, a probe unanswered for 10 s, a handshake, its confirmation unanswered
    // for 10 s: about 50 s. The bound only catches a hang.
    const WARNING: &str = "ICMP is filtered on the gateway";
    poll_until(
        "the filtered-ICMP warning",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || agent.log().contains(WARNING).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tail(&agent.log(), 40)));
    let status = agent.status_json().unwrap();
    assert_eq!(status["gateways"][0]["icmp_filtered"], true, "{status}");
    assert_eq!(status["gateways"][0]["state"], "up", "{status}");
    let table = topo
        .agent_ns
        .run(
            &agent.binary().to_string_lossy(),
            ["status", "--admin", ADMIN_ADDR],
        )
        .unwrap();
    assert!(
        table.contains("warning: gateway gw1: the liveness probe (ICMP echo) goes unanswered"),
        "{table}"
    );
    let log = agent.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "once: {warnings:#?}");
    assert!(
        warnings[0].contains("gateway gw1: the liveness probe (ICMP echo to 10.1.0.1)")
            && warnings[0].contains("liveness_probe = \"off\""),
        "{}",
        warnings[0]
    );
    eprintln!("diagnostics: {}", warnings[0]);
    drop(agent);
}

/// A wireguard-go gateway that has another peer but not the agent: the agent says so once
/// within the first tries (naming the gateway, its endpoint, the agent's key and what to
/// check), and logs the recovery once the gateway learns the key. No boringtun line appears
/// (the suite runs the agent at `--log-level debug`).
#[test]
fn interop_gateway_without_the_agent_key_is_told_then_recovers() {
    testbed::require_gateway_prereqs!();
    const WARNING: &str = "no handshake response after";
    const RECOVERY: &str = "handshake completed after";
    let agent_ns = Netns::new("dhk").unwrap();
    let agent_key = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let config = GatewayConfig::new("10.1.0.1/24")
        .unwrap()
        .with_peer(GatewayPeer::new(&other.public, &["10.1.0.200/32"]));
    let mut site = GatewaySite::start("dhkg", config, Some(&agent_ns)).unwrap();
    let gateway = AgentGateway {
        id: "gw1".into(),
        public_key: site.wg.public_key().to_owned(),
        endpoint: site.endpoint(),
        virtual_ip: "10.1.0.1".into(),
        allowed_ips: Vec::new(),
    };
    let agent =
        AgentProcess::start(&agent_ns, &agent_key, &[gateway], AgentOptions::default()).unwrap();
    // Three tries 5 s apart: about 15 s. The bound only catches a hang.
    let (_, after) = poll_until(
        "the unanswered-handshake warning",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || agent.log().contains(WARNING).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tail(&agent.log(), 40)));
    eprintln!("diagnostics: warning after {after:.1?}");
    let log = agent.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let endpoint = site.endpoint();
    assert!(
        warnings[0].contains(&format!(
            "gateway gw1 ({endpoint}): no handshake response after 3 tries in "
        )) && warnings[0].contains(&format!(
            "Check that the gateway has peer {} with AllowedIPs {AGENT_VIP}/32, and that UDP to {endpoint} is allowed",
            agent_key.public
        )),
        "{}",
        warnings[0]
    );
    eprintln!("diagnostics: {}", warnings[0]);

    // The gateway learns the agent's key.
    site.wg
        .set_peer(GatewayPeer::new(
            &agent_key.public,
            &[&format!("{AGENT_VIP}/32")],
        ))
        .unwrap();
    poll_until(
        "the recovery line",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || agent.log().contains(RECOVERY).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tail(&agent.log(), 40)));
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let log = agent.log();
    assert_eq!(
        log.lines().filter(|l| l.contains(WARNING)).count(),
        1,
        "once per episode:\n{log}"
    );
    let recovered: Vec<&str> = log.lines().filter(|l| l.contains(RECOVERY)).collect();
    assert_eq!(recovered.len(), 1, "{log}");
    assert!(
        recovered[0].contains("gateway gw1: handshake completed after "),
        "{}",
        recovered[0]
    );
    eprintln!("diagnostics: {}", recovered[0]);
    let unlabeled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("boringtun") || l.contains("HANDSHAKE("))
        .collect();
    assert!(
        unlabeled.is_empty(),
        "boringtun's own lines: {unlabeled:#?}"
    );
    drop(agent);
    drop(site);
}
