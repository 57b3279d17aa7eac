//! Unit tests of UAPI `set=1`: what `wg set` sends, the derived id and virtual IP, moved
//! allowed IPs, restart-only keys, malformed requests refused whole, the gateway bound.

use std::net::IpAddr;
use std::path::Path;

use wg_core::{IpNet, PresharedKey, PrivateKey, PublicKey};

use super::{SetRequest, parse};
use crate::config::{Config, ConfigChanges, LivenessProbe};

const PORT: u16 = 51820;

struct Fixture {
    agent: PrivateKey,
    gw1: PublicKey,
    gw2: PublicKey,
    config: Config,
}

/// An agent at 10.1.0.100 in 10.1.0.0/24 with gw1 (10.1.0.1) and gw2 (10.1.0.2).
fn fixture() -> Fixture {
    let agent = PrivateKey::generate();
    let [gw1, gw2] = [0; 2].map(|_| PrivateKey::generate().public_key());
    let text = format!(
        "[agent]\nprivate_key = \"{}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\
         [[gateways]]\nid = \"gw1\"\npublic_key = \"{gw1}\"\nendpoint = \"192.0.2.1:51820\"\nvirtual_ip = \"10.1.0.1\"\n\
         [[gateways]]\nid = \"gw2\"\npublic_key = \"{gw2}\"\nendpoint = \"gw2.example.net:51820\"\nvirtual_ip = \"10.1.0.2\"\n",
        agent.to_base64_secret().as_str()
    );
    let config = Config::from_toml_with_env(&text, Path::new("agent.toml"), &|_| None).unwrap();
    Fixture {
        agent,
        gw1,
        gw2,
        config,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn request(text: &str) -> SetRequest {
    parse(&lines(text)).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn apply(fx: &Fixture, text: &str) -> Result<Config, String> {
    request(text).apply(&fx.config, PORT)
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn what_wg_set_sends_for_an_existing_peer_applies() {
    let fx = fixture();
    let key = hex(fx.gw1.as_bytes());
    // `wg set NAME peer K endpoint 192.0.2.9:51821 persistent-keepalive 5 allowed-ips 10.1.0.1/32,10.1.0.128/25`
    let new = apply(
        &fx,
        &format!(
            "public_key={key}\nendpoint=192.0.2.9:51821\npersistent_keepalive_interval=5\n\
             replace_allowed_ips=true\nallowed_ip=10.1.0.1/32\nallowed_ip=10.1.0.128/25\n"
        ),
    )
    .unwrap();
    let g = &new.gateways[0];
    assert_eq!(g.id, "gw1", "an existing peer keeps its id");
    assert_eq!(g.endpoint.to_string(), "192.0.2.9:51821");
    assert_eq!(g.persistent_keepalive, 5);
    assert_eq!(g.allowed_ips, [net("10.1.0.1/32"), net("10.1.0.128/25")]);
    assert_eq!(g.virtual_ip, Some(ip("10.1.0.1")));
    assert_eq!(new.gateways[1], fx.config.gateways[1], "gw2 untouched");
    let changes = ConfigChanges::between(&fx.config, &new);
    assert_eq!(changes.gateways_changed, ["gw1"]);
    assert!(changes.gateways_added.is_empty() && changes.gateways_removed.is_empty());

    // Endpoint alone; upper-case hex is hexadecimal too; IPv6 endpoint.
    let new = apply(
        &fx,
        &format!(
            "public_key={}\nendpoint=[2001:db8::1]:51820\n",
            key.to_uppercase()
        ),
    )
    .unwrap();
    assert_eq!(new.gateways[0].endpoint.to_string(), "[2001:db8::1]:51820");
    assert_eq!(
        new.gateways[0].allowed_ips,
        fx.config.gateways[0].allowed_ips
    );
}

#[test]
fn a_new_peer_gets_an_id_from_its_key_and_a_virtual_ip_from_its_allowed_ips() {
    let fx = fixture();
    let key = PrivateKey::generate().public_key();
    let new = apply(
        &fx,
        &format!(
            "public_key={}\nendpoint=192.0.2.3:51820\nallowed_ip=10.1.0.3/32\n",
            hex(key.as_bytes())
        ),
    )
    .unwrap();
    assert_eq!(new.gateways.len(), 3);
    let g = &new.gateways[2];
    let b64 = key.to_base64().replace('+', "-").replace('/', "_");
    assert_eq!(g.id, format!("gw-{}", &b64[..8]));
    assert_eq!(g.virtual_ip, Some(ip("10.1.0.3")));
    assert_eq!(g.persistent_keepalive, 0, "off unless set, as in wg");
    assert_eq!(g.liveness_probe, LivenessProbe::Icmp);
    assert!(g.preshared_key.is_none() && g.name.is_none());
    // The manager's spec probes it.
    assert_eq!(
        crate::runtime::gateway_spec(g).liveness_probe,
        LivenessProbe::Icmp
    );

    // A whole range: its first host not routed to a more specific peer (10.1.0.1 and
    // 10.1.0.2 go to gw1 and gw2), and never the agent's own address.
    let new = apply(
        &fx,
        &format!(
            "public_key={}\nendpoint=192.0.2.3:51820\nallowed_ip=0.0.0.0/0\n",
            hex(key.as_bytes())
        ),
    )
    .unwrap();
    assert_eq!(new.gateways[2].virtual_ip, Some(ip("10.1.0.3")));

    // Nothing inside the subnet: no virtual IP, hence no liveness probe.
    let new = apply(
        &fx,
        &format!(
            "public_key={}\nendpoint=192.0.2.3:51820\nallowed_ip=192.168.7.0/24\n",
            hex(key.as_bytes())
        ),
    )
    .unwrap();
    let g = &new.gateways[2];
    assert_eq!(g.virtual_ip, None);
    assert_eq!(
        crate::runtime::gateway_spec(g).liveness_probe,
        LivenessProbe::Off
    );
}

#[test]
fn the_derived_id_grows_when_taken() {
    let mut fx = fixture();
    let key = PrivateKey::generate().public_key();
    let b64 = key.to_base64().replace('+', "-").replace('/', "_");
    fx.config.gateways[1].id = format!("gw-{}", &b64[..8]);
    let new = apply(
        &fx,
        &format!("public_key={}\nendpoint=192.0.2.3:1\n", hex(key.as_bytes())),
    )
    .unwrap();
    assert_eq!(new.gateways[2].id, format!("gw-{}", &b64[..9]));
}

#[test]
fn an_allowed_ip_moves_to_the_peer_that_gets_it() {
    let fx = fixture();
    // gw2 takes 10.1.0.1/32 from gw1, as the kernel moves it; gw1 keeps no address inside the
    // subnet, so it has no virtual IP (no probe) until it gets one.
    let new = apply(
        &fx,
        &format!(
            "public_key={}\nallowed_ip=10.1.0.1/32\n",
            hex(fx.gw2.as_bytes())
        ),
    )
    .unwrap();
    assert!(new.gateways[0].allowed_ips.is_empty());
    assert_eq!(new.gateways[0].virtual_ip, None);
    assert_eq!(
        new.gateways[1].allowed_ips,
        [net("10.1.0.2/32"), net("10.1.0.1/32")]
    );
    assert_eq!(new.gateways[1].virtual_ip, Some(ip("10.1.0.2")), "kept");
}

#[test]
fn remove_update_only_replace_peers_and_preshared_keys() {
    let fx = fixture();
    let (k1, k2) = (hex(fx.gw1.as_bytes()), hex(fx.gw2.as_bytes()));
    let new = apply(&fx, &format!("public_key={k1}\nremove=true\n")).unwrap();
    assert_eq!(new.gateways.len(), 1);
    assert_eq!(new.gateways[0].id, "gw2");
    // Removing a peer that does not exist changes nothing.
    let absent = hex(PrivateKey::generate().public_key().as_bytes());
    let same = apply(&fx, &format!("public_key={absent}\nremove=true\n")).unwrap();
    assert_eq!(same, fx.config);
    // update_only: an unknown peer is not created (even without an endpoint).
    let same = apply(
        &fx,
        &format!("public_key={absent}\nupdate_only=true\nallowed_ip=10.1.0.9/32\n"),
    )
    .unwrap();
    assert_eq!(same, fx.config);
    // replace_peers: only the peers named stay.
    let new = apply(
        &fx,
        &format!("replace_peers=true\npublic_key={k2}\npersistent_keepalive_interval=25\n"),
    )
    .unwrap();
    assert_eq!(new.gateways.len(), 1);
    assert_eq!(new.gateways[0], fx.config.gateways[1]);
    // A preshared key, then all zeros to remove it.
    let bytes = [7u8; 32];
    let psk = PresharedKey::from_bytes(bytes);
    let new = apply(
        &fx,
        &format!("public_key={k1}\npreshared_key={}\n", hex(&bytes)),
    )
    .unwrap();
    assert_eq!(new.gateways[0].preshared_key, Some(psk));
    let mut fx2 = fixture();
    fx2.config = new;
    let cleared = request(&format!(
        "public_key={}\npreshared_key={}\n",
        hex(fx2.config.gateways[0].public_key.as_bytes()),
        "0".repeat(64)
    ))
    .apply(&fx2.config, PORT)
    .unwrap();
    assert_eq!(cleared.gateways[0].preshared_key, None);
}

#[test]
fn restart_only_keys_are_refused_unless_unchanged() {
    let fx = fixture();
    let other = PrivateKey::generate();
    for text in [
        format!("private_key={}\n", hex(&other.to_bytes_secret()[..])),
        "listen_port=1\n".to_owned(),
        "fwmark=7\n".to_owned(),
    ] {
        let err = apply(&fx, &text).unwrap_err();
        assert!(
            err.contains("restart") || err.contains("not supported"),
            "{text}: {err}"
        );
        assert!(!err.contains(&hex(&other.to_bytes_secret()[..])), "{err}");
    }
    // What `wg syncconf NAME <(wg showconf NAME)` sends: the running values.
    let same = apply(
        &fx,
        &format!(
            "private_key={}\nlisten_port={PORT}\nfwmark=0\n",
            hex(&fx.agent.to_bytes_secret()[..])
        ),
    )
    .unwrap();
    assert_eq!(same, fx.config);
}

#[test]
fn malformed_requests_are_refused_whole() {
    let fx = fixture();
    let k1 = hex(fx.gw1.as_bytes());
    let good = format!("public_key={k1}\nendpoint=192.0.2.9:1\n");
    for bad in [
        "endpoint".to_owned(),
        "public_key=abc".to_owned(),
        format!("public_key={}", &k1[..63]),
        format!("public_key={}g", &k1[..63]),
        format!("public_key= {k1}"),
        "endpoint=192.0.2.1:1".to_owned(), // a peer key before any public_key
        "private_key=zz".to_owned(),
        "listen_port=70000".to_owned(),
        "listen_port=+1".to_owned(),
        "replace_peers=false".to_owned(),
        "hello=1".to_owned(),
        format!("public_key={k1}\nlisten_port=1"), // an interface key after a peer
        format!("public_key={k1}\nendpoint=gw.example.net:51820"),
        format!("public_key={k1}\nendpoint=192.0.2.1"),
        format!("public_key={k1}\nendpoint=192.0.2.1:0"),
        format!("public_key={k1}\npersistent_keepalive_interval=-1"),
        format!("public_key={k1}\npersistent_keepalive_interval=65536"),
        format!("public_key={k1}\npersistent_keepalive_interval="),
        format!("public_key={k1}\nallowed_ip=10.1.0.1"),
        format!("public_key={k1}\nallowed_ip=10.1.0.1/33"),
        format!("public_key={k1}\nallowed_ip=10.1.0/24"),
        format!("public_key={k1}\nreplace_allowed_ips=1"),
        format!("public_key={k1}\nremove=yes"),
        format!("public_key={k1}\npreshared_key=00"),
        format!("public_key={k1}\nprotocol_version=2"),
        format!("public_key={k1}\nname=x"),
    ] {
        // Beside a valid change: the bad line makes the whole request fail. Interface keys
        // come first, peer blocks after the valid one.
        let text = if bad.starts_with("public_key") {
            format!("{good}{bad}\n")
        } else {
            format!("{bad}\n{good}")
        };
        assert!(parse(&lines(&text)).is_err(), "accepted: {text:?}");
    }
    // The reason names the line and key, never a secret value.
    let secret = "ab".repeat(31);
    let err = parse(&lines(&format!("private_key={secret}"))).unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("private_key"),
        "{err}"
    );
    assert!(!err.contains(&secret), "{err}");

    // Well-formed but inapplicable: a valid change to gw1, then a new peer with no endpoint.
    let new_key = hex(PrivateKey::generate().public_key().as_bytes());
    let err = apply(
        &fx,
        &format!("{good}public_key={new_key}\nallowed_ip=10.1.0.9/32\n"),
    )
    .unwrap_err();
    assert!(err.contains("no endpoint"), "{err}");
    // The agent's own key cannot be a peer.
    let own = hex(fx.agent.public_key().as_bytes());
    let err = apply(
        &fx,
        &format!("{good}public_key={own}\nendpoint=192.0.2.1:1\n"),
    )
    .unwrap_err();
    assert!(err.contains("own public key"), "{err}");
    // protocol_version=1 is fine.
    apply(&fx, &format!("{good}protocol_version=1\n")).unwrap();
}

#[test]
fn the_number_of_gateways_is_bounded() {
    let fx = fixture();
    let mut text = String::new();
    for i in 0..super::MAX_GATEWAYS {
        let key = PrivateKey::generate().public_key();
        text += &format!(
            "public_key={}\nendpoint=192.0.2.{}:{}\n",
            hex(key.as_bytes()),
            i % 250 + 1,
            i + 1
        );
    }
    let err = apply(&fx, &text).unwrap_err();
    assert!(err.contains("at most"), "{err}");

    // Allowed IPs of one gateway, over several requests.
    let key = hex(fx.gw1.as_bytes());
    let half = |from: usize| {
        let mut text = format!("public_key={key}\n");
        for i in from..from + super::MAX_ALLOWED_IPS / 2 + 1 {
            text += &format!("allowed_ip=172.16.{}.{}/32\n", i / 256, i % 256);
        }
        text
    };
    let once = apply(&fx, &half(0)).unwrap();
    let err = request(&half(super::MAX_ALLOWED_IPS))
        .apply(&once, PORT)
        .unwrap_err();
    assert!(err.contains("allowed IPs"), "{err}");
}

mod props {
    //! Random `wg set` sequences over a few keys and prefixes: parsing never panics, and
    //! every configuration a set leaves keeps the file's invariants.

    use proptest::prelude::*;

    use super::*;

    /// One peer block's text, over keys 0..4 (0 and 1 are gw1 and gw2) and a few prefixes.
    fn block(keys: &[PublicKey]) -> impl Strategy<Value = String> {
        let keys = keys.to_vec();
        (
            0..keys.len(),
            any::<bool>(),
            proptest::option::of(1u16..4),
            proptest::option::of(0u16..30),
            any::<bool>(),
            proptest::collection::vec(0usize..8, 0..4),
            0u8..10,
        )
            .prop_map(
                move |(k, remove, endpoint, keepalive, replace, ips, flags)| {
                    const PREFIXES: [&str; 8] = [
                        "10.1.0.1/32",
                        "10.1.0.2/32",
                        "10.1.0.3/32",
                        "10.1.0.0/24",
                        "10.1.0.0/25",
                        "0.0.0.0/0",
                        "192.168.0.0/16",
                        "fd00::/64",
                    ];
                    let mut text = format!("public_key={}\n", hex(keys[k].as_bytes()));
                    if remove && flags < 2 {
                        text += "remove=true\n";
                    }
                    if flags == 9 {
                        text += "update_only=true\n";
                    }
                    if let Some(e) = endpoint {
                        text += &format!("endpoint=192.0.2.{e}:51820\n");
                    }
                    if let Some(s) = keepalive {
                        text += &format!("persistent_keepalive_interval={s}\n");
                    }
                    if replace {
                        text += "replace_allowed_ips=true\n";
                    }
                    for i in ips {
                        text += &format!("allowed_ip={}\n", PREFIXES[i]);
                    }
                    text
                },
            )
    }

    fn check_invariants(config: &Config) -> Result<(), TestCaseError> {
        let gateways = &config.gateways;
        for (i, g) in gateways.iter().enumerate() {
            for h in &gateways[i + 1..] {
                prop_assert_ne!(&g.id, &h.id);
                prop_assert_ne!(g.public_key, h.public_key);
                for net in &g.allowed_ips {
                    prop_assert!(!h.allowed_ips.contains(net), "{net} under two gateways");
                }
                if g.virtual_ip.is_some() {
                    prop_assert_ne!(g.virtual_ip, h.virtual_ip);
                }
            }
            if let Some(ip) = g.virtual_ip {
                prop_assert!(config.agent.subnet.contains(ip));
                prop_assert_ne!(ip, config.agent.virtual_ip);
                prop_assert_eq!(super::super::routes_to(gateways, ip), Some(i));
            }
            let valid_id =
                g.id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            prop_assert!(valid_id && !g.id.is_empty() && g.id.len() <= 64, "{}", g.id);
        }
        Ok(())
    }

    #[test]
    fn random_set_sequences_keep_the_config_invariants() {
        let fx = fixture();
        let keys = [
            fx.gw1,
            fx.gw2,
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        ];
        let requests = proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(block(&keys), 1..4)),
            1..6,
        );
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&requests, |requests| {
                let mut config = fx.config.clone();
                for (replace_peers, blocks) in requests {
                    let mut text = String::new();
                    if replace_peers && blocks.len() > 2 {
                        text += "replace_peers=true\n";
                    }
                    text.extend(blocks);
                    let request = parse(&lines(&text)).map_err(TestCaseError::fail)?;
                    match request.apply(&config, PORT) {
                        Ok(new) => {
                            check_invariants(&new)?;
                            config = new;
                        }
                        // Refused (a new peer without an endpoint): nothing applied.
                        Err(reason) => prop_assert!(reason.contains("no endpoint"), "{reason}"),
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn no_input_panics_the_parser() {
        let line =
            proptest::string::string_regex("[a-z_]{0,12}=?[0-9a-f./:\\[\\]-]{0,70}").unwrap();
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&proptest::collection::vec(line, 0..8), |lines| {
                let _ = parse(&lines);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn dual_stack_a_new_peer_takes_its_virtual_ip_from_the_subnet_of_its_family() {
    let agent = PrivateKey::generate();
    let text = format!(
        "[agent]\nprivate_key = \"{}\"\nvirtual_ip = [\"10.1.0.100\", \"fd00::100\"]\n\
         subnet = [\"10.1.0.0/24\", \"fd00::/64\"]\n",
        agent.to_base64_secret().as_str()
    );
    let config = Config::from_toml_with_env(&text, Path::new("agent.toml"), &|_| None).unwrap();
    let key = hex(PrivateKey::generate().public_key().as_bytes());
    let apply = |ips: &str| {
        let mut text = format!("public_key={key}\nendpoint=192.0.2.3:51820\n");
        for ip in ips.split(' ') {
            text += &format!("allowed_ip={ip}\n");
        }
        request(&text).apply(&config, PORT).unwrap().gateways[0].virtual_ip
    };
    assert_eq!(apply("fd00::7/128"), Some(ip("fd00::7")));
    assert_eq!(apply("192.168.0.0/16 fd00::/64"), Some(ip("fd00::1")));
    // Never one of the agent's own addresses.
    assert_eq!(apply("fd00::100/128 10.1.0.100/32"), None);
    assert_eq!(apply("fd01::/64"), None);
}
