//! The agent's TOML configuration: parsed with serde (unknown fields refused), then
//! validated into [`Config`], with secrets resolved (inline, key file or environment
//! variable) and DNS endpoints kept unresolved for the runtime.
//!
//! Validation never touches the network. Every error names the file, the field and the
//! bad value, except for secrets, whose value is never shown. See `docs/configuration.md`.
//!
//! ```
//! use agent::config::{Config, RouteProtocol};
//! use wg_core::PrivateKey;
//!
//! let toml = format!(
//!     "[agent]\nprivate_key = \"{}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\n\
//!      [[gateways]]\nid = \"gw1\"\npublic_key = \"{}\"\nendpoint = \"gw1.example.net:51820\"\n\
//!      virtual_ip = \"10.1.0.1\"\n",
//!     PrivateKey::generate().to_base64_secret().as_str(),
//!     PrivateKey::generate().public_key(),
//! );
//! let config = Config::from_toml(&toml, "agent.toml".as_ref())?;
//! assert_eq!(config.gateways[0].persistent_keepalive, 25);
//! assert_eq!(config.gateways[0].endpoint.to_string(), "gw1.example.net:51820");
//! // No [[routes]]: one HTTP route, port 80 to 127.0.0.1:8080.
//! assert_eq!(config.routes[0].protocol, RouteProtocol::Http);
//! # Ok::<(), agent::config::ConfigError>(())
//! ```

mod error;
mod raw;
mod reload;
mod types;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use local_proxy::{HttpRouteConfig, ProxyConfig, TcpRouteConfig, UdpRouteConfig, Upstream};
use serde::{Deserialize, Serialize};
use wg_core::{IpNet, PeerConfig, PresharedKey, PrivateKey, PublicKey};

pub use error::ConfigError;
pub use reload::ConfigChanges;
pub use types::{AdminListen, DEFAULT_ADMIN_PORT, format_duration, parse_duration};

pub use crate::manager::{Endpoint, Host, LivenessProbe};

use raw::RawConfig;
use validate::{Validator, admin_listen, read_config, syntax_error};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The file it was read from (reloads read it again).
    pub path: PathBuf,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[[gateways]]`, in file order.
    pub gateways: Vec<GatewayConfig>,
    /// `[[routes]]`, in file order (the default route when the table is absent).
    pub routes: Vec<RouteConfig>,
    /// `[proxy]`, as local-proxy takes it.
    pub proxy: ProxyConfig,
    /// `[admin] listen`.
    pub admin: AdminListen,
    /// `[admin] allow_remote`: a non-loopback `listen` is allowed; remote clients get
    /// `/healthz`, `/readyz` and `/metrics` only.
    pub admin_allow_remote: bool,
    /// `[log]`.
    pub log: LogConfig,
    /// `[uapi] name`: the interface name `wg show NAME` uses (the UAPI socket's name).
    pub uapi_name: String,
    /// Things an operator should know that do not make the file invalid.
    pub warnings: Vec<String>,
}

/// `[agent]`: this machine's identity in the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The resolved private key (zeroized on drop).
    pub private_key: PrivateKey,
    /// The agent's address inside the tunnel: the first of `virtual_ips`.
    pub virtual_ip: IpAddr,
    /// The tunnel subnet of `virtual_ip`'s family: the first of `subnets`.
    pub subnet: IpNet,
    /// Every address of the agent inside the tunnel, as listed: one, or one IPv4 and one
    /// IPv6 address (dual stack). Routes listen on each.
    pub virtual_ips: Vec<IpAddr>,
    /// The tunnel subnets, one per address of `virtual_ips` and in the same order; each
    /// contains its address and every gateway `virtual_ip` of its family.
    pub subnets: Vec<IpNet>,
    /// Local UDP port, 0 for any.
    pub listen_port: u16,
    /// MTU of the virtual interface.
    pub mtu: u16,
}

/// One `[[gateways]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Unique label used in logs, metrics and status.
    pub id: String,
    /// Optional human name.
    pub name: Option<String>,
    /// The gateway's identity: gateways are matched by it across reloads.
    pub public_key: PublicKey,
    /// Where to send datagrams; a DNS name stays unresolved here.
    pub endpoint: Endpoint,
    /// The gateway's address inside the tunnel (the liveness probe's target). Always set
    /// from the file; `None` only for a gateway added through UAPI whose allowed IPs hold no
    /// address inside `subnet` (it gets no liveness probe).
    pub virtual_ip: Option<IpAddr>,
    /// Optional preshared key (zeroized on drop).
    pub preshared_key: Option<PresharedKey>,
    /// Seconds between keepalives; 0 disables them.
    pub persistent_keepalive: u16,
    /// How idle tunnels are checked.
    pub liveness_probe: LivenessProbe,
    /// Inner source addresses accepted from, and destinations routed to, this gateway.
    pub allowed_ips: Vec<IpNet>,
}

