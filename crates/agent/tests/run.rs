//! The real `wg-agent run` process against an in-process gateway (wg-core + netstack through
//! the agent library's Manager) on loopback: HTTP through the tunnel, the admin endpoint,
//! `status`, SIGHUP reload (good and bad files), SIGTERM drain, and no key in the logs.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::config::LivenessProbe;
use agent::manager::{GatewaySpec, Manager, ManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_core::PrivateKey;

const AGENT_VIP: [u8; 4] = [10, 1, 0, 100];

struct Fixture {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    agent_key: PrivateKey,
    gateway_key: PrivateKey,
    gateway_port: u16,
    app: SocketAddr,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Fixture {
    fn config_text(&self, routes: &str) -> String {
        format!(
            "[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\n\
             [[gateways]]\nid = \"gw1\"\nname = \"loopback\"\npublic_key = \"{}\"\nendpoint = \"127.0.0.1:{}\"\n\
             virtual_ip = \"10.1.0.1\"\n\n{routes}\n[proxy]\ndrain_timeout = \"5s\"\n\n[admin]\nlisten = \"{}\"\n",
            self.gateway_key.public_key(),
            self.gateway_port,
            self.admin,
        )
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    fn spawn(&self) -> Child {
        let log = std::fs::File::create(&self.log).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_wg-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--log-level", "trace"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wg-agent")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One HTTP/1.1 request over plain TCP to the admin endpoint: (status, body).
fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/slow` requests the app has started answering.
static SLOW_STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A tiny upstream app: answers every request with `app:<path>` after an optional `/slow` delay.
async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                if path == "/slow" {
                    SLOW_STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let body = format!("app:{path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

async fn start_gateway(key: &PrivateKey, agent: &PrivateKey) -> Manager {
    let mut config = ManagerConfig::new(key.clone(), IpAddr::from([10, 1, 0, 1]));
    let mut peer = GatewaySpec::new("agent", agent.public_key(), None, IpAddr::from(AGENT_VIP));
    peer.persistent_keepalive = None;
    peer.liveness_probe = LivenessProbe::Off;
    config.gateways = vec![peer];
    Manager::start(config).await.expect("gateway starts")
}

/// GET `path` on the agent's virtual IP through the tunnel, from the gateway.
async fn get_via_tunnel(gw: &Manager, port: u16, path: &str) -> std::io::Result<String> {
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), port);
    let mut s = tokio::time::timeout(Duration::from_secs(5), gw.dial_tcp(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn fixture() -> (Fixture, Manager) {
    let dir = std::env::temp_dir().join(format!(
        "wg-agent-run-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let agent_key = PrivateKey::generate();
    let gateway_key = PrivateKey::generate();
    let key_path = dir.join("agent.key");
    std::fs::write(
        &key_path,
        format!("{}\n", agent_key.to_base64_secret().as_str()),
    )
    .expect("key");
    set_mode_600(&key_path);
    let gw = start_gateway(&gateway_key, &agent_key).await;
    let app = start_app().await;
    let fixture = Fixture {
        config: dir.join("agent.toml"),
        log: dir.join("agent.log"),
        admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
        gateway_port: gw.local_addrs()[0].port(),
        dir,
        agent_key,
        gateway_key,
        app,
    };
    (fixture, gw)
}

fn set_mode_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_and_drains() {
    let (fx, gw) = fixture().await;
    let route80 = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    fx.write_config(&fx.config_text(&route80));
    let mut child = fx.spawn();
    let admin = fx.admin;

    // Ready once the gateway is up.
    wait_for("/readyz 200", Duration::from_secs(15), || {
        admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(admin_get(admin, "/healthz").map(|(s, _)| s), Some(200));

    // HTTP through the tunnel, from the gateway side, with the forwarded chain.
    let resp = get_via_tunnel(&gw, 80, "/hello")
        .await
        .expect("request through the tunnel");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("app:/hello"), "{resp}");

    // /status and /metrics reflect the gateway and the route.
    let (_, status) = admin_get(admin, "/status").expect("status");
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(doc["virtual_ip"], "10.1.0.100");
    assert_eq!(doc["gateways"][0]["id"], "gw1");
    assert_eq!(doc["gateways"][0]["state"], "up");
    assert!(doc["gateways"][0]["rx_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(doc["gateways"][0]["last_handshake_unix"].as_u64().is_some());
    assert_eq!(doc["routes"][0]["port"], 80);
    let (_, metrics) = admin_get(admin, "/metrics").expect("metrics");
    assert!(
        metrics.contains("wg_agent_gateway_up{gateway=\"gw1\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wg_agent_gateway_rx_bytes_total{gateway=\"gw1\"}"));
    assert!(
        metrics.contains("wg_agent_route_requests_total{port=\"80\",class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wg_agent_dropped_packets_total"));

    // `wg-agent status` prints the table from the admin endpoint.
    let out = Command::new(env!("CARGO_BIN_EXE_wg-agent"))
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("gw1") && table.contains("up"), "{table}");

    // SIGHUP with a second route (raw TCP) applies it; the gateway keeps its session.
    let handshakes = doc["gateways"][0]["last_handshake_unix"].clone();
    let routes = format!(
        "{route80}\n[[routes]]\nport = 81\nupstream = \"{}\"\nprotocol = \"tcp\"\n",
        fx.app
    );
    fx.write_config(&fx.config_text(&routes));
    signal(&child, "-HUP");
    let mut via_81 = None;
    for _ in 0..100 {
        if let Ok(resp) = get_via_tunnel(&gw, 81, "/raw").await {
            via_81 = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let via_81 = via_81.expect("route 81 after SIGHUP");
    assert!(via_81.ends_with("app:/raw"), "{via_81}");
    let (_, status) = admin_get(admin, "/status").expect("status");
    let doc: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(
        doc["gateways"][0]["last_handshake_unix"], handshakes,
        "no new handshake on reload"
    );

    // An invalid file is refused with one line; the agent keeps serving.
    fx.write_config("[agent]\nvirtual_ip = \"not an ip\"\n");
    signal(&child, "-HUP");
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        fx.log_text().contains("reload refused")
    });
    let resp = get_via_tunnel(&gw, 80, "/still")
        .await
        .expect("still serving");
    assert!(resp.ends_with("app:/still"), "{resp}");

    // SIGTERM during a slow request: it completes, then the process exits 0.
    let slow = tokio::spawn({
        let gw = gw.clone();
        async move { get_via_tunnel(&gw, 80, "/slow").await }
    });
    // SIGTERM once the request is in flight (the app has it).
    let start = Instant::now();
    while SLOW_STARTED.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the slow request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&child, "-TERM");
    let resp = slow
        .await
        .expect("join")
        .expect("slow request completes during drain");
    assert!(resp.ends_with("app:/slow"), "{resp}");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit code after drain");

    // The private key never reached the log, even at trace level.
    let log = fx.log_text();
    let secret = fx.agent_key.to_base64_secret();
    assert!(!log.contains(secret.as_str()), "private key in the log");
    assert!(
        log.contains("handshake completed"),
        "the log says the tunnel came up"
    );
    gw.close().await;
}
