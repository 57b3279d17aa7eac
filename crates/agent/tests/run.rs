//! The real `wg-agent run` process against an in-process gateway (wg-core + netstack through
//! the agent library's Manager) on loopback: HTTP through the tunnel, the admin endpoint,
//! `status`, SIGHUP reload (good and bad files), SIGTERM drain, and no key in the logs.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::process::{AgentFixture, admin_get, signal, wait_exit, wait_for};
use common::{SLOW_STARTED, http_get};
use wg_core::PrivateKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_and_drains() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let gateway_name = "name = \"loopback\"\n";
    let route80 = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    fx.write_config(&fx.config_text(gateway_name, &route80, "5s"));
    let mut child = fx.spawn();
    let admin = fx.admin;

    // Ready once the gateway is up.
    wait_for("/readyz 200", Duration::from_secs(15), || {
        admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(admin_get(admin, "/healthz").map(|(s, _)| s), Some(200));

    // HTTP through the tunnel, from the gateway side, with the forwarded chain.
    let resp = http_get(&gw, 80, "/hello")
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
    fx.write_config(&fx.config_text(gateway_name, &routes, "5s"));
    signal(&child, "-HUP");
    let mut via_81 = None;
    for _ in 0..100 {
        if let Ok(resp) = http_get(&gw, 81, "/raw").await {
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
    let resp = http_get(&gw, 80, "/still").await.expect("still serving");
    assert!(resp.ends_with("app:/still"), "{resp}");

    // SIGTERM during a slow request: it completes, then the process exits 0.
    let slow = tokio::spawn({
        let gw = gw.clone();
        async move { http_get(&gw, 80, "/slow").await }
    });
    // SIGTERM once the request is in flight (the app has it).
    let start = Instant::now();
    while SLOW_STARTED.load(Ordering::SeqCst) == 0 {
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
    let status = wait_exit(&mut child, Duration::from_secs(15));
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
