//! `wg-agent import`: a wg-quick file (`/etc/wireguard/wg0.conf`) to the equivalent agent
//! config, and the test that tells such a file from an agent config.
//!
//! The mapping (docs/migrating-from-wg-quick.md has the table):
//! - `[Interface]`: the first `Address` of each IP family gives `virtual_ip` and `subnet`
//!   (a list when there is one of each: dual stack; further ones are noted); `PrivateKey` is
//!   written inline or, with a key file, as `private_key_file`; `ListenPort` and `MTU` carry
//!   over; `DNS`, `Table`, `PreUp`, `PostUp`, `PreDown`, `PostDown`, `SaveConfig` and `FwMark`
//!   have no meaning for a userspace agent and are named as ignored.
//! - each `[Peer]` with an `Endpoint` becomes a `[[gateways]]` entry: `PublicKey`,
//!   `Endpoint`, `AllowedIPs`, `PersistentKeepalive`, `PresharedKey`; its `id` comes from a
//!   `# Name = …` comment, else `gw1`, `gw2`, …; its `virtual_ip` is the host of a /32 (/128)
//!   allowed IP, else a guess inside the subnet that the notes ask to check.
//!
//! Every remark for the operator is returned in [`Imported::notes`] (the binary prints them on
//! stderr); the TOML never holds a remark that needs action. No secret is ever put in a note.
//!
//! ```
//! use agent::wg_quick::{ImportOptions, import};
//! let wg0 = "[Interface]\nPrivateKey = dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n\
//!            Address = 10.1.0.100/24\nDNS = 1.1.1.1\n\n[Peer]\n# Name = tokyo\n\
//!            PublicKey = 3AgimJR8WZmjsm3iHGRz5IEhF6FA/6pqZe3gVEzlFjI=\n\
//!            Endpoint = gw.example.net:51820\nAllowedIPs = 10.1.0.1/32\n";
//! let out = import(wg0, &ImportOptions::default())?;
//! assert!(out.toml.contains("virtual_ip = \"10.1.0.100\""));
//! assert!(out.toml.contains("id = \"tokyo\""));
//! assert!(out.notes.iter().any(|n| n.contains("DNS") && n.contains("ignored")));
//! # Ok::<(), agent::wg_quick::ImportError>(())
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use wg_core::{IpNet, PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::config::Endpoint;

/// Fields of `[Interface]` that a userspace agent has no use for.
const IGNORED_INTERFACE: [&str; 8] = [
    "DNS",
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
    "FwMark",
];

/// What the import may add beyond the file.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// `--route PORT=HOST:PORT`: HTTP routes to write (none: the agent's default route).
    pub routes: Vec<(u16, Endpoint)>,
    /// `--key-file PATH`: the private key goes there (the caller writes it, mode 0600) and
    /// the TOML names it as `private_key_file`.
    pub key_file: Option<PathBuf>,
}

/// The result of an import.
#[derive(Debug)]
#[non_exhaustive]
pub struct Imported {
    /// The agent config (TOML). Holds the private key unless a key file was asked for.
    pub toml: Zeroizing<String>,
    /// The private key's base64, for the caller to write to [`ImportOptions::key_file`].
    pub private_key: Zeroizing<String>,
    /// Remarks for the operator: ignored fields, guesses to check, peers left out.
    pub notes: Vec<String>,
    /// Whether [`Imported::toml`] holds a secret (the private key, or a preshared key): it
    /// must then be saved where only its owner can read it.
    pub has_inline_secret: bool,
}

/// Why a wg-quick file cannot be imported. Messages name the line and the field, never a
/// secret's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A line that is neither a section, a `Key = value` pair nor a comment. Its text is not
    /// repeated: it may be a pasted secret.
    #[error("line {line}: not `Key = value`, a comment or a [Interface] / [Peer] header")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A required field is missing.
    #[error("{section}: no `{field}` (wg-agent needs it)")]
    Missing {
        /// `[Interface]` or `[Peer] #N`.
        section: String,
        /// The field.
        field: &'static str,
    },
    /// A value that does not parse.
    #[error("line {line}: {field}: {message}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// The field.
        field: String,
        /// What is wrong (the value is shown unless it is a secret).
        message: String,
    },
}

/// Whether `text` looks like a wg-quick / `wg setconf` file rather than an agent config:
/// it has an `[Interface]` or `[Peer]` section header.
pub fn looks_like_wg_quick(text: &str) -> bool {
    text.lines().any(|line| {
        let t = line.trim();
        t.eq_ignore_ascii_case("[interface]") || t.eq_ignore_ascii_case("[peer]")
    })
}

