//! The local admin HTTP endpoint: `/healthz`, `/readyz`, `/status`, `/metrics`, and
//! `POST /ping` (one ICMP echo through the tunnel, for `wg-agent ping`), served with hyper on
//! a loopback TCP address or a unix socket. The runtime plugs in through [`StatusSource`];
//! this module knows nothing about tunnels.
//!
//! With `[admin] allow_remote = true` it may listen on any address: clients from other hosts
//! (kubelet probes, Prometheus) then get `/healthz`, `/readyz` and `/metrics`, and `403` for
//! everything else; `/status` (endpoints, keys) and `/ping` (packets into the tunnel) answer
//! local clients only (loopback or the unix socket).
//!
//! ```no_run
//! # async fn example() -> Result<(), agent::admin::AdminError> {
//! use std::sync::Arc;
//! use agent::admin::{AdminAddr, AdminServer, StatusSource};
//! use agent::snapshot::StatusSnapshot;
//!
//! struct Idle;
//! impl StatusSource for Idle {
//!     fn snapshot(&self) -> StatusSnapshot {
//!         StatusSnapshot::new("10.1.0.100".parse().unwrap(), vec![], vec![])
//!     }
//! }
//! let server = AdminServer::bind(&AdminAddr::Tcp("127.0.0.1:5182".parse().unwrap())).await?;
//! server.serve(Arc::new(Idle), std::future::pending()).await;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::config::AdminListen;
use crate::metrics::{MetricsWriter, write_gateway_metrics};
use crate::ping::{PingError, PingReply, PingRequest};
use crate::snapshot::StatusSnapshot;

/// Most admin connections served at once; further clients wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoint reports. The runtime implements it; tests use fakes.
pub trait StatusSource: Send + Sync + 'static {
    /// The current status document (also the source of the per-gateway metrics).
    fn snapshot(&self) -> StatusSnapshot;

    /// Appends series beyond the per-gateway ones (connections, drops, per-route requests).
    fn write_metrics(&self, _out: &mut MetricsWriter<'_>) {}

    /// True once shutdown has begun: `/readyz` then answers 503.
    fn draining(&self) -> bool {
        false
    }

    /// One ICMP echo through the tunnel to `target` (a gateway id or an IP address), waiting
    /// at most `timeout` (`POST /ping`). By default there is no tunnel to ping through.
    fn ping(&self, target: String, timeout: Duration) -> PingFuture {
        let _ = (target, timeout);
        Box::pin(async {
            Err(PingError::Unavailable(
                "this endpoint has no tunnel".to_owned(),
            ))
        })
    }
}

/// What [`StatusSource::ping`] returns.
pub type PingFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<PingReply, PingError>> + Send + 'static>>;

/// Where an admin endpoint is reached: a TCP address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// TCP (a loopback address, or any with `[admin] allow_remote`; the config enforces it).
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

impl AdminAddr {
    /// The address for a configured `[admin] listen`, `None` when it is `off`.
    pub fn from_listen(listen: &AdminListen) -> Option<Self> {
        match listen {
            AdminListen::Tcp(addr) => Some(Self::Tcp(*addr)),
            AdminListen::Unix(path) => Some(Self::Unix(path.clone())),
            AdminListen::Off => None,
        }
    }

    /// The address a local client connects to: an unspecified listen address (`0.0.0.0`,
    /// `[::]`) is reached on loopback of the same family.
    pub fn for_local_client(&self) -> Self {
        match self {
            Self::Tcp(addr) if addr.ip().is_unspecified() => {
                let ip = match addr {
                    SocketAddr::V4(_) => std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                    SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                };
                Self::Tcp(SocketAddr::new(ip, addr.port()))
            }
            other => other.clone(),
        }
    }
}

/// Who sent a request, as far as the admin endpoint cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A loopback address or the unix socket: every endpoint.
    Local,
    /// Another host (only with `[admin] allow_remote`): `/healthz`, `/readyz`, `/metrics`.
    Remote,
}

