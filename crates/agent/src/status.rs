//! `wg-agent status`: fetch `/status` from a running agent's admin endpoint and print it as
//! JSON or as a table in the spirit of `wg show`.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::admin::AdminAddr;
use crate::snapshot::StatusSnapshot;

/// Largest status document accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// Nothing answered at the address.
    #[error(
        "cannot reach the admin endpoint at {addr}: {source} (is wg-agent running, with [admin] listen = \"{addr}\"?)"
    )]
    Connect {
        /// The address tried.
        addr: AdminAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("admin endpoint at {addr}: {message}")]
    Http {
        /// The address.
        addr: AdminAddr,
        /// What went wrong.
        message: String,
    },
    /// No answer in time.
    #[error("admin endpoint at {addr}: no answer within {timeout:?}")]
    Timeout {
        /// The address.
        addr: AdminAddr,
        /// The limit.
        timeout: Duration,
    },
}

/// GETs `/status` and returns the body as sent (a JSON document).
pub async fn fetch_status(addr: &AdminAddr, timeout: Duration) -> Result<String, StatusError> {
    let (status, body) = get(addr, "/status", timeout).await?;
    if status != StatusCode::OK {
        return Err(StatusError::Http {
            addr: addr.clone(),
            message: format!("GET /status answered {status}: {}", body.trim()),
        });
    }
    Ok(body)
}

/// GETs `/readyz`: `Ok((true, reason))` when the agent is ready (200), `Ok((false, reason))`
/// when it answers that it is not (503: no gateway up, or draining), with the agent's one-line
/// reason. What `wg-agent status --check` reports.
pub async fn fetch_readiness(
    addr: &AdminAddr,
    timeout: Duration,
) -> Result<(bool, String), StatusError> {
    let (status, body) = get(addr, "/readyz", timeout).await?;
    match status {
        StatusCode::OK => Ok((true, body.trim().to_owned())),
        StatusCode::SERVICE_UNAVAILABLE => Ok((false, body.trim().to_owned())),
        other => Err(StatusError::Http {
            addr: addr.clone(),
            message: format!("GET /readyz answered {other}: {}", body.trim()),
        }),
    }
}

/// GETs `path` and returns the status code and the body (UTF-8, at most 16 MiB).
pub async fn get(
    addr: &AdminAddr,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), StatusError> {
    request(addr, Method::GET, path, None, timeout).await
}

/// Sends `method path` with an optional JSON `body` and returns the status code and the body
/// (UTF-8, at most 16 MiB).
pub async fn request(
    addr: &AdminAddr,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(StatusCode, String), StatusError> {
    match tokio::time::timeout(timeout, request_inner(addr, method, path, body)).await {
        Ok(result) => result,
        Err(_) => Err(StatusError::Timeout {
            addr: addr.clone(),
            timeout,
        }),
    }
}

async fn request_inner(
    addr: &AdminAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, String), StatusError> {
    let connect_error = |source| StatusError::Connect {
        addr: addr.clone(),
        source,
    };
    let http_error = |message: String| StatusError::Http {
        addr: addr.clone(),
        message,
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost");
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http_error(e.to_string()))?;
    let response = match addr {
        AdminAddr::Tcp(sock) => {
            let stream = tokio::net::TcpStream::connect(sock)
                .await
                .map_err(connect_error)?;
            send(TokioIo::new(stream), request).await
        }
        AdminAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error)?;
            send(TokioIo::new(stream), request).await
        }
    }
    .map_err(|e| http_error(e.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| http_error(format!("reading the response: {e}")))?
        .to_bytes();
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| http_error("the response is not UTF-8".into()))?;
    Ok((status, body))
}

async fn send<T>(
    io: TokioIo<T>,
    request: Request<Full<Bytes>>,
) -> hyper::Result<hyper::Response<hyper::body::Incoming>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection task outlives this function: it streams the body read by the caller,
    // then ends because the sender is dropped.
    tokio::spawn(conn);
    sender.send_request(request).await
}