/// A route's protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RouteProtocol {
    /// HTTP reverse proxy.
    #[default]
    Http,
    /// Raw TCP byte forwarding.
    Tcp,
    /// UDP datagrams, forwarded per flow.
    Udp,
}

impl RouteProtocol {
    /// Whether the route listens for UDP datagrams (else for TCP connections). A UDP route
    /// and an HTTP or TCP route may share a port number.
    pub fn is_datagram(self) -> bool {
        self == Self::Udp
    }
}

impl std::fmt::Display for RouteProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Where a route sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteUpstream {
    /// `host:port`, an IP address or a DNS name (resolved when connecting).
    Net(Endpoint),
    /// `unix:/absolute/path`: a unix stream socket (HTTP and TCP routes).
    Unix(PathBuf),
}

impl std::fmt::Display for RouteUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Net(endpoint) => endpoint.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The idle timeout of a UDP route's flows unless the route sets one.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A UDP route's `max_flows` unless it sets one.
pub const DEFAULT_UDP_MAX_FLOWS: usize = 256;

/// One `[[routes]]` entry: a port on the virtual IP forwarded to a local upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Port on the virtual IP.
    pub port: u16,
    /// Local upstream: `host:port` (a name is resolved when connecting) or a unix socket.
    pub upstream: RouteUpstream,
    /// HTTP, raw TCP or UDP.
    pub protocol: RouteProtocol,
    /// HTTP: keep and append to the gateway's `X-Forwarded-For` chain (else replace it).
    pub trust_forwarded: bool,
    /// TCP: send a PROXY protocol v2 header to the upstream.
    pub proxy_protocol: bool,
    /// HTTP: speak HTTP/2 with prior knowledge (h2c) to the upstream.
    pub upstream_h2c: bool,
    /// Overrides `[proxy] idle_timeout` for this route (a WebSocket route may idle longer);
    /// for a UDP route, the idle timeout of its flows ([`DEFAULT_UDP_IDLE_TIMEOUT`] unset).
    pub idle_timeout: Option<Duration>,
    /// HTTP and TCP: overrides `[proxy] upstream_connect_timeout`.
    pub upstream_connect_timeout: Option<Duration>,
    /// HTTP: overrides `[proxy] upstream_response_timeout`.
    pub upstream_response_timeout: Option<Duration>,
    /// UDP: flows open at once ([`DEFAULT_UDP_MAX_FLOWS`] unset).
    pub max_flows: Option<usize>,
}

impl RouteConfig {
    /// The route used when `[[routes]]` is absent: HTTP, port 80 to `127.0.0.1:8080`.
    pub fn default_http() -> Self {
        Self {
            port: 80,
            upstream: RouteUpstream::Net(Endpoint {
                host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: 8080,
            }),
            protocol: RouteProtocol::Http,
            trust_forwarded: true,
            proxy_protocol: false,
            upstream_h2c: false,
            idle_timeout: None,
            upstream_connect_timeout: None,
            upstream_response_timeout: None,
            max_flows: None,
        }
    }

    /// The upstream as local-proxy takes it.
    pub fn upstream(&self) -> Upstream {
        match &self.upstream {
            RouteUpstream::Net(endpoint) => match &endpoint.host {
                Host::Ip(ip) => Upstream::from(SocketAddr::new(*ip, endpoint.port)),
                Host::Name(name) => Upstream::new(name.clone(), endpoint.port),
            },
            RouteUpstream::Unix(path) => Upstream::unix(path),
        }
    }

    /// `[proxy]` with this route's overrides: what its proxy or forwarder runs with.
    pub fn proxy_config(&self, proxy: &ProxyConfig) -> ProxyConfig {
        let mut config = proxy.clone();
        if let Some(d) = self.idle_timeout {
            config.idle_timeout = d;
        }
        if let Some(d) = self.upstream_connect_timeout {
            config.upstream_connect_timeout = d;
        }
        if let Some(d) = self.upstream_response_timeout {
            config.upstream_response_timeout = d;
        }
        config
    }

