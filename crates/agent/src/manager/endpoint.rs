//! [`Endpoint`]: where a gateway listens, an IP address or a DNS name and a port. DNS names
//! stay unresolved here; the manager resolves them (and again later, see `upkeep.rs`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Where a gateway (or an upstream) is: an IP address or a DNS name, and a port.
/// DNS names are kept unresolved; the runtime resolves them (and re-resolves them later).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The host part.
    pub host: Host,
    /// The port (never 0).
    pub port: u16,
}

/// The host part of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved by the runtime.
    Name(String),
}

impl Endpoint {
    /// The socket address when the host is a literal IP (no DNS needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("`{text}`: port 0 is not allowed"));
            }
            return Ok(Self {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "`{text}` is not host:port (like gw.example.net:51820, 192.0.2.1:51820 or [2001:db8::1]:51820)"
            ));
        };
        if host.contains(':') || host.starts_with('[') {
            return Err(format!(
                "`{text}` is not host:port; write an IPv6 address in brackets, like [2001:db8::1]:51820"
            ));
        }
        let port = match port.parse::<u16>() {
            Ok(0) => return Err(format!("`{text}`: port 0 is not allowed")),
            Ok(p) => p,
            Err(_) => return Err(format!("`{text}`: port `{port}` is not a number 1-65535")),
        };
        if host.parse::<IpAddr>().is_ok() {
            // Unreachable in practice (SocketAddr parsing would have succeeded), kept for safety.
            return Err(format!("`{text}` is not host:port"));
        }
        if !is_dns_name(host) {
            return Err(format!(
                "`{text}`: `{host}` is neither an IP address nor a DNS name"
            ));
        }
        Ok(Self {
            host: Host::Name(host.trim_end_matches('.').to_owned()),
            port,
        })
    }
}

/// RFC 1123 host name syntax (underscores tolerated, trailing dot allowed).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    // An all-numeric last label would be a mistyped IPv4 address, not a name.
    let last_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e: Endpoint = "192.0.2.1:51820".parse().unwrap();
        assert_eq!(e.socket_addr(), Some("192.0.2.1:51820".parse().unwrap()));
        let e: Endpoint = "[2001:db8::1]:51820".parse().unwrap();
        assert_eq!(e.to_string(), "[2001:db8::1]:51820");
        let e: Endpoint = "gw1.example.net:51820".parse().unwrap();
        assert_eq!(e.host, Host::Name("gw1.example.net".into()));
        assert_eq!(e.socket_addr(), None);
        assert_eq!(e.to_string(), "gw1.example.net:51820");
        let e: Endpoint = "localhost:1".parse().unwrap();
        assert_eq!(e.port, 1);
        for bad in [
            "gw1.example.net",
            "2001:db8::1:51820",
            "[2001:db8::1]",
            "gw:0",
            "1.2.3.4:0",
            "gw:65536",
            "gw:x",
            ":51820",
            "-bad.example:1",
            "a b:1",
            "1.2.3:51820",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} accepted");
        }
    }
}