/// One `Key = value` with its line number.
struct Field {
    line: usize,
    key: String,
    value: String,
}

#[derive(Default)]
struct Section {
    /// Line of the header.
    line: usize,
    fields: Vec<Field>,
    /// The value of a `# Name = …` comment.
    name: Option<String>,
}

impl Section {
    /// Values of `key` (case-insensitive) in file order, with their lines.
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.key.eq_ignore_ascii_case(key))
    }

    fn first(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.key.eq_ignore_ascii_case(key))
    }
}

/// Converts a wg-quick file to an agent config.
pub fn import(text: &str, options: &ImportOptions) -> Result<Imported, ImportError> {
    let (interface, peers) = parse(text)?;
    let mut notes = Vec::new();
    let interface = interface.ok_or(ImportError::Missing {
        section: "the file".into(),
        field: "[Interface]",
    })?;

    // [Interface]
    let key_field = interface.first("PrivateKey").ok_or(ImportError::Missing {
        section: "[Interface]".into(),
        field: "PrivateKey",
    })?;
    let private_key =
        PrivateKey::from_base64(&key_field.value).map_err(|reason| ImportError::Invalid {
            line: key_field.line,
            field: "PrivateKey".into(),
            message: format!("not a WireGuard key: {reason} (value not shown)"),
        })?;
    let addresses = interface_addresses(&interface)?;
    // The first address of each family, the very first one leading (it becomes the
    // config's `virtual_ip`, or the first of its list).
    let mut chosen: Vec<(IpAddr, IpNet)> = Vec::with_capacity(2);
    for &(ip, net) in &addresses {
        match chosen.iter().find(|(c, _)| c.is_ipv4() == ip.is_ipv4()) {
            None => chosen.push((ip, net)),
            Some((kept, _)) if *kept == ip => {}
            Some((kept, _)) => notes.push(format!(
                "Address {ip}/{}: not imported (the agent takes one address per IP family, {kept})",
                net.prefix_len()
            )),
        }
    }
    if chosen.is_empty() {
        return Err(ImportError::Missing {
            section: "[Interface]".into(),
            field: "Address",
        });
    }
    let virtual_ips: Vec<IpAddr> = chosen.iter().map(|(ip, _)| *ip).collect();
    let subnets: Vec<IpNet> = chosen
        .iter()
        .map(|&(ip, net)| agent_subnet(ip, net, &peers, &mut notes))
        .collect();
    let listen_port = number::<u16>(&interface, "ListenPort")?;
    let mtu = number::<u16>(&interface, "MTU")?;
    for field in &interface.fields {
        let known = ["PrivateKey", "Address", "ListenPort", "MTU"]
            .iter()
            .any(|k| field.key.eq_ignore_ascii_case(k));
        if known {
            continue;
        }
        if let Some(name) = IGNORED_INTERFACE
            .iter()
            .find(|k| field.key.eq_ignore_ascii_case(k))
        {
            notes.push(format!(
                "line {}: {name} ignored (a userspace agent changes nothing on the host)",
                field.line
            ));
        } else {
            notes.push(format!(
                "line {}: [Interface] {} ignored (not a wg-quick field wg-agent knows)",
                field.line,
                shown_key(&field.key)
            ));
        }
    }

    let mut out = String::new();
    out.push_str(
        "# Imported by `wg-agent import` from a wg-quick file. Check the notes it printed.\n",
    );
    if options.routes.is_empty() {
        notes.push(
            "no --route given: the agent serves its default route, port 80 -> 127.0.0.1:8080 (add --route PORT=HOST:PORT)"
                .into(),
        );
    }
    out.push_str("\n[agent]\n");
    match &options.key_file {
        Some(path) => {
            let _ = writeln!(out, "private_key_file = {}", quote(&path.to_string_lossy()));
        }
        None => {
            let _ = writeln!(
                out,
                "private_key = {}",
                quote(private_key.to_base64_secret().as_str())
            );
            notes.push(
                "the output holds the private key inline: save it where only you can read it (umask 077), or use --key-file"
                    .into(),
            );
        }
    }
    let _ = writeln!(out, "virtual_ip = {}", one_or_list(&virtual_ips));
    let _ = writeln!(out, "subnet = {}", one_or_list(&subnets));
    if let Some(port) = listen_port {
        let _ = writeln!(out, "listen_port = {port}");
    }
    if let Some(mtu) = mtu {
        let _ = writeln!(out, "mtu = {mtu}");
    }

    // [Peer] -> [[gateways]]
    let mut ids = BTreeSet::new();
    let mut vips: BTreeSet<IpAddr> = virtual_ips.iter().copied().collect();
    let mut gateways = 0;
    let mut inline_psk = false;
    for (index, peer) in peers.iter().enumerate() {
        let section = format!("[Peer] #{} (line {})", index + 1, peer.line);
        let Some(gateway) = peer_gateway(peer, &section, &subnets, &mut vips, &mut notes)? else {
            continue;
        };
        gateways += 1;
        let id = unique_id(
            peer.name.as_deref(),
            gateways,
            &mut ids,
            &section,
            &mut notes,
        );
        out.push_str("\n[[gateways]]\n");
        let _ = writeln!(out, "id = {}", quote(&id));
        if let Some(name) = &peer.name {
            let _ = writeln!(out, "name = {}", quote(name));
        }
        let _ = writeln!(
            out,
            "public_key = {}",
            quote(&gateway.public_key.to_base64())
        );
        let _ = writeln!(out, "endpoint = {}", quote(&gateway.endpoint.to_string()));
        let _ = writeln!(
            out,
            "virtual_ip = {}",
            quote(&gateway.virtual_ip.to_string())
        );
        let allowed: Vec<String> = gateway
            .allowed_ips
            .iter()
            .map(|n| quote(&n.to_string()))
            .collect();
        let _ = writeln!(out, "allowed_ips = [{}]", allowed.join(", "));
        if let Some(keepalive) = gateway.keepalive {
            let _ = writeln!(out, "persistent_keepalive = {keepalive}");
        }
        if let Some(psk) = &gateway.preshared_key {
            let _ = writeln!(out, "preshared_key = {}", quote(psk));
            inline_psk = true;
            notes.push(format!(
                "{section}: its PresharedKey is written inline: save the config where only you can read it (umask 077), or move it to a file named by preshared_key_file"
            ));
        }
    }
    if peers.is_empty() {
        notes.push("no [Peer] sections: the agent starts with no gateways".into());
    }
    for (port, upstream) in &options.routes {
        let _ = writeln!(
            out,
            "\n[[routes]]\nport = {port}\nupstream = {}\nprotocol = \"http\"",
            quote(&upstream.to_string())
        );
    }
    Ok(Imported {
        toml: Zeroizing::new(out),
        private_key: private_key.to_base64_secret(),
        notes,
        has_inline_secret: options.key_file.is_none() || inline_psk,
    })
}

