//! A real WireGuard gateway: `wireguard-go` in a network namespace, configured with `wg` and
//! `ip`, inspected with `wg show IF dump`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::{TempDir, run, run_command, run_with_input, write_private_file};
use crate::daemon::Daemon;
use crate::netns::Netns;

/// Where wireguard-go puts its control sockets; shared by all network namespaces.
pub const CONTROL_DIR: &str = "/run/wireguard";

/// A WireGuard key pair as `wg genkey` / `wg pubkey` print them (base64).
#[derive(Clone)]
pub struct KeyPair {
    /// The private key, base64. Test keys only.
    pub private: String,
    /// The public key, base64.
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair from `wg genkey` and `wg pubkey`.
    pub fn generate() -> Result<Self> {
        let private = run("wg", ["genkey"])?.trim().to_owned();
        let public = public_key_of(&private)?;
        Ok(Self { private, public })
    }
}

/// The public key (base64) of a base64 private key, computed by `wg pubkey`.
pub fn public_key_of(private: &str) -> Result<String> {
    let out = run_with_input(Command::new("wg").arg("pubkey"), &format!("{private}\n"))?;
    Ok(out.trim().to_owned())
}

/// A peer as the gateway is told about it with `wg set`.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayPeer {
    /// The peer's public key (base64).
    pub public_key: String,
    /// Allowed IPs, e.g. `["10.1.0.100/32"]`.
    pub allowed_ips: Vec<String>,
    /// The peer's endpoint, if the gateway should dial it (agents behind NAT have none).
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Preshared key (base64), if any; never printed by `Debug`.
    pub preshared_key: Option<String>,
}

