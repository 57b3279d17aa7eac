//! UAPI `set=1`: a request parsed strictly into a [`SetRequest`], then applied to a copy of
//! the running [`Config`]. Nothing here touches the agent: the caller runs the new
//! configuration through the same prepare and commit as a reload, so a request applies
//! entirely or not at all.
//!
//! What applies, as `wg set` on a kernel interface would do it:
//! - per peer: `endpoint`, `persistent_keepalive_interval`, `preshared_key` (all zeros:
//!   none), `replace_allowed_ips`, `allowed_ip` (a prefix given to one peer leaves any
//!   other), `remove`, `update_only`; `replace_peers` removes every peer the request does not
//!   name. A peer that stays keeps the settings the request does not give.
//! - a new peer gets the id `gw-` and the first 8 characters of its base64 public key, with
//!   `+` and `/` written `-` and `_` (longer when that id is taken); as virtual IP the first
//!   host of its allowed IPs inside `subnet`, else none (and no liveness probe); it needs an
//!   endpoint (the agent dials out).
//! - `private_key`, `listen_port` and `fwmark` are restart-only: a value other than the
//!   running one is refused; the running one (as `wg syncconf` sends it) changes nothing.

use std::net::{IpAddr, SocketAddr};

use wg_core::{IpNet, PresharedKey, PrivateKey, PublicKey};

use crate::config::{Config, Endpoint, GatewayConfig, Host, LivenessProbe};

/// Most gateways a set may leave (every table is bounded).
pub(crate) const MAX_GATEWAYS: usize = 1024;
/// Most allowed IPs a gateway may have after a set.
pub(crate) const MAX_ALLOWED_IPS: usize = 1024;
/// Most addresses tried when looking for a free virtual IP in one prefix.
const MAX_CANDIDATES: u128 = 1024;

/// A parsed `set=1` request.
#[derive(Debug, Default)]
pub(crate) struct SetRequest {
    private_key: Option<PrivateKey>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    replace_peers: bool,
    peers: Vec<PeerSet>,
}

/// One peer's block: `public_key=` and the keys after it.
#[derive(Debug)]
struct PeerSet {
    public_key: PublicKey,
    remove: bool,
    update_only: bool,
    /// `Some(None)`: the preshared key is removed (all zeros).
    preshared_key: Option<Option<PresharedKey>>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<u16>,
    replace_allowed_ips: bool,
    allowed_ips: Vec<IpNet>,
}

impl PeerSet {
    fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// Parses the lines of a `set=1` request (after `set=1`, before the blank line). The reason
/// names the line and the key, never a key's value.
pub(crate) fn parse(lines: &[String]) -> Result<SetRequest, String> {
    let mut request = SetRequest::default();
    for (i, line) in lines.iter().enumerate() {
        let n = i + 2; // `set=1` is line 1
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {n}: `key=value` expected"));
        };
        let bad = |what: &str| format!("line {n}: `{key}`: {what}");
        if key == "public_key" {
            let public_key = PublicKey::from_bytes(
                *hex_key(value)
                    .ok_or_else(|| bad(&format!("`{value}` is not 64 hexadecimal digits")))?,
            );
            request.peers.push(PeerSet::new(public_key));
            continue;
        }
        let Some(peer) = request.peers.last_mut() else {
            match key {
                "private_key" => {
                    let bytes = hex_key(value)
                        .ok_or_else(|| bad("not 64 hexadecimal digits (value not shown)"))?;
                    request.private_key = Some(PrivateKey::from_bytes(*bytes));
                }
                "listen_port" => {
                    request.listen_port = Some(number(value).ok_or_else(|| bad("not a port"))?);
                }
                "fwmark" => {
                    request.fwmark = Some(number(value).ok_or_else(|| bad("not a number"))?);
                }
                "replace_peers" => {
                    request.replace_peers =
                        flag(value).ok_or_else(|| bad("only `true` is accepted"))?
                }
                _ => {
                    return Err(bad(
                        "not an interface key (a peer's keys follow `public_key`)",
                    ));
                }
            }
            continue;
        };
        match key {
            "remove" => peer.remove = flag(value).ok_or_else(|| bad("only `true` is accepted"))?,
            "update_only" => {
                peer.update_only = flag(value).ok_or_else(|| bad("only `true` is accepted"))?;
            }
            "replace_allowed_ips" => {
                peer.replace_allowed_ips =
                    flag(value).ok_or_else(|| bad("only `true` is accepted"))?;
            }
            "preshared_key" => {
                let bytes = hex_key(value)
                    .ok_or_else(|| bad("not 64 hexadecimal digits (value not shown)"))?;
                peer.preshared_key =
                    Some((bytes.iter().any(|b| *b != 0)).then(|| PresharedKey::from_bytes(*bytes)));
            }
            "endpoint" => {
                let addr: SocketAddr = value
                    .parse()
                    .map_err(|_| bad(&format!("`{value}` is not IP:port or [IPv6]:port")))?;
                if addr.port() == 0 {
                    return Err(bad("port 0 is not allowed"));
                }
                peer.endpoint = Some(addr);
            }
            "persistent_keepalive_interval" => {
                peer.persistent_keepalive =
                    Some(number(value).ok_or_else(|| bad("not a number of seconds (0-65535)"))?);
            }
            "allowed_ip" => {
                let net = value
                    .split_once('/')
                    .and_then(|(a, l)| {
                        let addr: IpAddr = a.parse().ok()?;
                        IpNet::new(addr, number(l)?).ok()
                    })
                    .ok_or_else(|| {
                        bad(&format!("`{value}` is not an IP prefix like 10.1.0.1/32"))
                    })?;
                peer.allowed_ips.push(net);
            }
            "protocol_version" if value == "1" => {}
            "protocol_version" => return Err(bad("only version 1 exists")),
            _ => return Err(bad("not a peer key")),
        }
    }
    Ok(request)
}

