//! A service that embeds the agent's [`Manager`]: it joins a WireGuard gateway, serves HTTP
//! (hyper) on its virtual IP inside the tunnel, and dials out through the tunnel. No config
//! file, no command-line framework, no root: only the Manager and plain specs.
//!
//! ```text
//! WG_PRIVATE_KEY=<base64> cargo run -p agent --example embed -- \
//!     --gateway-key <base64> --gateway-endpoint gw.example.net:51820
//! ```
//!
//! - `GET /` on `10.1.0.100:80` (from the gateway's side) answers `hello from 10.1.0.100`.
//! - `GET /upstream` fetches `http://10.1.0.1:8080/` through the tunnel and relays it.
//!
//! Options: `--virtual-ip` (default 10.1.0.100), `--gateway-ip` (10.1.0.1), `--upstream`
//! (the gateway's IP, port 8080), `--port` (80). Without `WG_PRIVATE_KEY` a key is generated.
//! The first line on stdout is `public_key <base64>` (the gateway's peer entry needs it), the
//! second `serving <address>`. SIGTERM or Ctrl-C closes the Manager gracefully: requests under
//! way finish, then the process exits 0.
//!
//! `crates/agent/tests/embed.rs` runs this example against a gateway built from the same
//! crates.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use agent::manager::{Endpoint, GatewaySpec, Manager, ManagerConfig};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::signal::unix::{SignalKind, signal};
use wg_core::{PrivateKey, PublicKey};

/// What the command line and the environment say.
struct Options {
    private_key: PrivateKey,
    gateway_key: PublicKey,
    gateway_endpoint: Endpoint,
    virtual_ip: IpAddr,
    gateway_ip: IpAddr,
    upstream: Option<SocketAddr>,
    port: u16,
}

fn options() -> Result<Options, String> {
    let private_key = match std::env::var("WG_PRIVATE_KEY") {
        Ok(text) => {
            PrivateKey::from_base64(text.trim()).map_err(|e| format!("WG_PRIVATE_KEY: {e}"))?
        }
        Err(_) => PrivateKey::generate(),
    };
    let mut gateway_key = None;
    let mut gateway_endpoint = None;
    let mut virtual_ip: IpAddr = [10, 1, 0, 100].into();
    let mut gateway_ip: IpAddr = [10, 1, 0, 1].into();
    let mut upstream = None;
    let mut port = 80;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag}: a value is missing"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--gateway-key" => {
                gateway_key = Some(PublicKey::from_base64(&value).map_err(|e| bad(&e))?);
            }
            "--gateway-endpoint" => {
                gateway_endpoint = Some(value.parse::<Endpoint>().map_err(|e| bad(&e))?);
            }
            "--virtual-ip" => virtual_ip = value.parse().map_err(|e| bad(&e))?,
            "--gateway-ip" => gateway_ip = value.parse().map_err(|e| bad(&e))?,
            "--upstream" => upstream = Some(value.parse().map_err(|e| bad(&e))?),
            "--port" => port = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Options {
        private_key,
        gateway_key: gateway_key.ok_or("--gateway-key is required")?,
        gateway_endpoint: gateway_endpoint.ok_or("--gateway-endpoint is required")?,
        virtual_ip,
        gateway_ip,
        upstream,
        port,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("embed: {error}");
            return ExitCode::from(2);
        }
    };
    match serve(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("embed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    // The Manager from plain specs: our identity and address, one gateway.
    let mut config = ManagerConfig::new(options.private_key.clone(), options.virtual_ip);
    config.gateways = vec![GatewaySpec::new(
        "gateway",
        options.gateway_key,
        Some(options.gateway_endpoint),
        options.gateway_ip,
    )];
    let manager = Manager::start(config).await?;
    let upstream = options
        .upstream
        .unwrap_or(SocketAddr::new(options.gateway_ip, 8080));

    // A listener on the virtual IP: only the tunnel reaches it.
    let listener = manager.listen(options.port)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "public_key {}", options.private_key.public_key())?;
    writeln!(out, "serving {}", listener.local_addr())?;
    out.flush()?;
    drop(out);

    let mut terminate = signal(SignalKind::terminate())?;
    let accepting = async {
        // `accept` fails once the Manager closes: the loop ends and the listener goes.
        while let Ok((stream, peer)) = listener.accept().await {
            let manager = manager.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    handle(manager.clone(), upstream, peer, request)
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    eprintln!("embed: connection from {peer}: {error}");
                }
            });
        }
    };
    tokio::select! {
        () = accepting => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stop accepting, let the requests under way finish (5 s at most), stop the tunnel.
    manager.close().await;
    Ok(())
}

async fn handle(
    manager: Manager,
    upstream: SocketAddr,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match request.uri().path() {
        "/" => (
            StatusCode::OK,
            format!("hello from {}, {peer}\n", manager.virtual_ip()),
        ),
        "/upstream" => match fetch(&manager, upstream).await {
            Ok(body) => (StatusCode::OK, format!("upstream said: {body}\n")),
            Err(error) => (
                StatusCode::BAD_GATEWAY,
                format!("cannot reach {upstream} through the tunnel: {error}\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /` on `upstream`, dialled through the tunnel from the virtual IP.
async fn fetch(
    manager: &Manager,
    upstream: SocketAddr,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stream = manager.dial_tcp(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/")
        .header(hyper::header::HOST, upstream.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).trim_end().to_owned())
}