impl std::fmt::Debug for GatewayPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPeer")
            .field("public_key", &self.public_key)
            .field("allowed_ips", &self.allowed_ips)
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field(
                "preshared_key",
                &self.preshared_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A fresh preshared key (base64) from `wg genpsk`.
pub fn generate_preshared_key() -> Result<String> {
    Ok(run("wg", ["genpsk"])?.trim().to_owned())
}

impl GatewayPeer {
    /// A peer with these allowed IPs, no endpoint, no keepalive.
    pub fn new(public_key: &str, allowed_ips: &[&str]) -> Self {
        Self {
            public_key: public_key.to_owned(),
            allowed_ips: allowed_ips.iter().map(|s| (*s).to_owned()).collect(),
            endpoint: None,
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    /// Sets the endpoint.
    pub fn with_endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Sets persistent keepalive (seconds).
    pub fn with_keepalive(mut self, seconds: u16) -> Self {
        self.persistent_keepalive = Some(seconds);
        self
    }

    /// Sets the preshared key (base64).
    pub fn with_preshared_key(mut self, key: &str) -> Self {
        self.preshared_key = Some(key.to_owned());
        self
    }

    /// `wg set` arguments; a preshared key is written to a 0600 file in `dir` (wg reads keys
    /// from files only).
    fn wg_set_args_with_files(&self, dir: &Path) -> Result<Vec<String>> {
        let mut args = self.wg_set_args();
        if let Some(psk) = &self.preshared_key {
            let name: String = self
                .public_key
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let file = dir.join(format!("psk-{name}.key"));
            write_private_file(&file, psk)?;
            args.extend([
                "preshared-key".to_owned(),
                file.to_string_lossy().into_owned(),
            ]);
        }
        Ok(args)
    }

    fn wg_set_args(&self) -> Vec<String> {
        let mut args = vec![
            "peer".to_owned(),
            self.public_key.clone(),
            "allowed-ips".to_owned(),
            self.allowed_ips.join(","),
        ];
        if let Some(endpoint) = self.endpoint {
            args.extend(["endpoint".to_owned(), endpoint.to_string()]);
        }
        if let Some(keepalive) = self.persistent_keepalive {
            args.extend(["persistent-keepalive".to_owned(), keepalive.to_string()]);
        }
        args
    }
}

/// How to start a [`WireguardGo`] gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The gateway's key pair.
    pub key: KeyPair,
    /// UDP listen port (inside its namespace).
    pub listen_port: u16,
    /// The tunnel address with prefix, e.g. `10.1.0.1/24`.
    pub address: String,
    /// Initial peers.
    pub peers: Vec<GatewayPeer>,
}

impl GatewayConfig {
    /// A fresh key, port 51820, this tunnel address, no peers yet.
    pub fn new(address: &str) -> Result<Self> {
        Ok(Self {
            key: KeyPair::generate()?,
            listen_port: 51820,
            address: address.to_owned(),
            peers: Vec::new(),
        })
    }

    /// Adds a peer.
    pub fn with_peer(mut self, peer: GatewayPeer) -> Self {
        self.peers.push(peer);
        self
    }
}

/// A running `wireguard-go` in a namespace, with a unique interface name (its control socket
/// `/run/wireguard/<ifname>.sock` is shared across namespaces). Killed on drop.
#[derive(Debug)]
pub struct WireguardGo {
    netns: String,
    ifname: String,
    config: GatewayConfig,
    binary: PathBuf,
    dir: TempDir,
    daemon: Option<Daemon>,
}

static GATEWAYS: AtomicU32 = AtomicU32::new(0);

impl WireguardGo {
    /// How long to wait for the control socket after starting.
    pub const START_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts wireguard-go in `netns`, then sets key, port, peers, the address, and link up.
    /// The binary is the one `TESTBED_WIREGUARD_GO` selects ([`crate::wireguard_go_binary`]:
    /// the current Debian build by default).
    pub fn start(netns: &Netns, config: GatewayConfig) -> Result<Self> {
        Self::start_with_binary(netns, config, &crate::wgbin::wireguard_go_binary()?)
    }

    /// Like [`start`](Self::start), running the `wireguard-go` at `binary`.
    pub fn start_with_binary(netns: &Netns, config: GatewayConfig, binary: &Path) -> Result<Self> {
        let n = GATEWAYS.fetch_add(1, Ordering::Relaxed);
        // "wg" + pid + counter, at most 15 characters (IFNAMSIZ - 1).
        let ifname = format!("wg{}x{n}", std::process::id());
        if ifname.len() > 15 {
            bail!("interface name {ifname} is longer than 15 characters");
        }
        let dir = TempDir::new(&ifname)?;
        write_private_file(&dir.path().join("private.key"), &config.key.private)?;
        let mut gateway = Self {
            netns: netns.name().to_owned(),
            ifname,
            config,
            binary: binary.to_path_buf(),
            dir,
            daemon: None,
        };
        // A socket file of this name can only be a leftover (same pid, earlier process).
        let _ = fs::remove_file(gateway.control_socket());
        gateway.launch(netns)?;
        Ok(gateway)
    }

    fn launch(&mut self, netns: &Netns) -> Result<()> {
        let log = self.log_path();
        let program = self.binary.to_string_lossy().into_owned();
        self.daemon = Some(netns.spawn(&program, ["-f", &self.ifname], &log)?);
        let socket = self.control_socket();
        let deadline = Instant::now() + Self::START_TIMEOUT;
        while !socket.exists() {
            if let Some(status) = self.daemon.as_mut().and_then(Daemon::try_wait) {
                bail!(
                    "wireguard-go for {} exited ({status}) before its control socket appeared: {}",
                    self.ifname,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "wireguard-go for {}: no control socket {} after {:?}: {}",
                    self.ifname,
                    socket.display(),
                    Self::START_TIMEOUT,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let key_file = self.dir.path().join("private.key");
        let mut args: Vec<String> = vec![
            "set".into(),
            self.ifname.clone(),
            "private-key".into(),
            key_file.to_string_lossy().into_owned(),
            "listen-port".into(),
            self.config.listen_port.to_string(),
        ];
        for peer in &self.config.peers {
            args.extend(peer.wg_set_args_with_files(self.dir.path())?);
        }
        // The socket file appears when wireguard-go binds it, a moment before it listens:
        // a `wg` connecting in between is refused and falls back to the kernel's netlink
        // ("Protocol not supported"), as seen on a loaded machine. `wg set` is idempotent.
        while let Err(e) = netns.run("wg", &args) {
            if Instant::now() > deadline {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        netns.ip(["addr", "add", &self.config.address, "dev", &self.ifname])?;
        netns.ip(["link", "set", &self.ifname, "up"])?;
        Ok(())
    }

    /// The `wireguard-go` binary this gateway runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The interface name (also the control socket's name).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The namespace's name.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The gateway's public key (base64).
    pub fn public_key(&self) -> &str {
        &self.config.key.public
    }

    /// The gateway's key pair.
    pub fn key(&self) -> &KeyPair {
        &self.config.key
    }

    /// The UDP listen port.
    pub fn listen_port(&self) -> u16 {
        self.config.listen_port
    }

    /// The pid of the wireguard-go process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    /// The control socket path.
    pub fn control_socket(&self) -> PathBuf {
        Path::new(CONTROL_DIR).join(format!("{}.sock", self.ifname))
    }

    /// Where wireguard-go's stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("wireguard-go.log")
    }

    /// wireguard-go's output so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Adds or updates a peer (`wg set IF peer ...`); remembered for [`restart`](Self::restart).
    pub fn set_peer(&mut self, peer: GatewayPeer) -> Result<()> {
        let mut args = vec!["set".to_owned(), self.ifname.clone()];
        args.extend(peer.wg_set_args_with_files(self.dir.path())?);
        self.wg(&args)?;
        self.config
            .peers
            .retain(|p| p.public_key != peer.public_key);
        self.config.peers.push(peer);
        Ok(())
    }

    /// Moves the listening socket to another port at runtime (`wg set IF listen-port N`):
    /// sessions stay, and packets to peers now leave from the new port (they see the gateway
    /// roam).
    pub fn set_listen_port(&mut self, port: u16) -> Result<()> {
        self.wg(["set", &self.ifname, "listen-port", &port.to_string()])?;
        self.config.listen_port = port;
        Ok(())
    }

    /// Removes a peer (`wg set IF peer KEY remove`).
    pub fn remove_peer(&mut self, public_key: &str) -> Result<()> {
        self.wg(["set", &self.ifname, "peer", public_key, "remove"])?;
        self.config.peers.retain(|p| p.public_key != public_key);
        Ok(())
    }

    /// `wg show IF dump`, parsed.
    pub fn dump(&self) -> Result<WgDump> {
        WgDump::parse(&self.wg(["show", &self.ifname, "dump"])?)
    }

    /// Runs `wg args...` inside the gateway's namespace; returns stdout.
    fn wg<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns, "wg"])
            .args(args);
        run_command(&mut command)
    }

    /// The dump line of one peer.
    pub fn peer(&self, public_key: &str) -> Result<WgPeerDump> {
        self.dump()?
            .peers
            .into_iter()
            .find(|p| p.public_key == public_key)
            .ok_or_else(|| anyhow!("{}: no peer {public_key}", self.ifname))
    }

    /// Polls `wg show` until the peer reports a handshake, for at most `timeout`.
    pub fn wait_for_handshake(&self, public_key: &str, timeout: Duration) -> Result<WgPeerDump> {
        let deadline = Instant::now() + timeout;
        loop {
            let peer = self.peer(public_key)?;
            if peer.latest_handshake.is_some() {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no handshake with {public_key} within {timeout:?}: {peer:?}",
                    self.ifname
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills wireguard-go (`SIGKILL`: it takes over a second to honour `SIGTERM`, and a gateway
    /// that crashes is what tests simulate) and reaps it. Its interface and
    /// every session go with it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill();
        }
        let _ = fs::remove_file(self.control_socket());
    }

    /// Kills wireguard-go and starts it again with the same key, port, address and peers (the
    /// peers lose their sessions, as after a gateway reboot).
    pub fn restart(&mut self, netns: &Netns) -> Result<()> {
        if netns.name() != self.netns {
            bail!("restart of {} in the wrong namespace", self.ifname);
        }
        self.kill();
        // The old TUN interface disappears asynchronously with the process.
        let deadline = Instant::now() + Duration::from_secs(2);
        while netns.ip(["link", "show", &self.ifname]).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.launch(netns)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `wg show IF dump`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    /// The interface's public key.
    pub public_key: String,
    /// Its listen port.
    pub listen_port: u16,
    /// One entry per peer.
    pub peers: Vec<WgPeerDump>,
}

/// One peer line of `wg show IF dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerDump {
    /// The peer's public key.
    pub public_key: String,
    /// Its current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs as printed.
    pub allowed_ips: Vec<String>,
    /// Time of the latest handshake, if any.
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received from this peer (on the wire).
    pub rx_bytes: u64,
    /// Bytes sent to this peer (on the wire).
    pub tx_bytes: u64,
    /// Persistent keepalive in seconds, if on.
    pub persistent_keepalive: Option<u16>,
}

impl WgDump {
    /// Parses the tab-separated output of `wg show IF dump` (one interface line, then one line
    /// per peer).
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().context("empty `wg show dump` output")?;
        let fields: Vec<&str> = first.split('\t').collect();
        if fields.len() < 4 {
            bail!("`wg show dump` interface line has {} fields", fields.len());
        }
        let listen_port = fields[2]
            .parse()
            .with_context(|| format!("bad listen port `{}`", fields[2]))?;
        let peers = lines.map(WgPeerDump::parse).collect::<Result<_>>()?;
        Ok(Self {
            public_key: fields[1].to_owned(),
            listen_port,
            peers,
        })
    }
}

impl WgPeerDump {
    fn parse(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            bail!("`wg show dump` peer line has {} fields: {line}", f.len());
        }
        let endpoint = match f[2] {
            "(none)" => None,
            e => Some(e.parse().with_context(|| format!("bad endpoint `{e}`"))?),
        };
        let allowed_ips = match f[3] {
            "(none)" => Vec::new(),
            ips => ips.split(',').map(str::to_owned).collect(),
        };
        let handshake: u64 = f[4]
            .parse()
            .with_context(|| format!("bad handshake time `{}`", f[4]))?;
        let latest_handshake =
            (handshake != 0).then(|| UNIX_EPOCH + Duration::from_secs(handshake));
        let number = |s: &str| -> Result<u64> {
            s.parse()
                .with_context(|| format!("bad counter `{s}` in: {line}"))
        };
        let persistent_keepalive = match f[7] {
            "off" => None,
            k => Some(k.parse().with_context(|| format!("bad keepalive `{k}`"))?),
        };
        Ok(Self {
            public_key: f[0].to_owned(),
            endpoint,
            allowed_ips,
            latest_handshake,
            rx_bytes: number(f[5])?,
            tx_bytes: number(f[6])?,
            persistent_keepalive,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_wg_show_dump() {
        let text = "cHJpdg==\tR0Q=\t51820\toff\n\
                    QmNw=\t(none)\t198.18.0.2:40000\t10.1.0.100/32,10.2.0.0/24\t1764000000\t1234\t5678\t25\n\
                    QmNx=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let dump = WgDump::parse(text).unwrap();
        assert_eq!(dump.public_key, "R0Q=");
        assert_eq!(dump.listen_port, 51820);
        assert_eq!(dump.peers.len(), 2);
        let p = &dump.peers[0];
        assert_eq!(p.endpoint, Some("198.18.0.2:40000".parse().unwrap()));
        assert_eq!(p.allowed_ips, ["10.1.0.100/32", "10.2.0.0/24"]);
        assert_eq!(
            p.latest_handshake,
            Some(UNIX_EPOCH + Duration::from_secs(1_764_000_000))
        );
        assert_eq!((p.rx_bytes, p.tx_bytes), (1234, 5678));
        assert_eq!(p.persistent_keepalive, Some(25));
        let q = &dump.peers[1];
        assert_eq!(q.endpoint, None);
        assert!(q.allowed_ips.is_empty());
        assert_eq!(q.latest_handshake, None);
        assert_eq!(q.persistent_keepalive, None);
        assert!(WgDump::parse("").is_err());
        assert!(WgDump::parse("a\tb\tnotaport\toff").is_err());
    }

    #[test]
    fn preshared_key_goes_to_a_private_file_never_to_debug() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("psk-unit").unwrap();
        let peer = GatewayPeer::new("a/b+c=", &["10.1.0.100/32"]).with_preshared_key("SECRET=");
        assert!(!format!("{peer:?}").contains("SECRET"));
        let args = peer.wg_set_args_with_files(dir.path()).unwrap();
        assert_eq!(args[args.len() - 2], "preshared-key");
        let file = Path::new(&args[args.len() - 1]);
        assert_eq!(file.parent(), Some(dir.path()));
        assert_eq!(fs::read_to_string(file).unwrap(), "SECRET=");
        assert_eq!(
            fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn peer_arguments_follow_wg_set_syntax() {
        let peer = GatewayPeer::new("KEY=", &["10.1.0.100/32", "10.9.0.0/16"])
            .with_endpoint("198.18.0.1:51820".parse().unwrap())
            .with_keepalive(25);
        assert_eq!(
            peer.wg_set_args(),
            [
                "peer",
                "KEY=",
                "allowed-ips",
                "10.1.0.100/32,10.9.0.0/16",
                "endpoint",
                "198.18.0.1:51820",
                "persistent-keepalive",
                "25"
            ]
        );
    }
}
