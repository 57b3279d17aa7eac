//! The agent's TOML configuration: parsed with serde (unknown fields refused), then
//! validated into [`Config`], with secrets resolved (inline, key file or environment
//! variable) and DNS endpoints kept unresolved for the runtime.
//!
//! Validation never touches the network. Every error names the file, the field and the
//! bad value, except for secrets, whose value is never shown. See `docs/configuration.md`.

mod error;
mod raw;
mod types;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use error::ConfigError;
pub use types::{AdminListen, Endpoint, Host, IpPrefix, format_duration, parse_duration};

use crate::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
use raw::{RawAgent, RawConfig, RawGateway, RawProxy, RawRoute};

/// A validated configuration.
#[derive(Debug, Clone)]
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
    /// `[proxy]`.
    pub proxy: ProxySettings,
    /// `[admin] listen`.
    pub admin: AdminListen,
    /// `[log]`.
    pub log: LogConfig,
    /// Things an operator should know that do not make the file invalid.
    pub warnings: Vec<String>,
}

/// `[agent]`: this machine's identity in the tunnel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The resolved private key (zeroized on drop).
    pub private_key: PrivateKey,
    /// The agent's address inside the tunnel.
    pub virtual_ip: IpAddr,
    /// The tunnel subnet; contains `virtual_ip` and every gateway's `virtual_ip`.
    pub subnet: IpPrefix,
    /// Local UDP port, 0 for any.
    pub listen_port: u16,
    /// MTU of the virtual interface.
    pub mtu: u16,
}

/// One `[[gateways]]` entry.
#[derive(Debug, Clone)]
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
    /// The gateway's address inside the tunnel (the liveness probe's target).
    pub virtual_ip: IpAddr,
    /// Optional preshared key (zeroized on drop).
    pub preshared_key: Option<PresharedKey>,
    /// Seconds between keepalives; 0 disables them.
    pub persistent_keepalive: u16,
    /// How idle tunnels are checked.
    pub liveness_probe: LivenessProbe,
    /// Inner source addresses accepted from, and destinations routed to, this gateway.
    pub allowed_ips: Vec<IpPrefix>,
}

/// `liveness_probe`: how a gateway that has been silent is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LivenessProbe {
    /// ICMP echo to the gateway's virtual IP through the tunnel.
    #[default]
    Icmp,
    /// No probe; liveness follows handshakes only.
    Off,
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
}

impl std::fmt::Display for RouteProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        })
    }
}

/// One `[[routes]]` entry: a port on the virtual IP forwarded to a local upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Port on the virtual IP.
    pub port: u16,
    /// Local upstream, `host:port` (a name is resolved when connecting).
    pub upstream: Endpoint,
    /// HTTP or raw TCP.
    pub protocol: RouteProtocol,
    /// HTTP: keep and append to the gateway's `X-Forwarded-For` chain (else replace it).
    pub trust_forwarded: bool,
    /// TCP: send a PROXY protocol v2 header to the upstream.
    pub proxy_protocol: bool,
}

impl RouteConfig {
    /// The route used when `[[routes]]` is absent: HTTP, port 80 to `127.0.0.1:8080`.
    pub fn default_http() -> Self {
        Self {
            port: 80,
            upstream: Endpoint {
                host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: 8080,
            },
            protocol: RouteProtocol::Http,
            trust_forwarded: true,
            proxy_protocol: false,
        }
    }
}

/// `[proxy]`: limits and timeouts of the local proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxySettings {
    /// Time to receive a request head (also cuts silent clients).
    pub header_read_timeout: Duration,
    /// Time to connect to the upstream.
    pub upstream_connect_timeout: Duration,
    /// Time for the upstream's response head (else 504).
    pub upstream_response_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    pub idle_timeout: Duration,
    /// On shutdown, in-flight requests get this long.
    pub drain_timeout: Duration,
    /// Largest request head (else 431).
    pub max_header_bytes: usize,
    /// Most concurrent connections across routes.
    pub max_connections: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 65536,
            max_connections: 4096,
        }
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

/// Smallest and largest accepted `mtu`.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=65455;
/// Accepted `max_header_bytes` (hyper needs at least 8 KiB of buffer).
const HEADER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 8192..=16 * 1024 * 1024;

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
        admin_listen(path, raw.admin.listen.as_deref())
    }
}