/// Splits the file into `[Interface]` and `[Peer]` sections.
fn parse(text: &str) -> Result<(Option<Section>, Vec<Section>), ImportError> {
    enum Current {
        None,
        Interface,
        Peer,
    }
    let mut interface: Option<Section> = None;
    let mut peers: Vec<Section> = Vec::new();
    let mut current = Current::None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            // `# Name = tokyo` (wg-easy, wireguard-ui and many hand-written files).
            if let (Current::Peer, Some((k, v))) = (&current, comment.split_once('='))
                && k.trim().eq_ignore_ascii_case("name")
                && let Some(peer) = peers.last_mut()
                && peer.name.is_none()
                && !v.trim().is_empty()
            {
                peer.name = Some(v.trim().to_owned());
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.eq_ignore_ascii_case("[interface]") {
            if interface.is_some() {
                return Err(ImportError::Invalid {
                    line,
                    field: "[Interface]".into(),
                    message: "a second [Interface] section".into(),
                });
            }
            interface = Some(Section {
                line,
                ..Section::default()
            });
            current = Current::Interface;
            continue;
        }
        if trimmed.eq_ignore_ascii_case("[peer]") {
            peers.push(Section {
                line,
                ..Section::default()
            });
            current = Current::Peer;
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(ImportError::Syntax { line });
        };
        // A value may carry a trailing comment (`wg` strips `#…`).
        let value = value.split('#').next().unwrap_or_default().trim();
        let field = Field {
            line,
            key: key.trim().to_owned(),
            value: value.to_owned(),
        };
        match current {
            Current::Interface => interface.as_mut().map(|s| s.fields.push(field)),
            Current::Peer => peers.last_mut().map(|s| s.fields.push(field)),
            Current::None => {
                return Err(ImportError::Invalid {
                    line,
                    field: shown_key(&field.key),
                    message: "outside any [Interface] or [Peer] section".into(),
                });
            }
        };
    }
    Ok((interface, peers))
}

