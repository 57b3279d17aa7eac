//! Unit tests of config parsing and validation: every rule of `check`, with the message it gives.

use std::path::{Path, PathBuf};

use super::*;
use wg_core::PrivateKey;

#[path = "../../tests/common/files.rs"]
mod files;

use files::TempDir;

fn key() -> String {
    PrivateKey::generate().to_base64_secret().to_string()
}

fn public() -> String {
    PrivateKey::generate().public_key().to_base64()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(text, Path::new("/etc/wg-agent/agent.toml"), &no_env)
}

fn err(text: &str) -> String {
    let e = parse(text).expect_err("config should be refused");
    e.to_string()
}

fn agent_section(key: &str) -> String {
    files::agent_section(&format!("private_key = \"{key}\""))
}

fn gateway(id: &str, public_key: &str, vip: &str) -> String {
    files::gateway_section(id, public_key, "192.0.2.1:51820", vip)
}

fn minimal() -> String {
    agent_section(&key()) + &gateway("gw1", &public(), "10.1.0.1")
}

#[test]
fn minimal_config_gets_every_default() {
    let c = parse(&minimal()).unwrap();
    assert_eq!(c.agent.virtual_ip, "10.1.0.100".parse::<IpAddr>().unwrap());
    assert_eq!(c.agent.subnet.to_string(), "10.1.0.0/24");
    assert_eq!(c.agent.listen_port, 0);
    assert_eq!(c.agent.mtu, 1420);
    let g = &c.gateways[0];
    assert_eq!(g.id, "gw1");
    assert_eq!(g.name, None);
    assert_eq!(g.persistent_keepalive, 25);
    assert_eq!(g.liveness_probe, LivenessProbe::Icmp);
    assert_eq!(g.allowed_ips, vec!["10.1.0.1/32".parse().unwrap()]);
    assert_eq!(g.endpoint_addr(), Some("192.0.2.1:51820".parse().unwrap()));
    assert!(g.preshared_key.is_none());
    assert_eq!(c.routes, vec![RouteConfig::default_http()]);
    assert_eq!(c.routes[0].upstream.to_string(), "127.0.0.1:8080");
    assert_eq!(c.proxy, ProxyConfig::default());
    assert!(!c.proxy.access_log);
    assert_eq!(c.proxy.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.proxy.max_header_bytes, 65536);
    assert_eq!(c.admin, AdminListen::DEFAULT);
    assert_eq!(c.log, LogConfig::default());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn full_config() {
    let psk = key();
    let text = agent_section(&key())
        + "listen_port = 51000\nmtu = 1380\n"
        + &format!(
            r#"
[[gateways]]
id = "gw1"
name = "gateway-tokyo"
public_key = "{}"
endpoint = "gw1.example.net:51820"
virtual_ip = "10.1.0.1"
preshared_key = "{psk}"
persistent_keepalive = 0
liveness_probe = "off"
allowed_ips = ["10.1.0.1/32", "192.168.7.0/24"]

[[gateways]]
id = "gw2"
public_key = "{}"
endpoint = "[2001:db8::1]:51820"
virtual_ip = "10.1.0.2"

[[routes]]
port = 80
upstream = "127.0.0.1:8080"
trust_forwarded = false

[[routes]]
port = 5432
upstream = "localhost:5432"
protocol = "tcp"
proxy_protocol = true

[proxy]
header_read_timeout = "10s"
upstream_connect_timeout = "500ms"
upstream_response_timeout = "2m"
idle_timeout = "1m30s"
drain_timeout = "0s"
max_header_bytes = 16384
max_connections = 10

[admin]
listen = "[::1]:9191"

[log]
format = "json"
level = "debug,wg_core=trace"
"#,
            public(),
            public()
        );
    let c = parse(&text).unwrap();
    assert_eq!((c.agent.listen_port, c.agent.mtu), (51000, 1380));
    let g = &c.gateways[0];
    assert_eq!(g.name.as_deref(), Some("gateway-tokyo"));
    assert_eq!(g.endpoint.host, Host::Name("gw1.example.net".into()));
    assert_eq!(g.endpoint.port, 51820);
    assert_eq!(g.endpoint_addr(), None);
    assert!(g.preshared_key.is_some());
    assert_eq!(g.persistent_keepalive, 0);
    assert_eq!(g.liveness_probe, LivenessProbe::Off);
    assert_eq!(g.allowed_ips.len(), 2);
    assert_eq!(c.gateways[1].endpoint.to_string(), "[2001:db8::1]:51820");
    assert_eq!(c.routes.len(), 2);
    assert!(!c.routes[0].trust_forwarded);
    assert_eq!(c.routes[1].protocol, RouteProtocol::Tcp);
    assert!(c.routes[1].proxy_protocol);
    assert!(c.routes[1].trust_forwarded, "default stays true");
    assert_eq!(c.proxy.upstream_connect_timeout, Duration::from_millis(500));
    assert_eq!(c.proxy.upstream_response_timeout, Duration::from_secs(120));
    assert_eq!(c.proxy.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.proxy.drain_timeout, Duration::ZERO);
    assert_eq!(
        (c.proxy.max_header_bytes, c.proxy.max_connections),
        (16384, 10)
    );
    assert_eq!(c.admin, AdminListen::Tcp("[::1]:9191".parse().unwrap()));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "debug,wg_core=trace");
    let debug = format!("{c:?}");
    assert!(!debug.contains(&psk), "preshared key in Debug output");
}

