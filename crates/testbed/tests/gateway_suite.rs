//! The real-gateway interop and fault suite (issue 6): the `wg-agent` binary, run as an
//! operator would, in its own namespace with the local app on its loopback, against
//! wireguard-go gateways in namespaces of their own (10.1.0.1/24, 10.1.0.2/24, ...), which
//! know the agent's key but not its endpoint. Clients are curl inside the gateway namespaces;
//! every body is checked by sha256. Root only: without it each case prints one `skipping` line,
//! under `CI=true` a missing prerequisite fails. Every load is bounded in bytes and time, all
//! traffic stays inside the namespaces each case creates, and the guards (namespaces, agent,
//! wireguard-go, relays) clean up on failure too.

#![allow(clippy::unwrap_used)]

mod suite;

use std::time::{Duration, Instant};

use suite::client::{self, url};
use suite::pattern::pattern_sha256;
use suite::{AgentOptions, Topology, mbit_per_s};

/// A download and an upload of `len` bytes through gateway 1, sha256 checked both ways.
fn get_and_post(label: &str, len: u64, max_time: Duration) {
    testbed::require_gateway_prereqs!();
    let topo = Topology::new(label, 1).unwrap();
    let agent = topo
        .start_agent(&[topo.gateway(0)], AgentOptions::default())
        .unwrap();
    let gw = &topo.sites[0].ns;

    let seed = len ^ 0x5eed;
    let down = client::get(gw, &url(&format!("/blob/{len}/{seed}")), max_time, &[]).unwrap();
    assert_eq!(down.bytes, len);
    assert_eq!(down.sha256, pattern_sha256(seed, len), "download corrupted");

    let up = client::post(gw, &url("/upload"), seed + 1, len, max_time).unwrap();
    assert_eq!(up.bytes, len);
    assert_eq!(up.sha256, pattern_sha256(seed + 1, len), "upload corrupted");
    eprintln!(
        "suite: {label}: {len} bytes GET {:.2?} ({:.1} Mbit/s), POST {:.2?} ({:.1} Mbit/s)",
        down.elapsed,
        mbit_per_s(len, down.elapsed),
        up.elapsed,
        mbit_per_s(len, up.elapsed)
    );
    drop(agent);
}

#[test]
fn interop_suite_get_post_1mib() {
    get_and_post("s1m", 1 << 20, Duration::from_secs(30));
}

/// The large body of case 1: 256 MiB each way (about 10 s in the debug profile on two cores).
#[test]
fn interop_suite_get_post_256mib() {
    get_and_post("slg", 256 << 20, Duration::from_secs(120));
}

/// Case 8: the agent's only listening sockets on its host (namespace) are its UDP socket and
/// the admin endpoint on loopback.
#[test]
fn interop_suite_listening_sockets() {
    testbed::require_gateway_prereqs!();
    const PORT: u16 = 51_999;
    let topo = Topology::new("sls", 1).unwrap();
    let agent = topo
        .start_agent(
            &[topo.gateway(0)],
            AgentOptions {
                listen_port: Some(PORT),
            },
        )
        .unwrap();
    // Some traffic first, so that upstream connections exist too (they must not listen).
    let hello =
        client::get_text(&topo.sites[0].ns, &url("/hello"), Duration::from_secs(20)).unwrap();
    assert_eq!(hello, "hello from the app\n");
    let pid = agent.pid().unwrap();
    let out = topo
        .agent_ns
        .run("ss", ["-H", "-l", "-n", "-p", "-t", "-u", "-w", "-x"])
        .unwrap();
    let mine: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .collect();
    let mut udp = 0;
    let mut admin = 0;
    for line in &mine {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (netid, local) = (fields[0], fields[4]);
        match netid {
            "udp" if local.ends_with(&format!(":{PORT}")) => udp += 1,
            "tcp" if local == suite::agent::ADMIN_ADDR => admin += 1,
            _ => panic!("unexpected listening socket of the agent: {line}\nall:\n{out}"),
        }
    }
    assert!(udp >= 1, "no UDP socket on port {PORT}:\n{out}");
    assert_eq!(admin, 1, "admin endpoint not listening once:\n{out}");
    eprintln!("suite: listening sockets of the agent: {mine:?}");
}

/// Case 9: `wg-agent demo` passes on this machine (run in a fresh namespace, so its loopback
/// ports cannot collide with anything else).
#[test]
fn interop_suite_demo() {
    testbed::require_gateway_prereqs!();
    let ns = testbed::Netns::new("sdm").unwrap();
    let binary = suite::agent::agent_binary().unwrap();
    let start = Instant::now();
    let out = ns
        .command("timeout")
        .args(["60"])
        .arg(&binary)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo passed"), "{stdout}");
    eprintln!("suite: demo passed in {:.2?}", start.elapsed());
}
