//! What a reload (`SIGHUP`) changes: gateways matched by public key, routes, the key, and the
//! settings that only a restart can apply.

use std::fmt;

use super::{Config, GatewayConfig};

/// The difference between a running [`Config`] and a newly read one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigChanges {
    /// Ids of gateways whose public key is new.
    pub gateways_added: Vec<String>,
    /// Ids (in the old file) of gateways whose public key is gone.
    pub gateways_removed: Vec<String>,
    /// Ids of gateways with the same public key and other settings changed (id, name,
    /// endpoint, keepalive, probe, allowed IPs, preshared key).
    pub gateways_changed: Vec<String>,
    /// The agent's private key changed: every tunnel re-keys.
    pub private_key_changed: bool,
    /// `[[routes]]` changed.
    pub routes_changed: bool,
    /// `[proxy]` changed.
    pub proxy_changed: bool,
    /// `[log]` changed.
    pub log_changed: bool,
    /// `[log] level` changed (applied live unless `--log-level` overrides it).
    pub log_level_changed: bool,
    /// Fields that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
    /// Runtime changes made through UAPI (`wg set`) that this reload replaced with the
    /// file's settings, such as `peer gw-abc12345 added` or `gw1 endpoint changed`.
    pub runtime_replaced: Vec<String>,
}

impl ConfigChanges {
    /// Compares the running config `old` with the newly read `new`.
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut c = Self::default();
        for g in &new.gateways {
            match old.gateways.iter().find(|o| o.public_key == g.public_key) {
                None => c.gateways_added.push(g.id.clone()),
                Some(o) if o != g => c.gateways_changed.push(g.id.clone()),
                Some(_) => {}
            }
        }
        for o in &old.gateways {
            if !new.gateways.iter().any(|g| g.public_key == o.public_key) {
                c.gateways_removed.push(o.id.clone());
            }
        }
        c.private_key_changed = old.agent.private_key != new.agent.private_key;
        c.routes_changed = old.routes != new.routes;
        c.proxy_changed = old.proxy != new.proxy;
        c.log_changed = old.log != new.log;
        c.log_level_changed = old.log.level != new.log.level;
        let restart = [
            // The whole list: adding or removing an address of one family is a change too.
            (
                "agent.virtual_ip",
                old.agent.virtual_ips != new.agent.virtual_ips,
            ),
            ("agent.subnet", old.agent.subnets != new.agent.subnets),
            (
                "agent.listen_port",
                old.agent.listen_port != new.agent.listen_port,
            ),
            ("agent.mtu", old.agent.mtu != new.agent.mtu),
            ("admin.listen", old.admin != new.admin),
            (
                "admin.allow_remote",
                old.admin_allow_remote != new.admin_allow_remote,
            ),
            ("log.format", old.log.format != new.log.format),
            ("uapi.name", old.uapi_name != new.uapi_name),
            (
                "proxy.max_connections",
                old.proxy.max_connections != new.proxy.max_connections,
            ),
            (
                "proxy.max_udp_flows",
                old.proxy.max_udp_flows != new.proxy.max_udp_flows,
            ),
        ];
        c.needs_restart = restart
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(f, _)| *f)
            .collect();
        c
    }

    /// `new` as it can be applied to an agent running `running`: every setting that needs a
    /// restart keeps its running value, so the stored configuration is the one that runs
    /// and the next reload still reports what waits for a restart.
    pub fn as_applied(running: &Config, new: &Config) -> Config {
        let mut applied = new.clone();
        applied.agent.virtual_ip = running.agent.virtual_ip;
        applied.agent.subnet = running.agent.subnet;
        applied.agent.virtual_ips = running.agent.virtual_ips.clone();
        applied.agent.subnets = running.agent.subnets.clone();
        applied.agent.listen_port = running.agent.listen_port;
        applied.agent.mtu = running.agent.mtu;
        applied.admin = running.admin.clone();
        applied.admin_allow_remote = running.admin_allow_remote;
        applied.log.format = running.log.format;
        applied.uapi_name = running.uapi_name.clone();
        applied.proxy.max_connections = running.proxy.max_connections;
        applied.proxy.max_udp_flows = running.proxy.max_udp_flows;
        applied
    }

    /// Which runtime changes a reload replaces: `file` is the configuration last applied from
    /// the file, `running` what runs (the file plus changes made through UAPI), `new` what the
    /// reload applies. A UAPI change is replaced when `new` does not keep it.
    pub fn runtime_replaced(file: &Config, running: &Config, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        fn find(c: &Config, key: wg_core::PublicKey) -> Option<&GatewayConfig> {
            c.gateways.iter().find(|g| g.public_key == key)
        }
        for r in &running.gateways {
            let n = find(new, r.public_key);
            match find(file, r.public_key) {
                None if n != Some(r) => out.push(format!("peer {} added", r.id)),
                None => {}
                Some(f) => {
                    // Per field: does `new` differ from what runs (or drop the gateway)?
                    let undone = n.map(|n| gateway_fields(n, r));
                    for (i, (field, changed)) in gateway_fields(f, r).into_iter().enumerate() {
                        if changed && undone.is_none_or(|u| u[i].1) {
                            out.push(format!("{} {field} changed", r.id));
                        }
                    }
                }
            }
        }
        for f in &file.gateways {
            if find(running, f.public_key).is_none() && find(new, f.public_key).is_some() {
                out.push(format!("peer {} removed", f.id));
            }
        }
        out
    }

    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What UAPI can change on a gateway: (field, whether `a` and `b` differ there).
