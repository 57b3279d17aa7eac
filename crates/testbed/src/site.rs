//! `GatewaySite`: one gateway as the interop suites lay it out — its own namespace, a veth link
//! to the agent's side (the host or an agent namespace), wireguard-go listening on the link.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;

use crate::netns::{Netns, VethPair};
use crate::wggo::{GatewayConfig, WireguardGo};

/// A gateway namespace with wireguard-go and a veth link toward the agent. Dropped in order:
/// wireguard-go, the link, the namespace.
#[derive(Debug)]
pub struct GatewaySite {
    /// The gateway process.
    pub wg: WireguardGo,
    /// The link: end `a` in the gateway namespace, end `b` on the agent's side.
    pub link: VethPair,
    /// The gateway's namespace.
    pub ns: Netns,
}

impl GatewaySite {
    /// Creates namespace `wgtb-<label>-...`, links it to `agent_side` (a namespace, or the host
    /// with `None`), and starts wireguard-go with `config` in it.
    pub fn start(label: &str, config: GatewayConfig, agent_side: Option<&Netns>) -> Result<Self> {
        let ns = Netns::new(label)?;
        let link = match agent_side {
            Some(agent) => ns.veth_to(agent)?,
            None => ns.veth_to_host()?,
        };
        let wg = WireguardGo::start(&ns, config)?;
        Ok(Self { wg, link, ns })
    }

    /// The gateway's UDP endpoint as the agent side reaches it.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.link.a.ip.into(), self.wg.listen_port())
    }

    /// The agent side's address on the link (bind the agent's socket, or a relay, here).
    pub fn agent_side_ip(&self) -> Ipv4Addr {
        self.link.b.ip
    }

    /// Kills wireguard-go and starts it again with the same key, port, address and peers.
    pub fn restart(&mut self) -> Result<()> {
        self.wg.restart(&self.ns)
    }
}
