//! The two sides of the end-to-end comparison, each in its own pair of namespaces:
//!
//! ```text
//! gateway ns: wireguard-go 10.1.0.1/24, clients (curl, wrk, iperf3 -c)
//!      │ veth (198.18.x.y/30), WireGuard UDP
//!      ▼
//! agent ns (ours):      wg-agent 10.1.0.100:80 (http) and :5201 (tcp)  ─┐
//! agent ns (reference): wireguard-go + TUN 10.1.0.100/24, kernel TCP,   ├─> nginx 127.0.0.1:8080
//!                       nginx on 10.1.0.100:80 (http) and :5201 (stream)┘   iperf3 -s 127.0.0.1:5201
//! ```
//!
//! Both sides get the same upstream nginx (same files), the same iperf3 server and the same
//! socket-buffer sysctls in their namespaces (Debian's wireguard-go keeps the default UDP buffer
//! size, so `rmem_default`/`wmem_default` are raised to what `wg-agent` asks for).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::{
    Daemon, GatewayConfig, GatewayPeer, ImpairedRelay, Impairment, KeyPair, Netns, TempDir,
    VethPair, WireguardGo, write_private_file,
};

/// The agent's virtual IP on both sides.
pub(crate) const VIP: &str = "10.1.0.100";
/// The upstream app's port on the agent namespace's loopback.
const APP_PORT: u16 = 8080;
/// The TCP route's port (virtual IP) and iperf3's port (loopback).
pub(crate) const IPERF_PORT: u16 = 5201;
/// Socket buffer sysctls applied inside every bench namespace (what wg-core asks for).
const SOCKET_BUFFER: &str = "8388608";

/// The files the upstream app serves, in a scratch folder removed on drop.
#[derive(Debug)]
pub(crate) struct Files {
    /// `small` (100 bytes), `1m` (1 MiB), `large` (the download/upload file), and the lossy
    /// rows' files `16m` and `32m`.
    pub(crate) www: PathBuf,
    /// The large file (also the upload body).
    pub(crate) large: PathBuf,
    /// Its size.
    pub(crate) large_bytes: u64,
    /// Scratch folder of the whole run (configs, logs); removed on drop.
    pub(crate) dir: TempDir,
}

impl Files {
    /// Writes the files with pseudo-random content (not compressible, not sparse).
    pub(crate) fn create(large_bytes: u64) -> Result<Self> {
        let dir = TempDir::new("bench")?;
        let www = dir.path().join("www");
        fs::create_dir_all(&www).context("cannot create the web root")?;
        write_random(&www.join("small"), 100)?;
        write_random(&www.join("1m"), 1 << 20)?;
        for mib in [16, 32] {
            write_random(&www.join(format!("{mib}m")), mib << 20)?;
        }
        let large = www.join("large");
        write_random(&large, large_bytes)?;
        Ok(Self {
            www,
            large,
            large_bytes,
            dir,
        })
    }
}

fn write_random(path: &Path, len: u64) -> Result<()> {
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len;
    let mut left = len;
    while left > 0 {
        // xorshift64*: cheap bytes that no layer can compress.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = usize::try_from(left.min(8)).unwrap_or(8);
        file.write_all(&word[..n])?;
        left -= n as u64;
    }
    file.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Which side a [`Side`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `wg-agent`: wg-core + netstack + local-proxy in one process.
    Ours,
    /// wireguard-go + TUN + kernel TCP + nginx.
    Reference,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Reference => "reference",
        }
    }
}

/// The agent-side front: what the issue calls "the agent".
#[derive(Debug)]
enum Front {
    Ours(Daemon),
    Reference { nginx: Daemon, wg: Box<WireguardGo> },
}

