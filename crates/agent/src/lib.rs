//! The agent: joins `wg-core` (WireGuard peers), `netstack` (the userspace TCP/IP stack on
//! the virtual IP) and `local-proxy` (the reverse proxy to the local app), and holds what the
//! `wg-agent` binary needs around them.
//!
//! What it does:
//! - [`config`]: the TOML configuration, parsed and validated into [`config::Config`], with
//!   secrets resolved (zeroized on drop) and DNS endpoints left for the runtime to resolve.
//! - [`admin`]: the loopback / unix-socket admin endpoint (`/healthz`, `/readyz`, `/status`,
//!   `/metrics`), fed by a [`admin::StatusSource`].
//! - [`snapshot`]: the status document and the gateway liveness rule (`up`, `connecting`,
//!   `stale`); [`metrics`]: Prometheus text; [`status`]: the `wg-agent status` client.
//! - [`run`] and [`demo`]: the runtime entry points the binary calls.
//! - [`uapi`]: WireGuard's userspace API socket, for `wg show NAME`.
//! - [`wg_quick`]: `wg-agent import`, a wg-quick file to an agent config.
//!
//! What it does not do: it installs no `tracing` subscriber (the binary does), parses no
//! command line, and its config validation never touches the network.
//!
//! ```
//! use agent::config::{Config, RouteProtocol};
//! use wg_core::PrivateKey;
//!
//! let toml = format!(
//!     "[agent]\nprivate_key = \"{}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\n\
//!      [[gateways]]\nid = \"gw1\"\npublic_key = \"{}\"\nendpoint = \"gw1.example.net:51820\"\n\
//!      virtual_ip = \"10.1.0.1\"\n",
//!     PrivateKey::generate().to_base64_secret().as_str(),
//!     PrivateKey::generate().public_key(),
//! );
//! let config = Config::from_toml(&toml, "agent.toml".as_ref())?;
//! assert_eq!(config.gateways[0].persistent_keepalive, 25);
//! assert_eq!(config.gateways[0].endpoint.to_string(), "gw1.example.net:51820");
//! // No [[routes]]: one HTTP route, port 80 to 127.0.0.1:8080.
//! assert_eq!(config.routes[0].protocol, RouteProtocol::Http);
//! # Ok::<(), agent::config::ConfigError>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod config;
mod demo;
#[cfg(feature = "test-hooks")]
mod hooks;
pub mod manager;
pub mod metrics;
mod runtime;
pub mod snapshot;
pub mod status;
pub mod uapi;
mod vip_stream;
pub mod wg_quick;

pub use demo::demo;
pub use runtime::{
    Agent, LogLevelControl, PreparedReload, RunOptions, disable_core_dumps, gateway_spec,
    manager_config, run, run_with,
};