/// Renders the status as `wg show` does: the agent's interface first (public key, listening
/// port, virtual IP, gateways), then a table of gateways (one row each), then the routes.
/// `now_unix` is the current Unix time, for handshake ages.
pub fn render_table(status: &StatusSnapshot, now_unix: u64) -> String {
    let mut out = String::new();
    out.push_str("agent:\n");
    if let Some(agent) = &status.agent {
        let _ = writeln!(out, "  public key: {}", agent.public_key);
        let _ = writeln!(out, "  listening port: {}", agent.listen_port);
    }
    let addresses: Vec<String> = status.addresses().iter().map(ToString::to_string).collect();
    let label = if addresses.len() > 1 {
        "virtual ips"
    } else {
        "virtual ip"
    };
    let _ = writeln!(out, "  {label}: {}", addresses.join(", "));
    let up = status
        .gateways
        .iter()
        .filter(|g| g.state == crate::snapshot::GatewayState::Up)
        .count();
    let _ = writeln!(out, "  gateways: {} ({up} up)\n", status.gateways.len());
    if status.gateways.is_empty() {
        out.push_str("no gateways configured\n");
    } else {
        let mut rows = vec![[
            "GATEWAY".to_owned(),
            "NAME".into(),
            "ENDPOINT".into(),
            "STATE".into(),
            "LATEST HANDSHAKE".into(),
            "RECEIVED".into(),
            "SENT".into(),
        ]];
        for g in &status.gateways {
            rows.push([
                g.id.clone(),
                g.name.clone().unwrap_or_else(|| "-".into()),
                g.endpoint.clone(),
                g.state.to_string(),
                handshake_age(g.last_handshake_unix, now_unix),
                human_bytes(g.rx_bytes),
                human_bytes(g.tx_bytes),
            ]);
        }
        write_rows(&mut out, &rows);
        for g in status.gateways.iter().filter(|g| g.icmp_filtered) {
            let _ = writeln!(
                out,
                "warning: gateway {}: the liveness probe (ICMP echo) goes unanswered though \
                 handshakes succeed; allow ICMP echo to its virtual IP on the gateway, or set \
                 liveness_probe = \"off\"",
                g.id
            );
        }
    }
    out.push('\n');
    if status.routes.is_empty() {
        out.push_str("no routes\n");
    } else {
        let mut rows = vec![[
            "PORT".to_owned(),
            "PROTOCOL".into(),
            "UPSTREAM".into(),
            "IDLE TIMEOUT".into(),
            "FLOWS".into(),
        ]];
        for r in &status.routes {
            rows.push([
                r.port.to_string(),
                r.protocol.to_string(),
                r.upstream.clone(),
                r.idle_timeout.clone().unwrap_or_else(|| "-".into()),
                r.open_flows.map_or_else(|| "-".into(), |n| n.to_string()),
            ]);
        }
        write_rows(&mut out, &rows);
    }
    out
}

fn write_rows<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `"12 seconds ago"`, `"1 minute, 5 seconds ago"`, or `"never"`.
pub fn handshake_age(last_unix: Option<u64>, now_unix: u64) -> String {
    let Some(last) = last_unix else {
        return "never".into();
    };
    let mut secs = now_unix.saturating_sub(last);
    if secs == 0 {
        return "0 seconds ago".into();
    }
    let mut parts = Vec::new();
    for (unit, size) in [
        ("day", 86_400),
        ("hour", 3_600),
        ("minute", 60),
        ("second", 1),
    ] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    format!("{} ago", parts.join(", "))
}

