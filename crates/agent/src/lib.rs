//! The agent: joins `wg-core` (WireGuard peers), `netstack` (the userspace TCP/IP stack on
//! the virtual IP) and `local-proxy` (the reverse proxy to the local app).
//!
//! Two layers:
//! - [`manager`]: the [`Manager`](manager::Manager), the entry point for a service that embeds
//!   the agent (as tsnet is for Go services): it takes plain specs
//!   ([`ManagerConfig`](manager::ManagerConfig), [`GatewaySpec`](manager::GatewaySpec)),
//!   keeps the tunnels to the gateways up, and opens listeners and connections on the virtual
//!   IP. Build with `default-features = false` to get only this layer: no clap, no toml, no
//!   tracing-subscriber.
//! - the application, behind the default feature `cli`: [`config`] (the TOML file, validated
//!   into [`config::Config`]), [`Agent`] and [`run`] (the Manager plus one proxy per route,
//!   reload and drain), [`admin`] (the loopback / unix-socket admin endpoint), [`snapshot`]
//!   (the status document), [`metrics`] (Prometheus text), [`status`] (the `wg-agent status`
//!   client), [`wg_quick`] (`wg-agent import`), [`uapi`] (WireGuard's userspace API socket,
//!   for `wg show NAME`), [`demo`], and the `wg-agent` binary.
//!
//! # Embedding the Manager
//!
//! `examples/embed.rs` is a whole service built this way: it joins a gateway, serves HTTP
//! with hyper on its virtual IP, and fetches from the gateway's side through the tunnel (its
//! header lists its options; `tests/embed.rs` runs it against a gateway built from the same
//! crates). In short:
//!
//! ```no_run
//! use agent::manager::{GatewaySpec, Manager, ManagerConfig};
//! use wg_core::{PrivateKey, PublicKey};
//!
//! # async fn embed(gateway_key: PublicKey) -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ManagerConfig::new(PrivateKey::generate(), [10, 1, 0, 100].into());
//! config.gateways = vec![GatewaySpec::new(
//!     "gw1",
//!     gateway_key,
//!     Some("gw1.example.net:51820".parse()?),
//!     [10, 1, 0, 1].into(),
//! )];
//! let manager = Manager::start(config).await?;
//! // Inbound: connections the gateway opens to 10.1.0.100:80.
//! let listener = manager.listen(80)?;
//! tokio::spawn(async move {
//!     while let Ok((stream, peer)) = listener.accept().await {
//!         // Serve `stream` (AsyncRead + AsyncWrite), e.g. with hyper over TokioIo.
//!         drop((stream, peer));
//!     }
//! });
//! // Outbound: a TCP connection from the virtual IP to the gateway's side.
//! let upstream = manager.dial_tcp("10.1.0.1:8080".parse()?).await?;
//! drop(upstream);
//! // Stop accepting, let open connections finish (bounded), stop the tunnel.
//! manager.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! What it does not do: it installs no `tracing` subscriber (the binary does), parses no
//! command line outside the binary, and its config validation never touches the network.

#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "cli")]
pub mod admin;
#[cfg(feature = "cli")]
pub mod config;
#[cfg(feature = "cli")]
mod demo;
#[cfg(feature = "test-hooks")]
mod hooks;
#[cfg(feature = "cli")]
pub mod logging;
pub mod manager;
#[cfg(feature = "cli")]
pub mod metrics;
#[cfg(feature = "cli")]
pub mod ping;
#[cfg(feature = "cli")]
mod runtime;
#[cfg(feature = "cli")]
pub mod snapshot;
#[cfg(feature = "cli")]
pub mod status;
#[cfg(feature = "cli")]
pub mod uapi;
#[cfg(feature = "cli")]
mod vip_stream;
#[cfg(feature = "cli")]
pub mod wg_quick;

#[cfg(feature = "cli")]
pub use demo::demo;
#[cfg(feature = "cli")]
pub use runtime::{
    Agent, ChangeOrigin, LogLevelControl, PreparedReload, RunOptions, disable_core_dumps,
    gateway_spec, manager_config, run, run_with,
};