impl SetRequest {
    /// The configuration `running` becomes with this request, on an agent whose UDP port is
    /// `listen_port`. Refused as a whole (nothing applies) when any part cannot apply.
    pub(crate) fn apply(&self, running: &Config, listen_port: u16) -> Result<Config, String> {
        if let Some(key) = &self.private_key
            && *key != running.agent.private_key
        {
            return Err("`private_key` cannot change at runtime: edit the config file and restart the agent".into());
        }
        if let Some(port) = self.listen_port
            && port != listen_port
        {
            return Err(format!(
                "`listen_port` cannot change at runtime (the agent uses {listen_port}): edit the config file and restart the agent"
            ));
        }
        if self.fwmark.is_some_and(|mark| mark != 0) {
            return Err("`fwmark` is not supported (the agent marks no packets)".into());
        }
        let agent_key = running.agent.private_key.public_key();
        let mut gateways = running.gateways.clone();
        if self.replace_peers {
            gateways.retain(|g| {
                self.peers
                    .iter()
                    .any(|p| p.public_key == g.public_key && !p.remove)
            });
        }
        for peer in &self.peers {
            let short = short_key(&peer.public_key);
            if peer.public_key == agent_key {
                return Err(format!("peer {short}: this is the agent's own public key"));
            }
            let found = gateways
                .iter()
                .position(|g| g.public_key == peer.public_key);
            if peer.remove {
                if let Some(i) = found {
                    gateways.remove(i);
                }
                continue;
            }
            let i = match found {
                Some(i) => i,
                None if peer.update_only => continue,
                None => {
                    let Some(endpoint) = peer.endpoint else {
                        return Err(format!(
                            "peer {short} is new and has no endpoint: give one (the agent dials out to its gateways)"
                        ));
                    };
                    let id = new_id(&peer.public_key, &gateways);
                    gateways.push(GatewayConfig {
                        id,
                        name: None,
                        public_key: peer.public_key,
                        endpoint: endpoint_of(endpoint),
                        virtual_ip: None,
                        preshared_key: None,
                        // As on a kernel interface: off unless the request sets it.
                        persistent_keepalive: 0,
                        liveness_probe: LivenessProbe::Icmp,
                        allowed_ips: Vec::new(),
                    });
                    gateways.len() - 1
                }
            };
            let g = &mut gateways[i];
            if let Some(psk) = &peer.preshared_key {
                g.preshared_key = psk.clone();
            }
            if let Some(addr) = peer.endpoint {
                g.endpoint = endpoint_of(addr);
            }
            if let Some(seconds) = peer.persistent_keepalive {
                g.persistent_keepalive = seconds;
            }
            if peer.replace_allowed_ips {
                g.allowed_ips.clear();
            }
            for net in &peer.allowed_ips {
                // A prefix belongs to one peer: giving it here takes it from any other.
                for (j, other) in gateways.iter_mut().enumerate() {
                    if j != i {
                        other.allowed_ips.retain(|n| n != net);
                    }
                }
                let g = &mut gateways[i];
                if !g.allowed_ips.contains(net) {
                    g.allowed_ips.push(*net);
                }
            }
        }
        if gateways.len() > MAX_GATEWAYS {
            return Err(format!(
                "at most {MAX_GATEWAYS} gateways: this request would leave {}",
                gateways.len()
            ));
        }
        if let Some(g) = gateways
            .iter()
            .find(|g| g.allowed_ips.len() > MAX_ALLOWED_IPS)
        {
            return Err(format!(
                "gateway {}: at most {MAX_ALLOWED_IPS} allowed IPs: this request would leave {}",
                g.id,
                g.allowed_ips.len()
            ));
        }
        assign_virtual_ips(&mut gateways, running);
        let mut new = running.clone();
        new.gateways = gateways;
        Ok(new)
    }
}

