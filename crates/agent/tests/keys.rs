//! Key hygiene of the real `wg-agent run` process: at `--log-level trace`, through a
//! handshake, HTTP through the tunnel, a reload, a refused reload of a broken file and a
//! drain, neither the private key nor the preshared key appears in its output (base64, base64
//! without padding, hex in either case), in `/status` or in `/metrics`. And the key types
//! zeroize their bytes on drop.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::config::LivenessProbe;
use agent::manager::{GatewaySpec, Manager, ManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_core::{PresharedKey, PrivateKey};

const AGENT_VIP: [u8; 4] = [10, 1, 0, 100];

/// Every spelling of a secret that could leak.
fn spellings(bytes: &[u8; 32], base64: &str) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        base64.to_owned(),
        base64.trim_end_matches('=').to_owned(),
        // A long prefix catches a key cut or wrapped in a message.
        base64[..24].to_owned(),
        hex.clone(),
        hex.to_uppercase(),
        hex[..32].to_owned(),
    ]
}

fn assert_no_secret(what: &str, text: &str, secrets: &[(&str, Vec<String>)]) {
    for (name, forms) in secrets {
        for form in forms {
            assert!(
                !text.contains(form.as_str()),
                "the {name} appears in {what} (as `{}…`)",
                &form[..8]
            );
        }
    }
}

fn random_bytes(seed: u64) -> [u8; 32] {
    let mut x = seed | 1;
    let mut out = [0u8; 32];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    x ^= u64::from(nanos) << 17;
    for b in &mut out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

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
    Some((status, text))
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

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
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

async fn get_via_tunnel(gw: &Manager) -> std::io::Result<String> {
    let target = SocketAddr::new(IpAddr::from(AGENT_VIP), 80);
    let mut s = tokio::time::timeout(Duration::from_secs(5), gw.dial_tcp(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.write_all(b"GET /k HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn set_mode_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_trace_logs_status_or_metrics() {
    let private_bytes = random_bytes(0x9e37_79b9_7f4a_7c15);
    let psk_bytes = random_bytes(0xc2b2_ae3d_27d4_eb4f);
    let agent_key = PrivateKey::from_bytes(private_bytes);
    let psk = PresharedKey::from_bytes(psk_bytes);
    let private_b64 = agent_key.to_base64_secret();
    let psk_b64 = psk.to_base64_secret();
    let secrets = [
        (
            "private key",
            spellings(&private_bytes, private_b64.as_str()),
        ),
        ("preshared key", spellings(&psk_bytes, psk_b64.as_str())),
    ];

    // The gateway knows the agent's public key and the preshared key.
    let gw_key = PrivateKey::generate();
    let mut config = ManagerConfig::new(gw_key.clone(), IpAddr::from([10, 1, 0, 1]));
    let mut peer = GatewaySpec::new(
        "agent",
        agent_key.public_key(),
        None,
        IpAddr::from(AGENT_VIP),
    );
    peer.persistent_keepalive = None;
    peer.liveness_probe = LivenessProbe::Off;
    peer.preshared_key = Some(psk.clone());
    config.gateways = vec![peer];
    let gw = Manager::start(config).await.expect("gateway starts");
    let app = start_app().await;

    let dir = std::env::temp_dir().join(format!(
        "wg-agent-keys-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key_path = dir.join("agent.key");
    std::fs::write(&key_path, format!("{}\n", private_b64.as_str())).expect("key file");
    set_mode_600(&key_path);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config_text = format!(
        "[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\n\
         [[gateways]]\nid = \"gw1\"\npublic_key = \"{}\"\nendpoint = \"127.0.0.1:{}\"\n\
         virtual_ip = \"10.1.0.1\"\npreshared_key = \"{}\"\n\n\
         [[routes]]\nport = 80\nupstream = \"{app}\"\n\n[proxy]\ndrain_timeout = \"2s\"\n\n\
         [admin]\nlisten = \"{admin}\"\n",
        gw_key.public_key(),
        gw.local_addrs()[0].port(),
        psk_b64.as_str(),
    );
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, &config_text).expect("config");
    set_mode_600(&config_path);
    let log_path = dir.join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wg-agent"))
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--log-level", "trace"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("agent.out")).expect("stdout file"))
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("start wg-agent");
    let pid = child.id();

    let start = Instant::now();
    while admin_get(admin, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(start.elapsed() < Duration::from_secs(20), "agent not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let resp = get_via_tunnel(&gw).await.expect("HTTP through the tunnel");
    assert!(resp.ends_with("ok"), "{resp}");
    let (_, status) = admin_get(admin, "/status").expect("/status");
    let (_, metrics) = admin_get(admin, "/metrics").expect("/metrics");
    assert!(status.contains("gw1"), "{status}");
    assert!(metrics.contains("wg_agent_gateway_up"), "{metrics}");
    assert_no_secret("/status", &status, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);

    // A reload of the same file, then of a broken file whose bad line holds a secret.
    signal(pid, "-HUP");
    std::thread::sleep(Duration::from_millis(300));
    let broken = config_text.replace(
        &format!("preshared_key = \"{}\"", psk_b64.as_str()),
        &format!("preshared_key = {}", psk_b64.as_str()),
    );
    assert_ne!(broken, config_text);
    std::fs::write(&config_path, format!("{broken}[{}\n", private_b64.as_str()))
        .expect("broken config");
    signal(pid, "-HUP");
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let start = Instant::now();
    while !log_text().contains("reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refusal logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resp = get_via_tunnel(&gw).await.expect("still serving");
    assert!(resp.ends_with("ok"), "{resp}");

    signal(pid, "-TERM");
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0));

    let log = log_text();
    let out = std::fs::read_to_string(dir.join("agent.out")).unwrap_or_default();
    // The run was really logged at trace level, packets included.
    assert!(log.contains("TRACE"), "trace lines in the log");
    assert!(
        log.contains("handshake completed"),
        "the handshake was logged"
    );
    assert!(
        log.lines().count() > 20,
        "a busy trace log: {} lines",
        log.lines().count()
    );
    assert_no_secret("the log (stderr)", &log, &secrets);
    assert_no_secret("stdout", &out, &secrets);
    if std::env::var_os("KEYS_TEST_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    eprintln!(
        "keys: {} log lines ({} KiB) searched, no secret in any spelling",
        log.lines().count(),
        log.len() >> 10
    );
    gw.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The secret key types wipe their bytes when dropped (and so can never be printed: `Debug`
/// is redacted, there is no `Display`).
#[test]
fn secret_key_types_zeroize_on_drop_and_redact_debug() {
    fn zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroize_on_drop::<PrivateKey>();
    zeroize_on_drop::<PresharedKey>();
    let key = PrivateKey::from_bytes([7; 32]);
    assert_eq!(format!("{key:?}"), "PrivateKey(..)");
    let psk = PresharedKey::from_bytes([7; 32]);
    assert_eq!(format!("{psk:?}"), "PresharedKey(..)");
}
