//! A dead packet task must not look healthy: when one panics (the `test-hooks` feature's
//! `panic-on-receive` hook), the process exits 1 so the service manager restarts it; a panic
//! in one proxied connection's task (`panic-on-first-connection`) ends only that connection.

mod common;

use std::time::Duration;

use common::http_get;
use common::process::{AgentFixture, admin_get, signal, wait_exit, wait_for};
use wg_core::PrivateKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_receive_task_ends_the_process_with_exit_code_1() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let route = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    fx.write_config(&fx.config_text("", &route, "1s"));
    // The gateway's handshake response is the first datagram the agent receives.
    let mut child = fx.spawn_with_env(&[("WG_AGENT_TEST_HOOK", "panic-on-receive")]);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let log = fx.log_text();
    assert_eq!(
        status.code(),
        Some(1),
        "exit status {status:?}; log:\n{log}"
    );
    assert!(
        log.contains("packet task"),
        "the log names the dead task:\n{log}"
    );
    gw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_connection_leaves_the_process_serving() {
    let (fx, gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let route = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    fx.write_config(&fx.config_text("", &route, "1s"));
    let mut child = fx.spawn_with_env(&[("WG_AGENT_TEST_HOOK", "panic-on-first-connection")]);
    let admin = fx.admin;
    wait_for("/readyz 200", Duration::from_secs(30), || {
        admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    // The first connection's task panics: that request gets no answer.
    let first = http_get(&gw, 80, "/first").await;
    assert!(
        !first
            .as_deref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "the first connection was served: {first:?}"
    );
    // The process lives on and serves the next connection.
    let second = http_get(&gw, 80, "/second").await.expect("second request");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the process exited; log:\n{}",
        fx.log_text()
    );
    assert_eq!(admin_get(admin, "/healthz").map(|(s, _)| s), Some(200));
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", fx.log_text());
    gw.close().await;
}