/// One side, fully running. Fields drop in order: processes, the relay, then the link, then
/// namespaces.
#[derive(Debug)]
pub(crate) struct Side {
    pub(crate) kind: Kind,
    front: Front,
    _iperf: Daemon,
    _upstream: Daemon,
    /// The impaired relay between the agent side and its gateway, when the side has one.
    pub(crate) relay: Option<ImpairedRelay>,
    gateway: WireguardGo,
    _link: VethPair,
    /// Clients run here.
    pub(crate) gw_ns: Netns,
    /// The agent (or the reference) and the upstream app run here.
    pub(crate) agent_ns: Netns,
    /// From launching the agent side to the first successful request through the tunnel.
    pub(crate) startup: Duration,
    dir: PathBuf,
}

impl Side {
    /// Creates the namespaces, the gateway (`wireguard-go` at `gateway_binary`), the upstream
    /// app and iperf3, then starts the agent side and times it until the first request through
    /// the tunnel succeeds. With `relayed`, the agent side reaches its gateway through an
    /// [`ImpairedRelay`] on the agent namespace's loopback (transparent until
    /// [`ImpairedRelay::set_impairment`]).
    pub(crate) fn start(
        kind: Kind,
        files: &Files,
        agent_binary: &Path,
        gateway_binary: &Path,
        relayed: bool,
    ) -> Result<Self> {
        let label = format!("{}{}", kind.label(), if relayed { "-lossy" } else { "" });
        let dir = files.dir.path().join(&label);
        fs::create_dir_all(dir.join("tmp")).context("cannot create the side's folder")?;
        let (agent_label, gw_label) = match (kind, relayed) {
            (Kind::Ours, false) => ("bours", "bgwo"),
            (Kind::Reference, false) => ("bref", "bgwr"),
            (Kind::Ours, true) => ("blours", "blgwo"),
            (Kind::Reference, true) => ("blref", "blgwr"),
        };
        let agent_ns = Netns::new(agent_label)?;
        let gw_ns = Netns::new(gw_label)?;
        for ns in [&agent_ns, &gw_ns] {
            raise_socket_buffers(ns)?;
        }
        let link = gw_ns.veth_to(&agent_ns)?;
        let agent_key = KeyPair::generate()?;
        let gateway = WireguardGo::start_with_binary(
            &gw_ns,
            GatewayConfig::new("10.1.0.1/24")?
                .with_peer(GatewayPeer::new(&agent_key.public, &[&format!("{VIP}/32")])),
            gateway_binary,
        )?;
        let gateway_endpoint = SocketAddr::new(link.a.ip.into(), gateway.listen_port());
        let relay = if relayed {
            Some(
                ImpairedRelay::start_in(
                    &agent_ns,
                    "127.0.0.1:0".parse()?,
                    "0.0.0.0:0".parse()?,
                    gateway_endpoint,
                    Impairment {
                        // Room for a 100 ms round trip at a few hundred Mbit/s both ways: the
                        // relay's queue must not be what limits the long clean path.
                        queue_limit: 65_536,
                        seed: 12,
                        ..Impairment::default()
                    },
                )
                .context("cannot start the impaired relay")?,
            )
        } else {
            None
        };
        let endpoint = relay
            .as_ref()
            .map_or(gateway_endpoint, ImpairedRelay::local_addr);

        let upstream_conf = dir.join("upstream.conf");
        fs::write(&upstream_conf, upstream_nginx_conf(&dir, &files.www))?;
        let upstream = spawn_nginx(&agent_ns, &upstream_conf, &dir, "upstream")?;
        let iperf = agent_ns.spawn(
            "iperf3",
            ["-s", "-B", "127.0.0.1", "-p", &IPERF_PORT.to_string()],
            &dir.join("iperf3.log"),
        )?;
        wait_listening(&agent_ns, APP_PORT)?;
        wait_listening(&agent_ns, IPERF_PORT)?;

        let started = Instant::now();
        let front = match kind {
            Kind::Ours => {
                let key = dir.join("agent.key");
                write_private_file(&key, &format!("{}\n", agent_key.private))?;
                let config = dir.join("agent.toml");
                fs::write(&config, agent_conf(&gateway, endpoint))?;
                let mut command = agent_ns.command(&agent_binary.to_string_lossy());
                command.args(["run", "--config"]).arg(&config);
                Front::Ours(Daemon::spawn_command(command, &dir.join("agent.log"))?)
            }
            Kind::Reference => {
                let wg = WireguardGo::start_with_binary(
                    &agent_ns,
                    GatewayConfig {
                        key: agent_key,
                        listen_port: 51820,
                        address: format!("{VIP}/24"),
                        peers: vec![
                            GatewayPeer::new(gateway.public_key(), &["10.1.0.0/24"])
                                .with_endpoint(endpoint)
                                .with_keepalive(25),
                        ],
                    },
                    gateway_binary,
                )?;
                let conf = dir.join("front.conf");
                fs::write(&conf, reference_nginx_conf(&dir))?;
                let nginx = spawn_nginx(&agent_ns, &conf, &dir, "front")?;
                Front::Reference {
                    nginx,
                    wg: Box::new(wg),
                }
            }
        };
        let mut side = Self {
            kind,
            front,
            _iperf: iperf,
            _upstream: upstream,
            relay,
            gateway,
            _link: link,
            gw_ns,
            agent_ns,
            startup: Duration::ZERO,
            dir,
        };
        side.startup = side.wait_first_request(started, Duration::from_secs(30))?;
        Ok(side)
    }

