//! The TOML document as serde reads it, before validation. Strings stay strings here so a
//! bad value gets a message naming its field, and secrets are never echoed by serde.

use serde::Deserialize;
use zeroize::Zeroize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) agent: RawAgent,
    #[serde(default)]
    pub(crate) gateways: Vec<RawGateway>,
    /// `None`: the table is absent (one default route); `Some(vec![])`: no routes.
    pub(crate) routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    pub(crate) proxy: RawProxy,
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) uapi: RawUapi,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUapi {
    pub(crate) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub(crate) private_key: Option<String>,
    pub(crate) private_key_file: Option<String>,
    pub(crate) private_key_env: Option<String>,
    pub(crate) private_key_credential: Option<String>,
    pub(crate) virtual_ip: OneOrList,
    pub(crate) subnet: OneOrList,
    #[serde(default)]
    pub(crate) listen_port: u16,
    #[serde(default = "default_mtu")]
    pub(crate) mtu: u16,
}

impl std::fmt::Debug for RawAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAgent")
            .field("private_key", &self.private_key.as_ref().map(|_| ".."))
            .field("private_key_file", &self.private_key_file)
            .field("private_key_env", &self.private_key_env)
            .field("private_key_credential", &self.private_key_credential)
            .field("virtual_ip", &self.virtual_ip)
            .field("subnet", &self.subnet)
            .finish_non_exhaustive()
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

/// A value given as one string or as a list of strings (`virtual_ip = "10.1.0.100"` or
/// `virtual_ip = ["10.1.0.100", "fd00::100"]`); validation checks the items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OneOrList(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for OneOrList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrList;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<OneOrList, E> {
                Ok(OneOrList(vec![value.to_owned()]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrList, A::Error> {
                // The length is checked by validation, with a message naming the field.
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrList(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn default_mtu() -> u16 {
    1420
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) public_key: String,
    pub(crate) endpoint: String,
    pub(crate) virtual_ip: String,
    pub(crate) preshared_key: Option<String>,
    pub(crate) preshared_key_file: Option<String>,
    #[serde(default = "default_keepalive")]
    pub(crate) persistent_keepalive: u16,
    #[serde(default)]
    pub(crate) liveness_probe: super::LivenessProbe,
    pub(crate) allowed_ips: Option<Vec<String>>,
}

impl std::fmt::Debug for RawGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawGateway")
            .field("id", &self.id)
            .field("public_key", &self.public_key)
            .field("endpoint", &self.endpoint)
            .field("preshared_key", &self.preshared_key.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl Drop for RawGateway {
    fn drop(&mut self) {
        self.preshared_key.zeroize();
    }
}

fn default_keepalive() -> u16 {
    25
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) port: u16,
    pub(crate) upstream: String,
    #[serde(default)]
    pub(crate) protocol: super::RouteProtocol,
    pub(crate) trust_forwarded: Option<bool>,
    pub(crate) proxy_protocol: Option<bool>,
    pub(crate) upstream_h2c: Option<bool>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) upstream_connect_timeout: Option<String>,
    pub(crate) upstream_response_timeout: Option<String>,
    pub(crate) max_flows: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub(crate) header_read_timeout: Option<String>,
    pub(crate) upstream_connect_timeout: Option<String>,
    pub(crate) upstream_response_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) max_header_bytes: Option<u64>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) http2_max_concurrent_streams: Option<u64>,
    pub(crate) http2_max_send_buffer: Option<u64>,
    pub(crate) max_upstream_requests: Option<u64>,
    pub(crate) max_upstream_sockets: Option<u64>,
    pub(crate) lingering_close_timeout: Option<String>,
    pub(crate) lingering_close_bytes: Option<u64>,
    pub(crate) access_log: Option<bool>,
    pub(crate) max_udp_flows: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<String>,
    /// Opt-in to a non-loopback `listen` (probes and metrics for other hosts).
    #[serde(default)]
    pub(crate) allow_remote: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    #[serde(default)]
    pub(crate) format: super::LogFormat,
    pub(crate) level: Option<String>,
}

/// Only the `[admin]` table, for `wg-agent status --config`: the rest of the file (keys,
/// environment) is not needed to find the admin endpoint.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAdminOnly {
    #[serde(default)]
    pub(crate) admin: RawAdmin,
}