#[test]
fn routes_absent_empty_and_zero_gateways() {
    let c = parse(&(String::from("routes = []\n") + &agent_section(&key()))).unwrap();
    assert!(c.routes.is_empty());
    assert!(c.gateways.is_empty());
    assert!(
        c.warnings[0].contains("no [[gateways]]"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn exactly_one_private_key_source() {
    let none = "[agent]\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    let e = err(none);
    assert!(
        e.contains("agent.toml: agent: set exactly one of") && e.contains("found: none"),
        "{e}"
    );
    let two = agent_section(&key()) + "private_key_env = \"X\"\n";
    let e = err(&two);
    assert!(e.contains("found: private_key, private_key_env"), "{e}");
}

#[test]
fn invalid_inline_key_is_not_echoed() {
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";
    let e = err(&agent_section(secret));
    assert!(e.contains("agent.private_key"), "{e}");
    assert!(e.contains("value not shown"), "{e}");
    assert!(!e.contains(secret), "{e}");
    let e = err(&agent_section("not base64!"));
    assert!(
        !e.contains("not base64!") && e.contains("not valid base64"),
        "{e}"
    );
    let wrong_type =
        "[agent]\nprivate_key = 123456789\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    let e = err(wrong_type);
    assert!(
        e.contains("agent.toml:2:") && e.contains("agent.private_key"),
        "{e}"
    );
    assert!(!e.contains("123456789"), "{e}");
}

#[test]
fn key_file_relative_permissions_and_content() {
    let dir = TempDir::new();
    let private = PrivateKey::generate();
    dir.write(
        "agent.key",
        &format!("{}\n", private.to_base64_secret().as_str()),
        0o600,
    );
    let text = "[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    let config_path = dir.write("agent.toml", text, 0o644);
    let c = Config::load(&config_path).unwrap();
    assert!(c.agent.private_key == private);

    let key_path = dir.write("agent.key", private.to_base64_secret().as_str(), 0o644);
    let e = Config::load(&config_path).unwrap_err();
    assert!(
        matches!(e, ConfigError::KeyFilePermissions { mode: 0o644, .. }),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains(&format!("run `chmod 600 {}`", key_path.display())),
        "{e}"
    );
    assert!(
        e.contains("agent.private_key_file") && e.contains("agent.toml"),
        "{e}"
    );

    dir.write("agent.key", private.to_base64_secret().as_str(), 0o604);
    let e = Config::load(&config_path).unwrap_err().to_string();
    assert!(
        e.contains("is readable by others (mode 604)") && e.contains("chmod 600"),
        "{e}"
    );
    dir.write("agent.key", private.to_base64_secret().as_str(), 0o620);
    let e = Config::load(&config_path).unwrap_err().to_string();
    assert!(
        e.contains("is writable by group or others (mode 620)") && e.contains("chmod 600"),
        "{e}"
    );
    dir.write("agent.key", private.to_base64_secret().as_str(), 0o400);
    assert!(
        Config::load(&config_path).is_ok(),
        "read-only for the owner is fine"
    );

    dir.write("agent.key", "garbage-secret-value", 0o600);
    let e = Config::load(&config_path).unwrap_err().to_string();
    assert!(
        e.contains("agent.private_key_file") && !e.contains("garbage-secret-value"),
        "{e}"
    );

    std::fs::remove_file(&key_path).unwrap();
    let e = Config::load(&config_path).unwrap_err().to_string();
    assert!(
        e.contains("cannot read key file") && e.contains("agent.key"),
        "{e}"
    );
}

#[test]
fn inline_key_in_readable_config_warns() {
    let dir = TempDir::new();
    let path = dir.write("agent.toml", &agent_section(&key()), 0o644);
    let c = Config::load(&path).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains("chmod 600")),
        "{:?}",
        c.warnings
    );
    let path = dir.write("agent.toml", &agent_section(&key()), 0o600);
    let c = Config::load(&path).unwrap();
    assert!(
        !c.warnings.iter().any(|w| w.contains("chmod 600")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn key_from_environment() {
    let private = PrivateKey::generate();
    let b64 = private.to_base64_secret().to_string();
    let text = "[agent]\nprivate_key_env = \"WG_AGENT_KEY\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    let path = Path::new("agent.toml");
    let env = |var: &str| (var == "WG_AGENT_KEY").then(|| b64.clone());
    let c = Config::from_toml_with_env(text, path, &env).unwrap();
    assert!(c.agent.private_key == private);

    let e = Config::from_toml_with_env(text, path, &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agent.private_key_env") && e.contains("`WG_AGENT_KEY` is not set"),
        "{e}"
    );

    let bad = |_: &str| Some("topsecretbutbroken".to_owned());
    let e = Config::from_toml_with_env(text, path, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("environment variable `WG_AGENT_KEY`") && !e.contains("topsecretbutbroken"),
        "{e}"
    );
}

#[test]
fn agent_addresses() {
    let k = key();
    let text = agent_section(&k).replace("10.1.0.100", "10.2.0.1");
    let e = err(&text);
    assert!(
        e.contains("agent.virtual_ip: 10.2.0.1 is outside agent.subnet 10.1.0.0/24"),
        "{e}"
    );
    let e = err(&agent_section(&k).replace("10.1.0.100", "nope"));
    assert!(
        e.contains("agent.virtual_ip: `nope` is not an IP address"),
        "{e}"
    );
    let e = err(&agent_section(&k).replace("10.1.0.0/24", "10.1.0.0/40"));
    assert!(e.contains("agent.subnet"), "{e}");
    let e = err(&(agent_section(&k) + "mtu = 100\n"));
    assert!(e.contains("agent.mtu: 100 is out of range"), "{e}");
    let v6 = agent_section(&k)
        .replace("10.1.0.100", "fd00::100")
        .replace("10.1.0.0/24", "fd00::/64");
    assert!(parse(&v6).is_ok());
    assert!(err(&(v6 + "mtu = 1279\n")).contains("agent.mtu"));
}

#[test]
fn gateway_identity_rules() {
    let k = key();
    let p = public();
    let e = err(&(agent_section(&k)
        + &gateway("gw1", &p, "10.1.0.1")
        + &gateway("gw1", &public(), "10.1.0.2")));
    assert!(
        e.contains("gateways[1].id: `gw1` is already used by gateways[0]"),
        "{e}"
    );

    let e = err(&(agent_section(&k)
        + &gateway("gw1", &p, "10.1.0.1")
        + &gateway("gw2", &p, "10.1.0.2")));
    assert!(
        e.contains("gateways[1].public_key (gateway `gw2`)")
            && e.contains("already used by gateways[0] (gateway `gw1`)"),
        "{e}"
    );
    assert!(
        e.contains(&p),
        "public keys are not secret and are shown: {e}"
    );

    let e = err(&(agent_section(&k)
        + &gateway("gw1", &p, "10.1.0.1")
        + &gateway("gw2", &public(), "10.1.0.1")));
    assert!(
        e.contains("gateways[1].virtual_ip (gateway `gw2`): `10.1.0.1` is already used"),
        "{e}"
    );

    let e = err(&(agent_section(&k)
        + &gateway("gw1", &p, "10.1.0.1")
        + &gateway("gw2", "AAAA", "10.1.0.2")));
    assert!(
        e.contains("gateways[1].public_key (gateway `gw2`): `AAAA` is not a WireGuard public key"),
        "{e}"
    );

    let own = PrivateKey::from_base64(&k)
        .unwrap()
        .public_key()
        .to_base64();
    let e = err(&(agent_section(&k) + &gateway("gw1", &own, "10.1.0.1")));
    assert!(e.contains("agent's own public key"), "{e}");

    let e = err(&(agent_section(&k) + &gateway("g w", &p, "10.1.0.1")));
    assert!(e.contains("gateways[0].id: `g w` is not an id"), "{e}");
    let e = err(&(agent_section(&k) + &gateway("", &p, "10.1.0.1")));
    assert!(e.contains("gateways[0].id"), "{e}");
}

#[test]
fn gateway_addresses() {
    let k = key();
    let e = err(&(agent_section(&k) + &gateway("gw1", &public(), "10.9.0.1")));
    assert!(
        e.contains(
            "gateways[0].virtual_ip (gateway `gw1`): 10.9.0.1 is outside agent.subnet 10.1.0.0/24"
        ),
        "{e}"
    );
    let e = err(&(agent_section(&k) + &gateway("gw1", &public(), "10.1.0.100")));
    assert!(e.contains("agent's own agent.virtual_ip"), "{e}");
    let base = agent_section(&k) + &gateway("gw1", &public(), "10.1.0.1");
    for (endpoint, expect) in [
        ("gw1.example.net", "is not host:port"),
        ("2001:db8::1:51820", "brackets"),
        ("gw:0", "port 0"),
        ("bad_host!:1", "neither an IP address nor a DNS name"),
    ] {
        let e = err(&base.replace("192.0.2.1:51820", endpoint));
        assert!(
            e.contains("gateways[0].endpoint (gateway `gw1`)") && e.contains(expect),
            "{e}"
        );
    }
    let e = err(&(base.clone() + "allowed_ips = [\"192.168.0.0/16\"]\n"));
    assert!(e.contains("gateways[0].allowed_ips (gateway `gw1`): must include the gateway's virtual_ip 10.1.0.1"), "{e}");
    let e = err(&(base.clone() + "allowed_ips = [\"10.1.0.1/32\", \"300.1.1.1/8\"]\n"));
    assert!(
        e.contains("gateways[0].allowed_ips[1] (gateway `gw1`)"),
        "{e}"
    );
    let e = err(&(agent_section(&k)
        + &gateway("gw1", &public(), "10.1.0.1")
        + "allowed_ips = [\"10.1.0.0/24\"]\n"
        + &gateway("gw2", &public(), "10.1.0.2")
        + "allowed_ips = [\"10.1.0.0/24\"]\n"));
    assert!(
        e.contains("gateways[1].allowed_ips (gateway `gw2`): `10.1.0.0/24` is already used"),
        "{e}"
    );
}

#[test]
fn preshared_keys() {
    let base = agent_section(&key()) + &gateway("gw1", &public(), "10.1.0.1");
    let e = err(&(base.clone() + "preshared_key = \"sekrit-psk-value\"\n"));
    assert!(
        e.contains("gateways[0].preshared_key (gateway `gw1`)") && !e.contains("sekrit-psk-value"),
        "{e}"
    );
    let e = err(&(base.clone() + "preshared_key = \"x\"\npreshared_key_file = \"y\"\n"));
    assert!(
        e.contains("at most one of preshared_key and preshared_key_file"),
        "{e}"
    );

    let dir = TempDir::new();
    dir.write("gw1.psk", &key(), 0o644);
    let path = dir.write(
        "agent.toml",
        &(base.clone() + "preshared_key_file = \"gw1.psk\"\n"),
        0o600,
    );
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("gateways[0].preshared_key_file") && e.contains("chmod 600"),
        "{e}"
    );
    dir.write("gw1.psk", &key(), 0o600);
    assert!(
        Config::load(&path).unwrap().gateways[0]
            .preshared_key
            .is_some()
    );
}

#[test]
fn route_rules() {
    let base = agent_section(&key());
    let route = |port: u16, extra: &str| {
        format!("\n[[routes]]\nport = {port}\nupstream = \"127.0.0.1:8080\"\n{extra}")
    };
    let e = err(&(base.clone() + &route(80, "") + &route(80, "")));
    assert!(
        e.contains("routes[1].port: `80` is already used by routes[0]"),
        "{e}"
    );
    let e = err(&(base.clone() + &route(0, "")));
    assert!(e.contains("routes[0].port: port 0"), "{e}");
    let e = err(&(base.clone() + &route(22, "protocol = \"tcp\"\ntrust_forwarded = true\n")));
    assert!(
        e.contains("routes[0].trust_forwarded: applies to protocol = \"http\""),
        "{e}"
    );
    let e = err(&(base.clone() + &route(80, "proxy_protocol = false\n")));
    assert!(e.contains("routes[0].proxy_protocol"), "{e}");
    let e = err(&(base.clone() + &route(80, "protocol = \"quic\"\n")));
    assert!(
        e.contains("routes[0].protocol") && e.contains("unknown variant `quic`"),
        "{e}"
    );
    let e = err(&(base.clone() + &route(80, "").replace("127.0.0.1:8080", "8080")));
    assert!(
        e.contains("routes[0].upstream: `8080` is not host:port"),
        "{e}"
    );
}

/// Issue 14: `upstream = "unix:/run/app.sock"` was refused with "port `/run/app.sock` is not
/// a number 1-65535".
#[test]
fn unix_socket_upstreams_for_http_and_tcp_routes() {
    let base = agent_section(&key());
    let c = parse(
        &(base.clone()
            + "\n[[routes]]\nport = 8081\nupstream = \"unix:/run/app.sock\"\n"
            + "\n[[routes]]\nport = 22\nupstream = \"unix:/run/ssh.sock\"\nprotocol = \"tcp\"\n"),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].upstream,
        RouteUpstream::Unix("/run/app.sock".into())
    );
    assert_eq!(c.routes[0].upstream.to_string(), "unix:/run/app.sock");
    let http = c.routes[0].http_route().unwrap();
    assert_eq!(http.upstream.unix_path(), Some(Path::new("/run/app.sock")));
    let tcp = c.routes[1].tcp_route().unwrap();
    assert_eq!(tcp.upstream.unix_path(), Some(Path::new("/run/ssh.sock")));
    for bad in ["unix:app.sock", "unix:", "unix:./app.sock"] {
        let e = err(&(base.clone() + &format!("\n[[routes]]\nport = 80\nupstream = \"{bad}\"\n")));
        assert!(
            e.contains("routes[0].upstream") && e.contains("needs an absolute path"),
            "{e}"
        );
    }
    let e = err(&(base
        + "\n[[routes]]\nport = 53\nupstream = \"unix:/run/dns.sock\"\nprotocol = \"udp\"\n"));
    assert!(
        e.contains("routes[0].upstream") && e.contains("unix sockets serve http and tcp routes"),
        "{e}"
    );
}

#[test]
fn udp_routes_and_their_bounds() {
    let base = agent_section(&key());
    let c = parse(
        &(base.clone()
            + "\n[[routes]]\nport = 53\nupstream = \"127.0.0.1:5353\"\nprotocol = \"udp\"\n"
            + "\n[[routes]]\nport = 53\nupstream = \"127.0.0.1:5353\"\nprotocol = \"tcp\"\n"
            + "\n[[routes]]\nport = 514\nupstream = \"localhost:514\"\nprotocol = \"udp\"\nidle_timeout = \"5m\"\nmax_flows = 8\n"
            + "\n[proxy]\nmax_udp_flows = 100\n"),
    )
    .expect("a udp and a tcp route may share port 53");
    assert_eq!(c.proxy.max_udp_flows, 100);
    let dns = c.routes[0].udp_route().unwrap();
    assert_eq!(dns.idle_timeout, DEFAULT_UDP_IDLE_TIMEOUT);
    assert_eq!(dns.max_flows, DEFAULT_UDP_MAX_FLOWS);
    assert!(c.routes[0].http_route().is_none() && c.routes[0].tcp_route().is_none());
    assert!(c.routes[1].udp_route().is_none());
    let syslog = c.routes[2].udp_route().unwrap();
    assert_eq!(
        (syslog.idle_timeout, syslog.max_flows),
        (Duration::from_secs(300), 8)
    );
    assert_eq!(syslog.upstream.authority(), "localhost:514");

    let udp = |extra: &str| {
        format!("\n[[routes]]\nport = 53\nupstream = \"127.0.0.1:53\"\nprotocol = \"udp\"\n{extra}")
    };
    let e = err(&(base.clone() + &udp("") + &udp("")));
    assert!(
        e.contains("routes[1].port: `53` is already used by routes[0]"),
        "{e}"
    );
    let e = err(&(base.clone() + &udp("max_flows = 0\n")));
    assert!(e.contains("routes[0].max_flows: 0 is out of range"), "{e}");
    let e = err(&(base.clone() + &udp("upstream_connect_timeout = \"1s\"\n")));
    assert!(
        e.contains("routes[0].upstream_connect_timeout: applies to http and tcp routes only"),
        "{e}"
    );
    let e = err(&(base.clone() + &udp("trust_forwarded = true\n")));
    assert!(e.contains("routes[0].trust_forwarded"), "{e}");
    let e =
        err(&(base.clone()
            + "\n[[routes]]\nport = 80\nupstream = \"127.0.0.1:80\"\nmax_flows = 3\n"));
    assert!(
        e.contains("routes[0].max_flows: applies to protocol = \"udp\""),
        "{e}"
    );
    let e = err(&(base + "\n[proxy]\nmax_udp_flows = 0\n"));
    assert!(e.contains("proxy.max_udp_flows: 0 is out of range"), "{e}");
}

#[test]
fn per_route_timeouts_override_proxy_and_are_bounded() {
    let base = agent_section(&key());
    let c = parse(
        &(base.clone()
            + "\n[[routes]]\nport = 80\nupstream = \"127.0.0.1:8080\"\n"
            + "\n[[routes]]\nport = 81\nupstream = \"127.0.0.1:8081\"\nidle_timeout = \"1h\"\n"
            + "upstream_connect_timeout = \"2s\"\nupstream_response_timeout = \"10m\"\n"
            + "\n[[routes]]\nport = 22\nupstream = \"127.0.0.1:22\"\nprotocol = \"tcp\"\nidle_timeout = \"168h\"\n"
            + "\n[proxy]\nidle_timeout = \"30s\"\n"),
    )
    .unwrap();
    let plain = c.routes[0].proxy_config(&c.proxy);
    assert_eq!(plain, c.proxy, "no override: [proxy] as it is");
    let ws = c.routes[1].proxy_config(&c.proxy);
    assert_eq!(ws.idle_timeout, Duration::from_secs(3600));
    assert_eq!(ws.upstream_connect_timeout, Duration::from_secs(2));
    assert_eq!(ws.upstream_response_timeout, Duration::from_secs(600));
    assert_eq!(ws.header_read_timeout, c.proxy.header_read_timeout);
    assert_eq!(
        c.routes[2].effective_idle_timeout(&c.proxy),
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(
        c.routes[0].effective_idle_timeout(&c.proxy),
        Duration::from_secs(30)
    );
    let route =
        |extra: &str| format!("\n[[routes]]\nport = 80\nupstream = \"127.0.0.1:80\"\n{extra}");
    let e = err(&(base.clone() + &route("idle_timeout = \"169h\"\n")));
    assert!(
        e.contains("routes[0].idle_timeout: `169h` is too long: at most 7d"),
        "{e}"
    );
    let e = err(&(base.clone() + &route("idle_timeout = \"0s\"\n")));
    assert!(
        e.contains("routes[0].idle_timeout: must be greater than 0"),
        "{e}"
    );
    let e = err(&(base.clone() + &route("idle_timeout = \"soon\"\n")));
    assert!(e.contains("routes[0].idle_timeout"), "{e}");
    let e = err(&(base
        + "\n[[routes]]\nport = 22\nupstream = \"127.0.0.1:22\"\nprotocol = \"tcp\"\nupstream_response_timeout = \"1s\"\n"));
    assert!(
        e.contains("routes[0].upstream_response_timeout: applies to protocol = \"http\""),
        "{e}"
    );
}

#[test]
fn proxy_rules() {
    let base = agent_section(&key()) + "\n[proxy]\n";
    let e = err(&(base.clone() + "idle_timeout = \"90\"\n"));
    assert!(
        e.contains("proxy.idle_timeout: `90` is not a duration"),
        "{e}"
    );
    let e = err(&(base.clone() + "header_read_timeout = \"0s\"\n"));
    assert!(
        e.contains("proxy.header_read_timeout: must be greater than 0"),
        "{e}"
    );
    let e = err(&(base.clone() + "max_header_bytes = 100\n"));
    assert!(
        e.contains("proxy.max_header_bytes: 100 is out of range"),
        "{e}"
    );
    let e = err(&(base.clone() + "max_connections = 0\n"));
    assert!(e.contains("proxy.max_connections"), "{e}");
    let e = err(&(base.clone() + "max_connections = -1\n"));
    assert!(e.contains("proxy.max_connections"), "{e}");
}

#[test]
fn proxy_overload_limits() {
    let base = agent_section(&key()) + "\n[proxy]\n";
    let c = parse(
        &(base.clone()
            + "http2_max_concurrent_streams = 8\nhttp2_max_send_buffer = 32768\n\
               max_upstream_requests = 100\nmax_upstream_sockets = 200\n\
               lingering_close_timeout = \"2s\"\nlingering_close_bytes = 1000\n"),
    )
    .unwrap();
    assert_eq!(
        (
            c.proxy.http2_max_concurrent_streams,
            c.proxy.http2_max_send_buffer,
            c.proxy.max_upstream_requests,
            c.proxy.max_upstream_sockets
        ),
        (8, 32768, 100, 200)
    );
    assert_eq!(
        (
            c.proxy.lingering_close_timeout,
            c.proxy.lingering_close_bytes
        ),
        (Duration::from_secs(2), 1000)
    );
    for bad in [
        "http2_max_concurrent_streams = 0",
        "http2_max_concurrent_streams = 100000",
        "http2_max_send_buffer = 100",
        "max_upstream_requests = 0",
        "max_upstream_sockets = 0",
        "max_upstream_sockets = 2000000",
        "lingering_close_bytes = 2000000000",
    ] {
        let e = err(&(base.clone() + bad + "\n"));
        let field = bad.split(' ').next().unwrap();
        assert!(
            e.contains(&format!("proxy.{field}: ")) && e.contains("out of range"),
            "{e}"
        );
    }
}

#[test]
fn admin_rules() {
    let base = agent_section(&key()) + "\n[admin]\n";
    for bad in [
        "0.0.0.0:9090",
        "192.0.2.10:9090",
        "localhost:9090",
        "[::]:9090",
    ] {
        let e = parse(&(base.clone() + &format!("listen = \"{bad}\"\n"))).unwrap_err();
        assert!(
            matches!(e, ConfigError::AdminNotLoopback { .. }),
            "{bad}: {e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("admin.listen") && e.contains(bad) && e.contains("loopback"),
            "{e}"
        );
        assert!(
            e.contains("allow_remote = true"),
            "the refusal explains the opt-in: {e}"
        );
    }
    // The opt-in: any IP address, remote clients get probes and metrics only.
    for remote in ["0.0.0.0:5182", "[::]:5182", "192.0.2.10:5182"] {
        let c = parse(&(base.clone() + &format!("listen = \"{remote}\"\nallow_remote = true\n")))
            .unwrap();
        assert_eq!(c.admin, AdminListen::Tcp(remote.parse().unwrap()));
        assert!(c.admin_allow_remote);
        assert!(
            c.warnings.iter().all(|w| !w.contains("allow_remote")),
            "{:?}",
            c.warnings
        );
    }
    let e =
        parse(&(base.clone() + "listen = \"localhost:5182\"\nallow_remote = true\n")).unwrap_err();
    assert!(matches!(e, ConfigError::AdminNotLoopback { .. }), "{e:?}");
    // On a loopback address the opt-in does nothing: say so.
    let c = parse(&(base.clone() + "allow_remote = true\n")).unwrap();
    assert_eq!(c.admin, AdminListen::DEFAULT);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("admin.allow_remote = true has no effect")),
        "{:?}",
        c.warnings
    );
    let c = parse(&(base.clone() + "listen = \"unix:admin.sock\"\n")).unwrap();
    assert_eq!(
        c.admin,
        AdminListen::Unix("/etc/wg-agent/admin.sock".into())
    );
    let c = parse(&(base.clone() + "listen = \"unix:/run/wg.sock\"\n")).unwrap();
    assert_eq!(c.admin, AdminListen::Unix("/run/wg.sock".into()));
    assert_eq!(
        parse(&(base.clone() + "listen = \"off\"\n")).unwrap().admin,
        AdminListen::Off
    );
}

#[test]
fn load_admin_listen_ignores_the_rest() {
    let dir = TempDir::new();
    let text = "[agent]\nprivate_key_env = \"UNSET_VARIABLE_FOR_TEST\"\n\n[admin]\nlisten = \"127.0.0.1:9999\"\n";
    let path = dir.write("agent.toml", text, 0o600);
    assert_eq!(
        Config::load_admin_listen(&path).unwrap(),
        AdminListen::Tcp("127.0.0.1:9999".parse().unwrap())
    );
    let path = dir.write("b.toml", "[agent]\n", 0o600);
    assert_eq!(
        Config::load_admin_listen(&path).unwrap(),
        AdminListen::DEFAULT
    );
    let path = dir.write("c.toml", "[admin]\nlisten = \"0.0.0.0:1\"\n", 0o600);
    assert!(Config::load_admin_listen(&path).is_err());
    let path = dir.write(
        "d.toml",
        "[admin]\nlisten = \"0.0.0.0:1\"\nallow_remote = true\n",
        0o600,
    );
    assert_eq!(
        Config::load_admin_listen(&path).unwrap(),
        AdminListen::Tcp("0.0.0.0:1".parse().unwrap())
    );
}

#[test]
fn log_rules() {
    let base = agent_section(&key()) + "\n[log]\n";
    let e = err(&(base.clone() + "format = \"xml\"\n"));
    assert!(
        e.contains("log.format") && e.contains("unknown variant `xml`"),
        "{e}"
    );
    let e = err(&(base.clone() + "level = \"loud=[\"\n"));
    assert!(e.contains("log.level: `loud=[` is not a log level"), "{e}");
}

#[test]
fn syntax_errors_name_line_and_field() {
    let k = key();
    let text = agent_section(&k)
        + &gateway("gw1", &public(), "10.1.0.1")
        + &gateway("gw2", &public(), "10.1.0.2")
        + "colour = \"blue\"\n";
    let e = err(&text);
    assert!(e.starts_with("/etc/wg-agent/agent.toml:"), "{e}");
    assert!(
        e.contains("gateways[1].colour") && e.contains("unknown field `colour`"),
        "{e}"
    );

    let text = agent_section(&k)
        + &gateway("gw1", &public(), "10.1.0.1")
        + "persistent_keepalive = \"often\"\n";
    let e = err(&text);
    assert!(e.contains("gateways[0].persistent_keepalive"), "{e}");

    let text = agent_section(&k)
        + "\n[[gateways]]\nid = \"gw1\"\nendpoint = \"192.0.2.1:1\"\nvirtual_ip = \"10.1.0.1\"\n";
    let e = err(&text);
    assert!(
        e.contains("gateways[0]") && e.contains("missing field `public_key`"),
        "{e}"
    );

    let e = err("[agent]\nvirtual_ip = \"10.1.0.100\"\n");
    assert!(e.contains("missing field `subnet`"), "{e}");
    let e = err("[agent\n");
    assert!(e.contains("agent.toml:1:"), "{e}");
    let e = err("[nonsense]\n");
    assert!(e.contains("unknown field `nonsense`"), "{e}");
    let e = err(&(agent_section(&k) + "routes = []\n"));
    assert!(
        e.contains("agent.routes: unknown field `routes`")
            && e.contains("before the first [table]"),
        "{e}"
    );
}

#[test]
fn unreadable_config() {
    let e = Config::load("/nonexistent/agent.toml").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/agent.toml: cannot read config file"),
        "{e}"
    );
}

