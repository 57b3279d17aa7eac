//! The real `wg-agent run` process against an in-process gateway on loopback: its files, its
//! config, its admin endpoint, signals and exit.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent::manager::Manager;
use wg_core::{PresharedKey, PrivateKey};

use super::files::{TempDir, agent_section, gateway_section};
use super::{GW_VIP, gateway_config, start_app, udp_port};

/// An agent's folder (key file, config, logs), the gateway it dials and the app it serves.
pub(crate) struct AgentFixture {
    /// Removed on drop.
    dir: TempDir,
    pub(crate) config: PathBuf,
    /// The process's stderr: its log.
    pub(crate) log: PathBuf,
    /// The process's stdout.
    pub(crate) out: PathBuf,
    pub(crate) admin: SocketAddr,
    pub(crate) agent_key: PrivateKey,
    pub(crate) gateway_key: PrivateKey,
    pub(crate) gateway_port: u16,
    pub(crate) app: SocketAddr,
}

impl AgentFixture {
    /// Starts the gateway (knowing `agent_key` and `preshared_key`) and the app, and writes
    /// the agent's key file (mode 600); the config is the test's to write.
    pub(crate) async fn start(
        agent_key: PrivateKey,
        preshared_key: Option<PresharedKey>,
    ) -> (Self, Manager) {
        let dir = TempDir::new();
        let key_path = dir.write(
            "agent.key",
            &format!("{}\n", agent_key.to_base64_secret().as_str()),
            0o600,
        );
        let gateway_key = PrivateKey::generate();
        let mut config = gateway_config(&gateway_key, GW_VIP, &agent_key);
        config.gateways[0].preshared_key = preshared_key;
        let gw = Manager::start(config).await.expect("gateway starts");
        let fixture = Self {
            config: key_path.with_file_name("agent.toml"),
            log: key_path.with_file_name("agent.log"),
            out: key_path.with_file_name("agent.out"),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            gateway_port: udp_port(&gw),
            app: start_app().await,
            dir,
            agent_key,
            gateway_key,
        };
        (fixture, gw)
    }

    /// The agent's config: its key file, gateway `gw1` (plus `gateway_extra` lines), `routes`,
    /// the drain timeout and the admin endpoint.
    pub(crate) fn config_text(&self, gateway_extra: &str, routes: &str, drain: &str) -> String {
        let endpoint = format!("127.0.0.1:{}", self.gateway_port);
        let gateway = gateway_section(
            "gw1",
            &self.gateway_key.public_key().to_base64(),
            &endpoint,
            "10.1.0.1",
        );
        format!(
            "{}{gateway}{gateway_extra}\n{routes}\n[proxy]\ndrain_timeout = \"{drain}\"\n\n\
             [admin]\nlisten = \"{}\"\n",
            agent_section("private_key_file = \"agent.key\""),
            self.admin,
        )
    }

    /// Writes the config file (mode 600).
    pub(crate) fn write_config(&self, text: &str) {
        self.dir.write("agent.toml", text, 0o600);
    }

    /// `wg-agent run` at `--log-level trace`, stdout and stderr to files.
    pub(crate) fn spawn(&self) -> Child {
        self.spawn_with_env(&[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub(crate) fn spawn_with_env(&self, env: &[(&str, &str)]) -> Child {
        self.spawn_args(&["--log-level", "trace"], env)
    }

    /// `wg-agent run --config FILE ARGS...` with extra environment variables.
    pub(crate) fn spawn_args(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_wg-agent"))
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&self.out).expect("stdout file"))
            .stderr(std::fs::File::create(&self.log).expect("log file"))
            .spawn()
            .expect("start wg-agent")
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn out_text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One HTTP/1.1 request over plain TCP to the admin endpoint: (status, the whole response).
pub(crate) fn admin_get_raw(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// [`admin_get_raw`], with the body only.
pub(crate) fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let (status, text) = admin_get_raw(addr, path)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// `kill SIG PID`.
pub(crate) fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Polls `ok` every 50 ms until it holds; fails after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the process to exit; after `timeout` kills it and fails.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