/// Every `Address` (comma-separated, possibly on several lines): the address and its prefix.
fn interface_addresses(interface: &Section) -> Result<Vec<(IpAddr, IpNet)>, ImportError> {
    let mut out = Vec::new();
    for field in interface.all("Address") {
        for item in field
            .value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let invalid = |message: String| ImportError::Invalid {
                line: field.line,
                field: "Address".into(),
                message,
            };
            let (ip_text, len) = item.split_once('/').unwrap_or((item, ""));
            let ip: IpAddr = ip_text
                .parse()
                .map_err(|_| invalid(format!("`{item}` is not an address like 10.1.0.100/24")))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = if len.is_empty() {
                max
            } else {
                len.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| invalid(format!("`{item}`: bad prefix length")))?
            };
            let net = IpNet::new(ip, len).map_err(|e| invalid(format!("`{item}`: {e}")))?;
            out.push((ip, net));
        }
    }
    Ok(out)
}

/// The agent's `subnet`: the `Address` prefix, or, when that is a single host (clients
/// often get `/32`), the smallest peer allowed prefix holding the address, else a /24 (/64)
/// around it. Both of the latter are noted as guesses.
fn agent_subnet(ip: IpAddr, net: IpNet, peers: &[Section], notes: &mut Vec<String>) -> IpNet {
    // A /31 (/127) or narrower leaves no room for a gateway beside the agent.
    let narrowest_shared = if ip.is_ipv4() { 30 } else { 126 };
    if net.prefix_len() <= narrowest_shared {
        return net;
    }
    let from_peers = peers
        .iter()
        .flat_map(|p| p.all("AllowedIPs"))
        .flat_map(|f| f.value.split(','))
        .filter_map(|s| s.trim().parse::<IpNet>().ok())
        .filter(|n| n.contains(ip) && n.prefix_len() > 0 && n.prefix_len() < net.prefix_len())
        .max_by_key(IpNet::prefix_len);
    let (subnet, why) = match from_peers {
        Some(n) => (n, "a peer's AllowedIPs holding it"),
        None => {
            let len = if ip.is_ipv4() { 24 } else { 64 };
            // Cannot fail: the length is in range for the family.
            let n = IpNet::new(ip, len).unwrap_or(net);
            (n, "no peer AllowedIPs holds it: a /24 (/64) around it")
        }
    };
    notes.push(format!(
        "Address {ip}/{} is a single host; subnet {subnet} is a guess from {why}: check it covers every gateway's virtual IP",
        net.prefix_len()
    ));
    subnet
}

fn number<T: std::str::FromStr>(section: &Section, key: &str) -> Result<Option<T>, ImportError> {
    section
        .first(key)
        .map(|f| {
            f.value.parse::<T>().map_err(|_| ImportError::Invalid {
                line: f.line,
                field: key.into(),
                message: format!("`{}` is not a number in range", f.value),
            })
        })
        .transpose()
}

struct Gateway {
    public_key: PublicKey,
    endpoint: Endpoint,
    virtual_ip: IpAddr,
    allowed_ips: Vec<IpNet>,
    keepalive: Option<u16>,
    preshared_key: Option<Zeroizing<String>>,
}