#[test]
fn conversions_for_wg_core_and_local_proxy() {
    let psk = key();
    let text = agent_section(&key())
        + &gateway("gw1", &public(), "10.1.0.1")
        + &format!(
            "preshared_key = \"{psk}\"\nallowed_ips = [\"10.1.0.1/32\", \"192.168.7.0/24\"]\n"
        )
        + &gateway("gw2", &public(), "10.1.0.2")
        + "persistent_keepalive = 0\n"
        + "\n[[routes]]\nport = 80\nupstream = \"localhost:8080\"\ntrust_forwarded = false\nupstream_h2c = true\n"
        + "\n[[routes]]\nport = 22\nupstream = \"[::1]:2222\"\nprotocol = \"tcp\"\nproxy_protocol = true\n"
        + "\n[proxy]\naccess_log = true\n";
    let c = parse(&text).unwrap();
    assert!(c.proxy.access_log);

    let peer = c.gateways[0].peer_config(c.gateways[0].endpoint_addr());
    assert_eq!(peer.public_key, c.gateways[0].public_key);
    assert_eq!(peer.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
    assert_eq!(peer.allowed_ips, c.gateways[0].allowed_ips);
    assert_eq!(peer.persistent_keepalive, Some(Duration::from_secs(25)));
    assert!(peer.preshared_key.is_some());
    let peer = c.gateways[1].peer_config(None);
    assert_eq!((peer.endpoint, peer.persistent_keepalive), (None, None));

    let http = c.routes[0].http_route().unwrap();
    assert_eq!(http.upstream.authority(), "localhost:8080");
    assert!(!http.trust_forwarded && http.upstream_h2c);
    assert!(c.routes[0].tcp_route().is_none());
    let tcp = c.routes[1].tcp_route().unwrap();
    assert_eq!(tcp.upstream.authority(), "[::1]:2222");
    assert!(tcp.proxy_protocol);
    assert!(c.routes[1].http_route().is_none());

    let e = err(&(agent_section(&key())
        + "\n[[routes]]\nport = 22\nupstream = \"127.0.0.1:22\"\nprotocol = \"tcp\"\nupstream_h2c = true\n"));
    assert!(
        e.contains("routes[0].upstream_h2c: applies to protocol = \"http\""),
        "{e}"
    );
}

#[test]
fn subnet_and_prefix_messages() {
    let e = err(&agent_section(&key()).replace("10.1.0.0/24", "10.1.0.0/33"));
    assert!(
        e.contains("agent.subnet: `10.1.0.0/33` is not an IP prefix"),
        "{e}"
    );
    let c = parse(&agent_section(&key()).replace("10.1.0.0/24", "10.1.0.7/24")).unwrap();
    assert_eq!(
        c.agent.subnet.to_string(),
        "10.1.0.0/24",
        "host bits cleared like wg"
    );
}

#[test]
fn durations_have_an_upper_bound() {
    // This one passed `check` and then panicked at startup (Instant + Duration overflow).
    let base = agent_section(&key()) + "\n[proxy]\n";
    for field in [
        "header_read_timeout",
        "upstream_connect_timeout",
        "upstream_response_timeout",
        "idle_timeout",
        "drain_timeout",
    ] {
        let e = err(&format!("{base}{field} = \"10000000000000000000s\"\n"));
        assert!(
            e.contains(&format!("proxy.{field}")) && e.contains("at most 7d"),
            "{e}"
        );
        assert!(parse(&format!("{base}{field} = \"168h\"\n")).is_ok());
        assert!(err(&format!("{base}{field} = \"168h1s\"\n")).contains("at most"));
    }
}

#[test]
fn ipv4_mtu_below_what_the_stack_takes_is_refused() {
    // 576..1279 passed `check`, but the userspace stack needs 1280: a restart loop.
    let k = key();
    for mtu in [576, 1000, 1279] {
        let e = err(&(agent_section(&k) + &format!("mtu = {mtu}\n")));
        assert!(e.contains("agent.mtu") && e.contains("1280"), "{e}");
    }
    assert!(parse(&(agent_section(&k) + "mtu = 1280\n")).is_ok());
}

fn key_file_config(dir: &TempDir, key_mode: u32) -> (PathBuf, PrivateKey) {
    let private = PrivateKey::generate();
    let key_path = dir.write(
        "agent.key",
        &format!("{}\n", private.to_base64_secret().as_str()),
        key_mode,
    );
    let text = "[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    dir.write("agent.toml", text, 0o600);
    (key_path, private)
}

#[test]
fn key_files_may_be_group_readable() {
    // Kubernetes secret volumes with fsGroup are 0440.
    for mode in [0o440, 0o640, 0o600, 0o400] {
        let dir = TempDir::new();
        let (key_path, private) = key_file_config(&dir, mode);
        let c = Config::load(key_path.with_file_name("agent.toml"))
            .unwrap_or_else(|e| panic!("mode {mode:o} refused: {e}"));
        assert!(c.agent.private_key == private);
    }
    for (mode, says) in [
        (0o604, "readable by others"),
        (0o644, "readable by others"),
        (0o620, "writable by group or others"),
        (0o602, "writable by group or others"),
    ] {
        let dir = TempDir::new();
        let (key_path, _) = key_file_config(&dir, mode);
        let e = Config::load(key_path.with_file_name("agent.toml"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains(says) && e.contains("chmod 600"), "{mode:o}: {e}");
    }
}

#[test]
fn key_file_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = TempDir::new();
    let (key_path, _) = key_file_config(&dir, 0o600);
    let me = std::fs::metadata(&key_path).unwrap().uid();
    // Only root can give a file away; elsewhere there is nothing to check.
    if me != 0 {
        eprintln!("skipped: giving a file to another user needs root");
        return;
    }
    std::os::unix::fs::chown(&key_path, Some(4242), None).unwrap();
    let e = Config::load(key_path.with_file_name("agent.toml"))
        .expect_err("a key file of another user must be refused")
        .to_string();
    assert!(
        e.contains("agent.private_key_file") && e.contains("owned by uid 4242"),
        "{e}"
    );
}

#[test]
fn private_key_credential_reads_the_credentials_directory() {
    let dir = TempDir::new();
    let private = PrivateKey::generate();
    let cred = dir.write("wg-key", private.to_base64_secret().as_str(), 0o400);
    let creds = cred.parent().unwrap().to_string_lossy().into_owned();
    let text = "[agent]\nprivate_key_credential = \"wg-key\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    let env = |var: &str| (var == "CREDENTIALS_DIRECTORY").then(|| creds.clone());
    let c = Config::from_toml_with_env(text, Path::new("agent.toml"), &env).unwrap();
    assert!(c.agent.private_key == private);
    // Outside systemd there is no credentials directory: the field is named.
    let e = Config::from_toml_with_env(text, Path::new("agent.toml"), &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agent.private_key_credential") && e.contains("CREDENTIALS_DIRECTORY"),
        "{e}"
    );
    // A name is a file name in that directory, nothing else.
    let bad = text.replace("\"wg-key\"", "\"../wg-key\"");
    let e = Config::from_toml_with_env(&bad, Path::new("agent.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("agent.private_key_credential"), "{e}");
}

#[test]
fn uapi_name_rules() {
    // Without the fixtures' unique [uapi] table.
    let base = format!(
        "[agent]\nprivate_key = \"{}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n",
        key()
    );
    let with = |name: &str| format!("{base}\n[uapi]\nname = \"{name}\"\n");
    assert_eq!(parse(&base).unwrap().uapi_name, "wg-agent");
    for good in ["wg0", "a", "fifteen-chars-x", "wg_agent.1+="] {
        assert_eq!(parse(&with(good)).unwrap().uapi_name, good);
    }
    for bad in [
        "",
        "sixteen-chars-xx",
        "../etc",
        "a/b",
        "..",
        "wg 0",
        "wg\u{e9}",
    ] {
        let e = err(&with(bad));
        assert!(
            e.contains("uapi.name") && e.contains("15 characters"),
            "{bad}: {e}"
        );
    }
    // Restart-only: a reload reports it and keeps the running name.
    let running = parse(&base).unwrap();
    let new = parse(&with("wg1")).unwrap();
    assert!(
        ConfigChanges::between(&running, &new)
            .needs_restart
            .contains(&"uapi.name")
    );
    assert_eq!(
        ConfigChanges::as_applied(&running, &new).uapi_name,
        "wg-agent"
    );
}

/// `[agent]` with `virtual_ip` and `subnet` given as raw TOML values.
fn dual_agent(key: &str, virtual_ip: &str, subnet: &str) -> String {
    agent_section(key)
        .replace("\"10.1.0.100\"", virtual_ip)
        .replace("\"10.1.0.0/24\"", subnet)
}

const DUAL_VIP: &str = r#"["10.1.0.100", "fd00::100"]"#;
const DUAL_NET: &str = r#"["10.1.0.0/24", "fd00::/64"]"#;

#[test]
fn dual_stack_addresses_and_subnets() {
    let k = key();
    let c = parse(&(dual_agent(&k, DUAL_VIP, DUAL_NET) + &gateway("gw1", &public(), "10.1.0.1")))
        .unwrap();
    let v4: IpAddr = "10.1.0.100".parse().unwrap();
    let v6: IpAddr = "fd00::100".parse().unwrap();
    assert_eq!(c.agent.virtual_ips, [v4, v6]);
    assert_eq!(c.agent.virtual_ip, v4, "the first address stays virtual_ip");
    assert_eq!(c.agent.subnet.to_string(), "10.1.0.0/24");
    let nets: Vec<String> = c.agent.subnets.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.1.0.0/24", "fd00::/64"]);
    assert_eq!(
        c.agent.subnet_for("fd00::1".parse().unwrap()),
        Some(c.agent.subnets[1])
    );
    assert_eq!(c.agent.virtual_ip_for("fd00::1".parse().unwrap()), Some(v6));

    // Subnets pair with addresses by family, whatever order they are written in; the
    // first address decides which one is `virtual_ip`.
    let c = parse(&dual_agent(&k, r#"["fd00::100", "10.1.0.100"]"#, DUAL_NET)).unwrap();
    assert_eq!(c.agent.virtual_ips, [v6, v4]);
    assert_eq!(c.agent.subnet.to_string(), "fd00::/64");
    assert_eq!(c.agent.subnets[1].to_string(), "10.1.0.0/24");

    // A list of one, or one-element lists, mean the same as a plain string.
    let single = parse(&agent_section(&k)).unwrap();
    assert_eq!(single.agent.virtual_ips, [v4]);
    assert_eq!(single.agent.subnets, [single.agent.subnet]);
    let listed = parse(&dual_agent(&k, r#"["10.1.0.100"]"#, r#"["10.1.0.0/24"]"#)).unwrap();
    assert_eq!(listed.agent, single.agent);
}

#[test]
fn dual_stack_errors_name_the_field_and_the_fix() {
    let k = key();
    let cases = [
        (
            r#"["10.1.0.100", "10.1.0.101"]"#,
            r#""10.1.0.0/24""#,
            "agent.virtual_ip: two IPv4 addresses (10.1.0.100 and 10.1.0.101): give at most one IPv4 and one IPv6 address",
        ),
        (
            r#"["fd00::100", "10.1.0.100", "fd00::101"]"#,
            DUAL_NET,
            "agent.virtual_ip: two IPv6 addresses (fd00::100 and fd00::101)",
        ),
        (
            "[]",
            r#""10.1.0.0/24""#,
            "agent.virtual_ip: the list is empty",
        ),
        (
            r#"["10.1.0.100", "nope"]"#,
            DUAL_NET,
            "agent.virtual_ip[1]: `nope` is not an IP address",
        ),
        (
            r#""0.0.0.0""#,
            r#""0.0.0.0/0""#,
            "agent.virtual_ip: 0.0.0.0 is not a unicast host address",
        ),
        (
            r#"["10.1.0.100", "ff02::1"]"#,
            DUAL_NET,
            "agent.virtual_ip[1]: ff02::1 is not a unicast host address",
        ),
        (
            DUAL_VIP,
            r#""10.1.0.0/24""#,
            r#"agent.subnet: no IPv6 prefix for agent.virtual_ip fd00::100: add one, for example subnet = ["10.1.0.0/24", "fd00::/64"]"#,
        ),
        (
            r#""10.1.0.100""#,
            DUAL_NET,
            "agent.subnet: fd00::/64 is an IPv6 prefix, but agent.virtual_ip has no IPv6 address",
        ),
        (
            DUAL_VIP,
            r#"["10.1.0.0/24", "10.2.0.0/24"]"#,
            "agent.subnet: two IPv4 prefixes (10.1.0.0/24 and 10.2.0.0/24): give one prefix per IP family",
        ),
        (
            DUAL_VIP,
            r#"["10.1.0.0/24", "fd01::/64"]"#,
            "agent.virtual_ip: fd00::100 is outside agent.subnet fd01::/64",
        ),
        (
            DUAL_VIP,
            r#"["10.1.0.0/24", "fd00::/129"]"#,
            "agent.subnet[1]: `fd00::/129` is not an IP prefix",
        ),
        ("[]", "[]", "agent.virtual_ip: the list is empty"),
        (r#""10.1.0.100""#, "[]", "agent.subnet: the list is empty"),
    ];
    for (vip, net, expect) in cases {
        let e = err(&dual_agent(&k, vip, net));
        assert!(
            e.contains(expect),
            "virtual_ip = {vip}, subnet = {net}:\n{e}"
        );
    }
    // A value of another type is a syntax error naming the field.
    let e = err(&dual_agent(&k, "42", DUAL_NET));
    assert!(
        e.contains("agent.virtual_ip") && e.contains("a string or a list of strings"),
        "{e}"
    );
}

#[test]
fn ipv6_inside_the_tunnel_needs_an_mtu_of_1280() {
    let k = key();
    let e = err(&(dual_agent(&k, DUAL_VIP, DUAL_NET) + "mtu = 1279\n"));
    assert!(
        e.contains("agent.mtu: 1279 is out of range 1280..=65455")
            && e.contains("IPv6 inside the tunnel (agent.virtual_ip fd00::100) requires it"),
        "{e}"
    );
    assert!(parse(&(dual_agent(&k, DUAL_VIP, DUAL_NET) + "mtu = 1280\n")).is_ok());
    // IPv4 alone: the stack's own limit is the reason given.
    let e = err(&(agent_section(&k) + "mtu = 1279\n"));
    assert!(
        e.contains("needs at least 1280") && !e.contains("IPv6"),
        "{e}"
    );
}

#[test]
fn gateway_addresses_follow_the_family_of_the_agent() {
    let k = key();
    // An IPv6 gateway on an IPv4-only agent: the probe would have no source address.
    let e = err(&(agent_section(&k) + &gateway("gw1", &public(), "fd00::1")));
    assert!(
        e.contains("gateways[0].virtual_ip (gateway `gw1`): fd00::1 is an IPv6 address, but the agent has no IPv6 address")
            && e.contains("add one to agent.virtual_ip"),
        "{e}"
    );
    let dual = dual_agent(&k, DUAL_VIP, DUAL_NET);
    let c = parse(&(dual.clone() + &gateway("gw1", &public(), "fd00::1"))).unwrap();
    assert_eq!(
        c.gateways[0].virtual_ip,
        Some("fd00::1".parse::<IpAddr>().unwrap())
    );
    assert_eq!(c.gateways[0].allowed_ips, ["fd00::1/128".parse().unwrap()]);
    // Each family is checked against its own subnet.
    let e = err(&(dual.clone() + &gateway("gw1", &public(), "fd01::1")));
    assert!(
        e.contains(
            "gateways[0].virtual_ip (gateway `gw1`): fd01::1 is outside agent.subnet fd00::/64"
        ),
        "{e}"
    );
    let e = err(&(dual.clone() + &gateway("gw1", &public(), "fd00::100")));
    assert!(e.contains("agent's own agent.virtual_ip"), "{e}");
}

#[test]
fn dual_stack_without_a_route_back_for_a_family_warns() {
    let k = key();
    let dual = dual_agent(&k, DUAL_VIP, DUAL_NET);
    let c = parse(&(dual.clone() + &gateway("gw1", &public(), "10.1.0.1"))).unwrap();
    let warning = c
        .warnings
        .iter()
        .find(|w| w.contains("IPv6"))
        .unwrap_or_else(|| panic!("{:?}", c.warnings));
    assert!(
        warning.contains("no gateway has an IPv6 prefix in allowed_ips")
            && warning.contains("fd00::100"),
        "{warning}"
    );
    let c = parse(
        &(dual
            + &gateway("gw1", &public(), "10.1.0.1")
            + "allowed_ips = [\"10.1.0.1/32\", \"fd00::1/128\"]\n"),
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