    /// The agent side's processes: `wg-agent`, or wireguard-go plus nginx's master and workers
    /// (the upstream app and iperf3 are the same on both sides and not counted).
    pub(crate) fn agent_pids(&self) -> Vec<u32> {
        match &self.front {
            Front::Ours(daemon) => daemon.pid().into_iter().collect(),
            Front::Reference { nginx, wg } => {
                let mut pids: Vec<u32> = wg.pid().into_iter().collect();
                if let Some(master) = nginx.pid() {
                    pids.push(master);
                    pids.extend(crate::bench::measure::children(master));
                }
                pids
            }
        }
    }

    /// The gateway's wireguard-go process.
    pub(crate) fn gateway_pids(&self) -> Vec<u32> {
        self.gateway.pid().into_iter().collect()
    }

    /// UDP receive-buffer drops so far in both namespaces of this side.
    pub(crate) fn udp_drops(&self) -> u64 {
        crate::bench::measure::udp_rcvbuf_drops(&self.gw_ns)
            + crate::bench::measure::udp_rcvbuf_drops(&self.agent_ns)
    }

    /// The URL of a file on the virtual IP.
    pub(crate) fn url(path: &str) -> String {
        format!("http://{VIP}/{path}")
    }

    /// Logs of the agent side, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["agent.log", "front.err", "upstream.err", "iperf3.log"] {
            if let Ok(log) = fs::read_to_string(self.dir.join(name)) {
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                text.push_str(&format!("--- {} {name}:\n", self.kind.label()));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text.push_str(&format!("--- gateway: {}\n", self.gateway.log()));
        text
    }

    fn wait_first_request(&self, started: Instant, timeout: Duration) -> Result<Duration> {
        let target: SocketAddr = format!("{VIP}:80").parse()?;
        while started.elapsed() < timeout {
            if let Ok(mut stream) = self.gw_ns.connect_tcp(target, Duration::from_millis(100)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let ok = stream
                    .write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .is_ok()
                    && {
                        let mut answer = Vec::new();
                        let _ = stream.read_to_end(&mut answer);
                        answer.starts_with(b"HTTP/1.1 200")
                    };
                if ok {
                    return Ok(started.elapsed());
                }
            }
            if let Front::Ours(daemon) = &self.front
                && daemon
                    .pid()
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            {
                bail!("wg-agent exited during start-up:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!(
            "{}: no successful request through the tunnel within {timeout:?}\n{}",
            self.kind.label(),
            self.logs()
        )
    }
}

fn raise_socket_buffers(ns: &Netns) -> Result<()> {
    let mut args = vec!["-q".to_owned(), "-w".to_owned()];
    for key in ["rmem_max", "wmem_max", "rmem_default", "wmem_default"] {
        args.push(format!("net.core.{key}={SOCKET_BUFFER}"));
    }
    ns.run("sysctl", &args)
        .with_context(|| format!("cannot raise socket buffers in {}", ns.name()))?;
    Ok(())
}

fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run("ss", ["-Hltn", &format!("sport = :{port}")])?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} in {} after 10 s", ns.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_nginx(ns: &Netns, conf: &Path, dir: &Path, name: &str) -> Result<Daemon> {
    let conf = conf.to_string_lossy().into_owned();
    let prefix = format!("{}/", dir.display());
    let err = dir
        .join(format!("{name}.err"))
        .to_string_lossy()
        .into_owned();
    ns.spawn(
        "nginx",
        ["-c", &conf, "-p", &prefix, "-e", &err],
        &dir.join(format!("{name}.log")),
    )
}

