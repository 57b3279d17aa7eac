//! A test process killed with `SIGKILL` runs no destructors: the next test process's first
//! `Netns::new` (here `cleanup_stale` directly) must remove its namespace, the wireguard-go
//! inside, its control socket and its scratch folder.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testbed::{GatewayConfig, Netns, WireguardGo};

const CHILD: &str = "child_process_killed_mid_test";
const ENV: &str = "TESTBED_STALE_CHILD";

/// Not a check by itself: run in a child process by the test below, which kills it.
#[test]
#[ignore = "run by interop_leftovers_of_a_killed_test_process_are_cleaned in a child process"]
fn child_process_killed_mid_test() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    let ns = Netns::new("stale").unwrap();
    let _link = ns.veth_to_host().unwrap();
    let wg = WireguardGo::start(&ns, GatewayConfig::new("10.1.0.1/24").unwrap()).unwrap();
    println!(
        "READY {} {} {} {}",
        ns.name(),
        wg.pid().unwrap(),
        wg.control_socket().display(),
        wg.log_path().parent().unwrap().display()
    );
    // Killed long before this ends.
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn interop_leftovers_of_a_killed_test_process_are_cleaned() {
    testbed::require_gateway_prereqs!();
    let mut child = testbed::child_test_command(CHILD)
        .unwrap()
        .env(ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        match lines.next() {
            Some(line) => {
                let line = line.unwrap();
                // libtest prints `test NAME ... ` before the test's own output.
                if let Some((_, rest)) = line.split_once("READY ") {
                    break rest.to_owned();
                }
            }
            None => {
                let _ = child.kill();
                panic!("child exited before READY: {:?}", child.wait());
            }
        }
    };
    let fields: Vec<&str> = ready.split(' ').collect();
    let (ns, wg_pid, socket, dir) = (
        fields[0].to_owned(),
        fields[1].parse::<u32>().unwrap(),
        Path::new(fields[2]).to_owned(),
        Path::new(fields[3]).to_owned(),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing ran destructors: everything is still there — unless a test process running in
    // parallel already called `cleanup_stale` (its first `Netns::new` does), which is fine.
    testbed::cleanup_stale();
    assert!(!testbed::netns_exists(&ns).unwrap(), "{ns} left behind");
    let deadline = Instant::now() + Duration::from_secs(3);
    // Gone, or a zombie nobody reaps (PID 1 of a container may not).
    while testbed::pid_alive(wg_pid) {
        assert!(
            Instant::now() < deadline,
            "wireguard-go {wg_pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "{}", socket.display());
    assert!(!dir.exists(), "{}", dir.display());
}
