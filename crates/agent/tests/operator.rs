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
    // Listening on every address by opt-in: local clients still get everything, and
    // `status --config` reaches an unspecified address on loopback.
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let config = "routes = []\n".to_owned()
        + &agent_section(&format!("private_key = \"{}\"", key.as_str()))
        + &gateway_section(
            "gw1",
            &PrivateKey::generate().public_key().to_base64(),
            &format!("127.0.0.1:{dead_port}"),
            "10.1.0.1",
        )
        + &format!("\n[admin]\nlisten = \"0.0.0.0:{port}\"\nallow_remote = true\n");
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
    let (code, status) = admin_get(addr, "/status").expect("/status");
    assert_eq!(code, 200, "a loopback client gets /status: {status}");
    let out = wg_agent(&[
        "status",
        "--config",
        path.to_str().expect("utf-8"),
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not ready"),
        "{}",
        text(&out.stderr)
    );
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

/// A wg-quick client file as wg-easy or a hand-written setup has it.
fn realistic_wg_quick(agent_private: &str, gw1: &str, gw2: &str, psk: &str) -> String {
    format!(
        "# wg0.conf on the laptop\n\
         [Interface]\n\
         PrivateKey = {agent_private}\n\
         Address = 10.1.0.100/24, fd00:1::100/64\n\
         ListenPort = 51821\n\
         MTU = 1380\n\
         DNS = 10.1.0.1, example.internal\n\
         Table = off\n\
         PostUp = ip rule add table 200 from 10.1.0.100\n\
         PostDown = ip rule del table 200 from 10.1.0.100\n\
         \n\
         [Peer]\n\
         # Name = tokyo\n\
         PublicKey = {gw1}\n\
         PresharedKey = {psk}\n\
         Endpoint = gw1.example.net:51820\n\
         AllowedIPs = 10.1.0.1/32\n\
         PersistentKeepalive = 25\n\
         \n\
         [Peer]\n\
         PublicKey = {gw2}\n\
         Endpoint = 203.0.113.7:51820\n\
         AllowedIPs = 10.1.0.0/24, 192.168.50.0/24\n"
    )
}

#[test]
fn import_writes_a_config_that_passes_check() {
    let dir = TempDir::new();
    let agent = PrivateKey::generate();
    let secret = agent.to_base64_secret();
    let gw1 = PrivateKey::generate().public_key().to_base64();
    let gw2 = PrivateKey::generate().public_key().to_base64();
    let psk = PrivateKey::generate().to_base64_secret();
    let wg0 = dir.write(
        "wg0.conf",
        &realistic_wg_quick(secret.as_str(), &gw1, &gw2, psk.as_str()),
        0o600,
    );
    let wg0 = wg0.to_str().expect("utf-8");

    // `check` and `run` point at `import`.
    for cmd in ["check", "run"] {
        let out = wg_agent(&[cmd, "--config", wg0]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("this is a wg-quick file: run wg-agent import"),
            "{cmd}: {err}"
        );
        assert!(
            !err.contains(secret.as_str()),
            "{cmd}: no key in the message"
        );
    }

    let out = wg_agent(&["import", wg0, "--route", "80=127.0.0.1:8080"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    let notes = text(&out.stderr);
    assert!(
        toml.contains("virtual_ip = [\"10.1.0.100\", \"fd00:1::100\"]"),
        "both addresses carried (dual stack): {toml}"
    );
    for expected in [
        "DNS ignored",
        "Table ignored",
        "PostUp ignored",
        "PostDown ignored",
        "virtual_ip 10.1.0.2 is a guess",
    ] {
        assert!(notes.contains(expected), "{expected:?} in\n{notes}");
    }
    assert!(!notes.contains(secret.as_str()) && !notes.contains(psk.as_str()));
    assert!(
        toml.contains("id = \"tokyo\"") && toml.contains("id = \"gw2\""),
        "{toml}"
    );
    let imported = dir.write("agent.toml", &toml, 0o600);
    let out = wg_agent(&["check", "--config", imported.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}\n{toml}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ok (2 gateways, 1 route"),
        "{}",
        text(&out.stderr)
    );
    // No peer routes IPv6 back: `check` says so.
    assert!(
        text(&out.stderr).contains("no gateway has an IPv6 prefix in allowed_ips"),
        "{}",
        text(&out.stderr)
    );

    // --key-file: the key goes to a new 0600 file, the config names it.
    let key_path = dir
        .write("placeholder", "", 0o600)
        .with_file_name("agent.key");
    let key_arg = key_path.to_str().expect("utf-8");
    let out = wg_agent(&["import", wg0, "--key-file", key_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(!toml.contains(secret.as_str()), "{toml}");
    assert!(
        toml.contains(&format!("private_key_file = \"{key_arg}\"")),
        "{toml}"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(&key_path).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read_to_string(&key_path).expect("key").trim(),
        secret.as_str()
    );
    let imported = dir.write("agent2.toml", &toml, 0o644);
    let out = wg_agent(&["check", "--config", imported.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // An existing key file is never overwritten.
    let out = wg_agent(&["import", wg0, "--key-file", key_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exists"),
        "{}",
        text(&out.stderr)
    );

    // Usage errors.
    for bad in ["80", "x=127.0.0.1:1", "0=127.0.0.1:1", "80=nowhere"] {
        let out = wg_agent(&["import", wg0, "--route", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    let out = wg_agent(&["import", "/nonexistent/wg0.conf"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn completions_and_man_page() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wg-agent"),
        ("fish", "complete -c wg-agent"),
    ] {
        let out = wg_agent(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script:.300}");
        assert!(
            script.contains("import") && script.contains("status"),
            "{shell}"
        );
    }
    let out = wg_agent(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let out = wg_agent(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH wg-agent"),
        "{page:.300}"
    );
    for section in [
        ".SS \"wg\\-agent run \"",
        ".SS \"wg\\-agent import \\fIWG_QUICK_FILE\\fR\"",
        "\\fB\\-\\-route\\fR \\fIPORT=HOST:PORT\\fR",
        "\\fB\\-\\-check\\fR",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(page.contains(section), "{section} in the man page:\n{page}");
    }
}
