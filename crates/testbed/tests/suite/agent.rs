//! The `wg-agent` binary as an operator runs it: a config file with a 0600 key file, `wg-agent
//! run` inside the agent's namespace (detached, stopped on drop), its admin endpoint on the
//! namespace's loopback, `wg-agent status --json`, `SIGHUP` reloads.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use testbed::{Daemon, KeyPair, Netns, TempDir, write_private_file};

use super::{AGENT_VIP, AGENT_VIP6, SUBNET, SUBNET6, poll_until};

/// The admin endpoint inside the agent's namespace (each namespace has its own loopback).
pub(crate) const ADMIN_ADDR: &str = "127.0.0.1:9090";

/// One `[[gateways]]` entry.
#[derive(Debug, Clone)]
pub(crate) struct AgentGateway {
    pub(crate) id: String,
    pub(crate) public_key: String,
    pub(crate) endpoint: SocketAddr,
    pub(crate) virtual_ip: String,
    /// `allowed_ips` (empty: the default, `virtual_ip`/32).
    pub(crate) allowed_ips: Vec<String>,
}

/// Settings of the agent beyond its gateways.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentOptions {
    /// `[agent] listen_port` (default: any).
    pub(crate) listen_port: Option<u16>,
    /// More config text, appended at the end (`[[routes]]` tables: with any, the default
    /// HTTP route is gone).
    pub(crate) extra: String,
    /// The admin endpoint on every address of the namespace (`0.0.0.0:9090`) with
    /// `allow_remote = true`, instead of [`ADMIN_ADDR`] only (still reached there).
    pub(crate) admin_remote: bool,
    /// `virtual_ip` and `subnet` list an IPv6 address and prefix too (`AGENT_VIP6`,
    /// `SUBNET6`): dual stack inside the tunnel.
    pub(crate) dual_stack: bool,
}

/// The `wg-agent` binary next to the test binary (`<target>/<profile>/wg-agent`), built with
/// `cargo build -p agent --bin wg-agent` when it is missing or older than the sources of the
/// agent and its crates. Under `cargo nextest run --workspace` it is already built and fresh.
pub(crate) fn agent_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_or_build() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    let binary = profile_dir.join("wg-agent");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let newest_source = ["agent", "wg-core", "netstack", "local-proxy"]
        .iter()
        .map(|c| newest_mtime(&workspace.join("crates").join(c)))
        .max()
        .flatten();
    let stale = match (built, newest_source) {
        (None, _) => true,
        (Some(built), Some(source)) => source > built,
        (Some(_), None) => false,
    };
    if stale {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(&workspace)
            .args(["build", "-p", "agent", "--bin", "wg-agent"]);
        if profile != "debug" {
            command.args(["--profile", profile]);
        }
        eprintln!("suite: building wg-agent ({profile}), it is missing or older than its sources");
        let status = command.status().context("cannot run cargo build")?;
        if !status.success() {
            bail!("`cargo build -p agent --bin wg-agent` failed: {status}");
        }
    }
    if !binary.exists() {
        bail!("{} does not exist after the build", binary.display());
    }
    Ok(binary)
}

/// The newest modification time of the `.rs` and `.toml` files under `dir`.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml")
                && let Ok(modified) = entry.metadata().and_then(|m| m.modified())
            {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// A running `wg-agent run` inside `ns`.
pub(crate) struct AgentProcess<'a> {
    ns: &'a Netns,
    binary: PathBuf,
    daemon: Daemon,
    config: PathBuf,
    options: AgentOptions,
    uapi_name: String,
    dir: TempDir,
}

impl<'a> AgentProcess<'a> {
    /// Writes the key and the config, starts the agent (it is not ready yet: see
    /// [`wait_ready`](Self::wait_ready)).
    pub(crate) fn start(
        ns: &'a Netns,
        key: &KeyPair,
        gateways: &[AgentGateway],
        options: AgentOptions,
    ) -> Result<Self> {
        let binary = agent_binary()?;
        let dir = TempDir::new("agent")?;
        write_private_file(&dir.path().join("agent.key"), &format!("{}\n", key.private))?;
        let config = dir.path().join("agent.toml");
        let uapi_name = unique_uapi_name();
        std::fs::write(&config, config_text(gateways, &options, &uapi_name))?;
        let log = dir.path().join("agent.log");
        let config_arg = config.to_string_lossy().into_owned();
        let daemon = ns.spawn(
            &binary.to_string_lossy(),
            ["run", "--config", &config_arg, "--log-level", "debug"],
            &log,
        )?;
        Ok(Self {
            ns,
            binary,
            daemon,
            config,
            options,
            uapi_name,
            dir,
        })
    }