fn read_config(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
}

/// The folder relative paths in the config are resolved against.
fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn admin_listen(path: &Path, value: Option<&str>) -> Result<AdminListen, ConfigError> {
    let Some(value) = value else {
        return Ok(AdminListen::DEFAULT);
    };
    match AdminListen::parse(value) {
        Ok(AdminListen::Unix(p)) if p.is_relative() => {
            Ok(AdminListen::Unix(base_dir(path).join(p)))
        }
        Ok(listen) => Ok(listen),
        Err(None) => Err(ConfigError::AdminNotLoopback {
            path: path.to_owned(),
            value: value.into(),
        }),
        Err(Some(message)) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            field: "admin.listen".into(),
            message,
        }),
    }
}

/// Fields whose value is a secret: a parser message about them is replaced.
const SECRET_FIELDS: [&str; 2] = ["private_key", "preshared_key"];

fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |s| s.start).min(text.len());
    let (line, column) = line_column(text, offset);
    let field = locate_field(text, offset);
    let last = field.rsplit('.').next().unwrap_or_default();
    let message = if SECRET_FIELDS.contains(&last) {
        "expected a base64 key in a string (value not shown)".to_owned()
    } else {
        error.message().trim().to_owned()
    };
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        field,
        message,
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

/// Names the field at `offset` from the table headers above it and the key on its line:
/// `gateways[1].endpoint`, `agent`, `proxy.idle_timeout`. Best effort; never shows values.
fn locate_field(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut consumed = 0;
    let mut key = String::new();
    for line in text.split_inclusive('\n') {
        let start = consumed;
        consumed += line.len();
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
        {
            let name = name.trim().to_owned();
            let index = counts
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{index}]");
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
        if offset < consumed || consumed == text.len() {
            if start <= offset
                && !trimmed.starts_with('[')
                && let Some((k, _)) = trimmed.split_once('=')
            {
                key = k.trim().trim_matches('"').to_owned();
            }
            break;
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}

struct Validator<'a> {
    path: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let agent = self.agent(&raw.agent)?;
        let mut gateways: Vec<GatewayConfig> = Vec::with_capacity(raw.gateways.len());
        for (i, g) in raw.gateways.iter().enumerate() {
            let gateway = self.gateway(i, g, &agent, &gateways)?;
            gateways.push(gateway);
        }
        if gateways.is_empty() {
            self.warnings.push(format!(
                "{}: no [[gateways]] configured; the agent will wait until gateways are added",
                self.path.display()
            ));
        }
        let routes = match &raw.routes {
            None => vec![RouteConfig::default_http()],
            Some(list) => {
                let mut routes: Vec<RouteConfig> = Vec::with_capacity(list.len());
                for (i, r) in list.iter().enumerate() {
                    let route = self.route(i, r, &routes)?;
                    routes.push(route);
                }
                routes
            }
        };
        let proxy = self.proxy(&raw.proxy)?;
        let admin = admin_listen(self.path, raw.admin.listen.as_deref())?;
        let level = raw.log.level.clone().unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.invalid(
                "log.level",
                format!("`{level}` is not a log level (error, warn, info, debug, trace) or a tracing filter"),
            ));
        }
        Ok(Config {
            path: self.path.to_owned(),
            agent,
            gateways,
            routes,
            proxy,
            admin,
            log: LogConfig {
                format: raw.log.format,
                level,
            },
            warnings: self.warnings,
        })
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn agent(&mut self, raw: &RawAgent) -> Result<AgentConfig, ConfigError> {
        let private_key = self.private_key(raw)?;
        let virtual_ip: IpAddr = raw.virtual_ip.parse().map_err(|_| {
            self.invalid(
                "agent.virtual_ip",
                format!("`{}` is not an IP address", raw.virtual_ip),
            )
        })?;
        let subnet: IpPrefix = raw
            .subnet
            .parse()
            .map_err(|reason: String| self.invalid("agent.subnet", reason))?;
        if !subnet.contains(virtual_ip) {
            return Err(self.outside("agent.virtual_ip".into(), virtual_ip, subnet));
        }
        let min_mtu = if virtual_ip.is_ipv6() {
            1280
        } else {
            *MTU_RANGE.start()
        };
        if raw.mtu < min_mtu || raw.mtu > *MTU_RANGE.end() {
            return Err(self.invalid(
                "agent.mtu",
                format!(
                    "{} is out of range {min_mtu}..={}",
                    raw.mtu,
                    MTU_RANGE.end()
                ),
            ));
        }
        Ok(AgentConfig {
            private_key,
            virtual_ip,
            subnet,
            listen_port: raw.listen_port,
            mtu: raw.mtu,
        })
    }

    fn outside(&self, field: String, addr: IpAddr, subnet: IpPrefix) -> ConfigError {
        ConfigError::OutsideSubnet {
            path: self.path.to_owned(),
            field,
            addr,
            subnet: subnet.to_string(),
        }
    }

    fn private_key(&mut self, raw: &RawAgent) -> Result<PrivateKey, ConfigError> {
        let sources = [
            ("private_key", raw.private_key.is_some()),
            ("private_key_file", raw.private_key_file.is_some()),
            ("private_key_env", raw.private_key_env.is_some()),
        ];
        let set: Vec<&str> = sources
            .iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| *n)
            .collect();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none".to_owned()
            } else {
                set.join(", ")
            };
            return Err(self.invalid(
                "agent",
                format!("set exactly one of private_key, private_key_file or private_key_env (found: {found})"),
            ));
        }
        if let Some(inline) = &raw.private_key {
            self.warn_if_config_readable();
            return PrivateKey::from_base64(inline)
                .map_err(|r| self.bad_secret("agent.private_key", "the inline value".into(), r));
        }
        if let Some(file) = &raw.private_key_file {
            let text = self.read_key_file("agent.private_key_file", file)?;
            let origin = format!("the content of {}", self.resolve(file).display());
            return PrivateKey::from_base64(&text)
                .map_err(|r| self.bad_secret("agent.private_key_file", origin, r));
        }
        // Exactly one source is set (checked above) and it is neither of the first two.
        let var = raw.private_key_env.as_deref().unwrap_or_default();
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            return Err(self.invalid(
                "agent.private_key_env",
                format!("`{var}` is not an environment variable name"),
            ));
        }
        let value = Zeroizing::new((self.env)(var).ok_or_else(|| ConfigError::MissingEnv {
            path: self.path.to_owned(),
            field: "agent.private_key_env".into(),
            var: var.into(),
        })?);
        PrivateKey::from_base64(&value).map_err(|r| {
            self.bad_secret(
                "agent.private_key_env",
                format!("environment variable `{var}`"),
                r,
            )
        })
    }

    fn warn_if_config_readable(&mut self) {
        if let Ok(mode) = file_mode(self.path)
            && mode & 0o077 != 0
        {
            self.warnings.push(format!(
                "{path}: agent.private_key is inline and {path} is readable by group or others; run `chmod 600 {path}` or use private_key_file",
                path = self.path.display()
            ));
        }
    }

    fn bad_secret(&self, field: &str, origin: String, reason: KeyError) -> ConfigError {
        ConfigError::InvalidSecret {
            path: self.path.to_owned(),
            field: field.into(),
            origin,
            reason,
        }
    }

    fn resolve(&self, file: &str) -> PathBuf {
        base_dir(self.path).join(file)
    }

    /// Reads a key file after checking that only its owner can read it.
    fn read_key_file(&self, field: &str, file: &str) -> Result<Zeroizing<String>, ConfigError> {
        if file.is_empty() {
            return Err(self.invalid(field, "the key file name is empty"));
        }
        let resolved = self.resolve(file);
        let read_error = |source| ConfigError::KeyFileRead {
            path: self.path.to_owned(),
            field: field.into(),
            file: resolved.clone(),
            source,
        };
        let mode = file_mode(&resolved).map_err(read_error)?;
        if mode & 0o077 != 0 {
            return Err(ConfigError::KeyFilePermissions {
                path: self.path.to_owned(),
                field: field.into(),
                file: resolved,
                mode: mode & 0o777,
            });
        }
        std::fs::read_to_string(&resolved)
            .map(Zeroizing::new)
            .map_err(read_error)
    }

    fn gateway(
        &mut self,
        i: usize,
        raw: &RawGateway,
        agent: &AgentConfig,
        earlier: &[GatewayConfig],
    ) -> Result<GatewayConfig, ConfigError> {
        let valid_id = !raw.id.is_empty()
            && raw.id.len() <= 64
            && raw
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_id {
            return Err(self.invalid(
                format!("gateways[{i}].id"),
                format!(
                    "`{}` is not an id: use 1 to 64 letters, digits, `-`, `_` or `.`",
                    raw.id.escape_debug()
                ),
            ));
        }
        let field = |name: &str| format!("gateways[{i}].{name} (gateway `{}`)", raw.id);
        let first = |j: usize| format!("gateways[{j}] (gateway `{}`)", earlier[j].id);
        if let Some(j) = earlier.iter().position(|g| g.id == raw.id) {
            return Err(self.duplicate(format!("gateways[{i}].id"), raw.id.clone(), first(j)));
        }
        let public_key = PublicKey::from_base64(&raw.public_key).map_err(|r| {
            self.invalid(
                field("public_key"),
                format!("`{}` is not a WireGuard public key: {r}", raw.public_key),
            )
        })?;
        if public_key == agent.private_key.public_key() {
            return Err(self.invalid(field("public_key"), "this is the agent's own public key"));
        }
        if let Some(j) = earlier.iter().position(|g| g.public_key == public_key) {
            return Err(self.duplicate(field("public_key"), public_key.to_string(), first(j)));
        }
        let endpoint: Endpoint = raw
            .endpoint
            .parse()
            .map_err(|reason: String| self.invalid(field("endpoint"), reason))?;
        let virtual_ip: IpAddr = raw.virtual_ip.parse().map_err(|_| {
            self.invalid(
                field("virtual_ip"),
                format!("`{}` is not an IP address", raw.virtual_ip),
            )
        })?;
        if !agent.subnet.contains(virtual_ip) {
            return Err(self.outside(field("virtual_ip"), virtual_ip, agent.subnet));
        }
        if virtual_ip == agent.virtual_ip {
            return Err(self.invalid(
                field("virtual_ip"),
                format!("{virtual_ip} is the agent's own agent.virtual_ip"),
            ));
        }
        if let Some(j) = earlier.iter().position(|g| g.virtual_ip == virtual_ip) {
            return Err(self.duplicate(field("virtual_ip"), virtual_ip.to_string(), first(j)));
        }
        let preshared_key = match (&raw.preshared_key, &raw.preshared_key_file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    field("preshared_key"),
                    "set at most one of preshared_key and preshared_key_file",
                ));
            }
            (Some(inline), None) => Some(PresharedKey::from_base64(inline).map_err(|r| {
                self.bad_secret(&field("preshared_key"), "the inline value".into(), r)
            })?),
            (None, Some(file)) => {
                let text = self.read_key_file(&field("preshared_key_file"), file)?;
                let origin = format!("the content of {}", self.resolve(file).display());
                Some(
                    PresharedKey::from_base64(&text)
                        .map_err(|r| self.bad_secret(&field("preshared_key_file"), origin, r))?,
                )
            }
            (None, None) => None,
        };
        let allowed_ips = match &raw.allowed_ips {
            None => vec![IpPrefix::host(virtual_ip)],
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (k, text) in list.iter().enumerate() {
                    let prefix: IpPrefix = text.parse().map_err(|reason: String| {
                        self.invalid(
                            format!("gateways[{i}].allowed_ips[{k}] (gateway `{}`)", raw.id),
                            reason,
                        )
                    })?;
                    out.push(prefix);
                }
                out
            }
        };
        if !allowed_ips.iter().any(|p| p.contains(virtual_ip)) {
            return Err(self.invalid(
                field("allowed_ips"),
                format!(
                    "must include the gateway's virtual_ip {virtual_ip} (for example \"{}\")",
                    IpPrefix::host(virtual_ip)
                ),
            ));
        }
        for prefix in &allowed_ips {
            if let Some(j) = earlier.iter().position(|g| g.allowed_ips.contains(prefix)) {
                return Err(self.duplicate(field("allowed_ips"), prefix.to_string(), first(j)));
            }
        }
        let name = raw.name.clone().filter(|n| !n.is_empty());
        Ok(GatewayConfig {
            id: raw.id.clone(),
            name,
            public_key,
            endpoint,
            virtual_ip,
            preshared_key,
            persistent_keepalive: raw.persistent_keepalive,
            liveness_probe: raw.liveness_probe,
            allowed_ips,
        })
    }

    fn duplicate(&self, field: String, value: String, first: String) -> ConfigError {
        ConfigError::Duplicate {
            path: self.path.to_owned(),
            field,
            value,
            first,
        }
    }

    fn route(
        &self,
        i: usize,
        raw: &RawRoute,
        earlier: &[RouteConfig],
    ) -> Result<RouteConfig, ConfigError> {
        let field = |name: &str| format!("routes[{i}].{name}");
        if raw.port == 0 {
            return Err(self.invalid(field("port"), "port 0 is not allowed"));
        }
        if let Some(j) = earlier.iter().position(|r| r.port == raw.port) {
            return Err(self.duplicate(
                field("port"),
                raw.port.to_string(),
                format!("routes[{j}]"),
            ));
        }
        let upstream: Endpoint = raw
            .upstream
            .parse()
            .map_err(|reason: String| self.invalid(field("upstream"), reason))?;
        if raw.protocol != RouteProtocol::Http && raw.trust_forwarded.is_some() {
            return Err(self.invalid(
                field("trust_forwarded"),
                "applies to protocol = \"http\" routes only",
            ));
        }
        if raw.protocol != RouteProtocol::Tcp && raw.proxy_protocol.is_some() {
            return Err(self.invalid(
                field("proxy_protocol"),
                "applies to protocol = \"tcp\" routes only",
            ));
        }
        Ok(RouteConfig {
            port: raw.port,
            upstream,
            protocol: raw.protocol,
            trust_forwarded: raw.trust_forwarded.unwrap_or(true),
            proxy_protocol: raw.proxy_protocol.unwrap_or(false),
        })
    }

    fn proxy(&self, raw: &RawProxy) -> Result<ProxySettings, ConfigError> {
        let defaults = ProxySettings::default();
        let duration = |name: &str, value: &Option<String>, default: Duration, zero_ok: bool| {
            let Some(text) = value else {
                return Ok(default);
            };
            let d = parse_duration(text)
                .map_err(|reason| self.invalid(format!("proxy.{name}"), reason))?;
            if d.is_zero() && !zero_ok {
                return Err(self.invalid(format!("proxy.{name}"), "must be greater than 0"));
            }
            Ok(d)
        };
        let max_header_bytes = raw
            .max_header_bytes
            .unwrap_or(defaults.max_header_bytes as u64);
        if !HEADER_BYTES_RANGE.contains(&max_header_bytes) {
            return Err(self.invalid(
                "proxy.max_header_bytes",
                format!(
                    "{max_header_bytes} is out of range {}..={}",
                    HEADER_BYTES_RANGE.start(),
                    HEADER_BYTES_RANGE.end()
                ),
            ));
        }
        let max_connections = raw
            .max_connections
            .unwrap_or(defaults.max_connections as u64);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(self.invalid(
                "proxy.max_connections",
                format!("{max_connections} is out of range 1..=1000000"),
            ));
        }
        Ok(ProxySettings {
            header_read_timeout: duration(
                "header_read_timeout",
                &raw.header_read_timeout,
                defaults.header_read_timeout,
                false,
            )?,
            upstream_connect_timeout: duration(
                "upstream_connect_timeout",
                &raw.upstream_connect_timeout,
                defaults.upstream_connect_timeout,
                false,
            )?,
            upstream_response_timeout: duration(
                "upstream_response_timeout",
                &raw.upstream_response_timeout,
                defaults.upstream_response_timeout,
                false,
            )?,
            idle_timeout: duration(
                "idle_timeout",
                &raw.idle_timeout,
                defaults.idle_timeout,
                false,
            )?,
            drain_timeout: duration(
                "drain_timeout",
                &raw.drain_timeout,
                defaults.drain_timeout,
                true,
            )?,
            // Both bounded by the range checks above, far below usize::MAX.
            max_header_bytes: max_header_bytes as usize,
            max_connections: max_connections as usize,
        })
    }
}

#[cfg(unix)]
fn file_mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)?.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(path: &Path) -> std::io::Result<u32> {
    std::fs::metadata(path).map(|_| 0o600)
}

impl GatewayConfig {
    /// The endpoint as a socket address when it is a literal IP.
    pub fn endpoint_addr(&self) -> Option<SocketAddr> {
        self.endpoint.socket_addr()
    }
}

#[cfg(test)]
mod tests;
