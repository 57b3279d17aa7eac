//! What the operator reads when a gateway does not answer: one line per episode that names
//! the gateway, the agent's key and what to check, then the recovery; never boringtun's own
//! unlabeled lines. The real `wg-agent run` against an in-process gateway on loopback that
//! has forgotten the agent's key.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::time::Duration;

use common::process::{AgentFixture, admin_get, signal, wait_exit, wait_for};
use common::{GW_VIP, gateway_config};
use wg_core::PrivateKey;

const WARNING: &str = "no handshake response after";
const RECOVERY: &str = "handshake completed after";

/// The agent's log lines that contain `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn stop(mut child: Child) {
    signal(&child, "-TERM");
    wait_exit(&mut child, Duration::from_secs(30));
}

/// A gateway that does not know the agent's key: at the default level, one warning within
/// the first tries that names the gateway, its endpoint, the agent's public key and address
/// and what to check; no line of boringtun's (`HANDSHAKE(REKEY_TIMEOUT)` every 5 s, with no
/// gateway named, before); then, once the gateway learns the key, one recovery line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_handshakes_are_told_once_per_gateway_then_recovery() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    // The gateway forgets the agent: its initiations go unanswered.
    gw.update_gateways(vec![]).await.unwrap();
    fx.write_config(&fx.config_text("", "", "1s"));
    let child = fx.spawn_args(&[], &[]);
    // Three tries 5 s apart: about 15 s. The bound only catches a hang.
    wait_for(
        "the unanswered-handshake warning",
        Duration::from_secs(90),
        || fx.log_text().contains(WARNING),
    );
    // Another boringtun retry interval, so that a repeated warning would show.
    std::thread::sleep(Duration::from_secs(6));
    let log = fx.log_text();
    let warnings = lines_with(&log, WARNING);
    assert_eq!(warnings.len(), 1, "once per episode:\n{log}");
    let endpoint = format!("127.0.0.1:{}", fx.gateway_port);
    let public = fx.agent_key.public_key().to_base64();
    let expected = format!("gateway gw1 ({endpoint}): no handshake response after 3 tries in ");
    let line = &warnings[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&expected), "{line}");
    assert!(
        line.contains(&format!(
            "Check that the gateway has peer {public} with AllowedIPs 10.1.0.100/32, and that UDP to {endpoint} is allowed"
        )),
        "{line}"
    );
    let unlabeled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("boringtun") || l.contains("HANDSHAKE("))
        .collect();
    assert!(
        unlabeled.is_empty(),
        "boringtun's own lines: {unlabeled:#?}"
    );

    // The gateway learns the key: the next try completes, and that is said once.
    let agent_peer = gateway_config(&fx.gateway_key, GW_VIP, &fx.agent_key).gateways;
    gw.update_gateways(agent_peer).await.unwrap();
    wait_for("the recovery line", Duration::from_secs(90), || {
        fx.log_text().contains(RECOVERY)
    });
    let log = fx.log_text();
    let recovered = lines_with(&log, RECOVERY);
    assert_eq!(recovered.len(), 1, "{log}");
    assert!(
        recovered[0].contains("gateway gw1: handshake completed after "),
        "{log}"
    );
    assert_eq!(lines_with(&log, WARNING).len(), 1, "{log}");
    stop(child);
    gw.close().await;
}

/// An operator who asks for boringtun's lines (`--log-level info,boringtun=warn`) gets each
/// inside the span that names the gateway's public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boringtun_lines_asked_for_name_the_gateway() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    gw.update_gateways(vec![]).await.unwrap();
    fx.write_config(&fx.config_text("", "", "1s"));
    let child = fx.spawn_args(&["--log-level", "info,boringtun=warn"], &[]);
    // boringtun's first retry warning comes after 5 s.
    wait_for("a boringtun line", Duration::from_secs(90), || {
        fx.log_text().contains("HANDSHAKE(")
    });
    let log = fx.log_text();
    let gateway = fx.gateway_key.public_key().to_base64();
    let lines = lines_with(&log, "HANDSHAKE(");
    for line in &lines {
        assert!(
            line.contains(&format!("public_key={gateway}")),
            "unlabeled: {line}\n{log}"
        );
    }
    stop(child);
    gw.close().await;
}

/// `wg-agent ping` through the running agent: a line per reply with its time and the
/// summary, exit 0; an address no gateway routes: exit 1; an unknown gateway id: exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_goes_through_the_running_agent() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    fx.write_config(&fx.config_text("", "", "1s"));
    let child = fx.spawn();
    wait_for("/readyz 200", Duration::from_secs(30), || {
        admin_get(fx.admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let admin = fx.admin.to_string();
    let ping = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wg-agent"))
            .args(["ping", "--admin", &admin])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ping(&["-c", "3", "gw1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("PING gw1 (10.1.0.1) through gateway gw1"),
        "{stdout}"
    );
    for seq in 1..=3 {
        let prefix = format!("reply from 10.1.0.1: icmp_seq={seq} time=");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.ends_with(" ms")),
            "{prefix} in\n{stdout}"
        );
    }
    assert!(
        stdout.contains("--- gw1 ping statistics ---\n3 transmitted, 3 received, 0% packet loss\nrtt min/avg/max = "),
        "{stdout}"
    );
    // By address: the gateway that routes it is named.
    let out = ping(&["-c", "1", "10.1.0.1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("through gateway gw1"));

    let out = ping(&["-c", "1", "10.1.0.77"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("10.1.0.77 is not in any gateway's allowed_ips"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ping(&["-c", "1", "gw9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`gw9` is neither a gateway id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(child);
    gw.close().await;

    // The man page and the completions come from the same command line.
    let man = std::process::Command::new(env!("CARGO_BIN_EXE_wg-agent"))
        .arg("man")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(r"wg\-agent ping"), "{page}");
    let bash = std::process::Command::new(env!("CARGO_BIN_EXE_wg-agent"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bash.stdout).contains("wg__agent__subcmd__ping"));
}
