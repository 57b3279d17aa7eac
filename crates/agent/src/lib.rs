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
//!   client), [`demo`], and the `wg-agent` binary.
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
pub mod manager;
#[cfg(feature = "cli")]
pub mod metrics;
#[cfg(feature = "cli")]
mod runtime;
#[cfg(feature = "cli")]
pub mod snapshot;
#[cfg(feature = "cli")]
pub mod status;

#[cfg(feature = "cli")]
pub use demo::demo;
#[cfg(feature = "cli")]
pub use runtime::{Agent, gateway_spec, manager_config, run};
