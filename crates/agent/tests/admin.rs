//! The admin endpoint on loopback with a fake status source, and `wg-agent status` against it.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use agent::admin::{AdminAddr, AdminServer, StatusSource};
use agent::config::RouteProtocol;
use agent::metrics::{AgentCounters, MetricsWriter, write_agent_counters};
use agent::snapshot::{GatewayState, GatewayStatus, RouteStatus, StatusSnapshot};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_wg-agent");

struct Fake {
    up: AtomicBool,
    draining: AtomicBool,
    handshake_unix: u64,
}

impl StatusSource for Fake {
    fn snapshot(&self) -> StatusSnapshot {
        let state = if self.up.load(Ordering::SeqCst) {
            GatewayState::Up
        } else {
            GatewayState::Stale
        };
        StatusSnapshot::new(
            "10.1.0.100".parse().unwrap(),
            vec![
                GatewayStatus::new(
                    "gw1".into(),
                    Some("gateway-tokyo".into()),
                    "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into(),
                    "192.0.2.1:51820".into(),
                    state,
                    Some(self.handshake_unix),
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
            vec![RouteStatus::new(
                80,
                RouteProtocol::Http,
                "127.0.0.1:8080".into(),
            )],
        )
    }

    fn write_metrics(&self, out: &mut MetricsWriter<'_>) {
        let mut counters = AgentCounters::default();
        counters.open_connections = 3;
        counters.dropped_packets.insert("malformed".into(), 5);
        write_agent_counters(out, &counters);
        // Per-route series come from local-proxy, appended through the same writer.
        let route = local_proxy::RouteMetrics::new();
        route.record_status(200);
        route.record_status(502);
        local_proxy::render_prometheus(
            out.text(),
            "wg_agent_route",
            &[("port=\"80\"", &route.snapshot())],
        );
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One HTTP/1.1 GET over a fresh connection; returns (status code, body).
async fn get(addr: &AdminAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    match addr {
        AdminAddr::Tcp(a) => {
            let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            s.read_to_end(&mut raw).await.unwrap();
        }
        AdminAddr::Unix(p) => {
            let mut s = tokio::net::UnixStream::connect(p).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            s.read_to_end(&mut raw).await.unwrap();
        }
    }
    let text = String::from_utf8(raw).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (code, body)
}

async fn start(
    addr: AdminAddr,
    fake: Arc<Fake>,
) -> (
    AdminAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let server = AdminServer::bind(&addr).await.unwrap();
    let bound = server.local_addr().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(fake, async move {
        let _ = stopped.await;
    }));
    (bound, stop, task)
}

fn fake() -> Arc<Fake> {
    Arc::new(Fake {
        up: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        handshake_unix: now_unix() - 12,
    })
}

async fn wg_agent(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_endpoints_over_tcp() {
    let fake = fake();
    let (addr, stop, task) =
        start(AdminAddr::Tcp("127.0.0.1:0".parse().unwrap()), fake.clone()).await;
    assert!(matches!(addr, AdminAddr::Tcp(a) if a.port() != 0));

    assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(&addr, "/readyz").await, (200, "ready\n".into()));
    fake.up.store(false, Ordering::SeqCst);
    assert_eq!(
        get(&addr, "/readyz").await,
        (503, "not ready: no gateway is up\n".into())
    );
    fake.up.store(true, Ordering::SeqCst);
    fake.draining.store(true, Ordering::SeqCst);
    assert_eq!(
        get(&addr, "/readyz").await,
        (503, "not ready: draining\n".into())
    );
    assert_eq!(
        get(&addr, "/healthz").await.0,
        200,
        "healthy while draining"
    );
    fake.draining.store(false, Ordering::SeqCst);

    let (code, body) = get(&addr, "/status").await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["virtual_ip"], "10.1.0.100");
    assert_eq!(json["gateways"][0]["id"], "gw1");
    assert_eq!(json["gateways"][0]["state"], "up");
    assert_eq!(
        json["gateways"][0]["last_handshake_unix"],
        fake.handshake_unix
    );
    assert_eq!(
        json["gateways"][1]["last_handshake_unix"],
        serde_json::Value::Null
    );
    assert_eq!(
        json["routes"][0],
        serde_json::json!({"port": 80, "protocol": "http", "upstream": "127.0.0.1:8080"})
    );

    let (code, metrics) = get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "wg_agent_gateway_rx_bytes_total{gateway=\"gw1\"} 1268777",
        "wg_agent_gateway_tx_bytes_total{gateway=\"gw2\"} 148",
        &format!(
            "wg_agent_gateway_last_handshake_timestamp_seconds{{gateway=\"gw1\"}} {}",
            fake.handshake_unix
        ),
        "wg_agent_gateway_up{gateway=\"gw1\"} 1",
        "wg_agent_gateway_up{gateway=\"gw2\"} 0",
        "wg_agent_open_connections 3",
        "wg_agent_dropped_packets_total{reason=\"malformed\"} 5",
        "wg_agent_route_requests_total{port=\"80\",class=\"2xx\"} 1",
        "wg_agent_route_requests_total{port=\"80\",class=\"5xx\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?}:\n{metrics}"
        );
    }
    assert_exposition_is_well_formed(&metrics);
    assert_eq!(get(&addr, "/other").await.0, 404);

