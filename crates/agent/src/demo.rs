//! `wg-agent demo`: a WireGuard gateway, a sample app and the agent, all on loopback, with no
//! root and nothing else installed. Real requests cross the encrypted tunnel; the report says
//! how long the handshake took, how requests fared and how fast bulk data moved.
//!
//! The gateway is built from the same parts as the agent (wg-core + netstack through a
//! [`Manager`]); it knows the agent's public key but not its address, as a real gateway in
//! front of an agent behind NAT. The agent runs exactly as `wg-agent run` would, from a TOML
//! configuration, with one HTTP route to the sample app.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use wg_core::PrivateKey;

use crate::config::{Config, LivenessProbe};
use crate::manager::{GatewaySpec, Manager, ManagerConfig};
use crate::runtime::Agent;

const AGENT_VIP: [u8; 4] = [10, 1, 0, 100];
const GATEWAY_VIP: [u8; 4] = [10, 1, 0, 1];
const REQUESTS: usize = 200;
const DOWNLOAD: u64 = 64 << 20;
const UPLOAD: u64 = 16 << 20;

/// Runs the demo and prints its report to stdout. Fails when any check fails.
pub async fn demo() -> anyhow::Result<()> {
    println!(
        "wg-agent demo: a WireGuard gateway, a sample app and the agent, all on loopback (no root)"
    );
    let app = start_sample_app().await?;
    println!("  sample app      http://{app}");

    let agent_key = PrivateKey::generate();
    let gateway_key = PrivateKey::generate();
    let gateway = start_gateway(gateway_key.clone(), &agent_key).await?;
    let gateway_port = gateway
        .local_addrs()
        .first()
        .map(SocketAddr::port)
        .context("gateway has no UDP socket")?;
    println!(
        "  gateway         udp 127.0.0.1:{gateway_port}, virtual IP 10.1.0.1 (wg-core + netstack)"
    );

    let toml = format!(
        "[agent]\nprivate_key = \"{key}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\n\
         [[gateways]]\nid = \"demo-gw\"\nname = \"loopback gateway\"\npublic_key = \"{gw}\"\n\
         endpoint = \"127.0.0.1:{gateway_port}\"\nvirtual_ip = \"10.1.0.1\"\n\n\
         [[routes]]\nport = 80\nupstream = \"{app}\"\n\n[admin]\nlisten = \"off\"\n",
        key = agent_key.to_base64_secret().as_str(),
        gw = gateway_key.public_key(),
    );
    let config = Config::from_toml(&toml, "demo.toml".as_ref()).context("demo configuration")?;
    let started = Instant::now();
    let agent = Agent::start(config).await?;
    println!("  agent           virtual IP 10.1.0.100, route :80 -> {app}");

    let result = exercise(&agent, &gateway, started).await;
    agent.stop().await;
    gateway.close().await;
    result
}

