//! Reloads are all or nothing and say what they did not apply: a failure changes nothing
//! (key, routes, stored config), restart-only settings stay reported until a restart, the
//! tracker's settings are applied or reported, `[log] level` applies live, and `SIGHUP` is
//! handled from before `READY=1`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use agent::Agent;
use agent::config::Config;
use common::files::{TempDir, agent_section, gateway_section};
use common::process::{AgentFixture, signal, wait_exit, wait_for};
use common::{GW_VIP, http_get, start_app, start_gateway, udp_port};
use tokio::io::AsyncWriteExt as _;
use wg_core::PrivateKey;

struct Setup {
    dir: TempDir,
    path: PathBuf,
    agent_key: PrivateKey,
    gateway_key: PrivateKey,
    gateway_port: u16,
    app: std::net::SocketAddr,
}

impl Setup {
    fn text(&self, key: &PrivateKey, agent_extra: &str, ports: &[u16], rest: &str) -> String {
        let mut text = agent_section(&format!(
            "private_key = \"{}\"",
            key.to_base64_secret().as_str()
        ));
        text += agent_extra;
        text += &gateway_section(
            "gw1",
            &self.gateway_key.public_key().to_base64(),
            &format!("127.0.0.1:{}", self.gateway_port),
            "10.1.0.1",
        );
        for port in ports {
            text += &format!("\n[[routes]]\nport = {port}\nupstream = \"{}\"\n", self.app);
        }
        text += "\n[admin]\nlisten = \"off\"\n";
        text += rest;
        text
    }

    fn write(&self, text: &str) {
        self.dir.write("agent.toml", text, 0o600);
    }
}

async fn setup() -> (Setup, agent::manager::Manager) {
    let agent_key = PrivateKey::generate();
    let gateway_key = PrivateKey::generate();
    let gw = start_gateway(&gateway_key, GW_VIP, &agent_key).await;
    let dir = TempDir::new();
    let path = dir.write("agent.toml", "", 0o600);
    let setup = Setup {
        path,
        dir,
        agent_key,
        gateway_port: udp_port(&gw),
        gateway_key,
        app: start_app().await,
    };
    (setup, gw)
}

async fn start(s: &Setup, text: &str) -> Agent {
    s.write(text);
    Agent::start(Config::load(&s.path).expect("valid config"))
        .await
        .expect("agent starts")
}