    // `wg-agent status` against it: table, then JSON verbatim.
    let o = wg_agent(vec!["status".into(), "--admin".into(), addr.to_string()]).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("gw1"))
        .unwrap_or_else(|| panic!("no gw1 row:\n{out}"));
    for cell in [
        "gateway-tokyo",
        "192.0.2.1:51820",
        "up",
        "seconds ago",
        "1.21 MiB",
        "3.40 KiB",
    ] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
    let row = out.lines().find(|l| l.starts_with("gw2")).unwrap();
    assert!(
        row.contains("connecting") && row.contains("never") && row.contains("148 B"),
        "{row}"
    );
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["80", "http", "127.0.0.1:8080", "-", "-"]),
        "{out}"
    );

    let o = wg_agent(vec![
        "status".into(),
        "--admin".into(),
        addr.to_string(),
        "--json".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        get(&addr, "/status").await.1
    );

    stop.send(()).unwrap();
    // `serve` returns once shutdown completes (the listener is closed with it).
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_and_status_from_config() {
    let dir = std::env::temp_dir().join(format!("wg-agent-admin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("admin.sock");
    let _ = std::fs::remove_file(&socket);
    // A stale socket file from a dead process is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (addr, stop, task) = start(AdminAddr::Unix(socket.clone()), fake()).await;
    assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(&addr, "/readyz").await.0, 200);

    // A second server on the live socket is refused.
    let err = AdminServer::bind(&AdminAddr::Unix(socket.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");

    // `status --config` finds the socket in [admin] (relative to the config's folder) and
    // needs nothing else from the file (no key here).
    let config = dir.join("agent.toml");
    std::fs::write(&config, "[admin]\nlisten = \"unix:admin.sock\"\n").unwrap();
    let o = wg_agent(vec![
        "status".into(),
        "--config".into(),
        config.display().to_string(),
        "--json".into(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let parsed: StatusSnapshot = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(parsed.gateways.len(), 2);

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!socket.exists(), "socket file removed on stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every sample belongs to a family announced once by `# TYPE` (histogram suffixes included),
/// and every sample line is `name[{labels}] value`.
fn assert_exposition_is_well_formed(text: &str) {
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                families.insert(name.to_owned()),
                "family {name} announced twice"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        assert!(
            families.contains(family),
            "sample before its # TYPE: {line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("wg-agent-admin-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("admin.sock");
    let _ = std::fs::remove_file(&socket);
    // Whatever the umask: the socket is the agent user's only.
    let (addr, stop, task) = start(AdminAddr::Unix(socket.clone()), fake()).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode {mode:o}");
    assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".into()));
    let _ = stop.send(());
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_port_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("wg-agent-admin-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    let key = wg_core::PrivateKey::generate();
    std::fs::write(
        &config,
        format!(
            "routes = []\n[agent]\nprivate_key = \"{}\"\nvirtual_ip = \"10.1.0.100\"\n\
             subnet = \"10.1.0.0/24\"\n[admin]\nlisten = \"{addr}\"\n",
            key.to_base64_secret().as_str()
        ),
    )
    .unwrap();
    let o = wg_agent(vec![
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ])
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&addr.to_string()) && err.contains("[admin] listen") && err.contains("in use"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
