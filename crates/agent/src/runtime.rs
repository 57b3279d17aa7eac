//! The runtime entry points the binary calls: `run` (the agent) and `demo`.
//!
//! Placeholder until the event loop, tunnel upkeep and Manager are wired in: both return an
//! error saying so, which the binary reports with exit code 1.

use std::future::Future;

use crate::config::Config;

/// Runs the agent described by `config` until `shutdown` completes (SIGTERM/SIGINT in the
/// binary), then drains and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("runtime not wired yet")
}

/// Runs the self-contained loopback demo (gateway peer, sample app, agent) and prints its
/// report to stdout.
pub async fn demo() -> anyhow::Result<()> {
    anyhow::bail!("runtime not wired yet: the demo needs the agent runtime")
}
