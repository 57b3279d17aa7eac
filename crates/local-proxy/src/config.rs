//! Settings of the proxy (`[proxy]` in the agent's config) and of one route.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Settings shared by every route: the `[proxy]` table of the agent's configuration.
///
/// `Default` gives the values documented in docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Time a client has to send a complete request head. It also cuts clients that connect and
    /// send nothing, and bounds the wait for the next request on a kept-alive HTTP/1 connection.
    ///
    /// The first request of a connection is bounded twice: its first bytes (while HTTP/1 or
    /// HTTP/2 is detected) must arrive within this time, then hyper's own head timer starts; a
    /// trickling client therefore gets at most twice this long, once per connection.
    pub header_read_timeout: Duration,
    /// Time to establish a TCP connection to the upstream (502 when exceeded).
    pub upstream_connect_timeout: Duration,
    /// Time the upstream has to produce a response head (504 when exceeded), counted from the
    /// last request byte passed to it: a long upload is not cut while it makes progress.
    pub upstream_response_timeout: Duration,
    /// A connection (or upgraded tunnel, or TCP forward) with no byte moving either way for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long in-flight requests and tunnels get before they are closed.
    pub drain_timeout: Duration,
    /// Largest request head accepted (request line plus headers); larger heads get `431`.
    ///
    /// An HTTP/1 connection's buffers are bounded by `max(max_header_bytes + 16 KiB, 256 KiB)`
    /// each way. An HTTP/2 connection buffers request bodies up to its receive window (hyper's
    /// 1 MiB per connection), and response bytes up to
    /// [`http2_max_send_buffer`](Self::http2_max_send_buffer) per stream: the send side is
    /// not bounded by flow control, since the client sets our send window (up to 2 GiB).
    pub max_header_bytes: usize,
    /// Connections open at once across every route served with one
    /// [`ConnectionTracker`](crate::ConnectionTracker); more are closed on accept.
    pub max_connections: usize,
    /// Concurrent streams a client may open on one HTTP/2 connection; streams beyond it are
    /// refused (`REFUSED_STREAM`, which clients retry).
    pub http2_max_concurrent_streams: u32,
    /// Response bytes buffered per HTTP/2 stream for a client that does not read: past it the
    /// upstream is read no further (back-pressure).
    pub http2_max_send_buffer: usize,
    /// Requests forwarded to upstreams at once, across every route served with one
    /// [`ConnectionTracker`](crate::ConnectionTracker) (a request counts until its response
    /// body is done); more get `503` at once.
    pub max_upstream_requests: usize,
    /// File descriptors for sockets to upstreams at once, across every route served with one
    /// [`ConnectionTracker`](crate::ConnectionTracker): HTTP upstream connections (pooled idle
    /// ones included) and TCP route upstreams ([`FdBudget`](crate::FdBudget)). Past it an
    /// HTTP request gets `503` and a TCP connection is closed.
    pub max_upstream_sockets: usize,
    /// When an upstream answers before reading the whole request body (an early `413`) and
    /// stops reading, the rest of the body is read from the client and discarded for at most
    /// this long, so the answer reaches the client instead of a reset; then the upload is cut.
    pub lingering_close_timeout: Duration,
    /// The most request-body bytes discarded that way.
    pub lingering_close_bytes: u64,
    /// Emit one `info` event per request on the target `local_proxy::access`.
    pub access_log: bool,
    /// UDP flows open at once across every UDP route served with one
    /// [`ConnectionTracker`](crate::ConnectionTracker) (each route also has its own
    /// [`UdpRouteConfig::max_flows`]); a datagram that would open one more is dropped and
    /// counted.
    pub max_udp_flows: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 65_536,
            max_connections: 4096,
            http2_max_concurrent_streams: 32,
            http2_max_send_buffer: 64 * 1024,
            max_upstream_requests: 512,
            max_upstream_sockets: 512,
            lingering_close_timeout: Duration::from_secs(5),
            lingering_close_bytes: 16 * 1024 * 1024,
            access_log: false,
            max_udp_flows: 1024,
        }
    }
}

/// Where a route sends its traffic: `host:port` (an IP address or a DNS name), or a unix
/// stream socket (`unix:/run/app.sock`, for HTTP and TCP routes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    host: String,
    port: u16,
    unix: Option<PathBuf>,
}

impl Upstream {
    /// An upstream from a host (IP literal or DNS name, IPv6 without brackets) and a port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_owned)
            .unwrap_or(host);
        Self {
            host,
            port,
            unix: None,
        }
    }

    /// A unix stream socket at `path` (absolute). HTTP requests to it keep the client's `Host`
    /// header; a request without one gets `Host: localhost`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            host: "localhost".into(),
            port: 0,
            unix: Some(path.into()),
        }
    }

    /// The socket path of a unix upstream.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// The host part, without brackets (`localhost` for a unix upstream).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (0 for a unix upstream).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` with brackets around an IPv6 host, as used in URIs and `Host` headers
    /// (`localhost` for a unix upstream).
    pub fn authority(&self) -> String {
        if self.unix.is_some() {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unix {
            Some(path) => write!(f, "unix:{}", path.display()),
            None => f.write_str(&self.authority()),
        }
    }
}