async fn exercise(agent: &Agent, gateway: &Manager, started: Instant) -> anyhow::Result<()> {
    // The handshake: the agent dials out; the gateway learns its address from it.
    let handshake = loop {
        if agent
            .manager()
            .stats()
            .first()
            .is_some_and(|s| s.last_handshake.is_some())
        {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no handshake within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), 80);
    let stream = gateway
        .dial_tcp(target)
        .await
        .context("gateway: connect to 10.1.0.100:80")?;
    let first_request = started.elapsed();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);

    // Small requests on one keep-alive connection.
    let mut latencies = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let at = Instant::now();
        let req = Request::get(format!("/hello?n={i}"))
            .header("host", "demo.local")
            .body(empty())?;
        sender
            .ready()
            .await
            .context("connection through the tunnel")?;
        let resp = sender
            .send_request(req)
            .await
            .context("request through the tunnel")?;
        ensure!(
            resp.status() == 200,
            "request {i}: status {}",
            resp.status()
        );
        let forwarded = resp.headers().get("x-seen-forwarded-for").cloned();
        let body = resp.into_body().collect().await?.to_bytes();
        ensure!(
            body.as_ref() == b"hello from the sample app\n",
            "request {i}: unexpected body"
        );
        ensure!(
            forwarded.is_some_and(|f| f.as_bytes().ends_with(b"10.1.0.1")),
            "X-Forwarded-For lacks the gateway"
        );
        latencies.push(at.elapsed());
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];

    // Bulk download, checked byte for byte against the pattern.
    let at = Instant::now();
    let req = Request::get(format!("/bytes/{DOWNLOAD}"))
        .header("host", "demo.local")
        .body(empty())?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    ensure!(resp.status() == 200, "download: status {}", resp.status());
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            ensure!(
                matches_pattern(got, &data),
                "download: corrupted at byte {got}"
            );
            got += data.len() as u64;
        }
    }
    ensure!(got == DOWNLOAD, "download: {got} of {DOWNLOAD} bytes");
    let download = at.elapsed();

    // Bulk upload: the app counts and checks what it received.
    let at = Instant::now();
    let req = Request::post("/sink")
        .header("host", "demo.local")
        .body(Pattern::new(UPLOAD).boxed())?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    ensure!(resp.status() == 200, "upload: status {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    ensure!(
        body.as_ref() == format!("ok {UPLOAD}\n").as_bytes(),
        "upload: app answered {:?}",
        String::from_utf8_lossy(&body)
    );
    let upload = at.elapsed();

    let stats = agent.manager().stats();
    let gw = stats.first().context("no gateway stats")?;
    let mbps = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!();
    println!("report");
    println!(
        "  handshake            {:.1} ms after the agent started",
        ms(handshake)
    );
    println!(
        "  first request        {:.1} ms after the agent started",
        ms(first_request)
    );
    println!(
        "  {REQUESTS} GET requests     p50 {:.2} ms, p99 {:.2} ms (one keep-alive connection)",
        ms(pct(50)),
        ms(pct(99))
    );
    println!(
        "  download 64 MiB      {:.0} MB/s ({:.2} s, verified)",
        mbps(DOWNLOAD, download),
        download.as_secs_f64()
    );
    println!(
        "  upload 16 MiB        {:.0} MB/s ({:.2} s, verified by the app)",
        mbps(UPLOAD, upload),
        upload.as_secs_f64()
    );
    println!(
        "  {:<20} state {}, rx {} B, tx {} B (wire bytes, handshakes included)",
        format!("gateway {}", gw.id),
        gw.state,
        gw.rx_bytes,
        gw.tx_bytes
    );
    println!();
    println!("demo passed: every request crossed the encrypted tunnel and came back intact");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn start_gateway(key: PrivateKey, agent: &PrivateKey) -> anyhow::Result<Manager> {
    let mut config = ManagerConfig::new(key, IpAddr::from(GATEWAY_VIP));
    let mut peer = GatewaySpec::new("agent", agent.public_key(), None, IpAddr::from(AGENT_VIP));
    peer.persistent_keepalive = None;
    peer.liveness_probe = LivenessProbe::Off;
    config.gateways = vec![peer];
    Ok(Manager::start(config).await?)
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn empty() -> BoxBody {
    http_body_util::Empty::new().boxed()
}

/// The sample app: `/hello` (small), `/bytes/N` (N pattern bytes, streamed), `/sink` (POST,
/// counts and checks the pattern).
async fn start_sample_app() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("sample app: bind")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn app(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let text = |status: u16, body: String| {
        let mut resp = Response::new(http_body_util::Full::new(Bytes::from(body)).boxed());
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        resp
    };
    if path == "/hello" {
        let xff = req.headers().get("x-forwarded-for").cloned();
        let mut resp = text(200, "hello from the sample app\n".into());
        if let Some(xff) = xff {
            resp.headers_mut().insert("x-seen-forwarded-for", xff);
        }
        return Ok(resp);
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Ok(Response::new(Pattern::new(n).boxed()));
    }
    if path == "/sink" {
        let mut body = req.into_body();
        let mut got = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if !matches_pattern(got, &data) {
                    return Ok(text(400, format!("corrupted at byte {got}\n")));
                }
                got += data.len() as u64;
            }
        }
        return Ok(text(200, format!("ok {got}\n")));
    }
    Ok(text(404, "not found\n".into()))
}

/// Byte `i` of the test pattern: period 251 (a prime, so it never lines up with segment,
/// record or buffer sizes).
const fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

/// Pattern period.
const PERIOD: usize = 251;
/// Largest body frame.
const FRAME: usize = 64 * 1024;

/// The pattern from byte 0, long enough that every frame is one slice of it: the bytes
/// `offset..offset + n` (n ≤ [`FRAME`]) are `PATTERN[offset % PERIOD..][..n]`. The app
/// serves its frames from here and both checks compare against it, so the demo measures
/// the tunnel, not a byte-by-byte generator (which cost a quarter of the demo's CPU).
static PATTERN: [u8; FRAME + PERIOD] = {
    let mut table = [0u8; FRAME + PERIOD];
    let mut i = 0;
    while i < table.len() {
        table[i] = pattern_byte(i as u64);
        i += 1;
    }
    table
};

/// `PATTERN` from byte `offset` of the stream, `n` ≤ [`FRAME`] bytes long.
fn pattern_at(offset: u64, n: usize) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    &PATTERN[start..start + n]
}

fn matches_pattern(offset: u64, data: &[u8]) -> bool {
    data.chunks(FRAME)
        .enumerate()
        .all(|(i, chunk)| chunk == pattern_at(offset + (i * FRAME) as u64, chunk.len()))
}

/// A body of `len` pattern bytes, produced in 64 KiB frames.
struct Pattern {
    offset: u64,
    len: u64,
}

impl Pattern {
    fn new(len: u64) -> Self {
        Self { offset: 0, len }
    }
}

impl hyper::body::Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.len - self.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(FRAME as u64) as usize;
        let chunk = Bytes::from_static(pattern_at(self.offset, n));
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len - self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_pattern_at_every_offset() {
        for offset in [0u64, 1, 250, 251, 252, 65_535, 1 << 40] {
            for n in [0usize, 1, 1380, FRAME] {
                let want: Vec<u8> = (offset..offset + n as u64).map(pattern_byte).collect();
                assert_eq!(
                    pattern_at(offset, n),
                    &want[..],
                    "offset {offset}, {n} bytes"
                );
            }
        }
    }

    #[test]
    fn the_check_finds_a_wrong_byte_anywhere() {
        let mut data: Vec<u8> = (7..7 + 3 * FRAME as u64 + 5).map(pattern_byte).collect();
        assert!(matches_pattern(7, &data));
        assert!(!matches_pattern(8, &data), "shifted by one byte");
        for at in [0, FRAME - 1, FRAME, 2 * FRAME + 17, data.len() - 1] {
            data[at] ^= 1;
            assert!(!matches_pattern(7, &data), "byte {at} flipped");
            data[at] ^= 1;
        }
    }
}
