//! The embedding example (`examples/embed.rs`), built and run as a process against an
//! in-process gateway on loopback: the gateway reaches its HTTP server on the virtual IP, the
//! example dials back through the tunnel, and SIGTERM closes it cleanly.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::manager::Manager;
use common::process::{signal, wait_exit};
use common::{GW_VIP, http_get, start_gateway, udp_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wg_core::PrivateKey;

/// The example's binary. `cargo test` and nextest build the examples of the packages they
/// test by default, next to the test binaries (`target/<profile>/examples/`): that is the one
/// run, as built by the same invocation. Only when it is missing (a run that selected single
/// test targets) is it built here, in this test binary's profile.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/embed-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let built = profile_dir.join("examples").join("embed");
    if built.exists() {
        return built;
    }
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile folder above {}", exe.display()),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "agent",
            "--example",
            "embed",
            "--profile",
            profile,
            "--message-format",
            "json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build --example embed");
    assert!(out.status.success(), "cargo build --example embed failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "embed")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the example's executable")
}

/// The gateway's app on `10.1.0.1:8080`: answers every request with `from the gateway`.
fn serve_gateway_app(gw: &Manager) {
    let listener = gw.listen(8080).expect("listen on the gateway's virtual IP");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "from the gateway";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_serves_and_dials_through_the_tunnel() {
    let binary = example_binary();
    let agent_key = PrivateKey::generate();
    let gw_key = PrivateKey::generate();
    let gw = start_gateway(&gw_key, GW_VIP, &agent_key).await;
    serve_gateway_app(&gw);

    let mut child = Command::new(&binary)
        .args([
            "--gateway-key",
            &gw_key.public_key().to_base64(),
            "--gateway-endpoint",
            &format!("127.0.0.1:{}", udp_port(&gw)),
        ])
        .env("WG_PRIVATE_KEY", agent_key.to_base64_secret().as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(2)
            .collect::<Result<Vec<_>, _>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("the example starts in time")
        .expect("reader")
        .expect("read stdout");
    assert_eq!(
        lines,
        vec![
            format!("public_key {}", agent_key.public_key()),
            "serving 10.1.0.100:80".to_owned(),
        ]
    );

    // The gateway reaches the example's hyper server on the virtual IP (the first request
    // waits for the handshake: retried until it answers).
    let mut hello = String::new();
    for _ in 0..20 {
        match http_get(&gw, 80, "/").await {
            Ok(response) if response.starts_with("HTTP/1.1 200") => {
                hello = response;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert!(
        hello.contains("hello from 10.1.0.100, 10.1.0.1:"),
        "the example answered: {hello:?}"
    );

    // The example dials out through the tunnel to the gateway's app.
    let relayed = http_get(&gw, 80, "/upstream").await.expect("GET /upstream");
    assert!(
        relayed.starts_with("HTTP/1.1 200") && relayed.contains("upstream said: from the gateway"),
        "the example relayed: {relayed:?}"
    );

    // SIGTERM: the example closes its Manager (drains) and exits 0.
    signal(&child, "-TERM");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(30)))
            .await
            .expect("waiter");
    assert!(status.success(), "the example exited with {status}");
    let target = SocketAddr::new(IpAddr::from([10, 1, 0, 100]), 80);
    let after = tokio::time::timeout(Duration::from_secs(3), gw.dial_tcp(target)).await;
    assert!(
        !matches!(after, Ok(Ok(_))),
        "nothing answers on the virtual IP once the example has exited"
    );
    gw.close_within(Duration::ZERO).await;
}