    /// `[uapi] name`: `wg show NAME` reads this agent.
    pub(crate) fn uapi_name(&self) -> &str {
        &self.uapi_name
    }

    /// The agent's pid.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// Whether the process still runs.
    pub(crate) fn running(&mut self) -> bool {
        self.daemon.try_wait().is_none()
    }

    /// The agent's log so far.
    pub(crate) fn log(&self) -> String {
        self.daemon.log()
    }

    /// Rewrites the config file with these gateways and sends `SIGHUP`.
    pub(crate) fn reload(&mut self, gateways: &[AgentGateway]) -> Result<()> {
        std::fs::write(
            &self.config,
            config_text(gateways, &self.options, &self.uapi_name),
        )?;
        if !self.running() {
            bail!("the agent is not running:\n{}", self.log());
        }
        self.daemon.signal("HUP");
        Ok(())
    }

    /// One `GET path` on the admin endpoint: (status code, body).
    pub(crate) fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let addr: SocketAddr = ADMIN_ADDR.parse()?;
        let mut stream = self.ns.connect_tcp(addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad admin answer to {path}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Waits until `/readyz` answers 200 (a gateway is up).
    pub(crate) fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        poll_until("/readyz 200", timeout, Duration::from_millis(100), || {
            matches!(self.admin_get("/readyz"), Ok((200, _))).then_some(())
        })
        .map(|((), t)| t)
        .with_context(|| format!("agent log:\n{}", tail(&self.log(), 40)))
    }

    /// `/metrics` text.
    pub(crate) fn metrics(&self) -> Result<String> {
        let (status, body) = self.admin_get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// `wg-agent status --admin ADDR --json`, run inside the namespace like an operator would.
    pub(crate) fn status_json(&self) -> Result<serde_json::Value> {
        let out = self.ns.run(
            &self.binary.to_string_lossy(),
            ["status", "--admin", ADMIN_ADDR, "--json"],
        )?;
        serde_json::from_str(&out).with_context(|| format!("status --json printed {out:?}"))
    }

    /// The `wg-agent` binary it runs.
    pub(crate) fn binary(&self) -> &Path {
        &self.binary
    }

    /// `wg-agent status --admin ADDR` (the table), run inside the namespace.
    pub(crate) fn status_table(&self) -> Result<String> {
        self.ns.run(
            &self.binary.to_string_lossy(),
            ["status", "--admin", ADMIN_ADDR],
        )
    }

    /// The scratch folder (config, key, log).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for AgentProcess<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log (last lines) ---\n{}", tail(&self.log(), 60));
        }
        self.daemon.stop();
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The UAPI socket directory is shared by every namespace: a name unique to this process
/// (kept across reloads: a changed name would wait for a restart).
fn unique_uapi_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("tb{:x}-{n:x}", std::process::id())
}

fn config_text(gateways: &[AgentGateway], options: &AgentOptions, uapi_name: &str) -> String {
    let (virtual_ip, subnet) = if options.dual_stack {
        (
            format!("[\"{AGENT_VIP}\", \"{AGENT_VIP6}\"]"),
            format!("[\"{SUBNET}\", \"{SUBNET6}\"]"),
        )
    } else {
        (format!("\"{AGENT_VIP}\""), format!("\"{SUBNET}\""))
    };
    let mut text = format!(
        "[uapi]\nname = \"{uapi_name}\"\n\n[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = {virtual_ip}\nsubnet = {subnet}\n"
    );
    if let Some(port) = options.listen_port {
        let _ = writeln!(text, "listen_port = {port}");
    }
    for gw in gateways {
        let _ = write!(
            text,
            "\n[[gateways]]\nid = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{}\"\nvirtual_ip = \"{}\"\n",
            gw.id, gw.public_key, gw.endpoint, gw.virtual_ip
        );
        if !gw.allowed_ips.is_empty() {
            let quoted: Vec<String> = gw.allowed_ips.iter().map(|n| format!("\"{n}\"")).collect();
            let _ = writeln!(text, "allowed_ips = [{}]", quoted.join(", "));
        }
    }
    let _ = write!(text, "\n[proxy]\ndrain_timeout = \"2s\"\n\n[admin]\n");
    if options.admin_remote {
        let port = ADMIN_ADDR.rsplit_once(':').map_or("9090", |(_, p)| p);
        let _ = writeln!(text, "listen = \"0.0.0.0:{port}\"\nallow_remote = true");
    } else {
        let _ = writeln!(text, "listen = \"{ADMIN_ADDR}\"");
    }
    text.push_str(&options.extra);
    text
}
