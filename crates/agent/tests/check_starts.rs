//! `check` accepts only what `run` can start: generated configurations (sizes, timeouts and
//! MTUs across their whole range, valid or not); every one the validator accepts must start
//! against a local gateway and carry a request through the tunnel.

mod common;

use std::path::Path;
use std::time::Duration;

use agent::Agent;
use agent::config::Config;
use common::files::{agent_section, gateway_section};
use common::{GW_VIP, http_get, start_app, start_gateway, udp_port};
use proptest::prelude::*;
use wg_core::PrivateKey;

/// A duration as an operator might write it: mostly ordinary, sometimes absurd.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (1u64..600).prop_map(|n| format!("{n}s")),
        2 => (1u64..10_000).prop_map(|n| format!("{n}ms")),
        1 => (1u64..400).prop_map(|n| format!("{n}h")),
        1 => (1u64..u64::MAX).prop_map(|n| format!("{n}s")),
    ]
}

#[derive(Debug, Clone)]
struct Generated {
    mtu: u16,
    header_read_timeout: String,
    upstream_connect_timeout: String,
    upstream_response_timeout: String,
    idle_timeout: String,
    drain_timeout: String,
    max_header_bytes: u64,
    max_connections: u64,
    tcp_route: bool,
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        prop_oneof![1 => 500u16..1280, 6 => 1280u16..9000, 1 => 9000u16..=u16::MAX],
        (duration(), duration(), duration(), duration(), duration()),
        prop_oneof![4096u64..(64 << 10), (64u64 << 10)..(32u64 << 20)],
        prop_oneof![1u64..64, 64u64..1_100_000],
        any::<bool>(),
    )
        .prop_map(
            |(
                mtu,
                (header, connect, response, idle, drain),
                max_header_bytes,
                max_connections,
                tcp_route,
            )| {
                Generated {
                    mtu,
                    header_read_timeout: header,
                    upstream_connect_timeout: connect,
                    upstream_response_timeout: response,
                    idle_timeout: idle,
                    drain_timeout: drain,
                    max_header_bytes,
                    max_connections,
                    tcp_route,
                }
            },
        )
}

/// Checks `g` as `wg-agent check` would; when accepted, starts it against a fresh gateway and
/// sends one request through the tunnel.
async fn check_then_start(g: Generated) -> Result<bool, String> {
    let agent_key = PrivateKey::generate();
    let gateway_key = PrivateKey::generate();
    let gw = start_gateway(&gateway_key, GW_VIP, &agent_key).await;
    let app = start_app().await;
    let protocol = if g.tcp_route { "tcp" } else { "http" };
    let text = format!(
        "{}mtu = {}\n{}\n[[routes]]\nport = 80\nupstream = \"{app}\"\nprotocol = \"{protocol}\"\n\n\
         [proxy]\nheader_read_timeout = \"{}\"\nupstream_connect_timeout = \"{}\"\n\
         upstream_response_timeout = \"{}\"\nidle_timeout = \"{}\"\ndrain_timeout = \"{}\"\n\
         max_header_bytes = {}\nmax_connections = {}\n\n[admin]\nlisten = \"off\"\n",
        agent_section(&format!(
            "private_key = \"{}\"",
            agent_key.to_base64_secret().as_str()
        )),
        g.mtu,
        gateway_section(
            "gw1",
            &gateway_key.public_key().to_base64(),
            &format!("127.0.0.1:{}", udp_port(&gw)),
            "10.1.0.1",
        ),
        g.header_read_timeout,
        g.upstream_connect_timeout,
        g.upstream_response_timeout,
        g.idle_timeout,
        g.drain_timeout,
        g.max_header_bytes,
        g.max_connections,
    );
    let Ok(config) = Config::from_toml_with_env(&text, Path::new("agent.toml"), &|_| None) else {
        // Refused by `check`: nothing to start.
        gw.close().await;
        return Ok(false);
    };
    let result = async {
        let agent = tokio::time::timeout(Duration::from_secs(30), Agent::start(config))
            .await
            .map_err(|_| "start timed out".to_owned())?
            .map_err(|e| format!("accepted by check, refused by start: {e:#}"))?;
        let resp = http_get(&gw, 80, "/probe").await;
        let failed = tokio::time::timeout(Duration::ZERO, agent.manager().failed()).await;
        agent.stop().await;
        let resp = resp.map_err(|e| format!("no answer through the tunnel: {e}"))?;
        if let Ok(reason) = failed {
            return Err(format!("a packet task died: {reason}"));
        }
        if !resp.contains("app:/probe") {
            return Err(format!("unexpected answer: {resp}"));
        }
        Ok(true)
    }
    .await;
    gw.close().await;
    result
}

#[test]
fn every_config_check_accepts_starts_against_a_local_gateway() {
    use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Each accepted case starts a gateway and an agent: keep the count CI-sized.
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 32,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let started = std::cell::Cell::new(0u32);
    let outcome = runner.run(&generated(), |g| {
        match rt.block_on(check_then_start(g)) {
            Ok(true) => started.set(started.get() + 1),
            Ok(false) => {}
            Err(message) => return Err(TestCaseError::fail(message)),
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    eprintln!(
        "{} of 32 generated configs passed check and started",
        started.get()
    );
    // About 4 in 10 generated configs are valid: make sure the property was exercised.
    assert!(started.get() >= 3, "only {} configs started", started.get());
}
