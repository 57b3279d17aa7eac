//! Value types of the config: endpoints, the admin address, durations.
//! Each parser returns a short lowercase reason; the caller adds file and field.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

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