/// One `[Peer]` as a gateway; `None` (with a note) for a peer the agent cannot dial.
fn peer_gateway(
    peer: &Section,
    section: &str,
    subnets: &[IpNet],
    vips: &mut BTreeSet<IpAddr>,
    notes: &mut Vec<String>,
) -> Result<Option<Gateway>, ImportError> {
    let key = peer
        .first("PublicKey")
        .ok_or_else(|| ImportError::Missing {
            section: section.to_owned(),
            field: "PublicKey",
        })?;
    let public_key = PublicKey::from_base64(&key.value).map_err(|reason| ImportError::Invalid {
        line: key.line,
        field: "PublicKey".into(),
        message: format!("`{}` is not a WireGuard public key: {reason}", key.value),
    })?;
    let Some(endpoint_field) = peer.first("Endpoint") else {
        notes.push(format!(
            "{section} (public key {public_key}): no Endpoint, left out: the agent dials its gateways and needs host:port"
        ));
        return Ok(None);
    };
    let endpoint: Endpoint =
        endpoint_field
            .value
            .parse()
            .map_err(|message: String| ImportError::Invalid {
                line: endpoint_field.line,
                field: "Endpoint".into(),
                message,
            })?;
    let mut allowed_ips = Vec::new();
    for field in peer.all("AllowedIPs") {
        for item in field
            .value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let net: IpNet = item.parse().map_err(|e| ImportError::Invalid {
                line: field.line,
                field: "AllowedIPs".into(),
                message: format!("`{item}` is not an IP prefix: {e}"),
            })?;
            allowed_ips.push(net);
        }
    }
    let host = |n: &IpNet| {
        let max = if n.addr().is_ipv4() { 32 } else { 128 };
        (n.prefix_len() == max).then(|| n.addr())
    };
    // The first host route inside one of the agent's subnets, in file order: with dual
    // stack, the gateway's probe then uses the family its AllowedIPs name first.
    let single = allowed_ips
        .iter()
        .filter_map(host)
        .find(|ip| subnets.iter().any(|n| n.contains(*ip)) && !vips.contains(ip));
    let virtual_ip = match single {
        Some(ip) => ip,
        None => {
            // The leading address's subnet (never empty: the caller has an address).
            let subnet = subnets[0];
            let guess = first_free_host(subnet, vips).ok_or_else(|| ImportError::Invalid {
                line: peer.line,
                field: "AllowedIPs".into(),
                message: format!("no free address left in subnet {subnet} for this gateway"),
            })?;
            let inside: Vec<String> = subnets.iter().map(ToString::to_string).collect();
            notes.push(format!(
                "{section}: virtual_ip {guess} is a guess (no /32 AllowedIPs inside {}): set it to the gateway's address in the tunnel, the liveness probe pings it",
                inside.join(" or ")
            ));
            guess
        }
    };
    vips.insert(virtual_ip);
    if !allowed_ips.iter().any(|n| n.contains(virtual_ip)) {
        notes.push(format!(
            "{section}: allowed_ips gains {} so the gateway's virtual_ip is routed to it",
            IpNet::host(virtual_ip)
        ));
        allowed_ips.push(IpNet::host(virtual_ip));
    }
    let keepalive = match peer.first("PersistentKeepalive") {
        None => {
            notes.push(format!(
                "{section}: no PersistentKeepalive; the agent's default of 25 s applies (it keeps NAT mappings open)"
            ));
            None
        }
        Some(f) if f.value.eq_ignore_ascii_case("off") => Some(0),
        Some(f) => Some(f.value.parse::<u16>().map_err(|_| ImportError::Invalid {
            line: f.line,
            field: "PersistentKeepalive".into(),
            message: format!("`{}` is not a number of seconds or `off`", f.value),
        })?),
    };
    let preshared_key = match peer.first("PresharedKey") {
        None => None,
        Some(f) => {
            PresharedKey::from_base64(&f.value).map_err(|reason| ImportError::Invalid {
                line: f.line,
                field: "PresharedKey".into(),
                message: format!("not a WireGuard key: {reason} (value not shown)"),
            })?;
            Some(Zeroizing::new(f.value.clone()))
        }
    };
    for field in &peer.fields {
        let known = [
            "PublicKey",
            "Endpoint",
            "AllowedIPs",
            "PersistentKeepalive",
            "PresharedKey",
        ]
        .iter()
        .any(|k| field.key.eq_ignore_ascii_case(k));
        if !known {
            notes.push(format!(
                "line {}: [Peer] {} ignored (not a field wg-agent knows)",
                field.line,
                shown_key(&field.key)
            ));
        }
    }
    Ok(Some(Gateway {
        public_key,
        endpoint,
        virtual_ip,
        allowed_ips,
        keepalive,
        preshared_key,
    }))
}

/// The first host of `subnet` (network address + 1, …) not already taken.
fn first_free_host(subnet: IpNet, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    (1u32..=1024)
        .filter_map(|offset| match subnet.addr() {
            IpAddr::V4(a) => u32::from(a)
                .checked_add(offset)
                .map(|n| IpAddr::V4(n.into())),
            IpAddr::V6(a) => u128::from(a)
                .checked_add(u128::from(offset))
                .map(|n| IpAddr::V6(n.into())),
        })
        .take_while(|ip| subnet.contains(*ip))
        .find(|ip| !taken.contains(ip))
}