/// Bytes in binary units with two decimals, as `wg show` prints them: `"512 B"`,
/// `"1.21 MiB"`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteProtocol;
    use crate::snapshot::{AgentStatus, GatewayState, GatewayStatus, RouteStatus};

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1_268_777), "1.21 MiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.00 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.00 PiB");
    }

    #[test]
    fn ages() {
        assert_eq!(handshake_age(None, 100), "never");
        assert_eq!(handshake_age(Some(88), 100), "12 seconds ago");
        assert_eq!(handshake_age(Some(99), 100), "1 second ago");
        assert_eq!(handshake_age(Some(100), 100), "0 seconds ago");
        assert_eq!(handshake_age(Some(200), 100), "0 seconds ago", "clock skew");
        assert_eq!(handshake_age(Some(0), 65), "1 minute, 5 seconds ago");
        assert_eq!(
            handshake_age(Some(0), 90_061),
            "1 day, 1 hour, 1 minute, 1 second ago"
        );
        assert_eq!(handshake_age(Some(0), 7_200), "2 hours ago");
    }

    #[test]
    fn table() {
        let status = StatusSnapshot::new(
            "10.1.0.100".parse().unwrap(),
            vec![
                GatewayStatus::new(
                    "gw1".into(),
                    Some("gateway-tokyo".into()),
                    "pk".into(),
                    "192.0.2.1:51820".into(),
                    GatewayState::Up,
                    Some(988),
                    1_268_777,
                    3_482,
                ),
                GatewayStatus::new(
                    "gw2".into(),
                    None,
                    "pk2".into(),
                    "gw2.example.net:51820".into(),
                    GatewayState::Connecting,
                    None,
                    0,
                    148,
                ),
            ],
            vec![
                RouteStatus::new(80, RouteProtocol::Http, "127.0.0.1:8080".into()),
                RouteStatus::new(53, RouteProtocol::Udp, "127.0.0.1:5353".into())
                    .with_open_flows(3),
            ],
        )
        .with_agent(AgentStatus::new(
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into(),
            51820,
        ));
        let mut status = status;
        status.routes[0].idle_timeout = Some("1h".into());
        let text = render_table(&status, 1000);
        let expected = "\
agent:
  public key: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
  listening port: 51820
  virtual ip: 10.1.0.100
  gateways: 2 (1 up)

GATEWAY  NAME           ENDPOINT               STATE       LATEST HANDSHAKE  RECEIVED  SENT
gw1      gateway-tokyo  192.0.2.1:51820        up          12 seconds ago    1.21 MiB  3.40 KiB
gw2      -              gw2.example.net:51820  connecting  never             0 B       148 B

PORT  PROTOCOL  UPSTREAM        IDLE TIMEOUT  FLOWS
80    http      127.0.0.1:8080  1h            -
53    udp       127.0.0.1:5353  -             3
";
        assert_eq!(text, expected, "\n{text}");
        let empty = StatusSnapshot::new("10.1.0.100".parse().unwrap(), vec![], vec![]);
        let text = render_table(&empty, 0);
        assert!(
            text.contains("no gateways configured") && text.contains("no routes"),
            "{text}"
        );
        assert!(
            text.starts_with("agent:\n  virtual ip: 10.1.0.100\n  gateways: 0 (0 up)\n"),
            "a document without the agent section (an older agent) still renders: {text}"
        );
        let dual = empty.with_virtual_ips(vec![
            "10.1.0.100".parse().unwrap(),
            "fd00::100".parse().unwrap(),
        ]);
        let text = render_table(&dual, 0);
        assert!(
            text.starts_with("agent:\n  virtual ips: 10.1.0.100, fd00::100\n"),
            "{text}"
        );
    }

    #[test]
    fn filtered_icmp_is_shown_under_the_table() {
        let gw = GatewayStatus::new(
            "gw1".into(),
            None,
            "pk".into(),
            "192.0.2.1:51820".into(),
            GatewayState::Up,
            Some(988),
            1,
            2,
        );
        let status = StatusSnapshot::new(
            "10.1.0.100".parse().unwrap(),
            vec![gw.clone().with_icmp_filtered(true), {
                let mut other = gw;
                other.id = "gw2".into();
                other
            }],
            vec![],
        );
        let text = render_table(&status, 1000);
        let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(
            warnings,
            [
                "warning: gateway gw1: the liveness probe (ICMP echo) goes unanswered though \
                 handshakes succeed; allow ICMP echo to its virtual IP on the gateway, or set \
                 liveness_probe = \"off\""
            ],
            "{text}"
        );
        // The field is in the document, and documents without it (older agents) still parse.
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["gateways"][0]["icmp_filtered"], true);
        let mut old = json.clone();
        old["gateways"][0]
            .as_object_mut()
            .unwrap()
            .remove("icmp_filtered");
        let parsed: StatusSnapshot = serde_json::from_value(old).unwrap();
        assert!(!parsed.gateways[0].icmp_filtered);
    }
}
