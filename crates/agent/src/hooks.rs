//! Test-only fault injection, compiled only with the `test-hooks` feature (on in test builds
//! through the crate's dev-dependency on itself, never in a release build). A hook fires only
//! when the process's `WG_AGENT_TEST_HOOK` environment variable names it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable naming the active hook.
const VAR: &str = "WG_AGENT_TEST_HOOK";

fn active() -> &'static str {
    static HOOK: OnceLock<String> = OnceLock::new();
    HOOK.get_or_init(|| std::env::var(VAR).unwrap_or_default())
}

/// `panic-on-receive`: the packet receive task panics on its first datagram.
pub(crate) fn panic_on_receive() {
    if active() == "panic-on-receive" {
        panic!("test hook {VAR}=panic-on-receive: panicking in the receive path");
    }
}

/// `slow-after-ready`: the runtime pauses 1 s right after it sends `READY=1`.
pub(crate) async fn slow_after_ready() {
    if active() == "slow-after-ready" {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `panic-on-first-connection`: reading the first connection accepted on the virtual IP
/// panics, inside that connection's own task; later connections are served.
pub(crate) fn panic_on_first_connection() {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if active() == "panic-on-first-connection" && !FIRED.swap(true, Ordering::Relaxed) {
        panic!("test hook {VAR}=panic-on-first-connection: panicking in a connection's task");
    }
}