impl Client {
    /// Classifies a TCP peer; an IPv4-mapped IPv6 loopback address (`::ffff:127.0.0.1`, seen
    /// on a `[::]` listener) is local too.
    pub fn of_peer(peer: SocketAddr) -> Self {
        let ip = peer.ip().to_canonical();
        if ip.is_loopback() {
            Self::Local
        } else {
            Self::Remote
        }
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for AdminAddr {
    type Err = String;

    /// `"127.0.0.1:5182"`, `"[::1]:5182"`, `"localhost:5182"` or `"unix:/path"`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(port) = text.strip_prefix("localhost:") {
            let port: u16 = port.parse().map_err(|_| format!("`{text}`: bad port"))?;
            return Ok(Self::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        text.parse()
            .map(Self::Tcp)
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:5182 or unix:/path"))
    }
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Binding the address failed.
    #[error("admin endpoint: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: AdminAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The unix socket path is in use by a live process, or is not a socket.
    #[error("admin endpoint: {path} {reason}", path = path.display())]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A bound admin endpoint, ready to [`serve`](AdminServer::serve).
pub struct AdminServer {
    listener: Listener,
    addr: AdminAddr,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Binds `addr`. A stale unix socket file (nobody listening) is replaced; a live one is
    /// an error.
    pub async fn bind(addr: &AdminAddr) -> Result<Self, AdminError> {
        let bind_error = |source| AdminError::Bind {
            addr: addr.clone(),
            source,
        };
        let (listener, addr) = match addr {
            AdminAddr::Tcp(sock) => {
                let l = TcpListener::bind(sock).await.map_err(bind_error)?;
                let local = l.local_addr().map_err(bind_error)?;
                (Listener::Tcp(l), AdminAddr::Tcp(local))
            }
            AdminAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let l = bind_private_socket(path).map_err(bind_error)?;
                (Listener::Unix(l), AdminAddr::Unix(path.clone()))
            }
        };
        Ok(Self { listener, addr })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> &AdminAddr {
        &self.addr
    }

    /// Serves requests until `shutdown` completes; then stops accepting, and removes the unix
    /// socket file. Connections already accepted finish on their own tasks.
    pub async fn serve(self, source: Arc<dyn StatusSource>, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let pings = Arc::new(Semaphore::new(crate::ping::MAX_IN_FLIGHT));
        tokio::pin!(shutdown);
        tracing::info!(addr = %self.addr, "admin endpoint listening");
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break, // the semaphore is never closed
                },
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&self.listener) => accepted,
            };
            match accepted {
                Ok((io, client)) => {
                    let source = source.clone();
                    let pings = pings.clone();
                    tokio::spawn(async move {
                        serve_connection(io, client, source, pings).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    tracing::debug!(%error, "admin endpoint: accept failed");
                    // Out of file descriptors and similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let AdminAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
        tracing::debug!(addr = %self.addr, "admin endpoint stopped");
    }
}

enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Io, Client)> {
    match listener {
        Listener::Tcp(l) => l
            .accept()
            .await
            .map(|(s, peer)| (Io::Tcp(s), Client::of_peer(peer))),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| (Io::Unix(s), Client::Local)),
    }
}

async fn serve_connection(
    io: Io,
    client: Client,
    source: Arc<dyn StatusSource>,
    pings: Arc<Semaphore>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let source = source.clone();
        let pings = pings.clone();
        async move {
            // `/ping` sends packets: local clients only (`respond` refuses remote ones).
            if client == Client::Local && req.uri().path() == "/ping" {
                return Ok::<_, Infallible>(ping(req, source.as_ref(), &pings).await);
            }
            Ok::<_, Infallible>(respond(
                req.method(),
                req.uri().path(),
                source.as_ref(),
                client,
            ))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let result = match io {
        Io::Tcp(s) => builder.serve_connection(TokioIo::new(s), service).await,
        Io::Unix(s) => builder.serve_connection(TokioIo::new(s), service).await,
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin endpoint: connection ended with an error");
    }
}

/// `POST /ping` from a local client: a [`PingRequest`] body in, a [`PingReply`] out (`200`
/// answered, `504` not), or `{"error": ...}` with the status of the [`PingError`].
async fn ping(
    req: Request<Incoming>,
    source: &dyn StatusSource,
    pings: &Semaphore,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: POST a JSON body {\"target\": \"gw1\", \"timeout_ms\": 2000}\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let body = match Limited::new(req.into_body(), MAX_PING_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return ping_error(&PingError::BadRequest(format!("reading the body: {error}")));
        }
    };
    let request: PingRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return ping_error(&PingError::BadRequest(format!(
                "the body is not {{\"target\": ..., \"timeout_ms\": ...}}: {error}"
            )));
        }
    };
    // Bounded: each echo holds an ICMP socket in the stack until its reply or timeout.
    let Ok(_permit) = pings.try_acquire() else {
        return ping_error(&PingError::Busy);
    };
    let timeout = request.timeout();
    match source.ping(request.target, timeout).await {
        Ok(reply) => {
            let status = if reply.rtt_us.is_some() {
                StatusCode::OK
            } else {
                StatusCode::GATEWAY_TIMEOUT
            };
            json(status, &reply)
        }
        Err(error) => ping_error(&error),
    }
}