/// An upstream string that is neither `host:port` nor `unix:/absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream `{value}` is not host:port or unix:/absolute/path")]
#[non_exhaustive]
pub struct UpstreamParseError {
    /// The rejected text.
    pub value: String,
}

impl FromStr for Upstream {
    type Err = UpstreamParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UpstreamParseError {
            value: s.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            let path = Path::new(path);
            return if path.is_absolute() && path.file_name().is_some() {
                Ok(Self::unix(path))
            } else {
                Err(err())
            };
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        let valid = !host.is_empty()
            && !host.contains(':')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid || port == 0 {
            return Err(err());
        }
        Ok(Self::new(host, port))
    }
}

/// One HTTP route: requests accepted on a port are forwarded to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpRouteConfig {
    /// The local app.
    pub upstream: Upstream,
    /// `true` (default): keep the incoming `X-Forwarded-*` / `Forwarded` chain and append the
    /// tunnel peer; `false`: replace incoming values with the tunnel peer's.
    pub trust_forwarded: bool,
    /// Speak HTTP/2 with prior knowledge (h2c) to the upstream instead of HTTP/1.1 (gRPC
    /// needs it: its trailers do not survive a hop over HTTP/1.1).
    ///
    /// The request's `:authority` is then the upstream's address (it also picks the pooled
    /// connection), while the client's host travels in `Host` and `X-Forwarded-Host`.
    pub upstream_h2c: bool,
}

impl HttpRouteConfig {
    /// A route to `upstream` with the defaults (`trust_forwarded = true`, HTTP/1.1 upstream).
    pub fn new(upstream: impl Into<Upstream>) -> Self {
        Self {
            upstream: upstream.into(),
            trust_forwarded: true,
            upstream_h2c: false,
        }
    }
}

/// One raw TCP route: bytes accepted on a port are copied to and from `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpRouteConfig {
    /// The local app.
    pub upstream: Upstream,
    /// Send a PROXY protocol v2 header to the upstream before the first byte.
    pub proxy_protocol: bool,
}

impl TcpRouteConfig {
    /// A route to `upstream` without PROXY protocol.
    pub fn new(upstream: impl Into<Upstream>) -> Self {
        Self {
            upstream: upstream.into(),
            proxy_protocol: false,
        }
    }
}

/// One UDP route: datagrams received on a port are forwarded to `upstream`, one upstream
/// socket per flow (client address and port).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpRouteConfig {
    /// The local app (`host:port`; unix sockets are not supported for UDP).
    pub upstream: Upstream,
    /// A flow with no datagram either way for this long is closed. A one-shot exchange (one
    /// datagram from the client, answered: DNS) closes sooner, after at most
    /// [`ONE_SHOT_IDLE`](crate::udp::ONE_SHOT_IDLE).
    pub idle_timeout: Duration,
    /// Flows of this route open at once; a datagram that would open one more is dropped.
    pub max_flows: usize,
    /// Bytes of datagrams queued towards the upstream across this route's flows; past it
    /// datagrams are dropped.
    pub max_queued_bytes: usize,
}

impl UdpRouteConfig {
    /// A route to `upstream` with the defaults: 60 s idle timeout, 256 flows, 256 KiB queued.
    pub fn new(upstream: impl Into<Upstream>) -> Self {
        Self {
            upstream: upstream.into(),
            idle_timeout: Duration::from_secs(60),
            max_flows: 256,
            max_queued_bytes: 256 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn upstream_parses_ip_dns_and_ipv6() {
        let u: Upstream = "127.0.0.1:8080".parse().unwrap();
        assert_eq!((u.host(), u.port()), ("127.0.0.1", 8080));
        let u: Upstream = "app.local:80".parse().unwrap();
        assert_eq!(u.authority(), "app.local:80");
        let u: Upstream = "[::1]:8080".parse().unwrap();
        assert_eq!((u.host(), u.authority().as_str()), ("::1", "[::1]:8080"));
        let u: Upstream = "unix:/run/app.sock".parse().unwrap();
        assert_eq!(u.unix_path(), Some(Path::new("/run/app.sock")));
        assert_eq!(
            (u.to_string().as_str(), u.authority().as_str()),
            ("unix:/run/app.sock", "localhost")
        );
        for bad in [
            "",
            "host",
            "host:",
            "host:x",
            ":80",
            "a b:80",
            "::1:80",
            "h:0",
            "unix:",
            "unix:app.sock",
            "unix:/",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn upstream_parse_never_panics_and_round_trips(s in "[\\[\\]a-z0-9.:_-]{0,24}") {
            if let Ok(u) = s.parse::<Upstream>() {
                proptest::prop_assert_eq!(u.authority().parse::<Upstream>().unwrap(), u);
            }
        }
    }
}