    /// The idle timeout this route runs with under `proxy`.
    pub fn effective_idle_timeout(&self, proxy: &ProxyConfig) -> Duration {
        match (self.idle_timeout, self.protocol) {
            (Some(d), _) => d,
            (None, RouteProtocol::Udp) => DEFAULT_UDP_IDLE_TIMEOUT,
            (None, _) => proxy.idle_timeout,
        }
    }

    /// The local-proxy settings of a UDP route (`None` for HTTP and TCP routes).
    pub fn udp_route(&self) -> Option<UdpRouteConfig> {
        (self.protocol == RouteProtocol::Udp).then(|| {
            let mut route = UdpRouteConfig::new(self.upstream());
            route.idle_timeout = self.idle_timeout.unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT);
            route.max_flows = self.max_flows.unwrap_or(DEFAULT_UDP_MAX_FLOWS);
            route
        })
    }

    /// The local-proxy settings of an HTTP route (`None` for a TCP route).
    pub fn http_route(&self) -> Option<HttpRouteConfig> {
        (self.protocol == RouteProtocol::Http).then(|| {
            let mut route = HttpRouteConfig::new(self.upstream());
            route.trust_forwarded = self.trust_forwarded;
            route.upstream_h2c = self.upstream_h2c;
            route
        })
    }

    /// The local-proxy settings of a TCP route (`None` for an HTTP route).
    pub fn tcp_route(&self) -> Option<TcpRouteConfig> {
        (self.protocol == RouteProtocol::Tcp).then(|| {
            let mut route = TcpRouteConfig::new(self.upstream());
            route.proxy_protocol = self.proxy_protocol;
            route
        })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A level (`info`) or a `tracing` filter (`info,wg_core=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, resolving secrets from key files and
    /// environment variables. Does no DNS look-up.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read_config(path)?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates `text` as if read from `path` (relative key files and unix
    /// sockets are resolved against `path`'s folder).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, path, &|var| std::env::var(var).ok())
    }

    /// As [`Config::from_toml`], with environment variables looked up through `env`.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        Validator {
            path,
            env,
            warnings: Vec::new(),
        }
        .config(raw)
    }

    /// Reads only `[admin] listen` from the file at `path` (for `wg-agent status`, which needs
    /// neither the keys nor the environment).
    pub fn load_admin_listen(path: impl AsRef<Path>) -> Result<AdminListen, ConfigError> {
        let path = path.as_ref();
        let text = read_config(path)?;
        let raw: raw::RawAdminOnly =
            toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
        admin_listen(path, raw.admin.listen.as_deref(), raw.admin.allow_remote)
    }
}

impl AgentConfig {
    /// The tunnel subnet of `ip`'s family, if the agent has an address of that family.
    pub fn subnet_for(&self, ip: IpAddr) -> Option<IpNet> {
        self.subnets
            .iter()
            .copied()
            .find(|net| net.addr().is_ipv4() == ip.is_ipv4())
    }

    /// The agent's address of `ip`'s family, if it has one.
    pub fn virtual_ip_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.virtual_ips
            .iter()
            .copied()
            .find(|own| own.is_ipv4() == ip.is_ipv4())
    }
}

impl GatewayConfig {
    /// The endpoint as a socket address when it is a literal IP.
    pub fn endpoint_addr(&self) -> Option<SocketAddr> {
        self.endpoint.socket_addr()
    }

    /// The wg-core peer for this gateway, sending to `endpoint` (the configured address, or
    /// what its DNS name resolved to; `None` waits for the gateway to speak first).
    pub fn peer_config(&self, endpoint: Option<SocketAddr>) -> PeerConfig {
        let mut peer = PeerConfig::new(self.public_key);
        if let Some(addr) = endpoint {
            peer = peer.with_endpoint(addr);
        }
        for net in &self.allowed_ips {
            peer = peer.with_allowed_ip(*net);
        }
        if self.persistent_keepalive > 0 {
            peer = peer.with_keepalive(Duration::from_secs(u64::from(self.persistent_keepalive)));
        }
        if let Some(psk) = &self.preshared_key {
            peer = peer.with_preshared_key(psk.clone());
        }
        peer
    }
}

#[cfg(test)]
mod tests;
