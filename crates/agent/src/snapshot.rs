//! The status document (`GET /status`, `wg-agent status --json`). The rule that turns a
//! gateway's timestamps into `up`, `connecting` or `stale` lives with the manager
//! (`manager/liveness.rs`) and is re-exported here.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::RouteProtocol;
pub use crate::manager::{
    GatewayState, HANDSHAKE_LIFETIME, Liveness, RECEIVE_WINDOW, gateway_state,
};

/// The whole status document. Extra fields may be added later; existing ones keep their
/// names and meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusSnapshot {
    /// The agent's own interface (public key, listening port), like the `interface:` section
    /// of `wg show`. `None` in documents from agents older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    /// The agent's virtual IP (the first of `virtual_ips`).
    pub virtual_ip: IpAddr,
    /// Every virtual IP of the agent: one, or one IPv4 and one IPv6 address (dual stack).
    /// Empty in documents from agents older than this field: `virtual_ip` is then the only
    /// one (see [`StatusSnapshot::addresses`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<IpAddr>,
    /// One entry per configured gateway, in config order.
    pub gateways: Vec<GatewayStatus>,
    /// One entry per route.
    pub routes: Vec<RouteStatus>,
}

impl StatusSnapshot {
    /// A snapshot from its parts.
    pub fn new(virtual_ip: IpAddr, gateways: Vec<GatewayStatus>, routes: Vec<RouteStatus>) -> Self {
        Self {
            agent: None,
            virtual_ip,
            virtual_ips: vec![virtual_ip],
            gateways,
            routes,
        }
    }

    /// The same document with every virtual IP of the agent (the first one stays
    /// `virtual_ip`). An empty list is ignored.
    pub fn with_virtual_ips(mut self, virtual_ips: Vec<IpAddr>) -> Self {
        if let Some(first) = virtual_ips.first() {
            self.virtual_ip = *first;
            self.virtual_ips = virtual_ips;
        }
        self
    }

    /// Every virtual IP of the agent, also from a document that predates `virtual_ips`.
    pub fn addresses(&self) -> Vec<IpAddr> {
        if self.virtual_ips.is_empty() {
            vec![self.virtual_ip]
        } else {
            self.virtual_ips.clone()
        }
    }

    /// The same document with the agent's interface section.
    pub fn with_agent(mut self, agent: AgentStatus) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Whether at least one gateway is up (what `/readyz` reports, draining aside).
    pub fn any_gateway_up(&self) -> bool {
        self.gateways.iter().any(|g| g.state == GatewayState::Up)
    }
}

/// The agent's own interface in the status document: what a gateway operator needs to add
/// the agent as a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentStatus {
    /// The agent's base64 public key (the gateway's `[Peer] PublicKey`).
    pub public_key: String,
    /// The local UDP port the agent sends from and listens on.
    pub listen_port: u16,
}

impl AgentStatus {
    /// An interface section from its parts.
    pub fn new(public_key: String, listen_port: u16) -> Self {
        Self {
            public_key,
            listen_port,
        }
    }
}

/// One gateway in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GatewayStatus {
    /// Config `id`.
    pub id: String,
    /// Config `name` (`null` when unset).
    pub name: Option<String>,
    /// Base64 public key.
    pub public_key: String,
    /// The endpoint in use: the resolved address, or the configured `host:port` before
    /// resolution.
    pub endpoint: String,
    /// Liveness.
    pub state: GatewayState,
    /// Unix time of the last completed handshake, `null` if none yet.
    pub last_handshake_unix: Option<u64>,
    /// Bytes received from this gateway on the wire (UDP payload, handshakes included).
    pub rx_bytes: u64,
    /// Bytes sent to this gateway on the wire.
    pub tx_bytes: u64,
    /// The liveness probe (ICMP echo to the gateway's virtual IP) goes unanswered though the
    /// handshakes it forces succeed: ICMP is filtered on the gateway (see docs/operations.md).
    #[serde(default)]
    pub icmp_filtered: bool,
}

impl GatewayStatus {
    /// A gateway entry from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        name: Option<String>,
        public_key: String,
        endpoint: String,
        state: GatewayState,
        last_handshake_unix: Option<u64>,
        rx_bytes: u64,
        tx_bytes: u64,
    ) -> Self {
        Self {
            id,
            name,
            public_key,
            endpoint,
            state,
            last_handshake_unix,
            rx_bytes,
            tx_bytes,
            icmp_filtered: false,
        }
    }

    /// The same entry with [`icmp_filtered`](Self::icmp_filtered) set as given.
    pub fn with_icmp_filtered(mut self, filtered: bool) -> Self {
        self.icmp_filtered = filtered;
        self
    }
}