/// Settings both nginx instances share: foreground, root (the scratch folder is 0700), logs and
/// temp files in the side's folder, no access log.
fn nginx_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "user root;\ndaemon off;\nworker_processes auto;\nworker_rlimit_nofile 16384;\n\
         pid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n\
         events {{ worker_connections 8192; }}\n"
    )
}

fn nginx_http_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         \x20 keepalive_requests 1000000;\n  keepalive_timeout 120s;\n"
    )
}

/// The upstream app (same on both sides): static files, and `/upload`, which reads and
/// discards any body and answers 204.
fn upstream_nginx_conf(dir: &Path, www: &Path) -> String {
    format!(
        "{}http {{\n{}  sendfile on;\n  tcp_nopush on;\n  server {{\n    listen 127.0.0.1:{APP_PORT} backlog=4096;\n\
         \x20   root {};\n    location = /upload {{ client_max_body_size 0; return 204; }}\n  }}\n}}\n",
        nginx_common(dir, "upstream"),
        nginx_http_common(dir),
        www.display()
    )
}

/// The reference's front: nginx on the virtual IP proxying HTTP (streaming both ways, pooled
/// upstream connections) and a stream proxy for the TCP route.
fn reference_nginx_conf(dir: &Path) -> String {
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{}http {{\n{}\
         \x20 upstream app {{ server 127.0.0.1:{APP_PORT}; keepalive 64; }}\n\
         \x20 server {{\n    listen {VIP}:80 backlog=4096;\n    client_max_body_size 0;\n\
         \x20   proxy_request_buffering off;\n    proxy_max_temp_file_size 0;\n\
         \x20   location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         \x20 }}\n}}\nstream {{\n  server {{ listen {VIP}:{IPERF_PORT}; proxy_pass 127.0.0.1:{IPERF_PORT}; }}\n}}\n",
        nginx_common(dir, "front"),
        nginx_http_common(dir),
    )
}

/// `wg-agent`'s config: one gateway, the HTTP route and the TCP route, warnings only.
fn agent_conf(gateway: &WireguardGo, endpoint: SocketAddr) -> String {
    format!(
        "[uapi]\nname = \"bench{:x}\"\n\n[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = \"{VIP}\"\nsubnet = \"10.1.0.0/24\"\n\n\
         [[gateways]]\nid = \"gw\"\npublic_key = \"{}\"\nendpoint = \"{endpoint}\"\nvirtual_ip = \"10.1.0.1\"\n\n\
         [[routes]]\nport = 80\nupstream = \"127.0.0.1:{APP_PORT}\"\nprotocol = \"http\"\n\n\
         [[routes]]\nport = {IPERF_PORT}\nupstream = \"127.0.0.1:{IPERF_PORT}\"\nprotocol = \"tcp\"\n\n\
         [admin]\nlisten = \"127.0.0.1:9090\"\n\n[log]\nlevel = \"warn\"\n",
        std::process::id(),
        gateway.public_key()
    )
}