fn gateway_fields(a: &GatewayConfig, b: &GatewayConfig) -> [(&'static str, bool); 5] {
    [
        ("endpoint", a.endpoint != b.endpoint),
        ("allowed IPs", a.allowed_ips != b.allowed_ips),
        (
            "persistent keepalive",
            a.persistent_keepalive != b.persistent_keepalive,
        ),
        ("preshared key", a.preshared_key != b.preshared_key),
        ("virtual IP", a.virtual_ip != b.virtual_ip),
    ]
}

impl fmt::Display for ConfigChanges {
    /// One line for the log: `gateways +gw3 -gw1 ~gw2; routes changed; ...` or `no changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let gateways: Vec<String> = [
            ("+", &self.gateways_added),
            ("-", &self.gateways_removed),
            ("~", &self.gateways_changed),
        ]
        .iter()
        .flat_map(|(sign, ids)| ids.iter().map(move |id| format!("{sign}{id}")))
        .collect();
        if !gateways.is_empty() {
            parts.push(format!("gateways {}", gateways.join(" ")));
        }
        if self.private_key_changed {
            parts.push("private key changed (every tunnel re-keys)".into());
        }
        for (changed, what) in [
            (self.routes_changed, "routes"),
            (self.proxy_changed, "proxy"),
            (self.log_level_changed, "log level"),
        ] {
            if changed {
                parts.push(format!("{what} changed"));
            }
        }
        if !self.needs_restart.is_empty() {
            parts.push(format!(
                "needs a restart to apply: {}",
                self.needs_restart.join(", ")
            ));
        }
        if !self.runtime_replaced.is_empty() {
            parts.push(format!(
                "replaced runtime changes made through UAPI: {}",
                self.runtime_replaced.join(", ")
            ));
        }
        if parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use wg_core::PrivateKey;

    fn config(agent_key: &str, gateways: &[(&str, &str, &str)], extra: &str) -> Config {
        let mut text = format!(
            "[agent]\nprivate_key = \"{agent_key}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n{extra}"
        );
        for (i, (id, key, endpoint)) in gateways.iter().enumerate() {
            text += &format!(
                "\n[[gateways]]\nid = \"{id}\"\npublic_key = \"{key}\"\nendpoint = \"{endpoint}\"\nvirtual_ip = \"10.1.0.{}\"\n",
                i + 1
            );
        }
        Config::from_toml_with_env(&text, Path::new("agent.toml"), &|_| None).unwrap()
    }

    #[test]
    fn gateways_by_public_key() {
        let agent = PrivateKey::generate().to_base64_secret().to_string();
        let [k1, k2, k3] = [0; 3].map(|_| PrivateKey::generate().public_key().to_base64());
        let old = config(
            &agent,
            &[("gw1", &k1, "192.0.2.1:1"), ("gw2", &k2, "192.0.2.2:1")],
            "",
        );
        assert!(ConfigChanges::between(&old, &old).is_empty());
        assert_eq!(ConfigChanges::between(&old, &old).to_string(), "no changes");

        // gw1 removed, gw2 moved to another endpoint (and to position 0), gw3 added.
        let new = config(
            &agent,
            &[("gw2", &k2, "192.0.2.9:1"), ("gw3", &k3, "192.0.2.3:1")],
            "",
        );
        let c = ConfigChanges::between(&old, &new);
        assert_eq!(c.gateways_added, ["gw3"]);
        assert_eq!(c.gateways_removed, ["gw1"]);
        assert_eq!(c.gateways_changed, ["gw2"]);
        assert!(!c.private_key_changed && !c.routes_changed && c.needs_restart.is_empty());
        assert_eq!(c.to_string(), "gateways +gw3 -gw1 ~gw2");

        // Renaming the id of an unchanged key is a change, not a remove + add.
        let renamed = config(
            &agent,
            &[("tokyo", &k1, "192.0.2.1:1"), ("gw2", &k2, "192.0.2.2:1")],
            "",
        );
        let c = ConfigChanges::between(&old, &renamed);
        assert_eq!((c.gateways_added.len(), c.gateways_removed.len()), (0, 0));
        assert_eq!(c.gateways_changed, ["tokyo"]);
    }

    #[test]
    fn key_routes_and_restart_fields() {
        let agent = PrivateKey::generate().to_base64_secret().to_string();
        let other = PrivateKey::generate().to_base64_secret().to_string();
        let old = config(&agent, &[], "");
        let new = config(
            &other,
            &[],
            "mtu = 1380\n[[routes]]\nport = 81\nupstream = \"127.0.0.1:1\"\n[admin]\nlisten = \"off\"\n",
        );
        let c = ConfigChanges::between(&old, &new);
        assert!(c.private_key_changed && c.routes_changed);
        assert_eq!(c.needs_restart, ["agent.mtu", "admin.listen"]);
        let line = c.to_string();
        assert_eq!(
            line,
            "private key changed (every tunnel re-keys); routes changed; needs a restart to apply: agent.mtu, admin.listen"
        );
        assert!(!line.contains(&agent) && !line.contains(&other));
    }

    #[test]
    fn a_reload_names_the_uapi_changes_it_replaces() {
        let agent = PrivateKey::generate().to_base64_secret().to_string();
        let [k1, k2, k3] = [0; 3].map(|_| PrivateKey::generate().public_key().to_base64());
        let file = config(
            &agent,
            &[("gw1", &k1, "192.0.2.1:1"), ("gw2", &k2, "192.0.2.2:1")],
            "",
        );
        // Through UAPI: gw1's endpoint and keepalive changed, gw2 removed, gw-new added.
        let mut running = file.clone();
        running.gateways[0].endpoint = "192.0.2.9:1".parse().unwrap();
        running.gateways[0].persistent_keepalive = 5;
        running.gateways.remove(1);
        let mut added = config(&agent, &[("gw-new", &k3, "192.0.2.3:1")], "").gateways;
        running.gateways.append(&mut added);

        // The file, unchanged, undoes all of it.
        let replaced = ConfigChanges::runtime_replaced(&file, &running, &file);
        assert_eq!(
            replaced,
            [
                "gw1 endpoint changed",
                "gw1 persistent keepalive changed",
                "peer gw-new added",
                "peer gw2 removed"
            ]
        );
        let mut c = ConfigChanges::between(&running, &file);
        c.runtime_replaced = replaced;
        assert!(
            c.to_string().ends_with(
                "replaced runtime changes made through UAPI: gw1 endpoint changed, gw1 persistent keepalive changed, peer gw-new added, peer gw2 removed"
            ),
            "{c}"
        );

        // A new file that keeps a UAPI change does not replace it.
        let mut new = file.clone();
        new.gateways[0].persistent_keepalive = 5;
        let replaced = ConfigChanges::runtime_replaced(&file, &running, &new);
        assert!(!replaced.contains(&"gw1 persistent keepalive changed".to_owned()));
        assert!(replaced.contains(&"gw1 endpoint changed".to_owned()));

        // Without UAPI changes there is nothing to say.
        assert!(ConfigChanges::runtime_replaced(&file, &file, &new).is_empty());
    }

    #[test]
    fn a_new_address_family_is_restart_only_and_reported() {
        let agent = PrivateKey::generate().to_base64_secret().to_string();
        let old = config(&agent, &[], "");
        let text = format!(
            "[agent]\nprivate_key = \"{agent}\"\nvirtual_ip = [\"10.1.0.100\", \"fd00::100\"]\n\
             subnet = [\"10.1.0.0/24\", \"fd00::/64\"]\n"
        );
        let new = Config::from_toml_with_env(&text, Path::new("agent.toml"), &|_| None).unwrap();
        // The first address is the same: the list is what changed.
        assert_eq!(old.agent.virtual_ip, new.agent.virtual_ip);
        let c = ConfigChanges::between(&old, &new);
        assert_eq!(c.needs_restart, ["agent.virtual_ip", "agent.subnet"]);
        assert_eq!(
            c.to_string(),
            "needs a restart to apply: agent.virtual_ip, agent.subnet"
        );
        // Applied, the running addresses stay (and the next reload reports it again).
        let applied = ConfigChanges::as_applied(&old, &new);
        assert_eq!(applied.agent, old.agent);
        assert_eq!(
            ConfigChanges::between(&applied, &new).needs_restart,
            ["agent.virtual_ip", "agent.subnet"]
        );
    }
}
