//! `wg-agent ping`: ICMP echo through the *running* agent's tunnel, asked of its admin
//! endpoint (`POST /ping`, local clients only). A second process with the agent's key would
//! take the gateway's session away from the agent, so the echo goes out of the agent itself.
//!
//! One request is one echo: the body names the target (a gateway id, whose virtual IP is
//! pinged, or an IP address routed to a gateway) and the time to wait; the answer is a
//! [`PingReply`]. The client paces the echoes and prints a line per echo and a summary, as
//! `ping` does ([`PingSummary`]).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use crate::admin::AdminAddr;
use crate::status::{self, StatusError};

/// The longest wait for one echo the endpoint accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// Echoes the endpoint runs at once; more get `429`.
pub const MAX_IN_FLIGHT: usize = 8;

/// The body of `POST /ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PingRequest {
    /// A gateway id or an IP address inside the tunnel.
    pub target: String,
    /// How long to wait for the reply, in milliseconds (at most [`MAX_TIMEOUT`]).
    pub timeout_ms: u64,
}

impl PingRequest {
    /// A request for `target`, waiting `timeout`.
    pub fn new(target: impl Into<String>, timeout: Duration) -> Self {
        Self {
            target: target.into(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The wait, clamped to 1 ms ..= [`MAX_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms).clamp(Duration::from_millis(1), MAX_TIMEOUT)
    }
}

/// The answer to `POST /ping`: `200` with `rtt_us` when the reply came, `504` with `error`
/// when it did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PingReply {
    /// The address pinged.
    pub ip: IpAddr,
    /// The gateway whose tunnel carried it.
    pub gateway: String,
    /// The round-trip time in microseconds; `None` when no reply came in time.
    pub rtt_us: Option<u64>,
    /// Why there is no round-trip time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PingReply {
    /// A reply that came after `rtt`.
    pub fn answered(ip: IpAddr, gateway: String, rtt: Duration) -> Self {
        Self {
            ip,
            gateway,
            rtt_us: Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
            error: None,
        }
    }

    /// No reply, for `reason`.
    pub fn unanswered(ip: IpAddr, gateway: String, reason: String) -> Self {
        Self {
            ip,
            gateway,
            rtt_us: None,
            error: Some(reason),
        }
    }

    /// The round-trip time, if the reply came.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt_us.map(Duration::from_micros)
    }
}

/// Why `POST /ping` sent nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// The target is neither a gateway id nor an IP address.
    #[error(
        "`{0}` is neither a gateway id nor an IP address; `wg-agent status` lists the gateways"
    )]
    UnknownTarget(String),
    /// The gateway has no virtual IP to ping (added over the UAPI with none in `subnet`).
    #[error("gateway `{0}` has no virtual IP: ping an address inside its allowed_ips")]
    NoVirtualIp(String),
    /// No gateway's allowed IPs hold the address: it cannot be reached through the tunnel.
    #[error("{0} is not in any gateway's allowed_ips: the tunnel cannot reach it")]
    NoRoute(IpAddr),
    /// The agent is shutting down, or this endpoint does not ping.
    #[error("ping is not available: {0}")]
    Unavailable(String),
    /// Too many echoes at once.
    #[error("too many pings at once (at most {MAX_IN_FLIGHT}); try again")]
    Busy,
    /// The request was not a ping request.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl PingError {
    /// The HTTP status that carries it.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownTarget(_) => StatusCode::NOT_FOUND,
            Self::NoRoute(_) | Self::NoVirtualIp(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Busy => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// What one echo asked of the admin endpoint came to, for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOutcome {
    /// Sent; answered or not.
    Sent(PingReply),
    /// Refused before anything was sent: the status and the agent's message.
    Refused(StatusCode, String),
}

/// Asks the agent at `addr` for one echo (the HTTP exchange waits the echo's timeout plus
/// `slack`).
pub async fn ping_once(
    addr: &AdminAddr,
    request: &PingRequest,
    slack: Duration,
) -> Result<PingOutcome, StatusError> {
    let body = serde_json::to_string(request).map_err(|e| StatusError::Http {
        addr: addr.clone(),
        message: e.to_string(),
    })?;
    let (code, text) = status::request(
        addr,
        hyper::Method::POST,
        "/ping",
        Some(body),
        request.timeout() + slack,
    )
    .await?;
    if code == StatusCode::OK || code == StatusCode::GATEWAY_TIMEOUT {
        return serde_json::from_str(&text)
            .map(PingOutcome::Sent)
            .map_err(|e| StatusError::Http {
                addr: addr.clone(),
                message: format!("POST /ping answered {code} with an unexpected body ({e})"),
            });
    }
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    Ok(PingOutcome::Refused(code, message))
}

/// The tally `ping` prints at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingSummary {
    /// Echoes sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    rtts: Vec<Duration>,
}

impl PingSummary {
    /// Counts one echo and its reply, if any.
    pub fn add(&mut self, rtt: Option<Duration>) {
        self.transmitted += 1;
        if let Some(rtt) = rtt {
            self.received += 1;
            self.rtts.push(rtt);
        }
    }

    /// The summary lines, as `ping` prints them.
    pub fn render(&self, target: &str) -> String {
        let loss = if self.transmitted == 0 {
            0.0
        } else {
            100.0 * f64::from(self.transmitted - self.received) / f64::from(self.transmitted)
        };
        let mut out = format!(
            "--- {target} ping statistics ---\n{} transmitted, {} received, {loss:.0}% packet loss\n",
            self.transmitted, self.received
        );
        if let (Some(min), Some(max)) = (self.rtts.iter().min(), self.rtts.iter().max()) {
            let sum: Duration = self.rtts.iter().sum();
            let avg = sum / u32::try_from(self.rtts.len()).unwrap_or(u32::MAX);
            let _ = writeln!(
                out,
                "rtt min/avg/max = {}/{}/{} ms",
                millis(*min),
                millis(avg),
                millis(*max)
            );
        }
        out
    }
}

/// Milliseconds with two decimals, as `ping` prints times.
pub fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_like_ping() {
        let mut s = PingSummary::default();
        assert_eq!(
            s.render("gw1"),
            "--- gw1 ping statistics ---\n0 transmitted, 0 received, 0% packet loss\n"
        );
        s.add(Some(Duration::from_micros(1_000)));
        s.add(None);
        s.add(Some(Duration::from_micros(2_500)));
        s.add(Some(Duration::from_micros(1_500)));
        assert_eq!(
            s.render("gw1"),
            "--- gw1 ping statistics ---\n4 transmitted, 3 received, 25% packet loss\n\
             rtt min/avg/max = 1.00/1.67/2.50 ms\n"
        );
    }

    #[test]
    fn request_timeout_is_bounded() {
        assert_eq!(
            PingRequest::new("gw1", Duration::from_secs(60)).timeout(),
            MAX_TIMEOUT
        );
        assert_eq!(
            PingRequest::new("gw1", Duration::ZERO).timeout(),
            Duration::from_millis(1)
        );
        let json = serde_json::to_string(&PingRequest::new("gw1", Duration::from_secs(2))).unwrap();
        assert_eq!(json, r#"{"target":"gw1","timeout_ms":2000}"#);
    }

    #[test]
    fn reply_round_trips() {
        let reply = PingReply::answered(
            "10.1.0.1".parse().unwrap(),
            "gw1".into(),
            Duration::from_micros(1234),
        );
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"ip":"10.1.0.1","gateway":"gw1","rtt_us":1234}"#);
        assert_eq!(serde_json::from_str::<PingReply>(&json).unwrap(), reply);
    }
}
