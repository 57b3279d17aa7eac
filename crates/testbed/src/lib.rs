//! Test support for wg-agent's interop and fault suites: real WireGuard gateways in network
//! namespaces, and an impaired UDP path between agent and gateway.
//!
//! What it does:
//! - [`check_gateway_prereqs`] / [`require_gateway_prereqs!`]: can the real-gateway tests run
//!   (root, `/dev/net/tun`, `ip`, `wireguard-go`, `wg`, a namespace can be created)? If not, a
//!   test prints one `skipping ...` line and returns — or fails when `CI=true`.
//! - [`Netns`]: uniquely named network namespaces (`wgtb-<label>-<pid>-<n>`) with `lo` up, veth
//!   pairs ([`VethPair`], /30s from 198.18.0.0/15, optional /64s from 2001:2::/48) to another
//!   namespace or to the host, commands inside, detached processes ([`Daemon`], stopped with
//!   their process group on drop), sockets created inside ([`Netns::bind_udp`],
//!   [`Netns::run_inside`], via `setns(2)`); everything killed and deleted on drop, also on
//!   panic. [`cleanup_stale`] removes what killed test processes left behind.
//! - [`WireguardGoVersion`]: the two Debian builds of `wireguard-go` (bookworm's 0.0.20220316,
//!   bookworm-backports' 0.0.20231211), fetched with `apt-get download` and unpacked under
//!   `target/wireguard-go/`; `TESTBED_WIREGUARD_GO` picks the one gateways run (current by
//!   default; `2022`, or a path).
//! - [`WireguardGo`]: a `wireguard-go` gateway in a namespace, configured with `wg set` and `ip`,
//!   with a unique interface name (the control socket path is shared by namespaces); parsed
//!   `wg show IF dump` ([`WgDump`]), restart with the same key, killed on drop. [`KeyPair`]s come
//!   from `wg genkey` / `wg pubkey`.
//! - [`GatewaySite`]: one gateway as the suites lay it out: namespace, veth link toward the
//!   agent's side (host or agent namespace), wireguard-go on it.
//! - [`ImpairedRelay`]: a UDP relay that drops, delays, reorders and duplicates datagrams with a
//!   seeded generator, counting what it did (the kernel here has no `netem`).
//! - [`packet`]: hand-built ICMP echo packets with checksums, to test a tunnel end to end;
//!   [`garbage`]: hostile datagrams (random, fake handshakes, data aimed at a live receiver
//!   index, oversized) from a seeded generator.
//! - [`netns_exists`] and [`pid_alive`], for tests that check what cleanup left behind, and
//!   [`child_test_command`], for a test that runs a part of itself in a process it can kill.
//!
//! What it does not do: it never touches addresses outside the namespaces and the veth range it
//! creates, and it does not depend on the crates under test (keys come from `wg`).
//!
//! Layouts that work (no IP forwarding, no default routes needed — every hop is a connected /30):
//! - test process in the host ↔ gateway namespace: [`GatewaySite::start`] with `None`; bind the
//!   agent's socket to [`GatewaySite::agent_side_ip`], send to [`GatewaySite::endpoint`].
//! - agent namespace ↔ one namespace per gateway: [`GatewaySite::start`] with `Some(&agent_ns)`
//!   for each; run the agent binary with [`Netns::spawn`].
//! - impaired path: the relay's threads run in the test process; its sockets live in the host
//!   ([`ImpairedRelay::start`]: listening on the host end of the agent's link, sending over the
//!   gateway's link to the host — the upstream socket is bound to the unspecified address, so
//!   the kernel picks the right source) or inside the agent's namespace
//!   ([`ImpairedRelay::start_in`], e.g. on its loopback). The gateway sees the agent at the
//!   relay's upstream address.
//!
//! Names: namespaces `wgtb-<label>-<pid>-<n>`, veths `vt<pid36><n36>{a,b}`, wireguard-go
//! interfaces `wg<pid>x<n>` (its control socket `/run/wireguard/<ifname>.sock` is shared by all
//! namespaces, so names are unique per machine), /30 leases in `/run/wg-testbed/nets`.
//!
//! ```
//! use std::time::Duration;
//! use testbed::{ImpairedRelay, Impairment};
//!
//! // An impaired path on loopback: 10% loss, 5 ms ± 2 ms, fixed seed.
//! let gateway = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! let relay = ImpairedRelay::start(
//!     "127.0.0.1:0".parse()?,
//!     gateway.local_addr()?,
//!     Impairment {
//!         loss: 0.1,
//!         delay: Duration::from_millis(5),
//!         jitter: Duration::from_millis(2),
//!         seed: 7,
//!         ..Impairment::default()
//!     },
//! )?;
//! let agent = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! agent.send_to(b"ping", relay.local_addr())?;
//!
//! // Real gateways need root and wireguard-go: skip (or fail under CI=true) otherwise.
//! fn interop_example() -> anyhow::Result<()> {
//!     testbed::require_gateway_prereqs!(Ok(()));
//!     let ns = testbed::Netns::new("gw")?;
//!     let link = ns.veth_to_host()?;
//!     let gateway = testbed::WireguardGo::start(&ns, testbed::GatewayConfig::new("10.1.0.1/24")?)?;
//!     println!("gateway {} at {}:51820", gateway.public_key(), link.a.ip);
//!     Ok(())
//! }
//! # let _ = interop_example;
//! # Ok::<(), anyhow::Error>(())
//! ```

mod cmd;
mod daemon;
pub mod garbage;
mod netns;
pub mod packet;
mod prereq;
mod relay;
mod site;
mod stale;
mod wgbin;
mod wggo;

pub use cmd::{
    TempDir, child_test_command, on_path, pid_alive, run, run_command, run_with_input,
    write_private_file,
};
pub use daemon::Daemon;
pub use netns::{NETNS_PREFIX, Netns, VETH_RANGE, VETH_RANGE6, VethEnd, VethPair, netns_exists};
pub use prereq::{REQUIRED_PROGRAMS, check_gateway_prereqs, gateway_tests_can_run, in_ci, is_root};
pub use relay::{DirectionStats, ImpairedRelay, Impairment, RelayStats};
pub use site::GatewaySite;
pub use stale::cleanup_stale;
pub use wgbin::{
    BACKPORTS_SOURCES, WIREGUARD_GO_ENV, WireguardGoSelection, WireguardGoVersion, binary_version,
    fetch_wireguard_go, wireguard_go_binary,
};
pub use wggo::{
    CONTROL_DIR, GatewayConfig, GatewayPeer, KeyPair, WgDump, WgPeerDump, WireguardGo,
    generate_preshared_key, public_key_of,
};
