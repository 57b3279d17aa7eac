//! Operator tooling through the real `wg-agent` binary: the agent's public key (startup log,
//! `/status`, `status`), `status --check`, and the admin endpoint's remote opt-in.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::files::{TempDir, agent_section, gateway_section};
use common::process::{AgentFixture, admin_get, free_port, signal, wait_exit, wait_for};
use wg_core::PrivateKey;

const BIN: &str = env!("CARGO_BIN_EXE_wg-agent");

fn wg_agent(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run wg-agent")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_is_shown_and_status_check_follows_readiness() {
    let agent_key = PrivateKey::generate();
    let public = agent_key.public_key().to_base64();
    let (fx, gw) = AgentFixture::start(agent_key, None).await;
    let route = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    fx.write_config(&fx.config_text("", &route, "1s"));
    let admin = fx.admin.to_string();
    let mut child = fx.spawn();
    wait_for("/readyz 200", Duration::from_secs(30), || {
        admin_get(fx.admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });

    // The startup log names the public key (never the private one).
    assert!(
        fx.log_text().contains("agent started") && fx.log_text().contains(&public),
        "{}",
        fx.log_text()
    );

    // `/status` has the interface section.
    let (_, status) = admin_get(fx.admin, "/status").expect("status");
    let doc: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(doc["agent"]["public_key"], public.as_str());
    let port = doc["agent"]["listen_port"].as_u64().expect("listen_port");
    assert!(port > 0, "the port the system picked: {doc}");

    // Probe counters are exported (no probe yet: the tunnel is busy and young).
    let (_, metrics) = admin_get(fx.admin, "/metrics").expect("metrics");
    for line in [
        "wg_agent_gateway_liveness_probes_total{gateway=\"gw1\"} 0",
        "wg_agent_gateway_liveness_probes_unanswered_total{gateway=\"gw1\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // `wg-agent status` prints it first, like `wg show`.
    let out = wg_agent(&["status", "--admin", &admin]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.starts_with(&format!(
            "agent:\n  public key: {public}\n  listening port: {port}\n  virtual ip: 10.1.0.100\n  gateways: 1 (1 up)\n"
        )),
        "{table}"
    );

    // Ready: exit 0, one line.
    let out = wg_agent(&["status", "--admin", &admin, "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ready\n");
    let out = wg_agent(&[
        "status",
        "--config",
        fx.config.to_str().expect("utf-8 path"),
        "--check",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "--config finds the admin endpoint"
    );

    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    gw.close().await;
}

#[test]
fn status_check_fails_when_no_gateway_is_up_or_nothing_answers() {
    // A gateway at a UDP port nobody serves: the agent runs, never becomes ready.
    let dir = TempDir::new();
    let key = PrivateKey::generate().to_base64_secret();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let admin = format!("127.0.0.1:{}", free_port());
    let config = "routes = []\n".to_owned()
        + &agent_section(&format!("private_key = \"{}\"", key.as_str()))
        + &gateway_section(
            "gw1",
            &PrivateKey::generate().public_key().to_base64(),
            &format!("127.0.0.1:{dead_port}"),
            "10.1.0.1",
        )
        + &format!("\n[admin]\nlisten = \"{admin}\"\n");
    let path = dir.write("agent.toml", &config, 0o600);
    let mut child = Command::new(BIN)
        .args(["run", "--config", path.to_str().expect("utf-8")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let addr = admin.parse().expect("addr");
    wait_for("/healthz", Duration::from_secs(30), || {
        admin_get(addr, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    let out = wg_agent(&["status", "--admin", &admin, "--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("not ready: no gateway is up"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    signal(&child, "-TERM");
    wait_exit(&mut child, Duration::from_secs(20));

    // Nothing listening: exit 1 too, saying where it looked.
    let out = wg_agent(&["status", "--admin", &admin, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the admin endpoint"),
        "{}",
        text(&out.stderr)
    );
    // --check and --json do not go together.
    let out = wg_agent(&["status", "--admin", &admin, "--check", "--json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn remote_admin_needs_the_opt_in_and_check_explains_it() {
    let dir = TempDir::new();
    let key = PrivateKey::generate().to_base64_secret();
    let base = agent_section(&format!("private_key = \"{}\"", key.as_str()))
        + "\n[admin]\nlisten = \"0.0.0.0:5182\"\n";
    let path = dir.write("agent.toml", &base, 0o600);
    let out = wg_agent(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("admin.listen") && err.contains("allow_remote = true"),
        "{err}"
    );
    let path = dir.write("agent.toml", &(base + "allow_remote = true\n"), 0o600);
    let out = wg_agent(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("admin 0.0.0.0:5182 (remote clients: /healthz, /readyz, /metrics)"),
        "{}",
        text(&out.stderr)
    );
}
