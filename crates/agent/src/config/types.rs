//! Value types of the config: endpoints, the admin address, durations.
//! Each parser returns a short lowercase reason; the caller adds file and field.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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

/// Where the admin endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// A loopback TCP address.
    Tcp(SocketAddr),
    /// A unix socket path (relative paths are resolved against the config file's folder).
    Unix(PathBuf),
    /// No admin endpoint.
    Off,
}

/// The admin endpoint's default port: unassigned in IANA's registry, and away from 9090
/// (Prometheus's own default) and the 9100-9999 range of Prometheus exporters.
pub const DEFAULT_ADMIN_PORT: u16 = 5182;

impl AdminListen {
    /// The default, `127.0.0.1:5182` ([`DEFAULT_ADMIN_PORT`]).
    pub const DEFAULT: AdminListen = AdminListen::Tcp(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        DEFAULT_ADMIN_PORT,
    ));

    /// Parses `"127.0.0.1:5182"`, `"[::1]:5182"`, `"unix:/path"` or `"off"`. A non-loopback
    /// address is refused (`Err(None)`; `[admin] allow_remote` opts in to it, see
    /// [`AdminListen::parse_remote`]); malformed text gives `Err(Some(reason))`.
    pub fn parse(text: &str) -> Result<Self, Option<String>> {
        if text == "off" {
            return Ok(Self::Off);
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Some(
                    "`unix:` needs a socket path, like unix:/run/wg-agent/admin.sock".into(),
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        match text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Ok(Self::Tcp(addr)),
            Ok(_) => Err(None),
            Err(_) => Err(None),
        }
    }

    /// As [`AdminListen::parse`], and with `allow_remote` any IP address (`0.0.0.0:5182`) is
    /// accepted too.
    pub fn parse_remote(text: &str, allow_remote: bool) -> Result<Self, Option<String>> {
        match Self::parse(text) {
            Err(None) if allow_remote => {
                text.parse::<SocketAddr>().map(Self::Tcp).map_err(|_| None)
            }
            other => other,
        }
    }

    /// Whether this is a TCP address other than loopback (served to remote clients).
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Tcp(addr) if !addr.ip().is_loopback())
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Off => f.write_str("off"),
        }
    }
}

/// Parses a duration such as `"30s"`, `"500ms"`, `"2m"`, `"1h"` or `"1m30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration; use a number with a unit: ms, s, m or h (\"30s\", \"500ms\", \"2m\")"
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => value
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(bad)?,
            "h" => value
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`"1m30s"`, `"500ms"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "30",
            "s",
            "3 0s",
            "30sec",
            "-1s",
            "1.5s",
            "30S",
            "99999999999999999999s",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("not a duration"), "{bad}: {err}");
        }
        for d in ["30s", "500ms", "2m", "1h", "1m30s", "1h1m1s", "0ms"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

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

    #[test]
    fn admin_listen() {
        assert_eq!(
            AdminListen::parse("127.0.0.1:5182"),
            Ok(AdminListen::DEFAULT)
        );
        assert!(matches!(
            AdminListen::parse("[::1]:9090"),
            Ok(AdminListen::Tcp(_))
        ));
        assert!(matches!(
            AdminListen::parse("127.0.0.2:1"),
            Ok(AdminListen::Tcp(_))
        ));
        assert_eq!(
            AdminListen::parse("unix:/run/a.sock"),
            Ok(AdminListen::Unix("/run/a.sock".into()))
        );
        assert_eq!(AdminListen::parse("off"), Ok(AdminListen::Off));
        assert_eq!(AdminListen::parse("0.0.0.0:9090"), Err(None));
        assert_eq!(AdminListen::parse("192.0.2.1:9090"), Err(None));
        assert_eq!(AdminListen::parse("localhost:9090"), Err(None));
        assert!(matches!(AdminListen::parse("unix:"), Err(Some(_))));
        assert_eq!(AdminListen::DEFAULT.to_string(), "127.0.0.1:5182");
        assert!(!AdminListen::DEFAULT.is_remote());
        assert_eq!(AdminListen::parse_remote("0.0.0.0:5182", false), Err(None));
        let remote = AdminListen::parse_remote("0.0.0.0:5182", true).unwrap();
        assert_eq!(remote, AdminListen::Tcp("0.0.0.0:5182".parse().unwrap()));
        assert!(remote.is_remote());
        assert!(matches!(
            AdminListen::parse_remote("[::]:5182", true),
            Ok(AdminListen::Tcp(_))
        ));
        assert_eq!(AdminListen::parse_remote("localhost:5182", true), Err(None));
        assert_eq!(
            AdminListen::parse_remote("off", true),
            Ok(AdminListen::Off),
            "allow_remote changes nothing else"
        );
    }
}
