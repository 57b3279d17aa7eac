//! From the serde view of the file ([`raw`](super::raw)) to a validated [`Config`]: every
//! rule, every secret resolved, every error naming file and field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use local_proxy::ProxyConfig;
use wg_core::{IpNet, KeyError, PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::raw::{OneOrList, RawAgent, RawConfig, RawGateway, RawProxy, RawRoute};
use super::{
    AdminListen, AgentConfig, Config, ConfigError, Endpoint, GatewayConfig, LogConfig, RouteConfig,
    RouteProtocol, RouteUpstream, parse_duration,
};

/// Smallest and largest accepted `mtu`: the userspace stack needs 1280 (the IPv6 minimum)
/// whatever the family of the virtual IP.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 1280..=65455;
/// Permission bits a key file must not have: read or write by others, write by the group.
const KEY_FILE_FORBIDDEN: u32 = 0o026;
/// Longest accepted `[proxy]` duration: far from any `Instant + Duration` overflow.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Accepted `max_header_bytes` (hyper needs at least 8 KiB of buffer).
const HEADER_BYTES_RANGE: RangeInclusive<u64> = 8192..=16 * 1024 * 1024;

pub(super) fn read_config(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
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

pub(super) fn admin_listen(
    path: &Path,
    value: Option<&str>,
    allow_remote: bool,
) -> Result<AdminListen, ConfigError> {
    let Some(value) = value else {
        return Ok(AdminListen::DEFAULT);
    };
    match AdminListen::parse_remote(value, allow_remote) {
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

pub(super) fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |s| s.start).min(text.len());
    let (line, column) = line_column(text, offset);
    let field = shown_field(&locate_field(text, offset));
    let last = field.rsplit('.').next().unwrap_or_default();
    let message = if SECRET_FIELDS.contains(&last) {
        "expected a base64 key in a string (value not shown)".to_owned()
    } else {
        let message = &hide_long_names(error.message().trim());
        let misplaced = ["routes", "gateways", "agent", "proxy", "admin", "log"]
            .iter()
            .any(|t| message.starts_with(&format!("unknown field `{t}`")));
        if misplaced && field.contains('.') {
            format!(
                "{message} (a top-level key such as `routes = []` must come before the first [table])"
            )
        } else {
            message.to_owned()
        }
    };
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// Longest field or table name a message repeats. Every real name is shorter; a longer one is
/// what a line holds when its syntax is broken (`[agent private_key = "…"` without `]`, a key
/// pasted alone on a line), and may be a secret.
const MAX_SHOWN_NAME: usize = 32;

/// `field` as located, with any part that is not a short plain name replaced by `?`.
fn shown_field(field: &str) -> String {
    let plain = |part: &str| {
        part.len() <= MAX_SHOWN_NAME
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-[]".contains(&b))
    };
    field
        .split('.')
        .map(|part| if plain(part) { part } else { "?" })
        .collect::<Vec<_>>()
        .join(".")
}

/// The parser's message with any quoted name longer than [`MAX_SHOWN_NAME`] left out
/// (serde's ``unknown field `…` `` repeats whatever stood before `=`).
fn hide_long_names(message: &str) -> String {
    message
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 && part.len() > MAX_SHOWN_NAME {
                "(not shown)"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("`")
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

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) warnings: Vec<String>,
}

impl Validator<'_> {
    pub(super) fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let agent = self.agent(&raw.agent)?;
        let mut gateways: Vec<GatewayConfig> = Vec::with_capacity(raw.gateways.len());
        for (i, g) in raw.gateways.iter().enumerate() {
            let gateway = self.gateway(i, g, &agent, &gateways)?;
            gateways.push(gateway);
        }
        for &ip in &agent.virtual_ips {
            let routed = gateways
                .iter()
                .any(|g| g.allowed_ips.iter().any(|n| same_family(n.addr(), ip)));
            if !gateways.is_empty() && !routed {
                self.warnings.push(format!(
                    "{}: no gateway has an {family} prefix in allowed_ips, so {family} traffic to agent.virtual_ip {ip} has no way back: add the gateway's {family} tunnel address to its allowed_ips",
                    self.path.display(),
                    family = family(ip),
                ));
            }
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
        let admin = admin_listen(
            self.path,
            raw.admin.listen.as_deref(),
            raw.admin.allow_remote,
        )?;
        if raw.admin.allow_remote && !admin.is_remote() {
            self.warnings.push(format!(
                "{}: admin.allow_remote = true has no effect: admin.listen `{admin}` is not a non-loopback TCP address",
                self.path.display()
            ));
        }
        let level = raw.log.level.clone().unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.invalid(
                "log.level",
                format!("`{level}` is not a log level (error, warn, info, debug, trace) or a tracing filter"),
            ));
        }
        let uapi_name = raw
            .uapi
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_UAPI_NAME.to_owned());
        if !valid_interface_name(&uapi_name) {
            return Err(self.invalid(
                "uapi.name",
                format!(
                    "`{uapi_name}` is not an interface name: use 1 to 15 characters among letters, digits, `_`, `=`, `+`, `.` and `-` (`wg` looks for /var/run/wireguard/NAME.sock)"
                ),
            ));
        }
        Ok(Config {
            path: self.path.to_owned(),
            agent,
            gateways,
            routes,
            proxy,
            admin,
            admin_allow_remote: raw.admin.allow_remote,
            log: LogConfig {
                format: raw.log.format,
                level,
            },
            uapi_name,
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
        let virtual_ips = self.agent_addresses(&raw.virtual_ip)?;
        let listed = self.agent_subnets(&raw.subnet)?;
        // One subnet per address, in the addresses' order.
        let mut subnets = Vec::with_capacity(virtual_ips.len());
        for &ip in &virtual_ips {
            let Some(&subnet) = listed.iter().find(|n| same_family(n.addr(), ip)) else {
                return Err(self.invalid(
                    "agent.subnet",
                    format!(
                        "no {family} prefix for agent.virtual_ip {ip}: add one, for example {example}",
                        family = family(ip),
                        example = example_subnet(&raw.subnet, ip),
                    ),
                ));
            };
            if !subnet.contains(ip) {
                return Err(self.outside("agent.virtual_ip".into(), ip, subnet));
            }
            subnets.push(subnet);
        }
        if let Some(orphan) = listed
            .iter()
            .find(|n| !virtual_ips.iter().any(|ip| same_family(n.addr(), *ip)))
        {
            return Err(self.invalid(
                "agent.subnet",
                format!(
                    "{orphan} is an {family} prefix, but agent.virtual_ip has no {family} address: \
                     add the agent's {family} address inside it to agent.virtual_ip, or remove the prefix",
                    family = family(orphan.addr()),
                ),
            ));
        }
        if !MTU_RANGE.contains(&raw.mtu) {
            let ipv6 = virtual_ips
                .iter()
                .find(|ip| ip.is_ipv6())
                .map(|ip| {
                    format!("; IPv6 inside the tunnel (agent.virtual_ip {ip}) requires it too")
                })
                .unwrap_or_default();
            return Err(self.invalid(
                "agent.mtu",
                format!(
                    "{} is out of range {}..={} (the userspace stack needs at least 1280{ipv6})",
                    raw.mtu,
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            ));
        }
        // Indexing cannot fail: `agent_addresses` never returns an empty list, and every
        // address got its subnet above.
        Ok(AgentConfig {
            private_key,
            virtual_ip: virtual_ips[0],
            subnet: subnets[0],
            virtual_ips,
            subnets,
            listen_port: raw.listen_port,
            mtu: raw.mtu,
        })
    }

    /// `agent.virtual_ip`: one address, or a list of one IPv4 and one IPv6 address. Never
    /// empty when it returns.
    fn agent_addresses(&self, raw: &OneOrList) -> Result<Vec<IpAddr>, ConfigError> {
        let list = raw.0.len() > 1;
        let mut out: Vec<IpAddr> = Vec::with_capacity(raw.0.len());
        for (k, text) in raw.0.iter().enumerate() {
            let field = item_field("agent.virtual_ip", list, k);
            let ip: IpAddr = text
                .parse()
                .map_err(|_| self.invalid(&field, format!("`{text}` is not an IP address")))?;
            if ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip) {
                return Err(self.invalid(
                    field,
                    format!("{ip} is not a unicast host address: use the agent's own address in the tunnel"),
                ));
            }
            if let Some(first) = out.iter().find(|o| same_family(**o, ip)) {
                return Err(self.invalid(
                    "agent.virtual_ip",
                    format!(
                        "two {family} addresses ({first} and {ip}): give at most one IPv4 and one IPv6 address",
                        family = family(ip)
                    ),
                ));
            }
            out.push(ip);
        }
        if out.is_empty() {
            return Err(self.invalid(
                "agent.virtual_ip",
                "the list is empty: give the agent's address, or one IPv4 and one IPv6 address",
            ));
        }
        Ok(out)
    }

    /// `agent.subnet`: one prefix, or a list of one IPv4 and one IPv6 prefix.
    fn agent_subnets(&self, raw: &OneOrList) -> Result<Vec<IpNet>, ConfigError> {
        let list = raw.0.len() > 1;
        let mut out: Vec<IpNet> = Vec::with_capacity(raw.0.len());
        for (k, text) in raw.0.iter().enumerate() {
            let net = parse_net(text)
                .map_err(|reason| self.invalid(item_field("agent.subnet", list, k), reason))?;
            if let Some(first) = out.iter().find(|o| same_family(o.addr(), net.addr())) {
                return Err(self.invalid(
                    "agent.subnet",
                    format!(
                        "two {family} prefixes ({first} and {net}): give one prefix per IP family",
                        family = family(net.addr())
                    ),
                ));
            }
            out.push(net);
        }
        if out.is_empty() {
            return Err(self.invalid(
                "agent.subnet",
                "the list is empty: give the tunnel's prefix (one per IP family of agent.virtual_ip)",
            ));
        }
        Ok(out)
    }

    fn outside(&self, field: String, addr: IpAddr, subnet: IpNet) -> ConfigError {
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
            (
                "private_key_credential",
                raw.private_key_credential.is_some(),
            ),
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
                format!("set exactly one of private_key, private_key_file, private_key_env or private_key_credential (found: {found})"),
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
        if let Some(name) = &raw.private_key_credential {
            return self.credential("agent.private_key_credential", name);
        }
        // Exactly one source is set (checked above) and it is none of the others.
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

    /// `private_key_credential = "NAME"`: `$CREDENTIALS_DIRECTORY/NAME`, as systemd's
    /// `LoadCredential=NAME:/path` provides it (under the same file rule as a key file).
    fn credential(&self, field: &str, name: &str) -> Result<PrivateKey, ConfigError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(self.invalid(
                field,
                format!("`{name}` is not a credential name (a file name without `/`)"),
            ));
        }
        let Some(dir) = (self.env)("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
            return Err(self.invalid(
                field,
                format!(
                    "CREDENTIALS_DIRECTORY is not set: run the agent as a systemd service with \
                     `LoadCredential={name}:/path/to/key` (or use private_key_file)"
                ),
            ));
        };
        let file = Path::new(&dir).join(name);
        let text = self.read_secret_file(field, file.clone())?;
        PrivateKey::from_base64(&text)
            .map_err(|r| self.bad_secret(field, format!("the credential {}", file.display()), r))
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

    /// Reads a key file named in the config (relative to its folder).
    fn read_key_file(&self, field: &str, file: &str) -> Result<Zeroizing<String>, ConfigError> {
        if file.is_empty() {
            return Err(self.invalid(field, "the key file name is empty"));
        }
        self.read_secret_file(field, self.resolve(file))
    }

    /// Opens a key file once, checks the opened handle (no window between check and read)
    /// and reads it. The rule: the owner is the agent's user or root; others can neither read
    /// nor write it, the group cannot write it (group-readable is fine: Kubernetes secret
    /// volumes with `fsGroup` are 0440).
    fn read_secret_file(
        &self,
        field: &str,
        resolved: PathBuf,
    ) -> Result<Zeroizing<String>, ConfigError> {
        use std::io::Read as _;
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let read_error = |source| ConfigError::KeyFileRead {
            path: self.path.to_owned(),
            field: field.into(),
            file: resolved.clone(),
            source,
        };
        let mut handle = std::fs::File::open(&resolved).map_err(read_error)?;
        let meta = handle.metadata().map_err(read_error)?;
        if !meta.is_file() {
            return Err(read_error(std::io::Error::other("not a regular file")));
        }
        let owner = meta.uid();
        let me = nix::unistd::geteuid().as_raw();
        if owner != me && owner != 0 {
            return Err(ConfigError::KeyFileOwner {
                path: self.path.to_owned(),
                field: field.into(),
                file: resolved,
                owner,
                user: me,
            });
        }
        let mode = meta.permissions().mode();
        if mode & KEY_FILE_FORBIDDEN != 0 {
            return Err(ConfigError::KeyFilePermissions {
                path: self.path.to_owned(),
                field: field.into(),
                file: resolved,
                mode: mode & 0o777,
            });
        }
        // A key is 44 characters: a bounded read refuses a wrong file of any size.
        let mut text = Zeroizing::new(String::new());
        handle
            .by_ref()
            .take(4096)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        Ok(text)
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
        let Some(subnet) = agent.subnet_for(virtual_ip) else {
            let ipv6 = virtual_ip.is_ipv6();
            return Err(self.invalid(
                field("virtual_ip"),
                format!(
                    "{virtual_ip} is an {family} address, but the agent has no {family} address \
                     (the liveness probe is sent from it): add one to agent.virtual_ip and its \
                     prefix to agent.subnet, or give the gateway's {other} address",
                    family = family(virtual_ip),
                    other = if ipv6 { "IPv4" } else { "IPv6" },
                ),
            ));
        };
        if !subnet.contains(virtual_ip) {
            return Err(self.outside(field("virtual_ip"), virtual_ip, subnet));
        }
        if agent.virtual_ips.contains(&virtual_ip) {
            return Err(self.invalid(
                field("virtual_ip"),
                format!("{virtual_ip} is the agent's own agent.virtual_ip"),
            ));
        }
        if let Some(j) = earlier
            .iter()
            .position(|g| g.virtual_ip == Some(virtual_ip))
        {
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
            None => vec![IpNet::host(virtual_ip)],
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (k, text) in list.iter().enumerate() {
                    let prefix = parse_net(text).map_err(|reason| {
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
                    IpNet::host(virtual_ip)
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
            virtual_ip: Some(virtual_ip),
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
        if let Some(j) = earlier.iter().position(|r| {
            r.port == raw.port && r.protocol.is_datagram() == raw.protocol.is_datagram()
        }) {
            return Err(self.duplicate(
                field("port"),
                raw.port.to_string(),
                format!("routes[{j}]"),
            ));
        }
        let upstream = self.route_upstream(&field("upstream"), &raw.upstream, raw.protocol)?;
        let only = |name: &str, set: bool, protocols: &[RouteProtocol], which: &str| {
            if set && !protocols.contains(&raw.protocol) {
                Err(self.invalid(field(name), format!("applies to {which} routes only")))
            } else {
                Ok(())
            }
        };
        let http = [RouteProtocol::Http];
        let streams = [RouteProtocol::Http, RouteProtocol::Tcp];
        only(
            "trust_forwarded",
            raw.trust_forwarded.is_some(),
            &http,
            "protocol = \"http\"",
        )?;
        only(
            "upstream_h2c",
            raw.upstream_h2c.is_some(),
            &http,
            "protocol = \"http\"",
        )?;
        only(
            "proxy_protocol",
            raw.proxy_protocol.is_some(),
            &[RouteProtocol::Tcp],
            "protocol = \"tcp\"",
        )?;
        only(
            "upstream_connect_timeout",
            raw.upstream_connect_timeout.is_some(),
            &streams,
            "http and tcp",
        )?;
        only(
            "upstream_response_timeout",
            raw.upstream_response_timeout.is_some(),
            &http,
            "protocol = \"http\"",
        )?;
        only(
            "max_flows",
            raw.max_flows.is_some(),
            &[RouteProtocol::Udp],
            "protocol = \"udp\"",
        )?;
        let timeout =
            |name: &str, value: &Option<String>| -> Result<Option<Duration>, ConfigError> {
                value
                    .as_deref()
                    .map(|text| self.bounded_duration(&field(name), text, false))
                    .transpose()
            };
        let max_flows = match raw.max_flows {
            None => None,
            Some(n @ 1..=1_000_000) => Some(n as usize),
            Some(n) => {
                return Err(self.invalid(
                    field("max_flows"),
                    format!("{n} is out of range 1..=1000000"),
                ));
            }
        };
        Ok(RouteConfig {
            port: raw.port,
            upstream,
            protocol: raw.protocol,
            trust_forwarded: raw.trust_forwarded.unwrap_or(true),
            proxy_protocol: raw.proxy_protocol.unwrap_or(false),
            upstream_h2c: raw.upstream_h2c.unwrap_or(false),
            idle_timeout: timeout("idle_timeout", &raw.idle_timeout)?,
            upstream_connect_timeout: timeout(
                "upstream_connect_timeout",
                &raw.upstream_connect_timeout,
            )?,
            upstream_response_timeout: timeout(
                "upstream_response_timeout",
                &raw.upstream_response_timeout,
            )?,
            max_flows,
        })
    }

    /// A route's `upstream`: `host:port`, or `unix:/absolute/path` for HTTP and TCP routes.
    fn route_upstream(
        &self,
        field: &str,
        text: &str,
        protocol: RouteProtocol,
    ) -> Result<RouteUpstream, ConfigError> {
        let Some(path) = text.strip_prefix("unix:") else {
            return text
                .parse()
                .map(RouteUpstream::Net)
                .map_err(|reason: String| self.invalid(field, reason));
        };
        if protocol == RouteProtocol::Udp {
            return Err(self.invalid(
                field,
                format!("`{text}`: a udp route forwards to host:port; unix sockets serve http and tcp routes"),
            ));
        }
        let path = Path::new(path);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(self.invalid(
                field,
                format!(
                    "`{text}`: a unix socket upstream needs an absolute path, like unix:/run/app.sock"
                ),
            ));
        }
        Ok(RouteUpstream::Unix(path.to_owned()))
    }

    /// A duration field: parsed, at most 7 days, and not zero unless `zero_ok`.
    fn bounded_duration(
        &self,
        field: &str,
        text: &str,
        zero_ok: bool,
    ) -> Result<Duration, ConfigError> {
        let d = parse_duration(text).map_err(|reason| self.invalid(field, reason))?;
        if d.is_zero() && !zero_ok {
            return Err(self.invalid(field, "must be greater than 0"));
        }
        if d > MAX_DURATION {
            return Err(self.invalid(field, format!("`{text}` is too long: at most 7d (168h)")));
        }
        Ok(d)
    }

    fn proxy(&self, raw: &RawProxy) -> Result<ProxyConfig, ConfigError> {
        let defaults = ProxyConfig::default();
        let duration = |name: &str, value: &Option<String>, default: Duration, zero_ok: bool| {
            let Some(text) = value else {
                return Ok(default);
            };
            self.bounded_duration(&format!("proxy.{name}"), text, zero_ok)
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
        let mut proxy = ProxyConfig::default();
        proxy.header_read_timeout = duration(
            "header_read_timeout",
            &raw.header_read_timeout,
            defaults.header_read_timeout,
            false,
        )?;
        proxy.upstream_connect_timeout = duration(
            "upstream_connect_timeout",
            &raw.upstream_connect_timeout,
            defaults.upstream_connect_timeout,
            false,
        )?;
        proxy.upstream_response_timeout = duration(
            "upstream_response_timeout",
            &raw.upstream_response_timeout,
            defaults.upstream_response_timeout,
            false,
        )?;
        proxy.idle_timeout = duration(
            "idle_timeout",
            &raw.idle_timeout,
            defaults.idle_timeout,
            false,
        )?;
        proxy.drain_timeout = duration(
            "drain_timeout",
            &raw.drain_timeout,
            defaults.drain_timeout,
            true,
        )?;
        // Both bounded by the range checks above, far below usize::MAX.
        proxy.max_header_bytes = max_header_bytes as usize;
        proxy.max_connections = max_connections as usize;
        let bounded = |name: &str, value: Option<u64>, default: u64, range: RangeInclusive<u64>| {
            let value = value.unwrap_or(default);
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(self.invalid(
                    format!("proxy.{name}"),
                    format!(
                        "{value} is out of range {}..={}",
                        range.start(),
                        range.end()
                    ),
                ))
            }
        };
        // Each range ends far below u32::MAX and usize::MAX.
        proxy.http2_max_concurrent_streams = bounded(
            "http2_max_concurrent_streams",
            raw.http2_max_concurrent_streams,
            u64::from(defaults.http2_max_concurrent_streams),
            1..=1000,
        )? as u32;
        proxy.http2_max_send_buffer = bounded(
            "http2_max_send_buffer",
            raw.http2_max_send_buffer,
            defaults.http2_max_send_buffer as u64,
            16 * 1024..=16 * 1024 * 1024,
        )? as usize;
        proxy.max_upstream_requests = bounded(
            "max_upstream_requests",
            raw.max_upstream_requests,
            defaults.max_upstream_requests as u64,
            1..=1_000_000,
        )? as usize;
        proxy.max_upstream_sockets = bounded(
            "max_upstream_sockets",
            raw.max_upstream_sockets,
            defaults.max_upstream_sockets as u64,
            1..=1_000_000,
        )? as usize;
        proxy.lingering_close_timeout = duration(
            "lingering_close_timeout",
            &raw.lingering_close_timeout,
            defaults.lingering_close_timeout,
            true,
        )?;
        proxy.lingering_close_bytes = bounded(
            "lingering_close_bytes",
            raw.lingering_close_bytes,
            defaults.lingering_close_bytes,
            0..=1 << 30,
        )?;
        proxy.access_log = raw.access_log.unwrap_or(defaults.access_log);
        proxy.max_udp_flows = bounded(
            "max_udp_flows",
            raw.max_udp_flows,
            defaults.max_udp_flows as u64,
            1..=1_000_000,
        )? as usize;
        Ok(proxy)
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

/// `field`, or `field[k]` when the value was a list of several items.
fn item_field(field: &str, list: bool, k: usize) -> String {
    if list {
        format!("{field}[{k}]")
    } else {
        field.to_owned()
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// `IPv4` or `IPv6`, as messages name a family.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// A `subnet` value to suggest when `ip` has no prefix of its family: the value as written
/// plus a /24 (/64) around `ip`, as TOML.
fn example_subnet(raw: &OneOrList, ip: IpAddr) -> String {
    let len = if ip.is_ipv4() { 24 } else { 64 };
    // Cannot fail: the length is in range for the family.
    let around = IpNet::new(ip, len).map_or_else(|_| ip.to_string(), |n| n.to_string());
    let mut items: Vec<String> = raw.0.iter().map(|s| format!("{s:?}")).collect();
    items.push(format!("{around:?}"));
    format!("subnet = [{}]", items.join(", "))
}

/// Parses an IP prefix (`10.1.0.0/24`; a bare address is a host prefix).
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map_err(|e| format!("`{text}` is not an IP prefix like 10.1.0.0/24: {e}"))
}

/// The default `[uapi] name`.
pub(crate) const DEFAULT_UAPI_NAME: &str = "wg-agent";

/// An interface name `wg` accepts: 1 to 15 bytes (`IFNAMSIZ` - 1), no `/`, nothing a path
/// or a shell could misread.
pub(crate) fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_=+.-".contains(&b))
}