fn ports(agent: &Agent) -> Vec<u16> {
    agent.snapshot().routes.iter().map(|r| r.port).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_listen_refuses_the_whole_reload_and_keeps_the_key() {
    let (s, gw) = setup().await;
    let agent = start(&s, &s.text(&s.agent_key, "", &[80], "")).await;
    let before = agent.config();
    // Something else holds port 81 on the virtual IP: the new file's route there cannot start.
    let _taken = agent.manager().listen(81).expect("listen 81");
    let new_key = PrivateKey::generate();
    s.write(&s.text(&new_key, "", &[80, 81, 82], ""));
    let outcome = agent.reload().await;
    assert!(outcome.is_err(), "the reload must be refused: {outcome:?}");
    assert_eq!(
        agent.manager().public_key(),
        s.agent_key.public_key(),
        "the key was replaced by a refused reload"
    );
    assert_eq!(
        ports(&agent),
        [80],
        "/status lists routes that do not serve"
    );
    assert_eq!(
        agent.config(),
        before,
        "the stored config is not the running one"
    );
    // Route 80 still serves.
    let resp = http_get(&gw, 80, "/after").await.expect("route 80");
    assert!(resp.ends_with("app:/after"), "{resp}");
    agent.stop().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_settings_stay_reported_until_a_restart() {
    let (s, gw) = setup().await;
    let agent = start(&s, &s.text(&s.agent_key, "", &[80], "")).await;
    s.write(&s.text(
        &s.agent_key,
        "mtu = 1380\nlisten_port = 0\n",
        &[80],
        "\n[log]\nformat = \"json\"\n",
    ));
    for round in 0..2 {
        let changes = agent.reload().await.expect("reload");
        for field in ["agent.mtu", "log.format"] {
            assert!(
                changes.needs_restart.contains(&field),
                "round {round}: `{field}` not reported as needing a restart: {changes}"
            );
        }
    }
    assert_eq!(agent.config().agent.mtu, 1420, "mtu stored as applied");
    agent.stop().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_address_family_waits_for_a_restart_like_virtual_ip() {
    let (s, gw) = setup().await;
    let agent = start(&s, &s.text(&s.agent_key, "", &[80], "")).await;
    let dual = s
        .text(&s.agent_key, "", &[80], "")
        .replace(
            "virtual_ip = \"10.1.0.100\"",
            "virtual_ip = [\"10.1.0.100\", \"fd00::100\"]",
        )
        .replace(
            "subnet = \"10.1.0.0/24\"",
            "subnet = [\"10.1.0.0/24\", \"fd00::/64\"]",
        );
    assert!(dual.contains("fd00::100"), "{dual}");
    s.write(&dual);
    for round in 0..2 {
        let changes = agent.reload().await.expect("reload");
        // (Each `Setup::text` also names a fresh `[uapi] name`, restart-only as well.)
        for field in ["agent.virtual_ip", "agent.subnet"] {
            assert!(
                changes.needs_restart.contains(&field),
                "round {round}: `{field}` not reported as needing a restart: {changes}"
            );
        }
    }
    let running = ["10.1.0.100".parse::<std::net::IpAddr>().expect("address")];
    assert_eq!(agent.manager().virtual_ips(), running);
    assert_eq!(
        agent.snapshot().virtual_ips,
        running,
        "/status shows what runs"
    );
    assert_eq!(
        agent.config().agent.virtual_ips,
        running,
        "stored as applied"
    );
    let resp = http_get(&gw, 80, "/after").await.expect("route 80");
    assert!(resp.ends_with("app:/after"), "{resp}");
    agent.stop().await;
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_settings_are_applied_or_reported() {
    let (s, gw) = setup().await;
    let agent = start(
        &s,
        &s.text(
            &s.agent_key,
            "",
            &[80],
            "\n[proxy]\ndrain_timeout = \"1h\"\n",
        ),
    )
    .await;
    s.write(&s.text(
        &s.agent_key,
        "",
        &[80],
        "\n[proxy]\ndrain_timeout = \"0s\"\nmax_connections = 10\n",
    ));
    let changes = agent.reload().await.expect("reload");
    assert!(
        changes.needs_restart.contains(&"proxy.max_connections"),
        "{changes}"
    );
    // A connection that never sends its request: the drain must follow the new 0 s timeout,
    // not the 1 h it started with.
    let target = std::net::SocketAddr::from((common::AGENT_VIP, 80));
    let mut open = gw.dial_tcp(target).await.expect("connect");
    open.write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("partial head");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), agent.stop()).await;
    assert!(stopped.is_ok(), "stop waited for the old 1 h drain timeout");
    gw.close().await;
}

/// `[log] level` applies on reload, and `SIGHUP` right after `READY=1` reloads rather than
/// kills (the `slow-after-ready` hook holds the process just after it sends `READY=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_after_ready_reloads_and_applies_the_log_level() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let route = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    let config =
        |level: &str| fx.config_text("", &route, "1s") + &format!("\n[log]\nlevel = \"{level}\"\n");
    fx.write_config(&config("info"));
    let dir = TempDir::new();
    let notify_path = dir.write("notify", "", 0o600);
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let notify_env = notify_path.to_string_lossy().into_owned();
    let mut child = fx.spawn_args(
        &[],
        &[
            ("NOTIFY_SOCKET", notify_env.as_str()),
            ("WG_AGENT_TEST_HOOK", "slow-after-ready"),
        ],
    );
    let mut buf = [0u8; 256];
    loop {
        let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
        if &buf[..n] == b"READY=1" {
            break;
        }
    }
    fx.write_config(&config("debug"));
    signal(&child, "-HUP");
    wait_for("the reload in the log", Duration::from_secs(15), || {
        fx.log_text().contains("config reloaded")
    });
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP killed the agent"
    );
    // A malformed request makes local-proxy log at debug level.
    let target = std::net::SocketAddr::from((common::AGENT_VIP, 80));
    let mut s = gw.dial_tcp(target).await.expect("connect");
    s.write_all(b"NOT HTTP\r\n\r\n").await.expect("write");
    wait_for(
        "a debug line after the reload",
        Duration::from_secs(15),
        || fx.log_text().contains("DEBUG"),
    );
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(15)).code(),
        Some(0)
    );
    gw.close().await;
}