/// The largest `POST /ping` body read.
const MAX_PING_BODY: usize = 4096;

fn ping_error(error: &PingError) -> Response<Full<Bytes>> {
    json(
        error.status(),
        &serde_json::json!({ "error": error.to_string() }),
    )
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(mut body) => {
            body.push('\n');
            with_type(status, body, "application/json")
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("json: {error}\n"),
        ),
    }
}

/// Binds a unix socket that only the agent's user can connect to (mode 0600, whatever the
/// umask): bound under a temporary name, restricted, then renamed into place, so the final
/// path never exists with a wider mode.
pub(crate) fn bind_private_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(listener)
}

async fn remove_stale_socket(path: &Path) -> Result<(), AdminError> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::SocketPath {
            path: path.to_owned(),
            reason: "exists and is not a socket",
        });
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(AdminError::SocketPath {
            path: path.to_owned(),
            reason: "is in use by another process (is another wg-agent running?)",
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Answers one request from a local client. Public so the runtime can reuse it (for example
/// in tests).
pub fn handle(req: &Request<Incoming>, source: &dyn StatusSource) -> Response<Full<Bytes>> {
    respond(req.method(), req.uri().path(), source, Client::Local)
}

/// Paths served to [`Client::Remote`].
const REMOTE_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Answers one request from `client`.
pub fn respond(
    method: &Method,
    path: &str,
    source: &dyn StatusSource,
    client: Client,
) -> Response<Full<Bytes>> {
    if client == Client::Remote && !REMOTE_PATHS.contains(&path) {
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: only /healthz, /readyz and /metrics are served to remote clients; \
             ask from the agent's host\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if source.draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
            } else if source.snapshot().any_gateway_up() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no gateway is up\n",
                )
            }
        }
        "/status" => match serde_json::to_string_pretty(&source.snapshot()) {
            Ok(mut json) => {
                json.push('\n');
                with_type(StatusCode::OK, json, "application/json")
            }
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("status: {error}\n"),
            ),
        },
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            let mut w = MetricsWriter::new(&mut out);
            write_gateway_metrics(&mut w, &source.snapshot());
            source.write_metrics(&mut w);
            with_type(
                StatusCode::OK,
                out,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /status, /metrics or POST /ping\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{GatewayState, GatewayStatus};
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake {
        up: AtomicBool,
        draining: AtomicBool,
    }

    impl StatusSource for Fake {
        fn snapshot(&self) -> StatusSnapshot {
            let state = if self.up.load(Ordering::Relaxed) {
                GatewayState::Up
            } else {
                GatewayState::Connecting
            };
            let gw = GatewayStatus::new(
                "gw1".into(),
                None,
                "pk".into(),
                "192.0.2.1:51820".into(),
                state,
                None,
                1,
                2,
            );
            StatusSnapshot::new("10.1.0.100".parse().unwrap(), vec![gw], vec![])
        }
        fn draining(&self) -> bool {
            self.draining.load(Ordering::Relaxed)
        }

        fn ping(&self, target: String, timeout: Duration) -> PingFuture {
            Box::pin(async move {
                let ip = "10.1.0.1".parse().unwrap();
                match target.as_str() {
                    "gw1" => Ok(PingReply::answered(ip, target, Duration::from_micros(1500))),
                    "silent" => Ok(PingReply::unanswered(
                        ip,
                        "gw1".into(),
                        format!("timed out after {timeout:?}"),
                    )),
                    _ => Err(PingError::UnknownTarget(target)),
                }
            })
        }
    }

    /// `POST /ping` over a real connection: the reply, a timeout, an unknown target, a bad
    /// body, the wrong method.
    #[tokio::test]
    async fn ping_endpoint_answers_local_clients() {
        let server = AdminServer::bind(&AdminAddr::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = server.local_addr().clone();
        let source: Arc<dyn StatusSource> = Arc::new(Fake {
            up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(source, async {
            let _ = stopped.await;
        }));
        let post = |body: &'static str| {
            let addr = addr.clone();
            async move {
                crate::status::request(
                    &addr,
                    Method::POST,
                    "/ping",
                    Some(body.to_owned()),
                    Duration::from_secs(10),
                )
                .await
                .unwrap()
            }
        };
        let (status, body) = post(r#"{"target":"gw1","timeout_ms":1000}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let reply: PingReply = serde_json::from_str(&body).unwrap();
        assert_eq!(reply.rtt(), Some(Duration::from_micros(1500)));
        assert_eq!(reply.gateway, "gw1");
        let (status, body) = post(r#"{"target":"silent","timeout_ms":1000}"#).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert!(body.contains("timed out after 1s"), "{body}");
        let (status, body) = post(r#"{"target":"gw9","timeout_ms":1000}"#).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("`gw9` is neither a gateway id"), "{body}");
        let (status, _) = post("gw1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = crate::status::get(&addr, "/ping", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        // The client side reads the same answers.
        let outcome = crate::ping::ping_once(
            &addr,
            &PingRequest::new("gw9", Duration::from_secs(1)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            matches!(&outcome, crate::ping::PingOutcome::Refused(StatusCode::NOT_FOUND, m) if m.contains("gw9")),
            "{outcome:?}"
        );
        let _ = stop.send(());
        serving.await.unwrap();
    }

    fn body(resp: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = resp.status();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn routes_and_readiness() {
        let fake = Fake {
            up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        };
        let get = |path: &str| body(respond(&Method::GET, path, &fake, Client::Local));
        assert_eq!(get("/healthz"), (StatusCode::OK, "ok\n".into()));
        assert_eq!(get("/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        fake.up.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz"), (StatusCode::OK, "ready\n".into()));
        fake.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            get("/readyz"),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: draining\n".into()
            )
        );
        let (status, json) = get("/status");
        assert_eq!(status, StatusCode::OK);
        let parsed: StatusSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, fake.snapshot());
        let (status, metrics) = get("/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(
            metrics.contains("wg_agent_gateway_up{gateway=\"gw1\"} 1"),
            "{metrics}"
        );
        assert_eq!(get("/nope").0, StatusCode::NOT_FOUND);
        let resp = respond(&Method::POST, "/status", &fake, Client::Local);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
    }

    #[test]
    fn remote_clients_get_probes_and_metrics_only() {
        let fake = Fake {
            up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        };
        let get = |path: &str| body(respond(&Method::GET, path, &fake, Client::Remote));
        assert_eq!(get("/healthz"), (StatusCode::OK, "ok\n".into()));
        assert_eq!(get("/readyz"), (StatusCode::OK, "ready\n".into()));
        let (status, metrics) = get("/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("wg_agent_gateway_up"), "{metrics}");
        for local_only in ["/status", "/nope", "/status/", "/ping"] {
            let (status, text) = get(local_only);
            assert_eq!(status, StatusCode::FORBIDDEN, "{local_only}");
            assert!(
                !text.contains("192.0.2.1"),
                "{local_only}: no endpoint leaks"
            );
        }
        for path in ["/status", "/ping"] {
            let resp = respond(&Method::POST, path, &fake, Client::Remote);
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        }
    }

    #[test]
    fn clients_are_classified_by_peer_address() {
        for local in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                Client::of_peer(local.parse().unwrap()),
                Client::Local,
                "{local}"
            );
        }
        for remote in [
            "10.0.0.2:1",
            "192.0.2.1:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.2]:1",
        ] {
            assert_eq!(
                Client::of_peer(remote.parse().unwrap()),
                Client::Remote,
                "{remote}"
            );
        }
    }

    #[test]
    fn unspecified_listen_is_reached_on_loopback() {
        let addr = AdminAddr::Tcp("0.0.0.0:5182".parse().unwrap());
        assert_eq!(addr.for_local_client().to_string(), "127.0.0.1:5182");
        let addr = AdminAddr::Tcp("[::]:5182".parse().unwrap());
        assert_eq!(addr.for_local_client().to_string(), "[::1]:5182");
        let addr = AdminAddr::Tcp("127.0.0.2:1".parse().unwrap());
        assert_eq!(addr.for_local_client(), addr);
    }

    #[test]
    fn admin_addr_from_str() {
        assert_eq!(
            "127.0.0.1:9".parse(),
            Ok(AdminAddr::Tcp("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            "localhost:9".parse(),
            Ok(AdminAddr::Tcp("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!("unix:/a/b".parse(), Ok(AdminAddr::Unix("/a/b".into())));
        assert!("unix:".parse::<AdminAddr>().is_err());
        assert!("nowhere".parse::<AdminAddr>().is_err());
    }

    #[test]
    fn admin_addr_from_listen() {
        assert_eq!(AdminAddr::from_listen(&AdminListen::Off), None);
        assert_eq!(
            AdminAddr::from_listen(&AdminListen::DEFAULT).map(|a| a.to_string()),
            Some("127.0.0.1:5182".into())
        );
    }
}
