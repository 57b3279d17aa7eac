//! Support for the real-gateway suite (`tests/gateway_suite.rs`): the `wg-agent` binary run
//! in a namespace ([`AgentProcess`]), a local app on the agent's loopback ([`App`]), curl
//! clients in gateway namespaces ([`client`]), a tapping relay that learns live receiver
//! indices ([`tap::Tap`]), deterministic bodies ([`pattern`]) and the usual layout ([`Topology`]).

#![allow(dead_code)] // not every case uses every helper

pub(crate) mod agent;
pub(crate) mod app;
pub(crate) mod client;
pub(crate) mod dial;
pub(crate) mod pattern;
pub(crate) mod tap;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use testbed::{GatewayConfig, GatewayPeer, GatewaySite, KeyPair, Netns};

pub(crate) use agent::{AgentGateway, AgentOptions, AgentProcess};
pub(crate) use app::App;

/// The agent's virtual IP and subnet.
pub(crate) const AGENT_VIP: &str = "10.1.0.100";
/// The tunnel subnet.
pub(crate) const SUBNET: &str = "10.1.0.0/24";

/// The virtual IP of gateway `i` (0-based): 10.1.0.1, 10.1.0.2, ...
pub(crate) fn gateway_vip(i: usize) -> String {
    format!("10.1.0.{}", i + 1)
}

/// The agent's IPv6 virtual IP in a dual-stack [`Topology`].
pub(crate) const AGENT_VIP6: &str = "fd00::100";
/// The IPv6 tunnel subnet.
pub(crate) const SUBNET6: &str = "fd00::/64";

/// The IPv6 tunnel address of gateway `i` (0-based) in a dual-stack [`Topology`]: fd00::1, ...
pub(crate) fn gateway_vip6(i: usize) -> String {
    format!("fd00::{}", i + 1)
}

/// The agent namespace with the app on its loopback, and `n` gateway namespaces linked to it,
/// each running wireguard-go that knows the agent's key but not its endpoint. Dropped in
/// order: app, gateways, agent namespace (an [`AgentProcess`] borrows the namespace, so it is
/// gone before).
pub(crate) struct Topology {
    pub(crate) app: App,
    pub(crate) sites: Vec<GatewaySite>,
    pub(crate) agent_key: KeyPair,
    pub(crate) agent_ns: Netns,
    /// Gateways and agent have an IPv6 tunnel address too.
    pub(crate) dual_stack: bool,
}

impl Topology {
    pub(crate) fn new(label: &str, gateways: usize) -> Result<Self> {
        Self::build(label, gateways, false)
    }

    /// As [`new`](Self::new), with IPv6 inside the tunnel too: each gateway's interface also
    /// has [`gateway_vip6`]`/64` and routes [`AGENT_VIP6`] to the agent; start the agent with
    /// [`AgentOptions::dual_stack`].
    pub(crate) fn new_dual_stack(label: &str, gateways: usize) -> Result<Self> {
        Self::build(label, gateways, true)
    }

    fn build(label: &str, gateways: usize, dual_stack: bool) -> Result<Self> {
        let agent_ns = Netns::new(label)?;
        let agent_key = KeyPair::generate()?;
        let app = App::start(&agent_ns)?;
        let mut sites = Vec::new();
        let agent_host4 = format!("{AGENT_VIP}/32");
        let agent_host6 = format!("{AGENT_VIP6}/128");
        let agent_allowed: Vec<&str> = if dual_stack {
            vec![&agent_host4, &agent_host6]
        } else {
            vec![&agent_host4]
        };
        for i in 0..gateways {
            let config = GatewayConfig::new(&format!("{}/24", gateway_vip(i)))?
                .with_peer(GatewayPeer::new(&agent_key.public, &agent_allowed));
            let site = GatewaySite::start(&format!("{label}g{i}"), config, Some(&agent_ns))?;
            if dual_stack {
                // `nodad`: the address is usable at once (no duplicate detection on a tunnel).
                let address = format!("{}/64", gateway_vip6(i));
                site.ns.ip([
                    "-6",
                    "addr",
                    "add",
                    &address,
                    "dev",
                    site.wg.ifname(),
                    "nodad",
                ])?;
            }
            sites.push(site);
        }
        Ok(Self {
            app,
            sites,
            agent_key,
            agent_ns,
            dual_stack,
        })
    }

    /// Gateway `i` as the agent's config names it (`gw1`, `gw2`, ...), at its real endpoint.
    pub(crate) fn gateway(&self, i: usize) -> AgentGateway {
        self.gateway_via(i, self.sites[i].endpoint())
    }

    /// Gateway `i` reached through `endpoint` (a relay).
    pub(crate) fn gateway_via(&self, i: usize, endpoint: SocketAddr) -> AgentGateway {
        let allowed_ips = if self.dual_stack {
            vec![
                format!("{}/32", gateway_vip(i)),
                format!("{}/128", gateway_vip6(i)),
            ]
        } else {
            Vec::new()
        };
        AgentGateway {
            id: format!("gw{}", i + 1),
            public_key: self.sites[i].wg.public_key().to_owned(),
            endpoint,
            virtual_ip: gateway_vip(i),
            allowed_ips,
        }
    }

    /// Starts the agent with these gateways and waits until it is ready.
    pub(crate) fn start_agent(
        &self,
        gateways: &[AgentGateway],
        options: AgentOptions,
    ) -> Result<AgentProcess<'_>> {
        let agent = AgentProcess::start(&self.agent_ns, &self.agent_key, gateways, options)?;
        agent.wait_ready(Duration::from_secs(20))?;
        Ok(agent)
    }
}

/// Polls `ok` every `every` until it returns `Some`, for at most `timeout`; the elapsed time
/// with the value.
pub(crate) fn poll_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ok: impl FnMut() -> Option<T>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(value) = ok() {
            return Ok((value, start.elapsed()));
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Megabits per second for `bytes` in `elapsed`.
pub(crate) fn mbit_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// A Prometheus sample: the value of the line `name{labels} value` whose labels contain
/// `label` (or of `name value` when `label` is empty).
pub(crate) fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let (metric_name, labels) = key.split_once('{').unwrap_or((key, ""));
        (metric_name == name && labels.contains(label))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// The sum of every sample of `name` (all label sets).
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let metric_name = key.split_once('{').map_or(key, |(n, _)| n);
            (metric_name == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Whether `a` and `b` are within `fraction` of the larger one.
pub(crate) fn within(a: u64, b: u64, fraction: f64) -> bool {
    let max = a.max(b) as f64;
    (a as f64 - b as f64).abs() <= max * fraction
}

/// The largest datagram the agent sends at MTU 1420: the packet plus 32 bytes of WireGuard.
pub(crate) const MAX_DATAGRAM: u64 = 1420 + 32;

/// `RcvbufErrors` of a namespace's UDP sockets: datagrams its kernel dropped on arrival.
pub(crate) fn rcvbuf_errors(ns: &testbed::Netns) -> u64 {
    udp_errors(ns)
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("RcvbufErrors="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The UDP error counters of a namespace (`/proc/net/snmp`), e.g. `RcvbufErrors=12`.
pub(crate) fn udp_errors(ns: &testbed::Netns) -> String {
    let snmp = ns.run("cat", ["/proc/net/snmp"]).unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return String::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(n, _)| n.contains("Errors"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
