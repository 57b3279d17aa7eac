//! A dead packet task must not look healthy: when one panics (the `test-hooks` feature's
//! `panic-on-receive` hook), the process exits 1 so the service manager restarts it.

mod common;

use std::time::Duration;

use common::process::{AgentFixture, wait_exit};
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