impl GatewayStatus {
    /// The entry for a configured gateway before anything happened: `connecting`, no
    /// handshake, no traffic, the configured endpoint. The runtime fills in the rest.
    pub fn from_config(gateway: &crate::config::GatewayConfig) -> Self {
        Self::new(
            gateway.id.clone(),
            gateway.name.clone(),
            gateway.public_key.to_base64(),
            gateway.endpoint.to_string(),
            GatewayState::Connecting,
            None,
            0,
            0,
        )
    }
}

impl StatusSnapshot {
    /// The document for a configuration before anything happened (see
    /// [`GatewayStatus::from_config`]).
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(
            config.agent.virtual_ip,
            config
                .gateways
                .iter()
                .map(GatewayStatus::from_config)
                .collect(),
            config
                .routes
                .iter()
                .map(|r| RouteStatus::from_config(r, &config.proxy))
                .collect(),
        )
        .with_virtual_ips(config.agent.virtual_ips.clone())
    }
}

/// One route in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteStatus {
    /// Port on the virtual IP.
    pub port: u16,
    /// `http`, `tcp` or `udp`.
    pub protocol: RouteProtocol,
    /// The local upstream, `host:port` or `unix:/path`.
    pub upstream: String,
    /// The idle timeout the route runs with (its own, else `[proxy]`'s; a UDP route's
    /// flows default to 60 s), like `90s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// UDP routes: flows open now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_flows: Option<u64>,
}

impl RouteStatus {
    /// A route entry from its parts.
    pub fn new(port: u16, protocol: RouteProtocol, upstream: String) -> Self {
        Self {
            port,
            protocol,
            upstream,
            idle_timeout: None,
            open_flows: None,
        }
    }

    /// The entry for a configured route under `[proxy]` settings `proxy`.
    pub fn from_config(
        route: &crate::config::RouteConfig,
        proxy: &local_proxy::ProxyConfig,
    ) -> Self {
        let mut status = Self::new(route.port, route.protocol, route.upstream.to_string());
        status.idle_timeout = Some(crate::config::format_duration(
            route.effective_idle_timeout(proxy),
        ));
        status
    }

    /// The same entry with a UDP route's live flow count.
    pub fn with_open_flows(mut self, open: u64) -> Self {
        self.open_flows = Some(open);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let s = StatusSnapshot::new(
            "10.1.0.100".parse().unwrap(),
            vec![GatewayStatus::new(
                "gw1".into(),
                Some("gateway-tokyo".into()),
                "pk".into(),
                "192.0.2.1:51820".into(),
                GatewayState::Up,
                Some(1_764_000_000),
                1,
                2,
            )],
            vec![RouteStatus::new(
                80,
                RouteProtocol::Http,
                "127.0.0.1:8080".into(),
            )],
        );
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "virtual_ip": "10.1.0.100",
                "virtual_ips": ["10.1.0.100"],
                "gateways": [{"id": "gw1", "name": "gateway-tokyo", "public_key": "pk",
                    "endpoint": "192.0.2.1:51820", "state": "up",
                    "last_handshake_unix": 1_764_000_000u64, "rx_bytes": 1, "tx_bytes": 2,
                    "icmp_filtered": false}],
                "routes": [{"port": 80, "protocol": "http", "upstream": "127.0.0.1:8080"}],
            })
        );
        let back: StatusSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert!(s.any_gateway_up());

        let s = s.with_agent(AgentStatus::new("agentpk".into(), 51820));
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["agent"],
            serde_json::json!({"public_key": "agentpk", "listen_port": 51820})
        );
        let back: StatusSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn dual_stack_lists_every_address_and_keeps_virtual_ip() {
        let v4: IpAddr = "10.1.0.100".parse().unwrap();
        let v6: IpAddr = "fd00::100".parse().unwrap();
        let s = StatusSnapshot::new(v4, Vec::new(), Vec::new()).with_virtual_ips(vec![v4, v6]);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["virtual_ip"], "10.1.0.100", "the old field stays");
        assert_eq!(
            json["virtual_ips"],
            serde_json::json!(["10.1.0.100", "fd00::100"])
        );
        assert_eq!(s.addresses(), [v4, v6]);

        // A document from an agent that predates the list still has its one address.
        let old: StatusSnapshot = serde_json::from_value(
            serde_json::json!({"virtual_ip": "10.1.0.100", "gateways": [], "routes": []}),
        )
        .unwrap();
        assert!(old.virtual_ips.is_empty());
        assert_eq!(old.addresses(), [v4]);
    }
}