/// A gateway id from the peer's name (letters, digits, `-`, `_`, `.`; others become `-`),
/// else `gwN`; made unique.
fn unique_id(
    name: Option<&str>,
    n: usize,
    ids: &mut BTreeSet<String>,
    section: &str,
    notes: &mut Vec<String>,
) -> String {
    let from_name = name.map(|name| {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(56)
            .collect::<String>()
    });
    let base = from_name
        .filter(|s| s.chars().any(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| format!("gw{n}"));
    let mut id = base.clone();
    let mut k = 2;
    while ids.contains(&id) {
        id = format!("{base}-{k}");
        k += 1;
    }
    if Some(id.as_str()) != name && name.is_some() {
        notes.push(format!("{section}: id `{id}` made from its name"));
    }
    ids.insert(id.clone());
    id
}

/// A field name as it may be shown: a short plain word, else `(not shown)` (a line such as a
/// pasted key, `base64…=`, also splits at `=`).
fn shown_key(key: &str) -> String {
    if key.len() <= 24 && key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        key.to_owned()
    } else {
        "(a name not shown)".to_owned()
    }
}

/// One value as a TOML string, several as a list of strings.
fn one_or_list<T: ToString>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(&i.to_string())).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", quoted.join(", ")),
    }
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const AGENT: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const GW1: &str = "3AgimJR8WZmjsm3iHGRz5IEhF6FA/6pqZe3gVEzlFjI=";
    const GW2: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";

    fn valid(toml: &str) -> Config {
        Config::from_toml(toml, "imported.toml".as_ref()).unwrap_or_else(|e| panic!("{e}\n{toml}"))
    }

    #[test]
    fn a_typical_client_file() {
        let wg0 = format!(
            "[Interface]\nPrivateKey = {AGENT}\nAddress = 10.1.0.100/24, fd00::100/64\nListenPort = 51821\n\
             MTU = 1380\nDNS = 10.1.0.1\nPostUp = iptables -A FORWARD -i %i -j ACCEPT\nTable = off\n\n\
             [Peer]\n# Name = Tokyo gateway\nPublicKey = {GW1}\nPresharedKey = {PSK}\n\
             Endpoint = gw1.example.net:51820\nAllowedIPs = 10.1.0.1/32, 192.168.10.0/24\n\
             PersistentKeepalive = 15\n\n\
             [Peer]\nPublicKey = {GW2}\nEndpoint = [2001:db8::2]:51820\nAllowedIPs = 10.1.0.0/24\n"
        );
        let out = import(&wg0, &ImportOptions::default()).unwrap();
        let c = valid(&out.toml);
        assert_eq!(c.agent.virtual_ip.to_string(), "10.1.0.100");
        assert_eq!(c.agent.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(
            c.agent.virtual_ips,
            [c.agent.virtual_ip, "fd00::100".parse().unwrap()],
            "both families carried"
        );
        assert_eq!(c.agent.subnets[1].to_string(), "fd00::/64");
        assert!(
            out.toml
                .contains("virtual_ip = [\"10.1.0.100\", \"fd00::100\"]\nsubnet = [\"10.1.0.0/24\", \"fd00::/64\"]\n"),
            "{}",
            out.toml.as_str()
        );
        assert_eq!(c.agent.listen_port, 51821);
        assert_eq!(c.agent.mtu, 1380);
        assert_eq!(c.agent.private_key.to_base64_secret().as_str(), AGENT);
        assert_eq!(c.gateways.len(), 2);
        let g1 = &c.gateways[0];
        assert_eq!(g1.id, "Tokyo-gateway");
        assert_eq!(g1.name.as_deref(), Some("Tokyo gateway"));
        assert_eq!(g1.virtual_ip.unwrap().to_string(), "10.1.0.1");
        assert_eq!(g1.persistent_keepalive, 15);
        assert!(g1.preshared_key.is_some());
        assert_eq!(g1.endpoint.to_string(), "gw1.example.net:51820");
        assert_eq!(g1.allowed_ips.len(), 2);
        let g2 = &c.gateways[1];
        assert_eq!(g2.id, "gw2");
        assert_eq!(g2.endpoint.to_string(), "[2001:db8::2]:51820");
        assert_eq!(
            g2.virtual_ip.unwrap().to_string(),
            "10.1.0.2",
            "first free host, guessed"
        );
        assert_eq!(g2.persistent_keepalive, 25);
        let notes = out.notes.join("\n");
        assert!(!notes.contains("not imported"), "{notes}");
        for expected in [
            "DNS ignored",
            "PostUp ignored",
            "Table ignored",
            "virtual_ip 10.1.0.2 is a guess",
            "no PersistentKeepalive",
            "no --route given",
            "private key inline",
            "PresharedKey is written inline",
        ] {
            assert!(notes.contains(expected), "{expected:?} in\n{notes}");
        }
        assert!(
            !notes.contains(AGENT) && !notes.contains(PSK),
            "no secret in notes"
        );
        assert!(
            !notes.contains("iptables"),
            "ignored values are not repeated"
        );
    }

    #[test]
    fn one_address_per_family_the_rest_named() {
        // IPv6 first, a second IPv4 and a second IPv6 on another Address line.
        let wg0 = format!(
            "[Interface]\nPrivateKey = {AGENT}\nAddress = fd00::100/64, 10.1.0.100/24\n\
             Address = 10.1.0.101/24, fd00::101/64\n\n\
             [Peer]\nPublicKey = {GW1}\nEndpoint = 192.0.2.1:51820\n\
             AllowedIPs = 10.1.0.1/32, fd00::1/128\n"
        );
        let out = import(&wg0, &ImportOptions::default()).unwrap();
        let c = valid(&out.toml);
        let ips: Vec<String> = c
            .agent
            .virtual_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["fd00::100", "10.1.0.100"], "file order leads");
        let nets: Vec<String> = c.agent.subnets.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["fd00::/64", "10.1.0.0/24"]);
        let g = &c.gateways[0];
        assert_eq!(
            g.virtual_ip.unwrap().to_string(),
            "10.1.0.1",
            "the first host route of the peer"
        );
        assert_eq!(g.allowed_ips.len(), 2, "the IPv6 route back is kept");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let notes = out.notes.join("\n");
        for expected in [
            "Address 10.1.0.101/24: not imported (the agent takes one address per IP family, 10.1.0.100)",
            "Address fd00::101/64: not imported (the agent takes one address per IP family, fd00::100)",
        ] {
            assert!(notes.contains(expected), "{expected:?} in\n{notes}");
        }

        // Single-family files are written exactly as before: plain strings.
        let v4 =
            format!("[Interface]\nPrivateKey = {AGENT}\nAddress = 10.1.0.100/24, 10.1.0.101/24\n");
        let out = import(&v4, &ImportOptions::default()).unwrap();
        assert!(
            out.toml
                .contains("virtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n"),
            "{}",
            out.toml.as_str()
        );
        assert!(
            out.notes
                .join("\n")
                .contains("Address 10.1.0.101/24: not imported")
        );
    }

    #[test]
    fn dual_stack_host_addresses_guess_a_subnet_per_family() {
        let wg0 = format!(
            "[Interface]\nPrivateKey = {AGENT}\nAddress = 10.8.0.5/32, fd08::5/128\n\n\
             [Peer]\nPublicKey = {GW1}\nEndpoint = 203.0.113.7:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n"
        );
        let out = import(&wg0, &ImportOptions::default()).unwrap();
        let c = valid(&out.toml);
        let nets: Vec<String> = c.agent.subnets.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.8.0.0/24", "fd08::/64"]);
        assert_eq!(c.gateways[0].virtual_ip.unwrap().to_string(), "10.8.0.1");
        let notes = out.notes.join("\n");
        assert!(
            notes.contains("subnet 10.8.0.0/24 is a guess")
                && notes.contains("subnet fd08::/64 is a guess"),
            "{notes}"
        );
        assert!(
            notes.contains("no /32 AllowedIPs inside 10.8.0.0/24 or fd08::/64"),
            "{notes}"
        );
    }

    #[test]
    fn host_address_and_catch_all_peer() {
        // A road-warrior client: /32 address, everything through one peer, no name.
        let wg0 = format!(
            "[Interface]\nAddress = 10.8.0.5/32\nPrivateKey = {AGENT}\n\n\
             [Peer]\nPublicKey = {GW1}\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = 203.0.113.7:51820\n\
             PersistentKeepalive = off\n"
        );
        let out = import(&wg0, &ImportOptions::default()).unwrap();
        let c = valid(&out.toml);
        assert_eq!(c.agent.subnet.to_string(), "10.8.0.0/24");
        assert_eq!(c.gateways[0].virtual_ip.unwrap().to_string(), "10.8.0.1");
        assert_eq!(c.gateways[0].persistent_keepalive, 0);
        let notes = out.notes.join("\n");
        assert!(notes.contains("subnet 10.8.0.0/24 is a guess"), "{notes}");
    }

    #[test]
    fn host_address_takes_the_subnet_from_a_peer_and_routes_the_guess() {
        let wg0 = format!(
            "[Interface]\nAddress = 10.9.0.5/32\nPrivateKey = {AGENT}\n\n\
             [Peer]\nPublicKey = {GW1}\nAllowedIPs = 10.9.0.0/16\nEndpoint = 203.0.113.7:51820\n\n\
             [Peer]\n# Name = lan\nPublicKey = {GW2}\nAllowedIPs = 192.168.0.0/16\nEndpoint = 203.0.113.8:51820\n"
        );
        let out = import(&wg0, &ImportOptions::default()).unwrap();
        let c = valid(&out.toml);
        assert_eq!(c.agent.subnet.to_string(), "10.9.0.0/16");
        assert_eq!(c.gateways[1].id, "lan");
        assert_eq!(c.gateways[1].virtual_ip.unwrap().to_string(), "10.9.0.2");
        assert!(
            c.gateways[1]
                .allowed_ips
                .contains(&IpNet::host("10.9.0.2".parse().unwrap()))
        );
        assert!(
            out.notes
                .join("\n")
                .contains("allowed_ips gains 10.9.0.2/32")
        );
    }

    #[test]
    fn key_file_routes_and_left_out_peers() {
        let wg0 = format!(
            "[Interface]\nPrivateKey = {AGENT}\nAddress = 10.1.0.100/24\n\n\
             [Peer]\n# Name = phone\nPublicKey = {GW2}\nAllowedIPs = 10.1.0.7/32\n\n\
             [Peer]\n# Name = gw\nPublicKey = {GW1}\nAllowedIPs = 10.1.0.1/32\nEndpoint = 192.0.2.1:51820\n"
        );
        let options = ImportOptions {
            routes: vec![
                (80, "127.0.0.1:8080".parse().unwrap()),
                (8443, "localhost:443".parse().unwrap()),
            ],
            key_file: Some("/etc/wg-agent/agent.key".into()),
        };
        let out = import(&wg0, &options).unwrap();
        assert!(!out.toml.contains(AGENT), "{}", out.toml.as_str());
        assert!(
            out.toml
                .contains("private_key_file = \"/etc/wg-agent/agent.key\"")
        );
        assert_eq!(out.private_key.as_str(), AGENT);
        let with_inline = out.toml.replace(
            "private_key_file = \"/etc/wg-agent/agent.key\"",
            &format!("private_key = \"{AGENT}\""),
        );
        let c = valid(&with_inline);
        assert_eq!(c.gateways.len(), 1);
        assert_eq!(c.gateways[0].id, "gw");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].port, 8443);
        assert!(out.notes.join("\n").contains("no Endpoint, left out"));
        assert!(!out.has_inline_secret, "key in its file, no preshared key");
    }

    #[test]
    fn bad_files_name_the_line_and_never_a_secret() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";
        let e = import(
            &format!("[Interface]\nPrivateKey = {secret}\nAddress = 10.1.0.100/24\n"),
            &ImportOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 2: PrivateKey") && !e.contains(secret),
            "{e}"
        );
        let e = import(
            "[Interface]\nAddress = 10.1.0.100/24\n",
            &ImportOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("PrivateKey"), "{e}");
        let e = import(
            &format!("[Interface]\nPrivateKey = {AGENT}\nAddress = 10.1.0.300/24\n"),
            &ImportOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3: Address"), "{e}");
        let e = import("PrivateKey = x\n", &ImportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside any"), "{e}");
        assert!(!e.contains("= x"), "{e}");
        // A key pasted alone on a line is not echoed as an unknown field.
        let out = import(
            &format!("[Interface]\nPrivateKey = {AGENT}\nAddress = 10.1.0.100/24\n{secret}\n"),
            &ImportOptions::default(),
        )
        .unwrap();
        let notes = out.notes.join("\n");
        assert!(
            notes.contains("line 4") && !notes.contains(&secret[..20]),
            "{notes}"
        );
        let e = import(
            &format!("[Interface]\nPrivateKey = {AGENT}\nAddress = 10.1.0.100/24\nnonsense\n"),
            &ImportOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn detection() {
        assert!(looks_like_wg_quick("[Interface]\nPrivateKey = x\n"));
        assert!(looks_like_wg_quick("# c\n [peer] \n"));
        assert!(!looks_like_wg_quick(
            "[agent]\nvirtual_ip = \"10.1.0.100\"\n"
        ));
        assert!(!looks_like_wg_quick("[[gateways]]\n"));
    }
}