/// Gives every gateway whose virtual IP no longer routes to it (its allowed IPs changed or
/// went to another peer), or that has none, the first host of its allowed IPs inside the
/// agent's subnet of that family that routes to it and is none of the agent's addresses;
/// none when there is no such address.
fn assign_virtual_ips(gateways: &mut [GatewayConfig], running: &Config) {
    let stale: Vec<usize> = (0..gateways.len())
        .filter(|&i| {
            gateways[i]
                .virtual_ip
                .is_none_or(|ip| routes_to(gateways, ip) != Some(i))
        })
        .collect();
    let agent = &running.agent;
    for i in stale {
        let found = gateways[i].allowed_ips.iter().find_map(|net| {
            // The subnet of the prefix's family (dual stack: one per family).
            let subnet = agent.subnet_for(net.addr())?;
            hosts_within(*net, subnet)
                .find(|ip| !agent.virtual_ips.contains(ip) && routes_to(gateways, *ip) == Some(i))
        });
        let g = &mut gateways[i];
        g.virtual_ip = found;
    }
}

/// The gateway the most specific allowed IP holding `ip` belongs to.
fn routes_to(gateways: &[GatewayConfig], ip: IpAddr) -> Option<usize> {
    gateways
        .iter()
        .enumerate()
        .flat_map(|(i, g)| g.allowed_ips.iter().map(move |n| (i, n)))
        .filter(|(_, n)| n.contains(ip))
        .max_by_key(|(_, n)| n.prefix_len())
        .map(|(i, _)| i)
}

/// Host addresses of `net` that lie in `subnet`, lowest first (the network and broadcast
/// addresses of IPv4 prefixes longer than 2 addresses left out); at most
/// [`MAX_CANDIDATES`].
fn hosts_within(net: IpNet, subnet: IpNet) -> impl Iterator<Item = IpAddr> {
    let inner = if net.prefix_len() >= subnet.prefix_len() && subnet.contains(net.addr()) {
        Some(net)
    } else if subnet.prefix_len() >= net.prefix_len() && net.contains(subnet.addr()) {
        Some(subnet)
    } else {
        None
    };
    let range = inner.map(|p| {
        let (base, bits) = match p.addr() {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32 - u32::from(p.prefix_len())),
            IpAddr::V6(a) => (u128::from(a), 128 - u32::from(p.prefix_len())),
        };
        let last = 1u128.checked_shl(bits).map_or(u128::MAX, |size| size - 1);
        let (first, last) = if bits <= 1 {
            (0, last)
        } else if p.addr().is_ipv4() {
            (1, last - 1)
        } else {
            (1, last)
        };
        let v4 = p.addr().is_ipv4();
        (first..=last.min(first + MAX_CANDIDATES)).map(move |k| {
            let n = base + k;
            if v4 {
                // `n` stays within the IPv4 prefix.
                IpAddr::from(std::net::Ipv4Addr::from(n as u32))
            } else {
                IpAddr::from(std::net::Ipv6Addr::from(n))
            }
        })
    });
    range.into_iter().flatten()
}

/// `gw-` and the first 8 characters of the base64 key (`+` `/` as `-` `_`), longer when
/// another gateway has that id.
fn new_id(key: &PublicKey, gateways: &[GatewayConfig]) -> String {
    let text: String = key
        .to_base64()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    (8..=text.len())
        .map(|n| format!("gw-{}", &text[..n]))
        .find(|id| gateways.iter().all(|g| g.id != *id))
        // Two different keys never share all 43 characters.
        .unwrap_or_else(|| format!("gw-{text}"))
}

/// The first characters of a key's base64, for messages.
fn short_key(key: &PublicKey) -> String {
    let text = key.to_base64();
    format!("{}…", &text[..8])
}

fn endpoint_of(addr: SocketAddr) -> Endpoint {
    Endpoint {
        host: Host::Ip(addr.ip()),
        port: addr.port(),
    }
}

/// `true`, the only value UAPI's flags take.
fn flag(value: &str) -> Option<bool> {
    (value == "true").then_some(true)
}

/// A decimal number with digits only (no sign, no spaces).
fn number<T: std::str::FromStr>(value: &str) -> Option<T> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// 64 hexadecimal digits (either case) as 32 bytes; zeroized when dropped.
fn hex_key(value: &str) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let bytes = value.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
